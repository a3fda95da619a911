//! Blocking queries and read metadata, as Consul's `parseWait`,
//! `parseConsistency`, `blockingQuery` and `setMeta` do them:
//!
//! - `?index=N&wait=D`: N absent or 0 answers at once; otherwise hold until
//!   the result's index is above N or the wait ends, then answer the current
//!   data with its (possibly unchanged) index.
//! - `wait` is a Go duration; ≤ 0 means the 5 min default, above 10 min is
//!   capped, and up to wait/16 of random jitter is added.
//! - Every read answer carries `X-Consul-Index` (never 0),
//!   `X-Consul-KnownLeader` and `X-Consul-LastContact`.
//!
//! The index is the store's single global index, so any write wakes every
//! blocked query: a return is no promise that the result changed.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::duration::parse_go_nanos;
use super::http::{set_header, ApiError, Query, Req};
use super::shared::Shared;
use super::state::{Store, DATACENTER};

pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
pub const JITTER_FRACTION: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader (Consul's default mode).
    Default,
    Stale,
    Consistent,
}

#[derive(Clone, Copy, Debug)]
pub struct QueryOpts {
    pub index: u64,
    /// The wait as the client asked (nanoseconds; `None` if absent).
    pub requested_wait: Option<i128>,
    pub consistency: Consistency,
}

/// Parses `?stale`, `?consistent`, `?wait` and `?index` in Consul's order,
/// with Consul's exact error texts.
pub fn parse(q: &Query) -> Result<QueryOpts, ApiError> {
    let stale = q.has("stale");
    let consistent = q.has("consistent");
    if stale && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let consistency = match (stale, consistent) {
        (true, _) => Consistency::Stale,
        (_, true) => Consistency::Consistent,
        _ => Consistency::Default,
    };
    let mut requested_wait = None;
    if let Some(wait) = q.get("wait").filter(|w| !w.is_empty()) {
        requested_wait =
            Some(parse_go_nanos(wait).ok_or_else(|| ApiError::bad_request("Invalid wait time"))?);
    }
    let mut index = 0;
    if let Some(text) = q.get("index").filter(|i| !i.is_empty()) {
        // Go's strconv.ParseUint: digits only, no sign, no spaces.
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request("Invalid index"));
        }
        index = text
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid index"))?;
    }
    Ok(QueryOpts {
        index,
        requested_wait,
        consistency,
    })
}

/// Everything a read endpoint checks before it runs, in Consul's order:
/// namespace and partition (Enterprise-only in Consul CE), consistency,
/// wait and index, then the datacenter.
pub fn parse_read(req: &Req) -> Result<QueryOpts, ApiError> {
    enterprise_meta(req)?;
    let opts = parse(&req.query)?;
    datacenter(req)?;
    Ok(opts)
}

/// `?ns=` / `?partition=` (and their headers): only `default` is served;
/// any other value is refused with Consul CE's message.
pub fn enterprise_meta(req: &Req) -> Result<(), ApiError> {
    for (param, header, feature) in [
        ("ns", "x-consul-namespace", "Namespaces are"),
        ("partition", "x-consul-partition", "Partitions are"),
    ] {
        let canonical = if param == "ns" {
            "X-Consul-Namespace"
        } else {
            "X-Consul-Partition"
        };
        let h = req
            .headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !h.is_empty() && h != "default" {
            return Err(ApiError::bad_request(format!(
                "Invalid header: \"{canonical}\" - {feature} a Consul Enterprise feature"
            )));
        }
        let q = req.query.get(param).unwrap_or("");
        if !q.is_empty() && q != "default" {
            return Err(ApiError::bad_request(format!(
                "Invalid query parameter: \"{param}\" - {feature} a Consul Enterprise feature"
            )));
        }
    }
    Ok(())
}

/// `?dc=`: the double is the one datacenter `dc1`.
pub fn datacenter(req: &Req) -> Result<(), ApiError> {
    match req.query.get("dc") {
        Some(dc) if !dc.is_empty() && dc != DATACENTER => {
            Err(ApiError::new(500, "No path to datacenter"))
        }
        _ => Ok(()),
    }
}

/// How long a blocking query may be held: the default for none or ≤ 0,
/// capped at 10 min, plus up to 1/16 of random jitter.
pub fn effective_wait(requested: Option<i128>) -> Duration {
    let base = match requested {
        Some(n) if n > 0 => {
            let nanos = u64::try_from(n).unwrap_or(u64::MAX);
            Duration::from_nanos(nanos).min(MAX_WAIT)
        }
        _ => DEFAULT_WAIT,
    };
    let span = u64::try_from((base / JITTER_FRACTION).as_nanos()).unwrap_or(u64::MAX);
    let jitter = if span == 0 { 0 } else { fastrand::u64(..span) };
    base + Duration::from_nanos(jitter)
}

/// What a read answer says about the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub index: u64,
    pub known_leader: bool,
    pub last_contact: Duration,
    pub consistency: Consistency,
}

impl Meta {
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        set_header(&mut h, "x-consul-index", self.index.max(1));
        set_header(&mut h, "x-consul-knownleader", self.known_leader);
        set_header(
            &mut h,
            "x-consul-lastcontact",
            self.last_contact.as_millis(),
        );
        let effective = match self.consistency {
            Consistency::Default => "leader",
            Consistency::Stale => "stale",
            Consistency::Consistent => "consistent",
        };
        set_header(&mut h, "x-consul-effective-consistency", effective);
        h
    }
}

/// Runs a read as a (possibly) blocking query: `read` is applied to the
/// store when the query answers, under the same lock as the index it is
/// answered with. Fails with 500 `No cluster leader` if the leader is (or
/// goes) missing and the query does not allow stale data.
pub async fn block<T>(
    sh: &Shared,
    opts: &QueryOpts,
    mut read: impl FnMut(&Store) -> T,
) -> Result<(Meta, T), ApiError> {
    let deadline = Instant::now() + effective_wait(opts.requested_wait);
    let mut wake = sh.subscribe();
    let mut waiting = None;
    loop {
        wake.borrow_and_update();
        sh.faults.require_leader(opts.consistency)?;
        {
            let st = sh.lock();
            let index = st.response_index();
            if opts.index == 0 || index > opts.index || Instant::now() >= deadline {
                let value = read(&st);
                return Ok((meta(sh, index, opts.consistency), value));
            }
        }
        waiting.get_or_insert_with(|| sh.stats.waiting());
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The metadata for an answer at `index` given the leader fault.
pub fn meta(sh: &Shared, index: u64, consistency: Consistency) -> Meta {
    let leaderless = sh.faults.leaderless_for();
    Meta {
        index,
        known_leader: leaderless.is_none(),
        last_contact: if consistency == Consistency::Stale {
            leaderless.unwrap_or_default()
        } else {
            Duration::ZERO
        },
        consistency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_defaults_caps_and_jitters() {
        for _ in 0..200 {
            let w = effective_wait(None);
            assert!(
                w >= DEFAULT_WAIT && w < DEFAULT_WAIT + DEFAULT_WAIT / 16,
                "{w:?}"
            );
            let w = effective_wait(Some(0));
            assert!(w >= DEFAULT_WAIT, "{w:?}");
            let w = effective_wait(Some(-5_000_000_000));
            assert!(w >= DEFAULT_WAIT, "{w:?}");
            let w = effective_wait(Some(3_600_000_000_000));
            assert!(w >= MAX_WAIT && w < MAX_WAIT + MAX_WAIT / 16, "{w:?}");
            let w = effective_wait(Some(1_600_000_000));
            assert!(
                w >= Duration::from_millis(1600) && w < Duration::from_millis(1700),
                "{w:?}"
            );
        }
    }

    #[test]
    fn jitter_is_not_constant() {
        let waits: std::collections::HashSet<_> = (0..50)
            .map(|_| effective_wait(Some(60_000_000_000)))
            .collect();
        assert!(waits.len() > 1);
    }

    #[test]
    fn parses_like_consul() {
        let q = Query::parse("index=42&wait=60000ms&stale");
        let o = parse(&q).unwrap();
        assert_eq!(o.index, 42);
        assert_eq!(o.requested_wait, Some(60_000_000_000));
        assert_eq!(o.consistency, Consistency::Stale);
        for (query, msg) in [
            ("wait=5", "Invalid wait time"),
            ("wait=abc", "Invalid wait time"),
            ("index=-1", "Invalid index"),
            ("index=%2B5", "Invalid index"),
            ("index=x", "Invalid index"),
            (
                "stale&consistent",
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ),
        ] {
            let e = parse(&Query::parse(query)).unwrap_err();
            assert_eq!((e.status, e.msg.as_str()), (400, msg), "{query}");
        }
        // Present but empty is the same as absent, as with Go's Get.
        let o = parse(&Query::parse("index=&wait=")).unwrap();
        assert_eq!((o.index, o.requested_wait), (0, None));
    }
}
