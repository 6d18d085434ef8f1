//! `tally`: run a node (`tally start`) or talk to one.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tally_api::cli::Cli;
use tally_api::cli::Command;
use tally_api::huge_pages::HugePagesSetting;
use tally_api::server::ServerConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A replay's memory is touched once and mostly written in order: on this kind of VM,
    // faulting in huge pages cost more than their TLB hits saved (docs/design.md §5).
    let huge_pages = match tally_api::huge_pages::setting() {
        HugePagesSetting::On => matches!(cli.command, Command::Start(_) | Command::Replay(_)),
        HugePagesSetting::Off => false,
        HugePagesSetting::Default => matches!(cli.command, Command::Start(_)),
    };
    if huge_pages {
        if let Some(error) = tally_api::huge_pages::reexecute_with_huge_pages() {
            eprintln!("warning: not re-executed with transparent huge pages: {error}");
        }
    }
    let outcome = match &cli.command {
        Command::Start(args) => args.to_config(cli.api_token.clone()).and_then(start),
        Command::Replay(args) => return tally_sim::replay::main(args),
        _ => tally_api::cli::run_client(&cli),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: ServerConfig) -> anyhow::Result<bool> {
    tally_api::server::check_config(&config)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tally_api::server::run(config))?;
    Ok(true)
}
