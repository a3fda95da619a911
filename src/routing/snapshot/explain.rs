//! Read-only views of a snapshot for the admin API's explain: the lane
//! definitions behind the views, fallback chains, which versions have
//! healthy instances, and every instance of a service. Not on the request
//! path.

use std::sync::Arc;

use super::{Snapshot, BASELINE};
use crate::allocation::lanes::Lane;
use crate::discovery::Instance;

impl Snapshot {
    /// The definition of lane `name` this snapshot was built from.
    pub fn lane_def(&self, name: &str) -> Option<&Lane> {
        self.lane_defs.iter().find(|l| l.name == name)
    }

    /// Lane `name` and its ancestors up to the baseline, as the compiler
    /// walks them (a cycle or an unknown parent ends the chain).
    pub fn lane_chain(&self, name: &str) -> Vec<&Lane> {
        let mut chain: Vec<&Lane> = Vec::new();
        let mut next = Some(name);
        while let Some(n) = next {
            match self.lane_def(n) {
                Some(l) if !chain.iter().any(|c| c.name == l.name) => {
                    chain.push(l);
                    next = l.parent.as_deref();
                }
                _ => break,
            }
        }
        if chain.last().is_none_or(|l| l.name != BASELINE) {
            if let Some(b) = self.lane_def(BASELINE) {
                chain.push(b);
            }
        }
        chain
    }

    /// True when `version` of `service` has at least one healthy instance.
    pub fn version_available(&self, service: &str, version: &str) -> bool {
        self.pools
            .get(service)
            .is_some_and(|p| p.versions.contains_key(version))
    }

    /// Every instance of `service` as the compiler saw it (held-out ones
    /// included, marked critical), in catalog order.
    pub fn service_members(&self, service: &str) -> &[Arc<Instance>] {
        self.pools.get(service).map_or(&[], |p| &p.members)
    }

    /// The versions of `service` that count as its unpinned baseline.
    pub fn baseline_versions(&self) -> &[String] {
        &self.baseline_versions
    }
}
