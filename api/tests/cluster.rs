//! Clusters of real `tally start` processes on loopback: failover under load with `kill -9`,
//! catch-up after restart, redirects to the leader, a peer with the wrong secret, replacing a lost
//! node from the CLI and an offline replay of its data directory. Every wait is bounded; every
//! child is killed when its guard drops (a failing test leaves no process behind).

mod common;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::free_port;
use common::u128_of;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;
use serde_json::Value;

const SECRET: &str = "test cluster secret: correct horse battery staple";
/// How long a node may take to answer HTTP after it was spawned.
const SPAWN_TIMEOUT_MS: u64 = 30_000;
/// How long a cluster may take to elect its first leader.
const ELECTION_TIMEOUT_MS: u64 = 30_000;
/// The failover bound asserted (the design target is 2 s with default settings; 5 s keeps a
/// loaded CI machine from failing the test while the measured time is printed).
const FAILOVER_BOUND_MS: u128 = 5_000;
/// How long a restarted node may take to catch up.
const CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// How long a client keeps retrying one request (following the leader) before giving up.
const REQUEST_RETRY_TIMEOUT_MS: u64 = 30_000;
const POLL_MS: u64 = 20;
/// Kill/restart cycles of the leader.
const KILL_CYCLES: usize = 10;
const ACCOUNTS_PER_LEDGER: u64 = 6;
const LEDGERS: [u32; 2] = [1, 2];
const LOAD_CLIENTS: u64 = 2;
const TRANSFERS_PER_REQUEST: u64 = 10;

/// One 3-node cluster at a time: two cores are shared by every process of a test.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An HTTP client that does not follow redirects (the tests look at them).
fn agent(timeout_ms: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_millis(timeout_ms)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
    retry_after: bool,
}

fn answer(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Answer, String> {
    let mut response = response.map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let retry_after = response.headers().contains_key("retry-after");
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|error| error.to_string())?;
    Ok(Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        location,
        retry_after,
    })
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Answer, String> {
    answer(agent.get(url).call())
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Answer, String> {
    answer(
        agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string()),
    )
}

/// One `tally start` process of a cluster; killed when dropped.
struct Member {
    id: u64,
    http_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `start` arguments after `--data-dir DIR`.
    arguments: Vec<String>,
    secret: String,
    child: Option<Child>,
}

impl Member {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the node's log");
        let child = Command::new(common::tally_binary())
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.arguments)
            .env_remove("TALLY_API_TOKEN")
            .env("TALLY_CLUSTER_SECRET", &self.secret)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tally start");
        self.child = Some(child);
        let agent = agent(1_000);
        let deadline = Instant::now() + Duration::from_millis(SPAWN_TIMEOUT_MS);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"))
            {
                panic!("node {} exited with {status}:\n{}", self.id, self.log());
            }
            if get(&agent, &format!("{}/healthz", self.base())).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} does not answer HTTP:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("node running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn cluster(&self) -> Value {
        let answer = get(&agent(10_000), &format!("{}/v1/cluster", self.base()))
            .unwrap_or_else(|error| panic!("GET /v1/cluster on node {}: {error}", self.id));
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    members: BTreeMap<u64, Member>,
    directory: tempfile::TempDir,
}

impl Cluster {
    /// Nodes `ids` of a cluster whose initial membership is `ids`; `secrets` overrides a node's
    /// cluster secret.
    fn new(ids: &[u64], secrets: &BTreeMap<u64, &str>) -> Cluster {
        let directory = tempfile::tempdir().expect("temp dir");
        let ports: BTreeMap<u64, (u16, u16)> = ids
            .iter()
            .map(|id| (*id, (free_port(), free_port())))
            .collect();
        let peers: Vec<String> = ports
            .iter()
            .map(|(id, (http, raft))| {
                format!("{id}=127.0.0.1:{raft}@127.0.0.1:{http}@region-{}", id % 2)
            })
            .collect();
        let peers = peers.join(",");
        let members = ports
            .iter()
            .map(|(id, (http_port, raft_port))| {
                let member = Member {
                    id: *id,
                    http_port: *http_port,
                    data_dir: directory.path().join(format!("node-{id}")),
                    log_path: directory.path().join(format!("node-{id}.log")),
                    arguments: vec![
                        "--node-id".into(),
                        id.to_string(),
                        "--peers".into(),
                        peers.clone(),
                        "--http".into(),
                        format!("127.0.0.1:{http_port}"),
                        "--raft".into(),
                        format!("127.0.0.1:{raft_port}"),
                        "--checkpoint-every".into(),
                        "50".into(),
                    ],
                    secret: secrets.get(id).copied().unwrap_or(SECRET).to_owned(),
                    child: None,
                };
                (*id, member)
            })
            .collect();
        Cluster { members, directory }
    }

    fn start_all(&mut self) {
        for member in self.members.values_mut() {
            member.spawn();
        }
    }

    fn bases(&self) -> Vec<String> {
        self.members.values().map(Member::base).collect()
    }

    /// The leader, as the running nodes see it: one that says it leads and that every running
    /// node among `voters` names.
    fn wait_leader(&self, among: &[u64]) -> u64 {
        let agent = agent(2_000);
        let deadline = Instant::now() + Duration::from_millis(ELECTION_TIMEOUT_MS);
        loop {
            let views: Vec<Value> = among
                .iter()
                .filter_map(|id| {
                    get(&agent, &format!("{}/v1/cluster", self.members[id].base())).ok()
                })
                .map(|answer| answer.body)
                .collect();
            let leaders: Vec<Option<u64>> = views
                .iter()
                .map(|view| view["leader_id"].as_u64())
                .collect();
            if views.len() == among.len() {
                if let Some(Some(leader)) = leaders.first() {
                    let agreed = leaders.iter().all(|named| *named == Some(*leader));
                    let leads = views
                        .iter()
                        .any(|view| view["node_id"] == json!(leader) && view["state"] == "Leader");
                    if agreed && leads {
                        return *leader;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {leaders:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    fn logs(&self) -> String {
        self.members
            .values()
            .map(|member| format!("--- node {} ---\n{}", member.id, tail(&member.log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the running nodes `ids` have applied the same index with the same digest.
    fn wait_converged(&self, ids: &[u64]) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        loop {
            let views: Vec<Value> = ids.iter().map(|id| self.members[id].cluster()).collect();
            let applied: Vec<Option<u64>> = views
                .iter()
                .map(|view| view["applied_index"].as_u64())
                .collect();
            let digests: Vec<&str> = views
                .iter()
                .map(|view| view["ledger"]["digest"].as_str().unwrap_or(""))
                .collect();
            if applied.windows(2).all(|pair| pair[0] == pair[1])
                && digests.windows(2).all(|pair| pair[0] == pair[1])
            {
                for view in &views {
                    assert!(view["divergence"].is_null(), "a node diverged: {view}");
                }
                return (applied[0].unwrap_or(0), digests[0].to_owned());
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} did not converge: applied {applied:?}, digests {digests:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `body` to `path` until a node answers 200, following 307 to the leader and moving on to
/// another node when one is down, busy or between leaders. The same body (the same ids) every
/// time: a retry of a request that did commit answers `exists`.
fn submit(agent: &ureq::Agent, bases: &[String], path: &str, body: &Value, start: usize) -> Value {
    let deadline = Instant::now() + Duration::from_millis(REQUEST_RETRY_TIMEOUT_MS);
    let mut next = start;
    let mut url = format!("{}{path}", bases[next % bases.len()]);
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "{path} never acknowledged; last answer: {last}"
        );
        match post(agent, &url, body) {
            Ok(answer) if answer.status == 200 => return answer.body,
            Ok(answer) if answer.status == 307 => {
                url = answer.location.expect("a 307 names the leader in Location");
                continue;
            }
            Ok(answer) if answer.status == 503 || answer.status == 504 => {
                last = format!("{} {}", answer.status, answer.body);
            }
            Ok(answer) => panic!("{path}: unexpected {} {}", answer.status, answer.body),
            Err(error) => last = error,
        }
        next += 1;
        url = format!("{}{path}", bases[next % bases.len()]);
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    debit: u64,
    credit: u64,
    amount: u64,
    ledger: u32,
}

fn account_id(ledger: u32, index: u64) -> u64 {
    u64::from(ledger) * 1000 + index
}

fn create_accounts(agent: &ureq::Agent, bases: &[String]) {
    let accounts: Vec<Value> = LEDGERS
        .iter()
        .flat_map(|ledger| {
            (1..=ACCOUNTS_PER_LEDGER)
                .map(move |index| json!({"id": account_id(*ledger, index).to_string(), "ledger": ledger, "code": 1}))
        })
        .collect();
    let results = submit(agent, bases, "/v1/accounts", &Value::Array(accounts), 0);
    for result in results.as_array().expect("results") {
        assert!(
            result["status"] == "ok" || result["status"] == "exists",
            "{result}"
        );
    }
}

/// What the load clients sent (id → fields) and which ids were acknowledged.
#[derive(Default)]
struct Ledgerbook {
    sent: Mutex<HashMap<u64, Sent>>,
    acknowledged: Mutex<Vec<u64>>,
}

fn transfer_json(id: u64, sent: &Sent) -> Value {
    json!({"id": id.to_string(), "debit_account_id": sent.debit.to_string(),
           "credit_account_id": sent.credit.to_string(), "amount": sent.amount.to_string(),
           "ledger": sent.ledger, "code": 1})
}

/// Sends batches of transfers until `stop`, each retried (same ids) until acknowledged.
fn load_client(
    client: u64,
    bases: Vec<String>,
    book: Arc<Ledgerbook>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) {
    let agent = agent(10_000);
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(client);
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..TRANSFERS_PER_REQUEST {
            sequence += 1;
            let id = client * 100_000_000 + sequence;
            let ledger = LEDGERS[random.gen_range(0..LEDGERS.len())];
            let debit = random.gen_range(1..=ACCOUNTS_PER_LEDGER);
            let credit = (debit % ACCOUNTS_PER_LEDGER) + 1;
            let sent = Sent {
                debit: account_id(ledger, debit),
                credit: account_id(ledger, credit),
                amount: random.gen_range(1..=1000),
                ledger,
            };
            book.sent.lock().unwrap().insert(id, sent);
            batch.push(transfer_json(id, &sent));
            ids.push(id);
        }
        let results = submit(
            &agent,
            &bases,
            "/v1/transfers",
            &Value::Array(batch),
            client as usize,
        );
        for (id, result) in ids.iter().zip(results.as_array().expect("results")) {
            assert!(
                result["status"] == "ok" || result["status"] == "exists",
                "transfer {id}: {result}"
            );
        }
        book.acknowledged.lock().unwrap().extend(ids);
        requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every transfer a node holds (id → fields), read from its own state (`stale=true`), each
/// account's debits page by page.
fn transfers_on(agent: &ureq::Agent, base: &str) -> BTreeMap<u64, Sent> {
    let mut found = BTreeMap::new();
    for ledger in LEDGERS {
        for index in 1..=ACCOUNTS_PER_LEDGER {
            let account = account_id(ledger, index);
            let mut timestamp_min = 0u64;
            loop {
                let url = format!(
                    "{base}/v1/accounts/{account}/transfers?stale=true&direction=debits&limit=8189&timestamp_min={timestamp_min}"
                );
                let answer = get(agent, &url).expect("list transfers");
                assert_eq!(answer.status, 200, "{}", answer.body);
                let page = answer.body.as_array().expect("transfers").clone();
                for transfer in &page {
                    let id = u128_of(&transfer["id"]) as u64;
                    let sent = Sent {
                        debit: u128_of(&transfer["debit_account_id"]) as u64,
                        credit: u128_of(&transfer["credit_account_id"]) as u64,
                        amount: u128_of(&transfer["amount"]) as u64,
                        ledger: transfer["ledger"].as_u64().expect("ledger") as u32,
                    };
                    assert!(
                        found.insert(id, sent).is_none(),
                        "transfer {id} listed twice on {base}"
                    );
                    timestamp_min = transfer["timestamp"].as_u64().expect("timestamp") + 1;
                }
                if page.len() < 8189 {
                    break;
                }
            }
        }
    }
    found
}

/// Each account's (debits_posted, credits_posted) on a node (`stale=true`).
fn balances_on(agent: &ureq::Agent, base: &str) -> BTreeMap<u64, (u128, u128)> {
    let mut balances = BTreeMap::new();
    for ledger in LEDGERS {
        for index in 1..=ACCOUNTS_PER_LEDGER {
            let account = account_id(ledger, index);
            let answer =
                get(agent, &format!("{base}/v1/accounts/{account}?stale=true")).expect("account");
            assert_eq!(answer.status, 200, "{}", answer.body);
            balances.insert(
                account,
                (
                    u128_of(&answer.body["debits_posted"]),
                    u128_of(&answer.body["credits_posted"]),
                ),
            );
        }
    }
    balances
}

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

    let book = Arc::new(Ledgerbook::default());
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (1..=LOAD_CLIENTS)
        .map(|client| {
            let (bases, book, stop, requests) = (
                bases.clone(),
                Arc::clone(&book),
                Arc::clone(&stop),
                Arc::clone(&requests),
            );
            std::thread::spawn(move || load_client(client, bases, book, stop, requests))
        })
        .collect();
    // Stop the load however the test ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));

    let mut failovers_ms = Vec::new();
    let mut catch_ups_ms = Vec::new();
    for cycle in 0..KILL_CYCLES {
        // Let the load run a little under the full cluster.
        let before = requests.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_millis(REQUEST_RETRY_TIMEOUT_MS);
        while requests.load(Ordering::Relaxed) < before + 10 {
            assert!(
                Instant::now() < deadline,
                "the load stalled before cycle {cycle}\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
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

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a load client failed");
    }
    let (index, digest) = cluster.wait_converged(&all);
    let sent = book.sent.lock().unwrap().clone();
    let acknowledged = book.acknowledged.lock().unwrap().clone();
    let reader = agent(30_000);
    let mut held = Vec::new();
    for member in cluster.members.values() {
        let found = transfers_on(&reader, &member.base());
        for id in &acknowledged {
            assert_eq!(
                found.get(id),
                sent.get(id),
                "acknowledged transfer {id} on node {}",
                member.id
            );
        }
        for (id, stored) in &found {
            assert_eq!(
                Some(stored),
                sent.get(id),
                "node {} holds transfer {id} as sent",
                member.id
            );
        }
        let balances = balances_on(&reader, &member.base());
        for ledger in LEDGERS {
            let in_ledger = |account: &u64| *account / 1000 == u64::from(ledger);
            let debits: u128 = balances
                .iter()
                .filter(|(account, _)| in_ledger(account))
                .map(|(_, sums)| sums.0)
                .sum();
            let credits: u128 = balances
                .iter()
                .filter(|(account, _)| in_ledger(account))
                .map(|(_, sums)| sums.1)
                .sum();
            let amounts: u128 = found
                .values()
                .filter(|sent| sent.ledger == ledger)
                .map(|sent| u128::from(sent.amount))
                .sum();
            assert_eq!(debits, credits, "ledger {ledger} on node {}", member.id);
            assert_eq!(debits, amounts, "ledger {ledger} on node {}", member.id);
        }
        for (account, (debits, credits)) in &balances {
            let debited: u128 = found
                .values()
                .filter(|sent| sent.debit == *account)
                .map(|sent| u128::from(sent.amount))
                .sum();
            let credited: u128 = found
                .values()
                .filter(|sent| sent.credit == *account)
                .map(|sent| u128::from(sent.amount))
                .sum();
            assert_eq!(
                (*debits, *credits),
                (debited, credited),
                "account {account} on node {}",
                member.id
            );
        }
        held.push(found);
    }
    assert!(
        held.windows(2).all(|pair| pair[0] == pair[1]),
        "every node holds the same transfers"
    );
    let mut sorted = failovers_ms.clone();
    sorted.sort_unstable();
    eprintln!(
        "{KILL_CYCLES} leader kills: failover ms {failovers_ms:?} (median {}, max {}); catch-up ms {catch_ups_ms:?}; \
         {} transfers acknowledged, {} held on every node; applied index {index}, digest {digest}; {} s in all",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        acknowledged.len(),
        held[0].len(),
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
