//! Checksums: the pure arithmetic lives in the library half
//! (`lb_ebpf::checksum`, host-tested);
//! here, the sums that read the packet.

pub use lb_ebpf::checksum::{add, fold, Update};

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

/// Native-order partial sum of the pseudo header of the packet's current
/// addresses: the addresses are contiguous in both IP headers (IPv4 at 12,
/// 8 bytes; IPv6 at 8, 32 bytes).
#[inline(always)]
pub fn pseudo(ctx: &XdpContext, l3: usize, family: u8, proto: u8, l4_len: u16) -> Result<u32, ()> {
    let extra =
        u16::from_ne_bytes([0, proto]) as u32 + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    let addrs = if family == FAMILY_V4 {
        // Four words: cheaper added here than through the helper.
        // SAFETY: `ptr_at` checked the eight bytes lie in the packet; a byte
        // array, only read, and nothing moves packet data meanwhile.
        let a = unsafe { &*ptr_at::<[u8; 8]>(ctx, l3 + 12)? };
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
