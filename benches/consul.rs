//! Consul mode benchmark (plain binary, `harness = false`): the laneway
//! binary against the Consul HTTP API double (`tests/consul_double`), with
//! 2,000 services registered.
//!
//! - **propagation**: time from a Consul registration (the double's write
//!   returning) to the first request laneway serves from the new instance,
//!   p50/p99 over 200 registrations;
//! - **watch load**: requests laneway sends to Consul per minute while the
//!   cluster is idle, and under churn (10 check changes per second).
//!
//! `cargo bench --bench consul` (60 s windows);
//! `LANEWAY_BENCH_WINDOW=10 cargo bench --bench consul` for shorter ones.
//! Under `cargo test --benches` it runs once with 100 services and short
//! windows as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(unused_imports)]
#[path = "../tests/consul_double/mod.rs"]
mod consul_double;

use std::time::{Duration, Instant};

use common::{eventually, Conn, Laneway, Upstream, SIMPLE_ROUTES};
use consul_double::{ConsulDouble, Status};
use serde_json::{json, Value};

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (services, window, registrations) = if bench {
        let window = std::env::var("LANEWAY_BENCH_WINDOW")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(60u64);
        (2000, Duration::from_secs(window), 200)
    } else {
        (100, Duration::from_secs(2), 10)
    };
    let double = ConsulDouble::start();
    let up = Upstream::start("stable");
    let a = Upstream::start("canary-a");
    let b = Upstream::start("canary-b");
    for n in 0..services {
        double.register(json!({
            "ID": format!("svc-{n}-1"), "Name": format!("svc-{n}"), "Address": "127.0.0.1",
            "Port": up.port(), "Meta": {"version": "stable"},
            "Check": {"CheckID": format!("service:svc-{n}-1"), "TTL": "10m", "Status": "passing"},
        }));
    }
    register_web(&double, "web-1", "stable", up.port());
    let started = Instant::now();
    // Consul-mode defaults (wait 5m, concurrency 8, rate 10/s), except the
    // self-registration, which would add its own check traffic.
    let lw = Laneway::start(
        SIMPLE_ROUTES,
        &format!(
            "[discovery]\nmode = \"consul\"\naddress = \"{}\"\nregister_self = false\n",
            double.url()
        ),
    );
    let synced = |lw: &Laneway| -> bool {
        let (_, body) = lw.api("GET", "/api/v1/status", None);
        serde_json::from_str::<Value>(&body).unwrap()["discovery"]["synced"] == json!(true)
    };
    assert!(eventually(Duration::from_secs(120), || synced(&lw)));
    println!(
        "consul: {services} services + web; first sync {:.0} ms after start; {} requests",
        started.elapsed().as_secs_f64() * 1000.0,
        double.total_requests()
    );

    // Propagation: a lane pinned to version "canary"; each round moves the
    // canary instance between two upstreams and waits for the lane to
    // answer from the new one. Spaced 250 ms apart (a busy deploy pipeline),
    // then back to back, where the watches' rate limit sets the pace.
    let (code, _) = lw.create_lane(r#"{"name":"prop","services":{"web":"canary"}}"#);
    assert_eq!(code, 201);
    let mut conn = Conn::open(lw.proxy).expect("connect");
    for (label, gap) in [
        ("one every 250 ms", Duration::from_millis(250)),
        ("back to back", Duration::ZERO),
    ] {
        let mut times = Vec::with_capacity(registrations);
        let mut call_times = Vec::with_capacity(registrations);
        for i in 0..registrations {
            std::thread::sleep(gap);
            let (target, name) = if i % 2 == 0 {
                (&a, "canary-a")
            } else {
                (&b, "canary-b")
            };
            let t_call = Instant::now();
            register_web(&double, "web-canary", "canary", target.port());
            let t0 = Instant::now();
            call_times.push(t0 - t_call);
            loop {
                let r = conn
                    .request(
                        "GET",
                        "/",
                        &[("Host", "shop.example.com"), ("X-Laneway-Lane", "prop")],
                        b"",
                    )
                    .expect("request");
                if r.status == 200 && r.upstream() == name {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "registration {i} not served"
                );
                // Poll every 0.5 ms rather than flat out, so the poller does
                // not take the CPU laneway and the double need.
                std::thread::sleep(Duration::from_micros(500));
            }
            times.push(t0.elapsed());
        }
        times.sort();
        let pct =
            |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "propagation (Consul registration returned -> first routed request), {} registrations {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            times.len(),
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
        call_times.sort();
        println!(
            "  (the double's register call itself: p50 {:.2} ms)",
            call_times[call_times.len() / 2].as_secs_f64() * 1000.0
        );
    }

    // Idle: what the watches cost when nothing changes.
    let per_minute = |n: usize| n as f64 * 60.0 / window.as_secs_f64();
    let t0 = Instant::now();
    let before = double.total_requests();
    std::thread::sleep(window);
    let idle = double.total_requests() - before;
    println!(
        "watch load idle: {idle} requests in {:.0} s = {:.1}/min",
        t0.elapsed().as_secs_f64(),
        per_minute(idle)
    );

    // Churn: 10 check changes per second on random services.
    let before = double.total_requests();
    let fetch_before = double.requests_with_prefix("/v1/health/service/");
    let t0 = Instant::now();
    let mut changes = 0;
    let mut next = Instant::now();
    while t0.elapsed() < window {
        let n = fastrand::usize(0..services);
        let status = if changes % 2 == 0 {
            Status::Warning
        } else {
            Status::Passing
        };
        double.set_check_status(&format!("service:svc-{n}-1"), status);
        changes += 1;
        next += Duration::from_millis(100);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let churn = double.total_requests() - before;
    let fetches = double.requests_with_prefix("/v1/health/service/") - fetch_before;
    println!(
        "watch load under churn ({changes} check changes in {:.0} s): {churn} requests = {:.1}/min ({fetches} service fetches)",
        t0.elapsed().as_secs_f64(),
        per_minute(churn)
    );
    println!("peak connections to Consul: {}", double.peak_connections());
}

fn register_web(double: &ConsulDouble, id: &str, version: &str, port: u16) {
    double.register(json!({
        "ID": id, "Name": "web", "Address": "127.0.0.1", "Port": port,
        "Meta": {"version": version},
        "Check": {"CheckID": format!("service:{id}"), "TTL": "10m", "Status": "passing"},
    }));
}
