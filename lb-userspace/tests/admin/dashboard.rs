//! The live dashboard (`[api] http`) as a browser shows it: `lb` runs the
//! L4, L7 and DNS roles in the test topology, headless Chromium (in the
//! lb's namespace) loads the page, and the test reads the rendered DOM:
//! every VIP and real, traffic counted after client requests, the L7 and
//! DNS sections; then a real's server stops and the page, without a
//! reload, shows it down within two health intervals. A screenshot is
//! saved in the test's temporary directory (kept when
//! `LB_DASHBOARD_SCREENSHOT` names a file to copy it to).
//!
//! A second test checks the HTTP side: read-only, unknown paths, the JSON
//! view, and the token on a non-loopback address (bearer or Basic).

use std::time::{Duration, Instant};

use lb_userspace::testbed::{
    self,
    browser::{self, Browser},
    config::{ConfigBuilder, Health, Vip},
    http_names, privileged, NameServer, Topology,
};
use serde_json::Value;

const VIP: &str = "198.18.100.1:80/tcp";
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

fn zone() -> &'static str {
    "$ORIGIN example.com.\n$TTL 300\n\
     @ IN SOA ns1 hostmaster 2026120401 3600 600 86400 60\n\
     \x20 IN NS ns1\nns1 IN A 198.18.100.1\nwww IN A 198.18.50.10\n"
}

/// Polls `expr` in the page until it is `true`, for at most `limit`;
/// returns how long it took.
fn wait_true(b: &mut Browser, expr: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if b.eval(expr).ok() == Some(Value::Bool(true)) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn dashboard_in_headless_chromium() {
    if !privileged() {
        return;
    }
    assert!(
        browser::chromium().is_some(),
        "chromium is not installed: `cargo xtask setup` installs it"
    );
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let mut servers: Vec<Option<NameServer>> =
        topo.on_reals(|ns, name| Some(NameServer::start(ns, name, 8080, 8053).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let zone_file = dir.path().join("example.com.zone");
    std::fs::write(&zone_file, zone()).unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .api_key("http", "127.0.0.1:9190")
        .metrics_listen("127.0.0.1:9191")
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(
                    Health::tcp()
                        .interval(&format!("{}s", HEALTH_INTERVAL.as_secs()))
                        .timeout("500ms")
                        .fall(1)
                        .rise(1),
                )
                .reals4(&[1, 2, 3], 8080),
        )
        .l7(&format!(
            "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:8088\"\n\
             [[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"{}:8080\"]\n",
            testbed::real4(1)
        ))
        .dns(&format!(
            "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\nname = \"example.com.\"\nfile = \"{}\"\n",
            zone_file.display()
        ))
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .wait_for_log("dashboard on http://127.0.0.1:9190/")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Traffic for every role, before the page opens.
    let names = http_names(&topo, 30).unwrap();
    assert_eq!(
        names.iter().filter(|n| !n.is_empty()).count(),
        30,
        "{names:?}"
    );
    let l7 = testbed::curl_burst(&topo.lb, "http://127.0.0.1:8088/", 5).unwrap();
    assert!(l7.iter().all(|n| n == "real1"), "{l7:?}");
    let dig = topo
        .lb
        .exec(
            "dig",
            &[
                "@127.0.0.1",
                "-p",
                "5353",
                "+short",
                "+tries=1",
                "www.example.com",
                "A",
            ],
        )
        .unwrap();
    assert_eq!(dig.trim(), "198.18.50.10");

    let profile = dir.path().join("chromium");
    std::fs::create_dir_all(&profile).unwrap();
    let mut b = Browser::launch(&topo.lb, &profile, 1400, 1000).expect("chromium");
    b.open("http://127.0.0.1:9190/").expect("open the page");
    assert!(
        wait_true(
            &mut b,
            "document.readyState === 'complete' && !!document.querySelector('[data-vip]')",
            Duration::from_secs(20),
        )
        .is_some(),
        "the page did not render a VIP: {:?}",
        b.eval("document.body ? document.body.innerText : ''")
    );
    let vips = b
        .eval("[...document.querySelectorAll('[data-vip]')].map(e => e.dataset.vip)")
        .unwrap();
    assert_eq!(vips, serde_json::json!([VIP]));
    let reals = b
        .eval(
            "[...document.querySelectorAll('[data-vip] tr[data-real]')]\
             .map(e => e.dataset.real + ' ' + e.dataset.health)",
        )
        .unwrap();
    let want: Vec<String> = (1..=3)
        .map(|i| format!("{}:8080 up", testbed::real4(i)))
        .collect();
    assert_eq!(
        reals,
        serde_json::json!(want),
        "reals as the page shows them"
    );
    // 30 connections of several packets each went through the VIP.
    let packets = b
        .eval("+document.querySelector('[data-vip] tr.vsum [data-packets]').dataset.packets")
        .unwrap();
    assert!(
        packets.as_u64().unwrap_or(0) >= 30 * 3,
        "VIP packets: {packets}"
    );
    let new_flows = b
        .eval("+document.querySelector('[data-vip] tr.vsum [data-new-flows]').dataset.newFlows")
        .unwrap();
    assert_eq!(new_flows.as_u64(), Some(30), "VIP new flows");
    let requests = b
        .eval("+document.querySelector('[data-listener=\"web\"] [data-requests]').dataset.requests")
        .unwrap();
    assert_eq!(requests.as_u64(), Some(5), "L7 requests");
    let classes = b
        .eval(
            "[...document.querySelectorAll('[data-listener=\"web\"] [data-class]')]\
             .map(e => e.dataset.class + '=' + e.dataset.count).join(' ')",
        )
        .unwrap();
    assert_eq!(classes, "1xx=0 2xx=5 3xx=0 4xx=0 5xx=0");
    let upstream = b
        .eval("document.querySelector('[data-listener=\"web\"] [data-upstream=\"app\"]').innerText")
        .unwrap();
    assert!(
        upstream.as_str().unwrap_or("").contains("1/1 up"),
        "{upstream}"
    );
    // Requests while the page watches: a rate and latency quantiles appear.
    let l7 = testbed::curl_burst(&topo.lb, "http://127.0.0.1:8088/", 20).unwrap();
    assert!(l7.iter().all(|n| n == "real1"), "{l7:?}");
    assert!(
        wait_true(
            &mut b,
            "(() => { const r = document.querySelector('[data-listener=\"web\"]'); \
             return r.querySelector('[data-requests]').dataset.requests === '25' \
             && +r.querySelector('[data-p50-ms]').dataset.p50Ms > 0 \
             && +r.querySelector('[data-p99-ms]').dataset.p99Ms >= +r.querySelector('[data-p50-ms]').dataset.p50Ms; })()",
            Duration::from_secs(10),
        )
        .is_some(),
        "no live L7 figures: {:?}",
        b.eval("document.getElementById('l7').innerText")
    );
    let dns = b.eval("document.getElementById('dns').innerText").unwrap();
    let dns = dns.as_str().unwrap_or("");
    assert!(
        dns.contains("1 queries") && dns.contains("example.com. serial 2026120401"),
        "{dns}"
    );
    let live = b
        .eval("document.getElementById('live').textContent")
        .unwrap();
    assert_eq!(live, "live");

    // The same counters for Prometheus.
    let metrics = topo
        .lb
        .exec("curl", &["-s", "-m", "5", "http://127.0.0.1:9191/metrics"])
        .unwrap();
    for line in [
        "lb_l7_requests_total{listener=\"web\",code_class=\"2xx\"} 25".to_string(),
        "lb_l7_requests_total{listener=\"web\",code_class=\"5xx\"} 0".to_string(),
        "lb_l7_request_duration_seconds_count{listener=\"web\"} 25".to_string(),
        "lb_l7_request_duration_seconds_bucket{listener=\"web\",le=\"+Inf\"} 25".to_string(),
        format!(
            "lb_l7_upstream_server_up{{listener=\"web\",upstream=\"app\",server=\"{}:8080\"}} 1",
            testbed::real4(1)
        ),
        "lb_dns_queries_total 1".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics:\n{metrics}"
        );
    }
    // promtool (installed by setup) lints the exposition format.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Stop real 2's server: the page shows it down by itself.
    let down = format!("{}:8080", testbed::real4(2));
    servers[1] = None;
    let t0 = Instant::now();
    let shown = wait_true(
        &mut b,
        &format!("document.querySelector('tr[data-real=\"{down}\"]').dataset.health === 'down'"),
        2 * HEALTH_INTERVAL + Duration::from_secs(2),
    );
    let took = t0.elapsed();
    let page = b.eval("document.body.innerText").unwrap();
    assert!(shown.is_some(), "real 2 never shown down: {page}");
    assert!(
        took <= 2 * HEALTH_INTERVAL,
        "real 2 shown down after {took:?}, more than two health intervals"
    );
    let others = b
        .eval(
            "[...document.querySelectorAll('tr[data-real]')].filter(e => e.dataset.health === 'up').length",
        )
        .unwrap();
    assert_eq!(others.as_u64(), Some(2), "{page}");
    assert!(
        page.as_str().unwrap_or("").contains("2/3 reals up"),
        "{page}"
    );

    // Traffic while the page watches: the VIP's packet rate moves.
    let names = http_names(&topo, 40).unwrap();
    assert_eq!(
        names.iter().filter(|n| !n.is_empty()).count(),
        40,
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| n != "real2"),
        "a down real got new flows: {names:?}"
    );
    assert!(
        wait_true(
            &mut b,
            "+document.querySelector('[data-vip] tr.vsum [data-pps]').dataset.pps > 0",
            Duration::from_secs(5),
        )
        .is_some(),
        "no packet rate shown: {:?}",
        b.eval("document.body.innerText")
    );

    let shot = dir.path().join("dashboard.png");
    b.screenshot(&shot, true).expect("screenshot");
    let size = std::fs::metadata(&shot).unwrap().len();
    assert!(size > 10_000, "screenshot of {size} bytes");
    if let Ok(keep) = std::env::var("LB_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    drop(b);
    drop(lb);
}

/// The page's HTTP side, with curl: read-only, 404 for unknown paths, the
/// JSON view, and on a non-loopback address the token (bearer, or as the
/// Basic password a browser prompts for).
#[test]
fn dashboard_http_and_token() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(1).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 8080, 8053).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    // The lb's address on the client side: not loopback.
    let addr = "198.18.0.1:9190".to_string();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .api_key("http", addr.as_str())
        .api_key("token_file", token_file.display().to_string())
        .vip(Vip::tcp(testbed::VIP4.into(), 80).reals4(&[1], 8080))
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .wait_for_log("dashboard on http://")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let curl = |args: &[&str]| -> (String, String) {
        let mut a = vec!["-s", "-m", "5", "-o", "/dev/stderr", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        let out = topo.client.command("curl").args(&a).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = format!("http://{addr}/");
    let (code, body) = curl(&[&url]);
    assert_eq!(code, "401", "{body}");
    let (code, _) = curl(&["-H", "Authorization: Bearer wrong-token-wrong-token", &url]);
    assert_eq!(code, "401");
    let (code, body) = curl(&["-H", "Authorization: Bearer 0123456789abcdef0123", &url]);
    assert_eq!(code, "200");
    assert!(body.contains(&format!("data-vip=\"{VIP}\"")), "{body}");
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no outside assets: {body}"
    );
    let (code, _) = curl(&["-u", "ops:0123456789abcdef0123", &url]);
    assert_eq!(code, "200", "Basic with the token as password");
    let (code, _) = curl(&["-u", "ops:nope", &url]);
    assert_eq!(code, "401");
    let auth = ["-u", "ops:0123456789abcdef0123"];
    let (code, body) = curl(&[auth[0], auth[1], "-X", "POST", &url]);
    assert_eq!(code, "405", "{body}");
    let (code, body) = curl(&[auth[0], auth[1], &format!("{url}nope")]);
    assert_eq!(code, "404", "{body}");
    let (code, frag) = curl(&[auth[0], auth[1], &format!("{url}fragment")]);
    assert_eq!(code, "200");
    assert!(
        !frag.contains("<html") && frag.contains("data-vip"),
        "{frag}"
    );
    let (code, json) = curl(&[auth[0], auth[1], &format!("{url}dashboard.json")]);
    assert_eq!(code, "200");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["vips"][0]["vip"], VIP, "{v}");
    assert_eq!(v["vips"][0]["real_rows"][0]["health"], "unchecked", "{v}");
    drop(lb);
}
