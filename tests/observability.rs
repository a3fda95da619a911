//! End-to-end: the JSON access log with configured fields, and the metrics
//! with their labels after traffic, on the real laneway binary.

mod common;

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
"#;

/// One `name{labels} value` line of `/metrics`.
type Series = (String, Vec<(String, String)>, f64);

/// The series of `/metrics`, parsed.
fn metrics(lw: &Laneway) -> Vec<Series> {
    let (status, text) = lw.api("GET", "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value.parse().ok()?))
        })
        .collect()
}

fn find(all: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn json_access_log_has_the_configured_fields_in_order() {
    let lw = Laneway::start(
        ROUTES,
        "access_format = \"json\"\naccess_fields = [\"lane\", \"method\", \"uri\", \"service\", \"version\", \"status\", \"tries\", \"upstream\", \"duration_ms\"]\n",
    );
    let web = Upstream::start("web");
    lw.register("web-1", "web", Some("v2"), web.port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );
    let r = lw.get("shop.example.com", "/a?b=1", &[("X-Laneway-Lane", "t-1")]);
    assert_eq!(r.status, 200);
    let mut line = Value::Null;
    let mut raw = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = lw.log();
            let found = log
                .lines()
                .filter_map(|l| Some((l, serde_json::from_str::<Value>(l).ok()?)))
                .find(|(_, v)| v["uri"] == "/a?b=1");
            if let Some((l, v)) = found {
                raw = l.to_string();
                line = v;
            }
            !line.is_null()
        }),
        "no JSON access line:\n{}",
        lw.log()
    );
    let mut keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // in the order written, not the order a JSON map keeps
    keys.sort_by_key(|k| raw.find(&format!("\"{k}\":")));
    assert_eq!(
        keys,
        [
            "lane",
            "method",
            "uri",
            "service",
            "version",
            "status",
            "tries",
            "upstream",
            "duration_ms"
        ],
        "{line}"
    );
    assert_eq!(line["lane"], "t-1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["service"], "web");
    assert_eq!(line["version"], "v2");
    assert_eq!(line["status"], 200);
    assert_eq!(line["tries"], 1);
    assert_eq!(line["upstream"], web.addr.to_string());
    assert!(line["duration_ms"].as_f64().is_some());
    // The main log no longer carries access lines in text form.
    assert!(!lw.log().contains("laneway::access:"), "{}", lw.log());
}

#[test]
fn unknown_access_fields_are_config_errors_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("laneway.toml");
    write(
        &cfg,
        "[log]\naccess_format = \"json\"\naccess_fields = [\"lane\", \"colour\"]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("laneway.toml:3:") && err.contains("\"colour\" is not an access-log field"),
        "{err}"
    );
}

#[test]
fn metrics_carry_lane_service_and_instance_labels_after_traffic() {
    let lw = Laneway::start(ROUTES, "");
    let web = Upstream::start("web");
    let v2 = Upstream::start("web-v2");
    lw.register("web-1", "web", Some("stable"), web.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );
    for _ in 0..3 {
        assert_eq!(
            lw.get("shop.example.com", "/", &[("X-Laneway-Lane", "t-1")])
                .status,
            200
        );
        assert_eq!(lw.get("shop.example.com", "/", &[]).status, 200);
    }
    // A connect failure: an instance of another version on a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    lw.register("web-9", "web", Some("v9"), port);
    assert_eq!(
        lw.create_lane(r#"{"name":"t-9","services":{"web":"v9"}}"#)
            .0,
        201
    );
    assert_eq!(
        lw.get("shop.example.com", "/", &[("X-Laneway-Lane", "t-9")])
            .status,
        502
    );

    // counted once the response is out: wait for the last request's
    assert!(eventually(Duration::from_secs(5), || {
        find(
            &metrics(&lw),
            "laneway_request_duration_seconds_count",
            &[("lane", "t-9")],
        ) == Some(1.0)
    }));
    let m = metrics(&lw);
    let has = |name: &str, labels: &[(&str, &str)]| {
        find(&m, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
    };
    assert_eq!(
        has(
            "laneway_requests_total",
            &[("lane", "t-1"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        has(
            "laneway_requests_total",
            &[("lane", "baseline"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        has(
            "laneway_upstream_requests_total",
            &[("service", "web"), ("version", "v2"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        has(
            "laneway_upstream_duration_seconds_count",
            &[("service", "web"), ("version", "baseline")]
        ),
        3.0
    );
    assert_eq!(
        has("laneway_request_duration_seconds_count", &[("lane", "t-1")]),
        3.0
    );
    assert_eq!(
        has(
            "laneway_request_duration_seconds_count",
            &[("lane", "baseline")]
        ),
        3.0
    );
    assert_eq!(
        has(
            "laneway_upstream_connect_errors_total",
            &[("service", "web"), ("version", "v9")]
        ),
        1.0
    );
    for (id, version) in [("web-1", "stable"), ("web-2", "v2"), ("web-9", "v9")] {
        assert_eq!(
            has(
                "laneway_upstream_health",
                &[("service", "web"), ("version", version), ("instance", id)]
            ),
            1.0,
            "{id}"
        );
    }
    has(
        "laneway_upstream_ejections_total",
        &[("service", "web"), ("version", "v9")],
    );
    assert_eq!(
        has("laneway_upstream_retries_total", &[("reason", "read")]),
        0.0
    );
    has("laneway_upstream_retries_total", &[("reason", "connect")]);
    assert!(has("laneway_active_connections", &[]) >= 0.0);
    assert!(has("laneway_snapshot_age_seconds", &[]) >= 0.0);
    assert!(has("laneway_snapshot_build_seconds_count", &[]) >= 1.0);
    assert_eq!(has("laneway_discovery_staleness_seconds", &[]), 0.0);
    assert_eq!(has("laneway_instances", &[("health", "passing")]), 3.0);
    assert_eq!(
        has(
            "laneway_local_responses_total",
            &[("reason", "upstream_error")]
        ),
        1.0
    );
    drop(web);
    drop(v2);
}

#[test]
fn a_deleted_lane_leaves_the_metrics() {
    let lw = Laneway::start(ROUTES, "");
    let web = Upstream::start("web");
    lw.register("web-1", "web", Some("v2"), web.port());
    for lane in ["t-5", "t-6"] {
        let body = format!(r#"{{"name":"{lane}","services":{{"web":"v2"}}}}"#);
        assert_eq!(lw.create_lane(&body).0, 201);
        let resp = lw.get("shop.example.com", "/", &[("X-Laneway-Lane", lane)]);
        assert_eq!(resp.status, 200);
    }
    let count = |lane: &str| {
        find(
            &metrics(&lw),
            "laneway_request_duration_seconds_count",
            &[("lane", lane)],
        )
    };
    assert!(eventually(Duration::from_secs(5), || count("t-5")
        == Some(1.0)
        && count("t-6") == Some(1.0)));
    assert_eq!(lw.api("DELETE", "/api/v1/lanes/t-5", None).0, 200);
    assert!(
        eventually(Duration::from_secs(5), || count("t-5").is_none()),
        "t-5's duration series is still exported"
    );
    let m = metrics(&lw);
    assert_eq!(find(&m, "laneway_requests_total", &[("lane", "t-5")]), None);
    assert_eq!(
        find(
            &m,
            "laneway_requests_total",
            &[("lane", "t-6"), ("class", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(count("t-6"), Some(1.0));
}
