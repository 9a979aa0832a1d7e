//! NAT rewrites with incremental checksum updates, and TTL handling.

use aya_ebpf::programs::XdpContext;
use lb_common::{stat, FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum,
    parse::{opaque, ptr_at, Ipv4Hdr, Ipv6Hdr, Packet, IPV4_HLEN},
    segment,
    stats::count,
};

/// True when forwarding would send the packet out with TTL / hop limit 0.
#[inline(always)]
pub fn ttl_expired(ctx: &XdpContext, l3: usize, family: u8) -> Result<bool, ()> {
    if family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; one byte
        // is read, right away.
        Ok(unsafe { (*ptr_at::<Ipv4Hdr>(ctx, l3)?).ttl } <= 1)
    } else {
        // SAFETY: as for IPv4.
        Ok(unsafe { (*ptr_at::<Ipv6Hdr>(ctx, l3)?).hop_limit } <= 1)
    }
}

/// What a rewrite writes: a new destination (NAT towards the real), a new
/// source (NAT replies, back to the VIP), or both (FullNAT). Ports in
/// network order, as stored in the maps.
pub struct Target<'a> {
    pub dst: Option<(&'a [u8; 16], u16)>,
    pub src: Option<(&'a [u8; 16], u16)>,
}

/// Rewrites the packet's addresses and ports as `target` says (see
/// [`rewrite`]).
#[inline(always)]
pub fn rewrite_to(ctx: &XdpContext, pkt: &Packet, target: &Target) -> Result<L4Sum, ()> {
    let mut sum = L4Sum::Full;
    rewrite(ctx, pkt, target, &mut sum)?;
    Ok(sum)
}

/// What the TCP/UDP checksum field holds after a rewrite.
#[repr(u8)]
pub enum L4Sum {
    /// A full checksum, updated incrementally (or an IPv4 UDP datagram
    /// without checksum, which stays without).
    Full,
    /// What looked like a partial checksum (the field equals the folded
    /// pseudo-header sum): the field now holds the new pseudo-header sum;
    /// [`settle`] finishes it once the verdict is known.
    Partial(Partial),
}

/// A partial checksum found by [`rewrite`], with what [`settle`] needs
/// (small: it lives on the BPF stack across the forwarding step).
pub struct Partial {
    /// Offset of the L4 header, and its length up to the IP length.
    l4: u16,
    len: u16,
    /// Folded pseudo-header sums before and after the rewrite (native
    /// order).
    pseudo_old: u16,
    pseudo_new: u16,
    /// The rewritten ports, before and after: their ones'-complement sum
    /// (native order), one port or two.
    port_old: u16,
    port_new: u16,
    udp: bool,
}

impl Partial {
    /// A partial checksum of a segment whose pseudo header and ports stay
    /// as they are (DSR: the inner packet is not rewritten), with the L4
    /// header now at `l4`.
    #[inline(always)]
    pub fn unchanged(l4: u16, len: u16, pseudo: u16, udp: bool) -> Partial {
        Partial {
            l4,
            len,
            pseudo_old: pseudo,
            pseudo_new: pseudo,
            port_old: 0,
            port_new: 0,
            udp,
        }
    }
}

/// Rewrites one address and port (port in network order as stored in the
/// maps), decrements TTL / hop limit, and fixes the IPv4 header checksum and
/// the TCP/UDP checksum incrementally. A partial checksum (see
/// [`L4Sum::Partial`]) gets its pseudo-header sum updated instead; only
/// the addresses are in it, the ports are summed with the segment later.
///
/// Not inlined: a BPF-to-BPF call keeps its registers and stack apart from
/// the caller's (five arguments at most).
#[inline(never)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, target: &Target, out: &mut L4Sum) -> Result<(), ()> {
    let ctx = opaque(ctx);
    // Only a partial result is written (`out` starts as `Full`): copying a
    // whole `Full` value would store its undefined payload bytes, and the
    // verifier rejects reading an uninitialised register.
    if let L4Sum::Partial(p) = try_rewrite(ctx, pkt, target)? {
        *out = L4Sum::Partial(p);
    }
    Ok(())
}

/// One 16-bit word of a checksummed area replaced: `acc` plus the
/// ones'-complement difference (RFC 1624, eqn. 3). Native byte order
/// throughout, like the partial sums (see `csum`).
#[inline(always)]
fn swap(acc: u32, old: u16, new: u16) -> u32 {
    csum::add(csum::add(acc, (!old) as u32), new as u32)
}

/// A checksum field (native order) after the changes summed in `delta`.
#[inline(always)]
fn updated(check: u16, delta: u32) -> u16 {
    !csum::fold(csum::add((!check) as u32, delta))
}

/// Replaces a 16-byte address in the packet at `off` with `new`, and
/// returns `acc` plus the difference. The address is read and written as
/// eight 16-bit words (IPv6 headers are 2-aligned in the frame), which
/// keeps the update in one register.
#[inline(always)]
fn swap_addr16(ctx: &XdpContext, off: usize, new: &[u8; 16], mut acc: u32) -> Result<u32, ()> {
    // SAFETY: `ptr_at` checked the 16 bytes lie in the packet; plain
    // integers, the one reference to them while it lives, and no helper
    // moves packet data meanwhile. Packet memory may be accessed at any
    // alignment; IP headers are 2-aligned.
    let w = unsafe { &mut *ptr_at::<[u16; 8]>(ctx, off)? };
    let mut i = 0;
    while i < 8 {
        let n = u16::from_ne_bytes([new[2 * i], new[2 * i + 1]]);
        acc = swap(acc, w[i], n);
        w[i] = n;
        i += 1;
    }
    Ok(acc)
}

#[inline(always)]
fn try_rewrite(ctx: &XdpContext, pkt: &Packet, target: &Target) -> Result<L4Sum, ()> {
    let (l3, l4, family, proto) = (pkt.l3, pkt.l4, pkt.family, pkt.proto);
    let udp = proto == IPPROTO_UDP;
    if !udp && proto != IPPROTO_TCP {
        return Err(());
    }
    let l4_len = pkt_l4_len(ctx, pkt)?;
    let pseudo_old = csum::fold(csum::pseudo(ctx, l3, family, proto, l4_len)?);
    // The addresses' difference: in the pseudo header (so in the L4
    // checksum) and, for IPv4, in the IP header checksum.
    let mut da = 0u32;
    if family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; bytes
        // only, the one reference to it while it lives, and no helper
        // moves packet data meanwhile.
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, l3)? };
        if let Some((addr, _)) = target.dst {
            da = swap(
                da,
                u16::from_ne_bytes([ip.dst[0], ip.dst[1]]),
                u16::from_ne_bytes([addr[0], addr[1]]),
            );
            da = swap(
                da,
                u16::from_ne_bytes([ip.dst[2], ip.dst[3]]),
                u16::from_ne_bytes([addr[2], addr[3]]),
            );
            ip.dst = [addr[0], addr[1], addr[2], addr[3]];
        }
        if let Some((addr, _)) = target.src {
            da = swap(
                da,
                u16::from_ne_bytes([ip.src[0], ip.src[1]]),
                u16::from_ne_bytes([addr[0], addr[1]]),
            );
            da = swap(
                da,
                u16::from_ne_bytes([ip.src[2], ip.src[3]]),
                u16::from_ne_bytes([addr[2], addr[3]]),
            );
            ip.src = [addr[0], addr[1], addr[2], addr[3]];
        }
        let ttl_old = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.ttl -= 1;
        let ttl = swap(da, ttl_old, u16::from_ne_bytes([ip.ttl, ip.proto]));
        ip.check = updated(u16::from_ne_bytes(ip.check), ttl).to_ne_bytes();
    } else {
        if let Some((addr, _)) = target.dst {
            da = swap_addr16(ctx, l3 + 24, addr, da)?;
        }
        if let Some((addr, _)) = target.src {
            da = swap_addr16(ctx, l3 + 8, addr, da)?;
        }
        // SAFETY: as for IPv4.
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        ip.hop_limit -= 1;
    }
    // SAFETY: as for the IPv4 header: TCP and UDP both begin with the
    // source and destination ports (the parser checked the whole TCP or
    // UDP header is in the packet).
    let ports = unsafe { &mut *ptr_at::<[u16; 2]>(ctx, l4)? };
    let mut port_old = 0u32;
    let mut port_new = 0u32;
    if let Some((_, port)) = target.dst {
        port_old += ports[1] as u32;
        port_new += port as u32;
        ports[1] = port;
    }
    if let Some((_, port)) = target.src {
        port_old += ports[0] as u32;
        port_new += port as u32;
        ports[0] = port;
    }
    let check_off = if udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    // SAFETY: as above.
    let check = unsafe { &mut *ptr_at::<[u8; 2]>(ctx, l4 + check_off)? };
    let field = u16::from_ne_bytes(*check);
    // IPv4 UDP may carry no checksum (0); it stays absent. (A partial
    // checksum is never 0: the fold of a non-zero sum.)
    if udp && family == FAMILY_V4 && field == 0 {
        return Ok(L4Sum::Full);
    }
    let (port_old, port_new) = (csum::fold(port_old), csum::fold(port_new));
    if field == pseudo_old {
        let pseudo_new = csum::fold(csum::add(pseudo_old as u32, da));
        *check = pseudo_new.to_ne_bytes();
        return Ok(L4Sum::Partial(Partial {
            l4: l4 as u16,
            len: l4_len,
            pseudo_old,
            pseudo_new,
            port_old,
            port_new,
            udp,
        }));
    }
    let mut sum = updated(field, swap(da, port_old, port_new));
    if udp && sum == 0 {
        sum = 0xffff;
    }
    *check = sum.to_ne_bytes();
    Ok(L4Sum::Full)
}

/// The TCP/UDP length: IP total length less the header (IPv4; the parser
/// checked the IHL is 5 and the total length covers it), or the IPv6
/// payload length.
#[inline(always)]
pub fn pkt_l4_len(ctx: &XdpContext, pkt: &Packet) -> Result<u16, ()> {
    if pkt.family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; one byte
        // array is read, right away.
        let len = unsafe { (*ptr_at::<Ipv4Hdr>(ctx, pkt.l3)?).tot_len };
        Ok(u16::from_be_bytes(len).wrapping_sub(IPV4_HLEN as u16))
    } else {
        // SAFETY: as for IPv4.
        Ok(u16::from_be_bytes(unsafe {
            (*ptr_at::<Ipv6Hdr>(ctx, pkt.l3)?).payload_len
        }))
    }
}

/// Offsets of the checksum field in the TCP and UDP headers.
const TCP_CHECK_OFF: usize = 16;
const UDP_CHECK_OFF: usize = 6;

/// Finishes a partial checksum found by [`rewrite`], by how the frame
/// leaves:
///
/// - As a bare frame (`skb_kept` false: XDP_TX or a native-mode
///   redirect), nothing downstream knows the checksum was partial, so it
///   is computed here from scratch over the segment. That is right
///   whatever the field held, also for a full checksum that happened to
///   equal the pseudo-header sum (1 in 65536).
/// - With its socket buffer (passed to the kernel, or generic mode), the
///   buffer may still be marked partial and the kernel or the egress
///   device will add the segment to the field: the field must stay the
///   pseudo-header sum. Only if the original field was in fact a valid
///   full checksum (the buffer was not partial) is a full checksum
///   written instead.
#[inline(never)]
pub fn settle(ctx: &XdpContext, p: &Partial, skb_kept: bool) -> Result<(), ()> {
    let ctx = opaque(ctx);
    // An L4 header starts within the first 58 bytes; the bound keeps the
    // verifier's view of the offset small enough to track.
    if p.l4 > 0xff {
        return Err(());
    }
    let l4 = p.l4 as usize;
    let at = l4 + if p.udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    if p.len as usize > segment::MAX_LEN {
        if skb_kept {
            // Only a GRO-merged or GSO frame is this long, and its
            // checksum is partial: it stays so (pseudo header updated).
            count(stat::CSUM_PARTIAL_KEPT);
            return Ok(());
        }
        // Not possible for a native-mode frame; never sent on unfinished.
        count(stat::DROP_CSUM_TOO_LONG);
        return Err(());
    }
    // SAFETY: a byte array, written at once, below.
    let field: *mut [u8; 2] = unsafe { ptr_at(ctx, at)? };
    // SAFETY: `ptr_at` checked the field lies in the packet; nothing else
    // refers to it while this runs.
    unsafe { *field = [0, 0] };
    // The segment with its new port and a zero field.
    let seg = segment::sum(ctx, l4, p.len as usize);
    if seg < 0 {
        return Err(());
    }
    let seg = seg as u32;
    let mut full = !csum::fold(csum::add(p.pseudo_new as u32, seg));
    if p.udp && full == 0 {
        full = 0xffff;
    }
    let write = if !skb_kept {
        count(stat::CSUM_COMPLETED);
        full
    } else {
        // Was the original a valid full checksum? Put the old port back
        // into the sum and check it with the original field (which equals
        // the folded old pseudo-header sum).
        let seg_old = csum::add(csum::add(seg, (!p.port_new) as u32), p.port_old as u32);
        let old = p.pseudo_old as u32;
        if csum::fold(csum::add(csum::add(old, seg_old), old)) == 0xffff {
            full
        } else {
            count(stat::CSUM_PARTIAL_KEPT);
            p.pseudo_new
        }
    };
    // SAFETY: as above; re-derived after the helper calls.
    let field: *mut [u8; 2] = unsafe { ptr_at(ctx, at)? };
    // SAFETY: as above.
    unsafe { *field = write.to_ne_bytes() };
    Ok(())
}
