//! NAT rewrites with incremental checksum updates, and TTL handling.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::Update,
    parse::{ptr_at, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr},
};

/// True when forwarding would send the packet out with TTL / hop limit 0.
#[inline(always)]
pub fn ttl_expired(ctx: &XdpContext, l3: usize, family: u8) -> Result<bool, ()> {
    if family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
        Ok(unsafe { (*ip).ttl } <= 1)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
        Ok(unsafe { (*ip).hop_limit } <= 1)
    }
}

/// Which address/port of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Forward path: destination becomes real:port.
#[inline(always)]
pub fn rewrite_dst(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    family: u8,
    proto: u8,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), ()> {
    rewrite(ctx, l3, l4, family, proto, addr, port, Side::Dst)
}

/// Reverse path: source becomes VIP:port.
#[inline(always)]
pub fn rewrite_src(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    family: u8,
    proto: u8,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), ()> {
    rewrite(ctx, l3, l4, family, proto, addr, port, Side::Src)
}

/// Rewrites one address and port (port in network order as stored in the
/// maps), decrements TTL / hop limit, and fixes the IPv4 header checksum and
/// the TCP/UDP checksum incrementally.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    family: u8,
    proto: u8,
    addr: &[u8; 16],
    port: u16,
    side: Side,
) -> Result<(), ()> {
    let new_port = port.to_ne_bytes();
    // Pseudo-header and port delta for the L4 checksum.
    let mut l4sum_delta_old = [0u8; 16];
    let mut old_port = [0u8; 2];
    if family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3)?;
        let ip = unsafe { &mut *ip };
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
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3)?;
        let ip = unsafe { &mut *ip };
        let field = if side == Side::Dst {
            &mut ip.dst
        } else {
            &mut ip.src
        };
        l4sum_delta_old = *field;
        *field = *addr;
        ip.hop_limit -= 1;
    }

    match proto {
        IPPROTO_TCP => {
            let t: *mut TcpHdr = ptr_at(ctx, l4)?;
            let t = unsafe { &mut *t };
            let pf = if side == Side::Dst {
                &mut t.dst
            } else {
                &mut t.src
            };
            old_port.copy_from_slice(pf);
            *pf = new_port;
            let mut c = Update::new(t.check);
            l4_update(&mut c, family, &l4sum_delta_old, addr, &old_port, &new_port);
            t.check = c.finish();
        }
        IPPROTO_UDP => {
            let u: *mut UdpHdr = ptr_at(ctx, l4)?;
            let u = unsafe { &mut *u };
            let pf = if side == Side::Dst {
                &mut u.dst
            } else {
                &mut u.src
            };
            old_port.copy_from_slice(pf);
            *pf = new_port;
            // IPv4 UDP may carry no checksum (0); it stays absent.
            if !(family == FAMILY_V4 && u.check == [0, 0]) {
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

/// Sets the source port (host order) with an incremental L4 checksum update;
/// used by the benchmark generator.
#[inline(always)]
pub fn set_sport(ctx: &XdpContext, l4: usize, family: u8, proto: u8, port: u16) -> Result<(), ()> {
    let new = port.to_be_bytes();
    match proto {
        IPPROTO_TCP => {
            let t: *mut TcpHdr = ptr_at(ctx, l4)?;
            let t = unsafe { &mut *t };
            let mut c = Update::new(t.check);
            c.word(u16::from_be_bytes(t.src), port);
            t.src = new;
            t.check = c.finish();
        }
        IPPROTO_UDP => {
            let u: *mut UdpHdr = ptr_at(ctx, l4)?;
            let u = unsafe { &mut *u };
            if !(family == FAMILY_V4 && u.check == [0, 0]) {
                let mut c = Update::new(u.check);
                c.word(u16::from_be_bytes(u.src), port);
                let mut check = c.finish();
                if check == [0, 0] {
                    check = [0xff, 0xff];
                }
                u.check = check;
            }
            u.src = new;
        }
        _ => {}
    }
    Ok(())
}
