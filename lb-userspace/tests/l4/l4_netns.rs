//! End to end through XDP in network namespaces: client → VIP → three reals,
//! IPv4 and IPv6, TCP (real HTTP with curl) and UDP. Kernel forwarding in the
//! lb namespace is dropped by nftables, so only XDP can move the traffic.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use lb_common::{flow_hash, FlowKey, IPPROTO_UDP};
use lb_userspace::{
    ident::{addr_bytes, RealId},
    l4::maglev,
    testbed::{self, NameServer, Topology, Wiring},
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8053;

use lb_userspace::testbed::privileged;

/// The real Maglev + flow hash would pick for this flow (1-based).
fn expected_real(client: SocketAddr, vip: SocketAddr, reals: usize) -> usize {
    let backends: Vec<maglev::Backend> = (1..=reals)
        .map(|i| {
            let a: IpAddr = if vip.is_ipv4() {
                testbed::real4(i).into()
            } else {
                testbed::real6(i).into()
            };
            maglev::Backend {
                id: RealId::new(a, vip.port()).maglev_identity(),
                weight: 1,
            }
        })
        .collect();
    let ring = maglev::build(&backends, 65537);
    let (src, family) = addr_bytes(client.ip());
    let (dst, _) = addr_bytes(vip.ip());
    let key = FlowKey {
        src,
        dst,
        sport: client.port().to_be(),
        dport: vip.port().to_be(),
        proto: IPPROTO_UDP,
        family,
        _pad: [0; 2],
    };
    ring[(flow_hash(&key) % 65537) as usize] as usize + 1
}

/// Default offloads: client and reals send partial checksums, as local
/// senders (containers, namespaces) do.
/// The latest value of a global counter in lb's periodic `global:` log
/// lines, which carry the totals of the counters that moved (0 when it
/// never moved).
fn global_counter(log: &str, name: &str) -> u64 {
    log.lines()
        .rev()
        .filter(|l| l.contains("global:"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn balances_tcp_and_udp_over_xdp_v4_and_v6() {
    balances(Wiring::default());
}

/// The same with full checksums from every sender (TX checksum offload
/// off), as from real NICs.
#[test]
fn balances_with_full_checksums() {
    balances(Wiring {
        full_checksums: true,
        ..Wiring::default()
    });
}

/// The reals behind a bridge (a switch) on one lb interface, default
/// offloads.
#[test]
fn balances_to_reals_behind_a_bridge() {
    balances(Wiring {
        bridge: true,
        ..Wiring::default()
    });
}

fn balances(wiring: Wiring) {
    if !privileged() {
        return;
    }
    let topo = Topology::build_wired(3, wiring).expect("topology");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, HTTP_PORT, UDP_PORT).unwrap());
    topo.block_kernel_forwarding().expect("nft");

    let dir = tempfile::tempdir().unwrap();
    let lb = topo
        .start_lb(
            crate::LB,
            &testbed::topology_config(&topo, HTTP_PORT, UDP_PORT),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));

    for (label, url) in [
        ("IPv4", format!("http://{}/", testbed::VIP4)),
        ("IPv6", format!("http://[{}]/", testbed::VIP6)),
    ] {
        // 1200 samples: ±20% of an equal share is then ~4.9 standard
        // deviations, so a correct spread does not fail by chance.
        let n = 1200;
        let bodies = testbed::curl_burst(&topo.client, &url, n).unwrap();
        let failed = bodies.iter().filter(|b| b.is_empty()).count();
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for b in &bodies {
            *spread.entry(b.clone()).or_default() += 1;
        }
        assert_eq!(
            failed,
            0,
            "{label}: {failed} of {n} requests failed; spread {spread:?}\n--- lb log ---\n{}",
            lb.log()
        );
        for r in ["real1", "real2", "real3"] {
            let got = spread.get(r).copied().unwrap_or(0);
            assert!(
                (n / 3 * 8 / 10..=n / 3 * 12 / 10).contains(&got),
                "{label}: {r} got {got} of {n} requests, outside ±20% of an equal share; {spread:?}"
            );
        }
    }

    // UDP: the same 5-tuple always reaches the same real, the one the Maglev
    // ring says, and every reply comes from the VIP.
    for (vip, client_ip) in [
        (IpAddr::from(testbed::VIP4), IpAddr::from(testbed::CLIENT4)),
        (IpAddr::from(testbed::VIP6), IpAddr::from(testbed::CLIENT6)),
    ] {
        for sport in [40001u16, 40002, 40003, 40004] {
            let vip_sa = SocketAddr::new(vip, UDP_PORT);
            let client_sa = SocketAddr::new(client_ip, sport);
            let names = topo
                .client
                .run_in(move || {
                    let s = UdpSocket::bind(client_sa)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut names = Vec::new();
                    for i in 0..5 {
                        s.send_to(format!("ping {i}").as_bytes(), vip_sa)?;
                        let mut buf = [0u8; 64];
                        let (n, from) = s.recv_from(&mut buf)?;
                        anyhow::ensure!(
                            from == vip_sa,
                            "reply came from {from}, not the VIP {vip_sa}"
                        );
                        names.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    Ok(names)
                })
                .unwrap_or_else(|e| panic!("UDP via {vip_sa} from port {sport}: {e:#}"));
            let want = format!("real{}", expected_real(client_sa, vip_sa, 3));
            assert!(
                names.iter().all(|n| *n == want),
                "UDP {client_sa} → {vip_sa}: replies from {names:?}, the ring says {want}"
            );
        }
    }

    // Every forwarded segment arrived with a correct checksum, in both
    // directions: no receiver counted a checksum error.
    let errors = testbed::csum_errors(topo.reals.iter().chain([&topo.client])).unwrap();
    assert!(
        errors.is_empty(),
        "checksum errors counted:
{}",
        errors.join(
            "
"
        )
    );
    // The partial checksums local senders hand out were completed by the
    // data plane; full ones are left alone (but for the 1 in 65536 that
    // look partial, and are completed just the same).
    std::thread::sleep(Duration::from_millis(1500));
    let completed = global_counter(&lb.log(), "csum_completed");
    let forwarded = global_counter(&lb.log(), "redirect");
    assert!(forwarded > 4000, "{forwarded} packets redirected");
    if wiring.full_checksums {
        assert!(
            completed <= forwarded / 1000,
            "{completed} of {forwarded} full checksums taken for partial ones"
        );
    } else {
        assert!(
            completed >= forwarded * 9 / 10,
            "only {completed} of {forwarded} redirected packets had their partial checksum completed"
        );
    }

    // With lb stopped, nothing reaches the reals: the kernel path is closed.
    drop(lb);
    let bodies =
        testbed::curl_burst(&topo.client, &format!("http://{}/", testbed::VIP4), 1).unwrap();
    assert_eq!(bodies, vec![String::new()], "traffic passed without XDP");
}
