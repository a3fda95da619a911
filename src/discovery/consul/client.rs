//! A thin Consul HTTP API client on `reqwest` (rustls): the handful of
//! endpoints laneway uses, with Consul's blocking-query parameters and
//! response metadata. Control plane only.
//!
//! Why not a Consul crate: the maintained ones (`rs-consul`, `consulrs`)
//! either hide `X-Consul-Index`/`X-Consul-KnownLeader` on the endpoints
//! laneway watches (`/v1/health/state/any`, KV with `?cas=`), or bring their
//! own HTTP stack without rustls CA options, and none lets the caller own
//! the read timeout per blocking query (it must exceed wait × 17/16). What
//! is left is a dozen lines per endpoint over `reqwest`.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::ConsulConfig;

/// Slack added to a blocking query's read timeout beyond wait × 17/16.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);
/// Read timeout of a non-blocking request.
const PLAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata Consul sends with every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadMeta {
    /// `X-Consul-Index` (0 if absent).
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`, milliseconds.
    pub last_contact_ms: u64,
}

/// Why a request to Consul failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("cannot reach Consul at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("Consul answered {status} to {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
    #[error("Consul's answer to {path} is not what laneway expects: {detail}")]
    Decode { path: String, detail: String },
    #[error("cannot set up the Consul client: {0}")]
    Setup(String),
}

impl ConsulError {
    /// The label used in metrics: `unreachable`, `5xx`, `429`, `4xx`, `decode`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::Unreachable { .. } | ConsulError::Setup(_) => "unreachable",
            ConsulError::Status { status: 429, .. } => "429",
            ConsulError::Status { status, .. } if *status >= 500 => "5xx",
            ConsulError::Status { .. } => "4xx",
            ConsulError::Decode { .. } => "decode",
        }
    }
}

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub modify_index: u64,
}

impl KvEntry {
    /// The decoded value (Consul sends it base64; `null` is empty).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| format!("KV {} holds invalid base64: {e}", self.key)),
        }
    }
}

/// The Consul client: one connection pool shared by every watch.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    namespace: Option<String>,
    consistency: Option<&'static str>,
}

impl ConsulClient {
    pub fn new(cfg: &ConsulConfig) -> Result<ConsulClient, ConsulError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.concurrency + 4)
            .user_agent(concat!("laneway/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ConsulError::Setup(format!("cannot read {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConsulError::Setup(format!("{} holds no usable certificate: {e}", ca.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ConsulError::Setup(e.to_string()))?;
        Ok(ConsulClient {
            http,
            address: cfg.address.clone(),
            token: cfg.token.clone(),
            datacenter: cfg.datacenter.clone(),
            namespace: cfg.namespace.clone(),
            consistency: cfg.consistency.query(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.address));
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(dc) = &self.datacenter {
            q.push(("dc", dc.clone()));
        }
        if let Some(ns) = &self.namespace {
            q.push(("ns", ns.clone()));
        }
        if !q.is_empty() {
            req = req.query(&q);
        }
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        req
    }

    /// A read. With `block = Some((index, wait))` and `index > 0` it is a
    /// blocking query, with a read timeout above wait × 17/16. A 404 is
    /// `Ok(None)` (KV: no such key).
    pub async fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<T>, ReadMeta), ConsulError> {
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(c) = self.consistency {
            q.push((c, String::new()));
        }
        let mut timeout = PLAIN_TIMEOUT;
        if let Some((index, wait)) = block {
            if index > 0 {
                q.push(("index", index.to_string()));
                q.push(("wait", format!("{}ms", wait.as_millis())));
                timeout = wait * 17 / 16 + BLOCKING_SLACK;
            }
        }
        let resp = self
            .request(Method::GET, path, &q)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let meta = read_meta(resp.headers());
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok((None, meta));
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(status_error(status, path, &body));
        }
        let value = serde_json::from_slice(&body).map_err(|e| ConsulError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        Ok((Some(value), meta))
    }

    /// A write (`PUT`/`DELETE`); returns the answer's body.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ConsulError> {
        let resp = self
            .request(method, path, query)
            .timeout(PLAIN_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(status_error(status, path, &body));
        }
        Ok(body.to_vec())
    }

    /// `PUT /v1/kv/<key>?cas=<index>`: true if the write happened (with
    /// `cas = 0`: only if the key did not exist).
    pub async fn kv_cas(&self, key: &str, value: Vec<u8>, cas: u64) -> Result<bool, ConsulError> {
        let path = format!("/v1/kv/{key}");
        let body = self
            .write(Method::PUT, &path, &[("cas", cas.to_string())], value)
            .await?;
        match body.trim_ascii() {
            b"true" => Ok(true),
            b"false" => Ok(false),
            other => Err(ConsulError::Decode {
                path,
                detail: format!(
                    "expected true or false, got {:?}",
                    String::from_utf8_lossy(other)
                ),
            }),
        }
    }

    /// `GET /v1/kv/<key>` (optionally blocking): the entry, if the key exists.
    pub async fn kv_get(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvEntry>, ReadMeta), ConsulError> {
        let (entries, meta) = self
            .read::<Vec<KvEntry>>(&format!("/v1/kv/{key}"), &[], block)
            .await?;
        Ok((
            entries.and_then(|e| e.into_iter().find(|e| e.key == key)),
            meta,
        ))
    }

    fn unreachable(&self, e: reqwest::Error) -> ConsulError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        ConsulError::Unreachable {
            address: self.address.clone(),
            detail,
        }
    }
}

fn read_meta(headers: &reqwest::header::HeaderMap) -> ReadMeta {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    ReadMeta {
        index: get("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        known_leader: get("x-consul-knownleader") == Some("true"),
        last_contact_ms: get("x-consul-lastcontact")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

fn status_error(status: StatusCode, path: &str, body: &[u8]) -> ConsulError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    ConsulError::Status {
        status: status.as_u16(),
        path: path.to_string(),
        body: text.chars().take(200).collect(),
    }
}
