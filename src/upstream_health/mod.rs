//! Upstream health on top of what discovery says: active checks
//! ([`active`], control plane) and passive ejection after consecutive failed
//! requests (recorded on the request path), each feeding version selection.
//!
//! Every instance has one [`UpstreamState`] of atomics, shared by the
//! snapshot's pools (which read and record it with `Relaxed` operations: no
//! lock, no allocation) and the control plane (checker tasks, the
//! re-admission timer). A state change that takes an instance out or brings
//! it back wakes [`run`], which asks the compiler for a new snapshot; the
//! compiler builds it from [`UpstreamHealth::prepare`]'s view of the catalog,
//! in which instances held out are `critical`. So a lane whose version lost
//! its last healthy instance falls back (or answers 503 when strict) through
//! the same precomputed targets as any discovery change, and the request
//! path never walks a fallback chain itself. Between the change and the
//! swap (well under a millisecond), [`crate::routing::snapshot::Pool::pick`]
//! already skips an instance held out.
//!
//! Why not check the atomics at selection time only: a fallback then needs
//! the chain walked per request, with a lookup per ancestor. Health flips
//! are rare next to requests, and a rebuild touches only the pools of the
//! service that changed.

pub mod active;

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{HealthChecksConfig, PassivePolicy};
use crate::discovery::{Catalog, CheckKind, CheckState, Health, Instance};
use crate::routing::hash::{FastHash, FastMap, FastSet};
use crate::telemetry::{InstanceHealthSource, Metrics};

/// The id of the check laneway adds to an instance it holds out, as the
/// admin API's instance list shows it.
pub const LANEWAY_CHECK_ID: &str = "laneway:upstream";

/// The health of one instance as laneway sees it. Read and written on the
/// request path with relaxed atomics.
pub struct UpstreamState {
    pub id: Arc<str>,
    pub service: Arc<str>,
    pub version: Option<Arc<str>>,
    pub addr: Option<SocketAddr>,
    policy: PassivePolicy,
    /// Consecutive failed requests.
    fails: AtomicU32,
    /// Held out by passive ejection until `until_ms`.
    ejected: AtomicBool,
    /// Ejections in a row (the backoff's exponent); reset by a success.
    streak: AtomicU32,
    /// Milliseconds since [`UpstreamHealth`]'s epoch.
    until_ms: AtomicU64,
    /// Held out by its active check.
    active_down: AtomicBool,
    /// Why the active check last failed.
    last_check: Mutex<String>,
    /// What every state of the registry shares: one `Arc` (one atomic
    /// increment) per state, which matters when 200,000 are made at once
    /// on several cores.
    shared: Arc<Shared>,
}

/// The part of every state that is the registry's.
struct Shared {
    epoch: Instant,
    /// Wakes [`run`] for a new snapshot.
    events: Notify,
    /// Set (for good) when any state of the registry is first held out:
    /// until then `prepare` has no instance to hold out and skips the pass.
    ever_out: AtomicBool,
    /// `laneway_upstream_ejections_total`; the child is made at the first
    /// ejection (rare) rather than for every instance at start. `None`:
    /// tracked by nobody.
    ejections: Option<IntCounterVec>,
}

impl Shared {
    fn new(ejections: Option<IntCounterVec>) -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            events: Notify::new(),
            ever_out: AtomicBool::new(false),
            ejections,
        })
    }
}

impl fmt::Debug for UpstreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamState")
            .field("id", &self.id)
            .field("fails", &self.fails.load(Ordering::Relaxed))
            .field("ejected", &self.ejected.load(Ordering::Relaxed))
            .field("active_down", &self.active_down.load(Ordering::Relaxed))
            .finish()
    }
}

impl UpstreamState {
    /// A state tracked by nobody (snapshots built without an
    /// [`UpstreamHealth`], e.g. in benchmarks): records, never ejects.
    pub fn detached(id: &str) -> UpstreamState {
        UpstreamState {
            id: Arc::from(id),
            service: Arc::from(""),
            version: None,
            addr: None,
            policy: PassivePolicy {
                enabled: false,
                ..PassivePolicy::default()
            },
            fails: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            last_check: Mutex::new(String::new()),
            shared: Shared::new(None),
        }
    }

    /// Made by [`UpstreamState::detached`]: tracked by nobody.
    pub fn detached_state(&self) -> bool {
        self.shared.ejections.is_none()
    }

    /// Makes this instance's `laneway_upstream_ejections_total` series (at
    /// 0) if it is not there yet; its pool does on its first request.
    pub fn show_ejections(&self) {
        if let Some(c) = &self.shared.ejections {
            c.with_label_values(&[&self.service, self.version.as_deref().unwrap_or("-")]);
        }
    }

    /// Held out of traffic, by its active check or an ejection.
    #[inline]
    pub fn is_out(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) || self.active_down.load(Ordering::Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn active_down(&self) -> bool {
        self.active_down.load(Ordering::Relaxed)
    }

    /// A request got a response (a 5xx counts as a failure when the policy
    /// says so). Two relaxed loads when nothing was failing.
    #[inline]
    pub fn record_status(&self, status: u16) {
        if status >= 500 && self.policy.on_5xx {
            self.record_failure();
        } else {
            self.record_success();
        }
    }

    #[inline]
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.streak.load(Ordering::Relaxed) != 0 && !self.ejected() {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Connecting, sending or reading failed (or a counted 5xx). After
    /// `consecutive_failures` in a row the instance is ejected.
    pub fn record_failure(&self) {
        if !self.policy.enabled {
            return;
        }
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.policy.consecutive_failures || self.ejected.swap(true, Ordering::Relaxed) {
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = backoff(&self.policy, streak);
        let now = self.shared.epoch.elapsed();
        self.until_ms
            .store((now + backoff).as_millis() as u64, Ordering::Relaxed);
        if let Some(c) = &self.shared.ejections {
            let version = self.version.as_deref().unwrap_or("-");
            c.with_label_values(&[&self.service, version]).inc();
        }
        warn!(instance = %self.id, service = %self.service, upstream = ?self.addr, failures = n, backoff_ms = backoff.as_millis() as u64, "instance ejected after consecutive failures");
        self.shared.ever_out.store(true, Ordering::Release);
        self.shared.events.notify_one();
    }

    /// Re-admits the instance if its ejection is over; true if it was.
    fn readmit_if_due(&self, now_ms: u64) -> bool {
        if !self.ejected() || self.until_ms.load(Ordering::Relaxed) > now_ms {
            return false;
        }
        self.fails.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Relaxed);
        info!(instance = %self.id, service = %self.service, "ejection over; instance takes traffic again");
        true
    }

    /// An active check result moved the instance in or out.
    fn set_active_down(&self, down: bool, why: &str) {
        self.active_down.store(down, Ordering::Relaxed);
        if let Ok(mut last) = self.last_check.lock() {
            why.clone_into(&mut last);
        }
        if down {
            self.shared.ever_out.store(true, Ordering::Release);
        }
        self.shared.events.notify_one();
    }

    /// The reason the instance is held out, if it is.
    pub fn out_reason(&self) -> Option<String> {
        if self.active_down() {
            let last = self
                .last_check
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Some(format!("active check failing: {last}"));
        }
        if self.ejected() {
            let left = self
                .until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(self.shared.epoch.elapsed().as_millis() as u64);
            return Some(format!(
                "ejected after {} consecutive failures; retried in {}",
                self.policy.consecutive_failures,
                humantime::format_duration(Duration::from_millis(left))
            ));
        }
        None
    }
}

impl InstanceHealthSource for UpstreamHealth {
    fn each_instance(&self, f: &mut dyn FnMut(&str, &str, &str, bool)) {
        let Ok(inner) = self.inner.lock() else {
            return;
        };
        for s in inner.states.values() {
            f(
                &s.service,
                s.version.as_deref().unwrap_or("-"),
                &s.id,
                !s.is_out(),
            );
        }
    }
}

/// The ejection time after `streak` ejections in a row: `base_ejection`
/// doubled each time, at most `max_ejection`.
pub fn backoff(policy: &PassivePolicy, streak: u32) -> Duration {
    let factor = 1u32 << streak.saturating_sub(1).min(20);
    policy
        .base_ejection
        .saturating_mul(factor)
        .min(policy.max_ejection)
}

/// Every instance's [`UpstreamState`], and the checker tasks. Control plane.
pub struct UpstreamHealth {
    pub config: HealthChecksConfig,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
}

/// The states by instance id. A `hashbrown::HashTable` rather than a
/// `HashMap`: a state's hash is computed where the state is made (on the
/// core that made it, its id in cache) and handed to the table, where a
/// `HashMap` would hash every key again on the thread that fills it, reading
/// 200,000 ids out of cache at a cold start.
#[derive(Default)]
struct ById(hashbrown::HashTable<Arc<UpstreamState>>);

fn id_hash(id: &str) -> u64 {
    FastHash::default().hash_one(id)
}

impl ById {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<UpstreamState>> {
        self.0.iter()
    }

    fn get(&self, id: &str) -> Option<&Arc<UpstreamState>> {
        self.get_hashed(id_hash(id), id)
    }

    /// `hash`: [`id_hash`] of `id`.
    fn get_hashed(&self, hash: u64, id: &str) -> Option<&Arc<UpstreamState>> {
        self.0.find(hash, |s| *s.id == *id)
    }

    /// Inserts or replaces the state of `state.id`; `hash`: [`id_hash`] of it.
    fn insert_hashed(&mut self, hash: u64, state: Arc<UpstreamState>) {
        let entry = self.0.entry(hash, |s| s.id == state.id, |s| id_hash(&s.id));
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = state,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(state);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Ok(e) = self.0.find_entry(id_hash(id), |s| *s.id == *id) {
            e.remove();
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional, |s| id_hash(&s.id));
    }
}

#[derive(Default)]
struct Inner {
    states: ById,
    /// Instances held out, as the compiler sees them: the discovery
    /// instance and its `critical` copy (kept so that an unchanged held-out
    /// instance is the same `Arc` in every build).
    held_out: HashMap<Arc<str>, (Arc<Instance>, Arc<Instance>)>,
    checks: active::Checks,
    /// The last catalog `prepare` saw and its instances' states, in the
    /// same order: an instance that is the same `Arc` as last time needs no
    /// lookup by id and no check bookkeeping.
    last: Prepared,
    /// Service and version names, shared by the states (a few thousand
    /// names for hundreds of thousands of states).
    names: Names,
}

#[derive(Default)]
struct Names(FastSet<Arc<str>>);

impl Names {
    /// Keeps `made` names it does not hold yet.
    fn adopt(&mut self, made: FastMap<Box<str>, Arc<str>>) {
        for (_, n) in made {
            if !self.0.contains(&*n) {
                self.0.insert(n);
            }
        }
    }
}

/// Names for states made on one thread: the shared set, read only, then
/// the names this thread made (adopted into the shared set afterwards; a
/// name first seen by two threads of one `prepare` stays two copies).
struct LocalNames<'a> {
    shared: &'a Names,
    made: FastMap<Box<str>, Arc<str>>,
}

impl<'a> LocalNames<'a> {
    fn new(shared: &'a Names) -> LocalNames<'a> {
        LocalNames {
            shared,
            made: FastMap::default(),
        }
    }

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.shared.0.get(name).or_else(|| self.made.get(name)) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.made.insert(Box::from(name), n.clone());
        n
    }
}

/// An unseen instance's state, found or made.
struct Found {
    state: Arc<UpstreamState>,
    /// For a state made: the hash of its id in the states by id.
    new: Option<u64>,
}

/// New instances in one `prepare` from which their states are made on
/// every core (a cold start of a large catalog; the data plane is not
/// serving yet).
const PARALLEL_STATES: usize = 20_000;

/// A catalog as [`UpstreamHealth::prepare`] leaves it for the compiler,
/// with each instance's health state in the same order: `states[i]` is the
/// state of `catalog.instances[i]`, so that a build takes it by position
/// rather than by a lookup per instance.
#[derive(Clone, Default)]
pub struct Prepared {
    pub catalog: Catalog,
    pub states: Arc<[Arc<UpstreamState>]>,
}

impl UpstreamHealth {
    /// The registry of `config`'s checks and policies; the source of
    /// `metrics`' per-instance health series from now on.
    pub fn new(config: HealthChecksConfig, metrics: Arc<Metrics>) -> Arc<UpstreamHealth> {
        let health = Arc::new(UpstreamHealth {
            config,
            shared: Shared::new(Some(metrics.upstream_ejections.clone())),
            metrics,
            inner: Mutex::new(Inner::default()),
        });
        let source: Arc<dyn InstanceHealthSource> = health.clone();
        health
            .metrics
            .upstream_health
            .attach(Arc::downgrade(&source));
        health
    }

    /// The state of `inst`, created on first sight (or when its address,
    /// service or version changed).
    pub fn state(&self, inst: &Instance) -> Arc<UpstreamState> {
        let Ok(mut inner) = self.inner.lock() else {
            return Arc::new(UpstreamState::detached(&inst.id));
        };
        self.state_locked(&mut inner, inst)
    }

    fn state_locked(&self, inner: &mut Inner, inst: &Instance) -> Arc<UpstreamState> {
        let mut names = LocalNames::new(&inner.names);
        let (state, made) = self.found_or_made(&inner.states, &mut names, inst);
        let names = names.made;
        inner.names.adopt(names);
        if let Some(hash) = made {
            inner.states.insert_hashed(hash, state.clone());
        }
        state
    }

    /// The state of `inst` in `states` if its address, service and version
    /// are the same, else a new one (with the hash of its id), not yet
    /// inserted.
    fn found_or_made(
        &self,
        states: &ById,
        names: &mut LocalNames<'_>,
        inst: &Instance,
    ) -> (Arc<UpstreamState>, Option<u64>) {
        let addr = inst
            .address
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, inst.port));
        let hash = id_hash(&inst.id);
        if let Some(s) = states.get_hashed(hash, &inst.id) {
            if s.addr == addr
                && *s.service == *inst.service
                && s.version.as_deref() == inst.version.as_deref()
            {
                return (s.clone(), None);
            }
        }
        let state = Arc::new(UpstreamState {
            id: Arc::from(inst.id.as_str()),
            service: names.get(&inst.service),
            version: inst.version.as_deref().map(|v| names.get(v)),
            addr,
            policy: self.config.passive_for(&inst.service),
            fails: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            last_check: Mutex::new(String::new()),
            shared: self.shared.clone(),
        });
        (state, Some(hash))
    }

    /// The states of `insts` (found or made), in order; spread over the
    /// cores when there are many (a cold start).
    fn found_or_made_all(&self, inner: &mut Inner, insts: &[&Arc<Instance>]) -> Vec<Found> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let (states, shared) = (&inner.states, &inner.names);
        let run = |chunk: &[&Arc<Instance>]| {
            let mut names = LocalNames::new(shared);
            let out: Vec<_> = chunk
                .iter()
                .map(|inst| {
                    let (state, made) = self.found_or_made(states, &mut names, inst);
                    Found { new: made, state }
                })
                .collect();
            (out, names.made)
        };
        let parts: Vec<_> = if threads > 1 && insts.len() >= PARALLEL_STATES {
            let per = insts.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = insts
                    .chunks(per)
                    .map(|chunk| scope.spawn(move || run(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("health state thread panicked"))
                    .collect()
            })
        } else {
            vec![run(insts)]
        };
        let mut all = Vec::with_capacity(insts.len());
        for (out, names) in parts {
            all.extend(out);
            inner.names.adopt(names);
        }
        all
    }

    /// The catalog as the compiler should see it, with each instance's
    /// state: instances held out by a check or an ejection are `critical`.
    /// Also makes the states of new instances, forgets those of
    /// deregistered ones, and starts or stops their checker tasks. Call on
    /// the control runtime.
    pub fn prepare(self: &Arc<Self>, catalog: Catalog) -> Prepared {
        let Ok(mut guard) = self.inner.lock() else {
            let states = catalog
                .instances
                .iter()
                .map(|i| Arc::new(UpstreamState::detached(&i.id)))
                .collect();
            return Prepared { catalog, states };
        };
        let inner = &mut *guard;
        let last = std::mem::take(&mut inner.last);
        // The same instances as last time (a build for a lane change or a
        // health flip), and no state made outside `prepare` since: the
        // states are the same, in the same order.
        let same = catalog.len() == last.catalog.len()
            && inner.states.len() == last.states.len()
            && catalog
                .instances
                .iter()
                .zip(&last.catalog.instances)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let mut changed = false;
        let states = if same {
            last.states.clone()
        } else {
            // Both catalogs are sorted by id: walk them side by side and
            // take the state of every instance that is the same `Arc` as
            // last time. Any other (new, changed, or out of order) is
            // found by id or made.
            let mut states: Vec<Option<Arc<UpstreamState>>> = Vec::with_capacity(catalog.len());
            let mut unseen: Vec<&Arc<Instance>> = Vec::new();
            let before = &last.catalog.instances;
            let mut j = 0;
            for inst in &catalog.instances {
                if j < before.len() && !Arc::ptr_eq(&before[j], inst) {
                    // past the instances gone since
                    while j < before.len() && *before[j].id < *inst.id {
                        j += 1;
                    }
                }
                if j < before.len() && Arc::ptr_eq(&before[j], inst) {
                    states.push(Some(last.states[j].clone()));
                    j += 1;
                } else {
                    states.push(None);
                    unseen.push(inst);
                }
            }
            if !unseen.is_empty() {
                changed = true;
                let found = self.found_or_made_all(inner, &unseen);
                let made = found.iter().filter(|f| f.new.is_some()).count();
                inner.states.reserve(made);
                let slots = states.iter_mut().filter(|s| s.is_none());
                for ((slot, inst), f) in slots.zip(unseen).zip(found) {
                    if let Some(hash) = f.new {
                        inner.states.insert_hashed(hash, f.state.clone());
                    }
                    inner.checks.ensure(self, inst, &f.state);
                    *slot = Some(f.state);
                }
            }
            changed |= catalog.len() != last.catalog.len() || catalog.len() != inner.states.len();
            states
                .into_iter()
                .map(|s| s.expect("every instance has its state"))
                .collect()
        };
        inner.last = if same {
            last
        } else {
            drop(last);
            Prepared {
                catalog: catalog.clone(),
                states: Arc::clone(&states),
            }
        };
        let instances =
            if !self.shared.ever_out.load(Ordering::Acquire) && inner.held_out.is_empty() {
                // no instance was ever held out: the catalog as it is
                catalog.instances
            } else {
                self.hold_out(inner, &states, catalog.instances)
            };
        let prepared = Prepared {
            catalog: Catalog { instances },
            states,
        };
        // Every state is in the catalog (ids are unique) unless some are gone.
        if !changed || inner.states.len() == prepared.states.len() {
            return prepared;
        }
        let seen: FastSet<&str> = prepared.states.iter().map(|s| &*s.id).collect();
        let gone: Vec<Arc<str>> = inner
            .states
            .values()
            .filter(|s| !seen.contains(&*s.id))
            .map(|s| s.id.clone())
            .collect();
        drop(seen);
        for id in gone {
            inner.states.remove(&id);
            inner.held_out.remove(&id);
            inner.checks.stop(&id);
        }
        prepared
    }

    /// `instances` with those held out by a check or an ejection replaced
    /// by `critical` copies (the same copy while nothing changes).
    fn hold_out(
        &self,
        inner: &mut Inner,
        states: &[Arc<UpstreamState>],
        all: Vec<Arc<Instance>>,
    ) -> Vec<Arc<Instance>> {
        let mut instances = Vec::with_capacity(all.len());
        for (inst, state) in all.into_iter().zip(states) {
            if !state.is_out() || inst.health == Health::Critical {
                if !inner.held_out.is_empty() {
                    inner.held_out.remove(inst.id.as_str());
                }
                instances.push(inst);
                continue;
            }
            let copy = match inner.held_out.get(inst.id.as_str()) {
                Some((orig, copy)) if Arc::ptr_eq(orig, &inst) => copy.clone(),
                _ => {
                    let mut c = (*inst).clone();
                    c.checks.push(CheckState {
                        id: LANEWAY_CHECK_ID.to_string(),
                        name: "laneway upstream health".to_string(),
                        kind: CheckKind::Other,
                        status: Health::Critical,
                        output: state.out_reason().unwrap_or_default(),
                        ttl_ms: None,
                        spec: Default::default(),
                    });
                    c.refresh_health();
                    let c = Arc::new(c);
                    inner
                        .held_out
                        .insert(state.id.clone(), (inst.clone(), c.clone()));
                    c
                }
            };
            instances.push(copy);
        }
        instances
    }

    /// The states of every known instance (for the admin API and explain).
    pub fn get(&self, id: &str) -> Option<Arc<UpstreamState>> {
        self.inner.lock().ok()?.states.get(id).cloned()
    }

    /// Re-admits ejected instances whose backoff is over; returns whether
    /// any was, and when the next one is due.
    fn readmit_due(&self) -> (bool, Option<Duration>) {
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        let Ok(inner) = self.inner.lock() else {
            return (false, None);
        };
        let mut any = false;
        let mut next: Option<u64> = None;
        for s in inner.states.values() {
            if s.readmit_if_due(now_ms) {
                any = true;
            } else if s.ejected() {
                let until = s.until_ms.load(Ordering::Relaxed);
                next = Some(next.map_or(until, |n| n.min(until)));
            }
        }
        (
            any,
            next.map(|n| Duration::from_millis(n.saturating_sub(now_ms))),
        )
    }
}

/// Runs on the control plane: whenever an instance is ejected, re-admitted
/// or flips its active check, asks `changed` for a new snapshot; re-admits
/// ejected instances when their backoff ends.
pub async fn run(health: Arc<UpstreamHealth>, changed: impl Fn()) {
    loop {
        let (readmitted, next) = health.readmit_due();
        if readmitted {
            changed();
        }
        let wait = next.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = health.shared.events.notified() => changed(),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(n: u32) -> PassivePolicy {
        PassivePolicy {
            enabled: true,
            consecutive_failures: n,
            on_5xx: true,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
        }
    }

    fn inst(id: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: "svc".into(),
            address: "127.0.0.1".into(),
            port,
            version: Some("v1".into()),
            lane: None,
            tags: vec![],
            meta: Default::default(),
            weight_passing: 1,
            weight_warning: 1,
            health: Health::Passing,
            checks: vec![],
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy(1);
        let got: Vec<u64> = (1..=5).map(|s| backoff(&p, s).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let cfg = HealthChecksConfig {
            default_passive: policy(3),
            ..Default::default()
        };
        let h = UpstreamHealth::new(cfg, Arc::new(Metrics::new()));
        let s = h.state(&inst("a", 1));
        s.record_failure();
        s.record_failure();
        s.record_status(200);
        s.record_failure();
        s.record_status(502);
        assert!(!s.is_out(), "the success in between reset the count");
        s.record_failure();
        assert!(s.is_out() && s.ejected());
        assert!(s.out_reason().unwrap().contains("3 consecutive failures"));
        // the compiler sees it critical; the same copy in the next build
        let catalog = Catalog {
            instances: vec![Arc::new(inst("a", 1))],
        };
        let first = h.prepare(catalog.clone()).catalog;
        assert_eq!(first.instances[0].health, Health::Critical);
        let second = h.prepare(catalog.clone()).catalog;
        assert!(Arc::ptr_eq(&first.instances[0], &second.instances[0]));
        // not due yet
        assert!(!h.readmit_due().0);
        s.until_ms.store(0, Ordering::Relaxed);
        assert!(h.readmit_due().0);
        assert!(!s.is_out());
        let third = h.prepare(catalog).catalog;
        assert_eq!(third.instances[0].health, Health::Passing);
    }

    #[test]
    fn a_large_catalog_gets_one_state_per_instance_found_again_and_reported() {
        let metrics = Arc::new(Metrics::new());
        let h = UpstreamHealth::new(HealthChecksConfig::default(), metrics.clone());
        let n = PARALLEL_STATES + 5_000; // made on every core
        let catalog = Catalog {
            instances: (0..n)
                .map(|i| Arc::new(inst(&format!("i{i}"), (i % 60_000) as u16 + 1)))
                .collect(),
        };
        let first = h.prepare(catalog.clone()).states;
        assert!(first
            .iter()
            .zip(&catalog.instances)
            .all(|(s, i)| *s.id == *i.id && s.addr.map(|a| a.port()) == Some(i.port)));
        assert!(Arc::ptr_eq(&first[7], &h.get("i7").unwrap()));
        assert!(first
            .iter()
            .all(|s| &*s.service == "svc" && s.version.as_deref() == Some("v1")));
        // new `Arc`s of the same instances find the same states
        let again = Catalog {
            instances: catalog
                .instances
                .iter()
                .map(|i| Arc::new((**i).clone()))
                .collect(),
        };
        let found = h.prepare(again.clone());
        assert!(found
            .states
            .iter()
            .zip(first.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        // one series each, 0 for an instance held out
        first[3].set_active_down(true, "503");
        let values = metrics.upstream_health.values();
        assert_eq!(values.len(), n);
        assert_eq!(values.iter().filter(|v| v.3 == 0).count(), 1);
        assert!(values.contains(&("svc".into(), "v1".into(), "i3".into(), 0)));
        let held = h.prepare(again).catalog;
        assert_eq!(held.instances[3].health, Health::Critical);
        assert_eq!(held.instances[4].health, Health::Passing);
        h.prepare(Catalog::default());
        assert!(metrics.upstream_health.values().is_empty());
    }

    #[test]
    fn states_follow_the_catalog_in_order_through_changes() {
        let h = UpstreamHealth::new(HealthChecksConfig::default(), Arc::new(Metrics::new()));
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|id| Arc::new(inst(id, 1)));
        let catalog = |list: &[&Arc<Instance>]| Catalog {
            instances: list.iter().map(|i| Arc::clone(i)).collect(),
        };
        let first = h.prepare(catalog(&[&a, &c, &d])).states;
        assert_eq!(
            first.iter().map(|s| &*s.id).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        // b registered, d gone: a and c keep their states
        let second = h.prepare(catalog(&[&a, &b, &c])).states;
        assert_eq!(
            second.iter().map(|s| &*s.id).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert!(Arc::ptr_eq(&first[1], &second[2]));
        assert!(Arc::ptr_eq(&second[1], &h.get("b").unwrap()));
        assert!(h.get("d").is_none());
        // the same catalog: the same states
        let again = h.prepare(catalog(&[&a, &b, &c])).states;
        assert!(Arc::ptr_eq(&again, &second));
        // out of order (not as discovery sorts it): still found, by id
        let shuffled = h.prepare(catalog(&[&c, &a, &b])).states;
        assert!(Arc::ptr_eq(&shuffled[0], &second[2]));
        assert!(Arc::ptr_eq(&shuffled[1], &second[0]));
        assert!(Arc::ptr_eq(&shuffled[2], &second[1]));
    }

    #[test]
    fn a_changed_address_gets_a_new_state_and_gone_instances_are_forgotten() {
        let h = UpstreamHealth::new(HealthChecksConfig::default(), Arc::new(Metrics::new()));
        let a = h.state(&inst("a", 1));
        assert!(Arc::ptr_eq(&a, &h.state(&inst("a", 1))));
        assert!(!Arc::ptr_eq(&a, &h.state(&inst("a", 2))));
        h.prepare(Catalog::default());
        assert!(h.get("a").is_none());
    }
}
