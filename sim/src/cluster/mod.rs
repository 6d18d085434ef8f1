//! The seeded cluster simulator: whole Tally clusters (the real openraft, the
//! real engine, the real journal) in one process under turmoil, with a
//! simulated network and disk, faults drawn from the seed, a workload, and an
//! auditor. One seed is one reproducible run: its `trace_hash` covers every
//! reply every client saw, every fault and every replica's final state.

pub mod audit;
pub mod host;
pub mod net;
pub mod plan;
pub mod workload;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tally_journal::fault::CrashModel;
use tally_journal::fault::FaultyStorage;
use tally_journal::fault::SplitMix64;
use tally_journal::Storage;

use audit::Dump;
use host::host_name;
use host::node_info;
use host::HostSetup;
use host::NodeSlot;
use net::Chaos;
use net::ClientReply;
use net::ClientRequest;
use plan::Fault;
use plan::FaultKind;
use plan::Plan;
use workload::ClientSetup;
use workload::Connection;
use workload::History;
use workload::RequestRecord;

/// Which build of the system runs: the real one, or a deliberately broken
/// one that the auditor must catch (the simulator's own tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Correct,
    /// fsync reports success but makes nothing durable.
    NoFsync,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Force the cluster size (1 to 5); otherwise drawn from the seed.
    pub nodes: Option<u64>,
    pub variant: Variant,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: None,
            variant: Variant::Correct,
        }
    }
}

/// How one seed went.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub trace_hash: u128,
    pub ok: bool,
    pub failures: Vec<String>,
    pub faults: BTreeMap<&'static str, u64>,
    pub acknowledged_transfers: u64,
    pub nodes: u64,
    pub simulated: Duration,
    pub wall: Duration,
    pub plan: Plan,
}

/// After the faults stop, how long everything may take to settle.
const SETTLE: Duration = Duration::from_secs(40);
const SIMULATION_MAX: Duration = Duration::from_secs(300);

pub fn run_seed(seed: u64, options: &Options) -> SeedReport {
    let plan = Plan::from_seed(seed, options.nodes);
    let started = Instant::now();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| simulate(&plan, options)));
    let (mut report, panic) = match outcome {
        Ok(report) => (report, None),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            (
                SeedReport {
                    seed,
                    trace_hash: 0,
                    ok: false,
                    failures: Vec::new(),
                    faults: BTreeMap::new(),
                    acknowledged_transfers: 0,
                    nodes: plan.nodes,
                    simulated: Duration::ZERO,
                    wall: Duration::ZERO,
                    plan: plan.clone(),
                },
                Some(message),
            )
        }
    };
    if let Some(message) = panic {
        report.failures.push(format!("panic: {message}"));
        report.ok = false;
    }
    report.wall = started.elapsed();
    report
}

/// Shared between the harness and the admin client.
#[derive(Default)]
struct MembershipState {
    voters: BTreeSet<u64>,
    /// A voter replaced by the spare: the harness stops it for good.
    removed: Option<u64>,
    added: Option<u64>,
}

struct Harness<'a> {
    plan: &'a Plan,
    sim: turmoil::Sim<'a>,
    disks: BTreeMap<u64, FaultyStorage>,
    slots: BTreeMap<u64, Arc<Mutex<NodeSlot>>>,
    chaos: Arc<Mutex<Chaos>>,
    membership: Arc<Mutex<MembershipState>>,
    random: SplitMix64,
    down: BTreeMap<u64, Duration>,
    isolated: BTreeMap<u64, Duration>,
    one_way: Vec<(u64, u64, Duration)>,
    chaos_until: Option<Duration>,
    decommissioned: BTreeSet<u64>,
    bit_flipped: bool,
    counts: BTreeMap<&'static str, u64>,
    fault_log: Vec<u8>,
    admin_started: bool,
}

fn simulate(plan: &Plan, options: &Options) -> SeedReport {
    let seed = plan.seed;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIMULATION_MAX)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .tcp_capacity(1 << 16)
        .enable_random_order()
        .build();
    let history = Arc::new(Mutex::new(History::default()));
    let chaos = Arc::new(Mutex::new(Chaos::new(seed ^ 0xc4a0_5000)));
    let initial_members: BTreeMap<u64, _> = (1..=plan.nodes)
        .map(|node| (node, node_info(node, plan.regions[&node])))
        .collect();
    let mut disks = BTreeMap::new();
    let mut slots = BTreeMap::new();
    for node in plan.all_nodes() {
        let model = if plan.has(FaultKind::TornWrite) {
            CrashModel::Random
        } else {
            CrashModel::DropUnsynced
        };
        let disk = FaultyStorage::with_model(seed ^ node.wrapping_mul(0xd15c), model);
        let slot = Arc::new(Mutex::new(NodeSlot::default()));
        let join = Some(node) == plan.spare;
        let setup = HostSetup {
            seed,
            node_id: node,
            initial_members: if join {
                BTreeMap::new()
            } else {
                initial_members.clone()
            },
            join,
            region: plan.regions[&node].to_string(),
            disk: disk.clone(),
            variant: options.variant,
            chaos: Arc::clone(&chaos),
            slot: Arc::clone(&slot),
            snapshot_every_entries: plan.snapshot_every_entries,
            checkpoint_every_entries: plan.checkpoint_every_entries,
            heartbeat_ms: plan.heartbeat_ms,
            election_timeout_min_ms: plan.election_timeout_min_ms,
        };
        sim.host(host_name(node), move || host::run(setup.clone()));
        disks.insert(node, disk);
        slots.insert(node, slot);
    }
    if plan.has(FaultKind::RegionLatency) {
        for a in plan.all_nodes() {
            for b in plan.all_nodes() {
                if a < b && plan.regions[&a] != plan.regions[&b] {
                    sim.set_link_latency(host_name(a), host_name(b), plan.cross_region_latency);
                }
            }
        }
    }
    let nodes: Vec<u64> = plan.all_nodes().collect();
    for client in 0..plan.clients {
        let setup = ClientSetup {
            client,
            seed,
            nodes: nodes.clone(),
            load_end: plan.load,
            give_up_at: plan.load + SETTLE,
            history: Arc::clone(&history),
        };
        sim.client(format!("client-{client}"), workload::run(setup));
    }
    let membership = Arc::new(Mutex::new(MembershipState {
        voters: (1..=plan.nodes).collect(),
        ..MembershipState::default()
    }));
    let mut harness = Harness {
        plan,
        sim,
        disks,
        slots,
        chaos,
        membership,
        random: SplitMix64::new(seed ^ 0x04a1_2e55),
        down: BTreeMap::new(),
        isolated: BTreeMap::new(),
        one_way: Vec::new(),
        chaos_until: None,
        decommissioned: BTreeSet::new(),
        bit_flipped: false,
        counts: BTreeMap::new(),
        fault_log: Vec::new(),
        admin_started: false,
    };
    if plan.has(FaultKind::RegionLatency) {
        harness.count(FaultKind::RegionLatency);
    }
    let mut failures = Vec::new();

    // Load with faults, then everything healed, until every client is done.
    let mut schedule = plan.schedule.iter().peekable();
    let mut healed = false;
    loop {
        let finished = match harness.sim.step() {
            Ok(finished) => finished,
            Err(error) => {
                failures.push(format!("simulation error: {error}"));
                break;
            }
        };
        let now = harness.sim.elapsed();
        harness.expire(now);
        while let Some((at, fault)) = schedule.peek() {
            if *at > now {
                break;
            }
            harness.inject(fault, now, &nodes, &history);
            schedule.next();
        }
        if !healed && now >= plan.load {
            harness.heal_all(now);
            healed = true;
        }
        harness.decommission_removed();
        if finished && healed {
            break;
        }
    }

    // The audit: liveness after the faults, convergence, then every check.
    let dumps = Arc::new(Mutex::new(Vec::<Dump>::new()));
    let audit_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    if failures.is_empty() {
        let auditor = Auditor {
            seed,
            nodes: nodes.clone(),
            slots: harness.slots.clone(),
            decommissioned: harness.decommissioned.clone(),
            history: Arc::clone(&history),
            dumps: Arc::clone(&dumps),
            failures: Arc::clone(&audit_failures),
        };
        harness.sim.client("auditor", auditor.run());
        loop {
            match harness.sim.step() {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    failures.push(format!("simulation error during the audit: {error}"));
                    break;
                }
            }
        }
    }
    failures.extend(audit_failures.lock().expect("failures").iter().cloned());
    let history = history.lock().expect("history");
    failures.extend(history.violations.iter().cloned());
    let unresolved = history
        .requests
        .iter()
        .filter(|record| record.results.is_none())
        .count();
    if unresolved > 0 {
        failures.push(format!(
            "liveness: {unresolved} requests never got an answer within {SETTLE:?} after the faults stopped"
        ));
    }
    for (node, slot) in &harness.slots {
        if let Some(error) = &slot.lock().expect("slot").start_error {
            if !harness.bit_flipped {
                failures.push(format!("node {node} could not restart: {error}"));
            }
        }
    }
    let dumps = dumps.lock().expect("dumps").clone();
    let mut acknowledged_transfers = 0;
    if failures.is_empty() || !dumps.is_empty() {
        let (audit_failures, acknowledged) =
            audit::audit(&workload::accounts(), &history.requests, &dumps);
        failures.extend(audit_failures);
        acknowledged_transfers = acknowledged;
    }
    let chaos_counts = harness.chaos.lock().expect("chaos").counts;
    for (kind, count) in [
        (FaultKind::MessageLoss, chaos_counts.lost),
        (FaultKind::Duplication, chaos_counts.duplicated),
        (FaultKind::Reordering, chaos_counts.reordered),
    ] {
        if count > 0 {
            *harness.counts.entry(kind.name()).or_default() += count;
        }
    }

    let mut trace = xxhash_rust::xxh3::Xxh3::new();
    trace.update(&history.trace);
    trace.update(&harness.fault_log);
    for dump in &dumps {
        trace.update(&dump.node.to_le_bytes());
        trace.update(&dump.digest.to_le_bytes());
        trace.update(&dump.hash_chain.to_le_bytes());
        trace.update(&dump.applied_index.unwrap_or(0).to_le_bytes());
    }
    let simulated = harness.sim.elapsed();
    trace.update(&(simulated.as_nanos() as u64).to_le_bytes());
    SeedReport {
        seed,
        trace_hash: trace.digest128(),
        ok: failures.is_empty(),
        failures,
        faults: harness.counts.clone(),
        acknowledged_transfers,
        nodes: plan.nodes,
        simulated,
        wall: Duration::ZERO,
        plan: plan.clone(),
    }
}

impl Harness<'_> {
    fn count(&mut self, kind: FaultKind) {
        *self.counts.entry(kind.name()).or_default() += 1;
    }

    fn log(&mut self, now: Duration, what: &str) {
        self.fault_log
            .extend_from_slice(&(now.as_millis() as u64).to_le_bytes());
        self.fault_log.extend_from_slice(what.as_bytes());
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.membership.lock().expect("membership").voters.clone()
    }

    /// Voters that are down or cut off now.
    fn impaired(&self) -> usize {
        let voters = self.voters();
        self.down
            .keys()
            .chain(self.isolated.keys())
            .filter(|node| voters.contains(node))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// How many voters may be impaired at once so a majority stays.
    fn tolerance(&self) -> usize {
        let voters = self.voters().len();
        voters.saturating_sub(1) / 2
    }

    fn inject(
        &mut self,
        fault: &Fault,
        now: Duration,
        nodes: &[u64],
        history: &Arc<Mutex<History>>,
    ) {
        let live = |harness: &Self, node: u64| {
            !harness.down.contains_key(&node) && !harness.decommissioned.contains(&node)
        };
        match *fault {
            Fault::Crash { node, down_for } => {
                // One- and two-node clusters have no tolerance; crash them anyway,
                // one node at a time: they must come back with every acknowledged write.
                let allowed =
                    self.impaired() < self.tolerance().max(1) || !self.voters().contains(&node);
                if live(self, node) && allowed {
                    self.crash(node, now, down_for);
                }
            }
            Fault::Partition { node, heal_after } => {
                if live(self, node)
                    && !self.isolated.contains_key(&node)
                    && self.impaired() < self.tolerance()
                {
                    for other in nodes.iter().copied().filter(|other| *other != node) {
                        self.sim.partition(host_name(node), host_name(other));
                    }
                    self.isolated.insert(node, now + heal_after);
                    self.count(FaultKind::Partition);
                    self.log(now, &format!("partition {node}"));
                }
            }
            Fault::PartitionOneWay {
                from,
                to,
                heal_after,
            } => {
                if self.impaired() < self.tolerance() {
                    self.sim.partition_oneway(host_name(from), host_name(to));
                    self.one_way.push((from, to, now + heal_after));
                    self.count(FaultKind::PartitionOneWay);
                    self.log(now, &format!("one-way {from}->{to}"));
                }
            }
            Fault::Chaos {
                loss,
                duplication,
                reordering,
                lasts,
            } => {
                let mut chaos = self.chaos.lock().expect("chaos");
                chaos.loss = loss;
                chaos.duplication = duplication;
                chaos.reordering = reordering;
                drop(chaos);
                self.chaos_until = Some(now + lasts);
                self.log(now, &format!("chaos {loss} {duplication} {reordering}"));
            }
            Fault::ReplaceVoter { remove } => {
                let Some(spare) = self.plan.spare else {
                    return;
                };
                if self.admin_started {
                    return;
                }
                self.admin_started = true;
                self.count(FaultKind::MembershipChange);
                self.log(now, &format!("replace {remove} by {spare}"));
                let admin = Admin {
                    setup: ClientSetup {
                        client: 90,
                        seed: self.plan.seed,
                        nodes: nodes.to_vec(),
                        load_end: self.plan.load,
                        give_up_at: self.plan.load + SETTLE,
                        history: Arc::clone(history),
                    },
                    spare,
                    spare_info: node_info(spare, self.plan.regions[&spare]),
                    remove,
                    membership: Arc::clone(&self.membership),
                };
                self.sim.client("admin", admin.run());
            }
        }
    }

    /// Stops `node`'s host. tokio tears the host's runtime down task by task in an order set by
    /// the process-wide task-id counter (a current-thread runtime's task list is sharded by task
    /// id), and every socket closed on the way sends a FIN or RST that draws its latency from the
    /// simulation's RNG. With the node's outgoing links cut for the teardown those goodbyes are
    /// lost, as in a power cut, and draw nothing: the trace no longer depends on which task ids
    /// other simulations in the process took.
    fn crash_host(&mut self, node: u64) {
        let mut others: Vec<(String, bool)> = self
            .plan
            .all_nodes()
            .filter(|other| *other != node)
            .map(|other| {
                // Links a fault has cut stay cut: either end isolated, or a one-way cut.
                let cut = self.isolated.contains_key(&node)
                    || self.isolated.contains_key(&other)
                    || self
                        .one_way
                        .iter()
                        .any(|(from, to, _)| *from == node && *to == other);
                (host_name(other), cut)
            })
            .collect();
        others.extend((0..self.plan.clients).map(|client| (format!("client-{client}"), false)));
        if self.admin_started {
            others.push(("admin".to_string(), false));
        }
        for (other, _) in &others {
            self.sim.partition_oneway(host_name(node), other.as_str());
        }
        self.sim.crash(host_name(node));
        for (other, cut) in &others {
            if !cut {
                self.sim.repair_oneway(host_name(node), other.as_str());
            }
        }
    }

    fn crash(&mut self, node: u64, now: Duration, down_for: Duration) {
        self.crash_host(node);
        self.slots[&node].lock().expect("slot").node = None;
        self.down.insert(node, now + down_for);
        self.count(FaultKind::Crash);
        if self.plan.has(FaultKind::TornWrite) {
            self.count(FaultKind::TornWrite);
        }
        self.log(now, &format!("crash {node}"));
    }

    fn restart(&mut self, node: u64, now: Duration) {
        let disk = &self.disks[&node];
        disk.reboot();
        // At most one bit flip per run, on a cluster that can lose the node.
        if self.plan.has(FaultKind::BitFlip)
            && !self.bit_flipped
            && self.plan.nodes >= 3
            && self.random.chance(1, 2)
        {
            let dir = Path::new("/tally/log");
            let mut files = disk.list(dir).unwrap_or_default();
            files.sort();
            if !files.is_empty() {
                let file = dir.join(&files[self.random.below(files.len() as u64) as usize]);
                let length = disk.durable_contents(&file).map_or(0, |bytes| bytes.len());
                if length > 0 {
                    let offset = self.random.below(length as u64);
                    let bit = self.random.below(8) as u8;
                    disk.flip_bit(&file, offset, bit);
                    self.bit_flipped = true;
                    self.count(FaultKind::BitFlip);
                    self.log(now, &format!("bitflip {node} {} {offset}", file.display()));
                }
            }
        }
        self.sim.bounce(host_name(node));
        self.log(now, &format!("restart {node}"));
    }

    /// Ends the faults whose time is up.
    fn expire(&mut self, now: Duration) {
        let due: Vec<u64> = self
            .down
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(node, _)| *node)
            .collect();
        for node in due {
            self.down.remove(&node);
            if !self.decommissioned.contains(&node) {
                self.restart(node, now);
            }
        }
        let healed: Vec<u64> = self
            .isolated
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(node, _)| *node)
            .collect();
        for node in healed {
            self.isolated.remove(&node);
            for other in self.plan.all_nodes().filter(|other| *other != node) {
                self.sim.repair(host_name(node), host_name(other));
            }
            self.log(now, &format!("heal {node}"));
        }
        let (due, kept): (Vec<_>, Vec<_>) =
            self.one_way.iter().partition(|(_, _, until)| *until <= now);
        for (from, to, _) in due {
            self.sim.repair_oneway(host_name(from), host_name(to));
            self.log(now, &format!("heal one-way {from}->{to}"));
        }
        self.one_way = kept;
        if self.chaos_until.is_some_and(|until| until <= now) {
            self.chaos_until = None;
            let mut chaos = self.chaos.lock().expect("chaos");
            chaos.loss = 0;
            chaos.duplication = 0;
            chaos.reordering = 0;
        }
    }

    fn heal_all(&mut self, now: Duration) {
        for until in self.down.values_mut() {
            *until = now;
        }
        for until in self.isolated.values_mut() {
            *until = now;
        }
        for (_, _, until) in &mut self.one_way {
            *until = now;
        }
        if self.chaos_until.is_some() {
            self.chaos_until = Some(now);
        }
        self.expire(now);
        self.log(now, "healed");
    }

    /// A voter replaced by the spare is stopped for good, as an operator would.
    fn decommission_removed(&mut self) {
        let removed = self.membership.lock().expect("membership").removed;
        if let Some(node) = removed {
            if self.decommissioned.insert(node) {
                self.crash_host(node);
                self.slots[&node].lock().expect("slot").node = None;
                self.down.remove(&node);
            }
        }
    }
}

/// Replaces a voter by the spare node while the load runs.
struct Admin {
    setup: ClientSetup,
    spare: u64,
    spare_info: tally_raft::types::NodeInfo,
    remove: u64,
    membership: Arc<Mutex<MembershipState>>,
}

impl Admin {
    async fn run(self) -> turmoil::Result {
        let mut connection = Connection::new(self.setup.clone(), 0xad);
        let add = ClientRequest::AddLearner {
            node_id: self.spare,
            info: self.spare_info.clone(),
        };
        if !matches!(connection.call(&add).await.0, Some(ClientReply::Done)) {
            return Ok(());
        }
        let mut voters = self.membership.lock().expect("membership").voters.clone();
        voters.remove(&self.remove);
        voters.insert(self.spare);
        let change = ClientRequest::ChangeVoters {
            voters: voters.iter().copied().collect(),
        };
        if matches!(connection.call(&change).await.0, Some(ClientReply::Done)) {
            let mut membership = self.membership.lock().expect("membership");
            membership.voters = voters;
            membership.removed = Some(self.remove);
            membership.added = Some(self.spare);
        }
        Ok(())
    }
}

/// Runs after the load: a probe write (liveness), waits for the replicas to
/// converge, then takes what each replica holds.
struct Auditor {
    seed: u64,
    nodes: Vec<u64>,
    slots: BTreeMap<u64, Arc<Mutex<NodeSlot>>>,
    decommissioned: BTreeSet<u64>,
    history: Arc<Mutex<History>>,
    dumps: Arc<Mutex<Vec<Dump>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Auditor {
    fn fail(&self, message: String) {
        self.failures.lock().expect("failures").push(message);
    }

    async fn run(self) -> turmoil::Result {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let setup = ClientSetup {
            client: 99,
            seed: self.seed,
            nodes: self.nodes.clone(),
            load_end: now,
            give_up_at: now + Duration::from_secs(20),
            history: Arc::clone(&self.history),
        };
        let probe = tally_engine::Transfer {
            id: 1 << 100,
            debit_account_id: workload::account_id(1, 0),
            credit_account_id: workload::account_id(1, 2),
            amount: 1,
            ledger: 1,
            code: 1,
            ..tally_engine::Transfer::default()
        };
        let request = ClientRequest::Submit {
            operation: tally_engine::Operation::CreateTransfers as u8,
            events: zerocopy::IntoBytes::as_bytes(&[probe][..]).to_vec(),
        };
        let mut connection = Connection::new(setup, 0xa0d17);
        let (reply, attempts) = connection.call(&request).await;
        let results = match reply {
            Some(ClientReply::Results(bytes)) => Some(workload::parse_results(&bytes)),
            _ => None,
        };
        match &results {
            Some(results) if results.first().is_some_and(|result| result.status == 0) => {}
            other => {
                let statuses: Vec<String> = self
                    .slots
                    .iter()
                    .map(|(node, slot)| match &slot.lock().expect("slot").node {
                        Some(running) => {
                            let status = running.status();
                            let metrics = { use openraft::type_config::async_runtime::WatchReceiver; running.raft().metrics().borrow_watched().clone() };
                            format!(
                                "node {node}: {} term {} leader {:?} voters {:?} applied {:?} last quorum ack {:?}, heartbeats {:?}, membership {:?}",
                                status.state, status.term, status.leader_id, status.voters, status.applied_index,
                                metrics.last_quorum_acked, metrics.heartbeat, metrics.membership_config
                            )
                        }
                        None => format!("node {node}: down"),
                    })
                    .collect();
                self.fail(format!(
                    "liveness: the probe write after the faults stopped was answered {other:?} after {attempts} attempts; last: {}; {}",
                    connection.last_error,
                    statuses.join("; ")
                ))
            }
        }
        self.history
            .lock()
            .expect("history")
            .requests
            .push(RequestRecord {
                client: 99,
                events: vec![probe],
                results,
                attempts,
            });

        // Convergence: every live member applied the same index, the leader's commit.
        let deadline = turmoil::sim_elapsed().unwrap_or_default() + Duration::from_secs(30);
        let live = loop {
            let mut statuses = Vec::new();
            for (node, slot) in &self.slots {
                if self.decommissioned.contains(node) {
                    continue;
                }
                let slot = slot.lock().expect("slot");
                if let Some(running) = &slot.node {
                    statuses.push((*node, running.clone(), running.status()));
                }
            }
            let leader = statuses
                .iter()
                .find(|(node, _, status)| status.leader_id == Some(*node))
                .map(|(_, _, status)| status.clone());
            if let Some(leader) = leader {
                let members: BTreeSet<u64> = leader.members.keys().copied().collect();
                let live: Vec<_> = statuses
                    .iter()
                    .filter(|(node, _, _)| members.contains(node))
                    .cloned()
                    .collect();
                let converged = live.iter().all(|(_, _, status)| {
                    status.applied_index.is_some() && status.applied_index == leader.committed_index
                });
                if converged {
                    break live;
                }
            }
            if turmoil::sim_elapsed().unwrap_or_default() > deadline {
                let summary: Vec<String> = statuses
                    .iter()
                    .map(|(node, _, status)| {
                        format!(
                            "node {node}: {} leader {:?} applied {:?} committed {:?}",
                            status.state,
                            status.leader_id,
                            status.applied_index,
                            status.committed_index
                        )
                    })
                    .collect();
                self.fail(format!(
                    "replicas did not converge within 30 s: {}",
                    summary.join("; ")
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let account_ids: Vec<u128> = workload::accounts()
            .iter()
            .map(|account| account.id)
            .collect();
        let transfer_ids: Vec<u128> = self
            .history
            .lock()
            .expect("history")
            .requests
            .iter()
            .flat_map(|record| record.events.iter().map(|event| event.id))
            .collect::<BTreeSet<u128>>()
            .into_iter()
            .collect();
        for (node, running, _) in live {
            let (accounts_ids, transfers_ids) = (account_ids.clone(), transfer_ids.clone());
            let read = running
                .read_local(move |ledger| {
                    (
                        ledger.lookup_accounts(&accounts_ids),
                        transfers_ids
                            .chunks(tally_engine::limits::LOOKUP_IDS_MAX)
                            .flat_map(|ids| ledger.lookup_transfers(ids))
                            .collect::<Vec<_>>(),
                        ledger.digest(),
                        ledger.hash_chain(),
                        ledger.transfers_count(),
                    )
                })
                .await;
            let status = running.status();
            match read {
                Ok((accounts, transfers, digest, hash_chain, transfers_count)) => {
                    self.dumps.lock().expect("dumps").push(Dump {
                        node,
                        applied_index: status.applied_index,
                        digest,
                        hash_chain,
                        accounts,
                        transfers,
                        transfers_count,
                    });
                }
                Err(error) => self.fail(format!("node {node}: cannot be read: {error}")),
            }
        }
        Ok(())
    }
}
