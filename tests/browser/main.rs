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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_link_puts_the_browser_in_the_lane_and_clear_takes_it_out() {
    let s = setup();
    let b = Browser::start(&[resolve_to_loopback()]).await;
    let site = format!("http://shop.example.com:{}", s.lw.proxy.port());
    b.goto(&format!("{site}/__laneway/lane?use=t-42&to=/after"))
        .await;
    assert_eq!(b.url().await, format!("{site}/after"));
    let text = b.text().await;
    assert!(text.contains("web-v2"), "{text}");
    // the cookie keeps the browser in the lane on the production name
    b.goto(&format!("{site}/")).await;
    let text = b.text().await;
    assert!(text.contains("web-v2"), "{text}");
    b.goto(&format!("{site}/__laneway/lane?clear=1")).await;
    b.goto(&format!("{site}/")).await;
    let text = b.text().await;
    assert!(text.contains("web-stable"), "{text}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_absolute_redirect_keeps_the_browser_in_the_lane() {
    let s = setup();
    let b = Browser::start(&[resolve_to_loopback()]).await;
    let port = s.lw.proxy.port();
    // v2 answers 302 Location: http://shop.example.com/landing
    b.goto(&format!(
        "http://shop.example.com.t-42.lanes.test:{port}/__redirect/shop.example.com/landing"
    ))
    .await;
    assert_eq!(
        b.url().await,
        format!("http://shop.example.com.t-42.lanes.test:{port}/landing")
    );
    let text = b.text().await;
    assert!(
        text.contains("web-v2") && text.contains("/landing"),
        "{text}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lanes_pac_opens_production_urls_in_the_lane() {
    let s = setup();
    let pac = format!("http://{}/api/v1/lanes/t-42/pac", s.lw.admin);
    let b = Browser::start(&[format!("--proxy-pac-url={pac}")]).await;
    // no resolver rules: the PAC sends the production name to the lane's port
    b.goto("http://shop.example.com/browse").await;
    let text = b.text().await;
    assert!(
        text.contains("web-v2") && text.contains("/browse"),
        "{text}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unknown_lane_page_lists_the_lanes() {
    let s = setup();
    let b = Browser::start(&[resolve_to_loopback()]).await;
    let port = s.lw.proxy.port();
    b.goto(&format!("http://shop.example.com.t-43.lanes.test:{port}/"))
        .await;
    let text = b.text().await;
    assert!(text.contains("t-43"), "{text}");
    assert!(
        !text.contains("web-stable"),
        "an unknown lane is not the baseline: {text}"
    );
    // the existing lane is listed as a link, and it works
    let link = b.find("a[href*='t-42.lanes.test']").await;
    link.click().await.expect("click the lane link");
    b.settle().await;
    let text = b.text().await;
    assert!(text.contains("web-v2"), "{text}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_a_lane_with_its_urls() {
    let s = setup();
    let b = Browser::start(&[]).await;
    b.goto(&format!("http://{}/", s.lw.admin)).await;
    let row = b.text_of("#lanes tr[data-lane='t-42']").await;
    assert!(
        row.contains("t-42") && row.contains("qa-anna") && row.contains("web"),
        "{row}"
    );
    let url = format!("shop.example.com.t-42.lanes.test:{}", s.lw.proxy.port());
    assert!(row.contains(&url), "{row}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_created_in_the_form_opens_at_its_production_host_url() {
    let s = setup();
    let b = Browser::start(&[resolve_to_loopback()]).await;
    b.goto(&format!("http://{}/lanes/new", s.lw.admin)).await;
    // a bad name first: the API's error, shown next to the form
    b.fill("form#create-lane #name", "Not A Name").await;
    b.click("form#create-lane button[type=submit]").await;
    let error = b.text_of("#form-error").await;
    assert!(error.contains("Not A Name"), "{error}");
    b.fill("form#create-lane #name", "t-77").await;
    b.fill("form#create-lane #services", "web=v2").await;
    b.click("form#create-lane button[type=submit]").await;
    assert_eq!(b.url().await, format!("http://{}/lanes/t-77", s.lw.admin));
    let text = b.text().await;
    assert!(text.contains("t-77") && text.contains("v2"), "{text}");
    // the lane page's <prod-host>.<lane> link serves the lane's version
    let host = format!("shop.example.com.t-77.lanes.test:{}", s.lw.proxy.port());
    b.click(&format!("a.lane-url[href*='{host}']")).await;
    assert!(b.url().await.contains(&host), "{}", b.url().await);
    let text = b.text().await;
    assert!(text.contains("web-v2"), "{text}");
    b.close().await;
}
