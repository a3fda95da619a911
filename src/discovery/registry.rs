//! The embedded registry: the durable set of instances registered through
//! the admin API (Consul-compatible register/deregister/check endpoints).
//! Control plane only: synchronous, called with the registry behind a
//! `tokio::sync::Mutex`; the data plane sees instances only through the
//! [`Catalog`] a snapshot is compiled from.
//!
//! On disk, in the data directory:
//! - `instances.json`, the base: `{"version":1,"seq":N,"instances":[…]}`,
//!   one instance per line, replaced atomically
//!   ([`write_atomic`](crate::allocation::file::write_atomic));
//! - `instances.journal`, the changes since the base: one JSON record per
//!   line, `{"seq":N+1,"put":[instance…],"delete":[id…]}`, each appended and
//!   fsync'd before the change is applied in memory and acknowledged.
//!
//! The journal's mechanics (append, compaction on a background thread,
//! replay, a torn last line dropped, anything else corrupt an error naming
//! file and line) are shared with the lane store:
//! [`journal`](crate::allocation::journal). A change therefore costs one
//! small append and one `fdatasync`, whatever the registry's size. A failed
//! append leaves memory unchanged; the next change writes a whole new base.
//!
//! TTL heartbeats that do not change a check's status are kept in memory
//! only (their output is written with the next compaction or with a change
//! to that instance), so steady heartbeats cost no disk writes.
//!
//! The registry's index (Consul's `X-Consul-Index`) is the sequence number
//! of the last durable change: it only grows, across restarts too, and it
//! moves when an instance or a check's status changes, not on a heartbeat
//! that only changes a check's output. [`Registry::subscribe`] wakes
//! blocking queries when it moves. TTL and HTTP/TCP checks are run by
//! [`checks`](super::checks), which reads [`Registry::ttl_deadline`].
//!
//! Difference from a Consul agent: `/v1/agent/check/pass|warn|fail` may
//! update any check, not only TTL ones, which is how an operator takes an
//! instance out of rotation by hand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Catalog, CheckKind, CheckState, Health, Instance};
use crate::allocation::file::read_json;
use crate::allocation::journal::{Journal, Opened, Sequenced};
use crate::allocation::StoreError;

/// The registry's base file name inside the data directory.
pub const FILE_NAME: &str = "instances.json";
/// The journal of changes since the base, next to it.
pub const JOURNAL_NAME: &str = "instances.journal";
/// The on-disk format version this build reads and writes.
const FORMAT: u32 = 1;

/// Why a registry update was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `/v1/agent/check/…/<id>` for a check no instance has (404).
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    CheckNotFound(String),
    /// A service ID no instance has (404).
    #[error(
        "Unknown service ID {0:?}. Ensure that the service ID is passed, not the service name."
    )]
    ServiceNotFound(String),
    /// The change could not be saved; nothing changed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
struct StoredFile {
    version: u32,
    /// The last journal record this base includes (0: none).
    #[serde(default)]
    seq: u64,
    instances: Vec<Instance>,
}

/// One journal line: a change, applied as a whole.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    seq: u64,
    #[serde(default)]
    put: Vec<Instance>,
    #[serde(default)]
    delete: Vec<String>,
}

impl Sequenced for Record {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// [`Record`] as written, borrowing the instances.
#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    #[serde(
        skip_serializing_if = "<[_]>::is_empty",
        serialize_with = "instances_out"
    )]
    put: &'a [Arc<Instance>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    delete: &'a [String],
}

fn instances_out<S: serde::Serializer>(list: &&[Arc<Instance>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|i| &**i))
}

/// The durable set of registered instances, keyed by instance id.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    instances: BTreeMap<String, Arc<Instance>>,
    /// check id → id of the instance that owns it.
    check_owner: HashMap<String, String>,
    journal: Journal,
    /// The index as blocking queries see it (`seq`, at least 1).
    index: watch::Sender<u64>,
    /// Instance id → (CreateIndex, ModifyIndex); in memory, so after a
    /// restart every instance starts at the index it was loaded at.
    indexes: HashMap<String, (u64, u64)>,
    /// TTL check id → when its TTL last started (registration or update).
    ttl_started: HashMap<String, Instant>,
}

/// The id of the check `PUT /v1/agent/service/maintenance/<id>` adds.
pub fn maintenance_check_id(service_id: &str) -> String {
    format!("_service_maintenance:{service_id}")
}

/// Consul's note for a maintenance check enabled without a reason.
pub const DEFAULT_MAINTENANCE_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

impl Registry {
    /// Loads `<data_dir>/instances.json` and replays `instances.journal`. A
    /// missing file is an empty registry; an unreadable or corrupt file is
    /// an error naming the file, never a silent reset.
    pub fn open(data_dir: &Path) -> Result<Registry, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let journal_path = data_dir.join(JOURNAL_NAME);
        let load_base = || {
            let mut instances = BTreeMap::new();
            let Some(file) = read_json::<StoredFile>(&path)? else {
                return Ok((0, instances));
            };
            let corrupt = |detail: String| StoreError::Corrupt {
                path: path.clone(),
                detail,
            };
            if file.version != FORMAT {
                return Err(corrupt(format!(
                    "format version {} is not supported by this laneway (expected {FORMAT})",
                    file.version
                )));
            }
            for mut inst in file.instances {
                if inst.id.is_empty() {
                    return Err(corrupt(format!(
                        "an instance of service {:?} has an empty id",
                        inst.service
                    )));
                }
                inst.refresh_health();
                let id = inst.id.clone();
                if instances.insert(id.clone(), Arc::new(inst)).is_some() {
                    return Err(corrupt(format!("instance {id:?} appears twice")));
                }
            }
            Ok((file.seq, instances))
        };
        let apply = |instances: &mut BTreeMap<String, Arc<Instance>>, record: Record| {
            for id in record.delete {
                instances.remove(&id);
            }
            for mut inst in record.put {
                if inst.id.is_empty() {
                    return Err(format!(
                        "an instance of service {:?} has an empty id",
                        inst.service
                    ));
                }
                inst.refresh_health();
                instances.insert(inst.id.clone(), Arc::new(inst));
            }
            Ok(())
        };
        let Opened {
            state: instances,
            journal,
            replayed,
        } = Journal::open(&path, &journal_path, "registry", load_base, apply)?;
        let check_owner = index_checks(&instances).map_err(|detail| StoreError::Corrupt {
            path: if replayed > 0 {
                journal_path.clone()
            } else {
                path.clone()
            },
            detail,
        })?;
        let seq = journal.next_seq().saturating_sub(1);
        let now = Instant::now();
        let indexes = instances
            .keys()
            .map(|id| (id.clone(), (seq.max(1), seq.max(1))))
            .collect();
        let ttl_started = instances
            .values()
            .flat_map(|i| i.checks.iter())
            .filter(|c| c.ttl_ms.is_some())
            .map(|c| (c.id.clone(), now))
            .collect();
        Ok(Registry {
            path,
            instances,
            check_owner,
            journal,
            index: watch::Sender::new(seq.max(1)),
            indexes,
            ttl_started,
        })
    }

    /// Adds or replaces the instance with `inst.id`. Returns `Ok(false)`
    /// without writing when the instance is already registered as is.
    ///
    /// As in Consul, a check whose id is already known keeps its current
    /// status and output (a periodic re-registration does not reset a TTL
    /// check to critical), and a check id owned by another instance moves to
    /// this one.
    pub fn register(&mut self, mut inst: Instance) -> Result<bool, StoreError> {
        let given = inst.checks.len();
        let mut seen = HashSet::new();
        inst.checks.retain(|c| seen.insert(c.id.clone()));
        if inst.checks.len() < given {
            // parse_registration rejects this; guard against other callers.
            tracing::warn!(instance = %inst.id, "duplicate check ids; kept the first of each");
        }
        for check in &mut inst.checks {
            if let Some(prev) = self.check(&check.id) {
                check.status = prev.status;
                check.output.clone_from(&prev.output);
            }
        }
        inst.refresh_health();
        if self
            .instances
            .get(&inst.id)
            .is_some_and(|old| **old == inst)
        {
            return Ok(false);
        }
        let mut put: Vec<Arc<Instance>> = Vec::with_capacity(1);
        for check in &inst.checks {
            let Some(owner) = self.check_owner.get(&check.id).filter(|o| **o != inst.id) else {
                continue;
            };
            // an earlier check of this registration may have taken one already
            let at = put.iter().position(|p| p.id == *owner);
            let current = match at {
                Some(i) => put[i].clone(),
                None => match self.instances.get(owner) {
                    Some(o) => o.clone(),
                    None => continue,
                },
            };
            tracing::warn!(check = %check.id, from = %owner, to = %inst.id, "check id moves to another instance");
            let mut other = Instance::clone(&current);
            other.checks.retain(|c| c.id != check.id);
            other.refresh_health();
            match at {
                Some(i) => put[i] = Arc::new(other),
                None => put.push(Arc::new(other)),
            }
        }
        put.push(Arc::new(inst));
        self.commit(put, Vec::new())?;
        Ok(true)
    }

    /// Removes the instance `id`. `Ok(false)` when it was not registered
    /// (Consul treats that as a no-op too).
    pub fn deregister(&mut self, id: &str) -> Result<bool, StoreError> {
        if !self.instances.contains_key(id) {
            return Ok(false);
        }
        self.commit(Vec::new(), vec![id.to_owned()])?;
        Ok(true)
    }

    /// Sets a check's status and output (`/v1/agent/check/pass|warn|fail`;
    /// `output` is Consul's `note`, none clears it). Returns `Ok(true)` when
    /// the status changed, which is persisted; an unchanged status only
    /// updates the output in memory and returns `Ok(false)`.
    pub fn update_check(
        &mut self,
        check_id: &str,
        status: Health,
        output: Option<String>,
    ) -> Result<bool, RegistryError> {
        let not_found = || RegistryError::CheckNotFound(check_id.to_owned());
        let owner = self.check_owner.get(check_id).ok_or_else(not_found)?;
        let current = self.instances.get(owner).ok_or_else(not_found)?;
        let mut inst = Instance::clone(current);
        let check = inst
            .checks
            .iter_mut()
            .find(|c| c.id == check_id)
            .ok_or_else(not_found)?;
        let status_changed = check.status != status;
        check.status = status;
        check.output = output.unwrap_or_default();
        if check.ttl_ms.is_some() {
            self.ttl_started.insert(check_id.to_owned(), Instant::now());
        }
        inst.refresh_health();
        let id = inst.id.clone();
        if !status_changed {
            self.instances.insert(id, Arc::new(inst));
            return Ok(false);
        }
        self.commit(vec![Arc::new(inst)], Vec::new())?;
        Ok(true)
    }

    /// As [`register`](Self::register), but keeps the checks of the
    /// instance already registered under this id that the new registration
    /// does not list (added by `/v1/agent/check/register` or maintenance),
    /// as a Consul agent does unless `replace-existing-checks` is set.
    pub fn register_keeping_checks(&mut self, mut inst: Instance) -> Result<bool, StoreError> {
        if let Some(old) = self.instances.get(&inst.id) {
            for check in &old.checks {
                if !inst.checks.iter().any(|c| c.id == check.id) {
                    inst.checks.push(check.clone());
                }
            }
        }
        self.register(inst)
    }

    /// Adds (or replaces) a check of the instance `service_id`
    /// (`PUT /v1/agent/check/register`). An existing check with this id
    /// keeps its status unless `check` gives one explicitly.
    pub fn add_check(
        &mut self,
        service_id: &str,
        check: CheckState,
        explicit_status: bool,
    ) -> Result<bool, RegistryError> {
        let current = self
            .instances
            .get(service_id)
            .ok_or_else(|| RegistryError::ServiceNotFound(service_id.to_owned()))?;
        let mut inst = Instance::clone(current);
        let status = check.status;
        inst.checks.retain(|c| c.id != check.id);
        inst.checks.push(check.clone());
        let changed = self.register(inst)?;
        if explicit_status && self.check(&check.id).is_some_and(|c| c.status != status) {
            self.update_check(&check.id, status, None)?;
            return Ok(true);
        }
        Ok(changed)
    }

    /// Removes a check (`PUT /v1/agent/check/deregister/<id>`).
    pub fn remove_check(&mut self, check_id: &str) -> Result<(), RegistryError> {
        let not_found = || RegistryError::CheckNotFound(check_id.to_owned());
        let owner = self.check_owner.get(check_id).ok_or_else(not_found)?;
        let current = self.instances.get(owner).ok_or_else(not_found)?;
        let mut inst = Instance::clone(current);
        inst.checks.retain(|c| c.id != check_id);
        inst.refresh_health();
        self.commit(vec![Arc::new(inst)], Vec::new())?;
        Ok(())
    }

    /// Puts the instance into maintenance (`reason` given: adds the critical
    /// `_service_maintenance:<id>` check) or takes it out (`None`: removes
    /// it). Returns whether anything changed.
    pub fn set_maintenance(
        &mut self,
        service_id: &str,
        reason: Option<String>,
    ) -> Result<bool, RegistryError> {
        let current = self
            .instances
            .get(service_id)
            .ok_or_else(|| RegistryError::ServiceNotFound(service_id.to_owned()))?;
        let check_id = maintenance_check_id(service_id);
        let present = current.checks.iter().any(|c| c.id == check_id);
        let Some(reason) = reason else {
            if !present {
                return Ok(false);
            }
            self.remove_check(&check_id)?;
            return Ok(true);
        };
        if present {
            return Ok(false);
        }
        let mut inst = Instance::clone(current);
        inst.checks.push(CheckState {
            id: check_id,
            name: "Service Maintenance Mode".into(),
            kind: CheckKind::Maintenance,
            status: Health::Critical,
            output: String::new(),
            ttl_ms: None,
            spec: super::CheckSpec {
                notes: if reason.is_empty() {
                    DEFAULT_MAINTENANCE_REASON.to_owned()
                } else {
                    reason
                },
                ..Default::default()
            },
        });
        inst.refresh_health();
        self.commit(vec![Arc::new(inst)], Vec::new())?;
        Ok(true)
    }

    /// The registry's index: the sequence number of the last durable
    /// change, at least 1 (Consul never answers index 0).
    pub fn index(&self) -> u64 {
        self.seq().max(1)
    }

    /// The sequence number of the last change applied.
    fn seq(&self) -> u64 {
        self.journal.next_seq().saturating_sub(1)
    }

    /// A receiver that sees the index move (blocking queries wait on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// `(CreateIndex, ModifyIndex)` of an instance.
    pub fn instance_indexes(&self, id: &str) -> (u64, u64) {
        self.indexes
            .get(id)
            .copied()
            .unwrap_or((self.index(), self.index()))
    }

    /// When the TTL check `check_id` expires unless updated before.
    pub fn ttl_deadline(&self, check_id: &str) -> Option<Instant> {
        let ttl = self.check(check_id)?.ttl_ms?;
        let started = self.ttl_started.get(check_id)?;
        Some(*started + Duration::from_millis(ttl))
    }

    /// The check `check_id` and the id of the instance that has it.
    pub fn find_check(&self, check_id: &str) -> Option<(&Instance, &CheckState)> {
        let owner = self.check_owner.get(check_id)?;
        let inst = self.instances.get(owner)?;
        Some((inst, inst.checks.iter().find(|c| c.id == check_id)?))
    }

    /// All instances, sorted by id; cheap (one `Arc` clone per instance).
    pub fn catalog(&self) -> Catalog {
        Catalog {
            instances: self.instances.values().cloned().collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.instances.get(id).map(|i| &**i)
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The base file this registry persists to (the journal sits next to it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, check_id: &str) -> Option<&super::CheckState> {
        let owner = self.check_owner.get(check_id)?;
        self.instances
            .get(owner)?
            .checks
            .iter()
            .find(|c| c.id == check_id)
    }

    /// Makes one change durable, then applies it. On error nothing changed
    /// in memory.
    fn commit(&mut self, put: Vec<Arc<Instance>>, delete: Vec<String>) -> Result<(), StoreError> {
        let seq = self.journal.next_seq();
        if self.journal.is_broken() {
            // Write the whole state with the change; undo it if that fails.
            let (put2, delete2) = (put.clone(), delete.clone());
            let (undo_put, undo_delete) = self.apply(put, delete);
            let instances = &self.instances;
            let path = &self.path;
            if let Err(e) = self
                .journal
                .rewrite(true, |seq| encode(path, seq, instances))
            {
                self.apply(undo_put, undo_delete);
                return Err(e);
            }
            self.note_change(&put2, &delete2, seq);
            self.index.send_replace(self.seq().max(1));
            return Ok(());
        }
        self.journal.append(&RecordOut {
            seq,
            put: &put,
            delete: &delete,
        })?;
        self.note_change(&put, &delete, seq);
        self.apply(put, delete);
        self.index.send_replace(seq.max(1));
        if self.journal.wants_compaction() {
            let (path, instances) = (self.path.clone(), self.instances.clone());
            self.journal
                .start_compaction(move |seq| encode(&path, seq, &instances));
        }
        Ok(())
    }

    /// Keeps the in-memory indexes and TTL clocks in step with a change
    /// about to be applied at `seq`.
    fn note_change(&mut self, put: &[Arc<Instance>], delete: &[String], seq: u64) {
        let now = Instant::now();
        for id in delete {
            self.indexes.remove(id);
            if let Some(old) = self.instances.get(id) {
                for c in &old.checks {
                    self.ttl_started.remove(&c.id);
                }
            }
        }
        for inst in put {
            let create = self.indexes.get(&inst.id).map_or(seq, |(c, _)| *c);
            self.indexes.insert(inst.id.clone(), (create, seq));
            for c in inst.checks.iter().filter(|c| c.ttl_ms.is_some()) {
                self.ttl_started.entry(c.id.clone()).or_insert(now);
            }
        }
    }

    /// Applies a change in memory. Returns the change that undoes it.
    fn apply(
        &mut self,
        put: Vec<Arc<Instance>>,
        delete: Vec<String>,
    ) -> (Vec<Arc<Instance>>, Vec<String>) {
        let mut undo_put = Vec::new();
        let mut undo_delete = Vec::new();
        for id in delete {
            if let Some(old) = self.instances.remove(&id) {
                self.forget_checks(&old);
                undo_put.push(old);
            }
        }
        for inst in put {
            match self.instances.insert(inst.id.clone(), inst.clone()) {
                Some(old) => {
                    self.forget_checks(&old);
                    undo_put.push(old);
                }
                None => undo_delete.push(inst.id.clone()),
            }
            for check in &inst.checks {
                self.check_owner.insert(check.id.clone(), inst.id.clone());
            }
        }
        // undo in reverse: the deletions of what was added, then the old values
        (undo_put, undo_delete)
    }

    fn forget_checks(&mut self, inst: &Instance) {
        for check in &inst.checks {
            if self.check_owner.get(&check.id) == Some(&inst.id) {
                self.check_owner.remove(&check.id);
            }
        }
    }

    /// Writes the whole state as a new base, then empties the journal
    /// (synchronously; tests).
    #[cfg(test)]
    fn compact(&mut self) -> Result<(), StoreError> {
        let (path, instances) = (&self.path, &self.instances);
        self.journal
            .rewrite(false, |seq| encode(path, seq, instances))
    }
}

/// check id → owning instance id; a check id owned twice is an error.
fn index_checks(
    instances: &BTreeMap<String, Arc<Instance>>,
) -> Result<HashMap<String, String>, String> {
    let mut owner = HashMap::new();
    for inst in instances.values() {
        for check in &inst.checks {
            if let Some(first) = owner.insert(check.id.clone(), inst.id.clone()) {
                return Err(format!(
                    "check {:?} belongs to both {first:?} and {:?}",
                    check.id, inst.id
                ));
            }
        }
    }
    Ok(owner)
}

/// `{"version":1,"seq":N,"instances":[` then one compact instance per line,
/// so a parse error's line number points at the instance.
fn encode(
    path: &Path,
    seq: u64,
    instances: &BTreeMap<String, Arc<Instance>>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + instances.len() * 512);
    out.extend_from_slice(
        format!("{{\"version\":{FORMAT},\"seq\":{seq},\"instances\":[").as_bytes(),
    );
    for (n, inst) in instances.values().enumerate() {
        out.extend_from_slice(if n == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, &**inst).map_err(|source| StoreError::Encode {
            path: path.to_owned(),
            source,
        })?;
    }
    out.extend_from_slice(b"\n]}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::file::tmp_path;
    use std::io::Write;

    use crate::discovery::register::parse_registration;

    fn inst(body: &str) -> Instance {
        parse_registration(body.as_bytes(), "version", "lane").expect("valid registration")
    }

    fn web(id: &str, version: &str) -> Instance {
        inst(&format!(
            r#"{{"ID":"{id}","Name":"web","Address":"10.0.0.1","Port":8080,"Meta":{{"version":"{version}"}},
                "Check":{{"CheckID":"{id}-ttl","TTL":"10s"}}}}"#
        ))
    }

    #[test]
    fn the_index_moves_with_durable_changes_only_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        assert_eq!(reg.index(), 1, "never 0");
        let mut changes = reg.subscribe();
        reg.register(web("web-1", "v1")).expect("register");
        assert!(changes.has_changed().expect("open"));
        let after_register = reg.index();
        assert_eq!(
            reg.instance_indexes("web-1"),
            (after_register, after_register)
        );
        changes.mark_unchanged();
        reg.update_check("web-1-ttl", Health::Passing, Some("a".into()))
            .expect("pass");
        let after_pass = reg.index();
        assert!(after_pass > after_register);
        assert_eq!(reg.instance_indexes("web-1"), (after_register, after_pass));
        changes.mark_unchanged();
        reg.update_check("web-1-ttl", Health::Passing, Some("b".into()))
            .expect("heartbeat");
        assert_eq!(reg.index(), after_pass, "an output-only heartbeat");
        assert!(!changes.has_changed().expect("open"));
        drop(reg);
        assert_eq!(
            Registry::open(dir.path()).expect("reopen").index(),
            after_pass
        );
    }

    #[test]
    fn checks_are_added_removed_and_kept_across_reregistration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let extra = inst(
            r#"{"ID":"x","Name":"x","Address":"10.0.0.1","Port":1,"Check":{"CheckID":"beat","TTL":"1h","Status":"passing"}}"#,
        )
        .checks
        .remove(0);
        assert!(reg.add_check("web-1", extra.clone(), true).expect("add"));
        assert!(matches!(
            reg.add_check("ghost", extra, false),
            Err(RegistryError::ServiceNotFound(_))
        ));
        assert_eq!(
            reg.find_check("beat")
                .map(|(i, c)| (i.id.as_str(), c.status)),
            Some(("web-1", Health::Passing))
        );
        // a re-registration that does not list it keeps it
        reg.register_keeping_checks(web("web-1", "v1"))
            .expect("register");
        assert!(reg.find_check("beat").is_some());
        reg.remove_check("beat").expect("remove");
        assert!(reg.find_check("beat").is_none());
        assert!(matches!(
            reg.remove_check("beat"),
            Err(RegistryError::CheckNotFound(_))
        ));
        // a plain register replaces the check list
        reg.add_check(
            "web-1",
            reg.find_check("web-1-ttl")
                .map(|(_, c)| CheckState {
                    id: "b2".into(),
                    ..c.clone()
                })
                .expect("check"),
            false,
        )
        .expect("add");
        reg.register(web("web-1", "v1")).expect("register");
        assert!(reg.find_check("b2").is_none());
        assert_eq!(
            Registry::open(dir.path())
                .expect("reopen")
                .catalog()
                .instances,
            reg.catalog().instances
        );
    }

    #[test]
    fn maintenance_is_a_critical_check_that_comes_and_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        reg.update_check("web-1-ttl", Health::Passing, None)
            .expect("pass");
        assert!(reg
            .set_maintenance("web-1", Some(String::new()))
            .expect("enable"));
        assert!(!reg
            .set_maintenance("web-1", Some("again".into()))
            .expect("enable twice"));
        let (inst, check) = reg.find_check("_service_maintenance:web-1").expect("added");
        assert_eq!(
            (inst.health, check.kind),
            (Health::Critical, CheckKind::Maintenance)
        );
        assert_eq!(check.spec.notes, DEFAULT_MAINTENANCE_REASON);
        assert!(reg.set_maintenance("web-1", None).expect("disable"));
        assert!(!reg.set_maintenance("web-1", None).expect("disable twice"));
        assert_eq!(reg.get("web-1").map(|i| i.health), Some(Health::Passing));
        assert!(matches!(
            reg.set_maintenance("ghost", None),
            Err(RegistryError::ServiceNotFound(_))
        ));
    }

    #[test]
    fn ttl_deadlines_restart_on_every_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        let before = Instant::now();
        reg.register(web("web-1", "v1")).expect("register");
        let first = reg.ttl_deadline("web-1-ttl").expect("a TTL check");
        assert!(first >= before + Duration::from_secs(10));
        reg.update_check("web-1-ttl", Health::Passing, None)
            .expect("pass");
        assert!(reg.ttl_deadline("web-1-ttl").expect("deadline") >= first);
        assert_eq!(reg.ttl_deadline("nope"), None);
    }

    #[test]
    fn register_persists_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open empty");
        assert!(reg.is_empty());
        assert!(reg.register(web("web-2", "v2")).expect("register"));
        assert!(reg.register(web("web-1", "v1")).expect("register"));
        assert!(
            !reg.register(web("web-1", "v1")).expect("same again"),
            "no change"
        );
        assert!(
            reg.register(web("web-1", "v3")).expect("replace"),
            "replaced"
        );

        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            reopened.get("web-1").and_then(|i| i.version.as_deref()),
            Some("v3")
        );
        let ids: Vec<String> = reopened
            .catalog()
            .instances
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(ids, ["web-1", "web-2"], "catalog is sorted by id");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
    }

    #[test]
    fn deregister_unknown_is_ok_false() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        assert!(!reg.deregister("ghost").expect("no-op"));
        reg.register(web("web-1", "v1")).expect("register");
        assert!(reg.deregister("web-1").expect("remove"));
        assert!(Registry::open(dir.path()).expect("reopen").is_empty());
        assert!(matches!(
            reg.update_check("web-1-ttl", Health::Passing, None),
            Err(RegistryError::CheckNotFound(_))
        ));
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(FILE_NAME),
            "{\"version\":1,\"instances\":[\n{\"id\":",
        )
        .expect("write");
        let msg = Registry::open(dir.path()).expect_err("corrupt").to_string();
        assert!(msg.contains("instances.json is corrupt"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        std::fs::write(
            dir.path().join(FILE_NAME),
            "{\"version\":9,\"instances\":[]}",
        )
        .expect("write");
        let msg = Registry::open(dir.path())
            .expect_err("future format")
            .to_string();
        assert!(msg.contains("format version 9"), "{msg}");
    }

    #[test]
    fn update_check_changes_health_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        assert_eq!(
            reg.get("web-1").map(|i| i.health),
            Some(Health::Critical),
            "TTL starts critical"
        );

        assert!(reg
            .update_check("web-1-ttl", Health::Passing, Some("ok".into()))
            .expect("pass"));
        assert_eq!(
            reg.get("web-1").map(|i| (i.health, i.weight())),
            Some((Health::Passing, 1))
        );
        assert!(!reg
            .update_check("web-1-ttl", Health::Passing, Some("still ok".into()))
            .expect("heartbeat"));
        assert_eq!(
            reg.get("web-1").map(|i| i.checks[0].output.as_str()),
            Some("still ok")
        );

        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.get("web-1").map(|i| i.health),
            Some(Health::Passing)
        );

        let err = reg
            .update_check("nope", Health::Warning, None)
            .expect_err("unknown");
        assert!(matches!(&err, RegistryError::CheckNotFound(id) if id == "nope"));
        assert!(err.to_string().contains("\"nope\""));
    }

    #[test]
    fn reregistration_keeps_check_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        reg.update_check("web-1-ttl", Health::Passing, None)
            .expect("pass");
        assert!(
            !reg.register(web("web-1", "v1")).expect("re-register"),
            "unchanged"
        );
        assert_eq!(reg.get("web-1").map(|i| i.health), Some(Health::Passing));
    }

    #[test]
    fn check_id_moves_between_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let thief = inst(
            r#"{"ID":"web-2","Name":"web","Address":"10.0.0.2","Port":80,"Check":{"CheckID":"web-1-ttl","TTL":"5s"}}"#,
        );
        reg.register(thief).expect("register");
        assert_eq!(
            reg.get("web-1").map(|i| (i.checks.len(), i.health)),
            Some((0, Health::Passing))
        );
        assert_eq!(reg.get("web-2").map(|i| i.health), Some(Health::Critical));
        reg.update_check("web-1-ttl", Health::Warning, None)
            .expect("update");
        assert_eq!(reg.get("web-2").map(|i| i.health), Some(Health::Warning));
    }

    #[test]
    fn duplicate_check_ids_keep_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        let mut one = web("web-1", "v1");
        let mut dup = one.checks[0].clone();
        dup.status = Health::Passing;
        one.checks.push(dup);
        assert!(reg.register(one).expect("register"));
        assert_eq!(
            reg.get("web-1").map(|i| (i.checks.len(), i.health)),
            Some((1, Health::Critical))
        );
        assert_eq!(Registry::open(dir.path()).expect("reopen").len(), 1);
    }

    #[test]
    fn failed_write_leaves_state_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let before = reg.catalog().instances;
        // A directory where the base's temp file goes makes every base
        // write fail, even as root; a read-only journal handle makes every
        // append fail.
        std::fs::create_dir(tmp_path(&dir.path().join(FILE_NAME))).expect("mkdir");
        let read_only = std::fs::File::open(dir.path().join(JOURNAL_NAME)).expect("journal exists");
        reg.journal.replace_file(read_only);

        let err = reg.register(web("web-2", "v1")).expect_err("cannot write");
        assert!(err.to_string().contains(JOURNAL_NAME), "{err}");
        // the journal is now unusable: the next changes try a whole base
        let err = reg.deregister("web-1").expect_err("cannot write the base");
        assert!(err.to_string().contains("instances.json"), "{err}");
        assert!(matches!(
            reg.update_check("web-1-ttl", Health::Passing, None),
            Err(RegistryError::Store(_))
        ));
        assert_eq!(reg.catalog().instances, before);
        assert_eq!(
            reg.check("web-1-ttl").map(|c| c.status),
            Some(Health::Critical)
        );
        assert_eq!(
            Registry::open(dir.path())
                .expect("reopen")
                .catalog()
                .instances,
            before
        );

        // Once the disk is writable again the next change writes a new base
        // and a new journal, and later changes append again.
        std::fs::remove_dir(tmp_path(&dir.path().join(FILE_NAME))).expect("rmdir");
        assert!(reg.register(web("web-2", "v1")).expect("register"));
        assert!(!reg.journal.is_broken());
        assert_eq!(reg.journal.bytes(), 0);
        assert!(reg.register(web("web-3", "v1")).expect("register"));
        assert!(reg.journal.bytes() > 0);
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert_eq!(reopened.len(), 3);
    }

    fn journal_lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(JOURNAL_NAME)).map_or(0, |j| j.lines().count())
    }

    #[test]
    fn a_change_appends_one_journal_line_and_leaves_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        reg.register(web("web-2", "v1")).expect("register");
        reg.update_check("web-1-ttl", Health::Passing, None)
            .expect("pass");
        reg.deregister("web-2").expect("deregister");
        assert!(!dir.path().join(FILE_NAME).exists(), "no base written yet");
        assert_eq!(journal_lines(dir.path()), 4);

        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert_eq!(reopened.journal.next_seq(), 5);
        assert_eq!(
            reopened.check("web-1-ttl").map(|c| c.status),
            Some(Health::Passing)
        );
    }

    #[test]
    fn a_moved_check_is_one_record_and_replays_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let thief = inst(
            r#"{"ID":"web-2","Name":"web","Address":"10.0.0.2","Port":80,"Check":{"CheckID":"web-1-ttl","TTL":"5s"}}"#,
        );
        reg.register(thief).expect("register");
        assert_eq!(journal_lines(dir.path()), 2);
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert_eq!(
            reopened.check_owner.get("web-1-ttl").map(String::as_str),
            Some("web-2")
        );
        assert_eq!(reopened.check_owner, reg.check_owner);
    }

    #[test]
    fn compaction_writes_a_base_and_empties_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.journal.compact_above(2_000);
        for i in 0..20 {
            reg.register(web(&format!("web-{i}"), "v1"))
                .expect("register");
        }
        reg.journal.wait_compaction();
        assert!(dir.path().join(FILE_NAME).exists(), "compacted");
        assert!(
            !std::fs::read_dir(dir.path()).expect("list").any(|e| e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains("sealed")),
            "the sealed journals the base includes are deleted"
        );
        assert!(!reg.journal.wants_compaction());
        let base: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE_NAME)).expect("base"))
                .expect("json");
        assert!(
            base["seq"].as_u64().is_some_and(|s| s > 0 && s <= 20),
            "{base}"
        );
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert_eq!(reopened.journal.next_seq(), 21);
    }

    #[test]
    fn changes_during_a_compaction_and_a_crash_before_its_base_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.journal.compact_above(1_500);
        for i in 0..30 {
            reg.register(web(&format!("web-{i}"), "v1"))
                .expect("register");
            if i % 7 == 0 {
                reg.deregister(&format!("web-{}", i / 2))
                    .expect("deregister");
            }
        }
        // Reopened while a compaction may still be running: the base, the
        // sealed journals and the journal together hold every change.
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert_eq!(reopened.journal.next_seq(), reg.journal.next_seq());
        reg.journal.wait_compaction();

        // A crash after sealing but before the base was written: the
        // sealed journal is replayed.
        reg.register(web("web-a", "v2")).expect("register");
        let sealed = dir.path().join(format!(
            "{JOURNAL_NAME}.sealed-{:020}",
            reg.journal.next_seq() - 1
        ));
        std::fs::rename(dir.path().join(JOURNAL_NAME), &sealed).expect("seal");
        reg.journal.forget_file();
        reg.register(web("web-b", "v2")).expect("register");
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert!(reopened.get("web-a").is_some() && reopened.get("web-b").is_some());
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        // The next compaction includes it and deletes it.
        reg.compact().expect("compact");
        assert!(!sealed.exists());
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
    }

    #[test]
    fn records_already_in_the_base_are_skipped() {
        // A base that includes changes the journal left behind does not
        // hold (a crash after a compaction wrote the base but before it
        // emptied the journal): those records must not be applied again.
        // Here the first one would bring back a deregistered instance.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let journal = std::fs::read(dir.path().join(JOURNAL_NAME)).expect("journal");
        reg.register(web("web-2", "v1")).expect("register");
        reg.deregister("web-1").expect("deregister");
        reg.compact().expect("compact");
        std::fs::write(dir.path().join(JOURNAL_NAME), &journal).expect("restore");

        let mut reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
        assert!(reopened.get("web-1").is_none());
        // later changes continue the sequence
        reopened.register(web("web-3", "v1")).expect("register");
        let again = Registry::open(dir.path()).expect("reopen");
        assert_eq!(again.len(), 2);
        assert_eq!(again.journal.next_seq(), 5);
    }

    #[test]
    fn an_unfinished_last_record_is_dropped_and_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        let before = reg.catalog().instances;
        drop(reg);
        // a crash in the middle of appending the second record
        let path = dir.path().join(JOURNAL_NAME);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(br#"{"seq":2,"put":[{"id":"web-2","serv"#)
            .expect("write");
        drop(f);

        let mut reg = Registry::open(dir.path()).expect("a torn tail is not corruption");
        assert_eq!(reg.catalog().instances, before);
        assert_eq!(journal_lines(dir.path()), 1);
        reg.register(web("web-2", "v1")).expect("register");
        let reopened = Registry::open(dir.path()).expect("reopen");
        assert_eq!(reopened.len(), 2);
        assert_eq!(reopened.catalog().instances, reg.catalog().instances);
    }

    #[test]
    fn a_corrupt_journal_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = Registry::open(dir.path()).expect("open");
        reg.register(web("web-1", "v1")).expect("register");
        reg.register(web("web-2", "v1")).expect("register");
        drop(reg);
        let path = dir.path().join(JOURNAL_NAME);
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[0] = "{\"seq\":1,\"put\":[{\"id\":";
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let msg = Registry::open(dir.path()).expect_err("corrupt").to_string();
        assert!(msg.contains("instances.journal is corrupt"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");

        // sequence numbers out of order are corruption too
        let text = text.lines().rev().collect::<Vec<_>>().join("\n") + "\n";
        std::fs::write(&path, text).expect("write");
        let msg = Registry::open(dir.path())
            .expect_err("out of order")
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("must increase"),
            "{msg}"
        );

        std::fs::write(&path, "{\"seq\":1,\"bogus\":true}\n").expect("write");
        let msg = Registry::open(dir.path())
            .expect_err("unknown field")
            .to_string();
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn a_base_without_seq_still_loads() {
        // written by a laneway from before the journal
        let dir = tempfile::tempdir().expect("tempdir");
        let one = serde_json::to_string(&web("web-1", "v1")).expect("encode");
        std::fs::write(
            dir.path().join(FILE_NAME),
            format!("{{\"version\":1,\"instances\":[\n{one}\n]}}\n"),
        )
        .expect("write");
        let mut reg = Registry::open(dir.path()).expect("open");
        assert_eq!(reg.len(), 1);
        reg.register(web("web-2", "v1")).expect("register");
        assert_eq!(Registry::open(dir.path()).expect("reopen").len(), 2);
    }
}
