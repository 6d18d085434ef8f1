//! The workload: clients that open accounts and then move money (deposits,
//! wallet-to-wallet moves, withdrawals, linked chains, two-phase transfers),
//! retrying every request with the same ids until its outcome is known, and
//! now and then re-sending an answered request to check it is not applied twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tally_engine::Account;
use tally_engine::AccountFlags;
use tally_engine::CreateTransferResult;
use tally_engine::EventResult;
use tally_engine::Operation;
use tally_engine::Transfer;
use tally_engine::TransferFlags;
use tally_journal::fault::SplitMix64;
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

use super::host::host_name;
use super::host::CLIENT_TIMEOUT;
use super::net::receive_frame;
use super::net::send_frame;
use super::net::ClientReply;
use super::net::ClientRequest;
use super::net::CLIENT_PORT;

pub const LEDGERS: [u32; 2] = [1, 2];
/// Per ledger: accounts 0 and 1 are operators (no limits), the rest wallets
/// that must not go negative.
pub const ACCOUNTS_PER_LEDGER: u128 = 8;
const OPERATORS_PER_LEDGER: u128 = 2;

pub fn account_id(ledger: u32, index: u128) -> u128 {
    u128::from(ledger) * 1_000 + index
}

pub fn accounts() -> Vec<Account> {
    let mut accounts = Vec::new();
    for ledger in LEDGERS {
        for index in 0..ACCOUNTS_PER_LEDGER {
            accounts.push(Account {
                id: account_id(ledger, index),
                ledger,
                code: 1,
                flags: if index < OPERATORS_PER_LEDGER {
                    0
                } else {
                    AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                },
                ..Account::default()
            });
        }
    }
    accounts
}

/// One transfer request and what its client finally learned.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub client: u64,
    pub events: Vec<Transfer>,
    /// `None`: the outcome never became known (a liveness failure).
    pub results: Option<Vec<EventResult>>,
    pub attempts: u32,
}

/// Everything the clients saw, in the order they saw it.
#[derive(Default)]
pub struct History {
    pub accounts_ready: bool,
    pub requests: Vec<RequestRecord>,
    /// Checked the moment a reply arrives (re-sent requests, account creation).
    pub violations: Vec<String>,
    pub trace: Vec<u8>,
    pub leader_hint: Option<u64>,
}

impl History {
    pub fn trace(&mut self, bytes: &[u8]) {
        self.trace
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.trace.extend_from_slice(bytes);
    }
}

#[derive(Clone)]
pub struct ClientSetup {
    pub client: u64,
    pub seed: u64,
    pub nodes: Vec<u64>,
    /// Stop starting new requests after this much simulated time.
    pub load_end: Duration,
    /// Give up on a request (a liveness failure) after this much simulated time.
    pub give_up_at: Duration,
    pub history: Arc<Mutex<History>>,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A client's connections and its view of who leads.
pub struct Connection {
    setup: ClientSetup,
    streams: BTreeMap<u64, turmoil::net::TcpStream>,
    target: u64,
    random: SplitMix64,
    /// The last thing that went wrong, for failure reports.
    pub last_error: String,
}

impl Connection {
    pub fn new(setup: ClientSetup, salt: u64) -> Connection {
        let random = SplitMix64::new(setup.seed ^ (setup.client << 40) ^ salt);
        let target = setup.nodes[0];
        Connection {
            setup,
            streams: BTreeMap::new(),
            target,
            random,
            last_error: String::new(),
        }
    }

    fn note(&mut self, error: String) {
        if !self.last_error.contains(&error) {
            if self.last_error.len() > 600 {
                self.last_error.clear();
            }
            self.last_error.push_str(&error);
            self.last_error.push_str("; ");
        }
    }

    fn next_target(&mut self) {
        let hint = self.setup.history.lock().expect("history").leader_hint;
        self.target = match hint {
            Some(leader) if leader != self.target && self.random.chance(1, 2) => leader,
            _ => {
                let nodes = &self.setup.nodes;
                nodes[self.random.below(nodes.len() as u64) as usize]
            }
        };
    }

    async fn call_once(&mut self, request: &ClientRequest) -> std::io::Result<ClientReply> {
        let target = self.target;
        let mut stream = match self.streams.remove(&target) {
            Some(stream) => stream,
            None => {
                let addr = format!("{}:{CLIENT_PORT}", host_name(target));
                tokio::time::timeout(CLIENT_TIMEOUT, turmoil::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??
            }
        };
        let exchange = async {
            send_frame(&mut stream, request).await?;
            receive_frame::<_, ClientReply>(&mut stream).await
        };
        let reply = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| std::io::Error::other("no reply in time"))??;
        self.streams.insert(target, stream);
        Ok(reply)
    }

    /// Sends `request` until a node answers it for good. `None` when
    /// `give_up_at` passes first.
    pub async fn call(&mut self, request: &ClientRequest) -> (Option<ClientReply>, u32) {
        let mut attempts = 0;
        loop {
            if now() > self.setup.give_up_at {
                return (None, attempts);
            }
            attempts += 1;
            let pause_ms = match self.call_once(request).await {
                Ok(reply @ (ClientReply::Results(_) | ClientReply::Done)) => {
                    self.setup.history.lock().expect("history").leader_hint = Some(self.target);
                    return (Some(reply), attempts);
                }
                Ok(ClientReply::NotLeader(Some(leader))) if leader != self.target => {
                    self.target = leader;
                    self.setup.history.lock().expect("history").leader_hint = Some(leader);
                    5
                }
                Ok(ClientReply::Refused(message)) if !message.contains("diverged") => {
                    self.setup
                        .history
                        .lock()
                        .expect("history")
                        .violations
                        .push(format!(
                            "client {}: request refused: {message}",
                            self.setup.client
                        ));
                    return (None, attempts);
                }
                Ok(other) => {
                    self.note(format!("node {}: {other:?}", self.target));
                    self.next_target();
                    20 + self.random.below(80)
                }
                Err(error) => {
                    self.note(format!("node {}: {error}", self.target));
                    self.next_target();
                    20 + self.random.below(80)
                }
            };
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
    }
}

pub(crate) fn parse_results(bytes: &[u8]) -> Vec<EventResult> {
    <[EventResult]>::ref_from_bytes(bytes)
        .expect("the node answers whole 16-byte results")
        .to_vec()
}

/// A workload client: client 0 opens the accounts; then every client sends
/// transfer requests until the load ends.
pub async fn run(setup: ClientSetup) -> turmoil::Result {
    let mut connection = Connection::new(setup.clone(), 0xc11e);
    if setup.client == 0 {
        open_accounts(&setup, &mut connection).await;
    } else {
        while !setup.history.lock().expect("history").accounts_ready {
            if now() > setup.give_up_at {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut random = SplitMix64::new(setup.seed ^ (setup.client << 52) ^ 0x10ad);
    let mut next_id: u128 = (u128::from(setup.client) + 1) << 64;
    let mut pendings: Vec<Transfer> = Vec::new();
    let mut answered: Vec<usize> = Vec::new();
    while now() < setup.load_end {
        if !answered.is_empty() && random.chance(3, 100) {
            let index = answered[random.below(answered.len() as u64) as usize];
            resend(&setup, &mut connection, index).await;
            continue;
        }
        let events = generate(&mut random, &mut next_id, &mut pendings);
        let request = ClientRequest::Submit {
            operation: Operation::CreateTransfers as u8,
            events: events.as_bytes().to_vec(),
        };
        let (reply, attempts) = connection.call(&request).await;
        let results = match reply {
            Some(ClientReply::Results(bytes)) => Some(parse_results(&bytes)),
            _ => None,
        };
        record(
            &setup,
            &connection,
            events,
            results,
            attempts,
            &mut pendings,
            &mut answered,
        );
        tokio::time::sleep(Duration::from_millis(random.below(20))).await;
    }
    Ok(())
}

/// Files one answered (or abandoned) request in the history.
fn record(
    setup: &ClientSetup,
    connection: &Connection,
    events: Vec<Transfer>,
    results: Option<Vec<EventResult>>,
    attempts: u32,
    pendings: &mut Vec<Transfer>,
    answered: &mut Vec<usize>,
) {
    {
        let mut history = setup.history.lock().expect("history");
        if results.is_none() {
            history.violations.push(format!(
                "liveness: client {} gave up on a request after {attempts} attempts; last: {}",
                setup.client, connection.last_error
            ));
        }
        let mut trace = setup.client.to_le_bytes().to_vec();
        trace.extend_from_slice(events.as_bytes());
        if let Some(results) = &results {
            trace.extend_from_slice(results.as_bytes());
            for (event, result) in events.iter().zip(results) {
                let ok = matches!(
                    CreateTransferResult::from_code(result.status),
                    Some(CreateTransferResult::Ok | CreateTransferResult::Exists)
                );
                if ok && event.flags & TransferFlags::PENDING != 0 {
                    pendings.push(*event);
                }
            }
            answered.push(history.requests.len());
        }
        history.trace(&trace);
        history.requests.push(RequestRecord {
            client: setup.client,
            events,
            results,
            attempts,
        });
    }
}

async fn open_accounts(setup: &ClientSetup, connection: &mut Connection) {
    let accounts = accounts();
    let request = ClientRequest::Submit {
        operation: Operation::CreateAccounts as u8,
        events: accounts.as_bytes().to_vec(),
    };
    let (reply, _) = connection.call(&request).await;
    let mut history = setup.history.lock().expect("history");
    match reply {
        Some(ClientReply::Results(bytes)) => {
            let results = parse_results(&bytes);
            history.trace(&bytes);
            for result in &results {
                // 0 = ok, 21 = exists (a retry after an unknown outcome).
                if !matches!(result.status, 0 | 21) {
                    history.violations.push(format!(
                        "account {} was refused with code {}",
                        accounts[result.index as usize].id, result.status
                    ));
                }
            }
            history.accounts_ready = true;
        }
        _ => history
            .violations
            .push("the accounts were never opened (no leader answered)".into()),
    }
}

/// Re-sends an answered request: every event that succeeded must now answer
/// `exists` with the same timestamp, and no failed event may succeed.
async fn resend(setup: &ClientSetup, connection: &mut Connection, index: usize) {
    let (events, first) = {
        let history = setup.history.lock().expect("history");
        let record = &history.requests[index];
        (
            record.events.clone(),
            record.results.clone().expect("answered"),
        )
    };
    let request = ClientRequest::Submit {
        operation: Operation::CreateTransfers as u8,
        events: events.as_bytes().to_vec(),
    };
    let (reply, _) = connection.call(&request).await;
    let Some(ClientReply::Results(bytes)) = reply else {
        return;
    };
    let again = parse_results(&bytes);
    let mut history = setup.history.lock().expect("history");
    history.trace(&bytes);
    for (event, (before, after)) in events.iter().zip(first.iter().zip(&again)) {
        let stored = |status: u32| matches!(status, 0 | 18);
        let consistent = if stored(before.status) {
            after.status == CreateTransferResult::Exists.code()
                && after.timestamp == before.timestamp
        } else {
            !stored(after.status)
        };
        if !consistent {
            history.violations.push(format!(
                "transfer {} re-sent: first answered {} (ts {}), then {} (ts {})",
                event.id, before.status, before.timestamp, after.status, after.timestamp
            ));
        }
    }
}

fn wallet(random: &mut SplitMix64, ledger: u32) -> u128 {
    account_id(
        ledger,
        OPERATORS_PER_LEDGER
            + u128::from(random.below((ACCOUNTS_PER_LEDGER - OPERATORS_PER_LEDGER) as u64) as u32),
    )
}

fn operator(random: &mut SplitMix64, ledger: u32) -> u128 {
    account_id(
        ledger,
        u128::from(random.below(OPERATORS_PER_LEDGER as u64) as u32),
    )
}

fn generate(
    random: &mut SplitMix64,
    next_id: &mut u128,
    pendings: &mut Vec<Transfer>,
) -> Vec<Transfer> {
    let mut events = Vec::new();
    let count = 1 + random.below(6);
    let mut id = || {
        *next_id += 1;
        *next_id
    };
    while (events.len() as u64) < count {
        let ledger = LEDGERS[random.below(2) as usize];
        let plain = |id: u128, debit: u128, credit: u128, amount: u128| Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger,
            code: 1,
            ..Transfer::default()
        };
        match random.below(10) {
            0 | 1 => {
                let credit = wallet(random, ledger);
                let debit = operator(random, ledger);
                events.push(plain(
                    id(),
                    debit,
                    credit,
                    100 + u128::from(random.below(10_000)),
                ));
            }
            2..=4 => {
                let debit = wallet(random, ledger);
                let mut credit = wallet(random, ledger);
                if credit == debit {
                    credit = operator(random, ledger);
                }
                events.push(plain(
                    id(),
                    debit,
                    credit,
                    1 + u128::from(random.below(5_000)),
                ));
            }
            5 => {
                let debit = wallet(random, ledger);
                let credit = operator(random, ledger);
                events.push(plain(
                    id(),
                    debit,
                    credit,
                    1 + u128::from(random.below(3_000)),
                ));
            }
            6 => {
                // A linked chain: deposit then move on, all or nothing.
                let length = 2 + random.below(2);
                let mut from = operator(random, ledger);
                for link in 0..length {
                    let mut to = wallet(random, ledger);
                    if to == from {
                        to = operator(random, ledger);
                    }
                    let mut transfer = plain(id(), from, to, 1 + u128::from(random.below(4_000)));
                    if link + 1 < length {
                        transfer.flags = TransferFlags::LINKED;
                    }
                    events.push(transfer);
                    from = to;
                }
            }
            7 => {
                let debit = wallet(random, ledger);
                let mut credit = wallet(random, ledger);
                if credit == debit {
                    credit = operator(random, ledger);
                }
                let mut transfer = plain(id(), debit, credit, 1 + u128::from(random.below(3_000)));
                transfer.flags = TransferFlags::PENDING;
                events.push(transfer);
            }
            _ => {
                if pendings.is_empty() {
                    continue;
                }
                let pending = pendings.swap_remove(random.below(pendings.len() as u64) as usize);
                let post = random.chance(2, 3);
                let mut resolve = Transfer {
                    id: id(),
                    pending_id: pending.id,
                    ledger: pending.ledger,
                    code: pending.code,
                    flags: if post {
                        TransferFlags::POST_PENDING_TRANSFER
                    } else {
                        TransferFlags::VOID_PENDING_TRANSFER
                    },
                    ..Transfer::default()
                };
                resolve.amount = if post && random.chance(1, 2) {
                    1 + random.below(pending.amount as u64) as u128
                } else {
                    u128::MAX
                };
                events.push(resolve);
            }
        }
    }
    // A chain must not end the batch open: the generator closes every chain itself.
    events
}
