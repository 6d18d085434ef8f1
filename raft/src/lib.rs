//! tally-raft: the LMAX pipeline of one node.
//!
//! Client batches are gathered by the ingress batcher into log entries,
//! replicated and made durable by openraft on the journal, and applied in log
//! order by one business-logic thread fed through a disruptor ring.
#![forbid(unsafe_code)]

pub mod apply;
pub mod checkpoint;
pub mod ingress;
pub mod ledger_limits;
pub mod limits;
pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshots;
pub mod state_machine;
pub mod types;

use std::sync::Arc;

/// How blocking work (fsync, snapshot files) and the business logic run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Production: a business-logic thread behind the disruptor ring, a
    /// journal flusher thread, `spawn_blocking` for file work.
    Dedicated,
    /// The simulator: everything runs on the calling task, in order, so one
    /// deterministic scheduler drives the whole cluster.
    Inline,
}

/// Runs blocking `work` per `threads`.
pub async fn blocking<T, F>(threads: Threads, work: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match threads {
        Threads::Inline => work(),
        Threads::Dedicated => tokio::task::spawn_blocking(work)
            .await
            .map_err(std::io::Error::other)?,
    }
}

/// The leader's source of timestamps (nanoseconds since the Unix epoch). The
/// simulator supplies its simulated clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn new(now_ns: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now_ns))
    }

    pub fn now_ns(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// The wall clock.
pub fn wall_clock() -> Clock {
    Clock::new(|| {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    })
}
