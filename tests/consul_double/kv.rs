//! The KV store and `GET/PUT/DELETE /v1/kv/<key>`: `?recurse`, `?keys`
//! (with `?separator=`), `?raw`, `?flags=`, `?cas=` (0 creates only if
//! absent), and `?acquire=` / `?release=` with sessions. Values travel
//! base64-encoded in `Value` (`null` when empty); a missing key is a 404
//! that still carries `X-Consul-Index`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::acl::ReadAccess;
use super::base64;
use super::blocking::{self, parse_read, Consistency};
use super::http::{allow, empty, json, set_header, ApiError, Req};
use super::shared::Shared;

/// Consul's default `kv_max_value_size`.
const MAX_VALUE: usize = 512 * 1024;

#[derive(Clone, Debug)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub lock_index: u64,
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default)]
pub struct Kv {
    pub entries: BTreeMap<String, KvEntry>,
    /// Keys whose lock cannot be acquired before the instant (lock delay).
    pub lock_delays: BTreeMap<String, Instant>,
}

impl Kv {
    /// Sets a key outright (no CAS, no session), keeping its create index,
    /// lock index and holder.
    pub fn set(&mut self, key: &str, value: Vec<u8>, flags: u64, idx: u64) {
        let entry = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| KvEntry {
                key: key.to_string(),
                value: Vec::new(),
                flags: 0,
                lock_index: 0,
                session: None,
                create_index: idx,
                modify_index: idx,
            });
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = idx;
    }
}

pub async fn endpoint(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    allow(req, &["GET", "PUT", "DELETE"])?;
    let opts = parse_read(req)?;
    let key = req.path.strip_prefix("/v1/kv/").unwrap_or("").to_string();
    match req.method.as_str() {
        "GET" if req.query.has("keys") => get_keys(sh, req, &key, &opts).await,
        "GET" => get(sh, req, &key, &opts).await,
        "PUT" => put(sh, req, &key),
        _ => delete(sh, req, &key),
    }
}

fn render(e: &KvEntry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(base64::encode(&e.value)) },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::String(s.clone());
    }
    v
}

async fn get(
    sh: &Arc<Shared>,
    req: &Req,
    key: &str,
    opts: &blocking::QueryOpts,
) -> Result<Response, ApiError> {
    let recurse = req.query.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    // Consul refuses a single key but filters a listing.
    let access = if recurse {
        sh.acl.read(req, "key:read", key)?
    } else {
        sh.acl.require(req, "key:read", key)?;
        ReadAccess::Full
    };
    let (meta, entries) = blocking::block(sh, opts, |st| {
        if access == ReadAccess::Filtered {
            Vec::new()
        } else if recurse {
            st.kv
                .entries
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>()
        } else {
            st.kv.entries.get(key).cloned().into_iter().collect()
        }
    })
    .await?;
    let headers = meta.headers();
    if entries.is_empty() {
        return Ok(empty(StatusCode::NOT_FOUND, headers));
    }
    if req.query.has("raw") && !recurse {
        let mut headers = headers;
        set_header(&mut headers, "content-type", "text/plain");
        set_header(&mut headers, "x-content-type-options", "nosniff");
        set_header(&mut headers, "content-security-policy", "sandbox");
        return Ok((StatusCode::OK, headers, entries[0].value.clone()).into_response());
    }
    let list: Vec<Value> = entries.iter().map(render).collect();
    Ok(json(&Value::Array(list), headers))
}

async fn get_keys(
    sh: &Arc<Shared>,
    req: &Req,
    prefix: &str,
    opts: &blocking::QueryOpts,
) -> Result<Response, ApiError> {
    // Consul still honours its historic misspelling.
    let sep = req
        .query
        .get("separator")
        .or(req.query.get("seperator"))
        .unwrap_or("")
        .to_string();
    let access = sh.acl.read(req, "key:list", prefix)?;
    let (meta, keys) = blocking::block(sh, opts, |st| {
        let mut keys: Vec<String> = Vec::new();
        if access == ReadAccess::Filtered {
            return keys;
        }
        for k in st.kv.entries.keys().filter(|k| k.starts_with(prefix)) {
            let shown = match k[prefix.len()..].find(&sep).filter(|_| !sep.is_empty()) {
                Some(i) => k[..prefix.len() + i + sep.len()].to_string(),
                None => k.clone(),
            };
            if keys.last() != Some(&shown) {
                keys.push(shown);
            }
        }
        keys
    })
    .await?;
    if keys.is_empty() && !prefix.is_empty() {
        return Ok(empty(StatusCode::NOT_FOUND, meta.headers()));
    }
    Ok(json(&json!(keys), meta.headers()))
}

/// What a PUT does.
enum PutOp {
    Set,
    Cas(u64),
    Acquire(String),
    Release(String),
}

fn put(sh: &Arc<Shared>, req: &Req, key: &str) -> Result<Response, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    conflicting(req, &["cas", "acquire", "release"])?;
    let flags = match req.query.get("flags") {
        Some(text) => parse_uint(text)?,
        None => 0,
    };
    let op = if let Some(cas) = req.query.get("cas") {
        PutOp::Cas(parse_uint(cas)?)
    } else if let Some(s) = req.query.get("acquire") {
        PutOp::Acquire(s.to_string())
    } else if let Some(s) = req.query.get("release") {
        PutOp::Release(s.to_string())
    } else {
        PutOp::Set
    };
    if req.body.len() > MAX_VALUE {
        return Err(ApiError::new(
            413,
            format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE} bytes. See \
                 https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
                req.body.len()
            ),
        ));
    }
    sh.acl.require(req, "key:write", key)?;
    sh.faults.require_leader(Consistency::Default)?;
    let value = req.body.to_vec();
    let outcome = sh.write(|tx| {
        // The raft entry is applied whether or not the operation succeeds.
        let idx = tx.index();
        let kv = &mut tx.st.kv;
        match op {
            PutOp::Set => {
                kv.set(key, value, flags, idx);
                Ok(true)
            }
            PutOp::Cas(cas) => {
                let ok = match kv.entries.get(key) {
                    None => cas == 0,
                    Some(e) => cas != 0 && e.modify_index == cas,
                };
                if ok {
                    kv.set(key, value, flags, idx);
                }
                Ok(ok)
            }
            PutOp::Acquire(session) => {
                if !tx.st.sessions.by_id.contains_key(&session) {
                    return Err(ApiError::new(500, format!("Invalid session {session:?}")));
                }
                if kv
                    .lock_delays
                    .get(key)
                    .is_some_and(|until| *until > Instant::now())
                {
                    return Ok(false);
                }
                match kv.entries.get(key).and_then(|e| e.session.clone()) {
                    Some(holder) if holder != session => return Ok(false),
                    Some(_) => kv.set(key, value, flags, idx),
                    None => {
                        kv.set(key, value, flags, idx);
                        if let Some(e) = kv.entries.get_mut(key) {
                            e.lock_index += 1;
                            e.session = Some(session);
                        }
                    }
                }
                Ok(true)
            }
            PutOp::Release(session) => {
                let held = kv
                    .entries
                    .get(key)
                    .is_some_and(|e| e.session.as_deref() == Some(session.as_str()));
                if held {
                    kv.set(key, value, flags, idx);
                    if let Some(e) = kv.entries.get_mut(key) {
                        e.session = None;
                    }
                }
                Ok(held)
            }
        }
    })?;
    Ok(json(&Value::Bool(outcome), HeaderMap::new()))
}

fn delete(sh: &Arc<Shared>, req: &Req, key: &str) -> Result<Response, ApiError> {
    conflicting(req, &["recurse", "cas"])?;
    let recurse = req.query.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let cas = req.query.get("cas").map(parse_uint).transpose()?;
    sh.acl.require(req, "key:write", key)?;
    sh.faults.require_leader(Consistency::Default)?;
    let ok = sh.write(|tx| {
        tx.index();
        let kv = &mut tx.st.kv;
        if recurse {
            kv.entries.retain(|k, _| !k.starts_with(key));
            return true;
        }
        match cas {
            // Consul answers true for a CAS delete of a key that is gone.
            Some(cas) => match kv.entries.get(key) {
                None => true,
                Some(e) if e.modify_index == cas => {
                    kv.entries.remove(key);
                    true
                }
                Some(_) => false,
            },
            None => {
                kv.entries.remove(key);
                true
            }
        }
    });
    Ok(json(&Value::Bool(ok), HeaderMap::new()))
}

/// Go's `strconv.ParseUint` error, which Consul answers with a 500.
fn parse_uint(text: &str) -> Result<u64, ApiError> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::new(
                500,
                format!("strconv.ParseUint: parsing {text:?}: invalid syntax"),
            )
        })
}

fn conflicting(req: &Req, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| req.query.has(f)).count() > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}\n",
            req.query.encode()
        )));
    }
    Ok(())
}
