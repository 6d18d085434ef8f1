//! One Tally node: the journal, the Raft instance, the apply ring and the
//! ingress batcher, wired together. A single node is a one-member cluster.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::errors::ClientWriteError;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use openraft::raft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::Config;
use openraft::SnapshotPolicy;
use tally_engine::EventResult;
use tally_engine::Ledger;
use tally_engine::Operation;
use zerocopy::IntoBytes;

use crate::apply::ApplyRing;
use crate::apply::Core;
use crate::checkpoint::Checkpoint;
use crate::checkpoint::Divergence;
use crate::checkpoint::DriftState;
use crate::checkpoint::OPERATION_CHECKPOINT;
use crate::ingress::Ingress;
use crate::ingress::SubmitError;
use crate::limits::APPEND_ENTRIES_MAX;
use crate::limits::CHECKPOINTS_KEPT;
use crate::limits::CHECKPOINT_EVERY_ENTRIES_DEFAULT;
use crate::limits::LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES;
use crate::limits::SNAPSHOT_EVERY_ENTRIES_DEFAULT;
use crate::limits::SNAPSHOT_LOG_BYTES_MIN;
use crate::limits::SNAPSHOT_POLICY_INTERVAL;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::network::NetworkSettings;
use crate::network::TcpTransport;
use crate::network::Transport;
use crate::snapshots::SnapshotFiles;
pub use crate::state_machine::LedgerCapacity;
use crate::state_machine::StateMachine;
use crate::types::Batch;
use crate::types::NodeId;
use crate::types::NodeInfo;
use crate::types::Raft;
use crate::types::TypeConfig;
use crate::Threads;

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// This node's own addresses, recorded in the membership.
    pub info: NodeInfo,
    /// Snapshot every this many log entries; 0 = the adaptive policy (by
    /// log size against state size, see `snapshot_when_worth_it`).
    pub snapshot_every_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Shared by every member; peers without it are refused.
    pub cluster_secret: Vec<u8>,
    pub network: NetworkSettings,
    /// Static initial membership (including this node). Empty: a one-member
    /// cluster of this node. Used only when the data directory is fresh.
    pub initial_members: BTreeMap<NodeId, NodeInfo>,
    /// Fresh data directory but do not initialise: wait to be added to an
    /// existing cluster (as a learner, then promoted).
    pub join: bool,
    /// Where to accept peer connections (`None`: no peers, a single node).
    pub raft_listen: Option<std::net::SocketAddr>,
    pub checkpoint_every_entries: u64,
    /// Where the leader's timestamps come from.
    pub clock: crate::Clock,
    /// Seeds openraft's randomness (election timeouts) on this node. Random
    /// by default; the simulator derives it from the run's seed.
    pub rng_seed: u64,
    /// The ledger's size, reserved at start-up. `None` (the default): the
    /// engine's default limits, memory grown on demand (a pause on the
    /// business-logic thread each time a table doubles).
    pub ledger_capacity: Option<LedgerCapacity>,
}

impl NodeConfig {
    pub fn single(data_dir: PathBuf, http_addr: String) -> NodeConfig {
        NodeConfig {
            node_id: 1,
            data_dir,
            info: NodeInfo {
                raft_addr: String::new(),
                http_addr,
                region: "local".into(),
            },
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES_DEFAULT,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            cluster_secret: Vec::new(),
            network: NetworkSettings::default(),
            initial_members: BTreeMap::new(),
            join: false,
            raft_listen: None,
            checkpoint_every_entries: CHECKPOINT_EVERY_ENTRIES_DEFAULT,
            clock: crate::wall_clock(),
            rng_seed: rand::random(),
            ledger_capacity: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("journal: {0}")]
    Journal(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("peer listener on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error(
        "the ledger's limits changed ({recorded} when the log was applied, {now} now), and \
         {entries} log entries after the latest snapshot would be applied again under the new \
         ones, which can change results clients were already given; start with the old limits, \
         take a snapshot (`tally cluster snapshot`), then restart with the new ones"
    )]
    LedgerLimitsChanged {
        recorded: crate::ledger_limits::LedgerLimits,
        now: crate::ledger_limits::LedgerLimits,
        entries: u64,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<NodeInfo>,
    },
    #[error("read failed: {0}")]
    Failed(String),
    #[error("this node's state diverged from the leader's; it no longer serves")]
    Diverged,
}

/// Why a cluster administration request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader: Option<NodeInfo>,
    },
    #[error("{0}")]
    Rejected(String),
}

/// A snapshot of what a node knows about itself and the cluster.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: BTreeMap<NodeId, NodeInfo>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Membership is a joint configuration (a change is in progress).
    pub joint: bool,
    /// Leader only: each member's matched log index and its lag behind the leader's last index.
    pub replication: BTreeMap<NodeId, MemberProgress>,
    /// The last checkpoint this node recorded and the last one it verified against the leader's.
    pub checkpoint_recorded: Option<Checkpoint>,
    pub checkpoint_verified: Option<Checkpoint>,
    /// Set when a checkpoint mismatch was found: this node stopped serving.
    pub divergence: Option<Divergence>,
    /// Leader only: how long ago a majority last acknowledged this leader.
    pub quorum_acked_ms_ago: Option<u64>,
    /// This node calls itself leader of a multi-voter cluster, but no majority
    /// has acknowledged it for longer than its lease (the election timeout
    /// maximum): it is cut off and cannot commit. openraft does not step such a
    /// leader down; `/healthz` answers 503 for it.
    pub leader_without_quorum: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberProgress {
    pub matched_index: Option<u64>,
    pub lag: u64,
}

/// What the business-logic thread reports about the ledger.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LedgerStatus {
    pub applied_index: Option<u64>,
    pub digest: String,
    pub hash_chain: String,
    pub accounts: usize,
    pub transfers: usize,
    pub last_timestamp: u64,
}

#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    node_id: NodeId,
    raft: Raft,
    ring: Arc<ApplyRing>,
    ingress: Ingress,
    drift: Arc<DriftState>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The leader lease: the election timeout maximum.
    lease_ms: u64,
}

/// What a node runs on: its disk, how it runs blocking work, its network.
pub struct Environment<T: Transport> {
    pub storage: Arc<dyn tally_journal::Storage>,
    pub threads: Threads,
    pub transport: T,
}

impl Node {
    /// Opens (or creates) the data directory, recovers snapshot + log, starts
    /// Raft and, on a fresh directory, initialises a one-member cluster.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let environment = Environment {
            storage: tally_journal::FsStorage::shared(),
            threads: Threads::Dedicated,
            transport: TcpTransport,
        };
        let node = Node::start_in(config.clone(), environment).await?;
        if let Some(addr) = config.raft_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?;
            let secret = config.cluster_secret.clone();
            let peer_raft = node.raft().clone();
            let task = tokio::spawn(async move {
                crate::network::serve_tcp(listener, peer_raft, &secret).await;
            });
            node.inner.tasks.lock().expect("tasks lock").push(task);
        }
        Ok(node)
    }

    /// Starts a node on the given storage, threads and peer transport. The
    /// caller serves incoming peer connections (`network::serve_connection`).
    /// Production uses [`Node::start`]; the simulator its own disk and network.
    pub async fn start_in<T: Transport>(
        config: NodeConfig,
        environment: Environment<T>,
    ) -> Result<Node, StartError> {
        let data_dir = config.data_dir.clone();
        let storage = environment.storage;
        let log_store = LogStore::open_with(
            Arc::clone(&storage),
            &data_dir.join("log"),
            environment.threads,
        )
        .map_err(|error| StartError::Journal(error.to_string()))?;
        let snapshots = Arc::new(
            SnapshotFiles::open(
                Arc::clone(&storage),
                &data_dir.join("snapshots"),
                environment.threads,
            )
            .map_err(|error| StartError::Journal(error.to_string()))?,
        );
        let drift = Arc::new(DriftState::default());
        let (checkpoint_sink, checkpoints) =
            tokio::sync::mpsc::channel::<Checkpoint>(CHECKPOINTS_KEPT);
        let state_machine = StateMachine::open_with(
            snapshots,
            environment.threads,
            config.ledger_capacity,
            |core| {
                core.checkpoint_every_entries = config.checkpoint_every_entries;
                core.drift = Arc::clone(&drift);
                core.checkpoint_sink = Some(checkpoint_sink);
            },
        )
        .map_err(|error| StartError::Journal(error.to_string()))?;
        let ring = Arc::clone(state_machine.ring());
        let (limits, applied_index) = ring
            .run(|core: &mut Core| {
                (
                    crate::ledger_limits::LedgerLimits::of(&core.ledger),
                    core.last_applied.map(|log_id| log_id.index),
                )
            })
            .await
            .map_err(|error| StartError::Raft(error.to_string()))?;
        crate::ledger_limits::check_and_record(
            storage,
            &data_dir,
            limits,
            applied_index,
            log_store.last_index(),
        )?;

        let raft_config = Config {
            cluster_name: "tally".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: match config.snapshot_every_entries {
                0 => SnapshotPolicy::Never,
                entries => SnapshotPolicy::LogsSinceLast(entries),
            },
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES,
            max_payload_entries: APPEND_ENTRIES_MAX,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|error| StartError::Raft(error.to_string()))?,
        );
        // Raft's tasks inherit the seed scope: their randomness is reproducible.
        let raft = crate::types::Runtime::scope(
            config.rng_seed,
            Raft::new(
                config.node_id,
                raft_config,
                Network::new(
                    environment.transport,
                    &config.cluster_secret,
                    config.network.clone(),
                ),
                log_store,
                state_machine,
            ),
        )
        .await
        .map_err(|error| StartError::Raft(error.to_string()))?;

        let mut tasks = Vec::new();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|error| StartError::Raft(error.to_string()))?;
        if !initialized && !config.join {
            let members = if config.initial_members.is_empty() {
                BTreeMap::from([(config.node_id, config.info.clone())])
            } else {
                config.initial_members.clone()
            };
            let count = members.len();
            raft.initialize(members)
                .await
                .map_err(|error| StartError::Raft(error.to_string()))?;
            tracing::info!(
                node_id = config.node_id,
                members = count,
                "initialised a new cluster"
            );
        }
        tasks.push(tokio::spawn(propose_checkpoints(raft.clone(), checkpoints)));
        if config.snapshot_every_entries == 0 {
            tasks.push(tokio::spawn(snapshot_when_worth_it(
                raft.clone(),
                Arc::clone(&ring),
            )));
        }
        let ingress = Ingress::start(raft.clone(), config.clock.clone());
        Ok(Node {
            inner: Arc::new(NodeInner {
                node_id: config.node_id,
                raft,
                ring,
                ingress,
                drift,
                tasks: std::sync::Mutex::new(tasks),
                lease_ms: config.election_timeout_max_ms,
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Waits until this node is the leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let node_id = self.inner.node_id;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(|metrics| metrics.current_leader == Some(node_id), "leader")
            .await
            .is_ok()
    }

    /// Submits a batch of whole 128-byte records. Answered once the batch is
    /// durable on a quorum and applied; one result per event.
    pub async fn submit(
        &self,
        operation: Operation,
        events: Bytes,
    ) -> Result<Vec<EventResult>, SubmitError> {
        if self.inner.drift.is_diverged() {
            return Err(SubmitError::Diverged);
        }
        self.inner.ingress.submit(operation, events).await
    }

    /// A linearizable read: confirms leadership, waits until everything
    /// committed before the read is applied, then runs `query` on the
    /// business-logic thread.
    pub async fn read<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> T + Send + 'static,
    {
        if self.inner.drift.is_diverged() {
            return Err(ReadError::Diverged);
        }
        self.inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(read_error)?;
        self.read_local(query).await
    }

    /// A read of this node's applied state, without asking the leader: may be stale.
    pub async fn read_local<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> T + Send + 'static,
    {
        if self.inner.drift.is_diverged() {
            return Err(ReadError::Diverged);
        }
        self.inner
            .ring
            .run(move |core: &mut Core| query(&core.ledger))
            .await
            .map_err(|error| ReadError::Failed(error.to_string()))
    }

    pub async fn ledger_status(&self) -> Result<LedgerStatus, ReadError> {
        self.inner
            .ring
            .run(|core: &mut Core| LedgerStatus {
                applied_index: core.last_applied.map(|log_id| log_id.index),
                digest: format!("{:032x}", core.ledger.digest()),
                hash_chain: format!("{:032x}", core.ledger.hash_chain()),
                accounts: core.ledger.accounts_count(),
                transfers: core.ledger.transfers_count(),
                last_timestamp: core.ledger.last_timestamp(),
            })
            .await
            .map_err(|error| ReadError::Failed(error.to_string()))
    }

    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication = metrics
            .replication
            .as_ref()
            .map(|progress| {
                progress
                    .iter()
                    .map(|(id, matched)| {
                        let matched_index = matched.map(|log_id| log_id.index);
                        let lag = last_log_index.saturating_sub(matched_index.unwrap_or(0));
                        (*id, MemberProgress { matched_index, lag })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let leading = metrics.current_leader == Some(self.inner.node_id);
        let quorum_acked_ms_ago = metrics.last_quorum_acked.filter(|_| leading).map(|acked| {
            use openraft::Instant as _;
            u64::try_from(acked.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let leader_without_quorum = leading
            && voters.len() > 1
            && quorum_acked_ms_ago.is_none_or(|ago| ago > self.inner.lease_ms);
        NodeStatus {
            node_id: self.inner.node_id,
            state: format!("{:?}", metrics.state),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed_index: metrics.cluster_committed.map(|log_id| log_id.index),
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            purged_index: metrics.purged.map(|log_id| log_id.index),
            members: membership
                .nodes()
                .map(|(id, info)| (*id, info.clone()))
                .collect(),
            voters,
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            replication,
            checkpoint_recorded: self.inner.drift.last_recorded(),
            checkpoint_verified: self.inner.drift.last_verified(),
            divergence: self.inner.drift.divergence(),
            quorum_acked_ms_ago,
            leader_without_quorum,
        }
    }

    /// The leader's id and addresses, as this node knows them.
    pub fn leader(&self) -> (Option<NodeId>, Option<NodeInfo>) {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader;
        let info = leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        });
        (leader, info)
    }

    /// Adds a node as a learner and waits until it has caught up.
    pub async fn add_learner(&self, node_id: NodeId, info: NodeInfo) -> Result<(), AdminError> {
        self.inner
            .raft
            .add_learner(node_id, info, true)
            .await
            .map(|_| ())
            .map_err(admin_error)
    }

    /// Makes `voters` the voting members (joint consensus under the hood).
    /// Every new voter must be a learner already. Removed voters are dropped
    /// from the cluster unless `keep_as_learners`.
    pub async fn change_voters(
        &self,
        voters: BTreeSet<NodeId>,
        keep_as_learners: bool,
    ) -> Result<(), AdminError> {
        if voters.is_empty() {
            return Err(AdminError::Rejected(
                "a cluster needs at least one voter".into(),
            ));
        }
        self.inner
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), keep_as_learners)
            .await
            .map(|_| ())
            .map_err(admin_error)
    }

    /// Removes `node_id` from the cluster (voter or learner).
    pub async fn remove_node(&self, node_id: NodeId) -> Result<(), AdminError> {
        let status = self.status();
        if status.voters.contains(&node_id) {
            let voters: BTreeSet<NodeId> = status
                .voters
                .iter()
                .copied()
                .filter(|id| *id != node_id)
                .collect();
            self.change_voters(voters, false).await?;
        }
        let still_member = self.status().members.contains_key(&node_id);
        if still_member {
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await
                .map_err(admin_error)?;
        }
        Ok(())
    }

    /// Asks the leader to hand leadership to `node_id`.
    pub async fn transfer_leader(&self, node_id: NodeId) -> Result<(), AdminError> {
        let status = self.status();
        if status.leader_id != Some(self.inner.node_id) {
            let (leader_id, leader) = self.leader();
            return Err(AdminError::NotLeader { leader_id, leader });
        }
        if !status.voters.contains(&node_id) {
            return Err(AdminError::Rejected(format!(
                "node {node_id} is not a voter"
            )));
        }
        self.inner
            .raft
            .trigger()
            .transfer_leader(node_id)
            .await
            .map_err(|error| AdminError::Rejected(error.to_string()))
    }

    /// Takes a snapshot now (and purges the log behind it per policy).
    pub async fn trigger_snapshot(&self) -> Result<(), AdminError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|error| AdminError::Rejected(error.to_string()))
    }

    /// Stops Raft and the business-logic thread.
    pub async fn shutdown(&self) {
        for task in self.inner.tasks.lock().expect("tasks lock").iter() {
            task.abort();
        }
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        self.inner.ring.shutdown();
    }
}

fn admin_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> AdminError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => AdminError::NotLeader {
            leader_id: forward.leader_id,
            leader: forward.leader_node,
        },
        other => AdminError::Rejected(other.to_string()),
    }
}

/// The adaptive snapshot policy (`snapshot_due`), looked at once every
/// `SNAPSHOT_POLICY_INTERVAL`.
async fn snapshot_when_worth_it(raft: Raft, ring: Arc<ApplyRing>) {
    loop {
        tokio::time::sleep(SNAPSHOT_POLICY_INTERVAL).await;
        let sizes = ring
            .run(|core: &mut Core| {
                (
                    core.events_since_snapshot * tally_engine::limits::EVENT_SIZE as u64,
                    core.snapshot_state_bytes,
                )
            })
            .await;
        let Ok((log_bytes, snapshot_bytes)) = sizes else {
            return;
        };
        if snapshot_due(log_bytes, snapshot_bytes) {
            tracing::info!(
                log_bytes,
                snapshot_bytes,
                "snapshot policy: a snapshot is due (ignored if one is being built)"
            );
            // The build's first step resets the counter; a trigger while a snapshot is
            // still being built is ignored by openraft. Under a load whose log outgrows the
            // paced saving (a snapshot takes at most half the disk's time), snapshots follow
            // one another back to back.
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// A snapshot is due once the log since the last one (`log_bytes`, what a
/// restart re-applies) is at least `SNAPSHOT_LOG_BYTES_MIN` and outweighs
/// what every snapshot copies whole (`snapshot_bytes`: the accounts). A
/// snapshot writes only the transfers appended since the one before (it
/// extends that one's run file), so building one costs about the log it
/// replaces plus `snapshot_bytes`: amortised over at least as many bytes of
/// log, and a restart re-applies at most about that much log after restoring
/// the state. (Before session 19 every snapshot wrote every transfer, and
/// this compared the log with the whole state: one snapshot at each doubling,
/// each writing all of it.)
fn snapshot_due(log_bytes: u64, snapshot_bytes: u64) -> bool {
    log_bytes >= snapshot_bytes.max(SNAPSHOT_LOG_BYTES_MIN)
}

/// The leader proposes its own checkpoints as log entries for followers to verify.
async fn propose_checkpoints(raft: Raft, mut checkpoints: tokio::sync::mpsc::Receiver<Checkpoint>) {
    while let Some(checkpoint) = checkpoints.recv().await {
        if !raft.is_leader() {
            continue;
        }
        let batch = Batch {
            operation: OPERATION_CHECKPOINT,
            timestamp: 0,
            events: Bytes::copy_from_slice(checkpoint.to_record().as_bytes()),
        };
        if let Err(error) = raft.client_write(batch).await {
            tracing::debug!(%error, index = checkpoint.index, "checkpoint not proposed");
        }
    }
}

fn read_error(error: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> ReadError {
    match error {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)) => {
            ReadError::NotLeader {
                leader_id: forward.leader_id,
                leader: forward.leader_node,
            }
        }
        other => ReadError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger that only grows by transfers, a second's worth of log at a
    /// time: a snapshot every `SNAPSHOT_LOG_BYTES_MIN` of log, however large
    /// the state grows, so a restart never re-applies more than that and a
    /// second; accounts outweighing that space snapshots further apart.
    #[test]
    fn an_append_only_ledger_takes_a_snapshot_every_so_much_log() {
        let second = 128 * 1_000_000u64;
        for (accounts_bytes, every) in [(128 * 10_000u64, 3u64), (128 * 5_000_000, 5)] {
            let mut log = 0u64;
            let mut snapshots = Vec::new();
            for seconds in 1..=60u64 {
                log += second;
                if snapshot_due(log, accounts_bytes) {
                    snapshots.push(seconds);
                    log = 0;
                }
                assert!(log <= accounts_bytes.max(SNAPSHOT_LOG_BYTES_MIN) + second);
            }
            let expected: Vec<u64> = (1..=60 / every).map(|n| n * every).collect();
            assert_eq!(snapshots, expected);
        }
    }
}
