//! Bad and hostile input: malformed requests, oversized heads and bodies,
//! TLS garbage, plain HTTP on the TLS port, header trickle, connection
//! limits, upstream timeouts, retries, HTTP/2 stream limits and reset floods.

use crate::l7_support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use l7_support::*;
use lb_userspace::config::Config;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

fn config(pki: &Pki, b: &Backend, extra: &str) -> String {
    format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n{extra}\n{}[[l7.route]]\nupstream = \"app\"\n{}",
        pki.cert_tables(),
        upstream_table("app", &[b], "")
    )
}

async fn tls_raw(pki: &Pki, proxy: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// Writes `req`, reads until the peer closes or 5 s pass; returns what came back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &[u8]) -> String {
    s.write_all(req).await.unwrap();
    read_all(s, Duration::from_secs(5)).await
}

async fn read_all<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A second, normal request still works: the proxy kept serving.
async fn still_serving(pki: &Pki, proxy: SocketAddr) {
    let mut c = H1Client::connect(pki, proxy, "a.example.com").await;
    let (s, who, _) = c.get("/ok", &[]).await;
    assert_eq!((s, who.as_str()), (200, "b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_line_is_400() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "")).await;
    let mut s = tls_raw(&pki, addrs[0]).await;
    let resp = exchange(&mut s, b"GARBAGE\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp:?}");
    let mut s = tls_raw(&pki, addrs[0]).await;
    let resp = exchange(
        &mut s,
        b"GET /a b c HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp:?}");
    // HTTP/1.1 without Host.
    let mut s = tls_raw(&pki, addrs[0]).await;
    let resp = exchange(&mut s, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp:?}");
    assert_eq!(b.hits(), 0);
    still_serving(&pki, addrs[0]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "max_header_size = \"8k\"")).await;
    let mut s = tls_raw(&pki, addrs[0]).await;
    let big = "x".repeat(9000);
    let req = format!("GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: {big}\r\n\r\n");
    let resp = exchange(&mut s, req.as_bytes()).await;
    assert!(
        resp.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{resp:?}"
    );
    // Just under the limit passes.
    let mut s = tls_raw(&pki, addrs[0]).await;
    let ok = "x".repeat(7000);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n"
    );
    let resp = exchange(&mut s, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "max_body_size = \"64k\"")).await;
    let body_file = pki.path("body.bin");
    std::fs::write(&body_file, vec![b'a'; 100 * 1024]).unwrap();
    let data = format!("@{}", body_file.display());
    // With Content-Length: refused before anything goes upstream.
    let (code, out, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/upload",
        &["--http1.1", "--data-binary", &data, "-w", "\n%{http_code}"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("413 Payload Too Large\n\n413"), "{out}");
    // Chunked, no length: cut when the limit is crossed.
    let (code, out, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/upload",
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            "-w",
            "\n%{http_code}",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n413"), "{out}");
    // Over HTTP/2 as well.
    let (code, out, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/upload",
        &["--http2", "--data-binary", &data, "-w", "\n%{http_code}"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n413"), "{out}");
    // Under the limit is proxied with its body.
    std::fs::write(&body_file, vec![b'a'; 60 * 1024]).unwrap();
    let (code, out, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/upload",
        &["--data-binary", &data],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("body-length: 61440\n"), "{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_and_plain_http_close_only_that_connection() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "")).await;
    // A long-lived good connection, opened before the garbage.
    let mut good = H1Client::connect(&pki, addrs[0], "a.example.com").await;

    let mut raw = TcpStream::connect(addrs[0]).await.unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let _ = raw.write_all(&garbage).await;
    let _ = read_all(&mut raw, Duration::from_secs(5)).await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "garbage connection must be closed promptly"
    );

    let mut raw = TcpStream::connect(addrs[0]).await.unwrap();
    let t = Instant::now();
    let resp = exchange(&mut raw, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "plain HTTP on the TLS port must be closed promptly"
    );
    assert!(!resp.contains("200 OK"), "{resp:?}");

    assert_eq!(good.get("/after", &[]).await.0, 200);
    still_serving(&pki, addrs[0]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_trickle_is_cut_at_the_header_timeout() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "timeouts = { header = \"1s\" }")).await;
    let mut s = tls_raw(&pki, addrs[0]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut closed_at = None;
    // Trickle one header line every 200 ms for up to 8 s.
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-T{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_at = Some(t.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            // EOF, an error, or an error response: the proxy gave up on us.
            let _ = r;
            closed_at = Some(t.elapsed());
            break;
        }
    }
    let at = closed_at.expect("the trickling connection was never cut");
    assert!(
        at >= Duration::from_millis(800) && at < Duration::from_secs(3),
        "cut after {at:?}"
    );
    assert_eq!(b.hits(), 0);
    still_serving(&pki, addrs[0]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "max_connections = 2")).await;
    let mut c1 = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let mut c2 = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    assert_eq!(c1.get("/", &[]).await.0, 200);
    assert_eq!(c2.get("/", &[]).await.0, 200);
    // A third connection is accepted by the kernel and closed by the proxy at once.
    let mut third = TcpStream::connect(addrs[0]).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0) | Err(_))),
        "third connection must be closed: {r:?}"
    );
    drop(c1);
    // A slot frees up.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tcp = TcpStream::connect(addrs[0]).await.unwrap();
        let connector =
            tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
        let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
        if connector.connect(name, tcp).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "a new connection is accepted once one closed");
    assert_eq!(c2.get("/", &[]).await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_and_dead_one_is_502() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(
        &pki,
        &b,
        "timeouts = { upstream_response = \"300ms\" }",
    ))
    .await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let t = Instant::now();
    let (s, _, body) = c.get("/slow/3000", &[]).await;
    assert_eq!(s, 504, "{body}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(c.get("/fast", &[]).await.0, 200);
    b.kill().await;
    let (s, _, body) = c.get("/", &[]).await;
    assert_eq!(s, 502, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_retried_on_another_server() {
    let pki = Pki::new();
    let alive = Backend::start("alive").await;
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n{}[[l7.route]]\nupstream = \"app\"\n\
         [[l7.upstream]]\nname = \"app\"\nservers = [\"{dead}\", \"{}\"]\neject_after = 0\n",
        pki.cert_tables(),
        alive.addr
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut sender = h2_connect(&pki, addrs[0], "a.example.com").await;
    let mut statuses = Vec::new();
    for method in ["GET", "GET", "GET", "GET", "POST", "POST", "POST", "POST"] {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://a.example.com:{}/", addrs[0].port()))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        statuses.push((method, resp.status().as_u16()));
    }
    // GETs to the dead server were retried on the live one.
    assert!(statuses[..4].iter().all(|&(_, s)| s == 200), "{statuses:?}");
    // POSTs alternate: the ones sent to the dead server fail with 502, not retried.
    let post: Vec<u16> = statuses[4..].iter().map(|&(_, s)| s).collect();
    assert_eq!(
        post.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        post.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(alive.hits(), 6);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_are_limited_per_connection() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "max_h2_streams = 4")).await;
    let mut sender = h2_connect(&pki, addrs[0], "a.example.com").await;
    // One request first, so the client has the server's SETTINGS (stream limit).
    let req = http::Request::get(format!("https://a.example.com:{}/", addrs[0].port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut s = sender.clone();
        let port = addrs[0].port();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://a.example.com:{port}/slow/300"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // 12 requests, at most 4 at a time, 300 ms each: at least three rounds.
    assert!(
        t.elapsed() >= Duration::from_millis(850),
        "finished in {:?}",
        t.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_flood_closes_that_connection_only() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "")).await;
    let port = addrs[0].port();
    let mut flood = h2_connect(&pki, addrs[0], "a.example.com").await;
    let t = Instant::now();
    let mut sent = 0;
    // Open a stream, let it reach the proxy, reset it; repeat (bounded).
    while sent < 5000 && t.elapsed() < Duration::from_secs(10) {
        if flood.ready().await.is_err() {
            break;
        }
        let req = http::Request::get(format!("https://a.example.com:{port}/slow/2000"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = flood.send_request(req);
        // Dropping the pending response resets the stream (RST_STREAM CANCEL).
        let _ = tokio::time::timeout(Duration::from_millis(2), fut).await;
        sent += 1;
    }
    eprintln!("flooding connection closed after {sent} reset streams");
    assert!(
        sent < 5000 && flood.is_closed() || flood.ready().await.is_err(),
        "the flooding connection must be closed by the proxy (sent {sent})"
    );
    assert!(sent < 1000, "cut too late: {sent} resets accepted");
    still_serving(&pki, addrs[0]).await;
    server.shutdown().await;
}

/// A TLS handshake that the proxy completes (Some) or refuses (None).
async fn try_tls(
    pki: &Pki,
    proxy: SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await.ok()?;
    let connector =
        tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
    tokio::time::timeout(Duration::from_secs(3), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_connections_while_busy_takes_full_effect() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&config(&pki, &b, "max_connections = 4")).await;
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
        assert_eq!(c.get("/", &[]).await.0, 200);
        busy.push(c);
    }
    // Lower the limit while all four slots are taken, then let them go.
    let cfg = Config::parse(&config(&pki, &b, "max_connections = 2")).unwrap();
    server.reload(&cfg.l7).await.expect("reload");
    drop(busy);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        if let Some(s) = try_tls(&pki, addrs[0]).await {
            open.push(s);
        }
    }
    assert_eq!(
        open.len(),
        2,
        "the lowered limit (2) must hold once the old connections closed"
    );
    server.shutdown().await;
}

/// An upstream for one request: answers with `head`, then sends each body
/// chunk after its delay, then holds the connection open.
fn upstream_once(
    head: &'static [u8],
    chunks: Vec<(Duration, &'static [u8])>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    up.set_nonblocking(true).unwrap();
    let addr = up.local_addr().unwrap();
    let up = tokio::net::TcpListener::from_std(up).unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = up.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(head).await.unwrap();
        for (delay, chunk) in chunks {
            tokio::time::sleep(delay).await;
            s.write_all(chunk).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
    (addr, task)
}

/// GET /big through a proxy whose `upstream_response` is 500 ms, to the
/// upstream at `up`: what the client got and how long it took.
async fn get_through_500ms_proxy(up: SocketAddr) -> (String, Duration) {
    let pki = Pki::new();
    let cfg = format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n\
         timeouts = {{ upstream_response = \"500ms\" }}\n{}[[l7.route]]\nupstream = \"app\"\n\
         [[l7.upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n",
        pki.cert_tables()
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut tls = tls_raw(&pki, addrs[0]).await;
    let t = Instant::now();
    let got = exchange(
        &mut tls,
        b"GET /big HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
    )
    .await;
    let took = t.elapsed();
    server.shutdown().await;
    (got, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_that_stalls_is_cut_at_the_response_timeout() {
    // The head and 10 of 1000 body bytes, then nothing.
    let (up, task) = upstream_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        Vec::new(),
    );
    let (got, took) = get_through_500ms_proxy(up).await;
    task.abort();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("0123456789"), "only the bytes sent: {got}");
    assert!(
        took < Duration::from_secs(4),
        "the proxy must cut the stalled response (took {took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_that_trickles_is_not_cut() {
    // Ten chunks 200 ms apart: 2 s in all, no gap near the 500 ms limit.
    let (up, task) = upstream_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        vec![(Duration::from_millis(200), b"0123456789".as_slice()); 10],
    );
    let (got, took) = get_through_500ms_proxy(up).await;
    task.abort();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with(&"0123456789".repeat(10)),
        "the whole body, slow as it came (took {took:?}): {got}"
    );
}
