//! Drift detection: checkpoints of the state digest and hash chain, carried in
//! the log so every replica (and every audit replay) can check itself.
//!
//! Every `checkpoint_every_entries` log indexes, each node's business-logic
//! thread records `(index, digest, hash chain)` right after applying that
//! index. The leader also proposes its values as a *checkpoint entry*: a batch
//! with operation [`OPERATION_CHECKPOINT`] and one 128-byte
//! [`CheckpointRecord`]. Every node applying that entry compares it with what
//! it recorded for the same index. A mismatch means this replica's state
//! diverged from the leader's: it is logged as an error with the index,
//! counted in a metric, shown in the node status, and the node stops serving.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use serde::Serialize;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

use crate::limits::CHECKPOINTS_KEPT;

/// The batch operation byte of a checkpoint entry. Never an engine operation.
pub const OPERATION_CHECKPOINT: u8 = 0xC0;

/// One checkpoint as it travels in the log. 128 bytes, little-endian.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub index: u64,
    pub reserved_0: u64,
    pub digest: u128,
    pub hash_chain: u128,
    pub reserved: [u8; 80],
}

const _: () = assert!(size_of::<CheckpointRecord>() == tally_engine::limits::EVENT_SIZE);

/// A replica's own values at one log index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub index: u64,
    #[serde(serialize_with = "hex128")]
    pub digest: u128,
    #[serde(serialize_with = "hex128")]
    pub hash_chain: u128,
}

fn hex128<S: serde::Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value:032x}"))
}

impl Checkpoint {
    pub fn to_record(self) -> CheckpointRecord {
        CheckpointRecord {
            index: self.index,
            reserved_0: 0,
            digest: self.digest,
            hash_chain: self.hash_chain,
            reserved: [0; 80],
        }
    }

    /// Decodes a checkpoint entry's payload; `None` if it is not exactly one
    /// well-formed record.
    pub fn from_payload(payload: &[u8]) -> Option<Checkpoint> {
        let record = CheckpointRecord::read_from_bytes(payload).ok()?;
        if record.reserved_0 != 0 || record.reserved != [0; 80] {
            return None;
        }
        Some(Checkpoint {
            index: record.index,
            digest: record.digest,
            hash_chain: record.hash_chain,
        })
    }
}

/// What a mismatch looked like.
#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    pub index: u64,
    pub leader: Checkpoint,
    pub local: Checkpoint,
}

/// Drift state shared between the business-logic thread and the node.
#[derive(Debug, Default)]
pub struct DriftState {
    diverged: AtomicBool,
    divergence: Mutex<Option<Divergence>>,
    last_verified: Mutex<Option<Checkpoint>>,
    last_recorded: Mutex<Option<Checkpoint>>,
}

impl DriftState {
    pub fn is_diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    pub fn divergence(&self) -> Option<Divergence> {
        self.divergence.lock().expect("drift lock").clone()
    }

    pub fn last_verified(&self) -> Option<Checkpoint> {
        *self.last_verified.lock().expect("drift lock")
    }

    pub fn last_recorded(&self) -> Option<Checkpoint> {
        *self.last_recorded.lock().expect("drift lock")
    }
}

/// The business-logic thread's side: recorded checkpoints (bounded) and the
/// verification of checkpoint entries.
#[derive(Debug, Default)]
pub struct Checkpoints {
    recorded: BTreeMap<u64, Checkpoint>,
}

impl Checkpoints {
    pub fn record(&mut self, checkpoint: Checkpoint, drift: &DriftState) {
        self.recorded.insert(checkpoint.index, checkpoint);
        while self.recorded.len() > CHECKPOINTS_KEPT {
            self.recorded.pop_first();
        }
        *drift.last_recorded.lock().expect("drift lock") = Some(checkpoint);
    }

    /// Compares the leader's checkpoint with ours. One we no longer hold (or
    /// never held, e.g. restored from a later snapshot) cannot be checked.
    pub fn verify(&self, leader: Checkpoint, drift: &DriftState) {
        let Some(local) = self.recorded.get(&leader.index).copied() else {
            metrics::counter!("tally_checkpoints_unverifiable_total").increment(1);
            return;
        };
        if local == leader {
            metrics::counter!("tally_checkpoints_verified_total").increment(1);
            *drift.last_verified.lock().expect("drift lock") = Some(local);
            return;
        }
        tracing::error!(
            index = leader.index,
            leader_digest = format!("{:032x}", leader.digest),
            local_digest = format!("{:032x}", local.digest),
            leader_hash_chain = format!("{:032x}", leader.hash_chain),
            local_hash_chain = format!("{:032x}", local.hash_chain),
            "STATE DIVERGED from the leader at this log index; this node stops serving"
        );
        metrics::counter!("tally_checkpoint_mismatches_total").increment(1);
        metrics::gauge!("tally_diverged").set(1.0);
        let mut divergence = drift.divergence.lock().expect("drift lock");
        if divergence.is_none() {
            *divergence = Some(Divergence {
                index: leader.index,
                leader,
                local,
            });
        }
        drift.diverged.store(true, Ordering::Release);
    }
}
