//! `tally-sim`: `tally-sim replay --data-dir DIR [--export FILE] [--against FILE]`.
//! Without a subcommand it will run the seeded cluster simulator (`--seed`), which
//! is not built yet.

use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;

#[derive(Debug, Parser)]
#[command(
    name = "tally-sim",
    about = "Tally's simulation harness: audit replay and (soon) seeded cluster simulation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-apply a node's log on a fresh engine and check every checkpoint (read-only).
    Replay(tally_sim::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Replay(args)) => tally_sim::replay::main(&args),
        None => {
            eprintln!(
                "the cluster simulator (--seed) is not built yet; try `tally-sim replay --help`"
            );
            ExitCode::from(2)
        }
    }
}
