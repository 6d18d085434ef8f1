//! A node recovers from snapshot + log with the same state digest, and
//! snapshots are taken by policy with the log purged behind them.

use std::time::Duration;

use bytes::Bytes;
use tally_engine::Account;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_raft::node::LedgerCapacity;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use zerocopy::IntoBytes;

const OK: u32 = 0;

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

async fn start(dir: &std::path::Path, snapshot_every_entries: u64) -> Node {
    start_sized(dir, snapshot_every_entries, None).await
}

async fn start_sized(
    dir: &std::path::Path,
    snapshot_every_entries: u64,
    ledger_capacity: Option<LedgerCapacity>,
) -> Node {
    let mut config = NodeConfig::single(dir.to_path_buf(), "127.0.0.1:0".into());
    config.snapshot_every_entries = snapshot_every_entries;
    config.ledger_capacity = ledger_capacity;
    let node = Node::start(config).await.expect("node starts");
    assert!(
        node.wait_for_leader(Duration::from_secs(10)).await,
        "a single node elects itself"
    );
    node
}

/// Waits (bounded) for the snapshot policy's first snapshot to be saved: building one
/// paces itself (steps with pauses between, syncs with pauses between), so it may
/// finish after the last write, on a busy machine well after.
async fn wait_for_a_snapshot(node: &Node) {
    for _ in 0..200 {
        if node.status().snapshot_index.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no snapshot within 10 s: {:?}", node.status());
}

async fn submit_transfers(node: &Node, first_id: u128, count: u128) {
    for id in first_id..first_id + count {
        let events = [transfer(id, 1 + id % 4, 1 + (id + 1) % 4, 7)];
        let results = node
            .submit(
                Operation::CreateTransfers,
                Bytes::copy_from_slice(events.as_bytes()),
            )
            .await
            .expect("submit");
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].status, OK, "transfer {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_from_snapshot_and_log_with_the_same_digest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start(dir.path(), 20).await;
    let accounts: Vec<Account> = (1..=4).map(account).collect();
    let results = node
        .submit(
            Operation::CreateAccounts,
            Bytes::copy_from_slice(accounts.as_bytes()),
        )
        .await
        .expect("create accounts");
    assert!(results.iter().all(|result| result.status == OK));
    submit_transfers(&node, 100, 60).await;

    // The policy (every 20 entries) has taken snapshots and purged behind them.
    wait_for_a_snapshot(&node).await;
    let before = node.ledger_status().await.expect("status");
    assert_eq!(before.transfers, 60);
    node.shutdown().await;
    drop(node);

    let node = start(dir.path(), 20).await;
    // Everything committed before the restart is applied again (snapshot + log).
    let mut after = node.ledger_status().await.expect("status");
    for _ in 0..100 {
        if after.transfers == before.transfers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = node.ledger_status().await.expect("status");
    }
    assert_eq!(after.transfers, before.transfers);
    assert_eq!(after.digest, before.digest, "same state after restart");

    // And the node keeps working.
    submit_transfers(&node, 1000, 5).await;
    let found = node
        .read(|ledger| ledger.lookup_transfers(&[100, 1004]).len())
        .await
        .expect("read");
    assert_eq!(found, 2);
    node.shutdown().await;
}

/// A sized ledger keeps its configured capacity across a restart from a snapshot (raised here),
/// with the same digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_a_snapshot_keeps_the_configured_capacity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let capacity = |transfers_max| LedgerCapacity {
        accounts_max: 8,
        transfers_max,
    };
    let node = start_sized(dir.path(), 20, Some(capacity(100))).await;
    let accounts: Vec<Account> = (1..=4).map(account).collect();
    let results = node
        .submit(
            Operation::CreateAccounts,
            Bytes::copy_from_slice(accounts.as_bytes()),
        )
        .await
        .expect("create accounts");
    assert!(results.iter().all(|result| result.status == OK));
    submit_transfers(&node, 100, 60).await;
    wait_for_a_snapshot(&node).await;
    let sizes = |ledger: &tally_engine::Ledger| (ledger.accounts_max(), ledger.transfers_max());
    assert_eq!(node.read_local(sizes).await.expect("read"), (8, 100));
    let before = node.ledger_status().await.expect("status");
    node.shutdown().await;
    drop(node);

    let node = start_sized(dir.path(), 20, Some(capacity(200))).await;
    let mut after = node.ledger_status().await.expect("status");
    for _ in 0..100 {
        if after.transfers == before.transfers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = node.ledger_status().await.expect("status");
    }
    assert_eq!(after.digest, before.digest, "same state after restart");
    assert_eq!(node.read_local(sizes).await.expect("read"), (8, 200));
    submit_transfers(&node, 1000, 5).await;
    node.shutdown().await;
}
