//! End-to-end: upstream health through the real laneway binary on loopback.
//! Active checks take an instance out and bring it back, passive ejection
//! holds out an instance that fails requests (5xx, refused connections) and
//! re-admits it after its backoff, a lane falls back (or answers 503 when
//! strict) when its version's only instance is unhealthy, and read failures
//! are retried for idempotent methods only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// An upstream whose behaviour the test switches: its `/health` answer,
/// the status of every other request, and whether to close the connection
/// (after reading a request, before answering) for the next few requests.
/// Every answer carries `Connection: close`, so laneway never reuses a
/// connection to it and every attempt is a fresh request here.
struct Flaky {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    close_next: Arc<AtomicUsize>,
    /// `METHOD target` of every request other than `/health`, closed ones too.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Flaky {
    fn start(name: &str) -> Flaky {
        Flaky::on(name, TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    fn on(name: &str, listener: TcpListener) -> Flaky {
        let f = Flaky {
            addr: listener.local_addr().unwrap(),
            healthy: Arc::new(AtomicBool::new(true)),
            status: Arc::new(AtomicU16::new(200)),
            close_next: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (healthy, status, close_next, seen, stop) = (
            f.healthy.clone(),
            f.status.clone(),
            f.close_next.clone(),
            f.seen.clone(),
            f.stop.clone(),
        );
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (healthy, status, close_next, seen, name) = (
                    healthy.clone(),
                    status.clone(),
                    close_next.clone(),
                    seen.clone(),
                    name.clone(),
                );
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let target = parts.next().unwrap_or("").to_string();
                    let mut conn = conn;
                    let code = if target == "/health" {
                        if healthy.load(Ordering::SeqCst) {
                            200
                        } else {
                            503
                        }
                    } else {
                        seen.lock().unwrap().push(format!("{method} {target}"));
                        let close = close_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if close {
                            return; // dropped: closed before any response byte
                        }
                        status.load(Ordering::SeqCst)
                    };
                    let json =
                        serde_json::json!({"upstream": name, "method": method, "target": target})
                            .to_string();
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = conn.write_all(resp.as_bytes());
                });
            }
        });
        f
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "/api/"
service = "api"

[[server.location]]
match = "/noretry/"
service = "web"
retries = 0
"#;

/// The value of the metric line whose name and labels all match.
fn metric(lw: &Laneway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = lw.api("GET", "/metrics", None);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let Some((series, _)) = l.rsplit_once(' ') else {
                return false;
            };
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Which upstreams answered `n` requests in a row.
fn answered(lw: &Laneway, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = lw.get("shop.example.com", "/x", headers);
            if r.status == 200 {
                r.upstream()
            } else {
                format!("status {}", r.status)
            }
        })
        .collect()
}

fn explain(lw: &Laneway, query: &str) -> serde_json::Value {
    let (status, text) = lw.api("GET", &format!("/api/v1/explain?{query}"), None);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

const CHECKED: &str = r#"
[services.web.check]
http = "/health"
interval = "50ms"
timeout = "1s"
rise = 2
fall = 2
"#;

#[test]
fn active_check_takes_an_instance_out_and_brings_it_back() {
    let lw = Laneway::start(ROUTES, CHECKED);
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    lw.register("web-a", "web", None, a.port());
    lw.register("web-b", "web", None, b.port());
    assert!(
        eventually(Duration::from_secs(10), || {
            let got = answered(&lw, 4, &[]);
            got.contains(&"a".to_string()) && got.contains(&"b".to_string())
        }),
        "both instances serve"
    );
    let up = |v: f64| {
        move |lw: &Laneway| {
            metric(lw, "laneway_upstream_health", &[("instance", "web-a")]) == Some(v)
        }
    };
    assert!(up(1.0)(&lw));

    a.healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || up(0.0)(&lw)),
        "the check takes web-a out:\n{}",
        lw.log()
    );
    assert!(answered(&lw, 10, &[]).iter().all(|u| u == "b"));
    let e = explain(&lw, "url=http://shop.example.com/x");
    let held = &e["instances"]["held_out"];
    assert_eq!(held[0]["id"], "web-a", "{e}");
    assert!(
        held[0]["reason"]
            .as_str()
            .unwrap()
            .contains("active check failing: GET /health answered 503"),
        "{e}"
    );
    let held_out = |id: &str| {
        let (status, body) = lw.api("GET", "/api/v1/instances", None);
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {body}"))["held_out"]
            .clone()
    };
    let reason = held_out("web-a");
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("active check failing")),
        "{reason}"
    );
    assert_eq!(held_out("web-b"), serde_json::Value::Null);
    assert!(
        metric(
            &lw,
            "laneway_health_checks_total",
            &[("service", "web"), ("result", "fail")]
        )
        .unwrap()
            >= 2.0
    );

    a.healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || up(1.0)(&lw)),
        "web-a comes back"
    );
    assert!(eventually(Duration::from_secs(10), || answered(
        &lw,
        4,
        &[]
    )
    .contains(&"a".to_string())));
    assert_eq!(held_out("web-a"), serde_json::Value::Null);
}

#[test]
fn a_lane_falls_back_when_its_version_is_unhealthy_and_a_strict_lane_answers_503() {
    let lw = Laneway::start(ROUTES, CHECKED);
    let stable = Flaky::start("stable");
    let v2 = Flaky::start("v2");
    lw.register("web-1", "web", Some("stable"), stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );
    assert_eq!(
        lw.create_lane(r#"{"name":"t-s","services":{"web":"v2"},"strict":true}"#)
            .0,
        201
    );
    let lane = |l: &'static str| [("X-Laneway-Lane", l)];
    assert!(answered(&lw, 3, &lane("t-1")).iter().all(|u| u == "v2"));

    v2.healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || answered(&lw, 1, &lane("t-1"))
            == ["stable"]),
        "t-1 falls back to the baseline:\n{}",
        lw.log()
    );
    let r = lw.get("shop.example.com", "/x", &lane("t-1"));
    assert_eq!(r.header("x-laneway-version"), Some("baseline"));
    let r = lw.get("shop.example.com", "/x", &lane("t-s"));
    assert_eq!(r.status, 503);
    for word in ["t-s", "v2", "web", "strict"] {
        assert!(r.body.contains(word), "{word}: {}", r.body);
    }
    let e = explain(&lw, "url=http://shop.example.com/x&lane=t-1");
    assert_eq!(e["version"]["choice"], "fallback", "{e}");
    assert_eq!(e["version"]["chain"][0]["lane"], "t-1");
    assert_eq!(e["version"]["chain"][0]["healthy"], false);
    let e = explain(&lw, "url=http://shop.example.com/x&lane=t-s");
    assert_eq!(e["version"]["choice"], "strict", "{e}");
    assert_eq!(e["outcome"]["status"], 503);

    v2.healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || answered(&lw, 1, &lane("t-s"))
            == ["v2"]),
        "v2 serves again"
    );
    assert_eq!(answered(&lw, 1, &lane("t-1")), ["v2"]);
}

#[test]
fn passive_ejection_holds_out_failing_instances_and_readmits_them_after_backoff() {
    let passive = r#"
[health_checks.passive]
consecutive_failures = 2
base_ejection = "1s"
max_ejection = "4s"

[services.web.passive]
on_5xx = true

[services.api.passive]
base_ejection = "2s"
"#;
    let lw = Laneway::start(ROUTES, passive);
    let a = Flaky::start("a");
    let b = Flaky::start("b");
    lw.register("web-a", "web", None, a.port());
    lw.register("web-b", "web", None, b.port());

    // web-a answers 500: after two in a row it is ejected.
    a.status.store(500, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || {
            answered(&lw, 2, &[]);
            metric(
                &lw,
                "laneway_upstream_ejections_total",
                &[("service", "web")],
            ) >= Some(1.0)
        }),
        "web-a is ejected:\n{}",
        lw.log()
    );
    assert!(eventually(Duration::from_secs(5), || answered(
        &lw,
        10,
        &[]
    )
    .iter()
    .all(|u| u == "b")));
    // Healthy again: it gets traffic once its backoff is over.
    a.status.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || answered(&lw, 4, &[])
            .contains(&"a".to_string())),
        "web-a is re-admitted"
    );

    // An instance that refuses connections: each request moves on to
    // another instance, and after two refusals it is ejected.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    drop(held);
    let ok = Flaky::start("api-ok");
    lw.register("api-dead", "api", None, port);
    lw.register("api-ok", "api", None, ok.port());
    for _ in 0..6 {
        let r = lw.get("shop.example.com", "/api/x", &[]);
        assert_eq!((r.status, r.upstream()), (200, "api-ok".to_string()));
    }
    assert!(
        metric(
            &lw,
            "laneway_upstream_connect_errors_total",
            &[("service", "api")]
        ) >= Some(2.0)
    );
    assert!(
        metric(
            &lw,
            "laneway_upstream_ejections_total",
            &[("service", "api")]
        ) >= Some(1.0)
    );
    let e = explain(&lw, "url=http://shop.example.com/api/x");
    assert!(
        e["instances"]["held_out"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("ejected after 2 consecutive failures"),
        "{e}"
    );
    // It comes up: re-admitted after the backoff, it serves.
    let mut listener = None;
    assert!(eventually(Duration::from_secs(5), || {
        listener = TcpListener::bind(("127.0.0.1", port)).ok();
        listener.is_some()
    }));
    let listener = listener.unwrap();
    let revived = Flaky::on("api-revived", listener);
    assert!(
        eventually(Duration::from_secs(10), || (0..4)
            .any(
                |_| lw.get("shop.example.com", "/api/x", &[]).upstream() == "api-revived"
            )),
        "the revived instance is re-admitted:\n{}",
        lw.log()
    );
    drop(revived);
}

#[test]
fn read_failures_are_retried_for_idempotent_methods_only() {
    let lw = Laneway::start(ROUTES, "");
    let up = Flaky::start("only");
    lw.register("web-1", "web", None, up.port());
    let send = |method: &str, target: &str, body: &[u8]| {
        let mut c = Conn::open(lw.proxy).unwrap();
        c.request(method, target, &[("host", "shop.example.com")], body)
            .unwrap()
    };

    // A POST whose upstream closes before answering is not sent again.
    up.close_next.store(1, Ordering::SeqCst);
    let r = send("POST", "/form", b"a=1");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(up.seen(), ["POST /form"]);

    // A GET is, on the same instance when it is the only one.
    up.close_next.store(1, Ordering::SeqCst);
    let r = send("GET", "/page", b"");
    assert_eq!((r.status, r.upstream()), (200, "only".to_string()));
    assert_eq!(up.seen()[1..], ["GET /page", "GET /page"]);

    // So is a PUT whose whole body went out with the head.
    up.close_next.store(1, Ordering::SeqCst);
    let r = send("PUT", "/doc", b"{\"x\":1}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.seen()[3..], ["PUT /doc", "PUT /doc"]);

    // And one whose body arrives after its head: a small body is read whole
    // before the request goes upstream, so it can be sent again.
    up.close_next.store(1, Ordering::SeqCst);
    let r = Conn::open(lw.proxy)
        .unwrap()
        .request_split(
            "PUT",
            "/late",
            &[("host", "shop.example.com")],
            b"{\"x\":2}",
            Duration::from_millis(100),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.seen()[5..], ["PUT /late", "PUT /late"]);

    // The budget: `retries = 0` on the location, and [proxy] read_retries
    // (1 by default) bounds the rest.
    up.close_next.store(1, Ordering::SeqCst);
    assert_eq!(send("GET", "/noretry/x", b"").status, 502);
    assert_eq!(up.seen()[7..], ["GET /noretry/x"]);
    up.close_next.store(2, Ordering::SeqCst);
    assert_eq!(send("GET", "/twice", b"").status, 502);
    assert_eq!(up.seen()[8..], ["GET /twice", "GET /twice"]);
    assert_eq!(
        metric(&lw, "laneway_upstream_retries_total", &[("reason", "read")]),
        Some(4.0)
    );
}
