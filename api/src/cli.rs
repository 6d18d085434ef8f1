//! The `tally` command line: `tally start` runs a node; the other commands are a small client for
//! a person at a terminal, talking HTTP to a running node.
//!
//! The client is blocking (`ureq`): one command sends one or two requests and exits, so an async
//! runtime would only add start-up time and dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use serde_json::json;
use serde_json::Value;
use tally_engine::AccountFlags;
use tally_engine::TransferFlags;

use crate::cluster::parse_peers;
use crate::cluster::NodeSettings;
use crate::json::flags_from_list;
use crate::limits::CLIENT_REDIRECTS_MAX;
use crate::limits::CLIENT_TIMEOUT_MS;
use crate::server::ServerConfig;

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Tally: a financial ledger. `tally start` runs a node."
)]
pub struct Cli {
    /// The node to talk to (client commands).
    #[arg(
        long,
        global = true,
        env = "TALLY_SERVER",
        default_value = "http://127.0.0.1:3000"
    )]
    pub server: String,
    /// API token: required by `start` to bind a non-loopback address; sent as `Authorization:
    /// Bearer` by client commands.
    #[arg(long, global = true, env = "TALLY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Print the server's JSON instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node serving the HTTP API: alone (the default) or as a member of a cluster
    /// (--peers, or --join). Stops cleanly on Ctrl-C / SIGTERM.
    Start(StartArgs),
    /// Create, show and list accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Create one transfer.
    Transfer(TransferArgs),
    /// Show the node's status: leader, applied index, state digest.
    Status,
    /// Show and change the cluster: members, leader, lag; add, remove, transfer leadership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Audit a data directory offline: re-apply its log, verify checkpoints and the snapshot,
    /// print the final digest (exit 0 OK, 1 mismatch, 2 could not run).
    Replay(tally_sim::replay::ReplayArgs),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Where the journal and snapshots live (created if missing).
    #[arg(long, default_value = "./tally-data")]
    pub data_dir: PathBuf,
    /// Address to serve HTTP on (default 127.0.0.1:3000, or this node's --peers entry). A
    /// non-loopback address needs --api-token.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// This node's id in the cluster.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Where to listen for peer (Raft) connections (default: this node's --peers entry).
    #[arg(long)]
    pub raft: Option<SocketAddr>,
    /// The initial members of a new cluster, this node included:
    /// `id=raft_host:port@http_host:port[@region],…` (the addresses other nodes and clients
    /// use). Give every node the same list. Used only on a fresh data directory.
    #[arg(long)]
    pub peers: Option<String>,
    /// The secret every member shares; peers without it are refused. Required for a cluster.
    #[arg(long, env = "TALLY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Fresh data directory: do not start a cluster, wait to be added by the leader
    /// (`tally cluster add`). Needs --raft.
    #[arg(long)]
    pub join: bool,
    /// This node's region label (for --join; with --peers the region is part of the entry).
    #[arg(long)]
    pub region: Option<String>,
    /// A follower that hears no leader for a random time in MIN..MAX ms starts an election.
    #[arg(long, default_value = crate::cluster::ELECTION_TIMEOUT_MS_DEFAULT, value_parser = crate::cluster::parse_range_ms)]
    pub election_timeout_ms: (u64, u64),
    /// How often the leader sends heartbeats, in ms (below the election timeout minimum).
    #[arg(long, default_value_t = crate::cluster::HEARTBEAT_MS_DEFAULT)]
    pub heartbeat_ms: u64,
    /// Record (and, on the leader, propose) a state-digest checkpoint every N log entries.
    #[arg(long, default_value_t = tally_raft::limits::CHECKPOINT_EVERY_ENTRIES_DEFAULT)]
    pub checkpoint_every: u64,
    /// Take a snapshot every N log entries; 0 (the default): when the log a restart would
    /// re-apply outweighs the state the last snapshot wrote (docs/design.md §4).
    #[arg(long, default_value_t = tally_raft::limits::SNAPSHOT_EVERY_ENTRIES_DEFAULT)]
    pub snapshot_every: u64,
    #[command(flatten)]
    pub capacity: tally_sim::replay::CapacityArgs,
}

impl StartArgs {
    /// The server configuration these flags describe (checked by `server::check_config`).
    pub fn to_config(&self, api_token: Option<String>) -> anyhow::Result<ServerConfig> {
        let peers = match &self.peers {
            Some(text) => {
                parse_peers(text).map_err(|problem| anyhow::anyhow!("--peers: {problem}"))?
            }
            None => BTreeMap::new(),
        };
        let own = peers.get(&self.node_id);
        let http_addr = match (self.http, own) {
            (Some(address), _) => address,
            (None, Some(info)) => resolve(&info.http_addr["http://".len()..])
                .with_context(|| format!("this node's --peers HTTP address {}", info.http_addr))?,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        let raft_listen =
            match (self.raft, own) {
                (Some(address), _) => Some(address),
                (None, Some(info)) => Some(resolve(&info.raft_addr).with_context(|| {
                    format!("this node's --peers raft address {}", info.raft_addr)
                })?),
                (None, None) => None,
            };
        Ok(ServerConfig {
            data_dir: self.data_dir.clone(),
            http_addr,
            api_token,
            node: NodeSettings {
                node_id: self.node_id,
                raft_listen,
                peers,
                cluster_secret: self.cluster_secret.clone(),
                join: self.join,
                region: self.region.clone(),
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_ms: self.election_timeout_ms,
                checkpoint_every: self.checkpoint_every,
                snapshot_every: self.snapshot_every,
                ledger_capacity: self.capacity.ledger_capacity(),
            },
        })
    }
}

/// A listen address from `host:port` (a name is resolved; the first address wins).
fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    text.to_socket_addrs()
        .with_context(|| format!("cannot resolve {text}"))?
        .next()
        .with_context(|| format!("{text} resolves to no address"))
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// This node's view: members, roles, leader, term, indexes, each member's lag (on the
    /// leader), checkpoints and the state digest.
    Status,
    /// Add a node (started with `tally start --join`): as a learner that catches up, then as a
    /// voter.
    Add {
        #[arg(long)]
        id: u64,
        /// The new node's peer address (host:port) as the others reach it.
        #[arg(long)]
        raft: String,
        /// The new node's HTTP address (host:port) as clients reach it.
        #[arg(long)]
        http: String,
        #[arg(long, default_value = crate::cluster::DEFAULT_REGION)]
        region: String,
        /// Leave it a learner (replicated to, not voting).
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a node from the cluster (voter or learner).
    Remove { id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
    /// Take a snapshot on the node now (and purge the log behind it).
    Snapshot,
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create one account.
    Create(AccountArgs),
    /// Show one account's balances.
    Show { id: String },
    /// List an account's transfers (and its balance history if it has the `history` flag).
    History {
        id: String,
        /// The most transfers to list.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `asc` (oldest first) or `desc`.
        #[arg(long, default_value = "asc")]
        order: String,
    },
}

#[derive(Args, Debug)]
pub struct AccountArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub ledger: u32,
    #[arg(long)]
    pub code: u16,
    /// Comma-separated: linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits,
    /// history, closed.
    #[arg(long, default_value = "")]
    pub flags: String,
    #[arg(long, default_value = "0")]
    pub user_data_128: String,
    #[arg(long, default_value_t = 0)]
    pub user_data_64: u64,
    #[arg(long, default_value_t = 0)]
    pub user_data_32: u32,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[arg(long)]
    pub id: String,
    /// The debit account id.
    #[arg(long)]
    pub from: String,
    /// The credit account id.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub amount: String,
    #[arg(long)]
    pub ledger: u32,
    #[arg(long)]
    pub code: u16,
    /// Comma-separated: linked, pending, post_pending_transfer, void_pending_transfer,
    /// balancing_debit, balancing_credit.
    #[arg(long, default_value = "")]
    pub flags: String,
    /// The pending transfer to post or void.
    #[arg(long, default_value = "0")]
    pub pending_id: String,
    /// Seconds until a pending transfer expires (0 = never).
    #[arg(long, default_value_t = 0)]
    pub timeout: u32,
    #[arg(long, default_value = "0")]
    pub user_data_128: String,
    #[arg(long, default_value_t = 0)]
    pub user_data_64: u64,
    #[arg(long, default_value_t = 0)]
    pub user_data_32: u32,
}

/// A blocking client for one node's HTTP API. A `307` from a follower (naming the leader) is
/// followed by sending the same request, token included, to the leader.
pub struct Client {
    agent: ureq::Agent,
    server: String,
    api_token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Delete,
}

impl Client {
    pub fn new(server: &str, api_token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed by hand: ureq would drop the token and the body.
            .max_redirects(0)
            .timeout_global(Some(Duration::from_millis(CLIENT_TIMEOUT_MS)))
            .build()
            .into();
        Client {
            agent,
            server: server.trim_end_matches('/').to_owned(),
            api_token,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::Get, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.request(Method::Post, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::Delete, path, None)
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut url = format!("{}{path}", self.server);
        for _ in 0..=CLIENT_REDIRECTS_MAX {
            let authorization = self
                .api_token
                .as_ref()
                .map(|token| format!("Bearer {token}"));
            let response = match method {
                Method::Get | Method::Delete => {
                    let mut request = if method == Method::Get {
                        self.agent.get(&url)
                    } else {
                        self.agent.delete(&url)
                    };
                    if let Some(authorization) = &authorization {
                        request = request.header("Authorization", authorization);
                    }
                    request.call()
                }
                Method::Post => {
                    let mut request = self
                        .agent
                        .post(&url)
                        .header("Content-Type", "application/json");
                    if let Some(authorization) = &authorization {
                        request = request.header("Authorization", authorization);
                    }
                    request.send(body.map(Value::to_string).unwrap_or_default())
                }
            };
            let response =
                response.map_err(|error| anyhow::anyhow!("cannot reach {url}: {error}"))?;
            let status = response.status();
            if status == 307 || status == 308 {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|value| value.to_str().ok())
                    .with_context(|| format!("{path} answered {status} without a Location"))?;
                url = location.to_owned();
                continue;
            }
            return self.answer(path, response);
        }
        anyhow::bail!("{path}: more than {CLIENT_REDIRECTS_MAX} redirects (last to {url})")
    }

    fn answer(
        &self,
        path: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> anyhow::Result<Value> {
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {path}"))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{path} answered {status} with something that is not JSON"))?;
        if !status.is_success() {
            let message = value["error"].as_str().unwrap_or("(no message)");
            anyhow::bail!("{path}: {} {message}", status.as_u16());
        }
        Ok(value)
    }
}

/// Runs a client command; `Ok(false)` means the server refused the event (exit non-zero).
pub fn run_client(cli: &Cli) -> anyhow::Result<bool> {
    let client = Client::new(&cli.server, cli.api_token.clone());
    match &cli.command {
        Command::Start(_) | Command::Replay(_) => anyhow::bail!("not a client command"),
        Command::Cluster(command) => cluster_command(&client, command, cli.json),
        Command::Account(AccountCommand::Create(args)) => create_account(&client, args, cli.json),
        Command::Account(AccountCommand::Show { id }) => show_account(&client, id, cli.json),
        Command::Account(AccountCommand::History { id, limit, order }) => {
            account_history(&client, id, *limit, order, cli.json)
        }
        Command::Transfer(args) => create_transfer(&client, args, cli.json),
        Command::Status => {
            let status = client.get("/v1/status")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", key_values(&status_rows(&status)));
            }
            Ok(true)
        }
    }
}

fn cluster_command(
    client: &Client,
    command: &ClusterCommand,
    json_output: bool,
) -> anyhow::Result<bool> {
    let view = match command {
        ClusterCommand::Status => client.get("/v1/cluster")?,
        ClusterCommand::Add {
            id,
            raft,
            http,
            region,
            learner_only,
        } => {
            let learner = json!({"id": id, "raft_addr": raft, "http_addr": http, "region": region});
            if !json_output {
                eprintln!("adding node {id} as a learner and waiting for it to catch up…");
            }
            let view = client.post("/v1/cluster/learners", &learner)?;
            if *learner_only {
                view
            } else {
                let mut voters: Vec<u64> = view["voters"]
                    .as_array()
                    .context("the cluster view has no voters")?
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect();
                if !voters.contains(id) {
                    voters.push(*id);
                }
                if !json_output {
                    eprintln!("promoting node {id}: voters become {voters:?}…");
                }
                client.post("/v1/cluster/voters", &json!({ "voters": voters }))?
            }
        }
        ClusterCommand::Remove { id } => client.delete(&format!("/v1/cluster/members/{id}"))?,
        ClusterCommand::TransferLeader { id } => {
            client.post("/v1/cluster/leader", &json!({ "id": id }))?
        }
        ClusterCommand::Snapshot => client.post("/v1/cluster/snapshot", &json!({}))?,
    };
    if json_output {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", cluster_table(&view));
    }
    Ok(true)
}

/// `tally cluster status` for a person: the node's view, then one row per member.
pub fn cluster_table(view: &Value) -> String {
    let checkpoint = |value: &Value| -> String {
        if value.is_null() {
            "-".to_owned()
        } else {
            format!(
                "index {} digest {}",
                plain(&value["index"]),
                plain(&value["digest"])
            )
        }
    };
    let divergence = if view["divergence"].is_null() {
        "none".to_owned()
    } else {
        format!("DIVERGED: {}", view["divergence"])
    };
    let rows: Vec<(String, String)> = vec![
        ("node_id".into(), plain(&view["node_id"])),
        ("state".into(), plain(&view["state"])),
        ("leader_id".into(), plain(&view["leader_id"])),
        ("term".into(), plain(&view["term"])),
        ("committed_index".into(), plain(&view["committed_index"])),
        ("applied_index".into(), plain(&view["applied_index"])),
        ("snapshot_index".into(), plain(&view["snapshot_index"])),
        (
            "membership".into(),
            if view["joint"] == json!(true) {
                "joint (a change is in progress)".into()
            } else {
                "stable".into()
            },
        ),
        ("digest".into(), plain(&view["ledger"]["digest"])),
        (
            "checkpoint recorded".into(),
            checkpoint(&view["checkpoint_recorded"]),
        ),
        (
            "checkpoint verified".into(),
            checkpoint(&view["checkpoint_verified"]),
        ),
        ("divergence".into(), divergence),
    ];
    let empty = Vec::new();
    let members: Vec<Vec<String>> = view["members"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|member| {
            let mut role = plain(&member["role"]);
            if member["leader"] == json!(true) {
                role.push_str(" (leader)");
            }
            vec![
                plain(&member["id"]),
                role,
                plain(&member["region"]),
                plain(&member["raft_addr"]),
                plain(&member["http_addr"]),
                plain(&member["matched_index"]),
                plain(&member["lag"]),
            ]
        })
        .collect();
    let mut output = key_values(&rows);
    output.push_str("members:\n");
    output.push_str(&table(
        &["id", "role", "region", "raft", "http", "matched", "lag"],
        &members,
    ));
    output
}

fn create_account(client: &Client, args: &AccountArgs, json_output: bool) -> anyhow::Result<bool> {
    let flags = flags_from_list(&args.flags, AccountFlags::NAMED).map_err(anyhow::Error::msg)?;
    let body = json!([{
        "id": args.id,
        "ledger": args.ledger,
        "code": args.code,
        "flags": AccountFlags::names(flags),
        "user_data_128": args.user_data_128,
        "user_data_64": args.user_data_64,
        "user_data_32": args.user_data_32,
    }]);
    let results = client.post("/v1/accounts", &body)?;
    report_result(&results, &format!("account {}", args.id), json_output)
}

fn create_transfer(
    client: &Client,
    args: &TransferArgs,
    json_output: bool,
) -> anyhow::Result<bool> {
    let flags = flags_from_list(&args.flags, TransferFlags::NAMED).map_err(anyhow::Error::msg)?;
    let body = json!([{
        "id": args.id,
        "debit_account_id": args.from,
        "credit_account_id": args.to,
        "amount": args.amount,
        "pending_id": args.pending_id,
        "timeout": args.timeout,
        "ledger": args.ledger,
        "code": args.code,
        "flags": TransferFlags::names(flags),
        "user_data_128": args.user_data_128,
        "user_data_64": args.user_data_64,
        "user_data_32": args.user_data_32,
    }]);
    let results = client.post("/v1/transfers", &body)?;
    report_result(&results, &format!("transfer {}", args.id), json_output)
}

fn report_result(results: &Value, what: &str, json_output: bool) -> anyhow::Result<bool> {
    let status = results[0]["status"]
        .as_str()
        .context("the server answered without a status")?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&results[0])?);
    } else if status == "ok" {
        println!("{what}: ok");
    }
    if status != "ok" {
        eprintln!("error: {what} not created: {status}");
        return Ok(false);
    }
    Ok(true)
}

fn show_account(client: &Client, id: &str, json_output: bool) -> anyhow::Result<bool> {
    let account = client.get(&format!("/v1/accounts/{id}"))?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&account)?);
        return Ok(true);
    }
    let rows: Vec<(String, String)> = [
        "id",
        "ledger",
        "code",
        "flags",
        "debits_pending",
        "debits_posted",
        "credits_pending",
        "credits_posted",
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "timestamp",
    ]
    .iter()
    .map(|field| (field.to_string(), plain(&account[field])))
    .collect();
    print!("{}", key_values(&rows));
    Ok(true)
}

fn account_history(
    client: &Client,
    id: &str,
    limit: u32,
    order: &str,
    json_output: bool,
) -> anyhow::Result<bool> {
    let account = client.get(&format!("/v1/accounts/{id}"))?;
    let query = format!("limit={limit}&order={order}");
    let transfers = client.get(&format!("/v1/accounts/{id}/transfers?{query}"))?;
    let has_history = account["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|flag| flag == "history"));
    let balances = if has_history {
        Some(client.get(&format!("/v1/accounts/{id}/balances?{query}"))?)
    } else {
        None
    };
    if json_output {
        let mut output = json!({ "account": account, "transfers": transfers });
        if let Some(balances) = balances {
            output["balances"] = balances;
        }
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(true);
    }
    let empty = Vec::new();
    let transfer_rows: Vec<Vec<String>> = transfers
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|transfer| {
            let is_debit = transfer["debit_account_id"] == account["id"];
            let (direction, other) = if is_debit {
                ("debit", &transfer["credit_account_id"])
            } else {
                ("credit", &transfer["debit_account_id"])
            };
            vec![
                plain(&transfer["timestamp"]),
                plain(&transfer["id"]),
                direction.to_owned(),
                plain(other),
                plain(&transfer["amount"]),
                plain(&transfer["flags"]),
            ]
        })
        .collect();
    println!("transfers of account {id}:");
    print!(
        "{}",
        table(
            &[
                "timestamp",
                "id",
                "side",
                "other account",
                "amount",
                "flags"
            ],
            &transfer_rows
        )
    );
    if let Some(balances) = balances {
        let balance_rows: Vec<Vec<String>> = balances
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|row| {
                [
                    "timestamp",
                    "debits_pending",
                    "debits_posted",
                    "credits_pending",
                    "credits_posted",
                ]
                .iter()
                .map(|field| plain(&row[field]))
                .collect()
            })
            .collect();
        println!("balance history:");
        print!(
            "{}",
            table(
                &[
                    "timestamp",
                    "debits_pending",
                    "debits_posted",
                    "credits_pending",
                    "credits_posted"
                ],
                &balance_rows
            )
        );
    }
    Ok(true)
}

fn status_rows(status: &Value) -> Vec<(String, String)> {
    [
        ("node_id", &status["node"]["node_id"]),
        ("state", &status["node"]["state"]),
        ("leader_id", &status["node"]["leader_id"]),
        ("term", &status["node"]["term"]),
        ("applied_index", &status["ledger"]["applied_index"]),
        ("accounts", &status["ledger"]["accounts"]),
        ("transfers", &status["ledger"]["transfers"]),
        ("digest", &status["ledger"]["digest"]),
        ("hash_chain", &status["ledger"]["hash_chain"]),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), plain(value)))
    .collect()
}

/// A JSON value as a person reads it: strings unquoted, arrays comma-separated, null as "-".
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn key_values(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut output = String::new();
    for (key, value) in rows {
        let _ = writeln!(output, "{key:<width$}  {value}");
    }
    output
}

/// Columns padded to their widest cell; numbers would read better right-aligned but ids and
/// amounts are strings here and left alignment keeps the code obvious.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut output = String::new();
    let line = |cells: Vec<&str>, output: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(output, "{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec(), &mut output);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut output);
    }
    if rows.is_empty() {
        output.push_str("(none)\n");
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let text = table(&["a", "long header"], &[vec!["12345".into(), "x".into()]]);
        assert_eq!(text, "a      long header\n12345  x\n");
        assert_eq!(table(&["a"], &[]), "a\n(none)\n");
    }

    #[test]
    fn plain_values() {
        assert_eq!(plain(&json!("7")), "7");
        assert_eq!(plain(&json!(["linked", "pending"])), "linked,pending");
        assert_eq!(plain(&json!([])), "-");
        assert_eq!(plain(&json!(12)), "12");
    }
}
