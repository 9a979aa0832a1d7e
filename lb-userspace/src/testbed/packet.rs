//! Test packets and the fixture network, shared by the XDP fixtures
//! (`tests/xdp_fixtures.rs`) and the per-packet benchmark (`bench xdp`).
//!
//! [`Pkt`] describes an Ethernet frame (optional 802.1Q tag, IPv4 or IPv6,
//! TCP, UDP or ICMP) and serialises it with every checksum computed from
//! scratch. [`fixture_net`] builds a namespace whose FIB answers are fixed:
//! `in0` (client side, MAC [`IN_MAC`]) and `out1` (real side, [`OUT_MAC`]),
//! permanent neighbours for the client and the real, and a route to
//! 198.18.12.0/24 without a neighbour (a FIB miss).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};

use super::Netns;

pub const IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const REAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP4_ALL: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
pub const VIP4_NONEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 3);
pub const REAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);
pub const REAL4_NONEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 12, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const REAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2);

/// DSR VIPs of [`FIXTURE_CONFIG`] (the benchmark's DSR classes).
pub const VIP4_DSR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 4);
pub const VIP6_DSR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 4);
/// A VIP of [`FIXTURE_CONFIG`] whose pings the LB does not answer.
pub const VIP4_NO_ECHO: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 6);
/// FullNAT VIPs of [`FIXTURE_CONFIG`] (the benchmark's FullNAT classes).
pub const VIP4_FULLNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 5);
pub const VIP6_FULLNAT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 5);

pub const FIXTURE_CONFIG: &str = r#"
encap_source = ["198.18.250.0/24", "2001:db8:250::/112"]

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

[[vip]]
address = "198.18.100.4"
port = 80
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "198.18.100.4"
port = 81
protocol = "tcp"
mode = "dsr"
encap = "gue"
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "2001:db8:100::4"
port = 80
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "2001:db8:11::2"

[[vip]]
address = "198.18.100.5"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["198.18.11.1", "198.18.11.3"]
[[vip.real]]
address = "198.18.11.2"
port = 8080

[[vip]]
address = "2001:db8:100::5"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["2001:db8:11::1"]
[[vip.real]]
address = "2001:db8:11::2"
port = 8080

[[vip]]
address = "198.18.100.6"
port = 80
protocol = "tcp"
icmp_echo = false
[[vip.real]]
address = "198.18.11.2"
port = 8080
"#;

pub fn sum16(data: &[u8]) -> u32 {
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

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[derive(Clone)]
pub enum L4 {
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
    /// An echo request (ICMP type 8, ICMPv6 type 128), id 1, sequence 1.
    Icmp,
    /// The echo reply to it (type 0 / 129).
    IcmpReply,
}

/// A packet description that serialises with correct checksums.
#[derive(Clone)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ip_options: Vec<u8>,
    pub frag: u16,
    pub ext_hdr: bool,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// The TCP/UDP checksum field holds only the folded pseudo-header sum,
    /// as a sender with checksum offload leaves it (a partial checksum).
    pub partial_csum: bool,
}

impl Pkt {
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Pkt {
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
            partial_csum: false,
        }
    }
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
        let mut p = Pkt::tcp(src, sport, dst, dport, 0);
        p.l4 = L4::Udp {
            sport,
            dport,
            no_csum: false,
        };
        p
    }
    /// A TCP/UDP packet whose full checksum equals the folded pseudo-header
    /// sum, so that it looks partial: the last two payload bytes are
    /// chosen for it.
    pub fn full_looking_partial(mut self) -> Pkt {
        self.partial_csum = false;
        let n = self.payload.len();
        assert!(
            n >= 2 && n.is_multiple_of(2),
            "an even payload of at least 2 bytes"
        );
        let field = match self.l4 {
            L4::Tcp { .. } => 16,
            L4::Udp { .. } => 6,
            L4::Icmp | L4::IcmpReply => panic!("TCP or UDP"),
        };
        let l4_off = self.bytes().len() - self.l4_bytes(0).len();
        for w in 0..=u16::MAX {
            self.payload[n - 2..].copy_from_slice(&w.to_be_bytes());
            let b = self.bytes();
            let mut partial = self.clone();
            partial.partial_csum = true;
            if b[l4_off + field..l4_off + field + 2]
                == partial.bytes()[l4_off + field..l4_off + field + 2]
            {
                return self;
            }
        }
        panic!("no payload word makes the checksum look partial")
    }

    /// As forwarded: new addresses/ports, TTL - 1, MACs of the next hop.
    pub fn nat(
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
            l4 @ (L4::Icmp | L4::IcmpReply) => l4,
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
            L4::Icmp | L4::IcmpReply => {
                let ty = match (&self.l4, self.src.is_ipv6()) {
                    (L4::Icmp, false) => 8,
                    (L4::Icmp, true) => 128,
                    (_, false) => 0,
                    (_, true) => 129,
                };
                vec![ty, 0, 0, 0, 0, 1, 0, 1]
            }
        };
        b.extend_from_slice(&self.payload);
        if self.partial_csum {
            let c = !fold(pseudo);
            match self.l4 {
                L4::Tcp { .. } => b[16..18].copy_from_slice(&c.to_be_bytes()),
                L4::Udp { .. } => b[6..8].copy_from_slice(&c.to_be_bytes()),
                L4::Icmp | L4::IcmpReply => {}
            }
            return b;
        }
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
            L4::Icmp | L4::IcmpReply => {
                // ICMPv6 covers a pseudo header; ICMP does not.
                let c = if self.src.is_ipv6() {
                    fold(pseudo + sum16(&b))
                } else {
                    fold(sum16(&b))
                };
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        b
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp | L4::IcmpReply if self.src.is_ipv6() => 58,
            L4::Icmp | L4::IcmpReply => 1,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
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

pub fn fix_ip4_csum(b: &mut [u8], l3: usize) {
    b[l3 + 10] = 0;
    b[l3 + 11] = 0;
    let c = fold(sum16(&b[l3..l3 + 20]));
    b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Bytes as lowercase hex, for failure messages.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Namespace with `in0` (client side) and `out1` (real side), fixed MACs and
/// permanent neighbours; `198.18.12.0/24` is routed but has no neighbour.
pub fn fixture_net() -> anyhow::Result<Netns> {
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

/// Runs `body` on a thread inside the fixture namespace `ns`, with the
/// production program loaded, `config`'s VIPs applied and both fixture
/// interfaces as egress ports; `body` gets the data plane and the ifindexes
/// of `in0` (client side) and `out1` (real side).
pub fn in_fixture_dataplane<T: Send + 'static>(
    ns: &Netns,
    config: &str,
    body: impl FnOnce(&mut crate::l4::dataplane::Dataplane, u32, u32) -> anyhow::Result<T>
        + Send
        + 'static,
) -> anyhow::Result<T> {
    use crate::l4::dataplane::{self, Dataplane, LoadOptions};
    let cfg = crate::config::Config::parse(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || -> anyhow::Result<T> {
        super::enter(&path)?;
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dp.apply(&cfg.vips)?;
        let in0 = dataplane::ifindex("in0")?;
        let out1 = dataplane::ifindex("out1")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(out1)?;
        body(&mut dp, in0, out1)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fixture thread panicked"))?
}

/// One `BPF_PROG_TEST_RUN` of `prog` on `input` as if received on `ifindex`
/// (the calling thread must be in the namespace of that interface).
/// Returns (verdict, output frame, kernel-reported duration).
pub fn test_run(
    prog: &Xdp,
    ifindex: u32,
    input: &[u8],
) -> anyhow::Result<(u32, Vec<u8>, std::time::Duration)> {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out, r.duration))
}
