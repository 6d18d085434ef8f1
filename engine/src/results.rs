//! Result codes: one per event. The numeric codes are part of the wire format and never change
//! meaning; new codes are appended. The order of the variants here is the order in which the
//! checks are made (precedence), except `linked_event_failed` / `linked_event_chain_open`, which
//! are assigned by the chain logic around the checks, and the capacity codes, which were appended.

macro_rules! result_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $code:literal => $text:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$variant_meta])* $variant = $code,)*
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable snake_case name, e.g. `"exceeds_credits"`.
            pub fn name(&self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The stable numeric code.
            pub fn code(self) -> u32 {
                self as u32
            }

            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|variant| variant.name() == name)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                formatter.write_str(self.name())
            }
        }
    };
}

result_codes! {
    /// The result of one `create_accounts` event.
    CreateAccountResult {
        Ok = 0 => "ok",
        /// Another event of the same linked chain failed; this one was rolled back.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has `linked` set: the chain never closes.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        ReservedField = 4 => "reserved_field",
        ReservedFlag = 5 => "reserved_flag",
        IdMustNotBeZero = 6 => "id_must_not_be_zero",
        IdMustNotBeIntMax = 7 => "id_must_not_be_int_max",
        FlagsAreMutuallyExclusive = 8 => "flags_are_mutually_exclusive",
        DebitsPendingMustBeZero = 9 => "debits_pending_must_be_zero",
        DebitsPostedMustBeZero = 10 => "debits_posted_must_be_zero",
        CreditsPendingMustBeZero = 11 => "credits_pending_must_be_zero",
        CreditsPostedMustBeZero = 12 => "credits_posted_must_be_zero",
        LedgerMustNotBeZero = 13 => "ledger_must_not_be_zero",
        CodeMustNotBeZero = 14 => "code_must_not_be_zero",
        ExistsWithDifferentFlags = 15 => "exists_with_different_flags",
        ExistsWithDifferentUserData128 = 16 => "exists_with_different_user_data_128",
        ExistsWithDifferentUserData64 = 17 => "exists_with_different_user_data_64",
        ExistsWithDifferentUserData32 = 18 => "exists_with_different_user_data_32",
        ExistsWithDifferentLedger = 19 => "exists_with_different_ledger",
        ExistsWithDifferentCode = 20 => "exists_with_different_code",
        Exists = 21 => "exists",
        /// The ledger holds its configured maximum of accounts.
        AccountsCapacityExceeded = 22 => "accounts_capacity_exceeded",
    }
}

result_codes! {
    /// The result of one `create_transfers` event.
    CreateTransferResult {
        Ok = 0 => "ok",
        /// Another event of the same linked chain failed; this one was rolled back.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has `linked` set: the chain never closes.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        ReservedFlag = 4 => "reserved_flag",
        IdMustNotBeZero = 5 => "id_must_not_be_zero",
        IdMustNotBeIntMax = 6 => "id_must_not_be_int_max",
        ExistsWithDifferentFlags = 7 => "exists_with_different_flags",
        ExistsWithDifferentPendingId = 8 => "exists_with_different_pending_id",
        ExistsWithDifferentTimeout = 9 => "exists_with_different_timeout",
        ExistsWithDifferentDebitAccountId = 10 => "exists_with_different_debit_account_id",
        ExistsWithDifferentCreditAccountId = 11 => "exists_with_different_credit_account_id",
        ExistsWithDifferentAmount = 12 => "exists_with_different_amount",
        ExistsWithDifferentUserData128 = 13 => "exists_with_different_user_data_128",
        ExistsWithDifferentUserData64 = 14 => "exists_with_different_user_data_64",
        ExistsWithDifferentUserData32 = 15 => "exists_with_different_user_data_32",
        ExistsWithDifferentLedger = 16 => "exists_with_different_ledger",
        ExistsWithDifferentCode = 17 => "exists_with_different_code",
        Exists = 18 => "exists",
        /// An earlier event with this id failed for a reason that could have changed since.
        IdAlreadyFailed = 19 => "id_already_failed",
        FlagsAreMutuallyExclusive = 20 => "flags_are_mutually_exclusive",
        DebitAccountIdMustNotBeZero = 21 => "debit_account_id_must_not_be_zero",
        DebitAccountIdMustNotBeIntMax = 22 => "debit_account_id_must_not_be_int_max",
        CreditAccountIdMustNotBeZero = 23 => "credit_account_id_must_not_be_zero",
        CreditAccountIdMustNotBeIntMax = 24 => "credit_account_id_must_not_be_int_max",
        AccountsMustBeDifferent = 25 => "accounts_must_be_different",
        PendingIdMustBeZero = 26 => "pending_id_must_be_zero",
        PendingIdMustNotBeZero = 27 => "pending_id_must_not_be_zero",
        PendingIdMustNotBeIntMax = 28 => "pending_id_must_not_be_int_max",
        PendingIdMustBeDifferent = 29 => "pending_id_must_be_different",
        TimeoutReservedForPendingTransfer = 30 => "timeout_reserved_for_pending_transfer",
        LedgerMustNotBeZero = 31 => "ledger_must_not_be_zero",
        CodeMustNotBeZero = 32 => "code_must_not_be_zero",
        /// The ledger holds its configured maximum of transfer ids (stored plus failed).
        TransfersCapacityExceeded = 33 => "transfers_capacity_exceeded",
        DebitAccountNotFound = 34 => "debit_account_not_found",
        CreditAccountNotFound = 35 => "credit_account_not_found",
        AccountsMustHaveTheSameLedger = 36 => "accounts_must_have_the_same_ledger",
        TransferMustHaveTheSameLedgerAsAccounts = 37 => "transfer_must_have_the_same_ledger_as_accounts",
        PendingTransferNotFound = 38 => "pending_transfer_not_found",
        PendingTransferNotPending = 39 => "pending_transfer_not_pending",
        PendingTransferHasDifferentDebitAccountId = 40 => "pending_transfer_has_different_debit_account_id",
        PendingTransferHasDifferentCreditAccountId = 41 => "pending_transfer_has_different_credit_account_id",
        PendingTransferHasDifferentLedger = 42 => "pending_transfer_has_different_ledger",
        PendingTransferHasDifferentCode = 43 => "pending_transfer_has_different_code",
        ExceedsPendingTransferAmount = 44 => "exceeds_pending_transfer_amount",
        PendingTransferHasDifferentAmount = 45 => "pending_transfer_has_different_amount",
        PendingTransferAlreadyPosted = 46 => "pending_transfer_already_posted",
        PendingTransferAlreadyVoided = 47 => "pending_transfer_already_voided",
        PendingTransferExpired = 48 => "pending_transfer_expired",
        DebitAccountAlreadyClosed = 49 => "debit_account_already_closed",
        CreditAccountAlreadyClosed = 50 => "credit_account_already_closed",
        OverflowsDebitsPending = 51 => "overflows_debits_pending",
        OverflowsCreditsPending = 52 => "overflows_credits_pending",
        OverflowsDebitsPosted = 53 => "overflows_debits_posted",
        OverflowsCreditsPosted = 54 => "overflows_credits_posted",
        OverflowsDebits = 55 => "overflows_debits",
        OverflowsCredits = 56 => "overflows_credits",
        OverflowsTimeout = 57 => "overflows_timeout",
        ExceedsCredits = 58 => "exceeds_credits",
        ExceedsDebits = 59 => "exceeds_debits",
        /// An account with `history` is involved and the history holds its configured maximum.
        HistoryCapacityExceeded = 60 => "history_capacity_exceeded",
    }
}

impl CreateTransferResult {
    /// Whether this failure depends on state that could change later, so that a retry could
    /// succeed. Such a failure burns the id: every later event with that id answers
    /// `id_already_failed`, so a retried request's outcome never flips.
    ///
    /// Capacity results are not transient in this sense: they are the operator's limits, and the
    /// id cannot be recorded when the table that would record it is full.
    pub fn is_transient(self) -> bool {
        use CreateTransferResult as R;
        matches!(
            self,
            R::DebitAccountNotFound
                | R::CreditAccountNotFound
                | R::PendingTransferNotFound
                | R::PendingTransferExpired
                | R::DebitAccountAlreadyClosed
                | R::CreditAccountAlreadyClosed
                | R::OverflowsDebitsPending
                | R::OverflowsCreditsPending
                | R::OverflowsDebitsPosted
                | R::OverflowsCreditsPosted
                | R::OverflowsDebits
                | R::OverflowsCredits
                | R::OverflowsTimeout
                | R::ExceedsCredits
                | R::ExceedsDebits
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_names_round_trip() {
        for (index, result) in CreateAccountResult::ALL.iter().enumerate() {
            assert_eq!(result.code() as usize, index);
            assert_eq!(CreateAccountResult::from_code(result.code()), Some(*result));
            assert_eq!(CreateAccountResult::from_name(result.name()), Some(*result));
        }
        for (index, result) in CreateTransferResult::ALL.iter().enumerate() {
            assert_eq!(result.code() as usize, index);
            assert_eq!(
                CreateTransferResult::from_code(result.code()),
                Some(*result)
            );
            assert_eq!(
                CreateTransferResult::from_name(result.name()),
                Some(*result)
            );
        }
        assert_eq!(CreateTransferResult::from_code(10_000), None);
        assert_eq!(
            CreateTransferResult::ExceedsCredits.name(),
            "exceeds_credits"
        );
    }
}
