//! A connection handed between laneway's front ends and its HTTP engines as
//! a pingora [`Stream`]: TLS terminated by [`super::tls`], or bytes already
//! read that must be read again (an h2c preface sniffed by
//! [`super::front`], a request head the h1 engine hands to the Pingora
//! engine). It carries what the engines ask of a connection: the ALPN
//! protocol (so Pingora's server picks HTTP/2), the TLS digest (so the
//! request's scheme is `https`) and the socket digest (client and
//! destination addresses, which name VIP and port lanes). Request path.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// `inner` with bytes to replay before it and connection facts for the
/// engines.
pub struct Wrapped<T> {
    inner: T,
    prefix: Bytes,
    id: UniqueIDType,
    alpn: Option<ALPN>,
    ssl: Option<Arc<SslDigest>>,
    socket: Option<Arc<SocketDigest>>,
    timing: Vec<Option<TimingDigest>>,
}

impl<T> Wrapped<T> {
    /// Wraps `inner`, taking the connection facts from `from` (the stream
    /// it was accepted as).
    pub fn new<F: UniqueID + Ssl + GetSocketDigest + GetTimingDigest + ?Sized>(
        inner: T,
        from: &F,
    ) -> Wrapped<T> {
        Wrapped {
            inner,
            prefix: Bytes::new(),
            id: from.id(),
            alpn: from.selected_alpn_proto(),
            ssl: from.get_ssl_digest(),
            socket: from.get_socket_digest(),
            timing: from.get_timing_digest(),
        }
    }

    /// Bytes read already, to be read again first.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = prefix;
        self
    }

    pub fn with_alpn(mut self, alpn: Option<ALPN>) -> Self {
        self.alpn = alpn;
        self
    }

    pub fn with_ssl(mut self, ssl: Option<Arc<SslDigest>>) -> Self {
        self.ssl = ssl;
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Wrapped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Wrapped<T> {
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
impl<T: AsyncWrite + Unpin + Send> Shutdown for Wrapped<T> {
    async fn shutdown(&mut self) {
        // The peer may be gone already; nothing to do about it then.
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl<T> UniqueID for Wrapped<T> {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl<T> Ssl for Wrapped<T> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl<T> GetTimingDigest for Wrapped<T> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.timing.clone()
    }
}

impl<T> GetProxyDigest for Wrapped<T> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl<T> GetSocketDigest for Wrapped<T> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }
}

#[async_trait]
impl<T: Send> Peek for Wrapped<T> {}

impl<T> fmt::Debug for Wrapped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped")
            .field("id", &self.id)
            .field("alpn", &self.alpn)
            .field("tls", &self.ssl.is_some())
            .field("replay", &self.prefix.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut w = Wrapped::new(b, &tokio::io::duplex(1).0).with_prefix(Bytes::from("GET / "));
        a.write_all(b"HTTP/1.1\r\n").await.unwrap();
        drop(a);
        let mut all = String::new();
        w.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");
    }
}
