//! Whole-state views: digest, per-ledger totals, the full invariant check, memory accounting.

use std::collections::BTreeMap;

use zerocopy::IntoBytes;

use crate::id_hash::{hash_id, IdMap};
use crate::ledger::{record_bytes, transfers_head, Ledger, PendingStatus, NONE};
use crate::record_hash::{
    field_multiplier, lane_term, record_hash, Lanes, SEED_ACCOUNT, SEED_FAILED_ID,
    SEED_HISTORY_ROW, SEED_TRANSFER,
};
use crate::stored_account::StoredAccount;
use crate::types::{Account, AccountBalance, AccountFlags, LedgerTotals, Transfer, TransferFlags};

// The balance-like fields of the digest: an account's four balances and a transfer's pending
// status, each weighted by its own multiplier (`record_hash::field_multiplier`).
pub(crate) const FIELD_DEBITS_PENDING: usize = 0;
pub(crate) const FIELD_DEBITS_POSTED: usize = 1;
pub(crate) const FIELD_CREDITS_PENDING: usize = 2;
pub(crate) const FIELD_CREDITS_POSTED: usize = 3;
pub(crate) const FIELD_PENDING_STATUS: usize = 4;

/// What an account adds to the digest: the hash of its record with the balances zeroed, plus
/// each balance times its field's multiplier. Linear in the balances, so a transfer updates the
/// digest with one multiplication per balance it changes instead of rehashing two records.
///
/// Of the account as clients see it (`StoredAccount::public`): `reserved` is left out.
pub(crate) fn account_term(account: &Account) -> u128 {
    let fixed = Account {
        debits_pending: 0,
        debits_posted: 0,
        credits_pending: 0,
        credits_posted: 0,
        reserved: 0,
        ..*account
    };
    let id_hash = hash_id(account.id);
    let fields = [
        FIELD_DEBITS_PENDING,
        FIELD_DEBITS_POSTED,
        FIELD_CREDITS_PENDING,
        FIELD_CREDITS_POSTED,
    ];
    let balances = [
        account.debits_pending,
        account.debits_posted,
        account.credits_pending,
        account.credits_posted,
    ];
    fields.iter().zip(balances).fold(
        record_hash(record_bytes(&fixed), SEED_ACCOUNT),
        |term, (field, balance)| term.wrapping_add(balance_term(id_hash, *field, balance)),
    )
}

/// What `amount` in field `field` of the record whose id hashes to `id_hash` adds.
#[inline(always)]
pub(crate) fn balance_term(id_hash: u64, field: usize, amount: u128) -> u128 {
    amount.wrapping_mul(field_multiplier(id_hash, field))
}

/// What a stored transfer's record adds (its pending status adds `status_term`).
pub(crate) fn transfer_term(transfer: &Transfer) -> u128 {
    record_hash(record_bytes(transfer), SEED_TRANSFER)
}

/// What a transfer's pending status (0 = not pending, else `PendingStatus as u8`) adds.
#[inline(always)]
pub(crate) fn status_term(id_hash: u64, status: u8) -> u128 {
    balance_term(id_hash, FIELD_PENDING_STATUS, status as u128)
}

/// What a burned transfer id adds: one lane, finished.
pub(crate) fn failed_id_term(id: u128) -> u128 {
    Lanes {
        even: lane_term(0, id as u64, (id >> 64) as u64),
        odd: 0,
    }
    .finish(SEED_FAILED_ID)
}

/// What a history row adds: its `AccountBalance` record with the account id xored into bytes
/// 72..88 (inside the reserved bytes, zero in every row the engine writes).
pub(crate) fn history_term(account_id: u128, balance: &AccountBalance) -> u128 {
    let mut bytes = [0u8; 128];
    bytes.copy_from_slice(balance.as_bytes());
    for (byte, id_byte) in bytes[72..88].iter_mut().zip(account_id.to_le_bytes()) {
        *byte ^= id_byte;
    }
    record_hash(&bytes, SEED_HISTORY_ROW)
}

impl Ledger {
    /// A hash over the whole state: every account, transfer (with its pending status), burned id
    /// and history row. A wrapping sum of per-record terms, so it depends on the state alone, not
    /// on the order records were inserted or are stored in or on how batches were cut.
    /// Capacities, `last_timestamp`, `batches_applied` and the hash chain are not state in this
    /// sense and are not included.
    ///
    /// O(1): every change updates it (docs/design.md §2, "Digest and hash chain"); `digest_full`
    /// computes the same value from scratch.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// `digest()` computed from scratch over the whole state, O(state). `check_invariants`
    /// asserts the two agree; restore sets the digest from it.
    pub fn digest_full(&self) -> u128 {
        let mut sum: u128 = 0;
        for account in &self.accounts {
            sum = sum.wrapping_add(account_term(&account.public()));
        }
        for (index, transfer) in self.transfers.iter().enumerate() {
            let status = self.pending_status_byte(index as u32);
            sum = sum
                .wrapping_add(transfer_term(transfer))
                .wrapping_add(status_term(hash_id(transfer.id), status));
        }
        for id in &self.failed_ids {
            sum = sum.wrapping_add(failed_id_term(*id));
        }
        for row in &self.history {
            let account_id = self.accounts[row.account_index as usize].id;
            sum = sum.wrapping_add(history_term(account_id, &row.balance));
        }
        sum
    }

    /// 0 for a transfer that is not pending, else its `PendingStatus`.
    pub(crate) fn pending_status_byte(&self, transfer_index: u32) -> u8 {
        self.pending_statuses
            .get(transfer_index)
            .map_or(0, |status| status as u8)
    }

    /// Per-ledger sums of all account balances, ordered by ledger.
    pub fn ledger_totals(&self) -> Vec<(u32, LedgerTotals)> {
        let mut totals: BTreeMap<u32, LedgerTotals> = BTreeMap::new();
        for account in &self.accounts {
            let entry = totals.entry(account.ledger).or_default();
            entry.accounts_count += 1;
            entry.debits_pending = entry.debits_pending.wrapping_add(account.debits_pending());
            entry.debits_posted = entry.debits_posted.wrapping_add(account.debits_posted);
            entry.credits_pending = entry
                .credits_pending
                .wrapping_add(account.credits_pending());
            entry.credits_posted = entry.credits_posted.wrapping_add(account.credits_posted);
        }
        totals.into_iter().collect()
    }

    /// Bytes of memory the account side of the ledger holds, by capacity: the records, their
    /// list heads, and the id index. This is what `bytes_per_account` in the benchmark reports.
    pub fn accounts_memory_bytes(&self) -> usize {
        self.accounts.capacity() * core::mem::size_of::<StoredAccount>()
            + self.account_links.capacity() * core::mem::size_of::<crate::ledger::AccountLinks>()
            + self.account_indexes.memory_bytes()
    }

    /// Bytes of memory the transfer side holds, by capacity (records, links, id index).
    pub fn transfers_memory_bytes(&self) -> usize {
        self.transfers.capacity() * core::mem::size_of::<crate::types::Transfer>()
            + self.transfer_links.capacity() * core::mem::size_of::<crate::ledger::TransferLinks>()
            + self.transfer_indexes.memory_bytes()
    }

    /// Checks every invariant over the whole state; panics on the first broken one. O(state):
    /// for tests, checkpoints and after restore, not for the hot path (which asserts the cheap
    /// per-event forms).
    ///
    /// - indexes agree with the records;
    /// - every balance equals what the transfers imply (so per ledger Σdebits = Σcredits);
    /// - no constrained account is past its limit;
    /// - the incremental digest equals the digest computed from scratch;
    /// - each pending transfer is posted or voided at most once, and exactly once if its status
    ///   says so.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.digest,
            self.digest_full(),
            "incremental digest drifted"
        );
        self.check_indexes();
        self.check_balances();
        for (ledger, totals) in self.ledger_totals() {
            assert_eq!(
                totals.debits_pending, totals.credits_pending,
                "ledger {ledger} pending"
            );
            assert_eq!(
                totals.debits_posted, totals.credits_posted,
                "ledger {ledger} posted"
            );
        }
        self.check_pending_resolutions();
        assert!(self.transfers.len() + self.failed_ids.len() <= self.transfers_max);
        assert!(self.accounts.len() <= self.accounts_max);
        assert!(self.history.len() <= self.history_rows_max);
    }

    fn check_indexes(&self) {
        assert_eq!(self.account_indexes.len(), self.accounts.len());
        assert_eq!(self.account_links.len(), self.accounts.len());
        for (index, account) in self.accounts.iter().enumerate() {
            assert_eq!(self.account_index_of(account.id), Some(index as u32));
        }
        assert_eq!(self.transfer_indexes.len(), self.transfers.len());
        assert_eq!(self.transfer_links.len(), self.transfers.len());
        for (index, transfer) in self.transfers.iter().enumerate() {
            assert_eq!(self.transfer_index_of(transfer.id), Some(index as u32));
            assert!(!self.failed_ids.contains(&transfer.id));
            if index > 0 {
                assert!(self.transfers[index - 1].timestamp < transfer.timestamp);
            }
        }
        for (index, account) in self.accounts.iter().enumerate().skip(1) {
            assert!(self.accounts[index - 1].timestamp < account.timestamp);
        }
        // Each account's transfer list starts at its newest transfer, and each transfer links
        // to the one before it of the same account.
        let mut heads = vec![NONE; self.accounts.len()];
        for (index, (transfer, links)) in
            self.transfers.iter().zip(&self.transfer_links).enumerate()
        {
            let debit = self
                .account_index_of(transfer.debit_account_id)
                .expect("account");
            let credit = self
                .account_index_of(transfer.credit_account_id)
                .expect("account");
            assert_eq!(links.debit_previous, heads[debit as usize]);
            assert_eq!(links.credit_previous, heads[credit as usize]);
            heads[debit as usize] = index as u32;
            heads[credit as usize] = index as u32;
        }
        for (account, head) in self.accounts.iter().zip(heads) {
            assert_eq!(
                transfers_head(account),
                head,
                "transfer list of account {}",
                account.id
            );
        }
    }

    fn check_balances(&self) {
        let mut expected: Vec<[u128; 4]> = vec![[0; 4]; self.accounts.len()];
        for (index, transfer) in self.transfers.iter().enumerate() {
            let debit = self
                .account_index_of(transfer.debit_account_id)
                .expect("account") as usize;
            let credit = self
                .account_index_of(transfer.credit_account_id)
                .expect("account") as usize;
            let status = self.pending_statuses.get(index as u32);
            if transfer.has_flag(TransferFlags::PENDING) {
                if status == Some(PendingStatus::Pending) {
                    expected[debit][0] += transfer.amount;
                    expected[credit][2] += transfer.amount;
                }
            } else if !transfer.has_flag(TransferFlags::VOID_PENDING_TRANSFER) {
                expected[debit][1] += transfer.amount;
                expected[credit][3] += transfer.amount;
            }
        }
        for (account, expected) in self.accounts.iter().zip(&expected) {
            assert_eq!(
                &account.balances(),
                expected,
                "balances of account {}",
                account.id
            );
            account.check_internal_flags();
            let debits = account.debits_pending().checked_add(account.debits_posted);
            let credits = account
                .credits_pending()
                .checked_add(account.credits_posted);
            if account.has_flag(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
                assert!(debits.is_some_and(|debits| debits <= account.credits_posted));
            }
            if account.has_flag(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) {
                assert!(credits.is_some_and(|credits| credits <= account.debits_posted));
            }
        }
    }

    fn check_pending_resolutions(&self) {
        self.pending_statuses.check_counts();
        let mut resolutions: IdMap<u32, (u32, u16)> = IdMap::default();
        for transfer in &self.transfers {
            let resolving =
                TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
            if transfer.flags & resolving == 0 {
                continue;
            }
            let pending_index = self
                .transfer_index_of(transfer.pending_id)
                .expect("transfer");
            let entry = resolutions
                .entry(pending_index)
                .or_insert((0, transfer.flags));
            entry.0 += 1;
            assert_eq!(
                entry.0, 1,
                "pending transfer {} resolved twice",
                transfer.pending_id
            );
        }
        for (index, transfer) in self.transfers.iter().enumerate() {
            let index = index as u32;
            let status = self.pending_statuses.get(index);
            assert_eq!(transfer.has_flag(TransferFlags::PENDING), status.is_some());
            let resolution = resolutions.get(&index).map(|(_, flags)| *flags);
            match status {
                None => assert!(resolution.is_none()),
                Some(PendingStatus::Pending | PendingStatus::Expired) => {
                    assert!(resolution.is_none())
                }
                Some(PendingStatus::Posted) => {
                    assert!(resolution
                        .is_some_and(|flags| flags & TransferFlags::POST_PENDING_TRANSFER != 0))
                }
                Some(PendingStatus::Voided) => {
                    assert!(resolution
                        .is_some_and(|flags| flags & TransferFlags::VOID_PENDING_TRANSFER != 0))
                }
            }
            let expiring = status == Some(PendingStatus::Pending) && transfer.timeout > 0;
            let in_expiries = expiring
                && crate::ledger::expires_at(transfer).is_some_and(|expires_at| {
                    self.expiries.get(&(expires_at, transfer.timestamp)) == Some(&index)
                });
            assert_eq!(expiring, in_expiries);
        }
        assert_eq!(
            self.expiries.len(),
            self.pending_statuses
                .iter()
                .filter(|(index, status)| {
                    *status == PendingStatus::Pending && self.transfers[*index as usize].timeout > 0
                })
                .count()
        );
    }
}
