//! The data plane on Pingora's `ProxyHttp` framework (`[proxy] engine =
//! "pingora"`). Request path: lanes, rules and targets come from
//! [`super::plan::decide`]; this module applies them through Pingora's
//! filters, with a retry on another instance when connecting fails, a
//! resend of an idempotent request whose upstream closed or reset before
//! answering (up to the location's `retries`), and every attempt's outcome
//! recorded on the instance for passive ejection.
//!
//! `proxy_intercept_errors`: when the plan hands an upstream status back to
//! the rules, `upstream_response_filter` (which runs before anything is
//! written downstream) decides the request again with that status; a new
//! plan is proxied through Pingora's retry loop (the request body comes
//! from its retry buffer), a local answer is sent by `fail_to_proxy`. A
//! body too large for the retry buffer cannot be sent twice, so such a
//! response is passed on as it is.
//!
//! This engine also serves HTTP/2 downstream (TLS with ALPN `h2`, and h2c;
//! see [`super::front`]), and every request to a service reached with TLS
//! or HTTP/2 (`[services.<name>]`, [`super::services`]), whichever engine
//! accepted the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::debug;

use super::exchange::{self, UpstreamFailure};
use super::lane_pages;
use super::plan::{self, LocalResponse, Plan};
use super::upstream_fields;
use super::{ProxySettings, X_LANEWAY_VERSION};
use crate::routing::lanes::LaneSource;
use crate::routing::rewrite::ResponseRewrite;
use crate::routing::snapshot::{LaneView, Snapshot, Target};
use crate::telemetry::access::{self, AccessRecord};
use crate::telemetry::Metrics;

/// The Pingora engine: laneway's proxy service on Pingora's `ProxyHttp` framework
pub struct PingoraProxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: ProxySettings,
    metrics: Arc<Metrics>,
}

impl PingoraProxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
    ) -> PingoraProxy {
        PingoraProxy {
            snapshot,
            settings,
            metrics,
        }
    }
}

/// The error that ends an upstream exchange whose status goes back to the
/// rules (`proxy_intercept_errors`).
const INTERCEPTED: ErrorType = ErrorType::Custom("upstream status handed back to the rules");

/// Per-request state.
pub struct Ctx {
    started: Instant,
    /// The snapshot the request was decided on (decided again on it after
    /// an intercepted upstream status).
    snap: Option<Arc<Snapshot>>,
    /// The nginx port of the listener.
    port: u16,
    /// Upstream statuses handed back to the rules so far.
    statuses: Vec<u16>,
    /// The local answer the rules gave after an intercepted status.
    after_intercept: Option<LocalResponse>,
    /// The status the last upstream answered (passive health counts it).
    upstream_status: u16,
    lane: Option<Arc<LaneView>>,
    lane_source: LaneSource,
    target: Option<Arc<Target>>,
    plan: Option<Plan>,
    /// Instances already tried (indexes into the pool), in order.
    tried: [u32; 8],
    tries: usize,
    upstream_started: Option<Instant>,
    upstream_addr: Option<SocketAddr>,
    /// Set when laneway answered the request itself.
    local: Option<&'static str>,
    /// Resends left after the upstream closed or reset before answering.
    read_retries: usize,
    /// The connection is TLS-terminated: the scheme is `https`.
    https: bool,
    /// Request body bytes received so far (against `[proxy] max_body_size`).
    body_bytes: u64,
    /// Connect failures so far (against `[proxy] connect_retries`).
    connect_failures: usize,
    /// Counts the request in flight (the drain waits for it).
    _in_flight: Option<crate::health::InFlightOwned>,
    /// A lane the request named that does not exist.
    unknown: Option<plan::UnknownLane>,
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

    /// The health state of the instance tried last.
    fn last_state(&self) -> Option<&crate::upstream_health::UpstreamState> {
        let plan = self.plan.as_ref()?;
        let last = self.tried.get(self.tries.checked_sub(1)?)?;
        plan.pool.instances.get(*last as usize).map(|u| &*u.state)
    }
}

#[async_trait]
impl ProxyHttp for PingoraProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snap: None,
            port: 0,
            statuses: Vec::new(),
            after_intercept: None,
            upstream_status: 0,
            lane: None,
            lane_source: LaneSource::Default,
            target: None,
            plan: None,
            tried: [0; 8],
            tries: 0,
            upstream_started: None,
            upstream_addr: None,
            local: None,
            read_retries: 0,
            https: false,
            body_bytes: 0,
            connect_failures: 0,
            _in_flight: None,
            unknown: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx._in_flight = Some(crate::health::InFlightOwned::new(&self.settings.health));
        if let Err(r) = check_head(session) {
            // the framing rules the h1 engine applies, so that both answer
            // the same status
            ctx.local = Some("bad_request");
            self.metrics.local_response("bad_request").inc();
            debug!(status = r.status(), problem = %r, "request refused");
            let resp = LocalResponse::text(r.status(), "bad_request", format!("laneway: {r}\n"));
            session.set_keepalive(None);
            send_local(resp, session, ctx, &self.settings).await?;
            return Ok(true);
        }
        let snap = self.snapshot.load_full();
        let req = session.req_header();
        let (host, target) = host_and_target(req);
        if target == self.settings.health_path {
            let resp = health_response(&self.settings);
            send_local(resp, session, ctx, &self.settings).await?;
            ctx.local = Some("health");
            return Ok(true);
        }
        if lane_pages::is_switch(target) {
            let resp = lane_pages::switch(
                &snap,
                &self.settings,
                req.method.as_str(),
                target,
                &req.headers,
            );
            ctx.local = Some(resp.reason);
            self.metrics.local_response(resp.reason).inc();
            send_local(resp, session, ctx, &self.settings).await?;
            return Ok(true);
        }
        let dst = session.server_addr().and_then(|a| a.as_inet()).copied();
        ctx.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.port = super::connect::nginx_port(
            &self.settings.listen_ports,
            dst,
            session.digest().and_then(|d| d.socket_digest.as_deref()),
        );
        let decided = plan::decide(
            &snap,
            &self.settings,
            &plan::Incoming {
                host,
                target,
                scheme: if ctx.https { "https" } else { "http" },
                headers: &req.headers,
                dst,
                port: ctx.port,
                upstream_statuses: &[],
            },
        );
        if let Some(u) = &decided.unknown {
            self.metrics.unknown_lane(u.source.as_str()).inc();
        }
        ctx.unknown = decided.unknown;
        ctx.snap = Some(snap.clone());
        ctx.lane = Some(decided.lane);
        ctx.lane_source = decided.lane_source;
        ctx.target = decided.target;
        let announced = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(resp), Ok(_)) = (
            exchange::announced_too_large(&self.settings, announced),
            &decided.action,
        ) {
            ctx.local = Some(resp.reason);
            self.metrics.local_response(resp.reason).inc();
            session.set_keepalive(None);
            send_local(resp, session, ctx, &self.settings).await?;
            return Ok(true);
        }
        let expects_continue = req.version == http::Version::HTTP_11
            && req
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        match decided.action {
            Ok(plan) => {
                if expects_continue && !session.is_body_empty() {
                    // As the h1 engine (and nginx) does: laneway answers 100
                    // Continue itself and never forwards Expect.
                    session.write_continue_response().await?;
                }
                ctx.read_retries = plan.read_retries;
                ctx.plan = Some(plan);
                Ok(false)
            }
            Err(resp) => {
                if expects_continue && !session.is_body_empty() {
                    // nothing will read the body: don't invite it
                    session.set_keepalive(None);
                }
                ctx.local = Some(resp.reason);
                self.metrics.local_response(resp.reason).inc();
                send_local(resp, session, ctx, &self.settings).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(max), Some(b)) = (self.settings.max_body_size, body.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > max {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let plan = ctx
            .plan
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no plan"))?;
        // a resend goes to another instance when there is one
        let resend = || (ctx.tries > 0).then(|| plan.pool.pick(|_| false)).flatten();
        let idx = plan
            .pool
            .pick(|i| ctx.tried(i))
            .or_else(resend)
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectRefused,
                    "every instance of the version failed to connect",
                )
            })?;
        let upstream = &plan.pool.instances[idx];
        let proto = ctx
            .target
            .as_ref()
            .filter(|_| !self.settings.services.is_empty())
            .and_then(|t| self.settings.services.get(&*t.service));
        let mut peer = match proto {
            None => HttpPeer::new(upstream.addr, false, String::new()),
            Some(proto) => {
                let req = session.req_header();
                let host = plan.production_host.as_deref().unwrap_or_else(|| {
                    req.headers
                        .get(HOST)
                        .and_then(|h| h.to_str().ok())
                        .or_else(|| req.uri.host())
                        .unwrap_or("")
                });
                proto.peer(upstream.addr, host)
            }
        };
        peer.options.connection_timeout = Some(plan.connect_timeout);
        peer.options.read_timeout = Some(plan.read_timeout);
        peer.options.write_timeout = Some(plan.write_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        ctx.upstream_addr = Some(upstream.addr);
        if ctx.tries < ctx.tried.len() {
            ctx.tried[ctx.tries] = idx as u32;
        }
        ctx.tries += 1;
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(state) = ctx.last_state() {
            state.record_failure();
        }
        ctx.connect_failures += 1;
        if let Some(plan) = &ctx.plan {
            plan.pool.metrics().connect_errors.inc();
            if exchange::retry_connect(
                &self.settings,
                ctx.connect_failures,
                ctx.tries,
                plan.pool.instances.len(),
            ) {
                debug!(peer = %peer, lane = ctx.lane_name(), "connect failed; trying another instance");
                self.metrics.retry(0).inc();
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.etype() == &INTERCEPTED {
            // decided again: retried when the rules gave a new plan
            return e;
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let closed_early = matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        ) && e.esource() == &pingora_error::ErrorSource::Upstream;
        let body_whole = !session.as_ref().retry_buffer_truncated();
        if closed_early && client_reused && body_whole && session.response_written().is_none() {
            // A pooled connection the upstream closed while it was idle: sent
            // again on a fresh one, whatever the method, as the h1 engine
            // does; not the instance's fault.
            debug!(peer = %peer, "pooled upstream connection was closed; sending again");
            e.set_retry(true);
            return e;
        }
        if closed_early {
            if let Some(state) = ctx.last_state() {
                state.record_failure();
            }
        }
        let whole = session.req_header().method.is_idempotent() && body_whole;
        if !whole {
            e.set_retry(false);
        } else if closed_early && ctx.read_retries > 0 && session.response_written().is_none() {
            ctx.read_retries -= 1;
            self.metrics.retry(1).inc();
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(plan) = ctx.plan.as_mut() else {
            return Ok(());
        };
        // An HTTP/2 request's authority is in its URI, which a rewrite
        // replaces: it goes up as Host when there is none.
        let authority = req.uri.authority().map(|a| a.as_str().to_string());
        // (not taken from the plan: a resend runs this filter again)
        if let Some(target) = &plan.upstream_target {
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten URI", e))?;
            req.set_uri(uri);
        } else if !session.is_http2()
            && req.method != http::Method::CONNECT
            && !matches!(req.raw_path().first(), Some(b'/' | b'*') | None)
        {
            // An HTTP/1 absolute-form target: Pingora keeps it as received
            // for the wire and its Uri holds the path and query; the
            // upstream gets those in origin-form, the authority being the
            // Host, as from the h1 engine.
            let uri = req.uri.clone();
            req.set_uri(uri);
        }
        if plan.as_get && req.method != http::Method::HEAD {
            // an error page redirected the request: nginx sends it as GET
            req.set_method(http::Method::GET);
        }
        // The fields, as the h1 engine sends them (proxy::upstream_fields).
        let incoming = session.req_header();
        let upgrade = upstream_fields::is_websocket_upgrade(
            incoming.version == http::Version::HTTP_11,
            incoming.method.as_str().as_bytes(),
            incoming
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        let expect_continue = incoming
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let received: Vec<(http::HeaderName, http::HeaderValue)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (name, _) in &received {
            req.remove_header(name);
        }
        let edits = upstream_fields::Edits {
            settings: &self.settings,
            plan,
            lane: ctx.lane.as_ref().map_or("-", |l| &l.name),
            client_ip: client_ip.as_bytes(),
            https: ctx.https,
            upgrade,
            expect_continue,
            authority: authority.as_deref().map(str::as_bytes),
            http2_upstream: ctx
                .target
                .as_ref()
                .and_then(|t| self.settings.services.get(&*t.service))
                .is_some_and(|p| p.h2),
        };
        let mut sink = HeaderSink { req, error: None };
        edits.write(
            received
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            &mut sink,
        );
        match sink.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = status;
        let intercepts = ctx.plan.as_ref().is_some_and(|p| p.intercepts(status));
        if !intercepts || session.as_ref().retry_buffer_truncated() {
            return Ok(());
        }
        // the dropped answer counts for its instance and pool
        if let Some(state) = ctx.last_state() {
            state.record_status(status);
        }
        if let (Some(plan), Some(up)) = (&ctx.plan, ctx.upstream_started) {
            plan.pool.metrics().requests.inc(status);
            plan.pool
                .metrics()
                .duration
                .observe(up.elapsed().as_secs_f64());
        }
        debug!(
            status,
            lane = ctx.lane_name(),
            "upstream status handed back to the rules"
        );
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        ctx.statuses.push(status);
        let req = session.req_header();
        let (host, target) = host_and_target(req);
        let dst = session.server_addr().and_then(|a| a.as_inet()).copied();
        let decided = plan::decide(
            &snap,
            &self.settings,
            &plan::Incoming {
                host,
                target,
                scheme: if ctx.https { "https" } else { "http" },
                headers: &req.headers,
                dst,
                port: ctx.port,
                upstream_statuses: &ctx.statuses,
            },
        );
        ctx.target = decided.target;
        ctx.tries = 0;
        ctx.upstream_started = None;
        ctx.upstream_addr = None;
        let mut e = Error::explain(INTERCEPTED, format!("upstream answered {status}"));
        match decided.action {
            Ok(plan) => {
                ctx.read_retries = plan.read_retries;
                ctx.plan = Some(plan);
                e.set_retry(true);
            }
            Err(resp) => {
                ctx.plan = None;
                ctx.after_intercept = Some(resp);
                e.set_retry(false);
            }
        }
        Err(e)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.req_header().version == http::Version::HTTP_10
            && !resp.headers.contains_key(CONTENT_LENGTH)
            && resp.status.as_u16() != 101
        {
            // HTTP/1.0 knows no chunked coding (RFC 9112 §6.1): a body of
            // unknown length ends with the connection, as the h1 engine
            // sends it.
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        if let Some(code) = ctx.plan.as_ref().and_then(|p| p.status) {
            // an error page's status replaces the upstream's
            if code != resp.status.as_u16() && resp.status.as_u16() != 101 {
                resp.set_status(code)?;
            }
        }
        if self.settings.response_headers {
            if let Some(lane) = &ctx.lane {
                resp.insert_header(self.settings.lanes.header.clone(), &*lane.name)?;
            }
            if let Some(t) = &ctx.target {
                resp.insert_header(X_LANEWAY_VERSION.clone(), &*t.version)?;
            }
        }
        unknown_headers(resp, ctx, &self.settings)?;
        if let Some(rw) = ctx.plan.as_ref().and_then(|p| p.rewrite.as_deref()) {
            // kept in the lane, or nginx proxy_redirect / proxy_cookie_domain
            rewrite_response(rw, resp)?;
        }
        if let Some(plan) = ctx.plan.as_mut() {
            for (name, value) in plan.add_response_headers.drain(..) {
                resp.append_header(name, value)?;
            }
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        e.etype() == &INTERCEPTED
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        e: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        e.etype() == &INTERCEPTED
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(resp) = ctx.after_intercept.take() {
            // the rules answered the intercepted status themselves
            ctx.local = Some(resp.reason);
            self.metrics.local_response(resp.reason).inc();
            let status = resp.status;
            if let Err(err) = send_local(resp, session, ctx, &self.settings).await {
                debug!(error = %err, "cannot send the error page downstream");
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: session.is_body_done(),
            };
        }
        let failure = failure_of(e, ctx);
        let code = match (failure, e.etype()) {
            (Some(f), _) => f.status(),
            (None, ErrorType::HTTPStatus(code)) => *code,
            (None, _) if e.esource() == &pingora_error::ErrorSource::Downstream => 400,
            (None, _) if ctx.plan.is_some() && ctx.tries > 0 => 502,
            (None, _) => 500,
        };
        if code > 0 && session.response_written().is_none() {
            let resp = match (failure, refused_body(e)) {
                // answered as the h1 engine answers it
                (Some(_), Some(c)) => Some(LocalResponse::text(
                    c.status(),
                    match c {
                        super::http1::ChunkError::TooLarge(_) => "body_too_large",
                        super::http1::ChunkError::Malformed(_) => "bad_request",
                    },
                    format!("laneway: {c}\n"),
                )),
                (Some(f), None) => f.response(
                    &self.settings,
                    ctx.lane_name(),
                    ctx.target.as_deref(),
                    ctx.upstream_addr,
                ),
                (None, _) => Some(LocalResponse::text(
                    code,
                    if code == 400 {
                        "bad_request"
                    } else {
                        "upstream_error"
                    },
                    upstream_error_body(
                        ctx.lane_name(),
                        ctx.target.as_deref(),
                        ctx.upstream_addr,
                        e.etype().as_str(),
                    ),
                )),
            };
            if let Some(resp) = resp {
                ctx.local = Some(resp.reason);
                self.metrics.local_response(resp.reason).inc();
                if let Err(err) = send_local(resp, session, ctx, &self.settings).await {
                    debug!(error = %err, "cannot send the error response downstream");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.local == Some("health") {
            // LVS health checks are neither logged nor counted, as on the
            // h1 engine
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let upstream_elapsed = ctx.upstream_started.map(|u| u.elapsed());
        // a request that failed before a lane was chosen counts for the
        // baseline
        let baseline;
        let lane = match &ctx.lane {
            Some(lane) => lane,
            None => {
                baseline = self.snapshot.load().baseline().clone();
                &baseline
            }
        };
        lane.requests.inc(status);
        lane.duration.observe(elapsed.as_secs_f64());
        if status != 0 && ctx.upstream_started.is_some() && ctx.local.is_none() {
            if let Some(state) = ctx.last_state() {
                state.record_status(if ctx.upstream_status != 0 {
                    ctx.upstream_status
                } else {
                    status
                });
            }
        }
        if let (Some(plan), Some(up)) = (&ctx.plan, upstream_elapsed) {
            plan.pool.metrics().requests.inc(status);
            plan.pool.metrics().duration.observe(up.as_secs_f64());
        }
        // An error before any upstream head arrived was answered by
        // `fail_to_proxy` itself.
        let local = ctx.local.or_else(|| {
            (e.is_some() && status != 0 && ctx.upstream_status == 0).then_some("upstream_error")
        });
        let req = session.req_header();
        let (host, target) = host_and_target(req);
        // the target as the client sent it: HTTP/2 sends the authority
        // apart (logged as `host`); an HTTP/1 absolute-form target is kept
        let absolute;
        let uri = if req.version != http::Version::HTTP_2 && req.uri.authority().is_some() {
            absolute = req.uri.to_string();
            &absolute
        } else {
            target
        };
        access::log(&AccessRecord {
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.as_str(),
            host: (!host.is_empty()).then_some(host),
            uri,
            lane: &lane.name,
            lane_source: ctx.lane_source.as_str(),
            lane_unknown: ctx.unknown.as_ref().map(|u| &*u.name),
            service: ctx.target.as_ref().map(|t| &*t.service),
            version: ctx.target.as_ref().map(|t| &*t.version),
            upstream: ctx.upstream_addr,
            tries: u32::try_from(ctx.tries).unwrap_or(u32::MAX),
            local,
            status,
            duration: elapsed,
            upstream_duration: upstream_elapsed,
            error: e.map(|e| e.etype().as_str()),
        });
    }
}

/// Pingora's upstream request header as a [`upstream_fields::FieldSink`].
struct HeaderSink<'a> {
    req: &'a mut RequestHeader,
    error: Option<Box<Error>>,
}

impl upstream_fields::FieldSink for HeaderSink<'_> {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        let field = http::HeaderName::from_bytes(name)
            .map_err(|e| Error::because(ErrorType::InternalError, "upstream field name", e))
            .and_then(|n| {
                http::HeaderValue::from_bytes(value)
                    .map(|v| (n, v))
                    .map_err(|e| {
                        Error::because(ErrorType::InternalError, "upstream field value", e)
                    })
            })
            .and_then(|(n, v)| self.req.append_header(n, v).map(|_| ()));
        if let (Err(e), None) = (field, &self.error) {
            self.error = Some(e);
        }
    }

    fn field_with(&mut self, name: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        let mut value = Vec::with_capacity(64);
        write(&mut value);
        self.field(name, &value);
    }
}

/// The shared name of a failed exchange ([`UpstreamFailure`]); `None` for
/// errors that are not one (answered with their own status).
fn failure_of(e: &Error, ctx: &Ctx) -> Option<UpstreamFailure> {
    use pingora_error::ErrorSource;
    let upstream = e.esource() == &ErrorSource::Upstream;
    let answered = ctx.upstream_status != 0;
    if let Some(refused) = refused_body(e) {
        return Some(match refused {
            super::http1::ChunkError::TooLarge(_) => UpstreamFailure::BodyTooLarge,
            super::http1::ChunkError::Malformed(_) => UpstreamFailure::MalformedRequestBody,
        });
    }
    Some(match e.etype() {
        ErrorType::HTTPStatus(413) => UpstreamFailure::BodyTooLarge,
        ErrorType::ConnectTimedout => UpstreamFailure::ConnectTimedOut,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamFailure::TimedOut,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::ConnectProxyFailure => {
            if ctx.tries > 1 {
                UpstreamFailure::NoInstanceConnected
            } else {
                UpstreamFailure::ConnectFailed
            }
        }
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            if e.esource() == &ErrorSource::Downstream =>
        {
            UpstreamFailure::ClientGone
        }
        ErrorType::ConnectionClosed if upstream && !answered => UpstreamFailure::ClosedBeforeAnswer,
        ErrorType::ReadError if upstream && !answered => UpstreamFailure::ResetBeforeAnswer,
        ErrorType::ReadError | ErrorType::ConnectionClosed if upstream => {
            UpstreamFailure::ReadFailed
        }
        ErrorType::WriteError if upstream => UpstreamFailure::SendFailed,
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error if upstream => {
            UpstreamFailure::MalformedResponse
        }
        _ => return None,
    })
}

/// The refusal of a chunked request body that `e` carries: the client
/// stream's guard ([`super::pingora_conn`]) fails Pingora's read with it.
fn refused_body(e: &Error) -> Option<super::http1::ChunkError> {
    let root = e.root_cause();
    root.downcast_ref::<std::io::Error>()
        .and_then(super::pingora_conn::chunk_error)
        .or_else(|| root.downcast_ref::<super::http1::ChunkError>().copied())
}

/// Checks an HTTP/1 request head against laneway's framing rules
/// ([`super::http1`]) on the raw head Pingora read. Pingora's server
/// refuses several cases itself (with 400); this catches the rest (a
/// missing Host, both Content-Length and Transfer-Encoding, codings other
/// than `chunked`, the limits, ...). An HTTP/1.0 absolute-form request
/// without Host gets the target's authority as its Host, as on the h1
/// engine, so that routing and the upstream see it.
fn check_head(session: &mut Session) -> std::result::Result<(), super::http1::Reject> {
    let Some(h1) = session.as_downstream().as_http1() else {
        return Ok(());
    };
    let raw = h1.get_headers_raw_bytes();
    let head = super::http1::parse_request_head(&raw)?;
    if let (false, Some(authority)) = (head.has_host_field, head.host) {
        let added = http::HeaderValue::from_bytes(authority.of(&raw))
            .ok()
            .and_then(|v| session.req_header_mut().insert_header(HOST, v).ok());
        if added.is_none() {
            return Err(super::http1::Reject::new(
                400,
                "invalid authority in the request target",
            ));
        }
    }
    Ok(())
}

/// The request's host (the Host header, else the URI's authority; `""`
/// without either) and its target (`/path?query`).
fn host_and_target(req: &RequestHeader) -> (&str, &str) {
    let host = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    (host, req.uri.path_and_query().map_or("/", |pq| pq.as_str()))
}

/// `X-Laneway-Lane-Unknown` (and the lane served, when lane headers are
/// off) for a request that named a lane that does not exist.
fn unknown_headers(head: &mut ResponseHeader, ctx: &Ctx, settings: &ProxySettings) -> Result<()> {
    let Some(u) = &ctx.unknown else {
        return Ok(());
    };
    if !settings.response_headers {
        head.insert_header(settings.lanes.header.clone(), ctx.lane_name())?;
    }
    head.insert_header(lane_pages::X_LANEWAY_LANE_UNKNOWN.clone(), &*u.name)
}

/// Applies `rw` to the upstream's `Location`, `Content-Location`, `Refresh`
/// and `Set-Cookie` fields.
fn rewrite_response(rw: &ResponseRewrite, resp: &mut ResponseHeader) -> Result<()> {
    use http::header::{CONTENT_LOCATION, LOCATION, REFRESH, SET_COOKIE};
    for name in [LOCATION, CONTENT_LOCATION, REFRESH, SET_COOKIE] {
        let mut changed = false;
        let values: Vec<http::HeaderValue> = resp
            .headers
            .get_all(&name)
            .iter()
            .map(
                |v| match rw.header(name.as_str().as_bytes(), v.as_bytes()) {
                    Some(new) => {
                        changed = true;
                        http::HeaderValue::from_str(&new).unwrap_or_else(|_| v.clone())
                    }
                    None => v.clone(),
                },
            )
            .collect();
        if changed {
            resp.remove_header(&name);
            for v in values {
                resp.append_header(name.clone(), v)?;
            }
        }
    }
    Ok(())
}

pub use super::exchange::{body_too_large, health_response, upstream_error_body};

async fn send_local(
    resp: LocalResponse,
    session: &mut Session,
    ctx: &Ctx,
    settings: &ProxySettings,
) -> Result<()> {
    let mut head = ResponseHeader::build(resp.status, Some(resp.headers.len() + 4))?;
    for (name, value) in resp.headers {
        head.append_header(name, value)?;
    }
    if settings.response_headers {
        if let Some(lane) = &ctx.lane {
            head.insert_header(settings.lanes.header.clone(), &*lane.name)?;
        }
        if let Some(t) = &ctx.target {
            head.insert_header(X_LANEWAY_VERSION.clone(), &*t.version)?;
        }
    }
    unknown_headers(&mut head, ctx, settings)?;
    head.insert_header(CONTENT_LENGTH, resp.body.len())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    let empty = resp.body.is_empty() || head_only;
    session.write_response_header(Box::new(head), empty).await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::clone(&resp.body)), true)
            .await?;
    }
    Ok(())
}
