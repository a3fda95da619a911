//! End-to-end: lane entries (VIP, port, hostname) through the real laneway
//! binary: allocation, idempotency, exhaustion, quarantine, leases, filters,
//! concurrency, crash safety, auto lanes and the `laneway lane` CLI.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com", "*.example.com", "~^(?<city>[a-z]+)\\.example\\.net$"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server]]
names = ["api.example.org", "www.example.*", "admin.example.org"]

[[server.location]]
match = "/"
service = "web"
"#;

/// A block of `n` consecutive ports below the ephemeral range that are free
/// now and not handed out before in this process.
fn free_port_block(n: u16) -> (u16, u16) {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap();
    let start = 20000 + (std::process::id() % 20) as u16 * 500;
    let mut base = start;
    loop {
        let free = !taken.iter().any(|t| (base..base + n).contains(t))
            && (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            taken.extend(base..base + n);
            return (base, base + n - 1);
        }
        base = if base + 2 * n > 32000 {
            15000
        } else {
            base + n
        };
        assert_ne!(base, start, "no free block of {n} ports");
    }
}

fn lanes_config(vips: &str, ports: u16, more: &str) -> String {
    let (first, last) = free_port_block(ports);
    format!("vip_pool = [{vips}]\nport_pool = \"{first}-{last}\"\n{more}")
}

fn start(vips: &str, ports: u16, more: &str) -> Laneway {
    Laneway::start_with_lanes(ROUTES, &lanes_config(vips, ports, more), "")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn error_of(lw: &Laneway, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (status, text) = lw.api(method, path, body);
    let msg = json(&text)["error"].as_str().unwrap_or("").to_string();
    (status, msg)
}

fn lane(lw: &Laneway, name: &str) -> (u16, Value) {
    let (status, text) = lw.api("GET", &format!("/api/v1/lanes/{name}"), None);
    (status, json(&text))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn create_returns_entries_urls_and_hosts_line_and_is_idempotent() {
    let mut lw = start(r#""127.0.0.2-127.0.0.254""#, 10, "");
    let body = r#"{"name":"t-1","services":{"web":"v2"},"owner":"ann","description":"checkout rework","labels":{"team":"pay"},"ttl":"72h"}"#;
    let (status, created) = lw.create_lane(body);
    assert_eq!(status, 201, "{created}");
    let e = &created["entries"];
    let proxy_port = lw.proxy.port();
    let port = e["port"].as_u64().unwrap();
    assert_eq!(e["vip"], "127.0.0.2");
    assert_eq!(e["hostname"], "t-1.lanes.test");
    let urls: Vec<&str> = e["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("http://127.0.0.2:{proxy_port}/"),
            format!("http://t-1.lanes.test:{port}/"),
            format!("http://t-1.lanes.test:{proxy_port}/"),
        ]
    );
    // Exact production names only (no wildcard, no regex), then the lane's hostname.
    assert_eq!(
        e["hosts_line"],
        "127.0.0.2 shop.example.com api.example.org admin.example.org t-1.lanes.test"
    );
    assert_eq!(created["owner"], "ann");
    assert_eq!(created["description"], "checkout rework");
    assert_eq!(created["labels"]["team"], "pay");
    assert_eq!(created["ttl"], "72h");
    assert_eq!(created["auto"], false);
    let expires = created["expires_at"].as_u64().unwrap();
    assert!(expires >= created["created_at"].as_u64().unwrap() + 72 * 3600);

    // Idempotent by name: same body, same entries, 200.
    let (status, again) = lw.create_lane(body);
    assert_eq!(status, 200);
    assert_eq!(again, created);
    // A second lane gets the next entries.
    let (status, second) = lw.create_lane(r#"{"name":"t-2"}"#);
    assert_eq!(status, 201);
    assert_eq!(second["entries"]["vip"], "127.0.0.3");
    assert_eq!(second["entries"]["port"].as_u64(), Some(port + 1));
    assert_eq!(second["expires_at"], Value::Null, "no default_ttl");
    // A different body for an existing lane names the difference.
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes",
        Some(r#"{"name":"t-2","owner":"bob"}"#),
    );
    assert_eq!(status, 409);
    assert!(msg.contains("owner (none now, \"bob\" requested)"), "{msg}");

    // Sticky across a restart.
    lw.restart();
    assert_eq!(lane(&lw, "t-1").1, created);
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(names(&json(&list)), ["baseline", "t-1", "t-2"]);
}

#[test]
fn exhausted_pool_is_409_naming_the_pool_and_allocates_nothing() {
    let lw = start(r#""127.0.0.2-127.0.0.4""#, 10, "");
    for name in ["a", "b", "c"] {
        assert_eq!(lw.create_lane(&format!(r#"{{"name":"{name}"}}"#)).0, 201);
    }
    let (_, before) = lw.api("GET", "/api/v1/lanes", None);
    let (status, msg) = error_of(&lw, "POST", "/api/v1/lanes", Some(r#"{"name":"d"}"#));
    assert_eq!(status, 409);
    assert!(
        msg.contains(
            "vip pool 127.0.0.2-127.0.0.4 is exhausted (3 entries in use or in quarantine)"
        ),
        "{msg}"
    );
    assert_eq!(lane(&lw, "d").0, 404);
    let (_, after) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(before, after, "nothing half-allocated");

    // Explicit entries: taken, outside the pool, not an address.
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes",
        Some(r#"{"name":"e","vip":"127.0.0.3"}"#),
    );
    assert_eq!(status, 409);
    assert!(
        msg.contains("vip 127.0.0.3 is taken by lane \"b\""),
        "{msg}"
    );
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes",
        Some(r#"{"name":"e","vip":"10.20.0.7"}"#),
    );
    assert_eq!(status, 400);
    assert!(
        msg.contains("vip 10.20.0.7 is outside the vip pool 127.0.0.2-127.0.0.4"),
        "{msg}"
    );
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes",
        Some(r#"{"name":"e","vip":"10.20.0.300"}"#),
    );
    assert_eq!(status, 400);
    assert!(msg.contains("invalid IP address"), "{msg}");
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes",
        Some(r#"{"name":"e","port":1}"#),
    );
    assert_eq!(status, 400);
    assert!(msg.contains("port 1 is outside the port pool"), "{msg}");
    let (_, after) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(before, after);
}

#[test]
fn released_vip_is_quarantined_for_its_lane() {
    let lw = start(
        r#""127.0.0.2-127.0.0.3""#,
        10,
        "release_quarantine = \"3s\"\n",
    );
    let (_, a) = lw.create_lane(r#"{"name":"a"}"#);
    let (vip_a, port_a) = (a["entries"]["vip"].clone(), a["entries"]["port"].clone());
    assert_eq!(vip_a, "127.0.0.2");
    let (status, deleted) = lw.api("DELETE", "/api/v1/lanes/a", None);
    assert_eq!(status, 200, "{deleted}");
    // Another lane does not get a's VIP while it is in quarantine.
    let (_, b) = lw.create_lane(r#"{"name":"b"}"#);
    assert_eq!(b["entries"]["vip"], "127.0.0.3");
    assert_ne!(b["entries"]["port"], port_a);
    let (status, msg) = error_of(&lw, "POST", "/api/v1/lanes", Some(r#"{"name":"c"}"#));
    assert_eq!(status, 409, "{msg}");
    assert!(
        msg.contains("exhausted (2 entries in use or in quarantine)"),
        "{msg}"
    );
    // The same name gets its entries back.
    let (status, a2) = lw.create_lane(r#"{"name":"a"}"#);
    assert_eq!(status, 201);
    assert_eq!(
        (&a2["entries"]["vip"], &a2["entries"]["port"]),
        (&vip_a, &port_a)
    );
    // After the quarantine it can go to another lane.
    assert_eq!(lw.api("DELETE", "/api/v1/lanes/a", None).0, 200);
    let started = Instant::now();
    let mut c = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            let (status, text) = lw.api("POST", "/api/v1/lanes", Some(r#"{"name":"c"}"#));
            c = json(&text);
            status == 201
        }),
        "c never got an entry:\n{}",
        lw.log()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "quarantine held for its length"
    );
    assert_eq!(c["entries"]["vip"], vip_a);
    assert_eq!(c["entries"]["port"], port_a, "lowest free port again");
    let (_, status) = lw.api("GET", "/api/v1/status", None);
    let pools = &json(&status)["pools"];
    assert_eq!(pools["vip"]["pool"], "127.0.0.2-127.0.0.3");
    assert_eq!(
        (
            pools["vip"]["in_use"].as_u64(),
            pools["port"]["in_use"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(
        pools["quarantine"],
        serde_json::json!([]),
        "given away, no longer quarantined"
    );
}

#[test]
fn leases_expire_and_extend_renews_them() {
    let lw = start(
        r#""127.0.0.2-127.0.0.9""#,
        10,
        "release_quarantine = \"0s\"\n",
    );
    assert_eq!(lw.create_lane(r#"{"name":"short","ttl":"2s"}"#).0, 201);
    let (status, y) = lw.create_lane(r#"{"name":"kept","ttl":"2s"}"#);
    assert_eq!(status, 201);
    let (status, text) = lw.api("POST", "/api/v1/lanes/kept/extend", Some(r#"{"ttl":"1h"}"#));
    assert_eq!(status, 200, "{text}");
    let extended = json(&text);
    assert_eq!(extended["ttl"], "1h");
    assert!(extended["expires_at"].as_u64().unwrap() >= y["created_at"].as_u64().unwrap() + 3600);
    assert!(
        eventually(Duration::from_secs(20), || lane(&lw, "short").0 == 404),
        "the lease ended:\n{}",
        lw.log()
    );
    assert!(lw.log().contains("lane lease expired"), "logged");
    assert_eq!(lane(&lw, "kept").0, 200, "extended lane stays");
    // The released VIP (no quarantine) goes to the next lane.
    let (_, next) = lw.create_lane(r#"{"name":"next"}"#);
    assert_eq!(next["entries"]["vip"], "127.0.0.2");
    // Extend without a body renews by the lane's own ttl; a lane without a
    // lease needs one.
    let (status, text) = lw.api("POST", "/api/v1/lanes/kept/extend", None);
    assert_eq!(
        (status, json(&text)["ttl"].clone()),
        (200, Value::from("1h"))
    );
    let (status, msg) = error_of(&lw, "POST", "/api/v1/lanes/next/extend", None);
    assert_eq!(status, 400);
    assert!(msg.contains("no lease to extend"), "{msg}");
    let (status, msg) = error_of(
        &lw,
        "POST",
        "/api/v1/lanes/kept/extend",
        Some(r#"{"ttl":"soon"}"#),
    );
    assert_eq!(status, 400);
    assert!(msg.contains("\"soon\""), "{msg}");
    assert_eq!(
        error_of(&lw, "POST", "/api/v1/lanes/ghost/extend", None).0,
        404
    );
}

#[test]
fn lanes_filter_by_owner_and_labels() {
    let lw = start(r#""127.0.0.2-127.0.0.9""#, 10, "");
    for body in [
        r#"{"name":"a","owner":"ann","labels":{"team":"pay","env":"qa"}}"#,
        r#"{"name":"b","owner":"ann","labels":{"team":"search"}}"#,
        r#"{"name":"c","owner":"bob","labels":{"team":"pay"}}"#,
    ] {
        assert_eq!(lw.create_lane(body).0, 201, "{body}");
    }
    let list = |query: &str| {
        let (status, text) = lw.api("GET", &format!("/api/v1/lanes?{query}"), None);
        assert_eq!(status, 200, "{query}: {text}");
        names(&json(&text))
    };
    assert_eq!(list("owner=ann"), ["a", "b"]);
    assert_eq!(list("label=team=pay"), ["a", "c"]);
    assert_eq!(list("label=team%3Dpay&owner=bob"), ["c"]);
    assert_eq!(list("label=team=pay&label=env=qa"), ["a"]);
    assert_eq!(list("owner=nobody"), Vec::<String>::new());
    assert_eq!(list("auto=false").len(), 4, "baseline included");
    let (status, msg) = error_of(&lw, "GET", "/api/v1/lanes?colour=red", None);
    assert_eq!(status, 400);
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn parallel_distinct_creates_never_share_an_entry() {
    let lw = start(r#""127.0.0.2-127.0.0.254""#, 256, "");
    let admin = lw.admin;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"name":"p-{i}"}}"#);
                admin_call("POST", admin, "/api/v1/lanes", Some(&body))
            })
        })
        .collect();
    let mut vips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for t in threads {
        let (status, text) = t.join().unwrap();
        assert_eq!(status, 201, "{text}");
        let v = json(&text);
        assert!(
            vips.insert(v["entries"]["vip"].to_string()),
            "VIP twice: {v}"
        );
        assert!(
            ports.insert(v["entries"]["port"].to_string()),
            "port twice: {v}"
        );
    }
    assert_eq!((vips.len(), ports.len()), (200, 200));
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(json(&list).as_array().unwrap().len(), 201);
}

#[test]
fn parallel_same_name_creates_make_one_lane() {
    let lw = start(r#""127.0.0.2-127.0.0.254""#, 10, "");
    let admin = lw.admin;
    let threads: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let body = r#"{"name":"same","services":{"web":"v2"}}"#;
                admin_call("POST", admin, "/api/v1/lanes", Some(body))
            })
        })
        .collect();
    let results: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let existing = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, existing), (1, 49), "{results:?}");
    let entries: BTreeSet<String> = results
        .iter()
        .map(|(_, t)| json(t)["entries"].to_string())
        .collect();
    assert_eq!(entries.len(), 1, "everyone got the same entries");
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(names(&json(&list)), ["baseline", "same"]);
}

#[test]
fn acknowledged_creates_survive_sigkill() {
    let mut lw = start(r#""127.1.0.0/16""#, 256, "");
    let admin = lw.admin;
    let acked = Arc::new(Mutex::new(Vec::<Value>::new()));
    let refused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients stream creates until told to stop; only a 201 counts as
    // acknowledged.
    let streams: Vec<_> = (0..4)
        .map(|w| {
            let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let body = format!(r#"{{"name":"k-{w}-{i}","labels":{{"n":"{i}"}}}}"#);
                    let (status, text) = admin_call("POST", admin, "/api/v1/lanes", Some(&body));
                    match status {
                        201 => acked.lock().unwrap().push(json(&text)),
                        0 => refused.store(true, Ordering::SeqCst),
                        _ => {}
                    }
                    i += 1;
                }
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || acked.lock().unwrap().len()
            >= 40),
        "creates were acknowledged"
    );
    lw.kill(); // SIGKILL while the clients are still sending
    assert!(
        eventually(Duration::from_secs(10), || refused.load(Ordering::SeqCst)),
        "the stream was cut by the kill"
    );
    stop.store(true, Ordering::SeqCst);
    for s in streams {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    lw.restart();
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    let list = json(&list);
    let stored = list.as_array().unwrap();
    for want in &acked {
        let name = want["name"].as_str().unwrap();
        let got = stored
            .iter()
            .find(|l| l["name"] == want["name"])
            .unwrap_or_else(|| panic!("acknowledged lane {name} lost"));
        assert_eq!(got["entries"], want["entries"], "{name}");
        assert_eq!(got["labels"], want["labels"], "{name}");
    }
    // Nothing corrupt: entries unique, the store file parses.
    let vips: BTreeSet<String> = stored
        .iter()
        .filter(|l| l["name"] != "baseline")
        .map(|l| l["entries"]["vip"].to_string())
        .collect();
    assert_eq!(vips.len(), stored.len() - 1);
    // The lanes were journaled, not rewritten whole: the base is format 3
    // and every acknowledged create is a record in lanes.journal (or in a
    // base a compaction wrote).
    let base = json(&std::fs::read_to_string(lw.path("data/lanes.json")).unwrap());
    assert_eq!(base["version"], 3, "{base}");
    let journal = std::fs::read_to_string(lw.path("data/lanes.journal")).unwrap_or_default();
    let in_base = base["lanes"].as_array().unwrap().len();
    assert!(
        in_base + journal.lines().count() >= stored.len(),
        "{in_base} lanes in the base, {} journal records, {} lanes",
        journal.lines().count(),
        stored.len()
    );
}

#[test]
fn a_torn_journal_tail_is_dropped_and_a_corrupt_line_is_a_clear_error() {
    let mut lw = start(r#""127.0.0.2-127.0.0.9""#, 10, "");
    assert_eq!(lw.create_lane(r#"{"name":"a"}"#).0, 201);
    lw.kill();
    let journal = lw.path("data/lanes.journal");
    let good = std::fs::read_to_string(&journal).unwrap();
    // A crash in the middle of an append that was never acknowledged.
    write(
        &journal,
        &format!("{good}{{\"seq\":99,\"put\":[{{\"name\":\"b"),
    );
    lw.restart();
    let (_, list) = lw.api("GET", "/api/v1/lanes", None);
    assert_eq!(names(&json(&list)), ["a", "baseline"]);
    assert!(
        lw.log().contains("dropping an unfinished journal record"),
        "{}",
        lw.log()
    );
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), good, "cut off");
    lw.kill();

    // A damaged complete line is corruption: laneway refuses to start.
    write(&journal, &format!("{{\"seq\":1,\"put\":[oops]}}\n{good}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--config"])
        .arg(&lw.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "laneway kept running on a corrupt journal");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lanes.journal is corrupt: line 1") && err.contains("never resets"),
        "{err}"
    );
}

#[test]
fn corrupt_store_at_start_is_a_clear_error() {
    let mut lw = start(r#""127.0.0.2-127.0.0.9""#, 10, "");
    assert_eq!(lw.create_lane(r#"{"name":"a"}"#).0, 201);
    lw.kill();
    let file = lw.path("data/lanes.json");
    let good = std::fs::read_to_string(&file).unwrap();
    let corrupt = &good[..good.len() / 2];
    write(&file, corrupt);
    let mut child = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--config"])
        .arg(&lw.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    eventually(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        panic!("laneway kept running on a corrupt store");
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        err.contains("lanes.json is corrupt") && err.contains("never resets"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        corrupt,
        "left as it was"
    );
}

fn register_in_lane(lw: &Laneway, id: &str, service: &str, version: &str, lane: &str, port: u16) {
    let body = serde_json::json!({
        "ID": id, "Name": service, "Address": "127.0.0.1", "Port": port,
        "Meta": {"version": version, "lane": lane},
    });
    let (status, text) = lw.api("PUT", "/v1/agent/service/register", Some(&body.to_string()));
    assert_eq!(status, 200, "register {id}: {text}");
}

#[test]
fn auto_lanes_follow_registered_instances() {
    let lw = start(
        r#""127.0.0.2-127.0.0.9""#,
        10,
        "auto_lane_grace = \"1s\"\nrelease_quarantine = \"0s\"\n",
    );
    let stable = Upstream::start("web-stable");
    let v2 = Upstream::start("web-v2");
    lw.register("web-1", "web", Some("stable"), stable.port());
    register_in_lane(&lw, "web-2", "web", "v2", "t-auto", v2.port());
    // The lane exists as soon as the registration is acknowledged.
    let (status, auto) = lane(&lw, "t-auto");
    assert_eq!(status, 200, "{auto}");
    assert_eq!(auto["auto"], true);
    assert_eq!(auto["services"]["web"], "v2");
    assert_eq!(auto["entries"]["vip"], "127.0.0.2");
    assert!(auto["entries"]["port"].is_u64());
    let r = lw.get("shop.example.com", "/", &[("X-Laneway-Lane", "t-auto")]);
    assert_eq!(r.upstream(), "web-v2");
    assert_eq!(lw.get("t-auto.lanes.test", "/", &[]).upstream(), "web-v2");
    assert!(lw.log().contains("auto lane created"), "logged");

    lw.deregister("web-2");
    assert!(
        eventually(Duration::from_secs(20), || lane(&lw, "t-auto").0 == 404),
        "released after the grace:\n{}",
        lw.log()
    );
    assert!(lw.log().contains("auto lane released"));
    let r = lw.get("shop.example.com", "/", &[("X-Laneway-Lane", "t-auto")]);
    assert_eq!(r.upstream(), "web-stable", "unknown lane: baseline");
}

#[test]
fn auto_lanes_can_be_switched_off() {
    let lw = start(r#""127.0.0.2-127.0.0.9""#, 10, "auto_lanes = false\n");
    register_in_lane(&lw, "web-2", "web", "v2", "t-auto", free_port());
    assert_eq!(lane(&lw, "t-auto").0, 404);
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .arg("lane")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_creates_lists_shows_extends_and_deletes() {
    let lw = start(r#""127.0.0.2-127.0.0.9""#, 10, "");
    let admin = format!("http://{}", lw.admin);
    let (ok, out, err) = cli(&[
        "create", "t-cli", "-s", "web=v2", "--ttl", "1h", "--owner", "ann", "-l", "team=pay",
        "--admin", &admin,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("vip:          127.0.0.2\n"), "{out}");
    assert!(out.contains("services:     web=v2\n"), "{out}");
    assert!(
        out.contains("hosts line:   127.0.0.2 shop.example.com"),
        "{out}"
    );
    assert!(out.contains("(ttl 1h)"), "{out}");

    let (ok, out, err) = cli(&[
        "create", "t-cli", "-s", "web=v2", "--ttl", "1h", "--owner", "ann", "-l", "team=pay",
        "--admin", &admin, "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["entries"]["vip"], "127.0.0.2", "idempotent");

    assert_eq!(lw.create_lane(r#"{"name":"other","owner":"bob"}"#).0, 201);
    let (ok, out, err) = cli(&["list", "--owner", "ann", "--admin", &admin]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("VIP"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("t-cli ") && lines[1].contains("127.0.0.2"),
        "{out}"
    );
    let (ok, out, _) = cli(&["list", "--json", "-l", "team=pay", "--admin", &admin]);
    assert!(ok);
    assert_eq!(names(&json(&out)), ["t-cli"]);

    let (ok, out, _) = cli(&["show", "t-cli", "--json", "--admin", &admin]);
    assert!(ok);
    let before = json(&out)["expires_at"].as_u64().unwrap();
    let (ok, out, err) = cli(&[
        "extend", "t-cli", "--ttl", "2h", "--json", "--admin", &admin,
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["ttl"], "2h");
    assert!(json(&out)["expires_at"].as_u64().unwrap() >= before + 3600 - 5);

    let (ok, out, err) = cli(&["delete", "t-cli", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("lane t-cli deleted; vip 127.0.0.2 and port"),
        "{out}"
    );
    assert_eq!(lane(&lw, "t-cli").0, 404);

    // API errors carry the API's message; an unreachable admin names its URL.
    let (ok, _, err) = cli(&["show", "t-cli", "--admin", &admin]);
    assert!(!ok);
    assert_eq!(err.trim(), "laneway: lane \"t-cli\" does not exist");
    let (ok, _, err) = cli(&["create", "x", "-s", "web", "--admin", &admin]);
    assert!(
        !ok && err.contains("--service \"web\" must be KEY=VALUE"),
        "{err}"
    );
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = cli(&["list", "--admin", &nobody]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot reach the laneway admin API at {nobody}")),
        "{err}"
    );
}
