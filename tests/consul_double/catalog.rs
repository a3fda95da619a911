//! Catalog and health reads: `/v1/catalog/services`,
//! `/v1/health/service/<name>`, `/v1/health/state/<state>` (all blocking)
//! and `/v1/status/leader`.
//!
//! `/v1/health/service` applies `?tag=` and `?filter=` inside the query and
//! `?passing` after it, as Consul does, so the index may move while the
//! filtered result stays the same; the order of entries is shuffled on
//! every answer because Consul does not promise one.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Map, Value};

use super::acl::ReadAccess;
use super::blocking::{self, parse_read};
use super::filter::{Dialect, Filter};
use super::http::{allow, json, set_header, ApiError, Req};
use super::render;
use super::shared::Shared;
use super::state::Status;

pub async fn services(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let opts = parse_read(req)?;
    let filter = Filter::parse(req.query.get("filter").unwrap_or(""), Dialect::Catalog)?;
    let access = sh.acl.read(req, "service:read", "")?;
    let (meta, map) = blocking::block(sh, &opts, |st| {
        let mut out: Map<String, Value> = Map::new();
        if access == ReadAccess::Filtered {
            return out;
        }
        for s in st.services.values() {
            let Some(node) = st.nodes.get(&s.node) else {
                continue;
            };
            if !filter.matches(&render::catalog_service_node(node, s)) {
                continue;
            }
            let tags = out
                .entry(s.name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(tags) = tags {
                for t in &s.tags {
                    if !tags.iter().any(|x| x.as_str() == Some(t)) {
                        tags.push(Value::String(t.clone()));
                    }
                }
            }
        }
        out
    })
    .await?;
    let mut headers = meta.headers();
    if access == ReadAccess::Filtered {
        set_header(&mut headers, "x-consul-results-filtered-by-acls", true);
    }
    Ok(json(&Value::Object(map), headers))
}

pub async fn health_service(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let opts = parse_read(req)?;
    let name = req.path.strip_prefix("/v1/health/service/").unwrap_or("");
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    // Present `?tag=` parameters must all match, case-insensitively.
    let tags: Vec<String> = req
        .query
        .all("tag")
        .into_iter()
        .map(str::to_lowercase)
        .collect();
    let filter = Filter::parse(req.query.get("filter").unwrap_or(""), Dialect::Health)?;
    let access = sh.acl.read(req, "service:read", name)?;
    let (meta, mut entries) = blocking::block(sh, &opts, |st| {
        if access == ReadAccess::Filtered {
            return Vec::new();
        }
        st.instances(name)
            .into_iter()
            .filter(|(_, s, _)| {
                tags.iter()
                    .all(|t| s.tags.iter().any(|x| x.to_lowercase() == *t))
            })
            .map(|(n, s, checks)| render::health_entry(n, s, &checks))
            .filter(|entry| filter.matches(entry))
            .collect::<Vec<Value>>()
    })
    .await?;
    // Consul parses ?passing only after the query ran.
    if go_bool(req.query.get("passing"))
        .ok_or_else(|| ApiError::bad_request("Invalid value for ?passing"))?
    {
        entries.retain(|e| {
            e["Checks"].as_array().is_some_and(|checks| {
                checks
                    .iter()
                    .all(|c| c["Status"].as_str() == Some(Status::Passing.as_str()))
            })
        });
    }
    fastrand::shuffle(&mut entries);
    let mut headers = meta.headers();
    if access == ReadAccess::Filtered {
        set_header(&mut headers, "x-consul-results-filtered-by-acls", true);
    }
    Ok(json(&Value::Array(entries), headers))
}

pub async fn health_state(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let opts = parse_read(req)?;
    let state = req.path.strip_prefix("/v1/health/state/").unwrap_or("");
    if state.is_empty() {
        return Err(ApiError::bad_request("Missing check state"));
    }
    if req
        .query
        .get("filter")
        .is_some_and(|f| !f.trim().is_empty())
    {
        return Err(ApiError::bad_request(
            "Failed to create boolean expression evaluator: the Consul double supports \
             ?filter= only on /v1/health/service and /v1/catalog/services",
        ));
    }
    let access = sh.acl.read(req, "node:read", "")?;
    let (meta, checks) = blocking::block(sh, &opts, |st| {
        if access == ReadAccess::Filtered {
            return Vec::new();
        }
        st.checks
            .values()
            .filter(|c| state == "any" || c.status.as_str() == state)
            .map(|c| render::check(c, st.service_tags(c)))
            .collect::<Vec<Value>>()
    })
    .await?;
    let mut headers = meta.headers();
    if access == ReadAccess::Filtered {
        set_header(&mut headers, "x-consul-results-filtered-by-acls", true);
    }
    Ok(json(&Value::Array(checks), headers))
}

/// `"127.0.0.1:8300"`, or `""` while there is no leader.
pub fn leader(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let addr = if sh.faults.leaderless_for().is_some() {
        ""
    } else {
        "127.0.0.1:8300"
    };
    Ok(json(&Value::String(addr.into()), http::HeaderMap::new()))
}

/// Go's `strconv.ParseBool` for a query flag: absent is false, a bare flag
/// is true; `None` for a value Go refuses.
pub fn go_bool(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Some(false),
        Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Some(true),
        Some(_) => None,
    }
}
