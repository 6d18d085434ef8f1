//! A deterministic hasher for the engine's maps.
//!
//! `RandomState` would make nothing observable differ (no output depends on map order), but it
//! makes performance and memory layout differ run to run and pulls randomness into a crate that
//! promises none. Ids are u128 chosen by clients; this hasher folds the two halves through two
//! 64x64->128 multiplications, which spreads sequential ids over the whole table.
//!
//! The seed is fixed and public, so a client that knows it could choose colliding ids and slow
//! lookups down (hash flooding). It cannot change any result. A per-cluster seed carried in the
//! log is the upgrade path if that ever matters.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const SEED_0: u64 = 0x243f_6a88_85a3_08d3;
const SEED_1: u64 = 0x1319_8a2e_0370_7344;
const SEED_2: u64 = 0xa409_3822_299f_31d0;

#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasher {
    hash: u64,
}

pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
pub type IdMap<K, V> = HashMap<K, V, IdBuildHasher>;
pub type IdSet<K> = HashSet<K, IdBuildHasher>;

fn folded_multiply(left: u64, right: u64) -> u64 {
    let product = (left as u128).wrapping_mul(right as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

impl IdHasher {
    fn mix(&mut self, value: u64) {
        let first = folded_multiply(value ^ SEED_0 ^ self.hash, SEED_1);
        self.hash = folded_multiply(first ^ SEED_2, SEED_1.rotate_left(17));
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(value as u64);
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn write_u128(&mut self, value: u128) {
        self.hash = mix_u128(self.hash, value);
    }
}

fn mix_u128(state: u64, value: u128) -> u64 {
    let low = value as u64;
    let high = (value >> 64) as u64;
    let first = folded_multiply(low ^ SEED_0 ^ state, SEED_1);
    folded_multiply(first ^ high ^ SEED_2, SEED_1.rotate_left(17))
}

/// The hash of one id, as `IdHasher` computes it for a `u128` key (used by `IdIndex`).
pub(crate) fn hash_id(id: u128) -> u64 {
    mix_u128(0, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_the_top_bits() {
        let build = IdBuildHasher::default();
        let mut seen = std::collections::BTreeSet::new();
        for id in 0u128..1024 {
            seen.insert(build.hash_one(id) >> 54);
        }
        // 1024 ids over 1024 top-10-bit buckets: a good spread fills well over half of them.
        assert!(seen.len() > 550, "{}", seen.len());
        assert_eq!(
            build.hash_one(7u128),
            IdBuildHasher::default().hash_one(7u128)
        );
        assert_eq!(build.hash_one(7u128), hash_id(7));
    }
}
