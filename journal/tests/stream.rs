//! `Journal::stream_plan`: reading a log from start to end in large reads around the page
//! cache gives exactly the entries `Journal::entry` gives, on the real file system (cached
//! or not) and on the simulated disk, and damage is named by its index.

mod common;

use std::path::Path;
use std::sync::Arc;

use tally_journal::fault::{FaultyStorage, SplitMix64};
use tally_journal::limits::EVENT_SIZE;
use tally_journal::{
    Entry, EntryId, Error, FsStorage, Journal, JournalOptions, Piece, Storage, SEGMENT_FILE_SUFFIX,
};

const OPTIONS: JournalOptions = JournalOptions {
    segment_size: 4 * 1024 * 1024,
};

/// Batches of 1 to 8189 events (the largest fill a window alone), with small entries of
/// other kinds between them, so that records start at every multiple of 8.
fn entries(count: u64) -> Vec<Entry> {
    let mut random = SplitMix64::new(5);
    (0..count)
        .map(|index| {
            let id = EntryId::new(1, 1, index);
            if random.below(4) == 0 {
                common::random_entry(&mut random, id)
            } else {
                let events = [1, 7, 512, 2048, 8189][random.below(5) as usize];
                let byte = random.next_u64() as u8;
                let payload: Vec<u8> = (0..events * EVENT_SIZE)
                    .map(|offset| byte ^ (offset as u8))
                    .collect();
                Entry::batch(id, 1, index, payload)
            }
        })
        .collect()
}

fn write(storage: Arc<dyn Storage>, path: &Path, entries: &[Entry]) -> Journal {
    let (mut journal, _) = Journal::open(storage.clone(), path, OPTIONS).unwrap();
    for chunk in entries.chunks(5) {
        journal.append_all(chunk).unwrap();
        journal.sync().unwrap();
    }
    drop(journal);
    Journal::open_read_only_verifying_on_read(storage, path)
        .unwrap()
        .0
}

/// Every entry of the plan, in order, and how many pieces were windows and how many
/// cached stretches.
fn stream(
    journal: &Journal,
    first: u64,
    last: u64,
) -> (Vec<tally_journal::Result<Entry>>, usize, usize) {
    let (mut windows, mut cached) = (0, 0);
    let mut entries = Vec::new();
    for piece in journal.stream_plan(first, last).unwrap() {
        match piece {
            Piece::Window(window) => {
                windows += 1;
                let range = window.entries();
                let read: Vec<_> = window.read().unwrap().entries().collect();
                assert_eq!(read.len() as u64, range.end - range.start);
                entries.extend(read);
            }
            Piece::Cached(range) => {
                cached += 1;
                entries.extend(range.map(|index| journal.entry(index).map(Option::unwrap)));
            }
        }
    }
    (entries, windows, cached)
}

fn unwrap_all(entries: Vec<tally_journal::Result<Entry>>) -> Vec<Entry> {
    entries.into_iter().map(Result::unwrap).collect()
}

/// Drops the segments' pages from the page cache (they are synced, so clean).
fn forget_cached(path: &Path) {
    for name in FsStorage.list(path).unwrap() {
        if name.ends_with(SEGMENT_FILE_SUFFIX) {
            let file = FsStorage.open_read_only(&path.join(name)).unwrap();
            file.forget_cached(0, file.len().unwrap()).unwrap();
        }
    }
}

#[test]
fn the_plan_reads_what_entry_reads_on_the_simulated_disk_and_the_real_file_system() {
    let written = entries(80);
    let disk = FaultyStorage::new(2);
    let temp = tempfile::tempdir().unwrap();
    let simulated = write(disk.shared(), Path::new("/journal"), &written);
    let real = write(FsStorage::shared(), temp.path(), &written);

    // The simulated disk has no page cache: windows only.
    let (read, windows, cached) = stream(&simulated, 0, 79);
    assert_eq!(unwrap_all(read), written);
    assert!(
        windows > 5 && cached == 0,
        "{windows} windows, {cached} cached"
    );

    // Cold on the real file system: windows, read around the cache (O_DIRECT where the
    // file system allows it).
    forget_cached(temp.path());
    let (read, windows, _) = stream(&real, 0, 79);
    assert_eq!(unwrap_all(read), written);
    assert!(windows > 5, "{windows} windows");

    // Any stretch of the log, and a range past its ends is clamped.
    let (read, _, _) = stream(&simulated, 13, 61);
    assert_eq!(unwrap_all(read), written[13..=61]);
    let (read, _, _) = stream(&real, 70, 1_000);
    assert_eq!(unwrap_all(read), written[70..]);
}

#[test]
fn segments_in_the_page_cache_are_read_entry_by_entry() {
    let written = entries(40);
    let temp = tempfile::tempdir().unwrap();
    let real = write(FsStorage::shared(), temp.path(), &written);
    // Read once through the cache, so that every page of every segment is in it.
    for index in 0..40 {
        real.entry(index).unwrap().unwrap();
    }
    let (read, windows, cached) = stream(&real, 0, 39);
    assert_eq!(unwrap_all(read), written);
    if kernel_has_cachestat() {
        assert!(cached > 0, "{cached} cached stretches");
        assert_eq!(
            windows, 0,
            "{cached} cached stretches, and {windows} windows"
        );
    } else {
        // Before Linux 6.5 the page cache cannot be asked: windows only.
        assert_eq!(cached, 0);
    }
}

/// cachestat(2) came with Linux 6.5.
fn kernel_has_cachestat() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (6, 5)
}

#[test]
fn a_damaged_record_read_in_a_window_is_named_by_its_index() {
    let written = entries(30);
    let disk = FaultyStorage::new(4);
    let journal = write(disk.shared(), Path::new("/journal"), &written);
    // Damage the payload of entry 17, found in the plan.
    let plan = journal.stream_plan(0, 29).unwrap();
    let (segment, offset) = plan
        .iter()
        .find_map(|piece| match piece {
            Piece::Window(window) if window.entries().contains(&17) => {
                Some((window.path().to_owned(), window.record_offset(17)))
            }
            _ => None,
        })
        .unwrap();
    disk.flip_bit(&segment, offset + 64 + 5, 1);

    let (read, _, _) = stream(&journal, 0, 29);
    for (index, entry) in read.into_iter().enumerate() {
        match (index, entry) {
            (17, Err(Error::Corruption { index, .. })) => assert_eq!(index, Some(17)),
            (17, other) => panic!("entry 17 read as {other:?}"),
            (index, entry) => assert_eq!(entry.unwrap(), written[index]),
        }
    }
}
