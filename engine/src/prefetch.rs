//! `prefetch`: a hint that a value will be read soon. The engine's only `unsafe` code.
//!
//! A load that misses the cache blocks the processor's retirement until it is served, so a
//! batch's lookahead that merely loaded what the events will need overlapped only the misses
//! that fit in the reorder window at once, and stalled the instructions around them. A prefetch
//! retires at once and the line arrives while the processor goes on. It is a hint: it changes no
//! value the program can observe, so determinism is untouched, and a build without it (any target
//! but x86-64) computes exactly the same, only slower.
#![allow(unsafe_code)]

/// Asks for the cache line holding the start of `value` to be brought into all cache levels.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` reads no memory the program sees, writes none and never faults (the
    // address is that of a live reference anyway); `sse`, which it needs, is part of the x86-64
    // baseline that every x86-64 target enables.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
