//! How many client connections laneway holds open, and the open file limit
//! that bounds them. Request path (one atomic add and sub per connection);
//! the file limit is set once at start.
//!
//! [`ConnLimit`] counts the client connections open in the process, across
//! every worker and listener (plain HTTP, HTTPS, h2c). Beyond `[proxy]
//! max_connections` a new connection is closed at once (plain HTTP
//! listeners first get a minimal `503`; TLS and h2c ones are just closed),
//! counted in `laneway_connections_shed_total` and logged at most every
//! [`WARN_EVERY`]. Connections already open keep being served: laneway
//! degrades by refusing newcomers rather than by running out of file
//! descriptors, where every `accept`, upstream `connect` and file open
//! fails alike.
//!
//! When `accept` itself fails with EMFILE (the process is out of file
//! descriptors anyway), pingora-core's listener logs `Accept() failed` at
//! error level and sleeps one second before accepting again on that
//! listener (it does not spin); other accept errors, ENFILE (the system's
//! table is full) included, are logged and retried at once. Raising the
//! soft limit to the hard one at start ([`raise_open_file_limit`]) and
//! keeping `max_connections` within it keep laneway away from that path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::config::Config;

/// Shortest time between two warnings about shed connections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long the `503` of a shed connection may take to write.
const SHED_WRITE: Duration = Duration::from_millis(200);

/// The open client connections of the process and their limit.
pub struct ConnLimit {
    open: AtomicUsize,
    max: usize,
    shed: IntCounter,
    /// Shed since the last warning.
    shed_unreported: AtomicU64,
    /// Milliseconds after `started` of the last warning (0: none yet).
    last_warn_ms: AtomicU64,
    started: Instant,
}

impl ConnLimit {
    /// At most `max` open connections; `shed` counts the ones closed
    /// beyond (`laneway_connections_shed_total`).
    pub fn new(max: usize, shed: IntCounter) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            open: AtomicUsize::new(0),
            max,
            shed,
            shed_unreported: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Counts a new connection in, or `None` when `max` are open already
    /// (the connection is then counted as shed).
    pub fn try_open(self: &Arc<Self>) -> Option<ConnPermit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before < self.max {
            return Some(ConnPermit(self.clone()));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.shed.inc();
        self.shed_unreported.fetch_add(1, Ordering::Relaxed);
        self.maybe_warn();
        None
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Warns about shed connections at most every [`WARN_EVERY`], with
    /// how many were shed since the last warning.
    fn maybe_warn(&self) {
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .last_warn_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another worker warns
        }
        let shed = self.shed_unreported.swap(0, Ordering::Relaxed);
        warn!(
            max_connections = self.max,
            shed,
            "client connections beyond [proxy] max_connections closed at once; raise it (and the open file limit) if the load is expected"
        );
    }
}

/// One open client connection, counted until dropped.
pub struct ConnPermit(Arc<ConnLimit>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `inner` behind the connection limit: a connection beyond it is shed
/// before `inner` sees it; an admitted one is counted until `inner` is done
/// with it (keep-alive reuse included).
pub struct Limited<A> {
    inner: Arc<A>,
    limit: Arc<ConnLimit>,
    /// Plain HTTP/1 listener: a shed connection gets a `503` first.
    answer_503: bool,
}

impl<A> Limited<A> {
    pub fn new(inner: Arc<A>, limit: Arc<ConnLimit>, answer_503: bool) -> Limited<A> {
        Limited {
            inner,
            limit,
            answer_503,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_permit) = self.limit.try_open() else {
            shed(stream, self.answer_503, self.limit.max).await;
            return None;
        };
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The answer of a shed connection on a plain HTTP listener.
fn shed_response(max: usize) -> String {
    let body = format!(
        "laneway: too many open connections ([proxy] max_connections = {max}); try again\n"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Closes a connection beyond the limit, after a `503` when `answer` (the
/// client may see a reset instead if it had sent a request already: its
/// bytes are never read).
async fn shed(mut stream: Stream, answer: bool, max: usize) {
    if answer {
        let resp = shed_response(max);
        let write = async {
            stream.write_all(resp.as_bytes()).await?;
            stream.flush().await
        };
        match tokio::time::timeout(SHED_WRITE, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "cannot write 503 to a shed connection"),
            Err(_) => debug!("503 to a shed connection not written in time"),
        }
    }
}

/// Descriptors kept for everything but client and upstream connections:
/// listeners, the admin API, Consul, stores, logs, certificates.
pub const FD_RESERVE: u64 = 256;

/// How many client connections `soft` open files allow when each may hold
/// an upstream connection too, after `reserve` descriptors and `pooled`
/// idle upstream connections.
pub fn connection_budget(soft: u64, reserve: u64, pooled: u64) -> u64 {
    soft.saturating_sub(reserve).saturating_sub(pooled) / 2
}

/// Raises the soft open file limit (RLIMIT_NOFILE) to the hard one, logs
/// both, and warns when `[proxy] max_connections` exceeds what the limit
/// allows (see [`connection_budget`]). Called once at start.
pub fn raise_open_file_limit(cfg: &Config) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // The kernel refuses an unlimited soft limit for files: with no hard
    // limit, aim at fs.nr_open (2^20 unless changed).
    let want = limit.maximum.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    });
    if limit.current.is_some_and(|soft| soft < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(e) => warn!(error = %e, wanted = want, "cannot raise the open file limit"),
        }
    }
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    info!(soft, hard, "open file limit");
    let max = cfg.proxy.max_connections as u64;
    let pooled = cfg.proxy.upstream_keepalive as u64;
    let budget = connection_budget(soft, FD_RESERVE, pooled);
    if max > budget {
        warn!(
            max_connections = max,
            open_file_limit = soft,
            reserve = FD_RESERVE,
            upstream_keepalive = pooled,
            allowed = budget,
            "[proxy] max_connections exceeds what the open file limit allows (each client connection may hold an upstream one too): lower it to {budget} or raise the limit (ulimit -n, systemd LimitNOFILE=)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("shed_test", "test").unwrap()
    }

    #[test]
    fn connections_beyond_the_limit_are_shed_and_counted() {
        let shed = counter();
        let limit = ConnLimit::new(2, shed.clone());
        let a = limit.try_open().expect("first");
        let b = limit.try_open().expect("second");
        assert!(limit.try_open().is_none());
        assert!(limit.try_open().is_none());
        assert_eq!(shed.get(), 2);
        assert_eq!(limit.open(), 2);
        drop(a);
        assert_eq!(limit.open(), 1);
        let c = limit
            .try_open()
            .expect("a closed connection frees its place");
        assert!(limit.try_open().is_none());
        assert_eq!(shed.get(), 3);
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn the_limit_holds_under_concurrent_opens() {
        let shed = counter();
        let limit = ConnLimit::new(100, shed.clone());
        let admitted: Vec<Vec<ConnPermit>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let limit = limit.clone();
                    s.spawn(move || (0..100).filter_map(|_| limit.try_open()).collect())
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let n: usize = admitted.iter().map(Vec::len).sum();
        assert_eq!(n, 100);
        assert_eq!(shed.get(), 300);
        assert_eq!(limit.open(), 100);
        drop(admitted);
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let limit = ConnLimit::new(0, counter());
        assert!(limit.try_open().is_none());
        let first = limit.last_warn_ms.load(Ordering::Relaxed);
        assert_ne!(first, 0, "the first shed connection warns");
        for _ in 0..10 {
            assert!(limit.try_open().is_none());
        }
        assert_eq!(limit.last_warn_ms.load(Ordering::Relaxed), first);
        assert_eq!(limit.shed_unreported.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn the_503_is_one_complete_response() {
        let resp = shed_response(5);
        let end = super::super::http1::scan_head(resp.as_bytes())
            .unwrap()
            .expect("a complete head");
        let head = super::super::http1::parse_response_head(&resp.as_bytes()[..end]).unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(
            head.framing,
            super::super::http1::Framing::Length((resp.len() - end) as u64)
        );
        assert!(resp.contains("max_connections = 5"));
    }

    #[test]
    fn the_budget_keeps_a_reserve_and_an_upstream_per_client() {
        assert_eq!(connection_budget(1024, 256, 0), 384);
        assert_eq!(connection_budget(65536, 256, 1024), 32128);
        assert_eq!(connection_budget(100, 256, 0), 0);
    }
}
