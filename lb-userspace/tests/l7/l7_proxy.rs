//! Proxying through real TLS connections to real HTTP backends: forwarding
//! headers, routing, balancing policies, ejection and health, redirects,
//! the access log.

use crate::l7_support;

use std::time::Duration;

use l7_support::*;

fn listener(pki: &Pki, extra: &str) -> String {
    format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\n{extra}\n{}",
        pki.cert_tables()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_backend_byte_for_byte() {
    if !have_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}",
        listener(
            &pki,
            "forwarded_headers = [\"x-forwarded-for\", \"x-forwarded-proto\", \"x-forwarded-host\", \"forwarded\"]"
        ),
        upstream_table("app", &[&b], "")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let port = addrs[0].port();
    let (code, body, err) = curl_https(
        &pki,
        addrs[0],
        "a.example.com",
        "/p?q=1",
        &[
            "--http1.1",
            "-H",
            "X-Forwarded-For: 198.18.0.9",
            "-H",
            "X-Forwarded-Proto: gopher",
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "X-End-To-End: kept",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let h = echoed_headers(&body);
    assert_eq!(h["x-forwarded-for"], "198.18.0.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], format!("a.example.com:{port}"));
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;host=\"a.example.com:{port}\";proto=https")
    );
    assert_eq!(h["host"], format!("a.example.com:{port}"));
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["x-hop", "keep-alive"] {
        assert!(
            !h.contains_key(gone),
            "{gone} must not be forwarded: {body}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rewrite_and_default_forwarding_set() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}",
        listener(&pki, ""),
        upstream_table("app", &[&b], "host_header = \"internal.example\"")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let (status, _, body) = c.get("/", &[]).await;
    assert_eq!(status, 200);
    let h = echoed_headers(&body);
    assert_eq!(h["host"], "internal.example");
    assert_eq!(h["x-forwarded-host"], "a.example.com");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(!h.contains_key("forwarded"), "Forwarded is off by default");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_wildcard_and_path_prefix() {
    let pki = Pki::new();
    let (exact, api, wild, dflt) = (
        Backend::start("exact").await,
        Backend::start("api").await,
        Backend::start("wild").await,
        Backend::start("default").await,
    );
    let routes = "\
[[l7.route]]\nhost = \"a.example.com\"\nupstream = \"exact\"\n\
[[l7.route]]\nhost = \"a.example.com\"\npath_prefix = \"/api/\"\nupstream = \"api\"\n\
[[l7.route]]\nhost = \"*.b.example.com\"\nupstream = \"wild\"\n\
[[l7.route]]\nhost = \"only.b.example.com\"\npath_prefix = \"/static/\"\nupstream = \"wild\"\n\
[[l7.route]]\nupstream = \"default\"\n";
    let cfg = format!(
        "{}{routes}{}{}{}{}",
        listener(&pki, "unknown_sni = \"default\""),
        upstream_table("exact", &[&exact], ""),
        upstream_table("api", &[&api], ""),
        upstream_table("wild", &[&wild], ""),
        upstream_table("default", &[&dflt], "")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    // One TLS connection (SNI a.example.com) can carry any Host, as with curl --resolve + -H Host.
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("a.example.com", "/", 200, "exact"),
        ("A.Example.COM:443", "/index.html", 200, "exact"),
        ("a.example.com", "/api/users", 200, "api"),
        ("a.example.com", "/api", 200, "exact"),
        ("x.b.example.com", "/", 200, "wild"),
        ("deep.x.b.example.com", "/z", 200, "wild"),
        ("b.example.com", "/", 200, "default"),
        ("unknown.test", "/anything", 200, "default"),
        // The exact group for only.b.example.com has no route for "/": 404.
        ("only.b.example.com", "/", 404, ""),
        ("only.b.example.com", "/static/app.js", 200, "wild"),
    ];
    for (host, path, status, backend) in cases {
        let (s, who, body) = c.get(path, &[("host", host)]).await;
        assert_eq!(
            (s, who.as_str()),
            (*status, *backend),
            "{host}{path}: {body}"
        );
    }
    server.shutdown().await;

    // Without a default route, an unknown host is 404.
    let cfg = format!(
        "{}[[l7.route]]\nhost = \"a.example.com\"\nupstream = \"exact\"\n{}",
        listener(&pki, ""),
        upstream_table("exact", &[&exact], "")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let (s, _, body) = c.get("/", &[("host", "elsewhere.test")]).await;
    assert_eq!(s, 404);
    assert_eq!(body, "404 Not Found\n");
    server.shutdown().await;
}

async fn spread(policy: &str, n: usize, headers: &[(&str, &str)]) -> Vec<u64> {
    let pki = Pki::new();
    let bs = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let refs: Vec<&Backend> = bs.iter().collect();
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}",
        listener(&pki, ""),
        upstream_table("app", &refs, policy)
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    for _ in 0..n {
        let (s, _, _) = c.get("/", headers).await;
        assert_eq!(s, 200);
    }
    server.shutdown().await;
    bs.iter().map(super::l7_support::Backend::hits).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let hits = spread("policy = \"round_robin\"", 90, &[]).await;
    assert_eq!(hits, vec![30, 30, 30]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_spreads_sequential_load_and_avoids_busy_servers() {
    // Sequential requests: every server idle, the rotation spreads them.
    let hits = spread("policy = \"least_outstanding\"", 90, &[]).await;
    assert_eq!(hits.iter().sum::<u64>(), 90);
    assert!(hits.iter().all(|&h| h >= 20), "{hits:?}");

    // One server busy with slow requests gets none of the quick ones.
    let pki = Pki::new();
    let bs = [Backend::start("b0").await, Backend::start("b1").await];
    let refs: Vec<&Backend> = bs.iter().collect();
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}",
        listener(&pki, ""),
        upstream_table("app", &refs, "policy = \"least_outstanding\"")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
        slow.push(tokio::spawn(async move { c.get("/slow/1500", &[]).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The two slow requests went to different servers (each had 0 outstanding);
    // now both have one. A third slow one makes one server busier.
    let mut c3 = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let busy_req = tokio::spawn(async move { c3.get("/slow/1500", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before: Vec<u64> = bs.iter().map(super::l7_support::Backend::hits).collect();
    let busy = i32::from(before[0] <= before[1]);
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    for _ in 0..10 {
        let (s, who, _) = c.get("/", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(
            who,
            format!("b{}", 1 - busy),
            "quick requests avoid the busier server"
        );
    }
    for h in slow {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert_eq!(busy_req.await.unwrap().0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_server() {
    let pki = Pki::new();
    let bs = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let refs: Vec<&Backend> = bs.iter().collect();
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n[[l7.route]]\npath_prefix = \"/c/\"\nupstream = \"bycookie\"\n{}{}",
        listener(&pki, ""),
        upstream_table("app", &refs, "policy = \"consistent_hash\"\nhash_key = \"header:x-user\""),
        upstream_table("bycookie", &refs, "policy = \"consistent_hash\"\nhash_key = \"cookie:sid\"")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let u = format!("user-{user}");
        let (_, first, _) = c.get("/", &[("x-user", &u)]).await;
        for _ in 0..4 {
            let (s, who, _) = c.get("/", &[("x-user", &u)]).await;
            assert_eq!(s, 200);
            assert_eq!(who, first, "{u} moved");
        }
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3, "30 keys should land on all three servers");
    // Cookie keys.
    let (_, first, _) = c.get("/c/x", &[("cookie", "theme=dark; sid=abc123")]).await;
    for _ in 0..5 {
        let (_, who, _) = c
            .get("/c/y", &[("cookie", "sid=abc123; theme=light")])
            .await;
        assert_eq!(who, first);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_ejected_and_requests_keep_succeeding() {
    let pki = Pki::new();
    let bs = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let refs: Vec<&Backend> = bs.iter().collect();
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}",
        listener(&pki, ""),
        upstream_table("app", &refs, "eject_after = 2\neject_for = \"30s\"")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    for _ in 0..9 {
        assert_eq!(c.get("/", &[]).await.0, 200);
    }
    bs[1].kill().await;
    let hits_before: Vec<u64> = bs.iter().map(super::l7_support::Backend::hits).collect();
    for i in 0..60 {
        let (s, who, body) = c.get("/", &[]).await;
        assert_eq!(s, 200, "request {i} after the kill failed: {body}");
        assert_ne!(who, "b1");
    }
    let hits_after: Vec<u64> = bs.iter().map(super::l7_support::Backend::hits).collect();
    assert_eq!(hits_after[1], hits_before[1]);
    assert_eq!(
        hits_after[0] + hits_after[2] - hits_before[0] - hits_before[2],
        60
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_takes_a_server_out_and_all_down_is_503() {
    let pki = Pki::new();
    let healthy = Backend::start("healthy").await;
    let sick = Backend::start("sick").await;
    // Both servers pass the HTTP check at first; `sick` is killed later.
    let cfg = format!(
        "{}[[l7.route]]\nupstream = \"app\"\n{}[l7.upstream.health]\nkind = \"http\"\npath = \"/status/200\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 2\nrise = 1\n",
        listener(&pki, ""),
        upstream_table("app", &[&healthy, &sick], "eject_after = 0")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(c.get("/", &[]).await.1);
    }
    assert_eq!(seen.len(), 2, "both servers up at first: {seen:?}");
    sick.kill().await;
    // Passive ejection is off (eject_after = 0): only the active check can
    // take the server out. Wait for two failed probes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = sick.hits();
    for _ in 0..20 {
        let (s, who, _) = c.get("/", &[]).await;
        assert_eq!((s, who.as_str()), (200, "healthy"));
    }
    assert_eq!(sick.hits(), before);

    healthy.kill().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, _, body) = c.get("/", &[]).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body, "503 Service Unavailable\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https() {
    if !have_tool("curl") {
        return;
    }
    let cfg = "[[l7]]\nname = \"redir\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\nredirect_to_https = true\n\
               [[l7]]\nname = \"redir301\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"off\"\nredirect_to_https = true\nredirect_status = 301\nhttps_port = 8443\n";
    let (server, addrs) = start_proxy(cfg).await;
    let out = run(
        "curl",
        vec![
            "-sS".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code} %{redirect_url}".into(),
            "-H".into(),
            "Host: www.example.com".into(),
            format!("http://127.0.0.1:{}/a/b?c=d", addrs[0].port()),
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "308 https://www.example.com/a/b?c=d"
    );
    let out = run(
        "curl",
        vec![
            "-sS".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code} %{redirect_url}".into(),
            "-H".into(),
            "Host: www.example.com:80".into(),
            format!("http://127.0.0.1:{}/", addrs[1].port()),
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "301 https://www.example.com:8443/"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_per_request() {
    let pki = Pki::new();
    let b = Backend::start("b1").await;
    let log = pki.path("access.log");
    let cfg = format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\naccess_log = \"{}\"\n{}[[l7.route]]\nhost = \"a.example.com\"\nupstream = \"app\"\n{}",
        log.display(),
        pki.cert_tables(),
        upstream_table("app", &[&b], "")
    );
    let (server, addrs) = start_proxy(&cfg).await;
    let mut c = H1Client::connect(&pki, addrs[0], "a.example.com").await;
    assert_eq!(
        c.get("/bytes/1234?x=1", &[("user-agent", "test agent")])
            .await
            .0,
        200
    );
    assert_eq!(c.get("/missing", &[("host", "nowhere.test")]).await.0, 404);
    server.shutdown().await;
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[1], "web");
    assert!(f[2].starts_with("127.0.0.1:"));
    assert_eq!(&f[3..6], ["\"GET", "/bytes/1234?x=1", "HTTP/1.1\""]);
    assert_eq!(&f[6..8], ["200", "1234"]);
    assert_eq!(f[8], "host=a.example.com");
    assert_eq!(f[9], format!("upstream={}", b.addr));
    assert_eq!(f[10], "tls=TLSv1.3");
    assert_eq!(f[11], "sni=a.example.com");
    assert!(f[12].starts_with("dur_ms=") && f[13].starts_with("up_ms="));
    assert_eq!(f[14], "ua=\"test\\x20agent\"");
    assert_eq!(f[15], "reason=-");
    assert!(
        lines[1].contains("\"GET /missing HTTP/1.1\" 404 14 host=nowhere.test upstream=-"),
        "{}",
        lines[1]
    );
}
