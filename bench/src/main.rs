//! `tally-bench`: benchmarks that print their figures last as one JSON line.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod engine;
mod journal;
mod server;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Engine(args) => engine::run(args),
        Command::Journal(args) => journal::run(args),
        Command::Server(args) => server::run(args),
    }
}
