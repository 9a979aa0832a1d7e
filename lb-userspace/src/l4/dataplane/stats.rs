//! The data plane's counters.

use super::{
    anyhow, map, stat, BTreeMap, Counters, Dataplane, MapData, PerCpuArray, PerCpuValues, Result,
};

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
    /// Per VIP (by its [`VipId`] text form), with its reals (`addr:port`).
    pub vips: BTreeMap<String, (Totals, BTreeMap<String, Totals>)>,
    /// Global counters by name.
    pub global: BTreeMap<&'static str, u64>,
}

impl Dataplane {
    pub(super) fn zero_counters(&mut self, map_name: &str, index: u32) -> Result<()> {
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
            let Some(state) = self.vips.get(&vip.id()) else {
                continue;
            };
            let vt = sum(vstats.get(&state.index, 0)?);
            let mut reals = BTreeMap::new();
            for r in &vip.reals {
                if let Some(id) = self.reals.get(&r.id()) {
                    reals.insert(r.id().to_string(), sum(rstats.get(id, 0)?));
                }
            }
            snap.vips.insert(vip.id().to_string(), (vt, reals));
        }
        for (i, name) in stat::NAMES.iter().enumerate() {
            let v: u64 = gstats.get(&(i as u32), 0)?.iter().sum();
            snap.global.insert(name, v);
        }
        Ok(snap)
    }
}
