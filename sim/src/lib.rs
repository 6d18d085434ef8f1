//! tally-sim: the simulation harness (see ARCHITECTURE.md).
//!
//! - [`replay`]: audit replay of a node's data directory.
//! - The seeded cluster simulator comes next (issue 6, item 2).
#![forbid(unsafe_code)]

pub mod replay;
