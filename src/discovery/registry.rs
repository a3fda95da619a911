//! The embedded registry: the durable set of instances registered through
//! the admin API (Consul-compatible register/deregister/check endpoints),
//! kept in `<data_dir>/instances.json`. Control plane only: synchronous,
//! called with the registry behind a `tokio::sync::Mutex`; the data plane
//! sees instances only through the [`Catalog`] a snapshot is compiled from.
//!
//! Every change is applied to a copy, written with
//! [`write_atomic`](crate::allocation::file::write_atomic), and only then
//! committed, so a failed write leaves memory as it was and the caller can
//! report the error.
//!
//! Cost: a change rewrites the whole file, one instance per line (about
//! 300–600 bytes each: tens of thousands of instances is a few MB and a few
//! milliseconds plus an fsync per change). TTL heartbeats that do not change
//! a check's status are kept in memory only (their output is written with the
//! next real change), so steady heartbeats cost no disk writes.
//!
//! Differences from a Consul agent: TTLs are recorded but not enforced yet,
//! HTTP/TCP checks are not run (see [`register`](super::register)), and
//! `/v1/agent/check/pass|warn|fail` may update any check, not only TTL ones,
//! which is how an operator takes an instance out of rotation by hand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{Catalog, Health, Instance};
use crate::allocation::file::{persist, read_json};
use crate::allocation::StoreError;

/// The registry's file name inside the data directory.
pub const FILE_NAME: &str = "instances.json";
/// The on-disk format version this build reads and writes.
const FORMAT: u32 = 1;

/// Why a registry update was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `/v1/agent/check/…/<id>` for a check no instance has (404).
    #[error("check {0:?} is not registered; register the service with this CheckID first")]
    CheckNotFound(String),
    /// The change could not be saved; nothing changed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
struct StoredFile {
    version: u32,
    instances: Vec<Instance>,
}

/// The durable set of registered instances, keyed by instance id.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    instances: BTreeMap<String, Arc<Instance>>,
    /// check id → id of the instance that owns it.
    check_owner: HashMap<String, String>,
}

impl Registry {
    /// Loads `<data_dir>/instances.json`. A missing file is an empty
    /// registry; an unreadable or corrupt file is an error naming the file,
    /// never a silent reset.
    pub fn open(data_dir: &Path) -> Result<Registry, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let mut instances = BTreeMap::new();
        if let Some(file) = read_json::<StoredFile>(&path)? {
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
        }
        let check_owner = index_checks(&instances).map_err(|detail| StoreError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        Ok(Registry {
            path,
            instances,
            check_owner,
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
        let mut next = self.instances.clone();
        for check in &inst.checks {
            let Some(owner) = self.check_owner.get(&check.id).filter(|o| **o != inst.id) else {
                continue;
            };
            if let Some(other) = next.get_mut(owner) {
                tracing::warn!(check = %check.id, from = %owner, to = %inst.id, "check id moves to another instance");
                let other = Arc::make_mut(other);
                other.checks.retain(|c| c.id != check.id);
                other.refresh_health();
            }
        }
        next.insert(inst.id.clone(), Arc::new(inst));
        self.commit(next)?;
        Ok(true)
    }

    /// Removes the instance `id`. `Ok(false)` when it was not registered
    /// (Consul treats that as a no-op too).
    pub fn deregister(&mut self, id: &str) -> Result<bool, StoreError> {
        if !self.instances.contains_key(id) {
            return Ok(false);
        }
        let mut next = self.instances.clone();
        next.remove(id);
        self.commit(next)?;
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
        inst.refresh_health();
        let id = inst.id.clone();
        if !status_changed {
            self.instances.insert(id, Arc::new(inst));
            return Ok(false);
        }
        let mut next = self.instances.clone();
        next.insert(id, Arc::new(inst));
        self.commit(next)?;
        Ok(true)
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

    /// The file this registry persists to.
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

    /// Writes `next`, then makes it the current state.
    fn commit(&mut self, next: BTreeMap<String, Arc<Instance>>) -> Result<(), StoreError> {
        let check_owner = index_checks(&next).map_err(|detail| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("refusing to write: {detail}"),
        })?;
        persist(&self.path, &encode(&self.path, &next)?)?;
        self.instances = next;
        self.check_owner = check_owner;
        Ok(())
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

/// `{"version":1,"instances":[` then one compact instance per line, so a
/// parse error's line number points at the instance.
fn encode(path: &Path, instances: &BTreeMap<String, Arc<Instance>>) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + instances.len() * 512);
    out.extend_from_slice(format!("{{\"version\":{FORMAT},\"instances\":[").as_bytes());
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
        // A directory where the temp file goes makes every write fail, even as root.
        std::fs::create_dir(tmp_path(&dir.path().join(FILE_NAME))).expect("mkdir");

        let err = reg.register(web("web-2", "v1")).expect_err("cannot write");
        assert!(err.to_string().contains("instances.json"), "{err}");
        assert!(reg.deregister("web-1").is_err());
        assert!(matches!(
            reg.update_check("web-1-ttl", Health::Passing, None),
            Err(RegistryError::Store(_))
        ));
        assert_eq!(reg.catalog().instances, before);
        assert_eq!(
            Registry::open(dir.path())
                .expect("reopen")
                .catalog()
                .instances,
            before
        );
    }
}
