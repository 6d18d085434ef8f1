//! tally-sim: the simulation harness (see ARCHITECTURE.md).
//!
//! - [`replay`]: audit replay of a node's data directory.
//! - [`cluster`]: the seeded cluster simulator (turmoil, faults, auditor).
// One `unsafe` call, allowed where it is: `replay::advise_huge_pages` (a `madvise` hint).
#![deny(unsafe_code)]

pub mod cluster;
pub mod replay;
