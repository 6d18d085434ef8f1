//! tally-raft: see ARCHITECTURE.md.
#![forbid(unsafe_code)]
