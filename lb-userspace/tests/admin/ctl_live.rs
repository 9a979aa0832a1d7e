//! Live changes through the CLI while connections are open: adding and
//! removing reals does not reset connections to untouched reals; draining
//! a real keeps its connections working and sends new ones elsewhere.

use std::net::SocketAddr;

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    privileged, tally,
    tcp::{open_conns, Mode, Server},
    Topology,
};

const ECHO: u16 = 9000;
const VIP: &str = "198.18.100.1:9000/tcp";

#[test]
fn add_remove_and_drain_keep_untouched_connections() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(4).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<Server> =
        topo.on_reals(|ns, name| Server::start(ns, name, ECHO, Mode::Echo).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .vip(
            Vip::tcp(testbed::VIP4.into(), ECHO)
                .drain_timeout("10m")
                .reals4(&[1, 2, 3], ECHO),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vip_sa = SocketAddr::new(testbed::VIP4.into(), ECHO);

    let mut held = open_conns(&topo.client, vip_sa, 30).expect("open connections");
    let spread = tally(held.iter().map(|c| c.real.as_str()));
    for r in ["real1", "real2", "real3"] {
        assert!(
            spread.get(r).copied().unwrap_or(0) >= 3,
            "uneven start: {spread:?}"
        );
    }
    assert_eq!(
        spread.get("real4"),
        None,
        "real4 is not configured yet: {spread:?}"
    );

    // Add real4, remove real3.
    let real4 = format!("{}:{ECHO}", testbed::real4(4));
    let real3 = format!("{}:{ECHO}", testbed::real4(3));
    lb.cli(&["real", "add", VIP, &real4])
        .unwrap_or_else(|e| panic!("real add: {e}"));
    lb.cli(&["real", "del", VIP, &real3])
        .unwrap_or_else(|e| panic!("real del: {e}"));
    let list = lb.cli_json(&["vip", "list"]);
    let reals: Vec<&str> = list["vips"][0]["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["real"].as_str().unwrap())
        .collect();
    assert_eq!(reals.len(), 3, "{list}");
    assert!(
        reals.contains(&real4.as_str()) && !reals.contains(&real3.as_str()),
        "{reals:?}"
    );

    // Every connection to real1/real2 still works, on the same real.
    held = topo
        .client
        .run_in(move || {
            let mut broken = Vec::new();
            for (i, c) in held.iter_mut().enumerate() {
                if c.real == "real3" {
                    continue;
                }
                match c.ping(&format!("after-change{i}")) {
                    Ok(name) if name == c.real => {}
                    Ok(name) => broken.push(format!("conn {i}: moved from {} to {name}", c.real)),
                    Err(e) => broken.push(format!("conn {i} to {}: {e}", c.real)),
                }
            }
            anyhow::ensure!(broken.is_empty(), "untouched connections broke: {broken:?}");
            Ok(held)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lb.log()));

    // New connections: real4 takes some, real3 none.
    let fresh = open_conns(&topo.client, vip_sa, 30).expect("open connections");
    let fs = tally(fresh.iter().map(|c| c.real.as_str()));
    assert!(
        fs.get("real4").copied().unwrap_or(0) > 0,
        "real4 got no new connection: {fs:?}"
    );
    assert_eq!(
        fs.get("real3"),
        None,
        "removed real3 got new connections: {fs:?}"
    );
    drop(fresh);

    // Drain real1: its connections keep working, new ones go elsewhere.
    let real1 = format!("{}:{ECHO}", testbed::real4(1));
    lb.cli(&["real", "drain", VIP, &real1])
        .unwrap_or_else(|e| panic!("drain: {e}"));
    let on_real1 = held.iter().filter(|c| c.real == "real1").count();
    assert!(on_real1 > 0);
    topo.client
        .run_in(move || {
            for (i, c) in held.iter_mut().enumerate() {
                if c.real == "real1" || c.real == "real2" {
                    let name = c
                        .ping(&format!("draining{i}"))
                        .map_err(|e| anyhow::anyhow!("conn {i} to {}: {e}", c.real))?;
                    anyhow::ensure!(name == c.real, "conn {i} moved from {} to {name}", c.real);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("drained real's connection broke: {e:#}\n{}", lb.log()));
    let fresh = open_conns(&topo.client, vip_sa, 30).expect("open connections");
    let fs = tally(fresh.iter().map(|c| c.real.as_str()));
    assert_eq!(
        fs.get("real1"),
        None,
        "drained real1 got new connections: {fs:?}"
    );
    let v = lb.cli_json(&["vip", "list"]);
    let r1 = v["vips"][0]["reals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["real"] == real1.as_str())
        .cloned()
        .unwrap();
    assert_eq!(r1["draining"], true, "{r1}");
    assert_eq!(r1["weight"], 0, "{r1}");
    // The conntrack dump shows the held connections to the drained real.
    let conns = lb.cli_json(&["conns", "--vip", VIP, "--limit", "1000"]);
    let to_real1 = conns["conns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["real"] == real1.as_str())
        .count();
    assert!(
        to_real1 >= on_real1,
        "conntrack shows {to_real1} flows to real1, {on_real1} held: {conns}"
    );
}

#[test]
fn drain_timeout_ends_remaining_flows() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(2).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<Server> =
        topo.on_reals(|ns, name| Server::start(ns, name, ECHO, Mode::Echo).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .vip(
            Vip::tcp(testbed::VIP4.into(), ECHO)
                .drain_timeout("2s")
                .reals4(&[1, 2], ECHO),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vip_sa = SocketAddr::new(testbed::VIP4.into(), ECHO);
    let mut held = open_conns(&topo.client, vip_sa, 12).expect("open connections");
    assert!(
        held.iter().any(|c| c.real == "real1"),
        "no connection to real1"
    );
    let real1 = format!("{}:{ECHO}", testbed::real4(1));
    lb.cli(&["real", "drain", VIP, &real1]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let log = lb.log();
    assert!(log.contains("drain of 198.18.11.2:9000 finished"), "{log}");
    // Connections to real1 lost their real (the next packet reaches
    // real2, which resets it); those to real2 are untouched.
    topo.client
        .run_in(move || {
            for (i, c) in held.iter_mut().enumerate() {
                let r = c.ping(&format!("late{i}"));
                if c.real == "real1" {
                    anyhow::ensure!(
                        r.is_err(),
                        "conn {i} to drained real1 still works after the drain timeout"
                    );
                } else {
                    anyhow::ensure!(r.is_ok(), "conn {i} to real2 broke: {r:?}");
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lb.log()));
}
