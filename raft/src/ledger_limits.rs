//! The limits a node's ledger applies the log under, recorded beside the data.
//!
//! The limits decide results (`accounts_capacity_exceeded`, `transfers_capacity_exceeded`,
//! `history_capacity_exceeded`), and a restart re-applies the log after the latest snapshot.
//! Re-applied under other limits than it was first applied under, a batch refused for capacity
//! would now succeed: money moves that its client was told did not, and the leader's earlier
//! checkpoints then report drift. So a node records its limits in the file `ledger-limits` of
//! its data directory, and refuses to start under other limits while the log holds entries
//! after the latest snapshot (docs/design.md §4, "Ledger capacity"). Growing a ledger is then:
//! take a snapshot (`tally cluster snapshot`) with the old limits, stop, restart with the new
//! ones.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;
use tally_engine::Ledger;
use tally_journal::MetaStore;
use tally_journal::Storage;

use crate::node::StartError;

/// File name of the recorded limits, in the data directory.
pub const LEDGER_LIMITS_FILE_NAME: &str = "ledger-limits";

/// The limits that decide a ledger's capacity results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLimits {
    pub accounts_max: u64,
    pub transfers_max: u64,
    pub history_rows_max: u64,
}

impl LedgerLimits {
    pub fn of(ledger: &Ledger) -> LedgerLimits {
        LedgerLimits {
            accounts_max: ledger.accounts_max() as u64,
            transfers_max: ledger.transfers_max() as u64,
            history_rows_max: ledger.history_rows_max() as u64,
        }
    }
}

impl std::fmt::Display for LedgerLimits {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "accounts_max {}, transfers_max {}, history_rows_max {}",
            self.accounts_max, self.transfers_max, self.history_rows_max
        )
    }
}

/// Checks the limits a starting node's ledger has (`now`, after restoring its snapshot) against
/// those recorded in `data_dir`, then records `now`. `applied_index` is the index the restored
/// ledger covers (the snapshot's), `last_index` the log's newest: entries between them will be
/// re-applied. A data directory with no record (new, or written before session 18) records
/// `now` and starts.
pub fn check_and_record(
    storage: Arc<dyn Storage>,
    data_dir: &Path,
    now: LedgerLimits,
    applied_index: Option<u64>,
    last_index: Option<u64>,
) -> Result<(), StartError> {
    let journal_error = |error: tally_journal::Error| StartError::Journal(error.to_string());
    let mut store =
        MetaStore::open_named(storage, data_dir, LEDGER_LIMITS_FILE_NAME).map_err(journal_error)?;
    if let Some(bytes) = store.load() {
        let recorded: LedgerLimits = postcard::from_bytes(bytes).map_err(|error| {
            StartError::Journal(format!(
                "{}: {error}",
                data_dir.join(LEDGER_LIMITS_FILE_NAME).display()
            ))
        })?;
        if recorded == now {
            return Ok(());
        }
        let entries = last_index
            .unwrap_or(0)
            .saturating_sub(applied_index.unwrap_or(0));
        if entries > 0 {
            return Err(StartError::LedgerLimitsChanged {
                recorded,
                now,
                entries,
            });
        }
        tracing::info!(%recorded, %now, "the ledger's limits changed at a snapshot");
    }
    let bytes =
        postcard::to_allocvec(&now).map_err(|error| StartError::Journal(error.to_string()))?;
    store.save(&bytes).map_err(journal_error)
}
