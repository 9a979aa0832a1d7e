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
pub const VIP_F_ADDR_ONLY: u8 = 1;
/// `VipMeta.flags` of an address marker: the LB answers echo requests
/// (ping) to this address itself.
pub const VIP_F_ICMP_ECHO: u8 = 2;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Slots of the `ICMP_CONF` array: the rate of ICMP messages the LB
/// answers or relays (per second per CPU, 0 = unlimited), and 1 when the
/// relay of ICMP errors is off.
pub const ICMP_CONF_RATE: u32 = 0;
pub const ICMP_CONF_RELAY_OFF: u32 = 1;

/// A per-CPU token bucket for the ICMP messages the LB answers or relays
/// (`ICMP_BUCKET`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcmpBucket {
    /// Tokens, in thousandths of a message.
    pub milli_tokens: u64,
    /// `bpf_ktime_get_coarse_ns` of the last refill.
    pub last_ns: u64,
}

/// Forwarding modes (`VipMeta.mode`, `CtValue.mode`).
///
/// NAT: destination rewritten to the real, replies rewritten back (the
/// LB is the reals' gateway). The zero value, so entries written before
/// modes existed read as NAT.
pub const MODE_NAT: u8 = 0;
/// DSR, IP in IP: the client's packet, untouched, inside an outer IPv4 or
/// IPv6 header to the real (IPIP, IP6IP6, 4-in-6, 6-in-4 by the
/// families). Replies go from the real to the client directly.
pub const MODE_DSR_IPIP: u8 = 1;
/// DSR, GUE (variant 1: the inner IP header right after the UDP header),
/// to the VIP's `gue_port` on the real, with the flow hash in the source
/// port.
pub const MODE_DSR_GUE: u8 = 2;
/// FullNAT: source rewritten to one of the VIP's SNAT addresses and a port
/// claimed for the flow, destination to the real; the real answers that
/// address, and the reply is rewritten back to VIP → client. The reals
/// need no route through the LB.
pub const MODE_FULLNAT: u8 = 3;

/// Most SNAT addresses a FullNAT VIP holds (`SnatPool.addrs`).
pub const MAX_SNAT_ADDRS: usize = 8;
/// Source ports a FullNAT flow may get when the VIP sets no `snat_ports`:
/// below Linux's default ephemeral range (32768–60999), so the LB host's
/// own connections from the same address never meet a FullNAT flow.
pub const SNAT_PORT_MIN: u16 = 1024;
pub const SNAT_PORT_MAX: u16 = 32767;
/// Ports tried for a new FullNAT flow before it is refused
/// (`drop_snat_exhausted`).
pub const SNAT_PROBES: u32 = 32;

/// The SNAT addresses and port range of a FullNAT VIP (`SNAT_POOLS`,
/// indexed by VIP index). Addresses of the VIP's family only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatPool {
    pub addrs: [[u8; 16]; MAX_SNAT_ADDRS],
    /// Addresses in use, `addrs[..count]`; 0: the VIP has no pool (its new
    /// flows are dropped, `drop_no_snat_address`).
    pub count: u32,
    /// First port (native order) and number of ports.
    pub port_min: u16,
    pub port_count: u16,
    /// Coarse clock ticks after which an idle flow's port, and a closed
    /// (FIN or RST) flow's port, may go to a new flow (`snat_idle_timeout`,
    /// `snat_closed_timeout`); 0: `SNAT_IDLE_TICKS_*`, `SNAT_CLOSED_TICKS`.
    pub idle_ticks: u32,
    pub closed_ticks: u32,
}

/// Coarse clock ticks (2^24 ns) in `ms` milliseconds, rounded up, at
/// least 1.
pub const fn ticks_of_ms(ms: u64) -> u32 {
    let t = (ms * 1_000_000).div_ceil(1 << 24);
    if t == 0 {
        1
    } else if t > u32::MAX as u64 {
        u32::MAX
    } else {
        t as u32
    }
}

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
    /// `VIP_F_*`.
    pub flags: u8,
    /// `MODE_*`.
    pub mode: u8,
    /// `MODE_DSR_GUE`: the UDP destination port on the reals (network
    /// byte order).
    pub gue_port: u16,
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
    /// The VIP's `MODE_*` when the flow began. A VIP whose mode changes
    /// gets a new VIP index, so an entry never outlives its mode.
    pub mode: u8,
    /// Reply entries: the VIP port the reply's source is rewritten to
    /// (network byte order). Forward entries of a GUE VIP: its `gue_port`.
    pub vip_port: u16,
    /// Reply entries: the VIP address the reply's source is rewritten to.
    pub vip_addr: [u8; 16],
    /// The coarse clock tick (2^24 ns, about 17 ms) at which a packet of
    /// this entry last looked up the flow's other entry.
    pub checked: u32,
    /// FullNAT only. Forward entries: the SNAT address and port (network
    /// order) the flow leaves from. Reply entries: the client's address
    /// and port, the reply's new destination.
    pub peer_addr: [u8; 16],
    pub peer_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// [`CtValue::flags`]: a FIN or RST of the flow passed (FullNAT): once the
/// flow is quiet for `SNAT_CLOSED_TICKS`, its SNAT port may go to a new flow.
pub const CT_F_CLOSING: u8 = 1;

/// Coarse clock ticks (2^24 ns, about 16.8 ms) after which a new FullNAT
/// flow may take the SNAT port of an earlier flow: quiet for about 2 s
/// after a FIN or RST; idle for about 300 s (TCP) or 60 s (UDP) without.
pub const SNAT_CLOSED_TICKS: u32 = 120;
pub const SNAT_IDLE_TICKS_TCP: u32 = 17_880;
pub const SNAT_IDLE_TICKS_UDP: u32 = 3_576;

/// [`CtValue::kind`] of a client → VIP entry.
pub const CT_FORWARD: u8 = 1;
/// [`CtValue::kind`] of a real → client entry.
pub const CT_REPLY: u8 = 2;

/// The outer source addresses of DSR packets of one family (`ENCAP_SOURCE`,
/// index 0 IPv4, 1 IPv6): `addr` with the bits of `host_mask` filled from
/// the flow, so the reals' receive-side scaling spreads flows over their
/// queues. The mask covers the address's last four bytes (IPv4: all of
/// it), read as a native-endian `u32` of those bytes as they lie in the
/// address. `family` 0: no source (DSR packets of that family are dropped,
/// counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EncapSource {
    pub addr: [u8; 16],
    pub host_mask: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Key of the decap program's `DECAP_ADDRS`: an address of this host that
/// tunnel packets may be addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapAddr {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Most addresses `DECAP_ADDRS` holds.
pub const MAX_DECAP_ADDRS: u32 = 1024;

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

/// Defines `$name: u32` for each entry, numbered from 0 in list order,
/// `COUNT`, and `NAMES` (the names in index order).
macro_rules! stat_list {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// The list's positions: `Index::X as u32` is `X`'s index.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
        #[repr(u32)]
        enum Index {
            $($name,)*
            __Count,
        }
        $($(#[$doc])* pub const $name: u32 = Index::$name as u32;)*
        /// Number of counters.
        pub const COUNT: u32 = Index::__Count as u32;
        /// Names for logs, the API and metrics, in index order.
        pub const NAMES: [&str; COUNT as usize] = [$($label,)*];
    };
}

/// Global counter indexes (per-CPU u64 array `GLOBAL_STATS`) and their
/// names, generated from one list by [`stat_list!`]: each entry is the index
/// constant and its name for logs, the API and metrics, numbered in order.
/// The numbering is part of the pinned `GLOBAL_STATS` map's meaning:
/// entries are only ever added at the end.
pub mod stat {
    stat_list! {
        RX = "rx",
        PASS_NON_VIP = "pass_non_vip",
        TX = "tx",
        REDIRECT = "redirect",
        CT_HIT = "conntrack_hit",
        CT_MISS = "conntrack_miss",
        FIB_MISS = "fib_miss",
        FIB_FRAG_NEEDED = "fib_frag_needed",
        PASS_TTL_EXPIRED = "pass_ttl_expired",
        REPLY_NAT = "reply_nat",
        DROP_TRUNC_ETH = "drop_truncated_ethernet",
        DROP_TRUNC_VLAN = "drop_truncated_vlan",
        DROP_TRUNC_IP = "drop_truncated_ip",
        DROP_BAD_IHL = "drop_bad_ihl",
        DROP_BAD_LEN = "drop_bad_length",
        DROP_TRUNC_L4 = "drop_truncated_l4",
        DROP_IP_OPTIONS = "drop_ip_options",
        DROP_FRAGMENT = "drop_fragment",
        DROP_IPV6_EXT = "drop_ipv6_extension",
        DROP_NO_REAL = "drop_no_real",
        PASS_NO_TX_PORT = "pass_egress_not_attached",
        PASS_VIP_OTHER_PROTO = "pass_vip_other_protocol",
        DROP_BAD_VERSION = "drop_bad_version",
        FIB_LOOKUP = "fib_lookup",
        NEXT_HOP_CACHED = "next_hop_cached",
        /// A partial (offload) L4 checksum completed over the segment, because
        /// the frame left as a bare frame (XDP_TX or a native redirect).
        CSUM_COMPLETED = "csum_completed",
        /// A partial L4 checksum kept partial (pseudo header updated) because
        /// the frame kept its socket buffer: passed to the kernel, or generic
        /// mode; the kernel or the egress device completes it.
        CSUM_PARTIAL_KEPT = "csum_partial_kept",
        /// A partial checksum on a bare frame too long to complete (cannot
        /// happen in native mode, where frames fit one page): dropped.
        DROP_CSUM_TOO_LONG = "drop_csum_too_long",
        /// A TCP/UDP header inconsistent with the IP length: the fixed header
        /// beyond it, a TCP data offset under 5 words or past it, a UDP length
        /// other than it.
        DROP_BAD_L4_LEN = "drop_bad_l4_length",
        /// A TCP packet without SYN that found no conntrack entry: its entry was
        /// evicted (the table was full) or the flow began before this lb. It
        /// takes its real from the ring, like a new flow.
        CT_MISS_MID_FLOW = "conntrack_miss_mid_flow",
        /// A source address no packet may carry (unspecified, loopback,
        /// multicast or broadcast; IPv6 link-local too, which is never
        /// forwarded).
        DROP_BAD_SOURCE = "drop_bad_source",
        /// One direction's conntrack entry re-written from the other's, after
        /// the LRU evicted it alone.
        CT_RESTORED = "conntrack_restored",
        /// A client → VIP packet of a DSR VIP sent encapsulated to its real.
        DSR_ENCAP = "dsr_encap",
        /// A DSR packet for a real of a family with no encap source
        /// configured (`ENCAP_SOURCE`): dropped.
        DROP_NO_ENCAP_SOURCE = "drop_no_encap_source",
        /// A DSR packet that had no room for its outer headers
        /// (`bpf_xdp_adjust_head` refused): dropped.
        DROP_ENCAP_ROOM = "drop_encap_no_room",
        /// A new FullNAT flow took a source port; `snat_port_collision` counts
        /// the ports it found taken first.
        SNAT_NEW = "snat_new_flow",
        SNAT_COLLISION = "snat_port_collision",
        /// A new FullNAT flow found no free source port in `SNAT_PROBES`
        /// tries (the VIP's pool is nearly full towards that real): dropped.
        DROP_SNAT_EXHAUSTED = "drop_snat_exhausted",
        /// A FullNAT VIP without SNAT addresses of its family: dropped.
        DROP_NO_SNAT = "drop_no_snat_address",
        /// An ICMP echo request (ping) to a VIP address, answered by the
        /// LB itself (`icmp_echo`).
        ICMP_ECHO_REPLY = "icmp_echo_reply",
        /// An ICMP message the LB would have answered or relayed, over the
        /// per-CPU `icmp_rate_limit`: dropped.
        DROP_ICMP_RATE = "drop_icmp_rate_limited",
        /// An ICMP error about a balanced flow (destination unreachable,
        /// fragmentation needed, packet too big), sent on to the flow's
        /// real: translated (NAT, FullNAT) or encapsulated (DSR).
        ICMP_RELAYED = "icmp_error_relayed",
        /// An ICMP error to a VIP address whose quoted packet is not one
        /// the VIP sent (its source is not the error's destination, or it
        /// is not TCP/UDP of a VIP, or its header is cut short): dropped.
        DROP_ICMP_MISMATCH = "drop_icmp_error_mismatch",
        /// An ICMP error about a flow no real can be found for (no real
        /// in the ring, or a FullNAT flow without its conntrack entry,
        /// whose source port only the entry knows): dropped.
        DROP_ICMP_NO_FLOW = "drop_icmp_error_no_flow",
        /// A DSR client packet too big for the egress MTU once
        /// encapsulated (IPv4 with DF, or IPv6): answered with ICMP
        /// "fragmentation needed" / "packet too big" from the VIP, with the
        /// MTU less the tunnel's overhead.
        ICMP_TOO_BIG_SENT = "icmp_too_big_sent",
    }
}

/// Counters of the decap program (`lb_decap`, per-CPU u64 array
/// `DECAP_STATS`), as [`stat`] is for `lb_xdp`.
pub mod decap_stat {
    stat_list! {
        RX = "rx",
        /// IPv4 in IPv4 (IPIP) addressed to this host, stripped.
        IPIP = "ipip",
        /// IPv6 in IPv6, stripped.
        IP6IP6 = "ip6ip6",
        /// IPv6 in IPv4, stripped.
        IP6_IN_IP4 = "ip6_in_ip4",
        /// IPv4 in IPv6, stripped.
        IP4_IN_IP6 = "ip4_in_ip6",
        /// GUE (UDP to a decap port, the inner IP header right after the
        /// UDP header), stripped.
        GUE = "gue",
        /// Not a tunnel packet this program strips (not IPIP, IPv6 in IP or
        /// GUE to the decap port; or an outer IPv4 header with options, or
        /// a fragment): passed untouched.
        PASS_NOT_TUNNEL = "pass_not_tunnel",
        /// A tunnel packet not addressed to one of this host's decap
        /// addresses: passed untouched.
        PASS_NOT_LOCAL = "pass_not_local",
        /// A tunnel packet addressed to this host whose inner packet is
        /// truncated, or not of the IP version the outer header announces:
        /// dropped.
        DROP_MALFORMED = "drop_malformed",
    }
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
    #[allow(
        clippy::decimal_bitwise_operands,
        reason = "40 is the key length in bytes, as murmur3 mixes it"
    )]
    {
        h ^= 40;
    }
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
assert_layout!(VipMeta, size 16, align 4, {
    vip_index: 0, ring_slot: 4, ring_size: 8, flags: 12, mode: 13, gue_port: 14,
});
assert_layout!(RealDef, size 24, align 4, { addr: 0, port: 16, family: 18, _pad: 19, flags: 20 });
assert_layout!(FlowKey, size 40, align 8, {
    src: 0, dst: 16, sport: 32, dport: 34, proto: 36, family: 37, _pad: 38,
});
assert_layout!(CtValue, size 56, align 8, {
    real_id: 0, vip_index: 4, kind: 8, mode: 9, vip_port: 10, vip_addr: 12, checked: 28,
    peer_addr: 32, peer_port: 48, flags: 50, _pad: 51,
});
assert_layout!(SnatPool, size 144, align 4, {
    addrs: 0, count: 128, port_min: 132, port_count: 134, idle_ticks: 136, closed_ticks: 140,
});
assert_layout!(EncapSource, size 24, align 4, { addr: 0, host_mask: 16, family: 20, _pad: 21 });
assert_layout!(DecapAddr, size 20, align 1, { addr: 0, family: 16, _pad: 17 });
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
    use super::{
        Counters, CtValue, DecapAddr, EncapSource, FlowKey, GenTemplate, NextHop, RealDef,
        SnatPool, VipKey, VipMeta,
    };
    // SAFETY: this impl and every one below: each type is #[repr(C)], Copy, made only of
    // integers and integer arrays with its padding spelled out as fields
    // (layouts asserted above), so every bit pattern is a valid value and
    // no byte is uninitialised.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RealDef {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NextHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GenTemplate {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EncapSource {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DecapAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SnatPool {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index as it was numbered by hand before the list generated
    /// them: the pinned `GLOBAL_STATS` map of a running `lb` is read by
    /// index, so a new list must keep them.
    #[test]
    fn stat_indexes_and_names_agree() {
        use stat::*;
        let expected: [(u32, u32, &str); COUNT as usize] = [
            (RX, 0, "rx"),
            (PASS_NON_VIP, 1, "pass_non_vip"),
            (TX, 2, "tx"),
            (REDIRECT, 3, "redirect"),
            (CT_HIT, 4, "conntrack_hit"),
            (CT_MISS, 5, "conntrack_miss"),
            (FIB_MISS, 6, "fib_miss"),
            (FIB_FRAG_NEEDED, 7, "fib_frag_needed"),
            (PASS_TTL_EXPIRED, 8, "pass_ttl_expired"),
            (REPLY_NAT, 9, "reply_nat"),
            (DROP_TRUNC_ETH, 10, "drop_truncated_ethernet"),
            (DROP_TRUNC_VLAN, 11, "drop_truncated_vlan"),
            (DROP_TRUNC_IP, 12, "drop_truncated_ip"),
            (DROP_BAD_IHL, 13, "drop_bad_ihl"),
            (DROP_BAD_LEN, 14, "drop_bad_length"),
            (DROP_TRUNC_L4, 15, "drop_truncated_l4"),
            (DROP_IP_OPTIONS, 16, "drop_ip_options"),
            (DROP_FRAGMENT, 17, "drop_fragment"),
            (DROP_IPV6_EXT, 18, "drop_ipv6_extension"),
            (DROP_NO_REAL, 19, "drop_no_real"),
            (PASS_NO_TX_PORT, 20, "pass_egress_not_attached"),
            (PASS_VIP_OTHER_PROTO, 21, "pass_vip_other_protocol"),
            (DROP_BAD_VERSION, 22, "drop_bad_version"),
            (FIB_LOOKUP, 23, "fib_lookup"),
            (NEXT_HOP_CACHED, 24, "next_hop_cached"),
            (CSUM_COMPLETED, 25, "csum_completed"),
            (CSUM_PARTIAL_KEPT, 26, "csum_partial_kept"),
            (DROP_CSUM_TOO_LONG, 27, "drop_csum_too_long"),
            (DROP_BAD_L4_LEN, 28, "drop_bad_l4_length"),
            (CT_MISS_MID_FLOW, 29, "conntrack_miss_mid_flow"),
            (DROP_BAD_SOURCE, 30, "drop_bad_source"),
            (CT_RESTORED, 31, "conntrack_restored"),
            (DSR_ENCAP, 32, "dsr_encap"),
            (DROP_NO_ENCAP_SOURCE, 33, "drop_no_encap_source"),
            (DROP_ENCAP_ROOM, 34, "drop_encap_no_room"),
            (SNAT_NEW, 35, "snat_new_flow"),
            (SNAT_COLLISION, 36, "snat_port_collision"),
            (DROP_SNAT_EXHAUSTED, 37, "drop_snat_exhausted"),
            (DROP_NO_SNAT, 38, "drop_no_snat_address"),
            (ICMP_ECHO_REPLY, 39, "icmp_echo_reply"),
            (DROP_ICMP_RATE, 40, "drop_icmp_rate_limited"),
            (ICMP_RELAYED, 41, "icmp_error_relayed"),
            (DROP_ICMP_MISMATCH, 42, "drop_icmp_error_mismatch"),
            (DROP_ICMP_NO_FLOW, 43, "drop_icmp_error_no_flow"),
            (ICMP_TOO_BIG_SENT, 44, "icmp_too_big_sent"),
        ];
        assert_eq!(COUNT, 45);
        assert_eq!(NAMES.len(), COUNT as usize);
        for (index, number, name) in expected {
            assert_eq!(index, number, "{name}");
            assert_eq!(NAMES[index as usize], name, "index {index}");
        }
        for (i, a) in NAMES.iter().enumerate() {
            assert!(!NAMES[..i].contains(a), "{a} named twice");
        }
    }

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
