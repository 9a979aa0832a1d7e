//! `lb run`: runs every role the config has until SIGINT/SIGTERM; SIGHUP
//! reloads the config (validated first; a bad config changes nothing).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use log::{error, info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::Config,
    dataplane::{Dataplane, LoadOptions, Snapshot},
    dns::DnsServer,
    proxy::L7Server,
};

/// Options of `lb run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `interfaces` when not empty.
    pub interfaces: Vec<String>,
    pub load: LoadOptions,
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

/// Runs until a termination signal.
pub async fn run(opts: RunOptions) -> Result<()> {
    let cfg = load_config(&opts.config)?;
    let interfaces = if opts.interfaces.is_empty() {
        cfg.interfaces.clone()
    } else {
        opts.interfaces.clone()
    };
    for i in &interfaces {
        crate::dataplane::ifindex(i)?;
    }

    let mut dp = if !cfg.vips.is_empty() || !interfaces.is_empty() {
        if interfaces.is_empty() {
            return Err(anyhow!(
                "the config has VIPs but no interfaces: set `interfaces` or pass --iface"
            ));
        }
        let mut dp = Dataplane::load(&opts.load)?;
        dp.apply(&cfg.vips).context("filling the XDP maps")?;
        dp.resolve_neighbours();
        for i in &interfaces {
            dp.attach(i)?;
        }
        Some(dp)
    } else {
        None
    };

    let l7 = if cfg.l7.is_empty() {
        None
    } else {
        Some(L7Server::start(&cfg.l7).await?)
    };
    let dns = match &cfg.dns {
        Some(d) => Some(DnsServer::start(d).await?),
        None => None,
    };
    info!(
        "running: {} VIPs on [{}], {} L7 listeners, dns {}",
        cfg.vips.len(),
        interfaces.join(", "),
        cfg.l7.len(),
        if dns.is_some() { "on" } else { "off" }
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut stats_tick = tokio::time::interval(cfg.stats_interval);
    let mut log_tick = tokio::time::interval(Duration::from_millis(200));
    let mut neigh_tick = tokio::time::interval(Duration::from_secs(30));
    neigh_tick.tick().await;
    let mut prev = Snapshot::default();
    let mut prev_at = Instant::now();
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading {}", opts.config.display());
                match load_config(&opts.config) {
                    Err(e) => error!("reload refused, running config unchanged: {e:#}"),
                    Ok(new) => {
                        let mut ok = true;
                        if let Some(dp) = dp.as_mut() {
                            if let Err(e) = dp.apply(&new.vips) {
                                error!("reload: data plane update failed: {e:#}");
                                ok = false;
                            } else {
                                dp.resolve_neighbours();
                            }
                        } else if !new.vips.is_empty() {
                            warn!("reload: VIPs added but no data plane is running (restart lb to start one)");
                        }
                        if let Some(l7) = &l7 {
                            if let Err(e) = l7.reload(&new.l7).await {
                                error!("reload: L7: {e:#}");
                                ok = false;
                            }
                        }
                        if let (Some(d), Some(nd)) = (&dns, &new.dns) {
                            if let Err(e) = d.reload(nd).await {
                                error!("reload: DNS: {e:#}");
                                ok = false;
                            }
                        }
                        if ok {
                            info!("reload: applied");
                        }
                    }
                }
            }
            _ = stats_tick.tick() => {
                if let Some(dp) = &dp {
                    match dp.snapshot() {
                        Ok(now) => {
                            for line in format_stats(&prev, &now, prev_at.elapsed()) {
                                info!("{line}");
                            }
                            prev = now;
                            prev_at = Instant::now();
                        }
                        Err(e) => warn!("reading counters: {e:#}"),
                    }
                }
            }
            _ = log_tick.tick() => {
                if let Some(dp) = dp.as_mut() {
                    dp.flush_log();
                }
            }
            _ = neigh_tick.tick() => {
                if let Some(dp) = &dp {
                    dp.resolve_neighbours();
                }
            }
        }
    }
    if let Some(l7) = l7 {
        l7.shutdown().await;
    }
    if let Some(d) = dns {
        d.shutdown().await;
    }
    if let Some(dp) = dp {
        if let Ok(now) = dp.snapshot() {
            for line in format_stats(&prev, &now, prev_at.elapsed()) {
                info!("{line}");
            }
        }
        drop(dp);
        info!("XDP detached");
    }
    Ok(())
}
