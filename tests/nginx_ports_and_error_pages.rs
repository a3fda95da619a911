//! End to end, without nginx: an nginx configuration with two listening
//! ports and error pages served by laneway on two listeners mapped with
//! `[routes.nginx_listen]`, on both engines: request bodies and methods
//! through error pages and intercepted upstream statuses, explain's
//! listener and port, and `laneway check` of the mapping.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{free_port, Conn, Laneway, Resp, Upstream};

/// Two ports (8080 plain, 8443 "secure"), the same host on each, error
/// pages for statuses laneway makes and for upstream ones.
fn nginx_conf(app: u16, errors: u16) -> String {
    format!(
        r#"
http {{
    upstream app {{ server 127.0.0.1:{app}; }}
    upstream errors {{ server 127.0.0.1:{errors}; }}
    server {{
        listen 8080 default_server;
        server_name www.example.test;
        error_page 404 /not-found;
        error_page 503 @busy;
        location / {{
            proxy_pass http://app;
            proxy_intercept_errors on;
        }}
        location /gone/ {{ return 404; }}
        location = /not-found {{ proxy_pass http://errors; }}
        location @busy {{ proxy_pass http://errors; }}
    }}
    server {{
        listen 8443 default_server;
        server_name www.example.test;
        location / {{ return 200 "secure"; }}
    }}
}}
"#
    )
}

struct Site {
    lw: Laneway,
    plain: SocketAddr,
    secure: SocketAddr,
    _app: Upstream,
    _errors: Upstream,
}

fn site(engine: &str) -> Site {
    let app = Upstream::start("app");
    let errors = Upstream::start("errors");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nginx.conf"),
        nginx_conf(app.port(), errors.port()),
    )
    .unwrap();
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let secure: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lw = Laneway::start_listening(
        tmp,
        &[plain, secure],
        &format!("engine = \"{engine}\""),
        &format!(
            "nginx = \"nginx.conf\"\n[routes.nginx_listen]\n\"{plain}\" = 8080\n\"{secure}\" = 8443\n"
        ),
    );
    Site {
        lw,
        plain,
        secure,
        _app: app,
        _errors: errors,
    }
}

fn send(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Resp {
    Conn::open(addr)
        .and_then(|mut c| {
            c.request(
                method,
                target,
                &[("host", "www.example.test"), ("connection", "close")],
                body,
            )
        })
        .unwrap_or_else(|e| panic!("{method} {target} via {addr}: {e}"))
}

/// A POST with a chunked body, each chunk written after the head on its own.
fn send_chunked(addr: SocketAddr, target: &str, chunks: &[&str]) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nhost: www.example.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    for c in chunks {
        write!(s, "{:x}\r\n{c}\r\n", c.len()).unwrap();
        s.flush().unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn bodies_and_methods_through_error_pages(engine: &str) {
    let s = site(engine);
    // the same host answers per listener
    let r = send(s.plain, "GET", "/x", b"");
    assert_eq!(
        (r.status, r.upstream()),
        (200, "app".to_string()),
        "{engine}"
    );
    let r = send(s.secure, "GET", "/x", b"");
    assert_eq!((r.status, r.body.as_str()), (200, "secure"), "{engine}");

    // `return 404` → error page /not-found: GET, with the 404 status
    let r = send(s.plain, "POST", "/gone/x", b"hello");
    let j = r.json();
    assert_eq!(r.status, 404, "{engine}: {}", r.body);
    assert_eq!(
        (
            j["upstream"].as_str(),
            j["method"].as_str(),
            j["target"].as_str()
        ),
        (Some("errors"), Some("GET"), Some("/not-found")),
        "{engine}"
    );

    // an intercepted upstream 404: the request (body too) goes again, as GET
    let r = send(s.plain, "POST", "/status/404/a?x=1", b"hello");
    let j = r.json();
    assert_eq!(r.status, 404, "{engine}: {}", r.body);
    assert_eq!(
        (
            j["upstream"].as_str(),
            j["method"].as_str(),
            j["target"].as_str(),
            j["body"].as_str()
        ),
        (
            Some("errors"),
            Some("GET"),
            Some("/not-found"),
            Some("hello")
        ),
        "{engine}"
    );

    // a chunked body sent after the head is kept and sent again too
    let r = send_chunked(s.plain, "/status/404/c", &["hel", "lo"]);
    let j = r.json();
    assert_eq!(r.status, 404, "{engine}: {}", r.body);
    assert_eq!(
        (
            j["upstream"].as_str(),
            j["method"].as_str(),
            j["body"].as_str()
        ),
        (Some("errors"), Some("GET"), Some("hello")),
        "{engine}"
    );

    // an intercepted 503 to a named location keeps the method and URI
    let r = send(s.plain, "POST", "/status/503/b", b"hello");
    let j = r.json();
    assert_eq!(r.status, 503, "{engine}: {}", r.body);
    assert_eq!(
        (
            j["upstream"].as_str(),
            j["method"].as_str(),
            j["target"].as_str(),
            j["body"].as_str()
        ),
        (
            Some("errors"),
            Some("POST"),
            Some("/status/503/b"),
            Some("hello")
        ),
        "{engine}"
    );

    // a keep-alive connection goes on after an intercepted status
    let mut c = Conn::open(s.plain).unwrap();
    for _ in 0..3 {
        let r = c
            .request("GET", "/status/404/k", &[("host", "www.example.test")], b"")
            .unwrap();
        assert_eq!(
            (r.status, r.upstream()),
            (404, "errors".to_string()),
            "{engine}"
        );
        let r = c
            .request("GET", "/ok", &[("host", "www.example.test")], b"")
            .unwrap();
        assert_eq!(
            (r.status, r.upstream()),
            (200, "app".to_string()),
            "{engine}"
        );
    }

    // explain: the listener, its nginx port, the server of that port
    let (status, text) = s.lw.api(
        "GET",
        &format!(
            "/api/v1/explain?url=http://www.example.test/x&listener={}",
            s.secure
        ),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["listener"]["nginx_port"], 8443, "{v}");
    assert_eq!(v["listener"]["selects_servers"], true, "{v}");
    assert!(
        v["listener"]["source"]
            .as_str()
            .unwrap_or("")
            .starts_with("[routes.nginx_listen]"),
        "{v}"
    );
    assert_eq!(v["server"]["port"], 8443, "{v}");
    assert_eq!(v["server"]["line"], 18, "{v}");
    assert_eq!(v["outcome"]["status"], 200, "{v}");
    // without a listener: the first [proxy] listen
    let (_, text) = s.lw.api(
        "GET",
        "/api/v1/explain?url=http://www.example.test/status/404/x",
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["listener"]["nginx_port"], 8080, "{v}");
    assert_eq!(v["server"]["line"], 5, "{v}");
    assert_eq!(
        v["outcome"]["intercept_errors"],
        serde_json::json!([404, 503]),
        "{v}"
    );
    // the command line shows the same
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args([
            "explain",
            "http://www.example.test/status/404/x",
            "--listener",
        ])
        .arg(s.plain.to_string())
        .arg("--admin")
        .arg(s.lw.admin.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("{} = nginx port 8080", s.plain)),
        "{stdout}"
    );
    assert!(
        stdout.contains("nginx.conf:5 by exact name www.example.test on port 8080"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream 404, 503 go to the error page"),
        "{stdout}"
    );
    let (status, text) = s.lw.api(
        "GET",
        "/api/v1/explain?url=http://www.example.test/&listener=127.0.0.1:1",
        None,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not one of laneway's listeners"), "{text}");
}

#[test]
fn h1_engine_sends_bodies_and_methods_through_error_pages() {
    bodies_and_methods_through_error_pages("h1");
}

#[test]
fn pingora_engine_sends_bodies_and_methods_through_error_pages() {
    bodies_and_methods_through_error_pages("pingora");
}

#[test]
fn a_body_still_streaming_when_the_upstream_answers_is_not_sent_twice() {
    // laneway keeps a request body to send it again only when it arrived
    // whole with the head (h1) or fits Pingora's retry buffer; a larger
    // one cannot go to an error page, so the upstream's answer goes out
    let body = vec![b'x'; 4 << 20];
    for engine in ["h1", "pingora"] {
        let s = site(engine);
        let r = send(s.plain, "POST", "/status/404/big", &body);
        let j = r.json();
        assert_eq!(r.status, 404, "{engine}");
        assert_eq!(j["upstream"], "app", "{engine}");
        assert_eq!(
            j["body"].as_str().map(str::len),
            Some(body.len()),
            "{engine}"
        );
    }
}

fn check(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config"])
        .arg(dir.join("laneway.toml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_reports_the_listener_mapping_and_its_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("nginx.conf"), nginx_conf(1, 2)).unwrap();
    let write = |nginx_listen: &str| {
        std::fs::write(
            tmp.path().join("laneway.toml"),
            format!(
                "[proxy]\nlisten = [\"127.0.0.1:18080\", \"127.0.0.1:18443\"]\n[routes]\nnginx = \"nginx.conf\"\n[routes.nginx_listen]\n{nginx_listen}"
            ),
        )
        .unwrap();
    };

    write("\"127.0.0.1:18080\" = 8080\n\"127.0.0.1:18443\" = 8443\n");
    let (ok, text) = check(tmp.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("servers chosen by port: 127.0.0.1:18080 → 8080, 127.0.0.1:18443 → 8443"),
        "{text}"
    );

    // a key laneway does not listen on
    write("\"127.0.0.1:18080\" = 8080\n\"127.0.0.1:19999\" = 8443\n");
    let (ok, text) = check(tmp.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("laneway.toml:7:")
            && text.contains("\"127.0.0.1:19999\": laneway does not listen there"),
        "{text}"
    );

    // a port no server listens on
    write("\"127.0.0.1:18080\" = 8080\n\"127.0.0.1:18443\" = 9443\n");
    let (ok, text) = check(tmp.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("laneway.toml:7:")
            && text.contains("no server of")
            && text.contains("listens on port 9443 (they listen on 8080, 8443)"),
        "{text}"
    );

    // a listener left at its default port (80), where no server listens
    write("\"127.0.0.1:18080\" = 8080\n");
    let (ok, text) = check(tmp.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("[proxy] listen 127.0.0.1:18443 stands for nginx port 80 by default"),
        "{text}"
    );
}
