//! What users do with a ledger, one test per use, plus the edge semantics worth a test each.

mod common;

use common::{account, transfer, with, Harness};
use tally_engine::{
    AccountFilter, AccountFlags as AF, BatchError, CreateAccountResult as A,
    CreateTransferResult as T, Ledger, Operation, Transfer, TransferFlags as TF,
};
use zerocopy::IntoBytes;

const OPERATOR: u128 = 1;
const ALICE_CASH: u128 = 10;
const ALICE_SAVINGS: u128 = 11;
const BOB: u128 = 20;

/// An operator account (the bank's side: may go negative) and user wallets that may not.
fn bank() -> Harness {
    let mut harness = Harness::new(Ledger::new());
    let user = AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::HISTORY;
    let results = harness.accounts(&[
        account(OPERATOR, 1, 0),
        account(ALICE_CASH, 1, user),
        account(ALICE_SAVINGS, 1, user),
        account(BOB, 1, user),
    ]);
    assert_eq!(results, vec![A::Ok; 4]);
    harness
}

fn deposit(harness: &mut Harness, id: u128, wallet: u128, amount: u128) {
    assert_eq!(
        harness.transfers(&[transfer(id, OPERATOR, wallet, amount)]),
        vec![T::Ok]
    );
}

#[test]
fn deposit_from_operator_account() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    assert_eq!(harness.balances(ALICE_CASH), (0, 0, 0, 500));
    assert_eq!(harness.balances(OPERATOR), (0, 500, 0, 0));
    harness.ledger.check_invariants();
}

#[test]
fn withdrawal_to_operator_account() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    assert_eq!(
        harness.transfers(&[transfer(101, ALICE_CASH, OPERATOR, 200)]),
        vec![T::Ok]
    );
    assert_eq!(harness.balances(ALICE_CASH), (0, 200, 0, 500));
    // A withdrawal past the balance is refused, and changes nothing.
    assert_eq!(
        harness.transfers(&[transfer(102, ALICE_CASH, OPERATOR, 301)]),
        vec![T::ExceedsCredits]
    );
    assert_eq!(harness.balances(ALICE_CASH), (0, 200, 0, 500));
    harness.ledger.check_invariants();
}

#[test]
fn rejected_overdraft_burns_the_id_so_a_retry_never_flips() {
    let mut harness = bank();
    assert_eq!(
        harness.transfers(&[transfer(100, ALICE_CASH, BOB, 50)]),
        vec![T::ExceedsCredits]
    );
    deposit(&mut harness, 101, ALICE_CASH, 500);
    // The same request again, now that money is there: still refused, as it was.
    assert_eq!(
        harness.transfers(&[transfer(100, ALICE_CASH, BOB, 50)]),
        vec![T::IdAlreadyFailed]
    );
    assert_eq!(harness.balances(BOB), (0, 0, 0, 0));
}

#[test]
fn idempotent_retry_answers_exists_and_changes_nothing() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    let digest = harness.ledger.digest();
    let timestamp = harness.next_timestamp();
    let results = harness
        .ledger
        .create_transfers(timestamp, &[transfer(100, OPERATOR, ALICE_CASH, 500)]);
    assert_eq!(results[0].status, T::Exists.code());
    // The original's timestamp, not this event's.
    assert_eq!(results[0].timestamp, harness.transfer(100).timestamp);
    assert_eq!(harness.ledger.digest(), digest);
    assert_eq!(
        harness.transfers(&[transfer(100, OPERATOR, ALICE_CASH, 501)]),
        vec![T::ExistsWithDifferentAmount]
    );
}

#[test]
fn move_between_own_wallets_atomically_with_linked() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    // Move 300 to savings and pay Bob 100 from savings: both or neither.
    let chain = [
        with(transfer(101, ALICE_CASH, ALICE_SAVINGS, 300), |t| {
            t.flags = TF::LINKED
        }),
        transfer(102, ALICE_SAVINGS, BOB, 100),
    ];
    assert_eq!(harness.transfers(&chain), vec![T::Ok, T::Ok]);
    assert_eq!(harness.balances(ALICE_CASH), (0, 300, 0, 500));
    assert_eq!(harness.balances(ALICE_SAVINGS), (0, 100, 0, 300));
    assert_eq!(harness.balances(BOB), (0, 0, 0, 100));

    // A chain whose second leg overdraws savings: the first leg is rolled back too.
    let chain = [
        with(transfer(103, ALICE_CASH, ALICE_SAVINGS, 100), |t| {
            t.flags = TF::LINKED
        }),
        transfer(104, ALICE_SAVINGS, BOB, 1_000),
    ];
    assert_eq!(
        harness.transfers(&chain),
        vec![T::LinkedEventFailed, T::ExceedsCredits]
    );
    assert_eq!(harness.balances(ALICE_CASH), (0, 300, 0, 500));
    assert_eq!(harness.balances(ALICE_SAVINGS), (0, 100, 0, 300));
    assert!(harness.ledger.lookup_transfers(&[103, 104]).is_empty());
    // Rolled back history too: two rows for savings (one per applied transfer).
    let filter = AccountFilter {
        account_id: ALICE_SAVINGS,
        ..AccountFilter::default()
    };
    assert_eq!(harness.ledger.get_account_balances(&filter).len(), 2);
    harness.ledger.check_invariants();
}

#[test]
fn a_retried_linked_chain_answers_exists_for_every_member() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    let chain = [
        with(transfer(101, ALICE_CASH, ALICE_SAVINGS, 10), |t| {
            t.flags = TF::LINKED
        }),
        transfer(102, ALICE_SAVINGS, BOB, 5),
    ];
    assert_eq!(harness.transfers(&chain), vec![T::Ok, T::Ok]);
    assert_eq!(harness.transfers(&chain), vec![T::Exists, T::Exists]);
    assert_eq!(harness.balances(BOB), (0, 0, 0, 5));
    // A chain whose later member fails keeps `exists` for the stored one.
    let reused = [
        with(transfer(101, ALICE_CASH, ALICE_SAVINGS, 10), |t| {
            t.flags = TF::LINKED
        }),
        transfer(103, ALICE_SAVINGS, BOB, 1_000_000),
    ];
    assert_eq!(
        harness.transfers(&reused),
        vec![T::Exists, T::ExceedsCredits]
    );
    assert_eq!(harness.balances(BOB), (0, 0, 0, 5));
}

#[test]
fn two_phase_post_full_amount_with_amount_max() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    let hold = with(transfer(101, ALICE_CASH, BOB, 120), |t| {
        t.flags = TF::PENDING
    });
    assert_eq!(harness.transfers(&[hold]), vec![T::Ok]);
    assert_eq!(harness.balances(ALICE_CASH), (120, 0, 0, 500));
    let post = Transfer {
        id: 102,
        pending_id: 101,
        amount: u128::MAX,
        flags: TF::POST_PENDING_TRANSFER,
        ..Transfer::default()
    };
    assert_eq!(harness.transfers(&[post]), vec![T::Ok]);
    assert_eq!(harness.balances(ALICE_CASH), (0, 120, 0, 500));
    assert_eq!(harness.balances(BOB), (0, 0, 0, 120));
    // Takes accounts, ledger and code from the pending transfer.
    let stored = harness.transfer(102);
    assert_eq!(
        (
            stored.debit_account_id,
            stored.credit_account_id,
            stored.amount
        ),
        (ALICE_CASH, BOB, 120)
    );
    assert_eq!((stored.ledger, stored.code), (1, 1));
    // Posted at most once.
    let again = Transfer { id: 103, ..post };
    assert_eq!(
        harness.transfers(&[again]),
        vec![T::PendingTransferAlreadyPosted]
    );
    harness.ledger.check_invariants();
}

#[test]
fn two_phase_partial_post_releases_the_rest() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    let hold = with(transfer(101, ALICE_CASH, BOB, 120), |t| {
        t.flags = TF::PENDING
    });
    assert_eq!(harness.transfers(&[hold]), vec![T::Ok]);
    let post = Transfer {
        id: 102,
        pending_id: 101,
        amount: 20,
        flags: TF::POST_PENDING_TRANSFER,
        ..Transfer::default()
    };
    assert_eq!(harness.transfers(&[post]), vec![T::Ok]);
    assert_eq!(harness.balances(ALICE_CASH), (0, 20, 0, 500));
    let void = Transfer {
        id: 103,
        pending_id: 101,
        flags: TF::VOID_PENDING_TRANSFER,
        ..Transfer::default()
    };
    assert_eq!(
        harness.transfers(&[void]),
        vec![T::PendingTransferAlreadyPosted]
    );
}

#[test]
fn pending_transfer_expires_by_batch_timestamps_only() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 500);
    let hold = with(transfer(101, ALICE_CASH, BOB, 120), |t| {
        t.flags = TF::PENDING;
        t.timeout = 1;
    });
    assert_eq!(harness.transfers(&[hold]), vec![T::Ok]);
    let created = harness.transfer(101).timestamp;
    // A batch one second later expires it before its events run.
    let later = created + 1_000_000_000;
    let post = Transfer {
        id: 102,
        pending_id: 101,
        amount: u128::MAX,
        flags: TF::POST_PENDING_TRANSFER,
        ..Transfer::default()
    };
    assert_eq!(
        harness.transfers_at(later, &[post]),
        vec![T::PendingTransferExpired]
    );
    assert_eq!(harness.balances(ALICE_CASH), (0, 0, 0, 500));
    harness.ledger.check_invariants();
}

#[test]
fn balancing_debit_moves_at_most_the_available_balance() {
    let mut harness = bank();
    deposit(&mut harness, 100, ALICE_CASH, 70);
    // "Sweep everything" from cash to savings.
    let sweep = with(transfer(101, ALICE_CASH, ALICE_SAVINGS, u128::MAX), |t| {
        t.flags = TF::BALANCING_DEBIT
    });
    assert_eq!(harness.transfers(&[sweep]), vec![T::Ok]);
    assert_eq!(harness.transfer(101).amount, 70);
    assert_eq!(harness.balances(ALICE_CASH), (0, 70, 0, 70));
    // Nothing left: ok, moving 0.
    let sweep_again = with(transfer(102, ALICE_CASH, ALICE_SAVINGS, 10), |t| {
        t.flags = TF::BALANCING_DEBIT
    });
    assert_eq!(harness.transfers(&[sweep_again]), vec![T::Ok]);
    assert_eq!(harness.transfer(102).amount, 0);
    // The retry of the first sweep is `exists` though it asked for more than it moved.
    assert_eq!(harness.transfers(&[sweep]), vec![T::Exists]);
}

#[test]
fn account_transfers_and_balances_are_filtered_and_ordered() {
    let mut harness = bank();
    for id in 0..5 {
        deposit(&mut harness, 100 + id, ALICE_CASH, 10);
    }
    assert_eq!(
        harness.transfers(&[transfer(200, ALICE_CASH, BOB, 5)]),
        vec![T::Ok]
    );
    let all = AccountFilter {
        account_id: ALICE_CASH,
        ..AccountFilter::default()
    };
    let ids = |transfers: Vec<Transfer>| transfers.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(harness.ledger.get_account_transfers(&all)),
        vec![100, 101, 102, 103, 104, 200]
    );
    let reversed = AccountFilter {
        flags: AccountFilter::REVERSED,
        limit: 2,
        ..all
    };
    assert_eq!(
        ids(harness.ledger.get_account_transfers(&reversed)),
        vec![200, 104]
    );
    let debits = AccountFilter {
        flags: AccountFilter::DEBITS,
        ..all
    };
    assert_eq!(
        ids(harness.ledger.get_account_transfers(&debits)),
        vec![200]
    );
    let oldest_two = AccountFilter {
        flags: AccountFilter::CREDITS,
        limit: 2,
        ..all
    };
    assert_eq!(
        ids(harness.ledger.get_account_transfers(&oldest_two)),
        vec![100, 101]
    );
    let t102 = harness.transfer(102).timestamp;
    let t103 = harness.transfer(103).timestamp;
    let window = AccountFilter {
        timestamp_min: t102,
        timestamp_max: t103,
        ..all
    };
    assert_eq!(
        ids(harness.ledger.get_account_transfers(&window)),
        vec![102, 103]
    );
    let balances = harness.ledger.get_account_balances(&all);
    assert_eq!(balances.len(), 6);
    assert_eq!(balances[5].credits_posted, 50);
    assert_eq!(balances[5].debits_posted, 5);
    assert_eq!(balances[5].timestamp, harness.transfer(200).timestamp);
    // The operator has no history flag.
    let operator = AccountFilter {
        account_id: OPERATOR,
        ..AccountFilter::default()
    };
    assert!(harness.ledger.get_account_balances(&operator).is_empty());
    // Unknown filter flags: nothing.
    assert!(harness
        .ledger
        .get_account_transfers(&AccountFilter {
            flags: 1 << 9,
            ..all
        })
        .is_empty());
}

#[test]
fn apply_refuses_malformed_batches_deterministically() {
    let mut ledger = Ledger::new();
    let chain = ledger.hash_chain();
    assert_eq!(
        ledger.apply(Operation::CreateAccounts, 1, &[]),
        Err(BatchError::Empty)
    );
    assert_eq!(
        ledger.apply(Operation::CreateAccounts, 2, &[0u8; 129]),
        Err(BatchError::SizeNotMultipleOfEventSize { size: 129 })
    );
    let too_many = vec![0u8; 128 * 8190];
    assert_eq!(
        ledger.apply(Operation::CreateTransfers, 3, &too_many),
        Err(BatchError::TooManyEvents { count: 8190 })
    );
    assert_eq!(
        ledger.apply(Operation::CreateTransfers, u64::MAX, &[0u8; 256]),
        Err(BatchError::TimestampOverflow {
            timestamp: u64::MAX,
            count: 2
        })
    );
    // Refused batches advance the chain (replicas agree on it) but change no state.
    assert_ne!(ledger.hash_chain(), chain);
    assert_eq!(ledger.batches_applied(), 4);
    assert_eq!(ledger.accounts_count(), 0);
    assert_eq!(ledger.last_timestamp(), 0);

    // Unaligned raw bytes decode the same as typed events.
    let accounts = [account(1, 1, 0), account(2, 1, 0)];
    let mut bytes = vec![0u8; 1];
    bytes.extend_from_slice(accounts.as_bytes());
    let mut typed = Ledger::new();
    let results = ledger
        .apply(Operation::CreateAccounts, 10, &bytes[1..])
        .expect("valid batch");
    assert_eq!(results, typed.create_accounts(10, &accounts));
    assert_eq!(ledger.digest(), typed.digest());
    assert_eq!(Operation::try_from(2), Ok(Operation::CreateTransfers));
    assert!(Operation::try_from(9).is_err());
}

#[test]
#[should_panic(expected = "not after")]
fn a_timestamp_that_does_not_advance_is_a_broken_invariant() {
    let mut ledger = Ledger::new();
    ledger.create_accounts(10, &[account(1, 1, 0)]);
    ledger.create_accounts(10, &[account(2, 1, 0)]);
}
