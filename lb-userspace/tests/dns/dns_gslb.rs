//! GSLB through the real server with `dig`: health-driven membership,
//! region by ECS and by source address, weighted subsets, fallback.

use crate::dns_common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use dns_common::{base_config, dig, have, start};
use tokio::{io::AsyncWriteExt, net::TcpListener, task::JoinHandle};

/// An HTTP health endpoint that answers 200 to anything.
struct Endpoint {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Endpoint {
    async fn start(addr: SocketAddr) -> Endpoint {
        let l = TcpListener::bind(addr).await.expect("bind health endpoint");
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Endpoint {
            addr,
            task: Some(task),
        }
    }

    /// Closes the listener: probes get "connection refused".
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 200;

async fn addresses(a: SocketAddr, args: &[&str]) -> Vec<String> {
    let d = dig(a, args).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let mut v: Vec<String> = dns_common::Dig::records(&d.answer)
        .into_iter()
        .map(|(_, _, _, data)| data)
        .collect();
    v.sort();
    v
}

/// Polls (bounded by `within`) until the answer equals `want`; returns how long it took.
async fn wait_answer(a: SocketAddr, q: &str, want: &[&str], within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = addresses(a, &[q, "A"]).await;
        if got == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{q}: still {got:?} after {within:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_drives_membership() {
    if !have("dig", "dnsutils") {
        return;
    }
    let mut e1 = Endpoint::start("127.0.0.11:0".parse().unwrap()).await;
    let e2 = Endpoint::start("127.0.0.12:0".parse().unwrap()).await;
    let cfg = base_config(&format!(
        r#"
[[gslb]]
name = "app.example.com."
ttl = 5
policy = "all"
health = {{ kind = "http", path = "/health", interval = "{INTERVAL_MS}ms", timeout = "{TIMEOUT_MS}ms", rise = 1, fall = 1 }}
[[gslb.member]]
address = "127.0.0.11"
health = {{ kind = "http", path = "/health", interval = "{INTERVAL_MS}ms", timeout = "{TIMEOUT_MS}ms", rise = 1, fall = 1, port = {p1} }}
[[gslb.member]]
address = "127.0.0.12"
health = {{ kind = "http", path = "/health", interval = "{INTERVAL_MS}ms", timeout = "{TIMEOUT_MS}ms", rise = 1, fall = 1, port = {p2} }}
"#,
        p1 = e1.addr.port(),
        p2 = e2.addr.port()
    ));
    let (srv, a) = start(&cfg).await;

    let d = dig(a, &["app.example.com", "A"]).await;
    assert!(d.has_flag("aa"));
    let recs = dns_common::Dig::records(&d.answer);
    assert!(recs.iter().all(|r| r.1 == 5), "GSLB TTL: {recs:?}");
    assert_eq!(
        addresses(a, &["app.example.com", "A"]).await,
        ["127.0.0.11", "127.0.0.12"]
    );
    // No AAAA member: NODATA with the SOA.
    let d = dig(a, &["app.example.com", "AAAA"]).await;
    assert_eq!(
        (d.status.as_str(), d.answer.len(), d.authority.len()),
        ("NOERROR", 0, 1)
    );

    // One probe cycle after the endpoint dies, the member is gone.
    let bound = Duration::from_millis(INTERVAL_MS * 11 / 10 + TIMEOUT_MS + 300);
    e1.stop().await;
    let took = wait_answer(
        a,
        "app.example.com",
        &["127.0.0.12"],
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took <= bound,
        "left the answers after {took:?} (bound {bound:?})"
    );
    let st = srv.monitor().snapshot();
    assert!(
        st.iter()
            .any(|(_, t, s)| t.addr.ip() == e1.addr.ip() && !s.health.is_up()),
        "{st:?}"
    );

    // Back: returns within one interval.
    let _e1b = Endpoint::start(e1.addr).await;
    let took = wait_answer(
        a,
        "app.example.com",
        &["127.0.0.11", "127.0.0.12"],
        Duration::from_secs(5),
    )
    .await;
    assert!(took <= bound, "came back after {took:?} (bound {bound:?})");
    srv.shutdown().await;
}

fn geo_config() -> String {
    base_config(
        r#"
[[region]]
name = "eu"
prefixes = ["198.18.100.0/24", "127.0.0.2/32", "2001:db8:100::/48"]
[[region]]
name = "us"
prefixes = ["198.18.0.0/16", "127.0.0.3/32"]

[[gslb]]
name = "geo.example.com."
ttl = 10
policy = "closest"
health = { kind = "none" }
[[gslb.member]]
address = "198.18.10.1"
region = "eu"
[[gslb.member]]
address = "198.18.20.1"
region = "us"
[[gslb.member]]
address = "198.18.20.2"
region = "us"

[[gslb]]
name = "w.example.com."
policy = "weighted"
count = 1
health = { kind = "none" }
[[gslb.member]]
address = "198.18.30.1"
[[gslb.member]]
address = "198.18.30.2"

[[gslb]]
name = "fb.example.com."
fallback = "backup"
health = { kind = "tcp", port = 9, interval = "100ms", timeout = "50ms", fall = 1 }
[[gslb.member]]
address = "127.0.0.31"
[[gslb.backup]]
address = "198.18.40.1"
health = { kind = "none" }
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_by_ecs_and_by_source() {
    if !have("dig", "dnsutils") {
        return;
    }
    let (srv, a) = start(&geo_config()).await;

    // ECS from a resolver serving 198.18.100.0/24: the eu member, scope /24.
    let d = dig(a, &["+subnet=198.18.100.0/24", "geo.example.com", "A"]).await;
    assert_eq!(d.answer_data(), ["A 198.18.10.1"]);
    let ecs = d.subnet.clone().unwrap_or_default();
    assert!(
        ecs.contains("198.18.100.0/24/24"),
        "ECS echo with scope: {}",
        d.raw
    );
    // Another /24 inside the us /16: us members, scope /16.
    let d = dig(a, &["+subnet=198.18.7.0/24", "geo.example.com", "A"]).await;
    assert_eq!(d.answer_data(), ["A 198.18.20.1", "A 198.18.20.2"]);
    assert!(
        d.subnet.unwrap_or_default().contains("198.18.7.0/24/16"),
        "{}",
        d.raw
    );
    // No ECS: the source address decides.
    let d = dig(a, &["-b", "127.0.0.2", "geo.example.com", "A"]).await;
    assert_eq!(d.answer_data(), ["A 198.18.10.1"], "{}", d.raw);
    let d = dig(a, &["-b", "127.0.0.3", "geo.example.com", "A"]).await;
    assert_eq!(d.answer_data(), ["A 198.18.20.1", "A 198.18.20.2"]);
    // Unknown region: every healthy member.
    let d = dig(a, &["-b", "127.0.0.4", "geo.example.com", "A"]).await;
    assert_eq!(d.answer.len(), 3);

    // Weighted subset of one, both members seen over many queries.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let got = addresses(a, &["w.example.com", "A"]).await;
        assert_eq!(got.len(), 1);
        seen.insert(got[0].clone());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The only member is down (nothing listens on 127.0.0.31:9): backup pool.
    wait_answer(
        a,
        "fb.example.com",
        &["198.18.40.1"],
        Duration::from_secs(5),
    )
    .await;
    srv.shutdown().await;
}
