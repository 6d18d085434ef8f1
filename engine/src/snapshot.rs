//! Snapshot: the whole state as one versioned, checksummed byte string.
//!
//! Layout (all integers little-endian), documented in docs/design.md §2:
//!
//! ```text
//! header   magic "TALLYSNP" (8) | version u32 | reserved u32 (0)
//! meta     accounts_max u64 | transfers_max u64 | history_rows_max u64 | last_timestamp u64
//!          | batches_applied u64 | hash_chain u128
//!          | accounts_count u64 | transfers_count u64 | pending_count u64 | failed_ids_count u64
//!          | history_rows_count u64
//! body     accounts       accounts_count × 128-byte Account, in creation order
//!          transfers      transfers_count × 128-byte Transfer, in creation order
//!          pending        pending_count × (transfer_index u32 | status u8 | 3 zero bytes),
//!                         by transfer index
//!          failed ids     failed_ids_count × u128, ascending
//!          history rows   history_rows_count × (account_index u32 | transfer_index u32
//!                         | 128-byte AccountBalance), in creation order
//! trailer  crc32c u32 over every byte before it
//! ```
//!
//! Indexes and per-account lists are derived and rebuilt on restore.

use zerocopy::{FromBytes, IntoBytes};

use crate::id_hash::{hash_id, IdSet};
use crate::ledger::{
    expires_at, set_transfers_head, transfers_head, AccountLinks, Aligned, HistoryRow, Ledger,
    PendingStatus, TransferLinks, NONE,
};
use crate::limits::{SNAPSHOT_HEADER_SIZE, SNAPSHOT_VERSION};
use crate::state::{account_term, failed_id_term, history_term, status_term, transfer_term};
use crate::stored_account::StoredAccount;
use crate::types::{Account, AccountBalance, AccountFlags, Transfer, TransferFlags};

const MAGIC: &[u8; 8] = b"TALLYSNP";
const META_SIZE: usize = 5 * 8 + 16 + 5 * 8;
const PENDING_RECORD_SIZE: usize = 8;
const HISTORY_RECORD_SIZE: usize = 8 + 128;
const TRAILER_SIZE: usize = 4;

/// Why a snapshot could not be restored. Never a panic: every byte string gets an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {size} bytes, shorter than the smallest snapshot")]
    Truncated { size: usize },
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("snapshot version {version} unsupported (this build reads {SNAPSHOT_VERSION})")]
    UnsupportedVersion { version: u32 },
    #[error("snapshot is inconsistent: {0}")]
    Invalid(&'static str),
    /// One record is inconsistent: `record` names its section ("account", "transfer", "pending
    /// status", "failed id", "history row"), `position` its place there, counting from 0.
    #[error("snapshot is inconsistent: {record} {position} (counting from 0): {reason}")]
    InvalidRecord {
        record: &'static str,
        position: usize,
        reason: &'static str,
    },
}

fn invalid(record: &'static str, position: usize, reason: &'static str) -> SnapshotError {
    SnapshotError::InvalidRecord {
        record,
        position,
        reason,
    }
}

/// Transfers a caller has stored already, the first `count` of a ledger's
/// (`Ledger::snapshot_begin_after`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTransfers {
    pub count: usize,
    /// crc32c of their bytes, 128 per transfer, in creation order.
    pub crc: u32,
    /// The bytes of the last of them.
    pub last: [u8; 128],
}

/// A snapshot being encoded in steps (`Ledger::snapshot_begin`, `snapshot_continue`, `finish`),
/// so the thread that owns the ledger is never stopped for the whole encoding.
#[derive(Debug)]
pub struct SnapshotWriter {
    /// Header, meta, accounts, then the transfers copied so far, less what `take_bytes` took.
    bytes: Vec<u8>,
    /// Bytes handed out by `take_bytes`.
    taken: usize,
    /// Pending statuses, failed ids and history rows, as they were at the beginning.
    tail: Vec<u8>,
    size: usize,
    transfers_count: usize,
    transfers_written: usize,
    hash_chain: u128,
    /// The checksum of everything taken and `bytes[..checksummed]`.
    checksum: u32,
    checksummed: usize,
    /// Where the transfers begin in the snapshot: the header, meta and accounts before them.
    head_len: usize,
    /// Transfers left out (`snapshot_begin_after`): the checksum of their bytes and their
    /// length, folded in after the head's once the head is checksummed.
    skipped: Option<(u32, usize)>,
    skipped_len: usize,
}

impl SnapshotWriter {
    /// Folds the bytes copied since the last call into the running checksum, so that `finish`
    /// has only the rest to checksum. Optional (the bytes are the same either way); needs no
    /// ledger, so a builder can spread the checksum over the time between steps, on another
    /// thread, instead of one pass over the whole snapshot at the end.
    pub fn checksum_copied(&mut self) {
        if let Some((crc, len)) = self.skipped.take() {
            // The head is copied whole at the beginning, before anything is taken: the left-out
            // transfers' checksum goes right after it.
            assert!(self.taken == 0 && self.checksummed == 0 && self.bytes.len() >= self.head_len);
            let head = crc32c::crc32c(&self.bytes[..self.head_len]);
            self.checksum = crc32c::crc32c_combine(head, crc, len);
            self.checksummed = self.head_len;
        }
        self.checksum = crc32c::crc32c_append(self.checksum, &self.bytes[self.checksummed..]);
        self.checksummed = self.bytes.len();
    }

    /// The bytes copied so far (less any taken before), checksummed; `buffer`, emptied, takes
    /// their place. For a caller that writes the snapshot out as it is encoded: with the
    /// buffers it gets back, the snapshot is never whole in memory, and memory once touched is
    /// reused. What `finish` returns is the rest.
    pub fn take_bytes(&mut self, mut buffer: Vec<u8>) -> Vec<u8> {
        self.checksum_copied();
        buffer.clear();
        let bytes = std::mem::replace(&mut self.bytes, buffer);
        self.taken += bytes.len();
        self.checksummed = 0;
        bytes
    }

    /// The snapshot's size in bytes, all of it: what was taken, what is copied, what is left,
    /// and the transfers left out (`snapshot_begin_after`).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Where the transfers are in the snapshot: their offset and length in bytes (they are
    /// contiguous, 128 bytes each, in creation order).
    pub fn transfers_at(&self) -> (usize, usize) {
        (self.head_len, self.transfers_count * 128)
    }

    /// The bytes of the transfers left out (`snapshot_begin_after`): the writer hands out the
    /// snapshot less these, from the start of the transfers.
    pub fn skipped_len(&self) -> usize {
        self.skipped_len
    }

    /// Transfers still to copy with `Ledger::snapshot_continue`.
    pub fn transfers_left(&self) -> usize {
        self.transfers_count - self.transfers_written
    }

    /// The hash chain of the ledger the snapshot is of.
    pub fn hash_chain(&self) -> u128 {
        self.hash_chain
    }

    /// The snapshot bytes not taken: the rest of the body and the checksum (without
    /// `take_bytes`, the whole snapshot). Needs no ledger, so it can run on another thread.
    /// Panics if transfers are left to copy.
    pub fn finish(mut self) -> Vec<u8> {
        assert_eq!(self.transfers_left(), 0);
        self.bytes.extend_from_slice(&self.tail);
        self.checksum_copied();
        let checksum = self.checksum;
        self.bytes.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(self.taken + self.bytes.len() + self.skipped_len, self.size);
        self.bytes
    }
}

/// The bytes after the magic of a snapshot whose size, magic, checksum, version and reserved
/// field are right.
fn verified_body(bytes: &[u8]) -> Result<Reader<'_>, SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_SIZE + META_SIZE + TRAILER_SIZE {
        return Err(SnapshotError::Truncated { size: bytes.len() });
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_SIZE);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }
    let mut reader = Reader { bytes: &body[8..] };
    let version = reader.u32()?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { version });
    }
    if reader.u32()? != 0 {
        return Err(SnapshotError::Invalid("reserved header field is not zero"));
    }
    Ok(reader)
}

/// Reads fields in order, failing (not panicking) past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, size: usize) -> Result<&'a [u8], SnapshotError> {
        if size > self.bytes.len() {
            return Err(SnapshotError::Invalid("section runs past the end"));
        }
        let (head, tail) = self.bytes.split_at(size);
        self.bytes = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u128(&mut self) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
}

impl Ledger {
    /// The whole state, versioned and checksummed. Deterministic: equal ledgers give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut writer = self.snapshot_begin();
        // Whole in one buffer: room for all of it at once.
        writer.bytes.reserve_exact(writer.size - writer.bytes.len());
        let done = self.snapshot_continue(&mut writer, usize::MAX);
        assert!(done);
        writer.finish()
    }

    /// Starts a snapshot of the ledger as it is now, to be completed by `snapshot_continue`
    /// between later batches and `SnapshotWriter::finish`: the bytes equal what `snapshot()`
    /// returns now. Copies what a later batch may change (meta, accounts, pending statuses,
    /// failed ids, history rows); the transfers are left for `snapshot_continue`, because a
    /// transfer record never changes once its batch is applied and transfers are only appended
    /// (a linked chain's rollback pops only transfers of its own batch).
    pub fn snapshot_begin(&self) -> SnapshotWriter {
        let mut pending: Vec<(u32, PendingStatus)> = self.pending_statuses.iter().collect();
        pending.sort_unstable_by_key(|(index, _)| *index);
        let mut failed_ids: Vec<u128> = self.failed_ids.iter().copied().collect();
        failed_ids.sort_unstable();

        let tail_size = pending.len() * PENDING_RECORD_SIZE
            + failed_ids.len() * 16
            + self.history.len() * HISTORY_RECORD_SIZE;
        let size = self.snapshot_size();
        // Room for what is copied now; the transfers follow in steps, into this buffer or, if
        // the caller takes the bytes out as they come (`take_bytes`), into buffers of its own.
        let mut bytes =
            Vec::with_capacity(SNAPSHOT_HEADER_SIZE + META_SIZE + self.accounts.len() * 128);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for value in [
            self.accounts_max as u64,
            self.transfers_max as u64,
            self.history_rows_max as u64,
            self.last_timestamp,
            self.batches_applied,
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&self.hash_chain.to_le_bytes());
        for count in [
            self.accounts.len(),
            self.transfers.len(),
            pending.len(),
            failed_ids.len(),
            self.history.len(),
        ] {
            bytes.extend_from_slice(&(count as u64).to_le_bytes());
        }
        for account in &self.accounts {
            bytes.extend_from_slice(account.public().as_bytes());
        }
        let mut tail = Vec::with_capacity(tail_size);
        for (index, status) in &pending {
            tail.extend_from_slice(&index.to_le_bytes());
            tail.extend_from_slice(&[*status as u8, 0, 0, 0]);
        }
        for id in &failed_ids {
            tail.extend_from_slice(&id.to_le_bytes());
        }
        for row in &self.history {
            tail.extend_from_slice(&row.account_index.to_le_bytes());
            tail.extend_from_slice(&row.transfer_index.to_le_bytes());
            tail.extend_from_slice(row.balance.as_bytes());
        }
        assert_eq!(tail.len(), tail_size);
        SnapshotWriter {
            bytes,
            tail,
            size,
            transfers_count: self.transfers.len(),
            taken: 0,
            transfers_written: 0,
            hash_chain: self.hash_chain,
            checksum: 0,
            checksummed: 0,
            head_len: self.snapshot_transfers_at().0,
            skipped: None,
            skipped_len: 0,
        }
    }

    /// `snapshot_begin` for a caller that has the first `stored.count` transfers of the
    /// snapshot already (those of an earlier snapshot of this ledger, kept on disk): the writer
    /// leaves them out, so neither this thread nor the caller copies them again, and its
    /// checksum takes theirs from `stored.crc` (crc32c of their bytes). `None` if they cannot be
    /// this ledger's: more than it holds, or the last of them is not its transfer at that place
    /// (the ledger was replaced since; the caller begins a whole snapshot instead).
    pub fn snapshot_begin_after(&self, stored: &StoredTransfers) -> Option<SnapshotWriter> {
        let last = self.transfers.get(stored.count.checked_sub(1)?)?;
        if last.as_bytes() != stored.last.as_slice() {
            return None;
        }
        let mut writer = self.snapshot_begin();
        writer.transfers_written = stored.count;
        writer.skipped_len = stored.count * 128;
        writer.skipped = Some((stored.crc, writer.skipped_len));
        Some(writer)
    }

    /// Where the transfers are in a snapshot of the ledger as it is now (`snapshot()`), as
    /// `SnapshotWriter::transfers_at` gives them: offset and length in bytes. For a ledger
    /// restored from snapshot bytes, where they are in those bytes. O(1).
    pub fn snapshot_transfers_at(&self) -> (usize, usize) {
        (
            SNAPSHOT_HEADER_SIZE + META_SIZE + self.accounts.len() * 128,
            self.transfers.len() * 128,
        )
    }

    /// The size in bytes of a snapshot of the ledger as it is now. O(1).
    fn snapshot_size(&self) -> usize {
        let tail_size = self.pending_statuses.len() * PENDING_RECORD_SIZE
            + self.failed_ids.len() * 16
            + self.history.len() * HISTORY_RECORD_SIZE;
        SNAPSHOT_HEADER_SIZE
            + META_SIZE
            + self.accounts.len() * 128
            + self.transfers.len() * 128
            + tail_size
            + TRAILER_SIZE
    }

    /// Copies up to `transfers_max` more of the transfers `writer` was begun with; true once all
    /// are copied. `self` must be the ledger the writer was begun on, or one that has only
    /// applied batches since (asserted as far as cheap: it holds at least as many transfers).
    pub fn snapshot_continue(&self, writer: &mut SnapshotWriter, transfers_max: usize) -> bool {
        assert!(transfers_max > 0);
        assert!(self.transfers.len() >= writer.transfers_count);
        let end = writer
            .transfers_count
            .min(writer.transfers_written.saturating_add(transfers_max));
        for transfer in &self.transfers[writer.transfers_written..end] {
            writer.bytes.extend_from_slice(transfer.as_bytes());
        }
        writer.transfers_written = end;
        writer.transfers_written == writer.transfers_count
    }

    /// Rebuilds a ledger from `snapshot()` bytes. Any truncation, corruption or unknown version
    /// is an error, never a panic.
    pub fn restore(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        Ledger::restore_sized(bytes, None)
    }

    /// The capacities (accounts, transfers) recorded in `snapshot()` bytes, read from the header
    /// alone: the checksum, which covers the whole snapshot, is `restore`'s to verify. For a
    /// reader that must size a ledger like the snapshot's before restoring it (an audit replay).
    pub fn snapshot_capacity(bytes: &[u8]) -> Result<(usize, usize), SnapshotError> {
        if bytes.len() < SNAPSHOT_HEADER_SIZE + META_SIZE + TRAILER_SIZE {
            return Err(SnapshotError::Truncated { size: bytes.len() });
        }
        if &bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let mut reader = Reader { bytes: &bytes[8..] };
        let version = reader.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { version });
        }
        reader.u32()?;
        let capacity = |value: u64| {
            usize::try_from(value)
                .ok()
                .filter(|value| *value < NONE as usize)
                .ok_or(SnapshotError::Invalid("capacity out of range"))
        };
        Ok((capacity(reader.u64()?)?, capacity(reader.u64()?)?))
    }

    /// Like `restore`, into a ledger built as `Ledger::with_capacity(accounts_max,
    /// transfers_max)` (memory reserved and touched up front) in place of the capacities the
    /// snapshot recorded: a node keeps its configured size across a restart, and an operator may
    /// raise it. The snapshot's state must fit, or it is an error. History capacity, state,
    /// digest and hash chain are the snapshot's.
    ///
    /// Panics if a capacity is not below `u32::MAX` (as `with_capacity` does).
    pub fn restore_with_capacity(
        bytes: &[u8],
        accounts_max: usize,
        transfers_max: usize,
    ) -> Result<Ledger, SnapshotError> {
        Ledger::restore_sized(bytes, Some((accounts_max, transfers_max)))
    }

    fn restore_sized(
        bytes: &[u8],
        capacity: Option<(usize, usize)>,
    ) -> Result<Ledger, SnapshotError> {
        let mut reader = verified_body(bytes)?;
        let ledger = Self::read_body(&mut reader, capacity)?;
        if !reader.bytes.is_empty() {
            return Err(SnapshotError::Invalid(
                "trailing bytes after the last section",
            ));
        }
        Ok(ledger)
    }

    /// The digest and hash chain of the ledger that `snapshot()` bytes hold, computed from the
    /// records without rebuilding it (no id indexes, no lists): what an audit comparing a
    /// snapshot's state with its own needs, at a fraction of `restore`'s cost. The checksum and
    /// the layout are verified; the consistency checks of `restore` are not made.
    pub fn snapshot_digest(bytes: &[u8]) -> Result<(u128, u128), SnapshotError> {
        let mut reader = verified_body(bytes)?;
        for _ in 0..5 {
            reader.u64()?; // capacities, last timestamp, batches applied
        }
        let hash_chain = reader.u128()?;
        let mut counts = [0usize; 5];
        for count in &mut counts {
            *count = usize::try_from(reader.u64()?)
                .map_err(|_| SnapshotError::Invalid("record count larger than the snapshot"))?;
        }
        let [accounts_count, transfers_count, pending_count, failed_count, history_count] = counts;
        fn section<'a>(
            reader: &mut Reader<'a>,
            count: usize,
            size: usize,
        ) -> Result<&'a [u8], SnapshotError> {
            let bytes = count.checked_mul(size).ok_or(SnapshotError::Invalid(
                "record count larger than the snapshot",
            ))?;
            reader.take(bytes)
        }
        let mut sum: u128 = 0;
        let mut account_ids = Vec::with_capacity(accounts_count);
        for record in section(&mut reader, accounts_count, 128)?.chunks_exact(128) {
            let account =
                Account::read_from_bytes(record).map_err(|_| SnapshotError::Invalid("account"))?;
            sum = sum.wrapping_add(account_term(&account));
            account_ids.push(account.id);
        }
        let transfers = section(&mut reader, transfers_count, 128)?;
        let mut pending = Vec::with_capacity(pending_count);
        let pending_records = section(&mut reader, pending_count, PENDING_RECORD_SIZE)?;
        for (position, record) in pending_records.chunks_exact(8).enumerate() {
            let index = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
            if pending.last().is_some_and(|(last, _)| *last >= index) {
                return Err(invalid("pending status", position, "out of order"));
            }
            pending.push((index, record[4]));
        }
        let mut statuses = pending.iter().peekable();
        for (index, record) in transfers.chunks_exact(128).enumerate() {
            let transfer = Transfer::read_from_bytes(record)
                .map_err(|_| SnapshotError::Invalid("transfer"))?;
            let status = statuses
                .next_if(|(pending_index, _)| *pending_index as usize == index)
                .map_or(0, |(_, status)| *status);
            sum = sum
                .wrapping_add(transfer_term(&transfer))
                .wrapping_add(status_term(hash_id(transfer.id), status));
        }
        if statuses.next().is_some() {
            return Err(SnapshotError::Invalid(
                "pending status of a transfer that is not pending",
            ));
        }
        for record in section(&mut reader, failed_count, 16)?.chunks_exact(16) {
            let id = u128::from_le_bytes(record.try_into().expect("16 bytes"));
            sum = sum.wrapping_add(failed_id_term(id));
        }
        let history = section(&mut reader, history_count, HISTORY_RECORD_SIZE)?;
        for (position, record) in history.chunks_exact(HISTORY_RECORD_SIZE).enumerate() {
            let account_index = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
            let account_id = *account_ids.get(account_index as usize).ok_or(invalid(
                "history row",
                position,
                "of an unknown account",
            ))?;
            let balance = AccountBalance::read_from_bytes(&record[8..])
                .map_err(|_| SnapshotError::Invalid("history row"))?;
            sum = sum.wrapping_add(history_term(account_id, &balance));
        }
        if !reader.bytes.is_empty() {
            return Err(SnapshotError::Invalid(
                "trailing bytes after the last section",
            ));
        }
        Ok((sum, hash_chain))
    }

    fn read_body(
        reader: &mut Reader<'_>,
        capacity_configured: Option<(usize, usize)>,
    ) -> Result<Ledger, SnapshotError> {
        let capacity = |value: u64| {
            usize::try_from(value)
                .ok()
                .filter(|value| *value < NONE as usize)
                .ok_or(SnapshotError::Invalid("capacity out of range"))
        };
        let accounts_max = capacity(reader.u64()?)?;
        let transfers_max = capacity(reader.u64()?)?;
        let history_rows_max = capacity(reader.u64()?)?;
        let mut ledger = match capacity_configured {
            None => Ledger::empty(accounts_max, transfers_max, history_rows_max),
            Some((accounts_max, transfers_max)) => {
                Ledger::with_limits(accounts_max, transfers_max, history_rows_max)
            }
        };
        ledger.last_timestamp = reader.u64()?;
        ledger.batches_applied = reader.u64()?;
        ledger.hash_chain = reader.u128()?;
        let mut counts = [0u64; 5];
        for count in &mut counts {
            *count = reader.u64()?;
        }
        let mut reader_counts = counts.iter();
        let mut next_count = |record_size: usize, reader: &mut Reader<'_>| {
            let count = *reader_counts.next().expect("five counts");
            let fits = usize::try_from(count)
                .ok()
                .and_then(|count| count.checked_mul(record_size))
                .is_some_and(|size| size <= reader.bytes.len());
            if fits {
                Ok(count as usize)
            } else {
                Err(SnapshotError::Invalid(
                    "record count larger than the snapshot",
                ))
            }
        };
        let accounts_count = next_count(128, reader)?;
        ledger.read_accounts(reader.take(accounts_count * 128)?)?;
        let transfers_count = next_count(128, reader)?;
        ledger.read_transfers(reader.take(transfers_count * 128)?)?;
        let pending_count = next_count(PENDING_RECORD_SIZE, reader)?;
        ledger.read_pending(reader, pending_count)?;
        let failed_count = next_count(16, reader)?;
        ledger.read_failed_ids(reader, failed_count)?;
        let history_count = next_count(HISTORY_RECORD_SIZE, reader)?;
        ledger.read_history(reader, history_count)?;
        ledger.check_restored()?;
        ledger.digest = ledger.digest_full();
        Ok(ledger)
    }

    fn read_accounts(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let count = bytes.len() / 128;
        if count > self.accounts_max {
            return Err(SnapshotError::Invalid("more accounts than capacity"));
        }
        // Appended, not replaced: a ledger built `with_capacity` keeps the memory it reserved.
        assert!(self.accounts.is_empty());
        for (position, chunk) in bytes.chunks_exact(128).enumerate() {
            let account = Account::read_from_bytes(chunk).expect("128 bytes");
            // `reserved` holds the head of the account's transfer list, which the transfers
            // rebuild, and flags outside `AccountFlags::ALL` are the ledger's own.
            if account.reserved != 0 {
                return Err(invalid("account", position, "reserved field not zero"));
            }
            if account.flags & !AccountFlags::ALL != 0 {
                return Err(invalid("account", position, "unknown flag set"));
            }
            self.accounts.push(Aligned(StoredAccount::new(&account)));
        }
        self.account_links
            .resize(count, AccountLinks { history_head: NONE });
        self.account_indexes.reserve(count);
        for index in 0..count {
            let id = self.accounts[index].id;
            if self.account_index_of(id).is_some() {
                return Err(invalid("account", index, "duplicate account id"));
            }
            let accounts = &self.accounts;
            self.account_indexes
                .insert(id, index as u32, |index| accounts[index as usize].id);
        }
        Ok(())
    }

    fn read_transfers(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let count = bytes.len() / 128;
        if count > self.transfers_max {
            return Err(SnapshotError::Invalid("more transfers than capacity"));
        }
        assert!(self.transfers.is_empty());
        self.transfers.extend(
            bytes
                .chunks_exact(128)
                .map(|chunk| Aligned(Transfer::read_from_bytes(chunk).expect("128 bytes"))),
        );
        self.transfer_links.reserve(count);
        self.pending_statuses.push_transfers(count);
        self.transfer_indexes.reserve(count);
        for index in 0..count {
            let transfer = self.transfers[index];
            if self.transfer_index_of(transfer.id).is_some() {
                return Err(invalid("transfer", index, "duplicate transfer id"));
            }
            let transfers = &self.transfers;
            self.transfer_indexes
                .insert(transfer.id, index as u32, |index| {
                    transfers[index as usize].id
                });
            let debit = self.account_index_of(transfer.debit_account_id);
            let credit = self.account_index_of(transfer.credit_account_id);
            let (Some(debit), Some(credit)) = (debit, credit) else {
                return Err(invalid("transfer", index, "of an unknown account"));
            };
            if debit == credit {
                return Err(invalid("transfer", index, "between one account"));
            }
            let (debit, credit) = (debit as usize, credit as usize);
            self.transfer_links.push(TransferLinks {
                debit_previous: transfers_head(&self.accounts[debit]),
                credit_previous: transfers_head(&self.accounts[credit]),
            });
            set_transfers_head(&mut self.accounts[debit], index as u32);
            set_transfers_head(&mut self.accounts[credit], index as u32);
        }
        Ok(())
    }

    fn read_pending(&mut self, reader: &mut Reader<'_>, count: usize) -> Result<(), SnapshotError> {
        for position in 0..count {
            let index = reader.u32()?;
            let status_bytes = reader.take(4)?;
            let status = PendingStatus::from_byte(status_bytes[0])
                .filter(|_| status_bytes[1..] == [0, 0, 0])
                .ok_or(invalid("pending status", position, "unknown status"))?;
            let transfer = self
                .transfers
                .get(index as usize)
                .filter(|transfer| transfer.has_flag(TransferFlags::PENDING))
                .copied()
                .ok_or(invalid(
                    "pending status",
                    position,
                    "of a transfer that is not pending",
                ))?;
            if self.pending_statuses.insert(index, status).is_some() {
                return Err(invalid("pending status", position, "duplicate"));
            }
            if status == PendingStatus::Pending && transfer.timeout > 0 {
                let expires_at = expires_at(&transfer).ok_or(invalid(
                    "pending status",
                    position,
                    "expiry overflows",
                ))?;
                self.expiries
                    .insert((expires_at, transfer.timestamp), index);
            }
        }
        Ok(())
    }

    fn read_failed_ids(
        &mut self,
        reader: &mut Reader<'_>,
        count: usize,
    ) -> Result<(), SnapshotError> {
        self.failed_ids = IdSet::default();
        self.failed_ids.reserve(count);
        for position in 0..count {
            let id = reader.u128()?;
            if !self.failed_ids.insert(id) || self.transfer_index_of(id).is_some() {
                return Err(invalid("failed id", position, "duplicate id"));
            }
        }
        if self.transfers.len() + self.failed_ids.len() > self.transfers_max {
            return Err(SnapshotError::Invalid("more transfer ids than capacity"));
        }
        Ok(())
    }

    fn read_history(&mut self, reader: &mut Reader<'_>, count: usize) -> Result<(), SnapshotError> {
        if count > self.history_rows_max {
            return Err(SnapshotError::Invalid("more history rows than capacity"));
        }
        self.history = Vec::with_capacity(count);
        for position in 0..count {
            let account_index = reader.u32()?;
            let transfer_index = reader.u32()?;
            let balance = AccountBalance::read_from_bytes(reader.take(128)?)
                .map_err(|_| invalid("history row", position, "unreadable balance"))?;
            if account_index as usize >= self.accounts.len() {
                return Err(invalid("history row", position, "of an unknown account"));
            }
            if transfer_index as usize >= self.transfers.len() {
                return Err(invalid("history row", position, "of an unknown transfer"));
            }
            let links = &mut self.account_links[account_index as usize];
            self.history.push(HistoryRow {
                account_index,
                transfer_index,
                previous: links.history_head,
                balance,
            });
            links.history_head = (self.history.len() - 1) as u32;
        }
        Ok(())
    }

    /// Consistency a checksum cannot vouch for if the snapshot was produced by a buggy or hostile
    /// writer: every pending transfer has a status.
    fn check_restored(&self) -> Result<(), SnapshotError> {
        let resolving = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
        for (index, transfer) in self.transfers.iter().enumerate() {
            if transfer.has_flag(TransferFlags::PENDING)
                && self.pending_statuses.get(index as u32).is_none()
            {
                return Err(invalid("transfer", index, "pending without a status"));
            }
            if transfer.flags & resolving != 0
                && self.transfer_index_of(transfer.pending_id).is_none()
            {
                return Err(invalid(
                    "transfer",
                    index,
                    "post or void of an unknown pending transfer",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::CreateTransferResult;
    use crate::types::EventResult;

    fn ledger_with_transfers(accounts_max: usize, transfers_max: usize) -> Ledger {
        let mut ledger = Ledger::with_capacity(accounts_max, transfers_max);
        ledger.create_accounts(1, &Account::plain_for_tests(3));
        let transfers: Vec<Transfer> = (100..110u128)
            .map(|id| Transfer {
                id,
                debit_account_id: 1 + id % 3,
                credit_account_id: 1 + (id + 1) % 3,
                amount: id,
                ledger: 1,
                code: 1,
                flags: if id % 2 == 0 {
                    TransferFlags::PENDING
                } else {
                    0
                },
                ..Transfer::default()
            })
            .collect();
        let results = ledger.create_transfers(10, &transfers);
        assert!(results
            .iter()
            .all(|result: &EventResult| result.status == CreateTransferResult::Ok as u32));
        ledger
    }

    #[test]
    fn restore_with_capacity_keeps_the_state_and_takes_the_new_capacity() {
        let ledger = ledger_with_transfers(8, 64);
        let bytes = ledger.snapshot();
        let restored = Ledger::restore_with_capacity(&bytes, 16, 1024).expect("restore");
        restored.check_invariants();
        assert_eq!(restored.accounts_max(), 16);
        assert_eq!(restored.transfers_max(), 1024);
        assert_eq!(restored.digest(), ledger.digest());
        assert_eq!(restored.hash_chain(), ledger.hash_chain());
        assert_eq!(restored.transfers_count(), ledger.transfers_count());
        // Reserved up front, as `with_capacity` does: no growth on the hot path.
        assert!(restored.transfers.capacity() >= 1024);
        assert!(restored.accounts.capacity() >= 16);
        assert_eq!(
            Ledger::snapshot_capacity(&bytes).expect("capacity"),
            (8, 64)
        );
        assert!(Ledger::snapshot_capacity(&bytes[..20]).is_err());
        // The same capacity gives back the very same bytes.
        let same = Ledger::restore_with_capacity(&bytes, 8, 64).expect("restore");
        assert_eq!(same.snapshot(), bytes);
        assert_eq!(Ledger::restore(&bytes).expect("restore").snapshot(), bytes);
    }

    /// The ledger keeps an account's transfer-list head in its stored record's `reserved`, and
    /// whether its pending balances are zero in flag bits no client may set: a snapshot holds
    /// the record as clients see it, and one with `reserved` or such a flag set is refused.
    #[test]
    fn a_snapshot_holds_accounts_as_clients_see_them_and_refuses_the_ledgers_own_fields() {
        let ledger = ledger_with_transfers(8, 64);
        assert!(transfers_head(&ledger.accounts[1]) != NONE);
        assert!(!ledger.accounts[1].nothing_pending());
        let bytes = ledger.snapshot();
        let public = ledger.lookup_accounts(&[2])[0];
        assert_eq!(public.reserved, 0);
        assert_eq!(public.flags, 0);
        assert_ne!(public.debits_pending | public.credits_pending, 0);
        let at = bytes
            .windows(128)
            .position(|record| record == public.as_bytes())
            .expect("the account as clients see it");
        let restored = Ledger::restore(&bytes).expect("restore");
        assert_eq!(restored.accounts, ledger.accounts);
        for (offset, value, reason) in [
            (
                core::mem::offset_of!(Account, reserved),
                1,
                "reserved field not zero",
            ),
            (
                core::mem::offset_of!(Account, flags) + 1,
                0x80,
                "unknown flag set",
            ),
        ] {
            let mut bytes = bytes.clone();
            bytes[at + offset] = value;
            reseal(&mut bytes);
            assert_eq!(
                Ledger::restore(&bytes).err(),
                Some(SnapshotError::InvalidRecord {
                    record: "account",
                    position: 1,
                    reason
                })
            );
        }
    }

    /// A snapshot changed after it was sealed, sealed again: its checksum holds.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - 4;
        let checksum = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&checksum.to_le_bytes());
    }

    /// A record a checksum vouches for but the state cannot hold is named by its section and
    /// its place there, and the message says both.
    #[test]
    fn an_inconsistent_record_is_named_by_its_place() {
        let ledger = ledger_with_transfers(8, 64);
        let mut bytes = ledger.snapshot();
        let transfer = ledger.transfers[6].0;
        let at = bytes
            .windows(128)
            .position(|record| record == transfer.as_bytes())
            .expect("the transfer's record");
        let debit = at + core::mem::offset_of!(Transfer, debit_account_id);
        bytes[debit..debit + 16].copy_from_slice(&99u128.to_le_bytes());
        reseal(&mut bytes);
        let error = Ledger::restore(&bytes).expect_err("a transfer of an unknown account");
        assert_eq!(
            error,
            SnapshotError::InvalidRecord {
                record: "transfer",
                position: 6,
                reason: "of an unknown account"
            }
        );
        assert_eq!(
            error.to_string(),
            "snapshot is inconsistent: transfer 6 (counting from 0): of an unknown account"
        );
    }

    #[test]
    fn restore_with_capacity_refuses_a_state_that_does_not_fit() {
        let bytes = ledger_with_transfers(8, 64).snapshot();
        assert!(Ledger::restore_with_capacity(&bytes, 2, 64).is_err());
        assert!(Ledger::restore_with_capacity(&bytes, 8, 9).is_err());
        assert!(Ledger::restore_with_capacity(&bytes, 3, 10).is_ok());
    }

    #[test]
    fn a_snapshot_in_steps_is_the_snapshot_of_its_beginning() {
        let mut ledger = ledger_with_transfers(8, 64);
        let expected = ledger.snapshot();
        let mut writer = ledger.snapshot_begin();
        assert_eq!(writer.transfers_left(), 10);
        assert!(!ledger.snapshot_continue(&mut writer, 3));
        writer.checksum_copied();
        // Later batches: more transfers, and pending transfers posted and voided (statuses and
        // balances change); none of it may reach the snapshot begun before.
        let resolve = |id: u128, pending_id: u128, flags: u16| Transfer {
            id,
            pending_id,
            ledger: 1,
            code: 1,
            flags,
            ..Transfer::default()
        };
        let later = [
            resolve(200, 100, TransferFlags::POST_PENDING_TRANSFER),
            resolve(201, 102, TransferFlags::VOID_PENDING_TRANSFER),
        ];
        let results = ledger.create_transfers(1_000, &later);
        assert!(results
            .iter()
            .all(|result| result.status == CreateTransferResult::Ok as u32));
        assert_ne!(ledger.snapshot(), expected);
        // The checksum folded in between some steps and not others: the same bytes.
        while !ledger.snapshot_continue(&mut writer, 3) {
            writer.checksum_copied();
        }
        assert_eq!(writer.transfers_left(), 0);
        let bytes = writer.finish();
        assert_eq!(bytes, expected);
        assert!(Ledger::restore(&bytes).is_ok());
    }

    #[test]
    fn a_snapshot_begun_after_stored_transfers_is_the_whole_snapshot_less_them() {
        let ledger = ledger_with_transfers(8, 64);
        let expected = ledger.snapshot();
        let (offset, len) = ledger.snapshot_begin().transfers_at();
        assert_eq!(len, 10 * 128);
        assert_eq!(ledger.snapshot_transfers_at(), (offset, len));
        let restored = Ledger::restore(&expected).unwrap();
        assert_eq!(restored.snapshot_transfers_at(), (offset, len));
        for count in [1, 4, 10] {
            let stored = &expected[offset..offset + count * 128];
            let mut last = [0u8; 128];
            last.copy_from_slice(&stored[stored.len() - 128..]);
            let stored = StoredTransfers {
                count,
                crc: crc32c::crc32c(stored),
                last,
            };
            let mut writer = ledger.snapshot_begin_after(&stored).expect("this ledger's");
            assert_eq!(writer.size(), expected.len());
            assert_eq!(writer.skipped_len(), count * 128);
            assert_eq!(writer.transfers_left(), 10 - count);
            let mut pieces = vec![writer.take_bytes(Vec::new())];
            while !ledger.snapshot_continue(&mut writer, 3) {
                pieces.push(writer.take_bytes(Vec::new()));
            }
            pieces.push(writer.finish());
            // The same bytes, checksum included, with the stored transfers cut out.
            let mut whole = expected[..offset].to_vec();
            whole.extend_from_slice(&expected[offset + count * 128..]);
            assert_eq!(pieces.concat(), whole);
        }
        // Transfers that are not this ledger's, or more than it holds: no writer.
        let mut other = StoredTransfers {
            count: 3,
            crc: 0,
            last: [7; 128],
        };
        assert!(ledger.snapshot_begin_after(&other).is_none());
        other.count = 11;
        other
            .last
            .copy_from_slice(&expected[offset + 9 * 128..offset + 10 * 128]);
        assert!(ledger.snapshot_begin_after(&other).is_none());
        other.count = 0;
        assert!(ledger.snapshot_begin_after(&other).is_none());
    }

    #[test]
    fn a_snapshot_taken_out_in_pieces_is_the_whole_snapshot() {
        let ledger = ledger_with_transfers(8, 64);
        let expected = ledger.snapshot();
        let mut writer = ledger.snapshot_begin();
        assert_eq!(writer.size(), expected.len());
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        // The header and accounts, then the transfers three at a time, each piece taken into a
        // buffer handed back (the first one not empty: it is cleared), checksummed or not.
        let mut spare = vec![0xAA; 5];
        pieces.push(writer.take_bytes(std::mem::take(&mut spare)));
        let mut step = 0;
        while !ledger.snapshot_continue(&mut writer, 3) {
            if step % 2 == 0 {
                writer.checksum_copied();
            }
            step += 1;
            pieces.push(writer.take_bytes(Vec::with_capacity(64)));
        }
        // An empty take changes nothing.
        pieces.push(writer.take_bytes(Vec::new()));
        pieces.push(writer.finish());
        assert_eq!(pieces.concat(), expected);
        assert!(pieces.iter().filter(|piece| !piece.is_empty()).count() >= 4);
    }
}
