//! End-to-end: lanes, routing, registration, hot swap, restart and admin
//! validation through the real laneway binary on loopback.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "= /"
return = { status = 200, body = "home of $host" }

[[server.location]]
match = "~ ^/old/(.*)$"
redirect = { status = 301, to = "https://$host/new/$1" }

[[server.location]]
match = "/user/"
service = "user-api"
rewrite = ["^/user/(.*)$", "/u/$1"]

[[server]]
names = ["~^(?<city>[a-z]+)\\.example\\.com$"]

[[server.location]]
match = "/user/"
service = "user-api"
rewrite = ["^/user/(.*)$", "/$city/u/$1"]
set_headers = { "X-City" = "$city" }

[[server]]
names = ["api.example.org"]

[[server.location]]
match = "/v1/"
service = "web"
"#;

struct World {
    lw: Laneway,
    _ups: Vec<Upstream>,
}

/// laneway with web (stable, v2) and user-api (baseline, v2) registered and
/// lanes t-1 (user-api v2), t-2 (web v9: no instance), t-3 (strict, web v9).
fn world() -> World {
    let lw = Laneway::start(ROUTES, "");
    let ups: Vec<Upstream> = ["web-stable", "web-v2", "user-base", "user-v2"]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    lw.register("web-1", "web", Some("stable"), ups[0].port());
    lw.register("web-2", "web", Some("v2"), ups[1].port());
    lw.register("user-1", "user-api", None, ups[2].port());
    lw.register("user-2", "user-api", Some("v2"), ups[3].port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"user-api":"v2"}}"#)
            .0,
        201
    );
    assert_eq!(
        lw.create_lane(r#"{"name":"t-2","services":{"web":"v9"}}"#)
            .0,
        201
    );
    assert_eq!(
        lw.create_lane(r#"{"name":"t-3","services":{"web":"v9"},"strict":true}"#)
            .0,
        201
    );
    World { lw, _ups: ups }
}

#[test]
fn lanes_are_chosen_by_header_cookie_and_hostname() {
    let w = world();
    let lw = &w.lw;
    let r = lw.get("shop.example.com", "/user/42", &[]);
    assert_eq!(r.upstream(), "user-base");
    assert_eq!(r.header("x-laneway-lane"), Some("baseline"));

    let r = lw.get("shop.example.com", "/user/42", &[("X-Laneway-Lane", "t-1")]);
    assert_eq!(r.upstream(), "user-v2");
    assert_eq!(r.header("x-laneway-lane"), Some("t-1"));
    assert_eq!(r.header("x-laneway-version"), Some("v2"));
    // The lane is forwarded upstream.
    assert_eq!(r.json()["headers"]["x-laneway-lane"], "t-1");

    let r = lw.get(
        "shop.example.com",
        "/user/42",
        &[("Cookie", "a=1; laneway_lane=t-1")],
    );
    assert_eq!(r.upstream(), "user-v2");

    let r = lw.get("t-1.lanes.test", "/user/42", &[]);
    assert_eq!(r.upstream(), "user-v2");

    // <production-host>.<lane>.<domain>: production rules for the recovered host.
    let r = lw.get("bj.example.com.t-1.lanes.test:8080", "/user/42", &[]);
    assert_eq!(r.upstream(), "user-v2");
    let echo = r.json();
    assert_eq!(
        echo["target"], "/bj/u/42",
        "city rewrite from the recovered host"
    );
    assert_eq!(echo["headers"]["x-city"], "bj");
    assert_eq!(echo["headers"]["host"], "bj.example.com");
}

#[test]
fn fallback_strict_and_unknown_service() {
    let w = world();
    let lw = &w.lw;
    // t-1 doesn't override web: baseline's stable version serves it.
    let r = lw.get("shop.example.com", "/cart", &[("X-Laneway-Lane", "t-1")]);
    assert_eq!(r.upstream(), "web-stable");
    assert_eq!(r.header("x-laneway-version"), Some("baseline"));
    // t-2 overrides web with v9, which has no instance: fall back.
    let r = lw.get("shop.example.com", "/cart", &[("X-Laneway-Lane", "t-2")]);
    assert_eq!(r.upstream(), "web-stable");
    // t-3 is strict: 503 naming lane, service and version.
    let r = lw.get("shop.example.com", "/cart", &[("X-Laneway-Lane", "t-3")]);
    assert_eq!(r.status, 503);
    for word in ["t-3", "web", "v9", "strict"] {
        assert!(r.body.contains(word), "{word} missing from {:?}", r.body);
    }
    // A version appears: t-2 now gets it without any other change.
    let v9 = Upstream::start("web-v9");
    lw.register("web-9", "web", Some("v9"), v9.port());
    let r = lw.get("shop.example.com", "/cart", &[("X-Laneway-Lane", "t-2")]);
    assert_eq!(r.upstream(), "web-v9");
    let r = lw.get("shop.example.com", "/cart", &[("X-Laneway-Lane", "t-3")]);
    assert_eq!(r.upstream(), "web-v9");
}

#[test]
fn local_answers_404_redirect_return_and_rewrite() {
    let w = world();
    let lw = &w.lw;
    let r = lw.get("api.example.org", "/nothing/here", &[]);
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("api.example.org") && r.body.contains("/nothing/here"),
        "{}",
        r.body
    );

    let r = lw.get("shop.example.com", "/old/a/b?x=1", &[]);
    assert_eq!(r.status, 301);
    // As nginx `return 301 https://$host/new/$1`: captures come from $uri, args are not added.
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.com/new/a/b")
    );

    let r = lw.get("shop.example.com", "/", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "home of shop.example.com")
    );

    let r = lw.get("shop.example.com", "/user/a/b?q=2", &[]);
    assert_eq!(r.json()["target"], "/u/a/b?q=2");
    // Without a rewrite the original target goes upstream unchanged.
    let r = lw.get("shop.example.com", "/cart/%7Eitem?x=1&y", &[]);
    assert_eq!(r.json()["target"], "/cart/%7Eitem?x=1&y");
    let echo = r.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-request-id"].as_str().unwrap().len(), 32);
    let r = lw.get("shop.example.com", "/cart", &[("X-Request-Id", "abc-1")]);
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-1");
}

#[test]
fn registration_and_deregistration_change_routing() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let r = lw.get("shop.example.com", "/", &[]);
    assert_eq!(r.status, 503, "no instance yet: {}", r.body);
    assert!(r.body.contains("web"), "{}", r.body);

    let a = Upstream::start("a");
    let b = Upstream::start("b");
    lw.register("web-a", "web", None, a.port());
    assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "a");
    lw.register("web-b", "web", None, b.port());
    let seen: std::collections::BTreeSet<String> = (0..10)
        .map(|_| lw.get("shop.example.com", "/", &[]).upstream())
        .collect();
    assert_eq!(seen.len(), 2, "round robin over both: {seen:?}");
    lw.deregister("web-a");
    for _ in 0..10 {
        assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "b");
    }
    // Counted once the response is out: wait for the last request's.
    let served = || {
        let (_, metrics) = lw.api("GET", "/metrics", None);
        metrics
            .lines()
            .find(|l| {
                l.starts_with("laneway_upstream_requests_total")
                    && l.contains("service=\"web\"")
                    && l.contains("class=\"2xx\"")
            })
            .unwrap_or_else(|| panic!("per-pool request counter missing:\n{metrics}"))
            .to_string()
    };
    let count = |line: &str| -> f64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(
        eventually(Duration::from_secs(5), || count(&served()) >= 21.0),
        "{}",
        served()
    );
    let (_, list) = lw.api("GET", "/api/v1/instances", None);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "web-b");
}

#[test]
fn a_dead_instance_is_retried_on_another() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let live = Upstream::start("live");
    lw.register("web-dead", "web", None, free_port());
    lw.register("web-live", "web", None, live.port());
    for _ in 0..20 {
        let r = lw.get("shop.example.com", "/", &[]);
        assert_eq!((r.status, r.upstream()), (200, "live".to_string()));
    }
    lw.deregister("web-live");
    // web-dead refused enough connections in a row to be ejected (passive
    // health): the service has no healthy instance left.
    let r = lw.get("shop.example.com", "/", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("web") && r.body.contains("baseline"),
        "{}",
        r.body
    );
}

#[test]
fn registrations_and_lanes_survive_a_restart() {
    let mut w = world();
    w.lw.restart();
    let r =
        w.lw.get("shop.example.com", "/user/1", &[("X-Laneway-Lane", "t-1")]);
    assert_eq!(r.upstream(), "user-v2");
    let (status, body) = w.lw.api("GET", "/api/v1/lanes/t-3", None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["strict"],
        true
    );
}

#[test]
fn bad_admin_bodies_are_rejected_and_change_nothing() {
    let w = world();
    let lw = &w.lw;
    let (_, before_lanes) = lw.api("GET", "/api/v1/lanes", None);
    let (_, before_instances) = lw.api("GET", "/api/v1/instances", None);
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/api/v1/lanes",
            "{not json",
            400,
            "invalid lane body",
        ),
        ("POST", "/api/v1/lanes", "", 400, "empty"),
        ("POST", "/api/v1/lanes", r#"{"services":{}}"#, 400, "name"),
        (
            "POST",
            "/api/v1/lanes",
            r#"{"name":"Bad Name!"}"#,
            400,
            "Bad Name!",
        ),
        (
            "POST",
            "/api/v1/lanes",
            r#"{"name":"t-9","parent":"ghost"}"#,
            400,
            "ghost",
        ),
        (
            "POST",
            "/api/v1/lanes",
            r#"{"name":"t-9","colour":"red"}"#,
            400,
            "colour",
        ),
        (
            "POST",
            "/api/v1/lanes",
            r#"{"name":"t-1","services":{"web":"v3"}}"#,
            409,
            "t-1",
        ),
        (
            "PATCH",
            "/api/v1/lanes/baseline",
            r#"{"parent":"t-1"}"#,
            400,
            "baseline",
        ),
        (
            "PATCH",
            "/api/v1/lanes/nope",
            r#"{"strict":true}"#,
            404,
            "nope",
        ),
        ("DELETE", "/api/v1/lanes/baseline", "", 400, "baseline"),
        (
            "PUT",
            "/v1/agent/service/register",
            "{",
            400,
            "registration",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            r#"{"Port":80,"Address":"127.0.0.1"}"#,
            400,
            "Name",
        ),
    ];
    for (method, path, body, status, word) in cases {
        let body = (!body.is_empty()).then_some(*body);
        let (got, text) = lw.api(method, path, body);
        assert_eq!(got, *status, "{method} {path} {body:?}: {text}");
        let err: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error: {text}"));
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(word),
            "{method} {path}: {msg:?} should mention {word:?}"
        );
    }
    // A parent cycle through PATCH.
    assert_eq!(lw.create_lane(r#"{"name":"c-1"}"#).0, 201);
    assert_eq!(lw.create_lane(r#"{"name":"c-2","parent":"c-1"}"#).0, 201);
    let (status, text) = lw.api("PATCH", "/api/v1/lanes/c-1", Some(r#"{"parent":"c-2"}"#));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("cycle"), "{text}");
    lw.api("DELETE", "/api/v1/lanes/c-2", None);
    lw.api("DELETE", "/api/v1/lanes/c-1", None);

    let (_, after_lanes) = lw.api("GET", "/api/v1/lanes", None);
    let (_, after_instances) = lw.api("GET", "/api/v1/instances", None);
    let names = |s: &str| -> Vec<(Value, Value)> {
        let v: Value = serde_json::from_str(s).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (l["name"].clone(), l["services"].clone()))
            .collect()
    };
    assert_eq!(names(&before_lanes), names(&after_lanes));
    assert_eq!(before_instances, after_instances);
    // Same body again is idempotent: 200 and the same lane.
    let (status, lane) = lw.create_lane(r#"{"name":"t-1","services":{"user-api":"v2"}}"#);
    assert_eq!(status, 200);
    assert_eq!(lane["entries"]["hostname"], "t-1.lanes.test");
    let (_, metrics) = lw.api("GET", "/metrics", None);
    assert!(
        metrics.contains("laneway_admin_rejected_total"),
        "rejections are counted"
    );
}

#[test]
fn hot_swap_under_load_drops_nothing() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    let v2b = Upstream::start("v2");
    let v3 = Upstream::start("v3");
    lw.register("web-s", "web", None, stable.port());
    lw.register("web-2a", "web", Some("v2"), v2.port());
    lw.register("web-3", "web", Some("v3"), v3.port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..3 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        let proxy = lw.proxy;
        load.push(std::thread::spawn(move || {
            let mut conn = Conn::open(proxy).expect("connect");
            let (lane, valid): (&str, &[&str]) = if worker == 0 {
                ("baseline", &["stable"])
            } else {
                ("t-1", &["v2", "v3"])
            };
            while !stop.load(Ordering::SeqCst) {
                let headers = [("host", "shop.example.com"), ("x-laneway-lane", lane)];
                match conn.request("GET", "/x", &headers, b"") {
                    Ok(r) if r.status == 200 && valid.contains(&r.upstream().as_str()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{lane}: {} {}", r.status, r.body)),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("{lane}: {e}"));
                        conn = Conn::open(proxy).expect("reconnect");
                    }
                }
            }
        }));
    }
    for i in 0..2000u32 {
        match i % 4 {
            0 => lw.register("web-2b", "web", Some("v2"), v2b.port()),
            1 => {
                let v = if i % 8 == 1 { "v3" } else { "v2" };
                let body = format!(r#"{{"services":{{"web":"{v}"}}}}"#);
                let (s, t) = lw.api("PATCH", "/api/v1/lanes/t-1", Some(&body));
                assert_eq!(s, 200, "{t}");
            }
            2 => lw.deregister("web-2b"),
            _ => {
                let body = format!(
                    r#"{{"ID":"web-3","Name":"web","Address":"127.0.0.1","Port":{},"Meta":{{"version":"v3"}},"Weights":{{"Passing":{}}}}}"#,
                    v3.port(),
                    1 + i % 3
                );
                let (s, t) = lw.api("PUT", "/v1/agent/service/register", Some(&body));
                assert_eq!(s, 200, "{t}");
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        served.load(Ordering::Relaxed) > 500,
        "load kept running during the changes"
    );
    let (_, metrics) = lw.api("GET", "/metrics", None);
    let swaps: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("laneway_snapshot_swaps_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(swaps >= 100.0, "snapshots were swapped: {swaps}");
}

#[test]
fn rules_file_edits_hot_swap_and_bad_edits_keep_the_last_good_rules() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let web = Upstream::start("web");
    lw.register("web-1", "web", None, web.port());
    assert_eq!(lw.get("other.example.net", "/x", &[]).upstream(), "web");

    write(
        &lw.path("routes.toml"),
        "[[server]]\nnames = [\"shop.example.com\"]\n[[server.location]]\nmatch = \"= /x\"\nreturn = { status = 200, body = \"edited\" }\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || lw
            .get("shop.example.com", "/x", &[])
            .body
            == "edited"),
        "the edit was applied:\n{}",
        lw.log()
    );

    write(
        &lw.path("routes.toml"),
        "[[server]]\nnames = [\"a\"]\nbogus = 1\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, rules) = lw.api("GET", "/api/v1/rules", None);
            rules.contains("bogus") && rules.contains("\"line\":3")
        }),
        "the bad edit is reported with its line"
    );
    assert_eq!(
        lw.get("shop.example.com", "/x", &[]).body,
        "edited",
        "last good rules still serve"
    );
    let (_, metrics) = lw.api("GET", "/metrics", None);
    assert!(
        metrics.contains("laneway_rules_errors_total 1"),
        "{metrics}"
    );
}

#[test]
fn check_reports_every_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("laneway.toml");
    write(
        &dir.path().join("routes.toml"),
        "[[server]]\nnames = [\"a\"]\n[[server.location]]\nmatch = \"~ ([\"\nservice = \"x\"\n",
    );
    write(
        &cfg,
        "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[routes]\nfile = \"routes.toml\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("routes.toml:4"), "{err}");

    write(&cfg, "[proxy]\nlisten = [\"127.0.0.1:1\"]\nthreds = 2\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("laneway.toml:3") && err.contains("threds"),
        "{err}"
    );

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config", "config/laneway.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "the shipped config is valid: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
