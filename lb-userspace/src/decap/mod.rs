//! The decap role of a DSR real (`[decap]`): `lb_decap` attached to the
//! configured interfaces strips the tunnel headers of packets addressed to
//! this host and passes the client's packet up the stack, so the real needs
//! no ipip, ip6_tunnel or fou module. The VIP goes on the real's loopback
//! (`ip addr add VIP/32 dev lo`); the real answers clients from it.
//!
//! The program only strips packets whose outer destination is one of the
//! host's addresses (`DECAP_ADDRS`); [`Decap::sync_addresses`] keeps that
//! map equal to the host's addresses (at start, on reload, and every few
//! seconds).

pub mod config;

use std::{collections::HashSet, net::IpAddr};

use anyhow::{anyhow, bail, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use lb_common::{decap_stat, DecapAddr, MAX_DECAP_ADDRS};
use log::{info, warn};
use serde::Serialize;

pub use config::{DecapConfig, RawDecap};

use crate::{ident::addr_bytes, l4::neighbours::ifindex};

/// The decap object, built from `lb-ebpf` (`src/decap.rs`).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// Name of the program in the object.
pub const PROGRAM: &str = "lb_decap";

/// The loaded and attached decap program.
pub struct Decap {
    ebpf: Ebpf,
    config: DecapConfig,
    attached: Vec<(String, &'static str)>,
    addresses: HashSet<IpAddr>,
}

/// What `lb status` shows of the role.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DecapStatus {
    /// Interface and attach mode.
    pub interfaces: Vec<(String, String)>,
    pub gue_port: u16,
    /// The host addresses tunnel packets are stripped for.
    pub addresses: Vec<IpAddr>,
    /// Counter name and value (`lb_common::decap_stat`).
    pub counters: Vec<(String, u64)>,
}

impl Decap {
    /// Loads the program, fills its maps and attaches it to every
    /// configured interface (driver mode, else generic with a warning).
    pub fn start(config: &DecapConfig) -> Result<Decap> {
        if DECAP_OBJECT.is_empty() {
            bail!("this lb binary was built without its XDP objects (AYA_BUILD_SKIP was set)");
        }
        let ebpf = Ebpf::load(DECAP_OBJECT).map_err(|e| {
            anyhow!(
                "cannot load the decap object: {}",
                crate::l4::dataplane::explain(&e)
            )
        })?;
        let mut d = Decap {
            ebpf,
            config: config.clone(),
            attached: Vec::new(),
            addresses: HashSet::new(),
        };
        d.set_gue_port(config.gue_port)?;
        d.sync_addresses()?;
        warn_arp_sysctls();
        for iface in &config.interfaces {
            d.attach(iface)?;
        }
        Ok(d)
    }

    /// Applies a reloaded `[decap]`: the GUE port now; a changed interface
    /// list takes effect at the next start (as `interfaces` does).
    pub fn reload(&mut self, config: &DecapConfig) -> Result<()> {
        if config.interfaces != self.config.interfaces {
            warn!("reload: `decap.interfaces` changed; it takes effect at the next start");
        }
        self.set_gue_port(config.gue_port)?;
        self.config.gue_port = config.gue_port;
        self.sync_addresses()
    }

    fn set_gue_port(&mut self, port: u16) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = self.map("DECAP_GUE_PORT")?.try_into()?;
        m.set(0, u32::from(port.to_be()), 0)?;
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the decap object has no map `{name}`"))
    }

    fn attach(&mut self, iface: &str) -> Result<()> {
        let index = ifindex(iface)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("no program `{PROGRAM}`"))?
            .try_into()?;
        if self.attached.is_empty() {
            prog.load()
                .map_err(|e| anyhow!("the kernel refused `{PROGRAM}`: {e}"))?;
        }
        let mode = match prog.attach_to_if_index(index, XdpMode::Driver) {
            Ok(_) => "driver",
            Err(e) => {
                let driver_err = crate::l4::dataplane::explain(&e);
                prog.attach_to_if_index(index, XdpMode::Skb).map_err(|e| {
                    anyhow!(
                        "cannot attach the decap program to {iface}: {}",
                        crate::l4::dataplane::explain(&e)
                    )
                })?;
                warn!("{iface}: no native XDP ({driver_err}); decap attached in generic mode");
                "generic"
            }
        };
        info!(
            "{iface}: decap attached ({mode} mode), GUE port {}",
            self.config.gue_port
        );
        self.attached.push((iface.to_string(), mode));
        Ok(())
    }

    /// The loaded program (for test runs).
    pub fn program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(PROGRAM)
            .ok_or_else(|| anyhow!("no program `{PROGRAM}`"))?
            .try_into()
            .map_err(Into::into)
    }

    /// Makes `DECAP_ADDRS` equal to this host's addresses.
    pub fn sync_addresses(&mut self) -> Result<()> {
        let now = host_addresses()?;
        if now == self.addresses {
            return Ok(());
        }
        if now.len() > MAX_DECAP_ADDRS as usize {
            bail!(
                "this host has {} addresses; the decap program holds {MAX_DECAP_ADDRS}",
                now.len()
            );
        }
        let key = |a: &IpAddr| {
            let (addr, family) = addr_bytes(*a);
            DecapAddr {
                addr,
                family,
                _pad: [0; 3],
            }
        };
        let old = std::mem::take(&mut self.addresses);
        let mut m: BpfHashMap<&mut MapData, DecapAddr, u8> = self.map("DECAP_ADDRS")?.try_into()?;
        for a in now.difference(&old) {
            m.insert(key(a), 1, 0)?;
        }
        for a in old.difference(&now) {
            let _ = m.remove(&key(a));
        }
        self.addresses = now;
        Ok(())
    }

    /// Counters summed over the CPUs, in `decap_stat` order.
    pub fn counters(&self) -> Result<Vec<(String, u64)>> {
        let m: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map("DECAP_STATS")
            .ok_or_else(|| anyhow!("no DECAP_STATS"))?
            .try_into()?;
        let mut out = Vec::new();
        for (i, name) in decap_stat::NAMES.iter().enumerate() {
            let v = m.get(&(i as u32), 0)?;
            out.push(((*name).to_string(), v.iter().sum()));
        }
        Ok(out)
    }

    pub fn status(&self) -> Result<DecapStatus> {
        let mut addresses: Vec<IpAddr> = self.addresses.iter().copied().collect();
        addresses.sort();
        Ok(DecapStatus {
            interfaces: self
                .attached
                .iter()
                .map(|(i, m)| (i.clone(), (*m).to_string()))
                .collect(),
            gue_port: self.config.gue_port,
            addresses,
            counters: self.counters()?,
        })
    }
}

/// A DSR real holds the VIPs on `lo`; with Linux's defaults it answers ARP
/// for them on every interface and uses them as the source of its own ARP
/// requests, so neighbours learn the VIP at the real's MAC. LVS-DR reals
/// set `arp_ignore = 1` and `arp_announce = 2`; say so when they are not.
fn warn_arp_sysctls() {
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/all/{key}"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    for (key, want) in [("arp_ignore", 1), ("arp_announce", 2)] {
        if let Some(v) = read(key) {
            if v < want {
                warn!(
                    "decap: net.ipv4.conf.all.{key} is {v}; set it to {want} so this real does not announce the VIPs on its loopback over ARP (README, DSR)"
                );
            }
        }
    }
}

/// Every address of this host's interfaces (`getifaddrs`), loopback's
/// included: the VIP on `lo` is not a tunnel endpoint, but an operator
/// may well address tunnels to a loopback service address.
fn host_addresses() -> Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` fills `head` with a list it allocated, freed
    // below with `freeifaddrs`; nothing else holds it.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(anyhow!("getifaddrs: {}", std::io::Error::last_os_error()));
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list `getifaddrs` returned, alive until
        // `freeifaddrs`.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr whose
            // family tells its real type and size.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family says it is a `sockaddr_in`; read
                // unaligned, as a `sockaddr` promises less alignment.
                let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
                out.insert(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: as for IPv4, a `sockaddr_in6`.
                let sin6 = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list `getifaddrs` returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
