//! `lb run`: runs every role the config has until SIGINT/SIGTERM; SIGHUP
//! reloads the config (validated first; a bad config changes nothing).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use log::{error, info, warn};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, Mutex},
};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{
        api::{self, ApiState, ReloadRequest},
        dashboard::{self, Dashboard, Sources as DashboardSources},
    },
    config::Config,
    decap::Decap,
    dns::DnsServer,
    health::Monitor,
    l4::{
        control::Control,
        dataplane::{cleanup_pinned, Dataplane, LoadOptions, Snapshot},
    },
    proxy::L7Server,
};

/// Options of `lb run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `interfaces` when not empty.
    pub interfaces: Vec<String>,
    /// `load.pin_path` overrides the config's `pin_path` when set.
    pub load: LoadOptions,
    /// On exit, detach and remove the pinned state instead of leaving the
    /// program attached for the next `lb`.
    pub cleanup: bool,
}

/// One line per VIP with its reals and the global drop/pass counters that
/// moved since the last line.
pub fn format_stats(prev: &Snapshot, now: &Snapshot, elapsed: Duration) -> Vec<String> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut lines = Vec::new();
    for (vip, (t, reals)) in &now.vips {
        let p = prev.vips.get(vip).map(|x| x.0).unwrap_or_default();
        if p == *t && prev.vips.contains_key(vip) {
            continue;
        }
        let mut line = format!(
            "vip {vip}: {} pkts ({:.0}/s) {} bytes {} new flows {} replies",
            t.packets,
            (t.packets.saturating_sub(p.packets)) as f64 / secs,
            t.bytes,
            t.new_flows,
            t.reply_packets
        );
        for (r, rt) in reals {
            line.push_str(&format!(" | {r}: {} pkts {} new", rt.packets, rt.new_flows));
        }
        lines.push(line);
    }
    let moved: Vec<String> = now
        .global
        .iter()
        .filter(|(k, v)| **v > 0 && **v > prev.global.get(*k).copied().unwrap_or(0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !moved.is_empty() {
        lines.push(format!("global: {}", moved.join(" ")));
    }
    lines
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("{}: invalid config:\n{e}", path.display()))
}

/// Reloads the config file: validated first, then L7 and DNS, then the L4
/// diff. An invalid file changes nothing; the error says why.
async fn reload(ctl: &Mutex<Control>, roles: &Roles, path: &Path) -> Result<(), String> {
    let (l7, dns) = (roles.l7.as_ref(), roles.dns.as_ref());
    let new = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            ctl.lock().await.reload_failed();
            let msg = format!("{e:#}");
            error!("reload refused, running config unchanged: {msg}");
            return Err(msg);
        }
    };
    let mut ctl = ctl.lock().await;
    if ctl.dp().is_none() && !new.vips.is_empty() {
        ctl.reload_failed();
        let msg =
            "the new config has VIPs but no L4 data plane is running (restart lb to start one)"
                .to_string();
        error!("reload refused: {msg}");
        return Err(msg);
    }
    for (what, changed) in [
        ("interfaces", new.interfaces != ctl.config().interfaces),
        ("pin_path", new.pin_path != ctl.config().pin_path),
        ("api", new.api != ctl.config().api),
        ("metrics", new.metrics_listen != ctl.config().metrics_listen),
        ("decap", new.decap.is_some() != ctl.config().decap.is_some()),
    ] {
        if changed {
            warn!("reload: `{what}` changed; it takes effect at the next start");
        }
    }
    let mut failed = Vec::new();
    if let Some(l7) = l7 {
        if let Err(e) = l7.reload(&new.l7).await {
            failed.push(format!("L7: {e:#}"));
        }
    }
    if let (Some(d), Some(nd)) = (dns, &new.dns) {
        if let Err(e) = d.reload(nd).await {
            failed.push(format!("DNS: {e:#}"));
        }
    }
    if let (Some(d), Some(nd)) = (&roles.decap, &new.decap) {
        if let Err(e) = d.lock().await.reload(nd) {
            failed.push(format!("decap: {e:#}"));
        }
    }
    if let Err(e) = ctl.set_hash_seed(new.hash_seed) {
        failed.push(format!("L4: hash_seed not applied: {e:#}"));
    }
    if let Err(e) = ctl.set_icmp(new.icmp_rate_limit, new.icmp_relay) {
        failed.push(format!(
            "L4: icmp_rate_limit / icmp_relay not applied: {e:#}"
        ));
    }
    ctl.set_encap_sources(new.encap_sources);
    if let Err(e) = ctl.set_vips(new.vips.clone()) {
        failed.push(format!("L4: data plane update failed, L4 unchanged: {e:#}"));
    }
    if failed.is_empty() {
        ctl.reload_applied(new);
        info!("reload: applied {}", path.display());
        Ok(())
    } else {
        ctl.reload_failed();
        let msg = failed.join("; ");
        error!("reload: {msg}");
        Err(msg)
    }
}

/// The user-space roles besides L4, as started.
struct Roles {
    l7: Option<L7Server>,
    dns: Option<DnsServer>,
    decap: Option<Arc<Mutex<Decap>>>,
}

/// Runs until a termination signal.
pub async fn run(opts: RunOptions) -> Result<()> {
    let cfg = load_config(&opts.config)?;
    let interfaces = if opts.interfaces.is_empty() {
        cfg.interfaces.clone()
    } else {
        opts.interfaces.clone()
    };
    for i in &interfaces {
        crate::l4::neighbours::ifindex(i)?;
    }
    let mut load = opts.load.clone();
    if load.pin_path.is_none() {
        load.pin_path = cfg.pin_path.clone();
    }

    let dp = if !cfg.vips.is_empty() || !interfaces.is_empty() {
        if interfaces.is_empty() {
            return Err(anyhow!(
                "the config has VIPs but no interfaces: set `interfaces` or pass --iface"
            ));
        }
        Some(Dataplane::load(&load)?)
    } else {
        None
    };
    let monitor = Monitor::new();
    // Subscribed before the first target exists, so no change is missed.
    let mut changes = monitor.subscribe();
    let mut control = Control::new(cfg.clone(), dp, monitor.clone())
        .map_err(|e| anyhow!("filling the XDP maps: {e:#}"))?;
    if let Some(dp) = control.dp_mut() {
        // Maps first, then the program: a swapped-in program finds the
        // state it expects.
        for i in &interfaces {
            dp.attach(i)?;
        }
        if let Some(dir) = load.pin_path.as_ref() {
            detach_stale_links(dir, &interfaces);
        }
    }
    let ctl = Arc::new(Mutex::new(control));

    let l7 = if cfg.l7.is_empty() {
        None
    } else {
        Some(L7Server::start(&cfg.l7).await?)
    };
    let dns = match &cfg.dns {
        Some(d) => Some(DnsServer::start(d).await?),
        None => None,
    };
    let decap = match &cfg.decap {
        Some(d) => Some(Arc::new(Mutex::new(Decap::start(d)?))),
        None => None,
    };
    let roles = Roles { l7, dns, decap };

    let stop = CancellationToken::new();
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let state = Arc::new(ApiState {
        ctl: ctl.clone(),
        reload: reload_tx,
        config_path: opts.config.clone(),
        decap: roles.decap.clone(),
    });
    let socket = api::start(&cfg.api, state, stop.clone())?;
    if let Some(addr) = cfg.api.http {
        let dash = Dashboard::new(DashboardSources {
            ctl: ctl.clone(),
            l7: roles.l7.as_ref().map(L7Server::stats_handle),
            dns: roles.dns.as_ref().map(DnsServer::stats_handle),
            decap: roles.decap.clone(),
        });
        dashboard::start(addr, cfg.api.http_token(), dash, stop.clone())?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let stats = api::RoleStats {
            l7: roles.l7.as_ref().map(L7Server::stats_handle),
            dns: roles.dns.as_ref().map(DnsServer::stats_handle),
        };
        api::serve_metrics(addr, ctl.clone(), stats, stop.clone()).await?;
    }
    info!(
        "running: {} VIPs on [{}], {} L7 listeners, dns {}, decap {}",
        cfg.vips.len(),
        interfaces.join(", "),
        cfg.l7.len(),
        if roles.dns.is_some() { "on" } else { "off" },
        cfg.decap.as_ref().map_or("off".to_string(), |d| format!(
            "on [{}]",
            d.interfaces.join(", ")
        ))
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut stats_tick = tokio::time::interval(cfg.stats_interval);
    let mut log_tick = tokio::time::interval(Duration::from_millis(200));
    let mut neigh_tick = tokio::time::interval(Duration::from_secs(30));
    let mut drain_tick = tokio::time::interval(Duration::from_secs(1));
    let mut decap_tick = tokio::time::interval(Duration::from_secs(5));
    neigh_tick.tick().await;
    let mut prev = Snapshot::default();
    let mut prev_at = Instant::now();
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading {}", opts.config.display());
                let _ = reload(&ctl, &roles, &opts.config).await;
            }
            Some(reply) = reload_rx.recv() => {
                info!("API: reloading {}", opts.config.display());
                let r = reload(&ctl, &roles, &opts.config).await;
                let _ = reply.send(r);
            }
            r = changes.recv() => {
                // Any health change (or a lagged receiver): rebuild rings.
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    continue;
                }
                if let Err(e) = ctl.lock().await.refresh() {
                    error!("applying a health change: {e:#}");
                }
            }
            _ = drain_tick.tick() => {
                ctl.lock().await.tick();
            }
            _ = decap_tick.tick(), if roles.decap.is_some() => {
                if let Some(d) = &roles.decap {
                    if let Err(e) = d.lock().await.sync_addresses() {
                        warn!("decap: refreshing the host addresses: {e:#}");
                    }
                }
            }
            _ = stats_tick.tick() => {
                let mut c = ctl.lock().await;
                if let Some(dp) = c.dp() {
                    match dp.snapshot() {
                        Ok(now) => {
                            for line in format_stats(&prev, &now, prev_at.elapsed()) {
                                info!("{line}");
                            }
                            prev = now.clone();
                            prev_at = Instant::now();
                            c.set_last_snapshot(now, prev_at);
                        }
                        Err(e) => warn!("reading counters: {e:#}"),
                    }
                }
            }
            _ = log_tick.tick() => {
                if let Some(dp) = ctl.lock().await.dp_mut() {
                    dp.flush_log();
                }
            }
            _ = neigh_tick.tick() => {
                if let Some(dp) = ctl.lock().await.dp() {
                    dp.resolve_neighbours();
                }
            }
        }
    }
    stop.cancel();
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    if let Some(l7) = roles.l7 {
        l7.shutdown().await;
    }
    if let Some(d) = roles.dns {
        d.shutdown().await;
    }
    let dp = ctl.lock().await.take_dp();
    if let Some(dp) = dp {
        if let Ok(now) = dp.snapshot() {
            for line in format_stats(&prev, &now, prev_at.elapsed()) {
                info!("{line}");
            }
        }
        let pinned = dp.pin_path().map(Path::to_path_buf);
        drop(dp);
        match pinned {
            Some(dir) if opts.cleanup => {
                let removed = cleanup_pinned(&dir)?;
                info!(
                    "XDP detached; pinned state removed from {} ({} entries)",
                    dir.display(),
                    removed.len()
                );
            }
            Some(dir) => info!(
                "XDP stays attached with its state pinned in {}; the next `lb run` takes over, `lb cleanup` detaches",
                dir.display()
            ),
            None => info!("XDP detached"),
        }
    }
    Ok(())
}

/// Pinned links of interfaces no longer configured: unpin (detach).
fn detach_stale_links(dir: &Path, interfaces: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix("link_") {
            if !interfaces.iter().any(|i| i == iface) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        info!("{iface}: no longer configured; pinned XDP link removed (detached)");
                    }
                    Err(err) => warn!("{}: {err}", e.path().display()),
                }
            }
        }
    }
}

/// `lb cleanup`: detaches and removes the state pinned in `dir`.
pub fn cleanup(dir: &Path) -> Result<Vec<String>> {
    cleanup_pinned(dir)
}
