//! `tally-bench load`: drive any running Tally node or cluster over HTTP with one of the
//! workloads, then verify the ledger over the API.
//!
//! Set-up (not measured) creates the run's accounts and, for the funded workloads, one funding
//! transfer per account. The run prints a table and, last, its result as one JSON line; with
//! `--out FILE` the full result (per-second series and latency histogram, for `report`) goes to
//! the file and the printed line leaves those two out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::Account;
use tally_engine::CreateAccountResult;
use tally_engine::Transfer;
use zerocopy::IntoBytes;

use crate::driver;
use crate::driver::Attempt;
use crate::driver::Backend;
use crate::driver::Plan;
use crate::http;
use crate::http::Client;
use crate::stats::LedgerSums;
use crate::stats::RunResult;
use crate::stats::Verification;
use crate::workload;
use crate::workload::Layout;
use crate::workload::Schedule;
use crate::workload::Workload;
use crate::workload::BURST_SECONDS;

/// Connections that read accounts and transfers back after a run.
const VERIFY_CONNECTIONS: usize = 8;
/// Most JSON events per request (the API takes up to 8189; larger JSON bodies only cost more).
const JSON_BATCH_EVENTS_DEFAULT: usize = 100;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Batches of 128-byte records, `application/octet-stream`.
    Binary,
    /// JSON arrays of `--batch` transfers.
    Json,
    /// One operation per JSON request (a wallet move is its linked pair).
    Single,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Json => "json",
            Mode::Single => "single",
        }
    }
}

#[derive(clap::Args, Clone)]
pub(crate) struct Args {
    /// The node (any node of a cluster: writes follow 307 redirects to the leader).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) target: String,
    /// Bearer token, if the server has one.
    #[arg(long, env = "TALLY_API_TOKEN")]
    pub(crate) api_token: Option<String>,
    #[arg(long, value_enum, default_value_t = Workload::Uniform)]
    pub(crate) workload: Workload,
    #[arg(long, value_enum, default_value_t = Mode::Binary)]
    pub(crate) mode: Mode,
    /// Events per request (binary default 8189, json default 100; single: one operation).
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Concurrent connections (default: 4 binary, 16 json, 64 single).
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// Open loop at this many transfers per second; without it, closed loop (max throughput).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_seconds: u64,
    /// Accounts the run creates (plus one operator account).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) accounts: u64,
    /// Acknowledged transfers looked up afterwards: all of them up to this many, else a uniform
    /// sample of this size.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) verify_sample: usize,
    /// Seed of the workload (and of the run's id prefix, unless --prefix).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Write the full result (with series and histogram) to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl Args {
    fn batch_events(&self) -> usize {
        match self.mode {
            Mode::Binary => self.batch.unwrap_or(BATCH_EVENTS_MAX),
            Mode::Json => self.batch.unwrap_or(JSON_BATCH_EVENTS_DEFAULT),
            // A wallet move is two linked events in one request.
            Mode::Single => 2,
        }
    }

    fn connections(&self) -> usize {
        self.connections.unwrap_or(match self.mode {
            Mode::Binary => 4,
            Mode::Json => 16,
            Mode::Single => 64,
        })
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let result = runtime.block_on(run_load(&args, None))?;
    finish(&result, args.out.as_deref())?;
    anyhow::ensure!(
        result
            .verification
            .as_ref()
            .is_some_and(|verification| verification.passed),
        "the verification failed"
    );
    Ok(())
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints the table and the JSON line (last); writes the full result to `out`.
pub(crate) fn finish(result: &RunResult, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    crate::stats::print_table(std::slice::from_ref(result));
    if let Some(verification) = &result.verification {
        print_verification(verification);
    }
    match out {
        Some(path) => {
            std::fs::write(path, serde_json::to_string_pretty(result)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
            println!("{}", serde_json::to_string(&result.summary())?);
        }
        None => println!("{}", serde_json::to_string(result)?),
    }
    Ok(())
}

fn print_verification(verification: &Verification) {
    println!(
        "verification: {} of {} acknowledged transfers looked up{} ({} missing, {} different); {} accounts read; totals {}; {} retry mismatches: {}",
        verification.transfers_checked,
        verification.transfers_acknowledged,
        if verification.sampled { ", a uniform sample" } else { "" },
        verification.transfers_missing,
        verification.transfers_mismatched,
        verification.accounts_checked,
        match verification.totals_match {
            Some(true) => "match what was acknowledged",
            Some(false) => "DIFFER from what was acknowledged",
            None => "not compared (some outcomes unknown)",
        },
        verification.retry_mismatches,
        if verification.passed { "passed" } else { "FAILED" }
    );
    for ledger in &verification.ledgers {
        println!(
            "ledger {}: debits_posted {} credits_posted {} debits_pending {} credits_pending {} {}",
            ledger.ledger,
            ledger.debits_posted,
            ledger.credits_posted,
            ledger.debits_pending,
            ledger.credits_pending,
            if ledger.balanced {
                "balanced"
            } else {
                "UNBALANCED"
            }
        );
    }
}

/// Set-up, the run and the verification against `args.target`. `rss` reads the server's peak
/// RSS when this process started it.
pub(crate) async fn run_load(
    args: &Args,
    rss: Option<&(dyn Fn() -> anyhow::Result<u64> + Sync)>,
) -> anyhow::Result<RunResult> {
    let plan = plan(args)?;
    let mut client = Client::new(&args.target, args.api_token.clone())?;
    eprintln!(
        "set-up: {} accounts (run prefix {:#x}) on {}",
        plan.layout.accounts_count + 1,
        plan.layout.prefix,
        client.authority()
    );
    set_up(&mut client, &plan).await?;
    if let Some(schedule) = &plan.schedule {
        eprintln!(
            "open loop: {} requests due over {} s",
            schedule.requests_count(),
            args.duration_seconds
        );
    }
    let mut backends = Vec::new();
    for _ in 0..plan.connections {
        backends.push(TallyBackend {
            client: Client::new(client.authority(), args.api_token.clone())?,
            mode: args.mode,
        });
    }
    let label = format!("{} {}", args.workload.name(), args.mode.name());
    let totals = driver::run(&plan, backends, &label).await?;
    let mut result = totals.result("tally", args.mode.name(), &plan);
    result.rate_target = args.rate;
    if args.mode == Mode::Single {
        // One operation per request (a wallet move is its linked pair).
        result.batch_events = 1;
    }
    result.server_peak_rss_bytes = rss.map(|read| read()).transpose()?;
    eprintln!(
        "verifying: {} of {} acknowledged transfers, {} accounts",
        totals.sample.len(),
        totals.acknowledged,
        plan.layout.accounts_count + 1
    );
    result.verification = Some(
        verify(
            client.authority(),
            args.api_token.as_deref(),
            &plan,
            &totals,
        )
        .await?,
    );
    Ok(result)
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    anyhow::ensure!(args.duration_seconds > 0, "--duration-seconds must be >= 1");
    let batch_events = args.batch_events();
    anyhow::ensure!(
        (2..=BATCH_EVENTS_MAX).contains(&batch_events),
        "--batch must be 2..={BATCH_EVENTS_MAX}"
    );
    let connections = args.connections();
    anyhow::ensure!(
        (1..workload::STREAMS_MAX as usize).contains(&connections),
        "--connections must be at least 1"
    );
    anyhow::ensure!(
        args.accounts >= workload::HOT_ACCOUNTS_COUNT.max(2 * workload::WALLETS_PER_USER),
        "--accounts must be at least {}",
        workload::HOT_ACCOUNTS_COUNT
    );
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    // Neither 0 nor u64::MAX, so no id is 0 or u128::MAX.
    let prefix = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1) | 1;
    let duration_s = args.duration_seconds as f64;
    let operations_max = if args.mode == Mode::Single {
        1
    } else {
        usize::MAX
    };
    // Requests per second from transfers per second: single requests carry ~1 event.
    let events_per_request = if args.mode == Mode::Single {
        1.0
    } else {
        batch_events as f64
    };
    let schedule = match (args.workload, args.rate) {
        (Workload::Burst, None) => anyhow::bail!("the burst workload needs --rate (open loop)"),
        (Workload::Burst, Some(rate)) => {
            anyhow::ensure!(
                duration_s >= BURST_SECONDS + 2.0,
                "the burst workload needs --duration-seconds of at least {}",
                BURST_SECONDS + 2.0
            );
            // The spike sits in the middle of the run.
            let spike_start_s = ((duration_s - BURST_SECONDS) / 2.0).floor();
            Some(Schedule::burst(
                rate / events_per_request,
                duration_s,
                spike_start_s,
            ))
        }
        (_, Some(rate)) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            Some(Schedule::constant(rate / events_per_request, duration_s))
        }
        (_, None) => None,
    };
    Ok(Plan {
        workload: args.workload,
        layout: Layout::new(prefix, args.accounts),
        seed,
        connections,
        batch_events,
        operations_max,
        duration: Duration::from_secs(args.duration_seconds),
        schedule,
        sample_max: args.verify_sample,
    })
}

/// Creates the run's accounts and funding transfers; every one must answer `ok`.
async fn set_up(client: &mut Client, plan: &Plan) -> anyhow::Result<()> {
    let accounts = plan.layout.accounts();
    for chunk in accounts.chunks(BATCH_EVENTS_MAX) {
        let codes = post_binary(client, "/v1/accounts", chunk.as_bytes()).await?;
        if let Some((index, code)) = codes.iter().enumerate().find(|(_, code)| **code != 0) {
            anyhow::bail!(
                "creating account {}: {}",
                chunk[index].id,
                CreateAccountResult::from_code(*code).map_or("unknown", |result| result.name())
            );
        }
    }
    let funding = plan.layout.funding(plan.workload);
    for chunk in funding.chunks(BATCH_EVENTS_MAX) {
        let codes = post_binary(client, "/v1/transfers", chunk.as_bytes()).await?;
        if let Some((index, code)) = codes.iter().enumerate().find(|(_, code)| **code != 0) {
            anyhow::bail!(
                "funding transfer {}: {}",
                chunk[index].id,
                crate::stats::result_name(*code)
            );
        }
    }
    Ok(())
}

/// A set-up request, resent while the server is busy (a bounded number of times).
async fn post_binary(client: &mut Client, path: &str, body: &[u8]) -> anyhow::Result<Vec<u32>> {
    const ATTEMPTS_MAX: usize = 100;
    let body = Bytes::copy_from_slice(body);
    for _ in 0..ATTEMPTS_MAX {
        match client
            .post(path, http::CONTENT_TYPE_BINARY, body.clone())
            .await
        {
            Ok(answer) if answer.status == 200 => {
                return Ok(http::decode_results(&answer.body)?
                    .iter()
                    .map(|result| result.status)
                    .collect());
            }
            Ok(answer) if answer.status == 503 || answer.status == 504 => {}
            Ok(answer) => anyhow::bail!(
                "POST {path} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ),
            Err(error) => eprintln!("POST {path}: {}; retrying", error.kind()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("POST {path}: no answer after {ATTEMPTS_MAX} attempts")
}

/// A batch's transfers as a request body's bytes, shared with the batch (kept for the answer and
/// for resends), not copied.
struct TransferBytes(Arc<Vec<Transfer>>);

impl AsRef<[u8]> for TransferBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Tally over HTTP, one connection.
pub(crate) struct TallyBackend {
    pub(crate) client: Client,
    pub(crate) mode: Mode,
}

impl Backend for TallyBackend {
    async fn submit(&mut self, transfers: &Arc<Vec<Transfer>>) -> Attempt {
        let (content_type, body) = match self.mode {
            Mode::Binary => (
                http::CONTENT_TYPE_BINARY,
                Bytes::from_owner(TransferBytes(Arc::clone(transfers))),
            ),
            Mode::Json | Mode::Single => (
                http::CONTENT_TYPE_JSON,
                Bytes::from(http::json_transfers(transfers)),
            ),
        };
        let answer = match self.client.post("/v1/transfers", content_type, body).await {
            Ok(answer) => answer,
            Err(http::TransportError::Connect) => return Attempt::Busy("connect".into()),
            Err(error) => return Attempt::Unknown(error.kind().into()),
        };
        match answer.status {
            200 => {
                let codes = match self.mode {
                    Mode::Binary => http::decode_results(&answer.body)
                        .map(|results| results.iter().map(|result| result.status).collect()),
                    Mode::Json | Mode::Single => http::decode_json_transfer_results(&answer.body),
                };
                match codes {
                    Ok(codes) if codes.len() == transfers.len() => Attempt::Answered(codes),
                    _ => Attempt::Unknown("bad_answer".into()),
                }
            }
            503 if String::from_utf8_lossy(&answer.body).contains("unknown") => {
                Attempt::Unknown("http_503_outcome_unknown".into())
            }
            503 => Attempt::Busy("http_503_busy".into()),
            504 => Attempt::Unknown("http_504".into()),
            status => Attempt::Refused(format!("http_{status}")),
        }
    }
}

/// Reads every account of the run and the sampled transfers back (linearizable reads).
async fn verify(
    authority: &str,
    token: Option<&str>,
    plan: &Plan,
    totals: &driver::Totals,
) -> anyhow::Result<Verification> {
    let account_ids: Vec<u128> = plan.layout.account_ids().collect();
    let accounts = read_all(authority, token, &account_ids, "accounts").await?;
    let transfer_ids: Vec<u128> = totals.sample.iter().map(|transfer| transfer.id).collect();
    let transfers = read_all(authority, token, &transfer_ids, "transfers").await?;
    let mut verification = Verification {
        transfers_acknowledged: totals.acknowledged,
        transfers_checked: totals.sample.len() as u64,
        sampled: (totals.sample.len() as u64) < totals.acknowledged,
        accounts_checked: account_ids.len() as u64,
        retry_mismatches: totals.outcome.retry_mismatches,
        ..Verification::default()
    };
    for (sent, found) in totals.sample.iter().zip(&transfers) {
        match found {
            None => verification.transfers_missing += 1,
            Some(json) => {
                if !transfer_matches(sent, json) {
                    verification.transfers_mismatched += 1;
                }
            }
        }
    }
    let mut sums = std::collections::BTreeMap::<u32, [u128; 4]>::new();
    let mut accounts_missing = 0;
    for account in &accounts {
        let Some(json) = account else {
            accounts_missing += 1;
            continue;
        };
        let account = account_from_json(json)?;
        let entry = sums.entry(account.ledger).or_default();
        entry[0] += account.debits_posted;
        entry[1] += account.credits_posted;
        entry[2] += account.debits_pending;
        entry[3] += account.credits_pending;
    }
    verification.ledgers = sums
        .iter()
        .map(|(ledger, [dp, cp, dpe, cpe])| LedgerSums::new(*ledger, *dp, *cp, *dpe, *cpe))
        .collect();
    let funding: u128 = plan
        .layout
        .funding(plan.workload)
        .iter()
        .map(|transfer| transfer.amount)
        .sum();
    let posted_expected = funding + totals.outcome.posted_amount;
    let pending_expected =
        totals.outcome.pending_reserved_amount - totals.outcome.pending_released_amount;
    verification.posted_expected = posted_expected.to_string();
    verification.pending_expected = pending_expected.to_string();
    let ledger = sums.get(&workload::LEDGER).copied().unwrap_or_default();
    verification.totals_match = (totals.unknown_outcomes == 0)
        .then_some(ledger[0] == posted_expected && ledger[2] == pending_expected);
    verification.passed = accounts_missing == 0
        && verification.transfers_missing == 0
        && verification.transfers_mismatched == 0
        && verification.ledgers.iter().all(|ledger| ledger.balanced)
        && verification.totals_match != Some(false)
        && verification.retry_mismatches == 0;
    Ok(verification)
}

/// `GET /v1/{kind}/{id}` for every id over a few connections; `None` for a 404.
async fn read_all(
    authority: &str,
    token: Option<&str>,
    ids: &[u128],
    kind: &'static str,
) -> anyhow::Result<Vec<Option<serde_json::Value>>> {
    let chunk_size = ids.len().div_ceil(VERIFY_CONNECTIONS).max(1);
    let mut tasks = Vec::new();
    for chunk in ids.chunks(chunk_size) {
        let chunk = chunk.to_vec();
        let mut client = Client::new(authority, token.map(str::to_owned))?;
        tasks.push(tokio::spawn(async move {
            let mut found = Vec::with_capacity(chunk.len());
            for id in chunk {
                found.push(read_one(&mut client, kind, id).await?);
            }
            anyhow::Ok(found)
        }));
    }
    let mut all = Vec::with_capacity(ids.len());
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

async fn read_one(
    client: &mut Client,
    kind: &str,
    id: u128,
) -> anyhow::Result<Option<serde_json::Value>> {
    const ATTEMPTS_MAX: usize = 50;
    let path = format!("/v1/{kind}/{id}");
    for _ in 0..ATTEMPTS_MAX {
        match client.get(&path).await {
            Ok(answer) if answer.status == 200 => {
                return Ok(Some(serde_json::from_slice(&answer.body)?));
            }
            Ok(answer) if answer.status == 404 => return Ok(None),
            Ok(answer) if answer.status == 503 || answer.status == 504 => {}
            Ok(answer) => anyhow::bail!("GET {path} answered {}", answer.status),
            Err(error) => eprintln!("GET {path}: {}; retrying", error.kind()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("GET {path}: no answer after {ATTEMPTS_MAX} attempts")
}

fn json_u128(json: &serde_json::Value, field: &str) -> anyhow::Result<u128> {
    json[field]
        .as_str()
        .with_context(|| format!("{field} is not a string"))?
        .parse()
        .with_context(|| format!("{field} is not a u128"))
}

fn account_from_json(json: &serde_json::Value) -> anyhow::Result<Account> {
    Ok(Account {
        id: json_u128(json, "id")?,
        debits_pending: json_u128(json, "debits_pending")?,
        debits_posted: json_u128(json, "debits_posted")?,
        credits_pending: json_u128(json, "credits_pending")?,
        credits_posted: json_u128(json, "credits_posted")?,
        ledger: json["ledger"].as_u64().context("ledger")? as u32,
        ..Account::default()
    })
}

/// Whether the stored transfer is the one that was sent (ids, amount, ledger, code, flags).
fn transfer_matches(sent: &Transfer, json: &serde_json::Value) -> bool {
    let flags: Vec<&str> = json["flags"]
        .as_array()
        .map(|flags| flags.iter().filter_map(|flag| flag.as_str()).collect())
        .unwrap_or_default();
    json_u128(json, "id").ok() == Some(sent.id)
        && json_u128(json, "debit_account_id").ok() == Some(sent.debit_account_id)
        && json_u128(json, "credit_account_id").ok() == Some(sent.credit_account_id)
        && json_u128(json, "amount").ok() == Some(sent.amount)
        && json_u128(json, "pending_id").ok() == Some(sent.pending_id)
        && json["ledger"].as_u64() == Some(u64::from(sent.ledger))
        && json["code"].as_u64() == Some(u64::from(sent.code))
        && flags == tally_engine::TransferFlags::names(sent.flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::CreateTransferResult;

    #[test]
    fn stored_transfers_are_compared_field_by_field() {
        let sent = Transfer {
            id: 7,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: u128::MAX,
            ledger: 1,
            code: 3,
            flags: tally_engine::TransferFlags::LINKED,
            ..Transfer::default()
        };
        let stored = serde_json::json!({
            "id": "7", "debit_account_id": "1", "credit_account_id": "2",
            "amount": u128::MAX.to_string(), "pending_id": "0", "ledger": 1, "code": 3,
            "flags": ["linked"], "timestamp": 5
        });
        assert!(transfer_matches(&sent, &stored));
        let mut other = stored.clone();
        other["amount"] = serde_json::json!("1");
        assert!(!transfer_matches(&sent, &other));
        let mut other = stored;
        other["flags"] = serde_json::json!([]);
        assert!(!transfer_matches(&sent, &other));
    }

    #[test]
    fn result_names_cover_every_transfer_code() {
        for result in CreateTransferResult::ALL {
            assert_eq!(crate::stats::result_name(result.code()), result.name());
        }
        assert_eq!(crate::stats::result_name(9999), "code_9999");
    }
}
