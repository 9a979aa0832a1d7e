//! The HTTP request head as the proxy reads it: client bytes through a real
//! `[[l7]]` listener (`lb_userspace::proxy::conn::handle_connection`:
//! hyper's HTTP/1 server with the listener's limits, then the proxy's own
//! Host, size and routing checks and the forwarding to an upstream).
//!
//! The client is an in-memory stream that hands the input to the server
//! and collects what it writes. When the server has read every byte and
//! asks for more, the listener is stopped (graceful shutdown: a request in
//! flight still gets its response); if the connection is still waiting
//! shortly after, the stream reports EOF. The upstream is a small hyper
//! server on loopback in the same runtime that checks what the proxy
//! forwards.
//!
//! Contract: what the proxy writes is empty or starts with an HTTP/1.x
//! status line; the upstream never sees a request without exactly one
//! `Host`, a wrong `X-Forwarded-For`/`X-Forwarded-Proto`, or a hop-by-hop
//! header; the connection ends; no panic (also none inside a task).

use std::{
    cell::RefCell,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use lb_userspace::{
    config::Config,
    health::Monitor,
    proxy::{config::ListenerSpec, conn::handle_connection, listener::Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use crate::{
    engine::{fnv, Outcome, Target},
    rng::Rng,
};

pub const TARGET: Target = Target {
    name: "http",
    check,
    dictionary: DICTIONARY,
    generate,
    max_len: 24 * 1024,
};

const PEER: &str = "198.18.0.9:40000";
const VIOLATION: &str = "x-fuzz-violation";

/// How long a connection may still wait for input after the listener was
/// stopped before the client side reports EOF.
const SETTLE: Duration = Duration::from_millis(20);
/// A connection that has not ended this long after EOF is a hang.
const HANG: Duration = Duration::from_secs(5);

fn listener_toml(upstream: SocketAddr, redirect: bool) -> String {
    let timeouts = r#"timeouts = { connect = "1s", header = "2s", upstream_response = "2s", idle = "5s", shutdown = "2s" }"#;
    if redirect {
        return format!(
            r#"
[[l7]]
name = "redirect"
listen = "127.0.0.1:0"
redirect_to_https = true
https_port = 8443
access_log = "off"
{timeouts}
"#
        );
    }
    format!(
        r#"
[[l7]]
name = "fuzz"
listen = "127.0.0.1:0"
max_header_size = "4k"
max_body_size = "2k"
access_log = "off"
forwarded_headers = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]
{timeouts}

[[l7.route]]
upstream = "app"

[[l7.route]]
host = "*.api.example.com"
path_prefix = "/v1/"
upstream = "api"

[[l7.route]]
host = "www.example.com"
path_prefix = "/static/"
upstream = "app"

[[l7.upstream]]
name = "app"
servers = ["{upstream}"]

[[l7.upstream]]
name = "api"
servers = ["{upstream}"]
policy = "consistent_hash"
hash_key = "header:x-user"
host_header = "server"
"#
    )
}

fn spec(text: &str) -> ListenerSpec {
    let mut cfg = Config::parse(text).expect("the fuzz l7 config is valid");
    cfg.l7.remove(0)
}

/// What the upstream checks in every request the proxy forwards.
fn upstream_violation(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let hosts = h.get_all("host").iter().count();
    if hosts != 1 {
        return Some(format!("{hosts} Host headers upstream"));
    }
    let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    if xff.len() != 1 || !xff[0].as_bytes().ends_with(b"198.18.0.9") {
        return Some(format!("X-Forwarded-For upstream: {xff:?}"));
    }
    let proto: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
    if proto.len() != 1 || proto[0] != "http" {
        return Some(format!("X-Forwarded-Proto upstream: {proto:?}"));
    }
    for hop in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "expect",
    ] {
        if h.contains_key(hop) {
            return Some(format!("hop-by-hop header `{hop}` forwarded"));
        }
    }
    None
}

async fn upstream(listener: tokio::net::TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let bad = upstream_violation(&req);
                let _ = req.into_body().collect().await;
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                if let Some(why) = bad {
                    r.headers_mut().insert(
                        VIOLATION,
                        why.replace(['\r', '\n'], " ")
                            .parse()
                            .unwrap_or_else(|_| "unprintable".parse().unwrap()),
                    );
                }
                Ok::<_, Infallible>(r)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    main: ListenerSpec,
    redirect: ListenerSpec,
    monitor: Monitor,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (main, redirect) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fuzz upstream on loopback");
        let addr = l.local_addr().unwrap();
        tokio::spawn(upstream(l));
        (
            spec(&listener_toml(addr, false)),
            spec(&listener_toml(addr, true)),
        )
    });
    Fixture {
        rt,
        main,
        redirect,
        monitor: Monitor::new(),
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Shared between the client stream and the harness.
#[derive(Default)]
struct Pipe {
    out: Vec<u8>,
    eof: bool,
    reader: Option<Waker>,
}

/// The client side as the server sees it: the input, then "nothing yet"
/// (or EOF once set); writes are collected.
struct Client {
    input: Vec<u8>,
    pos: usize,
    pipe: Arc<Mutex<Pipe>>,
    starved: Arc<Notify>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.input.len() {
            let n = buf.remaining().min(self.input.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.input[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        let mut p = self.pipe.lock().unwrap();
        if p.eof {
            return Poll::Ready(Ok(()));
        }
        p.reader = Some(cx.waker().clone());
        drop(p);
        self.starved.notify_one();
        Poll::Pending
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.pipe.lock().unwrap().out.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs one client connection; returns what the proxy wrote.
async fn exchange(l: Arc<Listener>, input: &[u8]) -> Result<Vec<u8>, String> {
    let pipe = Arc::new(Mutex::new(Pipe::default()));
    let starved = Arc::new(Notify::new());
    let client = Client {
        input: input.to_vec(),
        pos: 0,
        pipe: pipe.clone(),
        starved: starved.clone(),
    };
    let cancel = l.cancel.clone();
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut conn = tokio::spawn(handle_connection(l, client, peer));
    let joined = tokio::select! {
        r = &mut conn => Some(r),
        () = starved.notified() => None,
    };
    let joined = if let Some(r) = joined {
        r
    } else {
        // All input read: stop the listener (a request in flight
        // finishes), then, if still waiting for input, EOF.
        cancel.cancel();
        if let Ok(r) = tokio::time::timeout(SETTLE, &mut conn).await {
            r
        } else {
            let w = {
                let mut p = pipe.lock().unwrap();
                p.eof = true;
                p.reader.take()
            };
            if let Some(w) = w {
                w.wake();
            }
            if let Ok(r) = tokio::time::timeout(HANG, &mut conn).await {
                r
            } else {
                conn.abort();
                return Err(format!("connection still open {HANG:?} after EOF"));
            }
        }
    };
    if let Err(e) = joined {
        return Err(format!("connection task failed: {e}"));
    }
    let out = std::mem::take(&mut pipe.lock().unwrap().out);
    Ok(out)
}

fn status_of(out: &[u8]) -> Result<u16, String> {
    if out.is_empty() {
        return Ok(0);
    }
    let line_end = out
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(out.len());
    let line = String::from_utf8_lossy(&out[..line_end]);
    let ok = (line.starts_with("HTTP/1.1 ") || line.starts_with("HTTP/1.0 "))
        && line.len() >= 12
        && line.as_bytes()[9..12].iter().all(u8::is_ascii_digit);
    if !ok {
        return Err(format!(
            "the proxy wrote something that is not a response: {line:?}"
        ));
    }
    Ok(line[9..12].parse().unwrap())
}

pub fn check(data: &[u8]) -> Outcome {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        let f = f.get_or_insert_with(fixture);
        let redirect = fnv(&[data]).is_multiple_of(8);
        let spec = if redirect { &f.redirect } else { &f.main };
        let out = f.rt.block_on(async {
            let l = Listener::detached(spec.clone(), &f.monitor)
                .map_err(|e| format!("listener: {e}"))?;
            exchange(l, data).await
        })?;
        let status = status_of(&out)?;
        if let Some(i) = out
            .windows(VIOLATION.len())
            .position(|w| w.eq_ignore_ascii_case(VIOLATION.as_bytes()))
        {
            let end = out[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(out.len(), |e| i + e);
            return Err(format!(
                "upstream saw: {}",
                String::from_utf8_lossy(&out[i..end])
            ));
        }
        let responses = out.windows(9).filter(|w| w.starts_with(b"HTTP/1.")).count();
        Ok(fnv(&[
            &status.to_be_bytes(),
            &[redirect as u8, responses.min(4) as u8],
        ]))
    })
}

const DICTIONARY: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b" HTTP/0.9\r\n",
    b" HTTP/2.0\r\n",
    b" HTTP/1.1\n",
    b"\r\n",
    b"\r\n\r\n",
    b"/",
    b"/static/a.css",
    b"/v1/users?id=1",
    b"*",
    b"http://www.example.com/",
    b"https://www.example.com:8443/x",
    b"//",
    b"/%2e%2e/",
    b"/?a=b#frag",
    b"Host: ",
    b"Host: www.example.com\r\n",
    b"Host: a.api.example.com\r\n",
    b"Host: www.example.com:8080\r\n",
    b"Host: [2001:db8::1]:80\r\n",
    b"Host: www.example.com.\r\n",
    b"Host: \r\n",
    b"Host: a b\r\n",
    b"Content-Length: ",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: 3000\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"0\r\nTrailer: x\r\n\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, x-forwarded-for\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"Keep-Alive: timeout=5\r\n",
    b"Proxy-Connection: keep-alive\r\n",
    b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n",
    b"TE: trailers\r\n",
    b"Trailer: Expires\r\n",
    b"Expect: 100-continue\r\n",
    b"X-Forwarded-For: 198.18.0.1\r\n",
    b"X-Forwarded-Proto: https\r\n",
    b"X-Forwarded-Host: evil\r\n",
    b"Forwarded: for=198.18.0.2;proto=https\r\n",
    b"X-User: 42\r\n",
    b"Cookie: session=abc; other=1\r\n",
    b"User-Agent: fuzz\r\n",
    b"Accept: */*\r\n",
    b": empty-name\r\n",
    b"Bad Header: x\r\n",
    b"X-Obs-Fold: a\r\n b\r\n",
    b"\x00",
    b"\x7f",
    b"\xff",
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];
const TARGETS: &[&str] = &[
    "/",
    "/index.html",
    "/static/app.js",
    "/v1/items?x=1",
    "/v2/",
    "http://www.example.com/abs",
    "*",
    "/a%20b",
];
const HOSTS: &[&str] = &[
    "www.example.com",
    "a.api.example.com",
    "b.c.api.example.com",
    "example.org",
    "WWW.Example.COM:8080",
    "[2001:db8::1]:8080",
    "198.18.0.1",
    "",
    "www.example.com.",
];

/// A request (sometimes two, pipelined), usually well formed.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..=(rng.one_in(4) as usize) {
        let m = rng.pick(METHODS);
        let version = *rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
        out.extend_from_slice(format!("{m} {} {version}\r\n", rng.pick(TARGETS)).as_bytes());
        if !rng.one_in(10) {
            out.extend_from_slice(format!("Host: {}\r\n", rng.pick(HOSTS)).as_bytes());
        }
        for _ in 0..rng.below(10) {
            let h = rng.pick(DICTIONARY);
            if h.ends_with(b"\r\n") && h.contains(&b':') {
                out.extend_from_slice(h);
            }
        }
        let body = if matches!(*m, "POST" | "PUT") || rng.one_in(8) {
            let n = *rng.pick(&[0usize, 5, 100, 2048, 2049]);
            if rng.one_in(3) {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut b = format!("{n:x}\r\n").into_bytes();
                b.extend(std::iter::repeat_n(b'x', n));
                b.extend_from_slice(b"\r\n0\r\n\r\n");
                b
            } else {
                out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
                vec![b'y'; n]
            }
        } else {
            out.extend_from_slice(b"\r\n");
            Vec::new()
        };
        out.extend_from_slice(&body);
    }
    out
}
