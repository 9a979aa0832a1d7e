//! The ones' complement sum of a packet's L4 segment, for completing
//! partial checksums.
//!
//! The segment is copied in chunks of up to 512 bytes into a per-CPU
//! scratch buffer (`bpf_xdp_load_bytes`, bounds checked by the kernel at run
//! time) and summed there with `bpf_csum_diff`. Copying keeps the offsets
//! out of packet-pointer arithmetic, so the verifier checks one chunk's
//! work per loop turn instead of every possible segment length.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{CsumScratch, CSUM_CHUNK};

use crate::{
    csum,
    maps::CSUM_SCRATCH,
    parse::{opaque, ptr_at},
};

/// Enough chunks for a 9000-byte jumbo frame. A native-mode XDP frame
/// (one page, without multi-buffer support) is always shorter; longer
/// segments only come with a socket buffer (GRO-merged or GSO frames in
/// generic mode), which `nat::settle` leaves partial without summing.
const MAX_CHUNKS: usize = 19;
/// Longest segment [`sum`] takes.
pub const MAX_LEN: usize = MAX_CHUNKS * CSUM_CHUNK;

/// Adds the `N` bytes at packet offset `off` to `seed` (native-order partial
/// sum); `N` a multiple of 4, at most 512.
#[inline(always)]
pub fn packet_sum<const N: usize>(ctx: &XdpContext, off: usize, seed: u32) -> Result<u32, ()> {
    // SAFETY: handed to a helper only, which needs no alignment.
    let p: *mut [u8; N] = unsafe { ptr_at(ctx, off)? };
    // SAFETY: the helper reads `N` bytes at `p`, which `ptr_at` checked lie
    // in the packet; `from` is empty.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, seed) };
    if r < 0 {
        return Err(());
    }
    Ok(r as u32)
}

/// Native-order partial sum of the `len` bytes at packet offset `start`
/// (an odd last byte counts as the high byte of a word, as RFC 1071 pads
/// it), or -1 when the bytes are not all in the packet or `len` exceeds
/// [`MAX_LEN`]. (A scalar result: see `to_real` in main.rs.)
#[inline(never)]
pub fn sum(ctx: &XdpContext, start: usize, len: usize) -> i64 {
    let ctx = opaque(ctx);
    match try_sum(ctx, start, len) {
        Ok(s) => s as i64,
        Err(()) => -1,
    }
}

#[inline(always)]
fn try_sum(ctx: &XdpContext, start: usize, len: usize) -> Result<u32, ()> {
    if len > MAX_LEN {
        return Err(());
    }
    let buf: *mut CsumScratch = CSUM_SCRATCH.get_ptr_mut(0).ok_or(())?;
    let mut s = 0u32;
    let mut off = start;
    let mut left = len;
    let mut i = 0;
    while i < MAX_CHUNKS && left > 0 {
        let n = if left < CSUM_CHUNK { left } else { CSUM_CHUNK };
        // SAFETY: `buf` is this CPU's scratch value, `CSUM_CHUNK` bytes,
        // and `n` is at most that; the helper checks the packet range.
        let r = unsafe {
            bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, off as u32, buf as *mut _, n as u32)
        };
        if r != 0 {
            return Err(());
        }
        let whole = n & !3;
        if whole > 0 {
            // SAFETY: `whole` ≤ `n` bytes of `buf` were just written.
            let r = unsafe {
                bpf_csum_diff(core::ptr::null_mut(), 0, buf as *mut u32, whole as u32, s)
            };
            if r < 0 {
                return Err(());
            }
            s = r as u32;
        }
        // The last one to three bytes (only the last chunk has any). The
        // masks keep every index provably inside the buffer (no panic
        // path; `n` ≤ `CSUM_CHUNK`, a power of two, so they change nothing).
        // SAFETY: `buf` is valid.
        let b = unsafe { &(*buf).bytes };
        const M: usize = CSUM_CHUNK - 1;
        let rest = n - whole;
        if rest >= 2 {
            s = csum::add(
                s,
                u16::from_ne_bytes([b[whole & M], b[(whole + 1) & M]]) as u32,
            );
        }
        if rest & 1 == 1 {
            s = csum::add(s, u16::from_ne_bytes([b[(n - 1) & M], 0]) as u32);
        }
        off += n;
        left -= n;
        i += 1;
    }
    if left != 0 {
        return Err(());
    }
    Ok(s)
}
