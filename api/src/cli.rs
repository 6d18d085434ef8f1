//! The `tally` command line: `tally start` runs a node; the other commands are a small client for
//! a person at a terminal, talking HTTP to a running node.
//!
//! The client is blocking (`ureq`): one command sends one or two requests and exits, so an async
//! runtime would only add start-up time and dependencies.

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

use crate::json::flags_from_list;
use crate::limits::CLIENT_TIMEOUT_MS;

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
    /// Run a node: a one-member cluster serving the HTTP API. Stops cleanly on Ctrl-C / SIGTERM.
    Start {
        /// Where the journal and snapshots live (created if missing).
        #[arg(long, default_value = "./tally-data")]
        data_dir: PathBuf,
        /// Address to serve HTTP on. A non-loopback address needs --api-token.
        #[arg(long, default_value = "127.0.0.1:3000")]
        http: SocketAddr,
    },
    /// Create, show and list accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Create one transfer.
    Transfer(TransferArgs),
    /// Show the node's status: leader, applied index, state digest.
    Status,
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

/// A blocking client for one node's HTTP API.
pub struct Client {
    agent: ureq::Agent,
    server: String,
    api_token: Option<String>,
}

impl Client {
    pub fn new(server: &str, api_token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
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
        let mut request = self.agent.get(format!("{}{path}", self.server));
        if let Some(token) = &self.api_token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.answer(path, request.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.server))
            .header("Content-Type", "application/json");
        if let Some(token) = &self.api_token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.answer(path, request.send(body.to_string()))
    }

    fn answer(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response =
            response.map_err(|error| anyhow::anyhow!("cannot reach {}: {error}", self.server))?;
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
        Command::Start { .. } => anyhow::bail!("start is not a client command"),
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
