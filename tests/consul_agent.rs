//! The embedded registry as a Consul agent, end to end against the laneway
//! binary: the agent, catalog, health and status endpoints in Consul's
//! shapes and status codes, blocking queries, maintenance, check
//! registration, and checks that laneway actually runs (HTTP, TCP, TTL,
//! SuccessBeforePassing, DeregisterCriticalServiceAfter), with health-aware
//! fallback following them. `py_consul_client_works_unchanged` drives the
//! same endpoints with the py-consul client library.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

const WAIT: Duration = Duration::from_secs(20);

/// An admin call that also returns `X-Consul-Index`.
fn call(lw: &Laneway, method: &str, path: &str, body: Option<&str>) -> (u16, Option<u64>, String) {
    let url = format!("http://{}{path}", lw.admin);
    let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let (status, r) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => return (0, None, e.to_string()),
    };
    let index = r.header("x-consul-index").and_then(|i| i.parse().ok());
    (status, index, r.into_string().unwrap_or_default())
}

fn get_json(lw: &Laneway, path: &str) -> (Value, u64) {
    let (status, index, body) = call(lw, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    let index = index.unwrap_or_else(|| panic!("GET {path}: no X-Consul-Index"));
    assert!(index >= 1, "X-Consul-Index is never 0");
    (
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        index,
    )
}

fn put(lw: &Laneway, path: &str, body: Value) {
    let (status, _, text) = call(lw, "PUT", path, Some(&body.to_string()));
    assert_eq!(status, 200, "PUT {path}: {text}");
}

fn check_status(lw: &Laneway, check: &str) -> Option<String> {
    let (checks, _) = get_json(lw, "/v1/agent/checks");
    checks[check]["Status"].as_str().map(str::to_owned)
}

fn wait_status(lw: &Laneway, check: &str, want: &str) {
    assert!(
        eventually(WAIT, || check_status(lw, check).as_deref() == Some(want)),
        "check {check} never became {want}: {:?}",
        get_json(lw, "/v1/agent/checks").0[check]
    );
}

/// An HTTP server whose every answer has the status the test sets, naming
/// itself in the body as the echo upstream does; counts requests.
struct Switch {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    /// When set, each request waits for one message before it is answered.
    gate: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl Switch {
    fn start(name: &'static str, status: u16) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sw = Switch {
            addr,
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Mutex::new(None)),
        };
        let (st, hits, gate) = (sw.status.clone(), sw.hits.clone(), sw.gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (st, hits, gate) = (st.clone(), hits.clone(), gate.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim().is_empty() {
                                break;
                            }
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        if let Some(rx) = gate.lock().expect("gate").as_ref() {
                            if rx.recv().is_err() {
                                return;
                            }
                        }
                        let body = json!({ "upstream": name }).to_string();
                        let resp = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            st.load(Ordering::SeqCst),
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        sw
    }
}

/// A registration of an instance of `web`; an empty `version` is a
/// baseline instance (no version label).
fn register_body(id: &str, port: u16, version: &str, check: Value) -> Value {
    let mut body = json!({
        "ID": id, "Name": "web", "Address": "127.0.0.1", "Port": port,
        "Tags": ["primary", format!("v-{version}")],
        "Meta": { "version": version, "team": "shop" },
    });
    if !check.is_null() {
        body["Check"] = check;
    }
    body
}

#[test]
fn reads_answer_in_consul_shapes_with_an_index() {
    let lw = Laneway::start(ROUTES, "");
    let up = Upstream::start("web-base");
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", up.port(), "v1", Value::Null),
    );
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-2",
            up.port(),
            "v2",
            json!({"CheckID": "web-2-ttl", "TTL": "1h"}),
        ),
    );

    let (services, _) = get_json(&lw, "/v1/agent/services");
    assert_eq!(services["web-1"]["Service"], "web");
    assert_eq!(services["web-1"]["Port"], up.port());
    assert_eq!(services["web-1"]["Meta"]["team"], "shop");
    assert_eq!(
        services["web-1"]["Weights"],
        json!({"Passing": 1, "Warning": 1})
    );
    let (one, _) = get_json(&lw, "/v1/agent/service/web-2");
    assert_eq!(one["ID"], "web-2");
    assert!(one["ContentHash"].as_str().is_some_and(|h| !h.is_empty()));
    let (status, _, text) = call(&lw, "GET", "/v1/agent/service/nope", None);
    assert_eq!((status, text.as_str()), (404, "unknown service ID: nope"));

    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    let ttl = &checks["web-2-ttl"];
    assert_eq!(ttl["Status"], "critical", "a TTL check starts critical");
    assert_eq!(ttl["ServiceID"], "web-2");
    assert_eq!(ttl["ServiceName"], "web");
    assert_eq!(ttl["Type"], "ttl");

    let (me, _) = {
        let (status, _, body) = call(&lw, "GET", "/v1/agent/self", None);
        assert_eq!(status, 200);
        (serde_json::from_str::<Value>(&body).expect("json"), ())
    };
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert!(me["Config"]["NodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    assert!(me["Config"]["Version"].as_str().is_some());

    let (catalog, index) = get_json(&lw, "/v1/catalog/services");
    assert_eq!(catalog["web"], json!(["primary", "v-v1", "v-v2"]));
    let (nodes, _) = get_json(&lw, "/v1/catalog/service/web?tag=v-v2");
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    assert_eq!(nodes[0]["ServiceID"], "web-2");
    assert_eq!(nodes[0]["ServiceAddress"], "127.0.0.1");
    assert!(nodes[0]["ModifyIndex"].as_u64().is_some_and(|m| m <= index));

    let (entries, _) = get_json(&lw, "/v1/health/service/web");
    assert_eq!(entries.as_array().map(Vec::len), Some(2));
    let e = entries
        .as_array()
        .and_then(|a| a.iter().find(|e| e["Service"]["ID"] == "web-2"))
        .expect("web-2 entry");
    assert_eq!(e["Node"]["Datacenter"], "dc1");
    assert_eq!(e["Service"]["Port"], up.port());
    let ids: Vec<&str> = e["Checks"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["CheckID"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["serfHealth", "web-2-ttl"]);
    let (passing, _) = get_json(&lw, "/v1/health/service/web?passing=1");
    assert_eq!(passing.as_array().map(Vec::len), Some(1));
    assert_eq!(passing[0]["Service"]["ID"], "web-1");
    let (filtered, _) = get_json(
        &lw,
        "/v1/health/service/web?filter=Service.Meta.version%20%3D%3D%20%22v2%22",
    );
    assert_eq!(filtered.as_array().map(Vec::len), Some(1));
    assert_eq!(filtered[0]["Service"]["ID"], "web-2");
    let (filtered, _) = get_json(
        &lw,
        "/v1/catalog/services?filter=ServiceTags%20contains%20%22v-v2%22",
    );
    assert_eq!(filtered, json!({"web": ["primary", "v-v2"]}));
    let (status, _, text) = call(
        &lw,
        "GET",
        "/v1/health/service/web?filter=Service.Port%20%3D%3D%20%2280%22%20or%20Service.Port%20%3D%3D%20%2281%22",
        None,
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("Failed to create boolean expression evaluator"),
        "{text}"
    );
    let (unknown, _) = get_json(&lw, "/v1/health/service/nope");
    assert_eq!(unknown, json!([]));

    let (hc, _) = get_json(&lw, "/v1/health/checks/web");
    assert_eq!(hc.as_array().map(Vec::len), Some(1));
    assert_eq!(hc[0]["CheckID"], "web-2-ttl");
    let (critical, _) = get_json(&lw, "/v1/health/state/critical");
    assert_eq!(critical.as_array().map(Vec::len), Some(1));
    assert_eq!(critical[0]["CheckID"], "web-2-ttl");
    let (passing, _) = get_json(&lw, "/v1/health/state/passing");
    assert_eq!(passing, json!([]));
    assert_eq!(call(&lw, "GET", "/v1/health/state/ok", None).0, 400);

    let (status, _, leader) = call(&lw, "GET", "/v1/status/leader", None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&leader).expect("json"),
        json!(lw.admin.to_string())
    );
    let (_, _, peers) = call(&lw, "GET", "/v1/status/peers", None);
    assert_eq!(
        serde_json::from_str::<Value>(&peers).expect("json"),
        json!([lw.admin.to_string()])
    );

    let (status, _, text) = call(&lw, "GET", "/v1/health/service/web?index=x", None);
    assert_eq!((status, text.as_str()), (400, "Invalid index"));
    let (status, _, text) = call(&lw, "GET", "/v1/health/service/web?index=1&wait=soon", None);
    assert_eq!((status, text.as_str()), (400, "Invalid wait time"));
}

#[test]
fn unknown_ids_answer_404_with_consuls_text() {
    let lw = Laneway::start(ROUTES, "");
    let (status, _, text) = call(&lw, "PUT", "/v1/agent/service/deregister/ghost", None);
    assert_eq!(status, 404);
    assert_eq!(
        text,
        "Unknown service ID \"ghost\". Ensure that the service ID is passed, not the service name."
    );
    for path in [
        "/v1/agent/check/pass/ghost",
        "/v1/agent/check/deregister/ghost",
    ] {
        let (status, _, text) = call(&lw, "PUT", path, None);
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            text,
            "Unknown check ID \"ghost\". Ensure that the check ID is passed, not the check name."
        );
    }
    let (status, _, text) = call(
        &lw,
        "PUT",
        "/v1/agent/service/maintenance/ghost?enable=true",
        None,
    );
    assert_eq!(
        (status, text.as_str()),
        (404, "No service registered with ID \"ghost\"")
    );
}

#[test]
fn blocking_queries_wake_on_a_change_and_end_at_the_wait() {
    let lw = Laneway::start(ROUTES, "");
    let up = Upstream::start("web-base");
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", up.port(), "v1", Value::Null),
    );
    let (_, index) = get_json(&lw, "/v1/health/service/web");

    // Nothing changes: the query ends with the wait, at the same index.
    let (status, same, _) = call(
        &lw,
        "GET",
        &format!("/v1/health/service/web?index={index}&wait=300ms"),
        None,
    );
    assert_eq!((status, same), (200, Some(index)));

    // A registration wakes a query blocked on the current index.
    let admin = lw.admin;
    let blocked = std::thread::spawn(move || {
        let url = format!("http://{admin}/v1/health/service/web?index={index}&wait=60s");
        let r = ureq::get(&url)
            .timeout(Duration::from_secs(90))
            .call()
            .expect("blocking query");
        let new_index: u64 = r
            .header("x-consul-index")
            .and_then(|i| i.parse().ok())
            .expect("index header");
        let body: Value = serde_json::from_str(&r.into_string().expect("body")).expect("json");
        (new_index, body)
    });
    // Whether or not the query is held yet, it must see the new instance.
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-2", up.port(), "v2", Value::Null),
    );
    let (new_index, body) = blocked.join().expect("thread");
    assert!(new_index > index, "{new_index} > {index}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");

    // /v1/agent/service/<id> blocks on its content hash.
    let (svc, _) = get_json(&lw, "/v1/agent/service/web-1");
    let hash = svc["ContentHash"].as_str().expect("hash").to_owned();
    let (same, _) = get_json(
        &lw,
        &format!("/v1/agent/service/web-1?hash={hash}&wait=200ms"),
    );
    assert_eq!(
        same["ContentHash"],
        hash.as_str(),
        "unchanged at the end of the wait"
    );
    let path = format!("/v1/agent/service/web-1?hash={hash}&wait=60s");
    let admin = lw.admin;
    let blocked = std::thread::spawn(move || {
        let r = ureq::get(&format!("http://{admin}{path}"))
            .timeout(Duration::from_secs(90))
            .call()
            .expect("blocking query");
        serde_json::from_str::<Value>(&r.into_string().expect("body")).expect("json")
    });
    let mut changed = register_body("web-1", up.port(), "v1", Value::Null);
    changed["Tags"] = json!(["moved"]);
    put(&lw, "/v1/agent/service/register", changed);
    let after = blocked.join().expect("thread");
    assert_ne!(after["ContentHash"], hash.as_str());
    assert_eq!(after["Tags"], json!(["moved"]));
}

#[test]
fn maintenance_adds_and_removes_the_critical_check() {
    let lw = Laneway::start(ROUTES, "");
    let up = Upstream::start("web-base");
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", up.port(), "v1", Value::Null),
    );
    let (status, _, text) = call(&lw, "PUT", "/v1/agent/service/maintenance/web-1", None);
    assert_eq!((status, text.as_str()), (400, "Missing value for enable"));
    let (status, _, _) = call(
        &lw,
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=True&reason=deploying",
        None,
    );
    assert_eq!(status, 200);
    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    let m = &checks["_service_maintenance:web-1"];
    assert_eq!(m["Status"], "critical");
    assert_eq!(m["Notes"], "deploying");
    assert_eq!(m["Name"], "Service Maintenance Mode");
    assert_eq!(m["Type"], "maintenance");
    let (passing, _) = get_json(&lw, "/v1/health/service/web?passing");
    assert_eq!(passing, json!([]));
    // A periodic re-registration keeps the maintenance check, as in Consul.
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", up.port(), "v1", Value::Null),
    );
    assert_eq!(
        check_status(&lw, "_service_maintenance:web-1").as_deref(),
        Some("critical")
    );
    let (status, _, _) = call(
        &lw,
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=false",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(check_status(&lw, "_service_maintenance:web-1"), None);
    let (passing, _) = get_json(&lw, "/v1/health/service/web?passing");
    assert_eq!(passing.as_array().map(Vec::len), Some(1));
}

#[test]
fn checks_register_update_and_deregister() {
    let lw = Laneway::start(ROUTES, "");
    let up = Upstream::start("web-base");
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", up.port(), "v1", Value::Null),
    );
    put(
        &lw,
        "/v1/agent/check/register",
        json!({"Name": "beat", "ServiceID": "web-1", "TTL": "1h", "Notes": "heartbeat"}),
    );
    assert_eq!(check_status(&lw, "beat").as_deref(), Some("critical"));
    put(
        &lw,
        "/v1/agent/check/update/beat",
        json!({"Status": "warning", "Output": "slow"}),
    );
    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    assert_eq!(checks["beat"]["Status"], "warning");
    assert_eq!(checks["beat"]["Output"], "slow");
    assert_eq!(checks["beat"]["Notes"], "heartbeat");
    let (status, _, text) = call(
        &lw,
        "PUT",
        "/v1/agent/check/update/beat",
        Some(r#"{"Status":"fine"}"#),
    );
    assert_eq!(
        (status, text.as_str()),
        (400, "Invalid check status: 'fine'")
    );
    let (status, _, text) = call(
        &lw,
        "PUT",
        "/v1/agent/check/register",
        Some(r#"{"Name":"x","ServiceID":"ghost","TTL":"1s"}"#),
    );
    assert_eq!(
        (status, text.as_str()),
        (400, "ServiceID \"ghost\" does not exist")
    );
    let (status, _, text) = call(
        &lw,
        "PUT",
        "/v1/agent/check/register",
        Some(r#"{"Name":"x","ServiceID":"web-1","HTTP":"http://10.200.0.1/","Interval":"1s"}"#),
    );
    assert_eq!(
        status, 400,
        "a check may only target its own instance: {text}"
    );
    put(&lw, "/v1/agent/check/deregister/beat", Value::Null);
    assert_eq!(check_status(&lw, "beat"), None);
}

#[test]
fn an_http_check_that_starts_failing_sends_the_lane_back_to_baseline() {
    let lw = Laneway::start(ROUTES, "");
    let base = Upstream::start("web-base");
    let v2 = Switch::start("web-v2", 200);
    put(
        &lw,
        "/v1/agent/service/register",
        register_body("web-1", base.port(), "", Value::Null),
    );
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-2",
            v2.addr.port(),
            "v2",
            json!({"CheckID": "web-2-http", "HTTP": format!("http://127.0.0.1:{}/health", v2.addr.port()),
                   "Interval": "100ms", "Timeout": "2s"}),
        ),
    );
    assert_eq!(
        lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#)
            .0,
        201
    );
    wait_status(&lw, "web-2-http", "passing");
    let lane = [("X-Laneway-Lane", "t-1")];
    assert!(eventually(WAIT, || lw
        .get("shop.example.com", "/", &lane)
        .upstream()
        == "web-v2"));

    v2.status.store(500, Ordering::SeqCst);
    wait_status(&lw, "web-2-http", "critical");
    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    let output = checks["web-2-http"]["Output"].as_str().unwrap_or("");
    assert!(output.contains("500"), "{output}");
    assert!(
        eventually(WAIT, || lw.get("shop.example.com", "/", &lane).upstream()
            == "web-base"),
        "the lane falls back to baseline once its instance is critical"
    );
    // 429 is warning, as in Consul.
    v2.status.store(429, Ordering::SeqCst);
    wait_status(&lw, "web-2-http", "warning");
}

#[test]
fn a_tcp_check_on_a_dead_port_is_critical_and_deregister_after_removes_it() {
    let lw = Laneway::start(ROUTES, "");
    let base = Upstream::start("web-base");
    let dead = free_port();
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-1",
            base.port(),
            "v1",
            json!({"CheckID": "web-1-tcp", "TCP": format!("127.0.0.1:{}", base.port()), "Interval": "100ms"}),
        ),
    );
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-dead",
            dead,
            "v1",
            json!({"CheckID": "dead-tcp", "TCP": format!("127.0.0.1:{dead}"), "Interval": "100ms",
                   "Status": "passing"}),
        ),
    );
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-reaped",
            dead,
            "v1",
            json!({"CheckID": "reaped-tcp", "TCP": format!("127.0.0.1:{dead}"), "Interval": "100ms",
                   "DeregisterCriticalServiceAfter": "1s", "Status": "passing"}),
        ),
    );
    wait_status(&lw, "web-1-tcp", "passing");
    wait_status(&lw, "dead-tcp", "critical");
    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    assert!(
        checks["dead-tcp"]["Output"]
            .as_str()
            .is_some_and(|o| o.starts_with("dial tcp")),
        "{}",
        checks["dead-tcp"]
    );
    assert!(
        eventually(WAIT, || call(
            &lw,
            "GET",
            "/v1/agent/service/web-reaped",
            None
        )
        .0 == 404),
        "DeregisterCriticalServiceAfter removes the instance: {}",
        get_json(&lw, "/v1/agent/checks").0
    );
    let (services, _) = get_json(&lw, "/v1/agent/services");
    assert!(services.get("web-1").is_some(), "a passing instance stays");
    assert!(
        services.get("web-dead").is_some(),
        "a critical instance without DeregisterCriticalServiceAfter stays"
    );
}

#[test]
fn a_ttl_check_expires_to_critical() {
    let lw = Laneway::start(ROUTES, "");
    let base = Upstream::start("web-base");
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-1",
            base.port(),
            "v1",
            json!({"CheckID": "beat", "TTL": "1s"}),
        ),
    );
    let (status, _, _) = call(&lw, "PUT", "/v1/agent/check/pass/beat?note=alive", None);
    assert_eq!(status, 200);
    // (Not read back as passing here: on a slow machine the TTL may already
    // have run out. The output below shows the pass was applied.)
    wait_status(&lw, "beat", "critical");
    let (checks, _) = get_json(&lw, "/v1/agent/checks");
    assert_eq!(
        checks["beat"]["Output"],
        "TTL expired (last output before timeout follows): alive"
    );
}

#[test]
fn success_before_passing_holds_the_check_critical() {
    let lw = Laneway::start(ROUTES, "");
    let sw = Switch::start("web-v1", 200);
    let (release, gate) = mpsc::channel();
    *sw.gate.lock().expect("gate") = Some(gate);
    put(
        &lw,
        "/v1/agent/service/register",
        register_body(
            "web-1",
            sw.addr.port(),
            "v1",
            json!({"CheckID": "slow", "HTTP": format!("http://127.0.0.1:{}/", sw.addr.port()),
                   "Interval": "50ms", "Timeout": "60s", "SuccessBeforePassing": 3}),
        ),
    );
    // Each probe is answered only when released. A probe's result is
    // recorded before the next probe starts, so when probe n+1 arrives the
    // status after n passes is in place.
    for passes in 1..3 {
        release.send(()).expect("release");
        assert!(eventually(WAIT, || sw.hits.load(Ordering::SeqCst) > passes));
        assert_eq!(
            check_status(&lw, "slow").as_deref(),
            Some("critical"),
            "still critical after {passes} passes"
        );
    }
    release.send(()).expect("release");
    wait_status(&lw, "slow", "passing");
    drop(release);
}

#[test]
fn py_consul_client_works_unchanged() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import consul"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "the py-consul client is not installed: run scripts/test.sh, or `pip install py-consul==1.8.0`"
    );
    let lw = Laneway::start(ROUTES, "");
    let up = Upstream::start("web-base");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py_consul/test_agent.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("LANEWAY_ADMIN", lw.admin.to_string())
        .env("UPSTREAM_PORT", up.port().to_string())
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "py-consul test failed:\n{text}");
    assert!(text.contains("py-consul: all checks passed"), "{text}");
}
