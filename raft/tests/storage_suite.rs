//! openraft's storage conformance suite against Tally's log store (on the
//! journal) and state machine (on the engine, through the apply ring).

use std::sync::Arc;

use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::StorageError;
use tally_raft::log_store::LogStore;
use tally_raft::snapshots::SnapshotFiles;
use tally_raft::state_machine::StateMachine;
use tally_raft::types::TypeConfig;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let storage = tally_journal::FsStorage::shared();
        let log =
            LogStore::open(Arc::clone(&storage), &dir.path().join("log")).expect("open log store");
        let snapshots = Arc::new(
            SnapshotFiles::open(
                storage,
                &dir.path().join("snapshots"),
                tally_raft::Threads::Dedicated,
            )
            .expect("open snapshots"),
        );
        let state_machine = StateMachine::open(snapshots, |_| {}).expect("open state machine");
        Ok((dir, log, state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    // The suite spawns through the runtime, whose RNG needs a seed scope.
    tally_raft::types::Runtime::scope(0x5eed, Suite::test_all(Builder)).await
}
