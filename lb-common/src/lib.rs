//! Types shared by the XDP program (`lb-ebpf`) and the control plane
//! (`lb-userspace`): map keys and values, map sizes, stat indexes and the flow
//! hash. Every struct is `#[repr(C)]` with explicit padding so both sides see
//! the same bytes; keys must be zero-initialised before use.
//!
//! Addresses are stored as 16 bytes in network order. An IPv4 address sits
//! in the first four bytes, the rest zero, and `family` tells which it is.
#![no_std]

/// Most VIPs the data plane holds (the size of the VIP stats array).
pub const MAX_VIPS: u32 = 64;
/// Size of the real table. Id 0 is reserved for "no real".
pub const MAX_REALS: u32 = 4096;
/// Distance between two rings in the ring array, and the largest ring.
pub const RING_STRIDE: u32 = 65537;
/// Ring slots: each VIP has two, the live one and the one being rebuilt.
pub const RING_SLOTS: u32 = MAX_VIPS * 2;
/// Largest real weight.
pub const MAX_WEIGHT: u32 = 65535;
/// Default number of conntrack entries (each direction has its own map).
pub const CONNTRACK_SIZE: u32 = 262_144;
/// Entries in the egress device map (keyed by ifindex), and in the map of
/// interfaces attached in generic (skb) mode.
pub const MAX_TX_PORTS: u32 = 256;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `VipMeta.flags`: the entry only marks the address as a VIP address (port 0,
/// protocol 0); it balances nothing, but lets the program count and drop
/// malformed traffic for that address instead of passing it.
pub const VIP_F_ADDR_ONLY: u32 = 1;

/// `RealDef.flags`: the slot holds a configured real.
pub const REAL_F_VALID: u32 = 1;

/// Key of the VIP map: (address, port, protocol). Port 0 is an all-ports VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into the VIP stats array.
    pub vip_index: u32,
    /// Which ring slot (0..RING_SLOTS) is live; ring starts at slot * RING_STRIDE.
    pub ring_slot: u32,
    /// Prime ring size, at most RING_STRIDE.
    pub ring_size: u32,
    pub flags: u32,
}

/// A real server, indexed by real id in the real array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RealDef {
    pub addr: [u8; 16],
    /// Network byte order; 0 keeps the client's destination port.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub flags: u32,
}

/// A 5-tuple as it appears in a packet. Used for both conntrack directions.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Conntrack value. One LRU map holds both directions of a balanced flow,
/// so any packet of an established flow costs one lookup: the client's
/// tuple (client → VIP, kind [`CT_FORWARD`]) and the reply's tuple
/// (real → client, kind [`CT_REPLY`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub real_id: u32,
    pub vip_index: u32,
    /// [`CT_FORWARD`] or [`CT_REPLY`].
    pub kind: u8,
    pub _pad: u8,
    /// Reply entries: the VIP port the reply's source is rewritten to
    /// (network byte order).
    pub vip_port: u16,
    /// Reply entries: the VIP address the reply's source is rewritten to.
    pub vip_addr: [u8; 16],
    /// The coarse clock tick (2^24 ns, about 17 ms) at which a packet of
    /// this entry last looked up the flow's other entry.
    pub checked: u32,
}

/// [`CtValue::kind`] of a client → VIP entry.
pub const CT_FORWARD: u8 = 1;
/// [`CtValue::kind`] of a real → client entry.
pub const CT_REPLY: u8 = 2;

/// Per-CPU next-hop cache entry of a real (indexed by real id): what the
/// last successful `bpf_fib_lookup` towards the real returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Coarse monotonic time (ns, `bpf_ktime_get_coarse_ns`) after which
    /// the entry must be looked up again.
    pub expires_ns: u64,
    pub ingress: u32,
    pub egress: u32,
    /// Largest IP length the FIB approved for this path (MTU check).
    pub max_len: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 6],
}

/// How long a cached next hop is used before the FIB is asked again.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Key of the next-hop cache of replies (`REPLY_HOPS`): the client
/// a reply goes to, and the device the reply came in on.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplyHopKey {
    pub addr: [u8; 16],
    pub ingress: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Clients whose reply next hop is cached (LRU).
pub const REPLY_HOPS_SIZE: u32 = 65_536;

/// Per-VIP and per-real counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Client → real packets.
    pub packets: u64,
    /// Client → real bytes (whole frames).
    pub bytes: u64,
    /// Flows that took a real from the ring (conntrack misses).
    pub new_flows: u64,
    /// Real → client packets rewritten back to the VIP.
    pub reply_packets: u64,
}

/// Frame the benchmark generator (`gen`) writes before each send: live-frames
/// pages are recycled with whatever the data plane wrote into them.
pub const GEN_FRAME_LEN: usize = 64;

/// 8-aligned, so that `gen` restores a frame with eight 8-byte copies
/// rather than 64 byte-sized ones.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenTemplate {
    pub bytes: [u8; GEN_FRAME_LEN],
}

/// Bytes a partial checksum is completed over per step (the per-CPU
/// scratch buffer `CSUM_SCRATCH`).
pub const CSUM_CHUNK: usize = 512;

/// The XDP program's per-CPU scratch buffer for checksum completion.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsumScratch {
    pub bytes: [u8; CSUM_CHUNK],
}

/// Global counter indexes (per-CPU u64 array `GLOBAL_STATS`).
pub mod stat {
    pub const RX: u32 = 0;
    pub const PASS_NON_VIP: u32 = 1;
    pub const TX: u32 = 2;
    pub const REDIRECT: u32 = 3;
    pub const CT_HIT: u32 = 4;
    pub const CT_MISS: u32 = 5;
    pub const FIB_MISS: u32 = 6;
    pub const FIB_FRAG_NEEDED: u32 = 7;
    pub const PASS_TTL_EXPIRED: u32 = 8;
    pub const REPLY_NAT: u32 = 9;
    pub const DROP_TRUNC_ETH: u32 = 10;
    pub const DROP_TRUNC_VLAN: u32 = 11;
    pub const DROP_TRUNC_IP: u32 = 12;
    pub const DROP_BAD_IHL: u32 = 13;
    pub const DROP_BAD_LEN: u32 = 14;
    pub const DROP_TRUNC_L4: u32 = 15;
    pub const DROP_IP_OPTIONS: u32 = 16;
    pub const DROP_FRAGMENT: u32 = 17;
    pub const DROP_IPV6_EXT: u32 = 18;
    pub const DROP_NO_REAL: u32 = 19;
    pub const PASS_NO_TX_PORT: u32 = 20;
    pub const PASS_VIP_OTHER_PROTO: u32 = 21;
    pub const DROP_BAD_VERSION: u32 = 22;
    pub const FIB_LOOKUP: u32 = 23;
    pub const NEXT_HOP_CACHED: u32 = 24;
    /// A partial (offload) L4 checksum completed over the segment, because
    /// the frame left as a bare frame (XDP_TX or a native redirect).
    pub const CSUM_COMPLETED: u32 = 25;
    /// A partial L4 checksum kept partial (pseudo header updated) because
    /// the frame kept its socket buffer: passed to the kernel, or generic
    /// mode; the kernel or the egress device completes it.
    pub const CSUM_PARTIAL_KEPT: u32 = 26;
    /// A partial checksum on a bare frame too long to complete (cannot
    /// happen in native mode, where frames fit one page): dropped.
    pub const DROP_CSUM_TOO_LONG: u32 = 27;
    /// A TCP/UDP header inconsistent with the IP length: the fixed header
    /// beyond it, a TCP data offset under 5 words or past it, a UDP length
    /// other than it.
    pub const DROP_BAD_L4_LEN: u32 = 28;
    /// A TCP packet without SYN that found no conntrack entry: its entry was
    /// evicted (the table was full) or the flow began before this lb. It
    /// takes its real from the ring, like a new flow.
    pub const CT_MISS_MID_FLOW: u32 = 29;
    /// A source address no packet may carry (unspecified, loopback,
    /// multicast or broadcast; IPv6 link-local too, which is never
    /// forwarded).
    pub const DROP_BAD_SOURCE: u32 = 30;
    /// One direction's conntrack entry re-written from the other's, after
    /// the LRU evicted it alone.
    pub const CT_RESTORED: u32 = 31;
    pub const COUNT: u32 = 32;

    /// Names for logs, the API and metrics, in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "rx",
        "pass_non_vip",
        "tx",
        "redirect",
        "conntrack_hit",
        "conntrack_miss",
        "fib_miss",
        "fib_frag_needed",
        "pass_ttl_expired",
        "reply_nat",
        "drop_truncated_ethernet",
        "drop_truncated_vlan",
        "drop_truncated_ip",
        "drop_bad_ihl",
        "drop_bad_length",
        "drop_truncated_l4",
        "drop_ip_options",
        "drop_fragment",
        "drop_ipv6_extension",
        "drop_no_real",
        "pass_egress_not_attached",
        "pass_vip_other_protocol",
        "drop_bad_version",
        "fib_lookup",
        "next_hop_cached",
        "csum_completed",
        "csum_partial_kept",
        "drop_csum_too_long",
        "drop_bad_l4_length",
        "conntrack_miss_mid_flow",
        "drop_bad_source",
        "conntrack_restored",
    ];
}

#[inline(always)]
fn rotl(x: u32, r: u32) -> u32 {
    x.rotate_left(r)
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51);
    let k = rotl(k, 15).wrapping_mul(0x1b87_3593);
    let h = h ^ k;
    rotl(h, 13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Seed of [`flow_hash`] when the config sets no `hash_seed`.
pub const DEFAULT_HASH_SEED: u32 = 0x4c42_5f31;

/// The flow hash: murmur3-style mixing of the 5-tuple's words, as stored in
/// a [`FlowKey`], from `seed` (the deployment's `hash_seed`; the XDP program
/// reads it from its `HASH_SEED` map). The XDP program and the control plane
/// must agree on it, so it lives here. Ring index =
/// `flow_hash_seeded(..) % ring_size`.
#[inline(always)]
pub fn flow_hash_seeded(key: &FlowKey, seed: u32) -> u32 {
    let mut h: u32 = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 4));
    h = mix(h, word(&key.src, 8));
    h = mix(h, word(&key.src, 12));
    h = mix(h, word(&key.dst, 0));
    h = mix(h, word(&key.dst, 4));
    h = mix(h, word(&key.dst, 8));
    h = mix(h, word(&key.dst, 12));
    h = mix(h, (key.sport as u32) | ((key.dport as u32) << 16));
    h = mix(h, (key.proto as u32) | ((key.family as u32) << 8));
    // fmix32
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// [`flow_hash_seeded`] with [`DEFAULT_HASH_SEED`].
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    flow_hash_seeded(key, DEFAULT_HASH_SEED)
}

// --- Layouts -------------------------------------------------------------
//
// Every map key and value both sides read: its size and field offsets,
// checked at compile time (for the BPF target and the host alike), so that
// no implicit padding or reordering can creep in. A key with padding the
// compiler added would hash and compare uninitialised bytes.

/// `offset_of!` for each listed field equals the given offset.
macro_rules! assert_layout {
    ($t:ty, size $size:expr, align $align:expr, { $($field:ident: $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(core::mem::size_of::<$t>() == $size);
            assert!(core::mem::align_of::<$t>() == $align);
            $(assert!(core::mem::offset_of!($t, $field) == $off);)*
        };
    };
}

assert_layout!(VipKey, size 20, align 2, { addr: 0, port: 16, proto: 18, family: 19 });
assert_layout!(VipMeta, size 16, align 4, { vip_index: 0, ring_slot: 4, ring_size: 8, flags: 12 });
assert_layout!(RealDef, size 24, align 4, { addr: 0, port: 16, family: 18, _pad: 19, flags: 20 });
assert_layout!(FlowKey, size 40, align 8, {
    src: 0, dst: 16, sport: 32, dport: 34, proto: 36, family: 37, _pad: 38,
});
assert_layout!(CtValue, size 32, align 8, {
    real_id: 0, vip_index: 4, kind: 8, _pad: 9, vip_port: 10, vip_addr: 12, checked: 28,
});
assert_layout!(NextHop, size 40, align 8, {
    expires_ns: 0, ingress: 8, egress: 12, max_len: 16, smac: 18, dmac: 24, _pad: 30,
});
assert_layout!(ReplyHopKey, size 24, align 8, { addr: 0, ingress: 16, family: 20, _pad: 21 });
assert_layout!(Counters, size 32, align 8, {
    packets: 0, bytes: 8, new_flows: 16, reply_packets: 24,
});
assert_layout!(GenTemplate, size GEN_FRAME_LEN, align 8, { bytes: 0 });
assert_layout!(CsumScratch, size CSUM_CHUNK, align 8, { bytes: 0 });

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for RealDef {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for GenTemplate {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = key();
        let h = flow_hash(&base);
        assert_eq!(h, flow_hash(&base), "deterministic");
        let mut k = base;
        k.sport = 40001u16.to_be();
        assert_ne!(h, flow_hash(&k));
        let mut k = base;
        k.src[3] = 3;
        assert_ne!(h, flow_hash(&k));
        let mut k = base;
        k.proto = IPPROTO_UDP;
        assert_ne!(h, flow_hash(&k));
    }

    #[test]
    fn flow_hash_depends_on_the_seed() {
        let k = key();
        assert_eq!(flow_hash(&k), flow_hash_seeded(&k, DEFAULT_HASH_SEED));
        assert_ne!(flow_hash_seeded(&k, 0), flow_hash_seeded(&k, 1));
        // Fixed values: a change here moves flows without a conntrack
        // entry when nodes are upgraded one by one.
        assert_eq!(flow_hash(&k), 0xf04a_10c7);
        assert_eq!(flow_hash_seeded(&k, 0x9e37_79b9), 0x0919_ee50);
    }
}
