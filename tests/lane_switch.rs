//! End-to-end: lanes in the browser on the data plane, through the real
//! laneway binary (the engine of `LANEWAY_ENGINE`; `scripts/test.sh` runs
//! this suite on both): the lane switch (`/__laneway/lane`), unknown lanes
//! (the 404 page for a lane hostname; `X-Laneway-Lane-Unknown`, the counter
//! and the access log for a header or cookie), response headers kept in a
//! lane entered by hostname, and nginx's `proxy_redirect` /
//! `proxy_cookie_domain`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const ROUTES: &str = r#"
[[server]]
names = ["bj.example.com", "*.cities.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "= /moved"
redirect = { status = 302, to = "http://$host/new" }
"#;

/// An upstream that answers 200 with a JSON body naming itself and, for
/// every request header `x-answer-<name>: <value>`, the response header
/// `<name>: <value>` (so a test decides what the upstream sends back).
struct Answering {
    addr: SocketAddr,
}

impl Answering {
    fn start(name: &'static str) -> Answering {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || answer(conn, name));
            }
        });
        Answering { addr }
    }
}

fn answer(conn: TcpStream, name: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut extra = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if let Some(n) = k.trim().to_ascii_lowercase().strip_prefix("x-answer-") {
                    extra.push_str(&format!("{n}: {}\r\n", v.trim()));
                }
            }
        }
        let body = serde_json::json!({ "upstream": name, "target": target }).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

struct Site {
    lw: Laneway,
    _stable: Answering,
    _v2: Answering,
}

/// laneway with lane `t-42` (web at v2) and `checkout-v2`, the lane cookie
/// living an hour, an access log file.
fn site() -> Site {
    let stable = Answering::start("stable");
    let v2 = Answering::start("v2");
    let lw = Laneway::start_with_lanes(
        ROUTES,
        "cookie_max_age = \"1h\"",
        "access_file = \"access.log\"",
    );
    lw.register("web-1", "web", Some("stable"), stable.addr.port());
    lw.register("web-2", "web", Some("v2"), v2.addr.port());
    for body in [
        r#"{"name":"t-42","services":{"web":"v2"}}"#,
        r#"{"name":"checkout-v2","services":{"web":"v2"}}"#,
    ] {
        let (code, v) = lw.create_lane(body);
        assert_eq!(code, 201, "{v}");
    }
    Site {
        lw,
        _stable: stable,
        _v2: v2,
    }
}

fn upstream(r: &Resp) -> String {
    r.upstream()
}

fn request(lw: &Laneway, method: &str, host: &str, target: &str) -> Resp {
    Conn::open(lw.proxy)
        .and_then(|mut c| c.request(method, target, &[("host", host)], b""))
        .unwrap()
}

/// The value of `laneway_unknown_lane_total{source="<source>"}`.
fn unknown_count(lw: &Laneway, source: &str) -> u64 {
    let (_, text) = lw.api("GET", "/metrics", None);
    let want = format!("laneway_unknown_lane_total{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in:\n{text}"))
}

#[test]
fn the_switch_sets_the_lane_cookie_and_redirects() {
    let s = site();
    let lw = &s.lw;
    let r = lw.get(
        "bj.example.com",
        "/__laneway/lane?use=t-42&to=%2Forders%3Fa%3D1",
        &[],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/orders?a=1"));
    let cookie = r.header("set-cookie").unwrap();
    for part in [
        "laneway_lane=t-42",
        "Path=/",
        "SameSite=Lax",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(part), "{part} missing in {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    // The cookie puts the browser in the lane.
    let r = lw.get("bj.example.com", "/", &[("cookie", "laneway_lane=t-42")]);
    assert_eq!(upstream(&r), "v2");
    // `to` defaults to the root; HEAD is answered the same; POST is not.
    let r = request(lw, "HEAD", "bj.example.com", "/__laneway/lane?use=t-42");
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let r = request(lw, "POST", "bj.example.com", "/__laneway/lane?use=t-42");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    assert!(r.header("set-cookie").is_none());
}

#[test]
fn the_switch_is_no_open_redirect() {
    let s = site();
    for to in [
        "//evil.example/",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "http://evil.example/",
        "https:%2F%2Fevil.example",
        "evil.example",
        "/a%0d%0aSet-Cookie:%20x=1",
        "/%09/evil.example",
    ] {
        let r = s.lw.get(
            "bj.example.com",
            &format!("/__laneway/lane?use=t-42&to={to}"),
            &[],
        );
        assert_eq!(r.status, 400, "to={to}: {}", r.body);
        assert!(r.body.contains("\"to\" is refused"), "{}", r.body);
        assert!(r.header("location").is_none(), "to={to}");
        assert!(r.header("set-cookie").is_none(), "to={to}");
    }
}

#[test]
fn clear_expires_the_cookie() {
    let s = site();
    let r =
        s.lw.get("bj.example.com", "/__laneway/lane?clear=1&to=/back", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/back"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("laneway_lane=;"), "{cookie}");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
}

#[test]
fn a_switch_to_an_unknown_lane_gets_the_unknown_lane_page() {
    let s = site();
    let r =
        s.lw.get("bj.example.com", "/__laneway/lane?use=t-43&to=/x", &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    assert!(r.body.contains("no lane \"t-43\""), "{}", r.body);
    assert!(r.body.contains("did you mean: t-42"), "{}", r.body);
    assert!(
        r.body.contains("/__laneway/lane?use=t-42&to=%2Fx"),
        "{}",
        r.body
    );
}

#[test]
fn an_unknown_lane_hostname_answers_404_listing_the_lanes() {
    let s = site();
    let lw = &s.lw;
    let port = lw.proxy.port();
    let host = format!("bj.example.com.t-43.lanes.test:{port}");
    let before = unknown_count(lw, "hostname");

    let r = lw.get(&host, "/", &[("accept", "text/html,application/xhtml+xml")]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("<code>t-43</code>"), "{}", r.body);
    let link = format!("href=\"http://bj.example.com.t-42.lanes.test:{port}/\"");
    assert!(r.body.contains(&link), "{link} missing: {}", r.body);
    assert!(r.body.contains("checkout-v2"), "{}", r.body);
    assert!(r.body.contains("Did you mean"), "{}", r.body);

    let r = lw.get(&format!("T-43.lanes.test:{port}"), "/", &[]);
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(r.body.contains("no lane \"t-43\""), "{}", r.body);
    assert!(r.body.contains("did you mean: t-42"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("t-42  http://t-42.lanes.test:{port}/")),
        "{}",
        r.body
    );
    assert_eq!(unknown_count(lw, "hostname"), before + 2);

    // A known lane hostname is served by its lane.
    let r = lw.get(&format!("bj.example.com.t-42.lanes.test:{port}"), "/", &[]);
    assert_eq!(upstream(&r), "v2");
}

#[test]
fn an_unknown_lane_in_a_header_or_cookie_is_served_by_the_baseline_and_says_so() {
    let s = site();
    let lw = &s.lw;
    let before = (
        unknown_count(lw, "header"),
        unknown_count(lw, "cookie"),
        unknown_count(lw, "baggage"),
    );
    let r = lw.get("bj.example.com", "/", &[("x-laneway-lane", "t-43")]);
    assert_eq!(r.status, 200);
    assert_eq!(upstream(&r), "stable");
    assert_eq!(r.header("x-laneway-lane"), Some("baseline"));
    assert_eq!(r.header("x-laneway-lane-unknown"), Some("t-43"));
    let r = lw.get("bj.example.com", "/", &[("cookie", "laneway_lane=nope")]);
    assert_eq!(upstream(&r), "stable");
    assert_eq!(r.header("x-laneway-lane-unknown"), Some("nope"));
    let r = lw.get(
        "bj.example.com",
        "/",
        &[("baggage", "a=1,laneway-lane=t-44")],
    );
    assert_eq!(upstream(&r), "stable");
    assert_eq!(r.header("x-laneway-lane-unknown"), Some("t-44"));
    assert_eq!(
        (
            unknown_count(lw, "header"),
            unknown_count(lw, "cookie"),
            unknown_count(lw, "baggage")
        ),
        (before.0 + 1, before.1 + 1, before.2 + 1)
    );
    // A request naming no lane carries neither header.
    let r = lw.get("bj.example.com", "/", &[]);
    assert_eq!(r.header("x-laneway-lane-unknown"), None);
    // The access log names the unknown lane.
    let path = lw.path("access.log");
    let logged = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("lane=baseline") && l.contains("lane_unknown=t-43"))
    });
    assert!(
        logged,
        "no access line with lane_unknown=t-43:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
}

#[test]
fn a_hostname_lane_keeps_redirects_and_cookies_in_the_lane() {
    let s = site();
    let lw = &s.lw;
    let port = lw.proxy.port();
    let host = format!("bj.example.com.t-42.lanes.test:{port}");
    let lane_url = |h: &str, p: &str| format!("http://{h}.t-42.lanes.test:{port}{p}");
    let r = lw.get(
        &host,
        "/",
        &[
            ("x-answer-location", "http://bj.example.com/x?y=1"),
            (
                "x-answer-content-location",
                "https://sh.cities.example.com/c",
            ),
            ("x-answer-refresh", "0; url=http://bj.example.com/r"),
            (
                "x-answer-set-cookie",
                "sid=1; Path=/; Domain=.example.com; HttpOnly",
            ),
        ],
    );
    assert_eq!(upstream(&r), "v2");
    assert_eq!(
        r.header("location"),
        Some(lane_url("bj.example.com", "/x?y=1").as_str())
    );
    assert_eq!(
        r.header("content-location"),
        Some(lane_url("sh.cities.example.com", "/c").as_str())
    );
    assert_eq!(
        r.header("refresh"),
        Some(format!("0; url={}", lane_url("bj.example.com", "/r")).as_str())
    );
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=1; Path=/; Domain=example.com.t-42.lanes.test; HttpOnly")
    );

    // Hosts the rules don't serve are left alone.
    let r = lw.get(
        &host,
        "/",
        &[
            ("x-answer-location", "http://other.example.net/x"),
            ("x-answer-set-cookie", "sid=1; Domain=.example.net"),
        ],
    );
    assert_eq!(r.header("location"), Some("http://other.example.net/x"));
    assert_eq!(r.header("set-cookie"), Some("sid=1; Domain=.example.net"));

    // laneway's own redirect (built from $host) stays in the lane too.
    let r = lw.get(&host, "/moved", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(lane_url("bj.example.com", "/new").as_str())
    );
}

#[test]
fn a_lane_chosen_by_header_or_cookie_is_not_rewritten() {
    let s = site();
    let lw = &s.lw;
    for chosen in [("x-laneway-lane", "t-42"), ("cookie", "laneway_lane=t-42")] {
        let r = lw.get(
            "bj.example.com",
            "/",
            &[
                chosen,
                ("x-answer-location", "http://bj.example.com/x"),
                ("x-answer-set-cookie", "sid=1; Domain=.example.com"),
            ],
        );
        assert_eq!(upstream(&r), "v2");
        assert_eq!(r.header("location"), Some("http://bj.example.com/x"));
        assert_eq!(r.header("set-cookie"), Some("sid=1; Domain=.example.com"));
        let r = lw.get("bj.example.com", "/moved", &[chosen]);
        assert_eq!(r.header("location"), Some("http://bj.example.com/new"));
    }
}

#[test]
fn nginx_proxy_redirect_and_proxy_cookie_domain() {
    let app = Answering::start("app");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nginx.conf"),
        format!(
            r#"
http {{
    upstream app {{ server 127.0.0.1:{}; }}
    server {{
        listen 8080 default_server;
        server_name bj.example.com;
        location /one/ {{ proxy_pass http://app/two/; }}
        location /off/ {{
            proxy_pass http://app/two/;
            proxy_redirect off;
        }}
        location = /ret {{ return 302 http://$host/back; }}
        location /r/ {{
            proxy_pass http://app;
            proxy_redirect http://backend.internal/ http://bj.example.com/;
            proxy_redirect ~^http://(\w+)\.corp/(.*)$ /corp/$1/$2;
            proxy_cookie_domain backend.internal example.com;
        }}
    }}
}}
"#,
            app.addr.port()
        ),
    )
    .unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lw = Laneway::start_listening(
        tmp,
        &[listen],
        "",
        &format!("nginx = \"nginx.conf\"\n[routes.nginx_listen]\n\"{listen}\" = 8080\n"),
    );
    let location = |path: &str, answer: &str| {
        let r = lw.get(
            "bj.example.com",
            path,
            &[
                ("x-answer-location", answer),
                ("x-answer-set-cookie", "sid=1; Domain=.backend.internal"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        (
            r.header("location").unwrap_or("").to_string(),
            r.header("set-cookie").unwrap_or("").to_string(),
        )
    };
    // proxy_redirect default: the proxy_pass URL becomes the location.
    assert_eq!(location("/one/a", "http://app/two/b").0, "/one/b");
    assert_eq!(location("/off/a", "http://app/two/b").0, "http://app/two/b");
    let (loc, cookie) = location("/r/a", "http://backend.internal/x");
    assert_eq!(loc, "http://bj.example.com/x");
    assert_eq!(cookie, "sid=1; Domain=.example.com");
    assert_eq!(location("/r/a", "http://hr.corp/p/q").0, "/corp/hr/p/q");
    assert_eq!(
        location("/r/a", "http://else.where/").0,
        "http://else.where/"
    );
    // without proxy_cookie_domain the cookie is passed unchanged
    assert_eq!(location("/one/a", "/").1, "sid=1; Domain=.backend.internal");

    // Entered by hostname: proxy_redirect first, then into the lane; and
    // nginx's own `return 302` into the lane too.
    let (code, v) = lw.create_lane(r#"{"name":"t-1","services":{}}"#);
    assert_eq!(code, 201, "{v}");
    let port = listen.port();
    let host = format!("bj.example.com.t-1.lanes.test:{port}");
    let r = lw.get(
        &host,
        "/r/a",
        &[
            ("x-answer-location", "http://backend.internal/x"),
            ("x-answer-set-cookie", "sid=1; Domain=backend.internal"),
        ],
    );
    assert_eq!(
        r.header("location"),
        Some(format!("http://bj.example.com.t-1.lanes.test:{port}/x").as_str())
    );
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=1; Domain=example.com.t-1.lanes.test")
    );
    let r = lw.get(&host, "/ret", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("http://bj.example.com.t-1.lanes.test:{port}/back").as_str())
    );
}
