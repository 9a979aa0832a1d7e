//! The L4 control loop: the wanted VIPs (config plus live changes from the
//! admin API), the health of every real, drains, and the data plane they
//! are applied to.
//!
//! The rings the data path uses are always computed from three inputs: the
//! wanted VIPs, the health of each (VIP, real) and the VIP's `all_down`
//! policy. A real that is down or drained keeps its slot in the real table
//! (so its established flows keep going) but gets no ring slots (so no new
//! flow picks it). Every change goes through [`Control::set_vips`] or
//! [`Control::refresh`], which end in one diffed [`Dataplane::apply`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use log::{error, info, warn};
use serde::Serialize;

use crate::{
    config::Config,
    health::{CheckKind, Health, Monitor, Target, TargetId},
    ident::{RealId, VipId},
    l4::{
        config::{validate_real, validate_vip, AllDown, RawReal, RawVip, Vip},
        dataplane::{Dataplane, Snapshot, Totals},
    },
};

/// A real of a VIP.
type RealK = (VipId, RealId);

/// An error the admin API reports: HTTP status, the field at fault (if
/// one is) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::new(400, Some(field), message)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(500, None, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    since: Instant,
    /// Conntrack entries cut once the drain timeout passed.
    finished: bool,
}

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
    pub ring_size: u32,
    pub all_down_policy: &'static str,
    /// True while every real that should take traffic is down.
    pub all_down: bool,
    pub drain_timeout_secs: f64,
    pub reals: Vec<RealView>,
}

/// The control state; shared by the daemon loop and the API behind a mutex.
pub struct Control {
    pub dp: Option<Dataplane>,
    monitor: Monitor,
    /// The config last loaded from the file.
    pub config: Config,
    /// The wanted VIPs: the config's, plus live changes since.
    vips: Vec<Vip>,
    targets: HashMap<RealK, TargetId>,
    drains: HashMap<RealK, Drain>,
    /// Per VIP, the weights of the last ring that had a real up.
    last_good: HashMap<VipId, HashMap<RealId, u32>>,
    all_down: HashSet<VipId>,
    /// (VIP, real) pairs left out of the ring because they are down.
    out_of_ring: HashSet<RealK>,
    /// Effective weights as last published.
    published: HashMap<VipId, HashMap<RealId, u32>>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub all_down_events: u64,
    pub started: Instant,
    /// The snapshot of the last stats tick, for rates.
    pub prev: Option<(Snapshot, Instant)>,
}

impl Control {
    /// Starts health checks for `config`'s reals and applies its VIPs.
    pub fn new(config: Config, dp: Option<Dataplane>, monitor: Monitor) -> Result<Control> {
        let mut c = Control {
            dp,
            monitor,
            vips: Vec::new(),
            config: config.clone(),
            targets: HashMap::new(),
            drains: HashMap::new(),
            last_good: HashMap::new(),
            all_down: HashSet::new(),
            out_of_ring: HashSet::new(),
            published: HashMap::new(),
            reloads_ok: 0,
            reloads_failed: 0,
            all_down_events: 0,
            started: Instant::now(),
            prev: None,
        };
        if let Some(dp) = c.dp.as_mut() {
            dp.set_hash_seed(config.hash_seed)?;
        }
        c.set_vips(config.vips)?;
        Ok(c)
    }

    /// Makes `seed` the flow hash seed of the data path (the config's
    /// `hash_seed`, on a reload that changes it). Flows with a conntrack
    /// entry stay where they are; every other flow may move to another real.
    pub fn set_hash_seed(&mut self, seed: u32) -> Result<()> {
        let Some(dp) = self.dp.as_mut() else {
            return Ok(());
        };
        if dp.hash_seed()? != seed {
            dp.set_hash_seed(seed)?;
            warn!(
                "hash_seed changed: new flows, and packets of flows without a conntrack entry, may go to other reals"
            );
        }
        Ok(())
    }

    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The wanted VIPs.
    pub fn vips(&self) -> &[Vip] {
        &self.vips
    }

    /// Makes `vips` the wanted state: health targets for new reals, drains
    /// for reals whose weight became 0, then one diffed apply. On failure
    /// nothing changes (the previous state is re-applied).
    pub fn set_vips(&mut self, vips: Vec<Vip>) -> Result<()> {
        if let Some(dp) = &self.dp {
            // Capacity checks before anything is touched.
            if vips.len() > lb_common::MAX_VIPS as usize {
                bail!(
                    "{} VIPs; the data plane holds {}",
                    vips.len(),
                    lb_common::MAX_VIPS
                );
            }
            let reals: HashSet<RealId> = vips
                .iter()
                .flat_map(|v| v.reals.iter().map(|r| r.id()))
                .collect();
            if reals.len() >= lb_common::MAX_REALS as usize {
                bail!(
                    "{} reals; the data plane holds {}",
                    reals.len(),
                    lb_common::MAX_REALS - 1
                );
            }
            let _ = dp;
        }
        // Health targets: add the new set first so unchanged targets keep
        // their state, then drop the old references.
        let mut targets = HashMap::new();
        for v in &vips {
            for r in &v.reals {
                let t = Target::new(SocketAddr::new(r.address, r.port), r.check.clone());
                targets.insert((v.id(), r.id()), self.monitor.add(t));
            }
        }
        let old_targets = std::mem::replace(&mut self.targets, targets);
        let old_vips = std::mem::replace(&mut self.vips, vips);
        if let Err(e) = self.publish() {
            // Roll back: the previous wanted state and its targets.
            for id in self.targets.values() {
                self.monitor.remove(*id);
            }
            self.targets = old_targets;
            self.vips = old_vips;
            if let Err(e2) = self.publish() {
                error!("restoring the previous state failed too: {e2:#}");
            }
            return Err(e);
        }
        for id in old_targets.values() {
            self.monitor.remove(*id);
        }
        // Drains: a real with weight 0 drains from the moment it got it.
        let now = Instant::now();
        let mut drains = HashMap::new();
        for v in &self.vips {
            for r in &v.reals {
                let k = (v.id(), r.id());
                if r.weight == 0 {
                    let d = self.drains.get(&k).copied().unwrap_or_else(|| {
                        info!(
                            "vip {}: draining {} (weight 0): no new flows; established flows continue for up to {:?}",
                            v.id(),
                            r.id(),
                            v.drain_timeout
                        );
                        Drain {
                            since: now,
                            finished: false,
                        }
                    });
                    drains.insert(k, d);
                }
            }
        }
        self.drains = drains;
        let keys: HashSet<VipId> = self.vips.iter().map(Vip::id).collect();
        self.last_good.retain(|k, _| keys.contains(k));
        self.all_down.retain(|k| keys.contains(k));
        self.published.retain(|k, _| keys.contains(k));
        self.out_of_ring.retain(|(k, _)| keys.contains(k));
        Ok(())
    }

    fn is_up(&self, k: &RealK) -> bool {
        self.targets
            .get(k)
            .map(|id| self.monitor.is_up(*id))
            .unwrap_or(true)
    }

    /// The VIPs as the data path should see them: down reals at weight 0,
    /// and the `all_down` policy where nothing is left.
    fn effective(&mut self) -> Vec<Vip> {
        let mut out = Vec::with_capacity(self.vips.len());
        let vips = self.vips.clone();
        for vip in &vips {
            let k = vip.id();
            let mut eff = vip.clone();
            for r in &mut eff.reals {
                let rk = (k, r.id());
                let up = self.is_up(&rk);
                if !up {
                    r.weight = 0;
                }
                if r.weight > 0 || !up {
                    self.note_ring_membership(vip, rk, up);
                }
            }
            let wanted = vip.reals.iter().any(|r| r.weight > 0);
            let any = eff.reals.iter().any(|r| r.weight > 0);
            if wanted && !any {
                if self.all_down.insert(k) {
                    self.all_down_events += 1;
                    warn!(
                        "vip {}: every real is down; all_down = {}: {}",
                        vip.id(),
                        vip.all_down.as_str(),
                        match vip.all_down {
                            AllDown::Keep => "keeping the last ring, traffic still flows",
                            AllDown::Open => "spreading new flows over every real",
                            AllDown::Drop => "new flows are dropped",
                        }
                    );
                }
                match vip.all_down {
                    AllDown::Keep => {
                        let last = self.last_good.get(&k);
                        for r in &mut eff.reals {
                            r.weight = last.and_then(|l| l.get(&r.id()).copied()).unwrap_or(0);
                        }
                        if !eff.reals.iter().any(|r| r.weight > 0) {
                            eff.reals = vip.reals.clone();
                        }
                    }
                    AllDown::Open => eff.reals = vip.reals.clone(),
                    AllDown::Drop => {}
                }
            } else {
                if self.all_down.remove(&k) {
                    info!(
                        "vip {}: a real is up again; ring rebuilt from healthy reals",
                        vip.id()
                    );
                }
                if any {
                    self.last_good
                        .insert(k, eff.reals.iter().map(|r| (r.id(), r.weight)).collect());
                }
            }
            out.push(eff);
        }
        out
    }

    fn note_ring_membership(&mut self, vip: &Vip, rk: RealK, up: bool) {
        if up {
            if self.out_of_ring.remove(&rk) {
                info!("vip {}: {} is up, back in the ring", vip.id(), rk.1);
            }
        } else if self.out_of_ring.insert(rk) {
            let reason = self
                .targets
                .get(&rk)
                .and_then(|id| self.monitor.status(*id))
                .and_then(|s| s.last_failure.map(|f| f.to_string()))
                .unwrap_or_else(|| "health check failed".into());
            warn!(
                "vip {}: {} is down ({reason}), out of the ring; its established flows are kept",
                vip.id(),
                rk.1
            );
        }
    }

    /// Recomputes the rings from the current health and applies them.
    pub fn refresh(&mut self) -> Result<()> {
        self.publish()
    }

    fn publish(&mut self) -> Result<()> {
        let eff = self.effective();
        if let Some(dp) = self.dp.as_mut() {
            dp.apply(&eff)?;
            dp.resolve_neighbours();
        }
        self.published = eff
            .iter()
            .map(|v| (v.id(), v.reals.iter().map(|r| (r.id(), r.weight)).collect()))
            .collect();
        Ok(())
    }

    /// Ends drains whose timeout passed: their remaining flows lose their
    /// conntrack entries, so their next packet goes to a ring real.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let vips = self.vips.clone();
        for v in &vips {
            for r in &v.reals {
                let k = (v.id(), r.id());
                let Some(d) = self.drains.get_mut(&k) else {
                    continue;
                };
                if d.finished || now.duration_since(d.since) < v.drain_timeout {
                    continue;
                }
                d.finished = true;
                let Some(dp) = self.dp.as_mut() else { continue };
                let (Some(vi), Some(ri)) = (dp.vip_index(&v.id()), dp.real_id(&r.id())) else {
                    continue;
                };
                match dp.flush_conntrack(vi, ri) {
                    Ok(n) => info!(
                        "vip {}: drain of {} finished after {:?}: {n} remaining flows cut",
                        v.id(),
                        r.id(),
                        v.drain_timeout
                    ),
                    Err(e) => warn!("vip {}: ending a drain: {e:#}", v.id()),
                }
            }
        }
    }

    fn find_vip(&self, key: &str, field: &str) -> Result<usize, ApiError> {
        let k: VipId = key
            .parse()
            .map_err(|e| ApiError::bad(field, format!("{e}")))?;
        self.vips
            .iter()
            .position(|v| v.id() == k)
            .ok_or_else(|| ApiError::new(404, Some(field), format!("no VIP {key}")))
    }

    fn find_real(&self, vi: usize, key: &str, field: &str) -> Result<usize, ApiError> {
        let rk: RealId = key
            .parse()
            .map_err(|e| ApiError::bad(field, format!("{e}")))?;
        self.vips[vi]
            .reals
            .iter()
            .position(|r| r.id() == rk)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    Some(field),
                    format!("{key} is not a real of {}", self.vips[vi].id()),
                )
            })
    }

    fn commit(&mut self, vips: Vec<Vip>) -> Result<(), ApiError> {
        if self.dp.is_none() {
            return Err(ApiError::new(
                409,
                None,
                "no L4 data plane is running (start lb with interfaces and VIPs)",
            ));
        }
        self.set_vips(vips).map_err(|e| {
            ApiError::new(
                500,
                None,
                format!("data plane update failed, nothing changed: {e:#}"),
            )
        })
    }

    /// `vip add`.
    pub fn vip_add(&mut self, raw: &RawVip) -> Result<VipView, ApiError> {
        let mut errors = Vec::new();
        let vip = validate_vip("vip", raw, &mut errors);
        if let Some(e) = errors.into_iter().next() {
            return Err(ApiError::bad(&e.field, e.reason));
        }
        let vip = vip.ok_or_else(|| ApiError::bad("vip", "invalid"))?;
        if self.vips.iter().any(|v| v.id() == vip.id()) {
            return Err(ApiError::new(
                409,
                Some("vip"),
                format!("{} exists already", vip.id()),
            ));
        }
        let key = vip.id();
        let mut vips = self.vips.clone();
        vips.push(vip);
        self.commit(vips)?;
        info!("api: vip {} added", key);
        Ok(self.view_of(key).expect("just added"))
    }

    /// `vip del`.
    pub fn vip_del(&mut self, key: &str) -> Result<(), ApiError> {
        let i = self.find_vip(key, "vip")?;
        let mut vips = self.vips.clone();
        let v = vips.remove(i);
        self.commit(vips)?;
        info!("api: vip {} removed", v.id());
        Ok(())
    }

    /// `real add`.
    pub fn real_add(&mut self, vip: &str, raw: &RawReal) -> Result<RealView, ApiError> {
        let vi = self.find_vip(vip, "vip")?;
        let v = &self.vips[vi];
        let mut errors = Vec::new();
        // The real inherits the VIP's health table as configured.
        let vip_health = v.health.clone();
        let real = validate_real(
            "real",
            raw,
            Some(v.address),
            Some(v.port),
            &vip_health,
            &mut errors,
        );
        if let Some(e) = errors.into_iter().next() {
            return Err(ApiError::bad(&e.field, e.reason));
        }
        let real = real.ok_or_else(|| ApiError::bad("real", "invalid"))?;
        if v.reals.iter().any(|r| r.id() == real.id()) {
            return Err(ApiError::new(
                409,
                Some("real"),
                format!("{} is already a real of {}", real.id(), v.id()),
            ));
        }
        let rk = real.id();
        let k = v.id();
        let mut vips = self.vips.clone();
        vips[vi].reals.push(real);
        self.commit(vips)?;
        info!("api: vip {}: real {} added", vip, rk);
        self.real_view_of(k, rk)
            .ok_or_else(|| ApiError::internal("real vanished"))
    }

    /// `real del`.
    pub fn real_del(&mut self, vip: &str, real: &str) -> Result<(), ApiError> {
        let vi = self.find_vip(vip, "vip")?;
        let ri = self.find_real(vi, real, "real")?;
        let mut vips = self.vips.clone();
        if vips[vi].reals.len() == 1 {
            return Err(ApiError::new(
                409,
                Some("real"),
                format!("{real} is the last real of {vip}; delete the VIP instead"),
            ));
        }
        vips[vi].reals.remove(ri);
        if !vips[vi].reals.iter().any(|r| r.weight > 0) {
            return Err(ApiError::new(
                409,
                Some("real"),
                format!("removing {real} would leave {vip} with no real taking traffic"),
            ));
        }
        self.commit(vips)?;
        info!("api: vip {vip}: real {real} removed; its flows move to the ring");
        Ok(())
    }

    /// `real weight` (0 = drain).
    pub fn real_weight(
        &mut self,
        vip: &str,
        real: &str,
        weight: i64,
    ) -> Result<RealView, ApiError> {
        let vi = self.find_vip(vip, "vip")?;
        let ri = self.find_real(vi, real, "real")?;
        let w = match u32::try_from(weight) {
            Ok(w) if w <= lb_common::MAX_WEIGHT => w,
            _ => {
                return Err(ApiError::bad(
                    "weight",
                    format!("{weight} is outside 0..={}", lb_common::MAX_WEIGHT),
                ))
            }
        };
        let mut vips = self.vips.clone();
        vips[vi].reals[ri].weight = w;
        if !vips[vi].reals.iter().any(|r| r.weight > 0) {
            return Err(ApiError::new(
                409,
                Some("weight"),
                format!("{real} is the last real of {vip} with a weight; at least one must take traffic"),
            ));
        }
        let k = vips[vi].id();
        let rk = vips[vi].reals[ri].id();
        self.commit(vips)?;
        info!("api: vip {vip}: real {real} weight {w}");
        self.real_view_of(k, rk)
            .ok_or_else(|| ApiError::internal("real vanished"))
    }

    /// All VIPs as the API shows them.
    pub fn views(&self) -> Vec<VipView> {
        self.vips
            .iter()
            .filter_map(|v| self.view_of(v.id()))
            .collect()
    }

    fn view_of(&self, k: VipId) -> Option<VipView> {
        let v = self.vips.iter().find(|v| v.id() == k)?;
        Some(VipView {
            vip: v.id().to_string(),
            address: v.address,
            port: v.port,
            protocol: v.protocol.as_str(),
            ring_size: v.ring_size,
            all_down_policy: v.all_down.as_str(),
            all_down: self.all_down.contains(&k),
            drain_timeout_secs: v.drain_timeout.as_secs_f64(),
            reals: v
                .reals
                .iter()
                .filter_map(|r| self.real_view_of(k, r.id()))
                .collect(),
        })
    }

    fn real_view_of(&self, k: VipId, rk: RealId) -> Option<RealView> {
        let v = self.vips.iter().find(|v| v.id() == k)?;
        let r = v.reals.iter().find(|r| r.id() == rk)?;
        let status = self
            .targets
            .get(&(k, rk))
            .and_then(|id| self.monitor.status(*id));
        let unchecked = r.check.kind == CheckKind::None;
        let drain = self.drains.get(&(k, rk));
        Some(RealView {
            real: r.id().to_string(),
            address: r.address,
            port: r.port,
            weight: r.weight,
            effective_weight: self
                .published
                .get(&k)
                .and_then(|m| m.get(&rk).copied())
                .unwrap_or(0),
            health: if unchecked {
                "unchecked"
            } else {
                match status.as_ref().map(|s| s.health) {
                    Some(Health::Down) => "down",
                    _ => "up",
                }
            },
            check: if unchecked {
                "none".into()
            } else {
                format!(
                    "{} every {:?}, timeout {:?}, rise {}, fall {}",
                    r.check.kind.name(),
                    r.check.interval,
                    r.check.timeout,
                    r.check.rise,
                    r.check.fall
                )
            },
            health_since_secs: status.as_ref().map(|s| s.since.elapsed().as_secs_f64()),
            last_failure: status
                .as_ref()
                .and_then(|s| s.last_failure.as_ref().map(|f| f.to_string())),
            last_latency_ms: status
                .as_ref()
                .and_then(|s| s.last_latency.map(|d| d.as_secs_f64() * 1000.0)),
            probes: status.as_ref().map(|s| s.probes).unwrap_or(0),
            draining: drain.is_some(),
            drain_seconds: drain.map(|d| d.since.elapsed().as_secs_f64()),
            drain_finished: drain.is_some_and(|d| d.finished),
        })
    }

    /// Counters with rates against the last stats tick.
    pub fn stats(&self) -> Result<StatsView> {
        let dp = self
            .dp
            .as_ref()
            .ok_or_else(|| anyhow!("no L4 data plane is running"))?;
        let now = dp.snapshot()?;
        let (prev, elapsed) = match &self.prev {
            Some((p, at)) => (Some(p), at.elapsed()),
            None => (None, self.started.elapsed()),
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
    pub fn status(&self) -> StatusView {
        let mut reals_up = 0;
        let mut reals_total = 0;
        for v in &self.vips {
            for r in &v.reals {
                reals_total += 1;
                if self.is_up(&(v.id(), r.id())) {
                    reals_up += 1;
                }
            }
        }
        StatusView {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            config: None,
            l4: self.dp.is_some(),
            interfaces: self
                .dp
                .as_ref()
                .map(|d| {
                    d.attached()
                        .map(|(n, m)| InterfaceView {
                            name: n.to_string(),
                            mode: m.as_str(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            pin_path: self
                .dp
                .as_ref()
                .and_then(|d| d.pin_path().map(|p| p.display().to_string())),
            vips: self.vips.len(),
            reals: reals_total,
            reals_up,
            vips_all_down: self.all_down.iter().map(|k| k.to_string()).collect(),
            l7_listeners: self.config.l7.len(),
            dns: self.config.dns.is_some(),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
        }
    }

    /// True while every real of `k` that should serve is down.
    pub fn is_all_down(&self, k: &VipId) -> bool {
        self.all_down.contains(k)
    }

    /// Per (VIP, real): up, effective weight, check latency, probes.
    pub fn health_rows(&self) -> Vec<HealthRow> {
        let mut out = Vec::new();
        for v in &self.vips {
            let k = v.id();
            for r in &v.reals {
                let rk = r.id();
                let st = self
                    .targets
                    .get(&(k, rk))
                    .and_then(|id| self.monitor.status(*id));
                out.push((
                    v.id(),
                    r.id(),
                    self.is_up(&(k, rk)),
                    r.check.kind != CheckKind::None,
                    self.published
                        .get(&k)
                        .and_then(|m| m.get(&rk).copied())
                        .unwrap_or(0),
                    st.as_ref().and_then(|s| s.last_latency),
                    st.map(|s| s.probes).unwrap_or(0),
                ));
            }
        }
        out
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
