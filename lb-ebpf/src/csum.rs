//! Incremental Internet checksum updates (RFC 1624): HC' = ~(~HC + ~m + m').
//!
//! All words of [`Update`] are taken big-endian from the wire bytes; the ones' complement
//! sum does not care about byte order as long as it is consistent.

/// Folds a 32-bit partial sum to 16 bits (not inverted).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Accumulator for one checksum update.
pub struct Update {
    sum: u32,
}

impl Update {
    #[inline(always)]
    pub fn new(check: [u8; 2]) -> Self {
        Update {
            sum: (!u16::from_be_bytes(check)) as u32,
        }
    }

    /// Replaces one 16-bit word.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.sum += (!old) as u32;
        self.sum += new as u32;
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    #[inline(always)]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        );
        self.word(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        );
    }

    #[inline(always)]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let mut i = 0;
        while i < 16 {
            self.word(
                u16::from_be_bytes([old[i], old[i + 1]]),
                u16::from_be_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }

    /// The new checksum field.
    #[inline(always)]
    pub fn finish(&self) -> [u8; 2] {
        (!fold(self.sum)).to_be_bytes()
    }
}

use aya_ebpf::programs::XdpContext;
use lb_common::FAMILY_V4;

use crate::{parse::ptr_at, segment};

// --- Partial checksums -------------------------------------------------
//
// A sender that offloads its TCP/UDP checksum (every local socket on a veth,
// a container or a VM's virtio device) leaves only the folded pseudo-header
// sum in the checksum field and marks its socket buffer "checksum partial";
// the device, or the kernel before it leaves, sums the segment on top. XDP
// sees the bytes but not the mark. The sums below are in native byte order,
// like the kernel's `csum_partial` (and `bpf_csum_diff`), and compared
// with the field read in native order; ones' complement sums do not depend
// on byte order as long as every term is taken the same way.

/// Adds two 32-bit ones' complement partial sums.
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let s = a.wrapping_add(b);
    s.wrapping_add((s < b) as u32)
}

/// Native-order partial sum of the pseudo header of the packet's current
/// addresses: the addresses are contiguous in both IP headers (IPv4 at 12,
/// 8 bytes; IPv6 at 8, 32 bytes).
#[inline(always)]
pub fn pseudo(ctx: &XdpContext, l3: usize, family: u8, proto: u8, l4_len: u16) -> Result<u32, ()> {
    let extra =
        u16::from_ne_bytes([0, proto]) as u32 + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    let addrs = if family == FAMILY_V4 {
        // Four words: cheaper added here than through the helper.
        let a: *const [u8; 8] = ptr_at(ctx, l3 + 12)?;
        // SAFETY: `ptr_at` checked the eight bytes lie in the packet.
        let a = unsafe { &*a };
        let mut s = 0u32;
        let mut i = 0;
        while i < 8 {
            s += u16::from_ne_bytes([a[i], a[i + 1]]) as u32;
            i += 2;
        }
        s
    } else {
        segment::packet_sum::<32>(ctx, l3 + 8, 0)?
    };
    Ok(add(addrs, extra))
}
