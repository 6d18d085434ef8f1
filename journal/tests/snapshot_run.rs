//! Snapshots whose run of records (the engine's transfers) lives in a run file that later
//! snapshots extend in place: they load whole, survive a crash at any point of an extension,
//! and a damaged or missing run is corruption, never a panic.

mod common;

use common::dir;
use tally_journal::fault::{FaultyStorage, SplitMix64};
use tally_journal::{
    EntryId, Error, RunPlan, SnapshotStore, SNAPSHOT_FILE_NAME, SNAPSHOT_RUN_FILE_PREFIX,
};

const RECORD: usize = 128;

fn id(index: u64) -> EntryId {
    EntryId::new(1, 1, index)
}

/// Snapshot data shaped like the engine's: `head` bytes, then `records` 128-byte records that
/// differ little from one another, then `tail` bytes.
fn data(head: usize, records: usize, tail: usize, salt: u8) -> Vec<u8> {
    let mut data: Vec<u8> = (0..head).map(|byte| (byte as u8) ^ salt).collect();
    for record in 0..records {
        let mut bytes = [0u8; RECORD];
        bytes[..8].copy_from_slice(&(record as u64 * 3 + 1).to_le_bytes());
        bytes[40] = (record % 7) as u8;
        data.extend_from_slice(&bytes);
    }
    data.extend((0..tail).map(|byte| (byte as u8).wrapping_mul(5) ^ salt));
    data
}

fn run_files(disk: &FaultyStorage) -> Vec<String> {
    let mut names: Vec<String> = disk
        .shared()
        .list(dir())
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with(SNAPSHOT_RUN_FILE_PREFIX))
        .collect();
    names.sort();
    names
}

/// Saves `data` (its run `head..head + records × 128`) extending the store's run if it offers
/// one, streaming the data less what that run holds; the bytes written.
fn save_extending(
    store: &mut SnapshotStore,
    index: u64,
    data: &[u8],
    head: usize,
    records: usize,
) -> tally_journal::Result<u64> {
    let extends = store.run_tail();
    let kept = extends.as_ref().map_or(0, |tail| tail.len as usize);
    let streamed: Vec<u8> = [&data[..head], &data[head + kept..]].concat();
    let plan = RunPlan {
        offset: head as u64,
        len: (records * RECORD) as u64,
        extends,
    };
    let pieces: Vec<Vec<u8>> = streamed.chunks(1000).map(<[u8]>::to_vec).collect();
    store.save_streamed_with_run(
        Some(id(index)),
        b"meta",
        data.len() as u64,
        plan,
        pieces,
        |_| {},
        std::time::Duration::ZERO,
    )
}

#[test]
fn a_run_is_extended_in_place_and_every_snapshot_loads_whole() {
    let disk = FaultyStorage::new(1);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    assert_eq!(store.run_tail(), None);
    let mut written = Vec::new();
    for (step, records) in [(1u64, 300usize), (2, 300), (3, 1000), (4, 5000)] {
        let data = data(1000 + step as usize * 128, records, 77, step as u8);
        let head = 1000 + step as usize * 128;
        written.push(save_extending(&mut store, step, &data, head, records).unwrap());
        let tail = store.run_tail().expect("a run to extend");
        assert_eq!(tail.len, (records * RECORD) as u64);
        assert_eq!(
            tail.data_crc,
            crc32c::crc32c(&data[head..head + records * RECORD])
        );
        assert_eq!(
            &tail.last_record[..],
            &data[head + (records - 1) * RECORD..][..RECORD]
        );
        let loaded = store.load_latest().unwrap().unwrap();
        assert_eq!(loaded.last_log_id, Some(id(step)));
        assert_eq!(loaded.data, data, "step {step}");
        // One run file, extended: the first one's name throughout.
        assert_eq!(run_files(&disk), [format!("{SNAPSHOT_RUN_FILE_PREFIX}1")]);
        // A store opened afresh reads the same, and offers the same run once it has loaded.
        let reopened = SnapshotStore::open(disk.shared(), dir()).unwrap();
        assert_eq!(reopened.run_tail(), None);
        assert_eq!(reopened.load_latest().unwrap().unwrap().data, data);
        assert_eq!(reopened.run_tail(), Some(tail));
    }
    // The same records again write only the head and tail; 3,700 more records write more
    // than 700 did.
    assert!(written[1] < written[0], "{written:?}");
    assert!(written[3] > written[2], "{written:?}");

    // A snapshot without a run (one installed from a leader) replaces the run: its file goes,
    // and nothing is offered to extend.
    store.save(Some(id(5)), b"meta", &[9; 5000]).unwrap();
    assert_eq!(store.run_tail(), None);
    assert!(run_files(&disk).is_empty());
    assert_eq!(store.load_latest().unwrap().unwrap().data, [9; 5000]);
    // The next run is a new file, named after none that is there.
    let data = data(500, 40, 3, 6);
    save_extending(&mut store, 6, &data, 500, 40).unwrap();
    assert_eq!(run_files(&disk), [format!("{SNAPSHOT_RUN_FILE_PREFIX}1")]);
    assert_eq!(store.load_latest().unwrap().unwrap().data, data);
}

#[test]
fn extending_a_run_that_is_no_longer_the_latest_saves_nothing() {
    let disk = FaultyStorage::new(2);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    let first = data(300, 50, 10, 1);
    save_extending(&mut store, 1, &first, 300, 50).unwrap();
    let stale = store.run_tail().unwrap();
    let second = data(300, 80, 10, 2);
    save_extending(&mut store, 2, &second, 300, 80).unwrap();
    let plan = RunPlan {
        offset: 300,
        len: 90 * RECORD as u64,
        extends: Some(stale),
    };
    let third = data(300, 90, 10, 3);
    let outcome = store.save_streamed_with_run(
        Some(id(3)),
        b"meta",
        third.len() as u64,
        plan,
        [&third[..300], &third[300 + 50 * RECORD..]],
        |_| {},
        std::time::Duration::ZERO,
    );
    assert!(
        matches!(outcome, Err(Error::SnapshotRunChanged)),
        "{outcome:?}"
    );
    // A run that is not whole records, or does not fit in the data: misuse, nothing saved.
    for (offset, len) in [(300u64, 100u64), (300, 90 * RECORD as u64 * 2)] {
        let plan = RunPlan {
            offset,
            len,
            extends: None,
        };
        let outcome = store.save_streamed_with_run(
            Some(id(3)),
            b"meta",
            third.len() as u64,
            plan,
            [&third[..]],
            |_| {},
            std::time::Duration::ZERO,
        );
        assert!(
            matches!(outcome, Err(Error::InvalidOptions(_))),
            "{outcome:?}"
        );
    }
    assert_eq!(store.load_latest().unwrap().unwrap().data, second);
    // A stream short of what the plan says saves nothing either, and the run can still be
    // extended afterwards.
    let tail = store.run_tail().unwrap();
    let plan = RunPlan {
        offset: 300,
        len: 90 * RECORD as u64,
        extends: Some(tail),
    };
    let outcome = store.save_streamed_with_run(
        Some(id(3)),
        b"meta",
        third.len() as u64,
        plan,
        [&third[..300], &third[300 + 80 * RECORD..third.len() - 1]],
        |_| {},
        std::time::Duration::ZERO,
    );
    assert!(
        matches!(outcome, Err(Error::SnapshotLength { .. })),
        "{outcome:?}"
    );
    assert_eq!(store.load_latest().unwrap().unwrap().data, second);
    save_extending(&mut store, 3, &third, 300, 90).unwrap();
    assert_eq!(store.load_latest().unwrap().unwrap().data, third);
}

#[test]
fn a_crash_at_any_point_of_an_extension_leaves_the_old_snapshot_or_the_new_one() {
    for seed in 0..400u64 {
        let disk = FaultyStorage::new(seed);
        let mut random = SplitMix64::new(seed);
        let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        let old_records = 1 + random.below(3000) as usize;
        let old = data(200, old_records, 30, 1);
        save_extending(&mut store, 1, &old, 200, old_records).unwrap();
        // A run without a snapshot to its name, as a crash leaves it, is no obstacle.
        let new_records = old_records + random.below(3000) as usize;
        let new = data(328, new_records, 20, 2);
        disk.crash_after(random.below(16));
        let saved = save_extending(&mut store, 2, &new, 328, new_records).is_ok();
        disk.reboot();
        let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        let loaded = store
            .load_latest()
            .unwrap_or_else(|error| panic!("seed {seed}: {error}"))
            .expect("a snapshot");
        let is_new = loaded.last_log_id == Some(id(2)) && loaded.data == new;
        let is_old = loaded.last_log_id == Some(id(1)) && loaded.data == old;
        assert!(is_new || (!saved && is_old), "seed {seed}: saved {saved}");
        assert_eq!(run_files(&disk).len(), 1, "seed {seed}");
        // And the run goes on from whichever it is.
        let newest = data(200, new_records + 100, 5, 3);
        save_extending(&mut store, 3, &newest, 200, new_records + 100).unwrap();
        let reopened = SnapshotStore::open(disk.shared(), dir()).unwrap();
        assert_eq!(
            reopened.load_latest().unwrap().unwrap().data,
            newest,
            "seed {seed}"
        );
    }
}

/// The error loading the latest snapshot gives, by a store opened afresh on `disk`.
fn load_error(disk: &FaultyStorage, what: &str) -> Error {
    SnapshotStore::open(disk.shared(), dir())
        .unwrap()
        .load_latest()
        .expect_err(what)
}

#[test]
fn a_damaged_or_missing_run_is_corruption() {
    let records = 400;
    let data = data(256, records, 40, 4);
    let save = |disk: &FaultyStorage| {
        let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
        save_extending(&mut store, 1, &data, 256, records).unwrap();
    };
    let run = dir().join(format!("{SNAPSHOT_RUN_FILE_PREFIX}1"));
    let disk = FaultyStorage::new(3);
    save(&disk);
    let run_size = disk.durable_contents(&run).unwrap().len() as u64;
    for byte in [0, run_size / 2, run_size - 1] {
        let disk = FaultyStorage::new(3);
        save(&disk);
        disk.flip_bit(&run, byte, 5);
        let error = load_error(&disk, "flipped bit accepted");
        assert!(matches!(error, Error::Corruption { .. }), "{error}");
    }
    // The run record is under the snapshot file's checksum.
    for byte in [64, 64 + 16, 64 + 40, 127] {
        let disk = FaultyStorage::new(3);
        save(&disk);
        disk.flip_bit(&dir().join(SNAPSHOT_FILE_NAME), byte, 1);
        let error = load_error(&disk, "flipped bit accepted");
        assert!(matches!(error, Error::Corruption { .. }), "{error}");
    }
    // Cut short, or gone.
    let disk = FaultyStorage::new(3);
    save(&disk);
    let contents = disk.durable_contents(&run).unwrap();
    disk.put_durable(&run, &contents[..contents.len() - 1]);
    let error = load_error(&disk, "a short run accepted");
    assert!(matches!(error, Error::Corruption { .. }), "{error}");
    let disk = FaultyStorage::new(3);
    save(&disk);
    disk.shared().remove(&run).unwrap();
    let error = load_error(&disk, "a missing run accepted");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn peeking_reads_the_head_and_reaches_into_the_run_only_through_a_verified_load() {
    let disk = FaultyStorage::new(4);
    let mut store = SnapshotStore::open(disk.shared(), dir()).unwrap();
    let data = data(256, 30, 9, 7);
    save_extending(&mut store, 1, &data, 256, 30).unwrap();
    for len in [0, 10, 256, 257, 300, data.len(), data.len() + 10] {
        let (log_id, bytes) = store.peek_latest(len).unwrap().unwrap();
        assert_eq!(log_id, Some(id(1)));
        assert_eq!(bytes, data[..len.min(data.len())], "{len}");
    }
}
