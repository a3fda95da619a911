//! The lane store shared through Consul KV (Consul mode): the whole lane
//! store (lanes, entries, quarantine) is one JSON document at
//! `<kv_prefix>/lanes/state`, written only with check-and-set on its
//! `ModifyIndex`. Control plane only.
//!
//! Why one document rather than a key per lane: allocating a VIP or port
//! must check every other lane's entries and write the new lane in one
//! atomic step. With one document, `?cas=` gives exactly that: two laneway
//! instances allocating at the same moment cannot both win, the loser
//! re-reads, re-validates (its lane may now exist, its VIP may be taken)
//! and tries again, and no write is ever lost. Consul's value limit
//! (512 KiB by default) holds about two thousand lanes.
//!
//! Every instance watches the key with a blocking query and adopts what it
//! finds (after the same consistency checks as the local file), so the farm
//! converges on one lane ↔ entry map. The local `lanes.json` keeps a copy
//! for starts while Consul is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use crate::discovery::consul::client::{ConsulClient, KvEntry};
use crate::discovery::consul::pace::{blocking_loop, Round};

use super::lanes::LaneStore;

/// The shared lane document's key and the index of the state held.
pub struct KvLanes {
    pub client: ConsulClient,
    pub key: String,
    /// `ModifyIndex` of the document the local store holds (0: unknown, or
    /// the key does not exist yet).
    held: AtomicU64,
}

/// What a check-and-set attempt did.
pub enum CasOutcome {
    Written,
    /// Someone else wrote first; the local store now holds their state.
    Lost,
}

impl KvLanes {
    pub fn new(client: ConsulClient, prefix: &str) -> KvLanes {
        KvLanes {
            client,
            key: format!("{prefix}/lanes/state"),
            held: AtomicU64::new(0),
        }
    }

    pub fn held_index(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Writes `scratch`'s state if the document is still the one held.
    /// On success the store adopts it; on a lost race the store adopts the
    /// winner's state. Errors leave the store as it was.
    pub async fn publish(
        &self,
        store: &mut LaneStore,
        scratch: LaneStore,
    ) -> Result<CasOutcome, String> {
        let bytes = scratch.encode().map_err(|e| e.to_string())?;
        let cas = self.held_index();
        let written = self
            .client
            .kv_cas(&self.key, bytes, cas)
            .await
            .map_err(|e| format!("cannot save the lanes in Consul KV: {e}"))?;
        if written {
            store.adopt(scratch).map_err(|e| e.to_string())?;
            // Learn the new ModifyIndex (and anything written since).
            if let Err(e) = self.refresh(store).await {
                warn!(error = %e, "lanes saved in Consul KV; re-reading them failed");
                self.held.store(0, Ordering::SeqCst);
            }
            Ok(CasOutcome::Written)
        } else {
            self.refresh(store)
                .await
                .map_err(|e| format!("cannot re-read the lanes from Consul KV: {e}"))?;
            Ok(CasOutcome::Lost)
        }
    }

    /// Reads the document now and adopts it. A missing key leaves the
    /// store as it is (and the held index 0).
    pub async fn refresh(&self, store: &mut LaneStore) -> Result<bool, String> {
        let (entry, _) = self
            .client
            .kv_get(&self.key, None)
            .await
            .map_err(|e| e.to_string())?;
        self.adopt_entry(store, entry)
    }

    /// Adopts `entry` if its index differs from the held one; true if the
    /// store changed.
    pub fn adopt_entry(
        &self,
        store: &mut LaneStore,
        entry: Option<KvEntry>,
    ) -> Result<bool, String> {
        let Some(entry) = entry else {
            self.held.store(0, Ordering::SeqCst);
            return Ok(false);
        };
        if entry.modify_index == self.held_index() {
            return Ok(false);
        }
        let bytes = entry.bytes()?;
        let before = store.scratch();
        store.adopt_encoded(&bytes, &format!("Consul KV {}", self.key))?;
        self.held.store(entry.modify_index, Ordering::SeqCst);
        Ok(!store.same_state(&before))
    }

    /// Watches the document with blocking queries; calls `on_change` with
    /// each new document (never with an error: errors are retried with
    /// backoff and the last good lanes keep serving).
    pub async fn watch<F, Fut>(&self, wait: Duration, rate: f64, mut on_change: F)
    where
        F: FnMut(Option<KvEntry>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let path = format!("/v1/kv/{}", self.key);
        let mut failing = false;
        blocking_loop::<Vec<KvEntry>, _, _>(&self.client, &path, wait, rate, |round| {
            let change = match round {
                Round::Answer(entries, _) => {
                    if failing {
                        info!(key = %self.key, "lane store in Consul KV readable again");
                        failing = false;
                    }
                    let entry = entries.and_then(|e| e.into_iter().find(|e| e.key == self.key));
                    let moved = entry.as_ref().map(|e| e.modify_index) != Some(self.held_index());
                    moved.then(|| on_change(entry))
                }
                Round::Failed(e, _) => {
                    if !failing {
                        warn!(key = %self.key, error = %e, "cannot watch the lane store in Consul KV; serving the last lanes");
                        failing = true;
                    }
                    None
                }
            };
            async move {
                if let Some(change) = change {
                    change.await;
                }
                true
            }
        })
        .await;
    }
}
