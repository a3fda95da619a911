//! The embedded registry's Consul agent endpoints beyond registration:
//! `GET /v1/agent/services`, `/v1/agent/service/<id>` (blocking on
//! `?hash=`), `/v1/agent/checks`, `/v1/agent/self`;
//! `PUT /v1/agent/service/maintenance/<id>`, `/v1/agent/check/register`,
//! `/v1/agent/check/deregister/<id>` and `/v1/agent/check/update/<id>`.
//! Control plane only (admin API). Shapes, texts and status codes follow
//! Consul's; errors are plain text, as Consul's are.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};

use super::consul_shape::{self as shape, ConsulError, Filter, Node, QueryPairs};
use super::lanes::who;
use super::registry::{embedded_only_consul, publish, registry_error};
use super::{Caller, PUBLISH_WAIT};
use crate::control::Control;
use crate::discovery::register::{check_target, parse_check_registration};
use crate::discovery::Health;

pub async fn services(
    State(c): State<Arc<Control>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let filter = Filter::parse(q.get("filter"), shape::AGENT_SERVICE_FIELDS)?;
    let reg = c.registry.lock().await;
    let mut map = Map::new();
    for i in reg.catalog().instances {
        let v = shape::agent_service(&i);
        if filter.matches(&v) {
            map.insert(i.id.clone(), v);
        }
    }
    Ok(shape::json_read(reg.index(), Value::Object(map)))
}

/// `GET /v1/agent/service/<id>`: the service with its `ContentHash`;
/// `?hash=<h>` blocks until the hash differs or `?wait=` ends.
pub async fn service(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let (_, wait) = q.blocking()?;
    let deadline = tokio::time::Instant::now() + wait;
    let wanted_change = q.get("hash").filter(|h| !h.is_empty());
    loop {
        let (index, found, mut changes) = {
            let reg = c.registry.lock().await;
            let found = reg.get(&id).map(shape::agent_service);
            (reg.index(), found, reg.subscribe())
        };
        let Some(mut v) = found else {
            return Err(ConsulError::not_found(format!("unknown service ID: {id}")));
        };
        let hash = content_hash(&v);
        let settled = wanted_change.is_none_or(|h| h != hash);
        // Settled, or the wait ended: answer with what there is now.
        if settled
            || !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            )
        {
            v["ContentHash"] = Value::String(hash.clone());
            v["Kind"] = Value::String(String::new());
            let mut resp = shape::json_read(index, v);
            if let Ok(h) = HeaderValue::from_str(&hash) {
                resp.headers_mut().insert("x-consul-contenthash", h);
            }
            return Ok(resp);
        }
    }
}

fn content_hash(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016x}", h.finish())
}

pub async fn checks(
    State(c): State<Arc<Control>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let filter = Filter::parse(q.get("filter"), shape::CHECK_FIELDS)?;
    let node = Node::local(c.config.admin.listen);
    let reg = c.registry.lock().await;
    let mut map = Map::new();
    for i in reg.catalog().instances {
        let indexes = reg.instance_indexes(&i.id);
        for check in &i.checks {
            let v = shape::health_check(&node, &i, check, indexes);
            if filter.matches(&v) {
                map.insert(check.id.clone(), v);
            }
        }
    }
    Ok(shape::json_read(reg.index(), Value::Object(map)))
}

/// `GET /v1/agent/self`, minimal: who this agent is.
pub async fn agent_self(State(c): State<Arc<Control>>) -> Response {
    let node = Node::local(c.config.admin.listen);
    axum::Json(json!({
        "Config": {
            "Datacenter": shape::DATACENTER,
            "PrimaryDatacenter": shape::DATACENTER,
            "NodeName": node.name,
            "NodeID": node.id,
            "Revision": "laneway",
            "Server": true,
            "Version": shape::CONSUL_VERSION,
            "BuildDate": "",
        },
        "Member": {
            "Name": node.name,
            "Addr": node.address,
            "Port": c.config.admin.listen.port(),
            "Tags": { "dc": shape::DATACENTER, "role": "consul", "build": shape::CONSUL_VERSION },
            "Status": 1,
        },
        "Meta": { "consul-network-segment": "" },
        "Stats": { "laneway": { "version": env!("CARGO_PKG_VERSION") } },
    }))
    .into_response()
}

/// `PUT /v1/agent/service/maintenance/<id>?enable=true|false&reason=`.
pub async fn maintenance(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let enable = match q.get("enable") {
        None | Some("") => return Err(ConsulError::bad_request("Missing value for enable")),
        Some(v) => match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => {
                return Err(ConsulError::bad_request(format!(
                    "Invalid value for enable: {other:?}"
                )))
            }
        },
    };
    let reason = enable.then(|| q.get("reason").unwrap_or("").to_owned());
    let changed = c
        .registry
        .lock()
        .await
        .set_maintenance(&id, reason)
        .map_err(|e| match e {
            crate::discovery::registry::RegistryError::ServiceNotFound(_) => {
                ConsulError::not_found(format!("No service registered with ID {id:?}"))
            }
            other => registry_error(other),
        })?;
    if changed {
        tracing::info!(instance = %id, enable, "service maintenance changed");
        c.audit.record(
            who(&caller),
            "instance.maintenance",
            &id,
            json!({ "maintenance": !enable }),
            json!({ "maintenance": enable, "reason": q.get("reason").unwrap_or("") }),
        );
        publish(&c).await;
    }
    Ok(())
}

/// `PUT /v1/agent/check/register`: a check of a registered service.
pub async fn check_register(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let bad = |msg: String| {
        c.metrics.admin_rejects.with_label_values(&["check"]).inc();
        ConsulError::bad_request(msg)
    };
    let reg_body =
        parse_check_registration(&body).map_err(|e| bad(format!("Invalid check: {e}")))?;
    let explicit_status = serde_json::from_slice::<Value>(&body).is_ok_and(|v| {
        ["Status", "status"].iter().any(|k| {
            v.get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
    });
    let mut reg = c.registry.lock().await;
    let Some(inst) = reg.get(&reg_body.service_id) else {
        return Err(bad(format!(
            "ServiceID {:?} does not exist",
            reg_body.service_id
        )));
    };
    check_target(inst, &reg_body.check).map_err(|e| bad(format!("Invalid check: {e}")))?;
    let check_json = serde_json::to_value(&reg_body.check).unwrap_or(Value::Null);
    let check_id = reg_body.check.id.clone();
    let changed = reg
        .add_check(&reg_body.service_id, reg_body.check, explicit_status)
        .map_err(registry_error)?;
    drop(reg);
    if changed {
        c.audit.record(
            who(&caller),
            "check.register",
            &check_id,
            Value::Null,
            check_json,
        );
        publish(&c).await;
    }
    Ok(())
}

/// `PUT /v1/agent/check/deregister/<id>`.
pub async fn check_deregister(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let before = {
        let mut reg = c.registry.lock().await;
        let before = reg
            .find_check(&id)
            .and_then(|(_, check)| serde_json::to_value(check).ok());
        reg.remove_check(&id).map_err(registry_error)?;
        before
    };
    c.audit.record(
        who(&caller),
        "check.deregister",
        &id,
        before.unwrap_or(Value::Null),
        Value::Null,
    );
    publish(&c).await;
    Ok(())
}

/// `PUT /v1/agent/check/update/<id>` with `{"Status": …, "Output": …}`.
pub async fn check_update(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ConsulError::bad_request(format!("Request decode failed: {e}")))?;
    let field = |k: &str| {
        v.get(k)
            .or_else(|| v.get(k.to_ascii_lowercase()))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let status_text = field("Status");
    let status: Health = status_text
        .parse()
        .map_err(|_| ConsulError::bad_request(format!("Invalid check status: '{status_text}'")))?;
    let mut output = field("Output");
    if output.len() > 4096 {
        let mut cut = 4096;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    let changed = c
        .registry
        .lock()
        .await
        .update_check(&id, status, Some(output))
        .map_err(registry_error)?;
    if changed {
        let generation = c.changed();
        c.wait_built(generation, PUBLISH_WAIT).await;
    }
    Ok(())
}
