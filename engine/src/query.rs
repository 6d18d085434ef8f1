//! Reads: lookups and per-account queries. Reads never change state and never go through the log.

use crate::ledger::{transfers_head, Ledger, NONE};
use crate::limits::{LOOKUP_IDS_MAX, QUERY_RESULTS_MAX};
use crate::types::{Account, AccountBalance, AccountFilter, AccountFlags, Transfer};

/// A filter checked and normalised: bounds made explicit.
struct Bounds {
    account_index: usize,
    timestamp_min: u64,
    timestamp_max: u64,
    limit: usize,
    debits: bool,
    credits: bool,
    reversed: bool,
}

impl Ledger {
    /// The accounts among `ids` that exist, in the order asked. At most `LOOKUP_IDS_MAX` ids are
    /// looked at.
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        ids.iter()
            .take(LOOKUP_IDS_MAX)
            .filter_map(|id| self.account_index_of(*id))
            .map(|index| self.accounts[index as usize].public())
            .collect()
    }

    /// The transfers among `ids` that exist, in the order asked. At most `LOOKUP_IDS_MAX` ids are
    /// looked at.
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        ids.iter()
            .take(LOOKUP_IDS_MAX)
            .filter_map(|id| self.transfer_index_of(*id))
            .map(|index| *self.transfers[index as usize])
            .collect()
    }

    /// The account's transfers matching `filter`, oldest first (newest first with `REVERSED`).
    /// An unknown account or an invalid filter (unknown flag bits, min > max) gives nothing.
    pub fn get_account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        let Some(bounds) = self.bounds(filter) else {
            return Vec::new();
        };
        let account_id = self.accounts[bounds.account_index].id;
        let mut matches = Vec::new();
        let mut cursor = transfers_head(&self.accounts[bounds.account_index]);
        // Walk newest to oldest; the list is in timestamp order.
        while cursor != NONE {
            let transfer = &self.transfers[cursor as usize];
            let links = &self.transfer_links[cursor as usize];
            let is_debit = transfer.debit_account_id == account_id;
            cursor = if is_debit {
                links.debit_previous
            } else {
                links.credit_previous
            };
            if transfer.timestamp > bounds.timestamp_max {
                continue;
            }
            if transfer.timestamp < bounds.timestamp_min {
                break;
            }
            if (is_debit && bounds.debits) || (!is_debit && bounds.credits) {
                matches.push(**transfer);
                if bounds.reversed && matches.len() == bounds.limit {
                    break;
                }
            }
        }
        Self::order(matches, &bounds)
    }

    /// The balance history of an account with the `history` flag, filtered like
    /// `get_account_transfers` (by the transfer that produced each row). Accounts without
    /// `history` give nothing.
    pub fn get_account_balances(&self, filter: &AccountFilter) -> Vec<AccountBalance> {
        let Some(bounds) = self.bounds(filter) else {
            return Vec::new();
        };
        let account = &self.accounts[bounds.account_index];
        if !account.has_flag(AccountFlags::HISTORY) {
            return Vec::new();
        }
        let mut matches = Vec::new();
        let mut cursor = self.account_links[bounds.account_index].history_head;
        while cursor != NONE {
            let row = &self.history[cursor as usize];
            cursor = row.previous;
            if row.balance.timestamp > bounds.timestamp_max {
                continue;
            }
            if row.balance.timestamp < bounds.timestamp_min {
                break;
            }
            let transfer = &self.transfers[row.transfer_index as usize];
            let is_debit = transfer.debit_account_id == account.id;
            if (is_debit && bounds.debits) || (!is_debit && bounds.credits) {
                matches.push(row.balance);
                if bounds.reversed && matches.len() == bounds.limit {
                    break;
                }
            }
        }
        Self::order(matches, &bounds)
    }

    /// `newest_first` holds every match newest first (or only the first `limit` if reversed).
    fn order<T>(mut newest_first: Vec<T>, bounds: &Bounds) -> Vec<T> {
        if !bounds.reversed {
            newest_first.reverse();
        }
        newest_first.truncate(bounds.limit);
        newest_first
    }

    fn bounds(&self, filter: &AccountFilter) -> Option<Bounds> {
        if filter.flags & !AccountFilter::FLAGS_ALL != 0 {
            return None;
        }
        let account_index = self.account_index_of(filter.account_id)? as usize;
        let timestamp_max = match filter.timestamp_max {
            0 => u64::MAX,
            timestamp => timestamp,
        };
        if filter.timestamp_min > timestamp_max {
            return None;
        }
        let limit = match filter.limit as usize {
            0 => QUERY_RESULTS_MAX,
            limit => limit.min(QUERY_RESULTS_MAX),
        };
        let sides = filter.flags & (AccountFilter::DEBITS | AccountFilter::CREDITS);
        Some(Bounds {
            account_index,
            timestamp_min: filter.timestamp_min,
            timestamp_max,
            limit,
            debits: sides == 0 || filter.flags & AccountFilter::DEBITS != 0,
            credits: sides == 0 || filter.flags & AccountFilter::CREDITS != 0,
            reversed: filter.flags & AccountFilter::REVERSED != 0,
        })
    }
}
