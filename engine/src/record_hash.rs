//! The hashes behind the state digest and the hash chain (docs/design.md §2, "Digest and hash
//! chain", format 2).
//!
//! Both are drift detectors, not authenticators: they must tell apart states or histories that a
//! bug, a corrupted byte or a non-deterministic build made different, and the same state must give
//! the same value on every machine. They need not resist someone choosing inputs to collide (the
//! constants are public, as xxh3's are).
//!
//! A 128-byte record (an event, a stored account or transfer) is hashed in two steps, so that the
//! engine can hash each event once and reuse the work for the record it stores:
//! - `Lanes`: the record as eight 16-byte lanes; lane *k* = words (*w*₂ₖ, *w*₂ₖ₊₁), little-endian
//!   u64s. Each lane is folded with its own secret, `fold(w₂ₖ ⊕ S₂ₖ, w₂ₖ₊₁ ⊕ S₂ₖ₊₁)` where
//!   `fold(x, y)` is the xor of the two halves of the 128-bit product `x × y`; even lanes are summed
//!   into `a`, odd lanes into `b` (wrapping u64 sums). A lane can be replaced by subtracting its
//!   term and adding the new one.
//! - `finish(lanes, seed)`: `lo = fold(a ⊕ K₀, b ⊕ K₁ ⊕ seed)`, `hi = fold(a ⊕ K₂ ⊕ seed, b ⊕ K₃)`,
//!   the hash is `hi << 64 | lo`.
//!
//! This is xxh3's short-input construction (one 64×64→128 multiplication per 16 bytes), about a
//! third of the instructions of `xxh3_128` on 128 bytes with its length dispatch.

/// Lane secrets: the first 128 bits of π's fractional part in hexadecimal and onwards
/// (the constants of Blowfish's P-array), so that nobody has to trust how they were chosen.
const SECRETS: [u64; 16] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
    0xd131_0ba6_98df_b5ac,
    0x2ffd_72db_d01a_dfb7,
    0xb8e1_afed_6a26_7e96,
    0xba7c_9045_f12c_7f99,
    0x24a1_9947_b391_6cf7,
    0x0801_f2e2_858e_fcdb,
    0x6158_2b1f_bc44_8d33,
];

/// Finishing constants (the next π digits after `SECRETS`).
const FINISH: [u64; 4] = [
    0xc5d1_b023_2860_85f0,
    0xca41_7918_b8db_38ef,
    0x8e79_dcb0_603a_180e,
    0x6c9e_0e8b_b01e_8a3e,
];

/// Seeds of `finish`, one per kind of hashed thing, so equal bytes of different kinds differ.
pub(crate) const SEED_ACCOUNT: u64 = 1;
pub(crate) const SEED_TRANSFER: u64 = 2;
pub(crate) const SEED_FAILED_ID: u64 = 3;
pub(crate) const SEED_HISTORY_ROW: u64 = 4;
/// Events of a batch: event *i* is finished with `SEED_EVENT + i`, which orders them.
pub(crate) const SEED_EVENT: u64 = 1 << 32;

/// Index of the lane holding `ledger`, `code`, `flags` and `timestamp` in both `Account` and
/// `Transfer` (bytes 112..128).
pub(crate) const LANE_TIMESTAMP: usize = 7;

#[inline(always)]
fn fold(left: u64, right: u64) -> u64 {
    let product = (left as u128).wrapping_mul(right as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The lane sums of a 128-byte record (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lanes {
    pub(crate) even: u64,
    pub(crate) odd: u64,
}

/// The term lane `lane` with words `low`, `high` adds to its sum.
#[inline(always)]
pub(crate) fn lane_term(lane: usize, low: u64, high: u64) -> u64 {
    fold(low ^ SECRETS[2 * lane], high ^ SECRETS[2 * lane + 1])
}

/// The two little-endian words of lane `lane` of `bytes`.
#[inline(always)]
pub(crate) fn lane_words(bytes: &[u8; 128], lane: usize) -> (u64, u64) {
    let word = |index: usize| {
        let start = 8 * index;
        u64::from_le_bytes(bytes[start..start + 8].try_into().expect("8 bytes"))
    };
    (word(2 * lane), word(2 * lane + 1))
}

impl Lanes {
    #[inline(always)]
    pub(crate) fn of(bytes: &[u8; 128]) -> Lanes {
        let mut lanes = Lanes { even: 0, odd: 0 };
        for lane in 0..8 {
            let (low, high) = lane_words(bytes, lane);
            lanes.add(lane, lane_term(lane, low, high));
        }
        lanes
    }

    #[inline(always)]
    fn add(&mut self, lane: usize, term: u64) {
        if lane % 2 == 0 {
            self.even = self.even.wrapping_add(term);
        } else {
            self.odd = self.odd.wrapping_add(term);
        }
    }

    /// These lanes with lane `lane` holding `(low, high)` instead of `(old_low, old_high)`.
    #[inline(always)]
    pub(crate) fn replaced(
        mut self,
        lane: usize,
        (old_low, old_high): (u64, u64),
        (low, high): (u64, u64),
    ) -> Lanes {
        let removed = lane_term(lane, old_low, old_high);
        self.add(lane, lane_term(lane, low, high).wrapping_sub(removed));
        self
    }

    #[inline(always)]
    pub(crate) fn finish(self, seed: u64) -> u128 {
        let low = fold(self.even ^ FINISH[0], self.odd ^ FINISH[1] ^ seed);
        let high = fold(self.even ^ FINISH[2] ^ seed, self.odd ^ FINISH[3]);
        ((high as u128) << 64) | low as u128
    }
}

/// The hash of a 128-byte record.
pub(crate) fn record_hash(bytes: &[u8; 128], seed: u64) -> u128 {
    Lanes::of(bytes).finish(seed)
}

/// An odd multiplier for the balance-like field `field` of the record whose id hashes to
/// `id_hash` (`id_hash::hash_id`): `id_hash << 64 | (id_hash ⊕ S_field) | 1`. Odd, so that `δ × multiplier ≠ 0` (mod 2¹²⁸) for every
/// `δ ≠ 0`: a change of a single balance always changes the digest.
#[inline(always)]
pub(crate) fn field_multiplier(id_hash: u64, field: usize) -> u128 {
    (((id_hash as u128) << 64) | (id_hash ^ SECRETS[field]) as u128) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_lane_equals_hashing_the_changed_record() {
        let mut bytes = [0u8; 128];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(37);
        }
        let before = Lanes::of(&bytes);
        let old = lane_words(&bytes, LANE_TIMESTAMP);
        bytes[120..128].copy_from_slice(&0x1234_5678_u64.to_le_bytes());
        let new = lane_words(&bytes, LANE_TIMESTAMP);
        assert_eq!(before.replaced(LANE_TIMESTAMP, old, new), Lanes::of(&bytes));
        assert_ne!(before, Lanes::of(&bytes));
    }

    #[test]
    fn every_byte_and_the_seed_matter() {
        let base = [7u8; 128];
        let hash = record_hash(&base, SEED_TRANSFER);
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(hash);
        for index in 0..128 {
            let mut changed = base;
            changed[index] ^= 1;
            assert!(
                seen.insert(record_hash(&changed, SEED_TRANSFER)),
                "byte {index}"
            );
        }
        assert_ne!(record_hash(&base, SEED_ACCOUNT), hash);
        assert_ne!(
            record_hash(&base, SEED_EVENT),
            record_hash(&base, SEED_EVENT + 1)
        );
    }

    #[test]
    fn multipliers_are_odd_and_differ_by_field() {
        for id_hash in [0, 1, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            let multipliers: Vec<u128> = (0..5).map(|f| field_multiplier(id_hash, f)).collect();
            assert!(multipliers.iter().all(|m| m % 2 == 1));
            let distinct: std::collections::BTreeSet<_> = multipliers.iter().collect();
            assert_eq!(distinct.len(), 5);
        }
    }
}
