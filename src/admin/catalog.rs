//! The embedded registry's Consul catalog, health and status reads:
//! `/v1/catalog/services`, `/v1/catalog/service/<name>`,
//! `/v1/health/service/<name>`, `/v1/health/checks/<service>`,
//! `/v1/health/state/<state>` (all
//! blocking queries with `?index=&wait=`), `/v1/status/leader` and
//! `/v1/status/peers`. Control plane only (admin API).
//!
//! One index for the whole registry ([`Registry::index`]): any change wakes
//! every blocked query, so a return is no promise of a change (as
//! `CONSUL.md` says clients must expect). `?passing` is applied after the
//! query, as Consul does; `?tag=` (repeatable, all must match) and
//! `?filter=` inside it.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::consul_shape::{self as shape, ConsulError, Filter, Node, QueryPairs};
use super::registry::embedded_only_consul;
use crate::control::Control;
use crate::discovery::registry::Registry;

/// Runs `read` now, or, for `?index=N` with N at or above the current
/// index, once the index moves past N or the wait ends.
pub(super) async fn block<T>(
    c: &Control,
    q: &QueryPairs,
    read: impl Fn(&Registry) -> T,
) -> Result<(u64, T), ConsulError> {
    let (min, wait) = q.blocking()?;
    q.datacenter()?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (index, out, mut changes) = {
            let reg = c.registry.lock().await;
            (reg.index(), read(&reg), reg.subscribe())
        };
        if min == 0 || index > min {
            return Ok((index, out));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok((index, out)),
        }
    }
}

fn node(c: &Control) -> Node {
    Node::local(c.config.admin.listen)
}

pub async fn services(
    State(c): State<Arc<Control>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let filter = Filter::parse(q.get("filter"), shape::CATALOG_FIELDS)?;
    let node = node(&c);
    let (index, map) = block(&c, &q, |reg| {
        let catalog = reg.catalog();
        shape::services_map(catalog.instances.iter().map(|i| &**i).filter(|i| {
            filter.is_empty()
                || filter.matches(&shape::catalog_service(
                    &node,
                    i,
                    reg.instance_indexes(&i.id),
                ))
        }))
    })
    .await?;
    Ok(shape::json_read(index, map))
}

fn tags_match(q: &QueryPairs, tags: &[String]) -> bool {
    q.all("tag")
        .iter()
        .all(|t| tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
}

/// The instances of service `name` that carry every `?tag=`, each in the
/// shape `entry` gives, kept when `?filter=` (over `fields`) matches: the
/// one query behind `/v1/catalog/service/<name>` and
/// `/v1/health/service/<name>`.
async fn service_entries(
    c: &Control,
    name: &str,
    q: &QueryPairs,
    fields: &[&str],
    entry: fn(&Node, &crate::discovery::Instance, (u64, u64)) -> Value,
) -> Result<(u64, Vec<Value>), ConsulError> {
    let filter = Filter::parse(q.get("filter"), fields)?;
    let node = node(c);
    block(c, q, |reg| {
        reg.catalog()
            .instances
            .iter()
            .filter(|i| i.service == name && tags_match(q, &i.tags))
            .map(|i| entry(&node, i, reg.instance_indexes(&i.id)))
            .filter(|v| filter.matches(v))
            .collect::<Vec<Value>>()
    })
    .await
}

pub async fn service(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let (index, list) =
        service_entries(&c, &name, &q, shape::CATALOG_FIELDS, shape::catalog_service).await?;
    Ok(shape::json_read(index, Value::Array(list)))
}

pub async fn health_service(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let (index, mut list) =
        service_entries(&c, &name, &q, shape::HEALTH_FIELDS, shape::health_entry).await?;
    // Consul reads ?passing after the query ran.
    if q.flag("passing")? {
        list.retain(shape::all_passing);
    }
    Ok(shape::json_read(index, Value::Array(list)))
}

pub async fn health_checks(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    let q = QueryPairs::parse(raw.as_deref());
    let filter = Filter::parse(q.get("filter"), shape::CHECK_FIELDS)?;
    let node = node(&c);
    let (index, list) = block(&c, &q, |reg| {
        reg.catalog()
            .instances
            .iter()
            .filter(|i| i.service == name)
            .flat_map(|i| {
                let indexes = reg.instance_indexes(&i.id);
                i.checks
                    .iter()
                    .map(|ch| shape::health_check(&node, i, ch, indexes))
                    .collect::<Vec<_>>()
            })
            .filter(|v| filter.matches(v))
            .collect::<Vec<Value>>()
    })
    .await?;
    Ok(shape::json_read(index, Value::Array(list)))
}

/// `GET /v1/health/state/<state>`: every check in `state` (`any`,
/// `passing`, `warning`, `critical`); one blocking query here notices any
/// health change.
pub async fn health_state(
    State(c): State<Arc<Control>>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    embedded_only_consul(&c)?;
    if !matches!(state.as_str(), "any" | "passing" | "warning" | "critical") {
        return Err(ConsulError::bad_request(format!(
            "Invalid check state: {state:?}; use any, passing, warning or critical"
        )));
    }
    let q = QueryPairs::parse(raw.as_deref());
    let filter = Filter::parse(q.get("filter"), shape::CHECK_FIELDS)?;
    let node = node(&c);
    let (index, list) = block(&c, &q, |reg| {
        reg.catalog()
            .instances
            .iter()
            .flat_map(|i| {
                let indexes = reg.instance_indexes(&i.id);
                i.checks
                    .iter()
                    .filter(|ch| state == "any" || ch.status.as_str() == state)
                    .map(|ch| shape::health_check(&node, i, ch, indexes))
                    .collect::<Vec<_>>()
            })
            .filter(|v| filter.matches(v))
            .collect::<Vec<Value>>()
    })
    .await?;
    Ok(shape::json_read(index, Value::Array(list)))
}

/// The "leader" is this laneway's admin address: it answers every query.
fn leader_address(c: &Control) -> String {
    let node = node(c);
    let port = c.config.admin.listen.port();
    match node.address.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{}]:{port}", node.address),
        Err(_) => format!("{}:{port}", node.address),
    }
}

pub async fn leader(State(c): State<Arc<Control>>) -> Response {
    axum::Json(Value::String(leader_address(&c))).into_response()
}

pub async fn peers(State(c): State<Arc<Control>>) -> Response {
    axum::Json(Value::Array(vec![Value::String(leader_address(&c))])).into_response()
}
