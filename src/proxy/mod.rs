//! The data plane: laneway's Pingora `ProxyHttp`. Runs on the request path:
//! one `ArcSwap::load` per request, then lane resolution, rule matching and
//! version selection as pure lookups on the snapshot, weighted round-robin
//! over the chosen version's instances, and a retry on another instance when
//! connecting fails.

mod respond;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::{debug, info};

use crate::routing::lanes::{self, LaneSettings, LaneSource};
use crate::routing::rules::{Decision, RequestInfo};
use crate::routing::snapshot::{LaneView, Pool, Snapshot, Target};
use crate::telemetry::{Metrics, ACCESS_LOG_TARGET};

pub use respond::LocalResponse;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_LANEWAY_VERSION: HeaderName = HeaderName::from_static("x-laneway-version");

/// Static settings of the data plane, from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub lanes: LaneSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub connect_retries: usize,
    pub response_headers: bool,
}

/// The laneway proxy service.
pub struct Laneway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: ProxySettings,
    metrics: Arc<Metrics>,
}

impl Laneway {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
    ) -> Laneway {
        Laneway {
            snapshot,
            settings,
            metrics,
        }
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    lane: Option<Arc<LaneView>>,
    lane_source: LaneSource,
    target: Option<Arc<Target>>,
    pool: Option<Arc<Pool>>,
    /// Instances already tried (indexes into the pool), in order.
    tried: [u32; 8],
    tries: usize,
    upstream_started: Option<Instant>,
    upstream_addr: Option<SocketAddr>,
    upstream_target: Option<String>,
    /// The production host recovered from a lane hostname, sent as `Host`.
    production_host: Option<String>,
    set_headers: Vec<(HeaderName, String)>,
    remove_headers: Vec<HeaderName>,
    add_response_headers: Vec<(HeaderName, String)>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    request_id: Option<HeaderValue>,
    /// Set when laneway answered the request itself.
    local: Option<&'static str>,
}

impl Ctx {
    fn tried(&self, idx: usize) -> bool {
        self.tried[..self.tries.min(self.tried.len())]
            .iter()
            .any(|&t| t as usize == idx)
    }

    fn lane_name(&self) -> &str {
        self.lane.as_ref().map_or("-", |l| &l.name)
    }
}

#[async_trait]
impl ProxyHttp for Laneway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            lane: None,
            lane_source: LaneSource::Default,
            target: None,
            pool: None,
            tried: [0; 8],
            tries: 0,
            upstream_started: None,
            upstream_addr: None,
            upstream_target: None,
            production_host: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            add_response_headers: Vec::new(),
            connect_timeout: self.settings.connect_timeout,
            read_timeout: self.settings.read_timeout,
            write_timeout: self.settings.write_timeout,
            request_id: None,
            local: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.snapshot.load_full();
        let local = self.route(&snap, session, ctx);
        match local {
            None => Ok(false),
            Some(resp) => {
                ctx.local = Some(resp.reason);
                self.metrics
                    .local_responses
                    .with_label_values(&[resp.reason])
                    .inc();
                resp.send(session, ctx, &self.settings).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool chosen"))?;
        let idx = pool.pick(|i| ctx.tried(i)).ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectRefused,
                "every instance of the version failed to connect",
            )
        })?;
        if ctx.tries < ctx.tried.len() {
            ctx.tried[ctx.tries] = idx as u32;
        }
        ctx.tries += 1;
        let upstream = &pool.instances[idx];
        ctx.upstream_addr = Some(upstream.addr);
        ctx.upstream_started = Some(Instant::now());
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(ctx.connect_timeout);
        peer.options.read_timeout = Some(ctx.read_timeout);
        peer.options.write_timeout = Some(ctx.write_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pool) = &ctx.pool {
            pool.connect_errors.inc();
            let untried = ctx.tries < pool.instances.len();
            if untried && ctx.tries <= self.settings.connect_retries {
                debug!(peer = %peer, lane = ctx.lane_name(), "connect failed; trying another instance");
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(target) = ctx.upstream_target.take() {
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten URI", e))?;
            req.set_uri(uri);
        }
        if let Some(host) = &ctx.production_host {
            req.insert_header(HOST, host.as_str())?;
        }
        for name in &ctx.remove_headers {
            req.remove_header(name);
        }
        for (name, value) in ctx.set_headers.drain(..) {
            if value.is_empty() {
                req.remove_header(&name);
            } else {
                req.insert_header(name, value)?;
            }
        }
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            let forwarded = match req.headers.get(&X_FORWARDED_FOR) {
                Some(prev) => format!("{}, {ip}", String::from_utf8_lossy(prev.as_bytes())),
                None => ip,
            };
            req.insert_header(X_FORWARDED_FOR.clone(), forwarded)?;
        }
        req.insert_header(X_FORWARDED_PROTO.clone(), "http")?;
        let id = match req.headers.get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.insert_header(X_REQUEST_ID.clone(), id.clone())?;
                id
            }
        };
        ctx.request_id = Some(id);
        if let Some(lane) = &ctx.lane {
            req.insert_header(self.settings.lanes.header.clone(), &*lane.name)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.settings.response_headers {
            if let Some(lane) = &ctx.lane {
                resp.insert_header(self.settings.lanes.header.clone(), &*lane.name)?;
            }
            if let Some(t) = &ctx.target {
                resp.insert_header(X_LANEWAY_VERSION.clone(), &*t.version)?;
            }
        }
        for (name, value) in ctx.add_response_headers.drain(..) {
            resp.append_header(name, value)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                pingora_error::ErrorSource::Upstream => 502,
                pingora_error::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ if ctx.pool.is_some() && ctx.tries > 0 => 502,
                _ => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let body = match &ctx.target {
                Some(t) => format!(
                    "laneway: lane \"{}\": service \"{}\" version \"{}\": upstream {} failed: {}\n",
                    ctx.lane_name(),
                    t.service,
                    t.version,
                    ctx.upstream_addr
                        .map_or_else(|| "-".to_string(), |a| a.to_string()),
                    e.etype().as_str()
                ),
                None => format!("laneway: {}\n", e.etype().as_str()),
            };
            let resp = LocalResponse::text(code, "upstream_error", body);
            if let Err(err) = resp.send(session, ctx, &self.settings).await {
                debug!(error = %err, "cannot send error response downstream");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if let Some(lane) = &ctx.lane {
            lane.requests.inc(status);
        }
        if let (Some(pool), Some(up)) = (&ctx.pool, ctx.upstream_started) {
            pool.requests.inc(status);
            pool.duration.observe(up.elapsed().as_secs_f64());
        }
        let req = session.req_header();
        info!(
            target: ACCESS_LOG_TARGET,
            method = %req.method,
            host = req.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("-"),
            uri = %req.uri,
            lane = ctx.lane_name(),
            lane_source = ctx.lane_source.as_str(),
            service = ctx.target.as_ref().map_or("-", |t| &*t.service),
            version = ctx.target.as_ref().map_or("-", |t| &*t.version),
            upstream = %ctx.upstream_addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            local = ctx.local.unwrap_or("-"),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
        );
    }
}

impl Laneway {
    /// Resolves lane, rule and target for the request. Returns the response
    /// to send when laneway answers itself; otherwise `ctx` is ready for
    /// `upstream_peer`.
    fn route(
        &self,
        snap: &Arc<Snapshot>,
        session: &Session,
        ctx: &mut Ctx,
    ) -> Option<LocalResponse> {
        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let resolved = lanes::resolve(snap, &self.settings.lanes, &req.headers, host);
        let lane = resolved.lane.clone();
        ctx.lane_source = resolved.source;
        if resolved.host_recovered {
            ctx.production_host = Some(resolved.host.to_string());
        }
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let info = RequestInfo {
            host: resolved.host,
            target,
            scheme: "http",
            lane: &lane.name,
            headers: &req.headers,
        };
        let decision = snap.rules.route(&info);
        let outcome = match decision {
            Decision::Proxy {
                location,
                service,
                upstream_target,
                set_headers,
                add_response_headers,
                ..
            } => {
                ctx.upstream_target = upstream_target;
                ctx.set_headers = set_headers;
                ctx.add_response_headers = add_response_headers;
                if !location.remove_headers.is_empty() {
                    ctx.remove_headers = location.remove_headers.clone();
                }
                if let Some(t) = location.connect_timeout {
                    ctx.connect_timeout = t;
                }
                if let Some(t) = location.read_timeout {
                    ctx.read_timeout = t;
                }
                if let Some(t) = location.write_timeout {
                    ctx.write_timeout = t;
                }
                match snap.target(&lane, service) {
                    None => Some(LocalResponse::text(
                        503,
                        "no_instance",
                        format!(
                            "laneway: lane \"{}\": service \"{service}\" has no registered instance\n",
                            lane.name
                        ),
                    )),
                    Some(t) => {
                        ctx.target = Some(t.clone());
                        match &t.pool {
                            Ok(pool) => {
                                ctx.pool = Some(pool.clone());
                                None
                            }
                            Err(msg) => Some(LocalResponse::text(
                                503,
                                if lane.strict { "strict" } else { "no_instance" },
                                format!("laneway: {msg}\n"),
                            )),
                        }
                    }
                }
            }
            Decision::Return {
                status,
                body,
                headers,
                ..
            } => Some(LocalResponse {
                status,
                reason: "return",
                body: Bytes::from(body),
                headers,
            }),
            Decision::Redirect { status, to, .. } => Some(LocalResponse {
                status,
                reason: "redirect",
                body: Bytes::new(),
                headers: vec![(http::header::LOCATION, to)],
            }),
            Decision::NotFound { host, path } => Some(LocalResponse::text(
                404,
                "not_found",
                format!("laneway: no route for host \"{host}\" and path \"{path}\"\n"),
            )),
            Decision::BadRequest(why) => Some(LocalResponse::text(
                400,
                "bad_request",
                format!("laneway: bad request: {why}\n"),
            )),
        };
        ctx.lane = Some(lane);
        outcome
    }
}

fn new_request_id() -> HeaderValue {
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}
