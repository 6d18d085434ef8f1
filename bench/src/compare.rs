//! `tally-bench compare`: Tally and PostgreSQL one after the other in the same run, on `uniform`
//! and `hot`.
//!
//! Tally: a single node (`tally start` on a temporary directory, fresh for every run), binary
//! batches of 8189, closed loop, over 4 and over 8 connections (`--tally-connections`; its best
//! per workload counts, as PostgreSQL's does: on two cores that the load generator shares, how
//! many batches are in flight decides how well the node's stages overlap); then open loop at half the uniform maximum for the latency
//! target, in batches of 2048 over 8 connections, measured after a warm-up of the same load
//! on the same node. (At a million transfers a second a client fills a batch of 8189 in 8 ms
//! and one of 2048 in 2 ms: the wait to be batched is latency to whoever sent the transfer,
//! so a client that cares about latency sends smaller batches. The node's first seconds,
//! cold caches and first connections, are not what a running ledger's users see.) PostgreSQL: every configuration of 8, 16, 32 and 64 clients with single transfers and
//! with batches of 100, each on a fresh schema, durable settings; its best per workload counts.
//! Every run's result goes to `--results-dir`; the last line printed is the comparison.

use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use tally_engine::limits::BATCH_EVENTS_MAX;

use crate::load;
use crate::load::Mode;
use crate::postgres;
use crate::postgres::PostgresMode;
use crate::postgres::PostgresServer;
use crate::process;
use crate::process::ServerProcess;
use crate::stats;
use crate::stats::RunResult;
use crate::workload::Workload;

/// Targets from the issue: Tally at least this many times PostgreSQL's durable transfers/s...
pub(crate) const RATIO_TARGET: f64 = 100.0;
pub(crate) const HOT_RATIO_TARGET: f64 = 300.0;
/// ...and this p99 under open loop at half its maximum rate.
pub(crate) const OPEN_LOOP_P99_TARGET_MS: f64 = 10.0;
/// The open-loop rate as a fraction of the closed-loop maximum.
const OPEN_LOOP_FRACTION: f64 = 0.5;
/// Events per batch and connections of the open-loop run.
const OPEN_LOOP_BATCH_EVENTS: usize = 2048;
const OPEN_LOOP_CONNECTIONS: usize = 8;
/// The same open load, unmeasured, on the same node first.
const OPEN_LOOP_WARM_UP_SECONDS: u64 = 3;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds of each Tally run.
    #[arg(long, default_value_t = 10)]
    tally_seconds: u64,
    /// Connection counts to try for Tally's closed-loop binary batches (the best counts).
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    tally_connections: Vec<usize>,
    /// Seconds of each PostgreSQL configuration.
    #[arg(long, default_value_t = 5)]
    postgres_seconds: u64,
    /// PostgreSQL client counts to try.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    postgres_clients: Vec<usize>,
    /// Accounts each run creates.
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// The `tally` binary (default: next to this executable, built if missing).
    #[arg(long)]
    tally: Option<PathBuf>,
    /// A running PostgreSQL (connection string); default: bench/postgres.sh starts one.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Where each run's result and the comparison are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results_dir: PathBuf,
    #[arg(long)]
    seed: Option<u64>,
}

/// The comparison, as printed (last line) and stored (`<time>-compare.json`).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Comparison {
    pub(crate) tally_transfers_per_second: f64,
    pub(crate) postgres_transfers_per_second: f64,
    pub(crate) ratio: f64,
    pub(crate) hot_tally_transfers_per_second: f64,
    pub(crate) hot_postgres_transfers_per_second: f64,
    pub(crate) hot_ratio: f64,
    pub(crate) tally_p99_ms: f64,
    pub(crate) hot_tally_p99_ms: f64,
    /// PostgreSQL's best configuration per workload, e.g. `batch x100, 32 clients`.
    pub(crate) postgres_best: String,
    pub(crate) hot_postgres_best: String,
    /// Tally's best closed-loop configuration per workload, e.g. `binary x8189, 8 clients`
    /// (empty in comparisons from before Tally tried more than one).
    #[serde(default)]
    pub(crate) tally_best: String,
    #[serde(default)]
    pub(crate) hot_tally_best: String,
    pub(crate) open_loop_rate: f64,
    pub(crate) open_loop_transfers_per_second: f64,
    pub(crate) open_loop_p99_ms: f64,
    pub(crate) ratio_target_met: bool,
    pub(crate) hot_ratio_target_met: bool,
    pub(crate) open_loop_p99_target_met: bool,
    pub(crate) verifications_passed: bool,
    pub(crate) tally_server_peak_rss_bytes: u64,
    pub(crate) load_average: String,
    pub(crate) unix_time_s: u64,
    /// Result files of every run (in the same directory).
    pub(crate) runs: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.results_dir)?;
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => process::locate_tally()?,
    };
    let runtime = load::runtime()?;
    let mut runs = Vec::new();
    anyhow::ensure!(
        !args.tally_connections.is_empty() && !args.tally_connections.contains(&0),
        "--tally-connections needs one or more counts, each at least 1"
    );
    // Tally, closed loop, each workload and connection count on a fresh node.
    let mut tally_best = Vec::new();
    for workload in [Workload::Uniform, Workload::Hot] {
        let mut candidates = Vec::new();
        for &connections in &args.tally_connections {
            let result = run_tally(&runtime, &tally, &args, workload, connections, None)?;
            candidates.push(result);
        }
        tally_best.push(fastest(&candidates));
        runs.extend(candidates);
    }
    let (uniform, hot) = (tally_best[0].clone(), tally_best[1].clone());
    let rate = (uniform.transfers_per_second * OPEN_LOOP_FRACTION).round();
    anyhow::ensure!(rate > 0.0, "Tally acknowledged nothing in the uniform run");
    let open = run_tally(
        &runtime,
        &tally,
        &args,
        Workload::Uniform,
        OPEN_LOOP_CONNECTIONS,
        Some(rate),
    )?;
    runs.push(open.clone());
    // PostgreSQL, every configuration.
    let server = match &args.postgres_url {
        Some(url) => PostgresServer::External(url.clone()),
        None => PostgresServer::start(None)?,
    };
    let mut best = Vec::new();
    for workload in [Workload::Uniform, Workload::Hot] {
        let mut candidates = Vec::new();
        for mode in [PostgresMode::Single, PostgresMode::Batch] {
            for &clients in &args.postgres_clients {
                let postgres_args = postgres::Args {
                    postgres_url: None,
                    workloads: vec![workload],
                    mode,
                    batch: 100,
                    connections: clients,
                    duration_seconds: args.postgres_seconds,
                    accounts: args.accounts,
                    verify_sample: 10_000,
                    seed: args.seed,
                    script: None,
                    out_dir: None,
                };
                let result = runtime.block_on(postgres::run_one(
                    server.url(),
                    workload,
                    mode,
                    100,
                    clients,
                    &postgres_args,
                ))?;
                eprintln!(
                    "postgres {} {} x{} {clients} clients: {:.0} transfers/s, p99 {:.3} ms",
                    workload.name(),
                    result.mode,
                    result.batch_events,
                    result.transfers_per_second,
                    result.p99_ms
                );
                candidates.push(result);
            }
        }
        best.push(fastest(&candidates));
        runs.extend(candidates);
    }
    drop(server);
    let mut names = Vec::new();
    for result in &runs {
        let name = postgres::result_file_name(result);
        std::fs::write(
            args.results_dir.join(&name),
            serde_json::to_string_pretty(result)? + "\n",
        )?;
        names.push(name);
    }
    stats::print_table(&runs);
    let comparison = compare(&uniform, &hot, &open, &best[0], &best[1], &runs, names);
    let path = args
        .results_dir
        .join(format!("{}-compare.json", comparison.unix_time_s));
    std::fs::write(&path, serde_json::to_string_pretty(&comparison)? + "\n")?;
    eprintln!("wrote {} and {} run results", path.display(), runs.len());
    println!(
        "uniform: Tally {:.0}/s vs PostgreSQL {:.0}/s ({}) = {:.1}x (target {RATIO_TARGET}x)",
        comparison.tally_transfers_per_second,
        comparison.postgres_transfers_per_second,
        comparison.postgres_best,
        comparison.ratio
    );
    println!(
        "hot:     Tally {:.0}/s vs PostgreSQL {:.0}/s ({}) = {:.1}x (target {HOT_RATIO_TARGET}x)",
        comparison.hot_tally_transfers_per_second,
        comparison.hot_postgres_transfers_per_second,
        comparison.hot_postgres_best,
        comparison.hot_ratio
    );
    println!(
        "Tally open loop at {:.0}/s: p99 {:.3} ms (target {OPEN_LOOP_P99_TARGET_MS} ms){}",
        comparison.open_loop_rate,
        comparison.open_loop_p99_ms,
        seconds_within_target(&open)
    );
    println!("{}", serde_json::to_string(&comparison)?);
    Ok(())
}

/// The open-loop run's p99 second by second and how many seconds met the target, as
/// "; by second: 8.7, 16.7, ... ms (7 of 10 within)"; empty without the series.
pub(crate) fn seconds_within_target(open: &RunResult) -> String {
    let seconds = &open.p99_ms_per_second;
    if seconds.is_empty() {
        return String::new();
    }
    let within = seconds
        .iter()
        .filter(|p99| **p99 <= OPEN_LOOP_P99_TARGET_MS)
        .count();
    let list: Vec<String> = seconds.iter().map(|p99| format!("{p99:.1}")).collect();
    format!(
        "; by second: {} ms ({within} of {} within)",
        list.join(", "),
        seconds.len()
    )
}

fn run_tally(
    runtime: &tokio::runtime::Runtime,
    tally: &std::path::Path,
    args: &Args,
    workload: Workload,
    connections: usize,
    rate: Option<f64>,
) -> anyhow::Result<RunResult> {
    let directory = tempfile::tempdir()?;
    let mut server = ServerProcess::start(tally, directory.path())?;
    let batch = match rate {
        Some(_) => OPEN_LOOP_BATCH_EVENTS,
        None => BATCH_EVENTS_MAX,
    };
    let load_args = load::Args {
        target: format!("http://{}", server.address),
        api_token: None,
        workload,
        mode: Mode::Binary,
        batch: Some(batch),
        connections: Some(connections),
        rate,
        duration_seconds: args.tally_seconds,
        accounts: args.accounts,
        verify_sample: 10_000,
        seed: args.seed,
        out: None,
    };
    let read_rss = || server.peak_rss_bytes();
    if rate.is_some() {
        let warm_up = load::Args {
            duration_seconds: OPEN_LOOP_WARM_UP_SECONDS,
            verify_sample: 100,
            seed: args.seed.map(|seed| seed ^ 1),
            ..load_args.clone()
        };
        let warmed = runtime.block_on(load::run_load(&warm_up, None));
        warmed.map_err(|error| error.context("the open-loop warm-up"))?;
    }
    let outcome = runtime.block_on(load::run_load(&load_args, Some(&read_rss)));
    server.stop();
    let result = outcome?;
    // Refused for capacity, transfers stop counting while the clock runs on: a maximum
    // measured so is too low, and so is every rate derived from it.
    let refused = result
        .results
        .get("transfers_capacity_exceeded")
        .copied()
        .unwrap_or(0);
    anyhow::ensure!(
        refused == 0,
        "the node ran out of transfer capacity during the {} run over {connections} connections \
         ({refused} transfers refused), so its rate would be understated: shorten \
         --tally-seconds, or set TALLY_ACCOUNTS_MAX and TALLY_TRANSFERS_MAX higher",
        workload.name()
    );
    eprintln!(
        "tally {} {} {connections} connections: {:.0} transfers/s, p99 {:.3} ms",
        workload.name(),
        result.loop_kind,
        result.transfers_per_second,
        result.p99_ms
    );
    Ok(result)
}

/// The run of `candidates` (one or more) with the most transfers per second.
fn fastest(candidates: &[RunResult]) -> RunResult {
    candidates
        .iter()
        .max_by(|a, b| a.transfers_per_second.total_cmp(&b.transfers_per_second))
        .cloned()
        .expect("at least one configuration")
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        (numerator / denominator * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn describe(result: &RunResult) -> String {
    format!(
        "{} x{}, {} clients",
        result.mode, result.batch_events, result.connections
    )
}

fn compare(
    uniform: &RunResult,
    hot: &RunResult,
    open: &RunResult,
    postgres_uniform: &RunResult,
    postgres_hot: &RunResult,
    runs: &[RunResult],
    names: Vec<String>,
) -> Comparison {
    let ratio_uniform = ratio(
        uniform.transfers_per_second,
        postgres_uniform.transfers_per_second,
    );
    let ratio_hot = ratio(hot.transfers_per_second, postgres_hot.transfers_per_second);
    Comparison {
        tally_transfers_per_second: uniform.transfers_per_second,
        postgres_transfers_per_second: postgres_uniform.transfers_per_second,
        ratio: ratio_uniform,
        hot_tally_transfers_per_second: hot.transfers_per_second,
        hot_postgres_transfers_per_second: postgres_hot.transfers_per_second,
        hot_ratio: ratio_hot,
        tally_p99_ms: uniform.p99_ms,
        hot_tally_p99_ms: hot.p99_ms,
        postgres_best: describe(postgres_uniform),
        hot_postgres_best: describe(postgres_hot),
        tally_best: describe(uniform),
        hot_tally_best: describe(hot),
        open_loop_rate: open.rate_target.unwrap_or_default(),
        open_loop_transfers_per_second: open.transfers_per_second,
        open_loop_p99_ms: open.p99_ms,
        ratio_target_met: ratio_uniform >= RATIO_TARGET,
        hot_ratio_target_met: ratio_hot >= HOT_RATIO_TARGET,
        open_loop_p99_target_met: open.p99_ms <= OPEN_LOOP_P99_TARGET_MS,
        verifications_passed: runs.iter().all(|run| {
            run.verification
                .as_ref()
                .is_some_and(|verification| verification.passed)
        }),
        tally_server_peak_rss_bytes: [uniform, hot, open]
            .iter()
            .filter_map(|run| run.server_peak_rss_bytes)
            .max()
            .unwrap_or_default(),
        load_average: stats::load_average(),
        unix_time_s: stats::unix_time_s(),
        runs: names,
    }
}
