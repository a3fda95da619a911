//! Fault switches tests flip while clients run: no leader, rate limiting,
//! slowness, dropped connections, the per-client connection limit, and the
//! choice between old and current Consul for deregistering an unknown ID.
//! Socket-level faults (unreachable, drop, limit) act in
//! [`server`](super::server); the rest act on each request here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::blocking::Consistency;
use super::http::ApiError;
use super::stats::Stats;

/// Consul's `limits.http_max_conns_per_client` default.
pub const DEFAULT_MAX_CONNS_PER_CLIENT: usize = 200;

pub struct Faults {
    /// When the leader was lost; `None` while there is one.
    no_leader_since: Mutex<Option<Instant>>,
    rate_limited: AtomicBool,
    drop_connections: AtomicBool,
    slow_nanos: AtomicU64,
    max_conns_per_client: AtomicUsize,
    deregister_unknown_404: AtomicBool,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            no_leader_since: Mutex::new(None),
            rate_limited: AtomicBool::new(false),
            drop_connections: AtomicBool::new(false),
            slow_nanos: AtomicU64::new(0),
            max_conns_per_client: AtomicUsize::new(DEFAULT_MAX_CONNS_PER_CLIENT),
            deregister_unknown_404: AtomicBool::new(false),
        }
    }
}

impl Faults {
    pub fn set_no_leader(&self, on: bool) {
        let mut since = self
            .no_leader_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (on, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, _) => *since = None,
            (true, Some(_)) => {}
        }
    }

    /// `Some(time since the leader was lost)` while there is no leader.
    pub fn leaderless_for(&self) -> Option<Duration> {
        self.no_leader_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|since| since.elapsed())
    }

    /// Reads need a leader unless they allow stale data; writes always do.
    pub fn require_leader(&self, consistency: Consistency) -> Result<(), ApiError> {
        if self.leaderless_for().is_some() && consistency != Consistency::Stale {
            return Err(ApiError::new(500, "No cluster leader"));
        }
        Ok(())
    }

    pub fn set_rate_limited(&self, on: bool) {
        self.rate_limited.store(on, Ordering::SeqCst);
    }

    pub fn rate_limited(&self) -> bool {
        self.rate_limited.load(Ordering::SeqCst)
    }

    pub fn set_drop_connections(&self, on: bool) {
        self.drop_connections.store(on, Ordering::SeqCst);
    }

    pub fn drop_connections(&self) -> bool {
        self.drop_connections.load(Ordering::SeqCst)
    }

    pub fn set_slow(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.slow_nanos.store(nanos, Ordering::SeqCst);
    }

    pub fn slow(&self) -> Duration {
        Duration::from_nanos(self.slow_nanos.load(Ordering::SeqCst))
    }

    pub fn set_max_conns_per_client(&self, n: usize) {
        self.max_conns_per_client.store(n, Ordering::SeqCst);
    }

    pub fn max_conns_per_client(&self) -> usize {
        self.max_conns_per_client.load(Ordering::SeqCst)
    }

    pub fn set_deregister_unknown_404(&self, on: bool) {
        self.deregister_unknown_404.store(on, Ordering::SeqCst);
    }

    pub fn deregister_unknown_404(&self) -> bool {
        self.deregister_unknown_404.load(Ordering::SeqCst)
    }
}

/// The `drop_connections` fault: read the request head (so the request can
/// be counted), then close without a byte of response.
pub async fn drop_after_request(mut stream: TcpStream, stats: &Stats) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), read_head)
        .await
        .is_err()
    {
        // Nothing complete arrived: still close, uncounted.
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    if method.is_empty() {
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = super::http::percent_decode(path, false);
    stats.record(method, &path, query, true);
}
