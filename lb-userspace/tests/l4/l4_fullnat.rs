//! FullNAT end to end: client → router → lb (XDP) → bridge → three reals
//! whose default route is the router, not the lb, and which have no
//! configuration for the balancer at all. Each real sees its connections
//! come from the lb's SNAT address (real 1 on its own subnet, the others
//! through the router), answers it, and the lb turns the answer back into
//! VIP → client. Kernel forwarding in the lb namespace is dropped by
//! nftables, so only XDP moves packets there. Default offloads (partial
//! checksums) everywhere.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    privileged, real4, real6, NameServer, Topology, VIP4, VIP6,
};

const UDP_PORT: u16 = 8053;
const SNAT4: &str = "198.18.11.1";
const SNAT6: &str = "2001:db8:11::1";

fn lb_config(t: &Topology) -> String {
    let mut b = ConfigBuilder::topology(t).no_api();
    for v6 in [false, true] {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        for (port, proto) in [(80, "tcp"), (UDP_PORT, "udp")] {
            let mut v = Vip::new(vip, port, proto)
                .mode("fullnat")
                .key("snat", toml::Value::Array(vec![SNAT4.into(), SNAT6.into()]));
            for i in 1..=t.reals.len() {
                let real: IpAddr = if v6 { real6(i).into() } else { real4(i).into() };
                v = v.real(real, port);
            }
            b = b.vip(v);
        }
    }
    b.build()
}

#[test]
fn fullnat_end_to_end() {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build_dsr(3).expect("topology");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 80, UDP_PORT).unwrap());
    // The reals' routes: none through the lb.
    for (i, ns) in topo.reals.iter().enumerate() {
        let routes = ns.exec("ip", &["route", "show", "default"]).unwrap();
        assert!(
            routes.contains(&format!("via 198.18.{}.3", 11 + i)),
            "real{}: default route {routes}",
            i + 1
        );
    }
    let dir = tempfile::tempdir().unwrap();
    topo.block_kernel_forwarding().expect("nft");
    // Replies leave through the router, which the lb must know as a
    // neighbour. A reply whose next hop is unresolved is passed to the
    // kernel (`fib_miss`), which would forward it and resolve the
    // neighbour; with kernel forwarding dropped here it never does, so the
    // lb resolves the router first, as any traffic of its own would.
    for gw in ["198.18.2.1", "2001:db8:2::1"] {
        topo.lb
            .exec("ping", &["-c", "1", "-W", "2", gw])
            .unwrap_or_else(|e| panic!("ping {gw} from the lb: {e:#}"));
    }
    let lb = topo
        .start_lb(crate::LB, &lb_config(&topo), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));

    // 1800 requests per VIP: ±20% of an equal share is 6 standard
    // deviations of a binomial count. (One client's sequential source
    // ports do not hash quite independently: over all 64,511 ports of the
    // test client the ring's shares are 33.2/34.0/32.8%, and 900 requests
    // fell 2 short of the bound once.) Every real sees the SNAT address
    // as the client.
    for (url, snat) in [
        (format!("http://{VIP4}/peer"), SNAT4),
        (format!("http://[{VIP6}]/peer"), SNAT6),
    ] {
        let n = 1800;
        let bodies = testbed::curl_burst(&topo.client, &url, n).unwrap();
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for b in &bodies {
            *spread.entry(b.clone()).or_default() += 1;
        }
        let failed = bodies.iter().filter(|b| b.is_empty()).count();
        assert_eq!(
            failed,
            0,
            "{url}: {failed} of {n} failed; {spread:?}\n--- lb log ---\n{}",
            lb.log()
        );
        for r in ["real1", "real2", "real3"] {
            let got = spread.get(&format!("{r} {snat}")).copied().unwrap_or(0);
            assert!(
                (n / 3 * 8 / 10..=n / 3 * 12 / 10).contains(&got),
                "{url}: {r} got {got} of {n} from {snat}; {spread:?}"
            );
        }
    }

    // A 50 MB download, byte for byte, over each family.
    let len = 50_000_000usize;
    let want: Vec<u8> = (0..len).map(testbed::blob_byte).collect();
    for url in [
        format!("http://{VIP4}/blob/{len}"),
        format!("http://[{VIP6}]/blob/{len}"),
    ] {
        let out = topo
            .client
            .command("curl")
            .args(["-s", "-g", "--max-time", "60", &url])
            .output()
            .unwrap();
        assert_eq!(out.stdout.len(), len, "{url}: {} bytes", out.stdout.len());
        assert!(out.stdout == want, "{url}: the body differs");
    }

    // UDP: a connected socket only accepts datagrams from the VIP.
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        let to = SocketAddr::new(vip, UDP_PORT);
        let names = testbed::udp_connected_asks(&topo.client, to, 5)
            .unwrap_or_else(|e| panic!("UDP to {to}: {e:#}\n--- lb log ---\n{}", lb.log()));
        assert!(
            names
                .iter()
                .all(|n| n == &names[0] && n.starts_with("real")),
            "UDP {to}: {names:?}"
        );
    }

    // No checksum errors anywhere the packets were rewritten for.
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
    std::thread::sleep(Duration::from_millis(1500));
    let log = lb.log();
    assert!(
        !log.contains("drop_snat_exhausted="),
        "ports ran out:\n{log}"
    );
}
