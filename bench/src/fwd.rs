//! `bench fwd`: forwarding rate through the netns topology (client → lb →
//! real), these set-ups in the same run:
//!
//! 1. `lb_xdp`, this data plane, in each forwarding mode, one VIP per mode:
//!    NAT, DSR over IPIP, DSR over GUE and FullNAT;
//! 2. the kernel path a user would pick instead of NAT: nftables DNAT + IP
//!    forwarding, no XDP on the lb;
//! 3. a floor: an XDP program on the client-side interface that only
//!    redirects every frame to the real-side interface (no lookups).
//!
//! The generator is the `gen` XDP program run with BPF_PROG_TEST_RUN in
//! live-frames mode on the balancer's client-side veth (`l0`): each frame is
//! restored from a template and gets the next of `--flows` source ports, then
//! `gen` tail-calls the program under test (set-ups 1 and 3) or passes the
//! frame to the kernel stack (set-up 2). All set-ups see the same frames
//! (bar the VIP address) entering at the same point. The real's veth runs
//! `sink`, which counts and drops TCP/UDP (so NAT, FullNAT and GUE packets)
//! and IPIP packets with TCP/UDP inside, so the rate is what arrived at the
//! real; the real's own decapsulation is not part of it. The set-ups take
//! turns (one round measures each once, each round starting one further
//! on), so drift on a busy machine hits them alike, and the best of
//! `--runs` rounds is reported.
//! `gen`, `sink` and `floor_redirect` are the test object's (`xdp_test`);
//! `lb_xdp` is the production object's, tail-called across the two.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, DevMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use clap::Args;
use lb_common::{GenTemplate, GEN_FRAME_LEN};
use lb_userspace::{
    config::Config,
    l4::dataplane::{self, Dataplane, LoadOptions},
    testbed::packet::{self, Pkt},
    testbed::xdp_test::TestPrograms,
    testbed::{self, Netns, Topology},
};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub(crate) struct FwdBenchArgs {
    /// Frames the generator sends per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    pub packets: u32,
    /// Rounds (each measures every set-up once; the best is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Distinct source ports (so flows) the generator cycles through, one
    /// measurement per value. The rate of a stateful data plane falls as
    /// its flow state outgrows the CPU caches.
    #[arg(long, value_delimiter = ',', default_value = "16384,256")]
    pub flows: Vec<u32>,
    /// Run only these set-ups (nat, dsr, gue, fullnat, kernel, floor;
    /// `lb` is nat; default all), for profiling one of them. A partial run
    /// writes no results.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write fwd.md and fwd.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// A set-up under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Nat,
    DsrIpip,
    DsrGue,
    FullNat,
    Kernel,
    Floor,
}

const SETUPS: [Setup; 6] = [
    Setup::Nat,
    Setup::DsrIpip,
    Setup::DsrGue,
    Setup::FullNat,
    Setup::Kernel,
    Setup::Floor,
];

/// The VIPs of the DSR (IPIP and GUE) and FullNAT set-ups; NAT, the kernel
/// and the floor use `testbed::VIP4`.
const VIP4_DSR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 4);
const VIP4_GUE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const VIP4_FULLNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 5);

impl Setup {
    /// The `--only` name.
    fn name(self) -> &'static str {
        match self {
            Setup::Nat => "nat",
            Setup::DsrIpip => "dsr",
            Setup::DsrGue => "gue",
            Setup::FullNat => "fullnat",
            Setup::Kernel => "kernel",
            Setup::Floor => "floor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Setup::Nat => "lb_xdp NAT",
            Setup::DsrIpip => "lb_xdp DSR (IPIP)",
            Setup::DsrGue => "lb_xdp DSR (GUE)",
            Setup::FullNat => "lb_xdp FullNAT",
            Setup::Kernel => "kernel (nftables DNAT + forwarding)",
            Setup::Floor => "floor (XDP redirect only)",
        }
    }

    fn vip(self) -> Ipv4Addr {
        match self {
            Setup::DsrIpip => VIP4_DSR,
            Setup::DsrGue => VIP4_GUE,
            Setup::FullNat => VIP4_FULLNAT,
            Setup::Nat | Setup::Kernel | Setup::Floor => testbed::VIP4,
        }
    }

    /// A mode of this data plane (as opposed to the kernel or the floor).
    fn is_lb(self) -> bool {
        !matches!(self, Setup::Kernel | Setup::Floor)
    }
}

/// The best measurement of one set-up, protocol and flow count.
struct Row {
    setup: Setup,
    proto: &'static str,
    flows: u32,
    mpps: f64,
    delivered: f64,
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(p)
}

/// Runs `f` on a thread inside `ns` and waits for it.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|s| {
        s.spawn(|| {
            testbed::enter(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", ns.name))?
    })
}

fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let s = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no MAC for {dev}"))?;
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

fn sink_count(tp: &mut TestPrograms) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> = tp
        .ebpf()
        .map("SINK_COUNT")
        .ok_or_else(|| anyhow!("no SINK_COUNT"))?
        .try_into()?;
    Ok(m.get(&0, 0)?.iter().sum())
}

/// Injects `n` frames built from `frame` (source port varied by `gen`) at
/// `l0`; returns (frames counted at the real, generator seconds).
fn measure(tp: &mut TestPrograms, topo: &Topology, frame: &[u8], n: u32) -> Result<(u64, f64)> {
    let mut template = GenTemplate {
        bytes: [0; GEN_FRAME_LEN],
    };
    if frame.len() != GEN_FRAME_LEN {
        bail!(
            "generator frames must be {GEN_FRAME_LEN} bytes, not {}",
            frame.len()
        );
    }
    template.bytes.copy_from_slice(frame);
    {
        let mut t: Array<&mut MapData, GenTemplate> = tp
            .ebpf()
            .map_mut("GEN_TEMPLATE")
            .ok_or_else(|| anyhow!("no GEN_TEMPLATE"))?
            .try_into()?;
        t.set(0, template, 0)?;
    }
    let before = sink_count(tp)?;
    let l0 = in_ns(&topo.lb, || dataplane::ifindex("l0"))?;
    let gen = prog(tp.ebpf(), "gen")?;
    let secs = in_ns(&topo.lb, || {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&l0.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = n;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
        let t = Instant::now();
        gen.test_run(opts).context("live-frames test run")?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let after = sink_count(tp)?;
    Ok((after - before, secs))
}

/// What `gen` does after building a frame: 1 = pass to the kernel stack,
/// 2 = tail-call `next` (a program of either object).
fn gen_mode(tp: &mut TestPrograms, mode: u32, next: Option<ProgramFd>) -> Result<()> {
    if let Some(fd) = next {
        let mut pa: ProgramArray<&mut MapData> = tp
            .ebpf()
            .map_mut("GEN_NEXT")
            .ok_or_else(|| anyhow!("no GEN_NEXT"))?
            .try_into()?;
        pa.set(0, &fd, 0)?;
    }
    let mut m: Array<&mut MapData, u32> = tp
        .ebpf()
        .map_mut("GEN_MODE")
        .ok_or_else(|| anyhow!("no GEN_MODE"))?
        .try_into()?;
    m.set(0, mode, 0)?;
    Ok(())
}

/// Sets the number of distinct source ports `gen` cycles through.
fn gen_flows(tp: &mut TestPrograms, flows: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut st: PerCpuArray<&mut MapData, u64> = tp
        .ebpf()
        .map_mut("GEN_STATE")
        .ok_or_else(|| anyhow!("no GEN_STATE"))?
        .try_into()?;
    st.set(1, PerCpuValues::try_from(vec![u64::from(flows); cpus])?, 0)?;
    Ok(())
}

/// `lb_xdp`'s conntrack misses so far (new flows, and flows whose entry
/// was evicted), over all CPUs.
fn ct_misses(dp: &mut Dataplane) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> = dp
        .ebpf()
        .map("GLOBAL_STATS")
        .ok_or_else(|| anyhow!("no GLOBAL_STATS"))?
        .try_into()?;
    Ok(m.get(&lb_common::stat::CT_MISS, 0)?.iter().sum())
}

/// The generator's two frames (UDP to port 53, TCP SYN to port 80) to
/// `vip`, both exactly GEN_FRAME_LEN (64) bytes: `gen` restores them from
/// a template of that size.
fn frames(vip: Ipv4Addr, src_mac: [u8; 6], dst_mac: [u8; 6]) -> [(&'static str, Vec<u8>); 2] {
    let vip = IpAddr::V4(vip);
    let client = IpAddr::V4(testbed::CLIENT4);
    let mut udp = Pkt::udp(client, 1024, vip, 53);
    udp.payload = vec![0u8; 22];
    let mut tcp = Pkt::tcp(client, 1024, vip, 80, 0x02);
    tcp.payload = vec![0u8; 10];
    for p in [&mut udp, &mut tcp] {
        p.src_mac = src_mac;
        p.dst_mac = dst_mac;
    }
    [("udp", udp.bytes()), ("tcp", tcp.bytes())]
}

/// One VIP per mode and protocol, all to the one real: NAT and FullNAT to
/// real ports 8053 and 8080, DSR keeping the VIP's port. FullNAT's SNAT
/// address is the lb's own on the real-side link (`l1`); DSR's outer
/// sources come from a /24 (host bits from the flow hash).
fn bench_config() -> Result<Config> {
    let real = testbed::real4(1);
    let mut cfg = String::from("encap_source = [\"198.18.250.0/24\"]\n");
    for (vip, mode) in [
        (testbed::VIP4, "mode = \"nat\"\n"),
        (VIP4_DSR, "mode = \"dsr\"\n"),
        (VIP4_GUE, "mode = \"dsr\"\nencap = \"gue\"\n"),
        (
            VIP4_FULLNAT,
            "mode = \"fullnat\"\nsnat = [\"198.18.11.1\"]\n",
        ),
    ] {
        let dsr = mode.contains("dsr");
        for (port, proto, real_port) in [(53, "udp", 8053), (80, "tcp", 8080)] {
            cfg.push_str(&format!(
                "\n[[vip]]\naddress = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n{mode}[[vip.real]]\naddress = \"{real}\"\n"
            ));
            if !dsr {
                cfg.push_str(&format!("port = {real_port}\n"));
            }
        }
    }
    Config::parse(&cfg).map_err(|e| anyhow!("{e}"))
}

/// Calls of the sink per frame kind in [`sink_costs`].
const SINK_REPEAT: u32 = 200_000;

/// The sink's own cost per frame, for the frames each set-up delivers to
/// the real: `lb_xdp`'s output for each mode (one test-run of `lb_xdp` on
/// the generator's frame, as received on `l0`), the floor's (the
/// generator's frame untouched). BPF_PROG_TEST_RUN with `repeat` (the sink
/// does not change the frame), kernel-reported mean, best of 5 passes over
/// all kinds. The sink's share differs by frame kind (an IPIP frame goes
/// through the parser to its pass verdict, then the tunnel check), so this
/// says how much of a difference between modes is the receiver's.
fn sink_costs(
    dp: &Dataplane,
    tp: &TestPrograms,
    topo: &Topology,
    setups: &[Setup],
    macs: ([u8; 6], [u8; 6]),
) -> Result<Vec<(Setup, &'static str, f64)>> {
    let l0 = in_ns(&topo.lb, || dataplane::ifindex("l0"))?;
    let mut kinds = Vec::new();
    for &s in setups.iter().filter(|&&s| s != Setup::Kernel) {
        for (proto, frame) in frames(s.vip(), macs.0, macs.1) {
            let out = if s.is_lb() {
                let lb = dp.program(dataplane::PROGRAM)?;
                let (verdict, out, _) = in_ns(&topo.lb, || packet::test_run(lb, l0, &frame))?;
                if verdict != 4 {
                    bail!(
                        "{} {proto}: lb_xdp verdict {verdict}, not XDP_REDIRECT",
                        s.label()
                    );
                }
                out
            } else {
                frame
            };
            kinds.push((s, proto, out, f64::MAX));
        }
    }
    let sink = tp.program("sink")?;
    for _ in 0..5 {
        for (_, _, frame, best) in &mut kinds {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.repeat = SINK_REPEAT;
            let r = sink.test_run(opts).context("sink test run")?;
            if r.return_value != 1 {
                bail!(
                    "the sink passed a frame it should count (verdict {})",
                    r.return_value
                );
            }
            *best = best.min(r.duration.as_nanos() as f64);
        }
    }
    Ok(kinds.into_iter().map(|(s, p, _, ns)| (s, p, ns)).collect())
}

pub(crate) fn run(args: &FwdBenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench fwd needs root (network namespaces, XDP)");
    }
    let names: Vec<&str> = SETUPS.iter().map(|s| s.name()).collect();
    for o in &args.only {
        if o != "lb" && !names.contains(&o.as_str()) {
            bail!("--only: unknown set-up {o:?} ({})", names.join(", "));
        }
    }
    if args.flows.is_empty() {
        bail!("--flows: at least one number of flows");
    }
    for &f in &args.flows {
        if !(1..=64511).contains(&f) {
            bail!("--flows: 1 to 64511 source ports, not {f}");
        }
    }
    let wanted = |s: Setup| {
        args.only.is_empty()
            || args
                .only
                .iter()
                .any(|o| o == s.name() || (o == "lb" && s == Setup::Nat))
    };
    let setups: Vec<Setup> = SETUPS.into_iter().filter(|&s| wanted(s)).collect();
    let topo = Topology::build(1)?;
    let l0_mac = mac_of(&topo.lb, "l0")?;
    let c0_mac = mac_of(&topo.client, "c0")?;

    let cfg = bench_config()?;
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    dp.set_encap_sources(cfg.encap_sources);
    in_ns(&topo.lb, || dp.apply(&cfg.vips))?;
    let mut tp = TestPrograms::load()?;

    // The sink on the real's interface, for every set-up.
    {
        let sink = prog(tp.ebpf(), "sink")?;
        in_ns(&topo.reals[0], || {
            sink.attach_to_if_index(dataplane::ifindex("r0")?, XdpMode::Driver)?;
            Ok(())
        })?;
    }

    // This data plane: tail-called by the generator, as if attached to l0.
    in_ns(&topo.lb, || {
        dp.resolve_neighbours();
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    let idx: Vec<u32> = in_ns(&topo.lb, || {
        topo.lb_ifaces
            .iter()
            .map(|i| dataplane::ifindex(i))
            .collect()
    })?;
    // A devmap entry binds its ifindex to a device of the inserting
    // thread's namespace: insert from inside the lb namespace.
    in_ns(&topo.lb, || {
        for &i in &idx {
            dp.add_tx_port(i)?;
        }
        Ok(())
    })?;
    let lb_xdp = prog(dp.ebpf(), dataplane::PROGRAM)?.fd()?.try_clone()?;
    // The floor's one egress port.
    {
        let ebpf = tp.ebpf();
        in_ns(&topo.lb, || {
            let l1 = dataplane::ifindex("l1")?;
            let mut m: DevMap<&mut MapData> = ebpf
                .map_mut("FLOOR_PORT")
                .ok_or_else(|| anyhow!("no FLOOR_PORT"))?
                .try_into()?;
            m.set(0, l1, None, 0)?;
            Ok(())
        })?;
    }
    let floor = prog(tp.ebpf(), "floor_redirect")?.fd()?.try_clone()?;
    // The kernel's DNAT rules stay in place throughout: frames the XDP
    // set-ups redirect never reach the stack.
    if wanted(Setup::Kernel) {
        topo.lb.exec(
            "nft",
            &[&format!(
                "add table ip lbbench; add chain ip lbbench pre {{ type nat hook prerouting priority -100; }}; \
                 add rule ip lbbench pre ip daddr {v} udp dport 53 dnat to {r}:8053; \
                 add rule ip lbbench pre ip daddr {v} tcp dport 80 dnat to {r}:8080",
                v = testbed::VIP4,
                r = testbed::real4(1)
            )],
        )?;
    }
    let select = |tp: &mut TestPrograms, s: Setup| match s {
        Setup::Kernel => gen_mode(tp, 1, None),
        Setup::Floor => gen_mode(tp, 2, Some(floor.try_clone()?)),
        _ => gen_mode(tp, 2, Some(lb_xdp.try_clone()?)),
    };

    // Warm-up: every flow of every mode gets its conntrack entries (and
    // FullNAT its ports) before anything is measured.
    let max_flows = args.flows.iter().copied().max().unwrap_or(1);
    for &s in setups.iter().filter(|s| s.is_lb()) {
        select(&mut tp, s)?;
        gen_flows(&mut tp, max_flows)?;
        for (_, frame) in frames(s.vip(), c0_mac, l0_mac) {
            measure(&mut tp, &topo, &frame, max_flows * 2)?;
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut misses = vec![0u64; SETUPS.len()];
    for round in 0..args.runs.max(1) {
        for &flows in &args.flows {
            gen_flows(&mut tp, flows)?;
            // Each round starts one set-up further on, so that none is
            // always the first after a change of flow count.
            let start = round % setups.len();
            for &s in setups[start..].iter().chain(&setups[..start]) {
                select(&mut tp, s)?;
                for (proto, frame) in frames(s.vip(), c0_mac, l0_mac) {
                    let ct0 = ct_misses(&mut dp)?;
                    let (got, secs) = measure(&mut tp, &topo, &frame, args.packets)?;
                    if s.is_lb() {
                        misses[s as usize] += ct_misses(&mut dp)? - ct0;
                    }
                    let mpps = got as f64 / secs / 1e6;
                    let delivered = got as f64 / f64::from(args.packets);
                    if delivered < 0.5 {
                        bail!(
                            "{}, {proto}, {flows} flows: only {:.1}% of the frames reached the real's sink",
                            s.label(),
                            delivered * 100.0
                        );
                    }
                    println!(
                        "round {} {:<36} {proto} {flows:>5} flows: {mpps:>7.3} Mpps ({:.1}% delivered)",
                        round + 1,
                        s.label(),
                        delivered * 100.0
                    );
                    match rows
                        .iter_mut()
                        .find(|r| r.setup == s && r.proto == proto && r.flows == flows)
                    {
                        Some(r) if r.mpps >= mpps => {}
                        Some(r) => {
                            r.mpps = mpps;
                            r.delivered = delivered;
                        }
                        None => rows.push(Row {
                            setup: s,
                            proto,
                            flows,
                            mpps,
                            delivered,
                        }),
                    }
                }
            }
        }
    }
    if wanted(Setup::Kernel) {
        topo.lb.exec("nft", &["delete table ip lbbench"])?;
    }
    let sink_ns = sink_costs(&dp, &tp, &topo, &setups, (c0_mac, l0_mac))?;
    for (s, proto, ns) in &sink_ns {
        println!("sink, per frame of {:<26} {proto}: {ns:>5.1} ns", s.label());
    }
    for &s in setups.iter().filter(|s| s.is_lb()) {
        println!(
            "{}: {} conntrack misses while measured (0 = every frame an established flow)",
            s.label(),
            misses[s as usize]
        );
    }
    if !args.only.is_empty() {
        return Ok(());
    }
    report(args, &rows, &misses, &sink_ns)
}

/// Writes fwd.md and fwd.json, and prints the ratios.
fn report(
    args: &FwdBenchArgs,
    rows: &[Row],
    misses: &[u64],
    sink_ns: &[(Setup, &'static str, f64)],
) -> Result<()> {
    let rate = |s: Setup, proto: &str, flows: u32| {
        rows.iter()
            .find(|r| r.setup == s && r.proto == proto && r.flows == flows)
            .map_or(0.0, |r| r.mpps)
    };
    let ns = |mpps: f64| 1e3 / mpps.max(1e-9);
    let sink_of = |s: Setup, proto: &str| {
        sink_ns
            .iter()
            .find(|k| k.0 == s && k.1 == proto)
            .map_or(0.0, |k| k.2)
    };
    let flows_list = args
        .flows
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" and ");
    let mut md = format!(
        "# Forwarding rate\n\nnetns lb → real over veth; frames injected at the lb's client-side veth by `gen` in live-frames test-run mode ({} frames per measurement, best of {} rounds, the set-ups taking turns in each), {flows_list} source ports; counted by an XDP sink on the real's interface (TCP/UDP, and IPIP with TCP/UDP inside). ns/frame is the whole path on one CPU: generator, the set-up's work, veth, sink.\n\n| set-up | protocol |",
        args.packets, args.runs
    );
    for f in &args.flows {
        md.push_str(&format!(" Mpps, {f} flows | ns/frame |"));
    }
    md.push_str(" delivered |\n|---|---|");
    for _ in &args.flows {
        md.push_str("---:|---:|");
    }
    md.push_str("---:|\n");
    for s in SETUPS {
        for proto in ["udp", "tcp"] {
            md.push_str(&format!("| {} | {proto} |", s.label()));
            let mut delivered: f64 = 1.0;
            for &f in &args.flows {
                let m = rate(s, proto, f);
                md.push_str(&format!(" {m:.2} | {:.0} |", ns(m)));
                if let Some(r) = rows
                    .iter()
                    .find(|r| r.setup == s && r.proto == proto && r.flows == f)
                {
                    delivered = delivered.min(r.delivered);
                }
            }
            md.push_str(&format!(" {:.1}% |\n", delivered * 100.0));
        }
    }

    md.push_str(
        "\nEach mode against the floor and NAT of the same run. Rate ratios: the mode's Mpps over the floor's and over NAT's. Cost ratios: ns/frame over NAT's, whole path and net of the floor (the floor's ns/frame taken off both), and whole path with the sink's extra cost for the mode's frames (table below) taken off; the target is ≤ 1.15.\n\n| mode | flows | protocol | ÷ floor (rate) | ÷ NAT (rate) | cost ÷ NAT | net cost ÷ NAT | cost ÷ NAT, sink difference removed |\n|---|---:|---|---:|---:|---:|---:|---:|\n",
    );
    println!(
        "\n{:<20} {:>6} {:<5} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "mode", "flows", "proto", "÷floor", "÷NAT", "cost÷NAT", "net÷NAT", "sink-adj"
    );
    let mut ratios = Vec::new();
    for s in [Setup::Nat, Setup::DsrIpip, Setup::DsrGue, Setup::FullNat] {
        for &f in &args.flows {
            for proto in ["udp", "tcp"] {
                let m = rate(s, proto, f);
                let nat = rate(Setup::Nat, proto, f);
                let fl = rate(Setup::Floor, proto, f);
                let over_floor = m / fl.max(1e-9);
                let over_nat = m / nat.max(1e-9);
                let cost = ns(m) / ns(nat);
                let net = (ns(m) - ns(fl)).max(1e-9) / (ns(nat) - ns(fl)).max(1e-9);
                let adj = (ns(m) - (sink_of(s, proto) - sink_of(Setup::Nat, proto))) / ns(nat);
                println!(
                    "{:<20} {f:>6} {proto:<5} {over_floor:>8.2} {over_nat:>8.2} {cost:>9.2} {net:>9.2} {adj:>9.2}",
                    s.label()
                );
                md.push_str(&format!(
                    "| {} | {f} | {proto} | {over_floor:.2} | {over_nat:.2} | {cost:.2} | {net:.2} | {adj:.2} |\n",
                    s.label()
                ));
                ratios.push(json!({"setup": s.name(), "flows": f, "protocol": proto,
                    "over_floor": over_floor, "over_nat": over_nat,
                    "cost_over_nat": cost, "net_cost_over_nat": net, "sink_adjusted_cost_over_nat": adj}));
            }
        }
    }

    md.push_str(
        "\n| flows | protocol | NAT ÷ kernel path (target ≥ 4) | NAT ÷ floor (target ≥ 0.8) |\n|---:|---|---:|---:|\n",
    );
    let mut kernel = Vec::new();
    for &f in &args.flows {
        for proto in ["udp", "tcp"] {
            let nat = rate(Setup::Nat, proto, f);
            let k = rate(Setup::Kernel, proto, f).max(1e-9);
            let fl = rate(Setup::Floor, proto, f).max(1e-9);
            println!(
                "{f} flows {proto}: NAT/kernel = {:.2}, NAT/floor = {:.2}",
                nat / k,
                nat / fl
            );
            md.push_str(&format!(
                "| {f} | {proto} | {:.2} | {:.2} |\n",
                nat / k,
                nat / fl
            ));
            kernel.push(json!({"flows": f, "protocol": proto, "lb_over_kernel": nat / k, "lb_over_floor": nat / fl}));
        }
    }
    let missed: Vec<String> = SETUPS
        .iter()
        .filter(|s| s.is_lb())
        .map(|&s| format!("{} {}", s.label(), misses[s as usize]))
        .collect();
    md.push_str(&format!(
        "\nConntrack misses while measured (after a warm-up that gives every flow its entries): {}.\n",
        missed.join(", ")
    ));
    md.push_str(&format!(
        "\nThe sink's own cost per delivered frame (BPF_PROG_TEST_RUN of `sink` on each set-up's output frame, repeat {SINK_REPEAT}, best of 5; part of every ns/frame above):\n\n| set-up | udp | tcp |\n|---|---:|---:|\n"
    ));
    for s in SETUPS.into_iter().filter(|&s| s != Setup::Kernel) {
        md.push_str(&format!(
            "| {} | {:.1} ns | {:.1} ns |\n",
            s.label(),
            sink_of(s, "udp"),
            sink_of(s, "tcp")
        ));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("fwd.md"), md)?;
    let results: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({"setup": r.setup.name(), "label": r.setup.label(), "protocol": r.proto,
                "flows": r.flows, "mpps": r.mpps, "delivered": r.delivered})
        })
        .collect();
    let ct: serde_json::Map<String, serde_json::Value> = SETUPS
        .iter()
        .filter(|s| s.is_lb())
        .map(|&s| (s.name().to_string(), json!(misses[s as usize])))
        .collect();
    let sink_json: Vec<_> = sink_ns
        .iter()
        .map(|(s, p, ns)| json!({"setup": s.name(), "protocol": p, "ns": ns}))
        .collect();
    std::fs::write(
        args.out.join("fwd.json"),
        serde_json::to_string_pretty(&json!({
            "packets": args.packets, "runs": args.runs, "flows": args.flows,
            "results": results, "modes": ratios, "kernel": kernel, "conntrack_misses": ct,
            "sink_ns": sink_json,
        }))?,
    )?;
    Ok(())
}
