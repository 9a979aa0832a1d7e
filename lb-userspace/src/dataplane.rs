//! The XDP data plane from user space: load the embedded object, attach it,
//! keep its maps in step with the config, read its counters.
//!
//! Map sync is a diff: VIP indexes and real ids are stable across applies, a
//! VIP's new ring is written into its spare ring slot and then published by
//! one update of the VIP entry, so the data path never sees a half-written
//! ring and flows of untouched VIPs are not disturbed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    stat, Counters, CtValue, FlowKey, RealDef, VipKey, VipMeta, CT_FORWARD, FAMILY_V4, FAMILY_V6,
    MAX_REALS, MAX_VIPS, REAL_F_VALID, RING_STRIDE, VIP_F_ADDR_ONLY,
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

/// The conntrack and flow hash key of a client → VIP packet, as the XDP
/// parser fills it: addresses as on the wire (IPv4 in the first four
/// bytes), ports read as they lie in the header (network byte order).
/// `flow_hash_seeded(&flow_key(..), seed) % ring_size` is the ring slot the
/// data path gives a new flow.
pub fn flow_key(client: SocketAddr, vip: SocketAddr, protocol: Protocol) -> FlowKey {
    let (src, family) = addr_bytes(client.ip());
    let (dst, _) = addr_bytes(vip.ip());
    FlowKey {
        src,
        dst,
        sport: u16::from_ne_bytes(client.port().to_be_bytes()),
        dport: u16::from_ne_bytes(vip.port().to_be_bytes()),
        proto: protocol.ip_proto(),
        family,
        _pad: [0; 2],
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
    /// Flows conntrack holds (each takes an entry per direction).
    pub conntrack_size: u32,
    /// Most verbose level the XDP program logs at (aya-log levels: 1 error …
    /// 5 trace). Debug (4) reports malformed packets; the default, info (3),
    /// logs nothing per packet.
    pub log_level: u8,
    /// bpffs directory for pinned maps and links. With a pin path, the
    /// state outlives the process: a new `lb` reuses the maps (conntrack
    /// included) and swaps its program into the pinned links, so traffic
    /// never stops. `None`: nothing pinned, detached on drop.
    pub pin_path: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_size: lb_common::CONNTRACK_SIZE,
            log_level: 3,
            pin_path: None,
        }
    }
}

/// The maps that hold the balancer's state; these are pinned.
pub const PINNED_MAPS: [&str; 11] = [
    "VIPS",
    "RINGS",
    "REALS",
    "HASH_SEED",
    "CONNTRACK",
    "VIP_KEYS",
    "VIP_STATS",
    "REAL_STATS",
    "GLOBAL_STATS",
    "TX_PORTS",
    "SKB_IFACES",
];

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Driver,
    Generic,
    /// Our program was swapped into a link pinned by an earlier `lb`.
    Reattached,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
            AttachMode::Reattached => "reattached",
        }
    }
}

/// One conntrack entry, for `lb conns`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conn {
    pub protocol: &'static str,
    pub client: String,
    pub vip: String,
    pub real: String,
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
    /// Addresses with a VIP address marker in the map.
    markers: HashSet<IpAddr>,
    pin_path: Option<PathBuf>,
    /// VIPs and reals found in pinned maps at load.
    restored: (usize, usize),
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no map `{name}`"))
}

/// Turns a load/attach failure into one line that names the cause.
fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    // The cause (EPERM, ENOSYS, …) is usually in the source chain.
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    if s.contains("Operation not permitted") || s.contains("EPERM") {
        format!("{s} (loading XDP needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")
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
        let mut loader = EbpfLoader::new();
        loader
            // One entry per direction of each flow.
            .map_max_entries("CONNTRACK", opts.conntrack_size.saturating_mul(2))
            .override_global("AYA_LOG_LEVEL", &opts.log_level, false);
        let pin_paths: Vec<(&str, PathBuf)> = match &opts.pin_path {
            Some(dir) => {
                prepare_pin_dir(dir)?;
                PINNED_MAPS
                    .iter()
                    .map(|n| (*n, dir.join(format!("map_{n}"))))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        // A pinned seed is the one the running program uses: kept until the
        // config's is applied. A new map starts at 0, not the default.
        let seed_pinned = pin_paths
            .iter()
            .any(|(name, path)| *name == "HASH_SEED" && path.exists());
        let mut ebpf = loader
            .load(XDP_OBJECT)
            .map_err(|e| anyhow!("cannot load the XDP object: {}", explain(&e)))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("XDP log channel unavailable: {e}");
                None
            }
        };
        // The object holds `lb_xdp` only; the measurement programs are the
        // test object's (`xdp_test`).
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM}`"))?
            .try_into()?;
        prog.load().map_err(|e| {
            anyhow!(
                "the kernel rejected XDP program `{PROGRAM}`: {}",
                explain(&e)
            )
        })?;
        let mut dp = Dataplane {
            ebpf,
            logger,
            attached: Vec::new(),
            vips: HashMap::new(),
            reals: HashMap::new(),
            next_real: 1,
            applied: Vec::new(),
            markers: HashSet::new(),
            pin_path: opts.pin_path.clone(),
            restored: (0, 0),
        };
        if !seed_pinned {
            dp.set_hash_seed(lb_common::DEFAULT_HASH_SEED)?;
        }
        if dp.pin_path.is_some() {
            dp.restore().context("reading the pinned maps")?;
        }
        Ok(dp)
    }

    /// Sets the flow hash seed new flows are hashed with (the config's
    /// `hash_seed`). Every flow without a conntrack entry may move to
    /// another real, as with a changed ring.
    pub fn set_hash_seed(&mut self, seed: u32) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = map(&mut self.ebpf, "HASH_SEED")?.try_into()?;
        m.set(0, seed, 0)
            .map_err(|e| anyhow!("cannot write HASH_SEED: {e}"))?;
        Ok(())
    }

    /// The flow hash seed the data path uses.
    pub fn hash_seed(&self) -> Result<u32> {
        let m: Array<&MapData, u32> = self
            .ebpf
            .map("HASH_SEED")
            .ok_or_else(|| anyhow!("the XDP object has no map `HASH_SEED`"))?
            .try_into()?;
        Ok(m.get(&0, 0)?)
    }

    /// Rebuilds the bookkeeping (VIP indexes, live ring slots, real ids)
    /// from maps an earlier `lb` left pinned, so that the next `apply` is a
    /// diff against what the data path is really doing and conntrack
    /// entries keep pointing at the same real ids.
    fn restore(&mut self) -> Result<()> {
        let vips: BpfHashMap<&MapData, VipKey, VipMeta> = self
            .ebpf
            .map("VIPS")
            .ok_or_else(|| anyhow!("no VIPS"))?
            .try_into()?;
        for item in vips.iter() {
            let (k, meta) = item?;
            let address = key_addr(&k.addr, k.family);
            if meta.flags & VIP_F_ADDR_ONLY != 0 {
                self.markers.insert(address);
                continue;
            }
            let protocol = match k.proto {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                _ => continue,
            };
            self.vips.insert(
                (address, u16::from_be(k.port), protocol),
                VipState {
                    index: meta.vip_index,
                    live_slot: meta.ring_slot.saturating_sub(meta.vip_index * 2),
                    // Unknown: the next apply rewrites the spare slot and
                    // swaps, which is harmless when the ring is the same.
                    ring: Vec::new(),
                    ring_size: meta.ring_size,
                },
            );
        }
        let reals: Array<&MapData, RealDef> = self
            .ebpf
            .map("REALS")
            .ok_or_else(|| anyhow!("no REALS"))?
            .try_into()?;
        for id in 1..MAX_REALS {
            let r = reals.get(&id, 0)?;
            if r.flags & REAL_F_VALID != 0 {
                self.reals
                    .insert((key_addr(&r.addr, r.family), u16::from_be(r.port)), id);
                self.next_real = self.next_real.max(id + 1) % MAX_REALS;
            }
        }
        if self.next_real == 0 {
            self.next_real = 1;
        }
        self.restored = (self.vips.len(), self.reals.len());
        if !self.vips.is_empty() {
            info!(
                "pinned state found: {} VIPs, {} reals; conntrack kept",
                self.vips.len(),
                self.reals.len()
            );
        }
        Ok(())
    }

    /// VIPs and reals found in pinned maps at load (0, 0 on a fresh start).
    pub fn restored(&self) -> (usize, usize) {
        self.restored
    }

    /// The bpffs directory, when pinning.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin_path.as_deref()
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
    ///
    /// With a pin path, a link an earlier `lb` pinned for `iface` gets our
    /// program atomically (no packet sees no program); otherwise the new
    /// link is pinned so it outlives this process.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        let ifindex = ifindex(iface)?;
        let link_pin = self
            .pin_path
            .as_ref()
            .map(|d| d.join(format!("link_{iface}")));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program `{PROGRAM}`"))?
            .try_into()?;
        if let Some(path) = link_pin.as_ref().filter(|p| p.exists()) {
            match PinnedLink::from_pin(path) {
                Ok(pinned) => {
                    let fd: FdLink = pinned.into();
                    let link = XdpLink::try_from(fd)
                        .map_err(|e| anyhow!("{}: not an XDP link: {e}", path.display()))?;
                    prog.attach_to_link(link).map_err(|e| {
                        anyhow!(
                            "cannot swap the program into {}: {}",
                            path.display(),
                            explain(&e)
                        )
                    })?;
                    let mut tx: DevMapHash<&mut MapData> =
                        map(&mut self.ebpf, "TX_PORTS")?.try_into()?;
                    tx.insert(ifindex, ifindex, None, 0)
                        .map_err(|e| anyhow!("cannot add {iface} to TX_PORTS: {e}"))?;
                    info!("{iface}: XDP program replaced in the pinned link (no detach)");
                    self.attached
                        .push((iface.to_string(), ifindex, AttachMode::Reattached));
                    return Ok(AttachMode::Reattached);
                }
                Err(e) => {
                    warn!(
                        "{}: stale pinned link ({e}); attaching afresh",
                        path.display()
                    );
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let (mode, link_id) = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (AttachMode::Driver, id),
            Err(e) => {
                let driver_err = explain(&e);
                match prog.attach_to_if_index(ifindex, XdpMode::Skb) {
                    Ok(id) => {
                        warn!(
                            "{iface}: the driver has no native XDP ({driver_err}); attached in generic (skb) mode, which is much slower"
                        );
                        (AttachMode::Generic, id)
                    }
                    Err(e) => bail!("cannot attach XDP to {iface}: {}", explain(&e)),
                }
            }
        };
        if let Some(path) = &link_pin {
            let link = prog.take_link(link_id)?;
            let fd = FdLink::try_from(link).map_err(|e| {
                anyhow!("{iface}: the kernel attached XDP without a BPF link, which cannot be pinned: {e}")
            })?;
            fd.pin(path)
                .map_err(|e| anyhow!("cannot pin the XDP link at {}: {e}", path.display()))?;
        }
        let mut tx: DevMapHash<&mut MapData> = map(&mut self.ebpf, "TX_PORTS")?.try_into()?;
        tx.insert(ifindex, ifindex, None, 0)
            .map_err(|e| anyhow!("cannot add {iface} to TX_PORTS: {e}"))?;
        self.set_skb_mode(ifindex, mode == AttachMode::Generic)?;
        info!(
            "{iface}: XDP attached ({})",
            match mode {
                AttachMode::Driver => "driver mode",
                AttachMode::Generic => "generic mode",
                AttachMode::Reattached => "pinned link",
            }
        );
        self.attached.push((iface.to_string(), ifindex, mode));
        Ok(mode)
    }

    /// Interfaces attached so far.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attached.iter().map(|(n, _, m)| (n.as_str(), *m))
    }

    /// Records whether `ifindex` runs the program in generic (skb) mode,
    /// where a frame keeps its socket buffer (and a partial checksum its
    /// mark) whatever the verdict. The map is pinned, so a program swapped
    /// into a pinned link later finds the mode its link was made with.
    pub fn set_skb_mode(&mut self, ifindex: u32, generic: bool) -> Result<()> {
        let mut m: BpfHashMap<&mut MapData, u32, u32> =
            map(&mut self.ebpf, "SKB_IFACES")?.try_into()?;
        if generic {
            m.insert(ifindex, 1, 0)
                .map_err(|e| anyhow!("cannot record generic mode of ifindex {ifindex}: {e}"))?;
        } else {
            let _ = m.remove(&ifindex);
        }
        Ok(())
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
            // A fresh id starts its counters at zero, and with no cached
            // next hop (the id may have belonged to another real before).
            self.zero_counters("REAL_STATS", *id)?;
            self.clear_next_hop(*id)?;
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
            if let Some(state) = self.vips.remove(key) {
                // Its conntrack entries stop counting from here on.
                let mut keys: Array<&mut MapData, VipKey> =
                    map(&mut self.ebpf, "VIP_KEYS")?.try_into()?;
                keys.set(state.index, VipKey::default(), 0)?;
            }
        }
        let used_idx: HashSet<u32> = self.vips.values().map(|s| s.index).collect();
        let mut free_idx = (0..MAX_VIPS).filter(|i| !used_idx.contains(i));

        for vip in vips {
            let key = (vip.address, vip.port, vip.protocol);
            let table = vip_ring(vip);
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
                Some(s) => (s.index, 1 - s.live_slot.min(1)),
                None => {
                    let index = free_idx
                        .next()
                        .ok_or_else(|| anyhow!("no free VIP index"))?;
                    self.zero_counters("VIP_STATS", index)?;
                    (index, 0)
                }
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
            let vkey = vip_key(vip.address, vip.port, vip.protocol);
            {
                let mut keys: Array<&mut MapData, VipKey> =
                    map(&mut self.ebpf, "VIP_KEYS")?.try_into()?;
                keys.set(index, vkey, 0)?;
            }
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            m.insert(vkey, meta, 0)?;
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
            let old = std::mem::take(&mut self.markers);
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
            self.markers = addrs;
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

    fn zero_counters(&mut self, map_name: &str, index: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut m: PerCpuArray<&mut MapData, Counters> =
            map(&mut self.ebpf, map_name)?.try_into()?;
        m.set(
            index,
            PerCpuValues::try_from(vec![Counters::default(); cpus])?,
            0,
        )?;
        Ok(())
    }

    fn clear_next_hop(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut m: PerCpuArray<&mut MapData, lb_common::NextHop> =
            map(&mut self.ebpf, "NEXT_HOPS")?.try_into()?;
        m.set(
            id,
            PerCpuValues::try_from(vec![lb_common::NextHop::default(); cpus])?,
            0,
        )?;
        Ok(())
    }

    /// The stats index of a VIP.
    pub fn vip_index(&self, address: IpAddr, port: u16, protocol: Protocol) -> Option<u32> {
        self.vips.get(&(address, port, protocol)).map(|s| s.index)
    }

    /// Deletes the conntrack entries of flows of one VIP that are pinned to
    /// one real (the end of a drain): their next packet takes a real from
    /// the ring. Returns how many were deleted.
    pub fn flush_conntrack(&mut self, vip_index: u32, real_id: u32) -> Result<usize> {
        let mut ct: BpfHashMap<&mut MapData, FlowKey, CtValue> =
            map(&mut self.ebpf, "CONNTRACK")?.try_into()?;
        let doomed: Vec<FlowKey> = ct
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, v)| {
                v.kind == CT_FORWARD && v.vip_index == vip_index && v.real_id == real_id
            })
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in &doomed {
            if ct.remove(k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Most conntrack entries one dump looks at. Every entry costs a system
    /// call and the caller holds the control lock, which health changes
    /// need, so a dump filtered to a quiet VIP must not walk a full table.
    pub const CONNS_SCAN_MAX: usize = 65_536;

    /// Up to `limit` conntrack entries, optionally of one VIP only, among the
    /// first [`Self::CONNS_SCAN_MAX`] entries of the table.
    pub fn conns(&self, vip: Option<(IpAddr, u16, Protocol)>, limit: usize) -> Result<Vec<Conn>> {
        let ct: BpfHashMap<&MapData, FlowKey, CtValue> = self
            .ebpf
            .map("CONNTRACK")
            .ok_or_else(|| anyhow!("no CONNTRACK"))?
            .try_into()?;
        let by_id: HashMap<u32, (IpAddr, u16)> = self.reals.iter().map(|(k, v)| (*v, *k)).collect();
        let want_index = match vip {
            Some(k) => Some(
                self.vips
                    .get(&k)
                    .map(|s| s.index)
                    .ok_or_else(|| anyhow!("no such VIP"))?,
            ),
            None => None,
        };
        let mut out = Vec::new();
        for item in ct.iter().take(Self::CONNS_SCAN_MAX) {
            if out.len() >= limit {
                break;
            }
            let Ok((k, v)) = item else { continue };
            if v.kind != CT_FORWARD || want_index.is_some_and(|i| i != v.vip_index) {
                continue;
            }
            let client = SocketAddr::new(key_addr(&k.src, k.family), u16::from_be(k.sport));
            let vaddr = SocketAddr::new(key_addr(&k.dst, k.family), u16::from_be(k.dport));
            let real = match by_id.get(&v.real_id) {
                Some((a, p)) => real_string(*a, if *p == 0 { vaddr.port() } else { *p }),
                None => format!("(removed real #{})", v.real_id),
            };
            out.push(Conn {
                protocol: match k.proto {
                    6 => "tcp",
                    17 => "udp",
                    _ => "?",
                },
                client: client.to_string(),
                vip: vaddr.to_string(),
                real,
            });
        }
        Ok(out)
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

/// The address in a map key.
pub fn key_addr(b: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// Creates the pin directory; it must be on bpffs.
fn prepare_pin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the pin directory {}", dir.display()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("pin path has a NUL byte")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF file system (mount one: mount -t bpf bpf /sys/fs/bpf)",
            dir.display()
        );
    }
    Ok(())
}

/// Removes what `lb` pinned under `dir`: unpinning the links detaches the
/// program from their interfaces; the maps (conntrack included) go with
/// the last reference. Returns the names removed.
pub fn cleanup_pinned(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Links first, so the program stops before its maps go.
    names.sort_by_key(|n| (!n.starts_with("link_"), n.clone()));
    for name in names {
        if !(name.starts_with("link_") || name.starts_with("map_")) {
            warn!("{}: leaving {name}, not ours", dir.display());
            continue;
        }
        let path = dir.join(&name);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed.push(name);
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        warn!("{}: not removed: {e}", dir.display());
    }
    Ok(removed)
}

/// `addr:port` / `[addr]:port`.
pub fn real_string(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The Maglev ring of a VIP as configured (every real at its weight): the
/// ring `apply` installs, slot → index into `vip.reals`.
pub fn vip_ring(vip: &Vip) -> Vec<u32> {
    let backends: Vec<maglev::Backend> = vip
        .reals
        .iter()
        .map(|r| maglev::Backend {
            id: real_identity(r.address, r.port),
            weight: r.weight,
        })
        .collect();
    maglev::build(&backends, vip.ring_size)
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use lb_common::{flow_hash_seeded, DEFAULT_HASH_SEED};

    use super::*;
    use crate::{config::Config, packet::*, testbed};

    /// With a seed written to the map, a SYN goes to the real user space
    /// predicts from the same seed (and mostly not to the one the default
    /// seed predicts), for IPv4 and IPv6. Ten reals per VIP on `out1`; only
    /// the first has a neighbour, so the others end in a FIB miss, which
    /// passes the already rewritten packet: the output's destination names
    /// the real either way.
    #[test]
    fn syn_goes_to_the_real_the_seed_predicts() {
        if !testbed::privileged() {
            return;
        }
        let mut text = String::new();
        for vip in ["198.18.100.1", "2001:db8:100::1"] {
            text.push_str(&format!(
                "[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n"
            ));
            for i in 2..12 {
                let real = if vip.contains(':') {
                    format!("2001:db8:11::{i:x}")
                } else {
                    format!("198.18.11.{i}")
                };
                text.push_str(&format!(
                    "[[vip.real]]\naddress = \"{real}\"\nport = 8080\n"
                ));
            }
        }
        let cfg = Config::parse(&text).unwrap();
        let ns = fixture_net().unwrap();
        let path = format!("/run/netns/{}", ns.name);
        let seed = 0x9e37_79b9u32;
        let res = std::thread::spawn(move || -> Result<(usize, usize)> {
            testbed::enter(&path)?;
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            assert_eq!(dp.hash_seed()?, DEFAULT_HASH_SEED);
            dp.set_hash_seed(seed)?;
            assert_eq!(dp.hash_seed()?, seed);
            dp.apply(&cfg.vips)?;
            let in0 = ifindex("in0")?;
            dp.add_tx_port(in0)?;
            dp.add_tx_port(ifindex("out1")?)?;
            let (mut checked, mut other_than_default) = (0, 0);
            for v in &cfg.vips {
                let ring = vip_ring(v);
                let client: IpAddr = if v.address.is_ipv4() {
                    CLIENT4.into()
                } else {
                    CLIENT6.into()
                };
                let predict = |sport: u16, seed: u32| {
                    let k = flow_key(
                        SocketAddr::new(client, sport),
                        SocketAddr::new(v.address, v.port),
                        v.protocol,
                    );
                    v.reals[ring[(flow_hash_seeded(&k, seed) % v.ring_size) as usize] as usize]
                        .address
                };
                for sport in 40000..40040u16 {
                    let syn = Pkt::tcp(client, sport, v.address, v.port, 0x02);
                    let (_, out, _) = test_run(dp.program(PROGRAM)?, in0, &syn.bytes())?;
                    let got: IpAddr = if v.address.is_ipv4() {
                        <[u8; 4]>::try_from(&out[30..34])?.into()
                    } else {
                        <[u8; 16]>::try_from(&out[38..54])?.into()
                    };
                    let want = predict(sport, seed);
                    assert_eq!(got, want, "{client}:{sport} → {}", v.key_string());
                    checked += 1;
                    other_than_default += (want != predict(sport, DEFAULT_HASH_SEED)) as usize;
                }
            }
            Ok((checked, other_than_default))
        })
        .join()
        .expect("test thread")
        .unwrap();
        assert_eq!(res.0, 80);
        // 90% expected with ten reals.
        assert!(
            res.1 >= 56,
            "only {} of 80 flows moved with the seed",
            res.1
        );
    }
}
