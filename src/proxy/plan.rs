//! What to do with a request, decided once per request from one snapshot:
//! the lane, the matched rule, the target version and its pool, and the
//! header edits. Shared by both HTTP engines; request path, no I/O.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::HeaderMap;

use super::ProxySettings;
use crate::routing::lanes::{self, LaneSource};
use crate::routing::rules::{Decision, RequestInfo};
use crate::routing::snapshot::{LaneView, Pool, Snapshot, Target};

/// A request that goes upstream.
pub struct Plan {
    pub pool: Arc<Pool>,
    pub upstream_target: Option<String>,
    /// The production host recovered from a lane hostname, sent as `Host`.
    pub production_host: Option<String>,
    pub set_headers: Vec<(HeaderName, String)>,
    pub remove_headers: Vec<HeaderName>,
    pub add_response_headers: Vec<(HeaderName, String)>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Times an idempotent request may be sent again after the upstream
    /// closed or reset before answering.
    pub read_retries: usize,
}

/// A response produced by laneway rather than an upstream.
pub struct LocalResponse {
    pub status: u16,
    /// Metric label: why laneway answered.
    pub reason: &'static str,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, String)>,
}

impl LocalResponse {
    pub fn text(status: u16, reason: &'static str, body: String) -> LocalResponse {
        LocalResponse {
            status,
            reason,
            body: Bytes::from(body),
            headers: vec![(CONTENT_TYPE, "text/plain; charset=utf-8".to_string())],
        }
    }
}

/// The outcome of [`decide`].
pub struct Decided {
    pub lane: Arc<LaneView>,
    pub lane_source: LaneSource,
    pub target: Option<Arc<Target>>,
    pub action: Result<Plan, LocalResponse>,
}

/// Resolves lane, rule and target for a request. `target` is the raw
/// request target (`/path?query`), `host` the Host header or authority.
pub fn decide(
    snap: &Snapshot,
    settings: &ProxySettings,
    host: &str,
    request_target: &str,
    scheme: &str,
    headers: &HeaderMap,
    dst: Option<std::net::SocketAddr>,
) -> Decided {
    let resolved = lanes::resolve(snap, &settings.lanes, headers, host, dst);
    if let Some(entry) = resolved.free_entry {
        return Decided {
            lane: resolved.lane.clone(),
            lane_source: resolved.source,
            target: None,
            action: Err(LocalResponse::text(
                421,
                "free_entry",
                format!(
                    "laneway: {entry} is a lane entry that no lane holds; create a lane or use another entry\n"
                ),
            )),
        };
    }
    let lane = resolved.lane.clone();
    let production_host = resolved.host_recovered.then(|| resolved.host.to_string());
    let info = RequestInfo {
        host: resolved.host,
        target: request_target,
        scheme,
        lane: &lane.name,
        headers,
    };
    let mut target = None;
    let action = match snap.rules.route(&info) {
        Decision::Proxy {
            location,
            service,
            upstream_target,
            set_headers,
            add_response_headers,
            ..
        } => match snap.target(&lane, service) {
            None => Err(LocalResponse::text(
                503,
                "no_instance",
                format!(
                    "laneway: lane \"{}\": service \"{service}\" has no registered instance\n",
                    lane.name
                ),
            )),
            Some(t) => {
                target = Some(t.clone());
                match &t.pool {
                    Ok(pool) => Ok(Plan {
                        pool: pool.clone(),
                        upstream_target,
                        production_host,
                        set_headers,
                        remove_headers: location.remove_headers.clone(),
                        add_response_headers,
                        connect_timeout: location
                            .connect_timeout
                            .unwrap_or(settings.connect_timeout),
                        read_timeout: location.read_timeout.unwrap_or(settings.read_timeout),
                        write_timeout: location.write_timeout.unwrap_or(settings.write_timeout),
                        read_retries: location.retries.unwrap_or(settings.read_retries),
                    }),
                    Err(msg) => Err(LocalResponse::text(
                        503,
                        if lane.strict { "strict" } else { "no_instance" },
                        format!("laneway: {msg}\n"),
                    )),
                }
            }
        },
        Decision::Return {
            status,
            body,
            headers,
            ..
        } => Err(LocalResponse {
            status,
            reason: "return",
            body: Bytes::from(body),
            headers,
        }),
        Decision::Redirect { status, to, .. } => Err(LocalResponse {
            status,
            reason: "redirect",
            body: Bytes::new(),
            headers: vec![(http::header::LOCATION, to)],
        }),
        Decision::NotFound { host, path } => Err(LocalResponse::text(
            404,
            "not_found",
            format!("laneway: no route for host \"{host}\" and path \"{path}\"\n"),
        )),
        Decision::BadRequest(why) => Err(LocalResponse::text(
            400,
            "bad_request",
            format!("laneway: bad request: {why}\n"),
        )),
    };
    Decided {
        lane,
        lane_source: resolved.source,
        target,
        action,
    }
}

/// A fresh request id: 32 hex digits.
pub fn new_request_id() -> String {
    let mut id = [0u8; 32];
    fill_request_id(&mut id);
    String::from_utf8_lossy(&id).into_owned()
}

/// Writes a fresh request id (32 lowercase hex digits) into `out`, without
/// allocating.
pub fn fill_request_id(out: &mut [u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..));
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
        let mut id = [0u8; 32];
        super::fill_request_id(&mut id);
        assert!(id.iter().all(|c| c.is_ascii_hexdigit()));
    }
}
