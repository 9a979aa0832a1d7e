//! Neighbour entries for the reals and gateways, so `bpf_fib_lookup` finds
//! them before the first packet.

use std::{collections::HashSet, net::IpAddr, process::Command};

use anyhow::{anyhow, bail, Context, Result};
use log::warn;

/// Resolves the next hop of every real in `reals` (and the gateways of the
/// routes through `interfaces`) as kernel-managed neighbour entries, so that
/// `bpf_fib_lookup` finds them before the first packet; the kernel keeps
/// managed entries fresh.
pub fn resolve_all(reals: &HashSet<IpAddr>, interfaces: &[&str]) {
    for t in reals {
        if let Err(e) = resolve_neighbour(*t) {
            warn!("neighbour of real {t}: {e:#}");
        }
    }
    for iface in interfaces {
        for gw in gateways(iface) {
            if let Err(e) = resolve_neighbour(gw) {
                warn!("gateway {gw} on {iface}: {e:#}");
            }
        }
    }
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
pub(super) fn route_to(addr: IpAddr) -> Result<(String, IpAddr)> {
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

pub(super) fn resolve_neighbour(addr: IpAddr) -> Result<()> {
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

pub(super) fn gateways(iface: &str) -> Vec<IpAddr> {
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
