//! NAT rewrites with incremental checksum updates, and TTL handling.

use aya_ebpf::programs::XdpContext;
use lb_common::{stat, FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::{self, Update},
    parse::{copy16, opaque, ptr_at, Ipv4Hdr, Ipv6Hdr, Packet, TcpHdr, UdpHdr, IPV4_HLEN},
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

/// Which address/port of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Rewrites one side of the packet to `addr`:`port` (port in network
/// order): the destination on the forward path (to the real), the source
/// on the reverse path (back to the VIP).
#[inline(always)]
pub fn rewrite_to(
    ctx: &XdpContext,
    pkt: &Packet,
    addr: &[u8; 16],
    port: u16,
    side: Side,
) -> Result<L4Sum, ()> {
    let mut sum = L4Sum::Full;
    rewrite(ctx, pkt, &Target { addr, port, side }, &mut sum)?;
    Ok(sum)
}

/// The address and port a rewrite writes, and which side of the packet.
struct Target<'a> {
    addr: &'a [u8; 16],
    /// Network order, as stored in the maps.
    port: u16,
    side: Side,
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
    /// The rewritten port, before and after (native order).
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

#[inline(always)]
fn try_rewrite(ctx: &XdpContext, pkt: &Packet, target: &Target) -> Result<L4Sum, ()> {
    let (l3, l4, family, proto) = (pkt.l3, pkt.l4, pkt.family, pkt.proto);
    let (addr, port, side) = (target.addr, target.port, target.side);
    let new_port = port.to_ne_bytes();
    // Pseudo-header and port delta for the L4 checksum.
    let mut l4sum_delta_old = [0u8; 16];
    let mut old_port = [0u8; 2];
    let l4_len = pkt_l4_len(ctx, pkt)?;
    let pseudo_old = csum::fold(csum::pseudo(ctx, l3, family, proto, l4_len)?);
    if family == FAMILY_V4 {
        // SAFETY: `ptr_at` checked the header lies in the packet; it is
        // bytes only, and this is the one reference to it while it lives
        // (`pseudo` re-reads the packet only after its last use); no helper
        // moves packet data.
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, l3)? };
        let mut new_addr = [0u8; 4];
        new_addr.copy_from_slice(&addr[..4]);
        let field = if side == Side::Dst {
            &mut ip.dst
        } else {
            &mut ip.src
        };
        let old_addr = *field;
        *field = new_addr;
        l4sum_delta_old[..4].copy_from_slice(&old_addr);
        let mut c = Update::new(ip.check);
        c.bytes4(&old_addr, &new_addr);
        let old_ttl_word = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl -= 1;
        c.word(old_ttl_word, u16::from_be_bytes([ip.ttl, ip.proto]));
        ip.check = c.finish();
    } else {
        // SAFETY: as for IPv4.
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, l3)? };
        let field = if side == Side::Dst {
            &mut ip.dst
        } else {
            &mut ip.src
        };
        copy16(&mut l4sum_delta_old, field);
        copy16(field, addr);
        ip.hop_limit -= 1;
    }
    let partial = |old_port: [u8; 2], udp: bool| -> Result<L4Sum, ()> {
        Ok(L4Sum::Partial(Partial {
            l4: l4 as u16,
            len: l4_len,
            pseudo_old,
            pseudo_new: csum::fold(csum::pseudo(ctx, l3, family, proto, l4_len)?),
            port_old: u16::from_ne_bytes(old_port),
            port_new: u16::from_ne_bytes(new_port),
            udp,
        }))
    };

    match proto {
        IPPROTO_TCP => {
            // SAFETY: `ptr_at` checked the header lies in the packet; bytes
            // only, the one reference to it (`partial` reads the IP header
            // only), and no helper moves packet data.
            let t = unsafe { &mut *ptr_at::<TcpHdr>(ctx, l4)? };
            let pf = if side == Side::Dst {
                &mut t.dst
            } else {
                &mut t.src
            };
            old_port.copy_from_slice(pf);
            *pf = new_port;
            if u16::from_ne_bytes(t.check) == pseudo_old {
                let p = partial(old_port, false)?;
                if let L4Sum::Partial(p) = &p {
                    t.check = p.pseudo_new.to_ne_bytes();
                }
                return Ok(p);
            }
            let mut c = Update::new(t.check);
            l4_update(&mut c, family, &l4sum_delta_old, addr, &old_port, &new_port);
            t.check = c.finish();
        }
        IPPROTO_UDP => {
            // SAFETY: as for TCP.
            let u = unsafe { &mut *ptr_at::<UdpHdr>(ctx, l4)? };
            let pf = if side == Side::Dst {
                &mut u.dst
            } else {
                &mut u.src
            };
            old_port.copy_from_slice(pf);
            *pf = new_port;
            // IPv4 UDP may carry no checksum (0); it stays absent. (A
            // partial checksum is never 0: the fold of a non-zero sum.)
            if !(family == FAMILY_V4 && u.check == [0, 0]) {
                if u16::from_ne_bytes(u.check) == pseudo_old {
                    let p = partial(old_port, true)?;
                    if let L4Sum::Partial(p) = &p {
                        u.check = p.pseudo_new.to_ne_bytes();
                    }
                    return Ok(p);
                }
                let mut c = Update::new(u.check);
                l4_update(&mut c, family, &l4sum_delta_old, addr, &old_port, &new_port);
                let mut check = c.finish();
                if check == [0, 0] {
                    check = [0xff, 0xff];
                }
                u.check = check;
            }
        }
        _ => {}
    }
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

#[inline(always)]
fn l4_update(
    c: &mut Update,
    family: u8,
    old_addr: &[u8; 16],
    new_addr: &[u8; 16],
    old_port: &[u8; 2],
    new_port: &[u8; 2],
) {
    if family == FAMILY_V4 {
        let mut o = [0u8; 4];
        let mut n = [0u8; 4];
        o.copy_from_slice(&old_addr[..4]);
        n.copy_from_slice(&new_addr[..4]);
        c.bytes4(&o, &n);
    } else {
        c.bytes16(old_addr, new_addr);
    }
    c.word(u16::from_be_bytes(*old_port), u16::from_be_bytes(*new_port));
}
