//! The fuzz corpora replayed as ordinary tests, on stable: every file of
//! `fuzz/corpus/<target>/` goes through the same check its cargo-fuzz
//! target runs (`fuzz/src/lib.rs`, compiled in here), so the seeds and
//! every crash ever minimised into them stay fixed without nightly.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Runs `check` over every file of the corpus of `target`; fails listing
/// each file whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: a corpus of {} files is too small to be a seed corpus",
        dir.display(),
        files.len()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).expect("read a corpus file");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: the check panicked on {} of {} files (messages above):\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
    );
}

#[test]
fn request_head_corpus() {
    replay("request_head", targets::request_head);
}

#[test]
fn response_head_corpus() {
    replay("response_head", targets::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", targets::chunked);
}

#[test]
fn nginx_config_corpus() {
    replay("nginx_config", targets::nginx_config);
}

#[test]
fn routes_compile_corpus() {
    replay("routes_compile", targets::routes_compile);
}

#[test]
fn consul_register_corpus() {
    replay("consul_register", targets::consul_register);
}

/// The split points the chunked and head checks use cover the input and
/// grow: a check fed in pieces sees every byte once.
#[test]
fn cuts_cover_the_input() {
    for data in [&b""[..], b"x", b"4\r\nwiki\r\n0\r\n\r\n", &[7u8; 300]] {
        let cuts = targets::cuts(data);
        assert_eq!(cuts.last(), Some(&data.len()));
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
        assert!(data.is_empty() || cuts[0] > 0);
        assert!(data.len() <= 8 || cuts.len() > 1, "one piece for {data:?}");
    }
}
