//! L7 TLS-terminating reverse proxy (the `[[l7]]` role).
//!
//! * [`config`]: the `[[l7]]` tables, validation, compiled [`config::ListenerSpec`].
//! * [`tls`]: PEM loading, SNI certificate selection, rustls settings.
//! * [`route`]: Host + path-prefix routing (pure).
//! * [`headers`]: hop-by-hop removal, `X-Forwarded-*`, `Forwarded` (pure).
//! * [`upstream`]: pools, balancing policies, keep-alive, ejection, health.
//! * [`listener`]: binding, the accept loop, the connection limit, reload
//!   of a listener's state, stop and drain.
//! * [`conn`]: one client connection: TLS handshake, HTTP/1.x or h2, idle
//!   timeout, graceful shutdown, reset-flood guard.
//! * `request`: the request path: Host checks, redirect, body size limit,
//!   routing, header rewrite, the upstream call with retries, local errors.
//! * `body`: the response body (byte count, stall timer, access log line)
//!   and the size-limited request body.
//! * [`proxyproto`]: PROXY protocol v1/v2 (`proxy_protocol = true`): parser,
//!   trust check, the header read before TLS/HTTP, rejection counters.
//! * [`accesslog`]: the access log line and its writer.
//! * [`stats`]: per-listener request counters and latency histogram.
//! * [`cert`]: `lb cert`, a test PKI.
//!
//! Operator documentation: `docs/l7.md`.
pub mod accesslog;
mod body;
pub mod cert;
pub mod config;
pub mod conn;
pub mod headers;
pub mod listener;
pub mod proxyproto;
mod request;
pub mod route;
pub mod stats;
pub mod tls;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::Mutex;

pub use cert::{cert_main, CertArgs};

use crate::health::Monitor;
use config::ListenerSpec;
use listener::{Listener, ListenerState};

/// A running set of `[[l7]]` listeners.
pub struct L7Server {
    listeners: Arc<Mutex<Vec<Arc<Listener>>>>,
    monitor: Monitor,
}

impl L7Server {
    /// Binds every listener of a validated config (`Config::l7`) and starts
    /// serving. Must be called inside a tokio runtime.
    pub async fn start(specs: &[ListenerSpec]) -> Result<L7Server> {
        let specs = specs.to_vec();
        let monitor = Monitor::new();
        let mut listeners = Vec::new();
        for spec in specs {
            if let Some(t) = &spec.tls {
                tls::warn_expiry(&spec.name, &t.certs);
            }
            match Listener::start(spec, &monitor) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    for l in &listeners {
                        l.stop(Duration::from_millis(100)).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(L7Server {
            listeners: Arc::new(Mutex::new(listeners)),
            monitor,
        })
    }

    /// The bound address of each listener, in config order (useful with port 0).
    pub async fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .await
            .iter()
            .map(|l| l.local)
            .collect()
    }

    /// Applies a new validated configuration (`Config::l7`, certificates
    /// already loaded): certificates, routes, pools, limits. All or nothing:
    /// when a new listener cannot bind, nothing changes and the error says why.
    /// Open connections are kept; listeners that left the config stop
    /// accepting and drain in the background.
    pub async fn reload(&self, specs: &[ListenerSpec]) -> Result<()> {
        let specs = specs.to_vec();
        let mut listeners = self.listeners.lock().await;

        // Build every new state first; only then swap.
        let mut keep: Vec<(Arc<Listener>, ListenerState, Option<tls::CertStore>)> = Vec::new();
        let mut fresh: Vec<ListenerSpec> = Vec::new();
        for spec in specs {
            match listeners
                .iter()
                .find(|l| l.configured == spec.listen && l.resolver.is_some() == spec.tls.is_some())
            {
                Some(l) => {
                    if let Some(t) = &spec.tls {
                        tls::warn_expiry(&spec.name, &t.certs);
                    }
                    let (state, store) =
                        ListenerState::build(spec, l.resolver.as_ref(), &self.monitor)?;
                    keep.push((l.clone(), state, store));
                }
                None => fresh.push(spec),
            }
        }
        let mut started = Vec::new();
        for spec in fresh {
            match Listener::start(spec, &self.monitor) {
                Ok(l) => started.push(l),
                Err(e) => {
                    for l in &started {
                        l.stop(Duration::from_millis(100)).await;
                    }
                    return Err(anyhow::anyhow!(
                        "reload rejected, old configuration kept: {e}"
                    ));
                }
            }
        }

        let kept: Vec<Arc<Listener>> = keep.iter().map(|(l, _, _)| l.clone()).collect();
        for (l, state, store) in keep {
            l.apply(state, store);
        }
        let (stay, gone): (Vec<_>, Vec<_>) = listeners
            .drain(..)
            .partition(|l| kept.iter().any(|k| Arc::ptr_eq(k, l)));
        for l in gone {
            let grace = l.state.load().spec.timeouts.shutdown;
            log::info!(
                "l7 {}: removed from the configuration; draining",
                l.state.load().name
            );
            tokio::spawn(async move { l.stop(grace).await });
        }
        *listeners = stay;
        listeners.extend(started);
        log::info!("l7: configuration reloaded ({} listeners)", listeners.len());
        Ok(())
    }

    /// A handle that reads the listeners' counters and pools (the
    /// dashboard's view), valid across reloads.
    pub fn stats_handle(&self) -> L7Stats {
        L7Stats(self.listeners.clone())
    }

    /// Stops accepting, lets in-flight requests finish (bounded), returns.
    pub async fn shutdown(self) {
        let listeners = std::mem::take(&mut *self.listeners.lock().await);
        for l in &listeners {
            l.cancel.cancel();
        }
        let waits = listeners.iter().map(|l| {
            let grace = l.state.load().spec.timeouts.shutdown;
            l.stop(grace)
        });
        for w in waits {
            w.await;
        }
    }
}

/// Reads what the running listeners counted; see [`L7Server::stats_handle`].
#[derive(Clone)]
pub struct L7Stats(Arc<Mutex<Vec<Arc<Listener>>>>);

impl L7Stats {
    /// Every listener, in configuration order.
    pub async fn views(&self) -> Vec<stats::ListenerView> {
        let listeners = self.0.lock().await.clone();
        listeners
            .iter()
            .map(|l| {
                let st = l.state.load();
                stats::ListenerView {
                    name: st.name.to_string(),
                    listen: l.local,
                    tls: l.resolver.is_some(),
                    counts: l.stats.snapshot(),
                    upstreams: st
                        .pools
                        .iter()
                        .map(|p| stats::UpstreamView {
                            name: p.spec.name.clone(),
                            servers: p
                                .servers
                                .iter()
                                .enumerate()
                                .map(|(i, s)| stats::ServerView {
                                    address: s.addr,
                                    available: p.available(i),
                                    outstanding: s.outstanding(),
                                    requests: s.requests.load(std::sync::atomic::Ordering::Relaxed),
                                })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
