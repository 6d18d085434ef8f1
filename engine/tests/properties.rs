//! Property tests over random batches: invariants after every batch, deterministic replay,
//! snapshot mid-stream, digest independent of map layout, corrupt snapshots refused.

mod common;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tally_engine::{
    Account, AccountFlags as AF, EventResult, Ledger, Operation, Transfer, TransferFlags as TF,
};
use zerocopy::IntoBytes;

const ACCOUNT_IDS: u128 = 8;
const TRANSFER_IDS: u128 = 160;

#[derive(Clone, Debug)]
enum Batch {
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
}

/// A batch with the gap (ns) between the previous batch's last event and its first.
type TimedBatch = (u64, Batch);

/// Accounts 1..=6 are in ledger 1, the rest in ledger 2.
fn ledger_of(id: u128) -> u32 {
    if id <= 6 {
        1
    } else {
        2
    }
}

fn account_strategy() -> impl Strategy<Value = Account> {
    let flags = (0u8..4, any::<bool>(), prop::bool::weighted(0.1));
    (1..=ACCOUNT_IDS + 1, flags, 0u8..20).prop_map(|(id, (constraint, history, linked), noise)| {
        let mut flags = match constraint {
            1 => AF::DEBITS_MUST_NOT_EXCEED_CREDITS,
            2 => AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
            _ => 0,
        };
        if history {
            flags |= AF::HISTORY;
        }
        if linked {
            flags |= AF::LINKED;
        }
        Account {
            id,
            ledger: if noise == 1 { 3 } else { ledger_of(id) },
            code: if noise == 0 { 0 } else { 1 },
            flags,
            ..Account::default()
        }
    })
}

fn account_id_strategy() -> impl Strategy<Value = u128> {
    prop_oneof![20 => 1..=ACCOUNT_IDS, 1 => Just(0u128), 1 => Just(ACCOUNT_IDS + 1)]
}

fn amount_strategy() -> impl Strategy<Value = u128> {
    prop_oneof![
        6 => 0u128..200,
        1 => Just(0u128),
        1 => Just(u128::MAX),
        1 => Just(u128::MAX / 2),
    ]
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    let ids = (
        1..=TRANSFER_IDS,
        account_id_strategy(),
        account_id_strategy(),
    );
    let shape = (
        0u8..10,
        0..=TRANSFER_IDS,
        0u32..3,
        prop::bool::weighted(0.1),
        0u8..30,
    );
    (ids, amount_strategy(), shape).prop_map(
        |((id, debit, mut credit), amount, (kind, pending_id, timeout, linked, noise))| {
            // Mostly keep both accounts in one ledger.
            let known = |id: u128| (1..=ACCOUNT_IDS).contains(&id);
            if noise % 4 != 0 && known(debit) && known(credit) {
                credit = if debit <= 6 {
                    (credit - 1) % 6 + 1
                } else {
                    7 + credit % 2
                };
            }
            let mut transfer = Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger: if noise == 1 { 2 } else { ledger_of(debit) },
                code: 1,
                ..Transfer::default()
            };
            match kind {
                0..=2 => {
                    transfer.flags = TF::PENDING;
                    transfer.timeout = timeout;
                }
                3 | 4 => {
                    transfer.flags = if kind == 3 {
                        TF::POST_PENDING_TRANSFER
                    } else {
                        TF::VOID_PENDING_TRANSFER
                    };
                    transfer.pending_id = pending_id;
                    // Usually leave the inherited fields zero, as clients do.
                    if noise % 3 != 0 {
                        transfer.debit_account_id = 0;
                        transfer.credit_account_id = 0;
                        transfer.ledger = 0;
                        transfer.code = 0;
                    }
                }
                5 => transfer.flags = TF::BALANCING_DEBIT,
                6 => transfer.flags = TF::BALANCING_CREDIT,
                _ => {}
            }
            if linked {
                transfer.flags |= TF::LINKED;
            }
            if noise == 0 {
                transfer.flags |= TF::PENDING | TF::VOID_PENDING_TRANSFER;
            }
            transfer
        },
    )
}

fn gap_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(1u64), 1 => Just(700_000_000u64), 1 => Just(1_500_000_000u64)]
}

type RetryPick = (prop::sample::Index, prop::sample::Index);

fn batches_strategy() -> impl Strategy<Value = Vec<TimedBatch>> {
    let accounts = prop::collection::vec(account_strategy(), 1..8).prop_map(Batch::Accounts);
    let transfers = prop::collection::vec(transfer_strategy(), 1..12).prop_map(Batch::Transfers);
    let first = prop::collection::vec(account_strategy(), 6..12).prop_map(Batch::Accounts);
    let batch = prop_oneof![1 => accounts, 6 => transfers];
    let rest = prop::collection::vec((gap_strategy(), batch), 1..24);
    let retries = prop::collection::vec(any::<RetryPick>(), 0..12);
    (first, rest, retries).prop_map(|(first, mut rest, retries)| {
        rest.insert(0, (1, first));
        retry_earlier_transfers(&mut rest, &retries);
        rest
    })
}

/// Replaces some transfer events by exact copies of earlier ones: client retries.
fn retry_earlier_transfers(batches: &mut [TimedBatch], retries: &[RetryPick]) {
    let mut seen: Vec<Transfer> = Vec::new();
    let mut retries = retries.iter();
    for (_, batch) in batches.iter_mut() {
        let Batch::Transfers(events) = batch else {
            continue;
        };
        // Posts and voids mostly name an earlier pending transfer.
        let pendings: Vec<u128> = seen
            .iter()
            .filter(|t| t.flags & TF::PENDING != 0)
            .map(|t| t.id)
            .collect();
        for event in events.iter_mut() {
            let resolving = TF::POST_PENDING_TRANSFER | TF::VOID_PENDING_TRANSFER;
            if event.flags & resolving != 0 && !pendings.is_empty() && event.pending_id % 4 != 0 {
                event.pending_id = pendings[event.pending_id as usize % pendings.len()];
            }
        }
        if !seen.is_empty() {
            if let Some((from, to)) = retries.next() {
                let slot = to.index(events.len());
                events[slot] = seen[from.index(seen.len())];
            }
        }
        seen.extend(events.iter().copied());
    }
}

/// Applies one batch through the raw-bytes entry point, as the log does.
fn apply(ledger: &mut Ledger, gap: u64, batch: &Batch) -> Vec<EventResult> {
    let timestamp = ledger.last_timestamp() + gap;
    let result = match batch {
        Batch::Accounts(events) => {
            ledger.apply(Operation::CreateAccounts, timestamp, events.as_bytes())
        }
        Batch::Transfers(events) => {
            ledger.apply(Operation::CreateTransfers, timestamp, events.as_bytes())
        }
    };
    result.expect("well-formed batch")
}

fn run(ledger: &mut Ledger, batches: &[TimedBatch]) -> Vec<Vec<EventResult>> {
    batches
        .iter()
        .map(|(gap, batch)| apply(ledger, *gap, batch))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_batch(batches in batches_strategy()) {
        let mut ledger = Ledger::new();
        for (gap, batch) in &batches {
            apply(&mut ledger, *gap, batch);
            ledger.check_invariants();
        }
        // The ledger keeps a list head in each stored account's `reserved`; clients see zero.
        let ids: Vec<u128> = (0..=ACCOUNT_IDS + 1).collect();
        for account in ledger.lookup_accounts(&ids) {
            prop_assert_eq!(account.reserved, 0, "account {}", account.id);
        }
    }

    #[test]
    fn replay_gives_the_same_results_digest_and_chain(batches in batches_strategy()) {
        let mut first = Ledger::new();
        let first_results = run(&mut first, &batches);
        // A replica with differently sized maps: nothing observable may depend on map layout.
        let mut second = Ledger::with_capacity(4096, 4096);
        let second_results = run(&mut second, &batches);
        prop_assert_eq!(first_results, second_results);
        prop_assert_eq!(first.digest(), second.digest());
        prop_assert_eq!(first.hash_chain(), second.hash_chain());
        prop_assert_eq!(first.batches_applied(), second.batches_applied());
        // Capacities differ, so the snapshots differ only there: compare after restore instead.
        let restored = Ledger::restore(&second.snapshot()).expect("snapshot");
        prop_assert_eq!(restored.digest(), first.digest());
    }

    #[test]
    fn snapshot_mid_stream_then_continue_matches_never_snapshotting(
        batches in batches_strategy(),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(batches.len() + 1);
        let mut straight = Ledger::new();
        let straight_results = run(&mut straight, &batches);

        let mut before = Ledger::new();
        let mut results = run(&mut before, &batches[..split]);
        let bytes = before.snapshot();
        let mut restored = Ledger::restore(&bytes).expect("snapshot");
        restored.check_invariants();
        prop_assert_eq!(restored.snapshot(), bytes);
        prop_assert_eq!(restored.digest(), before.digest());
        results.extend(run(&mut restored, &batches[split..]));

        prop_assert_eq!(results, straight_results);
        prop_assert_eq!(restored.digest(), straight.digest());
        prop_assert_eq!(restored.hash_chain(), straight.hash_chain());
        prop_assert_eq!(restored.snapshot(), straight.snapshot());
    }
}

#[test]
fn corrupt_or_truncated_snapshots_are_errors_never_panics() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let batches = batches_strategy()
        .new_tree(&mut runner)
        .expect("tree")
        .current();
    let mut ledger = Ledger::new();
    run(&mut ledger, &batches);
    let bytes = ledger.snapshot();
    assert!(Ledger::restore(&bytes).is_ok());
    for length in 0..bytes.len() {
        assert!(
            Ledger::restore(&bytes[..length]).is_err(),
            "truncated at {length}"
        );
    }
    for position in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[position] ^= 1 << (position % 8);
        assert!(
            Ledger::restore(&flipped).is_err(),
            "bit flipped at {position}"
        );
    }
    let mut future = bytes.clone();
    future[8] = 2;
    let body = future.len() - 4;
    let checksum = crc32c::crc32c(&future[..body]);
    future[body..].copy_from_slice(&checksum.to_le_bytes());
    assert_eq!(
        Ledger::restore(&future).err(),
        Some(tally_engine::SnapshotError::UnsupportedVersion { version: 2 })
    );
}

#[test]
fn digest_depends_on_state_not_on_how_batches_were_cut() {
    let accounts: Vec<Account> = (1..=6).map(|id| common::account(id, 1, 0)).collect();
    let mut whole = Ledger::new();
    whole.create_accounts(100, &accounts);
    let mut cut = Ledger::new();
    cut.create_accounts(100, &accounts[..2]);
    cut.create_accounts(102, &accounts[2..]);
    assert_eq!(whole.digest(), cut.digest());
    assert_ne!(whole.hash_chain(), cut.hash_chain());
    let mut different = Ledger::new();
    different.create_accounts(101, &accounts);
    assert_ne!(whole.digest(), different.digest());
}

#[test]
fn random_batches_reach_the_interesting_results() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..64 {
        let batches = batches_strategy()
            .new_tree(&mut runner)
            .expect("tree")
            .current();
        let mut ledger = Ledger::new();
        for ((_, batch), results) in batches.iter().zip(run(&mut ledger, &batches)) {
            if let Batch::Transfers(_) = batch {
                for result in results {
                    let code =
                        tally_engine::CreateTransferResult::from_code(result.status).expect("code");
                    *seen.entry(code.name()).or_insert(0u32) += 1;
                }
            }
        }
    }
    eprintln!("{seen:?}");
    for name in [
        "ok",
        "exists",
        "id_already_failed",
        "linked_event_failed",
        "exceeds_credits",
        "pending_transfer_already_posted",
        "pending_transfer_expired",
    ] {
        assert!(
            seen.get(name).is_some_and(|count| *count > 0),
            "{name} never reached: {seen:?}"
        );
    }
}
