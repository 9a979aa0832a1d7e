//! DSR: a client → VIP packet, untouched, inside outer headers to its real
//! (IPIP, IP6IP6, 4-in-6, 6-in-4 by the families, or GUE). The real strips
//! them (`lb_decap`, or the kernel's own tunnel devices) and answers the
//! client from the VIP directly.
//!
//! The Ethernet header (and a VLAN tag) moves to the new start of the
//! frame; the outer IP header follows it, then for GUE a UDP header, then
//! the client's packet as it arrived. The outer source is the configured
//! encap source of the real's family with its host bits from the flow, so
//! the reals' receive-side scaling spreads flows; GUE puts the same hash
//! in the UDP source port. The inner packet keeps its TTL: to the client
//! the LB is a tunnel entry, not a router hop.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use lb_common::{stat, RealDef, FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, MODE_DSR_GUE};
use lb_ebpf::tunnel;

use crate::{
    csum,
    maps::ENCAP_SOURCE,
    nat::{self, L4Sum, Partial},
    parse::{
        copy16, opaque, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, TcpHdr, UdpHdr, VlanHdr,
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6,
    },
    stats::count,
};

/// The real and how to reach it.
pub struct Spec<'a> {
    pub real: &'a RealDef,
    /// `MODE_DSR_IPIP` or `MODE_DSR_GUE`.
    pub mode: u8,
    /// GUE: the UDP destination port (network order).
    pub gue_port: u16,
}

/// Encapsulates the packet towards `spec.real`. A partial inner checksum
/// (see `nat::L4Sum`) is reported in `out` for `settle`, at its new offset.
/// Afterwards the outer IP header is at `pkt.l3`, of the real's family.
///
/// Not inlined (a BPF-to-BPF call, its stack apart from the caller's).
#[inline(never)]
pub fn encap(ctx: &XdpContext, pkt: &Packet, spec: &Spec, out: &mut L4Sum) -> Result<(), ()> {
    let ctx = opaque(ctx);
    // As in `nat::rewrite`: only a partial result is written.
    if let L4Sum::Partial(p) = try_encap(ctx, pkt, spec)? {
        *out = L4Sum::Partial(p);
    }
    Ok(())
}

#[inline(always)]
fn try_encap(ctx: &XdpContext, pkt: &Packet, spec: &Spec) -> Result<L4Sum, ()> {
    let (l3, l4, family) = (pkt.l3, pkt.l4, pkt.family);
    let inner_v4 = family == FAMILY_V4;
    let outer_v4 = spec.real.family == FAMILY_V4;
    let gue = spec.mode == MODE_DSR_GUE;

    // What the outer headers need from the inner packet, read before the
    // frame moves.
    let (inner_len, tos, df) = if inner_v4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes
        // only, read right away, before the frame moves.
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3)? };
        (
            u16::from_be_bytes(ip.tot_len),
            ip.tos,
            ip.frag_off[0] & 0x40 != 0,
        )
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3)? };
        let tc = (ip.vtc_flow[0] << 4) | (ip.vtc_flow[1] >> 4);
        // IPv6 is never fragmented on the way: as if DF.
        (
            u16::from_be_bytes(ip.payload_len).wrapping_add(40),
            tc,
            true,
        )
    };
    let l4_len = nat::pkt_l4_len(ctx, pkt)?;
    let partial = inner_partial(ctx, pkt, l4_len)?;

    let source = match ENCAP_SOURCE.get(if outer_v4 { 0 } else { 1 }) {
        Some(s) if s.family == spec.real.family => s,
        _ => {
            count(stat::DROP_NO_ENCAP_SOURCE);
            return Err(());
        }
    };
    let k = &pkt.key;
    let client_last4 = if inner_v4 {
        u32::from_ne_bytes([k.src[0], k.src[1], k.src[2], k.src[3]])
    } else {
        u32::from_ne_bytes([k.src[12], k.src[13], k.src[14], k.src[15]])
    };
    let hash = tunnel::spread_hash(client_last4, k.sport, k.dport);
    let mut src = [0u8; 16];
    copy16(&mut src, &source.addr);
    let at = if outer_v4 { 0 } else { 12 };
    let base = u32::from_ne_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
    let host = tunnel::outer_source(base, source.host_mask, hash).to_ne_bytes();
    src[at..at + 4].copy_from_slice(&host);

    let overhead = tunnel::overhead(outer_v4, gue);
    let proto = tunnel::outer_proto(inner_v4, gue);
    let outer_len = inner_len.wrapping_add(overhead as u16);
    // SAFETY: the program's own context. Every packet pointer is derived
    // again after this call (`ptr_at` reads the new bounds).
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(overhead as i32)) } != 0 {
        count(stat::DROP_ENCAP_ROOM);
        return Err(());
    }
    // The Ethernet header (and VLAN tag) to the new start.
    // SAFETY: `ptr_at` checked both headers lie in the packet; they do
    // not overlap (the overhead is at least 20 bytes), are bytes only, and
    // are used right away.
    unsafe {
        let old: *const EthHdr = ptr_at(ctx, overhead)?;
        let new: *mut EthHdr = ptr_at(ctx, 0)?;
        (*new).dst = (*old).dst;
        (*new).src = (*old).src;
        (*new).proto = (*old).proto;
    }
    let ether_type = if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes();
    if l3 == ETH_HLEN {
        // SAFETY: as above.
        unsafe { (*ptr_at::<EthHdr>(ctx, 0)?).proto = ether_type };
    } else {
        // SAFETY: as above (the tag follows the Ethernet header).
        unsafe {
            let old: *const VlanHdr = ptr_at(ctx, overhead + ETH_HLEN)?;
            let new: *mut VlanHdr = ptr_at(ctx, ETH_HLEN)?;
            (*new).tci = (*old).tci;
            (*new).proto = ether_type;
        }
    }

    let ip_hlen = if outer_v4 {
        // Written in place (a copy on the stack would count against the
        // 512 bytes this call chain may use).
        // SAFETY: `ptr_at` checked the 20 bytes lie in the packet; bytes
        // only, the one reference to them.
        let h = unsafe { &mut *ptr_at::<[u8; 20]>(ctx, l3)? };
        h[0] = 0x45;
        h[1] = tos;
        h[2..4].copy_from_slice(&outer_len.to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        h[6] = if df { 0x40 } else { 0 };
        h[7] = 0;
        h[8] = tunnel::OUTER_TTL;
        h[9] = proto;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&src[..4]);
        h[16..20].copy_from_slice(&spec.real.addr[..4]);
        let check = tunnel::ipv4_header_checksum(h);
        h[10] = check[0];
        h[11] = check[1];
        tunnel::IPV4_HLEN
    } else {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes
        // only, the one reference to it.
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        // Flow label from the hash: routers and NICs spread on it too.
        let label = hash & 0x000f_ffff;
        ip.vtc_flow = [
            0x60 | (tos >> 4),
            (tos << 4) | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ];
        ip.payload_len = outer_len
            .wrapping_sub(tunnel::IPV6_HLEN as u16)
            .to_be_bytes();
        ip.next_hdr = proto;
        ip.hop_limit = tunnel::OUTER_TTL;
        copy16(&mut ip.src, &src);
        copy16(&mut ip.dst, &spec.real.addr);
        tunnel::IPV6_HLEN
    };
    if gue {
        // SAFETY: as above.
        let u = unsafe { &mut *ptr_at::<UdpHdr>(ctx, l3 + ip_hlen)? };
        u.src = tunnel::gue_source_port(hash).to_be_bytes();
        u.dst = spec.gue_port.to_ne_bytes();
        u.len = inner_len
            .wrapping_add(tunnel::UDP_HLEN as u16)
            .to_be_bytes();
        // No checksum: the inner packet has its own (RFC 6935/6936 allow
        // a zero checksum for tunnels over IPv6; `lb_decap` accepts it).
        u.check = [0, 0];
    }
    Ok(match partial {
        Some((pseudo, udp)) => L4Sum::Partial(Partial::unchanged(
            (l4 + overhead) as u16,
            l4_len,
            pseudo,
            udp,
        )),
        None => L4Sum::Full,
    })
}

/// Does the inner TCP/UDP checksum field hold only the pseudo-header sum
/// (a sender's checksum offload, see `nat::L4Sum`)? Then the folded sum,
/// and whether it is UDP.
#[inline(always)]
fn inner_partial(ctx: &XdpContext, pkt: &Packet, l4_len: u16) -> Result<Option<(u16, bool)>, ()> {
    let pseudo = csum::fold(csum::pseudo(ctx, pkt.l3, pkt.family, pkt.proto, l4_len)?);
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: `ptr_at` checked the header lies in the packet; one field
        // is read, right away.
        let check = unsafe { (*ptr_at::<TcpHdr>(ctx, pkt.l4)?).check };
        Ok((u16::from_ne_bytes(check) == pseudo).then_some((pseudo, false)))
    } else if pkt.proto == IPPROTO_UDP {
        // SAFETY: as for TCP.
        let check = unsafe { (*ptr_at::<UdpHdr>(ctx, pkt.l4)?).check };
        // IPv4 UDP without checksum stays without.
        let absent = pkt.family == FAMILY_V4 && check == [0, 0];
        Ok((!absent && u16::from_ne_bytes(check) == pseudo).then_some((pseudo, true)))
    } else {
        Ok(None)
    }
}
