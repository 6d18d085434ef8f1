//! Every bound of the journal, in one place, with the relations between them
//! asserted at compile time.

/// Size of one event record inside a batch payload.
pub const EVENT_SIZE: usize = 128;
/// Most events one batch entry may carry. Chosen so that a full entry
/// (header + payload) fits in 1 MiB.
pub const BATCH_EVENTS_MAX: u32 = 8189;
/// Largest payload of any entry kind.
pub const PAYLOAD_SIZE_MAX: u32 = BATCH_EVENTS_MAX * EVENT_SIZE as u32;
/// Size of the fixed entry header.
pub const ENTRY_HEADER_SIZE: usize = 64;
/// Every entry starts at a multiple of this offset inside its segment.
pub const ENTRY_ALIGNMENT: usize = 8;
/// Largest on-disk record (header + payload + padding).
pub const ENTRY_RECORD_SIZE_MAX: usize = ENTRY_HEADER_SIZE + PAYLOAD_SIZE_MAX as usize;
/// Size of the header at the start of every segment file.
pub const SEGMENT_HEADER_SIZE: usize = 64;
/// Default size of one segment file.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;
/// Purged segments kept for reuse, in bytes (docs/design.md §3, "Recycled segments"): entries
/// written over a used file change no metadata, so their `fdatasync` does not wait for the
/// filesystem's journal, and through it for other files' dirty data (a snapshot being saved).
/// At most this much more disk than the log itself needs.
pub const SPARE_SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Smallest segment size accepted by [`crate::JournalOptions`] (tests use small segments).
pub const SEGMENT_SIZE_MIN: u64 = 4096;
/// Largest segment size: entry offsets inside a segment are stored as `u32`.
pub const SEGMENT_SIZE_MAX: u64 = u32::MAX as u64;
/// Appends are coalesced into one write of at most this many bytes.
pub const WRITE_BUFFER_SIZE: usize = 4 * 1024 * 1024;
/// Payloads this large are not copied into the write buffer: the buffer (ending with their
/// header) and the payload, where it already is, go to disk in one `pwritev`. A batch of 8189
/// events is a megabyte; a copy of it costs more than the system call it saves.
pub const GATHERED_PAYLOAD_MIN: usize = 64 * 1024;
/// Reads that bypass the page cache ([`crate::Window`]) start and end at multiples of this,
/// and go into buffers aligned to it: the largest logical block size of common disks.
pub const STREAM_ALIGNMENT: usize = 4096;
/// Most bytes one streaming read covers, unless one record alone needs more. Large enough
/// that a read costs little next to the bytes it brings (a full 1 MiB batch has a window to
/// itself, smaller entries share one), small enough that the windows a replay keeps in
/// flight stay a few tens of MiB.
pub const STREAM_WINDOW_SIZE: usize = 2 * 1024 * 1024;
/// Window used when scanning the rest of the last segment after its end.
pub const SCAN_WINDOW_SIZE: usize = 1024 * 1024;
/// The on-disk format version written by this build (segments, records, snapshots).
pub const FORMAT_VERSION: u16 = 1;
/// Size of one slot of an atomic record file (vote/metadata, purge record).
pub const RECORD_SLOT_SIZE: usize = 4096;
/// Size of the header of one record slot.
pub const RECORD_HEADER_SIZE: usize = 32;
/// Largest payload of an atomic record.
pub const RECORD_PAYLOAD_SIZE_MAX: usize = RECORD_SLOT_SIZE - RECORD_HEADER_SIZE;
/// Size of the snapshot file header.
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
/// Snapshot data is written in chunks of this size.
pub const SNAPSHOT_WRITE_CHUNK_SIZE: usize = 1024 * 1024;
/// A snapshot being saved is synced every time this much has been written since the last
/// sync, so that it never holds more dirty data than this for the log's fsyncs to wait on
/// (at 270 MB/s, the rate of this machine's disk for synced 4 MiB writes, about 8 ms).
pub const SNAPSHOT_SYNC_BYTES: usize = 2 * 1024 * 1024;
/// A file being freed (a retired log segment, a replaced snapshot) is shrunk this much at a
/// time (`free_gradually`).
pub const FILE_FREE_STEP_BYTES: u64 = 8 * 1024 * 1024;

const _: () = assert!(ENTRY_RECORD_SIZE_MAX <= 1024 * 1024);
const _: () = assert!(SNAPSHOT_SYNC_BYTES >= SNAPSHOT_WRITE_CHUNK_SIZE);
const _: () = assert!(ENTRY_HEADER_SIZE % ENTRY_ALIGNMENT == 0);
const _: () = assert!(SEGMENT_HEADER_SIZE % ENTRY_ALIGNMENT == 0);
const _: () = assert!(EVENT_SIZE % ENTRY_ALIGNMENT == 0);
const _: () = assert!(ENTRY_RECORD_SIZE_MAX <= WRITE_BUFFER_SIZE);
const _: () = assert!(GATHERED_PAYLOAD_MIN <= WRITE_BUFFER_SIZE);
const _: () = assert!(SEGMENT_SIZE_DEFAULT >= (SEGMENT_HEADER_SIZE + ENTRY_RECORD_SIZE_MAX) as u64);
const _: () = assert!(SEGMENT_SIZE_DEFAULT <= SEGMENT_SIZE_MAX);
const _: () = assert!(SEGMENT_SIZE_MIN >= (SEGMENT_HEADER_SIZE + ENTRY_HEADER_SIZE) as u64);
const _: () = assert!(SCAN_WINDOW_SIZE % ENTRY_ALIGNMENT == 0);
const _: () = assert!(STREAM_WINDOW_SIZE % STREAM_ALIGNMENT == 0);
const _: () = assert!(STREAM_WINDOW_SIZE >= ENTRY_RECORD_SIZE_MAX + 2 * STREAM_ALIGNMENT);
const _: () = assert!(RECORD_SLOT_SIZE > RECORD_HEADER_SIZE);
