//! Consul mode discovery: instances come from Consul, watched with
//! blocking queries, and are served from an in-memory [`Catalog`] that the
//! snapshot compiler reads. Control plane only.
//!
//! How it scales to thousands of services on one agent connection budget:
//! two blocking queries run all the time, `/v1/catalog/services` (which
//! services exist) and `/v1/health/state/any` (every check in the cluster,
//! digested per service and per node). A service is fetched with
//! `/v1/health/service/<name>` (not blocking) only when it appears or its
//! digest changes, at most `concurrency` at once. So an idle cluster costs
//! two long-polls, and a change costs one fetch per service it touched.
//! Instances registered without any check change no digest; they are seen
//! when their service first appears, and by the periodic `resync`.
//!
//! Failure behaviour: every loop paces itself with a token bucket (an
//! index that does not advance never spins), resets its index when Consul
//! returns a lower one or 0, backs off with jitter after errors (refused,
//! 5xx, 429), and keeps the last good data. A failed fetch keeps that
//! service's previous instances; nothing is ever emptied by an error. The
//! catalog is persisted under `data_dir` so a restart while Consul is down
//! serves what was last known.
//!
//! An instance registered at one of laneway's own listeners
//! ([`OwnListeners`]) is skipped, counted and logged: requests to it would
//! loop back into laneway.

pub mod client;
pub mod entries;
pub mod farm;
pub mod pace;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tracing::{debug, info, warn};

use self::client::{ConsulClient, ConsulError};
use self::entries::{CheckDigests, CheckJson, HealthEntry, Labels};
use self::pace::{blocking_loop, Backoff, Round};
use crate::allocation::file::{read_json, write_atomic};
use crate::allocation::pools::unix_now_ms;
use crate::config::{Config, ConsulConfig};
use crate::discovery::own::OwnListeners;
use crate::discovery::{Catalog, Instance};
use crate::telemetry::Metrics;

/// The file the last synced catalog is kept in, under `data_dir`.
pub const CACHE_FILE: &str = "consul-catalog.json";
const CACHE_FORMAT: u32 = 1;

/// The loops whose health makes up "synced" and "stale".
#[derive(Debug, Clone, Copy)]
enum Loop {
    Services = 0,
    Checks = 1,
    Fetch = 2,
}

const LOOP_NAMES: [&str; 3] = ["services", "checks", "fetch"];

/// Metrics of Consul mode, registered in laneway's registry.
pub struct ConsulMetrics {
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub index: IntGaugeVec,
    pub synced: IntGauge,
    /// `laneway_discovery_staleness_seconds`, shared with embedded mode.
    pub staleness: prometheus::Gauge,
    pub last_contact: IntGauge,
    pub catalog_updates: IntCounter,
    pub services_fetched: IntCounter,
    pub kv_conflicts: IntCounter,
    /// Instances skipped because they are registered at one of laneway's
    /// own listeners.
    pub own_listener_skipped: IntCounter,
}

impl ConsulMetrics {
    fn new(registry: &Registry, staleness: prometheus::Gauge) -> ConsulMetrics {
        let m = ConsulMetrics {
            requests: IntCounterVec::new(
                Opts::new("laneway_consul_requests_total", "Requests sent to Consul, by watch"),
                &["watch"],
            )
            .expect("metric definition"),
            errors: IntCounterVec::new(
                Opts::new(
                    "laneway_consul_errors_total",
                    "Failed Consul requests, by watch and kind (unreachable, 5xx, 429, 4xx, decode)",
                ),
                &["watch", "kind"],
            )
            .expect("metric definition"),
            index: IntGaugeVec::new(
                Opts::new("laneway_consul_index", "The X-Consul-Index each watch holds"),
                &["watch"],
            )
            .expect("metric definition"),
            synced: IntGauge::new(
                "laneway_discovery_synced",
                "1 once the catalog matches Consul and every watch is healthy",
            )
            .expect("metric definition"),
            staleness,
            last_contact: IntGauge::new(
                "laneway_discovery_last_contact_timestamp_seconds",
                "Unix time of the last successful answer from Consul",
            )
            .expect("metric definition"),
            catalog_updates: IntCounter::new(
                "laneway_discovery_catalog_updates_total",
                "Catalog changes applied from Consul",
            )
            .expect("metric definition"),
            services_fetched: IntCounter::new(
                "laneway_consul_service_fetches_total",
                "Services fetched with /v1/health/service after a change",
            )
            .expect("metric definition"),
            kv_conflicts: IntCounter::new(
                "laneway_lanes_kv_conflicts_total",
                "Lane-store writes to Consul KV that lost a check-and-set race and were retried",
            )
            .expect("metric definition"),
            own_listener_skipped: IntCounter::new(
                "laneway_discovery_own_listener_skipped_total",
                "Consul instances skipped (each time their service is fetched) because they are registered at one of laneway's own listeners",
            )
            .expect("metric definition"),
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.errors.clone()),
            Box::new(m.index.clone()),
            Box::new(m.synced.clone()),
            Box::new(m.last_contact.clone()),
            Box::new(m.catalog_updates.clone()),
            Box::new(m.services_fetched.clone()),
            Box::new(m.kv_conflicts.clone()),
            Box::new(m.own_listener_skipped.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        m
    }
}

/// What the watch loops tell the syncer.
#[derive(Debug)]
enum Event {
    /// The watched service names (after name, prefix and tag filters).
    Services(BTreeSet<String>),
    Checks(CheckDigests),
}

/// The persisted catalog.
#[derive(Serialize, Deserialize)]
struct Cache {
    format: u32,
    saved_at_ms: u64,
    address: String,
    instances: Vec<Instance>,
}

/// Consul discovery: the catalog it maintains and its sync state.
pub struct ConsulDiscovery {
    pub cfg: ConsulConfig,
    version_key: String,
    lane_key: String,
    pub client: ConsulClient,
    catalog: ArcSwap<Catalog>,
    /// Bumped on every catalog change (and when sync is first reached).
    changes: watch::Sender<u64>,
    synced: AtomicBool,
    /// Per loop: the last request failed.
    failing: [AtomicBool; 3],
    /// Unix ms since which the catalog may be stale; 0 while in sync.
    stale_since_ms: AtomicU64,
    last_contact_ms: AtomicU64,
    last_error: StdMutex<Option<String>>,
    pub metrics: ConsulMetrics,
    cache_path: PathBuf,
    cache_loaded: bool,
    persist: Notify,
    /// laneway's own listeners: an instance at one of them is skipped.
    own: OwnListeners,
}

impl ConsulDiscovery {
    /// Sets up the client and loads the persisted catalog, if any (a
    /// damaged cache is logged and ignored: Consul is the source of truth).
    pub fn open(config: &Config, metrics: &Metrics) -> Result<Arc<ConsulDiscovery>, ConsulError> {
        let cfg = config
            .discovery
            .consul
            .clone()
            .ok_or_else(|| ConsulError::Setup("[discovery] mode is not \"consul\"".into()))?;
        let client = ConsulClient::new(&cfg)?;
        let cache_path = config.store.data_dir.join(CACHE_FILE);
        let (catalog, cache_loaded) = match load_cache(&cache_path) {
            Ok(Some(c)) => {
                info!(file = %cache_path.display(), instances = c.len(), "serving the last catalog synced from Consul until the first sync");
                (c, true)
            }
            Ok(None) => (Catalog::default(), false),
            Err(e) => {
                warn!(error = %e, "ignoring the persisted Consul catalog");
                (Catalog::default(), false)
            }
        };
        let (changes, _) = watch::channel(0);
        let now = unix_now_ms();
        Ok(Arc::new(ConsulDiscovery {
            version_key: config.discovery.version_key.clone(),
            lane_key: config.discovery.lane_key.clone(),
            client,
            catalog: ArcSwap::from_pointee(catalog),
            changes,
            synced: AtomicBool::new(false),
            failing: Default::default(),
            stale_since_ms: AtomicU64::new(now),
            last_contact_ms: AtomicU64::new(0),
            last_error: StdMutex::new(None),
            metrics: ConsulMetrics::new(&metrics.registry, metrics.discovery_staleness.clone()),
            cache_path,
            cache_loaded,
            persist: Notify::new(),
            own: OwnListeners::from_config(config),
            cfg,
        }))
    }

    /// The catalog as last synced (or loaded from the cache).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Changes when the catalog changes or sync is reached.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Seconds the catalog may be behind Consul (0 while in sync).
    pub fn stale_seconds(&self) -> u64 {
        match self.stale_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            since => unix_now_ms().saturating_sub(since) / 1000,
        }
    }

    /// The discovery part of `/api/v1/status`.
    pub fn status_json(&self) -> Value {
        let last_contact = self.last_contact_ms.load(Ordering::Relaxed);
        json!({
            "mode": "consul",
            "address": self.client.address(),
            "synced": self.synced(),
            "stale_seconds": self.stale_seconds(),
            "last_contact_unix_ms": (last_contact > 0).then_some(last_contact),
            "started_from_cache": self.cache_loaded,
            "failing": LOOP_NAMES.iter().zip(&self.failing)
                .filter(|(_, f)| f.load(Ordering::Relaxed)).map(|(n, _)| *n).collect::<Vec<_>>(),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "instances": self.catalog.load().len(),
        })
    }

    /// Starts the watch loops, the syncer, the cache writer and the
    /// staleness gauge. They run until the runtime stops.
    pub fn spawn(self: &Arc<Self>) {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().watch_services(tx.clone()));
        tokio::spawn(self.clone().watch_checks(tx));
        tokio::spawn(self.clone().sync(rx));
        tokio::spawn(self.clone().write_cache());
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                me.metrics.staleness.set(me.stale_seconds() as f64);
            }
        });
    }

    fn ok(&self, which: Loop) {
        let now = unix_now_ms();
        self.last_contact_ms.store(now, Ordering::Relaxed);
        self.metrics.last_contact.set((now / 1000) as i64);
        if self.failing[which as usize].swap(false, Ordering::Relaxed) {
            info!(watch = LOOP_NAMES[which as usize], "Consul answers again");
        }
        self.update_stale();
    }

    fn failed(&self, which: Loop, watch: &str, e: &ConsulError, backoff: Option<Duration>) {
        self.metrics
            .errors
            .with_label_values(&[watch, e.kind()])
            .inc();
        if !self.failing[which as usize].swap(true, Ordering::Relaxed) {
            warn!(watch, error = %e, retry_in_ms = backoff.map(|d| d.as_millis() as u64), "Consul request failed; serving the last catalog");
        } else {
            debug!(watch, error = %e, "Consul request failed again");
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
        let _ = self.stale_since_ms.compare_exchange(
            0,
            unix_now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn update_stale(&self) {
        if self.synced() && !self.failing.iter().any(|f| f.load(Ordering::Relaxed)) {
            self.stale_since_ms.store(0, Ordering::Relaxed);
        }
    }

    async fn watch_services(self: Arc<Self>, tx: mpsc::UnboundedSender<Event>) {
        type Services = BTreeMap<String, Option<Vec<String>>>;
        let path = "/v1/catalog/services";
        let mut last: Option<BTreeSet<String>> = None;
        blocking_loop::<Services, _, _>(
            &self.client,
            path,
            self.cfg.wait,
            self.cfg.rate,
            |round| {
                self.metrics.requests.with_label_values(&["services"]).inc();
                let go_on = match round {
                    Round::Answer(Some(map), index) => {
                        self.metrics
                            .index
                            .with_label_values(&["services"])
                            .set(index as i64);
                        self.ok(Loop::Services);
                        let names: BTreeSet<String> = map
                            .into_iter()
                            .filter(|(name, tags)| {
                                self.cfg.watches(name)
                                    && self.cfg.tag.as_ref().is_none_or(|t| {
                                        tags.as_ref().is_some_and(|tags| tags.contains(t))
                                    })
                            })
                            .map(|(name, _)| name)
                            .collect();
                        let changed = last.as_ref() != Some(&names);
                        last = Some(names.clone());
                        !changed || tx.send(Event::Services(names)).is_ok()
                    }
                    Round::Answer(None, _) => {
                        let e = ConsulError::Decode {
                            path: path.into(),
                            detail: "404".into(),
                        };
                        self.failed(Loop::Services, "services", &e, None);
                        true
                    }
                    Round::Failed(e, pause) => {
                        self.failed(Loop::Services, "services", &e, Some(pause));
                        true
                    }
                };
                std::future::ready(go_on)
            },
        )
        .await;
    }

    async fn watch_checks(self: Arc<Self>, tx: mpsc::UnboundedSender<Event>) {
        let path = "/v1/health/state/any";
        let mut last: Option<CheckDigests> = None;
        blocking_loop::<Vec<CheckJson>, _, _>(
            &self.client,
            path,
            self.cfg.wait,
            self.cfg.rate,
            |round| {
                self.metrics.requests.with_label_values(&["checks"]).inc();
                let go_on = match round {
                    Round::Answer(checks, index) => {
                        self.metrics
                            .index
                            .with_label_values(&["checks"])
                            .set(index as i64);
                        self.ok(Loop::Checks);
                        let digests = CheckDigests::of(checks.unwrap_or_default());
                        let changed = last.as_ref() != Some(&digests);
                        last = Some(CheckDigests {
                            services: digests.services.clone(),
                            nodes: digests.nodes.clone(),
                        });
                        !changed || tx.send(Event::Checks(digests)).is_ok()
                    }
                    Round::Failed(e, pause) => {
                        self.failed(Loop::Checks, "checks", &e, Some(pause));
                        true
                    }
                };
                std::future::ready(go_on)
            },
        )
        .await;
    }

    /// Owns the per-service instance lists: applies events, fetches the
    /// services they mark, and publishes a new catalog when anything changed.
    async fn sync(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut per_service: BTreeMap<String, Vec<Arc<Instance>>> = BTreeMap::new();
        for i in &self.catalog.load().instances {
            per_service
                .entry(i.service.clone())
                .or_default()
                .push(i.clone());
        }
        let mut wanted: Option<BTreeSet<String>> = None;
        let mut digests: Option<CheckDigests> = None;
        let mut fetched: BTreeSet<String> = BTreeSet::new();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut retry_at: Option<tokio::time::Instant> = None;
        let resync = (!self.cfg.resync.is_zero()).then_some(self.cfg.resync);
        let mut next_resync = resync.map(|r| tokio::time::Instant::now() + r);
        let labels = Labels {
            version_key: &self.version_key,
            lane_key: &self.lane_key,
            warning_is_up: self.cfg.warning_is_up,
        };
        loop {
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    let mut pending = vec![ev];
                    while let Ok(ev) = rx.try_recv() {
                        pending.push(ev);
                    }
                    for ev in pending {
                        self.apply(ev, &mut wanted, &mut digests, &per_service, &mut dirty);
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                    retry_at = None;
                }
                _ = tokio::time::sleep_until(next_resync.unwrap_or(far)), if next_resync.is_some() => {
                    next_resync = resync.map(|r| tokio::time::Instant::now() + r);
                    if let Some(w) = &wanted {
                        debug!(services = w.len(), "periodic resync with Consul");
                        dirty.extend(w.iter().cloned());
                    }
                }
            }
            let Some(names) = &wanted else { continue };
            let mut changed = false;
            let gone: Vec<String> = per_service
                .keys()
                .filter(|s| !names.contains(*s))
                .cloned()
                .collect();
            for s in gone {
                per_service.remove(&s);
                fetched.remove(&s);
                changed = true;
            }
            dirty.retain(|s| names.contains(s));
            if !dirty.is_empty() && retry_at.is_none() {
                let batch: Vec<String> = std::mem::take(&mut dirty).into_iter().collect();
                let (results, failed) = self.fetch(batch, &labels).await;
                for (service, list) in results {
                    fetched.insert(service.clone());
                    let old = per_service.get(&service);
                    let same = old.is_some_and(|o| {
                        o.len() == list.len() && o.iter().zip(&list).all(|(a, b)| **a == *b)
                    });
                    if same {
                        continue;
                    }
                    changed = true;
                    if list.is_empty() {
                        per_service.remove(&service);
                    } else {
                        per_service.insert(service, list.into_iter().map(Arc::new).collect());
                    }
                }
                if failed.is_empty() {
                    backoff.reset();
                    if self.failing[Loop::Fetch as usize].load(Ordering::Relaxed) {
                        self.ok(Loop::Fetch);
                    }
                } else {
                    dirty.extend(failed);
                    retry_at = Some(tokio::time::Instant::now() + backoff.next_wait());
                }
            }
            let now_synced = digests.is_some()
                && dirty.is_empty()
                && retry_at.is_none()
                && names.iter().all(|s| fetched.contains(s));
            let became_synced = now_synced && !self.synced.swap(true, Ordering::Relaxed);
            if became_synced {
                info!(services = names.len(), "catalog in sync with Consul");
                self.metrics.synced.set(1);
                self.update_stale();
            }
            if changed {
                let mut instances: Vec<Arc<Instance>> =
                    per_service.values().flatten().cloned().collect();
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                debug!(instances = instances.len(), "catalog updated from Consul");
                self.catalog.store(Arc::new(Catalog { instances }));
                self.metrics.catalog_updates.inc();
                self.persist.notify_one();
            }
            if changed || became_synced {
                self.changes.send_modify(|v| *v += 1);
            }
        }
    }

    fn apply(
        &self,
        ev: Event,
        wanted: &mut Option<BTreeSet<String>>,
        digests: &mut Option<CheckDigests>,
        per_service: &BTreeMap<String, Vec<Arc<Instance>>>,
        dirty: &mut BTreeSet<String>,
    ) {
        match ev {
            Event::Services(names) => {
                match wanted {
                    None => dirty.extend(names.iter().cloned()),
                    Some(old) => dirty.extend(names.difference(old).cloned()),
                }
                *wanted = Some(names);
            }
            Event::Checks(new) => {
                if let Some(old) = digests.as_ref() {
                    for (s, d) in &new.services {
                        if old.services.get(s) != Some(d) {
                            dirty.insert(s.clone());
                        }
                    }
                    for s in old.services.keys() {
                        if !new.services.contains_key(s) {
                            dirty.insert(s.clone());
                        }
                    }
                    let nodes: BTreeSet<&String> = new
                        .nodes
                        .iter()
                        .filter(|(n, d)| old.nodes.get(*n) != Some(d))
                        .map(|(n, _)| n)
                        .chain(old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)))
                        .collect();
                    if !nodes.is_empty() {
                        for (s, list) in per_service {
                            if list.iter().any(|i| {
                                i.id.split_once('/')
                                    .is_some_and(|(node, _)| nodes.contains(&node.to_string()))
                            }) {
                                dirty.insert(s.clone());
                            }
                        }
                    }
                }
                *digests = Some(new);
            }
        }
    }

    /// Fetches `services` with at most `concurrency` requests at once.
    /// Returns the instance lists fetched and the services that failed.
    async fn fetch(
        self: &Arc<Self>,
        services: Vec<String>,
        labels: &Labels<'_>,
    ) -> (Vec<(String, Vec<Instance>)>, Vec<String>) {
        let limit = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for service in services {
            let me = self.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                me.metrics.requests.with_label_values(&["service"]).inc();
                me.metrics.services_fetched.inc();
                let mut query = Vec::new();
                if let Some(tag) = &me.cfg.tag {
                    query.push(("tag", tag.clone()));
                }
                let path = format!(
                    "/v1/health/service/{}",
                    percent_encoding::utf8_percent_encode(
                        &service,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                let r = me
                    .client
                    .read::<Vec<HealthEntry>>(&path, &query, None)
                    .await;
                (service, r)
            });
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((service, result)) = joined else {
                continue;
            };
            match result {
                Ok((entries, _)) => {
                    let (mut list, skipped) =
                        entries::instances(entries.unwrap_or_default(), labels);
                    for why in skipped {
                        warn!(service = %service, instance = %why, "Consul instance skipped");
                    }
                    self.skip_own(&service, &mut list);
                    ok.push((service, list));
                }
                Err(e) => {
                    self.failed(Loop::Fetch, "service", &e, None);
                    failed.push(service);
                }
            }
        }
        if !ok.is_empty() {
            let now = unix_now_ms();
            self.last_contact_ms.store(now, Ordering::Relaxed);
        }
        (ok, failed)
    }

    /// Drops the instances of `service` registered at one of laneway's own
    /// listeners: requests to them would loop back into laneway. Each is
    /// counted and logged, except this laneway's own registration in
    /// Consul (`register_self`), which is expected and skipped quietly.
    fn skip_own(&self, service: &str, list: &mut Vec<Instance>) {
        list.retain(|i| {
            let Some(own) = self.own.refusal(&i.address, i.port) else {
                return true;
            };
            if self.cfg.register_self && service == self.cfg.service_name {
                debug!(service, instance = %i.id, listener = %own, "laneway's own registration is not an upstream");
            } else {
                self.metrics.own_listener_skipped.inc();
                warn!(
                    service,
                    instance = %i.id,
                    address = %format_args!("{}:{}", i.address, i.port),
                    why = %own,
                    "Consul instance skipped: its address is refused"
                );
            }
            false
        });
    }

    /// Writes the catalog to `data_dir` after changes, at most once a second.
    async fn write_cache(self: Arc<Self>) {
        loop {
            self.persist.notified().await;
            let catalog = self.catalog.load_full();
            let cache = Cache {
                format: CACHE_FORMAT,
                saved_at_ms: unix_now_ms(),
                address: self.client.address().to_string(),
                instances: catalog.instances.iter().map(|i| (**i).clone()).collect(),
            };
            let path = self.cache_path.clone();
            let result = tokio::task::spawn_blocking(move || {
                let bytes = serde_json::to_vec(&cache).map_err(|e| e.to_string())?;
                write_atomic(&path, &bytes).map_err(|e| e.to_string())
            })
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(file = %self.cache_path.display(), error = %e, "cannot persist the Consul catalog")
                }
                Err(e) => warn!(error = %e, "catalog persister stopped"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn load_cache(path: &Path) -> Result<Option<Catalog>, String> {
    let Some(cache) = read_json::<Cache>(path).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if cache.format != CACHE_FORMAT {
        return Err(format!(
            "{}: format {} is not {CACHE_FORMAT}",
            path.display(),
            cache.format
        ));
    }
    let mut instances: Vec<Arc<Instance>> = cache.instances.into_iter().map(Arc::new).collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    Ok(Some(Catalog { instances }))
}
