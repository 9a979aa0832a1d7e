//! The request path: Host checks, redirect, body size limit, routing,
//! header rewrite, the upstream call with retries, and local error
//! responses.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    accesslog::Entry,
    body::{drain, full, LimitedBody, LoggedBody},
    config::{HashKey, HostHeader},
    conn::{ConnCtx, RequestGuard},
    headers::{add_forwarding, strip_hop_by_hop, ClientSide},
    listener::ListenerState,
    route::normalize_request_host,
    upstream::{BoxError, OutstandingGuard, ProxyBody, SendError},
};

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

pub(super) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<LoggedBody> {
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
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string()),
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
    ctx.listener.stats.record(entry.status, start.elapsed());
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
    entry.host.clone_from(&host);
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
            .map_or("/", http::uri::PathAndQuery::as_str);
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
        .map_or("/", http::uri::PathAndQuery::as_str)
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
