//! What to do with a request, decided once per request from one snapshot:
//! the lane, the matched rule, the target version and its pool, and the
//! header edits, request and response (a lane entered by hostname keeps
//! redirects and cookies in it: [`crate::routing::rewrite`]); a request
//! that loops through laneway is answered 508 instead ([`super::hops`]), a
//! lane hostname of no lane 404 ([`super::lane_pages`]), and a lane named
//! by a header or cookie that does not exist is reported with the answer.
//! Shared by both HTTP engines; request path, no I/O.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::HeaderMap;

use super::{hops, lane_pages, ProxySettings};
use crate::routing::lanes::{self, LaneSource};
use crate::routing::rewrite::{IntoLane, ResponseRewrite};
use crate::routing::rules::{Decision, ErrorCodes, RequestInfo};
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
    /// Answer with this status whatever the upstream's (an `error_page`
    /// without `=` is in force).
    pub status: Option<u16>,
    /// Upstream statuses that go back to the rules (`proxy_intercept_errors`):
    /// the response is dropped and the request decided again with
    /// [`Incoming::upstream_statuses`] + the status.
    pub intercept: Option<ErrorCodes>,
    /// Send the request as GET (unless HEAD): an `error_page` redirected it.
    pub as_get: bool,
    /// Edits of the upstream's `Location`, `Refresh`, `Set-Cookie` ...
    /// headers (a lane chosen by hostname, `proxy_redirect`,
    /// `proxy_cookie_domain`); `None` for most requests.
    pub rewrite: Option<Box<ResponseRewrite>>,
}

impl Plan {
    /// The upstream's `status` goes back to the rules.
    #[inline]
    pub fn intercepts(&self, status: u16) -> bool {
        self.intercept.is_some_and(|c| c.contains(status))
    }
}

/// What [`decide`] needs to know about a request.
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    /// The Host header or authority.
    pub host: &'a str,
    /// The raw request target (`/path?query`).
    pub target: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    /// The address the client connected to (a VIP or pool port names a lane).
    pub dst: Option<std::net::SocketAddr>,
    /// The nginx port of the listener ([`super::ports::ListenPorts`]).
    pub port: u16,
    /// The statuses the upstream answered earlier plans of this request
    /// with, each handed back by [`Plan::intercepts`]; empty at first.
    pub upstream_statuses: &'a [u16],
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

/// A lane a request named that does not exist, and where it named it.
#[derive(Debug, Clone)]
pub struct UnknownLane {
    pub source: LaneSource,
    pub name: Box<str>,
}

/// The outcome of [`decide`].
pub struct Decided {
    pub lane: Arc<LaneView>,
    pub lane_source: LaneSource,
    pub target: Option<Arc<Target>>,
    pub action: Result<Plan, LocalResponse>,
    /// Set when the request named a lane that does not exist.
    pub unknown: Option<UnknownLane>,
}

/// Resolves lane, rule and target for a request.
pub fn decide(snap: &Snapshot, settings: &ProxySettings, req: &Incoming<'_>) -> Decided {
    let Incoming {
        host,
        target: request_target,
        scheme,
        headers,
        dst,
        port,
        upstream_statuses,
    } = *req;
    let resolved = lanes::resolve(snap, &settings.lanes, headers, host, dst);
    let unknown = resolved.unknown.map(|(source, name)| UnknownLane {
        source,
        name: name.to_ascii_lowercase().into(),
    });
    if let (Some((LaneSource::Hostname, label)), LaneSource::Default) =
        (resolved.unknown, resolved.source)
    {
        // a lane hostname of no lane is never served by the baseline
        let name = lanes::strip_port(host);
        let production = production_before(name.trim_end_matches('.'), label);
        let page = lane_pages::unknown_lane(
            snap,
            settings,
            &label.to_ascii_lowercase(),
            &lane_pages::Links::Hostname {
                scheme,
                production,
                port: &host[name.len()..],
            },
            headers,
        );
        return Decided {
            lane: resolved.lane.clone(),
            lane_source: resolved.source,
            target: None,
            action: Err(page),
            unknown,
        };
    }
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
            unknown,
        };
    }
    // a lane entered by hostname: redirects and cookies stay in it
    let into_lane = (resolved.source == LaneSource::Hostname).then(|| {
        IntoLane::new(
            &resolved.lane.name,
            &settings.lanes.domain,
            if scheme == "https" { "https" } else { "http" },
            host,
        )
    });
    let lane = resolved.lane.clone();
    let production_host = resolved.host_recovered.then(|| resolved.host.to_string());
    let info = RequestInfo {
        host: resolved.host,
        target: request_target,
        scheme,
        lane: &lane.name,
        headers,
        port,
        upstream_statuses,
    };
    let mut target = None;
    let action = match snap.rules.route(&info) {
        Decision::Proxy {
            location,
            service,
            upstream_target,
            set_headers,
            add_response_headers,
            status,
            intercept,
            as_get,
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
                // (checked only for a request about to be forwarded: a local
                // answer cannot loop)
                let looped =
                    t.pool.as_ref().ok().and_then(|_| {
                        hops::check(headers, &settings.instance_id, settings.max_hops)
                    });
                match (&t.pool, looped) {
                    (Ok(_), Some(why)) => Err(hops::loop_response(
                        why,
                        &lane.name,
                        service,
                        &settings.instance_id,
                    )),
                    (Ok(pool), None) => Ok(Plan {
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
                        status,
                        intercept: intercept.copied(),
                        as_get,
                        // (checked here: a plain request clones nothing)
                        rewrite: if into_lane.is_some() || location.proxy_rewrites.is_some() {
                            ResponseRewrite::new(
                                &snap.rules,
                                into_lane.clone(),
                                location.proxy_rewrites.clone(),
                            )
                        } else {
                            None
                        },
                    }),
                    (Err(msg), _) => Err(LocalResponse::text(
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
    let action = match action {
        Err(mut resp) if into_lane.is_some() && into_lane_local(&resp) => {
            if let Some(rw) = ResponseRewrite::new(&snap.rules, into_lane, None) {
                rw.local_headers(&mut resp.headers);
            }
            Err(resp)
        }
        other => other,
    };
    Decided {
        lane,
        lane_source: resolved.source,
        target,
        action,
        unknown,
    }
}

/// A local response with a header the lane rewriting may change.
fn into_lane_local(resp: &LocalResponse) -> bool {
    resp.headers.iter().any(|(n, _)| {
        n == http::header::LOCATION
            || n == http::header::CONTENT_LOCATION
            || n == http::header::REFRESH
            || n == http::header::SET_COOKIE
    })
}

/// The production host before `.<label>.<domain>` in a lane hostname.
fn production_before<'h>(name: &'h str, label: &str) -> Option<&'h str> {
    let (before, _) = name.rsplit_once('.')?; // drop the domain's last label
    let at = before
        .to_ascii_lowercase()
        .rfind(&format!(".{}.", label.to_ascii_lowercase()))?;
    (at > 0).then(|| &name[..at])
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
    fn the_production_host_is_found_before_the_lane_label() {
        let p = super::production_before;
        assert_eq!(
            p("bj.example.com.t-43.lanes.test", "t-43"),
            Some("bj.example.com")
        );
        assert_eq!(
            p("BJ.example.com.T-43.lanes.test", "t-43"),
            Some("BJ.example.com")
        );
        assert_eq!(p("t-43.lanes.test", "t-43"), None);
        assert_eq!(p("t-43.t-43.lanes.test", "t-43"), Some("t-43"));
    }

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
