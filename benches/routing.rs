//! Micro-benchmarks of the request path and of the snapshot compiler on a
//! large production-like table (see `common/table.rs`): 2,000 server names,
//! 5,000 locations, 2,000 services × 20 versions × 5 instances, 1,000 lanes.
//!
//! Snapshot builds go through `UpstreamHealth::prepare` and the instances'
//! health states, as laneway's compiler runs them; a cold build starts from
//! fresh metric families and states.
//!
//! `cargo bench --bench routing` (all), `cargo bench --bench routing -- rules/`
//! (a group). Figures and the machine they were taken on: `benches/README.md`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};

use laneway::config::HealthChecksConfig;
use laneway::discovery::Catalog;
use laneway::routing::lanes::{self, LaneSettings};
use laneway::routing::rules::{Decision, RequestInfo, RuleSet};
use laneway::routing::snapshot::{BuildInput, Snapshot};
use laneway::telemetry::Metrics;
use laneway::upstream_health::UpstreamHealth;

#[allow(dead_code)]
#[path = "common/table.rs"]
mod table;

/// The laneway binary's allocator (`src/main.rs`): lookups allocate what a
/// decision carries, so the allocator is part of what they cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use table::{LocKind, NameKind, Shape};

struct Fixture {
    shape: Shape,
    source: String,
    rules: Arc<RuleSet>,
    catalog: Catalog,
    lanes: Vec<laneway::allocation::lanes::Lane>,
    plane: Plane,
    snapshot: Snapshot,
    settings: LaneSettings,
}

/// What a laneway process keeps between builds: metric families and the
/// instances' health states (fresh ones for a cold build).
struct Plane {
    metrics: Arc<Metrics>,
    health: Arc<UpstreamHealth>,
}

impl Plane {
    fn new() -> Plane {
        let metrics = Arc::new(Metrics::new());
        let health = UpstreamHealth::new(HealthChecksConfig::default(), metrics.clone());
        Plane { metrics, health }
    }

    /// A build as the compiler runs it: `UpstreamHealth::prepare`, then
    /// `Snapshot::build` with the states.
    fn build(
        &self,
        rules: &Arc<RuleSet>,
        lanes: &[laneway::allocation::lanes::Lane],
        catalog: &Catalog,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let prepared = self.health.prepare(catalog.clone());
        Snapshot::build(BuildInput {
            generation: 2,
            rules: rules.clone(),
            lanes,
            catalog: &prepared.catalog,
            baseline_versions: baseline_versions(),
            metrics: &self.metrics,
            previous,
            states: Some(&prepared.states),
        })
    }
}

/// `[lanes] baseline_versions`, as configured by default.
fn baseline_versions() -> &'static [String] {
    static V: std::sync::OnceLock<[String; 1]> = std::sync::OnceLock::new();
    V.get_or_init(|| ["stable".to_string()])
}

fn fixture() -> Fixture {
    let shape = Shape::or_smoke(Shape::large());
    let source = table::routes_toml(&shape);
    let rules = Arc::new(RuleSet::compile(&source, Path::new("routes.toml")).expect("valid rules"));
    let catalog = Catalog {
        instances: table::instances(&shape).into_iter().map(Arc::new).collect(),
    };
    let lanes = table::lanes(&shape);
    let plane = Plane::new();
    let snapshot = plane.build(&rules, &lanes, &catalog, None);
    Fixture {
        shape,
        source,
        rules,
        catalog,
        lanes,
        plane,
        snapshot,
        settings: LaneSettings {
            header: HeaderName::from_static("x-laneway-lane"),
            cookie: "laneway_lane".into(),
            cookie_max_age: std::time::Duration::from_secs(3600),
            baggage_key: "laneway-lane".into(),
            domain: "lanes.test".into(),
            vip_pool: None,
            port_pool: None,
        },
    }
}

/// What a decision is, to check each benchmark measures the case it names.
fn kind(d: &Decision<'_>) -> String {
    match d {
        Decision::Proxy { location, .. } => format!("proxy {}", location.pattern),
        Decision::Return { location, .. } => format!("return {}", location.pattern),
        Decision::Redirect { location, .. } => format!("redirect {}", location.pattern),
        Decision::NotFound { .. } => "404".into(),
        Decision::BadRequest(e) => format!("400 {e}"),
    }
}

fn bench_rules(c: &mut Criterion, f: &Fixture) {
    let headers = HeaderMap::new();
    let route = |host: &str, target: &str| {
        let info = RequestInfo {
            host,
            target,
            scheme: "http",
            lane: "baseline",
            headers: &headers,
            port: 0,
            upstream_statuses: &[],
        };
        (
            host.to_string(),
            target.to_string(),
            kind(&f.rules.route(&info)),
        )
    };

    // Host kinds, each on a small server, path through its "/" prefix.
    let mut cases = Vec::new();
    for (label, k) in [
        ("host_exact", NameKind::Exact),
        ("host_leading_wildcard", NameKind::Leading),
        ("host_trailing_wildcard", NameKind::Trailing),
        ("host_regex", NameKind::Regex),
    ] {
        let (_, n) = table::server_with(&f.shape, k, false);
        cases.push((label, route(&table::host_for(n), "/home/index.html?a=1")));
    }
    // The last regex server name: the worst case for the regex scan.
    let last_regex = (0..2 * f.shape.servers)
        .rev()
        .find(|&n| table::name_kind(n) == NameKind::Regex)
        .expect("regex names");
    cases.push((
        "host_regex_last",
        route(&table::host_for(last_regex), "/home/index.html"),
    ));
    // Location kinds on a big server reached by its exact name.
    let big = f.shape.servers / f.shape.big_servers;
    let big_host = table::host_for(2 * big);
    for (label, want) in [
        ("location_exact", LocKind::Exact),
        ("location_prefix", LocKind::Prefix),
        ("location_noregex", LocKind::NoRegex),
        ("location_regex", LocKind::Regex),
        ("location_regex_caseless", LocKind::RegexCaseless),
    ] {
        // the last location of that kind: the most regexes to try first
        let k = (0..f.shape.big_locations)
            .rev()
            .find(|&k| table::loc_kind(k) == want && k % 20 != 0 && k % 5 != 2)
            .expect("kind present");
        cases.push((label, route(&big_host, &table::path_for(big, k))));
    }
    let k = (0..f.shape.big_locations)
        .rev()
        .find(|&k| table::loc_kind(k) == LocKind::Prefix && k % 5 == 2)
        .expect("a rewrite");
    cases.push((
        "location_prefix_rewrite",
        route(&big_host, &table::path_for(big, k)),
    ));
    cases.push((
        "location_small_regex",
        route(&table::host_for(2), "/assets/app.css"),
    ));
    cases.push(("miss_404", route("unknown.invalid", "/zzz/none")));

    let mut g = c.benchmark_group("rules");
    for (label, (host, target, what)) in &cases {
        eprintln!("rules/{label}: {host}{target} -> {what}");
        g.bench_function(*label, |b| {
            b.iter(|| {
                let info = RequestInfo {
                    host: black_box(host),
                    target: black_box(target),
                    scheme: "http",
                    lane: "baseline",
                    headers: &headers,
                    port: 0,
                    upstream_statuses: &[],
                };
                let d = f.rules.route(&info);
                black_box(&d);
            })
        });
    }
    g.finish();
}

fn bench_targets(c: &mut Criterion, f: &Fixture) {
    let s = &f.snapshot;
    // lane 2 has lane 1 as parent; lane 3 has lane 2.
    let own = table::lane_services(&f.shape, 3);
    let parent = table::lane_services(&f.shape, 2);
    let own_svc = own.keys().next().expect("overrides").clone();
    let inherited = parent
        .keys()
        .find(|k| !own.contains_key(*k))
        .expect("parent overrides another service")
        .clone();
    // a service no lane of the chain t-0003 → t-0002 → t-0001 overrides
    let baseline_svc = (0..f.shape.services)
        .map(table::service)
        .find(|s| (1..=3).all(|i| !table::lane_services(&f.shape, i).contains_key(s)))
        .expect("a service only the baseline serves");
    let lane = s.lane(&table::lane_name(3)).expect("lane").clone();
    let mut g = c.benchmark_group("snapshot_target");
    for (label, svc) in [
        ("override", own_svc),
        ("inherited", inherited),
        ("baseline", baseline_svc),
    ] {
        let t = s.target(&lane, &svc).expect("known service");
        eprintln!(
            "snapshot_target/{label}: {svc} -> {} ({})",
            t.version,
            t.choice.as_str()
        );
        g.bench_function(label, |b| {
            b.iter(|| {
                let t = s.target(black_box(&lane), black_box(&svc));
                black_box(t);
            })
        });
    }
    g.finish();
}

/// lanes::resolve + RuleSet::route + Snapshot::target + Pool::pick, as the
/// proxy runs them for one request.
fn bench_request_path(c: &mut Criterion, f: &Fixture) {
    let s = &f.snapshot;
    let big = f.shape.servers / f.shape.big_servers;
    let prefix_k = (0..f.shape.big_locations)
        .rev()
        .find(|&k| table::loc_kind(k) == LocKind::Prefix && k % 5 != 2)
        .expect("prefix");
    let (_, regex_name) = table::server_with(&f.shape, NameKind::Regex, false);
    let lane_header = |lane: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            "x-laneway-lane",
            HeaderValue::from_str(lane).expect("ascii"),
        );
        h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h
    };
    let cases = [
        (
            "header_lane_exact_host_prefix",
            lane_header("t-0003"),
            table::host_for(2 * big),
            table::path_for(big, prefix_k),
        ),
        (
            "hostname_lane_regex_host",
            lane_header("nope"),
            format!("{}.t-0003.lanes.test", table::host_for(regex_name)),
            "/home/index.html".to_string(),
        ),
        (
            "baseline_exact_host_exact_location",
            HeaderMap::new(),
            table::host_for(2 * big),
            table::path_for(big, 1),
        ),
    ];
    let mut g = c.benchmark_group("request_path");
    for (label, headers, host, target) in &cases {
        let one = || {
            let r = lanes::resolve(s, &f.settings, headers, host, None);
            let info = RequestInfo {
                host: r.host,
                target,
                scheme: "http",
                lane: &r.lane.name,
                headers,
                port: 0,
                upstream_statuses: &[],
            };
            match f.rules.route(&info) {
                Decision::Proxy { service, .. } => {
                    let t = s.target(r.lane, service)?;
                    let pool = t.pool.as_ref().ok()?;
                    let i = pool.pick(|_| false)?;
                    Some(pool.instances[i].addr)
                }
                _ => None,
            }
        };
        eprintln!("request_path/{label}: {host}{target} -> {:?}", one());
        assert!(one().is_some(), "{label} reaches an instance");
        g.bench_function(*label, |b| b.iter(|| black_box(one())));
    }
    g.finish();
}

/// `plan::decide`, the whole per-request decision both engines make (lane,
/// unknown-lane check, rule, target, plan with its response rewriting):
/// a plain request naming no lane, and one entering a lane by hostname.
fn bench_decide(c: &mut Criterion, f: &Fixture) {
    use laneway::proxy::plan::{self, Incoming};
    let settings = laneway::proxy::ProxySettings {
        lanes: f.settings.clone(),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(60),
        connect_retries: 1,
        read_retries: 1,
        response_headers: true,
        client_keepalive: Duration::from_secs(60),
        upstream_keepalive: 64,
        health_path: "/__laneway/health".into(),
        health: Arc::new(laneway::health::InstanceHealth::new()),
        max_body_size: None,
        services: Arc::new(Default::default()),
        listen_ports: Arc::new(Default::default()),
        header_timeout: Duration::from_secs(10),
        max_connections: 8192,
        max_hops: 8,
        instance_id: Arc::from("bench"),
    };
    let s = &f.snapshot;
    let big = f.shape.servers / f.shape.big_servers;
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let plain_host = table::host_for(2 * big);
    let lane_host = format!("{}.t-0003.lanes.test:8080", table::host_for(2 * big));
    let target = table::path_for(big, 1);
    let mut g = c.benchmark_group("decide");
    for (label, host) in [("plain", &plain_host), ("hostname_lane", &lane_host)] {
        let one = || {
            let d = plan::decide(
                s,
                &settings,
                &Incoming {
                    host,
                    target: &target,
                    scheme: "http",
                    headers: &headers,
                    dst: None,
                    port: 80,
                    upstream_statuses: &[],
                },
            );
            d.action.is_ok()
        };
        assert!(one(), "decide/{label} is proxied");
        g.bench_function(label, |b| b.iter(|| black_box(one())));
    }
    g.finish();
}

fn bench_compile(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("rules_compile", |b| {
        b.iter_with_large_drop(|| RuleSet::compile(black_box(&f.source), Path::new("routes.toml")))
    });
    g.bench_function("snapshot_build_cold", |b| {
        b.iter_batched(
            Plane::new,
            |plane| {
                let snapshot = plane.build(&f.rules, &f.lanes, &f.catalog, None);
                (snapshot, plane)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("snapshot_build_previous", |b| {
        b.iter(|| {
            f.plane
                .build(&f.rules, &f.lanes, &f.catalog, Some(&f.snapshot))
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let started = std::time::Instant::now();
    let f = fixture();
    eprintln!(
        "table: {} servers, {} locations, {} instances, {} lanes; built in {:?}",
        f.rules.servers().len(),
        f.rules
            .servers()
            .iter()
            .map(|s| s.locations.len())
            .sum::<usize>(),
        f.catalog.len(),
        f.lanes.len(),
        started.elapsed()
    );
    bench_rules(c, &f);
    bench_targets(c, &f);
    bench_request_path(c, &f);
    bench_decide(c, &f);
    bench_compile(c, &f);
}

criterion_group! {
    name = routing;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(routing);
