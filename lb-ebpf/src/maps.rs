//! Every map of the production object (`lb-xdp`), in one place. The control plane finds them
//! by name (`lb-userspace/src/dataplane.rs`); keys and values are the
//! `#[repr(C)]` types of `lb-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    stat, Counters, CsumScratch, CtValue, EncapSource, FlowKey, IcmpBucket, NextHop, RealDef,
    ReplyHopKey, SnatPool, VipKey, VipMeta, CONNTRACK_SIZE, MAX_REALS, MAX_TX_PORTS, MAX_VIPS,
    REPLY_HOPS_SIZE, RING_SLOTS, RING_STRIDE,
};

#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(RING_SLOTS * RING_STRIDE, 0);

#[map]
pub static REALS: Array<RealDef> = Array::with_max_entries(MAX_REALS, 0);

/// Slot 0: the deployment's flow hash seed (`hash_seed`), written by the
/// control plane before the program is attached.
#[map]
pub static HASH_SEED: Array<u32> = Array::with_max_entries(1, 0);

/// Both directions of every balanced flow (see `CtValue`).
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtValue> =
    LruHashMap::with_max_entries(CONNTRACK_SIZE * 2, 0);

/// The key of the VIP that has each VIP index (all zero: no VIP). A
/// conntrack entry counts only while its VIP index still belongs to the VIP
/// the packet is addressed to, so entries of a removed VIP are not used
/// (even once the index is reused) without flushing the table.
#[map]
pub static VIP_KEYS: Array<VipKey> = Array::with_max_entries(MAX_VIPS, 0);

#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Next hop of each real, per CPU (see `forward::forward`).
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Next hop of replies to each client (see `forward::forward`). Shared by
/// the CPUs (a per-CPU map would hold a copy per CPU of every client);
/// entries are replaced whole, never written in place, so a reader on
/// another CPU sees the old or the new one (short of the rare immediate
/// reuse of a replaced element that preallocated maps allow, as for
/// conntrack).
#[map]
pub static REPLY_HOPS: LruHashMap<ReplyHopKey, NextHop> =
    LruHashMap::with_max_entries(REPLY_HOPS_SIZE, 0);

/// Egress devices, keyed by ifindex: every interface `lb` is attached to.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Interfaces `lb` is attached to in generic (skb) mode, by ifindex. There a
/// frame keeps its socket buffer, and with it a partial checksum's mark,
/// whatever the verdict (see `nat::settle`).
#[map]
pub static SKB_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TX_PORTS, 0);

/// Scratch space for completing partial checksums (see `segment::sum`).
#[map]
pub static CSUM_SCRATCH: PerCpuArray<CsumScratch> = PerCpuArray::with_max_entries(1, 0);

/// Outer source addresses of DSR packets: index 0 IPv4, 1 IPv6 (see
/// `EncapSource`), written by the control plane.
#[map]
pub static ENCAP_SOURCE: Array<EncapSource> = Array::with_max_entries(2, 0);

/// SNAT addresses and ports of each FullNAT VIP, by VIP index (see
/// `SnatPool`), written by the control plane.
#[map]
pub static SNAT_POOLS: Array<SnatPool> = Array::with_max_entries(MAX_VIPS, 0);

/// ICMP settings, written by the control plane: slot `ICMP_CONF_RATE`,
/// the messages the LB may answer or relay per second per CPU
/// (`icmp_rate_limit`; 0 = unlimited); slot `ICMP_CONF_RELAY_OFF`, 1 when
/// `icmp_relay = false`.
#[map]
pub static ICMP_CONF: Array<u32> = Array::with_max_entries(2, 0);

/// Each CPU's token bucket for them (see `icmp::allow`).
#[map]
pub static ICMP_BUCKET: PerCpuArray<IcmpBucket> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's translation of the ICMP error it is relaying (see
/// `icmp::Translation`).
#[map]
pub static ICMP_SCRATCH: PerCpuArray<crate::icmp::Translation> =
    PerCpuArray::with_max_entries(1, 0);
