//! laneway's limits end to end, on the real binary: the Pingora engine's
//! request-head and keep-alive timeouts, `[proxy] max_connections` on both
//! engines, loop detection (508) on both engines, and the refusal of
//! instances registered at laneway's own listeners (embedded and Consul
//! mode).

mod common;
mod consul_double;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Laneway, Upstream, SIMPLE_ROUTES};
use consul_double::ConsulDouble;
use serde_json::json;

/// Generous bound for "the server closed the connection": far above the
/// configured timeouts, far below the defaults they replace.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

/// The value of the metric line whose name and labels all match (summed
/// over the lines that do).
fn metric(lw: &Laneway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = lw.api("GET", "/metrics", None);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Everything the server sends until it closes the connection; an error
/// when it is still open after `limit`. A reset counts as closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => return Ok(got),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "still open after {limit:?}; received {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// A keep-alive client connection whose socket the test can watch.
struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(CLOSED_WITHIN)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// One GET; the status and body, or the I/O error.
    fn get(&mut self, target: &str, headers: &str) -> std::io::Result<(u16, String)> {
        let req = format!("GET {target} HTTP/1.1\r\nhost: shop.example.com\r\n{headers}\r\n");
        self.stream.write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Registers `id` of `service` at `addr` in laneway's embedded registry;
/// the admin API's status and body.
fn register_at(lw: &Laneway, id: &str, service: &str, address: &str, port: u16) -> (u16, String) {
    let body = json!({
        "ID": id, "Name": service, "Address": address, "Port": port, "Meta": {"version": "stable"},
    });
    lw.api("PUT", "/v1/agent/service/register", Some(&body.to_string()))
}

fn engine(engine: &str, more: &str) -> String {
    format!("engine = \"{engine}\"\n{more}")
}

// ------------------------------------------------- Pingora engine timeouts

#[test]
fn pingora_engine_answers_a_slow_request_head_408_at_header_timeout() {
    let up = Upstream::start("web");
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &engine("pingora", "header_timeout = \"1s\""),
        "",
        "",
    );
    lw.register("web-1", "web", Some("stable"), up.port());

    // A client that sends a head one byte at a time and never ends it.
    let mut s = TcpStream::connect(lw.proxy).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: shop.example.com\r\nx-slow: ")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dribble = {
        let mut w = s.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && w.write_all(b"a").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let got = read_until_closed(&mut s, CLOSED_WITHIN);
    stop.store(true, Ordering::SeqCst);
    dribble.join().unwrap();
    let got =
        String::from_utf8_lossy(&got.unwrap_or_else(|e| panic!("slow head: {e}"))).into_owned();
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(got.contains("header_timeout"), "{got}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    assert!(
        metric(
            &lw,
            "laneway_local_responses_total",
            &[("reason", "header_timeout")]
        ) >= 1.0
    );

    // A connection that sends nothing is closed without an answer.
    let mut quiet = TcpStream::connect(lw.proxy).unwrap();
    let got = read_until_closed(&mut quiet, CLOSED_WITHIN)
        .unwrap_or_else(|e| panic!("silent connection: {e}"));
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // A head sent whole is still served, twice on one connection.
    let mut c = Client::open(lw.proxy);
    for _ in 0..2 {
        let (status, body) = c.get("/", "").unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn pingora_engine_closes_idle_keepalive_connections_at_client_keepalive() {
    let up = Upstream::start("web");
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &engine("pingora", "client_keepalive = \"1s\""),
        "",
        "",
    );
    lw.register("web-1", "web", Some("stable"), up.port());
    let mut c = Client::open(lw.proxy);
    for _ in 0..3 {
        let (status, body) = c.get("/", "").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // then idle: laneway closes it (Pingora alone kept it open for good)
    let got = read_until_closed(&mut c.stream, CLOSED_WITHIN)
        .unwrap_or_else(|e| panic!("idle keep-alive connection: {e}"));
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
}

// ------------------------------------------------------- max_connections

fn connections_beyond_max_are_shed(engine_name: &str) {
    let up = Upstream::start("web");
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &engine(engine_name, "max_connections = 5"),
        "",
        "",
    );
    lw.register("web-1", "web", Some("stable"), up.port());

    // Five connections in (the start-up probe's connection may still be
    // counted for a moment: a connection refused then is tried again).
    let mut held: Vec<Client> = Vec::new();
    let filled = eventually(Duration::from_secs(10), || {
        let mut c = Client::open(lw.proxy);
        if matches!(c.get("/", ""), Ok((200, _))) {
            held.push(c);
        }
        held.len() == 5
    });
    assert!(
        filled,
        "{engine_name}: only {} connections admitted",
        held.len()
    );

    // Five more: each answered 503 and closed at once, never served.
    let hits = up.hits.load(Ordering::SeqCst);
    for i in 0..5 {
        let mut s = TcpStream::connect(lw.proxy).unwrap();
        let got = read_until_closed(&mut s, CLOSED_WITHIN)
            .unwrap_or_else(|e| panic!("{engine_name}: extra connection {i}: {e}"));
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 503 "), "{engine_name}: {got}");
        assert!(got.contains("max_connections = 5"), "{engine_name}: {got}");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), hits);
    assert!(
        metric(&lw, "laneway_connections_shed_total", &[]) >= 5.0,
        "{engine_name}"
    );

    // The established connections keep being served.
    for c in &mut held {
        let (status, body) = c.get("/", "").unwrap();
        assert_eq!(status, 200, "{engine_name}: {body}");
    }

    // Once they close, new connections are admitted again.
    drop(held);
    let admitted = eventually(Duration::from_secs(10), || {
        matches!(Client::open(lw.proxy).get("/", ""), Ok((200, _)))
    });
    assert!(
        admitted,
        "{engine_name}: no connection admitted after the others closed"
    );
}

#[test]
fn connections_beyond_max_connections_are_shed_h1() {
    connections_beyond_max_are_shed("h1");
}

#[test]
fn connections_beyond_max_connections_are_shed_pingora() {
    connections_beyond_max_are_shed("pingora");
}

// ------------------------------------------------------------ loop detection

/// Two laneways, each with `web` registered at the other's data address:
/// a request goes A → B → A, where A finds its own id and answers 508.
fn a_loop_through_two_laneways_ends_in_508(engine_name: &str) {
    let a = Laneway::start_full(SIMPLE_ROUTES, &engine(engine_name, ""), "", "");
    let b = Laneway::start_full(SIMPLE_ROUTES, &engine(engine_name, ""), "", "");
    let (code, body) = register_at(&a, "web-b", "web", "127.0.0.1", b.proxy.port());
    assert_eq!(code, 200, "{body}");
    let (code, body) = register_at(&b, "web-a", "web", "127.0.0.1", a.proxy.port());
    assert_eq!(code, 200, "{body}");

    let r = a.get("shop.example.com", "/", &[]);
    assert_eq!(r.status, 508, "{engine_name}: {}", r.body);
    for want in ["loop detected", "\"baseline\"", "\"web\""] {
        assert!(r.body.contains(want), "{engine_name}: {}", r.body);
    }
    // Stopped at the second arrival at A: one 508 there, none at B.
    let loops = |lw: &Laneway| metric(lw, "laneway_local_responses_total", &[("reason", "loop")]);
    assert_eq!(loops(&a), 1.0, "{engine_name}");
    assert_eq!(loops(&b), 0.0, "{engine_name}");
}

#[test]
fn a_loop_through_two_laneways_ends_in_508_h1() {
    a_loop_through_two_laneways_ends_in_508("h1");
}

#[test]
fn a_loop_through_two_laneways_ends_in_508_pingora() {
    a_loop_through_two_laneways_ends_in_508("pingora");
}

/// The hop marker goes upstream with this instance appended; a request
/// that passed through `max_hops` laneways already is answered 508.
fn hop_marker_and_max_hops(engine_name: &str) {
    let up = Upstream::start("web");
    let lw = Laneway::start_full(SIMPLE_ROUTES, &engine(engine_name, "max_hops = 4"), "", "");
    lw.register("web-1", "web", Some("stable"), up.port());

    let r = lw.get("shop.example.com", "/", &[]);
    assert_eq!(r.status, 200, "{engine_name}: {}", r.body);
    let own = r.json()["headers"]["x-laneway-via"]
        .as_str()
        .unwrap_or_else(|| panic!("{engine_name}: no x-laneway-via upstream: {}", r.body))
        .to_string();
    assert_eq!(own.len(), 8, "{engine_name}: {own}");
    assert!(own.bytes().all(|b| b.is_ascii_hexdigit()), "{own}");
    let (_, status) = lw.api("GET", "/api/v1/status", None);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["instance"], own.as_str(), "the status names the id");

    let r = lw.get("shop.example.com", "/", &[("X-Laneway-Via", "a1, a2, a3")]);
    assert_eq!(r.status, 200, "{engine_name}: {}", r.body);
    let seen: Vec<String> = r.json()["headers"]["x-laneway-via"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(seen, ["a1", "a2", "a3", own.as_str()], "{engine_name}");

    let hits = up.hits.load(Ordering::SeqCst);
    let r = lw.get(
        "shop.example.com",
        "/",
        &[("X-Laneway-Via", "a1, a2"), ("X-Laneway-Via", "a3,a4")],
    );
    assert_eq!(r.status, 508, "{engine_name}: {}", r.body);
    assert!(r.body.contains("max_hops"), "{engine_name}: {}", r.body);
    let r = lw.get("shop.example.com", "/", &[("X-Laneway-Via", &own)]);
    assert_eq!(r.status, 508, "{engine_name}: {}", r.body);
    assert!(r.body.contains(&own), "{engine_name}: {}", r.body);
    assert_eq!(up.hits.load(Ordering::SeqCst), hits, "{engine_name}");
}

#[test]
fn hop_marker_and_max_hops_h1() {
    hop_marker_and_max_hops("h1");
}

#[test]
fn hop_marker_and_max_hops_pingora() {
    hop_marker_and_max_hops("pingora");
}

// ------------------------------------------- registration at own listeners

#[test]
fn the_embedded_registry_refuses_laneways_own_listeners() {
    let up = Upstream::start("web");
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let own = [
        ("127.0.0.1", lw.proxy.port(), "[proxy] listen"),
        ("localhost", lw.proxy.port(), "[proxy] listen"),
        ("127.0.0.1", lw.admin.port(), "[admin] listen"),
    ];
    for (address, port, what) in own {
        let (code, body) = register_at(&lw, "web-loop", "web", address, port);
        assert_eq!(code, 400, "{address}:{port}: {body}");
        assert!(body.contains(what), "{body}");
        assert!(body.contains("loop"), "{body}");
    }
    assert!(
        metric(
            &lw,
            "laneway_admin_rejected_total",
            &[("endpoint", "register")]
        ) >= 3.0
    );
    let (code, body) = register_at(&lw, "web-1", "web", "127.0.0.1", up.port());
    assert_eq!(code, 200, "{body}");
    let (_, list) = lw.api("GET", "/api/v1/instances", None);
    assert!(
        list.contains("web-1") && !list.contains("web-loop"),
        "{list}"
    );
    assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "web");
}

#[test]
fn allowed_networks_limit_where_instances_may_be() {
    let up = Upstream::start("web");
    let lw = Laneway::start(
        SIMPLE_ROUTES,
        "[discovery]\nallowed_networks = [\"127.0.0.0/30\"]\n",
    );
    let (code, body) = register_at(&lw, "web-far", "web", "127.0.0.9", up.port());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("allowed_networks (127.0.0.0/30)"), "{body}");
    let (code, body) = register_at(&lw, "web-name", "web", "localhost", up.port());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("host name"), "{body}");
    // inside the networks, laneway's own listeners are still refused
    let (code, body) = register_at(&lw, "web-loop", "web", "127.0.0.1", lw.admin.port());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("[admin] listen"), "{body}");
    let (code, body) = register_at(&lw, "web-1", "web", "127.0.0.1", up.port());
    assert_eq!(code, 200, "{body}");
    let (_, list) = lw.api("GET", "/api/v1/instances", None);
    assert!(
        list.contains("web-1") && !list.contains("web-far"),
        "{list}"
    );
}

#[test]
fn consul_instances_at_laneways_own_listener_are_skipped() {
    let double = ConsulDouble::start();
    let up = Upstream::start("web");
    let lw = Laneway::start(
        SIMPLE_ROUTES,
        &format!(
            "[discovery]\nmode = \"consul\"\naddress = \"{}\"\nwait = \"3s\"\nrate = 50\n",
            double.url()
        ),
    );
    let check =
        |id: &str| json!({"CheckID": format!("service:{id}"), "TTL": "10m", "Status": "passing"});
    double.register(json!({
        "ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": up.port(),
        "Meta": {"version": "stable"}, "Check": check("web-1"),
    }));
    double.register(json!({
        "ID": "web-loop", "Name": "web", "Address": "127.0.0.1", "Port": lw.proxy.port(),
        "Meta": {"version": "stable"}, "Check": check("web-loop"),
    }));
    let skipped = eventually(Duration::from_secs(15), || {
        metric(&lw, "laneway_discovery_own_listener_skipped_total", &[]) >= 1.0
            && lw.get("shop.example.com", "/", &[]).status == 200
    });
    assert!(skipped, "{}", lw.log());
    let (_, list) = lw.api("GET", "/api/v1/instances", None);
    assert!(
        list.contains("web-1") && !list.contains("web-loop"),
        "{list}"
    );
    for _ in 0..10 {
        assert_eq!(lw.get("shop.example.com", "/", &[]).upstream(), "web");
    }
    assert!(
        lw.log().contains("Consul instance skipped") && lw.log().contains("laneway's own"),
        "{}",
        lw.log()
    );
}
