//! End to end: client → VIP:53 (UDP and TCP, XDP in the lb namespace, NAT
//! mode) → two `lb` DNS servers (each an `lb run` with a `[dns]` config in
//! its own namespace) serving the same zone, except for one TXT record that
//! names the server. Kernel forwarding in the lb namespace is dropped by
//! nftables, so only XDP can carry the traffic.
//!
//! Asserted with dig from the client namespace, over IPv4 and IPv6: every
//! query gets the right authoritative answer, both servers answer a fair
//! share, replies come from the VIP, and a GSLB name follows the health of
//! its members (HTTP health endpoints run by the test in each server's
//! namespace).

use crate::dns_common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use dns_common::{parse_dig, Dig};
use lb_userspace::testbed::{self, config::ConfigBuilder, Lb, NameServer, Netns, Topology};

const LB: &str = env!("CARGO_BIN_EXE_lb");
/// Health endpoints of the two GSLB members (in each server's namespace).
const HEALTH1: u16 = 8081;
const HEALTH2: u16 = 8082;
const MEMBER4: [&str; 2] = ["198.18.200.1", "198.18.200.2"];
const MEMBER6: [&str; 2] = ["2001:db8:200::1", "2001:db8:200::2"];

use lb_userspace::testbed::privileged;

fn zone(server: &str) -> String {
    format!(
        r#"$ORIGIN example.com.
$TTL 300
@       IN SOA  ns1 hostmaster 2024060101 3600 600 86400 60
        IN NS   ns1
ns1     IN A    198.18.100.1
ns1     IN AAAA 2001:db8:100::1
www     IN A    198.18.50.10
www     IN AAAA 2001:db8:50::10
server  IN TXT  "{server}"
"#
    )
}

fn dns_config(i: usize, zone_file: &Path) -> String {
    let health = |port: u16| {
        format!(
            r#"{{ kind = "http", port = {port}, path = "/healthz", interval = "300ms", timeout = "250ms", rise = 1, fall = 2 }}"#
        )
    };
    let mut s = format!(
        r#"[dns]
listen = ["{}:53", "[{}]:53"]

[[dns.zone]]
name = "example.com."
file = "{}"

[[dns.gslb]]
name = "app.example.com."
ttl = 5
policy = "all"
"#,
        testbed::real4(i),
        testbed::real6(i),
        zone_file.display()
    );
    for (k, port) in [(0, HEALTH1), (1, HEALTH2)] {
        for a in [MEMBER4[k], MEMBER6[k]] {
            s.push_str(&format!(
                "\n[[dns.gslb.member]]\naddress = \"{a}\"\nhealth = {}\n",
                health(port)
            ));
        }
    }
    ConfigBuilder::new().no_api().dns(&s).build()
}

/// Runs one dig with several queries (`queries` are `[name, type]` pairs)
/// against `server` from `ns`, and returns one parsed answer per reply
/// (missing replies are simply absent).
fn dig_batch(ns: &Netns, server: IpAddr, tcp: bool, queries: &[(&str, &str)]) -> Vec<Dig> {
    let at = format!("@{server}");
    // Without the cookie option the queries are plain ones, which the
    // servers answer from their per-worker caches when they can.
    let mut args: Vec<&str> = vec![&at, "+norec", "+nocookie", "+time=2", "+tries=1"];
    if tcp {
        args.push("+tcp");
    }
    for (name, t) in queries {
        args.push(name);
        args.push(t);
    }
    let o = ns
        .command("timeout")
        .arg("60")
        .arg("dig")
        .args(&args)
        .output()
        .expect("dig (package dnsutils) is needed");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // Each reply starts with its ";; ->>HEADER<<-" line; the command echo
    // before it belongs to the previous block.
    text.split(";; ->>HEADER<<-")
        .skip(1)
        .map(|b| parse_dig(&format!(";; ->>HEADER<<-{b}")))
        .collect()
}

fn txt_of(d: &Dig) -> Option<String> {
    let recs = Dig::records(&d.answer);
    match recs.as_slice() {
        [(name, _, t, data)] if name == "server.example.com." && t == "TXT" => {
            Some(data.trim_matches('"').to_string())
        }
        _ => None,
    }
}

/// The addresses in a reply's answer section, of type `t`.
fn addrs(d: &Dig, t: &str) -> BTreeSet<String> {
    Dig::records(&d.answer)
        .into_iter()
        .filter(|(_, _, ty, _)| ty == t)
        .map(|(_, _, _, a)| a)
        .collect()
}

/// One query for server.example.com TXT from a fixed source port with a
/// plain socket: the reply must come from the VIP itself. Returns the TXT.
fn query_from(ns: &Netns, client: SocketAddr, vip: SocketAddr) -> anyhow::Result<String> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    ns.run_in(move || {
        let s = UdpSocket::bind(client)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut m = Message::query();
        m.metadata.id = 0x4c42;
        m.add_query(Query::query(
            Name::from_ascii("server.example.com.")?,
            RecordType::TXT,
        ));
        s.send_to(&m.to_vec()?, vip)?;
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf)?;
        anyhow::ensure!(from == vip, "reply came from {from}, not the VIP {vip}");
        let r = Message::from_vec(&buf[..n])?;
        anyhow::ensure!(r.metadata.id == 0x4c42, "reply with another ID");
        anyhow::ensure!(r.metadata.authoritative, "reply without AA: {r:?}");
        let txt: Vec<String> = r
            .answers
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        anyhow::ensure!(txt.len() == 1, "not one TXT answer: {r:?}");
        Ok(txt[0].clone())
    })
}

#[test]
fn dns_through_xdp_vip_to_two_lb_servers() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology::build(2).expect("topology");
    topo.block_kernel_forwarding().expect("nft");

    // GSLB member addresses live on each server's loopback, with an HTTP
    // health endpoint per member.
    let mut health: Vec<(NameServer, Option<NameServer>)> = Vec::new();
    for ns in &topo.reals {
        for a in MEMBER4 {
            ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])
                .unwrap();
        }
        for a in MEMBER6 {
            ns.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"])
                .unwrap();
        }
        health.push((
            NameServer::start(ns, "member1", HEALTH1, 0).unwrap(),
            Some(NameServer::start(ns, "member2", HEALTH2, 0).unwrap()),
        ));
    }

    let mut servers = Vec::new();
    for (i, ns) in topo.reals.iter().enumerate() {
        let i = i + 1;
        let zf = dir.path().join(format!("dns{i}.zone"));
        std::fs::write(&zf, zone(&format!("dns{i}"))).unwrap();
        let p = Lb::builder(LB, dir.path())
            .netns(ns)
            .name(&format!("dns{i}"))
            .config(dns_config(i, &zf))
            .wait_for_log("running:")
            .timeout(Duration::from_secs(20))
            .start()
            .unwrap_or_else(|e| panic!("dns{i}: {e:#}"));
        servers.push(p);
    }

    let lb = topo
        .start_lb(
            LB,
            &testbed::services_config(&topo, &[(53, "udp", 53), (53, "tcp", 53)]),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let logs = |lb: &Lb, servers: &[Lb]| -> String {
        let mut s = format!("--- lb log ---\n{}", lb.log());
        for (i, p) in servers.iter().enumerate() {
            s.push_str(&format!("--- dns{} log ---\n{}", i + 1, p.log()));
        }
        s
    };

    for (label, vip, client) in [
        ("IPv4", topo.vip(false), IpAddr::from(testbed::CLIENT4)),
        ("IPv6", topo.vip(true), IpAddr::from(testbed::CLIENT6)),
    ] {
        // UDP: each dig query uses its own source port, so each is a new flow.
        let n = 200;
        let started = Instant::now();
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        let mut got = 0;
        for _ in 0..n / 50 {
            let replies = dig_batch(
                &topo.client,
                vip,
                false,
                &[("server.example.com", "TXT"); 50],
            );
            for d in &replies {
                assert_eq!(d.status, "NOERROR", "{label}: {}", d.raw);
                assert!(d.has_flag("aa"), "{label}: not authoritative: {}", d.raw);
                assert!(!d.tcp, "{label}: {}", d.raw);
                let who = txt_of(d).unwrap_or_else(|| panic!("{label}: bad answer: {}", d.raw));
                *spread.entry(who).or_default() += 1;
            }
            got += replies.len();
        }
        eprintln!(
            "{label}: {got} UDP queries in {:?}, spread {spread:?}",
            started.elapsed()
        );
        assert_eq!(
            got,
            n,
            "{label}: {} of {n} UDP queries got no reply\n{}",
            n - got,
            logs(&lb, &servers)
        );
        assert_eq!(
            spread.keys().cloned().collect::<Vec<_>>(),
            ["dns1", "dns2"],
            "{label}: {spread:?}"
        );
        for (who, c) in &spread {
            assert!(
                (70..=130).contains(c),
                "{label}: {who} answered {c} of {n} queries, outside ±30% of an equal share; {spread:?}"
            );
        }

        // The rest of the zone, identical on both servers, over UDP and TCP.
        for tcp in [false, true] {
            let qs = [
                ("www.example.com", "A"),
                ("www.example.com", "AAAA"),
                ("nothere.example.com", "A"),
                ("www.example.org", "A"),
                ("server.example.com", "TXT"),
            ];
            let batch: Vec<(&str, &str)> = qs.iter().cycle().take(qs.len() * 20).copied().collect();
            let replies = dig_batch(&topo.client, vip, tcp, &batch);
            assert_eq!(
                replies.len(),
                batch.len(),
                "{label} tcp={tcp}: replies missing\n{}",
                logs(&lb, &servers)
            );
            let mut who = BTreeSet::new();
            for (d, (name, t)) in replies.iter().zip(&batch) {
                assert_eq!(d.tcp, tcp, "{label}: {}", d.raw);
                let ctx = format!("{label} tcp={tcp} {name} {t}: {}", d.raw);
                match (*name, *t) {
                    ("www.example.com", "A") => {
                        assert_eq!(d.status, "NOERROR", "{ctx}");
                        assert!(d.has_flag("aa"), "{ctx}");
                        assert_eq!(d.answer_data(), ["A 198.18.50.10"], "{ctx}");
                    }
                    ("www.example.com", "AAAA") => {
                        assert!(d.has_flag("aa"), "{ctx}");
                        assert_eq!(d.answer_data(), ["AAAA 2001:db8:50::10"], "{ctx}");
                    }
                    ("nothere.example.com", _) => {
                        assert_eq!(d.status, "NXDOMAIN", "{ctx}");
                        assert!(d.has_flag("aa"), "{ctx}");
                        assert!(d.authority.iter().any(|l| l.contains("SOA")), "{ctx}");
                    }
                    ("www.example.org", _) => {
                        assert_eq!(d.status, "REFUSED", "{ctx}");
                    }
                    _ => {
                        assert!(d.has_flag("aa"), "{ctx}");
                        who.insert(txt_of(d).unwrap_or_else(|| panic!("{ctx}")));
                    }
                }
            }
            // 20 TXT queries, each on a new flow: both servers, except with
            // probability 2^-19.
            assert_eq!(who.len(), 2, "{label} tcp={tcp}: only {who:?} answered");
        }

        // Replies come from the VIP (a plain socket sees the source address).
        let vip_sa = SocketAddr::new(vip, 53);
        let mut seen = BTreeSet::new();
        for sport in 41001..41009u16 {
            let who = query_from(&topo.client, SocketAddr::new(client, sport), vip_sa)
                .unwrap_or_else(|e| panic!("{label} from port {sport}: {e:#}"));
            seen.insert(who);
        }
        assert!(
            seen.iter().all(|w| w == "dns1" || w == "dns2"),
            "{label}: {seen:?}"
        );
    }

    // GSLB: both members healthy → both addresses, from both servers.
    let gslb_qs = [("app.example.com", "A"), ("app.example.com", "AAAA")].repeat(10);
    let all4: BTreeSet<String> = MEMBER4
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    let all6: BTreeSet<String> = MEMBER6
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    let vip4 = topo.vip(false);
    for d in dig_batch(&topo.client, vip4, false, &gslb_qs) {
        assert!(d.has_flag("aa"), "{}", d.raw);
        let q = &d.question[0];
        if q.contains("AAAA") {
            assert_eq!(addrs(&d, "AAAA"), all6, "{}", d.raw);
        } else {
            assert_eq!(addrs(&d, "A"), all4, "{}", d.raw);
        }
    }

    // Member 2's health endpoint goes away on both servers' sides: within a
    // few probe intervals every answer, from either server, lists member 1
    // only.
    for (_, h2) in &mut health {
        drop(h2.take());
    }
    let one4: BTreeSet<String> = [MEMBER4[0].to_string()].into();
    let one6: BTreeSet<String> = [MEMBER6[0].to_string()].into();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let replies = dig_batch(&topo.client, vip4, false, &gslb_qs);
        let done = replies.len() == 20
            && replies.iter().all(|d| {
                if d.question[0].contains("AAAA") {
                    addrs(d, "AAAA") == one6
                } else {
                    addrs(d, "A") == one4
                }
            });
        if done {
            break;
        }
        let last: Vec<Vec<String>> = replies
            .iter()
            .map(super::dns_common::Dig::answer_data)
            .collect();
        assert!(
            Instant::now() < deadline,
            "member 2 still answered 15 s after its health endpoint stopped: {last:?}\n{}",
            logs(&lb, &servers)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, s) in servers.iter().enumerate() {
        assert!(
            s.log().contains("is down"),
            "dns{}: no health change logged:\n{}",
            i + 1,
            s.log()
        );
    }
}
