//! API behaviour: misuse gives typed errors and changes nothing, unknown versions are
//! refused, the snapshot and metadata stores survive crashes, and the real filesystem
//! works the same way.

mod common;

use std::path::Path;
use std::sync::{Arc, RwLock};

use common::{dir, open, open_storage, random_entry, read_all};
use tally_journal::fault::{FaultyStorage, SplitMix64};
use tally_journal::limits::{EVENT_SIZE, FORMAT_VERSION, RECORD_PAYLOAD_SIZE_MAX};
use tally_journal::{
    Entry, EntryId, Error, FsStorage, Journal, JournalOptions, MetaStore, SnapshotStore, Storage,
    META_FILE_NAME, SEGMENT_FILE_SUFFIX, SNAPSHOT_FILE_NAME, SPARE_FILE_SUFFIX,
};

fn id(term: u64, index: u64) -> EntryId {
    EntryId::new(term, 1, index)
}

fn batch(term: u64, index: u64) -> Entry {
    Entry::batch(id(term, index), 1, index, vec![index as u8; 2 * EVENT_SIZE])
}

/// A journal holding entries 10..=29 (term 2), synced.
fn journal_with_entries(disk: &FaultyStorage) -> Journal {
    let (mut journal, _) = open(disk).unwrap();
    let entries: Vec<Entry> = (10..30).map(|index| batch(2, index)).collect();
    journal.append_all(&entries).unwrap();
    journal.sync().unwrap();
    journal
}

#[test]
fn misuse_gives_typed_errors_and_changes_nothing() {
    type Case = (
        &'static str,
        fn(&mut Journal) -> tally_journal::Result<()>,
        fn(&Error) -> bool,
    );
    let cases: [Case; 8] = [
        (
            "index gap",
            |j| j.append(&batch(2, 31)),
            |e| {
                matches!(
                    e,
                    Error::IndexOutOfOrder {
                        expected: 30,
                        got: 31
                    }
                )
            },
        ),
        (
            "index repeat",
            |j| j.append(&batch(2, 29)),
            |e| matches!(e, Error::IndexOutOfOrder { .. }),
        ),
        (
            "term regression",
            |j| j.append(&batch(1, 30)),
            |e| matches!(e, Error::TermRegression { .. }),
        ),
        (
            "bad batch",
            |j| j.append(&Entry::batch(id(2, 30), 1, 1, vec![0; 100])),
            |e| matches!(e, Error::InvalidEntry { index: 30, .. }),
        ),
        (
            "second entry of a batch invalid",
            |j| j.append_all(&[batch(2, 30), batch(2, 32)]),
            |e| {
                matches!(
                    e,
                    Error::IndexOutOfOrder {
                        expected: 31,
                        got: 32
                    }
                )
            },
        ),
        (
            "entry larger than a segment",
            |j| j.append(&Entry::batch(id(2, 30), 1, 1, vec![0; 64 * EVENT_SIZE])),
            |e| matches!(e, Error::InvalidEntry { .. }),
        ),
        (
            "purge with the wrong term",
            |j| j.purge_through(id(1, 15)),
            |e| matches!(e, Error::PurgeMismatch { .. }),
        ),
        (
            "truncate below the purge point",
            |j| {
                j.purge_through(id(2, 15))
                    .and_then(|()| j.truncate_after(Some(12)))
            },
            |e| {
                matches!(
                    e,
                    Error::TruncateBelowPurged {
                        index: Some(12),
                        purged: 15
                    }
                )
            },
        ),
    ];
    for (name, call, expected) in cases {
        let disk = FaultyStorage::new(1);
        let mut journal = journal_with_entries(&disk);
        let error = call(&mut journal).expect_err(name);
        assert!(expected(&error), "{name}: {error:?}");
        assert!(!error.is_fatal(), "{name}: misuse must not be fatal");
        assert_eq!(journal.last_index(), Some(29), "{name}");
        journal
            .append(&batch(2, 30))
            .unwrap_or_else(|error| panic!("{name}: journal unusable: {error}"));
    }
}

#[test]
fn invalid_options_are_refused() {
    let disk = FaultyStorage::new(1);
    let options = JournalOptions { segment_size: 100 };
    assert!(matches!(
        Journal::open(disk.shared(), dir(), options),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn any_first_index_on_an_empty_log_then_strict_order() {
    let disk = FaultyStorage::new(1);
    let (mut journal, _) = open(&disk).unwrap();
    assert_eq!(
        (
            journal.first_index(),
            journal.last_index(),
            journal.last_entry_id()
        ),
        (None, None, None)
    );
    journal.append(&batch(1, 1000)).unwrap();
    assert_eq!(journal.first_index(), Some(1000));
    assert!(matches!(
        journal.append(&batch(1, 1002)),
        Err(Error::IndexOutOfOrder { expected: 1001, .. })
    ));
}

#[test]
fn purge_past_the_end_restarts_the_log_and_survives_restart() {
    let disk = FaultyStorage::new(2);
    let mut journal = journal_with_entries(&disk);
    journal.purge_through(id(3, 100)).unwrap();
    assert_eq!(journal.first_index(), None);
    assert_eq!(journal.last_entry_id(), Some(id(3, 100)));
    assert!(matches!(
        journal.append(&batch(3, 50)),
        Err(Error::IndexOutOfOrder { expected: 101, .. })
    ));
    journal.append(&batch(3, 101)).unwrap();
    journal.sync().unwrap();
    drop(journal);
    disk.reboot();
    let (journal, report) = open(&disk).unwrap();
    assert_eq!(report.purged, Some(id(3, 100)));
    assert_eq!(journal.purged_id(), Some(id(3, 100)));
    assert_eq!(
        (journal.first_index(), journal.last_index()),
        (Some(101), Some(101))
    );
}

/// Names in the journal directory ending with `suffix`.
fn files_named(storage: &dyn Storage, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = storage
        .list(dir())
        .unwrap()
        .into_iter()
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

#[test]
fn purge_deletes_whole_segments_and_get_log_state_survives_restart() {
    let disk = FaultyStorage::new(3);
    let mut journal = journal_with_entries(&disk);
    let segments_before = files_named(&*disk.shared(), SEGMENT_FILE_SUFFIX).len();
    journal.purge_through(id(2, 25)).unwrap();
    let segments_after = files_named(&*disk.shared(), SEGMENT_FILE_SUFFIX).len();
    assert!(segments_after < segments_before, "no segment purged");
    assert_eq!(
        files_named(&*disk.shared(), SPARE_FILE_SUFFIX).len(),
        segments_before - segments_after,
        "purged segments are kept for reuse"
    );
    assert_eq!(journal.first_index(), Some(26));
    assert_eq!(
        journal
            .read(..)
            .unwrap()
            .first()
            .map(|entry| entry.id.index),
        Some(26)
    );
    drop(journal);
    disk.reboot();
    let (journal, _) = open(&disk).unwrap();
    assert_eq!(journal.purged_id(), Some(id(2, 25)));
    assert_eq!(journal.first_index(), Some(26));
    assert_eq!(journal.last_entry_id(), Some(id(2, 29)));
}

/// Purged segments are renamed to spares and reused by later rolls, whose entries are written
/// over the old ones: a recovery stops at the first old entry as at the end of the log (no torn
/// tail, nothing cut), and every new entry survives a restart.
fn recycled_segments_round_trip(storage: Arc<dyn Storage>, reboot: impl Fn()) {
    let mut random = SplitMix64::new(17);
    let large: Vec<Entry> = (1..=60)
        .map(|index| Entry::batch(id(1, index), 1, index, vec![index as u8; 6 * EVENT_SIZE]))
        .collect();
    let (mut journal, _) = open_storage(storage.clone()).unwrap();
    journal.append_all(&large).unwrap();
    journal.sync().unwrap();
    journal.purge_through(id(1, 50)).unwrap();
    let spares = files_named(&*storage, SPARE_FILE_SUFFIX);
    assert!(spares.len() >= 3, "spares kept: {spares:?}");
    // Small entries: each reused segment holds the new ones, then the old large ones.
    let small: Vec<Entry> = (61..=160)
        .map(|index| random_entry(&mut random, id(2, index)))
        .collect();
    for chunk in small.chunks(7) {
        journal.append_all(chunk).unwrap();
        journal.sync().unwrap();
    }
    assert!(
        files_named(&*storage, SPARE_FILE_SUFFIX).len() < spares.len(),
        "no spare reused"
    );
    let expected: Vec<Entry> = large[50..].iter().chain(&small).cloned().collect();
    assert_eq!(read_all(&journal), expected);
    drop(journal);
    reboot();
    let (mut journal, report) = open_storage(storage.clone()).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&journal), expected);
    // And the log goes on from there, through the spares left.
    journal.append(&batch(2, 161)).unwrap();
    journal.sync().unwrap();
    drop(journal);
    reboot();
    let (journal, report) = open_storage(storage).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(journal.last_entry_id(), Some(id(2, 161)));
    assert_eq!(journal.read(..).unwrap().len(), expected.len() + 1);
}

#[test]
fn purged_segments_are_recycled_on_the_simulated_disk() {
    let disk = FaultyStorage::new(11);
    recycled_segments_round_trip(disk.shared(), || disk.reboot());
}

#[test]
fn purged_segments_are_recycled_on_the_real_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let temp = tempfile::tempdir().unwrap();
    let storage = FsStorage::shared();
    let options = JournalOptions {
        segment_size: common::TEST_SEGMENT_SIZE,
    };
    let (mut journal, _) = Journal::open(storage.clone(), temp.path(), options.clone()).unwrap();
    let entries: Vec<Entry> = (1..=40)
        .map(|index| Entry::batch(id(1, index), 1, index, vec![3; 6 * EVENT_SIZE]))
        .collect();
    journal.append_all(&entries).unwrap();
    journal.sync().unwrap();
    journal.purge_through(id(1, 30)).unwrap();
    let spares: Vec<u64> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "spare"))
        .map(|path| std::fs::metadata(path).unwrap().ino())
        .collect();
    assert!(!spares.is_empty());
    let more: Vec<Entry> = (41..=60)
        .map(|index| Entry::batch(id(1, index), 1, index, vec![4; 6 * EVENT_SIZE]))
        .collect();
    journal.append_all(&more).unwrap();
    journal.sync().unwrap();
    let reused = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tlog"))
        .filter(|path| spares.contains(&std::fs::metadata(path).unwrap().ino()))
        .count();
    assert!(reused > 0, "no segment file was a spare before");
    drop(journal);
    let (journal, report) = Journal::open(storage, temp.path(), options).unwrap();
    assert_eq!(report.torn_tail, None);
    let expected: Vec<Entry> = entries[30..].iter().chain(&more).cloned().collect();
    assert_eq!(read_all(&journal), expected);
}

#[test]
fn truncate_then_append_new_term_survives_restart() {
    let disk = FaultyStorage::new(4);
    let mut journal = journal_with_entries(&disk);
    journal.truncate_after(Some(14)).unwrap();
    assert_eq!(journal.durable_index(), Some(14));
    journal.append_all(&[batch(5, 15), batch(5, 16)]).unwrap();
    journal.sync().unwrap();
    drop(journal);
    disk.reboot();
    let (journal, _) = open(&disk).unwrap();
    let entries = read_all(&journal);
    assert_eq!(entries.len(), 7);
    assert_eq!(entries.last().unwrap().id, id(5, 16));
}

#[test]
fn stale_ticket_after_truncation_is_ignored() {
    let disk = FaultyStorage::new(5);
    let (mut journal, _) = open(&disk).unwrap();
    journal
        .append_all(&[batch(1, 1), batch(1, 2), batch(1, 3)])
        .unwrap();
    let ticket = journal.prepare_sync();
    assert_eq!(ticket.index(), Some(3));
    journal.truncate_after(Some(1)).unwrap();
    journal.append_all(&[batch(2, 2), batch(2, 3)]).unwrap();
    let durable = ticket.sync().unwrap();
    assert_eq!(
        journal.mark_durable(durable),
        Some(1),
        "a stale ticket must not cover the new entries"
    );
}

fn rewrite_version(
    disk: &FaultyStorage,
    path: &Path,
    version_offset: usize,
    crc_range: std::ops::Range<usize>,
    crc_offset: usize,
) {
    let mut bytes = disk.durable_contents(path).unwrap();
    bytes[version_offset..version_offset + 2].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[crc_range]);
    bytes[crc_offset..crc_offset + 4].copy_from_slice(&crc.to_le_bytes());
    disk.put_durable(path, &bytes);
}

#[test]
fn unknown_versions_are_refused() {
    // Segment header.
    let disk = FaultyStorage::new(6);
    drop(journal_with_entries(&disk));
    let segment = dir().join(format!("{:020}.tlog", 10));
    rewrite_version(&disk, &segment, 4, 0..60, 60);
    let error = open(&disk).expect_err("unknown segment version");
    assert!(
        matches!(&error, Error::UnsupportedVersion { found, .. } if *found == FORMAT_VERSION + 1),
        "{error}"
    );
    assert!(error.to_string().contains("refusing"), "{error}");

    // Entry header with a valid checksum: a writer of another version.
    let disk = FaultyStorage::new(7);
    let (mut journal, _) = open(&disk).unwrap();
    journal.append(&Entry::blank(id(1, 0))).unwrap();
    journal.sync().unwrap();
    drop(journal);
    let segment = dir().join(format!("{:020}.tlog", 0));
    rewrite_version(&disk, &segment, 64 + 4, 64..124, 64 + 60);
    assert!(matches!(open(&disk), Err(Error::UnsupportedVersion { .. })));

    // Metadata record.
    let disk = FaultyStorage::new(8);
    MetaStore::open(disk.shared(), dir())
        .unwrap()
        .save(b"vote")
        .unwrap();
    let mut bytes = disk.durable_contents(&dir().join(META_FILE_NAME)).unwrap();
    bytes[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    disk.put_durable(&dir().join(META_FILE_NAME), &bytes);
    assert!(matches!(
        MetaStore::open(disk.shared(), dir()),
        Err(Error::UnsupportedVersion { .. })
    ));

    // Snapshot.
    let disk = FaultyStorage::new(9);
    SnapshotStore::open(disk.shared(), dir())
        .unwrap()
        .save(None, b"m", b"d")
        .unwrap();
    let mut bytes = disk
        .durable_contents(&dir().join(SNAPSHOT_FILE_NAME))
        .unwrap();
    bytes[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    disk.put_durable(&dir().join(SNAPSHOT_FILE_NAME), &bytes);
    let store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    assert!(matches!(
        store.load_latest(),
        Err(Error::UnsupportedVersion { .. })
    ));
}

#[test]
fn meta_store_survives_a_crash_at_any_point() {
    for seed in 0..300u64 {
        let disk = FaultyStorage::new(seed);
        let mut random = SplitMix64::new(seed);
        disk.crash_after(random.below(40));
        let mut acknowledged: Option<Vec<u8>> = None;
        let mut in_flight: Option<Vec<u8>> = None;
        if let Ok(mut store) = MetaStore::open(disk.shared(), dir()) {
            for round in 0..20u64 {
                let value: Vec<u8> = (0..1 + random.below(200))
                    .map(|byte| (byte + round) as u8)
                    .collect();
                in_flight = Some(value.clone());
                if store.save(&value).is_err() {
                    break;
                }
                acknowledged = in_flight.take();
            }
        }
        disk.reboot();
        let store = MetaStore::open(disk.shared(), dir())
            .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        let loaded = store.load().map(<[u8]>::to_vec);
        assert!(
            loaded == acknowledged || (in_flight.is_some() && loaded == in_flight),
            "seed {seed}: {loaded:?}"
        );
    }
}

#[test]
fn meta_store_damage_is_never_read_as_nothing_stored() {
    let disk = FaultyStorage::new(1);
    let mut store = MetaStore::open(disk.shared(), dir()).unwrap();
    store.save(b"first").unwrap();
    store.save(b"second").unwrap();
    let path = dir().join(META_FILE_NAME);
    // Damage the newest slot (slot 1: creation wrote "no value" there, so the first
    // save went to slot 0 and the second to slot 1): the older value is used.
    disk.flip_bit(&path, 4096 + 33, 1);
    let store = MetaStore::open(disk.shared(), dir()).unwrap();
    assert_eq!(store.load(), Some(&b"first"[..]));
    // Damage both: an error, not "nothing stored".
    disk.flip_bit(&path, 33, 1);
    assert!(matches!(
        MetaStore::open(disk.shared(), dir()),
        Err(Error::Corruption { .. })
    ));
    let mut store = MetaStore::open(FaultyStorage::new(2).shared(), dir()).unwrap();
    assert!(matches!(
        store.save(&vec![0; RECORD_PAYLOAD_SIZE_MAX + 1]),
        Err(Error::RecordTooLarge { .. })
    ));
}

/// Saved at once or paced (the replaced snapshot then freed step by step after the rename,
/// which adds operations a crash can come after).
#[test]
fn snapshot_store_survives_a_crash_at_any_point() {
    for seed in 0..600u64 {
        let pause = if seed % 2 == 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_micros(1)
        };
        let disk = FaultyStorage::new(seed);
        let mut random = SplitMix64::new(seed);
        let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        let old_data: Vec<u8> = (0..random.below(5000)).map(|byte| byte as u8).collect();
        store.save(Some(id(1, 10)), b"old meta", &old_data).unwrap();
        let new_data: Vec<u8> = (0..random.below(5000))
            .map(|byte| (byte * 7) as u8)
            .collect();
        disk.crash_after(random.below(10));
        let saved = store
            .save_paced(Some(id(2, 20)), b"new meta", &new_data, pause)
            .is_ok();
        disk.reboot();
        let store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        let loaded = store
            .load_latest()
            .unwrap_or_else(|error| panic!("seed {seed}: {error}"))
            .expect("a snapshot");
        let is_new = loaded.last_log_id == Some(id(2, 20))
            && loaded.meta == b"new meta"
            && loaded.data == new_data;
        let is_old = loaded.last_log_id == Some(id(1, 10))
            && loaded.meta == b"old meta"
            && loaded.data == old_data;
        assert!(
            is_new || (!saved && is_old),
            "seed {seed}: saved {saved}, got {:?}",
            loaded.last_log_id
        );
    }
}

#[test]
fn a_corrupt_snapshot_is_reported() {
    let disk = FaultyStorage::new(1);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    store.save(None, b"meta", &[5; 1000]).unwrap();
    // Header, meta, the packed data's first and last bytes and one between.
    let size = disk
        .durable_contents(&dir().join(SNAPSHOT_FILE_NAME))
        .unwrap()
        .len() as u64;
    for byte in [0u64, 7, 10, 48, 63, 64, 68, 70, size / 2, size - 1] {
        let disk = FaultyStorage::new(1);
        let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        store.save(None, b"meta", &[5; 1000]).unwrap();
        disk.flip_bit(&dir().join(SNAPSHOT_FILE_NAME), byte, 2);
        let error = store.load_latest().expect_err("flipped bit accepted");
        assert!(error.is_fatal(), "{error}");
    }
    assert!(SnapshotStore::open(FaultyStorage::new(3).shared(), dir())
        .unwrap()
        .load_latest()
        .unwrap()
        .is_none());
}

#[test]
fn real_filesystem_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let storage = FsStorage::shared();
    let options = JournalOptions {
        segment_size: 64 * 1024,
    };
    let mut random = SplitMix64::new(9);
    let entries: Vec<Entry> = (0..400)
        .map(|index| random_entry(&mut random, id(1 + index / 100, index)))
        .collect();
    {
        let (mut journal, report) =
            Journal::open(storage.clone(), temp.path(), options.clone()).unwrap();
        assert_eq!(report.segment_count, 0);
        for chunk in entries.chunks(37) {
            journal.append_all(chunk).unwrap();
            assert_eq!(
                journal.sync().unwrap(),
                Some(chunk.last().unwrap().id.index)
            );
        }
        journal.truncate_after(Some(349)).unwrap();
        journal.purge_through(entries[99].id).unwrap();
    }
    let (journal, report) = Journal::open(storage.clone(), temp.path(), options).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&journal), entries[100..350]);
    assert_eq!(journal.purged_id(), Some(entries[99].id));

    let mut snapshots = SnapshotStore::open(storage.clone(), temp.path()).unwrap();
    snapshots
        .save(Some(entries[99].id), b"meta", &[7; 100_000])
        .unwrap();
    let loaded = snapshots.load_latest().unwrap().unwrap();
    assert_eq!(
        (loaded.last_log_id, loaded.data.len()),
        (Some(entries[99].id), 100_000)
    );
    let mut meta = MetaStore::open(storage.clone(), temp.path()).unwrap();
    meta.save(b"vote 1").unwrap();
    meta.save(b"vote 2").unwrap();
    assert_eq!(
        MetaStore::open(storage, temp.path()).unwrap().load(),
        Some(&b"vote 2"[..])
    );
}

/// Entries of every size, large ones (whose payloads are gathered into the write, not copied
/// into the buffer) between small ones, a few to a segment.
fn entries_large_and_small(random: &mut SplitMix64, count: u64) -> Vec<Entry> {
    (0..count)
        .map(|index| {
            if random.below(3) == 0 {
                random_entry(random, id(1, index))
            } else {
                let events = [1, 511, 512, 513, 2048, 8189][random.below(6) as usize];
                let byte = random.next_u64() as u8;
                let payload: Vec<u8> = (0..events * EVENT_SIZE)
                    .map(|offset| byte ^ (offset as u8))
                    .collect();
                Entry::batch(id(1, index), 1, index, payload)
            }
        })
        .collect()
}

#[test]
fn large_entries_round_trip_on_the_real_filesystem_and_the_simulated_disk() {
    let options = JournalOptions {
        segment_size: 4 * 1024 * 1024,
    };
    let mut random = SplitMix64::new(11);
    let entries = entries_large_and_small(&mut random, 60);
    assert!(entries.iter().any(|entry| entry.payload.len() >= 64 * 1024));
    let temp = tempfile::tempdir().unwrap();
    let disk = FaultyStorage::new(3);
    let places: [(Arc<dyn Storage>, &Path); 2] = [
        (FsStorage::shared(), temp.path()),
        (disk.shared(), Path::new("/journal")),
    ];
    for (storage, path) in places {
        {
            let (mut journal, _) = Journal::open(storage.clone(), path, options.clone()).unwrap();
            for chunk in entries.chunks(7) {
                journal.append_all(chunk).unwrap();
                journal.sync().unwrap();
                // Read back at once, from the journal that wrote them.
                assert_eq!(journal.read(chunk[0].id.index..).unwrap(), chunk);
            }
        }
        let (journal, report) = Journal::open(storage, path, options.clone()).unwrap();
        assert_eq!(report.torn_tail, None);
        assert!(
            report.segment_count > 1,
            "the entries span several segments"
        );
        assert_eq!(read_all(&journal), entries);
    }
}

#[test]
fn real_filesystem_torn_tail_is_cut() {
    let temp = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_size: 64 * 1024,
    };
    {
        let (mut journal, _) =
            Journal::open(FsStorage::shared(), temp.path(), options.clone()).unwrap();
        journal
            .append_all(&(0..5).map(|index| batch(1, index)).collect::<Vec<_>>())
            .unwrap();
        journal.sync().unwrap();
    }
    // Tear the last entry: zero the end of its payload.
    let path = temp.path().join(format!("{:020}.tlog", 0));
    let file = FsStorage.open(&path).unwrap();
    let last_end = 64 + 5 * (64 + 2 * EVENT_SIZE as u64);
    file.write_at(&[0; 100], last_end - 100).unwrap();
    let (journal, report) = Journal::open(FsStorage::shared(), temp.path(), options).unwrap();
    assert_eq!(journal.last_index(), Some(3));
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(
        (torn.index, torn.offset),
        (4, 64 + 4 * (64 + 2 * EVENT_SIZE as u64))
    );
}

#[test]
fn reads_proceed_while_a_group_commit_syncs() {
    let temp = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(
        FsStorage::shared(),
        temp.path(),
        JournalOptions {
            segment_size: 256 * 1024,
        },
    )
    .unwrap();
    let journal = Arc::new(RwLock::new(journal));
    const ENTRY_COUNT: u64 = 600;
    let writer = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            for group in 0..ENTRY_COUNT / 20 {
                let entries: Vec<Entry> = (group * 20..(group + 1) * 20)
                    .map(|index| batch(1, index))
                    .collect();
                journal.write().unwrap().append_all(&entries).unwrap();
                let ticket = journal.read().unwrap().prepare_sync();
                // No lock held while fdatasync runs.
                let durable = ticket.sync().unwrap();
                journal.write().unwrap().mark_durable(durable);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                while seen < ENTRY_COUNT {
                    let guard = journal.read().unwrap();
                    let entries = guard.read(seen..seen + 50).unwrap();
                    drop(guard);
                    for entry in &entries {
                        assert_eq!(entry, &batch(1, entry.id.index));
                    }
                    seen += entries.len() as u64;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(
        journal.read().unwrap().durable_index(),
        Some(ENTRY_COUNT - 1)
    );
}

#[test]
fn a_snapshot_streamed_in_pieces_is_saved_whole_and_one_cut_short_is_not_saved() {
    let disk = FaultyStorage::new(11);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|value| value as u8).collect();
    let pieces: Vec<Vec<u8>> = data.chunks(7_000).map(<[u8]>::to_vec).collect();
    let mut written = 0;
    store
        .save_streamed(
            Some(id(3, 40)),
            b"meta",
            data.len() as u64,
            pieces.clone(),
            |_piece| written += 1,
            std::time::Duration::ZERO,
        )
        .unwrap();
    assert_eq!(written, pieces.len());
    let saved = store.load_latest().unwrap().unwrap();
    assert_eq!(saved.data, data);
    assert_eq!(saved.meta, b"meta");
    assert_eq!(saved.last_log_id, Some(id(3, 40)));
    // The same bytes as saved in one piece.
    let whole = FaultyStorage::new(12);
    SnapshotStore::open(whole.shared(), dir())
        .unwrap()
        .save(Some(id(3, 40)), b"meta", &data)
        .unwrap();
    assert_eq!(
        whole.durable_contents(&dir().join(SNAPSHOT_FILE_NAME)),
        disk.durable_contents(&dir().join(SNAPSHOT_FILE_NAME))
    );

    // Short of the announced length, or past it: an error, and the latest snapshot stays.
    for (announced, pieces) in [
        (data.len() as u64 + 1, pieces.clone()),
        (data.len() as u64 - 1, pieces.clone()),
        (data.len() as u64, pieces[..pieces.len() - 1].to_vec()),
    ] {
        let outcome = store.save_streamed(
            Some(id(4, 90)),
            b"newer",
            announced,
            pieces,
            |_| {},
            std::time::Duration::ZERO,
        );
        assert!(
            matches!(outcome, Err(Error::SnapshotLength { .. })),
            "{outcome:?}"
        );
        assert!(!outcome.unwrap_err().is_fatal());
        let latest = store.load_latest().unwrap().unwrap();
        assert_eq!(latest.last_log_id, Some(id(3, 40)));
        assert_eq!(latest.data, data);
    }
}

/// A snapshot file as the store lays it out (docs/design.md §3), checksummed: `encoding` 0
/// holds `stored` as the data, 1 holds it packed with `data_len` bytes unpacked.
fn snapshot_file(encoding: u8, meta: &[u8], data_len: u64, stored: &[u8]) -> Vec<u8> {
    let mut file = vec![0u8; 64];
    file[0..4].copy_from_slice(b"TLYS");
    file[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    file[7] = encoding;
    file[32..36].copy_from_slice(&(meta.len() as u32).to_le_bytes());
    file[40..48].copy_from_slice(&data_len.to_le_bytes());
    if encoding == 1 {
        file[48..56].copy_from_slice(&(stored.len() as u64).to_le_bytes());
    }
    file.extend_from_slice(meta);
    file.extend_from_slice(stored);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&file[..60]), &file[64..]);
    file[60..64].copy_from_slice(&crc.to_le_bytes());
    file
}

/// 128-byte records shaped like the engine's transfers: a client's numbered ids, a few
/// accounts, small amounts, a timestamp moving by one.
fn transfer_like_records(count: u64) -> Vec<u8> {
    (0..count)
        .flat_map(|index| {
            let mut record = [0u8; 128];
            record[0..8].copy_from_slice(&(1_000_000 + index).to_le_bytes());
            record[8..16].copy_from_slice(&0x5eed_u64.to_le_bytes());
            record[16..24].copy_from_slice(&(index * 7919 % 1000 + 1).to_le_bytes());
            record[32..40].copy_from_slice(&(index * 104_729 % 1000 + 1).to_le_bytes());
            record[48..56].copy_from_slice(&(index % 997 + 1).to_le_bytes());
            record[112..116].copy_from_slice(&1u32.to_le_bytes());
            record[116..118].copy_from_slice(&1u16.to_le_bytes());
            record[120..128].copy_from_slice(&(1 << 40 | index).to_le_bytes());
            record
        })
        .collect()
}

#[test]
fn snapshot_data_is_stored_packed_and_read_back_as_given() {
    let disk = FaultyStorage::new(21);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    let data = transfer_like_records(10_000);
    let pieces: Vec<Vec<u8>> = data.chunks(3_001).map(<[u8]>::to_vec).collect();
    let stored = store
        .save_streamed(
            Some(id(2, 9)),
            b"meta",
            data.len() as u64,
            pieces,
            |_| {},
            std::time::Duration::ZERO,
        )
        .unwrap();
    let file = disk
        .durable_contents(&dir().join(SNAPSHOT_FILE_NAME))
        .unwrap();
    assert_eq!(file.len() as u64, 64 + 4 + stored);
    assert_eq!(file[7], 1, "packed");
    // Tags and the bytes that change from one record to the next: about a fifth.
    assert!(stored * 4 < data.len() as u64, "{stored} of {}", data.len());
    assert_eq!(store.load_latest().unwrap().unwrap().data, data);
    for len in [0, 1, 7, 8, 100, 128, 4096, data.len(), data.len() + 10] {
        let (log_id, prefix) = store.peek_latest(len).unwrap().unwrap();
        assert_eq!(log_id, Some(id(2, 9)));
        assert_eq!(prefix, data[..len.min(data.len())], "peek {len}");
    }
}

#[test]
fn a_snapshot_saved_unpacked_still_loads() {
    let disk = FaultyStorage::new(22);
    let data: Vec<u8> = (0..1000u32).map(|value| (value * 31) as u8).collect();
    disk.put_durable(
        &dir().join(SNAPSHOT_FILE_NAME),
        &snapshot_file(0, b"old", data.len() as u64, &data),
    );
    let store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(
        (loaded.meta.as_slice(), loaded.data),
        (&b"old"[..], data.clone())
    );
    assert_eq!(store.peek_latest(10).unwrap().unwrap().1, data[..10]);
}

#[test]
fn packed_bytes_that_do_not_unpack_are_corruption_even_under_a_valid_checksum() {
    let good = tally_journal::pack::pack(&[9u8; 100]);
    let cases: Vec<(&str, u8, u64, Vec<u8>)> = vec![
        ("ends inside a word", 1, 16, vec![0xff, 1, 2, 3]),
        (
            "bytes after the last word",
            1,
            100,
            [good.clone(), vec![0]].concat(),
        ),
        ("padding not zero", 1, 99, good.clone()),
        ("more words than stored bytes", 1, 800, vec![0; 99]),
        (
            "more stored bytes than any packing needs",
            1,
            8,
            vec![0; 10],
        ),
        ("unknown encoding", 2, 100, good.clone()),
    ];
    for (case, encoding, data_len, stored) in cases {
        let disk = FaultyStorage::new(23);
        disk.put_durable(
            &dir().join(SNAPSHOT_FILE_NAME),
            &snapshot_file(encoding, b"m", data_len, &stored),
        );
        let store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        let error = store.load_latest().expect_err(case);
        assert!(
            matches!(error, Error::Corruption { .. }) && error.is_fatal(),
            "{case}: {error}"
        );
    }
}
