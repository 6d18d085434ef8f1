//! Crash-safety properties of the journal under the fault-injecting storage. Every case
//! is reproducible from its seed (printed on failure).

mod common;

use std::collections::BTreeMap;

use common::{open, random_entry, read_all, TEST_SEGMENT_SIZE};
use tally_journal::fault::{CrashModel, FaultyStorage, SplitMix64};
use tally_journal::limits::SEGMENT_HEADER_SIZE;
use tally_journal::{Entry, EntryId, Error, Journal, SEGMENT_FILE_SUFFIX};

const CRASH_CASE_COUNT: u64 = 2000;
const OPERATIONS_MAX: u64 = 120;

/// What the test knows about the log: the entries it should hold and what was reported durable.
#[derive(Clone, Debug, Default)]
struct Model {
    entries: BTreeMap<u64, Entry>,
    durable: Option<u64>,
    purged: Option<EntryId>,
    /// Term for new entries; bumped by every truncation (a new leader).
    term: u64,
}

impl Model {
    fn last(&self) -> Option<EntryId> {
        self.entries
            .values()
            .next_back()
            .map(|entry| entry.id)
            .or(self.purged)
    }

    fn next_index(&self, random: &mut SplitMix64) -> u64 {
        match self.last() {
            Some(last) => last.index + 1,
            None => random.below(3),
        }
    }
}

/// The operation in flight when the disk crashed, and the model had it completed.
enum InFlight {
    None,
    Append,
    Sync,
    Truncate { index: Option<u64> },
    Purge { id: EntryId },
}

fn apply_random_operation(
    journal: &mut Journal,
    model: &mut Model,
    random: &mut SplitMix64,
) -> (InFlight, Model, tally_journal::Result<()>) {
    let before = model.clone();
    let choice = random.below(100);
    if choice < 55 || model.entries.is_empty() {
        let count = 1 + random.below(5);
        let first = model.next_index(random);
        let entries: Vec<Entry> = (0..count)
            .map(|offset| {
                random_entry(
                    random,
                    EntryId::new(model.term, model.term % 3, first + offset),
                )
            })
            .collect();
        for entry in &entries {
            model.entries.insert(entry.id.index, entry.clone());
        }
        return (InFlight::Append, before, journal.append_all(&entries));
    }
    if choice < 85 {
        let result = journal.sync().map(|durable| {
            model.durable = durable;
        });
        return (InFlight::Sync, before, result);
    }
    let first = *model.entries.keys().next().expect("non-empty");
    let last = *model.entries.keys().next_back().expect("non-empty");
    if choice < 93 {
        let index = first
            .checked_sub(1)
            .map(|before_first| before_first + random.below(last - before_first + 1));
        let index = match (index, model.purged) {
            (None, Some(purged)) => Some(purged.index),
            (Some(index), Some(purged)) if index < purged.index => Some(purged.index),
            (index, _) => index,
        };
        model
            .entries
            .retain(|&entry_index, _| Some(entry_index) <= index);
        model.term += 1;
        if index < Some(last) {
            // A truncation that removes entries syncs what remains.
            model.durable = model.last().map(|id| id.index);
        }
        return (
            InFlight::Truncate { index },
            before,
            journal.truncate_after(index),
        );
    }
    // Purge: through a durable entry, or past the end (a snapshot installed from the leader).
    let id = match model.durable {
        Some(durable) if durable >= first && random.chance(3, 4) => {
            model.entries[&(first + random.below(durable - first + 1))].id
        }
        _ => EntryId::new(model.term, model.term % 3, last + 1 + random.below(3)),
    };
    model
        .entries
        .retain(|&entry_index, _| entry_index > id.index);
    model.purged = Some(id);
    if model.entries.is_empty() {
        model.durable = Some(id.index);
    }
    (InFlight::Purge { id }, before, journal.purge_through(id))
}

/// The recovered log must be a prefix of the log before or after the operation in
/// flight, and hold at least everything reported durable.
fn check_recovered(
    seed: u64,
    journal: &Journal,
    before: &Model,
    after: &Model,
    in_flight: &InFlight,
) {
    let recovered = read_all(journal);
    let matches = |model: &Model| {
        recovered
            .iter()
            .all(|entry| model.entries.get(&entry.id.index) == Some(entry))
    };
    assert!(
        matches(before) || matches(after),
        "seed {seed}: recovered entries are not a prefix of the log"
    );
    for pair in recovered.windows(2) {
        assert_eq!(
            pair[0].id.index + 1,
            pair[1].id.index,
            "seed {seed}: hole in the recovered log"
        );
    }
    let recovered_last = journal.last_entry_id().map(|id| id.index);
    let durable_required = match in_flight {
        // Truncating below the first entry (a log that began past index 0) keeps none of
        // them: what must remain is the purge point, if any.
        InFlight::Truncate { index } => match before.durable.min(*index) {
            Some(required) if before.entries.range(..=required).next().is_none() => {
                before.purged.map(|purged| purged.index)
            }
            required => required,
        },
        _ => before.durable,
    };
    assert!(recovered_last >= durable_required, "seed {seed}: lost durable entries: recovered through {recovered_last:?}, durable {durable_required:?}");
    let purged = journal.purged_id();
    let purge_ok = purged == before.purged
        || matches!(in_flight, InFlight::Purge { id } if purged == Some(*id));
    assert!(purge_ok, "seed {seed}: unexpected purge record {purged:?}");
    if let (Some(purged), Some(first)) = (purged, journal.first_index()) {
        assert_eq!(
            first,
            purged.index + 1,
            "seed {seed}: first index does not follow the purge point"
        );
    }
    if let Some(last) = recovered.last() {
        let before_last = before.entries.keys().next_back().copied();
        let after_last = after.entries.keys().next_back().copied();
        assert!(
            Some(last.id.index) <= before_last.max(after_last),
            "seed {seed}: entries beyond what was appended"
        );
    }
}

fn crash_case(seed: u64) {
    let disk = FaultyStorage::new(seed);
    let mut random = SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (mut journal, _) = open(&disk).expect("open an empty journal");
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    disk.crash_after(random.below(400));
    let mut outcome = None;
    for _ in 0..OPERATIONS_MAX {
        let (in_flight, before, result) =
            apply_random_operation(&mut journal, &mut model, &mut random);
        if std::env::var("TRACE_SEED").ok() == Some(seed.to_string()) {
            eprintln!(
                "{:?} {:?} {:?}",
                model.last(),
                model.durable,
                result.as_ref().err()
            );
            for name in disk.shared().list(common::dir()).unwrap_or_default() {
                let durable = disk.durable_contents(&common::dir().join(&name)).unwrap();
                eprintln!(
                    "  {name}: durable {} bytes; mutations {}",
                    durable.len(),
                    disk.mutations()
                );
            }
        }
        match result {
            Ok(()) => {}
            Err(error) => {
                assert!(
                    error.is_fatal(),
                    "seed {seed}: misuse error from a valid workload: {error}"
                );
                outcome = Some((in_flight, before));
                break;
            }
        }
    }
    let (in_flight, before) = outcome.unwrap_or_else(|| (InFlight::None, model.clone()));
    drop(journal);
    disk.reboot();
    if std::env::var("TRACE_SEED").ok() == Some(seed.to_string()) {
        for name in disk.shared().list(common::dir()).unwrap() {
            let contents = disk.contents(&common::dir().join(&name)).unwrap();
            eprintln!(
                "{name}: {} bytes, {:?}",
                contents.len(),
                &contents[..contents.len().min(80)]
            );
        }
    }
    let (journal, _report) =
        open(&disk).unwrap_or_else(|error| panic!("seed {seed}: recovery failed: {error}"));
    if std::env::var("TRACE_SEED").ok() == Some(seed.to_string()) {
        eprintln!("{_report:?}");
    }
    check_recovered(seed, &journal, &before, &model, &in_flight);
    continue_after_recovery(seed, &disk, journal);
}

/// The recovered journal accepts appends, and what it then syncs survives another crash.
fn continue_after_recovery(seed: u64, disk: &FaultyStorage, mut journal: Journal) {
    let mut random = SplitMix64::new(seed ^ 0xA5A5);
    let term = journal.last_entry_id().map_or(1, |id| id.term) + 1;
    let first = journal.last_entry_id().map_or(0, |id| id.index + 1);
    let entries: Vec<Entry> = (0..6)
        .map(|offset| random_entry(&mut random, EntryId::new(term, 0, first + offset)))
        .collect();
    journal.append_all(&entries).unwrap();
    journal.sync().unwrap();
    let expected = read_all(&journal);
    drop(journal);
    disk.reboot();
    let (journal, report) =
        open(disk).unwrap_or_else(|error| panic!("seed {seed}: second recovery failed: {error}"));
    assert_eq!(report.torn_tail, None, "seed {seed}");
    assert_eq!(
        read_all(&journal),
        expected,
        "seed {seed}: synced entries lost"
    );
}

#[test]
fn recovery_after_a_crash_at_any_point_yields_a_durable_prefix() {
    for seed in 0..CRASH_CASE_COUNT {
        crash_case(seed);
    }
}

/// Byte layout of a log written without crashes, computed from the documented format.
struct Layout {
    /// (segment file name, offset, size) of every entry, in order.
    records: Vec<(String, u64, u64)>,
}

fn write_log(disk: &FaultyStorage, random: &mut SplitMix64, count: u64) -> (Vec<Entry>, Layout) {
    let (mut journal, _) = open(disk).unwrap();
    let mut entries = Vec::new();
    let mut records = Vec::new();
    let mut segment: Option<(String, u64)> = None;
    for index in 0..count {
        let entry = random_entry(random, EntryId::new(1 + index / 7, 1, index));
        let size = entry.record_size() as u64;
        let fits = segment
            .as_ref()
            .is_some_and(|(_, end)| end + size <= TEST_SEGMENT_SIZE);
        if !fits {
            segment = Some((
                format!("{index:020}{SEGMENT_FILE_SUFFIX}"),
                SEGMENT_HEADER_SIZE as u64,
            ));
        }
        let (name, end) = segment.as_mut().expect("set above");
        records.push((name.clone(), *end, size));
        *end += size;
        journal.append(&entry).unwrap();
        if random.chance(1, 3) {
            journal.sync().unwrap();
        }
        entries.push(entry);
    }
    journal.sync().unwrap();
    (entries, Layout { records })
}

#[test]
fn a_flipped_bit_anywhere_is_detected() {
    for seed in 0..300u64 {
        let disk = FaultyStorage::with_model(seed, CrashModel::DropUnsynced);
        let mut random = SplitMix64::new(seed);
        let count = 2 + random.below(40);
        let (entries, layout) = write_log(&disk, &mut random, count);
        // Any byte of any segment header or entry record.
        let target = random.below(count) as usize;
        let (name, record_offset, size) = layout.records[target].clone();
        let in_header = random.chance(1, 8);
        let byte = if in_header {
            random.below(SEGMENT_HEADER_SIZE as u64)
        } else {
            record_offset + random.below(size)
        };
        disk.flip_bit(&common::dir().join(&name), byte, random.below(8) as u8);
        let is_last_segment = layout.records.last().map(|record| &record.0) == Some(&name);
        let segment_has_one_entry = layout
            .records
            .iter()
            .filter(|record| record.0 == name)
            .count()
            == 1;
        let tail = target == entries.len() - 1
            && (!in_header || (is_last_segment && segment_has_one_entry));
        match open(&disk) {
            Ok((journal, report)) => {
                assert!(
                    tail,
                    "seed {seed}: flip at {name}:{byte} (entry {target}) accepted"
                );
                assert!(
                    report.torn_tail.is_some() || !report.removed_segments.is_empty(),
                    "seed {seed}: cut not reported"
                );
                assert_eq!(
                    read_all(&journal),
                    entries[..entries.len() - 1],
                    "seed {seed}"
                );
            }
            Err(error) => {
                assert!(
                    !tail || in_header,
                    "seed {seed}: a damaged tail must be cut, not refused: {error}"
                );
                assert!(error.is_fatal(), "seed {seed}");
                assert!(
                    matches!(
                        error,
                        Error::Corruption { .. } | Error::UnsupportedVersion { .. }
                    ),
                    "seed {seed}: {error}"
                );
            }
        }
    }
}

#[test]
fn a_flipped_bit_is_detected_by_reads_after_open() {
    let disk = FaultyStorage::with_model(7, CrashModel::DropUnsynced);
    let mut random = SplitMix64::new(7);
    let (_, layout) = write_log(&disk, &mut random, 20);
    let (journal, _) = open(&disk).unwrap();
    let (name, offset, size) = layout.records[5].clone();
    disk.flip_bit(&common::dir().join(&name), offset + size / 2, 3);
    match journal.read(3..=8) {
        Err(Error::Corruption {
            index: Some(5),
            offset: found,
            ..
        }) => assert_eq!(found, offset),
        other => panic!("expected corruption of entry 5, got {other:?}"),
    }
}

#[test]
fn corruption_in_the_middle_names_segment_offset_and_index() {
    let disk = FaultyStorage::with_model(11, CrashModel::DropUnsynced);
    let mut random = SplitMix64::new(11);
    let (_, layout) = write_log(&disk, &mut random, 30);
    let (name, offset, _) = layout.records[2].clone();
    disk.flip_bit(&common::dir().join(&name), offset + 30, 0);
    let error = open(&disk).expect_err("middle corruption must be refused");
    let message = error.to_string();
    assert!(
        message.contains(&name)
            && message.contains(&format!("offset {offset}"))
            && message.contains("Some(2)"),
        "{message}"
    );
}

#[test]
fn failed_fsync_poisons_the_journal() {
    let disk = FaultyStorage::new(3);
    let (mut journal, _) = open(&disk).unwrap();
    let mut random = SplitMix64::new(3);
    journal
        .append(&random_entry(&mut random, EntryId::new(1, 1, 0)))
        .unwrap();
    disk.fail_syncs(1);
    let error = journal.sync().expect_err("injected fsync failure");
    assert!(
        error.is_fatal() && matches!(error, Error::Io { .. }),
        "{error}"
    );
    assert!(journal.is_poisoned());
    let again = journal.append(&random_entry(&mut random, EntryId::new(1, 1, 1)));
    assert!(matches!(again, Err(Error::Poisoned)));
    assert!(matches!(journal.sync(), Err(Error::Poisoned)));
    assert!(matches!(journal.truncate_after(None), Err(Error::Poisoned)));
    assert_eq!(journal.durable_index(), None);
}
