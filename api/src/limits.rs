//! Every bound of the HTTP API and the CLI, in one place.

use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::limits::BATCH_SIZE_MAX;

/// Largest JSON request body. A fully populated transfer is about 600 bytes of JSON; 2 KiB per
/// event leaves room for whitespace and string-encoded integers, so a full batch always fits.
pub const JSON_BODY_SIZE_MAX: usize = BATCH_EVENTS_MAX * 2048;

/// Largest binary request body: one full batch of 128-byte records.
pub const BINARY_BODY_SIZE_MAX: usize = BATCH_SIZE_MAX;

/// What a busy server asks the client to wait before retrying (the `Retry-After` header).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// How long a write may wait for its batch to be committed and applied before the client is told
/// that the outcome is unknown (retrying with the same ids is safe).
pub const SUBMIT_TIMEOUT_MS: u64 = 30_000;

/// How long a read may wait for the business-logic thread.
pub const READ_TIMEOUT_MS: u64 = 10_000;

/// How long `tally start` waits for the node to become leader before serving anyway (`/healthz`
/// answers 503 until it is).
pub const LEADER_WAIT_TIMEOUT_MS: u64 = 10_000;

/// How often the Prometheus recorder drains its histograms.
pub const METRICS_UPKEEP_INTERVAL_MS: u64 = 5_000;

/// How long the CLI waits for one answer from the server.
pub const CLIENT_TIMEOUT_MS: u64 = 30_000;

const _: () = assert!(JSON_BODY_SIZE_MAX >= BINARY_BODY_SIZE_MAX);
const _: () = assert!(READ_TIMEOUT_MS <= SUBMIT_TIMEOUT_MS);
const _: () = assert!(SUBMIT_TIMEOUT_MS <= CLIENT_TIMEOUT_MS);

/// How many `307` redirects (follower → leader) the CLI follows for one request.
pub const CLIENT_REDIRECTS_MAX: usize = 5;

/// How long adding a learner may take (it waits until the learner has caught up).
pub const ADMIN_LEARNER_TIMEOUT_MS: u64 = 120_000;

/// How long any other membership change or a leadership transfer may take.
pub const ADMIN_CHANGE_TIMEOUT_MS: u64 = 30_000;

/// How long `POST /v1/cluster/leader` waits to see the new leader take over.
pub const LEADER_TRANSFER_WAIT_MS: u64 = 5_000;
