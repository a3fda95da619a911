//! The client connection loop of the Pingora engine (`[proxy] engine =
//! "pingora"`, and the connections the TLS and h2c fronts hand to it):
//! laneway reads each HTTP/1.x request head itself, under its own time
//! limits, then hands the complete head to Pingora's `HttpProxy`, which
//! parses it and serves the request. Request path.
//!
//! Why laneway reads the head rather than Pingora: Pingora's server session
//! times each `read()` on its own (`HttpSession::read_request`: a
//! keep-alive timeout, else a 60 s read timeout, per read), so a client
//! sending one header byte a second holds its connection forever; and
//! after the first request of a connection it waits for the next one
//! without any limit. Here:
//! - a new connection has `[proxy] header_timeout` to send a complete head
//!   (nginx's `client_header_timeout`);
//! - between the requests of a keep-alive connection, the client has
//!   `[proxy] client_keepalive` to start the next one, then
//!   `header_timeout` from its first byte to finish the head;
//! - a head not complete in time is answered `408 Request Timeout` with
//!   `Connection: close` when some of it arrived (nothing is written to a
//!   connection that sent nothing), and the connection is closed; a head
//!   larger than Pingora's limit (1 MiB) is answered 431 and closed.
//!
//! The head goes to Pingora as the session's pipelined prefix, which it
//! parses before reading the socket: Pingora never waits on the socket for a
//! head. The body is read by Pingora through a guard (`guard.rs`), wrapped
//! around the connection once and set for each request from its head: a
//! chunked body reaches Pingora only as far as laneway's strict chunk
//! decoder accepts it (a body off the grammar is answered 400 and the
//! connection closed, as on the h1 engine; the 413 past `[proxy]
//! max_body_size` stays the engine's `request_body_filter`), and bytes past
//! the request's end are kept for the next head read here, so a pipelined
//! request is checked like any other. The one exception is the request
//! after an upgrade request (`Upgrade`) that was not switched:
//! the guard lets an upgrade's bytes pass unbounded, so Pingora may read
//! the next request itself and parse it from its own prefix, unguarded.
//! `CONNECT` never reaches Pingora: [`super::connect`] answers it (a TLS
//! tunnel laneway terminates and serves here again, or a refusal).
//! HTTP/2 connections (ALPN `h2`, h2c) are served whole by Pingora's
//! HTTP/2 server, with `client_keepalive` as their idle timeout; the time
//! to receive one stream's headers is not limited there.

mod guard;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{GetSocketDigest, Ssl, Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

pub use self::guard::chunk_error;
use self::guard::{Expect, Guarded};
use super::connect::{self, Tunnels};
use super::http1::{parse_request_head, Framing, HeadScanner, Reject, RequestHead};
use super::pingora_engine::PingoraProxy;
use super::ProxySettings;
use crate::telemetry::Metrics;

const READ_CHUNK: usize = 4096;
/// How long an answer to a client that broke the rules may take to write
/// before the connection is dropped anyway.
const FAREWELL_WRITE: Duration = Duration::from_secs(1);

/// The time limits of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// How long a keep-alive connection may wait idle for its next request
    /// (`[proxy] client_keepalive`).
    pub idle: Duration,
    /// How long a complete request head may take, from the connection's
    /// start or the first byte of a later request (`[proxy] header_timeout`).
    pub head: Duration,
}

impl ConnTimeouts {
    pub fn of(settings: &ProxySettings) -> ConnTimeouts {
        ConnTimeouts {
            idle: settings.client_keepalive,
            head: settings.header_timeout,
        }
    }
}

/// Pingora's proxy around `laneway`, with `idle` (`[proxy]
/// client_keepalive`) as the idle timeout of HTTP/2 connections.
pub fn proxy(
    conf: &Arc<ServerConf>,
    laneway: PingoraProxy,
    idle: Duration,
) -> HttpProxy<PingoraProxy> {
    let mut proxy = pingora_proxy::http_proxy(conf, laneway);
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(idle);
    proxy.server_options = Some(options);
    proxy
}

/// The Pingora engine as the app of a listening service.
pub struct PingoraConn {
    pub proxy: Arc<HttpProxy<PingoraProxy>>,
    pub timeouts: ConnTimeouts,
    pub metrics: Arc<Metrics>,
    pub tunnels: Arc<Tunnels>,
}

#[async_trait]
impl ServerApp for PingoraConn {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        serve(
            &self.proxy,
            stream,
            shutdown,
            self.timeouts,
            Some(&self.metrics),
            &self.tunnels,
        )
        .await;
        None
    }

    async fn cleanup(&self) {
        // wakes Pingora's own waits (HTTP/2 sessions) at shutdown
        ServerApp::cleanup(&*self.proxy).await;
    }
}

/// Serves a connection with the Pingora engine until it closes, reading
/// every HTTP/1.x request head under `t` (see the module doc); local
/// answers (408, 431) are counted in `metrics` when given. A `CONNECT`
/// is answered by `tunnels` ([`super::connect`]): refused and closed, or
/// its TLS terminated and the decrypted stream served here.
pub async fn serve(
    app: &Arc<HttpProxy<PingoraProxy>>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    t: ConnTimeouts,
    metrics: Option<&Metrics>,
    tunnels: &Arc<Tunnels>,
) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = ServerApp::process_new(app, stream, shutdown).await;
        }
        return;
    }
    // Wrapped once: the same stream comes back from Pingora after each
    // request and is guarded again for the next.
    let mut stream = Box::new(Guarded::new(stream));
    let mut persisted: Option<HttpPersistentSettings> = None;
    let mut fresh = true;
    // The last request's bytes passed the guard unbounded (an upgrade or
    // CONNECT answered without a switch): only then can Pingora hold the
    // next request, so only then are its settings looked into.
    let mut unguarded = false;
    loop {
        stream.open();
        if unguarded && persisted.as_ref().is_some_and(carries_pipelined_request) {
            // Pingora read the next request's first bytes with the last
            // one and parses them itself, unguarded. Only after an upgrade
            // request answered without a switch: the guard keeps every
            // other request's next bytes from Pingora.
            let mut session = ServerSession::new_http1(stream);
            if let Some(p) = persisted.take() {
                p.apply_to_session(&mut session);
            }
            match app.process_new_http(session, shutdown).await {
                Some(reused) => match take_back(reused) {
                    Some((s, p)) => {
                        stream = s;
                        persisted = p;
                        continue;
                    }
                    None => return,
                },
                None => return,
            }
        }
        let (head, body) = match read_head(&mut *stream, fresh, t, shutdown).await {
            Head::Ready(head, body) => (head, body),
            Head::Closed => return,
            Head::TimedOut {
                partial,
                head: partial_head,
            } => {
                debug!(partial, timeout = ?t.head, "request head not complete in time; closing");
                if partial {
                    count(metrics, "header_timeout");
                    let client = stream
                        .get_socket_digest()
                        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
                    crate::telemetry::access::log_refused(
                        &partial_head,
                        client,
                        408,
                        "header_timeout",
                        std::time::Instant::now(),
                    );
                    let body = format!(
                        "laneway: request head not received within [proxy] header_timeout ({})\n",
                        humantime::format_duration(t.head)
                    );
                    farewell(&mut stream, 408, &body).await;
                }
                return;
            }
            Head::Refused(r, raw) => {
                debug!(status = r.status(), problem = %r, "request head refused; closing");
                count(metrics, "bad_request");
                let client = stream
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
                crate::telemetry::access::log_refused(
                    &raw,
                    client,
                    r.status(),
                    r.what(),
                    std::time::Instant::now(),
                );
                farewell(&mut stream, r.status(), &format!("laneway: {r}\n")).await;
                return;
            }
        };
        // Pingora gets the head; the bytes after it are read again through
        // the guard, bounded to this request's body.
        let mut head = head;
        let rest = head.split_off(body.head_len);
        if head.starts_with(b"CONNECT ") {
            // laneway answers CONNECT itself, on either engine.
            let target = parse_request_head(&head)
                .ok()
                .and_then(|p| {
                    std::str::from_utf8(p.target.of(&head))
                        .ok()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let digest = stream.get_socket_digest();
            let addr = |a: Option<&pingora_core::protocols::l4::socket::SocketAddr>| {
                a.and_then(|a| a.as_inet()).copied()
            };
            let peer = digest.as_ref().and_then(|d| addr(d.peer_addr()));
            let local = digest.as_ref().and_then(|d| addr(d.local_addr()));
            let tls = stream.get_ssl_digest().is_some();
            let Some(accepted) =
                connect::answer(tunnels, &mut *stream, &head, &target, peer, local, tls).await
            else {
                return;
            };
            stream.expect(Expect::Unbounded, &rest);
            if let Some(tls) =
                connect::terminate(tunnels, stream, bytes::Bytes::new(), &accepted).await
            {
                Box::pin(serve(app, tls, shutdown, t, metrics, tunnels)).await;
            }
            return;
        }
        stream.expect(body.expect, &rest);
        unguarded = body.expect == Expect::Unbounded;
        let mut session = ServerSession::new_http1(stream);
        match persisted.take() {
            Some(p) => p.apply_to_session(&mut session),
            None => session.set_keepalive_reuses_remaining(
                app.server_options
                    .as_ref()
                    .and_then(|o| o.keepalive_request_limit),
            ),
        }
        // Reuse allowed unless shutting down; the idle wait itself is ours.
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(t.idle.as_secs().max(1)));
        }
        // Pipelined requests are served in order (RFC 9112 §9.3.2), as the
        // h1 engine serves them: the guard keeps bytes past this request
        // for the next `read_head`, or, past an upgrade request, Pingora
        // hands them back in the persisted settings.
        session.set_pipelining_enabled(true);
        session.set_pipelined_prefix(head);
        match app.process_new_http(session, shutdown).await {
            Some(reused) => match take_back(reused) {
                Some((s, p)) => {
                    stream = s;
                    persisted = p;
                    fresh = false;
                }
                None => return,
            },
            None => return,
        }
    }
}

/// The guarded stream and settings of a connection Pingora hands back for
/// its next request; `None` (the connection is dropped) if the stream is
/// not the one [`serve`] gave it, which Pingora never does.
fn take_back(reused: ReusedHttpStream) -> Option<(Box<Guarded>, Option<HttpPersistentSettings>)> {
    let (s, p) = reused.consume();
    match s.into_any().downcast::<Guarded>() {
        Ok(s) => Some((s, p)),
        Err(_) => {
            debug!("connection came back from Pingora without its guard; closing");
            None
        }
    }
}

/// Where a request head ends and what follows it.
#[derive(Debug, Clone, Copy)]
struct Body {
    head_len: usize,
    expect: Expect,
}

impl Body {
    fn of(head: &RequestHead, buf: &[u8]) -> Body {
        let unbounded = head.upgrade
            || head.method.of(buf) == b"CONNECT"
            || head
                .fields
                .iter(buf)
                .any(|(name, _)| name.eq_ignore_ascii_case(b"upgrade"));
        let expect = match head.framing {
            // Pingora switches to reading until close on a 101
            _ if unbounded => Expect::Unbounded,
            Framing::None => Expect::Nothing,
            Framing::Length(n) => Expect::Length(n),
            Framing::Chunked => Expect::Chunked,
            Framing::Close => Expect::Unbounded,
        };
        Body {
            head_len: head.len,
            expect,
        }
    }
}

/// Whether the settings Pingora hands back with a reused connection hold
/// bytes of a pipelined request. pingora-core 0.9 keeps them in a private
/// field with no getter; its `Debug` output is the one public view of it,
/// and a test below pins the form this reads.
fn carries_pipelined_request(p: &HttpPersistentSettings) -> bool {
    format!("{p:?}").contains("pipelined_prefix: Some")
}

/// The outcome of reading one request head.
#[derive(Debug)]
enum Head {
    /// The complete head, possibly followed by body bytes, and where it
    /// ends.
    Ready(BytesMut, Body),
    /// The client closed, went quiet between requests, or laneway is
    /// shutting down: close without an answer.
    Closed,
    /// `header_timeout` passed; `partial`: some of the head had arrived.
    TimedOut {
        partial: bool,
        /// The bytes of the head that arrived.
        head: BytesMut,
    },
    /// The head breaks the framing rules ([`super::http1`]): answered
    /// with the status the h1 engine answers, then closed.
    Refused(Reject, BytesMut),
}

/// Reads one request head: on a `fresh` connection within `t.head` of now;
/// on a reused one, first waiting up to `t.idle` (or until shutdown) for
/// its first byte, then within `t.head` of that byte.
async fn read_head<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    fresh: bool,
    t: ConnTimeouts,
    shutdown: &ShutdownWatch,
) -> Head {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if !fresh {
        if *shutdown.borrow() {
            return Head::Closed;
        }
        let mut shutdown = shutdown.clone();
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout(t.idle, stream.read_buf(&mut buf)) => r,
            _ = shutdown.changed() => return Head::Closed,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Head::Closed,
            Ok(Err(e)) => {
                debug!(error = %e, "client connection ended between requests");
                return Head::Closed;
            }
            Err(_) => {
                debug!(idle = ?t.idle, "keep-alive connection idle for client_keepalive; closing");
                return Head::Closed;
            }
        }
    }
    let deadline = Instant::now() + t.head;
    let mut scan = HeadScanner::request();
    loop {
        match scan.scan(&buf) {
            // The head as the h1 engine checks it (version, lengths, Host,
            // codings): Pingora's own parser answers some of these cases
            // differently or not at all.
            Ok(Some(end)) => {
                return match parse_request_head(&buf[..end]) {
                    Ok(head) => {
                        let body = Body::of(&head, &buf);
                        Head::Ready(buf, body)
                    }
                    Err(r) => Head::Refused(r, buf),
                }
            }
            Ok(None) => {}
            Err(r) => return Head::Refused(r, buf),
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Head::Closed,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "client connection ended in a request head");
                return Head::Closed;
            }
            Err(_) => {
                return Head::TimedOut {
                    partial: !buf.is_empty(),
                    head: buf,
                }
            }
        }
    }
}

fn count(metrics: Option<&Metrics>, reason: &str) {
    if let Some(m) = metrics {
        m.local_response(reason).inc();
    }
}

/// Writes a last plain-text answer with `Connection: close`, giving up
/// after [`FAREWELL_WRITE`]; the caller then drops the connection.
async fn farewell<S: AsyncWrite + Unpin + ?Sized>(stream: &mut S, status: u16, body: &str) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.flush().await
    };
    match tokio::time::timeout(FAREWELL_WRITE, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(status, error = %e, "cannot write the answer before closing"),
        Err(_) => debug!(status, "client does not read; closing without the answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pipelined_prefix_is_seen_in_the_persisted_settings() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
        let session = ServerSession::new_http1(stream);
        let mut p = HttpPersistentSettings::for_session(&session);
        assert!(!carries_pipelined_request(&p));
        p.set_pipelined_prefix(BytesMut::from(&b"GET /two HTTP/1.1\r\n"[..]));
        assert!(carries_pipelined_request(&p));
    }
}
