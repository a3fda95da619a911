//! End-to-end: the QA dashboard on the real binary's admin listener. The
//! lanes list with each lane's URLs (and that those URLs reach the lane),
//! the lane page's resolution reasons (override, inheritance, fallback from
//! an unhealthy version, strict 503), the create, extend and delete forms,
//! the warnings of create and patch in the API and the CLI, and the ready
//! line in the log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

struct World {
    lw: Laneway,
    _upstreams: Vec<Upstream>,
}

/// laneway with a VIP pool, `web` in versions stable and v2 (healthy) and
/// v3 (registered, critical), and lanes for every way a version is chosen.
fn world() -> World {
    let net = vip_net();
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        "bind_entries = false",
        &format!("vip_pool = [\"{net}.2-{net}.9\"]"),
        "",
    );
    let stable = Upstream::start("web-stable");
    let v2 = Upstream::start("web-v2");
    let v3 = Upstream::start("web-v3");
    lw.register("web-1", "web", Some("stable"), stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    register_critical(&lw, "web-3", "web", "v3", v3.port());
    for body in [
        r#"{"name":"t-1","services":{"web":"v2"},"owner":"ann","labels":{"team":"pay"}}"#,
        r#"{"name":"t-child","parent":"t-1"}"#,
        r#"{"name":"t-down","services":{"web":"v3"}}"#,
        r#"{"name":"t-strict","services":{"web":"v9"},"strict":true}"#,
    ] {
        let (status, v) = lw.create_lane(body);
        assert_eq!(status, 201, "{body}: {v}");
    }
    World {
        lw,
        _upstreams: vec![stable, v2, v3],
    }
}

fn register_critical(lw: &Laneway, id: &str, service: &str, version: &str, port: u16) {
    let body = serde_json::json!({
        "ID": id, "Name": service, "Address": "127.0.0.1", "Port": port,
        "Meta": {"version": version},
        "Check": {"CheckID": format!("service:{id}"), "TTL": "10m", "Status": "critical"},
    });
    let (status, text) = lw.api("PUT", "/v1/agent/service/register", Some(&body.to_string()));
    assert_eq!(status, 200, "register {id}: {text}");
}

/// A page of the admin listener, as a browser without JS gets it.
fn page(lw: &Laneway, path: &str) -> (u16, String) {
    let res = ureq::get(&format!("http://{}{path}", lw.admin))
        .set("accept", "text/html")
        .timeout(Duration::from_secs(10))
        .call();
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// A form POST as a browser sends it; redirects are not followed.
fn post_form(lw: &Laneway, path: &str, fields: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let res = agent
        .post(&format!("http://{}{path}", lw.admin))
        .set("origin", &format!("http://{}", lw.admin))
        .timeout(Duration::from_secs(10))
        .send_form(fields);
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = r.status();
    let location = r.header("location").map(str::to_string);
    (status, location, r.into_string().unwrap_or_default())
}

/// The `<tr>` of `service` on a lane page.
fn service_row(page: &str, service: &str) -> String {
    let start = page
        .find(&format!(r#"<tr data-service="{service}""#))
        .unwrap_or_else(|| panic!("no row for {service} in\n{page}"));
    let end = page[start..]
        .find("</tr>")
        .map_or(page.len(), |e| start + e);
    page[start..end].to_string()
}

#[test]
fn the_lanes_list_links_every_entry_and_the_links_reach_the_lane() {
    let w = world();
    let lw = &w.lw;
    let port = lw.proxy.port();
    let (status, html) = page(lw, "/");
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(r#"<table id="lanes">"#), "{html}");
    for lane in ["t-1", "t-child", "t-down", "t-strict"] {
        assert!(
            html.contains(&format!(r#"<tr data-lane="{lane}""#)),
            "{lane} in {html}"
        );
    }
    let prod_url = format!("http://shop.example.com.t-1.lanes.test:{port}/");
    for url in [format!("http://t-1.lanes.test:{port}/"), prod_url.clone()] {
        assert!(
            html.contains(&format!(r#"class="lane-url" href="{url}""#)),
            "{url} in {html}"
        );
    }
    // the <prod-host>.<lane> link serves the lane's version
    let r = lw.get("shop.example.com.t-1.lanes.test", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "web-v2");

    // the server-side filter works without JS
    let (_, filtered) = page(lw, "/?q=team%3Dpay");
    assert!(filtered.contains(r#"data-lane="t-1""#), "{filtered}");
    assert!(!filtered.contains(r#"data-lane="t-down""#), "{filtered}");

    // the JSON API is where it was, with the URLs that need the data port
    let (status, text) = lw.api("GET", "/api/v1/lanes/t-1", None);
    assert_eq!(status, 200);
    let lane: Value = serde_json::from_str(&text).unwrap();
    let hosts_line = lane["entries"]["hosts_line"].as_str().unwrap();
    assert!(
        !hosts_line.contains(':'),
        "a hosts line has no port: {hosts_line}"
    );
    assert_eq!(
        lane["entries"]["hosts_urls"][0],
        format!("http://shop.example.com:{port}/")
    );
    assert_eq!(lane["entries"]["production_urls"][0], prod_url);
}

#[test]
fn the_lane_page_says_why_each_service_gets_its_version() {
    let w = world();
    let lw = &w.lw;
    let port = lw.proxy.port();

    let (status, html) = page(lw, "/lanes/t-1");
    assert_eq!(status, 200, "{html}");
    let web = service_row(&html, "web");
    assert!(web.contains("choice-override"), "{web}");
    assert!(
        web.contains("lane t-1 overrides web with version v2"),
        "{web}"
    );
    assert!(web.contains("health passing"), "{web}");
    assert!(
        html.contains(r#"id="pac-url" href="/api/v1/lanes/t-1/pac""#),
        "{html}"
    );
    assert!(html.contains(r#"id="hosts-line">"#), "{html}");
    assert!(
        html.contains(&format!(
            r#"href="http://shop.example.com:{port}/__laneway/lane?use=t-1""#
        )),
        "{html}"
    );

    let (_, html) = page(lw, "/lanes/t-child");
    let web = service_row(&html, "web");
    assert!(web.contains("choice-inherited"), "{web}");
    assert!(
        web.contains("inherits version v2 of web from lane t-1"),
        "{web}"
    );

    let (_, html) = page(lw, "/lanes/t-down");
    let web = service_row(&html, "web");
    assert!(web.contains("choice-fallback"), "{web}");
    assert!(
        web.contains("v3 of lane t-down has no healthy instance"),
        "{web}"
    );
    assert!(
        html.contains(r#"<li class="warning">"#) && html.contains("none is healthy"),
        "{html}"
    );

    let (_, html) = page(lw, "/lanes/t-strict");
    let web = service_row(&html, "web");
    assert!(
        web.contains("choice-strict") && web.contains("strict 503"),
        "{web}"
    );
    // and the data plane agrees
    assert_eq!(
        lw.get("shop.example.com.t-strict.lanes.test", "/", &[])
            .status,
        503
    );

    let (status, _) = page(lw, "/lanes/no-such-lane");
    assert_eq!(status, 404);
}

#[test]
fn the_forms_create_extend_and_delete_lanes_and_show_errors_in_the_page() {
    let w = world();
    let lw = &w.lw;

    let (status, html) = page(lw, "/lanes/new");
    assert_eq!(status, 200);
    assert!(html.contains(r#"<form id="create-lane""#), "{html}");

    let (status, _, html) = post_form(
        lw,
        "/lanes/new",
        &[
            ("name", "Not A Name"),
            ("services", "web=v2"),
            ("owner", "qa"),
        ],
    );
    assert_eq!(status, 400, "{html}");
    assert!(html.contains(r#"id="form-error""#), "{html}");
    assert!(html.contains("Not A Name"), "{html}");
    assert!(
        html.contains(r#"value="qa""#),
        "the typed values are kept: {html}"
    );

    let (status, location, html) = post_form(
        lw,
        "/lanes/new",
        &[("name", "t-form"), ("services", "web=v2"), ("ttl", "1h")],
    );
    assert_eq!(status, 303, "{html}");
    assert_eq!(location.as_deref(), Some("/lanes/t-form"));
    assert_eq!(lw.get("t-form.lanes.test", "/", &[]).upstream(), "web-v2");
    let expires = |lw: &Laneway| {
        let (_, text) = lw.api("GET", "/api/v1/lanes/t-form", None);
        serde_json::from_str::<Value>(&text).unwrap()["expires_at"]
            .as_u64()
            .unwrap()
    };
    let before = expires(lw);

    let (status, location, html) = post_form(lw, "/lanes/t-form/extend", &[("ttl", "72h")]);
    assert_eq!(status, 303, "{html}");
    assert_eq!(location.as_deref(), Some("/lanes/t-form?extended=1"));
    assert!(expires(lw) >= before + 70 * 3600);

    let (status, _, html) = post_form(lw, "/lanes/t-form/extend", &[("ttl", "forever")]);
    assert_eq!(status, 400, "{html}");
    assert!(html.contains(r#"id="action-error""#), "{html}");

    let (status, location, html) = post_form(lw, "/lanes/t-form/delete", &[]);
    assert_eq!(status, 303, "{html}");
    assert_eq!(location.as_deref(), Some("/?deleted=t-form"));
    assert_eq!(lw.api("GET", "/api/v1/lanes/t-form", None).0, 404);
    let (_, html) = page(lw, "/?deleted=t-form");
    assert!(html.contains("deleted"), "{html}");
    assert!(!html.contains(r#"data-lane="t-form""#), "{html}");
}

#[test]
fn create_and_patch_warn_about_overrides_that_cannot_serve() {
    let w = world();
    let lw = &w.lw;
    let warnings = |v: &Value| -> Vec<String> {
        serde_json::from_value(v["warnings"].clone()).unwrap_or_default()
    };

    let (status, v) = lw.create_lane(r#"{"name":"w-ok","services":{"web":"v2"}}"#);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");

    let (_, v) = lw.create_lane(r#"{"name":"w-1","services":{"payments":"v1"}}"#);
    let w1 = warnings(&v);
    assert_eq!(w1.len(), 1, "{v}");
    assert!(
        w1[0].contains("\"payments\"") && w1[0].contains("no rule routes to it"),
        "{w1:?}"
    );

    let (_, v) = lw.create_lane(r#"{"name":"w-2","services":{"web":"v7"}}"#);
    let w2 = warnings(&v);
    assert_eq!(w2.len(), 1, "{v}");
    assert!(
        w2[0].contains("version \"v7\" of service \"web\" has no registered instance"),
        "{w2:?}"
    );

    let (status, text) = lw.api(
        "PATCH",
        "/api/v1/lanes/w-ok",
        Some(r#"{"services":{"web":"v3"}}"#),
    );
    assert_eq!(status, 200, "{text}");
    let w3 = warnings(&serde_json::from_str(&text).unwrap());
    assert_eq!(w3.len(), 1, "{text}");
    assert!(
        w3[0].contains("version \"v3\" of service \"web\" has 1 instance but none is healthy"),
        "{w3:?}"
    );

    // the CLI prints them
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["lane", "create", "w-cli", "-s", "web=v7", "--admin"])
        .arg(format!("http://{}", lw.admin))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: version \"v7\" of service \"web\" has no registered instance"),
        "{stdout}"
    );
}

#[test]
fn the_log_says_where_laneway_is_ready() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let want = format!(
        "ready: data http://{}, admin/dashboard http://{}/",
        lw.proxy, lw.admin
    );
    assert!(
        eventually(Duration::from_secs(10), || lw.log().contains(&want)),
        "{want} in\n{}",
        lw.log()
    );
    assert_eq!(lw.log().matches("ready: data").count(), 1, "{}", lw.log());
}

#[test]
fn the_rules_page_shows_the_errors_of_the_last_reload() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let (status, html) = page(&lw, "/rules");
    assert_eq!(status, 200);
    assert!(html.contains(r#"id="rules-status">ok<"#), "{html}");
    assert!(html.contains("proxy to"), "{html}");

    write(
        &lw.path("routes.toml"),
        &format!("{SIMPLE_ROUTES}\n[[server]]\nnames = [\"x.example.com\"]\n[[server.location]]\nmatch = \"/\"\nservic = \"web\"\n"),
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, html) = page(&lw, "/rules");
            html.contains(r#"id="rules-status">rejected<"#)
                && html.contains("routes.toml:")
                && html.contains("unknown field `servic`")
        }),
        "{}",
        page(&lw, "/rules").1
    );
    // the last good rules still serve and are still listed
    assert!(page(&lw, "/rules").1.contains("shop.example.com"));
}

#[test]
fn the_lane_page_and_instances_page_name_laneways_hold_out_reason() {
    let lw = Laneway::start(
        SIMPLE_ROUTES,
        "[services.web.check]\ntcp = true\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
    );
    let stable = Upstream::start("web-stable");
    lw.register("web-1", "web", Some("stable"), stable.port());
    // nothing listens there: laneway's own check takes it out
    lw.register("web-4", "web", Some("v4"), free_port());
    let (status, v) = lw.create_lane(r#"{"name":"t-4","services":{"web":"v4"}}"#);
    assert_eq!(status, 201, "{v}");
    assert!(
        eventually(Duration::from_secs(10), || {
            let web = service_row(&page(&lw, "/lanes/t-4").1, "web");
            web.contains("choice-fallback") && web.contains("active check failing")
        }),
        "{}",
        page(&lw, "/lanes/t-4").1
    );
    let (_, html) = page(&lw, "/instances");
    let row = html
        .split("<tr ")
        .find(|r| r.contains(r#"data-version="v4""#))
        .unwrap_or_else(|| panic!("a row for v4 in {html}"));
    assert!(row.contains("health critical"), "{row}");
    assert!(row.contains("held out: active check failing"), "{row}");
}
