//! Snapshots on disk: openraft's snapshot meta (postcard) beside the engine's
//! own snapshot bytes, kept by the journal's snapshot store (temp file, fsync,
//! rename, fsync the directory; checksummed).

use std::io;
use std::path::Path;
use std::sync::Mutex;

use std::sync::Arc;

use tally_journal::EntryId;
use tally_journal::SnapshotStore;
use tally_journal::Storage;

use crate::types::SnapshotMeta;

pub struct SnapshotFiles {
    store: Mutex<SnapshotStore>,
}

impl SnapshotFiles {
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<SnapshotFiles> {
        let store = SnapshotStore::open(storage, dir).map_err(io::Error::other)?;
        Ok(SnapshotFiles {
            store: Mutex::new(store),
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
            .save(last_log_id, &meta_bytes, data)
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
