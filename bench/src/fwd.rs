//! `bench fwd`: forwarding rate through the netns topology (client → lb →
//! real), three set-ups in the same run:
//!
//! 1. `lb_xdp`: this data plane on the lb's interfaces;
//! 2. the kernel path a user would pick instead: nftables DNAT + IP
//!    forwarding, no XDP on the lb;
//! 3. a floor: an XDP program on the client-side interface that only
//!    redirects every frame to the real-side interface (no lookups).
//!
//! The generator is the `gen` XDP program run with BPF_PROG_TEST_RUN in
//! live-frames mode on the balancer's client-side veth (`l0`): each frame is
//! restored from a template and gets the next of `--flows` source ports, then
//! `gen` tail-calls the program under test (set-ups 1 and 3) or passes the
//! frame to the kernel stack (set-up 2). All three set-ups see the same
//! frames entering at the same point. The real's veth runs `sink`, which
//! counts and drops TCP/UDP, so the rate is what arrived at the real.
//! `gen`, `sink` and `floor_redirect` are the test object's (`xdp_test`);
//! `lb_xdp` is the production object's, tail-called across the two.

use std::{
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
    testbed::packet::Pkt,
    testbed::xdp_test::TestPrograms,
    testbed::{self, Netns, Topology},
};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub(crate) struct FwdBenchArgs {
    /// Frames the generator sends per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    pub packets: u32,
    /// Measurements per set-up and protocol (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Distinct source ports (so flows) the generator cycles through. The
    /// rate of a stateful data plane falls as its flow state outgrows the
    /// CPU caches.
    #[arg(long, default_value_t = 16384)]
    pub flows: u32,
    /// Run only these set-ups (lb, kernel, floor; default all three), for
    /// profiling one of them. A partial run writes no results.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write fwd.md and fwd.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
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

pub(crate) fn run(args: &FwdBenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench fwd needs root (network namespaces, XDP)");
    }
    for o in &args.only {
        if !["lb", "kernel", "floor"].contains(&o.as_str()) {
            bail!("--only: unknown set-up {o:?} (lb, kernel, floor)");
        }
    }
    if !(1..=64511).contains(&args.flows) {
        bail!("--flows: 1 to 64511 source ports, not {}", args.flows);
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let topo = Topology::build(1)?;
    let l0_mac = mac_of(&topo.lb, "l0")?;
    let c0_mac = mac_of(&topo.client, "c0")?;
    let vip = std::net::IpAddr::V4(testbed::VIP4);
    let client = std::net::IpAddr::V4(testbed::CLIENT4);
    // Both frames are exactly GEN_FRAME_LEN (64) bytes: gen restores them
    // from a template of that size.
    let mut udp = Pkt::udp(client, 1024, vip, 53);
    udp.payload = vec![0u8; 22];
    let mut tcp = Pkt::tcp(client, 1024, vip, 80, 0x02);
    tcp.payload = vec![0u8; 10];
    for p in [&mut udp, &mut tcp] {
        p.src_mac = c0_mac;
        p.dst_mac = l0_mac;
    }
    let frames = [("udp", udp.bytes()), ("tcp", tcp.bytes())];

    let cfg = Config::parse(&format!(
        "[[vip]]\naddress = \"{v}\"\nport = 53\nprotocol = \"udp\"\n[[vip.real]]\naddress = \"{r}\"\nport = 8053\n\n[[vip]]\naddress = \"{v}\"\nport = 80\nprotocol = \"tcp\"\n[[vip.real]]\naddress = \"{r}\"\nport = 8080\n",
        v = testbed::VIP4,
        r = testbed::real4(1)
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    dp.apply(&cfg.vips)?;
    let mut tp = TestPrograms::load()?;
    {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut st: PerCpuArray<&mut MapData, u64> = tp
            .ebpf()
            .map_mut("GEN_STATE")
            .ok_or_else(|| anyhow!("no GEN_STATE"))?
            .try_into()?;
        st.set(
            1,
            PerCpuValues::try_from(vec![u64::from(args.flows); cpus])?,
            0,
        )?;
    }

    // The sink on the real's interface, for all three set-ups.
    {
        let sink = prog(tp.ebpf(), "sink")?;
        in_ns(&topo.reals[0], || {
            sink.attach_to_if_index(dataplane::ifindex("r0")?, XdpMode::Driver)?;
            Ok(())
        })?;
    }

    let mut results: Vec<(String, &str, f64, f64)> = Vec::new();
    let best = |tp: &mut TestPrograms,
                setup: &str,
                results: &mut Vec<(String, &str, f64, f64)>|
     -> Result<()> {
        for (proto, frame) in &frames {
            let mut top = (0.0f64, 0.0f64);
            for _ in 0..args.runs.max(1) {
                let (got, secs) = measure(tp, &topo, frame, args.packets)?;
                let mpps = got as f64 / secs / 1e6;
                let delivered = got as f64 / args.packets as f64;
                if mpps > top.0 {
                    top = (mpps, delivered);
                }
            }
            println!(
                "{setup:<40} {proto}: {:>7.3} Mpps ({:.1}% delivered)",
                top.0,
                top.1 * 100.0
            );
            results.push((setup.to_string(), proto, top.0, top.1));
        }
        Ok(())
    };

    // 1. This data plane (tail-called by the generator, as if attached to l0).
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
    gen_mode(&mut tp, 2, Some(lb_xdp))?;
    if wanted("lb") {
        best(&mut tp, "lb_xdp (this data plane)", &mut results)?;
    }

    // 2. The kernel: nftables DNAT + forwarding.
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
    gen_mode(&mut tp, 1, None)?;
    if wanted("kernel") {
        best(&mut tp, "kernel (nftables DNAT + forwarding)", &mut results)?;
    }
    topo.lb.exec("nft", &["delete table ip lbbench"])?;

    // 3. Floor: redirect only.
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
    gen_mode(&mut tp, 2, Some(floor))?;
    if wanted("floor") {
        best(&mut tp, "floor (XDP redirect only)", &mut results)?;
    }
    if !args.only.is_empty() {
        return Ok(());
    }

    let rate = |setup: &str, proto: &str| {
        results
            .iter()
            .find(|r| r.0.starts_with(setup) && r.1 == proto)
            .map_or(0.0, |r| r.2)
    };
    let mut md = format!(
        "# Forwarding rate\n\nnetns lb → real over veth; frames injected at the lb's client-side veth by `gen` in live-frames test-run mode ({} frames per run, best of {}), {} source ports; counted by an XDP sink on the real's interface. ns/frame is the whole path on one CPU: generator, the set-up's work, veth, sink.\n\n| set-up | protocol | Mpps | ns/frame | delivered |\n|---|---|---:|---:|---:|\n",
        args.packets, args.runs, args.flows
    );
    for (s, p, mpps, d) in &results {
        md.push_str(&format!(
            "| {s} | {p} | {mpps:.3} | {:.0} | {:.1}% |\n",
            1e3 / mpps.max(1e-9),
            d * 100.0
        ));
    }
    md.push_str(
        "\n| protocol | lb ÷ kernel (target ≥ 4) | lb ÷ floor (target ≥ 0.8) |\n|---|---:|---:|\n",
    );
    let mut ratios = Vec::new();
    for proto in ["udp", "tcp"] {
        let lb = rate("lb_xdp", proto);
        let k = rate("kernel", proto).max(1e-9);
        let f = rate("floor", proto).max(1e-9);
        println!(
            "{proto}: lb/kernel = {:.2}, lb/floor = {:.2}",
            lb / k,
            lb / f
        );
        md.push_str(&format!("| {proto} | {:.2} | {:.2} |\n", lb / k, lb / f));
        ratios.push(json!({"protocol": proto, "lb_over_kernel": lb / k, "lb_over_floor": lb / f}));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("fwd.md"), md)?;
    let rows: Vec<_> = results
        .iter()
        .map(|(s, p, m, d)| json!({"setup": s, "protocol": p, "mpps": m, "delivered": d}))
        .collect();
    std::fs::write(
        args.out.join("fwd.json"),
        serde_json::to_string_pretty(
            &json!({"packets": args.packets, "runs": args.runs, "flows": args.flows, "results": rows, "ratios": ratios}),
        )?,
    )?;
    Ok(())
}
