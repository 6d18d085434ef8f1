//! Log entries and their fixed 64-byte little-endian header.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::limits::{
    BATCH_EVENTS_MAX, ENTRY_ALIGNMENT, ENTRY_HEADER_SIZE, EVENT_SIZE, FORMAT_VERSION,
    PAYLOAD_SIZE_MAX,
};

/// Magic at the start of every entry header.
pub const ENTRY_MAGIC: [u8; 4] = *b"TLYE";

/// Identity of a log entry: Raft's committed leader id (term, node id) and the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub term: u64,
    pub leader_node_id: u64,
    pub index: u64,
}

impl EntryId {
    pub fn new(term: u64, leader_node_id: u64, index: u64) -> EntryId {
        EntryId {
            term,
            leader_node_id,
            index,
        }
    }
}

/// What an entry carries. The byte values are part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum EntryKind {
    /// A client batch: `event_count` fixed 128-byte events.
    Batch = 1,
    /// A blank entry (a new leader's first entry).
    Blank = 2,
    /// A membership change: opaque bytes (postcard, encoded by the caller).
    Membership = 3,
}

impl EntryKind {
    pub fn from_byte(byte: u8) -> Option<EntryKind> {
        match byte {
            1 => Some(EntryKind::Batch),
            2 => Some(EntryKind::Blank),
            3 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// One log entry. For batches, `payload` is `event_count * 128` bytes of events;
/// for other kinds `operation`, `timestamp` and `event_count` are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
    pub operation: u8,
    pub timestamp: u64,
    pub event_count: u32,
    /// Shared, not copied: the log store hands the replicated entry's bytes over as they are.
    pub payload: Bytes,
}

impl Entry {
    /// A client batch; `events` holds whole 128-byte events.
    pub fn batch(id: EntryId, operation: u8, timestamp: u64, events: impl Into<Bytes>) -> Entry {
        let events = events.into();
        let event_count = u32::try_from(events.len() / EVENT_SIZE).unwrap_or(u32::MAX);
        Entry {
            id,
            kind: EntryKind::Batch,
            operation,
            timestamp,
            event_count,
            payload: events,
        }
    }

    pub fn blank(id: EntryId) -> Entry {
        Entry {
            id,
            kind: EntryKind::Blank,
            operation: 0,
            timestamp: 0,
            event_count: 0,
            payload: Bytes::new(),
        }
    }

    pub fn membership(id: EntryId, bytes: impl Into<Bytes>) -> Entry {
        Entry {
            id,
            kind: EntryKind::Membership,
            operation: 0,
            timestamp: 0,
            event_count: 0,
            payload: bytes.into(),
        }
    }

    /// Checks the relations between the fields; the same checks run on recovery.
    pub fn validate(&self) -> Result<()> {
        let reason = validate_fields(
            self.kind,
            self.operation,
            self.timestamp,
            self.event_count,
            self.payload.len(),
        );
        match reason {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidEntry {
                index: self.id.index,
                reason,
            }),
        }
    }

    /// Bytes this entry occupies in a segment.
    pub fn record_size(&self) -> usize {
        record_size(self.payload.len())
    }
}

fn validate_fields(
    kind: EntryKind,
    operation: u8,
    timestamp: u64,
    event_count: u32,
    payload_size: usize,
) -> Option<&'static str> {
    if payload_size > PAYLOAD_SIZE_MAX as usize {
        return Some("payload larger than PAYLOAD_SIZE_MAX");
    }
    match kind {
        EntryKind::Batch => {
            if event_count == 0 || event_count > BATCH_EVENTS_MAX {
                return Some("batch event count outside 1..=BATCH_EVENTS_MAX");
            }
            if payload_size != event_count as usize * EVENT_SIZE {
                return Some("batch payload length is not event_count * 128");
            }
        }
        EntryKind::Blank => {
            if payload_size != 0 {
                return Some("blank entry with a payload");
            }
        }
        EntryKind::Membership => {}
    }
    if kind != EntryKind::Batch && (operation != 0 || timestamp != 0 || event_count != 0) {
        return Some("operation, timestamp and event_count must be zero outside batches");
    }
    None
}

pub(crate) fn record_size(payload_size: usize) -> usize {
    ENTRY_HEADER_SIZE + payload_size.next_multiple_of(ENTRY_ALIGNMENT)
}

/// Offsets inside the 64-byte entry header (documented in docs/design.md §3).
mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 6;
    pub const OPERATION: usize = 7;
    pub const TERM: usize = 8;
    pub const LEADER: usize = 16;
    pub const INDEX: usize = 24;
    pub const TIMESTAMP: usize = 32;
    pub const EVENT_COUNT: usize = 40;
    pub const PAYLOAD_LEN: usize = 44;
    pub const RESERVED: usize = 48;
    pub const CRC: usize = 60;
}

/// Appends the whole on-disk record of `entry` (header, payload, zero padding) to `out`.
pub(crate) fn encode_record(entry: &Entry, out: &mut Vec<u8>) {
    let (header, padding) = encode_record_header(entry);
    out.extend_from_slice(&header);
    out.extend_from_slice(&entry.payload);
    out.extend_from_slice(&RECORD_PADDING[..padding]);
}

/// Zero bytes, as many as a record's padding can hold.
pub(crate) const RECORD_PADDING: [u8; ENTRY_ALIGNMENT] = [0; ENTRY_ALIGNMENT];

/// The header of `entry`'s record, checksum included, and how many zero bytes follow its payload:
/// the record is these three pieces in order, for a writer that gathers them (`pwritev`) instead
/// of copying the payload.
pub(crate) fn encode_record_header(entry: &Entry) -> ([u8; ENTRY_HEADER_SIZE], usize) {
    let mut header = [0u8; ENTRY_HEADER_SIZE];
    header[field::MAGIC..field::MAGIC + 4].copy_from_slice(&ENTRY_MAGIC);
    header[field::VERSION..field::VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[field::KIND] = entry.kind as u8;
    header[field::OPERATION] = entry.operation;
    header[field::TERM..field::TERM + 8].copy_from_slice(&entry.id.term.to_le_bytes());
    header[field::LEADER..field::LEADER + 8]
        .copy_from_slice(&entry.id.leader_node_id.to_le_bytes());
    header[field::INDEX..field::INDEX + 8].copy_from_slice(&entry.id.index.to_le_bytes());
    header[field::TIMESTAMP..field::TIMESTAMP + 8].copy_from_slice(&entry.timestamp.to_le_bytes());
    header[field::EVENT_COUNT..field::EVENT_COUNT + 4]
        .copy_from_slice(&entry.event_count.to_le_bytes());
    let payload_len =
        u32::try_from(entry.payload.len()).expect("payload validated before encoding");
    header[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 4].copy_from_slice(&payload_len.to_le_bytes());
    let padding = entry.record_size() - ENTRY_HEADER_SIZE - entry.payload.len();
    assert!(padding < ENTRY_ALIGNMENT);
    let crc = crc32c::crc32c(&header[..field::CRC]);
    let crc = crc32c::crc32c_append(crc, &entry.payload);
    let crc = crc32c::crc32c_append(crc, &RECORD_PADDING[..padding]);
    header[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    (header, padding)
}

/// The fields of a header whose magic matched; nothing else is checked yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub version: u16,
    pub kind: u8,
    pub operation: u8,
    pub id: EntryId,
    pub timestamp: u64,
    pub event_count: u32,
    pub payload_len: u32,
    pub reserved_zero: bool,
    pub crc: u32,
}

impl Header {
    /// `None` when the magic does not match.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        assert!(bytes.len() >= ENTRY_HEADER_SIZE);
        if bytes[field::MAGIC..field::MAGIC + 4] != ENTRY_MAGIC {
            return None;
        }
        Some(Header {
            version: u16_at(bytes, field::VERSION),
            kind: bytes[field::KIND],
            operation: bytes[field::OPERATION],
            id: EntryId {
                term: u64_at(bytes, field::TERM),
                leader_node_id: u64_at(bytes, field::LEADER),
                index: u64_at(bytes, field::INDEX),
            },
            timestamp: u64_at(bytes, field::TIMESTAMP),
            event_count: u32_at(bytes, field::EVENT_COUNT),
            payload_len: u32_at(bytes, field::PAYLOAD_LEN),
            reserved_zero: bytes[field::RESERVED..field::CRC].iter().all(|&b| b == 0),
            crc: u32_at(bytes, field::CRC),
        })
    }

    /// Size of the whole record, when the length field is within bounds.
    pub fn record_size(&self) -> Option<usize> {
        (self.payload_len <= PAYLOAD_SIZE_MAX).then(|| record_size(self.payload_len as usize))
    }
}

/// Why a record read back from disk is not a valid entry.
#[derive(Debug)]
pub(crate) enum RecordFault {
    /// Checksum or structure is wrong: torn or corrupt.
    Invalid(&'static str),
    /// Checksum is right but the version is another one.
    Version(u16),
}

/// What a verified record holds, apart from its payload bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verified {
    pub id: EntryId,
    pub kind: EntryKind,
    pub operation: u8,
    pub timestamp: u64,
    pub event_count: u32,
    pub payload_len: usize,
}

impl Verified {
    /// The entry, with `payload` (exactly `payload_len` bytes) as its payload.
    pub(crate) fn entry(self, payload: impl Into<Bytes>) -> Entry {
        let payload = payload.into();
        assert_eq!(payload.len(), self.payload_len);
        Entry {
            id: self.id,
            kind: self.kind,
            operation: self.operation,
            timestamp: self.timestamp,
            event_count: self.event_count,
            payload,
        }
    }
}

/// Verifies a whole record (`record` = header + payload + padding) and decodes it.
#[cfg(test)]
pub(crate) fn decode_record(record: &[u8]) -> Result<Entry, RecordFault> {
    let verified = verify_record(record)?;
    let payload = &record[ENTRY_HEADER_SIZE..ENTRY_HEADER_SIZE + verified.payload_len];
    Ok(verified.entry(payload.to_vec()))
}

/// Verifies a whole record without copying its payload.
pub(crate) fn verify_record(record: &[u8]) -> Result<Verified, RecordFault> {
    if record.len() < ENTRY_HEADER_SIZE {
        return Err(RecordFault::Invalid("record shorter than its header"));
    }
    let (header, body) = record.split_at(ENTRY_HEADER_SIZE);
    verify_parts(header, body)
}

/// Verifies a record read as its header and its body (payload + padding, at least as long
/// as the header says), then makes the body the entry's payload: no copy.
pub(crate) fn decode_parts(header: &[u8], mut body: Vec<u8>) -> Result<Entry, RecordFault> {
    let verified = verify_parts(header, &body)?;
    body.truncate(verified.payload_len);
    Ok(verified.entry(body))
}

pub(crate) fn verify_parts(header_bytes: &[u8], body: &[u8]) -> Result<Verified, RecordFault> {
    let header = Header::parse(header_bytes).ok_or(RecordFault::Invalid("bad entry magic"))?;
    let size = header
        .record_size()
        .ok_or(RecordFault::Invalid("payload length out of bounds"))?;
    let body_size = size - ENTRY_HEADER_SIZE;
    if body.len() < body_size {
        return Err(RecordFault::Invalid("record shorter than its length field"));
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&header_bytes[..field::CRC]),
        &body[..body_size],
    );
    if crc != header.crc {
        return Err(RecordFault::Invalid("entry checksum mismatch"));
    }
    check_header_fields(&header)
}

/// Checks a record's header alone, without its checksum (which covers the body too): what a
/// scan that defers checksums to reading can know. `Invalid` for a bad magic or any field out
/// of bounds.
pub(crate) fn check_header(header_bytes: &[u8]) -> Result<Verified, RecordFault> {
    let header = Header::parse(header_bytes).ok_or(RecordFault::Invalid("bad entry magic"))?;
    header
        .record_size()
        .ok_or(RecordFault::Invalid("payload length out of bounds"))?;
    check_header_fields(&header)
}

fn check_header_fields(header: &Header) -> Result<Verified, RecordFault> {
    // No format has version 0: a header torn after its magic, not a format to refuse.
    if header.version == 0 {
        return Err(RecordFault::Invalid(
            "entry header without a version (torn)",
        ));
    }
    if header.version != FORMAT_VERSION {
        return Err(RecordFault::Version(header.version));
    }
    if !header.reserved_zero {
        return Err(RecordFault::Invalid("reserved header bytes are not zero"));
    }
    let kind =
        EntryKind::from_byte(header.kind).ok_or(RecordFault::Invalid("unknown entry kind"))?;
    let payload_len = header.payload_len as usize;
    if let Some(reason) = validate_fields(
        kind,
        header.operation,
        header.timestamp,
        header.event_count,
        payload_len,
    ) {
        return Err(RecordFault::Invalid(reason));
    }
    Ok(Verified {
        id: header.id,
        kind,
        operation: header.operation,
        timestamp: header.timestamp,
        event_count: header.event_count,
        payload_len,
    })
}

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_every_bit_is_covered() {
        let entry = Entry::batch(EntryId::new(3, 7, 42), 5, 1234, vec![0xAB; 2 * EVENT_SIZE]);
        entry.validate().unwrap();
        let mut record = Vec::new();
        encode_record(&entry, &mut record);
        assert_eq!(record.len(), entry.record_size());
        assert_eq!(decode_record(&record).unwrap(), entry);
        for bit in 0..record.len() * 8 {
            let mut flipped = record.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&flipped).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn membership_payload_is_padded_and_covered() {
        let entry = Entry::membership(EntryId::new(1, 1, 0), vec![1, 2, 3]);
        let mut record = Vec::new();
        encode_record(&entry, &mut record);
        assert_eq!(record.len(), ENTRY_HEADER_SIZE + 8);
        record[ENTRY_HEADER_SIZE + 5] = 1; // a padding byte
        assert!(decode_record(&record).is_err());
    }

    #[test]
    fn invalid_entries_are_rejected() {
        let id = EntryId::new(1, 1, 1);
        let cases = [
            Entry::batch(id, 1, 1, vec![]),
            Entry::batch(id, 1, 1, vec![0; 100]),
            Entry::batch(
                id,
                1,
                1,
                vec![0; (BATCH_EVENTS_MAX as usize + 1) * EVENT_SIZE],
            ),
            Entry {
                payload: vec![1].into(),
                ..Entry::blank(id)
            },
            Entry {
                timestamp: 9,
                ..Entry::membership(id, vec![])
            },
        ];
        for entry in cases {
            assert!(
                matches!(entry.validate(), Err(Error::InvalidEntry { .. })),
                "{entry:?}"
            );
        }
    }
}
