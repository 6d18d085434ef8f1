//! Shared helpers of the journal's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use tally_journal::fault::{FaultyStorage, SplitMix64};
use tally_journal::limits::EVENT_SIZE;
use tally_journal::{Entry, EntryId, Journal, JournalOptions, RecoveryReport, Storage};

/// Small segments so that tests roll segments often.
pub const TEST_SEGMENT_SIZE: u64 = 4096;

pub fn options() -> JournalOptions {
    JournalOptions {
        segment_size: TEST_SEGMENT_SIZE,
    }
}

pub fn dir() -> &'static Path {
    Path::new("/journal")
}

pub fn open(disk: &FaultyStorage) -> tally_journal::Result<(Journal, RecoveryReport)> {
    Journal::open(disk.shared(), dir(), options())
}

pub fn open_storage(storage: Arc<dyn Storage>) -> tally_journal::Result<(Journal, RecoveryReport)> {
    Journal::open(storage, dir(), options())
}

/// A random entry of any kind; contents derive from the generator.
pub fn random_entry(random: &mut SplitMix64, id: EntryId) -> Entry {
    match random.below(10) {
        0 => Entry::blank(id),
        1 => {
            let length = random.below(40) as usize;
            Entry::membership(
                id,
                (0..length)
                    .map(|_| random.next_u64() as u8)
                    .collect::<Vec<u8>>(),
            )
        }
        _ => {
            let count = 1 + random.below(3) as usize;
            let events: Vec<u8> = (0..count * EVENT_SIZE)
                .map(|_| random.next_u64() as u8)
                .collect();
            Entry::batch(id, 1 + random.below(4) as u8, random.next_u64(), events)
        }
    }
}

/// Every entry in the journal, read back.
pub fn read_all(journal: &Journal) -> Vec<Entry> {
    journal.read(..).expect("read the whole log")
}
