//! tally-raft: the LMAX pipeline of one node.
//!
//! Client batches are gathered by the ingress batcher into log entries,
//! replicated and made durable by openraft on the journal, and applied in log
//! order by one business-logic thread fed through a disruptor ring.
#![forbid(unsafe_code)]

pub mod apply;
pub mod checkpoint;
pub mod ingress;
pub mod limits;
pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshots;
pub mod state_machine;
pub mod types;
