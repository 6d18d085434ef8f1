//! The snapshot store: the latest snapshot of the engine's state, with the log id it
//! covers, in one checksummed file replaced atomically.
//!
//! Save: write `snapshot.tmp`, fsync it, rename it over `snapshot`, fsync the
//! directory. Until the rename the previous snapshot stays in place, so a crash at any
//! point leaves either the old or the new snapshot, never a mix.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::{u16_at, u32_at, u64_at};
use crate::error::{Error, Result};
use crate::limits::{
    FORMAT_VERSION, SNAPSHOT_HEADER_SIZE, SNAPSHOT_SYNC_BYTES, SNAPSHOT_WRITE_CHUNK_SIZE,
};
use crate::pack::{self, Packer, Unpacker};
use crate::storage::{Storage, StorageFile};
use crate::EntryId;
use std::sync::Mutex;

/// Magic at the start of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"TLYS";
/// File name of the current snapshot.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot";
/// File name of a snapshot being written.
pub const SNAPSHOT_TEMP_FILE_NAME: &str = "snapshot.tmp";

/// Offsets inside the snapshot header (documented in docs/design.md §3).
mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const HAS_LOG_ID: usize = 6;
    pub const ENCODING: usize = 7;
    pub const TERM: usize = 8;
    pub const LEADER: usize = 16;
    pub const INDEX: usize = 24;
    pub const META_LEN: usize = 32;
    pub const META_RESERVED: usize = 36;
    pub const DATA_LEN: usize = 40;
    pub const STORED_LEN: usize = 48;
    pub const RESERVED: usize = 56;
    pub const CRC: usize = 60;
}

/// How a snapshot file holds its data (header byte 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// As given; the stored length is the data length (snapshots saved before session 18).
    Raw = 0,
    /// Packed (`pack.rs`): words XORed with the word a record before, zero bytes left out.
    Packed = 1,
    /// Packed, but for a run of records in a run file of its own (`snapshot.run.<seq>`),
    /// which the next snapshot extends in place; a run record after the header says where.
    PackedWithRun = 2,
}

/// File name prefix of the run files (`snapshot.run.<seq>`, `seq` in decimal).
pub const SNAPSHOT_RUN_FILE_PREFIX: &str = "snapshot.run.";
/// The run record, after the header of a snapshot of encoding 2.
const RUN_RECORD_SIZE: usize = 64;
/// A run is whole records: the engine's, which packing XORs with the record before.
const RECORD_SIZE: u64 = (pack::RECORD_WORDS * 8) as u64;

/// Offsets inside the run record (documented in docs/design.md §3).
mod run_field {
    pub const SEQ: usize = 0;
    pub const OFFSET: usize = 8;
    pub const LEN: usize = 16;
    pub const STORED: usize = 24;
    pub const CRC: usize = 32;
    pub const DATA_CRC: usize = 36;
    pub const RESERVED: usize = 40;
}

fn run_file_name(seq: u64) -> String {
    format!("{SNAPSHOT_RUN_FILE_PREFIX}{seq}")
}

/// The run of the latest snapshot, as a later one extends it (`SnapshotStore::run_tail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTail {
    seq: u64,
    /// Its packed bytes in the run file, and their checksum.
    stored: u64,
    crc: u32,
    /// Its length in bytes: whole 128-byte records.
    pub len: u64,
    /// crc32c of its bytes (as the caller gave them, not packed).
    pub data_crc: u32,
    /// Its last record.
    pub last_record: [u8; 128],
}

/// Where the run is in the data of a snapshot being saved (`save_streamed_with_run`), and the
/// latest snapshot's run it extends, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    pub offset: u64,
    pub len: u64,
    pub extends: Option<RunTail>,
}

/// A run record as stored: which run file, where its run goes in the data, how long it is and
/// how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunRef {
    seq: u64,
    offset: u64,
    len: u64,
    stored: u64,
    crc: u32,
    data_crc: u32,
}

impl RunRef {
    fn encode(&self) -> [u8; RUN_RECORD_SIZE] {
        let mut record = [0u8; RUN_RECORD_SIZE];
        for (at, value) in [
            (run_field::SEQ, self.seq),
            (run_field::OFFSET, self.offset),
            (run_field::LEN, self.len),
            (run_field::STORED, self.stored),
        ] {
            record[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        record[run_field::CRC..run_field::CRC + 4].copy_from_slice(&self.crc.to_le_bytes());
        record[run_field::DATA_CRC..run_field::DATA_CRC + 4]
            .copy_from_slice(&self.data_crc.to_le_bytes());
        record
    }

    /// The run as a later snapshot extends it, given its last record (`None`: the run is empty,
    /// and there is nothing to extend).
    fn tail(&self, last_record: Option<[u8; 128]>) -> Option<RunTail> {
        last_record.map(|last_record| RunTail {
            seq: self.seq,
            stored: self.stored,
            crc: self.crc,
            len: self.len,
            data_crc: self.data_crc,
            last_record,
        })
    }

    /// `None` if a field is out of range for data of `data_len` bytes.
    fn decode(record: &[u8; RUN_RECORD_SIZE], data_len: u64) -> Option<RunRef> {
        let run = RunRef {
            seq: u64_at(record, run_field::SEQ),
            offset: u64_at(record, run_field::OFFSET),
            len: u64_at(record, run_field::LEN),
            stored: u64_at(record, run_field::STORED),
            crc: u32_at(record, run_field::CRC),
            data_crc: u32_at(record, run_field::DATA_CRC),
        };
        let in_range = run.len % RECORD_SIZE == 0
            && run
                .offset
                .checked_add(run.len)
                .is_some_and(|end| end <= data_len)
            && packed_fits(run.len, run.stored)
            && record[run_field::RESERVED..].iter().all(|&byte| byte == 0);
        in_range.then_some(run)
    }
}

/// Whether `stored` packed bytes can hold `data_len` bytes: every word takes its tag at least,
/// nine bytes at most. A length outside is refused before anything is sized by it.
fn packed_fits(data_len: u64, stored: u64) -> bool {
    pack::words_of(data_len) <= stored && stored <= pack::packed_size_max(data_len)
}

/// A file a snapshot is written to, synced every `SNAPSHOT_SYNC_BYTES` as it is written and
/// checksummed as it goes.
struct PacedFile {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    offset: u64,
    crc: u32,
    unsynced: usize,
    unit_started: std::time::Instant,
    pause: std::time::Duration,
}

impl PacedFile {
    fn new(
        file: Arc<dyn StorageFile>,
        path: PathBuf,
        offset: u64,
        crc: u32,
        pause: std::time::Duration,
    ) -> PacedFile {
        PacedFile {
            file,
            path,
            offset,
            crc,
            unsynced: 0,
            unit_started: std::time::Instant::now(),
            pause,
        }
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.file
            .write_at(chunk, self.offset)
            .map_err(|error| Error::io("write", &self.path, error))?;
        self.offset += chunk.len() as u64;
        // Synced as it is written: on ext4 (data=ordered) the journal's next fdatasync waits
        // for every dirty block this file has, so a snapshot flushed only at the end stalls
        // the log's group commits for as long as the whole file takes to write. A few MiB at
        // a time bounds that stall to a few milliseconds.
        self.unsynced += chunk.len();
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            self.file
                .sync_data()
                .map_err(|error| Error::io("fdatasync", &self.path, error))?;
            // Synced pages are clean: dropped from the page cache, a snapshot as large as the
            // state does not grow it by as much (docs/design.md §3). Only a hint.
            let synced_from = self.offset - self.unsynced as u64;
            if let Err(error) = self.file.forget_cached(synced_from, self.unsynced as u64) {
                tracing::debug!(%error, "snapshot pages not dropped from the page cache");
            }
            self.unsynced = 0;
            if !self.pause.is_zero() {
                std::thread::sleep(self.pause.max(self.unit_started.elapsed()));
                self.unit_started = std::time::Instant::now();
            }
        }
        Ok(())
    }
}

/// The run file of a snapshot being saved, being written.
struct RunWriter {
    seq: u64,
    created: bool,
    file: PacedFile,
    packer: Packer,
    /// crc32c of the run's bytes so far, as given.
    data_crc: u32,
    /// The last record of the run being extended.
    last_record: Option<[u8; 128]>,
}

/// A run file written and synced: the run record naming it, the run a later snapshot may
/// extend, and the packed bytes written to it.
struct FinishedRun {
    seq: u64,
    record: [u8; RUN_RECORD_SIZE],
    tail: Option<RunTail>,
    written: u64,
}

impl RunWriter {
    fn finish(self, plan: &RunPlan, storage: &dyn Storage, dir: &Path) -> Result<FinishedRun> {
        // Whole records in, whole words out: the packer holds nothing back.
        assert!(self.packer.is_at_record_boundary());
        let last_record = self.packer.last_record().or(self.last_record);
        let kept_stored = plan.extends.as_ref().map_or(0, |tail| tail.stored);
        self.file
            .file
            .sync_data()
            .map_err(|error| Error::io("fdatasync", &self.file.path, error))?;
        if self.created {
            // Its name durable before a snapshot that names it.
            storage
                .sync_dir(dir)
                .map_err(|error| Error::io("fsync directory", dir, error))?;
        }
        let run = RunRef {
            seq: self.seq,
            offset: plan.offset,
            len: plan.len,
            stored: self.file.offset,
            crc: self.file.crc,
            data_crc: self.data_crc,
        };
        Ok(FinishedRun {
            seq: self.seq,
            record: run.encode(),
            tail: run.tail(last_record),
            written: run.stored - kept_stored,
        })
    }
}

/// A snapshot as stored: the log id it covers, the caller's meta bytes (e.g. openraft's
/// `SnapshotMeta`, postcard-encoded) and the state bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub last_log_id: Option<EntryId>,
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

/// The snapshot store of one node.
#[derive(Debug)]
pub struct SnapshotStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    read_only: bool,
    /// The latest snapshot's run, once this store has saved or loaded it.
    run: Mutex<Option<RunTail>>,
}

impl SnapshotStore {
    /// Opens the store in `dir`, removing a half-written temporary file.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<SnapshotStore> {
        storage
            .create_dir_all(dir)
            .map_err(|error| Error::io("create directory", dir, error))?;
        let store = SnapshotStore {
            storage,
            dir: dir.to_owned(),
            read_only: false,
            run: Mutex::new(None),
        };
        let temp = store.dir.join(SNAPSHOT_TEMP_FILE_NAME);
        match store.storage.remove(&temp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("remove", temp, error)),
        }
        // Run files no snapshot names: left by a save that did not finish. A latest snapshot
        // that cannot be read keeps them all, for `load_latest` to report.
        match store.open_latest() {
            Ok(latest) => {
                let kept = latest.and_then(|latest| latest.layout.run.map(|run| run.seq));
                store.remove_runs_other_than(kept, std::time::Duration::ZERO);
            }
            Err(error) => tracing::debug!(%error, "stale snapshot runs kept"),
        }
        Ok(store)
    }

    /// Opens the store in `dir` for reading only: creates nothing, removes nothing (a
    /// stale temporary file is left in place). Saving through it fails with
    /// [`Error::ReadOnly`].
    pub fn open_read_only(storage: Arc<dyn Storage>, dir: &Path) -> SnapshotStore {
        SnapshotStore {
            storage,
            dir: dir.to_owned(),
            read_only: true,
            run: Mutex::new(None),
        }
    }

    /// Saves a snapshot durably and atomically; on return it is the latest.
    pub fn save(&mut self, last_log_id: Option<EntryId>, meta: &[u8], data: &[u8]) -> Result<()> {
        self.save_paced(last_log_id, meta, data, std::time::Duration::ZERO)
    }

    /// `save`, resting after each intermediate sync (every `SNAPSHOT_SYNC_BYTES`) for as long
    /// as writing and syncing that much took, and at least `pause`, so that writing a large
    /// snapshot takes at most half the disk's time, a little at a time, from a node that is
    /// serving: the log's fsyncs wait behind one such sync at most. The caller's thread sleeps
    /// (call it from a thread that may block); a zero `pause` does not rest at all.
    pub fn save_paced(
        &mut self,
        last_log_id: Option<EntryId>,
        meta: &[u8],
        data: &[u8],
        pause: std::time::Duration,
    ) -> Result<()> {
        self.save_streamed(
            last_log_id,
            meta,
            data.len() as u64,
            std::iter::once(data),
            |_| {},
            pause,
        )
        .map(|_| ())
    }

    /// `save_paced` with the state bytes in pieces, written as they come: `data` yields them
    /// in order (`data_len` bytes in all) and each is handed to `written` once it is in the
    /// file, for the caller to reuse. A snapshot larger than memory allows, or one still being
    /// encoded, is thus saved without ever being whole in memory. If `data` ends short of or
    /// past `data_len`, nothing is saved ([`Error::SnapshotLength`]) and the latest snapshot
    /// stays as it was. The data is stored packed (`pack.rs`); returns the bytes it took.
    pub fn save_streamed<B: AsRef<[u8]>>(
        &mut self,
        last_log_id: Option<EntryId>,
        meta: &[u8],
        data_len: u64,
        data: impl IntoIterator<Item = B>,
        written: impl FnMut(B),
        pause: std::time::Duration,
    ) -> Result<u64> {
        self.save_parts(last_log_id, meta, data_len, None, data, written, pause)
    }

    /// `save_streamed` for data holding a run of records that later snapshots extend (the
    /// engine's transfers, appended and never changed): the run, `run.offset..run.offset +
    /// run.len` of the data, goes to a run file of its own, which a later snapshot extends
    /// in place instead of writing again. With `run.extends` (the latest snapshot's run, from
    /// [`SnapshotStore::run_tail`]), the data holds that run's bytes already and `data`
    /// yields the rest of it: `data_len - extends.len` bytes, without the run's first
    /// `extends.len`. Without it, a new run file is written whole. Returns the bytes written
    /// (packed), to both files. [`Error::SnapshotRunChanged`] if `extends` is not the latest
    /// snapshot's run (a snapshot was saved in between); nothing is saved then.
    #[allow(clippy::too_many_arguments)]
    pub fn save_streamed_with_run<B: AsRef<[u8]>>(
        &mut self,
        last_log_id: Option<EntryId>,
        meta: &[u8],
        data_len: u64,
        run: RunPlan,
        data: impl IntoIterator<Item = B>,
        written: impl FnMut(B),
        pause: std::time::Duration,
    ) -> Result<u64> {
        self.save_parts(last_log_id, meta, data_len, Some(run), data, written, pause)
    }

    /// The run of the latest snapshot, for the next one to extend (`save_streamed_with_run`):
    /// known once that snapshot was saved or loaded by this store, and holding at least one
    /// record.
    pub fn run_tail(&self) -> Option<RunTail> {
        self.run.lock().expect("run lock").clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn save_parts<B: AsRef<[u8]>>(
        &mut self,
        last_log_id: Option<EntryId>,
        meta: &[u8],
        data_len: u64,
        run: Option<RunPlan>,
        data: impl IntoIterator<Item = B>,
        mut written: impl FnMut(B),
        pause: std::time::Duration,
    ) -> Result<u64> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let meta_len = u32::try_from(meta.len()).map_err(|_| Error::RecordTooLarge {
            size: meta.len(),
            max: u32::MAX as usize,
        })?;
        let mut header = [0u8; SNAPSHOT_HEADER_SIZE];
        header[field::MAGIC..field::MAGIC + 4].copy_from_slice(&SNAPSHOT_MAGIC);
        header[field::VERSION..field::VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[field::ENCODING] = match run {
            Some(_) => Encoding::PackedWithRun as u8,
            None => Encoding::Packed as u8,
        };
        if let Some(id) = last_log_id {
            header[field::HAS_LOG_ID] = 1;
            header[field::TERM..field::TERM + 8].copy_from_slice(&id.term.to_le_bytes());
            header[field::LEADER..field::LEADER + 8]
                .copy_from_slice(&id.leader_node_id.to_le_bytes());
            header[field::INDEX..field::INDEX + 8].copy_from_slice(&id.index.to_le_bytes());
        }
        header[field::META_LEN..field::META_LEN + 4].copy_from_slice(&meta_len.to_le_bytes());
        header[field::DATA_LEN..field::DATA_LEN + 8].copy_from_slice(&data_len.to_le_bytes());

        // The run file first: extended in place, or a new one. The latest snapshot reads its
        // run only up to the length it recorded, so bytes appended past it change nothing
        // until the new snapshot is in place.
        let mut run_writer = match &run {
            None => None,
            Some(plan) => Some(self.open_run(plan, data_len, pause)?),
        };
        let kept = run
            .as_ref()
            .and_then(|plan| plan.extends.as_ref())
            .map_or(0, |tail| tail.len);
        // Where the run's new bytes are in what `data` yields.
        let (run_from, run_to) = run.as_ref().map_or((u64::MAX, u64::MAX), |plan| {
            (plan.offset, plan.offset + plan.len - kept)
        });

        let temp = self.dir.join(SNAPSHOT_TEMP_FILE_NAME);
        let file = self
            .storage
            .create(&temp)
            .map_err(|error| Error::io("create", &temp, error))?;
        // The header, which holds the checksum and the stored length, is written last; the
        // body's checksum is computed chunk by chunk as it is written (one pass over the data,
        // at the writes' pace) and combined with the header's at the end.
        let body_from = SNAPSHOT_HEADER_SIZE as u64
            + if run.is_some() {
                RUN_RECORD_SIZE as u64
            } else {
                0
            };
        let mut main = PacedFile::new(file, temp.clone(), body_from, 0, pause);
        let mut outcome = main.write(meta);
        let mut packer = Packer::new();
        // One buffer for every chunk, zeroed once (`Packer::pack_into`).
        let mut packed =
            vec![0u8; pack::packed_size_max(SNAPSHOT_WRITE_CHUNK_SIZE as u64 + 8) as usize];
        let mut streamed = 0u64;
        for piece in data {
            if outcome.is_err() {
                written(piece);
                continue;
            }
            for chunk in piece.as_ref().chunks(SNAPSHOT_WRITE_CHUNK_SIZE) {
                let mut rest = chunk;
                while !rest.is_empty() && outcome.is_ok() {
                    // The part of `rest` that goes to one file.
                    let (to_run, limit) = if streamed < run_from {
                        (false, run_from - streamed)
                    } else if streamed < run_to {
                        (true, run_to - streamed)
                    } else {
                        (false, u64::MAX)
                    };
                    let take = rest.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
                    let (part, after) = rest.split_at(take);
                    outcome = match (to_run, run_writer.as_mut()) {
                        (true, Some(run)) => {
                            run.data_crc = crc32c::crc32c_append(run.data_crc, part);
                            let len = run.packer.pack_into(part, &mut packed);
                            run.file.write(&packed[..len])
                        }
                        _ => {
                            let len = packer.pack_into(part, &mut packed);
                            main.write(&packed[..len])
                        }
                    };
                    streamed += take as u64;
                    rest = after;
                }
                if outcome.is_err() {
                    break;
                }
            }
            written(piece);
        }
        if outcome.is_ok() {
            let mut last = Vec::new();
            packer.finish(&mut last);
            outcome = main.write(&last);
        }
        if outcome.is_ok() && streamed != data_len - kept {
            outcome = Err(Error::SnapshotLength {
                expected: data_len - kept,
                streamed,
            });
        }
        let mut finished_run = None;
        if let (Ok(()), Some(run_writer), Some(plan)) = (&outcome, run_writer.take(), &run) {
            match run_writer.finish(plan, &*self.storage, &self.dir) {
                Ok(finished) => finished_run = Some(finished),
                Err(error) => outcome = Err(error),
            }
        }
        if let Err(error) = outcome {
            // Best effort: `open` removes a stale temporary file and stale run files anyway.
            let _ = self.storage.remove(&temp);
            return Err(error);
        }
        let stored = main.offset - body_from - meta.len() as u64;
        header[field::STORED_LEN..field::STORED_LEN + 8].copy_from_slice(&stored.to_le_bytes());
        let mut crc = crc32c::crc32c(&header[..field::CRC]);
        if let Some(finished) = &finished_run {
            main.file
                .write_at(&finished.record, SNAPSHOT_HEADER_SIZE as u64)
                .map_err(|error| Error::io("write", &temp, error))?;
            crc = crc32c::crc32c_append(crc, &finished.record);
        }
        let crc = crc32c::crc32c_combine(crc, main.crc, (stored + meta.len() as u64) as usize);
        header[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        main.file
            .write_at(&header, 0)
            .map_err(|error| Error::io("write", &temp, error))?;
        main.file
            .sync_all()
            .map_err(|error| Error::io("fsync", &temp, error))?;
        let current = self.dir.join(SNAPSHOT_FILE_NAME);
        // Paced, the snapshot being replaced is held open across the rename and freed a few
        // MiB at a time once the new one is in place: the rename would otherwise free all of
        // it in one file-system transaction, which the log's next fdatasync waits for (tens of
        // milliseconds for hundreds of MiB). Held open, it lives on only as an orphan inode,
        // which a crash frees at the next mount; the new snapshot is unaffected.
        let replaced = if pause.is_zero() {
            None
        } else {
            self.storage.open(&current).ok()
        };
        // From here until the directory is synced, which snapshot is the latest is not known
        // for sure: no run is offered for extending (truncating the run to a length the
        // latest snapshot may have outgrown would lose its bytes).
        *self.run.lock().expect("run lock") = None;
        self.storage
            .rename(&temp, &current)
            .map_err(|error| Error::io("rename", &temp, error))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|error| Error::io("fsync directory", &self.dir, error))?;
        let (kept_run, run_written) = match finished_run {
            Some(finished) => {
                *self.run.lock().expect("run lock") = finished.tail;
                (Some(finished.seq), finished.written)
            }
            None => (None, 0),
        };
        if let Some(replaced) = replaced {
            crate::storage::free_gradually(&*replaced, pause);
        }
        self.remove_runs_other_than(kept_run, pause);
        Ok(stored + run_written)
    }

    /// Opens the run file a snapshot being saved writes its run to (`save_streamed_with_run`):
    /// the latest snapshot's, cut back to the length that snapshot recorded, or a new one.
    fn open_run(
        &self,
        plan: &RunPlan,
        data_len: u64,
        pause: std::time::Duration,
    ) -> Result<RunWriter> {
        let kept = plan.extends.as_ref().map_or(0, |tail| tail.len);
        let fits = plan.len % RECORD_SIZE == 0
            && kept <= plan.len
            && plan
                .offset
                .checked_add(plan.len)
                .is_some_and(|end| end <= data_len);
        if !fits {
            return Err(Error::InvalidOptions(
                "a snapshot's run must be whole records inside its data, no shorter than the run it extends",
            ));
        }
        match &plan.extends {
            Some(tail) => {
                if self.run.lock().expect("run lock").as_ref() != Some(tail) {
                    return Err(Error::SnapshotRunChanged);
                }
                let path = self.dir.join(run_file_name(tail.seq));
                let file = self
                    .storage
                    .open(&path)
                    .map_err(|error| Error::io("open", &path, error))?;
                // Bytes past the recorded length are a save that did not finish.
                file.set_len(tail.stored)
                    .map_err(|error| Error::io("truncate", &path, error))?;
                Ok(RunWriter {
                    seq: tail.seq,
                    created: false,
                    file: PacedFile::new(file, path, tail.stored, tail.crc, pause),
                    packer: Packer::after_record(&tail.last_record),
                    data_crc: tail.data_crc,
                    last_record: Some(tail.last_record),
                })
            }
            None => {
                let latest = self
                    .run
                    .lock()
                    .expect("run lock")
                    .as_ref()
                    .map(|tail| tail.seq);
                let seq = self
                    .run_files()?
                    .into_iter()
                    .map(|(seq, _)| seq)
                    .chain(latest)
                    .max()
                    .map_or(1, |seq| seq + 1);
                let path = self.dir.join(run_file_name(seq));
                let file = self
                    .storage
                    .create(&path)
                    .map_err(|error| Error::io("create", &path, error))?;
                Ok(RunWriter {
                    seq,
                    created: true,
                    file: PacedFile::new(file, path, 0, 0, pause),
                    packer: Packer::new(),
                    data_crc: 0,
                    last_record: None,
                })
            }
        }
    }

    /// The run files in the directory: their sequence numbers and names.
    fn run_files(&self) -> Result<Vec<(u64, String)>> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(|error| Error::io("list", &self.dir, error))?;
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let seq = name.strip_prefix(SNAPSHOT_RUN_FILE_PREFIX)?.parse().ok()?;
                Some((seq, name))
            })
            .collect())
    }

    /// Removes every run file but `kept`'s (a run no snapshot names: replaced, or written by a
    /// save that did not finish). Best effort: what is left is removed at the next save or
    /// open. Paced, each file is freed a few MiB at a time, as a replaced snapshot is.
    fn remove_runs_other_than(&self, kept: Option<u64>, pause: std::time::Duration) {
        let files = match self.run_files() {
            Ok(files) => files,
            Err(error) => {
                tracing::debug!(%error, "stale snapshot runs not listed");
                return;
            }
        };
        for (seq, name) in files {
            if Some(seq) == kept {
                continue;
            }
            let path = self.dir.join(name);
            let held = if pause.is_zero() {
                None
            } else {
                self.storage.open(&path).ok()
            };
            if let Err(error) = self.storage.remove(&path) {
                tracing::debug!(%error, path = %path.display(), "stale snapshot run not removed");
                continue;
            }
            if let Some(held) = held {
                crate::storage::free_gradually(&*held, pause);
            }
        }
    }

    /// The latest saved snapshot, checksum-verified; `None` if there is none. Its run, if it
    /// has one, is read from its run file and put in its place in the data.
    pub fn load_latest(&self) -> Result<Option<Snapshot>> {
        let Some(latest) = self.open_latest()? else {
            return Ok(None);
        };
        let OpenSnapshot {
            path,
            file,
            header,
            layout,
        } = latest;
        let mut meta = vec![0u8; layout.meta_len as usize];
        let read_meta = read_fully(&*file, &mut meta, layout.meta_offset())
            .map_err(|error| Error::io("read", &path, error))?;
        let mut crc = crc32c::crc32c(&header[..field::CRC]);
        if let Some(run) = &layout.run {
            crc = crc32c::crc32c_append(crc, &run.encode());
        }
        crc = crc32c::crc32c_append(crc, &meta);
        let data_offset = layout.meta_offset() + layout.meta_len;
        let main_len = layout.data_len - layout.run.map_or(0, |run| run.len);
        let mut data = Vec::new();
        let (read_data, crc, unpacked) = match layout.encoding {
            // Read whole: the data is returned as read, not copied out of another buffer.
            Encoding::Raw => {
                data = vec![0u8; layout.data_len as usize];
                let read = read_fully(&*file, &mut data, data_offset)
                    .map_err(|error| Error::io("read", &path, error))?;
                let crc = crc32c::crc32c_append(crc, &data);
                (read, crc, Ok(()))
            }
            Encoding::Packed | Encoding::PackedWithRun => read_packed(
                &*file,
                data_offset,
                main_len,
                layout.stored_len,
                crc,
                &mut data,
            )
            .map_err(|error| Error::io("read", &path, error))?,
        };
        if !(read_meta && read_data) || crc != u32_at(&header, field::CRC) {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot checksum mismatch",
            ));
        }
        // The checksum held, yet the packed bytes do not unpack: written wrong, not damaged.
        unpacked.map_err(|error| {
            Error::corruption(&path, data_offset, None, format!("snapshot data: {error}"))
        })?;
        let data = match layout.run {
            None => {
                *self.run.lock().expect("run lock") = None;
                data
            }
            Some(run) => {
                let (whole, tail) = self.with_run(data, &run)?;
                *self.run.lock().expect("run lock") = tail;
                whole
            }
        };
        Ok(Some(Snapshot {
            last_log_id: header_log_id(&header),
            meta,
            data,
        }))
    }

    /// The data of a snapshot of encoding 2: `rest` (the data less the run, verified) with the
    /// run read from its run file in its place; and the run as a later snapshot extends it.
    fn with_run(&self, rest: Vec<u8>, run: &RunRef) -> Result<(Vec<u8>, Option<RunTail>)> {
        let path = self.dir.join(run_file_name(run.seq));
        let file = match self.storage.open_read_only(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corruption(
                    path,
                    0,
                    None,
                    "the snapshot's run file is missing",
                ))
            }
            Err(error) => return Err(Error::io("open", path, error)),
        };
        // Checked before anything is sized by the run's length.
        let size = file
            .len()
            .map_err(|error| Error::io("stat", &path, error))?;
        if size < run.stored {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot run file shorter than its snapshot says",
            ));
        }
        let offset = run.offset as usize;
        let mut data = Vec::with_capacity(rest.len() + run.len as usize);
        data.extend_from_slice(&rest[..offset]);
        // Unpacked where it goes: the run is most of a snapshot, and not copied again.
        let (complete, crc, unpacked) = read_packed(&*file, 0, run.len, run.stored, 0, &mut data)
            .map_err(|error| Error::io("read", &path, error))?;
        if !complete || crc != run.crc {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot run shorter than its snapshot says, or its checksum mismatches",
            ));
        }
        unpacked
            .map_err(|error| Error::corruption(&path, 0, None, format!("snapshot run: {error}")))?;
        let last_record = data[offset..]
            .rchunks_exact(RECORD_SIZE as usize)
            .next()
            .map(|record| record.try_into().expect("a record"));
        data.extend_from_slice(&rest[offset..]);
        Ok((data, run.tail(last_record)))
    }

    /// The log id and the first `len` bytes of the latest snapshot's data (fewer if the data
    /// is shorter), **not** checksum-verified: for a reader that must size itself from the
    /// snapshot before `load_latest` has verified it (an audit replay reading the engine's
    /// recorded capacity). `None` if there is no snapshot. (Bytes from a snapshot's run, past
    /// the data before it, are read by `load_latest`, and verified.)
    pub fn peek_latest(&self, len: usize) -> Result<Option<(Option<EntryId>, Vec<u8>)>> {
        let Some(latest) = self.open_latest()? else {
            return Ok(None);
        };
        let OpenSnapshot {
            path,
            file,
            header,
            layout,
        } = latest;
        let data_offset = layout.meta_offset() + layout.meta_len;
        let wanted = layout.data_len.min(len as u64);
        if layout
            .run
            .is_some_and(|run| run.len > 0 && wanted > run.offset)
        {
            return Ok(self.load_latest()?.map(|mut snapshot| {
                snapshot.data.truncate(wanted as usize);
                (snapshot.last_log_id, snapshot.data)
            }));
        }
        let shorter = || Error::corruption(&path, 0, None, "snapshot shorter than its header says");
        let data = match layout.encoding {
            Encoding::Raw => {
                let mut data = vec![0u8; wanted as usize];
                let complete = read_fully(&*file, &mut data, data_offset)
                    .map_err(|error| Error::io("read", &path, error))?;
                if !complete {
                    return Err(shorter());
                }
                data
            }
            Encoding::Packed | Encoding::PackedWithRun => {
                // Enough packed bytes for the words wanted, however they packed.
                let words = pack::words_of(wanted);
                let mut packed =
                    vec![0u8; pack::packed_size_max(wanted).min(layout.stored_len) as usize];
                let read = file
                    .read_at(&mut packed, data_offset)
                    .map_err(|error| Error::io("read", &path, error))?;
                let mut data = Vec::with_capacity(words as usize * 8);
                let mut unpacker = Unpacker::new();
                unpacker.unpack(&packed[..read], words, &mut data);
                if unpacker.words() < words {
                    return Err(shorter());
                }
                data.truncate(wanted as usize);
                data
            }
        };
        Ok(Some((header_log_id(&header), data)))
    }

    /// The latest snapshot file, opened, with its header (and run record) read, checked
    /// against each other and the file's size; `None` if there is none.
    fn open_latest(&self) -> Result<Option<OpenSnapshot>> {
        let path = self.dir.join(SNAPSHOT_FILE_NAME);
        let file = match self.storage.open_read_only(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("open", path, error)),
        };
        let mut header = [0u8; SNAPSHOT_HEADER_SIZE];
        let read = file
            .read_at(&mut header, 0)
            .map_err(|error| Error::io("read", &path, error))?;
        if read < SNAPSHOT_HEADER_SIZE || header[field::MAGIC..field::MAGIC + 4] != SNAPSHOT_MAGIC {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot header missing or bad magic",
            ));
        }
        let version = u16_at(&header, field::VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut run_record = None;
        if header[field::ENCODING] == Encoding::PackedWithRun as u8 {
            let mut record = [0u8; RUN_RECORD_SIZE];
            let complete = read_fully(&*file, &mut record, SNAPSHOT_HEADER_SIZE as u64)
                .map_err(|error| Error::io("read", &path, error))?;
            if !complete {
                return Err(Error::corruption(
                    path,
                    0,
                    None,
                    "snapshot run record missing",
                ));
            }
            run_record = Some(record);
        }
        let layout = Layout::of(&header, run_record.as_ref()).ok_or_else(|| {
            Error::corruption(&path, 0, None, "snapshot header fields out of range")
        })?;
        let size = file
            .len()
            .map_err(|error| Error::io("stat", &path, error))?;
        let expected_size = (layout.meta_offset() + layout.meta_len).checked_add(layout.stored_len);
        if expected_size != Some(size) {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot lengths do not match the file size",
            ));
        }
        Ok(Some(OpenSnapshot {
            path,
            file,
            header,
            layout,
        }))
    }
}

/// Where a snapshot file's parts are and how its data is held, from its header (and run
/// record); `None` if a field is out of range.
struct Layout {
    encoding: Encoding,
    meta_len: u64,
    /// The data as the caller gave it and gets it back, run included.
    data_len: u64,
    /// The data as the file holds it (less the run, for encoding 2).
    stored_len: u64,
    run: Option<RunRef>,
}

impl Layout {
    fn of(
        header: &[u8; SNAPSHOT_HEADER_SIZE],
        run_record: Option<&[u8; RUN_RECORD_SIZE]>,
    ) -> Option<Layout> {
        let data_len = u64_at(header, field::DATA_LEN);
        let stored_len = u64_at(header, field::STORED_LEN);
        let (encoding, stored_len, run) = match (header[field::ENCODING], run_record) {
            (0, None) if stored_len == 0 => (Encoding::Raw, data_len, None),
            (1, None) if packed_fits(data_len, stored_len) => (Encoding::Packed, stored_len, None),
            (2, Some(record)) => {
                let run = RunRef::decode(record, data_len)?;
                if !packed_fits(data_len - run.len, stored_len) {
                    return None;
                }
                (Encoding::PackedWithRun, stored_len, Some(run))
            }
            _ => return None,
        };
        let in_range = header[field::HAS_LOG_ID] <= 1
            && header[field::META_RESERVED..field::DATA_LEN]
                .iter()
                .all(|&byte| byte == 0)
            && header[field::RESERVED..field::CRC]
                .iter()
                .all(|&byte| byte == 0);
        in_range.then_some(Layout {
            encoding,
            meta_len: u64::from(u32_at(header, field::META_LEN)),
            data_len,
            stored_len,
            run,
        })
    }

    /// Where the meta begins: after the header, and the run record if there is one.
    fn meta_offset(&self) -> u64 {
        SNAPSHOT_HEADER_SIZE as u64 + self.run.map_or(0, |_| RUN_RECORD_SIZE as u64)
    }
}

/// Reads `stored_len` packed bytes from `offset` and unpacks them into `data_len` bytes
/// appended to `out`, a chunk at a time, checksumming the packed bytes as they are read
/// (continuing `crc`): whether the file held all of them, the checksum, and whether they
/// unpacked (or why not).
fn read_packed(
    file: &dyn StorageFile,
    offset: u64,
    data_len: u64,
    stored_len: u64,
    mut crc: u32,
    out: &mut Vec<u8>,
) -> io::Result<(bool, u32, std::result::Result<(), pack::UnpackError>)> {
    let words = pack::words_of(data_len);
    let start = out.len();
    out.reserve(words as usize * 8);
    let mut unpacker = Unpacker::new();
    let mut buffer = vec![0u8; SNAPSHOT_WRITE_CHUNK_SIZE + pack::PACKED_WORD_SIZE_MAX];
    // Packed bytes read but not yet unpacked (a word cut by the end of a read) at the front.
    let mut carried = 0;
    let mut extra = 0u64;
    let mut read_total = 0u64;
    while read_total < stored_len {
        let wanted = (stored_len - read_total).min(SNAPSHOT_WRITE_CHUNK_SIZE as u64);
        let chunk = &mut buffer[carried..carried + wanted as usize];
        if !read_fully(file, chunk, offset + read_total)? {
            return Ok((false, crc, Ok(())));
        }
        crc = crc32c::crc32c_append(crc, chunk);
        read_total += wanted;
        let available = carried + wanted as usize;
        let used = unpacker.unpack(&buffer[..available], words - unpacker.words(), out);
        if unpacker.words() == words {
            // Bytes past the last word: read on for the checksum, counted, not kept.
            extra += (available - used) as u64;
            carried = 0;
        } else {
            // Less than one word is left over (`unpack` stops only at a word cut short).
            buffer.copy_within(used..available, 0);
            carried = available - used;
        }
    }
    let left = carried as u64 + extra;
    let unpacked = pack::finish_unpacking(&unpacker, data_len, left, out, start);
    Ok((true, crc, unpacked))
}

/// A snapshot file opened: its path, the file, its header and where its parts are.
struct OpenSnapshot {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    header: [u8; SNAPSHOT_HEADER_SIZE],
    layout: Layout,
}

/// The log id a snapshot header names (`has_log_id` 1), if any.
fn header_log_id(header: &[u8; SNAPSHOT_HEADER_SIZE]) -> Option<EntryId> {
    (header[field::HAS_LOG_ID] == 1).then(|| EntryId {
        term: u64_at(header, field::TERM),
        leader_node_id: u64_at(header, field::LEADER),
        index: u64_at(header, field::INDEX),
    })
}

/// Fills `buf` from `offset`; `false` when the file ends first (`read_at` reads short only
/// at the end of the file).
fn read_fully(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    Ok(file.read_at(buf, offset)? == buf.len())
}
