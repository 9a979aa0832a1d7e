//! The frames: sound packets of every class the data plane handles, then
//! mutated at the byte level.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_userspace::testbed::packet::{Pkt, L4};

use super::model::{Model, Port, Tuple, Vip};
use super::wire::{self, Kind, TCP, UDP};
use crate::rng::Rng;

/// One generated frame and how it came about (printed with a failure).
pub struct Case {
    pub frame: Vec<u8>,
    pub ingress: Port,
    pub how: Vec<String>,
}

/// A client → VIP flow the generator keeps sending on.
struct PoolFlow {
    client: IpAddr,
    cport: u16,
    vip: usize,
    dport: u16,
}

pub struct Gen {
    rng: Rng,
    pool: Vec<PoolFlow>,
    /// Clients with a neighbour entry, and the MAC addresses of the two
    /// sides as the frames carry them.
    clients: Vec<IpAddr>,
    client_mac: [u8; 6],
    in_mac: [u8; 6],
    real_macs: Vec<(IpAddr, [u8; 6])>,
    out_mac: [u8; 6],
    /// Addresses that are neither VIPs nor reals.
    others: Vec<IpAddr>,
}

const POOL: usize = 512;

impl Gen {
    pub fn new(
        seed: u64,
        clients: Vec<IpAddr>,
        macs: ([u8; 6], [u8; 6], [u8; 6]),
        real_macs: Vec<(IpAddr, [u8; 6])>,
    ) -> Gen {
        Gen {
            rng: Rng::new(seed),
            pool: Vec::new(),
            clients,
            client_mac: macs.0,
            in_mac: macs.1,
            out_mac: macs.2,
            real_macs,
            others: vec![
                IpAddr::V4(Ipv4Addr::new(198, 18, 11, 99)),
                IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 0x99)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1)),
            ],
        }
    }

    pub fn next(&mut self, model: &Model) -> Case {
        let mut how = Vec::new();
        let r = self.rng.below(100);
        let (mut frame, mut ingress) = if r < 45 {
            self.forward(model, &mut how)
        } else if r < 75 {
            match self.reply(model, &mut how) {
                Some(x) => x,
                None => self.forward(model, &mut how),
            }
        } else if r < 84 {
            self.non_vip(model, &mut how)
        } else if r < 88 {
            self.icmp_error(model, &mut how)
        } else if r < 90 {
            self.echo(model, &mut how)
        } else if r < 94 {
            (self.other(&mut how), Port::In)
        } else {
            (self.random(&mut how), Port::In)
        };
        // Mutations: none for about half the sound frames.
        let n = if self.rng.one_in(2) {
            0
        } else {
            1 + self.rng.below(3)
        };
        for _ in 0..n {
            self.mutate(&mut frame, &mut how);
        }
        if n > 0 && self.rng.one_in(2) {
            fix_checksums(&mut frame, self.rng.one_in(3));
            how.push("checksums recomputed".into());
        }
        if self.rng.one_in(40) {
            ingress = if ingress == Port::In {
                Port::Out
            } else {
                Port::In
            };
            how.push(format!("received on {ingress:?} instead"));
        }
        Case {
            frame,
            ingress,
            how,
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.below(10) {
            0 => 0,
            1 => 1 + self.rng.below(3),
            2..=6 => self.rng.below(64),
            7 | 8 => self.rng.below(600),
            _ => 600 + self.rng.below(801),
        };
        let mut p = vec![0u8; n];
        self.rng.fill(&mut p);
        p
    }

    fn ttl(&mut self) -> u8 {
        match self.rng.below(40) {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 255,
            _ => 64,
        }
    }

    /// A sound TCP/UDP frame with random payload, TTL, tag and checksum
    /// form.
    fn build(&mut self, t: Tuple, macs: ([u8; 6], [u8; 6]), how: &mut Vec<String>) -> Vec<u8> {
        let Tuple {
            src,
            dst,
            sport,
            dport,
            proto,
        } = t;
        let flags = *self
            .rng
            .pick(&[0x02, 0x10, 0x18, 0x11, 0x04, 0x12, 0x14, 0x00, 0xff]);
        let mut p = if proto == TCP {
            Pkt::tcp(src, sport, dst, dport, flags)
        } else {
            Pkt::udp(src, sport, dst, dport)
        };
        p.src_mac = macs.0;
        p.dst_mac = macs.1;
        p.payload = self.payload();
        p.ttl = self.ttl();
        if self.rng.one_in(4) {
            p.frag = 0;
        }
        if self.rng.one_in(10) {
            p.vlan = Some(self.rng.below(4096) as u16);
        }
        let form = self.rng.below(20);
        if form < 8 {
            p.partial_csum = true;
        } else if form == 8 && proto == UDP && src.is_ipv4() {
            p.l4 = L4::Udp {
                sport,
                dport,
                no_csum: true,
            };
        }
        how.push(format!(
            "{} {src}:{sport} → {dst}:{dport}, {} payload bytes, ttl {}{}{}",
            if proto == TCP { "tcp" } else { "udp" },
            p.payload.len(),
            p.ttl,
            p.vlan.map(|v| format!(", vlan {v}")).unwrap_or_default(),
            match form {
                0..=7 => ", partial checksum",
                8 if proto == UDP && src.is_ipv4() => ", no UDP checksum",
                _ => "",
            }
        ));
        let mut b = p.bytes();
        if form == 9 && make_full_look_partial(&mut b) {
            how.push("full checksum that looks partial".into());
        }
        b
    }

    fn client_for(&mut self, v6: bool) -> IpAddr {
        loop {
            let c = *self.rng.pick(&self.clients);
            if c.is_ipv6() == v6 {
                return c;
            }
        }
    }

    /// A packet of a pooled client → VIP flow (a new flow now and then).
    fn forward(&mut self, model: &Model, how: &mut Vec<String>) -> (Vec<u8>, Port) {
        if self.pool.len() < POOL || self.rng.one_in(20) {
            let vip = self.rng.below(model.vips.len());
            let v: &Vip = &model.vips[vip];
            let (v6, port) = (v.addr.is_ipv6(), v.port);
            let client = self.client_for(v6);
            let flow = PoolFlow {
                client,
                cport: 1024 + self.rng.below(64512) as u16,
                vip,
                dport: if port == 0 {
                    1 + self.rng.below(65535) as u16
                } else {
                    port
                },
            };
            if self.pool.len() < POOL {
                self.pool.push(flow);
            } else {
                let i = self.rng.below(POOL);
                self.pool[i] = flow;
            }
        }
        let i = self.rng.below(self.pool.len());
        let f = &self.pool[i];
        let v = &model.vips[f.vip];
        let (client, cport, addr, dport, proto) = (f.client, f.cport, v.addr, f.dport, v.proto);
        how.push("client → VIP".into());
        let macs = (self.client_mac, self.in_mac);
        (
            self.build(
                Tuple {
                    src: client,
                    sport: cport,
                    dst: addr,
                    dport,
                    proto,
                },
                macs,
                how,
            ),
            Port::In,
        )
    }

    /// A real's reply on a balanced flow.
    fn reply(&mut self, model: &Model, how: &mut Vec<String>) -> Option<(Vec<u8>, Port)> {
        let all = model.replies();
        if all.is_empty() {
            return None;
        }
        let t = all[self.rng.below(all.len())];
        let mac = self
            .real_macs
            .iter()
            .find(|(a, _)| *a == t.src)
            .map_or([0x02, 0, 0, 0, 0x01, 0xee], |(_, m)| *m);
        how.push("real → client (reply)".into());
        let macs = (mac, self.out_mac);
        Some((
            self.build(
                Tuple {
                    src: t.src,
                    sport: t.sport,
                    dst: t.dst,
                    dport: t.dport,
                    proto: t.proto,
                },
                macs,
                how,
            ),
            Port::Out,
        ))
    }

    /// TCP/UDP not to a VIP: another address, or a VIP address on a port or
    /// protocol it does not balance, or from a real outside any flow.
    fn non_vip(&mut self, model: &Model, how: &mut Vec<String>) -> (Vec<u8>, Port) {
        let v6 = self.rng.one_in(2);
        let client = self.client_for(v6);
        let proto = if self.rng.one_in(2) { TCP } else { UDP };
        let sport = self.rng.below(65536) as u16;
        let dport = self.rng.below(65536) as u16;
        let pick = self.rng.below(3);
        how.push("not to a VIP".into());
        let macs = (self.client_mac, self.in_mac);
        match pick {
            0 | 1 => {
                // Another address, or a VIP address on a port it does not
                // balance.
                let dsts: Vec<IpAddr> = if pick == 0 {
                    self.others.clone()
                } else {
                    model
                        .vips
                        .iter()
                        .filter(|v| v.port != 0)
                        .map(|v| v.addr)
                        .collect()
                };
                let dsts: Vec<IpAddr> = dsts.into_iter().filter(|a| a.is_ipv6() == v6).collect();
                let dst = *self.rng.pick(&dsts);
                let t = Tuple {
                    src: client,
                    sport,
                    dst,
                    dport,
                    proto,
                };
                (self.build(t, macs, how), Port::In)
            }
            _ => {
                let reals: Vec<_> = self
                    .real_macs
                    .iter()
                    .copied()
                    .filter(|(a, _)| a.is_ipv6() == v6)
                    .collect();
                let (real, mac) = *self.rng.pick(&reals);
                let macs = (mac, self.out_mac);
                (
                    self.build(
                        Tuple {
                            src: real,
                            sport,
                            dst: client,
                            dport,
                            proto,
                        },
                        macs,
                        how,
                    ),
                    Port::Out,
                )
            }
        }
    }

    /// An ICMP error quoting the start of a flow's packet, to the VIP or to
    /// the client.
    fn icmp_error(&mut self, model: &Model, how: &mut Vec<String>) -> (Vec<u8>, Port) {
        let (inner, _) = self.forward(model, how);
        let Kind::Flow(f) = wire::classify(&inner) else {
            return (inner, Port::In);
        };
        let mut quoted = inner[f.l3..(f.l4 + 8).min(inner.len())].to_vec();
        // To the VIP about the client's packet (not one the VIP sent), to
        // the client, or to the VIP about the VIP's answer to it (what a
        // router on the way back reports: relayed to the flow's real).
        let choice = self.rng.below(4);
        let (src, dst) = if choice == 1 {
            (f.dst, f.src)
        } else {
            (self.others[if f.v6 { 2 } else { 0 }], f.dst)
        };
        if choice >= 2 {
            let (a, n) = if f.v6 { (8, 16) } else { (12, 4) };
            let (s, d) = (quoted[a..a + n].to_vec(), quoted[a + n..a + 2 * n].to_vec());
            quoted[a..a + n].copy_from_slice(&d);
            quoted[a + n..a + 2 * n].copy_from_slice(&s);
            let p = f.l4 - f.l3;
            if quoted.len() >= p + 4 {
                quoted.swap(p, p + 2);
                quoted.swap(p + 1, p + 3);
            }
            how.push(format!(
                "ICMP error from {src} to {dst} quoting the VIP's answer to it"
            ));
        } else {
            how.push(format!("ICMP error from {src} to {dst} quoting it"));
        }
        let mut b = inner[..f.l3].to_vec();
        let mut icmp = if f.v6 {
            vec![*self.rng.pick(&[1u8, 2, 3, 4]), 0, 0, 0, 0, 0, 0x05, 0x00]
        } else {
            vec![*self.rng.pick(&[3u8, 11, 12]), 4, 0, 0, 0, 0, 0x05, 0x00]
        };
        icmp.extend_from_slice(&quoted);
        push_ip_icmp(&mut b, src, dst, icmp);
        (b, Port::In)
    }

    /// An ICMP / ICMPv6 echo request from a client to a VIP address.
    fn echo(&mut self, model: &Model, how: &mut Vec<String>) -> (Vec<u8>, Port) {
        let vip = model.vips[self.rng.below(model.vips.len())].addr;
        let client = self.client_for(vip.is_ipv6());
        how.push(format!("echo request from {client} to {vip}"));
        let mut icmp = vec![
            if vip.is_ipv6() { 128 } else { 8 },
            0,
            0,
            0,
            0x12,
            0x34,
            0,
            1,
        ];
        let n = self.rng.below(64);
        icmp.extend((0..n).map(|_| self.rng.below(256) as u8));
        let mut b = self.in_mac.to_vec();
        b.extend_from_slice(&self.client_mac);
        b.extend_from_slice(if vip.is_ipv6() {
            &[0x86, 0xdd]
        } else {
            &[0x08, 0x00]
        });
        push_ip_icmp(&mut b, client, vip, icmp);
        (b, Port::In)
    }

    /// ARP, or a non-IP ethertype.
    fn other(&mut self, how: &mut Vec<String>) -> Vec<u8> {
        let mut b = vec![0xff; 6];
        b.extend_from_slice(&self.client_mac);
        let et = *self.rng.pick(&[0x0806u16, 0x88cc, 0x8847, 0x0000, 0xffff]);
        how.push(format!("ethertype {et:#06x}"));
        b.extend_from_slice(&et.to_be_bytes());
        let n = 28 + self.rng.below(40);
        let mut body = vec![0u8; n];
        self.rng.fill(&mut body);
        b.extend_from_slice(&body);
        b
    }

    /// Random bytes, half of them behind an IP ethertype and version.
    fn random(&mut self, how: &mut Vec<String>) -> Vec<u8> {
        let n = self.rng.below(160);
        let mut b = vec![0u8; n];
        self.rng.fill(&mut b);
        if n >= 15 && self.rng.one_in(2) {
            let v6 = self.rng.one_in(2);
            b[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
            b[14] = if v6 { 0x60 | (b[14] & 0x0f) } else { 0x45 };
        }
        how.push(format!("{n} random bytes"));
        b
    }

    fn mutate(&mut self, b: &mut Vec<u8>, how: &mut Vec<String>) {
        let flow = match wire::classify(b) {
            Kind::Flow(f) => Some(f),
            _ => None,
        };
        let hdr_end = flow
            .as_ref()
            .map_or(b.len().min(74), |f| (f.l4 + 20).min(b.len()));
        match self.rng.below(12) {
            0 | 1 if hdr_end > 0 => {
                let at = self.rng.below(hdr_end);
                let old = b[at];
                b[at] = match self.rng.below(4) {
                    0 => self.rng.byte(),
                    1 => old ^ (1 << self.rng.below(8)),
                    2 => *self.rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff]),
                    _ => old.wrapping_add(if self.rng.one_in(2) { 1 } else { 255 }),
                };
                how.push(format!("byte {at}: {old:#04x} → {:#04x}", b[at]));
            }
            2 if hdr_end > 1 => {
                let at = self.rng.below(hdr_end - 1) & !1;
                let old = u16::from_be_bytes([b[at], b[at + 1]]);
                let len = b.len() as u16;
                let any = self.rng.below(65536) as u16;
                let new = *self.rng.pick(&[
                    0u16,
                    1,
                    0xffff,
                    0x7fff,
                    0x8000,
                    old.wrapping_add(1),
                    old.wrapping_sub(1),
                    len,
                    len.wrapping_sub(14),
                    any,
                ]);
                b[at..at + 2].copy_from_slice(&new.to_be_bytes());
                how.push(format!("word {at}: {old:#06x} → {new:#06x}"));
            }
            3 => {
                let n = self.rng.below(b.len() + 1);
                b.truncate(n);
                how.push(format!("truncated to {n} bytes"));
            }
            4 => {
                let n = 1 + self.rng.below(64);
                for _ in 0..n {
                    let x = self.rng.byte();
                    b.push(x);
                }
                how.push(format!("{n} bytes of link padding"));
            }
            5 if b.len() >= 14 => {
                let n = 1 + self.rng.below(3);
                for _ in 0..n {
                    let tpid = *self.rng.pick(&[[0x81u8, 0x00], [0x88, 0xa8]]);
                    let tag = [tpid[0], tpid[1], self.rng.byte() & 0x0f, self.rng.byte()];
                    b.splice(12..12, tag);
                }
                how.push(format!("{n} more VLAN tags in front"));
            }
            6 => {
                if let Some(f) = flow.filter(|f| f.v6) {
                    let ext = *self.rng.pick(&[0u8, 43, 44, 60, 51, 135]);
                    let next = b[f.l3 + 6];
                    let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
                    if ext == 44 {
                        // Fragment header: offset and M flag random.
                        h[2] = self.rng.byte();
                        h[3] = self.rng.byte();
                    }
                    b.splice(f.l4..f.l4, h);
                    b[f.l3 + 6] = ext;
                    let pl = u16::from_be_bytes([b[f.l3 + 4], b[f.l3 + 5]]).wrapping_add(8);
                    b[f.l3 + 4..f.l3 + 6].copy_from_slice(&pl.to_be_bytes());
                    how.push(format!("IPv6 extension header {ext}"));
                }
            }
            7 => {
                if let Some(f) = flow.filter(|f| !f.v6) {
                    let v = *self.rng.pick(&[0x2000u16, 0x2001, 0x0001, 0x1fff, 0x6000]);
                    b[f.l3 + 6..f.l3 + 8].copy_from_slice(&v.to_be_bytes());
                    wire_fix_ip4(b, f.l3);
                    how.push(format!("IPv4 flags/fragment offset {v:#06x}"));
                }
            }
            8 => {
                if let Some(f) = flow.filter(|f| !f.v6) {
                    let words = 1 + self.rng.below(10);
                    let mut opt = vec![1u8; words * 4];
                    if self.rng.one_in(2) {
                        self.rng.fill(&mut opt);
                    }
                    b.splice(f.l3 + 20..f.l3 + 20, opt);
                    b[f.l3] = 0x40 | (5 + words) as u8;
                    let tl = u16::from_be_bytes([b[f.l3 + 2], b[f.l3 + 3]])
                        .wrapping_add((words * 4) as u16);
                    b[f.l3 + 2..f.l3 + 4].copy_from_slice(&tl.to_be_bytes());
                    wire_fix_ip4(b, f.l3);
                    how.push(format!("{} bytes of IPv4 options", words * 4));
                }
            }
            9 | 10 => {
                if let Some(f) = flow {
                    // A length field off by a little or a lot.
                    let delta = *self.rng.pick(&[-40i32, -9, -8, -1, 1, 2, 8, 100, -1000]);
                    let (at, name) = match self.rng.below(3) {
                        0 => (f.l3 + if f.v6 { 4 } else { 2 }, "IP length"),
                        1 if f.proto == UDP => (f.l4 + 4, "UDP length"),
                        _ if f.proto == TCP => {
                            let d = *self.rng.pick(&[0u8, 1, 4, 6, 15]);
                            b[f.l4 + 12] = (d << 4) | (b[f.l4 + 12] & 0x0f);
                            how.push(format!("TCP data offset {d}"));
                            return;
                        }
                        _ => (f.l4 + 4, "UDP length"),
                    };
                    let old = u16::from_be_bytes([b[at], b[at + 1]]) as i32;
                    let new = (old + delta).clamp(0, 65535) as u16;
                    b[at..at + 2].copy_from_slice(&new.to_be_bytes());
                    if !f.v6 {
                        wire_fix_ip4(b, f.l3);
                    }
                    how.push(format!("{name} {old} → {new}"));
                }
            }
            _ => {
                if let Some(f) = flow {
                    // Trim the frame to the IP length exactly or shorter
                    // than the L4 header.
                    let cut = f.l4 + self.rng.below(21);
                    if cut < b.len() {
                        b.truncate(cut);
                        how.push(format!("cut inside the L4 header at {cut}"));
                    }
                }
            }
        }
    }
}

fn wire_fix_ip4(b: &mut [u8], l3: usize) {
    if b.len() < l3 + 20 {
        return;
    }
    b[l3 + 10] = 0;
    b[l3 + 11] = 0;
    let c = !wire::fold(wire::sum(&b[l3..l3 + 20]));
    b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the IPv4 header checksum and the L4 checksum (full, or
/// partial if asked) of a frame that still reads as a flow.
fn fix_checksums(b: &mut [u8], partial: bool) {
    let Kind::Flow(f) = wire::classify(b) else {
        if b.len() >= 34 && b[12..14] == [0x08, 0x00] {
            wire_fix_ip4(b, 14);
        }
        return;
    };
    if !f.v6 {
        wire_fix_ip4(b, f.l3);
    }
    let at = f.check_at();
    b[at] = 0;
    b[at + 1] = 0;
    let ps = wire::pseudo(b, &f);
    let c = if partial {
        wire::fold(ps)
    } else {
        let mut c = !wire::fold(ps + wire::sum(&b[f.l4..f.end]));
        if f.proto == UDP && c == 0 {
            c = 0xffff;
        }
        c
    };
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the first payload word so that the frame's right full checksum
/// equals the folded pseudo-header sum, as 1 in 65536 frames do by chance.
fn make_full_look_partial(b: &mut [u8]) -> bool {
    let Kind::Flow(f) = wire::classify(b) else {
        return false;
    };
    let hl = if f.proto == TCP { 20 } else { 8 };
    let w = f.l4 + hl;
    if w + 2 > f.end {
        return false;
    }
    let at = f.check_at();
    let p = wire::fold(wire::pseudo(b, &f));
    b[at..at + 2].copy_from_slice(&p.to_be_bytes());
    b[w] = 0;
    b[w + 1] = 0;
    let r = wire::l4_residue(b, &f);
    b[w..w + 2].copy_from_slice(&(!r).to_be_bytes());
    wire::l4_check(b, &f) == wire::L4Check::PartialLooking
        && wire::same(wire::l4_residue(b, &f), 0xffff)
}

/// Appends an IP header from `src` to `dst` and the ICMP (IPv4) or ICMPv6
/// message `icmp`, with both checksums computed.
fn push_ip_icmp(b: &mut Vec<u8>, src: IpAddr, dst: IpAddr, mut icmp: Vec<u8>) {
    if src.is_ipv6() {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
        ip[6] = 58;
        ip[7] = 64;
        wire::put_addr(&mut ip, 8, &src);
        wire::put_addr(&mut ip, 24, &dst);
        let ps = wire::sum(&ip[8..40]) + 58 + icmp.len() as u64;
        let c = !wire::fold(ps + wire::sum(&icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&ip);
    } else {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        wire::put_addr(&mut ip, 12, &src);
        wire::put_addr(&mut ip, 16, &dst);
        let c = !wire::fold(wire::sum(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let c = !wire::fold(wire::sum(&icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&ip);
    }
    b.extend_from_slice(&icmp);
}
