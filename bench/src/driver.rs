//! The load loop shared by every system under test: connections, each with its own generator,
//! sending batches open-loop (each request due at a time fixed in advance; latency counted from
//! that time, so a slow answer cannot hide the requests queued behind it) or closed-loop (the
//! next request as soon as the previous answer is in; latency counted from the send).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tally_engine::Transfer;
use tokio::time::Instant;

use crate::stats;
use crate::stats::RunResult;
use crate::workload::Batch;
use crate::workload::Generator;
use crate::workload::Layout;
use crate::workload::Outcome;
use crate::workload::Sampler;
use crate::workload::Schedule;
use crate::workload::Workload;

/// After the run's end, a request still being retried (busy, unknown outcome) is given up after
/// this long and counted as an unknown outcome.
pub(crate) const DRAIN_GRACE_MS: u64 = 30_000;
/// First and largest pause before resending a request that found the server busy.
const BUSY_BACKOFF_FIRST_MS: u64 = 1;
const BUSY_BACKOFF_MAX_MS: u64 = 100;
/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL_MS: u64 = 250;
/// The last part of the wait for an open-loop request's due time, slept on a blocking thread
/// (`sleep_until_precise`): longer than tokio's timer is late (up to about 2 ms measured here).
const PRECISE_SLEEP_MS: u64 = 3;

/// What one attempt at a request came to.
pub(crate) enum Attempt {
    /// One result code per event.
    Answered(Vec<u32>),
    /// Refused before anything was accepted (busy, no leader, not connected): send it again.
    Busy(String),
    /// No answer, or an answer saying the outcome is unknown: send it again, same ids.
    Unknown(String),
    /// Refused for good (a 4xx): nothing was accepted; the batch is dropped.
    Refused(String),
}

/// A system under test, one per connection.
pub(crate) trait Backend: Send + 'static {
    fn submit(&mut self, transfers: &Arc<Vec<Transfer>>) -> impl Future<Output = Attempt> + Send;
}

/// How a run sends.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) workload: Workload,
    pub(crate) layout: Layout,
    pub(crate) seed: u64,
    pub(crate) connections: usize,
    /// Events per request at most.
    pub(crate) batch_events: usize,
    /// Operations per request at most (1 for single requests).
    pub(crate) operations_max: usize,
    pub(crate) duration: Duration,
    /// Open loop: when each request is due. Closed loop: `None`.
    pub(crate) schedule: Option<Schedule>,
    /// Acknowledged transfers kept for verification, at most.
    pub(crate) sample_max: usize,
}

/// What every connection's work added up to.
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) outcome: Outcome,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) unknown_outcomes: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) throughput_per_second: Vec<u64>,
    /// The p99 latency (ms) of the requests due in each second.
    pub(crate) p99_ms_per_second: Vec<f64>,
    pub(crate) elapsed: Duration,
    pub(crate) sample: Vec<Transfer>,
    pub(crate) acknowledged: u64,
}

impl Totals {
    /// The result of a run, without verification and memory figures.
    pub(crate) fn result(&self, system: &str, mode: &str, plan: &Plan) -> RunResult {
        let seconds = self.elapsed.as_secs_f64();
        RunResult {
            system: system.to_owned(),
            workload: plan.workload.name().to_owned(),
            mode: mode.to_owned(),
            loop_kind: if plan.schedule.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            rate_target: None,
            connections: plan.connections,
            batch_events: plan.batch_events,
            duration_s: stats::round_ms(seconds),
            requests: self.requests,
            transfers_ok: self.outcome.transfers_ok,
            transfers_per_second: (self.outcome.transfers_ok as f64 / seconds).round(),
            p50_ms: stats::quantile_ms(&self.latency, 0.5),
            p99_ms: stats::quantile_ms(&self.latency, 0.99),
            p999_ms: stats::quantile_ms(&self.latency, 0.999),
            max_ms: stats::max_ms(&self.latency),
            results: self
                .outcome
                .results
                .iter()
                .map(|(code, count)| (stats::result_name(*code), *count))
                .collect(),
            errors: self.errors.clone(),
            unknown_outcomes: self.unknown_outcomes,
            verification: None,
            server_peak_rss_bytes: None,
            accounts: plan.layout.accounts_count + 1,
            load_average: stats::load_average(),
            unix_time_s: stats::unix_time_s(),
            throughput_per_second: self.throughput_per_second.clone(),
            p99_ms_per_second: self.p99_ms_per_second.clone(),
            latency_histogram: stats::buckets(&self.latency),
        }
    }
}

/// Live counters for the progress bar.
#[derive(Default)]
struct Live {
    transfers_ok: AtomicU64,
    errors: AtomicU64,
}

struct Worker {
    requests: u64,
    outcome: Outcome,
    errors: BTreeMap<String, u64>,
    unknown_outcomes: u64,
    latency: Histogram<u64>,
    per_second: Vec<u64>,
    /// Latency (µs) of each request, by the second it was due in: 4 bytes a request, where a
    /// histogram a second would be over 100 KiB.
    latency_us_per_second: Vec<Vec<u32>>,
    sampler: Sampler,
}

/// Runs `plan` with one backend per connection; `label` names the progress bar.
pub(crate) async fn run<B: Backend>(
    plan: &Plan,
    backends: Vec<B>,
    label: &str,
) -> anyhow::Result<Totals> {
    assert_eq!(backends.len(), plan.connections);
    let start = Instant::now();
    let next_due = Arc::new(AtomicU64::new(0));
    let live = Arc::new(Live::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(show_progress(
        label.to_owned(),
        plan.duration,
        Arc::clone(&live),
        Arc::clone(&done),
    ));
    let mut tasks = Vec::new();
    for (connection, backend) in backends.into_iter().enumerate() {
        let generator =
            Generator::new(plan.workload, plan.layout, connection as u64 + 1, plan.seed);
        let plan = plan.clone();
        let next_due = Arc::clone(&next_due);
        let live = Arc::clone(&live);
        tasks.push(tokio::spawn(async move {
            work(
                &plan, backend, generator, connection, start, &next_due, &live,
            )
            .await
        }));
    }
    let mut workers = Vec::new();
    for task in tasks {
        workers.push(task.await?);
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    progress.await?;
    Ok(combine(workers, plan, elapsed))
}

fn combine(workers: Vec<Worker>, plan: &Plan, elapsed: Duration) -> Totals {
    let mut latency = stats::new_histogram();
    let mut outcome = Outcome::default();
    let mut errors = BTreeMap::new();
    let mut requests = 0;
    let mut unknown_outcomes = 0;
    let seconds = elapsed.as_secs() as usize + 1;
    let mut throughput_per_second = vec![0u64; seconds];
    let mut latency_us_per_second: Vec<Vec<u32>> = Vec::new();
    let mut samplers = Vec::new();
    for worker in workers {
        latency.add(&worker.latency).expect("same histogram bounds");
        outcome.merge(&worker.outcome);
        for (kind, count) in worker.errors {
            *errors.entry(kind).or_default() += count;
        }
        requests += worker.requests;
        unknown_outcomes += worker.unknown_outcomes;
        for (second, count) in worker.per_second.iter().enumerate() {
            throughput_per_second[second.min(seconds - 1)] += count;
        }
        for (second, latencies) in worker.latency_us_per_second.into_iter().enumerate() {
            at_second(&mut latency_us_per_second, second).extend(latencies);
        }
        samplers.push(worker.sampler);
    }
    // The last second is usually partial (the drain): keep it, it is what happened.
    while throughput_per_second.len() > 1 && throughput_per_second.last() == Some(&0) {
        throughput_per_second.pop();
    }
    let (sample, acknowledged) = Sampler::merge(samplers, plan.sample_max, plan.seed);
    Totals {
        requests,
        outcome,
        errors,
        unknown_outcomes,
        latency,
        throughput_per_second,
        p99_ms_per_second: latency_us_per_second
            .iter_mut()
            .map(|latencies| stats::p99_ms_of(latencies))
            .collect(),
        elapsed,
        sample,
        acknowledged,
    }
}

async fn work<B: Backend>(
    plan: &Plan,
    mut backend: B,
    mut generator: Generator,
    connection: usize,
    start: Instant,
    next_due: &AtomicU64,
    live: &Live,
) -> Worker {
    let end = start + plan.duration;
    let mut worker = Worker {
        requests: 0,
        outcome: Outcome::default(),
        errors: BTreeMap::new(),
        unknown_outcomes: 0,
        latency: stats::new_histogram(),
        per_second: Vec::new(),
        latency_us_per_second: Vec::new(),
        sampler: Sampler::new(
            plan.sample_max,
            plan.seed ^ (connection as u64).wrapping_add(1),
        ),
    };
    loop {
        // Made before it is due, as a client has its request ready when it sends it: the
        // latency is the ledger's (and the network's), not the generator's.
        let batch = generator.next_batch(plan.batch_events, plan.operations_max);
        // When this request is due: its slot in the schedule, or now.
        let due = match &plan.schedule {
            Some(schedule) => {
                let index = next_due.fetch_add(1, Ordering::Relaxed);
                let Some(due_s) = schedule.due_s(index) else {
                    break;
                };
                let due = start + Duration::from_secs_f64(due_s);
                sleep_until_precise(due).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let Some((codes, resent)) = send(&mut backend, &batch, end, &mut worker, live).await else {
            continue;
        };
        let answered = Instant::now();
        stats::record(&mut worker.latency, answered - due);
        let due_second = due.saturating_duration_since(start).as_secs() as usize;
        let latency_us = (answered - due).as_micros().min(u32::MAX as u128) as u32;
        at_second(&mut worker.latency_us_per_second, due_second).push(latency_us);
        let before = worker.outcome.transfers_ok;
        generator.acknowledge(
            &batch,
            &codes,
            resent,
            &mut worker.outcome,
            &mut worker.sampler,
        );
        let acknowledged = worker.outcome.transfers_ok - before;
        let second = (answered - start).as_secs() as usize;
        *at_second(&mut worker.per_second, second) += acknowledged;
        live.transfers_ok.fetch_add(acknowledged, Ordering::Relaxed);
    }
    worker
}

/// Waits until `due` as precisely as the operating system's timers allow. Tokio's timer counts
/// whole milliseconds and rounds up: requests woken by it went out 0.9 ms late at the median and
/// 2.2 ms late at p99 (open loop at 930 requests/s on this machine), and an open-loop latency,
/// counted from the due time, counted that lateness as the server's. So tokio's timer only
/// brings the wait to within `PRECISE_SLEEP_MS`, and a blocking thread's `thread::sleep` (a
/// high-resolution timer) sleeps the rest: 85 µs late at the median. (At p99 requests still go
/// out 1–2 ms late: every connection is then waiting for an answer. The open-loop p99 did not
/// move, six interleaved pairs at 1.9M transfers/s; the p50 fell 0.35–0.8 ms in two of three
/// pairs.) A wait that is already over returns at once.
async fn sleep_until_precise(due: Instant) {
    let coarse = due
        .checked_sub(Duration::from_millis(PRECISE_SLEEP_MS))
        .unwrap_or(due);
    if Instant::now() < coarse {
        tokio::time::sleep_until(coarse).await;
    }
    let due = due.into_std();
    if std::time::Instant::now() < due {
        // A blocking pool thread that cannot be had (shutting down) only makes this one late.
        let _ = tokio::task::spawn_blocking(move || {
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        })
        .await;
    }
}

/// The entry of a per-second series for `second`, the series grown to reach it.
fn at_second<T: Default>(series: &mut Vec<T>, second: usize) -> &mut T {
    if series.len() <= second {
        series.resize_with(second + 1, T::default);
    }
    &mut series[second]
}

/// Sends `batch` until it is answered; `None` if it was refused or given up. The flag says
/// whether it was resent after an unknown outcome.
async fn send<B: Backend>(
    backend: &mut B,
    batch: &Batch,
    end: Instant,
    worker: &mut Worker,
    live: &Live,
) -> Option<(Vec<u32>, bool)> {
    let give_up = end + Duration::from_millis(DRAIN_GRACE_MS);
    let mut resent = false;
    let mut backoff_ms = BUSY_BACKOFF_FIRST_MS;
    loop {
        worker.requests += 1;
        let kind = match backend.submit(&batch.transfers).await {
            Attempt::Answered(codes) => return Some((codes, resent)),
            Attempt::Refused(kind) => {
                *worker.errors.entry(kind).or_default() += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Attempt::Busy(kind) => kind,
            Attempt::Unknown(kind) => {
                resent = true;
                kind
            }
        };
        *worker.errors.entry(kind).or_default() += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= give_up {
            if resent {
                worker.unknown_outcomes += 1;
            }
            return None;
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(BUSY_BACKOFF_MAX_MS);
    }
}

/// An indicatif bar on a terminal; nothing otherwise (logs and CI stay clean).
async fn show_progress(label: String, duration: Duration, live: Arc<Live>, done: Arc<AtomicBool>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label);
    let start = Instant::now();
    let mut last = (start, 0u64);
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(PROGRESS_INTERVAL_MS)).await;
        let now = Instant::now();
        let transfers = live.transfers_ok.load(Ordering::Relaxed);
        let rate = (transfers - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, transfers);
        bar.set_position(((now - start).as_millis() as u64).min(duration.as_millis() as u64));
        bar.set_message(format!(
            "{transfers} transfers, {rate:.0}/s, {} errors",
            live.errors.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
}
