//! `IdIndex`: the id → record index map of accounts and transfers.
//!
//! Open addressing with linear probing over one `Vec<u64>`. A slot holds the top 32 bits of the
//! id's hash (the fingerprint) and the record's `u32` index; the id itself is not stored, it is
//! already in the record, and a fingerprint match is confirmed by comparing against it. Compared
//! with a `HashMap<u128, u32>` (32-byte buckets, as `u128` is 16-byte aligned, plus a control
//! byte) a slot is 8 bytes, so the table is a quarter of the size and a probe of an absent id (the
//! common case: a new transfer) touches one cache line and no record.
//!
//! The home slot of an id is the top bits of its fingerprint, so growing to twice the slots needs
//! neither the ids nor a rehash: every entry moves to the home its own fingerprint names, and the
//! entries, ordered by home already, are read and written front to back. Removal (only a rolled
//! back linked chain removes) shifts the following entries back; there are no tombstones, so a
//! probe never walks further than the cluster it starts in.
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

/// What `IdIndex::probe` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The id is stored, with this record index.
    Found(u32),
    /// The id is not stored; its probe ended at this empty slot.
    Vacant(usize),
}

#[derive(Clone, Debug, Default)]
pub struct IdIndex {
    /// Empty, or a power of two of at least `SLOTS_MIN`.
    slots: Vec<u64>,
    len: usize,
    /// `slots.len() - 1` (0 when empty).
    mask: usize,
    /// `FINGERPRINT_BITS - log2(slots.len())`: a fingerprint shifted right by it is its home.
    shift: u32,
}

/// The top 32 bits of the id's hash: kept in the slot, and the slot's home in its top bits.
pub fn fingerprint(id: u128) -> u32 {
    (hash_id(id) >> 32) as u32
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

impl IdIndex {
    pub fn new() -> IdIndex {
        IdIndex::default()
    }

    /// A table that takes `count` entries without growing.
    pub fn with_capacity(count: usize) -> IdIndex {
        let mut index = IdIndex::new();
        index.reserve(count);
        index
    }

    /// `with_capacity`, with the table's memory handed to `advise` (its address and length in
    /// bytes) after it is allocated and before it is first written: a caller may ask the operating
    /// system for huge pages there, as a large table is read and written at random. Whatever
    /// `advise` does, the table is the same.
    pub fn with_capacity_advised(count: usize, advise: impl FnOnce(*const u8, usize)) -> IdIndex {
        let slots_count = slots_for(count);
        let mut slots: Vec<u64> = Vec::with_capacity(slots_count);
        advise(
            slots.as_ptr().cast(),
            slots.capacity() * core::mem::size_of::<u64>(),
        );
        slots.resize(slots_count, EMPTY);
        let mut index = IdIndex::new();
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

    fn home(&self, fingerprint: u32) -> usize {
        // Shifting a u64 keeps a shift of 32 (one slot; never reached: SLOTS_MIN) well defined.
        ((fingerprint as u64) >> self.shift) as usize
    }

    /// The index stored for `id`; `id_at(index)` returns the id of a stored record.
    pub fn get(&self, id: u128, id_at: impl Fn(u32) -> u128) -> Option<u32> {
        self.get_fingerprinted(id, fingerprint(id), id_at)
    }

    /// `get` with the id's `fingerprint(id)` computed once by the caller.
    pub fn get_fingerprinted(
        &self,
        id: u128,
        fingerprint: u32,
        id_at: impl Fn(u32) -> u128,
    ) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut position = self.home(fingerprint);
        // Bounded: at most half the slots are full, so an empty one ends every probe.
        for _ in 0..self.slots.len() {
            let slot = self.slots[position];
            if slot == EMPTY {
                return None;
            }
            if entry_fingerprint(slot) == fingerprint && id_at(entry_index(slot)) == id {
                return Some(entry_index(slot));
            }
            position = (position + 1) & mask;
        }
        unreachable!("id index has no empty slot");
    }

    /// The record index of the first entry with `fingerprint` along its probe, else `u32::MAX`:
    /// the id's record unless another id shares the fingerprint. Not an answer, a candidate for
    /// the lookahead to touch; no record is read.
    #[inline(always)]
    pub fn candidate(&self, fingerprint: u32) -> u32 {
        if self.slots.is_empty() {
            return u32::MAX;
        }
        let mask = self.mask();
        let mut position = self.home(fingerprint);
        for _ in 0..self.slots.len() {
            let slot = self.slots[position];
            if slot == EMPTY {
                return u32::MAX;
            }
            if entry_fingerprint(slot) == fingerprint {
                return entry_index(slot);
            }
            position = (position + 1) & mask;
        }
        unreachable!("id index has no empty slot");
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
        let mask = self.mask();
        let mut position = self.home(fingerprint);
        // Bounded: at most half the slots are full, so an empty one ends every probe.
        for _ in 0..self.slots.len() {
            let slot = self.slots[position];
            if slot == EMPTY {
                return Probe::Vacant(position);
            }
            if entry_fingerprint(slot) == fingerprint && id_at(entry_index(slot)) == id {
                return Probe::Found(entry_index(slot));
            }
            position = (position + 1) & mask;
        }
        unreachable!("id index has no empty slot");
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
        let fingerprint = fingerprint(id);
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
        let fingerprint = fingerprint(id);
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
    pub fn move_into(&mut self, room: IdIndex) {
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
    struct Records {
        ids: Vec<u128>,
        index: IdIndex,
    }

    impl Records {
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
        let mut records = Records {
            ids: Vec::new(),
            index: IdIndex::new(),
        };
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
        let mut records = Records {
            ids: Vec::new(),
            index: IdIndex::new(),
        };
        let home = |id: u128| fingerprint(id) >> 28;
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
        let mut records = Records {
            ids: Vec::new(),
            index: IdIndex::new(),
        };
        records.push(7);
        records.push(7);
    }

    #[test]
    fn an_advised_table_is_the_table_with_capacity_and_advice_sees_all_its_memory() {
        let mut advised = None;
        let index = IdIndex::with_capacity_advised(1_000, |address, bytes| {
            advised = Some((address as usize, bytes));
        });
        let plain = IdIndex::with_capacity(1_000);
        assert_eq!(index.slots, plain.slots);
        assert_eq!((index.mask, index.shift), (plain.mask, plain.shift));
        let (address, bytes) = advised.expect("advice asked");
        assert_eq!(address, index.slots.as_ptr() as usize);
        assert_eq!(bytes, index.memory_bytes());
        let mut records = Records {
            ids: Vec::new(),
            index,
        };
        for id in 1..=1_000u128 {
            records.push(id);
        }
        assert_eq!(records.index.slots.len(), plain.slots.len(), "no growth");
        assert!((1..=1_000u128).all(|id| records.get(id) == Some(id as u32 - 1)));
    }
}
