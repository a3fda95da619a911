//! End-to-end: `GET /api/v1/explain` and `laneway explain` on the real
//! binary: every server and location precedence case with file:line, every
//! way a lane is resolved, override / fallback / strict versions, the
//! rewritten upstream URI and the instances that would be tried. Nothing
//! reaches an upstream.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com", "*.example.com", "www.example.*"]

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "= /exact"
return = { status = 200, body = "exact" }

[[server.location]]
match = "^~ /static/"
service = "web"

[[server.location]]
match = "~ \\.php$"
service = "web"

[[server.location]]
match = "/app/"
service = "web"

[[server]]
names = ["~^(?<city>[a-z]+)\\.city\\.org$"]

[[server.location]]
match = "/user/"
service = "user-api"
rewrite = ["^/user/(.*)$", "/$city/u/$1"]

[[server]]
names = ["fallback.test"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

struct World {
    lw: Laneway,
    vip_base: String,
    port_base: u16,
    web: Upstream,
    _others: Vec<Upstream>,
}

fn world() -> World {
    let net = vip_net();
    let port_base = free_port_range(4);
    let lw = Laneway::start_full(
        ROUTES,
        "bind_entries = false",
        &format!(
            "vip_pool = [\"{net}.2-{net}.9\"]\nport_pool = \"{port_base}-{}\"",
            port_base + 3
        ),
        "",
    );
    let web = Upstream::start("web");
    let v2 = Upstream::start("web-v2");
    let user = Upstream::start("user");
    lw.register("web-1", "web", Some("stable"), web.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    lw.register("user-1", "user-api", None, user.port());
    for body in [
        r#"{"name":"t-1","services":{"web":"v2"}}"#,
        r#"{"name":"t-2","parent":"t-1","services":{"web":"v9"}}"#,
        r#"{"name":"t-s","services":{"web":"v9"},"strict":true}"#,
    ] {
        assert_eq!(lw.create_lane(body).0, 201, "{body}");
    }
    World {
        lw,
        vip_base: net,
        port_base,
        web,
        _others: vec![v2, user],
    }
}

fn explain(lw: &Laneway, query: &str) -> Value {
    let (status, text) = lw.api("GET", &format!("/api/v1/explain?{query}"), None);
    assert_eq!(status, 200, "{query}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// (server line, server rule, location line, location rule) for a URL.
fn matched(lw: &Laneway, url: &str) -> (u64, String, u64, String) {
    let e = explain(lw, &format!("url={}", enc(url)));
    let s = &e["server"];
    let l = &e["location"];
    assert!(s["file"].as_str().unwrap().ends_with("routes.toml"), "{e}");
    (
        s["line"].as_u64().unwrap(),
        s["matched_by"].as_str().unwrap().to_string(),
        l["line"].as_u64().unwrap_or(0),
        l["matched_by"].as_str().unwrap_or("-").to_string(),
    )
}

#[test]
fn every_server_and_location_precedence_case() {
    let w = world();
    let lw = &w.lw;
    let cases = [
        // exact host, exact location
        (
            "http://shop.example.com/exact",
            2,
            "exact name",
            9,
            "exact (=",
        ),
        // leading wildcard; ^~ wins over the .php regex
        (
            "http://a.example.com/static/x.php",
            2,
            "leading wildcard",
            13,
            "^~",
        ),
        // trailing wildcard; a regex beats the longer /app/ prefix
        (
            "http://www.example.net/app/x.php",
            2,
            "trailing wildcard",
            17,
            "regex",
        ),
        // longest prefix when no regex matches
        (
            "http://shop.example.com/app/x",
            2,
            "exact name",
            21,
            "longest prefix",
        ),
        // regex host
        (
            "http://bj.city.org/user/7",
            25,
            "regex",
            28,
            "longest prefix",
        ),
        // nothing matches the host: the default server
        (
            "http://nowhere.test/",
            33,
            "default server",
            37,
            "longest prefix",
        ),
    ];
    for (url, sline, sby, lline, lby) in cases {
        let (sl, sb, ll, lb) = matched(lw, url);
        assert_eq!(sl, sline, "{url}");
        assert!(sb.contains(sby), "{url}: {sb}");
        assert_eq!(ll, lline, "{url}");
        assert!(lb.contains(lby), "{url}: {lb}");
    }
    // The regex host's capture in the rewrite, and the default instance.
    let e = explain(lw, &format!("url={}", enc("http://bj.city.org/user/7?x=1")));
    assert_eq!(e["server"]["name"], "~^(?<city>[a-z]+)\\.city\\.org$");
    assert_eq!(e["outcome"]["upstream_uri"], "/bj/u/7?x=1", "{e}");
    assert_eq!(e["instances"]["would_try"][0]["id"], "user-1");
    // A return location answers locally; nothing is proxied.
    let e = explain(lw, "url=http://shop.example.com/exact");
    assert_eq!(
        (
            e["outcome"]["status"].as_u64(),
            e["outcome"]["body"].as_str()
        ),
        (Some(200), Some("exact"))
    );
    assert_eq!(w.web.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Bad input is a 400 naming it.
    let (status, text) = lw.api("GET", "/api/v1/explain?lane=t-1", None);
    assert!(status == 400 && text.contains("url is required"), "{text}");
    let (status, text) = lw.api("GET", "/api/v1/explain?url=http://a/&header=nocolon", None);
    assert!(status == 400 && text.contains("Name:Value"), "{text}");
    let (status, _) = lw.api("GET", "/api/v1/explain?url=http://a/&lane=nope", None);
    assert_eq!(status, 404);
}

#[test]
fn lane_resolution_and_version_choice() {
    let w = world();
    let lw = &w.lw;
    let lane_of = |q: &str| {
        let e = explain(lw, q);
        (
            e["lane"]["name"].as_str().unwrap().to_string(),
            e["lane"]["source"].as_str().unwrap().to_string(),
        )
    };
    let url = enc("http://shop.example.com/x");
    assert_eq!(
        lane_of(&format!("url={url}&lane=t-1")),
        ("t-1".into(), "header".into())
    );
    assert_eq!(
        lane_of(&format!(
            "url={url}&header={}",
            enc("Cookie: laneway_lane=t-2")
        )),
        ("t-2".into(), "cookie".into())
    );
    let e = explain(
        lw,
        &format!("url={}", enc("http://shop.example.com.t-1.lanes.test/x")),
    );
    assert_eq!(
        (e["lane"]["name"].as_str(), e["lane"]["source"].as_str()),
        (Some("t-1"), Some("hostname"))
    );
    assert_eq!(e["lane"]["production_host"], "shop.example.com");
    assert_eq!(e["outcome"]["host_header"], "shop.example.com");
    // t-1 got the first port and VIP of the pools.
    let port_url = enc(&format!("http://127.0.0.1:{}/x", w.port_base));
    assert_eq!(
        lane_of(&format!("url={port_url}")),
        ("t-1".into(), "port".into())
    );
    let vip_url = enc(&format!("http://{}.2:8080/x", w.vip_base));
    assert_eq!(
        lane_of(&format!(
            "url={vip_url}&header={}",
            enc("Host: shop.example.com")
        )),
        ("t-1".into(), "vip".into())
    );
    assert_eq!(
        lane_of(&format!("url={url}")),
        ("baseline".into(), "baseline".into())
    );
    // A pool entry no lane holds.
    let free = enc(&format!("http://{}.9:8080/x", w.vip_base));
    let e = explain(lw, &format!("url={free}"));
    assert_eq!(e["outcome"]["status"], 421, "{e}");

    // Versions: override, inherited fallback through the chain, strict.
    let v = |lane: &str| explain(lw, &format!("url={url}&lane={lane}"))["version"].clone();
    let t1 = v("t-1");
    assert_eq!(
        (t1["choice"].as_str(), t1["version"].as_str()),
        (Some("override"), Some("v2"))
    );
    let t2 = v("t-2");
    assert_eq!(
        (t2["choice"].as_str(), t2["version"].as_str()),
        (Some("fallback"), Some("v2")),
        "{t2}"
    );
    assert_eq!(t2["served_by"], "t-1");
    let chain: Vec<(String, Value)> = t2["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["lane"].as_str().unwrap().to_string(),
                s["healthy"].clone(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [
            ("t-2".to_string(), Value::Bool(false)),
            ("t-1".to_string(), Value::Bool(true))
        ]
    );
    assert!(
        t2["why"].as_str().unwrap().contains("v9 of lane t-2"),
        "{t2}"
    );
    let ts = v("t-s");
    assert_eq!(ts["choice"], "strict");
    assert!(
        ts["error"].as_str().unwrap().contains("strict lane"),
        "{ts}"
    );
    let base = v("baseline");
    assert_eq!(base["choice"], "baseline");
    let e = explain(lw, &format!("url={url}&lane=t-1"));
    let tried = &e["instances"]["would_try"][0];
    assert_eq!(
        (tried["id"].as_str(), tried["health"].as_str()),
        (Some("web-2"), Some("healthy"))
    );
}

#[test]
fn laneway_explain_prints_it_readably() {
    let w = world();
    let lw = &w.lw;
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "explain",
            "http://bj.city.org/user/7",
            "--lane",
            "t-2",
            "--admin",
        ])
        .arg(lw.admin.to_string())
        .output()
        .expect("run laneway explain");
    // aligned columns: compare with runs of spaces collapsed
    let stdout = squeeze(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "lane t-2 by header",
        "routes.toml:25 by regex",
        "\"/user/\" at ",
        "routes.toml:28 by longest prefix",
        "upstream uri /bj/u/7",
        "would try user-1",
    ] {
        assert!(stdout.contains(part), "{part:?} missing:\n{stdout}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "explain",
            "http://shop.example.com/",
            "-H",
            "Cookie: laneway_lane=t-2",
            "--admin",
        ])
        .arg(lw.admin.to_string())
        .output()
        .expect("run laneway explain");
    let stdout = squeeze(&String::from_utf8_lossy(&out.stdout));
    assert!(stdout.contains("fallback"), "{stdout}");
    assert!(
        stdout.contains("t-2: v9 (no healthy instance) -> t-1: v2 (healthy)"),
        "{stdout}"
    );
    // An unknown lane: the API's message, non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "explain",
            "http://shop.example.com/",
            "--lane",
            "nope",
            "--admin",
        ])
        .arg(lw.admin.to_string())
        .output()
        .expect("run laneway explain");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lane \"nope\" does not exist"));
}

fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
