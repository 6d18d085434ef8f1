//! `tally-bench postgres`: the `uniform` and `hot` workloads against PostgreSQL with durable
//! settings, through a PL/pgSQL transfer function (`postgres.sql`), closed loop.
//!
//! Without `--postgres-url`, `bench/postgres.sh` installs PostgreSQL if it is missing and starts
//! it on loopback with a temporary data directory; it is stopped afterwards. Every run starts
//! from a fresh schema. Prints a table and one JSON line per run, in `load`'s format.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tally_engine::Transfer;
use tokio_postgres::Client;
use tokio_postgres::NoTls;
use tokio_postgres::Statement;

use crate::driver;
use crate::driver::Attempt;
use crate::driver::Backend;
use crate::driver::Plan;
use crate::stats::LedgerSums;
use crate::stats::RunResult;
use crate::stats::Verification;
use crate::workload;
use crate::workload::Layout;
use crate::workload::Workload;

const SCHEMA: &str = include_str!("postgres.sql");
/// Transfers per set-up (funding) call.
const SETUP_BATCH_EVENTS: usize = 1000;
/// Sampled transfers looked up per query during verification.
const VERIFY_IDS_PER_QUERY: usize = 1000;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostgresMode {
    /// One transfer per call (one transaction, one commit each).
    Single,
    /// `--batch` transfers per call, in one transaction.
    Batch,
}

#[derive(clap::Args, Clone)]
pub(crate) struct Args {
    /// A libpq-style connection string; without it, bench/postgres.sh starts a temporary server.
    #[arg(long)]
    pub(crate) postgres_url: Option<String>,
    /// Workloads to run, one after the other (uniform, hot).
    #[arg(long, value_delimiter = ',', default_value = "uniform,hot")]
    pub(crate) workloads: Vec<Workload>,
    #[arg(long, value_enum, default_value_t = PostgresMode::Batch)]
    pub(crate) mode: PostgresMode,
    /// Transfers per call in batch mode.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) accounts: u64,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) verify_sample: usize,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// The start/stop script (default: bench/postgres.sh of this source tree).
    #[arg(long)]
    pub(crate) script: Option<PathBuf>,
    /// Write each run's full result to DIR/<time>-postgres-<workload>-<mode>.json.
    #[arg(long)]
    pub(crate) out_dir: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    for workload in &args.workloads {
        anyhow::ensure!(
            matches!(workload, Workload::Uniform | Workload::Hot),
            "the PostgreSQL baseline runs uniform and hot"
        );
    }
    let runtime = crate::load::runtime()?;
    let server = match &args.postgres_url {
        Some(url) => PostgresServer::External(url.clone()),
        None => PostgresServer::start(args.script.as_deref())?,
    };
    let mut failed = false;
    for workload in &args.workloads {
        let result = runtime.block_on(run_one(
            server.url(),
            *workload,
            args.mode,
            args.batch,
            args.connections,
            &args,
        ))?;
        let out = args
            .out_dir
            .as_ref()
            .map(|directory| directory.join(result_file_name(&result)));
        crate::load::finish(&result, out.as_deref())?;
        failed |= !result
            .verification
            .as_ref()
            .is_some_and(|verification| verification.passed);
    }
    drop(server);
    anyhow::ensure!(!failed, "a verification failed");
    Ok(())
}

pub(crate) fn result_file_name(result: &RunResult) -> String {
    format!(
        "{}-{}-{}-{}-x{}-c{}-{}.json",
        result.unix_time_s,
        result.system,
        result.workload,
        result.mode,
        result.batch_events,
        result.connections,
        result.loop_kind
    )
}

/// A PostgreSQL server: one this process started (stopped on drop) or one it was given.
pub(crate) enum PostgresServer {
    Started {
        url: String,
        script: PathBuf,
        directory: tempfile::TempDir,
    },
    External(String),
}

impl PostgresServer {
    pub(crate) fn start(script: Option<&Path>) -> anyhow::Result<PostgresServer> {
        let script = match script {
            Some(script) => script.to_owned(),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("postgres.sh"),
        };
        let directory = tempfile::tempdir()?;
        // The server runs as the `postgres` user when we are root: let it reach its directory.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = directory.path().join("postgres");
        eprintln!(
            "starting PostgreSQL: {} start {} {port}",
            script.display(),
            data.display()
        );
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&data)
            .arg(port.to_string())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "{} start failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout)?.trim().to_owned();
        Ok(PostgresServer::Started {
            url,
            script,
            directory,
        })
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            PostgresServer::Started { url, .. } | PostgresServer::External(url) => url,
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let PostgresServer::Started {
            script, directory, ..
        } = self
        {
            let _ = Command::new("bash")
                .arg(&*script)
                .arg("stop")
                .arg(directory.path().join("postgres"))
                .status();
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// One workload in one configuration on a fresh schema: set-up, run, verification.
pub(crate) async fn run_one(
    url: &str,
    workload: Workload,
    mode: PostgresMode,
    batch: usize,
    connections: usize,
    args: &Args,
) -> anyhow::Result<RunResult> {
    anyhow::ensure!(batch >= 2, "--batch must be at least 2");
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let plan = Plan {
        workload,
        layout: Layout::new((seed >> 1) | 1, args.accounts),
        seed,
        connections,
        batch_events: if mode == PostgresMode::Single {
            2
        } else {
            batch
        },
        operations_max: if mode == PostgresMode::Single {
            1
        } else {
            usize::MAX
        },
        duration: Duration::from_secs(args.duration_seconds),
        schedule: None,
        sample_max: args.verify_sample,
    };
    let admin = connect(url).await?;
    admin
        .batch_execute(SCHEMA)
        .await
        .context("creating the schema")?;
    set_up(&admin, &plan).await?;
    let mut backends = Vec::new();
    for _ in 0..connections {
        let client = connect(url).await?;
        let statement = match mode {
            PostgresMode::Single => {
                client
                    .prepare("SELECT create_transfer($1, $2, $3, $4::text::numeric, $5, $6)")
                    .await?
            }
            PostgresMode::Batch => {
                client
                    .prepare("SELECT create_transfers($1, $2, $3, $4::text[]::numeric[], $5, $6)")
                    .await?
            }
        };
        backends.push(PostgresBackend {
            client,
            statement,
            mode,
        });
    }
    let mode_name = match mode {
        PostgresMode::Single => "single",
        PostgresMode::Batch => "batch",
    };
    let label = format!("postgres {} {mode_name} x{connections}", workload.name());
    let totals = driver::run(&plan, backends, &label).await?;
    let mut result = totals.result("postgres", mode_name, &plan);
    if mode == PostgresMode::Single {
        result.batch_events = 1;
    }
    result.verification = Some(verify(&admin, &plan, &totals).await?);
    Ok(result)
}

fn id_bytes(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

async fn set_up(client: &Client, plan: &Plan) -> anyhow::Result<()> {
    let accounts = plan.layout.accounts();
    let ids: Vec<Vec<u8>> = accounts
        .iter()
        .map(|account| id_bytes(account.id))
        .collect();
    let ledgers: Vec<i32> = accounts
        .iter()
        .map(|account| account.ledger as i32)
        .collect();
    let codes: Vec<i32> = accounts
        .iter()
        .map(|account| i32::from(account.code))
        .collect();
    let flags: Vec<i32> = accounts
        .iter()
        .map(|account| i32::from(account.flags))
        .collect();
    client
        .execute(
            "INSERT INTO accounts (id, ledger, code, flags) \
             SELECT * FROM unnest($1::bytea[], $2::integer[], $3::integer[], $4::integer[])",
            &[&ids, &ledgers, &codes, &flags],
        )
        .await
        .context("creating accounts")?;
    let statement = client
        .prepare("SELECT create_transfers($1, $2, $3, $4::text[]::numeric[], $5, $6)")
        .await?;
    for chunk in plan
        .layout
        .funding(plan.workload)
        .chunks(SETUP_BATCH_EVENTS)
    {
        let codes = call_batch(client, &statement, chunk)
            .await
            .context("funding accounts")?;
        anyhow::ensure!(
            codes.iter().all(|code| *code == 0),
            "a funding transfer failed"
        );
    }
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

async fn call_batch(
    client: &Client,
    statement: &Statement,
    transfers: &[Transfer],
) -> Result<Vec<u32>, tokio_postgres::Error> {
    let ids: Vec<Vec<u8>> = transfers
        .iter()
        .map(|transfer| id_bytes(transfer.id))
        .collect();
    let debits: Vec<Vec<u8>> = transfers
        .iter()
        .map(|transfer| id_bytes(transfer.debit_account_id))
        .collect();
    let credits: Vec<Vec<u8>> = transfers
        .iter()
        .map(|transfer| id_bytes(transfer.credit_account_id))
        .collect();
    let amounts: Vec<String> = transfers
        .iter()
        .map(|transfer| transfer.amount.to_string())
        .collect();
    let ledgers: Vec<i32> = transfers
        .iter()
        .map(|transfer| transfer.ledger as i32)
        .collect();
    let codes: Vec<i32> = transfers
        .iter()
        .map(|transfer| i32::from(transfer.code))
        .collect();
    let row = client
        .query_one(
            statement,
            &[&ids, &debits, &credits, &amounts, &ledgers, &codes],
        )
        .await?;
    let results: Vec<i32> = row.get(0);
    Ok(results.into_iter().map(|code| code as u32).collect())
}

struct PostgresBackend {
    client: Client,
    statement: Statement,
    mode: PostgresMode,
}

impl PostgresBackend {
    async fn call(&self, transfers: &[Transfer]) -> Result<Vec<u32>, tokio_postgres::Error> {
        match self.mode {
            PostgresMode::Batch => call_batch(&self.client, &self.statement, transfers).await,
            PostgresMode::Single => {
                let mut codes = Vec::with_capacity(transfers.len());
                for transfer in transfers {
                    let row = self
                        .client
                        .query_one(
                            &self.statement,
                            &[
                                &id_bytes(transfer.id),
                                &id_bytes(transfer.debit_account_id),
                                &id_bytes(transfer.credit_account_id),
                                &transfer.amount.to_string(),
                                &(transfer.ledger as i32),
                                &i32::from(transfer.code),
                            ],
                        )
                        .await?;
                    codes.push(row.get::<_, i32>(0) as u32);
                }
                Ok(codes)
            }
        }
    }
}

impl Backend for PostgresBackend {
    async fn submit(&mut self, transfers: &Arc<Vec<Transfer>>) -> Attempt {
        match self.call(transfers).await {
            Ok(codes) => Attempt::Answered(codes),
            Err(error) => match error.code() {
                // Rolled back as a whole: nothing was applied, send it again.
                Some(code)
                    if *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                        || *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE =>
                {
                    Attempt::Busy(format!("postgres_{}", code.code()))
                }
                Some(code) => Attempt::Refused(format!("postgres_{}", code.code())),
                // The connection failed: the commit may or may not have happened.
                None => Attempt::Unknown("postgres_connection".into()),
            },
        }
    }
}

async fn verify(
    client: &Client,
    plan: &Plan,
    totals: &driver::Totals,
) -> anyhow::Result<Verification> {
    let mut verification = Verification {
        transfers_acknowledged: totals.acknowledged,
        transfers_checked: totals.sample.len() as u64,
        sampled: (totals.sample.len() as u64) < totals.acknowledged,
        retry_mismatches: totals.outcome.retry_mismatches,
        ..Verification::default()
    };
    for chunk in totals.sample.chunks(VERIFY_IDS_PER_QUERY) {
        let ids: Vec<Vec<u8>> = chunk.iter().map(|transfer| id_bytes(transfer.id)).collect();
        let rows = client
            .query(
                "SELECT id, debit_account_id, credit_account_id, amount::text, ledger, code, result \
                 FROM transfers WHERE id = ANY ($1)",
                &[&ids],
            )
            .await?;
        let mut found = std::collections::HashMap::new();
        for row in rows {
            let id: Vec<u8> = row.get(0);
            found.insert(id, row);
        }
        for sent in chunk {
            match found.get(&id_bytes(sent.id)) {
                None => verification.transfers_missing += 1,
                Some(row) => {
                    let same = row.get::<_, Vec<u8>>(1) == id_bytes(sent.debit_account_id)
                        && row.get::<_, Vec<u8>>(2) == id_bytes(sent.credit_account_id)
                        && row.get::<_, String>(3) == sent.amount.to_string()
                        && row.get::<_, i32>(4) == sent.ledger as i32
                        && row.get::<_, i32>(5) == i32::from(sent.code)
                        && row.get::<_, i32>(6) == 0;
                    if !same {
                        verification.transfers_mismatched += 1;
                    }
                }
            }
        }
    }
    let rows = client
        .query(
            "SELECT ledger, count(*), sum(debits_posted)::text, sum(credits_posted)::text \
             FROM accounts GROUP BY ledger ORDER BY ledger",
            &[],
        )
        .await?;
    let mut posted_debits_in_ledger = 0u128;
    for row in rows {
        let ledger = row.get::<_, i32>(0) as u32;
        let count: i64 = row.get(1);
        let debits: u128 = row.get::<_, String>(2).parse()?;
        let credits: u128 = row.get::<_, String>(3).parse()?;
        verification.accounts_checked += count as u64;
        if ledger == workload::LEDGER {
            posted_debits_in_ledger = debits;
        }
        verification
            .ledgers
            .push(LedgerSums::new(ledger, debits, credits, 0, 0));
    }
    let funding: u128 = plan
        .layout
        .funding(plan.workload)
        .iter()
        .map(|transfer| transfer.amount)
        .sum();
    let posted_expected = funding + totals.outcome.posted_amount;
    verification.posted_expected = posted_expected.to_string();
    verification.pending_expected = "0".into();
    verification.totals_match =
        (totals.unknown_outcomes == 0).then_some(posted_debits_in_ledger == posted_expected);
    verification.passed = verification.transfers_missing == 0
        && verification.transfers_mismatched == 0
        && verification.accounts_checked == plan.layout.accounts_count + 1
        && verification.ledgers.iter().all(|ledger| ledger.balanced)
        && verification.totals_match != Some(false)
        && verification.retry_mismatches == 0;
    Ok(verification)
}
