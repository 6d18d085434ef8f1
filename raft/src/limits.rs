//! Every bound of the server pipeline, in one place.

/// Slots in the apply ring (a power of two, as the disruptor requires).
pub const APPLY_RING_SLOTS: usize = 1024;

/// Client submissions waiting for the ingress batcher; past this a write is
/// answered "busy, retry" before anything is accepted.
pub const INGRESS_QUEUE_SUBMISSIONS: usize = 4096;

/// Batches proposed to Raft and not yet answered. Bounds memory held by
/// in-flight entries (each up to `BATCH_EVENTS_MAX` × 128 bytes).
pub const BATCHES_IN_FLIGHT_MAX: usize = 16;

/// Entries handed to the business-logic thread per ring publication.
pub const APPLY_ENTRIES_PER_PUBLISH: usize = 64;

/// 0: snapshots follow the adaptive policy (log bytes since the last snapshot
/// against what every snapshot copies whole) rather than a fixed entry count.
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 0;

/// The adaptive policy never snapshots for less log than this.
pub const SNAPSHOT_LOG_BYTES_MIN: u64 = 256 * 1024 * 1024;

/// How often the adaptive snapshot policy looks at the log and the state.
pub const SNAPSHOT_POLICY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Entries kept in the log behind the latest snapshot, for lagging followers.
pub const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 1_000;

/// Largest Raft RPC frame accepted from a peer (a full batch plus headroom,
/// times the entries one append may carry).
pub const RPC_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Checkpoints (digest + hash chain at an index) each node remembers to
/// verify the leader's checkpoint entries against.
pub const CHECKPOINTS_KEPT: usize = 64;

/// Log indexes between two checkpoints (the digest is a full-state scan).
pub const CHECKPOINT_EVERY_ENTRIES_DEFAULT: u64 = 1_000;

/// How often, and how far apart, a batch is retried while a new leader's
/// lease is not yet valid (nothing was appended: safe to retry).
pub const LEADER_SETTLE_RETRIES: u32 = 40;
pub const LEADER_SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Payload bytes of the newest log entries the log store keeps in memory, as appended, to
/// serve applying and replicating them without reading them back from the journal.
pub const RECENT_ENTRIES_BYTES: usize = 64 * 1024 * 1024;

/// Entries carried by one append-entries RPC.
pub const APPEND_ENTRIES_MAX: u64 = 64;

const _: () = assert!(APPLY_RING_SLOTS.is_power_of_two());
const _: () = assert!(APPLY_ENTRIES_PER_PUBLISH <= APPLY_RING_SLOTS);
const _: () = assert!(
    (APPEND_ENTRIES_MAX as usize)
        * tally_engine::limits::BATCH_EVENTS_MAX
        * tally_engine::limits::EVENT_SIZE
        < RPC_FRAME_BYTES_MAX
);

/// Transfers copied into a snapshot per step on the business-logic thread: 2^14 × 128 bytes =
/// 2 MiB, about a millisecond (a batch waiting behind a step waits that long); batches are
/// applied between steps.
pub const SNAPSHOT_TRANSFERS_PER_STEP: usize = 1 << 14;

/// The business-logic thread's rest between two snapshot steps, for batches: with steps of
/// about 2 ms (8 MiB into memory already touched), a snapshot takes at most half its time.
pub const SNAPSHOT_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// A node's thread saving a snapshot rests after each 2 MiB it syncs
/// (`tally_journal::limits::SNAPSHOT_SYNC_BYTES`) for as long as writing and syncing them took,
/// and at least this long: the disk and the CPU go to the batches at least half the time.
pub const SNAPSHOT_SAVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// A snapshot is streamed to the thread saving it a step at a time, in buffers of this size
/// (one step's transfers), touched before the business-logic thread copies into them, that
/// come back to be reused once written...
pub const SNAPSHOT_PIECE_BYTES: usize =
    SNAPSHOT_TRANSFERS_PER_STEP * tally_engine::limits::EVENT_SIZE;
/// ...with at most this many waiting to be written (the encoding waits for the disk).
pub const SNAPSHOT_PIECES_IN_FLIGHT: usize = 2;

const _: () = assert!(SNAPSHOT_TRANSFERS_PER_STEP > 0);
