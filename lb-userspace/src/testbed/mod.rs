//! Network namespaces and veth topologies for tests, benchmarks and the demo.
//!
//! Everything is created with names unique to the process (`lbt<pid>x<n>…`)
//! and removed on drop, which also runs on panic (unwinding). Only the
//! 198.18.0.0/15 and 2001:db8::/32 ranges are used.
//!
//! Layout of [`Topology`]:
//!
//! ```text
//!  client ns            lb ns                          real ns i (1..=n)
//!  c0 198.18.0.2 ── l0 198.18.0.1      l<i> 198.18.(10+i).1 ── r0 198.18.(10+i).2
//!     2001:db8::2       2001:db8::1          2001:db8:(10+i)::1    2001:db8:(10+i)::2
//!  VIPs: 198.18.100.1, 2001:db8:100::1 (routed to lb by the client's default route)
//! ```
//!
//! With [`Wiring::bridge`], the reals sit behind a bridge on `l1` instead.
//! Veth pairs keep the offloads `ip link add` gives them (partial
//! checksums from local senders) unless [`Wiring::full_checksums`] asks
//! otherwise; GRO is on at the far end of each lb interface, which XDP
//! redirects into a veth need.

pub mod browser;
pub mod config;
pub mod lb;
pub mod packet;
pub mod tcp;
pub mod xdp_test;

pub use lb::{Lb, LbBuilder};

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{anyhow, bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process may build namespaces and load XDP. Without root a
/// test fails when `CI` is set (CI runs as root) and is skipped, with the
/// reason printed, otherwise.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root (network namespaces and XDP); CI must run as root"
        );
        eprintln!("skipped: needs root (network namespaces and XDP)");
    }
    root
}

/// A unique, short name (interface and namespace names are limited).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

fn check(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a program, failing with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    check(out, &format!("{prog} {}", args.join(" ")))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS args…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(prog)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {prog} in {}", self.name))?;
        check(
            out,
            &format!("{prog} {} (in {})", args.join(" "), self.name),
        )
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it
    /// opens live in the namespace.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<Result<T>>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path)?;
            f()
        })
    }

    /// Like [`Netns::spawn`], waiting for the result.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(f)
            .join()
            .map_err(|_| anyhow!("thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: the fd is an open namespace file that outlives the call;
    // setns only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a veth pair between two namespaces and brings both ends up,
/// with the offloads `ip link add` gives them: TX checksum offload on, so
/// locally sent TCP/UDP frames carry partial checksums, as from containers.
pub fn veth_plain(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link", "add", "name", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// [`veth_plain`] for a link whose `a` end gets XDP: GRO is turned on at
/// the `b` end, because a veth accepts XDP-redirected frames only when its
/// peer runs NAPI (GRO on, or an XDP program attached); see README, "Data
/// plane". Checksum offloads stay as they are.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    veth_plain(a, a_name, b, b_name)?;
    b.exec("ethtool", &["-K", b_name, "gro", "on"])
        .context("ethtool (package ethtool) is needed to enable GRO on veth")?;
    Ok(())
}

/// Turns TX checksum offload off on `dev`, so that what it sends carries
/// full checksums (as from a real NIC).
pub fn full_checksums(ns: &Netns, dev: &str) -> Result<()> {
    ns.exec("ethtool", &["-K", dev, "tx", "off"])
        .context("ethtool (package ethtool) is needed")?;
    Ok(())
}

/// How a [`Topology`] is wired.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wiring {
    /// The reals sit behind a Linux bridge (a switch) on one lb interface,
    /// instead of one point-to-point link each.
    pub bridge: bool,
    /// Client and reals send full checksums (TX checksum offload off);
    /// by default they send partial ones, as local senders do.
    pub full_checksums: bool,
}

pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Address of real `i` (1-based).
pub fn real4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + i as u8, 2)
}
pub fn real6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x10 + i as u16, 0, 0, 0, 0, 2)
}

/// Client, load balancer and `n` reals, wired as in the module docs.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub reals: Vec<Netns>,
    /// The bridge's namespace, when the reals sit behind one.
    pub switch: Option<Netns>,
    /// Interfaces in the lb namespace: `l0` (client side), `l1`…`ln`
    /// (one per real; only `l1` with a bridge).
    pub lb_ifaces: Vec<String>,
    /// The router of a DSR topology ([`Topology::build_dsr`]).
    pub router: Option<Netns>,
}

impl Topology {
    /// Point-to-point links, default offloads.
    pub fn build(n: usize) -> Result<Topology> {
        Topology::build_wired(n, Wiring::default())
    }

    /// With a bridge, the lb's `l1` is a port of bridge `br0` in the switch
    /// namespace, and each real's `r0` another; real `i` keeps its own
    /// subnet (198.18.(10+i).0/24, all on `l1`), so addresses are the same
    /// in both wirings.
    pub fn build_wired(n: usize, wiring: Wiring) -> Result<Topology> {
        let client = Netns::new("lbc")?;
        let lb = Netns::new("lbl")?;
        let mut reals = Vec::new();
        for _ in 0..n {
            reals.push(Netns::new("lbr")?);
        }
        let switch = if wiring.bridge {
            let sw = Netns::new("lbs")?;
            veth(&lb, "l1", &sw, "s0")?;
            sw.ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.ip(&["link", "set", "s0", "master", "br0"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
            Some(sw)
        } else {
            None
        };
        veth(&lb, "l0", &client, "c0")?;
        lb.ip(&["addr", "add", "198.18.0.1/24", "dev", "l0"])?;
        lb.ip(&["addr", "add", "2001:db8::1/64", "dev", "l0", "nodad"])?;
        client.ip(&["addr", "add", "198.18.0.2/24", "dev", "c0"])?;
        client.ip(&["addr", "add", "2001:db8::2/64", "dev", "c0", "nodad"])?;
        client.ip(&["route", "add", "default", "via", "198.18.0.1"])?;
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"])?;
        let mut lb_ifaces = vec!["l0".to_string()];
        if switch.is_some() {
            lb_ifaces.push("l1".to_string());
        }
        for (i, r) in reals.iter().enumerate() {
            let i = i + 1;
            let l = if let Some(sw) = &switch {
                let port = format!("s{i}");
                veth_plain(sw, &port, r, "r0")?;
                sw.ip(&["link", "set", &port, "master", "br0"])?;
                "l1".to_string()
            } else {
                let l = format!("l{i}");
                veth(&lb, &l, r, "r0")?;
                lb_ifaces.push(l.clone());
                l
            };
            if wiring.full_checksums {
                full_checksums(r, "r0")?;
            }
            let net4 = 10 + i;
            let net6 = format!("2001:db8:{:x}::", 0x10 + i);
            lb.ip(&["addr", "add", &format!("198.18.{net4}.1/24"), "dev", &l])?;
            lb.ip(&["addr", "add", &format!("{net6}1/64"), "dev", &l, "nodad"])?;
            r.ip(&["addr", "add", &format!("198.18.{net4}.2/24"), "dev", "r0"])?;
            r.ip(&["addr", "add", &format!("{net6}2/64"), "dev", "r0", "nodad"])?;
            r.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{net4}.1"),
            ])?;
            r.ip(&["-6", "route", "add", "default", "via", &format!("{net6}1")])?;
        }
        if wiring.full_checksums {
            full_checksums(&client, "c0")?;
        }
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(Topology {
            client,
            lb,
            reals,
            switch,
            lb_ifaces,
            router: None,
        })
    }

    /// A DSR deployment: client, router, lb, and `n` reals behind a bridge.
    ///
    /// ```text
    /// client c0 ── g0 router g2 ── l0 lb l1 ── br0 ── r0 real i
    ///                        g1 ──────────────┘
    /// ```
    ///
    /// The client's gateway is the router (198.18.0.1), which routes the
    /// VIPs to the lb (`l0`, 198.18.2.2) and is the reals' gateway
    /// (198.18.(10+i).3 on the bridge). The lb reaches the reals through
    /// `l1` (198.18.(10+i).1), as in [`Topology::build_wired`]. The reals
    /// hold the VIPs on `lo` (with `arp_ignore` 1 and `arp_announce` 2, as
    /// an LVS-DR real); their answers go to the router, never through the
    /// lb. Default offloads everywhere. The FullNAT suite uses it too:
    /// there the reals' answers go to the lb's SNAT address, through the
    /// router for the reals on other subnets.
    pub fn build_dsr(n: usize) -> Result<Topology> {
        let client = Netns::new("lbc")?;
        let router = Netns::new("lbg")?;
        let lb = Netns::new("lbl")?;
        let sw = Netns::new("lbs")?;
        veth_plain(&client, "c0", &router, "g0")?;
        // GRO at both far ends: FullNAT replies are redirected into l0.
        veth(&lb, "l0", &router, "g2")?;
        veth(&lb, "l1", &sw, "s0")?;
        veth_plain(&sw, "sg", &router, "g1")?;
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        for port in ["s0", "sg"] {
            sw.ip(&["link", "set", port, "master", "br0"])?;
        }
        sw.ip(&["link", "set", "br0", "up"])?;
        client.ip(&["addr", "add", "198.18.0.2/24", "dev", "c0"])?;
        client.ip(&["addr", "add", "2001:db8::2/64", "dev", "c0", "nodad"])?;
        client.ip(&["route", "add", "default", "via", "198.18.0.1"])?;
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"])?;
        router.ip(&["addr", "add", "198.18.0.1/24", "dev", "g0"])?;
        router.ip(&["addr", "add", "2001:db8::1/64", "dev", "g0", "nodad"])?;
        router.ip(&["addr", "add", "198.18.2.1/24", "dev", "g2"])?;
        router.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "g2", "nodad"])?;
        router.ip(&["route", "add", &format!("{VIP4}/32"), "via", "198.18.2.2"])?;
        router.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            "2001:db8:2::2",
        ])?;
        lb.ip(&["addr", "add", "198.18.2.2/24", "dev", "l0"])?;
        lb.ip(&["addr", "add", "2001:db8:2::2/64", "dev", "l0", "nodad"])?;
        lb.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
        lb.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
        let mut reals = Vec::new();
        for i in 1..=n {
            let r = Netns::new("lbr")?;
            let port = format!("s{i}");
            veth_plain(&sw, &port, &r, "r0")?;
            sw.ip(&["link", "set", &port, "master", "br0"])?;
            let net4 = 10 + i;
            let net6 = format!("2001:db8:{:x}::", 0x10 + i);
            lb.ip(&["addr", "add", &format!("198.18.{net4}.1/24"), "dev", "l1"])?;
            lb.ip(&["addr", "add", &format!("{net6}1/64"), "dev", "l1", "nodad"])?;
            router.ip(&["addr", "add", &format!("198.18.{net4}.3/24"), "dev", "g1"])?;
            router.ip(&["addr", "add", &format!("{net6}3/64"), "dev", "g1", "nodad"])?;
            r.ip(&["addr", "add", &format!("198.18.{net4}.2/24"), "dev", "r0"])?;
            r.ip(&["addr", "add", &format!("{net6}2/64"), "dev", "r0", "nodad"])?;
            r.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            r.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
            // As for LVS-DR: the real neither answers ARP for the VIP nor
            // uses it as the source of its own ARP requests (README, DSR).
            r.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            r.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
            r.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{net4}.3"),
            ])?;
            r.ip(&["-6", "route", "add", "default", "via", &format!("{net6}3")])?;
            reals.push(r);
        }
        for ns in [&router, &lb] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        Ok(Topology {
            client,
            lb,
            reals,
            switch: Some(sw),
            lb_ifaces: vec!["l0".to_string(), "l1".to_string()],
            router: Some(router),
        })
    }

    /// Drops everything the kernel would forward in the lb namespace, so that
    /// only XDP can move packets between client and reals. IP forwarding
    /// stays on: `bpf_fib_lookup` refuses to work without it.
    pub fn block_kernel_forwarding(&self) -> Result<()> {
        self.lb.exec(
            "nft",
            &[
                "add table inet lbtest; add chain inet lbtest block_forward { type filter hook forward priority 0; policy drop; }",
            ],
        )?;
        Ok(())
    }

    /// A launcher for `lb_bin run` in the lb namespace, files in `dir`,
    /// that waits (bounded) until XDP is on every lb interface.
    pub fn lb_builder(
        &self,
        lb_bin: impl AsRef<std::path::Path>,
        dir: &std::path::Path,
    ) -> LbBuilder {
        Lb::builder(lb_bin, dir)
            .netns(&self.lb)
            .wait_for_xdp(self.lb_ifaces.iter().cloned())
    }

    /// Writes `config` to `dir/lb.toml`, starts `lb_bin run` in the lb
    /// namespace (log in `dir/lb.log`) and waits, bounded, until XDP is on
    /// every lb interface. The error carries the log.
    pub fn start_lb(
        &self,
        lb_bin: impl AsRef<std::path::Path>,
        config: &str,
        dir: &std::path::Path,
    ) -> Result<Lb> {
        self.lb_builder(lb_bin, dir).config(config).start()
    }

    /// Starts something on every real, in order: `start(namespace, "realN")`.
    pub fn on_reals<T>(&self, mut start: impl FnMut(&Netns, &str) -> T) -> Vec<T> {
        self.reals
            .iter()
            .enumerate()
            .map(|(i, ns)| start(ns, &format!("real{}", i + 1)))
            .collect()
    }

    pub fn vip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(VIP6)
        } else {
            IpAddr::V4(VIP4)
        }
    }
}

/// Tiny servers that name themselves, for the reals of tests and the demo:
/// HTTP on `http_port` (answers `name\n` and closes; `GET /blob/N` gets N
/// bytes of [`blob_byte`]; `GET /peer` gets `name address\n`, the
/// connection's source address as the server sees it) and a UDP responder on
/// `udp_port` (answers `name` to any datagram). They run on a thread inside
/// the namespace until the returned guard is dropped.
pub struct NameServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl NameServer {
    pub fn start(ns: &Netns, name: &str, http_port: u16, udp_port: u16) -> Result<NameServer> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let name = name.to_string();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let bound = async {
                    let tcp = bind_tcp_dual(http_port)?;
                    let udp = bind_udp_dual(udp_port)?;
                    Ok::<_, anyhow::Error>((tcp, udp))
                }
                .await;
                let (tcp, udp) = match bound {
                    Ok(b) => {
                        let _ = ready_tx.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Ok(());
                    }
                };
                let name2 = name.clone();
                let http = async move {
                    loop {
                        let Ok((mut s, peer)) = tcp.accept().await else {
                            continue;
                        };
                        let name = name2.clone();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 2048];
                            // Read the request head (bounded).
                            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                                match tokio::time::timeout(
                                    std::time::Duration::from_secs(5),
                                    s.read(&mut chunk),
                                )
                                .await
                                {
                                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                    _ => return,
                                }
                            }
                            // `GET /blob/N`: N bytes of `blob_byte`.
                            let blob = std::str::from_utf8(&buf)
                                .ok()
                                .and_then(|h| h.strip_prefix("GET /blob/"))
                                .and_then(|r| r.split(' ').next())
                                .and_then(|n| n.parse::<usize>().ok());
                            if let Some(len) = blob {
                                let head = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                                );
                                if s.write_all(head.as_bytes()).await.is_err() {
                                    return;
                                }
                                let mut at = 0;
                                while at < len {
                                    let chunk: Vec<u8> =
                                        (at..len.min(at + 65536)).map(blob_byte).collect();
                                    at += chunk.len();
                                    if s.write_all(&chunk).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = s.shutdown().await;
                                return;
                            }
                            let body = if buf.starts_with(b"GET /peer ") {
                                // A v4 client of a dual-stack socket shows
                                // as a mapped address.
                                let ip = match peer.ip() {
                                    std::net::IpAddr::V6(a) => a
                                        .to_ipv4_mapped()
                                        .map_or(std::net::IpAddr::V6(a), std::net::IpAddr::V4),
                                    a @ std::net::IpAddr::V4(_) => a,
                                };
                                format!("{name} {ip}\n")
                            } else {
                                format!("{name}\n")
                            };
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(resp.as_bytes()).await;
                            let _ = s.shutdown().await;
                        });
                    }
                };
                let udp_loop = async move {
                    let mut buf = [0u8; 2048];
                    loop {
                        if let Ok((_, peer)) = udp.recv_from(&mut buf).await {
                            let _ = udp.send_to(name.as_bytes(), peer).await;
                        }
                    }
                };
                tokio::select! {
                    () = http => {}
                    () = udp_loop => {}
                    _ = stop_rx => {}
                }
                Ok(())
            })
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| anyhow!("name server did not start"))??;
        Ok(NameServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Byte `i` of the [`NameServer`]'s `/blob/N` answers: a sequence with no
/// short period, so a lost, repeated or reordered segment changes the
/// digest.
pub fn blob_byte(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i as u8)
}

fn bind_tcp_dual(port: u16) -> Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&std::net::SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    s.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(s.into())?)
}

fn bind_udp_dual(port: u16) -> Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    s.set_only_v6(false)?;
    s.set_nonblocking(true)?;
    s.bind(&std::net::SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(tokio::net::UdpSocket::from_std(s.into())?)
}

/// The config `lb` runs with on a [`Topology`]: one TCP and one UDP VIP per
/// family, all reals behind each.
pub fn topology_config(t: &Topology, http_port: u16, udp_port: u16) -> String {
    services_config(t, &[(80, "tcp", http_port), (udp_port, "udp", udp_port)])
}

/// Sends `n` HTTP GETs to `url` from `ns` with curl, each on its own
/// connection, and returns the bodies (one per request; empty on failure).
pub fn curl_burst(ns: &Netns, url: &str, n: usize) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    // Batches keep each curl invocation's argument list short.
    let mut left = n;
    while left > 0 {
        let batch = left.min(50);
        let mut args: Vec<String> = vec![
            "-s".into(),
            "-g".into(),
            "--max-time".into(),
            "3".into(),
            "-H".into(),
            "Connection: close".into(),
            "-w".into(),
            "|%{http_code}\\n".into(),
        ];
        for _ in 0..batch {
            args.push(url.to_string());
        }
        let o = ns
            .command("curl")
            .args(&args)
            .output()
            .context("curl (package curl) is needed")?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        // Each response: body "name\n" then "|200\n".
        let mut got = 0;
        let mut body = String::new();
        for line in text.lines() {
            if let Some(code) = line.strip_prefix('|') {
                out.push(if code == "200" {
                    body.trim().to_string()
                } else {
                    String::new()
                });
                body.clear();
                got += 1;
            } else {
                body.push_str(line);
            }
        }
        for _ in got..batch {
            out.push(String::new());
        }
        left -= batch;
    }
    Ok(out)
}

/// The receivers' checksum error counters (`nstat`: TCP, UDP, UDPv6) in
/// each of `namespaces`, as (namespace, counter line) for every one that
/// is not zero: what a packet rewritten with a wrong checksum leaves.
pub fn csum_errors<'a>(namespaces: impl IntoIterator<Item = &'a Netns>) -> Result<Vec<String>> {
    let mut errors = Vec::new();
    for ns in namespaces {
        let out = ns.exec(
            "nstat",
            &[
                "-asz",
                "TcpInCsumErrors",
                "UdpInCsumErrors",
                "Udp6InCsumErrors",
            ],
        )?;
        for line in out.lines().filter(|l| l.contains("CsumErrors")) {
            let v: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("nstat line `{line}`"))?;
            if v != 0 {
                errors.push(format!("{}: {line}", ns.name));
            }
        }
    }
    Ok(errors)
}

/// From the client namespace, `n` datagrams to `to` over one socket bound
/// to the client's address and connected to `to` (which accepts answers
/// from `to` only), one answer awaited for each (2 s); the answers.
pub fn udp_connected_asks(client: &Netns, to: SocketAddr, n: usize) -> Result<Vec<String>> {
    client.run_in(move || {
        let local: IpAddr = if to.is_ipv4() {
            CLIENT4.into()
        } else {
            CLIENT6.into()
        };
        let s = std::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
        s.connect(to)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut names = Vec::new();
        for i in 0..n {
            s.send(format!("ping {i}").as_bytes())?;
            let mut buf = [0u8; 64];
            let got = s.recv(&mut buf)?;
            names.push(String::from_utf8_lossy(&buf[..got]).into_owned());
        }
        Ok(names)
    })
}

/// Waits until `iface` in `ns` has an XDP program attached (bounded).
pub fn wait_for_xdp(ns: &Netns, iface: &str, timeout: std::time::Duration) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Ok(s) = ns.ip(&["link", "show", iface]) {
            if s.contains("xdp") {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("no XDP program on {iface} in {} after {timeout:?}", ns.name)
}

/// The L4 config for a [`Topology`] with the given services: for each
/// `(vip_port, protocol, real_port)` one VIP per family (`VIP4`, `VIP6`),
/// every real behind it with weight 1. No admin socket: tests and the demo
/// must not touch /run/lb.
pub fn services_config(t: &Topology, services: &[(u16, &str, u16)]) -> String {
    config::ConfigBuilder::topology(t)
        .no_api()
        .services(t, services)
        .build()
}

/// Real names of `n` fresh HTTP requests to `VIP4` port 80 from the
/// client (empty = failed).
pub fn http_names(t: &Topology, n: usize) -> Result<Vec<String>> {
    curl_burst(&t.client, &format!("http://{VIP4}/"), n)
}

/// A bpffs instance of its own, mounted at a directory unique to this run
/// (`ip netns exec` remounts /sys, so the host's /sys/fs/bpf is not seen
/// from inside a namespace); `.0` is the pin path inside it. On drop,
/// whatever `lb` pinned is removed (which detaches it) and it is unmounted.
pub struct PinDir(pub std::path::PathBuf, std::path::PathBuf);

impl PinDir {
    pub fn new() -> Result<PinDir> {
        let mnt = std::path::PathBuf::from(format!("/tmp/{}", unique("lbtbpf")));
        std::fs::create_dir_all(&mnt).with_context(|| format!("mkdir {}", mnt.display()))?;
        let m = mnt.to_str().context("non-UTF-8 path")?;
        if let Err(e) = run("mount", &["-t", "bpf", "bpf", m]) {
            let _ = std::fs::remove_dir(&mnt);
            return Err(e.context("mount bpffs"));
        }
        Ok(PinDir(mnt.join("lb"), mnt))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = crate::l4::dataplane::cleanup_pinned(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(m) = self.1.to_str() {
            let _ = run("umount", &[m]);
        }
        let _ = std::fs::remove_dir(&self.1);
    }
}

/// How often each name occurs (which real got how many flows or requests).
pub fn tally<S: Into<String>>(
    names: impl IntoIterator<Item = S>,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in names {
        *m.entry(n.into()).or_default() += 1;
    }
    m
}
