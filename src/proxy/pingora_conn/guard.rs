//! The client stream of a Pingora-engine HTTP/1 connection, bounded to one
//! request at a time: Pingora reads a request's body through it only as far
//! as laneway's framing says the body goes, and a chunked body only as
//! [`ChunkedDecoder`] accepts it. Request path.
//!
//! Pingora's own chunk decoder is lenient (it takes a bare LF in a chunk
//! extension, an empty chunk size), so a body it reads differently from the
//! h1 engine would reach an upstream. [`Guarded`] sits between Pingora and
//! the socket and is set per request by [`super::serve`] ([`Guarded::expect`]):
//! - a chunked body: every byte Pingora reads is fed to a fresh
//!   [`ChunkedDecoder`] first; a byte off the grammar fails the read with an
//!   [`io::ErrorKind::InvalidData`] error carrying the [`ChunkError`]
//!   ([`chunk_error`] finds it again), which the engine answers 400 and
//!   closes, as the h1 engine does;
//! - a `Content-Length` body: that many bytes;
//! - after the body's end (at once for a request without one), bytes
//!   the client sends are the next request: they are kept here, not given
//!   to Pingora (its read waits), and read again by [`super::serve`],
//!   which checks that request's head itself. So Pingora never holds
//!   pipelined bytes, and every request of the connection is guarded;
//! - an upgrade (or `CONNECT`) request, and the time between requests:
//!   bytes pass as they are.
//!
//! The end of the connection (a read of 0 bytes) always passes, so Pingora
//! still sees a client that leaves.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::http1::{ChunkError, ChunkedDecoder};

/// What the next bytes of the connection are, as far as reads may go.
#[derive(Debug)]
enum Gate {
    /// Anything: between requests, or an upgraded connection.
    Open,
    /// A chunked request body, checked by the decoder.
    Chunked(ChunkedDecoder),
    /// This many more bytes of a `Content-Length` body.
    Length(u64),
    /// The request is read whole: bytes that come are kept for the next.
    Held,
    /// The chunked body broke its grammar: every read fails.
    Refused(ChunkError),
}

/// What a request's body is, for [`Guarded::expect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No body: the request ends with its head.
    Nothing,
    /// A `Content-Length` body of this many bytes.
    Length(u64),
    /// A chunked body.
    Chunked,
    /// Bytes pass unbounded (an upgrade or `CONNECT` request).
    Unbounded,
}

/// `inner` with a [`Gate`] on its reads (see the module doc).
pub struct Guarded {
    inner: Stream,
    /// Bytes read from `inner` and not yet given out.
    kept: BytesMut,
    gate: Gate,
}

impl Guarded {
    /// `inner`, open (nothing expected yet).
    pub fn new(inner: Stream) -> Guarded {
        Guarded {
            inner,
            kept: BytesMut::new(),
            gate: Gate::Open,
        }
    }

    /// Opens the gate: the time between requests.
    pub fn open(&mut self) {
        self.gate = Gate::Open;
    }

    /// Bounds the reads to a request whose body is `body`; `rest` are the
    /// bytes read already after its head (they are read again first).
    pub fn expect(&mut self, body: Expect, rest: &[u8]) {
        if !rest.is_empty() {
            let mut kept = BytesMut::with_capacity(rest.len() + self.kept.len());
            kept.extend_from_slice(rest);
            kept.extend_from_slice(&self.kept);
            self.kept = kept;
        }
        self.gate = match body {
            Expect::Nothing | Expect::Length(0) => Gate::Held,
            Expect::Length(n) => Gate::Length(n),
            // The size limit is Pingora's `request_body_filter`, as for a
            // `Content-Length` body: one place answers the 413.
            Expect::Chunked => Gate::Chunked(ChunkedDecoder::new(None)),
            Expect::Unbounded => Gate::Open,
        };
    }
}

/// The chunk error a read of a guarded client stream failed with, if `e` is
/// one.
pub fn chunk_error(e: &io::Error) -> Option<ChunkError> {
    e.get_ref()?.downcast_ref::<ChunkError>().copied()
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Gate::Refused(e) = this.gate {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        if matches!(this.gate, Gate::Held) {
            if !this.kept.is_empty() {
                // the next request waits for `serve`, as Pingora's own
                // read of pipelined bytes waits
                return Poll::Pending;
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() > start {
                this.kept.extend_from_slice(&buf.filled()[start..]);
                buf.set_filled(start);
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        let from_kept = !this.kept.is_empty();
        if from_kept {
            let n = this.kept.len().min(buf.remaining());
            buf.put_slice(&this.kept[..n]);
        } else {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        let got = &buf.filled()[start..];
        // how many of `got` belong to this request
        let take = match &mut this.gate {
            Gate::Open => got.len(),
            Gate::Length(left) => {
                let take = got.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    this.gate = Gate::Held;
                }
                take
            }
            Gate::Chunked(decoder) => match decoder.feed(got) {
                Ok(take) => {
                    if decoder.done() {
                        this.gate = Gate::Held;
                    }
                    take
                }
                Err(e) => {
                    buf.set_filled(start);
                    this.gate = Gate::Refused(e);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            },
            Gate::Held | Gate::Refused(_) => 0,
        };
        if from_kept {
            this.kept.advance(take);
        } else if take < got.len() {
            this.kept.extend_from_slice(&got[take..]);
        }
        buf.set_filled(start + take);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

// Peeking would read past the gate; Pingora's default (no peek) is kept.
#[async_trait]
impl Peek for Guarded {}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("gate", &self.gate)
            .field("kept", &self.kept.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A guarded end of a pipe, and the client's end.
    fn pipe() -> (Guarded, DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        (Guarded::new(Box::new(server)), client)
    }

    /// One read; `None` when it would wait.
    async fn read_now(g: &mut Guarded) -> Option<io::Result<Vec<u8>>> {
        let mut space = [0u8; 256];
        poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *g).poll_read(cx, &mut buf) {
                Poll::Ready(r) => Poll::Ready(Some(r.map(|()| buf.filled().to_vec()))),
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await
    }

    #[tokio::test]
    async fn open_passes_everything() {
        let (mut g, mut c) = pipe();
        c.write_all(b"3;x=1\nabc").await.unwrap();
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"3;x=1\nabc");
    }

    #[tokio::test]
    async fn a_chunked_body_passes_then_the_next_request_is_kept() {
        let (mut g, mut c) = pipe();
        // the head's read brought the first chunk along
        g.expect(Expect::Chunked, b"3\r\nabc\r\n");
        c.write_all(b"0\r\n\r\nGET /next HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"3\r\nabc\r\n");
        // the body ends in the middle of this read
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"0\r\n\r\n");
        // Pingora's wait for more: nothing is given out
        assert!(read_now(&mut g).await.is_none());
        c.write_all(b"Host: a\r\n\r\n").await.unwrap();
        assert!(read_now(&mut g).await.is_none());
        // between requests, the kept bytes come first, then the socket
        g.open();
        let mut next = vec![0u8; 31];
        g.read_exact(&mut next).await.unwrap();
        assert_eq!(next, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_grammar_error_fails_the_read_and_every_later_one() {
        let (mut g, mut c) = pipe();
        g.expect(Expect::Chunked, b"");
        c.write_all(b"3;x=1\nabc\r\n0\r\n\r\n").await.unwrap();
        for _ in 0..2 {
            let e = read_now(&mut g).await.unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(
                matches!(chunk_error(&e), Some(ChunkError::Malformed(_))),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_empty_chunk_size_is_refused() {
        let (mut g, _c) = pipe();
        g.expect(Expect::Chunked, b"\r\n3\r\nabc\r\n0\r\n\r\n");
        let e = read_now(&mut g).await.unwrap().unwrap_err();
        assert!(chunk_error(&e).is_some(), "{e:?}");
    }

    #[tokio::test]
    async fn a_content_length_body_is_bounded() {
        let (mut g, mut c) = pipe();
        g.expect(Expect::Length(5), b"he");
        c.write_all(b"lloGET").await.unwrap();
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"he");
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"llo");
        assert!(read_now(&mut g).await.is_none());
        g.open();
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"GET");
    }

    #[tokio::test]
    async fn without_a_body_the_next_bytes_are_kept_but_the_close_passes() {
        let (mut g, mut c) = pipe();
        g.expect(Expect::Nothing, b"");
        c.write_all(b"GET").await.unwrap();
        assert!(read_now(&mut g).await.is_none());
        let (mut g, c) = pipe();
        g.expect(Expect::Nothing, b"");
        drop(c);
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"");
    }

    #[tokio::test]
    async fn an_upgrade_is_not_bounded() {
        let (mut g, mut c) = pipe();
        g.expect(Expect::Unbounded, b"frame");
        c.write_all(b"more").await.unwrap();
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"frame");
        assert_eq!(read_now(&mut g).await.unwrap().unwrap(), b"more");
    }
}
