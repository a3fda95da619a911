//! laneway's lean HTTP/1.x proxy loop (`[proxy] engine = "h1"`, the
//! default), a `ServerApp` on pingora-core's server, listeners and graceful
//! shutdown. Request path.
//!
//! Why not Pingora's `ProxyHttp` here: profiled on the 2-core build machine,
//! the framework spent ~19 µs of user CPU per proxied request (header maps
//! built and re-serialised twice, per-request module and cache machinery,
//! allocations), against ~3 µs for nginx. This loop parses heads in place
//! with `httparse`, writes the upstream head straight from the received
//! bytes plus laneway's edits, streams bodies through unchanged (lengths and
//! chunk boundaries are tracked, not re-encoded), coalesces head and the
//! first body bytes into one write, and keeps idle upstream connections in a
//! per-worker pool. The routing decision is the same [`plan::decide`] the
//! Pingora engine uses.
//!
//! The engine also serves HTTPS/1.1 (a TLS stream from [`super::front`]:
//! the scheme is then `https`), tunnels `Upgrade` (WebSocket) after a 101,
//! and limits request bodies (`[proxy] max_body_size`, 413). A request to a
//! service reached with TLS or HTTP/2 (`[services.<name>]`) is not proxied
//! here: the connection, with the bytes read so far to be read again, is
//! handed to the Pingora engine, whose connectors speak those protocols.

mod body;
mod head;
mod pool;
mod upstream;
mod wire;

use std::io;
use std::mem::MaybeUninit;
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

use self::body::{ChunkTracker, Framing};
use self::head::*;
use self::wire::*;
use super::pingora_engine::body_too_large;
use super::plan::{self, LocalResponse, Plan};
use super::ProxySettings;
use crate::routing::lanes::LaneSource;
use crate::routing::snapshot::{LaneView, Snapshot, Target};
use crate::telemetry::access::{self, AccessRecord};
use crate::telemetry::Metrics;

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
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
    handoff: Option<Arc<pingora_proxy::HttpProxy<super::pingora_engine::Laneway>>>,
}

impl H1App {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
    ) -> H1App {
        H1App {
            snapshot,
            settings,
            metrics,
            handoff: None,
        }
    }

    /// The Pingora engine that takes over connections whose requests go to
    /// services in `[services.<name>]` (TLS or HTTP/2 upstream).
    pub fn with_handoff(
        mut self,
        pingora: Arc<pingora_proxy::HttpProxy<super::pingora_engine::Laneway>>,
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
        let _open = ConnGauge::open(&self.metrics.active_connections);
        let https = stream.get_ssl_digest().is_some();
        let mut conn = Client {
            io: stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            peer,
            peer_ip: peer.map_or_else(
                || Box::from(&b"-"[..]),
                |p| p.ip().to_string().into_bytes().into(),
            ),
            local,
            port: self.settings.listen_ports.port_of(local),
            https,
            handoff: None,
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
        if let (Some(replay), Some(pingora)) = (conn.handoff.take(), &self.handoff) {
            let facts = super::stream::Wrapped::new((), &*conn.io);
            let stream = super::stream::Wrapped::new(conn.io, &facts).with_prefix(replay);
            super::front::serve_pingora(pingora, Box::new(stream), shutdown).await;
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
}

/// Buffers reused across the requests of one connection.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    up_buf: BytesMut,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

/// A parsed request head: offsets into the head bytes.
struct ReqHead {
    head: bytes::Bytes,
    method: Range<usize>,
    target: Range<usize>,
    minor: u8,
}

impl ReqHead {
    fn method(&self) -> &[u8] {
        &self.head[self.method.clone()]
    }
    fn target(&self) -> &str {
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("/")
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

impl H1App {
    /// Serves one request; `Ok(true)` when the connection can take another.
    async fn one_request(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        shutdown: &ShutdownWatch,
    ) -> io::Result<bool> {
        let Some(head_len) = read_client_head(c, self.settings.client_keepalive, shutdown).await?
        else {
            return Ok(false);
        };
        let started = Instant::now();
        let _in_flight = self.settings.health.request();
        let head_bytes = c.buf.split_to(head_len).freeze();
        // Left uninitialised: filling 128 empty headers per request cost
        // more than parsing the head.
        let mut headers_arr = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(&head_bytes, &mut headers_arr);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            write_simple(c, 400, "laneway: malformed request head\n").await?;
            return Ok(false);
        }
        let base = head_bytes.as_ptr() as usize;
        let off = |sl: &[u8]| {
            let start = sl.as_ptr() as usize - base;
            start..start + sl.len()
        };
        let method = off(req.method.unwrap_or("GET").as_bytes());
        let target = off(req.path.unwrap_or("/").as_bytes());
        let minor = req.version.unwrap_or(1);
        s.fields.clear();
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        let mut info = ReqInfo {
            minor,
            framing: Framing::None,
            keep_alive: minor >= 1,
            upgrade: false,
            expect_continue: false,
            is_head: false,
            idempotent: true,
        };
        let mut chunked = false;
        let mut length: Option<u64> = None;
        for h in req.headers.iter() {
            let (nr, vr) = (off(h.name.as_bytes()), off(h.value));
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                write_simple(c, 400, "laneway: invalid header name\n").await?;
                return Ok(false);
            };
            let Ok(value) = HeaderValue::from_maybe_shared(head_bytes.slice(vr.clone())) else {
                write_simple(c, 400, "laneway: invalid header value\n").await?;
                return Ok(false);
            };
            match name.as_str() {
                "content-length" => {
                    let parsed = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match (parsed, length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => {
                            write_simple(c, 400, "laneway: invalid Content-Length\n").await?;
                            return Ok(false);
                        }
                    }
                }
                "transfer-encoding" => {
                    chunked = h
                        .value
                        .split(|&b| b == b',')
                        .next_back()
                        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                    if !chunked {
                        write_simple(c, 501, "laneway: unsupported Transfer-Encoding\n").await?;
                        return Ok(false);
                    }
                }
                "connection" => {
                    for token in h.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            info.keep_alive = false;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                            info.keep_alive = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            info.upgrade = true;
                        }
                    }
                }
                "expect" => info.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue"),
                _ => {}
            }
            headers.append(name, value);
            s.fields.push((nr, vr));
        }
        info.upgrade &= headers.contains_key(http::header::UPGRADE);
        info.framing = if chunked {
            Framing::Chunked
        } else {
            match length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        };
        let head = ReqHead {
            head: head_bytes.clone(),
            method,
            target,
            minor,
        };
        info.is_head = head.method() == b"HEAD";
        info.idempotent = matches!(
            head.method(),
            b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
        );
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if let (Some(max), Framing::Length(n)) = (self.settings.max_body_size, info.framing) {
            if n > max {
                self.metrics.local_response("body_too_large").inc();
                write_simple(c, 413, &body_too_large(max)).await?;
                return Ok(false);
            }
        }

        if head.target() == self.settings.health_path {
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
            };
            if info.framing != Framing::None {
                info.keep_alive = false;
            }
            self.write_local(c, s, &resp, &log, &info).await?;
            return Ok(info.keep_alive);
        }
        let snap = self.snapshot.load_full();
        let incoming = plan::Incoming {
            host,
            target: head.target(),
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
                let mut replay = BytesMut::from(&head_bytes[..]);
                replay.extend_from_slice(&c.buf);
                c.buf.clear();
                c.handoff = Some(replay.freeze());
                return Ok(false);
            }
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
                        let mut tracker = ChunkTracker::default();
                        let mut sink = tokio::io::sink();
                        transfer(
                            &mut c.io,
                            &mut c.buf,
                            info.framing,
                            &mut tracker,
                            &mut sink,
                            self.settings.read_timeout,
                            &[],
                        )
                        .await?;
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
            method: head.method.clone(),
            target: head.target.clone(),
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
