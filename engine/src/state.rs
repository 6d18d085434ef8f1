//! Whole-state views: digest, per-ledger totals, the full invariant check, memory accounting.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_128_with_seed;
use zerocopy::IntoBytes;

use crate::id_hash::IdMap;
use crate::ledger::{Ledger, PendingStatus};
use crate::types::{Account, AccountFlags, LedgerTotals, TransferFlags};

// One seed per kind of record, so that equal bytes of different kinds never cancel out.
const SEED_ACCOUNT: u64 = 1;
const SEED_TRANSFER: u64 = 2;
const SEED_FAILED_ID: u64 = 3;
const SEED_HISTORY_ROW: u64 = 4;

impl Ledger {
    /// A hash over the whole state: every account, transfer (with its pending status), burned id
    /// and history row. The wrapping sum of per-record hashes, so it is independent of the order
    /// records were inserted or are stored in. Capacities, `last_timestamp`, `batches_applied`
    /// and the hash chain are not state in this sense and are not included.
    pub fn digest(&self) -> u128 {
        let mut sum: u128 = 0;
        for account in &self.accounts {
            sum = sum.wrapping_add(xxh3_128_with_seed(account.as_bytes(), SEED_ACCOUNT));
        }
        for (index, transfer) in self.transfers.iter().enumerate() {
            let status = self.pending_status_byte(index as u32);
            let seed = SEED_TRANSFER + ((status as u64) << 8);
            sum = sum.wrapping_add(xxh3_128_with_seed(transfer.as_bytes(), seed));
        }
        for id in &self.failed_ids {
            sum = sum.wrapping_add(xxh3_128_with_seed(&id.to_le_bytes(), SEED_FAILED_ID));
        }
        for row in &self.history {
            let mut bytes = [0u8; 16 + 128];
            bytes[..16]
                .copy_from_slice(&self.accounts[row.account_index as usize].id.to_le_bytes());
            bytes[16..].copy_from_slice(row.balance.as_bytes());
            sum = sum.wrapping_add(xxh3_128_with_seed(&bytes, SEED_HISTORY_ROW));
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
            entry.debits_pending = entry.debits_pending.wrapping_add(account.debits_pending);
            entry.debits_posted = entry.debits_posted.wrapping_add(account.debits_posted);
            entry.credits_pending = entry.credits_pending.wrapping_add(account.credits_pending);
            entry.credits_posted = entry.credits_posted.wrapping_add(account.credits_posted);
        }
        totals.into_iter().collect()
    }

    /// Bytes of memory the account side of the ledger holds, by capacity: the records, their
    /// list heads, and the id index. This is what `bytes_per_account` in the benchmark reports.
    pub fn accounts_memory_bytes(&self) -> usize {
        self.accounts.capacity() * core::mem::size_of::<Account>()
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
    /// - each pending transfer is posted or voided at most once, and exactly once if its status
    ///   says so.
    pub fn check_invariants(&self) {
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
            let actual = [
                account.debits_pending,
                account.debits_posted,
                account.credits_pending,
                account.credits_posted,
            ];
            assert_eq!(&actual, expected, "balances of account {}", account.id);
            let debits = account.debits_pending.checked_add(account.debits_posted);
            let credits = account.credits_pending.checked_add(account.credits_posted);
            if account.has_flag(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
                assert!(debits.is_some_and(|debits| debits <= account.credits_posted));
            }
            if account.has_flag(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) {
                assert!(credits.is_some_and(|credits| credits <= account.debits_posted));
            }
        }
    }

    fn check_pending_resolutions(&self) {
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
