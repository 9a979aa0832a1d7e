//! ICMP the LB answers itself, end to end: `ping` from the client to a
//! VIP (IPv4 and IPv6, default veth offloads) is answered by the XDP
//! program, not the kernel (kernel forwarding in the lb namespace is
//! dropped by nftables and the VIP is on no interface); a VIP with
//! `icmp_echo = false` stays silent; above `icmp_rate_limit` requests are
//! dropped, and every request is counted as answered or dropped.

use std::time::Instant;

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    packet::Pkt,
    privileged, NameServer, Topology,
};

const SILENT_VIP: &str = "198.18.100.9";

/// `ping` from the client; (exit success, packets received).
fn ping(topo: &Topology, args: &[&str]) -> (bool, u64) {
    let out = topo
        .client
        .command("ping")
        .args(args)
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = text
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    (out.status.success(), received)
}

fn counter(lb: &testbed::Lb, name: &str) -> u64 {
    let v = lb.cli_json(&["stats"]);
    ["global", "drops"]
        .iter()
        .find_map(|k| v[k][name].as_u64())
        .unwrap_or(0)
}

#[test]
fn l4_icmp_echo_answered_by_xdp() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(2).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 8080, 8053).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .key("icmp_rate_limit", 100)
        .services(&topo, &[(80, "tcp", 8080)])
        .vip(
            Vip::tcp(SILENT_VIP.parse().unwrap(), 80)
                .key("icmp_echo", false)
                .reals4(&[1], 8080),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));

    let v4 = testbed::VIP4.to_string();
    let v6 = testbed::VIP6.to_string();
    assert_eq!(
        ping(&topo, &["-n", "-c", "5", "-i", "0.2", "-W", "2", &v4]),
        (true, 5)
    );
    assert_eq!(
        ping(&topo, &["-6", "-n", "-c", "5", "-i", "0.2", "-W", "2", &v6]),
        (true, 5)
    );
    assert_eq!(counter(&lb, "icmp_echo_reply"), 10);
    // The switch: nothing answers this VIP's address.
    assert_eq!(
        ping(
            &topo,
            &["-n", "-c", "3", "-i", "0.2", "-W", "1", SILENT_VIP]
        ),
        (false, 0)
    );
    assert_eq!(counter(&lb, "icmp_echo_reply"), 10);

    // 1000 requests in about a second at 100 answers per second per CPU.
    let t0 = Instant::now();
    let (_, received) = ping(
        &topo,
        &["-n", "-q", "-c", "1000", "-i", "0.001", "-W", "1", &v4],
    );
    let secs = t0.elapsed().as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let replies = counter(&lb, "icmp_echo_reply") - 10;
    let limited = counter(&lb, "drop_icmp_rate_limited");
    assert_eq!(replies + limited, 1000, "every request answered or dropped");
    assert_eq!(received, replies, "every answer reached the client");
    let bound = (100.0 * (secs + 1.0) * cpus).ceil() as u64;
    assert!(
        received >= 100 && received <= bound,
        "{received} answers in {secs:.2} s (bound {bound})"
    );

    // 10,000 errors from spoofed sources (198.19.0.0/16) about flows of
    // the VIP: each relayed or dropped by the limit, the relayed ones
    // within it (a full bucket, at least, and no more than the limit over
    // the time they took plus a second of burst, per CPU).
    // A second for the buckets to fill up again after the pings.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = counter(&lb, "icmp_error_relayed");
    let before_limited = counter(&lb, "drop_icmp_rate_limited");
    let t0 = Instant::now();
    topo.client
        .run_in(|| {
            // SAFETY: a raw socket, closed below; IPPROTO_RAW implies
            // IP_HDRINCL (the test writes the IP header, with its source).
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(testbed::VIP4.octets()),
                },
                sin_zero: [0; 8],
            };
            for i in 0..10_000u32 {
                let src = std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
                let quoted = Pkt::tcp(
                    testbed::VIP4.into(),
                    80,
                    testbed::CLIENT4.into(),
                    20_000 + (i % 40_000) as u16,
                    0x10,
                );
                let frame = crate::xdp_icmp::icmp_error(
                    src.into(),
                    testbed::VIP4.into(),
                    3,
                    4,
                    1280,
                    &crate::xdp_icmp::quote(&quoted, 48),
                    64,
                    ([0; 6], [0; 6]),
                );
                let ip = &frame[14..];
                // SAFETY: `ip` and `to` are valid for the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        ip.as_ptr().cast(),
                        ip.len(),
                        0,
                        (&raw const to).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                anyhow::ensure!(
                    n == ip.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: the socket opened above.
            unsafe { libc::close(fd) };
            Ok(())
        })
        .expect("sending the errors");
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let relayed = counter(&lb, "icmp_error_relayed") - before;
    let limited = counter(&lb, "drop_icmp_rate_limited") - before_limited;
    assert_eq!(
        relayed + limited,
        10_000,
        "relayed {relayed}, limited {limited}"
    );
    let bound = (100.0 * (secs + 1.0) * cpus).ceil() as u64;
    assert!(
        relayed >= 100 && relayed <= bound,
        "{relayed} errors relayed in {secs:.2} s (bound {bound})"
    );
    drop(lb);
}
