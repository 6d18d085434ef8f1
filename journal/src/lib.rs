//! tally-journal: see ARCHITECTURE.md.
#![forbid(unsafe_code)]
