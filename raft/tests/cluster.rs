//! A three-node cluster in one process over real loopback TCP: replication,
//! failover, catch-up after restart, checkpoints verified, and a peer with the
//! wrong cluster secret refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tally_engine::Account;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use tally_raft::types::NodeInfo;
use zerocopy::IntoBytes;

const OK: u32 = 0;
const EXISTS: u32 = tally_engine::CreateTransferResult::Exists as u32;

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn config(
    dir: &Path,
    node_id: u64,
    addrs: &BTreeMap<u64, SocketAddr>,
    secret: &[u8],
) -> NodeConfig {
    let members: BTreeMap<u64, NodeInfo> = addrs
        .iter()
        .map(|(id, addr)| {
            let info = NodeInfo {
                raft_addr: addr.to_string(),
                http_addr: String::new(),
                region: format!("region-{id}"),
            };
            (*id, info)
        })
        .collect();
    let mut config = NodeConfig::single(dir.join(format!("node-{node_id}")), String::new());
    config.node_id = node_id;
    config.info = members[&node_id].clone();
    config.initial_members = members;
    config.raft_listen = Some(addrs[&node_id]);
    config.cluster_secret = secret.to_vec();
    config.checkpoint_every_entries = 5;
    config.heartbeat_interval_ms = 50;
    config.election_timeout_min_ms = 300;
    config.election_timeout_max_ms = 600;
    config
}

async fn wait_for<F: Fn() -> bool>(what: &str, condition: F) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn leader_of(nodes: &BTreeMap<u64, Node>) -> Option<u64> {
    nodes.values().find_map(|node| {
        (node.status().leader_id == Some(node.node_id())).then_some(node.node_id())
    })
}

/// Submits to whichever node leads, retrying (same ids: idempotent) while
/// leadership settles, as a client would.
async fn submit_anywhere(
    nodes: &BTreeMap<u64, Node>,
    operation: Operation,
    events: &[u8],
) -> Vec<u32> {
    for _ in 0..200 {
        if let Some(leader) = leader_of(nodes) {
            match nodes[&leader]
                .submit(operation, Bytes::copy_from_slice(events))
                .await
            {
                Ok(results) => return results.iter().map(|result| result.status).collect(),
                Err(error) => eprintln!("retrying: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never committed");
}

async fn submit_transfer(nodes: &BTreeMap<u64, Node>, id: u128) {
    let events = [Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 3,
        ledger: 1,
        code: 1,
        ..Default::default()
    }];
    let statuses = submit_anywhere(nodes, Operation::CreateTransfers, events.as_bytes()).await;
    // A retry of a batch whose first attempt did commit answers `exists`.
    assert!(
        statuses[0] == OK || statuses[0] == EXISTS,
        "transfer {id}: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let secret = b"correct horse battery staple";
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let node = Node::start(config(dir.path(), id, &addrs, secret))
            .await
            .expect("start");
        nodes.insert(id, node);
    }
    wait_for("a leader", || leader_of(&nodes).is_some()).await;
    let accounts: Vec<Account> = (1..=2)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    let statuses = submit_anywhere(&nodes, Operation::CreateAccounts, accounts.as_bytes()).await;
    assert!(statuses.iter().all(|status| *status == OK), "{statuses:?}");
    for id in 100..120 {
        submit_transfer(&nodes, id).await;
    }
    let leader_id = leader_of(&nodes).expect("leader");

    // A follower is answered "not the leader", naming the leader.
    let follower_id = *nodes.keys().find(|id| **id != leader_id).expect("follower");
    let refused = nodes[&follower_id]
        .submit(
            Operation::CreateTransfers,
            Bytes::copy_from_slice(&[0u8; 128]),
        )
        .await;
    match refused {
        Err(tally_raft::ingress::SubmitError::NotLeader {
            leader_id: named, ..
        }) => {
            assert_eq!(named, Some(leader_id))
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Checkpoints were proposed by the leader and verified by followers.
    wait_for("a verified checkpoint on every node", || {
        nodes
            .values()
            .all(|node| node.status().checkpoint_verified.is_some())
    })
    .await;

    // Kill the leader: a new one takes over and accepts writes.
    nodes.remove(&leader_id).expect("leader").shutdown().await;
    wait_for("a new leader", || leader_of(&nodes).is_some()).await;
    let new_leader = leader_of(&nodes).expect("new leader");
    assert_ne!(new_leader, leader_id);
    for id in 200..210 {
        submit_transfer(&nodes, id).await;
    }

    // The old leader restarts and catches up.
    let restarted = Node::start(config(dir.path(), leader_id, &addrs, secret))
        .await
        .expect("restart");
    nodes.insert(leader_id, restarted);
    let target = nodes[&new_leader].status().last_log_index;
    wait_for("the restarted node to catch up", || {
        nodes[&leader_id].status().applied_index >= target
    })
    .await;
    let mut digests = Vec::new();
    for node in nodes.values() {
        let transfers = node
            .read_local(|ledger| ledger.lookup_transfers(&[100, 119, 200, 209]).len())
            .await
            .expect("read");
        assert_eq!(
            transfers,
            4,
            "node {} has every acknowledged transfer",
            node.node_id()
        );
    }
    for node in nodes.values() {
        let status = node.status();
        let applied = status.applied_index;
        wait_for("all applied", || node.status().applied_index >= target).await;
        let ledger = node.ledger_status().await.expect("ledger status");
        digests.push((node.node_id(), applied, ledger.transfers, ledger.digest));
        assert!(status.divergence.is_none());
    }
    let transfer_counts: Vec<usize> = digests.iter().map(|entry| entry.2).collect();
    assert!(
        transfer_counts.iter().all(|count| *count == 30),
        "{digests:?}"
    );
    assert!(
        digests.windows(2).all(|pair| pair[0].3 == pair[1].3),
        "digests match: {digests:?}"
    );
    for node in nodes.values() {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_secret_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs: BTreeMap<u64, SocketAddr> = (1..=2).map(|id| (id, free_addr())).collect();
    // Two members that do not share a secret can never form a quorum.
    let first = Node::start(config(dir.path(), 1, &addrs, b"secret one"))
        .await
        .expect("start");
    let second = Node::start(config(dir.path(), 2, &addrs, b"secret two"))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(first.status().leader_id, None);
    assert_eq!(second.status().leader_id, None);
    first.shutdown().await;
    second.shutdown().await;
}
