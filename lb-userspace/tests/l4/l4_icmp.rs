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
    drop(lb);
}
