//! Reading a stretch of the log from start to end in large reads that bypass the page
//! cache: what an audit does (`tally replay` reads every byte of the log once).
//!
//! [`Journal::stream_plan`](crate::Journal::stream_plan) plans the reads: each [`Window`]
//! is one aligned read of whole records (segments already in the page cache are read
//! through it instead, entry by entry: [`Piece::Cached`]). [`Window::read`] does the
//! read, through a handle from [`Storage::open_unbuffered`](crate::Storage::open_unbuffered),
//! and [`ReadWindow::entries`] checks and decodes its records. The entries' payloads are
//! slices of the window's one buffer, not copies. Planning, reading and decoding are apart
//! so that a caller can read the next window on one thread while it decodes this one on
//! another.
//!
//! Why not through the page cache: an audit reads gigabytes once. Buffered, every byte is
//! first put into a cache page the kernel must allocate and account for, then copied into
//! the reader's buffer; on the two-CPU machine this was measured on, that kernel work was
//! 2.7 s of CPU time for a 2.5 GB log read cold (docs/design.md §3, "Streaming reads").

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::entry::{verify_parts, Entry};
use crate::error::{Error, Result};
use crate::journal::{expect_index, fault_to_error};
use crate::limits::{ENTRY_HEADER_SIZE, STREAM_ALIGNMENT, STREAM_WINDOW_SIZE};
use crate::storage::StorageFile;

/// One step of [`Journal::stream_plan`](crate::Journal::stream_plan).
#[derive(Debug)]
pub enum Piece {
    /// Entries whose bytes are all in the page cache: read them with
    /// [`Journal::entry`](crate::Journal::entry).
    Cached(std::ops::RangeInclusive<u64>),
    /// A read around the page cache.
    Window(Window),
}

/// One planned read: the records of entries `first_index..` in `offset..offset + len` of a
/// segment file, `offset` and `len` multiples of [`STREAM_ALIGNMENT`].
#[derive(Debug)]
pub struct Window {
    path: Arc<Path>,
    file: Arc<dyn StorageFile>,
    offset: u64,
    len: usize,
    first_index: u64,
    /// Each record's start and end in the file, entry `first_index + i` at `i`.
    records: Vec<(u64, u64)>,
    buffers: Buffers,
}

/// A window's bytes as read.
#[derive(Debug)]
pub struct ReadWindow {
    path: Arc<Path>,
    offset: u64,
    first_index: u64,
    records: Vec<(u64, u64)>,
    bytes: Bytes,
}

impl Window {
    /// Plans the windows over `records` (start and end of entry `first_index + i`, in
    /// order, contiguous or not) of one segment file: as many whole records to a window as
    /// fit in [`STREAM_WINDOW_SIZE`], and at least one.
    pub(crate) fn plan(
        path: &Path,
        file: &Arc<dyn StorageFile>,
        buffers: &Buffers,
        first_index: u64,
        records: impl IntoIterator<Item = (u64, u64)>,
    ) -> Vec<Window> {
        let path: Arc<Path> = Arc::from(path);
        let mut windows: Vec<Window> = Vec::new();
        for (index, (start, end)) in (first_index..).zip(records) {
            assert!(start < end, "a record has bytes");
            let fits = windows.last().is_some_and(|window| {
                let (_, previous_end) = *window.records.last().expect("a window has a record");
                assert!(previous_end <= start, "records in file order");
                align_up(end) - window.offset <= STREAM_WINDOW_SIZE as u64
            });
            if fits {
                let window = windows.last_mut().expect("checked above");
                window.len = usize::try_from(align_up(end) - window.offset).expect("fits");
                window.records.push((start, end));
            } else {
                let offset = align_down(start);
                windows.push(Window {
                    path: Arc::clone(&path),
                    file: Arc::clone(file),
                    offset,
                    len: usize::try_from(align_up(end) - offset).expect("a record fits usize"),
                    first_index: index,
                    records: vec![(start, end)],
                    buffers: buffers.clone(),
                });
            }
        }
        windows
    }

    /// Entries in this window.
    pub fn entries(&self) -> std::ops::Range<u64> {
        self.first_index..self.first_index + self.records.len() as u64
    }

    /// The file the window reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where in the file the record of entry `index`, one of this window's, starts.
    pub fn record_offset(&self, index: u64) -> u64 {
        assert!(
            self.entries().contains(&index),
            "entry {index} is in the window"
        );
        self.records[usize::try_from(index - self.first_index).expect("fits")].0
    }

    /// Reads the window: one aligned read into an aligned buffer, a buffer of an earlier
    /// window of the same plan once that window's entries are all dropped. Bytes past the
    /// end of the file read as zero (the records' checksums then fail: a file cut short is
    /// corrupt).
    pub fn read(self) -> Result<ReadWindow> {
        let mut buffer = self.buffers.take(self.len);
        let target = buffer.window_mut();
        let read = self
            .file
            .read_at(target, self.offset)
            .map_err(|error| Error::io("read", &*self.path, error))?;
        target[read..].fill(0);
        let bytes = Bytes::from_owner(buffer);
        Ok(ReadWindow {
            path: self.path,
            offset: self.offset,
            first_index: self.first_index,
            records: self.records,
            bytes,
        })
    }
}

impl ReadWindow {
    /// The window's entries in order, each checked as [`Journal::entry`](crate::Journal::entry)
    /// checks it; a damaged record is an [`Error::Corruption`] naming its index, and ends
    /// nothing: the caller decides whether to go on.
    pub fn entries(self) -> impl Iterator<Item = Result<Entry>> {
        let ReadWindow {
            path,
            offset,
            first_index,
            records,
            bytes,
        } = self;
        records
            .into_iter()
            .zip(first_index..)
            .map(move |((start, end), index)| {
                let begin = usize::try_from(start - offset).expect("inside the window");
                let end = usize::try_from(end - offset).expect("inside the window");
                let header = &bytes[begin..begin + ENTRY_HEADER_SIZE];
                let verified = verify_parts(header, &bytes[begin + ENTRY_HEADER_SIZE..end])
                    .map_err(|fault| fault_to_error(&path, start, index, fault))?;
                let body = begin + ENTRY_HEADER_SIZE;
                let entry = verified.entry(bytes.slice(body..body + verified.payload_len));
                expect_index(entry, &path, start, index)
            })
    }
}

/// The window buffers of one plan that no entry holds any more, for the next reads: a
/// fresh buffer would be zeroed first, then faulted in page by page. At most
/// [`Buffers::KEPT`] wait here; the rest are freed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    const KEPT: usize = 8;

    /// A buffer with room for `len` bytes at an aligned start.
    fn take(&self, len: usize) -> Buffer {
        let size = len + STREAM_ALIGNMENT;
        let kept = self
            .0
            .lock()
            .expect("no panic while holding the lock")
            .pop();
        let bytes = match kept {
            Some(bytes) if bytes.len() >= size => bytes,
            // An aligned stretch of a buffer one alignment longer: no `unsafe` allocation.
            _ => vec![0u8; size.max(STREAM_WINDOW_SIZE + STREAM_ALIGNMENT)],
        };
        let start = bytes.as_ptr().align_offset(STREAM_ALIGNMENT);
        assert!(start < STREAM_ALIGNMENT, "a byte buffer can be aligned");
        Buffer {
            bytes,
            start,
            len,
            home: self.clone(),
        }
    }
}

/// One window's bytes, `bytes[start..start + len]`; back to its [`Buffers`] when dropped.
#[derive(Debug)]
struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
    home: Buffers,
}

impl Buffer {
    fn window_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut kept = self.home.0.lock().expect("no panic while holding the lock");
        if kept.len() < Buffers::KEPT {
            kept.push(bytes);
        }
    }
}

fn align_down(offset: u64) -> u64 {
    offset - offset % STREAM_ALIGNMENT as u64
}

fn align_up(offset: u64) -> u64 {
    offset.next_multiple_of(STREAM_ALIGNMENT as u64)
}
