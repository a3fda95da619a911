//! The embedded registry's endpoints, compatible with Consul's agent API
//! (`/v1/agent/service/register`, `…/deregister/<id>`, `/v1/agent/check/…`)
//! so deploy tooling written for Consul works unchanged (the rest of the
//! agent API is in [`agent`](super::agent) and [`catalog`](super::catalog)), plus
//! `/api/v1/instances`. An instance at one of laneway's own listeners is
//! refused with 400 naming the listener ([`OwnListeners`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;

use super::consul_shape::ConsulError;
use super::lanes::who;
use super::{ApiError, Caller, PUBLISH_WAIT};
use crate::control::Control;
use crate::discovery::own::OwnListeners;
use crate::discovery::register::parse_registration;
use crate::discovery::registry::RegistryError;
use crate::discovery::Health;

/// In Consul mode instances come from Consul: the embedded registry's
/// write endpoints answer 409 and say where to register instead.
fn embedded_only(c: &Control) -> Result<(), ApiError> {
    match &c.consul {
        None => Ok(()),
        Some(d) => Err(ApiError {
            status: axum::http::StatusCode::CONFLICT,
            message: format!(
                "laneway runs with [discovery] mode = \"consul\": register, deregister and update checks with the Consul agent ({}/v1/agent/...); laneway picks the change up from there",
                d.client.address()
            ),
        }),
    }
}

/// [`embedded_only`] with a plain-text answer, for the endpoints whose
/// errors follow Consul's.
pub(super) fn embedded_only_consul(c: &Control) -> Result<(), ConsulError> {
    embedded_only(c).map_err(|e| ConsulError(e.status, e.message))
}

/// A registry error as Consul answers it: 404 with Consul's text for an
/// unknown check or service ID, 500 when the change could not be saved.
pub(super) fn registry_error(e: RegistryError) -> ConsulError {
    match e {
        RegistryError::CheckNotFound(_) | RegistryError::ServiceNotFound(_) => {
            ConsulError::not_found(e.to_string())
        }
        RegistryError::Store(e) => ConsulError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// After a registry change: reconciles auto lanes and waits (bounded) for
/// the snapshot that routes with it.
pub(super) async fn publish(c: &Control) {
    c.reconcile_auto_lanes().await;
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
}

/// `PUT /v1/agent/service/register`. As a Consul agent, checks of an
/// instance already registered that the body does not list are kept
/// (checks added with `/v1/agent/check/register`, maintenance), unless
/// `?replace-existing-checks` is set.
pub async fn register(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<(), ApiError> {
    embedded_only(&c)?;
    let d = &c.config.discovery;
    let instance = parse_registration(&body, &d.version_key, &d.lane_key).map_err(|e| {
        c.metrics
            .admin_rejects
            .with_label_values(&["register"])
            .inc();
        ApiError::bad_request(format!("invalid service registration: {e}"))
    })?;
    if let Some(why) =
        OwnListeners::from_config(&c.config).refusal(&instance.address, instance.port)
    {
        c.metrics
            .admin_rejects
            .with_label_values(&["register"])
            .inc();
        return Err(ApiError::bad_request(format!(
            "instance \"{}\" of service \"{}\" at {}:{} is refused: {why}",
            instance.id, instance.service, instance.address, instance.port
        )));
    }
    let replace = q
        .get("replace-existing-checks")
        .is_some_and(|v| !matches!(v.as_str(), "0" | "f" | "F" | "false" | "FALSE" | "False"));
    let id = instance.id.clone();
    let (changed, before, after) = {
        let mut reg = c.registry.lock().await;
        let before = reg.get(&id).map(instance_json);
        let changed = match replace {
            true => reg.register(instance)?,
            false => reg.register_keeping_checks(instance)?,
        };
        (changed, before, reg.get(&id).map(instance_json))
    };
    if changed {
        c.audit.record(
            who(&caller),
            "instance.register",
            &id,
            before.unwrap_or(Value::Null),
            after.unwrap_or(Value::Null),
        );
        publish(&c).await;
    }
    Ok(())
}

/// An instance as the audit log records it.
pub(super) fn instance_json(i: &crate::discovery::Instance) -> Value {
    serde_json::to_value(i).unwrap_or(Value::Null)
}

/// `PUT /v1/agent/service/deregister/<id>`; an unknown ID is a 404 with
/// Consul's text.
pub async fn deregister(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let (existed, before) = {
        let mut reg = c.registry.lock().await;
        let before = reg.get(&id).map(instance_json);
        let existed = reg
            .deregister(&id)
            .map_err(|e| ConsulError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        (existed, before)
    };
    if !existed {
        return Err(registry_error(RegistryError::ServiceNotFound(id)));
    }
    c.audit.record(
        who(&caller),
        "instance.deregister",
        &id,
        before.unwrap_or(Value::Null),
        Value::Null,
    );
    publish(&c).await;
    Ok(())
}

async fn check(
    c: Arc<Control>,
    caller: Option<Extension<Caller>>,
    id: String,
    status: Health,
    note: Option<String>,
) -> Result<(), ConsulError> {
    embedded_only_consul(&c)?;
    let mut reg = c.registry.lock().await;
    let before = reg.find_check(&id).map(|(_, check)| check.status);
    let changed = reg.update_check(&id, status, note).map_err(|e| {
        if matches!(e, RegistryError::CheckNotFound(_)) {
            c.metrics.admin_rejects.with_label_values(&["check"]).inc();
        }
        registry_error(e)
    })?;
    drop(reg);
    if changed {
        c.audit.record(
            who(&caller),
            "check.status",
            &id,
            serde_json::to_value(before).unwrap_or(Value::Null),
            serde_json::to_value(status).unwrap_or(Value::Null),
        );
        let generation = c.changed();
        c.wait_built(generation, PUBLISH_WAIT).await;
    }
    Ok(())
}

pub async fn check_pass(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ConsulError> {
    check(c, caller, id, Health::Passing, q.get("note").cloned()).await
}

pub async fn check_warn(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ConsulError> {
    check(c, caller, id, Health::Warning, q.get("note").cloned()).await
}

pub async fn check_fail(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ConsulError> {
    check(c, caller, id, Health::Critical, q.get("note").cloned()).await
}

pub async fn list(State(c): State<Arc<Control>>) -> Result<Json<Value>, ApiError> {
    let catalog = c.catalog().await;
    let mut list = Vec::with_capacity(catalog.instances.len());
    for inst in &catalog.instances {
        let mut v = serde_json::to_value(&**inst).map_err(|e| ApiError::internal(e.to_string()))?;
        // Discovery's health is `health`; laneway's own verdict (active
        // check, passive ejection) is `held_out`: null or the reason.
        let held_out = c.upstream_health.get(&inst.id).and_then(|s| s.out_reason());
        if let Value::Object(m) = &mut v {
            m.insert(
                "held_out".into(),
                held_out.map_or(Value::Null, Value::String),
            );
        }
        list.push(v);
    }
    Ok(Json(Value::Array(list)))
}
