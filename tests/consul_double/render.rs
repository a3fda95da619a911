//! The store's records as Consul's JSON: `Node`, `Service`, `HealthCheck`
//! and the `{Node, Service, Checks}` health entry. Field names and the
//! null/empty conventions follow what Consul sends (`Meta` may be `null`,
//! `Tags` and `ServiceTags` are `[]` rather than `null`, a service's
//! `TaggedAddresses` is left out when empty).

use serde_json::{json, Map, Value};

use super::duration::format_go;
use super::state::{Check, Node, Service, DATACENTER};

pub fn node(n: &Node) -> Value {
    json!({
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {
            "lan": n.address, "lan_ipv4": n.address, "wan": n.address, "wan_ipv4": n.address,
        },
        "Meta": { "consul-network-segment": "" },
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

pub fn service(s: &Service) -> Value {
    let mut v = json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Address": s.address,
        "Meta": s.meta,
        "Port": s.port,
        "Weights": { "Passing": s.weights.passing, "Warning": s.weights.warning },
        "EnableTagOverride": s.enable_tag_override,
        "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
        "Connect": {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    });
    if !s.tagged_addresses.is_empty() {
        let tagged: Map<String, Value> = s
            .tagged_addresses
            .iter()
            .map(|(k, (addr, port))| (k.clone(), json!({ "Address": addr, "Port": port })))
            .collect();
        v["TaggedAddresses"] = Value::Object(tagged);
    }
    v
}

pub fn check(c: &Check, service_tags: &[String]) -> Value {
    let dur = |d: Option<std::time::Duration>| d.map(format_go).unwrap_or_default();
    json!({
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": service_tags,
        "Type": c.probe.type_name(),
        "Interval": dur(c.interval),
        "Timeout": dur(c.timeout),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

/// One element of `/v1/health/service/<name>`.
pub fn health_entry(n: &Node, s: &Service, checks: &[&Check]) -> Value {
    let checks: Vec<Value> = checks
        .iter()
        .map(|c| {
            let tags: &[String] = if c.service_id.is_empty() {
                &[]
            } else {
                &s.tags
            };
            check(c, tags)
        })
        .collect();
    json!({ "Node": node(n), "Service": service(s), "Checks": checks })
}

/// A catalog service node, the shape `/v1/catalog/services?filter=`
/// evaluates against.
pub fn catalog_service_node(n: &Node, s: &Service) -> Value {
    json!({
        "Node": n.name,
        "Address": n.address,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
    })
}
