//! Upstream pools: server selection (round robin, least outstanding,
//! consistent hash), keep-alive connection pools, passive ejection after
//! connect failures and active checks through the shared `health` monitor.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::watch, task::JoinHandle};

use super::config::{Policy, UpstreamSpec};
use crate::health::{Monitor, Status, Target, TargetId};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

struct IdleConn {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// One upstream server and its state.
pub struct Server {
    pub addr: SocketAddr,
    addr_hash: u64,
    outstanding: AtomicUsize,
    idle: Mutex<Vec<IdleConn>>,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the server is ejected (0 = not).
    ejected_until_ms: AtomicU64,
    health: Option<(TargetId, watch::Receiver<Status>)>,
    pub requests: AtomicU64,
}

impl Server {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// Counts a request against a server until dropped (end of the response body).
pub struct OutstandingGuard(Arc<Server>);

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request could not be proxied.
pub enum SendError {
    /// Nothing reached the server (connect failed, or a pooled connection was
    /// found closed before the request was written): safe to retry.
    NotSent(Box<Request<ProxyBody>>, String),
    /// The request may have reached the server.
    Failed(String),
    /// No response head within the upstream response timeout.
    Timeout,
}

pub struct Pool {
    pub spec: UpstreamSpec,
    pub servers: Vec<Arc<Server>>,
    rr: AtomicUsize,
    epoch: Instant,
    listener: String,
    monitor: Option<Monitor>,
    reaper: Option<JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.take() {
            r.abort();
        }
        if let Some(m) = &self.monitor {
            for s in &self.servers {
                if let Some((id, _)) = &s.health {
                    m.remove(*id);
                }
            }
        }
    }
}

/// FNV-1a, then a splitmix64 finalizer: stable across runs and builds.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Pool {
    /// Builds a pool; starts the idle-connection reaper and, with a check
    /// configured, registers every server with `monitor`. Needs a tokio runtime.
    pub fn new(listener: &str, spec: UpstreamSpec, monitor: &Monitor) -> Arc<Pool> {
        let servers: Vec<Arc<Server>> = spec
            .servers
            .iter()
            .map(|addr| {
                let health = spec.health.as_ref().map(|check| {
                    let id = monitor.add(Target::new(*addr, check.clone()));
                    let rx = monitor.watch(id).expect("just added");
                    (id, rx)
                });
                Arc::new(Server {
                    addr: *addr,
                    addr_hash: hash64(addr.to_string().as_bytes()),
                    outstanding: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    health,
                    requests: AtomicU64::new(0),
                })
            })
            .collect();
        let idle_timeout = spec.idle_timeout;
        let weak: Vec<std::sync::Weak<Server>> = servers.iter().map(Arc::downgrade).collect();
        let reaper = tokio::spawn(async move {
            let period = (idle_timeout / 2).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(period).await;
                for s in weak.iter().filter_map(std::sync::Weak::upgrade) {
                    let mut idle = s
                        .idle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    idle.retain(|c| c.since.elapsed() < idle_timeout && !c.sender.is_closed());
                }
            }
        });
        Arc::new(Pool {
            monitor: spec.health.as_ref().map(|_| monitor.clone()),
            spec,
            servers,
            rr: AtomicUsize::new(0),
            epoch: Instant::now(),
            listener: listener.to_string(),
            reaper: Some(reaper),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// True when a server may get new requests: not ejected, and up by its active check.
    pub fn available(&self, i: usize) -> bool {
        let s = &self.servers[i];
        if s.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms() {
            return false;
        }
        match &s.health {
            Some((_, rx)) => rx.borrow().health.is_up(),
            None => true,
        }
    }

    /// Chooses a server for a request, skipping `tried`. `key` is the
    /// consistent-hash key, when the policy has one and the request carries it.
    pub fn pick(&self, key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        let n = self.servers.len();
        let ok = |i: usize| !tried.contains(&i) && self.available(i);
        match (self.spec.policy, key) {
            (Policy::ConsistentHash, Some(key)) => {
                // Rendezvous hashing: the highest score among usable servers
                // wins, so a key moves only when its server goes away.
                let kh = hash64(key);
                (0..n)
                    .filter(|&i| ok(i))
                    .max_by_key(|&i| mix64(kh ^ self.servers[i].addr_hash))
            }
            (Policy::LeastOutstanding, _) => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| self.servers[i].outstanding())
            }
            _ => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
        }
    }

    fn record_connect_failure(&self, i: usize, reason: &str) {
        let s = &self.servers[i];
        let fails = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.spec.eject_after > 0 && fails >= self.spec.eject_after {
            let until = self.now_ms() + self.spec.eject_for.as_millis() as u64;
            let prev = s.ejected_until_ms.swap(until, Ordering::Relaxed);
            if prev < self.now_ms() {
                log::warn!(
                    "l7 {}: upstream {} server {} ejected for {:?} after {fails} consecutive connect failures (last: {reason})",
                    self.listener,
                    self.spec.name,
                    s.addr,
                    self.spec.eject_for
                );
            }
        }
    }

    fn record_connect_success(&self, i: usize) {
        let s = &self.servers[i];
        if s.consecutive_failures.swap(0, Ordering::Relaxed) >= self.spec.eject_after.max(1) {
            log::info!(
                "l7 {}: upstream {} server {} accepts connections again",
                self.listener,
                self.spec.name,
                s.addr
            );
        }
        s.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    /// Sends `req` to server `i`, on a pooled connection when one is idle.
    /// Returns the response head and a guard that counts the request as
    /// outstanding until dropped.
    pub async fn send(
        self: &Arc<Self>,
        i: usize,
        mut req: Request<ProxyBody>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, OutstandingGuard), SendError> {
        let server = self.servers[i].clone();
        server.outstanding.fetch_add(1, Ordering::Relaxed);
        server.requests.fetch_add(1, Ordering::Relaxed);
        let guard = OutstandingGuard(server.clone());

        // Pooled connections first; one found closed gives the request back.
        loop {
            let idle = {
                let mut idle = server
                    .idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                idle.pop()
            };
            let Some(conn) = idle else { break };
            if conn.sender.is_closed()
                || !conn.sender.is_ready()
                || conn.since.elapsed() >= self.spec.idle_timeout
            {
                continue;
            }
            match self
                .dispatch(&server, conn.sender, req, response_timeout)
                .await
            {
                Ok(resp) => return Ok((resp, guard)),
                Err(DispatchError::Unsent(r)) => {
                    req = *r;
                }
                Err(DispatchError::Failed(e)) => return Err(SendError::Failed(e)),
                Err(DispatchError::Timeout) => return Err(SendError::Timeout),
            }
        }

        // A new connection.
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(server.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = format!("connect to {}: {e}", server.addr);
                    self.record_connect_failure(i, &reason);
                    return Err(SendError::NotSent(Box::new(req), reason));
                }
                Err(_) => {
                    let reason = format!(
                        "connect to {}: timed out after {connect_timeout:?}",
                        server.addr
                    );
                    self.record_connect_failure(i, &reason);
                    return Err(SendError::NotSent(Box::new(req), reason));
                }
            };
        self.record_connect_success(i);
        let _ = stream.set_nodelay(true);
        let (sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(v) => v,
            Err(e) => {
                return Err(SendError::NotSent(
                    Box::new(req),
                    format!("HTTP handshake with {}: {e}", server.addr),
                ))
            }
        };
        let addr = server.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("upstream connection to {addr} ended: {e}");
            }
        });
        match self.dispatch(&server, sender, req, response_timeout).await {
            Ok(resp) => Ok((resp, guard)),
            Err(DispatchError::Unsent(r)) => Err(SendError::NotSent(
                r,
                format!("connection to {addr} closed before the request was sent"),
            )),
            Err(DispatchError::Failed(e)) => Err(SendError::Failed(e)),
            Err(DispatchError::Timeout) => Err(SendError::Timeout),
        }
    }

    async fn dispatch(
        &self,
        server: &Arc<Server>,
        mut sender: http1::SendRequest<ProxyBody>,
        req: Request<ProxyBody>,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, DispatchError> {
        let fut = sender.try_send_request(req);
        let Ok(result) = tokio::time::timeout(response_timeout, fut).await else {
            return Err(DispatchError::Timeout);
        };
        match result {
            Ok(resp) => {
                // Back to the pool once the response body is read and the
                // connection is ready for the next request.
                let max_idle = self.spec.max_idle_per_server;
                if max_idle > 0 {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if sender.ready().await.is_ok() {
                            let mut idle = server
                                .idle
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if idle.len() < max_idle {
                                idle.push(IdleConn {
                                    sender,
                                    since: Instant::now(),
                                });
                            }
                        }
                    });
                }
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Err(DispatchError::Unsent(Box::new(req))),
                None => Err(DispatchError::Failed(format!(
                    "{}: {}",
                    server.addr,
                    e.into_error()
                ))),
            },
        }
    }
}

enum DispatchError {
    Unsent(Box<Request<ProxyBody>>),
    Failed(String),
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::{HashKey, HostHeader};

    fn spec(policy: Policy, n: usize) -> UpstreamSpec {
        UpstreamSpec {
            name: "app".into(),
            servers: (0..n)
                .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
                .collect(),
            policy,
            hash_key: (policy == Policy::ConsistentHash).then(|| HashKey::Cookie("sid".into())),
            host_header: HostHeader::Preserve,
            max_idle_per_server: 4,
            idle_timeout: Duration::from_mins(1),
            retries: 2,
            eject_after: 2,
            eject_for: Duration::from_mins(1),
            health: None,
        }
    }

    #[tokio::test]
    async fn round_robin_spreads_evenly() {
        let pool = Pool::new("t", spec(Policy::RoundRobin, 3), &Monitor::new());
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[pool.pick(None, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        assert_eq!(pool.pick(None, &[0, 1, 2]), None);
    }

    #[tokio::test]
    async fn least_outstanding_prefers_idle_servers() {
        let pool = Pool::new("t", spec(Policy::LeastOutstanding, 3), &Monitor::new());
        pool.servers[0].outstanding.store(5, Ordering::Relaxed);
        pool.servers[2].outstanding.store(1, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(pool.pick(None, &[]), Some(1));
        }
        assert_eq!(pool.pick(None, &[1]), Some(2));
    }

    #[tokio::test]
    async fn consistent_hash_is_sticky_and_moves_little() {
        let pool = Pool::new("t", spec(Policy::ConsistentHash, 4), &Monitor::new());
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| pool.pick(Some(k.as_bytes()), &[]).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| pool.pick(Some(k.as_bytes()), &[]).unwrap())
            .collect();
        assert_eq!(first, again);
        let mut counts = [0; 4];
        for &i in &first {
            counts[i] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "uneven spread {counts:?}");
        // Without server 3, only its keys move.
        for (k, &was) in keys.iter().zip(&first) {
            let now = pool.pick(Some(k.as_bytes()), &[3]).unwrap();
            if was != 3 {
                assert_eq!(now, was);
            }
        }
    }

    #[tokio::test]
    async fn ejection_after_consecutive_connect_failures() {
        let pool = Pool::new("t", spec(Policy::RoundRobin, 2), &Monitor::new());
        pool.record_connect_failure(0, "refused");
        assert!(pool.available(0));
        pool.record_connect_failure(0, "refused");
        assert!(!pool.available(0));
        for _ in 0..10 {
            assert_eq!(pool.pick(None, &[]), Some(1));
        }
        pool.record_connect_success(0);
        assert!(pool.available(0));
    }
}
