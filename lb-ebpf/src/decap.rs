//! The decap object (`lb-decap`): `lb_decap`, which a DSR real runs on its
//! interfaces (`[decap]`). It strips the outer headers of tunnel packets
//! addressed to this host, IPIP, IPv6 in IPv6, IPv6 in IPv4, IPv4 in IPv6
//! and GUE variant 1 (UDP to the decap port with the inner IP header right
//! after the UDP header), and passes the inner packet up the stack, as if
//! it had arrived without them. No kernel tunnel device or module is
//! needed. Everything else passes untouched.
//!
//! "Addressed to this host" means an outer destination in `DECAP_ADDRS`,
//! which the control plane keeps equal to the host's addresses.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{decap_stat, DecapAddr, FAMILY_V4, FAMILY_V6, MAX_DECAP_ADDRS};
use lb_ebpf::{
    hdr::{
        EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, VlanHdr, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
        IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VLAN_HLEN,
    },
    tunnel::{IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP},
};

/// This host's addresses (see the module comment).
#[map]
static DECAP_ADDRS: HashMap<DecapAddr, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Slot 0: the GUE port (network order in the low 16 bits; 0: no GUE).
#[map]
static DECAP_GUE_PORT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap_stat::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program
        // run; nothing else writes it meanwhile.
        unsafe { *c += 1 };
    }
}

/// A pointer to a `T` at `offset`, or `Err` when the packet is too short.
///
/// # Safety
///
/// As `lb_xdp`'s `parse::ptr_at`: `T` must be a header layout of bytes
/// only, and the pointer must not be used after `bpf_xdp_adjust_head`.
#[inline(always)]
unsafe fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    count(decap_stat::RX);
    match try_decap(&ctx) {
        Ok(action) => action,
        Err(()) => {
            count(decap_stat::DROP_MALFORMED);
            xdp_action::XDP_DROP
        }
    }
}

/// Is `addr` one of this host's addresses?
#[inline(always)]
fn local(addr: &[u8; 16], family: u8) -> bool {
    let key = DecapAddr {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: only whether the entry exists is used.
    unsafe { DECAP_ADDRS.get(&key) }.is_some()
}

fn pass(reason: u32) -> Result<u32, ()> {
    count(reason);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<u32, ()> {
    // SAFETY: bytes only, read right away.
    let Ok(eth) = (unsafe { ptr_at::<EthHdr>(ctx, 0) }) else {
        return pass(decap_stat::PASS_NOT_TUNNEL);
    };
    // SAFETY: `ptr_at` checked the header lies in the packet.
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).proto });
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        // SAFETY: as above.
        let Ok(vlan) = (unsafe { ptr_at::<VlanHdr>(ctx, ETH_HLEN) }) else {
            return pass(decap_stat::PASS_NOT_TUNNEL);
        };
        // SAFETY: as above.
        ether_type = u16::from_be_bytes(unsafe { (*vlan).proto });
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let mut dst = [0u8; 16];
    // Outer header length, its protocol, and the outer IP length.
    let (family, hlen, proto, ip_len) = match ether_type {
        ETH_P_IP => {
            // SAFETY: bytes only, read right away.
            let Ok(ip) = (unsafe { ptr_at::<Ipv4Hdr>(ctx, l3) }) else {
                return pass(decap_stat::PASS_NOT_TUNNEL);
            };
            // SAFETY: `ptr_at` checked the header lies in the packet.
            let ip = unsafe { &*ip };
            let frag = u16::from_be_bytes(ip.frag_off) & 0x3fff;
            if ip.version_ihl != 0x45 || frag != 0 {
                return pass(decap_stat::PASS_NOT_TUNNEL);
            }
            dst[..4].copy_from_slice(&ip.dst);
            (
                FAMILY_V4,
                IPV4_HLEN,
                ip.proto,
                u16::from_be_bytes(ip.tot_len) as usize,
            )
        }
        ETH_P_IPV6 => {
            // SAFETY: as for IPv4.
            let Ok(ip) = (unsafe { ptr_at::<Ipv6Hdr>(ctx, l3) }) else {
                return pass(decap_stat::PASS_NOT_TUNNEL);
            };
            // SAFETY: as for IPv4.
            let ip = unsafe { &*ip };
            dst.copy_from_slice(&ip.dst);
            let len = u16::from_be_bytes(ip.payload_len) as usize + IPV6_HLEN;
            (FAMILY_V6, IPV6_HLEN, ip.next_hdr, len)
        }
        _ => return pass(decap_stat::PASS_NOT_TUNNEL),
    };
    // Which tunnel, and the bytes in front of the inner header.
    let (overhead, counter_v4, counter_v6) = match proto {
        IPPROTO_IPIP | IPPROTO_IPV6 => {
            let (c4, c6) = if family == FAMILY_V4 {
                (decap_stat::IPIP, decap_stat::IP6_IN_IP4)
            } else {
                (decap_stat::IP4_IN_IP6, decap_stat::IP6IP6)
            };
            (hlen, c4, c6)
        }
        IPPROTO_UDP => {
            let port = match DECAP_GUE_PORT.get(0) {
                Some(p) if *p != 0 => *p as u16,
                _ => return pass(decap_stat::PASS_NOT_TUNNEL),
            };
            // SAFETY: bytes only, read right away.
            let Ok(udp) = (unsafe { ptr_at::<UdpHdr>(ctx, l3 + hlen) }) else {
                return pass(decap_stat::PASS_NOT_TUNNEL);
            };
            // SAFETY: `ptr_at` checked the header lies in the packet.
            if u16::from_ne_bytes(unsafe { (*udp).dst }) != port {
                return pass(decap_stat::PASS_NOT_TUNNEL);
            }
            (hlen + UDP_HLEN, decap_stat::GUE, decap_stat::GUE)
        }
        _ => return pass(decap_stat::PASS_NOT_TUNNEL),
    };
    if !local(&dst, family) {
        return pass(decap_stat::PASS_NOT_LOCAL);
    }
    // The inner header: its version decides (for GUE variant 1 it is the
    // only indication; for IP in IP it must agree with the protocol).
    // SAFETY: one byte, read right away.
    let version = unsafe { *ptr_at::<u8>(ctx, l3 + overhead)? } >> 4;
    let inner_v4 = match (proto, version) {
        (IPPROTO_IPIP, 4) | (IPPROTO_UDP, 4) => true,
        (IPPROTO_IPV6, 6) | (IPPROTO_UDP, 6) => false,
        _ => return Err(()),
    };
    // The inner packet must lie within the outer one.
    let inner_len = if inner_v4 {
        // SAFETY: bytes only, read right away.
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3 + overhead)? };
        u16::from_be_bytes(ip.tot_len) as usize
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3 + overhead)? };
        u16::from_be_bytes(ip.payload_len) as usize + IPV6_HLEN
    };
    if inner_len + overhead > ip_len || l3 + ip_len > ctx.data_end() - ctx.data() {
        return Err(());
    }
    // The link header moves to just before the inner one, with the inner
    // family's type; then the outer headers go.
    let inner_type = if inner_v4 { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes();
    // SAFETY: `ptr_at` checked both lie in the packet; they do not overlap
    // (the overhead is at least 20 bytes); bytes only, used right away.
    unsafe {
        let old: *const EthHdr = ptr_at(ctx, 0)?;
        let new: *mut EthHdr = ptr_at(ctx, overhead)?;
        (*new).dst = (*old).dst;
        (*new).src = (*old).src;
        if l3 == ETH_HLEN {
            (*new).proto = inner_type;
        } else {
            (*new).proto = ETH_P_8021Q.to_be_bytes();
            let old: *const VlanHdr = ptr_at(ctx, ETH_HLEN)?;
            let new: *mut VlanHdr = ptr_at(ctx, overhead + ETH_HLEN)?;
            (*new).tci = (*old).tci;
            (*new).proto = inner_type;
        }
    }
    // SAFETY: the program's own context; no packet pointer is used after.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, overhead as i32) } != 0 {
        return Err(());
    }
    count(if inner_v4 { counter_v4 } else { counter_v6 });
    Ok(xdp_action::XDP_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
