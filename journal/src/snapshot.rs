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
        };
        let temp = store.dir.join(SNAPSHOT_TEMP_FILE_NAME);
        match store.storage.remove(&temp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("remove", temp, error)),
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
        header[field::ENCODING] = Encoding::Packed as u8;
        if let Some(id) = last_log_id {
            header[field::HAS_LOG_ID] = 1;
            header[field::TERM..field::TERM + 8].copy_from_slice(&id.term.to_le_bytes());
            header[field::LEADER..field::LEADER + 8]
                .copy_from_slice(&id.leader_node_id.to_le_bytes());
            header[field::INDEX..field::INDEX + 8].copy_from_slice(&id.index.to_le_bytes());
        }
        header[field::META_LEN..field::META_LEN + 4].copy_from_slice(&meta_len.to_le_bytes());
        header[field::DATA_LEN..field::DATA_LEN + 8].copy_from_slice(&data_len.to_le_bytes());

        let temp = self.dir.join(SNAPSHOT_TEMP_FILE_NAME);
        let file = self
            .storage
            .create(&temp)
            .map_err(|error| Error::io("create", &temp, error))?;
        // The header, which holds the checksum and the stored length, is written last; the
        // body's checksum is computed chunk by chunk as it is written (one pass over the data,
        // at the writes' pace) and combined with the header's at the end.
        let mut crc = 0u32;
        let mut offset = SNAPSHOT_HEADER_SIZE as u64;
        let mut unsynced = 0usize;
        let mut unit_started = std::time::Instant::now();
        let mut write = |chunk: &[u8]| -> Result<()> {
            crc = crc32c::crc32c_append(crc, chunk);
            file.write_at(chunk, offset)
                .map_err(|error| Error::io("write", &temp, error))?;
            offset += chunk.len() as u64;
            // Synced as it is written: on ext4 (data=ordered) the journal's next fdatasync
            // waits for every dirty block this file has, so a snapshot flushed only at the
            // end stalls the log's group commits for as long as the whole file takes to
            // write. A few MiB at a time bounds that stall to a few milliseconds.
            unsynced += chunk.len();
            if unsynced >= SNAPSHOT_SYNC_BYTES {
                file.sync_data()
                    .map_err(|error| Error::io("fdatasync", &temp, error))?;
                // Synced pages are clean: dropped from the page cache, a snapshot as large as
                // the state does not grow it by as much (docs/design.md §3). Only a hint.
                let synced_from = offset - unsynced as u64;
                if let Err(error) = file.forget_cached(synced_from, unsynced as u64) {
                    tracing::debug!(%error, "snapshot pages not dropped from the page cache");
                }
                unsynced = 0;
                if !pause.is_zero() {
                    std::thread::sleep(pause.max(unit_started.elapsed()));
                    unit_started = std::time::Instant::now();
                }
            }
            Ok(())
        };
        write(meta)?;
        let mut outcome = Ok(());
        let mut packer = Packer::new();
        let mut packed = Vec::new();
        let mut streamed = 0u64;
        for piece in data {
            for chunk in piece.as_ref().chunks(SNAPSHOT_WRITE_CHUNK_SIZE) {
                packed.clear();
                packer.pack(chunk, &mut packed);
                streamed += chunk.len() as u64;
                outcome = write(&packed);
                if outcome.is_err() {
                    break;
                }
            }
            written(piece);
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            packed.clear();
            packer.finish(&mut packed);
            outcome = write(&packed);
        }
        let stored = offset - SNAPSHOT_HEADER_SIZE as u64 - meta.len() as u64;
        if outcome.is_ok() && streamed != data_len {
            outcome = Err(Error::SnapshotLength {
                expected: data_len,
                streamed,
            });
        }
        if let Err(error) = outcome {
            // Best effort: `open` removes a stale temporary file anyway.
            let _ = self.storage.remove(&temp);
            return Err(error);
        }
        header[field::STORED_LEN..field::STORED_LEN + 8].copy_from_slice(&stored.to_le_bytes());
        let crc = crc32c::crc32c_combine(
            crc32c::crc32c(&header[..field::CRC]),
            crc,
            (stored + meta.len() as u64) as usize,
        );
        header[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        file.write_at(&header, 0)
            .map_err(|error| Error::io("write", &temp, error))?;
        file.sync_all()
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
        self.storage
            .rename(&temp, &current)
            .map_err(|error| Error::io("rename", &temp, error))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|error| Error::io("fsync directory", &self.dir, error))?;
        if let Some(replaced) = replaced {
            crate::storage::free_gradually(&*replaced, pause);
        }
        Ok(stored)
    }

    /// The latest saved snapshot, checksum-verified; `None` if there is none.
    pub fn load_latest(&self) -> Result<Option<Snapshot>> {
        let Some((path, file, header)) = self.open_latest()? else {
            return Ok(None);
        };
        let size = file
            .len()
            .map_err(|error| Error::io("stat", &path, error))?;
        let version = u16_at(&header, field::VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let layout = Layout::of(&header).ok_or_else(|| {
            Error::corruption(&path, 0, None, "snapshot header fields out of range")
        })?;
        let expected_size = (SNAPSHOT_HEADER_SIZE as u64)
            .checked_add(layout.meta_len)
            .and_then(|size| size.checked_add(layout.stored_len));
        if expected_size != Some(size) {
            return Err(Error::corruption(
                path,
                0,
                None,
                "snapshot lengths do not match the file size",
            ));
        }
        let mut meta = vec![0u8; layout.meta_len as usize];
        let read_meta = read_fully(&*file, &mut meta, SNAPSHOT_HEADER_SIZE as u64)
            .map_err(|error| Error::io("read", &path, error))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..field::CRC]), &meta);
        let data_offset = SNAPSHOT_HEADER_SIZE as u64 + layout.meta_len;
        let (read_data, crc, data) = match layout.encoding {
            // Read whole: the data is returned as read, not copied out of another buffer.
            Encoding::Raw => {
                let mut data = vec![0u8; layout.data_len as usize];
                let read = read_fully(&*file, &mut data, data_offset)
                    .map_err(|error| Error::io("read", &path, error))?;
                let crc = crc32c::crc32c_append(crc, &data);
                (read, crc, Ok(data))
            }
            Encoding::Packed => read_packed(&*file, data_offset, &layout, crc)
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
        let data = data.map_err(|error| {
            Error::corruption(&path, data_offset, None, format!("snapshot data: {error}"))
        })?;
        let last_log_id = header_log_id(&header);
        Ok(Some(Snapshot {
            last_log_id,
            meta,
            data,
        }))
    }

    /// The log id and the first `len` bytes of the latest snapshot's data (fewer if the data
    /// is shorter), **not** checksum-verified: for a reader that must size itself from the
    /// snapshot before `load_latest` has verified it (an audit replay reading the engine's
    /// recorded capacity). `None` if there is no snapshot.
    pub fn peek_latest(&self, len: usize) -> Result<Option<(Option<EntryId>, Vec<u8>)>> {
        let Some((path, file, header)) = self.open_latest()? else {
            return Ok(None);
        };
        let layout = Layout::of(&header).ok_or_else(|| {
            Error::corruption(&path, 0, None, "snapshot header fields out of range")
        })?;
        let data_offset = SNAPSHOT_HEADER_SIZE as u64 + layout.meta_len;
        let wanted = layout.data_len.min(len as u64);
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
            Encoding::Packed => {
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

    /// The latest snapshot file, opened, with its header read and its magic checked;
    /// `None` if there is none.
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
        Ok(Some((path, file, header)))
    }
}

/// Where a snapshot file's parts are and how its data is held, from its header; `None` if a
/// field is out of range.
struct Layout {
    encoding: Encoding,
    meta_len: u64,
    /// The data as the caller gave it and gets it back.
    data_len: u64,
    /// The data as the file holds it.
    stored_len: u64,
}

impl Layout {
    fn of(header: &[u8; SNAPSHOT_HEADER_SIZE]) -> Option<Layout> {
        let data_len = u64_at(header, field::DATA_LEN);
        let stored_len = u64_at(header, field::STORED_LEN);
        let (encoding, stored_len) = match header[field::ENCODING] {
            0 if stored_len == 0 => (Encoding::Raw, data_len),
            // Every packed word takes at least its tag: a data length the stored bytes
            // cannot hold is refused before anything is sized by it.
            1 if pack::words_of(data_len) <= stored_len
                && stored_len <= pack::packed_size_max(data_len) =>
            {
                (Encoding::Packed, stored_len)
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
        })
    }
}

/// Reads and unpacks packed data a chunk at a time, checksumming the packed bytes as they are
/// read (continuing `crc`): whether the file held all of them, the checksum, and the data
/// (or why the bytes did not unpack).
fn read_packed(
    file: &dyn StorageFile,
    offset: u64,
    layout: &Layout,
    mut crc: u32,
) -> io::Result<(bool, u32, std::result::Result<Vec<u8>, pack::UnpackError>)> {
    let words = pack::words_of(layout.data_len);
    let mut data = Vec::with_capacity(words as usize * 8);
    let mut unpacker = Unpacker::new();
    let mut buffer = vec![0u8; SNAPSHOT_WRITE_CHUNK_SIZE + pack::PACKED_WORD_SIZE_MAX];
    // Packed bytes read but not yet unpacked (a word cut by the end of a read) at the front.
    let mut carried = 0;
    let mut extra = 0u64;
    let mut read_total = 0u64;
    while read_total < layout.stored_len {
        let wanted = (layout.stored_len - read_total).min(SNAPSHOT_WRITE_CHUNK_SIZE as u64);
        let chunk = &mut buffer[carried..carried + wanted as usize];
        if !read_fully(file, chunk, offset + read_total)? {
            return Ok((false, crc, Ok(Vec::new())));
        }
        crc = crc32c::crc32c_append(crc, chunk);
        read_total += wanted;
        let available = carried + wanted as usize;
        let used = unpacker.unpack(&buffer[..available], words - unpacker.words(), &mut data);
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
    let data = pack::finish_unpacking(&unpacker, layout.data_len, left, &mut data).map(|()| data);
    Ok((true, crc, data))
}

/// A snapshot file opened: its path, the file and its header.
type OpenSnapshot = (PathBuf, Arc<dyn StorageFile>, [u8; SNAPSHOT_HEADER_SIZE]);

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
