//! Neighbour resolution over netlink, in two namespaces joined by a veth:
//!
//! ```text
//!  near ns                                   far ns
//!  n0 198.18.60.1/24, 2001:db8:60::1/64 ──── f0 198.18.60.2/24, 2001:db8:60::2/64
//!  default via 198.18.60.2 / 2001:db8:60::2   (no default route)
//! ```
//!
//! Everything that talks netlink runs on a thread inside `near`: a netlink
//! socket belongs to the namespace of the thread that opened it. The
//! answers are checked against `ip` in the same namespace.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_userspace::{
    config::Config,
    l4::{
        dataplane::{Dataplane, LoadOptions},
        neighbours::{NeighbourError, Netlink, NextHop, Resolver},
    },
    testbed::{
        self,
        config::{ConfigBuilder, Vip},
        privileged, Netns,
    },
};

const NEAR4: &str = "198.18.60.1";
const NEAR6: &str = "2001:db8:60::1";
const FAR4: &str = "198.18.60.2";
const FAR6: &str = "2001:db8:60::2";
/// Behind the far namespace (routed by the default routes).
const BEHIND4: &str = "198.18.61.5";
const BEHIND6: &str = "2001:db8:61::5";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Pair {
    near: Netns,
    far: Netns,
}

fn pair() -> Pair {
    let near = Netns::new("lbnn").expect("netns");
    let far = Netns::new("lbnf").expect("netns");
    testbed::veth_plain(&near, "n0", &far, "f0").expect("veth");
    near.ip(&["addr", "add", &format!("{NEAR4}/24"), "dev", "n0"])
        .unwrap();
    near.ip(&["addr", "add", &format!("{NEAR6}/64"), "dev", "n0", "nodad"])
        .unwrap();
    far.ip(&["addr", "add", &format!("{FAR4}/24"), "dev", "f0"])
        .unwrap();
    far.ip(&["addr", "add", &format!("{FAR6}/64"), "dev", "f0", "nodad"])
        .unwrap();
    near.ip(&["route", "add", "default", "via", FAR4]).unwrap();
    near.ip(&["-6", "route", "add", "default", "via", FAR6])
        .unwrap();
    Pair { near, far }
}

/// `ip neigh show ADDR dev DEV` in `ns` (empty when there is no entry).
fn neigh(ns: &Netns, addr: &str, dev: &str) -> String {
    ns.ip(&["neigh", "show", addr, "dev", dev])
        .unwrap()
        .trim()
        .to_string()
}

/// Waits (bounded) until the entry for `addr` is REACHABLE; returns the
/// last `ip neigh` line.
fn wait_reachable(ns: &Netns, addr: &str, dev: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = neigh(ns, addr, dev);
        if s.contains("REACHABLE") || start.elapsed() > timeout {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (a) A directly connected peer gets a managed entry that the kernel
/// resolves; the resolver is spawned in the namespace and used from the
/// test's own thread.
#[test]
fn a_direct_peer_gets_a_managed_entry_that_becomes_reachable() {
    if !privileged() {
        return;
    }
    let p = pair();
    assert_eq!(neigh(&p.near, FAR4, "n0"), "", "no entry before");
    let resolver = p.near.run_in(|| Ok(Resolver::spawn()?)).expect("resolver");
    assert!(
        resolver.request_and_wait(vec![ip(FAR4), ip(FAR6)], vec![], Duration::from_secs(10)),
        "the resolver did not finish within 10 s"
    );
    for addr in [FAR4, FAR6] {
        let s = neigh(&p.near, addr, "n0");
        assert!(s.contains("managed"), "{addr}: not managed: {s:?}");
        let s = wait_reachable(&p.near, addr, "n0", Duration::from_secs(10));
        assert!(s.contains("REACHABLE"), "{addr}: not reachable: {s:?}");
    }
    // Resolving again keeps the entry reachable.
    assert!(resolver.request_and_wait(vec![ip(FAR4)], vec![], Duration::from_secs(10)));
    let s = neigh(&p.near, FAR4, "n0");
    assert!(
        s.contains("managed") && s.contains("REACHABLE"),
        "after a second replace: {s:?}"
    );
}

/// (b) A real behind a gateway resolves the gateway, not the real.
#[test]
fn a_real_behind_a_gateway_resolves_the_gateway() {
    if !privileged() {
        return;
    }
    let p = pair();
    let got = p
        .near
        .run_in(|| {
            let mut nl = Netlink::open()?;
            let n0 = nl.interface_index("n0")?;
            let hops = [nl.resolve(ip(BEHIND4))?, nl.resolve(ip(BEHIND6))?];
            Ok((n0, hops))
        })
        .expect("resolve");
    let (n0, hops) = got;
    assert_eq!(
        hops,
        [
            NextHop {
                ifindex: n0,
                address: ip(FAR4)
            },
            NextHop {
                ifindex: n0,
                address: ip(FAR6)
            }
        ]
    );
    for (gw, real) in [(FAR4, BEHIND4), (FAR6, BEHIND6)] {
        let s = neigh(&p.near, gw, "n0");
        assert!(s.contains("managed"), "gateway {gw}: {s:?}");
        assert_eq!(neigh(&p.near, real, "n0"), "", "no entry for {real}");
    }
}

/// (c) The gateways of the routes through an interface: the default
/// routes' gateways, v4 and v6; none on an interface without such routes.
#[test]
fn gateways_of_an_interface_are_the_default_routes_gateways() {
    if !privileged() {
        return;
    }
    let p = pair();
    let (near, far) = (
        p.near
            .run_in(|| Ok(Netlink::open()?.gateways("n0")?))
            .unwrap(),
        p.far
            .run_in(|| Ok(Netlink::open()?.gateways("f0")?))
            .unwrap(),
    );
    assert_eq!(near, vec![ip(FAR4), ip(FAR6)]);
    assert!(far.is_empty(), "{far:?}");
}

/// (d) A local address, an unroutable address, a missing interface and a
/// neighbour on a missing interface give their typed errors, with
/// messages that name the address or device.
#[test]
fn local_unroutable_and_missing_give_typed_errors() {
    if !privileged() {
        return;
    }
    let p = pair();
    let near = p
        .near
        .run_in(|| {
            let mut nl = Netlink::open()?;
            Ok([
                nl.route_to(ip(NEAR4)),
                nl.route_to(ip(NEAR6)),
                nl.route_to(ip("127.0.0.1")),
            ])
        })
        .unwrap();
    for (r, addr) in near.iter().zip([NEAR4, NEAR6, "127.0.0.1"]) {
        match r {
            Err(e @ NeighbourError::Local { addr: a }) => {
                assert_eq!(*a, ip(addr));
                assert!(e.to_string().contains(addr), "{e}");
            }
            other => panic!("{addr}: expected a Local error, got {other:?}"),
        }
    }
    // The far namespace has no default route.
    let far = p
        .far
        .run_in(|| {
            let mut nl = Netlink::open()?;
            Ok((
                [nl.route_to(ip(BEHIND4)), nl.route_to(ip(BEHIND6))],
                nl.gateways("nosuch0"),
                nl.replace_managed(1_000_000, ip(NEAR4)),
            ))
        })
        .unwrap();
    let (routes, missing_iface, missing_dev) = far;
    for (r, addr) in routes.iter().zip([BEHIND4, BEHIND6]) {
        match r {
            Err(e @ NeighbourError::NoRoute { addr: a, .. }) => {
                assert_eq!(*a, ip(addr));
                assert!(
                    e.to_string().starts_with(&format!("no route to {addr}: ")),
                    "{e}"
                );
            }
            other => panic!("{addr}: expected NoRoute, got {other:?}"),
        }
    }
    match missing_iface {
        Err(e @ NeighbourError::NoInterface { .. }) => {
            assert_eq!(e.to_string(), "interface `nosuch0` does not exist");
        }
        other => panic!("expected NoInterface, got {other:?}"),
    }
    match missing_dev {
        Err(e @ NeighbourError::Neighbour { .. }) => {
            let s = e.to_string();
            assert!(s.contains(NEAR4) && s.contains("1000000"), "{s}");
        }
        other => panic!("expected a Neighbour error, got {other:?}"),
    }
}

/// `ip -j route get ADDR` → (device, next hop), as the `ip`-based code
/// before netlink read it.
fn ip_route_get(ns: &Netns, addr: &str) -> (String, IpAddr) {
    let out = ns.ip(&["-j", "route", "get", addr]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v[0];
    let dev = r["dev"].as_str().unwrap().to_string();
    let nh = r["gateway"]
        .as_str()
        .map_or_else(|| ip(addr), |g| g.parse().unwrap());
    (dev, nh)
}

/// `ip -j -4/-6 route show dev IFACE` → gateways, likewise.
fn ip_gateways(ns: &Netns, iface: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let s = ns.ip(&["-j", fam, "route", "show", "dev", iface]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        for r in v.as_array().unwrap() {
            if let Some(g) = r["gateway"].as_str() {
                out.push(g.parse().unwrap());
            }
        }
    }
    out
}

/// (e) For the same inputs, netlink gives what `ip` gives, with a second
/// route through the interface besides the default ones.
#[test]
fn netlink_agrees_with_ip() {
    if !privileged() {
        return;
    }
    let p = pair();
    p.near
        .ip(&["route", "add", "198.18.62.0/24", "via", "198.18.60.3"])
        .unwrap();
    let addrs = [FAR4, FAR6, BEHIND4, BEHIND6, "198.18.62.9"];
    let (hops, gws) = p
        .near
        .run_in(move || {
            let mut nl = Netlink::open()?;
            let mut hops = Vec::new();
            for a in addrs {
                let nh = nl.route_to(ip(a))?;
                hops.push((nl.interface_name(nh.ifindex)?, nh.address));
            }
            Ok((hops, nl.gateways("n0")?))
        })
        .unwrap();
    for (a, got) in addrs.iter().zip(&hops) {
        assert_eq!(*got, ip_route_get(&p.near, a), "route to {a}");
    }
    let mut want = ip_gateways(&p.near, "n0");
    let mut gws = gws;
    want.sort();
    gws.sort();
    assert_eq!(gws, want);
}

/// The data plane hands its targets to the resolver: every real of the
/// applied VIPs and the gateways of the attached interface get managed
/// entries, without `resolve_neighbours` waiting for them.
#[test]
fn the_data_plane_resolves_reals_and_gateways() {
    if !privileged() {
        return;
    }
    let p = pair();
    let cfg = Config::parse(
        &ConfigBuilder::new()
            .vip(
                Vip::tcp(testbed::VIP4.into(), 80)
                    .real(FAR4.parse().unwrap(), 8080)
                    .real(BEHIND4.parse().unwrap(), 8080),
            )
            .vip(Vip::tcp(testbed::VIP6.into(), 80).real(BEHIND6.parse().unwrap(), 8080))
            .build(),
    )
    .unwrap();
    let finished = p
        .near
        .run_in(move || {
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            dp.apply(&cfg.vips)?;
            dp.attach("n0")?;
            let started = Instant::now();
            let generation = dp.resolve_neighbours();
            let returned_after = started.elapsed();
            let done = dp.neighbours().wait(generation, Duration::from_secs(10));
            Ok((returned_after, done))
        })
        .unwrap();
    let (returned_after, done) = finished;
    assert!(done, "the resolver did not finish within 10 s");
    assert!(
        returned_after < Duration::from_millis(100),
        "resolve_neighbours took {returned_after:?}"
    );
    for addr in [FAR4, FAR6] {
        let s = neigh(&p.near, addr, "n0");
        assert!(s.contains("managed"), "{addr}: {s:?}");
    }
    for real in [BEHIND4, BEHIND6] {
        assert_eq!(neigh(&p.near, real, "n0"), "", "no entry for {real}");
    }
}
