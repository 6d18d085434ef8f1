//! Every result code, as a table: the fixture's state + a batch → the expected codes.
//! To add a case, add a row. The last test fails if some code has no row.

mod common;

use std::collections::BTreeSet;

use common::{account, transfer, with, Harness};
use tally_engine::{
    Account, AccountFlags as AF, CreateAccountResult as A, CreateTransferResult as T, Ledger,
    Transfer, TransferFlags as TF,
};

const BIG: u128 = u128::MAX - 5;
const NS_PER_SECOND: u64 = 1_000_000_000;

/// Accounts of the fixture, by id:
/// 1, 2: ledger 1 plain; 3: debits_must_not_exceed_credits; 4: credits_must_not_exceed_debits;
/// 5: ledger 2; 6: closed; 7: history; 8 (debits_posted BIG) → 9 (credits_posted BIG);
/// 10 (debits_pending BIG) → 11 (credits_pending BIG); 12, 13: fresh.
/// Transfers: 100 plain 1→2 of 10 (user data 7); 101 pending 1→2 of 10; 102 pending, posted;
/// 103 pending, voided; 104 pending with a 1 s timeout, expired; 105 pending 1→7 of 10.
/// Burned id: 200 (debit account not found).
fn fixture(accounts_max: usize, transfers_max: usize, history_rows_max: usize) -> Harness {
    let mut harness = Harness::new(Ledger::with_limits(
        accounts_max,
        transfers_max,
        history_rows_max,
    ));
    let accounts = [
        account(1, 1, 0),
        account(2, 1, 0),
        account(3, 1, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(4, 1, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(5, 2, 0),
        account(6, 1, AF::CLOSED),
        account(7, 1, AF::HISTORY),
        account(8, 1, 0),
        account(9, 1, 0),
        account(10, 1, 0),
        account(11, 1, 0),
        account(12, 1, 0),
        account(13, 1, 0),
    ];
    assert!(harness
        .accounts(&accounts)
        .iter()
        .all(|code| *code == A::Ok));
    let pending = |id| with(transfer(id, 1, 2, 10), |t| t.flags = TF::PENDING);
    let transfers = [
        with(transfer(100, 1, 2, 10), |t| t.user_data_64 = 7),
        pending(101),
        pending(102),
        pending(103),
        with(pending(104), |t| t.timeout = 1),
        with(transfer(105, 1, 7, 10), |t| t.flags = TF::PENDING),
        transfer(106, 8, 9, BIG),
        with(transfer(107, 10, 11, BIG), |t| t.flags = TF::PENDING),
        with(transfer(108, 1, 2, 10), |t| {
            t.flags = TF::POST_PENDING_TRANSFER;
            t.pending_id = 102;
        }),
        with(transfer(109, 0, 0, 0), |t| {
            t.flags = TF::VOID_PENDING_TRANSFER;
            t.pending_id = 103;
        }),
        transfer(200, 999, 2, 1),
    ];
    let mut expected = vec![T::Ok; transfers.len()];
    expected[transfers.len() - 1] = T::DebitAccountNotFound;
    assert_eq!(harness.transfers(&transfers), expected);
    // Let 104 expire.
    let later = harness.next_timestamp() + 2 * NS_PER_SECOND;
    assert_eq!(
        harness.transfers_at(later, &[transfer(110, 1, 2, 1)]),
        vec![T::Ok]
    );
    harness.ledger.check_invariants();
    harness
}

const FIXTURE_ACCOUNTS: usize = 13;
const FIXTURE_TRANSFER_IDS: usize = 12;
const ROOMY: usize = 1000;

struct TransferCase {
    name: &'static str,
    events: Vec<Transfer>,
    expected: Vec<T>,
    /// Batch timestamp; `None` = right after the fixture.
    timestamp: Option<u64>,
    /// (transfers_max, history_rows_max) of the fixture.
    limits: (usize, usize),
}

fn case(name: &'static str, event: Transfer, expected: T) -> TransferCase {
    TransferCase {
        name,
        events: vec![event],
        expected: vec![expected],
        timestamp: None,
        limits: (ROOMY, ROOMY),
    }
}

fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    with(transfer(id, 0, 0, amount), |t| {
        t.flags = TF::POST_PENDING_TRANSFER;
        t.pending_id = pending_id;
        t.ledger = 0;
        t.code = 0;
    })
}

fn void(id: u128, pending_id: u128, amount: u128) -> Transfer {
    with(post(id, pending_id, amount), |t| {
        t.flags = TF::VOID_PENDING_TRANSFER
    })
}

fn transfer_cases() -> Vec<TransferCase> {
    let plain = transfer(300, 1, 2, 5);
    let original_100 = with(transfer(100, 1, 2, 10), |t| t.user_data_64 = 7);
    let linked = |t: Transfer| with(t, |t| t.flags |= TF::LINKED);
    vec![
        case("ok", plain, T::Ok),
        case("ok_post_full_amount", post(300, 101, u128::MAX), T::Ok),
        case("ok_post_partial_amount", post(300, 101, 4), T::Ok),
        case("ok_void_with_zero_amount", void(300, 101, 0), T::Ok),
        case(
            "ok_balancing_moves_zero",
            with(transfer(300, 3, 1, 5), |t| t.flags = TF::BALANCING_DEBIT),
            T::Ok,
        ),
        TransferCase {
            name: "linked_event_failed",
            events: vec![linked(transfer(300, 1, 2, 5)), transfer(301, 3, 1, 5)],
            expected: vec![T::LinkedEventFailed, T::ExceedsCredits],
            ..case("", plain, T::Ok)
        },
        TransferCase {
            name: "linked_event_chain_open",
            events: vec![
                linked(transfer(300, 1, 2, 5)),
                linked(transfer(301, 1, 2, 5)),
            ],
            expected: vec![T::LinkedEventFailed, T::LinkedEventChainOpen],
            ..case("", plain, T::Ok)
        },
        TransferCase {
            // `exists` changes nothing and does not break the chain (design §2).
            name: "linked_chain_with_a_stored_member_commits",
            events: vec![
                linked(transfer(300, 1, 2, 5)),
                original_100,
                transfer(301, 1, 2, 5),
            ],
            expected: vec![T::Ok, T::Exists, T::Ok],
            ..case("", plain, T::Ok)
        },
        case(
            "timestamp_must_be_zero",
            with(plain, |t| t.timestamp = 1),
            T::TimestampMustBeZero,
        ),
        case(
            "reserved_flag",
            with(plain, |t| t.flags = 1 << 10),
            T::ReservedFlag,
        ),
        case(
            "id_must_not_be_zero",
            with(plain, |t| t.id = 0),
            T::IdMustNotBeZero,
        ),
        case(
            "id_must_not_be_int_max",
            with(plain, |t| t.id = u128::MAX),
            T::IdMustNotBeIntMax,
        ),
        case(
            "exists_with_different_flags",
            with(original_100, |t| t.flags = TF::PENDING),
            T::ExistsWithDifferentFlags,
        ),
        case(
            "exists_with_different_pending_id",
            with(original_100, |t| t.pending_id = 1),
            T::ExistsWithDifferentPendingId,
        ),
        case(
            "exists_with_different_timeout",
            with(original_100, |t| t.timeout = 1),
            T::ExistsWithDifferentTimeout,
        ),
        case(
            "exists_with_different_debit_account_id",
            with(original_100, |t| t.debit_account_id = 3),
            T::ExistsWithDifferentDebitAccountId,
        ),
        case(
            "exists_with_different_credit_account_id",
            with(original_100, |t| t.credit_account_id = 3),
            T::ExistsWithDifferentCreditAccountId,
        ),
        case(
            "exists_with_different_amount",
            with(original_100, |t| t.amount = 11),
            T::ExistsWithDifferentAmount,
        ),
        case(
            "exists_with_different_user_data_128",
            with(original_100, |t| t.user_data_128 = 1),
            T::ExistsWithDifferentUserData128,
        ),
        case(
            "exists_with_different_user_data_64",
            with(original_100, |t| t.user_data_64 = 1),
            T::ExistsWithDifferentUserData64,
        ),
        case(
            "exists_with_different_user_data_32",
            with(original_100, |t| t.user_data_32 = 1),
            T::ExistsWithDifferentUserData32,
        ),
        case(
            "exists_with_different_ledger",
            with(original_100, |t| t.ledger = 2),
            T::ExistsWithDifferentLedger,
        ),
        case(
            "exists_with_different_code",
            with(original_100, |t| t.code = 2),
            T::ExistsWithDifferentCode,
        ),
        case("exists", original_100, T::Exists),
        case(
            "exists_post_retried_with_zero_fields",
            post(108, 102, 10),
            T::Exists,
        ),
        case(
            "exists_post_retried_with_amount_max",
            post(108, 102, u128::MAX),
            T::Exists,
        ),
        case(
            "id_already_failed",
            transfer(200, 1, 2, 1),
            T::IdAlreadyFailed,
        ),
        case(
            "flags_are_mutually_exclusive",
            with(post(300, 101, 1), |t| t.flags |= TF::PENDING),
            T::FlagsAreMutuallyExclusive,
        ),
        case(
            "flags_are_mutually_exclusive_post_void",
            with(post(300, 101, 1), |t| t.flags |= TF::VOID_PENDING_TRANSFER),
            T::FlagsAreMutuallyExclusive,
        ),
        case(
            "flags_are_mutually_exclusive_balancing_post",
            with(post(300, 101, 1), |t| t.flags |= TF::BALANCING_CREDIT),
            T::FlagsAreMutuallyExclusive,
        ),
        case(
            "debit_account_id_must_not_be_zero",
            with(plain, |t| t.debit_account_id = 0),
            T::DebitAccountIdMustNotBeZero,
        ),
        case(
            "debit_account_id_must_not_be_int_max",
            with(plain, |t| t.debit_account_id = u128::MAX),
            T::DebitAccountIdMustNotBeIntMax,
        ),
        case(
            "credit_account_id_must_not_be_zero",
            with(plain, |t| t.credit_account_id = 0),
            T::CreditAccountIdMustNotBeZero,
        ),
        case(
            "credit_account_id_must_not_be_int_max",
            with(plain, |t| t.credit_account_id = u128::MAX),
            T::CreditAccountIdMustNotBeIntMax,
        ),
        case(
            "accounts_must_be_different",
            with(plain, |t| t.credit_account_id = 1),
            T::AccountsMustBeDifferent,
        ),
        case(
            "pending_id_must_be_zero",
            with(plain, |t| t.pending_id = 101),
            T::PendingIdMustBeZero,
        ),
        case(
            "pending_id_must_not_be_zero",
            post(300, 0, 1),
            T::PendingIdMustNotBeZero,
        ),
        case(
            "pending_id_must_not_be_int_max",
            post(300, u128::MAX, 1),
            T::PendingIdMustNotBeIntMax,
        ),
        case(
            "pending_id_must_be_different",
            post(300, 300, 1),
            T::PendingIdMustBeDifferent,
        ),
        case(
            "timeout_reserved_for_pending_transfer",
            with(plain, |t| t.timeout = 1),
            T::TimeoutReservedForPendingTransfer,
        ),
        case(
            "timeout_reserved_for_pending_transfer_on_post",
            with(post(300, 101, 1), |t| t.timeout = 1),
            T::TimeoutReservedForPendingTransfer,
        ),
        case(
            "ledger_must_not_be_zero",
            with(plain, |t| t.ledger = 0),
            T::LedgerMustNotBeZero,
        ),
        case(
            "code_must_not_be_zero",
            with(plain, |t| t.code = 0),
            T::CodeMustNotBeZero,
        ),
        TransferCase {
            limits: (FIXTURE_TRANSFER_IDS, ROOMY),
            ..case(
                "transfers_capacity_exceeded",
                plain,
                T::TransfersCapacityExceeded,
            )
        },
        case(
            "debit_account_not_found",
            with(plain, |t| t.debit_account_id = 999),
            T::DebitAccountNotFound,
        ),
        case(
            "credit_account_not_found",
            with(plain, |t| t.credit_account_id = 999),
            T::CreditAccountNotFound,
        ),
        case(
            "accounts_must_have_the_same_ledger",
            with(plain, |t| t.credit_account_id = 5),
            T::AccountsMustHaveTheSameLedger,
        ),
        case(
            "transfer_must_have_the_same_ledger_as_accounts",
            with(plain, |t| t.ledger = 2),
            T::TransferMustHaveTheSameLedgerAsAccounts,
        ),
        case(
            "pending_transfer_not_found",
            post(300, 999, 1),
            T::PendingTransferNotFound,
        ),
        case(
            "pending_transfer_not_pending",
            post(300, 100, 1),
            T::PendingTransferNotPending,
        ),
        case(
            "pending_transfer_has_different_debit_account_id",
            with(post(300, 101, 1), |t| t.debit_account_id = 3),
            T::PendingTransferHasDifferentDebitAccountId,
        ),
        case(
            "pending_transfer_has_different_credit_account_id",
            with(post(300, 101, 1), |t| t.credit_account_id = 3),
            T::PendingTransferHasDifferentCreditAccountId,
        ),
        case(
            "pending_transfer_has_different_ledger",
            with(post(300, 101, 1), |t| t.ledger = 2),
            T::PendingTransferHasDifferentLedger,
        ),
        case(
            "pending_transfer_has_different_code",
            with(post(300, 101, 1), |t| t.code = 2),
            T::PendingTransferHasDifferentCode,
        ),
        case(
            "exceeds_pending_transfer_amount",
            post(300, 101, 11),
            T::ExceedsPendingTransferAmount,
        ),
        case(
            "pending_transfer_has_different_amount",
            void(300, 101, 5),
            T::PendingTransferHasDifferentAmount,
        ),
        case(
            "pending_transfer_already_posted",
            post(300, 102, 1),
            T::PendingTransferAlreadyPosted,
        ),
        case(
            "pending_transfer_already_voided",
            void(300, 103, 0),
            T::PendingTransferAlreadyVoided,
        ),
        case(
            "pending_transfer_expired",
            post(300, 104, 1),
            T::PendingTransferExpired,
        ),
        case(
            "debit_account_already_closed",
            with(plain, |t| t.debit_account_id = 6),
            T::DebitAccountAlreadyClosed,
        ),
        case(
            "credit_account_already_closed",
            with(plain, |t| t.credit_account_id = 6),
            T::CreditAccountAlreadyClosed,
        ),
        case(
            "overflows_debits_pending",
            with(transfer(300, 10, 13, 10), |t| t.flags = TF::PENDING),
            T::OverflowsDebitsPending,
        ),
        case(
            "overflows_credits_pending",
            with(transfer(300, 12, 11, 10), |t| t.flags = TF::PENDING),
            T::OverflowsCreditsPending,
        ),
        case(
            "overflows_debits_posted",
            transfer(300, 8, 13, 10),
            T::OverflowsDebitsPosted,
        ),
        case(
            "overflows_credits_posted",
            transfer(300, 13, 9, 10),
            T::OverflowsCreditsPosted,
        ),
        case(
            "overflows_debits",
            transfer(300, 10, 13, 10),
            T::OverflowsDebits,
        ),
        case(
            "overflows_credits",
            transfer(300, 12, 11, 10),
            T::OverflowsCredits,
        ),
        TransferCase {
            timestamp: Some(u64::MAX - NS_PER_SECOND),
            ..case(
                "overflows_timeout",
                with(plain, |t| {
                    t.flags = TF::PENDING;
                    t.timeout = 2;
                }),
                T::OverflowsTimeout,
            )
        },
        case("exceeds_credits", transfer(300, 3, 1, 1), T::ExceedsCredits),
        case("exceeds_debits", transfer(300, 1, 4, 1), T::ExceedsDebits),
        TransferCase {
            limits: (ROOMY, 1),
            ..case(
                "history_capacity_exceeded",
                transfer(300, 1, 7, 1),
                T::HistoryCapacityExceeded,
            )
        },
    ]
}

#[test]
fn create_transfers_table() {
    for case in transfer_cases() {
        let mut harness = fixture(ROOMY, case.limits.0, case.limits.1);
        let digest_before = harness.ledger.digest();
        let failed_before = harness.ledger.failed_ids_count();
        let timestamp = case.timestamp.unwrap_or(harness.next_timestamp());
        let actual = harness.transfers_at(timestamp, &case.events);
        assert_eq!(actual, case.expected, "case {}", case.name);
        harness.ledger.check_invariants();
        // A single failing event changes nothing but (for transient failures) the burned ids.
        if case.events.len() == 1 && case.expected[0] != T::Ok {
            let burned = case.expected[0].is_transient() as usize;
            assert_eq!(
                harness.ledger.failed_ids_count(),
                failed_before + burned,
                "case {}",
                case.name
            );
            if burned == 0 {
                assert_eq!(harness.ledger.digest(), digest_before, "case {}", case.name);
            }
        }
    }
}

struct AccountCase {
    name: &'static str,
    events: Vec<Account>,
    expected: Vec<A>,
    accounts_max: usize,
}

fn account_case(name: &'static str, event: Account, expected: A) -> AccountCase {
    AccountCase {
        name,
        events: vec![event],
        expected: vec![expected],
        accounts_max: ROOMY,
    }
}

fn account_cases() -> Vec<AccountCase> {
    let fresh = account(500, 1, 0);
    let existing = account(1, 1, 0);
    let linked = |a: Account| with(a, |a| a.flags |= AF::LINKED);
    vec![
        account_case("ok", fresh, A::Ok),
        AccountCase {
            name: "linked_event_failed",
            events: vec![linked(fresh), account(501, 0, 0)],
            expected: vec![A::LinkedEventFailed, A::LedgerMustNotBeZero],
            accounts_max: ROOMY,
        },
        AccountCase {
            name: "linked_event_chain_open",
            events: vec![linked(fresh)],
            expected: vec![A::LinkedEventChainOpen],
            accounts_max: ROOMY,
        },
        account_case(
            "timestamp_must_be_zero",
            with(fresh, |a| a.timestamp = 1),
            A::TimestampMustBeZero,
        ),
        account_case(
            "reserved_field",
            with(fresh, |a| a.reserved = 1),
            A::ReservedField,
        ),
        account_case(
            "reserved_flag",
            with(fresh, |a| a.flags = 1 << 12),
            A::ReservedFlag,
        ),
        account_case(
            "id_must_not_be_zero",
            with(fresh, |a| a.id = 0),
            A::IdMustNotBeZero,
        ),
        account_case(
            "id_must_not_be_int_max",
            with(fresh, |a| a.id = u128::MAX),
            A::IdMustNotBeIntMax,
        ),
        account_case(
            "flags_are_mutually_exclusive",
            with(fresh, |a| {
                a.flags = AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::CREDITS_MUST_NOT_EXCEED_DEBITS
            }),
            A::FlagsAreMutuallyExclusive,
        ),
        account_case(
            "debits_pending_must_be_zero",
            with(fresh, |a| a.debits_pending = 1),
            A::DebitsPendingMustBeZero,
        ),
        account_case(
            "debits_posted_must_be_zero",
            with(fresh, |a| a.debits_posted = 1),
            A::DebitsPostedMustBeZero,
        ),
        account_case(
            "credits_pending_must_be_zero",
            with(fresh, |a| a.credits_pending = 1),
            A::CreditsPendingMustBeZero,
        ),
        account_case(
            "credits_posted_must_be_zero",
            with(fresh, |a| a.credits_posted = 1),
            A::CreditsPostedMustBeZero,
        ),
        account_case(
            "ledger_must_not_be_zero",
            with(fresh, |a| a.ledger = 0),
            A::LedgerMustNotBeZero,
        ),
        account_case(
            "code_must_not_be_zero",
            with(fresh, |a| a.code = 0),
            A::CodeMustNotBeZero,
        ),
        account_case(
            "exists_with_different_flags",
            with(existing, |a| a.flags = AF::HISTORY),
            A::ExistsWithDifferentFlags,
        ),
        account_case(
            "exists_with_different_user_data_128",
            with(existing, |a| a.user_data_128 = 1),
            A::ExistsWithDifferentUserData128,
        ),
        account_case(
            "exists_with_different_user_data_64",
            with(existing, |a| a.user_data_64 = 1),
            A::ExistsWithDifferentUserData64,
        ),
        account_case(
            "exists_with_different_user_data_32",
            with(existing, |a| a.user_data_32 = 1),
            A::ExistsWithDifferentUserData32,
        ),
        account_case(
            "exists_with_different_ledger",
            with(existing, |a| a.ledger = 2),
            A::ExistsWithDifferentLedger,
        ),
        account_case(
            "exists_with_different_code",
            with(existing, |a| a.code = 2),
            A::ExistsWithDifferentCode,
        ),
        account_case("exists", existing, A::Exists),
        AccountCase {
            accounts_max: FIXTURE_ACCOUNTS,
            ..account_case(
                "accounts_capacity_exceeded",
                fresh,
                A::AccountsCapacityExceeded,
            )
        },
    ]
}

#[test]
fn create_accounts_table() {
    for case in account_cases() {
        let mut harness = fixture(case.accounts_max, ROOMY, ROOMY);
        let actual = harness.accounts(&case.events);
        assert_eq!(actual, case.expected, "case {}", case.name);
        harness.ledger.check_invariants();
    }
}

#[test]
fn every_result_code_has_a_row() {
    let transfer_codes: BTreeSet<T> = transfer_cases()
        .iter()
        .flat_map(|case| case.expected.clone())
        .collect();
    let missing: Vec<&str> = T::ALL
        .iter()
        .filter(|code| !transfer_codes.contains(code))
        .map(|code| code.name())
        .collect();
    assert!(
        missing.is_empty(),
        "transfer codes without a row: {missing:?}"
    );
    let account_codes: BTreeSet<A> = account_cases()
        .iter()
        .flat_map(|case| case.expected.clone())
        .collect();
    let missing: Vec<&str> = A::ALL
        .iter()
        .filter(|code| !account_codes.contains(code))
        .map(|code| code.name())
        .collect();
    assert!(
        missing.is_empty(),
        "account codes without a row: {missing:?}"
    );
}
