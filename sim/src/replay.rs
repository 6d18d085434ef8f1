//! Audit replay: re-apply a node's input log on a fresh engine and prove that the
//! node's recorded evidence (checkpoint entries, the snapshot) matches.
//!
//! The data directory is opened **read-only** (`Journal::open_read_only_verifying_on_read`,
//! `SnapshotStore::open_read_only`): an audit never changes what it audits, not even
//! a torn tail (it is reported instead). Batches go through
//! `tally_raft::apply::apply_batch`, the very function the node's business-logic
//! thread uses, so timestamps and rejections are computed the same way.
//!
//! One pass over the log: [`IO_THREADS`] I/O threads, taking turns, read it in large
//! reads around the page cache (`Journal::stream_plan`; segments already in the page
//! cache are read through it), a reader thread checksums and decodes the entries
//! ([`READ_AHEAD_ENTRIES`] ahead, so memory stays bounded whatever the log's length)
//! while the calling thread, on a CPU of its own (`crate::placement`), applies them
//! from genesis (or from the snapshot just before the first entry of a purged
//! log). After each entry the replay captures its digest and hash chain (both
//! O(1): the engine keeps them incrementally) in a window of the last
//! [`CAPTURE_WINDOW_ENTRIES`] entries; a checkpoint entry, which names an index
//! shortly before it, is compared with the capture for that index.
//!
//! The ledger gets the node's capacity (`--accounts-max`/`--transfers-max`, else
//! the capacity recorded in the node's snapshot, else the engine's defaults), so
//! that it refuses exactly what the node refused. Its transfer records and links are
//! reserved for as many transfers as the log's size allows, and never grow; on the
//! other core a helper builds the transfer id index (adopted as soon as it is ready)
//! and then faults in the records' pages a little ahead of the writes
//! (`StorageHelper`), so the replay never waits for memory it did not need yet.
//!
//! Results can be exported (one line per event) and compared with another build's
//! export (`against`): the first event whose result differs is named.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::placement::place_helper;
use crate::placement::Placement;
use serde::Serialize;
use tally_engine::CreateAccountResult;
use tally_engine::CreateTransferResult;
use tally_engine::Ledger;
use tally_engine::Operation;
use tally_engine::Prepared;
use tally_engine::Transfer;
use tally_engine::TransferStorage;
use tally_engine::UntouchedMemory;
use tally_journal::Entry;
use tally_journal::EntryKind;
use tally_journal::FsStorage;
use tally_journal::Journal;
use tally_journal::Piece;
use tally_journal::ReadWindow;
use tally_journal::SnapshotStore;
use tally_journal::Storage;
use tally_raft::checkpoint::Checkpoint;
use tally_raft::checkpoint::OPERATION_CHECKPOINT;
use tally_raft::types::Batch;

/// Entries the reader thread reads ahead of the business logic: at most this
/// many full batches (≈ 1 MiB each) are in memory, whatever the log's length.
pub const READ_AHEAD_ENTRIES: usize = 16;

/// Threads reading the log's windows (`tally_journal::Window`, up to 2 MiB each), in
/// turns: reads that bypass the page cache wait for the disk one at a time, and two in
/// flight keep it busier than one. Each has one window ready ahead of the reader.
pub const IO_THREADS: usize = 2;

/// Entries whose replayed digest and hash chain are kept for checkpoint entries
/// to name (48 bytes each). A node proposes the checkpoint for index `i` right
/// after applying `i`, so it lands a few entries later, far inside this window.
pub const CAPTURE_WINDOW_ENTRIES: usize = 1 << 16;

/// Size of one `EventResult` record as the engine returns it.
const EVENT_RESULT_SIZE: usize = 16;
const EVENT_SIZE: usize = tally_engine::limits::EVENT_SIZE;
const OPERATION_CREATE_ACCOUNTS: u8 = 1;
const OPERATION_CREATE_TRANSFERS: u8 = 2;

/// What to replay and what to do with the results.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// The node's data directory (holding `log/` and `snapshots/`).
    pub data_dir: PathBuf,
    /// Write one line per event here: `log_index event_index id status timestamp`.
    pub export: Option<PathBuf>,
    /// Compare the results with this earlier export; name the first difference.
    pub against: Option<PathBuf>,
    /// Show a progress bar on stderr (callers pass "stderr is a terminal").
    pub progress: bool,
    /// The capacity the node ran with (accounts, transfers). `None`: the one in
    /// the node's snapshot, else the engine's defaults.
    pub capacity: Option<(usize, usize)>,
}

/// Where the replay's state came from before the first applied entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPoint {
    /// A fresh engine: every entry of the log was applied. A full audit.
    Genesis,
    /// The log was purged: the snapshot covering entries through `index` was
    /// restored and only later entries were re-applied. Not a full audit.
    Snapshot { index: u64 },
}

impl fmt::Display for StartPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPoint::Genesis => write!(f, "genesis"),
            StartPoint::Snapshot { index } => write!(f, "snapshot at index {index}"),
        }
    }
}

/// Evidence that did not match the replay: the state diverged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// The checkpoint entry at `entry_index` recorded the node's digest and hash
    /// chain right after index `index`; the replay computed others. The state
    /// diverged somewhere in (`verified_through`, `index`].
    Checkpoint {
        entry_index: u64,
        index: u64,
        verified_through: Option<u64>,
        #[serde(serialize_with = "hex128")]
        recorded_digest: u128,
        #[serde(serialize_with = "hex128")]
        replayed_digest: u128,
        #[serde(serialize_with = "hex128")]
        recorded_hash_chain: u128,
        #[serde(serialize_with = "hex128")]
        replayed_hash_chain: u128,
    },
    /// The snapshot covering entries through `index` holds another state than the
    /// replay reached at `index`.
    Snapshot {
        index: u64,
        verified_through: Option<u64>,
        #[serde(serialize_with = "hex128")]
        recorded_digest: u128,
        #[serde(serialize_with = "hex128")]
        replayed_digest: u128,
        #[serde(serialize_with = "hex128")]
        recorded_hash_chain: u128,
        #[serde(serialize_with = "hex128")]
        replayed_hash_chain: u128,
    },
    /// A checkpoint entry that is not one well-formed record for an earlier index.
    MalformedCheckpoint { entry_index: u64 },
}

impl Divergence {
    /// The first log index known to hold a diverged state.
    pub fn index(&self) -> u64 {
        match self {
            Divergence::Checkpoint { index, .. } | Divergence::Snapshot { index, .. } => *index,
            Divergence::MalformedCheckpoint { entry_index } => *entry_index,
        }
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Divergence::Checkpoint {
                entry_index,
                index,
                verified_through,
                recorded_digest,
                replayed_digest,
                recorded_hash_chain,
                replayed_hash_chain,
            } => write!(
                f,
                "checkpoint entry {entry_index} (state after index {index}) does not match the replay: \
                 digest recorded {recorded_digest:032x} replayed {replayed_digest:032x}, \
                 hash chain recorded {recorded_hash_chain:032x} replayed {replayed_hash_chain:032x}; \
                 the state diverged somewhere in ({}, {index}]",
                bound(*verified_through)
            ),
            Divergence::Snapshot {
                index,
                verified_through,
                recorded_digest,
                replayed_digest,
                recorded_hash_chain,
                replayed_hash_chain,
            } => write!(
                f,
                "the snapshot at index {index} does not match the replay: \
                 digest recorded {recorded_digest:032x} replayed {replayed_digest:032x}, \
                 hash chain recorded {recorded_hash_chain:032x} replayed {replayed_hash_chain:032x}; \
                 the state diverged somewhere in ({}, {index}]",
                bound(*verified_through)
            ),
            Divergence::MalformedCheckpoint { entry_index } => write!(
                f,
                "checkpoint entry {entry_index} is malformed (not one record for an earlier index)"
            ),
        }
    }
}

fn bound(index: Option<u64>) -> String {
    index.map_or_else(|| "genesis".to_owned(), |index| index.to_string())
}

/// The first event whose result differs from the `against` export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResultDifference {
    /// Line number in both files (1-based).
    pub line: u64,
    pub log_index: u64,
    pub event_index: u32,
    pub id: String,
    /// This replay's status (`None`: this replay has no such event).
    pub status: Option<String>,
    /// The other export's status (`None`: the other export ended before this event).
    pub status_other: Option<String>,
    /// Both lines as written.
    pub line_replayed: Option<String>,
    pub line_other: Option<String>,
}

impl fmt::Display for ResultDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "first differing result at line {}: log index {} event {} id {}: this replay {} vs other {}",
            self.line,
            self.log_index,
            self.event_index,
            self.id,
            self.status.as_deref().unwrap_or("<no such event>"),
            self.status_other.as_deref().unwrap_or("<no such event>"),
        )
    }
}

/// A torn tail left in place by the read-only open (entries from `index` on were
/// not replayed; the node cuts them on its next start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TornTail {
    pub index: u64,
    pub reason: String,
}

/// What a replay did and found.
#[derive(Clone, Debug)]
pub struct ReplaySummary {
    pub data_dir: PathBuf,
    pub started_from: StartPoint,
    /// First and last log index applied (`None`: nothing was applied).
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    pub entries: u64,
    /// Batches of engine operations applied (checkpoint entries not included).
    pub batches: u64,
    /// Of those, batches the engine refused whole (deterministically).
    pub batches_rejected: u64,
    pub events: u64,
    pub checkpoints_verified: u64,
    /// Checkpoints for indexes before the replay's start (purged log): not checkable.
    pub checkpoints_unverifiable: u64,
    /// The snapshot's index, when its state was compared with the replay and matched.
    pub snapshot_verified: Option<u64>,
    pub torn_tail: Option<TornTail>,
    pub final_digest: u128,
    pub final_hash_chain: u128,
    pub elapsed: Duration,
    /// The first evidence that did not match; the replay stopped there.
    pub divergence: Option<Divergence>,
    /// The first result that differs from the `against` export.
    pub result_difference: Option<ResultDifference>,
    /// Lines written to the export file.
    pub events_exported: u64,
}

impl ReplaySummary {
    /// Everything matched: no divergence and no differing result.
    pub fn ok(&self) -> bool {
        self.divergence.is_none() && self.result_difference.is_none()
    }

    pub fn events_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.events as f64 / seconds
        } else {
            0.0
        }
    }

    /// The one-line JSON form (printed last by the CLI).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok(),
            "data_dir": self.data_dir.display().to_string(),
            "started_from": self.started_from.to_string(),
            "first_index": self.first_index,
            "last_index": self.last_index,
            "entries": self.entries,
            "batches": self.batches,
            "batches_rejected": self.batches_rejected,
            "events": self.events,
            "checkpoints_verified": self.checkpoints_verified,
            "checkpoints_unverifiable": self.checkpoints_unverifiable,
            "snapshot_verified": self.snapshot_verified,
            "torn_tail": self.torn_tail,
            "final_digest": format!("{:032x}", self.final_digest),
            "hash_chain": format!("{:032x}", self.final_hash_chain),
            "elapsed_ms": self.elapsed.as_secs_f64() * 1e3,
            "events_per_second": self.events_per_second().round(),
            "divergence": self.divergence,
            "result_difference": self.result_difference,
            "events_exported": self.events_exported,
        })
    }
}

/// Why a replay could not be carried out (as opposed to a replay that ran and found
/// a divergence, which is a [`ReplaySummary`] with `ok() == false`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path} is not a node data directory: {reason}")]
    NotADataDirectory { path: PathBuf, reason: String },
    /// Bytes of the log fail their checksum or structure: the log itself is damaged.
    #[error("JOURNAL CORRUPTION at entry index {}: {source}", bound_index(*.index))]
    Corruption {
        index: Option<u64>,
        #[source]
        source: tally_journal::Error,
    },
    #[error("journal: {0}")]
    Journal(#[source] tally_journal::Error),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error(
        "the log starts at index {first_index} (entries before it were purged) and {reason}; \
         a full audit needs a log that was never purged"
    )]
    CannotStart { first_index: u64, reason: String },
    #[error("log entry {index} has an entry kind this build does not know")]
    UnknownEntryKind { index: u64 },
    #[error(
        "the checkpoint entry at index {entry_index} names index {index}, more than \
         {CAPTURE_WINDOW_ENTRIES} entries back: the replay keeps the state of only that many"
    )]
    CheckpointOutOfWindow { entry_index: u64, index: u64 },
    #[error("export file {path}: {source}")]
    Export {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("results file {path}: {reason}")]
    Against { path: PathBuf, reason: String },
}

fn bound_index(index: Option<u64>) -> String {
    index.map_or_else(|| "unknown".to_owned(), |index| index.to_string())
}

impl ReplayError {
    /// The log index the error is about, if any.
    pub fn index(&self) -> Option<u64> {
        match self {
            ReplayError::Corruption { index, .. } => *index,
            ReplayError::UnknownEntryKind { index } => Some(*index),
            ReplayError::CheckpointOutOfWindow { entry_index, .. } => Some(*entry_index),
            ReplayError::CannotStart { first_index, .. } => Some(*first_index),
            _ => None,
        }
    }
}

fn journal_error(error: tally_journal::Error) -> ReplayError {
    match error {
        tally_journal::Error::Corruption { index, .. } => ReplayError::Corruption {
            index,
            source: error,
        },
        other => ReplayError::Journal(other),
    }
}

/// The journal and snapshot directories of a node's data directory.
fn node_directories(data_dir: &Path) -> Result<(PathBuf, PathBuf), ReplayError> {
    let log = data_dir.join("log");
    if !log.is_dir() {
        return Err(ReplayError::NotADataDirectory {
            path: data_dir.to_owned(),
            reason: format!("{} is not a directory", log.display()),
        });
    }
    Ok((log, data_dir.join("snapshots")))
}

/// Bytes of the engine's snapshot enough to read its recorded capacity (its header and meta,
/// 112 bytes, and what `Ledger::snapshot_capacity` asks for beyond them). They come before the
/// accounts, so the journal reads them from the snapshot file alone, never from the run file
/// that holds the transfers (docs/design.md §3, "Snapshot runs").
const SNAPSHOT_PEEK_BYTES: usize = 128;

/// A ledger's capacity: (accounts, transfers).
type Capacity = (usize, usize);

/// The node's latest snapshot's last log index and recorded capacity, from its first
/// bytes (not verified yet: `load_snapshot` does that).
fn peek_snapshot(
    storage: &Arc<dyn Storage>,
    dir: &Path,
) -> Result<Option<(u64, Capacity)>, ReplayError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let store = SnapshotStore::open_read_only(Arc::clone(storage), dir);
    let peeked = store
        .peek_latest(SNAPSHOT_PEEK_BYTES)
        .map_err(|error| ReplayError::Snapshot(format!("SNAPSHOT CORRUPTION: {error}")))?;
    let Some((Some(id), bytes)) = peeked else {
        return Ok(None);
    };
    let capacity =
        Ledger::snapshot_capacity(&bytes).map_err(|error| snapshot_error(id.index, error))?;
    Ok(Some((id.index, capacity)))
}

/// The node's latest snapshot, read-only: its last log index and the engine bytes.
fn load_snapshot(
    storage: &Arc<dyn Storage>,
    dir: &Path,
) -> Result<Option<(u64, Vec<u8>)>, ReplayError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let store = SnapshotStore::open_read_only(Arc::clone(storage), dir);
    let snapshot = store.load_latest().map_err(|error| match error {
        tally_journal::Error::Corruption { .. } => {
            ReplayError::Snapshot(format!("SNAPSHOT CORRUPTION: {error}"))
        }
        other => ReplayError::Snapshot(other.to_string()),
    })?;
    Ok(snapshot.and_then(|snapshot| Some((snapshot.last_log_id?.index, snapshot.data))))
}

/// Runs an audit replay of `options.data_dir`. See the module documentation.
pub fn run(options: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let storage = FsStorage::shared();
    let (log_dir, snapshot_dir) = node_directories(&options.data_dir)?;
    let (journal, report) =
        Journal::open_read_only_verifying_on_read(Arc::clone(&storage), &log_dir)
            .map_err(journal_error)?;
    let peeked = peek_snapshot(&storage, &snapshot_dir)?;
    let start = start_point(
        &journal,
        report.purged.is_some(),
        peeked.map(|(index, _)| index),
    )?;
    let range = entry_range(&journal, start);
    let bound = events_bound(&log_dir);
    let placement = Placement::split();
    // A genesis replay's transfer tables are sized for every event the log can hold;
    // the other core prepares the id index and faults in the records' pages ahead of
    // the writes (`StorageHelper`), while this one starts applying.
    let genesis_transfers = (start == StartPoint::Genesis).then(|| {
        let capacity = options.capacity.or(peeked.map(|(_, capacity)| capacity));
        let transfers_max = capacity.map_or(tally_engine::limits::TRANSFERS_MAX, |(_, max)| max);
        bound.min(transfers_max)
    });
    let mut replay = match start {
        StartPoint::Snapshot { index } => {
            let snapshot = load_snapshot(&storage, &snapshot_dir)?;
            let bytes = match snapshot {
                Some((loaded, bytes)) if loaded == index => bytes,
                _ => return Err(snapshot_changed()),
            };
            let mut replay = Replay::from_snapshot(options, index, &bytes, range)?;
            replay.ledger.reserve(0, bound);
            replay
        }
        StartPoint::Genesis => {
            let capacity = options.capacity.or(peeked.map(|(_, capacity)| capacity));
            // The evidence is loaded only once the storage is adopted: the other core
            // prepares that first.
            let evidence = peeked.map(|(index, _)| {
                SnapshotEvidence::new(&storage, snapshot_dir.clone(), index, placement)
            });
            Replay::from_genesis(options, capacity, evidence, range)?
        }
    };
    if let Some(transfers) = genesis_transfers {
        let room = replay.ledger.reserve_transfers_untouched(transfers);
        replay.storage = Some(StorageHelper::start(transfers, room, placement));
    }
    replay.placement = placement;
    replay.torn_tail = report.torn_tail.map(|torn| TornTail {
        index: torn.index,
        reason: torn.reason.to_owned(),
    });
    replay.apply_log(&journal)?;
    replay.finish(started)
}

/// Asks Linux for transparent huge pages over the whole 4 KiB pages of
/// `address..address + bytes`, memory not yet written (the transfer id index, which
/// a replay reads and writes at random: on 4 KiB pages nearly every access to a
/// table of hundreds of MiB also misses the TLB). A refusal changes nothing but
/// speed, so it is ignored.
#[allow(unsafe_code)]
fn advise_huge_pages(address: *const u8, bytes: usize) {
    const PAGE: usize = 4096;
    let start = (address as usize).next_multiple_of(PAGE);
    let end = (address as usize + bytes) / PAGE * PAGE;
    if end <= start {
        return;
    }
    // SAFETY: `MADV_HUGEPAGE` changes how the pages of an allocation this process
    // owns are backed, never their contents; the range lies inside that allocation.
    let _ = unsafe {
        rustix::mm::madvise(
            start as *mut core::ffi::c_void,
            end - start,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

/// The other core's share of a genesis replay's memory. Pages touched for the first
/// time are slow on this kind of VM (the guest zeroes each one and the host backs it),
/// and a replay's transfer tables are gigabytes: so a thread (1) builds the transfer id
/// index, on huge pages, for the ledger to adopt (`take_index`), then (2) asks the
/// kernel to fault in the records' and links' reserved pages (`MADV_POPULATE_WRITE`),
/// in the order the applying thread writes them, ahead of it but not far ahead
/// (`POPULATE_LEAD_BYTES`). A page the applying thread reaches first it simply
/// faults in itself. Dropping the helper stops and
/// joins its thread, which must happen before the ledger's memory is freed.
struct StorageHelper {
    index: mpsc::Receiver<TransferStorage>,
    stop: Arc<AtomicBool>,
    /// Transfers the ledger holds, published after each entry: the helper stays at
    /// most `POPULATE_LEAD_BYTES` of records ahead of them.
    applied: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Bytes of records faulted in per step (with the links' matching share); between
/// steps the helper checks whether to stop.
const POPULATE_STEP_BYTES: usize = 32 << 20;

/// How far ahead of the applying thread's writes (in bytes of records) the helper
/// faults pages in. Faulting in zeroes every page, and zeroing gigabytes at once takes
/// the memory bandwidth the applying thread's lookups wait on; paced, the same work is
/// spread over the replay.
const POPULATE_LEAD_BYTES: usize = 256 << 20;

impl StorageHelper {
    fn start(
        transfers: usize,
        room: [UntouchedMemory; 2],
        placement: Option<Placement>,
    ) -> StorageHelper {
        let (sender, index) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let applied = Arc::new(AtomicUsize::new(0));
        let applied_seen = Arc::clone(&applied);
        let thread = std::thread::Builder::new()
            .name("replay-storage".into())
            .spawn(move || {
                place_helper(placement);
                let storage = TransferStorage::prepare_index_advised(transfers, advise_huge_pages);
                if sender.send(storage).is_ok() {
                    populate_in_order(room, &stopped, &applied_seen);
                }
            })
            .expect("spawn the storage thread");
        StorageHelper {
            index,
            stop,
            applied,
            thread: Some(thread),
        }
    }

    /// The id index once it is ready; `None` before, and after it was taken.
    fn take_index(&mut self) -> Option<TransferStorage> {
        self.index.try_recv().ok()
    }
}

impl Drop for StorageHelper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the storage thread panicked");
        }
    }
}

/// Faults in `room` (records, then links: both written from their start) step by
/// step, each step a `POPULATE_STEP_BYTES` share of the records and the same share of
/// the links, until done, `stop`, or the kernel refuses (before Linux 5.14). A step
/// waits (sleeping, 1 ms at a time) until it is within `POPULATE_LEAD_BYTES` of the
/// records `applied` transfers have written.
fn populate_in_order(room: [UntouchedMemory; 2], stop: &AtomicBool, applied: &AtomicUsize) {
    let [records, links] = room;
    let steps = records.bytes.div_ceil(POPULATE_STEP_BYTES).max(1);
    let share = |bytes: usize, step: usize| bytes / steps * step + bytes % steps * step / steps;
    let record_size = core::mem::size_of::<Transfer>();
    for step in 0..steps {
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let written = applied.load(Ordering::Relaxed) * record_size;
            if share(records.bytes, step) <= written + POPULATE_LEAD_BYTES {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for memory in [records, links] {
            let share = |step: usize| share(memory.bytes, step);
            let begin = memory.address + share(step);
            let end = memory.address + share(step + 1);
            if !populate(begin, end) {
                return;
            }
        }
    }
}

/// The whole 4 KiB pages of `begin..end`, faulted in writable (their contents stay
/// what they are: zero, never yet written). False if the kernel refused.
#[allow(unsafe_code)]
fn populate(begin: usize, end: usize) -> bool {
    const PAGE: usize = 4096;
    let (begin, end) = (begin.next_multiple_of(PAGE), end / PAGE * PAGE);
    if end <= begin {
        return true;
    }
    // SAFETY: `MADV_POPULATE_WRITE` only faults pages in (as a write would, without
    // writing); the range lies inside the ledger's reserved, not reallocated tables,
    // which outlive this thread (`StorageHelper` joins it on drop).
    unsafe {
        rustix::mm::madvise(
            begin as *mut core::ffi::c_void,
            end - begin,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    }
    .is_ok()
}

/// Entries to apply: after the snapshot when starting from one.
fn entry_range(journal: &Journal, start: StartPoint) -> Option<(u64, u64)> {
    let first = journal.first_index()?;
    let last = journal.last_index()?;
    let first = match start {
        StartPoint::Genesis => first,
        StartPoint::Snapshot { index } => first.max(index + 1),
    };
    (first <= last).then_some((first, last))
}

/// An upper bound on the events in the log: its segment files' bytes over the
/// size of one event (an unreadable directory bounds nothing: 0).
fn events_bound(log_dir: &Path) -> usize {
    let Ok(files) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    let bytes: u64 = files
        .filter_map(Result::ok)
        .filter(|file| file.path().extension().is_some_and(|ext| ext == "tlog"))
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    usize::try_from(bytes / EVENT_SIZE as u64).unwrap_or(usize::MAX)
}

/// An entry as read, and for a transfer batch the hashes the engine needs from its
/// bytes alone (empty for anything else).
type ReadEntry = (Entry, Prepared);

/// A piece of the log as the I/O threads pass it on.
enum Fetched {
    /// Entries to read through the page cache, entry by entry.
    Cached(std::ops::RangeInclusive<u64>),
    Window(ReadWindow),
}

/// One I/O thread: `pieces`, their windows read in order around the page cache, until
/// they end, a read fails (sent as the last item) or the receiver hangs up. It waits for
/// the disk and does little else, so the reader decodes one window while [`IO_THREADS`]
/// threads read the next ones.
fn read_pieces(pieces: Vec<Piece>, sender: SyncSender<Result<Fetched, ReplayError>>) {
    for piece in pieces {
        let fetched = match piece {
            Piece::Cached(range) => Ok(Fetched::Cached(range)),
            Piece::Window(window) => window.read().map(Fetched::Window).map_err(journal_error),
        };
        let failed = fetched.is_err();
        if sender.send(fetched).is_err() || failed {
            return;
        }
    }
}

/// Piece `i` comes from `pieces[i % pieces.len()]`: the I/O threads take turns.
fn decode_pieces(
    journal: &Journal,
    pieces: Vec<mpsc::Receiver<Result<Fetched, ReplayError>>>,
    first: u64,
    last: u64,
    sender: SyncSender<Result<ReadEntry, ReplayError>>,
) {
    let mut next = first;
    // The first I/O thread in turn with nothing more to send has passed the last piece.
    for piece in pieces.iter().cycle().map_while(|pieces| pieces.recv().ok()) {
        let entries: Box<dyn Iterator<Item = Result<Entry, ReplayError>>> = match piece {
            Ok(Fetched::Window(window)) => {
                Box::new(window.entries().map(|entry| entry.map_err(journal_error)))
            }
            Ok(Fetched::Cached(range)) => Box::new(range.map(|index| {
                journal
                    .entry(index)
                    .map_err(journal_error)
                    .map(|entry| entry.expect("an index inside the log's range is in the log"))
            })),
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        for entry in entries {
            let entry = entry.map(|entry| {
                assert_eq!(entry.id.index, next, "the pieces hold the entries in order");
                next += 1;
                let prepared = match Operation::try_from(entry.operation) {
                    Ok(operation) if entry.kind == EntryKind::Batch => {
                        Ledger::prepare(operation, &entry.payload)
                    }
                    _ => Prepared::default(),
                };
                (entry, prepared)
            });
            let failed = entry.is_err();
            if sender.send(entry).is_err() || failed {
                return;
            }
        }
    }
    assert_eq!(next, last + 1, "the pieces hold every entry of the range");
}

fn snapshot_changed() -> ReplayError {
    ReplayError::Snapshot(
        "the snapshot changed while it was being read: audit a stopped node's data directory"
            .into(),
    )
}

fn snapshot_error(index: u64, error: tally_engine::SnapshotError) -> ReplayError {
    ReplayError::Snapshot(format!(
        "the snapshot at index {index} does not restore: {error}"
    ))
}

/// The node's snapshot as evidence for a genesis replay: a thread of its own loads and
/// verifies it and reads its state's digest from its records while the replay runs.
struct SnapshotEvidence {
    index: u64,
    /// Where the snapshot is, until its thread is started (`start`).
    source: Option<(Arc<dyn Storage>, PathBuf)>,
    restoring: Option<std::thread::JoinHandle<Result<Checkpoint, ReplayError>>>,
    recorded: Option<Checkpoint>,
    /// The replay's state at `index`, and how far it was verified then.
    replayed: Option<(Checkpoint, Option<u64>)>,
    /// Where its thread runs: with the replay's other helpers.
    placement: Option<Placement>,
}

impl SnapshotEvidence {
    /// The snapshot whose first bytes said it covers entries through `index`; nothing is
    /// loaded until `start`.
    fn new(
        storage: &Arc<dyn Storage>,
        dir: PathBuf,
        index: u64,
        placement: Option<Placement>,
    ) -> SnapshotEvidence {
        SnapshotEvidence {
            index,
            source: Some((Arc::clone(storage), dir)),
            restoring: None,
            recorded: None,
            replayed: None,
            placement,
        }
    }

    /// Loads (verified) the snapshot and reads its state's digest, on a thread of its own.
    fn start(&mut self) {
        let Some((storage, dir)) = self.source.take() else {
            return;
        };
        let (index, placement) = (self.index, self.placement);
        let restoring = std::thread::Builder::new()
            .name("replay-snapshot".into())
            .spawn(move || {
                place_helper(placement);
                let bytes = match load_snapshot(&storage, &dir)? {
                    Some((loaded, bytes)) if loaded == index => bytes,
                    _ => return Err(snapshot_changed()),
                };
                // The state's digest read from the records: no ledger rebuilt.
                let (digest, hash_chain) = Ledger::snapshot_digest(&bytes)
                    .map_err(|error| snapshot_error(index, error))?;
                Ok(Checkpoint {
                    index,
                    digest,
                    hash_chain,
                })
            })
            .expect("spawn the snapshot restoring thread");
        self.restoring = Some(restoring);
    }

    /// The snapshot's state, once restored (`wait`: start it if need be and block until
    /// it is).
    fn recorded(&mut self, wait: bool) -> Result<Option<Checkpoint>, ReplayError> {
        if wait {
            self.start();
        }
        if let Some(restoring) = self
            .restoring
            .take_if(|restoring| wait || restoring.is_finished())
        {
            let recorded = restoring
                .join()
                .expect("the snapshot restoring thread panicked")?;
            self.recorded = Some(recorded);
        }
        Ok(self.recorded)
    }
}

impl Drop for SnapshotEvidence {
    /// A replay that stops early (divergence, error) still waits for the thread: nothing
    /// it started outlives it.
    fn drop(&mut self) {
        if let Some(restoring) = self.restoring.take() {
            let _ = restoring.join();
        }
    }
}

/// Where to begin: genesis for an unpurged log, else the snapshot just before the
/// first entry (or later: only one snapshot is kept).
fn start_point(
    journal: &Journal,
    purged: bool,
    snapshot_index: Option<u64>,
) -> Result<StartPoint, ReplayError> {
    let first_index = journal.first_index();
    if !purged && first_index.is_none_or(|first| first <= 1) {
        return Ok(StartPoint::Genesis);
    }
    let first_index =
        first_index.unwrap_or_else(|| journal.purged_id().map_or(0, |id| id.index + 1));
    let Some(snapshot_index) = snapshot_index else {
        return Err(ReplayError::CannotStart {
            first_index,
            reason: "there is no snapshot to start from".into(),
        });
    };
    if snapshot_index + 1 < first_index {
        return Err(ReplayError::CannotStart {
            first_index,
            reason: format!("the snapshot covers only entries through {snapshot_index}"),
        });
    }
    Ok(StartPoint::Snapshot {
        index: snapshot_index,
    })
}

struct Replay<'a> {
    options: &'a ReplayOptions,
    start: StartPoint,
    /// The log indexes to apply.
    range: Option<(u64, u64)>,
    /// The transfer id index being prepared, and the records' pages being faulted in,
    /// on the other core (genesis replay). Declared before `ledger`: fields are dropped
    /// in order, so the helper's thread is joined before the ledger's memory is freed.
    storage: Option<StorageHelper>,
    ledger: Ledger,
    /// Which CPUs run the applying thread and which its helpers (`None`: the scheduler's
    /// choice).
    placement: Option<Placement>,
    /// The snapshot, when a genesis replay can compare its state with the replay's.
    snapshot_evidence: Option<SnapshotEvidence>,
    /// The replayed state after each of the last `CAPTURE_WINDOW_ENTRIES`
    /// indexes, oldest first (indexes increase).
    captured: VecDeque<Checkpoint>,
    verified_through: Option<u64>,
    summary_counts: Counts,
    torn_tail: Option<TornTail>,
    divergence: Option<Divergence>,
    results: ResultSink,
    progress: Option<indicatif::ProgressBar>,
}

#[derive(Default)]
struct Counts {
    first_index: Option<u64>,
    last_index: Option<u64>,
    entries: u64,
    batches: u64,
    batches_rejected: u64,
    events: u64,
    checkpoints_verified: u64,
    checkpoints_unverifiable: u64,
    snapshot_verified: Option<u64>,
}

impl<'a> Replay<'a> {
    /// A replay from genesis on a fresh ledger of the node's capacity, the snapshot (if
    /// any) being restored meanwhile as evidence.
    fn from_genesis(
        options: &'a ReplayOptions,
        capacity: Option<Capacity>,
        evidence: Option<SnapshotEvidence>,
        range: Option<(u64, u64)>,
    ) -> Result<Replay<'a>, ReplayError> {
        let ledger = match capacity {
            Some((accounts_max, transfers_max)) => {
                Ledger::with_capacity_on_demand(accounts_max, transfers_max)
            }
            None => Ledger::new(),
        };
        Replay::with_ledger(options, StartPoint::Genesis, ledger, evidence, range)
    }

    /// A replay of a purged log from the snapshot just before its first entry.
    fn from_snapshot(
        options: &'a ReplayOptions,
        index: u64,
        bytes: &[u8],
        range: Option<(u64, u64)>,
    ) -> Result<Replay<'a>, ReplayError> {
        let restored = match options.capacity {
            Some((accounts_max, transfers_max)) => {
                Ledger::restore_with_capacity(bytes, accounts_max, transfers_max)
            }
            None => Ledger::restore(bytes),
        };
        let ledger = restored.map_err(|error| snapshot_error(index, error))?;
        let start = StartPoint::Snapshot { index };
        let mut replay = Replay::with_ledger(options, start, ledger, None, range)?;
        // A checkpoint naming the snapshot's own index is checked against it.
        replay.captured.push_back(Checkpoint {
            index,
            digest: replay.ledger.digest(),
            hash_chain: replay.ledger.hash_chain(),
        });
        replay.verified_through = Some(index);
        Ok(replay)
    }

    fn with_ledger(
        options: &'a ReplayOptions,
        start: StartPoint,
        ledger: Ledger,
        snapshot_evidence: Option<SnapshotEvidence>,
        range: Option<(u64, u64)>,
    ) -> Result<Replay<'a>, ReplayError> {
        Ok(Replay {
            options,
            start,
            range,
            ledger,
            snapshot_evidence,
            storage: None,
            placement: None,
            captured: VecDeque::new(),
            verified_through: None,
            summary_counts: Counts::default(),
            torn_tail: None,
            divergence: None,
            results: ResultSink::open(options)?,
            progress: None,
        })
    }

    /// Applies every entry in `range`, read ahead by a reader thread, capturing and
    /// comparing as it goes; stops at the first divergence.
    fn apply_log(&mut self, journal: &Journal) -> Result<(), ReplayError> {
        let Some((first, last)) = self.range else {
            return Ok(());
        };
        if self.options.progress {
            let bar = indicatif::ProgressBar::new(last - first + 1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "replay {bar:40} {pos}/{len} entries {per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            self.progress = Some(bar);
        }
        let placement = self.placement;
        let placed = placement.map(|placement| placement.place_applier());
        let result = std::thread::scope(|scope| {
            let mut turns: Vec<Vec<Piece>> = (0..IO_THREADS).map(|_| Vec::new()).collect();
            let pieces = journal.stream_plan(first, last).map_err(journal_error)?;
            for (position, piece) in pieces.into_iter().enumerate() {
                turns[position % IO_THREADS].push(piece);
            }
            let pieces = turns
                .into_iter()
                .map(|pieces| {
                    let (sender, fetched) = mpsc::sync_channel(1);
                    std::thread::Builder::new()
                        .name("replay-io".into())
                        .spawn_scoped(scope, move || {
                            place_helper(placement);
                            read_pieces(pieces, sender)
                        })
                        .expect("spawn a replay I/O thread");
                    fetched
                })
                .collect();
            let (sender, entries) = mpsc::sync_channel(READ_AHEAD_ENTRIES);
            std::thread::Builder::new()
                .name("replay-reader".into())
                .spawn_scoped(scope, move || {
                    place_helper(placement);
                    decode_pieces(journal, pieces, first, last, sender)
                })
                .expect("spawn the replay reader thread");
            // Returning drops `entries`: a reader still sending then stops.
            for entry in entries {
                let (entry, prepared) = entry?;
                if !self.apply_entry(entry, &prepared)? {
                    return Ok(());
                }
                self.adopt_storage();
                if let Some(storage) = &self.storage {
                    storage
                        .applied
                        .store(self.ledger.transfers_count(), Ordering::Relaxed);
                }
            }
            if let Some(divergence) = self.check_snapshot(None, true)? {
                self.divergence = Some(divergence);
            }
            Ok(())
        });
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        // Done applying: whatever the helper has not faulted in yet is not needed.
        self.storage = None;
        drop(placed);
        result
    }

    /// Takes the prepared transfer id index once it is ready, then starts loading the
    /// snapshot evidence.
    fn adopt_storage(&mut self) {
        let Some(storage) = self.storage.as_mut().and_then(StorageHelper::take_index) else {
            return;
        };
        self.ledger.adopt_storage(storage);
        if let Some(evidence) = &mut self.snapshot_evidence {
            evidence.start();
        }
    }

    /// Applies one entry; `false` once a divergence stops the replay.
    fn apply_entry(&mut self, entry: Entry, prepared: &Prepared) -> Result<bool, ReplayError> {
        let index = entry.id.index;
        let counts = &mut self.summary_counts;
        counts.first_index.get_or_insert(index);
        counts.last_index = Some(index);
        counts.entries += 1;
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
        match entry.kind {
            EntryKind::Blank | EntryKind::Membership => {}
            EntryKind::Batch if entry.operation == OPERATION_CHECKPOINT => {
                if let Some(divergence) = self.check_checkpoint(&entry)? {
                    self.divergence = Some(divergence);
                    return Ok(false);
                }
            }
            EntryKind::Batch => self.apply_batch(entry, prepared)?,
            _ => return Err(ReplayError::UnknownEntryKind { index }),
        }
        let state = Checkpoint {
            index,
            digest: self.ledger.digest(),
            hash_chain: self.ledger.hash_chain(),
        };
        if self.captured.len() == CAPTURE_WINDOW_ENTRIES {
            self.captured.pop_front();
        }
        assert!(self.captured.back().is_none_or(|last| last.index < index));
        self.captured.push_back(state);
        if let Some(divergence) = self.check_snapshot(Some(state), false)? {
            self.divergence = Some(divergence);
            return Ok(false);
        }
        Ok(true)
    }

    fn apply_batch(&mut self, entry: Entry, prepared: &Prepared) -> Result<(), ReplayError> {
        let index = entry.id.index;
        let batch = Batch {
            operation: entry.operation,
            timestamp: entry.timestamp,
            events: entry.payload,
        };
        let reply = tally_raft::apply::apply_batch_prepared(&mut self.ledger, &batch, prepared);
        let counts = &mut self.summary_counts;
        counts.batches += 1;
        counts.events += batch.event_count() as u64;
        if reply.rejected.is_some() {
            counts.batches_rejected += 1;
        }
        self.results
            .batch(index, &batch, &reply.results, reply.rejected.is_some())
    }

    /// Compares a checkpoint entry with what the replay captured.
    fn check_checkpoint(&mut self, entry: &Entry) -> Result<Option<Divergence>, ReplayError> {
        let entry_index = entry.id.index;
        let Some(Some(recorded)) = checkpoint_of(entry) else {
            return Ok(Some(Divergence::MalformedCheckpoint { entry_index }));
        };
        if recorded.index >= entry_index {
            return Ok(Some(Divergence::MalformedCheckpoint { entry_index }));
        }
        let found = self
            .captured
            .binary_search_by_key(&recorded.index, |captured| captured.index);
        let replayed = match found {
            Ok(position) => self.captured[position],
            // Before the replay's start (purged log): nothing to compare with.
            Err(0) if self.captured.len() < CAPTURE_WINDOW_ENTRIES => {
                self.summary_counts.checkpoints_unverifiable += 1;
                return Ok(None);
            }
            Err(0) => {
                return Err(ReplayError::CheckpointOutOfWindow {
                    entry_index,
                    index: recorded.index,
                })
            }
            // Indexes between captures are entries that were never in the log.
            Err(_) => return Ok(Some(Divergence::MalformedCheckpoint { entry_index })),
        };
        if replayed == recorded {
            self.summary_counts.checkpoints_verified += 1;
            self.verified_through = self.verified_through.max(Some(recorded.index));
            return Ok(None);
        }
        Ok(Some(Divergence::Checkpoint {
            entry_index,
            index: recorded.index,
            verified_through: self.verified_through,
            recorded_digest: recorded.digest,
            replayed_digest: replayed.digest,
            recorded_hash_chain: recorded.hash_chain,
            replayed_hash_chain: replayed.hash_chain,
        }))
    }

    /// At the snapshot's index (genesis replay), notes the replayed state; compares it
    /// with the snapshot's as soon as both are known (the snapshot is restored on a
    /// thread of its own; `wait`: until it is).
    fn check_snapshot(
        &mut self,
        replayed: Option<Checkpoint>,
        wait: bool,
    ) -> Result<Option<Divergence>, ReplayError> {
        let Some(evidence) = &mut self.snapshot_evidence else {
            return Ok(None);
        };
        if let Some(replayed) = replayed.filter(|replayed| replayed.index == evidence.index) {
            evidence.replayed = Some((replayed, self.verified_through));
        }
        let Some((replayed, verified_through)) = evidence.replayed else {
            return Ok(None);
        };
        let Some(recorded) = evidence.recorded(wait)? else {
            return Ok(None);
        };
        let index = evidence.index;
        self.snapshot_evidence = None;
        if replayed.digest == recorded.digest && replayed.hash_chain == recorded.hash_chain {
            self.summary_counts.snapshot_verified = Some(index);
            self.verified_through = self.verified_through.max(Some(index));
            return Ok(None);
        }
        Ok(Some(Divergence::Snapshot {
            index,
            verified_through,
            recorded_digest: recorded.digest,
            replayed_digest: replayed.digest,
            recorded_hash_chain: recorded.hash_chain,
            replayed_hash_chain: replayed.hash_chain,
        }))
    }

    fn finish(self, started: Instant) -> Result<ReplaySummary, ReplayError> {
        let (events_exported, result_difference) =
            self.results.finish(self.divergence.is_none())?;
        let counts = self.summary_counts;
        Ok(ReplaySummary {
            data_dir: self.options.data_dir.clone(),
            started_from: self.start,
            first_index: counts.first_index,
            last_index: counts.last_index,
            entries: counts.entries,
            batches: counts.batches,
            batches_rejected: counts.batches_rejected,
            events: counts.events,
            checkpoints_verified: counts.checkpoints_verified,
            checkpoints_unverifiable: counts.checkpoints_unverifiable,
            snapshot_verified: counts.snapshot_verified,
            torn_tail: self.torn_tail,
            final_digest: self.ledger.digest(),
            final_hash_chain: self.ledger.hash_chain(),
            elapsed: started.elapsed(),
            divergence: self.divergence,
            result_difference,
            events_exported,
        })
    }
}

/// `None`: not a checkpoint entry; `Some(None)`: a malformed one.
fn checkpoint_of(entry: &Entry) -> Option<Option<Checkpoint>> {
    (entry.kind == EntryKind::Batch && entry.operation == OPERATION_CHECKPOINT)
        .then(|| Checkpoint::from_payload(&entry.payload))
}

/// The snake_case name of a result code of `operation`.
fn status_name(operation: u8, status: u32) -> String {
    let name = match operation {
        OPERATION_CREATE_ACCOUNTS => CreateAccountResult::from_code(status).map(|r| r.name()),
        OPERATION_CREATE_TRANSFERS => CreateTransferResult::from_code(status).map(|r| r.name()),
        _ => None,
    };
    name.map_or_else(|| format!("unknown_status_{status}"), str::to_owned)
}

/// Writes the export and compares with the `against` file, one line per event.
struct ResultSink {
    export: Option<(PathBuf, BufWriter<File>)>,
    against: Option<(PathBuf, io::Lines<BufReader<File>>)>,
    line: String,
    lines: u64,
    difference: Option<ResultDifference>,
}

impl ResultSink {
    fn open(options: &ReplayOptions) -> Result<ResultSink, ReplayError> {
        let export = match &options.export {
            Some(path) => {
                let file = File::create(path).map_err(|source| ReplayError::Export {
                    path: path.clone(),
                    source,
                })?;
                Some((path.clone(), BufWriter::with_capacity(1 << 20, file)))
            }
            None => None,
        };
        let against = match &options.against {
            Some(path) => {
                let file = File::open(path).map_err(|error| ReplayError::Against {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
                Some((
                    path.clone(),
                    BufReader::with_capacity(1 << 20, file).lines(),
                ))
            }
            None => None,
        };
        Ok(ResultSink {
            export,
            against,
            line: String::new(),
            lines: 0,
            difference: None,
        })
    }

    fn active(&self) -> bool {
        self.export.is_some() || (self.against.is_some() && self.difference.is_none())
    }

    fn batch(
        &mut self,
        log_index: u64,
        batch: &Batch,
        results: &[u8],
        rejected: bool,
    ) -> Result<(), ReplayError> {
        if !self.active() {
            return Ok(());
        }
        let events = batch.events.chunks_exact(EVENT_SIZE);
        if rejected {
            for (event_index, event) in events.enumerate() {
                self.event(log_index, event_index as u32, event, "batch_rejected", 0)?;
            }
            return Ok(());
        }
        assert_eq!(results.len() / EVENT_RESULT_SIZE, batch.event_count());
        for result in results.chunks_exact(EVENT_RESULT_SIZE) {
            let event_index = u32::from_le_bytes(result[0..4].try_into().expect("4 bytes"));
            let status = u32::from_le_bytes(result[4..8].try_into().expect("4 bytes"));
            let timestamp = u64::from_le_bytes(result[8..16].try_into().expect("8 bytes"));
            let start = event_index as usize * EVENT_SIZE;
            let event = &batch.events[start..start + EVENT_SIZE];
            let name = status_name(batch.operation, status);
            self.event(log_index, event_index, event, &name, timestamp)?;
        }
        Ok(())
    }

    fn event(
        &mut self,
        log_index: u64,
        event_index: u32,
        event: &[u8],
        status: &str,
        timestamp: u64,
    ) -> Result<(), ReplayError> {
        let id = u128::from_le_bytes(event[0..16].try_into().expect("16 bytes"));
        self.line.clear();
        write!(
            self.line,
            "{log_index} {event_index} {id} {status} {timestamp}"
        )
        .expect("writing to a String");
        self.lines += 1;
        if let Some((path, writer)) = &mut self.export {
            writeln!(writer, "{}", self.line).map_err(|source| ReplayError::Export {
                path: path.clone(),
                source,
            })?;
        }
        if self.difference.is_none() {
            if let Some((path, lines)) = &mut self.against {
                let other = lines
                    .next()
                    .transpose()
                    .map_err(|error| ReplayError::Against {
                        path: path.clone(),
                        reason: error.to_string(),
                    })?;
                if other.as_deref() != Some(self.line.as_str()) {
                    self.difference = Some(ResultDifference {
                        line: self.lines,
                        log_index,
                        event_index,
                        id: id.to_string(),
                        status: Some(status.to_owned()),
                        status_other: other.as_deref().and_then(status_of_line),
                        line_replayed: Some(self.line.clone()),
                        line_other: other,
                    });
                }
            }
        }
        Ok(())
    }

    /// Flushes the export; an `against` file with lines left over is a difference
    /// (only when the replay ran to the end).
    fn finish(mut self, complete: bool) -> Result<(u64, Option<ResultDifference>), ReplayError> {
        if let Some((path, mut writer)) = self.export.take() {
            writer
                .flush()
                .map_err(|source| ReplayError::Export { path, source })?;
        }
        if let (true, None, Some((path, lines))) = (complete, &self.difference, &mut self.against) {
            if let Some(extra) = lines.next() {
                let extra = extra.map_err(|error| ReplayError::Against {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
                let fields: Vec<&str> = extra.split(' ').collect();
                self.difference = Some(ResultDifference {
                    line: self.lines + 1,
                    log_index: fields.first().and_then(|f| f.parse().ok()).unwrap_or(0),
                    event_index: fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0),
                    id: fields.get(2).map_or_else(String::new, |f| (*f).to_owned()),
                    status: None,
                    status_other: status_of_line(&extra),
                    line_replayed: None,
                    line_other: Some(extra),
                });
            }
        }
        Ok((self.lines, self.difference))
    }
}

fn status_of_line(line: &str) -> Option<String> {
    line.split(' ').nth(3).map(str::to_owned)
}

fn hex128<S: serde::Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value:032x}"))
}

/// Command-line arguments of `replay` (shared by `tally-sim replay` and `tally replay`).
#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// The node's data directory (holding log/ and snapshots/). Opened read-only.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Write the replayed results, one line per event:
    /// `log_index event_index id status timestamp`.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Compare the results with an earlier `--export` file; print the first difference.
    #[arg(long, alias = "diff")]
    pub against: Option<PathBuf>,
    /// The capacity the node ran with, when it raised it. By default the capacity
    /// recorded in the node's snapshot, else the engine's defaults. A replay with another
    /// capacity than the node's refuses other transfers and reports a divergence.
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// The ledger-capacity flags, the same for `tally start` and `tally replay` (a replay must
/// use the capacity the node ran with).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CapacityArgs {
    /// The most accounts the ledger holds; with --transfers-max, the ledger's memory is
    /// reserved at start-up (about 175 MiB per million accounts) and never grows while
    /// serving. Without both: 1,048,576 accounts and 16,777,216 transfers, memory grown on
    /// demand (short pauses as tables double). Every member of a cluster needs the same
    /// values, and so does a replay of a member's data.
    #[arg(
        long,
        env = "TALLY_ACCOUNTS_MAX",
        requires = "transfers_max",
        value_parser = clap::value_parser!(u32).range(1..u32::MAX as i64)
    )]
    pub accounts_max: Option<u32>,
    /// The most transfers the ledger holds (ids of transfers that failed transiently count
    /// too; about 242 MiB per million transfers). Goes with --accounts-max.
    #[arg(
        long,
        env = "TALLY_TRANSFERS_MAX",
        requires = "accounts_max",
        value_parser = clap::value_parser!(u32).range(1..u32::MAX as i64)
    )]
    pub transfers_max: Option<u32>,
}

impl CapacityArgs {
    /// Both flags, or `None` (the engine's defaults).
    pub fn ledger_capacity(&self) -> Option<tally_raft::node::LedgerCapacity> {
        let (accounts_max, transfers_max) = (self.accounts_max?, self.transfers_max?);
        Some(tally_raft::node::LedgerCapacity {
            accounts_max: accounts_max as usize,
            transfers_max: transfers_max as usize,
        })
    }
}

/// Exit codes of the `replay` command.
pub const EXIT_OK: u8 = 0;
/// The replay ran and found a divergence or a differing result.
pub const EXIT_MISMATCH: u8 = 1;
/// The replay could not run (corruption, unreadable data directory, …).
pub const EXIT_ERROR: u8 = 2;

/// Runs `replay` as a command: prints the summary table, then one JSON line.
pub fn main(args: &ReplayArgs) -> ExitCode {
    let options = ReplayOptions {
        data_dir: args.data_dir.clone(),
        export: args.export.clone(),
        against: args.against.clone(),
        progress: io::stderr().is_terminal(),
        capacity: args
            .capacity
            .ledger_capacity()
            .map(|capacity| (capacity.accounts_max, capacity.transfers_max)),
    };
    match run(&options) {
        Ok(summary) => {
            print_summary(&summary);
            ExitCode::from(if summary.ok() { EXIT_OK } else { EXIT_MISMATCH })
        }
        Err(error) => {
            eprintln!("REPLAY FAILED: {error}");
            let json = serde_json::json!({
                "ok": false,
                "data_dir": options.data_dir.display().to_string(),
                "error": error.to_string(),
                "index": error.index(),
            });
            println!("{json}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The human table, then the JSON line.
pub fn print_summary(summary: &ReplaySummary) {
    let rows: [(&str, String); 15] = [
        ("data dir", summary.data_dir.display().to_string()),
        ("started from", summary.started_from.to_string()),
        (
            "log indexes",
            format!(
                "{} ..= {}",
                bound_index(summary.first_index),
                bound_index(summary.last_index)
            ),
        ),
        ("entries", summary.entries.to_string()),
        (
            "batches",
            format!(
                "{} ({} rejected whole)",
                summary.batches, summary.batches_rejected
            ),
        ),
        ("events", summary.events.to_string()),
        (
            "checkpoints",
            format!(
                "{} verified, {} before the start (not checkable)",
                summary.checkpoints_verified, summary.checkpoints_unverifiable
            ),
        ),
        (
            "snapshot",
            summary.snapshot_verified.map_or_else(
                || "not compared".to_owned(),
                |index| format!("verified at index {index}"),
            ),
        ),
        (
            "torn tail",
            summary.torn_tail.as_ref().map_or_else(
                || "none".to_owned(),
                |torn| format!("from index {} left unreplayed: {}", torn.index, torn.reason),
            ),
        ),
        ("final digest", format!("{:032x}", summary.final_digest)),
        ("hash chain", format!("{:032x}", summary.final_hash_chain)),
        ("time", format!("{:.3} s", summary.elapsed.as_secs_f64())),
        ("events/s", format!("{:.0}", summary.events_per_second())),
        ("exported", summary.events_exported.to_string()),
        (
            "result",
            if summary.ok() {
                "OK".into()
            } else {
                "MISMATCH".into()
            },
        ),
    ];
    for (name, value) in rows {
        println!("{name:<14} {value}");
    }
    if let StartPoint::Snapshot { index } = summary.started_from {
        println!(
            "WARNING: the log was purged; entries through {index} were not re-applied (state taken \
             from the snapshot). A full audit needs a log that was never purged."
        );
    }
    if let Some(divergence) = &summary.divergence {
        println!("DIVERGENCE: {divergence}");
    }
    if let Some(difference) = &summary.result_difference {
        println!("RESULT DIFFERS: {difference}");
    }
    println!("{}", summary.to_json());
}
