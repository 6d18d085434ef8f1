//! `IdIndex`: the id → record index map of accounts and transfers.
//!
//! Open addressing with linear probing over one `Vec<u64>`. A slot holds a 32-bit fingerprint of
//! the id and the record's `u32` index; the id itself is not stored, it is already in the record,
//! and a fingerprint match is confirmed by comparing against it. Compared with a
//! `HashMap<u128, u32>` (32-byte buckets, as `u128` is 16-byte aligned, plus a control byte) a
//! slot is 8 bytes, so the table is a quarter of the size and a probe of an absent id (the common
//! case: a new transfer) touches one cache line and no record.
//!
//! Slots come in groups of `GROUP_SLOTS` (8 slots, one cache line). The home slot of an id is in
//! the group named by the top bits of its fingerprint, at the offset named by its low 3 bits. Two
//! kinds of fingerprint fill it (the `SEQUENTIAL` parameter):
//! - *scattered* (accounts): the top 32 bits of the id's hash, as `fingerprint`. Every id lands
//!   anywhere.
//! - *sequential* (transfers): as `sequential_fingerprint`, the hash of the id without its low 3
//!   bits, with those 3 bits as its own low bits. Ids that differ only there (8 consecutive ids,
//!   as clients that number their transfers send them) share a group and fill its line side by
//!   side: a batch of consecutive ids misses cache once per 8 transfers, not once per transfer,
//!   in a table sized for the ledger's capacity (512 MiB for 32M transfers), which is far larger
//!   than any cache. Ids without that pattern spread as before (docs/design.md §2).
//!
//! Growing to twice the slots needs neither the ids nor a rehash: every entry moves to the home
//! its own fingerprint names. Removal (only a rolled back linked chain removes) shifts the
//! following entries back; there are no tombstones, so a probe never walks further than the
//! cluster it starts in.
//!
//! Nothing iterates the table, so its order is never observable. The hash is `IdHasher`'s fixed,
//! public mix (see `id_hash.rs` on hash flooding).

use crate::id_hash::hash_id;
use crate::prefetch::prefetch;

/// An empty slot. An entry never equals it: record indexes are below `u32::MAX`.
const EMPTY: u64 = u64::MAX;

/// Fewest slots a table has once it holds anything.
const SLOTS_MIN: usize = 16;

/// Bits of the hash kept in a slot: a table has at most 2^32 slots.
const FINGERPRINT_BITS: u32 = 32;

/// Slots of a group (one cache line), and the low fingerprint bits that choose one of them.
const GROUP_SLOTS: usize = 8;
const GROUP_BITS: u32 = GROUP_SLOTS.trailing_zeros();
const _: () = assert!(SLOTS_MIN >= 2 * GROUP_SLOTS);
const _: () = assert!(GROUP_SLOTS * core::mem::size_of::<u64>() == 64);

/// What `IdIndex::probe` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The id is stored, with this record index.
    Found(u32),
    /// The id is not stored; its probe ended at this empty slot.
    Vacant(usize),
}

/// The map; `SEQUENTIAL` chooses how ids are fingerprinted (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct IdIndex<const SEQUENTIAL: bool = false> {
    /// Empty, or a power of two of at least `SLOTS_MIN`.
    slots: Vec<u64>,
    len: usize,
    /// `slots.len() - 1` (0 when empty).
    mask: usize,
    /// `FINGERPRINT_BITS - log2(slots.len())`: a fingerprint shifted right by it and
    /// `GROUP_BITS` more is its group.
    shift: u32,
}

/// The transfers' index: consecutive ids share a cache line.
pub type SequentialIdIndex = IdIndex<true>;

/// The scattered fingerprint: the top 32 bits of the id's hash.
pub fn fingerprint(id: u128) -> u32 {
    (hash_id(id) >> 32) as u32
}

/// The sequential fingerprint: the top bits of the hash of the id without its low `GROUP_BITS`
/// bits, then those bits. Ids that differ only there share a group of slots.
pub fn sequential_fingerprint(id: u128) -> u32 {
    let low = (id as u32) & (GROUP_SLOTS as u32 - 1);
    (fingerprint(id >> GROUP_BITS) & !(GROUP_SLOTS as u32 - 1)) | low
}

fn entry(fingerprint: u32, index: u32) -> u64 {
    assert!(index != u32::MAX);
    ((fingerprint as u64) << 32) | index as u64
}

fn entry_fingerprint(entry: u64) -> u32 {
    (entry >> 32) as u32
}

fn entry_index(entry: u64) -> u32 {
    entry as u32
}

/// Slots needed so that `count` entries fill at most half of them.
fn slots_for(count: usize) -> usize {
    (count * 2).next_power_of_two().max(SLOTS_MIN)
}

impl<const SEQUENTIAL: bool> IdIndex<SEQUENTIAL> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The fingerprint this index gives `id`: what callers of the `_fingerprinted` methods,
    /// `probe`, `insert_vacant` and `prefetch_home` pass.
    #[inline(always)]
    pub fn fingerprint(id: u128) -> u32 {
        if SEQUENTIAL {
            sequential_fingerprint(id)
        } else {
            fingerprint(id)
        }
    }

    /// A table that takes `count` entries without growing.
    pub fn with_capacity(count: usize) -> Self {
        let mut index = Self::new();
        index.reserve(count);
        index
    }

    /// `with_capacity`, with the table's memory handed to `advise` (its address and length in
    /// bytes) after it is allocated and before it is first written: a caller may ask the operating
    /// system for huge pages there, as a large table is read and written at random. Whatever
    /// `advise` does, the table is the same.
    pub fn with_capacity_advised(count: usize, advise: impl FnOnce(*const u8, usize)) -> Self {
        let slots_count = slots_for(count);
        let mut slots: Vec<u64> = Vec::with_capacity(slots_count);
        advise(
            slots.as_ptr().cast(),
            slots.capacity() * core::mem::size_of::<u64>(),
        );
        slots.resize(slots_count, EMPTY);
        let mut index = Self::new();
        let old = std::mem::replace(&mut index.slots, slots);
        index.place(old, slots_count);
        index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries the table takes without growing.
    pub fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// Bytes held, by capacity.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<u64>()
    }

    /// Makes room for `additional` more entries.
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        if (self.len + additional) * 2 <= self.slots.len() {
            return;
        }
        self.grow(additional);
    }

    #[inline(never)]
    fn grow(&mut self, additional: usize) {
        let needed = slots_for(self.len + additional);
        if needed > self.slots.len() {
            self.resize(needed);
        }
    }

    fn mask(&self) -> usize {
        self.mask
    }

    /// The slots, and the mask that keeps a position among them: `slots[position & mask]` needs
    /// no bounds check (the compiler sees `position & mask < slots.len()`), so a probe step is a
    /// load, two compares and an increment. Only for a table with slots.
    #[inline(always)]
    fn masked_slots(&self) -> (&[u64], usize) {
        let slots = &self.slots[..=self.mask];
        (slots, self.mask)
    }

    /// The group named by the fingerprint's top bits, the slot in it by its low bits.
    #[inline(always)]
    fn home(&self, fingerprint: u32) -> usize {
        let group = (fingerprint as u64) >> (self.shift + GROUP_BITS);
        let offset = fingerprint as usize & (GROUP_SLOTS - 1);
        ((group as usize) << GROUP_BITS) | offset
    }

    /// The index stored for `id`; `id_at(index)` returns the id of a stored record.
    pub fn get(&self, id: u128, id_at: impl Fn(u32) -> u128) -> Option<u32> {
        self.get_fingerprinted(id, Self::fingerprint(id), id_at)
    }

    /// `get` with the id's `Self::fingerprint(id)` computed once by the caller.
    pub fn get_fingerprinted(
        &self,
        id: u128,
        fingerprint: u32,
        id_at: impl Fn(u32) -> u128,
    ) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let (slots, mask) = self.masked_slots();
        let mut position = self.home(fingerprint);
        // Ends: at most half the slots are full (`insert_vacant` and `insert` assert it).
        loop {
            let slot = slots[position & mask];
            if slot == EMPTY {
                return None;
            }
            if entry_fingerprint(slot) == fingerprint && id_at(entry_index(slot)) == id {
                return Some(entry_index(slot));
            }
            position += 1;
        }
    }

    /// The record index of the first entry with `fingerprint` along its probe, else `u32::MAX`:
    /// the id's record unless another id shares the fingerprint. Not an answer, a candidate for
    /// the lookahead to touch; no record is read.
    #[inline(always)]
    pub fn candidate(&self, fingerprint: u32) -> u32 {
        if self.slots.is_empty() {
            return u32::MAX;
        }
        let (slots, mask) = self.masked_slots();
        let mut position = self.home(fingerprint);
        // Ends: at most half the slots are full (`insert_vacant` and `insert` assert it).
        loop {
            let slot = slots[position & mask];
            if slot == EMPTY {
                return u32::MAX;
            }
            if entry_fingerprint(slot) == fingerprint {
                return entry_index(slot);
            }
            position += 1;
        }
    }

    /// Prefetches the home slot of the id with `fingerprint`, where its probe starts: how a
    /// batch's lookahead brings the slots of many ids into cache at once. It answers nothing.
    #[inline(always)]
    pub fn prefetch_home(&self, fingerprint: u32) {
        if let Some(slot) = self.slots.get(self.home(fingerprint)) {
            prefetch(slot);
        }
    }

    /// `get_fingerprinted`, but an absent id answers the empty slot its probe ended at, where
    /// `insert_vacant` can store it without probing again. The table must not change in between
    /// (and must have room: `reserve` first, as `insert_vacant` asserts).
    #[inline(always)]
    pub fn probe(&self, id: u128, fingerprint: u32, id_at: impl Fn(u32) -> u128) -> Probe {
        assert!(!self.slots.is_empty(), "probe of a table without room");
        let (slots, mask) = self.masked_slots();
        let mut position = self.home(fingerprint);
        // Ends: at most half the slots are full (`insert_vacant` and `insert` assert it).
        loop {
            position &= mask;
            let slot = slots[position];
            if slot == EMPTY {
                return Probe::Vacant(position);
            }
            if entry_fingerprint(slot) == fingerprint && id_at(entry_index(slot)) == id {
                return Probe::Found(entry_index(slot));
            }
            position += 1;
        }
    }

    /// Stores `index` for the id whose `probe` (with this `fingerprint`) answered
    /// `Probe::Vacant(position)`, with nothing inserted or removed since.
    #[inline(always)]
    pub fn insert_vacant(&mut self, position: usize, fingerprint: u32, index: u32) {
        assert!(
            (self.len + 1) * 2 <= self.slots.len(),
            "insert_vacant without room"
        );
        assert!(
            self.slots[position] == EMPTY,
            "insert_vacant into a full slot"
        );
        self.slots[position] = entry(fingerprint, index);
        self.len += 1;
    }

    pub fn contains(&self, id: u128, id_at: impl Fn(u32) -> u128) -> bool {
        self.get(id, id_at).is_some()
    }

    /// Stores `index` for `id`, which must not be stored yet (asserted).
    pub fn insert(&mut self, id: u128, index: u32, id_at: impl Fn(u32) -> u128) {
        self.reserve(1);
        let fingerprint = Self::fingerprint(id);
        let mask = self.mask();
        let mut position = self.home(fingerprint);
        for _ in 0..self.slots.len() {
            let slot = self.slots[position];
            if slot == EMPTY {
                self.slots[position] = entry(fingerprint, index);
                self.len += 1;
                return;
            }
            assert!(
                entry_fingerprint(slot) != fingerprint || id_at(entry_index(slot)) != id,
                "id inserted twice"
            );
            position = (position + 1) & mask;
        }
        unreachable!("id index has no empty slot");
    }

    /// Removes `id`, returning the index it had.
    pub fn remove(&mut self, id: u128, id_at: impl Fn(u32) -> u128) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let fingerprint = Self::fingerprint(id);
        let mask = self.mask();
        let mut position = self.home(fingerprint);
        for _ in 0..self.slots.len() {
            let slot = self.slots[position];
            if slot == EMPTY {
                return None;
            }
            if entry_fingerprint(slot) == fingerprint && id_at(entry_index(slot)) == id {
                self.shift_back(position);
                self.len -= 1;
                return Some(entry_index(slot));
            }
            position = (position + 1) & mask;
        }
        unreachable!("id index has no empty slot");
    }

    /// Empties `hole`, moving back every later entry of its cluster whose probe passed over it.
    fn shift_back(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut position = hole;
        for _ in 0..self.slots.len() {
            position = (position + 1) & mask;
            let slot = self.slots[position];
            if slot == EMPTY {
                break;
            }
            let home = self.home(entry_fingerprint(slot));
            // The entry may fill the hole unless its home lies after the hole (cyclically).
            if (position.wrapping_sub(home) & mask) >= (position.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = position;
            }
        }
        self.slots[hole] = EMPTY;
    }

    /// Moves the entries into `room` (an empty table, made elsewhere so that its memory is
    /// touched there) and takes its place, if `room` has more slots; else drops `room`.
    pub fn move_into(&mut self, room: Self) {
        assert!(room.is_empty());
        if room.slots.len() <= self.slots.len() {
            return;
        }
        let slots_count = room.slots.len();
        let old = std::mem::replace(&mut self.slots, room.slots);
        self.place(old, slots_count);
    }

    fn resize(&mut self, slots_count: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; slots_count]);
        self.place(old, slots_count);
    }

    /// Puts the entries of `old` into `self.slots` (all empty, `slots_count` of them).
    fn place(&mut self, old: Vec<u64>, slots_count: usize) {
        assert!(slots_count.is_power_of_two() && slots_count >= SLOTS_MIN);
        assert!(slots_count.trailing_zeros() <= FINGERPRINT_BITS);
        assert!(slots_count >= self.len * 2);
        assert_eq!(self.slots.len(), slots_count);
        self.mask = slots_count - 1;
        self.shift = FINGERPRINT_BITS - slots_count.trailing_zeros();
        let mask = self.mask();
        for slot in old.into_iter().filter(|slot| *slot != EMPTY) {
            let mut position = self.home(entry_fingerprint(slot));
            while self.slots[position] != EMPTY {
                position = (position + 1) & mask;
            }
            self.slots[position] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as the ledger keeps them: the id lives in the record, the index only points.
    struct Records<const SEQUENTIAL: bool = false> {
        ids: Vec<u128>,
        index: IdIndex<SEQUENTIAL>,
    }

    impl<const SEQUENTIAL: bool> Records<SEQUENTIAL> {
        fn push(&mut self, id: u128) {
            let position = self.ids.len() as u32;
            self.ids.push(id);
            let ids = &self.ids;
            self.index.insert(id, position, |index| ids[index as usize]);
        }

        fn get(&self, id: u128) -> Option<u32> {
            self.index.get(id, |index| self.ids[index as usize])
        }

        /// Removes the newest record, as a chain rollback does.
        fn pop(&mut self) {
            let id = self.ids.last().copied().expect("record");
            let ids = &self.ids;
            let removed = self.index.remove(id, |index| ids[index as usize]);
            assert_eq!(removed, Some(self.ids.len() as u32 - 1));
            self.ids.pop();
        }
    }

    #[test]
    fn finds_what_was_inserted_across_growth_and_removal() {
        finds_what_was_inserted_across_growth_and_removal_in(Records::<false> {
            ids: Vec::new(),
            index: IdIndex::new(),
        });
        finds_what_was_inserted_across_growth_and_removal_in(Records::<true> {
            ids: Vec::new(),
            index: IdIndex::new(),
        });
    }

    fn finds_what_was_inserted_across_growth_and_removal_in<const SEQUENTIAL: bool>(
        mut records: Records<SEQUENTIAL>,
    ) {
        assert_eq!(records.get(1), None);
        // Sequential ids, then ids spread over the whole u128 range.
        let ids: Vec<u128> = (1..5_000u128)
            .chain(
                (1..5_000u128).map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
            )
            .collect();
        for &id in &ids {
            records.push(id);
        }
        assert_eq!(records.index.len(), ids.len());
        assert!(records.index.capacity() >= ids.len());
        for (position, &id) in ids.iter().enumerate() {
            assert_eq!(records.get(id), Some(position as u32));
        }
        assert_eq!(records.get(u128::MAX), None);
        // Removing the newest half keeps every older entry reachable (backward shift).
        for _ in 0..ids.len() / 2 {
            records.pop();
        }
        for (position, &id) in ids.iter().enumerate() {
            let expected = (position < records.ids.len()).then_some(position as u32);
            assert_eq!(records.get(id), expected, "id {id}");
        }
    }

    #[test]
    fn colliding_fingerprints_are_told_apart_by_the_record() {
        // A table of 16 slots and ids whose homes collide: every probe walks a cluster.
        let mut records = Records::<false> {
            ids: Vec::new(),
            index: IdIndex::new(),
        };
        let home = |id: u128| {
            let fingerprint = fingerprint(id);
            ((fingerprint >> 31) << GROUP_BITS) | (fingerprint & 7)
        };
        let colliding: Vec<u128> = (1..10_000u128)
            .filter(|id| home(*id) == 15)
            .take(7)
            .collect();
        for &id in &colliding {
            records.push(id);
        }
        assert_eq!(records.index.slots.len(), SLOTS_MIN);
        for (position, &id) in colliding.iter().enumerate() {
            assert_eq!(records.get(id), Some(position as u32));
        }
        records.pop();
        records.pop();
        for (position, &id) in colliding.iter().enumerate().take(5) {
            assert_eq!(records.get(id), Some(position as u32));
        }
    }

    #[test]
    #[should_panic(expected = "id inserted twice")]
    fn inserting_an_id_twice_panics() {
        let mut records = Records::<false> {
            ids: Vec::new(),
            index: IdIndex::new(),
        };
        records.push(7);
        records.push(7);
    }

    #[test]
    fn an_advised_table_is_the_table_with_capacity_and_advice_sees_all_its_memory() {
        let mut advised = None;
        let index = IdIndex::<false>::with_capacity_advised(1_000, |address, bytes| {
            advised = Some((address as usize, bytes));
        });
        let plain = IdIndex::<false>::with_capacity(1_000);
        assert_eq!(index.slots, plain.slots);
        assert_eq!((index.mask, index.shift), (plain.mask, plain.shift));
        let (address, bytes) = advised.expect("advice asked");
        assert_eq!(address, index.slots.as_ptr() as usize);
        assert_eq!(bytes, index.memory_bytes());
        let mut records = Records::<false> {
            ids: Vec::new(),
            index,
        };
        for id in 1..=1_000u128 {
            records.push(id);
        }
        assert_eq!(records.index.slots.len(), plain.slots.len(), "no growth");
        assert!((1..=1_000u128).all(|id| records.get(id) == Some(id as u32 - 1)));
    }

    /// What the sequential fingerprint is for: consecutive ids fill one group's line side by
    /// side, where scattered ones land anywhere; both find every id.
    #[test]
    fn consecutive_ids_share_a_cache_line_in_a_sequential_index() {
        let mut sequential = Records::<true> {
            ids: Vec::new(),
            index: IdIndex::with_capacity(1 << 16),
        };
        let mut scattered = Records::<false> {
            ids: Vec::new(),
            index: IdIndex::with_capacity(1 << 16),
        };
        let first = 0x1234_5678_9abc_def0_0000_0000_0001_0000u128;
        for id in first..first + 8 {
            sequential.push(id);
            scattered.push(id);
        }
        let homes = |index: &IdIndex<true>| -> Vec<usize> {
            (first..first + 8)
                .map(|id| index.home(IdIndex::<true>::fingerprint(id)))
                .collect()
        };
        let homes = homes(&sequential.index);
        assert_eq!(homes[0] % GROUP_SLOTS, 0);
        assert!(homes
            .iter()
            .enumerate()
            .all(|(j, home)| *home == homes[0] + j));
        let lines: std::collections::BTreeSet<usize> = (first..first + 8)
            .map(|id| scattered.index.home(IdIndex::<false>::fingerprint(id)) / GROUP_SLOTS)
            .collect();
        assert!(lines.len() > 1, "scattered ids spread over lines");
        for (position, id) in (first..first + 8).enumerate() {
            assert_eq!(sequential.get(id), Some(position as u32));
            assert_eq!(scattered.get(id), Some(position as u32));
        }
        // The next 8 ids take another group.
        let next = sequential
            .index
            .home(IdIndex::<true>::fingerprint(first + 8));
        assert_ne!(next / GROUP_SLOTS, homes[0] / GROUP_SLOTS);
    }
}
