//! DSR fixtures: client packets to DSR VIPs run through `lb_xdp` with
//! BPF_PROG_TEST_RUN, their output compared byte for byte with outer
//! headers built here from scratch (IPIP, IP6IP6, 6-in-4, 4-in-6, GUE over
//! IPv4 and IPv6); then each output runs through `lb_decap` on a "real"
//! that owns the real's addresses, which must hand back exactly the
//! client's packet. Plus the decap program's refusals: a tunnel to another
//! host, GUE to another port, an inner header of the wrong version, plain
//! traffic.

use std::net::IpAddr;

use lb_userspace::{
    config::Config,
    decap::{Decap, DecapConfig},
    l4::dataplane::{self, Dataplane, LoadOptions},
    testbed::{self, packet::*, Netns},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const ENCAP4: [u8; 4] = [198, 18, 250, 1];
const ENCAP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0x02, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

const CONFIG: &str = r#"
encap_source = ["198.18.250.1", "2001:db8:250::1"]

[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "198.18.100.1"
port = 53
protocol = "udp"
mode = "dsr"
encap = "gue"
gue_port = 6080
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "198.18.100.1"
port = 443
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "2001:db8:11::2"

[[vip]]
address = "2001:db8:100::1"
port = 80
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "2001:db8:11::2"

[[vip]]
address = "2001:db8:100::1"
port = 443
protocol = "tcp"
mode = "dsr"
[[vip.real]]
address = "198.18.11.2"

[[vip]]
address = "2001:db8:100::1"
port = 53
protocol = "udp"
mode = "dsr"
encap = "gue"
[[vip.real]]
address = "2001:db8:11::2"
"#;

/// The frame `lb_xdp` must send for `inner` (a client frame) to `real`:
/// new MACs, the outer header, for GUE the UDP header (source port
/// `gue_sport`), then the client's IP packet unchanged. `label`: the
/// IPv6 outer flow label (flow-derived, read off the output).
fn encapsulated(inner: &[u8], real: IpAddr, gue: Option<(u16, u16)>, label: u32) -> Vec<u8> {
    let ip = &inner[14..];
    let inner_v4 = ip[0] >> 4 == 4;
    let inner_len = if inner_v4 {
        u16::from_be_bytes([ip[2], ip[3]]) as usize
    } else {
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize
    };
    let (tos, df) = if inner_v4 {
        (ip[1], ip[6] & 0x40 != 0)
    } else {
        ((ip[0] << 4) | (ip[1] >> 4), true)
    };
    let proto = match (gue, inner_v4) {
        (Some(_), _) => 17,
        (None, true) => 4,
        (None, false) => 41,
    };
    let udp_len = if gue.is_some() { 8 } else { 0 };
    let mut out = Vec::new();
    out.extend_from_slice(&REAL_MAC);
    out.extend_from_slice(&OUT_MAC);
    match real {
        IpAddr::V4(r) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + udp_len + inner_len) as u16;
            out.extend_from_slice(&[0x45, tos]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&[0, 0, if df { 0x40 } else { 0 }, 0, 64, proto, 0, 0]);
            out.extend_from_slice(&ENCAP4);
            out.extend_from_slice(&r.octets());
            fix_ip4_csum(&mut out, 14);
        }
        IpAddr::V6(r) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let vtc = (6u32 << 28) | (u32::from(tos) << 20) | label;
            out.extend_from_slice(&vtc.to_be_bytes());
            out.extend_from_slice(&((udp_len + inner_len) as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&ENCAP6);
            out.extend_from_slice(&r.octets());
        }
    }
    if let Some((sport, dport)) = gue {
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&dport.to_be_bytes());
        out.extend_from_slice(&((8 + inner_len) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(&ip[..inner_len]);
    out
}

/// The client frame as the real's stack must see it after decap: the LB's
/// MACs, the client's IP packet.
fn decapsulated(inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&REAL_MAC);
    out.extend_from_slice(&OUT_MAC);
    out.extend_from_slice(&inner[12..]);
    out
}

struct Case {
    desc: &'static str,
    input: Pkt,
    real: IpAddr,
    /// GUE destination port.
    gue: Option<u16>,
}

fn cases() -> Vec<Case> {
    let c4 = IpAddr::V4(CLIENT4);
    let v4 = IpAddr::V4(VIP4);
    let r4 = IpAddr::V4(REAL4);
    let c6 = IpAddr::V6(CLIENT6);
    let v6 = IpAddr::V6(VIP6);
    let r6 = IpAddr::V6(REAL6);
    let mut partial = Pkt::tcp(c4, 40100, v4, 80, 0x10);
    partial.partial_csum = true;
    let mut partial6 = Pkt::udp(c6, 40101, v6, 53);
    partial6.partial_csum = true;
    let mut no_df = Pkt::tcp(c4, 40102, v4, 80, 0x02);
    no_df.frag = 0;
    vec![
        Case {
            desc: "v4 tcp SYN → IPIP",
            input: Pkt::tcp(c4, 40000, v4, 80, 0x02),
            real: r4,
            gue: None,
        },
        Case {
            desc: "v4 tcp established → IPIP",
            input: Pkt::tcp(c4, 40000, v4, 80, 0x10),
            real: r4,
            gue: None,
        },
        Case {
            desc: "v4 tcp without DF → IPIP without DF",
            input: no_df,
            real: r4,
            gue: None,
        },
        Case {
            desc: "v4 tcp, partial checksum → IPIP, inner checksum completed",
            input: partial,
            real: r4,
            gue: None,
        },
        Case {
            desc: "v4 udp → GUE over IPv4",
            input: Pkt::udp(c4, 40001, v4, 53),
            real: r4,
            gue: Some(6080),
        },
        Case {
            desc: "v4 tcp → 4-in-6",
            input: Pkt::tcp(c4, 40002, v4, 443, 0x02),
            real: r6,
            gue: None,
        },
        Case {
            desc: "v6 tcp SYN → IP6IP6",
            input: Pkt::tcp(c6, 40003, v6, 80, 0x02),
            real: r6,
            gue: None,
        },
        Case {
            desc: "v6 tcp → 6-in-4",
            input: Pkt::tcp(c6, 40004, v6, 443, 0x02),
            real: r4,
            gue: None,
        },
        Case {
            desc: "v6 udp → GUE over IPv6",
            input: Pkt::udp(c6, 40005, v6, 53),
            real: r6,
            gue: Some(6080),
        },
        Case {
            desc: "v6 udp, partial checksum → GUE, inner checksum completed",
            input: partial6,
            real: r6,
            gue: Some(6080),
        },
    ]
}

#[test]
fn dsr_encap_and_decap_bytes() {
    if !testbed::privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let lb_ns = fixture_net().expect("fixture namespace");
    let real_ns = Netns::new("lbdc").expect("real namespace");
    real_ns
        .ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"])
        .unwrap();
    for args in [
        &["link", "set", "d0", "up"][..],
        &["link", "set", "d0p", "up"],
        &["addr", "add", "198.18.11.2/24", "dev", "d0"],
        &["addr", "add", "2001:db8:11::2/64", "dev", "d0", "nodad"],
    ] {
        real_ns.ip(args).unwrap();
    }
    let cfg = Config::parse(CONFIG).expect("config");
    let lb_path = format!("/run/netns/{}", lb_ns.name);
    // The LB side: every case's output.
    let outputs = std::thread::spawn(move || -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
        testbed::enter(&lb_path)?;
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dp.set_encap_sources(cfg.encap_sources);
        dp.apply(&cfg.vips)?;
        let in0 = dataplane::ifindex("in0")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(dataplane::ifindex("out1")?)?;
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut out = Vec::new();
        for c in cases() {
            let (verdict, bytes, _) = test_run(prog, in0, &c.input.bytes())?;
            out.push((verdict, bytes));
        }
        // No reply entries for DSR flows: a "reply" from the real is not
        // rewritten (it never comes this way; if it did, it passes).
        let mut reply = Pkt::tcp(IpAddr::V4(REAL4), 80, IpAddr::V4(CLIENT4), 40000, 0x12);
        reply.src_mac = REAL_MAC;
        reply.dst_mac = OUT_MAC;
        let (verdict, bytes, _) = test_run(prog, dataplane::ifindex("out1")?, &reply.bytes())?;
        assert_eq!(
            verdict, XDP_PASS,
            "a real → client packet of a DSR flow passes"
        );
        assert_eq!(bytes, reply.bytes(), "untouched");
        let snap = dp.snapshot()?;
        assert_eq!(snap.global["dsr_encap"], cases().len() as u64);
        assert_eq!(snap.global["reply_nat"], 0);
        Ok(out)
    })
    .join()
    .expect("lb thread")
    .unwrap();

    let mut failures = Vec::new();
    let mut wire = Vec::new();
    for (c, (verdict, got)) in cases().iter().zip(&outputs) {
        if *verdict != XDP_REDIRECT {
            failures.push(format!("{}: verdict {verdict}, want redirect", c.desc));
            continue;
        }
        let mut full = c.input.clone();
        full.partial_csum = false;
        let inner = full.bytes();
        let outer_v6 = c.real.is_ipv6();
        let label = if outer_v6 && got.len() > 18 {
            u32::from_be_bytes([0, got[15] & 0x0f, got[16], got[17]])
        } else {
            0
        };
        let ip_hlen = if outer_v6 { 40 } else { 20 };
        let gue = c.gue.map(|port| {
            let sport = got
                .get(14 + ip_hlen..16 + ip_hlen)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            (sport, port)
        });
        if let Some((sport, _)) = gue {
            if sport < 49152 {
                failures.push(format!("{}: GUE source port {sport} below 49152", c.desc));
            }
        }
        let want = encapsulated(&inner, c.real, gue, label);
        if *got != want {
            failures.push(format!(
                "{}: output differs\n   got  {}\n   want {}",
                c.desc,
                hex(got),
                hex(&want)
            ));
            continue;
        }
        wire.push((c.desc, got.clone(), decapsulated(&inner)));
    }

    // The real side: decap hands back the client's packet.
    let real_path = format!("/run/netns/{}", real_ns.name);
    let decap_failures = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
        testbed::enter(&real_path)?;
        let decap = Decap::start(&DecapConfig {
            interfaces: vec!["d0".into()],
            gue_port: 6080,
        })?;
        let d0 = dataplane::ifindex("d0")?;
        let prog = decap.program()?;
        let mut failures = Vec::new();
        for (desc, frame, want) in &wire {
            let (verdict, got, _) = test_run(prog, d0, frame)?;
            if verdict != XDP_PASS || got != *want {
                failures.push(format!(
                    "decap of {desc}: verdict {verdict}\n   got  {}\n   want {}",
                    hex(&got),
                    hex(want)
                ));
            }
        }
        // Refusals.
        let (_, ipip, _) = &wire[0];
        let mut elsewhere = ipip.clone();
        elsewhere[33] = 99; // outer destination 198.18.11.99: not this host
        fix_ip4_csum(&mut elsewhere, 14);
        let gue = wire.iter().find(|w| w.0.contains("GUE over IPv4")).unwrap();
        let mut other_port = gue.1.clone();
        other_port[36..38].copy_from_slice(&6081u16.to_be_bytes());
        let mut wrong_version = ipip.clone();
        wrong_version[34] = 0x65; // an IPv6 version nibble inside IPIP
        let plain = Pkt::tcp(IpAddr::V4(CLIENT4), 1, IpAddr::V4(REAL4), 80, 0x02).bytes();
        for (desc, frame, verdict) in [
            (
                "IPIP to another host passes untouched",
                &elsewhere,
                XDP_PASS,
            ),
            (
                "GUE to another port passes untouched",
                &other_port,
                XDP_PASS,
            ),
            ("plain TCP passes untouched", &plain, XDP_PASS),
            (
                "IPIP with an IPv6 inner header is dropped",
                &wrong_version,
                XDP_DROP,
            ),
        ] {
            let (v, got, _) = test_run(prog, d0, frame)?;
            if v != verdict || (v == XDP_PASS && got != *frame) {
                failures.push(format!("{desc}: verdict {v}\n   got  {}", hex(&got)));
            }
        }
        let counters: std::collections::HashMap<String, u64> =
            decap.counters()?.into_iter().collect();
        for (name, want) in [
            ("ipip", 4),
            ("ip4_in_ip6", 1),
            ("ip6_in_ip4", 1),
            ("ip6ip6", 1),
            ("gue", 3),
            ("pass_not_local", 1),
            ("pass_not_tunnel", 2),
            ("drop_malformed", 1),
        ] {
            if counters[name] != want {
                failures.push(format!(
                    "decap counter {name} = {}, want {want}",
                    counters[name]
                ));
            }
        }
        Ok(failures)
    })
    .join()
    .expect("real thread")
    .unwrap();
    failures.extend(decap_failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Outer sources and GUE ports follow the flow: with an `encap_source`
/// prefix, flows spread over its host bits; one flow keeps its source.
#[test]
fn dsr_outer_source_follows_the_flow() {
    if !testbed::privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let ns = fixture_net().expect("fixture namespace");
    let text = CONFIG.replace(
        r#"encap_source = ["198.18.250.1", "2001:db8:250::1"]"#,
        r#"encap_source = ["198.18.250.0/24", "2001:db8:250::/112"]"#,
    );
    let cfg = Config::parse(&text).expect("config");
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || -> anyhow::Result<()> {
        testbed::enter(&path)?;
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dp.set_encap_sources(cfg.encap_sources);
        dp.apply(&cfg.vips)?;
        let in0 = dataplane::ifindex("in0")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(dataplane::ifindex("out1")?)?;
        let prog = dp.program(dataplane::PROGRAM)?;
        let (mut src4, mut src6, mut ports) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for sport in 41000..41200u16 {
            let p = Pkt::tcp(IpAddr::V4(CLIENT4), sport, IpAddr::V4(VIP4), 80, 0x02).bytes();
            let (v, out, _) = test_run(prog, in0, &p)?;
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(
                out[26..29],
                [198, 18, 250],
                "IPv4 outer source inside the prefix"
            );
            let again = test_run(prog, in0, &p)?.1;
            assert_eq!(out[26..30], again[26..30], "one flow, one source");
            src4.insert(out[29]);
            let p = Pkt::tcp(IpAddr::V6(CLIENT6), sport, IpAddr::V6(VIP6), 80, 0x02).bytes();
            let out = test_run(prog, in0, &p)?.1;
            assert_eq!(
                out[22..36],
                ENCAP6[..14],
                "IPv6 outer source inside the prefix"
            );
            src6.insert([out[36], out[37]]);
            let p = Pkt::udp(IpAddr::V4(CLIENT4), sport, IpAddr::V4(VIP4), 53).bytes();
            let out = test_run(prog, in0, &p)?.1;
            ports.insert(u16::from_be_bytes([out[34], out[35]]));
        }
        assert!(
            src4.len() > 120,
            "{} IPv4 sources for 200 flows",
            src4.len()
        );
        assert!(
            src6.len() > 190,
            "{} IPv6 sources for 200 flows",
            src6.len()
        );
        assert!(
            ports.len() > 190,
            "{} GUE source ports for 200 flows",
            ports.len()
        );
        Ok(())
    })
    .join()
    .expect("test thread")
    .unwrap();
}
