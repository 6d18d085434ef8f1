//! One simulated node: the real `tally_raft::Node` (real openraft, engine and
//! journal) on a simulated disk and network, restarted by the harness after
//! a crash with whatever its disk kept.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tally_engine::Operation;
use tally_journal::fault::FaultyStorage;
use tally_journal::fault::SplitMix64;
use tally_journal::Storage;
use tally_journal::StorageFile;
use tally_raft::ingress::SubmitError;
use tally_raft::network::serve_connection;
use tally_raft::network::NONCE_SIZE;
use tally_raft::node::AdminError;
use tally_raft::node::Environment;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use tally_raft::types::NodeInfo;
use tally_raft::Threads;
use zerocopy::IntoBytes;

use super::net::chaos_pump;
use super::net::receive_frame;
use super::net::send_frame;
use super::net::Chaos;
use super::net::ClientReply;
use super::net::ClientRequest;
use super::net::SimTransport;
use super::net::CLIENT_PORT;
use super::net::RAFT_PORT;
use super::Variant;

/// Simulated time starts here (2026-01-01T00:00:00Z), so timestamps look real.
pub const EPOCH_NS: u64 = 1_767_225_600_000_000_000;

pub fn host_name(node: u64) -> String {
    format!("node-{node}")
}

/// What the harness knows about one node across its restarts.
#[derive(Default)]
pub struct NodeSlot {
    /// The running node, between a successful start and a crash.
    pub node: Option<Node>,
    /// Why the last start failed (e.g. the disk is corrupt beyond repair).
    pub start_error: Option<String>,
    pub starts: u64,
}

/// Everything a node host needs to (re)start.
#[derive(Clone)]
pub struct HostSetup {
    pub seed: u64,
    pub node_id: u64,
    pub initial_members: BTreeMap<u64, NodeInfo>,
    pub join: bool,
    pub region: String,
    pub disk: FaultyStorage,
    pub variant: Variant,
    pub chaos: Arc<Mutex<Chaos>>,
    pub slot: Arc<Mutex<NodeSlot>>,
    pub snapshot_every_entries: u64,
    pub checkpoint_every_entries: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
}

pub fn node_info(node: u64, region: &str) -> NodeInfo {
    NodeInfo {
        raft_addr: format!("{}:{RAFT_PORT}", host_name(node)),
        http_addr: format!("{}:{CLIENT_PORT}", host_name(node)),
        region: region.to_string(),
    }
}

/// The host's software: start the node, serve peers and clients forever.
pub async fn run(setup: HostSetup) -> turmoil::Result {
    let starts = {
        let mut slot = setup.slot.lock().expect("slot lock");
        slot.starts += 1;
        slot.start_error = None;
        slot.starts
    };
    let mut config = NodeConfig::single(PathBuf::from("/tally"), String::new());
    config.node_id = setup.node_id;
    config.info = node_info(setup.node_id, &setup.region);
    config.initial_members = setup.initial_members.clone();
    config.join = setup.join;
    config.heartbeat_interval_ms = setup.heartbeat_ms;
    config.election_timeout_min_ms = setup.election_timeout_min_ms;
    config.election_timeout_max_ms = 2 * setup.election_timeout_min_ms;
    config.cluster_secret = b"simulated cluster secret".to_vec();
    config.snapshot_every_entries = setup.snapshot_every_entries;
    config.checkpoint_every_entries = setup.checkpoint_every_entries;
    config.clock = tally_raft::Clock::new(|| {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        EPOCH_NS + u64::try_from(elapsed.as_nanos()).expect("simulated time fits u64")
    });
    config.rng_seed = setup
        .seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(setup.node_id << 32 | starts);
    let storage: Arc<dyn Storage> = match setup.variant {
        Variant::Correct => setup.disk.shared(),
        Variant::NoFsync => Arc::new(NoFsync(setup.disk.clone())),
    };
    let environment = Environment {
        storage,
        threads: Threads::Inline,
        transport: SimTransport,
    };
    let node = match Node::start_in(config, environment).await {
        Ok(node) => node,
        Err(error) => {
            // A node that cannot start stays down; the harness reports it.
            setup.slot.lock().expect("slot lock").start_error = Some(error.to_string());
            std::future::pending::<()>().await;
            unreachable!("pending never completes");
        }
    };
    setup.slot.lock().expect("slot lock").node = Some(node.clone());

    let peers = turmoil::net::TcpListener::bind(("0.0.0.0", RAFT_PORT)).await?;
    let clients = turmoil::net::TcpListener::bind(("0.0.0.0", CLIENT_PORT)).await?;
    let secret = Arc::new(b"simulated cluster secret".to_vec());
    let mut nonces = SplitMix64::new(setup.seed ^ (setup.node_id << 48) ^ starts);
    let raft = node.raft().clone();
    let chaos = Arc::clone(&setup.chaos);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = peers.accept().await else {
                continue;
            };
            let mut nonce = [0u8; NONCE_SIZE];
            for chunk in nonce.chunks_mut(8) {
                chunk.copy_from_slice(&nonces.next_u64().to_le_bytes());
            }
            let (inner, served) = tokio::io::duplex(1 << 20);
            tokio::spawn(serve_connection(
                served,
                raft.clone(),
                Arc::clone(&secret),
                peer.to_string(),
                nonce,
            ));
            tokio::spawn(chaos_pump(stream, inner, Arc::clone(&chaos)));
        }
    });
    loop {
        let (stream, _) = clients.accept().await?;
        tokio::spawn(serve_client(node.clone(), stream));
    }
}

async fn serve_client(node: Node, mut stream: turmoil::net::TcpStream) {
    loop {
        let request: ClientRequest = match receive_frame(&mut stream).await {
            Ok(request) => request,
            Err(_) => return,
        };
        let reply = match request {
            ClientRequest::Submit { operation, events } => match Operation::try_from(operation) {
                Err(error) => ClientReply::Refused(error.to_string()),
                Ok(operation) => match node.submit(operation, Bytes::from(events)).await {
                    Ok(results) => ClientReply::Results(results.as_bytes().to_vec()),
                    Err(SubmitError::NotLeader { leader_id, .. }) => {
                        ClientReply::NotLeader(leader_id)
                    }
                    Err(SubmitError::Busy) => ClientReply::Busy,
                    Err(error @ (SubmitError::Unknown(_) | SubmitError::ShuttingDown)) => {
                        ClientReply::Unknown(error.to_string())
                    }
                    Err(error @ (SubmitError::Invalid(_) | SubmitError::Diverged)) => {
                        ClientReply::Refused(error.to_string())
                    }
                },
            },
            ClientRequest::AddLearner { node_id, info } => {
                admin_reply(node.add_learner(node_id, info).await)
            }
            ClientRequest::ChangeVoters { voters } => {
                let voters: BTreeSet<u64> = voters.into_iter().collect();
                admin_reply(node.change_voters(voters, false).await)
            }
        };
        if send_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

fn admin_reply(result: Result<(), AdminError>) -> ClientReply {
    match result {
        Ok(()) => ClientReply::Done,
        Err(AdminError::NotLeader { leader_id, .. }) => ClientReply::NotLeader(leader_id),
        Err(AdminError::Rejected(message)) => ClientReply::Unknown(message),
    }
}

/// How long a client waits for one reply before it treats the outcome as unknown.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------ broken variants

/// A disk that claims every fsync succeeded without making anything durable:
/// the bug the auditor must catch (acknowledged data lost in a crash).
#[derive(Clone)]
pub struct NoFsync(pub FaultyStorage);

impl fmt::Debug for NoFsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoFsync")
    }
}

#[derive(Debug)]
struct NoFsyncFile(Arc<dyn StorageFile>);

impl Storage for NoFsync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(NoFsyncFile(self.0.create(path)?)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(NoFsyncFile(self.0.open(path)?)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sync_dir(dir)
    }
}

impl StorageFile for NoFsyncFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}
