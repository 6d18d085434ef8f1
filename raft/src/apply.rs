//! The apply ring and the one business-logic thread.
//!
//! Committed entries (and every read of the ledger) travel through a disruptor
//! ring to a single thread that owns the [`Core`]: the engine's `Ledger` plus
//! what Raft needs to know about it (last applied log id, membership). Nothing
//! else ever touches the ledger, so applying is single-threaded and
//! deterministic; reads are answered in log order relative to writes.

use std::cell::Cell;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use disruptor::wait_strategies::WaitStrategy;
use disruptor::ProcessorSettings;
use disruptor::Producer;
use disruptor::Sequence;
use openraft::storage::EntryResponder;
use openraft::EntryPayload;
use tally_engine::Ledger;
use tally_engine::Operation;
use tally_engine::Prepared;

use crate::checkpoint::Checkpoint;
use crate::checkpoint::Checkpoints;
use crate::checkpoint::DriftState;
use crate::checkpoint::OPERATION_CHECKPOINT;
use crate::limits::APPLY_RING_SLOTS;
use crate::types::BatchReply;
use crate::types::LogId;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Everything the business-logic thread owns.
pub struct Core {
    pub ledger: Ledger,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Record a checkpoint every this many log indexes (0 = never).
    pub checkpoint_every_entries: u64,
    pub checkpoints: Checkpoints,
    pub drift: Arc<DriftState>,
    /// Where this node's own checkpoints go to be proposed (if it leads).
    pub checkpoint_sink: Option<tokio::sync::mpsc::Sender<Checkpoint>>,
    /// Events applied since the last snapshot was built or installed: the
    /// log a restart would have to re-apply (drives the snapshot policy).
    pub events_since_snapshot: u64,
    /// What a snapshot copies whole every time, the accounts (128 bytes each), as it was
    /// when the last one was built or installed: the transfers it holds are extended, not
    /// written again (design.md §4, "Snapshots"), so a snapshot's cost is that plus the log
    /// since the last one.
    pub snapshot_state_bytes: u64,
    /// Counts ledger replacements (installed snapshots): a snapshot encoded in
    /// steps is abandoned if the ledger it began on was replaced.
    pub ledger_generation: u64,
}

impl Core {
    pub fn new(ledger: Ledger) -> Core {
        Core {
            ledger,
            last_applied: None,
            membership: StoredMembership::default(),
            checkpoint_every_entries: 0,
            checkpoints: Checkpoints::default(),
            drift: Arc::new(DriftState::default()),
            checkpoint_sink: None,
            events_since_snapshot: 0,
            snapshot_state_bytes: 0,
            ledger_generation: 0,
        }
    }

    /// Notes that a snapshot of the state as it is now was begun or installed.
    pub fn snapshot_taken(&mut self) {
        self.events_since_snapshot = 0;
        self.snapshot_state_bytes =
            self.ledger.accounts_count() as u64 * tally_engine::limits::EVENT_SIZE as u64;
    }

    /// Applies committed entries in log order; answers the leader's waiting clients.
    pub fn apply_entries(&mut self, entries: Vec<EntryResponder<TypeConfig>>) {
        for (entry, responder) in entries {
            if let Some(last) = &self.last_applied {
                assert!(
                    entry.log_id.index > last.index,
                    "entries applied out of order"
                );
            }
            let reply = match entry.payload {
                EntryPayload::Blank => BatchReply::default(),
                EntryPayload::Normal(batch) if batch.operation == OPERATION_CHECKPOINT => {
                    match Checkpoint::from_payload(&batch.events) {
                        Some(leader) => self.checkpoints.verify(leader, &self.drift),
                        None => tracing::warn!(
                            index = entry.log_id.index,
                            "malformed checkpoint entry ignored"
                        ),
                    }
                    BatchReply::default()
                }
                EntryPayload::Normal(batch) => {
                    self.events_since_snapshot += batch.event_count() as u64;
                    apply_batch(&mut self.ledger, &batch)
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchReply::default()
                }
            };
            self.last_applied = Some(entry.log_id);
            self.maybe_checkpoint(entry.log_id.index);
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
    }

    fn maybe_checkpoint(&mut self, index: u64) {
        if self.checkpoint_every_entries == 0 || index % self.checkpoint_every_entries != 0 {
            return;
        }
        let checkpoint = Checkpoint {
            index,
            digest: self.ledger.digest(),
            hash_chain: self.ledger.hash_chain(),
        };
        self.checkpoints.record(checkpoint, &self.drift);
        if let Some(sink) = &self.checkpoint_sink {
            // Only the leader's proposer uses it; a full queue just skips one.
            let _ = sink.try_send(checkpoint);
        }
    }
}

/// The timestamp the batch's first event gets: the leader's proposal, pushed
/// past the last applied one if a new leader's clock is behind. Deterministic:
/// every replica and every replay computes the same value from the same log.
pub fn effective_timestamp(proposed: u64, last_timestamp: u64) -> u64 {
    proposed.max(last_timestamp + 1)
}

/// Applies one batch to the ledger: the one function the state machine and the
/// audit replay share.
pub fn apply_batch(ledger: &mut Ledger, batch: &crate::types::Batch) -> BatchReply {
    apply_batch_prepared(ledger, batch, &Prepared::default())
}

/// `apply_batch` with `prepared` (`Ledger::prepare` of the same batch's operation and
/// events, computed on any thread; or empty).
pub fn apply_batch_prepared(
    ledger: &mut Ledger,
    batch: &crate::types::Batch,
    prepared: &Prepared,
) -> BatchReply {
    let timestamp = effective_timestamp(batch.timestamp, ledger.last_timestamp());
    let operation = match Operation::try_from(batch.operation) {
        Ok(operation) => operation,
        Err(_) => {
            return BatchReply {
                results: Vec::new(),
                rejected: Some(format!("unknown operation {}", batch.operation)),
            }
        }
    };
    match ledger.apply_prepared(operation, timestamp, &batch.events, prepared) {
        Ok(results) => BatchReply {
            results: zerocopy::IntoBytes::as_bytes(results.as_slice()).to_vec(),
            rejected: None,
        },
        Err(error) => BatchReply {
            results: Vec::new(),
            rejected: Some(error.to_string()),
        },
    }
}

pub type Job = Box<dyn FnOnce(&mut Core) + Send>;

/// One slot of the ring. The producer moves a job in; the business-logic thread
/// takes it out. The mutex is never contended: the ring's sequence barrier
/// already orders the two sides.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
}

type RingProducer = disruptor::MultiProducer<Slot, disruptor::SingleConsumerBarrier>;

/// The producer side of the apply ring, shared by the state machine and readers.
///
/// In production the jobs run on the business-logic thread behind a disruptor
/// ring. The simulator cannot run threads (its nodes share one deterministic
/// scheduler), so it uses [`ApplyRing::inline`]: the same jobs, through the
/// same interface, run on the calling task in publication order.
pub struct ApplyRing {
    producer: Mutex<Option<RingProducer>>,
    /// Jobs published and not yet run: the ring's occupancy.
    occupancy: Arc<AtomicI64>,
    /// Set for the inline mode; `None` once shut down.
    inline: Option<Mutex<Option<Core>>>,
}

impl ApplyRing {
    /// Starts the business-logic thread owning `core`.
    pub fn start(core: Core) -> Arc<ApplyRing> {
        let mut core = Some(core);
        let occupancy = Arc::new(AtomicI64::new(0));
        let consumed = Arc::clone(&occupancy);
        let producer =
            disruptor::build_multi_producer(APPLY_RING_SLOTS, Slot::default, ProgressiveWait)
                .thread_name("tally-logic")
                .handle_events_and_state_with(
                    move |core: &mut Core,
                          slot: &Slot,
                          _sequence: Sequence,
                          _end_of_batch: bool| {
                        let job = slot.job.lock().expect("slot lock").take();
                        let job = job.expect("published slot holds a job");
                        job(core);
                        consumed.fetch_sub(1, Ordering::Relaxed);
                        SPIN_STATE.with(|state| state.set((-1, 0)));
                    },
                    move || core.take().expect("state initialised once"),
                )
                .build();
        Arc::new(ApplyRing {
            producer: Mutex::new(Some(producer)),
            occupancy,
            inline: None,
        })
    }

    /// No thread: every job runs on the task that publishes it, in order.
    pub fn inline(core: Core) -> Arc<ApplyRing> {
        Arc::new(ApplyRing {
            producer: Mutex::new(None),
            occupancy: Arc::new(AtomicI64::new(0)),
            inline: Some(Mutex::new(Some(core))),
        })
    }

    /// Runs `job` on the business-logic thread and returns its answer.
    pub async fn run<T, F>(&self, job: F) -> Result<T, RingClosed>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core) -> T + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |core: &mut Core| {
            let _ = sender.send(job(core));
        });
        self.publish(vec![job]).await?;
        receiver.await.map_err(|_| RingClosed)
    }

    /// Publishes `jobs` in order with `batch_publish` (in ring-sized pieces).
    /// Waits asynchronously, without spinning, while the ring is full.
    pub async fn publish(&self, jobs: Vec<Job>) -> Result<(), RingClosed> {
        if let Some(inline) = &self.inline {
            let mut core = inline.lock().expect("core lock");
            let core = core.as_mut().ok_or(RingClosed)?;
            for job in jobs {
                job(core);
            }
            return Ok(());
        }
        let mut jobs = jobs.into_iter().peekable();
        let mut backoff_us = 10;
        while jobs.peek().is_some() {
            let count = jobs.len().min(APPLY_RING_SLOTS);
            let published = {
                let mut producer = self.producer.lock().expect("producer lock");
                let Some(producer) = producer.as_mut() else {
                    return Err(RingClosed);
                };
                producer
                    .try_batch_publish(count, |slots| {
                        for slot in slots {
                            *slot.job.lock().expect("slot lock") = jobs.next();
                        }
                    })
                    .is_ok()
            };
            if published {
                let occupancy =
                    self.occupancy.fetch_add(count as i64, Ordering::Relaxed) + count as i64;
                metrics::gauge!("tally_apply_ring_occupancy").set(occupancy as f64);
                backoff_us = 10;
                continue;
            }
            metrics::counter!("tally_apply_ring_full_total").increment(1);
            tokio::time::sleep(Duration::from_micros(backoff_us)).await;
            backoff_us = (backoff_us * 2).min(1_000);
        }
        Ok(())
    }

    /// Stops the business-logic thread after it has drained the ring.
    pub fn shutdown(&self) {
        let producer = self.producer.lock().expect("producer lock").take();
        drop(producer);
        if let Some(inline) = &self.inline {
            inline.lock().expect("core lock").take();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the business-logic thread has stopped")]
pub struct RingClosed;

thread_local! {
    /// (sequence waited for, consecutive waits) of the consumer thread.
    static SPIN_STATE: Cell<(Sequence, u32)> = const { Cell::new((-1, 0)) };
}

/// Spin, then yield, then sleep with a growing (bounded) pause: an idle ring
/// costs almost no CPU on a 2-core machine, a busy one is served at once.
#[derive(Copy, Clone)]
pub struct ProgressiveWait;

const WAIT_SPINS: u32 = 100;
const WAIT_YIELDS: u32 = 100;
const WAIT_SLEEP_MAX_US: u64 = 500;

impl WaitStrategy for ProgressiveWait {
    fn wait_for(&self, sequence: Sequence) {
        let waits = SPIN_STATE.with(|state| {
            let (waited_for, count) = state.get();
            let count = if waited_for == sequence {
                count.saturating_add(1)
            } else {
                0
            };
            state.set((sequence, count));
            count
        });
        if waits < WAIT_SPINS {
            std::hint::spin_loop();
        } else if waits < WAIT_SPINS + WAIT_YIELDS {
            std::thread::yield_now();
        } else {
            let steps = u64::from(waits - WAIT_SPINS - WAIT_YIELDS);
            let sleep_us = (10 * (steps + 1)).min(WAIT_SLEEP_MAX_US);
            std::thread::sleep(Duration::from_micros(sleep_us));
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::log_store::log_id;
    use crate::types::Batch;
    use crate::types::Entry;

    fn entry(
        index: u64,
        payload: EntryPayload<Batch, u64, crate::types::NodeInfo>,
    ) -> EntryResponder<TypeConfig> {
        (
            Entry {
                log_id: log_id(1, 1, index),
                payload,
            },
            None,
        )
    }

    fn checkpoint_entry(index: u64, checkpoint: Checkpoint) -> EntryResponder<TypeConfig> {
        let events =
            bytes::Bytes::copy_from_slice(zerocopy::IntoBytes::as_bytes(&checkpoint.to_record()));
        entry(
            index,
            EntryPayload::Normal(Batch {
                operation: OPERATION_CHECKPOINT,
                timestamp: 0,
                events,
            }),
        )
    }

    fn core_with_checkpoints() -> Core {
        let mut core = Core::new(Ledger::new());
        core.checkpoint_every_entries = 2;
        core
    }

    #[test]
    fn a_matching_checkpoint_is_verified() {
        let mut core = core_with_checkpoints();
        core.apply_entries(vec![
            entry(1, EntryPayload::Blank),
            entry(2, EntryPayload::Blank),
        ]);
        let recorded = core.drift.last_recorded().expect("recorded at index 2");
        core.apply_entries(vec![checkpoint_entry(3, recorded)]);
        assert_eq!(core.drift.last_verified(), Some(recorded));
        assert!(!core.drift.is_diverged());
    }

    #[test]
    fn a_mismatching_checkpoint_marks_the_node_diverged() {
        let mut core = core_with_checkpoints();
        core.apply_entries(vec![
            entry(1, EntryPayload::Blank),
            entry(2, EntryPayload::Blank),
        ]);
        let mut leader = core.drift.last_recorded().expect("recorded at index 2");
        leader.digest ^= 1;
        core.apply_entries(vec![checkpoint_entry(3, leader)]);
        assert!(core.drift.is_diverged());
        let divergence = core.drift.divergence().expect("divergence");
        assert_eq!(divergence.index, 2);
        assert_eq!(divergence.leader, leader);
    }

    #[test]
    fn a_checkpoint_for_an_unknown_index_is_not_judged() {
        let mut core = core_with_checkpoints();
        let unknown = Checkpoint {
            index: 40,
            digest: 1,
            hash_chain: 2,
        };
        core.apply_entries(vec![checkpoint_entry(41, unknown)]);
        assert!(!core.drift.is_diverged());
        assert_eq!(core.drift.last_verified(), None);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        assert_eq!(effective_timestamp(100, 0), 100);
        assert_eq!(effective_timestamp(100, 150), 151);
        assert_eq!(effective_timestamp(200, 150), 200);
    }
}
