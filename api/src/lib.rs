//! tally-api: see ARCHITECTURE.md.
#![forbid(unsafe_code)]
