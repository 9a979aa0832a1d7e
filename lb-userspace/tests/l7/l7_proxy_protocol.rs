//! `proxy_protocol = true` listeners over real sockets: the PROXY header
//! (v2 and v1, written byte by byte here) names the client for the
//! backend's forwarding headers and the access log, over plain HTTP and
//! before a TLS ClientHello; connections without a valid header, or from
//! a peer outside `proxy_trusted`, are closed without a byte answered and
//! counted in the metrics; a listener without `proxy_protocol` answers a
//! PROXY header as the bad HTTP it is.

use crate::l7_support;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use l7_support::*;
use lb_userspace::{admin::metrics, config::Config, health::Monitor, l4::control::Control};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY TCP4 header: 198.18.77.7:40000 → 198.18.0.1:443, with one
/// AUTHORITY TLV the proxy must skip.
fn v2_tcp4() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    let tlv: &[u8] = b"\x02\x00\x0da.example.com";
    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[198, 18, 77, 7]);
    h.extend_from_slice(&[198, 18, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(tlv);
    h
}

/// A v2 LOCAL header (what a balancer's own health check sends).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

fn cfg(name: &str, extra: &str, log: Option<&Path>, tls: &str, b: &Backend) -> String {
    let log = log.map_or_else(|| "off".to_string(), |p| p.display().to_string());
    format!(
        "[[l7]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"{log}\"\n\
         forwarded_headers = [\"x-forwarded-for\", \"forwarded\"]\n{extra}\n{tls}\
         [[l7.route]]\nupstream = \"app\"\n{}",
        upstream_table("app", &[b], "")
    )
}

/// Writes `parts` one after the other (a short pause between them, so the
/// proxy sees them in separate reads), then reads until the proxy closes
/// or 5 s pass. Returns every byte the proxy answered.
async fn send(proxy: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The proxy may already have closed (an early rejection).
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    read_to_close(&mut s, Duration::from_secs(5)).await
}

async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let r = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the proxy kept the connection open for {limit:?}"));
        match r {
            // EOF, or a reset: the proxy closed with unread bytes queued.
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The echo backend's body of an HTTP/1.1 answer.
fn body_of(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The access log's lines, once it has `n` (the line is written when the
/// response body ends).
async fn log_lines(path: &Path, n: usize) -> Vec<String> {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), n, "{text}");
    lines
}

/// `lb_l7_proxy_protocol_rejected_total` as the admin API's /metrics renders it.
fn rejected(cfg: &str, listener: &str, reason: &str) -> u64 {
    let config = Config::parse(cfg).unwrap_or_else(|e| panic!("{e}"));
    let ctl = Control::new(config, None, Monitor::new()).unwrap();
    let m = metrics::render(&ctl);
    let prefix = format!(
        "lb_l7_proxy_protocol_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}} "
    );
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_and_v1_name_the_client_for_backend_and_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1").await;
    let text = cfg(
        "pp-plain",
        "proxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\", \"::1\"]",
        Some(&log),
        "",
        &b,
    );
    let (server, addrs) = start_proxy(&text).await;

    // v2, the header cut in three writes and the request in a fourth.
    let h = v2_tcp4();
    let req = get("a.example.com", "/v2");
    let resp = send(addrs[0], &[&h[..5], &h[5..17], &h[17..], &req]).await;
    let echoed = echoed_headers(&body_of(&resp));
    assert_eq!(echoed["x-forwarded-for"], "198.18.77.7");
    assert_eq!(
        echoed["forwarded"],
        "for=198.18.77.7;host=a.example.com;proto=http"
    );

    // v2 with the request in the same segment as the header.
    let mut both = v2_tcp4();
    both.extend_from_slice(&get("a.example.com", "/v2-one-write"));
    let echoed = echoed_headers(&body_of(&send(addrs[0], &[&both]).await));
    assert_eq!(echoed["x-forwarded-for"], "198.18.77.7");

    // v1 TCP6.
    let v1 = b"PROXY TCP6 2001:db8::77 2001:db8::1 40001 80\r\n";
    let resp = send(
        addrs[0],
        &[&v1[..9], &v1[9..], &get("a.example.com", "/v1")],
    )
    .await;
    let echoed = echoed_headers(&body_of(&resp));
    assert_eq!(echoed["x-forwarded-for"], "2001:db8::77");
    assert_eq!(
        echoed["forwarded"],
        "for=\"[2001:db8::77]\";host=a.example.com;proto=http"
    );

    // LOCAL: the connection's own peer is the client.
    let resp = send(addrs[0], &[&v2_local(), &get("a.example.com", "/local")]).await;
    let echoed = echoed_headers(&body_of(&resp));
    assert_eq!(echoed["x-forwarded-for"], "127.0.0.1");

    assert_eq!(b.hits(), 4);
    let lines = log_lines(&log, 4).await;
    for (line, client, target) in [
        (&lines[0], "198.18.77.7:40000", "/v2"),
        (&lines[1], "198.18.77.7:40000", "/v2-one-write"),
        (&lines[2], "[2001:db8::77]:40001", "/v1"),
    ] {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[1], "pp-plain", "{line}");
        assert_eq!(f[2], client, "{line}");
        assert_eq!(f[4], target, "{line}");
        assert_eq!(f[6], "200", "{line}");
    }
    assert!(
        lines[3]
            .split(' ')
            .nth(2)
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{}",
        lines[3]
    );
    for reason in ["untrusted", "missing", "invalid", "closed", "timeout"] {
        assert_eq!(rejected(&text, "pp-plain", reason), 0, "{reason}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_header_before_the_tls_client_hello() {
    let pki = Pki::new();
    let log = pki.path("access.log");
    let b = Backend::start("b1").await;
    let text = cfg(
        "pp-tls",
        "proxy_protocol = true",
        Some(&log),
        &pki.cert_tables(),
        &b,
    );
    let (server, addrs) = start_proxy(&text).await;

    let mut tcp = TcpStream::connect(addrs[0]).await.unwrap();
    tcp.write_all(&v2_tcp4()).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/tls")
        .header("host", "a.example.com")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echoed = echoed_headers(&String::from_utf8_lossy(&body));
    assert_eq!(echoed["x-forwarded-for"], "198.18.77.7");
    assert_eq!(
        echoed["forwarded"],
        "for=198.18.77.7;host=a.example.com;proto=https"
    );

    // Without the header the ClientHello itself is refused: no handshake.
    let tcp = TcpStream::connect(addrs[0]).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());

    let lines = log_lines(&log, 1).await;
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[2], "198.18.77.7:40000", "{}", lines[0]);
    assert_eq!(f[4], "/tls", "{}", lines[0]);
    assert_eq!(f[10], "tls=TLSv1.3", "{}", lines[0]);
    assert_eq!(rejected(&text, "pp-tls", "missing"), 1);
    assert_eq!(b.hits(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_required_connections_without_it_get_no_answer() {
    let b = Backend::start("b1").await;
    let text = cfg(
        "pp-strict",
        "proxy_protocol = true\ntimeouts = { header = \"300ms\" }",
        None,
        "",
        &b,
    );
    let (server, addrs) = start_proxy(&text).await;

    // Plain HTTP, no header.
    let t = Instant::now();
    let resp = send(addrs[0], &[&get("a.example.com", "/none")]).await;
    assert!(resp.is_empty(), "{:?}", String::from_utf8_lossy(&resp));
    assert!(t.elapsed() < Duration::from_secs(2), "closed at once");
    // A broken v1 header, then a request.
    let resp = send(
        addrs[0],
        &[
            b"PROXY TCP4 198.18.77.7 198.18.0.1 40000\r\n",
            &get("a.example.com", "/bad"),
        ],
    )
    .await;
    assert!(resp.is_empty(), "{:?}", String::from_utf8_lossy(&resp));
    // A v2 header whose address block is cut short by the peer closing.
    let mut s = TcpStream::connect(addrs[0]).await.unwrap();
    s.write_all(&v2_tcp4()[..20]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(read_to_close(&mut s, Duration::from_secs(5))
        .await
        .is_empty());
    // Half a header, then silence: closed at timeouts.header.
    let mut s = TcpStream::connect(addrs[0]).await.unwrap();
    s.write_all(b"PROXY TCP4 198.18").await.unwrap();
    let t = Instant::now();
    assert!(read_to_close(&mut s, Duration::from_secs(5))
        .await
        .is_empty());
    assert!(
        (Duration::from_millis(250)..Duration::from_secs(3)).contains(&t.elapsed()),
        "{:?}",
        t.elapsed()
    );

    assert_eq!(b.hits(), 0);
    assert_eq!(rejected(&text, "pp-strict", "missing"), 1);
    assert_eq!(rejected(&text, "pp-strict", "invalid"), 1);
    assert_eq!(rejected(&text, "pp-strict", "closed"), 1);
    assert_eq!(rejected(&text, "pp-strict", "timeout"), 1);
    assert_eq!(rejected(&text, "pp-strict", "untrusted"), 0);

    // A good header still works on the same listener.
    let mut ok = v2_tcp4();
    ok.extend_from_slice(&get("a.example.com", "/ok"));
    let echoed = echoed_headers(&body_of(&send(addrs[0], &[&ok]).await));
    assert_eq!(echoed["x-forwarded-for"], "198.18.77.7");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_peer_outside_proxy_trusted_is_closed_unanswered() {
    let b = Backend::start("b1").await;
    // The test client connects from 127.0.0.1, which is not in the list.
    let text = cfg(
        "pp-untrusted",
        "proxy_protocol = true\nproxy_trusted = [\"198.18.0.0/15\", \"2001:db8::/32\"]",
        None,
        "",
        &b,
    );
    let (server, addrs) = start_proxy(&text).await;
    let mut req = v2_tcp4();
    req.extend_from_slice(&get("a.example.com", "/spoof"));
    for _ in 0..3 {
        let resp = send(addrs[0], &[&req]).await;
        assert!(resp.is_empty(), "{:?}", String::from_utf8_lossy(&resp));
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(rejected(&text, "pp-untrusted", "untrusted"), 3);
    assert_eq!(rejected(&text, "pp-untrusted", "missing"), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_header_on_a_listener_without_it_is_400() {
    let b = Backend::start("b1").await;
    let text = cfg("pp-off", "", None, "", &b);
    let (server, addrs) = start_proxy(&text).await;
    let v1 = b"PROXY TCP4 198.18.77.7 198.18.0.1 40000 80\r\n";
    for header in [&v1[..], &v2_tcp4()] {
        let resp = send(addrs[0], &[header, &get("a.example.com", "/")]).await;
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp:?}");
    }
    assert_eq!(b.hits(), 0);
    // The listener has no PROXY protocol metric.
    let m = metrics::render(
        &Control::new(Config::parse(&text).unwrap(), None, Monitor::new()).unwrap(),
    );
    assert!(!m.contains("pp-off"), "{m}");
    server.shutdown().await;
}
