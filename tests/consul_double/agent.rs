//! The agent endpoints, acting on the agent's node `node-1`:
//! `PUT /v1/agent/service/register`, `/v1/agent/service/deregister/<id>`,
//! `/v1/agent/check/pass|warn|fail/<id>` and `/v1/agent/check/update/<id>`.
//! The test controls register through the same code.
//!
//! Registration is local to an agent in Consul, so these endpoints work
//! without a leader; the double applies them to the catalog at once (real
//! Consul syncs them by anti-entropy, usually within a second).
//!
//! Bodies are parsed in [`definition`](super::definition).

use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::checks;
use super::definition::{Fields, ServiceDef};
use super::http::{allow, empty, ApiError, Req};
use super::shared::Shared;
use super::state::{key, Check, Probe, Status, AGENT_NODE};

pub fn register(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let def = ServiceDef::parse(&body)?;
    sh.acl.require(req, "service:write", &def.service.name)?;
    apply_register(
        sh,
        AGENT_NODE,
        def,
        req.query.has("replace-existing-checks"),
    )?;
    Ok(empty(StatusCode::OK, HeaderMap::new()))
}

pub fn deregister(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    let id = req
        .path
        .strip_prefix("/v1/agent/service/deregister/")
        .unwrap_or("");
    let name = sh
        .lock()
        .services
        .get(&key(AGENT_NODE, id))
        .map(|s| s.name.clone());
    sh.acl
        .require(req, "service:write", name.as_deref().unwrap_or(id))?;
    if !remove_service(sh, AGENT_NODE, id) && sh.faults.deregister_unknown_404() {
        return Err(ApiError::new(
            404,
            format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
        ));
    }
    Ok(empty(StatusCode::OK, HeaderMap::new()))
}

/// `pass`, `warn` or `fail` a TTL check; `?note=` becomes its output.
pub fn ttl_update(sh: &Arc<Shared>, req: &Req, verb: &str) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    let prefix = format!("/v1/agent/check/{verb}/");
    let id = req.path.strip_prefix(&prefix).unwrap_or("");
    let status = match verb {
        "pass" => Status::Passing,
        "warn" => Status::Warning,
        _ => Status::Critical,
    };
    let note = req.query.get("note").unwrap_or("").to_string();
    update_ttl_check(sh, req, id, status, note)
}

/// `PUT /v1/agent/check/update/<id>` with `{"Status": …, "Output": …}`.
pub fn check_update(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    let id = req
        .path
        .strip_prefix("/v1/agent/check/update/")
        .unwrap_or("");
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let fields = Fields::of(&body)?;
    let status_text = fields.string("Status")?.unwrap_or_default();
    let status = Status::parse(&status_text)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: '{status_text}'")))?;
    let output = fields.string("Output")?.unwrap_or_default();
    update_ttl_check(sh, req, id, status, output)
}

fn update_ttl_check(
    sh: &Arc<Shared>,
    req: &Req,
    id: &str,
    status: Status,
    output: String,
) -> Result<Response, ApiError> {
    let ckey = key(AGENT_NODE, id);
    let found = sh
        .lock()
        .checks
        .get(&ckey)
        .map(|c| (c.probe.clone(), c.service_name.clone()));
    let Some((probe, service)) = found else {
        return Err(ApiError::new(
            404,
            format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            ),
        ));
    };
    if service.is_empty() {
        sh.acl.require(req, "node:write", AGENT_NODE)?;
    } else {
        sh.acl.require(req, "service:write", &service)?;
    }
    let Probe::Ttl(ttl) = probe else {
        return Err(ApiError::new(
            500,
            format!("CheckID {id:?} does not have associated TTL"),
        ));
    };
    checks::ttl_heartbeat(sh, &ckey, status, output, ttl);
    Ok(empty(StatusCode::OK, HeaderMap::new()))
}

/// Registers a parsed service with its checks on `node` and starts the
/// checks' runners.
pub fn apply_register(
    sh: &Arc<Shared>,
    node: &str,
    def: ServiceDef,
    replace_checks: bool,
) -> Result<(), ApiError> {
    let ServiceDef {
        mut service,
        checks,
    } = def;
    service.node = node.to_string();
    let count = checks.len();
    let now = Instant::now();
    let records: Vec<Check> = checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let id = c.id.unwrap_or_else(|| match count {
                1 => format!("service:{}", service.id),
                _ => format!("service:{}:{}", service.id, i + 1),
            });
            let status = c.status.unwrap_or(Status::Critical);
            let ttl_deadline = match c.probe {
                Probe::Ttl(ttl) => Some(now + ttl),
                _ => None,
            };
            Check {
                node: node.to_string(),
                id,
                name: c
                    .name
                    .unwrap_or_else(|| format!("Service '{}' check", service.name)),
                status,
                notes: c.notes,
                output: String::new(),
                service_id: service.id.clone(),
                service_name: service.name.clone(),
                probe: c.probe,
                interval: c.interval,
                timeout: c.timeout,
                deregister_after: c.deregister_after,
                critical_since: (status == Status::Critical).then_some(now),
                ttl_deadline,
                create_index: 0,
                modify_index: 0,
            }
        })
        .collect();
    let started = records.clone();
    let stopped = sh.write(|tx| {
        if !tx.st.nodes.contains_key(node) {
            return Err(ApiError::new(
                500,
                format!("consul double: node {node:?} does not exist; add it with add_node first"),
            ));
        }
        let idx = tx.index();
        Ok(tx.st.put_service(service, records, replace_checks, idx))
    })?;
    checks::stop_runners(sh, &stopped);
    for check in &started {
        checks::start_runner(sh, check);
    }
    Ok(())
}

/// Removes a service and its checks; false if it was not registered.
pub fn remove_service(sh: &Arc<Shared>, node: &str, id: &str) -> bool {
    let gone = sh.write(|tx| {
        let gone = tx.st.remove_service(node, id)?;
        tx.index();
        Some(gone)
    });
    match gone {
        Some(keys) => {
            checks::stop_runners(sh, &keys);
            true
        }
        None => false,
    }
}
