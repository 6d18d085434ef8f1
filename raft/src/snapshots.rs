//! Snapshots on disk: openraft's snapshot meta (postcard) beside the engine's
//! own snapshot bytes, kept by the journal's snapshot store (temp file, fsync,
//! rename, fsync the directory; checksummed).

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use tally_journal::EntryId;
use tally_journal::RunPlan;
use tally_journal::RunTail;
use tally_journal::SnapshotStore;
use tally_journal::Storage;

use crate::limits::SNAPSHOT_SAVE_PAUSE;
use crate::types::SnapshotMeta;
use crate::Threads;

pub struct SnapshotFiles {
    store: Mutex<SnapshotStore>,
    /// Pause after each intermediate sync of a snapshot being saved (zero when saving
    /// runs inline, on the simulator's only thread).
    save_pause: Duration,
}

impl SnapshotFiles {
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        threads: Threads,
    ) -> io::Result<SnapshotFiles> {
        let store = SnapshotStore::open(storage, dir).map_err(io::Error::other)?;
        let save_pause = match threads {
            Threads::Dedicated => SNAPSHOT_SAVE_PAUSE,
            Threads::Inline => Duration::ZERO,
        };
        Ok(SnapshotFiles {
            store: Mutex::new(store),
            save_pause,
        })
    }

    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let meta_bytes = postcard::to_allocvec(meta).map_err(io::Error::other)?;
        self.store
            .lock()
            .expect("snapshot store lock")
            .save_paced(journal_log_id(meta), &meta_bytes, data, self.save_pause)
            .map_err(io::Error::other)
    }

    /// `save`, with the engine's transfers (`run_offset..run_offset + run_len` of `data`) in a
    /// new run file that the next snapshot extends: for a snapshot installed from the leader,
    /// so that the one after it writes only the transfers applied since.
    pub fn save_with_run(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        run_offset: usize,
        run_len: usize,
    ) -> io::Result<()> {
        let run = RunPlan {
            offset: run_offset as u64,
            len: run_len as u64,
            extends: None,
        };
        self.save_run(meta, data.len() as u64, run, std::iter::once(data), |_| {})
            .map(|_| ())
    }

    /// The engine's snapshot in pieces, written as they arrive on `pieces` (`data_len` bytes in
    /// all, less what `run.extends` holds), with its transfers (`run.offset..run.offset +
    /// run.len` of the data) in a run file that the next snapshot extends in place: with
    /// `run.extends` (from `run_tail`), `pieces` carry the data less the transfers that run
    /// holds. Each written piece goes back on `spares` for reuse. Blocks until the sender
    /// hangs up: call it from a thread that may block. A stream that ends short (the snapshot
    /// was abandoned) saves nothing. Returns the bytes written (packed), to both files.
    pub fn save_streamed_with_run(
        &self,
        meta: &SnapshotMeta,
        data_len: u64,
        run: RunPlan,
        pieces: std::sync::mpsc::Receiver<Vec<u8>>,
        spares: std::sync::mpsc::Sender<Vec<u8>>,
    ) -> io::Result<u64> {
        self.save_run(meta, data_len, run, pieces, |piece| {
            // The builder may be gone (it stopped early); the piece is then freed.
            let _ = spares.send(piece);
        })
    }

    /// `SnapshotStore::save_streamed_with_run` under this node's meta encoding and pacing.
    fn save_run<B: AsRef<[u8]>>(
        &self,
        meta: &SnapshotMeta,
        data_len: u64,
        run: RunPlan,
        data: impl IntoIterator<Item = B>,
        written: impl FnMut(B),
    ) -> io::Result<u64> {
        let meta_bytes = postcard::to_allocvec(meta).map_err(io::Error::other)?;
        self.store
            .lock()
            .expect("snapshot store lock")
            .save_streamed_with_run(
                journal_log_id(meta),
                &meta_bytes,
                data_len,
                run,
                data,
                written,
                self.save_pause,
            )
            .map_err(io::Error::other)
    }

    /// The latest snapshot's transfers, as the next snapshot may leave them out and extend
    /// them (`tally_journal::SnapshotStore::run_tail`). Waits for a save in progress: call it
    /// from a thread that may block.
    pub fn run_tail(&self) -> Option<RunTail> {
        self.store.lock().expect("snapshot store lock").run_tail()
    }

    /// The newest snapshot that verifies, if any. A corrupt one is an error,
    /// never silently skipped.
    pub fn load_latest(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let latest = self
            .store
            .lock()
            .expect("snapshot store lock")
            .load_latest()
            .map_err(io::Error::other)?;
        let Some(snapshot) = latest else {
            return Ok(None);
        };
        let data = snapshot.data;
        let meta: SnapshotMeta = postcard::from_bytes(&snapshot.meta)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(Some((meta, data)))
    }
}

fn journal_log_id(meta: &SnapshotMeta) -> Option<EntryId> {
    meta.last_log_id.map(|log_id| {
        EntryId::new(
            log_id.leader_id.term,
            log_id.leader_id.node_id,
            log_id.index,
        )
    })
}
