//! tally-engine: the deterministic ledger state machine.
//!
//! Batches of events go in with the leader's timestamp; one result per event comes out. The
//! engine does no I/O, reads no clock, draws no random numbers and starts no threads, and nothing
//! it returns depends on hash-map iteration order: the same batches in the same order give the
//! same results, the same `digest()` and the same `hash_chain()` on every machine.
//!
//! Client input never panics the engine; a broken invariant does (asserts stay on in release).
//! See docs/design.md §2 for the data model, the result codes and their precedence.
//!
//! No `unsafe` code, except the prefetch hint in `prefetch.rs` and the streaming store of new
//! transfer records in `stream.rs`.
#![deny(unsafe_code)]

mod id_hash;
mod id_index;
mod ledger;
pub mod limits;
mod prefetch;
mod query;
mod record_hash;
mod results;
mod snapshot;
mod state;
mod stored_account;
mod stream;
mod types;

pub use id_hash::{IdBuildHasher, IdHasher, IdMap, IdSet};
pub use id_index::{IdIndex, Probe, SequentialIdIndex};
pub use ledger::{BatchError, Ledger, Prepared, TransferStorage, UntouchedMemory};
pub use results::{CreateAccountResult, CreateTransferResult};
pub use snapshot::SnapshotError;
pub use snapshot::SnapshotWriter;
pub use snapshot::StoredTransfers;
pub use stored_account::StoredAccount;
pub use types::{
    Account, AccountBalance, AccountFilter, AccountFlags, EventResult, LedgerTotals, Operation,
    Transfer, TransferFlags, UnknownOperation,
};
