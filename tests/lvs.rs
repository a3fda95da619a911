//! End-to-end: VIP and port entries on loopback select lanes on the data
//! plane; LVS health, maintenance, and the SIGTERM drain sequence.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn vip_and_port_entries_select_the_lane_and_free_entries_serve_nothing() {
    let net = vip_net();
    let ports = free_port_range(3);
    let lanes = format!(
        "vip_pool = [\"{net}.2-{net}.5\"]\nport_pool = \"{ports}-{}\"",
        ports + 2
    );
    let lw = Laneway::start_with_lanes(SIMPLE_ROUTES, &lanes, "");
    let stable = Upstream::start("web-stable");
    let v2 = Upstream::start("web-v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (status, lane) = lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#);
    assert_eq!(status, 201, "{lane}");
    let vip = lane["entries"]["vip"].as_str().unwrap().to_string();
    let port = lane["entries"]["port"].as_u64().unwrap() as u16;
    assert_eq!(vip, format!("{net}.2"));
    assert_eq!(port, ports);

    // The VIP keeps the production Host header intact.
    let via_vip: SocketAddr = format!("{vip}:{}", lw.proxy.port()).parse().unwrap();
    let r = get(via_vip, "shop.example.com", "/cart", &[]);
    assert_eq!(r.upstream(), "web-v2");
    assert_eq!(r.header("x-laneway-lane"), Some("t-1"));
    assert_eq!(r.json()["headers"]["host"], "shop.example.com");

    let via_port: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        get(via_port, "shop.example.com", "/", &[]).upstream(),
        "web-v2"
    );

    // Header, cookie and hostname still come first.
    let r = get(
        via_vip,
        "shop.example.com",
        "/",
        &[("X-Laneway-Lane", "baseline")],
    );
    assert_eq!(r.upstream(), "web-stable");
    // The plain listener is the baseline.
    assert_eq!(
        lw.get("shop.example.com", "/", &[]).upstream(),
        "web-stable"
    );

    // Entries no lane holds never serve another lane's content.
    for free in [
        format!("{net}.3:{}", lw.proxy.port()),
        format!("127.0.0.1:{}", ports + 1),
    ] {
        let r = get(free.parse().unwrap(), "shop.example.com", "/", &[]);
        assert_eq!(r.status, 421, "{free}: {}", r.body);
        assert!(r.body.contains("no lane holds"), "{}", r.body);
    }

    // Deleting the lane frees its entries at once (quarantine only stops
    // them from going to another lane).
    assert_eq!(lw.api("DELETE", "/api/v1/lanes/t-1", None).0, 200);
    assert_eq!(get(via_vip, "shop.example.com", "/", &[]).status, 421);
}

#[test]
fn lvs_health_and_maintenance() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let web = Upstream::start("web");
    lw.register("web-1", "web", None, web.port());
    let data_health = || lw.get("anything", "/__laneway/health", &[]);
    assert_eq!(
        (data_health().status, data_health().body.as_str()),
        (200, "ok\n")
    );
    assert_eq!(
        lw.api("GET", "/lvs/health", None),
        (200, "ok\n".to_string())
    );

    let (status, body) = lw.api("POST", "/api/v1/maintenance", Some(r#"{"enabled":true}"#));
    assert_eq!(status, 200, "{body}");
    let (status, body) = lw.api("GET", "/lvs/health", None);
    assert_eq!((status, body.trim()), (503, "maintenance"));
    assert_eq!(data_health().status, 503);
    // Still serving while out of the pool.
    assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "web");

    let (status, body) = lw.api("POST", "/api/v1/maintenance", Some(r#"{"enable":true}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("enable"), "{body}");
    assert_eq!(
        lw.api("GET", "/lvs/health", None).0,
        503,
        "a bad body changes nothing"
    );

    assert_eq!(
        lw.api("POST", "/api/v1/maintenance", Some(r#"{"enabled":false}"#))
            .0,
        200
    );
    assert_eq!(lw.api("GET", "/lvs/health", None).0, 200);
    let (_, m) = lw.api("GET", "/api/v1/maintenance", None);
    assert_eq!(serde_json::from_str::<Value>(&m).unwrap()["enabled"], false);
}

/// An upstream that answers each request after `delay`.
fn slow_upstream(delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        std::thread::sleep(delay);
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow");
                    }
                }
            });
        }
    });
    port
}

#[test]
fn sigterm_turns_health_503_keeps_serving_then_finishes_in_flight_requests() {
    let mut lw = Laneway::start_full(
        SIMPLE_ROUTES,
        "drain_seconds = 3\ngrace_seconds = 20",
        "",
        "",
    );
    let web = Upstream::start("web");
    lw.register("web-1", "web", None, web.port());
    lw.register(
        "slow-1",
        "user-api",
        None,
        slow_upstream(Duration::from_secs(4)),
    );
    lw.signal("TERM");
    assert!(
        eventually(Duration::from_secs(5), || lw
            .api("GET", "/lvs/health", None)
            .0
            == 503),
        "health turns 503 at once"
    );
    let (_, why) = lw.api("GET", "/lvs/health", None);
    assert!(why.contains("draining"), "{why}");
    // Draining: requests are still served.
    for _ in 0..5 {
        assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "web");
    }
    // A request in flight across the end of the drain still completes.
    let proxy = lw.proxy;
    let slow = std::thread::spawn(move || get(proxy, "shop.example.com", "/user/1", &[]));
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow"));
    let status = lw
        .wait_exit(Duration::from_secs(30))
        .expect("laneway exits after the drain");
    assert!(status.success(), "{status}\n{}", lw.log());
    assert!(
        std::net::TcpStream::connect(proxy).is_err(),
        "listeners are closed"
    );
}

/// Kills a child process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigquit_hands_the_listening_sockets_to_a_new_process() {
    let mut old = Laneway::start(SIMPLE_ROUTES, "");
    let web = Upstream::start("web");
    old.register("web-1", "web", None, web.port());
    let log = std::fs::File::create(old.path("new.log")).unwrap();
    let mut new = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--upgrade", "--config"])
            .arg(&old.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // The new process waits for the old one to hand the data directory
    // over (then it reads the stores and takes the sockets over
    // data/upgrade.sock).
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            old.path("new.log")
        )
        .unwrap_or_default()
        .contains("waiting for the running laneway to hand over")),
        "the new process waits for the hand-over"
    );
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");
    assert!(status.success(), "{status}");
    // The same listening socket now belongs to the new process, with the
    // same registrations (shared data directory).
    assert!(
        eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(old.proxy).is_ok()
                && old.get("shop.example.com", "/", &[]).status == 200
        }),
        "the new process serves:\n{}",
        std::fs::read_to_string(old.path("new.log")).unwrap_or_default()
    );
    assert_eq!(old.get("shop.example.com", "/", &[]).upstream(), "web");
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new process runs on"
    );
}
