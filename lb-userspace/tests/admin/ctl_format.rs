//! Operator formats of the CLI against a running daemon: `lb vip list
//! --format ipvsadm` (the exact lines for NAT, FullNAT and DSR VIPs, with a
//! draining and a down real) and `lb stats --watch` (rates from the second
//! report on; redrawn in place on a terminal).

use std::time::{Duration, Instant};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Health, Real, Vip},
    http_names, privileged, real4, real6, NameServer, Topology,
};
use serde_json::Value;

const VIP: &str = "198.18.100.1:80/tcp";

/// The counters (NewFlows, Packets) of `real` in an ipvsadm table.
fn counters(table: &str, real: &str) -> (u64, u64) {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("  -> {real} ")))
        .unwrap_or_else(|| panic!("no line for {real}:\n{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[4].parse().unwrap(), cols[5].parse().unwrap())
}

#[test]
fn ipvsadm_table_and_watch_rates() {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 8080, 8053).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .key(
            "encap_source",
            toml::Value::Array(vec!["198.18.250.0/24".into()]),
        )
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(Health::tcp().interval("200ms").timeout("150ms"))
                .real_with(Real::new(real4(1).into(), 8080).weight(2))
                .real(real4(2).into(), 8080)
                // Nothing listens there: the real goes down.
                .real(real4(3).into(), 8081),
        )
        .vip(
            Vip::udp(testbed::VIP6.into(), 8053)
                .mode("fullnat")
                .key("snat", toml::Value::Array(vec!["2001:db8:11::1".into()]))
                .key("ring_size", 4099i64)
                .real(real6(1).into(), 8053)
                .real(real6(2).into(), 8053),
        )
        .vip(
            Vip::tcp("198.18.100.4".parse().unwrap(), 80)
                .mode("dsr")
                .key("encap", "gue")
                .real(real4(1).into(), 80),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Wait until the health checks settled: reals 1 and 2 up, real 3 down.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = lb.cli_json(&["vip", "list"]);
        let health: Vec<&str> = v["vips"][0]["reals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["health"].as_str().unwrap_or(""))
            .collect();
        if health == ["up", "up", "down"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health did not settle: {health:?}\n{v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let real2 = format!("{}:8080", real4(2));
    lb.cli(&["real", "drain", VIP, &real2]).unwrap();

    let table = lb.cli(&["vip", "list", "--format", "ipvsadm"]).unwrap();
    let expected = "\
lb virtual server table, ipvsadm -Ln layout (scheduler maglev; Weight: weight in the ring; NewFlows, Packets: totals since start, not active connections)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight NewFlows   Packets
TCP  198.18.100.1:80 maglev
  -> 198.18.11.2:8080             Masq    2      0          0
  -> 198.18.12.2:8080             Masq    0      0          0          draining
  -> 198.18.13.2:8081             Masq    0      0          0          down
UDP  [2001:db8:100::1]:8053 maglev ring 4099
  -> [2001:db8:11::2]:8053        FullNat 1      0          0
  -> [2001:db8:12::2]:8053        FullNat 1      0          0
TCP  198.18.100.4:80 maglev gue:6080
  -> 198.18.11.2:80               Tunnel  1      0          0
";
    assert_eq!(table, expected, "got:\n{table}");
    // The default stays lb's own table; --json stays the API's JSON.
    let default = lb.cli(&["vip", "list"]).unwrap();
    assert!(default.starts_with("VIP "), "{default}");
    assert_eq!(
        lb.cli(&["vip", "list"]).unwrap(),
        lb.cli(&["vip", "list", "--format", "table"]).unwrap()
    );
    let json: Value = serde_json::from_str(
        &lb.cli(&["vip", "list", "--format", "ipvsadm", "--json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["vips"].as_array().unwrap().len(), 3, "{json}");

    // Traffic: every new flow goes to real 1 (real 2 drains, real 3 is down).
    let names = http_names(&topo, 20).unwrap();
    assert!(names.iter().all(|n| n == "real1"), "{names:?}");
    let table = lb.cli(&["vip", "list", "--format", "ipvsadm"]).unwrap();
    let (flows, packets) = counters(&table, "198.18.11.2:8080");
    assert!(flows >= 20 && packets >= 5 * 20, "{table}");
    assert_eq!(counters(&table, &real2), (0, 0), "{table}");

    // --watch into a pipe: separate reports, rates from the second on,
    // measured while traffic flows.
    let watcher = std::thread::scope(|s| {
        let w = s.spawn(|| lb.cli(&["stats", "--watch", "2", "--count", "2"]).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        http_names(&topo, 20).unwrap();
        w.join().unwrap()
    });
    assert_eq!(watcher.matches("drops:").count(), 2, "{watcher}");
    assert!(
        !watcher.contains('\x1b'),
        "no escapes into a pipe: {watcher}"
    );
    let (first, second) = watcher.split_once("\n\n").expect("two reports");
    assert!(first.starts_with("--- "), "{first}");
    assert!(first.contains("rates: from the next report on"), "{first}");
    assert!(second.starts_with("--- "), "{second}");
    let rates = second
        .lines()
        .find(|l| l.starts_with("rates over "))
        .unwrap_or_else(|| panic!("no rates in the second report:\n{second}"));
    // "rates over 2.00s: 123.0 packets/s, 20.0 new flows/s, 0.0 drops/s"
    let num = |unit: &str| -> f64 {
        let before = rates.split(unit).next().unwrap();
        before
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{unit} in `{rates}`: {e}"))
    };
    assert!(num(" packets/s") > 0.0, "{rates}");
    assert!(num(" new flows/s") > 0.0, "{rates}");
    assert!(num(" drops/s") >= 0.0, "{rates}");

    // On a terminal (a pty from script(1)), each report redraws the screen.
    if std::path::Path::new("/usr/bin/script").exists() {
        let cmd = format!(
            "{} stats --watch 0.2 --count 2 --socket {}",
            crate::LB,
            lb.socket.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{tty}");
        assert_eq!(tty.matches("\x1b[H\x1b[2J").count(), 2, "{tty:?}");
        assert_eq!(tty.matches("rates over ").count(), 1, "{tty:?}");
    } else {
        eprintln!("skipping the terminal half of --watch: no /usr/bin/script");
    }
}
