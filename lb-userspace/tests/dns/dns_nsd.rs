//! NSD and our server load the same zone file; `dig` asks both the same
//! questions; the answers must match record for record (as sets per
//! section), with the same RCODE and AA bit.

use crate::dns_common;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dns_common::{base_config, dig, have, start, Dig};

/// NSD on 127.0.0.1:<port>, in its own temp dir; killed on drop.
struct Nsd {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

fn nsd_binary() -> String {
    for p in ["/usr/sbin/nsd", "/usr/bin/nsd"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    "nsd".into()
}

impl Nsd {
    fn start(zone_name: &str, zone_file: &Path) -> Nsd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        let zf = dir.path().join("zone");
        std::fs::copy(zone_file, &zf).unwrap();
        let conf = format!(
            r#"server:
  ip-address: 127.0.0.1@{port}
  port: {port}
  username: ""
  chroot: ""
  zonesdir: "{d}"
  pidfile: "{d}/nsd.pid"
  database: ""
  xfrdfile: "{d}/xfrd.state"
  zonelistfile: "{d}/zone.list"
  xfrdir: "{d}"
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 1
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: {zone_name}
  zonefile: "{zf}"
"#,
            zf = zf.display()
        );
        let cf = dir.path().join("nsd.conf");
        std::fs::write(&cf, conf).unwrap();
        let child = Command::new(nsd_binary())
            .arg("-d")
            .arg("-c")
            .arg(&cf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsd starts");
        Nsd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }
}

/// Everything compared, in a form where order does not matter.
#[derive(Debug, PartialEq)]
struct Comparable {
    status: String,
    aa: bool,
    tc: bool,
    answer: Vec<(String, u32, String, String)>,
    authority: Vec<(String, u32, String, String)>,
    additional: Vec<(String, u32, String, String)>,
}

fn comparable(d: &Dig) -> Comparable {
    let sorted = |s: &[String]| {
        // Domain names compare case-insensitively (NSD's name compression
        // reuses the question's case inside RDATA); TXT and CAA text does not.
        let mut v: Vec<_> = Dig::records(s)
            .into_iter()
            .map(|(n, ttl, t, d)| {
                let d = if t == "TXT" || t == "CAA" {
                    d
                } else {
                    d.to_ascii_lowercase()
                };
                (n, ttl, t, d)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    Comparable {
        status: d.status.clone(),
        aa: d.has_flag("aa"),
        tc: d.has_flag("tc"),
        answer: sorted(&d.answer),
        authority: sorted(&d.authority),
        additional: sorted(&d.additional),
    }
}

const QUERIES: &[(&str, &str)] = &[
    ("example.com", "A"),
    ("example.com", "AAAA"),
    ("example.com", "MX"),
    ("example.com", "NS"),
    ("example.com", "SOA"),
    ("example.com", "TXT"),
    ("example.com", "CAA"),
    ("example.com", "SRV"),
    ("EXAMPLE.COM", "a"),
    ("ns1.example.com", "A"),
    ("ns1.example.com", "AAAA"),
    ("ns2.example.com", "AAAA"),
    ("mail.example.com", "A"),
    ("www.example.com", "A"),
    ("www.example.com", "AAAA"),
    ("www.example.com", "CNAME"),
    ("www.example.com", "TXT"),
    ("web.example.com", "A"),
    ("web.example.com", "TXT"),
    ("alias.example.com", "A"),
    ("ext.example.com", "A"),
    ("dangling.example.com", "A"),
    ("loop1.example.com", "A"),
    ("_sip._tcp.example.com", "SRV"),
    ("_tcp.example.com", "SRV"),
    ("sip.example.com", "A"),
    ("x.wild.example.com", "A"),
    ("x.wild.example.com", "TXT"),
    ("x.wild.example.com", "AAAA"),
    ("a.b.wild.example.com", "A"),
    ("sub.wild.example.com", "TXT"),
    ("sub.wild.example.com", "A"),
    ("a.sub.wild.example.com", "A"),
    ("wild.example.com", "A"),
    ("foo.cname.example.com", "A"),
    ("foo.cname.example.com", "CNAME"),
    ("a.b.c.deep.example.com", "A"),
    ("b.c.deep.example.com", "A"),
    ("deep.example.com", "TXT"),
    ("multi.example.com", "TXT"),
    ("mixed.case.example.com", "A"),
    ("MIXED.case.example.com", "AAAA"),
    ("child.example.com", "NS"),
    ("child.example.com", "A"),
    ("host.child.example.com", "A"),
    ("ns1.child.example.com", "A"),
    ("child.example.com", "DS"),
    ("other.example.com", "A"),
    ("tochild.example.com", "A"),
    ("nope.example.com", "A"),
    ("deeper.nope.example.com", "MX"),
    ("big.example.com", "TXT"),
    ("example.org", "A"),
    ("com", "NS"),
    ("example.com", "ANY"),
    ("web.example.com", "ANY"),
    ("www.example.com", "ANY"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_nsd() {
    if !have("dig", "dnsutils") || !have("nsd", "nsd") {
        return;
    }
    let zone = dns_common::zone_file();
    let nsd = Nsd::start("example.com", &zone);
    let (ours, our_addr) = start(&base_config("")).await;

    // Wait (bounded) for NSD to answer.
    let t0 = Instant::now();
    loop {
        let d = dig(nsd.addr, &["example.com", "SOA"]).await;
        if d.status == "NOERROR" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "NSD did not come up on {}: {}",
            nsd.addr,
            nsd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut mismatches = Vec::new();
    for (name, qtype) in QUERIES {
        // Plain queries (no cookie option) take the cached path: asked
        // three times, so later answers come from a worker's cache.
        for (transport, times) in [
            (&["+bufsize=1232"][..], 1),
            (&["+tcp"][..], 1),
            (&["+nocookie", "+bufsize=1232"][..], 3),
            (&["+noedns"][..], 3),
        ] {
            let mut args: Vec<&str> = transport.to_vec();
            args.extend([*name, *qtype]);
            let theirs = dig(nsd.addr, &args).await;
            assert!(
                !theirs.status.is_empty(),
                "NSD gave no answer to {name} {qtype}: {}",
                theirs.raw
            );
            let t = comparable(&theirs);
            for _ in 0..times {
                let m = comparable(&dig(our_addr, &args).await);
                if t != m {
                    mismatches.push(format!(
                        "{name} {qtype} {transport:?}\n  nsd:  {t:?}\n  ours: {m:?}"
                    ));
                }
            }
        }
    }
    assert!(QUERIES.len() >= 30);
    assert!(
        mismatches.is_empty(),
        "{} of {} answers differ from NSD:\n{}",
        mismatches.len(),
        QUERIES.len() * 8,
        mismatches.join("\n")
    );
    ours.shutdown().await;
}

/// Class ANY (255) questions for the same names: NSD answers them from the
/// zone without AA and without the authority section (except referrals);
/// ours must match record for record. Also: a query with an RCODE in its
/// header gets FORMERR from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_any_and_header_rcode_match_nsd() {
    if !have("dig", "dnsutils") || !have("nsd", "nsd") {
        return;
    }
    let zone = dns_common::zone_file();
    let nsd = Nsd::start("example.com", &zone);
    let (ours, our_addr) = start(&base_config("")).await;
    let t0 = Instant::now();
    while dig(nsd.addr, &["example.com", "SOA"]).await.status != "NOERROR" {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "NSD did not come up: {}",
            nsd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut mismatches = Vec::new();
    let mut answered = 0;
    for (name, qtype) in QUERIES {
        for (transport, times) in [
            (&["+nocookie", "+bufsize=1232"][..], 2),
            (&["+tcp"][..], 1),
            (&["+noedns"][..], 1),
        ] {
            let mut args: Vec<&str> = transport.to_vec();
            args.extend(["-c", "ANY", "-t", qtype, "-q", name]);
            let theirs = dig(nsd.addr, &args).await;
            assert!(!theirs.status.is_empty(), "NSD: {}", theirs.raw);
            assert!(
                theirs.raw.contains("\tANY\t"),
                "class ANY asked: {}",
                theirs.raw
            );
            if !theirs.answer.is_empty() {
                answered += 1;
            }
            let t = comparable(&theirs);
            for _ in 0..times {
                let m = comparable(&dig(our_addr, &args).await);
                if t != m {
                    mismatches.push(format!(
                        "{name} CLASS ANY {qtype} {transport:?}\n  nsd:  {t:?}\n  ours: {m:?}"
                    ));
                }
            }
        }
    }
    assert!(
        answered > 30,
        "class ANY answered from the zone: {answered}"
    );
    assert!(
        mismatches.is_empty(),
        "{} differ from NSD:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // RCODE 1..15 in a query's header: both answer FORMERR with no
    // question (we keep the OPT record, NSD drops it).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for rcode in [1u8, 5, 15] {
        for edns in [false, true] {
            let mut p = vec![0x42, 0x42, 0x00, rcode, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
            p.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
            if edns {
                p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
            }
            let mut got = Vec::new();
            for to in [nsd.addr, our_addr] {
                sock.send_to(&p, to).unwrap();
                let mut buf = [0u8; 4096];
                let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("{to}: {e}"));
                let r = &buf[..n];
                // ID, QR, RCODE, QDCOUNT/ANCOUNT/NSCOUNT.
                got.push((
                    r[0..2].to_vec(),
                    r[2] & 0x80,
                    r[3] & 0x0f,
                    r[4..10].to_vec(),
                ));
            }
            assert_eq!(got[0], got[1], "rcode {rcode} edns {edns}: nsd vs ours");
            assert_eq!(got[1].2, 1, "FORMERR");
        }
    }
    ours.shutdown().await;
}
