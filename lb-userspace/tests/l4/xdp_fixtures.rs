//! Katran-style fixtures: (description, input packet, expected verdict,
//! expected output bytes), each run through BPF_PROG_TEST_RUN on `lb_xdp`.
//!
//! The test runs in its own network namespace with fixed MAC addresses and
//! permanent neighbour entries, so `bpf_fib_lookup` gives the same answer
//! every time. Expected packets are built from scratch with full checksums,
//! which checks the program's incremental checksum updates byte for byte.

use std::net::IpAddr;

use lb_userspace::{
    config::Config,
    l4::dataplane::{self, Dataplane, LoadOptions},
    testbed,
    testbed::packet::*,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

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
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let c4 = IpAddr::V4(CLIENT4);
    let v4 = IpAddr::V4(VIP4);
    let r4 = IpAddr::V4(REAL4);
    let c6 = IpAddr::V6(CLIENT6);
    let v6 = IpAddr::V6(VIP6);
    let r6 = IpAddr::V6(REAL6);
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
    // TCP/UDP headers must agree with the IP length (drop_bad_l4_length).
    let mut b = tt.bytes();
    b[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ip4_csum(&mut b, 14);
    f.push(fx(
        "TCP header beyond the IPv4 total length (the frame holds it as padding) → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut b = Pkt::tcp(c4, 43007, v4, 80, SYN).bytes();
    b[14 + 20 + 12] = 4 << 4;
    f.push(fx(
        "TCP data offset 4 words → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut b = Pkt::tcp(c4, 43008, v4, 80, SYN).bytes();
    b[14 + 20 + 12] = 15 << 4;
    f.push(fx(
        "TCP data offset past the segment → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut b = Pkt::udp(c4, 43009, v4, 53).bytes();
    b[14 + 20 + 5] -= 1;
    f.push(fx(
        "UDP length short of the IP payload → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let mut b = Pkt::udp(c6, 43010, v6, 53).bytes();
    b[14 + 40 + 5] += 1;
    f.push(fx(
        "v6 UDP length beyond the IP payload → drop",
        "in0",
        b,
        XDP_DROP,
        None,
    ));
    let pad = Pkt::udp(c4, 43011, v4, 53);
    let mut b = pad.bytes();
    let mut want = pad.nat(c4, 43011, r4, 5353, OUT_MAC, REAL_MAC).bytes();
    b.extend_from_slice(&[0; 6]);
    want.extend_from_slice(&[0; 6]);
    f.push(fx(
        "UDP with link padding after the IP length → balanced, padding kept",
        "in0",
        b,
        XDP_REDIRECT,
        Some(want),
    ));
    // Sources no packet may carry (drop_bad_source).
    f.push(fx(
        "IPv4 multicast source to a VIP → drop",
        "in0",
        Pkt::tcp(IpAddr::V4("224.0.0.5".parse().unwrap()), 43012, v4, 80, SYN).bytes(),
        XDP_DROP,
        None,
    ));
    f.push(fx(
        "IPv6 link-local source to a VIP → drop",
        "in0",
        Pkt::tcp(IpAddr::V6("fe80::2".parse().unwrap()), 43013, v6, 80, SYN).bytes(),
        XDP_DROP,
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
    // --- ICMP to a VIP address: echo answered in place, back out of the
    // interface it came in on; anything else passes.
    for (client, vip, what) in [(c4, v4, "v4"), (c6, v6, "v6")] {
        let mut echo = Pkt::tcp(client, 0, vip, 0, 0);
        echo.l4 = L4::Icmp;
        echo.ttl = 50;
        echo.payload = b"0123456789abcdefghijklmnopqrstuvwxyz!".to_vec();
        let mut reply = echo.clone();
        reply.l4 = L4::IcmpReply;
        reply.src = vip;
        reply.dst = client;
        reply.ttl = 64;
        reply.src_mac = echo.dst_mac;
        reply.dst_mac = echo.src_mac;
        f.push(fx(
            if what == "v4" {
                "v4 ICMP echo request to a VIP → echo reply from the VIP, out of in0"
            } else {
                "v6 ICMPv6 echo request to a VIP → echo reply from the VIP, out of in0"
            },
            "in0",
            echo.bytes(),
            XDP_REDIRECT,
            Some(reply.bytes()),
        ));
        let mut vlan = echo.clone();
        vlan.vlan = Some(7);
        let mut vlan_reply = reply.clone();
        vlan_reply.vlan = Some(7);
        f.push(fx(
            if what == "v4" {
                "v4 ICMP echo request to a VIP on VLAN 7 → echo reply on VLAN 7"
            } else {
                "v6 ICMPv6 echo request to a VIP on VLAN 7 → echo reply on VLAN 7"
            },
            "in0",
            vlan.bytes(),
            XDP_REDIRECT,
            Some(vlan_reply.bytes()),
        ));
        let mut not_req = echo.clone();
        not_req.l4 = L4::IcmpReply;
        f.push(fx(
            if what == "v4" {
                "v4 ICMP echo reply to a VIP → pass to the kernel"
            } else {
                "v6 ICMPv6 echo reply to a VIP → pass to the kernel"
            },
            "in0",
            not_req.bytes(),
            XDP_PASS,
            None,
        ));
    }
    let mut off = Pkt::tcp(c4, 0, IpAddr::V4(VIP4_NO_ECHO), 0, 0);
    off.l4 = L4::Icmp;
    f.push(fx(
        "ICMP echo to a VIP with icmp_echo = false → pass to the kernel",
        "in0",
        off.bytes(),
        XDP_PASS,
        None,
    ));
    let mut other = Pkt::tcp(c4, 0, r4, 0, 0);
    other.l4 = L4::Icmp;
    f.push(fx(
        "ICMP echo to an address that is no VIP → pass to the kernel",
        "in0",
        other.bytes(),
        XDP_PASS,
        None,
    ));
    // --- Partial checksums (TX checksum offload of a local sender): the
    // field holds only the pseudo-header sum. A frame that leaves bare
    // (redirect, TX) gets the full checksum; one passed to the kernel
    // keeps its socket buffer, so its field stays partial, updated for the
    // new addresses. Test-run frames are bare, like a native-mode frame.
    let partial = |mut p: Pkt| {
        p.partial_csum = true;
        p
    };
    let full = |mut p: Pkt| {
        p.partial_csum = false;
        p
    };
    let p_syn = partial(Pkt::tcp(c4, 40100, v4, 80, SYN));
    f.push(fx(
        "v4 tcp SYN with a partial checksum → real, checksum completed",
        "in0",
        p_syn.bytes(),
        XDP_REDIRECT,
        Some(full(p_syn.nat(c4, 40100, r4, 8080, OUT_MAC, REAL_MAC)).bytes()),
    ));
    let mut p_big = partial(Pkt::tcp(c4, 40100, v4, 80, ACK));
    p_big.payload = (0..1301u32).map(|i| (i * 7 + 3) as u8).collect();
    f.push(fx(
        "v4 tcp, 1301-byte payload, partial checksum → completed over every byte",
        "in0",
        p_big.bytes(),
        XDP_REDIRECT,
        Some(full(p_big.nat(c4, 40100, r4, 8080, OUT_MAC, REAL_MAC)).bytes()),
    ));
    let mut p_reply = partial(Pkt::tcp(r4, 8080, c4, 40100, SYN | ACK));
    p_reply.src_mac = REAL_MAC;
    p_reply.dst_mac = OUT_MAC;
    f.push(fx(
        "v4 tcp reply with a partial checksum → source rewritten, checksum completed",
        "out1",
        p_reply.bytes(),
        XDP_REDIRECT,
        Some(full(p_reply.nat(v4, 80, c4, 40100, IN_MAC, CLIENT_MAC)).bytes()),
    ));
    let p_udp6 = partial(Pkt::udp(c6, 40101, v6, 53));
    f.push(fx(
        "v6 udp with a partial checksum → real, checksum completed",
        "in0",
        p_udp6.bytes(),
        XDP_REDIRECT,
        Some(full(p_udp6.nat(c6, 40101, r6, 5353, OUT_MAC, REAL_MAC)).bytes()),
    ));
    let p_tcp6 = partial(Pkt::tcp(c6, 40101, v6, 80, SYN));
    f.push(fx(
        "v6 tcp with a partial checksum → real, checksum completed",
        "in0",
        p_tcp6.bytes(),
        XDP_REDIRECT,
        Some(full(p_tcp6.nat(c6, 40101, r6, 8080, OUT_MAC, REAL_MAC)).bytes()),
    ));
    let p_nn = partial(Pkt::tcp(c4, 40102, IpAddr::V4(VIP4_NONEIGH), 80, SYN));
    let mut p_nn_out = p_nn.nat(
        c4,
        40102,
        IpAddr::V4(REAL4_NONEIGH),
        8080,
        CLIENT_MAC,
        IN_MAC,
    );
    p_nn_out.src_mac = CLIENT_MAC;
    p_nn_out.dst_mac = IN_MAC;
    f.push(fx(
        "v4 FIB miss with a partial checksum → pass, checksum kept partial for the new addresses",
        "in0",
        p_nn.bytes(),
        XDP_PASS,
        Some(p_nn_out.bytes()),
    ));
    let mut look = Pkt::tcp(c4, 40103, v4, 80, SYN);
    look.payload = b"hello!".to_vec();
    let look = look.full_looking_partial();
    f.push(fx(
        "v4 tcp full checksum that equals the pseudo-header sum → redirected with a correct checksum",
        "in0",
        look.bytes(),
        XDP_REDIRECT,
        Some(look.nat(c4, 40103, r4, 8080, OUT_MAC, REAL_MAC).bytes()),
    ));
    let mut look_nn = Pkt::tcp(c4, 40104, IpAddr::V4(VIP4_NONEIGH), 80, SYN);
    look_nn.payload = b"hello!".to_vec();
    let look_nn = look_nn.full_looking_partial();
    let mut look_nn_out = look_nn.nat(
        c4,
        40104,
        IpAddr::V4(REAL4_NONEIGH),
        8080,
        CLIENT_MAC,
        IN_MAC,
    );
    look_nn_out.src_mac = CLIENT_MAC;
    look_nn_out.dst_mac = IN_MAC;
    f.push(fx(
        "v4 full checksum that looks partial, FIB miss → pass with a correct full checksum",
        "in0",
        look_nn.bytes(),
        XDP_PASS,
        Some(look_nn_out.bytes()),
    ));

    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    f.push(fx("ARP → pass untouched", "in0", arp, XDP_PASS, None));
    f
}

#[test]
fn xdp_fixtures() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the XDP fixtures need root (BPF_PROG_TEST_RUN); CI must run as root"
        );
        eprintln!("skipped: the XDP fixtures need root");
        return;
    }
    let ns = fixture_net().expect("fixture namespace");
    let cfg = Config::parse(FIXTURE_CONFIG).expect("fixture config");
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
            let (verdict, got, _) = match test_run(prog, ifindex, &f.input) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: test run failed: {e}", f.desc));
                    continue;
                }
            };
            let want = f.output.as_deref().unwrap_or(&f.input);
            if verdict != f.verdict {
                failures.push(format!(
                    "{}: verdict {} (want {})",
                    f.desc, verdict, f.verdict
                ));
            } else if got != want {
                failures.push(format!(
                    "{}: output differs\n   got  {}\n   want {}",
                    f.desc,
                    hex(&got),
                    hex(want)
                ));
            }
        }
        // Conntrack entries of a removed VIP must not be used, also once a
        // new VIP has taken its index; the VIP's return brings the flow back.
        {
            let (c4, v4, r4) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), IpAddr::V4(REAL4));
            let ack = Pkt::tcp(c4, 40000, v4, 80, 0x10);
            let forwarded = ack.nat(c4, 40000, r4, 8080, OUT_MAC, REAL_MAC).bytes();
            let mut check = |dp: &Dataplane, what: &str, want_verdict: u32, want: &[u8]| {
                let run = dp
                    .program(dataplane::PROGRAM)
                    .and_then(|prog| test_run(prog, in0, &ack.bytes()));
                match run {
                    Ok((v, got, _)) if v == want_verdict && got == want => {}
                    Ok((v, got, _)) => failures.push(format!(
                        "{what}: verdict {v} (want {want_verdict}), output {}",
                        if got == want {
                            "as expected"
                        } else {
                            "differs"
                        }
                    )),
                    Err(e) => failures.push(format!("{what}: test run failed: {e}")),
                }
            };
            check(
                &dp,
                "VIP removal: established flow before",
                XDP_REDIRECT,
                &forwarded,
            );
            // The VIP goes; a new one takes its index and its real (so the
            // real id stays valid): only the VIP check stops the old entry.
            let mut other = cfg.vips[0].clone();
            other.port = 81;
            let mut reused: Vec<_> = cfg.vips[1..].to_vec();
            reused.insert(0, other);
            dp.apply(&reused)?;
            check(
                &dp,
                "VIP removed, its index and real reused: its flow passes",
                XDP_PASS,
                &ack.bytes(),
            );
            dp.apply(&cfg.vips)?;
            check(
                &dp,
                "VIP back: flow forwarded again",
                XDP_REDIRECT,
                &forwarded,
            );
        }

        // A reply's next hop is cached per client: the same reply right
        // again leaves with the same bytes without asking the FIB.
        {
            let (c4, v4, r4) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), IpAddr::V4(REAL4));
            let mut reply = Pkt::tcp(r4, 8080, c4, 40000, 0x10);
            reply.src_mac = REAL_MAC;
            reply.dst_mac = OUT_MAC;
            let want = reply.nat(v4, 80, c4, 40000, IN_MAC, CLIENT_MAC).bytes();
            let fib = |dp: &Dataplane| -> anyhow::Result<(u64, u64)> {
                let g = dp.snapshot()?.global;
                let get = |n: &str| g.get(n).copied().unwrap_or(0);
                Ok((get("fib_lookup"), get("next_hop_cached")))
            };
            let mut outcome = Vec::new();
            for _ in 0..2 {
                let before = fib(&dp)?;
                let (v, got, _) = test_run(dp.program(dataplane::PROGRAM)?, out1, &reply.bytes())?;
                let after = fib(&dp)?;
                outcome.push((v, got == want, after.0 - before.0, after.1 - before.1));
            }
            // The first may have found the entry expired (1 s); the second
            // must not.
            if outcome[1] != (XDP_REDIRECT, true, 0, 1) {
                failures.push(format!(
                    "reply next hop cache: (verdict, bytes as expected, fib lookups, cache hits) = {outcome:?}, want the second {:?}",
                    (XDP_REDIRECT, true, 0, 1)
                ));
            }
        }

        // Generic (skb) mode: a redirected frame keeps its socket buffer,
        // so a partial checksum stays partial (the egress path completes
        // it); a full checksum is updated as always.
        {
            let (c4, v4, r4) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), IpAddr::V4(REAL4));
            dp.set_skb_mode(in0, true)?;
            let mut syn = Pkt::tcp(c4, 40110, v4, 80, 0x02);
            for partial in [true, false] {
                syn.partial_csum = partial;
                let want = syn.nat(c4, 40110, r4, 8080, OUT_MAC, REAL_MAC).bytes();
                let (v, got, _) = test_run(dp.program(dataplane::PROGRAM)?, in0, &syn.bytes())?;
                if (v, &got) != (XDP_REDIRECT, &want) {
                    failures.push(format!(
                        "generic mode, partial checksum {partial}: verdict {v} (want {XDP_REDIRECT}), output\n   got  {}\n   want {}",
                        hex(&got),
                        hex(&want)
                    ));
                }
            }
            dp.set_skb_mode(in0, false)?;
        }

        let snap = dp.snapshot()?;
        for (name, min) in [
            ("conntrack_hit", 1u64),
            // The established-flow fixtures reuse the SYN's next hop.
            ("next_hop_cached", 1),
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
            ("drop_bad_l4_length", 5),
            ("drop_bad_source", 2),
            // The non-SYN conntrack miss.
            ("conntrack_miss_mid_flow", 1),
            ("csum_completed", 5),
            ("csum_partial_kept", 2),
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

/// `icmp_rate_limit`: each CPU answers at most that many echo requests a
/// second; the rest are dropped and counted. The thread is pinned to one
/// CPU so every run meets the same bucket.
#[test]
fn xdp_icmp_echo_rate_limit() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "needs root");
        return;
    }
    let ns = fixture_net().expect("fixture namespace");
    let (verdicts, replies, limited) = in_fixture_dataplane(&ns, FIXTURE_CONFIG, |dp, in0, _| {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
                != 0
            {
                anyhow::bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
        }
        dp.set_icmp_rate(3)?;
        let mut echo = Pkt::tcp(IpAddr::V4(CLIENT4), 0, IpAddr::V4(VIP4), 0, 0);
        echo.l4 = L4::Icmp;
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut verdicts = Vec::new();
        for _ in 0..10 {
            verdicts.push(test_run(prog, in0, &echo.bytes())?.0);
        }
        let g = dp.snapshot()?.global;
        Ok((
            verdicts,
            g.get("icmp_echo_reply").copied().unwrap_or(0),
            g.get("drop_icmp_rate_limited").copied().unwrap_or(0),
        ))
    })
    .expect("test runs");
    // Ten runs take far less than the third of a second that refills one.
    assert_eq!(
        verdicts,
        [
            XDP_REDIRECT,
            XDP_REDIRECT,
            XDP_REDIRECT,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP
        ],
    );
    assert_eq!((replies, limited), (3, 7));
}
