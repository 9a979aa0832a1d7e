//! Header layouts of the XDP programs, and the data plane's header checks,
//! as pure functions of the header fields:
//! the XDP program calls them on what it read from the packet, and host
//! tests compare them with a from-scratch reading of the same bytes. Each
//! returns the TCP/UDP length the IP header gives, or the `stat` counter of
//! the reason the packet is malformed.

// --- Header layouts ----------------------------------------------------
//
// Fields are byte arrays so that no access depends on alignment; multi-byte
// values are network order and read with `from_be_bytes`.

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct TcpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[repr(C)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

use lb_common::stat;

pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// IPv6 next-header values not parsed past: hop-by-hop, routing, fragment,
/// destination options, AH, mobility, HIP, shim6.
#[inline(always)]
pub fn ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 60 | 51 | 135 | 139 | 140)
}

/// An IPv4 header: `avail` bytes from its start to the end of the frame.
/// Only a header without options, not a fragment, whose total length lies
/// within the frame, is taken.
#[inline(always)]
pub fn ipv4(version_ihl: u8, tot_len: u16, frag_off: u16, avail: usize) -> Result<usize, u32> {
    if version_ihl >> 4 != 4 {
        return Err(stat::DROP_BAD_VERSION);
    }
    let ihl = (version_ihl & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(stat::DROP_BAD_IHL);
    }
    let tot = tot_len as usize;
    if tot < ihl || tot > avail {
        return Err(stat::DROP_BAD_LEN);
    }
    // MF set or a non-zero offset.
    if frag_off & 0x3fff != 0 {
        return Err(stat::DROP_FRAGMENT);
    }
    if ihl != 20 {
        return Err(stat::DROP_IP_OPTIONS);
    }
    Ok(tot - 20)
}

/// An IPv6 header: `avail` bytes after its 40 to the end of the frame.
#[inline(always)]
pub fn ipv6(version: u8, payload_len: u16, next: u8, avail: usize) -> Result<usize, u32> {
    if version >> 4 != 6 {
        return Err(stat::DROP_BAD_VERSION);
    }
    if payload_len as usize > avail {
        return Err(stat::DROP_BAD_LEN);
    }
    if ipv6_ext(next) {
        return Err(stat::DROP_IPV6_EXT);
    }
    Ok(payload_len as usize)
}

/// A TCP header within an IP payload of `len` bytes: the fixed header and
/// the data offset (byte 12) lie within it.
#[inline(always)]
pub fn tcp(len: usize, off_byte: u8) -> Result<(), u32> {
    let doff = (off_byte >> 4) as usize * 4;
    if len < TCP_HLEN || doff < TCP_HLEN || doff > len {
        return Err(stat::DROP_BAD_L4_LEN);
    }
    Ok(())
}

/// A UDP header within an IP payload of `len` bytes, whose length field
/// must equal it.
#[inline(always)]
pub fn udp(len: usize, ulen: u16) -> Result<(), u32> {
    if len < UDP_HLEN || ulen as usize != len {
        return Err(stat::DROP_BAD_L4_LEN);
    }
    Ok(())
}

/// An IPv4 source no packet may carry: 0.0.0.0/8, 127.0.0.0/8, multicast
/// and reserved (224.0.0.0/3, which holds 255.255.255.255).
#[inline(always)]
pub fn bad_source_v4(src: &[u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224
}

/// An IPv6 source no forwarded packet may carry: unspecified, loopback,
/// multicast (ff00::/8) or link-local (fe80::/10).
#[inline(always)]
pub fn bad_source_v6(src: &[u8; 16]) -> bool {
    if src[0] == 0xff || (src[0] == 0xfe && src[1] & 0xc0 == 0x80) {
        return true;
    }
    let mut zero = true;
    let mut i = 0;
    while i < 15 {
        zero &= src[i] == 0;
        i += 1;
    }
    zero && src[15] <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_fields() {
        // A plain header: version 4, IHL 5, total length 60 in 80 bytes.
        assert_eq!(ipv4(0x45, 60, 0, 80), Ok(40));
        assert_eq!(ipv4(0x45, 20, 0, 20), Ok(0));
        // DF alone is not a fragment.
        assert_eq!(ipv4(0x45, 60, 0x4000, 60), Ok(40));
        assert_eq!(ipv4(0x65, 60, 0, 80), Err(stat::DROP_BAD_VERSION));
        assert_eq!(ipv4(0x44, 60, 0, 80), Err(stat::DROP_BAD_IHL));
        assert_eq!(ipv4(0x45, 61, 0, 60), Err(stat::DROP_BAD_LEN));
        assert_eq!(ipv4(0x45, 19, 0, 60), Err(stat::DROP_BAD_LEN));
        // MF set, or a fragment offset.
        assert_eq!(ipv4(0x45, 60, 0x2000, 60), Err(stat::DROP_FRAGMENT));
        assert_eq!(ipv4(0x45, 60, 0x0001, 60), Err(stat::DROP_FRAGMENT));
        // IHL 6: options.
        assert_eq!(ipv4(0x46, 60, 0, 60), Err(stat::DROP_IP_OPTIONS));
        // Total length shorter than a 24-byte header.
        assert_eq!(ipv4(0x46, 22, 0, 60), Err(stat::DROP_BAD_LEN));
    }

    #[test]
    fn ipv6_fields() {
        // Version in the high nibble of the first byte.
        assert_eq!(ipv6(0x60, 20, 6, 20), Ok(20));
        assert_eq!(ipv6(0x6f, 8, 17, 100), Ok(8));
        assert_eq!(ipv6(0x40, 20, 6, 20), Err(stat::DROP_BAD_VERSION));
        assert_eq!(ipv6(0x60, 21, 6, 20), Err(stat::DROP_BAD_LEN));
        assert_eq!(ipv6(0x60, 20, 44, 20), Err(stat::DROP_IPV6_EXT));
        // ICMPv6 (58) is not an extension header.
        assert_eq!(ipv6(0x60, 20, 58, 20), Ok(20));
    }

    #[test]
    fn ipv6_extension_headers() {
        for next in [0, 43, 44, 60, 51, 135, 139, 140] {
            assert!(ipv6_ext(next), "{next}");
        }
        for next in [6, 17, 58, 59, 50, 41] {
            assert!(!ipv6_ext(next), "{next}");
        }
    }

    #[test]
    fn tcp_data_offset() {
        assert_eq!(tcp(20, 0x50), Ok(()));
        assert_eq!(tcp(40, 0xa0), Ok(()));
        assert_eq!(tcp(19, 0x50), Err(stat::DROP_BAD_L4_LEN));
        assert_eq!(tcp(40, 0x40), Err(stat::DROP_BAD_L4_LEN));
        assert_eq!(tcp(40, 0xb0), Err(stat::DROP_BAD_L4_LEN));
    }

    #[test]
    fn udp_length() {
        assert_eq!(udp(8, 8), Ok(()));
        assert_eq!(udp(30, 30), Ok(()));
        assert_eq!(udp(30, 29), Err(stat::DROP_BAD_L4_LEN));
        assert_eq!(udp(7, 7), Err(stat::DROP_BAD_L4_LEN));
    }

    #[test]
    fn bad_sources() {
        assert!(!bad_source_v4(&[198, 18, 0, 2]));
        assert!(!bad_source_v4(&[223, 255, 255, 255]));
        for bad in [
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(bad_source_v4(&bad), "{bad:?}");
        }
        let mut doc = [0u8; 16];
        doc[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        doc[15] = 1;
        assert!(!bad_source_v6(&doc));
        let mut unspecified = [0u8; 16];
        assert!(bad_source_v6(&unspecified));
        unspecified[15] = 1;
        assert!(bad_source_v6(&unspecified), "::1");
        unspecified[15] = 2;
        assert!(!bad_source_v6(&unspecified), "::2");
        let mut multicast = [0u8; 16];
        multicast[0] = 0xff;
        assert!(bad_source_v6(&multicast));
        let mut link_local = [0u8; 16];
        link_local[..2].copy_from_slice(&[0xfe, 0x80]);
        assert!(bad_source_v6(&link_local));
        // fec0::/10 (site-local, deprecated) is not link-local.
        link_local[1] = 0xc0;
        assert!(!bad_source_v6(&link_local));
    }
}
