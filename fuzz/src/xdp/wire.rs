//! A from-scratch reading of a frame: what a strict receiver makes of it,
//! and the Internet checksums over it. This is the fuzzer's reference; it
//! shares no code with the XDP program.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// IPv6 next-header values the data plane does not parse past (hop-by-hop,
/// routing, fragment, destination options, AH, mobility, HIP, shim6).
pub const IPV6_EXT: [u8; 8] = [0, 43, 44, 60, 51, 135, 139, 140];

/// A TCP or UDP packet whose headers are all present and consistent.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Offsets of the IP header, the L4 header, and the end of the IP
    /// packet (bytes after it are link padding).
    pub l3: usize,
    pub l4: usize,
    pub end: usize,
    pub v6: bool,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
}

impl Flow {
    pub fn l4_len(&self) -> usize {
        self.end - self.l4
    }

    /// Offset of the TCP/UDP checksum field.
    pub fn check_at(&self) -> usize {
        self.l4 + if self.proto == TCP { 16 } else { 6 }
    }

    /// Offset of the TTL / hop limit.
    pub fn ttl_at(&self) -> usize {
        self.l3 + if self.v6 { 7 } else { 8 }
    }

    /// Offsets of the source and destination addresses.
    pub fn src_at(&self) -> usize {
        self.l3 + if self.v6 { 8 } else { 12 }
    }

    pub fn dst_at(&self) -> usize {
        self.l3 + if self.v6 { 24 } else { 16 }
    }
}

/// What a frame is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Not IPv4 or IPv6 (after at most one 802.1Q tag).
    NotIp,
    /// IPv4/IPv6 that is not TCP or UDP (ICMP among others), headers sound.
    OtherProto {
        dst: IpAddr,
    },
    /// Headers a strict receiver rejects, or that the data plane does not
    /// handle (fragments, IPv4 options, IPv6 extension headers); `dst` is
    /// the destination address when the IP header holds one.
    Malformed {
        dst: Option<IpAddr>,
        why: &'static str,
    },
    Flow(Flow),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn classify(b: &[u8]) -> Kind {
    if b.len() < ETH_HLEN {
        return Kind::Malformed {
            dst: None,
            why: "truncated Ethernet header",
        };
    }
    let mut ether_type = be16(b, 12);
    let mut l3 = ETH_HLEN;
    if ether_type == 0x8100 {
        if b.len() < l3 + 4 {
            return Kind::Malformed {
                dst: None,
                why: "truncated VLAN tag",
            };
        }
        ether_type = be16(b, 16);
        l3 += 4;
    }
    let bad = |dst, why| Kind::Malformed { dst, why };
    let (v6, proto, src, dst, l4, end, ttl) = match ether_type {
        0x0800 => {
            if b.len() < l3 + 20 {
                return bad(None, "truncated IPv4 header");
            }
            let ip = &b[l3..];
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            if ip[0] >> 4 != 4 {
                return bad(Some(dst), "IP version");
            }
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let tot = be16(ip, 2) as usize;
            if ihl < 20 || tot < ihl || tot > ip.len() {
                return bad(Some(dst), "IPv4 header or total length");
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return bad(Some(dst), "IPv4 fragment");
            }
            if ihl != 20 {
                return bad(Some(dst), "IPv4 options");
            }
            if let IpAddr::V4(a) = src {
                if a.is_unspecified()
                    || a.octets()[0] == 0
                    || a.is_loopback()
                    || a.octets()[0] >= 224
                {
                    return bad(Some(dst), "IPv4 source address");
                }
            }
            (false, ip[9], src, dst, l3 + 20, l3 + tot, ip[8])
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return bad(None, "truncated IPv6 header");
            }
            let ip = &b[l3..];
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[24..40]);
            let dst = IpAddr::V6(Ipv6Addr::from(a));
            a.copy_from_slice(&ip[8..24]);
            let src = IpAddr::V6(Ipv6Addr::from(a));
            if ip[0] >> 4 != 6 {
                return bad(Some(dst), "IP version");
            }
            let payload = be16(ip, 4) as usize;
            if payload > ip.len() - 40 {
                return bad(Some(dst), "IPv6 payload length");
            }
            if IPV6_EXT.contains(&ip[6]) {
                return bad(Some(dst), "IPv6 extension header");
            }
            if let IpAddr::V6(a) = src {
                if a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || (a.segments()[0] & 0xffc0) == 0xfe80
                {
                    return bad(Some(dst), "IPv6 source address");
                }
            }
            (true, ip[6], src, dst, l3 + 40, l3 + 40 + payload, ip[7])
        }
        _ => return Kind::NotIp,
    };
    let len = end - l4;
    match proto {
        TCP => {
            if len < 20 {
                return bad(Some(dst), "TCP header beyond the IP length");
            }
            let doff = (b[l4 + 12] >> 4) as usize * 4;
            if doff < 20 || doff > len {
                return bad(Some(dst), "TCP data offset");
            }
        }
        UDP => {
            if len < 8 {
                return bad(Some(dst), "UDP header beyond the IP length");
            }
            if be16(b, l4 + 4) as usize != len {
                return bad(Some(dst), "UDP length");
            }
        }
        _ => return Kind::OtherProto { dst },
    }
    Kind::Flow(Flow {
        l3,
        l4,
        end,
        v6,
        proto,
        src,
        dst,
        sport: be16(b, l4),
        dport: be16(b, l4 + 2),
        ttl,
    })
}

/// Ones' complement sum of big-endian 16-bit words (an odd last byte is
/// padded with zero), not folded.
pub fn sum(data: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        s += (*last as u64) << 8;
    }
    s
}

pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Zero and all-ones are the same number in ones' complement.
pub fn same(a: u16, b: u16) -> bool {
    let n = |x: u16| if x == 0 { 0xffff } else { x };
    n(a) == n(b)
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The pseudo-header sum of a flow as the frame holds it now.
pub fn pseudo(b: &[u8], f: &Flow) -> u64 {
    let n = if f.v6 { 16 } else { 4 };
    sum(&b[f.src_at()..f.src_at() + n])
        + sum(&b[f.dst_at()..f.dst_at() + n])
        + f.proto as u64
        + f.l4_len() as u64
}

/// The folded sum over the pseudo header and the segment, checksum field
/// included: 0xffff (or 0) when the L4 checksum is right. Anything else is
/// the checksum's error, which a NAT must carry through unchanged.
pub fn l4_residue(b: &[u8], f: &Flow) -> u16 {
    fold(pseudo(b, f) + sum(&b[f.l4..f.end]))
}

/// The IPv4 header's residue (0xffff when its checksum is right).
pub fn ip4_residue(b: &[u8], f: &Flow) -> u16 {
    fold(sum(&b[f.l3..f.l3 + 20]))
}

/// What the L4 checksum field of a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Check {
    /// IPv4 UDP without a checksum (field 0).
    Absent,
    /// The folded pseudo-header sum: what a sender with checksum offload
    /// leaves (it may also, rarely, be a right full checksum).
    PartialLooking,
    Right,
    /// Wrong by this residue.
    Wrong(u16),
}

pub fn l4_check(b: &[u8], f: &Flow) -> L4Check {
    let field = be16(b, f.check_at());
    if !f.v6 && f.proto == UDP && field == 0 {
        return L4Check::Absent;
    }
    if field == fold(pseudo(b, f)) {
        return L4Check::PartialLooking;
    }
    let r = l4_residue(b, f);
    if same(r, 0xffff) {
        L4Check::Right
    } else {
        L4Check::Wrong(r)
    }
}

pub fn addr_of(b: &[u8], at: usize, v6: bool) -> IpAddr {
    if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
    }
}

pub fn put_addr(b: &mut [u8], at: usize, a: &IpAddr) {
    let bytes = addr_bytes(a);
    b[at..at + bytes.len()].copy_from_slice(&bytes);
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_userspace::testbed::packet::Pkt;

    #[test]
    fn built_packets_read_back_with_right_checksums() {
        let c = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let v = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
        let mut p = Pkt::tcp(c, 40000, v, 80, 0x02);
        p.payload = b"hello".to_vec();
        let b = p.bytes();
        let Kind::Flow(f) = classify(&b) else {
            panic!("not a flow")
        };
        assert_eq!((f.sport, f.dport, f.proto), (40000, 80, TCP));
        assert_eq!(l4_check(&b, &f), L4Check::Right);
        assert!(same(ip4_residue(&b, &f), 0xffff));
        let mut bad = b.clone();
        bad[f.end - 1] ^= 1;
        assert!(matches!(l4_check(&bad, &f), L4Check::Wrong(_)));
        p.partial_csum = true;
        let b = p.bytes();
        let Kind::Flow(f) = classify(&b) else {
            panic!("not a flow")
        };
        assert_eq!(l4_check(&b, &f), L4Check::PartialLooking);
        // A partial checksum does not depend on the payload.
        let mut other = b.clone();
        other[f.end - 1] ^= 1;
        assert_eq!(l4_check(&other, &f), L4Check::PartialLooking);
    }
}
