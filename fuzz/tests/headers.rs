//! The data plane's header checks (`lb_ebpf::hdr`, as the XDP parser
//! applies them) against the fuzzer's from-scratch reading of the same
//! bytes (`lb_fuzz::xdp::wire`): both must call every frame the same.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_ebpf::hdr;
use lb_fuzz::xdp::wire::{self, Kind};
use lb_userspace::testbed::packet::Pkt;
use proptest::prelude::*;

#[derive(Debug, PartialEq, Eq)]
enum Class {
    NotIp,
    Malformed,
    OtherProto,
    Flow,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The XDP parser's decisions, in its order, on a byte slice.
fn data_plane(b: &[u8]) -> Class {
    if b.len() < 14 {
        return Class::Malformed;
    }
    let (mut et, mut l3) = (be16(b, 12), 14);
    if et == 0x8100 {
        if b.len() < 18 {
            return Class::Malformed;
        }
        et = be16(b, 16);
        l3 = 18;
    }
    let (proto, l4, len) = match et {
        0x0800 => {
            if b.len() < l3 + 20 {
                return Class::Malformed;
            }
            let ip = &b[l3..];
            let Ok(len) = hdr::ipv4(ip[0], be16(ip, 2), be16(ip, 6), ip.len()) else {
                return Class::Malformed;
            };
            if hdr::bad_source_v4(ip[12..16].try_into().unwrap()) {
                return Class::Malformed;
            }
            (ip[9], l3 + 20, len)
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return Class::Malformed;
            }
            let ip = &b[l3..];
            let Ok(len) = hdr::ipv6(ip[0], be16(ip, 4), ip[6], ip.len() - 40) else {
                return Class::Malformed;
            };
            if hdr::bad_source_v6(ip[8..24].try_into().unwrap()) {
                return Class::Malformed;
            }
            (ip[6], l3 + 40, len)
        }
        _ => return Class::NotIp,
    };
    match proto {
        6 if b.len() < l4 + 20 => Class::Malformed,
        6 => match hdr::tcp(len, b[l4 + 12]) {
            Ok(()) => Class::Flow,
            Err(_) => Class::Malformed,
        },
        17 if b.len() < l4 + 8 => Class::Malformed,
        17 => match hdr::udp(len, be16(b, l4 + 4)) {
            Ok(()) => Class::Flow,
            Err(_) => Class::Malformed,
        },
        _ => Class::OtherProto,
    }
}

fn reference(b: &[u8]) -> Class {
    match wire::classify(b) {
        Kind::NotIp => Class::NotIp,
        Kind::Malformed { .. } => Class::Malformed,
        Kind::OtherProto { .. } => Class::OtherProto,
        Kind::Flow(_) => Class::Flow,
    }
}

fn frame(v6: bool, proto: u8, vlan: bool, payload: usize) -> Vec<u8> {
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1)),
        )
    };
    let mut p = match proto {
        6 => Pkt::tcp(src, 40000, dst, 80, 0x02),
        _ => Pkt::udp(src, 40000, dst, 53),
    };
    p.payload = vec![0x5a; payload];
    if vlan {
        p.vlan = Some(7);
    }
    p.bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn the_parser_reads_every_frame_as_the_reference_does(
        v6: bool,
        tcp: bool,
        vlan: bool,
        payload in 0usize..48,
        edits in proptest::collection::vec((0usize..90, any::<u8>()), 0..4),
        cut in proptest::option::of(0usize..130),
        pad in 0usize..8,
    ) {
        let mut b = frame(v6, if tcp { 6 } else { 17 }, vlan, payload);
        for (at, v) in edits {
            if at < b.len() {
                b[at] = v;
            }
        }
        b.extend(std::iter::repeat_n(0, pad));
        if let Some(n) = cut {
            b.truncate(n);
        }
        prop_assert_eq!(data_plane(&b), reference(&b), "frame {}", wire::hex(&b));
    }
}
