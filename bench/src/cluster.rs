//! A local cluster of `tally start` processes under binary batches, with the leader killed
//! (`kill -9`) mid-run.
//!
//! `--nodes` processes share this machine (their peer links are loopback TCP). `--connections`
//! clients each send binary batches of 8189 transfers, one at a time, to the leader. After
//! `--seconds-before-kill` the leader is killed; a client whose request fails (connection lost,
//! 503 while there is no leader) resends the same batch (the same ids: a batch that did commit
//! answers `exists`, nothing moves twice) to the next surviving node, which redirects it to the
//! new leader. The run goes on for `--seconds-after-kill`.
//!
//! A request's latency is from its first send to its acknowledgement, across resends: what a
//! client sees. `failover_ms` is from the kill to the first acknowledgement from another node
//! (the new leader's first committed write). At the end the surviving nodes must converge on the
//! same applied index and state digest. Prints a table, then one JSON line, last.

use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::Account;
use zerocopy::IntoBytes;

use crate::http;
use crate::http::Client;
use crate::process;
use crate::server;
use crate::stats;

/// How long every node may take to know a leader after start.
const START_TIMEOUT_MS: u64 = 30_000;
/// How long the surviving nodes may take to converge after the run.
const CONVERGE_TIMEOUT_MS: u64 = 60_000;
/// How long a client keeps resending one batch before the run is called failed.
const RESEND_TIMEOUT_MS: u64 = 30_000;
/// Pause before resending after a failure (no leader yet, connection refused).
const RESEND_PAUSE_MS: u64 = 10;
const POLL_MS: u64 = 50;
use crate::server::ACCOUNTS_COUNT;
use crate::server::LEDGER;
const SECRET: &str = "tally-bench cluster secret";
/// Result code of an `ok` event.
const STATUS_OK: u32 = 0;

#[derive(clap::Args)]
pub struct Args {
    /// Cluster size (at least 3: one node is killed and the rest must be a majority).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent connections sending binary batches of 8189 transfers. Two keep the leader's
    /// pipeline full on a 2-core machine (three nodes sharing it); more only queue: 4 gave
    /// about the same throughput with twice the p50 and a p99 over 100 ms.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds of load before the leader is killed.
    #[arg(long, default_value_t = 10)]
    seconds_before_kill: u64,
    /// Seconds of load after the kill.
    #[arg(long, default_value_t = 10)]
    seconds_after_kill: u64,
    /// Passed to every node (`MIN..MAX`); the server's default when absent.
    #[arg(long)]
    election_timeout_ms: Option<String>,
    /// The `tally` binary (default: next to this executable, built if missing).
    #[arg(long)]
    tally: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        args.seconds_before_kill >= 1 && args.seconds_after_kill >= 1,
        "both phases need at least 1 s"
    );
    let tally = match &args.tally {
        Some(path) => path.clone(),
        None => process::locate_tally()?,
    };
    let directory = tempfile::tempdir()?;
    let mut nodes = start_cluster(&tally, directory.path(), &args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(drive(&args, &mut nodes));
    let peak_rss_bytes: Vec<Option<u64>> = nodes.iter().map(Node::peak_rss_bytes).collect();
    for node in &mut nodes {
        node.stop();
    }
    let mut run = outcome?;
    run.peak_rss_bytes = peak_rss_bytes
        .iter()
        .zip(&run.peak_rss_at_kill)
        .map(|(now, at_kill)| now.or(*at_kill))
        .collect();
    report(&args, &run);
    Ok(())
}

/// One `tally start` member; killed on drop.
struct Node {
    id: u64,
    /// `host:port` of its HTTP listener.
    address: String,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(
        tally: &Path,
        directory: &Path,
        id: u64,
        address: String,
        arguments: &[String],
    ) -> anyhow::Result<Node> {
        let log_path = directory.join(format!("node-{id}.log"));
        let log = File::create(&log_path)?;
        let child = Command::new(tally)
            .arg("start")
            .arg("--data-dir")
            .arg(directory.join(format!("node-{id}")))
            .args(arguments)
            .env("RUST_LOG", "warn")
            .env("TALLY_CLUSTER_SECRET", SECRET)
            // Three nodes share the machine: 24M transfers each (about 4 GiB reserved) holds a
            // default 20 s run at up to ~1.1M transfers/s (16M filled up at 838k/s).
            .envs(process::capacity_env(24 << 20))
            .env_remove("TALLY_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", tally.display()))?;
        Ok(Node {
            id,
            address,
            log_path,
            child: Some(child),
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// VmHWM: the process's peak resident set (`None` once it is gone).
    fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kilobytes: u64 = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kilobytes * 1024)
    }

    /// User + system CPU time the process has used (`None` once it is gone).
    fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(&format!("/proc/{}/stat", self.child.as_ref()?.id()))
    }

    fn kill_9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("node already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it lingers.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Linux reports process CPU times in clock ticks of 1/100 s (USER_HZ on every architecture
/// Tally runs on).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime from a `/proc/PID/stat` file, in seconds.
fn process_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // state (3), …, utime (14), stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

/// The whole machine's (busy, total) CPU seconds so far, from `/proc/stat`.
fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((
        (total - idle) / CLOCK_TICKS_PER_SECOND,
        total / CLOCK_TICKS_PER_SECOND,
    ))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts every member and waits until each knows a leader (`/healthz` 200).
fn start_cluster(tally: &Path, directory: &Path, args: &Args) -> anyhow::Result<Vec<Node>> {
    let mut ports = Vec::new();
    for _ in 0..args.nodes {
        ports.push((free_port()?, free_port()?));
    }
    let peers: Vec<String> = ports
        .iter()
        .zip(1u64..)
        .map(|((http, raft), id)| format!("{id}=127.0.0.1:{raft}@127.0.0.1:{http}"))
        .collect();
    let peers = peers.join(",");
    let mut nodes = Vec::new();
    for ((http, _), id) in ports.iter().zip(1u64..) {
        let mut arguments = vec![
            "--node-id".to_owned(),
            id.to_string(),
            "--peers".to_owned(),
            peers.clone(),
        ];
        if let Some(range) = &args.election_timeout_ms {
            arguments.extend(["--election-timeout-ms".to_owned(), range.clone()]);
        }
        let address = format!("127.0.0.1:{http}");
        nodes.push(Node::spawn(tally, directory, id, address, &arguments)?);
    }
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    for node in &mut nodes {
        loop {
            if let Some(status) = node.exited() {
                anyhow::bail!("node {} exited with {status}:\n{}", node.id, node.log());
            }
            if process::healthz(&node.address) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} knows no leader after {START_TIMEOUT_MS} ms:\n{}",
                node.id,
                node.log()
            );
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }
    Ok(nodes)
}

/// `GET /v1/cluster` on `address`, not following redirects (every node answers it).
async fn cluster_view(address: &str) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::new(address, None)?;
    let answer = client
        .get("/v1/cluster")
        .await
        .map_err(|error| anyhow::anyhow!("GET /v1/cluster on {address}: {}", error.kind()))?;
    anyhow::ensure!(answer.status == 200, "GET /v1/cluster: {}", answer.status);
    Ok(serde_json::from_slice(&answer.body)?)
}

/// The leader's index in `nodes`, as `nodes[0]`'s view names it.
async fn leader_index(nodes: &[Node]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    loop {
        for node in nodes.iter().filter(|node| node.child.is_some()) {
            if let Ok(view) = cluster_view(&node.address).await {
                if let Some(leader) = view["leader_id"].as_u64() {
                    if let Some(index) = nodes.iter().position(|node| node.id == leader) {
                        return Ok(index);
                    }
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader known");
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// What the clients share: the addresses to try and the run's clock marks.
struct Shared {
    addresses: Mutex<Vec<String>>,
    killed_address: Mutex<Option<String>>,
    started: Instant,
    /// Microseconds from `started` to the kill, and to the first acknowledgement after it from
    /// another node (0: not yet).
    killed_at_us: AtomicU64,
    first_acknowledged_after_kill_us: AtomicU64,
    next_id: AtomicU64,
}

/// What one client saw.
struct ClientFigures {
    /// Latencies of batches acknowledged before the kill, and of those sent before it and
    /// acknowledged after, and of those sent after.
    before_kill: Histogram<u64>,
    across_kill: Histogram<u64>,
    after_kill: Histogram<u64>,
    batches: u64,
    transfers_ok: u64,
    transfers_exists: u64,
    transfers_failed: u64,
    resends: u64,
    /// Batches in flight at the kill: (sent, acknowledged) in ms relative to the kill.
    across_kill_ms: Vec<(f64, f64)>,
}

struct Run {
    elapsed: Duration,
    kill_offset: Duration,
    failover: Option<Duration>,
    killed_node: u64,
    new_leader: u64,
    clients: Vec<ClientFigures>,
    peak_rss_at_kill: Vec<Option<u64>>,
    peak_rss_bytes: Vec<Option<u64>>,
    converged_index: u64,
    converged_digest: String,
    /// CPU seconds each node used (the killed one: until the kill), this benchmark used, and the
    /// whole machine was busy and had, during the load.
    node_cpu_seconds: Vec<Option<f64>>,
    bench_cpu_seconds: f64,
    machine_busy_seconds: f64,
    machine_seconds: f64,
    /// Each surviving node's own figures of where the time went (from its `/metrics`).
    node_metrics: Vec<(u64, NodeMetrics)>,
}

async fn drive(args: &Args, nodes: &mut [Node]) -> anyhow::Result<Run> {
    let leader = leader_index(nodes).await?;
    create_accounts(&nodes[leader].address).await?;
    let shared = Arc::new(Shared {
        addresses: Mutex::new(nodes.iter().map(|node| node.address.clone()).collect()),
        killed_address: Mutex::new(None),
        started: Instant::now(),
        killed_at_us: AtomicU64::new(0),
        first_acknowledged_after_kill_us: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
    });
    let cpu_at_start: Vec<Option<f64>> = nodes.iter().map(Node::cpu_seconds).collect();
    let bench_cpu_at_start = process_cpu_seconds("/proc/self/stat").unwrap_or(0.0);
    let machine_at_start = machine_cpu_seconds().unwrap_or((0.0, 0.0));
    let end = tokio::time::Instant::now()
        + Duration::from_secs(args.seconds_before_kill + args.seconds_after_kill);
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let shared = Arc::clone(&shared);
        let address = nodes[leader].address.clone();
        tasks.push(tokio::spawn(async move {
            client(connection as u64, address, shared, end).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds_before_kill)).await;
    // The leader may have changed meanwhile (it should not): kill whichever leads now.
    let leader = leader_index(nodes).await?;
    let peak_rss_at_kill: Vec<Option<u64>> = nodes.iter().map(Node::peak_rss_bytes).collect();
    let cpu_at_kill: Vec<Option<f64>> = nodes.iter().map(Node::cpu_seconds).collect();
    let killed = &mut nodes[leader];
    eprintln!(
        "{:.1} s: kill -9 of the leader, node {}",
        shared.started.elapsed().as_secs_f64(),
        killed.id
    );
    *shared.killed_address.lock().unwrap() = Some(killed.address.clone());
    shared
        .addresses
        .lock()
        .unwrap()
        .retain(|address| *address != killed.address);
    shared.killed_at_us.store(
        shared.started.elapsed().as_micros().max(1) as u64,
        Ordering::SeqCst,
    );
    killed.kill_9()?;
    let killed_node = killed.id;
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }
    let elapsed = shared.started.elapsed();
    let machine_at_end = machine_cpu_seconds().unwrap_or((0.0, 0.0));
    let bench_cpu_seconds =
        process_cpu_seconds("/proc/self/stat").unwrap_or(0.0) - bench_cpu_at_start;
    let node_cpu_seconds = nodes
        .iter()
        .zip(cpu_at_start.iter().zip(&cpu_at_kill))
        .map(|(node, (start, at_kill))| Some(node.cpu_seconds().or(*at_kill)? - (*start)?))
        .collect();
    let new_leader = nodes[leader_index(nodes).await?].id;
    let (converged_index, converged_digest) = converged(nodes).await?;
    let mut node_metrics = Vec::new();
    for node in nodes.iter().filter(|node| node.child.is_some()) {
        node_metrics.push((node.id, NodeMetrics::scrape(&node.address).await?));
    }
    let kill_offset = Duration::from_micros(shared.killed_at_us.load(Ordering::SeqCst));
    let first = shared
        .first_acknowledged_after_kill_us
        .load(Ordering::SeqCst);
    let failover = (first > 0).then(|| Duration::from_micros(first) - kill_offset);
    Ok(Run {
        elapsed,
        kill_offset,
        failover,
        killed_node,
        new_leader,
        clients,
        peak_rss_at_kill,
        peak_rss_bytes: Vec::new(),
        converged_index,
        converged_digest,
        node_cpu_seconds,
        bench_cpu_seconds,
        machine_busy_seconds: machine_at_end.0 - machine_at_start.0,
        machine_seconds: machine_at_end.1 - machine_at_start.1,
        node_metrics,
    })
}

async fn create_accounts(address: &str) -> anyhow::Result<()> {
    let mut client = Client::new(address, None)?;
    let ids: Vec<u64> = (1..=ACCOUNTS_COUNT).collect();
    for chunk in ids.chunks(BATCH_EVENTS_MAX) {
        let accounts: Vec<Account> = chunk
            .iter()
            .map(|id| Account {
                id: u128::from(*id),
                ledger: LEDGER,
                code: 1,
                ..Account::default()
            })
            .collect();
        let answer = client
            .post(
                "/v1/accounts",
                http::CONTENT_TYPE_BINARY,
                Bytes::from(accounts.as_bytes().to_vec()),
            )
            .await
            .map_err(|error| anyhow::anyhow!("creating accounts: {}", error.kind()))?;
        anyhow::ensure!(answer.status == 200, "creating accounts: {}", answer.status);
        let results = http::decode_results(&answer.body)?;
        anyhow::ensure!(
            results.iter().all(|result| result.status == STATUS_OK),
            "an account was not created"
        );
    }
    Ok(())
}

fn batch(random: &mut rand_chacha::ChaCha8Rng, first_id: u64) -> Bytes {
    let transfers = server::uniform_transfers(random, first_id, BATCH_EVENTS_MAX);
    Bytes::from(transfers.as_bytes().to_vec())
}

/// Sends batches until `end`, each resent (same ids) until acknowledged.
async fn client(
    connection: u64,
    address: String,
    shared: Arc<Shared>,
    end: tokio::time::Instant,
) -> anyhow::Result<ClientFigures> {
    let mut client = Client::new(&address, None)?;
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(connection);
    let mut figures = ClientFigures {
        before_kill: stats::new_histogram(),
        across_kill: stats::new_histogram(),
        after_kill: stats::new_histogram(),
        batches: 0,
        transfers_ok: 0,
        transfers_exists: 0,
        transfers_failed: 0,
        resends: 0,
        across_kill_ms: Vec::new(),
    };
    let mut next_address = connection as usize;
    while tokio::time::Instant::now() < end {
        let first_id = shared
            .next_id
            .fetch_add(BATCH_EVENTS_MAX as u64, Ordering::Relaxed);
        let body = batch(&mut random, first_id);
        let sent_us = shared.started.elapsed().as_micros() as u64;
        let sent = Instant::now();
        let deadline = sent + Duration::from_millis(RESEND_TIMEOUT_MS);
        let answer = loop {
            match client
                .post("/v1/transfers", http::CONTENT_TYPE_BINARY, body.clone())
                .await
            {
                Ok(answer) if answer.status == 200 => break answer,
                Ok(answer) if answer.status == 503 || answer.status == 504 => {}
                Ok(answer) => anyhow::bail!(
                    "POST /v1/transfers answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
                Err(_) => {
                    // The node is gone or the outcome unknown: the same batch, to the next node.
                    let addresses = shared.addresses.lock().unwrap().clone();
                    next_address += 1;
                    client = Client::new(&addresses[next_address % addresses.len()], None)?;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "a batch was not acknowledged within {RESEND_TIMEOUT_MS} ms of resends"
            );
            figures.resends += 1;
            tokio::time::sleep(Duration::from_millis(RESEND_PAUSE_MS)).await;
        };
        let latency = sent.elapsed();
        let acknowledged_us = shared.started.elapsed().as_micros() as u64;
        let killed_at_us = shared.killed_at_us.load(Ordering::SeqCst);
        let from_killed =
            shared.killed_address.lock().unwrap().as_deref() == Some(client.authority());
        if killed_at_us > 0 && acknowledged_us > killed_at_us && !from_killed {
            let _ = shared.first_acknowledged_after_kill_us.compare_exchange(
                0,
                acknowledged_us,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        let histogram = if killed_at_us == 0 || acknowledged_us < killed_at_us {
            &mut figures.before_kill
        } else if sent_us < killed_at_us {
            let relative_ms = |us: u64| (us as f64 - killed_at_us as f64) / 1000.0;
            figures
                .across_kill_ms
                .push((relative_ms(sent_us), relative_ms(acknowledged_us)));
            &mut figures.across_kill
        } else {
            &mut figures.after_kill
        };
        stats::record(histogram, latency);
        figures.batches += 1;
        for result in http::decode_results(&answer.body)? {
            match result.status {
                STATUS_OK => figures.transfers_ok += 1,
                status if status == exists_code() => figures.transfers_exists += 1,
                _ => figures.transfers_failed += 1,
            }
        }
    }
    Ok(figures)
}

fn exists_code() -> u32 {
    tally_engine::CreateTransferResult::Exists.code()
}

/// Waits until every running node has applied the same index with the same digest.
async fn converged(nodes: &[Node]) -> anyhow::Result<(u64, String)> {
    let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
    loop {
        let mut views = Vec::new();
        for node in nodes.iter().filter(|node| node.child.is_some()) {
            views.push(cluster_view(&node.address).await?);
        }
        let applied: Vec<Option<u64>> = views
            .iter()
            .map(|view| view["applied_index"].as_u64())
            .collect();
        let digests: Vec<&str> = views
            .iter()
            .map(|view| view["ledger"]["digest"].as_str().unwrap_or(""))
            .collect();
        for view in &views {
            anyhow::ensure!(view["divergence"].is_null(), "a node diverged: {view}");
        }
        if applied.windows(2).all(|pair| pair[0] == pair[1])
            && digests.windows(2).all(|pair| pair[0] == pair[1])
        {
            return Ok((applied[0].unwrap_or(0), digests[0].to_owned()));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the surviving nodes did not converge: applied {applied:?}, digests {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// A node's histograms that say where a batch's time goes, and its snapshot count.
struct NodeMetrics {
    histograms: Vec<(&'static str, HistogramFigures)>,
    snapshots_built: f64,
}

/// One Prometheus histogram: how many, their mean, and how many took over 100 ms.
struct HistogramFigures {
    count: f64,
    mean_ms: f64,
    over_100_ms: f64,
}

/// Per batch on every node: the business-logic thread's apply and the group-commit fsync. On the
/// leader: from proposing a batch to its results (replicated, durable, applied).
const TIMED_METRICS: [&str; 3] = [
    "tally_apply_seconds",
    "tally_journal_fsync_seconds",
    "tally_commit_apply_seconds",
];

impl NodeMetrics {
    async fn scrape(address: &str) -> anyhow::Result<NodeMetrics> {
        let mut client = Client::new(address, None)?;
        let answer = client
            .get("/metrics")
            .await
            .map_err(|error| anyhow::anyhow!("GET /metrics on {address}: {}", error.kind()))?;
        anyhow::ensure!(answer.status == 200, "GET /metrics: {}", answer.status);
        let text = String::from_utf8_lossy(&answer.body);
        let value = |series: &str| -> f64 {
            text.lines()
                .filter(|line| line.starts_with(series))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let histograms = TIMED_METRICS
            .iter()
            .map(|name| {
                let count = value(&format!("{name}_count"));
                let sum = value(&format!("{name}_sum"));
                let within_100_ms = value(&format!("{name}_bucket{{le=\"0.1\"}}"));
                let figures = HistogramFigures {
                    count,
                    mean_ms: if count > 0.0 {
                        sum / count * 1000.0
                    } else {
                        0.0
                    },
                    over_100_ms: count - within_100_ms,
                };
                (*name, figures)
            })
            .collect();
        Ok(NodeMetrics {
            histograms,
            snapshots_built: value("tally_snapshots_built_total"),
        })
    }
}

fn merged(histograms: impl Iterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut all = stats::new_histogram();
    for histogram in histograms {
        all.add(&histogram).expect("histograms of the same bounds");
    }
    all
}

fn report(args: &Args, run: &Run) {
    let before = merged(run.clients.iter().map(|client| client.before_kill.clone()));
    let across = merged(run.clients.iter().map(|client| client.across_kill.clone()));
    let after = merged(run.clients.iter().map(|client| client.after_kill.clone()));
    let all = merged([before.clone(), across.clone(), after.clone()].into_iter());
    let sum = |field: fn(&ClientFigures) -> u64| run.clients.iter().map(field).sum::<u64>();
    let transfers_ok = sum(|client| client.transfers_ok);
    let transfers_exists = sum(|client| client.transfers_exists);
    let transfers_failed = sum(|client| client.transfers_failed);
    let batches = sum(|client| client.batches);
    let resends = sum(|client| client.resends);
    // Every acknowledged transfer counts once: `exists` answers a resend of one that had
    // committed before its first answer was lost.
    let acknowledged = transfers_ok + transfers_exists;
    let transfers_per_second = acknowledged as f64 / run.elapsed.as_secs_f64();
    let before_seconds = run.kill_offset.as_secs_f64();
    let after_seconds = (run.elapsed - run.kill_offset).as_secs_f64();
    let before_transfers = before.len() * BATCH_EVENTS_MAX as u64;
    let after_transfers = (across.len() + after.len()) * BATCH_EVENTS_MAX as u64;
    println!(
        "{:<12} {:>8} {:>12} {:>14} {:>9} {:>9} {:>9}",
        "phase", "batches", "transfers", "transfers/s", "p50 ms", "p99 ms", "max ms"
    );
    // Batches acknowledged in each phase; "across_kill" were sent before the kill and
    // acknowledged after it (they waited through the failover).
    for (name, histogram, rate) in [
        (
            "before_kill",
            &before,
            Some(before_transfers as f64 / before_seconds),
        ),
        ("across_kill", &across, None),
        (
            "after_kill",
            &after,
            Some(after_transfers as f64 / after_seconds),
        ),
        ("all", &all, Some(transfers_per_second)),
    ] {
        println!(
            "{:<12} {:>8} {:>12} {:>14} {:>9.3} {:>9.3} {:>9.3}",
            name,
            histogram.len(),
            histogram.len() * BATCH_EVENTS_MAX as u64,
            rate.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.0}")),
            stats::quantile_ms(histogram, 0.5),
            stats::quantile_ms(histogram, 0.99),
            stats::max_ms(histogram),
        );
    }
    let failover_ms = run
        .failover
        .map(|failover| stats::round_ms(failover.as_secs_f64() * 1000.0));
    println!(
        "killed node {} at {:.1} s; node {} led after it; failover {} ms; {resends} resends; \
         converged at index {} (digest {})",
        run.killed_node,
        before_seconds,
        run.new_leader,
        failover_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
        run.converged_index,
        run.converged_digest
    );
    for (index, rss) in run.peak_rss_bytes.iter().enumerate() {
        if let Some(rss) = rss {
            println!(
                "node {} peak RSS: {:.1} MiB",
                index + 1,
                *rss as f64 / (1024.0 * 1024.0)
            );
        }
    }
    let mut across_kill_ms: Vec<(f64, f64)> = run
        .clients
        .iter()
        .flat_map(|client| client.across_kill_ms.iter().copied())
        .collect();
    across_kill_ms.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (sent_ms, acknowledged_ms) in &across_kill_ms {
        println!(
            "batch in flight at the kill: sent {:.0} ms before it, acknowledged {acknowledged_ms:.0} ms after",
            -sent_ms
        );
    }
    let nodes_cpu_seconds: f64 = run.node_cpu_seconds.iter().flatten().sum();
    for (index, seconds) in run.node_cpu_seconds.iter().enumerate() {
        if let Some(seconds) = seconds {
            println!("node {} CPU: {seconds:.1} s", index + 1);
        }
    }
    println!(
        "CPU during the load: machine busy {:.1} of {:.1} s ({:.0}%); tally nodes {:.1} s, this \
         benchmark {:.1} s, other processes {:.1} s; {:.2} µs of node CPU per acknowledged transfer",
        run.machine_busy_seconds,
        run.machine_seconds,
        100.0 * run.machine_busy_seconds / run.machine_seconds.max(f64::MIN_POSITIVE),
        nodes_cpu_seconds,
        run.bench_cpu_seconds,
        run.machine_busy_seconds - nodes_cpu_seconds - run.bench_cpu_seconds,
        nodes_cpu_seconds * 1e6 / (acknowledged.max(1) as f64),
    );
    let mut where_time_goes = serde_json::Map::new();
    for (id, metrics) in &run.node_metrics {
        let mut node = serde_json::Map::new();
        for (name, figures) in &metrics.histograms {
            println!(
                "node {id} {name:<28} {:>8.0} observed, mean {:>8.3} ms, {:>5.0} over 100 ms",
                figures.count, figures.mean_ms, figures.over_100_ms
            );
            node.insert(
                (*name).to_owned(),
                serde_json::json!({
                    "count": figures.count,
                    "mean_ms": stats::round_ms(figures.mean_ms),
                    "over_100_ms": figures.over_100_ms,
                }),
            );
        }
        println!("node {id} snapshots built: {}", metrics.snapshots_built);
        node.insert(
            "snapshots_built".into(),
            serde_json::json!(metrics.snapshots_built),
        );
        where_time_goes.insert(id.to_string(), serde_json::Value::Object(node));
    }
    let figures = serde_json::json!({
        "nodes": args.nodes,
        "connections": args.connections,
        "batch_events": BATCH_EVENTS_MAX,
        "duration_seconds": stats::round_ms(run.elapsed.as_secs_f64()),
        "transfers_per_second": transfers_per_second.round(),
        "p50_ms": stats::quantile_ms(&all, 0.5),
        "p99_ms": stats::quantile_ms(&all, 0.99),
        "max_ms": stats::max_ms(&all),
        "failover_ms": failover_ms,
        "batches": batches,
        "transfers_ok": transfers_ok,
        "transfers_exists": transfers_exists,
        "transfers_failed": transfers_failed,
        "resends": resends,
        "before_kill_transfers_per_second": (before_transfers as f64 / before_seconds).round(),
        "before_kill_p50_ms": stats::quantile_ms(&before, 0.5),
        "before_kill_p99_ms": stats::quantile_ms(&before, 0.99),
        "after_kill_transfers_per_second": (after_transfers as f64 / after_seconds).round(),
        "after_kill_p50_ms": stats::quantile_ms(&after, 0.5),
        "after_kill_p99_ms": stats::quantile_ms(&after, 0.99),
        "across_kill_max_ms": stats::max_ms(&across),
        "killed_node": run.killed_node,
        "new_leader": run.new_leader,
        "converged_index": run.converged_index,
        "peak_rss_bytes": run.peak_rss_bytes,
        "node_metrics": where_time_goes,
        "node_cpu_seconds": run.node_cpu_seconds,
        "bench_cpu_seconds": stats::round_ms(run.bench_cpu_seconds),
        "machine_busy_cpu_seconds": stats::round_ms(run.machine_busy_seconds),
        "machine_cpu_seconds": stats::round_ms(run.machine_seconds),
    });
    println!("{figures}");
}
