//! What one seed runs: the cluster's shape, the workload's size and the fault
//! schedule, all drawn from the seed before anything starts. The plan is
//! printed with a failing seed so a person can read what happened.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tally_journal::fault::SplitMix64;

/// The fault classes the simulator injects. Every class is enabled on some
/// seeds; the CI seeds are chosen so that together they cover all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A node's process dies (`kill -9`); unsynced disk writes are lost,
    /// kept or torn per the simulated disk's crash model; it restarts later.
    Crash,
    /// A node is cut off from every other node, both ways.
    Partition,
    /// Messages from one node to another are dropped; the reverse direction works.
    PartitionOneWay,
    /// Peer connections die mid-call: a request never arrives, or its reply is lost.
    MessageLoss,
    /// A request is delivered twice.
    Duplication,
    /// An old request is delivered again after newer ones (reordering).
    Reordering,
    /// Nodes sit in regions with slow links between them.
    RegionLatency,
    /// The last write before a crash is cut short on the simulated disk.
    TornWrite,
    /// A bit of a crashed node's durable log flips before it restarts.
    BitFlip,
    /// A spare node joins as a learner, is promoted, and a voter is removed,
    /// while the load runs.
    MembershipChange,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Crash,
        FaultKind::Partition,
        FaultKind::PartitionOneWay,
        FaultKind::MessageLoss,
        FaultKind::Duplication,
        FaultKind::Reordering,
        FaultKind::RegionLatency,
        FaultKind::TornWrite,
        FaultKind::BitFlip,
        FaultKind::MembershipChange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Partition => "partition",
            FaultKind::PartitionOneWay => "partition_one_way",
            FaultKind::MessageLoss => "message_loss",
            FaultKind::Duplication => "duplication",
            FaultKind::Reordering => "reordering",
            FaultKind::RegionLatency => "region_latency",
            FaultKind::TornWrite => "torn_write",
            FaultKind::BitFlip => "bit_flip",
            FaultKind::MembershipChange => "membership_change",
        }
    }
}

/// One scheduled fault. Node numbers are Raft node ids (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Crash {
        node: u64,
        down_for: Duration,
    },
    Partition {
        node: u64,
        heal_after: Duration,
    },
    PartitionOneWay {
        from: u64,
        to: u64,
        heal_after: Duration,
    },
    /// Peer-connection chaos for a while: per-mille rates of each kind.
    Chaos {
        loss: u32,
        duplication: u32,
        reordering: u32,
        lasts: Duration,
    },
    /// Add the spare node as a learner, promote it and remove `remove`.
    ReplaceVoter {
        remove: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    /// Voters at the start: nodes `1..=nodes`.
    pub nodes: u64,
    /// A spare node `nodes + 1`, started empty with `join`, used by
    /// `ReplaceVoter`. `None` when membership changes are off this seed.
    pub spare: Option<u64>,
    pub regions: BTreeMap<u64, &'static str>,
    pub cross_region_latency: Duration,
    /// Raft timing: openraft bounds every heartbeat by the heartbeat
    /// interval, so across regions it must exceed the round trip (with the
    /// 50 ms default and a 2 × 60 ms round trip no heartbeat ever lands and
    /// the leader's lease lapses as soon as writes pause).
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub enabled: Vec<FaultKind>,
    pub clients: u64,
    pub load: Duration,
    pub snapshot_every_entries: u64,
    pub checkpoint_every_entries: u64,
    pub schedule: Vec<(Duration, Fault)>,
}

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

impl Plan {
    pub fn from_seed(seed: u64, nodes_override: Option<u64>) -> Plan {
        let mut random = SplitMix64::new(seed ^ 0x7a11_7a11_7a11_7a11);
        let nodes = nodes_override.unwrap_or(match random.below(10) {
            0 => 1,
            1 => 2,
            2..=6 => 3,
            7 | 8 => 4,
            _ => 5,
        });
        assert!((1..=5).contains(&nodes), "1 to 5 nodes");
        let mut enabled: Vec<FaultKind> = FaultKind::ALL
            .iter()
            .copied()
            .filter(|_| random.chance(1, 2))
            .collect();
        if nodes < 3 {
            // A one- or two-node cluster has no majority left after losing a
            // node: only faults it can live through, plus crashes.
            enabled.retain(|kind| {
                matches!(
                    kind,
                    FaultKind::Crash
                        | FaultKind::TornWrite
                        | FaultKind::MessageLoss
                        | FaultKind::Duplication
                        | FaultKind::Reordering
                        | FaultKind::RegionLatency
                )
            });
        }
        if enabled.contains(&FaultKind::TornWrite) && !enabled.contains(&FaultKind::Crash) {
            enabled.push(FaultKind::Crash);
        }
        if enabled.contains(&FaultKind::BitFlip) && !enabled.contains(&FaultKind::Crash) {
            enabled.push(FaultKind::Crash);
        }
        enabled.sort();
        let spare = enabled
            .contains(&FaultKind::MembershipChange)
            .then_some(nodes + 1);
        let regions = (1..=nodes + u64::from(spare.is_some()))
            .map(|node| {
                let region = if enabled.contains(&FaultKind::RegionLatency) {
                    REGIONS[random.below(REGIONS.len() as u64) as usize]
                } else {
                    REGIONS[0]
                };
                (node, region)
            })
            .collect();
        let cross_region_latency = Duration::from_millis(20 + random.below(60));
        let heartbeat_ms = if enabled.contains(&FaultKind::RegionLatency) {
            // Round trip plus the simulated jitter, with room to spare.
            (3 * (2 * cross_region_latency.as_millis() as u64 + 6)).max(50)
        } else {
            50
        };
        let election_timeout_min_ms = 6 * heartbeat_ms;
        let load = Duration::from_millis(8_000 + random.below(8_000));
        let clients = 1 + random.below(3);
        let snapshot_every_entries = 20 + random.below(200);
        let checkpoint_every_entries = 4 + random.below(28);

        let mut schedule = Vec::new();
        let at_fault = |kind: &FaultKind| enabled.contains(kind);
        let mut at = Duration::from_millis(500 + random.below(1_000));
        let mut replaced = false;
        while at < load {
            let kinds: Vec<FaultKind> = enabled
                .iter()
                .copied()
                .filter(|kind| {
                    !matches!(
                        kind,
                        FaultKind::RegionLatency | FaultKind::TornWrite | FaultKind::BitFlip
                    )
                })
                .filter(|kind| *kind != FaultKind::MembershipChange || !replaced)
                .collect();
            if kinds.is_empty() {
                break;
            }
            let kind = kinds[random.below(kinds.len() as u64) as usize];
            let node = 1 + random.below(nodes);
            let lasting = Duration::from_millis(300 + random.below(2_500));
            let fault = match kind {
                FaultKind::Crash => Fault::Crash {
                    node,
                    down_for: lasting,
                },
                FaultKind::Partition => Fault::Partition {
                    node,
                    heal_after: lasting,
                },
                FaultKind::PartitionOneWay => {
                    let to = 1 + (node + random.below(nodes - 1)) % nodes;
                    Fault::PartitionOneWay {
                        from: node,
                        to,
                        heal_after: lasting,
                    }
                }
                FaultKind::MessageLoss | FaultKind::Duplication | FaultKind::Reordering => {
                    let rate = |on: bool, random: &mut SplitMix64| {
                        if on {
                            10 + random.below(90) as u32
                        } else {
                            0
                        }
                    };
                    Fault::Chaos {
                        loss: rate(at_fault(&FaultKind::MessageLoss), &mut random),
                        duplication: rate(at_fault(&FaultKind::Duplication), &mut random),
                        reordering: rate(at_fault(&FaultKind::Reordering), &mut random),
                        lasts: lasting,
                    }
                }
                FaultKind::MembershipChange => {
                    replaced = true;
                    Fault::ReplaceVoter { remove: node }
                }
                FaultKind::RegionLatency | FaultKind::TornWrite | FaultKind::BitFlip => {
                    unreachable!("filtered above")
                }
            };
            schedule.push((at, fault));
            at += Duration::from_millis(400 + random.below(2_000));
        }
        Plan {
            seed,
            nodes,
            spare,
            regions,
            cross_region_latency,
            heartbeat_ms,
            election_timeout_min_ms,
            enabled,
            clients,
            load,
            snapshot_every_entries,
            checkpoint_every_entries,
            schedule,
        }
    }

    pub fn all_nodes(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.nodes).chain(self.spare)
    }

    pub fn has(&self, kind: FaultKind) -> bool {
        self.enabled.contains(&kind)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan: {} voters{}, {} clients, load {:?}, snapshot every {} entries, checkpoint every {}, heartbeat {} ms, election timeout {}..{} ms",
            self.nodes,
            match self.spare {
                Some(spare) => format!(" + spare node {spare}"),
                None => String::new(),
            },
            self.clients,
            self.load,
            self.snapshot_every_entries,
            self.checkpoint_every_entries,
            self.heartbeat_ms,
            self.election_timeout_min_ms,
            2 * self.election_timeout_min_ms
        )?;
        let names: Vec<&str> = self.enabled.iter().map(|kind| kind.name()).collect();
        writeln!(f, "fault classes: {}", names.join(", "))?;
        if self.has(FaultKind::RegionLatency) {
            writeln!(
                f,
                "regions: {:?}, cross-region latency {:?}",
                self.regions, self.cross_region_latency
            )?;
        }
        writeln!(f, "schedule:")?;
        for (at, fault) in &self.schedule {
            writeln!(f, "  at {at:>10?}: {fault:?}")?;
        }
        Ok(())
    }
}
