//! The lane store: every lane's service → version overrides, parent,
//! strictness, entries (VIP, port, hostname), lease and owner data, and the
//! quarantine of released entries, kept in `<data_dir>`, with the baseline
//! lane always present. Entry allocation, leases and auto lanes live in
//! [`lifecycle`](super::lifecycle). Control plane only: synchronous, called
//! with the store behind a `tokio::sync::Mutex`; the data plane sees lanes
//! through a compiled snapshot.
//!
//! On disk, with the registry's layout ([`journal`](super::journal)):
//! - `lanes.json`, the base: `{"version":3,"seq":N,"lanes":[…],"quarantine":[…]}`,
//!   one lane per line, replaced atomically;
//! - `lanes.journal`, the changes since: one record per line,
//!   `{"seq":N+1,"put":[lane…],"delete":[name…],"unquarantine":[…],"quarantine":[…]}`.
//!
//! Every mutation is validated, appended to the journal and fsync'd, and
//! only then applied in memory and acknowledged, so a failed write leaves
//! memory as it was and an acknowledged one survives a crash. A change
//! writes only the lanes it touches (~250 bytes for a create), where the
//! format before version 3 rewrote and fsync'd the whole file per change
//! (1.9 MB at 10,000 lanes; creation fell from ~400/s to ~45/s at 4,000
//! lanes). Why a journal and not an embedded database (SQLite, redb): the
//! registry already keeps one, both stores are maps read whole at start
//! (10,000 lanes and 10,000 instances replayed and serving in under a
//! second, see benches/README.md), and what a change costs is its one
//! `fdatasync` (3.6 ms for an append on the reference disk), which a
//! database commit pays too; a second storage engine would add a
//! dependency and a format without making a change cheaper.
//! A `lanes.json` of format 1 or 2 (before the journal) is read and
//! rewritten as format 3 at once, so an older laneway refuses the directory
//! instead of ignoring the journal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::file::read_json;
use super::journal::{Journal, Opened, Sequenced};
use super::pools::{unix_now_ms, AllocationError, Pools};
use super::StoreError;

/// The name of the root lane.
pub const BASELINE: &str = "baseline";
/// The store's base file name inside the data directory.
pub const FILE_NAME: &str = "lanes.json";
/// The journal of changes since the base, next to it.
pub const JOURNAL_NAME: &str = "lanes.journal";
/// The base format this build writes: version 2 plus `seq`, with a journal
/// next to it. Versions 1 (no entries, no quarantine) and 2 are read too; a
/// laneway that knows only an older version refuses a newer file instead of
/// silently dropping what it does not know.
const FORMAT: u32 = 3;
const OLDEST_FORMAT: u32 = 1;
/// The format shared through Consul KV ([`LaneStore::encode`]): the whole
/// state, no journal; unchanged so that laneway instances of different
/// builds in one farm understand each other.
const SHARED_FORMAT: u32 = 2;

/// A named test environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    pub name: String,
    /// service → version overrides (on the baseline: the pinned versions).
    pub services: BTreeMap<String, String>,
    /// The lane to fall back to; `None` only for the baseline.
    pub parent: Option<String>,
    /// A missing version is a 503, never a fallback.
    pub strict: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last change.
    pub updated_at: u64,
    /// The VIP, port and hostname allocated to the lane; held for its whole
    /// life.
    #[serde(default)]
    pub entries: Entries,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The lease length; `None`: the lane lives until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Unix seconds at which the lease ends and the lane is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Created because a registered instance named it; released when its
    /// last instance has been gone for `auto_lane_grace`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

/// What tells laneway a request wants this lane, besides header and cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// From `[lanes] vip_pool`; `None` without a pool (and on the baseline).
    #[serde(default)]
    pub vip: Option<IpAddr>,
    /// From `[lanes] port_pool`; `None` without a pool (and on the baseline).
    #[serde(default)]
    pub port: Option<u16>,
    /// From `[lanes] hostname`.
    #[serde(default)]
    pub hostname: String,
}

/// Entries released by a lane, reserved for that lane name until `until`,
/// so a stale hosts file never lands QA in someone else's lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub lane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Unix seconds.
    pub released_at: u64,
    /// Unix seconds.
    pub until: u64,
}

/// Body of `POST /api/v1/lanes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSpec {
    pub name: String,
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Defaults to the baseline.
    pub parent: Option<String>,
    #[serde(default)]
    pub strict: bool,
    /// A specific VIP of the pool instead of the lowest free one.
    pub vip: Option<IpAddr>,
    /// A specific port of the pool instead of the lowest free one.
    pub port: Option<u16>,
    /// The lease, e.g. `"72h"`; defaults to `[lanes] default_ttl`.
    pub ttl: Option<String>,
    pub owner: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Body of `PATCH /api/v1/lanes/<name>`; absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanePatch {
    /// Merged into the lane's services; a `null` version removes the override.
    pub services: Option<BTreeMap<String, Option<String>>>,
    pub parent: Option<String>,
    pub strict: Option<bool>,
    pub owner: Option<String>,
    pub description: Option<String>,
    /// Merged into the lane's labels; a `null` value removes the label.
    pub labels: Option<BTreeMap<String, Option<String>>>,
}

/// What `create` did: creating an identical lane again is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(Lane),
    Existing(Lane),
}

impl CreateOutcome {
    pub fn lane(&self) -> &Lane {
        match self {
            CreateOutcome::Created(l) | CreateOutcome::Existing(l) => l,
        }
    }

    pub fn into_lane(self) -> Lane {
        match self {
            CreateOutcome::Created(l) | CreateOutcome::Existing(l) => l,
        }
    }
}

/// Why a lane operation was refused. Messages name the lane and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// Clashes with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// No such lane (404).
    #[error("{0}")]
    NotFound(String),
    /// No entry could be allocated (409 when the pool is full or the entry
    /// taken, 400 when the request names an entry outside the pool).
    #[error("lane {lane:?}: {source}")]
    Allocation {
        lane: String,
        #[source]
        source: AllocationError,
    },
    /// The change could not be saved; nothing changed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared store (Consul KV) could not be reached or kept losing
    /// races; nothing changed (503).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Serialize)]
struct StoredRef<'a> {
    version: u32,
    lanes: Vec<&'a Lane>,
    quarantine: &'a [Quarantined],
}

#[derive(Deserialize)]
struct Stored {
    version: u32,
    /// The last journal record the base includes (format 3).
    #[serde(default)]
    seq: u64,
    lanes: Vec<Lane>,
    #[serde(default)]
    quarantine: Vec<Quarantined>,
}

/// One journal line: a change, applied as a whole, in the field order.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    seq: u64,
    /// Lanes removed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    delete: Vec<String>,
    /// Lanes added or replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    put: Vec<Lane>,
    /// Quarantine records removed (each the first equal one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unquarantine: Vec<Quarantined>,
    /// Quarantine records appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantine: Vec<Quarantined>,
}

impl Sequenced for Record {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A change to the lane store: lanes written and removed, and the whole
/// new quarantine when it changed.
#[derive(Debug, Default)]
pub(super) struct Change {
    pub put: Vec<Lane>,
    pub delete: Vec<String>,
    pub quarantine: Option<Vec<Quarantined>>,
}

/// The durable set of lanes, their entries and the quarantine.
#[derive(Debug)]
pub struct LaneStore {
    pub(super) path: PathBuf,
    pub(super) lanes: BTreeMap<String, Lane>,
    pub(super) quarantine: Vec<Quarantined>,
    pub(super) pools: Pools,
    /// `None` on a scratch copy: commits change memory only (the caller
    /// publishes the result elsewhere, e.g. Consul KV, then adopts it).
    pub(super) journal: Option<Journal>,
}

impl LaneStore {
    /// Loads `<data_dir>/lanes.json`. A missing file is a store holding only
    /// the baseline; if the baseline is absent it is created and written at
    /// once. An unreadable, corrupt or inconsistent file (unknown parent,
    /// cycle, bad name, an entry held twice) is an error naming the file,
    /// never a silent reset.
    ///
    /// Entries are sticky: a lane holding a VIP or port that `pools` no
    /// longer contains keeps it (with a warning). A lane without an entry
    /// its pool could give (stored before the pool was configured) gets one
    /// now.
    pub fn open(data_dir: &Path, pools: Pools) -> Result<LaneStore, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let journal_path = data_dir.join(JOURNAL_NAME);
        let corrupt = |path: &Path, detail: String| StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        // (base format, lanes, quarantine); format 0: no base file
        type State = (u32, BTreeMap<String, Lane>, Vec<Quarantined>);
        let load_base = || {
            let mut lanes = BTreeMap::new();
            let Some(stored) = read_json::<Stored>(&path)? else {
                return Ok((0, (0, lanes, Vec::new())));
            };
            if !(OLDEST_FORMAT..=FORMAT).contains(&stored.version) {
                return Err(corrupt(&path, format!(
                    "format version {} is not supported by this laneway (expected {OLDEST_FORMAT} to {FORMAT})",
                    stored.version
                )));
            }
            for lane in stored.lanes {
                let name = lane.name.clone();
                if lanes.insert(name.clone(), lane).is_some() {
                    return Err(corrupt(&path, format!("lane {name:?} appears twice")));
                }
            }
            Ok((stored.seq, (stored.version, lanes, stored.quarantine)))
        };
        let apply = |(_, lanes, quarantine): &mut State, record: Record| {
            apply_record(lanes, quarantine, record);
            Ok(())
        };
        let Opened {
            state: (format, lanes, quarantine),
            journal,
            replayed,
        } = Journal::open(&path, &journal_path, "lane store", load_base, apply)?;
        let damaged = if replayed > 0 { &journal_path } else { &path };
        check_consistent(&lanes).map_err(|d| corrupt(damaged, d))?;
        let mut store = LaneStore {
            path,
            lanes,
            quarantine,
            pools,
            journal: Some(journal),
        };
        let mut next = store.lanes.clone();
        if !next.contains_key(BASELINE) {
            let now = unix_now_ms() / 1000;
            next.insert(
                BASELINE.to_owned(),
                Lane {
                    name: BASELINE.to_owned(),
                    created_at: now,
                    updated_at: now,
                    ..Lane::default()
                },
            );
        }
        let (next, quarantine) = store.fill_entries(next, unix_now_ms());
        if format == FORMAT {
            store.commit_state(next, quarantine)?;
        } else {
            // No base yet, or one from before the journal: written whole
            // before any record is appended, so an older laneway refuses
            // this directory instead of reading the base and ignoring the
            // journal.
            store.lanes = next;
            store.quarantine = quarantine;
            store.rewrite_base()?;
        }
        Ok(store)
    }

    /// Creates a lane with its entries. The same name with the same body
    /// again is `Existing` with the same entries (so a retried request is
    /// harmless); with a different body it is a `Conflict` naming what
    /// differs. If an entry cannot be allocated nothing is created.
    pub fn create(&mut self, spec: LaneSpec) -> Result<CreateOutcome, LaneError> {
        self.create_at(spec, unix_now_ms())
    }

    /// [`create`](Self::create) at `now_ms` (Unix milliseconds).
    pub fn create_at(&mut self, spec: LaneSpec, now_ms: u64) -> Result<CreateOutcome, LaneError> {
        self.create_with(spec, now_ms, false)
    }

    /// Creates a lane; an `auto` lane gets no default lease.
    pub(super) fn create_with(
        &mut self,
        spec: LaneSpec,
        now_ms: u64,
        auto: bool,
    ) -> Result<CreateOutcome, LaneError> {
        if spec.name == BASELINE {
            return Err(LaneError::Invalid(format!(
                "lane \"{BASELINE}\" always exists and cannot be created; patch its services instead"
            )));
        }
        check_lane_name(&spec.name)?;
        let name = spec.name.clone();
        let parent = spec.parent.clone().unwrap_or_else(|| BASELINE.to_owned());
        for (service, version) in &spec.services {
            check_override(&name, service, version)?;
        }
        check_about(&name, spec.owner.as_deref(), spec.description.as_deref())?;
        for (key, value) in &spec.labels {
            check_label(&name, key, value)?;
        }
        if spec.labels.len() > MAX_LABELS {
            return Err(LaneError::Invalid(format!(
                "lane {name:?}: at most {MAX_LABELS} labels"
            )));
        }
        let ttl_seconds = match &spec.ttl {
            Some(text) => Some(parse_ttl(&name, text)?),
            None if auto => None,
            None => self.pools.default_ttl.map(|d| d.as_secs().max(1)),
        };
        if let Some(existing) = self.lanes.get(&name) {
            let mut differs = differences(existing, &spec.services, &parent, spec.strict);
            differs.extend(more_differences(existing, &spec, ttl_seconds));
            if differs.is_empty() {
                return Ok(CreateOutcome::Existing(existing.clone()));
            }
            return Err(LaneError::Conflict(format!(
                "lane {name:?} already exists and differs in {}; patch it or pick another name",
                differs.join(", ")
            )));
        }
        self.check_parent(&name, &parent)?;
        let (entries, quarantine) = self.allocate_entries(&name, spec.vip, spec.port, now_ms)?;
        let now = now_ms / 1000;
        let lane = Lane {
            name: name.clone(),
            services: spec.services,
            parent: Some(parent),
            strict: spec.strict,
            created_at: now,
            updated_at: now,
            entries,
            owner: spec.owner,
            description: spec.description,
            labels: spec.labels,
            ttl_seconds,
            expires_at: ttl_seconds.map(|t| lease_end(now_ms, t)),
            auto,
        };
        self.commit(Change {
            put: vec![lane.clone()],
            quarantine: Some(quarantine),
            ..Change::default()
        })?;
        Ok(CreateOutcome::Created(lane))
    }

    /// Merges `patch` into the lane. The baseline accepts `services` only.
    /// A patch that changes nothing returns the lane without writing.
    pub fn patch(&mut self, name: &str, patch: LanePatch) -> Result<Lane, LaneError> {
        let current = self.lanes.get(name).ok_or_else(|| not_found(name))?;
        if name == BASELINE
            && (patch.parent.is_some()
                || patch.strict.is_some()
                || patch.owner.is_some()
                || patch.description.is_some()
                || patch.labels.is_some())
        {
            return Err(LaneError::Invalid(format!(
                "lane \"{BASELINE}\" is the root: it has no parent and is never strict; \
                 only its \"services\" (version pins) can be changed"
            )));
        }
        let mut lane = current.clone();
        for (service, version) in patch.services.into_iter().flatten() {
            match version {
                Some(version) => {
                    check_override(name, &service, &version)?;
                    lane.services.insert(service, version);
                }
                None => {
                    check_service(name, &service)?;
                    lane.services.remove(&service);
                }
            }
        }
        if let Some(parent) = patch.parent {
            self.check_parent(name, &parent)?;
            lane.parent = Some(parent);
        }
        if let Some(strict) = patch.strict {
            lane.strict = strict;
        }
        check_about(name, patch.owner.as_deref(), patch.description.as_deref())?;
        if let Some(owner) = patch.owner {
            lane.owner = Some(owner);
        }
        if let Some(description) = patch.description {
            lane.description = Some(description);
        }
        for (key, value) in patch.labels.into_iter().flatten() {
            match value {
                Some(value) => {
                    check_label(name, &key, &value)?;
                    lane.labels.insert(key, value);
                }
                None => {
                    lane.labels.remove(&key);
                }
            }
        }
        if lane.labels.len() > MAX_LABELS {
            return Err(LaneError::Invalid(format!(
                "lane {name:?}: at most {MAX_LABELS} labels"
            )));
        }
        if lane == *current {
            return Ok(lane);
        }
        lane.updated_at = (unix_now_ms() / 1000).max(lane.created_at);
        self.commit(Change {
            put: vec![lane.clone()],
            ..Change::default()
        })?;
        Ok(lane)
    }

    /// Deletes a lane and returns it; its VIP and port go into quarantine.
    /// The baseline cannot be deleted, nor a lane that is another lane's
    /// parent.
    pub fn delete(&mut self, name: &str) -> Result<Lane, LaneError> {
        self.delete_at(name, unix_now_ms())
    }

    /// [`delete`](Self::delete) at `now_ms` (Unix milliseconds).
    pub fn delete_at(&mut self, name: &str, now_ms: u64) -> Result<Lane, LaneError> {
        if name == BASELINE {
            return Err(LaneError::Invalid(format!(
                "lane \"{BASELINE}\" is the root of every lane and cannot be deleted"
            )));
        }
        if !self.lanes.contains_key(name) {
            return Err(not_found(name));
        }
        let children = self.children(name);
        if !children.is_empty() {
            let children: Vec<String> = children.iter().map(|c| format!("{c:?}")).collect();
            return Err(LaneError::Conflict(format!(
                "lane {name:?} is the parent of {}; delete them or patch their \"parent\" first",
                children.join(", ")
            )));
        }
        let lane = self
            .lanes
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let quarantine = self.quarantine_record(&lane, now_ms).map(|record| {
            let mut all = self.quarantine.clone();
            all.push(record);
            all
        });
        self.commit(Change {
            delete: vec![name.to_owned()],
            quarantine,
            ..Change::default()
        })?;
        Ok(lane)
    }

    pub fn get(&self, name: &str) -> Option<&Lane> {
        self.lanes.get(name)
    }

    /// All lanes, sorted by name.
    pub fn list(&self) -> Vec<Lane> {
        self.lanes.values().cloned().collect()
    }

    /// Entries released and still reserved for the lane that held them.
    pub fn quarantine(&self) -> &[Quarantined] {
        &self.quarantine
    }

    /// The pools this store allocates from.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The fallback chain of `name`: the lane, its parent, …, the baseline.
    /// Empty when the lane does not exist.
    pub fn chain(&self, name: &str) -> Vec<&Lane> {
        let mut chain = Vec::new();
        let mut next = self.lanes.get(name);
        // The store has no cycles; the bound only guards against a bug.
        while let Some(lane) = next.filter(|_| chain.len() <= self.lanes.len()) {
            chain.push(lane);
            next = lane.parent.as_deref().and_then(|p| self.lanes.get(p));
        }
        chain
    }

    /// A copy whose commits stay in memory: apply a change to it, publish
    /// [`encode`](Self::encode)d state, then [`adopt`](Self::adopt) it.
    pub fn scratch(&self) -> LaneStore {
        LaneStore {
            path: self.path.clone(),
            lanes: self.lanes.clone(),
            quarantine: self.quarantine.clone(),
            pools: self.pools.clone(),
            journal: None,
        }
    }

    /// True if `other` holds the same lanes and quarantine.
    pub fn same_state(&self, other: &LaneStore) -> bool {
        self.lanes == other.lanes && self.quarantine == other.quarantine
    }

    /// The whole state in the stored format (compact JSON), as shared
    /// through Consul KV.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&StoredRef {
            version: SHARED_FORMAT,
            lanes: self.lanes.values().collect(),
            quarantine: &self.quarantine,
        })
        .map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the state with `bytes` (from [`encode`](Self::encode), e.g.
    /// written by another laneway instance) after the same checks as
    /// [`open`](Self::open), and writes it to the local file. On error
    /// nothing changes; `origin` names the source in the message.
    pub fn adopt_encoded(&mut self, bytes: &[u8], origin: &str) -> Result<(), String> {
        let stored: Stored = serde_json::from_slice(bytes)
            .map_err(|e| format!("{origin}: not a lane store: {e}"))?;
        if !(OLDEST_FORMAT..=SHARED_FORMAT).contains(&stored.version) {
            return Err(format!(
                "{origin}: format version {} is not supported by this laneway (expected {OLDEST_FORMAT} to {SHARED_FORMAT})",
                stored.version
            ));
        }
        let mut lanes = BTreeMap::new();
        for lane in stored.lanes {
            let name = lane.name.clone();
            if lanes.insert(name.clone(), lane).is_some() {
                return Err(format!("{origin}: lane {name:?} appears twice"));
            }
        }
        if !lanes.contains_key(BASELINE) {
            return Err(format!("{origin}: the baseline lane is missing"));
        }
        check_consistent(&lanes).map_err(|e| format!("{origin}: {e}"))?;
        if lanes == self.lanes && stored.quarantine == self.quarantine {
            return Ok(());
        }
        self.commit_state(lanes, stored.quarantine)
            .map_err(|e| e.to_string())
    }

    /// Makes a scratch copy's state this store's state, written locally.
    pub fn adopt(&mut self, scratch: LaneStore) -> Result<(), StoreError> {
        self.commit_state(scratch.lanes, scratch.quarantine)
    }

    /// The file this store persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the lanes whose parent is `name`.
    pub(super) fn children(&self, name: &str) -> Vec<&str> {
        self.lanes
            .values()
            .filter(|l| l.parent.as_deref() == Some(name))
            .map(|l| l.name.as_str())
            .collect()
    }

    /// `parent` must exist and must not have `lane` on its own chain.
    fn check_parent(&self, lane: &str, parent: &str) -> Result<(), LaneError> {
        if parent == lane {
            return Err(LaneError::Invalid(format!(
                "lane {lane:?} cannot be its own parent"
            )));
        }
        if !self.lanes.contains_key(parent) {
            return Err(LaneError::Invalid(format!(
                "lane {lane:?}: parent lane {parent:?} does not exist; create it first or use \"{BASELINE}\""
            )));
        }
        let chain = self.chain(parent);
        if chain.iter().any(|l| l.name == lane) {
            let path: Vec<&str> = std::iter::once(lane)
                .chain(
                    chain
                        .iter()
                        .map(|l| l.name.as_str())
                        .take_while(|n| *n != lane),
                )
                .chain(std::iter::once(lane))
                .collect();
            return Err(LaneError::Invalid(format!(
                "lane {lane:?}: parent {parent:?} would form a cycle ({})",
                path.join(" → ")
            )));
        }
        Ok(())
    }

    /// Makes `lanes` and `quarantine` the current state, writing only what
    /// differs (nothing when nothing does).
    pub(super) fn commit_state(
        &mut self,
        lanes: BTreeMap<String, Lane>,
        quarantine: Vec<Quarantined>,
    ) -> Result<(), StoreError> {
        let delete = self
            .lanes
            .keys()
            .filter(|n| !lanes.contains_key(*n))
            .cloned()
            .collect();
        let put = lanes
            .into_values()
            .filter(|l| self.lanes.get(&l.name) != Some(l))
            .collect();
        self.commit(Change {
            put,
            delete,
            quarantine: Some(quarantine),
        })
    }

    /// Writes `change` to the journal, then applies it. On error nothing
    /// changed in memory.
    pub(super) fn commit(&mut self, change: Change) -> Result<(), StoreError> {
        let (unquarantine, quarantine) = match &change.quarantine {
            Some(next) => quarantine_delta(&self.quarantine, next),
            None => (Vec::new(), Vec::new()),
        };
        let record = Record {
            seq: 0,
            delete: change.delete,
            put: change.put,
            unquarantine,
            quarantine,
        };
        if record.delete.is_empty()
            && record.put.is_empty()
            && record.unquarantine.is_empty()
            && record.quarantine.is_empty()
        {
            return Ok(());
        }
        let Some(journal) = &mut self.journal else {
            apply_record(&mut self.lanes, &mut self.quarantine, record);
            return Ok(());
        };
        if journal.is_broken() {
            // Write the whole state with the change; undo it if that fails.
            let undo_lanes: Vec<(String, Option<Lane>)> = record
                .delete
                .iter()
                .chain(record.put.iter().map(|l| &l.name))
                .map(|n| (n.clone(), self.lanes.get(n).cloned()))
                .collect();
            let undo_quarantine = self.quarantine.clone();
            apply_record(&mut self.lanes, &mut self.quarantine, record);
            let (lanes, quarantine, path) = (&self.lanes, &self.quarantine, &self.path);
            let written = journal.rewrite(true, |seq| encode_base(path, seq, lanes, quarantine));
            if let Err(e) = written {
                for (name, old) in undo_lanes.into_iter().rev() {
                    match old {
                        Some(lane) => self.lanes.insert(name, lane),
                        None => self.lanes.remove(&name),
                    };
                }
                self.quarantine = undo_quarantine;
                return Err(e);
            }
            return Ok(());
        }
        let record = Record {
            seq: journal.next_seq(),
            ..record
        };
        journal.append(&record)?;
        apply_record(&mut self.lanes, &mut self.quarantine, record);
        if journal.wants_compaction() {
            let (path, lanes, quarantine) = (
                self.path.clone(),
                self.lanes.clone(),
                self.quarantine.clone(),
            );
            journal.start_compaction(move |seq| encode_base(&path, seq, &lanes, &quarantine));
        }
        Ok(())
    }

    /// Writes the current state as a new base and empties the journal.
    fn rewrite_base(&mut self) -> Result<(), StoreError> {
        let (lanes, quarantine, path) = (&self.lanes, &self.quarantine, &self.path);
        match &mut self.journal {
            Some(j) => j.rewrite(false, |seq| encode_base(path, seq, lanes, quarantine)),
            None => Ok(()),
        }
    }

    /// The journal, if this store is durable (tests).
    #[cfg(test)]
    pub(super) fn journal_mut(&mut self) -> &mut Journal {
        self.journal.as_mut().expect("a durable store")
    }

    /// Gives every lane the entries its pools can give and it lacks (lanes
    /// stored before a pool was configured), and warns about entries outside
    /// the pools. Never takes an entry away.
    fn fill_entries(
        &self,
        mut lanes: BTreeMap<String, Lane>,
        now_ms: u64,
    ) -> (BTreeMap<String, Lane>, Vec<Quarantined>) {
        let names: Vec<String> = lanes.keys().cloned().collect();
        for name in names {
            let Some(lane) = lanes.get(&name) else {
                continue;
            };
            let mut entries = lane.entries.clone();
            if entries.hostname.is_empty() {
                entries.hostname = self.pools.hostname(&name);
            }
            if name != BASELINE {
                let want_vip = entries.vip.is_none() && self.pools.vip.is_some();
                let want_port = entries.port.is_none() && self.pools.port.is_some();
                if want_vip || want_port {
                    // Allocate against what this pass has handed out so far.
                    let view = LaneStore {
                        path: self.path.clone(),
                        lanes: lanes.clone(),
                        quarantine: self.quarantine.clone(),
                        pools: self.pools.clone(),
                        journal: None,
                    };
                    match view.fill_missing(&name, &entries, want_vip, want_port, now_ms) {
                        Ok((vip, port)) => {
                            info!(lane = %name, vip = ?vip, port = ?port, "entries allocated to a lane stored without them");
                            entries.vip = vip;
                            entries.port = port;
                        }
                        Err(e) => {
                            warn!(lane = %name, error = %e, "cannot allocate the lane's entries")
                        }
                    }
                }
                self.warn_outside_pools(&name, &entries);
            }
            if let Some(lane) = lanes.get_mut(&name) {
                lane.entries = entries;
            }
        }
        (lanes, self.quarantine.clone())
    }

    fn warn_outside_pools(&self, name: &str, entries: &Entries) {
        use super::pools::Pool;
        if let Some(vip) = entries.vip {
            if !self.pools.vip.as_ref().is_some_and(|p| p.contains(vip)) {
                warn!(lane = %name, %vip, "the lane keeps its VIP, which is not in [lanes] vip_pool any more");
            }
        }
        if let Some(port) = entries.port {
            if !self.pools.port.is_some_and(|p| p.contains(port)) {
                warn!(lane = %name, port, "the lane keeps its port, which is not in [lanes] port_pool any more");
            }
        }
    }
}

/// Applies a journal record (or a change in memory) to the state.
fn apply_record(
    lanes: &mut BTreeMap<String, Lane>,
    quarantine: &mut Vec<Quarantined>,
    record: Record,
) {
    for name in record.delete {
        lanes.remove(&name);
    }
    for lane in record.put {
        lanes.insert(lane.name.clone(), lane);
    }
    for gone in &record.unquarantine {
        if let Some(at) = quarantine.iter().position(|q| q == gone) {
            quarantine.remove(at);
        }
    }
    quarantine.extend(record.quarantine);
}

/// The records to remove from `old` and to append to it to get `new` (as a
/// multiset; [`apply_record`] keeps the order of what stays and appends).
/// The common beginning and end are skipped first: a change usually appends
/// one record or drops a few of the oldest.
fn quarantine_delta(
    old: &[Quarantined],
    new: &[Quarantined],
) -> (Vec<Quarantined>, Vec<Quarantined>) {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let (old, new) = (&old[head..], &new[head..]);
    let tail = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (old, new) = (&old[..old.len() - tail], &new[..new.len() - tail]);
    let mut added: Vec<Option<&Quarantined>> = new.iter().map(Some).collect();
    let mut removed = Vec::new();
    for q in old {
        match added.iter_mut().find(|a| a.is_some_and(|a| a == q)) {
            Some(slot) => *slot = None,
            None => removed.push(q.clone()),
        }
    }
    (removed, added.into_iter().flatten().cloned().collect())
}

/// `{"version":3,"seq":N,"lanes":[` then one compact lane per line, so a
/// parse error's line number points at the lane.
fn encode_base(
    path: &Path,
    seq: u64,
    lanes: &BTreeMap<String, Lane>,
    quarantine: &[Quarantined],
) -> Result<Vec<u8>, StoreError> {
    let enc = |source| StoreError::Encode {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::with_capacity(64 + lanes.len() * 256);
    out.extend_from_slice(format!("{{\"version\":{FORMAT},\"seq\":{seq},\"lanes\":[").as_bytes());
    for (n, lane) in lanes.values().enumerate() {
        out.extend_from_slice(if n == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, lane).map_err(enc)?;
    }
    out.extend_from_slice(b"\n],\"quarantine\":");
    serde_json::to_writer(&mut out, quarantine).map_err(enc)?;
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// At most this many labels per lane.
const MAX_LABELS: usize = 64;

/// Unix seconds at which a lease of `ttl` seconds taken at `now_ms` ends,
/// rounded up so the lane lives at least `ttl`.
pub(super) fn lease_end(now_ms: u64, ttl: u64) -> u64 {
    now_ms
        .saturating_add(ttl.saturating_mul(1000))
        .saturating_add(999)
        / 1000
}

/// A lease length: a humantime duration of at least one second, rounded up
/// to whole seconds.
pub fn parse_ttl(lane: &str, text: &str) -> Result<u64, LaneError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.as_secs_f64() >= 1.0 => Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0)),
        _ => Err(LaneError::Invalid(format!(
            "lane {lane:?}: ttl {text:?} is not a duration of at least 1s (e.g. \"72h\", \"30m\")"
        ))),
    }
}

/// `owner` and `description` are single-line and bounded.
fn check_about(
    lane: &str,
    owner: Option<&str>,
    description: Option<&str>,
) -> Result<(), LaneError> {
    for (what, text, max) in [("owner", owner, 200), ("description", description, 2000)] {
        let Some(text) = text else { continue };
        if text.chars().count() > max || text.chars().any(char::is_control) {
            return Err(LaneError::Invalid(format!(
                "lane {lane:?}: {what} must be at most {max} characters without control characters"
            )));
        }
    }
    Ok(())
}

/// Label keys are `[A-Za-z0-9._/-]`, 1–63; values at most 255 characters
/// without control characters.
fn check_label(lane: &str, key: &str, value: &str) -> Result<(), LaneError> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    if !key_ok {
        return Err(LaneError::Invalid(format!(
            "lane {lane:?}: label key {key:?} must be 1 to 63 letters, digits, '.', '_', '/' or '-'"
        )));
    }
    if value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Err(LaneError::Invalid(format!(
            "lane {lane:?}: label {key:?} must have a value of at most 255 characters without control characters"
        )));
    }
    Ok(())
}

/// Differences in the fields `differences` does not cover: requested
/// entries, lease, owner, description, labels.
fn more_differences(existing: &Lane, spec: &LaneSpec, ttl_seconds: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    let show = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
    if let Some(vip) = spec.vip {
        if existing.entries.vip != Some(vip) {
            out.push(format!(
                "vip ({} now, {vip} requested)",
                show(existing.entries.vip.map(|v| v.to_string()))
            ));
        }
    }
    if let Some(port) = spec.port {
        if existing.entries.port != Some(port) {
            out.push(format!(
                "port ({} now, {port} requested)",
                show(existing.entries.port.map(|p| p.to_string()))
            ));
        }
    }
    if existing.ttl_seconds != ttl_seconds {
        let secs = |t: Option<u64>| show(t.map(|t| format!("{t}s")));
        out.push(format!(
            "ttl ({} now, {} requested; use .../extend to renew a lease)",
            secs(existing.ttl_seconds),
            secs(ttl_seconds)
        ));
    }
    for (what, now, wanted) in [
        ("owner", &existing.owner, &spec.owner),
        ("description", &existing.description, &spec.description),
    ] {
        if now != wanted {
            out.push(format!(
                "{what} ({} now, {} requested)",
                show(now.as_ref().map(|s| format!("{s:?}"))),
                show(wanted.as_ref().map(|s| format!("{s:?}")))
            ));
        }
    }
    if existing.labels != spec.labels {
        out.push("labels".to_owned());
    }
    out
}

fn not_found(name: &str) -> LaneError {
    LaneError::NotFound(format!("lane {name:?} does not exist"))
}

/// What differs between an existing lane and a create request, for the
/// conflict message.
fn differences(
    existing: &Lane,
    services: &BTreeMap<String, String>,
    parent: &str,
    strict: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if existing.services != *services {
        let keys: BTreeSet<&String> = existing.services.keys().chain(services.keys()).collect();
        let shown: Vec<String> = keys
            .into_iter()
            .filter(|k| existing.services.get(*k) != services.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| v.map_or("none".to_owned(), |v| format!("{v:?}"));
                format!(
                    "{k:?}: {} now, {} requested",
                    show(existing.services.get(k)),
                    show(services.get(k))
                )
            })
            .collect();
        let more = shown.len().saturating_sub(5);
        let mut text = format!("services ({}", shown[..shown.len().min(5)].join("; "));
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        text.push(')');
        out.push(text);
    }
    if existing.parent.as_deref() != Some(parent) {
        out.push(format!(
            "parent ({:?} now, {parent:?} requested)",
            existing.parent.as_deref().unwrap_or("none")
        ));
    }
    if existing.strict != strict {
        out.push(format!(
            "strict ({} now, {strict} requested)",
            existing.strict
        ));
    }
    out
}

/// A lane name is a DNS label: it is used in `<lane>.<lane_domain>`.
fn check_lane_name(name: &str) -> Result<(), LaneError> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > 63 {
        "is longer than 63 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "may contain only lowercase letters, digits and '-'"
    } else if name.starts_with('-') || name.ends_with('-') {
        "may not start or end with '-'"
    } else {
        return Ok(());
    };
    Err(LaneError::Invalid(format!(
        "lane name {name:?} {problem}: it is used as a DNS label in <lane>.<lane_domain>"
    )))
}

fn bad_text(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or control characters")
    } else {
        None
    }
}

fn check_service(lane: &str, service: &str) -> Result<(), LaneError> {
    match bad_text(service) {
        Some(problem) => Err(LaneError::Invalid(format!(
            "lane {lane:?}: service name {service:?} {problem}"
        ))),
        None => Ok(()),
    }
}

fn check_override(lane: &str, service: &str, version: &str) -> Result<(), LaneError> {
    check_service(lane, service)?;
    match bad_text(version) {
        Some(problem) => Err(LaneError::Invalid(format!(
            "lane {lane:?}: version {version:?} of service {service:?} {problem}"
        ))),
        None => Ok(()),
    }
}

/// Invariants of a loaded file: names valid, only the baseline without a
/// parent, parents exist, no cycles, no VIP or port held by two lanes.
fn check_consistent(lanes: &BTreeMap<String, Lane>) -> Result<(), String> {
    let mut vips: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    for lane in lanes.values() {
        if let Some(vip) = lane.entries.vip {
            if let Some(other) = vips.insert(vip, &lane.name) {
                return Err(format!(
                    "vip {vip} is held by both lane {other:?} and lane {:?}",
                    lane.name
                ));
            }
        }
        if let Some(port) = lane.entries.port {
            if let Some(other) = ports.insert(port, &lane.name) {
                return Err(format!(
                    "port {port} is held by both lane {other:?} and lane {:?}",
                    lane.name
                ));
            }
        }
    }
    for lane in lanes.values() {
        let name = &lane.name;
        if name != BASELINE {
            check_lane_name(name).map_err(|e| e.to_string())?;
        }
        for (service, version) in &lane.services {
            check_override(name, service, version).map_err(|e| e.to_string())?;
        }
        match (name == BASELINE, lane.parent.as_deref()) {
            (true, None) => {}
            (true, Some(p)) => return Err(format!("lane \"{BASELINE}\" has a parent ({p:?})")),
            (false, None) => return Err(format!("lane {name:?} has no parent")),
            (false, Some(p)) if !lanes.contains_key(p) => {
                return Err(format!("lane {name:?} has an unknown parent {p:?}"))
            }
            (false, Some(_)) => {}
        }
        let mut seen = BTreeSet::from([name.as_str()]);
        let mut at = lane.parent.as_deref();
        while let Some(p) = at {
            if !seen.insert(p) {
                return Err(format!("lane {name:?} is on a parent cycle through {p:?}"));
            }
            at = lanes.get(p).and_then(|l| l.parent.as_deref());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::file::tmp_path;

    fn spec(json: &str) -> LaneSpec {
        serde_json::from_str(json).expect("valid spec json")
    }

    fn patch(json: &str) -> LanePatch {
        serde_json::from_str(json).expect("valid patch json")
    }

    fn open() -> (tempfile::TempDir, LaneStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LaneStore::open(dir.path(), Pools::default()).expect("open");
        (dir, store)
    }

    fn invalid(r: Result<impl std::fmt::Debug, LaneError>) -> String {
        match r {
            Err(LaneError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn open_creates_and_persists_baseline() {
        let (dir, store) = open();
        let baseline = store.get(BASELINE).expect("baseline");
        assert_eq!((baseline.parent.as_deref(), baseline.strict), (None, false));
        assert!(
            dir.path().join(FILE_NAME).exists(),
            "baseline written at once"
        );
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.get(BASELINE), Some(baseline));
    }

    #[test]
    fn create_is_idempotent_and_conflicts_name_the_difference() {
        let (_dir, mut store) = open();
        let body = r#"{"name":"t-42","services":{"user-api":"v7"}}"#;
        let created = store.create(spec(body)).expect("create");
        assert!(
            matches!(&created, CreateOutcome::Created(l) if l.parent.as_deref() == Some(BASELINE))
        );
        let again = store.create(spec(body)).expect("idempotent");
        assert_eq!(again, CreateOutcome::Existing(created.into_lane()));

        let msg = match store.create(spec(
            r#"{"name":"t-42","services":{"user-api":"v8","cart":"v1"},"strict":true}"#,
        )) {
            Err(LaneError::Conflict(m)) => m,
            other => panic!("expected Conflict, got {other:?}"),
        };
        assert!(msg.starts_with("lane \"t-42\" already exists"), "{msg}");
        assert!(
            msg.contains("\"user-api\": \"v7\" now, \"v8\" requested"),
            "{msg}"
        );
        assert!(
            msg.contains("\"cart\": none now, \"v1\" requested"),
            "{msg}"
        );
        assert!(msg.contains("strict (false now, true requested)"), "{msg}");
        assert!(!msg.contains("parent"), "{msg}");
        assert_eq!(store.list().len(), 2);
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        assert!(serde_json::from_str::<LaneSpec>(r#"{"name":"a","sevrices":{}}"#).is_err());
        assert!(serde_json::from_str::<LanePatch>(r#"{"name":"a"}"#).is_err());
    }

    #[test]
    fn bad_names_and_overrides_are_invalid() {
        let (_dir, mut store) = open();
        for bad in ["", "T-1", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            let msg = invalid(store.create(LaneSpec {
                name: bad.to_owned(),
                ..LaneSpec::default()
            }));
            assert!(msg.contains("DNS label"), "{bad:?}: {msg}");
        }
        assert!(store
            .create(spec(&format!(r#"{{"name":"{}"}}"#, "a".repeat(63))))
            .is_ok());
        assert!(invalid(store.create(spec(r#"{"name":"baseline"}"#))).contains("always exists"));
        assert!(
            invalid(store.create(spec(r#"{"name":"a","services":{"":"v1"}}"#)))
                .contains("service name \"\" is empty")
        );
        assert!(
            invalid(store.create(spec(r#"{"name":"a","services":{"web":""}}"#)))
                .contains("version \"\" of service \"web\" is empty")
        );
        assert!(
            invalid(store.create(spec(r#"{"name":"a","services":{"my web":"v1"}}"#)))
                .contains("whitespace")
        );
        assert!(store.get("a").is_none());
    }

    #[test]
    fn unknown_parent_is_invalid() {
        let (_dir, mut store) = open();
        let msg = invalid(store.create(spec(r#"{"name":"a","parent":"ghost"}"#)));
        assert!(
            msg.contains("parent lane \"ghost\" does not exist"),
            "{msg}"
        );
        let msg = invalid(store.patch(BASELINE, patch(r#"{"parent":"a"}"#)));
        assert!(msg.contains("only its \"services\""), "{msg}");
    }

    #[test]
    fn patch_merges_and_null_removes() {
        let (_dir, mut store) = open();
        store
            .create(spec(r#"{"name":"t-1","services":{"web":"v1","api":"v1"}}"#))
            .expect("create");
        let lane = store
            .patch(
                "t-1",
                patch(
                    r#"{"services":{"web":"v2","api":null,"cart":"v3","gone":null},"strict":true}"#,
                ),
            )
            .expect("patch");
        let services: Vec<(&str, &str)> = lane
            .services
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(services, [("cart", "v3"), ("web", "v2")]);
        assert!(lane.strict);
        assert_eq!(store.get("t-1"), Some(&lane));
        assert!(
            matches!(store.patch("nope", LanePatch::default()), Err(LaneError::NotFound(m)) if m.contains("\"nope\""))
        );
        let msg = invalid(store.patch("t-1", patch(r#"{"services":{"web":" "}}"#)));
        assert!(msg.contains("whitespace"), "{msg}");
        assert_eq!(
            store.get("t-1"),
            Some(&lane),
            "rejected patch changes nothing"
        );
    }

    #[test]
    fn parent_cycle_is_rejected() {
        let (_dir, mut store) = open();
        store.create(spec(r#"{"name":"a"}"#)).expect("a");
        store
            .create(spec(r#"{"name":"b","parent":"a"}"#))
            .expect("b");
        store
            .create(spec(r#"{"name":"c","parent":"b"}"#))
            .expect("c");
        let msg = invalid(store.patch("a", patch(r#"{"parent":"c"}"#)));
        assert!(msg.contains("cycle (a → c → b → a)"), "{msg}");
        assert!(invalid(store.patch("a", patch(r#"{"parent":"a"}"#))).contains("its own parent"));
        let names: Vec<&str> = store.chain("c").iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a", BASELINE]);
        store
            .patch("c", patch(r#"{"parent":"a"}"#))
            .expect("re-parent");
        assert_eq!(store.chain("c").len(), 3);
    }

    #[test]
    fn baseline_rules() {
        let (_dir, mut store) = open();
        let lane = store
            .patch(BASELINE, patch(r#"{"services":{"web":"v5"}}"#))
            .expect("pin a version");
        assert_eq!(lane.services.get("web").map(String::as_str), Some("v5"));
        assert!(invalid(store.patch(BASELINE, patch(r#"{"strict":false}"#))).contains("root"));
        assert!(invalid(store.delete(BASELINE)).contains("cannot be deleted"));
        assert!(invalid(store.create(spec(r#"{"name":"a","parent":"a"}"#))).contains("own parent"));
    }

    #[test]
    fn delete_refuses_a_parent_in_use() {
        let (_dir, mut store) = open();
        store.create(spec(r#"{"name":"a"}"#)).expect("a");
        store
            .create(spec(r#"{"name":"b","parent":"a"}"#))
            .expect("b");
        store
            .create(spec(r#"{"name":"c","parent":"a"}"#))
            .expect("c");
        let msg = match store.delete("a") {
            Err(LaneError::Conflict(m)) => m,
            other => panic!("expected Conflict, got {other:?}"),
        };
        assert!(msg.contains("parent of \"b\", \"c\""), "{msg}");
        assert!(matches!(store.delete("zzz"), Err(LaneError::NotFound(_))));
        assert_eq!(store.delete("b").expect("delete leaf").name, "b");
        assert!(store.get("b").is_none());
    }

    #[test]
    fn state_survives_reopen() {
        let (dir, mut store) = open();
        store
            .create(spec(
                r#"{"name":"a","services":{"web":"v1"},"strict":true}"#,
            ))
            .expect("a");
        store
            .create(spec(r#"{"name":"b","parent":"a"}"#))
            .expect("b");
        store
            .patch(BASELINE, patch(r#"{"services":{"web":"v0"}}"#))
            .expect("pin");
        store.delete("b").expect("delete");
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
        assert_eq!(
            reopened
                .list()
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>(),
            ["a", BASELINE]
        );
    }

    #[test]
    fn failed_write_leaves_state_unchanged() {
        let (dir, mut store) = open();
        store.create(spec(r#"{"name":"a"}"#)).expect("a");
        let before = store.list();
        // A directory where the base's temp file goes makes every base
        // write fail, even as root; a read-only journal handle makes every
        // append fail.
        std::fs::create_dir(tmp_path(&dir.path().join(FILE_NAME))).expect("block the temp file");
        let read_only =
            std::fs::File::open(dir.path().join(JOURNAL_NAME)).expect("the journal exists");
        store.journal_mut().replace_file(read_only);
        let err = store
            .create(spec(r#"{"name":"b"}"#))
            .expect_err("cannot append");
        assert!(matches!(err, LaneError::Store(_)), "{err}");
        assert!(err.to_string().contains(JOURNAL_NAME), "{err}");
        // the journal is now unusable: the next changes try a whole base
        assert!(matches!(
            store.patch("a", patch(r#"{"strict":true}"#)),
            Err(LaneError::Store(_))
        ));
        let err = store.delete("a").expect_err("cannot write");
        assert!(err.to_string().contains("lanes.json"), "{err}");
        assert_eq!(store.list(), before);
        assert_eq!(
            LaneStore::open(dir.path(), Pools::default())
                .expect("reopen")
                .list(),
            before
        );

        // Once the disk is writable again, the next change writes a new
        // base and later ones append again.
        std::fs::remove_dir(tmp_path(&dir.path().join(FILE_NAME))).expect("unblock");
        store.create(spec(r#"{"name":"b"}"#)).expect("b");
        store.create(spec(r#"{"name":"c"}"#)).expect("c");
        assert_eq!(journal_lines(dir.path()), 1);
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
    }

    fn journal_lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(JOURNAL_NAME)).map_or(0, |j| j.lines().count())
    }

    #[test]
    fn a_change_appends_one_journal_line_and_replays() {
        let (dir, mut store) = open();
        let base = std::fs::read(dir.path().join(FILE_NAME)).expect("base");
        store
            .create(spec(r#"{"name":"a","services":{"web":"v1"}}"#))
            .expect("a");
        store
            .patch("a", patch(r#"{"labels":{"team":"qa"}}"#))
            .expect("patch");
        store.create(spec(r#"{"name":"b"}"#)).expect("b");
        store.delete("b").expect("delete");
        assert_eq!(journal_lines(dir.path()), 4);
        assert_eq!(
            std::fs::read(dir.path().join(FILE_NAME)).expect("base"),
            base,
            "the base is not rewritten per change"
        );
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
        assert_eq!(reopened.get("a").map(|l| l.labels.len()), Some(1));
    }

    #[test]
    fn an_unfinished_last_record_is_dropped_and_cut() {
        let (dir, mut store) = open();
        store.create(spec(r#"{"name":"a"}"#)).expect("a");
        let before = store.list();
        drop(store);
        let path = dir.path().join(JOURNAL_NAME);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, br#"{"seq":3,"put":[{"name":"b","serv"#).expect("write");
        drop(f);
        let mut store =
            LaneStore::open(dir.path(), Pools::default()).expect("a torn tail is not corruption");
        assert_eq!(store.list(), before);
        assert_eq!(journal_lines(dir.path()), 1);
        store.create(spec(r#"{"name":"b"}"#)).expect("b");
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
    }

    #[test]
    fn a_corrupt_journal_line_is_an_error_naming_file_and_line() {
        let (dir, mut store) = open();
        store.create(spec(r#"{"name":"a"}"#)).expect("a");
        store.create(spec(r#"{"name":"b"}"#)).expect("b");
        drop(store);
        let path = dir.path().join(JOURNAL_NAME);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(
            &path,
            format!("{}\n{{\"seq\":9,\"put\":[{{\"nam\n", lines[0]),
        )
        .expect("write");
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("corrupt")
            .to_string();
        assert!(msg.contains("lanes.journal is corrupt: line 2"), "{msg}");
        assert!(msg.contains("never resets"), "{msg}");
        // a record that breaks the store's invariants names the journal too
        std::fs::write(
            &path,
            format!("{}\n{{\"seq\":9,\"delete\":[\"baseline\"]}}\n", lines[0]),
        )
        .expect("write");
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("inconsistent")
            .to_string();
        assert!(msg.contains("lanes.journal is corrupt"), "{msg}");
        assert!(msg.contains("unknown parent \"baseline\""), "{msg}");
    }

    #[test]
    fn a_version_2_file_is_migrated_to_a_base_and_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = r#"{
  "version": 2,
  "lanes": [
    {"name":"a","services":{"web":"v2"},"parent":"baseline","strict":true,"created_at":1,"updated_at":1,"entries":{"vip":null,"port":null,"hostname":"a.x"}},
    {"name":"baseline","services":{},"parent":null,"strict":false,"created_at":1,"updated_at":1,"entries":{"vip":null,"port":null,"hostname":""}}
  ],
  "quarantine": [{"lane":"gone","vip":"10.0.0.9","released_at":1,"until":4000000000}]
}"#;
        std::fs::write(dir.path().join(FILE_NAME), v2).expect("write");
        let mut store = LaneStore::open(dir.path(), Pools::default()).expect("open");
        let a = store.get("a").cloned().expect("a");
        assert!(a.strict && a.services["web"] == "v2");
        assert_eq!(store.quarantine().len(), 1);
        let base: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE_NAME)).expect("base"))
                .expect("json");
        assert_eq!(base["version"], 3, "rewritten at once: {base}");
        store.create(spec(r#"{"name":"b"}"#)).expect("b");
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
        assert_eq!(reopened.quarantine(), store.quarantine());
    }

    #[test]
    fn compaction_writes_a_base_and_reopens_the_same() {
        let (dir, mut store) = open();
        store.journal_mut().compact_above(2_000);
        for i in 0..40 {
            store
                .create(spec(&format!(
                    r#"{{"name":"l-{i}","services":{{"s":"v{i}"}}}}"#
                )))
                .expect("create");
            if i % 5 == 4 {
                store.delete(&format!("l-{}", i - 2)).expect("delete");
            }
            if i == 20 {
                // reopened while a compaction may be running
                let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
                assert_eq!(reopened.list(), store.list());
            }
        }
        store.journal_mut().wait_compaction();
        let base: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE_NAME)).expect("base"))
                .expect("json");
        assert!(base["seq"].as_u64().is_some_and(|s| s > 1), "{base}");
        assert!(journal_lines(dir.path()) < 40, "the journal was emptied");
        let leftovers = std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains("sealed"))
            })
            .count();
        assert_eq!(
            leftovers, 0,
            "the sealed journals the base includes are deleted"
        );
        let reopened = LaneStore::open(dir.path(), Pools::default()).expect("reopen");
        assert_eq!(reopened.list(), store.list());
    }

    #[test]
    fn quarantine_delta_is_a_multiset_difference() {
        let q = |lane: &str, until: u64| Quarantined {
            lane: lane.into(),
            vip: None,
            port: Some(1),
            released_at: 0,
            until,
        };
        let old = vec![q("a", 1), q("b", 2), q("c", 3)];
        let new = vec![q("b", 2), q("c", 3), q("d", 4)];
        let (removed, added) = quarantine_delta(&old, &new);
        assert_eq!((removed, added), (vec![q("a", 1)], vec![q("d", 4)]));
        let new = vec![q("a", 1), q("x", 2), q("c", 3)];
        let (removed, added) = quarantine_delta(&old, &new);
        assert_eq!(
            (removed.clone(), added.clone()),
            (vec![q("b", 2)], vec![q("x", 2)])
        );
        let (mut lanes, mut applied) = (BTreeMap::new(), old.clone());
        apply_record(
            &mut lanes,
            &mut applied,
            Record {
                unquarantine: removed,
                quarantine: added,
                ..Record::default()
            },
        );
        assert_eq!(applied.len(), 3);
        assert!(new.iter().all(|n| applied.contains(n)));
        assert_eq!(quarantine_delta(&old, &old), (vec![], vec![]));
    }

    #[test]
    fn corrupt_or_inconsistent_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, "{\"version\":1,\"lanes\":[").expect("write");
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("truncated")
            .to_string();
        assert!(msg.contains("lanes.json is corrupt"), "{msg}");

        let lane = |name: &str, parent: Option<&str>| Lane {
            name: name.into(),
            parent: parent.map(Into::into),
            ..Lane::default()
        };
        let write = |lanes: Vec<Lane>| {
            let body = serde_json::json!({"version": 1, "lanes": lanes});
            std::fs::write(&file, body.to_string()).expect("write");
        };
        write(vec![
            lane(BASELINE, None),
            lane("a", Some("b")),
            lane("b", Some("a")),
        ]);
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("cycle")
            .to_string();
        assert!(msg.contains("cycle"), "{msg}");
        write(vec![lane(BASELINE, None), lane("a", Some("ghost"))]);
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("unknown parent")
            .to_string();
        assert!(msg.contains("unknown parent \"ghost\""), "{msg}");
        write(vec![lane("a", Some(BASELINE))]);
        let msg = LaneStore::open(dir.path(), Pools::default())
            .expect_err("missing baseline parent")
            .to_string();
        assert!(msg.contains("unknown parent \"baseline\""), "{msg}");
    }
}
