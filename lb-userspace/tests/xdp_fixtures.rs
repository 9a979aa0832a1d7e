//! Katran-style fixtures: (description, input packet, expected verdict,
//! expected output bytes), each run through BPF_PROG_TEST_RUN on `lb_xdp`.
//!
//! The test runs in its own network namespace with fixed MAC addresses and
//! permanent neighbour entries, so `bpf_fib_lookup` gives the same answer
//! every time. Expected packets are built from scratch with full checksums,
//! which checks the program's incremental checksum updates byte for byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_userspace::{
    config::Config,
    dataplane::{self, Dataplane, LoadOptions},
    testbed::{self, Netns},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const REAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP4_ALL: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const VIP4_NONEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 3);
const REAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);
const REAL4_NONEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 12, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const REAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2);

const CONFIG: &str = r#"
[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
[[vip.real]]
address = "198.18.11.2"
port = 8080

[[vip]]
address = "198.18.100.1"
port = 53
protocol = "udp"
[[vip.real]]
address = "198.18.11.2"
port = 5353

[[vip]]
address = "198.18.100.2"
port = 0
protocol = "tcp"
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "198.18.100.3"
port = 80
protocol = "tcp"
[[vip.real]]
address = "198.18.12.2"
port = 8080

[[vip]]
address = "2001:db8:100::1"
port = 80
protocol = "tcp"
[[vip.real]]
address = "2001:db8:11::2"
port = 8080

[[vip]]
address = "2001:db8:100::1"
port = 53
protocol = "udp"
[[vip.real]]
address = "2001:db8:11::2"
port = 5353
"#;

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += w as u32;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[derive(Clone)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
        no_csum: bool,
    },
    Icmp,
}

/// A packet description that serialises with correct checksums.
#[derive(Clone)]
struct Pkt {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    ip_options: Vec<u8>,
    frag: u16,
    ext_hdr: bool,
    l4: L4,
    payload: Vec<u8>,
}

impl Pkt {
    fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Pkt {
        Pkt {
            src_mac: CLIENT_MAC,
            dst_mac: IN_MAC,
            vlan: None,
            src,
            dst,
            ttl: 64,
            ip_options: vec![],
            frag: 0x4000, // DF
            ext_hdr: false,
            l4: L4::Tcp {
                sport,
                dport,
                flags,
            },
            payload: b"hello".to_vec(),
        }
    }
    fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
        let mut p = Pkt::tcp(src, sport, dst, dport, 0);
        p.l4 = L4::Udp {
            sport,
            dport,
            no_csum: false,
        };
        p
    }
    /// As forwarded: new addresses/ports, TTL - 1, MACs of the next hop.
    fn nat(
        &self,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        smac: [u8; 6],
        dmac: [u8; 6],
    ) -> Pkt {
        let mut p = self.clone();
        p.src = src;
        p.dst = dst;
        p.ttl -= 1;
        p.src_mac = smac;
        p.dst_mac = dmac;
        p.l4 = match p.l4 {
            L4::Tcp { flags, .. } => L4::Tcp {
                sport,
                dport,
                flags,
            },
            L4::Udp { no_csum, .. } => L4::Udp {
                sport,
                dport,
                no_csum,
            },
            L4::Icmp => L4::Icmp,
        };
        p
    }

    fn l4_bytes(&self, pseudo: u32) -> Vec<u8> {
        let mut b = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..8].copy_from_slice(&1000u32.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                t
            }
            L4::Udp { sport, dport, .. } => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                u
            }
            L4::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
        };
        b.extend_from_slice(&self.payload);
        match self.l4 {
            L4::Tcp { .. } => {
                let c = fold(pseudo + sum16(&b));
                b[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp { no_csum, .. } => {
                if !no_csum {
                    let mut c = fold(pseudo + sum16(&b));
                    if c == 0 {
                        c = 0xffff;
                    }
                    b[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Icmp => {
                let c = fold(sum16(&b));
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        b
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp => 1,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        if let Some(tci) = self.vlan {
            out.extend_from_slice(&[0x81, 0x00]);
            out.extend_from_slice(&tci.to_be_bytes());
        }
        let l4_len = self.l4_bytes(0).len();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&[0x08, 0x00]);
                let hl = 20 + self.ip_options.len();
                let total = hl + l4_len;
                let mut ip = vec![0u8; 20];
                ip[0] = 0x40 | (hl / 4) as u8;
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
                ip[8] = self.ttl;
                ip[9] = self.proto();
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_options);
                let c = fold(sum16(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&ip);
                let pseudo =
                    sum16(&s.octets()) + sum16(&d.octets()) + self.proto() as u32 + l4_len as u32;
                out.extend_from_slice(&self.l4_bytes(pseudo));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&[0x86, 0xdd]);
                let ext = if self.ext_hdr { 8 } else { 0 };
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((l4_len + ext) as u16).to_be_bytes());
                ip[6] = if self.ext_hdr { 0 } else { self.proto() };
                ip[7] = self.ttl;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                out.extend_from_slice(&ip);
                if self.ext_hdr {
                    out.extend_from_slice(&[self.proto(), 0, 1, 4, 0, 0, 0, 0]);
                }
                let pseudo =
                    sum16(&s.octets()) + sum16(&d.octets()) + self.proto() as u32 + l4_len as u32;
                out.extend_from_slice(&self.l4_bytes(pseudo));
            }
            _ => panic!("mixed families"),
        }
        out
    }
}

struct Fixture {
    desc: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// None: the packet must come out unchanged.
    output: Option<Vec<u8>>,
}

fn fx(
    desc: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    verdict: u32,
    output: Option<Vec<u8>>,
) -> Fixture {
    Fixture {
        desc,
        ingress,
        input,
        verdict,
        output,
    }
}

fn fixtures() -> Vec<Fixture> {
    let c4 = IpAddr::V4(CLIENT4);
    let v4 = IpAddr::V4(VIP4);
    let r4 = IpAddr::V4(REAL4);
    let c6 = IpAddr::V6(CLIENT6);
    let v6 = IpAddr::V6(VIP6);
    let r6 = IpAddr::V6(REAL6);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let mut f = Vec::new();

    // --- IPv4 TCP
    let syn = Pkt::tcp(c4, 40000, v4, 80, SYN);
    f.push(fx(
        "v4 tcp SYN of a new flow → real, redirected",
        "in0",
        syn.bytes(),
        XDP_REDIRECT,
        Some(syn.nat(c4, 40000, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let ack = Pkt::tcp(c4, 40000, v4, 80, ACK);
    f.push(fx(
        "v4 tcp packet of the existing flow → same real",
        "in0",
        ack.bytes(),
        XDP_REDIRECT,
        Some(ack.nat(c4, 40000, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut reply = Pkt::tcp(r4, 8080, c4, 40000, SYN | ACK);
    reply.src_mac = REAL_MAC;
    reply.dst_mac = OUT_MAC;
    f.push(fx(
        "v4 tcp reply from the real → source rewritten to the VIP",
        "out1",
        reply.bytes(),
        XDP_REDIRECT,
        Some(reply.nat(v4, 80, c4, 40000, IN_MAC, CLIENT_MAC).bytes()),
    ));
    let miss = Pkt::tcp(c4, 40010, v4, 80, ACK);
    f.push(fx(
        "v4 tcp non-SYN conntrack miss → ring",
        "in0",
        miss.bytes(),
        XDP_REDIRECT,
        Some(miss.nat(c4, 40010, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut unknown = Pkt::tcp(r4, 8080, c4, 49999, ACK);
    unknown.src_mac = REAL_MAC;
    unknown.dst_mac = OUT_MAC;
    f.push(fx(
        "v4 tcp from a real, not a balanced flow → pass untouched",
        "out1",
        unknown.bytes(),
        XDP_PASS,
        None,
    ));
    f.push(fx(
        "v4 tcp not for a VIP → pass untouched",
        "in0",
        Pkt::tcp(c4, 40001, r4, 8080, SYN).bytes(),
        XDP_PASS,
        None,
    ));
    f.push(fx(
        "v4 tcp VIP address, other port → pass untouched",
        "in0",
        Pkt::tcp(c4, 40002, v4, 81, SYN).bytes(),
        XDP_PASS,
        None,
    ));
    let all = Pkt::tcp(c4, 40003, IpAddr::V4(VIP4_ALL), 443, SYN);
    f.push(fx(
        "v4 tcp all-ports VIP keeps the port",
        "in0",
        all.bytes(),
        XDP_REDIRECT,
        Some(all.nat(c4, 40003, r4, 443, OUT_MAC, REAL_MAC).bytes()),
    ));
    let noneigh = Pkt::tcp(c4, 40004, IpAddr::V4(VIP4_NONEIGH), 80, SYN);
    let mut nn_out = noneigh.nat(
        c4,
        40004,
        IpAddr::V4(REAL4_NONEIGH),
        8080,
        CLIENT_MAC,
        IN_MAC,
    );
    nn_out.src_mac = CLIENT_MAC;
    nn_out.dst_mac = IN_MAC;
    f.push(fx(
        "v4 FIB miss (no neighbour) → pass the rewritten packet to the kernel",
        "in0",
        noneigh.bytes(),
        XDP_PASS,
        Some(nn_out.bytes()),
    ));
    let mut vlan = Pkt::tcp(c4, 40005, v4, 80, SYN);
    vlan.vlan = Some(100);
    f.push(fx(
        "v4 tcp VLAN-tagged → balanced, tag kept",
        "in0",
        vlan.bytes(),
        XDP_REDIRECT,
        Some(vlan.nat(c4, 40005, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut ttl1 = Pkt::tcp(c4, 40006, v4, 80, SYN);
    ttl1.ttl = 1;
    f.push(fx(
        "v4 TTL 1 to a VIP → pass (kernel sends Time Exceeded)",
        "in0",
        ttl1.bytes(),
        XDP_PASS,
        None,
    ));

    // --- IPv4 UDP
    let u = Pkt::udp(c4, 41000, v4, 53);
    f.push(fx(
        "v4 udp new flow → real",
        "in0",
        u.bytes(),
        XDP_REDIRECT,
        Some(u.nat(c4, 41000, r4, 5353, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut ur = Pkt::udp(r4, 5353, c4, 41000);
    ur.src_mac = REAL_MAC;
    ur.dst_mac = OUT_MAC;
    f.push(fx(
        "v4 udp reply → source is the VIP",
        "out1",
        ur.bytes(),
        XDP_REDIRECT,
        Some(ur.nat(v4, 53, c4, 41000, IN_MAC, CLIENT_MAC).bytes()),
    ));
    let mut u0 = Pkt::udp(c4, 41001, v4, 53);
    u0.l4 = L4::Udp {
        sport: 41001,
        dport: 53,
        no_csum: true,
    };
    f.push(fx(
        "v4 udp without checksum → stays without",
        "in0",
        u0.bytes(),
        XDP_REDIRECT,
        Some(u0.nat(c4, 41001, r4, 5353, OUT_MAC, REAL_MAC).bytes()),
    ));

    // --- IPv6
    let s6 = Pkt::tcp(c6, 42000, v6, 80, SYN);
    f.push(fx(
        "v6 tcp SYN → real",
        "in0",
        s6.bytes(),
        XDP_REDIRECT,
        Some(s6.nat(c6, 42000, r6, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut r6p = Pkt::tcp(r6, 8080, c6, 42000, SYN | ACK);
    r6p.src_mac = REAL_MAC;
    r6p.dst_mac = OUT_MAC;
    f.push(fx(
        "v6 tcp reply → source is the VIP",
        "out1",
        r6p.bytes(),
        XDP_REDIRECT,
        Some(r6p.nat(v6, 80, c6, 42000, IN_MAC, CLIENT_MAC).bytes()),
    ));
    let u6 = Pkt::udp(c6, 42001, v6, 53);
    f.push(fx(
        "v6 udp → real",
        "in0",
        u6.bytes(),
        XDP_REDIRECT,
        Some(u6.nat(c6, 42001, r6, 5353, OUT_MAC, REAL_MAC).bytes()),
    ));
    f.push(fx(
        "v6 not for a VIP → pass untouched",
        "in0",
        Pkt::tcp(c6, 42002, r6, 8080, SYN).bytes(),
        XDP_PASS,
        None,
    ));
    let mut h1 = Pkt::tcp(c6, 42003, v6, 80, SYN);
    h1.ttl = 1;
    f.push(fx(
        "v6 hop limit 1 → pass",
        "in0",
        h1.bytes(),
        XDP_PASS,
        None,
    ));
    let mut ext = Pkt::tcp(c6, 42004, v6, 80, SYN);
    ext.ext_hdr = true;
    f.push(fx(
        "v6 extension header to a VIP → drop",
        "in0",
        ext.bytes(),
        XDP_DROP,
        None,
    ));

    // --- malformed and special
    let good = Pkt::tcp(c4, 43000, v4, 80, SYN).bytes();
    // (Frames shorter than an Ethernet header cannot be test-run: the kernel
    // refuses them, and no driver delivers them.)
    f.push(fx(
        "Ethernet header only, IPv4 type → drop",
        "in0",
        good[..14].to_vec(),
        XDP_DROP,
        None,
    ));
    f.push(fx(
        "truncated IPv4 header → drop",
        "in0",
        good[..14 + 12].to_vec(),
        XDP_DROP,
        None,
    ));
    let g6 = Pkt::tcp(c6, 43001, v6, 80, SYN).bytes();
    f.push(fx(
        "truncated IPv6 header → drop",
        "in0",
        g6[..14 + 30].to_vec(),
        XDP_DROP,
        None,
    ));
    let mut vl = Pkt::tcp(c4, 43002, v4, 80, SYN);
    vl.vlan = Some(7);
    f.push(fx(
        "truncated VLAN tag → drop",
        "in0",
        vl.bytes()[..16].to_vec(),
        XDP_DROP,
        None,
    ));
    // TCP header cut short but IP total length consistent with the bytes present.
    let mut tt = Pkt::tcp(c4, 43003, v4, 80, SYN);
    tt.payload.clear();
    let mut b = tt.bytes();
    b.truncate(14 + 20 + 10);
    b[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ip4_csum(&mut b, 14);
    f.push(fx(
        "truncated TCP header to a VIP → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut tu = Pkt::udp(c4, 43004, v4, 53);
    tu.payload.clear();
    let mut b = tu.bytes();
    b.truncate(14 + 20 + 4);
    b[16..18].copy_from_slice(&24u16.to_be_bytes());
    fix_ip4_csum(&mut b, 14);
    f.push(fx(
        "truncated UDP header to a VIP → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut tn = Pkt::tcp(c4, 43005, r4, 8080, SYN);
    tn.payload.clear();
    let mut b = tn.bytes();
    b.truncate(14 + 20 + 10);
    b[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ip4_csum(&mut b, 14);
    f.push(fx(
        "truncated TCP header not for a VIP → pass",
        "in0",
        b,
        XDP_PASS,
        None,
    ));
    let mut b = good.clone();
    b[14] = 0x44;
    f.push(fx(
        "IPv4 IHL 4 (bad) to a VIP → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut b = good.clone();
    b[16..18].copy_from_slice(&1500u16.to_be_bytes());
    f.push(fx(
        "IPv4 total length beyond the frame → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut opt = Pkt::tcp(c4, 43006, v4, 80, SYN);
    opt.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    f.push(fx(
        "IPv4 options to a VIP → drop (policy)",
        "in0",
        opt.bytes(),
        XDP_DROP,
        None,
    ));
    let mut opt2 = Pkt::tcp(c4, 43007, r4, 8080, SYN);
    opt2.ip_options = vec![1, 1, 1, 0];
    f.push(fx(
        "IPv4 options not for a VIP → pass",
        "in0",
        opt2.bytes(),
        XDP_PASS,
        None,
    ));
    let mut fr = Pkt::tcp(c4, 43008, v4, 80, SYN);
    fr.frag = 0x2000; // MF
    f.push(fx(
        "IPv4 first fragment to a VIP → drop (policy)",
        "in0",
        fr.bytes(),
        XDP_DROP,
        None,
    ));
    let mut fr2 = Pkt::tcp(c4, 43009, v4, 80, SYN);
    fr2.frag = 0x0010; // offset 128 bytes
    f.push(fx(
        "IPv4 later fragment to a VIP → drop (policy)",
        "in0",
        fr2.bytes(),
        XDP_DROP,
        None,
    ));
    let mut fr3 = Pkt::tcp(c4, 43010, r4, 8080, SYN);
    fr3.frag = 0x2000;
    f.push(fx(
        "IPv4 fragment not for a VIP → pass",
        "in0",
        fr3.bytes(),
        XDP_PASS,
        None,
    ));
    let mut icmp = Pkt::tcp(c4, 0, v4, 0, 0);
    icmp.l4 = L4::Icmp;
    f.push(fx(
        "ICMP echo to a VIP → pass to the kernel",
        "in0",
        icmp.bytes(),
        XDP_PASS,
        None,
    ));
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    f.push(fx("ARP → pass untouched", "in0", arp, XDP_PASS, None));
    f
}

fn fix_ip4_csum(b: &mut [u8], l3: usize) {
    b[l3 + 10] = 0;
    b[l3 + 11] = 0;
    let c = fold(sum16(&b[l3..l3 + 20]));
    b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Namespace with `in0` (client side) and `out1` (real side), fixed MACs and
/// permanent neighbours; `198.18.12.0/24` is routed but has no neighbour.
fn environment() -> anyhow::Result<Netns> {
    let ns = Netns::new("lbfx")?;
    for (dev, peer, m) in [("in0", "in0p", IN_MAC), ("out1", "out1p", OUT_MAC)] {
        ns.ip(&[
            "link", "add", "name", dev, "type", "veth", "peer", "name", peer,
        ])?;
        ns.ip(&["link", "set", dev, "address", &mac(m)])?;
        ns.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["link", "set", peer, "up"])?;
    }
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "in0"])?;
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "in0", "nodad"])?;
    ns.ip(&["addr", "add", "198.18.11.1/24", "dev", "out1"])?;
    ns.ip(&["addr", "add", "2001:db8:11::1/64", "dev", "out1", "nodad"])?;
    ns.ip(&["route", "add", "198.18.12.0/24", "dev", "out1"])?;
    for (addr, dev, m) in [
        ("198.18.0.2", "in0", CLIENT_MAC),
        ("2001:db8::2", "in0", CLIENT_MAC),
        ("198.18.11.2", "out1", REAL_MAC),
        ("2001:db8:11::2", "out1", REAL_MAC),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    Ok(ns)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn xdp_fixtures() {
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("the XDP fixtures need root (BPF_PROG_TEST_RUN); CI must run as root");
        }
        eprintln!("skipped: the XDP fixtures need root");
        return;
    }
    let ns = environment().expect("fixture namespace");
    let cfg = Config::parse(CONFIG).expect("fixture config");
    let path = format!("/run/netns/{}", ns.name);
    let failures = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
        testbed::enter(&path)?;
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dp.apply(&cfg.vips)?;
        let in0 = dataplane::ifindex("in0")?;
        let out1 = dataplane::ifindex("out1")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(out1)?;
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut failures = Vec::new();
        let all = fixtures();
        assert!(all.len() >= 25, "at least 25 fixtures");
        for f in &all {
            let ifindex = if f.ingress == "in0" { in0 } else { out1 };
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(f.input.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let mut out = vec![0u8; f.input.len() + 256];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&f.input);
            opts.data_out = Some(&mut out);
            opts.ctx_in = Some(&ctx);
            let r = match prog.test_run(opts) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: test run failed: {e}", f.desc));
                    continue;
                }
            };
            let got = &out[..r.data_size_out as usize];
            let want = f.output.as_deref().unwrap_or(&f.input);
            if r.return_value != f.verdict {
                failures.push(format!(
                    "{}: verdict {} (want {})",
                    f.desc, r.return_value, f.verdict
                ));
            } else if got != want {
                failures.push(format!(
                    "{}: output differs\n   got  {}\n   want {}",
                    f.desc,
                    hex(got),
                    hex(want)
                ));
            }
        }
        let snap = dp.snapshot()?;
        for (name, min) in [
            ("conntrack_hit", 1u64),
            ("conntrack_miss", 5),
            ("reply_nat", 3),
            ("fib_miss", 1),
            ("drop_fragment", 2),
            ("drop_ip_options", 1),
            ("drop_truncated_l4", 2),
            ("drop_bad_ihl", 1),
            ("drop_bad_length", 1),
            ("drop_ipv6_extension", 1),
            ("pass_ttl_expired", 2),
            ("drop_truncated_vlan", 1),
        ] {
            let v = snap.global.get(name).copied().unwrap_or(0);
            if v < min {
                failures.push(format!("counter {name} = {v}, want ≥ {min}"));
            }
        }
        Ok(failures)
    })
    .join()
    .expect("fixture thread")
    .expect("fixture run");
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
