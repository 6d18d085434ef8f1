//! Leader-side ingress batching: many client submissions become one log entry.
//!
//! Submissions wait in a bounded queue. One batcher task drains it, packs
//! consecutive submissions of the same operation into a batch of at most
//! `BATCH_EVENTS_MAX` events, stamps the leader's timestamp and proposes the
//! batch to Raft. At most `BATCHES_IN_FLIGHT_MAX` batches are in flight; when
//! they are, the queue fills and new submissions are refused with `Busy`
//! before anything of theirs is accepted.

use std::sync::Arc;

use bytes::Bytes;
use bytes::BytesMut;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::limits::EVENT_SIZE;
use tally_engine::EventResult;
use tally_engine::Operation;
use tally_engine::Transfer;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use zerocopy::FromBytes;

use crate::limits::BATCHES_IN_FLIGHT_MAX;
use crate::limits::INGRESS_QUEUE_SUBMISSIONS;
use crate::limits::LEADER_SETTLE_PAUSE;
use crate::limits::LEADER_SETTLE_RETRIES;
use crate::types::Batch;
use crate::types::NodeId;
use crate::types::NodeInfo;
use crate::types::Raft;
use crate::types::TypeConfig;
use crate::Clock;

/// Why a submission was not answered with results.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The pipeline is full; nothing was accepted. Retry later.
    #[error("the server is busy; nothing was accepted, retry later")]
    Busy,
    /// This node is not the leader; nothing was accepted.
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<NodeInfo>,
    },
    /// The submission itself is malformed (caught before it is accepted).
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// The batch was proposed but its outcome is unknown (leadership changed,
    /// the node is stopping). Retrying with the same ids is safe: ids make
    /// every write idempotent.
    #[error("outcome unknown, retry with the same ids: {0}")]
    Unknown(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's state diverged from the leader's; it no longer serves.
    #[error("this node's state diverged from the leader's; it no longer serves")]
    Diverged,
}

struct Submission {
    operation: Operation,
    events: Bytes,
    reply: oneshot::Sender<Result<Vec<EventResult>, SubmitError>>,
}

impl Submission {
    fn event_count(&self) -> usize {
        self.events.len() / EVENT_SIZE
    }
}

#[derive(Clone)]
pub struct Ingress {
    sender: mpsc::Sender<Submission>,
}

impl Ingress {
    pub fn start(raft: Raft, clock: Clock) -> Ingress {
        let (sender, receiver) = mpsc::channel(INGRESS_QUEUE_SUBMISSIONS);
        tokio::spawn(batch_loop(raft, receiver, clock));
        Ingress { sender }
    }

    /// Submits `events` (whole 128-byte records, at most `BATCH_EVENTS_MAX`)
    /// and waits until they are durable on a quorum and applied.
    pub async fn submit(
        &self,
        operation: Operation,
        events: Bytes,
    ) -> Result<Vec<EventResult>, SubmitError> {
        validate(&events)?;
        let (reply, answer) = oneshot::channel();
        let submission = Submission {
            operation,
            events,
            reply,
        };
        self.sender
            .try_send(submission)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
                mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
            })?;
        metrics::gauge!("tally_ingress_queue_depth")
            .set((INGRESS_QUEUE_SUBMISSIONS - self.sender.capacity()) as f64);
        answer.await.map_err(|_| SubmitError::ShuttingDown)?
    }
}

fn validate(events: &Bytes) -> Result<(), SubmitError> {
    if events.is_empty() {
        return Err(SubmitError::Invalid(
            "a batch needs at least one event".into(),
        ));
    }
    if events.len() % EVENT_SIZE != 0 {
        return Err(SubmitError::Invalid(format!(
            "{} bytes is not a whole number of {EVENT_SIZE}-byte records",
            events.len()
        )));
    }
    let count = events.len() / EVENT_SIZE;
    if count > BATCH_EVENTS_MAX {
        return Err(SubmitError::Invalid(format!(
            "{count} events is more than the limit of {BATCH_EVENTS_MAX} per batch"
        )));
    }
    Ok(())
}

async fn batch_loop(raft: Raft, mut receiver: mpsc::Receiver<Submission>, clock: Clock) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let mut carried: Option<Submission> = None;
    let mut last_timestamp = 0u64;
    loop {
        let first = match carried.take() {
            Some(submission) => submission,
            None => match receiver.recv().await {
                Some(submission) => submission,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let operation = first.operation;
        let mut event_count = first.event_count();
        let mut group = vec![first];
        while let Ok(next) = receiver.try_recv() {
            if next.operation != operation || event_count + next.event_count() > BATCH_EVENTS_MAX {
                carried = Some(next);
                break;
            }
            event_count += next.event_count();
            group.push(next);
        }
        let events = group_events(&group, event_count);
        let timestamp = clock.now_ns().max(last_timestamp + 1);
        last_timestamp = timestamp + event_count as u64 - 1;
        let batch = Batch {
            operation: operation as u8,
            timestamp,
            events,
        };
        metrics::histogram!("tally_batch_events").record(event_count as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = write_while_leader_settles(&raft, batch).await;
            metrics::histogram!("tally_commit_apply_seconds")
                .record(started.elapsed().as_secs_f64());
            drop(permit);
            answer_group(group, outcome);
        });
    }
}

/// The events of a group of submissions, back to back. A group of one (every request of the
/// largest size) is its own bytes, shared, not copied, when they are aligned as the engine's
/// records are: else the engine would copy them at apply, on the business-logic thread.
fn group_events(group: &[Submission], event_count: usize) -> Bytes {
    const _: () = assert!(align_of::<tally_engine::Account>() == align_of::<Transfer>());
    if let [only] = group {
        if only.events.as_ptr().align_offset(align_of::<Transfer>()) == 0 {
            return only.events.clone();
        }
    }
    let mut events = BytesMut::with_capacity(event_count * EVENT_SIZE);
    for submission in group {
        events.extend_from_slice(&submission.events);
    }
    events.freeze()
}

/// A new leader refuses writes (with no leader named) until a quorum has
/// acknowledged it once: its lease is not yet valid. Nothing was appended, so
/// retrying for a bounded time is safe and spares the client a round trip.
async fn write_while_leader_settles(raft: &Raft, batch: Batch) -> WriteOutcome {
    let mut attempts = 0;
    loop {
        let outcome = raft.client_write(batch.clone()).await;
        let unsettled = matches!(
            &outcome,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) if forward.leader_id.is_none()
        );
        if !unsettled || attempts == LEADER_SETTLE_RETRIES || !raft.is_leader() {
            return outcome;
        }
        attempts += 1;
        tokio::time::sleep(LEADER_SETTLE_PAUSE).await;
    }
}

type WriteOutcome = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
>;

/// Splits the batch's results back to the submissions it was made of.
fn answer_group(group: Vec<Submission>, outcome: WriteOutcome) {
    let reply = match outcome {
        Ok(response) => response.data,
        Err(error) => {
            let error = submit_error(error);
            for submission in group {
                let _ = submission.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    if let Some(reason) = reply.rejected {
        for submission in group {
            let _ = submission
                .reply
                .send(Err(SubmitError::Invalid(reason.clone())));
        }
        return;
    }
    // Decoded record by record: a `Vec<u8>` promises no alignment.
    let results: Vec<EventResult> = reply
        .results
        .chunks_exact(size_of::<EventResult>())
        .map(|record| EventResult::read_from_bytes(record).expect("16-byte record"))
        .collect();
    assert_eq!(
        reply.results.len(),
        results.len() * size_of::<EventResult>(),
        "whole result records"
    );
    let mut offset = 0usize;
    for submission in group {
        let count = submission.event_count();
        let mine: Vec<EventResult> = results[offset..offset + count]
            .iter()
            .map(|result| EventResult {
                index: result.index - offset as u32,
                ..*result
            })
            .collect();
        offset += count;
        let _ = submission.reply.send(Ok(mine));
    }
    assert_eq!(offset, results.len(), "one result per event");
}

fn submit_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> SubmitError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => SubmitError::NotLeader {
            leader_id: forward.leader_id,
            leader: forward.leader_node,
        },
        other => SubmitError::Unknown(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(events: Bytes) -> Submission {
        Submission {
            operation: Operation::CreateTransfers,
            events,
            reply: oneshot::channel().0,
        }
    }

    /// `records` numbered events whose first byte lies `misalignment` bytes past a 16-byte
    /// boundary.
    fn events_at(misalignment: usize, records: usize) -> Bytes {
        let len = records * EVENT_SIZE;
        let mut buffer = BytesMut::zeroed(len + 32);
        let start = buffer.as_ptr().align_offset(16) + misalignment;
        for (index, record) in buffer[start..start + len]
            .chunks_mut(EVENT_SIZE)
            .enumerate()
        {
            record[0] = index as u8 + 1;
        }
        buffer.freeze().slice(start..start + len)
    }

    #[test]
    fn a_group_of_one_aligned_submission_shares_its_bytes() {
        let events = events_at(0, 3);
        assert_eq!(events.as_ptr().align_offset(16), 0);
        let group = [submission(events.clone())];
        let grouped = group_events(&group, 3);
        assert_eq!(grouped, events);
        assert_eq!(grouped.as_ptr(), events.as_ptr(), "shared, not copied");
    }

    #[test]
    fn a_misaligned_submission_or_a_larger_group_is_copied_back_to_back() {
        let misaligned = events_at(8, 2);
        assert_ne!(misaligned.as_ptr().align_offset(16), 0);
        let grouped = group_events(&[submission(misaligned.clone())], 2);
        assert_eq!(grouped, misaligned);
        assert_eq!(
            grouped.as_ptr().align_offset(16),
            0,
            "copied into an aligned buffer"
        );

        let (first, second) = (events_at(0, 2), events_at(0, 1));
        let grouped = group_events(&[submission(first.clone()), submission(second.clone())], 3);
        assert_eq!(&grouped[..2 * EVENT_SIZE], &first[..]);
        assert_eq!(&grouped[2 * EVENT_SIZE..], &second[..]);
    }
}
