//! laneway's lean HTTP/1.x proxy loop (`[proxy] engine = "h1"`, the
//! default), a `ServerApp` on pingora-core's server, listeners and graceful
//! shutdown. Request path.
//!
//! Why not Pingora's `ProxyHttp` here: profiled on the 2-core build machine,
//! the framework spent ~19 µs of user CPU per proxied request (header maps
//! built and re-serialised twice, per-request module and cache machinery,
//! allocations), against ~3 µs for nginx. This loop parses heads in place
//! with [`http1`] (strict RFC 9112 framing: what it refuses is refused with
//! its status and the connection closed, before anything goes upstream),
//! writes the upstream head straight from the received bytes plus
//! laneway's edits, streams bodies through unchanged (lengths are counted;
//! chunked bodies are checked by [`http1::ChunkedDecoder`] and only bytes it
//! accepted are forwarded), coalesces head and the first body bytes into
//! one write, and keeps idle upstream connections in a per-worker pool.
//! The routing decision is the same [`plan::decide`] the Pingora engine
//! uses.
//!
//! Time limits on a client: `[proxy] client_keepalive` for the first byte
//! of a request, then `[proxy] header_timeout` from that byte to the end of
//! its head (408 beyond, however slowly the bytes trickle in).
//!
//! The engine also serves HTTPS/1.1 (a TLS stream from [`super::front`],
//! or from a `CONNECT` on a lane entry, [`super::connect`]: the scheme is
//! then `https`), tunnels `Upgrade` (WebSocket) after a 101,
//! and limits request bodies (`[proxy] max_body_size`, 413). A request to a
//! service reached with TLS or HTTP/2 (`[services.<name>]`) is not proxied
//! here: the connection, with the bytes read so far to be read again, is
//! handed to the Pingora engine, whose connectors speak those protocols.

mod head;
mod pool;
mod upstream;
mod wire;

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use self::head::*;
use self::wire::*;
use super::http1::{self, ChunkError, ChunkedDecoder, Framing, Reject, RequestHead};
use super::lane_pages;
use super::pingora_engine::body_too_large;
use super::plan::{self, LocalResponse, Plan};
use super::ProxySettings;
use crate::routing::lanes::LaneSource;
use crate::routing::snapshot::{LaneView, Snapshot, Target};
use crate::telemetry::access::{self, AccessRecord};
use crate::telemetry::Metrics;

/// The body of a 408.
const HEADER_TIMEOUT: &str = "laneway: request head not received within [proxy] header_timeout\n";
const READ_CHUNK: usize = 16 * 1024;
/// Read size while streaming a body: a 64 KiB response moves in one or two
/// reads and writes rather than four or more.
const BODY_CHUNK: usize = 64 * 1024;

/// The lean HTTP/1.x engine.
pub struct H1App {
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: ProxySettings,
    metrics: Arc<Metrics>,
    /// Serves connections whose requests go to TLS or HTTP/2 upstreams.
    handoff: Option<Arc<pingora_proxy::HttpProxy<super::pingora_engine::PingoraProxy>>>,
    /// Answers CONNECT ([`super::connect`]).
    tunnels: Arc<super::connect::Tunnels>,
}

impl H1App {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        tunnels: Arc<super::connect::Tunnels>,
    ) -> H1App {
        H1App {
            snapshot,
            settings,
            metrics,
            handoff: None,
            tunnels,
        }
    }

    /// The Pingora engine that takes over connections whose requests go to
    /// services in `[services.<name>]` (TLS or HTTP/2 upstream).
    pub fn with_handoff(
        mut self,
        pingora: Arc<pingora_proxy::HttpProxy<super::pingora_engine::PingoraProxy>>,
    ) -> H1App {
        self.handoff = Some(pingora);
        self
    }
}

#[async_trait]
impl ServerApp for H1App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let open = ConnGauge::open(&self.metrics.active_connections);
        let https = stream.get_ssl_digest().is_some();
        let port =
            super::connect::nginx_port(&self.settings.listen_ports, local, digest.as_deref());
        let mut conn = Client {
            io: stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            peer,
            peer_ip: peer.map_or_else(
                || Box::from(&b"-"[..]),
                |p| p.ip().to_string().into_bytes().into(),
            ),
            local,
            port,
            https,
            handoff: None,
            tunnel: None,
        };
        let mut scratch = Scratch::default();
        loop {
            match self.one_request(&mut conn, &mut scratch, shutdown).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    debug!(error = %e, "client connection ended");
                    break;
                }
            }
        }
        if let Some(accepted) = conn.tunnel.take() {
            let tunnels = &self.tunnels;
            // CONNECT answered 200: serve the decrypted stream as an HTTPS
            // listener's (HTTP/2 on the Pingora engine).
            let rest = conn.buf.split().freeze();
            let tls = super::connect::terminate(tunnels, conn.io, rest, &accepted).await?;
            drop(open);
            match (tls.selected_alpn_proto(), &self.handoff) {
                (Some(pingora_core::protocols::ALPN::H2), Some(pingora)) => {
                    super::pingora_conn::serve(
                        pingora,
                        tls,
                        shutdown,
                        super::pingora_conn::ConnTimeouts::of(&self.settings),
                        Some(&self.metrics),
                        tunnels,
                    )
                    .await;
                }
                _ => {
                    self.process_new(tls, shutdown).await;
                }
            }
            return None;
        }
        if let (Some(replay), Some(pingora)) = (conn.handoff.take(), &self.handoff) {
            let facts = super::stream::Wrapped::new((), &*conn.io);
            let stream = super::stream::Wrapped::new(conn.io, &facts).with_prefix(replay);
            super::pingora_conn::serve(
                pingora,
                Box::new(stream),
                shutdown,
                super::pingora_conn::ConnTimeouts::of(&self.settings),
                Some(&self.metrics),
                &self.tunnels,
            )
            .await;
        }
        None
    }
}

/// Counts an open client connection until dropped.
struct ConnGauge<'a>(&'a prometheus::IntGauge);

impl ConnGauge<'_> {
    fn open(g: &prometheus::IntGauge) -> ConnGauge<'_> {
        g.inc();
        ConnGauge(g)
    }
}

impl Drop for ConnGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client side of a connection.
struct Client {
    io: Stream,
    buf: BytesMut,
    peer: Option<SocketAddr>,
    /// The client's IP as written in `X-Forwarded-For` (`-` when unknown),
    /// formatted once per connection.
    peer_ip: Box<[u8]>,
    /// The address the client connected to: a VIP or pool port names a lane.
    local: Option<SocketAddr>,
    /// The nginx port of the listener (`[routes.nginx_listen]`).
    port: u16,
    /// TLS-terminated: the request's scheme is `https`.
    https: bool,
    /// Bytes read and not served (a request head and what followed): the
    /// connection goes to the Pingora engine, which reads them again.
    handoff: Option<bytes::Bytes>,
    /// A CONNECT answered 200: TLS is terminated next ([`super::connect`]).
    tunnel: Option<super::connect::Accepted>,
}

/// Buffers reused across the requests of one connection.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    up_buf: BytesMut,
}

/// A request head and what [`http1::parse_request_head`] found in it.
struct ReqHead {
    head: bytes::Bytes,
    parsed: RequestHead,
}

impl ReqHead {
    fn method(&self) -> &[u8] {
        self.parsed.method.of(&self.head)
    }

    /// The target in origin-form (`/path?query`; an absolute-form
    /// target's path and query), as routing sees it.
    fn target(&self) -> Cow<'_, str> {
        match self.parsed.origin_form(&self.head) {
            (false, t) => Cow::Borrowed(std::str::from_utf8(t).unwrap_or("/")),
            (true, t) => Cow::Owned(format!("/{}", String::from_utf8_lossy(t))),
        }
    }

    /// The request's host: an absolute-form target's authority, else Host.
    fn host(&self) -> &str {
        self.parsed
            .host
            .and_then(|h| std::str::from_utf8(h.of(&self.head)).ok())
            .unwrap_or("")
    }
}

/// What a request asks of the connection and its body.
struct ReqInfo {
    minor: u8,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
    is_head: bool,
    idempotent: bool,
}

enum Failure {
    /// Nothing sent to the client yet: answer with this status.
    Status(u16, &'static str),
    /// The upstream answered a status the plan hands back to the rules
    /// (`proxy_intercept_errors`); nothing was sent to the client and the
    /// request body, if any, is kept for sending again.
    Intercepted(u16),
    /// The client connection is unusable.
    Abort(io::Error),
}

impl Failure {
    /// A failure named the way both engines name it
    /// ([`crate::proxy::exchange::UpstreamFailure`]).
    fn of(f: crate::proxy::exchange::UpstreamFailure) -> Failure {
        Failure::Status(f.status(), f.what())
    }
}

impl H1App {
    /// Serves one request; `Ok(true)` when the connection can take another.
    async fn one_request(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        shutdown: &ShutdownWatch,
    ) -> io::Result<bool> {
        let head_len = match read_client_head(
            c,
            self.settings.client_keepalive,
            self.settings.header_timeout,
            shutdown,
        )
        .await?
        {
            ClientHead::Head(n) => n,
            ClientHead::Closed => return Ok(false),
            ClientHead::Refused(r) => return self.refuse(c, r, None).await,
            ClientHead::TimedOut => {
                self.metrics.local_response("header_timeout").inc();
                debug!(timeout = ?self.settings.header_timeout, "request head not received in time");
                access::log_refused(&c.buf, c.peer, 408, "header_timeout", Instant::now());
                refuse_and_close(c, 408, HEADER_TIMEOUT).await?;
                return Ok(false);
            }
        };
        let started = Instant::now();
        let _in_flight = self.settings.health.request();
        let head_bytes = c.buf.split_to(head_len).freeze();
        let parsed = match http1::parse_request_head(&head_bytes) {
            Ok(p) => p,
            Err(r) => return self.refuse(c, r, Some(&head_bytes)).await,
        };
        let mut headers = HeaderMap::with_capacity(parsed.fields.len());
        for f in parsed.fields.as_slice() {
            // the parser checked names and values; these cannot fail
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(f.name.of(&head_bytes)),
                HeaderValue::from_maybe_shared(head_bytes.slice(f.value.range())),
            ) else {
                return self
                    .refuse(
                        c,
                        Reject::new(400, "invalid header field"),
                        Some(&head_bytes),
                    )
                    .await;
            };
            headers.append(name, value);
        }
        let head = ReqHead {
            head: head_bytes,
            parsed,
        };
        let mut info = ReqInfo {
            minor: head.parsed.minor,
            framing: head.parsed.framing,
            keep_alive: head.parsed.keep_alive,
            // only a WebSocket upgrade is tunnelled (proxy::upstream_fields)
            upgrade: head.parsed.upgrade
                && crate::proxy::upstream_fields::is_websocket_upgrade(
                    head.parsed.minor >= 1,
                    head.method(),
                    head.parsed.fields.iter(&head.head),
                ),
            expect_continue: head.parsed.expect_continue,
            is_head: head.method() == b"HEAD",
            idempotent: matches!(
                head.method(),
                b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
            ),
        };
        if head.method() == b"CONNECT" {
            return self.connect(c, &head).await;
        }
        let target = head.target();
        let host = head.host();
        if let (Some(max), Framing::Length(n)) = (self.settings.max_body_size, info.framing) {
            if n > max {
                self.metrics.local_response("body_too_large").inc();
                refuse_and_close(c, 413, &body_too_large(max)).await?;
                return Ok(false);
            }
        }

        if target == self.settings.health_path {
            let resp = super::pingora_engine::health_response(&self.settings);
            let log = Log {
                req: AccessInfo::of(&head, &headers, c.peer),
                tries: 0,
                started,
                lane: self.snapshot.load().baseline().clone(),
                lane_source: LaneSource::Default,
                target: None,
                upstream: None,
                upstream_started: None,
                status: resp.status,
                upstream_status: 0,
                local: Some("health"),
                unknown: None,
            };
            if info.framing != Framing::None {
                info.keep_alive = false;
            }
            self.write_local(c, s, &resp, &log, &info).await?;
            return Ok(info.keep_alive);
        }
        let snap = self.snapshot.load_full();
        if lane_pages::is_switch(&target) {
            let method = std::str::from_utf8(head.method()).unwrap_or("-");
            let resp = lane_pages::switch(&snap, &self.settings, method, &target, &headers);
            self.metrics.local_response(resp.reason).inc();
            let log = Log {
                req: AccessInfo::of(&head, &headers, c.peer),
                tries: 0,
                started,
                lane: snap.baseline().clone(),
                lane_source: LaneSource::Default,
                target: None,
                upstream: None,
                upstream_started: None,
                status: resp.status,
                upstream_status: 0,
                local: Some(resp.reason),
                unknown: None,
            };
            if info.framing != Framing::None {
                info.keep_alive = false;
            }
            self.write_local(c, s, &resp, &log, &info).await?;
            self.finish(&log);
            return Ok(info.keep_alive);
        }
        let incoming = plan::Incoming {
            host,
            target: &target,
            scheme: if c.https { "https" } else { "http" },
            headers: &headers,
            dst: c.local,
            port: c.port,
            upstream_statuses: &[],
        };
        let decided = plan::decide(&snap, &self.settings, &incoming);
        if let (Some(t), Ok(plan), true) = (
            &decided.target,
            &decided.action,
            !self.settings.services.is_empty() && self.handoff.is_some(),
        ) {
            // A plan that may hand an upstream status to an error page may
            // end at any service, one reached with TLS or HTTP/2 included.
            if self.settings.services.contains_key(&*t.service) || plan.intercept.is_some() {
                // TLS or HTTP/2 upstream: the Pingora engine serves this
                // request and the rest of the connection.
                let mut replay = BytesMut::from(&head.head[..]);
                replay.extend_from_slice(&c.buf);
                c.buf.clear();
                c.handoff = Some(replay.freeze());
                return Ok(false);
            }
        }
        if let Some(u) = &decided.unknown {
            self.metrics.unknown_lane(u.source.as_str()).inc();
        }
        let mut log = Log {
            req: AccessInfo::of(&head, &headers, c.peer),
            tries: 0,
            started,
            lane: decided.lane,
            lane_source: decided.lane_source,
            target: decided.target,
            upstream: None,
            upstream_started: None,
            status: 0,
            upstream_status: 0,
            local: None,
            unknown: decided.unknown,
        };
        // statuses handed back to the rules, and the request body kept to
        // send again (only when the plan may hand a status back)
        let mut statuses: Vec<u16> = Vec::new();
        let mut replay: Option<bytes::Bytes> = None;
        let mut action = decided.action;
        let keep = loop {
            break match action {
                Err(resp) => {
                    log.local = Some(resp.reason);
                    self.metrics.local_response(resp.reason).inc();
                    if replay.is_some() {
                        // an error page after the body went upstream whole
                    } else if info.expect_continue && info.framing != Framing::None {
                        // Nothing will read the body: don't invite it.
                        info.keep_alive = false;
                    } else if info.framing != Framing::None {
                        let mut decoder = ChunkedDecoder::new(self.settings.max_body_size);
                        let mut sink = tokio::io::sink();
                        if let Err(e) = transfer(
                            &mut c.io,
                            &mut c.buf,
                            info.framing,
                            &mut decoder,
                            &mut sink,
                            self.settings.read_timeout,
                            &[],
                        )
                        .await
                        {
                            let Cause::Framing(bad) = e.cause else {
                                self.finish(&log);
                                return Err(e.into());
                            };
                            log.status = bad.status();
                            self.finish(&log);
                            return self.refuse_body(c, bad).await;
                        }
                    }
                    log.status = resp.status;
                    self.write_local(c, s, &resp, &log, &info).await?;
                    info.keep_alive
                }
                Ok(plan) => match self
                    .proxy(c, s, &head, &headers, &info, &plan, &mut log, &mut replay)
                    .await
                {
                    Ok(keep) => keep && info.keep_alive,
                    Err(Failure::Intercepted(status)) => {
                        // the dropped answer still counts for its pool
                        if let (Some(t), Some(up)) = (&log.target, log.upstream_started) {
                            if let Ok(pool) = &t.pool {
                                pool.metrics().requests.inc(status);
                                pool.metrics().duration.observe(up.elapsed().as_secs_f64());
                            }
                        }
                        statuses.push(status);
                        let again = plan::decide(
                            &snap,
                            &self.settings,
                            &plan::Incoming {
                                upstream_statuses: &statuses,
                                ..incoming
                            },
                        );
                        log.target = again.target;
                        log.upstream = None;
                        log.upstream_started = None;
                        action = again.action;
                        continue;
                    }
                    Err(Failure::Status(413, _)) => {
                        let max = self.settings.max_body_size.unwrap_or(0);
                        let resp = LocalResponse::text(413, "body_too_large", body_too_large(max));
                        log.local = Some(resp.reason);
                        log.status = 413;
                        self.metrics.local_response(resp.reason).inc();
                        info.keep_alive = false;
                        self.write_local(c, s, &resp, &log, &info).await?;
                        false
                    }
                    Err(Failure::Status(400, what)) => {
                        // the request body broke the framing rules
                        let resp =
                            LocalResponse::text(400, "bad_request", format!("laneway: {what}\n"));
                        log.local = Some(resp.reason);
                        log.status = 400;
                        self.metrics.local_response(resp.reason).inc();
                        info.keep_alive = false;
                        self.write_local(c, s, &resp, &log, &info).await?;
                        false
                    }
                    Err(Failure::Status(status, what)) => {
                        log.local = Some("upstream_error");
                        log.status = status;
                        self.metrics.local_response("upstream_error").inc();
                        let body = super::pingora_engine::upstream_error_body(
                            &log.lane.name,
                            log.target.as_deref(),
                            log.upstream,
                            what,
                        );
                        let resp = LocalResponse::text(status, "upstream_error", body);
                        self.write_local(c, s, &resp, &log, &info).await?;
                        // The request body may be half read: start afresh.
                        false
                    }
                    Err(Failure::Abort(e)) => {
                        self.finish(&log);
                        return Err(e);
                    }
                },
            };
        };
        self.finish(&log);
        Ok(keep)
    }

    /// Answers a CONNECT ([`super::connect`]); `Ok(false)` either way:
    /// the connection closes, or becomes a TLS tunnel laneway terminates.
    async fn connect(&self, c: &mut Client, head: &ReqHead) -> io::Result<bool> {
        let target = String::from_utf8_lossy(head.parsed.target.of(&head.head)).into_owned();
        c.tunnel = super::connect::answer(
            &self.tunnels,
            &mut c.io,
            &head.head,
            &target,
            c.peer,
            c.local,
            c.https,
        )
        .await;
        Ok(false)
    }

    /// Answers a request refused by the framing rules and ends the
    /// connection: nothing of it goes upstream.
    async fn refuse(&self, c: &mut Client, r: Reject, head: Option<&[u8]>) -> io::Result<bool> {
        self.metrics.local_response("bad_request").inc();
        debug!(status = r.status(), problem = %r, "request refused");
        let raw = head.unwrap_or(&c.buf);
        access::log_refused(raw, c.peer, r.status(), r.what(), Instant::now());
        refuse_and_close(c, r.status(), &format!("laneway: {r}\n")).await?;
        Ok(false)
    }

    /// Answers a request whose chunked body was refused before anything
    /// was sent to the client, and ends the connection.
    async fn refuse_body(&self, c: &mut Client, e: ChunkError) -> io::Result<bool> {
        let reason = match e {
            ChunkError::TooLarge(_) => "body_too_large",
            ChunkError::Malformed(_) => "bad_request",
        };
        self.metrics.local_response(reason).inc();
        debug!(status = e.status(), problem = %e, "request body refused");
        refuse_and_close(c, e.status(), &format!("laneway: {e}\n")).await?;
        Ok(false)
    }

    /// Metrics and the access log of one request.
    fn finish(&self, log: &Log) {
        let elapsed = log.started.elapsed();
        let upstream_elapsed = log.upstream_started.map(|u| u.elapsed());
        log.lane.duration.observe(elapsed.as_secs_f64());
        log.lane.requests.inc(log.status);
        if let (Some(t), Some(up)) = (&log.target, upstream_elapsed) {
            if let Ok(pool) = &t.pool {
                pool.metrics().requests.inc(log.status);
                pool.metrics().duration.observe(up.as_secs_f64());
            }
        }
        let r = &log.req;
        access::log(&AccessRecord {
            client: r.client,
            method: r.method(),
            host: r.host.as_ref().and_then(|h| h.to_str().ok()),
            uri: r.uri(),
            lane: &log.lane.name,
            lane_source: log.lane_source.as_str(),
            lane_unknown: log.unknown.as_ref().map(|u| &*u.name),
            service: log.target.as_ref().map(|t| &*t.service),
            version: log.target.as_ref().map(|t| &*t.version),
            upstream: log.upstream,
            tries: u32::from(log.tries),
            local: log.local,
            status: log.status,
            duration: elapsed,
            upstream_duration: upstream_elapsed,
            error: None,
        });
    }
}

/// What the access log and metrics need of a request.
struct Log {
    req: AccessInfo,
    /// Upstream attempts made (connect and read retries included).
    tries: u8,
    started: Instant,
    lane: Arc<LaneView>,
    lane_source: LaneSource,
    target: Option<Arc<Target>>,
    upstream: Option<SocketAddr>,
    upstream_started: Option<Instant>,
    /// The status sent to the client.
    status: u16,
    /// The status the upstream answered (passive health counts it).
    upstream_status: u16,
    local: Option<&'static str>,
    /// A lane the request named that does not exist.
    unknown: Option<plan::UnknownLane>,
}

/// The request as the access log names it: shared slices of the head, no
/// copy.
struct AccessInfo {
    head: bytes::Bytes,
    method: Range<usize>,
    target: Range<usize>,
    host: Option<HeaderValue>,
    client: Option<SocketAddr>,
}

impl AccessInfo {
    fn of(head: &ReqHead, headers: &HeaderMap, client: Option<SocketAddr>) -> AccessInfo {
        AccessInfo {
            head: head.head.clone(),
            method: head.parsed.method.range(),
            target: head.parsed.target.range(),
            host: headers.get(http::header::HOST).cloned(),
            client,
        }
    }

    fn method(&self) -> &str {
        std::str::from_utf8(&self.head[self.method.clone()]).unwrap_or("-")
    }

    fn uri(&self) -> &str {
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("-")
    }
}
