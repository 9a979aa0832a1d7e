//! Header layouts and the one bounds-checked accessor every header read uses.
//!
//! Fields are byte arrays so that no access depends on alignment; multi-byte
//! values are network order and read with `from_be_bytes`.

use aya_ebpf::programs::XdpContext;
use lb_common::FlowKey;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct TcpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[repr(C)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// What the parser learnt about a TCP/UDP packet (8-aligned for
/// [`zeroed_in`]).
#[repr(C, align(8))]
pub struct Packet {
    pub key: FlowKey,
    /// Offsets of the IP and the TCP/UDP header.
    pub l3: usize,
    pub l4: usize,
    pub family: u8,
    pub proto: u8,
}

/// Zeroes `slot` in place with 8-byte stores and hands it out (`T`
/// 8-aligned, a multiple of 8 bytes). A zero-initialised local, or one
/// moved after zeroing, compiles to a call to a byte-wise `memset` that
/// costs a loop iteration per byte on every packet.
#[inline(always)]
pub fn zeroed_in<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let w = slot.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (asserted above).
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written; the types used with it are plain data
    // for which all-zero is valid.
    unsafe { slot.assume_init_mut() }
}

/// Copies 16 bytes (an IPv6 address) as two 8-byte words: a plain array
/// copy of this size compiles to a call to a byte-wise `memmove`.
#[inline(always)]
pub fn copy16(dst: *mut [u8; 16], src: *const [u8; 16]) {
    let s = src as *const u64;
    let d = dst as *mut u64;
    // SAFETY: both point to 16 valid bytes (callers pass fields of live
    // headers or keys); unaligned accesses are allowed on both.
    unsafe {
        let a = s.read_unaligned();
        let b = s.add(1).read_unaligned();
        d.write_unaligned(a);
        d.add(1).write_unaligned(b);
    }
}

/// The context, kept a pointer. Every function taking the context that is
/// not inlined (a BPF-to-BPF call) starts with this: otherwise the compiler
/// may pass the packet's start and end pointers as arguments instead,
/// on which the verifier forbids arithmetic.
#[inline(always)]
pub fn opaque(ctx: &XdpContext) -> &XdpContext {
    core::hint::black_box(ctx)
}

/// A pointer to a `T` at `offset` from the start of the packet, or `Err` when
/// the packet is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}
