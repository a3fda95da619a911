//! The Consul HTTP API double, exercised over real HTTP on loopback with
//! ureq: blocking queries and their metadata, the catalog/health/agent/KV
//! endpoints, ACLs, every fault switch, and the counters tests use to judge
//! a watcher. No sleeps as synchronisation: readiness is polled with a
//! deadline, and "did not return yet" is checked on a channel.

mod common;
mod consul_double;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::eventually;
use consul_double::base64;
use consul_double::{ConsulDouble, Status, AGENT_NODE};
use serde_json::{json, Value};

// ------------------------------------------------------------------ client

/// An answer as the client saw it, error statuses included.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {self:?}"))
            .parse()
            .expect("numeric X-Consul-Index")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The sorted `Service.ID`s of a health answer.
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .json()
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap_or("").to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// One request on a fresh connection (no pooling, so connection counts are
/// exact); `Err` for transport failures only.
fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_idle_connections(0)
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            resp.header(&n)
                .map(|v| (n.to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let body = resp.into_string().map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn get(c: &ConsulDouble, path: &str) -> Reply {
    get_with(c, path, &[])
}

fn get_with(c: &ConsulDouble, path: &str, headers: &[(&str, &str)]) -> Reply {
    request("GET", &format!("{}{path}", c.url()), headers, None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn put(c: &ConsulDouble, path: &str, body: &str) -> Reply {
    request("PUT", &format!("{}{path}", c.url()), &[], Some(body))
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

fn delete(c: &ConsulDouble, path: &str) -> Reply {
    request("DELETE", &format!("{}{path}", c.url()), &[], None)
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
}

/// Sends a GET from another thread; the answer arrives on the channel.
fn spawn_get(c: &ConsulDouble, path: &str) -> mpsc::Receiver<Result<Reply, String>> {
    let url = format!("{}{path}", c.url());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The test may have finished and dropped the receiver.
        let _ = tx.send(request("GET", &url, &[], None));
    });
    rx
}

/// Waits until `n` queries are blocked in the double.
fn wait_blocked(c: &ConsulDouble, n: usize) {
    assert!(
        eventually(Duration::from_secs(10), || c.blocked_queries() == n),
        "expected {n} blocked queries, have {}",
        c.blocked_queries()
    );
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const RECV: Duration = Duration::from_secs(10);

// ---------------------------------------------------------- blocking queries

#[test]
fn a_query_without_index_returns_at_once_and_one_with_index_blocks_until_a_change() {
    let c = ConsulDouble::start();
    let started = Instant::now();
    let first = get(&c, "/v1/catalog/services?wait=5m");
    let zero = get(&c, "/v1/catalog/services?index=0&wait=5m");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "index absent/0 must not block"
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.json(), json!({"consul": []}));
    assert_eq!(zero.index(), first.index());

    let idx = first.index();
    let rx = spawn_get(&c, &format!("/v1/catalog/services?index={idx}&wait=5m"));
    wait_blocked(&c, 1);
    assert!(rx.try_recv().is_err(), "returned before any change");
    c.register(json!({"Name": "web", "Port": 8080, "Tags": ["v1"]}));
    let changed = rx
        .recv_timeout(RECV)
        .expect("woken by the change")
        .expect("answer");
    assert!(changed.index() > idx);
    assert_eq!(changed.json()["web"], json!(["v1"]));
    assert_eq!(c.blocked_queries(), 0);
}

#[test]
fn an_unrelated_write_wakes_a_blocked_query_with_an_unchanged_payload() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 8080}));
    let before = get(&c, "/v1/health/service/web");
    let idx = before.index();

    let rx = spawn_get(&c, &format!("/v1/health/service/web?index={idx}"));
    wait_blocked(&c, 1);
    let moved = c.unrelated_write();
    let woken = rx.recv_timeout(RECV).expect("woken").expect("answer");
    assert_eq!(woken.index(), moved);
    assert!(moved > idx);
    assert_eq!(
        woken.json(),
        before.json(),
        "a return is no guarantee of change"
    );

    // A KV write elsewhere wakes it too: one global index.
    let rx = spawn_get(&c, &format!("/v1/health/service/web?index={moved}"));
    wait_blocked(&c, 1);
    c.kv_put("unrelated/key", b"x");
    let woken = rx.recv_timeout(RECV).expect("woken").expect("answer");
    assert!(woken.index() > moved);
    assert_eq!(woken.json(), before.json());
}

#[test]
fn a_wait_that_runs_out_returns_the_same_index_and_data() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 8080}));
    let before = get(&c, "/v1/health/service/web");
    let idx = before.index();
    let started = Instant::now();
    let after = get(
        &c,
        &format!("/v1/health/service/web?index={idx}&wait=300ms"),
    );
    let took = started.elapsed();
    assert_eq!(after.status, 200);
    assert_eq!(after.index(), idx);
    assert_eq!(after.json(), before.json());
    assert!(
        took >= Duration::from_millis(300),
        "returned before the wait ran out: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Go duration spellings are all accepted.
    for wait in ["60000ms", "30s", "5m", "1.5h", "0"] {
        let r = get(&c, &format!("/v1/health/service/web?wait={wait}"));
        assert_eq!(r.status, 200, "wait={wait}: {}", r.body);
    }
}

#[test]
fn bad_wait_index_and_consistency_are_400_with_consuls_text() {
    let c = ConsulDouble::start();
    for (query, text) in [
        ("wait=5", "Invalid wait time"),
        ("wait=soon", "Invalid wait time"),
        ("index=abc", "Invalid index"),
        ("index=-1", "Invalid index"),
        (
            "stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
    ] {
        for path in ["/v1/catalog/services", "/v1/health/service/web", "/v1/kv/k"] {
            let r = get(&c, &format!("{path}?{query}"));
            assert_eq!((r.status, r.body.as_str()), (400, text), "{path}?{query}");
            assert!(r
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")));
        }
    }
    let r = get(&c, "/v1/catalog/services?stale");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("stale"));
    let r = get(&c, "/v1/catalog/services?consistent");
    assert_eq!(
        r.header("X-Consul-Effective-Consistency"),
        Some("consistent")
    );
}

#[test]
fn every_read_carries_index_leader_and_contact_and_the_index_is_never_zero() {
    let c = ConsulDouble::start();
    for path in [
        "/v1/catalog/services",
        "/v1/health/service/web",
        "/v1/health/state/any",
        "/v1/kv/missing",
    ] {
        let r = get(&c, path);
        assert!(r.index() >= 1, "{path}");
        assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"), "{path}");
        assert_eq!(r.header("X-Consul-LastContact"), Some("0"), "{path}");
    }
    assert_eq!(get(&c, "/v1/kv/missing").status, 404);
    c.set_index_backwards(0);
    assert_eq!(get(&c, "/v1/catalog/services").index(), 1);
    assert_eq!(c.index(), 1);
}

#[test]
fn an_index_that_goes_backwards_shows_in_later_answers() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 8080}));
    let before = get(&c, "/v1/health/service/web").index();
    assert!(before > 3);

    // A client blocked on the old index is not released by the restore.
    let rx = spawn_get(
        &c,
        &format!("/v1/health/service/web?index={before}&wait=2s"),
    );
    wait_blocked(&c, 1);
    c.set_index_backwards(3);
    let now = get(&c, "/v1/health/service/web");
    assert_eq!(now.index(), 3);
    assert_eq!(now.ids(), ["web-1"]);
    assert!(
        now.json()[0]["Service"]["ModifyIndex"].as_u64().unwrap() <= 3,
        "no record keeps an index above the restored one"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a lower index is not a change for a blocked query"
    );
    let late = rx
        .recv_timeout(RECV)
        .expect("returns when its wait ends")
        .expect("answer");
    assert_eq!(late.index(), 3, "the answer carries the lower index");

    // A client that resets to 0 gets an answer at once; writes go on from 3.
    assert_eq!(get(&c, "/v1/health/service/web?index=0&wait=5m").index(), 3);
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 8081}));
    assert_eq!(c.index(), 4);
}

// ------------------------------------------------------------------ health

#[test]
fn passing_drops_entries_with_any_non_passing_check_serf_health_included() {
    let c = ConsulDouble::start();
    c.add_node("node-2", "10.0.0.2");
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 1, "Check": {"TTL": "1m", "Status": "passing"}}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 2, "Check": {"TTL": "1m", "Status": "warning"}}));
    c.register_on("node-2", json!({"ID": "web-3", "Name": "web", "Port": 3, "Check": {"TTL": "1m", "Status": "passing"}}));
    c.set_node_health("node-2", Status::Critical);

    assert_eq!(
        get(&c, "/v1/health/service/web").ids(),
        ["web-1", "web-2", "web-3"]
    );
    for flag in ["passing", "passing=true", "passing=1"] {
        assert_eq!(
            get(&c, &format!("/v1/health/service/web?{flag}")).ids(),
            ["web-1"],
            "{flag}"
        );
    }
    assert_eq!(
        get(&c, "/v1/health/service/web?passing=false").ids().len(),
        3
    );
    let bad = get(&c, "/v1/health/service/web?passing=maybe");
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (400, "Invalid value for ?passing")
    );

    // The entry on node-2 carries the node's serfHealth among its checks.
    let all = get(&c, "/v1/health/service/web").json();
    let web3 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Service"]["ID"] == "web-3")
        .unwrap();
    let serf = web3["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .unwrap();
    assert_eq!(serf["Status"], "critical");
    assert_eq!(serf["ServiceID"], "");
    assert_eq!(web3["Node"]["Address"], "10.0.0.2");

    c.set_node_health("node-2", Status::Passing);
    assert_eq!(
        get(&c, "/v1/health/service/web?passing").ids(),
        ["web-1", "web-3"]
    );
}

#[test]
fn passing_filters_after_the_query_so_the_index_moves_while_the_result_does_not() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 1, "Check": {"CheckID": "c1", "TTL": "1m", "Status": "passing"}}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 2, "Check": {"CheckID": "c2", "TTL": "1m", "Status": "warning"}}));
    let before = get(&c, "/v1/health/service/web?passing");
    assert_eq!(before.ids(), ["web-1"]);
    let idx = before.index();

    let rx = spawn_get(&c, &format!("/v1/health/service/web?passing&index={idx}"));
    wait_blocked(&c, 1);
    c.set_check_status("c2", Status::Critical);
    let after = rx.recv_timeout(RECV).expect("woken").expect("answer");
    assert!(after.index() > idx);
    assert_eq!(after.ids(), ["web-1"]);
    assert_eq!(after.json(), before.json());
}

#[test]
fn tags_must_all_match_ignoring_case() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 1, "Tags": ["v1", "canary"]}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 2, "Tags": ["v1"]}));
    assert_eq!(
        get(&c, "/v1/health/service/web?tag=v1").ids(),
        ["web-1", "web-2"]
    );
    assert_eq!(
        get(&c, "/v1/health/service/web?tag=v1&tag=canary").ids(),
        ["web-1"]
    );
    assert_eq!(
        get(&c, "/v1/health/service/web?tag=CANARY").ids(),
        ["web-1"]
    );
    assert!(get(&c, "/v1/health/service/web?tag=v1&tag=v2")
        .ids()
        .is_empty());
}

#[test]
fn the_filter_subset_works_and_anything_else_is_refused() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 1, "Tags": ["canary"], "Meta": {"version": "v2"}}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 2, "Meta": {"version": "v1"}}));
    c.register(json!({"ID": "web-3", "Name": "web", "Port": 3}));
    let f = |expr: &str| get(&c, &format!("/v1/health/service/web?filter={}", enc(expr)));
    assert_eq!(f(r#"Service.Meta.version == "v2""#).ids(), ["web-1"]);
    assert_eq!(f(r#"Service.Tags contains "canary""#).ids(), ["web-1"]);
    assert_eq!(f(r#""canary" in Service.Tags"#).ids(), ["web-1"]);
    assert!(
        f(r#"Service.Meta.version == "v2" and Service.Tags contains "nope""#)
            .ids()
            .is_empty()
    );
    assert_eq!(
        f(r#"Service.Meta.version == "v1" and Service.Tags contains "canary""#)
            .ids()
            .len(),
        0
    );
    for unsupported in [
        r#"Service.Port == "1""#,
        r#"Service.Meta.version != "v1""#,
        "garbage (",
    ] {
        let r = f(unsupported);
        assert_eq!(r.status, 400, "{unsupported}");
        assert!(
            r.body
                .starts_with("Failed to create boolean expression evaluator"),
            "{}",
            r.body
        );
        assert!(r.body.contains("supports only"), "{}", r.body);
    }
    let catalog = get(
        &c,
        &format!(
            "/v1/catalog/services?filter={}",
            enc(r#"ServiceMeta.version == "v1""#)
        ),
    );
    assert_eq!(catalog.json(), json!({"web": []}));
}

#[test]
fn empty_address_null_meta_and_defaults_look_as_consul_sends_them() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 8080}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 8081, "Address": "10.1.2.3", "Meta": {"version": "v1"},
        "Weights": {"Passing": 10, "Warning": 1}}));
    let all = get(&c, "/v1/health/service/web").json();
    let by_id = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["Service"]["ID"] == id)
            .unwrap()
            .clone()
    };

    let bare = by_id("web-1");
    assert_eq!(
        bare["Service"]["Address"], "",
        "clients must fall back to Node.Address"
    );
    assert_eq!(bare["Node"]["Address"], "127.0.0.1");
    assert_eq!(bare["Node"]["Node"], AGENT_NODE);
    assert_eq!(bare["Node"]["Datacenter"], "dc1");
    assert!(bare["Service"]["Meta"].is_null());
    assert_eq!(bare["Service"]["Tags"], json!([]));
    assert_eq!(
        bare["Service"]["Weights"],
        json!({"Passing": 1, "Warning": 1})
    );
    assert!(bare["Service"].get("TaggedAddresses").is_none());
    assert_eq!(bare["Service"]["Service"], "web");
    assert!(bare["Service"]["CreateIndex"].as_u64().unwrap() > 0);

    let full = by_id("web-2");
    assert_eq!(full["Service"]["Address"], "10.1.2.3");
    assert_eq!(full["Service"]["Meta"], json!({"version": "v1"}));
    assert_eq!(
        full["Service"]["Weights"],
        json!({"Passing": 10, "Warning": 1})
    );
    assert_eq!(
        full["Service"]["TaggedAddresses"]["lan_ipv4"],
        json!({"Address": "10.1.2.3", "Port": 8081})
    );
}

#[test]
fn an_unknown_service_is_an_empty_200() {
    let c = ConsulDouble::start();
    let r = get(&c, "/v1/health/service/nobody");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    assert!(r.index() >= 1);
    assert_eq!(get(&c, "/v1/health/service/").status, 400);
}

#[test]
fn the_order_of_instances_is_not_stable() {
    let c = ConsulDouble::start();
    for i in 0..8 {
        c.register(json!({"ID": format!("web-{i}"), "Name": "web", "Port": 8000 + i}));
    }
    let order = |r: Reply| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_string())
            .collect()
    };
    let first = order(get(&c, "/v1/health/service/web"));
    let differs = (0..50).any(|_| order(get(&c, "/v1/health/service/web")) != first);
    assert!(differs, "50 answers came in the same order");
}

#[test]
fn catalog_services_maps_names_to_the_union_of_their_tags() {
    let c = ConsulDouble::start();
    c.register(json!({"ID": "web-1", "Name": "web", "Port": 1, "Tags": ["v1", "canary"]}));
    c.register(json!({"ID": "web-2", "Name": "web", "Port": 2, "Tags": ["v2", "canary"]}));
    c.register(json!({"Name": "api", "Port": 3}));
    let services = get(&c, "/v1/catalog/services?dc=dc1&ns=default").json();
    assert_eq!(services["consul"], json!([]));
    assert_eq!(services["api"], json!([]));
    let mut tags: Vec<&str> = services["web"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["canary", "v1", "v2"]);
}

#[test]
fn health_state_any_lists_every_check_and_blocks_on_changes() {
    let c = ConsulDouble::start();
    c.register(json!({"Name": "web", "Port": 1, "Tags": ["t"], "Check": {"TTL": "1m"}}));
    let any = get(&c, "/v1/health/state/any");
    let checks = any.json();
    let ids: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"serfHealth") && ids.contains(&"service:web"),
        "{ids:?}"
    );
    let web = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:web")
        .unwrap();
    assert_eq!(web["ServiceTags"], json!(["t"]));
    assert_eq!(web["Type"], "ttl");
    let critical = get(&c, "/v1/health/state/critical").json();
    assert_eq!(critical.as_array().unwrap().len(), 1);

    let rx = spawn_get(&c, &format!("/v1/health/state/any?index={}", any.index()));
    wait_blocked(&c, 1);
    c.set_check_status("service:web", Status::Passing);
    let after = rx.recv_timeout(RECV).expect("woken").expect("answer");
    let web = after
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:web")
        .unwrap()
        .clone();
    assert_eq!(web["Status"], "passing");
}

// ------------------------------------------------------------------- agent

#[test]
fn register_defaults_ids_and_names_and_ttl_checks_start_critical() {
    let c = ConsulDouble::start();
    let ok = put(
        &c,
        "/v1/agent/service/register",
        r#"{"Name":"web","Port":80,"Check":{"TTL":"10s"}}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let web = get(&c, "/v1/health/service/web").json();
    assert_eq!(web[0]["Service"]["ID"], "web", "ID defaults to Name");
    let check = web[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:web")
        .unwrap();
    assert_eq!(check["Name"], "Service 'web' check");
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["ServiceID"], "web");

    let two =
        r#"{"Name":"api","ID":"api-1","Checks":[{"TTL":"10s"},{"TTL":"20s","Status":"passing"}]}"#;
    assert_eq!(put(&c, "/v1/agent/service/register", two).status, 200);
    assert_eq!(
        c.check_status(AGENT_NODE, "service:api-1:1"),
        Some(Status::Critical)
    );
    assert_eq!(
        c.check_status(AGENT_NODE, "service:api-1:2"),
        Some(Status::Passing)
    );

    // Field names are case-insensitive, snake_case works, as with Go's decoder.
    let lower =
        r#"{"name":"db","port":5432,"check":{"check_id":"db-ttl","ttl":"10s","status":"warning"}}"#;
    assert_eq!(put(&c, "/v1/agent/service/register", lower).status, 200);
    assert_eq!(c.check_status(AGENT_NODE, "db-ttl"), Some(Status::Warning));

    for (body, text) in [
        (r#"{"Port":80}"#, "Missing service name"),
        (
            r#"{"Name":"x","Check":{"HTTP":"http://127.0.0.1:1/"}}"#,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, or TCP checks",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"10s","Interval":"10s"}}"#,
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            r#"{"Name":"x","Check":{"Name":"no kind"}}"#,
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            r#"{"Name":"x","Check":{"TTL":"10s","Status":"ok"}}"#,
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
    ] {
        let r = put(&c, "/v1/agent/service/register", body);
        assert_eq!((r.status, r.body.as_str()), (400, text), "{body}");
    }
    let junk = put(&c, "/v1/agent/service/register", "{not json");
    assert_eq!(junk.status, 400);
    assert!(
        junk.body.starts_with("Request decode failed"),
        "{}",
        junk.body
    );
}

#[test]
fn ttl_checks_take_pass_warn_fail_and_expire_without_heartbeats() {
    let c = ConsulDouble::start();
    c.register(json!({"Name": "web", "Check": {"CheckID": "web-ttl", "TTL": "30s"}}));
    for (verb, status) in [
        ("pass", "passing"),
        ("warn", "warning"),
        ("fail", "critical"),
        ("pass", "passing"),
    ] {
        let r = put(
            &c,
            &format!("/v1/agent/check/{verb}/web-ttl?note=by-{verb}"),
            "",
        );
        assert_eq!(r.status, 200, "{verb}: {}", r.body);
        let check = &get(&c, "/v1/health/service/web").json()[0]["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["CheckID"] == "web-ttl")
            .unwrap()
            .clone();
        assert_eq!(check["Status"], status);
        assert_eq!(check["Output"], format!("by-{verb}"));
    }
    let update = put(
        &c,
        "/v1/agent/check/update/web-ttl",
        r#"{"Status":"warning","Output":"slow"}"#,
    );
    assert_eq!(update.status, 200);
    assert_eq!(c.check_status(AGENT_NODE, "web-ttl"), Some(Status::Warning));

    let unknown = put(&c, "/v1/agent/check/pass/nope", "");
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (
            404,
            r#"Unknown check ID "nope". Ensure that the check ID is passed, not the check name."#
        )
    );
    c.register(json!({"Name": "tcp", "Check": {"CheckID": "tcp-check", "TCP": "127.0.0.1:1", "Interval": "10s"}}));
    let not_ttl = put(&c, "/v1/agent/check/pass/tcp-check", "");
    assert_eq!(
        (not_ttl.status, not_ttl.body.as_str()),
        (500, r#"CheckID "tcp-check" does not have associated TTL"#)
    );

    // Without heartbeats a TTL check turns critical once the TTL runs out.
    c.register(json!({"Name": "short", "Check": {"CheckID": "short-ttl", "TTL": "200ms", "Status": "passing"}}));
    assert!(eventually(Duration::from_secs(10), || {
        c.check_status(AGENT_NODE, "short-ttl") == Some(Status::Critical)
    }));
    let out = get(&c, "/v1/health/state/critical").json();
    let expired = out
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "short-ttl")
        .unwrap();
    assert_eq!(expired["Output"], "TTL expired");
}

/// A loopback HTTP server answering every request with `code`.
fn status_server(code: Arc<AtomicU16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            // A read error just means this probe is over.
            if conn.read(&mut buf).is_err() {
                continue;
            }
            let code = code.load(Ordering::SeqCst);
            let reply = format!(
                "HTTP/1.1 {code} Whatever\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
            // The double may give up on a probe (timeout); that is its business.
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    port
}

#[test]
fn http_and_tcp_checks_probe_their_targets() {
    let c = ConsulDouble::start();
    let code = Arc::new(AtomicU16::new(200));
    let port = status_server(code.clone());
    c.register(
        json!({"Name": "web", "Check": {"CheckID": "web-http", "Interval": "1s",
        "HTTP": format!("http://127.0.0.1:{port}/health")}}),
    );
    let status = || c.check_status(AGENT_NODE, "web-http");
    assert!(
        eventually(Duration::from_secs(10), || status()
            == Some(Status::Passing)),
        "2xx → passing"
    );
    let check = get(&c, "/v1/health/state/passing").json();
    let http = check
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "web-http")
        .unwrap()
        .clone();
    assert_eq!(http["Type"], "http");
    assert_eq!(http["Interval"], "1s");
    assert!(http["Output"]
        .as_str()
        .unwrap()
        .starts_with(&format!("HTTP GET http://127.0.0.1:{port}/health: 200")));
    code.store(429, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || status()
            == Some(Status::Warning)),
        "429 → warning"
    );
    code.store(503, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || status()
            == Some(Status::Critical)),
        "5xx → critical"
    );

    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = target.local_addr().unwrap();
    c.register(json!({"Name": "db", "Check": {"CheckID": "db-tcp", "TCP": addr.to_string(), "Interval": "1s"}}));
    let tcp = || c.check_status(AGENT_NODE, "db-tcp");
    assert!(
        eventually(Duration::from_secs(10), || tcp() == Some(Status::Passing)),
        "connect → passing"
    );
    drop(target);
    assert!(
        eventually(Duration::from_secs(10), || tcp() == Some(Status::Critical)),
        "refused → critical"
    );
}

#[test]
fn deregister_removes_the_service_and_an_unknown_id_is_a_no_op() {
    let c = ConsulDouble::start();
    c.register(json!({"Name": "web", "Port": 80, "Check": {"TTL": "1m"}}));
    assert_eq!(put(&c, "/v1/agent/service/deregister/web", "").status, 200);
    assert_eq!(get(&c, "/v1/health/service/web").json(), json!([]));
    let checks = get(&c, "/v1/health/state/any").json();
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ServiceID"] != "web"));

    let idx = c.index();
    let missing = put(&c, "/v1/agent/service/deregister/nope", "");
    assert_eq!((missing.status, missing.body.as_str()), (200, ""));
    assert_eq!(c.index(), idx, "a no-op writes nothing");

    c.deregister_unknown_is_404(true);
    let missing = put(&c, "/v1/agent/service/deregister/nope", "");
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (
            404,
            r#"Unknown service ID "nope". Ensure that the service ID is passed, not the service name."#
        )
    );
}

#[test]
fn a_service_critical_past_deregister_critical_service_after_is_reaped() {
    let c = ConsulDouble::start();
    c.set_check_reaper(Duration::from_millis(100), Duration::from_millis(50));
    c.register(json!({"Name": "keep", "Check": {"TTL": "1m", "Status": "passing", "DeregisterCriticalServiceAfter": "100ms"}}));
    c.register(
        json!({"Name": "web", "Check": {"TTL": "1m", "DeregisterCriticalServiceAfter": "100ms"}}),
    );
    assert!(eventually(Duration::from_secs(10), || get(
        &c,
        "/v1/health/service/web"
    )
    .json()
        == json!([])));
    assert_eq!(
        get(&c, "/v1/health/service/keep")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ---------------------------------------------------------------------- KV

#[test]
fn kv_puts_gets_recurses_lists_and_deletes() {
    let c = ConsulDouble::start();
    let created = put(&c, "/v1/kv/app/config", "hello");
    assert_eq!((created.status, created.body.as_str()), (200, "true"));
    let got = get(&c, "/v1/kv/app/config");
    let entry = &got.json()[0];
    assert_eq!(entry["Key"], "app/config");
    assert_eq!(entry["Value"], base64::encode(b"hello"));
    assert_eq!(
        base64::decode(entry["Value"].as_str().unwrap()).unwrap(),
        b"hello"
    );
    assert_eq!(entry["Flags"], 0);
    assert_eq!(entry["LockIndex"], 0);
    assert_eq!(entry["CreateIndex"], entry["ModifyIndex"]);
    assert_eq!(got.index(), entry["ModifyIndex"].as_u64().unwrap());

    assert_eq!(put(&c, "/v1/kv/app/config?flags=42", "world").body, "true");
    let updated = get(&c, "/v1/kv/app/config").json()[0].clone();
    assert_eq!(updated["CreateIndex"], entry["CreateIndex"]);
    assert!(updated["ModifyIndex"].as_u64() > entry["ModifyIndex"].as_u64());
    assert_eq!(updated["Flags"], 42);
    let raw = get(&c, "/v1/kv/app/config?raw");
    assert_eq!((raw.status, raw.body.as_str()), (200, "world"));

    assert_eq!(put(&c, "/v1/kv/app/empty", "").body, "true");
    assert!(get(&c, "/v1/kv/app/empty").json()[0]["Value"].is_null());
    assert_eq!(put(&c, "/v1/kv/apple", "x").body, "true");

    let tree = get(&c, "/v1/kv/app/?recurse").json();
    let keys: Vec<&str> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/config", "app/empty"]);
    assert_eq!(
        get(&c, "/v1/kv/app/?keys").json(),
        json!(["app/config", "app/empty"])
    );
    assert_eq!(
        get(&c, "/v1/kv/?keys&separator=/").json(),
        json!(["app/", "apple"])
    );

    let missing = get(&c, "/v1/kv/nothing");
    assert_eq!((missing.status, missing.body.as_str()), (404, ""));
    assert!(missing.index() >= 1, "a 404 still carries the index");

    assert_eq!(delete(&c, "/v1/kv/app/config").body, "true");
    assert_eq!(get(&c, "/v1/kv/app/config").status, 404);
    assert_eq!(delete(&c, "/v1/kv/app?recurse").body, "true");
    assert_eq!(get(&c, "/v1/kv/app?recurse").status, 404);
    assert_eq!(
        c.kv_get("apple"),
        None,
        "recurse deletes by prefix, as Consul does"
    );
}

#[test]
fn kv_cas_answers_true_or_false_and_cas_zero_creates_only() {
    let c = ConsulDouble::start();
    assert_eq!(put(&c, "/v1/kv/k?cas=0", "a").body, "true");
    assert_eq!(
        put(&c, "/v1/kv/k?cas=0", "b").body,
        "false",
        "cas=0 only creates"
    );
    let m = get(&c, "/v1/kv/k").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(put(&c, &format!("/v1/kv/k?cas={m}"), "b").body, "true");
    assert_eq!(
        put(&c, &format!("/v1/kv/k?cas={m}"), "c").body,
        "false",
        "stale index"
    );
    assert_eq!(c.kv_get("k").as_deref(), Some(&b"b"[..]));

    let now = get(&c, "/v1/kv/k").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(delete(&c, &format!("/v1/kv/k?cas={m}")).body, "false");
    assert_eq!(delete(&c, &format!("/v1/kv/k?cas={now}")).body, "true");
    assert_eq!(
        delete(&c, "/v1/kv/gone?cas=5").body,
        "true",
        "Consul's answer for a missing key"
    );

    let bad = put(&c, "/v1/kv/k?cas=x", "v");
    assert_eq!(bad.status, 500);
    let conflict = put(&c, "/v1/kv/k?cas=0&acquire=abc", "v");
    assert_eq!(conflict.status, 400);
    assert!(
        conflict.body.starts_with("Conflicting flags: "),
        "{}",
        conflict.body
    );
}

#[test]
fn a_blocking_kv_get_returns_the_new_value() {
    let c = ConsulDouble::start();
    put(&c, "/v1/kv/feature", "off");
    let idx = get(&c, "/v1/kv/feature").index();
    let rx = spawn_get(&c, &format!("/v1/kv/feature?index={idx}&wait=1m"));
    wait_blocked(&c, 1);
    put(&c, "/v1/kv/feature", "on");
    let r = rx.recv_timeout(RECV).expect("woken").expect("answer");
    assert!(r.index() > idx);
    assert_eq!(r.json()[0]["Value"], base64::encode(b"on"));
}

#[test]
fn sessions_lock_kv_keys_and_release_them_when_they_end() {
    let c = ConsulDouble::start();
    let session = |body: &str| {
        put(&c, "/v1/session/create", body).json()["ID"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let s1 = session(r#"{"Name":"a","LockDelay":"0s"}"#);
    let s2 = session(r#"{"LockDelay":"0s"}"#);
    let entry = || get(&c, "/v1/kv/lock").json()[0].clone();

    assert_eq!(
        put(&c, &format!("/v1/kv/lock?acquire={s1}"), "x").body,
        "true"
    );
    assert_eq!(
        (entry()["LockIndex"].clone(), entry()["Session"].clone()),
        (json!(1), json!(s1))
    );
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?acquire={s2}"), "y").body,
        "false",
        "held by s1"
    );
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?release={s2}"), "").body,
        "false"
    );
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?release={s1}"), "x").body,
        "true"
    );
    assert!(entry().get("Session").is_none());
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?acquire={s2}"), "y").body,
        "true"
    );
    assert_eq!(entry()["LockIndex"], 2);

    assert_eq!(
        put(&c, &format!("/v1/session/destroy/{s2}"), "").body,
        "true"
    );
    assert!(
        entry().get("Session").is_none(),
        "destroying the session releases its lock"
    );

    // With the default 15 s lock delay a lost lock cannot be retaken at once.
    let s3 = session("");
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?acquire={s3}"), "z").body,
        "true"
    );
    assert!(c.expire_session(&s3));
    assert!(entry().get("Session").is_none());
    assert_eq!(
        put(&c, &format!("/v1/kv/lock?acquire={s1}"), "z").body,
        "false",
        "lock delay"
    );

    let info = get(&c, &format!("/v1/session/info/{s1}")).json();
    assert_eq!(info[0]["Name"], "a");
    assert_eq!(info[0]["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(get(&c, &format!("/v1/session/info/{s3}")).json(), json!([]));
    let bad = put(&c, "/v1/kv/other?acquire=nope", "v");
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (500, r#"Invalid session "nope""#)
    );

    // A session dies with its node's serfHealth.
    assert_eq!(
        put(&c, &format!("/v1/kv/other?acquire={s1}"), "v").body,
        "true"
    );
    c.set_node_health(AGENT_NODE, Status::Critical);
    assert_eq!(get(&c, &format!("/v1/session/info/{s1}")).json(), json!([]));
    assert!(get(&c, "/v1/kv/other").json()[0].get("Session").is_none());
}

// --------------------------------------------------------------------- ACL

#[test]
fn acl_tokens_come_from_either_header_and_everything_else_is_denied() {
    let c = ConsulDouble::start();
    c.register(json!({"Name": "web", "Port": 80}));
    c.set_acl_token(Some("s3cret"));
    let anonymous = get(&c, "/v1/health/service/web");
    assert_eq!(anonymous.status, 403);
    assert!(
        anonymous.body.starts_with("Permission denied"),
        "{}",
        anonymous.body
    );
    assert!(anonymous
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for header in [
        ("X-Consul-Token", "s3cret"),
        ("Authorization", "Bearer s3cret"),
    ] {
        let r = get_with(&c, "/v1/health/service/web", &[header]);
        assert_eq!(r.status, 200, "{header:?}");
    }
    assert_eq!(get(&c, "/v1/health/service/web?token=s3cret").status, 200);
    let wrong = get_with(&c, "/v1/catalog/services", &[("X-Consul-Token", "guess")]);
    assert_eq!((wrong.status, wrong.body.as_str()), (403, "ACL not found"));
    let basic = get_with(
        &c,
        "/v1/catalog/services",
        &[("Authorization", "Basic s3cret")],
    );
    assert_eq!(basic.status, 403, "only Bearer carries a token");

    let write = put(&c, "/v1/agent/service/register", r#"{"Name":"api"}"#);
    assert_eq!(write.status, 403);
    assert!(write.body.starts_with("Permission denied"));
    assert!(write.body.contains("service:write"), "{}", write.body);
    assert_eq!(put(&c, "/v1/kv/k", "v").status, 403);
    assert_eq!(get(&c, "/v1/kv/k").status, 403);

    // Real Consul filters token-less catalog and health reads instead.
    c.acl_filter_reads(true);
    let filtered = get(&c, "/v1/health/service/web");
    assert_eq!((filtered.status, filtered.json()), (200, json!([])));
    assert_eq!(
        filtered.header("X-Consul-Results-Filtered-By-ACLs"),
        Some("true")
    );
    assert_eq!(get(&c, "/v1/catalog/services").json(), json!({}));
    assert_eq!(
        get(&c, "/v1/kv/k").status,
        403,
        "a single key is still refused"
    );
    assert_eq!(
        get(&c, "/v1/kv/?recurse").status,
        404,
        "a listing is filtered"
    );
    c.set_acl_token(None);
    assert_eq!(
        get(&c, "/v1/health/service/web")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ------------------------------------------------------------------ faults

#[test]
fn without_a_leader_reads_fail_except_stale_ones() {
    let c = ConsulDouble::start();
    c.register(json!({"Name": "web", "Port": 80}));
    let idx = get(&c, "/v1/health/service/web").index();
    let rx = spawn_get(&c, &format!("/v1/health/service/web?index={idx}&wait=5m"));
    wait_blocked(&c, 1);

    c.fail_with_no_leader(true);
    let blocked = rx
        .recv_timeout(RECV)
        .expect("a blocked query fails at once")
        .expect("answer");
    assert_eq!(
        (blocked.status, blocked.body.as_str()),
        (500, "No cluster leader")
    );
    let r = get(&c, "/v1/health/service/web");
    assert_eq!((r.status, r.body.as_str()), (500, "No cluster leader"));
    let stale = get(&c, "/v1/health/service/web?stale");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("X-Consul-KnownLeader"), Some("false"));
    assert!(stale
        .header("X-Consul-LastContact")
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(put(&c, "/v1/kv/k", "v").status, 500);
    assert_eq!(get(&c, "/v1/status/leader").json(), json!(""));

    c.fail_with_no_leader(false);
    let back = get(&c, "/v1/health/service/web");
    assert_eq!(back.status, 200);
    assert_eq!(back.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(get(&c, "/v1/status/leader").json(), json!("127.0.0.1:8300"));
}

#[test]
fn rate_limiting_answers_429_and_still_counts_the_request() {
    let c = ConsulDouble::start();
    c.rate_limit(true);
    let r = get(&c, "/v1/health/service/web");
    assert_eq!(r.status, 429);
    assert_eq!(put(&c, "/v1/kv/k", "v").status, 429);
    assert_eq!(c.requests("/v1/health/service/web"), 1);
    c.rate_limit(false);
    assert_eq!(get(&c, "/v1/health/service/web").status, 200);
}

#[test]
fn dropped_connections_get_no_answer_and_open_ones_are_cut() {
    let c = ConsulDouble::start();
    let idx = get(&c, "/v1/catalog/services").index();
    let rx = spawn_get(&c, &format!("/v1/catalog/services?index={idx}&wait=5m"));
    wait_blocked(&c, 1);

    c.drop_connections(true);
    let cut = rx.recv_timeout(RECV).expect("the open connection is cut");
    assert!(cut.is_err(), "no answer on a cut connection: {cut:?}");
    let dropped = request(
        "GET",
        &format!("{}/v1/health/service/web", c.url()),
        &[],
        None,
    );
    assert!(dropped.is_err(), "no answer: {dropped:?}");
    assert!(c.dropped_connections() >= 1);
    assert!(eventually(Duration::from_secs(10), || c
        .requests("/v1/health/service/web")
        == 1));
    assert!(c
        .request_log()
        .iter()
        .any(|r| r.dropped && r.path == "/v1/health/service/web"));

    c.drop_connections(false);
    assert_eq!(get(&c, "/v1/health/service/web").status, 200);
}

#[test]
fn slow_delays_every_answer() {
    let c = ConsulDouble::start();
    c.slow(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&c, "/v1/catalog/services").status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    c.slow(Duration::ZERO);
    assert_eq!(get(&c, "/v1/catalog/services").status, 200);
}

#[test]
fn unreachable_closes_everything_and_reachable_listens_on_the_same_port() {
    let c = ConsulDouble::start();
    let addr = c.addr();
    let idx = get(&c, "/v1/catalog/services").index();
    let rx = spawn_get(&c, &format!("/v1/catalog/services?index={idx}&wait=5m"));
    wait_blocked(&c, 1);

    c.unreachable();
    let cut = rx.recv_timeout(RECV).expect("the blocked query is cut");
    assert!(cut.is_err(), "{cut:?}");
    assert!(TcpStream::connect(addr).is_err(), "connects are refused");
    assert!(request(
        "GET",
        &format!("{}/v1/catalog/services", c.url()),
        &[],
        None
    )
    .is_err());
    assert_eq!(c.open_connections(), 0);

    c.reachable();
    assert_eq!(c.addr(), addr);
    assert_eq!(get(&c, "/v1/catalog/services").status, 200);
    c.reachable(); // already listening: nothing happens
    assert_eq!(get(&c, "/v1/catalog/services").status, 200);
}

#[test]
fn a_double_can_start_down_and_come_up_later() {
    let c = ConsulDouble::start_unreachable();
    assert!(TcpStream::connect(c.addr()).is_err());
    c.register(json!({"Name": "web", "Port": 80}));
    c.reachable();
    assert_eq!(get(&c, "/v1/health/service/web").ids(), ["web"]);
}

// ---------------------------------------------------------------- counters

#[test]
fn requests_are_counted_per_endpoint_and_connections_at_peak() {
    let c = ConsulDouble::start();
    let t0 = Instant::now();
    for _ in 0..3 {
        get(&c, "/v1/health/service/web?wait=1s");
    }
    get(&c, "/v1/catalog/services");
    assert_eq!(c.requests("/v1/health/service/web"), 3);
    assert_eq!(c.requests_since("/v1/health/service/web", t0), 3);
    assert_eq!(
        c.requests_since("/v1/health/service/web", Instant::now()),
        0
    );
    assert_eq!(c.requests("/v1/catalog/services"), 1);
    assert_eq!(c.requests_with_prefix("/v1/health/"), 3);
    assert_eq!(c.total_requests(), 4);
    let log = c.request_log();
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].query, "wait=1s");

    let conns: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(c.addr()).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 5));
    assert!(c.peak_connections() >= 5);
    drop(conns);
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 0));
    assert!(c.peak_connections() >= 5, "the peak stays");
    c.reset_peak_connections();
    assert_eq!(c.peak_connections(), 0);
}

#[test]
fn the_201st_connection_from_one_client_gets_429() {
    let c = ConsulDouble::start();
    let held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(c.addr()).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 200));
    let over = request(
        "GET",
        &format!("{}/v1/catalog/services", c.url()),
        &[],
        None,
    )
    .expect("an answer");
    assert_eq!(over.status, 429);
    assert_eq!(c.rejected_connections(), 1);
    assert_eq!(c.peak_connections(), 200);
    drop(held);
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 0));

    c.set_max_conns_per_client(2);
    let _two: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(c.addr()).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 2));
    let over = request(
        "GET",
        &format!("{}/v1/catalog/services", c.url()),
        &[],
        None,
    )
    .expect("an answer");
    assert_eq!(over.status, 429);
}

// ------------------------------------------------------------------- misc

#[test]
fn unknown_datacenters_namespaces_and_methods_are_refused_as_consul_does() {
    let c = ConsulDouble::start();
    let dc = get(&c, "/v1/catalog/services?dc=dc2");
    assert_eq!(
        (dc.status, dc.body.as_str()),
        (500, "No path to datacenter")
    );
    assert_eq!(get(&c, "/v1/catalog/services?dc=dc1").status, 200);
    let ns = get(&c, "/v1/health/service/web?ns=team-a");
    assert_eq!(
        (ns.status, ns.body.as_str()),
        (
            400,
            r#"Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature"#
        )
    );
    assert_eq!(get(&c, "/v1/health/service/web?ns=default").status, 200);

    let post = request(
        "POST",
        &format!("{}/v1/catalog/services", c.url()),
        &[],
        Some(""),
    )
    .unwrap();
    assert_eq!(
        (post.status, post.body.as_str()),
        (405, "method POST not allowed")
    );
    assert_eq!(post.header("Allow"), Some("OPTIONS,GET"));
    assert_eq!(get(&c, "/v1/agent/service/register").status, 405);
    assert_eq!(get(&c, "/v1/no/such/endpoint").status, 404);
}

#[test]
fn dropping_the_double_ends_blocked_queries_and_frees_the_port() {
    let c = ConsulDouble::start();
    let addr = c.addr();
    let idx = get(&c, "/v1/catalog/services").index();
    let rx = spawn_get(&c, &format!("/v1/catalog/services?index={idx}&wait=5m"));
    wait_blocked(&c, 1);
    drop(c);
    let ended = rx.recv_timeout(RECV).expect("the client is released");
    assert!(ended.is_err(), "{ended:?}");
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_client_that_goes_away_takes_its_blocked_query_with_it() {
    let c = ConsulDouble::start();
    let idx = get(&c, "/v1/catalog/services").index();
    let mut raw = TcpStream::connect(c.addr()).unwrap();
    let head =
        format!("GET /v1/catalog/services?index={idx}&wait=5m HTTP/1.1\r\nHost: consul\r\n\r\n");
    raw.write_all(head.as_bytes()).unwrap();
    wait_blocked(&c, 1);
    assert_eq!(c.open_connections(), 1);
    drop(raw);
    wait_blocked(&c, 0);
    assert!(eventually(Duration::from_secs(10), || c.open_connections() == 0));
}
