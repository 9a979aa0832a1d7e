//! Shared pieces of the L7 integration tests: a test PKI, echo backends
//! (real HTTP/1.1 servers on loopback), a proxy started from TOML, and
//! clients (curl, openssl, and a rustls + hyper client for bulk requests).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_userspace::{
    config::Config,
    proxy::{cert, L7Server},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// True when `tool` is on PATH. Missing: panics under CI, otherwise prints why the test is skipped.
pub(crate) fn have_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} is required for this test (apt-get install {tool}); CI is set, so this is a failure");
        eprintln!("skipping: {tool} not found on PATH");
    }
    found
}

/// A root CA, an intermediate and leaves, written by `lb cert`'s code.
pub(crate) struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// Leaves: `a.example.com`, `*.b.example.com` (+ `b.example.com`), `other.example.net`.
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let args = cert::CertArgs {
            dir: dir.path().to_path_buf(),
            leaves: vec![
                "a.example.com".into(),
                "*.b.example.com,b.example.com".into(),
                "other.example.net".into(),
            ],
            ..cert::CertArgs::default()
        };
        cert::generate(&args).unwrap();
        Pki { dir }
    }
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub(crate) fn root(&self) -> String {
        self.path("root.pem").display().to_string()
    }
    pub(crate) fn chain(&self, stem: &str) -> String {
        self.path(&format!("{stem}.chain.pem"))
            .display()
            .to_string()
    }
    pub(crate) fn key(&self, stem: &str) -> String {
        self.path(&format!("{stem}.key")).display().to_string()
    }
    /// `[[l7.cert]]` tables for the leaves `a.example.com` and `*.b.example.com`.
    pub(crate) fn cert_tables(&self) -> String {
        format!(
            "[[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n[[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.chain("a.example.com"),
            self.key("a.example.com"),
            self.chain("wildcard.b.example.com"),
            self.key("wildcard.b.example.com")
        )
    }
}

/// A real HTTP/1.1 server on loopback. Every answer's body echoes the
/// request line and headers (`name: value` per line, then the body length);
/// the `x-backend` response header carries the backend's name.
///
/// Paths: `/slow/MS` waits MS milliseconds first; `/bytes/N` answers N bytes;
/// `/status/N` answers with status N; anything else echoes.
pub(crate) struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Backend {
    pub(crate) async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (n, h, s) = (name.to_string(), hits.clone(), stop.clone());
        let tasks = TaskTracker::new();
        let t = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
                };
                let (n, h, s) = (n.clone(), h.clone(), s.clone());
                t.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h) = (n.clone(), h.clone());
                        async move { Ok::<_, Infallible>(echo(&n, &h, req).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        () = s.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Backend {
            addr,
            hits,
            stop,
            tasks,
        }
    }

    /// Closes the listener and every open connection: the server is gone.
    pub(crate) async fn kill(&self) {
        self.stop.cancel();
        // Return only once the listener and every connection are closed, so
        // that no request sent afterwards can still reach this server.
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn echo(name: &str, hits: &AtomicU64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let mut text = format!(
        "{} {} {:?}\n",
        req.method(),
        req.uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!(
            "{}: {}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let mut status = 200;
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(s) = path.strip_prefix("/status/") {
        status = s.parse().unwrap_or(200);
    }
    let body_len = req
        .into_body()
        .collect()
        .await
        .map_or(0, |b| b.to_bytes().len());
    text.push_str(&format!("body-length: {body_len}\n"));
    let body = match path.strip_prefix("/bytes/") {
        Some(n) => Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]),
        None => Bytes::from(text),
    };
    Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("connection", "keep-alive")
        .body(Full::new(body))
        .unwrap()
}

/// Parses an echo body into header name → value (the last one wins).
pub(crate) fn echoed_headers(body: &str) -> HashMap<String, String> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts the proxy from a full config text (parsed and validated like `lb run` does).
pub(crate) async fn start_proxy(toml: &str) -> (L7Server, Vec<SocketAddr>) {
    let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("config rejected:\n{e}\n---\n{toml}"));
    let server = L7Server::start(&cfg.l7).await.expect("proxy starts");
    let addrs = server.local_addrs().await;
    (server, addrs)
}

pub(crate) fn upstream_table(name: &str, backends: &[&Backend], extra: &str) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[[l7.upstream]]\nname = \"{name}\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// Runs a command off the async runtime.
pub(crate) async fn run(cmd: &str, args: Vec<String>) -> Output {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(&cmd)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
    })
    .await
    .unwrap()
}

/// `curl` over HTTPS to `host` resolved to the proxy. Returns (exit code, stdout, stderr).
pub(crate) async fn curl_https(
    pki: &Pki,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let port = proxy.port();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-v".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        pki.root(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
    ];
    args.extend(extra.iter().map(std::string::ToString::to_string));
    args.push(format!("https://{host}:{port}{path}"));
    let out = run("curl", args).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A rustls client config trusting the test root, offering `alpn`.
pub(crate) fn client_tls(root_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in lb_userspace::proxy::tls::read_pem_certs(root_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// One HTTP/1.1 keep-alive connection through TLS to the proxy.
pub(crate) struct H1Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl H1Client {
    pub(crate) async fn connect(pki: &Pki, proxy: SocketAddr, host: &str) -> H1Client {
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let connector =
            tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"http/1.1"]));
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1Client {
            sender,
            host: host.to_string(),
        }
    }

    /// GET `path` with extra headers; returns (status, x-backend, body).
    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let mut b = Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", &self.host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.sender.ready().await.expect("connection usable");
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            self.sender.send_request(b.body(Full::default()).unwrap()),
        )
        .await
        .expect("response in time")
        .expect("response");
        let status = resp.status().as_u16();
        let backend = resp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, backend, String::from_utf8_lossy(&body).into_owned())
    }
}

/// An HTTP/2 connection through TLS (ALPN h2) to the proxy.
pub(crate) async fn h2_connect(
    pki: &Pki,
    proxy: SocketAddr,
    host: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&pki.path("root.pem"), &[b"h2"]));
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}
