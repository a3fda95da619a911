//! Reading heads, streaming bodies, connecting and deadlines for the lean
//! engine. Request path.

use super::*;

/// Reads until `buf` holds a complete message head; returns its length, or
/// `None` on a clean close before any byte. Client heads wait up to `idle`
/// (and end early on shutdown when idle).
pub(super) async fn read_head<R: AsyncRead + Unpin>(
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

pub(super) async fn read_client_head(
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
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    memchr_crlfcrlf(buf).map(|i| i + 4)
}

pub(super) fn memchr_crlfcrlf(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// End of the status line (before its CRLF).
pub(super) fn head_line_end(head: &[u8]) -> usize {
    head.windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len())
}

/// Streams a body from `src` (with `buf` holding bytes already read) to
/// `dst`, writing `prefix` together with the first body bytes.
pub(super) async fn transfer<R, W>(
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
            // Head and the first body bytes in one vectored write.
            timed(timeout, write_two(dst, prefix, &buf[..take])).await?;
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
        buf.reserve(BODY_CHUNK);
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
