//! Network partitions of a 3-node cluster of real `tally start` processes.
//!
//! Every node's membership entry names a fault-injecting proxy (one per destination node) instead
//! of its own peer listener. Each node listens for peers on its own loopback address
//! (127.0.0.11, .12, .13) and, because `tally start` binds its outgoing peer connections to that
//! address, the proxy in front of node `to` knows from the connecting address which node each
//! connection comes from: it can cut directed links `from → to`. Cutting a link kills the
//! connections on it; new ones are accepted and left silent (a black hole, as a partition looks
//! to TCP), and closed when the link heals.
//!
//! Two faults, under a steady load of transfers retried (same ids) until acknowledged:
//! 1. the leader cut off both ways: it must not acknowledge a write nor commit anything while the
//!    majority elects a leader and keeps acknowledging; healed, it catches up and never leads
//!    again with a stale log;
//! 2. the new leader's outgoing links cut (it still hears the others): the others elect a leader,
//!    the old one follows it over the links left and applies what it commits.
//!
//! At the end the nodes converge (same applied index and digest), every acknowledged transfer is
//! on every node, the sums balance and no write sent to a cut-off node was ever applied.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::Shutdown;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::cluster::account_id;
use common::cluster::agent;
use common::cluster::audit;
use common::cluster::create_accounts;
use common::cluster::get;
use common::cluster::post;
use common::cluster::serial;
use common::cluster::transfer_json;
use common::cluster::Cluster;
use common::cluster::Load;
use common::cluster::RaftAddresses;
use common::cluster::Sent;
use common::cluster::CATCH_UP_TIMEOUT_MS;
use common::cluster::POLL_MS;
use serde_json::json;
use serde_json::Value;

const NODES: [u64; 3] = [1, 2, 3];
const LOAD_CLIENTS: u64 = 2;
/// A load request unanswered this long is retried on another node: a cut-off leader holds a
/// write until the server's own submit timeout (30 s), far longer than the test should wait.
const LOAD_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long a write sent straight to a cut-off node is given to (wrongly) succeed.
const PROBE_TIMEOUT_MS: u64 = 1_500;
/// Acknowledged load requests awaited in each phase: the cluster is making progress.
const PHASE_REQUESTS: u64 = 10;
/// After a cut, replies already in flight may still land for a moment.
const CUT_SETTLE_MS: u64 = 300;
const PROXY_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Ids of writes sent straight to a cut-off node.
const PROBE_ID_FIRST: u64 = 900_000_000;

/// The loopback address node `id` listens on for peers and connects to them from.
fn node_ip(id: u64) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + u8::try_from(id).expect("small node id")])
}

/// A directed link: connections opened by node `.0` to node `.1`.
type Link = (u64, u64);

struct Connection {
    link: Link,
    /// The accepted socket, and the one to the node when the connection is forwarded.
    sockets: Vec<TcpStream>,
}

impl Connection {
    fn close(&self) {
        for socket in &self.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct ProxyState {
    cut: BTreeSet<Link>,
    connections: HashMap<u64, Connection>,
    next_connection: u64,
    /// Connections seen per link, forwarded or black-holed.
    seen: BTreeMap<Link, u64>,
}

/// One proxy per destination node, all sharing which links are cut.
struct Proxies {
    state: Arc<Mutex<ProxyState>>,
    stopped: Arc<AtomicBool>,
    /// Connections from an address that is no node's: a node not binding its source address.
    strangers: Arc<AtomicU64>,
    /// Where the other nodes dial node `id`: its proxy.
    advertised: BTreeMap<u64, SocketAddr>,
}

impl Proxies {
    /// Proxies in front of `upstream` (node id → where it really listens).
    fn start(upstream: &BTreeMap<u64, SocketAddr>) -> Proxies {
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        let strangers = Arc::new(AtomicU64::new(0));
        let node_of_ip: Arc<BTreeMap<IpAddr, u64>> =
            Arc::new(upstream.keys().map(|id| (node_ip(*id), *id)).collect());
        let mut advertised = BTreeMap::new();
        for (to, target) in upstream {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy");
            advertised.insert(*to, listener.local_addr().expect("proxy address"));
            let (state, stopped, strangers, node_of_ip) = (
                Arc::clone(&state),
                Arc::clone(&stopped),
                Arc::clone(&strangers),
                Arc::clone(&node_of_ip),
            );
            let (to, target) = (*to, *target);
            std::thread::spawn(move || {
                for accepted in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = accepted else { continue };
                    let Some(from) = client
                        .peer_addr()
                        .ok()
                        .and_then(|peer| node_of_ip.get(&peer.ip()).copied())
                    else {
                        strangers.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    relay(&state, (from, to), client, target);
                }
            });
        }
        Proxies {
            state,
            stopped,
            strangers,
            advertised,
        }
    }

    fn cut(&self, links: &[Link]) {
        let mut state = self.state.lock().unwrap();
        state.cut.extend(links.iter().copied());
        for connection in state.connections.values() {
            if links.contains(&connection.link) {
                connection.close();
            }
        }
        state
            .connections
            .retain(|_, connection| !links.contains(&connection.link));
    }

    /// Heals every link; black-holed connections are closed (their clients gave up long ago).
    fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        let cut = std::mem::take(&mut state.cut);
        for connection in state.connections.values() {
            if cut.contains(&connection.link) {
                connection.close();
            }
        }
        state
            .connections
            .retain(|_, connection| !cut.contains(&connection.link));
    }

    fn seen(&self) -> BTreeMap<Link, u64> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        for address in self.advertised.values() {
            // Wakes the accepting thread, which then sees `stopped`.
            let _ = TcpStream::connect_timeout(address, Duration::from_millis(100));
        }
        let mut state = self.state.lock().unwrap();
        for connection in state.connections.values() {
            connection.close();
        }
        state.connections.clear();
    }
}

/// Forwards `client` to `target` on `link`, or holds it silent while the link is cut.
fn relay(state: &Arc<Mutex<ProxyState>>, link: Link, client: TcpStream, target: SocketAddr) {
    // Connect before taking the lock; the link may be cut meanwhile, so it is checked after.
    let upstream =
        TcpStream::connect_timeout(&target, Duration::from_millis(PROXY_CONNECT_TIMEOUT_MS));
    let mut locked = state.lock().unwrap();
    *locked.seen.entry(link).or_default() += 1;
    let id = locked.next_connection;
    locked.next_connection += 1;
    if locked.cut.contains(&link) {
        locked.connections.insert(
            id,
            Connection {
                link,
                sockets: vec![client],
            },
        );
        return;
    }
    let Ok(upstream) = upstream else {
        // The node is down: the client sees its connection closed, as it would a refusal.
        return;
    };
    let copies = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    locked.connections.insert(
        id,
        Connection {
            link,
            sockets: vec![client, upstream],
        },
    );
    drop(locked);
    for (reader, writer) in copies {
        let (Ok(mut reader), Ok(mut writer)) = (reader, writer) else {
            continue;
        };
        let state = Arc::clone(state);
        std::thread::spawn(move || {
            let _ = io::copy(&mut reader, &mut writer);
            // Either side gone, or the link cut: the connection ends both ways.
            let _ = reader.shutdown(Shutdown::Both);
            let _ = writer.shutdown(Shutdown::Both);
            state.lock().unwrap().connections.remove(&id);
        });
    }
}

/// Both directions between `node` and each of `others`.
fn isolate(node: u64, others: &[u64]) -> Vec<Link> {
    others
        .iter()
        .flat_map(|other| [(node, *other), (*other, node)])
        .collect()
}

fn others(node: u64) -> Vec<u64> {
    NODES.iter().copied().filter(|id| *id != node).collect()
}

/// Sends one transfer straight to a cut-off node, not following redirects, and asserts it was not
/// acknowledged: a timeout, a refusal, a 503/504 or a 307 to another node are all fine; a 200 is
/// a write acknowledged by a minority. Returns the outcome for the log.
fn probe_cut_off(cluster: &Cluster, node: u64, id: u64, probes: &mut Vec<(u64, Sent)>) -> String {
    let sent = Sent {
        debit: account_id(1, 1),
        credit: account_id(1, 2),
        amount: 7,
        ledger: 1,
    };
    probes.push((id, sent));
    let url = format!("{}/v1/transfers", cluster.members[&node].base());
    let outcome = match post(
        &agent(PROBE_TIMEOUT_MS),
        &url,
        &json!([transfer_json(id, &sent)]),
    ) {
        Ok(answer) => {
            assert_ne!(
                answer.status,
                200,
                "cut-off node {node} acknowledged transfer {id}: {}\n{}",
                answer.body,
                cluster.logs()
            );
            format!("{} {}", answer.status, answer.body)
        }
        Err(error) => error,
    };
    eprintln!("write {id} to cut-off node {node}: {outcome}");
    outcome
}

fn view_index(view: &Value, field: &str) -> u64 {
    view[field].as_u64().unwrap_or(0)
}

/// Waits until `node` has applied at least `index`.
fn wait_applied(cluster: &Cluster, node: u64, index: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    loop {
        let applied = view_index(&cluster.members[&node].cluster(), "applied_index");
        if applied >= index {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} stuck at {applied} < {index} ({what})\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

#[test]
fn a_cut_off_leader_acknowledges_nothing_the_majority_goes_on_and_healing_converges() {
    let _serial = serial();
    let started = Instant::now();
    let listen: BTreeMap<u64, SocketAddr> = NODES
        .iter()
        .map(|id| {
            let address = TcpListener::bind((node_ip(*id), 0))
                .and_then(|listener| listener.local_addr())
                .expect("a free port on the node's loopback address");
            (*id, address)
        })
        .collect();
    let proxies = Proxies::start(&listen);
    let mut cluster = Cluster::with_raft_addresses(&NODES, &BTreeMap::new(), |id| RaftAddresses {
        advertised: proxies.advertised[&id].to_string(),
        listen: listen[&id].to_string(),
    });
    cluster.start_all();
    cluster.wait_leader(&NODES);
    let bases = cluster.bases();
    create_accounts(&agent(10_000), &bases);
    let load = Load::start(&bases, LOAD_CLIENTS, LOAD_REQUEST_TIMEOUT_MS);
    load.wait_for_requests(PHASE_REQUESTS, &cluster, "before the partition");
    let mut probes = Vec::new();

    // 1. The leader cut off, both ways.
    let leader = cluster.wait_leader(&NODES);
    let majority = others(leader);
    let cut_leaders = [leader];
    let term_before = view_index(&cluster.members[&leader].cluster(), "term");
    let cut_at = Instant::now();
    proxies.cut(&isolate(leader, &majority));
    std::thread::sleep(Duration::from_millis(CUT_SETTLE_MS));
    let minority_committed = view_index(&cluster.members[&leader].cluster(), "committed_index");
    probe_cut_off(&cluster, leader, PROBE_ID_FIRST, &mut probes);
    let new_leader = cluster.wait_leader(&majority);
    let elected_ms = cut_at.elapsed().as_millis();
    load.wait_for_requests(PHASE_REQUESTS, &cluster, "majority, leader cut off");
    probe_cut_off(&cluster, leader, PROBE_ID_FIRST + 1, &mut probes);
    let minority_view = cluster.members[&leader].cluster();
    let majority_committed = view_index(&cluster.members[&new_leader].cluster(), "committed_index");
    eprintln!(
        "leader {leader} cut off: node {new_leader} elected after {elected_ms} ms; the cut-off \
         node says state {}, leader {}, term {}, committed {} (majority committed {majority_committed})",
        minority_view["state"],
        minority_view["leader_id"],
        minority_view["term"],
        minority_view["committed_index"]
    );
    assert_eq!(
        view_index(&minority_view, "committed_index"),
        minority_committed,
        "the cut-off node committed something on its own\n{}",
        cluster.logs()
    );
    assert!(
        majority_committed > minority_committed,
        "the majority commits past the cut-off node"
    );
    // It may still call itself leader, but no majority has acknowledged it for longer than its
    // lease: its health check says it cannot serve.
    let health = get(
        &agent(5_000),
        &format!("{}/healthz", cluster.members[&leader].base()),
    )
    .expect("the cut-off node answers /healthz");
    assert_eq!(
        health.status, 503,
        "a cut-off node must not report healthy: {}",
        health.body
    );

    // Healed: the old leader learns the new term, follows and catches up; with a shorter log it
    // cannot win an election.
    proxies.heal();
    wait_applied(&cluster, leader, majority_committed, "after healing");
    let leader_after_heal = cluster.wait_leader(&NODES);
    assert_ne!(leader_after_heal, leader, "{}", cluster.logs());
    let term_after = view_index(&cluster.members[&leader].cluster(), "term");
    assert!(term_after > term_before, "{term_after} > {term_before}");
    load.wait_for_requests(PHASE_REQUESTS, &cluster, "after healing");

    // 2. One way: the leader's outgoing links cut, its incoming ones kept.
    let leader = leader_after_heal;
    let cut_leaders = [cut_leaders[0], leader];
    let rest = others(leader);
    let cut_at = Instant::now();
    let outgoing: Vec<Link> = rest.iter().map(|other| (leader, *other)).collect();
    proxies.cut(&outgoing);
    let new_leader = cluster.wait_leader(&rest);
    let elected_ms = cut_at.elapsed().as_millis();
    // The old leader hears the new one (its incoming links work): it follows it, still cut.
    let followed = cluster.wait_leader(&NODES);
    assert_eq!(followed, new_leader, "{}", cluster.logs());
    let followed_ms = cut_at.elapsed().as_millis();
    probe_cut_off(&cluster, leader, PROBE_ID_FIRST + 2, &mut probes);
    load.wait_for_requests(PHASE_REQUESTS, &cluster, "majority, one-way cut");
    let committed = view_index(&cluster.members[&new_leader].cluster(), "committed_index");
    wait_applied(&cluster, leader, committed, "one-way cut, before healing");
    eprintln!(
        "leader {leader}'s outgoing links cut: node {new_leader} elected after {elected_ms} ms, \
         followed by node {leader} after {followed_ms} ms; node {leader} applied index {committed} \
         before the links healed"
    );
    proxies.heal();
    load.wait_for_requests(PHASE_REQUESTS, &cluster, "after the one-way cut healed");

    // The end: converged, nothing acknowledged lost, nothing sent to a cut-off node applied.
    let book = load.finish();
    book.sent.lock().unwrap().extend(probes.iter().copied());
    let (held, index, digest) = audit(&cluster, &NODES, &book);
    for (id, _) in &probes {
        assert!(
            !held.contains_key(id),
            "transfer {id}, sent only to a cut-off node, was applied"
        );
    }
    let strangers = proxies.strangers.load(Ordering::Relaxed);
    assert_eq!(
        strangers, 0,
        "peer connections that did not come from their node's address"
    );
    // Both leaders cut off had connections to each follower through the proxies.
    let seen = proxies.seen();
    for from in cut_leaders {
        for to in others(from) {
            assert!(
                seen.get(&(from, to)).copied().unwrap_or(0) > 0,
                "no connection went through link {from} → {to}: {seen:?}"
            );
        }
    }
    eprintln!(
        "{} transfers acknowledged, {} held on every node; applied index {index}, digest {digest}; \
         connections per link {seen:?}; {} s in all",
        book.acknowledged.lock().unwrap().len(),
        held.len(),
        started.elapsed().as_secs()
    );
}
