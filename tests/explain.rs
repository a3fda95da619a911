//! `GET /api/v1/explain` and `laneway explain`: every precedence case of
//! host and location matching, every way a lane is found, every version
//! choice, and nothing sent upstream.

mod common;

use std::process::Command;

use common::{vip_net, Laneway, Upstream};
use serde_json::Value;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com"]

[[server.location]]
match = "= /exact"
service = "web"

[[server.location]]
match = "^~ /static/"
service = "web"

[[server.location]]
match = "~ ^/static/.*\\.png$"
service = "img"

[[server.location]]
match = "~ ^/u/(?<id>[0-9]+)$"
service = "user-api"
rewrite = ["^/u/(?<id>[0-9]+)$", "/users/$id"]

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "/user/"
service = "user-api"

[[server]]
names = ["*.example.com"]

[[server.location]]
match = "/"
redirect = { status = 301, to = "https://shop.example.com$uri" }

[[server]]
names = ["~^(?<city>[a-z]+)\\.city\\.test$"]

[[server.location]]
match = "/"
return = { status = 200, body = "city $city" }

[[server]]
names = ["fallback.test"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

fn explain(lw: &Laneway, query: &str) -> Value {
    let (code, body) = lw.api("GET", &format!("/api/v1/explain?{query}"), None);
    assert_eq!(code, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn url(u: &str) -> String {
    format!(
        "url={}",
        u.replace(':', "%3A")
            .replace('/', "%2F")
            .replace('?', "%3F")
    )
}

/// The line of the `[[server.location]]` header above the `nth` (from 0)
/// line of ROUTES equal to `text`.
fn location_line(text: &str, nth: usize) -> u64 {
    let lines: Vec<&str> = ROUTES.lines().collect();
    let at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == text)
        .nth(nth)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("{text} #{nth} not in ROUTES"));
    let header = (0..=at)
        .rev()
        .find(|&i| lines[i] == "[[server.location]]")
        .unwrap();
    header as u64 + 1
}

#[test]
fn explains_host_and_location_precedence() {
    let web = Upstream::start("web");
    let user = Upstream::start("user");
    let lw = Laneway::start(ROUTES, "");
    lw.register("web-1", "web", None, web.port());
    lw.register("user-1", "user-api", None, user.port());
    lw.register("img-1", "img", None, web.port());

    let cases = [
        (
            "http://shop.example.com/exact",
            r#"match = "= /exact""#,
            0,
            "proxy",
        ),
        (
            "http://shop.example.com/static/a.png",
            r#"match = "^~ /static/""#,
            0,
            "proxy",
        ),
        (
            "http://shop.example.com/u/42",
            r#"match = "~ ^/u/(?<id>[0-9]+)$""#,
            0,
            "proxy",
        ),
        (
            "http://shop.example.com/user/7",
            r#"match = "/user/""#,
            0,
            "proxy",
        ),
        (
            "http://shop.example.com/other",
            r#"match = "/""#,
            0,
            "proxy",
        ),
        ("http://www.example.com/x", r#"match = "/""#, 1, "redirect"),
        ("http://bj.city.test/", r#"match = "/""#, 2, "return"),
        ("http://unknown.test/", r#"match = "/""#, 3, "proxy"),
    ];
    for (u, text, nth, action) in cases {
        let a = explain(&lw, &url(u));
        assert_eq!(a["action"], action, "{u}: {a}");
        assert_eq!(a["location"]["line"], location_line(text, nth), "{u}: {a}");
        assert!(a["location"]["file"]
            .as_str()
            .unwrap()
            .ends_with("routes.toml"));
    }
    let a = explain(&lw, &url("http://shop.example.com/u/42?x=1"));
    assert_eq!(a["service"], "user-api");
    assert_eq!(a["upstream_target"], "/users/42?x=1", "{a}");
    let a = explain(&lw, &url("http://www.example.com/x"));
    assert_eq!(a["redirect_to"], "https://shop.example.com/x");
    assert_eq!(a["server"]["names"][0], "*.example.com");
    let a = explain(&lw, &url("http://unknown.test/"));
    assert_eq!(a["server"]["default"], true);
    assert_eq!(a["lane"]["source"], "default");
    assert_eq!(a["instances"][0]["id"], "web-1");

    // Nothing was sent upstream.
    assert_eq!(web.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(user.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Bad questions are 400s naming the problem.
    let (code, body) = lw.api("GET", "/api/v1/explain?url=nonsense", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("url"), "{body}");
}

#[test]
fn explains_lanes_and_version_choices() {
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    let net = vip_net();
    let lw = Laneway::start_full(
        ROUTES,
        "bind_entries = false",
        &format!("vip_pool = [\"{net}.2-{net}.9\"]"),
        "",
    );
    lw.register("user-1", "user-api", Some("stable"), stable.port());
    lw.register("user-2", "user-api", Some("v2"), v2.port());
    lw.register("web-1", "web", Some("stable"), stable.port());
    let (code, t1) = lw.create_lane(r#"{"name":"t1","services":{"user-api":"v2"}}"#);
    assert_eq!(code, 201);
    lw.create_lane(r#"{"name":"t2","parent":"t1"}"#);
    lw.create_lane(r#"{"name":"t3","services":{"user-api":"v9"}}"#);
    lw.create_lane(r#"{"name":"t4","services":{"user-api":"v9"},"strict":true}"#);
    let u = url("http://shop.example.com/user/1");

    let a = explain(&lw, &format!("{u}&lane=t1"));
    assert_eq!(
        (
            a["lane"]["source"].as_str(),
            a["choice"].as_str(),
            a["version"].as_str()
        ),
        (Some("header"), Some("override"), Some("v2")),
        "{a}"
    );
    assert_eq!(a["instances"][0]["id"], "user-2");
    let a = explain(&lw, &format!("{u}&cookie=laneway_lane%3Dt2"));
    assert_eq!(a["lane"]["source"], "cookie");
    assert_eq!(a["choice"], "inherited");
    assert_eq!(a["served_by"], "t1");
    assert_eq!(
        a["lane"]["chain"],
        serde_json::json!(["t2", "t1", "baseline"])
    );
    let a = explain(&lw, &format!("{u}&lane=t3"));
    assert_eq!(a["choice"], "fallback", "{a}");
    // The unpinned baseline pool: the "stable" instances.
    assert_eq!(a["version"], "baseline");
    assert_eq!(a["instances"][0]["id"], "user-1");
    let a = explain(&lw, &format!("{u}&lane=t4"));
    assert_eq!(a["status"], 503, "{a}");
    assert!(a["why"].as_str().unwrap().contains("v9"), "{a}");
    let a = explain(&lw, &url("http://shop.example.com.t1.lanes.test/user/1"));
    assert_eq!(a["lane"]["source"], "hostname");
    assert_eq!(a["rules_host"], "shop.example.com");
    assert_eq!(a["host_recovered"], true);
    let vip = t1["entries"]["vip"].as_str().unwrap();
    let a = explain(&lw, &format!("{u}&dst={vip}%3A80"));
    assert_eq!(a["lane"]["source"], "vip", "{a}");
    assert_eq!(a["lane"]["name"], "t1");
    let a = explain(&lw, &u);
    assert_eq!(
        (a["lane"]["name"].as_str(), a["choice"].as_str()),
        (Some("baseline"), Some("baseline"))
    );

    // The command line prints the same.
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "explain",
            "http://shop.example.com/user/1",
            "--lane",
            "t2",
            "--admin",
        ])
        .arg(lw.admin.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("lane      t2 (from header; chain t2 → t1 → baseline)"),
        "{text}"
    );
    assert!(
        text.contains("version   v2 (inherited, served by lane t1)"),
        "{text}"
    );
    assert!(text.contains("instance  user-2"), "{text}");
    assert!(text.contains("routes.toml:"), "{text}");
}
