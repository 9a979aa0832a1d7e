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
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use log::{error, info, warn};

use crate::{
    config::Config,
    health::{CheckKind, Monitor, Status, Target, TargetId, Tunnel},
    ident::{RealId, VipId},
    l4::{
        config::{
            validate_real, validate_vip, AllDown, Encap, Mode, RawReal, RawVip, Vip, VipSide,
        },
        dataplane::{Dataplane, Snapshot},
    },
};

/// A real of a VIP.
type RealK = (VipId, RealId);

/// Why the reconciler refused a change. Nothing changed when one is
/// returned; the admin layer maps each kind to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A field of the request is invalid.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The VIP or real named does not exist.
    #[error("{field}: {message}")]
    NotFound { field: String, message: String },
    /// The change conflicts with the current state: exists already, would
    /// leave a VIP without a real taking traffic, or there is no data plane.
    #[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Conflict {
        field: Option<String>,
        message: String,
    },
    /// The kernel refused an update that passed validation.
    #[error("{0}")]
    DataPlane(String),
}

impl ControlError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        ControlError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
    fn not_found(field: &str, message: impl Into<String>) -> Self {
        ControlError::NotFound {
            field: field.to_string(),
            message: message.into(),
        }
    }
    fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        ControlError::Conflict {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            ControlError::Invalid { field, .. } | ControlError::NotFound { field, .. } => {
                Some(field)
            }
            ControlError::Conflict { field, .. } => field.as_deref(),
            ControlError::DataPlane(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    since: Instant,
    /// Conntrack entries cut once the drain timeout passed.
    finished: bool,
}

/// The control state; shared by the daemon loop and the API behind a mutex.
pub struct Control {
    dp: Option<Dataplane>,
    monitor: Monitor,
    /// The config last loaded from the file.
    config: Config,
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
    reloads_ok: u64,
    reloads_failed: u64,
    all_down_events: u64,
    started: Instant,
    /// The snapshot of the last stats tick, for rates.
    prev: Option<(Snapshot, Instant)>,
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
            dp.set_icmp_rate(config.icmp_rate_limit)?;
            dp.set_icmp_relay(config.icmp_relay)?;
            dp.set_encap_sources(config.encap_sources);
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

    /// The config's `encap_source`, used from the next VIP update on.
    /// Applies `icmp_rate_limit` and `icmp_relay` (a reload).
    pub fn set_icmp(&mut self, rate: u32, relay: bool) -> Result<()> {
        match self.dp.as_mut() {
            Some(dp) => {
                dp.set_icmp_rate(rate)?;
                dp.set_icmp_relay(relay)
            }
            None => Ok(()),
        }
    }

    pub fn set_encap_sources(&mut self, sources: crate::l4::config::EncapSources) {
        if let Some(dp) = self.dp.as_mut() {
            dp.set_encap_sources(sources);
        }
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
                .flat_map(|v| v.reals.iter().map(super::config::Real::id))
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
                let mut t = Target::new(SocketAddr::new(r.address, r.port), r.check.clone());
                // A DSR real is probed the way clients reach it: through
                // the tunnel, addressed to the VIP.
                if let Mode::Dsr(encap) = v.mode {
                    t = t.through(Tunnel {
                        vip: v.address,
                        gue_port: match encap {
                            Encap::Ipip => None,
                            Encap::Gue { port } => Some(port),
                        },
                    });
                }
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
        self.targets.get(k).is_none_or(|id| self.monitor.is_up(*id))
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
                            eff.reals.clone_from(&vip.reals);
                        }
                    }
                    AllDown::Open => eff.reals.clone_from(&vip.reals),
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

    fn find_vip(&self, vip: &VipId) -> Result<usize, ControlError> {
        self.vips
            .iter()
            .position(|v| v.id() == *vip)
            .ok_or_else(|| ControlError::not_found("vip", format!("no VIP {vip}")))
    }

    fn find_real(&self, vi: usize, real: &RealId) -> Result<usize, ControlError> {
        self.vips[vi]
            .reals
            .iter()
            .position(|r| r.id() == *real)
            .ok_or_else(|| {
                ControlError::not_found(
                    "real",
                    format!("{real} is not a real of {}", self.vips[vi].id()),
                )
            })
    }

    fn commit(&mut self, vips: Vec<Vip>) -> Result<(), ControlError> {
        if self.dp.is_none() {
            return Err(ControlError::conflict(
                None,
                "no L4 data plane is running (start lb with interfaces and VIPs)",
            ));
        }
        self.set_vips(vips).map_err(|e| {
            ControlError::DataPlane(format!("data plane update failed, nothing changed: {e:#}"))
        })
    }

    /// `vip add`: validates the table and adds the VIP.
    pub fn vip_add(&mut self, raw: &RawVip) -> Result<VipId, ControlError> {
        let mut errors = Vec::new();
        let vip = validate_vip("vip", raw, &mut errors);
        if let Some(e) = errors.into_iter().next() {
            return Err(ControlError::invalid(&e.field, e.reason));
        }
        let vip = vip.ok_or_else(|| ControlError::invalid("vip", "invalid"))?;
        let id = vip.id();
        if self.vips.iter().any(|v| v.id() == id) {
            return Err(ControlError::conflict(
                Some("vip"),
                format!("{id} exists already"),
            ));
        }
        let mut vips = self.vips.clone();
        vips.push(vip);
        self.commit(vips)?;
        info!("api: vip {id} added");
        Ok(id)
    }

    /// `vip del`.
    pub fn vip_del(&mut self, vip: &VipId) -> Result<(), ControlError> {
        let i = self.find_vip(vip)?;
        let mut vips = self.vips.clone();
        vips.remove(i);
        self.commit(vips)?;
        info!("api: vip {vip} removed");
        Ok(())
    }

    /// `real add`: validates the table (inheriting the VIP's health table)
    /// and adds the real.
    pub fn real_add(&mut self, vip: &VipId, raw: &RawReal) -> Result<RealId, ControlError> {
        let vi = self.find_vip(vip)?;
        let v = &self.vips[vi];
        let mut errors = Vec::new();
        let side = VipSide {
            address: Some(v.address),
            port: Some(v.port),
            mode: Some(v.mode),
        };
        let real = validate_real("real", raw, &side, &v.health, &mut errors);
        if let Some(e) = errors.into_iter().next() {
            return Err(ControlError::invalid(&e.field, e.reason));
        }
        let real = real.ok_or_else(|| ControlError::invalid("real", "invalid"))?;
        let id = real.id();
        if v.reals.iter().any(|r| r.id() == id) {
            return Err(ControlError::conflict(
                Some("real"),
                format!("{id} is already a real of {vip}"),
            ));
        }
        let mut vips = self.vips.clone();
        vips[vi].reals.push(real);
        self.commit(vips)?;
        info!("api: vip {vip}: real {id} added");
        Ok(id)
    }

    /// `real del`.
    pub fn real_del(&mut self, vip: &VipId, real: &RealId) -> Result<(), ControlError> {
        let vi = self.find_vip(vip)?;
        let ri = self.find_real(vi, real)?;
        let mut vips = self.vips.clone();
        if vips[vi].reals.len() == 1 {
            return Err(ControlError::conflict(
                Some("real"),
                format!("{real} is the last real of {vip}; delete the VIP instead"),
            ));
        }
        vips[vi].reals.remove(ri);
        if !vips[vi].reals.iter().any(|r| r.weight > 0) {
            return Err(ControlError::conflict(
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
        vip: &VipId,
        real: &RealId,
        weight: i64,
    ) -> Result<(), ControlError> {
        let vi = self.find_vip(vip)?;
        let ri = self.find_real(vi, real)?;
        let w = match u32::try_from(weight) {
            Ok(w) if w <= lb_common::MAX_WEIGHT => w,
            _ => {
                return Err(ControlError::invalid(
                    "weight",
                    format!("{weight} is outside 0..={}", lb_common::MAX_WEIGHT),
                ))
            }
        };
        let mut vips = self.vips.clone();
        vips[vi].reals[ri].weight = w;
        if !vips[vi].reals.iter().any(|r| r.weight > 0) {
            return Err(ControlError::conflict(
                Some("weight"),
                format!("{real} is the last real of {vip} with a weight; at least one must take traffic"),
            ));
        }
        self.commit(vips)?;
        info!("api: vip {vip}: real {real} weight {w}");
        Ok(())
    }

    /// What the reconciler knows of one real of a VIP.
    pub fn real_state(&self, vip: &VipId, real: &RealId) -> Option<RealState> {
        let v = self.vips.iter().find(|v| v.id() == *vip)?;
        let r = v.reals.iter().find(|r| r.id() == *real)?;
        let k = (*vip, *real);
        Some(RealState {
            checked: r.check.kind != CheckKind::None,
            up: self.is_up(&k),
            status: self.targets.get(&k).and_then(|id| self.monitor.status(*id)),
            effective_weight: self
                .published
                .get(vip)
                .and_then(|m| m.get(real).copied())
                .unwrap_or(0),
            drain: self.drains.get(&k).map(|d| DrainState {
                since: d.since,
                finished: d.finished,
            }),
        })
    }

    /// The VIPs whose every real that should serve is down.
    pub fn all_down_vips(&self) -> impl Iterator<Item = &VipId> {
        self.all_down.iter()
    }

    /// The running data plane (none when `lb` runs no L4 role).
    pub fn dp(&self) -> Option<&Dataplane> {
        self.dp.as_ref()
    }

    pub fn dp_mut(&mut self) -> Option<&mut Dataplane> {
        self.dp.as_mut()
    }

    /// Takes the data plane out (at shutdown).
    pub fn take_dp(&mut self) -> Option<Dataplane> {
        self.dp.take()
    }

    /// The config last loaded from the file.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Records a reload whose new config was applied.
    pub fn reload_applied(&mut self, config: Config) {
        self.config = config;
        self.reloads_ok += 1;
    }

    /// Records a reload that was refused.
    pub fn reload_failed(&mut self) {
        self.reloads_failed += 1;
    }

    pub fn counters(&self) -> ControlCounters {
        ControlCounters {
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            all_down_events: self.all_down_events,
            uptime: self.started.elapsed(),
        }
    }

    /// The counters of the last stats tick and when they were read.
    pub fn last_snapshot(&self) -> Option<&(Snapshot, Instant)> {
        self.prev.as_ref()
    }

    pub fn set_last_snapshot(&mut self, snapshot: Snapshot, at: Instant) {
        self.prev = Some((snapshot, at));
    }

    /// True while every real of `k` that should serve is down.
    pub fn is_all_down(&self, k: &VipId) -> bool {
        self.all_down.contains(k)
    }
}

/// One real as the reconciler sees it.
#[derive(Debug, Clone)]
pub struct RealState {
    /// False for health kind `none`.
    pub checked: bool,
    /// Passing its check (or unchecked).
    pub up: bool,
    /// The health monitor's view, for checked reals.
    pub status: Option<Status>,
    /// Weight in the published ring (0: no new flows).
    pub effective_weight: u32,
    pub drain: Option<DrainState>,
}

/// A real draining (weight 0).
#[derive(Debug, Clone, Copy)]
pub struct DrainState {
    pub since: Instant,
    /// Its remaining conntrack entries were cut when the timeout passed.
    pub finished: bool,
}

/// The reconciler's event counters.
#[derive(Debug, Clone, Copy)]
pub struct ControlCounters {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub all_down_events: u64,
    pub uptime: Duration,
}
