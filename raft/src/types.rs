//! The Raft type configuration: what a log entry carries and what applying it answers.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// One client batch: the unit of replication. A Raft log entry carries exactly one.
///
/// `events` are `event_count` fixed 128-byte little-endian records (accounts or
/// transfers, per `operation`). `timestamp` is the one the leader proposed for the
/// first event; the state machine makes it strictly increasing deterministically
/// (see [`crate::apply::effective_timestamp`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub operation: u8,
    pub timestamp: u64,
    pub events: Bytes,
}

impl Batch {
    pub fn event_count(&self) -> usize {
        self.events.len() / tally_engine::limits::EVENT_SIZE
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("operation", &self.operation)
            .field("timestamp", &self.timestamp)
            .field("event_count", &self.event_count())
            .finish()
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch(op={}, ts={}, events={})",
            self.operation,
            self.timestamp,
            self.event_count()
        )
    }
}

/// What applying one entry answered. Only the leader's waiting client reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply {
    /// Raw 16-byte `EventResult` records, one per event, in event order.
    #[serde(with = "serde_bytes")]
    pub results: Vec<u8>,
    /// Set when the whole batch was refused deterministically (e.g. a malformed batch).
    pub rejected: Option<String>,
}

/// How to reach a node: its Raft RPC address and its HTTP address, and its region label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub raft_addr: String,
    pub http_addr: String,
    pub region: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} http={} region={}",
            self.raft_addr, self.http_addr, self.region
        )
    }
}

pub type NodeId = u64;

/// The snapshot bytes that travel between nodes and to disk: `Ledger::snapshot()`.
pub type SnapshotData = Vec<u8>;

openraft::declare_raft_types!(
    /// Tally's Raft types: one log entry is one [`Batch`].
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = NodeId,
        Node = NodeInfo,
        AsyncRuntime = Runtime,
);

/// Tokio, with openraft's randomness (election timeouts, tick jitter) drawn
/// from a per-task seeded generator instead of the thread's. Every node runs
/// its Raft inside [`Runtime::scope`] with `NodeConfig::rng_seed`: random in
/// production, derived from the run's seed in the simulator, which makes a
/// simulated cluster's elections reproducible.
pub type Runtime = openraft_rt::deterministic_rng::DeterministicRng<openraft::TokioRuntime>;

pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
