//! End-to-end: the access log on the real laneway binary, on both engines:
//! the same requests give the same fields in the same format (text and
//! JSON), hostile values stay on their line, `[log] access_file` receives
//! the lines, SIGUSR1 reopens it after a rename, lines queued at SIGTERM
//! are written out, and `access_log = false` writes nothing.

mod common;

use std::path::Path;
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
return = { status = 200, body = "home" }

[[server.location]]
match = "/nobody/"
service = "ghost"
"#;

const ENGINES: [&str; 2] = ["h1", "pingora"];
const WAIT: Duration = Duration::from_secs(10);

/// A Host header no server names: quotes, a tab and a forged `status=`.
const HOSTILE_HOST: &str = "evil\t\"x\" status=999";
/// A target with quotes, backslashes and a forged `status=` (what both
/// engines' parsers accept: no quote in the query).
const HOSTILE_URI: &str = "/h/\"a\"\\b?c=\\&d=status=999";

/// laneway on `engine` writing its access log to `access.log`, with a web
/// instance for lane `t-1`.
fn start(engine: &str, log_extra: &str) -> (Laneway, Upstream) {
    let lw = Laneway::start_full(
        ROUTES,
        &format!("engine = \"{engine}\"\ndrain_seconds = 0"),
        "",
        &format!("access_file = \"access.log\"\n{log_extra}"),
    );
    let web = Upstream::start("web");
    lw.register("web-0", "web", None, web.port());
    lw.register("web-1", "web", Some("v2"), web.port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );
    (lw, web)
}

fn access_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `key=value` pairs of a text line, in order, quoted values unescaped.
fn text_fields(line: &str) -> Vec<(String, String)> {
    let (_, body) = line
        .split_once(" INFO laneway::access: ")
        .unwrap_or_else(|| panic!("not an access line: {line}"));
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut v = Vec::new();
                let mut bytes = quoted.bytes().enumerate();
                let end = loop {
                    let (i, b) = bytes.next().expect("closing quote");
                    match b {
                        b'"' => break i + 1,
                        b'\\' => match bytes.next().expect("escape").1 {
                            b'n' => v.push(b'\n'),
                            b'r' => v.push(b'\r'),
                            b't' => v.push(b'\t'),
                            b'x' => {
                                let hex: String = (0..2)
                                    .map(|_| char::from(bytes.next().unwrap().1))
                                    .collect();
                                v.push(u8::from_str_radix(&hex, 16).unwrap());
                            }
                            other => v.push(other),
                        },
                        b => v.push(b),
                    }
                };
                (String::from_utf8(v).unwrap(), &quoted[end..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        out.push((key.to_string(), value));
        rest = next.strip_prefix(' ').unwrap_or(next);
        assert!(
            next.is_empty() || next.starts_with(' '),
            "fields run together: {line}"
        );
    }
    out
}

/// The fields of a JSON line, in the order written, values as text
/// (strings unquoted, `null` as `-`).
fn json_fields(line: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let mut out: Vec<(String, String)> = v
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".to_string(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    out.sort_by_key(|(k, _)| line.find(&format!("\"{k}\":")));
    out
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// A request: host, target, extra headers.
type Request = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The requests every engine serves, in order.
fn requests() -> Vec<Request> {
    vec![
        ("shop.example.com", "/a?b=1", &[("X-Laneway-Lane", "t-1")]),
        ("shop.example.com", "/", &[]),
        ("shop.example.com", "/nobody/x", &[]),
        (HOSTILE_HOST, "/x", &[]),
        (
            "shop.example.com",
            HOSTILE_URI,
            &[("X-Laneway-Lane", "t-1")],
        ),
    ]
}

/// Serves [`requests`] on `engine` and returns the fields of their access
/// lines, with the web upstream's address.
fn served(engine: &str, json: bool) -> (Vec<Vec<(String, String)>>, String) {
    let extra = if json {
        let all: Vec<String> = laneway::telemetry::ACCESS_FIELDS
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect();
        format!(
            "access_format = \"json\"\naccess_fields = [{}]\n",
            all.join(", ")
        )
    } else {
        String::new()
    };
    let (lw, web) = start(engine, &extra);
    // LVS health checks are not logged
    assert_eq!(
        lw.get("shop.example.com", "/__laneway/health", &[]).status,
        200
    );
    let statuses: Vec<u16> = requests()
        .iter()
        .map(|(host, target, headers)| lw.get(host, target, headers).status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 503, 400, 200],
        "{engine}\n{}",
        lw.log()
    );
    let path = lw.path("access.log");
    let n = requests().len();
    assert!(
        eventually(WAIT, || access_lines(&path).len() >= n),
        "{engine}: {} access lines, want {n}\n{}",
        access_lines(&path).len(),
        lw.log()
    );
    let lines = access_lines(&path);
    assert_eq!(lines.len(), n, "{engine}: one line per request\n{lines:#?}");
    let mut parsed: Vec<Vec<(String, String)>> = lines
        .iter()
        .map(|l| if json { json_fields(l) } else { text_fields(l) })
        .collect();
    // lines are written as requests finish, which may not be the order sent
    let fields = requests()
        .iter()
        .map(|(_, target, _)| {
            let i = parsed
                .iter()
                .position(|f| field(f, "uri") == *target)
                .unwrap_or_else(|| panic!("{engine}: no line for {target}: {lines:#?}"));
            parsed.remove(i)
        })
        .collect();
    // in the file only, not on standard error
    assert!(!lw.log().contains("/a?b=1"), "{engine}\n{}", lw.log());
    (fields, web.addr.to_string())
}

fn same_fields_on_both_engines(json: bool) {
    let (h1, h1_web) = served("h1", json);
    let (pingora, pingora_web) = served("pingora", json);
    for (i, (a, b)) in h1.iter().zip(&pingora).enumerate() {
        let keys = |f: &[(String, String)]| f.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(a),
            keys(b),
            "request {i}: the same fields in the same order"
        );
        for ((key, va), (_, vb)) in a.iter().zip(b) {
            match key.as_str() {
                // differ by run: the client's port, the time, the upstream's port
                "ts" | "client" | "duration_ms" | "upstream_ms" => {}
                "upstream" => {
                    let want = |web: &str| {
                        if i == 0 || i == 4 {
                            web.to_string()
                        } else {
                            "-".into()
                        }
                    };
                    assert_eq!(va, &want(&h1_web), "request {i}: h1 upstream");
                    assert_eq!(vb, &want(&pingora_web), "request {i}: pingora upstream");
                }
                _ => assert_eq!(
                    va, vb,
                    "request {i}: {key} differs (h1 {a:?}, pingora {b:?})"
                ),
            }
        }
        for f in [a, b] {
            assert!(field(f, "client").starts_with("127.0.0.1:"), "{f:?}");
            let ms: f64 = field(f, "duration_ms").parse().expect("duration_ms");
            assert!(ms >= 0.0);
            if !json {
                // (a JSON reader drops trailing zeros)
                let decimals = field(f, "duration_ms")
                    .split_once('.')
                    .map(|(_, d)| d.len());
                assert_eq!(decimals, Some(3), "{f:?}");
            }
        }
    }
    let f = |i: usize, key: &str| field(&h1[i], key).to_string();
    // proxied in lane t-1
    assert_eq!(
        [
            f(0, "method"),
            f(0, "host"),
            f(0, "uri"),
            f(0, "lane"),
            f(0, "lane_source")
        ],
        ["GET", "shop.example.com", "/a?b=1", "t-1", "header"]
    );
    assert_eq!(
        [
            f(0, "service"),
            f(0, "version"),
            f(0, "tries"),
            f(0, "local"),
            f(0, "status")
        ],
        ["web", "v2", "1", "-", "200"]
    );
    assert_ne!(f(0, "upstream_ms"), "-");
    // answered by the rules, and for a service with no instance
    assert_eq!(
        [
            f(1, "local"),
            f(1, "status"),
            f(1, "upstream_ms"),
            f(1, "lane")
        ],
        ["return", "200", "-", "baseline"]
    );
    assert_eq!(
        [f(2, "local"), f(2, "status"), f(2, "service")],
        ["no_instance", "503", "ghost"]
    );
    // hostile values read back as sent, and forged no field
    assert_eq!(
        [f(3, "host"), f(3, "local"), f(3, "status")],
        [HOSTILE_HOST, "bad_request", "400"]
    );
    assert_eq!(
        [f(4, "uri"), f(4, "service"), f(4, "status")],
        [HOSTILE_URI, "web", "200"]
    );
}

#[test]
fn text_lines_have_the_same_fields_on_both_engines() {
    same_fields_on_both_engines(false);
}

#[test]
fn json_lines_have_the_same_fields_on_both_engines() {
    same_fields_on_both_engines(true);
}

#[test]
fn sigusr1_reopens_the_access_file_after_a_rename() {
    for engine in ENGINES {
        let (lw, _web) = start(engine, "");
        let path = lw.path("access.log");
        let rotated = lw.path("access.log.1");
        assert_eq!(lw.get("shop.example.com", "/before", &[]).status, 200);
        assert!(
            eventually(WAIT, || access_lines(&path).len() == 1),
            "{engine}: the first line\n{}",
            lw.log()
        );
        std::fs::rename(&path, &rotated).unwrap();
        lw.signal("USR1");
        // lines sent before the writer reopens still go to the renamed file
        let mut sent = 0;
        assert!(
            eventually(WAIT, || {
                sent += 1;
                assert_eq!(
                    lw.get("shop.example.com", &format!("/after/{sent}"), &[])
                        .status,
                    200
                );
                access_lines(&path)
                    .iter()
                    .any(|l| l.contains(" uri=/after/"))
            }),
            "{engine}: no new file at {}\n{}",
            path.display(),
            lw.log()
        );
        let old = access_lines(&rotated);
        let new = access_lines(&path);
        assert!(old[0].contains(" uri=/before "), "{engine}: {old:?}");
        let after = |lines: &[String]| lines.iter().filter(|l| l.contains(" uri=/after/")).count();
        // every line in one file or the other, none lost
        assert!(
            eventually(WAIT, || after(&access_lines(&rotated))
                + after(&access_lines(&path))
                == sent),
            "{engine}: {sent} sent; old file {old:?}, new file {new:?}"
        );
        assert!(
            new.iter().all(|l| !l.contains(" uri=/before ")),
            "{engine}: {new:?}"
        );
        assert!(
            lw.log().contains("access log reopened"),
            "{engine}\n{}",
            lw.log()
        );
        // still running: SIGUSR1 did not end the process
        assert_eq!(lw.get("shop.example.com", "/", &[]).status, 200, "{engine}");
    }
}

#[test]
fn lines_queued_at_sigterm_are_written_out() {
    for engine in ENGINES {
        let (mut lw, _web) = start(engine, "");
        let (status, metrics) = lw.api("GET", "/metrics", None);
        assert_eq!(status, 200);
        assert!(
            metrics.contains("laneway_access_log_dropped_total 0"),
            "{engine}: {metrics}"
        );
        let mut conn = Conn::open(lw.proxy).unwrap();
        let n = 300;
        for i in 0..n {
            let r = conn
                .request(
                    "GET",
                    &format!("/n/{i}"),
                    &[("host", "shop.example.com")],
                    b"",
                )
                .unwrap();
            assert_eq!(r.status, 200, "{engine}");
        }
        drop(conn);
        lw.signal("TERM");
        assert!(
            lw.wait_exit(Duration::from_secs(30)).is_some(),
            "{engine}: still running"
        );
        let lines = access_lines(&lw.path("access.log"));
        let mut seen: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.split(" uri=/n/").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..n).collect::<Vec<_>>(),
            "{engine}: every request logged once"
        );
    }
}

#[test]
fn access_log_false_writes_no_access_lines() {
    let (mut lw, _web) = start("h1", "access_log = false\n");
    assert_eq!(lw.get("shop.example.com", "/quiet", &[]).status, 200);
    lw.signal("TERM");
    assert!(
        lw.wait_exit(Duration::from_secs(30)).is_some(),
        "still running"
    );
    assert!(
        !lw.path("access.log").exists(),
        "the access file was created"
    );
    assert!(!lw.log().contains("/quiet"), "{}", lw.log());
}
