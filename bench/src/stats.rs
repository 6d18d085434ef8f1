//! Latency histograms, their exported buckets and percentiles, and the result of one run as it is
//! printed (one JSON line) and stored in `bench/results/` for `report`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde::Serialize;

/// Latencies are recorded in microseconds up to this bound (a minute).
pub(crate) const LATENCY_MAX_MICROSECONDS: u64 = 60_000_000;
/// Exported buckets: the first ends at this many microseconds...
const BUCKET_FIRST_MICROSECONDS: u64 = 10;
/// ...and each next one is this much wider (log scale, ~19% steps: 4 per doubling).
const BUCKET_RATIO: f64 = 1.189_207_115;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROSECONDS, 3).expect("valid histogram bounds")
}

pub(crate) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let microseconds = latency
        .as_micros()
        .clamp(1, u128::from(LATENCY_MAX_MICROSECONDS)) as u64;
    histogram.saturating_record(microseconds);
}

pub(crate) fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    round_ms(histogram.value_at_quantile(quantile) as f64 / 1000.0)
}

pub(crate) fn max_ms(histogram: &Histogram<u64>) -> f64 {
    round_ms(histogram.max() as f64 / 1000.0)
}

/// The p99 of `latencies` (µs) in milliseconds, as `quantile_ms` takes it from a histogram (the
/// value at rank ⌈0.99 n⌉), exactly; 0 for none. Reorders `latencies`.
pub(crate) fn p99_ms_of(latencies: &mut [u32]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let rank = (latencies.len() as f64 * 0.99).ceil() as usize;
    let (_, p99, _) = latencies.select_nth_unstable(rank.clamp(1, latencies.len()) - 1);
    round_ms(f64::from(*p99) / 1000.0)
}

/// Milliseconds to the microsecond.
pub(crate) fn round_ms(milliseconds: f64) -> f64 {
    (milliseconds * 1000.0).round() / 1000.0
}

/// One bucket of an exported histogram: `count` latencies in (previous `upper_us`, `upper_us`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub(crate) upper_us: u64,
    pub(crate) count: u64,
}

/// Log-spaced buckets covering every recorded latency; empty buckets are left out.
pub(crate) fn buckets(histogram: &Histogram<u64>) -> Vec<Bucket> {
    let mut uppers = vec![BUCKET_FIRST_MICROSECONDS];
    while *uppers.last().expect("not empty") < histogram.max() {
        let upper = *uppers.last().expect("not empty");
        uppers.push(((upper as f64 * BUCKET_RATIO).ceil() as u64).max(upper + 1));
    }
    let mut counts = vec![0u64; uppers.len()];
    for value in histogram.iter_recorded() {
        let position = uppers.partition_point(|upper| *upper < value.value_iterated_to());
        counts[position.min(uppers.len() - 1)] += value.count_at_value();
    }
    uppers
        .into_iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|(upper_us, count)| Bucket { upper_us, count })
        .collect()
}

/// The upper bound of the bucket holding the `quantile` latency: an upper estimate, within one
/// bucket (19%) of the exact value.
pub(crate) fn bucket_quantile_us(buckets: &[Bucket], quantile: f64) -> u64 {
    assert!((0.0..=1.0).contains(&quantile));
    let total: u64 = buckets.iter().map(|bucket| bucket.count).sum();
    if total == 0 {
        return 0;
    }
    let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for bucket in buckets {
        seen += bucket.count;
        if seen >= rank {
            return bucket.upper_us;
        }
    }
    buckets.last().map_or(0, |bucket| bucket.upper_us)
}

/// What the verification after a run found.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Verification {
    /// Acknowledged transfers (all of them, over every connection).
    pub(crate) transfers_acknowledged: u64,
    /// Transfers looked up: all acknowledged ones, or a uniform sample (`sampled`).
    pub(crate) transfers_checked: u64,
    pub(crate) sampled: bool,
    pub(crate) transfers_missing: u64,
    /// Found, but with other accounts, amount, ledger, code or flags than sent.
    pub(crate) transfers_mismatched: u64,
    pub(crate) accounts_checked: u64,
    pub(crate) ledgers: Vec<LedgerSums>,
    /// Money posted by set-up and acknowledged transfers (decimal u128).
    pub(crate) posted_expected: String,
    /// Money still pending by acknowledged pending transfers (decimal u128).
    pub(crate) pending_expected: String,
    /// Whether the accounts' totals equal what was acknowledged; `None` when some request's
    /// outcome stayed unknown, so the expected totals are not known exactly.
    pub(crate) totals_match: Option<bool>,
    pub(crate) retry_mismatches: u64,
    pub(crate) passed: bool,
}

/// Sums over every account of the run in one ledger (decimal u128 strings).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LedgerSums {
    pub(crate) ledger: u32,
    pub(crate) debits_posted: String,
    pub(crate) credits_posted: String,
    pub(crate) debits_pending: String,
    pub(crate) credits_pending: String,
    pub(crate) balanced: bool,
}

impl LedgerSums {
    pub(crate) fn new(
        ledger: u32,
        debits_posted: u128,
        credits_posted: u128,
        debits_pending: u128,
        credits_pending: u128,
    ) -> LedgerSums {
        LedgerSums {
            ledger,
            debits_posted: debits_posted.to_string(),
            credits_posted: credits_posted.to_string(),
            debits_pending: debits_pending.to_string(),
            credits_pending: credits_pending.to_string(),
            balanced: debits_posted == credits_posted && debits_pending == credits_pending,
        }
    }
}

/// One measured run: what `load`, `postgres` and `compare` print and store.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct RunResult {
    /// `tally` or `postgres`.
    pub(crate) system: String,
    pub(crate) workload: String,
    /// `binary`, `json`, `single` (Tally) or `single`, `batch` (PostgreSQL).
    pub(crate) mode: String,
    /// `open` (fixed rate) or `closed` (max throughput).
    pub(crate) loop_kind: String,
    /// Open loop: the intended transfers per second.
    pub(crate) rate_target: Option<f64>,
    pub(crate) connections: usize,
    pub(crate) batch_events: usize,
    pub(crate) duration_s: f64,
    pub(crate) requests: u64,
    pub(crate) transfers_ok: u64,
    pub(crate) transfers_per_second: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Answers by result name (`ok`, `exceeds_credits`, `exists`, ...).
    pub(crate) results: BTreeMap<String, u64>,
    /// Requests that got no business answer, by kind (`http_503_busy`, `timeout`, ...).
    pub(crate) errors: BTreeMap<String, u64>,
    /// Requests abandoned with their outcome unknown.
    pub(crate) unknown_outcomes: u64,
    pub(crate) verification: Option<Verification>,
    pub(crate) server_peak_rss_bytes: Option<u64>,
    pub(crate) accounts: u64,
    /// `uptime`'s load averages when the run ended (1, 5, 15 minutes).
    pub(crate) load_average: String,
    pub(crate) unix_time_s: u64,
    /// Transfers acknowledged in each second of the run.
    pub(crate) throughput_per_second: Vec<u64>,
    /// The p99 latency (ms) of the requests due in each second of the run: when they were
    /// scheduled (open loop) or sent (closed loop). Shows what a snapshot or a stall did, and
    /// when. (Absent in results written before it was recorded.)
    #[serde(default)]
    pub(crate) p99_ms_per_second: Vec<f64>,
    pub(crate) latency_histogram: Vec<Bucket>,
}

impl RunResult {
    /// The figures without the series and the histogram (for a one-line summary).
    pub(crate) fn summary(&self) -> RunResult {
        RunResult {
            throughput_per_second: Vec::new(),
            p99_ms_per_second: Vec::new(),
            latency_histogram: Vec::new(),
            ..self.clone()
        }
    }

    pub(crate) fn label(&self) -> String {
        let rate = match self.rate_target {
            Some(rate) => format!(" @{rate:.0}/s"),
            None => String::new(),
        };
        format!(
            "{} {} {} x{} c{} {}{}",
            self.system,
            self.workload,
            self.mode,
            self.batch_events,
            self.connections,
            self.loop_kind,
            rate
        )
    }
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub(crate) fn unix_time_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The name of a transfer result code.
pub(crate) fn result_name(code: u32) -> String {
    tally_engine::CreateTransferResult::from_code(code)
        .map_or_else(|| format!("code_{code}"), |result| result.name().to_owned())
}

/// Prints the table of results, one row per run.
pub(crate) fn print_table(runs: &[RunResult]) {
    println!(
        "{:<50} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "run", "requests", "transfers/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "errors"
    );
    for run in runs {
        let errors: u64 = run.errors.values().sum();
        println!(
            "{:<50} {:>10} {:>13.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            run.label(),
            run.requests,
            run.transfers_per_second,
            run.p50_ms,
            run.p99_ms,
            run.p999_ms,
            run.max_ms,
            errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantiles_bound_the_exact_ones_within_a_bucket() {
        let mut histogram = new_histogram();
        // A long-tailed distribution: 1..=100_000 microseconds, quadratically skewed.
        for index in 1..=10_000u64 {
            histogram.record(index * index / 1000 + 1).unwrap();
        }
        let exported = buckets(&histogram);
        let total: u64 = exported.iter().map(|bucket| bucket.count).sum();
        assert_eq!(total, histogram.len());
        for window in exported.windows(2) {
            assert!(window[0].upper_us < window[1].upper_us);
        }
        for quantile in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = histogram.value_at_quantile(quantile);
            let estimate = bucket_quantile_us(&exported, quantile);
            assert!(estimate >= exact, "q{quantile}: {estimate} < {exact}");
            assert!(
                estimate as f64 <= (exact as f64 * BUCKET_RATIO).max(exact as f64 + 1.0) + 1.0,
                "q{quantile}: {estimate} too far above {exact}"
            );
        }
    }

    #[test]
    fn bucket_quantile_table() {
        let buckets = [
            Bucket {
                upper_us: 10,
                count: 50,
            },
            Bucket {
                upper_us: 100,
                count: 49,
            },
            Bucket {
                upper_us: 5000,
                count: 1,
            },
        ];
        let table = [
            (0.0, 10),
            (0.5, 10),
            (0.51, 100),
            (0.99, 100),
            (0.995, 5000),
            (1.0, 5000),
        ];
        for (quantile, expected) in table {
            assert_eq!(
                bucket_quantile_us(&buckets, quantile),
                expected,
                "q{quantile}"
            );
        }
        assert_eq!(bucket_quantile_us(&[], 0.5), 0);
    }

    /// The exact p99 agrees with the histogram's on the same latencies (which keeps three
    /// significant digits).
    #[test]
    fn p99_of_a_second_matches_the_histogram() {
        let mut latencies: Vec<u32> = (1..=1000).rev().map(|ms| ms * 1000).collect();
        let mut histogram = new_histogram();
        for latency in &latencies {
            record(&mut histogram, Duration::from_micros(u64::from(*latency)));
        }
        assert_eq!(p99_ms_of(&mut latencies), 990.0);
        assert!((quantile_ms(&histogram, 0.99) - 990.0).abs() <= 1.0);
        assert_eq!(p99_ms_of(&mut [7_250]), 7.25);
        assert_eq!(p99_ms_of(&mut []), 0.0);
    }

    #[test]
    fn latencies_are_clamped_into_the_histogram() {
        let mut histogram = new_histogram();
        record(&mut histogram, Duration::ZERO);
        record(&mut histogram, Duration::from_secs(3600));
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 1);
        assert!(histogram.max() >= LATENCY_MAX_MICROSECONDS);
    }

    #[test]
    fn ledger_sums_balance_only_when_both_sides_agree() {
        assert!(LedgerSums::new(1, 5, 5, 2, 2).balanced);
        assert!(!LedgerSums::new(1, 5, 4, 2, 2).balanced);
        assert!(!LedgerSums::new(1, 5, 5, 2, 3).balanced);
        let huge = LedgerSums::new(1, u128::MAX, u128::MAX, 0, 0);
        assert_eq!(huge.debits_posted, u128::MAX.to_string());
    }
}
