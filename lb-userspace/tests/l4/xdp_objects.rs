//! The two XDP objects: the production object that `lb` loads holds
//! `lb_xdp` and its maps only; the test object's programs pass the verifier
//! and do what the benchmarks rely on.

use std::net::IpAddr;

use aya::maps::{MapData, PerCpuArray};
use lb_userspace::{
    l4::dataplane::{Dataplane, LoadOptions, PROGRAM},
    testbed,
    testbed::packet::{test_run, Pkt, CLIENT4, VIP4},
    testbed::xdp_test::{TestPrograms, PROGRAMS},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

#[test]
fn production_object_holds_lb_xdp_only() {
    if !testbed::privileged() {
        return;
    }
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load the XDP object");
    let programs: Vec<&str> = dp.ebpf().programs().map(|(name, _)| name).collect();
    assert_eq!(programs, [PROGRAM]);
    let maps: Vec<&str> = dp.ebpf().maps().map(|(name, _)| name).collect();
    for test_map in [
        "FLOOR_PORT",
        "GEN_STATE",
        "GEN_MODE",
        "GEN_NEXT",
        "GEN_TEMPLATE",
        "SINK_COUNT",
    ] {
        assert!(!maps.contains(&test_map), "{test_map} in {maps:?}");
    }
    for map in ["VIPS", "CONNTRACK", "RINGS", "GLOBAL_STATS", "TX_PORTS"] {
        assert!(maps.contains(&map), "{map} missing from {maps:?}");
    }
}

#[test]
fn test_object_programs_load_and_run() {
    if !testbed::privileged() {
        return;
    }
    let mut tp = TestPrograms::load().expect("load the XDP test object");
    let programs: Vec<&str> = tp.ebpf().programs().map(|(name, _)| name).collect();
    for name in PROGRAMS {
        assert!(programs.contains(&name), "{name} missing from {programs:?}");
    }
    assert!(!programs.contains(&PROGRAM));

    let syn = Pkt::tcp(IpAddr::V4(CLIENT4), 40000, IpAddr::V4(VIP4), 80, 0x02).bytes();
    // The floor: the parser, then XDP_TX, the frame untouched.
    let floor = tp.program("floor_tx").unwrap();
    let (verdict, out, _) = test_run(floor, 0, &syn).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, syn);
    // The parser's verdicts stand: a truncated IP header is dropped.
    let (verdict, _, _) = test_run(floor, 0, &syn[..20]).unwrap();
    assert_eq!(verdict, XDP_DROP);

    // The sink counts and drops TCP/UDP, and passes the rest (ARP).
    let sink = tp.program("sink").unwrap();
    let (verdict, _, _) = test_run(sink, 0, &syn).unwrap();
    assert_eq!(verdict, XDP_DROP);
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let (verdict, _, _) = test_run(sink, 0, &arp).unwrap();
    assert_eq!(verdict, XDP_PASS);
    // IPIP (a DSR real's tunnel packet) with TCP inside is counted too;
    // IPIP with something else inside passes.
    let mut ipip = syn[..14].to_vec();
    let inner = &syn[14..];
    let mut outer = [0u8; 20];
    outer[0] = 0x45;
    outer[2..4].copy_from_slice(&((20 + inner.len()) as u16).to_be_bytes());
    outer[8] = 64;
    outer[9] = 4;
    outer[12..16].copy_from_slice(&[198, 18, 250, 1]);
    outer[16..20].copy_from_slice(&[198, 18, 11, 2]);
    ipip.extend_from_slice(&outer);
    ipip.extend_from_slice(inner);
    testbed::packet::fix_ip4_csum(&mut ipip, 14);
    let (verdict, _, _) = test_run(sink, 0, &ipip).unwrap();
    assert_eq!(verdict, XDP_DROP);
    let mut ipip_other = ipip.clone();
    ipip_other[14 + 20 + 9] = 47;
    let (verdict, _, _) = test_run(sink, 0, &ipip_other).unwrap();
    assert_eq!(verdict, XDP_PASS);
    let count: PerCpuArray<&MapData, u64> = tp
        .ebpf()
        .map("SINK_COUNT")
        .expect("SINK_COUNT")
        .try_into()
        .unwrap();
    let total: u64 = count.get(&0, 0).unwrap().iter().sum();
    assert_eq!(total, 2);
}
