//! The front of the HTTPS (`[tls] listen`) and h2c (`[proxy] h2c_listen`)
//! listeners: terminates TLS ([`super::tls`]) or sniffs the HTTP/2
//! connection preface, then hands the connection to an engine:
//! - HTTP/2 (ALPN `h2`, or the h2c preface) to the Pingora engine, which
//!   serves HTTP/2 downstream (gRPC included) and speaks HTTP/1.1 or
//!   HTTP/2 upstream;
//! - HTTP/1.x to the configured engine (the lean h1 engine by default), so
//!   HTTPS/1.1 keeps the fast path.
//!
//! Why HTTP/2 goes through Pingora rather than hyper or h2 directly:
//! Pingora's `ProxyHttp` engine already carries every laneway rule (lane,
//! route, version, header edits, retries, errors, metrics) for HTTP/1.x,
//! and Pingora's server and connectors speak HTTP/2 on both sides with
//! trailers and streaming bodies. A third engine on hyper would duplicate
//! that logic for a protocol that is a small share of test traffic.
//!
//! Connections handed to the Pingora engine get laneway's request-head and
//! keep-alive timeouts ([`super::pingora_conn`]). Request path.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::AsyncReadExt;
use tracing::debug;

use super::connect::Tunnels;
use super::h1::H1App;
use super::pingora_conn::{self, ConnTimeouts};
use super::pingora_engine::PingoraProxy;
use super::stream::Wrapped;
use super::tls::Terminator;
use crate::config::Engine;
use crate::telemetry::Metrics;

/// The HTTP/2 connection preface of a client.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One worker's front for TLS or h2c listeners.
pub struct Front {
    pub h1: Arc<H1App>,
    pub pingora: Arc<HttpProxy<PingoraProxy>>,
    pub engine: Engine,
    /// `Some` on HTTPS listeners.
    pub tls: Option<Arc<Terminator>>,
    /// The time limits of connections the Pingora engine serves; `head`
    /// also bounds the wait for a client's first bytes on an h2c listener.
    pub timeouts: ConnTimeouts,
    pub metrics: Arc<Metrics>,
    /// Answers CONNECT on h2c listeners' lane entries.
    pub tunnels: Arc<Tunnels>,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = match &self.tls {
            Some(tls) => tls.accept(stream).await?,
            None => self.sniff_h2c(stream).await?,
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        if h2 || self.engine == Engine::Pingora {
            let metrics = Some(&*self.metrics);
            pingora_conn::serve(
                &self.pingora,
                stream,
                shutdown,
                self.timeouts,
                metrics,
                &self.tunnels,
            )
            .await;
        } else {
            // The h1 engine serves the whole connection and returns nothing.
            self.h1.process_new(stream, shutdown).await;
        }
        None
    }
}

impl Front {
    /// Reads until the bytes are or cannot be the HTTP/2 preface; the
    /// stream, with them to be read again, claims ALPN `h2` if they were.
    async fn sniff_h2c(&self, mut stream: Stream) -> Option<Stream> {
        let mut buf = BytesMut::with_capacity(4096);
        let is_h2 = loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                break false;
            }
            if n == H2_PREFACE.len() {
                break true;
            }
            match tokio::time::timeout(self.timeouts.head, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    debug!("h2c listener: connection ended before a request");
                    return None;
                }
            }
        };
        let facts = Wrapped::new((), &*stream);
        let wrapped = Wrapped::new(stream, &facts)
            .with_prefix(buf.freeze())
            .with_alpn(is_h2.then_some(ALPN::H2));
        Some(Box::new(wrapped))
    }
}
