//! Restarts and crashes of a real `tally start` process: nothing acknowledged is ever lost.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use common::u128_of;
use common::Server;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;
use serde_json::Value;

const ACCOUNTS_COUNT: u64 = 8;
const CLIENTS_COUNT: u64 = 4;
const EVENTS_PER_REQUEST: u64 = 25;
/// Requests acknowledged (all clients together) before the server is killed mid-load.
const REQUESTS_BEFORE_KILL: u64 = 300;
/// The longest the load may take to reach `REQUESTS_BEFORE_KILL`.
const LOAD_TIMEOUT_MS: u64 = 30_000;
/// Spacing of the clients' id ranges: no client sends more requests than this.
const REQUESTS_PER_CLIENT_MAX: u64 = 1_000_000;

fn create_accounts(server: &Server, ledger: u32) {
    let accounts: Vec<Value> = (1..=ACCOUNTS_COUNT)
        .map(|id| json!({"id": (u64::from(ledger) * 1000 + id).to_string(), "ledger": ledger, "code": 1}))
        .collect();
    let statuses = server.create("/v1/accounts", &Value::Array(accounts));
    assert!(statuses.iter().all(|status| status == "ok"), "{statuses:?}");
}

/// Σ debits_posted and Σ credits_posted over the accounts of `ledger`.
fn ledger_sums(server: &Server, ledger: u32) -> (u128, u128) {
    let mut sums = (0u128, 0u128);
    for id in 1..=ACCOUNTS_COUNT {
        let (status, account) =
            server.get(&format!("/v1/accounts/{}", u64::from(ledger) * 1000 + id));
        assert_eq!(status, 200, "{account}");
        sums.0 += u128_of(&account["debits_posted"]);
        sums.1 += u128_of(&account["credits_posted"]);
    }
    sums
}

#[test]
fn restart_keeps_every_transfer_and_the_digest() {
    let directory = tempfile::tempdir().unwrap();
    // Snapshots every few entries: the restarts below restore one and re-apply the log after.
    let mut server = Server::start_with(
        &directory.path().join("data"),
        None,
        &["--snapshot-every", "5"],
    );
    create_accounts(&server, 1);
    let mut expected = BTreeMap::new();
    for request in 0..20u64 {
        let transfers: Vec<Value> = (0..50u64)
            .map(|event| {
                let id = 1 + request * 50 + event;
                expected.insert(id, id % 97 + 1);
                json!({"id": id.to_string(), "debit_account_id": (1001 + id % 8).to_string(),
                       "credit_account_id": (1001 + (id + 1) % 8).to_string(), "amount": (id % 97 + 1).to_string(),
                       "ledger": 1, "code": 1})
            })
            .collect();
        let statuses = server.create("/v1/transfers", &Value::Array(transfers));
        assert!(statuses.iter().all(|status| status == "ok"), "{statuses:?}");
    }
    let digest = server.digest();
    let sums = ledger_sums(&server, 1);
    assert_eq!(sums.0, sums.1);
    // Snapshots were taken, and stored packed (header byte 7, docs/design.md §3).
    let snapshot = directory
        .path()
        .join("data")
        .join("snapshots")
        .join("snapshot");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snapshot.exists() {
        assert!(Instant::now() < deadline, "no snapshot:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Packed with its transfers in a run file (encoding 2), which the snapshots after the first
    // extended: the first run file is the only one.
    assert_eq!(
        std::fs::read(&snapshot).unwrap()[7],
        2,
        "a packed snapshot with a run"
    );
    let runs: Vec<String> = std::fs::read_dir(snapshot.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snapshot.run."))
        .collect();
    assert_eq!(runs, ["snapshot.run.1"], "{}", server.log());

    assert!(
        server.terminate(),
        "SIGTERM must end the server cleanly:\n{}",
        server.log()
    );
    server.restart();
    assert_eq!(server.digest(), digest, "a clean restart changed the state");
    assert_eq!(ledger_sums(&server, 1), sums);
    for (id, amount) in [
        (1u64, expected[&1]),
        (500, expected[&500]),
        (1000, expected[&1000]),
    ] {
        let (status, transfer) = server.get(&format!("/v1/transfers/{id}"));
        assert_eq!(status, 200);
        assert_eq!(u128_of(&transfer["amount"]), u128::from(amount));
    }

    server.kill_9();
    server.restart();
    assert_eq!(
        server.digest(),
        digest,
        "a crash after a clean restart changed the state"
    );
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_transfer() {
    let directory = tempfile::tempdir().unwrap();
    let mut server = Server::start(&directory.path().join("data"), None);
    create_accounts(&server, 1);
    create_accounts(&server, 2);

    let stop = Arc::new(AtomicBool::new(false));
    let requests_acknowledged = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS_COUNT)
        .map(|client| {
            let base = server.base.clone();
            let stop = Arc::clone(&stop);
            let requests_acknowledged = Arc::clone(&requests_acknowledged);
            std::thread::spawn(move || load(client, &base, &stop, &requests_acknowledged))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(LOAD_TIMEOUT_MS);
    while requests_acknowledged.load(Ordering::SeqCst) < REQUESTS_BEFORE_KILL
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill_9();
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = BTreeMap::new();
    let mut submitted = BTreeMap::new();
    let mut clients_interrupted = 0;
    for client in clients {
        let outcome = client.join().expect("client thread");
        acknowledged.extend(outcome.acknowledged);
        submitted.extend(outcome.submitted);
        clients_interrupted += usize::from(outcome.interrupted);
    }
    assert!(
        clients_interrupted > 0,
        "the kill must come while clients are sending"
    );
    assert!(
        acknowledged.len() > 100,
        "too little load to mean anything: {}",
        acknowledged.len()
    );

    server.restart();
    let found = transfers_found(&server);
    eprintln!(
        "{} transfers acknowledged, {} submitted, {} found after kill -9 and restart",
        acknowledged.len(),
        submitted.len(),
        found.len()
    );
    let mut found_sums: BTreeMap<u32, u128> = BTreeMap::new();
    for (id, (ledger, amount)) in &found {
        assert_eq!(
            submitted.get(id),
            Some(&(*ledger, *amount)),
            "transfer {id} was never submitted like this"
        );
        *found_sums.entry(*ledger).or_default() += amount;
    }
    for (id, sent) in &acknowledged {
        assert_eq!(
            found.get(id),
            Some(sent),
            "acknowledged transfer {id} was lost"
        );
    }
    for ledger in [1u32, 2] {
        let (debits, credits) = ledger_sums(&server, ledger);
        assert_eq!(debits, credits, "ledger {ledger} does not balance");
        assert_eq!(
            debits,
            found_sums.get(&ledger).copied().unwrap_or(0),
            "ledger {ledger}: balances disagree with the transfers found"
        );
    }
}

/// Every stored transfer, found by paging through each account's debits (each transfer debits
/// exactly one account).
fn transfers_found(server: &Server) -> Sent {
    let mut found = Sent::new();
    for ledger in [1u32, 2] {
        for account in 1..=ACCOUNTS_COUNT {
            let account_id = u64::from(ledger) * 1000 + account;
            let mut timestamp_min = 0u64;
            loop {
                let (status, page) = server.get(&format!(
                    "/v1/accounts/{account_id}/transfers?direction=debits&timestamp_min={timestamp_min}"
                ));
                assert_eq!(status, 200, "{page}");
                let page = page.as_array().expect("an array").clone();
                for transfer in &page {
                    let id = u64::try_from(u128_of(&transfer["id"])).expect("a small id");
                    let ledger = u32::try_from(transfer["ledger"].as_u64().unwrap()).unwrap();
                    found.insert(id, (ledger, u128_of(&transfer["amount"])));
                }
                match page.last() {
                    Some(last) if page.len() == tally_engine::limits::QUERY_RESULTS_MAX => {
                        timestamp_min = last["timestamp"].as_u64().unwrap() + 1;
                    }
                    _ => break,
                }
            }
        }
    }
    found
}

type Sent = BTreeMap<u64, (u32, u128)>;

struct LoadOutcome {
    acknowledged: Sent,
    submitted: Sent,
    /// A request failed because the server died under it.
    interrupted: bool,
}

/// One client: batches of transfers with unique ids until stopped or the server dies.
fn load(
    client: u64,
    base: &str,
    stop: &AtomicBool,
    requests_acknowledged: &AtomicU64,
) -> LoadOutcome {
    let agent = common::agent();
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(client);
    let mut outcome = LoadOutcome {
        acknowledged: Sent::new(),
        submitted: Sent::new(),
        interrupted: false,
    };
    let deadline = Instant::now() + Duration::from_millis(LOAD_TIMEOUT_MS);
    for request in 0..REQUESTS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let ledger: u32 = random.gen_range(1..=2);
        let base_id = u64::from(ledger) * 1000;
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        for event in 0..EVENTS_PER_REQUEST {
            let id = 1 + (client * REQUESTS_PER_CLIENT_MAX + request) * EVENTS_PER_REQUEST + event;
            let debit = random.gen_range(1..=ACCOUNTS_COUNT);
            let credit = 1 + debit % ACCOUNTS_COUNT;
            let amount: u128 = random.gen_range(1..=1_000_000);
            batch.push(json!({
                "id": id.to_string(),
                "debit_account_id": (base_id + debit).to_string(),
                "credit_account_id": (base_id + credit).to_string(),
                "amount": amount.to_string(),
                "ledger": ledger,
                "code": 1,
            }));
            outcome.submitted.insert(id, (ledger, amount));
            ids.push(id);
        }
        let response = agent
            .post(format!("{base}/v1/transfers"))
            .header("Content-Type", "application/json")
            .send(Value::Array(batch).to_string());
        let Ok(mut response) = response else {
            outcome.interrupted = true;
            break;
        };
        if response.status() != 200 {
            continue;
        }
        let Ok(results) = response.body_mut().read_json::<Value>() else {
            outcome.interrupted = true;
            break;
        };
        for (id, result) in ids.iter().zip(results.as_array().expect("results")) {
            assert_eq!(result["status"], "ok", "transfer {id}");
            outcome.acknowledged.insert(*id, outcome.submitted[id]);
        }
        requests_acknowledged.fetch_add(1, Ordering::SeqCst);
    }
    outcome
}
