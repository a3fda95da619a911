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

mod body;
mod pool;

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
use tracing::{debug, info};

use self::body::{ChunkTracker, Framing};
use super::plan::{self, LocalResponse, Plan};
use super::ProxySettings;
use crate::routing::lanes::LaneSource;
use crate::routing::snapshot::{LaneView, Snapshot, Target};
use crate::telemetry::{Metrics, ACCESS_LOG_TARGET};

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// The lean HTTP/1.x engine.
pub struct H1App {
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: ProxySettings,
    metrics: Arc<Metrics>,
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
        }
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
        let mut conn = Client {
            io: stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            peer,
            local,
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
        None
    }
}

/// The client side of a connection.
struct Client {
    io: Stream,
    buf: BytesMut,
    peer: Option<SocketAddr>,
    /// The address the client connected to: a VIP or pool port names a lane.
    local: Option<SocketAddr>,
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
        let mut headers_arr = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers_arr);
        let parsed = req.parse(&head_bytes);
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

        if head.target() == self.settings.health_path {
            let resp = super::pingora_engine::health_response(&self.settings);
            let log = Log {
                started,
                lane: self.snapshot.load().baseline().clone(),
                lane_source: LaneSource::Default,
                target: None,
                upstream: None,
                upstream_started: None,
                status: resp.status,
                local: Some("health"),
            };
            if info.framing != Framing::None {
                info.keep_alive = false;
            }
            self.write_local(c, s, &resp, &log, &info).await?;
            return Ok(info.keep_alive);
        }
        let snap = self.snapshot.load_full();
        let decided = plan::decide(
            &snap,
            &self.settings,
            host,
            head.target(),
            "http",
            &headers,
            c.local,
        );
        let mut log = Log {
            started,
            lane: decided.lane,
            lane_source: decided.lane_source,
            target: decided.target,
            upstream: None,
            upstream_started: None,
            status: 0,
            local: None,
        };
        let keep = match decided.action {
            Err(resp) => {
                log.local = Some(resp.reason);
                self.metrics
                    .local_responses
                    .with_label_values(&[resp.reason])
                    .inc();
                if info.expect_continue && info.framing != Framing::None {
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
                .proxy(c, s, &head, &headers, &info, &plan, &mut log)
                .await
            {
                Ok(keep) => keep && info.keep_alive,
                Err(Failure::Status(status, what)) => {
                    log.local = Some("upstream_error");
                    log.status = status;
                    self.metrics
                        .local_responses
                        .with_label_values(&["upstream_error"])
                        .inc();
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
        self.finish(&log);
        Ok(keep)
    }

    /// Sends the request upstream and the response back. `Ok(keep)` says
    /// whether the client connection may carry another request.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        head: &ReqHead,
        headers: &HeaderMap,
        info: &ReqInfo,
        plan: &Plan,
        log: &mut Log,
    ) -> Result<bool, Failure> {
        if info.expect_continue && info.framing != Framing::None {
            // As nginx does: answer 100 Continue here, never forward Expect.
            write_flush(&mut c.io, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(Failure::Abort)?;
        }
        self.build_upstream_head(s, head, headers, info, plan, &log.lane, c.peer);
        // Body bytes already received go out with the head in one write.
        let mut tracker = ChunkTracker::default();
        let buffered = match info.framing {
            Framing::None | Framing::Close => 0,
            Framing::Length(n) => c.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
            Framing::Chunked => tracker
                .feed(&c.buf)
                .map_err(|_| Failure::Status(400, "malformed chunked request body"))?,
        };
        let rest = match info.framing {
            Framing::Length(n) => match n - buffered as u64 {
                0 => Framing::None,
                left => Framing::Length(left),
            },
            Framing::Chunked if !tracker.done() => Framing::Chunked,
            _ => Framing::None,
        };
        s.out.extend_from_slice(&c.buf[..buffered]);
        c.buf.advance(buffered);
        let replayable = rest == Framing::None;

        let pool = &plan.pool;
        let mut tried = [usize::MAX; 8];
        let mut tries = 0usize;
        let (up, head_len) = loop {
            let Some(idx) = pool.pick(|i| tried[..tries.min(8)].contains(&i)) else {
                return Err(Failure::Status(502, "every instance failed to connect"));
            };
            let addr = pool.instances[idx].addr;
            if tries < tried.len() {
                tried[tries] = idx;
            }
            tries += 1;
            log.upstream = Some(addr);
            log.upstream_started = Some(Instant::now());
            match self
                .exchange(c, s, addr, plan, info, rest, &mut tracker, replayable)
                .await
            {
                Ok(done) => break done,
                Err(Exchange::Connect(e)) => {
                    pool.connect_errors.inc();
                    debug!(upstream = %addr, error = %e, "connect failed");
                    if tries > self.settings.connect_retries || tries >= pool.instances.len() {
                        return Err(if e.kind() == io::ErrorKind::TimedOut {
                            Failure::Status(504, "connect timed out")
                        } else {
                            Failure::Status(502, "connect failed")
                        });
                    }
                }
                Err(Exchange::Failed(f)) => return Err(f),
            }
        };
        let addr = log.upstream.unwrap_or_else(|| pool.instances[0].addr);
        self.respond(c, s, up, addr, head_len, info, plan, log)
            .await
    }

    /// Writes the request on a pooled or new connection to `addr` and reads
    /// the response head into `s.up_buf`; returns the connection and the
    /// head length.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        addr: SocketAddr,
        plan: &Plan,
        info: &ReqInfo,
        rest: Framing,
        tracker: &mut ChunkTracker,
        replayable: bool,
    ) -> Result<(TcpStream, usize), Exchange> {
        let mut pooled = pool::take(addr);
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(up) => up,
                None => connect(addr, plan.connect_timeout)
                    .await
                    .map_err(Exchange::Connect)?,
            };
            // A pooled connection the upstream already closed fails here;
            // that is retried once on a fresh connection when the request
            // can be sent again whole.
            let retry_stale = reused && replayable && info.idempotent;
            if let Err(e) = timed(plan.write_timeout, up.write_all(&s.out)).await {
                if retry_stale {
                    continue;
                }
                return Err(Exchange::Failed(io_failure(
                    &e,
                    "sending the request failed",
                )));
            }
            if rest != Framing::None {
                if let Err(e) = transfer(
                    &mut c.io,
                    &mut c.buf,
                    rest,
                    tracker,
                    &mut up,
                    plan.read_timeout,
                    &[],
                )
                .await
                {
                    debug!(error = %e, "request body transfer failed");
                    return Err(Exchange::Failed(Failure::Status(
                        502,
                        "sending the request body failed",
                    )));
                }
            }
            s.up_buf.clear();
            match read_head(&mut up, &mut s.up_buf, plan.read_timeout).await {
                Ok(Some(n)) => return Ok((up, n)),
                Ok(None) if retry_stale => continue,
                Err(e)
                    if retry_stale
                        && s.up_buf.is_empty()
                        && e.kind() != io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Ok(None) => {
                    return Err(Exchange::Failed(Failure::Status(
                        502,
                        "upstream closed the connection",
                    )))
                }
                Err(e) => {
                    return Err(Exchange::Failed(io_failure(
                        &e,
                        "reading the response failed",
                    )))
                }
            }
        }
    }

    /// Forwards the response whose head is in `s.up_buf[..head_len]`.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        mut up: TcpStream,
        addr: SocketAddr,
        mut head_len: usize,
        info: &ReqInfo,
        plan: &Plan,
        log: &mut Log,
    ) -> Result<bool, Failure> {
        loop {
            let mut headers_arr = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers_arr);
            if !matches!(
                resp.parse(&s.up_buf[..head_len]),
                Ok(httparse::Status::Complete(_))
            ) {
                return Err(Failure::Status(502, "malformed response head"));
            }
            let status = resp.code.unwrap_or(502);
            let minor = resp.version.unwrap_or(1);
            if (100..200).contains(&status) && status != 101 {
                // Interim responses go to the client as they are.
                let interim = s.up_buf.split_to(head_len);
                write_flush(&mut c.io, &interim)
                    .await
                    .map_err(Failure::Abort)?;
                head_len = match read_head(&mut up, &mut s.up_buf, plan.read_timeout).await {
                    Ok(Some(n)) => n,
                    Ok(None) => return Err(Failure::Abort(io::ErrorKind::UnexpectedEof.into())),
                    Err(e) => return Err(Failure::Abort(e)),
                };
                continue;
            }
            log.status = status;
            let mut chunked = false;
            let mut length = None;
            let mut up_keep = minor >= 1;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = h
                        .value
                        .split(|&b| b == b',')
                        .next_back()
                        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                } else if h.name.eq_ignore_ascii_case("connection") {
                    for t in h.value.split(|&b| b == b',') {
                        let t = t.trim_ascii();
                        if t.eq_ignore_ascii_case(b"close") {
                            up_keep = false;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                            up_keep = true;
                        }
                    }
                }
            }
            let framing = if info.is_head || status == 204 || status == 304 || status == 101 {
                Framing::None
            } else if chunked {
                Framing::Chunked
            } else {
                match length {
                    Some(0) => Framing::None,
                    Some(n) => Framing::Length(n),
                    None => Framing::Close,
                }
            };
            let upgrade = status == 101 && info.upgrade;
            let mut client_keep = info.keep_alive && framing != Framing::Close && !upgrade;
            if status == 101 && !info.upgrade {
                return Err(Failure::Status(502, "unexpected 101 response"));
            }

            // The client's head: status line and headers as received, minus
            // hop-by-hop ones, plus laneway's.
            s.out.clear();
            s.out.extend_from_slice(b"HTTP/1.1 ");
            s.out
                .extend_from_slice(&s.up_buf[9..head_line_end(&s.up_buf[..head_len])]);
            s.out.extend_from_slice(b"\r\n");
            for h in resp.headers.iter() {
                let n = h.name.as_bytes();
                if is_hop_by_hop(n) && !(upgrade && n.eq_ignore_ascii_case(b"upgrade")) {
                    continue;
                }
                push_header(&mut s.out, n, h.value);
            }
            if self.settings.response_headers {
                push_header(
                    &mut s.out,
                    self.settings.lanes.header.as_str().as_bytes(),
                    log.lane.name.as_bytes(),
                );
                if let Some(t) = &log.target {
                    push_header(&mut s.out, b"x-laneway-version", t.version.as_bytes());
                }
            }
            for (name, value) in &plan.add_response_headers {
                push_header(&mut s.out, name.as_str().as_bytes(), value.as_bytes());
            }
            if upgrade {
                s.out.extend_from_slice(b"connection: upgrade\r\n");
            } else if !client_keep {
                s.out.extend_from_slice(b"connection: close\r\n");
            } else if info.keep_alive && head_minor_is_zero(info) {
                s.out.extend_from_slice(b"connection: keep-alive\r\n");
            }
            s.out.extend_from_slice(b"\r\n");
            s.up_buf.advance(head_len);

            if upgrade {
                write_flush(&mut c.io, &s.out)
                    .await
                    .map_err(Failure::Abort)?;
                if !s.up_buf.is_empty() {
                    write_flush(&mut c.io, &s.up_buf)
                        .await
                        .map_err(Failure::Abort)?;
                }
                if !c.buf.is_empty() {
                    up.write_all(&c.buf).await.map_err(Failure::Abort)?;
                    c.buf.clear();
                }
                if let Err(e) = tokio::io::copy_bidirectional(&mut c.io, &mut up).await {
                    debug!(error = %e, "upgraded connection ended");
                }
                return Ok(false);
            }

            let mut tracker = ChunkTracker::default();
            if let Err(e) = transfer(
                &mut up,
                &mut s.up_buf,
                framing,
                &mut tracker,
                &mut c.io,
                plan.read_timeout,
                &s.out,
            )
            .await
            {
                debug!(upstream = %addr, error = %e, "response transfer failed");
                return Err(Failure::Abort(e));
            }
            if framing == Framing::Close {
                client_keep = false;
            }
            if up_keep && framing != Framing::Close && s.up_buf.is_empty() {
                pool::put(addr, up, self.settings.upstream_keepalive);
            }
            return Ok(client_keep);
        }
    }

    /// The upstream request head into `s.out`.
    #[allow(clippy::too_many_arguments)]
    fn build_upstream_head(
        &self,
        s: &mut Scratch,
        head: &ReqHead,
        headers: &HeaderMap,
        info: &ReqInfo,
        plan: &Plan,
        lane: &LaneView,
        peer: Option<SocketAddr>,
    ) {
        let out = &mut s.out;
        out.clear();
        out.extend_from_slice(head.method());
        out.push(b' ');
        match &plan.upstream_target {
            Some(t) => out.extend_from_slice(t.as_bytes()),
            None => out.extend_from_slice(&head.head[head.target.clone()]),
        }
        out.extend_from_slice(if head.minor == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        let lane_header = &self.settings.lanes.header;
        let mut forwarded_for: Option<&[u8]> = None;
        let mut request_id = false;
        for (name_r, value_r) in &s.fields {
            let name = &head.head[name_r.clone()];
            let value = &head.head[value_r.clone()];
            if is_hop_by_hop(name) && !(info.upgrade && name.eq_ignore_ascii_case(b"upgrade")) {
                continue;
            }
            if name.eq_ignore_ascii_case(b"expect") && info.expect_continue {
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for = Some(value);
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-request-id") {
                request_id = true;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-proto")
                || name.eq_ignore_ascii_case(lane_header.as_str().as_bytes())
                || (plan.production_host.is_some() && name.eq_ignore_ascii_case(b"host"))
                || plan
                    .remove_headers
                    .iter()
                    .any(|r| name.eq_ignore_ascii_case(r.as_str().as_bytes()))
                || plan
                    .set_headers
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
            {
                continue;
            }
            push_header(out, name, value);
        }
        if let Some(host) = &plan.production_host {
            push_header(out, b"host", host.as_bytes());
        }
        for (name, value) in &plan.set_headers {
            if !value.is_empty() {
                push_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        match peer {
            Some(p) => {
                use std::io::Write;
                let _ = write!(out, "{}", p.ip()); // writing to a Vec cannot fail
            }
            None => out.push(b'-'),
        }
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if !request_id {
            push_header(out, b"x-request-id", plan::new_request_id().as_bytes());
        }
        push_header(out, lane_header.as_str().as_bytes(), lane.name.as_bytes());
        if info.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        } else {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let _ = headers; // the parsed map served routing; the raw fields are forwarded
    }

    async fn write_local(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        resp: &LocalResponse,
        log: &Log,
        info: &ReqInfo,
    ) -> io::Result<()> {
        let out = &mut s.out;
        out.clear();
        status_line(out, resp.status);
        for (name, value) in &resp.headers {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if self.settings.response_headers {
            push_header(
                out,
                self.settings.lanes.header.as_str().as_bytes(),
                log.lane.name.as_bytes(),
            );
            if let Some(t) = &log.target {
                push_header(out, b"x-laneway-version", t.version.as_bytes());
            }
        }
        {
            use std::io::Write;
            let _ = write!(out, "content-length: {}\r\n", resp.body.len()); // Vec write cannot fail
        }
        if !info.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if head_minor_is_zero(info) {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !info.is_head {
            out.extend_from_slice(&resp.body);
        }
        write_flush(&mut c.io, out).await
    }

    /// Metrics and the access log of one request.
    fn finish(&self, log: &Log) {
        let elapsed = log.started.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        log.lane.requests.inc(log.status);
        if let (Some(t), Some(up)) = (&log.target, log.upstream_started) {
            if let Ok(pool) = &t.pool {
                pool.requests.inc(log.status);
                pool.duration.observe(up.elapsed().as_secs_f64());
            }
        }
        info!(
            target: ACCESS_LOG_TARGET,
            lane = &*log.lane.name,
            lane_source = log.lane_source.as_str(),
            service = log.target.as_ref().map_or("-", |t| &*t.service),
            version = log.target.as_ref().map_or("-", |t| &*t.version),
            upstream = ?log.upstream,
            local = log.local.unwrap_or("-"),
            status = log.status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}

/// What the access log and metrics need of a request.
struct Log {
    started: Instant,
    lane: Arc<LaneView>,
    lane_source: LaneSource,
    target: Option<Arc<Target>>,
    upstream: Option<SocketAddr>,
    upstream_started: Option<Instant>,
    status: u16,
    local: Option<&'static str>,
}

enum Exchange {
    /// Connecting failed: another instance may be tried.
    Connect(io::Error),
    Failed(Failure),
}

fn io_failure(e: &io::Error, what: &'static str) -> Failure {
    if e.kind() == io::ErrorKind::TimedOut {
        Failure::Status(504, "upstream timed out")
    } else {
        Failure::Status(502, what)
    }
}

/// HTTP/1.0 clients that asked for keep-alive need it spelled out.
fn head_minor_is_zero(info: &ReqInfo) -> bool {
    info.minor == 0
}

/// Reads until `buf` holds a complete message head; returns its length, or
/// `None` on a clean close before any byte. Client heads wait up to `idle`
/// (and end early on shutdown when idle).
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> io::Result<Option<usize>> {
    loop {
        if !buf.is_empty() {
            if let Some(n) = head_end(buf) {
                return Ok(Some(n));
            }
            if buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
        }
        buf.reserve(READ_CHUNK);
        let n = timed(timeout, io.read_buf(buf)).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

async fn read_client_head(
    c: &mut Client,
    idle: Duration,
    shutdown: &ShutdownWatch,
) -> io::Result<Option<usize>> {
    let mut shutdown = shutdown.clone();
    if c.buf.is_empty() {
        // Idle between requests: wait for bytes, the keepalive timeout, or shutdown.
        c.buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(idle, c.io.read_buf(&mut c.buf)) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            },
            _ = shutdown.changed() => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
    }
    read_head(&mut c.io, &mut c.buf, idle).await
}

/// Length of the head (through the blank line) if `buf` holds all of it.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr_crlfcrlf(buf).map(|i| i + 4)
}

fn memchr_crlfcrlf(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// End of the status line (before its CRLF).
fn head_line_end(head: &[u8]) -> usize {
    head.windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len())
}

/// Streams a body from `src` (with `buf` holding bytes already read) to
/// `dst`, writing `prefix` together with the first body bytes.
async fn transfer<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    tracker: &mut ChunkTracker,
    dst: &mut W,
    timeout: Duration,
    prefix: &[u8],
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut first = true;
    loop {
        let take = match framing {
            Framing::None => 0,
            Framing::Length(_) => buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            Framing::Chunked => tracker.feed(buf)?,
            Framing::Close => buf.len(),
        };
        if first && !prefix.is_empty() {
            if take > 0 && take <= READ_CHUNK {
                let mut joined = Vec::with_capacity(prefix.len() + take);
                joined.extend_from_slice(prefix);
                joined.extend_from_slice(&buf[..take]);
                timed(timeout, dst.write_all(&joined)).await?;
            } else {
                timed(timeout, dst.write_all(prefix)).await?;
                if take > 0 {
                    timed(timeout, dst.write_all(&buf[..take])).await?;
                }
            }
        } else if take > 0 {
            timed(timeout, dst.write_all(&buf[..take])).await?;
        }
        first = false;
        buf.advance(take);
        remaining = remaining.saturating_sub(take as u64);
        let done = match framing {
            Framing::None => true,
            Framing::Length(_) => remaining == 0,
            Framing::Chunked => tracker.done(),
            Framing::Close => false,
        };
        if done {
            break;
        }
        if !buf.is_empty() {
            continue;
        }
        buf.reserve(READ_CHUNK);
        let n = timed(timeout, src.read_buf(buf)).await?;
        if n == 0 {
            if framing == Framing::Close {
                break;
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    timed(timeout, dst.flush()).await
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = timed(timeout, TcpStream::connect(addr)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `fut` with a deadline; a timeout is `ErrorKind::TimedOut`.
///
/// The future is polled once before a timer is armed: on a busy connection
/// most reads and writes complete at once, and arming and cancelling a timer
/// for each of them is avoidable per-request work.
async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    use std::task::Poll;
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    if let Some(r) = first {
        return r;
    }
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

async fn write_simple(c: &mut Client, status: u16, body: &str) -> io::Result<()> {
    let mut out = Vec::with_capacity(128 + body.len());
    status_line(&mut out, status);
    out.extend_from_slice(format!("content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes());
    write_flush(&mut c.io, &out).await
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n"); // Vec write cannot fail
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe one connection and are never forwarded.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 5] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}
