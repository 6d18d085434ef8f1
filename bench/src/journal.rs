//! `tally-bench journal`: durable appends through the journal (append a group of
//! entries, then one fdatasync) against the raw ceiling measured in the same run on the
//! same disk: a plain sequential write of the same event bytes, in the same groups,
//! each followed by one fdatasync. The two alternate group by group, so both see the
//! same disk conditions. A separate bounded run reports peak memory for 10M events.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tally_journal::limits::{BATCH_EVENTS_MAX, EVENT_SIZE};
use tally_journal::{Entry, EntryId, FsStorage, Journal, JournalOptions};

/// Entry sizes (events per entry) reported in `by_entry_size`.
const ENTRY_EVENTS: [u32; 4] = [1, 64, 1024, BATCH_EVENTS_MAX];
/// Events written for the peak-memory run.
const PEAK_RSS_EVENTS: u64 = 10_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the benchmark files (default: a temporary directory under /work).
    /// Must be on a real disk, not tmpfs, for fdatasync to mean anything.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events written per entry size, through the journal and through the raw file each.
    #[arg(long, default_value_t = 4_000_000)]
    events: u64,
    /// Bytes of events per group commit (one fdatasync per group).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    group_bytes: u64,
    /// Skip the 10M-event peak-memory run.
    #[arg(long)]
    skip_peak_rss: bool,
}

struct Measurement {
    entry_events: u32,
    events: u64,
    journal_time: Duration,
    raw_time: Duration,
    group_sync_us: Histogram<u64>,
}

impl Measurement {
    fn events_per_second(&self) -> f64 {
        self.events as f64 / self.journal_time.as_secs_f64()
    }

    fn raw_events_per_second(&self) -> f64 {
        self.events as f64 / self.raw_time.as_secs_f64()
    }

    fn ratio(&self) -> f64 {
        self.events_per_second() / self.raw_events_per_second()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "entry_events": self.entry_events,
            "events": self.events,
            "events_per_second": self.events_per_second().round(),
            "raw_events_per_second": self.raw_events_per_second().round(),
            "ratio": (self.ratio() * 1000.0).round() / 1000.0,
            "group_commit_p50_us": self.group_sync_us.value_at_quantile(0.5),
            "group_commit_p99_us": self.group_sync_us.value_at_quantile(0.99),
        })
    }
}

/// Pre-generated random event bytes, sliced into entries (content does not matter to
/// the disk, but it should not be trivially compressible).
fn event_pool() -> Vec<u8> {
    let mut bytes = vec![0u8; BATCH_EVENTS_MAX as usize * EVENT_SIZE];
    ChaCha8Rng::seed_from_u64(42).fill_bytes(&mut bytes);
    bytes
}

fn group_entries(pool: &[u8], entry_events: u32, first_index: u64, count: u64) -> Vec<Entry> {
    let payload_size = entry_events as usize * EVENT_SIZE;
    (0..count)
        .map(|offset| {
            let index = first_index + offset;
            let start = (index as usize * EVENT_SIZE) % (pool.len() - payload_size + 1);
            let events = pool[start..start + payload_size].to_vec();
            Entry::batch(EntryId::new(1, 1, index), 1, index, events)
        })
        .collect()
}

/// Durable appends of `events` events in entries of `entry_events`, alternating with the
/// raw file group by group. With `raw` false only the journal runs (memory run).
fn measure(
    dir: &Path,
    pool: &[u8],
    entry_events: u32,
    events: u64,
    group_bytes: u64,
    raw: bool,
) -> anyhow::Result<Measurement> {
    let journal_dir = dir.join(format!("journal-{entry_events}"));
    let raw_path = dir.join(format!("raw-{entry_events}"));
    let _ = fs::remove_dir_all(&journal_dir);
    let (mut journal, _) =
        Journal::open(FsStorage::shared(), &journal_dir, JournalOptions::default())?;
    let mut raw_file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&raw_path)?;
    let entry_bytes = u64::from(entry_events) * EVENT_SIZE as u64;
    let entries_per_group = (group_bytes / entry_bytes).max(1);
    let entry_count = events.div_ceil(u64::from(entry_events));
    let mut measurement = Measurement {
        entry_events,
        events: entry_count * u64::from(entry_events),
        journal_time: Duration::ZERO,
        raw_time: Duration::ZERO,
        group_sync_us: Histogram::new(3)?,
    };
    let mut raw_buffer = Vec::with_capacity((entries_per_group * entry_bytes) as usize);
    let mut index = 0;
    let mut group_number = 0u64;
    while index < entry_count {
        let count = entries_per_group.min(entry_count - index);
        let entries = group_entries(pool, entry_events, index, count);
        raw_buffer.clear();
        for entry in &entries {
            raw_buffer.extend_from_slice(&entry.payload);
        }
        // Alternate which goes first, so neither always runs on a disk the other just left busy.
        if raw && group_number % 2 == 1 {
            measurement.raw_time += time_raw(&mut raw_file, &raw_buffer)?;
        }
        let started = Instant::now();
        journal.append_all(&entries)?;
        let durable = journal.sync()?;
        let elapsed = started.elapsed();
        ensure!(
            durable == Some(index + count - 1),
            "journal reported {durable:?} durable"
        );
        measurement.journal_time += elapsed;
        measurement
            .group_sync_us
            .record(elapsed.as_micros() as u64)?;
        if raw && group_number % 2 == 0 {
            measurement.raw_time += time_raw(&mut raw_file, &raw_buffer)?;
        }
        index += count;
        group_number += 1;
    }
    drop(journal);
    drop(raw_file);
    fs::remove_dir_all(&journal_dir)?;
    fs::remove_file(&raw_path)?;
    Ok(measurement)
}

fn time_raw(file: &mut File, bytes: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    file.write_all(bytes)?;
    file.sync_data()?;
    Ok(started.elapsed())
}

/// Peak resident set (VmHWM) of this process, in bytes.
fn peak_rss_bytes() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kilobytes: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kilobytes * 1024)
}

/// Filesystem type of the mount holding `dir` (longest mount-point prefix).
fn filesystem_type(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".to_owned(), |(_, kind)| kind)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.events > 0, "--events must be positive");
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("tally-bench-journal-")
                .tempdir_in("/work")?;
            temp.path().to_owned()
        }
    };
    let filesystem = filesystem_type(&dir);
    println!("journal benchmark in {} ({filesystem})", dir.display());
    if matches!(filesystem.as_str(), "tmpfs" | "ramfs") {
        println!("WARNING: {filesystem} is memory; fdatasync costs nothing there and the figures mean little");
    }
    let pool = event_pool();
    let peak_rss = if args.skip_peak_rss {
        None
    } else {
        let run = measure(
            &dir,
            &pool,
            BATCH_EVENTS_MAX,
            PEAK_RSS_EVENTS,
            args.group_bytes,
            false,
        )?;
        let peak = peak_rss_bytes()?;
        println!(
            "peak-memory run: {} events in {}-event entries, {:.0} durable events/s, peak RSS {:.1} MiB",
            run.events,
            run.entry_events,
            run.events_per_second(),
            peak as f64 / (1024.0 * 1024.0)
        );
        Some(peak)
    };
    println!(
        "group commit: {} bytes of events per fdatasync; {} events per entry size",
        args.group_bytes, args.events
    );
    println!(
        "{:>13} {:>18} {:>18} {:>7} {:>12} {:>12}",
        "entry events", "journal events/s", "raw events/s", "ratio", "p50 commit", "p99 commit"
    );
    let mut measurements = Vec::new();
    for entry_events in ENTRY_EVENTS {
        let measurement = measure(
            &dir,
            &pool,
            entry_events,
            args.events,
            args.group_bytes,
            true,
        )?;
        println!(
            "{:>13} {:>18.0} {:>18.0} {:>7.3} {:>10}us {:>10}us",
            entry_events,
            measurement.events_per_second(),
            measurement.raw_events_per_second(),
            measurement.ratio(),
            measurement.group_sync_us.value_at_quantile(0.5),
            measurement.group_sync_us.value_at_quantile(0.99),
        );
        measurements.push(measurement);
    }
    let full = measurements.last().expect("ENTRY_EVENTS is not empty");
    let summary = serde_json::json!({
        "benchmark": "journal",
        "entry_events": full.entry_events,
        "events_per_second": full.events_per_second().round(),
        "raw_events_per_second": full.raw_events_per_second().round(),
        "ratio": (full.ratio() * 1000.0).round() / 1000.0,
        "by_entry_size": measurements.iter().map(Measurement::json).collect::<Vec<_>>(),
        "peak_rss_bytes": peak_rss,
        "peak_rss_events": PEAK_RSS_EVENTS,
        "group_bytes": args.group_bytes,
        "filesystem": filesystem,
    });
    println!("{summary}");
    Ok(())
}
