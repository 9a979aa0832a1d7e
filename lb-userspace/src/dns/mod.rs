//! Authoritative DNS + GSLB (the `[dns]` role).
//!
//! * `config`: the `[dns]` table and its validation (zone files are parsed).
//! * `zone`: one zone loaded from an RFC 1035 master file (hickory-proto's
//!   parser), checked and indexed.
//! * `lookup`: which records go into which section (pure).
//! * `chaos`: class CH identity queries (`id.server.`, `version.bind.`, ...).
//! * `cookie`: DNS cookies (RFC 7873, server cookies as RFC 9018).
//! * `gslb`: pools of addresses, health-filtered and chosen by policy.
//! * `rrl`: response rate limiting.
//! * `query`: the query path, bytes in, bytes out (wire format via
//!   hickory-proto): parse, error codes, answer, EDNS/ECS, truncation, RRL.
//! * `cache`: each UDP worker's cache of encoded responses to plain queries.
//! * `udp`: the UDP worker threads (`recvmmsg`/`sendmmsg` batches).
//! * `tcp`: the TCP listener, its client limit, framing and idle timeout.
//!
//! Operator documentation: `docs/dns.md`.
pub mod cache;
pub mod chaos;
pub mod config;
pub mod cookie;
pub mod gslb;
pub mod lookup;
pub mod query;
pub mod rrl;
pub mod tcp;
pub mod udp;
pub mod zone;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{bail, Context, Result};
use hickory_proto::rr::LowerName;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::health::Monitor;
use config::DnsSettings;
use gslb::Gslb;
use lookup::Catalog;
use query::{Shared, State, Stats};
use rrl::RateLimiter;

/// A running `[dns]` role.
pub struct DnsServer {
    shared: Shared,
    stats: Arc<Stats>,
    monitor: Monitor,
    tasks: Vec<JoinHandle<()>>,
    /// UDP worker threads and their stop flag.
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// RFC 1982: is `new` a later serial than `old`?
pub fn serial_newer(new: u32, old: u32) -> bool {
    (new.wrapping_sub(old) as i32) > 0
}

impl DnsServer {
    /// Serves the zones of a validated config (`Config::dns`, zone files
    /// already loaded): binds UDP/TCP listeners, starts GSLB health checks.
    pub async fn start(s: &DnsSettings) -> Result<DnsServer> {
        let mut zones = Vec::new();
        for z in &s.zones {
            let zone = z.zone.clone();
            log::info!(
                "dns: zone {} serial {} loaded from {} ({} records)",
                zone.origin,
                zone.serial,
                z.file.display(),
                zone.record_count
            );
            zones.push(zone);
        }
        let monitor = Monitor::new();
        let state = State {
            catalog: Catalog::new(zones).with_server_info(s.server_info()),
            gslb: (!s.pools.is_empty())
                .then(|| Gslb::new(s.pools.clone(), s.regions.clone(), monitor.clone())),
            max_udp_payload: s.max_udp_payload,
            rrl: s.rrl.clone().map(RateLimiter::new),
        };
        let shared: Shared = Arc::new(RwLock::new(Arc::new(state)));
        let stats = Arc::new(Stats::default());

        let mut udp_socks = Vec::new();
        let mut tcp_socks = Vec::new();
        // Addresses listed for both: bind UDP, then TCP on the same port
        // (an ephemeral port 0 becomes one port for both).
        let both: Vec<SocketAddr> = s
            .udp
            .iter()
            .filter(|a| s.tcp.contains(a))
            .copied()
            .collect();
        for a in &both {
            let (u, t) = bind_pair(*a, s.udp_workers).await?;
            udp_socks.push(u);
            tcp_socks.push(t);
        }
        for a in s.udp.iter().filter(|a| !both.contains(a)) {
            udp_socks.push(bind_udp_group(*a, s.udp_workers)?);
        }
        for a in s.tcp.iter().filter(|a| !both.contains(a)) {
            tcp_socks.push(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("dns: bind tcp {a}"))?,
            );
        }

        let mut tasks = Vec::new();
        let mut udp_threads = Vec::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        for group in udp_socks {
            udp.push(group[0].local_addr()?);
            for (w, sock) in group.into_iter().enumerate() {
                let (shared, stats, stop) = (shared.clone(), stats.clone(), stop.clone());
                let name = format!("dns-udp-{w}");
                udp_threads.push(
                    std::thread::Builder::new()
                        .name(name)
                        .spawn(move || udp::serve_udp_blocking(sock, shared, stats, stop, UDP_POLL))
                        .context("dns: start a udp worker thread")?,
                );
            }
        }
        for l in tcp_socks {
            tcp.push(l.local_addr()?);
            tasks.push(tokio::spawn(tcp::serve_tcp(
                l,
                shared.clone(),
                stats.clone(),
                s.tcp_idle_timeout,
                s.max_tcp_clients,
            )));
        }
        log::info!("dns: serving on udp {udp:?} tcp {tcp:?}");
        Ok(DnsServer {
            shared,
            stats,
            monitor,
            tasks,
            udp_threads,
            stop,
            udp,
            tcp,
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Reloads zones (serial check) and GSLB pools from a validated config
    /// (`Config::dns`, zone files already loaded; a file that does not parse
    /// makes the whole config invalid, so nothing reaches this point).
    ///
    /// A zone whose serial did not increase is not replaced. The error lists
    /// every zone that was not replaced (file, reason); everything else is
    /// applied. Listener changes need a restart.
    pub async fn reload(&self, s: &DnsSettings) -> Result<()> {
        let _guard = self.reload_lock.lock().await;
        let old = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut problems = Vec::new();
        let mut zones = Vec::new();
        for (i, z) in s.zones.iter().enumerate() {
            let lower = LowerName::new(&z.origin);
            let new = &z.zone;
            match old.catalog.get(&lower) {
                Some(p) if !serial_newer(new.serial, p.serial) => {
                    if new.serial == p.serial {
                        log::info!("dns: zone {} serial {} unchanged", z.origin, p.serial);
                    } else {
                        problems.push(format!(
                            "dns.zone[{i}].file: {}: serial {} is not newer than the loaded {}; keeping the loaded zone",
                            z.file.display(),
                            new.serial,
                            p.serial
                        ));
                    }
                    zones.push(p.clone());
                }
                _ => {
                    log::info!(
                        "dns: zone {} serial {} loaded from {} ({} records)",
                        new.origin,
                        new.serial,
                        z.file.display(),
                        new.record_count
                    );
                    zones.push(new.clone());
                }
            }
        }
        // Build the new GSLB table before the old one drops, so unchanged
        // health targets keep their state.
        let gslb = (!s.pools.is_empty())
            .then(|| Gslb::new(s.pools.clone(), s.regions.clone(), self.monitor.clone()));
        let rrl = match (&old.rrl, &s.rrl) {
            (Some(_) | None, Some(n)) => Some(RateLimiter::new(n.clone())),
            _ => None,
        };
        let state = State {
            catalog: Catalog::new(zones).with_server_info(s.server_info()),
            gslb,
            max_udp_payload: s.max_udp_payload,
            rrl,
        };
        *self
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(state);
        drop(old);
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }

    /// Stops the listeners and health checks.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let threads = std::mem::take(&mut self.udp_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        log::info!("dns: stopped");
    }

    /// Bound UDP addresses (with the real port when 0 was configured).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// Bound TCP addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// Serials of the zones being served, by origin.
    pub fn serials(&self) -> HashMap<String, u32> {
        let st = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        st.catalog
            .zones()
            .iter()
            .map(|z| (z.origin.to_ascii(), z.serial))
            .collect()
    }

    /// The health monitor of the GSLB pools.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Runs one packet through the query path as if it came from `src`
    /// (over TCP when `tcp`), without sockets. For tests and fuzzing.
    pub fn handle_packet(&self, packet: &[u8], src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let st = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let t = if tcp {
            query::Transport::Tcp
        } else {
            query::Transport::Udp
        };
        query::handle(&st, &self.stats, packet, src, t)
    }

    /// The UDP size limit that applies to a reply to `packet` (512 when it
    /// does not parse).
    pub fn udp_limit(&self, packet: &[u8]) -> usize {
        let st = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match hickory_proto::op::Message::from_vec(packet) {
            Ok(m) => query::udp_limit(&m, st.max_udp_payload),
            Err(_) => 512,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A handle that reads the counters and the GSLB pools' health (the
    /// dashboard's view), valid across reloads.
    pub fn stats_handle(&self) -> DnsStats {
        DnsStats {
            shared: self.shared.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// Reads the DNS role's counters; see [`DnsServer::stats_handle`].
#[derive(Clone)]
pub struct DnsStats {
    shared: Shared,
    stats: Arc<Stats>,
}

/// The DNS counters and pools at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DnsView {
    pub queries: u64,
    pub dropped: u64,
    pub formerr: u64,
    pub truncated: u64,
    pub rrl_dropped: u64,
    pub rrl_slipped: u64,
    pub zones: Vec<(String, u32)>,
    pub gslb: Vec<gslb::PoolHealth>,
}

impl DnsStats {
    pub fn view(&self) -> DnsView {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let s = &self.stats;
        let mut zones: Vec<(String, u32)> = st
            .catalog
            .zones()
            .iter()
            .map(|z| (z.origin.to_ascii(), z.serial))
            .collect();
        zones.sort();
        DnsView {
            queries: s.queries.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            formerr: s.formerr.load(Relaxed),
            truncated: s.truncated.load(Relaxed),
            rrl_dropped: s.rrl_dropped.load(Relaxed),
            rrl_slipped: s.rrl_slipped.load(Relaxed),
            zones,
            gslb: st.gslb.as_ref().map(gslb::Gslb::health).unwrap_or_default(),
        }
    }
}

/// How often an idle UDP worker looks at its stop flag.
const UDP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

impl Drop for DnsServer {
    fn drop(&mut self) {
        // UDP workers notice within UDP_POLL and close their sockets.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One UDP socket per worker on `a`, sharing the port with `SO_REUSEPORT`
/// (the kernel spreads clients over them); with port 0, one free port for
/// all. A plain bind is tried first, so an address already in use by
/// someone else is an error rather than silently shared.
fn bind_udp_group(a: SocketAddr, workers: usize) -> Result<Vec<std::net::UdpSocket>> {
    let one = |a: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(a),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if workers > 1 {
            s.set_reuse_port(true)?;
        }
        s.bind(&a.into())?;
        Ok(s.into())
    };
    // A socket without SO_REUSEPORT conflicts with every other socket on
    // its port, so a plain bind first proves the port is not held by
    // anyone, another process's reuseport group included: joining one would
    // split the queries between two servers. With port 0 this is also how
    // the port is chosen, since the kernel's automatic choice for a
    // reuseport socket may pick a port that a group of the same user holds.
    let a = if workers > 1 {
        let probe = std::net::UdpSocket::bind(a).with_context(|| format!("dns: bind udp {a}"))?;
        probe.local_addr()?
    } else {
        a
    };
    let first = one(a).with_context(|| format!("dns: bind udp {a}"))?;
    let port = first.local_addr()?.port();
    let mut group = vec![first];
    for _ in 1..workers {
        group.push(
            one(SocketAddr::new(a.ip(), port))
                .with_context(|| format!("dns: bind udp {} (SO_REUSEPORT)", a.ip()))?,
        );
    }
    Ok(group)
}

/// Binds UDP (a worker group) and TCP on one address; with port 0, both on
/// the same ephemeral port (retrying when TCP finds it taken).
async fn bind_pair(
    a: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    for _ in 0..20 {
        let u = bind_udp_group(a, workers)?;
        let port = u[0].local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(a.ip(), port)).await {
            Ok(t) => return Ok((u, t)),
            Err(e) if a.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e).with_context(|| format!("dns: bind tcp {a}")),
        }
    }
    bail!("dns: no free port on {} for both udp and tcp", a.ip())
}
