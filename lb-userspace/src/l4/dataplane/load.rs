//! Loading the embedded object, pinning, attaching.

use super::{
    anyhow, bail, ifindex, info, map, neighbours, warn, Array, BpfHashMap, Context, Dataplane,
    DevMapHash, Ebpf, EbpfLoader, FdLink, HashMap, HashSet, MapData, Path, PathBuf, PinnedLink,
    RealDef, RealId, Result, VipId, VipKey, VipMeta, VipState, Xdp, XdpLink, XdpMode, MAX_REALS,
    PROGRAM, REAL_F_VALID, VIP_F_ADDR_ONLY, XDP_OBJECT,
};
use crate::ident::key_addr;

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

/// Turns a load/attach failure into one line that names the cause.
pub(crate) fn explain(e: &(dyn std::error::Error + 'static)) -> String {
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
            replace_if_incompatible(name, path)?;
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
            neighbours: neighbours::Resolver::spawn().context("starting the neighbour resolver")?,
            encap_sources: super::EncapSources::default(),
            encap_written: [None, None],
            snat_written: HashMap::new(),
        };
        if !seed_pinned {
            dp.set_hash_seed(lb_common::DEFAULT_HASH_SEED)?;
        }
        if dp.pin_path.is_some() {
            dp.restore().context("reading the pinned maps")?;
        }
        Ok(dp)
    }

    /// Rebuilds the bookkeeping (VIP indexes, live ring slots, real ids)
    /// from maps an earlier `lb` left pinned, so that the next `apply` is a
    /// diff against what the data path is really doing and conntrack
    /// entries keep pointing at the same real ids.
    pub(super) fn restore(&mut self) -> Result<()> {
        let vips: BpfHashMap<&MapData, VipKey, VipMeta> = self
            .ebpf
            .map("VIPS")
            .ok_or_else(|| anyhow!("no VIPS"))?
            .try_into()?;
        for item in &vips {
            let (k, meta) = item?;
            if meta.flags & VIP_F_ADDR_ONLY != 0 {
                if let Some(address) = key_addr(&k.addr, k.family) {
                    self.markers.insert(address);
                }
                continue;
            }
            let Some(vip) = VipId::from_map_key(&k) else {
                continue;
            };
            self.vips.insert(
                vip,
                VipState {
                    index: meta.vip_index,
                    live_slot: meta.ring_slot.saturating_sub(meta.vip_index * 2),
                    // Unknown: the next apply rewrites the spare slot and
                    // swaps, which is harmless when the ring is the same.
                    ring: Vec::new(),
                    ring_size: meta.ring_size,
                    mode: (meta.mode, u16::from_be(meta.gue_port)),
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
                if let Some(address) = key_addr(&r.addr, r.family) {
                    self.reals
                        .insert(RealId::new(address, u16::from_be(r.port)), id);
                }
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

    /// Forwards pending XDP log records to the host log.
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }
}

/// Creates the pin directory; it must be on bpffs.
/// Key and value sizes this build's maps have, for the pinned ones whose
/// layout is ours (`TX_PORTS`' is the kernel's).
fn pinned_layout(name: &str) -> Option<(usize, usize)> {
    use lb_common::{Counters, CtValue, FlowKey, RealDef, VipKey, VipMeta};
    use std::mem::size_of;
    Some(match name {
        "VIPS" => (size_of::<VipKey>(), size_of::<VipMeta>()),
        "RINGS" | "HASH_SEED" | "SKB_IFACES" => (4, 4),
        "REALS" => (4, size_of::<RealDef>()),
        "CONNTRACK" => (size_of::<FlowKey>(), size_of::<CtValue>()),
        "VIP_KEYS" => (4, size_of::<VipKey>()),
        "VIP_STATS" | "REAL_STATS" => (4, size_of::<Counters>()),
        "GLOBAL_STATS" => (4, 8),
        _ => return None,
    })
}

/// A map an earlier `lb` pinned with another key or value size (an
/// upgrade that changed its layout) cannot be shared with this build's
/// program: its pin is removed so that a new map is made and pinned. The
/// old program keeps its own map until its link is handed over. Losing
/// `CONNTRACK` this way re-balances established flows by the ring (the
/// same real while the ring is unchanged; NAT replies are translated again
/// after the client's next packet).
fn replace_if_incompatible(name: &str, path: &Path) -> Result<()> {
    let Some((key, value)) = pinned_layout(name) else {
        return Ok(());
    };
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(path)
        .map_err(|e| anyhow!("cannot read the pinned map {}: {e}", path.display()))?;
    let (k, v) = (info.key_size() as usize, info.value_size() as usize);
    if (k, v) != (key, value) {
        warn!(
            "pinned map {name} was made by another lb version (key {k} B, value {v} B; this build: {key} B, {value} B): replaced by a new one, its entries are lost"
        );
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the pin {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn prepare_pin_dir(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the pin directory {}", dir.display()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("pin path has a NUL byte")?;
    // SAFETY: statfs is a plain C struct of integers, for which all-zero
    // bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st`
    // is a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
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
        .filter_map(std::result::Result::ok)
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
