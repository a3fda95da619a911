//! One laneway per data directory and per listen address, end to end: a
//! second process on the same directory or the same address exits at once,
//! naming what is taken; a graceful upgrade (`run --upgrade`, then SIGQUIT
//! to the old process) still hands over the listeners and the store.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A laneway started by hand; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn laneway");
    Proc(child)
}

/// Runs `laneway run --config config`, which must exit on its own within
/// 20 s; returns whether it succeeded and what it printed.
fn run_to_exit(config: &Path, log: &Path) -> (bool, String) {
    let mut p = spawn(config, &[], log);
    let mut status = None;
    eventually(Duration::from_secs(20), || {
        status = p.0.try_wait().unwrap();
        status.is_some()
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the second laneway kept running:\n{text}"));
    (status.success(), text)
}

/// A second configuration in its own directory: `data_dir`, the admin and
/// data-plane addresses as given.
fn second_config(
    dir: &Path,
    data_dir: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
) -> std::path::PathBuf {
    std::fs::write(dir.join("routes.toml"), SIMPLE_ROUTES).unwrap();
    let config = dir.join("laneway.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"{proxy}\"]\nthreads = 1\n[admin]\nlisten = \"{admin}\"\n\
             [store]\ndata_dir = \"{data_dir}\"\n[routes]\nfile = \"routes.toml\"\n"
        ),
    )
    .unwrap();
    config
}

fn local(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn a_second_laneway_on_the_same_data_dir_exits_naming_it_and_the_pid() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let data = lw.path("data");
    let other = tempfile::tempdir().unwrap();
    // other ports: only the directory is shared
    let config = second_config(
        other.path(),
        &data.display().to_string(),
        local(free_port()),
        local(free_port()),
    );
    let (ok, text) = run_to_exit(&config, &other.path().join("second.log"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("data directory {} is in use", data.display())),
        "{text}"
    );
    assert!(text.contains(&format!("(PID {})", lw.pid())), "{text}");
    // the first one is unaffected
    assert_eq!(lw.api("GET", "/healthz", None).0, 200);
    assert_eq!(
        std::fs::read_to_string(data.join(".lock")).unwrap().trim(),
        lw.pid().to_string()
    );
}

#[test]
fn a_second_laneway_on_the_same_address_exits_naming_it() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let other = tempfile::tempdir().unwrap();
    // same admin address, own data directory and data-plane port
    let config = second_config(other.path(), "data", local(free_port()), lw.admin);
    let (ok, text) = run_to_exit(&config, &other.path().join("admin.log"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("[admin] listen {} is already in use", lw.admin)),
        "{text}"
    );
    // same data-plane address
    let config = second_config(other.path(), "data", lw.proxy, local(free_port()));
    let (ok, text) = run_to_exit(&config, &other.path().join("proxy.log"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("[proxy] listen {} is already in use", lw.proxy)),
        "{text}"
    );
    assert_eq!(lw.api("GET", "/healthz", None).0, 200);
}

#[test]
fn graceful_upgrade_hands_over_listeners_and_store() {
    let up = Upstream::start("web-1");
    let mut lw = Laneway::start(SIMPLE_ROUTES, "");
    lw.register("web-1", "web", None, up.port());
    assert_eq!(lw.create_lane(r#"{"name":"before"}"#).0, 201);
    let old_pid = lw.pid();

    let log = lw.dir.join("upgrade.log");
    let new = spawn(&lw.config, &["--upgrade"], &log);
    let new_pid = new.0.id();
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting for the running laneway to hand over")),
        "the new process waits for the data directory:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    lw.signal("QUIT");
    assert!(
        lw.wait_exit(Duration::from_secs(30)).is_some(),
        "the old process exits after the hand-over:\n{}",
        lw.log()
    );
    // The new process serves the data plane on the inherited sockets, and
    // the admin API with the store it read after the old one let go.
    assert!(
        eventually(Duration::from_secs(20), || {
            get(lw.proxy, "shop.example.com", "/", &[]).status == 200
        }),
        "the new process serves:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    assert!(list.contains("\"before\""), "{list}");
    assert_eq!(lw.create_lane(r#"{"name":"after"}"#).0, 201);
    assert_eq!(
        std::fs::read_to_string(lw.path("data/.lock"))
            .unwrap()
            .trim(),
        new_pid.to_string()
    );
    assert_ne!(old_pid, new_pid);
    drop(new);
}
