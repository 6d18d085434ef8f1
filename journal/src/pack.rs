//! How the snapshot store keeps a snapshot's data on disk: packed, so that the disk carries
//! fewer bytes than the state has (docs/design.md §3, "Snapshot data encoding").
//!
//! The data is read as little-endian 8-byte words. Each word is XORed with the word one
//! record (`RECORD_WORDS` words, 128 bytes) before it, which is zero before the first
//! record; the result is stored as a tag byte whose bit *k* says that byte *k* is not zero,
//! followed by those non-zero bytes in order. A final partial word is taken as padded with
//! zeros, and the padding must unpack as zeros.
//!
//! Why this shape: the engine's snapshot is arrays of 128-byte records, and neighbouring
//! records share most of their bytes (the high words of ids a client numbers, ledger and code,
//! flags, a timestamp that moves by one), or hold zeros (unused user data, the high bytes of
//! amounts and balances). Both become zero bytes, which cost nothing but their tag bit. It
//! needs no table and no window beyond one record, so packing runs at memory speed on the
//! saver's thread, where LZ4 took CPU the node needs (session 16). Incompressible data grows
//! by one byte in eight at most (`packed_size_max`).

/// The distance, in words, between a word and the word it is XORed with: one 128-byte record
/// of the engine's.
pub const RECORD_WORDS: usize = 16;
const WORD_SIZE: usize = 8;
/// The most bytes one packed word takes: its tag and eight non-zero bytes.
pub const PACKED_WORD_SIZE_MAX: usize = 1 + WORD_SIZE;

/// The most bytes `data_len` bytes of data can take packed.
pub fn packed_size_max(data_len: u64) -> u64 {
    data_len.div_ceil(WORD_SIZE as u64) * PACKED_WORD_SIZE_MAX as u64
}

/// How many words `data_len` bytes of data are packed as.
pub fn words_of(data_len: u64) -> u64 {
    data_len.div_ceil(WORD_SIZE as u64)
}

/// The last record's words, which the next ones are XORed with, and how many words went by:
/// the state packing and unpacking share.
#[derive(Debug, Default)]
struct History {
    words: [u64; RECORD_WORDS],
    count: u64,
}

impl History {
    /// The word one record before the next one (zero in the first record).
    fn previous(&self) -> u64 {
        self.words[(self.count % RECORD_WORDS as u64) as usize]
    }

    /// Takes the next word (as it is, not XORed).
    fn push(&mut self, word: u64) {
        self.words[(self.count % RECORD_WORDS as u64) as usize] = word;
        self.count += 1;
    }
}

/// Packs data given in pieces of any length, in order.
#[derive(Debug, Default)]
pub struct Packer {
    history: History,
    partial: [u8; WORD_SIZE],
    partial_len: usize,
}

impl Packer {
    pub fn new() -> Packer {
        Packer::default()
    }

    /// A packer that goes on after `record`, packed before (by another packer, maybe in
    /// another process): the next words are XORed with its words, as they would be had
    /// `record` been packed by this one. For data extended in place.
    pub fn after_record(record: &[u8; RECORD_WORDS * WORD_SIZE]) -> Packer {
        let mut packer = Packer::default();
        for word in record.chunks_exact(WORD_SIZE) {
            packer
                .history
                .push(u64::from_le_bytes(word.try_into().expect("a word")));
        }
        packer
    }

    /// Whether what was packed so far is whole records (no partial word held back).
    pub fn is_at_record_boundary(&self) -> bool {
        self.partial_len == 0 && self.history.count % RECORD_WORDS as u64 == 0
    }

    /// The last whole record packed (or given to `after_record`), if the data packed so far
    /// ends on a record boundary and holds one.
    pub fn last_record(&self) -> Option<[u8; RECORD_WORDS * WORD_SIZE]> {
        if !self.is_at_record_boundary() || self.history.count == 0 {
            return None;
        }
        let mut record = [0u8; RECORD_WORDS * WORD_SIZE];
        for (index, word) in self.history.words.iter().enumerate() {
            store_word(&mut record, index, *word);
        }
        Some(record)
    }

    /// Appends the packed form of `data`'s whole words to `out`; bytes short of a word wait
    /// for the next piece (or `finish`).
    pub fn pack(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(
            start + packed_size_max(data.len() as u64 + WORD_SIZE as u64) as usize,
            0,
        );
        let packed = self.pack_into(data, &mut out[start..]);
        out.truncate(start + packed);
    }

    /// `pack` into `buffer`, from its start: returns how many bytes it took. `buffer` must have
    /// room for `packed_size_max(data.len() + 8)` bytes. For a caller that packs piece after
    /// piece into one buffer: `pack` zeroes the room it may need each time first, a quarter of
    /// the time packing takes (session 19).
    pub fn pack_into(&mut self, mut data: &[u8], buffer: &mut [u8]) -> usize {
        assert!(buffer.len() as u64 >= packed_size_max(data.len() as u64 + WORD_SIZE as u64));
        let mut at = 0;
        if self.partial_len > 0 {
            let taken = data.len().min(WORD_SIZE - self.partial_len);
            self.partial[self.partial_len..self.partial_len + taken]
                .copy_from_slice(&data[..taken]);
            self.partial_len += taken;
            data = &data[taken..];
            if self.partial_len < WORD_SIZE {
                return 0;
            }
            self.partial_len = 0;
            let word = self.partial;
            at = self.pack_words(&word, buffer);
        }
        let whole = data.len() / WORD_SIZE * WORD_SIZE;
        let (words, rest) = data.split_at(whole);
        at += self.pack_words(words, &mut buffer[at..]);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        at
    }

    /// Appends the last partial word, padded with zeros, if there is one.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.partial_len > 0 {
            self.partial[self.partial_len..].fill(0);
            let word = self.partial;
            let start = out.len();
            out.resize(start + PACKED_WORD_SIZE_MAX, 0);
            let packed = self.pack_words(&word, &mut out[start..]);
            out.truncate(start + packed);
        }
    }

    /// Packs `bytes`, whole words, into `buffer` (room for the worst case); returns the bytes
    /// it took.
    fn pack_words(&mut self, bytes: &[u8], buffer: &mut [u8]) -> usize {
        // A word at a time up to a record boundary, then a record at a time: the words it is
        // XORed with are the last record's, in place, with no ring to index (pack ran at
        // 1.4-2.0 GB/s a word at a time, session 19).
        let to_boundary =
            (RECORD_WORDS - (self.history.count % RECORD_WORDS as u64) as usize) % RECORD_WORDS;
        let (lead, bytes) = bytes.split_at((to_boundary * WORD_SIZE).min(bytes.len()));
        let mut at = self.pack_each_word(lead, buffer, 0);
        let mut records = bytes.chunks_exact(RECORD_WORDS * WORD_SIZE);
        for record in &mut records {
            for (index, previous) in self.history.words.iter_mut().enumerate() {
                let word = word_at(record, index);
                at = store_packed(buffer, at, word ^ *previous);
                *previous = word;
            }
            self.history.count += RECORD_WORDS as u64;
        }
        self.pack_each_word(records.remainder(), buffer, at)
    }

    /// Packs the whole words of `bytes` one at a time into `buffer` from `at`; returns where
    /// the next one goes.
    fn pack_each_word(&mut self, bytes: &[u8], buffer: &mut [u8], mut at: usize) -> usize {
        for index in 0..bytes.len() / WORD_SIZE {
            let word = word_at(bytes, index);
            at = store_packed(buffer, at, word ^ self.history.previous());
            self.history.push(word);
        }
        at
    }
}

/// The `index`th little-endian word of `bytes`.
#[inline(always)]
fn word_at(bytes: &[u8], index: usize) -> u64 {
    u64::from_le_bytes(
        bytes[index * WORD_SIZE..][..WORD_SIZE]
            .try_into()
            .expect("a word"),
    )
}

/// Stores the packed form of `delta` (a word XORed with the word a record before) at `at` in
/// `buffer`, which has room for the worst case; returns where the next one goes.
#[inline(always)]
fn store_packed(buffer: &mut [u8], at: usize, delta: u64) -> usize {
    if delta == 0 {
        // As in `unpack`: the commonest word in a ledger's records, taken faster by a branch.
        buffer[at] = 0;
        return at + 1;
    }
    let tag = nonzero_bytes(delta);
    let (gathered, count) = if is_low_run(tag) {
        // The non-zero bytes are the low ones (a small number changed: an id, an amount, a
        // timestamp), already gathered: the common case, on a branch.
        (delta, tag.count_ones() as usize)
    } else {
        gather_nonzero_bytes(delta)
    };
    buffer[at] = tag;
    // All eight bytes stored, `count` of them kept: inside the room reserved for this word,
    // and one store instead of one per byte.
    buffer[at + 1..at + PACKED_WORD_SIZE_MAX].copy_from_slice(&gathered.to_le_bytes());
    at + 1 + count
}

/// Whether the bytes `tag` names are the lowest ones, none skipped (and at least one).
fn is_low_run(tag: u8) -> bool {
    tag & tag.wrapping_add(1) == 0
}

/// The non-zero bytes of `word`, in order, from the low end of the result, and their count.
/// No branch on the bytes: data whose zeros fall anywhere costs the same.
fn gather_nonzero_bytes(word: u64) -> (u64, usize) {
    let mut gathered = 0u64;
    let mut shift = 0;
    for index in 0..WORD_SIZE {
        let byte = (word >> (8 * index)) & 0xff;
        // `shift` is at most 8 × index here: below 64.
        gathered |= byte << shift;
        shift += 8 * u32::from(byte != 0);
    }
    (gathered, shift as usize / 8)
}

/// The inverse of `gather_nonzero_bytes`: the low bytes of `gathered`, in order, placed at the
/// bytes `tag` names; the others zero.
fn scatter_bytes(gathered: u64, tag: u8) -> u64 {
    let mut word = 0u64;
    let mut shift = 0;
    for index in 0..WORD_SIZE {
        let take = u64::from((tag >> index) & 1);
        // `shift` is at most 8 × index here: below 64.
        word |= (((gathered >> shift) & 0xff) * take) << (8 * index);
        shift += 8 * take;
    }
    word
}

/// A tag byte: bit *k* set when byte *k* of `word` (little-endian) is not zero.
fn nonzero_bytes(word: u64) -> u8 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte: set when the byte is not zero.
    let high = (((word & LOW7) + LOW7) | word) & HIGH;
    // Gathers bit 8k + 7 of `high` into bit 56 + k: the products of different bits land on
    // different bits, so nothing carries.
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Packed bytes that do not unpack: damage the checksum did not catch, or a caller's bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    #[error("packed data ends inside word {word}")]
    Truncated { word: u64 },
    #[error("packed data goes on after its last word ({extra} bytes)")]
    TrailingBytes { extra: u64 },
    #[error("the padding of the last word is not zero")]
    Padding,
}

/// Unpacks data whose packed bytes arrive in pieces: call `unpack` with the bytes not yet
/// consumed followed by the next ones read.
#[derive(Debug, Default)]
pub struct Unpacker {
    history: History,
}

impl Unpacker {
    pub fn new() -> Unpacker {
        Unpacker::default()
    }

    /// Words unpacked so far.
    pub fn words(&self) -> u64 {
        self.history.count
    }

    /// Unpacks the whole words in `packed`, at most `words_max` of them, appending them to
    /// `out`; returns how many bytes of `packed` they took. A word whose bytes `packed` does
    /// not hold in full is left for the next call.
    pub fn unpack(&mut self, packed: &[u8], words_max: u64, out: &mut Vec<u8>) -> usize {
        // Every word takes at least its tag: room for as many words as there are bytes.
        let room = words_max.min(packed.len() as u64) as usize;
        let start = out.len();
        out.resize(start + room * WORD_SIZE, 0);
        let buffer = &mut out[start..];
        let mut at = 0;
        let mut unpacked = 0;
        while unpacked < room && at < packed.len() {
            let tag = packed[at];
            let size = 1 + tag.count_ones() as usize;
            // A zero tag (the word equals the one a record before: the commonest case in a
            // ledger's records) on a branch that skips the gathering: folded into the path
            // below as a zero delta, unpacking ran at 1.2 GB/s instead of 1.7–1.9 (session 18).
            if tag == 0 {
                let word = self.history.previous();
                self.history.push(word);
                store_word(buffer, unpacked, word);
                unpacked += 1;
                at += 1;
                continue;
            }
            // One load of the eight bytes after the tag, where there are eight; near the end,
            // only the word's own.
            let gathered = match packed.get(at + 1..at + PACKED_WORD_SIZE_MAX) {
                Some(bytes) => u64::from_le_bytes(bytes.try_into().expect("eight bytes")),
                None => {
                    let Some(bytes) = packed.get(at + 1..at + size) else {
                        break;
                    };
                    let mut word = [0u8; WORD_SIZE];
                    word[..bytes.len()].copy_from_slice(bytes);
                    u64::from_le_bytes(word)
                }
            };
            let delta = if is_low_run(tag) {
                // As in `pack`: the low bytes, already in place.
                gathered & (u64::MAX >> (8 * (WORD_SIZE - (size - 1))))
            } else {
                scatter_bytes(gathered, tag)
            };
            let word = delta ^ self.history.previous();
            self.history.push(word);
            store_word(buffer, unpacked, word);
            unpacked += 1;
            at += size;
        }
        out.truncate(start + unpacked * WORD_SIZE);
        at
    }
}

/// Stores `word` as the `index`th word of `buffer`.
fn store_word(buffer: &mut [u8], index: usize, word: u64) {
    buffer[index * WORD_SIZE..(index + 1) * WORD_SIZE].copy_from_slice(&word.to_le_bytes());
}

/// Packs `data` whole.
pub fn pack(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed_size_max(data.len() as u64) as usize);
    let mut packer = Packer::new();
    packer.pack(data, &mut out);
    packer.finish(&mut out);
    out
}

/// Unpacks `packed` whole into `data_len` bytes: every packed byte must be used, and the
/// padding of a partial last word must be zero.
pub fn unpack(packed: &[u8], data_len: u64) -> Result<Vec<u8>, UnpackError> {
    let words = words_of(data_len);
    let mut out = Vec::with_capacity(words as usize * WORD_SIZE);
    let mut unpacker = Unpacker::new();
    let used = unpacker.unpack(packed, words, &mut out);
    finish_unpacking(
        &unpacker,
        data_len,
        (packed.len() - used) as u64,
        &mut out,
        0,
    )?;
    Ok(out)
}

/// Checks that `unpacker` produced all of `data_len` with `left` packed bytes unused, and cuts
/// the padding of a partial last word off `out`, where the unpacked data began at `start`.
pub fn finish_unpacking(
    unpacker: &Unpacker,
    data_len: u64,
    left: u64,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), UnpackError> {
    if unpacker.words() < words_of(data_len) {
        return Err(UnpackError::Truncated {
            word: unpacker.words(),
        });
    }
    if left > 0 {
        return Err(UnpackError::TrailingBytes { extra: left });
    }
    let end = start + data_len as usize;
    if out[end..].iter().any(|&byte| byte != 0) {
        return Err(UnpackError::Padding);
    }
    out.truncate(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_tag_names_the_nonzero_bytes() {
        for index in 0..8 {
            assert_eq!(nonzero_bytes(0x80 << (8 * index)), 1 << index);
            assert_eq!(nonzero_bytes(1 << (8 * index)), 1 << index);
            assert_eq!(nonzero_bytes(0xff << (8 * index)), 1 << index);
        }
        assert_eq!(nonzero_bytes(0), 0);
        assert_eq!(nonzero_bytes(u64::MAX), 0xff);
        assert_eq!(nonzero_bytes(0x0100_0000_0000_0001), 0b1000_0001);
    }

    #[test]
    fn gathered_bytes_scatter_back() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Each byte kept or zeroed by a bit of another draw.
            let keep = (state.rotate_left(29) & 0x0101_0101_0101_0101) * 0xff;
            let word = state & keep;
            let (gathered, count) = gather_nonzero_bytes(word);
            assert_eq!(count, nonzero_bytes(word).count_ones() as usize);
            if count < 8 {
                assert_eq!(gathered >> (8 * count), 0, "{word:x}");
            }
            assert_eq!(
                scatter_bytes(gathered, nonzero_bytes(word)),
                word,
                "{word:x}"
            );
        }
    }

    #[test]
    fn records_alike_pack_small() {
        // 1,000 records that differ from the one before in their first word's low byte
        // only: a record's first word packs to 2 bytes, each other word to its tag.
        let data: Vec<u8> = (0..1000u64)
            .flat_map(|index| {
                let mut record = [7u8; 128];
                record[0] = index as u8;
                record
            })
            .collect();
        let packed = pack(&data);
        assert!(packed.len() < 1000 * 18 + 128 + 16, "{}", packed.len());
        assert_eq!(unpack(&packed, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn a_word_is_xored_with_the_word_one_record_before() {
        // 1001 bytes of 0xa5: the first record's 16 words are stored whole (9 bytes each),
        // the next 109 words equal theirs (a tag each), and the last, one byte padded with
        // zeros, differs from its predecessor in 7 bytes (a tag and 7).
        let data = vec![0xa5u8; 1001];
        let packed = pack(&data);
        assert_eq!(packed.len(), 16 * 9 + 109 + 8);
        assert_eq!(unpack(&packed, 1001).unwrap(), data);
    }

    #[test]
    fn incompressible_data_grows_by_one_byte_in_eight_at_most() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8 | 1
            })
            .collect();
        let packed = pack(&data);
        assert!(packed.len() as u64 <= packed_size_max(4096));
        assert!(packed.len() > 4096, "{}", packed.len());
        assert_eq!(unpack(&packed, 4096).unwrap(), data);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let data: Vec<u8> = (0..300u32).flat_map(|value| value.to_le_bytes()).collect();
        let packed = pack(&data);
        for cut in 0..packed.len() {
            assert!(
                unpack(&packed[..cut], data.len() as u64).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = packed.clone();
        longer.push(0);
        assert_eq!(
            unpack(&longer, data.len() as u64),
            Err(UnpackError::TrailingBytes { extra: 1 })
        );
        // A length whose padding the data does not have zero.
        let odd = pack(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(unpack(&odd, 7), Err(UnpackError::Padding));
        for flipped in 0..packed.len() * 8 {
            let mut damaged = packed.clone();
            damaged[flipped / 8] ^= 1 << (flipped % 8);
            // Unpacks to other bytes or is refused; the checksum catches the rest.
            let _ = unpack(&damaged, data.len() as u64);
        }
    }

    #[test]
    fn a_packer_after_a_record_goes_on_as_the_packer_that_packed_it() {
        let data: Vec<u8> = (0..128 * 40u32)
            .map(|byte| (byte / 3 % 251) as u8)
            .collect();
        let whole = pack(&data);
        for records in [1, 7, 39] {
            let cut = records * 128;
            let mut first = Packer::new();
            let mut packed = Vec::new();
            first.pack(&data[..cut], &mut packed);
            assert!(first.is_at_record_boundary());
            let last = first.last_record().expect("a record");
            assert_eq!(&last[..], &data[cut - 128..cut]);
            let mut second = Packer::after_record(&last);
            assert_eq!(second.last_record(), Some(last));
            second.pack(&data[cut..], &mut packed);
            second.finish(&mut packed);
            assert_eq!(packed, whole);
        }
        let mut partial = Packer::new();
        partial.pack(&data[..100], &mut Vec::new());
        assert!(!partial.is_at_record_boundary());
        assert_eq!(partial.last_record(), None);
        assert_eq!(Packer::new().last_record(), None);
    }

    proptest! {
        #[test]
        fn pieces_of_any_length_pack_as_the_whole_and_unpack_back(
            data in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
            read in 1usize..64,
        ) {
            let whole = pack(&data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(data.len())).collect();
            cuts.sort_unstable();
            let mut packer = Packer::new();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                packer.pack(&data[from..cut], &mut pieces);
                from = cut;
            }
            packer.finish(&mut pieces);
            prop_assert_eq!(&pieces, &whole);
            prop_assert!(whole.len() as u64 <= packed_size_max(data.len() as u64));
            prop_assert_eq!(unpack(&whole, data.len() as u64).unwrap(), data.clone());

            // Read `read` packed bytes at a time, carrying what a word left over.
            let mut unpacker = Unpacker::new();
            let mut out = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let words = words_of(data.len() as u64);
            for chunk in whole.chunks(read) {
                pending.extend_from_slice(chunk);
                let used = unpacker.unpack(&pending, words - unpacker.words(), &mut out);
                pending.drain(..used);
            }
            finish_unpacking(&unpacker, data.len() as u64, pending.len() as u64, &mut out, 0)
                .unwrap();
            prop_assert_eq!(out, data);
        }
    }
}
