//! The client side of the admin API: `lb status`, `lb vip ...`,
//! `lb real ...`, `lb stats`, `lb conns`, `lb health`, `lb reload`.
//!
//! Every read command prints a table, or the API's JSON with `--json`.
//! Exit status 0 on success; otherwise one line `lb: <reason>` and 1.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::ident::RealId;

/// Where the API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: SocketAddr, token: String },
}

/// A connection-per-request API client.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    pub timeout: Duration,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends one request; returns the status and the JSON body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        tokio::time::timeout(self.timeout, self.request_inner(method, path, body))
            .await
            .map_err(|_| anyhow!("the API did not answer within {:?}", self.timeout))?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lb")
            .header("content-type", "application/json");
        let (status, body) = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                    anyhow!(
                        "cannot connect to {}: {e} (is `lb run` running? the socket needs root by default)",
                        p.display()
                    )
                })?;
                send(TokioIo::new(s), req.body(Full::new(bytes))?).await?
            }
            Endpoint::Tcp { addr, token } => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| anyhow!("cannot connect to {addr}: {e}"))?;
                req = req.header("authorization", format!("Bearer {token}"));
                send(TokioIo::new(s), req.body(Full::new(bytes))?).await?
            }
        };
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).with_context(|| {
                format!("the API answered {status} with a body that is not JSON")
            })?
        };
        Ok((status, v))
    }

    /// Like [`Client::request`], turning a non-2xx answer into an error
    /// carrying the API's message.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, v) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| v.to_string(), str::to_string);
            bail!("{msg} (HTTP {status})");
        }
        Ok(v)
    }
}

async fn send<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(u16, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// How `lb vip list` prints its table (`--json` prints the API's JSON
/// whichever is chosen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VipFormat {
    /// lb's own table: weights, ring weight, health, drain state.
    #[default]
    Table,
    /// The layout of `ipvsadm -Ln`, for operators and scripts used to LVS.
    Ipvsadm,
}

/// A CLI verb.
#[derive(Debug, Clone)]
pub enum Verb {
    Status,
    VipList(VipFormat),
    VipAdd(Value),
    VipDel(String),
    RealAdd {
        vip: String,
        real: Value,
    },
    RealDel {
        vip: String,
        real: String,
    },
    RealWeight {
        vip: String,
        real: String,
        weight: i64,
    },
    RealDrain {
        vip: String,
        real: String,
    },
    Stats {
        watch: Option<Duration>,
        count: Option<u64>,
    },
    Conns {
        vip: Option<String>,
        limit: usize,
    },
    Health,
    Reload,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs one verb and prints its result.
pub async fn run(client: &Client, verb: Verb, as_json: bool) -> Result<()> {
    let print = |v: &Value, human: &dyn Fn(&Value) -> String| {
        if as_json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", human(v));
        }
    };
    match verb {
        Verb::Status => {
            let v = client.call("GET", "/v1/status", None).await?;
            print(&v, &human_status);
        }
        Verb::VipList(format) => {
            let v = client.call("GET", "/v1/vips", None).await?;
            if format == VipFormat::Ipvsadm && !as_json {
                // Counters come from the stats endpoint; without an L4 data
                // plane there are none, and the columns show `-`.
                let stats = client.call("GET", "/v1/stats", None).await.ok();
                print!("{}", ipvsadm_vips(&v, stats.as_ref()));
            } else {
                print(&v, &human_vips);
            }
        }
        Verb::VipAdd(body) => {
            let v = client.call("POST", "/v1/vips/add", Some(&body)).await?;
            print(&v, &|v| {
                format!("added {}\n", v["vip"].as_str().unwrap_or("?"))
            });
        }
        Verb::VipDel(vip) => {
            let v = client
                .call("POST", "/v1/vips/del", Some(&json!({ "vip": vip })))
                .await?;
            print(&v, &|_| format!("deleted {vip}\n"));
        }
        Verb::RealAdd { vip, real } => {
            let v = client
                .call(
                    "POST",
                    "/v1/reals/add",
                    Some(&json!({ "vip": vip, "real": real })),
                )
                .await?;
            print(&v, &|v| {
                format!("{vip}: added {}\n", v["real"].as_str().unwrap_or("?"))
            });
        }
        Verb::RealDel { vip, real } => {
            let v = client
                .call(
                    "POST",
                    "/v1/reals/del",
                    Some(&json!({ "vip": vip, "real": real })),
                )
                .await?;
            print(&v, &|_| format!("{vip}: removed {real}\n"));
        }
        Verb::RealWeight { vip, real, weight } => {
            let v = client
                .call(
                    "POST",
                    "/v1/reals/weight",
                    Some(&json!({ "vip": vip, "real": real, "weight": weight })),
                )
                .await?;
            print(&v, &|_| format!("{vip}: {real} weight {weight}\n"));
        }
        Verb::RealDrain { vip, real } => {
            let v = client
                .call(
                    "POST",
                    "/v1/reals/drain",
                    Some(&json!({ "vip": vip, "real": real })),
                )
                .await?;
            print(&v, &|_| format!("{vip}: draining {real} (no new flows)\n"));
        }
        Verb::Stats { watch, count } => {
            // On a terminal, --watch redraws in place like top; into a pipe
            // it prints one report after another, each under its own header.
            let redraw = watch.is_some() && !as_json && std::io::stdout().is_terminal();
            let mut n = 0u64;
            let mut prev: Option<(Instant, Value)> = None;
            loop {
                let v = client.call("GET", "/v1/stats", None).await?;
                let at = Instant::now();
                if as_json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    let mut report = String::new();
                    if let Some(every) = watch {
                        report.push_str(&watch_header(
                            &clock(),
                            every,
                            prev.as_ref().map(|(t, p)| (at.duration_since(*t), p)),
                            &v,
                        ));
                    }
                    report.push_str(&human_stats(&v));
                    let mut out = std::io::stdout().lock();
                    if redraw {
                        // Cursor home, clear the screen.
                        write!(out, "\x1b[H\x1b[2J")?;
                    }
                    write!(out, "{report}")?;
                    out.flush()?;
                }
                prev = Some((at, v));
                n += 1;
                match watch {
                    Some(every) if count.is_none_or(|c| n < c) => {
                        tokio::select! {
                            () = tokio::time::sleep(every) => {}
                            _ = tokio::signal::ctrl_c() => return Ok(()),
                        }
                        if !as_json && !redraw {
                            println!();
                        }
                    }
                    _ => break,
                }
            }
        }
        Verb::Conns { vip, limit } => {
            let mut path = format!("/v1/conns?limit={limit}");
            if let Some(v) = &vip {
                path.push_str(&format!("&vip={}", enc(v)));
            }
            let v = client.call("GET", &path, None).await?;
            print(&v, &human_conns);
        }
        Verb::Health => {
            let v = client.call("GET", "/v1/health", None).await?;
            print(&v, &human_health);
        }
        Verb::Reload => {
            let v = client.call("POST", "/v1/reload", Some(&json!({}))).await?;
            print(&v, &|v| {
                format!("reloaded {}\n", v["reloaded"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(std::vec::Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human_status(v: &Value) -> String {
    let ifaces: Vec<String> = v["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{} ({})", s(&i["name"]), s(&i["mode"])))
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!(
        "lb {} up {:.0}s, config {}\nL4: {} VIPs, {}/{} reals up, interfaces [{}], pinned {}\n",
        s(&v["version"]),
        v["uptime_secs"].as_f64().unwrap_or(0.0),
        s(&v["config"]),
        v["vips"],
        v["reals_up"],
        v["reals"],
        ifaces.join(", "),
        s(&v["pin_path"]),
    );
    if let Some(a) = v["vips_all_down"].as_array().filter(|a| !a.is_empty()) {
        out.push_str(&format!(
            "ALL REALS DOWN: {}\n",
            a.iter().map(s).collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(&format!(
        "L7 listeners: {}, DNS: {}, reloads: {} ok, {} failed\n",
        v["l7_listeners"],
        if v["dns"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        v["reloads_ok"],
        v["reloads_failed"]
    ));
    if let Some(d) = v["decap"].as_object() {
        let ifaces: Vec<String> = d["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{} ({})", s(&i[0]), s(&i[1])))
            .collect();
        let counters: Vec<String> = d["counters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c[0] != "rx" && c[1].as_u64().is_some_and(|n| n > 0))
            .map(|c| format!("{}={}", s(&c[0]), c[1]))
            .collect();
        out.push_str(&format!(
            "decap: interfaces [{}], GUE port {}, {} host addresses, {} packets; {}\n",
            ifaces.join(", "),
            d["gue_port"],
            d["addresses"].as_array().map_or(0, Vec::len),
            d["counters"][0][1],
            if counters.is_empty() {
                "nothing stripped yet".to_string()
            } else {
                counters.join(" ")
            }
        ));
    }
    out
}

fn human_vips(v: &Value) -> String {
    let mut rows = vec![vec![
        "VIP".into(),
        "REAL".into(),
        "WEIGHT".into(),
        "IN RING".into(),
        "HEALTH".into(),
        "STATE".into(),
    ]];
    for vip in v["vips"].as_array().into_iter().flatten() {
        let name = format!(
            "{} {}{}",
            s(&vip["vip"]),
            s(&vip["mode"]),
            if vip["all_down"].as_bool() == Some(true) {
                format!(" [all down: {}]", s(&vip["all_down_policy"]))
            } else {
                String::new()
            }
        );
        for (i, r) in vip["reals"].as_array().into_iter().flatten().enumerate() {
            rows.push(vec![
                if i == 0 { name.clone() } else { String::new() },
                s(&r["real"]),
                s(&r["weight"]),
                s(&r["effective_weight"]),
                s(&r["health"]),
                if r["draining"].as_bool() == Some(true) {
                    format!(
                        "draining {:.0}s{}",
                        r["drain_seconds"].as_f64().unwrap_or(0.0),
                        if r["drain_finished"].as_bool() == Some(true) {
                            " (timed out)"
                        } else {
                            ""
                        }
                    )
                } else {
                    "active".into()
                },
            ]);
        }
    }
    table(rows)
}

/// `lb vip list --format ipvsadm`: the shape of `ipvsadm -Ln`.
///
/// * Scheduler: `maglev` (consistent hashing like IPVS's `mh`, but lb's
///   own ring, so it is not called `mh`).
/// * Flags: `gue:PORT` for GUE tunnels, `ring N` for a ring that is not the
///   default size, `all-down(POLICY)` while every real is down.
/// * Forward: `Masq` (nat), `Tunnel` (dsr, IPIP or GUE), `FullNat`.
/// * Weight: the weight in the published ring, so 0 for a real that is
///   down or draining. ipvsadm hides such reals; lb keeps them, with
///   `down` or `draining` after the counters.
/// * NewFlows, Packets: totals since lb started (a real's counters cover
///   every VIP it serves), not ipvsadm's ActiveConn/InActConn: conntrack
///   has no cheap per-real count of open connections.
pub fn ipvsadm_vips(v: &Value, stats: Option<&Value>) -> String {
    fn hostport(addr: &Value, port: &Value) -> String {
        let a = s(addr);
        let p = match port.as_u64() {
            Some(0) => "*".to_string(),
            _ => s(port),
        };
        if a.contains(':') {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        }
    }
    let counters = |vip: &Value, real: &Value| -> (String, String) {
        let t = stats
            .and_then(|st| st["vips"].as_array())
            .and_then(|vs| vs.iter().find(|x| x["vip"] == vip["vip"]))
            .and_then(|x| x["reals"].as_array())
            .and_then(|rs| rs.iter().find(|x| x["real"] == real["real"]))
            .map(|x| &x["totals"]);
        match t {
            Some(t) => (s(&t["new_flows"]), s(&t["packets"])),
            None => ("-".into(), "-".into()),
        }
    };
    let mut out = String::from(
        "lb virtual server table, ipvsadm -Ln layout (scheduler maglev; Weight: weight in the ring; \
         NewFlows, Packets: totals since start, not active connections)\n\
         Prot LocalAddress:Port Scheduler Flags\n  \
         -> RemoteAddress:Port           Forward Weight NewFlows   Packets\n",
    );
    for vip in v["vips"].as_array().into_iter().flatten() {
        let mode = s(&vip["mode"]);
        let forward = match mode.as_str() {
            "nat" => "Masq",
            "fullnat" => "FullNat",
            m if m.starts_with("dsr") => "Tunnel",
            _ => "?",
        };
        let mut flags = Vec::new();
        if let Some(port) = mode.strip_prefix("dsr/gue:") {
            flags.push(format!("gue:{port}"));
        }
        if vip["ring_size"].as_u64() != Some(u64::from(crate::l4::config::DEFAULT_RING_SIZE)) {
            flags.push(format!("ring {}", s(&vip["ring_size"])));
        }
        if vip["all_down"].as_bool() == Some(true) {
            flags.push(format!("all-down({})", s(&vip["all_down_policy"])));
        }
        let line = format!(
            "{:<4} {} maglev {}",
            s(&vip["protocol"]).to_uppercase(),
            hostport(&vip["address"], &vip["port"]),
            flags.join(" ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
        for r in vip["reals"].as_array().into_iter().flatten() {
            let (flows, packets) = counters(vip, r);
            let marker = if r["health"] == "down" {
                "down"
            } else if r["draining"].as_bool() == Some(true) {
                "draining"
            } else {
                ""
            };
            let line = format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10} {marker}",
                hostport(&r["address"], &r["port"]),
                forward,
                s(&r["effective_weight"]),
                flows,
                packets,
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

fn human_stats(v: &Value) -> String {
    let mut rows = vec![vec![
        "VIP / REAL".into(),
        "PACKETS".into(),
        "BYTES".into(),
        "NEW FLOWS".into(),
        "PKT/S".into(),
        "BYTE/S".into(),
        "FLOW/S".into(),
    ]];
    let line = |name: String, x: &Value| {
        vec![
            name,
            s(&x["totals"]["packets"]),
            s(&x["totals"]["bytes"]),
            s(&x["totals"]["new_flows"]),
            format!(
                "{:.1}",
                x["rates"]["packets_per_sec"].as_f64().unwrap_or(0.0)
            ),
            format!("{:.0}", x["rates"]["bytes_per_sec"].as_f64().unwrap_or(0.0)),
            format!(
                "{:.1}",
                x["rates"]["new_flows_per_sec"].as_f64().unwrap_or(0.0)
            ),
        ]
    };
    for vip in v["vips"].as_array().into_iter().flatten() {
        rows.push(line(s(&vip["vip"]), vip));
        for r in vip["reals"].as_array().into_iter().flatten() {
            rows.push(line(format!("  {}", s(&r["real"])), r));
        }
    }
    let mut out = table(rows);
    let drops: Vec<String> = v["drops"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "drops: {}\n",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    ));
    out
}

/// The local wall clock as `HH:MM:SS`.
fn clock() -> String {
    // SAFETY: time(NULL) only returns the current time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: an all-zero `tm` is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // thread-safe variant and writes only into `tm`.
    if unsafe { libc::localtime_r(&raw const now, &raw mut tm) }.is_null() {
        return "--:--:--".into();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// The header of one `lb stats --watch` report: the time, and from the
/// second report on the rates between this report and the previous one
/// (`prev`: how long ago it was taken, and its JSON). Totals are summed
/// over the VIPs present in both reports; drops over every drop reason.
pub fn watch_header(
    clock: &str,
    every: Duration,
    prev: Option<(Duration, &Value)>,
    now: &Value,
) -> String {
    let mut out = format!("--- {clock}, every {:.1}s ---\n", every.as_secs_f64());
    let Some((ago, before)) = prev else {
        out.push_str("rates: from the next report on\n");
        return out;
    };
    let secs = ago.as_secs_f64().max(1e-3);
    let (mut packets, mut flows) = (0u64, 0u64);
    for vip in now["vips"].as_array().into_iter().flatten() {
        let Some(old) = before["vips"]
            .as_array()
            .and_then(|vs| vs.iter().find(|x| x["vip"] == vip["vip"]))
        else {
            continue;
        };
        let diff = |k: &str| {
            vip["totals"][k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(old["totals"][k].as_u64().unwrap_or(0))
        };
        packets += diff("packets");
        flows += diff("new_flows");
    }
    let drops: u64 = now["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| {
            n.as_u64()
                .unwrap_or(0)
                .saturating_sub(before["drops"][k].as_u64().unwrap_or(0))
        })
        .sum();
    out.push_str(&format!(
        "rates over {secs:.2}s: {:.1} packets/s, {:.1} new flows/s, {:.1} drops/s\n",
        packets as f64 / secs,
        flows as f64 / secs,
        drops as f64 / secs,
    ));
    out
}

fn human_conns(v: &Value) -> String {
    let mut rows = vec![vec![
        "PROTO".into(),
        "CLIENT".into(),
        "VIP".into(),
        "REAL".into(),
    ]];
    for c in v["conns"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&c["protocol"]),
            s(&c["client"]),
            s(&c["vip"]),
            s(&c["real"]),
        ]);
    }
    let mut out = table(rows);
    out.push_str(&format!("{} entries (limit {})\n", v["count"], v["limit"]));
    out
}

fn human_health(v: &Value) -> String {
    let mut rows = vec![vec![
        "VIP".into(),
        "REAL".into(),
        "HEALTH".into(),
        "FOR".into(),
        "IN RING".into(),
        "LAST FAILURE".into(),
        "CHECK".into(),
    ]];
    for r in v["reals"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&r["vip"]),
            s(&r["real"]),
            s(&r["health"]),
            r["since_secs"]
                .as_f64()
                .map_or_else(|| "-".into(), |x| format!("{x:.0}s")),
            if r["in_ring"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
            .into(),
            s(&r["last_failure"]),
            s(&r["check"]),
        ]);
    }
    let mut out = table(rows);
    if let Some(a) = v["vips_all_down"].as_array().filter(|a| !a.is_empty()) {
        out.push_str(&format!(
            "every real down (all_down policy applies): {}\n",
            a.iter().map(s).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// Parses `ADDR:PORT` or `ADDR:PORT=WEIGHT` into a real body.
pub fn real_body(spec: &str, weight: Option<i64>, health: &[String]) -> Result<Value> {
    let (addr, w) = match spec.rsplit_once('=') {
        Some((a, w)) => (
            a,
            Some(
                w.parse::<i64>()
                    .map_err(|_| anyhow!("real `{spec}`: `{w}` is not a weight"))?,
            ),
        ),
        None => (spec, None),
    };
    let real: RealId = addr.parse().map_err(|e| anyhow!("real: {e}"))?;
    let mut v = json!({ "address": real.address.to_string(), "port": real.port });
    if let Some(w) = weight.or(w) {
        v["weight"] = json!(w);
    }
    if !health.is_empty() {
        v["health"] = health_body(health)?;
    }
    Ok(v)
}

/// `key=value` pairs into a health table (numbers stay numbers).
pub fn health_body(pairs: &[String]) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for p in pairs {
        let (k, val) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--health `{p}`: use key=value (e.g. kind=http)"))?;
        let val = match k {
            "rise" | "fall" | "port" => json!(val
                .parse::<i64>()
                .map_err(|_| anyhow!("--health {k}: `{val}` is not a number"))?),
            _ => json!(val),
        };
        m.insert(k.to_string(), val);
    }
    Ok(Value::Object(m))
}
