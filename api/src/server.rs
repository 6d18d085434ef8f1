//! `tally start`: one node behind the HTTP API, alone (a one-member Raft cluster) or a member of
//! a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::Matcher;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use tally_raft::node::Node;
use tally_raft::node::NodeConfig;
use tally_raft::types::NodeInfo;

use crate::cluster::NodeSettings;
use crate::http::AppState;
use crate::limits::LEADER_WAIT_TIMEOUT_MS;
use crate::limits::METRICS_UPKEEP_INTERVAL_MS;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub api_token: Option<String>,
    /// Node id, peers, cluster secret, timing (the defaults: a lone node).
    pub node: NodeSettings,
}

/// Refuses configurations that would expose an unauthenticated ledger.
pub fn check_config(config: &ServerConfig) -> anyhow::Result<()> {
    config.node.check()?;
    if let Some(token) = &config.api_token {
        anyhow::ensure!(
            !token.is_empty(),
            "--api-token / TALLY_API_TOKEN is set but empty"
        );
    }
    if !config.http_addr.ip().is_loopback() && config.api_token.is_none() {
        anyhow::bail!(
            "refusing to listen on {} without an API token: anyone who can reach it could move money. \
             Set --api-token or TALLY_API_TOKEN, or bind a loopback address such as 127.0.0.1",
            config.http_addr
        );
    }
    Ok(())
}

/// Latency histograms are rendered as Prometheus histograms (not summaries) with these buckets.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
const EVENTS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 8189.0,
];

/// Installs the process-wide metrics recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENTS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_occupancy".into()), EVENTS_BUCKETS)?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Runs the server until SIGINT or SIGTERM, then stops the node cleanly.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    check_config(&config)?;
    let metrics = install_metrics()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(METRICS_UPKEEP_INTERVAL_MS));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });

    // Bind first: a port in use fails before the data directory is touched.
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let local_addr = listener.local_addr()?;
    let node = Node::start(node_config(&config, local_addr))
        .await
        .with_context(|| format!("cannot start the node on {}", config.data_dir.display()))?;
    if !config.node.clustered() {
        if !node
            .wait_for_leader(Duration::from_millis(LEADER_WAIT_TIMEOUT_MS))
            .await
        {
            tracing::warn!(
                "no leader after {LEADER_WAIT_TIMEOUT_MS} ms; serving anyway (/healthz answers 503)"
            );
        }
    } else {
        // A member serves at once: writes are redirected to the leader once one is known, and
        // /healthz answers 503 until then.
        let settings = &config.node;
        eprintln!(
            "tally: node {} ({}), peers on {}, {}",
            settings.node_id,
            settings.own_region(),
            settings
                .raft_listen
                .map_or_else(|| "-".to_owned(), |address| address.to_string()),
            if settings.join {
                "waiting to be added to a cluster (--join)".to_owned()
            } else {
                format!(
                    "initial members {:?}",
                    settings.peers.keys().collect::<Vec<_>>()
                )
            }
        );
    }
    let state = AppState {
        node: node.clone(),
        metrics,
        api_token: config
            .api_token
            .as_deref()
            .map(|token| Arc::from(token.as_bytes())),
        readiness: Arc::default(),
    };
    eprintln!(
        "tally: listening on http://{local_addr} (data in {}{})",
        config.data_dir.display(),
        if config.api_token.is_some() {
            ", API token required"
        } else {
            ""
        }
    );
    axum::serve(listener, crate::http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    eprintln!("tally: shutting down");
    node.shutdown().await;
    Ok(())
}

/// The node's configuration: the defaults of a lone node, or a cluster member's.
pub fn node_config(config: &ServerConfig, local_addr: SocketAddr) -> NodeConfig {
    let settings = &config.node;
    let mut node = NodeConfig::single(config.data_dir.clone(), format!("http://{local_addr}"));
    node.node_id = settings.node_id;
    node.heartbeat_interval_ms = settings.heartbeat_ms;
    (node.election_timeout_min_ms, node.election_timeout_max_ms) = settings.election_timeout_ms;
    node.checkpoint_every_entries = settings.checkpoint_every;
    node.snapshot_every_entries = settings.snapshot_every;
    node.ledger_capacity = settings.ledger_capacity;
    node.info.region = settings.own_region();
    if settings.clustered() {
        node.info = match settings.peers.get(&settings.node_id) {
            Some(info) => info.clone(),
            None => NodeInfo {
                raft_addr: settings
                    .raft_listen
                    .map(|address| address.to_string())
                    .unwrap_or_default(),
                http_addr: format!("http://{local_addr}"),
                region: settings.own_region(),
            },
        };
        node.initial_members = settings.peers.clone();
        node.join = settings.join;
        node.raft_listen = settings.raft_listen;
        // Outgoing peer connections leave from the address this node listens on (when that is
        // one address, not 0.0.0.0 / ::): on a multi-homed host peers and firewalls see a single
        // address per node, the one they dial.
        node.network.source_ip = settings
            .raft_listen
            .map(|address| address.ip())
            .filter(|ip| !ip.is_unspecified());
        node.cluster_secret = settings
            .cluster_secret
            .clone()
            .unwrap_or_default()
            .into_bytes();
    }
    node
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let config = |address: &str, token: Option<&str>| ServerConfig {
            data_dir: PathBuf::from("unused"),
            http_addr: address.parse().unwrap(),
            api_token: token.map(str::to_owned),
            node: NodeSettings::default(),
        };
        assert!(check_config(&config("127.0.0.1:3000", None)).is_ok());
        assert!(check_config(&config("[::1]:3000", None)).is_ok());
        let error = check_config(&config("0.0.0.0:3000", None))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("refusing to listen on 0.0.0.0:3000 without an API token"),
            "{error}"
        );
        assert!(check_config(&config("0.0.0.0:3000", Some("secret"))).is_ok());
        assert!(check_config(&config("127.0.0.1:3000", Some(""))).is_err());
    }

    #[test]
    fn peer_connections_leave_from_the_raft_listen_address_when_it_is_one() {
        let source_ip = |raft_listen: Option<&str>| {
            let config = ServerConfig {
                data_dir: PathBuf::from("unused"),
                http_addr: "127.0.0.1:3000".parse().unwrap(),
                api_token: None,
                node: NodeSettings {
                    raft_listen: raft_listen.map(|address| address.parse().unwrap()),
                    cluster_secret: Some("secret".into()),
                    ..NodeSettings::default()
                },
            };
            node_config(&config, config.http_addr).network.source_ip
        };
        assert_eq!(source_ip(None), None);
        assert_eq!(source_ip(Some("0.0.0.0:7001")), None);
        assert_eq!(source_ip(Some("[::]:7001")), None);
        assert_eq!(
            source_ip(Some("127.0.0.12:7001")),
            Some("127.0.0.12".parse().unwrap())
        );
        assert_eq!(source_ip(Some("[::1]:7001")), Some("::1".parse().unwrap()));
    }
}
