//! The catalog the double serves: nodes, services, checks, the KV store and
//! sessions, plus the one raft-like index that every write moves. Plain data
//! and synchronous mutations; callers hold the store's lock through
//! [`Shared::write`](super::shared::Shared::write), which stamps the index.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::kv::Kv;
use super::session::Sessions;

/// The only datacenter the double knows.
pub const DATACENTER: &str = "dc1";
/// The node the HTTP agent endpoints act on (the agent's own node).
pub const AGENT_NODE: &str = "node-1";
/// The node-level check every node carries.
pub const SERF_CHECK: &str = "serfHealth";

/// A check's status, as Consul spells it on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Consul accepts exactly these lowercase words.
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub address: String,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub passing: i64,
    pub warning: i64,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub node: String,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// May be empty: clients then use the node's address.
    pub address: String,
    pub port: u16,
    /// `None` is sent as JSON `null`, as Consul does for a service
    /// registered without `Meta`.
    pub meta: Option<BTreeMap<String, String>>,
    pub weights: Weights,
    pub tagged_addresses: BTreeMap<String, (String, u16)>,
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What produces a check's status.
#[derive(Clone, Debug)]
pub enum Probe {
    /// The node's gossip health, `serfHealth`; set by test controls only.
    Serf,
    /// Set through `/v1/agent/check/...`; critical once the TTL runs out.
    Ttl(Duration),
    /// GET (or `method`) on `url`: 2xx passing, 429 warning, else critical.
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect to `host:port`.
    Tcp(String),
}

impl Probe {
    pub fn type_name(&self) -> &'static str {
        match self {
            Probe::Serf => "",
            Probe::Ttl(_) => "ttl",
            Probe::Http { .. } => "http",
            Probe::Tcp(_) => "tcp",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Check {
    pub node: String,
    pub id: String,
    pub name: String,
    pub status: Status,
    pub notes: String,
    pub output: String,
    /// Empty for node-level checks such as `serfHealth`.
    pub service_id: String,
    pub service_name: String,
    pub probe: Probe,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub deregister_after: Option<Duration>,
    pub critical_since: Option<Instant>,
    pub ttl_deadline: Option<Instant>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `(node, id)`: services and checks are unique per node.
pub type Key = (String, String);

pub fn key(node: &str, id: &str) -> Key {
    (node.to_string(), id.to_string())
}

pub struct Store {
    /// The raft-like index; every write moves it forward (except
    /// [`backwards`](Store::backwards)).
    pub index: u64,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<Key, Service>,
    pub checks: BTreeMap<Key, Check>,
    pub kv: Kv,
    pub sessions: Sessions,
}

impl Store {
    /// A one-server cluster as a fresh `consul agent -dev` shows it: node
    /// `node-1` at 127.0.0.1 with a passing `serfHealth`, and the `consul`
    /// service itself.
    pub fn new() -> Store {
        let mut st = Store {
            index: 0,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            kv: Kv::default(),
            sessions: Sessions::default(),
        };
        // A fresh cluster has already applied a few raft entries.
        st.index = 12;
        st.add_node(AGENT_NODE, "127.0.0.1", 13);
        let consul = Service {
            node: AGENT_NODE.into(),
            id: "consul".into(),
            name: "consul".into(),
            tags: Vec::new(),
            address: String::new(),
            port: 8300,
            meta: Some(BTreeMap::from([
                ("raft_version".to_string(), "3".to_string()),
                ("version".to_string(), "1.19.0".to_string()),
            ])),
            weights: Weights {
                passing: 1,
                warning: 1,
            },
            tagged_addresses: BTreeMap::new(),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        };
        st.put_service(consul, Vec::new(), false, 14);
        st.index = 14;
        st
    }

    /// The index a response carries: never 0 (Consul clamps it to 1 so a
    /// client's `?index=0` can never spin).
    pub fn response_index(&self) -> u64 {
        self.index.max(1)
    }

    /// Adds (or re-addresses) a node with a passing `serfHealth` check.
    pub fn add_node(&mut self, name: &str, address: &str, idx: u64) {
        let create_index = self.nodes.get(name).map_or(idx, |n| n.create_index);
        self.nodes.insert(
            name.to_string(),
            Node {
                id: node_uuid(name),
                name: name.to_string(),
                address: address.to_string(),
                create_index,
                modify_index: idx,
            },
        );
        let serf = Check {
            node: name.to_string(),
            id: SERF_CHECK.into(),
            name: "Serf Health Status".into(),
            status: Status::Passing,
            notes: String::new(),
            output: "Agent alive and reachable".into(),
            service_id: String::new(),
            service_name: String::new(),
            probe: Probe::Serf,
            interval: None,
            timeout: None,
            deregister_after: None,
            critical_since: None,
            ttl_deadline: None,
            create_index: idx,
            modify_index: idx,
        };
        self.checks.entry(key(name, SERF_CHECK)).or_insert(serf);
    }

    /// Inserts or replaces a service and the given checks. On replace the
    /// service keeps its `CreateIndex`; other checks of the service stay
    /// unless `replace_checks` (the agent's `?replace-existing-checks`).
    /// Returns the keys of checks that were removed or redefined, whose
    /// runners must stop.
    pub fn put_service(
        &mut self,
        mut svc: Service,
        checks: Vec<Check>,
        replace_checks: bool,
        idx: u64,
    ) -> Vec<Key> {
        let skey = key(&svc.node, &svc.id);
        svc.create_index = self.services.get(&skey).map_or(idx, |s| s.create_index);
        svc.modify_index = idx;
        let mut stopped = Vec::new();
        if replace_checks {
            let old: Vec<Key> = self
                .checks
                .iter()
                .filter(|(_, c)| c.node == svc.node && c.service_id == svc.id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                self.checks.remove(&k);
                stopped.push(k);
            }
        }
        for mut check in checks {
            let ckey = key(&check.node, &check.id);
            if let Some(old) = self.checks.remove(&ckey) {
                check.create_index = old.create_index;
                stopped.push(ckey.clone());
            } else {
                check.create_index = idx;
            }
            check.modify_index = idx;
            self.checks.insert(ckey, check);
        }
        self.services.insert(skey, svc);
        stopped
    }

    /// Removes a service and its checks; `None` if it was not registered.
    /// Returns the keys of the removed checks.
    pub fn remove_service(&mut self, node: &str, id: &str) -> Option<Vec<Key>> {
        self.services.remove(&key(node, id))?;
        let gone: Vec<Key> = self
            .checks
            .iter()
            .filter(|(_, c)| c.node == node && c.service_id == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.checks.remove(k);
        }
        Some(gone)
    }

    /// Sets a check's status (and output, when given), stamping `idx`.
    pub fn set_status(&mut self, ckey: &Key, status: Status, output: Option<String>, idx: u64) {
        if let Some(check) = self.checks.get_mut(ckey) {
            if check.status != Status::Critical && status == Status::Critical {
                check.critical_since = Some(Instant::now());
            } else if status != Status::Critical {
                check.critical_since = None;
            }
            check.status = status;
            if let Some(output) = output {
                check.output = output;
            }
            check.modify_index = idx;
        }
    }

    /// Every instance of service `name` with its node and the checks that
    /// decide its health: the node's own checks and the service's.
    pub fn instances(&self, name: &str) -> Vec<(&Node, &Service, Vec<&Check>)> {
        self.services
            .values()
            .filter(|s| s.name == name)
            .filter_map(|s| {
                let node = self.nodes.get(&s.node)?;
                let checks = self
                    .checks
                    .values()
                    .filter(|c| {
                        c.node == s.node && (c.service_id.is_empty() || c.service_id == s.id)
                    })
                    .collect();
                Some((node, s, checks))
            })
            .collect()
    }

    /// The tags of the service a check belongs to (empty for node checks).
    pub fn service_tags(&self, check: &Check) -> &[String] {
        self.services
            .get(&key(&check.node, &check.service_id))
            .map_or(&[], |s| s.tags.as_slice())
    }

    /// Moves the index back to `n`, as a snapshot restore does: later
    /// responses carry the lower index, and no entry keeps an index above it.
    pub fn backwards(&mut self, n: u64) {
        self.index = n;
        for node in self.nodes.values_mut() {
            clamp(&mut node.create_index, &mut node.modify_index, n);
        }
        for svc in self.services.values_mut() {
            clamp(&mut svc.create_index, &mut svc.modify_index, n);
        }
        for check in self.checks.values_mut() {
            clamp(&mut check.create_index, &mut check.modify_index, n);
        }
        for entry in self.kv.entries.values_mut() {
            clamp(&mut entry.create_index, &mut entry.modify_index, n);
        }
        for session in self.sessions.by_id.values_mut() {
            clamp(&mut session.create_index, &mut session.modify_index, n);
        }
    }
}

fn clamp(create: &mut u64, modify: &mut u64, n: u64) {
    *create = (*create).min(n);
    *modify = (*modify).min(n);
}

/// A stable UUID-shaped node ID derived from the node's name.
fn node_uuid(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let hex = format!("{h:016x}{:016x}", h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random version-4 UUID, the form of session IDs.
pub fn random_uuid() -> String {
    let hex = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
