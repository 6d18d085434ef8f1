//! The small storage trait the journal sits on, and its real-filesystem implementation.
//!
//! The fault-injecting implementation is in [`crate::fault`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::limits::STREAM_ALIGNMENT;

/// A directory tree of files. Paths are full paths; the journal only uses flat directories.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates an empty file (truncating an existing one), open for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading and writing; `NotFound` when absent.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading only; `NotFound` when absent. Writes through
    /// the handle fail where the storage can enforce it (the real file system does).
    /// The default opens read-write, for storages without that distinction.
    fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.open(path)
    }
    /// Opens an existing file for reading only, around the operating system's page cache
    /// where the storage can (`O_DIRECT`), for reading a file once from start to end. Reads
    /// through it must start at, and span, multiples of [`STREAM_ALIGNMENT`] bytes, into
    /// buffers aligned to it. The default is [`Storage::open_read_only`].
    fn open_unbuffered(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.open_read_only(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names (not paths) of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. All methods take `&self` and positional offsets, so one handle can be
/// shared (`Arc`) between a writer, readers and a syncing thread.
#[allow(clippy::len_without_is_empty)] // a file length, not a collection
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs`, one after the other, from `offset`: as `write_at` of their
    /// concatenation, without making it. The default writes each in turn.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut offset = offset;
        for buf in bufs {
            self.write_at(buf, offset)?;
            offset += buf.len() as u64;
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: data and the metadata needed to read it back (size).
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Whether every page of `offset..offset + len` is in the operating system's page
    /// cache now: a read of them would not wait for the disk. Only a hint, and `false`
    /// where the storage cannot tell (the default).
    fn is_cached(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }
    /// Tells the operating system that the synced bytes in `offset..offset + len` will not be
    /// read again soon, so their cached pages can go (`posix_fadvise(DONTNEED)`). Only a hint:
    /// nothing read later changes, it may only come from the disk. The default does nothing.
    fn forget_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zero
/// (a preallocated segment is zero past its end, and so is a file cut short by a crash).
pub(crate) fn read_at_zero_filled(
    file: &dyn StorageFile,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<()> {
    let read = file.read_at(buf, offset)?;
    buf[read..].fill(0);
    Ok(())
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

impl FsStorage {
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(FsStorage)
    }
}

#[derive(Debug)]
struct FsFile(File);

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).open(path)?;
        Ok(Arc::new(FsFile(file)))
    }

    /// `O_DIRECT`, unless the file system refuses it (tmpfs does) or the file's length is
    /// not a multiple of [`STREAM_ALIGNMENT`]: a direct read cannot continue an unaligned
    /// short read at the end of the file. Then the file is read through the cache.
    fn open_unbuffered(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        match direct {
            Ok(file) if file.metadata()?.len() % STREAM_ALIGNMENT as u64 == 0 => {
                Ok(Arc::new(FsFile(file)))
            }
            Ok(_) => self.open_read_only(path),
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.open_read_only(path)
            }
            Err(error) => Err(error),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            if item.file_type()?.is_file() {
                if let Some(name) = item.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(done)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    /// `pwritev`, again for what a short write left.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs
            .iter()
            .filter(|buf| !buf.is_empty())
            .map(|buf| io::IoSlice::new(buf))
            .collect();
        let mut slices = &mut slices[..];
        let mut offset = offset;
        while !slices.is_empty() {
            match rustix::io::pwritev(&self.0, slices, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    offset += written as u64;
                    io::IoSlice::advance_slices(&mut slices, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn is_cached(&self, offset: u64, len: u64) -> bool {
        let pages = (offset + len).div_ceil(PAGE_SIZE) - offset / PAGE_SIZE;
        len > 0 && cached_pages(&self.0, offset, len) == Some(pages)
    }

    fn forget_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        rustix::fs::fadvise(&self.0, offset, Some(len), rustix::fs::Advice::DontNeed)
            .map_err(io::Error::from)
    }
}

/// The page size the kernel's page cache counts in (x86-64 and most of arm64).
const PAGE_SIZE: u64 = 4096;

/// `cachestat(2)` (Linux 6.5 and later): how many pages of `offset..offset + len` of
/// `file` are in the page cache. `None` where the kernel has no such call, or refuses.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn cached_pages(file: &File, offset: u64, len: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    /// Added after the system call tables were unified: the same number everywhere.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        offset: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let range = Range { offset, len };
    let mut stat = Stat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both alive for the whole call and
    // laid out as `struct cachestat_range` and `struct cachestat` (include/uapi/linux/mman.h).
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    (result == 0).then_some(stat.cache)
}

#[cfg(not(target_os = "linux"))]
fn cached_pages(_file: &File, _offset: u64, _len: u64) -> Option<u64> {
    None
}

/// Shrinks `file`, which no name refers to any more, `FILE_FREE_STEP_BYTES` at a time, resting
/// `pause` (or as long as the step took) in between: the file system frees a file's blocks in one
/// journal transaction per call, which the log's next fdatasync waits for, and all of a large
/// file at once stalls it for tens of milliseconds. Best effort: whatever is left is freed when
/// the file is closed.
pub fn free_gradually(file: &dyn StorageFile, pause: std::time::Duration) {
    let mut length = file.len().unwrap_or(0);
    while length > 0 {
        let started = std::time::Instant::now();
        length = length.saturating_sub(crate::limits::FILE_FREE_STEP_BYTES);
        if let Err(error) = file.set_len(length) {
            tracing::debug!(%error, "a file is freed at once");
            return;
        }
        if length > 0 {
            std::thread::sleep(pause.max(started.elapsed()));
        }
    }
}
