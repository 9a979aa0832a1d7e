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

    // Data plane counters.
    let Some(dp) = ctl.dp() else {
        return out;
    };
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
