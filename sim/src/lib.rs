//! tally-sim: the simulation harness (see ARCHITECTURE.md).
//!
//! - [`replay`]: audit replay of a node's data directory.
//! - [`placement`]: which CPU runs which of a replay's threads.
//! - [`cluster`]: the seeded cluster simulator (turmoil, faults, auditor).
// `unsafe` is allowed for two `madvise` calls, where they are: `replay::advise_huge_pages`
// and `replay::populate` (hints about memory the replay owns; they change no contents).
#![deny(unsafe_code)]

pub mod cluster;
pub mod placement;
pub mod replay;
