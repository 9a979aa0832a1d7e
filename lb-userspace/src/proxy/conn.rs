//! One client connection: TLS handshake, HTTP/1.x or h2 serving with the
//! listener's limits, idle timeout, graceful shutdown, and the per-connection
//! counters that close a connection on a reset flood.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{listener::Listener, proxyproto, request::handle};

/// Per-connection facts and counters shared by its requests.
pub(super) struct ConnCtx {
    pub(super) listener: Arc<Listener>,
    pub(super) peer: SocketAddr,
    pub(super) tls_version: Option<&'static str>,
    pub(super) sni: Option<Arc<str>>,
    pub(super) https: bool,
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

/// Serves one accepted client connection (the PROXY protocol header when the
/// listener requires one, the TLS handshake when it has certificates, then
/// HTTP/1.x or h2) until it ends. `stream` is any byte stream: the accept
/// loop passes TCP sockets, tests and fuzzing pass in-memory pipes. `peer`
/// is the connection's remote address. The connection limit is the caller's.
pub async fn handle_connection<S>(l: Arc<Listener>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = l.state.load_full();
    let timeouts = st.spec.timeouts;
    let limits = st.spec.limits;
    // From here on `peer` is the client: the PROXY header's source address
    // on a proxy_protocol listener.
    let (stream, peer) = match &st.spec.proxy_protocol {
        None => (proxyproto::Prefixed::new(stream, Vec::new()), peer),
        Some(pp) => {
            let r = tokio::select! {
                () = l.cancel.cancelled() => return,
                r = proxyproto::accept(stream, peer, pp, timeouts.header) => r,
            };
            match r {
                Ok((s, client)) => {
                    log::debug!("l7 {}: PROXY header from {peer}: client {client}", st.name);
                    (s, client)
                }
                Err(rej) => {
                    // Closed without an answer: the bytes are not HTTP
                    // from a client we can name.
                    let total = st.proxy_rejects.count(rej.reason);
                    log::debug!(
                        "l7 {}: closing connection from {peer}: {}",
                        st.name,
                        rej.detail
                    );
                    if total.is_power_of_two() {
                        log::warn!(
                            "l7 {}: {total} connections closed without a valid PROXY protocol header so far (last from {peer}: {})",
                            st.name,
                            rej.detail
                        );
                    }
                    return;
                }
            }
        }
    };
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
            () = l.cancel.cancelled() => return,
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
            hyper::server::conn::http2::Connection::graceful_shutdown,
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
            hyper::server::conn::http1::Connection::graceful_shutdown,
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
        () = idle.as_mut() => None,
        () = cancel.cancelled() => None,
        () = ctx.abusive.cancelled() => {
            log::warn!("l7 {name}: closing connection from {peer}: too many cancelled streams");
            return;
        }
    };
    let res = if let Some(r) = res {
        r
    } else {
        shutdown(conn.as_mut());
        match tokio::time::timeout(grace, conn.as_mut()).await {
            Ok(r) => r,
            Err(_) => return,
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
        let wait = if quiet >= idle {
            idle
        } else {
            idle.checked_sub(quiet).unwrap()
        };
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
/// Counts a request in flight on its connection; tells a cancelled request
/// (client reset the stream or went away) from a completed one.
pub(super) struct RequestGuard {
    ctx: Arc<ConnCtx>,
    pub(super) done: bool,
}

impl RequestGuard {
    pub(super) fn new(ctx: Arc<ConnCtx>) -> Self {
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
