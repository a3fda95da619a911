//! Auto lanes: a registered instance whose lane label (`Meta.lane`, key
//! `[discovery] lane_key`) names a lane that does not exist makes laneway
//! create that lane, with the versions of the instances that name it, and
//! allocate its entries; when the last such instance has been gone for
//! `[lanes] auto_lane_grace`, the lane is released. Control plane only:
//! called after every registry change and once a second by the reaper, with
//! the lane store locked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::lanes::{LaneStore, BASELINE};
use crate::discovery::Catalog;

/// What the reconciler remembers between runs (in memory only: after a
/// restart an orphaned auto lane gets a fresh grace period).
#[derive(Debug, Default)]
pub struct AutoLanes {
    /// Auto lanes without instances, and since when.
    orphaned: HashMap<String, Instant>,
    /// Problems already logged, so a retry every second does not flood the log.
    warned: HashSet<String>,
}

impl AutoLanes {
    /// Brings the auto lanes in line with `catalog`: creates the missing
    /// ones, adds the versions of new instances, and releases those whose
    /// instances have been gone for `grace`. Returns true if a lane changed
    /// (the snapshot must be rebuilt).
    pub fn reconcile(
        &mut self,
        store: &mut LaneStore,
        catalog: &Catalog,
        now: Instant,
        now_ms: u64,
        grace: Duration,
    ) -> bool {
        let mut changed = false;
        let wanted = lanes_of(catalog);
        for (name, versions) in &wanted {
            if name == BASELINE {
                continue;
            }
            let current = store.get(name);
            let services: BTreeMap<String, String> = versions
                .iter()
                .map(|(service, set)| {
                    let keep = current
                        .and_then(|l| l.services.get(service))
                        .filter(|v| set.contains(*v));
                    let version = keep.or_else(|| set.iter().next_back());
                    if set.len() > 1 {
                        self.warn_once(
                            format!("versions:{name}:{service}"),
                            || warn!(lane = %name, service = %service, versions = ?set, chosen = ?version, "instances of one auto lane carry several versions of a service"),
                        );
                    }
                    (service.clone(), version.cloned().unwrap_or_default())
                })
                .collect();
            match current {
                None => match store.create_auto_at(name, services, now_ms) {
                    Ok(lane) => {
                        info!(lane = %name, vip = ?lane.entries.vip, port = ?lane.entries.port, hostname = %lane.entries.hostname, services = ?lane.services, "auto lane created for registered instances");
                        self.warned.remove(&format!("create:{name}"));
                        changed = true;
                    }
                    Err(e) => self.warn_once(format!("create:{name}"), || {
                        warn!(lane = %name, error = %e, "cannot create the auto lane that registered instances name")
                    }),
                },
                Some(lane) if lane.auto => {
                    if self.orphaned.remove(name).is_some() {
                        info!(lane = %name, "auto lane has instances again; kept");
                    }
                    match store.merge_auto_services_at(name, &services, now_ms) {
                        Ok(Some(lane)) => {
                            info!(lane = %name, services = ?lane.services, "auto lane services updated");
                            changed = true;
                        }
                        Ok(None) => {}
                        Err(e) => warn!(lane = %name, error = %e, "cannot update the auto lane"),
                    }
                }
                Some(_) => {}
            }
        }
        let auto: Vec<String> = store
            .list()
            .into_iter()
            .filter(|l| l.auto && !wanted.contains_key(&l.name))
            .map(|l| l.name)
            .collect();
        self.orphaned.retain(|name, _| auto.contains(name));
        for name in auto {
            let since = *self.orphaned.entry(name.clone()).or_insert_with(|| {
                info!(lane = %name, grace = ?grace, "auto lane lost its last instance; released after the grace period");
                now
            });
            if now.duration_since(since) < grace {
                continue;
            }
            match store.delete_at(&name, now_ms) {
                Ok(lane) => {
                    info!(lane = %name, vip = ?lane.entries.vip, port = ?lane.entries.port, "auto lane released: no instance names it");
                    self.orphaned.remove(&name);
                    changed = true;
                }
                Err(e) => self.warn_once(
                    format!("release:{name}"),
                    || warn!(lane = %name, error = %e, "cannot release the auto lane"),
                ),
            }
        }
        changed
    }

    fn warn_once(&mut self, key: String, log: impl FnOnce()) {
        if self.warned.insert(key) {
            log();
        }
    }
}

/// lane → service → versions, from the instances that carry a lane label.
fn lanes_of(catalog: &Catalog) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for inst in &catalog.instances {
        let Some(lane) = inst
            .lane
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        else {
            continue;
        };
        let services = out.entry(lane.to_owned()).or_default();
        if let Some(version) = inst.version.as_deref().filter(|v| !v.is_empty()) {
            services
                .entry(inst.service.clone())
                .or_default()
                .insert(version.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::allocation::pools::{Pools, VipPool};
    use crate::discovery::{Health, Instance};

    fn inst(id: &str, service: &str, version: &str, lane: &str) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 1,
            version: Some(version.into()),
            lane: Some(lane.into()),
            tags: vec![],
            meta: BTreeMap::new(),
            weight_passing: 1,
            weight_warning: 1,
            health: Health::Passing,
            checks: vec![],
        })
    }

    fn catalog(mut instances: Vec<Arc<Instance>>) -> Catalog {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Catalog { instances }
    }

    #[test]
    fn creates_updates_and_releases_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pools = Pools {
            vip: Some(VipPool::parse(&["10.0.0.1-10.0.0.9"]).unwrap()),
            ..Pools::default()
        };
        let mut store = LaneStore::open(dir.path(), pools).unwrap();
        let mut auto = AutoLanes::default();
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let ms = 1_700_000_000_000;
        let c = catalog(vec![
            inst("w1", "web", "v2", "t-auto"),
            inst("w2", "web", "v2", "t-auto"),
            inst("bad", "web", "v2", "Not A Lane"),
            inst("base", "web", "v1", BASELINE),
        ]);
        assert!(auto.reconcile(&mut store, &c, t0, ms, grace));
        let lane = store.get("t-auto").expect("auto lane").clone();
        assert!(lane.auto);
        assert_eq!(lane.services, BTreeMap::from([("web".into(), "v2".into())]));
        assert_eq!(lane.entries.vip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            store.list().len(),
            2,
            "no lane for a bad name or the baseline"
        );
        assert!(
            !auto.reconcile(&mut store, &c, t0, ms, grace),
            "steady state"
        );

        let c = catalog(vec![
            inst("w1", "web", "v2", "t-auto"),
            inst("a1", "api", "v5", "t-auto"),
        ]);
        assert!(auto.reconcile(&mut store, &c, t0, ms, grace));
        assert_eq!(store.get("t-auto").unwrap().services.len(), 2);

        // Gone: kept during the grace, back in time cancels, then released.
        let empty = catalog(vec![]);
        assert!(!auto.reconcile(&mut store, &empty, t0, ms, grace));
        assert!(!auto.reconcile(&mut store, &c, t0 + grace, ms, grace));
        assert!(!auto.reconcile(&mut store, &empty, t0 + grace, ms, grace));
        assert!(store.get("t-auto").is_some());
        assert!(auto.reconcile(&mut store, &empty, t0 + grace * 2, ms, grace));
        assert!(store.get("t-auto").is_none());
        assert_eq!(store.quarantine()[0].vip, Some("10.0.0.1".parse().unwrap()));
        // Manual lanes are never released for lack of instances.
        store
            .create(serde_json::from_str(r#"{"name":"manual"}"#).unwrap())
            .unwrap();
        assert!(!auto.reconcile(&mut store, &empty, t0 + grace * 9, ms, grace));
        assert!(store.get("manual").is_some());
    }
}
