//! Workload generators: what transfers a load run sends, and what their answers must be.
//!
//! Every run owns its ids: the top 64 bits of every account and transfer id are the run's random
//! `prefix`, so a run never collides with data already on the target, and the accounts it creates
//! are touched by its own transfers only (which is what lets the verification compare balances
//! with what was acknowledged). Transfer ids are `prefix | stream << 40 | sequence`: stream 0 is
//! set-up, stream `c + 1` is connection `c`, each counting its own sequence.
//!
//! Each connection has its own `Generator` (its own seeded random stream, pending queue and
//! recent-transfers ring), used by one task at a time, so a post follows its pending transfer's
//! acknowledgement and a retry repeats an answered transfer.
//!
//! The random streams are `SmallRng` (xoshiro256++), not a cryptographic generator: the load
//! generator shares the machine with the node it measures, and ChaCha8 took about 3% of both
//! cores at 2M transfers/s. Nothing here needs unpredictability, only a seed that repeats.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::Rng;
use rand::SeedableRng;
use tally_engine::Account;
use tally_engine::AccountFlags;
use tally_engine::CreateTransferResult;
use tally_engine::Transfer;
use tally_engine::TransferFlags;

/// What every funded account starts with (uniform, hot, two-phase, burst): far more than a run can
/// move out of it, so balance checks are made and never fail.
pub(crate) const FUNDING_AMOUNT: u128 = 1_000_000_000_000_000;
/// Accounts of the `hot` workload's hot set.
pub(crate) const HOT_ACCOUNTS_COUNT: u64 = 10;
/// Percent of `hot` transfers whose debit and credit accounts are both in the hot set.
pub(crate) const HOT_PERCENT: u32 = 10;
/// `wallets`: accounts per user.
pub(crate) const WALLETS_PER_USER: u64 = 3;
/// `wallets`: per mille of operations that resend an answered deposit or withdrawal unchanged.
pub(crate) const RETRY_PER_MILLE: u32 = 10;
/// `two-phase`: acknowledged pending transfers waiting to be posted or voided, per connection.
pub(crate) const PENDING_QUEUE_MAX: usize = 100_000;
/// `wallets`: answered deposits and withdrawals kept for retries, per connection.
pub(crate) const RECENT_MAX: usize = 1024;
/// Largest transfer amount of `uniform`, `hot`, `two-phase` and `burst`.
pub(crate) const AMOUNT_MAX: u64 = 1000;
/// Ledger of every account a run creates.
pub(crate) const LEDGER: u32 = 1;
/// Transfer code (reason) of the set-up funding and of plain transfers.
const CODE_TRANSFER: u16 = 1;
const CODE_DEPOSIT: u16 = 2;
const CODE_WITHDRAWAL: u16 = 3;
const CODE_MOVE: u16 = 4;
const CODE_FEE: u16 = 5;
const ACCOUNT_CODE_OPERATOR: u16 = 100;
const ACCOUNT_CODE_USER: u16 = 200;
/// Bits of a transfer id below the stream number.
const STREAM_SHIFT: u32 = 40;
/// The largest stream number (connections + set-up).
pub(crate) const STREAMS_MAX: u64 = (1 << 23) - 1;

const _: () = assert!(HOT_ACCOUNTS_COUNT >= 2);
const _: () = assert!(HOT_PERCENT <= 100);
const _: () = assert!(RETRY_PER_MILLE < 1000);
const _: () = assert!(STREAM_SHIFT + 23 <= 64);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Transfers between two accounts drawn uniformly.
    Uniform,
    /// Like uniform, but 10% of transfers move between two of 10 hot accounts.
    Hot,
    /// Pending transfers, later posted (70%) or voided (30%).
    TwoPhase,
    /// Users with 3 wallets: deposits, linked wallet-to-wallet moves with a fee, withdrawals,
    /// and ~1% idempotent retries of answered deposits and withdrawals.
    Wallets,
    /// Uniform transfers at the open-loop rate with a 10x spike for 10 s (needs --rate).
    Burst,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Hot => "hot",
            Workload::TwoPhase => "two-phase",
            Workload::Wallets => "wallets",
            Workload::Burst => "burst",
        }
    }

    /// Whether set-up funds every user account from the operator account.
    fn funded(self) -> bool {
        self != Workload::Wallets
    }
}

/// The ids of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Top 64 bits of every id of the run: neither 0 nor `u64::MAX`.
    pub(crate) prefix: u64,
    /// User accounts (the operator account is extra).
    pub(crate) accounts_count: u64,
}

impl Layout {
    pub(crate) fn new(prefix: u64, accounts_count: u64) -> Layout {
        assert!(prefix != 0 && prefix != u64::MAX);
        assert!(accounts_count >= HOT_ACCOUNTS_COUNT);
        assert!(accounts_count >= 2 * WALLETS_PER_USER);
        Layout {
            prefix,
            accounts_count,
        }
    }

    /// Account `index`: 0 is the operator, 1..=accounts_count the users' accounts.
    pub(crate) fn account_id(&self, index: u64) -> u128 {
        assert!(index <= self.accounts_count);
        (u128::from(self.prefix) << 64) | u128::from(index + 1)
    }

    pub(crate) fn transfer_id(&self, stream: u64, sequence: u64) -> u128 {
        assert!(stream <= STREAMS_MAX);
        assert!(sequence > 0 && sequence < 1 << STREAM_SHIFT);
        (u128::from(self.prefix) << 64) | u128::from(stream << STREAM_SHIFT | sequence)
    }

    /// Every account id of the run, operator first.
    pub(crate) fn account_ids(&self) -> impl Iterator<Item = u128> + '_ {
        (0..=self.accounts_count).map(|index| self.account_id(index))
    }

    /// The operator account and the users' accounts (which must not go below zero).
    pub(crate) fn accounts(&self) -> Vec<Account> {
        (0..=self.accounts_count)
            .map(|index| Account {
                id: self.account_id(index),
                ledger: LEDGER,
                code: if index == 0 {
                    ACCOUNT_CODE_OPERATOR
                } else {
                    ACCOUNT_CODE_USER
                },
                flags: if index == 0 {
                    0
                } else {
                    AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                },
                ..Account::default()
            })
            .collect()
    }

    /// Set-up transfers (stream 0): `FUNDING_AMOUNT` from the operator to every user account,
    /// for the workloads that start funded.
    pub(crate) fn funding(&self, workload: Workload) -> Vec<Transfer> {
        if !workload.funded() {
            return Vec::new();
        }
        (1..=self.accounts_count)
            .map(|index| Transfer {
                id: self.transfer_id(0, index),
                debit_account_id: self.account_id(0),
                credit_account_id: self.account_id(index),
                amount: FUNDING_AMOUNT,
                ledger: LEDGER,
                code: CODE_TRANSFER,
                ..Transfer::default()
            })
            .collect()
    }
}

/// What the answer to one event of a batch must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A new event: any result is a valid business answer.
    Fresh,
    /// An unchanged resend of an answered event whose result was `original`.
    Retry { original: u32 },
}

/// One request's events. The transfers are shared, not copied, with the request body that
/// carries them (`Bytes::from_owner`): a batch of 8189 is a megabyte.
pub(crate) struct Batch {
    pub(crate) transfers: Arc<Vec<Transfer>>,
    pub(crate) expects: Vec<Expect>,
    /// For a batch of fresh transfers that nothing needs to remember once applied (no pending
    /// transfer, no deposit or withdrawal to retry): their money, summed as the batch was made,
    /// so that a batch answered all `ok` is counted without reading its megabyte again.
    plain: Option<Money>,
}

/// Amounts moved by transfers, by kind (see `Outcome`).
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Money {
    posted: u128,
    pending_reserved: u128,
    pending_released: u128,
}

impl Money {
    fn of(transfers: &[Transfer]) -> Money {
        let mut money = Money::default();
        transfers.iter().for_each(|transfer| money.count(transfer));
        money
    }

    fn count(&mut self, transfer: &Transfer) {
        if transfer.has_flag(TransferFlags::PENDING) {
            self.pending_reserved += transfer.amount;
        } else if transfer.has_flag(TransferFlags::POST_PENDING_TRANSFER) {
            self.pending_released += transfer.amount;
            self.posted += transfer.amount;
        } else if transfer.has_flag(TransferFlags::VOID_PENDING_TRANSFER) {
            self.pending_released += transfer.amount;
        } else {
            self.posted += transfer.amount;
        }
    }
}

/// A batch being made.
#[derive(Default)]
struct BatchBuilder {
    transfers: Vec<Transfer>,
    expects: Vec<Expect>,
}

/// What the answers to a connection's batches added up to.
#[derive(Default, Clone)]
pub(crate) struct Outcome {
    /// Fresh transfers answered `ok` (or `exists` to a resend after an unknown outcome).
    pub(crate) transfers_ok: u64,
    /// Every answer by result code (retries included).
    pub(crate) results: BTreeMap<u32, u64>,
    pub(crate) retries: u64,
    /// Retries whose answer was not the one idempotency promises.
    pub(crate) retry_mismatches: u64,
    /// Amount posted by acknowledged transfers (plain, linked and post-pending).
    pub(crate) posted_amount: u128,
    /// Amount reserved by acknowledged pending transfers.
    pub(crate) pending_reserved_amount: u128,
    /// Amount released from pending by acknowledged posts and voids.
    pub(crate) pending_released_amount: u128,
}

impl Outcome {
    fn add_money(&mut self, money: &Money) {
        self.posted_amount += money.posted;
        self.pending_reserved_amount += money.pending_reserved;
        self.pending_released_amount += money.pending_released;
    }

    pub(crate) fn merge(&mut self, other: &Outcome) {
        self.transfers_ok += other.transfers_ok;
        for (code, count) in &other.results {
            *self.results.entry(*code).or_default() += count;
        }
        self.retries += other.retries;
        self.retry_mismatches += other.retry_mismatches;
        self.posted_amount += other.posted_amount;
        self.pending_reserved_amount += other.pending_reserved_amount;
        self.pending_released_amount += other.pending_released_amount;
    }
}

/// A uniform random sample of acknowledged transfers: reservoir sampling with Li's algorithm L,
/// which draws how many transfers to skip before the next one kept, so that a transfer not kept
/// (nearly all of them, at millions a second) costs a compare, not a random draw.
pub(crate) struct Sampler {
    capacity: usize,
    seen: u64,
    pub(crate) transfers: Vec<Transfer>,
    random: SmallRng,
    /// The largest of `capacity` uniform keys, as in the algorithm: shrinks as transfers are kept.
    w: f64,
    /// The `seen` count at which the next transfer is kept.
    next: u64,
}

impl Sampler {
    pub(crate) fn new(capacity: usize, seed: u64) -> Sampler {
        let mut sampler = Sampler {
            capacity,
            seen: 0,
            transfers: Vec::with_capacity(capacity.min(1 << 16)),
            random: SmallRng::seed_from_u64(seed),
            w: 1.0,
            // Set when the reservoir fills; a reservoir of none never keeps anything.
            next: if capacity == 0 { u64::MAX } else { 0 },
        };
        sampler.shrink_w();
        sampler
    }

    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    pub(crate) fn offer(&mut self, transfer: &Transfer) {
        self.seen += 1;
        if self.transfers.len() < self.capacity {
            self.transfers.push(*transfer);
            if self.transfers.len() == self.capacity {
                self.skip();
            }
            return;
        }
        if self.seen == self.next {
            let slot = self.random.gen_range(0..self.capacity);
            self.transfers[slot] = *transfer;
            self.shrink_w();
            self.skip();
        }
    }

    /// `offer` of each of `transfers` in turn, touching only those kept.
    pub(crate) fn offer_all(&mut self, transfers: &[Transfer]) {
        let mut rest = transfers;
        while let Some((first, tail)) = rest.split_first() {
            if self.transfers.len() < self.capacity {
                self.offer(first);
                rest = tail;
                continue;
            }
            // The next transfer kept is this many ahead (1: the first of `rest`).
            let ahead = self.next - self.seen;
            if ahead > rest.len() as u64 {
                self.seen += rest.len() as u64;
                return;
            }
            self.seen += ahead - 1;
            self.offer(&rest[ahead as usize - 1]);
            rest = &rest[ahead as usize..];
        }
    }

    /// A uniform draw in (0, 1]: the logarithms below must be finite.
    fn unit(&mut self) -> f64 {
        1.0 - self.random.gen::<f64>()
    }

    fn shrink_w(&mut self) {
        if self.capacity > 0 {
            self.w *= (self.unit().ln() / self.capacity as f64).exp();
        }
    }

    /// Sets `next` past the transfers to skip: geometric with success probability `w`.
    fn skip(&mut self) {
        let skipped = (self.unit().ln() / (1.0 - self.w).ln()).floor();
        // `w` near 1 (a reservoir barely full) gives a skip near 0; near 0, a skip beyond any run.
        let skipped = if skipped.is_finite() && skipped >= 0.0 {
            skipped.min(u64::MAX as f64 / 2.0) as u64
        } else {
            u64::MAX / 2
        };
        self.next = self.seen.saturating_add(skipped).saturating_add(1);
    }

    /// At most `capacity` transfers drawn from every sampler in proportion to what each saw:
    /// a stratified uniform sample of all of them.
    pub(crate) fn merge(
        samplers: Vec<Sampler>,
        capacity: usize,
        seed: u64,
    ) -> (Vec<Transfer>, u64) {
        let seen_total: u64 = samplers.iter().map(Sampler::seen).sum();
        let mut random = SmallRng::seed_from_u64(seed);
        let mut merged = Vec::new();
        for mut sampler in samplers {
            let share = if seen_total == 0 {
                0
            } else {
                (capacity as u128 * u128::from(sampler.seen)).div_ceil(u128::from(seen_total))
                    as usize
            };
            // A partial Fisher-Yates shuffle picks `share` of the reservoir at random.
            let take = share.min(sampler.transfers.len());
            for index in 0..take {
                let other = random.gen_range(index..sampler.transfers.len());
                sampler.transfers.swap(index, other);
            }
            merged.extend_from_slice(&sampler.transfers[..take]);
        }
        merged.truncate(capacity);
        (merged, seen_total)
    }
}

/// The transfers of one connection.
pub(crate) struct Generator {
    workload: Workload,
    layout: Layout,
    stream: u64,
    sequence_next: u64,
    random: SmallRng,
    /// Acknowledged pending transfers, oldest first.
    pending: VecDeque<Transfer>,
    /// Answered deposits and withdrawals with their results, for retries.
    recent: VecDeque<(Transfer, u32)>,
}

impl Generator {
    /// `stream` is the connection number plus one (stream 0 is set-up).
    pub(crate) fn new(workload: Workload, layout: Layout, stream: u64, seed: u64) -> Generator {
        assert!((1..=STREAMS_MAX).contains(&stream));
        Generator {
            workload,
            layout,
            stream,
            sequence_next: 1,
            random: SmallRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            pending: VecDeque::new(),
            recent: VecDeque::new(),
        }
    }

    /// The next request: whole operations (a linked chain never straddles two requests) until
    /// `events_max` events or `operations_max` operations.
    pub(crate) fn next_batch(&mut self, events_max: usize, operations_max: usize) -> Batch {
        assert!(events_max >= 2, "a linked move needs two events");
        assert!(operations_max >= 1);
        let mut batch = BatchBuilder::default();
        let mut operations = 0;
        while operations < operations_max && batch.transfers.len() + 2 <= events_max {
            self.push_operation(&mut batch);
            operations += 1;
        }
        // Fill the last slot with a one-event operation if one fits.
        if operations < operations_max && batch.transfers.len() < events_max {
            self.push_single(&mut batch);
        }
        assert!(!batch.transfers.is_empty() && batch.transfers.len() <= events_max);
        assert_eq!(batch.transfers.len(), batch.expects.len());
        let plain = batch
            .transfers
            .iter()
            .zip(&batch.expects)
            .all(|(transfer, expect)| *expect == Expect::Fresh && !self.remembers(transfer))
            .then(|| Money::of(&batch.transfers));
        Batch {
            transfers: Arc::new(batch.transfers),
            expects: batch.expects,
            plain,
        }
    }

    fn next_id(&mut self) -> u128 {
        let id = self.layout.transfer_id(self.stream, self.sequence_next);
        self.sequence_next += 1;
        id
    }

    fn push_operation(&mut self, batch: &mut BatchBuilder) {
        match self.workload {
            Workload::Uniform | Workload::Burst | Workload::Hot | Workload::TwoPhase => {
                self.push_single(batch)
            }
            Workload::Wallets => self.push_wallet_operation(batch),
        }
    }

    /// An operation of exactly one event.
    fn push_single(&mut self, batch: &mut BatchBuilder) {
        match self.workload {
            Workload::Uniform | Workload::Burst => {
                let (debit, credit) = self.distinct_pair(1, self.layout.accounts_count);
                self.push_plain(batch, debit, credit);
            }
            Workload::Hot => {
                let (debit, credit) = if self.random.gen_range(0..100) < HOT_PERCENT {
                    self.distinct_pair(1, HOT_ACCOUNTS_COUNT)
                } else {
                    self.distinct_pair(1, self.layout.accounts_count)
                };
                self.push_plain(batch, debit, credit);
            }
            Workload::TwoPhase => self.push_two_phase(batch),
            Workload::Wallets => {
                if self.random.gen_bool(0.5) {
                    self.push_deposit(batch)
                } else {
                    self.push_withdrawal(batch)
                }
            }
        }
    }

    /// Two different account indexes in `low..=high`.
    fn distinct_pair(&mut self, low: u64, high: u64) -> (u64, u64) {
        let debit = self.random.gen_range(low..=high);
        let mut credit = self.random.gen_range(low..high);
        if credit >= debit {
            credit += 1;
        }
        (debit, credit)
    }

    fn push_plain(&mut self, batch: &mut BatchBuilder, debit: u64, credit: u64) {
        let amount = u128::from(self.random.gen_range(1..=AMOUNT_MAX));
        let transfer = Transfer {
            id: self.next_id(),
            debit_account_id: self.layout.account_id(debit),
            credit_account_id: self.layout.account_id(credit),
            amount,
            ledger: LEDGER,
            code: CODE_TRANSFER,
            ..Transfer::default()
        };
        batch.transfers.push(transfer);
        batch.expects.push(Expect::Fresh);
    }

    fn push_two_phase(&mut self, batch: &mut BatchBuilder) {
        let resolve = self.pending.len() >= PENDING_QUEUE_MAX
            || (!self.pending.is_empty() && self.random.gen_bool(0.5));
        if resolve {
            let pending = self.pending.pop_front().expect("pending is not empty");
            let flags = if self.random.gen_range(0..10) < 7 {
                TransferFlags::POST_PENDING_TRANSFER
            } else {
                TransferFlags::VOID_PENDING_TRANSFER
            };
            let transfer = Transfer {
                id: self.next_id(),
                debit_account_id: pending.debit_account_id,
                credit_account_id: pending.credit_account_id,
                amount: pending.amount,
                pending_id: pending.id,
                ledger: pending.ledger,
                code: pending.code,
                flags,
                ..Transfer::default()
            };
            batch.transfers.push(transfer);
            batch.expects.push(Expect::Fresh);
            return;
        }
        let (debit, credit) = self.distinct_pair(1, self.layout.accounts_count);
        let amount = u128::from(self.random.gen_range(1..=AMOUNT_MAX));
        let transfer = Transfer {
            id: self.next_id(),
            debit_account_id: self.layout.account_id(debit),
            credit_account_id: self.layout.account_id(credit),
            amount,
            ledger: LEDGER,
            code: CODE_TRANSFER,
            flags: TransferFlags::PENDING,
            ..Transfer::default()
        };
        batch.transfers.push(transfer);
        batch.expects.push(Expect::Fresh);
    }

    fn users_count(&self) -> u64 {
        self.layout.accounts_count / WALLETS_PER_USER
    }

    /// Account index of `wallet` of `user`.
    fn wallet(&self, user: u64, wallet: u64) -> u64 {
        1 + user * WALLETS_PER_USER + wallet
    }

    fn random_wallet(&mut self) -> u64 {
        let user = self.random.gen_range(0..self.users_count());
        let wallet = self.random.gen_range(0..WALLETS_PER_USER);
        self.wallet(user, wallet)
    }

    fn push_wallet_operation(&mut self, batch: &mut BatchBuilder) {
        let roll = self.random.gen_range(0..1000);
        if roll < RETRY_PER_MILLE && !self.recent.is_empty() {
            let index = self.random.gen_range(0..self.recent.len());
            let (transfer, original) = self.recent[index];
            batch.transfers.push(transfer);
            batch.expects.push(Expect::Retry { original });
        } else if roll < 300 {
            self.push_deposit(batch);
        } else if roll < 760 {
            self.push_move(batch);
        } else {
            self.push_withdrawal(batch);
        }
    }

    fn push_deposit(&mut self, batch: &mut BatchBuilder) {
        let wallet = self.random_wallet();
        let transfer = Transfer {
            id: self.next_id(),
            debit_account_id: self.layout.account_id(0),
            credit_account_id: self.layout.account_id(wallet),
            amount: u128::from(self.random.gen_range(1_000..=10_000u64)),
            ledger: LEDGER,
            code: CODE_DEPOSIT,
            ..Transfer::default()
        };
        batch.transfers.push(transfer);
        batch.expects.push(Expect::Fresh);
    }

    fn push_withdrawal(&mut self, batch: &mut BatchBuilder) {
        let wallet = self.random_wallet();
        let transfer = Transfer {
            id: self.next_id(),
            debit_account_id: self.layout.account_id(wallet),
            credit_account_id: self.layout.account_id(0),
            amount: u128::from(self.random.gen_range(100..=2_000u64)),
            ledger: LEDGER,
            code: CODE_WITHDRAWAL,
            ..Transfer::default()
        };
        batch.transfers.push(transfer);
        batch.expects.push(Expect::Fresh);
    }

    /// A move between two wallets of one user and its fee to the operator, linked: both or
    /// neither.
    fn push_move(&mut self, batch: &mut BatchBuilder) {
        let user = self.random.gen_range(0..self.users_count());
        let from = self.random.gen_range(0..WALLETS_PER_USER);
        let mut to = self.random.gen_range(0..WALLETS_PER_USER - 1);
        if to >= from {
            to += 1;
        }
        let from = self.layout.account_id(self.wallet(user, from));
        let to = self.layout.account_id(self.wallet(user, to));
        let amount = u128::from(self.random.gen_range(100..=1_000u64));
        let fee = u128::from(self.random.gen_range(1..=10u64));
        batch.transfers.push(Transfer {
            id: self.next_id(),
            debit_account_id: from,
            credit_account_id: to,
            amount,
            ledger: LEDGER,
            code: CODE_MOVE,
            flags: TransferFlags::LINKED,
            ..Transfer::default()
        });
        batch.transfers.push(Transfer {
            id: self.next_id(),
            debit_account_id: from,
            credit_account_id: self.layout.account_id(0),
            amount: fee,
            ledger: LEDGER,
            code: CODE_FEE,
            ..Transfer::default()
        });
        batch.expects.push(Expect::Fresh);
        batch.expects.push(Expect::Fresh);
    }

    /// Account for the answers to `batch`. `resent`: the batch was sent again after an unknown
    /// outcome, so `exists` means the first attempt was applied.
    pub(crate) fn acknowledge(
        &mut self,
        batch: &Batch,
        codes: &[u32],
        resent: bool,
        outcome: &mut Outcome,
        sampler: &mut Sampler,
    ) {
        assert_eq!(codes.len(), batch.transfers.len());
        let ok = CreateTransferResult::Ok.code();
        let exists = CreateTransferResult::Exists.code();
        // Answers come in long runs of one code (all `ok`, mostly): one map update per run.
        for run in codes.chunk_by(|left, right| left == right) {
            *outcome.results.entry(run[0]).or_default() += run.len() as u64;
        }
        if let Some(money) = &batch.plain {
            if codes.iter().all(|code| *code == ok) {
                outcome.transfers_ok += codes.len() as u64;
                outcome.add_money(money);
                sampler.offer_all(&batch.transfers);
                return;
            }
        }
        let mut money = Money::default();
        for ((transfer, expect), &code) in batch.transfers.iter().zip(&batch.expects).zip(codes) {
            match *expect {
                Expect::Retry { original } => {
                    outcome.retries += 1;
                    if !retry_answer_is_consistent(original, code) {
                        outcome.retry_mismatches += 1;
                    }
                }
                Expect::Fresh => {
                    let applied = code == ok || (resent && code == exists);
                    if applied {
                        outcome.transfers_ok += 1;
                        money.count(transfer);
                        sampler.offer(transfer);
                    }
                    self.remember(transfer, code, applied);
                }
            }
        }
        outcome.add_money(&money);
    }

    /// Whether `remember` keeps anything of `transfer` once answered.
    fn remembers(&self, transfer: &Transfer) -> bool {
        transfer.has_flag(TransferFlags::PENDING) || self.retriable(transfer)
    }

    fn retriable(&self, transfer: &Transfer) -> bool {
        self.workload == Workload::Wallets
            && (transfer.code == CODE_DEPOSIT || transfer.code == CODE_WITHDRAWAL)
    }

    fn remember(&mut self, transfer: &Transfer, code: u32, applied: bool) {
        if applied && transfer.has_flag(TransferFlags::PENDING) {
            self.pending.push_back(*transfer);
        }
        if self.retriable(transfer) {
            if self.recent.len() == RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back((*transfer, code));
        }
    }
}

/// Whether `answer` is what an unchanged resend of an event first answered `original` must get:
/// `exists` after `ok`, `id_already_failed` after a failure that burned the id, the same result
/// after a failure of the event's own fields.
pub(crate) fn retry_answer_is_consistent(original: u32, answer: u32) -> bool {
    let Some(original) = CreateTransferResult::from_code(original) else {
        return false;
    };
    let expected = if original == CreateTransferResult::Ok {
        CreateTransferResult::Exists
    } else if original.is_transient() {
        CreateTransferResult::IdAlreadyFailed
    } else if original == CreateTransferResult::Exists {
        CreateTransferResult::Exists
    } else {
        original
    };
    answer == expected.code()
}

/// Intended send times of an open-loop run: request `k` is due at a time fixed in advance, so
/// a slow answer delays nothing else's due time (no coordinated omission).
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// (start second, requests per second), by start.
    segments: Vec<(f64, f64)>,
    duration_s: f64,
}

/// The burst: how much faster and for how long.
pub(crate) const BURST_MULTIPLIER: f64 = 10.0;
pub(crate) const BURST_SECONDS: f64 = 10.0;

impl Schedule {
    pub(crate) fn constant(requests_per_second: f64, duration_s: f64) -> Schedule {
        assert!(requests_per_second > 0.0 && duration_s > 0.0);
        Schedule {
            segments: vec![(0.0, requests_per_second)],
            duration_s,
        }
    }

    /// `requests_per_second`, ten times that from `spike_start_s` for 10 s, then back.
    pub(crate) fn burst(requests_per_second: f64, duration_s: f64, spike_start_s: f64) -> Schedule {
        assert!(requests_per_second > 0.0);
        assert!(spike_start_s >= 0.0 && spike_start_s + BURST_SECONDS <= duration_s);
        let mut segments = Vec::new();
        if spike_start_s > 0.0 {
            segments.push((0.0, requests_per_second));
        }
        segments.push((spike_start_s, requests_per_second * BURST_MULTIPLIER));
        segments.push((spike_start_s + BURST_SECONDS, requests_per_second));
        Schedule {
            segments,
            duration_s,
        }
    }

    /// When request `index` (0-based) is due, in seconds from the start; `None` past the end.
    pub(crate) fn due_s(&self, index: u64) -> Option<f64> {
        let mut requests_before = 0.0;
        for (position, &(start_s, rate)) in self.segments.iter().enumerate() {
            let end_s = self
                .segments
                .get(position + 1)
                .map_or(self.duration_s, |next| next.0);
            let requests_in = (end_s - start_s) * rate;
            if (index as f64) < requests_before + requests_in {
                return Some(start_s + (index as f64 - requests_before) / rate);
            }
            requests_before += requests_in;
        }
        None
    }

    /// Requests due over the whole run.
    pub(crate) fn requests_count(&self) -> u64 {
        let mut total = 0.0;
        for (position, &(start_s, rate)) in self.segments.iter().enumerate() {
            let end_s = self
                .segments
                .get(position + 1)
                .map_or(self.duration_s, |next| next.0);
            total += (end_s - start_s) * rate;
        }
        total.ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(0x1234_5678, 300)
    }

    fn answer_all(generator: &mut Generator, batch: &Batch, code: u32) -> Outcome {
        let mut outcome = Outcome::default();
        let mut sampler = Sampler::new(10, 1);
        let codes = vec![code; batch.transfers.len()];
        generator.acknowledge(batch, &codes, false, &mut outcome, &mut sampler);
        outcome
    }

    #[test]
    fn ids_are_unique_nonzero_and_carry_the_run_prefix() {
        let layout = layout();
        for workload in [Workload::Uniform, Workload::Hot, Workload::TwoPhase] {
            let mut seen = std::collections::HashSet::new();
            for stream in 1..=3 {
                let mut generator = Generator::new(workload, layout, stream, 7);
                for _ in 0..20 {
                    let batch = generator.next_batch(100, usize::MAX);
                    assert_eq!(batch.transfers.len(), 100);
                    for transfer in batch.transfers.iter() {
                        assert!(seen.insert(transfer.id), "{workload:?} repeated an id");
                        assert_eq!((transfer.id >> 64) as u64, layout.prefix);
                        assert_ne!(transfer.debit_account_id, transfer.credit_account_id);
                        assert!(transfer.amount >= 1 && transfer.amount <= u128::from(AMOUNT_MAX));
                        assert_eq!(transfer.ledger, LEDGER);
                    }
                    answer_all(&mut generator, &batch, 0);
                }
            }
        }
    }

    #[test]
    fn hot_sends_about_a_tenth_between_hot_accounts() {
        let layout = Layout::new(9, 100_000);
        let mut generator = Generator::new(Workload::Hot, layout, 1, 3);
        let batch = generator.next_batch(100_000, usize::MAX);
        let hot = |id: u128| id <= layout.account_id(HOT_ACCOUNTS_COUNT);
        let both_hot = batch
            .transfers
            .iter()
            .filter(|transfer| hot(transfer.debit_account_id) && hot(transfer.credit_account_id))
            .count();
        assert!(
            (9_000..=11_000).contains(&both_hot),
            "{both_hot} of 100000 hot"
        );
    }

    #[test]
    fn two_phase_posts_or_voids_only_acknowledged_pending_transfers_once() {
        let mut generator = Generator::new(Workload::TwoPhase, layout(), 1, 5);
        let mut acknowledged = std::collections::HashMap::new();
        let mut resolved = std::collections::HashSet::new();
        let mut total = Outcome::default();
        for _ in 0..50 {
            let batch = generator.next_batch(64, usize::MAX);
            for transfer in batch.transfers.iter() {
                if transfer.has_flag(TransferFlags::PENDING) {
                    assert_eq!(transfer.pending_id, 0);
                } else {
                    let pending: &Transfer = acknowledged
                        .get(&transfer.pending_id)
                        .expect("resolves an acknowledged pending transfer");
                    assert!(resolved.insert(transfer.pending_id), "resolved twice");
                    assert_eq!(transfer.amount, pending.amount);
                    assert_eq!(transfer.debit_account_id, pending.debit_account_id);
                }
            }
            total.merge(&answer_all(&mut generator, &batch, 0));
            for transfer in batch.transfers.iter() {
                if transfer.has_flag(TransferFlags::PENDING) {
                    acknowledged.insert(transfer.id, *transfer);
                }
            }
        }
        assert!(!resolved.is_empty());
        let outstanding: u128 = acknowledged
            .iter()
            .filter(|(id, _)| !resolved.contains(id))
            .map(|(_, transfer)| transfer.amount)
            .sum();
        assert_eq!(
            total.pending_reserved_amount - total.pending_released_amount,
            outstanding
        );
    }

    #[test]
    fn wallet_moves_are_linked_pairs_within_one_user_and_never_split() {
        let layout = layout();
        let mut generator = Generator::new(Workload::Wallets, layout, 2, 11);
        for _ in 0..200 {
            let batch = generator.next_batch(9, usize::MAX);
            assert!(batch.transfers.len() <= 9);
            let last = batch.transfers.last().unwrap();
            assert!(!last.has_flag(TransferFlags::LINKED), "chain left open");
            for (index, transfer) in batch.transfers.iter().enumerate() {
                if transfer.has_flag(TransferFlags::LINKED) {
                    let fee = &batch.transfers[index + 1];
                    assert_eq!(fee.debit_account_id, transfer.debit_account_id);
                    assert_eq!(fee.credit_account_id, layout.account_id(0));
                    let user = |id: u128| ((id as u64) - 2) / WALLETS_PER_USER;
                    assert_eq!(
                        user(transfer.debit_account_id),
                        user(transfer.credit_account_id)
                    );
                }
            }
            answer_all(&mut generator, &batch, 0);
        }
    }

    #[test]
    fn wallet_retries_are_unchanged_resends_of_answered_transfers() {
        let mut generator = Generator::new(Workload::Wallets, layout(), 1, 13);
        let mut answered = std::collections::HashMap::new();
        let mut retries = 0;
        for round in 0..400 {
            let batch = generator.next_batch(50, usize::MAX);
            for (transfer, expect) in batch.transfers.iter().zip(&batch.expects) {
                if let Expect::Retry { original } = expect {
                    retries += 1;
                    assert_eq!(answered.get(&transfer.id), Some(&(*transfer, *original)));
                }
            }
            // Alternate ok and exceeds_credits so both kinds of retries occur.
            let code = if round % 2 == 0 {
                0
            } else {
                CreateTransferResult::ExceedsCredits.code()
            };
            answer_all(&mut generator, &batch, code);
            for (transfer, expect) in batch.transfers.iter().zip(&batch.expects) {
                if *expect == Expect::Fresh {
                    answered.insert(transfer.id, (*transfer, code));
                }
            }
        }
        // ~1% of ~8000 operations.
        assert!((20..=200).contains(&retries), "{retries} retries");
    }

    #[test]
    fn retry_answers_follow_the_idempotency_rules() {
        let code = |result: CreateTransferResult| result.code();
        use CreateTransferResult as R;
        let table = [
            (R::Ok, R::Exists, true),
            (R::Ok, R::Ok, false),
            (R::ExceedsCredits, R::IdAlreadyFailed, true),
            (R::ExceedsCredits, R::Ok, false),
            (R::AccountsMustBeDifferent, R::AccountsMustBeDifferent, true),
            (R::Exists, R::Exists, true),
        ];
        for (original, answer, consistent) in table {
            assert_eq!(
                retry_answer_is_consistent(code(original), code(answer)),
                consistent,
                "{original} then {answer}"
            );
        }
    }

    #[test]
    fn acknowledged_money_is_counted_once() {
        let mut generator = Generator::new(Workload::Uniform, layout(), 1, 17);
        let batch = generator.next_batch(10, usize::MAX);
        let mut codes = vec![0; 10];
        codes[3] = CreateTransferResult::ExceedsCredits.code();
        let mut outcome = Outcome::default();
        let mut sampler = Sampler::new(100, 1);
        generator.acknowledge(&batch, &codes, false, &mut outcome, &mut sampler);
        let expected: u128 = batch
            .transfers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != 3)
            .map(|(_, transfer)| transfer.amount)
            .sum();
        assert_eq!(outcome.posted_amount, expected);
        assert_eq!(outcome.transfers_ok, 9);
        assert_eq!(sampler.transfers.len(), 9);
        // A resend after an unknown outcome: `exists` means the first attempt was applied.
        let mut resent = Outcome::default();
        let exists = vec![CreateTransferResult::Exists.code(); 10];
        generator.acknowledge(&batch, &exists, true, &mut resent, &mut sampler);
        assert_eq!(resent.transfers_ok, 10);
    }

    #[test]
    fn sampler_is_uniform_over_what_it_saw() {
        // 200 reservoirs of 100 out of 10,000 transfers each: every tenth of the stream should
        // hold a tenth of the 20,000 kept (2,000; a standard deviation is about 42).
        let mut deciles = [0u32; 10];
        for seed in 0..200 {
            let mut sampler = Sampler::new(100, seed);
            for id in 0..10_000u128 {
                sampler.offer(&Transfer {
                    id,
                    ..Transfer::default()
                });
            }
            assert_eq!(sampler.seen(), 10_000);
            assert_eq!(sampler.transfers.len(), 100);
            let mut ids: Vec<u128> = sampler
                .transfers
                .iter()
                .map(|transfer| transfer.id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 100, "a transfer kept twice");
            for id in ids {
                deciles[(id / 1_000) as usize] += 1;
            }
        }
        for (decile, count) in deciles.iter().enumerate() {
            assert!(
                (1_800..=2_200).contains(count),
                "decile {decile}: {count} of 20,000"
            );
        }
    }

    #[test]
    fn offering_a_slice_keeps_what_offering_one_by_one_keeps() {
        let transfers: Vec<Transfer> = (1..=50_000u128)
            .map(|id| Transfer {
                id,
                ..Transfer::default()
            })
            .collect();
        for capacity in [0, 1, 7, 1_000, 60_000] {
            let mut one_by_one = Sampler::new(capacity, 5);
            let mut sliced = Sampler::new(capacity, 5);
            for chunk in transfers.chunks(997) {
                chunk.iter().for_each(|transfer| one_by_one.offer(transfer));
                sliced.offer_all(chunk);
                assert_eq!(one_by_one.seen(), sliced.seen());
            }
            let ids = |sampler: &Sampler| -> Vec<u128> {
                sampler
                    .transfers
                    .iter()
                    .map(|transfer| transfer.id)
                    .collect()
            };
            assert_eq!(ids(&one_by_one), ids(&sliced), "capacity {capacity}");
            assert_eq!(sliced.transfers.len(), capacity.min(50_000));
        }
    }

    #[test]
    fn a_plain_batch_answered_ok_counts_as_one_by_one() {
        for workload in [Workload::Uniform, Workload::TwoPhase, Workload::Wallets] {
            let mut generator = Generator::new(workload, layout(), 1, 17);
            for _ in 0..20 {
                let batch = generator.next_batch(100, usize::MAX);
                let expected = Money::of(&batch.transfers);
                let codes = vec![CreateTransferResult::Ok.code(); batch.transfers.len()];
                let mut outcome = Outcome::default();
                let mut sampler = Sampler::new(10, 1);
                let fresh = batch.expects.iter().all(|expect| *expect == Expect::Fresh);
                generator.acknowledge(&batch, &codes, false, &mut outcome, &mut sampler);
                if fresh {
                    assert_eq!(outcome.transfers_ok, batch.transfers.len() as u64);
                    assert_eq!(outcome.posted_amount, expected.posted);
                    assert_eq!(outcome.pending_reserved_amount, expected.pending_reserved);
                    assert_eq!(outcome.pending_released_amount, expected.pending_released);
                }
                if workload == Workload::Uniform {
                    assert!(batch.plain.is_some());
                }
                if workload == Workload::TwoPhase {
                    assert!(batch.plain.is_none(), "pending transfers are remembered");
                }
            }
        }
    }

    #[test]
    fn sampler_keeps_a_bounded_proportional_sample() {
        let mut samplers = Vec::new();
        for (seed, count) in [(1, 9_000u64), (2, 1_000)] {
            let mut sampler = Sampler::new(500, seed);
            for id in 0..count {
                sampler.offer(&Transfer {
                    id: u128::from(seed << 32 | id),
                    ..Transfer::default()
                });
            }
            assert_eq!(sampler.transfers.len(), 500);
            samplers.push(sampler);
        }
        let (sample, seen) = Sampler::merge(samplers, 500, 3);
        assert_eq!(seen, 10_000);
        assert_eq!(sample.len(), 500);
        let from_second = sample
            .iter()
            .filter(|transfer| transfer.id >> 32 == 2)
            .count();
        assert_eq!(from_second, 50);
    }

    #[test]
    fn schedules_are_due_at_the_planned_rate() {
        let constant = Schedule::constant(100.0, 2.0);
        assert_eq!(constant.due_s(0), Some(0.0));
        assert_eq!(constant.due_s(150), Some(1.5));
        assert_eq!(constant.due_s(200), None);
        assert_eq!(constant.requests_count(), 200);
        let burst = Schedule::burst(10.0, 30.0, 10.0);
        // 100 requests in the first 10 s, 1000 in the spike, 100 after.
        assert_eq!(burst.requests_count(), 1200);
        assert_eq!(burst.due_s(100), Some(10.0));
        assert_eq!(burst.due_s(600), Some(15.0));
        assert_eq!(burst.due_s(1100), Some(20.0));
        assert_eq!(burst.due_s(1150), Some(25.0));
        assert_eq!(burst.due_s(1200), None);
        let mut previous = 0.0;
        for index in 0..1200 {
            let due = burst.due_s(index).unwrap();
            assert!(due >= previous);
            previous = due;
        }
    }
}
