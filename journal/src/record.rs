//! Small checksummed records written atomically: two alternating slots with a sequence
//! number. Used for the vote/metadata ([`MetaStore`]) and the journal's purge record.
//!
//! A write goes to the slot *not* holding the newest valid record and is then
//! `fdatasync`ed, so a crash during a write tears only that slot and the previous value
//! survives in the other. Reading takes the valid slot with the highest sequence.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::{u16_at, u32_at, u64_at};
use crate::error::{Error, Result};
use crate::limits::{
    FORMAT_VERSION, RECORD_HEADER_SIZE, RECORD_PAYLOAD_SIZE_MAX, RECORD_SLOT_SIZE,
};
use crate::storage::{read_at_zero_filled, Storage, StorageFile};

/// Magic at the start of every record slot.
pub const RECORD_MAGIC: [u8; 4] = *b"TLYR";

const SLOT_COUNT: usize = 2;

/// Offsets inside a slot header (documented in docs/design.md §3).
mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const HAS_VALUE: usize = 6;
    pub const SEQUENCE: usize = 8;
    pub const PAYLOAD_LEN: usize = 16;
    pub const CRC: usize = 28;
}

enum Slot {
    Empty,
    Invalid(&'static str),
    Valid {
        sequence: u64,
        value: Option<Vec<u8>>,
    },
}

fn decode_slot(path: &Path, bytes: &[u8]) -> Result<Slot> {
    if bytes.iter().all(|&byte| byte == 0) {
        return Ok(Slot::Empty);
    }
    if bytes[field::MAGIC..field::MAGIC + 4] != RECORD_MAGIC {
        return Ok(Slot::Invalid("bad record magic"));
    }
    let version = u16_at(bytes, field::VERSION);
    // No format has version 0: a slot torn after its magic, not a format to refuse.
    if version == 0 {
        return Ok(Slot::Invalid("record slot without a version (torn)"));
    }
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let payload_len = u32_at(bytes, field::PAYLOAD_LEN) as usize;
    if payload_len > RECORD_PAYLOAD_SIZE_MAX {
        return Ok(Slot::Invalid("record length out of bounds"));
    }
    let end = RECORD_HEADER_SIZE + payload_len;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[..field::CRC]),
        &bytes[RECORD_HEADER_SIZE..end],
    );
    if crc != u32_at(bytes, field::CRC) {
        return Ok(Slot::Invalid("record checksum mismatch"));
    }
    let value = match bytes[field::HAS_VALUE] {
        0 if payload_len == 0 => None,
        1 => Some(bytes[RECORD_HEADER_SIZE..end].to_vec()),
        _ => return Ok(Slot::Invalid("record flag out of range")),
    };
    Ok(Slot::Valid {
        sequence: u64_at(bytes, field::SEQUENCE),
        value,
    })
}

fn encode_slot(sequence: u64, value: Option<&[u8]>) -> Vec<u8> {
    let payload = value.unwrap_or_default();
    assert!(payload.len() <= RECORD_PAYLOAD_SIZE_MAX);
    let mut bytes = vec![0u8; RECORD_HEADER_SIZE + payload.len()];
    bytes[field::HAS_VALUE] = u8::from(value.is_some());
    bytes[field::MAGIC..field::MAGIC + 4].copy_from_slice(&RECORD_MAGIC);
    bytes[field::VERSION..field::VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[field::SEQUENCE..field::SEQUENCE + 8].copy_from_slice(&sequence.to_le_bytes());
    bytes[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 4]
        .copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes[RECORD_HEADER_SIZE..].copy_from_slice(payload);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..field::CRC]), payload);
    bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// A two-slot atomic record file.
#[derive(Debug)]
pub(crate) struct AtomicRecord {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Sequence of the newest valid record (0 when none).
    sequence: u64,
    /// Slot holding the newest valid record.
    slot_current: Option<usize>,
    value: Option<Vec<u8>>,
    poisoned: bool,
}

impl AtomicRecord {
    pub fn open(storage: &dyn Storage, dir: &Path, name: &str) -> Result<AtomicRecord> {
        let path = dir.join(name);
        let file = match storage.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                AtomicRecord::create(storage, dir, name)?
            }
            Err(error) => return Err(Error::io("open", &path, error)),
        };
        let mut record = AtomicRecord {
            path,
            file,
            sequence: 0,
            slot_current: None,
            value: None,
            poisoned: false,
        };
        record.read_slots()?;
        Ok(record)
    }

    /// Opens an existing record file without writing anything; `Ok(None)` when the
    /// file does not exist. Damage is reported exactly as by [`AtomicRecord::open`].
    pub fn open_read_only(
        storage: &dyn Storage,
        dir: &Path,
        name: &str,
    ) -> Result<Option<AtomicRecord>> {
        let path = dir.join(name);
        let file = match storage.open_read_only(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("open", &path, error)),
        };
        let mut record = AtomicRecord {
            path,
            file,
            sequence: 0,
            slot_current: None,
            value: None,
            // Never stored through: a read-only handle.
            poisoned: true,
        };
        record.read_slots()?;
        Ok(Some(record))
    }

    /// Creates the file atomically (temp file, fsync, rename, fsync directory) holding
    /// a valid "no value" record in slot 1, so that afterwards a file without any
    /// valid slot can only be damage, never a torn first write.
    fn create(storage: &dyn Storage, dir: &Path, name: &str) -> Result<Arc<dyn StorageFile>> {
        let path = dir.join(name);
        let temp = dir.join(format!("{name}.tmp"));
        let file = storage
            .create(&temp)
            .map_err(|error| Error::io("create", &temp, error))?;
        file.set_len((RECORD_SLOT_SIZE * SLOT_COUNT) as u64)
            .map_err(|error| Error::io("set_len", &temp, error))?;
        file.write_at(&encode_slot(0, None), RECORD_SLOT_SIZE as u64)
            .map_err(|error| Error::io("write", &temp, error))?;
        file.sync_all()
            .map_err(|error| Error::io("fsync", &temp, error))?;
        storage
            .rename(&temp, &path)
            .map_err(|error| Error::io("rename", &temp, error))?;
        storage
            .sync_dir(dir)
            .map_err(|error| Error::io("fsync directory", dir, error))?;
        Ok(file)
    }

    fn read_slots(&mut self) -> Result<()> {
        let mut invalid = None;
        for slot in 0..SLOT_COUNT {
            let mut bytes = vec![0u8; RECORD_SLOT_SIZE];
            let offset = (slot * RECORD_SLOT_SIZE) as u64;
            read_at_zero_filled(&*self.file, &mut bytes, offset)
                .map_err(|error| Error::io("read", &self.path, error))?;
            match decode_slot(&self.path, &bytes)? {
                Slot::Empty => {}
                Slot::Invalid(reason) => invalid = Some((offset, reason)),
                Slot::Valid { sequence, value } => {
                    if self.slot_current.is_none() || sequence > self.sequence {
                        self.sequence = sequence;
                        self.slot_current = Some(slot);
                        self.value = value;
                    }
                }
            }
        }
        // One damaged slot next to a valid one: the torn newer write of a crash. No
        // valid slot at all: damage. Never report "nothing stored" for it (a
        // forgotten vote breaks Raft).
        match (invalid, self.slot_current) {
            (_, Some(_)) => Ok(()),
            (Some((offset, reason)), None) => {
                Err(Error::corruption(&self.path, offset, None, reason))
            }
            (None, None) => Err(Error::corruption(
                &self.path,
                0,
                None,
                "record file has no valid slot",
            )),
        }
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Writes `payload` durably; on return the new value survives a crash.
    pub fn store(&mut self, payload: &[u8]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if payload.len() > RECORD_PAYLOAD_SIZE_MAX {
            return Err(Error::RecordTooLarge {
                size: payload.len(),
                max: RECORD_PAYLOAD_SIZE_MAX,
            });
        }
        let slot = match self.slot_current {
            Some(current) => (current + 1) % SLOT_COUNT,
            None => 0,
        };
        let sequence = self.sequence + 1;
        let bytes = encode_slot(sequence, Some(payload));
        let offset = (slot * RECORD_SLOT_SIZE) as u64;
        let written = self
            .file
            .write_at(&bytes, offset)
            .map_err(|error| Error::io("write", &self.path, error))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|error| Error::io("fdatasync", &self.path, error))
            });
        if let Err(error) = written {
            self.poisoned = true;
            return Err(error);
        }
        self.sequence = sequence;
        self.slot_current = Some(slot);
        self.value = Some(payload.to_vec());
        Ok(())
    }
}

/// The vote/metadata store: one small opaque value (the caller encodes it, e.g. the
/// postcard bytes of openraft's vote), stored atomically in the file `meta` of `dir`.
#[derive(Debug)]
pub struct MetaStore {
    record: AtomicRecord,
}

/// File name of the metadata record inside its directory.
pub const META_FILE_NAME: &str = "meta";

impl MetaStore {
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<MetaStore> {
        MetaStore::open_named(storage, dir, META_FILE_NAME)
    }

    /// `open`, with the value in the file `name` of `dir` instead of `meta`.
    pub fn open_named(storage: Arc<dyn Storage>, dir: &Path, name: &str) -> Result<MetaStore> {
        storage
            .create_dir_all(dir)
            .map_err(|error| Error::io("create directory", dir, error))?;
        Ok(MetaStore {
            record: AtomicRecord::open(&*storage, dir, name)?,
        })
    }

    /// The newest value saved, `None` if nothing was ever saved.
    pub fn load(&self) -> Option<&[u8]> {
        self.record.value()
    }

    /// Saves `value` durably (at most [`RECORD_PAYLOAD_SIZE_MAX`] bytes).
    pub fn save(&mut self, value: &[u8]) -> Result<()> {
        self.record.store(value)
    }
}
