//! One Tally node: the journal, the Raft instance, the apply ring and the
//! ingress batcher, wired together. A single node is a one-member cluster.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use openraft::raft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::Config;
use openraft::SnapshotPolicy;
use tally_engine::EventResult;
use tally_engine::Ledger;
use tally_engine::Operation;

use crate::apply::ApplyRing;
use crate::apply::Core;
use crate::ingress::Ingress;
use crate::ingress::SubmitError;
use crate::limits::APPEND_ENTRIES_MAX;
use crate::limits::LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES;
use crate::limits::SNAPSHOT_EVERY_ENTRIES_DEFAULT;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::network::NetworkSettings;
use crate::network::TcpTransport;
use crate::snapshots::SnapshotFiles;
use crate::state_machine::StateMachine;
use crate::types::NodeId;
use crate::types::NodeInfo;
use crate::types::Raft;
use crate::types::TypeConfig;

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// This node's own addresses, recorded in the membership.
    pub info: NodeInfo,
    pub snapshot_every_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Shared by every member; peers without it are refused.
    pub cluster_secret: Vec<u8>,
    pub network: NetworkSettings,
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
}

impl Node {
    /// Opens (or creates) the data directory, recovers snapshot + log, starts
    /// Raft and, on a fresh directory, initialises a one-member cluster.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let storage = tally_journal::FsStorage::shared();
        let log_store = LogStore::open(Arc::clone(&storage), &data_dir.join("log"))
            .map_err(|error| StartError::Journal(error.to_string()))?;
        let snapshots = Arc::new(
            SnapshotFiles::open(storage, &data_dir.join("snapshots"))
                .map_err(|error| StartError::Journal(error.to_string()))?,
        );
        let state_machine = StateMachine::open(snapshots)
            .map_err(|error| StartError::Journal(error.to_string()))?;
        let ring = Arc::clone(state_machine.ring());

        let raft_config = Config {
            cluster_name: "tally".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES,
            max_payload_entries: APPEND_ENTRIES_MAX,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|error| StartError::Raft(error.to_string()))?,
        );
        let raft = Raft::new(
            config.node_id,
            raft_config,
            Network::new(TcpTransport, &config.cluster_secret, config.network.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|error| StartError::Raft(error.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|error| StartError::Raft(error.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(config.node_id, config.info.clone())]);
            raft.initialize(members)
                .await
                .map_err(|error| StartError::Raft(error.to_string()))?;
            tracing::info!(
                node_id = config.node_id,
                "initialised a new one-member cluster"
            );
        }
        let ingress = Ingress::start(raft.clone());
        Ok(Node {
            inner: Arc::new(NodeInner {
                node_id: config.node_id,
                raft,
                ring,
                ingress,
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
        NodeStatus {
            node_id: self.inner.node_id,
            state: format!("{:?}", metrics.state),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            committed_index: metrics.last_applied.map(|log_id| log_id.index),
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            purged_index: metrics.purged.map(|log_id| log_id.index),
            members: metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, info)| (*id, info.clone()))
                .collect(),
        }
    }

    /// Stops Raft and the business-logic thread.
    pub async fn shutdown(&self) {
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        self.inner.ring.shutdown();
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
