//! The fixed-layout records: what goes into the log, what the engine stores, what queries return.
//!
//! Every record is `#[repr(C)]`, has no padding, and is read and written as little-endian bytes
//! with zerocopy. The layouts are part of the on-disk and wire format: changing one is a format
//! version change.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(not(target_endian = "little"))]
compile_error!("the record layouts are little-endian; big-endian targets are not supported");

/// An account: balances in one ledger (currency or asset). 128 bytes.
///
/// Balances only change through transfers; on creation they must be zero.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Default, Hash,
)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Must be zero.
    pub reserved: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    /// Assigned by the engine; must be zero in a create event.
    pub timestamp: u64,
}

/// A transfer: `amount` moves from `debit_account_id` to `credit_account_id`. 128 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Default, Hash,
)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    /// For `post_pending_transfer` / `void_pending_transfer`: the id of the pending transfer.
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Seconds until a pending transfer expires; 0 = never. Only for `pending` transfers.
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    /// Assigned by the engine; must be zero in a create event.
    pub timestamp: u64,
}

impl Account {
    /// Accounts `1..=count` of ledger 1, code 1, no flags: the set-up of many unit tests.
    #[cfg(test)]
    pub(crate) fn plain_for_tests(count: u128) -> Vec<Account> {
        (1..=count)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Account::default()
            })
            .collect()
    }

    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

impl Transfer {
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

macro_rules! flag_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$flag_meta:meta])* $flag:ident = $bit:literal => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;

        impl $name {
            $($(#[$flag_meta])* pub const $flag: u16 = 1 << $bit;)*
            /// Every defined flag; any other bit set is `reserved_flag`.
            pub const ALL: u16 = 0 $(| (1 << $bit))*;
            /// Every flag with its name, in bit order.
            pub const NAMED: &'static [(u16, &'static str)] = &[$((1 << $bit, $text),)*];

            /// The names of the flags set in `bits`, in bit order (unknown bits are left out).
            pub fn names(bits: u16) -> Vec<&'static str> {
                Self::NAMED.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, name)| *name).collect()
            }

            /// The bit of the flag called `name`.
            pub fn from_name(name: &str) -> Option<u16> {
                Self::NAMED.iter().find(|(_, text)| *text == name).map(|(bit, _)| *bit)
            }
        }
    };
}

flag_set! {
    /// Account flag bits (`Account::flags`).
    AccountFlags {
        /// This event and the next one succeed or fail together.
        LINKED = 0 => "linked",
        /// `debits_pending + debits_posted` may never exceed `credits_posted`.
        DEBITS_MUST_NOT_EXCEED_CREDITS = 1 => "debits_must_not_exceed_credits",
        /// `credits_pending + credits_posted` may never exceed `debits_posted`.
        CREDITS_MUST_NOT_EXCEED_DEBITS = 2 => "credits_must_not_exceed_debits",
        /// Record the balances after every transfer that changes them (`get_account_balances`).
        HISTORY = 3 => "history",
        /// The account takes no new transfers.
        CLOSED = 4 => "closed",
    }
}

flag_set! {
    /// Transfer flag bits (`Transfer::flags`).
    TransferFlags {
        /// This event and the next one succeed or fail together.
        LINKED = 0 => "linked",
        /// Reserve the amount (pending balances) until posted, voided or expired.
        PENDING = 1 => "pending",
        /// Post (part of) a pending transfer named by `pending_id`.
        POST_PENDING_TRANSFER = 2 => "post_pending_transfer",
        /// Release a pending transfer named by `pending_id`.
        VOID_PENDING_TRANSFER = 3 => "void_pending_transfer",
        /// Move at most what the debit account has available (never below zero).
        BALANCING_DEBIT = 4 => "balancing_debit",
        /// Move at most what the credit account has available (never below zero).
        BALANCING_CREDIT = 5 => "balancing_credit",
    }
}

/// The writes that go through the log. Reads (lookups, queries) never do.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateAccounts = 1,
    CreateTransfers = 2,
}

/// `Operation::try_from(byte)` for a byte that names no operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0}")]
pub struct UnknownOperation(pub u8);

impl TryFrom<u8> for Operation {
    type Error = UnknownOperation;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Operation::CreateAccounts),
            2 => Ok(Operation::CreateTransfers),
            other => Err(UnknownOperation(other)),
        }
    }
}

/// The binary result of one event. 16 bytes.
///
/// `status` is a `CreateAccountResult` or `CreateTransferResult` code. `timestamp` is the event's
/// timestamp when ok; the existing object's timestamp for `exists` and `exists_with_different_*`;
/// otherwise 0.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Default, Hash,
)]
pub struct EventResult {
    pub index: u32,
    pub status: u32,
    pub timestamp: u64,
}

/// Which transfers or balance rows of one account a query returns.
///
/// Zero means unbounded everywhere: `timestamp_min == 0` and `timestamp_max == 0` leave that end
/// of the range open, `limit == 0` returns up to `limits::QUERY_RESULTS_MAX`, and `flags` with
/// neither `DEBITS` nor `CREDITS` returns both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct AccountFilter {
    pub account_id: u128,
    /// Inclusive lower bound on the transfer timestamp; 0 = unbounded.
    pub timestamp_min: u64,
    /// Inclusive upper bound on the transfer timestamp; 0 = unbounded.
    pub timestamp_max: u64,
    /// The most results; 0 = `limits::QUERY_RESULTS_MAX` (also the ceiling).
    pub limit: u32,
    /// `AccountFilter::DEBITS | CREDITS | REVERSED`.
    pub flags: u32,
}

impl AccountFilter {
    /// Transfers where the account is the debit account.
    pub const DEBITS: u32 = 1 << 0;
    /// Transfers where the account is the credit account.
    pub const CREDITS: u32 = 1 << 1;
    /// Newest first (default: oldest first).
    pub const REVERSED: u32 = 1 << 2;
    pub const FLAGS_ALL: u32 = Self::DEBITS | Self::CREDITS | Self::REVERSED;
}

/// An account's balances right after the transfer with `timestamp` changed them. 128 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccountBalance {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    /// The timestamp of the transfer that produced these balances.
    pub timestamp: u64,
    pub reserved: [u8; 56],
}

impl Default for AccountBalance {
    fn default() -> Self {
        AccountBalance {
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            timestamp: 0,
            reserved: [0; 56],
        }
    }
}

/// Sums over all accounts of one ledger. Sums wrap modulo 2^128 (each account balance fits u128,
/// their sum over many accounts might not); the invariant Σdebits = Σcredits holds either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct LedgerTotals {
    pub accounts_count: u64,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}
