//! openraft's log storage on the journal.
//!
//! Appends are written to the journal at once (ordinary `write`s) and made
//! durable by a dedicated flusher thread: it takes every append waiting,
//! issues one `fdatasync` for all of them (group commit) and only then tells
//! openraft, through `IOFlushed`, that they are on disk. Reads take the
//! journal's lock only for their positional reads, never across an fsync.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::EntryPayload;
use openraft::LogState;
use openraft::RaftLogReader;
use tally_journal::Entry as JournalEntry;
use tally_journal::EntryId;
use tally_journal::EntryKind;
use tally_journal::Journal;
use tally_journal::JournalOptions;
use tally_journal::MetaStore;
use tally_journal::Storage;
use tally_journal::SyncTicket;

use crate::limits::RECENT_ENTRIES_BYTES;
use crate::types::Batch;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::Threads;

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    journal: Mutex<Journal>,
    /// The newest entries, as appended; locked after `journal`, and changed only with it held.
    recent: Mutex<RecentEntries>,
    meta: Mutex<MetaStore>,
    vote: Mutex<Option<Vote>>,
    /// The flusher thread; `None` with `Threads::Inline` (sync in place).
    flusher: Option<mpsc::Sender<FlushRequest>>,
    threads: Threads,
}

struct FlushRequest {
    ticket: SyncTicket,
    callback: IOFlushed<TypeConfig>,
    /// When openraft handed these entries over: `tally_journal_durable_seconds` runs from here
    /// to the fsync that covers them (the write, the wait for the flusher, the fsync).
    appended_at: std::time::Instant,
}

/// What the metadata record holds: the vote. (The last purged log id is kept
/// by the journal itself.)
#[derive(serde::Serialize, serde::Deserialize)]
struct Metadata {
    vote: Option<Vote>,
}

/// The newest entries, kept as they were appended (their payloads are shared, not copied), so
/// that applying them and replicating them to each follower does not read them back from the
/// journal: a read copies the entry out of the page cache into a new buffer and verifies its
/// checksum, and the leader would do that once per follower and once to apply. Contiguous, and
/// ending at the journal's last entry whenever it is not empty.
#[derive(Default)]
struct RecentEntries {
    entries: std::collections::VecDeque<Entry>,
    /// Payload bytes held, kept at most `RECENT_ENTRIES_BYTES` (plus the newest entry).
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|entry| entry.log_id.index)
    }

    fn payload_bytes(entry: &Entry) -> usize {
        match &entry.payload {
            EntryPayload::Normal(batch) => batch.events.len(),
            EntryPayload::Blank | EntryPayload::Membership(_) => 0,
        }
    }

    fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        if self
            .last_index()
            .is_some_and(|last| last + 1 != first.log_id.index)
        {
            self.clear();
        }
        for entry in entries {
            self.bytes += Self::payload_bytes(&entry);
            self.entries.push_back(entry);
        }
        while self.bytes > RECENT_ENTRIES_BYTES && self.entries.len() > 1 {
            let evicted = self.entries.pop_front().expect("more than one entry");
            self.bytes -= Self::payload_bytes(&evicted);
        }
    }

    /// Forgets the entries after `index` (`None`: all).
    fn truncate_after(&mut self, index: Option<u64>) {
        while let Some(last) = self.last_index() {
            if index.is_some_and(|index| last <= index) {
                break;
            }
            let removed = self.entries.pop_back().expect("not empty");
            self.bytes -= Self::payload_bytes(&removed);
        }
    }

    /// Forgets the entries through `index`.
    fn purge_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            let removed = self.entries.pop_front().expect("not empty");
            self.bytes -= Self::payload_bytes(&removed);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries `start..=end` if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first || Some(end) > self.last_index() {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..=to).cloned().collect())
    }
}

/// A removed segment's file is freed a few MiB at a time before it is closed
/// (`tally_journal::free_gradually`), resting at least this long in between.
const RETIRED_FILE_SHRINK_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

fn to_io(error: tally_journal::Error) -> io::Error {
    io::Error::other(error)
}

impl LogStore {
    /// Opens (and recovers) the journal in `dir` on `storage`: the real file
    /// system in production, a simulated disk in the simulator.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<LogStore> {
        LogStore::open_with(storage, dir, Threads::Dedicated)
    }

    /// As [`LogStore::open`]; with `Threads::Inline` appends are synced on the
    /// calling task instead of by the flusher thread (for the simulator).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        threads: Threads,
    ) -> io::Result<LogStore> {
        let (journal, report) =
            Journal::open(Arc::clone(&storage), dir, JournalOptions::default()).map_err(to_io)?;
        tracing::info!(?report, "journal recovered");
        let meta = MetaStore::open(storage, &dir.join("meta")).map_err(to_io)?;
        let vote = match meta.load() {
            Some(bytes) => {
                let metadata: Metadata = postcard::from_bytes(bytes)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                metadata.vote
            }
            None => None,
        };
        let (flusher, requests) = match threads {
            Threads::Dedicated => {
                let (flusher, requests) = mpsc::channel::<FlushRequest>();
                (Some(flusher), Some(requests))
            }
            Threads::Inline => (None, None),
        };
        let shared = Arc::new(Shared {
            journal: Mutex::new(journal),
            recent: Mutex::new(RecentEntries::default()),
            meta: Mutex::new(meta),
            vote: Mutex::new(vote),
            flusher,
            threads,
        });
        if let Some(requests) = requests {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("tally-journal-flush".into())
                .spawn(move || flush_loop(weak, requests))?;
        }
        Ok(LogStore { shared })
    }
}

impl LogStore {
    /// The index of the newest entry in the log (or purged behind a snapshot), if any.
    pub fn last_index(&self) -> Option<u64> {
        let journal = self.shared.journal.lock().expect("journal lock");
        journal
            .last_entry_id()
            .or(journal.purged_id())
            .map(|id| id.index)
    }

    /// Closes the files of removed segments off the log's path (see
    /// `Journal::take_retired_files`): on a blocking thread that nothing waits for, or
    /// in place when everything runs inline (the simulator).
    fn close_in_background(&self, retired: Vec<Arc<dyn tally_journal::StorageFile>>) {
        if retired.is_empty() {
            return;
        }
        match self.shared.threads {
            Threads::Dedicated => {
                tokio::task::spawn_blocking(move || {
                    for file in retired {
                        tally_journal::free_gradually(&*file, RETIRED_FILE_SHRINK_PAUSE);
                    }
                });
            }
            Threads::Inline => drop(retired),
        }
    }
}

impl LogStore {
    /// Drops the cached pages of cold segments (see `Journal::take_cold_files`) on a blocking
    /// thread that nothing waits for; nothing to do when everything runs inline (the
    /// simulator's storage keeps no page cache).
    fn forget_cached_in_background(&self, cold: Vec<Arc<dyn tally_journal::StorageFile>>) {
        if cold.is_empty() || self.shared.threads == Threads::Inline {
            return;
        }
        tokio::task::spawn_blocking(move || {
            for file in cold {
                let result = file.len().and_then(|length| file.forget_cached(0, length));
                if let Err(error) = result {
                    tracing::debug!(%error, "log pages not dropped from the page cache");
                }
            }
        });
    }
}

/// Group commit: drain every waiting request, sync once, acknowledge all.
fn flush_loop(shared: std::sync::Weak<Shared>, requests: mpsc::Receiver<FlushRequest>) {
    while let Ok(first) = requests.recv() {
        let mut waiting = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiting.push(next);
        }
        flush_group(shared.upgrade().as_deref(), waiting);
    }
}

/// Syncs once for a group of appends (the newest ticket covers every earlier
/// append) and only then acknowledges them, in order.
fn flush_group(shared: Option<&Shared>, mut waiting: Vec<FlushRequest>) {
    let last = waiting.pop().expect("at least one request");
    let started = std::time::Instant::now();
    let outcome = last.ticket.sync();
    metrics::histogram!("tally_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(durable) => {
            let durable_at = std::time::Instant::now();
            let durable_seconds = metrics::histogram!("tally_journal_durable_seconds");
            let appended = waiting.iter().map(|request| request.appended_at);
            for appended_at in appended.chain([last.appended_at]) {
                durable_seconds.record((durable_at - appended_at).as_secs_f64());
            }
            if let Some(shared) = shared {
                shared
                    .journal
                    .lock()
                    .expect("journal lock")
                    .mark_durable(durable);
            }
            for request in waiting {
                request.callback.io_completed(Ok(()));
            }
            last.callback.io_completed(Ok(()));
        }
        Err(error) => {
            // A failed fsync is fatal (fsyncgate): the journal refuses
            // further writes and openraft stops this node.
            tracing::error!(%error, "journal fsync failed");
            let message = error.to_string();
            for request in waiting {
                request
                    .callback
                    .io_completed(Err(io::Error::other(message.clone())));
            }
            last.callback.io_completed(Err(io::Error::other(message)));
        }
    }
}

fn to_journal_entry(entry: &Entry) -> io::Result<JournalEntry> {
    let id = EntryId::new(
        entry.log_id.leader_id.term,
        entry.log_id.leader_id.node_id,
        entry.log_id.index,
    );
    Ok(match &entry.payload {
        EntryPayload::Blank => JournalEntry::blank(id),
        EntryPayload::Normal(batch) => {
            JournalEntry::batch(id, batch.operation, batch.timestamp, batch.events.clone())
        }
        EntryPayload::Membership(membership) => JournalEntry::membership(
            id,
            postcard::to_allocvec(membership).map_err(io::Error::other)?,
        ),
    })
}

fn from_journal_entry(entry: JournalEntry) -> io::Result<Entry> {
    let log_id = log_id(entry.id.term, entry.id.leader_node_id, entry.id.index);
    let payload = match entry.kind {
        EntryKind::Blank => EntryPayload::Blank,
        EntryKind::Batch => EntryPayload::Normal(Batch {
            operation: entry.operation,
            timestamp: entry.timestamp,
            events: entry.payload,
        }),
        EntryKind::Membership => EntryPayload::Membership(
            postcard::from_bytes(&entry.payload)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?,
        ),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "log entry {} has kind {other:?}, which this build does not know",
                    entry.id.index
                ),
            ))
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
        index,
    }
}

fn inclusive_range<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => *end,
        Bound::Excluded(end) => end.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = inclusive_range(&range) else {
            return Ok(Vec::new());
        };
        let entries = {
            let journal = self.shared.journal.lock().expect("journal lock");
            let (Some(first), Some(last)) = (journal.first_index(), journal.last_index()) else {
                return Ok(Vec::new());
            };
            let (start, end) = (start.max(first), end.min(last));
            if start > end {
                return Ok(Vec::new());
            }
            let recent = self.shared.recent.lock().expect("recent entries lock");
            debug_assert!(recent.last_index().is_none_or(|index| index == last));
            if let Some(entries) = recent.get(start, end) {
                return Ok(entries);
            }
            journal.read(start..=end).map_err(to_io)?
        };
        entries.into_iter().map(from_journal_entry).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(*self.shared.vote.lock().expect("vote lock"))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let journal = self.shared.journal.lock().expect("journal lock");
        let last_purged_log_id = journal
            .purged_id()
            .map(|id| log_id(id.term, id.leader_node_id, id.index));
        let last_log_id = journal
            .last_entry_id()
            .map(|id| log_id(id.term, id.leader_node_id, id.index))
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes =
            postcard::to_allocvec(&Metadata { vote: Some(*vote) }).map_err(io::Error::other)?;
        let shared = Arc::clone(&self.shared);
        let vote = *vote;
        crate::blocking(self.shared.threads, move || -> io::Result<()> {
            shared
                .meta
                .lock()
                .expect("meta lock")
                .save(&bytes)
                .map_err(to_io)?;
            *shared.vote.lock().expect("vote lock") = Some(vote);
            Ok(())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let appended_at = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let journal_entries = entries
            .iter()
            .map(to_journal_entry)
            .collect::<io::Result<Vec<JournalEntry>>>()?;
        let (ticket, cold) = {
            let mut journal = self.shared.journal.lock().expect("journal lock");
            journal.append_all(&journal_entries).map_err(to_io)?;
            let mut recent = self.shared.recent.lock().expect("recent entries lock");
            recent.append(entries);
            (journal.prepare_sync(), journal.take_cold_files())
        };
        self.forget_cached_in_background(cold);
        let request = FlushRequest {
            ticket,
            callback,
            appended_at,
        };
        match &self.shared.flusher {
            Some(flusher) => flusher
                .send(request)
                .map_err(|_| io::Error::other("the journal flusher has stopped")),
            None => {
                flush_group(Some(&self.shared), vec![request]);
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let retired = {
            let mut journal = self.shared.journal.lock().expect("journal lock");
            journal
                .truncate_after(last_log_id.map(|log_id| log_id.index))
                .map_err(to_io)?;
            let mut recent = self.shared.recent.lock().expect("recent entries lock");
            recent.truncate_after(last_log_id.map(|log_id| log_id.index));
            journal.take_retired_files()
        };
        self.close_in_background(retired);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let retired = {
            let mut journal = self.shared.journal.lock().expect("journal lock");
            journal
                .purge_through(EntryId::new(
                    log_id.leader_id.term,
                    log_id.leader_id.node_id,
                    log_id.index,
                ))
                .map_err(to_io)?;
            let mut recent = self.shared.recent.lock().expect("recent entries lock");
            recent.purge_through(log_id.index);
            journal.take_retired_files()
        };
        self.close_in_background(retired);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Batch {
                operation: 1,
                timestamp: index,
                events: bytes::Bytes::from(vec![index as u8; bytes]),
            }),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    #[test]
    fn the_recent_entries_window_follows_appends_truncations_and_purges() {
        let mut recent = RecentEntries::default();
        assert_eq!(recent.get(1, 1), None);
        let batch = RECENT_ENTRIES_BYTES / 4;
        recent.append((1..=3).map(|index| entry(index, batch)).collect());
        assert_eq!(indexes(&recent.get(1, 3).expect("all there")), [1, 2, 3]);
        assert_eq!(indexes(&recent.get(2, 2).expect("inside")), [2]);
        assert_eq!(recent.get(0, 2), None, "starts before the window");
        assert_eq!(recent.get(2, 4), None, "ends after the window");
        // Past the byte budget the oldest go; the payload is shared, not copied.
        recent.append((4..=6).map(|index| entry(index, batch)).collect());
        assert_eq!(recent.first_index(), Some(3));
        assert_eq!(recent.bytes, 4 * batch);
        let got = recent.get(6, 6).expect("newest");
        match (
            &got[0].payload,
            &recent.entries.back().expect("newest").payload,
        ) {
            (EntryPayload::Normal(got), EntryPayload::Normal(kept)) => {
                assert_eq!(got.events.as_ptr(), kept.events.as_ptr());
            }
            _ => unreachable!("normal entries"),
        }
        // A truncation cuts the end; the next append continues from it.
        recent.truncate_after(Some(4));
        assert_eq!(recent.last_index(), Some(4));
        assert_eq!(recent.bytes, 2 * batch);
        recent.append(vec![entry(5, 10)]);
        assert_eq!(indexes(&recent.get(3, 5).expect("contiguous")), [3, 4, 5]);
        // A gap (never expected) empties the window rather than serve a wrong entry.
        recent.append(vec![entry(9, 10)]);
        assert_eq!(recent.first_index(), Some(9));
        assert_eq!(recent.get(5, 5), None);
        // A purge cuts the front, past the end empties it.
        recent.append(vec![entry(10, 10), entry(11, 10)]);
        recent.purge_through(9);
        assert_eq!(indexes(&recent.get(10, 11).expect("kept")), [10, 11]);
        recent.purge_through(20);
        assert_eq!(recent.first_index(), None);
        assert_eq!(recent.bytes, 0);
        recent.append(vec![entry(21, 10)]);
        recent.truncate_after(None);
        assert_eq!(recent.last_index(), None);
        assert_eq!(recent.bytes, 0);
    }
}
