//! Discovery: the instance model (`Instance`, `Health`, `Catalog`) that the
//! snapshot compiler consumes, the parser for Consul's agent register body,
//! the embedded registry and the runner of its checks. Control plane only: nothing here runs on the
//! request path; the data plane sees instances only through a compiled
//! snapshot.

pub mod checks;
pub mod consul;
pub mod own;
pub mod register;
pub mod registry;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Health of a check or an instance, ordered from best to worst so that the
/// aggregate of several checks is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    /// The spelling Consul uses: `passing`, `warning`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// The aggregate of several statuses: the worst wins; none is passing.
    pub fn worst(statuses: impl IntoIterator<Item = Health>) -> Health {
        statuses.into_iter().max().unwrap_or(Health::Passing)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = String;

    /// Exactly Consul's lowercase spellings; anything else is an error.
    fn from_str(s: &str) -> Result<Health, String> {
        match s {
            "passing" => Ok(Health::Passing),
            "warning" => Ok(Health::Warning),
            "critical" => Ok(Health::Critical),
            other => Err(format!(
                "status {other:?} is not one of \"passing\", \"warning\", \"critical\""
            )),
        }
    }
}

/// What a check is, as far as laneway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Updated from outside through `/v1/agent/check/pass|warn|fail`.
    Ttl,
    /// An HTTP check, run by [`checks`] in embedded mode.
    Http,
    /// A TCP check, run by [`checks`] in embedded mode.
    Tcp,
    /// gRPC, script, alias, H2PING, UDP, OS service: accepted, not run.
    Other,
    /// `_service_maintenance:<id>`, added by
    /// `PUT /v1/agent/service/maintenance/<id>?enable=true`.
    Maintenance,
}

impl CheckKind {
    /// Consul's `Type` of a check: `ttl`, `http`, `tcp`, `maintenance`, or
    /// `""` for the kinds laneway does not run.
    pub fn consul_type(self) -> &'static str {
        match self {
            CheckKind::Ttl => "ttl",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Other => "",
            CheckKind::Maintenance => "maintenance",
        }
    }
}

/// What laneway probes for an HTTP or TCP check (Consul's check definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Http {
        url: String,
        /// `GET` unless the definition says otherwise.
        method: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        header: BTreeMap<String, Vec<String>>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        body: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tls_skip_verify: bool,
    },
    /// `host:port` to connect to.
    Tcp { address: String },
}

/// How and how often a check runs (HTTP and TCP checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub probe: Probe,
    pub interval_ms: u64,
    /// Consul's default is 10 s.
    pub timeout_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The parts of a check's definition beyond its identity and status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Consul `Notes`: free text for humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// What laneway runs for an HTTP or TCP check, and how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<CheckRun>,
    /// Consul `SuccessBeforePassing`: passes in a row before the status
    /// turns passing (0 and 1 mean at once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub success_before_passing: u32,
    /// Consul `FailuresBeforeCritical`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures_before_critical: u32,
    /// Consul `FailuresBeforeWarning` (defaults to `failures_before_critical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_warning: Option<u32>,
    /// Consul `DeregisterCriticalServiceAfter`: the instance is removed
    /// once this check has been critical for that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_after_ms: Option<u64>,
}

/// One check of an instance and its current status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    /// Consul CheckID: given, or `service:<ID>` / `service:<ID>:<n>`.
    pub id: String,
    pub name: String,
    pub kind: CheckKind,
    pub status: Health,
    /// The last note/output reported for the check (Consul `Output`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// The TTL of a TTL check, in milliseconds: without an update for
    /// that long the check turns critical ([`checks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How the check runs and when it turns (Consul's check definition).
    #[serde(flatten)]
    pub spec: CheckSpec,
}

/// One registered endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Consul `Service.ID` (defaults to the name).
    pub id: String,
    /// Consul `Service.Name`.
    pub service: String,
    /// IP or hostname.
    pub address: String,
    pub port: u16,
    /// From `Meta[version_key]`, else a tag `version_key=value`.
    pub version: Option<String>,
    /// From `Meta[lane_key]`, else a tag `lane_key=value`.
    pub lane: Option<String>,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// `Weights.Passing`.
    pub weight_passing: u32,
    /// `Weights.Warning`.
    pub weight_warning: u32,
    /// Aggregate of `checks`: the worst status wins; no checks is passing.
    pub health: Health,
    pub checks: Vec<CheckState>,
}

impl Instance {
    /// The load-balancing weight for the current health: passing →
    /// `weight_passing`, warning → `weight_warning`, critical → 0.
    pub fn weight(&self) -> u32 {
        match self.health {
            Health::Passing => self.weight_passing,
            Health::Warning => self.weight_warning,
            Health::Critical => 0,
        }
    }

    /// Recomputes `health` from `checks`: the worst status wins; an
    /// instance without checks is passing, as in Consul.
    pub fn refresh_health(&mut self) {
        self.health = Health::worst(self.checks.iter().map(|c| c.status));
    }
}

/// An immutable view of all instances: what the snapshot compiler consumes.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sorted by `id`, ids unique.
    pub instances: Vec<Arc<Instance>>,
}

impl Catalog {
    /// The instance with this id (binary search; `instances` is sorted).
    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.instances
            .binary_search_by(|i| i.id.as_str().cmp(id))
            .ok()
            .map(|at| &self.instances[at])
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, health: Health) -> Instance {
        Instance {
            id: id.into(),
            service: "user-api".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            version: None,
            lane: None,
            tags: vec![],
            meta: BTreeMap::new(),
            weight_passing: 10,
            weight_warning: 3,
            health,
            checks: vec![],
        }
    }

    #[test]
    fn weight_follows_health() {
        assert_eq!(inst("a", Health::Passing).weight(), 10);
        assert_eq!(inst("a", Health::Warning).weight(), 3);
        assert_eq!(inst("a", Health::Critical).weight(), 0);
    }

    #[test]
    fn worst_status_wins() {
        assert_eq!(Health::worst([]), Health::Passing);
        assert_eq!(
            Health::worst([Health::Passing, Health::Warning]),
            Health::Warning
        );
        assert_eq!(
            Health::worst([Health::Critical, Health::Warning, Health::Passing]),
            Health::Critical
        );
    }

    #[test]
    fn health_parses_only_consul_spellings() {
        assert_eq!("warning".parse::<Health>(), Ok(Health::Warning));
        assert!("Passing".parse::<Health>().is_err());
        assert!("ok".parse::<Health>().is_err());
    }

    #[test]
    fn catalog_get_by_id() {
        let catalog = Catalog {
            instances: vec![
                Arc::new(inst("a", Health::Passing)),
                Arc::new(inst("b", Health::Warning)),
            ],
        };
        assert_eq!(catalog.get("b").map(|i| i.health), Some(Health::Warning));
        assert!(catalog.get("c").is_none());
    }
}
