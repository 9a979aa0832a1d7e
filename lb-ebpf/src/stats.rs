//! Per-CPU counters: global reasons, per VIP and per real.

use lb_common::Counters;

use crate::maps::{GLOBAL_STATS, REAL_STATS, VIP_STATS};

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program
        // run; the program is not preempted on its CPU, so nothing else
        // writes it meanwhile.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(c: *mut Counters, bytes: u64, new_flow: bool, reply: bool) {
    // SAFETY: as in `count`: this CPU's slot, the only reference to it.
    let c = unsafe { &mut *c };
    if reply {
        c.reply_packets += 1;
    } else {
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.new_flows += 1;
        }
    }
}

#[inline(always)]
pub fn add_vip(index: u32, bytes: u64, new_flow: bool, reply: bool) {
    if let Some(c) = VIP_STATS.get_ptr_mut(index) {
        add(c, bytes, new_flow, reply);
    }
}

#[inline(always)]
pub fn add_real(index: u32, bytes: u64, new_flow: bool, reply: bool) {
    if let Some(c) = REAL_STATS.get_ptr_mut(index) {
        add(c, bytes, new_flow, reply);
    }
}
