use std::io;
use std::path::PathBuf;

use crate::EntryId;

/// Everything the journal, the snapshot store and the metadata store can fail with.
///
/// [`Error::is_fatal`] separates storage failures (the node must stop and recover from
/// disk, or be rebuilt) from misuse of the API, which leaves the store unchanged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes on disk fail a checksum or a structural check where a torn tail cannot
    /// explain them. Fatal.
    #[error("corruption in {path} at byte offset {offset} (entry index {index:?}): {reason}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        index: Option<u64>,
        reason: String,
    },
    /// A file written by another format version. Fatal: refuse rather than guess.
    #[error("{path} has format version {found}, this build reads only version {supported}; refusing to open it")]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    /// An I/O call failed. Fatal: after a failed write or fsync the file contents are
    /// unknown (fsyncgate), so the store refuses further writes.
    #[error("I/O error during {operation} on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed; the store refuses writes until reopened.
    #[error("refusing writes after an earlier failed write or fsync; reopen to recover from disk")]
    Poisoned,
    /// Misuse: the appended index does not follow the log.
    #[error("entry index {got} does not follow the log: expected {expected}")]
    IndexOutOfOrder { expected: u64, got: u64 },
    /// Misuse: an entry's term is lower than the previous entry's.
    #[error("entry {index} has term {term}, lower than the previous entry's term {previous_term}")]
    TermRegression {
        index: u64,
        term: u64,
        previous_term: u64,
    },
    /// Misuse: an entry's fields are inconsistent.
    #[error("invalid entry {index}: {reason}")]
    InvalidEntry { index: u64, reason: &'static str },
    /// Misuse: truncating into the purged part of the log.
    #[error("cannot truncate after {index:?}: entries through {purged} are purged")]
    TruncateBelowPurged { index: Option<u64>, purged: u64 },
    /// Misuse: the purge id does not match the stored entry at that index.
    #[error("purge id {given:?} does not match the stored entry {stored:?}")]
    PurgeMismatch { given: EntryId, stored: EntryId },
    /// Misuse: a record (vote/metadata or snapshot meta) is too large.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    /// Misuse: a streamed snapshot's data did not add up to the length it was announced with.
    #[error("snapshot data of {expected} bytes announced, {streamed} streamed; nothing saved")]
    SnapshotLength { expected: u64, streamed: u64 },
    /// A snapshot was to extend a run that is no longer the latest snapshot's (another
    /// snapshot was saved in between); nothing saved.
    #[error("the snapshot run to extend is no longer the latest snapshot's; nothing saved")]
    SnapshotRunChanged,
    /// Misuse: a write on a store opened read-only (an audit must not change the node's data).
    #[error("the store was opened read-only; refusing to write")]
    ReadOnly,
    /// Misuse: invalid options.
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
}

impl Error {
    /// True for storage failures (corruption, unknown format, I/O, poisoned store);
    /// false for misuse, after which the store is unchanged and usable.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Corruption { .. }
                | Error::UnsupportedVersion { .. }
                | Error::Io { .. }
                | Error::Poisoned
        )
    }

    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Error {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        index: Option<u64>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            index,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
