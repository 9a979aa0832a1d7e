//! The XDP fast path of `lb`.
//!
//! `lb_xdp`: parse → conntrack (both directions of a flow, one lookup) →
//! on a miss, VIP lookup → Maglev ring → NAT rewrite → FIB → XDP_TX /
//! redirect. Replies from reals are rewritten back to the VIP.
//! Everything not for a VIP (and not a reply of a balanced flow) passes to the
//! kernel untouched. Policies (see README, "Data plane policies"):
//! - IPv4 fragments and IPv4 packets with options addressed to a VIP address
//!   are dropped and counted (a fragment carries no ports to balance on, and
//!   options are not forwarded); to any other address they pass.
//! - IPv6 packets to a VIP address whose next header is not TCP/UDP directly
//!   (extension headers) are dropped and counted; ICMP/ICMPv6 to a VIP passes.
//! - TTL / hop limit is decremented like a router does; a packet that would
//!   leave with TTL 0 is passed to the kernel, which answers with ICMP Time
//!   Exceeded.
//! - A FIB miss (no route, no neighbour, MTU) passes the already rewritten
//!   packet to the kernel and is counted.
//!
//! The other programs are measurement and test aids: `floor_tx` (parse +
//! XDP_TX), `floor_redirect` (redirect only) and `sink` (count + drop).
#![no_std]
#![no_main]

mod csum;
mod forward;
mod maps;
mod nat;
mod parse;
mod segment;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    flow_hash_seeded, stat, CtValue, FlowKey, GenTemplate, RealDef, ReplyHopKey, VipKey, VipMeta,
    CT_FORWARD, CT_REPLY, DEFAULT_HASH_SEED, FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP,
    REAL_F_VALID, RING_STRIDE,
};
use lb_ebpf::hdr;
use maps::{
    CONNTRACK, FLOOR_PORT, GEN_MODE, GEN_NEXT, GEN_STATE, GEN_TEMPLATE, HASH_SEED, REALS, RINGS,
    SINK_COUNT, SKB_IFACES, VIPS, VIP_KEYS,
};
use parse::*;
use stats::count;

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_lb(ctx: &XdpContext) -> Result<u32, ()> {
    count(stat::RX);
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let pkt = zeroed_in(&mut slot);
    let verdict = parse(ctx, pkt);
    if verdict != FLOW {
        return Ok(verdict);
    }

    // An established flow, either direction: one lookup. The entry stays
    // valid for the rest of the program run (RCU).
    let hit = CONNTRACK.get_ptr_mut(&pkt.key);
    // SAFETY: a map value pointer, valid for the program run.
    let established = match hit.map(|p| unsafe { &*p }) {
        Some(ct) if ct.kind == CT_REPLY => {
            if partner_due(hit) {
                keep_forward(&pkt, ct);
            }
            return Ok(to_client(ctx, &pkt, ct));
        }
        Some(ct) if vip_owns(ct.vip_index, &pkt.key) => match REALS.get(ct.real_id) {
            Some(real) if real.flags & REAL_F_VALID != 0 => {
                if partner_due(hit) {
                    keep_reply(&pkt, ct.vip_index, ct.real_id, real);
                }
                Some((ct.vip_index, ct.real_id, real))
            }
            _ => None,
        },
        // Stale (VIP gone or real removed): treated as a new flow.
        _ => None,
    };
    let (vip_index, real_id, real, new) = match established {
        Some((vip_index, real_id, real)) => {
            if nat::ttl_expired(ctx, pkt.l3, pkt.family)? {
                count(stat::PASS_TTL_EXPIRED);
                return Ok(xdp_action::XDP_PASS);
            }
            count(stat::CT_HIT);
            (vip_index, real_id, real, false)
        }
        None => {
            // A new flow to a VIP (exact port first, then all-ports).
            let mut vkey = VipKey {
                addr: pkt.key.dst,
                port: pkt.key.dport,
                proto: pkt.proto,
                family: pkt.family,
            };
            let mut meta = unsafe { VIPS.get(&vkey) };
            if meta.is_none() {
                vkey.port = 0;
                meta = unsafe { VIPS.get(&vkey) };
            }
            let meta = match meta {
                Some(m) => m,
                None => {
                    count(stat::PASS_NON_VIP);
                    return Ok(xdp_action::XDP_PASS);
                }
            };
            let pick = new_flow(ctx, &pkt, meta);
            if pick & PICKED == 0 {
                return Ok(pick as u32);
            }
            let real_id = pick as u32;
            match REALS.get(real_id) {
                Some(real) => (meta.vip_index, real_id, real, true),
                None => return Ok(xdp_action::XDP_DROP),
            }
        }
    };
    Ok(to_real(
        ctx,
        &pkt,
        &Balanced {
            vip_index,
            real_id,
            real,
            new,
        },
    ))
}

// --- The two entries of a flow -----------------------------------------
//
// The LRU evicts entries one by one, so under pressure one direction's
// entry can go while the other stays. A lost forward entry is harmless (the
// ring gives the same real while it is unchanged), but a lost reply entry
// would leave the real's replies un-translated, and the connection hangs.
// So packets of an established flow also look up the partner entry (once
// per tick, see `partner_due`): that keeps both recent for the LRU, and
// re-writes the partner if it is gone.

/// Is it time for this entry's packet to look up the flow's other entry?
/// Once per coarse clock tick (2^24 ns, about 17 ms) per entry: a busy flow
/// pays one extra lookup per tick, not per packet, and an entry looked at
/// within the last tick is among the most recent, far from eviction.
#[inline(always)]
fn partner_due(ct: Option<*mut CtValue>) -> bool {
    let Some(ct) = ct else { return false };
    let tick = (unsafe { bpf_ktime_get_coarse_ns() } >> 24) as u32;
    // SAFETY: a map value pointer, valid for the program run; a racing
    // write from another CPU only repeats or skips one look.
    unsafe {
        if (*ct).checked == tick {
            return false;
        }
        (*ct).checked = tick;
    }
    true
}

/// A client → VIP packet hit its entry: keeps the reply entry.
#[inline(never)]
fn keep_reply(pkt: &Packet, vip_index: u32, real_id: u32, real: &RealDef) -> u32 {
    let rkey = reply_key(pkt, real);
    if unsafe { CONNTRACK.get(&rkey) }.is_some() {
        return 0;
    }
    let ct = CtValue {
        real_id,
        vip_index,
        kind: CT_REPLY,
        _pad: 0,
        vip_port: pkt.key.dport,
        vip_addr: pkt.key.dst,
        checked: 0,
    };
    let _ = CONNTRACK.insert(&rkey, &ct, 0);
    count(stat::CT_RESTORED);
    1
}

/// A reply hit its entry: keeps the client → VIP entry.
#[inline(never)]
fn keep_forward(pkt: &Packet, rev: &CtValue) -> u32 {
    let fkey = FlowKey {
        src: pkt.key.dst,
        dst: rev.vip_addr,
        sport: pkt.key.dport,
        dport: rev.vip_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if unsafe { CONNTRACK.get(&fkey) }.is_some() {
        return 0;
    }
    let ct = CtValue {
        real_id: rev.real_id,
        vip_index: rev.vip_index,
        kind: CT_FORWARD,
        _pad: 0,
        vip_port: 0,
        vip_addr: [0; 16],
        checked: 0,
    };
    let _ = CONNTRACK.insert(&fkey, &ct, 0);
    count(stat::CT_RESTORED);
    1
}

/// A client → VIP packet's flow and real.
struct Balanced {
    vip_index: u32,
    real_id: u32,
    real: &'static RealDef,
    /// The flow's first packet (or first after its entry went stale).
    new: bool,
}

const TCP_SYN: u8 = 0x02;

/// In [`new_flow`]'s result: the low 32 bits are a real id (its conntrack
/// entries written), not a verdict.
const PICKED: u64 = 1 << 32;

/// Does VIP index `index` still belong to the VIP this client → VIP tuple
/// is addressed to?
#[inline(always)]
fn vip_owns(index: u32, key: &FlowKey) -> bool {
    match VIP_KEYS.get(index) {
        Some(v) => {
            v.family == key.family
                && v.proto == key.proto
                && (v.port == key.dport || v.port == 0)
                && v.addr == key.dst
        }
        None => false,
    }
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
    unsafe { VIPS.get(&key) }.is_some()
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
const FLOW: u32 = u32::MAX;

/// Parses the packet into `out` and returns [`FLOW`], or returns the
/// verdict already decided (and counted). Not inlined, and a scalar result:
/// see `to_real`.
#[inline(always)]
fn parse(ctx: &XdpContext, out: &mut Packet) -> u32 {
    let ctx = opaque(ctx);
    try_parse(ctx, out).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_parse(ctx: &XdpContext, out: &mut Packet) -> Result<u32, ()> {
    let eth: *const EthHdr = match ptr_at(ctx, 0) {
        Ok(p) => p,
        Err(()) => {
            count(stat::DROP_TRUNC_ETH);
            return Ok(xdp_action::XDP_DROP);
        }
    };
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).proto });
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = match ptr_at(ctx, ETH_HLEN) {
            Ok(p) => p,
            Err(()) => {
                count(stat::DROP_TRUNC_VLAN);
                return Ok(xdp_action::XDP_DROP);
            }
        };
        ether_type = u16::from_be_bytes(unsafe { (*vlan).proto });
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let key = &mut out.key;
    let l4_len;
    let (family, proto, l4) = match ether_type {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = match ptr_at(ctx, l3) {
                Ok(p) => p,
                Err(()) => {
                    count(stat::DROP_TRUNC_IP);
                    return Ok(xdp_action::XDP_DROP);
                }
            };
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
            let ip: *const Ipv6Hdr = match ptr_at(ctx, l3) {
                Ok(p) => p,
                Err(()) => {
                    count(stat::DROP_TRUNC_IP);
                    return Ok(xdp_action::XDP_DROP);
                }
            };
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
        IPPROTO_TCP => match ptr_at::<TcpHdr>(ctx, l4) {
            Ok(t) => {
                let t = unsafe { &*t };
                key.sport = u16::from_ne_bytes(t.src);
                key.dport = u16::from_ne_bytes(t.dst);
                if let Err(reason) = hdr::tcp(l4_len, t.off) {
                    return Ok(malformed(ctx, &key.dst, family, reason));
                }
            }
            Err(()) => return Ok(malformed(ctx, &key.dst, family, stat::DROP_TRUNC_L4)),
        },
        IPPROTO_UDP => match ptr_at::<UdpHdr>(ctx, l4) {
            Ok(u) => {
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
            if is_vip_addr(&key.dst, family) {
                count(stat::PASS_VIP_OTHER_PROTO);
            } else {
                count(stat::PASS_NON_VIP);
            }
            return Ok(xdp_action::XDP_PASS);
        }
    }
    out.l3 = l3;
    out.l4 = l4;
    out.family = family;
    out.proto = proto;
    Ok(FLOW)
}

/// First packet of a client → VIP flow (or one whose entry went stale):
/// a real from the VIP's ring, both conntrack entries, then as established.
///
/// Returns [`PICKED`] | real id, or a verdict already decided (and
/// counted). Not inlined, and a scalar result: see `to_real`.
#[inline(never)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, meta: &VipMeta) -> u64 {
    let ctx = opaque(ctx);
    match try_new_flow(ctx, pkt, meta) {
        Ok(pick) => pick,
        Err(()) => xdp_action::XDP_DROP as u64,
    }
}

#[inline(always)]
fn try_new_flow(ctx: &XdpContext, pkt: &Packet, meta: &VipMeta) -> Result<u64, ()> {
    if nat::ttl_expired(ctx, pkt.l3, pkt.family)? {
        count(stat::PASS_TTL_EXPIRED);
        return Ok(xdp_action::XDP_PASS as u64);
    }
    if meta.ring_size == 0 {
        count(stat::DROP_NO_REAL);
        return Ok(xdp_action::XDP_DROP as u64);
    }
    let seed = match HASH_SEED.get(0) {
        Some(s) => *s,
        None => DEFAULT_HASH_SEED,
    };
    let slot = flow_hash_seeded(&pkt.key, seed) % meta.ring_size;
    let idx = meta.ring_slot.wrapping_mul(RING_STRIDE).wrapping_add(slot);
    let real_id = match RINGS.get(idx) {
        Some(id) if *id != 0 => *id,
        _ => {
            count(stat::DROP_NO_REAL);
            return Ok(xdp_action::XDP_DROP as u64);
        }
    };
    let real = match REALS.get(real_id) {
        Some(r) if r.flags & REAL_F_VALID != 0 => r,
        _ => {
            count(stat::DROP_NO_REAL);
            return Ok(xdp_action::XDP_DROP as u64);
        }
    };
    let mut ct = CtValue {
        real_id,
        vip_index: meta.vip_index,
        kind: CT_FORWARD,
        _pad: 0,
        vip_port: 0,
        vip_addr: [0; 16],
        checked: 0,
    };
    let _ = CONNTRACK.insert(&pkt.key, &ct, 0);
    // The reply will come from real:port to client:sport; map it back to the
    // VIP. Replies keep this entry fresh in the LRU.
    let rkey = reply_key(pkt, real);
    ct.kind = CT_REPLY;
    ct.vip_port = pkt.key.dport;
    ct.vip_addr = pkt.key.dst;
    let _ = CONNTRACK.insert(&rkey, &ct, 0);
    count(stat::CT_MISS);
    if pkt.proto == IPPROTO_TCP {
        let t: *const TcpHdr = ptr_at(ctx, pkt.l4)?;
        // SAFETY: `ptr_at` checked the header lies in the packet.
        if unsafe { (*t).flags } & TCP_SYN == 0 {
            count(stat::CT_MISS_MID_FLOW);
        }
    }
    Ok(PICKED | real_id as u64)
}

/// The real's port for this flow (a real of port 0 keeps the client's).
/// The tuple of a client → VIP flow's replies: real:port → client.
#[inline(always)]
fn reply_key(pkt: &Packet, real: &RealDef) -> FlowKey {
    FlowKey {
        src: real.addr,
        dst: pkt.key.src,
        sport: real_port(real, pkt),
        dport: pkt.key.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn real_port(real: &RealDef, pkt: &Packet) -> u16 {
    if real.port == 0 {
        pkt.key.dport
    } else {
        real.port
    }
}

/// Client → VIP: rewrite to the real, count, forward.
///
/// `to_real`, `to_client`, `new_flow`, the rewrite and the forwarding
/// step are BPF-to-BPF calls, not inlined: each frame then only holds
/// its own step's state, and the deepest call chain stays within the
/// 512 bytes of stack BPF allows.
///
/// Every function here that is not inlined returns a scalar (a verdict, a
/// flag, an id): a result returned through memory leaves a stack pointer
/// in the return register, which the verifier rejects.
#[inline(never)]
fn to_real(ctx: &XdpContext, pkt: &Packet, flow: &Balanced) -> u32 {
    let ctx = opaque(ctx);
    try_to_real(ctx, pkt, flow).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_to_real(ctx: &XdpContext, pkt: &Packet, flow: &Balanced) -> Result<u32, ()> {
    let (vip_index, real_id, real, new_flow) = (flow.vip_index, flow.real_id, flow.real, flow.new);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::add_vip(vip_index, bytes, new_flow, false);
    stats::add_real(real_id, bytes, new_flow, false);
    let sum = nat::rewrite_to(ctx, pkt, &real.addr, real_port(real, pkt), nat::Side::Dst)?;
    let action = forward::forward(ctx, pkt.l3, pkt.family, &forward::Hop::Real(real_id));
    settle(ctx, &sum, action)
}

/// Finishes a partial L4 checksum for the way the frame leaves (see
/// `nat::settle`) and returns the verdict.
#[inline(always)]
fn settle(ctx: &XdpContext, sum: &nat::L4Sum, action: u32) -> Result<u32, ()> {
    if let nat::L4Sum::Partial(p) = sum {
        let skb_kept = action == xdp_action::XDP_PASS
            || unsafe { SKB_IFACES.get(&(ctx.ingress_ifindex() as u32)) }.is_some();
        nat::settle(ctx, p, skb_kept)?;
    }
    Ok(action)
}

/// Real → client reply of a balanced flow: source back to the VIP, forward.
#[inline(never)]
fn to_client(ctx: &XdpContext, pkt: &Packet, rev: &CtValue) -> u32 {
    let ctx = opaque(ctx);
    try_to_client(ctx, pkt, rev).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_to_client(ctx: &XdpContext, pkt: &Packet, rev: &CtValue) -> Result<u32, ()> {
    if nat::ttl_expired(ctx, pkt.l3, pkt.family)? {
        count(stat::PASS_TTL_EXPIRED);
        return Ok(xdp_action::XDP_PASS);
    }
    count(stat::REPLY_NAT);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::add_vip(rev.vip_index, bytes, false, true);
    stats::add_real(rev.real_id, bytes, false, true);
    let sum = nat::rewrite_to(ctx, pkt, &rev.vip_addr, rev.vip_port, nat::Side::Src)?;
    let client = ReplyHopKey {
        addr: pkt.key.dst,
        ingress: ctx.ingress_ifindex() as u32,
        family: pkt.family,
        _pad: [0; 3],
    };
    let action = forward::forward(ctx, pkt.l3, pkt.family, &forward::Hop::Client(client));
    settle(ctx, &sum, action)
}

/// Floor for the per-packet benchmark: the same parse, then XDP_TX.
#[xdp]
pub fn floor_tx(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let pkt = zeroed_in(&mut slot);
    match parse(&ctx, pkt) {
        FLOW => xdp_action::XDP_TX,
        verdict => verdict,
    }
}

/// Floor for the forwarding benchmark: redirect every frame, no lookups.
#[xdp]
pub fn floor_redirect(_ctx: XdpContext) -> u32 {
    FLOOR_PORT.redirect(0, 0).unwrap_or(xdp_action::XDP_DROP)
}

/// Traffic generator for the forwarding benchmark, run with test-run in
/// live-frames mode on the balancer's client-side interface: restores the
/// frame from `GEN_TEMPLATE`, gives it the next source port (checksum
/// updated), then, by `GEN_MODE`, sends it out again (XDP_TX), hands it to
/// the kernel stack (XDP_PASS) or tail-calls the program under test.
#[xdp]
pub fn gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Ok(a) => a,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<u32, ()> {
    let (n, flows) = match (GEN_STATE.get_ptr_mut(0), GEN_STATE.get(1)) {
        (Some(c), Some(f)) => {
            let n = unsafe { *c };
            unsafe { *c = n + 1 };
            (n, if *f == 0 { 16384 } else { *f })
        }
        _ => return Ok(xdp_action::XDP_DROP),
    };
    let port = (1024 + n % flows) as u16;
    // Restore the frame: the page may come back rewritten by the receiver.
    let template = match GEN_TEMPLATE.get(0) {
        Some(t) => t,
        None => return Ok(xdp_action::XDP_DROP),
    };
    let frame: *mut GenTemplate = ptr_at(ctx, 0)?;
    // Not overlapping (map value → packet): a memcpy, which is inlined as
    // 8-byte copies, where an assignment would call a byte-wise memmove.
    unsafe { core::ptr::copy_nonoverlapping(template, frame, 1) };
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let p = zeroed_in(&mut slot);
    match parse(ctx, p) {
        FLOW => {
            nat::set_sport(ctx, p.l4, p.family, p.proto, port)?;
            match GEN_MODE.get(0).copied().unwrap_or(0) {
                1 => Ok(xdp_action::XDP_PASS),
                2 => {
                    let _ = unsafe { GEN_NEXT.tail_call(ctx, 0) };
                    Ok(xdp_action::XDP_DROP)
                }
                _ => Ok(xdp_action::XDP_TX),
            }
        }
        _ => Ok(xdp_action::XDP_DROP),
    }
}

/// Receiver side of benchmarks: counts and drops TCP/UDP frames; everything
/// else (ARP, neighbour discovery) passes so the receiver stays reachable.
#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let pkt = zeroed_in(&mut slot);
    match parse(&ctx, pkt) {
        FLOW => {
            if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
                unsafe { *c += 1 };
            }
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
