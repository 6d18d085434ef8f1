//! `tally-sim`: the simulation harness.
//!
//! - `tally-sim --seed S` runs one seeded cluster simulation and prints, last,
//!   one JSON line (`seed`, `trace_hash`, `ok`, `faults`, `acknowledged_transfers`).
//! - `tally-sim --seeds N [--first S]` runs N seeds (random unless `--first`),
//!   one line each, then a summary line (`seeds`, `failed`, `ok`).
//! - `tally-sim --minutes M` keeps running random seeds for M minutes (a soak).
//! - `tally-sim replay --data-dir DIR [--export FILE] [--against FILE]` is the audit replay.

use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use clap::Parser;
use clap::Subcommand;
use tally_sim::cluster::Options;
use tally_sim::cluster::SeedReport;
use tally_sim::cluster::Variant;

#[derive(Debug, Parser)]
#[command(
    name = "tally-sim",
    about = "Tally's simulation harness: seeded cluster simulation with faults, and audit replay"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "minutes"])]
    seed: Option<u64>,
    /// Run this many seeds: random ones, or `--first`, `--first + 1`, ...
    #[arg(long)]
    seeds: Option<u64>,
    /// With `--seeds`: the first seed of a consecutive range.
    #[arg(long, requires = "seeds")]
    first: Option<u64>,
    /// Keep running random seeds for this many minutes (a soak).
    #[arg(long, conflicts_with = "seeds")]
    minutes: Option<f64>,
    /// Cluster size (1 to 5); drawn from each seed when absent.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5))]
    nodes: Option<u64>,
    /// Run a deliberately broken build that the auditor must catch
    /// (`no-fsync`: fsync reports success and makes nothing durable).
    #[arg(long, value_parser = ["correct", "no-fsync"], default_value = "correct")]
    variant: String,
    /// Log what the nodes do (tracing, to stderr); RUST_LOG filters it.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-apply a node's log on a fresh engine and check every checkpoint (read-only).
    Replay(tally_sim::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Replay(args)) = &cli.command {
        return tally_sim::replay::main(args);
    }
    if cli.verbose {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let options = Options {
        nodes: cli.nodes,
        variant: match cli.variant.as_str() {
            "no-fsync" => Variant::NoFsync,
            _ => Variant::Correct,
        },
    };
    if let Some(seed) = cli.seed {
        if cli.verbose {
            eprint!(
                "{}",
                tally_sim::cluster::plan::Plan::from_seed(seed, cli.nodes)
            );
        }
        let report = tally_sim::cluster::run_seed(seed, &options);
        print_report(&report, &cli);
        return if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let deadline = cli
        .minutes
        .map(|minutes| Instant::now() + Duration::from_secs_f64(minutes * 60.0));
    let count = match (cli.seeds, deadline) {
        (Some(count), _) => count,
        (None, Some(_)) => u64::MAX,
        (None, None) => {
            eprintln!("give --seed S, --seeds N or --minutes M (see --help)");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut random_base = random_seed();
    let mut failed = Vec::new();
    let mut ran = 0u64;
    while ran < count && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        let seed = match cli.first {
            Some(first) => first + ran,
            None => {
                random_base = splitmix(random_base);
                random_base
            }
        };
        let report = tally_sim::cluster::run_seed(seed, &options);
        print_report(&report, &cli);
        if !report.ok {
            failed.push(seed);
        }
        ran += 1;
    }
    println!(
        "{}",
        serde_json::json!({
            "seeds": ran,
            "failed": failed,
            "ok": failed.is_empty(),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(report: &SeedReport, cli: &Cli) {
    if !report.ok {
        println!("seed {} FAILED:", report.seed);
        for failure in report.failures.iter().take(20) {
            println!("  - {failure}");
        }
        if report.failures.len() > 20 {
            println!("  ... and {} more; by kind:", report.failures.len() - 20);
            let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
            for failure in &report.failures {
                let kind: String = failure
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(60)
                    .collect();
                *kinds.entry(kind).or_default() += 1;
            }
            for (kind, count) in kinds {
                println!("    {count:>6} × {kind}");
            }
        }
        print!("{}", report.plan);
        let mut nodes = cli
            .nodes
            .map(|nodes| format!(" --nodes {nodes}"))
            .unwrap_or_default();
        if cli.variant != "correct" {
            nodes.push_str(&format!(" --variant {}", cli.variant));
        }
        println!(
            "reproduce: cargo run --release -p tally-sim -- --seed {}{nodes}",
            report.seed
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "seed": report.seed,
            "trace_hash": format!("{:032x}", report.trace_hash),
            "ok": report.ok,
            "faults": report.faults,
            "acknowledged_transfers": report.acknowledged_transfers,
            "nodes": report.nodes,
            "simulated_seconds": report.simulated.as_secs_f64(),
            "wall_seconds": report.wall.as_secs_f64(),
        })
    );
}

/// A seed nobody chose: from the clock and the process id.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or_default();
    splitmix(nanos ^ u64::from(std::process::id()) << 32)
}

fn splitmix(seed: u64) -> u64 {
    let z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
