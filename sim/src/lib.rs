//! tally-sim: see ARCHITECTURE.md.
#![forbid(unsafe_code)]
