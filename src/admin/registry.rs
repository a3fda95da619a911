//! The embedded registry's endpoints, compatible with Consul's agent API
//! (`/v1/agent/service/register`, `…/deregister/<id>`, `/v1/agent/check/…`)
//! so deploy tooling written for Consul works unchanged, plus
//! `/api/v1/instances`. An instance at one of laneway's own listeners is
//! refused with 400 naming the listener ([`OwnListeners`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::Value;

use super::{ApiError, PUBLISH_WAIT};
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

pub async fn register(State(c): State<Arc<Control>>, body: Bytes) -> Result<(), ApiError> {
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
    let changed = c.registry.lock().await.register(instance)?;
    if changed {
        c.reconcile_auto_lanes().await;
        let generation = c.changed();
        c.wait_built(generation, PUBLISH_WAIT).await;
    }
    Ok(())
}

pub async fn deregister(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> Result<(), ApiError> {
    embedded_only(&c)?;
    let existed = c.registry.lock().await.deregister(&id)?;
    if existed {
        c.reconcile_auto_lanes().await;
        let generation = c.changed();
        c.wait_built(generation, PUBLISH_WAIT).await;
    }
    Ok(())
}

async fn check(
    c: Arc<Control>,
    id: String,
    status: Health,
    note: Option<String>,
) -> Result<(), ApiError> {
    embedded_only(&c)?;
    let changed = c
        .registry
        .lock()
        .await
        .update_check(&id, status, note)
        .map_err(|e| match e {
            RegistryError::CheckNotFound(_) => {
                c.metrics.admin_rejects.with_label_values(&["check"]).inc();
                ApiError::not_found(e.to_string())
            }
            RegistryError::Store(e) => e.into(),
        })?;
    if changed {
        let generation = c.changed();
        c.wait_built(generation, PUBLISH_WAIT).await;
    }
    Ok(())
}

pub async fn check_pass(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ApiError> {
    check(c, id, Health::Passing, q.get("note").cloned()).await
}

pub async fn check_warn(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ApiError> {
    check(c, id, Health::Warning, q.get("note").cloned()).await
}

pub async fn check_fail(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(), ApiError> {
    check(c, id, Health::Critical, q.get("note").cloned()).await
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
