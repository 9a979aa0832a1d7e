//! Reading and cutting conntrack entries.

use super::{
    anyhow, map, BpfHashMap, CtValue, Dataplane, FlowKey, HashMap, MapData, Protocol, RealId,
    Result, SocketAddr, VipId, CT_FORWARD,
};
use crate::ident::key_addr;

/// One conntrack entry, for `lb conns`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conn {
    pub protocol: &'static str,
    pub client: String,
    pub vip: String,
    pub real: String,
}

impl Dataplane {
    /// Deletes the conntrack entries of flows of one VIP that are pinned to
    /// one real (the end of a drain): their next packet takes a real from
    /// the ring. Returns how many were deleted.
    pub fn flush_conntrack(&mut self, vip_index: u32, real_id: u32) -> Result<usize> {
        let mut ct: BpfHashMap<&mut MapData, FlowKey, CtValue> =
            map(&mut self.ebpf, "CONNTRACK")?.try_into()?;
        let doomed: Vec<FlowKey> = ct
            .iter()
            .filter_map(std::result::Result::ok)
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

    /// Entries in the conntrack table now, and its size in entries (`2 ×
    /// --conntrack-size`, or the size of the pinned table that was reused).
    /// The count walks the keys, one syscall each (for the metrics scrape;
    /// about 0.3 s for a full default table of 524288 entries; approximate
    /// while entries come and go).
    pub fn conntrack_usage(&self) -> Result<(u64, u64)> {
        let m = self
            .ebpf
            .map("CONNTRACK")
            .ok_or_else(|| anyhow!("no CONNTRACK"))?;
        let capacity = match m {
            aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => {
                u64::from(d.info()?.max_entries())
            }
            _ => return Err(anyhow!("CONNTRACK is not a hash map")),
        };
        let ct: BpfHashMap<&MapData, FlowKey, CtValue> = m.try_into()?;
        // Bounded: a walk that restarts (its key evicted meanwhile) cannot
        // run on.
        let entries = ct.keys().take(capacity as usize).flatten().count() as u64;
        Ok((entries, capacity))
    }

    /// Up to `limit` conntrack entries, optionally of one VIP only, among the
    /// first [`Self::CONNS_SCAN_MAX`] entries of the table.
    pub fn conns(&self, vip: Option<VipId>, limit: usize) -> Result<Vec<Conn>> {
        let ct: BpfHashMap<&MapData, FlowKey, CtValue> = self
            .ebpf
            .map("CONNTRACK")
            .ok_or_else(|| anyhow!("no CONNTRACK"))?
            .try_into()?;
        let by_id: HashMap<u32, RealId> = self.reals.iter().map(|(k, v)| (*v, *k)).collect();
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
            let (Some(src), Some(dst)) = (key_addr(&k.src, k.family), key_addr(&k.dst, k.family))
            else {
                continue;
            };
            let client = SocketAddr::new(src, u16::from_be(k.sport));
            let vaddr = SocketAddr::new(dst, u16::from_be(k.dport));
            let real = match by_id.get(&v.real_id) {
                Some(r) if r.port == 0 => RealId::new(r.address, vaddr.port()).to_string(),
                Some(r) => r.to_string(),
                None => format!("(removed real #{})", v.real_id),
            };
            out.push(Conn {
                protocol: Protocol::from_ip_proto(k.proto).map_or("?", Protocol::as_str),
                client: client.to_string(),
                vip: vaddr.to_string(),
                real,
            });
        }
        Ok(out)
    }
}
