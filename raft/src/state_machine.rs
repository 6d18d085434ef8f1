//! openraft's state machine on the engine: entries go through the apply ring to
//! the business-logic thread; snapshots are the engine's own encoding, kept on
//! disk by the journal's snapshot store.

use std::io;
use std::sync::Arc;

use futures::Stream;
use futures::TryStreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use tally_engine::Ledger;
use tally_engine::SnapshotWriter;
use tally_engine::StoredTransfers;
use tally_journal::RunPlan;

use crate::apply::ApplyRing;
use crate::apply::Core;
use crate::apply::Job;
use crate::limits::APPLY_ENTRIES_PER_PUBLISH;
use crate::limits::SNAPSHOT_PIECES_IN_FLIGHT;
use crate::limits::SNAPSHOT_PIECE_BYTES;
use crate::limits::SNAPSHOT_STEP_PAUSE;
use crate::limits::SNAPSHOT_TRANSFERS_PER_STEP;
use crate::snapshots::SnapshotFiles;
use crate::types::LogId;
use crate::types::Snapshot;
use crate::types::SnapshotData;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::Threads;

/// How many accounts and transfer ids the ledger holds, with its memory reserved (and touched)
/// at start-up so the business-logic thread never stops to grow a table. Every member of a
/// cluster must be given the same: the limits decide results (`accounts_capacity_exceeded`,
/// `transfers_capacity_exceeded`), and a member that answers differently is caught as drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerCapacity {
    pub accounts_max: usize,
    pub transfers_max: usize,
}

impl LedgerCapacity {
    /// An empty ledger of this capacity; `None`: the engine's default limits
    /// (`Ledger::new`), memory grown on demand.
    pub fn new_ledger(capacity: Option<LedgerCapacity>) -> Ledger {
        match capacity {
            Some(capacity) => Ledger::with_capacity(capacity.accounts_max, capacity.transfers_max),
            None => Ledger::new(),
        }
    }

    /// A ledger restored from snapshot bytes, sized to this capacity (not the one the snapshot
    /// recorded); `None`: as the snapshot recorded, grown on demand.
    pub fn restore_ledger(
        capacity: Option<LedgerCapacity>,
        bytes: &[u8],
    ) -> Result<Ledger, tally_engine::SnapshotError> {
        match capacity {
            Some(capacity) => {
                Ledger::restore_with_capacity(bytes, capacity.accounts_max, capacity.transfers_max)
            }
            None => Ledger::restore(bytes),
        }
    }
}

#[derive(Clone)]
pub struct StateMachine {
    ring: Arc<ApplyRing>,
    snapshots: Arc<SnapshotFiles>,
    threads: Threads,
    capacity: Option<LedgerCapacity>,
}

impl StateMachine {
    /// Restores the ledger from the latest snapshot on disk (if any) and starts
    /// the business-logic thread. `configure` sets up the rest of the core
    /// (checkpoints, drift state) before the thread starts.
    pub fn open(
        snapshots: Arc<SnapshotFiles>,
        configure: impl FnOnce(&mut Core),
    ) -> io::Result<StateMachine> {
        StateMachine::open_with(snapshots, Threads::Dedicated, None, configure)
    }

    /// As [`StateMachine::open`]; with `Threads::Inline` the engine runs on
    /// the calling task (no business-logic thread), for the simulator. The
    /// ledger (fresh, restored or installed) has `capacity`.
    pub fn open_with(
        snapshots: Arc<SnapshotFiles>,
        threads: Threads,
        capacity: Option<LedgerCapacity>,
        configure: impl FnOnce(&mut Core),
    ) -> io::Result<StateMachine> {
        let mut core = match snapshots.load_latest()? {
            Some((meta, data)) => {
                let ledger =
                    LedgerCapacity::restore_ledger(capacity, &data).map_err(io::Error::other)?;
                tracing::info!(last_log_id = ?meta.last_log_id, "restored the ledger from a snapshot");
                let mut core = Core::new(ledger);
                core.last_applied = meta.last_log_id;
                core.membership = meta.last_membership;
                // What this snapshot wrote: the log after it is measured against that.
                core.snapshot_taken();
                core
            }
            None => Core::new(LedgerCapacity::new_ledger(capacity)),
        };
        configure(&mut core);
        let ring = match threads {
            Threads::Dedicated => ApplyRing::start(core),
            Threads::Inline => ApplyRing::inline(core),
        };
        Ok(StateMachine {
            ring,
            snapshots,
            threads,
            capacity,
        })
    }

    pub fn ring(&self) -> &Arc<ApplyRing> {
        &self.ring
    }
}

/// A snapshot being encoded and the saver it streams to: the bytes go to the saver a step at a
/// time, and the buffers it has written come back for the next steps, so the snapshot is never
/// whole in memory and the memory it passes through is touched once (on a virtual machine, the
/// first touch of a page is the costly part of writing it).
struct SnapshotStream {
    writer: SnapshotWriter,
    pieces: std::sync::mpsc::SyncSender<Vec<u8>>,
    spares: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl SnapshotStream {
    /// Hands the bytes copied so far to the saver (checksummed on this thread). False if the
    /// saver has stopped: its error is the build's.
    fn send_copied(&mut self) -> bool {
        let spare = self.spares.try_recv().unwrap_or_else(|_| {
            // Touched here, off the business-logic thread: the next step copies into it, and
            // first-touch page faults there would lengthen the step.
            // Not `vec![0; n]`: that is calloc, whose pages stay untouched until written.
            #[allow(clippy::slow_vector_initialization)]
            let mut spare = {
                let mut spare = Vec::with_capacity(SNAPSHOT_PIECE_BYTES);
                spare.resize(SNAPSHOT_PIECE_BYTES, 0);
                spare
            };
            spare.clear();
            spare
        });
        let piece = self.writer.take_bytes(spare);
        self.pieces.send(piece).is_ok()
    }
}

/// The thread saving a snapshot: running alongside the encoding, or (everything inline, in the
/// simulator) to run once the encoding is done.
enum Saver {
    Running(tokio::task::JoinHandle<io::Result<u64>>),
    Later(Box<dyn FnOnce() -> io::Result<u64> + Send>),
}

impl StateMachine {
    /// Begins a snapshot on the business-logic thread, copies the transfers a step at a time
    /// and streams the bytes to the snapshot files as they are copied. `None` if the ledger
    /// was replaced (a snapshot was installed) in between: nothing is saved. Also returns the
    /// snapshot's size, the bytes it took on disk (packed) and the longest step, in seconds.
    async fn build_streamed(&self) -> io::Result<Option<(SnapshotMeta, usize, u64, f64)>> {
        // The transfers the latest snapshot holds, which this one extends instead of writing
        // them again (if the ledger is still the one that snapshot was of).
        let snapshots = Arc::clone(&self.snapshots);
        let run = crate::blocking(self.threads, move || Ok(snapshots.run_tail())).await?;
        let (writer, extends, last_applied, membership, generation, mut pause_seconds_max) = self
            .ring
            .run(move |core: &mut Core| {
                let started = std::time::Instant::now();
                core.snapshot_taken();
                let stored = run.as_ref().map(|tail| StoredTransfers {
                    count: (tail.len / tally_engine::limits::EVENT_SIZE as u64) as usize,
                    crc: tail.data_crc,
                    last: tail.last_record,
                });
                let extending = stored
                    .as_ref()
                    .and_then(|stored| core.ledger.snapshot_begin_after(stored));
                let (writer, extends) = match extending {
                    Some(writer) => (writer, run),
                    None => (core.ledger.snapshot_begin(), None),
                };
                (
                    writer,
                    extends,
                    core.last_applied,
                    core.membership.clone(),
                    core.ledger_generation,
                    started.elapsed().as_secs_f64(),
                )
            })
            .await
            .map_err(ring_error)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
        };
        let size = writer.size();
        let (run_offset, run_len) = writer.transfers_at();
        let run = RunPlan {
            offset: run_offset as u64,
            len: run_len as u64,
            extends,
        };
        tracing::info!(
            bytes = size,
            transfers_kept = writer.skipped_len() / tally_engine::limits::EVENT_SIZE,
            transfers_left = writer.transfers_left(),
            begin_ms = pause_seconds_max * 1000.0,
            "snapshot begun"
        );
        // Inline, the saver runs after the encoding: every piece must fit in the channel.
        let in_flight = match self.threads {
            Threads::Dedicated => SNAPSHOT_PIECES_IN_FLIGHT,
            Threads::Inline => {
                2 + writer
                    .transfers_left()
                    .div_ceil(SNAPSHOT_TRANSFERS_PER_STEP)
            }
        };
        let (pieces, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(in_flight);
        let (written, spares) = std::sync::mpsc::channel::<Vec<u8>>();
        let snapshots = Arc::clone(&self.snapshots);
        let saved_meta = meta.clone();
        let save = move || {
            snapshots.save_streamed_with_run(&saved_meta, size as u64, run, received, written)
        };
        let saver = match self.threads {
            Threads::Dedicated => Saver::Running(tokio::task::spawn_blocking(save)),
            Threads::Inline => Saver::Later(Box::new(save)),
        };
        let mut stream = SnapshotStream {
            writer,
            pieces,
            spares,
        };
        let mut streaming = true;
        loop {
            // The header and accounts first, then each step's transfers; handed over (and
            // checksummed) off the business-logic thread.
            let sent;
            (stream, sent) = crate::blocking(self.threads, move || {
                let sent = stream.send_copied();
                Ok((stream, sent))
            })
            .await?;
            if !sent {
                streaming = false;
                break;
            }
            if stream.writer.transfers_left() == 0 {
                break;
            }
            // Batches get the business-logic thread between steps, and not only the ones
            // already waiting: copying back to back would take most of its time for as
            // long as the snapshot lasts. (A fixed pause: the simulator's clock is virtual.)
            tokio::time::sleep(SNAPSHOT_STEP_PAUSE).await;
            let step = self
                .ring
                .run(move |core: &mut Core| {
                    let started = std::time::Instant::now();
                    if core.ledger_generation != generation {
                        return (stream, None);
                    }
                    core.ledger
                        .snapshot_continue(&mut stream.writer, SNAPSHOT_TRANSFERS_PER_STEP);
                    (stream, Some(started.elapsed().as_secs_f64()))
                })
                .await
                .map_err(ring_error)?;
            stream = step.0;
            let Some(seconds) = step.1 else {
                // Abandoned: the saver sees the stream end short and saves nothing.
                drop(stream);
                if let Saver::Running(saver) = saver {
                    let _ = saver.await;
                }
                return Ok(None);
            };
            pause_seconds_max = pause_seconds_max.max(seconds);
        }
        if streaming {
            crate::blocking(self.threads, move || {
                let SnapshotStream { writer, pieces, .. } = stream;
                // A saver that stopped has its own error to report.
                let _ = pieces.send(writer.finish());
                Ok(())
            })
            .await?;
        } else {
            drop(stream);
        }
        let saved = match saver {
            Saver::Running(saver) => saver.await.map_err(io::Error::other)?,
            Saver::Later(save) => save(),
        };
        let stored = match saved {
            Ok(stored) => stored,
            // A snapshot was installed (and saved) while this one was built on the ledger it
            // replaced: begun again on the new one.
            Err(error) if is_run_changed(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(Some((meta, size, stored, pause_seconds_max)))
    }
}

/// Whether a save failed because the snapshot run it was to extend was replaced meanwhile.
fn is_run_changed(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tally_journal::Error>())
        .is_some_and(|inner| matches!(inner, tally_journal::Error::SnapshotRunChanged))
}

fn ring_error(error: crate::apply::RingClosed) -> io::Error {
    io::Error::other(error)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Encoded in steps on the business-logic thread, batches applied in between
        // (design.md §4, "Snapshots"): the first step copies what batches may change,
        // the next ones the append-only transfers; each step's bytes are checksummed and
        // written elsewhere while the next is copied.
        let (meta, bytes, stored, pause_seconds_max) = loop {
            if let Some(built) = self.build_streamed().await? {
                break built;
            }
            tracing::info!("snapshot restarted: the ledger was replaced while encoding");
        };
        metrics::histogram!("tally_snapshot_step_seconds_max").record(pause_seconds_max);
        metrics::counter!("tally_snapshots_built_total").increment(1);
        metrics::counter!("tally_snapshot_bytes_stored_total").increment(stored);
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            bytes,
            stored,
            step_ms_max = pause_seconds_max * 1000.0,
            "snapshot built"
        );
        // The bytes are on disk; the built snapshot carries none. openraft keeps only the
        // meta of a snapshot it had built (`core/sm/worker.rs` drops the data on a runtime
        // worker) and reads the bytes back with `get_current_snapshot` when a follower
        // needs them.
        Ok(Snapshot {
            meta,
            snapshot: Vec::new(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.ring
            .run(|core: &mut Core| (core.last_applied, core.membership.clone()))
            .await
            .map_err(ring_error)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Hand entries to the ring in pieces as they arrive, and return once they are all
        // published, not applied: openraft then hands over the next committed entries while
        // the business-logic thread is still applying these, instead of that thread idling
        // for a round trip per apply. Nothing can observe the difference: whatever reads the
        // ledger (queries, status, `applied_state`, snapshots, installs) is itself a job on the
        // same ring, run after every entry published before it, and a client is answered by
        // the responder its entry carries, once applied.
        let mut pending: Vec<EntryResponder<TypeConfig>> =
            Vec::with_capacity(APPLY_ENTRIES_PER_PUBLISH);
        let mut jobs: Vec<Job> = Vec::new();
        while let Some(item) = entries.try_next().await? {
            pending.push(item);
            if pending.len() == APPLY_ENTRIES_PER_PUBLISH {
                jobs.push(apply_job(std::mem::take(&mut pending)));
                self.ring
                    .publish(std::mem::take(&mut jobs))
                    .await
                    .map_err(ring_error)?;
            }
        }
        if !pending.is_empty() {
            jobs.push(apply_job(pending));
            self.ring.publish(jobs).await.map_err(ring_error)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let snapshots = Arc::clone(&self.snapshots);
        let saved_meta = meta.clone();
        let capacity = self.capacity;
        let (ledger, snapshot) =
            crate::blocking(self.threads, move || -> io::Result<(Ledger, Vec<u8>)> {
                let ledger = LedgerCapacity::restore_ledger(capacity, &snapshot)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                // Saved with its transfers in a run, as a built one is: the next snapshot
                // extends it instead of writing them all again.
                let (run_offset, run_len) = ledger.snapshot_transfers_at();
                snapshots.save_with_run(&saved_meta, &snapshot, run_offset, run_len)?;
                Ok((ledger, snapshot))
            })
            .await?;
        drop(snapshot);
        let meta = meta.clone();
        self.ring
            .run(move |core: &mut Core| {
                core.ledger = ledger;
                core.ledger_generation += 1;
                core.last_applied = meta.last_log_id;
                core.membership = meta.last_membership;
                // Checkpoints recorded before were of a state this one replaces.
                core.checkpoints = Default::default();
                core.snapshot_taken();
            })
            .await
            .map_err(ring_error)?;
        metrics::counter!("tally_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snapshots = Arc::clone(&self.snapshots);
        let latest = crate::blocking(self.threads, move || snapshots.load_latest()).await?;
        Ok(latest.map(|(meta, data)| Snapshot {
            meta,
            snapshot: data,
        }))
    }
}

/// The job applying `entries`, timed twice: how long it waited in the ring for the
/// business-logic thread (`tally_apply_wait_seconds`: behind earlier entries, snapshot steps,
/// queries), and how long the apply took (`tally_apply_seconds`).
fn apply_job(entries: Vec<EntryResponder<TypeConfig>>) -> Job {
    let published = std::time::Instant::now();
    Box::new(move |core: &mut Core| {
        let started = std::time::Instant::now();
        metrics::histogram!("tally_apply_wait_seconds").record((started - published).as_secs_f64());
        core.apply_entries(entries);
        metrics::histogram!("tally_apply_seconds").record(started.elapsed().as_secs_f64());
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::Account;

    /// A node restored from a snapshot measures the log after it against what that snapshot
    /// wrote, as if it had just taken it (else the policy would take another one at once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_snapshot_counts_as_the_last_one_taken() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let snapshots = open_files(dir.path());
        let mut ledger = Ledger::new();
        ledger.create_accounts(1, &accounts(3));
        snapshots
            .save(&SnapshotMeta::default(), &ledger.snapshot())
            .expect("save snapshot");
        let state_machine = StateMachine::open(snapshots, |_| {}).expect("open state machine");
        let (snapshot_bytes, events) = state_machine
            .ring()
            .run(|core: &mut Core| (core.snapshot_state_bytes, core.events_since_snapshot))
            .await
            .expect("ring running");
        assert_eq!((snapshot_bytes, events), (3 * 128, 0));
        state_machine.ring().shutdown();
    }

    /// Accounts `1..=count`, ledger 1.
    fn accounts(count: u128) -> Vec<Account> {
        (1..=count)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Account::default()
            })
            .collect()
    }

    /// The snapshot files of a node whose data directory is `dir`.
    fn open_files(dir: &std::path::Path) -> Arc<SnapshotFiles> {
        Arc::new(
            SnapshotFiles::open(tally_journal::FsStorage::shared(), dir, Threads::Dedicated)
                .expect("open snapshots"),
        )
    }

    /// Transfers `first..first + count` between accounts 1 and 2.
    fn transfers(first: u128, count: u128) -> Vec<tally_engine::Transfer> {
        (first..first + count)
            .map(|id| tally_engine::Transfer {
                id,
                debit_account_id: 1 + id % 2,
                credit_account_id: 2 - id % 2,
                amount: id,
                ledger: 1,
                code: 1,
                ..tally_engine::Transfer::default()
            })
            .collect()
    }

    /// The second snapshot writes only the transfers after the first one's, into the same run
    /// file, and restores as the whole ledger.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_extends_the_transfers_of_the_one_before() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let run_file = dir
            .path()
            .join(format!("{}1", tally_journal::SNAPSHOT_RUN_FILE_PREFIX));
        let snapshots = open_files(dir.path());
        let mut state_machine =
            StateMachine::open(Arc::clone(&snapshots), |_| {}).expect("open state machine");
        let ring = Arc::clone(state_machine.ring());
        let apply = |first: u128, count: u128, timestamp: u64| {
            ring.run(move |core: &mut Core| {
                core.ledger.create_accounts(timestamp, &accounts(2));
                let results = core
                    .ledger
                    .create_transfers(timestamp + 1_000, &transfers(first, count));
                assert!(results.iter().all(|result| result.status == 0));
                core.ledger.snapshot()
            })
        };
        apply(1, 3_000, 10_000).await.expect("ring running");
        state_machine
            .build_snapshot()
            .await
            .expect("first snapshot");
        let first = snapshots.run_tail().expect("a run");
        assert_eq!(first.len, 3_000 * 128);
        let first_size = std::fs::metadata(&run_file).expect("run file").len();

        let whole = apply(3_001, 100, 100_000).await.expect("ring running");
        state_machine
            .build_snapshot()
            .await
            .expect("second snapshot");
        let second = snapshots.run_tail().expect("a run");
        assert_eq!(second.len, 3_100 * 128);
        assert_eq!(
            &second.last_record[..],
            &whole[whole.len() - 4 - 128..whole.len() - 4]
        );
        // The same file, grown by the hundred new transfers, packed: far less than the first
        // 3,000 took.
        let grown = std::fs::metadata(&run_file).expect("run file").len() - first_size;
        assert!(
            grown > 0 && grown < first_size / 10,
            "{grown} after {first_size}"
        );
        assert_eq!(
            snapshots
                .load_latest()
                .expect("load")
                .expect("a snapshot")
                .1,
            whole
        );
        state_machine.ring().shutdown();

        // Restored from it by a node that starts again, which extends it in turn.
        let snapshots = open_files(dir.path());
        let mut state_machine =
            StateMachine::open(Arc::clone(&snapshots), |_| {}).expect("open state machine");
        assert_eq!(snapshots.run_tail(), Some(second));
        let restored = state_machine
            .ring()
            .run(|core: &mut Core| core.ledger.snapshot())
            .await
            .expect("ring running");
        assert_eq!(restored, whole);
        state_machine
            .build_snapshot()
            .await
            .expect("third snapshot");
        assert_eq!(snapshots.run_tail().expect("a run").len, 3_100 * 128);
        state_machine.ring().shutdown();
    }

    /// A snapshot installed from the leader is saved with its transfers in a run, which the
    /// follower's next snapshot extends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installed_snapshot_is_extended_by_the_next_one() {
        let mut leader = Ledger::new();
        leader.create_accounts(10_000, &accounts(2));
        leader.create_transfers(20_000, &transfers(1, 2_000));
        let installed = leader.snapshot();

        let dir = tempfile::TempDir::new().expect("temp dir");
        let snapshots = open_files(dir.path());
        let mut state_machine =
            StateMachine::open(Arc::clone(&snapshots), |_| {}).expect("open state machine");
        state_machine
            .install_snapshot(&SnapshotMeta::default(), installed.clone())
            .await
            .expect("install");
        assert_eq!(snapshots.run_tail().expect("a run").len, 2_000 * 128);
        assert_eq!(snapshots.load_latest().unwrap().unwrap().1, installed);
        let run_file = dir
            .path()
            .join(format!("{}1", tally_journal::SNAPSHOT_RUN_FILE_PREFIX));
        let installed_size = std::fs::metadata(&run_file).expect("run file").len();

        let whole = state_machine
            .ring()
            .run(|core: &mut Core| {
                core.ledger.create_transfers(30_000, &transfers(2_001, 50));
                core.ledger.snapshot()
            })
            .await
            .expect("ring running");
        state_machine.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshots.run_tail().expect("a run").len, 2_050 * 128);
        let grown = std::fs::metadata(&run_file).expect("run file").len() - installed_size;
        assert!(
            grown > 0 && grown < installed_size / 10,
            "{grown} after {installed_size}"
        );
        assert_eq!(snapshots.load_latest().unwrap().unwrap().1, whole);
        state_machine.ring().shutdown();
    }
}
