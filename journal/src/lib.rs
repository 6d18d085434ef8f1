//! tally-journal: the durable input log (the Raft log), the snapshot store and the
//! vote/metadata store. See docs/design.md §3 for the on-disk format.
//!
//! Invariants:
//! - An entry reported durable survives any crash; after a crash the log is a prefix of
//!   what was appended.
//! - Bad bytes are never returned: every record is checksummed on every read.
//! - After a failed write or fsync the journal refuses further writes (fsyncgate).
//!
//! No `unsafe` code, except the one system call rustix does not offer (`cachestat`, in
//! `storage.rs`).
#![deny(unsafe_code)]

mod entry;
mod error;
pub mod fault;
mod journal;
pub mod limits;
pub mod pack;
mod record;
mod snapshot;
mod storage;
mod stream;

pub use entry::{Entry, EntryId, EntryKind, ENTRY_MAGIC};
pub use error::{Error, Result};
pub use journal::{
    Durable, Journal, JournalOptions, RecoveryReport, SyncTicket, TornTail, PURGE_FILE_NAME,
    SEGMENT_FILE_SUFFIX, SEGMENT_MAGIC, SPARE_FILE_SUFFIX,
};
pub use record::{MetaStore, META_FILE_NAME, RECORD_MAGIC};
pub use snapshot::{
    RunPlan, RunTail, Snapshot, SnapshotStore, SNAPSHOT_FILE_NAME, SNAPSHOT_MAGIC,
    SNAPSHOT_RUN_FILE_PREFIX, SNAPSHOT_TEMP_FILE_NAME,
};
pub use storage::{free_gradually, FsStorage, Storage, StorageFile};
pub use stream::{Piece, ReadWindow, Window};
