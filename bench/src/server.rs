//! A real `tally start` process driven over loopback HTTP.
//!
//! Three phases, each bounded by `--phase-seconds`: (a) binary batches of 8189 transfers, (b) JSON
//! batches of 100 transfers, (c) single-transfer JSON requests from 64 concurrent connections.
//! Every connection is a hyper HTTP/1.1 connection sending one request at a time, so latency is
//! what one client sees. Prints a table, then the figures as one JSON line, last.
//!
//! The server binary is `tally` next to this benchmark's own executable (the same target
//! directory); when it is missing, `cargo build --release --bin tally` is run first
//! (`process::locate_tally`). The process and the client are shared with `load` and `compare`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::Account;
use tally_engine::Transfer;
use zerocopy::IntoBytes;

use crate::http;
use crate::http::Client;
use crate::process;
use crate::process::ServerProcess;
use crate::stats;

/// Latencies are recorded in microseconds up to this bound.
const LATENCY_MAX_MICROSECONDS: u64 = stats::LATENCY_MAX_MICROSECONDS;
pub(crate) const ACCOUNTS_COUNT: u64 = 10_000;
pub(crate) const LEDGER: u32 = 1;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    phase_seconds: u64,
    /// Concurrent connections sending binary batches of 8189 transfers.
    #[arg(long, default_value_t = 4)]
    binary_connections: usize,
    /// Concurrent connections sending JSON batches.
    #[arg(long, default_value_t = 16)]
    json_batch_connections: usize,
    /// Transfers per JSON batch.
    #[arg(long, default_value_t = 100)]
    json_batch_events: usize,
    /// Concurrent connections sending one transfer per request.
    #[arg(long, default_value_t = 64)]
    single_connections: usize,
    /// Run only these phases (comma-separated: binary, json_batch, single).
    #[arg(long, default_value = "binary,json_batch,single")]
    phases: String,
    /// The `tally` binary (default: next to this executable, built if missing).
    #[arg(long)]
    tally: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.phase_seconds > 0, "--phase-seconds must be at least 1");
    anyhow::ensure!(
        (1..=BATCH_EVENTS_MAX).contains(&args.json_batch_events),
        "--json-batch-events must be 1..={BATCH_EVENTS_MAX}"
    );
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => process::locate_tally()?,
    };
    let directory = tempfile::tempdir()?;
    let mut server = ServerProcess::start(&tally, directory.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(drive(&args, server.address.clone()));
    let peak_rss_bytes = server.peak_rss_bytes();
    server.stop();
    let phases = outcome?;
    report(&phases, peak_rss_bytes?);
    Ok(())
}

/// One request; returns the status and the whole body.
async fn send(
    client: &mut Client,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let answer = client
        .post(path, content_type, body)
        .await
        .map_err(|error| anyhow::anyhow!("POST {path}: {}", error.kind()))?;
    Ok((answer.status, answer.body))
}

struct Phase {
    name: &'static str,
    requests: u64,
    transfers_ok: u64,
    transfers_failed: u64,
    busy: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Phase {
    fn transfers_per_second(&self) -> f64 {
        self.transfers_ok as f64 / self.elapsed.as_secs_f64()
    }

    fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    transfers_ok: u64,
    transfers_failed: u64,
    busy: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Binary,
    Json { events: usize },
}

async fn drive(args: &Args, address: String) -> anyhow::Result<Vec<Phase>> {
    create_accounts(&address).await?;
    let next_id = Arc::new(AtomicU64::new(1));
    let duration = Duration::from_secs(args.phase_seconds);
    let mut phases = Vec::new();
    let plan = [
        ("binary", Kind::Binary, args.binary_connections),
        (
            "json_batch",
            Kind::Json {
                events: args.json_batch_events,
            },
            args.json_batch_connections,
        ),
        ("single", Kind::Json { events: 1 }, args.single_connections),
    ];
    let wanted: Vec<&str> = args.phases.split(',').map(str::trim).collect();
    for (name, kind, connections) in plan
        .into_iter()
        .filter(|(name, _, _)| wanted.contains(name))
    {
        eprintln!(
            "phase {name}: {connections} connections for {} s",
            args.phase_seconds
        );
        phases.push(run_phase(name, kind, connections, duration, &address, &next_id).await?);
    }
    Ok(phases)
}

async fn create_accounts(address: &str) -> anyhow::Result<()> {
    let mut sender = Client::new(address, None)?;
    let ids: Vec<u64> = (1..=ACCOUNTS_COUNT).collect();
    for chunk in ids.chunks(BATCH_EVENTS_MAX) {
        let accounts: Vec<Account> = chunk
            .iter()
            .map(|id| Account {
                id: u128::from(*id),
                ledger: LEDGER,
                code: 1,
                ..Account::default()
            })
            .collect();
        let body = Bytes::from(accounts.as_bytes().to_vec());
        let (status, answer) = send(
            &mut sender,
            "/v1/accounts",
            "application/octet-stream",
            body,
        )
        .await?;
        anyhow::ensure!(status == 200, "creating accounts: {status}");
        let results = http::decode_results(&answer)?;
        anyhow::ensure!(
            results.iter().all(|result| result.status == 0),
            "an account was not created"
        );
    }
    Ok(())
}

async fn run_phase(
    name: &'static str,
    kind: Kind,
    connections: usize,
    duration: Duration,
    address: &str,
    next_id: &Arc<AtomicU64>,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let address = address.to_owned();
        let next_id = Arc::clone(next_id);
        tasks.push(tokio::spawn(async move {
            client(kind, connection as u64, &address, &next_id, deadline).await
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_MICROSECONDS, 3)?;
    let mut total = Tally::default();
    for task in tasks {
        let (tally, histogram) = task.await??;
        latency.add(&histogram)?;
        total.requests += tally.requests;
        total.transfers_ok += tally.transfers_ok;
        total.transfers_failed += tally.transfers_failed;
        total.busy += tally.busy;
    }
    Ok(Phase {
        name,
        requests: total.requests,
        transfers_ok: total.transfers_ok,
        transfers_failed: total.transfers_failed,
        busy: total.busy,
        elapsed: started.elapsed(),
        latency,
    })
}

async fn client(
    kind: Kind,
    connection: u64,
    address: &str,
    next_id: &AtomicU64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(Tally, Histogram<u64>)> {
    let mut sender = Client::new(address, None)?;
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(connection);
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_MICROSECONDS, 3)?;
    let mut tally = Tally::default();
    let events = match kind {
        Kind::Binary => BATCH_EVENTS_MAX,
        Kind::Json { events } => events,
    };
    while tokio::time::Instant::now() < deadline {
        let first_id = next_id.fetch_add(events as u64, Ordering::Relaxed);
        let transfers = uniform_transfers(&mut random, first_id, events);
        let (content_type, body) = match kind {
            Kind::Binary => (
                "application/octet-stream",
                Bytes::from(transfers.as_bytes().to_vec()),
            ),
            Kind::Json { .. } => (
                "application/json",
                Bytes::from(http::json_transfers(&transfers)),
            ),
        };
        let sent = Instant::now();
        let (status, answer) = send(&mut sender, "/v1/transfers", content_type, body).await?;
        let elapsed = sent.elapsed();
        tally.requests += 1;
        match status {
            200 => {
                latency.record(
                    elapsed
                        .as_micros()
                        .clamp(1, u128::from(LATENCY_MAX_MICROSECONDS)) as u64,
                )?;
                let ok = count_ok(kind, &answer)?;
                tally.transfers_ok += ok;
                tally.transfers_failed += events as u64 - ok;
            }
            503 => {
                tally.busy += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => anyhow::bail!(
                "POST /v1/transfers answered {other}: {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    Ok((tally, latency))
}

/// `count` transfers of 1 between random accounts `1..=ACCOUNTS_COUNT` of ledger `LEDGER`, ids
/// from `first_id` on: the uniform workload of the server and cluster benchmarks.
pub(crate) fn uniform_transfers(
    random: &mut impl Rng,
    first_id: u64,
    count: usize,
) -> Vec<Transfer> {
    (0..count as u64)
        .map(|offset| {
            let debit = random.gen_range(1..=ACCOUNTS_COUNT);
            let credit = 1 + debit % ACCOUNTS_COUNT;
            Transfer {
                id: u128::from(first_id + offset),
                debit_account_id: u128::from(debit),
                credit_account_id: u128::from(credit),
                amount: 1,
                ledger: LEDGER,
                code: 1,
                ..Transfer::default()
            }
        })
        .collect()
}

fn count_ok(kind: Kind, answer: &[u8]) -> anyhow::Result<u64> {
    match kind {
        Kind::Binary => {
            let results = http::decode_results(answer)?;
            Ok(results.iter().filter(|result| result.status == 0).count() as u64)
        }
        Kind::Json { .. } => {
            let results: Vec<serde_json::Value> = serde_json::from_slice(answer)?;
            Ok(results
                .iter()
                .filter(|result| result["status"] == "ok")
                .count() as u64)
        }
    }
}

fn report(phases: &[Phase], peak_rss_bytes: u64) {
    println!(
        "{:<11} {:>9} {:>12} {:>8} {:>6} {:>14} {:>12} {:>9} {:>9} {:>9}",
        "phase",
        "requests",
        "transfers",
        "failed",
        "busy",
        "transfers/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "p999 ms"
    );
    let mut figures = serde_json::Map::new();
    for phase in phases {
        println!(
            "{:<11} {:>9} {:>12} {:>8} {:>6} {:>14.0} {:>12.0} {:>9.3} {:>9.3} {:>9.3}",
            phase.name,
            phase.requests,
            phase.transfers_ok,
            phase.transfers_failed,
            phase.busy,
            phase.transfers_per_second(),
            phase.requests_per_second(),
            phase.quantile_ms(0.5),
            phase.quantile_ms(0.99),
            phase.quantile_ms(0.999),
        );
        let rate = if phase.name == "single" {
            (
                "single_requests_per_second".to_owned(),
                phase.transfers_per_second(),
            )
        } else {
            (
                format!("{}_transfers_per_second", phase.name),
                phase.transfers_per_second(),
            )
        };
        figures.insert(rate.0, serde_json::json!(rate.1.round()));
        for (suffix, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            figures.insert(
                format!("{}_{suffix}_ms", phase.name),
                serde_json::json!((phase.quantile_ms(quantile) * 1000.0).round() / 1000.0),
            );
        }
    }
    println!(
        "server peak RSS: {:.1} MiB",
        peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    figures.insert(
        "server_peak_rss_bytes".into(),
        serde_json::json!(peak_rss_bytes),
    );
    println!("{}", serde_json::Value::Object(figures));
}
