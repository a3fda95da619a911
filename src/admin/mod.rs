//! The admin plane on `[admin] listen` (axum): the QA dashboard (HTML at
//! `/`), the lane REST API, the Consul-compatible registration endpoints of
//! the embedded registry, `/metrics` and `/healthz`. Control plane only; it
//! changes state through [`Control`] and never touches the request path.

pub(crate) mod access;
mod agent;
mod auth;
mod catalog;
mod consul_shape;
mod dashboard;
mod error;
mod explain;
mod guard;
mod lanes;
mod pac;
mod registry;
mod warnings;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::control::Control;

pub use access::{Access, Caller};
pub use error::ApiError;

/// How long a mutating call waits for the snapshot that includes its change,
/// so that a 2xx answer means "already routed that way".
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// The admin router.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/lvs/health", get(lvs_health))
        .route(
            "/api/v1/maintenance",
            get(maintenance_get).post(maintenance_set),
        )
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/explain", get(explain::explain))
        .route("/api/v1/lanes", post(lanes::create).get(lanes::list))
        .route(
            "/api/v1/lanes/:name",
            get(lanes::show).patch(lanes::patch).delete(lanes::delete),
        )
        .route("/api/v1/lanes/:name/extend", post(lanes::extend))
        .route("/api/v1/lanes/:name/pac", get(pac::pac))
        .route("/api/v1/instances", get(registry::list))
        .route("/v1/agent/service/register", put(registry::register))
        .route(
            "/v1/agent/service/deregister/:id",
            put(registry::deregister),
        )
        .route("/v1/agent/check/pass/:id", put(registry::check_pass))
        .route("/v1/agent/check/warn/:id", put(registry::check_warn))
        .route("/v1/agent/check/fail/:id", put(registry::check_fail))
        // The rest of the Consul agent, catalog and health API (embedded mode).
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/:id", get(agent::service))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/service/maintenance/:id", put(agent::maintenance))
        .route("/v1/agent/check/register", put(agent::check_register))
        .route(
            "/v1/agent/check/deregister/:id",
            put(agent::check_deregister),
        )
        .route("/v1/agent/check/update/:id", put(agent::check_update))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/:name", get(catalog::service))
        .route("/v1/health/service/:name", get(catalog::health_service))
        .route("/v1/health/checks/:name", get(catalog::health_checks))
        .route("/v1/health/state/:state", get(catalog::health_state))
        .route("/v1/status/leader", get(catalog::leader))
        .route("/v1/status/peers", get(catalog::peers))
        // the dashboard: `/`, `/lanes/…`, `/instances`, `/rules`, `/assets/…`
        .merge(dashboard::routes())
        .fallback(not_found)
        .with_state(control)
}

/// Serves the admin API on an already bound listener until the process
/// ends, every request through [`access::check`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    access: Arc<Access>,
) -> std::io::Result<()> {
    axum::serve(listener, access::app(control, access)).await
}

async fn healthz(State(c): State<Arc<Control>>) -> Response {
    if c.ready() {
        match &c.consul {
            Some(d) if !d.synced() => (
                StatusCode::OK,
                "ok; discovery not synced with Consul: serving the last known catalog\n",
            )
                .into_response(),
            Some(d) if d.stale_seconds() > 0 => (
                StatusCode::OK,
                format!(
                    "ok; Consul unreachable for {} s: serving the last known catalog\n",
                    d.stale_seconds()
                ),
            )
                .into_response(),
            _ => (StatusCode::OK, "ok\n").into_response(),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no snapshot built yet\n",
        )
            .into_response()
    }
}

/// LVS's health check: 200 `ok` when this instance should get traffic,
/// 503 with the reason (not ready, maintenance, draining) when not.
async fn lvs_health(State(c): State<Arc<Control>>) -> Response {
    match c.health.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn maintenance_get(State(c): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(json!({ "enabled": c.health.maintenance(), "draining": c.health.draining() }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    enabled: bool,
}

/// Takes the instance out of (or back into) the LVS pool; it keeps serving.
async fn maintenance_set(
    State(c): State<Arc<Control>>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m: MaintenanceBody = serde_json::from_slice(&body).map_err(|e| {
        c.metrics
            .admin_rejects
            .with_label_values(&["maintenance"])
            .inc();
        ApiError::bad_request(format!(
            "invalid maintenance body: {e}; send {{\"enabled\": true}} or {{\"enabled\": false}}"
        ))
    })?;
    let before = c.health.maintenance();
    c.health.set_maintenance(m.enabled);
    tracing::info!(enabled = m.enabled, "maintenance mode changed");
    if before != m.enabled {
        c.audit.record(
            lanes::who(&caller),
            "maintenance.set",
            "this instance",
            json!({ "enabled": before }),
            json!({ "enabled": m.enabled }),
        );
    }
    Ok(Json(
        json!({ "enabled": m.enabled, "draining": c.health.draining() }),
    ))
}

async fn metrics(State(c): State<Arc<Control>>) -> Response {
    let age = c
        .snapshot()
        .built_at
        .elapsed()
        .map_or(0.0, |d| d.as_secs_f64());
    c.metrics.snapshot_age.set(age);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics.render(),
    )
        .into_response()
}

async fn status(State(c): State<Arc<Control>>) -> Json<serde_json::Value> {
    let snap = c.snapshot();
    let age = snap.built_at.elapsed().map_or(0.0, |d| d.as_secs_f64());
    Json(json!({
        "ready": c.ready(),
        // the id this process adds to x-laneway-via (named by its 508s)
        "instance": &*crate::proxy::hops::process_instance_id(),
        "snapshot": {"generation": snap.generation, "age_seconds": age},
        "lanes": snap.lane_count(),
        "instances": c.catalog().await.len(),
        "discovery": match &c.consul {
            Some(d) => d.status_json(),
            None => json!({"mode": "embedded", "synced": true}),
        },
        "pools": lanes::pools_json(&*c.lanes.lock().await),
        "rules_errors": c.rules_errors().iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    }))
}

async fn rules(State(c): State<Arc<Control>>) -> Json<serde_json::Value> {
    let errors = c.rules_errors();
    Json(json!({
        "file": c.config.routes.file.as_ref().map(|f| f.display().to_string()),
        "nginx": c.config.routes.nginx.as_ref().map(|f| f.display().to_string()),
        "files": c.rules_files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "status": if errors.is_empty() { "ok" } else { "rejected: serving the last good rules" },
        "errors": errors.iter().map(|e| json!({
            "file": e.file.display().to_string(), "line": e.line, "column": e.column, "message": e.message,
        })).collect::<Vec<_>>(),
    }))
}

/// `GET /api/v1/audit?since=<seq>`: the changes after `since` (default 0)
/// still in the ring, oldest first; `truncated` says older ones after
/// `since` were dropped from it (the `laneway::audit` log has them all).
async fn audit(
    State(c): State<Arc<Control>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let since = match q.get("since") {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("since {s:?} is not a sequence number (0 or more)"))
        })?,
    };
    let (entries, truncated) = c.audit.since(since);
    Ok(Json(json!({ "entries": entries, "truncated": truncated })))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such admin endpoint")
}
