//! The QA portal in a real browser: headless Chromium (Debian's package,
//! driven through chromedriver) against the real laneway binary. Each test
//! starts its own laneway, upstreams and browser; assertions are on DOM
//! text.

#[path = "../common/mod.rs"]
mod common;
mod driver;

use common::*;
use driver::Browser;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

/// laneway with `web` stable (baseline) and `web` v2 (lane `t-42`, which
/// holds a pool port), plus the upstreams behind them.
struct Setup {
    lw: Laneway,
    _stable: Upstream,
    _v2: Upstream,
}

fn setup() -> Setup {
    let ports = free_port_range(4);
    let lw = Laneway::start_with_lanes(
        ROUTES,
        &format!("port_pool = \"{ports}-{}\"", ports + 3),
        "",
    );
    let stable = Upstream::start("web-stable");
    let v2 = Upstream::start("web-v2");
    lw.register("web-1", "web", Some("stable"), stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (status, lane) =
        lw.create_lane(r#"{"name":"t-42","services":{"web":"v2"},"owner":"qa-anna"}"#);
    assert_eq!(status, 201, "{lane}");
    Setup {
        lw,
        _stable: stable,
        _v2: v2,
    }
}

/// Chromium resolves every lane and production name to loopback.
fn resolve_to_loopback() -> String {
    "--host-resolver-rules=MAP *.lanes.test 127.0.0.1, MAP shop.example.com 127.0.0.1".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_hostname_shows_the_lanes_version() {
    let s = setup();
    let b = Browser::start(&[resolve_to_loopback()]).await;
    let port = s.lw.proxy.port();
    b.goto(&format!("http://shop.example.com.t-42.lanes.test:{port}/"))
        .await;
    let text = b.text().await;
    assert!(text.contains("web-v2"), "{text}");
    b.goto(&format!("http://shop.example.com:{port}/")).await;
    let text = b.text().await;
    assert!(text.contains("web-stable"), "{text}");
    b.close().await;
}
