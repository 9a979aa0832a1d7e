//! The XDP data plane from user space: load the embedded object, attach it,
//! keep its maps in step with the config, read its counters.
//!
//! Map sync is a diff: VIP indexes and real ids are stable across applies, a
//! VIP's new ring is written into its spare ring slot and then published by
//! one update of the VIP entry, so the data path never sees a half-written
//! ring and flows of untouched VIPs are not disturbed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
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
    stat, Counters, CtValue, EncapSource, FlowKey, RealDef, SnatPool, VipKey, VipMeta, CT_FORWARD,
    MAX_REALS, MAX_VIPS, REAL_F_VALID, RING_STRIDE, VIP_F_ADDR_ONLY, VIP_F_ICMP_ECHO,
};
use log::{info, warn};

mod conntrack;
mod load;
mod stats;

/// Interface index by name (the data plane attaches and redirects by index).
pub use super::neighbours::ifindex;
pub use conntrack::Conn;
pub(crate) use load::explain;
pub use load::{cleanup_pinned, AttachMode, LoadOptions, PINNED_MAPS};
pub use stats::{Snapshot, Totals};

use crate::{
    ident::{addr_bytes, key_addr, Protocol, RealId, VipId},
    l4::{
        config::{encap_host_mask, EncapSources, Mode, Vip},
        maglev::{self, vip_ring},
        neighbours,
    },
};

/// The XDP object, built from `lb-ebpf` and embedded at compile time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// Name of the balancing program in the object.
pub const PROGRAM: &str = "lb_xdp";

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

#[derive(Debug, Clone)]
struct VipState {
    index: u32,
    live_slot: u32,
    ring: Vec<u32>,
    ring_size: u32,
    /// The data plane's `MODE_*` and GUE port (see `Mode::wire`).
    mode: (u8, u16),
}

/// A loaded (and possibly attached) data plane.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Vec<(String, u32, AttachMode)>,
    vips: HashMap<VipId, VipState>,
    reals: HashMap<RealId, u32>,
    next_real: u32,
    applied: Vec<Vip>,
    /// Addresses with a VIP address marker in the map.
    markers: HashSet<IpAddr>,
    pin_path: Option<PathBuf>,
    /// VIPs and reals found in pinned maps at load.
    restored: (usize, usize),
    /// Installs managed neighbour entries off the caller's thread.
    neighbours: neighbours::Resolver,
    /// The config's `encap_source`.
    encap_sources: EncapSources,
    /// What `ENCAP_SOURCE` holds, per family (v4, v6).
    encap_written: [Option<EncapSource>; 2],
    /// What `SNAT_POOLS` holds, by VIP index (FullNAT VIPs).
    snat_written: HashMap<u32, SnatPool>,
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no map `{name}`"))
}

impl Dataplane {
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
    /// Sets how many ICMP messages (echo replies) the program may send
    /// per second per CPU (`icmp_rate_limit`; 0: no limit).
    pub fn set_icmp_rate(&mut self, rate: u32) -> Result<()> {
        self.set_icmp_conf(lb_common::ICMP_CONF_RATE, rate)
    }

    /// Turns the relay of ICMP errors to the reals on or off (`icmp_relay`).
    pub fn set_icmp_relay(&mut self, on: bool) -> Result<()> {
        self.set_icmp_conf(lb_common::ICMP_CONF_RELAY_OFF, u32::from(!on))
    }

    fn set_icmp_conf(&mut self, slot: u32, value: u32) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = map(&mut self.ebpf, "ICMP_CONF")?.try_into()?;
        m.set(slot, value, 0)
            .map_err(|e| anyhow!("cannot write ICMP_CONF: {e}"))?;
        Ok(())
    }

    pub fn hash_seed(&self) -> Result<u32> {
        let m: Array<&MapData, u32> = self
            .ebpf
            .map("HASH_SEED")
            .ok_or_else(|| anyhow!("the XDP object has no map `HASH_SEED`"))?
            .try_into()?;
        Ok(m.get(&0, 0)?)
    }

    /// The VIPs as last applied.
    pub fn applied(&self) -> &[Vip] {
        &self.applied
    }

    /// The real id a real has in the data plane.
    pub fn real_id(&self, real: &RealId) -> Option<u32> {
        self.reals.get(real).copied()
    }

    /// The live ring of a VIP, as real ids.
    pub fn ring(&self, vip: &VipId) -> Option<&[u32]> {
        self.vips.get(vip).map(|s| s.ring.as_slice())
    }

    /// Makes the maps match `vips`, touching only what changed.
    pub fn apply(&mut self, vips: &[Vip]) -> Result<()> {
        if vips.len() > MAX_VIPS as usize {
            bail!("{} VIPs; the data plane holds {MAX_VIPS}", vips.len());
        }
        // Real ids: keep existing ones, give new reals fresh ids.
        let wanted_reals: HashSet<RealId> = vips
            .iter()
            .flat_map(|v| v.reals.iter().map(super::config::Real::id))
            .collect();
        let removed_reals: Vec<(RealId, u32)> = self
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
            for (real, id) in &new_reals {
                let (addr, family) = addr_bytes(real.address);
                let def = RealDef {
                    addr,
                    port: real.port.to_be(),
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
        let wanted_vips: HashSet<VipId> = vips.iter().map(Vip::id).collect();
        let removed_vips: Vec<VipId> = self
            .vips
            .keys()
            .filter(|k| !wanted_vips.contains(k))
            .copied()
            .collect();
        for key in &removed_vips {
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            let _ = m.remove(&key.map_key());
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
            let key = vip.id();
            let table = vip_ring(vip);
            let ring: Vec<u32> = table
                .iter()
                .map(|&i| {
                    if i == maglev::EMPTY {
                        0
                    } else {
                        let r = &vip.reals[i as usize];
                        self.reals[&r.id()]
                    }
                })
                .collect();
            let mode = vip.mode.wire();
            // A VIP whose mode changes gets a new index: its conntrack
            // entries carry the old mode and must not be used with the new.
            let mut retired = None;
            let (index, slot) = match self.vips.get(&key) {
                Some(s) if s.mode != mode => {
                    retired = Some(s.index);
                    let index = free_idx
                        .next()
                        .ok_or_else(|| anyhow!("no free VIP index"))?;
                    self.zero_counters("VIP_STATS", index)?;
                    (index, 0)
                }
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
                mode: mode.0,
                gue_port: mode.1.to_be(),
            };
            let vkey = key.map_key();
            {
                let mut keys: Array<&mut MapData, VipKey> =
                    map(&mut self.ebpf, "VIP_KEYS")?.try_into()?;
                keys.set(index, vkey, 0)?;
            }
            let mut m: BpfHashMap<&mut MapData, VipKey, VipMeta> =
                map(&mut self.ebpf, "VIPS")?.try_into()?;
            m.insert(vkey, meta, 0)?;
            if let Some(old) = retired {
                let mut keys: Array<&mut MapData, VipKey> =
                    map(&mut self.ebpf, "VIP_KEYS")?.try_into()?;
                keys.set(old, VipKey::default(), 0)?;
                info!(
                    "vip {key}: mode now {}; its established flows start again",
                    vip.mode.describe()
                );
            }
            self.vips.insert(
                key,
                VipState {
                    index,
                    live_slot: slot,
                    ring,
                    ring_size: vip.ring_size,
                    mode,
                },
            );
        }
        self.write_encap_sources(vips)?;
        self.write_snat_pools(vips)?;

        // Address markers: one per VIP address.
        {
            let addrs: HashSet<IpAddr> = vips.iter().map(|v| v.address).collect();
            let echo: HashSet<IpAddr> = vips
                .iter()
                .filter(|v| v.icmp_echo)
                .map(|v| v.address)
                .collect();
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
                        flags: VIP_F_ADDR_ONLY | if echo.contains(a) { VIP_F_ICMP_ECHO } else { 0 },
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

    /// Writes `SNAT_POOLS` for the FullNAT VIPs (and clears the slots of
    /// VIP indexes that no longer have one). Established flows keep the
    /// address and port they have; new flows take from the new pool.
    fn write_snat_pools(&mut self, vips: &[Vip]) -> Result<()> {
        let mut wanted: HashMap<u32, SnatPool> = HashMap::new();
        for v in vips.iter().filter(|v| v.mode == Mode::FullNat) {
            let Some(state) = self.vips.get(&v.id()) else {
                continue;
            };
            let mut pool = SnatPool {
                port_min: v.snat_ports.0,
                // A full range (1-65535) is 65535 ports, which fits.
                port_count: v.snat_ports.1 - v.snat_ports.0 + 1,
                idle_ticks: v
                    .snat_idle
                    .map_or(0, |d| lb_common::ticks_of_ms(d.as_millis() as u64)),
                closed_ticks: v
                    .snat_closed
                    .map_or(0, |d| lb_common::ticks_of_ms(d.as_millis() as u64)),
                ..SnatPool::default()
            };
            for (slot, a) in v.snat.iter().take(lb_common::MAX_SNAT_ADDRS).enumerate() {
                pool.addrs[slot] = addr_bytes(*a).0;
                pool.count += 1;
            }
            wanted.insert(state.index, pool);
        }
        if wanted == self.snat_written {
            return Ok(());
        }
        let mut m: Array<&mut MapData, SnatPool> = map(&mut self.ebpf, "SNAT_POOLS")?.try_into()?;
        for (index, pool) in &wanted {
            if self.snat_written.get(index) != Some(pool) {
                m.set(*index, *pool, 0)?;
            }
        }
        for index in self.snat_written.keys().filter(|i| !wanted.contains_key(i)) {
            m.set(*index, SnatPool::default(), 0)?;
        }
        self.snat_written = wanted;
        Ok(())
    }

    /// Sets the config's `encap_source`; written at the next [`apply`].
    ///
    /// [`apply`]: Dataplane::apply
    pub fn set_encap_sources(&mut self, sources: EncapSources) {
        self.encap_sources = sources;
    }

    /// The outer source of DSR packets per family, as the data path uses
    /// it: the address and its host bits (0 when fixed).
    pub fn encap_sources(&self) -> Vec<(IpAddr, u32)> {
        self.encap_written
            .iter()
            .flatten()
            .filter_map(|e| {
                key_addr(&e.addr, e.family)
                    .map(|a| (a, u32::from_be_bytes(e.host_mask.to_ne_bytes())))
            })
            .collect()
    }

    /// Writes `ENCAP_SOURCE` for the families DSR reals have: the
    /// configured prefix, or else this node's route source towards the
    /// first such real (`ip route get`), fixed for every flow.
    fn write_encap_sources(&mut self, vips: &[Vip]) -> Result<()> {
        let mut wanted: [Option<EncapSource>; 2] = [None, None];
        for (slot, v4) in [(0usize, true), (1, false)] {
            let first = vips
                .iter()
                .filter(|v| matches!(v.mode, Mode::Dsr(_)))
                .flat_map(|v| v.reals.iter())
                .map(|r| r.address)
                .find(|a| a.is_ipv4() == v4);
            let Some(real) = first else { continue };
            let configured = if v4 {
                self.encap_sources.v4.map(|(a, l)| (IpAddr::V4(a), l))
            } else {
                self.encap_sources.v6.map(|(a, l)| (IpAddr::V6(a), l))
            };
            let (addr, mask) = if let Some((a, len)) = configured {
                (a, encap_host_mask(a, len))
            } else {
                let mut nl = neighbours::Netlink::open()
                    .map_err(|e| anyhow!("looking up a DSR encap source: {e}"))?;
                let source = nl.route_source(real).map_err(|e| {
                    anyhow!("no source address towards DSR real {real} ({e}); set `encap_source`")
                })?;
                (source, 0)
            };
            let (bytes, family) = addr_bytes(addr);
            wanted[slot] = Some(EncapSource {
                addr: bytes,
                host_mask: mask,
                family,
                _pad: [0; 3],
            });
        }
        if wanted != self.encap_written {
            let mut m: Array<&mut MapData, EncapSource> =
                map(&mut self.ebpf, "ENCAP_SOURCE")?.try_into()?;
            for (slot, e) in wanted.iter().enumerate() {
                m.set(slot as u32, e.unwrap_or_default(), 0)?;
            }
            for e in wanted.iter().flatten() {
                if let Some(a) = key_addr(&e.addr, e.family) {
                    info!(
                        "DSR outer source {a} (host bits {:#x})",
                        u32::from_be_bytes(e.host_mask.to_ne_bytes())
                    );
                }
            }
            self.encap_written = wanted;
        }
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
    /// Asks the neighbour resolver to install managed neighbour entries for
    /// the next hops of the applied reals and the gateways of the attached
    /// interfaces, so `bpf_fib_lookup` finds them before the first packet.
    /// Returns at once (the resolver works on its own thread); the number is
    /// the request's generation, for [`neighbours::Resolver::wait`].
    pub fn resolve_neighbours(&self) -> u64 {
        let mut seen = HashSet::new();
        let reals = self
            .applied
            .iter()
            .flat_map(|v| v.reals.iter().map(|r| r.address))
            .filter(|a| seen.insert(*a))
            .collect();
        let interfaces = self.attached.iter().map(|(i, _, _)| i.clone()).collect();
        self.neighbours.request(reals, interfaces)
    }

    /// The neighbour resolver of this data plane.
    pub fn neighbours(&self) -> &neighbours::Resolver {
        &self.neighbours
    }

    pub fn vip_index(&self, vip: &VipId) -> Option<u32> {
        self.vips.get(vip).map(|s| s.index)
    }

    /// Most conntrack entries one dump looks at. Every entry costs a system
    /// call and the caller holds the control lock, which health changes
    /// need, so a dump filtered to a quiet VIP must not walk a full table.
    pub const CONNS_SCAN_MAX: usize = 65_536;

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
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use lb_common::{flow_hash_seeded, DEFAULT_HASH_SEED};

    use super::*;
    use crate::{config::Config, testbed, testbed::packet::*};

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
                    assert_eq!(got, want, "{client}:{sport} → {}", v.id());
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
