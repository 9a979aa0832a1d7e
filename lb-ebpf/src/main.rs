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
//!   (extension headers) are dropped and counted.
//! - Echo requests (ping) to a VIP address are answered here when any VIP
//!   of that address has `icmp_echo` (the default), within the per-CPU
//!   `icmp_rate_limit` (`icmp.rs`); other ICMP/ICMPv6 to a VIP passes.
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
mod icmp;
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
    CT_REPLY, DEFAULT_HASH_SEED, IPPROTO_TCP, MAX_SNAT_ADDRS, MODE_FULLNAT, MODE_NAT, REAL_F_VALID,
    RING_STRIDE, SNAT_PROBES,
};
use maps::{CONNTRACK, HASH_SEED, REALS, RINGS, SKB_IFACES, SNAT_POOLS, VIPS, VIP_KEYS};
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
    // An ICMP error about a DSR flow (see `icmp::handle`), else 0.
    let mut relay = 0u64;
    if verdict != FLOW {
        if verdict != ICMP_TO_VIP {
            return Ok(verdict);
        }
        let r = icmp::handle(ctx, pkt);
        if r & icmp::RELAY_NAT != 0 {
            return Ok(icmp::relay_nat(ctx, pkt.l3, pkt.l4, pkt.family, r as u32));
        }
        if r & icmp::RELAY_DSR == 0 {
            return Ok(r as u32);
        }
        relay = r;
    }

    let flow = if relay != 0 {
        // To its real, encapsulated like the flow's packets (`pkt.key` is
        // now the flow's tuple).
        Balanced {
            vip_index: ((relay >> icmp::VIP_SHIFT) & 0x7f) as u32,
            real_id: relay as u32,
            new: false,
            mode: (relay >> icmp::MODE_SHIFT) as u8,
            gue_port: (relay >> icmp::GUE_SHIFT) as u16,
            snat_addr: None,
            snat_port: 0,
        }
    } else {
        // An established flow, either direction: one lookup. The entry stays
        // valid for the rest of the program run (RCU).
        let hit = CONNTRACK.get_ptr_mut(&pkt.key);
        let established = match hit.map(|p| {
            // SAFETY: a map value pointer, valid and aligned for the program run
            // (RCU). Caveat: `partner_due` (and a FullNAT FIN or RST) write
            // the entry's `checked` (and `flags`) through the raw pointer
            // while this reference lives, which Rust's aliasing rules do not
            // allow; nothing reads those fields through it after the writes.
            unsafe { &*p }
        }) {
            Some(ct) if ct.kind == CT_REPLY => {
                if ct.mode == MODE_FULLNAT && tcp_closing(ctx, &pkt) {
                    if let Some(p) = hit {
                        // SAFETY: a map value pointer, valid for the program
                        // run.
                        unsafe { (*p).flags |= lb_common::CT_F_CLOSING };
                    }
                }
                if partner_due(hit) {
                    keep_forward(&pkt, ct);
                }
                return Ok(to_client(ctx, &pkt, ct));
            }
            Some(ct) if vip_owns(ct.vip_index, &pkt.key) => match REALS.get(ct.real_id) {
                Some(real) if real.flags & REAL_F_VALID != 0 => {
                    // NAT and FullNAT flows have a reply entry (DSR replies
                    // never cross the LB).
                    // A FullNAT FIN or RST from the client marks the reply
                    // entry (the SNAT port's claim) closing.
                    let closing = ct.mode == MODE_FULLNAT && tcp_closing(ctx, &pkt);
                    if (ct.mode == MODE_NAT || ct.mode == MODE_FULLNAT)
                        && (partner_due(hit) || closing)
                    {
                        keep_reply(&pkt, ct, real, closing);
                    }
                    Some(Balanced {
                        vip_index: ct.vip_index,
                        real_id: ct.real_id,
                        new: false,
                        mode: ct.mode,
                        gue_port: ct.vip_port,
                        snat_addr: if ct.mode == MODE_FULLNAT {
                            Some(&ct.peer_addr)
                        } else {
                            None
                        },
                        snat_port: ct.peer_port,
                    })
                }
                _ => None,
            },
            // Stale (VIP gone or real removed): treated as a new flow.
            _ => None,
        };
        match established {
            Some(flow) => {
                if nat::ttl_expired(ctx, pkt.l3, pkt.family)? {
                    count(stat::PASS_TTL_EXPIRED);
                    return Ok(xdp_action::XDP_PASS);
                }
                count(stat::CT_HIT);
                flow
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
                let Some(real) = REALS.get(real_id) else {
                    return Ok(xdp_action::XDP_DROP);
                };
                let mut snat_addr = None;
                let mut snat_port = 0;
                if meta.mode == MODE_FULLNAT {
                    let claim = snat_claim(&pkt, meta.vip_index, real_id, real);
                    if claim & PICKED == 0 {
                        return Ok(claim as u32);
                    }
                    // The address and port the flow's entries were written with.
                    let Some(pool) = SNAT_POOLS.get(meta.vip_index) else {
                        return Ok(xdp_action::XDP_DROP);
                    };
                    let slot = ((claim >> SNAT_SLOT_SHIFT) as usize) & (MAX_SNAT_ADDRS - 1);
                    snat_addr = Some(&pool.addrs[slot]);
                    snat_port = (claim >> SNAT_PORT_SHIFT) as u16;
                }
                Balanced {
                    vip_index: meta.vip_index,
                    real_id,
                    new: true,
                    mode: meta.mode,
                    gue_port: meta.gue_port,
                    snat_addr,
                    snat_port,
                }
            }
        }
    };
    if flow.mode == MODE_NAT || flow.mode == MODE_FULLNAT {
        Ok(to_real(ctx, &pkt, &flow))
    } else {
        Ok(to_real_dsr(ctx, &pkt, &flow))
    }
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
    let tick = tick();
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

/// The current coarse clock tick (see [`partner_due`]).
#[inline(always)]
fn tick() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } >> 24) as u32
}

/// A client → VIP packet hit its entry: keeps the reply entry (marks it
/// seen, so a FullNAT port is not taken back from a flow whose packets only
/// go one way; re-writes it if it is gone).
#[inline(never)]
fn keep_reply(pkt: &Packet, fwd: &CtValue, real: &RealDef, closing: bool) -> u32 {
    let fullnat = fwd.mode == MODE_FULLNAT;
    let mut rkey = reply_key(pkt, real);
    if fullnat {
        rkey.dst = fwd.peer_addr;
        rkey.dport = fwd.peer_port;
    }
    if let Some(rev) = CONNTRACK.get_ptr_mut(&rkey) {
        // SAFETY: a map value pointer, valid for the program run; a racing
        // write of the same field from another CPU is as good as this one.
        unsafe {
            (*rev).checked = tick();
            if closing {
                (*rev).flags |= lb_common::CT_F_CLOSING;
            }
        }
        return 0;
    }
    let mut ct = CtValue {
        real_id: fwd.real_id,
        vip_index: fwd.vip_index,
        kind: CT_REPLY,
        mode: fwd.mode,
        vip_port: pkt.key.dport,
        vip_addr: pkt.key.dst,
        checked: 0,
        flags: 0,
        peer_addr: [0; 16],
        peer_port: 0,
        _pad: [0; 5],
    };
    if fullnat {
        ct.peer_addr = pkt.key.src;
        ct.peer_port = pkt.key.sport;
    }
    // A FullNAT port another flow took meanwhile stays with it.
    let flags = if fullnat { BPF_NOEXIST } else { 0 };
    if CONNTRACK.insert(&rkey, &ct, flags).is_ok() {
        count(stat::CT_RESTORED);
    }
    1
}

/// A reply hit its entry: keeps the client → VIP entry.
#[inline(never)]
fn keep_forward(pkt: &Packet, rev: &CtValue) -> u32 {
    let fullnat = rev.mode == MODE_FULLNAT;
    let mut fkey = FlowKey {
        src: pkt.key.dst,
        dst: rev.vip_addr,
        sport: pkt.key.dport,
        dport: rev.vip_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if fullnat {
        fkey.src = rev.peer_addr;
        fkey.sport = rev.peer_port;
    }
    if let Some(fwd) = CONNTRACK.get_ptr_mut(&fkey) {
        // SAFETY: as in `keep_reply`.
        unsafe { (*fwd).checked = tick() };
        return 0;
    }
    let mut ct = CtValue {
        real_id: rev.real_id,
        vip_index: rev.vip_index,
        kind: CT_FORWARD,
        mode: rev.mode,
        vip_port: 0,
        vip_addr: [0; 16],
        checked: 0,
        flags: 0,
        peer_addr: [0; 16],
        peer_port: 0,
        _pad: [0; 5],
    };
    if fullnat {
        ct.peer_addr = pkt.key.dst;
        ct.peer_port = pkt.key.dport;
    }
    let _ = CONNTRACK.insert(&fkey, &ct, 0);
    count(stat::CT_RESTORED);
    1
}

/// A client → VIP packet's flow and real.
struct Balanced {
    vip_index: u32,
    real_id: u32,
    /// The flow's first packet (or first after its entry went stale).
    new: bool,
    /// `MODE_*`, and for GUE the real's UDP port (network order).
    mode: u8,
    gue_port: u16,
    /// FullNAT: the SNAT address and port (network order) the flow leaves
    /// from. (Two fields, not an `Option` of both: every byte of the
    /// value is then defined, which the verifier requires of what it
    /// spills.)
    snat_addr: Option<&'static [u8; 16]>,
    snat_port: u16,
}

const BPF_NOEXIST: u64 = 1;

/// In [`new_flow`]'s result for a FullNAT flow: the SNAT port (network
/// order) at bit 40, the pool slot of its address at bit 56.
const SNAT_PORT_SHIFT: u32 = 40;
const SNAT_SLOT_SHIFT: u32 = 56;

const TCP_SYN: u8 = 0x02;

/// In [`new_flow`]'s result: the low 32 bits are a real id (its conntrack
/// entries written), not a verdict.
const PICKED: u64 = 1 << 32;

/// Does VIP index `index` still belong to the VIP this client → VIP tuple
/// is addressed to?
#[inline(always)]
pub(crate) fn vip_owns(index: u32, key: &FlowKey) -> bool {
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

/// The real the VIP's ring gives a client → VIP tuple (0: none; the
/// caller checked `ring_size` is not 0).
#[inline(always)]
pub(crate) fn ring_real(key: &FlowKey, meta: &VipMeta) -> u32 {
    let seed = match HASH_SEED.get(0) {
        Some(s) => *s,
        None => DEFAULT_HASH_SEED,
    };
    let Some(slot) = flow_hash_seeded(key, seed).checked_rem(meta.ring_size) else {
        return 0;
    };
    let idx = meta.ring_slot.wrapping_mul(RING_STRIDE).wrapping_add(slot);
    RINGS.get(idx).copied().unwrap_or(0)
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
    let real_id = ring_real(&pkt.key, meta);
    if real_id == 0 {
        count(stat::DROP_NO_REAL);
        return Ok(xdp_action::XDP_DROP as u64);
    }
    let real = match REALS.get(real_id) {
        Some(r) if r.flags & REAL_F_VALID != 0 => r,
        _ => {
            count(stat::DROP_NO_REAL);
            return Ok(xdp_action::XDP_DROP as u64);
        }
    };
    // FullNAT flows get their entries from `snat_claim`, next.
    if meta.mode != MODE_FULLNAT {
        let mut ct = CtValue {
            real_id,
            vip_index: meta.vip_index,
            kind: CT_FORWARD,
            mode: meta.mode,
            vip_port: meta.gue_port,
            vip_addr: [0; 16],
            checked: 0,
            flags: 0,
            peer_addr: [0; 16],
            peer_port: 0,
            _pad: [0; 5],
        };
        let _ = CONNTRACK.insert(&pkt.key, &ct, 0);
        if meta.mode == MODE_NAT {
            // The reply will come from real:port to client:sport; map it
            // back to the VIP. Replies keep this entry fresh in the LRU.
            // (DSR replies go from the real to the client directly.)
            let rkey = reply_key(pkt, real);
            ct.kind = CT_REPLY;
            ct.vip_port = pkt.key.dport;
            ct.vip_addr = pkt.key.dst;
            let _ = CONNTRACK.insert(&rkey, &ct, 0);
        }
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

// --- FullNAT source ports ------------------------------------------------
//
// A FullNAT flow leaves from one of its VIP's SNAT addresses and a port
// claimed for it. The claim is the flow's reply entry itself (real:port →
// snat:port), inserted only if absent (BPF_NOEXIST), so two flows never
// share a tuple at the real, whichever CPUs they arrive on. A port whose
// earlier flow closed (FIN or RST, then quiet) or went idle is taken
// back; see `SNAT_*_TICKS`.

/// Claims a SNAT address and port for a new FullNAT flow to `real`, and
/// writes both its entries. Returns [`PICKED`] with the port and pool slot
/// (see [`SNAT_PORT_SHIFT`]), or a verdict (counted).
#[inline(never)]
fn snat_claim(pkt: &Packet, vip_index: u32, real_id: u32, real: &RealDef) -> u64 {
    let pool = match SNAT_POOLS.get(vip_index) {
        Some(p) => p,
        None => return xdp_action::XDP_DROP as u64,
    };
    // Local copies, checked once: a divisor the compiler cannot prove
    // non-zero brings a panic branch the verifier rejects.
    let (addrs, ports, port_min) = (pool.count, pool.port_count as u32, pool.port_min);
    let closed = if pool.closed_ticks != 0 {
        pool.closed_ticks
    } else {
        lb_common::SNAT_CLOSED_TICKS
    };
    if addrs == 0 || ports == 0 {
        count(stat::DROP_NO_SNAT);
        return xdp_action::XDP_DROP as u64;
    }
    let seed = match HASH_SEED.get(0) {
        Some(s) => *s,
        None => DEFAULT_HASH_SEED,
    };
    // Another seed than the ring's, so the ports do not follow the reals.
    let h0 = flow_hash_seeded(&pkt.key, seed ^ 0x5eed_5a47);
    let now = tick();
    let idle = if pool.idle_ticks != 0 {
        pool.idle_ticks
    } else if pkt.proto == IPPROTO_TCP {
        lb_common::SNAT_IDLE_TICKS_TCP
    } else {
        lb_common::SNAT_IDLE_TICKS_UDP
    };
    let mut ct = CtValue {
        real_id,
        vip_index,
        kind: CT_REPLY,
        mode: MODE_FULLNAT,
        vip_port: pkt.key.dport,
        vip_addr: pkt.key.dst,
        checked: now,
        flags: 0,
        peer_addr: pkt.key.src,
        peer_port: pkt.key.sport,
        _pad: [0; 5],
    };
    let mut rkey = FlowKey {
        src: real.addr,
        dst: [0; 16],
        sport: real_port(real, pkt),
        dport: 0,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let mut i = 0;
    while i < SNAT_PROBES {
        let h = probe_hash(h0, i);
        let (Some(slot), Some(offset)) =
            ((h & 0xff).checked_rem(addrs), (h >> 8).checked_rem(ports))
        else {
            break;
        };
        let slot = slot as usize & (MAX_SNAT_ADDRS - 1);
        let port = port_min.wrapping_add(offset as u16).to_be();
        copy16(&mut rkey.dst, &pool.addrs[slot]);
        rkey.dport = port;
        // A free port first (the common case: one update, no lookup);
        // only a taken one is looked at, and taken over if its flow has
        // closed or gone idle.
        let mut claimed = CONNTRACK.insert(&rkey, &ct, BPF_NOEXIST).is_ok();
        if !claimed {
            // SAFETY: the value is read at once; a racing update from
            // another CPU shows the old or the new entry.
            if let Some(old) = unsafe { CONNTRACK.get(&rkey) } {
                let quiet = now.wrapping_sub(old.checked);
                if (old.flags & lb_common::CT_F_CLOSING != 0 && quiet > closed) || quiet > idle {
                    claimed = CONNTRACK.insert(&rkey, &ct, 0).is_ok();
                }
            }
        }
        if claimed {
            // The same value, turned into the forward entry (one value on
            // the stack, not two).
            ct.kind = CT_FORWARD;
            ct.vip_port = 0;
            ct.vip_addr = [0; 16];
            copy16(&mut ct.peer_addr, &rkey.dst);
            ct.peer_port = port;
            let _ = CONNTRACK.insert(&pkt.key, &ct, 0);
            count(stat::SNAT_NEW);
            return PICKED
                | ((port as u64) << SNAT_PORT_SHIFT)
                | ((slot as u64) << SNAT_SLOT_SHIFT);
        }
        count(stat::SNAT_COLLISION);
        i += 1;
    }
    count(stat::DROP_SNAT_EXHAUSTED);
    xdp_action::XDP_DROP as u64
}

/// The `i`-th probe of a flow's SNAT port search: fmix32 of the flow's
/// hash and the probe number.
#[inline(always)]
fn probe_hash(h0: u32, i: u32) -> u32 {
    let mut h = h0 ^ i.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Is this a TCP packet with FIN or RST? (FullNAT flows: the flow's
/// SNAT port can go to a new flow soon after it ends; see
/// `SNAT_CLOSED_TICKS`.)
#[inline(always)]
fn tcp_closing(ctx: &XdpContext, pkt: &Packet) -> bool {
    if pkt.proto != IPPROTO_TCP {
        return false;
    }
    // SAFETY: `ptr_at` checked the header lies in the packet; one byte is
    // read, right away.
    match unsafe { ptr_at::<TcpHdr>(ctx, pkt.l4) } {
        // SAFETY: as above.
        Ok(t) => (unsafe { (*t).flags } & (TCP_FIN | TCP_RST)) != 0,
        Err(()) => false,
    }
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

/// Client → VIP of a NAT or FullNAT VIP: rewrite to the real, count,
/// forward.
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
    // The real was valid when the flow was balanced (this program run).
    let Some(real) = REALS.get(flow.real_id) else {
        return Err(());
    };
    count_to_real(ctx, flow);
    let target = nat::Target {
        dst: Some((&real.addr, real_port(real, pkt))),
        src: flow.snat_addr.map(|a| (a, flow.snat_port)),
    };
    if flow.mode == MODE_FULLNAT && flow.snat_addr.is_none() {
        return Err(());
    }
    let sum = nat::rewrite_to(ctx, pkt, &target)?;
    let action = forward::or_pass(forward::forward(
        ctx,
        pkt.l3,
        pkt.family,
        &forward::Hop::Real(flow.real_id),
    ));
    settle(ctx, &sum, action)
}

/// Client → VIP of a DSR VIP: encapsulate to the real, count, forward.
/// Called from `lb_xdp` directly, apart from [`to_real`]: the deepest
/// chain (this frame and `encap`'s) then fits the BPF stack.
#[inline(never)]
fn to_real_dsr(ctx: &XdpContext, pkt: &Packet, flow: &Balanced) -> u32 {
    let ctx = opaque(ctx);
    try_to_real_dsr(ctx, pkt, flow).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_to_real_dsr(ctx: &XdpContext, pkt: &Packet, flow: &Balanced) -> Result<u32, ()> {
    // As in `to_real`.
    let Some(real) = REALS.get(flow.real_id) else {
        return Err(());
    };
    count_to_real(ctx, flow);
    let mut sum = nat::L4Sum::Full;
    let spec = encap::Spec {
        real,
        mode: flow.mode,
        gue_port: flow.gue_port,
    };
    encap::encap(ctx, pkt, &spec, &mut sum)?;
    count(stat::DSR_ENCAP);
    let action = forward::forward(ctx, pkt.l3, real.family, &forward::Hop::Real(flow.real_id));
    if action & forward::FRAG_NEEDED != 0 {
        // Too big once encapsulated: the client hears it from the VIP.
        let overhead = lb_ebpf::tunnel::overhead(
            real.family == lb_common::FAMILY_V4,
            flow.mode == lb_common::MODE_DSR_GUE,
        );
        return Ok(icmp::too_big(
            ctx,
            pkt.l3,
            overhead,
            pkt.family,
            action as u16,
        ));
    }
    settle(ctx, &sum, action)
}

/// The VIP's and the real's counters of a client → VIP packet.
#[inline(always)]
fn count_to_real(ctx: &XdpContext, flow: &Balanced) {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    stats::add_vip(flow.vip_index, bytes, flow.new, false);
    stats::add_real(flow.real_id, bytes, flow.new, false);
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
    let fullnat = rev.mode == MODE_FULLNAT;
    let target = nat::Target {
        dst: if fullnat {
            Some((&rev.peer_addr, rev.peer_port))
        } else {
            None
        },
        src: Some((&rev.vip_addr, rev.vip_port)),
    };
    let sum = nat::rewrite_to(ctx, pkt, &target)?;
    let client = ReplyHopKey {
        addr: if fullnat { rev.peer_addr } else { pkt.key.dst },
        ingress: ctx.ingress_ifindex() as u32,
        family: pkt.family,
        _pad: [0; 3],
    };
    let action = forward::or_pass(forward::forward(
        ctx,
        pkt.l3,
        pkt.family,
        &forward::Hop::Client(client),
    ));
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
