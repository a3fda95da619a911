//! Consul mode end to end: the real laneway binary against the Consul HTTP
//! API double (tests/consul_double), with real upstreams on loopback.

mod common;
mod consul_double;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{admin_call, eventually, vip_net, Laneway, Upstream, SIMPLE_ROUTES};
use consul_double::{ConsulDouble, Status};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// `[discovery]` for `double`, plus `extra` keys.
fn discovery(double: &ConsulDouble, extra: &str) -> String {
    format!(
        "[discovery]\nmode = \"consul\"\naddress = \"{}\"\nwait = \"3s\"\nrate = 50\n{extra}\n",
        double.url()
    )
}

fn start(double: &ConsulDouble, extra: &str) -> Laneway {
    Laneway::start(SIMPLE_ROUTES, &discovery(double, extra))
}

/// Registers `id` of `service` at `up`, with a TTL check set passing.
fn register(double: &ConsulDouble, id: &str, service: &str, version: &str, up: &Upstream) {
    double.register(json!({
        "ID": id, "Name": service, "Address": "127.0.0.1", "Port": up.port(),
        "Meta": {"version": version},
        "Check": {"CheckID": format!("service:{id}"), "TTL": "10m", "Status": "passing"},
    }));
}

/// The upstream that answers `host` on laneway (with optional lane header),
/// or the status if it is not a 200.
fn served_by(lw: &Laneway, lane: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = lane.map(|l| ("X-Laneway-Lane", l)).into_iter().collect();
    let r = lw.get("shop.example.com", "/", &headers);
    if r.status == 200 {
        r.upstream()
    } else {
        format!("status {}", r.status)
    }
}

fn status(lw: &Laneway) -> Value {
    let (code, body) = lw.api("GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn synced(lw: &Laneway) -> bool {
    status(lw)["discovery"]["synced"] == json!(true)
}

fn metric(lw: &Laneway, name: &str) -> f64 {
    let (_, body) = lw.api("GET", "/metrics", None);
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn registration_health_and_versions_follow_consul() {
    let double = ConsulDouble::start();
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    register(&double, "web-1", "web", "stable", &stable);
    let lw = start(&double, "");
    assert!(
        eventually(WAIT, || served_by(&lw, None) == "stable"),
        "{}",
        lw.log()
    );
    assert!(eventually(WAIT, || synced(&lw)), "{}", status(&lw));

    // A lane for v2 falls back to stable until v2 appears.
    let (code, _) = lw.create_lane(r#"{"name":"t1","services":{"web":"v2"}}"#);
    assert_eq!(code, 201);
    assert_eq!(served_by(&lw, Some("t1")), "stable");
    register(&double, "web-2", "web", "v2", &v2);
    assert!(eventually(WAIT, || served_by(&lw, Some("t1")) == "v2"));
    assert_eq!(served_by(&lw, None), "stable", "the baseline is unchanged");

    // A failing check takes v2 out: the lane falls back; passing brings it back.
    double.set_check_status("service:web-2", Status::Critical);
    assert!(eventually(WAIT, || served_by(&lw, Some("t1")) == "stable"));
    double.set_check_status("service:web-2", Status::Passing);
    assert!(eventually(WAIT, || served_by(&lw, Some("t1")) == "v2"));

    // A node going bad takes every instance on it out.
    double.set_node_health(consul_double::AGENT_NODE, Status::Critical);
    assert!(eventually(WAIT, || served_by(&lw, None) == "status 503"));
    double.set_node_health(consul_double::AGENT_NODE, Status::Passing);
    assert!(eventually(WAIT, || served_by(&lw, None) == "stable"));

    // The version disappears: the lane falls back again.
    assert!(double.deregister("web-2"));
    assert!(eventually(WAIT, || served_by(&lw, Some("t1")) == "stable"));
    let instances = lw.api("GET", "/api/v1/instances", None).1;
    assert!(
        !instances.contains("web-2") && instances.contains("node-1/web-1"),
        "{instances}"
    );

    // The embedded registry's write API points at Consul instead.
    let (code, body) = lw.api(
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"web","Address":"127.0.0.1","Port":1}"#),
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("consul"), "{body}");
}

#[test]
fn unrelated_index_bumps_rebuild_nothing() {
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    register(&double, "web-1", "web", "stable", &up);
    let lw = start(&double, "");
    assert!(eventually(WAIT, || synced(&lw) && served_by(&lw, None) == "stable"));
    let generation = status(&lw)["snapshot"]["generation"].clone();
    let fetches = double.requests_with_prefix("/v1/health/service/");
    for _ in 0..20 {
        double.unrelated_write();
    }
    // Both watches answer each bump; wait until they are blocked again.
    let index = double.index();
    assert!(eventually(WAIT, || {
        metric(&lw, "laneway_consul_index{watch=\"checks\"}") >= index as f64
            && metric(&lw, "laneway_consul_index{watch=\"services\"}") >= index as f64
    }));
    assert_eq!(status(&lw)["snapshot"]["generation"], generation);
    assert_eq!(double.requests_with_prefix("/v1/health/service/"), fetches);
}

#[test]
fn index_going_backwards_resets_the_watch() {
    let double = ConsulDouble::start();
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    register(&double, "web-1", "web", "stable", &stable);
    let lw = start(&double, "");
    assert!(eventually(WAIT, || synced(&lw)));
    assert!(eventually(WAIT, || double.blocked_queries() >= 2));
    let high = metric(&lw, "laneway_consul_index{watch=\"checks\"}");
    double.set_index_backwards(1);
    // Changes after the restore carry low indexes; laneway must see them.
    lw.create_lane(r#"{"name":"t1","services":{"web":"v2"}}"#);
    register(&double, "web-2", "web", "v2", &v2);
    assert!(
        eventually(Duration::from_secs(20), || served_by(&lw, Some("t1"))
            == "v2"),
        "{}",
        lw.log()
    );
    // The watch follows the restored index instead of waiting for the old one.
    assert!(eventually(WAIT, || {
        let held = metric(&lw, "laneway_consul_index{watch=\"checks\"}");
        held > 0.0 && held < high && held <= double.index() as f64
    }));
}

#[test]
fn acl_token_is_sent_and_a_wrong_one_is_reported() {
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    register(&double, "web-1", "web", "stable", &up);
    double.set_acl_token(Some("s3cret"));
    let lw = start(&double, "token = \"wrong\"");
    assert!(eventually(WAIT, || status(&lw)["discovery"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("403"))));
    assert!(
        metric(
            &lw,
            "laneway_consul_errors_total{kind=\"4xx\",watch=\"services\"}"
        ) > 0.0
    );
    assert!(!synced(&lw));
    drop(lw);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let lw = start(&double, &format!("token_file = \"{}\"", token.display()));
    assert!(
        eventually(WAIT, || synced(&lw) && served_by(&lw, None) == "stable"),
        "{}",
        status(&lw)
    );
}

#[test]
fn consul_down_at_start_without_a_cache() {
    let double = ConsulDouble::start_unreachable();
    let up = Upstream::start("stable");
    let lw = start(&double, "on_start_unreachable = \"not-ready\"");
    let (code, body) = admin_call("GET", lw.admin, "/lvs/health", None);
    assert_eq!(code, 503, "not ready until the first sync: {body}");
    let (code, body) = lw.api("GET", "/healthz", None);
    assert_eq!(code, 200);
    assert!(body.contains("not synced"), "{body}");
    assert_eq!(served_by(&lw, None), "status 503", "no instance known");
    assert!(eventually(WAIT, || metric(
        &lw,
        "laneway_consul_errors_total"
    ) > 0.0));

    double.reachable();
    register(&double, "web-1", "web", "stable", &up);
    assert!(
        eventually(WAIT, || served_by(&lw, None) == "stable"),
        "{}",
        lw.log()
    );
    assert!(eventually(WAIT, || admin_call(
        "GET",
        lw.admin,
        "/lvs/health",
        None
    )
    .0 == 200));
    assert!(eventually(WAIT, || synced(&lw)));
    assert_eq!(lw.api("GET", "/healthz", None).1, "ok\n");
}

#[test]
fn consul_down_at_start_serves_the_persisted_catalog() {
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    register(&double, "web-1", "web", "stable", &up);
    let mut lw = start(&double, "");
    assert!(eventually(WAIT, || synced(&lw) && served_by(&lw, None) == "stable"));
    assert!(eventually(WAIT, || lw
        .path("data/consul-catalog.json")
        .exists()));
    double.unreachable();
    lw.restart();
    assert_eq!(
        served_by(&lw, None),
        "stable",
        "served from the persisted catalog"
    );
    let s = status(&lw);
    assert_eq!(s["discovery"]["synced"], json!(false), "{s}");
    assert_eq!(s["discovery"]["started_from_cache"], json!(true), "{s}");
    assert_eq!(
        admin_call("GET", lw.admin, "/lvs/health", None).0,
        200,
        "serve-stale is the default"
    );
    double.reachable();
    assert!(eventually(WAIT, || synced(&lw)));
}

#[test]
fn consul_lost_while_serving_keeps_serving_and_recovers() {
    let double = ConsulDouble::start();
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    register(&double, "web-1", "web", "stable", &stable);
    let lw = start(&double, "");
    assert!(eventually(WAIT, || synced(&lw) && served_by(&lw, None) == "stable"));
    lw.create_lane(r#"{"name":"t1","services":{"web":"v2"}}"#);

    for fault in ["unreachable", "no-leader", "rate-limit", "drop"] {
        match fault {
            "unreachable" => double.unreachable(),
            "no-leader" => double.fail_with_no_leader(true),
            "rate-limit" => double.rate_limit(true),
            _ => double.drop_connections(true),
        }
        let before = metric(&lw, "laneway_consul_errors_total");
        // Wake the watches so they meet the fault.
        if fault != "unreachable" {
            double.unrelated_write();
        }
        assert!(
            eventually(WAIT, || metric(&lw, "laneway_consul_errors_total") > before),
            "{fault}: no error counted\n{}",
            lw.log()
        );
        for _ in 0..20 {
            assert_eq!(served_by(&lw, None), "stable", "{fault}: keeps serving");
        }
        assert!(
            eventually(WAIT, || metric(&lw, "laneway_discovery_staleness_seconds")
                >= 1.0),
            "{fault}"
        );
        let s = status(&lw);
        assert!(s["discovery"]["last_error"].is_string(), "{s}");
        match fault {
            "unreachable" => double.reachable(),
            "no-leader" => double.fail_with_no_leader(false),
            "rate-limit" => double.rate_limit(false),
            _ => double.drop_connections(false),
        }
        assert!(
            eventually(Duration::from_secs(40), || status(&lw)["discovery"]
                ["stale_seconds"]
                == json!(0)),
            "{fault}: did not recover\n{}",
            status(&lw)
        );
    }
    // Changes flow again after the outages.
    register(&double, "web-2", "web", "v2", &v2);
    assert!(eventually(WAIT, || served_by(&lw, Some("t1")) == "v2"));
}

#[test]
fn two_thousand_services_on_a_small_connection_budget() {
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    for n in 0..2000 {
        double.register(json!({
            "ID": format!("svc-{n}-1"), "Name": format!("svc-{n}"), "Address": "127.0.0.1",
            "Port": up.port(), "Meta": {"version": "stable"},
            "Check": {"CheckID": format!("service:svc-{n}-1"), "TTL": "10m", "Status": "passing"},
        }));
    }
    register(&double, "web-1", "web", "stable", &up);
    double.reset_peak_connections();
    let lw = start(
        &double,
        "concurrency = 8\nservices = [\"web\"]\nservice_prefixes = [\"svc-\"]",
    );
    assert!(
        eventually(Duration::from_secs(60), || synced(&lw)),
        "{}",
        status(&lw)
    );
    assert_eq!(status(&lw)["discovery"]["instances"], json!(2001));
    assert_eq!(served_by(&lw, None), "stable");
    let peak = double.peak_connections();
    // In flight at most: 8 fetches + 2 watches + the KV watch + the
    // self-registration. A fetch's connection goes back to the pool only after
    // the client has processed the response end, so the next fetch in that
    // slot may open one more: at most one such connection per fetch slot.
    assert!(peak <= 2 * 8 + 4, "peak {peak} connections to Consul");
    let fetched = double.requests_with_prefix("/v1/health/service/");
    assert!(
        (2001..=2010).contains(&fetched),
        "{fetched} service fetches for 2001 services"
    );

    // One check changes: one service is fetched again, not 2,001.
    double.set_check_status("service:svc-7-1", Status::Critical);
    assert!(eventually(WAIT, || double
        .requests("/v1/health/service/svc-7")
        >= 2));
    let index = double.index();
    assert!(eventually(WAIT, || metric(
        &lw,
        "laneway_consul_index{watch=\"checks\"}"
    ) >= index as f64));
    let after = double.requests_with_prefix("/v1/health/service/");
    assert!(
        after - fetched <= 2,
        "{} fetches for one change",
        after - fetched
    );
}

/// Two laneway instances on one Consul: one lane store, no VIP twice.
#[test]
fn a_farm_shares_lanes_through_consul_kv() {
    let double = ConsulDouble::start();
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    register(&double, "web-1", "web", "stable", &stable);
    register(&double, "web-2", "web", "v2", &v2);
    let net = vip_net();
    let lanes = format!("vip_pool = [\"{net}.2-{net}.254\"]");
    let disc = discovery(&double, "");
    let a = Laneway::start_full(SIMPLE_ROUTES, "bind_entries = false", &lanes, &disc);
    let b = Laneway::start_full(SIMPLE_ROUTES, "bind_entries = false", &lanes, &disc);
    assert!(eventually(WAIT, || synced(&a) && synced(&b)));

    // Both instances allocate at the same time.
    let admins = [a.admin, b.admin];
    let handles: Vec<_> = (0..24)
        .map(|n| {
            let admin: SocketAddr = admins[n % 2];
            std::thread::spawn(move || {
                let body = format!(r#"{{"name":"qa-{n}","services":{{"web":"v2"}}}}"#);
                admin_call("POST", admin, "/api/v1/lanes", Some(&body))
            })
        })
        .collect();
    let mut vips = BTreeSet::new();
    for h in handles {
        let (code, body) = h.join().unwrap();
        assert_eq!(code, 201, "{body}");
        let lane: Value = serde_json::from_str(&body).unwrap();
        let vip = lane["entries"]["vip"].as_str().unwrap().to_string();
        assert!(vips.insert(vip.clone()), "VIP {vip} given twice");
    }

    // Both converge on the same lane ↔ VIP map.
    let map = |lw: &Laneway| -> Vec<(String, String)> {
        let (_, body) = lw.api("GET", "/api/v1/lanes", None);
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        let mut m: Vec<(String, String)> = list
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["entries"]["vip"].to_string(),
                )
            })
            .collect();
        m.sort();
        m
    };
    assert!(eventually(WAIT, || map(&a).len() == 25 && map(&a) == map(&b)));

    // A lane created on A is served by B, and a change on B by A.
    let (code, _) = a.create_lane(r#"{"name":"t-a","services":{"web":"v2"}}"#);
    assert_eq!(code, 201);
    assert!(eventually(Duration::from_secs(1), || served_by(
        &b,
        Some("t-a")
    ) == "v2"));
    let (code, body) = b.api(
        "PATCH",
        "/api/v1/lanes/t-a",
        Some(r#"{"services":{"web":null}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(eventually(Duration::from_secs(1), || served_by(
        &a,
        Some("t-a")
    ) == "stable"));
    // Deleting on one removes it everywhere, once.
    assert_eq!(a.api("DELETE", "/api/v1/lanes/t-a", None).0, 200);
    assert!(eventually(WAIT, || b
        .api("GET", "/api/v1/lanes/t-a", None)
        .0
        == 404));
    assert_eq!(b.api("DELETE", "/api/v1/lanes/t-a", None).0, 404);
    assert!(double.kv_get("laneway/lanes/state").is_some());
}

#[test]
fn instances_register_themselves_and_leave_on_shutdown() {
    let double = ConsulDouble::start();
    let disc = discovery(&double, "");
    let mut a = Laneway::start_full(SIMPLE_ROUTES, "drain_seconds = 1", "", &disc);
    let b = Laneway::start(SIMPLE_ROUTES, &disc);
    let laneways = || -> Vec<Value> {
        let (code, body) = admin_call("GET", double.addr(), "/v1/health/service/laneway", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert!(eventually(WAIT, || laneways().len() == 2));
    let ports: BTreeSet<u64> = laneways()
        .iter()
        .map(|e| e["Service"]["Port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([a.proxy.port() as u64, b.proxy.port() as u64])
    );
    let entry = laneways()
        .into_iter()
        .find(|e| e["Service"]["Port"] == json!(a.proxy.port()))
        .unwrap();
    assert_eq!(
        entry["Service"]["Meta"]["admin"],
        json!(a.admin.to_string())
    );
    // The HTTP check on the LVS health endpoint passes.
    assert!(eventually(WAIT, || laneways().iter().all(|e| e["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["Status"] == "passing"))));
    a.signal("TERM");
    assert!(eventually(WAIT, || laneways().len() == 1), "{}", a.log());
    a.wait_exit(Duration::from_secs(30));
}

/// Leases, quarantine and auto lanes act once for the whole farm.
#[test]
fn a_farm_reaps_and_creates_auto_lanes_once() {
    let double = ConsulDouble::start();
    let stable = Upstream::start("stable");
    register(&double, "web-1", "web", "stable", &stable);
    let net = vip_net();
    let lanes = format!(
        "vip_pool = [\"{net}.2-{net}.254\"]\nrelease_quarantine = \"1h\"\nauto_lane_grace = \"0s\""
    );
    let disc = discovery(&double, "");
    let a = Laneway::start_full(SIMPLE_ROUTES, "bind_entries = false", &lanes, &disc);
    let b = Laneway::start_full(SIMPLE_ROUTES, "bind_entries = false", &lanes, &disc);
    assert!(eventually(WAIT, || synced(&a) && synced(&b)));

    // A one-second lease ends; both reapers run; the lane is released once.
    let (code, lane) = a.create_lane(r#"{"name":"short","ttl":"1s"}"#);
    assert_eq!(code, 201, "{lane}");
    let vip = lane["entries"]["vip"].clone();
    assert!(eventually(WAIT, || a
        .api("GET", "/api/v1/lanes/short", None)
        .0
        == 404
        && b.api("GET", "/api/v1/lanes/short", None).0 == 404));
    let quarantine = |lw: &Laneway| status(lw)["pools"]["quarantine"].clone();
    assert!(eventually(WAIT, || quarantine(&a) == quarantine(&b)));
    let q = quarantine(&a);
    let records: Vec<&Value> = q
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["lane"] == "short")
        .collect();
    assert_eq!(records.len(), 1, "released once: {q}");
    assert_eq!(records[0]["vip"], vip);

    // An instance naming an unknown lane creates it once, on every instance.
    let canary = Upstream::start("canary");
    double.register(json!({
        "ID": "web-c", "Name": "web", "Address": "127.0.0.1", "Port": canary.port(),
        "Meta": {"version": "c1", "lane": "auto-c"},
        "Check": {"CheckID": "service:web-c", "TTL": "10m", "Status": "passing"},
    }));
    assert!(eventually(WAIT, || served_by(&a, Some("auto-c"))
        == "canary"
        && served_by(&b, Some("auto-c")) == "canary"));
    let lane_of = |lw: &Laneway| -> Value {
        serde_json::from_str(&lw.api("GET", "/api/v1/lanes/auto-c", None).1).unwrap()
    };
    assert_eq!(lane_of(&a)["entries"]["vip"], lane_of(&b)["entries"]["vip"]);
    assert_eq!(lane_of(&a)["auto"], json!(true));
    // Its instance goes: the auto lane is released (grace 0s), once.
    assert!(double.deregister("web-c"));
    assert!(eventually(WAIT, || a
        .api("GET", "/api/v1/lanes/auto-c", None)
        .0
        == 404
        && b.api("GET", "/api/v1/lanes/auto-c", None).0 == 404));
    assert!(eventually(WAIT, || quarantine(&a) == quarantine(&b)));
    let q = quarantine(&a);
    let n = q
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["lane"] == "auto-c")
        .count();
    assert_eq!(n, 1, "released once: {q}");
}

/// A TLS front for the double: accepts TLS on 127.0.0.1 with a certificate
/// signed by a fresh test CA and relays the bytes to `backend`. Returns its
/// port and the CA certificate (PEM).
fn tls_front(backend: SocketAddr) -> (u16, String) {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((conn, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    (port, ca.pem())
}

#[test]
fn https_to_consul_with_a_ca_file() {
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    register(&double, "web-1", "web", "stable", &up);
    let (port, ca) = tls_front(double.addr());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("consul-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let https = |extra: &str| {
        format!(
            "[discovery]\nmode = \"consul\"\naddress = \"https://127.0.0.1:{port}\"\nwait = \"3s\"\n{extra}\n"
        )
    };
    let lw = Laneway::start(
        SIMPLE_ROUTES,
        &https(&format!("ca_file = \"{}\"", ca_file.display())),
    );
    assert!(
        eventually(WAIT, || synced(&lw) && served_by(&lw, None) == "stable"),
        "{}",
        status(&lw)
    );
    drop(lw);
    // Without the CA the certificate is refused, and the status says so.
    let lw = Laneway::start(SIMPLE_ROUTES, &https(""));
    assert!(eventually(WAIT, || status(&lw)["discovery"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("certificate"))));
    assert!(!synced(&lw));
}
