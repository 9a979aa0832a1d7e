//! Prometheus text exposition (format 0.0.4) of the control state and the
//! data plane counters. Served by [`crate::admin::api::serve_metrics`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lb_build_info` | gauge (1) | `version` |
//! | `lb_uptime_seconds` | gauge | |
//! | `lb_vip_packets_total`, `lb_vip_bytes_total`, `lb_vip_new_flows_total`, `lb_vip_reply_packets_total` | counter | `vip` |
//! | `lb_vip_all_down` | gauge (0/1) | `vip` |
//! | `lb_real_packets_total`, `lb_real_bytes_total`, `lb_real_new_flows_total`, `lb_real_reply_packets_total` | counter | `real` |
//! | `lb_real_up` | gauge (0/1) | `vip`, `real` |
//! | `lb_real_weight`, `lb_real_effective_weight` | gauge | `vip`, `real` |
//! | `lb_health_check_latency_seconds` | gauge (last passing probe) | `vip`, `real` |
//! | `lb_health_checks_total` | counter | `vip`, `real` |
//! | `lb_drops_total` | counter | `reason` |
//! | `lb_dataplane_packets_total` | counter | `counter` (rx, tx, redirect, conntrack_hit, ...) |
//! | `lb_config_reloads_total` | counter | `result` (ok, error) |
//! | `lb_all_down_events_total` | counter | |
//! | `lb_conntrack_entries` | gauge (entries now: two per NAT flow, one per DSR flow) | |
//! | `lb_conntrack_capacity` | gauge (table size in entries, 2 × `--conntrack-size`) | |
//! | `lb_tls_certificate_expiry_timestamp_seconds` | gauge (the leaf's notAfter, Unix time) | `listener`, `cert` (its file) |
//! | `lb_l7_requests_total` | counter | `listener`, `code_class` (1xx … 5xx) |
//! | `lb_l7_request_duration_seconds` | histogram (request head to response head) | `listener` |
//! | `lb_l7_upstream_server_up` | gauge (0/1: takes new requests) | `listener`, `upstream`, `server` |
//! | `lb_dns_queries_total`, `lb_dns_rrl_dropped_total`, `lb_dns_rrl_slipped_total`, `lb_dns_formerr_total`, `lb_dns_truncated_total`, `lb_dns_unanswered_total` | counter | |
//! | `lb_dns_gslb_member_up` | gauge (0/1) | `pool`, `member` |
//! | `lb_l7_proxy_protocol_rejected_total` | counter (connections closed unanswered; `proxy_protocol` listeners only) | `listener`, `reason` (untrusted, missing, invalid, closed, timeout) |

use std::fmt::Write;

use crate::l4::control::Control;

/// Escapes a label value.
type Field = fn(&crate::l4::dataplane::Totals) -> u64;

fn esc(s: impl std::fmt::Display) -> String {
    s.to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The end of validity of every certificate the L7 listeners serve, as
/// loaded (at start or by the last reload that applied).
fn certificates(out: &mut String, cfg: &crate::config::Config) {
    let certs: Vec<(&str, &crate::proxy::tls::LoadedCert)> = cfg
        .l7
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (l.name.as_str(), t)))
        .flat_map(|(name, t)| t.certs.iter().map(move |c| (name, c)))
        .collect();
    if certs.is_empty() {
        return;
    }
    head(
        out,
        "lb_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "End of validity (notAfter) of a served leaf certificate, Unix time.",
    );
    for (listener, c) in certs {
        let Some(secs) = c
            .not_after
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "lb_tls_certificate_expiry_timestamp_seconds{{listener=\"{}\",cert=\"{}\"}} {}",
            esc(listener),
            esc(&c.cert_path),
            secs.as_secs()
        );
    }
}

/// Connections the `proxy_protocol` listeners closed for want of a valid
/// PROXY protocol header, by reason (every reason, zeros included).
fn proxy_protocol_rejects(out: &mut String, cfg: &crate::config::Config) {
    let names: Vec<&str> = cfg
        .l7
        .iter()
        .filter(|l| l.proxy_protocol.is_some())
        .map(|l| l.name.as_str())
        .collect();
    if names.is_empty() {
        return;
    }
    head(
        out,
        "lb_l7_proxy_protocol_rejected_total",
        "counter",
        "Connections closed unanswered for want of a valid PROXY protocol header, by reason.",
    );
    for name in names {
        for (reason, n) in crate::proxy::proxyproto::rejected(name) {
            let _ = writeln!(
                out,
                "lb_l7_proxy_protocol_rejected_total{{listener=\"{}\",reason=\"{}\"}} {n}",
                esc(name),
                reason.as_str()
            );
        }
    }
}

/// Renders every metric.
pub fn render(ctl: &Control) -> String {
    let mut out = String::new();
    head(
        &mut out,
        "lb_build_info",
        "gauge",
        "Build of the running lb.",
    );
    let _ = writeln!(
        out,
        "lb_build_info{{version=\"{}\"}} 1",
        esc(env!("CARGO_PKG_VERSION"))
    );
    head(
        &mut out,
        "lb_uptime_seconds",
        "gauge",
        "Seconds since this lb started.",
    );
    let _ = writeln!(
        out,
        "lb_uptime_seconds {:.3}",
        ctl.counters().uptime.as_secs_f64()
    );

    head(
        &mut out,
        "lb_config_reloads_total",
        "counter",
        "Config reloads (SIGHUP or API) by result.",
    );
    let _ = writeln!(
        out,
        "lb_config_reloads_total{{result=\"ok\"}} {}",
        ctl.counters().reloads_ok
    );
    let _ = writeln!(
        out,
        "lb_config_reloads_total{{result=\"error\"}} {}",
        ctl.counters().reloads_failed
    );
    head(
        &mut out,
        "lb_all_down_events_total",
        "counter",
        "Times a VIP lost its last healthy real.",
    );
    let _ = writeln!(
        out,
        "lb_all_down_events_total {}",
        ctl.counters().all_down_events
    );

    // Health and weights, per (VIP, real).
    let rows = crate::admin::views::health_rows(ctl);
    head(
        &mut out,
        "lb_real_up",
        "gauge",
        "1 when the real passes its health check (or has none).",
    );
    for (vip, real, up, _, _, _, _) in &rows {
        let _ = writeln!(
            out,
            "lb_real_up{{vip=\"{}\",real=\"{}\"}} {}",
            esc(vip),
            esc(real),
            u8::from(*up)
        );
    }
    head(
        &mut out,
        "lb_real_weight",
        "gauge",
        "Configured weight (0: draining).",
    );
    for v in ctl.vips() {
        for r in &v.reals {
            let _ = writeln!(
                out,
                "lb_real_weight{{vip=\"{}\",real=\"{}\"}} {}",
                esc(v.id()),
                esc(r.id()),
                r.weight
            );
        }
    }
    head(
        &mut out,
        "lb_real_effective_weight",
        "gauge",
        "Weight in the published ring (0: takes no new flows).",
    );
    for (vip, real, _, _, w, _, _) in &rows {
        let _ = writeln!(
            out,
            "lb_real_effective_weight{{vip=\"{}\",real=\"{}\"}} {w}",
            esc(vip),
            esc(real)
        );
    }
    head(
        &mut out,
        "lb_health_check_latency_seconds",
        "gauge",
        "Duration of the last passing health check.",
    );
    for (vip, real, _, checked, _, lat, _) in &rows {
        if let (true, Some(l)) = (checked, lat) {
            let _ = writeln!(
                out,
                "lb_health_check_latency_seconds{{vip=\"{}\",real=\"{}\"}} {:.6}",
                esc(vip),
                esc(real),
                l.as_secs_f64()
            );
        }
    }
    head(
        &mut out,
        "lb_health_checks_total",
        "counter",
        "Health probes run.",
    );
    for (vip, real, _, checked, _, _, probes) in &rows {
        if *checked {
            let _ = writeln!(
                out,
                "lb_health_checks_total{{vip=\"{}\",real=\"{}\"}} {probes}",
                esc(vip),
                esc(real)
            );
        }
    }
    head(
        &mut out,
        "lb_vip_all_down",
        "gauge",
        "1 while every real of the VIP is down (the all_down policy applies).",
    );
    for v in ctl.vips() {
        let k = v.id();
        let _ = writeln!(
            out,
            "lb_vip_all_down{{vip=\"{}\"}} {}",
            esc(v.id()),
            u8::from(ctl.is_all_down(&k))
        );
    }

    certificates(&mut out, ctl.config());
    proxy_protocol_rejects(&mut out, ctl.config());

    // Data plane counters.
    let Some(dp) = ctl.dp() else {
        return out;
    };
    match dp.conntrack_usage() {
        Ok((entries, capacity)) => {
            head(
                &mut out,
                "lb_conntrack_entries",
                "gauge",
                "Conntrack entries now (a NAT flow has two, one per direction; a DSR flow one).",
            );
            let _ = writeln!(out, "lb_conntrack_entries {entries}");
            head(
                &mut out,
                "lb_conntrack_capacity",
                "gauge",
                "Conntrack table size in entries (2 x --conntrack-size); the LRU evicts a little before it is full.",
            );
            let _ = writeln!(out, "lb_conntrack_capacity {capacity}");
        }
        Err(e) => {
            let _ = writeln!(out, "# conntrack unavailable: {}", esc(format!("{e:#}")));
        }
    }
    let snap = match dp.snapshot() {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "# counters unavailable: {}", esc(format!("{e:#}")));
            return out;
        }
    };
    let fields: [(&str, &str, Field); 4] = [
        ("packets", "Client to real packets.", |t| t.packets),
        ("bytes", "Client to real bytes (whole frames).", |t| t.bytes),
        ("new_flows", "Flows that took a real from the ring.", |t| {
            t.new_flows
        }),
        (
            "reply_packets",
            "Real to client packets rewritten to the VIP.",
            |t| t.reply_packets,
        ),
    ];
    for (name, help, f) in fields {
        let metric = format!("lb_vip_{name}_total");
        head(&mut out, &metric, "counter", help);
        for (vip, (t, _)) in &snap.vips {
            let _ = writeln!(out, "{metric}{{vip=\"{}\"}} {}", esc(vip), f(t));
        }
    }
    // A real's counters are per real (address:port), summed over its VIPs.
    let mut reals = std::collections::BTreeMap::new();
    for (_, rs) in snap.vips.values() {
        for (r, t) in rs {
            reals.insert(r.clone(), *t);
        }
    }
    for (name, help, f) in fields {
        let metric = format!("lb_real_{name}_total");
        head(&mut out, &metric, "counter", help);
        for (r, t) in &reals {
            let _ = writeln!(out, "{metric}{{real=\"{}\"}} {}", esc(r), f(t));
        }
    }
    head(
        &mut out,
        "lb_drops_total",
        "counter",
        "Packets dropped by the XDP program, by reason.",
    );
    for (k, v) in &snap.global {
        if let Some(reason) = k.strip_prefix("drop_") {
            let _ = writeln!(out, "lb_drops_total{{reason=\"{}\"}} {v}", esc(reason));
        }
    }
    head(
        &mut out,
        "lb_dataplane_packets_total",
        "counter",
        "Other XDP counters: rx, tx, redirect, passes, conntrack hits and misses, FIB misses.",
    );
    for (k, v) in &snap.global {
        if !k.starts_with("drop_") {
            let _ = writeln!(
                out,
                "lb_dataplane_packets_total{{counter=\"{}\"}} {v}",
                esc(k)
            );
        }
    }
    out
}

/// The L7 and DNS roles' metrics (see the table above), appended to
/// `out`.
pub fn render_roles(
    out: &mut String,
    l7: &[crate::proxy::stats::ListenerView],
    dns: Option<&crate::dns::DnsView>,
) {
    if !l7.is_empty() {
        head(
            out,
            "lb_l7_requests_total",
            "counter",
            "Requests answered by an L7 listener, by status class.",
        );
        for l in l7 {
            for (i, n) in l.counts.classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "lb_l7_requests_total{{listener=\"{}\",code_class=\"{}xx\"}} {n}",
                    esc(&l.name),
                    i + 1
                );
            }
        }
        head(
            out,
            "lb_l7_request_duration_seconds",
            "histogram",
            "Time from a request's head to its response's head.",
        );
        for l in l7 {
            let mut cumulative = 0u64;
            for (i, n) in l.counts.latency.iter().enumerate() {
                cumulative += n;
                let le = crate::proxy::stats::BUCKETS_US
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
                let _ = writeln!(
                    out,
                    "lb_l7_request_duration_seconds_bucket{{listener=\"{}\",le=\"{le}\"}} {cumulative}",
                    esc(&l.name)
                );
            }
            let _ = writeln!(
                out,
                "lb_l7_request_duration_seconds_sum{{listener=\"{}\"}} {}",
                esc(&l.name),
                l.counts.latency_sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "lb_l7_request_duration_seconds_count{{listener=\"{}\"}} {cumulative}",
                esc(&l.name)
            );
        }
        head(
            out,
            "lb_l7_upstream_server_up",
            "gauge",
            "1 while an upstream server takes new requests (not ejected, up by its check).",
        );
        for l in l7 {
            for u in &l.upstreams {
                for srv in &u.servers {
                    let _ = writeln!(
                        out,
                        "lb_l7_upstream_server_up{{listener=\"{}\",upstream=\"{}\",server=\"{}\"}} {}",
                        esc(&l.name),
                        esc(&u.name),
                        srv.address,
                        u8::from(srv.available)
                    );
                }
            }
        }
    }
    if let Some(d) = dns {
        for (name, help, v) in [
            ("lb_dns_queries_total", "DNS queries received.", d.queries),
            (
                "lb_dns_rrl_dropped_total",
                "DNS answers dropped by response rate limiting.",
                d.rrl_dropped,
            ),
            (
                "lb_dns_rrl_slipped_total",
                "DNS answers sent truncated by response rate limiting (slip).",
                d.rrl_slipped,
            ),
            (
                "lb_dns_formerr_total",
                "DNS queries answered FORMERR.",
                d.formerr,
            ),
            (
                "lb_dns_truncated_total",
                "DNS answers truncated to fit UDP.",
                d.truncated,
            ),
            (
                "lb_dns_unanswered_total",
                "DNS messages given no answer (not a query, unparseable).",
                d.dropped,
            ),
        ] {
            head(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        if !d.gslb.is_empty() {
            head(
                out,
                "lb_dns_gslb_member_up",
                "gauge",
                "1 while a GSLB pool member is up by its check.",
            );
            for p in &d.gslb {
                for m in &p.members {
                    let _ = writeln!(
                        out,
                        "lb_dns_gslb_member_up{{pool=\"{}\",member=\"{}\"}} {}",
                        esc(&p.name),
                        m.address,
                        u8::from(m.up)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, health::monitor::Monitor, proxy::cert};

    #[test]
    fn certificate_expiry_per_listener_and_file() {
        let dir = tempfile::tempdir().unwrap();
        cert::generate(&cert::CertArgs {
            dir: dir.path().to_path_buf(),
            leaves: vec!["a.example.com".into(), "b.example.com".into()],
            days: 10,
            ..cert::CertArgs::default()
        })
        .unwrap();
        let pem = |name: &str| dir.path().join(name).display().to_string();
        let text = format!(
            "[[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             [[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\
             [[l7]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n\
             [[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n",
            pem("a.example.com.chain.pem"),
            pem("a.example.com.key"),
            pem("b.example.com.chain.pem"),
            pem("b.example.com.key"),
        );
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let ctl = Control::new(cfg, None, Monitor::new()).unwrap();
        let m = render(&ctl);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("lb_tls_certificate_expiry_timestamp_seconds{"))
            .collect();
        assert_eq!(lines.len(), 2, "{m}");
        for (line, leaf) in lines.iter().zip(["a.example.com", "b.example.com"]) {
            let want = format!(
                "lb_tls_certificate_expiry_timestamp_seconds{{listener=\"web\",cert=\"{}\"}} ",
                pem(&format!("{leaf}.chain.pem"))
            );
            let value: u64 = line
                .strip_prefix(&want)
                .unwrap_or_else(|| panic!("{line} is not {want}…"))
                .parse()
                .unwrap();
            // Ten days from now, give or take the generator's rounding.
            let days = (value as f64 - now as f64) / 86400.0;
            assert!((9.0..=11.0).contains(&days), "{line}: {days} days");
        }
        assert!(m.contains("# TYPE lb_tls_certificate_expiry_timestamp_seconds gauge"));
        // No data plane: no conntrack lines.
        assert!(!m.contains("lb_conntrack_entries"), "{m}");
    }

    #[test]
    fn no_certificate_metric_without_tls() {
        let cfg = Config::parse("").unwrap_or_else(|e| panic!("{e}"));
        let ctl = Control::new(cfg, None, Monitor::new()).unwrap();
        assert!(!render(&ctl).contains("lb_tls_certificate"));
    }

    #[test]
    fn proxy_protocol_rejections_per_listener_and_reason() {
        let text =
            "[[l7]]\nname = \"metrics-pp\"\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n\
                    [[l7.route]]\nupstream = \"app\"\n\
                    [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\
                    [[l7]]\nname = \"metrics-plain\"\nlisten = \"127.0.0.1:0\"\n\
                    [[l7.route]]\nupstream = \"app\"\n\
                    [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n";
        let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let c = crate::proxy::proxyproto::counters("metrics-pp");
        c.count(crate::proxy::proxyproto::Reject::Untrusted);
        c.count(crate::proxy::proxyproto::Reject::Untrusted);
        let ctl = Control::new(cfg, None, Monitor::new()).unwrap();
        let m = render(&ctl);
        assert!(
            m.contains("# TYPE lb_l7_proxy_protocol_rejected_total counter"),
            "{m}"
        );
        assert!(m.contains(
            "lb_l7_proxy_protocol_rejected_total{listener=\"metrics-pp\",reason=\"untrusted\"} 2\n"
        ), "{m}");
        assert!(m.contains(
            "lb_l7_proxy_protocol_rejected_total{listener=\"metrics-pp\",reason=\"missing\"} 0\n"
        ), "{m}");
        assert!(!m.contains("listener=\"metrics-plain\""), "{m}");
    }
}
