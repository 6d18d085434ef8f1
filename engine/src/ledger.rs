//! The ledger state machine: batches in, one result per event out.

use std::borrow::Cow;
use std::collections::BTreeMap;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::id_hash::{hash_id, IdSet};
use crate::id_index::{fingerprint, IdIndex, Probe, SequentialIdIndex};
use crate::limits::{
    ACCOUNTS_MAX, BATCH_EVENTS_MAX, EVENT_SIZE, HISTORY_ROWS_MAX, LOOKAHEAD_EVENTS,
    NANOSECONDS_PER_SECOND, TRANSFERS_MAX,
};
use crate::prefetch::prefetch;
use crate::record_hash::{self, Lanes, LANE_TIMESTAMP, SEED_EVENT};
use crate::results::{CreateAccountResult, CreateTransferResult};
use crate::state::{
    account_term, balance_term, failed_id_term, history_term, status_term, transfer_term,
    FIELD_CREDITS_PENDING, FIELD_CREDITS_POSTED, FIELD_DEBITS_PENDING, FIELD_DEBITS_POSTED,
};
use crate::stored_account::StoredAccount;
use crate::stream::{fence, push_streaming_stamped};
use crate::types::{
    Account, AccountBalance, AccountFlags, EventResult, Operation, Transfer, TransferFlags,
};

/// A record stored on a cache-line boundary. A 128-byte record then spans exactly two cache lines
/// instead of three, and the per-transfer write of a new record fills whole lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Aligned<T>(pub(crate) T);

impl<T> core::ops::Deref for Aligned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> core::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// "No record": the end of a per-account list.
pub(crate) const NONE: u32 = u32::MAX;

/// A whole batch refused before any event is looked at. Deterministic: every replica refuses the
/// same batch the same way. A refused batch changes no balance and no record, but it does advance
/// the hash chain and `batches_applied` (with the error's code in place of results), so replicas
/// that applied the same log agree on the chain whatever the log contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {size} bytes is not a whole number of {EVENT_SIZE}-byte events")]
    SizeNotMultipleOfEventSize { size: usize },
    #[error("batch is empty")]
    Empty,
    #[error("batch has {count} events, more than the {BATCH_EVENTS_MAX} allowed")]
    TooManyEvents { count: usize },
    #[error("batch timestamp {timestamp} + {count} events overflows u64")]
    TimestampOverflow { timestamp: u64, count: usize },
}

impl BatchError {
    /// The byte mixed into the hash chain in place of results (0 means "applied").
    pub fn code(&self) -> u8 {
        match self {
            BatchError::SizeNotMultipleOfEventSize { .. } => 1,
            BatchError::Empty => 2,
            BatchError::TooManyEvents { .. } => 3,
            BatchError::TimestampOverflow { .. } => 4,
        }
    }
}

/// The state of a transfer created with the `pending` flag.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingStatus {
    Pending = 1,
    Posted = 2,
    Voided = 3,
    Expired = 4,
}

impl PendingStatus {
    pub(crate) fn from_byte(byte: u8) -> Option<PendingStatus> {
        match byte {
            1 => Some(PendingStatus::Pending),
            2 => Some(PendingStatus::Posted),
            3 => Some(PendingStatus::Voided),
            4 => Some(PendingStatus::Expired),
            _ => None,
        }
    }
}

/// Transfers per block of `PendingStatuses::block_counts`: 4 KiB of statuses.
const PENDING_BLOCK_TRANSFERS: usize = 1 << 12;

/// The `PendingStatus` of every transfer created with `pending`, by transfer index: one byte per
/// transfer in a `Vec` parallel to the transfers, so creating a transfer appends a byte and a post
/// or void reads and writes one in place, with no map to hash into.
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingStatuses {
    statuses: Vec<Option<PendingStatus>>,
    /// How many statuses are `Some` in each block of `PENDING_BLOCK_TRANSFERS` transfers (blocks
    /// past its end hold none), so that listing them skips blocks of transfers never pending.
    /// The list is a snapshot's first step, on the business-logic thread: reading a byte per
    /// transfer there took 26 ms at 18 M transfers, a stall every waiting batch shared (session
    /// 18). A transfer that is not pending never touches this.
    block_counts: Vec<u32>,
    /// How many are `Some`.
    len: usize,
}

impl PendingStatuses {
    /// Slots for `count` more transfers, none of them pending.
    pub(crate) fn push_transfers(&mut self, count: usize) {
        self.statuses.resize(self.statuses.len() + count, None);
    }

    fn reserve_touched(&mut self, additional: usize) {
        reserve_touched(&mut self.statuses, additional, None);
    }

    /// A slot for a newly appended transfer.
    fn push_transfer(&mut self) {
        self.statuses.push(None);
    }

    /// A slot for a newly appended pending transfer, with status `Pending`.
    fn push_transfer_pending(&mut self) {
        self.statuses.push(Some(PendingStatus::Pending));
        self.count_one_more(self.statuses.len() - 1);
    }

    fn count_one_more(&mut self, index: usize) {
        let block = index / PENDING_BLOCK_TRANSFERS;
        if block >= self.block_counts.len() {
            self.block_counts.resize(block + 1, 0);
        }
        self.block_counts[block] += 1;
        self.len += 1;
    }

    fn count_one_less(&mut self, index: usize) {
        let block = index / PENDING_BLOCK_TRANSFERS;
        assert!(self.block_counts[block] > 0);
        self.block_counts[block] -= 1;
        self.len -= 1;
    }

    /// Drops the slot of the newest transfer, which must hold no status.
    fn pop_transfer(&mut self) {
        let status = self.statuses.pop().expect("a transfer's status slot");
        assert!(status.is_none());
    }

    /// Sets the status of transfer `index`, returning the previous one.
    pub(crate) fn insert(&mut self, index: u32, status: PendingStatus) -> Option<PendingStatus> {
        let previous = self.statuses[index as usize].replace(status);
        if previous.is_none() {
            self.count_one_more(index as usize);
        }
        previous
    }

    fn remove(&mut self, index: u32) -> Option<PendingStatus> {
        let previous = self.statuses[index as usize].take();
        if previous.is_some() {
            self.count_one_less(index as usize);
        }
        previous
    }

    pub(crate) fn get(&self, index: u32) -> Option<PendingStatus> {
        self.statuses.get(index as usize).copied().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// (transfer index, status) of every pending transfer, by index: reads the blocks that hold
    /// one, not a byte per transfer.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, PendingStatus)> + '_ {
        self.block_counts
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .flat_map(move |(block, _)| {
                let start = block * PENDING_BLOCK_TRANSFERS;
                let end = self.statuses.len().min(start + PENDING_BLOCK_TRANSFERS);
                self.statuses[start..end]
                    .iter()
                    .enumerate()
                    .filter_map(move |(offset, status)| {
                        status.map(|status| ((start + offset) as u32, status))
                    })
            })
    }

    /// Asserts that the block counts and the count agree with the statuses.
    pub(crate) fn check_counts(&self) {
        let mut counted = vec![0u32; self.statuses.len().div_ceil(PENDING_BLOCK_TRANSFERS)];
        for (index, status) in self.statuses.iter().enumerate() {
            counted[index / PENDING_BLOCK_TRANSFERS] += u32::from(status.is_some());
        }
        // Either may be the longer (a rolled-back chain pops the transfers of a block it
        // grew): past its end, each must count none.
        let blocks = self.block_counts.len().max(counted.len());
        for block in 0..blocks {
            assert_eq!(
                self.block_counts.get(block).copied().unwrap_or(0),
                counted.get(block).copied().unwrap_or(0),
                "pending statuses counted in block {block}"
            );
        }
        assert_eq!(
            self.len,
            counted.iter().map(|&count| count as usize).sum::<usize>()
        );
    }
}

/// Head of an account's balance history list (newest first). Derived state: rebuilt on restore.
/// The head of its transfer list is in its record (`transfers_head`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccountLinks {
    pub(crate) history_head: u32,
}

/// The newest transfer of an account (`NONE` if it has none): the head of its transfer list
/// (newest first), derived state rebuilt on restore. It is kept in the stored record's
/// `reserved` field, plus one (so a new record's zero means none), which every transfer of the
/// account already brings into cache and writes: in a separate array it cost each account of
/// each transfer a cache miss of its own (docs/design.md §2). Clients never see it: every
/// record that leaves the ledger goes through `StoredAccount::public`, and the digest's terms do
/// not read it.
#[inline(always)]
pub(crate) fn transfers_head(account: &StoredAccount) -> u32 {
    account.reserved.wrapping_sub(1)
}

#[inline(always)]
pub(crate) fn set_transfers_head(account: &mut StoredAccount, head: u32) {
    account.reserved = head.wrapping_add(1);
}

/// For each transfer, the previous transfer of its debit account and of its credit account.
/// Derived state: rebuilt on restore.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransferLinks {
    pub(crate) debit_previous: u32,
    pub(crate) credit_previous: u32,
}

/// One row of balance history for an account with the `history` flag.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryRow {
    pub(crate) account_index: u32,
    pub(crate) transfer_index: u32,
    /// The account's previous row (derived: rebuilt on restore).
    pub(crate) previous: u32,
    pub(crate) balance: AccountBalance,
}

/// What a linked chain changed in place, so it can be undone. Records appended by the chain
/// (accounts, transfers, history rows) are undone by truncating to the marks instead.
#[derive(Clone, Copy, Debug)]
enum Undo {
    Balances {
        account_index: u32,
        balances: [u128; 4],
    },
    PendingResolved {
        pending_index: u32,
    },
}

/// Where a linked chain started: everything past these marks belongs to the chain.
#[derive(Clone, Copy, Debug)]
struct ChainMarks {
    event_index: usize,
    /// The digest before the chain: a rollback restores the state, so it restores this too.
    digest: u128,
    accounts_count: usize,
    transfers_count: usize,
    history_count: usize,
}

/// What one event of a transfer batch refers to, looked up `LOOKAHEAD_EVENTS` events at a time
/// before those events are applied, in stages whose loads do not depend on each other so that
/// the cache misses of many events overlap (memory-level parallelism) instead of each event
/// waiting on its own; the main loop then finds the same slots and records still in cache.
///
/// Valid for the whole batch: accounts are never created during `create_transfers`, so the
/// account indexes (and `NONE` = not found) are final; transfers that existed before the batch are
/// never removed by it, so a found `pending` is final, while `NONE` there only means "not before
/// this batch" and is looked up again. The event's own id is always looked up again (an earlier
/// event of the batch may have taken it); its fingerprint is computed here once.
#[derive(Clone, Copy, Debug)]
struct Hint {
    /// The event's lanes (`record_hash`), for the batch's events hash and the stored record's.
    lanes: Lanes,
    /// `SequentialIdIndex::fingerprint(event.id)`: the id's in the transfers' index.
    id_fingerprint: u32,
    /// Plain or pending: `hash_id` of the event's debit and credit account ids (for the digest).
    debit_hash: u64,
    credit_hash: u64,
    /// Plain or pending: the event's accounts. Post or void: the pending transfer's accounts,
    /// when `pending` was found.
    debit: u32,
    credit: u32,
    /// Post or void: the pending transfer, if it existed before the batch.
    pending: u32,
}

impl Hint {
    const EMPTY: Hint = Hint {
        lanes: Lanes { even: 0, odd: 0 },
        id_fingerprint: 0,
        debit_hash: 0,
        credit_hash: 0,
        debit: NONE,
        credit: NONE,
        pending: NONE,
    };
}

/// What `create_transfers` computes from one event's bytes alone, before it looks anything up.
#[derive(Clone, Copy, Debug)]
struct EventHashes {
    lanes: Lanes,
    /// `SequentialIdIndex::fingerprint(event.id)`.
    id_fingerprint: u32,
    /// Plain or pending: `hash_id` of the debit and credit account ids; else 0.
    debit_hash: u64,
    credit_hash: u64,
    /// Post or void: `SequentialIdIndex::fingerprint(pending_id)`; else 0.
    pending_fingerprint: u32,
}

impl EventHashes {
    #[inline(always)]
    fn of(event: &Transfer) -> EventHashes {
        Self::with_id_fingerprint(event, SequentialIdIndex::fingerprint(event.id))
    }

    /// `of`, with the id's fingerprint computed already (by the main loop, which prefetched the
    /// id's home slot with it a window before).
    #[inline(always)]
    fn with_id_fingerprint(event: &Transfer, id_fingerprint: u32) -> EventHashes {
        debug_assert_eq!(id_fingerprint, SequentialIdIndex::fingerprint(event.id));
        let resolving = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
        let (debit_hash, credit_hash, pending_fingerprint) = if event.flags & resolving != 0 {
            (0, 0, SequentialIdIndex::fingerprint(event.pending_id))
        } else {
            (
                hash_id(event.debit_account_id),
                hash_id(event.credit_account_id),
                0,
            )
        };
        EventHashes {
            lanes: Lanes::of(record_bytes(event)),
            id_fingerprint,
            debit_hash,
            credit_hash,
            pending_fingerprint,
        }
    }
}

/// The hashes a transfer batch needs from its events' bytes alone (a fifth of the engine's
/// instructions per transfer), computed ahead by `Ledger::prepare` on any thread: an audit
/// replay computes them on its reader thread while the business-logic thread applies the batch
/// before. Pure functions of the bytes, so `apply_prepared` reaches exactly the results, digest
/// and hash chain that `apply` reaches. Given with other bytes than it was prepared from, it
/// makes the ledger's digest and hash chain wrong (never the balances): a replay then reports a
/// divergence.
#[derive(Debug, Default)]
pub struct Prepared {
    hashes: Vec<EventHashes>,
}

/// A result and the timestamp reported with it.
#[derive(Clone, Copy, Debug)]
struct Outcome<R> {
    result: R,
    timestamp: u64,
}

impl<R> Outcome<R> {
    fn failed(result: R) -> Self {
        Outcome {
            result,
            timestamp: 0,
        }
    }
}

/// The ledger: every account, transfer, pending state and failed id, in memory.
///
/// Single-threaded and deterministic: the same batches in the same order give the same results,
/// the same `digest()` and the same `hash_chain()`.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) accounts_max: usize,
    pub(crate) transfers_max: usize,
    pub(crate) history_rows_max: usize,

    /// In creation (= timestamp) order.
    pub(crate) accounts: Vec<Aligned<StoredAccount>>,
    pub(crate) account_links: Vec<AccountLinks>,
    pub(crate) account_indexes: IdIndex,

    /// In creation (= timestamp) order.
    pub(crate) transfers: Vec<Aligned<Transfer>>,
    pub(crate) transfer_links: Vec<TransferLinks>,
    pub(crate) transfer_indexes: SequentialIdIndex,

    /// Status of every transfer created with `pending`, by transfer index.
    pub(crate) pending_statuses: PendingStatuses,
    /// Pending transfers with a timeout, by (expires_at, timestamp): the order they expire in.
    pub(crate) expiries: BTreeMap<(u64, u64), u32>,
    /// Ids burned by transient failures.
    pub(crate) failed_ids: IdSet<u128>,
    pub(crate) history: Vec<HistoryRow>,

    pub(crate) last_timestamp: u64,
    pub(crate) batches_applied: u64,
    pub(crate) hash_chain: u128,
    /// `digest()`, kept up to date by every change (see `state.rs`).
    pub(crate) digest: u128,

    undo: Vec<Undo>,
    undo_recording: bool,
    /// Tests turn `create_plain_transfer` off to check it against the general path.
    #[cfg(test)]
    plain_path_disabled: bool,
    /// Transfers the plain path created: pending, posted checked from the accounts' first cache
    /// lines alone, posted checked with their pending balances.
    #[cfg(test)]
    plain_path_counts: [u64; 3],
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl core::fmt::Debug for Ledger {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("Ledger")
            .field("accounts_count", &self.accounts.len())
            .field("transfers_count", &self.transfers.len())
            .field("failed_ids_count", &self.failed_ids.len())
            .field("history_rows_count", &self.history.len())
            .field("last_timestamp", &self.last_timestamp)
            .field("batches_applied", &self.batches_applied)
            .field("hash_chain", &format_args!("{:032x}", self.hash_chain))
            .finish()
    }
}

/// Decodes raw little-endian records, without copying when the bytes happen to be aligned.
fn decode_records<T>(bytes: &[u8]) -> Cow<'_, [T]>
where
    T: FromBytes + IntoBytes + Immutable + KnownLayout + Clone + Default,
{
    assert_eq!(bytes.len() % core::mem::size_of::<T>(), 0);
    match <[T]>::ref_from_bytes(bytes) {
        Ok(records) => Cow::Borrowed(records),
        Err(_) => {
            let mut records = vec![T::default(); bytes.len() / core::mem::size_of::<T>()];
            records.as_mut_bytes().copy_from_slice(bytes);
            Cow::Owned(records)
        }
    }
}

/// A record's 128 bytes, as `record_hash` takes them.
#[inline(always)]
pub(crate) fn record_bytes<T: IntoBytes + Immutable>(record: &T) -> &[u8; 128] {
    record.as_bytes().try_into().expect("a 128-byte record")
}

/// The limits of a constrained account hold (true for unconstrained accounts). Reads the second
/// cache line (`limits_hold` with zeros is the first line's alone).
#[inline(always)]
fn within_limits(account: &StoredAccount) -> bool {
    limits_hold(account, account.debits_pending(), account.credits_pending())
}

/// `within_limits` as a call, for a branch that the common case skips: the compiler cannot load
/// the second cache line ahead of that branch, as it may for a load it sees.
#[inline(never)]
fn within_limits_outlined(account: &StoredAccount) -> bool {
    within_limits(account)
}

/// `within_limits` after a plain transfer, read as the plain path's checks read it.
#[inline(always)]
fn limits_hold_after(account: &StoredAccount, pending: bool, nothing_pending: bool) -> bool {
    if pending {
        within_limits(account)
    } else if nothing_pending {
        limits_hold(account, 0, 0)
    } else {
        within_limits_outlined(account)
    }
}

/// `within_limits` with the account's pending balances given.
#[inline(always)]
fn limits_hold(account: &StoredAccount, debits_pending: u128, credits_pending: u128) -> bool {
    let constrained =
        AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
    if account.flags() & constrained == 0 {
        return true;
    }
    let debits = debits_pending.checked_add(account.debits_posted);
    let credits = credits_pending.checked_add(account.credits_posted);
    let debits_ok = !account.has_flag(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        || debits.is_some_and(|debits| debits <= account.credits_posted);
    let credits_ok = !account.has_flag(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        || credits.is_some_and(|credits| credits <= account.debits_posted);
    debits_ok && credits_ok
}

pub(crate) fn expires_at(transfer: &Transfer) -> Option<u64> {
    assert!(transfer.timeout > 0);
    let timeout_ns = transfer.timeout as u64 * NANOSECONDS_PER_SECOND;
    transfer.timestamp.checked_add(timeout_ns)
}

/// Room for transfer records, their links and their id index, allocated and touched
/// (first-touch page faults paid) wherever it is prepared: a caller that knows how many transfers
/// are coming (an audit replay) prepares it on another core while this one applies batches, then
/// hands it to `Ledger::adopt_storage`, which moves what the ledger holds by then into it. Holds
/// no records.
#[derive(Debug)]
pub struct TransferStorage {
    records: Vec<Aligned<Transfer>>,
    links: Vec<TransferLinks>,
    indexes: SequentialIdIndex,
}

impl TransferStorage {
    /// Room for `transfers` transfers.
    pub fn prepare(transfers: usize) -> TransferStorage {
        let mut records = Vec::new();
        reserve_touched(&mut records, transfers, Aligned(Transfer::default()));
        let mut links = Vec::new();
        let blank = TransferLinks {
            debit_previous: NONE,
            credit_previous: NONE,
        };
        reserve_touched(&mut links, transfers, blank);
        // A new table's slots are written (all empty) as it is made: touched here.
        let indexes = SequentialIdIndex::with_capacity(transfers);
        TransferStorage {
            records,
            links,
            indexes,
        }
    }

    /// Room for the id index of `transfers` transfers alone, for a ledger that has room for
    /// their records and links already (`Ledger::reserve_transfers_untouched`). The index's
    /// memory is handed to `advise` (address, bytes) before it is first written: the one table
    /// read and written at random, where a caller may ask for huge pages (fewer TLB misses).
    /// The engine makes no system call itself.
    pub fn prepare_index_advised(
        transfers: usize,
        advise: impl FnOnce(*const u8, usize),
    ) -> TransferStorage {
        TransferStorage {
            records: Vec::new(),
            links: Vec::new(),
            indexes: SequentialIdIndex::with_capacity_advised(transfers, advise),
        }
    }
}

/// Memory a ledger has reserved and not yet written: `bytes` bytes from `address`
/// (`Ledger::reserve_transfers_untouched`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UntouchedMemory {
    pub address: usize,
    pub bytes: usize,
}

/// The spare capacity of `records` (reserved for `additional` more first, without writing it).
fn reserve_untouched<T>(records: &mut Vec<T>, additional: usize) -> UntouchedMemory {
    records.reserve_exact(additional);
    let size = core::mem::size_of::<T>();
    UntouchedMemory {
        address: records.as_ptr().wrapping_add(records.len()) as usize,
        bytes: (records.capacity() - records.len()) * size,
    }
}

/// Makes room for `additional` more records and touches it, unless the room is already there.
fn reserve_touched<T: Copy>(records: &mut Vec<T>, additional: usize, blank: T) {
    let len = records.len();
    if records.capacity() - len >= additional {
        return;
    }
    records.reserve_exact(additional);
    records.resize(len + additional, blank);
    records.truncate(len);
}

impl Ledger {
    /// A ledger with the default capacities (`limits::ACCOUNTS_MAX`, `limits::TRANSFERS_MAX`,
    /// `limits::HISTORY_ROWS_MAX`). Memory grows with use; nothing is reserved up front.
    pub fn new() -> Ledger {
        Ledger::empty(ACCOUNTS_MAX, TRANSFERS_MAX, HISTORY_ROWS_MAX)
    }

    /// A ledger holding at most `accounts_max` accounts and `transfers_max` transfer ids (stored
    /// transfers plus burned ids), with memory for both reserved up front, the way a production
    /// node sizes itself at start-up.
    pub fn with_capacity(accounts_max: usize, transfers_max: usize) -> Ledger {
        assert!(accounts_max < NONE as usize);
        assert!(transfers_max < NONE as usize);
        let mut ledger = Ledger::empty(accounts_max, transfers_max, HISTORY_ROWS_MAX);
        // Every table sized for its maximum and touched now, at start-up, so that the operating
        // system's first-touch page faults are not paid on the hot path (static allocation, as a
        // node would do). Touching only the records once left the links and statuses to fault a
        // page in as they grew: with transparent huge pages, 2 MiB zeroed on the business-logic
        // thread every 262,144 transfers, about 5% of its time under load.
        ledger.reserve(accounts_max, transfers_max);
        ledger
    }

    /// A ledger with the capacities of `with_capacity` whose memory grows on demand, as with
    /// `new()`: nothing is reserved or touched up front. For a process that does not know how much
    /// of the capacity it will use (an audit replay); `reserve` pre-sizes it once it knows more.
    pub fn with_capacity_on_demand(accounts_max: usize, transfers_max: usize) -> Ledger {
        Ledger::empty(accounts_max, transfers_max, HISTORY_ROWS_MAX)
    }

    /// Makes room for `accounts` more accounts and `transfers` more transfers (each clamped to the
    /// capacity left), so that tables do not grow (copy, rehash) one doubling at a time, and
    /// touches the record memory now, as `with_capacity` does, so that the operating system's
    /// first-touch page faults are paid here, not while applying batches.
    ///
    /// Room already there (from `with_capacity`, an earlier `reserve`, or `adopt_storage`) is
    /// taken as touched and left alone.
    pub fn reserve(&mut self, accounts: usize, transfers: usize) {
        let accounts = accounts.min(self.accounts_max - self.accounts.len());
        let transfers = transfers.min(self.transfers_max.saturating_sub(self.transfers.len()));
        reserve_touched(
            &mut self.accounts,
            accounts,
            Aligned(StoredAccount::default()),
        );
        let heads = AccountLinks { history_head: NONE };
        reserve_touched(&mut self.account_links, accounts, heads);
        self.account_indexes.reserve(accounts);
        reserve_touched(&mut self.transfers, transfers, Aligned(Transfer::default()));
        let links = TransferLinks {
            debit_previous: NONE,
            credit_previous: NONE,
        };
        reserve_touched(&mut self.transfer_links, transfers, links);
        self.transfer_indexes.reserve(transfers);
        self.pending_statuses.reserve_touched(transfers);
    }

    /// Makes room for `transfers` more transfer records and their links (clamped to the capacity
    /// left) without writing it, and returns where that room is: records first, then links, each
    /// written from its start as transfers are appended. A caller that knows how many transfers
    /// are coming (an audit replay) may have the operating system fault those pages in from
    /// another thread, ahead of the writes, so that this thread pays neither the page faults nor,
    /// as with `TransferStorage`, copying what it applied meanwhile. The ledger behaves the same
    /// whether or not that happens. The ranges stay valid while the ledger holds no more
    /// transfers than this room (nothing reallocates them before).
    pub fn reserve_transfers_untouched(&mut self, transfers: usize) -> [UntouchedMemory; 2] {
        let transfers = transfers.min(self.transfers_max.saturating_sub(self.transfers.len()));
        self.pending_statuses.reserve_touched(transfers);
        [
            reserve_untouched(&mut self.transfers, transfers),
            reserve_untouched(&mut self.transfer_links, transfers),
        ]
    }

    /// Takes `storage` (prepared, possibly on another thread, by `TransferStorage::prepare`) as
    /// the memory of the transfer records, their links and their id index, so that a `reserve`
    /// for as many transfers after it touches nothing. The transfers the ledger holds already are
    /// moved into it (copied, and their ids indexed again): a caller may apply batches while the
    /// storage is prepared. Each part of `storage` that is no larger than what the ledger already
    /// has is dropped.
    pub fn adopt_storage(&mut self, storage: TransferStorage) {
        let TransferStorage {
            mut records,
            mut links,
            indexes,
        } = storage;
        assert!(records.is_empty() && links.is_empty() && indexes.is_empty());
        assert_eq!(self.transfers.len(), self.transfer_links.len());
        if records.capacity() > self.transfers.capacity() {
            records.extend_from_slice(&self.transfers);
            self.transfers = records;
        }
        if links.capacity() > self.transfer_links.capacity() {
            links.extend_from_slice(&self.transfer_links);
            self.transfer_links = links;
        }
        self.transfer_indexes.move_into(indexes);
    }

    /// Like `with_capacity`, with the history capacity chosen too (rows of balance history for
    /// accounts with the `history` flag; not reserved up front).
    pub fn with_limits(
        accounts_max: usize,
        transfers_max: usize,
        history_rows_max: usize,
    ) -> Ledger {
        let mut ledger = Ledger::with_capacity(accounts_max, transfers_max);
        assert!(history_rows_max < NONE as usize);
        ledger.history_rows_max = history_rows_max;
        ledger
    }

    pub(crate) fn empty(
        accounts_max: usize,
        transfers_max: usize,
        history_rows_max: usize,
    ) -> Ledger {
        assert!(accounts_max < NONE as usize);
        assert!(transfers_max < NONE as usize);
        assert!(history_rows_max < NONE as usize);
        Ledger {
            accounts_max,
            transfers_max,
            history_rows_max,
            accounts: Vec::new(),
            account_links: Vec::new(),
            account_indexes: IdIndex::new(),
            transfers: Vec::new(),
            transfer_links: Vec::new(),
            transfer_indexes: SequentialIdIndex::new(),
            pending_statuses: PendingStatuses::default(),
            expiries: BTreeMap::new(),
            failed_ids: IdSet::default(),
            history: Vec::new(),
            last_timestamp: 0,
            batches_applied: 0,
            hash_chain: 0,
            digest: 0,
            undo: Vec::new(),
            undo_recording: false,
            #[cfg(test)]
            plain_path_disabled: false,
            #[cfg(test)]
            plain_path_counts: [0; 3],
        }
    }

    /// The index of the account with `id`.
    pub(crate) fn account_index_of(&self, id: u128) -> Option<u32> {
        self.account_indexes
            .get(id, |index| self.accounts[index as usize].id)
    }

    /// The index of the transfer with `id`.
    pub(crate) fn transfer_index_of(&self, id: u128) -> Option<u32> {
        self.transfer_indexes
            .get(id, |index| self.transfers[index as usize].id)
    }

    pub fn accounts_max(&self) -> usize {
        self.accounts_max
    }

    pub fn history_rows_max(&self) -> usize {
        self.history_rows_max
    }

    pub fn transfers_max(&self) -> usize {
        self.transfers_max
    }

    /// The timestamp of the last event applied (0 before any).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// Batches applied, refused ones included.
    pub fn batches_applied(&self) -> u64 {
        self.batches_applied
    }

    /// The running hash over every batch applied, refused ones included: each batch hashes the
    /// previous value with its operation, status, timestamp, events and results (format 2,
    /// docs/design.md §2 "Digest and hash chain").
    pub fn hash_chain(&self) -> u128 {
        self.hash_chain
    }

    pub fn accounts_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn transfers_count(&self) -> usize {
        self.transfers.len()
    }

    /// Ids burned by transient failures.
    pub fn failed_ids_count(&self) -> usize {
        self.failed_ids.len()
    }

    /// The single deterministic entry point for the replicated log and for replay: `events` are
    /// raw little-endian 128-byte records of the kind `operation` names.
    ///
    /// Panics if `timestamp <= last_timestamp()`: the leader guarantees increasing timestamps,
    /// and a log that breaks that is not one this engine may apply.
    pub fn apply(
        &mut self,
        operation: Operation,
        timestamp: u64,
        events: &[u8],
    ) -> Result<Vec<EventResult>, BatchError> {
        self.apply_prepared(operation, timestamp, events, &Prepared::default())
    }

    /// What `apply_prepared` can take ahead of the batch: for a well-formed transfer batch its
    /// events' hashes, else nothing (`apply_prepared` then works as `apply`). Pure: any thread.
    pub fn prepare(operation: Operation, events: &[u8]) -> Prepared {
        let well_formed = operation == Operation::CreateTransfers
            && events.len() % EVENT_SIZE == 0
            && (1..=BATCH_EVENTS_MAX).contains(&(events.len() / EVENT_SIZE));
        if !well_formed {
            return Prepared::default();
        }
        let hashes = decode_records::<Transfer>(events)
            .iter()
            .map(EventHashes::of)
            .collect();
        Prepared { hashes }
    }

    /// `apply`, with the hashes `prepare` computed from the same `events` ahead (empty: none).
    pub fn apply_prepared(
        &mut self,
        operation: Operation,
        timestamp: u64,
        events: &[u8],
        prepared: &Prepared,
    ) -> Result<Vec<EventResult>, BatchError> {
        assert!(
            timestamp > self.last_timestamp,
            "batch timestamp {timestamp} not after {}",
            self.last_timestamp
        );
        if let Err(error) = Self::check_batch(timestamp, events.len()) {
            self.advance_hash_chain_refused(operation, error.code(), timestamp, events);
            return Err(error);
        }
        let results = match operation {
            Operation::CreateAccounts => {
                self.create_accounts(timestamp, &decode_records::<Account>(events))
            }
            Operation::CreateTransfers => {
                let events = decode_records::<Transfer>(events);
                let hashes = (!prepared.hashes.is_empty()).then(|| {
                    assert_eq!(
                        prepared.hashes.len(),
                        events.len(),
                        "prepared for another batch"
                    );
                    prepared.hashes.as_slice()
                });
                self.create_transfers_hashed(timestamp, &events, hashes)
            }
        };
        Ok(results)
    }

    fn check_batch(timestamp: u64, size: usize) -> Result<(), BatchError> {
        if size % EVENT_SIZE != 0 {
            return Err(BatchError::SizeNotMultipleOfEventSize { size });
        }
        let count = size / EVENT_SIZE;
        if count == 0 {
            return Err(BatchError::Empty);
        }
        if count > BATCH_EVENTS_MAX {
            return Err(BatchError::TooManyEvents { count });
        }
        if timestamp.checked_add(count as u64 - 1).is_none() {
            return Err(BatchError::TimestampOverflow { timestamp, count });
        }
        Ok(())
    }

    /// Preconditions shared by both operations, then expiry of pending transfers due by
    /// `timestamp`.
    fn begin_batch(&mut self, timestamp: u64, count: usize) {
        assert!(
            timestamp > self.last_timestamp,
            "batch timestamp {timestamp} not after {}",
            self.last_timestamp
        );
        assert!(
            Self::check_batch(timestamp, count * EVENT_SIZE).is_ok(),
            "batch of {count} events at {timestamp} must be checked by the caller"
        );
        assert!(self.undo.is_empty() && !self.undo_recording);
        self.expire_pending_transfers(timestamp);
    }

    /// `events_hash` is the sum of `event_hash` over the batch's events.
    fn end_batch(
        &mut self,
        operation: Operation,
        timestamp: u64,
        events_hash: u128,
        results: &[EventResult],
    ) {
        // The batch's streaming stores (new transfer records) ordered before whatever follows.
        fence();
        self.last_timestamp = timestamp + (results.len() as u64 - 1);
        // Format 2 (docs/design.md §2): 2 + 8 + 4 + 16 + 16 bytes after the previous chain.
        let mut bytes = [0u8; 16 + 2 + 8 + 4 + 16 + 16];
        bytes[..16].copy_from_slice(&self.hash_chain.to_le_bytes());
        bytes[16..18].copy_from_slice(&[operation as u8, 0]);
        bytes[18..26].copy_from_slice(&timestamp.to_le_bytes());
        bytes[26..30].copy_from_slice(&(results.len() as u32).to_le_bytes());
        bytes[30..46].copy_from_slice(&events_hash.to_le_bytes());
        bytes[46..62].copy_from_slice(&xxh3_128(results.as_bytes()).to_le_bytes());
        self.hash_chain = xxh3_128(&bytes);
        self.batches_applied += 1;
    }

    /// The term event `index` of a batch adds to its `events_hash`; `lanes` are the event's.
    #[inline(always)]
    fn event_hash(lanes: Lanes, index: usize) -> u128 {
        lanes.finish(SEED_EVENT + index as u64)
    }

    /// A refused batch's bytes need not be whole events: they are hashed as they are.
    fn advance_hash_chain_refused(
        &mut self,
        operation: Operation,
        status: u8,
        timestamp: u64,
        events: &[u8],
    ) {
        assert!(status != 0);
        let mut hasher = Xxh3::new();
        hasher.update(&self.hash_chain.to_le_bytes());
        hasher.update(&[operation as u8, status]);
        hasher.update(&timestamp.to_le_bytes());
        hasher.update(events);
        self.hash_chain = hasher.digest128();
        self.batches_applied += 1;
    }

    /// Releases every pending transfer whose expiry is at or before `timestamp`, oldest expiry
    /// first. Expiry changes pending balances only and records no history row (it is not a
    /// transfer and has no timestamp of its own).
    fn expire_pending_transfers(&mut self, timestamp: u64) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > timestamp {
                break;
            }
            let pending_index = entry.remove();
            let pending = self.transfers[pending_index as usize];
            let status = self
                .pending_statuses
                .insert(pending_index, PendingStatus::Expired);
            assert_eq!(status, Some(PendingStatus::Pending));
            let debit_index = self
                .account_index_of(pending.debit_account_id)
                .expect("account") as usize;
            let credit_index = self
                .account_index_of(pending.credit_account_id)
                .expect("account") as usize;
            let debit = &mut self.accounts[debit_index];
            let debits_pending = debit.debits_pending().checked_sub(pending.amount);
            debit.set_debits_pending(debits_pending.expect("pending"));
            let credit = &mut self.accounts[credit_index];
            let credits_pending = credit.credits_pending().checked_sub(pending.amount);
            credit.set_credits_pending(credits_pending.expect("pending"));
            let pending_hash = hash_id(pending.id);
            self.digest = self
                .digest
                .wrapping_add(status_term(pending_hash, PendingStatus::Expired as u8))
                .wrapping_sub(status_term(pending_hash, PendingStatus::Pending as u8))
                .wrapping_sub(balance_term(
                    hash_id(pending.debit_account_id),
                    FIELD_DEBITS_PENDING,
                    pending.amount,
                ))
                .wrapping_sub(balance_term(
                    hash_id(pending.credit_account_id),
                    FIELD_CREDITS_PENDING,
                    pending.amount,
                ));
        }
    }

    // ---------------------------------------------------------------------------------------
    // Linked chains.

    fn chain_begin(&mut self, event_index: usize) -> ChainMarks {
        assert!(self.undo.is_empty() && !self.undo_recording);
        self.undo_recording = true;
        ChainMarks {
            event_index,
            digest: self.digest,
            accounts_count: self.accounts.len(),
            transfers_count: self.transfers.len(),
            history_count: self.history.len(),
        }
    }

    fn chain_commit(&mut self) {
        assert!(self.undo_recording);
        self.undo.clear();
        self.undo_recording = false;
    }

    /// Undoes everything the chain did since `marks`, newest first.
    fn chain_rollback(&mut self, marks: &ChainMarks) {
        assert!(self.undo_recording);
        // The undo log first, newest first, while every record it names still exists: a
        // pending transfer created and then posted or voided inside the chain must be
        // pending again before it is removed.
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Balances {
                    account_index,
                    balances,
                } => {
                    self.accounts[account_index as usize].set_balances(balances);
                }
                Undo::PendingResolved { pending_index } => {
                    let status = self
                        .pending_statuses
                        .insert(pending_index, PendingStatus::Pending);
                    assert!(matches!(
                        status,
                        Some(PendingStatus::Posted | PendingStatus::Voided)
                    ));
                    let pending = &self.transfers[pending_index as usize];
                    if pending.timeout > 0 {
                        let expires_at = expires_at(pending).expect("checked on create");
                        let key = (expires_at, pending.timestamp);
                        assert!(self.expiries.insert(key, pending_index).is_none());
                    }
                }
            }
        }
        while self.history.len() > marks.history_count {
            let row = self.history.pop().expect("history row");
            self.account_links[row.account_index as usize].history_head = row.previous;
        }
        while self.transfers.len() > marks.transfers_count {
            self.pop_transfer();
        }
        while self.accounts.len() > marks.accounts_count {
            let account_index = self.accounts.len() - 1;
            let id = self.accounts[account_index].id;
            let accounts = &self.accounts;
            let removed = self
                .account_indexes
                .remove(id, |index| accounts[index as usize].id);
            assert_eq!(removed, Some(account_index as u32));
            self.accounts.pop();
            self.account_links.pop();
        }
        self.digest = marks.digest;
        self.undo_recording = false;
    }

    /// Removes the newest transfer and everything indexing it.
    fn pop_transfer(&mut self) {
        let transfer_index = self.transfers.len() as u32 - 1;
        let transfers = &self.transfers;
        let removed = self
            .transfer_indexes
            .remove(transfers[transfer_index as usize].id, |index| {
                transfers[index as usize].id
            });
        assert_eq!(removed, Some(transfer_index));
        let transfer = self.transfers.pop().expect("transfer");
        let links = self.transfer_links.pop().expect("transfer links");
        let debit_index = self
            .account_index_of(transfer.debit_account_id)
            .expect("account") as usize;
        let credit_index = self
            .account_index_of(transfer.credit_account_id)
            .expect("account") as usize;
        assert_eq!(transfers_head(&self.accounts[debit_index]), transfer_index);
        assert_eq!(transfers_head(&self.accounts[credit_index]), transfer_index);
        set_transfers_head(&mut self.accounts[debit_index], links.debit_previous);
        set_transfers_head(&mut self.accounts[credit_index], links.credit_previous);
        if transfer.has_flag(TransferFlags::PENDING) {
            let status = self.pending_statuses.remove(transfer_index);
            assert_eq!(status, Some(PendingStatus::Pending));
            if transfer.timeout > 0 {
                let expires_at = expires_at(&transfer).expect("checked on create");
                let removed = self.expiries.remove(&(expires_at, transfer.timestamp));
                assert_eq!(removed, Some(transfer_index));
            }
        }
        self.pending_statuses.pop_transfer();
    }

    #[inline(always)]
    fn record_balances(&mut self, account_index: usize) {
        if self.undo_recording {
            let balances = self.accounts[account_index].balances();
            self.undo.push(Undo::Balances {
                account_index: account_index as u32,
                balances,
            });
        }
    }

    // ---------------------------------------------------------------------------------------
    // create_accounts.

    /// Creates accounts; `timestamp` is the first event's, event `i` gets `timestamp + i`.
    ///
    /// Panics if `events` is empty or longer than `BATCH_EVENTS_MAX`, or if the timestamps are
    /// not after `last_timestamp()` (`apply` refuses such batches without panicking, except the
    /// last, which only a broken leader produces).
    pub fn create_accounts(&mut self, timestamp: u64, events: &[Account]) -> Vec<EventResult> {
        self.begin_batch(timestamp, events.len());
        let mut results: Vec<EventResult> = Vec::with_capacity(events.len());
        let mut chain: Option<ChainMarks> = None;
        let mut chain_broken = false;
        let mut events_hash: u128 = 0;
        for (index, event) in events.iter().enumerate() {
            let lanes = Lanes::of(record_bytes(event));
            events_hash = events_hash.wrapping_add(Self::event_hash(lanes, index));
            let linked = event.has_flag(AccountFlags::LINKED);
            if linked && chain.is_none() {
                chain = Some(self.chain_begin(index));
            }
            let outcome = if chain_broken {
                Outcome::failed(CreateAccountResult::LinkedEventFailed)
            } else if linked && index == events.len() - 1 {
                Outcome::failed(CreateAccountResult::LinkedEventChainOpen)
            } else {
                self.create_account(event, timestamp + index as u64)
            };
            results.push(EventResult {
                index: index as u32,
                status: outcome.result.code(),
                timestamp: outcome.timestamp,
            });
            // `exists` changes nothing and breaks no chain: a retried chain answers `exists`
            // for every member instead of failing the members after the first.
            let failed = !matches!(
                outcome.result,
                CreateAccountResult::Ok | CreateAccountResult::Exists
            );
            if failed && !chain_broken {
                if let Some(marks) = &chain {
                    chain_broken = true;
                    self.chain_rollback(marks);
                    Self::fail_chain_results(
                        &mut results,
                        marks,
                        CreateAccountResult::LinkedEventFailed.code(),
                        CreateAccountResult::Exists.code(),
                    );
                }
            }
            if !linked {
                if let Some(_marks) = chain.take() {
                    if !chain_broken {
                        self.chain_commit();
                    }
                    chain_broken = false;
                }
            }
        }
        // A chain still open here ended in `linked_event_chain_open` and was rolled back.
        assert!(chain.is_none() || chain_broken);
        assert!(!self.undo_recording);
        self.end_batch(Operation::CreateAccounts, timestamp, events_hash, &results);
        results
    }

    /// Marks every earlier result of a rolled-back chain as failed.
    /// Members that answered `exists` keep that answer: they are stored, and
    /// were before this chain.
    fn fail_chain_results(
        results: &mut [EventResult],
        marks: &ChainMarks,
        status: u32,
        exists: u32,
    ) {
        let last = results.len() - 1;
        for result in &mut results[marks.event_index..last] {
            if result.status != exists {
                result.status = status;
                result.timestamp = 0;
            }
        }
    }

    fn create_account(&mut self, event: &Account, timestamp: u64) -> Outcome<CreateAccountResult> {
        use CreateAccountResult as R;
        if let Err(result) = Self::validate_account(event) {
            return Outcome::failed(result);
        }
        if let Some(index) = self.account_index_of(event.id) {
            let existing = &self.accounts[index as usize];
            return Outcome {
                result: Self::account_exists(event, existing),
                timestamp: existing.timestamp,
            };
        }
        if self.accounts.len() >= self.accounts_max {
            return Outcome::failed(R::AccountsCapacityExceeded);
        }
        let account_index = self.accounts.len() as u32;
        let account = Account {
            timestamp,
            ..*event
        };
        self.accounts.push(Aligned(StoredAccount::new(&account)));
        assert_eq!(transfers_head(&self.accounts[account_index as usize]), NONE);
        self.account_links.push(AccountLinks { history_head: NONE });
        let accounts = &self.accounts;
        self.account_indexes
            .insert(event.id, account_index, |index| accounts[index as usize].id);
        self.digest = self.digest.wrapping_add(account_term(&account));
        Outcome {
            result: R::Ok,
            timestamp,
        }
    }

    /// Checks that depend on the event alone.
    fn validate_account(event: &Account) -> Result<(), CreateAccountResult> {
        use CreateAccountResult as R;
        let checks = [
            (event.timestamp != 0, R::TimestampMustBeZero),
            (event.reserved != 0, R::ReservedField),
            (event.flags & !AccountFlags::ALL != 0, R::ReservedFlag),
            (event.id == 0, R::IdMustNotBeZero),
            (event.id == u128::MAX, R::IdMustNotBeIntMax),
            (
                event.has_flag(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
                    && event.has_flag(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
                R::FlagsAreMutuallyExclusive,
            ),
            (event.debits_pending != 0, R::DebitsPendingMustBeZero),
            (event.debits_posted != 0, R::DebitsPostedMustBeZero),
            (event.credits_pending != 0, R::CreditsPendingMustBeZero),
            (event.credits_posted != 0, R::CreditsPostedMustBeZero),
            (event.ledger == 0, R::LedgerMustNotBeZero),
            (event.code == 0, R::CodeMustNotBeZero),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, result)) => Err(*result),
            None => Ok(()),
        }
    }

    fn account_exists(event: &Account, existing: &StoredAccount) -> CreateAccountResult {
        use CreateAccountResult as R;
        let checks = [
            (event.flags != existing.flags(), R::ExistsWithDifferentFlags),
            (
                event.user_data_128 != existing.user_data_128,
                R::ExistsWithDifferentUserData128,
            ),
            (
                event.user_data_64 != existing.user_data_64,
                R::ExistsWithDifferentUserData64,
            ),
            (
                event.user_data_32 != existing.user_data_32,
                R::ExistsWithDifferentUserData32,
            ),
            (
                event.ledger != existing.ledger,
                R::ExistsWithDifferentLedger,
            ),
            (event.code != existing.code, R::ExistsWithDifferentCode),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, result)) => *result,
            None => R::Exists,
        }
    }

    // ---------------------------------------------------------------------------------------
    // create_transfers.

    /// Creates transfers; `timestamp` is the first event's, event `i` gets `timestamp + i`.
    /// Pending transfers that expire at or before `timestamp` are expired first.
    ///
    /// Panics under the same conditions as `create_accounts`.
    pub fn create_transfers(&mut self, timestamp: u64, events: &[Transfer]) -> Vec<EventResult> {
        self.create_transfers_hashed(timestamp, events, None)
    }

    /// `create_transfers`, with each event's hashes prepared ahead (`prepared[i]` is
    /// `EventHashes::of(&events[i])`) or computed here.
    fn create_transfers_hashed(
        &mut self,
        timestamp: u64,
        events: &[Transfer],
        prepared: Option<&[EventHashes]>,
    ) -> Vec<EventResult> {
        assert!(prepared.is_none_or(|prepared| prepared.len() == events.len()));
        self.begin_batch(timestamp, events.len());
        // Room for every event's id, so that a probe's vacant slot stays valid until the insert.
        self.transfer_indexes.reserve(events.len());
        // One window's hints, on the stack: filled in place, never grown.
        let mut hints = [Hint::EMPTY; LOOKAHEAD_EVENTS];
        // The next window's id fingerprints, computed as the main loop prefetches their slots.
        let mut id_fingerprints = [0u32; LOOKAHEAD_EVENTS];
        let stable_transfers_count = self.transfers.len();
        let mut results: Vec<EventResult> = Vec::with_capacity(events.len());
        let mut chain: Option<ChainMarks> = None;
        let mut chain_broken = false;
        let mut events_hash: u128 = 0;
        for (index, event) in events.iter().enumerate() {
            if index % LOOKAHEAD_EVENTS == 0 {
                let ahead = index..events.len().min(index + LOOKAHEAD_EVENTS);
                let prepared = prepared.map(|prepared| &prepared[ahead.clone()]);
                // The first window's ids were not prefetched (nor fingerprinted) by an earlier one.
                let prefetched_ids = (index > 0).then_some(&id_fingerprints);
                self.resolve_hints(
                    &events[ahead],
                    prepared,
                    stable_transfers_count,
                    prefetched_ids,
                    &mut hints,
                );
            }
            // Later windows' misses, spread over this one's work instead of issued in one burst
            // (which stalls once the core's miss buffers are full): the events' bytes two windows
            // ahead, and the home slots of the next window's ids (a table too large for the
            // cache: the longest miss of a transfer). Without prepared hashes, an id is read to
            // hash it: its bytes were prefetched a window ago, where reading them now would wait
            // for memory (batches are larger than the hardware prefetcher's reach) and hold up
            // every instruction after it.
            if index == 0 {
                for ahead in events.iter().skip(LOOKAHEAD_EVENTS).take(LOOKAHEAD_EVENTS) {
                    let bytes = record_bytes(ahead);
                    prefetch(&bytes[0]);
                    prefetch(&bytes[64]);
                }
            }
            if let Some(far) = events.get(index + 2 * LOOKAHEAD_EVENTS) {
                let bytes = record_bytes(far);
                prefetch(&bytes[0]);
                prefetch(&bytes[64]);
            }
            if let Some(ahead) = events.get(index + LOOKAHEAD_EVENTS) {
                let fingerprint = match prepared {
                    Some(prepared) => prepared[index + LOOKAHEAD_EVENTS].id_fingerprint,
                    None => SequentialIdIndex::fingerprint(ahead.id),
                };
                self.transfer_indexes.prefetch_home(fingerprint);
                id_fingerprints[index % LOOKAHEAD_EVENTS] = fingerprint;
            }
            let hint = &hints[index % LOOKAHEAD_EVENTS];
            let lanes = hint.lanes;
            events_hash = events_hash.wrapping_add(Self::event_hash(lanes, index));
            let linked = event.has_flag(TransferFlags::LINKED);
            if linked && chain.is_none() {
                chain = Some(self.chain_begin(index));
            }
            let outcome = if chain_broken {
                Outcome::failed(CreateTransferResult::LinkedEventFailed)
            } else if linked && index == events.len() - 1 {
                Outcome::failed(CreateTransferResult::LinkedEventChainOpen)
            } else {
                self.create_transfer(event, timestamp + index as u64, hint, lanes)
            };
            results.push(EventResult {
                index: index as u32,
                status: outcome.result.code(),
                timestamp: outcome.timestamp,
            });
            // As for accounts: `exists` changes nothing and breaks no chain.
            if !matches!(
                outcome.result,
                CreateTransferResult::Ok | CreateTransferResult::Exists
            ) {
                if !chain_broken {
                    if let Some(marks) = &chain {
                        chain_broken = true;
                        self.chain_rollback(marks);
                        let failed = CreateTransferResult::LinkedEventFailed.code();
                        let exists = CreateTransferResult::Exists.code();
                        Self::fail_chain_results(&mut results, marks, failed, exists);
                    }
                }
                // After any rollback: the burned id outlives the chain that failed.
                if outcome.result.is_transient() && self.failed_ids.insert(event.id) {
                    self.digest = self.digest.wrapping_add(failed_id_term(event.id));
                }
            }
            if !linked {
                if let Some(_marks) = chain.take() {
                    if !chain_broken {
                        self.chain_commit();
                    }
                    chain_broken = false;
                }
            }
        }
        // A chain still open here ended in `linked_event_chain_open` and was rolled back.
        assert!(chain.is_none() || chain_broken);
        assert!(!self.undo_recording);
        self.end_batch(Operation::CreateTransfers, timestamp, events_hash, &results);
        results
    }

    /// Fills `hints` for `events`. Only transfers below `stable_transfers_count` (those that
    /// existed before the batch, which the batch never removes) are trusted as found.
    ///
    /// The misses are issued as prefetches (which retire at once, unlike loads that miss) from
    /// loops that do nothing else, dozens in flight at once, one stage ahead of their use:
    /// (1) hash every id (no memory touched); (2) prefetch the home slot of every account id or
    /// pending id, and of every transfer id unless `prefetched_ids` (the fingerprints of the ids
    /// whose slots the main loop prefetched a window ahead, with the events' bytes, spread over
    /// its work); (3) for
    /// posts and voids, the pending transfers, and their accounts' fingerprints and home slots;
    /// (4) follow each account's probe to its candidate record and prefetch both its cache lines
    /// and its list heads; (5) the real lookups, which now hit cache.
    fn resolve_hints(
        &self,
        events: &[Transfer],
        prepared: Option<&[EventHashes]>,
        stable_transfers_count: usize,
        prefetched_ids: Option<&[u32; LOOKAHEAD_EVENTS]>,
        hints: &mut [Hint; LOOKAHEAD_EVENTS],
    ) {
        assert!(events.len() <= LOOKAHEAD_EVENTS);
        let resolving = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
        // Fingerprints of the debit and credit account ids, or of the pending id in [0].
        let mut fingerprints = [[0u32; 2]; LOOKAHEAD_EVENTS];
        let mut resolving_count = 0;
        for (index, ((event, fingerprints), hint)) in events
            .iter()
            .zip(&mut fingerprints)
            .zip(hints.iter_mut())
            .enumerate()
        {
            let hashes = match (prepared, prefetched_ids) {
                (Some(prepared), _) => prepared[index],
                (None, Some(ids)) => EventHashes::with_id_fingerprint(event, ids[index]),
                (None, None) => EventHashes::of(event),
            };
            if event.flags & resolving != 0 {
                resolving_count += 1;
                *fingerprints = [hashes.pending_fingerprint, 0];
            } else {
                *fingerprints = [
                    (hashes.debit_hash >> 32) as u32,
                    (hashes.credit_hash >> 32) as u32,
                ];
            }
            *hint = Hint {
                lanes: hashes.lanes,
                id_fingerprint: hashes.id_fingerprint,
                debit_hash: hashes.debit_hash,
                credit_hash: hashes.credit_hash,
                debit: NONE,
                credit: NONE,
                pending: NONE,
            };
        }
        let (transfer_indexes, account_indexes) = (&self.transfer_indexes, &self.account_indexes);
        for ((event, hint), fingerprints) in events.iter().zip(hints.iter()).zip(&fingerprints) {
            if prefetched_ids.is_none() {
                transfer_indexes.prefetch_home(hint.id_fingerprint);
            }
            if event.flags & resolving != 0 {
                transfer_indexes.prefetch_home(fingerprints[0]);
            } else {
                account_indexes.prefetch_home(fingerprints[0]);
                account_indexes.prefetch_home(fingerprints[1]);
            }
        }
        if resolving_count > 0 {
            self.resolve_pending_hints(events, stable_transfers_count, hints, &mut fingerprints);
        }
        // The account records the slots name: the first cache line, which is all a posted
        // transfer between accounts with nothing pending reads, and the second too for events
        // that will read or record the pending balances.
        let mut candidates = [[NONE; 2]; LOOKAHEAD_EVENTS];
        let second_line = TransferFlags::PENDING
            | resolving
            | TransferFlags::BALANCING_DEBIT
            | TransferFlags::BALANCING_CREDIT
            | TransferFlags::LINKED;
        for ((event, fingerprints), candidates) in events
            .iter()
            .zip(&fingerprints[..events.len()])
            .zip(&mut candidates)
        {
            for (fingerprint, candidate) in fingerprints.iter().zip(candidates) {
                *candidate = self.account_indexes.candidate(*fingerprint);
                if let Some(account) = self.accounts.get(*candidate as usize) {
                    let bytes = record_bytes(&account.0);
                    prefetch(&bytes[0]);
                    if event.flags & second_line != 0 {
                        prefetch(&bytes[64]);
                    }
                }
            }
        }
        // A candidate whose record has the id is the answer (fingerprints are unique in a probe
        // only up to collisions, so anything else takes the full lookup). The asserts are real
        // invariants, cheap on records already in cache. An account whose first line says that
        // the transfer will need its second (something pending, or history) has it prefetched
        // now, a window before use.
        let index_of = |id: u128, fingerprint: u32, candidate: u32| {
            let accounts = &self.accounts;
            let (index, account) = match accounts.get(candidate as usize) {
                Some(account) if account.id == id => (candidate, account),
                _ => {
                    let found = self
                        .account_indexes
                        .get_fingerprinted(id, fingerprint, |index| accounts[index as usize].id);
                    let Some(index) = found else {
                        return NONE;
                    };
                    let account = &accounts[index as usize];
                    assert!(account.id == id);
                    (index, account)
                }
            };
            assert!(account.ledger != 0);
            if account.second_line_needed() {
                prefetch(&record_bytes(&account.0)[64]);
            }
            index
        };
        for (((event, hint), fingerprints), candidates) in events
            .iter()
            .zip(hints.iter_mut())
            .zip(&fingerprints)
            .zip(&candidates)
        {
            let (debit_id, credit_id) = if event.flags & resolving == 0 {
                (event.debit_account_id, event.credit_account_id)
            } else if let Some(pending) = self.transfers.get(hint.pending as usize) {
                (pending.debit_account_id, pending.credit_account_id)
            } else {
                continue;
            };
            hint.debit = index_of(debit_id, fingerprints[0], candidates[0]);
            hint.credit = index_of(credit_id, fingerprints[1], candidates[1]);
        }
    }

    /// Stage (3) of `resolve_hints`: for each post or void, the pending transfer if it existed
    /// before the batch, and the fingerprints of its accounts in place of the pending id's, with
    /// their home slots prefetched.
    fn resolve_pending_hints(
        &self,
        events: &[Transfer],
        stable_transfers_count: usize,
        hints: &mut [Hint],
        fingerprints: &mut [[u32; 2]; LOOKAHEAD_EVENTS],
    ) {
        let resolving = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
        let transfers = &self.transfers;
        for ((event, hint), fingerprints) in
            events.iter().zip(hints.iter_mut()).zip(&mut *fingerprints)
        {
            if event.flags & resolving == 0 {
                continue;
            }
            let found = self.transfer_indexes.get_fingerprinted(
                event.pending_id,
                fingerprints[0],
                |index| transfers[index as usize].id,
            );
            let Some(index) = found.filter(|index| (*index as usize) < stable_transfers_count)
            else {
                continue;
            };
            hint.pending = index;
        }
        for ((event, hint), fingerprints) in
            events.iter().zip(hints.iter()).zip(fingerprints.iter_mut())
        {
            if event.flags & resolving == 0 {
                continue;
            }
            if let Some(pending) = transfers.get(hint.pending as usize) {
                *fingerprints = [
                    fingerprint(pending.debit_account_id),
                    fingerprint(pending.credit_account_id),
                ];
            } else {
                *fingerprints = [0, 0];
            }
        }
        for fingerprint in fingerprints[..events.len()].iter().flatten() {
            self.account_indexes.prefetch_home(*fingerprint);
        }
    }

    fn create_transfer(
        &mut self,
        event: &Transfer,
        timestamp: u64,
        hint: &Hint,
        lanes: Lanes,
    ) -> Outcome<CreateTransferResult> {
        use CreateTransferResult as R;
        if self.create_plain_transfer(event, timestamp, hint, lanes) {
            return Outcome {
                result: R::Ok,
                timestamp,
            };
        }
        if event.timestamp != 0 {
            return Outcome::failed(R::TimestampMustBeZero);
        }
        if event.flags & !TransferFlags::ALL != 0 {
            return Outcome::failed(R::ReservedFlag);
        }
        if event.id == 0 {
            return Outcome::failed(R::IdMustNotBeZero);
        }
        if event.id == u128::MAX {
            return Outcome::failed(R::IdMustNotBeIntMax);
        }
        let transfers = &self.transfers;
        let existing =
            self.transfer_indexes
                .get_fingerprinted(event.id, hint.id_fingerprint, |index| {
                    transfers[index as usize].id
                });
        if let Some(index) = existing {
            let existing = &self.transfers[index as usize];
            return Outcome {
                result: self.transfer_exists(event, existing),
                timestamp: existing.timestamp,
            };
        }
        if !self.failed_ids.is_empty() && self.failed_ids.contains(&event.id) {
            return Outcome::failed(R::IdAlreadyFailed);
        }
        if Self::flags_are_mutually_exclusive(event.flags) {
            return Outcome::failed(R::FlagsAreMutuallyExclusive);
        }
        let resolving = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
        let result = if event.flags & resolving != 0 {
            self.post_or_void_pending_transfer(event, timestamp, hint)
        } else {
            self.create_single_phase_or_pending(event, timestamp, hint)
        };
        match result {
            Ok(()) => Outcome {
                result: R::Ok,
                timestamp,
            },
            Err(result) => Outcome::failed(result),
        }
    }

    /// The common case of `create_transfer` in fewer steps: a new plain or pending transfer
    /// between two existing open accounts that passes every check. It tests whether the event has
    /// the shape for which the general path's checks reduce to these (no post, void or balancing
    /// flag, no reserved bit, no zero or int-max id, accounts found and different...), probes the
    /// transfer id once and stores it in the empty slot the probe ended at. Returns false, having
    /// changed nothing, whenever the general path might answer anything but `ok`: the general path
    /// then decides, so result codes and their precedence are the general path's alone.
    #[inline(always)]
    fn create_plain_transfer(
        &mut self,
        event: &Transfer,
        timestamp: u64,
        hint: &Hint,
        lanes: Lanes,
    ) -> bool {
        #[cfg(test)]
        if self.plain_path_disabled {
            return false;
        }
        let pending = event.flags & TransferFlags::PENDING != 0;
        // Non-short-circuit `&`: one branch for the whole shape.
        let shape = (event.timestamp == 0)
            & (event.flags & !(TransferFlags::LINKED | TransferFlags::PENDING) == 0)
            & (event.id != 0)
            & (event.id != u128::MAX)
            & (event.debit_account_id != 0)
            & (event.debit_account_id != u128::MAX)
            & (event.credit_account_id != 0)
            & (event.credit_account_id != u128::MAX)
            & (event.pending_id == 0)
            & (pending | (event.timeout == 0))
            & (event.ledger != 0)
            & (event.code != 0)
            & (hint.debit != NONE)
            & (hint.credit != NONE)
            // Found ids are equal exactly when their records are the same.
            & (hint.debit != hint.credit);
        if !shape || self.transfer_ids_full() {
            return false;
        }
        let transfers = &self.transfers;
        let vacant = match self
            .transfer_indexes
            .probe(event.id, hint.id_fingerprint, |index| {
                transfers[index as usize].id
            }) {
            Probe::Found(_) => return false,
            Probe::Vacant(position) => position,
        };
        if !self.failed_ids.is_empty() && self.failed_ids.contains(&event.id) {
            return false;
        }
        let (debit_index, credit_index) = (hint.debit as usize, hint.credit as usize);
        let debit = &self.accounts[debit_index];
        let credit = &self.accounts[credit_index];
        if (debit.ledger != event.ledger)
            | (credit.ledger != event.ledger)
            | ((debit.flags() | credit.flags()) & AccountFlags::CLOSED != 0)
        {
            return false;
        }
        // The pending balances: a pending transfer reads them (its accounts' second cache lines
        // were prefetched with the first); a posted transfer between accounts with nothing
        // pending is checked from the first lines alone; any other posted transfer reads them
        // through a call, which keeps their loads out of the common case.
        let nothing_pending = !pending & debit.nothing_pending() & credit.nothing_pending();
        let checked = if pending {
            Self::check_amount(event, debit, credit, event.amount, timestamp)
        } else if nothing_pending {
            Self::check_amount_given(event, debit, credit, event.amount, timestamp, (0, 0))
        } else {
            Self::check_amount_outlined(event, debit, credit, event.amount, timestamp)
        };
        if checked.is_err() {
            return false;
        }
        let history_rows = self.history_rows_needed(debit, credit);
        if self.history.len() + history_rows > self.history_rows_max {
            return false;
        }

        // Every check passed: from here on nothing fails. The same effects as
        // `create_single_phase_or_pending`.
        #[cfg(test)]
        {
            let kind = if pending {
                0
            } else if nothing_pending {
                1
            } else {
                2
            };
            self.plain_path_counts[kind] += 1;
        }
        let amount = event.amount;
        self.record_balances(debit_index);
        self.record_balances(credit_index);
        let debit = &mut self.accounts[debit_index];
        if pending {
            let debits_pending = debit.debits_pending() + amount;
            debit.set_debits_pending(debits_pending);
        } else {
            debit.debits_posted += amount;
        }
        assert!(limits_hold_after(debit, pending, nothing_pending));
        let credit = &mut self.accounts[credit_index];
        if pending {
            let credits_pending = credit.credits_pending() + amount;
            credit.set_credits_pending(credits_pending);
        } else {
            credit.credits_posted += amount;
        }
        assert!(limits_hold_after(credit, pending, nothing_pending));
        // The stored record is the event with its timestamp: the event's lanes with the last
        // one replaced hash it.
        let (ledger_code_flags, event_timestamp) =
            record_hash::lane_words(record_bytes(event), LANE_TIMESTAMP);
        let stored = lanes.replaced(
            LANE_TIMESTAMP,
            (ledger_code_flags, event_timestamp),
            (ledger_code_flags, timestamp),
        );
        let (debit_field, credit_field) = if pending {
            (FIELD_DEBITS_PENDING, FIELD_CREDITS_PENDING)
        } else {
            (FIELD_DEBITS_POSTED, FIELD_CREDITS_POSTED)
        };
        self.digest = self
            .digest
            .wrapping_add(balance_term(hint.debit_hash, debit_field, amount))
            .wrapping_add(balance_term(hint.credit_hash, credit_field, amount))
            .wrapping_add(stored.finish(record_hash::SEED_TRANSFER));
        if pending {
            let status = PendingStatus::Pending as u8;
            self.digest = self
                .digest
                .wrapping_add(status_term(hash_id(event.id), status));
        }
        let transfer_index = self.transfers.len() as u32;
        assert!(self.transfers.len() < self.transfers_max);
        // The event's bytes with its timestamp, streamed from the event itself.
        push_streaming_stamped(&mut self.transfers, event, timestamp);
        self.transfer_indexes
            .insert_vacant(vacant, hint.id_fingerprint, transfer_index);
        self.link_transfer(transfer_index, debit_index, credit_index);
        if pending {
            self.pending_statuses.push_transfer_pending();
            if event.timeout > 0 {
                let expires_at = expires_at(&Transfer {
                    timestamp,
                    ..*event
                });
                let key = (expires_at.expect("checked"), timestamp);
                assert!(self.expiries.insert(key, transfer_index).is_none());
            }
        } else {
            self.pending_statuses.push_transfer();
        }
        // Accounts without `history` (the flags were read above) record no row.
        if history_rows > 0 {
            self.push_history(debit_index, transfer_index);
            self.push_history(credit_index, transfer_index);
        }
        true
    }

    fn flags_are_mutually_exclusive(flags: u16) -> bool {
        let has = |flag: u16| flags & flag != 0;
        let post = has(TransferFlags::POST_PENDING_TRANSFER);
        let void = has(TransferFlags::VOID_PENDING_TRANSFER);
        let balancing = has(TransferFlags::BALANCING_DEBIT) || has(TransferFlags::BALANCING_CREDIT);
        (post && void)
            || (has(TransferFlags::PENDING) && (post || void))
            || (balancing && (post || void))
    }

    /// Checks of a plain or pending transfer that depend on the event alone.
    fn validate_transfer(event: &Transfer) -> Result<(), CreateTransferResult> {
        use CreateTransferResult as R;
        let pending = event.has_flag(TransferFlags::PENDING);
        let checks = [
            (event.debit_account_id == 0, R::DebitAccountIdMustNotBeZero),
            (
                event.debit_account_id == u128::MAX,
                R::DebitAccountIdMustNotBeIntMax,
            ),
            (
                event.credit_account_id == 0,
                R::CreditAccountIdMustNotBeZero,
            ),
            (
                event.credit_account_id == u128::MAX,
                R::CreditAccountIdMustNotBeIntMax,
            ),
            (
                event.debit_account_id == event.credit_account_id,
                R::AccountsMustBeDifferent,
            ),
            (event.pending_id != 0, R::PendingIdMustBeZero),
            (
                !pending && event.timeout != 0,
                R::TimeoutReservedForPendingTransfer,
            ),
            (event.ledger == 0, R::LedgerMustNotBeZero),
            (event.code == 0, R::CodeMustNotBeZero),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, result)) => Err(*result),
            None => Ok(()),
        }
    }

    fn transfer_ids_full(&self) -> bool {
        self.transfers.len() + self.failed_ids.len() >= self.transfers_max
    }

    fn history_rows_needed(&self, debit: &StoredAccount, credit: &StoredAccount) -> usize {
        debit.has_flag(AccountFlags::HISTORY) as usize
            + credit.has_flag(AccountFlags::HISTORY) as usize
    }

    fn create_single_phase_or_pending(
        &mut self,
        event: &Transfer,
        timestamp: u64,
        hint: &Hint,
    ) -> Result<(), CreateTransferResult> {
        use CreateTransferResult as R;
        Self::validate_transfer(event)?;
        if self.transfer_ids_full() {
            return Err(R::TransfersCapacityExceeded);
        }
        if hint.debit == NONE {
            return Err(R::DebitAccountNotFound);
        }
        if hint.credit == NONE {
            return Err(R::CreditAccountNotFound);
        }
        let (debit_index, credit_index) = (hint.debit as usize, hint.credit as usize);
        let debit = &self.accounts[debit_index];
        let credit = &self.accounts[credit_index];
        if debit.ledger != credit.ledger {
            return Err(R::AccountsMustHaveTheSameLedger);
        }
        if event.ledger != debit.ledger {
            return Err(R::TransferMustHaveTheSameLedgerAsAccounts);
        }
        if debit.has_flag(AccountFlags::CLOSED) {
            return Err(R::DebitAccountAlreadyClosed);
        }
        if credit.has_flag(AccountFlags::CLOSED) {
            return Err(R::CreditAccountAlreadyClosed);
        }
        let amount = Self::balanced_amount(event, debit, credit);
        let pending = event.has_flag(TransferFlags::PENDING);
        Self::check_amount(event, debit, credit, amount, timestamp)?;
        if self.history.len() + self.history_rows_needed(debit, credit) > self.history_rows_max {
            return Err(R::HistoryCapacityExceeded);
        }

        // Every check passed: from here on nothing fails.
        self.record_balances(debit_index);
        self.record_balances(credit_index);
        let debit = &mut self.accounts[debit_index];
        if pending {
            let debits_pending = debit.debits_pending() + amount;
            debit.set_debits_pending(debits_pending);
        } else {
            debit.debits_posted += amount;
        }
        assert!(within_limits(debit));
        let credit = &mut self.accounts[credit_index];
        if pending {
            let credits_pending = credit.credits_pending() + amount;
            credit.set_credits_pending(credits_pending);
        } else {
            credit.credits_posted += amount;
        }
        assert!(within_limits(credit));
        let (debit_field, credit_field) = if pending {
            (FIELD_DEBITS_PENDING, FIELD_CREDITS_PENDING)
        } else {
            (FIELD_DEBITS_POSTED, FIELD_CREDITS_POSTED)
        };
        self.digest = self
            .digest
            .wrapping_add(balance_term(
                hash_id(event.debit_account_id),
                debit_field,
                amount,
            ))
            .wrapping_add(balance_term(
                hash_id(event.credit_account_id),
                credit_field,
                amount,
            ));
        let transfer = Transfer {
            amount,
            timestamp,
            ..*event
        };
        let transfer_index = self.push_transfer(transfer, debit_index, credit_index);
        if pending {
            self.pending_statuses
                .insert(transfer_index, PendingStatus::Pending);
            self.digest = self
                .digest
                .wrapping_add(status_term(hash_id(event.id), PendingStatus::Pending as u8));
            if transfer.timeout > 0 {
                let expires_at = expires_at(&transfer).expect("checked");
                let key = (expires_at, timestamp);
                assert!(self.expiries.insert(key, transfer_index).is_none());
            }
        }
        self.push_history(debit_index, transfer_index);
        self.push_history(credit_index, transfer_index);
        Ok(())
    }

    /// A balancing transfer moves at most what is available, never driving a balance negative.
    fn balanced_amount(event: &Transfer, debit: &StoredAccount, credit: &StoredAccount) -> u128 {
        let mut amount = event.amount;
        if event.has_flag(TransferFlags::BALANCING_DEBIT) {
            let debits = debit.debits_posted.saturating_add(debit.debits_pending());
            amount = amount.min(debit.credits_posted.saturating_sub(debits));
        }
        if event.has_flag(TransferFlags::BALANCING_CREDIT) {
            let credits = credit
                .credits_posted
                .saturating_add(credit.credits_pending());
            amount = amount.min(credit.debits_posted.saturating_sub(credits));
        }
        amount
    }

    /// `check_amount` as a call (see `within_limits_outlined`).
    #[inline(never)]
    fn check_amount_outlined(
        event: &Transfer,
        debit: &StoredAccount,
        credit: &StoredAccount,
        amount: u128,
        timestamp: u64,
    ) -> Result<(), CreateTransferResult> {
        Self::check_amount(event, debit, credit, amount, timestamp)
    }

    /// Overflow and limit checks of a plain or pending transfer of `amount`. Reads the second
    /// cache line of both accounts.
    #[inline(always)]
    fn check_amount(
        event: &Transfer,
        debit: &StoredAccount,
        credit: &StoredAccount,
        amount: u128,
        timestamp: u64,
    ) -> Result<(), CreateTransferResult> {
        let pending = (debit.debits_pending(), credit.credits_pending());
        Self::check_amount_given(event, debit, credit, amount, timestamp, pending)
    }

    /// `check_amount`, with the debit account's `debits_pending` and the credit account's
    /// `credits_pending` given.
    #[inline(always)]
    fn check_amount_given(
        event: &Transfer,
        debit: &StoredAccount,
        credit: &StoredAccount,
        amount: u128,
        timestamp: u64,
        (debits_pending, credits_pending): (u128, u128),
    ) -> Result<(), CreateTransferResult> {
        use CreateTransferResult as R;
        let pending = event.has_flag(TransferFlags::PENDING);
        if pending {
            debits_pending
                .checked_add(amount)
                .ok_or(R::OverflowsDebitsPending)?;
            credits_pending
                .checked_add(amount)
                .ok_or(R::OverflowsCreditsPending)?;
        } else {
            debit
                .debits_posted
                .checked_add(amount)
                .ok_or(R::OverflowsDebitsPosted)?;
            credit
                .credits_posted
                .checked_add(amount)
                .ok_or(R::OverflowsCreditsPosted)?;
        }
        let debits = debits_pending
            .checked_add(debit.debits_posted)
            .and_then(|debits| debits.checked_add(amount))
            .ok_or(R::OverflowsDebits)?;
        let credits = credits_pending
            .checked_add(credit.credits_posted)
            .and_then(|credits| credits.checked_add(amount))
            .ok_or(R::OverflowsCredits)?;
        if pending && event.timeout > 0 {
            let timeout_ns = event.timeout as u64 * NANOSECONDS_PER_SECOND;
            timestamp
                .checked_add(timeout_ns)
                .ok_or(R::OverflowsTimeout)?;
        }
        if debit.has_flag(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && debits > debit.credits_posted
        {
            return Err(R::ExceedsCredits);
        }
        if credit.has_flag(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && credits > credit.debits_posted
        {
            return Err(R::ExceedsDebits);
        }
        Ok(())
    }

    fn post_or_void_pending_transfer(
        &mut self,
        event: &Transfer,
        timestamp: u64,
        hint: &Hint,
    ) -> Result<(), CreateTransferResult> {
        use CreateTransferResult as R;
        if event.pending_id == 0 {
            return Err(R::PendingIdMustNotBeZero);
        }
        if event.pending_id == u128::MAX {
            return Err(R::PendingIdMustNotBeIntMax);
        }
        if event.pending_id == event.id {
            return Err(R::PendingIdMustBeDifferent);
        }
        if event.timeout != 0 {
            return Err(R::TimeoutReservedForPendingTransfer);
        }
        if self.transfer_ids_full() {
            return Err(R::TransfersCapacityExceeded);
        }
        let pending_index = match hint.pending {
            NONE => self
                .transfer_index_of(event.pending_id)
                .ok_or(R::PendingTransferNotFound)?,
            index => index,
        };
        let pending = self.transfers[pending_index as usize];
        let amount = self.check_post_or_void(event, &pending, pending_index, timestamp)?;
        let (debit_index, credit_index) = if hint.pending == NONE {
            (
                self.account_index_of(pending.debit_account_id)
                    .expect("account") as usize,
                self.account_index_of(pending.credit_account_id)
                    .expect("account") as usize,
            )
        } else {
            (hint.debit as usize, hint.credit as usize)
        };
        let post = event.has_flag(TransferFlags::POST_PENDING_TRANSFER);
        let debit = &self.accounts[debit_index];
        let credit = &self.accounts[credit_index];
        if post {
            debit
                .debits_posted
                .checked_add(amount)
                .ok_or(R::OverflowsDebitsPosted)?;
            credit
                .credits_posted
                .checked_add(amount)
                .ok_or(R::OverflowsCreditsPosted)?;
        }
        if self.history.len() + self.history_rows_needed(debit, credit) > self.history_rows_max {
            return Err(R::HistoryCapacityExceeded);
        }

        // Every check passed: from here on nothing fails.
        self.record_balances(debit_index);
        self.record_balances(credit_index);
        let posted = if post { amount } else { 0 };
        let debit = &mut self.accounts[debit_index];
        let debits_pending = debit.debits_pending().checked_sub(pending.amount);
        debit.set_debits_pending(debits_pending.expect("pending"));
        debit.debits_posted += posted;
        assert!(within_limits(debit));
        let credit = &mut self.accounts[credit_index];
        let credits_pending = credit.credits_pending().checked_sub(pending.amount);
        credit.set_credits_pending(credits_pending.expect("pending"));
        credit.credits_posted += posted;
        assert!(within_limits(credit));
        let debit_hash = hash_id(pending.debit_account_id);
        let credit_hash = hash_id(pending.credit_account_id);
        self.digest = self
            .digest
            .wrapping_sub(balance_term(
                debit_hash,
                FIELD_DEBITS_PENDING,
                pending.amount,
            ))
            .wrapping_add(balance_term(debit_hash, FIELD_DEBITS_POSTED, posted))
            .wrapping_sub(balance_term(
                credit_hash,
                FIELD_CREDITS_PENDING,
                pending.amount,
            ))
            .wrapping_add(balance_term(credit_hash, FIELD_CREDITS_POSTED, posted));
        self.resolve_pending(pending_index, post);
        let inherit = |mine: u128, theirs: u128| if mine != 0 { mine } else { theirs };
        let transfer = Transfer {
            id: event.id,
            debit_account_id: pending.debit_account_id,
            credit_account_id: pending.credit_account_id,
            amount,
            pending_id: pending.id,
            user_data_128: inherit(event.user_data_128, pending.user_data_128),
            user_data_64: inherit(event.user_data_64 as u128, pending.user_data_64 as u128) as u64,
            user_data_32: inherit(event.user_data_32 as u128, pending.user_data_32 as u128) as u32,
            timeout: 0,
            ledger: pending.ledger,
            code: pending.code,
            flags: event.flags,
            timestamp,
        };
        let transfer_index = self.push_transfer(transfer, debit_index, credit_index);
        self.push_history(debit_index, transfer_index);
        self.push_history(credit_index, transfer_index);
        Ok(())
    }

    /// The checks of a post or void against its pending transfer; returns the amount the new
    /// transfer records (posted amount, or the released amount for a void).
    fn check_post_or_void(
        &self,
        event: &Transfer,
        pending: &Transfer,
        pending_index: u32,
        timestamp: u64,
    ) -> Result<u128, CreateTransferResult> {
        use CreateTransferResult as R;
        if !pending.has_flag(TransferFlags::PENDING) {
            return Err(R::PendingTransferNotPending);
        }
        let differs = |mine: u128, theirs: u128| mine != 0 && mine != theirs;
        if differs(event.debit_account_id, pending.debit_account_id) {
            return Err(R::PendingTransferHasDifferentDebitAccountId);
        }
        if differs(event.credit_account_id, pending.credit_account_id) {
            return Err(R::PendingTransferHasDifferentCreditAccountId);
        }
        if differs(event.ledger as u128, pending.ledger as u128) {
            return Err(R::PendingTransferHasDifferentLedger);
        }
        if differs(event.code as u128, pending.code as u128) {
            return Err(R::PendingTransferHasDifferentCode);
        }
        let amount = if event.has_flag(TransferFlags::POST_PENDING_TRANSFER) {
            match event.amount {
                u128::MAX => pending.amount,
                amount if amount > pending.amount => return Err(R::ExceedsPendingTransferAmount),
                amount => amount,
            }
        } else {
            if !matches!(event.amount, 0 | u128::MAX) && event.amount != pending.amount {
                return Err(R::PendingTransferHasDifferentAmount);
            }
            pending.amount
        };
        match self
            .pending_statuses
            .get(pending_index)
            .expect("pending status")
        {
            PendingStatus::Pending => {}
            PendingStatus::Posted => return Err(R::PendingTransferAlreadyPosted),
            PendingStatus::Voided => return Err(R::PendingTransferAlreadyVoided),
            PendingStatus::Expired => return Err(R::PendingTransferExpired),
        }
        if pending.timeout > 0 && expires_at(pending).expect("checked on create") <= timestamp {
            return Err(R::PendingTransferExpired);
        }
        Ok(amount)
    }

    /// Marks a pending transfer posted or voided: at most once, asserted.
    fn resolve_pending(&mut self, pending_index: u32, post: bool) {
        let status = if post {
            PendingStatus::Posted
        } else {
            PendingStatus::Voided
        };
        let previous = self.pending_statuses.insert(pending_index, status);
        assert_eq!(
            previous,
            Some(PendingStatus::Pending),
            "pending resolved twice"
        );
        let pending = &self.transfers[pending_index as usize];
        let pending_hash = hash_id(pending.id);
        self.digest = self
            .digest
            .wrapping_add(status_term(pending_hash, status as u8))
            .wrapping_sub(status_term(pending_hash, PendingStatus::Pending as u8));
        if pending.timeout > 0 {
            let expires_at = expires_at(pending).expect("checked on create");
            let removed = self.expiries.remove(&(expires_at, pending.timestamp));
            assert_eq!(removed, Some(pending_index));
        }
        if self.undo_recording {
            self.undo.push(Undo::PendingResolved { pending_index });
        }
    }

    /// Appends a transfer, indexes it and links it at the head of both accounts' lists.
    fn push_transfer(
        &mut self,
        transfer: Transfer,
        debit_index: usize,
        credit_index: usize,
    ) -> u32 {
        let transfer_index = self.transfers.len() as u32;
        assert!(self.transfers.len() < self.transfers_max);
        self.transfers.push(Aligned(transfer));
        self.pending_statuses.push_transfer();
        self.link_transfer(transfer_index, debit_index, credit_index);
        let transfers = &self.transfers;
        self.transfer_indexes
            .insert(transfer.id, transfer_index, |index| {
                transfers[index as usize].id
            });
        self.digest = self.digest.wrapping_add(transfer_term(&transfer));
        transfer_index
    }

    /// Links the newest transfer at the head of both accounts' lists.
    #[inline(always)]
    fn link_transfer(&mut self, transfer_index: u32, debit_index: usize, credit_index: usize) {
        assert_eq!(self.transfer_links.len(), transfer_index as usize);
        let debit_previous = transfers_head(&self.accounts[debit_index]);
        set_transfers_head(&mut self.accounts[debit_index], transfer_index);
        let credit_previous = transfers_head(&self.accounts[credit_index]);
        set_transfers_head(&mut self.accounts[credit_index], transfer_index);
        self.transfer_links.push(TransferLinks {
            debit_previous,
            credit_previous,
        });
    }

    #[inline(always)]
    fn push_history(&mut self, account_index: usize, transfer_index: u32) {
        let account = &self.accounts[account_index];
        if !account.has_flag(AccountFlags::HISTORY) {
            return;
        }
        assert!(self.history.len() < self.history_rows_max);
        let balance = AccountBalance {
            debits_pending: account.debits_pending(),
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending(),
            credits_posted: account.credits_posted,
            timestamp: self.transfers[transfer_index as usize].timestamp,
            ..AccountBalance::default()
        };
        self.digest = self.digest.wrapping_add(history_term(account.id, &balance));
        let links = &mut self.account_links[account_index];
        self.history.push(HistoryRow {
            account_index: account_index as u32,
            transfer_index,
            previous: links.history_head,
            balance,
        });
        links.history_head = (self.history.len() - 1) as u32;
    }

    /// Whether a stored transfer matches a retried event, field by field in precedence order.
    fn transfer_exists(&self, event: &Transfer, existing: &Transfer) -> CreateTransferResult {
        use CreateTransferResult as R;
        if event.flags != existing.flags {
            return R::ExistsWithDifferentFlags;
        }
        let post = event.has_flag(TransferFlags::POST_PENDING_TRANSFER);
        let void = event.has_flag(TransferFlags::VOID_PENDING_TRANSFER);
        // Fields a post or void may leave zero to inherit from the pending transfer.
        let inherited = |mine: u128, theirs: u128| {
            if post || void {
                mine != 0 && mine != theirs
            } else {
                mine != theirs
            }
        };
        let amount_differs = if post {
            let pending_amount = self.transfers[self
                .transfer_index_of(existing.pending_id)
                .expect("transfer") as usize]
                .amount;
            match event.amount {
                u128::MAX => existing.amount != pending_amount,
                amount => amount != existing.amount,
            }
        } else if void {
            !matches!(event.amount, 0 | u128::MAX) && event.amount != existing.amount
        } else if event.has_flag(TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT) {
            // The stored amount is what was available: at most what was asked.
            event.amount < existing.amount
        } else {
            event.amount != existing.amount
        };
        let checks = [
            (
                event.pending_id != existing.pending_id,
                R::ExistsWithDifferentPendingId,
            ),
            (
                event.timeout != existing.timeout,
                R::ExistsWithDifferentTimeout,
            ),
            (
                inherited(event.debit_account_id, existing.debit_account_id),
                R::ExistsWithDifferentDebitAccountId,
            ),
            (
                inherited(event.credit_account_id, existing.credit_account_id),
                R::ExistsWithDifferentCreditAccountId,
            ),
            (amount_differs, R::ExistsWithDifferentAmount),
            (
                inherited(event.user_data_128, existing.user_data_128),
                R::ExistsWithDifferentUserData128,
            ),
            (
                inherited(event.user_data_64 as u128, existing.user_data_64 as u128),
                R::ExistsWithDifferentUserData64,
            ),
            (
                inherited(event.user_data_32 as u128, existing.user_data_32 as u128),
                R::ExistsWithDifferentUserData32,
            ),
            (
                inherited(event.ledger as u128, existing.ledger as u128),
                R::ExistsWithDifferentLedger,
            ),
            (
                inherited(event.code as u128, existing.code as u128),
                R::ExistsWithDifferentCode,
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, result)) => *result,
            None => R::Exists,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a deterministic stream for generating batches.
    struct Stream(u64);

    impl Stream {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut value = self.0;
            value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            value ^ (value >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn one_in(&mut self, count: u64) -> bool {
            self.below(count) == 0
        }
    }

    fn accounts(stream: &mut Stream) -> Vec<Account> {
        (1..=12u128)
            .map(|id| {
                let mut flags = match stream.below(5) {
                    0 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    1 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                    _ => 0,
                };
                if stream.one_in(4) {
                    flags |= AccountFlags::HISTORY;
                }
                if stream.one_in(12) {
                    flags |= AccountFlags::CLOSED;
                }
                Account {
                    id,
                    ledger: 1 + (id > 10) as u32,
                    code: 1,
                    flags,
                    ..Account::default()
                }
            })
            .collect()
    }

    /// Mostly transfers the plain path takes, with every kind of reason not to mixed in.
    /// `pending_ids`: ids of pending transfers generated so far, for posts and voids to name.
    fn transfer(stream: &mut Stream, pending_ids: &mut Vec<u128>) -> Transfer {
        let amounts = [1, 5, 50, 500, 0, u128::MAX, u128::MAX / 2];
        // Weighted to small amounts; ids mostly new, sometimes a retry.
        let amount_index = stream.below(16).saturating_sub(9) as usize;
        let pending_id = match pending_ids.len() as u64 {
            0 => 1,
            count => pending_ids[(count - 1 - stream.below(count.min(50))) as usize],
        };
        let mut transfer = Transfer {
            id: 1 + stream.below(20_000) as u128,
            debit_account_id: stream.below(14) as u128,
            credit_account_id: stream.below(14) as u128,
            pending_id: 0,
            amount: amounts[amount_index],
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        match stream.below(12) {
            0..=2 => {
                transfer.flags = TransferFlags::PENDING;
                transfer.timeout = stream.below(3) as u32;
            }
            3 => {
                transfer.flags = TransferFlags::POST_PENDING_TRANSFER;
                transfer.pending_id = pending_id;
                transfer.amount = u128::MAX;
            }
            4 => {
                transfer.flags = TransferFlags::VOID_PENDING_TRANSFER;
                transfer.pending_id = pending_id;
            }
            5 => transfer.flags = TransferFlags::BALANCING_DEBIT,
            6 => transfer.flags = 1 << (stream.below(16) as u16),
            7 => match stream.below(6) {
                0 => transfer.timestamp = 1,
                1 => transfer.ledger = stream.below(3) as u32,
                2 => transfer.code = 0,
                3 => transfer.id = [0, u128::MAX][stream.below(2) as usize],
                4 => transfer.timeout = 1,
                _ => transfer.pending_id = 1,
            },
            _ => {}
        }
        if stream.one_in(8) {
            transfer.flags |= TransferFlags::LINKED;
        }
        if transfer.flags & TransferFlags::PENDING != 0 {
            pending_ids.push(transfer.id);
        }
        transfer
    }

    #[test]
    fn pending_statuses_are_listed_from_the_blocks_that_hold_them() {
        let mut statuses = PendingStatuses::default();
        statuses.push_transfers(3 * PENDING_BLOCK_TRANSFERS + 10);
        let third_block = 2 * PENDING_BLOCK_TRANSFERS as u32;
        for (index, status) in [
            (third_block + 7, PendingStatus::Pending),
            (5, PendingStatus::Pending),
            (third_block, PendingStatus::Posted),
            (
                3 * PENDING_BLOCK_TRANSFERS as u32 + 9,
                PendingStatus::Voided,
            ),
        ] {
            assert_eq!(statuses.insert(index, status), None);
        }
        assert_eq!(statuses.remove(5), Some(PendingStatus::Pending));
        assert_eq!(
            statuses.insert(third_block + 7, PendingStatus::Expired),
            Some(PendingStatus::Pending)
        );
        statuses.push_transfer_pending();
        statuses.check_counts();
        let listed: Vec<(u32, PendingStatus)> = statuses.iter().collect();
        let last = 3 * PENDING_BLOCK_TRANSFERS as u32;
        assert_eq!(
            listed,
            [
                (third_block, PendingStatus::Posted),
                (third_block + 7, PendingStatus::Expired),
                (last + 9, PendingStatus::Voided),
                (last + 10, PendingStatus::Pending),
            ]
        );
        assert_eq!(statuses.len(), 4);
    }

    #[test]
    fn the_plain_path_agrees_with_the_general_path() {
        let (mut ok_count, mut events_count) = (0, 0);
        let (mut history_rows, mut failed_ids, mut pending) = (0, 0, 0);
        let mut plain_path_counts = [0; 3];
        for seed in 0..40 {
            let mut stream = Stream(seed);
            let mut plain = Ledger::with_capacity(64, 4096);
            let mut general = Ledger::with_capacity(64, 4096);
            general.plain_path_disabled = true;
            let accounts = accounts(&mut stream);
            let mut pending_ids = Vec::new();
            let mut timestamp = 1;
            assert_eq!(
                plain.create_accounts(timestamp, &accounts),
                general.create_accounts(timestamp, &accounts)
            );
            timestamp += NANOSECONDS_PER_SECOND;
            for _ in 0..12 {
                let count = 1 + stream.below(200) as usize;
                let batch: Vec<Transfer> = (0..count)
                    .map(|_| transfer(&mut stream, &mut pending_ids))
                    .collect();
                let results = plain.create_transfers(timestamp, &batch);
                assert_eq!(
                    results,
                    general.create_transfers(timestamp, &batch),
                    "seed {seed}"
                );
                ok_count += results.iter().filter(|result| result.status == 0).count();
                events_count += results.len();
                assert_eq!(plain.digest(), general.digest(), "seed {seed}");
                assert_eq!(plain.hash_chain(), general.hash_chain(), "seed {seed}");
                // Sometimes far enough ahead that pending transfers expire.
                timestamp += NANOSECONDS_PER_SECOND * (1 + stream.below(2));
            }
            plain.check_invariants();
            general.check_invariants();
            let snapshot = plain.snapshot();
            assert_eq!(snapshot, general.snapshot(), "seed {seed}");
            // The digest read from the snapshot's records is the ledger's.
            assert_eq!(
                Ledger::snapshot_digest(&snapshot).expect("snapshot digest"),
                (plain.digest(), plain.hash_chain()),
                "seed {seed}"
            );
            history_rows += plain.history.len();
            failed_ids += plain.failed_ids.len();
            pending += plain.pending_statuses.len();
            for (sum, count) in plain_path_counts.iter_mut().zip(plain.plain_path_counts) {
                *sum += count;
            }
        }
        // The snapshots compared had every section filled.
        assert!(history_rows > 0 && failed_ids > 0 && pending > 0);
        // Each way the plain path reads pending balances was taken, and agreed.
        assert!(
            plain_path_counts.iter().all(|count| *count > 20),
            "{plain_path_counts:?}"
        );
        // The mix must exercise the plain path, not only the reasons to leave it.
        assert!(
            ok_count * 10 > events_count,
            "{ok_count} ok of {events_count}"
        );
    }

    /// Drives `ledger` (of capacity 64 accounts, 4096 transfers) and one of the same capacity
    /// grown on demand through the same random batches: every answer and the final state must
    /// be the same.
    fn assert_behaves_as_grown_on_demand(ledger: &mut Ledger, seed: u64, batches: u64) {
        let mut stream = Stream(seed);
        let mut growing = Ledger::with_capacity_on_demand(64, 4096);
        let accounts = accounts(&mut stream);
        assert_eq!(
            ledger.create_accounts(1, &accounts),
            growing.create_accounts(1, &accounts)
        );
        let mut pending_ids = Vec::new();
        for batch in 0..batches {
            let events: Vec<Transfer> = (0..300)
                .map(|_| transfer(&mut stream, &mut pending_ids))
                .collect();
            let timestamp = (batch + 1) * NANOSECONDS_PER_SECOND;
            assert_eq!(
                ledger.create_transfers(timestamp, &events),
                growing.create_transfers(timestamp, &events)
            );
        }
        ledger.check_invariants();
        assert_eq!(ledger.snapshot(), growing.snapshot());
    }

    #[test]
    fn a_ledger_reserved_up_front_behaves_as_one_that_grows() {
        let mut reserved = Ledger::with_capacity_on_demand(64, 4096);
        // More than the capacity left: clamped, not an error.
        reserved.reserve(1_000, 100_000);
        assert!(reserved.transfers.capacity() >= 4096);
        assert!(reserved.transfers.capacity() < 100_000);
        assert!(reserved.accounts.capacity() >= 64);
        assert_behaves_as_grown_on_demand(&mut reserved, 7, 8);
    }

    /// Found by the property tests: a chain that creates a pending transfer, posts it and
    /// then fails must roll back whole. The rollback removed the pending transfer before
    /// undoing its post, and a broken invariant stopped the node: a client could crash it.
    #[test]
    fn a_chain_that_posts_its_own_pending_transfer_then_fails_rolls_back() {
        let mut ledger = Ledger::with_capacity(8, 64);
        let accounts = Account::plain_for_tests(2);
        assert!(ledger
            .create_accounts(1, &accounts)
            .iter()
            .all(|result| result.status == 0));
        let before = (ledger.digest(), ledger.transfers_count());
        let transfer = |id: u128, flags: u16, pending_id: u128, debit: u128| Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: 2,
            amount: 5,
            pending_id,
            ledger: 1,
            code: 1,
            flags,
            timeout: if flags & TransferFlags::PENDING != 0 {
                60
            } else {
                0
            },
            ..Transfer::default()
        };
        let linked = TransferFlags::LINKED;
        let batch = [
            transfer(10, linked | TransferFlags::PENDING, 0, 1),
            transfer(11, linked | TransferFlags::POST_PENDING_TRANSFER, 10, 0),
            // Fails: the chain goes, the pending transfer and its post with it.
            transfer(12, 0, 0, 2),
        ];
        let results = ledger.create_transfers(NANOSECONDS_PER_SECOND, &batch);
        let codes: Vec<u32> = results.iter().map(|result| result.status).collect();
        let failed = CreateTransferResult::LinkedEventFailed.code();
        let different = CreateTransferResult::AccountsMustBeDifferent.code();
        assert_eq!(codes, [failed, failed, different]);
        assert_eq!((ledger.digest(), ledger.transfers_count()), before);
        ledger.check_invariants();
        // Without the failing event (the post closing the chain) it goes through.
        let retry = [
            batch[0],
            transfer(11, TransferFlags::POST_PENDING_TRANSFER, 10, 0),
        ];
        let results = ledger.create_transfers(2 * NANOSECONDS_PER_SECOND, &retry);
        assert!(
            results.iter().all(|result| result.status == 0),
            "{results:?}"
        );
        ledger.check_invariants();
    }

    /// Two ledgers that grow on demand, given the same accounts drawn from `Stream(seed)`.
    fn twin_ledgers(seed: u64) -> (Stream, Vec<Account>, Ledger, Ledger) {
        let mut stream = Stream(seed);
        let mut first = Ledger::with_capacity_on_demand(64, 8192);
        let mut second = Ledger::with_capacity_on_demand(64, 8192);
        let accounts = accounts(&mut stream);
        assert_eq!(
            first.create_accounts(1, &accounts),
            second.create_accounts(1, &accounts)
        );
        (stream, accounts, first, second)
    }

    #[test]
    fn a_batch_prepared_ahead_applies_exactly_as_one_that_is_not() {
        let (mut stream, accounts, mut prepared, mut plain) = twin_ledgers(21);
        let mut pending_ids = Vec::new();
        for batch in 0..8u64 {
            // Every shape the generator makes: plain, pending, posts, voids, linked, invalid.
            let events: Vec<Transfer> = (0..200 + 37 * batch as usize)
                .map(|_| transfer(&mut stream, &mut pending_ids))
                .collect();
            let bytes = events.as_bytes();
            let timestamp = (batch + 1) * NANOSECONDS_PER_SECOND;
            let hashes = Ledger::prepare(Operation::CreateTransfers, bytes);
            assert_eq!(
                prepared.apply_prepared(Operation::CreateTransfers, timestamp, bytes, &hashes),
                plain.apply(Operation::CreateTransfers, timestamp, bytes)
            );
            assert_eq!(prepared.digest(), plain.digest());
            assert_eq!(prepared.hash_chain(), plain.hash_chain());
        }
        // Batches that are refused, or not transfers, prepare nothing and apply as before.
        for (operation, bytes) in [
            (Operation::CreateTransfers, &[0u8; 100][..]),
            (Operation::CreateTransfers, &[][..]),
            (Operation::CreateAccounts, accounts.as_bytes()),
        ] {
            let hashes = Ledger::prepare(operation, bytes);
            assert!(hashes.hashes.is_empty());
            let timestamp = prepared.last_timestamp() + 1;
            assert_eq!(
                prepared.apply_prepared(operation, timestamp, bytes, &hashes),
                plain.apply(operation, timestamp, bytes)
            );
        }
        prepared.check_invariants();
        assert!(prepared.snapshot() == plain.snapshot(), "the states differ");
    }

    #[test]
    fn storage_adopted_mid_stream_takes_the_transfers_already_there() {
        let (mut stream, _, mut adopted, mut grown) = twin_ledgers(11);
        let mut pending_ids = Vec::new();
        for batch in 0..6 {
            if batch == 3 {
                let before = (adopted.digest(), adopted.transfers.len());
                assert!(before.1 > 0);
                let storage = std::thread::spawn(|| TransferStorage::prepare(8192))
                    .join()
                    .expect("prepare");
                adopted.adopt_storage(storage);
                adopted.check_invariants();
                assert_eq!((adopted.digest(), adopted.transfers.len()), before);
                assert!(adopted.transfers.capacity() >= 8192);
                assert!(adopted.transfer_indexes.capacity() >= 8192);
                for transfer in adopted.transfers.iter() {
                    assert!(adopted.transfer_index_of(transfer.id).is_some());
                }
            }
            let events: Vec<Transfer> = (0..300)
                .map(|_| transfer(&mut stream, &mut pending_ids))
                .collect();
            let timestamp = (batch + 1) * NANOSECONDS_PER_SECOND;
            assert_eq!(
                adopted.create_transfers(timestamp, &events),
                grown.create_transfers(timestamp, &events)
            );
        }
        adopted.check_invariants();
        // The room was there: nothing grew after the adoption.
        assert!(adopted.transfers.capacity() >= 8192);
        assert!(adopted.snapshot() == grown.snapshot(), "the states differ");
    }

    #[test]
    fn storage_prepared_elsewhere_is_adopted_and_behaves_as_reserved() {
        let mut adopted = Ledger::with_capacity_on_demand(64, 4096);
        let storage = std::thread::spawn(|| TransferStorage::prepare(4096))
            .join()
            .expect("prepare");
        adopted.adopt_storage(storage);
        assert!(adopted.transfers.capacity() >= 4096);
        let capacity = adopted.transfers.capacity();
        // The room is there: reserving again neither reallocates nor touches.
        adopted.reserve(0, 4096);
        assert_eq!(adopted.transfers.capacity(), capacity);
        assert_behaves_as_grown_on_demand(&mut adopted, 9, 6);
        assert_eq!(adopted.transfers.capacity(), capacity);
    }

    #[test]
    fn room_reserved_untouched_with_an_index_adopted_behaves_as_reserved() {
        let mut ledger = Ledger::with_capacity_on_demand(64, 4096);
        let [records, links] = ledger.reserve_transfers_untouched(4096);
        assert_eq!(records.address, ledger.transfers.as_ptr() as usize);
        assert_eq!(records.bytes, ledger.transfers.capacity() * 128);
        assert!(ledger.transfers.capacity() >= 4096);
        assert_eq!(links.address, ledger.transfer_links.as_ptr() as usize);
        assert_eq!(links.bytes, ledger.transfer_links.capacity() * 8);
        let mut advised = 0;
        let index = TransferStorage::prepare_index_advised(4096, |_, bytes| advised = bytes);
        assert!(advised >= 4096 * 2 * 8);
        ledger.adopt_storage(index);
        // Nothing reallocates the room while the ledger fills it.
        assert_behaves_as_grown_on_demand(&mut ledger, 11, 6);
        assert_eq!(ledger.transfers.as_ptr() as usize, records.address);
        assert_eq!(ledger.transfer_links.as_ptr() as usize, links.address);
        // The room is clamped to the capacity left.
        let mut full = Ledger::with_capacity_on_demand(64, 100);
        let [records, _] = full.reserve_transfers_untouched(4096);
        assert_eq!(records.bytes, full.transfers.capacity() * 128);
        assert!(full.transfers.capacity() < 4096);
    }
}
