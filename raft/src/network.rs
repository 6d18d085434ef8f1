//! Raft RPCs between nodes: length-prefixed postcard frames over a byte stream.
//!
//! The byte stream comes from a [`Transport`]: real TCP in production, the
//! simulator's network in `sim/`. Every connection starts with a challenge:
//! the server sends a random nonce, the client answers with
//! HMAC-SHA256(cluster secret, nonce). A peer without the secret is refused
//! and logged. Nothing time-related (no `Instant`) ever crosses the wire.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::Hmac;
use hmac::Mac;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use sha2::Sha256;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::limits::RPC_FRAME_BYTES_MAX;
use crate::types::NodeId;
use crate::types::NodeInfo;
use crate::types::Raft;
use crate::types::Snapshot;
use crate::types::SnapshotData;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Protocol magic and version, checked in the first frame of a connection.
const PROTOCOL_MAGIC: u32 = u32::from_le_bytes(*b"TLYR");
const PROTOCOL_VERSION: u16 = 1;
pub const NONCE_SIZE: usize = 32;

/// Where byte streams to peers come from.
pub trait Transport: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static;
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Connects from a given local IP address (see [`NetworkSettings::source_ip`]). A transport
    /// without addresses of its own (the simulator's) has nothing to bind and just connects.
    fn connect_from(
        &self,
        addr: &str,
        source_ip: Option<IpAddr>,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send {
        let _ = source_ip;
        self.connect(addr)
    }
}

/// Real TCP.
#[derive(Clone, Debug, Default)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        self.connect_from(addr, None).await
    }

    /// With a source IP, the socket is bound to it (any port) before connecting, so the peer sees
    /// the connection come from that address: on a multi-homed host, the address the node listens
    /// on rather than whichever the routing table picks.
    async fn connect_from(
        &self,
        addr: &str,
        source_ip: Option<IpAddr>,
    ) -> io::Result<Self::Stream> {
        let stream = match source_ip {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(source_ip) => connect_bound(addr, source_ip).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Connects to the first of `addr`'s resolved addresses of the same family as `source_ip` that
/// accepts, from `source_ip`.
async fn connect_bound(addr: &str, source_ip: IpAddr) -> io::Result<tokio::net::TcpStream> {
    let mut last_error = None;
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != source_ip.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source_ip, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address of the family of the source address {source_ip}"),
        )
    }))
}

/// Bounds of the peer connections.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    pub connect_timeout: Duration,
    /// First and largest pause between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The local IP address outgoing peer connections leave from (`None`: the OS chooses). Peers
    /// and firewalls then see one address per node, the one it listens on.
    pub source_ip: Option<IpAddr>,
    /// The shortest time an RPC is given to answer. openraft asks for one
    /// heartbeat interval, which is shorter than a cross-region round trip
    /// with the default 50 ms heartbeat: every append would time out and the
    /// cluster would never commit (found by the simulator).
    pub rpc_timeout_min: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1_000),
            source_ip: None,
            rpc_timeout_min: Duration::from_millis(1_000),
        }
    }
}

#[derive(Clone)]
pub struct Network<T: Transport = TcpTransport> {
    transport: T,
    secret: Arc<Vec<u8>>,
    settings: NetworkSettings,
}

impl<T: Transport> Network<T> {
    pub fn new(transport: T, secret: &[u8], settings: NetworkSettings) -> Network<T> {
        Network {
            transport,
            secret: Arc::new(secret.to_vec()),
            settings,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    magic: u32,
    version: u16,
    nonce: [u8; NONCE_SIZE],
}

#[derive(Serialize, Deserialize)]
struct Hello {
    magic: u32,
    version: u16,
    mac: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

/// Errors travel as text: the caller only needs to know the call failed.
type Reply<T> = Result<T, String>;

fn mac(secret: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"tally-peer-v1");
    mac.update(nonce);
    mac
}

async fn write_frame<S: AsyncWrite + Unpin, M: Serialize>(
    stream: &mut S,
    message: &M,
) -> io::Result<()> {
    let bytes = postcard::to_allocvec(message).map_err(io::Error::other)?;
    if bytes.len() > RPC_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame larger than RPC_FRAME_BYTES_MAX",
        ));
    }
    stream
        .write_all(&(bytes.len() as u32).to_le_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

async fn read_frame<S: AsyncRead + Unpin, M: DeserializeOwned>(stream: &mut S) -> io::Result<M> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > RPC_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {length} bytes is over the limit of {RPC_FRAME_BYTES_MAX}"),
        ));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

// ---------------------------------------------------------------- client

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient<T> {
        PeerClient {
            target,
            addr: node.raft_addr.clone(),
            network: self.clone(),
            stream: None,
        }
    }
}

pub struct PeerClient<T: Transport> {
    target: NodeId,
    addr: String,
    network: Network<T>,
    stream: Option<T::Stream>,
}

impl<T: Transport> PeerClient<T> {
    /// Connects and authenticates, both within `connect_timeout`: a peer that accepts the
    /// connection but never sends its challenge (hung, or a black hole in between) must not hold
    /// the caller forever.
    async fn connect(&mut self) -> io::Result<T::Stream> {
        let timeout = self.network.settings.connect_timeout;
        tokio::time::timeout(timeout, self.connect_and_authenticate())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting and authenticating took over {timeout:?}"),
                )
            })?
    }

    async fn connect_and_authenticate(&self) -> io::Result<T::Stream> {
        let settings = &self.network.settings;
        let mut stream = self
            .network
            .transport
            .connect_from(&self.addr, settings.source_ip)
            .await?;
        let challenge: Challenge = read_frame(&mut stream).await?;
        if challenge.magic != PROTOCOL_MAGIC || challenge.version != PROTOCOL_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "peer speaks protocol {:#x} v{}",
                    challenge.magic, challenge.version
                ),
            ));
        }
        let mac = mac(&self.network.secret, &challenge.nonce)
            .finalize()
            .into_bytes()
            .to_vec();
        let hello = Hello {
            magic: PROTOCOL_MAGIC,
            version: PROTOCOL_VERSION,
            mac,
        };
        write_frame(&mut stream, &hello).await?;
        Ok(stream)
    }

    /// One request, one reply, on the cached connection (reconnecting once).
    async fn call<R: DeserializeOwned>(
        &mut self,
        request: &Request,
        ttl: Duration,
    ) -> Result<R, RPCError<TypeConfig>> {
        let ttl = ttl.max(self.network.settings.rpc_timeout_min);
        let stream = match self.stream.take() {
            Some(stream) => stream,
            None => self
                .connect()
                .await
                .map_err(|error| self.unreachable(&error))?,
        };
        let exchange = async move {
            let mut stream = stream;
            write_frame(&mut stream, request).await?;
            let reply: Reply<R> = read_frame(&mut stream).await?;
            Ok::<_, io::Error>((stream, reply))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Err(_) => Err(RPCError::Network(NetworkError::from_string(format!(
                "node {} ({}): no reply within {ttl:?}",
                self.target, self.addr
            )))),
            Ok(Err(error)) => Err(RPCError::Network(NetworkError::new(&error))),
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                reply.map_err(|message| RPCError::Network(NetworkError::from_string(message)))
            }
        }
    }

    fn unreachable(&self, error: &io::Error) -> RPCError<TypeConfig> {
        tracing::debug!(target = self.target, addr = %self.addr, %error, "peer unreachable");
        RPCError::Unreachable(Unreachable::new(error))
    }
}

impl<T: Transport> RaftNetworkV2<TypeConfig> for PeerClient<T> {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&Request::Append(rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&Request::Vote(rpc), option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&Request::PreVote(rpc), option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = self.call(&request, option.hard_ttl()) => Ok(reply?),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&Request::TransferLeader(req), option.hard_ttl())
            .await
    }

    fn backoff(&self) -> Option<Backoff> {
        let settings = &self.network.settings;
        let (min, max) = (settings.backoff_min, settings.backoff_max);
        Some(Backoff::new(std::iter::successors(
            Some(min),
            move |pause| Some((*pause * 2).min(max)),
        )))
    }
}

// ---------------------------------------------------------------- server

/// Serves Raft RPCs on one accepted connection until the peer goes away.
/// `nonce` must be fresh and unpredictable for every connection (the
/// simulator passes one from its seeded generator).
pub async fn serve_connection<S>(
    mut stream: S,
    raft: Raft,
    secret: Arc<Vec<u8>>,
    peer: String,
    nonce: [u8; NONCE_SIZE],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = Challenge {
        magic: PROTOCOL_MAGIC,
        version: PROTOCOL_VERSION,
        nonce,
    };
    if write_frame(&mut stream, &challenge).await.is_err() {
        return;
    }
    let hello: Hello = match read_frame(&mut stream).await {
        Ok(hello) => hello,
        Err(error) => {
            tracing::warn!(%peer, %error, "peer refused: no valid hello");
            metrics::counter!("tally_peer_refused_total").increment(1);
            return;
        }
    };
    let authentic = hello.magic == PROTOCOL_MAGIC
        && hello.version == PROTOCOL_VERSION
        && mac(&secret, &nonce).verify_slice(&hello.mac).is_ok();
    if !authentic {
        tracing::warn!(%peer, "peer refused: wrong cluster secret or protocol");
        metrics::counter!("tally_peer_refused_total").increment(1);
        return;
    }
    loop {
        let request: Request = match read_frame(&mut stream).await {
            Ok(request) => request,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(error) => {
                tracing::warn!(%peer, %error, "bad frame from peer; closing");
                return;
            }
        };
        let written = match request {
            Request::Append(rpc) => reply(&mut stream, raft.append_entries(rpc).await).await,
            Request::Vote(rpc) => reply(&mut stream, raft.vote(rpc).await).await,
            Request::PreVote(rpc) => reply(&mut stream, raft.pre_vote(rpc).await).await,
            Request::Snapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: data,
                };
                reply(
                    &mut stream,
                    raft.install_full_snapshot(vote, snapshot).await,
                )
                .await
            }
            Request::TransferLeader(rpc) => {
                reply(&mut stream, raft.handle_transfer_leader(rpc).await).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn reply<S, R, E>(stream: &mut S, result: Result<R, E>) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
    R: Serialize,
    E: std::fmt::Display,
{
    let reply: Reply<R> = result.map_err(|error| error.to_string());
    write_frame(stream, &reply).await
}

/// Accepts peer connections on a TCP listener for as long as the task runs.
pub async fn serve_tcp(listener: tokio::net::TcpListener, raft: Raft, secret: &[u8]) {
    let secret = Arc::new(secret.to_vec());
    loop {
        match listener.accept().await {
            Ok((stream, address)) => {
                let _ = stream.set_nodelay(true);
                let mut nonce = [0u8; NONCE_SIZE];
                rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
                tokio::spawn(serve_connection(
                    stream,
                    raft.clone(),
                    Arc::clone(&secret),
                    address.to_string(),
                    nonce,
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_connections_leave_from_the_source_ip_asked_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // Every 127.0.0.0/8 address is local on Linux: no set-up needed.
        for source in [None, Some("127.0.0.2"), Some("127.0.0.3")] {
            let source_ip = source.map(|ip| ip.parse::<IpAddr>().unwrap());
            let (connected, accepted) = tokio::join!(
                TcpTransport.connect_from(&address, source_ip),
                listener.accept()
            );
            let connected = connected.unwrap();
            let (_, peer) = accepted.unwrap();
            let expected: IpAddr = source.unwrap_or("127.0.0.1").parse().unwrap();
            assert_eq!(peer.ip(), expected);
            assert_eq!(connected.local_addr().unwrap().ip(), expected);
        }
    }

    #[tokio::test]
    async fn a_source_ip_of_another_family_than_the_target_is_refused() {
        let error = TcpTransport
            .connect_from("127.0.0.1:1", Some("::1".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable, "{error}");
    }

    /// A peer that accepts but never sends its challenge (a hung process, a black hole) costs
    /// the caller `connect_timeout`, not forever.
    #[tokio::test]
    async fn the_handshake_is_bounded_by_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let settings = NetworkSettings {
            connect_timeout: Duration::from_millis(200),
            ..NetworkSettings::default()
        };
        let mut network = Network::new(TcpTransport, b"secret", settings);
        let info = NodeInfo {
            raft_addr: address,
            http_addr: String::new(),
            region: String::new(),
        };
        let mut client = network.new_client(2, &info).await;
        let started = std::time::Instant::now();
        let (connected, accepted) = tokio::join!(client.connect(), listener.accept());
        let _silent = accepted.unwrap();
        let error = connected.expect_err("no challenge: no connection");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
