//! A fast string hasher for the snapshot's lookup tables (host names, lanes,
//! services, pools), used on the request path and by the snapshot compiler.
//!
//! `std`'s SipHash-1-3 costs 20–30 ns for a short key; a trailing-wildcard
//! host lookup hashes up to eight suffixes, so it dominated lookups. This
//! hasher reads 8 bytes per step and mixes with a folded 64×64→128-bit
//! multiply (as wyhash/foldhash do). It is seeded once per process from
//! `std`'s random keys, so table layouts differ between processes.
//!
//! It is not a keyed cryptographic hash. The tables it serves are built from
//! trusted input (route rules, lanes, registrations); requests only look keys
//! up, which cannot lengthen a probe sequence of a table already built.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = HashMap<K, V, FastHash>;
/// A `HashSet` with [`FastHash`].
pub type FastSet<K> = HashSet<K, FastHash>;

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;

/// Builds [`FastHasher`]s with this process's seed.
#[derive(Debug, Clone, Copy)]
pub struct FastHash {
    seed: u64,
}

impl Default for FastHash {
    fn default() -> FastHash {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new().hash_one(0x006c_616e_6577_6179_u64)
        });
        FastHash { seed }
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { state: self.seed }
    }
}

/// The hasher [`FastHash`] builds.
#[derive(Debug, Clone)]
pub struct FastHasher {
    state: u64,
}

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut s = self.state;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            s = fold_mul(s ^ u64::from_le_bytes(word), K0);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            s = fold_mul(s ^ u64::from_le_bytes(word), K0);
        }
        // the length separates "ab" + "" from "a" + "b" and zero padding
        self.state = fold_mul(s ^ bytes.len() as u64, K1);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.state = fold_mul(self.state ^ i, K0);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.state, K1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(s: &str) -> u64 {
        FastHash::default().hash_one(s)
    }

    #[test]
    fn equal_keys_hash_equal_and_maps_work() {
        assert_eq!(hash("user-api"), hash("user-api"));
        let mut m: FastMap<Box<str>, usize> = FastMap::default();
        for i in 0..10_000 {
            m.insert(format!("svc-{i}.example.com").into(), i);
        }
        for i in 0..10_000 {
            assert_eq!(m.get(format!("svc-{i}.example.com").as_str()), Some(&i));
        }
        assert_eq!(m.get("svc-10000.example.com"), None);
    }

    #[test]
    fn close_keys_differ() {
        // padding, length and chunk boundaries all count
        let keys = [
            "",
            "a",
            "a\0",
            "ab",
            "abcdefgh",
            "abcdefgh\0",
            "abcdefghi",
            "bacdefgh",
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a:?} vs {b:?}");
            }
        }
        let (x, y) = (("ab", "c"), ("a", "bc"));
        assert_ne!(
            FastHash::default().hash_one(x),
            FastHash::default().hash_one(y)
        );
    }

    #[test]
    fn buckets_spread() {
        // low bits pick the bucket: structured names must not pile up
        let mut buckets = [0u32; 64];
        for i in 0..64_000 {
            buckets[(hash(&format!("svc-{i:04}")) & 63) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min(), buckets.iter().max());
        assert!(
            min.zip(max).is_some_and(|(lo, hi)| *lo > 800 && *hi < 1200),
            "{buckets:?}"
        );
    }
}
