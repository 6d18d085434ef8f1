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
}

impl Core {
    pub fn new(ledger: Ledger) -> Core {
        Core {
            ledger,
            last_applied: None,
            membership: StoredMembership::default(),
        }
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
                EntryPayload::Normal(batch) => apply_batch(&mut self.ledger, &batch),
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchReply::default()
                }
            };
            self.last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(reply);
            }
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
    match ledger.apply(operation, timestamp, &batch.events) {
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
pub struct ApplyRing {
    producer: Mutex<Option<RingProducer>>,
    /// Jobs published and not yet run: the ring's occupancy.
    occupancy: Arc<AtomicI64>,
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
