//! Clusters of real `tally start` processes on loopback for the cluster and partition tests:
//! spawning members (killed on drop), finding the leader, waiting for convergence, a retrying
//! client that follows the leader, a steady load of transfers and the end-of-test audit (every
//! acknowledged transfer on every node, sums balance, same transfers everywhere). Every wait is
//! bounded.

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

use rand::Rng;
use rand::SeedableRng;
use serde_json::json;
use serde_json::Value;

use super::free_port;
use super::u128_of;

pub const SECRET: &str = "test cluster secret: correct horse battery staple";
/// How long a node may take to answer HTTP after it was spawned.
pub const SPAWN_TIMEOUT_MS: u64 = 30_000;
/// How long a cluster may take to elect a leader.
pub const ELECTION_TIMEOUT_MS: u64 = 30_000;
/// How long nodes may take to catch up and converge.
pub const CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// How long a client keeps retrying one request (following the leader) before giving up.
pub const REQUEST_RETRY_TIMEOUT_MS: u64 = 30_000;
pub const POLL_MS: u64 = 20;
pub const ACCOUNTS_PER_LEDGER: u64 = 6;
pub const LEDGERS: [u32; 2] = [1, 2];
pub const TRANSFERS_PER_REQUEST: u64 = 10;

/// One cluster at a time per test binary: two cores are shared by every process of a test.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An HTTP client that does not follow redirects (the tests look at them).
pub fn agent(timeout_ms: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_millis(timeout_ms)))
        .build()
        .into()
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
    pub retry_after: bool,
}

pub fn answer(
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

pub fn get(agent: &ureq::Agent, url: &str) -> Result<Answer, String> {
    answer(agent.get(url).call())
}

pub fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Answer, String> {
    answer(
        agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string()),
    )
}

/// Where a node's peers dial it (its entry in the membership) and where it listens for them.
/// They differ when something sits in between (the partition test's proxies).
pub struct RaftAddresses {
    pub advertised: String,
    pub listen: String,
}

/// One `tally start` process of a cluster; killed when dropped.
pub struct Member {
    pub id: u64,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `start` arguments after `--data-dir DIR`.
    pub arguments: Vec<String>,
    pub secret: String,
    pub child: Option<Child>,
}

impl Member {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the node's log");
        let child = Command::new(super::tally_binary())
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

    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("node running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn cluster(&self) -> Value {
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

pub struct Cluster {
    pub members: BTreeMap<u64, Member>,
    pub directory: tempfile::TempDir,
}

impl Cluster {
    /// Nodes `ids` of a cluster whose initial membership is `ids`, each listening for peers on
    /// 127.0.0.1 where the others dial it; `secrets` overrides a node's cluster secret.
    pub fn new(ids: &[u64], secrets: &BTreeMap<u64, &str>) -> Cluster {
        Cluster::with_raft_addresses(ids, secrets, |_| {
            let address = format!("127.0.0.1:{}", free_port());
            RaftAddresses {
                advertised: address.clone(),
                listen: address,
            }
        })
    }

    /// Like [`Cluster::new`], with each node's peer addresses chosen by `raft`.
    pub fn with_raft_addresses(
        ids: &[u64],
        secrets: &BTreeMap<u64, &str>,
        raft: impl Fn(u64) -> RaftAddresses,
    ) -> Cluster {
        let directory = tempfile::tempdir().expect("temp dir");
        let addresses: BTreeMap<u64, (u16, RaftAddresses)> = ids
            .iter()
            .map(|id| (*id, (free_port(), raft(*id))))
            .collect();
        let peers: Vec<String> = addresses
            .iter()
            .map(|(id, (http, raft))| {
                format!(
                    "{id}={}@127.0.0.1:{http}@region-{}",
                    raft.advertised,
                    id % 2
                )
            })
            .collect();
        let peers = peers.join(",");
        let members = addresses
            .iter()
            .map(|(id, (http_port, raft))| {
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
                        raft.listen.clone(),
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

    pub fn start_all(&mut self) {
        for member in self.members.values_mut() {
            member.spawn();
        }
    }

    pub fn bases(&self) -> Vec<String> {
        self.members.values().map(Member::base).collect()
    }

    /// The leader, as the running nodes see it: one that says it leads and that every running
    /// node among `voters` names.
    pub fn wait_leader(&self, among: &[u64]) -> u64 {
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

    pub fn logs(&self) -> String {
        self.members
            .values()
            .map(|member| format!("--- node {} ---\n{}", member.id, tail(&member.log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the running nodes `ids` have applied the same index with the same digest.
    pub fn wait_converged(&self, ids: &[u64]) -> (u64, String) {
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

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `body` to `path` until a node answers 200, following 307 to the leader and moving on to
/// another node when one is down, busy or between leaders. The same body (the same ids) every
/// time: a retry of a request that did commit answers `exists`.
pub fn submit(
    agent: &ureq::Agent,
    bases: &[String],
    path: &str,
    body: &Value,
    start: usize,
) -> Value {
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
pub struct Sent {
    pub debit: u64,
    pub credit: u64,
    pub amount: u64,
    pub ledger: u32,
}

pub fn account_id(ledger: u32, index: u64) -> u64 {
    u64::from(ledger) * 1000 + index
}

pub fn create_accounts(agent: &ureq::Agent, bases: &[String]) {
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
pub struct Ledgerbook {
    pub sent: Mutex<HashMap<u64, Sent>>,
    pub acknowledged: Mutex<Vec<u64>>,
}

pub fn transfer_json(id: u64, sent: &Sent) -> Value {
    json!({"id": id.to_string(), "debit_account_id": sent.debit.to_string(),
           "credit_account_id": sent.credit.to_string(), "amount": sent.amount.to_string(),
           "ledger": sent.ledger, "code": 1})
}

/// Sends batches of transfers until `stop`, each retried (same ids) until acknowledged; a request
/// that gets no answer within `request_timeout_ms` is retried on the next node.
fn load_client(
    client: u64,
    bases: Vec<String>,
    book: Arc<Ledgerbook>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    request_timeout_ms: u64,
) {
    let agent = agent(request_timeout_ms);
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
pub fn transfers_on(agent: &ureq::Agent, base: &str) -> BTreeMap<u64, Sent> {
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
pub fn balances_on(agent: &ureq::Agent, base: &str) -> BTreeMap<u64, (u128, u128)> {
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

/// A steady load: `clients` threads running [`load_client`]; stopped when dropped.
pub struct Load {
    pub book: Arc<Ledgerbook>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(bases: &[String], clients: u64, request_timeout_ms: u64) -> Load {
        let book = Arc::new(Ledgerbook::default());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let threads = (1..=clients)
            .map(|client| {
                let (bases, book, stop, requests) = (
                    bases.to_vec(),
                    Arc::clone(&book),
                    Arc::clone(&stop),
                    Arc::clone(&requests),
                );
                std::thread::spawn(move || {
                    load_client(client, bases, book, stop, requests, request_timeout_ms)
                })
            })
            .collect();
        Load {
            book,
            stop,
            requests,
            threads,
        }
    }

    /// Requests acknowledged so far.
    pub fn acknowledged_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Waits until `count` more requests are acknowledged, or fails.
    pub fn wait_for_requests(&self, count: u64, cluster: &Cluster, what: &str) {
        let target = self.acknowledged_requests() + count;
        let deadline = Instant::now() + Duration::from_millis(REQUEST_RETRY_TIMEOUT_MS);
        while self.acknowledged_requests() < target {
            assert!(
                Instant::now() < deadline,
                "the load stalled ({what})\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    /// Stops the clients and waits for them (a client that failed fails the test).
    pub fn finish(mut self) -> Arc<Ledgerbook> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a load client failed");
        }
        Arc::clone(&self.book)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The end-of-test audit of the running nodes `ids`, once they have converged (same applied
/// index, same digest, no divergence): every acknowledged transfer is on every node with the
/// fields sent, every stored transfer was sent as stored, every account's and every ledger's
/// sums balance, and every node holds the same transfers. Returns the transfers held and the
/// converged index and digest.
pub fn audit(
    cluster: &Cluster,
    ids: &[u64],
    book: &Ledgerbook,
) -> (BTreeMap<u64, Sent>, u64, String) {
    let (index, digest) = cluster.wait_converged(ids);
    let sent = book.sent.lock().unwrap().clone();
    let acknowledged = book.acknowledged.lock().unwrap().clone();
    let reader = agent(30_000);
    let mut held: Vec<BTreeMap<u64, Sent>> = Vec::new();
    for id in ids {
        let member = &cluster.members[id];
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
        check_balances(&balances_on(&reader, &member.base()), &found, member.id);
        held.push(found);
    }
    assert!(
        held.windows(2).all(|pair| pair[0] == pair[1]),
        "every node holds the same transfers"
    );
    (held.swap_remove(0), index, digest)
}

/// Per ledger, debits equal credits equal the sum of the ledger's transfers; per account, the
/// posted sums equal those of the transfers that name it.
fn check_balances(
    balances: &BTreeMap<u64, (u128, u128)>,
    transfers: &BTreeMap<u64, Sent>,
    node: u64,
) {
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
        let amounts: u128 = transfers
            .values()
            .filter(|sent| sent.ledger == ledger)
            .map(|sent| u128::from(sent.amount))
            .sum();
        assert_eq!(debits, credits, "ledger {ledger} on node {node}");
        assert_eq!(debits, amounts, "ledger {ledger} on node {node}");
    }
    for (account, (debits, credits)) in balances {
        let debited: u128 = transfers
            .values()
            .filter(|sent| sent.debit == *account)
            .map(|sent| u128::from(sent.amount))
            .sum();
        let credited: u128 = transfers
            .values()
            .filter(|sent| sent.credit == *account)
            .map(|sent| u128::from(sent.amount))
            .sum();
        assert_eq!(
            (*debits, *credits),
            (debited, credited),
            "account {account} on node {node}"
        );
    }
}
