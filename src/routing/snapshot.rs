//! The compiled, immutable [`Snapshot`]: rules, lanes with their resolved
//! service → version targets, and load-balanced instance pools. Built on the
//! control plane by [`Snapshot::build`]; read on the request path through one
//! `ArcSwap::load` per request, with pure lookups only.
//!
//! A build with `previous` set reuses what did not change: pools whose
//! healthy members are the same (and so their round-robin position), the
//! targets of a lane whose chain resolves as before, whole lane views when
//! every target is reused, and each lane's pre-resolved request counters.
//! That keeps one registration's rebuild to hash lookups and pointer
//! comparisons for everything it does not touch.

mod explain;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{Histogram, IntCounter};

use crate::allocation::lanes::Lane;
use crate::discovery::{Catalog, Health, Instance};
use crate::routing::hash::{FastMap, FastSet};
use crate::routing::rules::RuleSet;
use crate::telemetry::{ClassCounters, Metrics};
use crate::upstream_health::UpstreamState;

pub use crate::allocation::lanes::BASELINE;

/// One immutable view of everything a request needs.
pub struct Snapshot {
    pub generation: u64,
    pub built_at: SystemTime,
    pub rules: Arc<RuleSet>,
    lanes: FastMap<Box<str>, Arc<LaneView>>,
    baseline: Arc<LaneView>,
    /// Every pool by service, kept so the next build can reuse unchanged
    /// pools (and their round-robin position). Every service known to the
    /// snapshot has an entry, possibly without pools.
    pools: FastMap<Arc<str>, Arc<ServicePools>>,
    /// The names this build shared, so that the next one shares the same.
    names: FastSet<Arc<str>>,
    /// `[lanes] baseline_versions` the pools were grouped with.
    baseline_versions: Box<[String]>,
    /// The lanes as given, to tell whether the next build's are the same.
    lane_defs: Box<[Lane]>,
    /// Lanes by their entries: VIP, port, and hostname (when the hostname
    /// template makes one other than `<lane>.<domain>`).
    entries: Entries,
}

#[derive(Default)]
struct Entries {
    vips: FastMap<std::net::IpAddr, Arc<LaneView>>,
    ports: FastMap<u16, Arc<LaneView>>,
    hostnames: FastMap<Box<str>, Arc<LaneView>>,
}

impl Entries {
    fn add(&mut self, lane: &Lane, view: &Arc<LaneView>) {
        if let Some(vip) = lane.entries.vip {
            self.vips.insert(vip, view.clone());
        }
        if let Some(port) = lane.entries.port {
            self.ports.insert(port, view.clone());
        }
        if !lane.entries.hostname.is_empty() {
            self.hostnames.insert(
                Box::from(lane.entries.hostname.to_ascii_lowercase()),
                view.clone(),
            );
        }
    }
}

/// The pools of one service, and the instances they were made from.
#[derive(Default)]
struct ServicePools {
    /// Every instance of the service (healthy or not), in catalog order.
    members: Box<[Arc<Instance>]>,
    /// Some member's address is a host name, resolved at build time: such a
    /// service is rebuilt every time, so that a changed DNS answer is seen.
    resolved_names: bool,
    /// The unpinned baseline: no version label or a baseline version.
    baseline: Option<Arc<Pool>>,
    /// By version label.
    versions: FastMap<Arc<str>, Arc<Pool>>,
}

impl ServicePools {
    /// Made from exactly these instances (the same `Arc`s, in order).
    fn made_from(&self, members: &[Member<'_>]) -> bool {
        !self.resolved_names
            && self.members.len() == members.len()
            && self
                .members
                .iter()
                .zip(members)
                .all(|(a, b)| Arc::ptr_eq(a, b.inst))
    }

    /// Groups the healthy members into pools, reusing `previous` pools whose
    /// members did not change.
    fn build(
        service: &Arc<str>,
        members: &[Member<'_>],
        baseline_versions: &FastSet<&str>,
        previous: Option<&ServicePools>,
        interner: &Interner<'_>,
        m: &Metrics,
    ) -> ServicePools {
        let mut resolved_names = false;
        let mut baseline = Vec::new();
        let mut versions: FastMap<&str, Vec<Upstream>> = FastMap::default();
        for &Member { inst, state } in members {
            let Some(upstream) = upstream_of(inst, &mut resolved_names, state) else {
                continue;
            };
            match inst.version.as_deref() {
                Some(v) => {
                    if baseline_versions.contains(v) {
                        baseline.push(upstream.clone());
                    }
                    versions.entry(v).or_default().push(upstream);
                }
                None => baseline.push(upstream),
            }
        }
        let baseline = (!baseline.is_empty()).then(|| {
            let old = previous.and_then(|p| p.baseline.as_ref());
            Pool::reuse_or_new(old, service, &interner.get(BASELINE), baseline, m)
        });
        let versions = versions
            .into_iter()
            .map(|(v, list)| {
                let old = previous.and_then(|p| p.versions.get(v));
                let version = interner.get(v);
                let pool = Pool::reuse_or_new(old, service, &version, list, m);
                (version, pool)
            })
            .collect();
        ServicePools {
            members: members.iter().map(|m| Arc::clone(m.inst)).collect(),
            resolved_names,
            baseline,
            versions,
        }
    }
}

/// A lane as the data plane sees it.
pub struct LaneView {
    pub name: Arc<str>,
    pub strict: bool,
    /// Targets for every service that this lane or one of its ancestors
    /// overrides; any other service goes to the baseline's target.
    targets: FastMap<Arc<str>, Arc<Target>>,
    pub requests: ClassCounters,
    /// Whole-request latency of the lane's requests.
    pub duration: Histogram,
}

/// Why a target was chosen for a (lane, service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The lane's own override.
    Override,
    /// An ancestor lane's override.
    Inherited,
    /// The lane (or an ancestor) overrides the service but that version has
    /// no healthy instance, so an ancestor's version serves it.
    Fallback,
    /// The service is not overridden anywhere in the chain.
    Baseline,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Override => "override",
            Choice::Inherited => "inherited",
            Choice::Fallback => "fallback",
            Choice::Baseline => "baseline",
        }
    }
}

/// Where requests of a lane to a service go.
pub struct Target {
    pub service: Arc<str>,
    /// The version label served (`"baseline"` for an unpinned baseline pool).
    pub version: Arc<str>,
    /// The lane whose choice is served.
    pub served_by: Arc<str>,
    pub choice: Choice,
    /// `Ok(pool)` with at least one healthy instance, or the 503 message.
    pub pool: Result<Arc<Pool>, Arc<str>>,
}

impl Target {
    /// Same choice, same version, same pool (the same `Arc`) or message.
    fn same_as(&self, other: &Target) -> bool {
        // names are shared between builds: pointers are usually equal
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        same(&self.service, &other.service)
            && same(&self.version, &other.version)
            && same(&self.served_by, &other.served_by)
            && self.choice == other.choice
            && match (&self.pool, &other.pool) {
                (Ok(a), Ok(b)) => Arc::ptr_eq(a, b),
                (Err(a), Err(b)) => a == b,
                _ => false,
            }
    }
}

/// A load-balanced set of healthy instances of one (service, version).
pub struct Pool {
    pub service: Arc<str>,
    pub version: Arc<str>,
    pub instances: Box<[Upstream]>,
    /// Smooth weighted round-robin order of instance indexes.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    vecs: PoolVecs,
    metrics: std::sync::OnceLock<PoolMetrics>,
}

/// The metric children of one (service, version) pool.
pub struct PoolMetrics {
    pub requests: ClassCounters,
    pub duration: Histogram,
    pub connect_errors: IntCounter,
}

/// Handles on the metric families a pool's children come from.
struct PoolVecs {
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    connect_errors: prometheus::IntCounterVec,
}

/// One healthy instance ready to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Its health as laneway sees it (active check, passive ejection),
    /// shared with the control plane; read and recorded with atomics.
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    /// The instance's id (its health state's).
    pub fn id(&self) -> &Arc<str> {
        &self.state.id
    }
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Upstream) -> bool {
        self.id() == other.id()
            && self.addr == other.addr
            && self.weight == other.weight
            && (Arc::ptr_eq(&self.state, &other.state)
                || (self.state.detached_state() && other.state.detached_state()))
    }
}

impl Eq for Upstream {}

impl Pool {
    /// The pool's metric children, made on its first request rather than
    /// at snapshot build: a 200,000-instance catalog has ~42,000 pools, and
    /// making their 7 children each up front was half of a cold build and
    /// most of the snapshot's memory. After the first request this is one
    /// atomic load; the registry lock is taken once per pool, never per
    /// request.
    pub fn metrics(&self) -> &PoolMetrics {
        self.metrics.get_or_init(|| {
            // the ejection series of the members' (service, version), so
            // that they are at 0 from the first request as the others are
            let mut versions: Vec<Option<&str>> = Vec::new();
            for u in self.instances.iter() {
                let v = u.state.version.as_deref();
                if !versions.contains(&v) {
                    versions.push(v);
                    u.state.show_ejections();
                }
            }
            let labels = [&*self.service, &*self.version];
            PoolMetrics {
                requests: ClassCounters::new(&self.vecs.requests, &labels),
                duration: self.vecs.duration.with_label_values(&labels),
                connect_errors: self.vecs.connect_errors.with_label_values(&labels),
            }
        })
    }

    /// The next instance in weighted round-robin order that `skip` does not
    /// reject (`skip` sees instance indexes, e.g. those already tried).
    /// Instances held out by a health check or an ejection are passed over
    /// while the snapshot that leaves them out is being built; if every
    /// other one is skipped, they are tried rather than none.
    pub fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let order = (0..n).map(|i| self.schedule[(start + i) % n] as usize);
        order
            .clone()
            .find(|&idx| !skip(idx) && !self.instances[idx].state.is_out())
            .or_else(|| order.clone().find(|&idx| !skip(idx)))
    }

    fn same_members(&self, members: &[Upstream]) -> bool {
        *self.instances == *members
    }

    /// The previous pool when its members are `members` (sorted by id),
    /// else a new one.
    fn reuse_or_new(
        previous: Option<&Arc<Pool>>,
        service: &Arc<str>,
        version: &Arc<str>,
        mut members: Vec<Upstream>,
        m: &Metrics,
    ) -> Arc<Pool> {
        members.sort_by(|a, b| a.id().cmp(b.id()));
        match previous {
            Some(p) if p.same_members(&members) => p.clone(),
            _ => Arc::new(new_pool(service, version, members, m)),
        }
    }
}

/// Inputs of one snapshot build.
pub struct BuildInput<'a> {
    pub generation: u64,
    pub rules: Arc<RuleSet>,
    pub lanes: &'a [Lane],
    pub catalog: &'a Catalog,
    /// Versions that put an instance in its service's unpinned baseline.
    pub baseline_versions: &'a [String],
    pub metrics: &'a Metrics,
    /// The snapshot being replaced, whose unchanged pools are reused.
    pub previous: Option<&'a Snapshot>,
    /// The health state of each instance of `catalog`, in the same order
    /// ([`UpstreamHealth::prepare`]); `None`: states nobody tracks (tests).
    pub states: Option<&'a [Arc<UpstreamState>]>,
}

impl Snapshot {
    /// A snapshot with no rules, no instances and only the baseline lane.
    pub fn empty(metrics: &Metrics) -> Snapshot {
        let baseline = Arc::new(LaneView {
            name: Arc::from(BASELINE),
            strict: false,
            targets: FastMap::default(),
            requests: ClassCounters::new(&metrics.lane_requests, &[BASELINE]),
            duration: metrics.request_duration.with_label_values(&[BASELINE]),
        });
        let mut lanes = FastMap::default();
        lanes.insert(Box::from(BASELINE), baseline.clone());
        Snapshot {
            generation: 0,
            built_at: SystemTime::now(),
            rules: Arc::new(RuleSet::empty()),
            lanes,
            baseline,
            pools: FastMap::default(),
            names: FastSet::default(),
            baseline_versions: Box::default(),
            lane_defs: Box::default(),
            entries: Entries::default(),
        }
    }

    /// Compiles rules, lanes and instances into a snapshot. Everything that
    /// can be computed ahead of a request is computed here.
    pub fn build(input: BuildInput<'_>) -> Snapshot {
        let m = input.metrics;
        let previous = input.previous;
        let interner = Interner {
            names: Default::default(),
            previous: previous.map(|p| &p.names),
        };
        // Every instance (with its state) by service; every service seen
        // (in an instance or a rule) gets an entry. The catalog is sorted by
        // id, so an instance's service is mostly the one before it.
        let states = input
            .states
            .filter(|s| s.len() == input.catalog.instances.len());
        let mut groups: Vec<(&str, Vec<Member<'_>>)> = Vec::new();
        let mut by_service: FastMap<&str, usize> = FastMap::default();
        let mut current: Option<(&str, usize)> = None;
        for (i, inst) in input.catalog.instances.iter().enumerate() {
            let service = inst.service.as_str();
            let at = match current {
                Some((s, at)) if s == service => at,
                _ => {
                    let at = *by_service.entry(service).or_insert_with(|| {
                        groups.push((service, Vec::new()));
                        groups.len() - 1
                    });
                    current = Some((service, at));
                    at
                }
            };
            groups[at].1.push(Member {
                inst,
                state: states.map(|s| &s[i]),
            });
        }
        let rule_services = input.rules.services();
        for s in &rule_services {
            by_service.entry(s).or_insert_with(|| {
                groups.push((s, Vec::new()));
                groups.len() - 1
            });
        }

        // A service whose instances are the same `Arc`s as last time keeps
        // its pools as they are; any other is grouped again.
        let baseline_versions: FastSet<&str> =
            input.baseline_versions.iter().map(String::as_str).collect();
        let same_grouping =
            previous.is_some_and(|p| *p.baseline_versions == *input.baseline_versions);
        let mut pools: FastMap<Arc<str>, Arc<ServicePools>> =
            FastMap::with_capacity_and_hasher(groups.len(), Default::default());
        let mut regroup: Vec<Regroup<'_>> = Vec::new();
        for (service, members) in groups {
            let before = previous.and_then(|p| p.pools.get(service));
            match before.filter(|b| same_grouping && b.made_from(&members)) {
                Some(b) => {
                    pools.insert(interner.get(service), b.clone());
                }
                None => regroup.push((service, members, before)),
            }
        }
        let group = |(service, members, before): Regroup<'_>| {
            let service = interner.get(service);
            let built = ServicePools::build(
                &service,
                &members,
                &baseline_versions,
                before.map(|b| &**b),
                &interner,
                m,
            );
            (service, Arc::new(built))
        };
        // A cold build groups every instance: spread it over the cores (it
        // happens at start, before the data plane serves). Small rebuilds
        // stay on this thread.
        let to_group: usize = regroup.iter().map(|(_, members, _)| members.len()).sum();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        if threads > 1 && to_group >= PARALLEL_GROUPING {
            let chunks = split_balanced(regroup, threads);
            let built: Vec<Vec<(Arc<str>, Arc<ServicePools>)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| scope.spawn(|| chunk.into_iter().map(group).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("snapshot grouping thread panicked"))
                    .collect()
            });
            pools.extend(built.into_iter().flatten());
        } else {
            pools.extend(regroup.into_iter().map(group));
        }
        drop(rule_services);
        let baseline_name = interner.get(BASELINE);

        let by_name: FastMap<&str, &Lane> =
            input.lanes.iter().map(|l| (l.name.as_str(), l)).collect();
        let baseline_lane = by_name.get(BASELINE).copied();
        fn pins<'l>(lane: &'l Lane, service: &str) -> Option<&'l str> {
            lane.services.get(service).map(String::as_str)
        }

        let resolver = Resolver {
            by_name: &by_name,
            pools: &pools,
            interner: &interner,
        };
        let reuse = Reuse {
            previous,
            metrics: m,
        };

        // A target can change only if its service's pools did (these
        // services: new, changed or gone) or a lane on its fallback chain
        // did. `None`: no previous snapshot, resolve everything.
        let changed: Option<FastSet<&str>> = previous.map(|p| {
            let mut changed: FastSet<&str> = pools
                .iter()
                .filter(|(s, now)| p.pools.get(&***s).is_none_or(|old| !Arc::ptr_eq(old, now)))
                .map(|(s, _)| &**s)
                .collect();
            changed.extend(
                p.pools
                    .keys()
                    .filter(|s| !pools.contains_key(&***s))
                    .map(|s| &**s),
            );
            changed
        });
        let pools_same = |service: &str| changed.as_ref().is_some_and(|c| !c.contains(service));
        // The lanes defined differently from the previous snapshot (new or
        // changed), unless all are the same (the common case: instances
        // changed, lanes did not). Compared once here, looked up per chain.
        let changed_lanes: Option<FastSet<&str>> =
            previous.filter(|p| *p.lane_defs != *input.lanes).map(|p| {
                let old: FastMap<&str, &Lane> =
                    p.lane_defs.iter().map(|l| (l.name.as_str(), l)).collect();
                input
                    .lanes
                    .iter()
                    .filter(|l| old.get(l.name.as_str()).is_none_or(|o| *o != *l))
                    .map(|l| l.name.as_str())
                    .collect()
            });
        let def_same = |lane: &Lane| match &changed_lanes {
            None => previous.is_some(),
            Some(changed) => !changed.contains(lane.name.as_str()),
        };
        // (a snapshot without a baseline definition is one built before
        // the lane store existed, e.g. in tests: nothing to compare)
        let baseline_same = baseline_lane.is_none_or(def_same);
        let unchanged = |service: &str| baseline_same && pools_same(service);

        // The baseline target of every known service.
        let previous_baseline = previous.map(|p| &p.baseline);
        let mut baseline_targets =
            FastMap::with_capacity_and_hasher(pools.len(), Default::default());
        for s in pools.keys() {
            let old = previous_baseline.and_then(|b| b.targets.get(s));
            if let Some(old) = old.filter(|_| unchanged(s)) {
                baseline_targets.insert(s.clone(), old.clone());
                continue;
            }
            let target = match baseline_lane.and_then(|b| pins(b, s)) {
                Some(v) => resolver.pinned_baseline(s, v, &baseline_name),
                None => resolver.unpinned_baseline(s, &baseline_name, Choice::Baseline),
            };
            baseline_targets.insert(s.clone(), Reuse::target(old, target));
        }
        let baseline = reuse.lane(&baseline_name, false, baseline_targets);

        let mut lanes: FastMap<Box<str>, Arc<LaneView>> =
            FastMap::with_capacity_and_hasher(input.lanes.len() + 1, Default::default());
        lanes.insert(Box::from(BASELINE), baseline.clone());
        let mut entries = Entries::default();
        let mut overridden: Vec<&str> = Vec::new();
        for lane in input.lanes {
            if lane.name == BASELINE {
                continue;
            }
            let old = previous.and_then(|p| p.lanes.get(lane.name.as_str()));
            let chain = resolver.chain(lane);
            // A lane whose chain (itself, its parents, the baseline) is
            // defined as before and whose services' pools are the same
            // keeps its view: a lane created or changed among thousands
            // resolves only the lanes that fall back to it.
            let reusable = |o: &&Arc<LaneView>| {
                o.targets.keys().all(|s| unchanged(s)) && chain.iter().all(|l| def_same(l))
            };
            if let Some(old) = old.filter(reusable) {
                entries.add(lane, old);
                lanes.insert(Box::from(lane.name.as_str()), old.clone());
                continue;
            }
            overridden.clear();
            overridden.extend(
                chain
                    .iter()
                    .filter(|l| l.name != BASELINE)
                    .flat_map(|l| l.services.keys().map(String::as_str)),
            );
            overridden.sort_unstable();
            overridden.dedup();
            let mut targets =
                FastMap::with_capacity_and_hasher(overridden.len(), Default::default());
            for s in &overridden {
                let target = resolver.resolve(lane, &chain, s, &baseline);
                let before = old.and_then(|o| o.targets.get(*s));
                targets.insert(interner.get(s), Reuse::target(before, target));
            }
            let name = interner.get(&lane.name);
            let view = reuse.lane(&name, lane.strict, targets);
            entries.add(lane, &view);
            lanes.insert(Box::from(lane.name.as_str()), view);
        }

        Snapshot {
            generation: input.generation,
            built_at: SystemTime::now(),
            rules: input.rules,
            lanes,
            baseline,
            pools,
            names: interner
                .names
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
            lane_defs: input.lanes.into(),
            entries,
            baseline_versions: input.baseline_versions.into(),
        }
    }

    /// The lane holding VIP `ip`.
    pub fn lane_by_vip(&self, ip: std::net::IpAddr) -> Option<&Arc<LaneView>> {
        self.entries.vips.get(&ip)
    }

    /// The lane holding pool port `port`.
    pub fn lane_by_port(&self, port: u16) -> Option<&Arc<LaneView>> {
        self.entries.ports.get(&port)
    }

    /// The lane whose entry hostname is exactly `host` (lowercase, no port).
    pub fn lane_by_hostname(&self, host: &str) -> Option<&Arc<LaneView>> {
        if self.entries.hostnames.is_empty() {
            return None;
        }
        self.entries.hostnames.get(host)
    }

    /// A lane by name, if it exists.
    pub fn lane(&self, name: &str) -> Option<&Arc<LaneView>> {
        self.lanes.get(name)
    }

    pub fn baseline(&self) -> &Arc<LaneView> {
        &self.baseline
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Names of the lanes in this snapshot.
    pub fn lane_names(&self) -> impl Iterator<Item = &str> {
        self.lanes.keys().map(|k| &**k)
    }

    /// Where a request of `lane` to `service` goes. `None` when the service
    /// has never been seen (no instance and no rule names it).
    pub fn target<'s>(&'s self, lane: &'s LaneView, service: &str) -> Option<&'s Arc<Target>> {
        lane.targets
            .get(service)
            .or_else(|| self.baseline.targets.get(service))
    }
}

/// What a build may take over from the snapshot it replaces.
struct Reuse<'a> {
    previous: Option<&'a Snapshot>,
    metrics: &'a Metrics,
}

impl Reuse<'_> {
    /// The previous target when it is the same, else the new one.
    fn target(previous: Option<&Arc<Target>>, target: Target) -> Arc<Target> {
        match previous {
            Some(p) if p.same_as(&target) => p.clone(),
            _ => Arc::new(target),
        }
    }

    /// The previous view of this lane when nothing in it changed; else a new
    /// view that keeps the previous one's request counters.
    fn lane(
        &self,
        name: &Arc<str>,
        strict: bool,
        targets: FastMap<Arc<str>, Arc<Target>>,
    ) -> Arc<LaneView> {
        let old = self.previous.and_then(|p| p.lanes.get(&**name));
        if let Some(old) = old {
            let same = old.strict == strict
                && old.targets.len() == targets.len()
                && targets
                    .iter()
                    .all(|(s, t)| old.targets.get(s).is_some_and(|o| Arc::ptr_eq(o, t)));
            if same {
                return old.clone();
            }
        }
        Arc::new(LaneView {
            requests: match old {
                Some(o) => o.requests.clone(),
                None => ClassCounters::new(&self.metrics.lane_requests, &[name]),
            },
            duration: match old {
                Some(o) => o.duration.clone(),
                None => self.metrics.request_duration.with_label_values(&[name]),
            },
            name: name.clone(),
            strict,
            targets,
        })
    }
}

struct Resolver<'a> {
    by_name: &'a FastMap<&'a str, &'a Lane>,
    pools: &'a FastMap<Arc<str>, Arc<ServicePools>>,
    interner: &'a Interner<'a>,
}

impl Resolver<'_> {
    /// The lane and its ancestors, ending at the baseline (cycles and
    /// unknown parents, which the lane store rejects, end the chain).
    fn chain<'l>(&self, lane: &'l Lane) -> Vec<&'l Lane>
    where
        Self: 'l,
    {
        let mut chain = vec![lane];
        let mut current = lane;
        while let Some(parent) = current.parent.as_deref() {
            match self.by_name.get(parent) {
                // chains are short: a linear check finds a cycle
                Some(p) if !chain.iter().any(|l| l.name == p.name) => {
                    chain.push(p);
                    current = p;
                }
                _ => break,
            }
        }
        chain
    }

    fn version_pool(&self, service: &str, version: &str) -> Option<Arc<Pool>> {
        self.pools.get(service)?.versions.get(version).cloned()
    }

    fn pinned_baseline(&self, service: &Arc<str>, version: &str, baseline: &Arc<str>) -> Target {
        Target {
            service: service.clone(),
            version: self.interner.get(version),
            served_by: baseline.clone(),
            choice: Choice::Baseline,
            pool: self.version_pool(service, version).ok_or_else(|| {
                Arc::from(format!(
                    "lane \"baseline\": version \"{version}\" of service \"{service}\" has no healthy instance"
                ))
            }),
        }
    }

    fn unpinned_baseline(&self, service: &Arc<str>, baseline: &Arc<str>, choice: Choice) -> Target {
        Target {
            service: service.clone(),
            version: baseline.clone(),
            served_by: baseline.clone(),
            choice,
            pool: self
                .pools
                .get(service)
                .and_then(|p| p.baseline.clone())
                .ok_or_else(|| {
                    Arc::from(format!(
                        "lane \"baseline\": service \"{service}\" has no healthy baseline instance"
                    ))
                }),
        }
    }

    /// Walks the chain for `service`: the first override with healthy
    /// instances wins; a strict lane answers 503 instead of falling back.
    fn resolve(&self, lane: &Lane, chain: &[&Lane], service: &str, baseline: &LaneView) -> Target {
        let service_arc = self.interner.get(service);
        let mut fell_back = false;
        for (depth, l) in chain.iter().enumerate() {
            if l.name == BASELINE {
                break;
            }
            let Some(version) = l.services.get(service) else {
                continue;
            };
            if let Some(pool) = self.version_pool(service, version) {
                let choice = match (fell_back, depth) {
                    (true, _) => Choice::Fallback,
                    (false, 0) => Choice::Override,
                    (false, _) => Choice::Inherited,
                };
                return Target {
                    service: service_arc,
                    version: self.interner.get(version),
                    served_by: self.interner.get(&l.name),
                    choice,
                    pool: Ok(pool),
                };
            }
            if lane.strict || l.strict {
                return Target {
                    service: service_arc,
                    version: self.interner.get(version),
                    served_by: self.interner.get(&l.name),
                    choice: if depth == 0 {
                        Choice::Override
                    } else {
                        Choice::Inherited
                    },
                    pool: Err(Arc::from(format!(
                        "lane \"{}\": version \"{version}\" of service \"{service}\" has no healthy instance (strict lane)",
                        lane.name
                    ))),
                };
            }
            fell_back = true;
        }
        // Nothing in the chain could serve: the baseline does.
        let base = baseline.targets.get(service);
        Target {
            service: service_arc.clone(),
            version: base.map_or_else(|| self.interner.get(BASELINE), |t| t.version.clone()),
            served_by: self.interner.get(BASELINE),
            choice: if fell_back {
                Choice::Fallback
            } else {
                Choice::Baseline
            },
            pool: match base {
                Some(t) => t.pool.clone(),
                None => Err(Arc::from(format!(
                    "lane \"{}\": service \"{service}\" has no healthy instance",
                    lane.name
                ))),
            },
        }
    }
}

/// An instance of the catalog and its health state, as a build groups them.
#[derive(Clone, Copy)]
struct Member<'a> {
    inst: &'a Arc<Instance>,
    state: Option<&'a Arc<UpstreamState>>,
}

/// The upstream of a healthy instance; sets `resolved_name` when its
/// address is a host name that had to be resolved.
fn upstream_of(
    inst: &Arc<Instance>,
    resolved_name: &mut bool,
    state: Option<&Arc<UpstreamState>>,
) -> Option<Upstream> {
    if inst.health == Health::Critical {
        return None;
    }
    let weight = inst.weight();
    if weight == 0 {
        return None;
    }
    let state = match state {
        Some(s) => s.clone(),
        None => Arc::new(UpstreamState::detached(&inst.id)),
    };
    // the state holds the address parsed when it was made (`None`: a host
    // name, or a state tracked by nobody)
    let addr = match state.addr {
        Some(addr) => addr,
        None => match inst.address.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, inst.port),
            Err(_) => {
                *resolved_name = true;
                match (inst.address.as_str(), inst.port).to_socket_addrs() {
                    Ok(mut addrs) => addrs.next()?,
                    Err(e) => {
                        tracing::warn!(instance = %inst.id, address = %inst.address, error = %e, "cannot resolve instance address; skipped");
                        return None;
                    }
                }
            }
        },
    };
    Some(Upstream {
        addr,
        weight,
        state,
    })
}

/// A pool of `members`, sorted by id.
fn new_pool(service: &Arc<str>, version: &Arc<str>, members: Vec<Upstream>, m: &Metrics) -> Pool {
    let (service, version) = (service.clone(), version.clone());
    let schedule = smooth_wrr(&members.iter().map(|u| u.weight).collect::<Vec<_>>());
    Pool {
        vecs: PoolVecs {
            requests: m.upstream_requests.clone(),
            duration: m.upstream_duration.clone(),
            connect_errors: m.upstream_connect_errors.clone(),
        },
        metrics: std::sync::OnceLock::new(),
        service,
        version,
        instances: members.into_boxed_slice(),
        schedule,
        cursor: AtomicUsize::new(fastrand::usize(..1024)),
    }
}

/// The smooth weighted round-robin order (as nginx's upstream module picks)
/// for these weights, one cycle long. Weights are divided by their common
/// divisor and scaled down so a cycle has at most 4096 slots.
fn smooth_wrr(weights: &[u32]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    if weights.iter().all(|&w| w == weights[0]) {
        // Equal weights: plain round-robin.
        return (0..weights.len() as u32).collect();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    const MAX_SLOTS: u64 = 4096;
    if total > MAX_SLOTS {
        for x in &mut w {
            *x = (*x * MAX_SLOTS / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &wi) in current.iter_mut().zip(&w) {
            *c += wi as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .expect("weights are not empty");
        current[best] -= total;
        order.push(best as u32);
    }
    order.into_boxed_slice()
}

/// A service to group again: its name, its instances, its previous pools.
type Regroup<'a> = (&'a str, Vec<Member<'a>>, Option<&'a Arc<ServicePools>>);

/// Instances to group in one build from which the grouping is spread over
/// threads (a cold build of a large catalog).
const PARALLEL_GROUPING: usize = 20_000;

/// Splits `items` into at most `n` chunks of about the same number of
/// instances.
fn split_balanced(items: Vec<Regroup<'_>>, n: usize) -> Vec<Vec<Regroup<'_>>> {
    let total: usize = items.iter().map(|(_, m, _)| m.len().max(1)).sum();
    let per = total.div_ceil(n).max(1);
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        if size >= per && chunks.len() < n {
            chunks.push(Vec::new());
            size = 0;
        }
        size += item.1.len().max(1);
        chunks.last_mut().expect("one chunk at least").push(item);
    }
    chunks
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Shares one `Arc<str>` per distinct name within a build, and with the
/// previous build: equal names are then the same `Arc`, which makes
/// comparing reused parts a pointer comparison.
struct Interner<'p> {
    names: std::sync::Mutex<FastSet<Arc<str>>>,
    previous: Option<&'p FastSet<Arc<str>>>,
}

impl Interner<'_> {
    fn get(&self, s: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = names.get(s) {
            return found.clone();
        }
        let arc: Arc<str> = match self.previous.and_then(|p| p.get(s)) {
            Some(old) => old.clone(),
            None => Arc::from(s),
        };
        names.insert(arc.clone());
        arc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, service: &str, version: Option<&str>, port: u16) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            version: version.map(Into::into),
            lane: None,
            tags: vec![],
            meta: Default::default(),
            weight_passing: 1,
            weight_warning: 1,
            health: Health::Passing,
            checks: vec![],
        })
    }

    fn lane(name: &str, parent: Option<&str>, services: &[(&str, &str)], strict: bool) -> Lane {
        Lane {
            name: name.into(),
            services: services
                .iter()
                .map(|(s, v)| (s.to_string(), v.to_string()))
                .collect(),
            parent: parent.map(Into::into),
            strict,
            created_at: 0,
            updated_at: 0,
            ..Default::default()
        }
    }

    fn build(lanes: &[Lane], instances: Vec<Arc<Instance>>, m: &Metrics) -> Snapshot {
        let catalog = Catalog { instances };
        Snapshot::build(BuildInput {
            generation: 1,
            rules: Arc::new(RuleSet::empty()),
            lanes,
            catalog: &catalog,
            baseline_versions: &["stable".to_string()],
            metrics: m,
            previous: None,
            states: None,
        })
    }

    fn served(s: &Snapshot, lane: &str, service: &str) -> (String, Choice, Result<u16, String>) {
        let l = s.lane(lane).expect("lane exists");
        let t = s.target(l, service).expect("service known");
        let port = t
            .pool
            .as_ref()
            .map(|p| p.instances[0].addr.port())
            .map_err(|e| e.to_string());
        (t.version.to_string(), t.choice, port)
    }

    #[test]
    fn lanes_override_inherit_fall_back_and_go_strict() {
        let m = Metrics::new();
        let lanes = vec![
            lane(BASELINE, None, &[], false),
            lane(
                "t-1",
                Some(BASELINE),
                &[("user", "v2"), ("order", "v9")],
                false,
            ),
            lane("t-2", Some("t-1"), &[], false),
            lane("t-3", Some(BASELINE), &[("user", "v9")], true),
        ];
        let s = build(
            &lanes,
            vec![
                inst("u1", "user", None, 1001),
                inst("u2", "user", Some("v2"), 1002),
                inst("o1", "order", Some("stable"), 2001),
            ],
            &m,
        );
        assert_eq!(
            served(&s, BASELINE, "user"),
            ("baseline".into(), Choice::Baseline, Ok(1001))
        );
        assert_eq!(
            served(&s, "t-1", "user"),
            ("v2".into(), Choice::Override, Ok(1002))
        );
        assert_eq!(
            served(&s, "t-2", "user"),
            ("v2".into(), Choice::Inherited, Ok(1002))
        );
        // order v9 has no instance: fall back to the stable baseline.
        assert_eq!(
            served(&s, "t-1", "order"),
            ("baseline".into(), Choice::Fallback, Ok(2001))
        );
        let (_, _, strict) = served(&s, "t-3", "user");
        let msg = strict.unwrap_err();
        assert!(
            msg.contains("t-3") && msg.contains("v9") && msg.contains("user"),
            "{msg}"
        );
        // Services a lane doesn't override resolve to the baseline's target.
        assert_eq!(served(&s, "t-3", "order").2, Ok(2001));
    }

    #[test]
    fn baseline_pin_and_critical_instances() {
        let m = Metrics::new();
        let mut down = (*inst("u3", "user", Some("v3"), 1003)).clone();
        down.health = Health::Critical;
        let lanes = vec![
            lane(BASELINE, None, &[("user", "v2")], false),
            lane("t-1", Some(BASELINE), &[("user", "v3")], false),
        ];
        let s = build(
            &lanes,
            vec![inst("u2", "user", Some("v2"), 1002), Arc::new(down)],
            &m,
        );
        assert_eq!(
            served(&s, BASELINE, "user"),
            ("v2".into(), Choice::Baseline, Ok(1002))
        );
        assert_eq!(
            served(&s, "t-1", "user"),
            ("v2".into(), Choice::Fallback, Ok(1002))
        );
    }

    #[test]
    fn smooth_wrr_spreads_by_weight() {
        let order = smooth_wrr(&[5, 1, 1]);
        assert_eq!(order.len(), 7);
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 5);
        // Smooth: the heavy instance is never picked 5 times in a row.
        assert_eq!(&order[..], &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[2, 2]).len(), 2);
    }

    #[test]
    fn pick_skips_tried_instances_and_rotates() {
        let m = Metrics::new();
        let s = build(
            &[lane(BASELINE, None, &[], false)],
            vec![inst("a", "svc", None, 1), inst("b", "svc", None, 2)],
            &m,
        );
        let t = s.target(s.baseline(), "svc").unwrap();
        let pool = t.pool.as_ref().unwrap();
        let first = pool.pick(|_| false).unwrap();
        let second = pool.pick(|_| false).unwrap();
        assert_ne!(first, second);
        assert_eq!(pool.pick(|i| i == 0), Some(1));
        assert_eq!(pool.pick(|_| true), None);
    }

    #[test]
    fn unchanged_pools_are_reused_across_builds() {
        let m = Metrics::new();
        let lanes = vec![lane(BASELINE, None, &[], false)];
        let catalog = Catalog {
            instances: vec![inst("a", "svc", None, 1)],
        };
        let first = build(&lanes, catalog.instances.clone(), &m);
        let second = Snapshot::build(BuildInput {
            generation: 2,
            rules: Arc::new(RuleSet::empty()),
            lanes: &lanes,
            catalog: &catalog,
            baseline_versions: &[],
            metrics: &m,
            previous: Some(&first),
            states: None,
        });
        let p1 = first
            .target(first.baseline(), "svc")
            .unwrap()
            .pool
            .clone()
            .unwrap();
        let p2 = second
            .target(second.baseline(), "svc")
            .unwrap()
            .pool
            .clone()
            .unwrap();
        assert!(Arc::ptr_eq(&p1, &p2));
    }

    fn rebuild(
        prev: &Snapshot,
        lanes: &[Lane],
        catalog: &Catalog,
        versions: &[String],
        m: &Metrics,
    ) -> Snapshot {
        Snapshot::build(BuildInput {
            generation: prev.generation + 1,
            rules: prev.rules.clone(),
            lanes,
            catalog,
            baseline_versions: versions,
            metrics: m,
            previous: Some(prev),
            states: None,
        })
    }

    fn pool_of(s: &Snapshot, lane: &str, service: &str) -> Arc<Pool> {
        let l = s.lane(lane).expect("lane");
        s.target(l, service)
            .expect("service")
            .pool
            .clone()
            .expect("healthy")
    }

    #[test]
    fn a_lane_change_reaches_the_lanes_that_fall_back_to_it() {
        let m = Metrics::new();
        let mut lanes = vec![
            lane(BASELINE, None, &[], false),
            lane("t-1", Some(BASELINE), &[("user", "v2")], false),
            lane("t-2", Some(BASELINE), &[("order", "v2")], false),
            lane("t-3", Some("t-1"), &[("order", "v2")], false),
        ];
        let catalog = Catalog {
            instances: vec![
                inst("o1", "order", Some("stable"), 2001),
                inst("o2", "order", Some("v2"), 2002),
                inst("u1", "user", Some("stable"), 1001),
                inst("u2", "user", Some("v2"), 1002),
                inst("u3", "user", Some("v3"), 1003),
            ],
        };
        let versions = ["stable".to_string()];
        let port = |s: &Snapshot, lane: &str, service: &str| {
            pool_of(s, lane, service).instances[0].addr.port()
        };
        let first = rebuild(
            &build(&lanes, catalog.instances.clone(), &m),
            &lanes,
            &catalog,
            &versions,
            &m,
        );
        assert_eq!(port(&first, "t-3", "user"), 1002, "inherited from t-1");

        // The parent changes: its child follows; an unrelated lane is kept.
        lanes[1] = lane("t-1", Some(BASELINE), &[("user", "v3")], false);
        let second = rebuild(&first, &lanes, &catalog, &versions, &m);
        assert_eq!(port(&second, "t-3", "user"), 1003);
        assert_eq!(port(&second, "t-3", "order"), 2002);
        assert!(Arc::ptr_eq(
            second.lane("t-2").expect("t-2"),
            first.lane("t-2").expect("t-2")
        ));

        // The baseline pins a version: every lane without an override of
        // its own follows.
        lanes[0] = lane(BASELINE, None, &[("user", "v2")], false);
        let third = rebuild(&second, &lanes, &catalog, &versions, &m);
        assert_eq!(port(&third, "t-2", "user"), 1002);
        assert_eq!(port(&third, "t-3", "user"), 1003);

        // A new lane leaves the others as they were.
        lanes.push(lane("t-4", Some("t-2"), &[], true));
        let fourth = rebuild(&third, &lanes, &catalog, &versions, &m);
        assert_eq!(port(&fourth, "t-4", "order"), 2002);
        for name in ["t-1", "t-2", "t-3"] {
            assert!(Arc::ptr_eq(
                fourth.lane(name).expect("lane"),
                third.lane(name).expect("lane")
            ));
        }
    }

    #[test]
    fn unchanged_lanes_and_services_are_reused_changed_ones_rebuilt() {
        let m = Metrics::new();
        let lanes = vec![
            lane(BASELINE, None, &[], false),
            lane("t-1", Some(BASELINE), &[("user", "v2")], false),
            lane("t-2", Some(BASELINE), &[("order", "v2")], false),
            lane("t-3", Some("t-1"), &[], false),
        ];
        let mut instances = vec![
            inst("o1", "order", Some("stable"), 2001),
            inst("o2", "order", Some("v2"), 2002),
            inst("u1", "user", Some("stable"), 1001),
            inst("u2", "user", Some("v2"), 1002),
        ];
        let versions = ["stable".to_string()];
        let first = build(&lanes, instances.clone(), &m);
        first.lane("t-1").expect("t-1").requests.inc(200);

        // Nothing changed: every lane view is the same.
        let catalog = Catalog {
            instances: instances.clone(),
        };
        let second = rebuild(&first, &lanes, &catalog, &versions, &m);
        for name in [BASELINE, "t-1", "t-2", "t-3"] {
            assert!(
                Arc::ptr_eq(
                    first.lane(name).expect("lane"),
                    second.lane(name).expect("lane")
                ),
                "{name} reused"
            );
        }

        // user v2 moves to another port: user's pools and the lanes that
        // serve user v2 are rebuilt; order and t-2 are kept.
        instances[3] = inst("u2", "user", Some("v2"), 1012);
        let catalog = Catalog {
            instances: instances.clone(),
        };
        let third = rebuild(&second, &lanes, &catalog, &versions, &m);
        assert_eq!(
            pool_of(&third, "t-1", "user").instances[0].addr.port(),
            1012
        );
        assert_eq!(
            pool_of(&third, "t-3", "user").instances[0].addr.port(),
            1012
        );
        assert!(!Arc::ptr_eq(
            second.lane("t-1").unwrap(),
            third.lane("t-1").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            second.lane("t-3").unwrap(),
            third.lane("t-3").unwrap()
        ));
        assert!(Arc::ptr_eq(
            second.lane("t-2").unwrap(),
            third.lane("t-2").unwrap()
        ));
        assert!(Arc::ptr_eq(
            &pool_of(&second, "t-2", "order"),
            &pool_of(&third, "t-2", "order")
        ));
        // the baseline's user pool (u1) did not change and is kept
        assert!(Arc::ptr_eq(
            &pool_of(&second, BASELINE, "user"),
            &pool_of(&third, BASELINE, "user")
        ));
        // a rebuilt lane view keeps counting into the same counters
        let counter = &third.lane("t-1").unwrap().requests.0[1];
        assert_eq!(counter.get(), 1);

        // A lane definition change rebuilds that lane only.
        let mut changed = lanes.clone();
        changed[2] = lane("t-2", Some(BASELINE), &[("order", "v9")], false);
        let fourth = rebuild(&third, &changed, &catalog, &versions, &m);
        assert_eq!(served(&fourth, "t-2", "order").1, Choice::Fallback);
        assert!(Arc::ptr_eq(
            third.lane("t-1").unwrap(),
            fourth.lane("t-1").unwrap()
        ));

        // Other baseline versions regroup every service.
        let fifth = rebuild(&fourth, &changed, &catalog, &[], &m);
        let msg = served(&fifth, BASELINE, "user").2.unwrap_err();
        assert!(msg.contains("no healthy baseline instance"), "{msg}");
    }

    #[test]
    fn services_with_host_name_addresses_are_resolved_at_every_build() {
        let m = Metrics::new();
        let lanes = vec![lane(BASELINE, None, &[], false)];
        let mut named = (*inst("n1", "named", None, 80)).clone();
        named.address = "localhost".into();
        let catalog = Catalog {
            instances: vec![Arc::new(named), inst("p1", "plain", None, 81)],
        };
        let first = build(&lanes, catalog.instances.clone(), &m);
        let second = rebuild(&first, &lanes, &catalog, &["stable".to_string()], &m);
        let pools = |s: &Snapshot, name: &str| s.pools.get(name).cloned().expect("service");
        assert!(Arc::ptr_eq(
            &pools(&first, "plain"),
            &pools(&second, "plain")
        ));
        assert!(!Arc::ptr_eq(
            &pools(&first, "named"),
            &pools(&second, "named")
        ));
        // its pool's members did not change, so the pool itself is kept
        if first.pools["named"].baseline.is_some() {
            assert!(Arc::ptr_eq(
                &pool_of(&first, BASELINE, "named"),
                &pool_of(&second, BASELINE, "named")
            ));
        }
    }

    #[test]
    fn services_that_appear_or_vanish_reach_unchanged_lanes() {
        let m = Metrics::new();
        let versions = ["stable".to_string()];
        let lanes = vec![
            lane(BASELINE, None, &[], false),
            lane("t-1", Some(BASELINE), &[("new", "v1")], false),
            lane("t-2", Some("t-1"), &[], false),
        ];
        let first = build(&lanes, vec![inst("u1", "user", None, 1001)], &m);
        assert!(first
            .target(first.lane("t-2").unwrap(), "new")
            .unwrap()
            .pool
            .is_err());

        let catalog = Catalog {
            instances: vec![
                inst("n1", "new", Some("v1"), 3001),
                inst("u1", "user", None, 1001),
            ],
        };
        let second = rebuild(&first, &lanes, &catalog, &versions, &m);
        assert_eq!(
            served(&second, "t-2", "new"),
            ("v1".into(), Choice::Inherited, Ok(3001))
        );

        let catalog = Catalog {
            instances: vec![inst("u1", "user", None, 1001)],
        };
        let third = rebuild(&second, &lanes, &catalog, &versions, &m);
        let t = third.target(third.lane("t-2").unwrap(), "new").unwrap();
        assert!(t.pool.is_err(), "the service is gone");
        assert!(third.target(third.baseline(), "new").is_none());
    }

    #[test]
    fn entries_follow_reused_lane_views() {
        let m = Metrics::new();
        let versions = ["stable".to_string()];
        let mut t1 = lane("t-1", Some(BASELINE), &[("user", "v2")], false);
        t1.entries.port = Some(9001);
        t1.entries.vip = Some("127.0.0.9".parse().expect("ip"));
        t1.entries.hostname = "T-1.Qa.Test".into();
        let lanes = vec![lane(BASELINE, None, &[], false), t1];
        let catalog = Catalog {
            instances: vec![inst("u2", "user", Some("v2"), 1002)],
        };
        let first = build(&lanes, catalog.instances.clone(), &m);
        let second = rebuild(&first, &lanes, &catalog, &versions, &m);
        let view = second.lane("t-1").expect("lane");
        assert!(
            Arc::ptr_eq(view, first.lane("t-1").expect("lane")),
            "reused"
        );
        for found in [
            second.lane_by_port(9001),
            second.lane_by_vip("127.0.0.9".parse().expect("ip")),
            second.lane_by_hostname("t-1.qa.test"),
        ] {
            assert!(found.is_some_and(|l| Arc::ptr_eq(l, view)));
        }
        assert!(second.lane_by_port(9002).is_none());
    }
}
