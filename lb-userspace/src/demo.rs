//! `lb demo`: the built-in demo. Builds a client, a load balancer and three
//! reals in network namespaces, runs `lb run` on the balancer, sends a
//! bounded burst of HTTP requests to the VIP over IPv4 and IPv6, shows how
//! they spread and the data plane's counters, and removes everything on exit
//! or Ctrl-C.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::testbed::{self, NameServer, Topology};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the demo; `requests` per address family.
pub fn run(requests: usize) -> Result<()> {
    // SAFETY: `on_signal` only stores to an atomic, which is
    // async-signal-safe, and has the signature a signal handler needs.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("building the demo network (client, lb, 3 reals) ...");
    let topo = Topology::build(3)?;
    let mut servers = Vec::new();
    for (i, ns) in topo.reals.iter().enumerate() {
        servers.push(NameServer::start(
            ns,
            &format!("real{}", i + 1),
            8080,
            8053,
        )?);
    }
    topo.block_kernel_forwarding()?;
    interrupted()?;

    let dir = std::env::temp_dir().join(testbed::unique("lb-demo-"));
    std::fs::create_dir_all(&dir)?;
    let cfg = testbed::topology_config(&topo, 8080, 8053);
    println!("config ({}):\n{cfg}", dir.join("lb.toml").display());

    let exe = std::env::current_exe()?;
    let lb = topo
        .start_lb(&exe, &cfg, &dir)
        .context("lb did not come up")?;
    println!(
        "lb is running in namespace {}; sending requests ...",
        topo.lb.name
    );

    for (label, url) in [
        ("IPv4", format!("http://{}/", testbed::VIP4)),
        ("IPv6", format!("http://[{}]/", testbed::VIP6)),
    ] {
        interrupted()?;
        let bodies = testbed::curl_burst(&topo.client, &url, requests)?;
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for b in &bodies {
            *spread
                .entry(if b.is_empty() {
                    "(failed)".into()
                } else {
                    b.clone()
                })
                .or_default() += 1;
        }
        println!("{label}: {requests} requests to {url}");
        for (name, n) in &spread {
            println!(
                "  {name:<10} {n:>5}  {}",
                "#".repeat(n * 40 / requests.max(1))
            );
        }
    }
    // Let lb print a counter line, then stop it and show its log.
    std::thread::sleep(Duration::from_millis(1200));
    drop(lb);
    println!("--- lb output ---");
    let log = std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    for line in log.lines() {
        writeln!(out, "{line}")?;
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    println!("demo network removed.");
    Ok(())
}
