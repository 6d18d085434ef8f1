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
use tally_raft::node::StartError;
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

/// Waits (bounded) until the node has applied its whole log, and returns the last index: a
/// snapshot triggered then covers every entry, the blank entry a restarted node appends as the
/// leader of a new term included. That entry may be appended after `wait_for_leader` returns,
/// and after the ledger shows every transfer; a linearizable read waits until it is committed
/// and applied (its read index is at least the leader's first entry of its term).
async fn wait_for_the_log_applied(node: &Node) -> u64 {
    node.read(|_| ()).await.expect("a linearizable read");
    for _ in 0..200 {
        let status = node.status();
        if let Some(last) = status.last_log_index {
            if status.applied_index == Some(last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the log not applied within 10 s: {:?}", node.status());
}

/// Submits one transfer; its result code.
async fn submit_transfer(node: &Node, event: Transfer) -> u32 {
    let results = node
        .submit(
            Operation::CreateTransfers,
            Bytes::copy_from_slice([event].as_bytes()),
        )
        .await
        .expect("submit");
    assert_eq!(results.len(), 1);
    results[0].status
}

async fn submit_transfers(node: &Node, first_id: u128, count: u128) {
    for id in first_id..first_id + count {
        let status = submit_transfer(node, transfer(id, 1 + id % 4, 1 + (id + 1) % 4, 7)).await;
        assert_eq!(status, OK, "transfer {id}");
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
/// with the same digest; but it is not raised while the log after the snapshot would be
/// applied again under it: a transfer refused for capacity must stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_capacity_waits_for_a_snapshot_and_changes_no_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let capacity = |transfers_max| LedgerCapacity {
        accounts_max: 8,
        transfers_max,
    };
    // No snapshot by policy: the log after the last one is what the test controls.
    let node = start_sized(dir.path(), 0, Some(capacity(100))).await;
    let accounts: Vec<Account> = (1..=4).map(account).collect();
    let results = node
        .submit(
            Operation::CreateAccounts,
            Bytes::copy_from_slice(accounts.as_bytes()),
        )
        .await
        .expect("create accounts");
    assert!(results.iter().all(|result| result.status == OK));
    submit_transfers(&node, 100, 100).await;
    // The ledger is full: the 101st transfer is refused for capacity.
    let capacity_exceeded = tally_engine::CreateTransferResult::TransfersCapacityExceeded.code();
    assert_eq!(
        submit_transfer(&node, transfer(500, 1, 2, 7)).await,
        capacity_exceeded
    );
    let sizes = |ledger: &tally_engine::Ledger| (ledger.accounts_max(), ledger.transfers_max());
    assert_eq!(node.read_local(sizes).await.expect("read"), (8, 100));
    let before = node.ledger_status().await.expect("status");
    node.shutdown().await;
    drop(node);

    // Raised with the log not yet in a snapshot: refused, and nothing changes on disk.
    let mut config = NodeConfig::single(dir.path().to_path_buf(), "127.0.0.1:0".into());
    config.ledger_capacity = Some(capacity(200));
    let error = Node::start(config)
        .await
        .err()
        .expect("a raised capacity is refused");
    assert!(
        matches!(error, StartError::LedgerLimitsChanged { entries, .. } if entries > 0),
        "{error}"
    );
    assert!(
        error.to_string().contains("tally cluster snapshot"),
        "{error}"
    );

    // With the old limits it starts, answers as before, and takes the snapshot.
    let node = start_sized(dir.path(), 0, Some(capacity(100))).await;
    wait_for_transfers(&node, before.transfers).await;
    assert_eq!(
        node.ledger_status().await.expect("status").digest,
        before.digest
    );
    let last = wait_for_the_log_applied(&node).await;
    node.trigger_snapshot().await.expect("snapshot");
    wait_for_a_snapshot(&node).await;
    let status = node.status();
    assert_eq!(
        status.snapshot_index,
        Some(last),
        "the snapshot covers the log"
    );
    assert_eq!(
        status.last_log_index,
        Some(last),
        "nothing appended since: {status:?}"
    );
    node.shutdown().await;
    drop(node);

    // Now raised: the same state, the refused transfer still refused, room for more.
    let node = start_sized(dir.path(), 0, Some(capacity(200))).await;
    let after = wait_for_transfers(&node, before.transfers).await;
    assert_eq!(after.digest, before.digest, "same state after restart");
    assert_eq!(node.read_local(sizes).await.expect("read"), (8, 200));
    let found = node
        .read(|ledger| ledger.lookup_transfers(&[500]).len())
        .await
        .expect("read");
    assert_eq!(found, 0, "a transfer refused for capacity stays refused");
    submit_transfers(&node, 1000, 5).await;
    node.shutdown().await;
}

/// The node's ledger status once it holds `transfers` (the log after its snapshot is applied
/// again after a restart, possibly after `start` returns).
async fn wait_for_transfers(node: &Node, transfers: usize) -> tally_raft::node::LedgerStatus {
    let mut status = node.ledger_status().await.expect("status");
    for _ in 0..100 {
        if status.transfers == transfers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = node.ledger_status().await.expect("status");
    }
    assert_eq!(status.transfers, transfers);
    status
}
