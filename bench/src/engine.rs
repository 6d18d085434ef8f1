//! `tally-bench engine`: transfers through `Ledger::create_transfers`, against a bare loop doing
//! the same memory work (look up two accounts in the same kind of map, add to two balances, no
//! checks), measured in the same run on the same pre-generated batches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tally_engine::limits::BATCH_EVENTS_MAX;
use tally_engine::{
    Account, CreateTransferResult, IdIndex, Ledger, SequentialIdIndex, StoredAccount, Transfer,
    TransferFlags,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Both accounts drawn uniformly from all accounts.
    Uniform,
    /// 10% of transfers move between 10 hot accounts; the rest are uniform.
    Hot,
    /// Every batch of pending transfers is followed by a batch posting them.
    TwoPhase,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Hot => "hot",
            Workload::TwoPhase => "two-phase",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value = "uniform")]
    workload: Workload,
    /// Transfer events in total (for two-phase: pending plus post events).
    #[arg(long, default_value_t = 2_000_000)]
    transfers: usize,
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// Events per batch (at most 8189).
    #[arg(long, default_value_t = BATCH_EVENTS_MAX)]
    batch_events: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Runs of each (baseline and ledger, alternating); the fastest of each is reported, which
    /// filters out interference from other processes on a shared machine.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Start from `Ledger::new()`, as the server does today, so records and indexes grow (and
    /// rehash) during the run, instead of `Ledger::with_capacity` sized and touched up front.
    #[arg(long)]
    grow: bool,
    /// Account capacity of the ledger (default: `--accounts`), e.g. a node's
    /// `TALLY_ACCOUNTS_MAX`: a larger one spreads the accounts' index slots over more memory.
    #[arg(long)]
    accounts_max: Option<usize>,
    /// Transfer capacity of the ledger (default: `--transfers`), e.g. a node's
    /// `TALLY_TRANSFERS_MAX`: a larger one spreads the transfer ids' index over more memory.
    #[arg(long)]
    transfers_max: Option<usize>,
}

const LEDGER: u32 = 1;
const HOT_ACCOUNTS: u128 = 10;

fn account_id(index: usize) -> u128 {
    index as u128 + 1
}

fn generate_accounts(count: usize) -> Vec<Account> {
    (0..count)
        .map(|index| Account {
            id: account_id(index),
            ledger: LEDGER,
            code: 1,
            ..Account::default()
        })
        .collect()
}

/// Two different account ids for one transfer.
fn pick_accounts(rng: &mut ChaCha8Rng, workload: Workload, accounts: usize) -> (u128, u128) {
    let pool = if workload == Workload::Hot && rng.gen_bool(0.1) {
        HOT_ACCOUNTS as usize
    } else {
        accounts
    };
    let debit = rng.gen_range(0..pool);
    let mut credit = rng.gen_range(0..pool - 1);
    if credit >= debit {
        credit += 1;
    }
    (account_id(debit), account_id(credit))
}

fn generate_batches(args: &Args) -> Vec<Vec<Transfer>> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut batches = Vec::new();
    let mut next_id: u128 = 1;
    let mut remaining = args.transfers;
    while remaining > 0 {
        let count = remaining.min(args.batch_events);
        let pending = args.workload == Workload::TwoPhase;
        let batch: Vec<Transfer> = (0..count)
            .map(|_| {
                let (debit, credit) = pick_accounts(&mut rng, args.workload, args.accounts);
                let id = next_id;
                next_id += 1;
                Transfer {
                    id,
                    debit_account_id: debit,
                    credit_account_id: credit,
                    amount: rng.gen_range(1..1_000),
                    ledger: LEDGER,
                    code: 1,
                    flags: if pending { TransferFlags::PENDING } else { 0 },
                    ..Transfer::default()
                }
            })
            .collect();
        remaining -= count;
        if pending && remaining > 0 {
            let count = remaining.min(batch.len());
            let posts: Vec<Transfer> = batch[..count]
                .iter()
                .map(|pending| {
                    let id = next_id;
                    next_id += 1;
                    Transfer {
                        id,
                        pending_id: pending.id,
                        amount: u128::MAX,
                        flags: TransferFlags::POST_PENDING_TRANSFER,
                        ..Transfer::default()
                    }
                })
                .collect();
            remaining -= count;
            batches.push(batch);
            batches.push(posts);
        } else {
            batches.push(batch);
        }
    }
    batches
}

struct EngineRun {
    elapsed: Duration,
    failed: usize,
    latency_us: Histogram<u64>,
    bytes_per_account: f64,
    bytes_per_transfer: f64,
    digest: u128,
}

fn run_engine(
    args: &Args,
    accounts: &[Account],
    batches: &[Vec<Transfer>],
) -> anyhow::Result<EngineRun> {
    let mut ledger = if args.grow {
        Ledger::new()
    } else {
        Ledger::with_capacity(
            args.accounts_max.unwrap_or(args.accounts),
            args.transfers_max.unwrap_or(args.transfers),
        )
    };
    let mut timestamp = 1;
    for chunk in accounts.chunks(BATCH_EVENTS_MAX) {
        let results = ledger.create_accounts(timestamp, chunk);
        ensure!(
            results.iter().all(|result| result.status == 0),
            "account creation failed"
        );
        timestamp += chunk.len() as u64;
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut failed = 0;
    let start = Instant::now();
    for batch in batches {
        let batch_start = Instant::now();
        let results = ledger.create_transfers(timestamp, batch);
        latency_us.record(batch_start.elapsed().as_micros() as u64)?;
        timestamp += batch.len() as u64;
        failed += results
            .iter()
            .filter(|result| result.status != CreateTransferResult::Ok.code())
            .count();
    }
    let elapsed = start.elapsed();
    ledger.check_invariants();
    Ok(EngineRun {
        elapsed,
        failed,
        latency_us,
        bytes_per_account: ledger.accounts_memory_bytes() as f64 / args.accounts as f64,
        bytes_per_transfer: ledger.transfers_memory_bytes() as f64 / args.transfers as f64,
        digest: ledger.digest(),
    })
}

/// An account record on a cache-line boundary, as the ledger stores it.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Aligned(StoredAccount);

/// The same memory work without the ledger: two lookups in the same kind of index the engine
/// uses (`IdIndex`: u128 id → record index, confirmed against the record), two additions to
/// 128-byte account records laid out and aligned as the ledger keeps them (`StoredAccount`, whose
/// first cache line holds the id and both posted balances). The post of a two-phase workload
/// carries no account ids, so there it looks up the pending transfer's record and its accounts
/// first, as the engine must.
fn run_baseline(args: &Args, accounts: &[Account], batches: &[Vec<Transfer>]) -> Duration {
    let mut indexes = IdIndex::<false>::with_capacity(accounts.len());
    let mut records: Vec<Aligned> = Vec::with_capacity(accounts.len());
    for (index, account) in accounts.iter().enumerate() {
        records.push(Aligned(StoredAccount::new(account)));
        indexes.insert(account.id, index as u32, |index| {
            records[index as usize].0.id
        });
    }
    let mut pending_indexes = SequentialIdIndex::new();
    let mut pending_records: Vec<Transfer> = Vec::new();
    if args.workload == Workload::TwoPhase {
        pending_indexes.reserve(args.transfers);
        for transfer in batches.iter().flatten() {
            if transfer.flags & TransferFlags::PENDING != 0 {
                pending_records.push(*transfer);
                let index = pending_records.len() as u32 - 1;
                pending_indexes.insert(transfer.id, index, |index| {
                    pending_records[index as usize].id
                });
            }
        }
    }
    let start = Instant::now();
    for batch in batches {
        for transfer in batch {
            let (debit_id, credit_id) = if transfer.pending_id != 0 {
                let pending = pending_indexes
                    .get(transfer.pending_id, |index| {
                        pending_records[index as usize].id
                    })
                    .expect("pending transfer");
                let pending = &pending_records[pending as usize];
                (pending.debit_account_id, pending.credit_account_id)
            } else {
                (transfer.debit_account_id, transfer.credit_account_id)
            };
            let id_at = |index: u32| records[index as usize].0.id;
            let debit = indexes.get(debit_id, id_at).expect("debit account") as usize;
            let credit = indexes.get(credit_id, id_at).expect("credit account") as usize;
            let amount = transfer.amount;
            let debit = &mut records[debit].0;
            debit.debits_posted = debit.debits_posted.wrapping_add(amount);
            let credit = &mut records[credit].0;
            credit.credits_posted = credit.credits_posted.wrapping_add(amount);
        }
        black_box(&mut records);
    }
    let elapsed = start.elapsed();
    black_box(&records);
    elapsed
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.accounts >= 2 * HOT_ACCOUNTS as usize,
        "--accounts must be at least 20"
    );
    ensure!(
        (1..=BATCH_EVENTS_MAX).contains(&args.batch_events),
        "--batch-events must be in 1..={BATCH_EVENTS_MAX}"
    );
    ensure!(args.transfers > 0, "--transfers must be positive");
    let accounts = generate_accounts(args.accounts);
    let batches = generate_batches(&args);
    let events: usize = batches.iter().map(Vec::len).sum();
    ensure!(
        events == args.transfers,
        "generated {events} events, wanted {}",
        args.transfers
    );

    ensure!(args.repeat > 0, "--repeat must be positive");
    let mut baseline = Duration::MAX;
    let mut engine: Option<EngineRun> = None;
    for _ in 0..args.repeat {
        baseline = baseline.min(run_baseline(&args, &accounts, &batches));
        let run = run_engine(&args, &accounts, &batches).context("engine run")?;
        if let Some(best) = &engine {
            ensure!(
                best.digest == run.digest,
                "engine runs disagree on the digest"
            );
        }
        if engine
            .as_ref()
            .is_none_or(|best| run.elapsed < best.elapsed)
        {
            engine = Some(run);
        }
    }
    let engine = engine.expect("at least one run");

    let per_second = |elapsed: Duration| args.transfers as f64 / elapsed.as_secs_f64();
    let transfers_per_second = per_second(engine.elapsed);
    let baseline_per_second = per_second(baseline);
    let ratio = transfers_per_second / baseline_per_second;
    println!(
        "engine, workload {}: {} transfers over {} accounts in {} batches of up to {}, best of {} runs",
        args.workload.name(),
        args.transfers,
        args.accounts,
        batches.len(),
        args.batch_events,
        args.repeat
    );
    println!(
        "  ledger:   {:>12.0} transfers/s ({:.3} s), {} not ok",
        transfers_per_second,
        engine.elapsed.as_secs_f64(),
        engine.failed
    );
    println!(
        "  baseline: {:>12.0} transfers/s ({:.3} s): map lookups + two additions, no checks",
        baseline_per_second,
        baseline.as_secs_f64()
    );
    println!("  ratio:    {ratio:.3}");
    println!(
        "  memory:   {} (TALLY_HUGE_PAGES=off for 4 KiB pages)",
        if tally_api::huge_pages::huge_pages_tunable_set() {
            "transparent huge pages, as `tally start` asks for"
        } else {
            "4 KiB pages"
        }
    );
    println!(
        "  batch latency (us): p50 {} p99 {} max {}",
        engine.latency_us.value_at_quantile(0.5),
        engine.latency_us.value_at_quantile(0.99),
        engine.latency_us.max()
    );
    println!(
        "  memory by capacity: {:.1} bytes/account (record + list heads + id index), {:.1} bytes/transfer",
        engine.bytes_per_account, engine.bytes_per_transfer
    );
    let summary = serde_json::json!({
        "benchmark": "engine",
        "workload": args.workload.name(),
        "transfers": args.transfers,
        "accounts": args.accounts,
        "batch_events": args.batch_events,
        "seconds": engine.elapsed.as_secs_f64(),
        "repeat": args.repeat,
        "ledger": if args.grow { "new" } else { "with_capacity" },
        "huge_pages": tally_api::huge_pages::huge_pages_tunable_set(),
        "transfers_per_second": transfers_per_second.round(),
        "baseline_per_second": baseline_per_second.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "not_ok": engine.failed,
        "batch_latency_us_p50": engine.latency_us.value_at_quantile(0.5),
        "batch_latency_us_p99": engine.latency_us.value_at_quantile(0.99),
        "bytes_per_account": (engine.bytes_per_account * 10.0).round() / 10.0,
        "bytes_per_account_method": "capacity of the account records, list heads and id index",
        "bytes_per_transfer": (engine.bytes_per_transfer * 10.0).round() / 10.0,
        "digest": format!("{:032x}", engine.digest),
    });
    println!("{summary}");
    Ok(())
}
