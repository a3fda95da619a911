//! What the server tasks and the test controls share: the store behind one
//! lock, the wake-up signal blocked queries wait on, fault switches, ACL
//! settings, counters, and the runtime the check runners live on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::acl::Acl;
use super::faults::Faults;
use super::state::{Key, Store};
use super::stats::Stats;

pub struct Shared {
    store: Mutex<Store>,
    /// Bumped after every change (index or fault switch); blocked queries
    /// re-evaluate on each bump. The value itself means nothing.
    wake: watch::Sender<u64>,
    pub faults: Faults,
    pub acl: Acl,
    pub stats: Arc<Stats>,
    pub rt: tokio::runtime::Handle,
    /// Running HTTP/TCP/TTL check tasks by check key.
    pub runners: Mutex<HashMap<Key, AbortHandle>>,
    /// How the agent reaps services whose check stays critical:
    /// `(minimum DeregisterCriticalServiceAfter, reap interval)`.
    pub reaper: Mutex<(Duration, Duration)>,
}

/// One write in progress: the store plus the index this write gets if it
/// takes one.
pub struct Tx<'a> {
    pub st: &'a mut Store,
    next: u64,
    used: bool,
}

impl Tx<'_> {
    /// The index of this write; calling it commits the write to moving the
    /// global index (as a raft apply does, even when nothing changed).
    pub fn index(&mut self) -> u64 {
        self.used = true;
        self.next
    }
}

impl Shared {
    pub fn new(rt: tokio::runtime::Handle) -> Shared {
        Shared {
            store: Mutex::new(Store::new()),
            wake: watch::Sender::new(0),
            faults: Faults::default(),
            acl: Acl::default(),
            stats: Arc::new(Stats::default()),
            rt,
            runners: Mutex::new(HashMap::new()),
            // Consul's agent defaults: at least 1 minute, checked every 30 s.
            reaper: Mutex::new((Duration::from_secs(60), Duration::from_secs(30))),
        }
    }

    /// The store, for reads; never held across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` under the store lock. If `f` took an index the global index
    /// moves to it and blocked queries wake.
    pub fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> T) -> T {
        let mut guard = self.lock();
        let next = guard.index + 1;
        let mut tx = Tx {
            st: &mut guard,
            next,
            used: false,
        };
        let out = f(&mut tx);
        let used = tx.used;
        if used {
            guard.index = next;
        }
        drop(guard);
        if used {
            self.wake();
        }
        out
    }

    /// Makes every blocked query look at the store (and faults) again.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}
