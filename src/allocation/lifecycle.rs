//! The life of a lane's entries in the lane store: allocation from the
//! pools, quarantine on release, leases (TTL, extend, expiry) and the lanes
//! created for registered instances (auto lanes). Control plane only:
//! synchronous, called with the store behind its `tokio::sync::Mutex`, with
//! the time passed in so tests need not wait.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::lanes::{
    lease_end, Change, CreateOutcome, Entries, Lane, LaneError, LaneStore, Quarantined, BASELINE,
};
use super::pools::{allocate, AllocationError, Holder};

/// What a sweep of expired leases did.
#[derive(Debug, Default)]
pub struct Expiry {
    /// Lanes released because their lease ended.
    pub released: Vec<Lane>,
    /// Lanes whose lease ended but that are still the parent of another
    /// lane; they are released once their children are gone.
    pub blocked: Vec<String>,
}

impl LaneStore {
    /// Who holds each VIP (`vip = true`) or port: live lanes, then unexpired
    /// quarantine records.
    fn holders<T: Ord + Copy>(
        &self,
        now_ms: u64,
        of_lane: impl Fn(&Entries) -> Option<T>,
        of_record: impl Fn(&Quarantined) -> Option<T>,
    ) -> BTreeMap<T, Holder> {
        let mut holders = BTreeMap::new();
        for q in &self.quarantine {
            if let Some(entry) = of_record(q).filter(|_| !ended(q.until, now_ms)) {
                holders.insert(
                    entry,
                    Holder::Quarantined {
                        lane: q.lane.clone(),
                        until: q.until,
                    },
                );
            }
        }
        for lane in self.lanes.values() {
            if let Some(entry) = of_lane(&lane.entries) {
                holders.insert(entry, Holder::Lane(lane.name.clone()));
            }
        }
        holders
    }

    /// The VIP and port an existing lane should hold: what it holds, plus
    /// the lowest free entry of each pool it `want`s one from.
    pub(super) fn fill_missing(
        &self,
        name: &str,
        entries: &Entries,
        want_vip: bool,
        want_port: bool,
        now_ms: u64,
    ) -> Result<(Option<IpAddr>, Option<u16>), AllocationError> {
        let vip = if want_vip {
            let vips = self.holders(now_ms, |e| e.vip, |q| q.vip);
            allocate(self.pools.vip.as_ref(), &vips, name, None)?
        } else {
            entries.vip
        };
        let port = if want_port {
            let ports = self.holders(now_ms, |e| e.port, |q| q.port);
            allocate(self.pools.port.as_ref(), &ports, name, None)?
        } else {
            entries.port
        };
        Ok((vip, port))
    }

    /// Chooses the entries of a new lane `name` (see
    /// [`allocate`](super::pools::allocate)) and returns them with the
    /// quarantine minus what was given back to it. Changes nothing.
    pub(super) fn allocate_entries(
        &self,
        name: &str,
        vip: Option<IpAddr>,
        port: Option<u16>,
        now_ms: u64,
    ) -> Result<(Entries, Vec<Quarantined>), LaneError> {
        let wrap = |source| LaneError::Allocation {
            lane: name.to_owned(),
            source,
        };
        let vips = self.holders(now_ms, |e| e.vip, |q| q.vip);
        let pick_vip = || allocate(self.pools.vip.as_ref(), &vips, name, vip).map_err(wrap);
        let ports = self.holders(now_ms, |e| e.port, |q| q.port);
        let pick_port = || allocate(self.pools.port.as_ref(), &ports, name, port).map_err(wrap);
        // A requested entry is checked first, so a bad request is reported
        // as such even when the other pool is full.
        let (vip, port) = if port.is_some() && vip.is_none() {
            let port = pick_port()?;
            (pick_vip()?, port)
        } else {
            (pick_vip()?, pick_port()?)
        };
        let mut quarantine = self.quarantine.clone();
        quarantine.retain(|q| !ended(q.until, now_ms));
        for q in quarantine.iter_mut().filter(|q| q.lane == name) {
            if vip.is_some() && q.vip == vip {
                q.vip = None;
            }
            if port.is_some() && q.port == port {
                q.port = None;
            }
        }
        quarantine.retain(|q| q.vip.is_some() || q.port.is_some());
        let entries = Entries {
            vip,
            port,
            hostname: self.pools.hostname(name),
        };
        Ok((entries, quarantine))
    }

    /// The quarantine record for the entries of `lane`, released at
    /// `now_ms`; none when it holds no VIP/port or the quarantine is zero.
    pub(super) fn quarantine_record(&self, lane: &Lane, now_ms: u64) -> Option<Quarantined> {
        let q = self.pools.quarantine;
        if q.is_zero() || (lane.entries.vip.is_none() && lane.entries.port.is_none()) {
            return None;
        }
        let until_ms = now_ms.saturating_add(u64::try_from(q.as_millis()).unwrap_or(u64::MAX));
        Some(Quarantined {
            lane: lane.name.clone(),
            vip: lane.entries.vip,
            port: lane.entries.port,
            released_at: now_ms / 1000,
            until: until_ms.saturating_add(999) / 1000,
        })
    }

    /// Releases every lane whose lease has ended at `now_ms`, its entries
    /// into quarantine, in one write. A lane that is still another lane's
    /// parent stays until its children are gone.
    pub fn expire_at(&mut self, now_ms: u64) -> Result<Expiry, LaneError> {
        let due: BTreeSet<String> = self
            .lanes
            .values()
            .filter(|l| l.name != BASELINE && l.expires_at.is_some_and(|e| ended(e, now_ms)))
            .map(|l| l.name.clone())
            .collect();
        if due.is_empty() {
            return Ok(Expiry::default());
        }
        // How many lanes fall back to each lane.
        let mut children: BTreeMap<&str, usize> = BTreeMap::new();
        for parent in self.lanes.values().filter_map(|l| l.parent.as_deref()) {
            *children.entry(parent).or_default() += 1;
        }
        let mut quarantine = self.quarantine.clone();
        let mut released = Vec::new();
        let mut gone: BTreeSet<&str> = BTreeSet::new();
        // Leaves first: a due parent goes in the same sweep as its due children.
        loop {
            let leaf = due.iter().find(|name| {
                !gone.contains(name.as_str()) && children.get(name.as_str()).is_none_or(|&n| n == 0)
            });
            let Some(name) = leaf else { break };
            gone.insert(name);
            if let Some(lane) = self.lanes.get(name) {
                if let Some(n) = lane.parent.as_deref().and_then(|p| children.get_mut(p)) {
                    *n -= 1;
                }
                quarantine.extend(self.quarantine_record(lane, now_ms));
                released.push(lane.clone());
            }
        }
        let blocked = due
            .iter()
            .filter(|n| !gone.contains(n.as_str()))
            .cloned()
            .collect();
        if !released.is_empty() {
            self.commit(Change {
                delete: released.iter().map(|l| l.name.clone()).collect(),
                quarantine: Some(quarantine),
                ..Change::default()
            })?;
        }
        Ok(Expiry { released, blocked })
    }

    /// Ends the quarantine of every record due at `now_ms` and returns them.
    pub fn end_quarantine_at(&mut self, now_ms: u64) -> Result<Vec<Quarantined>, LaneError> {
        let (ended_now, kept): (Vec<Quarantined>, Vec<Quarantined>) = self
            .quarantine
            .iter()
            .cloned()
            .partition(|q| ended(q.until, now_ms));
        if !ended_now.is_empty() {
            self.commit(Change {
                quarantine: Some(kept),
                ..Change::default()
            })?;
        }
        Ok(ended_now)
    }

    /// Renews the lease of `name`: it now ends `ttl` after `now_ms`. Without
    /// `ttl`, the lane's own lease length (or `[lanes] default_ttl`).
    pub fn extend_at(
        &mut self,
        name: &str,
        ttl: Option<u64>,
        now_ms: u64,
    ) -> Result<Lane, LaneError> {
        if name == BASELINE {
            return Err(LaneError::Invalid(format!(
                "lane \"{BASELINE}\" has no lease: it is never released"
            )));
        }
        let current = self
            .lanes
            .get(name)
            .ok_or_else(|| LaneError::NotFound(format!("lane {name:?} does not exist")))?;
        let ttl = ttl
            .or(current.ttl_seconds)
            .or(self.pools.default_ttl.map(|d| d.as_secs().max(1)))
            .ok_or_else(|| {
                LaneError::Invalid(format!(
                    "lane {name:?} has no lease to extend; send a ttl, e.g. {{\"ttl\":\"24h\"}}"
                ))
            })?;
        let mut lane = current.clone();
        lane.ttl_seconds = Some(ttl);
        lane.expires_at = Some(lease_end(now_ms, ttl));
        lane.updated_at = (now_ms / 1000).max(lane.created_at);
        self.commit(Change {
            put: vec![lane.clone()],
            ..Change::default()
        })?;
        Ok(lane)
    }

    /// Creates the auto lane `name` (parent: the baseline, no lease) for
    /// the instances that name it, with their versions and its entries.
    pub fn create_auto_at(
        &mut self,
        name: &str,
        services: BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<Lane, LaneError> {
        let spec = super::lanes::LaneSpec {
            name: name.to_owned(),
            services,
            ..Default::default()
        };
        match self.create_with(spec, now_ms, true)? {
            CreateOutcome::Created(lane) => Ok(lane),
            CreateOutcome::Existing(lane) => Err(LaneError::Conflict(format!(
                "lane {:?} already exists",
                lane.name
            ))),
        }
    }

    /// Merges `services` into the auto lane `name`; returns the lane when
    /// something changed. Manual lanes are never touched.
    pub fn merge_auto_services_at(
        &mut self,
        name: &str,
        services: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<Option<Lane>, LaneError> {
        let Some(current) = self.lanes.get(name).filter(|l| l.auto) else {
            return Ok(None);
        };
        let mut lane = current.clone();
        lane.services
            .extend(services.iter().map(|(s, v)| (s.clone(), v.clone())));
        if lane == *current {
            return Ok(None);
        }
        lane.updated_at = (now_ms / 1000).max(lane.created_at);
        self.commit(Change {
            put: vec![lane.clone()],
            ..Change::default()
        })?;
        Ok(Some(lane))
    }
}

/// True once `until` (Unix seconds) has passed at `now_ms`.
fn ended(until: u64, now_ms: u64) -> bool {
    now_ms >= until.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::path::Path;
    use std::time::Duration;

    use super::super::lanes::{LaneSpec, FILE_NAME};
    use super::super::pools::{Pools, PortPool, VipPool};
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn pools(vips: &[&str], ports: &str) -> Pools {
        Pools {
            vip: Some(VipPool::parse(vips).unwrap()),
            port: Some(PortPool::parse(ports).unwrap()),
            quarantine: Duration::from_secs(600),
            ..Pools::default()
        }
    }

    fn open_with(dir: &Path, pools: Pools) -> LaneStore {
        LaneStore::open(dir, pools).expect("open")
    }

    fn spec(json: &str) -> LaneSpec {
        serde_json::from_str(json).expect("valid spec json")
    }

    fn create(store: &mut LaneStore, json: &str, now: u64) -> Result<Lane, LaneError> {
        store
            .create_at(spec(json), now)
            .map(CreateOutcome::into_lane)
    }

    fn vip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn message(e: LaneError) -> String {
        e.to_string()
    }

    #[test]
    fn entries_are_the_lowest_free_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.9"], "20000-20009"));
        let a = create(&mut store, r#"{"name":"a"}"#, T0).unwrap();
        assert_eq!(
            (a.entries.vip, a.entries.port),
            (vip("10.0.0.1"), Some(20000))
        );
        assert_eq!(a.entries.hostname, "a.lanes.test");
        let b = create(
            &mut store,
            r#"{"name":"b","owner":"ann","labels":{"team":"pay"}}"#,
            T0,
        )
        .unwrap();
        assert_eq!(
            (b.entries.vip, b.entries.port),
            (vip("10.0.0.2"), Some(20001))
        );
        let again = store
            .create_at(
                spec(r#"{"name":"b","owner":"ann","labels":{"team":"pay"}}"#),
                T0 + 5,
            )
            .unwrap();
        assert_eq!(again, CreateOutcome::Existing(b.clone()));
        let e = create(
            &mut store,
            r#"{"name":"b","owner":"bob","vip":"10.0.0.5"}"#,
            T0,
        )
        .unwrap_err();
        let msg = message(e);
        for part in [
            "vip (10.0.0.2 now, 10.0.0.5 requested)",
            "owner (\"ann\" now, \"bob\" requested)",
            "labels",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // The baseline has a hostname but never a VIP or port.
        let base = store.get(BASELINE).unwrap();
        assert_eq!((base.entries.vip, base.entries.port), (None, None));
    }

    #[test]
    fn exhaustion_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.3"], "20000-20003"));
        for name in ["a", "b", "c"] {
            create(&mut store, &format!(r#"{{"name":"{name}"}}"#), T0).unwrap();
        }
        let before = (store.list(), store.quarantine().to_vec());
        let e = create(&mut store, r#"{"name":"d"}"#, T0).unwrap_err();
        assert!(matches!(&e, LaneError::Allocation { source, .. } if source.is_conflict()));
        assert_eq!(
            message(e),
            "lane \"d\": vip pool 10.0.0.1-10.0.0.3 is exhausted (3 entries in use or in quarantine); delete lanes or widen [lanes] vip_pool"
        );
        assert_eq!((store.list(), store.quarantine().to_vec()), before);
        assert_eq!(
            LaneStore::open(dir.path(), pools(&["10.0.0.1-10.0.0.3"], "20000-20003"))
                .unwrap()
                .list(),
            before.0,
            "nothing written"
        );

        // A free VIP but no free port: the VIP is not consumed either.
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.3"], "20000"));
        create(&mut store, r#"{"name":"a"}"#, T0).unwrap();
        let msg = message(create(&mut store, r#"{"name":"b"}"#, T0).unwrap_err());
        assert!(
            msg.contains("port pool 20000 is exhausted (1 entries"),
            "{msg}"
        );
        assert!(store.get("b").is_none());
        store.delete_at("a", T0).unwrap();
        store.end_quarantine_at(T0 + 601_000).unwrap();
        let b = create(&mut store, r#"{"name":"b"}"#, T0 + 601_000).unwrap();
        assert_eq!(
            b.entries.vip,
            vip("10.0.0.1"),
            "b's failed attempt held nothing"
        );
    }

    #[test]
    fn requested_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), pools(&["10.20.0.0/24"], "20000-20009"));
        let a = create(
            &mut store,
            r#"{"name":"a","vip":"10.20.0.7","port":20005}"#,
            T0,
        )
        .unwrap();
        assert_eq!(
            (a.entries.vip, a.entries.port),
            (vip("10.20.0.7"), Some(20005))
        );
        let e = create(&mut store, r#"{"name":"b","vip":"10.20.0.7"}"#, T0).unwrap_err();
        assert!(message(e).contains("vip 10.20.0.7 is taken by lane \"a\""));
        let e = create(&mut store, r#"{"name":"b","port":20005}"#, T0).unwrap_err();
        assert!(message(e).contains("port 20005 is taken by lane \"a\""));
        let e = create(&mut store, r#"{"name":"b","vip":"10.30.0.1"}"#, T0).unwrap_err();
        assert!(matches!(&e, LaneError::Allocation { source, .. } if !source.is_conflict()));
        assert!(message(e).contains("vip 10.30.0.1 is outside the vip pool 10.20.0.0/24"));
        assert!(store.get("b").is_none());
        let b = create(&mut store, r#"{"name":"b"}"#, T0).unwrap();
        assert_eq!(
            (b.entries.vip, b.entries.port),
            (vip("10.20.0.1"), Some(20000))
        );

        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), Pools::default());
        let e = create(&mut store, r#"{"name":"a","vip":"10.0.0.1"}"#, T0).unwrap_err();
        assert!(message(e).contains("no vip pool is configured"));
        let a = create(&mut store, r#"{"name":"a"}"#, T0).unwrap();
        assert_eq!((a.entries.vip, a.entries.port), (None, None));
    }

    #[test]
    fn quarantine_keeps_released_entries_for_their_lane() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.3"], "20000-20009"));
        create(&mut store, r#"{"name":"a"}"#, T0).unwrap();
        store.delete_at("a", T0 + 1000).unwrap();
        assert_eq!(store.quarantine().len(), 1);
        assert_eq!(store.quarantine()[0].until, T0 / 1000 + 1 + 600);
        // Another lane does not get a's VIP or port, even by asking.
        let b = create(&mut store, r#"{"name":"b"}"#, T0 + 2000).unwrap();
        assert_eq!(
            (b.entries.vip, b.entries.port),
            (vip("10.0.0.2"), Some(20001))
        );
        let msg = message(create(&mut store, r#"{"name":"c","vip":"10.0.0.1"}"#, T0).unwrap_err());
        assert!(
            msg.contains("released by lane \"a\" and is in quarantine until"),
            "{msg}"
        );
        create(&mut store, r#"{"name":"c"}"#, T0).unwrap();
        let msg = message(create(&mut store, r#"{"name":"d"}"#, T0).unwrap_err());
        assert!(
            msg.contains("exhausted (3 entries in use or in quarantine)"),
            "{msg}"
        );
        // The same name gets its entries back and the record goes.
        let a = create(&mut store, r#"{"name":"a"}"#, T0 + 3000).unwrap();
        assert_eq!(
            (a.entries.vip, a.entries.port),
            (vip("10.0.0.1"), Some(20000))
        );
        assert!(store.quarantine().is_empty());
        // After the quarantine ends the entries go to anyone.
        store.delete_at("a", T0 + 4000).unwrap();
        let until = store.quarantine()[0].until * 1000;
        assert!(store.end_quarantine_at(until - 1).unwrap().is_empty());
        assert_eq!(store.end_quarantine_at(until).unwrap().len(), 1);
        let d = create(&mut store, r#"{"name":"d"}"#, until).unwrap();
        assert_eq!(d.entries.vip, vip("10.0.0.1"));
        // Quarantine survives a restart.
        store.delete_at("d", until).unwrap();
        let reopened = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.3"], "20000-20009"));
        assert_eq!(reopened.quarantine(), store.quarantine());
    }

    #[test]
    fn leases_expire_extend_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pools(&["10.0.0.1-10.0.0.9"], "20000-20009");
        p.default_ttl = Some(Duration::from_secs(3600));
        let mut store = open_with(dir.path(), p);
        let a = create(&mut store, r#"{"name":"a","ttl":"2s"}"#, T0 + 500).unwrap();
        assert_eq!(
            (a.ttl_seconds, a.expires_at),
            (Some(2), Some(T0 / 1000 + 3))
        );
        let b = create(&mut store, r#"{"name":"b"}"#, T0).unwrap();
        assert_eq!(b.ttl_seconds, Some(3600), "default_ttl");
        assert!(store.expire_at(T0 + 2000).unwrap().released.is_empty());
        let gone = store.expire_at(T0 + 3000).unwrap();
        assert_eq!(
            gone.released
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert!(store.get("a").is_none());
        assert_eq!(
            store.quarantine()[0].vip,
            vip("10.0.0.1"),
            "released into quarantine"
        );

        let e = store.extend_at("nope", None, T0).unwrap_err();
        assert!(matches!(e, LaneError::NotFound(_)));
        let b = store.extend_at("b", Some(7200), T0 + 10_000).unwrap();
        assert_eq!(
            (b.ttl_seconds, b.expires_at),
            (Some(7200), Some(T0 / 1000 + 10 + 7200))
        );
        let b = store.extend_at("b", None, T0 + 20_000).unwrap();
        assert_eq!(
            b.expires_at,
            Some(T0 / 1000 + 20 + 7200),
            "renews by its own ttl"
        );

        // A parent whose lease ended waits for its children.
        create(&mut store, r#"{"name":"p","ttl":"1s"}"#, T0).unwrap();
        create(&mut store, r#"{"name":"k","parent":"p","ttl":"1h"}"#, T0).unwrap();
        let e = store.expire_at(T0 + 5000).unwrap();
        assert_eq!(
            (e.released.len(), e.blocked.clone()),
            (0, vec!["p".to_string()])
        );
        let e = store.expire_at(T0 + 3_601_000).unwrap();
        let names: Vec<&str> = e.released.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["k", "p"],
            "children first, parent in the same sweep"
        );

        for bad in [r#""0s""#, r#""soon""#, r#""500ms""#] {
            let msg = message(
                create(&mut store, &format!(r#"{{"name":"z","ttl":{bad}}}"#), T0).unwrap_err(),
            );
            assert!(msg.contains("at least 1s"), "{msg}");
        }
    }

    #[test]
    fn old_files_load_and_get_entries() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"lanes":[
            {"name":"baseline","services":{},"parent":null,"strict":false,"created_at":1,"updated_at":1},
            {"name":"t-1","services":{"web":"v2"},"parent":"baseline","strict":true,"created_at":1,"updated_at":1}]}"#;
        std::fs::write(dir.path().join(FILE_NAME), v1).unwrap();
        let store = open_with(dir.path(), pools(&["10.0.0.1-10.0.0.9"], "20000-20009"));
        let lane = store.get("t-1").unwrap();
        assert!(lane.strict && lane.services["web"] == "v2");
        assert_eq!(
            (lane.entries.vip, lane.entries.port),
            (vip("10.0.0.1"), Some(20000))
        );
        assert_eq!(lane.entries.hostname, "t-1.lanes.test");
        let written = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(written.contains("\"version\":3"), "{written}");
        drop(store);
        let store = open_with(dir.path(), Pools::default());
        assert_eq!(store.get("t-1").unwrap().entries.vip, vip("10.0.0.1"));

        // Without pools an old file loads unchanged apart from hostnames.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), v1).unwrap();
        let store = open_with(dir.path(), Pools::default());
        assert_eq!(store.get("t-1").unwrap().entries.vip, None);
    }

    #[test]
    fn entries_are_sticky_across_pool_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = pools(&["10.0.0.1-10.0.0.3"], "1");
        first.port = None;
        let mut store = open_with(dir.path(), first);
        let a = create(&mut store, r#"{"name":"a"}"#, T0).unwrap();
        assert_eq!((a.entries.vip, a.entries.port), (vip("10.0.0.1"), None));
        drop(store);
        // New VIP pool, a port pool added: a keeps its VIP and gets a port.
        let mut store = open_with(dir.path(), pools(&["10.0.1.1-10.0.1.3"], "21000-21009"));
        let a = store.get("a").unwrap().clone();
        assert_eq!(
            (a.entries.vip, a.entries.port),
            (vip("10.0.0.1"), Some(21000))
        );
        let b = create(&mut store, r#"{"name":"b"}"#, T0).unwrap();
        assert_eq!(
            (b.entries.vip, b.entries.port),
            (vip("10.0.1.1"), Some(21001))
        );
        // Persisted: a third open changes nothing.
        drop(store);
        let store = open_with(dir.path(), pools(&["10.0.1.1-10.0.1.3"], "21000-21009"));
        assert_eq!(store.get("a").unwrap().entries.port, Some(21000));
    }

    #[test]
    fn an_entry_held_twice_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"{"version":2,"lanes":[
            {"name":"baseline","services":{},"parent":null,"strict":false,"created_at":1,"updated_at":1},
            {"name":"a","services":{},"parent":"baseline","strict":false,"created_at":1,"updated_at":1,"entries":{"vip":"10.0.0.1","port":null,"hostname":"a"}},
            {"name":"b","services":{},"parent":"baseline","strict":false,"created_at":1,"updated_at":1,"entries":{"vip":"10.0.0.1","port":null,"hostname":"b"}}],"quarantine":[]}"#;
        std::fs::write(dir.path().join(FILE_NAME), body).unwrap();
        let msg = LaneStore::open(dir.path(), Pools::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "lanes.json is corrupt: vip 10.0.0.1 is held by both lane \"a\" and lane \"b\""
            ),
            "{msg}"
        );
        std::fs::write(dir.path().join(FILE_NAME), r#"{"version":4,"lanes":[]}"#).unwrap();
        let msg = LaneStore::open(dir.path(), Pools::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("format version 4"), "{msg}");
    }

    #[test]
    fn auto_lanes_have_no_default_lease_and_merge_services() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pools(&["10.0.0.1-10.0.0.9"], "20000-20009");
        p.default_ttl = Some(Duration::from_secs(60));
        let mut store = open_with(dir.path(), p);
        let services = BTreeMap::from([("web".to_string(), "v2".to_string())]);
        let lane = store.create_auto_at("t-auto", services, T0).unwrap();
        assert!(lane.auto && lane.expires_at.is_none());
        assert_eq!(lane.entries.vip, vip("10.0.0.1"));
        let more = BTreeMap::from([("api".to_string(), "v3".to_string())]);
        let lane = store
            .merge_auto_services_at("t-auto", &more, T0)
            .unwrap()
            .unwrap();
        assert_eq!(lane.services.len(), 2);
        assert!(
            store
                .merge_auto_services_at("t-auto", &more, T0)
                .unwrap()
                .is_none(),
            "no change, no write"
        );
        create(&mut store, r#"{"name":"manual"}"#, T0).unwrap();
        assert!(
            store
                .merge_auto_services_at("manual", &more, T0)
                .unwrap()
                .is_none(),
            "manual lanes untouched"
        );
        assert!(store
            .create_auto_at("Bad_Name", BTreeMap::new(), T0)
            .is_err());
    }
}
