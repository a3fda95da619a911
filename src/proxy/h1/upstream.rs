//! The upstream half of a proxied request: picking an instance, sending
//! the request on a pooled or new connection (with a retry on another
//! instance when connecting fails, and on a fresh connection when a pooled
//! one turns out stale), and forwarding the response, whose head
//! [`http1::parse_response_head`] checks (502 when it breaks the framing
//! rules). Request path.
//!
//! Pooled connections: one that has bytes to read or was closed while idle
//! is not reused ([`pool::take`]). One that fails anyway (the upstream
//! closed it as the request went out: a write error, or a close or reset
//! before any answer byte) gets the request again on a fresh connection,
//! whatever the method, when the request went out whole with its head.
//!
//! Read retries: when the upstream closes or resets before the first
//! response byte, an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) is sent again, on another instance when there is one, up to the
//! location's `retries` (`[proxy] read_retries`), when its body went out
//! whole with the head or it had none. So that this does not depend on how
//! the client's bytes were split into segments, a body of such a request up
//! to [`REPLAY_LIMIT`] is read whole before the request goes upstream (as
//! nginx buffers request bodies); a larger one is streamed, and a failure
//! then answers 502, as anything else does.
//! Every attempt's outcome is recorded on the instance for passive ejection.
//!
//! `proxy_intercept_errors`: when the plan hands an upstream status back to
//! the rules, the response is dropped before anything reaches the client
//! and [`Failure::Intercepted`] tells the caller to decide again. That
//! needs the request body whole: for such plans only, a body up to
//! [`REPLAY_LIMIT`] is read before the request goes upstream (as nginx
//! buffers request bodies) and kept; a larger one is streamed and cannot be
//! sent twice, so the upstream's response to it is passed on as it is.

use super::*;
use crate::proxy::exchange::UpstreamFailure;

/// Largest request body kept to send again after an intercepted upstream
/// status (Pingora's retry buffer holds as much).
pub(super) const REPLAY_LIMIT: usize = 64 * 1024;

impl H1App {
    /// Sends the request upstream and the response back. `Ok(keep)` says
    /// whether the client connection may carry another request.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn proxy(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        head: &ReqHead,
        headers: &HeaderMap,
        info: &ReqInfo,
        plan: &Plan,
        log: &mut Log,
        replay: &mut Option<bytes::Bytes>,
    ) -> Result<bool, Failure> {
        let again = replay.is_some();
        if info.expect_continue && info.framing != Framing::None && !again {
            // As nginx does: answer 100 Continue here, never forward Expect.
            write_flush(&mut c.io, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(Failure::Abort)?;
        }
        let resendable = info.idempotent && plan.read_retries > 0;
        if (plan.intercept.is_some() || resendable) && !again && !info.upgrade {
            buffer_small_body(c, info, plan.read_timeout)
                .await
                .map_err(Failure::Abort)?;
        }
        self.build_upstream_head(s, head, headers, info, plan, &log.lane, &c.peer_ip, c.https);
        // Body bytes already received go out with the head in one write;
        // of a chunked body, only bytes the decoder accepted.
        let mut decoder = ChunkedDecoder::new(self.settings.max_body_size);
        let rest = if let Some(body) = replay.as_ref() {
            // sent again after an intercepted answer: the body kept then
            s.out.extend_from_slice(body);
            Framing::None
        } else {
            let buffered = match info.framing {
                Framing::None | Framing::Close => 0,
                Framing::Length(n) => c.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX)),
                Framing::Chunked => decoder.feed(&c.buf).map_err(body_refused)?,
            };
            let rest = match info.framing {
                Framing::Length(n) => match n - buffered as u64 {
                    0 => Framing::None,
                    left => Framing::Length(left),
                },
                Framing::Chunked if !decoder.done() => Framing::Chunked,
                _ => Framing::None,
            };
            if plan.intercept.is_some() && rest == Framing::None && !info.upgrade {
                *replay = Some(bytes::Bytes::copy_from_slice(&c.buf[..buffered]));
            }
            s.out.extend_from_slice(&c.buf[..buffered]);
            c.buf.advance(buffered);
            rest
        };
        let replayable = rest == Framing::None;
        let can_intercept = replay.is_some();

        let pool = &plan.pool;
        let mut tried = [usize::MAX; 8];
        let mut tries = 0usize;
        let mut connect_failures = 0usize;
        let mut read_retries = if info.idempotent && replayable {
            plan.read_retries
        } else {
            0
        };
        let mut resending = false;
        let (up, head_len, idx) = loop {
            let skip = |i| tried[..tries.min(8)].contains(&i);
            // A resend goes to another instance when there is one, else to
            // the same one again.
            let picked = pool
                .pick(skip)
                .or_else(|| resending.then(|| pool.pick(|_| false)).flatten());
            let Some(idx) = picked else {
                return Err(Failure::of(UpstreamFailure::NoInstanceConnected));
            };
            let addr = pool.instances[idx].addr;
            if tries < tried.len() {
                tried[tries] = idx;
            }
            tries += 1;
            log.tries = tries.min(255) as u8;
            log.upstream = Some(addr);
            log.upstream_started = Some(Instant::now());
            let state = &pool.instances[idx].state;
            match self
                .exchange(c, s, addr, plan, rest, &mut decoder, replayable)
                .await
            {
                Ok((up, head_len)) => break (up, head_len, idx),
                Err(Exchange::Connect(e)) => {
                    pool.metrics().connect_errors.inc();
                    state.record_failure();
                    connect_failures += 1;
                    debug!(upstream = %addr, error = %e, "connect failed");
                    if connect_failures > self.settings.connect_retries
                        || tries >= pool.instances.len()
                    {
                        return Err(if e.kind() == io::ErrorKind::TimedOut {
                            Failure::of(UpstreamFailure::ConnectTimedOut)
                        } else {
                            Failure::of(UpstreamFailure::ConnectFailed)
                        });
                    }
                    self.metrics.retry(0).inc();
                    resending = false;
                }
                Err(Exchange::Reset(f)) => {
                    state.record_failure();
                    if read_retries == 0 {
                        return Err(f);
                    }
                    debug!(upstream = %addr, "upstream closed before answering; sending again");
                    read_retries -= 1;
                    self.metrics.retry(1).inc();
                    resending = true;
                }
                Err(Exchange::Failed(f, upstream_fault)) => {
                    if upstream_fault {
                        state.record_failure();
                    }
                    return Err(f);
                }
            }
        };
        let addr = pool.instances[idx].addr;
        let result = self
            .respond(c, s, up, addr, head_len, info, plan, log, can_intercept)
            .await;
        let state = &pool.instances[idx].state;
        if log.upstream_status != 0 {
            state.record_status(log.upstream_status);
        } else if matches!(result, Err(Failure::Status(..))) {
            state.record_failure();
        }
        result
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
        rest: Framing,
        decoder: &mut ChunkedDecoder,
        replayable: bool,
    ) -> Result<(TcpStream, usize), Exchange> {
        // (pool::take passes over idle connections that turned readable)
        let mut pooled = pool::take(addr);
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(up) => up,
                None => connect(addr, plan.connect_timeout)
                    .await
                    .map_err(Exchange::Connect)?,
            };
            // A pooled connection the upstream closed while it was idle
            // fails here (a write error, or a close or reset before any
            // answer byte); the request is sent again on a fresh
            // connection when it went out whole (its body, if any, is in
            // `s.out`), whatever its method: the upstream never saw it.
            let retry_stale = reused && replayable;
            if let Err(e) = timed(plan.write_timeout, up.write_all(&s.out)).await {
                if retry_stale {
                    continue;
                }
                // nothing of the answer read yet: a resend is safe when
                // the request is idempotent and whole
                return Err(if e.kind() == io::ErrorKind::TimedOut {
                    Exchange::Failed(io_failure(&e, UpstreamFailure::SendFailed), true)
                } else {
                    Exchange::Reset(Failure::of(UpstreamFailure::SendFailed))
                });
            }
            if rest != Framing::None {
                if let Err(e) = transfer(
                    &mut c.io,
                    &mut c.buf,
                    rest,
                    decoder,
                    &mut up,
                    plan.read_timeout,
                    &[],
                )
                .await
                {
                    debug!(error = %e, "request body transfer failed");
                    // the upstream connection is dropped: it got a
                    // truncated request and nothing past it
                    let failure = match e.cause {
                        Cause::Framing(bad) => body_refused(bad),
                        _ => Failure::of(UpstreamFailure::SendBodyFailed),
                    };
                    return Err(Exchange::Failed(failure, false));
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
                    return Err(Exchange::Reset(Failure::of(
                        UpstreamFailure::ClosedBeforeAnswer,
                    )))
                }
                Err(e) if s.up_buf.is_empty() && e.kind() != io::ErrorKind::TimedOut => {
                    return Err(Exchange::Reset(Failure::of(
                        UpstreamFailure::ResetBeforeAnswer,
                    )))
                }
                Err(e) => {
                    return Err(Exchange::Failed(
                        io_failure(&e, UpstreamFailure::ReadFailed),
                        true,
                    ))
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
        can_intercept: bool,
    ) -> Result<bool, Failure> {
        loop {
            let resp = http1::parse_response_head(&s.up_buf[..head_len])
                .map_err(|r| Failure::Status(r.status(), r.what()))?;
            let status = resp.status;
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
            log.upstream_status = status;
            if can_intercept && plan.intercepts(status) {
                // dropped unread: the connection is not reused
                debug!(upstream = %addr, status, "upstream status handed back to the rules");
                return Err(Failure::Intercepted(status));
            }
            let up_keep = resp.keep_alive;
            let framing = if info.is_head || status == 204 || status == 304 || status == 101 {
                Framing::None
            } else {
                resp.framing
            };
            let upgrade = status == 101 && info.upgrade;
            // A body that ends with the upstream's close goes to an HTTP/1.1
            // client chunked, so its connection stays (as nginx and the
            // Pingora engine send it); HTTP/1.0 clients get it close-delimited.
            let rechunk = framing == Framing::Close && info.minor >= 1;
            let mut client_keep =
                info.keep_alive && (framing != Framing::Close || rechunk) && !upgrade;
            if status == 101 && !info.upgrade {
                return Err(Failure::of(UpstreamFailure::UnexpectedSwitch));
            }

            // The client's head: status line and headers as received, minus
            // hop-by-hop ones, plus laneway's.
            s.out.clear();
            match plan.status {
                // an error page's status replaces the upstream's
                Some(code) if code != status && !upgrade => {
                    status_line(&mut s.out, code);
                    log.status = code;
                }
                _ => {
                    s.out.extend_from_slice(b"HTTP/1.1 ");
                    s.out.extend_from_slice(resp.status_text.of(&s.up_buf));
                    s.out.extend_from_slice(b"\r\n");
                }
            }
            for (n, v) in resp.fields.iter(&s.up_buf) {
                if is_hop_by_hop(n) && !(upgrade && n.eq_ignore_ascii_case(b"upgrade")) {
                    continue;
                }
                if resp.drop_content_length && n.eq_ignore_ascii_case(b"content-length") {
                    // Transfer-Encoding frames the response: the client
                    // gets one framing, not two
                    continue;
                }
                if let Some(new) = plan.rewrite.as_ref().and_then(|rw| rw.header(n, v)) {
                    // kept in the lane, or nginx proxy_redirect / cookie_domain
                    push_header(&mut s.out, n, new.as_bytes());
                    continue;
                }
                push_header(&mut s.out, n, v);
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
            self.push_unknown(&mut s.out, log);
            for (name, value) in &plan.add_response_headers {
                push_header(&mut s.out, name.as_str().as_bytes(), value.as_bytes());
            }
            if rechunk {
                s.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
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

            if rechunk {
                if let Err(e) =
                    transfer_rechunked(&mut up, &mut s.up_buf, &mut c.io, plan.read_timeout, &s.out)
                        .await
                {
                    debug!(upstream = %addr, error = %e, "response transfer failed");
                    return Err(Failure::Abort(e));
                }
                return Ok(client_keep);
            }
            let mut decoder = ChunkedDecoder::new(None);
            if let Err(e) = transfer(
                &mut up,
                &mut s.up_buf,
                framing,
                &mut decoder,
                &mut c.io,
                plan.read_timeout,
                &s.out,
            )
            .await
            {
                debug!(upstream = %addr, error = %e, "response transfer failed");
                return Err(match e.cause {
                    // refused before a byte reached the client
                    Cause::Framing(_) if !e.started => {
                        Failure::Status(502, "malformed chunked response body")
                    }
                    _ => Failure::Abort(e.into()),
                });
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
}

/// Reads the rest of a request body of at most [`REPLAY_LIMIT`] bytes into
/// `c.buf`, so that it goes upstream whole with the head and can be sent
/// again; a larger (or malformed) body is left to stream.
async fn buffer_small_body(c: &mut Client, info: &ReqInfo, timeout: Duration) -> io::Result<()> {
    match info.framing {
        Framing::Length(n) if n <= REPLAY_LIMIT as u64 => {
            while (c.buf.len() as u64) < n {
                c.buf.reserve(READ_CHUNK);
                if timed(timeout, c.io.read_buf(&mut c.buf)).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Framing::Chunked => {
            // only finds the end: the body is decoded again as it goes up
            let mut decoder = ChunkedDecoder::new(None);
            let mut fed = 0;
            loop {
                match decoder.feed(&c.buf[fed..]) {
                    Ok(n) => fed += n,
                    Err(_) => return Ok(()), // refused when forwarded
                }
                if decoder.done() || c.buf.len() > REPLAY_LIMIT {
                    return Ok(());
                }
                c.buf.reserve(READ_CHUNK);
                if timed(timeout, c.io.read_buf(&mut c.buf)).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

enum Exchange {
    /// Connecting failed: another instance may be tried.
    Connect(io::Error),
    /// The upstream closed or reset before sending a byte of its answer:
    /// an idempotent, whole request may be sent again.
    Reset(Failure),
    /// Anything else; `true` when the upstream is to blame (counted for
    /// passive ejection).
    Failed(Failure, bool),
}

/// The answer to a request whose chunked body was refused (400, or 413
/// past `[proxy] max_body_size`).
fn body_refused(e: ChunkError) -> Failure {
    match e {
        ChunkError::TooLarge(_) => Failure::of(UpstreamFailure::BodyTooLarge),
        ChunkError::Malformed(what) => Failure::Status(400, what),
    }
}

pub(super) fn io_failure(e: &io::Error, otherwise: UpstreamFailure) -> Failure {
    if let Some(r) = rejected(e) {
        return Failure::Status(r.status(), r.what());
    }
    if e.kind() == io::ErrorKind::TimedOut {
        Failure::of(UpstreamFailure::TimedOut)
    } else {
        Failure::of(otherwise)
    }
}
