//! Sessions, and through them KV locks (`PUT /v1/kv/<key>?acquire=<id>`):
//! `/v1/session/create|destroy|renew|info|list`. A session dies when it is
//! destroyed, when its TTL runs out (Consul waits up to twice the TTL), or
//! when one of its checks (`serfHealth` by default) turns critical. Its
//! locks are then released (or the keys deleted, with `Behavior: delete`)
//! and the keys cannot be re-acquired for the session's `LockDelay`
//! (15 s unless set).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use http::HeaderMap;
use serde_json::{json, Value};

use super::blocking::{self, datacenter, parse_read, Consistency};
use super::definition::Fields;
use super::duration::{format_go, parse_go};
use super::http::{allow, json, ApiError, Req};
use super::shared::Shared;
use super::state::{key, random_uuid, Status, Store, AGENT_NODE, SERF_CHECK};

const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Release,
    Delete,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub checks: Vec<String>,
    /// As the client wrote it (`"15s"`), or empty.
    pub ttl: String,
    pub lock_delay: Duration,
    pub behavior: Behavior,
    pub expires_at: Option<Instant>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default)]
pub struct Sessions {
    pub by_id: BTreeMap<String, Session>,
}

pub fn create(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    datacenter(req)?;
    sh.faults.require_leader(Consistency::Default)?;
    let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let f = Fields::of(&body)?;
    let node = f
        .string("Node")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| AGENT_NODE.into());
    let lock_delay = match f.get("LockDelay") {
        None => DEFAULT_LOCK_DELAY,
        // Consul reads small numbers as seconds, larger ones as nanoseconds.
        Some(Value::Number(n)) => match n.as_u64().unwrap_or(0) {
            s if s < 1000 => Duration::from_secs(s),
            ns => Duration::from_nanos(ns),
        },
        Some(Value::String(s)) => parse_go(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Request decode failed: LockDelay: time: invalid duration {s:?}"
            ))
        })?,
        Some(_) => return Err(ApiError::bad_request("Request decode failed: LockDelay")),
    };
    let behavior = match f.string("Behavior")?.unwrap_or_default().as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(ApiError::new(
                500,
                format!("Invalid Behavior setting '{other}'"),
            ))
        }
    };
    let ttl = f.string("TTL")?.unwrap_or_default();
    let ttl_duration = if ttl.is_empty() {
        None
    } else {
        let d = parse_go(&ttl).ok_or_else(|| {
            ApiError::new(
                500,
                format!("Session TTL '{ttl}' invalid: time: invalid duration {ttl:?}"),
            )
        })?;
        if !d.is_zero() && (d < MIN_TTL || d > MAX_TTL) {
            return Err(ApiError::new(
                500,
                format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    d.as_nanos(),
                    format_go(MIN_TTL),
                    format_go(MAX_TTL)
                ),
            ));
        }
        Some(d).filter(|d| !d.is_zero())
    };
    let checks = if f.get("NodeChecks").is_some() {
        f.strings("NodeChecks")?
    } else if f.get("Checks").is_some() {
        f.strings("Checks")?
    } else {
        vec![SERF_CHECK.to_string()]
    };
    sh.acl.require(req, "session:write", &node)?;
    let id = sh.write(|tx| {
        if !tx.st.nodes.contains_key(&node) {
            return Err(ApiError::new(500, "Missing node registration"));
        }
        for c in &checks {
            match tx.st.checks.get(&key(&node, c)) {
                None => {
                    return Err(ApiError::new(
                        500,
                        format!("Missing check '{c}' registration"),
                    ))
                }
                Some(check) if check.status == Status::Critical => {
                    return Err(ApiError::new(
                        500,
                        format!("Check '{c}' is in critical state"),
                    ))
                }
                Some(_) => {}
            }
        }
        let idx = tx.index();
        let id = random_uuid();
        tx.st.sessions.by_id.insert(
            id.clone(),
            Session {
                id: id.clone(),
                name: f.string("Name").ok().flatten().unwrap_or_default(),
                node: node.clone(),
                checks: checks.clone(),
                ttl: ttl.clone(),
                lock_delay,
                behavior,
                expires_at: ttl_duration.map(|d| Instant::now() + d * 2),
                create_index: idx,
                modify_index: idx,
            },
        );
        Ok(id)
    })?;
    Ok(json(&json!({ "ID": id }), HeaderMap::new()))
}

pub fn destroy(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    datacenter(req)?;
    sh.faults.require_leader(Consistency::Default)?;
    let id = req.path.strip_prefix("/v1/session/destroy/").unwrap_or("");
    sh.acl.require(req, "session:write", AGENT_NODE)?;
    sh.write(|tx| {
        let idx = tx.index();
        invalidate(tx.st, id, idx);
    });
    Ok(json(&Value::Bool(true), HeaderMap::new()))
}

pub fn renew(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["PUT"])?;
    datacenter(req)?;
    sh.faults.require_leader(Consistency::Default)?;
    let id = req.path.strip_prefix("/v1/session/renew/").unwrap_or("");
    sh.acl.require(req, "session:write", AGENT_NODE)?;
    let mut st = sh.lock();
    let Some(s) = st.sessions.by_id.get_mut(id) else {
        return Err(ApiError::new(404, format!("Session id '{id}' not found")));
    };
    if let Some(ttl) = parse_go(&s.ttl).filter(|d| !d.is_zero()) {
        s.expires_at = Some(Instant::now() + ttl * 2);
    }
    let body = Value::Array(vec![render(s)]);
    drop(st);
    Ok(json(&body, HeaderMap::new()))
}

pub async fn info(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let opts = parse_read(req)?;
    let id = req.path.strip_prefix("/v1/session/info/").unwrap_or("");
    sh.acl.require(req, "session:read", AGENT_NODE)?;
    let (meta, found) = blocking::block(sh, &opts, |st| {
        st.sessions
            .by_id
            .get(id)
            .map(render)
            .into_iter()
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(json(&Value::Array(found), meta.headers()))
}

pub async fn list(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET"])?;
    let opts = parse_read(req)?;
    sh.acl.require(req, "session:read", AGENT_NODE)?;
    let (meta, all) = blocking::block(sh, &opts, |st| {
        st.sessions.by_id.values().map(render).collect::<Vec<_>>()
    })
    .await?;
    Ok(json(&Value::Array(all), meta.headers()))
}

fn render(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl,
        "NodeChecks": s.checks,
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// Ends a session: its locks are released (or its keys deleted) at `idx`,
/// and each key gets the session's lock delay. False if it did not exist.
pub fn invalidate(st: &mut Store, id: &str, idx: u64) -> bool {
    let Some(session) = st.sessions.by_id.remove(id) else {
        return false;
    };
    let held: Vec<String> = st
        .kv
        .entries
        .values()
        .filter(|e| e.session.as_deref() == Some(id))
        .map(|e| e.key.clone())
        .collect();
    for k in held {
        if !session.lock_delay.is_zero() {
            st.kv
                .lock_delays
                .insert(k.clone(), Instant::now() + session.lock_delay);
        }
        match session.behavior {
            Behavior::Delete => {
                st.kv.entries.remove(&k);
            }
            Behavior::Release => {
                if let Some(e) = st.kv.entries.get_mut(&k) {
                    e.session = None;
                    e.modify_index = idx;
                }
            }
        }
    }
    true
}

/// Invalidates the sessions that depend on check `check_id` of `node`.
pub fn invalidate_for_check(st: &mut Store, node: &str, check_id: &str, idx: u64) {
    let ids: Vec<String> = st
        .sessions
        .by_id
        .values()
        .filter(|s| s.node == node && s.checks.iter().any(|c| c == check_id))
        .map(|s| s.id.clone())
        .collect();
    for id in ids {
        invalidate(st, &id, idx);
    }
}

/// Invalidates sessions whose TTL ran out.
pub fn expire_due(sh: &Shared) {
    let now = Instant::now();
    let due: Vec<String> = sh
        .lock()
        .sessions
        .by_id
        .values()
        .filter(|s| s.expires_at.is_some_and(|t| t <= now))
        .map(|s| s.id.clone())
        .collect();
    for id in due {
        expire(sh, &id);
    }
}

/// Ends a session now, as if its TTL had run out; false if unknown.
pub fn expire(sh: &Shared, id: &str) -> bool {
    sh.write(|tx| {
        if !tx.st.sessions.by_id.contains_key(id) {
            return false;
        }
        let idx = tx.index();
        invalidate(tx.st, id, idx)
    })
}
