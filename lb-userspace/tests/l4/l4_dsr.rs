//! DSR end to end: client → router → lb (XDP, encapsulates) → bridge →
//! three reals that run `lb` with `[decap]` and hold the VIPs on `lo`; the
//! reals answer through the router, never through the lb. Kernel
//! forwarding in the lb namespace is dropped by nftables, so only XDP
//! moves packets there. Default offloads (partial checksums) everywhere.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    privileged, real4, real6, Lb, NameServer, Topology, VIP4, VIP6,
};

const UDP_PORT: u16 = 8053;

/// A UDP responder bound to the VIPs themselves: a DSR real's UDP service
/// must answer from the VIP, and a socket bound to the wildcard address
/// answers from the real's own address (the route's source) instead.
/// Answers its name; stops when dropped.
struct VipResponder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl VipResponder {
    fn start(ns: &testbed::Netns, name: &str) -> VipResponder {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let socks = [
                UdpSocket::bind(SocketAddr::new(VIP4.into(), UDP_PORT))?,
                UdpSocket::bind(SocketAddr::new(VIP6.into(), UDP_PORT))?,
            ];
            for s in &socks {
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
            }
            let _ = ready_tx.send(());
            let mut buf = [0u8; 512];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &socks {
                    if let Ok((_, peer)) = s.recv_from(&mut buf) {
                        s.send_to(name.as_bytes(), peer)?;
                    }
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UDP responder bound to the VIPs");
        VipResponder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for VipResponder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The VIPs: (port, protocol, encap, reals of the other family).
const SERVICES: [(u16, &str, &str, bool); 4] = [
    (80, "tcp", "ipip", false),
    (81, "tcp", "ipip", true),
    (82, "tcp", "gue", false),
    (UDP_PORT, "udp", "gue", false),
];

fn lb_config(t: &Topology) -> String {
    let mut b = ConfigBuilder::topology(t).no_api().key(
        "encap_source",
        toml::Value::Array(vec!["198.18.250.0/24".into(), "2001:db8:250::/112".into()]),
    );
    for v6 in [false, true] {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        for (port, proto, encap, cross) in SERVICES {
            let mut v = Vip::new(vip, port, proto).mode("dsr").key("encap", encap);
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

fn decap_config(sock: &std::path::Path) -> String {
    ConfigBuilder::new()
        .stats_interval("1s")
        .api_socket(sock)
        .section("[decap]\ninterfaces = [\"r0\"]\n")
        .build()
}

/// `tcpdump` in `ns` on `iface` for `filter`, until the guard is stopped;
/// then the number of packets it saw.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(ns: &testbed::Netns, iface: &str, filter: &str, file: std::path::PathBuf) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tcpdump", "-i", iface, "-n", "-U", "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (package tcpdump) is needed");
        // tcpdump needs a moment before it captures.
        std::thread::sleep(Duration::from_millis(700));
        Capture { child, file }
    }

    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) with a child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(data: impl FnOnce(&mut dyn Write)) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    data(child.stdin.as_mut().unwrap());
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn dsr_end_to_end() {
    if !privileged() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        return;
    }
    let topo = Topology::build_dsr(3).expect("topology");
    let _servers: Vec<(Vec<NameServer>, VipResponder)> = topo.on_reals(|ns, name| {
        (
            (80..=82)
                .map(|port| NameServer::start(ns, name, port, UDP_PORT + port - 79).unwrap())
                .collect(),
            VipResponder::start(ns, name),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let decaps: Vec<Lb> = topo
        .reals
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let name = format!("real{}", i + 1);
            Lb::builder(crate::LB, dir.path())
                .name(&name)
                .netns(ns)
                .config(decap_config(&dir.path().join(format!("{name}.sock"))))
                .wait_for_xdp(["r0"])
                .wait_for_api()
                .start()
                .unwrap_or_else(|e| panic!("{name}: {e:#}"))
        })
        .collect();
    topo.block_kernel_forwarding().expect("nft");
    let lb = topo
        .start_lb(crate::LB, &lb_config(&topo), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The replies' way: through the router (the capture's control), never
    // through the lb.
    let vip_src = format!("src host {VIP4} or src host {VIP6}");
    let at_lb = Capture::start(&topo.lb, "any", &vip_src, dir.path().join("lb.pcap"));
    let router = topo.router.as_ref().unwrap();
    let at_router = Capture::start(router, "g1", &vip_src, dir.path().join("router.pcap"));

    // 900 requests per VIP: ±20% of an equal share is 4.3 standard
    // deviations.
    for (url, label) in [
        (format!("http://{VIP4}/"), "v4 IPIP"),
        (format!("http://[{VIP6}]/"), "v6 IP6IP6"),
        (format!("http://{VIP4}:81/"), "v4 in IPv6"),
        (format!("http://[{VIP6}]:81/"), "v6 in IPv4"),
        (format!("http://{VIP4}:82/"), "v4 GUE"),
        (format!("http://[{VIP6}]:82/"), "v6 GUE"),
    ] {
        let n = 900;
        let bodies = testbed::curl_burst(&topo.client, &url, n).unwrap();
        let failed = bodies.iter().filter(|b| b.is_empty()).count();
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for b in &bodies {
            *spread.entry(b.clone()).or_default() += 1;
        }
        assert_eq!(
            failed,
            0,
            "{label}: {failed} of {n} failed; {spread:?}\n--- lb log ---\n{}",
            lb.log()
        );
        for r in ["real1", "real2", "real3"] {
            let got = spread.get(r).copied().unwrap_or(0);
            assert!(
                (n / 3 * 8 / 10..=n / 3 * 12 / 10).contains(&got),
                "{label}: {r} got {got} of {n}; {spread:?}"
            );
        }
    }

    // A 50 MB download, byte for byte.
    let len = 50_000_000usize;
    let want = sha256(|w| {
        let chunk: Vec<u8> = (0..len).map(testbed::blob_byte).collect();
        w.write_all(&chunk).unwrap();
    });
    for url in [
        format!("http://{VIP4}/blob/{len}"),
        format!("http://[{VIP6}]:81/blob/{len}"),
        format!("http://[{VIP6}]:82/blob/{len}"),
    ] {
        let out = topo
            .client
            .command("curl")
            .args(["-s", "-g", "--max-time", "60", &url])
            .output()
            .unwrap();
        assert_eq!(out.stdout.len(), len, "{url}: {} bytes", out.stdout.len());
        let got = sha256(|w| w.write_all(&out.stdout).unwrap());
        assert_eq!(got, want, "{url}: digest");
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

    let seen_at_lb = at_lb.stop();
    let seen_at_router = at_router.stop();
    assert!(
        seen_at_lb.is_empty(),
        "packets from a VIP crossed the lb:\n{}",
        seen_at_lb.join("\n")
    );
    assert!(
        seen_at_router.len() > 5400,
        "only {} replies seen at the router (the capture's control)",
        seen_at_router.len()
    );

    // The lb translated no reply and encapsulated every client packet; the
    // reals stripped them (each lb status says so) and counted no
    // checksum error.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = lb.log();
    assert!(
        !stats.contains("reply_nat="),
        "the lb rewrote replies:\n{stats}"
    );
    let mut stripped = 0;
    for d in &decaps {
        let status = d.cli(&["status"]).expect("lb status on a real");
        assert!(
            status.contains("decap: interfaces [r0 ("),
            "status: {status}"
        );
        let v = d.cli_json(&["status"]);
        let counters: BTreeMap<String, u64> = v["decap"]["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap()))
            .collect();
        for kind in ["ipip", "ip6ip6", "ip4_in_ip6", "ip6_in_ip4", "gue"] {
            assert!(counters[kind] > 0, "{kind} never stripped: {counters:?}");
        }
        assert_eq!(counters["drop_malformed"], 0, "{counters:?}");
        stripped += ["ipip", "ip6ip6", "ip4_in_ip6", "ip6_in_ip4", "gue"]
            .iter()
            .map(|k| counters[*k])
            .sum::<u64>();
    }
    assert!(stripped > 10_000, "{stripped} packets stripped in all");
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
}
