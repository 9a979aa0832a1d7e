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

/// What the parser learnt about a TCP/UDP packet.
#[derive(Default)]
pub struct Packet {
    /// Offsets of the IP and the TCP/UDP header.
    pub l3: usize,
    pub l4: usize,
    pub family: u8,
    pub proto: u8,
    pub key: FlowKey,
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
