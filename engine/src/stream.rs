//! `push_streaming_stamped`: appends a transfer record with non-temporal stores. With
//! `prefetch.rs`, the engine's only `unsafe` code.
//!
//! A new transfer record is written once and not read again while the batch runs, and the
//! records outgrow every cache: an ordinary store first reads each of its two lines from memory
//! (read for ownership) only to overwrite them whole, and that read takes one of the core's few
//! miss buffers from the lookups that need them. A streaming store writes the whole line without
//! reading it. Same bytes stored; only the way they reach memory differs, so determinism is
//! untouched, and a build for another target pushes as usual. Streaming stores are weakly
//! ordered against other stores, so `fence` must run before another thread may read the records
//! (the end of every batch, `Ledger::end_batch`).
#![allow(unsafe_code)]

use crate::ledger::Aligned;
use crate::types::Transfer;

/// Appends `event` with `timestamp` in place of its own to `records` (growing it as `push` would
/// when it is full): the stored record of a created transfer. The event's bytes go straight to
/// the record, not through a copy on the stack first.
#[inline(always)]
pub(crate) fn push_streaming_stamped(
    records: &mut Vec<Aligned<Transfer>>,
    event: &Transfer,
    timestamp: u64,
) {
    if records.len() == records.capacity() {
        records.reserve(1);
    }
    assert!(records.len() < records.capacity());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the slot at `len` is inside the allocation (asserted just above), 64-byte aligned
    // (`Aligned`), and 128 bytes long: eight 16-byte stores fill it, from the eight 16-byte
    // (unaligned) loads of `event`, the last with its high word (`timestamp`, bytes 120..128)
    // replaced. After them the slot holds a valid `Aligned<Transfer>` (plain integers, no
    // padding), so the length may cover it. `sse2` is part of the x86-64 baseline.
    unsafe {
        use core::arch::x86_64::{
            __m128i, _mm_cvtsi64_si128, _mm_loadu_si128, _mm_stream_si128, _mm_unpacklo_epi64,
        };
        const _: () = assert!(core::mem::size_of::<Aligned<Transfer>>() == 128);
        const _: () = assert!(core::mem::offset_of!(Transfer, timestamp) == 120);
        let length = records.len();
        let destination = records.as_mut_ptr().add(length).cast::<__m128i>();
        let source = (event as *const Transfer).cast::<__m128i>();
        for lane in 0..7 {
            _mm_stream_si128(destination.add(lane), _mm_loadu_si128(source.add(lane)));
        }
        let last = _mm_unpacklo_epi64(
            _mm_loadu_si128(source.add(7)),
            _mm_cvtsi64_si128(timestamp as i64),
        );
        _mm_stream_si128(destination.add(7), last);
        records.set_len(length + 1);
    }
    #[cfg(not(target_arch = "x86_64"))]
    records.push(Aligned(Transfer {
        timestamp,
        ..*event
    }));
}

/// Orders every streaming store before it against later stores (and so before any handover of
/// the records to another thread).
#[inline(always)]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no operands and no effect but ordering.
    unsafe {
        core::arch::x86_64::_mm_sfence();
    }
}
