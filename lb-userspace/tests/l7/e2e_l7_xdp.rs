//! End to end: client → VIP:443/tcp (XDP in the lb namespace, NAT mode) →
//! two `lb` L7 proxies (each an `lb run` with an `[[l7]]` config in its own
//! namespace, TLS with certificates from `lb cert`) → a backend per proxy
//! namespace that echoes what it received. Kernel forwarding in the lb
//! namespace is dropped by nftables, so only XDP can carry the traffic.
//!
//! Asserted with curl from the client namespace, over IPv4 and IPv6: every
//! request succeeds, both proxies serve a fair share, the certificate served
//! for each name is the one issued for it (public key pinning; a wrong pin
//! fails), HTTP/2 works through the VIP, and the backend's X-Forwarded-For is
//! the client's own address (NAT keeps the client source address).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_userspace::testbed::{self, config::ConfigBuilder, Lb, Netns, Topology};

const BACKEND_PORT: u16 = 8080;
const LB: &str = env!("CARGO_BIN_EXE_lb");

use lb_userspace::testbed::privileged;

/// A plain HTTP/1.1 backend on 127.0.0.1 inside a namespace. Every response
/// body is one line: `backend=NAME peer=ADDR xff=… xfp=… host=…`.
struct EchoBackend {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl EchoBackend {
    fn start(ns: &Netns, name: &str) -> EchoBackend {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = name.to_string();
        let stop2 = stop.clone();
        let thread = ns.spawn(move || {
            let l = TcpListener::bind(("127.0.0.1", BACKEND_PORT))?;
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve_echo(s, peer, &name));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("echo backend did not start");
        EchoBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves HTTP/1.1 keep-alive requests (no bodies) on one connection, for at
/// most 100 requests or until 10 s of silence.
fn serve_echo(mut s: std::net::TcpStream, peer: SocketAddr, name: &str) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..100 {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 65536 {
                return;
            }
            match s.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let header = |h: &str| -> String {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(h))
                .map(|(_, v)| v.trim().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let body = format!(
            "backend={name} peer={} xff={} xfp={} host={}\n",
            peer.ip(),
            header("x-forwarded-for"),
            header("x-forwarded-proto"),
            header("host"),
        );
        let close = header("connection").eq_ignore_ascii_case("close");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if s.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// One parsed echo line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Echo {
    backend: String,
    peer: String,
    xff: String,
    xfp: String,
    host: String,
}

fn parse_echo(line: &str) -> Option<Echo> {
    let mut m = BTreeMap::new();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        m.insert(k, v.to_string());
    }
    Some(Echo {
        backend: m.get("backend")?.clone(),
        peer: m.get("peer")?.clone(),
        xff: m.get("xff")?.clone(),
        xfp: m.get("xfp")?.clone(),
        host: m.get("host")?.clone(),
    })
}

/// Result of one curl request: HTTP status, HTTP version, the echo line.
#[derive(Debug)]
struct Reply {
    code: String,
    version: String,
    echo: Option<Echo>,
}

/// Runs `n` HTTPS GETs to `https://NAME/` in the client namespace, NAME
/// resolved to `vip`, one connection per request (HTTP/1.1 with
/// `Connection: close`, or a curl run per request with `http2`).
/// Certificates are checked against `ca` and, with `pin`, the leaf's public
/// key must be that one.
fn curl_https(
    client: &Netns,
    name: &str,
    vip: IpAddr,
    ca: &Path,
    pin: Option<&Path>,
    http2: bool,
    n: usize,
) -> Vec<Reply> {
    let resolve = match vip {
        IpAddr::V4(a) => format!("{name}:443:{a}"),
        IpAddr::V6(a) => format!("{name}:443:[{a}]"),
    };
    let url = format!("https://{name}/");
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        // HTTP/2: one curl per request, as curl would otherwise reuse one
        // connection for every URL.
        let batch = if http2 { 1 } else { left.min(40) };
        let mut args: Vec<String> = vec![
            "-s".into(),
            "--max-time".into(),
            "5".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "--resolve".into(),
            resolve.clone(),
            "-w".into(),
            "|%{http_code}|%{http_version}\\n".into(),
        ];
        if let Some(p) = pin {
            args.push("--pinnedpubkey".into());
            args.push(p.display().to_string());
        }
        if http2 {
            args.push("--http2".into());
        } else {
            args.push("--http1.1".into());
            args.push("-H".into());
            args.push("Connection: close".into());
        }
        for _ in 0..batch {
            args.push(url.clone());
        }
        let o = client
            .command("curl")
            .args(&args)
            .output()
            .expect("curl (package curl) is needed");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut echo = None;
        let mut got = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('|') {
                let (code, version) = rest.split_once('|').unwrap_or((rest, ""));
                out.push(Reply {
                    code: code.to_string(),
                    version: version.to_string(),
                    echo: echo.take(),
                });
                got += 1;
            } else if line.starts_with("backend=") {
                echo = parse_echo(line);
            }
        }
        for _ in got..batch {
            out.push(Reply {
                code: String::new(),
                version: String::new(),
                echo: None,
            });
        }
        left -= batch;
    }
    out
}

/// The public key of a PEM private key, as a PEM file curl can pin.
fn public_key(key: &Path, out: &Path) -> PathBuf {
    testbed::run(
        "openssl",
        &[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            out.to_str().unwrap(),
        ],
    )
    .expect("openssl (package openssl) is needed");
    out.to_path_buf()
}

fn proxy_config(i: usize, certs: &Path, log: &Path) -> String {
    let v4 = testbed::real4(i);
    let v6 = testbed::real6(i);
    let mut cfg = ConfigBuilder::new().no_api();
    for (name, listen) in [
        (format!("proxy{i}v4"), format!("{v4}:443")),
        (format!("proxy{i}v6"), format!("[{v6}]:443")),
    ] {
        cfg = cfg.l7(&format!(
            r#"[[l7]]
name = "{name}"
listen = "{listen}"
access_log = "{log}"

[[l7.cert]]
cert = "{certs}/www.example.com.chain.pem"
key = "{certs}/www.example.com.key"

[[l7.cert]]
cert = "{certs}/api.example.net.chain.pem"
key = "{certs}/api.example.net.key"

[[l7.route]]
upstream = "app"

[[l7.upstream]]
name = "app"
servers = ["127.0.0.1:{BACKEND_PORT}"]
"#,
            log = log.display(),
            certs = certs.display(),
        ));
    }
    cfg.build()
}

#[test]
fn https_through_xdp_vip_to_two_lb_proxies() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    testbed::run(
        LB,
        &[
            "cert",
            "--dir",
            certs.to_str().unwrap(),
            "--leaf",
            "www.example.com,example.com",
            "--leaf",
            "api.example.net",
        ],
    )
    .expect("lb cert");
    let ca = certs.join("root.pem");
    let www_pub = public_key(
        &certs.join("www.example.com.key"),
        &dir.path().join("www.pub"),
    );
    let api_pub = public_key(
        &certs.join("api.example.net.key"),
        &dir.path().join("api.pub"),
    );

    let topo = Topology::build(2).expect("topology");
    topo.block_kernel_forwarding().expect("nft");

    // Backends and proxies, one of each per real namespace.
    let _backends: Vec<EchoBackend> = topo
        .reals
        .iter()
        .enumerate()
        .map(|(i, ns)| EchoBackend::start(ns, &format!("app{}", i + 1)))
        .collect();
    let mut proxies = Vec::new();
    for (i, ns) in topo.reals.iter().enumerate() {
        let i = i + 1;
        let access = dir.path().join(format!("proxy{i}.access.log"));
        let p = Lb::builder(LB, dir.path())
            .netns(ns)
            .name(&format!("proxy{i}"))
            .config(proxy_config(i, &certs, &access))
            .wait_for_log("running:")
            .timeout(Duration::from_secs(20))
            .start()
            .unwrap_or_else(|e| panic!("proxy{i}: {e:#}"));
        proxies.push(p);
    }

    // The L4 balancer: VIP:443/tcp → real:443 on both families.
    let lb = topo
        .start_lb(
            LB,
            &testbed::services_config(&topo, &[(443, "tcp", 443)]),
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let logs = |lb: &Lb, proxies: &[Lb]| -> String {
        let mut s = format!("--- lb log ---\n{}", lb.log());
        for (i, p) in proxies.iter().enumerate() {
            s.push_str(&format!("--- proxy{} log ---\n{}", i + 1, p.log()));
        }
        s
    };

    for (label, vip, client) in [
        (
            "IPv4",
            topo.vip(false),
            IpAddr::from(testbed::CLIENT4).to_string(),
        ),
        (
            "IPv6",
            topo.vip(true),
            IpAddr::from(testbed::CLIENT6).to_string(),
        ),
    ] {
        // Many short HTTP/1.1 connections: each is a new flow for Maglev.
        let n = 200;
        let started = Instant::now();
        let replies = curl_https(
            &topo.client,
            "www.example.com",
            vip,
            &ca,
            Some(&www_pub),
            false,
            n,
        );
        let failed: Vec<&Reply> = replies
            .iter()
            .filter(|r| r.code != "200" || r.echo.is_none())
            .collect();
        assert!(
            failed.is_empty(),
            "{label}: {} of {n} requests failed (first: {:?})\n{}",
            failed.len(),
            failed.first(),
            logs(&lb, &proxies)
        );
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for r in &replies {
            let e = r.echo.as_ref().unwrap();
            assert_eq!(r.version, "1.1", "{label}: {r:?}");
            assert_eq!(
                e.xff, client,
                "{label}: X-Forwarded-For at the backend is not the client's address: {e:?}"
            );
            assert_eq!(e.xfp, "https", "{label}: {e:?}");
            assert_eq!(e.host, "www.example.com", "{label}: {e:?}");
            assert_eq!(
                e.peer, "127.0.0.1",
                "{label}: the backend was not reached through its local proxy: {e:?}"
            );
            *spread.entry(e.backend.clone()).or_default() += 1;
        }
        eprintln!(
            "{label}: {n} HTTPS requests in {:?}, spread {spread:?}",
            started.elapsed()
        );
        for b in ["app1", "app2"] {
            let got = spread.get(b).copied().unwrap_or(0);
            assert!(
                (70..=130).contains(&got),
                "{label}: the proxy in front of {b} served {got} of {n} requests, outside ±30% of an equal share; {spread:?}"
            );
        }

        // The second certificate, chosen by SNI, over HTTP/2, on new
        // connections through the VIP.
        let replies = curl_https(
            &topo.client,
            "api.example.net",
            vip,
            &ca,
            Some(&api_pub),
            true,
            20,
        );
        let mut h2_spread: BTreeMap<String, usize> = BTreeMap::new();
        for r in &replies {
            assert_eq!(r.code, "200", "{label}: api.example.net over h2: {r:?}");
            assert_eq!(r.version, "2", "{label}: {r:?}");
            let e = r.echo.as_ref().unwrap();
            assert_eq!(e.xff, client, "{label}: {e:?}");
            assert_eq!(e.host, "api.example.net", "{label}: {e:?}");
            *h2_spread.entry(e.backend.clone()).or_default() += 1;
        }
        assert_eq!(
            h2_spread.len(),
            2,
            "{label}: 20 HTTP/2 connections all went to one proxy: {h2_spread:?}"
        );

        // Pinning the other name's key must fail: the pin check is real and
        // each name gets its own certificate.
        let wrong = curl_https(
            &topo.client,
            "www.example.com",
            vip,
            &ca,
            Some(&api_pub),
            false,
            1,
        );
        assert!(
            wrong[0].code != "200" && wrong[0].echo.is_none(),
            "{label}: www.example.com was served with api.example.net's key: {:?}",
            wrong[0]
        );
    }

    // The proxies' own access logs name the client, not the balancer.
    for (i, _) in proxies.iter().enumerate() {
        let access = std::fs::read_to_string(dir.path().join(format!("proxy{}.access.log", i + 1)))
            .unwrap_or_default();
        let lines = access.lines().count();
        assert!(lines > 0, "proxy{}: empty access log", i + 1);
        for l in access.lines() {
            let client = l.split(' ').nth(2).unwrap_or("");
            assert!(
                client.starts_with("198.18.0.2:") || client.starts_with("[2001:db8::2]:"),
                "proxy{}: access log names {client}, not the client: {l}",
                i + 1
            );
        }
    }

    // With the balancer stopped nothing gets through: the kernel path is shut.
    drop(lb);
    let replies = curl_https(
        &topo.client,
        "www.example.com",
        topo.vip(false),
        &ca,
        None,
        false,
        1,
    );
    assert!(
        replies[0].echo.is_none(),
        "a request reached a proxy without XDP: {:?}",
        replies[0]
    );
}
