//! The audit trail: every change made through the admin listener (lanes,
//! the baseline, registrations, maintenance), every rules reload, and every
//! registration change the Consul watcher sees, with who made it and the state before
//! and after. Each entry is logged on the `laneway::audit` target (one
//! JSON object per line with `--log-format json`) and kept in a bounded
//! in-memory ring for `GET /api/v1/audit?since=<seq>` and the dashboard.
//! Control plane only.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

/// Entries kept for `/api/v1/audit`; older ones are only in the log.
pub const RING: usize = 2_000;

/// One change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// Increases by one per entry, from 1 at start.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The token name, `anonymous`, or `consul` for the watcher's view.
    pub who: String,
    /// e.g. `lane.create`, `lane.patch`, `lane.delete`, `baseline.patch`,
    /// `instance.register`, `maintenance.set`.
    pub action: String,
    /// What changed: a lane name, an instance id, ...
    pub target: String,
    pub before: Value,
    pub after: Value,
}

/// The ring of recent entries.
pub struct Audit {
    inner: Mutex<Ring>,
}

struct Ring {
    next: u64,
    entries: VecDeque<Entry>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::new()
    }
}

impl Audit {
    pub fn new() -> Audit {
        Audit {
            inner: Mutex::new(Ring {
                next: 1,
                entries: VecDeque::with_capacity(64),
            }),
        }
    }

    /// Records a change: logged at once, kept in the ring.
    pub fn record(
        &self,
        who: &str,
        action: &str,
        target: &str,
        before: Value,
        after: Value,
    ) -> u64 {
        let at_ms = crate::allocation::pools::unix_now_ms();
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.next;
        ring.next += 1;
        tracing::info!(
            target: "laneway::audit",
            seq,
            who,
            action,
            target = target,
            before = %before,
            after = %after,
            "audit"
        );
        if ring.entries.len() == RING {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Entry {
            seq,
            at_ms,
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            before,
            after,
        });
        seq
    }

    /// The kept entries with `seq > since`, oldest first, and whether
    /// entries after `since` were already dropped from the ring.
    pub fn since(&self, since: u64) -> (Vec<Entry>, bool) {
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = ring.entries.front().map_or(ring.next, |e| e.seq);
        let truncated = since + 1 < oldest;
        let entries = ring
            .entries
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        (entries, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_numbered_and_read_since_a_sequence() {
        let a = Audit::new();
        assert_eq!(
            a.record(
                "ops",
                "lane.create",
                "t-1",
                Value::Null,
                json!({"name": "t-1"})
            ),
            1
        );
        assert_eq!(
            a.record(
                "anonymous",
                "lane.delete",
                "t-1",
                json!({"name": "t-1"}),
                Value::Null
            ),
            2
        );
        let (all, truncated) = a.since(0);
        assert!(!truncated);
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].who.as_str(), all[1].action.as_str()),
            ("ops", "lane.delete")
        );
        assert_eq!(all[1].before, json!({"name": "t-1"}));
        let (later, _) = a.since(1);
        assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(a.since(2).0.is_empty());
    }

    #[test]
    fn the_ring_is_bounded_and_says_when_it_dropped_entries() {
        let a = Audit::new();
        for i in 0..RING + 5 {
            a.record(
                "x",
                "lane.create",
                &format!("t-{i}"),
                Value::Null,
                Value::Null,
            );
        }
        let (all, truncated) = a.since(0);
        assert_eq!(all.len(), RING);
        assert!(truncated);
        assert_eq!(all[0].seq, 6);
        let (tail, truncated) = a.since(5);
        assert_eq!(tail.len(), RING);
        assert!(!truncated);
    }
}
