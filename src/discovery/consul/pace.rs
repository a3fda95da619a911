//! Pacing of the Consul watch loops: a token bucket so a loop never spins
//! (an index that does not advance, or a reset to 0, answers at once), and
//! exponential backoff with full jitter after errors.
//!
//! Why not a crate: `governor` and `backoff` do far more (keyed limiters,
//! clocks, retry combinators) than two loops that each need "wait before
//! the next request" need; each is a dozen lines here.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::client::{ConsulClient, ConsulError};

/// The burst of every watch loop's bucket: a few changes in a row are
/// seen at once; a sustained stream is paced at `[discovery] rate`.
pub const WATCH_BURST: u32 = 5;

/// A token bucket: `rate` requests per second, bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// How long to wait before the next request may go, taking its token.
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&mut self) {
        let wait = self.take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Exponential backoff with full jitter: after the n-th consecutive error
/// wait a random time in `[base, min(cap, base × 2^n)]`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait after one more failure.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let span = ceiling.saturating_sub(self.base).as_millis() as u64;
        self.base + Duration::from_millis(fastrand::u64(0..=span))
    }
}

/// The index to send next, per Consul's rules: an index that went
/// backwards (snapshot restore, another server's stale view) or is 0
/// resets the watch to 0, which answers at once with the current state.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned == 0 || returned < previous {
        0
    } else {
        returned
    }
}

/// What one round of a blocking watch got.
pub enum Round<T> {
    /// An answer (`None`: 404) and the index the watch now holds.
    Answer(Option<T>, u64),
    /// A failed request, and how long the loop now waits.
    Failed(ConsulError, Duration),
}

/// Runs a blocking query on `path` for ever: paced by a token bucket
/// (`rate`/s, burst [`WATCH_BURST`]), holding the index by
/// [`next_index`], backing off with jitter after errors. `round` sees every
/// answer and error; returning false ends the loop.
pub async fn blocking_loop<T, F, Fut>(
    client: &ConsulClient,
    path: &str,
    wait: Duration,
    rate: f64,
    mut round: F,
) where
    T: DeserializeOwned,
    F: FnMut(Round<T>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut index = 0;
    let mut bucket = TokenBucket::new(rate, WATCH_BURST);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        bucket.acquire().await;
        let go_on = match client.read::<T>(path, &[], Some((index, wait))).await {
            Ok((value, meta)) => {
                backoff.reset();
                index = next_index(index, meta.index);
                round(Round::Answer(value, index)).await
            }
            Err(e) => {
                let pause = backoff.next_wait();
                let go_on = round(Round::Failed(e, pause)).await;
                tokio::time::sleep(pause).await;
                go_on
            }
        };
        if !go_on {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(b.take(start), Duration::ZERO);
        }
        let wait = b.take(start);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // A second later the bucket is full again (never above the burst).
        let later = start + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.take(later), Duration::ZERO);
        }
        assert!(b.take(later) > Duration::ZERO);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..20 {
            let d = b.next_wait();
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
        assert_eq!(b.failures(), 20);
        b.reset();
        assert_eq!(b.failures(), 0);
        let first = b.next_wait();
        assert_eq!(first, Duration::from_millis(100), "first wait is the base");
    }

    #[test]
    fn index_resets_when_it_goes_backwards_or_is_zero() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(9, 3), 0);
        assert_eq!(next_index(9, 0), 0);
    }
}
