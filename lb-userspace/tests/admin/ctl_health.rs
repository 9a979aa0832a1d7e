//! Health checks drive the rings: a real whose server stops leaves the
//! VIP's ring within fall × interval (+ one interval) and every request
//! still succeeds; started again, it takes traffic within rise × interval
//! (+ one interval). Each state change is logged once, with its reason.

use std::time::{Duration, Instant};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Health, Vip},
    http_names, privileged, tally, NameServer, Topology,
};

const HTTP_PORT: u16 = 8080;
const INTERVAL: Duration = Duration::from_millis(500);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Scheduling slack on a small, busy machine (probes jitter by ±10% and a
/// failing probe may take up to its timeout).
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn a_failed_real_leaves_the_ring_and_comes_back() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let mut servers: Vec<Option<NameServer>> =
        topo.on_reals(|ns, name| Some(NameServer::start(ns, name, HTTP_PORT, 8053).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let health = Health::http("/")
        .interval(&format!("{}ms", INTERVAL.as_millis()))
        .timeout("300ms")
        .rise(RISE)
        .fall(FALL);
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(health)
                .reals4(&[1, 2, 3], HTTP_PORT),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));

    let before = tally(http_names(&topo, 60).unwrap());
    assert_eq!(
        before.get("").copied().unwrap_or(0),
        0,
        "failures before any change: {before:?}"
    );
    assert!(before.get("real2").copied().unwrap_or(0) > 0, "{before:?}");

    // Stop real2's server: probes are refused from now on.
    servers[1] = None;
    let stopped = Instant::now();
    let out_deadline = INTERVAL * FALL + INTERVAL + SLACK;
    let mut left_after = None;
    while stopped.elapsed() < out_deadline + Duration::from_secs(5) {
        let v = lb.cli_json(&["health"]);
        let r2 = v["reals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["real"].as_str().unwrap().starts_with("198.18.12.2"))
            .cloned()
            .unwrap();
        if r2["health"] == "down" && r2["in_ring"] == false {
            left_after = Some(stopped.elapsed());
            assert!(
                r2["last_failure"]
                    .as_str()
                    .unwrap_or("")
                    .contains("refused"),
                "last failure should say why: {r2}"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left_after =
        left_after.unwrap_or_else(|| panic!("real2 never left the ring\n{}", lb.log()));
    assert!(
        left_after <= out_deadline,
        "real2 left the ring after {left_after:?}, more than fall × interval + interval (+{SLACK:?} slack)"
    );
    let during = tally(http_names(&topo, 90).unwrap());
    assert_eq!(
        during.get("").copied().unwrap_or(0),
        0,
        "requests failed with real2 out: {during:?}"
    );
    assert_eq!(
        during.get("real2"),
        None,
        "real2 is out of the ring but got requests: {during:?}"
    );
    assert!(
        during.contains_key("real1") && during.contains_key("real3"),
        "{during:?}"
    );

    // Start it again.
    servers[1] = Some(NameServer::start(&topo.reals[1], "real2", HTTP_PORT, 8053).unwrap());
    let started = Instant::now();
    let in_deadline = INTERVAL * RISE + INTERVAL + SLACK;
    let mut back_after = None;
    while started.elapsed() < in_deadline + Duration::from_secs(5) {
        let v = lb.cli_json(&["vip", "list"]);
        let r2 = &v["vips"][0]["reals"][1];
        if r2["health"] == "up" && r2["effective_weight"] == 1 {
            back_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_after = back_after.unwrap_or_else(|| panic!("real2 never came back\n{}", lb.log()));
    assert!(
        back_after <= in_deadline,
        "real2 came back after {back_after:?}, more than rise × interval + interval (+{SLACK:?} slack)"
    );
    let after = tally(http_names(&topo, 90).unwrap());
    assert_eq!(after.get("").copied().unwrap_or(0), 0, "{after:?}");
    let r2 = after.get("real2").copied().unwrap_or(0);
    assert!(
        (15..=45).contains(&r2),
        "real2 should take about a third again: {after:?}"
    );

    // One log line per state change of real2, each with its reason.
    let log = lb.log();
    let down: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("198.18.12.2:8080 is down"))
        .collect();
    assert_eq!(down.len(), 1, "one ring-exit line expected:\n{log}");
    assert!(down[0].contains("refused"), "{}", down[0]);
    let up = log
        .lines()
        .filter(|l| l.contains("198.18.12.2:8080 is up, back in the ring"))
        .count();
    assert_eq!(up, 1, "one ring-return line expected:\n{log}");
}

#[test]
fn every_real_down_keeps_the_last_ring() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(2).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let dir = tempfile::tempdir().unwrap();
    // Health probes a port nothing listens on: every real goes down, but
    // traffic to the service port keeps flowing (all_down = keep).
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, HTTP_PORT, 8053).unwrap());
    let health = Health::tcp()
        .port(9)
        .interval("200ms")
        .timeout("100ms")
        .fall(1);
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(health)
                .reals4(&[1, 2], HTTP_PORT),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let start = Instant::now();
    loop {
        let s = lb.cli_json(&["status"]);
        if s["vips_all_down"].as_array().is_some_and(|a| a.len() == 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never all down: {s}\n{}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = http_names(&topo, 30).unwrap();
    assert!(
        names.iter().all(|n| !n.is_empty()),
        "all_down = keep must not black-hole: {names:?}"
    );
    let log = lb.log();
    assert_eq!(
        log.matches("every real is down; all_down = keep").count(),
        1,
        "logged once:\n{log}"
    );
    let m = lb.cli(&["health"]).unwrap();
    assert!(m.contains("every real down"), "{m}");
}
