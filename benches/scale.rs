//! Scale benchmark (plain binary, `harness = false`): memory and build times
//! of the large table, and what one registration costs at 10,000 instances
//! and 1,000 lanes, applied as laneway applies it: `Registry::register`
//! (persisted with fsync) then `Registry::catalog`, `UpstreamHealth::prepare`
//! and one `Snapshot::build` with `previous` set. Every build goes through
//! the instances' health states as the compiler's does; a cold build starts
//! from fresh metric families and states, as at process start.
//!
//! `cargo bench --bench scale` runs every scenario, each in a child process
//! of its own so that its peak RSS (VmHWM) is its own;
//! `cargo bench --bench scale -- registry` runs one (`large`, `registry`).
//! The registry lives in a temporary directory under `$LANEWAY_BENCH_DIR`
//! (default: the system temp dir); put it on the disk a real data dir uses.
// The allocation-counting `GlobalAlloc` below can only be written with
// `unsafe` (the trait and its methods are unsafe); laneway itself denies it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use laneway::config::HealthChecksConfig;
use laneway::discovery::registry::{Registry, FILE_NAME, JOURNAL_NAME};
use laneway::discovery::{Catalog, Instance};
use laneway::routing::rules::RuleSet;
use laneway::routing::snapshot::{BuildInput, Snapshot};
use laneway::telemetry::Metrics;
use laneway::upstream_health::UpstreamHealth;

#[allow(dead_code)]
#[path = "common/table.rs"]
mod table;

use table::Shape;

/// Counts live heap bytes, allocating with mimalloc as the laneway binary
/// does (`src/main.rs`), so that RSS is the binary's. Each thread counts in
/// a slot of its own cache line: with one shared counter, the threads of a
/// cold build (which allocate at once) would contend on it and slow down
/// the very builds this benchmark times. The peak is the process's VmHWM.
struct Counting;

static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[repr(align(64))]
struct Slot(AtomicIsize);

const SLOTS: usize = 64;
static LIVE: [Slot; SLOTS] = [const { Slot(AtomicIsize::new(0)) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's counter (threads beyond `SLOTS` share one, still exact).
fn slot() -> &'static AtomicIsize {
    let i = MY_SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS);
        }
        s.get()
    });
    &LIVE[i].0
}

/// Live heap bytes: the sum of every thread's count.
fn live() -> usize {
    let sum: isize = LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
    sum.max(0) as usize
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = INNER.alloc(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        INNER.dealloc(ptr, layout);
        add(-(layout.size() as isize));
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = INNER.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = INNER.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

fn add(n: isize) {
    slot().fetch_add(n, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory(label: &str) {
    let (rss, hwm) = rss();
    println!(
        "  memory {label}: heap live {}, RSS {}, peak RSS (VmHWM) {}",
        mib(live()),
        mib(rss),
        mib(hwm)
    );
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// p50 / p95 / max of a list of durations.
fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {}  p95 {}  max {}  (n={})",
        ms(at(0.5)),
        ms(at(0.95)),
        ms(at(1.0)),
        v.len()
    )
}

/// What a laneway process keeps from one build to the next: its metric
/// families and its instances' health states. A fresh one for a cold build.
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

    /// One build as laneway's compiler runs it (`control.rs`): the catalog
    /// through `UpstreamHealth::prepare` (health states made or found, held
    /// out instances marked), then `Snapshot::build` with those states.
    fn build(
        &self,
        rules: &Arc<RuleSet>,
        lanes: &[laneway::allocation::lanes::Lane],
        catalog: &Catalog,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let started = Instant::now();
        let prepared = self.health.prepare(catalog.clone());
        if std::env::var_os("SCALE_SPLIT").is_some() {
            eprintln!("    prepare: {}", ms(started.elapsed()));
        }
        Snapshot::build(BuildInput {
            generation: 1,
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

/// The large table: rules compile, catalog, snapshot build, memory.
fn large() {
    let shape = Shape::or_smoke(Shape::large());
    run_table("large", &shape, true);
}

fn run_table(
    label: &str,
    shape: &Shape,
    with_catalog: bool,
) -> (Arc<RuleSet>, Vec<laneway::allocation::lanes::Lane>) {
    println!(
        "scenario {label}: {} servers, {} instances, {} lanes",
        shape.servers,
        shape.instances(),
        shape.lanes
    );
    memory("at start");
    let source = table::routes_toml(shape);
    let before = live();
    let (rules, t) = timed(|| RuleSet::compile(&source, Path::new("routes.toml")).expect("valid"));
    let locations: usize = rules.servers().iter().map(|s| s.locations.len()).sum();
    println!(
        "  RuleSet::compile ({} servers, {locations} locations, {} KiB of TOML): {}, heap held {}",
        rules.servers().len(),
        source.len() / 1024,
        ms(t),
        mib(live() - before)
    );
    drop(source);
    let rules = Arc::new(rules);
    let lanes = table::lanes(shape);
    if with_catalog {
        let before = live();
        let catalog = Catalog {
            instances: table::instances(shape).into_iter().map(Arc::new).collect(),
        };
        println!(
            "  catalog of {} instances: heap held {}",
            catalog.len(),
            mib(live() - before)
        );
        let plane = Plane::new();
        let before = live();
        let (snap, cold) = timed(|| plane.build(&rules, &lanes, &catalog, None));
        println!(
            "  Snapshot::build cold: {}, heap held by snapshot + metric children {}",
            ms(cold),
            mib(live() - before)
        );
        // More cold builds, each with fresh metric families and health
        // states: the first one in the process also pays for memory the
        // process never touched.
        let mut again = Vec::new();
        for _ in 0..4 {
            let fresh = Plane::new();
            let (s, t) = timed(|| fresh.build(&rules, &lanes, &catalog, None));
            drop(s);
            again.push(t);
        }
        println!("  Snapshot::build cold, again: {}", summary(again));
        let mut warm = Vec::new();
        for _ in 0..5 {
            let (s, t) = timed(|| plane.build(&rules, &lanes, &catalog, Some(&snap)));
            drop(s);
            warm.push(t);
        }
        println!(
            "  Snapshot::build, previous set, nothing changed: {}",
            summary(warm)
        );
        memory("with rules + catalog + snapshot");
    }
    (rules, lanes)
}

/// 10,000 instances, 1,000 lanes, the large rules: registry open, builds,
/// one registration applied as laneway applies it.
fn registry() {
    let shape = Shape::or_smoke(Shape::scale());
    let (rules, lanes) = run_table("registry", &shape, false);
    let base = std::env::var_os("LANEWAY_BENCH_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    seed(dir.path(), &table::instances(&shape));
    let size = std::fs::metadata(dir.path().join(FILE_NAME)).map_or(0, |m| m.len());
    println!(
        "  data dir {} ({} KiB registry file)",
        dir.path().display(),
        size / 1024
    );

    let (mut reg, t) = timed(|| Registry::open(dir.path()).expect("open"));
    println!("  Registry::open ({} instances): {}", reg.len(), ms(t));
    let plane = Plane::new();
    let catalog = reg.catalog();
    let (mut snap, cold) = timed(|| plane.build(&rules, &lanes, &catalog, None));
    println!("  Snapshot::build cold: {}", ms(cold));
    let mut warm = Vec::new();
    for _ in 0..10 {
        let (s, t) = timed(|| plane.build(&rules, &lanes, &catalog, Some(&snap)));
        drop(s);
        warm.push(t);
    }
    println!(
        "  Snapshot::build, previous set, nothing changed: {}",
        summary(warm)
    );
    drop(catalog);
    memory("after open + first build");

    // Registrations: new instances of a new version (a deploy), then
    // re-registrations that move an existing instance (a restart on a new
    // port), then deregistrations. Each applied as laneway does.
    let mut register = Vec::new();
    let mut rebuild = Vec::new();
    let mut total = Vec::new();
    let n = 200;
    for i in 0..n {
        let (body, port) = if i % 2 == 0 {
            // a new instance of version v7 of some service
            (table::register_body((i * 13) % shape.services, 7, i), None)
        } else {
            // an existing instance back on another port
            let svc = (i * 17) % shape.services;
            (table::register_body(svc, 1, 0), Some(1000 + i as u16))
        };
        let started = Instant::now();
        let mut inst: Instance = table::parse(&body);
        if let Some(p) = port {
            inst.port = p;
        }
        let changed = reg.register(inst).expect("register");
        assert!(changed, "registration {i} changes the registry");
        let registered = started.elapsed();
        let catalog = reg.catalog();
        let (next, built) = timed(|| plane.build(&rules, &lanes, &catalog, Some(&snap)));
        snap = next;
        register.push(registered);
        rebuild.push(built);
        total.push(started.elapsed());
    }
    println!(
        "  one registration, Registry::register (parse + persist): {}",
        summary(register)
    );
    println!(
        "  one registration, catalog + Snapshot::build (previous set): {}",
        summary(rebuild)
    );
    println!("  one registration applied, total: {}", summary(total));

    let mut dereg = Vec::new();
    for i in (0..n).step_by(2) {
        let id = table::instance_id((i * 13) % shape.services, 7, i);
        let started = Instant::now();
        assert!(reg.deregister(&id).expect("deregister"));
        let catalog = reg.catalog();
        snap = plane.build(&rules, &lanes, &catalog, Some(&snap));
        dereg.push(started.elapsed());
    }
    println!("  one deregistration applied, total: {}", summary(dereg));

    // Re-registrations alone (no snapshot build) until the registry folds
    // its journal into a new base: the cost of that one registration.
    let journal = dir.path().join(JOURNAL_NAME);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut plain = Vec::new();
    let mut compacting = None;
    for i in 0..50_000u32 {
        let mut inst = table::parse(&table::register_body(0, 0, 0));
        inst.port = 1 + (i % 60_000) as u16;
        let before = size(&journal);
        let (changed, t) = timed(|| reg.register(inst).expect("register"));
        assert!(changed);
        if size(&journal) < before {
            compacting = Some((i + 1, t));
            break;
        }
        plain.push(t);
    }
    match compacting {
        Some((n, t)) => println!(
            "  Registry::register that compacts (after {n} more changes): {}; the others: {}",
            ms(t),
            summary(plain)
        ),
        None => println!("  no compaction within {} changes", plain.len()),
    }
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{} ({} KiB)", e.file_name().to_string_lossy(), len / 1024)
                })
                .collect()
        })
        .unwrap_or_default();
    println!("  data dir now holds: {}", files.join(", "));
    let (reopened, t) = timed(|| Registry::open(dir.path()).expect("reopen"));
    assert_eq!(reopened.catalog().instances, reg.catalog().instances);
    println!(
        "  Registry::open after the changes ({} instances): {}",
        reopened.len(),
        ms(t)
    );
    memory("at end");
    drop(snap);
}

/// Writes a registry file holding `instances` in the stored format, as a
/// registry that took them one by one would have left it.
fn seed(dir: &Path, instances: &[Instance]) {
    let mut out = String::from("{\"version\":1,\"instances\":[");
    for (n, inst) in instances.iter().enumerate() {
        out.push_str(if n == 0 { "\n" } else { ",\n" });
        out.push_str(&serde_json::to_string(inst).expect("encode"));
    }
    out.push_str("\n]}\n");
    std::fs::write(dir.join(FILE_NAME), out).expect("seed the registry file");
}

/// `RuleSet::compile` of the large rules, repeated (a target for a profiler).
fn rules() {
    let shape = Shape::or_smoke(Shape::large());
    let source = table::routes_toml(&shape);
    println!(
        "scenario rules: RuleSet::compile of {} KiB of TOML",
        source.len() / 1024
    );
    let mut times = Vec::new();
    for _ in 0..10 {
        let (rules, t) =
            timed(|| RuleSet::compile(&source, Path::new("routes.toml")).expect("valid"));
        drop(rules);
        times.push(t);
    }
    println!("  RuleSet::compile: {}", summary(times));
    memory("at end");
}

/// Snapshot::build at 10,000 instances, each after one changed instance,
/// without the registry (a target for a profiler; not run by default).
fn builds() {
    let shape = Shape::or_smoke(Shape::scale());
    let source = table::routes_toml(&shape);
    let rules = Arc::new(RuleSet::compile(&source, Path::new("routes.toml")).expect("valid"));
    let lanes = table::lanes(&shape);
    let mut instances: Vec<Arc<Instance>> =
        table::instances(&shape).into_iter().map(Arc::new).collect();
    let plane = Plane::new();
    let catalog = Catalog {
        instances: instances.clone(),
    };
    let mut snap = plane.build(&rules, &lanes, &catalog, None);
    let mut times = Vec::new();
    for i in 0..500 {
        let at = (i * 7919) % instances.len();
        let mut changed = Instance::clone(&instances[at]);
        changed.port = 1000 + (i % 5000) as u16;
        instances[at] = Arc::new(changed);
        let catalog = Catalog {
            instances: instances.clone(),
        };
        let (next, t) = timed(|| plane.build(&rules, &lanes, &catalog, Some(&snap)));
        snap = next;
        times.push(t);
    }
    println!(
        "scenario builds: Snapshot::build after one changed instance: {}",
        summary(times)
    );
}

const SCENARIOS: [(&str, fn()); 3] = [("rules", rules), ("large", large), ("registry", registry)];
const HIDDEN: [(&str, fn()); 1] = [("builds", builds)];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(at + 1).map(String::as_str).unwrap_or("");
        match SCENARIOS.iter().chain(&HIDDEN).find(|(n, _)| *n == name) {
            Some((_, run)) => run(),
            None => eprintln!("unknown scenario {name:?}"),
        }
        return;
    }
    // `cargo bench` passes `--bench`; any other word filters scenarios.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let exe = std::env::current_exe().expect("own path");
    println!(
        "laneway scale benchmark ({} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, _) in SCENARIOS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let status = std::process::Command::new(&exe)
            .args(["--scenario", name])
            .args(args.iter().filter(|a| *a == "--bench"))
            .status()
            .expect("run scenario");
        assert!(status.success(), "scenario {name} failed");
    }
}
