//! The XDP data plane from user space: load the embedded object, attach it,
//! keep its maps in step with the config, read its counters.
//!
//! Map sync is a diff: VIP indexes and real ids are stable across applies, a
//! VIP's new ring is written into its spare ring slot and then published by
//! one update of the VIP entry, so the data path never sees a half-written
//! ring and flows of untouched VIPs are not disturbed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    stat, Counters, RealDef, VipKey, VipMeta, FAMILY_V4, FAMILY_V6, MAX_REALS, MAX_VIPS,
    REAL_F_VALID, RING_STRIDE, VIP_F_ADDR_ONLY,
};
use log::{info, warn};

use crate::{
    config::{Protocol, Vip},
    maglev,
};

/// The XDP object, built from `lb-ebpf` and embedded at compile time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// Name of the balancing program in the object.
pub const PROGRAM: &str = "lb_xdp";

/// 16-byte map form of an address and its family.
pub fn addr_bytes(a: IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

pub fn vip_key(address: IpAddr, port: u16, protocol: Protocol) -> VipKey {
    let (addr, family) = addr_bytes(address);
    VipKey {
        addr,
        port: port.to_be(),
        proto: protocol.ip_proto(),
        family,
    }
}

/// Options for [`Dataplane::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Conntrack entries per direction.
    pub conntrack_size: u32,
    /// Most verbose level the XDP program logs at (aya-log levels: 1 error …
    /// 5 trace). Debug (4) reports malformed packets; the default, info (3),
    /// logs nothing per packet.
    pub log_level: u8,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_size: lb_common::CONNTRACK_SIZE,
            log_level: 3,
        }
    }
}

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Generic,
}

#[derive(Debug, Clone)]
struct VipState {
    index: u32,
    live_slot: u32,
    ring: Vec<u32>,
    ring_size: u32,
}

/// Counters of one VIP or real, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
}

impl From<Counters> for Totals {
    fn from(c: Counters) -> Self {
        Totals {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
        }
    }
}

/// A snapshot of every counter.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    /// Per VIP (by `key_string`), with its reals (`addr:port`).
    pub vips: BTreeMap<String, (Totals, BTreeMap<String, Totals>)>,
    /// Global counters by name.
    pub global: BTreeMap<&'static str, u64>,
}

/// A loaded (and possibly attached) data plane.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Vec<(String, u32, AttachMode)>,
    vips: HashMap<(IpAddr, u16, Protocol), VipState>,
    reals: HashMap<(IpAddr, u16), u32>,
    next_real: u32,
    applied: Vec<Vip>,
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no map `{name}`"))
}

/// Turns a load/attach failure into one line that names the cause.
fn explain(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    if s.contains("Operation not permitted") || s.contains("EPERM") {
        format!("{s} (loading XDP needs root: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")
    } else if s.contains("Function not implemented") {
        format!("{s} (this kernel has no BPF support)")
    } else {
        s
    }
}

impl Dataplane {
    /// Loads the embedded object into the kernel (nothing attached yet).
    pub fn load(opts: &LoadOptions) -> Result<Dataplane> {
        if XDP_OBJECT.is_empty() {
            bail!("this lb binary was built without its XDP object (AYA_BUILD_SKIP was set)");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CONNTRACK", opts.conntrack_size)
            .map_max_entries("REVERSE", opts.conntrack_size)
            .override_global("AYA_LOG_LEVEL", &opts.log_level, false)
            .load(XDP_OBJECT)
            .map_err(|e| anyhow!("cannot load the XDP object: {}", explain(&e)))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("XDP log channel unavailable: {e}");
                None
            }
        };
        for name in [PROGRAM, "floor_tx", "floor_redirect", "sink"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?
                .try_into()?;
            prog.load().map_err(|e| {
                anyhow!("the kernel rejected XDP program `{name}`: {}", explain(&e))
            })?;
        }
        Ok(Dataplane {
            ebpf,
            logger,
            attached: Vec::new(),
            vips: HashMap::new(),
            reals: HashMap::new(),
            next_real: 1,
            applied: Vec::new(),
        })
    }

    /// The underlying object, for test-run and benchmarks.
    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// A loaded program by name.
    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program `{name}`"))?
            .try_into()
            .map_err(Into::into)
    }

    /// Attaches `lb_xdp` to `iface`: driver mode, else generic with a warning.
    /// The interface also becomes a redirect target.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        let ifindex = ifindex(iface)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program `{PROGRAM}`"))?
            .try_into()?;
        let mode = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(_) => AttachMode::Driver,
            Err(e) => {
                let driver_err = explain(&e);
                match prog.attach_to_if_index(ifindex, XdpMode::Skb) {
                    Ok(_) => {
                        warn!(
                            "{iface}: the driver has no native XDP ({driver_err}); attached in generic (skb) mode, which is much slower"
                        );
                        AttachMode::Generic
                    }
                    Err(e) => bail!("cannot attach XDP to {iface}: {}", explain(&e)),
                }
            }
        };
        let mut tx: DevMapHash<&mut MapData> = map(&mut self.ebpf, "TX_PORTS")?.try_into()?;
        tx.insert(ifindex, ifindex, None, 0)
            .map_err(|e| anyhow!("cannot add {iface} to TX_PORTS: {e}"))?;
        info!(
            "{iface}: XDP attached ({})",
            match mode {
                AttachMode::Driver => "driver mode",
                AttachMode::Generic => "generic mode",
            }
        );
        self.attached.push((iface.to_string(), ifindex, mode));
        Ok(mode)
    }

    /// Interfaces attached so far.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attached.iter().map(|(n, _, m)| (n.as_str(), *m))
    }

    /// Adds an interface as a redirect target without attaching to it.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut tx: DevMapHash<&mut MapData> = map(&mut self.ebpf, "TX_PORTS")?.try_into()?;
        tx.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// The VIPs as last applied.
    pub fn applied(&self) -> &[Vip] {
        &self.applied
    }

    /// The real id a real has in the data plane.
    pub fn real_id(&self, address: IpAddr, port: u16) -> Option<u32> {
        self.reals.get(&(address, port)).copied()
    }

    /// The live ring of a VIP, as real ids.
    pub fn ring(&self, address: IpAddr, port: u16, protocol: Protocol) -> Option<&[u32]> {
        self.vips
            .get(&(address, port, protocol))
            .map(|s| s.ring.as_slice())
    }

    /// Makes the maps match `vips`, touching only what changed.
    pub fn apply(&mut self, vips: &[Vip]) -> Result<()> {
        if vips.len() > MAX_VIPS as usize {
            bail!("{} VIPs; the data plane holds {MAX_VIPS}", vips.len());
        }
        // Real ids: keep existing ones, give new reals fresh ids.
        let wanted_reals: HashSet<(IpAddr, u16)> = vips
            .iter()
            .flat_map(|v| v.reals.iter().map(|r| (r.address, r.port)))
            .collect();
        let removed_reals: Vec<((IpAddr, u16), u32)> = self
            .reals
            .iter()
            .filter(|(k, _)| !wanted_reals.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut used: HashSet<u32> = self.reals.values().copied().collect();
        let mut new_reals = Vec::new();
        for key in &wanted_reals {
            if !self.reals.contains_key(key) {
                let id = self.alloc_real_id(&used)?;
                used.insert(id);
                new_reals.push((*key, id));
            }
        }
        {
            let mut reals: Array<&mut MapData, RealDef> =
                map(&mut self.ebpf, "REALS")?.try_into()?;
            for ((address, port), id) in &new_reals {
                let (addr, family) = addr_bytes(*address);
                let def = RealDef {
                    addr,
                    port: port.to_be(),
                    family,
                    _pad: 0,
                    flags: REAL_F_VALID,
                };
                reals.set(*id, def, 0)?;
            }
        }
        for (k, id) in &new_reals {
            self.reals.insert(*k, *id);
        }

        // VIP indexes.
        let wanted_vips: HashSet<(IpAddr, u16, Protocol)> = vips
            .iter()
            .map(|v| (v.address, v.port, v.protocol))
            .collect();
        let removed_vips: Vec<(IpAddr, u16, Protocol)> = self
            .vips
            .keys()
            .filter(|k| !wanted_vips.contains(k))
            .copied()
            .collect();
        for key in &removed_vips {
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            let _ = m.remove(&vip_key(key.0, key.1, key.2));
            self.vips.remove(key);
        }
        let used_idx: HashSet<u32> = self.vips.values().map(|s| s.index).collect();
        let mut free_idx = (0..MAX_VIPS).filter(|i| !used_idx.contains(i));

        for vip in vips {
            let key = (vip.address, vip.port, vip.protocol);
            let backends: Vec<maglev::Backend> = vip
                .reals
                .iter()
                .map(|r| maglev::Backend {
                    id: real_identity(r.address, r.port),
                    weight: r.weight,
                })
                .collect();
            let table = maglev::build(&backends, vip.ring_size);
            let ring: Vec<u32> = table
                .iter()
                .map(|&i| {
                    if i == maglev::EMPTY {
                        0
                    } else {
                        let r = &vip.reals[i as usize];
                        self.reals[&(r.address, r.port)]
                    }
                })
                .collect();
            let (index, slot) = match self.vips.get(&key) {
                Some(s) if s.ring == ring && s.ring_size == vip.ring_size => continue,
                Some(s) => (s.index, 1 - s.live_slot),
                None => (
                    free_idx
                        .next()
                        .ok_or_else(|| anyhow!("no free VIP index"))?,
                    0,
                ),
            };
            {
                let mut rings: Array<&mut MapData, u32> =
                    map(&mut self.ebpf, "RINGS")?.try_into()?;
                let base = (index * 2 + slot) * RING_STRIDE;
                for (i, id) in ring.iter().enumerate() {
                    rings.set(base + i as u32, *id, 0)?;
                }
            }
            let meta = VipMeta {
                vip_index: index,
                ring_slot: index * 2 + slot,
                ring_size: vip.ring_size,
                flags: 0,
            };
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            m.insert(vip_key(vip.address, vip.port, vip.protocol), meta, 0)?;
            self.vips.insert(
                key,
                VipState {
                    index,
                    live_slot: slot,
                    ring,
                    ring_size: vip.ring_size,
                },
            );
        }

        // Address markers: one per VIP address.
        {
            let addrs: HashSet<IpAddr> = vips.iter().map(|v| v.address).collect();
            let old: HashSet<IpAddr> = self.applied.iter().map(|v| v.address).collect();
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            for a in &addrs {
                let (addr, family) = addr_bytes(*a);
                let key = VipKey {
                    addr,
                    port: 0,
                    proto: 0,
                    family,
                };
                m.insert(
                    key,
                    VipMeta {
                        flags: VIP_F_ADDR_ONLY,
                        ..Default::default()
                    },
                    0,
                )?;
            }
            for a in old.difference(&addrs) {
                let (addr, family) = addr_bytes(*a);
                let _ = m.remove(&VipKey {
                    addr,
                    port: 0,
                    proto: 0,
                    family,
                });
            }
        }

        // Reals no VIP uses any more: invalidate, so their conntrack entries
        // fall back to the ring.
        if !removed_reals.is_empty() {
            let mut reals: Array<&mut MapData, RealDef> =
                map(&mut self.ebpf, "REALS")?.try_into()?;
            for (k, id) in removed_reals {
                reals.set(id, RealDef::default(), 0)?;
                self.reals.remove(&k);
            }
        }
        self.applied = vips.to_vec();
        Ok(())
    }

    /// Fresh ids go upwards; ids of removed reals are reused only once the
    /// table has been gone through, so a stale conntrack entry is unlikely to
    /// meet a new real under an old id.
    fn alloc_real_id(&mut self, used: &HashSet<u32>) -> Result<u32> {
        for _ in 1..MAX_REALS {
            let id = self.next_real;
            self.next_real = if self.next_real + 1 >= MAX_REALS {
                1
            } else {
                self.next_real + 1
            };
            if !used.contains(&id) {
                return Ok(id);
            }
        }
        bail!(
            "no free real id (the data plane holds {} reals)",
            MAX_REALS - 1
        )
    }

    /// Sums the per-CPU counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let vstats: PerCpuArray<&MapData, Counters> = self
            .ebpf
            .map("VIP_STATS")
            .ok_or_else(|| anyhow!("no VIP_STATS"))?
            .try_into()?;
        let rstats: PerCpuArray<&MapData, Counters> = self
            .ebpf
            .map("REAL_STATS")
            .ok_or_else(|| anyhow!("no REAL_STATS"))?
            .try_into()?;
        let gstats: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map("GLOBAL_STATS")
            .ok_or_else(|| anyhow!("no GLOBAL_STATS"))?
            .try_into()?;
        let sum = |vals: aya::maps::PerCpuValues<Counters>| {
            let mut t = Totals::default();
            for c in vals.iter() {
                t.packets += c.packets;
                t.bytes += c.bytes;
                t.new_flows += c.new_flows;
                t.reply_packets += c.reply_packets;
            }
            t
        };
        let mut snap = Snapshot::default();
        for vip in &self.applied {
            let Some(state) = self.vips.get(&(vip.address, vip.port, vip.protocol)) else {
                continue;
            };
            let vt = sum(vstats.get(&state.index, 0)?);
            let mut reals = BTreeMap::new();
            for r in &vip.reals {
                if let Some(id) = self.reals.get(&(r.address, r.port)) {
                    reals.insert(real_string(r.address, r.port), sum(rstats.get(id, 0)?));
                }
            }
            snap.vips.insert(vip.key_string(), (vt, reals));
        }
        for (i, name) in stat::NAMES.iter().enumerate() {
            let v: u64 = gstats.get(&(i as u32), 0)?.iter().sum();
            snap.global.insert(name, v);
        }
        Ok(snap)
    }

    /// Forwards pending XDP log records to the host log.
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Resolves the next hop of every real (and the gateways of the routes
    /// through attached interfaces) as kernel-managed neighbour entries, so
    /// that `bpf_fib_lookup` finds them before the first packet; the kernel
    /// keeps managed entries fresh.
    pub fn resolve_neighbours(&self) {
        let mut targets: HashSet<IpAddr> = HashSet::new();
        for vip in &self.applied {
            for r in &vip.reals {
                targets.insert(r.address);
            }
        }
        for t in targets {
            if let Err(e) = resolve_neighbour(t) {
                warn!("neighbour of real {t}: {e:#}");
            }
        }
        for (iface, _, _) in &self.attached {
            for gw in gateways(iface) {
                if let Err(e) = resolve_neighbour(gw) {
                    warn!("gateway {gw} on {iface}: {e:#}");
                }
            }
        }
    }
}

/// `addr:port` / `[addr]:port`.
pub fn real_string(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The bytes Maglev hashes for a real: stable across nodes and restarts.
pub fn real_identity(address: IpAddr, port: u16) -> Vec<u8> {
    real_string(address, port).into_bytes()
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name has a NUL byte")?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface `{iface}` does not exist");
    }
    Ok(idx)
}

/// `ip -j route get ADDR` → (device, next hop).
fn route_to(addr: IpAddr) -> Result<(String, IpAddr)> {
    let out = Command::new("ip")
        .args(["-j", "route", "get", &addr.to_string()])
        .output()
        .context("running `ip route get` (iproute2)")?;
    if !out.status.success() {
        bail!("no route: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let r = v
        .get(0)
        .ok_or_else(|| anyhow!("empty answer from `ip route get`"))?;
    if r.get("type").and_then(|t| t.as_str()) == Some("local") {
        bail!("{addr} is a local address");
    }
    let dev = r
        .get("dev")
        .and_then(|d| d.as_str())
        .ok_or_else(|| anyhow!("route has no device"))?
        .to_string();
    let nh = match r.get("gateway").and_then(|g| g.as_str()) {
        Some(g) => g.parse()?,
        None => addr,
    };
    Ok((dev, nh))
}

fn resolve_neighbour(addr: IpAddr) -> Result<()> {
    let (dev, nh) = route_to(addr)?;
    let out = Command::new("ip")
        .args(["neigh", "replace", &nh.to_string(), "dev", &dev, "managed"])
        .output()
        .context("running `ip neigh` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip neigh replace {nh} dev {dev} managed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn gateways(iface: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let Ok(o) = Command::new("ip")
            .args(["-j", fam, "route", "show", "dev", iface])
            .output()
        else {
            continue;
        };
        if let Ok(serde_json::Value::Array(routes)) = serde_json::from_slice(&o.stdout) {
            for r in routes {
                if let Some(g) = r.get("gateway").and_then(|g| g.as_str()) {
                    if let Ok(a) = g.parse() {
                        out.push(a);
                    }
                }
            }
        }
    }
    out
}
