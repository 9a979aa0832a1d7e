//! Probers and the monitor against real sockets on loopback.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RecordType},
};
use lb_userspace::health::{
    probe, CheckKind, Health, HealthCheck, Monitor, ProbeError, StatusRanges, Target,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

fn check(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        kind,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        rise: 2,
        fall: 2,
        port: None,
    }
}

fn http(expect: &str) -> CheckKind {
    CheckKind::Http {
        path: "/healthz".into(),
        host: Some("app.example".into()),
        expect: StatusRanges::parse(expect).unwrap(),
    }
}

/// A port on loopback that refuses connections (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A minimal HTTP server: answers every request with the status in `status`
/// (0 = accept and never answer). Records the last request head.
struct HttpBackend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    last_request: Arc<std::sync::Mutex<String>>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    async fn start(status: u16) -> HttpBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(AtomicU16::new(status));
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let (st2, last2) = (st.clone(), last.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let st = st2.clone();
                let last = last2.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    *last.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let code = st.load(Ordering::SeqCst);
                    if code == 0 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        HttpBackend {
            addr,
            status: st,
            last_request: last,
            task,
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn tcp_probe_passes_and_is_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let lat = probe(addr, &check(CheckKind::Tcp)).await.unwrap();
    assert!(lat < Duration::from_millis(300));
    drop(l);
    assert_eq!(
        probe(addr, &check(CheckKind::Tcp)).await.unwrap_err(),
        ProbeError::ConnectionRefused
    );
}

#[tokio::test]
async fn port_override_is_used() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = l.local_addr().unwrap();
    let bad = closed_port().await;
    let mut c = check(CheckKind::Tcp);
    c.port = Some(good.port());
    assert!(probe(bad, &c).await.is_ok());
}

#[tokio::test]
async fn http_probe_status_ranges_and_host() {
    let b = HttpBackend::start(200).await;
    probe(b.addr, &check(http("200-399"))).await.unwrap();
    let req = b.last_request.lock().unwrap().clone();
    assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nHost: app.example\r\n"), "{req}");

    b.status.store(503, Ordering::SeqCst);
    let e = probe(b.addr, &check(http("200-399"))).await.unwrap_err();
    assert_eq!(e, ProbeError::HttpStatus(503));
    assert_eq!(e.to_string(), "status 503");
    probe(b.addr, &check(http("500-503"))).await.unwrap();

    b.status.store(0, Ordering::SeqCst);
    let e = probe(b.addr, &check(http("200"))).await.unwrap_err();
    assert_eq!(e, ProbeError::Timeout(Duration::from_millis(300)));
}

#[tokio::test]
async fn http_probe_rejects_non_http() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"SSH-2.0-OpenSSH_9.0\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let e = probe(addr, &check(http("200"))).await.unwrap_err();
    assert!(matches!(e, ProbeError::HttpMalformed(_)), "{e:?}");
    t.await.unwrap();
}

/// A UDP responder that answers with `reply(query)`.
async fn udp_responder(
    reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            if let Some(r) = reply(&buf[..n]) {
                let _ = s.send_to(&r, peer).await;
            }
        }
    });
    (addr, t)
}

fn dns_kind() -> CheckKind {
    CheckKind::UdpDns {
        query: Name::from_ascii("example.com.").unwrap(),
        qtype: RecordType::SOA,
    }
}

#[tokio::test]
async fn udp_dns_probe() {
    // A well-formed answer (REFUSED counts: the server is alive).
    let (ok, t1) = udp_responder(|q| {
        let q = Message::from_vec(q).ok()?;
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.response_code = ResponseCode::Refused;
        r.add_queries(q.queries.clone());
        r.to_vec().ok()
    })
    .await;
    probe(ok, &check(dns_kind())).await.unwrap();

    // SERVFAIL fails.
    let (sf, t2) = udp_responder(|q| {
        let q = Message::from_vec(q).ok()?;
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.response_code = ResponseCode::ServFail;
        r.add_queries(q.queries.clone());
        r.to_vec().ok()
    })
    .await;
    let e = probe(sf, &check(dns_kind())).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::DnsRcode(ResponseCode::ServFail)),
        "{e:?}"
    );

    // Garbage with our ID fails as malformed.
    let (bad, t3) = udp_responder(|q| Some(vec![q[0], q[1], 0x80, 0, 0, 5])).await;
    let e = probe(bad, &check(dns_kind())).await.unwrap_err();
    assert!(matches!(e, ProbeError::DnsMalformed(_)), "{e:?}");

    // Silence times out.
    let (silent, t4) = udp_responder(|_| None).await;
    let e = probe(silent, &check(dns_kind())).await.unwrap_err();
    assert!(matches!(e, ProbeError::Timeout(_)), "{e:?}");
    for t in [t1, t2, t3, t4] {
        t.abort();
    }
}

/// Waits (bounded) until the target's health equals `want`.
async fn wait_for(m: &Monitor, id: lb_userspace::health::TargetId, want: Health, within: Duration) {
    let mut rx = m.watch(id).unwrap();
    let r = tokio::time::timeout(within, async {
        loop {
            if rx.borrow_and_update().health == want {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "target did not become {want} within {within:?}: {:?}",
        m.status(id)
    );
}

#[tokio::test]
async fn monitor_follows_backend_and_reports_changes_once() {
    let b = HttpBackend::start(200).await;
    let m = Monitor::new();
    let mut changes = m.subscribe();
    let t = Target::new(b.addr, check(http("200-399")));
    let id = m.add(t.clone());
    assert_eq!(m.status(id).unwrap().health, Health::Up, "starts up");

    // Two passing probes: still up, latency recorded, no change event.
    let mut rx = m.watch(id).unwrap();
    tokio::time::timeout(Duration::from_secs(2), async {
        while rx.borrow_and_update().probes < 2 {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let s = m.status(id).unwrap();
    assert!(s.last_latency.is_some());
    assert!(changes.try_recv().is_err());

    b.status.store(503, Ordering::SeqCst);
    // fall = 2 at 100ms ±10%: down within ~250ms; allow slack for a busy host.
    wait_for(&m, id, Health::Down, Duration::from_secs(2)).await;
    let c = changes.recv().await.unwrap();
    assert_eq!((c.id, c.health), (id, Health::Down));
    assert!(c.reason.contains("status 503"), "{}", c.reason);
    assert_eq!(
        m.status(id).unwrap().last_failure,
        Some(ProbeError::HttpStatus(503))
    );

    b.status.store(200, Ordering::SeqCst);
    wait_for(&m, id, Health::Up, Duration::from_secs(2)).await;
    let c = changes.recv().await.unwrap();
    assert_eq!((c.id, c.health), (id, Health::Up));
    // Exactly one event per transition.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(changes.try_recv().is_err());
}

#[tokio::test]
async fn monitor_shares_equal_targets_and_removes_by_refcount() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m = Monitor::new();
    let t = Target::new(l.local_addr().unwrap(), check(CheckKind::Tcp));
    let a = m.add(t.clone());
    let b = m.add(t.clone());
    assert_eq!(a, b);
    assert_eq!(m.len(), 1);
    let other = m.add(Target::new(closed_port().await, check(CheckKind::Tcp)));
    assert_ne!(other, a);
    wait_for(&m, other, Health::Down, Duration::from_secs(2)).await;
    assert!(m.is_up(a));
    assert!(m.remove(a));
    assert_eq!(m.len(), 2);
    assert!(m.remove(a));
    assert_eq!(m.len(), 1);
    assert!(!m.remove(a));
    assert!(m.status(a).is_none());
    assert!(!m.is_up(a));
    let none = m.add(Target::new(closed_port().await, HealthCheck::none()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(m.is_up(none), "kind none is never probed and always up");
    assert_eq!(m.status(none).unwrap().probes, 0);
}
