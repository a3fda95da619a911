//! Consul's answers, decoded into laneway's instance model:
//! `/v1/health/service/<name>` entries become [`Instance`]s, and
//! `/v1/health/state/any` becomes per-service and per-node digests that
//! tell which services changed. Control plane only.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::Deserialize;

use crate::discovery::register::label;
use crate::discovery::{CheckKind, CheckState, Health, Instance};

/// One element of `/v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    pub node: NodeJson,
    pub service: ServiceJson,
    #[serde(default)]
    pub checks: Option<Vec<CheckJson>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson {
    pub node: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceJson {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub weights: Option<WeightsJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsJson {
    #[serde(default = "one")]
    pub passing: u32,
    #[serde(default = "one")]
    pub warning: u32,
}

fn one() -> u32 {
    1
}

/// A check, in both `/v1/health/service` and `/v1/health/state/any`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub modify_index: u64,
}

/// What a watch needs to know to turn Consul entries into instances.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    pub version_key: &'a str,
    pub lane_key: &'a str,
    /// `warning` instances receive traffic (with `Weights.Warning`).
    pub warning_is_up: bool,
}

/// Turns one service's health entries into instances, keyed
/// `<node>/<service id>` (service IDs are unique per node only). Entries
/// without a port, or with neither a service nor a node address, are
/// skipped with the reason.
pub fn instances(entries: Vec<HealthEntry>, labels: &Labels<'_>) -> (Vec<Instance>, Vec<String>) {
    let mut out = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for e in entries {
        let s = e.service;
        let address = if s.address.is_empty() {
            e.node.address
        } else {
            s.address
        };
        let id = format!("{}/{}", e.node.node, s.id);
        if address.is_empty() {
            skipped.push(format!(
                "{id}: neither Service.Address nor Node.Address is set"
            ));
            continue;
        }
        if s.port == 0 {
            skipped.push(format!("{id}: Service.Port is 0"));
            continue;
        }
        let meta = s.meta.unwrap_or_default();
        let tags = s.tags.unwrap_or_default();
        let (weight_passing, mut weight_warning) =
            s.weights.map_or((1, 1), |w| (w.passing, w.warning));
        if !labels.warning_is_up {
            weight_warning = 0;
        }
        let checks: Vec<CheckState> = e
            .checks
            .unwrap_or_default()
            .into_iter()
            .map(|c| CheckState {
                status: c.status.parse().unwrap_or(Health::Critical),
                kind: match c.kind.as_str() {
                    "ttl" => CheckKind::Ttl,
                    "http" => CheckKind::Http,
                    "tcp" => CheckKind::Tcp,
                    _ => CheckKind::Other,
                },
                id: c.check_id,
                name: c.name,
                output: String::new(),
                ttl_ms: None,
                spec: Default::default(),
            })
            .collect();
        let mut instance = Instance {
            id,
            service: s.service,
            address,
            port: s.port,
            version: label(&meta, &tags, labels.version_key),
            lane: label(&meta, &tags, labels.lane_key),
            tags,
            meta,
            weight_passing,
            weight_warning,
            health: Health::Passing,
            checks,
        };
        instance.refresh_health();
        out.push(instance);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    (out, skipped)
}

/// Digests of `/v1/health/state/any`: one per service (its instance
/// checks) and one per node (its node checks, which every instance on the
/// node depends on). Equal digests mean nothing health-related changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckDigests {
    pub services: HashMap<String, u64>,
    pub nodes: HashMap<String, u64>,
}

impl CheckDigests {
    pub fn of(mut checks: Vec<CheckJson>) -> CheckDigests {
        // Consul's order is not stable: sort before hashing.
        checks.sort_by(|a, b| {
            (&a.service_name, &a.node, &a.check_id).cmp(&(&b.service_name, &b.node, &b.check_id))
        });
        let mut services: HashMap<String, std::collections::hash_map::DefaultHasher> =
            HashMap::new();
        let mut nodes: HashMap<String, std::collections::hash_map::DefaultHasher> = HashMap::new();
        for c in &checks {
            let h = if c.service_id.is_empty() {
                nodes.entry(c.node.clone()).or_default()
            } else {
                services.entry(c.service_name.clone()).or_default()
            };
            (
                &c.node,
                &c.check_id,
                &c.service_id,
                &c.status,
                c.modify_index,
            )
                .hash(h);
        }
        CheckDigests {
            services: services.into_iter().map(|(k, h)| (k, h.finish())).collect(),
            nodes: nodes.into_iter().map(|(k, h)| (k, h.finish())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(warning_is_up: bool) -> Labels<'static> {
        Labels {
            version_key: "version",
            lane_key: "lane",
            warning_is_up,
        }
    }

    #[test]
    fn entries_become_instances() {
        let json = r#"[
          {"Node":{"ID":"x","Node":"n2","Address":"10.0.0.2","Datacenter":"dc1","TaggedAddresses":null,"Meta":null},
           "Service":{"ID":"web-1","Service":"web","Tags":["version=v9"],"Address":"","Port":8080,"Meta":null,
                      "Weights":{"Passing":5,"Warning":2},"CreateIndex":3,"ModifyIndex":4},
           "Checks":[{"Node":"n2","CheckID":"serfHealth","Name":"Serf","Status":"passing","ServiceID":"","ServiceName":""},
                     {"Node":"n2","CheckID":"service:web-1","Name":"c","Status":"warning","ServiceID":"web-1","ServiceName":"web","Type":"http"}]},
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"web-1","Service":"web","Tags":null,"Address":"127.0.0.9","Port":8081,"Meta":{"version":"v2","lane":"t-1"}},
           "Checks":[]}
        ]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(json).unwrap();
        let (list, skipped) = instances(entries, &labels(false));
        assert!(skipped.is_empty());
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].id, "n1/web-1");
        assert_eq!(list[0].address, "127.0.0.9");
        assert_eq!(list[0].version.as_deref(), Some("v2"));
        assert_eq!(list[0].lane.as_deref(), Some("t-1"));
        assert_eq!(
            (list[0].weight_passing, list[0].health),
            (1, Health::Passing)
        );
        let n2 = &list[1];
        assert_eq!(
            n2.address, "10.0.0.2",
            "empty Service.Address falls back to Node.Address"
        );
        assert_eq!(n2.version.as_deref(), Some("v9"), "version from a tag");
        assert_eq!(n2.health, Health::Warning);
        assert_eq!(n2.weight(), 0, "warning is not up unless configured");
        let entries: Vec<HealthEntry> = serde_json::from_str(json).unwrap();
        let (list, _) = instances(entries, &labels(true));
        assert_eq!(list[1].weight(), 2, "Weights.Warning honoured");
    }

    #[test]
    fn unroutable_entries_are_skipped_with_a_reason() {
        let json = r#"[{"Node":{"Node":"n","Address":""},"Service":{"ID":"a","Service":"s","Address":"","Port":80}},
                       {"Node":{"Node":"n","Address":"1.2.3.4"},"Service":{"ID":"b","Service":"s","Address":"","Port":0}}]"#;
        let (list, skipped) = instances(serde_json::from_str(json).unwrap(), &labels(false));
        assert!(list.is_empty());
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].contains("n/a"), "{skipped:?}");
    }

    #[test]
    fn digests_ignore_order_and_see_status_changes() {
        let c = |node: &str, id: &str, svc: &str, status: &str| CheckJson {
            node: node.into(),
            check_id: id.into(),
            name: String::new(),
            status: status.into(),
            output: "noise".into(),
            service_id: if svc.is_empty() {
                String::new()
            } else {
                format!("{svc}-1")
            },
            service_name: svc.into(),
            kind: String::new(),
            modify_index: 1,
        };
        let a = CheckDigests::of(vec![
            c("n", "serfHealth", "", "passing"),
            c("n", "s1", "web", "passing"),
        ]);
        let b = CheckDigests::of(vec![
            c("n", "s1", "web", "passing"),
            c("n", "serfHealth", "", "passing"),
        ]);
        assert_eq!(a, b);
        let d = CheckDigests::of(vec![
            c("n", "s1", "web", "critical"),
            c("n", "serfHealth", "", "passing"),
        ]);
        assert_ne!(a.services["web"], d.services["web"]);
        assert_eq!(a.nodes["n"], d.nodes["n"]);
    }
}
