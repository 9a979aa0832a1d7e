//! The test object (`lb-xdp-test`): measurement and test programs, kept
//! out of the production object (`lb-xdp`, `main.rs`) that `lb` loads.
//! `lb-userspace/build.rs` builds both; `lb_userspace::xdp_test` embeds this
//! one for `bench` and the tests.
//!
//! - `floor_tx`: `lb_xdp`'s parser (`parse.rs`, the same code), then
//!   XDP_TX: the floor of the per-packet benchmark.
//! - `floor_redirect`: redirects every frame, no lookups: the floor of the
//!   forwarding benchmark.
//! - `gen`: the forwarding benchmark's traffic generator. It tail-calls the
//!   program under test through `GEN_NEXT`, which may hold a program of
//!   another object (`lb_xdp`).
//! - `sink`: counts and drops at the receiver (TCP/UDP, and IPIP with
//!   TCP/UDP inside).
#![no_std]
#![no_main]
// Every unsafe block says why it is sound; an unsafe fn's body is no
// licence for unchecked unsafe operations.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{GenTemplate, FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::checksum::Update;
use maps::{FLOOR_PORT, GEN_MODE, GEN_NEXT, GEN_STATE, GEN_TEMPLATE, SINK_COUNT};
use parse::*;

/// The test programs' maps, and the two the parser uses, defined as in the
/// production object's `maps.rs` (this object has its own copies).
mod maps {
    use aya_ebpf::{
        macros::map,
        maps::{Array, DevMap, HashMap, PerCpuArray, ProgramArray},
    };
    use lb_common::{stat, GenTemplate, VipKey, VipMeta, MAX_VIPS};

    /// Read by the parser for malformed packets (to a VIP address:
    /// dropped, else passed); empty here.
    #[map]
    pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

    /// The parser's drop and pass counters.
    #[map]
    pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

    /// `floor_redirect`'s one egress device (slot 0).
    #[map]
    pub static FLOOR_PORT: DevMap = DevMap::with_max_entries(1, 0);

    /// `gen`'s per-CPU state: slot 0 counts frames, slot 1 is the number of
    /// distinct source ports to cycle through (0 = 16384).
    #[map]
    pub static GEN_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// What `gen` does with a frame: 0 XDP_TX, 1 XDP_PASS (into the kernel
    /// stack), 2 tail call to `GEN_NEXT[0]` (the program under test).
    #[map]
    pub static GEN_MODE: Array<u32> = Array::with_max_entries(1, 0);

    #[map]
    pub static GEN_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

    /// `gen`'s frame template (slot 0).
    #[map]
    pub static GEN_TEMPLATE: Array<GenTemplate> = Array::with_max_entries(1, 0);

    /// `sink`'s packet counter (slot 0).
    #[map]
    pub static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

/// The parser's counter, as `stats::count` of the production object.
mod stats {
    use crate::maps::GLOBAL_STATS;

    #[inline(always)]
    pub fn count(index: u32) {
        if let Some(c) = GLOBAL_STATS.get_ptr_mut(index) {
            // SAFETY: this CPU's slot of a per-CPU array, valid for the
            // program run, and nothing else writes it meanwhile.
            unsafe { *c += 1 };
        }
    }
}

/// Floor for the per-packet benchmark: the same parse, then XDP_TX.
#[xdp]
pub fn floor_tx(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let pkt = zeroed_in(&mut slot);
    match parse(&ctx, pkt) {
        FLOW => xdp_action::XDP_TX,
        ICMP_TO_VIP => xdp_action::XDP_PASS,
        verdict => verdict,
    }
}

/// Floor for the forwarding benchmark: redirect every frame, no lookups.
#[xdp]
pub fn floor_redirect(_ctx: XdpContext) -> u32 {
    FLOOR_PORT.redirect(0, 0).unwrap_or(xdp_action::XDP_DROP)
}

/// Traffic generator for the forwarding benchmark, run with test-run in
/// live-frames mode on the balancer's client-side interface: restores the
/// frame from `GEN_TEMPLATE`, gives it the next source port (checksum
/// updated), then, by `GEN_MODE`, sends it out again (XDP_TX), hands it to
/// the kernel stack (XDP_PASS) or tail-calls the program under test.
#[xdp]
pub fn gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Ok(a) => a,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<u32, ()> {
    let (n, flows) = match (GEN_STATE.get_ptr_mut(0), GEN_STATE.get(1)) {
        (Some(c), Some(f)) => {
            // SAFETY: this CPU's slot of a per-CPU array, valid for the
            // program run, the only reference to it.
            let n = unsafe { *c };
            // SAFETY: as above.
            unsafe { *c = n + 1 };
            (n, if *f == 0 { 16384 } else { *f })
        }
        _ => return Ok(xdp_action::XDP_DROP),
    };
    let port = (1024 + n % flows) as u16;
    // Restore the frame: the page may come back rewritten by the receiver.
    let template = match GEN_TEMPLATE.get(0) {
        Some(t) => t,
        None => return Ok(xdp_action::XDP_DROP),
    };
    // SAFETY: only written whole, right below (see there for alignment).
    let frame: *mut GenTemplate = unsafe { ptr_at(ctx, 0)? };
    // Not overlapping (map value → packet): a memcpy, which is inlined as
    // 8-byte copies, where an assignment would call a byte-wise memmove.
    // SAFETY: `ptr_at` checked the 64 bytes lie in the packet, and the
    // template is a map value, valid for the program run. The frame starts
    // 8-aligned: live frames put the packet XDP_PACKET_HEADROOM (256) bytes
    // into its page, and `gen` runs only there.
    unsafe { core::ptr::copy_nonoverlapping(template, frame, 1) };
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let p = zeroed_in(&mut slot);
    match parse(ctx, p) {
        FLOW => {
            set_sport(ctx, p.l4, p.family, p.proto, port)?;
            match GEN_MODE.get(0).copied().unwrap_or(0) {
                1 => Ok(xdp_action::XDP_PASS),
                2 => {
                    // SAFETY: the program's own context; on success the
                    // call does not return.
                    let _ = unsafe { GEN_NEXT.tail_call(ctx, 0) };
                    Ok(xdp_action::XDP_DROP)
                }
                _ => Ok(xdp_action::XDP_TX),
            }
        }
        _ => Ok(xdp_action::XDP_DROP),
    }
}

/// IP protocol number of IPv4 in IPv4 (a DSR real's tunnel packets).
const IPPROTO_IPIP: u8 = 4;

/// Receiver side of benchmarks: counts and drops TCP/UDP frames (GUE
/// tunnel packets among them: UDP to the real), and IPv4-in-IPv4 frames
/// whose inner packet is TCP/UDP (a DSR real's IPIP packets); everything
/// else (ARP, neighbour discovery) passes so the receiver stays reachable.
/// A TCP/UDP frame costs the same as before IPIP was counted: the tunnel
/// check runs only on what the parser did not take as a flow.
#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    let pkt = zeroed_in(&mut slot);
    let counted = match parse(&ctx, pkt) {
        FLOW => true,
        xdp_action::XDP_PASS => ipip_flow(&ctx),
        _ => false,
    };
    if !counted {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the
        // program run, and nothing else writes it meanwhile.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// An untagged IPv4 frame carrying IPv4 (no options) with TCP or UDP inside.
#[inline(always)]
fn ipip_flow(ctx: &XdpContext) -> bool {
    // SAFETY: `EthHdr` is bytes only, read once, right below.
    let Ok(eth) = (unsafe { ptr_at::<EthHdr>(ctx, 0) }) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the header lies in the packet.
    if u16::from_be_bytes(unsafe { (*eth).proto }) != ETH_P_IP {
        return false;
    }
    // SAFETY: `Ipv4Hdr` is bytes only, only read, and nothing that moves
    // packet data runs while it is used.
    let Ok(outer) = (unsafe { ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) }) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the header lies in the packet.
    let outer = unsafe { &*outer };
    if outer.version_ihl != 0x45 || outer.proto != IPPROTO_IPIP {
        return false;
    }
    // SAFETY: as for the outer header.
    let Ok(inner) = (unsafe { ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN + IPV4_HLEN) }) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the header lies in the packet.
    let inner = unsafe { &*inner };
    inner.version_ihl == 0x45 && (inner.proto == IPPROTO_TCP || inner.proto == IPPROTO_UDP)
}

/// Sets the source port (host order) with an incremental L4 checksum update;
/// used by the benchmark generator.
#[inline(always)]
pub fn set_sport(ctx: &XdpContext, l4: usize, family: u8, proto: u8, port: u16) -> Result<(), ()> {
    let new = port.to_be_bytes();
    match proto {
        IPPROTO_TCP => {
            // SAFETY: `ptr_at` checked the header lies in the packet; bytes
            // only, the one reference to it, and no helper runs meanwhile.
            let t = unsafe { &mut *ptr_at::<TcpHdr>(ctx, l4)? };
            let mut c = Update::new(t.check);
            c.word(u16::from_be_bytes(t.src), port);
            t.src = new;
            t.check = c.finish();
        }
        IPPROTO_UDP => {
            // SAFETY: as for TCP.
            let u = unsafe { &mut *ptr_at::<UdpHdr>(ctx, l4)? };
            if !(family == FAMILY_V4 && u.check == [0, 0]) {
                let mut c = Update::new(u.check);
                c.word(u16::from_be_bytes(u.src), port);
                let mut check = c.finish();
                if check == [0, 0] {
                    check = [0xff, 0xff];
                }
                u.check = check;
            }
            u.src = new;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
