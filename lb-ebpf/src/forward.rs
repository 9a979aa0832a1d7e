//! Next hop: `bpf_fib_lookup`, MAC rewrite, then XDP_TX or a DEVMAP redirect.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{stat, NextHop, ReplyHopKey, FAMILY_V4, NEXT_HOP_TTL_NS};

use crate::{
    maps::{NEXT_HOPS, REPLY_HOPS, TX_PORTS},
    parse::{opaque, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr},
    stats::count,
};

/// Where the packet goes, which picks its next-hop cache entry.
pub enum Hop {
    /// To a real (by id): `NEXT_HOPS`.
    Real(u32),
    /// A reply to a client: `REPLY_HOPS`.
    Client(ReplyHopKey),
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Sends the (already rewritten) packet towards its destination.
///
/// The result of the last successful FIB lookup towards the same real (per
/// CPU, by real id) or, for a reply, the same client (LRU, by address and
/// ingress device) is reused for up to `NEXT_HOP_TTL_NS` (1 s)
/// when the ingress device is the same and the packet is no longer than one
/// the FIB already approved; anything else asks the FIB again, so MTU
/// handling and policy routing by ingress stay exact, and a route or
/// neighbour change is seen within 1 s.
///
/// In [`forward`]'s result: the packet is longer than the egress MTU (in
/// the low 16 bits); nothing was sent. [`or_pass`] turns it into XDP_PASS
/// (the kernel then fragments or answers with ICMP itself); DSR answers
/// the client (`icmp::too_big`).
pub const FRAG_NEEDED: u32 = 1 << 31;

/// [`forward`]'s result as an XDP verdict: [`FRAG_NEEDED`] passes.
#[inline(always)]
pub fn or_pass(action: u32) -> u32 {
    if action & FRAG_NEEDED != 0 {
        xdp_action::XDP_PASS
    } else {
        action
    }
}

/// Not inlined: its FIB parameters and cache entries take stack that the
/// caller's frame need not hold (BPF allows 512 bytes along a call chain).
#[inline(never)]
pub fn forward(ctx: &XdpContext, l3: usize, family: u8, hop: &Hop) -> u32 {
    let ctx = opaque(ctx);
    try_forward(ctx, l3, family, hop).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, l3: usize, family: u8, hop: &Hop) -> Result<u32, ()> {
    let ingress = ctx.ingress_ifindex() as u32;
    let ip_len = ip_len(ctx, l3, family)?;
    let cached: Option<*mut NextHop> = match hop {
        Hop::Real(id) => NEXT_HOPS.get_ptr_mut(*id),
        Hop::Client(key) => REPLY_HOPS.get_ptr_mut(key),
    };
    if let Some(nh) = cached {
        // SAFETY: a map value pointer, valid and aligned for the program run
        // (RCU); a concurrent replacement of a shared entry is a new element.
        let nh = unsafe { &*nh };
        if nh.ingress == ingress
            && nh.egress != 0
            && ip_len <= nh.max_len
            // SAFETY: a helper without arguments.
            && unsafe { bpf_ktime_get_coarse_ns() } < nh.expires_ns
        {
            count(stat::NEXT_HOP_CACHED);
            return send(ctx, ingress, nh.egress, &nh.smac, &nh.dmac);
        }
    }
    // SAFETY: a C struct of integers and unions of integers: all zero is a
    // valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    let p = &mut fib;
    p.ifindex = ingress;
    if family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes only,
        // only read, and its last use comes before the FIB lookup.
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3)? };
        p.family = AF_INET;
        p.l4_protocol = ip.proto;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        p.__bindgen_anon_2.tos = ip.tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3)? };
        p.family = AF_INET6;
        p.l4_protocol = ip.next_hdr;
        // The whole packet, as for IPv4: the helper compares it with the
        // egress MTU.
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len).saturating_add(40);
        let flow = u32::from_ne_bytes(ip.vtc_flow) & u32::from_ne_bytes([0x0f, 0xff, 0xff, 0xff]);
        p.__bindgen_anon_2.flowinfo = flow;
        let mut src = [0u32; 4];
        let mut dst = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            src[i] = u32::from_ne_bytes([
                ip.src[i * 4],
                ip.src[i * 4 + 1],
                ip.src[i * 4 + 2],
                ip.src[i * 4 + 3],
            ]);
            dst[i] = u32::from_ne_bytes([
                ip.dst[i * 4],
                ip.dst[i * 4 + 1],
                ip.dst[i * 4 + 2],
                ip.dst[i * 4 + 3],
            ]);
            i += 1;
        }
        p.__bindgen_anon_3.ipv6_src = src;
        p.__bindgen_anon_4.ipv6_dst = dst;
    }
    count(stat::FIB_LOOKUP);
    // SAFETY: the program's own context, and `p` points to a live
    // `FibParams` of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            count(stat::FIB_FRAG_NEEDED);
            // SAFETY: on this result the helper wrote the MTU there.
            let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
            return Ok(FRAG_NEEDED | mtu as u32);
        }
        count(stat::FIB_MISS);
        return Ok(xdp_action::XDP_PASS);
    }
    let mut fresh = NextHop {
        // SAFETY: a helper without arguments.
        expires_ns: unsafe { bpf_ktime_get_coarse_ns() } + NEXT_HOP_TTL_NS,
        ingress,
        egress: p.ifindex,
        max_len: ip_len,
        smac: p.smac,
        dmac: p.dmac,
        _pad: [0; 6],
    };
    if let Some(nh) = cached {
        // SAFETY: as above.
        let nh = unsafe { &*nh };
        // The same path: keep the largest length the FIB approved.
        if nh.ingress == ingress
            && nh.egress == p.ifindex
            && nh.smac == p.smac
            && nh.dmac == p.dmac
            && nh.max_len > ip_len
        {
            fresh.max_len = nh.max_len;
        }
    }
    match (hop, cached) {
        // This CPU's own entry: written in place.
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program
        // run; no other CPU writes it, and no reference to it is alive.
        (Hop::Real(_), Some(nh)) => unsafe { *nh = fresh },
        // Shared by the CPUs: replaced whole.
        (Hop::Client(key), _) => {
            let _ = REPLY_HOPS.insert(key, &fresh, 0);
        }
        (Hop::Real(_), None) => {}
    }
    send(ctx, ingress, p.ifindex, &p.smac, &p.dmac)
}

/// IP total length (IPv4) or payload length + header (IPv6).
#[inline(always)]
fn ip_len(ctx: &XdpContext, l3: usize, family: u8) -> Result<u16, ()> {
    if family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; one byte
        // array is read, right away.
        Ok(u16::from_be_bytes(unsafe {
            (*ptr_at::<Ipv4Hdr>(ctx, l3)?).tot_len
        }))
    } else {
        // SAFETY: as for IPv4.
        let len = unsafe { (*ptr_at::<Ipv6Hdr>(ctx, l3)?).payload_len };
        Ok(u16::from_be_bytes(len).saturating_add(40))
    }
}

/// Rewrites the MACs and transmits by a DEVMAP redirect, to the ingress
/// device too (see [`out_of`]).
#[inline(always)]
fn send(
    ctx: &XdpContext,
    ingress: u32,
    egress: u32,
    smac: &[u8; 6],
    dmac: &[u8; 6],
) -> Result<u32, ()> {
    // SAFETY: `ptr_at` checked the header lies in the packet; bytes only,
    // written right away, and no reference to it is alive (`smac` and `dmac`
    // are a map value's or the FIB parameters', not the packet's).
    unsafe {
        let eth: *mut EthHdr = ptr_at(ctx, 0)?;
        (*eth).dst = *dmac;
        (*eth).src = *smac;
    }
    Ok(out_of(ingress, egress))
}

/// Sends the (rewritten) frame out of `egress`: a DEVMAP redirect, also
/// when `egress` is the ingress device. Not XDP_TX: on a veth whose peer
/// runs no XDP program, XDP_TX frames wait in the peer's queue until
/// something else wakes it (the driver flushes them only to a peer with a
/// program), while a redirect flushes; on NICs both go out of the same XDP
/// send queue. XDP_TX remains for an ingress device that is not in
/// `TX_PORTS` (counted as `tx`).
#[inline(always)]
pub fn out_of(ingress: u32, egress: u32) -> u32 {
    match TX_PORTS.redirect(egress, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            count(stat::REDIRECT);
            action
        }
        Err(_) if egress == ingress => {
            count(stat::TX);
            xdp_action::XDP_TX
        }
        Err(_) => {
            count(stat::PASS_NO_TX_PORT);
            xdp_action::XDP_PASS
        }
    }
}
