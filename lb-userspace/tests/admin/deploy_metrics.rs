//! `lb run` as deploy/lb.service runs it, and what deploy/grafana-lb.json
//! and deploy/alerts.yml read from it.
//!
//! The daemon starts under `setpriv` with the unit's capability bounding
//! set and nothing else (root, as the unit runs it): XDP attached, maps
//! pinned, a TLS listener on port 443, metrics served. Every metric the
//! dashboard and the alert rules name must have a sample in its /metrics.
//! Without CAP_PERFMON the verifier refuses the program, which is why the
//! unit grants it. `promtool check rules` checks the alert file.

use std::{collections::BTreeSet, process::Command};

use lb_userspace::{
    proxy::cert,
    testbed::{
        self,
        config::{ConfigBuilder, Health, Vip},
        privileged, NameServer, PinDir, Topology,
    },
};

use super::deploy_package::{root, UNIT_CAPS};

/// `setpriv` arguments that leave exactly `caps` (CAP_NAME) to `lb`.
fn setpriv(caps: &[&str]) -> Vec<String> {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
        "--inh-caps=-all".into(),
    ]
}

/// The capabilities deploy/lb.service bounds the daemon to.
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("deploy/lb.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(caps, UNIT_CAPS, "deploy/lb.service");
    caps
}

/// Metric names (`lb_...`) a dashboard or rule file mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lb_") {
        let start = i + at;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start + 3;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if word_start && end > start + 3 {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The dashboard's queries, from its JSON.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(root().join("deploy/grafana-lb.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}

#[test]
fn daemon_with_the_units_capabilities_serves_every_dashboard_and_alert_metric() {
    if !privileged() {
        return;
    }
    let caps = unit_caps();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let topo = Topology::build(1).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 8080, 8053).unwrap());
    let pins = PinDir::new().expect("bpffs");
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    cert::generate(&cert::CertArgs {
        dir: pki.clone(),
        leaves: vec!["www.example.com".into()],
        days: 30,
        ..cert::CertArgs::default()
    })
    .unwrap();
    let chain = pki.join("www.example.com.chain.pem");
    let l7 = format!(
        "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:443\"\n\
         [[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[l7.route]]\nupstream = \"app\"\n\
         [[l7.upstream]]\nname = \"app\"\nservers = [\"198.18.11.2:8080\"]\n",
        chain.display(),
        pki.join("www.example.com.key").display()
    );
    let cfg = ConfigBuilder::topology(&topo)
        .pin_path(&pins.0)
        .api_socket(&dir.path().join("lb.sock"))
        .metrics_listen("127.0.0.1:9180")
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(Health::tcp().interval("300ms"))
                .reals4(&[1], 8080),
        )
        .l7(&l7)
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .wrapper(setpriv(&caps))
        .args(["--conntrack-size", "4096"])
        .config(cfg.clone())
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = lb.cli(&["status"]).unwrap();
    assert!(status.contains("pinned"), "{status}");

    // A flow through the VIP, so conntrack has entries, and a passing probe.
    let body = topo
        .client
        .exec(
            "curl",
            &[
                "-s",
                "--max-time",
                "3",
                &format!("http://{}/", testbed::VIP4),
            ],
        )
        .expect("curl through the VIP");
    assert!(!body.is_empty());
    let metrics = || {
        topo.lb
            .exec(
                "curl",
                &["-s", "--max-time", "3", "http://127.0.0.1:9180/metrics"],
            )
            .expect("GET /metrics")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let m = metrics();
        if m.contains("lb_health_check_latency_seconds{") || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };

    // Every name the dashboard and the rules use has a sample.
    let sampled: BTreeSet<String> = m
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let dashboard: BTreeSet<String> = dashboard_exprs().iter().flat_map(|e| names_in(e)).collect();
    let alerts = names_in(&std::fs::read_to_string(root().join("deploy/alerts.yml")).unwrap());
    assert!(dashboard.len() >= 15, "dashboard names: {dashboard:?}");
    for (what, names) in [
        ("deploy/grafana-lb.json", &dashboard),
        ("deploy/alerts.yml", &alerts),
    ] {
        let missing: Vec<&String> = names.difference(&sampled).collect();
        assert!(
            missing.is_empty(),
            "{what} uses metrics /metrics lacks: {missing:?}\n{m}"
        );
    }
    for name in [
        "lb_conntrack_entries",
        "lb_conntrack_capacity",
        "lb_tls_certificate_expiry_timestamp_seconds",
        "lb_real_up",
        "lb_drops_total",
    ] {
        assert!(
            alerts.contains(name) || dashboard.contains(name),
            "{name} unused"
        );
    }

    // The new gauges' values.
    let value = |prefix: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{m}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!((value("lb_conntrack_capacity ") - 8192.0).abs() < 0.5);
    let entries = value("lb_conntrack_entries ");
    assert!((2.0..=8192.0).contains(&entries), "{entries} entries");
    let expiry = value(&format!(
        "lb_tls_certificate_expiry_timestamp_seconds{{listener=\"web\",cert=\"{}\"}}",
        chain.display()
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expiry - now) / 86400.0;
    assert!((29.0..=31.0).contains(&days), "expires in {days} days");
    drop(lb);

    // The same config without CAP_PERFMON: the verifier refuses lb_xdp.
    let fewer: Vec<&str> = caps
        .iter()
        .copied()
        .filter(|c| *c != "CAP_PERFMON")
        .collect();
    let out = topo
        .lb_builder(crate::LB, dir.path())
        .name("noperfmon")
        .wrapper(setpriv(&fewer))
        .config(cfg)
        .run_to_exit()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rejected XDP program"),
        "lb without CAP_PERFMON ({}):\n{err}",
        out.status
    );
}

#[test]
fn alert_rules_pass_promtool() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (Debian package prometheus; `cargo xtask setup` installs it)"
        );
        eprintln!("skipped: promtool is missing (Debian package prometheus)");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("deploy/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("SUCCESS: 7 rules found"), "{said}");
}

#[test]
fn names_are_found_in_queries() {
    assert_eq!(
        names_in("sum(rate(lb_vip_packets_total{vip=~\"$vip\"}[5m])) / lb_x"),
        ["lb_vip_packets_total", "lb_x"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(names_in("glb_foo lb_ LbVipNoHealthyReal").is_empty());
}
