//! The segmented, append-only log: append, group commit, read, truncate, purge, recover.
//!
//! Group commit without blocking readers: [`Journal::append_all`] writes to the OS
//! (one `pwrite` per up to [`WRITE_BUFFER_SIZE`] bytes); [`Journal::prepare_sync`]
//! (`&self`) returns a [`SyncTicket`] holding `Arc` handles of what must be synced and
//! the index it covers; [`SyncTicket::sync`] runs `fdatasync` with no borrow of the
//! journal; [`Journal::mark_durable`] records the result. Reads take `&self` and use
//! positional reads, so with `Arc<RwLock<Journal>>` readers proceed while a ticket syncs.

use std::cmp::max;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::entry::{
    check_header, decode_parts, encode_record, encode_record_header, record_size, u16_at, u32_at,
    u64_at, verify_record, Header, RecordFault, Verified, ENTRY_MAGIC, RECORD_PADDING,
};
use crate::error::{Error, Result};
use crate::limits::{
    ENTRY_ALIGNMENT, ENTRY_HEADER_SIZE, FORMAT_VERSION, GATHERED_PAYLOAD_MIN, SCAN_WINDOW_SIZE,
    SEGMENT_HEADER_SIZE, SEGMENT_SIZE_DEFAULT, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN,
    SPARE_SEGMENT_BYTES_MAX, WRITE_BUFFER_SIZE,
};
use crate::record::AtomicRecord;
use crate::storage::{read_at_zero_filled, Storage, StorageFile};
use crate::stream::{Buffers, Piece, Window};
use crate::{Entry, EntryId};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"TLYG";
/// Suffix of segment file names: `{first_index:020}.tlog`.
pub const SEGMENT_FILE_SUFFIX: &str = ".tlog";
/// Suffix of a purged segment kept for reuse: `{first_index:020}.spare` (its old first index).
pub const SPARE_FILE_SUFFIX: &str = ".spare";
/// File name of the purge record (last purged entry id) in the journal directory.
pub const PURGE_FILE_NAME: &str = "purged";
const PURGE_RECORD_SIZE: usize = 24;

/// Offsets inside the segment header (documented in docs/design.md §3).
mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FIRST_INDEX: usize = 8;
    pub const SEGMENT_SIZE: usize = 16;
    pub const FLAGS: usize = 24;
    pub const RESERVED: usize = 28;
    pub const CRC: usize = 60;
}

/// Segment header flag: the file was a purged segment before (a spare), so whatever follows its
/// last entry is earlier contents, not zeros.
const SEGMENT_FLAG_RECYCLED: u32 = 1;

/// Options of [`Journal::open`].
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// Size of new segment files, between [`SEGMENT_SIZE_MIN`] and [`SEGMENT_SIZE_MAX`].
    pub segment_size: u64,
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            segment_size: SEGMENT_SIZE_DEFAULT,
        }
    }
}

/// A torn or corrupt tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    /// Index the first cut entry would have had.
    pub index: u64,
    pub reason: &'static str,
}

/// What [`Journal::open`] found and repaired.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segment_count: usize,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    pub purged: Option<EntryId>,
    pub torn_tail: Option<TornTail>,
    /// Segment files removed: an empty last segment, or segments fully purged.
    pub removed_segments: Vec<PathBuf>,
}

#[derive(Debug)]
struct Segment {
    /// Index of the first entry physically in the file (may be purged already).
    first_index: u64,
    size: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Offset of entry `first_index + i`. Never empty while the segment is in the journal.
    offsets: Vec<u32>,
    end_offset: u64,
}

impl Segment {
    fn last_index(&self) -> u64 {
        assert!(!self.offsets.is_empty());
        self.first_index + self.offsets.len() as u64 - 1
    }

    fn record_bounds(&self, index: u64) -> (u64, u64) {
        let position = usize::try_from(index - self.first_index).expect("position fits usize");
        let start = u64::from(self.offsets[position]);
        let end = self
            .offsets
            .get(position + 1)
            .map_or(self.end_offset, |&offset| u64::from(offset));
        (start, end)
    }
}

/// Proof that a [`SyncTicket`] completed; hand it to [`Journal::mark_durable`].
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Durable {
    index: Option<u64>,
    generation: u64,
    dir_changes: u64,
}

impl Durable {
    /// Every entry up to this index (as of the ticket) is on disk.
    pub fn index(&self) -> Option<u64> {
        self.index
    }
}

/// The work of one group commit, detached from the journal (see the module docs).
#[derive(Debug)]
#[must_use]
pub struct SyncTicket {
    file: Option<(Arc<dyn StorageFile>, PathBuf)>,
    directory: Option<(Arc<dyn Storage>, PathBuf)>,
    durable: Durable,
    poisoned: Arc<AtomicBool>,
}

impl SyncTicket {
    /// Index this ticket makes durable.
    pub fn index(&self) -> Option<u64> {
        self.durable.index
    }

    /// `fdatasync`s the dirty segment and, if segments were created or removed, the
    /// directory. A failure poisons the journal: it refuses all further writes.
    pub fn sync(self) -> Result<Durable> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        if let Some((file, path)) = &self.file {
            if let Err(error) = file.sync_data() {
                self.poisoned.store(true, Ordering::Release);
                return Err(Error::io("fdatasync", path, error));
            }
        }
        if let Some((storage, dir)) = &self.directory {
            if let Err(error) = storage.sync_dir(dir) {
                self.poisoned.store(true, Ordering::Release);
                return Err(Error::io("fsync directory", dir, error));
            }
        }
        Ok(self.durable)
    }
}

/// The journal (see the crate and module docs).
#[derive(Debug)]
pub struct Journal {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segment_size: u64,
    segments: Vec<Segment>,
    purged: Option<EntryId>,
    /// `None` only when opened read-only without a purge record file.
    purge_record: Option<AtomicRecord>,
    /// Opened with [`Journal::open_read_only`]: every write is refused.
    read_only: bool,
    /// Last entry, or the purged id when the log is empty.
    last: Option<EntryId>,
    durable: Option<u64>,
    /// Bumped whenever indexes may be reused (truncation, purge past the end), so a
    /// ticket prepared before cannot claim entries written after.
    generation: u64,
    dir_changes: u64,
    dir_changes_synced: u64,
    poisoned: Arc<AtomicBool>,
    write_buffer: Vec<u8>,
    buffered_offsets: Vec<u32>,
    buffered_last: Option<EntryId>,
    /// Files of removed segments, still open (see [`Journal::take_retired_files`]).
    retired_files: Vec<Arc<dyn StorageFile>>,
    /// Sealed, synced segments no longer among the newest two (see
    /// [`Journal::take_cold_files`]).
    cold_files: Vec<Arc<dyn StorageFile>>,
    /// Purged segments kept, renamed, for `roll` to reuse (docs/design.md §3, "Recycled
    /// segments"); at most `SPARE_SEGMENT_BYTES_MAX` of them.
    spares: Vec<Spare>,
}

/// A purged segment file kept for reuse: every block of it is allocated and written, so
/// entries written over it change no file metadata and their `fdatasync` commits nothing to
/// the filesystem's journal.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
}

fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_FILE_SUFFIX}")
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_numbered_name(name, SEGMENT_FILE_SUFFIX)
}

fn spare_file_name(old_first_index: u64) -> String {
    format!("{old_first_index:020}{SPARE_FILE_SUFFIX}")
}

fn parse_numbered_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_segment_header(first_index: u64, size: u64, flags: u32) -> [u8; SEGMENT_HEADER_SIZE] {
    let mut header = [0u8; SEGMENT_HEADER_SIZE];
    header[field::FLAGS..field::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    header[field::MAGIC..field::MAGIC + 4].copy_from_slice(&SEGMENT_MAGIC);
    header[field::VERSION..field::VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[field::FIRST_INDEX..field::FIRST_INDEX + 8].copy_from_slice(&first_index.to_le_bytes());
    header[field::SEGMENT_SIZE..field::SEGMENT_SIZE + 8].copy_from_slice(&size.to_le_bytes());
    let crc = crc32c::crc32c(&header[..field::CRC]);
    header[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The segment's size and flags; `Ok(Err(reason))` for a missing or damaged header, `Err` for
/// another version.
fn check_segment_header(
    path: &Path,
    header: &[u8],
    first_index: u64,
) -> Result<Result<(u64, u32), &'static str>> {
    if header.iter().all(|&byte| byte == 0) {
        return Ok(Err("segment header missing"));
    }
    if header[field::MAGIC..field::MAGIC + 4] != SEGMENT_MAGIC {
        return Ok(Err("bad segment magic"));
    }
    let version = u16_at(header, field::VERSION);
    // No format has version 0: a header torn after its magic, not a format to refuse.
    if version == 0 {
        return Ok(Err("segment header without a version (torn)"));
    }
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if crc32c::crc32c(&header[..field::CRC]) != u32_at(header, field::CRC) {
        return Ok(Err("segment header checksum mismatch"));
    }
    if u64_at(header, field::FIRST_INDEX) != first_index {
        return Ok(Err(
            "segment header first index does not match the file name",
        ));
    }
    let size = u64_at(header, field::SEGMENT_SIZE);
    let flags = u32_at(header, field::FLAGS);
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&size)
        || flags & !SEGMENT_FLAG_RECYCLED != 0
        || header[field::RESERVED..field::CRC].iter().any(|&b| b != 0)
    {
        return Ok(Err("segment header fields out of range"));
    }
    Ok(Ok((size, flags)))
}

pub(crate) fn fault_to_error(path: &Path, offset: u64, index: u64, fault: RecordFault) -> Error {
    match fault {
        RecordFault::Invalid(reason) => Error::corruption(path, offset, Some(index), reason),
        RecordFault::Version(found) => Error::UnsupportedVersion {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        },
    }
}

/// `entry`, read at `offset` of `path` where entry `index` belongs; a checksummed record with
/// another index there is corruption.
pub(crate) fn expect_index(entry: Entry, path: &Path, offset: u64, index: u64) -> Result<Entry> {
    if entry.id.index != index {
        return Err(Error::corruption(
            path,
            offset,
            Some(index),
            "entry has another index than expected",
        ));
    }
    Ok(entry)
}

/// Where scanning one segment stopped.
enum Stop {
    /// All-zero header or the segment is full: the normal end.
    Clean,
    Invalid {
        offset: u64,
        reason: &'static str,
    },
}

struct ScannedSegment {
    size: u64,
    /// `SEGMENT_FLAG_RECYCLED` was set: the bytes after the last entry are earlier contents.
    recycled: bool,
    offsets: Vec<u32>,
    end_offset: u64,
    last: Option<EntryId>,
    stop: Stop,
}

/// How much of a segment's records the scan at open verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanDepth {
    /// Every record whole, checksum included.
    Checksums,
    /// Headers only; checksums are verified when an entry is read.
    Headers,
}

/// Reads one record at `offset`; `Ok(None)` for an all-zero header (end of data).
fn read_record(
    file: &dyn StorageFile,
    path: &Path,
    offset: u64,
    size_limit: u64,
    record: &mut Vec<u8>,
    depth: ScanDepth,
) -> Result<Option<Result<Verified, RecordFault>>> {
    let mut header = [0u8; ENTRY_HEADER_SIZE];
    read_at_zero_filled(file, &mut header, offset)
        .map_err(|error| Error::io("read", path, error))?;
    if header.iter().all(|&byte| byte == 0) {
        return Ok(None);
    }
    let Some(parsed) = Header::parse(&header) else {
        return Ok(Some(Err(RecordFault::Invalid("bad entry magic"))));
    };
    let Some(size) = parsed.record_size() else {
        return Ok(Some(Err(RecordFault::Invalid(
            "payload length out of bounds",
        ))));
    };
    if offset + size as u64 > size_limit {
        return Ok(Some(Err(RecordFault::Invalid(
            "record extends past the segment end",
        ))));
    }
    if depth == ScanDepth::Headers {
        return Ok(Some(check_header(&header)));
    }
    record.resize(size, 0);
    read_at_zero_filled(file, record, offset).map_err(|error| Error::io("read", path, error))?;
    Ok(Some(verify_record(record)))
}

fn scan_segment(
    file: &dyn StorageFile,
    path: &Path,
    first_index: u64,
    previous: Option<EntryId>,
    depth: ScanDepth,
) -> Result<ScannedSegment> {
    let mut header = [0u8; SEGMENT_HEADER_SIZE];
    read_at_zero_filled(file, &mut header, 0).map_err(|error| Error::io("read", path, error))?;
    let (size, flags) = match check_segment_header(path, &header, first_index)? {
        Ok(checked) => checked,
        Err(reason) => {
            let size = file.len().map_err(|error| Error::io("stat", path, error))?;
            return Ok(ScannedSegment {
                size: size.clamp(SEGMENT_SIZE_MIN, SEGMENT_SIZE_MAX),
                recycled: false,
                offsets: Vec::new(),
                end_offset: SEGMENT_HEADER_SIZE as u64,
                last: None,
                stop: Stop::Invalid { offset: 0, reason },
            });
        }
    };
    let mut scanned = ScannedSegment {
        size,
        recycled: flags & SEGMENT_FLAG_RECYCLED != 0,
        offsets: Vec::new(),
        end_offset: SEGMENT_HEADER_SIZE as u64,
        last: None,
        stop: Stop::Clean,
    };
    let mut record = Vec::new();
    let mut previous = previous;
    while scanned.end_offset + ENTRY_HEADER_SIZE as u64 <= size {
        let offset = scanned.end_offset;
        let expected = first_index + scanned.offsets.len() as u64;
        let entry = match read_record(file, path, offset, size, &mut record, depth)? {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(RecordFault::Version(found))) => {
                return Err(Error::UnsupportedVersion {
                    path: path.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Some(Err(RecordFault::Invalid(reason))) => {
                scanned.stop = Stop::Invalid { offset, reason };
                break;
            }
        };
        if entry.id.index < first_index {
            // A whole entry from before this file was recycled (it was a segment that
            // ended before this one starts): this segment's own entries end here.
            break;
        }
        let reason = if entry.id.index != expected {
            Some("entry index does not follow the previous entry")
        } else if previous.is_some_and(|previous| previous.term > entry.id.term) {
            Some("entry term lower than the previous entry's")
        } else {
            None
        };
        if let Some(reason) = reason {
            scanned.stop = Stop::Invalid { offset, reason };
            break;
        }
        scanned
            .offsets
            .push(u32::try_from(offset).expect("segment size fits u32"));
        scanned.end_offset = offset + record_size(entry.payload_len) as u64;
        scanned.last = Some(entry.id);
        previous = Some(entry.id);
    }
    Ok(scanned)
}

/// Looks for any valid entry with index ≥ `index_min` at or after `from`: evidence that
/// damage before it is not a torn tail.
fn find_valid_entry_after(
    file: &dyn StorageFile,
    path: &Path,
    from: u64,
    size: u64,
    index_min: u64,
) -> Result<Option<(u64, u64)>> {
    let mut window = vec![0u8; SCAN_WINDOW_SIZE];
    let mut record = Vec::new();
    let mut start = from.next_multiple_of(ENTRY_ALIGNMENT as u64);
    while start + ENTRY_HEADER_SIZE as u64 <= size {
        let length = usize::try_from((size - start).min(SCAN_WINDOW_SIZE as u64))
            .expect("window fits usize");
        read_at_zero_filled(file, &mut window[..length], start)
            .map_err(|error| Error::io("read", path, error))?;
        for position in (0..length.saturating_sub(ENTRY_MAGIC.len() - 1)).step_by(ENTRY_ALIGNMENT) {
            if window[position..position + ENTRY_MAGIC.len()] != ENTRY_MAGIC {
                continue;
            }
            let offset = start + position as u64;
            let found = read_record(file, path, offset, size, &mut record, ScanDepth::Checksums)?;
            if let Some(Ok(entry)) = found {
                if entry.id.index >= index_min {
                    return Ok(Some((offset, entry.id.index)));
                }
            }
        }
        start += length as u64;
    }
    Ok(None)
}

fn encode_purge_record(id: EntryId) -> [u8; PURGE_RECORD_SIZE] {
    let mut bytes = [0u8; PURGE_RECORD_SIZE];
    bytes[0..8].copy_from_slice(&id.term.to_le_bytes());
    bytes[8..16].copy_from_slice(&id.leader_node_id.to_le_bytes());
    bytes[16..24].copy_from_slice(&id.index.to_le_bytes());
    bytes
}

impl Journal {
    /// Opens the journal in `dir` (created if missing) and recovers it: a torn or
    /// corrupt tail is cut back to the last whole entry (and logged); damage anywhere
    /// else is a [`Error::Corruption`] naming segment, offset and index. On return
    /// everything recovered is durable.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: JournalOptions,
    ) -> Result<(Journal, RecoveryReport)> {
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&options.segment_size) {
            return Err(Error::InvalidOptions(
                "segment_size outside SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX",
            ));
        }
        storage
            .create_dir_all(dir)
            .map_err(|error| Error::io("create directory", dir, error))?;
        let purge_record = AtomicRecord::open(&*storage, dir, PURGE_FILE_NAME)?;
        Journal::open_with(
            storage,
            dir,
            options,
            Some(purge_record),
            false,
            ScanDepth::Checksums,
        )
    }

    /// Opens an existing journal for reading only — for audits, which must never change
    /// a node's data directory. It validates exactly like [`Journal::open`] (mid-log
    /// damage is an [`Error::Corruption`]), but writes nothing: a torn tail is reported
    /// in [`RecoveryReport::torn_tail`] and left on disk (the entries before it are
    /// readable), an empty last segment and fully purged segments are skipped but not
    /// removed, nothing is synced, and a missing directory is an error. Every write
    /// through the returned journal fails with [`Error::ReadOnly`].
    pub fn open_read_only(
        storage: Arc<dyn Storage>,
        dir: &Path,
    ) -> Result<(Journal, RecoveryReport)> {
        Journal::open_read_only_with(storage, dir, ScanDepth::Checksums)
    }

    /// Like [`Journal::open_read_only`], for a reader that goes on to read every entry once
    /// (an audit replay), so that the log is read from disk once rather than twice: the
    /// entries of sealed segments (all but the last) are checked at open by their headers
    /// alone (magic, bounds, index and term continuity), and their checksums when read.
    /// Damage there is an [`Error::Corruption`] naming the index from `read`/`entry`
    /// instead of from the open. The last segment is verified whole at open: telling a
    /// torn tail from damage needs it.
    pub fn open_read_only_verifying_on_read(
        storage: Arc<dyn Storage>,
        dir: &Path,
    ) -> Result<(Journal, RecoveryReport)> {
        Journal::open_read_only_with(storage, dir, ScanDepth::Headers)
    }

    fn open_read_only_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        sealed_depth: ScanDepth,
    ) -> Result<(Journal, RecoveryReport)> {
        storage
            .list(dir)
            .map_err(|error| Error::io("list", dir, error))?;
        let purge_record = AtomicRecord::open_read_only(&*storage, dir, PURGE_FILE_NAME)?;
        let options = JournalOptions::default();
        Journal::open_with(storage, dir, options, purge_record, true, sealed_depth)
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: JournalOptions,
        purge_record: Option<AtomicRecord>,
        read_only: bool,
        sealed_depth: ScanDepth,
    ) -> Result<(Journal, RecoveryReport)> {
        let purged = match purge_record.as_ref().and_then(AtomicRecord::value) {
            None => None,
            Some(bytes) if bytes.len() == PURGE_RECORD_SIZE => Some(EntryId::new(
                u64_at(bytes, 0),
                u64_at(bytes, 8),
                u64_at(bytes, 16),
            )),
            Some(_) => {
                return Err(Error::corruption(
                    dir.join(PURGE_FILE_NAME),
                    0,
                    None,
                    "purge record has the wrong length",
                ))
            }
        };
        let mut journal = Journal {
            storage,
            dir: dir.to_owned(),
            segment_size: options.segment_size,
            segments: Vec::new(),
            purged,
            purge_record,
            read_only,
            last: None,
            durable: None,
            generation: 0,
            dir_changes: 0,
            dir_changes_synced: 0,
            poisoned: Arc::new(AtomicBool::new(false)),
            write_buffer: Vec::new(),
            buffered_offsets: Vec::new(),
            buffered_last: None,
            retired_files: Vec::new(),
            cold_files: Vec::new(),
            spares: Vec::new(),
        };
        let mut report = RecoveryReport {
            purged,
            ..RecoveryReport::default()
        };
        journal.recover_segments(&mut report, sealed_depth)?;
        if !read_only {
            journal.adopt_spares()?;
        }
        journal.drop_purged_segments(&mut report.removed_segments)?;
        if let (Some(purged), Some(first)) = (journal.purged, journal.segments.first()) {
            if first.first_index > purged.index + 1 {
                return Err(Error::corruption(
                    &first.path,
                    0,
                    Some(purged.index + 1),
                    "entries after the purge point are missing",
                ));
            }
        }
        journal.last = match journal.segments.last() {
            Some(segment) => Some(journal.read_entry(segment.last_index())?.id),
            None => journal.purged,
        };
        if read_only {
            journal.durable = journal.last.map(|id| id.index);
        } else {
            // What was recovered may sit only in the page cache (process crash): sync it.
            journal.sync()?;
        }
        report.segment_count = journal.segments.len();
        report.first_index = journal.first_index();
        report.last_index = journal.last_index();
        Ok((journal, report))
    }

    fn recover_segments(
        &mut self,
        report: &mut RecoveryReport,
        sealed_depth: ScanDepth,
    ) -> Result<()> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(|error| Error::io("list", &self.dir, error))?;
        let mut firsts: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|name| parse_segment_file_name(&name).map(|first| (first, name)))
            .collect();
        firsts.sort_unstable();
        let count = firsts.len();
        let mut previous: Option<EntryId> = None;
        for (position, (first_index, name)) in firsts.into_iter().enumerate() {
            let path = self.dir.join(&name);
            let is_last = position + 1 == count;
            if let Some(previous) = previous {
                if first_index != previous.index + 1 {
                    return Err(Error::corruption(
                        &path,
                        0,
                        Some(previous.index + 1),
                        "segment does not continue the previous one",
                    ));
                }
            }
            let file = if self.read_only {
                self.storage.open_read_only(&path)
            } else {
                self.storage.open(&path)
            }
            .map_err(|error| Error::io("open", &path, error))?;
            let depth = if is_last {
                ScanDepth::Checksums
            } else {
                sealed_depth
            };
            let scanned = scan_segment(&*file, &path, first_index, previous, depth)?;
            let expected = first_index + scanned.offsets.len() as u64;
            let (stop_offset, mut stop_reason) = match scanned.stop {
                Stop::Clean => (scanned.end_offset, None),
                Stop::Invalid { offset, reason } => (offset, Some(reason)),
            };
            // In a recycled segment the bytes after the last entry are the file's earlier
            // contents, which read as damage: its entries end there. An entry lost to real
            // damage in a sealed one still shows, as a gap before the next segment; in the
            // last one it is cut like a torn tail, only not reported as one.
            let ends_in_earlier_contents =
                scanned.recycled && stop_reason.is_some() && !scanned.offsets.is_empty();
            if ends_in_earlier_contents && !is_last {
                stop_reason = None;
            }
            if !is_last {
                if let Some(reason) = stop_reason {
                    return Err(Error::corruption(
                        &path,
                        stop_offset,
                        Some(expected),
                        reason,
                    ));
                }
                if scanned.offsets.is_empty() {
                    return Err(Error::corruption(
                        &path,
                        stop_offset,
                        Some(expected),
                        "empty segment before the last one",
                    ));
                }
            } else {
                let scan_from = stop_offset.max(SEGMENT_HEADER_SIZE as u64);
                if let Some((offset, index)) =
                    find_valid_entry_after(&*file, &path, scan_from + 1, scanned.size, expected)?
                {
                    let reason = format!(
                        "{}; a valid entry {index} follows at offset {offset}, so this is not a torn tail",
                        stop_reason.unwrap_or("unexpected end of entries")
                    );
                    return Err(Error::corruption(
                        &path,
                        stop_offset,
                        Some(expected),
                        reason,
                    ));
                }
                if let (Some(reason), true) = (stop_reason, ends_in_earlier_contents) {
                    tracing::debug!(segment = %path.display(), offset = stop_offset, index = expected, reason, "journal recovery: the entries of a recycled segment end here");
                } else if let Some(reason) = stop_reason {
                    if self.read_only {
                        tracing::warn!(segment = %path.display(), offset = stop_offset, index = expected, reason, "journal opened read-only: a torn tail is left in place");
                    } else {
                        tracing::warn!(segment = %path.display(), offset = stop_offset, index = expected, reason, "journal recovery: cutting a torn tail");
                    }
                    report.torn_tail = Some(TornTail {
                        segment: path.clone(),
                        offset: stop_offset,
                        index: expected,
                        reason,
                    });
                }
                if scanned.offsets.is_empty() && self.read_only {
                    continue;
                }
                if scanned.offsets.is_empty() {
                    tracing::warn!(segment = %path.display(), "journal recovery: removing a last segment without entries");
                    self.storage
                        .remove(&path)
                        .map_err(|error| Error::io("remove", &path, error))?;
                    self.storage
                        .sync_dir(&self.dir)
                        .map_err(|error| Error::io("fsync directory", &self.dir, error))?;
                    report.removed_segments.push(path);
                    continue;
                }
                let length = file
                    .len()
                    .map_err(|error| Error::io("stat", &path, error))?;
                if !self.read_only && (stop_reason.is_some() || length != scanned.size) {
                    // Zero everything after the last whole entry, so the next append starts clean.
                    file.set_len(scanned.end_offset)
                        .map_err(|error| Error::io("set_len", &path, error))?;
                    file.set_len(scanned.size)
                        .map_err(|error| Error::io("set_len", &path, error))?;
                    file.sync_data()
                        .map_err(|error| Error::io("fdatasync", &path, error))?;
                }
            }
            previous = scanned.last;
            self.segments.push(Segment {
                first_index,
                size: scanned.size,
                path,
                file,
                offsets: scanned.offsets,
                end_offset: scanned.end_offset,
            });
        }
        Ok(())
    }

    /// First entry still in the log; `None` when the log is empty.
    pub fn first_index(&self) -> Option<u64> {
        let first = self.segments.first()?.first_index;
        Some(match self.purged {
            Some(purged) => max(first, purged.index + 1),
            None => first,
        })
    }

    /// Last entry in the log; `None` when the log is empty.
    pub fn last_index(&self) -> Option<u64> {
        self.segments.last().map(Segment::last_index)
    }

    /// Id of the last entry, or of the last purged one when the log is empty (what
    /// openraft's `get_log_state` calls the last log id).
    pub fn last_entry_id(&self) -> Option<EntryId> {
        self.last
    }

    /// Id of the last purged entry.
    pub fn purged_id(&self) -> Option<EntryId> {
        self.purged
    }

    /// Every entry up to this index is on disk.
    pub fn durable_index(&self) -> Option<u64> {
        self.durable
    }

    /// True after a failed write or fsync: reopen to recover.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, operation: &'static str, path: &Path, error: std::io::Error) -> Error {
        self.poisoned.store(true, Ordering::Release);
        Error::io(operation, path, error)
    }

    /// Appends one entry (written to the OS, not yet durable).
    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends entries in order. All are validated before anything is written: a
    /// misuse error leaves the journal unchanged. Not durable until a sync.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_writable()?;
        self.validate_appends(entries)?;
        for entry in entries {
            let size = entry.record_size();
            let fits = self.segments.last().is_some_and(|segment| {
                segment.end_offset + (self.write_buffer.len() + size) as u64 <= segment.size
            });
            if !fits {
                self.flush_buffer()?;
                self.roll(entry.id.index)?;
            }
            if self.write_buffer.len() + size > WRITE_BUFFER_SIZE {
                self.flush_buffer()?;
            }
            let segment = self
                .segments
                .last()
                .expect("a segment exists after rolling");
            let offset = segment.end_offset + self.write_buffer.len() as u64;
            self.buffered_offsets
                .push(u32::try_from(offset).expect("segment size fits u32"));
            self.buffered_last = Some(entry.id);
            if entry.payload.len() >= GATHERED_PAYLOAD_MIN {
                // Its header joins the buffer; the payload is written from where it is.
                let (header, padding) = encode_record_header(entry);
                self.write_buffer.extend_from_slice(&header);
                self.flush_buffer_with(&[&entry.payload, &RECORD_PADDING[..padding]])?;
            } else {
                encode_record(entry, &mut self.write_buffer);
            }
        }
        self.flush_buffer()
    }

    fn validate_appends(&self, entries: &[Entry]) -> Result<()> {
        let mut previous = self.last;
        for entry in entries {
            entry.validate()?;
            let segment_capacity = self.segment_size - SEGMENT_HEADER_SIZE as u64;
            if entry.record_size() as u64 > segment_capacity {
                return Err(Error::InvalidEntry {
                    index: entry.id.index,
                    reason: "entry larger than a segment",
                });
            }
            if let Some(previous) = previous {
                let expected = previous.index.checked_add(1).ok_or(Error::InvalidEntry {
                    index: entry.id.index,
                    reason: "index space exhausted",
                })?;
                if entry.id.index != expected {
                    return Err(Error::IndexOutOfOrder {
                        expected,
                        got: entry.id.index,
                    });
                }
                if entry.id.term < previous.term {
                    return Err(Error::TermRegression {
                        index: entry.id.index,
                        term: entry.id.term,
                        previous_term: previous.term,
                    });
                }
            }
            previous = Some(entry.id);
        }
        Ok(())
    }

    fn flush_buffer(&mut self) -> Result<()> {
        self.flush_buffer_with(&[])
    }

    /// Writes the buffer and then `tail` (the rest of the last buffered record) in one call.
    fn flush_buffer_with(&mut self, tail: &[&[u8]]) -> Result<()> {
        if self.write_buffer.is_empty() {
            assert!(tail.is_empty(), "a record's tail follows its header");
            return Ok(());
        }
        let segment = self
            .segments
            .last()
            .expect("buffered entries have a segment");
        let written = if tail.is_empty() {
            segment
                .file
                .write_at(&self.write_buffer, segment.end_offset)
        } else {
            let mut pieces: Vec<&[u8]> = Vec::with_capacity(1 + tail.len());
            pieces.push(&self.write_buffer);
            pieces.extend_from_slice(tail);
            segment.file.write_vectored_at(&pieces, segment.end_offset)
        };
        if let Err(error) = written {
            return Err(self.poison("write", &segment.path, error));
        }
        let tail_len: usize = tail.iter().map(|piece| piece.len()).sum();
        let segment = self.segments.last_mut().expect("checked above");
        segment.offsets.append(&mut self.buffered_offsets);
        segment.end_offset += (self.write_buffer.len() + tail_len) as u64;
        self.last = self.buffered_last.take();
        self.write_buffer.clear();
        Ok(())
    }

    /// Starts a new segment at `first_index`. The previous segment is synced first, so
    /// the existence of a later segment proves every earlier one is whole.
    fn roll(&mut self, first_index: u64) -> Result<()> {
        if let Some(segment) = self.segments.last() {
            if let Err(error) = segment.file.sync_data() {
                return Err(self.poison("fdatasync", &segment.path, error));
            }
            let last = segment.last_index();
            // With a spare, the directory is synced once below, after its rename.
            if self.spares.is_empty() {
                self.sync_dir_if_changed()?;
            }
            self.durable = max(self.durable, Some(last));
        }
        let path = self.dir.join(segment_file_name(first_index));
        let file = if let Some(spare) = self.spares.pop() {
            let header =
                encode_segment_header(first_index, self.segment_size, SEGMENT_FLAG_RECYCLED);
            // A recycled segment: renamed, the directory synced, then its header rewritten.
            // The sync comes first so that no name the file had before (a purged segment's,
            // a spare's) can come back after a crash with new contents under it. Its old
            // entries stay behind the new ones until overwritten; a scan stops at the first
            // of them (docs/design.md §3, "Recycled segments").
            if let Err(error) = self.storage.rename(&spare.path, &path) {
                return Err(self.poison("rename", &spare.path, error));
            }
            self.dir_changes += 1;
            self.sync_dir_if_changed()?;
            if let Err(error) = spare.file.write_at(&header, 0) {
                return Err(self.poison("write", &path, error));
            }
            spare.file
        } else {
            let header = encode_segment_header(first_index, self.segment_size, 0);
            let file = match self.storage.create(&path) {
                Ok(file) => file,
                Err(error) => return Err(self.poison("create", &path, error)),
            };
            // Sparse, fixed size: no size change per fdatasync (see docs/design.md §3).
            let prepared = file
                .set_len(self.segment_size)
                .map_err(|error| ("set_len", error))
                .and_then(|()| file.write_at(&header, 0).map_err(|error| ("write", error)));
            if let Err((operation, error)) = prepared {
                return Err(self.poison(operation, &path, error));
            }
            self.dir_changes += 1;
            file
        };
        // The segment sealed at the roll before this one is synced, and the entries read soon
        // (applied, replicated) are in the newest two.
        if let Some(cold) = self.segments.len().checked_sub(2) {
            self.cold_files.push(self.segments[cold].file.clone());
        }
        self.segments.push(Segment {
            first_index,
            size: self.segment_size,
            path,
            file,
            offsets: Vec::new(),
            end_offset: SEGMENT_HEADER_SIZE as u64,
        });
        Ok(())
    }

    fn sync_dir_if_changed(&mut self) -> Result<()> {
        if self.dir_changes > self.dir_changes_synced {
            if let Err(error) = self.storage.sync_dir(&self.dir) {
                return Err(self.poison("fsync directory", &self.dir.clone(), error));
            }
            self.dir_changes_synced = self.dir_changes;
        }
        Ok(())
    }

    /// A group commit's work, detached: sync it on any thread, then [`Journal::mark_durable`].
    pub fn prepare_sync(&self) -> SyncTicket {
        let index = self.last.map(|id| id.index);
        let file = if index > self.durable {
            self.segments
                .last()
                .map(|segment| (segment.file.clone(), segment.path.clone()))
        } else {
            None
        };
        let directory = (self.dir_changes > self.dir_changes_synced)
            .then(|| (self.storage.clone(), self.dir.clone()));
        SyncTicket {
            file,
            directory,
            durable: Durable {
                index,
                generation: self.generation,
                dir_changes: self.dir_changes,
            },
            poisoned: self.poisoned.clone(),
        }
    }

    /// Records a completed sync; returns the durable index. A ticket prepared before a
    /// truncation or a purge past the end is ignored (its indexes may have been reused).
    pub fn mark_durable(&mut self, durable: Durable) -> Option<u64> {
        if durable.generation == self.generation {
            assert!(
                durable.index <= self.last.map(|id| id.index),
                "a ticket covers only appended entries"
            );
            self.durable = max(self.durable, durable.index);
            self.dir_changes_synced = max(self.dir_changes_synced, durable.dir_changes);
        }
        self.durable
    }

    /// Prepare, sync and mark in one call, for single-threaded callers.
    pub fn sync(&mut self) -> Result<Option<u64>> {
        self.check_writable()?;
        let durable = self.prepare_sync().sync()?;
        Ok(self.mark_durable(durable))
    }

    /// Entries with indexes in `range` that are in the log (the range is clipped to
    /// `first_index..=last_index`), checksum-verified.
    pub fn read(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>> {
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&start) => max(start, first),
            Bound::Excluded(&start) => max(start.saturating_add(1), first),
            Bound::Unbounded => first,
        };
        let end = match range.end_bound() {
            Bound::Included(&end) => end.min(last),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&end) => (end - 1).min(last),
            Bound::Unbounded => last,
        };
        if start > end {
            return Ok(Vec::new());
        }
        (start..=end).map(|index| self.read_entry(index)).collect()
    }

    /// The entry at `index`, if it is in the log.
    pub fn entry(&self, index: u64) -> Result<Option<Entry>> {
        match (self.first_index(), self.last_index()) {
            (Some(first), Some(last)) if (first..=last).contains(&index) => {
                self.read_entry(index).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// How to read entries `first..=last` (clamped to the log) from start to end, as an
    /// audit does, in order. A segment whose entries are all in the page cache already
    /// ([`StorageFile::is_cached`]) is a [`Piece::Cached`], to read entry by entry with
    /// [`Journal::entry`]: on a virtual machine, reading cached bytes from the disk again
    /// costs the host's CPU, which is ours too. Any other segment becomes [`Window`]s, large
    /// aligned reads around the page cache through one more handle on its file
    /// ([`Storage::open_unbuffered`]).
    pub fn stream_plan(&self, first: u64, last: u64) -> Result<Vec<Piece>> {
        let (Some(log_first), Some(log_last)) = (self.first_index(), self.last_index()) else {
            return Ok(Vec::new());
        };
        let (first, last) = (first.max(log_first), last.min(log_last));
        let buffers = Buffers::default();
        let mut pieces = Vec::new();
        for segment in &self.segments {
            let from = first.max(segment.first_index);
            let through = last.min(segment.last_index());
            if from > through {
                continue;
            }
            let (start, _) = segment.record_bounds(from);
            let (_, end) = segment.record_bounds(through);
            if segment.file.is_cached(start, end - start) {
                pieces.push(Piece::Cached(from..=through));
                continue;
            }
            let file = self
                .storage
                .open_unbuffered(&segment.path)
                .map_err(|error| Error::io("open", &segment.path, error))?;
            let records = (from..=through).map(|index| segment.record_bounds(index));
            let windows = Window::plan(&segment.path, &file, &buffers, from, records);
            pieces.extend(windows.into_iter().map(Piece::Window));
        }
        Ok(pieces)
    }

    /// The id of the entry at `index`, if it is in the log.
    pub fn entry_id(&self, index: u64) -> Result<Option<EntryId>> {
        Ok(self.entry(index)?.map(|entry| entry.id))
    }

    /// Reads a physically present entry (possibly purged already).
    fn read_entry(&self, index: u64) -> Result<Entry> {
        let position = self
            .segments
            .partition_point(|segment| segment.first_index <= index);
        assert!(position > 0, "index {index} is before the first segment");
        let segment = &self.segments[position - 1];
        assert!(
            index <= segment.last_index(),
            "index {index} is past the segment end"
        );
        let (start, end) = segment.record_bounds(index);
        let size = usize::try_from(end - start).expect("record fits usize");
        assert!(size >= ENTRY_HEADER_SIZE);
        // Header and body apart, so that the body becomes the payload without a copy.
        let mut header = [0u8; ENTRY_HEADER_SIZE];
        let mut body = vec![0u8; size - ENTRY_HEADER_SIZE];
        read_at_zero_filled(&*segment.file, &mut header, start)
            .and_then(|()| {
                read_at_zero_filled(&*segment.file, &mut body, start + ENTRY_HEADER_SIZE as u64)
            })
            .map_err(|error| Error::io("read", &segment.path, error))?;
        let entry = decode_parts(&header, body)
            .map_err(|fault| fault_to_error(&segment.path, start, index, fault))?;
        expect_index(entry, &segment.path, start, index)
    }

    /// Removes every entry after `index` (`None`: every entry), durably: on return a
    /// crash cannot bring them back. When entries are removed, the entries through
    /// `index` become durable too; when `index` is at or past the end, nothing happens.
    pub fn truncate_after(&mut self, index: Option<u64>) -> Result<()> {
        self.check_writable()?;
        if let Some(purged) = self.purged {
            if index.is_none_or(|index| index < purged.index) {
                return Err(Error::TruncateBelowPurged {
                    index,
                    purged: purged.index,
                });
            }
        }
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index >= Some(last) {
            return Ok(());
        }
        // Later segments first, newest first: a crash midway leaves a prefix of the log.
        while let Some(segment) = self.segments.last() {
            if index.is_some_and(|index| segment.first_index <= index) {
                break;
            }
            if let Err(error) = self.storage.remove(&segment.path) {
                return Err(self.poison("remove", &segment.path.clone(), error));
            }
            let segment = self.segments.pop().expect("checked above");
            self.retired_files.push(segment.file);
            self.dir_changes += 1;
        }
        // The removals must be durable before the cut: a later segment resurrected by a
        // crash next to a cut segment would leave a hole.
        self.sync_dir_if_changed()?;
        if let (Some(index), Some(segment)) = (index, self.segments.last()) {
            let keep = usize::try_from(index - segment.first_index + 1).expect("count fits usize");
            if keep < segment.offsets.len() {
                let cut = u64::from(segment.offsets[keep]);
                let result = segment
                    .file
                    .set_len(cut)
                    .and_then(|()| segment.file.set_len(segment.size))
                    .and_then(|()| segment.file.sync_data());
                if let Err(error) = result {
                    return Err(self.poison("truncate", &segment.path.clone(), error));
                }
                let segment = self.segments.last_mut().expect("checked above");
                segment.offsets.truncate(keep);
                segment.end_offset = cut;
            } else if let Err(error) = segment.file.sync_data() {
                return Err(self.poison("fdatasync", &segment.path.clone(), error));
            }
        }
        self.drop_purged_segments(&mut Vec::new())?;
        self.last = match self.segments.last() {
            Some(segment) => Some(self.read_entry(segment.last_index())?.id),
            None => self.purged,
        };
        self.durable = self.last.map(|id| id.index);
        self.generation += 1;
        Ok(())
    }

    /// The still-open files of segments removed by `purge_through` or `truncate_after`, for the
    /// caller to close where a pause does not matter: closing the last handle of a removed
    /// 64 MiB segment frees its blocks and cached pages, which takes tens of milliseconds on
    /// ext4, and would otherwise happen inside the purge, while appends wait.
    pub fn take_retired_files(&mut self) -> Vec<Arc<dyn StorageFile>> {
        std::mem::take(&mut self.retired_files)
    }

    /// Files of sealed segments that are synced and older than the newest two, for the caller to
    /// drop from the page cache (`StorageFile::forget_cached`) off the log's path. The log is
    /// written once and read soon after (applied, replicated) or much later (a lagging follower,
    /// a restart, an audit): left cached, it would grow the page cache by every byte the log
    /// writes, and on a virtual machine the pages of a growing page cache are the costliest part
    /// of a write (docs/design.md §3).
    pub fn take_cold_files(&mut self) -> Vec<Arc<dyn StorageFile>> {
        std::mem::take(&mut self.cold_files)
    }

    /// Forgets every entry through `id.index` (after a snapshot covering them).
    /// `id` may lie past the last entry (snapshot installed from the leader): the log
    /// then becomes empty and continues at `id.index + 1`. The purged id is stored
    /// durably before any segment is deleted; whole segments are deleted.
    pub fn purge_through(&mut self, id: EntryId) -> Result<()> {
        self.check_writable()?;
        if self.purged.is_some_and(|purged| id.index <= purged.index) {
            return Ok(());
        }
        if let Some(stored) = self.entry_id(id.index)? {
            if stored != id {
                return Err(Error::PurgeMismatch { given: id, stored });
            }
        }
        let purge_record = self
            .purge_record
            .as_mut()
            .expect("a writable journal has a purge record");
        if let Err(error) = purge_record.store(&encode_purge_record(id)) {
            self.poisoned.store(true, Ordering::Release);
            return Err(error);
        }
        self.purged = Some(id);
        self.drop_purged_segments(&mut Vec::new())?;
        if self.segments.is_empty() {
            if self.last.is_none_or(|last| last.index < id.index) {
                self.generation += 1;
            }
            self.last = Some(id);
            self.durable = Some(id.index);
        }
        Ok(())
    }

    /// Deletes the segments holding only purged entries, oldest first.
    fn drop_purged_segments(&mut self, removed: &mut Vec<PathBuf>) -> Result<()> {
        let Some(purged) = self.purged else {
            return Ok(());
        };
        while let Some(segment) = self.segments.first() {
            if segment.last_index() > purged.index {
                break;
            }
            if self.read_only {
                self.segments.remove(0);
                continue;
            }
            let path = segment.path.clone();
            if self.keeps_another_spare(segment.size) {
                let spare = self.dir.join(spare_file_name(segment.first_index));
                if let Err(error) = self.storage.rename(&path, &spare) {
                    return Err(self.poison("rename", &path, error));
                }
                let segment = self.segments.remove(0);
                self.spares.push(Spare {
                    path: spare,
                    file: segment.file,
                });
            } else {
                if let Err(error) = self.storage.remove(&path) {
                    return Err(self.poison("remove", &path, error));
                }
                let segment = self.segments.remove(0);
                self.retired_files.push(segment.file);
            }
            removed.push(path);
            self.dir_changes += 1;
        }
        Ok(())
    }

    /// Whether a purged segment of `size` bytes is kept for reuse rather than removed.
    fn keeps_another_spare(&self, size: u64) -> bool {
        size == self.segment_size
            && (self.spares.len() as u64 + 1) * self.segment_size <= SPARE_SEGMENT_BYTES_MAX
    }

    /// Takes the spare files a previous run left (`open`): those of this journal's segment size
    /// while within `SPARE_SEGMENT_BYTES_MAX`; any other is removed.
    fn adopt_spares(&mut self) -> Result<()> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(|error| Error::io("list", &self.dir, error))?;
        let mut spares: Vec<String> = names
            .into_iter()
            .filter(|name| parse_numbered_name(name, SPARE_FILE_SUFFIX).is_some())
            .collect();
        spares.sort_unstable();
        for name in spares {
            let path = self.dir.join(&name);
            let file = self
                .storage
                .open(&path)
                .map_err(|error| Error::io("open", &path, error))?;
            let size = file
                .len()
                .map_err(|error| Error::io("stat", &path, error))?;
            if self.keeps_another_spare(size) {
                self.spares.push(Spare { path, file });
            } else {
                drop(file);
                self.storage
                    .remove(&path)
                    .map_err(|error| Error::io("remove", &path, error))?;
                self.dir_changes += 1;
            }
        }
        Ok(())
    }
}
