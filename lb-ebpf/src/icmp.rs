//! ICMP the LB answers itself: echo requests (ping) to a VIP address whose
//! marker has `VIP_F_ICMP_ECHO`, turned into echo replies in place and sent
//! back out of the interface they came in on (`forward::out_of`), within a per-CPU
//! token bucket (`ICMP_RATE`, `ICMP_BUCKET`).
//!
//! The reply swaps the Ethernet and IP addresses, sets TTL / hop limit to
//! 64 and the type to echo reply; identifier, sequence number and data are
//! the request's. The checksums are updated incrementally (RFC 1624): the
//! address swap leaves both the IPv4 header sum and the ICMPv6 pseudo
//! header sum unchanged.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use lb_common::{stat, FAMILY_V4};

use crate::{
    csum::Update,
    maps::{ICMP_BUCKET, ICMP_RATE},
    parse::{opaque, ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr},
    stats::count,
};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const REPLY_TTL: u8 = 64;

/// Takes one token from this CPU's bucket: false when the LB has sent
/// its `ICMP_RATE` messages for the last second.
#[inline(always)]
pub fn allow() -> bool {
    let rate = ICMP_RATE.get(0).copied().unwrap_or(0) as u64;
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

/// Answers an echo request to a VIP address; anything else ICMP passes to
/// the kernel. `l3`, `l4`: offsets of the IP and the ICMP header. Not
/// inlined; a scalar result (see `to_real`).
#[inline(never)]
pub fn echo(ctx: &XdpContext, l3: usize, l4: usize, family: u8) -> u32 {
    let ctx = opaque(ctx);
    try_echo(ctx, l3, l4, family).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_echo(ctx: &XdpContext, l3: usize, l4: usize, family: u8) -> Result<u32, ()> {
    let v4 = family == FAMILY_V4;
    // SAFETY: type, code, checksum: bytes; nothing moves packet data in
    // this function.
    let icmp = unsafe { ptr_at::<[u8; 4]>(ctx, l4)? };
    // SAFETY: `ptr_at` checked the four bytes lie in the packet.
    let (ty, code) = unsafe { ((*icmp)[0], (*icmp)[1]) };
    let (request, reply) = if v4 {
        (ECHO_REQUEST_V4, ECHO_REPLY_V4)
    } else {
        (ECHO_REQUEST_V6, ECHO_REPLY_V6)
    };
    if ty != request || code != 0 {
        count(stat::PASS_VIP_OTHER_PROTO);
        return Ok(xdp_action::XDP_PASS);
    }
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
