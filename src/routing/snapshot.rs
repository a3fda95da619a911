//! The compiled, immutable [`Snapshot`]: rules, lanes with their resolved
//! service → version targets, and load-balanced instance pools. Built on the
//! control plane by [`Snapshot::build`]; read on the request path through one
//! `ArcSwap::load` per request, with pure lookups only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{Histogram, IntCounter};

use crate::allocation::lanes::Lane;
use crate::discovery::{Catalog, Health, Instance};
use crate::routing::rules::RuleSet;
use crate::telemetry::{ClassCounters, Metrics};

pub use crate::allocation::lanes::BASELINE;

/// One immutable view of everything a request needs.
pub struct Snapshot {
    pub generation: u64,
    pub built_at: SystemTime,
    pub rules: Arc<RuleSet>,
    lanes: HashMap<Box<str>, Arc<LaneView>>,
    baseline: Arc<LaneView>,
    /// Every pool by key, kept so the next build can reuse unchanged pools
    /// (and their round-robin position).
    pools: HashMap<PoolKey, Arc<Pool>>,
    /// Lanes by their entries: VIP, port, and hostname (when the hostname
    /// template makes one other than `<lane>.<domain>`).
    entries: Entries,
}

#[derive(Default)]
struct Entries {
    vips: HashMap<std::net::IpAddr, Arc<LaneView>>,
    ports: HashMap<u16, Arc<LaneView>>,
    hostnames: HashMap<Box<str>, Arc<LaneView>>,
}

/// A lane as the data plane sees it.
pub struct LaneView {
    pub name: Arc<str>,
    pub strict: bool,
    /// Targets for every service that this lane or one of its ancestors
    /// overrides; any other service goes to the baseline's target.
    targets: HashMap<Arc<str>, Arc<Target>>,
    pub requests: ClassCounters,
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PoolKey {
    /// Instances of a service carrying exactly this version label.
    Version(Arc<str>, Arc<str>),
    /// A service's unpinned baseline: no version label or a baseline version.
    Baseline(Arc<str>),
}

/// A load-balanced set of healthy instances of one (service, version).
pub struct Pool {
    pub service: Arc<str>,
    pub version: Arc<str>,
    pub instances: Box<[Upstream]>,
    /// Smooth weighted round-robin order of instance indexes.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    pub requests: ClassCounters,
    pub duration: Histogram,
    pub connect_errors: IntCounter,
}

/// One healthy instance ready to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl Pool {
    /// The next instance in weighted round-robin order that `skip` does not
    /// reject (`skip` sees instance indexes, e.g. those already tried).
    pub fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| self.schedule[(start + i) % n] as usize)
            .find(|&idx| !skip(idx))
    }

    fn same_members(&self, members: &[Upstream]) -> bool {
        *self.instances == *members
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
}

impl Snapshot {
    /// A snapshot with no rules, no instances and only the baseline lane.
    pub fn empty(metrics: &Metrics) -> Snapshot {
        let baseline = Arc::new(LaneView {
            name: Arc::from(BASELINE),
            strict: false,
            targets: HashMap::new(),
            requests: ClassCounters::new(&metrics.lane_requests, &[BASELINE]),
        });
        let mut lanes = HashMap::new();
        lanes.insert(Box::from(BASELINE), baseline.clone());
        Snapshot {
            generation: 0,
            built_at: SystemTime::now(),
            rules: Arc::new(RuleSet::empty()),
            lanes,
            baseline,
            pools: HashMap::new(),
            entries: Entries::default(),
        }
    }

    /// Compiles rules, lanes and instances into a snapshot. Everything that
    /// can be computed ahead of a request is computed here.
    pub fn build(input: BuildInput<'_>) -> Snapshot {
        let m = input.metrics;
        let interner = Interner::default();

        // Healthy members grouped by pool key.
        let mut members: BTreeMap<PoolKey, Vec<Upstream>> = BTreeMap::new();
        let baseline_versions: BTreeSet<&str> =
            input.baseline_versions.iter().map(String::as_str).collect();
        let mut services: BTreeSet<Arc<str>> = BTreeSet::new();
        for inst in &input.catalog.instances {
            let service = interner.get(&inst.service);
            services.insert(service.clone());
            let Some(upstream) = upstream_of(inst) else {
                continue;
            };
            match inst.version.as_deref() {
                Some(v) => {
                    members
                        .entry(PoolKey::Version(service.clone(), interner.get(v)))
                        .or_default()
                        .push(upstream.clone());
                    if baseline_versions.contains(v) {
                        members
                            .entry(PoolKey::Baseline(service))
                            .or_default()
                            .push(upstream);
                    }
                }
                None => members
                    .entry(PoolKey::Baseline(service))
                    .or_default()
                    .push(upstream),
            }
        }
        for s in input.rules.services() {
            services.insert(interner.get(&s));
        }

        let mut pools: HashMap<PoolKey, Arc<Pool>> = HashMap::with_capacity(members.len());
        for (key, list) in members {
            let reused = input
                .previous
                .and_then(|p| p.pools.get(&key))
                .filter(|p| p.same_members(&list))
                .cloned();
            let pool = reused.unwrap_or_else(|| Arc::new(new_pool(&key, list, m)));
            pools.insert(key, pool);
        }

        let by_name: HashMap<&str, &Lane> =
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

        // The baseline target of every known service.
        let baseline_name: Arc<str> = Arc::from(BASELINE);
        let mut baseline_targets = HashMap::with_capacity(services.len());
        for s in &services {
            let target = match baseline_lane.and_then(|b| pins(b, s)) {
                Some(v) => resolver.pinned_baseline(s, v, &baseline_name),
                None => resolver.unpinned_baseline(s, &baseline_name, Choice::Baseline),
            };
            baseline_targets.insert(s.clone(), Arc::new(target));
        }
        let baseline = Arc::new(LaneView {
            name: baseline_name.clone(),
            strict: false,
            targets: baseline_targets,
            requests: ClassCounters::new(&m.lane_requests, &[BASELINE]),
        });

        let mut lanes: HashMap<Box<str>, Arc<LaneView>> = HashMap::new();
        let mut entries = Entries::default();
        lanes.insert(Box::from(BASELINE), baseline.clone());
        for lane in input.lanes {
            if lane.name == BASELINE {
                continue;
            }
            let chain = resolver.chain(lane);
            let overridden: BTreeSet<&str> = chain
                .iter()
                .filter(|l| l.name != BASELINE)
                .flat_map(|l| l.services.keys().map(String::as_str))
                .collect();
            let name: Arc<str> = interner.get(&lane.name);
            let mut targets = HashMap::with_capacity(overridden.len());
            for s in overridden {
                let target = resolver.resolve(lane, &chain, s, &baseline);
                targets.insert(interner.get(s), Arc::new(target));
            }
            let view = Arc::new(LaneView {
                requests: ClassCounters::new(&m.lane_requests, &[&lane.name]),
                name,
                strict: lane.strict,
                targets,
            });
            if let Some(vip) = lane.entries.vip {
                entries.vips.insert(vip, view.clone());
            }
            if let Some(port) = lane.entries.port {
                entries.ports.insert(port, view.clone());
            }
            if !lane.entries.hostname.is_empty() {
                entries.hostnames.insert(
                    Box::from(lane.entries.hostname.to_ascii_lowercase()),
                    view.clone(),
                );
            }
            lanes.insert(Box::from(lane.name.as_str()), view);
        }

        Snapshot {
            generation: input.generation,
            built_at: SystemTime::now(),
            rules: input.rules,
            lanes,
            baseline,
            pools,
            entries,
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

    /// Where a request of `lane` to `service` goes. `None` when the service
    /// has never been seen (no instance and no rule names it).
    pub fn target<'s>(&'s self, lane: &'s LaneView, service: &str) -> Option<&'s Arc<Target>> {
        lane.targets
            .get(service)
            .or_else(|| self.baseline.targets.get(service))
    }
}

struct Resolver<'a> {
    by_name: &'a HashMap<&'a str, &'a Lane>,
    pools: &'a HashMap<PoolKey, Arc<Pool>>,
    interner: &'a Interner,
}

impl Resolver<'_> {
    /// The lane and its ancestors, ending at the baseline (cycles and
    /// unknown parents, which the lane store rejects, end the chain).
    fn chain<'l>(&self, lane: &'l Lane) -> Vec<&'l Lane>
    where
        Self: 'l,
    {
        let mut chain = vec![lane];
        let mut seen: BTreeSet<&str> = BTreeSet::from([lane.name.as_str()]);
        let mut current = lane;
        while let Some(parent) = current.parent.as_deref() {
            match self.by_name.get(parent) {
                Some(p) if seen.insert(p.name.as_str()) => {
                    chain.push(p);
                    current = p;
                }
                _ => break,
            }
        }
        chain
    }

    fn version_pool(&self, service: &str, version: &str) -> Option<Arc<Pool>> {
        self.pools
            .get(&PoolKey::Version(
                self.interner.get(service),
                self.interner.get(version),
            ))
            .cloned()
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
                .get(&PoolKey::Baseline(service.clone()))
                .cloned()
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
            version: base.map_or_else(|| Arc::from(BASELINE), |t| t.version.clone()),
            served_by: Arc::from(BASELINE),
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

fn upstream_of(inst: &Instance) -> Option<Upstream> {
    if inst.health == Health::Critical {
        return None;
    }
    let weight = inst.weight();
    if weight == 0 {
        return None;
    }
    let addr = match inst.address.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, inst.port),
        Err(_) => match (inst.address.as_str(), inst.port).to_socket_addrs() {
            Ok(mut addrs) => addrs.next()?,
            Err(e) => {
                tracing::warn!(instance = %inst.id, address = %inst.address, error = %e, "cannot resolve instance address; skipped");
                return None;
            }
        },
    };
    Some(Upstream {
        id: Arc::from(inst.id.as_str()),
        addr,
        weight,
    })
}

fn new_pool(key: &PoolKey, mut members: Vec<Upstream>, m: &Metrics) -> Pool {
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let (service, version) = match key {
        PoolKey::Version(s, v) => (s.clone(), v.clone()),
        PoolKey::Baseline(s) => (s.clone(), Arc::from(BASELINE)),
    };
    let schedule = smooth_wrr(&members.iter().map(|u| u.weight).collect::<Vec<_>>());
    Pool {
        requests: ClassCounters::new(&m.upstream_requests, &[&service, &version]),
        duration: m.upstream_duration.with_label_values(&[&service, &version]),
        connect_errors: m
            .upstream_connect_errors
            .with_label_values(&[&service, &version]),
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

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Shares one `Arc<str>` per distinct name within a build.
#[derive(Default)]
struct Interner {
    names: std::cell::RefCell<BTreeSet<Arc<str>>>,
}

impl Interner {
    fn get(&self, s: &str) -> Arc<str> {
        let mut names = self.names.borrow_mut();
        if let Some(found) = names.get(s) {
            return found.clone();
        }
        let arc: Arc<str> = Arc::from(s);
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
}
