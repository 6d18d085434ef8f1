//! The simulated network: peer connections over turmoil's TCP, with a
//! frame-aware chaos pump on the serving side, and the small client protocol
//! the workload speaks to nodes.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tally_journal::fault::SplitMix64;
use tally_raft::network::Transport;
use tally_raft::types::NodeInfo;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

pub const RAFT_PORT: u16 = 7000;
pub const CLIENT_PORT: u16 = 8000;
/// Frames larger than this are passed through but never replayed later.
const REPLAYABLE_FRAME_BYTES_MAX: usize = 64 * 1024;
const CLIENT_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Peer connections over turmoil's simulated TCP.
#[derive(Clone, Debug, Default)]
pub struct SimTransport;

impl Transport for SimTransport {
    type Stream = turmoil::net::TcpStream;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr.to_string()).await
    }
}

/// Per-mille rates of peer-connection faults, changed by the harness while
/// the simulation runs, and the seeded generator that draws them.
#[derive(Debug)]
pub struct Chaos {
    pub loss: u32,
    pub duplication: u32,
    pub reordering: u32,
    random: SplitMix64,
    pub counts: ChaosCounts,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ChaosCounts {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl Chaos {
    pub fn new(seed: u64) -> Chaos {
        Chaos {
            loss: 0,
            duplication: 0,
            reordering: 0,
            random: SplitMix64::new(seed),
            counts: ChaosCounts::default(),
        }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.random.chance(u64::from(per_mille), 1000)
    }
}

/// What the pump does with one request.
enum Fate {
    Deliver,
    /// The connection dies before the request arrives.
    LoseRequest,
    /// The request is served; the connection dies before the reply arrives.
    LoseReply,
    /// The request arrives twice; the peer sees one reply.
    Duplicate,
    /// An old request of this connection arrives first (reply discarded).
    Stale(Vec<u8>),
}

async fn read_raw<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_raw<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> io::Result<()> {
    stream
        .write_all(&(frame.len() as u32).to_le_bytes())
        .await?;
    stream.write_all(frame).await?;
    stream.flush().await
}

/// Sits between an accepted peer connection (`outer`) and the node's
/// `serve_connection` (`inner`), frame by frame, and applies [`Chaos`].
/// The protocol is strictly request/reply after the challenge and hello, so
/// a duplicate or stale request's reply is read and dropped here.
pub async fn chaos_pump<O, I>(
    mut outer: O,
    mut inner: I,
    chaos: Arc<Mutex<Chaos>>,
) -> io::Result<()>
where
    O: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = read_raw(&mut inner).await?;
    write_raw(&mut outer, &challenge).await?;
    let hello = read_raw(&mut outer).await?;
    write_raw(&mut inner, &hello).await?;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    loop {
        let request = read_raw(&mut outer).await?;
        let fate = {
            let mut chaos = chaos.lock().expect("chaos lock");
            let (loss, duplication, reordering) = (chaos.loss, chaos.duplication, chaos.reordering);
            if chaos.roll(loss) {
                chaos.counts.lost += 1;
                if chaos.random.chance(1, 2) {
                    Fate::LoseRequest
                } else {
                    Fate::LoseReply
                }
            } else if chaos.roll(duplication) {
                chaos.counts.duplicated += 1;
                Fate::Duplicate
            } else if !seen.is_empty() && chaos.roll(reordering) {
                chaos.counts.reordered += 1;
                let pick = chaos.random.below(seen.len() as u64) as usize;
                Fate::Stale(seen[pick].clone())
            } else {
                Fate::Deliver
            }
        };
        match fate {
            Fate::LoseRequest => return Ok(()),
            Fate::Stale(ref old) => {
                write_raw(&mut inner, old).await?;
                read_raw(&mut inner).await?;
            }
            Fate::Deliver | Fate::LoseReply | Fate::Duplicate => {}
        }
        write_raw(&mut inner, &request).await?;
        let reply = read_raw(&mut inner).await?;
        match fate {
            Fate::LoseReply => return Ok(()),
            Fate::Duplicate => {
                write_raw(&mut inner, &request).await?;
                read_raw(&mut inner).await?;
            }
            _ => {}
        }
        write_raw(&mut outer, &reply).await?;
        if request.len() <= REPLAYABLE_FRAME_BYTES_MAX {
            if seen.len() == 8 {
                seen.remove(0);
            }
            seen.push(request);
        }
    }
}

// ------------------------------------------------------------ client protocol

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    Submit {
        operation: u8,
        #[serde(with = "serde_bytes")]
        events: Vec<u8>,
    },
    AddLearner {
        node_id: u64,
        info: NodeInfo,
    },
    ChangeVoters {
        voters: Vec<u64>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientReply {
    /// 16-byte `EventResult` records.
    Results(#[serde(with = "serde_bytes")] Vec<u8>),
    NotLeader(Option<u64>),
    /// Nothing was accepted; try again.
    Busy,
    /// The outcome is unknown; retry with the same ids.
    Unknown(String),
    /// Refused for good (diverged node, malformed request).
    Refused(String),
    Done,
}

pub async fn send_frame<S: AsyncWrite + Unpin, M: Serialize>(
    stream: &mut S,
    message: &M,
) -> io::Result<()> {
    let bytes = postcard::to_allocvec(message).map_err(io::Error::other)?;
    write_raw(stream, &bytes).await
}

pub async fn receive_frame<S: AsyncRead + Unpin, M: DeserializeOwned>(
    stream: &mut S,
) -> io::Result<M> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > CLIENT_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}
