//! ICMP errors about balanced flows, through `BPF_PROG_TEST_RUN` on
//! `lb_xdp` (the fixture namespace and config of `xdp_fixtures`): a router
//! between the clients and the LB reports that a packet the VIP sent was
//! too big or could not be delivered; the error must reach the flow's
//! real as if the real's own packet had drawn it. Expected frames are
//! built from scratch (every checksum computed anew), so the program's
//! incremental updates of the outer header, the quoted header, the quoted
//! TCP/UDP checksum and the ICMP checksum are checked byte for byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_userspace::{l4::dataplane, testbed, testbed::packet::*};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The router on the clients' side that sends the errors.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

/// An ICMP (IPv4 type 3) or ICMPv6 error from `src` to `dst` quoting
/// `quoted` (an IP datagram's first bytes), every checksum computed here.
#[allow(clippy::too_many_arguments, reason = "the header fields, spelled out")]
pub(crate) fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    ty: u8,
    code: u8,
    mtu: u32,
    quoted: &[u8],
    ttl: u8,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut icmp = vec![ty, code, 0, 0];
    if src.is_ipv4() {
        // Unused, then the next-hop MTU (RFC 1191).
        icmp.extend_from_slice(&[0, 0]);
        icmp.extend_from_slice(&(mtu as u16).to_be_bytes());
    } else {
        icmp.extend_from_slice(&mtu.to_be_bytes());
    }
    icmp.extend_from_slice(quoted);
    let mut out = Vec::new();
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&macs.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = fold(sum16(&icmp));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
            ip[8] = ttl;
            ip[9] = 1;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo =
                sum16(&s.octets()) + sum16(&d.octets()) + 58 + icmp.len() as u32 + sum16(&icmp);
            let c = fold(pseudo);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
            ip[6] = 58;
            ip[7] = ttl;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            out.extend_from_slice(&ip);
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(&icmp);
    out
}

/// The first `n` bytes of `p`'s IP datagram.
pub(crate) fn quote(p: &Pkt, n: usize) -> Vec<u8> {
    let b = p.bytes();
    b[14..(14 + n).min(b.len())].to_vec()
}

fn sent(p: Pkt) -> Pkt {
    let mut p = p;
    p.ttl = 61;
    p.payload = b"the first bytes of the segment".to_vec();
    p
}

#[test]
fn xdp_icmp_errors_reach_the_flows_real() {
    if !testbed::privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let ns = fixture_net().expect("fixture namespace");
    let failures = in_fixture_dataplane(&ns, FIXTURE_CONFIG, |dp, in0, _out1| {
        let prog = dp.program(dataplane::PROGRAM)?;
        let (c4, v4, r4) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), IpAddr::V4(REAL4));
        let (c6, v6, r6) = (IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), IpAddr::V6(REAL6));
        let (g4, g6) = (IpAddr::V4(ROUTER4), IpAddr::V6(ROUTER6));
        let from_router = (CLIENT_MAC, IN_MAC);
        let to_real = (OUT_MAC, REAL_MAC);
        let mut f = Vec::new();
        let check = |f: &mut Vec<String>, desc: &str, input: &[u8], verdict: u32, want: Option<&[u8]>| {
            match testbed::packet::test_run(prog, in0, input) {
                Ok((v, got, _)) => {
                    let want = want.unwrap_or(input);
                    if v != verdict || got != want {
                        f.push(format!(
                            "{desc}: verdict {v} (want {verdict})\n   got  {}\n   want {}",
                            hex(&got),
                            hex(want)
                        ));
                    }
                    got
                }
                Err(e) => {
                    f.push(format!("{desc}: {e}"));
                    Vec::new()
                }
            }
        };

        // NAT, the flow in conntrack: its SYN first.
        let syn = Pkt::tcp(c4, 40000, v4, 80, SYN);
        check(
            &mut f,
            "the flow's SYN",
            &syn.bytes(),
            XDP_REDIRECT,
            Some(&syn.nat(c4, 40000, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
        );
        let by_vip = sent(Pkt::tcp(v4, 80, c4, 40000, SYN | ACK));
        let by_real = sent(Pkt::tcp(r4, 8080, c4, 40000, SYN | ACK));
        for (n, what) in [(200, "whole segment"), (28, "8 bytes of TCP")] {
            check(
            &mut f,
                &format!("v4 frag needed about a NAT flow ({what} quoted) → its real"),
                &icmp_error(g4, v4, 3, 4, 1280, &quote(&by_vip, n), 64, from_router),
                XDP_REDIRECT,
                Some(&icmp_error(g4, r4, 3, 4, 1280, &quote(&by_real, n), 63, to_real)),
            );
        }
        // NAT TCP, no conntrack entry (another node balanced the flow): the
        // ring decides.
        let by_vip = sent(Pkt::tcp(v4, 80, c4, 41000, ACK));
        let by_real = sent(Pkt::tcp(r4, 8080, c4, 41000, ACK));
        check(
            &mut f,
            "v4 frag needed about a TCP flow the node never saw → the ring's real",
            &icmp_error(g4, v4, 3, 4, 1280, &quote(&by_vip, 200), 64, from_router),
            XDP_REDIRECT,
            Some(&icmp_error(g4, r4, 3, 4, 1280, &quote(&by_real, 200), 63, to_real)),
        );
        // NAT UDP, no conntrack entry: the ring decides.
        let by_vip = sent(Pkt::udp(v4, 53, c4, 40001));
        let by_real = sent(Pkt::udp(r4, 5353, c4, 40001));
        check(
            &mut f,
            "v4 port unreachable about a UDP flow the node never saw → the ring's real",
            &icmp_error(g4, v4, 3, 3, 0, &quote(&by_vip, 200), 64, from_router),
            XDP_REDIRECT,
            Some(&icmp_error(g4, r4, 3, 3, 0, &quote(&by_real, 200), 63, to_real)),
        );
        let by_vip = sent(Pkt::tcp(v6, 80, c6, 40002, ACK));
        let by_real = sent(Pkt::tcp(r6, 8080, c6, 40002, ACK));
        check(
            &mut f,
            "v6 packet too big about a NAT flow → its real",
            &icmp_error(g6, v6, 2, 0, 1280, &quote(&by_vip, 200), 64, from_router),
            XDP_REDIRECT,
            Some(&icmp_error(g6, r6, 2, 0, 1280, &quote(&by_real, 200), 63, to_real)),
        );
        let by_vip = sent(Pkt::udp(v6, 53, c6, 40003));
        let by_real = sent(Pkt::udp(r6, 5353, c6, 40003));
        check(
            &mut f,
            "v6 port unreachable about a UDP flow → its real",
            &icmp_error(g6, v6, 1, 4, 0, &quote(&by_vip, 200), 64, from_router),
            XDP_REDIRECT,
            Some(&icmp_error(g6, r6, 1, 4, 0, &quote(&by_real, 200), 63, to_real)),
        );

        // FullNAT: the flow's entry holds its SNAT address and port.
        let fv4 = IpAddr::V4(VIP4_FULLNAT);
        let syn = Pkt::tcp(c4, 40004, fv4, 80, SYN);
        let out = testbed::packet::test_run(prog, in0, &syn.bytes())?.1;
        if out.len() > 40 {
            let snat = IpAddr::V4(Ipv4Addr::new(out[26], out[27], out[28], out[29]));
            let sport = u16::from_be_bytes([out[34], out[35]]);
            let by_vip = sent(Pkt::tcp(fv4, 80, c4, 40004, ACK));
            let by_real = sent(Pkt::tcp(r4, 8080, snat, sport, ACK));
            check(
            &mut f,
                "v4 frag needed about a FullNAT flow → its real, from the SNAT address",
                &icmp_error(g4, fv4, 3, 4, 1280, &quote(&by_vip, 200), 64, from_router),
                XDP_REDIRECT,
                Some(&icmp_error(snat, r4, 3, 4, 1280, &quote(&by_real, 200), 63, to_real)),
            );
        }
        let lost = sent(Pkt::tcp(fv4, 80, c4, 40005, ACK));
        check(
            &mut f,
            "v4 error about a FullNAT flow without its entry → drop",
            &icmp_error(g4, fv4, 3, 4, 1280, &quote(&lost, 200), 64, from_router),
            XDP_DROP,
            None,
        );

        // DSR: encapsulated to the real like the flow's packets.
        let dv4 = IpAddr::V4(VIP4_DSR);
        let by_vip = sent(Pkt::tcp(dv4, 80, c4, 40006, ACK));
        let input = icmp_error(g4, dv4, 3, 4, 1400, &quote(&by_vip, 200), 64, from_router);
        let (v, got, _) = testbed::packet::test_run(prog, in0, &input)?;
        if v != XDP_REDIRECT
            || got.len() != input.len() + 20
            || got[14 + 9] != 4
            || got[30..34] != REAL4.octets()
            || got[34..] != input[14..]
        {
            f.push(format!(
                "DSR relay: verdict {v}, not the error inside IPIP to the real\n   got  {}\n   in   {}",
                hex(&got),
                hex(&input)
            ));
        }

        // DSR packets too big once encapsulated: the client hears it from
        // the VIP, with the MTU less the tunnel (20 bytes IPIP, 40 IP6IP6).
        let dv6 = IpAddr::V6(VIP6_DSR);
        for (vip, client, mtu, quoted, what) in [
            (dv4, c4, 1480u32, 28usize, "v4 DF"),
            (dv6, c6, 1460, 48, "v6"),
        ] {
            let mut big = Pkt::tcp(client, 42000, vip, 80, ACK);
            big.payload = vec![0x5a; if client.is_ipv4() { 1460 } else { 1440 }];
            let ty = if client.is_ipv4() { 3 } else { 2 };
            let code = if client.is_ipv4() { 4 } else { 0 };
            let mut want = icmp_error(
                vip,
                client,
                ty,
                code,
                mtu,
                &quote(&big, quoted),
                64,
                (IN_MAC, CLIENT_MAC),
            );
            if client.is_ipv4() {
                want[18..20].copy_from_slice(&[0, 0]);
                fix_ip4_csum(&mut want, 14);
            }
            check(
                &mut f,
                &format!("{what} DSR packet too big once encapsulated → ICMP to the client from the VIP"),
                &big.bytes(),
                XDP_REDIRECT,
                Some(&want),
            );
        }
        let mut big = Pkt::tcp(c4, 42001, dv4, 80, ACK);
        big.payload = vec![0x5a; 1460];
        big.frag = 0;
        let (v, _, _) = testbed::packet::test_run(prog, in0, &big.bytes())?;
        if v != XDP_PASS {
            f.push(format!("v4 DSR packet too big without DF: verdict {v}, want pass (the kernel fragments)"));
        }

        // Not about a packet the VIP sent: dropped.
        let other = sent(Pkt::tcp(IpAddr::V4(VIP4_ALL), 80, c4, 40007, ACK));
        check(
            &mut f,
            "v4 error to a VIP quoting another source → drop",
            &icmp_error(g4, v4, 3, 4, 1280, &quote(&other, 200), 64, from_router),
            XDP_DROP,
            None,
        );
        let no_vip = sent(Pkt::tcp(v4, 9999, c4, 40008, ACK));
        check(
            &mut f,
            "v4 error quoting a port of the VIP address that is no VIP → drop",
            &icmp_error(g4, v4, 3, 4, 1280, &quote(&no_vip, 200), 64, from_router),
            XDP_DROP,
            None,
        );
        let short = sent(Pkt::tcp(v4, 80, c4, 40000, ACK));
        check(
            &mut f,
            "v4 error whose quote stops inside the ports → drop",
            &icmp_error(g4, v4, 3, 4, 1280, &quote(&short, 22), 64, from_router),
            XDP_DROP,
            None,
        );

        let g = dp.snapshot()?.global;
        let n = |k: &str| g.get(k).copied().unwrap_or(0);
        let counts = (
            n("icmp_error_relayed"),
            n("drop_icmp_error_mismatch"),
            n("drop_icmp_error_no_flow"),
            n("icmp_too_big_sent"),
        );
        if counts != (8, 3, 1, 2) {
            f.push(format!(
                "counters (relayed, mismatch, no flow, too big): {counts:?}, want (8, 3, 1, 2)"
            ));
        }

        // `icmp_relay = false`: errors pass to the kernel untouched.
        dp.set_icmp_relay(false)?;
        let prog = dp.program(dataplane::PROGRAM)?;
        let by_vip = sent(Pkt::tcp(v4, 80, c4, 40000, SYN | ACK));
        let input = icmp_error(g4, v4, 3, 4, 1280, &quote(&by_vip, 200), 64, from_router);
        match testbed::packet::test_run(prog, in0, &input) {
            Ok((v, got, _)) if v == XDP_PASS && got == input => {}
            Ok((v, _, _)) => f.push(format!("relay off: verdict {v}, want pass untouched")),
            Err(e) => f.push(format!("relay off: {e}")),
        }
        Ok(f)
    })
    .expect("test runs");
    drop(ns);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
