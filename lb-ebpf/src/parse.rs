//! Header layouts, the one bounds-checked accessor every header read uses,
//! and the parser: Ethernet (one VLAN tag), IPv4/IPv6, TCP/UDP into a
//! [`Packet`]. The test object's programs (`test_progs.rs`) use the same
//! parser.
//!
//! Fields are byte arrays so that no access depends on alignment; multi-byte
//! values are network order and read with `from_be_bytes`.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{
    stat, FlowKey, VipKey, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, VIP_F_ADDR_ONLY,
};
use lb_ebpf::hdr;

use crate::{maps::VIPS, stats::count};

pub use lb_ebpf::hdr::{
    EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, VlanHdr, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
    IPV4_HLEN, IPV6_HLEN, VLAN_HLEN,
};

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
/// the packet is too short to hold it. On `Ok`, the `size_of::<T>()` bytes
/// at the pointer lie within the packet (the verifier sees the same check).
///
/// # Safety
///
/// The bounds are all this checks. The caller must use the pointer only:
///
/// - as a `T` that every byte pattern is a valid value of, accessed in place
///   only if its alignment is 1 (the header layouts of this module: bytes and
///   byte arrays); a wider type must be accessed unaligned or by a helper,
///   as a packet offset promises no alignment (or the caller must show the
///   alignment otherwise);
/// - while the packet stays where it is: no helper that moves or resizes
///   packet data (`bpf_xdp_adjust_head`, `_tail`, `_meta`; only the DSR
///   encapsulation and the decap program call one) may run between this
///   call and the pointer's last use;
/// - without a `&mut` made from it overlapping another live reference to the
///   same bytes.
#[inline(always)]
pub unsafe fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Is `addr` one of our VIP addresses (any port, any protocol)?
#[inline(always)]
fn is_vip_addr(addr: &[u8; 16], family: u8) -> bool {
    let key = VipKey {
        addr: *addr,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: only whether an entry exists is used; the reference the
    // lookup returns is not read.
    unsafe { VIPS.get(&key) }.is_some()
}

/// The flags of `addr`'s VIP address marker (`VIP_F_ADDR_ONLY` set), or
/// 0 when it is not a VIP address.
#[inline(always)]
fn vip_addr_flags(addr: &[u8; 16], family: u8) -> u8 {
    let key = VipKey {
        addr: *addr,
        port: 0,
        proto: 0,
        family,
    };
    // SAFETY: one byte of the value is read right away (RCU keeps it valid).
    unsafe { VIPS.get(&key) }.map_or(0, |m| m.flags | VIP_F_ADDR_ONLY)
}

/// Drops (and counts) a malformed packet addressed to a VIP; passes it
/// untouched otherwise.
#[inline(always)]
fn malformed(ctx: &XdpContext, dst: &[u8; 16], family: u8, reason: u32) -> u32 {
    malformed_verdict(ctx, dst, family, reason)
}

/// Out of line: the log record is built on this function's own stack,
/// not the parser's.
#[inline(never)]
fn malformed_verdict(ctx: &XdpContext, dst: &[u8; 16], family: u8, reason: u32) -> u32 {
    let ctx = opaque(ctx);
    if is_vip_addr(dst, family) {
        count(reason);
        debug!(ctx, "drop: malformed packet to a VIP, reason {}", reason);
        xdp_action::XDP_DROP
    } else {
        count(stat::PASS_NON_VIP);
        xdp_action::XDP_PASS
    }
}

/// What [`parse`] returns when the packet is a flow (no XDP verdict has
/// this value).
pub const FLOW: u32 = u32::MAX;

/// What [`parse`] returns for ICMP / ICMPv6 to a VIP address (`icmp.rs`
/// decides); `key.sport` holds the address marker's `VIP_F_*` flags.
pub const ICMP_TO_VIP: u32 = u32::MAX - 1;

/// Parses the packet into `out` and returns [`FLOW`], or returns the
/// verdict already decided (and counted). Not inlined, and a scalar result:
/// see `to_real`.
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut Packet) -> u32 {
    let ctx = opaque(ctx);
    try_parse(ctx, out).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_parse(ctx: &XdpContext, out: &mut Packet) -> Result<u32, ()> {
    // SAFETY: `EthHdr` is bytes only, read once, right below.
    let eth: *const EthHdr = match unsafe { ptr_at(ctx, 0) } {
        Ok(p) => p,
        Err(()) => {
            count(stat::DROP_TRUNC_ETH);
            return Ok(xdp_action::XDP_DROP);
        }
    };
    // SAFETY: `ptr_at` checked the header lies in the packet.
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).proto });
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        // SAFETY: `VlanHdr` is bytes only, read once, right below.
        let vlan: *const VlanHdr = match unsafe { ptr_at(ctx, ETH_HLEN) } {
            Ok(p) => p,
            Err(()) => {
                count(stat::DROP_TRUNC_VLAN);
                return Ok(xdp_action::XDP_DROP);
            }
        };
        // SAFETY: `ptr_at` checked the tag lies in the packet.
        ether_type = u16::from_be_bytes(unsafe { (*vlan).proto });
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let key = &mut out.key;
    let l4_len;
    let (family, proto, l4) = match ether_type {
        ETH_P_IP => {
            // SAFETY: `Ipv4Hdr` is bytes only, only read, and nothing that
            // moves packet data runs while it is used.
            let ip: *const Ipv4Hdr = match unsafe { ptr_at(ctx, l3) } {
                Ok(p) => p,
                Err(()) => {
                    count(stat::DROP_TRUNC_IP);
                    return Ok(xdp_action::XDP_DROP);
                }
            };
            // SAFETY: `ptr_at` checked the header lies in the packet.
            let ip = unsafe { &*ip };
            key.family = FAMILY_V4;
            key.src[..4].copy_from_slice(&ip.src);
            key.dst[..4].copy_from_slice(&ip.dst);
            let avail = ctx.data_end() - ctx.data() - l3;
            let len = match hdr::ipv4(
                ip.version_ihl,
                u16::from_be_bytes(ip.tot_len),
                u16::from_be_bytes(ip.frag_off),
                avail,
            ) {
                Ok(len) => len,
                Err(reason) => return Ok(malformed(ctx, &key.dst, FAMILY_V4, reason)),
            };
            l4_len = len;
            if hdr::bad_source_v4(&ip.src) {
                return Ok(malformed(ctx, &key.dst, FAMILY_V4, stat::DROP_BAD_SOURCE));
            }
            (FAMILY_V4, ip.proto, l3 + IPV4_HLEN)
        }
        ETH_P_IPV6 => {
            // SAFETY: as for IPv4.
            let ip: *const Ipv6Hdr = match unsafe { ptr_at(ctx, l3) } {
                Ok(p) => p,
                Err(()) => {
                    count(stat::DROP_TRUNC_IP);
                    return Ok(xdp_action::XDP_DROP);
                }
            };
            // SAFETY: `ptr_at` checked the header lies in the packet.
            let ip = unsafe { &*ip };
            key.family = FAMILY_V6;
            copy16(&mut key.src, &ip.src);
            copy16(&mut key.dst, &ip.dst);
            let avail = ctx.data_end() - ctx.data() - l3 - IPV6_HLEN;
            let len = match hdr::ipv6(
                ip.vtc_flow[0],
                u16::from_be_bytes(ip.payload_len),
                ip.next_hdr,
                avail,
            ) {
                Ok(len) => len,
                Err(reason) => return Ok(malformed(ctx, &key.dst, FAMILY_V6, reason)),
            };
            l4_len = len;
            if hdr::bad_source_v6(&ip.src) {
                return Ok(malformed(ctx, &key.dst, FAMILY_V6, stat::DROP_BAD_SOURCE));
            }
            (FAMILY_V6, ip.next_hdr, l3 + IPV6_HLEN)
        }
        _ => {
            count(stat::PASS_NON_VIP);
            return Ok(xdp_action::XDP_PASS);
        }
    };
    key.proto = proto;
    match proto {
        // SAFETY: `TcpHdr` is bytes only, only read, and nothing that moves
        // packet data runs while it is used.
        IPPROTO_TCP => match unsafe { ptr_at::<TcpHdr>(ctx, l4) } {
            Ok(t) => {
                // SAFETY: `ptr_at` checked the header lies in the packet.
                let t = unsafe { &*t };
                key.sport = u16::from_ne_bytes(t.src);
                key.dport = u16::from_ne_bytes(t.dst);
                if let Err(reason) = hdr::tcp(l4_len, t.off) {
                    return Ok(malformed(ctx, &key.dst, family, reason));
                }
            }
            Err(()) => return Ok(malformed(ctx, &key.dst, family, stat::DROP_TRUNC_L4)),
        },
        // SAFETY: as for TCP.
        IPPROTO_UDP => match unsafe { ptr_at::<UdpHdr>(ctx, l4) } {
            Ok(u) => {
                // SAFETY: `ptr_at` checked the header lies in the packet.
                let u = unsafe { &*u };
                key.sport = u16::from_ne_bytes(u.src);
                key.dport = u16::from_ne_bytes(u.dst);
                if let Err(reason) = hdr::udp(l4_len, u16::from_be_bytes(u.len)) {
                    return Ok(malformed(ctx, &key.dst, family, reason));
                }
            }
            Err(()) => return Ok(malformed(ctx, &key.dst, family, stat::DROP_TRUNC_L4)),
        },
        _ => {
            let flags = vip_addr_flags(&key.dst, family);
            if flags & VIP_F_ADDR_ONLY == 0 {
                count(stat::PASS_NON_VIP);
                return Ok(xdp_action::XDP_PASS);
            }
            let icmp = if family == FAMILY_V4 {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            };
            if proto == icmp {
                // No ports: the marker's flags ride in `sport`.
                key.sport = flags as u16;
                out.l3 = l3;
                out.l4 = l4;
                out.family = family;
                out.proto = proto;
                return Ok(ICMP_TO_VIP);
            }
            count(stat::PASS_VIP_OTHER_PROTO);
            return Ok(xdp_action::XDP_PASS);
        }
    }
    out.l3 = l3;
    out.l4 = l4;
    out.family = family;
    out.proto = proto;
    Ok(FLOW)
}
