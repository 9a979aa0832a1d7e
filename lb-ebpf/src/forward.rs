//! Next hop: `bpf_fib_lookup`, MAC rewrite, then XDP_TX or a DEVMAP redirect.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{stat, FAMILY_V4};

use crate::{
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr},
    stats::count,
    TX_PORTS,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
pub fn forward(ctx: &XdpContext, l3: usize, family: u8) -> Result<u32, ()> {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    if family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
        let ip = unsafe { &*ip };
        p.family = AF_INET;
        p.l4_protocol = ip.proto;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        p.__bindgen_anon_2.tos = ip.tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
        let ip = unsafe { &*ip };
        p.family = AF_INET6;
        p.l4_protocol = ip.next_hdr;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len);
        let flow = u32::from_ne_bytes(ip.vtc_flow) & u32::from_ne_bytes([0x0f, 0xff, 0xff, 0xff]);
        p.__bindgen_anon_2.flowinfo = flow;
        let mut src = [0u32; 4];
        let mut dst = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            src[i] = u32::from_ne_bytes([
                ip.src[i * 4],
                ip.src[i * 4 + 1],
                ip.src[i * 4 + 2],
                ip.src[i * 4 + 3],
            ]);
            dst[i] = u32::from_ne_bytes([
                ip.dst[i * 4],
                ip.dst[i * 4 + 1],
                ip.dst[i * 4 + 2],
                ip.dst[i * 4 + 3],
            ]);
            i += 1;
        }
        p.__bindgen_anon_3.ipv6_src = src;
        p.__bindgen_anon_4.ipv6_dst = dst;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            count(stat::FIB_FRAG_NEEDED);
        } else {
            count(stat::FIB_MISS);
        }
        return Ok(xdp_action::XDP_PASS);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe {
        (*eth).dst = p.dmac;
        (*eth).src = p.smac;
    }
    if p.ifindex == ingress {
        count(stat::TX);
        return Ok(xdp_action::XDP_TX);
    }
    match TX_PORTS.redirect(p.ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            count(stat::REDIRECT);
            Ok(action)
        }
        Err(_) => {
            count(stat::PASS_NO_TX_PORT);
            Ok(xdp_action::XDP_PASS)
        }
    }
}
