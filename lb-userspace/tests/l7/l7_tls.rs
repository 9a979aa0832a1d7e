//! TLS termination seen by real clients: SNI certificate selection, chains,
//! ALPN h2, `lb cert` output verified by openssl, certificate reload.

use crate::l7_support;

use std::time::Duration;

use l7_support::*;

fn tls_config(pki: &Pki, backend: &Backend, extra: &str) -> String {
    format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n{extra}\n{}\n[[l7.route]]\nupstream = \"app\"\n{}",
        pki.cert_tables(),
        upstream_table("app", &[backend], "")
    )
}

/// Subject CN of the certificate curl saw (from `curl -v`).
fn seen_subject(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: "))
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_certificate_for_each_sni_name() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&tls_config(&pki, &backend, "")).await;
    let proxy = addrs[0];

    let (code, body, err) = curl_https(&pki, proxy, "a.example.com", "/hello", &[]).await;
    assert_eq!(code, 0, "curl failed: {err}");
    assert!(seen_subject(&err).contains("CN=a.example.com"), "{err}");
    assert!(
        body.starts_with("GET /hello HTTP/1.1\n"),
        "backend answer: {body}"
    );
    assert_eq!(
        echoed_headers(&body)["host"],
        format!("a.example.com:{}", proxy.port())
    );

    // The wildcard certificate covers one label below b.example.com.
    let (code, body, err) = curl_https(&pki, proxy, "www.b.example.com", "/w", &[]).await;
    assert_eq!(code, 0, "curl failed: {err}");
    assert!(seen_subject(&err).contains("CN=*.b.example.com"), "{err}");
    assert!(body.starts_with("GET /w HTTP/1.1\n"), "{body}");

    // An unknown name is refused at the handshake (unknown_sni = reject)...
    let (code, _, err) = curl_https(&pki, proxy, "nope.example.org", "/", &[]).await;
    assert_ne!(code, 0, "handshake for an unknown name must fail: {err}");
    // ...and the listener keeps serving.
    let (code, _, err) = curl_https(&pki, proxy, "a.example.com", "/", &[]).await;
    assert_eq!(code, 0, "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_gets_the_default_certificate_when_configured() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start("b1").await;
    let cfg = tls_config(&pki, &backend, "unknown_sni = \"default\"").replacen(
        "[[l7.cert]]\ncert",
        "[[l7.cert]]\ndefault = true\ncert",
        1,
    );
    let (server, addrs) = start_proxy(&cfg).await;
    // curl checks the name, so it must refuse the default (a.example.com) certificate
    // for another name: but it does get it (error 60, not a handshake failure 35).
    let (code, _, err) = curl_https(&pki, addrs[0], "unknown.example.org", "/", &[]).await;
    assert_eq!(code, 60, "expected a certificate name mismatch: {err}");
    assert!(seen_subject(&err).contains("CN=a.example.com"), "{err}");
    // With -k the request goes through.
    let (code, body, err) = curl_https(&pki, addrs[0], "unknown.example.org", "/x", &["-k"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(body.starts_with("GET /x HTTP/1.1\n"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_negotiates_h2() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&tls_config(&pki, &backend, "")).await;
    let (code, out, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/h2?x=1",
        &["--http2", "-w", "\nhttp_version=%{http_version}"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\nhttp_version=2"), "{out}");
    assert!(
        err.contains("ALPN: server accepted h2") || err.contains("ALPN, server accepted to use h2"),
        "{err}"
    );
    // The upstream hop is HTTP/1.1 with the client's authority as Host.
    assert!(out.starts_with("GET /h2?x=1 HTTP/1.1\n"), "{out}");
    assert_eq!(
        echoed_headers(&out)["host"],
        format!("a.example.com:{}", addrs[0].port())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_leaf_and_intermediate_and_lb_cert_chains_verify() {
    if !have_tool("openssl") {
        return;
    }
    let pki = Pki::new();
    // `lb cert` output verifies with openssl: leaf ← intermediate ← root.
    for stem in ["a.example.com", "wildcard.b.example.com"] {
        let out = run(
            "openssl",
            vec![
                "verify".into(),
                "-CAfile".into(),
                pki.root(),
                "-untrusted".into(),
                pki.path("intermediate.pem").display().to_string(),
                pki.path(&format!("{stem}.pem")).display().to_string(),
            ],
        )
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify {stem}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let backend = Backend::start("b1").await;
    let (server, addrs) = start_proxy(&tls_config(&pki, &backend, "")).await;
    let out = run(
        "sh",
        vec![
            "-c".into(),
            format!(
                "echo | timeout 10 openssl s_client -connect 127.0.0.1:{} -servername a.example.com -CAfile {} -showcerts -verify_return_error 2>&1",
                addrs[0].port(),
                pki.root()
            ),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf + intermediate expected:\n{text}"
    );
    assert!(
        text.contains("CN = a.example.com") || text.contains("CN=a.example.com"),
        "{text}"
    );
    assert!(text.contains("lb test root CA intermediate"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_without_dropping_requests() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start("b1").await;
    // The served files for a.example.com live at a path the test rewrites.
    let live_chain = pki.path("live.chain.pem");
    let live_key = pki.path("live.key");
    std::fs::copy(pki.chain("a.example.com"), &live_chain).unwrap();
    std::fs::copy(pki.key("a.example.com"), &live_key).unwrap();
    let cfg = format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n\
         [[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"a.example.com\"]\n\
         [[l7.route]]\nupstream = \"app\"\n{}",
        live_chain.display(),
        live_key.display(),
        upstream_table("app", &[&backend], "")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let proxy = addrs[0];

    let (code, _, err) = curl_https(&pki, proxy, "a.example.com", "/", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(seen_subject(&err).contains("CN=a.example.com"));

    // A long request in flight over an established TLS connection.
    let mut long_client = H1Client::connect(&pki, proxy, "a.example.com").await;
    let long = tokio::spawn(async move { long_client.get("/slow/1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A broken file: the config is refused (as `lb` refuses the reload),
    // the field named, and the old certificate stays.
    std::fs::write(&live_key, "not a key").unwrap();
    let err = lb_userspace::config::Config::parse(&cfg).expect_err("a broken key must be refused");
    assert!(err.to_string().contains("l7[0].cert[0].key"), "{err}");
    let (code, _, e) = curl_https(&pki, proxy, "a.example.com", "/", &[]).await;
    assert_eq!(code, 0, "old certificate still served: {e}");
    assert!(seen_subject(&e).contains("CN=a.example.com"));

    // Swap in the `other.example.net` certificate under the same paths (names
    // pinned in the config), reload: new handshakes see it.
    std::fs::copy(pki.chain("other.example.net"), &live_chain).unwrap();
    std::fs::copy(pki.key("other.example.net"), &live_key).unwrap();
    let parsed = lb_userspace::config::Config::parse(&cfg).unwrap();
    server.reload(&parsed.l7).await.expect("reload");
    let (code, _, e) = curl_https(&pki, proxy, "a.example.com", "/", &["-k"]).await;
    assert_eq!(code, 0, "{e}");
    assert!(
        seen_subject(&e).contains("CN=other.example.net"),
        "new certificate expected: {e}"
    );

    // The request that was in flight completed normally.
    let (status, backend_name, body) = long.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(backend_name, "b1");
    assert!(body.starts_with("GET /slow/1500 HTTP/1.1\n"));
    server.shutdown().await;
}
