//! `tally`: run a node (`tally start`) or talk to one.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tally_api::cli::Cli;
use tally_api::cli::Command;
use tally_api::server::ServerConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A replay's memory is touched once and mostly written in order: on this kind of VM,
    // faulting in huge pages cost more than their TLB hits saved (docs/design.md §5).
    let huge_pages = match std::env::var("TALLY_HUGE_PAGES").as_deref() {
        Ok("on") => matches!(cli.command, Command::Start(_) | Command::Replay(_)),
        Ok("off") => false,
        _ => matches!(cli.command, Command::Start(_)),
    };
    if huge_pages {
        if let Some(error) = reexecute_with_huge_pages() {
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

/// The glibc tunable that makes the allocator ask for transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`) for the memory it maps.
const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// A node's ledger is gigabytes of records and id indexes, touched at start-up and then read
/// at random: on 4 KiB pages nearly every lookup also misses the TLB, and every page is a
/// fault to touch. Where transparent huge pages are left to `madvise` (the usual default),
/// glibc's allocator asks for them when its `glibc.malloc.hugetlb=1` tunable is set, and a
/// tunable is read only as a process starts: so `tally start` (and `tally replay` with
/// `TALLY_HUGE_PAGES=on`) executes itself again, once, with it added to `GLIBC_TUNABLES`
/// (docs/design.md §4). Nothing happens when the tunable is already there (set, or after the
/// re-execution), or off Linux. Returns why the re-execution failed (the process then goes on
/// without it); it does not return when it succeeds.
fn reexecute_with_huge_pages() -> Option<std::io::Error> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables
        .split(':')
        .any(|tunable| tunable.starts_with("glibc.malloc.hugetlb="))
    {
        return None;
    }
    let tunables = if tunables.is_empty() {
        HUGE_PAGES_TUNABLE.to_owned()
    } else {
        format!("{tunables}:{HUGE_PAGES_TUNABLE}")
    };
    let executable = match std::env::current_exe() {
        Ok(executable) => executable,
        Err(error) => return Some(error),
    };
    let mut arguments = std::env::args_os();
    let mut command = std::process::Command::new(executable);
    if let Some(name) = arguments.next() {
        std::os::unix::process::CommandExt::arg0(&mut command, name);
    }
    command.args(arguments).env("GLIBC_TUNABLES", tunables);
    Some(std::os::unix::process::CommandExt::exec(&mut command))
}
