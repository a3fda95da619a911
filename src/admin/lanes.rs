//! `/api/v1/lanes`: create, list, show, patch and delete lanes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{ApiError, PUBLISH_WAIT};
use crate::allocation::lanes::{CreateOutcome, Lane, LanePatch, LaneSpec};
use crate::control::Control;

/// A lane with its entries, as the API shows it.
pub fn lane_json(c: &Control, lane: &Lane) -> Value {
    let host = format!("{}.{}", lane.name, c.config.lanes.domain);
    let urls: Vec<String> = c
        .config
        .proxy
        .listen
        .iter()
        .map(|a| format!("http://{host}:{}/", a.port()))
        .collect();
    json!({
        "name": lane.name,
        "services": lane.services,
        "parent": lane.parent,
        "strict": lane.strict,
        "created_at": lane.created_at,
        "updated_at": lane.updated_at,
        "entries": {
            "hostname": host,
            "production_hostnames": format!("<production-host>.{host}"),
            "header": format!("{}: {}", c.config.lanes.header, lane.name),
            "cookie": format!("{}={}", c.config.lanes.cookie, lane.name),
            "urls": urls,
        },
    })
}

fn parse_body<T: DeserializeOwned>(c: &Control, body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
        return Err(ApiError::bad_request(format!(
            "{what}: the body is empty; send a JSON object"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

fn counted(c: &Control, e: ApiError) -> ApiError {
    if e.status.is_client_error() {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
    }
    e
}

pub async fn create(State(c): State<Arc<Control>>, body: Bytes) -> Result<Response, ApiError> {
    let spec: LaneSpec = parse_body(&c, &body, "invalid lane body")?;
    let outcome = c
        .lanes
        .lock()
        .await
        .create(spec)
        .map_err(|e| counted(&c, e.into()))?;
    let (status, lane) = match outcome {
        CreateOutcome::Created(lane) => {
            let generation = c.changed();
            c.wait_built(generation, PUBLISH_WAIT).await;
            (StatusCode::CREATED, lane)
        }
        CreateOutcome::Existing(lane) => (StatusCode::OK, lane),
    };
    Ok((status, Json(lane_json(&c, &lane))).into_response())
}

pub async fn list(State(c): State<Arc<Control>>) -> Json<Value> {
    let lanes = c.lanes.lock().await.list();
    Json(Value::Array(
        lanes.iter().map(|l| lane_json(&c, l)).collect(),
    ))
}

pub async fn show(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lanes = c.lanes.lock().await;
    let lane = lanes
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("lane \"{name}\" does not exist")))?;
    Ok(Json(lane_json(&c, lane)))
}

pub async fn patch(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: LanePatch = parse_body(&c, &body, "invalid lane patch")?;
    let lane = c
        .lanes
        .lock()
        .await
        .patch(&name, patch)
        .map_err(|e| counted(&c, e.into()))?;
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(Json(lane_json(&c, &lane)))
}

pub async fn delete(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lane = c
        .lanes
        .lock()
        .await
        .delete(&name)
        .map_err(|e| counted(&c, e.into()))?;
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(Json(json!({"deleted": lane_json(&c, &lane)})))
}
