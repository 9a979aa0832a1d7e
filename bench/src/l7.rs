//! L7 benchmark: this proxy against nginx, same certificate, same backend,
//! same worker count, in the same run, on loopback.
//!
//! * `wrk`: HTTP/1.1 over TLS, keep-alive.
//! * `h2load`: HTTP/2 over TLS (per-request log → p50/p99).
//!
//! Each side runs as its own process (the proxy is this binary re-executed
//! with `LB_BENCH_L7_ROLE=proxy:CONFIG`, the backend with `backend`), so the
//! RSS figures are the proxy's alone (nginx: master + workers). Results go to
//! `bench/results/l7.md` and `l7.json`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

const ROLE_ENV: &str = "LB_BENCH_L7_ROLE";

/// L7 proxy vs nginx with wrk (HTTP/1.1) and h2load (HTTP/2), both over TLS.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct L7BenchArgs {
    /// Seconds of load per tool and per server.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Concurrent streams per connection for h2load.
    #[arg(long, default_value_t = 8)]
    pub streams: u32,
    /// Worker threads of this proxy = nginx worker_processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Load generator threads (wrk -t, h2load -t).
    #[arg(long, default_value_t = 1)]
    pub client_threads: u32,
    /// Response body size of the backend, bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Write access logs on both sides (to files in the temp dir).
    #[arg(long)]
    pub access_log: bool,
    /// Output directory (default: the bench crate's results/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the benchmark, or, when re-executed as a child, one of its servers.
pub(crate) fn run(args: &L7BenchArgs) -> Result<()> {
    match std::env::var(ROLE_ENV) {
        Ok(role) if role == "backend" => return serve_backend(args.body_size),
        Ok(role) => {
            if let Some(cfg) = role.strip_prefix("proxy:") {
                return serve_proxy(Path::new(cfg), args.workers);
            }
            bail!("{ROLE_ENV}={role}: unknown role");
        }
        Err(_) => {}
    }
    for tool in ["wrk", "h2load", "nginx"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} not found (apt-get install wrk nghttp2-client nginx)");
        }
    }
    if args.duration == 0 || args.duration > 600 {
        bail!("--duration must be within 1..=600 seconds");
    }

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    lb_userspace::proxy::cert::generate(&lb_userspace::proxy::cert::CertArgs {
        dir: dir.to_path_buf(),
        leaves: vec!["bench.example.com".into()],
        ..Default::default()
    })?;
    let chain = dir.join("bench.example.com.chain.pem");
    let key = dir.join("bench.example.com.key");

    let mut backend = spawn_child("backend")?;
    let backend_addr = read_ready(&mut backend)?;
    let lb_port = free_port()?;
    let nginx_port = free_port()?;

    let lb_cfg = dir.join("lb.toml");
    std::fs::write(
        &lb_cfg,
        format!(
            "[[l7]]\nname = \"bench\"\nlisten = \"127.0.0.1:{lb_port}\"\nunknown_sni = \"default\"\naccess_log = \"{}\"\n\
             [[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n[[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"{backend_addr}\"]\nmax_idle_per_server = 256\n",
            if args.access_log {
                dir.join("lb-access.log").display().to_string()
            } else {
                "off".into()
            },
            chain.display(),
            key.display()
        ),
    )?;
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes {workers};\ndaemon off;\nmaster_process on;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log {alog};\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             keepalive_requests 100000;\n  upstream app {{ server {backend_addr}; keepalive 256; }}\n\
             server {{\n    listen 127.0.0.1:{nginx_port} ssl http2;\n    ssl_certificate {chain};\n    ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n    http2_max_concurrent_streams 128;\n\
             location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
             proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $http_host;\n    }}\n  }}\n}}\n",
            workers = args.workers,
            d = dir.display(),
            alog = if args.access_log {
                format!("{}/nginx-access.log", dir.display())
            } else {
                "off".into()
            },
            chain = chain.display(),
            key = key.display(),
        ),
    )?;

    let mut proxy = spawn_child(&format!("proxy:{}", lb_cfg.display()))?;
    read_ready(&mut proxy)?;
    let mut nginx = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&nginx_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nginx")?;
    wait_port(nginx_port, Duration::from_secs(5)).context("nginx did not start")?;

    let servers = [
        ("lb", lb_port, proxy.id()),
        ("nginx", nginx_port, nginx.id()),
    ];
    let mut results = Vec::new();
    let outcome = (|| -> Result<()> {
        for (tool, run_tool) in [
            (
                "wrk (HTTP/1.1, TLS, keep-alive)",
                run_wrk as fn(&L7BenchArgs, u16, &Path) -> Result<Load>,
            ),
            ("h2load (HTTP/2, TLS)", run_h2load),
        ] {
            for (name, port, pid) in servers {
                eprintln!("l7 bench: {tool} against {name} for {}s", args.duration);
                let (load, peak_rss) = with_rss_sampling(pid, || run_tool(args, port, dir))?;
                results.push(json!({
                    "tool": tool, "server": name, "requests_per_sec": load.rps,
                    "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "requests": load.requests,
                    "errors": load.errors, "peak_rss_kib": peak_rss,
                }));
            }
        }
        Ok(())
    })();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(nginx.id().to_string())
        .status();
    let _ = wait_exit(&mut nginx, Duration::from_secs(5));
    let _ = backend.kill();
    let _ = backend.wait();
    outcome?;

    let report = render(args, &results);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out)?;
    let meta = json!({
        "duration_s": args.duration, "connections": args.connections, "h2_streams": args.streams,
        "workers": args.workers, "client_threads": args.client_threads, "body_size": args.body_size,
        "access_log": args.access_log, "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "results": results,
    });
    std::fs::write(out.join("l7.json"), serde_json::to_string_pretty(&meta)?)?;
    std::fs::write(out.join("l7.md"), &report)?;
    println!("{report}");
    println!("written: {} and l7.json", out.join("l7.md").display());
    Ok(())
}

struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

fn spawn_child(role: &str) -> Result<Child> {
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ROLE_ENV, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the {role} child"))
}

/// Waits for the child's `ready ADDR` line.
fn read_ready(child: &mut Child) -> Result<String> {
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    line.trim()
        .strip_prefix("ready ")
        .map(str::to_string)
        .ok_or_else(|| anyhow!("child did not start: {line:?}"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

fn wait_exit(child: &mut Child, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// RSS (KiB) of `pid` and its children (nginx workers).
fn rss_kib(pid: u32) -> u64 {
    let read = |p: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let mut total = read(&pid.to_string());
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let ppid = std::fs::read_to_string(format!("/proc/{name}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if ppid == Some(pid) {
                total += read(&name);
            }
        }
    }
    total
}

fn with_rss_sampling(pid: u32, f: impl FnOnce() -> Result<Load>) -> Result<(Load, u64)> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(200));
        }
        peak.max(rss_kib(pid))
    });
    let r = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    Ok((r?, peak))
}

/// `1.23ms`, `850.00us`, `1.02s` → ms.
fn wrk_time_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mul)
}

fn run_wrk(args: &L7BenchArgs, port: u16, _dir: &Path) -> Result<Load> {
    let out = Command::new("timeout")
        .arg(format!("{}", args.duration + 30))
        .arg("wrk")
        .arg(format!("-t{}", args.client_threads))
        .arg(format!("-c{}", args.connections.max(args.client_threads)))
        .arg(format!("-d{}s", args.duration))
        .arg("--latency")
        .arg("-H")
        .arg("Host: bench.example.com")
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut load = Load {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            load.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            load.p50_ms = wrk_time_ms(v).unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("99%") {
            load.p99_ms = wrk_time_ms(v).unwrap_or(f64::NAN);
        } else if l.contains("requests in") {
            load.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            load.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if load.rps == 0.0 {
        bail!("wrk printed no Requests/sec:\n{text}");
    }
    Ok(load)
}

fn run_h2load(args: &L7BenchArgs, port: u16, dir: &Path) -> Result<Load> {
    let log = dir.join(format!("h2load-{port}.log"));
    let _ = std::fs::remove_file(&log);
    let out = Command::new("timeout")
        .arg(format!("{}", args.duration + 30))
        .arg("h2load")
        .arg(format!("-t{}", args.client_threads))
        .arg(format!("-c{}", args.connections.max(args.client_threads)))
        .arg(format!("-m{}", args.streams))
        .arg(format!("-D{}", args.duration))
        .arg("--warm-up-time=1")
        .arg("-H")
        .arg(":authority: bench.example.com")
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut load = Load {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("finished in") {
            // finished in 10.00s, 12345.60 req/s, 13.21MB/s
            load.rps = l
                .split(',')
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("requests:") {
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            let nums: Vec<u64> = v
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            if nums.len() >= 6 {
                load.requests = nums[3];
                load.errors = nums[4] + nums[5];
            }
        }
    }
    // Per-request log: start time (us), status, duration (us).
    let mut lat: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    if !lat.is_empty() {
        let pick = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        load.p50_ms = pick(0.50);
        load.p99_ms = pick(0.99);
    }
    if load.rps == 0.0 {
        bail!("h2load printed no req/s:\n{text}");
    }
    Ok(load)
}

fn render(args: &L7BenchArgs, results: &[serde_json::Value]) -> String {
    let mut md = String::new();
    md.push_str("# L7 proxy vs nginx\n\n");
    md.push_str(&format!(
        "Same run, loopback, same certificate (ECDSA P-256 chain) and backend. {} worker(s) each \
         (tokio worker threads / nginx worker_processes), {} connections, {} s per tool and server, \
         {} B responses, access logs {}; h2load with {} streams per connection; {} CPUs shared by \
         everything (load generators included), so compare ratios, not absolute numbers.\n\n",
        args.workers,
        args.connections,
        args.duration,
        args.body_size,
        if args.access_log { "on" } else { "off" },
        args.streams,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    ));
    md.push_str("| tool | server | req/s | p50 ms | p99 ms | errors | peak RSS MiB |\n|---|---|---:|---:|---:|---:|---:|\n");
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} |\n",
            r["tool"].as_str().unwrap_or(""),
            r["server"].as_str().unwrap_or(""),
            r["requests_per_sec"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["errors"].as_u64().unwrap_or(0),
            r["peak_rss_kib"].as_u64().unwrap_or(0) as f64 / 1024.0
        ));
    }
    md.push_str("\n| tool | req/s lb/nginx | p50 lb/nginx | p99 lb/nginx | RSS lb/nginx |\n|---|---:|---:|---:|---:|\n");
    for pair in results.chunks(2) {
        if let [a, b] = pair {
            let ratio =
                |k: &str| a[k].as_f64().unwrap_or(f64::NAN) / b[k].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                a["tool"].as_str().unwrap_or(""),
                ratio("requests_per_sec"),
                ratio("p50_ms"),
                ratio("p99_ms"),
                ratio("peak_rss_kib")
            ));
        }
    }
    md
}

// ----- child roles -----

fn serve_backend(body_size: usize) -> Result<()> {
    use hyper::{server::conn::http1, service::service_fn, Response};
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("ready {}", listener.local_addr()?);
        let body = bytes::Bytes::from(vec![b'x'; body_size]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(http_body_util::Full::new(body))
                                .expect("static response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

fn serve_proxy(cfg: &Path, workers: usize) -> Result<()> {
    let cfg = lb_userspace::config::Config::load(cfg).map_err(|e| anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = lb_userspace::proxy::L7Server::start(&cfg.l7).await?;
        println!("ready {:?}", server.local_addrs().await);
        // Runs until the parent kills it.
        loop {
            tokio::time::sleep(Duration::from_hours(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_units() {
        assert_eq!(wrk_time_ms("850.00us"), Some(0.85));
        assert_eq!(wrk_time_ms("1.50ms"), Some(1.5));
        assert_eq!(wrk_time_ms("1.02s"), Some(1020.0));
        assert_eq!(wrk_time_ms("x"), None);
    }
}
