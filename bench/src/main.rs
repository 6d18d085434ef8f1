//! `tally-bench`: benchmarks that print their figures last as one JSON line.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod cluster;
mod compare;
mod driver;
mod engine;
mod http;
mod journal;
mod load;
mod memory;
mod postgres;
mod process;
mod report;
mod server;
mod stats;
mod workload;

#[derive(Parser)]
#[command(
    name = "tally-bench",
    about = "Tally benchmarks; each prints its figures last as one JSON line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The business logic alone, against a bare loop doing the same memory work.
    Engine(engine::Args),
    /// Durable appends through the journal, against plain write + fdatasync.
    Journal(journal::Args),
    /// A real `tally start` process driven over loopback HTTP.
    Server(server::Args),
    /// A local cluster under binary batches, its leader killed (kill -9) mid-run.
    Cluster(cluster::Args),
    /// Load against a running node or cluster (workloads, open or closed loop), then verify.
    Load(load::Args),
    /// The same uniform and hot workloads against PostgreSQL (durable settings).
    Postgres(postgres::Args),
    /// Tally (one node, binary batches) and PostgreSQL one after the other, same run.
    Compare(compare::Args),
    /// The server's peak RSS per million accounts and per million transfers.
    Memory(memory::Args),
    /// bench/results/REPORT.md and its plots from the JSON results.
    Report(report::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The engine benchmark measures the business logic as a node runs it: on transparent huge
    // pages, which `tally start` asks for (`TALLY_HUGE_PAGES=off` turns both off).
    if matches!(cli.command, Command::Engine(_))
        && tally_api::huge_pages::setting() != tally_api::huge_pages::HugePagesSetting::Off
    {
        if let Some(error) = tally_api::huge_pages::reexecute_with_huge_pages() {
            eprintln!("warning: not re-executed with transparent huge pages: {error}");
        }
    }
    match cli.command {
        Command::Engine(args) => engine::run(args),
        Command::Journal(args) => journal::run(args),
        Command::Server(args) => server::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Load(args) => load::run(args),
        Command::Postgres(args) => postgres::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Memory(args) => memory::run(args),
        Command::Report(args) => report::run(args),
    }
}
