//! The XDP fast path of `lb`.
//!
//! `lb_xdp`: parse → conntrack (both directions of a flow, one lookup) →
//! on a miss, VIP lookup → Maglev ring → NAT rewrite, or DSR
//! encapsulation (`encap.rs`) → FIB → XDP_TX / redirect. Replies from
//! reals of NAT VIPs are rewritten back to the VIP; those of DSR VIPs go
//! from the real to the client and never reach the LB.
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
//! This object holds `lb_xdp` only. The measurement and test programs
//! (floors, generator, sink) are the `lb-xdp-test` object, built from
//! `test_progs.rs` with the same parser.
#![no_std]
#![no_main]
// Every unsafe block says why it is sound; an unsafe fn's body is no
// licence for unchecked unsafe operations.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

mod csum;
mod encap;
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
use lb_common::{
    flow_hash_seeded, stat, CtValue, FlowKey, RealDef, ReplyHopKey, VipKey, VipMeta, CT_FORWARD,
    CT_REPLY, DEFAULT_HASH_SEED, IPPROTO_TCP, MODE_NAT, REAL_F_VALID, RING_STRIDE,
};
use maps::{CONNTRACK, HASH_SEED, REALS, RINGS, SKB_IFACES, VIPS, VIP_KEYS};
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
    let established = match hit.map(|p| {
        // SAFETY: a map value pointer, valid and aligned for the program run
        // (RCU). Caveat: `partner_due` writes the entry's `checked` through
        // the raw pointer while this reference lives, which Rust's aliasing
        // rules do not allow; nothing reads `checked` through it.
        unsafe { &*p }
    }) {
        Some(ct) if ct.kind == CT_REPLY => {
            if partner_due(hit) {
                keep_forward(&pkt, ct);
            }
            return Ok(to_client(ctx, &pkt, ct));
        }
        Some(ct) if vip_owns(ct.vip_index, &pkt.key) => match REALS.get(ct.real_id) {
            Some(real) if real.flags & REAL_F_VALID != 0 => {
                // Only NAT flows have a reply entry (DSR replies never
                // cross the LB).
                if ct.mode == MODE_NAT && partner_due(hit) {
                    keep_reply(&pkt, ct.vip_index, ct.real_id, real);
                }
                Some((ct.vip_index, ct.real_id, real, ct.mode, ct.vip_port))
            }
            _ => None,
        },
        // Stale (VIP gone or real removed): treated as a new flow.
        _ => None,
    };
    let (vip_index, real_id, real, new, mode, gue_port) = match established {
        Some((vip_index, real_id, real, mode, gue_port)) => {
            if nat::ttl_expired(ctx, pkt.l3, pkt.family)? {
                count(stat::PASS_TTL_EXPIRED);
                return Ok(xdp_action::XDP_PASS);
            }
            count(stat::CT_HIT);
            (vip_index, real_id, real, false, mode, gue_port)
        }
        None => {
            // A new flow to a VIP (exact port first, then all-ports).
            let mut vkey = VipKey {
                addr: pkt.key.dst,
                port: pkt.key.dport,
                proto: pkt.proto,
                family: pkt.family,
            };
            // SAFETY: the value stays valid memory for the program run
            // (RCU); the control plane replaces a VIP's entry in one update
            // and only reads of it follow.
            let mut meta = unsafe { VIPS.get(&vkey) };
            if meta.is_none() {
                vkey.port = 0;
                // SAFETY: as above.
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
                Some(real) => (
                    meta.vip_index,
                    real_id,
                    real,
                    true,
                    meta.mode,
                    meta.gue_port,
                ),
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
            mode,
            gue_port,
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
    // SAFETY: a helper without arguments.
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
    // SAFETY: only whether the entry exists is used; the value is not read.
    if unsafe { CONNTRACK.get(&rkey) }.is_some() {
        return 0;
    }
    let ct = CtValue {
        real_id,
        vip_index,
        kind: CT_REPLY,
        mode: MODE_NAT,
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
    // SAFETY: only whether the entry exists is used; the value is not read.
    if unsafe { CONNTRACK.get(&fkey) }.is_some() {
        return 0;
    }
    let ct = CtValue {
        real_id: rev.real_id,
        vip_index: rev.vip_index,
        kind: CT_FORWARD,
        mode: MODE_NAT,
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
    /// `MODE_*`, and for GUE the real's UDP port (network order).
    mode: u8,
    gue_port: u16,
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
        mode: meta.mode,
        vip_port: meta.gue_port,
        vip_addr: [0; 16],
        checked: 0,
    };
    let _ = CONNTRACK.insert(&pkt.key, &ct, 0);
    if meta.mode == MODE_NAT {
        // The reply will come from real:port to client:sport; map it back
        // to the VIP. Replies keep this entry fresh in the LRU. (DSR
        // replies go from the real to the client directly.)
        let rkey = reply_key(pkt, real);
        ct.kind = CT_REPLY;
        ct.vip_port = pkt.key.dport;
        ct.vip_addr = pkt.key.dst;
        let _ = CONNTRACK.insert(&rkey, &ct, 0);
    }
    count(stat::CT_MISS);
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: `ptr_at` checked the header lies in the packet; one byte
        // is read, right away.
        if unsafe { (*ptr_at::<TcpHdr>(ctx, pkt.l4)?).flags } & TCP_SYN == 0 {
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
    if flow.mode == MODE_NAT {
        let sum = nat::rewrite_to(ctx, pkt, &real.addr, real_port(real, pkt), nat::Side::Dst)?;
        let action = forward::forward(ctx, pkt.l3, pkt.family, &forward::Hop::Real(real_id));
        return settle(ctx, &sum, action);
    }
    let mut sum = nat::L4Sum::Full;
    let spec = encap::Spec {
        real,
        mode: flow.mode,
        gue_port: flow.gue_port,
    };
    encap::encap(ctx, pkt, &spec, &mut sum)?;
    count(stat::DSR_ENCAP);
    let action = forward::forward(ctx, pkt.l3, real.family, &forward::Hop::Real(real_id));
    settle(ctx, &sum, action)
}

/// Finishes a partial L4 checksum for the way the frame leaves (see
/// `nat::settle`) and returns the verdict.
#[inline(always)]
fn settle(ctx: &XdpContext, sum: &nat::L4Sum, action: u32) -> Result<u32, ()> {
    if let nat::L4Sum::Partial(p) = sum {
        // SAFETY: only whether the entry exists is used; the value is not
        // read.
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
