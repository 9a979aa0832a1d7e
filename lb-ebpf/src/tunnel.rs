//! Tunnel arithmetic shared by the encap path of `lb_xdp` and the decap
//! program `lb_decap`: the flow-derived outer source and GUE source port,
//! outer lengths, and the IPv4 header checksum. Pure functions of integers,
//! host-tested below.

/// IP protocol numbers of the tunnels.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_UDP: u8 = 17;

pub use crate::hdr::{IPV4_HLEN, IPV6_HLEN, UDP_HLEN};

/// TTL / hop limit of outer headers.
pub const OUTER_TTL: u8 = 64;

/// A cheap hash of a flow's words (the client address's last four bytes
/// and both ports) for the outer source and the GUE source port: it only
/// has to spread flows over the reals' receive queues, and costs a few
/// instructions per packet (the ring's flow hash is not computed for an
/// established flow). murmur3's finaliser.
#[inline(always)]
pub fn spread_hash(client_last4: u32, sport: u16, dport: u16) -> u32 {
    let mut h = client_last4 ^ ((sport as u32) << 16 | dport as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The outer source's last four bytes: the configured address's with the
/// host bits (`host_mask`, same byte order as `base`) taken from `hash`.
#[inline(always)]
pub fn outer_source(base: u32, host_mask: u32, hash: u32) -> u32 {
    (base & !host_mask) | (hash & host_mask)
}

/// GUE source port (host order): in the dynamic range 49152..=65535, from
/// the hash, so that every flow keeps one port and flows spread.
#[inline(always)]
pub fn gue_source_port(hash: u32) -> u16 {
    0xc000 | (hash as u16 & 0x3fff)
}

/// Bytes the encapsulation adds: the outer IP header, and for GUE its UDP
/// header.
#[inline(always)]
pub fn overhead(outer_v4: bool, gue: bool) -> usize {
    (if outer_v4 { IPV4_HLEN } else { IPV6_HLEN }) + if gue { UDP_HLEN } else { 0 }
}

/// The IP protocol (IPv4) or next header (IPv6) of the outer header.
#[inline(always)]
pub fn outer_proto(inner_v4: bool, gue: bool) -> u8 {
    if gue {
        IPPROTO_UDP
    } else if inner_v4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    }
}

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header_checksum(h: &[u8; 20]) -> [u8; 2] {
    let mut s = 0u32;
    let mut i = 0;
    while i < 20 {
        s += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    (!(s as u16)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_known_vector() {
        // RFC 1071's classic example header (Wikipedia's IPv4 checksum
        // example): 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), [0xb8, 0x61]);
        // With the checksum in place the header sums to 0xffff.
        h[10] = 0xb8;
        h[11] = 0x61;
        let mut s = 0u32;
        for w in h.chunks(2) {
            s += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(s, 0xffff);
    }

    #[test]
    fn source_keeps_the_prefix_and_varies_the_host_bits() {
        // 198.18.250.0/24: last byte from the hash.
        let base = u32::from_ne_bytes([198, 18, 250, 0]);
        let mask = u32::from_ne_bytes([0, 0, 0, 0xff]);
        let mut seen = std::collections::HashSet::new();
        for sport in 40000..40256u16 {
            let src = outer_source(base, mask, spread_hash(0x0102_0304, sport, 80)).to_ne_bytes();
            assert_eq!(src[..3], [198, 18, 250]);
            seen.insert(src[3]);
        }
        assert!(seen.len() > 150, "{} distinct sources", seen.len());
        // No host bits: the address itself.
        assert_eq!(outer_source(base, 0, 0xffff_ffff), base);
    }

    #[test]
    fn gue_ports_are_dynamic_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for sport in 1..1000u16 {
            let p = gue_source_port(spread_hash(7, sport, 443));
            assert!(p >= 49152);
            seen.insert(p);
        }
        assert!(seen.len() > 900);
        // One flow, one port.
        assert_eq!(
            gue_source_port(spread_hash(7, 5, 443)),
            gue_source_port(spread_hash(7, 5, 443))
        );
    }

    #[test]
    fn overheads_and_protocols() {
        assert_eq!(overhead(true, false), 20);
        assert_eq!(overhead(false, false), 40);
        assert_eq!(overhead(true, true), 28);
        assert_eq!(overhead(false, true), 48);
        assert_eq!(outer_proto(true, false), 4);
        assert_eq!(outer_proto(false, false), 41);
        assert_eq!(outer_proto(true, true), 17);
    }
}
