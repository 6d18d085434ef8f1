//! `Journal::open_read_only` and `SnapshotStore::open_read_only`: they validate like
//! `open` but never change the directory (an audit must leave a node's data as it was).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{dir, open};
use tally_journal::fault::FaultyStorage;
use tally_journal::limits::EVENT_SIZE;
use tally_journal::{
    Entry, EntryId, Error, FsStorage, Journal, JournalOptions, SnapshotStore,
    SNAPSHOT_TEMP_FILE_NAME,
};

fn batch(index: u64) -> Entry {
    Entry::batch(
        EntryId::new(1, 1, index),
        1,
        index,
        vec![index as u8; 2 * EVENT_SIZE],
    )
}

/// A synced journal holding entries 1..=count, in small segments.
fn write_log(disk: &FaultyStorage, count: u64) {
    let (mut journal, _) = open(disk).unwrap();
    let entries: Vec<Entry> = (1..=count).map(batch).collect();
    journal.append_all(&entries).unwrap();
    journal.sync().unwrap();
}

fn last_segment(disk: &FaultyStorage) -> std::path::PathBuf {
    let names = disk.shared().list(dir()).unwrap();
    let name = names
        .iter()
        .filter(|name| name.ends_with(".tlog"))
        .max()
        .unwrap();
    dir().join(name)
}

fn assert_every_write_is_refused(journal: &mut Journal) {
    assert!(matches!(
        journal.append(&batch(1_000)),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(journal.sync(), Err(Error::ReadOnly)));
    assert!(matches!(
        journal.truncate_after(Some(1)),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(
        journal.purge_through(EntryId::new(1, 1, 2)),
        Err(Error::ReadOnly)
    ));
    assert!(!Error::ReadOnly.is_fatal());
}

#[test]
fn a_torn_tail_is_reported_and_left_in_place() {
    let disk = FaultyStorage::new(1);
    write_log(&disk, 40);
    let segment = last_segment(&disk);
    let bytes = disk.contents(&segment).unwrap();
    // Damage the last entry: find its header by scanning backwards for the magic.
    let last_start = (0..bytes.len() - 4)
        .rev()
        .step_by(1)
        .find(|&offset| offset % 8 == 0 && bytes[offset..offset + 4] == *b"TLYE")
        .unwrap();
    disk.flip_bit(&segment, last_start as u64 + 70, 3);
    let before = disk.contents(&segment).unwrap();
    let mutations = disk.mutations();

    let (mut journal, report) = Journal::open_read_only(disk.shared(), dir()).unwrap();
    let torn = report.torn_tail.clone().expect("the torn tail is reported");
    assert_eq!(torn.index, 40);
    assert_eq!(journal.first_index(), Some(1));
    assert_eq!(journal.last_index(), Some(39));
    assert_eq!(journal.read(..).unwrap().len(), 39);
    assert_every_write_is_refused(&mut journal);
    drop(journal);
    assert_eq!(disk.mutations(), mutations, "read-only open wrote");
    assert_eq!(disk.contents(&segment).unwrap(), before);

    // The ordinary open recovers (cuts) the same tail.
    let (journal, report) = open(&disk).unwrap();
    assert_eq!(report.torn_tail.map(|torn| torn.index), Some(40));
    assert_eq!(journal.last_index(), Some(39));
}

#[test]
fn mid_log_corruption_is_an_error_naming_the_index() {
    let disk = FaultyStorage::new(2);
    write_log(&disk, 40);
    let names = disk.shared().list(dir()).unwrap();
    let first = dir().join(names.iter().find(|name| name.ends_with(".tlog")).unwrap());
    // Second entry of the first segment: header 64 + first record.
    let record_size = 64 + 2 * EVENT_SIZE as u64;
    disk.flip_bit(&first, 64 + record_size + 100, 0);
    let mutations = disk.mutations();
    let error = Journal::open_read_only(disk.shared(), dir()).expect_err("corruption");
    match &error {
        Error::Corruption { index, .. } => assert_eq!(*index, Some(2), "{error}"),
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(disk.mutations(), mutations);
}

#[test]
fn purged_segments_are_skipped_not_removed() {
    let disk = FaultyStorage::new(3);
    write_log(&disk, 40);
    {
        let (mut journal, _) = open(&disk).unwrap();
        journal.purge_through(EntryId::new(1, 1, 20)).unwrap();
    }
    let files_before = disk.shared().list(dir()).unwrap();
    let mutations = disk.mutations();
    let (journal, report) = Journal::open_read_only(disk.shared(), dir()).unwrap();
    assert_eq!(report.purged, Some(EntryId::new(1, 1, 20)));
    assert_eq!(journal.first_index(), Some(21));
    assert_eq!(journal.last_index(), Some(40));
    assert_eq!(journal.read(..).unwrap().first().unwrap().id.index, 21);
    assert_eq!(disk.mutations(), mutations);
    assert_eq!(disk.shared().list(dir()).unwrap(), files_before);
}

/// Every file's bytes, by name.
fn tree(path: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(path)
        .unwrap()
        .map(|item| {
            let item = item.unwrap();
            (
                item.file_name().to_string_lossy().into_owned(),
                std::fs::read(item.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn real_filesystem_read_only_open_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let journal_dir = temp.path().join("log");
    let missing = Journal::open_read_only(FsStorage::shared(), &journal_dir);
    assert!(missing.is_err(), "a missing directory is an error");
    assert!(!journal_dir.exists(), "and is not created");
    {
        let (mut journal, _) = Journal::open(
            FsStorage::shared(),
            &journal_dir,
            JournalOptions {
                segment_size: common::TEST_SEGMENT_SIZE,
            },
        )
        .unwrap();
        let entries: Vec<Entry> = (1..=30).map(batch).collect();
        journal.append_all(&entries).unwrap();
        journal.sync().unwrap();
        let mut snapshots = SnapshotStore::open(FsStorage::shared(), &journal_dir).unwrap();
        snapshots
            .save(Some(EntryId::new(1, 1, 30)), b"meta", b"state")
            .unwrap();
    }
    std::fs::write(journal_dir.join(SNAPSHOT_TEMP_FILE_NAME), b"half written").unwrap();
    let before = tree(&journal_dir);

    let (mut journal, report) = Journal::open_read_only(FsStorage::shared(), &journal_dir).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(
        journal.read(..).unwrap(),
        (1..=30).map(batch).collect::<Vec<_>>()
    );
    assert_every_write_is_refused(&mut journal);
    let mut snapshots = SnapshotStore::open_read_only(FsStorage::shared(), &journal_dir);
    let snapshot = snapshots.load_latest().unwrap().unwrap();
    assert_eq!(snapshot.data, b"state");
    assert!(matches!(
        snapshots.save(None, b"", b""),
        Err(Error::ReadOnly)
    ));
    drop(journal);
    assert_eq!(tree(&journal_dir), before, "the directory is unchanged");
}

#[test]
fn verifying_on_read_defers_a_sealed_segments_checksums_to_the_read() {
    let disk = FaultyStorage::new(2);
    write_log(&disk, 40);
    let mut names = disk.shared().list(dir()).unwrap();
    names.retain(|name| name.ends_with(".tlog"));
    names.sort();
    assert!(names.len() > 1, "the damage must be in a sealed segment");
    let first = dir().join(&names[0]);
    // A payload byte of the second entry: its header still reads as valid.
    let record_size = 64 + 2 * EVENT_SIZE as u64;
    disk.flip_bit(&first, 64 + record_size + 100, 0);
    let mutations = disk.mutations();

    let (journal, report) = Journal::open_read_only_verifying_on_read(disk.shared(), dir())
        .expect("headers are intact");
    assert_eq!(report.torn_tail, None);
    assert_eq!(journal.last_index(), Some(40));
    assert_eq!(journal.entry(1).unwrap(), Some(batch(1)));
    match journal.entry(2) {
        Err(Error::Corruption { index, .. }) => assert_eq!(index, Some(2)),
        other => panic!("expected corruption at index 2, got {other:?}"),
    }
    assert!(journal.read(1..=40).is_err());
    assert_eq!(journal.entry(40).unwrap(), Some(batch(40)));
    assert_eq!(disk.mutations(), mutations);

    // A damaged header is still found at open, as by a full open.
    disk.flip_bit(&first, 64 + record_size + 24, 0); // its index
    let error = Journal::open_read_only_verifying_on_read(disk.shared(), dir())
        .expect_err("a broken header is corruption");
    assert!(matches!(error, Error::Corruption { .. }), "{error}");
}
