//! tally-sim: the simulation harness (see ARCHITECTURE.md).
//!
//! - [`replay`]: audit replay of a node's data directory.
//! - [`cluster`]: the seeded cluster simulator (turmoil, faults, auditor).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod replay;
