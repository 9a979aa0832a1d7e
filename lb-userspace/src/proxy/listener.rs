//! Listeners: the state a listener serves with, binding, the accept loop,
//! the connection limit, reload of state and limits, stop and drain.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    accesslog::AccessLog,
    config::ListenerSpec,
    conn::handle_connection,
    proxyproto::{self, RejectCounters},
    stats::ListenerStats,
    tls::{server_config, CertStore, SniResolver},
    upstream::Pool,
};
use crate::health::Monitor;

/// Everything a listener serves with; replaced whole on reload.
pub struct ListenerState {
    pub spec: ListenerSpec,
    pub pools: Vec<Arc<Pool>>,
    pub log: AccessLog,
    pub tls: Option<Arc<ServerConfig>>,
    pub name: Arc<str>,
    /// Connections closed for want of a valid PROXY protocol header (kept
    /// by listener name across reloads).
    pub proxy_rejects: Arc<RejectCounters>,
}

impl ListenerState {
    /// Builds pools, opens the access log and (for TLS) fills `resolver`'s
    /// store from the spec. Needs a tokio runtime.
    pub fn build(
        spec: ListenerSpec,
        resolver: Option<&Arc<SniResolver>>,
        monitor: &Monitor,
    ) -> anyhow::Result<(ListenerState, Option<CertStore>)> {
        let log = AccessLog::open(&spec.name, &spec.access_log)
            .map_err(|e| anyhow::anyhow!("l7 {}: access_log: {e}", spec.name))?;
        let (tls, store) = match (&spec.tls, resolver) {
            (Some(t), Some(r)) => (
                Some(server_config(r.clone(), t)?),
                Some(CertStore::new(&t.certs, t.unknown_sni)),
            ),
            _ => (None, None),
        };
        let pools = spec
            .upstreams
            .iter()
            .map(|u| Pool::new(&spec.name, u.clone(), monitor))
            .collect();
        Ok((
            ListenerState {
                name: spec.name.as_str().into(),
                proxy_rejects: proxyproto::counters(&spec.name),
                spec,
                pools,
                log,
                tls,
            },
            store,
        ))
    }
}

/// A bound listener and its accept loop.
pub struct Listener {
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub state: Arc<ArcSwap<ListenerState>>,
    pub resolver: Option<Arc<SniResolver>>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub limit: Arc<Semaphore>,
    pub max_connections: AtomicUsize,
    /// Permits still to be taken out of `limit` after `max_connections` was
    /// lowered while connections held them; paid from freed permits before
    /// a new connection is admitted.
    pub limit_debt: std::sync::Mutex<usize>,
    /// Requests answered, by status class and latency; kept across reloads.
    pub stats: Arc<ListenerStats>,
}

impl Listener {
    /// Binds `spec.listen` and starts accepting.
    pub fn start(spec: ListenerSpec, monitor: &Monitor) -> anyhow::Result<Arc<Listener>> {
        let configured = spec.listen;
        let name = spec.name.clone();
        let mut l = Listener::unbound(spec, monitor)?;
        let sock = bind(configured)
            .map_err(|e| anyhow::anyhow!("l7 {name}: cannot listen on {configured}: {e}"))?;
        l.local = sock.local_addr()?;
        let l = Arc::new(l);
        log::info!(
            "l7 {name}: listening on {} ({}{})",
            l.local,
            if l.resolver.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            },
            if l.state.load().spec.proxy_protocol.is_some() {
                ", PROXY protocol required"
            } else {
                ""
            }
        );
        tokio::spawn(accept_loop(l.clone(), sock));
        Ok(l)
    }

    /// A listener with its state built but no socket and no accept loop:
    /// connections are handed to it with [`handle_connection`] (tests and
    /// fuzzing drive it over in-memory streams). Needs a tokio runtime.
    pub fn detached(spec: ListenerSpec, monitor: &Monitor) -> anyhow::Result<Arc<Listener>> {
        Ok(Arc::new(Listener::unbound(spec, monitor)?))
    }

    fn unbound(spec: ListenerSpec, monitor: &Monitor) -> anyhow::Result<Listener> {
        let resolver = spec.tls.as_ref().map(|_| {
            Arc::new(SniResolver {
                store: ArcSwap::from_pointee(CertStore::default()),
            })
        });
        let configured = spec.listen;
        let max = spec.limits.max_connections;
        let (state, store) = ListenerState::build(spec, resolver.as_ref(), monitor)?;
        if let (Some(r), Some(s)) = (&resolver, store) {
            r.store.store(Arc::new(s));
        }
        Ok(Listener {
            configured,
            local: configured,
            state: Arc::new(ArcSwap::from_pointee(state)),
            resolver,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limit: Arc::new(Semaphore::new(max)),
            max_connections: AtomicUsize::new(max),
            limit_debt: std::sync::Mutex::new(0),
            stats: Arc::default(),
        })
    }

    /// Swaps in a new state (routes, pools, certificates). Open connections
    /// keep their TLS session; their next request uses the new routes.
    pub fn apply(&self, state: ListenerState, store: Option<CertStore>) {
        if let (Some(r), Some(s)) = (&self.resolver, store) {
            r.store.store(Arc::new(s));
        }
        let new_max = state.spec.limits.max_connections;
        let old_max = self.max_connections.swap(new_max, Ordering::Relaxed);
        {
            let mut debt = self
                .limit_debt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if new_max > old_max {
                // Cancel outstanding debt first, then hand out the rest.
                let up = new_max - old_max;
                let paid = up.min(*debt);
                *debt -= paid;
                self.limit.add_permits(up - paid);
            } else if new_max < old_max {
                // Only free permits can be forgotten now; the rest are held
                // by open connections and are taken back as those close.
                let down = old_max - new_max;
                let removed = self.limit.forget_permits(down);
                *debt += down - removed;
            }
        }
        self.state.store(Arc::new(state));
    }

    /// Takes permits freed since `max_connections` was lowered out of
    /// circulation until the semaphore matches the configured limit.
    fn pay_limit_debt(&self) {
        let mut debt = self
            .limit_debt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *debt > 0 {
            let removed = self.limit.forget_permits(*debt);
            *debt -= removed;
        }
    }

    /// Stops accepting, asks every connection to finish, waits up to `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            log::warn!(
                "l7 {}: {} connections still open after {grace:?}; closing them",
                self.state.load().name,
                self.tracker.len()
            );
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn accept_loop(l: Arc<Listener>, sock: TcpListener) {
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = l.cancel.cancelled() => break,
            r = sock.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                l.pay_limit_debt();
                let Ok(permit) = l.limit.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        log::warn!(
                            "l7 {}: max_connections ({}) reached; closing new connections ({refused} so far)",
                            l.state.load().name,
                            l.max_connections.load(Ordering::Relaxed)
                        );
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let l2 = l.clone();
                l.tracker.spawn(async move {
                    handle_connection(l2, stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::error!("l7 {}: accept failed: {e}", l.state.load().name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
