//! `bench xdp`: per-packet cost of `lb_xdp` by packet class, measured with
//! BPF_PROG_TEST_RUN (`repeat = 1`, N calls, the kernel-reported duration of
//! each call), side by side with the floor program `floor_tx` (the same
//! parse, then XDP_TX; in the test object, `xdp_test`) run on the same
//! packets in the same run.
//!
//! `repeat = 1` because a NAT rewrite changes the packet: with `repeat > 1`
//! the kernel would run the program again on the rewritten frame and measure
//! a different path.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;
use lb_userspace::{
    config::Config,
    l4::dataplane::{self, Dataplane, LoadOptions},
    testbed,
    testbed::packet::{
        self, Pkt, CLIENT4, CLIENT6, OUT_MAC, REAL4, REAL6, REAL_MAC, VIP4, VIP4_DSR, VIP4_FULLNAT,
        VIP6, VIP6_DSR, VIP6_FULLNAT,
    },
    testbed::xdp_test::TestPrograms,
};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub(crate) struct XdpBenchArgs {
    /// Calls per class (and per program).
    #[arg(long, default_value_t = 20000)]
    pub calls: usize,
    /// Where to write xdp.md and xdp.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

struct Class {
    name: &'static str,
    /// (ingress ifindex name, frame) per call.
    ingress: &'static str,
    frames: Vec<Vec<u8>>,
    /// Frames run once through lb_xdp before measuring (to create state).
    warm: Vec<Vec<u8>>,
    verdict: u32,
}

const NAT_NEW: &str = "new flow (v4 SYN, conntrack miss → ring)";
const NAT_EST: &str = "established flow (v4, conntrack hit)";
const NAT_EST6: &str = "established flow (v6, conntrack hit)";
const DSR_NEW: &str = "DSR new flow (v4 SYN → IPIP)";
const DSR_EST: &str = "DSR established (v4 → IPIP)";
const DSR_GUE: &str = "DSR established (v4 → GUE)";
const DSR_EST6: &str = "DSR established (v6 → IP6IP6)";

const FNAT_NEW: &str = "FullNAT new flow (v4 SYN, port claimed)";
const FNAT_EST: &str = "FullNAT established (v4)";
const FNAT_EST6: &str = "FullNAT established (v6)";

/// Each DSR and FullNAT class beside the NAT class it replaces.
const MODE_PAIRS: [(&str, &str); 7] = [
    (DSR_NEW, NAT_NEW),
    (DSR_EST, NAT_EST),
    (DSR_GUE, NAT_EST),
    (DSR_EST6, NAT_EST6),
    (FNAT_NEW, NAT_NEW),
    (FNAT_EST, NAT_EST),
    (FNAT_EST6, NAT_EST6),
];

fn client_v4(i: usize) -> IpAddr {
    IpAddr::from([198, 18, 0, 2 + (i / 60000) as u8])
}

fn classes(calls: usize) -> Vec<Class> {
    let vip4 = IpAddr::V4(VIP4);
    let vip6 = IpAddr::V6(VIP6);
    let real4 = IpAddr::V4(REAL4);
    let real6 = IpAddr::V6(REAL6);
    let c6 = IpAddr::V6(CLIENT6);
    let new_flows: Vec<Vec<u8>> = (0..calls)
        .map(|i| Pkt::tcp(client_v4(i), 1024 + (i % 60000) as u16, vip4, 80, SYN).bytes())
        .collect();
    let est = Pkt::tcp(IpAddr::V4(CLIENT4), 50000, vip4, 80, ACK).bytes();
    let est6 = Pkt::tcp(c6, 50000, vip6, 80, ACK).bytes();
    // Replies of 1000 flows, round-robin.
    let flows = 1000usize;
    let reply_warm: Vec<Vec<u8>> = (0..flows)
        .map(|i| Pkt::tcp(IpAddr::V4(CLIENT4), 30000 + i as u16, vip4, 80, SYN).bytes())
        .collect();
    let replies: Vec<Vec<u8>> = (0..calls)
        .map(|i| {
            let mut p = Pkt::tcp(
                real4,
                8080,
                IpAddr::V4(CLIENT4),
                30000 + (i % flows) as u16,
                ACK,
            );
            p.src_mac = REAL_MAC;
            p.dst_mac = OUT_MAC;
            p.bytes()
        })
        .collect();
    // Partial checksums (a local sender's offload): a 64-byte payload, and
    // a 1400-byte one (the completion sums the whole segment).
    let mut part = Pkt::tcp(IpAddr::V4(CLIENT4), 50002, vip4, 80, ACK);
    part.partial_csum = true;
    part.payload = vec![0x5a; 64];
    let part = part.bytes();
    let mut part_big = Pkt::tcp(IpAddr::V4(CLIENT4), 50003, vip4, 80, ACK);
    part_big.partial_csum = true;
    part_big.payload = vec![0x5a; 1400];
    let part_big = part_big.bytes();
    let dsr4 = IpAddr::V4(VIP4_DSR);
    let dsr_new: Vec<Vec<u8>> = (0..calls)
        .map(|i| Pkt::tcp(client_v4(i), 1024 + (i % 60000) as u16, dsr4, 80, SYN).bytes())
        .collect();
    let dsr_est = Pkt::tcp(IpAddr::V4(CLIENT4), 50000, dsr4, 80, ACK).bytes();
    let dsr_gue = Pkt::tcp(IpAddr::V4(CLIENT4), 50000, dsr4, 81, ACK).bytes();
    let dsr_est6 = Pkt::tcp(c6, 50000, IpAddr::V6(VIP6_DSR), 80, ACK).bytes();
    let fnat4 = IpAddr::V4(VIP4_FULLNAT);
    let fnat_new: Vec<Vec<u8>> = (0..calls)
        .map(|i| Pkt::tcp(client_v4(i), 1024 + (i % 60000) as u16, fnat4, 80, SYN).bytes())
        .collect();
    let fnat_est = Pkt::tcp(IpAddr::V4(CLIENT4), 50000, fnat4, 80, ACK).bytes();
    let fnat_est6 = Pkt::tcp(c6, 50000, IpAddr::V6(VIP6_FULLNAT), 80, ACK).bytes();
    let non_vip = Pkt::tcp(IpAddr::V4(CLIENT4), 50001, real4, 8080, SYN).bytes();
    let non_vip6 = Pkt::tcp(c6, 50001, real6, 8080, SYN).bytes();
    vec![
        Class {
            name: NAT_NEW,
            ingress: "in0",
            frames: new_flows,
            warm: vec![],
            verdict: 4,
        },
        Class {
            name: NAT_EST,
            ingress: "in0",
            frames: vec![est.clone(); calls],
            warm: vec![est],
            verdict: 4,
        },
        Class {
            name: NAT_EST6,
            ingress: "in0",
            frames: vec![est6.clone(); calls],
            warm: vec![est6],
            verdict: 4,
        },
        Class {
            name: "established, partial checksum (v4, 64-byte payload)",
            ingress: "in0",
            frames: vec![part.clone(); calls],
            warm: vec![part],
            verdict: 4,
        },
        Class {
            name: "established, partial checksum (v4, 1400-byte payload)",
            ingress: "in0",
            frames: vec![part_big.clone(); calls],
            warm: vec![part_big],
            verdict: 4,
        },
        Class {
            name: "reply from a real (v4, reverse NAT)",
            ingress: "out1",
            frames: replies,
            warm: reply_warm,
            verdict: 4,
        },
        Class {
            name: DSR_NEW,
            ingress: "in0",
            frames: dsr_new,
            warm: vec![],
            verdict: 4,
        },
        Class {
            name: DSR_EST,
            ingress: "in0",
            frames: vec![dsr_est.clone(); calls],
            warm: vec![dsr_est],
            verdict: 4,
        },
        Class {
            name: DSR_GUE,
            ingress: "in0",
            frames: vec![dsr_gue.clone(); calls],
            warm: vec![dsr_gue],
            verdict: 4,
        },
        Class {
            name: DSR_EST6,
            ingress: "in0",
            frames: vec![dsr_est6.clone(); calls],
            warm: vec![dsr_est6],
            verdict: 4,
        },
        Class {
            name: FNAT_NEW,
            ingress: "in0",
            frames: fnat_new,
            warm: vec![],
            verdict: 4,
        },
        Class {
            name: FNAT_EST,
            ingress: "in0",
            frames: vec![fnat_est.clone(); calls],
            warm: vec![fnat_est],
            verdict: 4,
        },
        Class {
            name: FNAT_EST6,
            ingress: "in0",
            frames: vec![fnat_est6.clone(); calls],
            warm: vec![fnat_est6],
            verdict: 4,
        },
        Class {
            name: "non-VIP pass (v4)",
            ingress: "in0",
            frames: vec![non_vip; calls],
            warm: vec![],
            verdict: 2,
        },
        Class {
            name: "non-VIP pass (v6)",
            ingress: "in0",
            frames: vec![non_vip6; calls],
            warm: vec![],
            verdict: 2,
        },
    ]
}

/// Per-call durations of one class, in nanoseconds.
#[derive(Clone, Copy)]
#[allow(
    clippy::struct_field_names,
    reason = "the unit is part of each name, as in the report"
)]
struct Stat {
    mean_ns: f64,
    median_ns: f64,
    p99_ns: f64,
}

fn stat(mut d: Vec<Duration>) -> Stat {
    d.sort();
    let n = d.len().max(1);
    let mean = d.iter().map(|x| x.as_nanos() as f64).sum::<f64>() / n as f64;
    Stat {
        mean_ns: mean,
        median_ns: d[n / 2].as_nanos() as f64,
        p99_ns: d[(n * 99 / 100).min(n - 1)].as_nanos() as f64,
    }
}

pub(crate) fn run(args: &XdpBenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench xdp needs root (BPF_PROG_TEST_RUN, network namespaces)");
    }
    let calls = args.calls.max(100);
    let ns = packet::fixture_net()?;
    let path = format!("/run/netns/{}", ns.name);
    let results = std::thread::spawn(move || -> Result<Vec<(String, Stat, Stat)>> {
        testbed::enter(&path)?;
        let cfg = Config::parse(packet::FIXTURE_CONFIG).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut dp = Dataplane::load(&LoadOptions {
            conntrack_size: (calls as u32 * 2).max(lb_common::CONNTRACK_SIZE),
            ..Default::default()
        })?;
        dp.apply(&cfg.vips)?;
        let floors = TestPrograms::load()?;
        let in0 = dataplane::ifindex("in0")?;
        let out1 = dataplane::ifindex("out1")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(out1)?;
        let mut out = Vec::new();
        for class in classes(calls) {
            let ifindex = if class.ingress == "in0" { in0 } else { out1 };
            let lb = dp.program(dataplane::PROGRAM)?;
            for f in &class.warm {
                packet::test_run(lb, ifindex, f)?;
            }
            // Interleave the two programs in blocks so that drift on a busy
            // machine hits both alike.
            let floor = floors.program("floor_tx")?;
            let mut lb_t = Vec::with_capacity(calls);
            let mut fl_t = Vec::with_capacity(calls);
            for chunk in class.frames.chunks(1000) {
                for f in chunk {
                    let (v, _, d) = packet::test_run(lb, ifindex, f)?;
                    if v != class.verdict {
                        bail!("{}: verdict {v}, expected {}", class.name, class.verdict);
                    }
                    lb_t.push(d);
                }
                for f in chunk {
                    let (_, _, d) = packet::test_run(floor, ifindex, f)?;
                    fl_t.push(d);
                }
            }
            out.push((class.name.to_string(), stat(lb_t), stat(fl_t)));
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
    drop(ns);

    let mut md = format!(
        "# XDP per-packet cost\n\nBPF_PROG_TEST_RUN, repeat = 1, {calls} calls per class and program, kernel-reported duration per call. Floor: `floor_tx` (same parse, then XDP_TX) on the same packets, interleaved in blocks of 1000 in the same run.\n\n| class | lb_xdp mean | median | p99 | floor mean | ratio (mean) |\n|---|---:|---:|---:|---:|---:|\n"
    );
    let mut rows = Vec::new();
    println!(
        "{:<45} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "class", "mean ns", "median", "p99", "floor", "ratio"
    );
    for (name, s, f) in &results {
        let ratio = s.mean_ns / f.mean_ns.max(1.0);
        println!(
            "{name:<45} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>7.2}",
            s.mean_ns, s.median_ns, s.p99_ns, f.mean_ns, ratio
        );
        md.push_str(&format!(
            "| {name} | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {ratio:.2} |\n",
            s.mean_ns, s.median_ns, s.p99_ns, f.mean_ns
        ));
        rows.push(json!({"class": name, "mean_ns": s.mean_ns, "median_ns": s.median_ns, "p99_ns": s.p99_ns,
            "floor_mean_ns": f.mean_ns, "floor_median_ns": f.median_ns, "ratio": ratio}));
    }
    // Forwarding modes side by side: lb_xdp's mean, and its median net of
    // the floor, DSR and FullNAT over NAT.
    md.push_str("\n## DSR and FullNAT against NAT (same run)\n\n| class | NAT class | mean ratio | net median ratio |\n|---|---|---:|---:|\n");
    println!(
        "\n{:<40} {:<42} {:>6} {:>6}",
        "class", "against NAT", "mean", "net"
    );
    let find = |n: &str| results.iter().find(|(name, _, _)| name == n);
    let mut modes = Vec::new();
    for (dsr, nat) in MODE_PAIRS {
        let (Some((_, d, df)), Some((_, n, nf))) = (find(dsr), find(nat)) else {
            continue;
        };
        let mean = d.mean_ns / n.mean_ns.max(1.0);
        let net = (d.median_ns - df.median_ns).max(1.0) / (n.median_ns - nf.median_ns).max(1.0);
        println!("{dsr:<40} {nat:<42} {mean:>6.2} {net:>6.2}");
        md.push_str(&format!("| {dsr} | {nat} | {mean:.2} | {net:.2} |\n"));
        modes.push(json!({"class": dsr, "nat": nat, "mean_ratio": mean, "net_median_ratio": net}));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("xdp.md"), md).context("writing xdp.md")?;
    std::fs::write(
        args.out.join("xdp.json"),
        serde_json::to_string_pretty(&json!({"calls": calls, "results": rows, "modes": modes}))?,
    )?;
    Ok(())
}
