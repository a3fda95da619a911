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
//! head. HTTP/2 connections (ALPN `h2`, h2c) are served whole by Pingora's
//! HTTP/2 server, with `client_keepalive` as their idle timeout; the time
//! to receive one stream's headers is not limited there.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use super::pingora_engine::Laneway;
use super::ProxySettings;
use crate::telemetry::Metrics;

/// Largest request head accepted: Pingora's own limit.
const MAX_HEAD: usize = 1_048_575;
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
pub fn proxy(conf: &Arc<ServerConf>, laneway: Laneway, idle: Duration) -> HttpProxy<Laneway> {
    let mut proxy = pingora_proxy::http_proxy(conf, laneway);
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(idle);
    proxy.server_options = Some(options);
    proxy
}

/// The Pingora engine as the app of a listening service.
pub struct PingoraConn {
    pub proxy: Arc<HttpProxy<Laneway>>,
    pub timeouts: ConnTimeouts,
    pub metrics: Arc<Metrics>,
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
/// answers (408, 431) are counted in `metrics` when given.
pub async fn serve(
    app: &Arc<HttpProxy<Laneway>>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    t: ConnTimeouts,
    metrics: Option<&Metrics>,
) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = ServerApp::process_new(app, stream, shutdown).await;
        }
        return;
    }
    let mut stream = stream;
    let mut persisted: Option<HttpPersistentSettings> = None;
    let mut fresh = true;
    loop {
        if persisted.as_ref().is_some_and(carries_pipelined_request) {
            // The client pipelined: Pingora read the next request's first
            // bytes with the last one and parses them itself.
            let mut session = ServerSession::new_http1(stream);
            if let Some(p) = persisted.take() {
                p.apply_to_session(&mut session);
            }
            match app.process_new_http(session, shutdown).await {
                Some(reused) => {
                    let (s, p) = reused.consume();
                    stream = s;
                    persisted = p;
                    continue;
                }
                None => return,
            }
        }
        let head = match read_head(&mut stream, fresh, t, shutdown).await {
            Head::Ready(head) => head,
            Head::Closed => return,
            Head::TimedOut { partial } => {
                debug!(partial, timeout = ?t.head, "request head not complete in time; closing");
                if partial {
                    count(metrics, "header_timeout");
                    let body = format!(
                        "laneway: request head not received within [proxy] header_timeout ({})\n",
                        humantime::format_duration(t.head)
                    );
                    farewell(&mut stream, 408, &body).await;
                }
                return;
            }
            Head::TooLarge => {
                debug!(limit = MAX_HEAD, "request head too large; closing");
                count(metrics, "bad_request");
                let body = format!("laneway: request head larger than {MAX_HEAD} bytes\n");
                farewell(&mut stream, 431, &body).await;
                return;
            }
        };
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
        // h1 engine serves them; bytes past this request come back in the
        // persisted settings.
        session.set_pipelining_enabled(true);
        session.set_pipelined_prefix(head);
        match app.process_new_http(session, shutdown).await {
            Some(reused) => {
                let (s, p) = reused.consume();
                stream = s;
                persisted = p;
                fresh = false;
            }
            None => return,
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
    /// The complete head, possibly followed by body bytes.
    Ready(BytesMut),
    /// The client closed, went quiet between requests, or laneway is
    /// shutting down: close without an answer.
    Closed,
    /// `header_timeout` passed; `partial`: some of the head had arrived.
    TimedOut {
        partial: bool,
    },
    TooLarge,
}

/// Reads one request head: on a `fresh` connection within `t.head` of now;
/// on a reused one, first waiting up to `t.idle` (or until shutdown) for
/// its first byte, then within `t.head` of that byte.
async fn read_head(
    stream: &mut Stream,
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
    let mut scan = HeadScan::default();
    loop {
        if scan.end(&buf).is_some() {
            return Head::Ready(buf);
        }
        if buf.len() > MAX_HEAD {
            return Head::TooLarge;
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
                }
            }
        }
    }
}

/// Finds the end of a request head in a buffer that only grows, resuming
/// where the last call stopped. The head ends at its first empty line
/// (`\r\n\r\n`, or a bare `\n` on either side, as httparse accepts);
/// empty lines before the request line are skipped, as httparse does.
#[derive(Debug, Default)]
struct HeadScan {
    /// A byte other than CR/LF has been seen: the request line started.
    started: bool,
    /// The next byte to look at.
    pos: usize,
}

impl HeadScan {
    /// The head's length in `buf` once it is complete.
    fn end(&mut self, buf: &[u8]) -> Option<usize> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            if !self.started {
                self.started = b != b'\r' && b != b'\n';
            } else if b == b'\n' {
                match buf.get(self.pos + 1) {
                    None => return None, // look again with more bytes
                    Some(b'\n') => return Some(self.pos + 2),
                    Some(b'\r') => match buf.get(self.pos + 2) {
                        None => return None,
                        Some(b'\n') => return Some(self.pos + 3),
                        Some(_) => {}
                    },
                    Some(_) => {}
                }
            }
            self.pos += 1;
        }
        None
    }
}

fn count(metrics: Option<&Metrics>, reason: &str) {
    if let Some(m) = metrics {
        m.local_response(reason).inc();
    }
}

/// Writes a last plain-text answer with `Connection: close`, giving up
/// after [`FAREWELL_WRITE`]; the caller then drops the connection.
async fn farewell(stream: &mut Stream, status: u16, body: &str) {
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

    /// The head length found when `input` arrives split at every byte
    /// position (and whole).
    fn ends_at_every_split(input: &[u8]) -> Vec<Option<usize>> {
        (0..=input.len())
            .map(|split| {
                let mut scan = HeadScan::default();
                let first = scan.end(&input[..split]);
                first.or_else(|| scan.end(input))
            })
            .collect()
    }

    #[test]
    fn head_end_is_found_whatever_the_split() {
        let cases: [(&[u8], Option<usize>); 7] = [
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", Some(27)),
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody", Some(27)),
            (b"GET / HTTP/1.1\nhost: a\n\n", Some(24)),
            (b"GET / HTTP/1.1\nhost: a\n\r\n", Some(25)),
            (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", Some(22)),
            (b"GET / HTTP/1.1\r\nhost: a\r\n", None),
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r", None),
        ];
        for (input, want) in cases {
            for (split, got) in ends_at_every_split(input).into_iter().enumerate() {
                assert_eq!(
                    got,
                    want,
                    "{:?} split at {split}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn a_head_found_is_parsed_whole_by_httparse() {
        for input in [
            &b"GET /a HTTP/1.1\r\nhost: a\r\nx: 1\r\n\r\n"[..],
            b"GET /a HTTP/1.1\nhost: a\n\n",
            b"\r\nGET /a HTTP/1.1\r\nhost: a\r\n\r\n",
        ] {
            let end = HeadScan::default().end(input).expect("complete");
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            assert_eq!(
                req.parse(&input[..end]).ok(),
                Some(httparse::Status::Complete(end)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn leading_empty_lines_do_not_end_the_head() {
        let mut scan = HeadScan::default();
        assert_eq!(scan.end(b"\r\n\r\n\n"), None);
        assert_eq!(scan.end(b"\r\n\r\n\nG"), None);
    }
}
