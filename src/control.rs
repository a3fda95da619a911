//! The control plane: owns the durable stores (embedded registry, lane
//! store) and the current route rules, and is the one writer of the
//! `ArcSwap<Snapshot>`. Every change bumps a wanted generation and wakes the
//! compiler task, which coalesces bursts into one build. Callers that need
//! read-your-writes await [`Control::wait_built`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Mutex, Notify};
use tracing::{debug, error, info, warn};

use crate::allocation::auto::AutoLanes;
use crate::allocation::consul_kv::{CasOutcome, KvLanes};
use crate::allocation::lanes::{LaneError, LaneStore};
use crate::allocation::pools::{unix_now_ms, Pools};
use crate::allocation::StoreError;
use crate::config::StartUnreachable;
use crate::config::{Config, ConfigError};
use crate::discovery::consul::client::ConsulError;
use crate::discovery::consul::farm::SelfRegistration;
use crate::discovery::consul::ConsulDiscovery;
use crate::discovery::registry::Registry;
use crate::discovery::{Catalog, Health, Instance};
use crate::health::InstanceHealth;
use crate::routing::rules::RuleSet;
use crate::routing::snapshot::{BuildInput, Snapshot};
use crate::telemetry::Metrics;
use crate::upstream_health::UpstreamHealth;

/// Shared state of the control plane.
pub struct Control {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub registry: Mutex<Registry>,
    pub lanes: Mutex<LaneStore>,
    /// Auto-lane bookkeeping (which auto lanes lost their instances, when).
    auto: StdMutex<AutoLanes>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    rules: ArcSwap<RuleSet>,
    /// The errors of the last rejected rules reload, until a good one.
    rules_errors: StdMutex<Vec<ConfigError>>,
    /// Every file the rules were read from (an nginx configuration and its
    /// includes, or the rules file), as of the last load attempt.
    rules_files: StdMutex<Vec<PathBuf>>,
    wanted: AtomicU64,
    built: watch::Sender<u64>,
    wake: Notify,
    /// Ready / maintenance / draining, as LVS health checks see it.
    pub health: Arc<InstanceHealth>,
    /// Consul mode: the source of instances.
    pub consul: Option<Arc<ConsulDiscovery>>,
    /// Consul mode: the lane store shared through Consul KV.
    kv: Option<KvLanes>,
    /// Consul mode: this instance's own registration.
    self_registration: Option<SelfRegistration>,
    /// Instances' health as laneway's own checks and ejections see it.
    pub upstream_health: Arc<UpstreamHealth>,
    /// Every change made through the admin API or seen from Consul, with
    /// who made it (`/api/v1/audit`, target `laneway::audit`).
    pub audit: crate::telemetry::audit::Audit,
    /// Consul mode: the catalog as last audited (id → instance), so that
    /// the audit log records what changed in Consul.
    consul_view: StdMutex<Option<Catalog>>,
}

/// Attempts at a lane change before giving up when other laneway
/// instances keep winning the check-and-set race.
const CAS_ATTEMPTS: usize = 16;

/// Why laneway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("route rules are invalid:\n{}", crate::config::ConfigErrors(.0.clone()))]
    Rules(Vec<ConfigError>),
    #[error("{0}")]
    Consul(#[from] ConsulError),
}

impl Control {
    /// Opens the stores under `data_dir` and loads the rules. A corrupt store
    /// or invalid rules at start is an error, never a silent reset.
    pub fn open(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Control>, StartError> {
        std::fs::create_dir_all(&config.store.data_dir).map_err(|e| StoreError::Io {
            path: config.store.data_dir.clone(),
            source: e,
        })?;
        let registry = Registry::open(&config.store.data_dir)?;
        let lanes = LaneStore::open(&config.store.data_dir, Pools::from_config(&config.lanes))?;
        let (rules, files) =
            load_rules(&config.routes).map_err(|(errors, _)| StartError::Rules(errors))?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty(&metrics)));
        let (built, _) = watch::channel(0);
        let consul = match &config.discovery.consul {
            Some(_) => Some(ConsulDiscovery::open(&config, &metrics)?),
            None => None,
        };
        let kv = consul
            .as_ref()
            .map(|d| KvLanes::new(d.client.clone(), &d.cfg.kv_prefix));
        let self_registration = SelfRegistration::new(&config);
        let upstream_health = UpstreamHealth::new(config.health_checks.clone(), metrics.clone());
        let control = Arc::new(Control {
            upstream_health,
            audit: crate::telemetry::audit::Audit::new(),
            consul_view: StdMutex::new(None),
            config,
            metrics,
            registry: Mutex::new(registry),
            lanes: Mutex::new(lanes),
            auto: StdMutex::new(AutoLanes::default()),
            snapshot,
            rules: ArcSwap::from_pointee(rules),
            rules_errors: StdMutex::new(Vec::new()),
            rules_files: StdMutex::new(files),
            wanted: AtomicU64::new(1),
            built,
            wake: Notify::new(),
            health: Arc::new(InstanceHealth::new()),
            consul,
            kv,
            self_registration,
        });
        Ok(control)
    }

    /// The handle the data plane loads snapshots from.
    pub fn snapshot_handle(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Records that state changed; returns the generation that will include
    /// the change.
    pub fn changed(&self) -> u64 {
        let generation = self.wanted.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        generation
    }

    /// Waits until a snapshot of at least `generation` serves, or `timeout`.
    pub async fn wait_built(&self, generation: u64, timeout: Duration) -> bool {
        let mut rx = self.built.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&g| g >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// True once the first snapshot has been built.
    pub fn ready(&self) -> bool {
        *self.built.borrow() >= 1
    }

    /// The errors of the last rejected rules reload (empty when the current
    /// file is the one serving).
    pub fn rules_errors(&self) -> Vec<ConfigError> {
        self.rules_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Builds one snapshot from the current state and swaps it in.
    async fn build_once(&self) {
        let generation = self.wanted.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut discovered = self.catalog().await;
        if self.consul.is_some() {
            self.audit_consul_view(&discovered);
        }
        let rules = self.rules.load_full();
        add_static_instances(&mut discovered, &rules);
        // by discovery's verdict, before laneway's own health is applied
        let mut by_health = [0i64; 3];
        for i in &discovered.instances {
            by_health[match i.health {
                Health::Passing => 0,
                Health::Warning => 1,
                Health::Critical => 2,
            }] += 1;
        }
        let prepared = self.upstream_health.prepare(discovered);
        let lanes = self.lanes.lock().await.list();
        let previous = self.snapshot.load_full();
        let snapshot = Snapshot::build(BuildInput {
            generation,
            rules,
            lanes: &lanes,
            catalog: &prepared.catalog,
            baseline_versions: &self.config.lanes.baseline_versions,
            metrics: &self.metrics,
            previous: Some(&previous),
            states: Some(&prepared.states),
        });
        // A deleted lane's series leave /metrics: lanes come and go all day
        // (leases, auto lanes) and would otherwise pile up until a restart.
        for gone in previous.lane_names().filter(|n| snapshot.lane(n).is_none()) {
            self.metrics.forget_lane(gone);
        }
        drop(previous);
        let m = &self.metrics;
        for (label, n) in ["passing", "warning", "critical"].iter().zip(by_health) {
            m.instances.with_label_values(&[label]).set(n);
        }
        m.lanes.set(snapshot.lane_count() as i64);
        self.snapshot.store(Arc::new(snapshot));
        let elapsed = started.elapsed();
        m.snapshot_swaps.inc();
        m.snapshot_build_seconds.observe(elapsed.as_secs_f64());
        m.snapshot_generation.set(generation as i64);
        m.snapshot_timestamp.set(unix_now() as i64);
        self.built.send_replace(generation);
        if self.may_serve() {
            self.health.set_ready();
        }
        debug!(
            generation,
            elapsed_us = elapsed.as_micros() as u64,
            "snapshot swapped"
        );
    }

    /// Runs the compiler: one build at start, then one per wake-up; changes
    /// that arrive during a build are coalesced into the next one.
    pub async fn run_compiler(self: Arc<Self>) {
        let control = self.clone();
        tokio::spawn(crate::upstream_health::run(
            self.upstream_health.clone(),
            move || {
                control.changed();
            },
        ));
        loop {
            let wanted = self.wanted.load(Ordering::SeqCst);
            if *self.built.borrow() < wanted {
                self.build_once().await;
                continue;
            }
            self.wake.notified().await;
        }
    }

    /// Creates the lanes that registered instances name and releases auto
    /// lanes whose instances have been gone for `[lanes] auto_lane_grace`.
    /// Call after a registry change, before [`changed`](Self::changed).
    /// Returns true if a lane changed (the caller then calls `changed`; the
    /// reaper does it itself).
    pub async fn reconcile_auto_lanes(&self) -> bool {
        if !self.config.lanes.auto_lanes {
            return false;
        }
        let catalog = self.catalog().await;
        let grace = self.config.lanes.auto_lane_grace;
        let result = self
            .mutate_lanes(|lanes| {
                let Ok(mut auto) = self.auto.lock() else {
                    error!("auto-lane state is poisoned; auto lanes are not reconciled");
                    return Ok(false);
                };
                Ok(auto.reconcile(lanes, &catalog, Instant::now(), unix_now_ms(), grace))
            })
            .await;
        match result {
            Ok(changed) => changed,
            Err(e) => {
                warn!(error = %e, "auto lanes not reconciled");
                false
            }
        }
    }

    /// Runs the lane reaper: once a second, releases lanes whose lease
    /// ended, ends quarantines that are due and reconciles auto lanes
    /// (which releases those past their grace). Every release is logged at
    /// info and rebuilds the snapshot.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut blocked_logged = std::collections::HashSet::new();
        loop {
            tick.tick().await;
            let now_ms = unix_now_ms();
            let expiry = self.mutate_lanes(|lanes| lanes.expire_at(now_ms)).await;
            let ended = self
                .mutate_lanes(|lanes| lanes.end_quarantine_at(now_ms))
                .await;
            let mut changed = false;
            match expiry {
                Ok(expiry) => {
                    for lane in &expiry.released {
                        info!(lane = %lane.name, vip = ?lane.entries.vip, port = ?lane.entries.port, owner = ?lane.owner, "lane lease expired; lane released");
                    }
                    changed |= !expiry.released.is_empty();
                    for name in &expiry.blocked {
                        if blocked_logged.insert(name.clone()) {
                            warn!(lane = %name, "lane lease expired but other lanes fall back to it; released once they are gone");
                        }
                    }
                    blocked_logged.retain(|n| expiry.blocked.contains(n));
                }
                Err(e) => error!(error = %e, "cannot release expired lanes"),
            }
            match ended {
                Ok(records) => {
                    for q in records {
                        info!(lane = %q.lane, vip = ?q.vip, port = ?q.port, "quarantine ended; entries free for any lane");
                    }
                }
                Err(e) => error!(error = %e, "cannot end quarantines"),
            }
            changed |= self.reconcile_auto_lanes().await;
            if changed {
                self.changed();
            }
        }
    }

    /// The instances the snapshot is built from: Consul's catalog in
    /// Consul mode, else the embedded registry's.
    pub async fn catalog(&self) -> Catalog {
        match &self.consul {
            Some(d) => (*d.catalog()).clone(),
            None => self.registry.lock().await.catalog(),
        }
    }

    /// Whether LVS may send traffic once a snapshot serves: always, except
    /// in Consul mode with `on_start_unreachable = "not-ready"` before the
    /// first sync.
    fn may_serve(&self) -> bool {
        match &self.consul {
            Some(d) => d.cfg.on_start_unreachable == StartUnreachable::ServeStale || d.synced(),
            None => true,
        }
    }

    /// Applies a change to the lane store. Embedded mode: on the local
    /// store, saved to its file. Consul mode: on a copy of the shared
    /// store, published to Consul KV with check-and-set; when another
    /// laneway instance wrote first, `change` runs again on its state (so
    /// a VIP it took is never given twice and no write is lost). `change`
    /// may therefore run more than once; it must only touch the store it is
    /// given. On error nothing changed.
    pub async fn mutate_lanes<T>(
        &self,
        mut change: impl FnMut(&mut LaneStore) -> Result<T, LaneError>,
    ) -> Result<T, LaneError> {
        let mut lanes = self.lanes.lock().await;
        let Some(kv) = &self.kv else {
            return change(&mut lanes);
        };
        for _ in 0..CAS_ATTEMPTS {
            let mut scratch = lanes.scratch();
            let out = change(&mut scratch)?;
            if scratch.same_state(&lanes) {
                return Ok(out);
            }
            match kv.publish(&mut lanes, scratch).await {
                Ok(CasOutcome::Written) => return Ok(out),
                Ok(CasOutcome::Lost) => {
                    if let Some(d) = &self.consul {
                        d.metrics.kv_conflicts.inc();
                    }
                    debug!("lane store changed in Consul meanwhile; applying the change again");
                }
                Err(e) => return Err(LaneError::Unavailable(format!("{e}; nothing was changed"))),
            }
        }
        Err(LaneError::Unavailable(format!(
            "the lane store in Consul KV kept changing under this request ({CAS_ATTEMPTS} attempts); nothing was changed, retry"
        )))
    }

    /// Consul mode: starts discovery, the shared lane store (seeding Consul
    /// KV from the local store if the key does not exist yet) and this
    /// instance's registration. No-op in embedded mode.
    pub fn start_consul(self: &Arc<Self>) {
        let Some(discovery) = self.consul.clone() else {
            return;
        };
        discovery.spawn();
        let control = self.clone();
        let mut changes = discovery.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if control.reconcile_auto_lanes().await {
                    debug!("auto lanes changed with the catalog");
                }
                control.changed();
            }
        });
        let control = self.clone();
        tokio::spawn(async move { control.run_kv_lanes().await });
        if let Some(reg) = self.self_registration.clone() {
            tokio::spawn(async move { discovery.register_self(&reg).await });
        }
    }

    /// Seeds and then watches the shared lane store.
    async fn run_kv_lanes(self: Arc<Self>) {
        let (Some(kv), Some(discovery)) = (&self.kv, &self.consul) else {
            return;
        };
        let mut backoff = crate::discovery::consul::pace::Backoff::new(
            Duration::from_millis(250),
            Duration::from_secs(30),
        );
        // Seed: adopt the shared state, or publish ours if there is none.
        loop {
            let mut lanes = self.lanes.lock().await;
            let result = match kv.refresh(&mut lanes).await {
                Ok(changed) if kv.held_index() > 0 => Ok(changed),
                Ok(_) => {
                    let scratch = lanes.scratch();
                    kv.publish(&mut lanes, scratch).await.map(|o| {
                        if matches!(o, CasOutcome::Written) {
                            info!(key = %kv.key, "lane store seeded in Consul KV from the local store");
                        }
                        true
                    })
                }
                Err(e) => Err(e),
            };
            drop(lanes);
            match result {
                Ok(changed) => {
                    if changed {
                        self.changed();
                    }
                    break;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    if backoff.failures() == 1 {
                        warn!(error = %e, "cannot read the shared lane store in Consul KV yet; serving the local copy");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        info!(key = %kv.key, "lanes shared through Consul KV");
        let wait = discovery.cfg.wait;
        let rate = discovery.cfg.rate;
        kv.watch(wait, rate, |entry| {
            let control = self.clone();
            async move {
                let Some(kv) = &control.kv else { return };
                let mut lanes = control.lanes.lock().await;
                match kv.adopt_entry(&mut lanes, entry) {
                    Ok(true) => {
                        drop(lanes);
                        debug!("lanes changed in Consul KV");
                        control.changed();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        error!(error = %e, "rejected the lane store in Consul KV; keeping the last good lanes")
                    }
                }
            }
        })
        .await;
    }

    /// Consul mode: deregisters this instance (at shutdown).
    pub async fn before_exit(&self) {
        if let (Some(d), Some(reg)) = (&self.consul, &self.self_registration) {
            d.deregister_self(reg, Duration::from_secs(2)).await;
        }
    }

    /// Loads the rules again (the rules file, or the nginx configuration
    /// and its includes); on error keeps the last good rules, logs every
    /// error with file:line and counts it.
    /// Records in the audit log what changed in Consul's catalog since the
    /// last build (the first catalog is the starting point, not a change).
    fn audit_consul_view(&self, now: &Catalog) {
        let Ok(mut last) = self.consul_view.lock() else {
            return;
        };
        if let Some(before) = last.as_ref() {
            let json = |i: &Instance| serde_json::to_value(i).unwrap_or_default();
            for i in &now.instances {
                match before.get(&i.id) {
                    None => self.audit.record(
                        "consul",
                        "instance.register",
                        &i.id,
                        serde_json::Value::Null,
                        json(i),
                    ),
                    Some(old) if **old != **i => {
                        self.audit
                            .record("consul", "instance.change", &i.id, json(old), json(i))
                    }
                    Some(_) => 0,
                };
            }
            for old in &before.instances {
                if now.get(&old.id).is_none() {
                    self.audit.record(
                        "consul",
                        "instance.deregister",
                        &old.id,
                        json(old),
                        serde_json::Value::Null,
                    );
                }
            }
        }
        *last = Some(now.clone());
    }

    pub fn reload_rules(&self) -> Result<(), Vec<ConfigError>> {
        let routes = &self.config.routes;
        if routes.file.is_none() && routes.nginx.is_none() {
            return Ok(());
        }
        let (result, files) = match load_rules(routes) {
            Ok((rules, files)) => (Ok(rules), files),
            Err((errors, files)) => (Err(errors), files),
        };
        if let Ok(mut f) = self.rules_files.lock() {
            *f = files;
        }
        let source = routes.nginx.as_ref().or(routes.file.as_ref());
        match result {
            Ok(rules) => {
                let summary = |r: &RuleSet| {
                    serde_json::json!({
                        "servers": r.servers().len(),
                        "services": r.services().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    })
                };
                let before = summary(&self.rules.load());
                let after = summary(&rules);
                self.rules.store(Arc::new(rules));
                self.audit.record(
                    "rules file",
                    "rules.reload",
                    &source.map(|p| p.display().to_string()).unwrap_or_default(),
                    before,
                    after,
                );
                if let Ok(mut errs) = self.rules_errors.lock() {
                    errs.clear();
                }
                self.metrics.rules_reloads.inc();
                info!(file = %source.map(|p| p.display().to_string()).unwrap_or_default(), "route rules reloaded");
                self.changed();
                Ok(())
            }
            Err(errors) => {
                self.metrics.rules_errors.inc();
                for e in &errors {
                    error!(error = %e, "route rules rejected; keeping the last good rules");
                }
                if let Ok(mut errs) = self.rules_errors.lock() {
                    errs.clone_from(&errors);
                }
                self.audit.record(
                    "rules file",
                    "rules.rejected",
                    &source.map(|p| p.display().to_string()).unwrap_or_default(),
                    serde_json::Value::Null,
                    serde_json::json!({ "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                );
                Err(errors)
            }
        }
    }

    /// The files the rules come from, as of the last load.
    pub fn rules_files(&self) -> Vec<PathBuf> {
        self.rules_files
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Watches every file the rules come from (for an nginx configuration:
    /// the main file and every included file, and the directories includes
    /// read from) and reloads when the content of one changes.
    pub fn watch_rules(self: &Arc<Self>) -> Option<Arc<StdMutex<notify::RecommendedWatcher>>> {
        let routes = &self.config.routes;
        let main = routes.nginx.clone().or_else(|| routes.file.clone())?;
        if !routes.watch {
            return None;
        }
        let is_nginx = routes.nginx.is_some();
        let main_dir = main
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        // what the callback lets through: the rules files, and for nginx any
        // file in a directory includes read from (a glob may match new ones)
        let interest: Arc<StdMutex<(Vec<PathBuf>, Vec<PathBuf>)>> =
            Arc::new(StdMutex::new((Vec::new(), Vec::new())));
        let set_interest = |files: Vec<PathBuf>| {
            let dirs = files
                .iter()
                .filter_map(|f| f.parent().map(PathBuf::from))
                .filter(|d| *d != main_dir)
                .collect();
            if let Ok(mut i) = interest.lock() {
                *i = (files, dirs);
            }
        };
        set_interest(self.rules_files());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let filter = interest.clone();
        let main_name = main.file_name().map(|n| n.to_os_string());
        let watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            let Ok(i) = filter.lock() else { return };
            let hit = ev.paths.iter().any(|p| {
                i.0.iter().any(|f| f == p)
                    || p.file_name() == main_name.as_deref()
                    || (is_nginx && p.parent().is_some_and(|d| i.1.iter().any(|x| x == d)))
            });
            if hit {
                let _ = tx.send(()); // the receiver only ends at shutdown
            }
        }) {
            Ok(w) => Arc::new(StdMutex::new(w)),
            Err(e) => {
                warn!(error = %e, "cannot watch the rules files; edits need a restart");
                return None;
            }
        };
        let mut watched: Vec<PathBuf> = Vec::new();
        watch_dirs(&watcher, &main_dir, &self.rules_files(), &mut watched);
        if watched.is_empty() {
            return None;
        }
        let control = self.clone();
        let handle_for_dirs = watcher.clone();
        tokio::spawn(async move {
            let mut last = fingerprint(&control.rules_files());
            while rx.recv().await.is_some() {
                // Let a burst of writes settle before reading the files.
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
                {
                }
                let now = fingerprint(&control.rules_files());
                if now == last && !is_nginx {
                    continue;
                }
                if control.reload_rules_if_changed(&mut last, now).is_err() {
                    debug!("rules reload rejected");
                }
                let files = control.rules_files();
                watch_dirs(&handle_for_dirs, &main_dir, &files, &mut watched);
                let dirs = files
                    .iter()
                    .filter_map(|f| f.parent().map(PathBuf::from))
                    .filter(|d| *d != main_dir)
                    .collect();
                if let Ok(mut i) = interest.lock() {
                    *i = (files, dirs);
                }
            }
        });
        Some(watcher)
    }

    /// Reloads when the rules files differ from `last` (their content as of
    /// the last load); a new include set is compared after loading.
    fn reload_rules_if_changed(
        &self,
        last: &mut Vec<(PathBuf, Option<Vec<u8>>)>,
        now: Vec<(PathBuf, Option<Vec<u8>>)>,
    ) -> Result<(), Vec<ConfigError>> {
        if now == *last && self.config.routes.nginx.is_some() {
            // the known files are unchanged, but a glob may match a new one
            let Ok(cfg) = crate::config::nginx::parse::parse_file(
                self.config
                    .routes
                    .nginx
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
            ) else {
                return Ok(());
            };
            if fingerprint(&cfg.files) == *last {
                return Ok(());
            }
        }
        let r = self.reload_rules();
        *last = fingerprint(&self.rules_files());
        r
    }
}

/// Watches the directory of every file (and the main file's) not yet
/// watched.
fn watch_dirs(
    watcher: &StdMutex<notify::RecommendedWatcher>,
    main_dir: &std::path::Path,
    files: &[PathBuf],
    watched: &mut Vec<PathBuf>,
) {
    use notify::Watcher;
    let mut dirs = vec![main_dir.to_path_buf()];
    for f in files {
        if let Some(d) = f.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    for d in dirs {
        if watched.contains(&d) {
            continue;
        }
        let ok = watcher
            .lock()
            .map(|mut w| w.watch(&d, notify::RecursiveMode::NonRecursive));
        match ok {
            Ok(Ok(())) => watched.push(d),
            Ok(Err(e)) => warn!(dir = %d.display(), error = %e, "cannot watch a rules directory"),
            Err(_) => warn!("rules watcher is poisoned"),
        }
    }
}

/// Why rules did not load, and the files read until then.
pub type RulesLoadError = (Vec<ConfigError>, Vec<PathBuf>);

/// Loads the route rules `routes` names, and the files they were read from
/// (also on error, so that a watcher can follow a broken include).
/// The nginx ports of laneway's listeners are checked against the servers'
/// (see [`crate::config::RoutesConfig::check_ports`]).
pub fn load_rules(
    routes: &crate::config::RoutesConfig,
) -> Result<(RuleSet, Vec<PathBuf>), RulesLoadError> {
    let (rules, files, main) = if let Some(main) = &routes.nginx {
        let (rules, tr) = crate::config::nginx::translate::load(main, &routes.nginx_upstreams)?;
        (rules, tr.files, main)
    } else {
        match &routes.file {
            Some(file) => match RuleSet::load(file) {
                Ok(r) => (r, vec![file.clone()], file),
                Err(e) => return Err((e, vec![file.clone()])),
            },
            None => return Ok((RuleSet::empty(), Vec::new())),
        }
    };
    let errors = routes.check_ports(&rules.ports(), main);
    if errors.is_empty() {
        Ok((rules, files))
    } else {
        Err((errors, files))
    }
}

/// Each file with its content (`None`: unreadable).
fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).ok()))
        .collect()
}

/// Adds the instances the rules fix (`[static_services]`, an nginx
/// upstream's own servers) to the catalog, as unlabelled (baseline)
/// instances; registered instances with the same id win.
fn add_static_instances(catalog: &mut crate::discovery::Catalog, rules: &RuleSet) {
    let statics = rules.static_instances();
    if statics.is_empty() {
        return;
    }
    for s in statics {
        let id = format!("static:{}:{}:{}", s.service, s.host, s.port);
        if catalog.get(&id).is_some() {
            continue;
        }
        catalog.instances.push(Arc::new(crate::discovery::Instance {
            id,
            service: s.service.to_string(),
            address: s.host.clone(),
            port: s.port,
            version: None,
            lane: None,
            tags: Vec::new(),
            meta: Default::default(),
            weight_passing: 1,
            weight_warning: 1,
            health: Health::Passing,
            checks: Vec::new(),
        }));
    }
    catalog.instances.sort_by(|a, b| a.id.cmp(&b.id));
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
