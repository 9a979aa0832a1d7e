//! The live status page (`[api] http`): every role's state on one page,
//! rendered by the daemon as HTML (it reads without JavaScript, reloading
//! itself every 5 s) and refreshed in place once a second by a few lines
//! of inline script that fetch `/fragment`. Everything it serves is in the
//! binary; nothing is loaded from elsewhere. Read-only.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/fragment` | the page's `<main>` content, for the refresh |
//! | `/dashboard.json` | the same state as JSON |
//!
//! Rates come from a sampler that reads every counter once a second while
//! someone looks (a request in the last minute), and idles otherwise.
//! Request latency quantiles are over the last 10 s.
//!
//! On a non-loopback address every request needs the API's token, as a
//! bearer token or as the password of HTTP Basic authentication (any user
//! name), which lets a browser ask for it.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Result};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{info, warn};
use serde::Serialize;
use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::sync::CancellationToken;

use super::views::{self, RealView, VipView};
use crate::{
    decap::{Decap, DecapStatus},
    dns::{DnsStats, DnsView},
    l4::{
        control::Control,
        dataplane::{Snapshot, Totals},
    },
    proxy::{
        stats::{Counts, ListenerView},
        L7Stats,
    },
};

/// How often the page refreshes itself and the sampler reads counters.
const PERIOD: Duration = Duration::from_secs(1);
/// Samples kept: the latency window is this many periods.
const WINDOW: usize = 11;
/// The sampler idles when no one asked for the page for this long.
const IDLE_AFTER: Duration = Duration::from_mins(1);
/// How often the conntrack table is counted (a walk of its keys).
const CONNTRACK_EVERY: Duration = Duration::from_secs(10);

/// What the page reads.
pub struct Sources {
    pub ctl: Arc<Mutex<Control>>,
    pub l7: Option<L7Stats>,
    pub dns: Option<DnsStats>,
    pub decap: Option<Arc<Mutex<Decap>>>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    l4: Option<Snapshot>,
    l7: Vec<(String, Counts)>,
    dns: Option<DnsView>,
}

pub struct Dashboard {
    src: Sources,
    started: Instant,
    history: std::sync::Mutex<VecDeque<Arc<Sample>>>,
    /// (entries, capacity, when counted).
    conntrack: std::sync::Mutex<Option<(u64, u64, Instant)>>,
    /// Milliseconds since `started` of the last page request.
    last_view_ms: AtomicU64,
}

/// A counter and its rate.
#[derive(Debug, Clone, Serialize)]
pub struct Counter {
    pub name: String,
    pub value: u64,
    pub per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficRates {
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    pub new_flows_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealRow {
    #[serde(flatten)]
    pub real: RealView,
    pub totals: Totals,
    pub rates: Option<TrafficRates>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VipRow {
    #[serde(flatten)]
    pub vip: VipView,
    pub totals: Totals,
    pub rates: Option<TrafficRates>,
    pub real_rows: Vec<RealRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct L7Row {
    #[serde(flatten)]
    pub listener: ListenerView,
    pub requests_per_sec: Option<f64>,
    /// Requests by status class over the latency window.
    pub window_classes: [u64; 5],
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsRow {
    #[serde(flatten)]
    pub dns: DnsView,
    pub queries_per_sec: Option<f64>,
    pub rrl_dropped_per_sec: Option<f64>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub version: &'static str,
    pub host: String,
    pub generated: String,
    pub uptime_secs: f64,
    pub interfaces: Vec<(String, &'static str)>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Seconds the rates are measured over (`None` until two samples exist).
    pub rate_secs: Option<f64>,
    pub vips: Vec<VipRow>,
    pub drops: Vec<Counter>,
    pub counters: Vec<Counter>,
    pub conntrack: Option<(u64, u64)>,
    pub l7: Vec<L7Row>,
    pub dns: Option<DnsRow>,
    pub decap: Option<DecapStatus>,
}

fn rates(now: &Totals, before: Option<&Totals>, secs: f64) -> TrafficRates {
    let b = before.copied().unwrap_or_default();
    TrafficRates {
        packets_per_sec: now.packets.saturating_sub(b.packets) as f64 / secs,
        bytes_per_sec: now.bytes.saturating_sub(b.bytes) as f64 / secs,
        new_flows_per_sec: now.new_flows.saturating_sub(b.new_flows) as f64 / secs,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Dashboard {
    pub fn new(src: Sources) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            src,
            started: Instant::now(),
            history: std::sync::Mutex::default(),
            conntrack: std::sync::Mutex::default(),
            last_view_ms: AtomicU64::new(0),
        })
    }

    fn viewed(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_view_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn watched(&self) -> bool {
        let last = self.last_view_ms.load(Ordering::Relaxed);
        last != 0
            && self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
                < IDLE_AFTER
    }

    async fn sample(&self) -> Sample {
        let l4 = {
            let ctl = self.src.ctl.lock().await;
            let snap = ctl.dp().and_then(|d| d.snapshot().ok());
            let due = self
                .conntrack
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_none_or(|(_, _, at)| at.elapsed() >= CONNTRACK_EVERY);
            if due {
                if let Some(Ok((n, cap))) = ctl
                    .dp()
                    .map(crate::l4::dataplane::Dataplane::conntrack_usage)
                {
                    *self
                        .conntrack
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((n, cap, Instant::now()));
                }
            }
            snap
        };
        let l7 = match &self.src.l7 {
            Some(h) => h
                .views()
                .await
                .into_iter()
                .map(|v| (v.name, v.counts))
                .collect(),
            None => Vec::new(),
        };
        Sample {
            at: Instant::now(),
            l4,
            l7,
            dns: self.src.dns.as_ref().map(DnsStats::view),
        }
    }

    async fn push_sample(&self) {
        let s = Arc::new(self.sample().await);
        let mut h = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.push_back(s);
        while h.len() > WINDOW {
            h.pop_front();
        }
    }

    /// Reads every counter once a period while the page is watched.
    pub async fn run_sampler(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.watched() {
                self.push_sample().await;
            } else {
                self.history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            }
        }
    }

    /// The page's state now.
    pub async fn page(&self) -> Page {
        self.viewed();
        let empty = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty();
        if empty {
            self.push_sample().await;
        }
        let (newest, prev, oldest) = {
            let h = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = h.len();
            (
                h.back().cloned(),
                (n >= 2).then(|| h[n - 2].clone()),
                (n >= 2).then(|| h[0].clone()),
            )
        };
        let newest = newest.expect("a sample was just taken");
        let secs = prev
            .as_ref()
            .map(|p| newest.at.duration_since(p.at).as_secs_f64().max(1e-3));

        let ctl = self.src.ctl.lock().await;
        let counters = ctl.counters();
        let interfaces = ctl
            .dp()
            .map(|d| {
                d.attached()
                    .map(|(n, m)| (n.to_string(), m.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let empty_snap = Snapshot::default();
        let now_l4 = newest.l4.as_ref().unwrap_or(&empty_snap);
        let prev_l4 = prev.as_ref().and_then(|p| p.l4.as_ref());
        let vips = views::vips(&ctl)
            .into_iter()
            .map(|v| {
                let (t, reals) = now_l4.vips.get(&v.vip).cloned().unwrap_or_default();
                let pv = prev_l4.and_then(|p| p.vips.get(&v.vip));
                let real_rows = v
                    .reals
                    .iter()
                    .map(|r| {
                        let rt = reals.get(&r.real).copied().unwrap_or_default();
                        RealRow {
                            real: r.clone(),
                            totals: rt,
                            rates: secs.map(|s| rates(&rt, pv.and_then(|p| p.1.get(&r.real)), s)),
                        }
                    })
                    .collect();
                VipRow {
                    rates: secs.map(|s| rates(&t, pv.map(|p| &p.0), s)),
                    totals: t,
                    real_rows,
                    vip: v,
                }
            })
            .collect();
        drop(ctl);
        let counter = |name: &str, value: u64, before: Option<u64>| Counter {
            name: name.to_string(),
            value,
            per_sec: secs
                .zip(before)
                .map(|(s, b)| value.saturating_sub(b) as f64 / s),
        };
        let mut drops = Vec::new();
        let mut others = Vec::new();
        for (k, v) in &now_l4.global {
            let c = counter(
                k,
                *v,
                prev_l4.map(|p| p.global.get(k).copied().unwrap_or(0)),
            );
            if k.starts_with("drop_") {
                if *v > 0 {
                    drops.push(c);
                }
            } else {
                others.push(c);
            }
        }

        let l7 = match &self.src.l7 {
            Some(h) => h
                .views()
                .await
                .into_iter()
                .map(|v| {
                    let find = |s: &Sample| {
                        s.l7.iter()
                            .find(|(n, _)| *n == v.name)
                            .map(|(_, c)| c.clone())
                    };
                    let rate = prev.as_deref().and_then(find).zip(secs).map(|(b, s)| {
                        newest
                            .l7
                            .iter()
                            .find(|(n, _)| *n == v.name)
                            .map_or(0, |(_, c)| c.requests.saturating_sub(b.requests))
                            as f64
                            / s
                    });
                    let window = match oldest.as_deref().and_then(find) {
                        Some(b) => v.counts.since(&b),
                        None => v.counts.clone(),
                    };
                    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                    L7Row {
                        requests_per_sec: rate,
                        window_classes: window.classes,
                        p50_ms: window.quantile(0.5).map(ms),
                        p99_ms: window.quantile(0.99).map(ms),
                        listener: v,
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let dns = self.src.dns.as_ref().map(|h| {
            let d = h.view();
            let before = prev.as_ref().and_then(|p| p.dns.clone());
            let per = |now: u64, f: fn(&DnsView) -> u64| {
                before
                    .as_ref()
                    .zip(secs)
                    .map(|(b, s)| now.saturating_sub(f(b)) as f64 / s)
            };
            DnsRow {
                queries_per_sec: per(d.queries, |v| v.queries),
                rrl_dropped_per_sec: per(d.rrl_dropped, |v| v.rrl_dropped),
                dns: d,
            }
        });
        let decap = match &self.src.decap {
            Some(d) => d.lock().await.status().ok(),
            None => None,
        };
        Page {
            version: env!("CARGO_PKG_VERSION"),
            host: hostname(),
            generated: crate::proxy::accesslog::rfc3339_millis(SystemTime::now()),
            uptime_secs: counters.uptime.as_secs_f64(),
            interfaces,
            reloads_ok: counters.reloads_ok,
            reloads_failed: counters.reloads_failed,
            rate_secs: secs,
            vips,
            drops,
            counters: others,
            conntrack: self
                .conntrack
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .map(|(n, c, _)| (n, c)),
            l7,
            dns,
            decap,
        }
    }
}

// ---- HTML ----

/// Text escaped for HTML content and attribute values.
fn esc(s: impl std::fmt::Display) -> String {
    let s = s.to_string();
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// 1234567 → `1.23M`.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), |r| format!("{}/s", si(r)))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(
        || "–".to_string(),
        |v| {
            if v >= 1000.0 {
                format!("{:.1} s", v / 1000.0)
            } else {
                format!("{v:.1} ms")
            }
        },
    )
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn traffic_cells(out: &mut String, t: &Totals, r: Option<&TrafficRates>) {
    let _ = write!(
        out,
        "<td class=\"n\" data-packets=\"{}\">{}</td><td class=\"n\" data-pps=\"{:.1}\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\" data-new-flows=\"{}\">{}</td>",
        t.packets,
        si(t.packets as f64),
        r.map_or(0.0, |r| r.packets_per_sec),
        rate(r.map(|r| r.packets_per_sec)),
        si(t.bytes as f64),
        rate(r.map(|r| r.bytes_per_sec)),
        rate(r.map(|r| r.new_flows_per_sec)),
        t.new_flows,
        si(t.new_flows as f64),
    );
}

fn counters_table(out: &mut String, title: &str, id: &str, rows: &[Counter]) {
    let _ = write!(out, "<section id=\"{id}\"><h2>{}</h2>", esc(title));
    if rows.is_empty() {
        out.push_str("<p class=\"quiet\">none</p></section>");
        return;
    }
    out.push_str(
        "<table><tr><th>counter</th><th class=\"n\">total</th><th class=\"n\">rate</th></tr>",
    );
    for c in rows {
        let _ = write!(
            out,
            "<tr data-counter=\"{0}\"><td>{0}</td><td class=\"n\">{1}</td><td class=\"n\">{2}</td></tr>",
            esc(&c.name),
            c.value,
            rate(c.per_sec)
        );
    }
    out.push_str("</table></section>");
}

/// The `<main>` content.
pub fn render_fragment(p: &Page) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<p class=\"meta\">lb {} on <b>{}</b> · up {} · interfaces {} · reloads {} ok, {} failed · {}</p>",
        esc(p.version),
        esc(&p.host),
        duration(p.uptime_secs),
        if p.interfaces.is_empty() {
            "none".to_string()
        } else {
            p.interfaces
                .iter()
                .map(|(n, m)| format!("{} ({m})", esc(n)))
                .collect::<Vec<_>>()
                .join(", ")
        },
        p.reloads_ok,
        p.reloads_failed,
        esc(&p.generated),
    );

    // L4
    let _ = write!(o, "<section id=\"vips\"><h2>VIPs</h2>");
    if p.vips.is_empty() {
        o.push_str("<p class=\"quiet\">no VIPs configured</p>");
    }
    for v in &p.vips {
        let up = v.vip.reals.iter().filter(|r| r.health != "down").count();
        let _ = write!(
            o,
            "<table class=\"vip{}\" data-vip=\"{}\"><tr class=\"vhead\"><th colspan=\"4\">{} \
             <span class=\"mode\">{}</span> <span class=\"{}\">{}/{} reals up{}</span></th>\
             <th class=\"n\">packets</th><th class=\"n\">pkt/s</th><th class=\"n\">bytes</th>\
             <th class=\"n\">bytes/s</th><th class=\"n\">new flows/s</th><th class=\"n\">new flows</th></tr>",
            if v.vip.all_down { " alldown" } else { "" },
            esc(&v.vip.vip),
            esc(&v.vip.vip),
            esc(&v.vip.mode),
            if v.vip.all_down { "bad" } else if up < v.vip.reals.len() { "warn" } else { "ok" },
            up,
            v.vip.reals.len(),
            if v.vip.all_down {
                format!(" · all down ({})", v.vip.all_down_policy)
            } else {
                String::new()
            },
        );
        o.push_str("<tr class=\"vsum\"><td colspan=\"4\">VIP total</td>");
        traffic_cells(&mut o, &v.totals, v.rates.as_ref());
        o.push_str("</tr><tr class=\"sub\"><th>real</th><th>health</th><th>weight</th><th>state</th><th colspan=\"6\"></th></tr>");
        for r in &v.real_rows {
            let rv = &r.real;
            let state = if rv.draining {
                if rv.drain_finished {
                    "drained".to_string()
                } else {
                    format!("draining {}", duration(rv.drain_seconds.unwrap_or(0.0)))
                }
            } else {
                "active".to_string()
            };
            let since = rv
                .health_since_secs
                .map(|s| format!(" for {}", duration(s)))
                .unwrap_or_default();
            let title = rv
                .last_failure
                .as_ref()
                .map(|f| format!(" title=\"last failure: {}\"", esc(f)))
                .unwrap_or_default();
            let _ = write!(
                o,
                "<tr class=\"real {h}\" data-real=\"{id}\" data-health=\"{h}\"><td>{id}</td>\
                 <td class=\"health\"{title}><span class=\"dot\"></span>{h}{since}</td>\
                 <td>{w}{eff}</td><td>{state}</td>",
                h = rv.health,
                id = esc(&rv.real),
                w = rv.weight,
                eff = if rv.effective_weight == rv.weight {
                    String::new()
                } else {
                    format!(" (in ring {})", rv.effective_weight)
                },
                state = esc(state),
            );
            traffic_cells(&mut o, &r.totals, r.rates.as_ref());
            o.push_str("</tr>");
        }
        o.push_str("</table>");
    }
    o.push_str("</section>");

    o.push_str("<div class=\"cols\">");
    counters_table(&mut o, "Drops by reason", "drops", &p.drops);
    let moving: Vec<Counter> = p.counters.iter().filter(|c| c.value > 0).cloned().collect();
    counters_table(&mut o, "Data plane counters", "counters", &moving);
    if let Some((n, cap)) = p.conntrack {
        let _ = write!(
            o,
            "<section id=\"conntrack\"><h2>Conntrack</h2><p>{} of {} entries ({:.1}%)</p></section>",
            si(n as f64),
            si(cap as f64),
            if cap == 0 { 0.0 } else { n as f64 * 100.0 / cap as f64 }
        );
    }
    o.push_str("</div>");

    // L7
    if !p.l7.is_empty() {
        o.push_str(
            "<section id=\"l7\"><h2>L7 listeners</h2><table><tr><th>listener</th><th>address</th>\
             <th class=\"n\">requests</th><th class=\"n\">req/s</th><th class=\"n\">1xx</th><th class=\"n\">2xx</th>\
             <th class=\"n\">3xx</th><th class=\"n\">4xx</th><th class=\"n\">5xx</th><th class=\"n\">p50</th>\
             <th class=\"n\">p99</th><th>upstreams</th></tr>",
        );
        for l in &p.l7 {
            let _ = write!(
                o,
                "<tr data-listener=\"{}\"><td>{}</td><td>{}{}</td><td class=\"n\" data-requests=\"{}\">{}</td><td class=\"n\">{}</td>",
                esc(&l.listener.name),
                esc(&l.listener.name),
                l.listener.listen,
                if l.listener.tls { " TLS" } else { "" },
                l.listener.counts.requests,
                si(l.listener.counts.requests as f64),
                rate(l.requests_per_sec),
            );
            for (i, n) in l.listener.counts.classes.iter().enumerate() {
                let _ = write!(
                    o,
                    "<td class=\"n{}\" data-class=\"{}xx\" data-count=\"{n}\">{}</td>",
                    if i == 4 && l.window_classes[4] > 0 {
                        " bad"
                    } else {
                        ""
                    },
                    i + 1,
                    si(*n as f64)
                );
            }
            let _ = write!(
                o,
                "<td class=\"n\" data-p50-ms=\"{}\">{}</td><td class=\"n\" data-p99-ms=\"{}\">{}</td><td>",
                l.p50_ms.map_or(String::new(), |v| format!("{v:.3}")),
                ms(l.p50_ms),
                l.p99_ms.map_or(String::new(), |v| format!("{v:.3}")),
                ms(l.p99_ms)
            );
            for u in &l.listener.upstreams {
                let up = u.servers.iter().filter(|s| s.available).count();
                let _ = write!(
                    o,
                    "<div class=\"up {}\" data-upstream=\"{}\"><b>{}</b> {}/{} up: ",
                    if up == 0 {
                        "bad"
                    } else if up < u.servers.len() {
                        "warn"
                    } else {
                        "ok"
                    },
                    esc(&u.name),
                    esc(&u.name),
                    up,
                    u.servers.len()
                );
                for s in &u.servers {
                    let _ = write!(
                        o,
                        "<span class=\"srv {}\" title=\"{} requests, {} in flight\">{}</span> ",
                        if s.available { "up" } else { "down" },
                        s.requests,
                        s.outstanding,
                        s.address
                    );
                }
                o.push_str("</div>");
            }
            o.push_str("</td></tr>");
        }
        o.push_str("</table><p class=\"quiet\">requests by status class since start (5xx in red while any came in the last 10 s); latency from request head to response head, over the last 10 s</p></section>");
    }

    // DNS
    if let Some(d) = &p.dns {
        let _ = write!(
            o,
            "<section id=\"dns\"><h2>DNS</h2><p>{} queries · <b>{}</b> · RRL dropped {} ({}) · slipped {} · FORMERR {} · truncated {} · unanswered {}</p>",
            si(d.dns.queries as f64),
            rate(d.queries_per_sec),
            d.dns.rrl_dropped,
            rate(d.rrl_dropped_per_sec),
            d.dns.rrl_slipped,
            d.dns.formerr,
            d.dns.truncated,
            d.dns.dropped
        );
        if !d.dns.zones.is_empty() {
            o.push_str("<p>zones: ");
            for (z, serial) in &d.dns.zones {
                let _ = write!(
                    o,
                    "<span class=\"zone\">{} <small>serial {}</small></span> ",
                    esc(z),
                    serial
                );
            }
            o.push_str("</p>");
        }
        if !d.dns.gslb.is_empty() {
            o.push_str("<table><tr><th>GSLB pool</th><th>members</th></tr>");
            for pool in &d.dns.gslb {
                let _ = write!(
                    o,
                    "<tr data-pool=\"{}\"><td>{}</td><td>",
                    esc(&pool.name),
                    esc(&pool.name)
                );
                for m in &pool.members {
                    let _ = write!(
                        o,
                        "<span class=\"srv {}\" data-member=\"{}\">{}{}{}</span> ",
                        if m.up { "up" } else { "down" },
                        m.address,
                        m.address,
                        m.region
                            .as_ref()
                            .map(|r| format!(" ({})", esc(r)))
                            .unwrap_or_default(),
                        if m.backup { " backup" } else { "" }
                    );
                }
                o.push_str("</td></tr>");
            }
            o.push_str("</table>");
        }
        o.push_str("</section>");
    }

    if let Some(d) = &p.decap {
        let _ = write!(
            o,
            "<section id=\"decap\"><h2>Decap</h2><p>on {} · GUE port {} · for {}</p>",
            d.interfaces
                .iter()
                .map(|(i, m)| format!("{} ({})", esc(i), esc(m)))
                .collect::<Vec<_>>()
                .join(", "),
            d.gue_port,
            d.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows: Vec<Counter> = d
            .counters
            .iter()
            .map(|(n, v)| Counter {
                name: n.clone(),
                value: *v,
                per_sec: None,
            })
            .collect();
        counters_table(&mut o, "Decap counters", "decap-counters", &rows);
        o.push_str("</section>");
    }
    o
}

const STYLE: &str = "\
:root{--bg:#fff;--fg:#1d232a;--mute:#6b7480;--line:#e3e6ea;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--head:#f5f7f9}\
@media (prefers-color-scheme:dark){:root{--bg:#14171a;--fg:#e6e9ec;--mute:#8d96a0;--line:#2a3036;--ok:#3fb950;--warn:#d29922;--bad:#f85149;--head:#1b2025}}\
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}\
header{display:flex;gap:1em;align-items:baseline;padding:.6em 1.2em;border-bottom:1px solid var(--line)}\
header h1{font-size:18px;margin:0}main{padding:0 1.2em 2em}\
h2{font-size:15px;margin:1.4em 0 .4em}table{border-collapse:collapse;width:100%;margin:.4em 0 1em}\
th,td{padding:.25em .6em;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}\
th{font-weight:600;background:var(--head)}.n{text-align:right;font-variant-numeric:tabular-nums}\
.meta,.quiet{color:var(--mute)}.mode{font-weight:400;color:var(--mute)}\
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}\
tr.vsum td{font-weight:600}tr.sub th{font-weight:400;color:var(--mute);background:none}\
.dot{display:inline-block;width:.6em;height:.6em;border-radius:50%;margin-right:.4em;background:var(--mute)}\
tr.up .dot{background:var(--ok)}tr.down .dot{background:var(--bad)}tr.down td.health{color:var(--bad);font-weight:600}\
table.alldown{outline:2px solid var(--bad)}\
.srv{padding:0 .3em;border-radius:3px}.srv.up{color:var(--ok)}.srv.down{color:var(--bad);text-decoration:line-through}\
.cols{display:flex;flex-wrap:wrap;gap:0 2em}.cols section{flex:1 1 20em}\
#live.ok::before{content:'● '}#live.bad::before{content:'○ '}";

/// Replaces `<main>` with `/fragment` once a period; marks the page stale
/// when the daemon does not answer.
const SCRIPT: &str = "\
(function(){var m=document.getElementById('m'),l=document.getElementById('live');\
function t(){fetch('fragment',{cache:'no-store',credentials:'same-origin'})\
.then(function(r){if(!r.ok)throw new Error('HTTP '+r.status);return r.text()})\
.then(function(h){m.innerHTML=h;l.textContent='live';l.className='ok'})\
.catch(function(e){l.textContent='stale: '+e.message;l.className='bad'})\
.then(function(){setTimeout(t,1000)})}\
l.textContent='live';l.className='ok';setTimeout(t,1000)})();";

/// The whole page.
pub fn render_page(p: &Page) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>lb · {host}</title><style>{STYLE}</style>\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript></head>\
         <body><header><h1>lb</h1><span id=\"live\" class=\"quiet\">refreshes every 5 s</span></header>\
         <main id=\"m\">{main}</main><script>{SCRIPT}</script></body></html>",
        host = esc(&p.host),
        main = render_fragment(p),
    )
}

// ---- HTTP ----

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// True when the request carries the token, as `Bearer TOKEN` or as the
/// password of `Basic` credentials.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(h) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let given = if let Some(b) = h.strip_prefix("Bearer ") {
        b.trim().to_string()
    } else if let Some(b) = h.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        let raw = String::from_utf8_lossy(&raw).into_owned();
        match raw.split_once(':') {
            Some((_, pw)) => pw.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    super::api::constant_time_eq(given.as_bytes(), token.as_bytes())
}

async fn serve(dash: Arc<Dashboard>, token: Option<Arc<String>>, req: Request<Incoming>) -> Resp {
    if let Some(t) = &token {
        if !authorized(&req, t) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                "this dashboard needs the API token (as a bearer token, or as the password)\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"lb\", charset=\"UTF-8\""),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "the dashboard is read-only: GET only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" => {
            let p = dash.page().await;
            text(StatusCode::OK, "text/html; charset=utf-8", render_page(&p))
        }
        "/fragment" => {
            let p = dash.page().await;
            text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                render_fragment(&p),
            )
        }
        "/dashboard.json" => {
            let p = dash.page().await;
            text(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&p).unwrap_or_default(),
            )
        }
        "/favicon.ico" => text(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new()),
        other => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("no page {other}: try /, /fragment or /dashboard.json\n"),
        ),
    }
}

/// Binds `addr` and serves the page until `stop`; `token` is required
/// from every request when set.
pub fn start(
    addr: SocketAddr,
    token: Option<String>,
    dash: Arc<Dashboard>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let std = std::net::TcpListener::bind(addr).map_err(|e| anyhow!("api.http {addr}: {e}"))?;
    std.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std)?;
    let local = listener.local_addr()?;
    info!(
        "dashboard on http://{local}/{}",
        if token.is_some() { " (token)" } else { "" }
    );
    tokio::spawn(dash.clone().run_sampler(stop.clone()));
    let token = token.map(Arc::new);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => { warn!("dashboard: accept: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
                },
            };
            let (dash, token, stop) = (dash.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (dash, token) = (dash.clone(), token.clone());
                    async move { Ok::<_, Infallible>(serve(dash, token, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_numbers() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(si(0.0), "0");
        assert_eq!(si(12.34), "12.3");
        assert_eq!(si(1234.0), "1234");
        assert_eq!(si(123_456.0), "123.5k");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(rate(None), "–");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(ms(Some(1500.0)), "1.5 s");
    }
}
