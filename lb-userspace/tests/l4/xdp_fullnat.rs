//! FullNAT fixtures: client packets to FullNAT VIPs run through `lb_xdp`
//! with BPF_PROG_TEST_RUN. The output must be the client's packet with the
//! SNAT address and a claimed port as source and the real as destination,
//! byte for byte (checksums built here from scratch, partial checksums
//! completed); the real's answer to that address and port must come back
//! as VIP → client. Then 20,000 flows through one SNAT address (every one
//! its own port, every reply to its own client), a pool that runs out
//! (refused and counted, established flows untouched), and a closed
//! flow's port taken by a new flow.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use aya::programs::Xdp;
use lb_userspace::{
    l4::dataplane::{self, Dataplane},
    testbed::{self, packet::*},
};

const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;

const SNAT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 11, 1));
const SNAT6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 1));

const CONFIG: &str = r#"
[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["198.18.11.1", "2001:db8:11::1"]
[[vip.real]]
address = "198.18.11.2"
port = 8080

[[vip]]
address = "198.18.100.1"
port = 53
protocol = "udp"
mode = "fullnat"
snat = ["198.18.11.1"]
[[vip.real]]
address = "198.18.11.2"
port = 5353

[[vip]]
address = "2001:db8:100::1"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["2001:db8:11::1"]
[[vip.real]]
address = "2001:db8:11::2"
port = 8080

[[vip]]
address = "2001:db8:100::1"
port = 53
protocol = "udp"
mode = "fullnat"
snat = ["2001:db8:11::1"]
[[vip.real]]
address = "2001:db8:11::2"
port = 5353

# Four ports only: runs out.
[[vip]]
address = "198.18.100.6"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["198.18.11.1"]
snat_ports = "40000-40003"
[[vip.real]]
address = "198.18.11.2"
port = 8080

# One port each, given back after short configured times.
[[vip]]
address = "198.18.100.7"
port = 80
protocol = "tcp"
mode = "fullnat"
snat = ["198.18.11.1"]
snat_ports = "40010-40010"
snat_closed_timeout = "200ms"
[[vip.real]]
address = "198.18.11.2"
port = 8080

[[vip]]
address = "198.18.100.7"
port = 53
protocol = "udp"
mode = "fullnat"
snat = ["198.18.11.1"]
snat_ports = "40020-40020"
snat_idle_timeout = "300ms"
[[vip.real]]
address = "198.18.11.2"
port = 5353
"#;

/// The source port of an IPv4 or IPv6 frame's TCP/UDP header.
fn sport_of(frame: &[u8]) -> u16 {
    let l4 = if frame[12..14] == [0x08, 0x00] {
        14 + 20
    } else {
        14 + 40
    };
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

/// Runs `input` in from the client side; on a redirect, checks the output
/// is `input` from `snat`:port to `real`:`rport` and returns the port.
fn forward(
    prog: &Xdp,
    in0: u32,
    input: &Pkt,
    snat: IpAddr,
    real: IpAddr,
    rport: u16,
) -> Result<u16, String> {
    let (verdict, got, _) = test_run(prog, in0, &input.bytes()).map_err(|e| e.to_string())?;
    if verdict != XDP_REDIRECT {
        return Err(format!("verdict {verdict}, want redirect"));
    }
    let port = sport_of(&got);
    let mut want = input.nat(snat, port, real, rport, OUT_MAC, REAL_MAC);
    want.partial_csum = false;
    if got != want.bytes() {
        return Err(format!(
            "output differs\n   got  {}\n   want {}",
            hex(&got),
            hex(&want.bytes())
        ));
    }
    Ok(port)
}

/// The real's answer to `snat`:`port`, run in from the real side: must
/// come out as `vip`:`vport` → `client`:`cport`, towards the client.
#[allow(clippy::too_many_arguments, reason = "the two tuples, spelled out")]
fn reply(
    prog: &Xdp,
    out1: u32,
    answer: &Pkt,
    vip: IpAddr,
    vport: u16,
    client: IpAddr,
    cport: u16,
) -> Result<(), String> {
    let (verdict, got, _) = test_run(prog, out1, &answer.bytes()).map_err(|e| e.to_string())?;
    if verdict != XDP_REDIRECT {
        return Err(format!("reply verdict {verdict}, want redirect"));
    }
    let mut want = answer.nat(vip, vport, client, cport, IN_MAC, CLIENT_MAC);
    want.partial_csum = false;
    if got != want.bytes() {
        return Err(format!(
            "reply differs\n   got  {}\n   want {}",
            hex(&got),
            hex(&want.bytes())
        ));
    }
    Ok(())
}

/// A packet from the real (its MACs towards the LB).
fn from_real(mut p: Pkt) -> Pkt {
    p.src_mac = REAL_MAC;
    p.dst_mac = OUT_MAC;
    p
}

/// Loads the object in the fixture namespace with [`CONFIG`] and runs
/// `body` there with the program and the two interfaces' indexes.
fn with_dataplane<T: Send + 'static>(
    body: impl FnOnce(&mut Dataplane, u32, u32) -> anyhow::Result<T> + Send + 'static,
) -> Option<T> {
    if !testbed::privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return None;
    }
    let ns = fixture_net().expect("fixture namespace");
    // The many clients below sit behind the client-side neighbour.
    ns.ip(&[
        "route",
        "add",
        "198.18.0.0/20",
        "via",
        "198.18.0.2",
        "dev",
        "in0",
    ])
    .expect("client route");
    let out = in_fixture_dataplane(&ns, CONFIG, body).unwrap();
    drop(ns);
    Some(out)
}

#[test]
fn fullnat_rewrites_both_ways() {
    let c4 = IpAddr::V4(CLIENT4);
    let v4 = IpAddr::V4(VIP4);
    let r4 = IpAddr::V4(REAL4);
    let c6 = IpAddr::V6(CLIENT6);
    let v6 = IpAddr::V6(VIP6);
    let r6 = IpAddr::V6(REAL6);
    let partial = |mut p: Pkt| {
        p.partial_csum = true;
        p
    };
    // (description, client packet, SNAT address, real, real port)
    let cases: Vec<(&str, Pkt, IpAddr, IpAddr, u16)> = vec![
        (
            "v4 tcp SYN",
            Pkt::tcp(c4, 40000, v4, 80, 0x02),
            SNAT4,
            r4,
            8080,
        ),
        (
            "v4 tcp, partial checksum",
            partial(Pkt::tcp(c4, 40001, v4, 80, 0x02)),
            SNAT4,
            r4,
            8080,
        ),
        (
            "v4 tcp, a full checksum that looks partial",
            {
                let mut p = Pkt::tcp(c4, 40002, v4, 80, 0x02);
                p.payload = b"hello!".to_vec();
                p.full_looking_partial()
            },
            SNAT4,
            r4,
            8080,
        ),
        ("v4 udp", Pkt::udp(c4, 40003, v4, 53), SNAT4, r4, 5353),
        (
            "v4 udp, partial checksum",
            partial(Pkt::udp(c4, 40004, v4, 53)),
            SNAT4,
            r4,
            5353,
        ),
        (
            "v6 tcp SYN",
            Pkt::tcp(c6, 40005, v6, 80, 0x02),
            SNAT6,
            r6,
            8080,
        ),
        (
            "v6 udp, partial checksum",
            partial(Pkt::udp(c6, 40006, v6, 53)),
            SNAT6,
            r6,
            5353,
        ),
    ];
    let Some(failures) = with_dataplane(move |dp, in0, out1| {
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut failures = Vec::new();
        for (desc, input, snat, real, rport) in &cases {
            let (client, cport, vip, vport) = match input.l4 {
                L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                    (input.src, sport, input.dst, dport)
                }
                L4::Icmp | L4::IcmpReply => unreachable!(),
            };
            let port = match forward(prog, in0, input, *snat, *real, *rport) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{desc}: {e}"));
                    continue;
                }
            };
            if !(1024..=32767).contains(&port) {
                failures.push(format!("{desc}: source port {port} outside 1024-32767"));
            }
            // The flow's next packet leaves from the same port.
            let mut next = input.clone();
            if let L4::Tcp { flags, .. } = &mut next.l4 {
                *flags = 0x10;
            }
            match forward(prog, in0, &next, *snat, *real, *rport) {
                Ok(p) if p == port => {}
                Ok(p) => failures.push(format!("{desc}: next packet from port {p}, not {port}")),
                Err(e) => failures.push(format!("{desc}, next packet: {e}")),
            }
            let answer = match input.l4 {
                L4::Tcp { .. } => Pkt::tcp(*real, *rport, *snat, port, 0x12),
                _ => Pkt::udp(*real, *rport, *snat, port),
            };
            for (what, answer) in [
                ("reply", from_real(answer.clone())),
                ("reply, partial checksum", from_real(partial(answer))),
            ] {
                if let Err(e) = reply(prog, out1, &answer, vip, vport, client, cport) {
                    failures.push(format!("{desc}, {what}: {e}"));
                }
            }
        }
        let snap = dp.snapshot()?;
        if snap.global["snat_new_flow"] != cases.len() as u64 {
            failures.push(format!(
                "snat_new_flow {}, want {}",
                snap.global["snat_new_flow"],
                cases.len()
            ));
        }
        Ok(failures)
    }) else {
        return;
    };
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 20,000 flows from distinct clients through one SNAT address to one
/// real: each gets its own port (so its own tuple at the real), and each
/// reply reaches its own client.
#[test]
fn fullnat_20k_flows_through_one_snat_address() {
    const FLOWS: u32 = 20_000;
    let r4 = IpAddr::V4(REAL4);
    let v4 = IpAddr::V4(VIP4);
    let Some((failures, collisions)) = with_dataplane(move |dp, in0, out1| {
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut failures = Vec::new();
        let mut owner: HashMap<u16, (IpAddr, u16)> = HashMap::new();
        for i in 0..FLOWS {
            // 198.18.1.0 - 198.18.8.255 (within 198.18.0.0/15), 10 ports each.
            let client = IpAddr::V4(Ipv4Addr::new(
                198,
                18,
                1 + (i / 2560) as u8,
                (i / 10 % 256) as u8,
            ));
            let cport = 20000 + (i % 10) as u16;
            let syn = Pkt::tcp(client, cport, v4, 80, 0x02);
            match forward(prog, in0, &syn, SNAT4, r4, 8080) {
                Ok(port) => {
                    if let Some(prev) = owner.insert(port, (client, cport)) {
                        failures.push(format!(
                            "port {port} given to {client}:{cport} and {prev:?}"
                        ));
                    }
                }
                Err(e) => failures.push(format!("flow {i} ({client}:{cport}): {e}")),
            }
            if failures.len() > 5 {
                break;
            }
        }
        for (port, (client, cport)) in &owner {
            let answer = from_real(Pkt::tcp(r4, 8080, SNAT4, *port, 0x12));
            if let Err(e) = reply(prog, out1, &answer, v4, 80, *client, *cport) {
                failures.push(format!("reply to port {port}: {e}"));
                if failures.len() > 5 {
                    break;
                }
            }
        }
        if owner.len() != FLOWS as usize {
            failures.push(format!("{} flows got a port, want {FLOWS}", owner.len()));
        }
        let snap = dp.snapshot()?;
        for k in ["drop_snat_exhausted", "drop_no_snat_address"] {
            if snap.global[k] != 0 {
                failures.push(format!("{k} = {}", snap.global[k]));
            }
        }
        Ok((failures, snap.global["snat_port_collision"]))
    }) else {
        return;
    };
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 20,000 of 31,744 ports: the probes meet taken ports, never too many.
    eprintln!("20000 flows, {collisions} port collisions on the way");
}

/// A pool of four ports: four flows get them; further new flows are
/// dropped and counted; the four keep working. After one of them closes
/// (client RST) and stays quiet for the closing time, a new flow gets its
/// port.
#[test]
fn fullnat_pool_runs_out_refuses_and_takes_back_closed_ports() {
    let r4 = IpAddr::V4(REAL4);
    let vip = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 6));
    let Some(failures) = with_dataplane(move |dp, in0, out1| {
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut failures = Vec::new();
        let client = |i: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 2, i));
        let mut flows = Vec::new();
        for i in 1..=4 {
            match forward(
                prog,
                in0,
                &Pkt::tcp(client(i), 30000, vip, 80, 0x02),
                SNAT4,
                r4,
                8080,
            ) {
                Ok(port) => flows.push((i, port)),
                Err(e) => failures.push(format!("flow {i}: {e}")),
            }
        }
        let mut ports: Vec<u16> = flows.iter().map(|f| f.1).collect();
        ports.sort_unstable();
        if ports != [40000, 40001, 40002, 40003] {
            failures.push(format!("ports {ports:?}, want 40000-40003 each once"));
        }
        for i in 5..=7 {
            let syn = Pkt::tcp(client(i), 30000, vip, 80, 0x02).bytes();
            let (verdict, _, _) = test_run(prog, in0, &syn)?;
            if verdict != XDP_DROP {
                failures.push(format!(
                    "flow {i} with the pool full: verdict {verdict}, want drop"
                ));
            }
        }
        let snap = dp.snapshot()?;
        if snap.global["drop_snat_exhausted"] != 3 {
            failures.push(format!(
                "drop_snat_exhausted {}, want 3",
                snap.global["drop_snat_exhausted"]
            ));
        }
        // The established flows are untouched, both ways.
        for (i, port) in &flows {
            if let Err(e) = forward(
                prog,
                in0,
                &Pkt::tcp(client(*i), 30000, vip, 80, 0x10),
                SNAT4,
                r4,
                8080,
            )
            .and_then(|p| {
                (p == *port)
                    .then_some(())
                    .ok_or(format!("port {p}, not {port}"))
            }) {
                failures.push(format!("flow {i} after the refusals: {e}"));
            }
            let answer = from_real(Pkt::tcp(r4, 8080, SNAT4, *port, 0x10));
            if let Err(e) = reply(prog, out1, &answer, vip, 80, client(*i), 30000) {
                failures.push(format!("flow {i}'s reply after the refusals: {e}"));
            }
        }
        // Flow 1 ends with a client RST; its port is free once the flow
        // has been quiet for the closing time (120 ticks of 2^24 ns).
        let (first, first_port) = flows.first().copied().unwrap_or((1, 0));
        forward(
            prog,
            in0,
            &Pkt::tcp(client(first), 30000, vip, 80, 0x14),
            SNAT4,
            r4,
            8080,
        )
        .map_err(|e| anyhow::anyhow!("RST: {e}"))?;
        let syn = Pkt::tcp(client(8), 30000, vip, 80, 0x02);
        let (verdict, _, _) = test_run(prog, in0, &syn.bytes())?;
        if verdict != XDP_DROP {
            failures.push(format!(
                "a new flow right after the RST: verdict {verdict}, want drop"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2600));
        match forward(prog, in0, &syn, SNAT4, r4, 8080) {
            Ok(p) if p == first_port => {}
            Ok(p) => failures.push(format!(
                "new flow got port {p}, want the closed flow's {first_port}"
            )),
            Err(e) => failures.push(format!("new flow after the closing time: {e}")),
        }
        let answer = from_real(Pkt::tcp(r4, 8080, SNAT4, first_port, 0x12));
        if let Err(e) = reply(prog, out1, &answer, vip, 80, client(8), 30000) {
            failures.push(format!("the new flow's reply: {e}"));
        }
        Ok(failures)
    }) else {
        return;
    };
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `snat_closed_timeout` and `snat_idle_timeout`: a one-port pool gives
/// its port to a new flow once the old flow closed and stayed quiet for
/// 200 ms (TCP), or idled for 300 ms (UDP); not before.
#[test]
fn fullnat_configured_port_times() {
    let r4 = IpAddr::V4(REAL4);
    let vip = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 7));
    let Some(failures) = with_dataplane(move |dp, in0, _out1| {
        let prog = dp.program(dataplane::PROGRAM)?;
        let mut failures = Vec::new();
        let client = |i: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 3, i));
        // TCP: the first flow takes the port, ends with a RST.
        let first = Pkt::tcp(client(1), 30000, vip, 80, 0x02);
        match forward(prog, in0, &first, SNAT4, r4, 8080) {
            Ok(40010) => {}
            other => failures.push(format!("first TCP flow: {other:?}, want port 40010")),
        }
        forward(
            prog,
            in0,
            &Pkt::tcp(client(1), 30000, vip, 80, 0x14),
            SNAT4,
            r4,
            8080,
        )
        .map_err(|e| anyhow::anyhow!("RST: {e}"))?;
        let next = Pkt::tcp(client(2), 30000, vip, 80, 0x02);
        let (v, _, _) = test_run(prog, in0, &next.bytes())?;
        if v != XDP_DROP {
            failures.push(format!("TCP right after the RST: verdict {v}, want drop"));
        }
        std::thread::sleep(std::time::Duration::from_millis(450));
        match forward(prog, in0, &next, SNAT4, r4, 8080) {
            Ok(40010) => {}
            other => failures.push(format!(
                "TCP 450 ms after the RST: {other:?}, want port 40010"
            )),
        }
        // UDP: the first flow takes the port and goes quiet.
        let first = Pkt::udp(client(1), 30000, vip, 53);
        match forward(prog, in0, &first, SNAT4, r4, 5353) {
            Ok(40020) => {}
            other => failures.push(format!("first UDP flow: {other:?}, want port 40020")),
        }
        let next = Pkt::udp(client(2), 30000, vip, 53);
        let (v, _, _) = test_run(prog, in0, &next.bytes())?;
        if v != XDP_DROP {
            failures.push(format!(
                "UDP with the first flow fresh: verdict {v}, want drop"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(550));
        match forward(prog, in0, &next, SNAT4, r4, 5353) {
            Ok(40020) => {}
            other => failures.push(format!("UDP after 550 ms idle: {other:?}, want port 40020")),
        }
        Ok(failures)
    }) else {
        return;
    };
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
