//! Reading heads, streaming bodies, connecting and deadlines for the lean
//! engine. Request path.

use super::*;

/// Reads until `buf` holds a complete response head; returns its length,
/// or `None` on a clean close before any byte. A head that breaks the
/// framing rules or limits ([`http1::HeadScanner`]) is an `InvalidData`
/// error carrying the [`Reject`]; each read waits up to `timeout`.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> io::Result<Option<usize>> {
    let mut scan = http1::HeadScanner::response();
    loop {
        if let Some(n) = scan.scan(buf).map_err(refused)? {
            return Ok(Some(n));
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

/// A refused head or body as an I/O error.
pub(super) fn refused(r: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, r)
}

/// The [`Reject`] an error from [`read_head`] carries, if any.
pub(super) fn rejected(e: &io::Error) -> Option<Reject> {
    e.get_ref()?.downcast_ref::<Reject>().copied()
}

/// How reading a client's request head ended.
pub(super) enum ClientHead {
    /// The head is `c.buf[..len]`.
    Head(usize),
    /// Closed, idle past the keep-alive timeout, or shutting down, before
    /// a byte of a request.
    Closed,
    /// The bytes received break the framing rules or limits.
    Refused(Reject),
    /// The head did not arrive whole within `[proxy] header_timeout` of
    /// its first byte.
    TimedOut,
}

/// Reads a client's request head into `c.buf`: waits up to `idle` for its
/// first byte (and ends early on shutdown while idle), then up to
/// `header_timeout` from that byte for the rest, however the bytes trickle
/// in. Limits hold as the bytes arrive ([`http1::HeadScanner`]).
pub(super) async fn read_client_head(
    c: &mut Client,
    idle: Duration,
    header_timeout: Duration,
    shutdown: &ShutdownWatch,
) -> io::Result<ClientHead> {
    let mut shutdown = shutdown.clone();
    if c.buf.is_empty() {
        // Idle between requests: wait for bytes, the keepalive timeout, or shutdown.
        c.buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(idle, c.io.read_buf(&mut c.buf)) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(ClientHead::Closed),
            },
            _ = shutdown.changed() => return Ok(ClientHead::Closed),
        };
        if n == 0 {
            return Ok(ClientHead::Closed);
        }
    }
    let deadline = tokio::time::Instant::now() + header_timeout;
    let mut scan = http1::HeadScanner::request();
    loop {
        match scan.scan(&c.buf) {
            Ok(Some(n)) => return Ok(ClientHead::Head(n)),
            Ok(None) => {}
            Err(r) => return Ok(ClientHead::Refused(r)),
        }
        c.buf.reserve(READ_CHUNK);
        let n = match timed_until(deadline, c.io.read_buf(&mut c.buf)).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(ClientHead::TimedOut),
            r => r?,
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Why streaming a body stopped.
pub(super) enum Cause {
    /// The chunked framing was refused.
    Framing(ChunkError),
    /// Reading from the source failed or it closed early.
    Read(io::Error),
    /// Writing to the destination failed.
    Write(io::Error),
}

/// A body transfer that stopped; `started` when bytes (the prefix
/// included) were already written to the destination.
pub(super) struct TransferError {
    pub cause: Cause,
    pub started: bool,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            Cause::Framing(e) => e.fmt(f),
            Cause::Read(e) => write!(f, "reading the body: {e}"),
            Cause::Write(e) => write!(f, "writing the body: {e}"),
        }
    }
}

impl From<TransferError> for io::Error {
    fn from(e: TransferError) -> io::Error {
        match e.cause {
            Cause::Framing(c) => refused(c),
            Cause::Read(e) | Cause::Write(e) => e,
        }
    }
}

/// Streams a body from `src` (with `buf` holding bytes already read) to
/// `dst`, writing `prefix` together with the first body bytes. Of a chunked
/// body, only bytes `decoder` accepted are written.
/// Streams a body that ends when `src` closes to `dst` in chunked coding
/// (each read one chunk, then the last chunk), writing `prefix` (the head)
/// first.
pub(super) async fn transfer_rechunked<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    timeout: Duration,
    prefix: &[u8],
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(prefix.len() + buf.len() + 16);
    out.extend_from_slice(prefix);
    loop {
        if !buf.is_empty() {
            use std::io::Write;
            let _ = write!(out, "{:x}\r\n", buf.len()); // Vec write cannot fail
            out.extend_from_slice(buf);
            out.extend_from_slice(b"\r\n");
            buf.clear();
        }
        if !out.is_empty() {
            timed(timeout, dst.write_all(&out)).await?;
            out.clear();
        }
        buf.reserve(BODY_CHUNK);
        if timed(timeout, src.read_buf(buf)).await? == 0 {
            break;
        }
    }
    timed(timeout, dst.write_all(b"0\r\n\r\n")).await?;
    timed(timeout, dst.flush()).await
}

pub(super) async fn transfer<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    decoder: &mut ChunkedDecoder,
    dst: &mut W,
    timeout: Duration,
    prefix: &[u8],
) -> Result<(), TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut started = false;
    let fail = |cause, started| TransferError { cause, started };
    loop {
        let take = match framing {
            Framing::None => 0,
            Framing::Length(_) => buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            Framing::Chunked => decoder
                .feed(buf)
                .map_err(|e| fail(Cause::Framing(e), started))?,
            Framing::Close => buf.len(),
        };
        if !started && !prefix.is_empty() {
            // Head and the first body bytes in one vectored write.
            timed(timeout, write_two(dst, prefix, &buf[..take]))
                .await
                .map_err(|e| fail(Cause::Write(e), true))?;
            started = true;
        } else if take > 0 {
            timed(timeout, dst.write_all(&buf[..take]))
                .await
                .map_err(|e| fail(Cause::Write(e), true))?;
            started = true;
        }
        buf.advance(take);
        remaining = remaining.saturating_sub(take as u64);
        let done = match framing {
            Framing::None => true,
            Framing::Length(_) => remaining == 0,
            Framing::Chunked => decoder.done(),
            Framing::Close => false,
        };
        if done {
            break;
        }
        if !buf.is_empty() {
            continue;
        }
        buf.reserve(BODY_CHUNK);
        let n = timed(timeout, src.read_buf(buf))
            .await
            .map_err(|e| fail(Cause::Read(e), started))?;
        if n == 0 {
            if framing == Framing::Close {
                break;
            }
            return Err(fail(
                Cause::Read(io::ErrorKind::UnexpectedEof.into()),
                started,
            ));
        }
    }
    timed(timeout, dst.flush())
        .await
        .map_err(|e| fail(Cause::Write(e), started))
}

pub(super) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = timed(timeout, TcpStream::connect(addr)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `fut` with a deadline; a timeout is `ErrorKind::TimedOut`.
///
/// The future is polled once before a timer is armed: on a busy connection
/// most reads and writes complete at once, and arming and cancelling a timer
/// for each of them is avoidable per-request work.
pub(super) async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let mut fut = std::pin::pin!(fut);
    if let Some(r) = poll_once(fut.as_mut()).await {
        return r;
    }
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// [`timed`] with a deadline rather than a duration.
pub(super) async fn timed_until<T>(
    deadline: tokio::time::Instant,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let mut fut = std::pin::pin!(fut);
    if let Some(r) = poll_once(fut.as_mut()).await {
        return r;
    }
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Polls `fut` once: its output if it is ready.
async fn poll_once<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    use std::task::Poll;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

pub(super) async fn write_flush<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

pub(super) async fn write_simple(c: &mut Client, status: u16, body: &str) -> io::Result<()> {
    let mut out = Vec::with_capacity(128 + body.len());
    status_line(&mut out, status);
    out.extend_from_slice(format!("content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes());
    write_flush(&mut c.io, &out).await
}

/// How long a refused connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// The most bytes drained from a refused connection.
const LINGER_BYTES: usize = 256 * 1024;

/// [`write_simple`], then a lingering close: the write side is shut and what
/// the client still sends (the rest of a refused request) is read and
/// dropped for up to [`LINGER`], so that closing with unread bytes does not
/// reset the connection and destroy the answer before the client reads it.
pub(super) async fn refuse_and_close(c: &mut Client, status: u16, body: &str) -> io::Result<()> {
    write_simple(c, status, body).await?;
    c.buf.clear();
    if c.io.shutdown().await.is_err() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut drained = 0;
    let mut scratch = [0u8; 4096];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, c.io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

/// Writes `a` then `b` with as few (vectored) writes as the socket allows.
async fn write_two<W: AsyncWrite + Unpin>(
    dst: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            dst.write(b).await?
        } else if b.is_empty() {
            dst.write(a).await?
        } else {
            dst.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    Ok(())
}
