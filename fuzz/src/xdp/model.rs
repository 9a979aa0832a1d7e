//! What the data plane may do with a frame, and the check of what it did.
//!
//! The model knows the fuzzer's configuration (VIPs and their reals), the
//! namespace's neighbours, and every flow the program has balanced so far
//! (learnt from its outputs, as conntrack learns them). For each frame it
//! decides the verdicts allowed and, for a frame sent on, the exact bytes
//! expected apart from the two checksum fields, whose values are checked
//! against the rules of the data-plane policy:
//!
//! - a right checksum stays right, and an IPv4 UDP datagram without a
//!   checksum stays without;
//! - a partial-looking checksum (the folded pseudo-header sum) is right
//!   when the frame leaves bare (TX/REDIRECT) and may stay partial, for the
//!   new addresses, when it is passed to the kernel;
//! - a wrong checksum stays wrong by exactly the same amount: the NAT never
//!   introduces an error and never hides one.

use std::{collections::HashMap, net::IpAddr};

use super::wire::{self, Flow, Kind, L4Check, UDP};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn verdict_name(v: u32) -> String {
    match v {
        XDP_ABORTED => "ABORTED".into(),
        XDP_DROP => "DROP".into(),
        XDP_PASS => "PASS".into(),
        XDP_TX => "TX".into(),
        XDP_REDIRECT => "REDIRECT".into(),
        v => format!("verdict {v}"),
    }
}

/// One of the fuzz namespace's two interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// Client side (`in0`).
    In,
    /// Real side (`out1`).
    Out,
}

#[derive(Clone, Debug)]
pub struct Vip {
    pub addr: IpAddr,
    /// 0: all ports.
    pub port: u16,
    pub proto: u8,
    /// (address, port); port 0 keeps the client's destination port.
    pub reals: Vec<(IpAddr, u16)>,
    /// FullNAT: the SNAT addresses (empty: NAT).
    pub snat: Vec<IpAddr>,
    /// DSR over IPIP (IPv4 VIPs; outer source in [`ENCAP_PREFIX`]).
    pub dsr: bool,
}

/// The fuzzer's `encap_source`, 198.18.250.0/24: the first three bytes.
pub const ENCAP_PREFIX: [u8; 3] = [198, 18, 250];

/// The SNAT port range the fuzzer's FullNAT VIPs use (the default).
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 1024..=32767;

/// A client → VIP flow as conntrack holds it: VIP index, real, and for
/// FullNAT the SNAT address and port it leaves from.
type FlowTo = (usize, IpAddr, u16, Option<(IpAddr, u16)>);
/// A reply tuple's translation: the VIP address and port it leaves from,
/// and for FullNAT the client it goes to.
type ReplyTo = (IpAddr, u16, Option<(IpAddr, u16)>);

/// The namespace as the FIB sees it.
pub struct Net {
    pub mac: HashMap<Port, [u8; 6]>,
    /// Permanent neighbours: their MAC and the interface they are on.
    pub neighbours: HashMap<IpAddr, ([u8; 6], Port)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    fn of(f: &Flow) -> Tuple {
        Tuple {
            src: f.src,
            dst: f.dst,
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
        }
    }
}

/// What a checked frame turned out to be (for the run's tally).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    PassNotIp,
    PassOtherProto,
    PassNonVip,
    PassTtl,
    PassMalformed,
    DropMalformed,
    /// Balanced to a real (forwarded, or passed rewritten on a FIB miss).
    ToReal,
    ToRealPassed,
    /// A reply NATed back to the client.
    ToClient,
    ToClientPassed,
    /// A FullNAT flow's packet to its real (both addresses rewritten), and
    /// a FullNAT reply to its client.
    FullNatToReal,
    /// A DSR flow's packet in IPIP to its real.
    DsrToReal,
    FullNatToClient,
    /// An echo request to a VIP answered by the program.
    IcmpEcho,
    /// An ICMP error about a VIP's flow sent on to its real (or passed
    /// rewritten on a FIB miss).
    IcmpRelayed,
    /// ICMP to a VIP address dropped: an error not about a packet the VIP
    /// sent, or a message too short.
    IcmpDropped,
}

impl Outcome {
    pub const ALL: [Outcome; 16] = [
        Outcome::DsrToReal,
        Outcome::FullNatToReal,
        Outcome::FullNatToClient,
        Outcome::IcmpEcho,
        Outcome::IcmpRelayed,
        Outcome::IcmpDropped,
        Outcome::PassNotIp,
        Outcome::PassOtherProto,
        Outcome::PassNonVip,
        Outcome::PassTtl,
        Outcome::PassMalformed,
        Outcome::DropMalformed,
        Outcome::ToReal,
        Outcome::ToRealPassed,
        Outcome::ToClient,
        Outcome::ToClientPassed,
    ];
}

pub struct Model {
    pub vips: Vec<Vip>,
    pub net: Net,
    /// Client → VIP tuple → its real (and SNAT source).
    flows: HashMap<Tuple, FlowTo>,
    /// Real → client (FullNAT: real → SNAT) tuple → its translation.
    replies: HashMap<Tuple, ReplyTo>,
    /// The reply tuples in the order learnt (for the generator to pick
    /// from reproducibly; one may since have been replaced).
    reply_list: Vec<Tuple>,
}

impl Model {
    pub fn new(vips: Vec<Vip>, net: Net) -> Model {
        Model {
            vips,
            net,
            flows: HashMap::new(),
            replies: HashMap::new(),
            reply_list: Vec::new(),
        }
    }

    /// Forgets every flow (after conntrack was emptied).
    pub fn forget(&mut self) {
        self.flows.clear();
        self.replies.clear();
        self.reply_list.clear();
    }

    /// Reply tuples of balanced flows, in the order learnt (for the
    /// generator).
    pub fn replies(&self) -> &[Tuple] {
        &self.reply_list
    }

    fn is_vip_addr(&self, a: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr == a)
    }

    fn vip_for(&self, dst: IpAddr, dport: u16, proto: u8) -> Option<usize> {
        let find = |port| {
            self.vips
                .iter()
                .position(|v| v.addr == dst && v.port == port && v.proto == proto)
        };
        find(dport).or_else(|| find(0))
    }

    /// Checks one run of the program: `input` received on `ingress` gave
    /// `verdict` and `output`. Learns the flows it balanced.
    pub fn check(
        &mut self,
        input: &[u8],
        ingress: Port,
        verdict: u32,
        output: &[u8],
    ) -> Result<Outcome, String> {
        if !matches!(verdict, XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT) {
            return Err(format!("the program returned {}", verdict_name(verdict)));
        }
        let unchanged = output == input;
        let must_pass = |o: Outcome, what: &str| {
            if verdict == XDP_PASS && unchanged {
                Ok(o)
            } else {
                Err(format!(
                    "{what}: must pass untouched, got {}{}",
                    verdict_name(verdict),
                    if unchanged { "" } else { " with changed bytes" }
                ))
            }
        };
        match wire::classify(input) {
            Kind::NotIp => must_pass(Outcome::PassNotIp, "not IP"),
            Kind::OtherProto { dst } if self.is_vip_addr(dst) => {
                match self.icmp(input, verdict, output)? {
                    Some(o) => Ok(o),
                    None => must_pass(
                        Outcome::PassOtherProto,
                        "neither TCP nor UDP nor ICMP to a VIP",
                    ),
                }
            }
            Kind::OtherProto { .. } => must_pass(Outcome::PassOtherProto, "neither TCP nor UDP"),
            Kind::Malformed { dst, why } => {
                let may_drop = dst.is_none_or(|d| self.is_vip_addr(d));
                match verdict {
                    XDP_DROP if may_drop => Ok(Outcome::DropMalformed),
                    XDP_PASS if unchanged => Ok(Outcome::PassMalformed),
                    _ if may_drop => Err(format!(
                        "malformed ({why}) to a VIP: must be dropped or passed untouched, got {}{}",
                        verdict_name(verdict),
                        if unchanged { "" } else { " with changed bytes" }
                    )),
                    _ => must_pass(
                        Outcome::PassMalformed,
                        &format!("malformed ({why}), not to a VIP"),
                    ),
                }
            }
            Kind::Flow(f) => self.flow(input, ingress, verdict, output, &f),
        }
    }

    /// ICMP / ICMPv6 to a VIP address: `None` when it must pass untouched
    /// (another protocol, or another ICMP type), else the check of what the
    /// program did with an echo request or an error.
    fn icmp(&self, input: &[u8], verdict: u32, output: &[u8]) -> Result<Option<Outcome>, String> {
        let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let l3 = if be16(input, 12) == 0x8100 { 18 } else { 14 };
        let v6 = be16(input, l3 - 2) == 0x86dd;
        let (proto, ip_len) = if v6 {
            (input[l3 + 6], be16(input, l3 + 4) as usize + 40)
        } else {
            (input[l3 + 9], be16(input, l3 + 2) as usize)
        };
        if proto != if v6 { 58 } else { 1 } {
            return Ok(None);
        }
        let l4 = l3 + if v6 { 40 } else { 20 };
        let end = l3 + ip_len;
        let unchanged = output == input;
        let dropped = |what: &str| {
            if verdict == XDP_DROP && unchanged {
                Ok(Some(Outcome::IcmpDropped))
            } else {
                Err(format!(
                    "{what}: must be dropped untouched, got {}{}",
                    verdict_name(verdict),
                    if unchanged { "" } else { " with changed bytes" }
                ))
            }
        };
        if l4 + 8 > end {
            return dropped("ICMP to a VIP shorter than 8 bytes");
        }
        let (ty, code) = (input[l4], input[l4 + 1]);
        let addrs = |b: &[u8], at: usize| {
            (
                wire::addr_of(b, at + if v6 { 8 } else { 12 }, v6),
                wire::addr_of(b, at + if v6 { 24 } else { 16 }, v6),
            )
        };
        // ICMP's residue: its sum (with the pseudo header for ICMPv6).
        let residue = |b: &[u8]| {
            let mut s = wire::sum(&b[l4..end]);
            if v6 {
                s += wire::sum(&b[l3 + 8..l3 + 40]) + 58 + (end - l4) as u64;
            }
            wire::fold(s)
        };
        let ip4_residue = |b: &[u8], at: usize| wire::fold(wire::sum(&b[at..at + 20]));
        // The output is `want` but for the checksum fields in `skip`, and
        // the checksums' residues (outer IPv4 header, ICMP) are unchanged.
        let same_but = |want: &[u8], skip: &[usize], what: &str| -> Result<(), String> {
            if let Some(i) = (0..want.len()).find(|i| !skip.contains(i) && want[*i] != output[*i]) {
                return Err(format!(
                    "{what}: byte {i} is {:#04x}, want {:#04x}",
                    output[i], want[i]
                ));
            }
            if !v6 && !wire::same(ip4_residue(input, l3), ip4_residue(output, l3)) {
                return Err(format!("{what}: IPv4 header checksum residue changed"));
            }
            if !wire::same(residue(input), residue(output)) {
                return Err(format!("{what}: ICMP checksum residue changed"));
            }
            Ok(())
        };
        if code == 0 && ty == if v6 { 128 } else { 8 } {
            // Answered in place, out of the interface it came in on.
            if verdict != XDP_REDIRECT || output.len() != input.len() {
                return Err(format!(
                    "echo request to a VIP: want REDIRECT back, got {} ({} bytes)",
                    verdict_name(verdict),
                    output.len()
                ));
            }
            let mut want = input.to_vec();
            want[0..6].copy_from_slice(&input[6..12]);
            want[6..12].copy_from_slice(&input[0..6]);
            let (src, dst) = addrs(input, l3);
            let (a, n) = if v6 { (l3 + 8, 16) } else { (l3 + 12, 4) };
            want[a..a + n].copy_from_slice(&input[a + n..a + 2 * n]);
            want[a + n..a + 2 * n].copy_from_slice(&input[a..a + n]);
            want[l3 + if v6 { 7 } else { 8 }] = 64;
            want[l4] = if v6 { 129 } else { 0 };
            let skip: &[usize] = if v6 {
                &[l4 + 2, l4 + 3]
            } else {
                &[l4 + 2, l4 + 3, l3 + 10, l3 + 11]
            };
            same_but(&want, skip, &format!("echo reply {src} → {dst}"))?;
            return Ok(Some(Outcome::IcmpEcho));
        }
        let error = if v6 { ty == 1 || ty == 2 } else { ty == 3 };
        if !error {
            return Ok(None);
        }
        // An error about a packet the VIP sent: its quoted source is the
        // error's destination, TCP/UDP to a VIP port, ports quoted.
        let inner = l4 + 8;
        let inner_l4 = inner + if v6 { 40 } else { 20 };
        let (_, outer_dst) = addrs(input, l3);
        let sound = inner_l4 + 4 <= end
            && if v6 {
                input[inner] >> 4 == 6
            } else {
                input[inner] == 0x45
            };
        if !sound {
            return dropped("ICMP error quoting no TCP/UDP ports");
        }
        let qproto = input[inner + if v6 { 6 } else { 9 }];
        let (qsrc, qdst) = addrs(input, inner);
        let (qsport, qdport) = (be16(input, inner_l4), be16(input, inner_l4 + 2));
        let vi = (qproto == wire::TCP || qproto == UDP)
            .then(|| self.vip_for(qsrc, qsport, qproto))
            .flatten();
        let Some(vi) = vi.filter(|_| qsrc == outer_dst) else {
            return dropped("ICMP error not about a packet of a VIP");
        };
        // The flow's client → VIP tuple, from the quote reversed.
        let key = Tuple {
            src: qdst,
            dst: qsrc,
            sport: qdport,
            dport: qsport,
            proto: qproto,
        };
        let known = self.flows.get(&key).copied();
        if !self.vips[vi].snat.is_empty() && known.is_none() {
            return dropped("ICMP error about a FullNAT flow without its entry");
        }
        if self.vips[vi].dsr {
            // In IPIP to the flow's real, the error as it came.
            return self
                .check_ipip(input, verdict, output, l3, end, vi, known.map(|t| t.1))
                .map(|_| Some(Outcome::IcmpRelayed));
        }
        if input[l3 + if v6 { 7 } else { 8 }] <= 1 {
            return if verdict == XDP_PASS && unchanged {
                Ok(Some(Outcome::IcmpRelayed))
            } else {
                Err(format!(
                    "ICMP error with TTL ≤ 1: must pass untouched, got {}",
                    verdict_name(verdict)
                ))
            };
        }
        if verdict == XDP_DROP || output.len() != input.len() {
            return Err(format!(
                "ICMP error about a flow of {}: want it sent on to a real, got {} ({} bytes)",
                self.vips[vi].addr,
                verdict_name(verdict),
                output.len()
            ));
        }
        // The real: the flow's, else any of the VIP's (the ring's).
        let got = (addrs(output, l3).1, be16(output, inner_l4));
        let snat = known.and_then(|k| k.3);
        let want_real = if let Some((_, a, p, _)) = known {
            (a, p)
        } else {
            let vip = &self.vips[vi];
            let ours = vip
                .reals
                .iter()
                .any(|(a, p)| *a == got.0 && (if *p == 0 { qsport } else { *p }) == got.1);
            if !ours {
                return Err(format!(
                    "ICMP error about a flow of {}:{} sent to {}:{}, not one of its reals {:?}",
                    vip.addr, vip.port, got.0, got.1, vip.reals
                ));
            }
            got
        };
        if got != want_real {
            return Err(format!(
                "ICMP error sent to {}:{}, the flow's real is {}:{}",
                got.0, got.1, want_real.0, want_real.1
            ));
        }
        let mut want = input.to_vec();
        wire::put_addr(&mut want, l3 + if v6 { 24 } else { 16 }, &want_real.0);
        want[l3 + if v6 { 7 } else { 8 }] -= 1;
        wire::put_addr(&mut want, inner + if v6 { 8 } else { 12 }, &want_real.0);
        want[inner_l4..inner_l4 + 2].copy_from_slice(&want_real.1.to_be_bytes());
        if let Some((sa, sp)) = snat {
            // FullNAT: from the SNAT address, about real → SNAT:port.
            wire::put_addr(&mut want, l3 + if v6 { 8 } else { 12 }, &sa);
            wire::put_addr(&mut want, inner + if v6 { 24 } else { 16 }, &sa);
            want[inner_l4 + 2..inner_l4 + 4].copy_from_slice(&sp.to_be_bytes());
        }
        match self.net.neighbours.get(&want_real.0) {
            Some(&(mac, egress)) => {
                if verdict != XDP_REDIRECT {
                    return Err(format!(
                        "ICMP error to {} (a neighbour on {egress:?}): want REDIRECT, got {}",
                        want_real.0,
                        verdict_name(verdict)
                    ));
                }
                want[0..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&self.net.mac[&egress]);
            }
            None if verdict != XDP_PASS => {
                return Err(format!(
                    "ICMP error to {} (no neighbour): want PASS, got {}",
                    want_real.0,
                    verdict_name(verdict)
                ))
            }
            None => {}
        }
        let l4_check = inner_l4 + if qproto == wire::TCP { 16 } else { 6 };
        let mut skip = vec![l4 + 2, l4 + 3, l4_check, l4_check + 1];
        if !v6 {
            skip.extend([l3 + 10, l3 + 11, inner + 10, inner + 11]);
        }
        same_but(&want, &skip, "relayed ICMP error")?;
        Ok(Some(Outcome::IcmpRelayed))
    }

    /// A frame sent in IPIP to a real of VIP `vi` (`real`, when the flow
    /// fixes it): the outer IPv4 header as the data plane builds it, then
    /// the datagram `input[l3..]` as it came (the caller checks any field it
    /// may change, listed in `skip`, relative to `l3`). Returns the real.
    #[allow(clippy::too_many_arguments, reason = "the frame and where to look")]
    fn check_ipip(
        &self,
        input: &[u8],
        verdict: u32,
        output: &[u8],
        l3: usize,
        end: usize,
        vi: usize,
        real: Option<IpAddr>,
    ) -> Result<IpAddr, String> {
        self.check_ipip_skip(input, verdict, output, l3, end, vi, real, &[])
    }

    #[allow(clippy::too_many_arguments, reason = "the frame and where to look")]
    fn check_ipip_skip(
        &self,
        input: &[u8],
        verdict: u32,
        output: &[u8],
        l3: usize,
        end: usize,
        vi: usize,
        real: Option<IpAddr>,
        skip: &[usize],
    ) -> Result<IpAddr, String> {
        if verdict != XDP_REDIRECT || output.len() != input.len() + 20 {
            return Err(format!(
                "DSR: want REDIRECT with 20 bytes of IPIP, got {} ({} bytes for {})",
                verdict_name(verdict),
                output.len(),
                input.len()
            ));
        }
        let o = &output[l3..l3 + 20];
        let got = IpAddr::V4(std::net::Ipv4Addr::new(o[16], o[17], o[18], o[19]));
        let vip = &self.vips[vi];
        if !vip.reals.iter().any(|(a, _)| *a == got) || real.is_some_and(|r| r != got) {
            return Err(format!(
                "DSR: tunnel to {got}, want {} (reals {:?})",
                real.map_or("one of the VIP's reals".into(), |r| r.to_string()),
                vip.reals
            ));
        }
        let inner_len = end - l3;
        let df = input[l3 + 6] & 0x40;
        let head_ok = o[0] == 0x45
            && o[1] == input[l3 + 1]
            && u16::from_be_bytes([o[2], o[3]]) as usize == inner_len + 20
            && o[4..6] == [0, 0]
            && o[6] == df
            && o[7] == 0
            && o[8] == 64
            && o[9] == 4
            && wire::same(wire::fold(wire::sum(o)), 0xffff)
            && o[12..15] == ENCAP_PREFIX;
        if !head_ok {
            return Err(format!("DSR: outer header {}", wire::hex(o)));
        }
        let Some(&(mac, egress)) = self.net.neighbours.get(&got) else {
            return Err(format!("DSR: real {got} has no neighbour"));
        };
        let mut want = output[..l3].to_vec();
        want[0..6].copy_from_slice(&mac);
        want[6..12].copy_from_slice(&self.net.mac[&egress]);
        if l3 == 18 {
            want[12..16].copy_from_slice(&input[12..16]);
        }
        want[l3 - 2..l3].copy_from_slice(&[0x08, 0x00]);
        if output[..l3] != want[..] {
            return Err(format!(
                "DSR: link header {}, want {}",
                wire::hex(&output[..l3]),
                wire::hex(&want)
            ));
        }
        if let Some(i) = (0..input.len() - l3)
            .find(|i| !skip.contains(i) && output[l3 + 20 + i] != input[l3 + i])
        {
            return Err(format!(
                "DSR: inner byte {i} is {:#04x}, was {:#04x}",
                output[l3 + 20 + i],
                input[l3 + i]
            ));
        }
        Ok(got)
    }

    /// A packet of a DSR flow: in IPIP to its real; the inner datagram
    /// unchanged but for a partial checksum, completed.
    fn dsr(
        &mut self,
        input: &[u8],
        verdict: u32,
        output: &[u8],
        f: &Flow,
        vi: usize,
        real: Option<IpAddr>,
    ) -> Result<Outcome, String> {
        let check = f.check_at() - f.l3;
        let got = self.check_ipip_skip(
            input,
            verdict,
            output,
            f.l3,
            f.end,
            vi,
            real,
            &[check, check + 1],
        )?;
        let inner = Flow {
            l3: f.l3 + 20,
            l4: f.l4 + 20,
            end: f.end + 20,
            ..*f
        };
        let field = u16::from_be_bytes([output[inner.check_at()], output[inner.check_at() + 1]]);
        let right = wire::same(wire::l4_residue(output, &inner), 0xffff);
        match wire::l4_check(input, f) {
            L4Check::Absent if field != 0 => {
                return Err(format!("DSR: UDP without checksum got {field:#06x}"))
            }
            L4Check::Right | L4Check::PartialLooking if !right => {
                return Err(format!(
                    "DSR: inner checksum {field:#06x} not right (residue {:#06x})",
                    wire::l4_residue(output, &inner)
                ))
            }
            L4Check::Wrong(r) if !wire::same(r, wire::l4_residue(output, &inner)) => {
                return Err("DSR: a wrong inner checksum was not carried through".into())
            }
            _ => {}
        }
        let key = Tuple::of(f);
        self.replies.remove(&key);
        self.flows.insert(key, (vi, got, f.dport, None));
        Ok(Outcome::DsrToReal)
    }

    fn flow(
        &mut self,
        input: &[u8],
        ingress: Port,
        verdict: u32,
        output: &[u8],
        f: &Flow,
    ) -> Result<Outcome, String> {
        // Which way, and to what: (reply?, new address, new port, VIP index
        // of a forward flow, the real fixed by conntrack).
        enum Dir {
            Reply(ReplyTo),
            Forward(usize, Option<FlowTo>),
        }
        let key = Tuple::of(f);
        let unchanged = output == input;
        let dir = if let Some(&r) = self.replies.get(&key) {
            Dir::Reply(r)
        } else if let Some(&t) = self.flows.get(&key) {
            Dir::Forward(t.0, Some(t))
        } else if let Some(vi) = self.vip_for(f.dst, f.dport, f.proto) {
            Dir::Forward(vi, None)
        } else {
            return if verdict == XDP_PASS && unchanged {
                Ok(Outcome::PassNonVip)
            } else {
                Err(format!(
                    "not to a VIP nor a reply of a balanced flow: must pass untouched, got {}",
                    verdict_name(verdict)
                ))
            };
        };
        // An established packet first looks up its flow's other entry and
        // re-writes it if gone (whatever happens to the packet next).
        match dir {
            Dir::Reply((vaddr, vport, client)) => {
                let (caddr, cport) = client.unwrap_or((f.dst, f.dport));
                let fwd = Tuple {
                    src: caddr,
                    dst: vaddr,
                    sport: cport,
                    dport: vport,
                    proto: f.proto,
                };
                if !self.flows.contains_key(&fwd) && !self.replies.contains_key(&fwd) {
                    if let Some(vi) = self.vip_for(vaddr, vport, f.proto) {
                        let snat = client.map(|_| (f.dst, f.dport));
                        self.flows.insert(fwd, (vi, f.src, f.sport, snat));
                    }
                }
            }
            Dir::Forward(vi, Some((_, raddr, rport, snat))) if !self.vips[vi].dsr => {
                let (daddr, dport) = snat.unwrap_or((f.src, f.sport));
                let rev = Tuple {
                    src: raddr,
                    dst: daddr,
                    sport: rport,
                    dport,
                    proto: f.proto,
                };
                if !self.flows.contains_key(&rev) && !self.replies.contains_key(&rev) {
                    let client = snat.map(|_| (f.src, f.sport));
                    self.replies.insert(rev, (f.dst, f.dport, client));
                    self.reply_list.push(rev);
                }
            }
            Dir::Forward(..) => {}
        }
        if f.ttl <= 1 {
            return if verdict == XDP_PASS && unchanged {
                Ok(Outcome::PassTtl)
            } else {
                Err(format!(
                    "TTL {}: must pass untouched (the kernel answers time exceeded), got {}",
                    f.ttl,
                    verdict_name(verdict)
                ))
            };
        }
        if verdict == XDP_DROP {
            return Err("a sound packet of a VIP flow was dropped".into());
        }
        if let Dir::Forward(vi, fixed) = dir {
            if self.vips[vi].dsr {
                return self.dsr(input, verdict, output, f, vi, fixed.map(|t| t.1));
            }
        }
        if output.len() != input.len() {
            return Err(format!(
                "sent on with {} bytes, received {}",
                output.len(),
                input.len()
            ));
        }
        // What the frame leaves as: a new source and/or destination
        // (address, port), the next hop, and whether it is a reply.
        let (reply, new_src, new_dst, hop) = match dir {
            Dir::Reply((vaddr, vport, client)) => (
                true,
                Some((vaddr, vport)),
                client,
                client.map_or(f.dst, |c| c.0),
            ),
            Dir::Forward(vi, fixed) => {
                let got_dst = (
                    wire::addr_of(output, f.dst_at(), f.v6),
                    u16::from_be_bytes([output[f.l4 + 2], output[f.l4 + 3]]),
                );
                let got_src = (
                    wire::addr_of(output, f.src_at(), f.v6),
                    u16::from_be_bytes([output[f.l4], output[f.l4 + 1]]),
                );
                let vip = &self.vips[vi];
                let fullnat = !vip.snat.is_empty();
                let (want_dst, want_src) = if let Some((_, a, p, snat)) = fixed {
                    ((a, p), snat)
                } else {
                    let real = vip.reals.iter().find(|(a, p)| {
                        *a == got_dst.0 && (if *p == 0 { f.dport } else { *p }) == got_dst.1
                    });
                    if real.is_none() {
                        return Err(format!(
                            "new flow to {}:{} sent to {}:{}, not one of its reals {:?}",
                            vip.addr, vip.port, got_dst.0, got_dst.1, vip.reals
                        ));
                    }
                    if fullnat {
                        if !vip.snat.contains(&got_src.0) || !SNAT_PORTS.contains(&got_src.1) {
                            return Err(format!(
                                "new FullNAT flow leaves from {}:{}, not an SNAT address {:?} and port in {SNAT_PORTS:?}",
                                got_src.0, got_src.1, vip.snat
                            ));
                        }
                        // No two live flows share a tuple at the real.
                        let at_real = Tuple {
                            src: got_dst.0,
                            dst: got_src.0,
                            sport: got_dst.1,
                            dport: got_src.1,
                            proto: f.proto,
                        };
                        if let Some(&(_, _, Some(other))) = self.replies.get(&at_real) {
                            if other != (f.src, f.sport) {
                                return Err(format!(
                                    "new FullNAT flow took {}:{} towards {}:{}, which the flow of {}:{} holds",
                                    got_src.0, got_src.1, got_dst.0, got_dst.1, other.0, other.1
                                ));
                            }
                        }
                        (got_dst, Some(got_src))
                    } else {
                        (got_dst, None)
                    }
                };
                if got_dst != want_dst {
                    return Err(format!(
                        "established flow sent to {}:{}, its real is {}:{}",
                        got_dst.0, got_dst.1, want_dst.0, want_dst.1
                    ));
                }
                if let Some(ws) = want_src {
                    if got_src != ws {
                        return Err(format!(
                            "established FullNAT flow leaves from {}:{}, its SNAT source is {}:{}",
                            got_src.0, got_src.1, ws.0, ws.1
                        ));
                    }
                }
                (false, want_src, Some(want_dst), want_dst.0)
            }
        };

        // The expected frame, checksum fields aside.
        let mut want = input.to_vec();
        if let Some((a, p)) = new_src {
            wire::put_addr(&mut want, f.src_at(), &a);
            want[f.l4..f.l4 + 2].copy_from_slice(&p.to_be_bytes());
        }
        if let Some((a, p)) = new_dst {
            wire::put_addr(&mut want, f.dst_at(), &a);
            want[f.l4 + 2..f.l4 + 4].copy_from_slice(&p.to_be_bytes());
        }
        want[f.ttl_at()] = f.ttl - 1;
        let (sent, passed_outcome, sent_outcome) = match (reply, new_src, new_dst) {
            (true, _, Some(_)) => (
                verdict != XDP_PASS,
                Outcome::ToClientPassed,
                Outcome::FullNatToClient,
            ),
            (true, _, None) => (
                verdict != XDP_PASS,
                Outcome::ToClientPassed,
                Outcome::ToClient,
            ),
            (false, Some(_), _) => (
                verdict != XDP_PASS,
                Outcome::ToRealPassed,
                Outcome::FullNatToReal,
            ),
            (false, None, _) => (verdict != XDP_PASS, Outcome::ToRealPassed, Outcome::ToReal),
        };
        // The kernel's FIB does not forward IPv6 with a link-local,
        // multicast or loopback address on either side (`rt6_need_strict`):
        // such a packet is passed, for the kernel to deal with.
        let strict = |a: IpAddr| match a {
            IpAddr::V6(a) => {
                a.is_multicast() || a.is_loopback() || (a.segments()[0] & 0xffc0) == 0xfe80
            }
            IpAddr::V4(_) => false,
        };
        let src_after = new_src.map_or(f.src, |x| x.0);
        let dst_after = new_dst.map_or(f.dst, |x| x.0);
        let neighbour = if strict(src_after) || strict(dst_after) {
            None
        } else {
            self.net.neighbours.get(&hop)
        };
        match neighbour {
            Some(&(mac, egress)) => {
                // Out of the ingress interface too by a redirect (not TX).
                let v = XDP_REDIRECT;
                if verdict != v {
                    return Err(format!(
                        "next hop {hop} has a neighbour on {egress:?} (received on {ingress:?}): want {}, got {}",
                        verdict_name(v),
                        verdict_name(verdict)
                    ));
                }
                want[0..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&self.net.mac[&egress]);
            }
            None if verdict != XDP_PASS => {
                return Err(format!(
                    "next hop {hop} has no neighbour: want PASS (rewritten, for the kernel to resolve), got {}",
                    verdict_name(verdict)
                ))
            }
            None => {}
        }
        let check_at = f.check_at();
        let mut skip = vec![check_at, check_at + 1];
        if !f.v6 {
            skip.extend([f.l3 + 10, f.l3 + 11]);
        }
        if let Some(i) = (0..want.len()).find(|i| !skip.contains(i) && want[*i] != output[*i]) {
            return Err(format!(
                "byte {i} of the frame sent on is {:#04x}, want {:#04x}",
                output[i], want[i]
            ));
        }
        // Checksums.
        if !f.v6 {
            let (a, b) = (wire::ip4_residue(input, f), wire::ip4_residue(output, f));
            if !wire::same(a, b) {
                return Err(format!(
                    "IPv4 header checksum residue {a:#06x} became {b:#06x}"
                ));
            }
        }
        let field = u16::from_be_bytes([output[check_at], output[check_at + 1]]);
        let out_residue = wire::l4_residue(output, f);
        let out_right = wire::same(out_residue, 0xffff) && !(f.proto == UDP && field == 0);
        let out_partial = field == wire::fold(wire::pseudo(output, f));
        match wire::l4_check(input, f) {
            L4Check::Absent => {
                if field != 0 {
                    return Err(format!("UDP without checksum got checksum {field:#06x}"));
                }
            }
            L4Check::Right => {
                if !out_right {
                    return Err(format!(
                        "right L4 checksum became wrong ({field:#06x}, residue {out_residue:#06x})"
                    ));
                }
            }
            L4Check::PartialLooking => {
                if !(out_right || (!sent && out_partial)) {
                    return Err(format!(
                        "partial checksum {}: {field:#06x} is neither right nor the new pseudo-header sum",
                        if sent { "on a frame sent on bare" } else { "on a passed frame" },
                    ));
                }
                if sent && !out_right {
                    return Err("partial checksum not completed on a frame sent on bare".into());
                }
            }
            L4Check::Wrong(r) => {
                if !wire::same(r, out_residue) {
                    return Err(format!(
                        "wrong L4 checksum (residue {r:#06x}) left with residue {out_residue:#06x}: the error must be carried through"
                    ));
                }
            }
        }
        // Learn the flow as conntrack did.
        // One table holds both directions: an insert replaces an entry of
        // the other kind with the same tuple.
        if let (Dir::Forward(vi, _), Some((addr, port))) = (dir, new_dst) {
            self.replies.remove(&key);
            self.flows.insert(key, (vi, addr, port, new_src));
            let (daddr, dport) = new_src.unwrap_or((f.src, f.sport));
            let reply = Tuple {
                src: addr,
                dst: daddr,
                sport: port,
                dport,
                proto: f.proto,
            };
            self.flows.remove(&reply);
            let client = new_src.map(|_| (f.src, f.sport));
            if self
                .replies
                .insert(reply, (f.dst, f.dport, client))
                .is_none()
            {
                self.reply_list.push(reply);
            }
        }
        Ok(if sent { sent_outcome } else { passed_outcome })
    }
}
