//! Snapshots on disk: openraft's snapshot meta (postcard) beside the engine's
//! own snapshot bytes, kept by the journal's snapshot store (temp file, fsync,
//! rename, fsync the directory; checksummed).

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use tally_journal::EntryId;
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
        let last_log_id = meta.last_log_id.map(|log_id| {
            EntryId::new(
                log_id.leader_id.term,
                log_id.leader_id.node_id,
                log_id.index,
            )
        });
        self.store
            .lock()
            .expect("snapshot store lock")
            .save_paced(last_log_id, &meta_bytes, data, self.save_pause)
            .map_err(io::Error::other)
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
