//! tally-api: the HTTP API (axum), the `tally` command line and its small HTTP client.
//!
//! Invariants: client input is validated into engine records before anything is submitted; no
//! client input can panic a handler; a write is answered only with the pipeline's results or an
//! error that says whether anything may have been accepted.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod http;
pub mod huge_pages;
pub mod json;
pub mod limits;
pub mod server;
