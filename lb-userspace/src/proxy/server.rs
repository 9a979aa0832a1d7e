//! Listeners, client connections and the request path.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    accesslog::{AccessLog, Entry},
    config::{HashKey, HostHeader, ListenerSpec},
    headers::{add_forwarding, strip_hop_by_hop, ClientSide},
    route::normalize_request_host,
    tls::{server_config, CertStore, SniResolver},
    upstream::{BoxError, OutstandingGuard, Pool, ProxyBody, SendError},
};
use crate::health::Monitor;

/// Everything a listener serves with; replaced whole on reload.
pub struct ListenerState {
    pub spec: ListenerSpec,
    pub pools: Vec<Arc<Pool>>,
    pub log: AccessLog,
    pub tls: Option<Arc<ServerConfig>>,
    pub name: Arc<str>,
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
}

impl Listener {
    /// Binds `spec.listen` and starts accepting.
    pub async fn start(spec: ListenerSpec, monitor: &Monitor) -> anyhow::Result<Arc<Listener>> {
        let configured = spec.listen;
        let name = spec.name.clone();
        let mut l = Listener::unbound(spec, monitor)?;
        let sock = bind(configured)
            .map_err(|e| anyhow::anyhow!("l7 {name}: cannot listen on {configured}: {e}"))?;
        l.local = sock.local_addr()?;
        let l = Arc::new(l);
        log::info!(
            "l7 {name}: listening on {} ({})",
            l.local,
            if l.resolver.is_some() {
                "TLS"
            } else {
                "plain HTTP"
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
            let mut debt = self.limit_debt.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut debt = self.limit_debt.lock().unwrap_or_else(|e| e.into_inner());
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
            _ = l.cancel.cancelled() => break,
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

/// Per-connection facts and counters shared by its requests.
struct ConnCtx {
    listener: Arc<Listener>,
    peer: SocketAddr,
    tls_version: Option<&'static str>,
    sni: Option<Arc<str>>,
    https: bool,
    start: Instant,
    /// ms since `start` of the last byte read or written.
    last_activity: Arc<AtomicU64>,
    in_flight: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    abusive: CancellationToken,
}

/// Closes a connection whose HTTP/2 peer cancels far more streams than it
/// completes (rapid reset): after this many cancellations...
const RESET_FLOOD_MIN: u64 = 200;
/// ...when they exceed completed requests by this factor.
const RESET_FLOOD_RATIO: u64 = 2;

/// Serves one accepted client connection (TLS handshake when the listener
/// has certificates, then HTTP/1.x or h2) until it ends. `stream` is any
/// byte stream: the accept loop passes TCP sockets, tests and fuzzing pass
/// in-memory pipes. The connection limit is the caller's.
pub async fn handle_connection<S>(l: Arc<Listener>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = l.state.load_full();
    let timeouts = st.spec.timeouts;
    let limits = st.spec.limits;
    let activity = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let io = ActivityIo {
        inner: stream,
        last: activity.clone(),
        start,
    };

    if let Some(tls) = st.tls.clone() {
        let acceptor = TlsAcceptor::from(tls);
        let tls_stream = tokio::select! {
            _ = l.cancel.cancelled() => return,
            r = tokio::time::timeout(timeouts.header, acceptor.accept(io)) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log::info!("l7 {}: TLS handshake with {peer} failed: {e}", st.name);
                    return;
                }
                Err(_) => {
                    log::info!("l7 {}: TLS handshake with {peer} timed out after {:?}", st.name, timeouts.header);
                    return;
                }
            },
        };
        let (_, session) = tls_stream.get_ref();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let tls_version = session.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        });
        let sni = session.server_name().map(Arc::from);
        let ctx = Arc::new(ConnCtx {
            listener: l.clone(),
            peer,
            tls_version,
            sni,
            https: true,
            start,
            last_activity: activity,
            in_flight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            abusive: CancellationToken::new(),
        });
        serve(ctx, TokioIo::new(tls_stream), h2, timeouts, limits).await;
    } else {
        let ctx = Arc::new(ConnCtx {
            listener: l.clone(),
            peer,
            tls_version: None,
            sni: None,
            https: false,
            start,
            last_activity: activity,
            in_flight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            abusive: CancellationToken::new(),
        });
        serve(ctx, TokioIo::new(io), false, timeouts, limits).await;
    }
}

async fn serve<I>(
    ctx: Arc<ConnCtx>,
    io: I,
    h2: bool,
    timeouts: super::config::Timeouts,
    limits: super::config::Limits,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let idle = idle_watch(ctx.clone(), timeouts.idle);
    tokio::pin!(idle);
    let name = ctx.listener.state.load().name.clone();
    let peer = ctx.peer;
    if h2 {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_pending_accept_reset_streams(Some(limits.max_h2_streams as usize))
            .max_local_error_reset_streams(Some(256))
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(Some(timeouts.idle))
            .keep_alive_timeout(timeouts.header);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        drive(
            conn,
            &ctx,
            idle,
            timeouts.shutdown,
            |c| c.graceful_shutdown(),
            &name,
            peer,
        )
        .await;
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(timeouts.header)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(8192) + 8192);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        drive(
            conn,
            &ctx,
            idle,
            timeouts.shutdown,
            |c| c.graceful_shutdown(),
            &name,
            peer,
        )
        .await;
    }
}

/// Runs a connection until it ends, shutting it down gracefully on idle
/// timeout, on server stop and on a reset flood.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    ctx: &ConnCtx,
    mut idle: Pin<&mut impl Future<Output = ()>>,
    grace: Duration,
    shutdown: impl Fn(Pin<&mut C>),
    name: &str,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let cancel = ctx.listener.cancel.clone();
    let res = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = idle.as_mut() => None,
        _ = cancel.cancelled() => None,
        _ = ctx.abusive.cancelled() => {
            log::warn!("l7 {name}: closing connection from {peer}: too many cancelled streams");
            return;
        }
    };
    let res = match res {
        Some(r) => r,
        None => {
            shutdown(conn.as_mut());
            match tokio::time::timeout(grace, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = res {
        log::debug!("l7 {name}: connection from {peer} ended: {e}");
    }
}

async fn idle_watch(ctx: Arc<ConnCtx>, idle: Duration) {
    loop {
        let last = Duration::from_millis(ctx.last_activity.load(Ordering::Relaxed));
        let since_start = ctx.start.elapsed();
        let quiet = since_start.saturating_sub(last);
        if quiet >= idle && ctx.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        let wait = if quiet >= idle { idle } else { idle - quiet };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

/// Records the time of the last read or write that moved bytes.
struct ActivityIo<T> {
    inner: T,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<T> ActivityIo<T> {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ----- the request path -----

/// Counts a request in flight on its connection; tells a cancelled request
/// (client reset the stream or went away) from a completed one.
struct RequestGuard {
    ctx: Arc<ConnCtx>,
    done: bool,
}

impl RequestGuard {
    fn new(ctx: Arc<ConnCtx>) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard { ctx, done: false }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.ctx.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            self.ctx.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            let c = self.ctx.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
            if c >= RESET_FLOOD_MIN
                && c > RESET_FLOOD_RATIO * self.ctx.completed.load(Ordering::Relaxed)
            {
                self.ctx.abusive.cancel();
            }
        }
    }
}

/// The response body sent to the client: counts bytes and writes the access
/// log line when it ends (or is dropped).
struct LoggedBody {
    inner: ProxyBody,
    /// Longest wait for the next frame from upstream (`upstream_response`);
    /// a body that stalls longer ends with an error, which aborts this
    /// response only and frees the client connection's slot.
    idle: Duration,
    /// The stall timer, made at the first wait and moved on (not made
    /// again) after each frame.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last set.
    rearm: bool,
    entry: Option<Entry>,
    start: Instant,
    log: AccessLog,
    guard: Option<RequestGuard>,
    _outstanding: Option<OutstandingGuard>,
    finished: bool,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                self.rearm = true;
                if let (Some(d), Some(e)) = (f.data_ref(), self.entry.as_mut()) {
                    e.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(err))) => {
                let msg = format!("upstream body: {err}");
                if let Some(e) = self.entry.as_mut() {
                    e.reason.get_or_insert(msg);
                }
            }
            Poll::Ready(None) => self.finished = true,
            Poll::Pending => {
                let this = &mut *self;
                let idle = this.idle;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if std::mem::take(&mut this.rearm) {
                    stall.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                if stall.as_mut().poll(cx).is_ready() {
                    let msg = format!("upstream body stalled for {idle:?}");
                    if let Some(e) = self.entry.as_mut() {
                        e.reason.get_or_insert(msg.clone());
                    }
                    return Poll::Ready(Some(Err(msg.into())));
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.done = true;
        }
        if let Some(mut e) = self.entry.take() {
            if !self.finished && !self.inner.is_end_stream() && e.reason.is_none() {
                e.reason = Some("client closed before the response was complete".into());
            }
            e.duration = self.start.elapsed();
            self.log.write(e.format(SystemTime::now()));
        }
    }
}

/// A request body with a size limit; exceeding it fails the body with a
/// marker the request path turns into 413.
struct LimitedBody {
    inner: Incoming,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than max_body_size")
    }
}

impl std::error::Error for BodyTooLarge {}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > self.left {
                        self.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Discards a request body, up to `cap` bytes and 5 seconds.
async fn drain(mut body: Incoming, cap: u64) {
    let mut seen = 0u64;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > cap {
                break;
            }
        }
    })
    .await;
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A host name fit for a `Location` header: letters, digits, `-._:[]`.
fn sane_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

fn hash_key_of(req: &Request<Incoming>, key: &HashKey) -> Option<Vec<u8>> {
    match key {
        HashKey::Header(name) => req.headers().get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
    }
}

struct Local {
    status: StatusCode,
    body: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    reason: Option<String>,
}

fn local(status: StatusCode, reason: Option<String>) -> Local {
    Local {
        status,
        body: format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
        headers: Vec::new(),
        reason,
    }
}

async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<LoggedBody> {
    let start = Instant::now();
    let guard = RequestGuard::new(ctx.clone());
    let st = ctx.listener.state.load_full();
    let h2 = req.version() == Version::HTTP_2;
    let mut entry = Entry {
        listener: st.name.clone(),
        client: Some(ctx.peer),
        method: req.method().as_str().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().to_string()),
        version: version_str(req.version()),
        tls: ctx.tls_version,
        sni: ctx.sni.clone(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        ..Entry::default()
    };

    let (result, upstream_guard) = proxy(&ctx, &st, req, &mut entry).await;
    let resp = match result {
        Ok(r) => r,
        Err(l) => {
            if let Some(r) = &l.reason {
                log::warn!(
                    "l7 {}: {} {} {} from {}: {} ({r})",
                    st.name,
                    entry.method,
                    entry.host,
                    entry.target,
                    ctx.peer,
                    l.status.as_u16()
                );
            }
            entry.reason = l.reason;
            let mut r = Response::new(full(l.body));
            *r.status_mut() = l.status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            for (k, v) in l.headers {
                // HTTP/2 has no connection-specific headers.
                if !(h2 && k == header::CONNECTION) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
    };
    entry.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let log_on = st.log.enabled();
    Response::from_parts(
        parts,
        LoggedBody {
            inner: body,
            idle: st.spec.timeouts.upstream_response,
            stall: None,
            rearm: false,
            entry: log_on.then_some(entry),
            start,
            log: st.log.clone(),
            guard: Some(guard),
            _outstanding: upstream_guard,
            finished: false,
        },
    )
}

type ProxyResult = (Result<Response<ProxyBody>, Local>, Option<OutstandingGuard>);

async fn proxy(
    ctx: &ConnCtx,
    st: &ListenerState,
    req: Request<Incoming>,
    entry: &mut Entry,
) -> ProxyResult {
    let spec = &st.spec;
    // The host the client asked for, as sent (for X-Forwarded-Host and Host).
    let raw_host: Option<String> = match req.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return (
            Err(local(
                StatusCode::BAD_REQUEST,
                Some("more than one Host header".into()),
            )),
            None,
        );
    }
    let host = raw_host
        .as_deref()
        .map(normalize_request_host)
        .unwrap_or_default();
    entry.host = host.clone();
    if req.version() == Version::HTTP_11 && raw_host.is_none() {
        return (
            Err(local(
                StatusCode::BAD_REQUEST,
                Some("HTTP/1.1 request without Host".into()),
            )),
            None,
        );
    }
    if !host.is_empty() && !sane_host(&host) {
        return (
            Err(local(
                StatusCode::BAD_REQUEST,
                Some("malformed Host".into()),
            )),
            None,
        );
    }

    if let Some(r) = spec.redirect {
        if host.is_empty() {
            return (
                Err(local(
                    StatusCode::BAD_REQUEST,
                    Some("no Host to redirect to".into()),
                )),
                None,
            );
        }
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let port = if r.https_port == 443 {
            String::new()
        } else {
            format!(":{}", r.https_port)
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = format!("https://{host_part}{port}{path}");
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::PERMANENT_REDIRECT);
        let mut l = local(status, None);
        match HeaderValue::from_str(&location) {
            Ok(v) => l.headers.push((header::LOCATION, v)),
            Err(_) => {
                return (
                    Err(local(
                        StatusCode::BAD_REQUEST,
                        Some("cannot build Location".into()),
                    )),
                    None,
                )
            }
        }
        return (Err(l), None);
    }

    let limit = spec.limits.max_body_size;
    if limit > 0 {
        if let Some(cl) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if cl > limit {
                let mut l = local(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(format!("Content-Length {cl} exceeds max_body_size {limit}")),
                );
                l.headers
                    .push((header::CONNECTION, HeaderValue::from_static("close")));
                if req.version() == Version::HTTP_2 {
                    // Read and discard what the client is still sending (bounded),
                    // so the stream ends cleanly instead of being reset while
                    // the client may not have read the 413 yet.
                    tokio::spawn(drain(req.into_body(), 4 * limit.max(1 << 20)));
                }
                return (Err(l), None);
            }
        }
    }

    let path = req.uri().path().to_string();
    let Some(ui) = spec.routes.lookup(&host, &path) else {
        return (Err(local(StatusCode::NOT_FOUND, None)), None);
    };
    let pool = st.pools[ui].clone();
    let key = pool
        .spec
        .hash_key
        .as_ref()
        .and_then(|k| hash_key_of(&req, k));

    // Build the upstream request.
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    add_forwarding(
        &mut headers,
        spec.forwarded,
        &ClientSide {
            ip: ctx.peer.ip(),
            proto: if ctx.https { "https" } else { "http" },
            host: raw_host.as_deref(),
        },
    );
    let exceeded = Arc::new(AtomicBool::new(false));
    let body: ProxyBody = if limit > 0 {
        LimitedBody {
            inner: body,
            left: limit,
            exceeded: exceeded.clone(),
        }
        .boxed_unsync()
    } else {
        body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse::<http::Uri>()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut up_req = Request::new(body);
    *up_req.method_mut() = method.clone();
    *up_req.uri_mut() = uri;
    *up_req.version_mut() = Version::HTTP_11;
    *up_req.headers_mut() = headers;

    let attempts = if is_idempotent(&method) {
        1 + pool.spec.retries as usize
    } else {
        1
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last_reason = String::new();
    let up_start = Instant::now();
    loop {
        let Some(i) = pool.pick(key.as_deref(), &tried) else {
            let reason = if tried.is_empty() {
                format!(
                    "upstream {}: no server available (all down or ejected)",
                    pool.spec.name
                )
            } else {
                format!("upstream {}: {last_reason}", pool.spec.name)
            };
            let status = if tried.is_empty() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            return (Err(local(status, Some(reason))), None);
        };
        tried.push(i);
        let addr = pool.servers[i].addr;
        entry.upstream = Some(addr);
        let host_value = match &pool.spec.host_header {
            // An HTTP/1.0 client may send no Host, but the request goes
            // upstream as HTTP/1.1, which must have one: the server's then.
            HostHeader::Preserve => raw_host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
                .or_else(|| HeaderValue::from_str(&addr.to_string()).ok()),
            HostHeader::Server => HeaderValue::from_str(&addr.to_string()).ok(),
            HostHeader::Fixed(v) => Some(v.clone()),
        };
        match host_value {
            Some(v) => up_req.headers_mut().insert(header::HOST, v),
            None => up_req.headers_mut().remove(header::HOST),
        };
        match pool
            .send(
                i,
                up_req,
                spec.timeouts.connect,
                spec.timeouts.upstream_response,
            )
            .await
        {
            Ok((resp, og)) => {
                entry.upstream_duration = Some(up_start.elapsed());
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = Version::HTTP_11;
                let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
                return (Ok(Response::from_parts(parts, body)), Some(og));
            }
            Err(SendError::NotSent(back, reason)) => {
                log::warn!(
                    "l7 {}: upstream {} server {addr}: {reason}",
                    st.name,
                    pool.spec.name
                );
                last_reason = reason;
                if tried.len() >= attempts {
                    return (
                        Err(local(
                            StatusCode::BAD_GATEWAY,
                            Some(format!("upstream {}: {last_reason}", pool.spec.name)),
                        )),
                        None,
                    );
                }
                up_req = *back;
            }
            Err(SendError::Failed(reason)) => {
                entry.upstream_duration = Some(up_start.elapsed());
                if exceeded.load(Ordering::Relaxed) {
                    let mut l = local(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Some(format!("request body exceeds max_body_size {limit}")),
                    );
                    l.headers
                        .push((header::CONNECTION, HeaderValue::from_static("close")));
                    return (Err(l), None);
                }
                return (
                    Err(local(
                        StatusCode::BAD_GATEWAY,
                        Some(format!(
                            "upstream {} server {addr}: {reason}",
                            pool.spec.name
                        )),
                    )),
                    None,
                );
            }
            Err(SendError::Timeout) => {
                entry.upstream_duration = Some(up_start.elapsed());
                return (
                    Err(local(
                        StatusCode::GATEWAY_TIMEOUT,
                        Some(format!(
                            "upstream {} server {addr}: no response within {:?}",
                            pool.spec.name, spec.timeouts.upstream_response
                        )),
                    )),
                    None,
                );
            }
        }
    }
}
