//! `tally-bench memory`: the server's peak RSS per million accounts and per million transfers.
//!
//! A fresh `tally start`; its resident set is read when idle, then its peak (VmHWM) after
//! `--accounts` accounts and again after `--transfers` transfers between them (binary batches of
//! 8189 over 4 connections). Per million = growth of the peak / count × 10^6. The peak includes
//! whatever the server holds besides the ledger (Raft log entries not yet purged, buffers) and
//! the moment a doubling `Vec` holds its old and new copy, so it is what a host must provide, not
//! the bytes of a record (docs/design.md §2 gives those).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::Transfer;
use zerocopy::IntoBytes;

use crate::http;
use crate::http::Client;
use crate::process;
use crate::process::ServerProcess;
use crate::stats;
use crate::workload::Layout;

/// Connections sending the transfers.
const CONNECTIONS: usize = 4;
const MEBIBYTE: f64 = 1024.0 * 1024.0;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    /// The `tally` binary (default: next to this executable, built if missing).
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Also write the result to DIR/<time>-memory.json.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct MemoryResult {
    pub(crate) accounts: u64,
    pub(crate) transfers: u64,
    pub(crate) idle_rss_bytes: u64,
    pub(crate) peak_rss_after_accounts_bytes: u64,
    pub(crate) peak_rss_after_transfers_bytes: u64,
    pub(crate) peak_rss_mib_per_million_accounts: f64,
    pub(crate) peak_rss_mib_per_million_transfers: f64,
    pub(crate) load_average: String,
    pub(crate) unix_time_s: u64,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.accounts >= 2 && args.transfers >= 1,
        "need at least 2 accounts and 1 transfer"
    );
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => process::locate_tally()?,
    };
    let directory = tempfile::tempdir()?;
    // Growing on demand: peak RSS then follows what is stored, not what is reserved.
    let mut server = ServerProcess::start_with(&tally, directory.path(), Vec::new())?;
    let runtime = crate::load::runtime()?;
    let outcome = runtime.block_on(measure(&args, &server));
    server.stop();
    let result = outcome?;
    println!(
        "idle {:.1} MiB; after {} accounts {:.1} MiB; after {} transfers {:.1} MiB",
        result.idle_rss_bytes as f64 / MEBIBYTE,
        result.accounts,
        result.peak_rss_after_accounts_bytes as f64 / MEBIBYTE,
        result.transfers,
        result.peak_rss_after_transfers_bytes as f64 / MEBIBYTE
    );
    println!(
        "peak RSS: {:.1} MiB per million accounts, {:.1} MiB per million transfers",
        result.peak_rss_mib_per_million_accounts, result.peak_rss_mib_per_million_transfers
    );
    if let Some(directory) = &args.out_dir {
        let path = directory.join(format!("{}-memory.json", result.unix_time_s));
        std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn measure(args: &Args, server: &ServerProcess) -> anyhow::Result<MemoryResult> {
    let idle_rss_bytes = server.rss_bytes()?;
    let layout = Layout::new(1, args.accounts);
    // Unconstrained accounts: the transfers need no funding, so every one of them is stored.
    let mut accounts = layout.accounts();
    for account in &mut accounts {
        account.flags = 0;
    }
    let mut client = Client::new(&server.address, None)?;
    for chunk in accounts.chunks(BATCH_EVENTS_MAX) {
        post_all_ok(&mut client, "/v1/accounts", chunk.as_bytes()).await?;
    }
    let peak_rss_after_accounts_bytes = server.peak_rss_bytes()?;
    let batches = args.transfers.div_ceil(BATCH_EVENTS_MAX as u64);
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let next_batch = Arc::clone(&next_batch);
        let mut client = Client::new(&server.address, None)?;
        let transfers_total = args.transfers;
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = next_batch.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let transfers = batch_of(&layout, batch, transfers_total);
                post_all_ok(&mut client, "/v1/transfers", transfers.as_bytes()).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let peak_rss_after_transfers_bytes = server.peak_rss_bytes()?;
    let per_million = |bytes: u64, count: u64| {
        (bytes as f64 / MEBIBYTE / count as f64 * 1_000_000.0 * 10.0).round() / 10.0
    };
    Ok(MemoryResult {
        accounts: accounts.len() as u64,
        transfers: args.transfers,
        idle_rss_bytes,
        peak_rss_after_accounts_bytes,
        peak_rss_after_transfers_bytes,
        peak_rss_mib_per_million_accounts: per_million(
            peak_rss_after_accounts_bytes.saturating_sub(idle_rss_bytes),
            accounts.len() as u64,
        ),
        peak_rss_mib_per_million_transfers: per_million(
            peak_rss_after_transfers_bytes.saturating_sub(peak_rss_after_accounts_bytes),
            args.transfers,
        ),
        load_average: stats::load_average(),
        unix_time_s: stats::unix_time_s(),
    })
}

/// Transfers `batch * 8189 ..` (up to `transfers_total`), between accounts in a fixed pattern.
fn batch_of(layout: &Layout, batch: u64, transfers_total: u64) -> Vec<Transfer> {
    let first = batch * BATCH_EVENTS_MAX as u64;
    let last = (first + BATCH_EVENTS_MAX as u64).min(transfers_total);
    (first..last)
        .map(|index| {
            let debit = 1 + index % layout.accounts_count;
            let credit = 1 + (index + 1) % layout.accounts_count;
            Transfer {
                id: layout.transfer_id(1, index + 1),
                debit_account_id: layout.account_id(debit),
                credit_account_id: layout.account_id(credit),
                amount: 1,
                ledger: crate::workload::LEDGER,
                code: 1,
                ..Transfer::default()
            }
        })
        .collect()
}

async fn post_all_ok(client: &mut Client, path: &str, body: &[u8]) -> anyhow::Result<()> {
    let answer = client
        .post(
            path,
            http::CONTENT_TYPE_BINARY,
            Bytes::copy_from_slice(body),
        )
        .await
        .map_err(|error| anyhow::anyhow!("POST {path}: {}", error.kind()))?;
    anyhow::ensure!(
        answer.status == 200,
        "POST {path} answered {}",
        answer.status
    );
    let results = http::decode_results(&answer.body)?;
    let failed = results.iter().find(|result| result.status != 0);
    anyhow::ensure!(
        failed.is_none(),
        "POST {path}: event {} answered code {}",
        failed.map_or(0, |result| result.index),
        failed.map_or(0, |result| result.status)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_batches_cover_every_transfer_once_between_different_accounts() {
        let layout = Layout::new(1, 10);
        let total = BATCH_EVENTS_MAX as u64 + 5;
        let first = batch_of(&layout, 0, total);
        let second = batch_of(&layout, 1, total);
        assert_eq!(first.len(), BATCH_EVENTS_MAX);
        assert_eq!(second.len(), 5);
        let ids: std::collections::HashSet<u128> = first
            .iter()
            .chain(&second)
            .map(|transfer| transfer.id)
            .collect();
        assert_eq!(ids.len() as u64, total);
        assert!(first
            .iter()
            .all(|transfer| transfer.debit_account_id != transfer.credit_account_id));
    }
}
