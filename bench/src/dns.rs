//! DNS benchmark: `dnsperf` against our server, NSD and (when installed)
//! Knot, serving the same zone with the same query file, one after the other
//! in one run. Each server is pinned to the same core (`--server-cpu`),
//! dnsperf to another (`--client-cpu`). Results: Markdown + JSON.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lb_userspace::dns::{
    config::{DnsConfig, ZoneConfig},
    DnsServer,
};

#[derive(Debug, Clone, Args)]
pub(crate) struct DnsBenchArgs {
    /// Seconds of load per server.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// dnsperf concurrent clients (-c).
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Outstanding queries per client budget (dnsperf -q).
    #[arg(long, default_value_t = 200)]
    pub outstanding: u32,
    /// Core the servers run on.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    /// Core dnsperf runs on.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: u32,
    /// Zone file to serve (origin example.com.).
    #[arg(long)]
    pub zone: Option<PathBuf>,
    /// Skip Knot even when it is installed.
    #[arg(long)]
    pub no_knot: bool,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Default)]
struct PerfResult {
    server: String,
    qps: f64,
    avg_latency_ms: f64,
    min_latency_ms: f64,
    max_latency_ms: f64,
    stddev_latency_ms: f64,
    sent: u64,
    completed: u64,
    lost: u64,
    noerror: u64,
}

fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0")?;
        let p = u.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port on 127.0.0.1")
}

fn which(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn default_zone() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lb-userspace/tests/data/dns/example.com.zone")
}

/// Queries covering positive answers, CNAMEs, wildcards, NXDOMAIN, NODATA
/// and referrals, in proportions typical of an authoritative server.
fn query_file(dir: &Path) -> Result<PathBuf> {
    let q = [
        ("example.com", "A", 10),
        ("example.com", "AAAA", 4),
        ("example.com", "MX", 2),
        ("example.com", "NS", 1),
        ("www.example.com", "A", 10),
        ("web.example.com", "AAAA", 5),
        ("mail.example.com", "A", 3),
        ("_sip._tcp.example.com", "SRV", 1),
        ("x1.wild.example.com", "A", 3),
        ("nope.example.com", "A", 4),
        ("web.example.com", "MX", 2),
        ("host.child.example.com", "A", 2),
        ("multi.example.com", "TXT", 1),
    ];
    let mut text = String::new();
    for (n, t, w) in q {
        for _ in 0..w {
            writeln!(text, "{n} {t}").unwrap();
        }
    }
    let p = dir.join("queries.txt");
    std::fs::write(&p, text)?;
    Ok(p)
}

fn wait_ready(addr: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    // A minimal SOA query for example.com.
    let q: Vec<u8> = [
        &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
        b"\x07example\x03com\x00",
        &[0, 6, 0, 1],
    ]
    .concat();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        sock.send_to(&q, addr)?;
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 12 && buf[3].trailing_zeros() >= 4 {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("server on {addr} did not answer within 15s")
}

fn num_after(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let rest = line.split_once(':')?.1.trim();
    rest.split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

fn paren_num(text: &str, key: &str, inner: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let i = line.find(inner)? + inner.len();
    line[i..]
        .trim_start()
        .split(|c: char| c == ',' || c == ')' || c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

fn run_dnsperf(
    args: &DnsBenchArgs,
    name: &str,
    addr: SocketAddr,
    queries: &Path,
) -> Result<PerfResult> {
    wait_ready(addr)?;
    let out = Command::new("taskset")
        .args(["-c", &args.client_cpu.to_string()])
        .arg(which("dnsperf").context("dnsperf not found (Debian package dnsperf)")?)
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &args.duration.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-q", &args.outstanding.to_string()])
        .args(["-T", "1"])
        .stdin(Stdio::null())
        .output()
        .context("run dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dnsperf against {name} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = |v: Option<f64>| v.unwrap_or(0.0);
    let r = PerfResult {
        server: name.to_string(),
        qps: s(num_after(&text, "Queries per second")),
        avg_latency_ms: s(num_after(&text, "Average Latency (s)")) * 1000.0,
        min_latency_ms: s(paren_num(&text, "Average Latency (s)", "min")) * 1000.0,
        max_latency_ms: s(paren_num(&text, "Average Latency (s)", "max")) * 1000.0,
        stddev_latency_ms: s(num_after(&text, "Latency StdDev (s)")) * 1000.0,
        sent: s(num_after(&text, "Queries sent")) as u64,
        completed: s(num_after(&text, "Queries completed")) as u64,
        lost: s(num_after(&text, "Queries lost")) as u64,
        noerror: paren_num(&text, "Response codes", "NOERROR").map_or(0, |v| v as u64),
    };
    if r.qps <= 0.0 {
        bail!("could not read dnsperf output for {name}:\n{text}");
    }
    println!(
        "{name:>6}: {:>10.0} q/s, avg {:.3} ms, lost {}",
        r.qps, r.avg_latency_ms, r.lost
    );
    Ok(r)
}

fn pin_self(cpu: u32) -> Result<()> {
    // All threads of this process (the tokio workers serving DNS included).
    let st = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("run taskset (util-linux)")?;
    if !st.success() {
        bail!("taskset could not pin the benchmark to cpu {cpu}");
    }
    Ok(())
}

fn bench_ours(args: &DnsBenchArgs, zone: &Path, queries: &Path) -> Result<PerfResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let port = free_port()?;
    let cfg = DnsConfig {
        listen: vec![format!("127.0.0.1:{port}")],
        zone: vec![ZoneConfig {
            name: "example.com.".into(),
            file: zone.display().to_string(),
        }],
        udp_workers: Some(1),
        ..DnsConfig::default()
    };
    let mut errors = Vec::new();
    let settings = cfg
        .settings("dns", &mut errors)
        .filter(|_| errors.is_empty())
        .ok_or_else(|| anyhow!("bench DNS config: {errors:?}"))?;
    let srv = rt.block_on(DnsServer::start(&settings))?;
    pin_self(args.server_cpu)?;
    let addr = srv.udp_addrs()[0];
    let r = run_dnsperf(args, "lb", addr, queries);
    rt.block_on(srv.shutdown());
    r
}

fn bench_nsd(args: &DnsBenchArgs, zone: &Path, queries: &Path) -> Result<PerfResult> {
    let nsd = which("nsd").context("nsd not found (Debian package nsd)")?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let port = free_port()?;
    let zf = dir.path().join("zone");
    std::fs::copy(zone, &zf)?;
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 0\n  rrl-ratelimit: 0\nremote-control:\n  control-enable: no\nzone:\n  name: example.com\n  zonefile: \"{}\"\n",
        zf.display()
    );
    let cf = dir.path().join("nsd.conf");
    std::fs::write(&cf, conf)?;
    measure_peer(args, "nsd", &nsd, &["-d", "-c"], &cf, port, queries)
}

/// Runs a peer server (`bin flags... conf`) on the server CPU and measures
/// it with dnsperf on 127.0.0.1:`port`; the server stops when done.
fn measure_peer(
    args: &DnsBenchArgs,
    name: &str,
    bin: &Path,
    flags: &[&str],
    conf: &Path,
    port: u16,
    queries: &Path,
) -> Result<PerfResult> {
    let _p = Proc(
        Command::new("taskset")
            .args(["-c", &args.server_cpu.to_string()])
            .arg(bin)
            .args(flags)
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    run_dnsperf(
        args,
        name,
        SocketAddr::from(([127, 0, 0, 1], port)),
        queries,
    )
}

fn bench_knot(args: &DnsBenchArgs, zone: &Path, queries: &Path) -> Result<PerfResult> {
    let knotd = which("knotd").context("knotd not found (Debian package knot)")?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let port = free_port()?;
    let zf = dir.path().join("example.com.zone");
    std::fs::copy(zone, &zf)?;
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: \"{d}\"\nlog:\n  - target: stderr\n    any: error\ntemplate:\n  - id: default\n    storage: \"{d}\"\n    journal-content: none\n    zonefile-sync: -1\n    semantic-checks: off\nzone:\n  - domain: example.com\n    file: \"{}\"\n",
        zf.display()
    );
    let cf = dir.path().join("knot.conf");
    std::fs::write(&cf, conf)?;
    measure_peer(args, "knot", &knotd, &["-c"], &cf, port, queries)
}

/// Runs the benchmark and writes `dns.md` and `dns.json` under `args.out`.
pub(crate) fn run(args: &DnsBenchArgs) -> Result<()> {
    if args.duration == 0 || args.duration > 600 {
        bail!("--duration must be 1..=600 seconds");
    }
    which("dnsperf").context("dnsperf not found (Debian package dnsperf)")?;
    which("taskset").context("taskset not found (Debian package util-linux)")?;
    let zone = args.zone.clone().unwrap_or_else(default_zone);
    let tmp = tempfile::tempdir()?;
    let queries = query_file(tmp.path())?;

    // Peers first: pinning ourselves applies to the rest of this process.
    let mut results = vec![bench_nsd(args, &zone, &queries)?];
    if !args.no_knot && which("knotd").is_some() {
        match bench_knot(args, &zone, &queries) {
            Ok(r) => results.push(r),
            Err(e) => eprintln!("knot skipped: {e:#}"),
        }
    }
    results.insert(0, bench_ours(args, &zone, &queries)?);

    let ours = results[0].qps;
    let mut md = String::new();
    writeln!(md, "# DNS benchmark\n").unwrap();
    writeln!(
        md,
        "dnsperf, {} s per server, {} clients, {} outstanding, one UDP worker per server on cpu {}, dnsperf on cpu {}. Zone: `{}`.\n",
        args.duration,
        args.clients,
        args.outstanding,
        args.server_cpu,
        args.client_cpu,
        zone.file_name().unwrap_or_default().to_string_lossy()
    )
    .unwrap();
    writeln!(
        md,
        "| server | queries/s | avg ms | min ms | max ms | stddev ms | lost | lb / server |"
    )
    .unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in &results {
        writeln!(
            md,
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.2} |",
            r.server,
            r.qps,
            r.avg_latency_ms,
            r.min_latency_ms,
            r.max_latency_ms,
            r.stddev_latency_ms,
            r.lost,
            ours / r.qps
        )
        .unwrap();
    }
    let json = serde_json::json!({
        "duration_s": args.duration,
        "clients": args.clients,
        "outstanding": args.outstanding,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "results": results.iter().map(|r| serde_json::json!({
            "server": r.server,
            "qps": r.qps,
            "avg_latency_ms": r.avg_latency_ms,
            "min_latency_ms": r.min_latency_ms,
            "max_latency_ms": r.max_latency_ms,
            "stddev_latency_ms": r.stddev_latency_ms,
            "sent": r.sent,
            "completed": r.completed,
            "lost": r.lost,
            "noerror": r.noerror,
            "ratio_lb_over_this": ours / r.qps,
        })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("dns.md"), &md)?;
    std::fs::write(
        args.out.join("dns.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    println!("written to {}", args.out.display());
    Ok(())
}
