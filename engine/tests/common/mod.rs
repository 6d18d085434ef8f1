//! Helpers shared by the integration tests.
#![allow(dead_code)]

use tally_engine::{
    Account, CreateAccountResult, CreateTransferResult, EventResult, Ledger, Transfer,
};

pub fn account(id: u128, ledger: u32, flags: u16) -> Account {
    Account {
        id,
        ledger,
        code: 1,
        flags,
        ..Account::default()
    }
}

pub fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// `base` with `change` applied: for table rows that differ from a plain record in one field.
pub fn with<T>(mut base: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut base);
    base
}

/// A ledger driven with timestamps that advance by themselves.
pub struct Harness {
    pub ledger: Ledger,
}

impl Harness {
    pub fn new(ledger: Ledger) -> Harness {
        Harness { ledger }
    }

    pub fn next_timestamp(&self) -> u64 {
        self.ledger.last_timestamp() + 1
    }

    pub fn accounts(&mut self, events: &[Account]) -> Vec<CreateAccountResult> {
        let timestamp = self.next_timestamp();
        account_codes(&self.ledger.create_accounts(timestamp, events))
    }

    pub fn transfers(&mut self, events: &[Transfer]) -> Vec<CreateTransferResult> {
        let timestamp = self.next_timestamp();
        self.transfers_at(timestamp, events)
    }

    pub fn transfers_at(
        &mut self,
        timestamp: u64,
        events: &[Transfer],
    ) -> Vec<CreateTransferResult> {
        transfer_codes(&self.ledger.create_transfers(timestamp, events))
    }

    pub fn account(&self, id: u128) -> Account {
        let found = self.ledger.lookup_accounts(&[id]);
        assert_eq!(found.len(), 1, "account {id}");
        found[0]
    }

    pub fn transfer(&self, id: u128) -> Transfer {
        let found = self.ledger.lookup_transfers(&[id]);
        assert_eq!(found.len(), 1, "transfer {id}");
        found[0]
    }

    /// (debits_pending, debits_posted, credits_pending, credits_posted)
    pub fn balances(&self, id: u128) -> (u128, u128, u128, u128) {
        let account = self.account(id);
        (
            account.debits_pending,
            account.debits_posted,
            account.credits_pending,
            account.credits_posted,
        )
    }
}

pub fn account_codes(results: &[EventResult]) -> Vec<CreateAccountResult> {
    results
        .iter()
        .enumerate()
        .map(|(index, result)| {
            assert_eq!(result.index as usize, index);
            CreateAccountResult::from_code(result.status).expect("known code")
        })
        .collect()
}

pub fn transfer_codes(results: &[EventResult]) -> Vec<CreateTransferResult> {
    results
        .iter()
        .enumerate()
        .map(|(index, result)| {
            assert_eq!(result.index as usize, index);
            CreateTransferResult::from_code(result.status).expect("known code")
        })
        .collect()
}
