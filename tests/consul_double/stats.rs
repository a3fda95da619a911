//! Counters a test reads to judge a client's behaviour: every request by
//! endpoint and time, connections open now and at peak (an agent allows 200
//! per client IP), connections dropped or refused, and queries blocked now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request the double received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    pub method: String,
    /// The decoded path, e.g. `/v1/health/service/web`.
    pub path: String,
    /// The raw query string, e.g. `index=42&wait=30s`.
    pub query: String,
    /// True when the `drop_connections` fault closed the connection
    /// instead of answering.
    pub dropped: bool,
}

#[derive(Default)]
pub struct Stats {
    log: Mutex<Vec<RequestRecord>>,
    open: AtomicUsize,
    peak: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    rejected: AtomicUsize,
    dropped: AtomicUsize,
    waiting: AtomicUsize,
}

impl Stats {
    pub fn record(&self, method: &str, path: &str, query: &str, dropped: bool) {
        if dropped {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        let rec = RequestRecord {
            at: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            dropped,
        };
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
    }

    pub fn log(&self) -> Vec<RequestRecord> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests for exactly `path` received at or after `since`.
    pub fn count(&self, path: &str, since: Option<Instant>) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.path == path && since.is_none_or(|s| r.at >= s))
            .count()
    }

    pub fn total(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes a connection slot for `client` unless it already holds `max`.
    pub fn open_conn(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ConnSlot> {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let held = per.entry(client).or_insert(0);
        if *held >= max {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        *held += 1;
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Some(ConnSlot {
            stats: self.clone(),
            client,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.open(), Ordering::SeqCst);
    }

    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Marks one query as blocked until the guard drops.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }

    pub fn blocked(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// An open client connection; releases its slot when dropped.
pub struct ConnSlot {
    stats: Arc<Stats>,
    client: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per = self
            .stats
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = per.get_mut(&self.client) {
            *held = held.saturating_sub(1);
        }
        self.stats.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A query blocked in [`block`](super::blocking::block).
pub struct Waiting(Arc<Stats>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
