//! What the admin API and metrics show: views of the reconciler's state,
//! built from its query methods. The JSON they serialise to is what the
//! `lb` client reads.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::{
    health::Health,
    ident::{RealId, VipId},
    l4::{control::Control, dataplane::Totals},
};

/// One real as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RealView {
    pub real: String,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Weight in the published ring (0: no new flows).
    pub effective_weight: u32,
    /// `up`, `down`, or `unchecked` (health kind `none`).
    pub health: &'static str,
    pub check: String,
    pub health_since_secs: Option<f64>,
    pub last_failure: Option<String>,
    pub last_latency_ms: Option<f64>,
    pub probes: u64,
    pub draining: bool,
    pub drain_seconds: Option<f64>,
    pub drain_finished: bool,
}

/// One VIP as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VipView {
    pub vip: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    /// `nat`, `dsr/ipip` or `dsr/gue:PORT`.
    pub mode: String,
    pub ring_size: u32,
    pub all_down_policy: &'static str,
    /// True while every real that should take traffic is down.
    pub all_down: bool,
    pub drain_timeout_secs: f64,
    pub reals: Vec<RealView>,
}

/// Every VIP with its reals.
pub fn vips(ctl: &Control) -> Vec<VipView> {
    ctl.vips()
        .iter()
        .filter_map(|v| vip(ctl, &v.id()))
        .collect()
}

/// One VIP with its reals.
pub fn vip(ctl: &Control, id: &VipId) -> Option<VipView> {
    let v = ctl.vips().iter().find(|v| v.id() == *id)?;
    Some(VipView {
        vip: id.to_string(),
        address: v.address,
        port: v.port,
        mode: v.mode.describe(),
        protocol: v.protocol.as_str(),
        ring_size: v.ring_size,
        all_down_policy: v.all_down.as_str(),
        all_down: ctl.is_all_down(id),
        drain_timeout_secs: v.drain_timeout.as_secs_f64(),
        reals: v
            .reals
            .iter()
            .filter_map(|r| real(ctl, id, &r.id()))
            .collect(),
    })
}

/// One real of a VIP.
pub fn real(ctl: &Control, vip: &VipId, id: &RealId) -> Option<RealView> {
    let v = ctl.vips().iter().find(|v| v.id() == *vip)?;
    let r = v.reals.iter().find(|r| r.id() == *id)?;
    let st = ctl.real_state(vip, id)?;
    let status = st.status.as_ref();
    Some(RealView {
        real: id.to_string(),
        address: r.address,
        port: r.port,
        weight: r.weight,
        effective_weight: st.effective_weight,
        health: if st.checked {
            match status.map(|s| s.health) {
                Some(Health::Down) => "down",
                _ => "up",
            }
        } else {
            "unchecked"
        },
        check: if st.checked {
            format!(
                "{} every {:?}, timeout {:?}, rise {}, fall {}",
                r.check.kind.name(),
                r.check.interval,
                r.check.timeout,
                r.check.rise,
                r.check.fall
            )
        } else {
            "none".into()
        },
        health_since_secs: status.map(|s| s.since.elapsed().as_secs_f64()),
        last_failure: status.and_then(|s| {
            s.last_failure
                .as_ref()
                .map(std::string::ToString::to_string)
        }),
        last_latency_ms: status.and_then(|s| s.last_latency.map(|d| d.as_secs_f64() * 1000.0)),
        probes: status.map_or(0, |s| s.probes),
        draining: st.drain.is_some(),
        drain_seconds: st.drain.map(|d| d.since.elapsed().as_secs_f64()),
        drain_finished: st.drain.is_some_and(|d| d.finished),
    })
}

/// Per (VIP, real): up, effective weight, check latency, probes.
pub fn health_rows(ctl: &Control) -> Vec<HealthRow> {
    let mut out = Vec::new();
    for v in ctl.vips() {
        let k = v.id();
        for r in &v.reals {
            let rk = r.id();
            let Some(st) = ctl.real_state(&k, &rk) else {
                continue;
            };
            out.push((
                k,
                rk,
                st.up,
                st.checked,
                st.effective_weight,
                st.status.as_ref().and_then(|s| s.last_latency),
                st.status.map_or(0, |s| s.probes),
            ));
        }
    }
    out
}

/// Counters with rates against the last stats tick.
pub fn stats(ctl: &Control) -> Result<StatsView> {
    let dp = ctl
        .dp()
        .ok_or_else(|| anyhow!("no L4 data plane is running"))?;
    let now = dp.snapshot()?;
    let (prev, elapsed) = match ctl.last_snapshot() {
        Some((p, at)) => (Some(p), at.elapsed()),
        None => (None, ctl.counters().uptime),
    };
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |now: &Totals, before: Option<&Totals>| {
        let b = before.copied().unwrap_or_default();
        Rates {
            packets_per_sec: now.packets.saturating_sub(b.packets) as f64 / secs,
            bytes_per_sec: now.bytes.saturating_sub(b.bytes) as f64 / secs,
            new_flows_per_sec: now.new_flows.saturating_sub(b.new_flows) as f64 / secs,
        }
    };
    let mut vips = Vec::new();
    for (vip, (t, reals)) in &now.vips {
        let pv = prev.and_then(|p| p.vips.get(vip));
        vips.push(VipStats {
            vip: vip.clone(),
            totals: *t,
            rates: rate(t, pv.map(|x| &x.0)),
            reals: reals
                .iter()
                .map(|(r, rt)| RealStats {
                    real: r.clone(),
                    totals: *rt,
                    rates: rate(rt, pv.and_then(|x| x.1.get(r))),
                })
                .collect(),
        });
    }
    let (drops, other): (BTreeMap<_, _>, BTreeMap<_, _>) = now
        .global
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .partition(|(k, _)| k.starts_with("drop_"));
    Ok(StatsView {
        interval_secs: secs,
        vips,
        drops,
        global: other,
    })
}

/// A summary for `lb status`.
pub fn status(ctl: &Control) -> StatusView {
    let mut reals_up = 0;
    let mut reals_total = 0;
    for v in ctl.vips() {
        for r in &v.reals {
            reals_total += 1;
            if ctl.real_state(&v.id(), &r.id()).is_some_and(|s| s.up) {
                reals_up += 1;
            }
        }
    }
    let counters = ctl.counters();
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: counters.uptime.as_secs_f64(),
        config: None,
        l4: ctl.dp().is_some(),
        interfaces: ctl
            .dp()
            .map(|d| {
                d.attached()
                    .map(|(n, m)| InterfaceView {
                        name: n.to_string(),
                        mode: m.as_str(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pin_path: ctl
            .dp()
            .and_then(|d| d.pin_path().map(|p| p.display().to_string())),
        vips: ctl.vips().len(),
        reals: reals_total,
        reals_up,
        vips_all_down: ctl
            .all_down_vips()
            .map(std::string::ToString::to_string)
            .collect(),
        l7_listeners: ctl.config().l7.len(),
        dns: ctl.config().dns.is_some(),
        reloads_ok: counters.reloads_ok,
        reloads_failed: counters.reloads_failed,
        decap: None,
    }
}

/// (VIP, real, up, checked, effective weight, last probe latency, probes).
pub type HealthRow = (VipId, RealId, bool, bool, u32, Option<Duration>, u64);

#[derive(Debug, Clone, Serialize)]
pub struct InterfaceView {
    pub name: String,
    pub mode: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub version: &'static str,
    pub uptime_secs: f64,
    pub config: Option<String>,
    pub l4: bool,
    pub interfaces: Vec<InterfaceView>,
    pub pin_path: Option<String>,
    pub vips: usize,
    pub reals: usize,
    pub reals_up: usize,
    pub vips_all_down: Vec<String>,
    pub l7_listeners: usize,
    pub dns: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The decap role, when `[decap]` is configured.
    pub decap: Option<crate::decap::DecapStatus>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rates {
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    pub new_flows_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealStats {
    pub real: String,
    pub totals: Totals,
    pub rates: Rates,
}

#[derive(Debug, Clone, Serialize)]
pub struct VipStats {
    pub vip: String,
    pub totals: Totals,
    pub rates: Rates,
    pub reals: Vec<RealStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// Seconds the rates are measured over.
    pub interval_secs: f64,
    pub vips: Vec<VipStats>,
    /// `drop_*` counters.
    pub drops: BTreeMap<String, u64>,
    /// Every other global counter.
    pub global: BTreeMap<String, u64>,
}
