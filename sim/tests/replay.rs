//! Audit replay against a data directory written by a real node (in-process,
//! single-member Raft cluster, real journal on the real file system).

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tally_engine::Account;
use tally_engine::AccountFlags;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_journal::EntryKind;
use tally_journal::FsStorage;
use tally_journal::Journal;
use tally_journal::JournalOptions;
use tally_journal::Storage;
use tally_raft::checkpoint::Checkpoint;
use tally_raft::checkpoint::OPERATION_CHECKPOINT;
use tally_raft::node::LedgerCapacity;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use tally_sim::replay;
use tally_sim::replay::Divergence;
use tally_sim::replay::ReplayError;
use tally_sim::replay::ReplayOptions;
use tally_sim::replay::StartPoint;
use zerocopy::IntoBytes;

const ACCOUNTS: u128 = 8;
const TRANSFER_SUBMISSIONS: u128 = 40;
const EVENTS_PER_TRANSFER_SUBMISSION: u128 = 3;
const EVENTS: u64 = (ACCOUNTS + TRANSFER_SUBMISSIONS * EVENTS_PER_TRANSFER_SUBMISSION) as u64;

/// The node's data directory (built once per test run) and what the node reported.
struct Base {
    dir: PathBuf,
    digest: String,
    snapshot_index: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = scratch("node");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (digest, snapshot_index) = runtime.block_on(run_node(&dir, None));
        Base {
            dir,
            digest,
            snapshot_index,
        }
    })
}

/// A fresh directory under cargo's per-target temp dir (removed first).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn account(id: u128) -> Account {
    let flags = if id == 1 {
        AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
    } else {
        0
    };
    Account {
        id,
        ledger: 1,
        code: 1,
        flags,
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

/// Runs a node with frequent checkpoints and no purging (and the given capacity);
/// returns its final digest and the index of the snapshot it took at the end.
async fn run_node(dir: &Path, capacity: Option<LedgerCapacity>) -> (String, u64) {
    let mut config = NodeConfig::single(dir.to_path_buf(), "127.0.0.1:0".into());
    config.ledger_capacity = capacity;
    config.checkpoint_every_entries = 4;
    config.snapshot_every_entries = 1_000_000;
    let node = Node::start(config).await.expect("node starts");
    assert!(node.wait_for_leader(Duration::from_secs(10)).await);
    let accounts: Vec<Account> = (1..=ACCOUNTS).map(account).collect();
    node.submit(
        Operation::CreateAccounts,
        Bytes::copy_from_slice(accounts.as_bytes()),
    )
    .await
    .expect("accounts");
    for round in 0..TRANSFER_SUBMISSIONS {
        let id = 1_000 + round * 10;
        let events = [
            // ok (account 1 may not go below zero: first fund it)
            transfer(id, 2 + round % 7, 1, 10),
            // exceeds_credits sometimes, ok otherwise
            transfer(id + 1, 1, 2 + (round + 1) % 7, 15),
            // debit_account_not_found: burns the id
            transfer(id + 2, 99, 2, 1),
        ];
        node.submit(
            Operation::CreateTransfers,
            Bytes::copy_from_slice(events.as_bytes()),
        )
        .await
        .expect("transfers");
    }
    // Let the last checkpoint entries commit, then snapshot at the end of the log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.trigger_snapshot().await.expect("snapshot");
    let snapshot_index = wait_for(|| node.status().snapshot_index).await;
    let digest = node.ledger_status().await.expect("status").digest;
    node.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    (digest, snapshot_index)
}

async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_tree(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), target).unwrap();
        }
    }
}

/// A private copy of the base data directory, to damage.
fn copy_of_base(name: &str) -> PathBuf {
    let dir = scratch(name);
    copy_tree(&base().dir, &dir);
    dir
}

/// Every file's bytes under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for item in std::fs::read_dir(&current).unwrap() {
            let item = item.unwrap();
            if item.file_type().unwrap().is_dir() {
                stack.push(item.path());
            } else {
                let relative = item.path().strip_prefix(dir).unwrap().to_path_buf();
                files.insert(relative, std::fs::read(item.path()).unwrap());
            }
        }
    }
    files
}

fn options(dir: &Path) -> ReplayOptions {
    ReplayOptions {
        data_dir: dir.to_path_buf(),
        ..ReplayOptions::default()
    }
}

#[test]
fn replay_of_a_real_node_matches_and_changes_nothing() {
    let base = base();
    let before = tree(&base.dir);
    let summary = replay::run(&options(&base.dir)).expect("replay runs");
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(summary.started_from, StartPoint::Genesis);
    assert_eq!(summary.events, EVENTS);
    assert_eq!(summary.batches_rejected, 0);
    assert!(summary.checkpoints_verified >= 5, "{summary:?}");
    assert_eq!(summary.checkpoints_unverifiable, 0);
    assert_eq!(summary.snapshot_verified, Some(base.snapshot_index));
    assert_eq!(format!("{:032x}", summary.final_digest), base.digest);
    assert_eq!(summary.torn_tail, None);
    let json = summary.to_json();
    assert_eq!(json["started_from"], "genesis");
    assert_eq!(json["ok"], true);
    assert_eq!(
        tree(&base.dir),
        before,
        "an audit must not change the data directory"
    );
}

/// Rewrites, through the journal API, the digest in the checkpoint entry at
/// position `which` (0-based); returns (entry index, checkpointed index).
fn tamper_checkpoint(dir: &Path, which: usize) -> (u64, u64) {
    let log = dir.join("log");
    let (mut journal, _) =
        Journal::open(FsStorage::shared(), &log, JournalOptions::default()).unwrap();
    let mut entries = journal.read(..).unwrap();
    let position = entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| {
            entry.kind == EntryKind::Batch && entry.operation == OPERATION_CHECKPOINT
        })
        .nth(which)
        .expect("enough checkpoint entries")
        .0;
    let entry = &mut entries[position];
    let mut checkpoint = Checkpoint::from_payload(&entry.payload).unwrap();
    checkpoint.digest ^= 1;
    entry.payload = checkpoint.to_record().as_bytes().to_vec().into();
    let entry_index = entry.id.index;
    journal.truncate_after(Some(entry_index - 1)).unwrap();
    journal.append_all(&entries[position..]).unwrap();
    journal.sync().unwrap();
    (entry_index, checkpoint.index)
}

#[test]
fn a_tampered_checkpoint_names_the_diverging_index() {
    let dir = copy_of_base("tampered-checkpoint");
    let (entry_index, index) = tamper_checkpoint(&dir, 2);
    let summary = replay::run(&options(&dir)).expect("replay runs");
    assert!(!summary.ok());
    let divergence = summary.divergence.clone().expect("divergence");
    assert_eq!(divergence.index(), index);
    match &divergence {
        Divergence::Checkpoint {
            entry_index: found_entry,
            index: found_index,
            verified_through,
            ..
        } => {
            assert_eq!(*found_entry, entry_index);
            assert_eq!(*found_index, index);
            assert!(verified_through.is_some_and(|through| through < index));
        }
        other => panic!("expected a checkpoint divergence, got {other:?}"),
    }
    assert_eq!(
        summary.checkpoints_verified, 2,
        "the replay stops at the first mismatch"
    );
    let message = divergence.to_string();
    assert!(message.contains("somewhere in ("), "{message}");
    assert!(message.contains(&format!(", {index}]")), "{message}");
}

/// Flips one byte in the payload of the batch entry at log index `index`.
fn flip_payload_byte(dir: &Path, index: u64) {
    let log = dir.join("log");
    for item in std::fs::read_dir(&log).unwrap() {
        let path = item.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "tlog") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let found = (64..bytes.len() - 64).step_by(8).find(|&offset| {
            bytes[offset..offset + 4] == *b"TLYE"
                && bytes[offset + 6] == 1
                && u64::from_le_bytes(bytes[offset + 24..offset + 32].try_into().unwrap()) == index
        });
        if let Some(offset) = found {
            bytes[offset + 64 + 20] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("batch entry {index} not found");
}

#[test]
fn a_flipped_payload_byte_is_reported_as_corruption_naming_the_index() {
    let dir = copy_of_base("flipped-byte");
    // Index 5 is a transfer batch well before the end of the log.
    let index = {
        let (journal, _) = Journal::open_read_only(FsStorage::shared(), &dir.join("log")).unwrap();
        journal
            .read(..)
            .unwrap()
            .into_iter()
            .find(|entry| {
                entry.kind == EntryKind::Batch && entry.operation == 2 && entry.id.index > 5
            })
            .unwrap()
            .id
            .index
    };
    flip_payload_byte(&dir, index);
    let error = replay::run(&options(&dir)).expect_err("corruption must stop the replay");
    assert!(
        matches!(error, ReplayError::Corruption { index: Some(found), .. } if found == index),
        "{error}"
    );
    assert_eq!(error.index(), Some(index));
    let message = error.to_string();
    assert!(
        message.contains(&format!("JOURNAL CORRUPTION at entry index {index}")),
        "{message}"
    );
}

/// A log written directly (no node, no snapshot): 100 accounts, then 60 batches of 512
/// transfers (64 KiB each) in segments of 1 MiB. Large entries, so that opening the log,
/// which reads each sealed entry's header, leaves most of their bytes out of the page
/// cache. Returns the directory and the index of one transfer batch in a sealed segment.
fn log_of_large_batches(name: &str) -> (PathBuf, u64) {
    let dir = scratch(name);
    let options = JournalOptions {
        segment_size: 1024 * 1024,
    };
    let (mut journal, _) = Journal::open(FsStorage::shared(), &dir.join("log"), options).unwrap();
    let accounts: Vec<Account> = (1..=100).map(account).collect();
    let mut entries = vec![tally_journal::Entry::batch(
        tally_journal::EntryId::new(1, 1, 1),
        Operation::CreateAccounts as u8,
        1_000,
        accounts.as_bytes().to_vec(),
    )];
    for batch in 0..60u64 {
        let transfers: Vec<Transfer> = (0..512u128)
            .map(|n| {
                let id = 1_000 + u128::from(batch) * 512 + n;
                transfer(id, 2 + id % 99, 2 + (id + 1) % 99, 1)
            })
            .collect();
        entries.push(tally_journal::Entry::batch(
            tally_journal::EntryId::new(1, 1, batch + 2),
            Operation::CreateTransfers as u8,
            2_000 + batch,
            transfers.as_bytes().to_vec(),
        ));
    }
    journal.append_all(&entries).unwrap();
    journal.sync().unwrap();
    (dir, 20)
}

/// Drops the log segments' pages from the page cache (written back first).
fn forget_cached_log(dir: &Path) {
    for item in std::fs::read_dir(dir.join("log")).unwrap() {
        let path = item.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "tlog")
        {
            let file = FsStorage.open_read_only(&path).unwrap();
            file.sync_data().unwrap();
            file.forget_cached(0, file.len().unwrap()).unwrap();
        }
    }
}

/// Read cold, the log's sealed segments come in windows around the page cache
/// (`Journal::stream_plan`); read warm, entry by entry through it. Both replay the same,
/// and damage read cold is named by its index.
#[test]
fn a_log_read_around_the_page_cache_replays_as_one_read_through_it() {
    let (dir, index) = log_of_large_batches("large-batches");
    let warm = replay::run(&options(&dir)).expect("replay runs");
    assert!(warm.ok(), "{warm:?}");
    assert_eq!(warm.events, 100 + 60 * 512);
    assert_eq!(warm.batches_rejected, 0);
    forget_cached_log(&dir);
    let cold = replay::run(&options(&dir)).expect("replay runs");
    assert!(cold.ok(), "{cold:?}");
    assert_eq!(cold.events, warm.events);
    assert_eq!(cold.final_digest, warm.final_digest);
    assert_eq!(cold.final_hash_chain, warm.final_hash_chain);

    flip_payload_byte(&dir, index);
    forget_cached_log(&dir);
    let error = replay::run(&options(&dir)).expect_err("corruption must stop the replay");
    assert!(
        matches!(error, ReplayError::Corruption { index: Some(found), .. } if found == index),
        "{error}"
    );
}

#[test]
fn exports_are_identical_and_against_names_the_first_different_event() {
    let base = base();
    let scratch = scratch("exports");
    let first = scratch.join("first.results");
    let second = scratch.join("second.results");
    for export in [&first, &second] {
        let summary = replay::run(&ReplayOptions {
            export: Some(export.clone()),
            ..options(&base.dir)
        })
        .unwrap();
        assert!(summary.ok());
        assert_eq!(summary.events_exported, EVENTS);
    }
    let text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(text, std::fs::read_to_string(&second).unwrap());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, EVENTS);
    assert!(lines
        .iter()
        .any(|line| line.contains(" debit_account_not_found ")));
    assert!(lines.iter().any(|line| line.contains(" exceeds_credits ")));
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields.len(), 5, "{}", lines[0]);
    assert_eq!((fields[1], fields[2], fields[3]), ("0", "1", "ok"));

    // Against an identical export: ok.
    let summary = replay::run(&ReplayOptions {
        against: Some(first.clone()),
        ..options(&base.dir)
    })
    .unwrap();
    assert!(summary.ok());

    // Against a tampered export: the first differing event, with both statuses.
    let target = 50;
    let tampered_path = scratch.join("tampered.results");
    let mut tampered: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    let original: Vec<&str> = lines[target].split(' ').collect();
    tampered[target] = format!(
        "{} {} {} exists {}",
        original[0], original[1], original[2], original[4]
    );
    tampered[target + 3] = "garbage".into();
    std::fs::write(&tampered_path, tampered.join("\n") + "\n").unwrap();
    let summary = replay::run(&ReplayOptions {
        against: Some(tampered_path),
        ..options(&base.dir)
    })
    .unwrap();
    assert!(!summary.ok());
    let difference = summary.result_difference.expect("a difference");
    assert_eq!(difference.line, target as u64 + 1);
    assert_eq!(difference.log_index.to_string(), original[0]);
    assert_eq!(difference.event_index.to_string(), original[1]);
    assert_eq!(difference.id, original[2]);
    assert_eq!(difference.status.as_deref(), Some(original[3]));
    assert_eq!(difference.status_other.as_deref(), Some("exists"));

    // Against a shorter export: the first event it lacks.
    let short_path = scratch.join("short.results");
    std::fs::write(&short_path, lines[..10].join("\n") + "\n").unwrap();
    let summary = replay::run(&ReplayOptions {
        against: Some(short_path),
        ..options(&base.dir)
    })
    .unwrap();
    let difference = summary.result_difference.expect("a difference");
    assert_eq!(difference.line, 11);
    assert_eq!(difference.status_other, None);
}

/// A node that ran with another capacity than the engine's defaults refused transfers a
/// default ledger would accept: the replay must use the node's capacity (recorded in its
/// snapshot, or given by the operator) to reach the node's state.
#[test]
fn the_replay_takes_the_nodes_capacity_from_its_snapshot_or_from_the_operator() {
    let dir = scratch("small-node");
    let capacity = LedgerCapacity {
        accounts_max: 16,
        transfers_max: 64,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (digest, _) = runtime.block_on(run_node(&dir, Some(capacity)));

    let summary = replay::run(&options(&dir)).expect("replay runs");
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(format!("{:032x}", summary.final_digest), digest);

    // Without the snapshot, the defaults accept what the node refused: a divergence.
    std::fs::remove_file(
        dir.join("snapshots")
            .join(tally_journal::SNAPSHOT_FILE_NAME),
    )
    .unwrap();
    let summary = replay::run(&options(&dir)).expect("replay runs");
    assert!(
        matches!(summary.divergence, Some(Divergence::Checkpoint { .. })),
        "{summary:?}"
    );
    // Told the capacity, it matches again.
    let summary = replay::run(&ReplayOptions {
        capacity: Some((capacity.accounts_max, capacity.transfers_max)),
        ..options(&dir)
    })
    .expect("replay runs");
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(format!("{:032x}", summary.final_digest), digest);
}

#[test]
fn a_purged_log_starts_from_the_snapshot_and_says_so() {
    let base = base();
    let dir = copy_of_base("purged");
    {
        let (mut journal, _) = Journal::open(
            FsStorage::shared(),
            &dir.join("log"),
            JournalOptions::default(),
        )
        .unwrap();
        let id = journal.entry_id(base.snapshot_index).unwrap().unwrap();
        journal.purge_through(id).unwrap();
    }
    let summary = replay::run(&options(&dir)).expect("replay runs");
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(
        summary.started_from,
        StartPoint::Snapshot {
            index: base.snapshot_index
        }
    );
    assert_eq!(
        summary.to_json()["started_from"],
        format!("snapshot at index {}", base.snapshot_index)
    );
    assert_eq!(format!("{:032x}", summary.final_digest), base.digest);

    // Without the snapshot there is nothing to start from: an error, not a guess.
    std::fs::remove_file(
        dir.join("snapshots")
            .join(tally_journal::SNAPSHOT_FILE_NAME),
    )
    .unwrap();
    let error = replay::run(&options(&dir)).expect_err("cannot start");
    assert!(matches!(error, ReplayError::CannotStart { .. }), "{error}");
}

#[test]
fn the_command_prints_a_table_then_one_json_line_and_exits_by_outcome() {
    let base = base();
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tally-sim"))
            .args(["replay", "--data-dir"])
            .arg(dir)
            .output()
            .expect("runs")
    };
    let output = run(&base.dir);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("final digest"), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], true);
    assert_eq!(last["events"], EVENTS);
    assert!(last["events_per_second"].as_f64().unwrap() > 0.0);

    let dir = copy_of_base("command-tampered");
    let (_, index) = tamper_checkpoint(&dir, 0);
    let output = run(&dir);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false);
    assert_eq!(last["divergence"]["index"], index);
}
