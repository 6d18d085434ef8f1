//! Writes a data directory for measuring replay speed: a real single node, 10,000
//! accounts, then `--batches` full transfer batches (8189 events each).
//!
//! `cargo run --release -p tally-sim --example replay_data -- DIR [BATCHES]`, then
//! `cargo run --release -p tally-sim -- replay --data-dir DIR`.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use tally_engine::Account;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use zerocopy::IntoBytes;

const ACCOUNTS: u128 = 10_000;
const BATCH_EVENTS: u128 = 8_189;
const SUBMISSIONS_IN_FLIGHT: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: replay_data DIR [BATCHES]"));
    let batches: u128 = args
        .next()
        .map_or(400, |text| text.parse().expect("BATCHES"));
    let mut config = NodeConfig::single(dir, "127.0.0.1:0".into());
    // Keep the whole log: the replay then starts from genesis.
    config.snapshot_every_entries = u64::MAX / 2;
    config.checkpoint_every_entries = 64;
    let node = Node::start(config).await.expect("node starts");
    assert!(node.wait_for_leader(Duration::from_secs(10)).await);
    for first in (1..=ACCOUNTS).step_by(BATCH_EVENTS as usize) {
        let accounts: Vec<Account> = (first..(first + BATCH_EVENTS).min(ACCOUNTS + 1))
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        node.submit(
            Operation::CreateAccounts,
            Bytes::copy_from_slice(accounts.as_bytes()),
        )
        .await
        .expect("accounts");
    }
    let started = Instant::now();
    let node = std::sync::Arc::new(node);
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..batches {
        if tasks.len() >= SUBMISSIONS_IN_FLIGHT {
            tasks.join_next().await.expect("task").expect("join");
        }
        let node = std::sync::Arc::clone(&node);
        tasks.spawn(async move {
            let transfers: Vec<Transfer> = (0..BATCH_EVENTS)
                .map(|offset| {
                    let id = 1_000_000 + batch * BATCH_EVENTS + offset;
                    Transfer {
                        id,
                        debit_account_id: 1 + id % ACCOUNTS,
                        credit_account_id: 1 + (id * 7 + 3) % ACCOUNTS,
                        amount: 1 + id % 100,
                        ledger: 1,
                        code: 1,
                        ..Default::default()
                    }
                })
                .filter(|transfer| transfer.debit_account_id != transfer.credit_account_id)
                .collect();
            node.submit(
                Operation::CreateTransfers,
                Bytes::copy_from_slice(transfers.as_bytes()),
            )
            .await
            .expect("transfers");
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("join");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = node.ledger_status().await.expect("status");
    println!(
        "wrote {} transfers in {:.1} s; digest {}",
        status.transfers,
        started.elapsed().as_secs_f64(),
        status.digest
    );
    node.shutdown().await;
}
