//! ICMP to a VIP address (`parse` hands every ICMP / ICMPv6 message to a
//! VIP address here, with the address marker's flags in `key.sport`):
//!
//! - Echo requests (ping), when the marker has `VIP_F_ICMP_ECHO`, are
//!   turned into echo replies in place and sent back out of the interface
//!   they came in on (`forward::out_of`).
//! - Errors about a balanced flow (IPv4 destination unreachable, which
//!   includes fragmentation needed; ICMPv6 destination unreachable and
//!   packet too big) quote the start of a packet the VIP sent: VIP:port →
//!   client:port. They go on to that flow's real, so its kernel learns the
//!   path MTU or the failure: NAT and FullNAT translate the outer and the
//!   quoted headers back to what the real sent; DSR returns to `lb_xdp`,
//!   which encapsulates the error like the flow's packets. The flow is
//!   found by its conntrack entry, or else by the VIP's ring (a node that
//!   never saw the flow sends it where the ring sends its packets; FullNAT
//!   needs the entry, which holds the source port). An error whose quoted
//!   source is not its destination is dropped (it is not about a packet
//!   the VIP sent).
//! - Everything else passes to the kernel.
//!
//! Answers and relays share a per-CPU token bucket (`icmp_rate_limit`:
//! `ICMP_CONF`, `ICMP_BUCKET`).
//!
//! The reply swaps the Ethernet and IP addresses, sets TTL / hop limit to
//! 64 and the type to echo reply; identifier, sequence number and data are
//! the request's. The checksums are updated incrementally (RFC 1624): the
//! address swap leaves both the IPv4 header sum and the ICMPv6 pseudo
//! header sum unchanged.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    stat, FlowKey, VipKey, CT_FORWARD, FAMILY_V4, ICMP_CONF_RATE, ICMP_CONF_RELAY_OFF, IPPROTO_TCP,
    IPPROTO_UDP, MODE_FULLNAT, MODE_NAT, REAL_F_VALID, VIP_F_ICMP_ECHO,
};

use crate::{
    csum::Update,
    forward,
    maps::{CONNTRACK, ICMP_BUCKET, ICMP_CONF, ICMP_SCRATCH, REALS, VIPS},
    parse::{copy16, opaque, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_HLEN},
    stats::count,
};

/// In [`handle`]'s result: an error about a DSR flow, for `lb_xdp` to
/// encapsulate. The low 32 bits are the real id; the VIP index, the GUE
/// port and the mode are at the shifts below.
pub const RELAY_DSR: u64 = 1 << 32;
/// In [`handle`]'s result: an error about a NAT / FullNAT flow (the low
/// 32 bits its real id), its translation in this CPU's `ICMP_SCRATCH`,
/// for `lb_xdp` to apply with [`relay_nat`].
pub const RELAY_NAT: u64 = 1 << 31 << 32;
pub const VIP_SHIFT: u32 = 33;
pub const GUE_SHIFT: u32 = 40;
pub const MODE_SHIFT: u32 = 56;

const DEST_UNREACH_V4: u8 = 3;
const DEST_UNREACH_V6: u8 = 1;
const PACKET_TOO_BIG_V6: u8 = 2;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const REPLY_TTL: u8 = 64;

/// Takes one token from this CPU's bucket: false when the LB has sent
/// its `ICMP_RATE` messages for the last second.
#[inline(always)]
pub fn allow() -> bool {
    let rate = ICMP_CONF.get(ICMP_CONF_RATE).copied().unwrap_or(0) as u64;
    if rate == 0 {
        return true;
    }
    let Some(b) = ICMP_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU map value pointer, valid for the program run, and
    // only this CPU's program touches it.
    let b = unsafe { &mut *b };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // At most one second of refill: the bucket holds `rate` messages.
    let elapsed = now.saturating_sub(b.last_ns).min(1_000_000_000);
    let full = rate * 1000;
    let tokens = (b.milli_tokens + elapsed * rate / 1_000_000).min(full);
    b.last_ns = now;
    if tokens < 1000 {
        b.milli_tokens = tokens;
        return false;
    }
    b.milli_tokens = tokens - 1000;
    true
}

/// ICMP to a VIP address: an XDP verdict, or [`RELAY_DSR`] with the flow
/// (`pkt.key` then holds the flow's client → VIP tuple). Not inlined; a
/// scalar result (see `to_real`).
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &mut Packet) -> u64 {
    let ctx = opaque(ctx);
    match try_handle(ctx, pkt) {
        Ok(r) => r,
        Err(()) => xdp_action::XDP_DROP as u64,
    }
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, pkt: &mut Packet) -> Result<u64, ()> {
    let v4 = pkt.family == FAMILY_V4;
    // Where the IP datagram ends: link padding after it is not ICMP.
    let ip_end = pkt.l3 + ip_len(ctx, pkt.l3, v4)?;
    if pkt.l4 + 8 > ip_end {
        return Ok(mismatch());
    }
    // SAFETY: type and code: bytes, read right away.
    let icmp = unsafe { ptr_at::<[u8; 4]>(ctx, pkt.l4)? };
    // SAFETY: `ptr_at` checked the four bytes lie in the packet.
    let (ty, code) = unsafe { ((*icmp)[0], (*icmp)[1]) };
    let echo_on = pkt.key.sport as u8 & VIP_F_ICMP_ECHO != 0;
    let request = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    if echo_on && code == 0 && ty == request {
        return Ok(echo(ctx, pkt.l3, pkt.l4, pkt.family) as u64);
    }
    let error = if v4 {
        ty == DEST_UNREACH_V4
    } else {
        ty == DEST_UNREACH_V6 || ty == PACKET_TOO_BIG_V6
    };
    if !error || ICMP_CONF.get(ICMP_CONF_RELAY_OFF).copied().unwrap_or(0) != 0 {
        count(stat::PASS_VIP_OTHER_PROTO);
        return Ok(xdp_action::XDP_PASS as u64);
    }
    relay(ctx, pkt, ip_end)
}

/// The IP datagram's length: IPv4 total length, IPv6 payload + 40.
#[inline(always)]
fn ip_len(ctx: &XdpContext, l3: usize, v4: bool) -> Result<usize, ()> {
    if v4 {
        // SAFETY: bytes, read right away.
        Ok(u16::from_be_bytes(unsafe { (*ptr_at::<Ipv4Hdr>(ctx, l3)?).tot_len }) as usize)
    } else {
        // SAFETY: as above.
        Ok(u16::from_be_bytes(unsafe { (*ptr_at::<Ipv6Hdr>(ctx, l3)?).payload_len }) as usize + 40)
    }
}

/// An error about a flow of this VIP: finds the flow's real and returns
/// [`RELAY_NAT`] (the translation in `ICMP_SCRATCH`) or [`RELAY_DSR`] to
/// `lb_xdp`, or a verdict (counted).
#[inline(always)]
fn relay(ctx: &XdpContext, pkt: &mut Packet, ip_end: usize) -> Result<u64, ()> {
    let v4 = pkt.family == FAMILY_V4;
    let inner = pkt.l4 + 8;
    // The tuple and the translation live in this CPU's scratch slot, not
    // on the stack.
    let Some(t) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return Err(());
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program
    // run; nothing else holds a reference to it.
    let Translation {
        real_id: t_real,
        sport: t_sport,
        snat_port: t_snat_port,
        fullnat: t_fullnat,
        snat_addr: t_snat_addr,
        key,
        vkey,
        ..
    } = unsafe { &mut *t };
    key.src = [0; 16];
    key.dst = [0; 16];
    key.family = pkt.family;
    let inner_l4 = if v4 {
        // SAFETY: bytes only, read right away.
        let ip = match unsafe { ptr_at::<Ipv4Hdr>(ctx, inner) } {
            // SAFETY: `ptr_at` checked the header lies in the packet.
            Ok(p) => unsafe { &*p },
            Err(()) => return Ok(mismatch()),
        };
        if ip.version_ihl != 0x45 {
            return Ok(mismatch());
        }
        key.proto = ip.proto;
        key.src[..4].copy_from_slice(&ip.dst);
        key.dst[..4].copy_from_slice(&ip.src);
        inner + 20
    } else {
        // SAFETY: as for IPv4.
        let ip = match unsafe { ptr_at::<Ipv6Hdr>(ctx, inner) } {
            // SAFETY: as for IPv4.
            Ok(p) => unsafe { &*p },
            Err(()) => return Ok(mismatch()),
        };
        if ip.vtc_flow[0] >> 4 != 6 {
            return Ok(mismatch());
        }
        key.proto = ip.next_hdr;
        copy16(&mut key.src, &ip.dst);
        copy16(&mut key.dst, &ip.src);
        inner + 40
    };
    // The quoted packet left from the address the error is sent to.
    if key.dst != pkt.key.dst || (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP) {
        return Ok(mismatch());
    }
    // The quote must hold the ports.
    if inner_l4 + 4 > ip_end {
        return Ok(mismatch());
    }
    // SAFETY: bytes only, read right away.
    let ports = match unsafe { ptr_at::<[u8; 4]>(ctx, inner_l4) } {
        // SAFETY: `ptr_at` checked the four bytes lie in the packet.
        Ok(p) => unsafe { *p },
        Err(()) => return Ok(mismatch()),
    };
    key.dport = u16::from_ne_bytes([ports[0], ports[1]]);
    key.sport = u16::from_ne_bytes([ports[2], ports[3]]);

    // The flow: its entry, else the VIP's ring.
    *t_fullnat = 0;
    *t_sport = key.dport;
    let (real_id, vip_index, mode, gue_port);
    // SAFETY: the value stays valid memory for the program run (RCU); its
    // fields are copied out right away.
    match unsafe { CONNTRACK.get(&*key) } {
        Some(c) if c.kind == CT_FORWARD && crate::vip_owns(c.vip_index, key) => {
            (real_id, vip_index, mode, gue_port) = (c.real_id, c.vip_index, c.mode, c.vip_port);
            if c.mode == MODE_FULLNAT {
                *t_fullnat = 1;
                copy16(t_snat_addr, &c.peer_addr);
                *t_snat_port = c.peer_port;
            }
        }
        _ => {
            copy16(&mut vkey.addr, &key.dst);
            vkey.port = key.dport;
            vkey.proto = key.proto;
            vkey.family = key.family;
            // SAFETY: as above.
            let mut meta = unsafe { VIPS.get(&*vkey) };
            if meta.is_none() {
                vkey.port = 0;
                // SAFETY: as above.
                meta = unsafe { VIPS.get(&*vkey) };
            }
            let Some(meta) = meta.filter(|m| m.flags & lb_common::VIP_F_ADDR_ONLY == 0) else {
                return Ok(mismatch());
            };
            if meta.mode == MODE_FULLNAT || meta.ring_size == 0 {
                count(stat::DROP_ICMP_NO_FLOW);
                return Ok(xdp_action::XDP_DROP as u64);
            }
            (real_id, vip_index, mode, gue_port) = (
                crate::ring_real(key, meta),
                meta.vip_index,
                meta.mode,
                meta.gue_port,
            );
        }
    }
    match REALS.get(real_id) {
        Some(r) if real_id != 0 && r.flags & REAL_F_VALID != 0 => {}
        _ => {
            count(stat::DROP_ICMP_NO_FLOW);
            return Ok(xdp_action::XDP_DROP as u64);
        }
    }
    if !allow() {
        count(stat::DROP_ICMP_RATE);
        return Ok(xdp_action::XDP_DROP as u64);
    }
    count(stat::ICMP_RELAYED);
    if mode != MODE_NAT && mode != MODE_FULLNAT {
        pkt.key = *key;
        return Ok(RELAY_DSR
            | real_id as u64
            | ((vip_index as u64 & 0x7f) << VIP_SHIFT)
            | ((gue_port as u64) << GUE_SHIFT)
            | ((mode as u64) << MODE_SHIFT));
    }
    *t_real = real_id;
    Ok(RELAY_NAT | real_id as u64)
}

#[inline(always)]
fn mismatch() -> u64 {
    count(stat::DROP_ICMP_MISMATCH);
    xdp_action::XDP_DROP as u64
}

/// What a NAT or FullNAT error is translated to: [`relay`] writes it in
/// this CPU's `ICMP_SCRATCH`, [`translate`] applies it.
#[repr(C, align(8))]
pub struct Translation {
    pub real_id: u32,
    pub _pad: u32,
    /// The VIP port the quoted packet left from (network order).
    pub sport: u16,
    /// FullNAT: the flow's SNAT port (network order) and address.
    pub snat_port: u16,
    pub fullnat: u32,
    pub snat_addr: [u8; 16],
    /// The flow's client → VIP tuple, from the quoted packet, and the VIP
    /// key looked up for it.
    pub key: FlowKey,
    pub vkey: VipKey,
}

/// What [`translate_v4`] / [`translate_v6`] return when the error is
/// ready to be forwarded to the real.
const TRANSLATED: u32 = u32::MAX;

/// Translates an error about a NAT / FullNAT flow (its translation in
/// `ICMP_SCRATCH`) and forwards it to the flow's real. A frame of its own
/// between `lb_xdp` and the two steps, so neither's stack adds to
/// `lb_xdp`'s (the chain `lb_xdp` → `to_real_dsr` → `encap` is at the
/// 512 bytes BPF allows).
#[inline(never)]
pub fn relay_nat(ctx: &XdpContext, l3: usize, l4: usize, family: u8, real_id: u32) -> u32 {
    let ctx = opaque(ctx);
    let v = if family == FAMILY_V4 {
        translate_v4(ctx, l3, l4)
    } else {
        translate_v6(ctx, l3, l4)
    };
    if v != TRANSLATED {
        return v;
    }
    forward::or_pass(forward::forward(
        ctx,
        l3,
        family,
        &forward::Hop::Real(real_id),
    ))
}

#[inline(never)]
fn translate_v4(ctx: &XdpContext, l3: usize, l4: usize) -> u32 {
    let ctx = opaque(ctx);
    let Some(t) = ICMP_SCRATCH.get(0) else {
        return xdp_action::XDP_DROP;
    };
    try_translate::<true>(ctx, l3, l4, t).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(never)]
fn translate_v6(ctx: &XdpContext, l3: usize, l4: usize) -> u32 {
    let ctx = opaque(ctx);
    let Some(t) = ICMP_SCRATCH.get(0) else {
        return xdp_action::XDP_DROP;
    };
    try_translate::<false>(ctx, l3, l4, t).unwrap_or(xdp_action::XDP_DROP)
}

/// Rewrites an error about a NAT / FullNAT flow to what the real's own
/// packet would have drawn (`relay_nat` forwards it). The real sent
/// real:rport → client:cport (NAT) or real:rport → snat:sport (FullNAT);
/// the LB made it VIP:vport → client:cport. So the outer destination
/// becomes the real (FullNAT: the outer source the SNAT address, which the
/// real routes back to), and the quoted source real:rport (FullNAT: the
/// quoted destination snat:sport). Every changed 16-bit word goes into
/// the checksums that cover it: the outer IPv4 header, the quoted IPv4
/// header, the quoted TCP/UDP checksum when the quote holds it, and the
/// ICMP checksum (for ICMPv6 also over the outer addresses, its pseudo
/// header). TTL / hop limit is decremented.
#[inline(always)]
fn try_translate<const V4: bool>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    t: &Translation,
) -> Result<u32, ()> {
    let Some(real) = REALS.get(t.real_id) else {
        return Err(());
    };
    let rport = if real.port == 0 { t.sport } else { real.port };
    let v4 = V4;
    let inner = l4 + 8;
    // SAFETY: the ICMP header's checksum: bytes; nothing moves packet data
    // in this function, and each pointer below is used alone.
    let icmp = unsafe { ptr_at::<[u8; 4]>(ctx, l4)? };
    // SAFETY: `ptr_at` checked the bytes lie in the packet.
    let mut ic = Update::new(unsafe { [(*icmp)[2], (*icmp)[3]] });
    // The quoted TCP/UDP checksum, when the quote reaches it.
    let tcp = if v4 {
        // SAFETY: one byte, read right away.
        (unsafe { (*ptr_at::<Ipv4Hdr>(ctx, inner)?).proto }) == IPPROTO_TCP
    } else {
        // SAFETY: as above.
        (unsafe { (*ptr_at::<Ipv6Hdr>(ctx, inner)?).next_hdr }) == IPPROTO_TCP
    };
    let inner_l4 = inner + if v4 { 20 } else { 40 };
    let check_at = inner_l4 + if tcp { 16 } else { 6 };
    let ip_end = l3 + ip_len(ctx, l3, v4)?;
    // SAFETY: bytes only; used alone, below.
    let l4check = if check_at + 2 <= ip_end {
        unsafe { ptr_at::<[u8; 2]>(ctx, check_at) }.ok()
    } else {
        None
    };
    // SAFETY: as above.
    let field = l4check.map(|p| unsafe { *p });
    let mut lc = Update::new(field.unwrap_or([0, 0]));
    // IPv4 UDP without a checksum stays without.
    let l4sum = matches!(field, Some(f) if tcp || !v4 || f != [0, 0]);

    if v4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes only.
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, l3)? };
        if ip.ttl <= 1 {
            count(stat::PASS_TTL_EXPIRED);
            return Ok(xdp_action::XDP_PASS);
        }
        let mut oc = Update::new(ip.check);
        let mut new = [0u8; 4];
        new.copy_from_slice(&real.addr[..4]);
        oc.bytes4(&ip.dst, &new);
        ip.dst = new;
        if t.fullnat != 0 {
            new.copy_from_slice(&t.snat_addr[..4]);
            oc.bytes4(&ip.src, &new);
            ip.src = new;
        }
        oc.word(
            u16::from_be_bytes([ip.ttl, ip.proto]),
            u16::from_be_bytes([ip.ttl - 1, ip.proto]),
        );
        ip.ttl -= 1;
        ip.check = oc.finish();

        // SAFETY: as above, the quoted header.
        let q = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, inner)? };
        let mut qc = Update::new(q.check);
        new.copy_from_slice(&real.addr[..4]);
        qc.bytes4(&q.src, &new);
        ic.bytes4(&q.src, &new);
        lc.bytes4(&q.src, &new);
        q.src = new;
        if t.fullnat != 0 {
            new.copy_from_slice(&t.snat_addr[..4]);
            qc.bytes4(&q.dst, &new);
            ic.bytes4(&q.dst, &new);
            lc.bytes4(&q.dst, &new);
            q.dst = new;
        }
        let old = q.check;
        q.check = qc.finish();
        ic.word(u16::from_be_bytes(old), u16::from_be_bytes(q.check));
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        if ip.hop_limit <= 1 {
            count(stat::PASS_TTL_EXPIRED);
            return Ok(xdp_action::XDP_PASS);
        }
        ip.hop_limit -= 1;
        // ICMPv6 covers the outer addresses. (The 16-byte swaps are calls
        // of their own: unrolled here they would take this frame's stack.)
        ic.add(swap16(ctx, l3 + 24, &real.addr) as u16);
        if t.fullnat != 0 {
            ic.add(swap16(ctx, l3 + 8, &t.snat_addr) as u16);
        }
        let d = swap16(ctx, inner + 8, &real.addr) as u16;
        ic.add(d);
        lc.add(d);
        if t.fullnat != 0 {
            let d = swap16(ctx, inner + 24, &t.snat_addr) as u16;
            ic.add(d);
            lc.add(d);
        }
    }
    // The quoted ports.
    // SAFETY: bytes only, the only reference to them.
    let ports = unsafe { &mut *ptr_at::<[u8; 4]>(ctx, inner_l4)? };
    let old_sport = u16::from_be_bytes([ports[0], ports[1]]);
    let new_sport = u16::from_be_bytes(rport.to_ne_bytes());
    ic.word(old_sport, new_sport);
    lc.word(old_sport, new_sport);
    ports[..2].copy_from_slice(&rport.to_ne_bytes());
    if t.fullnat != 0 {
        let old_dport = u16::from_be_bytes([ports[2], ports[3]]);
        let new_dport = u16::from_be_bytes(t.snat_port.to_ne_bytes());
        ic.word(old_dport, new_dport);
        lc.word(old_dport, new_dport);
        ports[2..].copy_from_slice(&t.snat_port.to_ne_bytes());
    }
    if l4sum {
        if let Some(p) = l4check {
            // SAFETY: checked when read; the only reference to the bytes.
            let p = unsafe { &mut *p };
            let old = *p;
            *p = lc.finish();
            ic.word(u16::from_be_bytes(old), u16::from_be_bytes(*p));
        }
    }
    // SAFETY: checked above; the only reference to the bytes.
    let icmp = unsafe { &mut *icmp };
    let c = ic.finish();
    icmp[2] = c[0];
    icmp[3] = c[1];
    Ok(TRANSLATED)
}

/// The bytes of the client's packet an ICMP "too big" quotes: its IP
/// header and the first 8 bytes after it (RFC 792; enough for the
/// client's kernel to find the connection).
const QUOTE_V4: usize = 20 + 8;
const QUOTE_V6: usize = 40 + 8;

/// A DSR client packet (already encapsulated: its IP header at `l3 +
/// overhead`) did not fit the egress MTU `mtu`: turns it in place into an
/// ICMP "fragmentation needed" (IPv4, when the client set DF) or "packet
/// too big" (IPv6) from the VIP to the client, announcing `mtu - overhead`,
/// and sends it back out of the ingress interface. An IPv4 packet without
/// DF passes to the kernel, which may fragment the tunnel packet. Rate
/// limited with the other ICMP the LB sends. Not inlined; a scalar result.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, l3: usize, overhead: usize, family: u8, mtu: u16) -> u32 {
    let ctx = opaque(ctx);
    try_too_big(ctx, l3, overhead, family, mtu).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_too_big(
    ctx: &XdpContext,
    l3: usize,
    overhead: usize,
    family: u8,
    mtu: u16,
) -> Result<u32, ()> {
    let v4 = family == FAMILY_V4;
    let inner = l3 + (overhead & 0x7f);
    // The client's addresses and MACs, before the headers move.
    let mut client = [0u8; 16];
    let mut vip = [0u8; 16];
    if v4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes,
        // read right away.
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, inner)? };
        if ip.frag_off[0] & 0x40 == 0 {
            return Ok(xdp_action::XDP_PASS);
        }
        client[..4].copy_from_slice(&ip.src);
        vip[..4].copy_from_slice(&ip.dst);
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, inner)? };
        copy16(&mut client, &ip.src);
        copy16(&mut vip, &ip.dst);
    }
    if !allow() {
        count(stat::DROP_ICMP_RATE);
        return Ok(xdp_action::XDP_DROP);
    }
    // SAFETY: the Ethernet header (and VLAN tag) encap left at the start;
    // bytes, copied.
    let (smac, dmac, tag) = unsafe {
        let e = &*ptr_at::<EthHdr>(ctx, 0)?;
        let tag = if l3 == ETH_HLEN {
            [0u8; 4]
        } else {
            *ptr_at::<[u8; 4]>(ctx, ETH_HLEN)?
        };
        (e.src, e.dst, tag)
    };
    let (ip_len, quote) = if v4 { (20, QUOTE_V4) } else { (40, QUOTE_V6) };
    // New IP + ICMP headers where the tunnel headers are: grow or shrink
    // the head by the difference.
    let delta = (overhead & 0x7f) as i32 - (ip_len + 8) as i32;
    // SAFETY: the program's own context; every packet pointer is taken
    // anew after this.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, delta) } != 0 {
        return Ok(xdp_action::XDP_DROP);
    }
    let total = l3 + ip_len + 8 + quote;
    let now = ctx.data_end() - ctx.data();
    if now < total {
        return Ok(xdp_action::XDP_DROP);
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, total as i32 - now as i32) } != 0 {
        return Ok(xdp_action::XDP_DROP);
    }
    // SAFETY: bytes only, the one reference to them.
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0)? };
    eth.dst = smac;
    eth.src = dmac;
    // Every header byte is written anew: the head moved.
    let ether_type = if v4 { 0x0800u16 } else { 0x86dd }.to_be_bytes();
    if l3 == ETH_HLEN {
        eth.proto = ether_type;
    } else {
        eth.proto = [0x81, 0x00];
        // SAFETY: bytes only, the one reference to them.
        let t = unsafe { &mut *ptr_at::<[u8; 4]>(ctx, ETH_HLEN)? };
        *t = [tag[0], tag[1], ether_type[0], ether_type[1]];
    }
    let icmp_len = (8 + quote) as u16;
    let l4 = l3 + ip_len;
    // SAFETY: bytes only, the one reference to them.
    let icmp = unsafe { &mut *ptr_at::<[u8; 8]>(ctx, l4)? };
    let mut sum = 0u32;
    if v4 {
        // SAFETY: as above.
        let h = unsafe { &mut *ptr_at::<[u8; 20]>(ctx, l3)? };
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&(20 + icmp_len).to_be_bytes());
        h[4..8].copy_from_slice(&[0, 0, 0, 0]);
        h[8] = 64;
        h[9] = 1;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&vip[..4]);
        h[16..20].copy_from_slice(&client[..4]);
        let c = lb_ebpf::tunnel::ipv4_header_checksum(h);
        h[10] = c[0];
        h[11] = c[1];
        let m = mtu.saturating_sub(overhead as u16).max(68);
        *icmp = [DEST_UNREACH_V4, 4, 0, 0, 0, 0, (m >> 8) as u8, m as u8];
    } else {
        // SAFETY: as above.
        let h = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        h.vtc_flow = [0x60, 0, 0, 0];
        h.payload_len = icmp_len.to_be_bytes();
        h.next_hdr = 58;
        h.hop_limit = 64;
        copy16(&mut h.src, &vip);
        copy16(&mut h.dst, &client);
        let m = (mtu.saturating_sub(overhead as u16).max(1280)) as u32;
        *icmp = [PACKET_TOO_BIG_V6, 0, 0, 0, 0, 0, 0, 0];
        icmp[4..8].copy_from_slice(&m.to_be_bytes());
        // The pseudo header: addresses, length, next header.
        let mut i = 0;
        while i < 16 {
            sum += u16::from_be_bytes([vip[i], vip[i + 1]]) as u32;
            sum += u16::from_be_bytes([client[i], client[i + 1]]) as u32;
            i += 2;
        }
        sum += icmp_len as u32 + 58;
    }
    // The ICMP message: header and quote, read back from the packet.
    if v4 {
        // SAFETY: bytes, only read.
        sum += sum_words(unsafe { &*ptr_at::<[u8; 8 + QUOTE_V4]>(ctx, l4)? });
    } else {
        // SAFETY: as above.
        sum += sum_words(unsafe { &*ptr_at::<[u8; 8 + QUOTE_V6]>(ctx, l4)? });
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let c = (!(sum as u16)).to_be_bytes();
    // SAFETY: bytes only, the one reference to them.
    let icmp = unsafe { &mut *ptr_at::<[u8; 8]>(ctx, l4)? };
    icmp[2] = c[0];
    icmp[3] = c[1];
    count(stat::ICMP_TOO_BIG_SENT);
    let ingress = ctx.ingress_ifindex() as u32;
    Ok(forward::out_of(ingress, ingress))
}

/// The sum of the big-endian 16-bit words of `b` (not folded).
#[inline(always)]
fn sum_words<const N: usize>(b: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Replaces the 16 bytes at `off` with `new`; returns the change for the
/// checksums that cover them (see `Update::add`), or `u32::MAX` when they
/// are not in the packet. Not inlined; a scalar result.
#[inline(never)]
fn swap16(ctx: &XdpContext, off: usize, new: &[u8; 16]) -> u32 {
    let ctx = opaque(ctx);
    // SAFETY: bytes only, the one reference to them; nothing moves packet
    // data meanwhile.
    let Ok(p) = (unsafe { ptr_at::<[u8; 16]>(ctx, off) }) else {
        return u32::MAX;
    };
    // SAFETY: `ptr_at` checked the 16 bytes lie in the packet.
    let old = unsafe { &mut *p };
    let mut sum = 0u32;
    let mut i = 0;
    while i < 16 {
        sum += (!u16::from_be_bytes([old[i], old[i + 1]])) as u32;
        sum += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    copy16(old, new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum
}

/// Answers an echo request to a VIP address (its own frame: see
/// [`RELAY_NAT`]).
#[inline(never)]
fn echo(ctx: &XdpContext, l3: usize, l4: usize, family: u8) -> u32 {
    let ctx = opaque(ctx);
    try_echo(ctx, l3, l4, family).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_echo(ctx: &XdpContext, l3: usize, l4: usize, family: u8) -> Result<u32, ()> {
    let v4 = family == FAMILY_V4;
    // SAFETY: type, code, checksum: bytes; nothing moves packet data in
    // this function.
    let icmp = unsafe { ptr_at::<[u8; 4]>(ctx, l4)? };
    let (request, reply) = if v4 {
        (ECHO_REQUEST_V4, ECHO_REPLY_V4)
    } else {
        (ECHO_REQUEST_V6, ECHO_REPLY_V6)
    };
    // The identifier and sequence number must be there too.
    // SAFETY: only the bounds check is used.
    unsafe { ptr_at::<[u8; 8]>(ctx, l4)? };
    if !allow() {
        count(stat::DROP_ICMP_RATE);
        return Ok(xdp_action::XDP_DROP);
    }
    if v4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes
        // only, and this is the only reference to them.
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, l3)? };
        let (src, dst) = (ip.src, ip.dst);
        ip.src = dst;
        ip.dst = src;
        let mut u = Update::new(ip.check);
        u.word(
            u16::from_be_bytes([ip.ttl, ip.proto]),
            u16::from_be_bytes([REPLY_TTL, ip.proto]),
        );
        ip.ttl = REPLY_TTL;
        ip.check = u.finish();
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        let (src, dst) = (ip.src, ip.dst);
        ip.src = dst;
        ip.dst = src;
        ip.hop_limit = REPLY_TTL;
    }
    // SAFETY: checked above; bytes only, the only reference to them.
    let icmp = unsafe { &mut *icmp };
    let mut u = Update::new([icmp[2], icmp[3]]);
    u.word(
        u16::from_be_bytes([request, 0]),
        u16::from_be_bytes([reply, 0]),
    );
    icmp[0] = reply;
    let c = u.finish();
    icmp[2] = c[0];
    icmp[3] = c[1];
    // SAFETY: the parser read this header before; bytes only, the only
    // reference to them.
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0)? };
    let (a, b) = (eth.src, eth.dst);
    eth.src = b;
    eth.dst = a;
    count(stat::ICMP_ECHO_REPLY);
    let ingress = ctx.ingress_ifindex() as u32;
    Ok(crate::forward::out_of(ingress, ingress))
}
