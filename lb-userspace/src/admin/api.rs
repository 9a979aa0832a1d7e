//! The admin API: HTTP/1.1 + JSON on a Unix socket (file mode 0600 by
//! default, so root only) and, optionally, on a loopback TCP address that
//! requires `Authorization: Bearer <token>`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /v1/status | | daemon summary |
//! | GET | /v1/vips | | every VIP with its reals, health and drain state |
//! | POST | /v1/vips/add | a `[[vip]]` table as JSON | the VIP |
//! | POST | /v1/vips/del | `{"vip": "198.18.100.1:80/tcp"}` | |
//! | POST | /v1/reals/add | `{"vip": ..., "real": {"address", "port", "weight", "health"}}` | the real |
//! | POST | /v1/reals/del | `{"vip": ..., "real": "198.18.11.2:8080"}` | |
//! | POST | /v1/reals/weight | `{"vip": ..., "real": ..., "weight": 3}` | the real |
//! | POST | /v1/reals/drain | `{"vip": ..., "real": ...}` | the real |
//! | GET | /v1/stats | | counters and rates per VIP and real, drop reasons |
//! | GET | /v1/conns?vip=...&limit=N | | up to N conntrack entries (default 100, max 10000) |
//! | GET | /v1/health | | every real's health, check and last failure |
//! | POST | /v1/reload | | reloads the config file (validated first) |
//!
//! Errors are `{"error": "...", "field": "..."}` with a 4xx status (5xx only
//! when the kernel refused an update that passed validation).

use std::{
    convert::Infallible,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{info, warn};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot, Mutex},
};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{config::ApiConfig, views},
    ident::{RealId, VipId},
    l4::{
        config::{RawReal, RawVip},
        control::{Control, ControlError},
    },
};

/// An error the admin API reports: HTTP status, the field at fault (if
/// one is) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::new(400, Some(field), message)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(500, None, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The HTTP status of each kind of refusal: 400 invalid, 404 unknown,
/// 409 conflicting with the current state, 500 refused by the kernel.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match e {
            ControlError::Invalid { .. } => 400,
            ControlError::NotFound { .. } => 404,
            ControlError::Conflict { .. } => 409,
            ControlError::DataPlane(_) => 500,
        };
        let field = e.field().map(str::to_string);
        let message = match e {
            ControlError::Invalid { message, .. }
            | ControlError::NotFound { message, .. }
            | ControlError::Conflict { message, .. }
            | ControlError::DataPlane(message) => message,
        };
        ApiError {
            status,
            field,
            message,
        }
    }
}

fn vip_id(s: &str) -> Result<VipId, ApiError> {
    s.parse().map_err(|e| ApiError::bad("vip", format!("{e}")))
}

fn real_id(s: &str) -> Result<RealId, ApiError> {
    s.parse().map_err(|e| ApiError::bad("real", format!("{e}")))
}

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// Most conntrack entries one `conns` call returns.
pub const MAX_CONNS: usize = 10_000;

/// A reload request to the daemon loop; the answer is the error text.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the API handlers share.
pub struct ApiState {
    pub ctl: Arc<Mutex<Control>>,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub config_path: PathBuf,
    /// The decap role, when configured.
    pub decap: Option<Arc<Mutex<crate::decap::Decap>>>,
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, v: &Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.status, &json!({"error": e.to_string(), "field": e.field}))
}

/// Deserializes a JSON body into `T`, naming the field at fault. serde
/// names unknown and missing fields itself; for a wrong type or value the
/// culprit is found by leaving one key out at a time.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8], prefix: &str) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(prefix, format!("the body is not JSON: {e}")))?;
    value_to::<T>(&v, prefix)
}

fn value_to<T: serde::de::DeserializeOwned>(v: &Value, prefix: &str) -> Result<T, ApiError> {
    let err = match serde_json::from_value::<T>(v.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => e.to_string(),
    };
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    for quoted in [("unknown field `", "`"), ("missing field `", "`")] {
        if let Some(rest) = err.split(quoted.0).nth(1) {
            if let Some(name) = rest.split(quoted.1).next() {
                let what = if quoted.0.starts_with("unknown") {
                    "unknown field"
                } else {
                    "missing"
                };
                return Err(ApiError::bad(&join(name), format!("{what} ({err})")));
            }
        }
    }
    if let Value::Object(map) = &v {
        for k in map.keys() {
            let mut without = map.clone();
            without.remove(k);
            match serde_json::from_value::<T>(Value::Object(without)) {
                Ok(_) => return Err(ApiError::bad(&join(k), err)),
                Err(e) if e.to_string().contains(&format!("missing field `{k}`")) => {
                    return Err(ApiError::bad(&join(k), err))
                }
                Err(_) => {}
            }
        }
    }
    Err(ApiError::bad(
        if prefix.is_empty() { "body" } else { prefix },
        err,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipRef {
    vip: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RealAdd {
    vip: String,
    real: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RealRef {
    vip: String,
    real: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RealWeight {
    vip: String,
    real: String,
    weight: i64,
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one request.
pub async fn handle(
    state: &ApiState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Resp {
    match route(state, method, path, query, body).await {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => error_response(&e),
    }
}

async fn route(
    state: &ApiState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let known = [
        "/v1/status",
        "/v1/vips",
        "/v1/vips/add",
        "/v1/vips/del",
        "/v1/reals/add",
        "/v1/reals/del",
        "/v1/reals/weight",
        "/v1/reals/drain",
        "/v1/stats",
        "/v1/conns",
        "/v1/health",
        "/v1/reload",
    ];
    if !known.contains(&path) {
        return Err(ApiError::new(
            404,
            Some("path"),
            format!("no endpoint {path}"),
        ));
    }
    let want_get = matches!(
        path,
        "/v1/status" | "/v1/vips" | "/v1/stats" | "/v1/conns" | "/v1/health"
    );
    if (want_get && !get) || (!want_get && !post) {
        return Err(ApiError::new(
            405,
            Some("method"),
            format!(
                "{path} takes {}, not {method}",
                if want_get { "GET" } else { "POST" }
            ),
        ));
    }
    let value = |v: &dyn erased::Ser| v.to_value();
    match path {
        "/v1/status" => {
            let ctl = state.ctl.lock().await;
            let mut s = views::status(&ctl);
            drop(ctl);
            s.config = Some(state.config_path.display().to_string());
            if let Some(d) = &state.decap {
                s.decap = Some(
                    d.lock()
                        .await
                        .status()
                        .map_err(|e| ApiError::new(500, None, format!("decap status: {e:#}")))?,
                );
            }
            Ok((200, value(&s)))
        }
        "/v1/vips" => {
            let ctl = state.ctl.lock().await;
            Ok((200, json!({ "vips": views::vips(&ctl) })))
        }
        "/v1/health" => {
            let ctl = state.ctl.lock().await;
            let all = views::vips(&ctl);
            let rows: Vec<Value> = all
                .iter()
                .cloned()
                .flat_map(|v| {
                    let vip = v.vip.clone();
                    v.reals.into_iter().map(move |r| {
                        json!({
                            "vip": vip, "real": r.real, "health": r.health,
                            "check": r.check, "since_secs": r.health_since_secs,
                            "last_failure": r.last_failure, "last_latency_ms": r.last_latency_ms,
                            "probes": r.probes, "in_ring": r.effective_weight > 0,
                            "draining": r.draining,
                        })
                    })
                })
                .collect();
            let all_down: Vec<String> = all
                .into_iter()
                .filter(|v| v.all_down)
                .map(|v| v.vip)
                .collect();
            Ok((200, json!({ "reals": rows, "vips_all_down": all_down })))
        }
        "/v1/stats" => {
            let ctl = state.ctl.lock().await;
            let s = views::stats(&ctl).map_err(|e| ApiError::new(409, None, format!("{e:#}")))?;
            Ok((200, value(&s)))
        }
        "/v1/conns" => {
            let mut vip = None;
            let mut limit = 100usize;
            for (k, v) in query_params(query) {
                match k.as_str() {
                    "vip" => {
                        vip = Some(
                            v.parse::<VipId>()
                                .map_err(|e| ApiError::bad("vip", e.to_string()))?,
                        );
                    }
                    "limit" => {
                        limit = match v.parse::<usize>() {
                            Ok(n) if (1..=MAX_CONNS).contains(&n) => n,
                            _ => {
                                return Err(ApiError::bad(
                                    "limit",
                                    format!("`{v}` is not a number in 1..={MAX_CONNS}"),
                                ))
                            }
                        }
                    }
                    other => {
                        return Err(ApiError::bad(other, "unknown query parameter (vip, limit)"))
                    }
                }
            }
            let ctl = state.ctl.lock().await;
            let dp = ctl
                .dp()
                .ok_or_else(|| ApiError::new(409, None, "no L4 data plane is running"))?;
            if let Some(k) = vip {
                if dp.vip_index(&k).is_none() {
                    return Err(ApiError::new(404, Some("vip"), "no such VIP"));
                }
            }
            let conns = dp.conns(vip, limit).map_err(ApiError::internal)?;
            Ok((
                200,
                json!({ "limit": limit, "count": conns.len(), "conns": conns }),
            ))
        }
        "/v1/vips/add" => {
            let raw: RawVip = from_json(body, "")?;
            let mut ctl = state.ctl.lock().await;
            let id = ctl.vip_add(&raw)?;
            let v = views::vip(&ctl, &id).ok_or_else(|| ApiError::internal("VIP vanished"))?;
            Ok((201, value(&v)))
        }
        "/v1/vips/del" => {
            let r: VipRef = from_json(body, "")?;
            let vip = vip_id(&r.vip)?;
            state.ctl.lock().await.vip_del(&vip)?;
            Ok((200, json!({ "deleted": r.vip })))
        }
        "/v1/reals/add" => {
            let r: RealAdd = from_json(body, "")?;
            let raw: RawReal = value_to(&r.real, "real")?;
            let vip = vip_id(&r.vip)?;
            let mut ctl = state.ctl.lock().await;
            let id = ctl.real_add(&vip, &raw)?;
            let v =
                views::real(&ctl, &vip, &id).ok_or_else(|| ApiError::internal("real vanished"))?;
            Ok((201, value(&v)))
        }
        "/v1/reals/del" => {
            let r: RealRef = from_json(body, "")?;
            let (vip, real) = (vip_id(&r.vip)?, real_id(&r.real)?);
            state.ctl.lock().await.real_del(&vip, &real)?;
            Ok((200, json!({ "deleted": r.real, "vip": r.vip })))
        }
        "/v1/reals/weight" => {
            let r: RealWeight = from_json(body, "")?;
            let (vip, real) = (vip_id(&r.vip)?, real_id(&r.real)?);
            let mut ctl = state.ctl.lock().await;
            ctl.real_weight(&vip, &real, r.weight)?;
            let v = views::real(&ctl, &vip, &real)
                .ok_or_else(|| ApiError::internal("real vanished"))?;
            Ok((200, value(&v)))
        }
        "/v1/reals/drain" => {
            let r: RealRef = from_json(body, "")?;
            let (vip, real) = (vip_id(&r.vip)?, real_id(&r.real)?);
            let mut ctl = state.ctl.lock().await;
            ctl.real_weight(&vip, &real, 0)?;
            let v = views::real(&ctl, &vip, &real)
                .ok_or_else(|| ApiError::internal("real vanished"))?;
            Ok((200, value(&v)))
        }
        "/v1/reload" => {
            if !body.is_empty() && body.iter().any(|b| !b.is_ascii_whitespace()) {
                let v: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad("body", format!("not JSON: {e}")))?;
                if v.as_object().is_none_or(|o| !o.is_empty()) {
                    return Err(ApiError::bad(
                        "body",
                        "reload takes no parameters (send {} or nothing)",
                    ));
                }
            }
            let (tx, rx) = oneshot::channel();
            state
                .reload
                .send(tx)
                .await
                .map_err(|_| ApiError::new(503, None, "the daemon is shutting down"))?;
            match rx.await {
                Ok(Ok(())) => Ok((
                    200,
                    json!({ "reloaded": state.config_path.display().to_string() }),
                )),
                Ok(Err(e)) => Err(ApiError::new(422, Some("config"), e)),
                Err(_) => Err(ApiError::new(503, None, "the daemon is shutting down")),
            }
        }
        _ => Err(ApiError::new(
            404,
            Some("path"),
            format!("no endpoint {path}"),
        )),
    }
}

mod erased {
    use serde_json::Value;
    /// Anything serializable, as a JSON value.
    pub(super) trait Ser {
        fn to_value(&self) -> Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> Value {
            serde_json::to_value(self).unwrap_or(Value::Null)
        }
    }
}

fn token_ok(req: &Request<Incoming>, token: &str) -> bool {
    let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Some(given) = h.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// `given == token`, in time that depends on the token's length only.
pub(super) fn constant_time_eq(given: &[u8], token: &[u8]) -> bool {
    let mut diff = given.len() ^ token.len();
    for (i, tb) in token.iter().enumerate() {
        diff |= (given.get(i).copied().unwrap_or(0) ^ tb) as usize;
    }
    diff == 0
}

async fn serve_request(
    state: Arc<ApiState>,
    token: Option<Arc<String>>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    if let Some(t) = &token {
        if !token_ok(&req, t) {
            return Ok(error_response(&ApiError::new(
                401,
                Some("authorization"),
                "missing or wrong bearer token",
            )));
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error_response(&ApiError::new(
                413,
                Some("body"),
                format!("larger than {MAX_BODY} bytes"),
            )))
        }
    };
    Ok(handle(&state, &method, &path, query.as_deref(), &body).await)
}

/// Binds the Unix socket: a stale socket file (no one listening) is
/// replaced; a live one is an error.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another running lb", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Created with no access at all, then opened up to `mode`, so there is
    // no moment where others could connect.
    // SAFETY: umask only swaps the process's file mode mask; it has no
    // preconditions and cannot fail.
    let old = unsafe { libc::umask(0o777) };
    let l = UnixListener::bind(path);
    // SAFETY: as above; this restores the mask read by the first call.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(l)
}

/// Serves the API on a Unix socket until `stop`.
pub async fn serve_unix(listener: UnixListener, state: Arc<ApiState>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { warn!("api: accept: {e}"); tokio::time::sleep(std::time::Duration::from_millis(100)).await; continue; }
            }
        };
        spawn_conn(TokioIo::new(stream), state.clone(), None, stop.clone());
    }
}

/// Serves the API on loopback TCP with a bearer token until `stop`.
pub async fn serve_tcp(
    listener: TcpListener,
    state: Arc<ApiState>,
    token: String,
    stop: CancellationToken,
) {
    let token = Arc::new(token);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { warn!("api: accept: {e}"); tokio::time::sleep(std::time::Duration::from_millis(100)).await; continue; }
            }
        };
        spawn_conn(
            TokioIo::new(stream),
            state.clone(),
            Some(token.clone()),
            stop.clone(),
        );
    }
}

fn spawn_conn<I>(io: I, state: Arc<ApiState>, token: Option<Arc<String>>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| serve_request(state.clone(), token.clone(), req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(io, svc);
        tokio::select! {
            _ = conn => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Starts the API listeners the config asks for.
pub fn start(
    cfg: &ApiConfig,
    state: Arc<ApiState>,
    stop: CancellationToken,
) -> Result<Option<PathBuf>> {
    let mut socket = None;
    if let Some(path) = &cfg.socket {
        match bind_unix(path, cfg.socket_mode) {
            Ok(l) => {
                info!(
                    "admin API on {} (mode {:o})",
                    path.display(),
                    cfg.socket_mode
                );
                tokio::spawn(serve_unix(l, state.clone(), stop.clone()));
                socket = Some(path.clone());
            }
            Err(e) if !cfg.socket_configured => {
                warn!("admin API off: {e:#} (set [api] socket to another path)");
            }
            Err(e) => return Err(e),
        }
    }
    if let (Some(addr), Some(token)) = (cfg.listen, cfg.token.clone()) {
        let std =
            std::net::TcpListener::bind(addr).map_err(|e| anyhow!("api.listen {addr}: {e}"))?;
        std.set_nonblocking(true)?;
        let l = TcpListener::from_std(std)?;
        info!("admin API on http://{addr} (bearer token)");
        tokio::spawn(serve_tcp(l, state, token, stop));
    }
    Ok(socket)
}

/// Serves `GET /metrics` on `addr` until `stop`.
/// What `/metrics` reads besides the reconciler: the L7 and DNS roles.
#[derive(Clone, Default)]
pub struct RoleStats {
    pub l7: Option<crate::proxy::L7Stats>,
    pub dns: Option<crate::dns::DnsStats>,
}

pub async fn serve_metrics(
    addr: SocketAddr,
    ctl: Arc<Mutex<Control>>,
    roles: RoleStats,
    stop: CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("metrics.listen {addr}: {e}"))?;
    info!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let ctl = ctl.clone();
            let roles = roles.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let ctl = ctl.clone();
                    let roles = roles.clone();
                    async move {
                        let resp = if req.uri().path() != "/metrics" {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                                .expect("valid")
                        } else if req.method() != Method::GET {
                            Response::builder()
                                .status(StatusCode::METHOD_NOT_ALLOWED)
                                .body(Full::new(Bytes::from_static(b"GET only\n")))
                                .expect("valid")
                        } else {
                            let mut text = crate::admin::metrics::render(&*ctl.lock().await);
                            let l7 = match &roles.l7 {
                                Some(h) => h.views().await,
                                None => Vec::new(),
                            };
                            let dns = roles.dns.as_ref().map(crate::dns::DnsStats::view);
                            crate::admin::metrics::render_roles(&mut text, &l7, dns.as_ref());
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(text)))
                                .expect("valid")
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = from_json::<RealWeight>(br#"{"vip":"a","real":"b","weight":"x"}"#, "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("weight"), "{e}");
        assert_eq!(e.status, 400);
        let e = from_json::<RealWeight>(br#"{"vip":"a","real":"b"}"#, "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("weight"), "{e}");
        let e = from_json::<RealWeight>(br#"{"vip":"a","real":"b","weight":1,"wieght":2}"#, "")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("wieght"), "{e}");
        let e =
            from_json::<RawReal>(br#"{"address":"198.18.11.2","port":"80"}"#, "real").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("real.port"), "{e}");
        let e = from_json::<VipRef>(b"{not json", "").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_params(Some("vip=198.18.100.1%3A80%2Ftcp&limit=5")),
            vec![
                ("vip".to_string(), "198.18.100.1:80/tcp".to_string()),
                ("limit".to_string(), "5".to_string())
            ]
        );
    }
}
