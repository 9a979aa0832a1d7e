//! The path MTU through the LB, end to end, in every mode: client →
//! router → lb → bridge → real, where the router's link to the client has
//! an MTU of 1280 and everything else 1500 (default veth offloads). The
//! real's full-size segments to the client are too big for that link, so
//! the router sends "fragmentation needed" / "packet too big" to their
//! source, the VIP, which it routes to the lb. Only if the lb hands the
//! error on to the real does the real learn the path MTU; otherwise the
//! download stalls (a PMTU black hole). Each mode runs twice: with
//! `icmp_relay = false` (the control: a 1 MB download does not complete)
//! and with the relay (it completes, byte for byte, over IPv4 and IPv6).

use std::net::IpAddr;

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    privileged, real4, real6, Lb, NameServer, Topology, VIP4, VIP6,
};

const LEN: usize = 1_000_000;

fn config(t: &Topology, mode: &str, relay: bool) -> String {
    let mut b = ConfigBuilder::topology(t)
        .no_api()
        .key("icmp_relay", relay)
        .key(
            "encap_source",
            toml::Value::Array(vec!["198.18.250.0/24".into(), "2001:db8:250::/112".into()]),
        );
    for v6 in [false, true] {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        let real: IpAddr = if v6 { real6(1).into() } else { real4(1).into() };
        let mut v = Vip::tcp(vip, 80).mode(mode).real(real, 80);
        if mode == "fullnat" {
            v = v.key(
                "snat",
                toml::Value::Array(vec!["198.18.11.1".into(), "2001:db8:11::1".into()]),
            );
        }
        b = b.vip(v);
    }
    b.build()
}

/// Bytes of a 1 MB download from each VIP, in at most `secs` each.
fn downloads(t: &Topology, secs: u32) -> Vec<(String, Vec<u8>)> {
    [
        format!("http://{VIP4}/blob/{LEN}"),
        format!("http://[{VIP6}]/blob/{LEN}"),
    ]
    .into_iter()
    .map(|url| {
        let out = t
            .client
            .command("curl")
            .args(["-s", "-g", "--max-time", &secs.to_string(), &url])
            .output()
            .unwrap();
        (url, out.stdout)
    })
    .collect()
}

fn pmtu(mode: &str) {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build_dsr(1).expect("topology");
    let router = topo.router.as_ref().expect("router");
    router.ip(&["link", "set", "g0", "mtu", "1280"]).unwrap();
    let _server = NameServer::start(&topo.reals[0], "real1", 80, 8053).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _decap = (mode == "dsr").then(|| {
        Lb::builder(crate::LB, dir.path())
            .name("real1")
            .netns(&topo.reals[0])
            .config(
                ConfigBuilder::new()
                    .no_api()
                    .section("[decap]\ninterfaces = [\"r0\"]\n")
                    .build(),
            )
            .wait_for_xdp(["r0"])
            .start()
            .unwrap_or_else(|e| panic!("decap: {e:#}"))
    });
    if mode == "nat" {
        // The lb is the real's way back to the clients.
        topo.reals[0]
            .ip(&["route", "add", "198.18.0.0/24", "via", "198.18.11.1"])
            .unwrap();
        topo.reals[0]
            .ip(&[
                "-6",
                "route",
                "add",
                "2001:db8::/64",
                "via",
                "2001:db8:11::1",
            ])
            .unwrap();
    }
    topo.block_kernel_forwarding().expect("nft");
    // The lb sends replies (NAT, FullNAT) through the router: resolved
    // first (see `l4_fullnat`).
    for gw in ["198.18.2.1", "2001:db8:2::1"] {
        topo.lb.exec("ping", &["-c", "1", "-W", "2", gw]).unwrap();
    }
    let want: Vec<u8> = (0..LEN).map(testbed::blob_byte).collect();

    // The control: without the relay the segments never fit.
    let lb = topo
        .start_lb(crate::LB, &config(&topo, mode, false), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));
    for (url, got) in downloads(&topo, 4) {
        assert!(
            got.len() < LEN,
            "{mode} {url}: completed without the relay ({} bytes): the path does not need it",
            got.len()
        );
    }
    drop(lb);

    let lb = topo
        .start_lb(crate::LB, &config(&topo, mode, true), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));
    for (url, got) in downloads(&topo, 20) {
        assert_eq!(
            got.len(),
            LEN,
            "{mode} {url}: {} bytes\n--- lb log ---\n{}",
            got.len(),
            lb.log()
        );
        assert!(got == want, "{mode} {url}: the body differs");
    }
    drop(lb);
}

#[test]
fn l4_pmtu_nat() {
    pmtu("nat");
}

#[test]
fn l4_pmtu_fullnat() {
    pmtu("fullnat");
}

#[test]
fn l4_pmtu_dsr() {
    pmtu("dsr");
}

/// The path MTU of a connected UDP socket in `ns` towards `to` after one
/// full-size datagram with DF (the kernel's `IP_MTU` / `IPV6_MTU`).
fn udp_path_mtu(ns: &testbed::Netns, to: std::net::SocketAddr) -> (u32, u32) {
    ns.run_in(move || {
        let bind: std::net::SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let s = std::net::UdpSocket::bind(bind)?;
        s.connect(to)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let (level, opt, val, mtu_opt) = if to.is_ipv4() {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
                libc::IP_MTU,
            )
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
                libc::IPV6_MTU,
            )
        };
        let get = || -> anyhow::Result<u32> {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `v` and `len` are valid for the call.
            let rc =
                unsafe { libc::getsockopt(fd, level, mtu_opt, (&raw mut v).cast(), &raw mut len) };
            anyhow::ensure!(rc == 0, "getsockopt: {}", std::io::Error::last_os_error());
            Ok(v as u32)
        };
        // SAFETY: a valid int option for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&raw const val).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
        let before = get()?;
        let payload = vec![0x42u8; before as usize - if to.is_ipv4() { 28 } else { 48 }];
        s.send(&payload)?;
        // The ICMP answer updates the route's MTU; a bounded wait for it.
        for _ in 0..30 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if get()? < before {
                break;
            }
        }
        Ok((before, get()?))
    })
    .expect("udp probe")
}

/// DSR adds the tunnel's headers: a client datagram that fits the path to
/// the lb but not the tunnel to the real draws "fragmentation needed" /
/// "packet too big" from the VIP with the MTU less the tunnel, and the
/// client's kernel takes it as the path MTU.
#[test]
fn l4_pmtu_dsr_encap_overhead() {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build_dsr(1).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let _decap = Lb::builder(crate::LB, dir.path())
        .name("real1")
        .netns(&topo.reals[0])
        .config(
            ConfigBuilder::new()
                .no_api()
                .section("[decap]\ninterfaces = [\"r0\"]\n")
                .build(),
        )
        .wait_for_xdp(["r0"])
        .start()
        .unwrap_or_else(|e| panic!("decap: {e:#}"));
    topo.block_kernel_forwarding().expect("nft");
    let mut b = ConfigBuilder::topology(&topo).no_api().key(
        "encap_source",
        toml::Value::Array(vec!["198.18.250.0/24".into(), "2001:db8:250::/112".into()]),
    );
    for (vip, port, encap) in [
        (IpAddr::from(VIP4), 9001, "ipip"),
        (IpAddr::from(VIP4), 9002, "gue"),
        (IpAddr::from(VIP6), 9001, "ipip"),
    ] {
        let real: IpAddr = if vip.is_ipv4() {
            real4(1).into()
        } else {
            real6(1).into()
        };
        b = b.vip(
            Vip::udp(vip, port)
                .mode("dsr")
                .key("encap", encap)
                .real(real, port),
        );
    }
    let lb = topo
        .start_lb(crate::LB, &b.build(), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The client keeps one path MTU per destination address: the GUE
    // port's 8 more bytes lower what the IPIP port taught it.
    for (to, want) in [
        (std::net::SocketAddr::new(VIP4.into(), 9001), (1500, 1480)),
        (std::net::SocketAddr::new(VIP4.into(), 9002), (1480, 1472)),
        (std::net::SocketAddr::new(VIP6.into(), 9001), (1500, 1460)),
    ] {
        assert_eq!(
            udp_path_mtu(&topo.client, to),
            want,
            "{to}: path MTU before and after a full-size datagram\n--- lb log ---\n{}",
            lb.log()
        );
    }
    drop(lb);
}
