//! A fault-injecting, in-memory [`Storage`]: the simulated disk of the crash tests
//! and of the simulation harness.
//!
//! Model. Every file keeps two views: what was *written* (what reads return) and
//! what is *durable* (what survives a crash). Writes and size changes since the last
//! `sync_data`/`sync_all` of that file are a per-file list of pending operations;
//! creations, removals and renames since the last `sync_dir` are a list of pending
//! directory operations. A crash keeps, per file and for the directory, a random
//! *prefix* of the pending operations (the last one kept may be torn: a random prefix
//! of its bytes), or drops them all, or keeps them all — all drawn from the seed.
//! After a failed fsync the pending writes of that file are dropped from the durable
//! view while reads still see them, as Linux does (fsyncgate).
//!
//! Faults: [`FaultyStorage::crash_after`] makes the n-th next mutating call fail (a
//! write may be torn first) and every later call fail until [`FaultyStorage::reboot`];
//! [`FaultyStorage::fail_syncs`] makes fsyncs fail; [`FaultyStorage::flip_bit`]
//! corrupts durable bytes. Everything is reproducible from the `u64` seed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

/// SplitMix64: a tiny, dependency-free, seedable generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum DirOp {
    Link {
        path: PathBuf,
        inode: u64,
    },
    Unlink {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: u64,
    },
}

#[derive(Debug, Default)]
struct Inode {
    written: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

fn apply_file_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, bytes } => {
            let offset = usize::try_from(*offset).expect("in-memory file offset fits usize");
            if data.len() < offset + bytes.len() {
                data.resize(offset + bytes.len(), 0);
            }
            data[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => data.resize(
            usize::try_from(*len).expect("in-memory length fits usize"),
            0,
        ),
    }
}

fn apply_dir_op(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link { path, inode } => {
            names.insert(path.clone(), *inode);
        }
        DirOp::Unlink { path } => {
            names.remove(path);
        }
        DirOp::Rename { from, to, inode } => {
            names.remove(from);
            names.insert(to.clone(), *inode);
        }
    }
}

/// How a crash treats data that was written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashModel {
    /// Per file, a random choice between dropping all, keeping all and keeping a
    /// random (possibly torn) prefix of the pending operations.
    Random,
    /// Unsynced data is always lost.
    DropUnsynced,
    /// Unsynced data always survives.
    KeepUnsynced,
}

#[derive(Debug)]
struct State {
    random: SplitMix64,
    crash_model: CrashModel,
    inodes: HashMap<u64, Inode>,
    inode_next: u64,
    names: BTreeMap<PathBuf, u64>,
    names_durable: BTreeMap<PathBuf, u64>,
    dir_pending: Vec<DirOp>,
    /// Mutating calls left before the simulated crash.
    crash_countdown: Option<u64>,
    crashed: bool,
    /// Bumped by every reboot: handles from before a crash stop working.
    epoch: u64,
    syncs_to_fail: u64,
    mutations: u64,
}

/// The fault-injecting in-memory storage. Clones share the same disk.
#[derive(Clone)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyStorage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FaultyStorage")
            .finish_non_exhaustive()
    }
}

fn crash_error() -> io::Error {
    io::Error::other("simulated crash: the disk is gone until reboot")
}

impl FaultyStorage {
    pub fn new(seed: u64) -> FaultyStorage {
        FaultyStorage::with_model(seed, CrashModel::Random)
    }

    pub fn with_model(seed: u64, crash_model: CrashModel) -> FaultyStorage {
        FaultyStorage {
            state: Arc::new(Mutex::new(State {
                random: SplitMix64::new(seed),
                crash_model,
                inodes: HashMap::new(),
                inode_next: 1,
                names: BTreeMap::new(),
                names_durable: BTreeMap::new(),
                dir_pending: Vec::new(),
                crash_countdown: None,
                crashed: false,
                epoch: 0,
                syncs_to_fail: 0,
                mutations: 0,
            })),
        }
    }

    pub fn shared(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `count`-th mutating call from now (0 = the next one) fails as a crash.
    pub fn crash_after(&self, count: u64) {
        self.lock().crash_countdown = Some(count);
    }

    /// Crashes now: every call fails until [`FaultyStorage::reboot`].
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Mutating calls seen so far (to pick crash points).
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// The next `count` fsyncs (file or directory) fail with EIO.
    pub fn fail_syncs(&self, count: u64) {
        self.lock().syncs_to_fail = count;
    }

    /// Applies the crash model to everything not synced and restarts the disk.
    /// Calling it without a crash simulates a power cut at this instant.
    pub fn reboot(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        let model = state.crash_model;
        let kept = keep_count(&mut state.random, model, state.dir_pending.len());
        for op in &state.dir_pending[..kept] {
            apply_dir_op(&mut state.names_durable, op);
        }
        state.dir_pending.clear();
        state.names = state.names_durable.clone();
        let mut inode_ids: Vec<u64> = state.inodes.keys().copied().collect();
        inode_ids.sort_unstable();
        for id in inode_ids {
            let inode = state.inodes.get_mut(&id).expect("listed inode exists");
            let kept = keep_count(&mut state.random, model, inode.pending.len());
            for op in &inode.pending[..kept] {
                apply_file_op(&mut inode.durable, op);
            }
            if kept < inode.pending.len()
                && model == CrashModel::Random
                && state.random.chance(1, 2)
            {
                if let FileOp::Write { offset, bytes } = &inode.pending[kept] {
                    let torn = state.random.below(bytes.len() as u64 + 1) as usize;
                    let op = FileOp::Write {
                        offset: *offset,
                        bytes: bytes[..torn].to_vec(),
                    };
                    apply_file_op(&mut inode.durable, &op);
                }
            }
            inode.pending.clear();
            inode.written = inode.durable.clone();
        }
        let linked: Vec<u64> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| linked.contains(id));
        state.crashed = false;
        state.crash_countdown = None;
        state.epoch += 1;
    }

    /// Flips one bit of the durable (and written) contents of `path`.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) {
        let mut state = self.lock();
        let inode = *state.names.get(path).expect("flip_bit: no such file");
        let inode = state.inodes.get_mut(&inode).expect("linked inode exists");
        let offset = usize::try_from(byte_offset).expect("offset fits usize");
        assert!(
            offset < inode.written.len(),
            "flip_bit past the end of the file"
        );
        inode.written[offset] ^= 1 << (bit % 8);
        if offset < inode.durable.len() {
            inode.durable[offset] ^= 1 << (bit % 8);
        }
    }

    /// Durable contents of `path`, if it exists.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        Some(state.inodes[inode].durable.clone())
    }

    /// Current (written) contents of `path`, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.names.get(path)?;
        Some(state.inodes[inode].written.clone())
    }

    /// Overwrites `path` entirely and durably (to plant bad bytes in tests).
    pub fn put_durable(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.lock();
        let state = &mut *state;
        let id = match state.names.get(path) {
            Some(id) => *id,
            None => {
                let id = state.inode_next;
                state.inode_next += 1;
                state.inodes.insert(id, Inode::default());
                state.names.insert(path.to_owned(), id);
                state.names_durable.insert(path.to_owned(), id);
                id
            }
        };
        let inode = state.inodes.get_mut(&id).expect("inode exists");
        inode.written = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.pending.clear();
    }

    /// Counts one mutating call; fails it when the crash countdown runs out.
    fn mutate(&self, state: &mut State) -> io::Result<()> {
        if state.crashed {
            return Err(crash_error());
        }
        state.mutations += 1;
        if let Some(countdown) = state.crash_countdown.as_mut() {
            if *countdown == 0 {
                state.crashed = true;
                state.crash_countdown = None;
                return Err(crash_error());
            }
            *countdown -= 1;
        }
        Ok(())
    }

    fn take_sync_failure(state: &mut State) -> bool {
        if state.syncs_to_fail > 0 {
            state.syncs_to_fail -= 1;
            return true;
        }
        false
    }
}

fn keep_count(random: &mut SplitMix64, model: CrashModel, pending: usize) -> usize {
    match model {
        CrashModel::DropUnsynced => 0,
        CrashModel::KeepUnsynced => pending,
        CrashModel::Random => match random.below(3) {
            0 => 0,
            1 => pending,
            _ => random.below(pending as u64 + 1) as usize,
        },
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        if self.lock().crashed {
            return Err(crash_error());
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        self.mutate(&mut state)?;
        let inode = state.inode_next;
        state.inode_next += 1;
        state.inodes.insert(inode, Inode::default());
        state.names.insert(path.to_owned(), inode);
        state.dir_pending.push(DirOp::Link {
            path: path.to_owned(),
            inode,
        });
        Ok(Arc::new(FaultyFile {
            storage: self.clone(),
            inode,
            epoch: state.epoch,
            path: path.to_owned(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let state = self.lock();
        if state.crashed {
            return Err(crash_error());
        }
        let inode = *state
            .names
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        Ok(Arc::new(FaultyFile {
            storage: self.clone(),
            inode,
            epoch: state.epoch,
            path: path.to_owned(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        self.mutate(&mut state)?;
        if state.names.remove(path).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        state.dir_pending.push(DirOp::Unlink {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        self.mutate(&mut state)?;
        let inode = state
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        state.names.insert(to.to_owned(), inode);
        // One directory operation: a crash keeps all of a rename or none of it.
        state.dir_pending.push(DirOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            inode,
        });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if state.crashed {
            return Err(crash_error());
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        self.mutate(&mut state)?;
        if FaultyStorage::take_sync_failure(&mut state) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        let state = &mut *state;
        // The flat directories used here: syncing one directory makes its entries durable.
        let (mine, others): (Vec<DirOp>, Vec<DirOp>) =
            state.dir_pending.drain(..).partition(|op| {
                let path = match op {
                    DirOp::Link { path, .. }
                    | DirOp::Unlink { path }
                    | DirOp::Rename { to: path, .. } => path,
                };
                path.parent() == Some(dir)
            });
        for op in &mine {
            apply_dir_op(&mut state.names_durable, op);
        }
        state.dir_pending = others;
        Ok(())
    }
}

/// A handle on one in-memory file.
#[derive(Debug)]
struct FaultyFile {
    storage: FaultyStorage,
    inode: u64,
    epoch: u64,
    path: PathBuf,
}

impl FaultyFile {
    fn check(&self, state: &State) -> io::Result<()> {
        if state.crashed || state.epoch != self.epoch {
            return Err(crash_error());
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.storage.lock();
        self.check(&state)?;
        self.storage.mutate(&mut state)?;
        let failed = FaultyStorage::take_sync_failure(&mut state);
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        if failed {
            // fsyncgate: the kernel drops the dirty pages' error state; they never reach the disk.
            inode.pending.clear();
            return Err(io::Error::other(format!(
                "injected fsync failure on {}",
                self.path.display()
            )));
        }
        for op in std::mem::take(&mut inode.pending) {
            apply_file_op(&mut inode.durable, &op);
        }
        Ok(())
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.storage.lock();
        self.check(&state)?;
        let data = &state.inodes[&self.inode].written;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset >= data.len() {
            return Ok(0);
        }
        let count = buf.len().min(data.len() - offset);
        buf[..count].copy_from_slice(&data[offset..offset + count]);
        Ok(count)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        self.check(&state)?;
        let crash = self.storage.mutate(&mut state);
        let state = &mut *state;
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        let bytes = match crash {
            Ok(()) => buf.to_vec(),
            // The crashing write may have reached the page cache in part.
            Err(_) => buf[..state.random.below(buf.len() as u64 + 1) as usize].to_vec(),
        };
        let op = FileOp::Write { offset, bytes };
        apply_file_op(&mut inode.written, &op);
        inode.pending.push(op);
        crash
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.storage.lock();
        self.check(&state)?;
        Ok(state.inodes[&self.inode].written.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        self.check(&state)?;
        self.storage.mutate(&mut state)?;
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        let op = FileOp::SetLen(len);
        apply_file_op(&mut inode.written, &op);
        inode.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}
