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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{HealthChecksConfig, PassivePolicy};
use crate::discovery::{Catalog, CheckKind, CheckState, Health, Instance};
use crate::routing::hash::{FastMap, FastSet};
use crate::telemetry::Metrics;

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
    epoch: Instant,
    events: Arc<Notify>,
    ejections: Option<IntCounter>,
    gauge: Option<IntGauge>,
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
            epoch: Instant::now(),
            events: Arc::new(Notify::new()),
            ejections: None,
            gauge: None,
        }
    }

    /// Made by [`UpstreamState::detached`]: tracked by nobody.
    pub fn detached_state(&self) -> bool {
        self.gauge.is_none()
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
        let now = self.epoch.elapsed();
        self.until_ms
            .store((now + backoff).as_millis() as u64, Ordering::Relaxed);
        if let Some(c) = &self.ejections {
            c.inc();
        }
        if let Some(g) = &self.gauge {
            g.set(0);
        }
        warn!(instance = %self.id, service = %self.service, upstream = ?self.addr, failures = n, backoff_ms = backoff.as_millis() as u64, "instance ejected after consecutive failures");
        self.events.notify_one();
    }

    /// Re-admits the instance if its ejection is over; true if it was.
    fn readmit_if_due(&self, now_ms: u64) -> bool {
        if !self.ejected() || self.until_ms.load(Ordering::Relaxed) > now_ms {
            return false;
        }
        self.fails.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.set(i64::from(!self.active_down()));
        }
        info!(instance = %self.id, service = %self.service, "ejection over; instance takes traffic again");
        true
    }

    /// An active check result moved the instance in or out.
    fn set_active_down(&self, down: bool, why: &str) {
        self.active_down.store(down, Ordering::Relaxed);
        if let Ok(mut last) = self.last_check.lock() {
            why.clone_into(&mut last);
        }
        if let Some(g) = &self.gauge {
            g.set(i64::from(!down && !self.ejected()));
        }
        self.events.notify_one();
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
                .saturating_sub(self.epoch.elapsed().as_millis() as u64);
            return Some(format!(
                "ejected after {} consecutive failures; retried in {}",
                self.policy.consecutive_failures,
                humantime::format_duration(Duration::from_millis(left))
            ));
        }
        None
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
    epoch: Instant,
    events: Arc<Notify>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    states: HashMap<Arc<str>, Arc<UpstreamState>>,
    /// Instances held out, as the compiler sees them: the discovery
    /// instance and its `critical` copy (kept so that an unchanged held-out
    /// instance is the same `Arc` in every build).
    held_out: HashMap<Arc<str>, (Arc<Instance>, Arc<Instance>)>,
    checks: active::Checks,
    /// The last catalog's instances by address in memory, with their
    /// states: an instance that is the same `Arc` as last time needs no
    /// lookup by id and no check bookkeeping. Holding the `Arc` keeps the
    /// address from being reused by another instance.
    by_ptr: FastMap<usize, (Arc<Instance>, Arc<UpstreamState>)>,
}

impl UpstreamHealth {
    pub fn new(config: HealthChecksConfig, metrics: Arc<Metrics>) -> UpstreamHealth {
        UpstreamHealth {
            config,
            metrics,
            epoch: Instant::now(),
            events: Arc::new(Notify::new()),
            inner: Mutex::new(Inner::default()),
        }
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
        let addr = inst
            .address
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, inst.port));
        if let Some(s) = inner.states.get(inst.id.as_str()) {
            if s.addr == addr
                && *s.service == *inst.service
                && s.version.as_deref() == inst.version.as_deref()
            {
                return s.clone();
            }
        }
        let version = inst.version.as_deref().unwrap_or("-");
        let labels = [inst.service.as_str(), version, inst.id.as_str()];
        let gauge = self.metrics.upstream_health.with_label_values(&labels);
        gauge.set(1);
        let state = Arc::new(UpstreamState {
            id: Arc::from(inst.id.as_str()),
            service: Arc::from(inst.service.as_str()),
            version: inst.version.as_deref().map(Arc::from),
            addr,
            policy: self.config.passive_for(&inst.service),
            fails: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            last_check: Mutex::new(String::new()),
            epoch: self.epoch,
            events: self.events.clone(),
            ejections: Some(
                self.metrics
                    .upstream_ejections
                    .with_label_values(&[&inst.service, version]),
            ),
            gauge: Some(gauge),
        });
        if let Some(old) = inner.states.insert(state.id.clone(), state.clone()) {
            self.forget_gauge(&old);
        }
        state
    }

    fn forget_gauge(&self, s: &UpstreamState) {
        let version = s.version.as_deref().unwrap_or("-");
        // absent when it was never made: nothing to remove
        let _ = self
            .metrics
            .upstream_health
            .remove_label_values(&[&s.service, version, &s.id]);
    }

    /// The catalog as the compiler should see it: instances held out by a
    /// check or an ejection are `critical`. Also makes the states of new
    /// instances, forgets those of deregistered ones, and starts or stops
    /// their checker tasks. Call on the control runtime.
    pub fn prepare(self: &Arc<Self>, catalog: Catalog) -> Catalog {
        let Ok(mut guard) = self.inner.lock() else {
            return catalog;
        };
        let inner = &mut *guard;
        let mut by_ptr = FastMap::with_capacity_and_hasher(catalog.len(), Default::default());
        let mut changed = false;
        let mut instances = Vec::with_capacity(catalog.len());
        for inst in catalog.instances {
            let ptr = Arc::as_ptr(&inst) as usize;
            let state = match inner.by_ptr.get(&ptr) {
                Some((_, s)) => s.clone(),
                None => {
                    changed = true;
                    let state = self.state_locked(inner, &inst);
                    inner.checks.ensure(self, &inst, &state);
                    state
                }
            };
            by_ptr.insert(ptr, (inst.clone(), state.clone()));
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
        changed |= by_ptr.len() != inner.by_ptr.len() || by_ptr.len() != inner.states.len();
        inner.by_ptr = by_ptr;
        if !changed {
            return Catalog { instances };
        }
        let seen: FastSet<&str> = inner.by_ptr.values().map(|(_, s)| &*s.id).collect();
        let gone: Vec<Arc<str>> = inner
            .states
            .keys()
            .filter(|id| !seen.contains(&***id))
            .cloned()
            .collect();
        drop(seen);
        for id in gone {
            if let Some(s) = inner.states.remove(&id) {
                self.forget_gauge(&s);
            }
            inner.held_out.remove(&id);
            inner.checks.stop(&id);
        }
        Catalog { instances }
    }

    /// The states of every known instance (for the admin API and explain).
    pub fn get(&self, id: &str) -> Option<Arc<UpstreamState>> {
        self.inner.lock().ok()?.states.get(id).cloned()
    }

    /// Re-admits ejected instances whose backoff is over; returns whether
    /// any was, and when the next one is due.
    fn readmit_due(&self) -> (bool, Option<Duration>) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
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
            _ = health.events.notified() => changed(),
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
        let h = Arc::new(UpstreamHealth::new(cfg, Arc::new(Metrics::new())));
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
        let first = h.prepare(catalog.clone());
        assert_eq!(first.instances[0].health, Health::Critical);
        let second = h.prepare(catalog.clone());
        assert!(Arc::ptr_eq(&first.instances[0], &second.instances[0]));
        // not due yet
        assert!(!h.readmit_due().0);
        s.until_ms.store(0, Ordering::Relaxed);
        assert!(h.readmit_due().0);
        assert!(!s.is_out());
        let third = h.prepare(catalog);
        assert_eq!(third.instances[0].health, Health::Passing);
    }

    #[test]
    fn a_changed_address_gets_a_new_state_and_gone_instances_are_forgotten() {
        let h = Arc::new(UpstreamHealth::new(
            HealthChecksConfig::default(),
            Arc::new(Metrics::new()),
        ));
        let a = h.state(&inst("a", 1));
        assert!(Arc::ptr_eq(&a, &h.state(&inst("a", 1))));
        assert!(!Arc::ptr_eq(&a, &h.state(&inst("a", 2))));
        h.prepare(Catalog::default());
        assert!(h.get("a").is_none());
    }
}
