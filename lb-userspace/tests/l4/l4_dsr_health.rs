//! Health checks of DSR VIPs travel the tunnel: the DSR lab (client →
//! router → lb → bridge → three reals), where real1 is a complete DSR real
//! (`[decap]` running, the VIPs on `lo`), real2 runs decap but lacks the
//! VIPs on `lo`, and real3 holds the VIPs but runs no decap. Every real
//! serves on its own address, so a plain TCP check would pass for all
//! three; the encapsulated checks mark real2 and real3 down, for IPIP,
//! IP6IP6, 4-in-6, 6-in-4 and GUE, TCP, HTTP and DNS checks, and bring each back
//! once it is fixed. Default offloads.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Health, Vip},
    privileged, real4, real6, Lb, NameServer, Topology, VIP4, VIP6,
};

const DNS_PORT: u16 = 5353;
/// (port, protocol, encap, reals of the other family).
/// Port 83 has an `http` check, the others `tcp` or `udp-dns`.
const SERVICES: [(u16, &str, &str, bool); 5] = [
    (80, "tcp", "ipip", false),
    (81, "tcp", "ipip", true),
    (82, "tcp", "gue", false),
    (83, "tcp", "gue", true),
    (DNS_PORT, "udp", "gue", false),
];
/// A state change takes fall (or rise) probes of 300ms, plus jitter; on a
/// busy machine allow far more.
const CHANGE_WITHIN: Duration = Duration::from_secs(15);

/// A DNS responder bound to the VIPs on `DNS_PORT` (with `IP_FREEBIND`, so
/// also on a real that lacks them): answers every query with its question,
/// QR set, NOERROR. Stops when dropped.
struct DnsOnVip {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl DnsOnVip {
    fn start(ns: &testbed::Netns) -> DnsOnVip {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let mut socks = Vec::new();
            for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
                let addr = SocketAddr::new(vip, DNS_PORT);
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM,
                    None,
                )?;
                if vip.is_ipv4() {
                    s.set_freebind_v4(true)?;
                } else {
                    s.set_freebind_v6(true)?;
                }
                s.bind(&addr.into())?;
                let s: UdpSocket = s.into();
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                socks.push(s);
            }
            let _ = ready_tx.send(());
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                for s in &socks {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        if n >= 12 {
                            buf[2] |= 0x80; // QR
                            buf[3] &= 0xf0; // NOERROR
                            let _ = s.send_to(&buf[..n], peer);
                        }
                    }
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("DNS responder bound to the VIPs");
        DnsOnVip {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsOnVip {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lb_config(t: &Topology, sock: &std::path::Path) -> String {
    let mut b = ConfigBuilder::topology(t).api_socket(sock).key(
        "encap_source",
        toml::Value::Array(vec!["198.18.250.0/24".into(), "2001:db8:250::/112".into()]),
    );
    for v6 in [false, true] {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        for (port, proto, encap, cross) in SERVICES {
            let health = if proto == "udp" {
                Health::kind("udp-dns").key("query", "example.test.")
            } else if port == 83 {
                Health::http("/")
            } else {
                Health::tcp()
            }
            .interval("300ms")
            .timeout("250ms")
            .rise(2)
            .fall(2);
            let mut v = Vip::new(vip, port, proto)
                .mode("dsr")
                .key("encap", encap)
                .health(health);
            for i in 1..=t.reals.len() {
                let real: IpAddr = if v6 == cross {
                    real4(i).into()
                } else {
                    real6(i).into()
                };
                v = v.real(real, port);
            }
            b = b.vip(v);
        }
    }
    b.build()
}

fn start_decap(ns: &testbed::Netns, name: &str, dir: &std::path::Path) -> Lb {
    let sock = dir.join(format!("{name}.sock"));
    Lb::builder(crate::LB, dir)
        .name(name)
        .netns(ns)
        .config(
            ConfigBuilder::new()
                .stats_interval("1s")
                .api_socket(&sock)
                .section("[decap]\ninterfaces = [\"r0\"]\n")
                .build(),
        )
        .wait_for_xdp(["r0"])
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// Which real (1-based) a `real` column names.
fn real_index(real: &str) -> usize {
    (1..=3)
        .find(|&i| {
            real.starts_with(&format!("{}:", real4(i))) || real.contains(&format!("[{}]", real6(i)))
        })
        .unwrap_or_else(|| panic!("unknown real {real}"))
}

/// Rows of `lb health`: (vip, real index, health, last failure, probes).
fn health(lb: &Lb) -> Vec<(String, usize, String, String, u64)> {
    let v = lb.cli_json(&["health"]);
    v["reals"]
        .as_array()
        .expect("health rows")
        .iter()
        .map(|r| {
            (
                r["vip"].as_str().unwrap_or_default().to_string(),
                real_index(r["real"].as_str().unwrap_or_default()),
                r["health"].as_str().unwrap_or_default().to_string(),
                r["last_failure"].as_str().unwrap_or_default().to_string(),
                r["probes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits (bounded) until every VIP's real `i` has health `want` for each
/// `(i, want)`; panics with the table otherwise.
fn wait_for(lb: &Lb, want: &[(usize, &str)], what: &str) {
    let start = Instant::now();
    loop {
        let rows = health(lb);
        let ok = rows.len() == 2 * SERVICES.len() * 3
            && rows.iter().all(|(_, i, h, _, _)| {
                want.iter()
                    .find(|(w, _)| w == i)
                    .is_none_or(|(_, state)| h == state)
            });
        if ok {
            return;
        }
        assert!(
            start.elapsed() <= CHANGE_WITHIN,
            "{what}: not reached within {CHANGE_WITHIN:?}:\n{}\n--- lb log ---\n{}",
            rows.iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join("\n"),
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dsr_checks_go_through_the_tunnel() {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build_dsr(3).expect("topology");
    let _servers: Vec<(Vec<NameServer>, DnsOnVip)> = topo.on_reals(|ns, name| {
        (
            (80..=83)
                .map(|port| NameServer::start(ns, name, port, 8054 + port - 80).unwrap())
                .collect(),
            DnsOnVip::start(ns),
        )
    });
    // real2 lacks the VIPs on its loopback.
    for vip in [format!("{VIP4}/32"), format!("{VIP6}/128")] {
        topo.reals[1]
            .ip(&["addr", "del", &vip, "dev", "lo"])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // real3 runs no decap (yet).
    let decap1 = start_decap(&topo.reals[0], "real1", dir.path());
    let decap2 = start_decap(&topo.reals[1], "real2", dir.path());
    topo.block_kernel_forwarding().expect("nft");
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(lb_config(&topo, &dir.path().join("lb.sock")))
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));

    wait_for(
        &lb,
        &[(1, "up"), (2, "down"), (3, "down")],
        "real2 (no VIP) and real3 (no decap) down",
    );
    // real1 passed every probe it ran; the others say why they failed.
    std::thread::sleep(Duration::from_secs(1));
    for (vip, i, h, failure, probes) in health(&lb) {
        if i == 1 {
            assert_eq!(h, "up", "{vip} real1");
            assert!(probes >= 3, "{vip} real1: {probes} probes");
            assert_eq!(failure, "", "{vip} real1 failed a probe");
        } else {
            assert_eq!(h, "down", "{vip} real{i}");
            assert!(
                failure.contains("through the") && failure.contains("tunnel"),
                "{vip} real{i}: {failure}"
            );
        }
    }

    // The control: a plain TCP check (a connect to the real's own address)
    // would pass for real2 and real3.
    for i in [2, 3] {
        for addr in [IpAddr::from(real4(i)), IpAddr::from(real6(i))] {
            for port in 80..=83 {
                let to = SocketAddr::new(addr, port);
                topo.lb
                    .run_in(move || Ok(TcpStream::connect_timeout(&to, Duration::from_secs(2))?))
                    .unwrap_or_else(|e| panic!("plain connect to {to}: {e:#}"));
            }
        }
    }

    // Fixed, each comes back.
    for vip in [format!("{VIP4}/32"), format!("{VIP6}/128")] {
        topo.reals[1]
            .ip(&["addr", "add", &vip, "dev", "lo"])
            .unwrap();
    }
    wait_for(
        &lb,
        &[(1, "up"), (2, "up"), (3, "down")],
        "real2 up with the VIPs back on lo",
    );
    let _decap3 = start_decap(&topo.reals[2], "real3", dir.path());
    wait_for(
        &lb,
        &[(1, "up"), (2, "up"), (3, "up")],
        "real3 up with decap running",
    );

    // The probes went through the tunnels: each real stripped every kind.
    for (i, d) in [(1, &decap1), (2, &decap2)] {
        let v = d.cli_json(&["status"]);
        let counters: std::collections::BTreeMap<String, u64> = v["decap"]["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap()))
            .collect();
        for kind in ["ipip", "ip6ip6", "ip4_in_ip6", "ip6_in_ip4", "gue"] {
            assert!(
                counters[kind] > 0,
                "real{i}: {kind} never stripped: {counters:?}"
            );
        }
        assert_eq!(counters["drop_malformed"], 0, "real{i}: {counters:?}");
    }
}
