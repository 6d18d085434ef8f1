//! How `tally start` becomes one member of a cluster: the peer list syntax, the timing flags and
//! the checks that refuse a configuration before anything starts.
//!
//! `--peers 1=10.0.0.1:7001@10.0.0.1:3001@eu,2=…` lists every voting member of a new cluster,
//! this node included: `id=raft_addr@http_addr[@region]`. The addresses are the ones the *other*
//! nodes and the clients use (advertised addresses); `--raft` and `--http` say where this node
//! listens and default to its own entry. Every node must be given the same list: it becomes the
//! first membership entry of the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tally_raft::types::NodeId;
use tally_raft::types::NodeInfo;

/// The region of a member whose entry names none.
pub const DEFAULT_REGION: &str = "default";

/// Defaults that give a failover well under 2 s: a follower that hears nothing for 300..600 ms
/// starts an election; the leader sends a heartbeat every 50 ms. openraft's followers refuse to
/// vote while their leader lease (the election timeout maximum since the last heartbeat) runs, so
/// the first candidate usually loses and an election takes about 1.5–2 × the maximum: measured
/// with 3 local processes, 500..1000 gave 1.6–2.7 s, 300..600 gives 0.9–1.2 s.
pub const HEARTBEAT_MS_DEFAULT: u64 = 50;
pub const ELECTION_TIMEOUT_MS_DEFAULT: &str = "300..600";

/// The cluster side of `tally start`.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_id: NodeId,
    /// Where to accept peer connections (`None`: no peers).
    pub raft_listen: Option<SocketAddr>,
    /// The static initial membership (`--peers`), this node included; empty for a single node.
    pub peers: BTreeMap<NodeId, NodeInfo>,
    pub cluster_secret: Option<String>,
    /// Fresh data directory: wait to be added by the leader instead of initialising a cluster.
    pub join: bool,
    pub region: Option<String>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    pub checkpoint_every: u64,
    /// `--snapshot-every`: every N entries, or 0 for the adaptive policy.
    pub snapshot_every: u64,
    /// `--accounts-max` / `--transfers-max`: the ledger's size, reserved at start-up.
    pub ledger_capacity: Option<tally_raft::node::LedgerCapacity>,
}

impl Default for NodeSettings {
    fn default() -> NodeSettings {
        NodeSettings {
            node_id: 1,
            raft_listen: None,
            peers: BTreeMap::new(),
            cluster_secret: None,
            join: false,
            region: None,
            heartbeat_ms: HEARTBEAT_MS_DEFAULT,
            election_timeout_ms: (300, 600),
            checkpoint_every: tally_raft::limits::CHECKPOINT_EVERY_ENTRIES_DEFAULT,
            snapshot_every: tally_raft::limits::SNAPSHOT_EVERY_ENTRIES_DEFAULT,
            ledger_capacity: None,
        }
    }
}

impl NodeSettings {
    /// More than a lone node: it talks to peers (and so needs the cluster secret).
    pub fn clustered(&self) -> bool {
        self.raft_listen.is_some() || !self.peers.is_empty() || self.join
    }

    /// This node's region: its `--peers` entry's, else `--region`, else [`DEFAULT_REGION`].
    pub fn own_region(&self) -> String {
        match self.peers.get(&self.node_id) {
            Some(info) => info.region.clone(),
            None => self
                .region
                .clone()
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        }
    }

    /// Refuses configurations that cannot work or would run a cluster without authentication.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.node_id >= 1, "--node-id must be at least 1");
        let (min, max) = self.election_timeout_ms;
        anyhow::ensure!(
            self.heartbeat_ms >= 1 && self.heartbeat_ms < min && min < max,
            "timing: need 0 < --heartbeat-ms ({}) < election timeout minimum ({min}) < maximum ({max})",
            self.heartbeat_ms
        );
        anyhow::ensure!(
            self.checkpoint_every >= 1,
            "--checkpoint-every must be at least 1"
        );
        if !self.clustered() {
            return Ok(());
        }
        match &self.cluster_secret {
            None => anyhow::bail!(
                "a cluster needs a shared secret: set --cluster-secret or TALLY_CLUSTER_SECRET \
                 (the same value on every node; peers without it are refused)"
            ),
            Some(secret) if secret.is_empty() => {
                anyhow::bail!("--cluster-secret / TALLY_CLUSTER_SECRET is set but empty")
            }
            Some(_) => {}
        }
        if self.join {
            anyhow::ensure!(
                self.peers.is_empty(),
                "--join waits to be added to an existing cluster: give --raft, not --peers"
            );
            anyhow::ensure!(
                self.raft_listen.is_some(),
                "--join needs --raft ADDR: where the leader reaches this node"
            );
            return Ok(());
        }
        if !self.peers.is_empty() {
            let Some(own) = self.peers.get(&self.node_id) else {
                anyhow::bail!(
                    "--peers must list this node too (--node-id {}); it lists {:?}",
                    self.node_id,
                    self.peers.keys().collect::<Vec<_>>()
                );
            };
            if let Some(region) = &self.region {
                anyhow::ensure!(
                    *region == own.region,
                    "--region {region} differs from this node's --peers entry ({}): every node must be \
                     given the same membership, so put the region in --peers (id=raft@http@{region})",
                    own.region
                );
            }
        }
        anyhow::ensure!(
            self.raft_listen.is_some(),
            "a cluster member needs --raft ADDR (the peer listener)"
        );
        Ok(())
    }
}

/// Parses `id=raft_addr@http_addr[@region],…`. HTTP addresses get an `http://` scheme if they
/// have none.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, NodeInfo>, String> {
    let mut peers = BTreeMap::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let syntax = "expected id=raft_host:port@http_host:port[@region]";
        let (id, addresses) = entry
            .split_once('=')
            .ok_or_else(|| format!("peer \"{entry}\": {syntax}"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer \"{entry}\": the id must be a positive integer"))?;
        if id == 0 {
            return Err(format!("peer \"{entry}\": the id must be at least 1"));
        }
        let parts: Vec<&str> = addresses.split('@').map(str::trim).collect();
        let (raft_addr, http_addr, region) = match parts.as_slice() {
            [raft, http] => (*raft, *http, DEFAULT_REGION),
            [raft, http, region] if !region.is_empty() => (*raft, *http, *region),
            _ => return Err(format!("peer \"{entry}\": {syntax}")),
        };
        check_host_port(raft_addr)
            .map_err(|problem| format!("peer {id}: raft address {problem}"))?;
        let http_addr = http_url(http_addr)?;
        let info = NodeInfo {
            raft_addr: raft_addr.to_owned(),
            http_addr,
            region: region.to_owned(),
        };
        if peers.insert(id, info).is_some() {
            return Err(format!("peer {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("the peer list is empty".to_owned());
    }
    let mut raft_addrs: Vec<&str> = peers.values().map(|info| info.raft_addr.as_str()).collect();
    raft_addrs.sort_unstable();
    if let Some(pair) = raft_addrs.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("two peers share the raft address {}", pair[0]));
    }
    Ok(peers)
}

/// `host:port` with a numeric port.
fn check_host_port(text: &str) -> Result<(), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{text}\" must be host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("\"{text}\" must be host:port"));
    }
    Ok(())
}

/// `host:port` or `http://host:port` → `http://host:port`.
pub fn http_url(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let bare = text.strip_prefix("http://").unwrap_or(text);
    if bare.contains("://") {
        return Err(format!(
            "HTTP address \"{text}\": only http:// (the server has no TLS)"
        ));
    }
    check_host_port(bare).map_err(|problem| format!("HTTP address {problem}"))?;
    Ok(format!("http://{bare}"))
}

/// `MIN..MAX` in milliseconds.
pub fn parse_range_ms(text: &str) -> Result<(u64, u64), String> {
    let (min, max) = text
        .split_once("..")
        .ok_or_else(|| format!("\"{text}\": expected MIN..MAX in milliseconds, e.g. 500..1000"))?;
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|_| format!("\"{text}\": expected MIN..MAX in milliseconds, e.g. 500..1000"))
    };
    let (min, max) = (number(min)?, number(max)?);
    if min == 0 || min >= max {
        return Err(format!("\"{text}\": need 0 < MIN < MAX"));
    }
    Ok((min, max))
}

/// The base URL a client is redirected to for a member, if its HTTP address is known.
pub fn leader_base(info: &NodeInfo) -> Option<String> {
    if info.http_addr.is_empty() {
        return None;
    }
    http_url(&info.http_addr).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_parse() {
        let peers = parse_peers(
            "1=127.0.0.1:7001@127.0.0.1:3001, 2=10.0.0.2:7001@http://10.0.0.2:3001/@eu-west",
        )
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[&1],
            NodeInfo {
                raft_addr: "127.0.0.1:7001".into(),
                http_addr: "http://127.0.0.1:3001".into(),
                region: "default".into()
            }
        );
        assert_eq!(peers[&2].http_addr, "http://10.0.0.2:3001");
        assert_eq!(peers[&2].region, "eu-west");
        assert_eq!(
            parse_peers("3=node-c.internal:7001@node-c.internal:3000").unwrap()[&3].raft_addr,
            "node-c.internal:7001"
        );
    }

    #[test]
    fn bad_peer_lists_say_why() {
        let cases = [
            ("", "empty"),
            ("1=127.0.0.1:7001", "expected id="),
            ("x=127.0.0.1:7001@127.0.0.1:3001", "positive integer"),
            ("0=127.0.0.1:7001@127.0.0.1:3001", "at least 1"),
            ("1=127.0.0.1@127.0.0.1:3001", "host:port"),
            ("1=127.0.0.1:7001@https://a:1", "only http://"),
            ("1=a:1@a:2,1=b:1@b:2", "listed twice"),
            ("1=a:1@a:2,2=a:1@b:2", "share the raft address"),
            ("1=a:1@a:2@", "expected id="),
        ];
        for (text, message) in cases {
            let error = parse_peers(text).unwrap_err();
            assert!(error.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn defaults_agree() {
        let defaults = NodeSettings::default();
        assert_eq!(
            parse_range_ms(ELECTION_TIMEOUT_MS_DEFAULT),
            Ok(defaults.election_timeout_ms)
        );
        assert_eq!(defaults.heartbeat_ms, HEARTBEAT_MS_DEFAULT);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range_ms("500..1000"), Ok((500, 1000)));
        assert!(parse_range_ms("1000..500").is_err());
        assert!(parse_range_ms("500").is_err());
        assert!(parse_range_ms("0..5").is_err());
    }

    #[test]
    fn clusters_need_a_secret_and_this_node_in_the_list() {
        let peers =
            parse_peers("1=127.0.0.1:7001@127.0.0.1:3001,2=127.0.0.1:7002@127.0.0.1:3002").unwrap();
        let clustered = NodeSettings {
            peers: peers.clone(),
            raft_listen: Some("127.0.0.1:7001".parse().unwrap()),
            ..NodeSettings::default()
        };
        let error = clustered.check().unwrap_err().to_string();
        assert!(error.contains("TALLY_CLUSTER_SECRET"), "{error}");
        let with_secret = NodeSettings {
            cluster_secret: Some("s".into()),
            ..clustered.clone()
        };
        assert!(with_secret.check().is_ok());
        let not_listed = NodeSettings {
            node_id: 3,
            ..with_secret.clone()
        };
        assert!(not_listed
            .check()
            .unwrap_err()
            .to_string()
            .contains("must list this node"));
        let join = NodeSettings {
            join: true,
            peers: BTreeMap::new(),
            ..with_secret.clone()
        };
        assert!(join.check().is_ok());
        let join_without_secret = NodeSettings {
            cluster_secret: None,
            ..join
        };
        assert!(join_without_secret.check().is_err());
        let region_differs = NodeSettings {
            region: Some("eu".into()),
            ..with_secret
        };
        assert!(region_differs
            .check()
            .unwrap_err()
            .to_string()
            .contains("put the region in --peers"));
        assert!(NodeSettings::default().check().is_ok());
        let bad_timing = NodeSettings {
            heartbeat_ms: 600,
            ..NodeSettings::default()
        };
        assert!(bad_timing.check().is_err());
    }
}
