//! The HTTP surface: one axum fallback handler that counts the request,
//! applies the per-request faults (slow, rate limit), and routes by path
//! prefix the way Consul's Go mux does. Also the request and error types
//! every handler uses: errors are plain-text bodies, as Consul writes them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::shared::Shared;
use super::{agent, catalog, kv, session};

/// Largest request body read (KV values are limited far below this).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A request, read whole.
pub struct Req {
    pub method: Method,
    /// Percent-decoded, like Go's `URL.Path`.
    pub path: String,
    pub raw_query: String,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Query parameters in order, decoded like Go's `url.ParseQuery`.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str) -> Query {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        Query(pairs)
    }

    /// Whether the parameter is present at all (`?stale`, `?stale=false`).
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The first value (`""` for a bare `?key`), as Go's `Query().Get`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter (`?tag=a&tag=b`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Re-encoded `k=v&…` sorted by key, as Go's `Values.Encode`.
    pub fn encode(&self) -> String {
        let mut pairs: Vec<_> = self.0.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus` is set); a broken
/// escape is kept as written.
pub fn percent_decode(text: &str, plus: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error answer: a status and a plain-text body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: u16, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        text(self.status, self.msg)
    }
}

/// A plain-text answer, typed as Go's `http.ResponseWriter` sniffs it.
pub fn text(status: u16, body: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (status, headers, body.into()).into_response()
}

/// A 200 JSON answer with `headers` (usually the blocking-query metadata).
pub fn json(value: &Value, mut headers: HeaderMap) -> Response {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, value.to_string()).into_response()
}

/// An empty answer with `status` and `headers`.
pub fn empty(status: StatusCode, headers: HeaderMap) -> Response {
    (status, headers, Body::empty()).into_response()
}

/// Adds a header whose name is a lowercase static string.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// 405 unless the request uses one of `allowed`, as Consul's
/// `MethodNotAllowedError`.
pub fn allow(req: &Req, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.iter().any(|m| *m == req.method.as_str()) {
        return Ok(());
    }
    Err(ApiError::new(
        405,
        format!("method {} not allowed", req.method),
    ))
}

pub fn router(sh: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).with_state(sh)
}

async fn dispatch(State(sh): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let path = percent_decode(parts.uri.path(), false);
    sh.stats
        .record(parts.method.as_str(), &path, &raw_query, false);
    let delay = sh.faults.slow();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if sh.faults.rate_limited() {
        return text(429, "rate limit exceeded, try a different server");
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return text(400, format!("Request decode failed: {e}")),
    };
    let req = Req {
        method: parts.method,
        path,
        query: Query::parse(&raw_query),
        raw_query,
        headers: parts.headers,
        body,
    };
    match route(&sh, &req).await {
        Ok(resp) => resp,
        Err(e) if e.status == 405 => {
            let mut resp = e.into_response();
            let allowed = allowed_methods(&req.path).join(",");
            if let Ok(v) = HeaderValue::from_str(&format!("OPTIONS,{allowed}")) {
                resp.headers_mut().insert(ALLOW, v);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Routes like Consul's mux: exact paths, and prefixes ending in `/`.
async fn route(sh: &Arc<Shared>, req: &Req) -> Result<Response, ApiError> {
    let p = req.path.as_str();
    match p {
        "/v1/catalog/services" => catalog::services(sh, req).await,
        "/v1/status/leader" => catalog::leader(sh, req),
        "/v1/agent/service/register" => agent::register(sh, req),
        "/v1/session/create" => session::create(sh, req),
        "/v1/session/list" => session::list(sh, req).await,
        _ if p.starts_with("/v1/health/service/") => catalog::health_service(sh, req).await,
        _ if p.starts_with("/v1/health/state/") => catalog::health_state(sh, req).await,
        _ if p.starts_with("/v1/agent/service/deregister/") => agent::deregister(sh, req),
        _ if p.starts_with("/v1/agent/check/pass/") => agent::ttl_update(sh, req, "pass"),
        _ if p.starts_with("/v1/agent/check/warn/") => agent::ttl_update(sh, req, "warn"),
        _ if p.starts_with("/v1/agent/check/fail/") => agent::ttl_update(sh, req, "fail"),
        _ if p.starts_with("/v1/agent/check/update/") => agent::check_update(sh, req),
        _ if p.starts_with("/v1/kv/") => kv::endpoint(sh, req).await,
        _ if p.starts_with("/v1/session/destroy/") => session::destroy(sh, req),
        _ if p.starts_with("/v1/session/renew/") => session::renew(sh, req),
        _ if p.starts_with("/v1/session/info/") => session::info(sh, req).await,
        // Consul's index handler: anything unknown is a bare 404.
        _ => Ok(empty(StatusCode::NOT_FOUND, HeaderMap::new())),
    }
}

fn allowed_methods(path: &str) -> &'static [&'static str] {
    if path.starts_with("/v1/kv/") {
        &["GET", "PUT", "DELETE"]
    } else if path.starts_with("/v1/agent/")
        || path.starts_with("/v1/session/create")
        || path.starts_with("/v1/session/destroy/")
        || path.starts_with("/v1/session/renew/")
    {
        &["PUT"]
    } else {
        &["GET"]
    }
}
