//! Bodies on the way through: the response body sent to the client (byte
//! count, stall timer, access log line) and the request body with its size
//! limit.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{
    accesslog::{AccessLog, Entry},
    conn::RequestGuard,
    upstream::{BoxError, OutstandingGuard, ProxyBody},
};

/// The response body sent to the client: counts bytes and writes the access
/// log line when it ends (or is dropped).
pub(super) struct LoggedBody {
    pub(super) inner: ProxyBody,
    /// Longest wait for the next frame from upstream (`upstream_response`);
    /// a body that stalls longer ends with an error, which aborts this
    /// response only and frees the client connection's slot.
    pub(super) idle: Duration,
    /// The stall timer, made at the first wait and moved on (not made
    /// again) after each frame.
    pub(super) stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last set.
    pub(super) rearm: bool,
    pub(super) entry: Option<Entry>,
    pub(super) start: Instant,
    pub(super) log: AccessLog,
    pub(super) guard: Option<RequestGuard>,
    pub(super) _outstanding: Option<OutstandingGuard>,
    pub(super) finished: bool,
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
pub(super) struct LimitedBody {
    pub(super) inner: Incoming,
    pub(super) left: u64,
    pub(super) exceeded: Arc<AtomicBool>,
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
pub(super) async fn drain(mut body: Incoming, cap: u64) {
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

pub(super) fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
