//! Clusters of real `tally start` processes on loopback: failover under load with `kill -9`,
//! catch-up after restart, redirects to the leader, a peer with the wrong secret, replacing a lost
//! node from the CLI and an offline replay of its data directory. Every wait is bounded; every
//! child is killed when its guard drops (a failing test leaves no process behind).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use common::cluster::account_id;
use common::cluster::agent;
use common::cluster::audit;
use common::cluster::create_accounts;
use common::cluster::get;
use common::cluster::post;
use common::cluster::serial;
use common::cluster::submit;
use common::cluster::transfer_json;
use common::cluster::Cluster;
use common::cluster::Load;
use common::cluster::Member;
use common::cluster::Sent;
use common::cluster::CATCH_UP_TIMEOUT_MS;
use common::cluster::POLL_MS;
use common::cluster::SECRET;
use common::free_port;
use serde_json::json;
use serde_json::Value;

/// The failover bound asserted (the design target is 2 s with default settings; 5 s keeps a
/// loaded CI machine from failing the test while the measured time is printed).
const FAILOVER_BOUND_MS: u128 = 5_000;
/// Kill/restart cycles of the leader.
const KILL_CYCLES: usize = 10;
const LOAD_CLIENTS: u64 = 2;
/// A load request unanswered this long is retried on another node.
const LOAD_REQUEST_TIMEOUT_MS: u64 = 10_000;

#[test]
fn leader_killed_ten_times_under_load_loses_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = Cluster::new(&[1, 2, 3], &BTreeMap::new());
    cluster.start_all();
    let all = [1, 2, 3];
    cluster.wait_leader(&all);
    let bases = cluster.bases();
    let client = agent(10_000);
    create_accounts(&client, &bases);

    let load = Load::start(&bases, LOAD_CLIENTS, LOAD_REQUEST_TIMEOUT_MS);
    let book = std::sync::Arc::clone(&load.book);

    let mut failovers_ms = Vec::new();
    let mut catch_ups_ms = Vec::new();
    for cycle in 0..KILL_CYCLES {
        // Let the load run a little under the full cluster.
        load.wait_for_requests(10, &cluster, &format!("before cycle {cycle}"));
        let leader = cluster.wait_leader(&all);
        let killed_at = Instant::now();
        cluster.members.get_mut(&leader).expect("leader").kill_9();
        let survivors: Vec<String> = cluster
            .members
            .values()
            .filter(|member| member.running())
            .map(Member::base)
            .collect();
        // A probe write with its own id, retried until a new leader commits it.
        let probe_id = 900_000_000 + cycle as u64;
        let probe = Sent {
            debit: account_id(1, 1),
            credit: account_id(1, 2),
            amount: 1,
            ledger: 1,
        };
        book.sent.lock().unwrap().insert(probe_id, probe);
        let results = submit(
            &agent(2_000),
            &survivors,
            "/v1/transfers",
            &json!([transfer_json(probe_id, &probe)]),
            cycle,
        );
        let failover_ms = killed_at.elapsed().as_millis();
        assert!(
            results[0]["status"] == "ok" || results[0]["status"] == "exists",
            "{results}"
        );
        book.acknowledged.lock().unwrap().push(probe_id);
        let survivor_ids: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
        let new_leader = cluster.wait_leader(&survivor_ids);
        assert_ne!(new_leader, leader);
        eprintln!("cycle {cycle}: killed leader {leader}; node {new_leader} accepted a write after {failover_ms} ms");
        assert!(
            failover_ms < FAILOVER_BOUND_MS,
            "failover took {failover_ms} ms\n{}",
            cluster.logs()
        );
        failovers_ms.push(failover_ms);

        // The killed node restarts on its data directory and catches up.
        let restarted_at = Instant::now();
        cluster
            .members
            .get_mut(&leader)
            .expect("killed node")
            .spawn();
        let target = cluster.members[&new_leader].cluster()["committed_index"]
            .as_u64()
            .expect("committed index");
        let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        loop {
            let applied = cluster.members[&leader].cluster()["applied_index"]
                .as_u64()
                .unwrap_or(0);
            if applied >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {leader} stuck at {applied} < {target}\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        let catch_up_ms = restarted_at.elapsed().as_millis();
        eprintln!(
            "cycle {cycle}: node {leader} restarted and reached index {target} in {catch_up_ms} ms"
        );
        catch_ups_ms.push(catch_up_ms);
    }

    let book = load.finish();
    let (held, index, digest) = audit(&cluster, &all, &book);
    let acknowledged = book.acknowledged.lock().unwrap().len();
    let mut sorted = failovers_ms.clone();
    sorted.sort_unstable();
    eprintln!(
        "{KILL_CYCLES} leader kills: failover ms {failovers_ms:?} (median {}, max {}); catch-up ms {catch_ups_ms:?}; \
         {} transfers acknowledged, {} held on every node; applied index {index}, digest {digest}; {} s in all",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        acknowledged,
        held.len(),
        started.elapsed().as_secs()
    );
}

fn tally_cli(server: &str, arguments: &[&str]) -> (bool, String, String) {
    let output = Command::new(common::tally_binary())
        .arg("--server")
        .arg(server)
        .args(arguments)
        .env_remove("TALLY_API_TOKEN")
        .env_remove("TALLY_CLUSTER_SECRET")
        .output()
        .expect("run tally");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_cluster_member_needs_the_secret_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let output = Command::new(common::tally_binary())
        .args([
            "start",
            "--node-id",
            "1",
            "--peers",
            "1=127.0.0.1:1@127.0.0.1:2,2=127.0.0.1:3@127.0.0.1:4",
        ])
        .arg("--data-dir")
        .arg(directory.path().join("data"))
        .env_remove("TALLY_CLUSTER_SECRET")
        .output()
        .expect("run tally start");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a cluster needs a shared secret"),
        "{stderr}"
    );
    assert!(
        !directory.path().join("data").exists(),
        "nothing is created before the checks"
    );
}

#[test]
fn redirects_wrong_secret_and_replacing_a_node_from_the_cli() {
    let _serial = serial();
    // Node 3 is configured with another secret: it can never join; nodes 1 and 2 are a quorum.
    let mut cluster = Cluster::new(&[1, 2, 3], &BTreeMap::from([(3, "not the cluster secret")]));
    cluster.start_all();
    let leader = cluster.wait_leader(&[1, 2]);
    let follower = if leader == 1 { 2 } else { 1 };
    let leader_base = cluster.members[&leader].base();
    let follower_base = cluster.members[&follower].base();
    let client = agent(10_000);
    create_accounts(&client, std::slice::from_ref(&leader_base));

    // A write to a follower: 307 to the leader, same path, the body naming it; nothing accepted.
    let transfer = json!([transfer_json(
        1,
        &Sent {
            debit: 1001,
            credit: 1002,
            amount: 5,
            ledger: 1
        }
    )]);
    let redirected = post(&client, &format!("{follower_base}/v1/transfers"), &transfer).unwrap();
    assert_eq!(redirected.status, 307, "{}", redirected.body);
    assert_eq!(
        redirected.location.as_deref(),
        Some(format!("{leader_base}/v1/transfers").as_str())
    );
    assert_eq!(redirected.body["leader_id"], json!(leader));
    assert_eq!(redirected.body["leader"], json!(leader_base));
    let followed = post(&client, redirected.location.as_deref().unwrap(), &transfer).unwrap();
    assert_eq!(followed.status, 200, "{}", followed.body);
    assert_eq!(followed.body[0]["status"], "ok");

    // A linearizable read on the follower: 307 with the query kept. A stale read: served there.
    let path = "/v1/accounts/1001/transfers?limit=5&order=desc";
    let read = get(&client, &format!("{follower_base}{path}")).unwrap();
    assert_eq!(read.status, 307);
    assert_eq!(read.location, Some(format!("{leader_base}{path}")));
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    loop {
        let stale = get(
            &client,
            &format!("{follower_base}/v1/transfers/1?stale=true"),
        )
        .unwrap();
        if stale.status == 200 {
            assert_eq!(stale.body["amount"], "5");
            break;
        }
        assert_eq!(stale.status, 404, "{}", stale.body);
        assert!(
            Instant::now() < deadline,
            "the follower never applied transfer 1"
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    let bad = get(
        &client,
        &format!("{follower_base}/v1/transfers/1?stale=yes"),
    )
    .unwrap();
    assert_eq!(bad.status, 400);
    // Admin changes on a follower are redirected too.
    let admin = post(
        &client,
        &format!("{follower_base}/v1/cluster/leader"),
        &json!({"id": leader}),
    )
    .unwrap();
    assert!(admin.status == 200 || admin.status == 307, "{}", admin.body);

    // The node with the wrong secret knows no leader: writes there are refused with Retry-After,
    // and the members logged the refusal.
    let outsider = &cluster.members[&3];
    let view = outsider.cluster();
    assert!(view["leader_id"].is_null(), "{view}");
    let refused = post(
        &client,
        &format!("{}/v1/transfers", outsider.base()),
        &transfer,
    )
    .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.retry_after);
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    while !(cluster.members[&1].log() + &cluster.members[&2].log()).contains("peer refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // `tally cluster status` prints the view and a member table.
    let (ok, table, stderr) = tally_cli(&follower_base, &["cluster", "status"]);
    assert!(ok, "{stderr}");
    eprintln!("tally cluster status:\n{table}");
    assert!(
        table.contains(&format!("leader_id            {leader}")),
        "{table}"
    );
    assert!(table.contains("id  role"), "{table}");
    assert!(table.contains("voter (leader)"), "{table}");
    assert!(table.contains("region-1"), "{table}");

    // Replace the lost node 3 with a new node 4 (started with --join), all from the CLI against a
    // follower (the CLI follows the redirect to the leader).
    let (http_port, raft_port) = (free_port(), free_port());
    let mut joiner = Member {
        id: 4,
        http_port,
        data_dir: cluster.directory.path().join("node-4"),
        log_path: cluster.directory.path().join("node-4.log"),
        arguments: vec![
            "--node-id".into(),
            "4".into(),
            "--join".into(),
            "--raft".into(),
            format!("127.0.0.1:{raft_port}"),
            "--http".into(),
            format!("127.0.0.1:{http_port}"),
            "--region".into(),
            "region-0".into(),
        ],
        secret: SECRET.into(),
        child: None,
    };
    joiner.spawn();
    let joiner_base = joiner.base();
    cluster.members.insert(4, joiner);
    let (ok, output, stderr) = tally_cli(
        &follower_base,
        &[
            "cluster",
            "add",
            "--id",
            "4",
            "--raft",
            &format!("127.0.0.1:{raft_port}"),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--region",
            "region-0",
        ],
    );
    assert!(ok, "cluster add: {stderr}\n{}", cluster.logs());
    assert!(
        output.contains("127.0.0.1:") && output.contains("region-0"),
        "{output}"
    );
    let (ok, _, stderr) = tally_cli(&follower_base, &["cluster", "remove", "3"]);
    assert!(ok, "cluster remove: {stderr}");
    let (ok, json_view, stderr) = tally_cli(&follower_base, &["--json", "cluster", "status"]);
    assert!(ok, "{stderr}");
    let view: Value = serde_json::from_str(&json_view).expect("--json prints JSON");
    assert_eq!(view["voters"], json!([1, 2, 4]), "{view}");
    let (ok, _, stderr) = tally_cli(&follower_base, &["cluster", "transfer-leader", "4"]);
    assert!(ok, "transfer-leader: {stderr}\n{}", cluster.logs());
    assert_eq!(cluster.wait_leader(&[1, 2, 4]), 4);
    // The new leader takes writes directly.
    let write = post(
        &client,
        &format!("{joiner_base}/v1/transfers"),
        &json!([transfer_json(
            2,
            &Sent {
                debit: 1002,
                credit: 1001,
                amount: 3,
                ledger: 1
            }
        )]),
    )
    .unwrap();
    assert_eq!(write.status, 200, "{}", write.body);
    let (_, digest) = cluster.wait_converged(&[1, 2, 4]);

    // An offline audit of node 4's data directory agrees with the cluster.
    let mut node_4 = cluster.members.remove(&4).unwrap();
    let data_dir = node_4.data_dir.clone();
    node_4.kill_9();
    let (ok, replay, stderr) = tally_cli(
        "http://unused",
        &["replay", "--data-dir", data_dir.to_str().unwrap()],
    );
    assert!(ok, "replay: {replay}{stderr}");
    eprintln!("tally replay:\n{replay}");
    // The replay's digest is the state at the end of node 4's log, the converged one.
    assert!(
        replay.contains(&digest),
        "replay digest differs from {digest}:\n{replay}"
    );
}
