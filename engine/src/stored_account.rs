//! `StoredAccount`: an account as the ledger keeps it in memory, the fields a posted transfer
//! needs in its first cache line.
//!
//! The record clients send, look up and snapshot is `Account`, whose layout is the wire format.
//! In it a posted transfer needs both cache lines of each account: the id and `debits_posted` in
//! the first, `credits_posted`, `ledger`, `flags` and the list head in the second, and the
//! pending balances (for the overflow and limit checks) in both. Held in this order instead, a
//! posted transfer between accounts with nothing pending reads and writes one line per account:
//!
//! ```text
//! line 0  id | debits_posted | credits_posted | ledger | code | flags | reserved | user_data_32
//! line 1  debits_pending | credits_pending | user_data_128 | user_data_64 | timestamp
//! ```
//!
//! What the first line cannot hold is whether the pending balances are zero, so two bits of
//! `flags` that no client may set (`AccountFlags::ALL` leaves them out, `reserved_flag` refuses
//! them) say so, kept exact by the only two ways to write a pending balance here. Clients never
//! see them, nor the list head in `reserved`: every record that leaves the ledger goes through
//! `StoredAccount::public`, and nothing else reads `flags` but through `flags()`.

use zerocopy::{Immutable, IntoBytes};

use crate::types::{Account, AccountFlags};

/// Set exactly when `debits_pending` is not zero.
const DEBITS_PENDING_NONZERO: u16 = 1 << 15;
/// Set exactly when `credits_pending` is not zero.
const CREDITS_PENDING_NONZERO: u16 = 1 << 14;
const INTERNAL_FLAGS: u16 = DEBITS_PENDING_NONZERO | CREDITS_PENDING_NONZERO;
const _: () = assert!(AccountFlags::ALL & INTERNAL_FLAGS == 0);

/// An account in memory (see the module comment). The same fields as `Account`, 128 bytes, the
/// first 64 all that a posted transfer between accounts with nothing pending touches. Built only
/// from an `Account` (`new`), never from bytes, so its bits always agree with its balances.
#[repr(C)]
#[derive(IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StoredAccount {
    pub id: u128,
    pub debits_posted: u128,
    pub credits_posted: u128,
    pub ledger: u32,
    pub code: u16,
    /// The client's flags, and the internal bits above.
    flags: u16,
    /// The head of the account's transfer list, plus one (`Ledger`'s `transfers_head`).
    pub(crate) reserved: u32,
    pub user_data_32: u32,
    // Second cache line.
    debits_pending: u128,
    credits_pending: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub timestamp: u64,
}

const _: () = assert!(core::mem::size_of::<StoredAccount>() == 128);
const _: () = assert!(core::mem::offset_of!(StoredAccount, user_data_32) + 4 == 64);
const _: () = assert!(core::mem::offset_of!(StoredAccount, debits_pending) == 64);

impl StoredAccount {
    /// `account` as the ledger keeps it: its list head empty, its pending bits set from its
    /// balances. Its `reserved` and its flags outside `AccountFlags::ALL` must be zero (the
    /// caller has refused anything else).
    pub fn new(account: &Account) -> StoredAccount {
        assert_eq!(account.reserved, 0);
        assert_eq!(account.flags & !AccountFlags::ALL, 0);
        let mut stored = StoredAccount {
            id: account.id,
            debits_posted: account.debits_posted,
            credits_posted: account.credits_posted,
            ledger: account.ledger,
            code: account.code,
            flags: account.flags,
            reserved: 0,
            user_data_32: account.user_data_32,
            debits_pending: 0,
            credits_pending: 0,
            user_data_128: account.user_data_128,
            user_data_64: account.user_data_64,
            timestamp: account.timestamp,
        };
        stored.set_debits_pending(account.debits_pending);
        stored.set_credits_pending(account.credits_pending);
        stored
    }

    /// The account as clients see it: `reserved` zero, the client's flags only.
    pub fn public(&self) -> Account {
        Account {
            id: self.id,
            debits_pending: self.debits_pending,
            debits_posted: self.debits_posted,
            credits_pending: self.credits_pending,
            credits_posted: self.credits_posted,
            user_data_128: self.user_data_128,
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
            reserved: 0,
            ledger: self.ledger,
            code: self.code,
            flags: self.flags(),
            timestamp: self.timestamp,
        }
    }

    /// The client's flags.
    #[inline(always)]
    pub fn flags(&self) -> u16 {
        self.flags & !INTERNAL_FLAGS
    }

    #[inline(always)]
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags() & flag != 0
    }

    /// Reads the second cache line.
    #[inline(always)]
    pub fn debits_pending(&self) -> u128 {
        self.debits_pending
    }

    /// Reads the second cache line.
    #[inline(always)]
    pub fn credits_pending(&self) -> u128 {
        self.credits_pending
    }

    /// Whether `debits_pending` is zero, from the first cache line.
    #[inline(always)]
    pub fn debits_pending_is_zero(&self) -> bool {
        self.flags & DEBITS_PENDING_NONZERO == 0
    }

    /// Whether `credits_pending` is zero, from the first cache line.
    #[inline(always)]
    pub fn credits_pending_is_zero(&self) -> bool {
        self.flags & CREDITS_PENDING_NONZERO == 0
    }

    /// Whether both pending balances are zero, from the first cache line.
    #[inline(always)]
    pub fn nothing_pending(&self) -> bool {
        self.flags & INTERNAL_FLAGS == 0
    }

    /// Whether a change of this account may need its second cache line: something pending, or a
    /// history row (which records every balance).
    #[inline(always)]
    pub(crate) fn second_line_needed(&self) -> bool {
        self.flags & (INTERNAL_FLAGS | AccountFlags::HISTORY) != 0
    }

    #[inline(always)]
    pub(crate) fn set_debits_pending(&mut self, value: u128) {
        self.debits_pending = value;
        self.flags = (self.flags & !DEBITS_PENDING_NONZERO)
            | if value != 0 {
                DEBITS_PENDING_NONZERO
            } else {
                0
            };
    }

    #[inline(always)]
    pub(crate) fn set_credits_pending(&mut self, value: u128) {
        self.credits_pending = value;
        self.flags = (self.flags & !CREDITS_PENDING_NONZERO)
            | if value != 0 {
                CREDITS_PENDING_NONZERO
            } else {
                0
            };
    }

    /// The four balances in `Account`'s order: debits pending, debits posted, credits pending,
    /// credits posted.
    pub(crate) fn balances(&self) -> [u128; 4] {
        [
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
        ]
    }

    pub(crate) fn set_balances(
        &mut self,
        [debits_pending, debits_posted, credits_pending, credits_posted]: [u128; 4],
    ) {
        self.set_debits_pending(debits_pending);
        self.debits_posted = debits_posted;
        self.set_credits_pending(credits_pending);
        self.credits_posted = credits_posted;
    }

    /// The internal bits agree with the balances (`Ledger::check_invariants`).
    pub(crate) fn check_internal_flags(&self) {
        assert_eq!(self.debits_pending_is_zero(), self.debits_pending == 0);
        assert_eq!(self.credits_pending_is_zero(), self.credits_pending == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_survives_the_round_trip_and_its_bits_follow_its_pending_balances() {
        let account = Account {
            id: 7,
            debits_pending: 1,
            debits_posted: 2,
            credits_pending: 0,
            credits_posted: 4,
            user_data_128: 5,
            user_data_64: 6,
            user_data_32: 7,
            reserved: 0,
            ledger: 8,
            code: 9,
            flags: AccountFlags::HISTORY | AccountFlags::LINKED,
            timestamp: 10,
        };
        let mut stored = StoredAccount::new(&account);
        assert_eq!(stored.public(), account);
        assert!(!stored.debits_pending_is_zero());
        assert!(stored.credits_pending_is_zero());
        assert_eq!(stored.flags(), account.flags);
        stored.check_internal_flags();

        stored.set_debits_pending(0);
        stored.set_credits_pending(3);
        stored.reserved = 99;
        assert!(stored.debits_pending_is_zero());
        assert!(!stored.credits_pending_is_zero());
        stored.check_internal_flags();
        let public = stored.public();
        assert_eq!((public.reserved, public.flags), (0, account.flags));
        assert_eq!((public.debits_pending, public.credits_pending), (0, 3));

        stored.set_balances([0, 0, 0, 0]);
        assert!(!stored.second_line_needed() || stored.has_flag(AccountFlags::HISTORY));
        stored.check_internal_flags();
    }
}
