//! Every bound in the engine, in one place, with the relations between them asserted at compile
//! time. A bound that is not here does not exist.

use crate::types::{Account, AccountBalance, EventResult, Transfer};

/// Size in bytes of one event record (an `Account` or a `Transfer`) on the wire and in the log.
pub const EVENT_SIZE: usize = 128;

/// The most events one batch (one log entry) may carry. 8189 = (1 MiB - 384 bytes of headroom for
/// framing) / 128, the same figure TigerBeetle uses, so a full batch plus its header fits 1 MiB.
pub const BATCH_EVENTS_MAX: usize = 8189;

/// Largest batch body in bytes.
pub const BATCH_SIZE_MAX: usize = BATCH_EVENTS_MAX * EVENT_SIZE;

/// Default capacity for accounts when `Ledger::new()` is used.
pub const ACCOUNTS_MAX: usize = 1 << 20;

/// Default capacity for transfer ids (stored transfers plus ids burned by transient failures)
/// when `Ledger::new()` is used.
pub const TRANSFERS_MAX: usize = 1 << 24;

/// Default capacity for rows of balance history (accounts with the `history` flag).
pub const HISTORY_ROWS_MAX: usize = 1 << 24;

/// The most records a query (`lookup_*`, `get_account_*`) returns: one batch worth, so any answer
/// fits the same framing as a request.
pub const QUERY_RESULTS_MAX: usize = BATCH_EVENTS_MAX;

/// The most ids a lookup may ask for.
pub const LOOKUP_IDS_MAX: usize = BATCH_EVENTS_MAX;

/// How many events of a transfer batch have their accounts and ids looked up together, ahead of
/// being applied (so their cache misses overlap). Small enough that what they touch stays in a
/// core's L2 cache until used.
pub const LOOKAHEAD_EVENTS: usize = 64;

/// Nanoseconds per second: `timeout` is in seconds, timestamps are in nanoseconds.
pub const NANOSECONDS_PER_SECOND: u64 = 1_000_000_000;

/// Snapshot format version written by this build; `restore` accepts exactly this one.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Size of the fixed snapshot header (magic, version, reserved) in bytes.
pub const SNAPSHOT_HEADER_SIZE: usize = 16;

const _: () = assert!(EVENT_SIZE == 128);
const _: () = assert!(core::mem::size_of::<Account>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<Transfer>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<AccountBalance>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<EventResult>() == 16);
const _: () = assert!(BATCH_EVENTS_MAX > 0);
// Event indexes and record indexes are stored as u32.
const _: () = assert!(BATCH_EVENTS_MAX <= u32::MAX as usize);
const _: () = assert!(ACCOUNTS_MAX < u32::MAX as usize);
const _: () = assert!(TRANSFERS_MAX < u32::MAX as usize);
const _: () = assert!(HISTORY_ROWS_MAX < u32::MAX as usize);
// A full batch plus a 384-byte frame header fits in 1 MiB.
const _: () = assert!(BATCH_SIZE_MAX + 384 <= 1 << 20);
const _: () = assert!(LOOKAHEAD_EVENTS > 0 && LOOKAHEAD_EVENTS <= BATCH_EVENTS_MAX);
const _: () = assert!(QUERY_RESULTS_MAX <= BATCH_EVENTS_MAX);
const _: () = assert!(LOOKUP_IDS_MAX <= BATCH_EVENTS_MAX);
// A batch's timestamps are `timestamp + index`; with one nanosecond per event a batch spans less
// than the smallest timeout (one second), so a pending transfer never expires inside its own batch.
const _: () = assert!((BATCH_EVENTS_MAX as u64) < NANOSECONDS_PER_SECOND);
