//! What each fuzz target checks, one function per target, over laneway's
//! parsers of untrusted input: HTTP/1 request and response heads and
//! chunked bodies (request path), nginx configuration, routes.toml and
//! Consul register bodies (control plane). Not part of laneway itself.
//!
//! Every function takes the raw input and panics only when laneway broke a
//! promise: a parser panicked, an answer depended on how the bytes were
//! split, or a result pointed outside its input. The same file is compiled
//! into laneway's tests (`tests/fuzz_corpus.rs`), which replay the
//! committed corpora on stable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use laneway::config::nginx::parse::{parse_str, NginxConfig};
use laneway::config::nginx::translate::translate;
use laneway::discovery::register::{parse_check_registration, parse_registration};
use laneway::proxy::http1::{self, ChunkError, ChunkedDecoder, Framing, HeadScanner, Span};
use laneway::routing::rules::{RequestInfo, RuleSet};

/// Increasing cut points in `0..=data.len()` ending at `data.len()`,
/// derived from the input itself so that a corpus file is always split
/// the same way: pieces of 1 to 8 bytes.
pub fn cuts(data: &[u8]) -> Vec<usize> {
    // FNV-1a over the input seeds a xorshift generator
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at = (at + 1 + (x % 8) as usize).min(data.len());
        out.push(at);
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

fn inside(span: Span, len: usize) {
    assert!(
        span.start <= span.end && span.range().end <= len,
        "span {span:?} outside a head of {len} bytes"
    );
}

/// Scans `data` as it would arrive in pieces ending at `cuts`, the buffer
/// growing from the head's first byte; the answer at the first piece that
/// decides, or the last one.
fn scan_in_pieces(
    mut scanner: HeadScanner,
    data: &[u8],
    cuts: &[usize],
) -> Result<Option<usize>, http1::Reject> {
    let mut got = Ok(None);
    for &end in cuts {
        got = scanner.scan(&data[..end]);
        if !matches!(got, Ok(None)) {
            break;
        }
    }
    got
}

/// `request_head`: [`http1::parse_request_head`] and the head scanner.
///
/// A parsed head lies within its input, and the scanner finds the same end
/// for it; a refusal carries a request status (400, 414, 431, 501, 505);
/// the scanner answers the same whether the bytes come at once, one by
/// one, or in pieces.
pub fn request_head(data: &[u8]) {
    let whole = http1::scan_head(data);
    match http1::parse_request_head(data) {
        Ok(head) => {
            assert!(
                head.len <= data.len(),
                "head of {} bytes in {}",
                head.len,
                data.len()
            );
            inside(head.method, head.len);
            inside(head.target, head.len);
            if let Some(host) = head.host {
                inside(host, head.len);
            }
            if let http1::TargetForm::Absolute { authority, path } = head.form {
                inside(authority, head.len);
                inside(path, head.len);
            }
            for field in head.fields.as_slice() {
                inside(field.name, head.len);
                inside(field.value, head.len);
            }
            assert!(head.minor <= 1, "HTTP/1.{} accepted", head.minor);
            let _ = head.origin_form(data);
            assert_eq!(
                whole,
                Ok(Some(head.len)),
                "the scanner disagrees with the parser on a head it accepted"
            );
        }
        Err(reject) => assert!(
            matches!(reject.status(), 400 | 414 | 431 | 501 | 505),
            "request refused with {} ({reject})",
            reject.status()
        ),
    }
    let ones: Vec<usize> = (1..=data.len()).collect();
    for cuts in [ones, cuts(data)] {
        assert_eq!(
            scan_in_pieces(HeadScanner::request(), data, &cuts),
            whole,
            "the request head scanner's answer depends on how the bytes arrive"
        );
    }
}

/// `response_head`: [`http1::parse_response_head`] and the response head
/// scanner. A parsed head lies within its input; every refusal is a 502;
/// a dropped Content-Length goes with Transfer-Encoding framing; the scanner answers
/// the same in any split.
pub fn response_head(data: &[u8]) {
    match http1::parse_response_head(data) {
        Ok(head) => {
            assert!(
                head.len <= data.len(),
                "head of {} bytes in {}",
                head.len,
                data.len()
            );
            assert!((100..=999).contains(&head.status), "status {}", head.status);
            inside(head.status_text, head.len);
            for field in head.fields.as_slice() {
                inside(field.name, head.len);
                inside(field.value, head.len);
            }
            if head.drop_content_length {
                // Transfer-Encoding frames it: chunked, or until close
                // when chunked is not the last coding (RFC 9112 §6.3)
                assert!(
                    matches!(head.framing, Framing::Chunked | Framing::Close),
                    "Content-Length dropped, framing {:?}",
                    head.framing
                );
            }
        }
        Err(reject) => assert_eq!(reject.status(), 502, "response refused with {reject}"),
    }
    let whole = HeadScanner::response().scan(data);
    assert_eq!(
        scan_in_pieces(HeadScanner::response(), data, &cuts(data)),
        whole,
        "the response head scanner's answer depends on how the bytes arrive"
    );
}

/// What a chunked decoder made of a body: the bytes that belong to it,
/// whether it ended, and its data bytes; or the error.
type Decoded = Result<(usize, bool, u64), ChunkError>;

fn decode<'a>(limit: Option<u64>, pieces: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut decoder = ChunkedDecoder::new(limit);
    let mut taken = 0;
    for piece in pieces {
        let n = decoder.feed(piece)?;
        assert!(n <= piece.len(), "took {n} of {} bytes", piece.len());
        taken += n;
        if n < piece.len() {
            assert!(
                decoder.done(),
                "stopped short of a piece before the body ended"
            );
            break;
        }
    }
    Ok((taken, decoder.done(), decoder.data_len()))
}

/// `chunked`: [`ChunkedDecoder`], fed the input at once, one byte at a
/// time and in pieces, with and without a size limit: the outcome (bytes
/// taken, ended, data length, or the error) must not depend on the split.
pub fn chunked(data: &[u8]) {
    let cuts = cuts(data);
    let mut start = 0;
    let pieces: Vec<&[u8]> = cuts
        .iter()
        .map(|&end| {
            let p = &data[start..end];
            start = end;
            p
        })
        .collect();
    for limit in [None, Some(16)] {
        let whole = decode(limit, [data]);
        assert_eq!(
            decode(limit, data.chunks(1)),
            whole,
            "one byte at a time differs from all at once (limit {limit:?})"
        );
        assert_eq!(
            decode(limit, pieces.iter().copied()),
            whole,
            "in pieces at {cuts:?} differs from all at once (limit {limit:?})"
        );
        if let Ok((taken, _, data_len)) = whole {
            assert!(data_len <= taken as u64, "more data than bytes taken");
            if let Some(l) = limit {
                assert!(data_len <= l, "{data_len} data bytes past the limit {l}");
            }
        }
    }
}

/// `nginx_config`: nginx text through [`parse_str`] (no includes), the
/// import's translation into routes.toml and its compilation, as
/// `laneway import-nginx` does: errors, never a panic.
pub fn nginx_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let main = PathBuf::from("nginx.conf");
    let Ok(directives) = parse_str(text, &main, 1) else {
        return;
    };
    let config = NginxConfig {
        main: main.clone(),
        directives,
        files: vec![main.clone()],
    };
    let mapping = BTreeMap::from([("backend".to_string(), "web".to_string())]);
    if let Ok(translation) = translate(&config, &mapping) {
        let _ = RuleSet::compile(&translation.toml, &main);
    }
}

/// `routes_compile`: a routes.toml text through [`RuleSet::compile`], as
/// `laneway check` does; rules that compile then route a few requests.
pub fn routes_compile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = RuleSet::compile(text, Path::new("routes.toml")) else {
        return;
    };
    let _ = rules.services();
    let _ = rules.ports();
    let headers = http::HeaderMap::new();
    for port in [0, 80] {
        for (host, target) in [
            ("shop.example.com", "/"),
            ("API.Example.com:8080", "/user/a%20b/../c?x=1&y"),
            ("", "/%2e%2e/x"),
            ("bj.example.com", "/static/app.js"),
        ] {
            let _ = rules.route(&RequestInfo {
                host,
                target,
                scheme: "http",
                lane: "baseline",
                headers: &headers,
                port,
                upstream_statuses: &[],
            });
        }
    }
}

/// `consul_register`: a Consul agent register body through
/// [`parse_registration`] (an error or an instance with a name and id),
/// and the same bytes as a check register body through
/// [`parse_check_registration`] (an error or a check with an id that
/// names its service).
pub fn consul_register(data: &[u8]) {
    if let Ok(reg) = parse_check_registration(data) {
        assert!(!reg.check.id.is_empty(), "a check without an id");
        assert!(!reg.service_id.is_empty(), "a check without a service");
    }
    if let Ok(instance) = parse_registration(data, "version", "lane") {
        assert!(
            !instance.service.is_empty(),
            "an instance without a service"
        );
        assert!(!instance.id.is_empty(), "an instance without an id");
    }
}
