//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-step. serde reads the file into loosely typed `Raw*`
//! structs (addresses and enums as strings), then [`validate`] turns them into
//! typed values and collects *every* problem as a [`ConfigError`] that names
//! the field (`vip[1].real[0].address`) and the reason. A config with any
//! error is rejected whole; nothing from it is applied.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    dns::config::DnsConfig,
    health::{CheckKind, HealthCheck, HealthConfig},
    proxy::config::L7Config,
};

/// Largest ring a VIP may have; also the stride of one ring in the data
/// plane's ring array. 65537 is prime, so it is also the default size.
pub const MAX_RING_SIZE: u32 = lb_common::RING_STRIDE;
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Smallest accepted ring. Maglev needs M much larger than the number of
/// reals to spread evenly; 7 keeps tiny test rings possible.
pub const MIN_RING_SIZE: u32 = 7;

/// One problem in a config: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every error found in one config, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a duration written as `250ms`, `2s`, `1m`, `1h` (or a bare number
/// of seconds). Shared by every role's config.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// L4 protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Forwarding mode of a VIP. Only NAT exists today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nat,
}

/// A validated real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Real {
    pub address: IpAddr,
    /// 0 for an all-ports VIP: the client's destination port is kept.
    pub port: u16,
    pub weight: u32,
    /// The health check of this real: the VIP's `health` table with the
    /// real's own `health` keys on top; kind `none` when neither exists.
    pub check: HealthCheck,
}

/// Default time a drained real (weight 0) keeps its established flows.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// What a VIP does when every real that should take traffic is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllDown {
    /// Keep the ring as it was before the last real went down (default):
    /// traffic still flows, to the reals that were up last.
    Keep,
    /// Spread new flows over every real with a weight, as if all were up.
    Open,
    /// Empty ring: new flows are dropped (`drop_no_real`).
    Drop,
}

impl AllDown {
    pub fn as_str(self) -> &'static str {
        match self {
            AllDown::Keep => "keep",
            AllDown::Open => "open",
            AllDown::Drop => "drop",
        }
    }
}

/// A validated VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    /// 0 = all ports.
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub ring_size: u32,
    pub reals: Vec<Real>,
    /// How long a drained real keeps its established flows.
    pub drain_timeout: Duration,
    pub all_down: AllDown,
    /// The VIP's `health` table as written (reals added later inherit it).
    pub health: Option<HealthConfig>,
}

impl Vip {
    /// `198.18.100.1:80/tcp`, `[2001:db8::1]:80/tcp`, `198.18.100.1:*/udp`.
    pub fn key_string(&self) -> String {
        vip_key_string(self.address, self.port, self.protocol)
    }
}

pub fn vip_key_string(address: IpAddr, port: u16, protocol: Protocol) -> String {
    let port = if port == 0 {
        "*".to_string()
    } else {
        port.to_string()
    };
    match address {
        IpAddr::V4(a) => format!("{a}:{port}/{protocol}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{protocol}"),
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub stats_interval: Duration,
    pub vips: Vec<Vip>,
    pub l7: Vec<L7Config>,
    pub dns: Option<DnsConfig>,
    /// bpffs directory for pinned maps and links; `None`: nothing pinned.
    pub pin_path: Option<PathBuf>,
    pub api: ApiConfig,
    /// Prometheus listener; `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Seed of the flow hash that picks a ring slot for a new flow. The same
    /// on every LB node of a deployment; changing it moves every flow that
    /// has no conntrack entry (like a changed ring).
    pub hash_seed: u32,
}

/// Default path of the admin API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/lb/lb.sock";

/// The admin API (`[api]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Unix socket path; `None` when disabled (`socket = ""`).
    pub socket: Option<PathBuf>,
    /// True when `socket` was set in the file (a busy default socket is
    /// only a warning, a busy configured one an error).
    pub socket_configured: bool,
    /// Permission bits of the socket file (default 0600: root only).
    pub socket_mode: u32,
    /// Optional loopback TCP listener.
    pub listen: Option<SocketAddr>,
    /// Bearer token the TCP listener requires (from `token_file`).
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: Some(PathBuf::from(DEFAULT_API_SOCKET)),
            socket_configured: false,
            socket_mode: 0o600,
            listen: None,
            token: None,
        }
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                path.display().to_string(),
                format!("cannot read: {e}"),
            )])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let field = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => "config".to_string(),
            };
            ConfigErrors(vec![ConfigError::new(field, msg)])
        })?;
        validate(raw)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interfaces: Vec<String>,
    stats_interval: Option<String>,
    #[serde(default)]
    vip: Vec<RawVip>,
    #[serde(default)]
    l7: Vec<L7Config>,
    dns: Option<DnsConfig>,
    pin_path: Option<String>,
    api: Option<RawApi>,
    metrics: Option<RawMetrics>,
    hash_seed: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: Option<String>,
    socket_mode: Option<String>,
    listen: Option<String>,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

/// A `[[vip]]` table as written (also the body of the API's `vip add`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    pub address: String,
    pub port: i64,
    pub protocol: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    pub ring_size: Option<i64>,
    pub drain_timeout: Option<String>,
    pub all_down: Option<String>,
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub real: Vec<RawReal>,
}

fn default_mode() -> String {
    "nat".to_string()
}

/// A `[[vip.real]]` table as written (also the body of `real add`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReal {
    pub address: String,
    #[serde(default)]
    pub port: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
    pub health: Option<HealthConfig>,
}

fn default_weight() -> i64 {
    1
}

fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > 15 {
        return Err(format!("`{name}` is longer than 15 bytes (IFNAMSIZ)"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{name}` contains a character not allowed in an interface name"
        ));
    }
    Ok(())
}

fn parse_ip(field: &str, s: &str, errors: &mut Vec<ConfigError>) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(a) if a.is_unspecified() => {
            errors.push(ConfigError::new(
                field,
                format!("{a} is the unspecified address"),
            ));
            None
        }
        Ok(a) if a.is_multicast() => {
            errors.push(ConfigError::new(
                field,
                format!("{a} is a multicast address"),
            ));
            None
        }
        Ok(IpAddr::V4(a)) if a.is_broadcast() => {
            errors.push(ConfigError::new(
                field,
                format!("{a} is the broadcast address"),
            ));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::new(
                field,
                format!("`{s}` is not an IPv4 or IPv6 address"),
            ));
            None
        }
    }
}

/// Validates one `[[vip]]` table; `p` is its field path (`vip[2]`).
/// Cross-VIP checks (duplicates, totals) are the caller's.
pub fn validate_vip(p: &str, rv: &RawVip, errors: &mut Vec<ConfigError>) -> Option<Vip> {
    let address = parse_ip(&format!("{p}.address"), &rv.address, errors);
    let port = match u16::try_from(rv.port) {
        Ok(port) => Some(port),
        Err(_) => {
            errors.push(ConfigError::new(
                format!("{p}.port"),
                format!("{} is not a port (0-65535; 0 = all ports)", rv.port),
            ));
            None
        }
    };
    let protocol = match rv.protocol.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        other => {
            errors.push(ConfigError::new(
                format!("{p}.protocol"),
                format!("`{other}` is not supported (tcp or udp)"),
            ));
            None
        }
    };
    let mode = match rv.mode.to_ascii_lowercase().as_str() {
        "nat" => Some(Mode::Nat),
        other => {
            errors.push(ConfigError::new(
                format!("{p}.mode"),
                format!("`{other}` is not supported (nat)"),
            ));
            None
        }
    };
    let ring_size = match rv.ring_size {
        None => Some(DEFAULT_RING_SIZE),
        Some(n) if n < MIN_RING_SIZE as i64 || n > MAX_RING_SIZE as i64 => {
            errors.push(ConfigError::new(
                format!("{p}.ring_size"),
                format!("{n} is outside {MIN_RING_SIZE}..={MAX_RING_SIZE}"),
            ));
            None
        }
        Some(n) if !crate::maglev::is_prime(n as u32) => {
            errors.push(ConfigError::new(
                format!("{p}.ring_size"),
                format!(
                    "{n} is not prime (Maglev needs a prime ring size, e.g. 65537, 32771, 4099)"
                ),
            ));
            None
        }
        Some(n) => Some(n as u32),
    };
    let drain_timeout = match &rv.drain_timeout {
        None => Some(DEFAULT_DRAIN_TIMEOUT),
        Some(s) => match parse_duration(s) {
            Ok(d) => Some(d),
            Err(reason) => {
                errors.push(ConfigError::new(format!("{p}.drain_timeout"), reason));
                None
            }
        },
    };
    let all_down = match rv
        .all_down
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("keep") => Some(AllDown::Keep),
        Some("open") => Some(AllDown::Open),
        Some("drop") => Some(AllDown::Drop),
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{p}.all_down"),
                format!("`{other}` is not a policy (keep, open or drop)"),
            ));
            None
        }
    };
    // The VIP's own health table must be valid on its own.
    let vip_health_ok = match &rv.health {
        Some(h) => h.to_check(&format!("{p}.health"), errors).is_some(),
        None => true,
    };

    if rv.real.is_empty() {
        errors.push(ConfigError::new(
            format!("{p}.real"),
            "a VIP needs at least one [[vip.real]]",
        ));
    }
    let mut reals = Vec::new();
    let mut seen_real = HashSet::new();
    for (ri, rr) in rv.real.iter().enumerate() {
        let rp = format!("{p}.real[{ri}]");
        let health = if vip_health_ok { &rv.health } else { &None };
        if let Some(real) = validate_real(&rp, rr, address, port, health, errors) {
            if !seen_real.insert((real.address, real.port)) {
                errors.push(ConfigError::new(
                    rp.clone(),
                    format!(
                        "{} port {} is listed twice in this VIP",
                        real.address, real.port
                    ),
                ));
            }
            reals.push(real);
        }
    }
    if !rv.real.is_empty() && rv.real.iter().all(|r| r.weight == 0) {
        errors.push(ConfigError::new(
            format!("{p}.real"),
            "every real has weight 0; at least one must take traffic",
        ));
    }
    if let Some(rs) = ring_size {
        if rv.real.len() as u64 > rs as u64 {
            errors.push(ConfigError::new(
                format!("{p}.ring_size"),
                format!("{rs} slots cannot hold {} reals", rv.real.len()),
            ));
        }
    }
    Some(Vip {
        address: address?,
        port: port?,
        protocol: protocol?,
        mode: mode?,
        ring_size: ring_size?,
        reals,
        drain_timeout: drain_timeout?,
        all_down: all_down?,
        health: if vip_health_ok {
            rv.health.clone()
        } else {
            None
        },
    })
}

/// The VIP's health table with the real's keys on top. Keys that belong
/// to one kind are only inherited when the real keeps the VIP's kind.
pub fn merge_health(
    vip: &Option<HealthConfig>,
    real: &Option<HealthConfig>,
) -> Option<HealthConfig> {
    match (vip, real) {
        (None, None) => None,
        (Some(v), None) => Some(v.clone()),
        (None, Some(r)) => Some(r.clone()),
        (Some(v), Some(r)) => {
            let kind_of =
                |h: &HealthConfig| h.kind.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            let same_kind = r.kind.is_none() || kind_of(r) == kind_of(v);
            let inherit = |rk: &Option<String>, vk: &Option<String>| {
                rk.clone()
                    .or_else(|| if same_kind { vk.clone() } else { None })
            };
            Some(HealthConfig {
                kind: r.kind.clone().or_else(|| v.kind.clone()),
                interval: r.interval.clone().or_else(|| v.interval.clone()),
                timeout: r.timeout.clone().or_else(|| v.timeout.clone()),
                rise: r.rise.or(v.rise),
                fall: r.fall.or(v.fall),
                port: r.port.or(v.port),
                path: inherit(&r.path, &v.path),
                host: inherit(&r.host, &v.host),
                expect: inherit(&r.expect, &v.expect),
                query: inherit(&r.query, &v.query),
                qtype: inherit(&r.qtype, &v.qtype),
            })
        }
    }
}

/// Validates one `[[vip.real]]` of a VIP whose address and port are
/// `vip_addr`/`vip_port` (`None` when those were invalid); `vip_health` is
/// the VIP's (already validated) health table.
pub fn validate_real(
    rp: &str,
    rr: &RawReal,
    vip_addr: Option<IpAddr>,
    vip_port: Option<u16>,
    vip_health: &Option<HealthConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<Real> {
    let raddr = parse_ip(&format!("{rp}.address"), &rr.address, errors);
    if let (Some(v), Some(r)) = (vip_addr, raddr) {
        if v.is_ipv4() != r.is_ipv4() {
            errors.push(ConfigError::new(
                format!("{rp}.address"),
                format!(
                    "{r} is {} but the VIP {v} is {} (NAT mode keeps the family)",
                    if r.is_ipv4() { "IPv4" } else { "IPv6" },
                    if v.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
    }
    let rport = match (vip_port, u16::try_from(rr.port)) {
        (_, Err(_)) => {
            errors.push(ConfigError::new(
                format!("{rp}.port"),
                format!("{} is not a valid port", rr.port),
            ));
            None
        }
        (Some(0), Ok(0)) => Some(0),
        (Some(0), Ok(n)) => {
            errors.push(ConfigError::new(
                format!("{rp}.port"),
                format!("{n}: an all-ports VIP (port = 0) keeps the client's port; leave the real's port at 0"),
            ));
            None
        }
        (_, Ok(0)) => {
            errors.push(ConfigError::new(
                format!("{rp}.port"),
                "0 is not a valid port",
            ));
            None
        }
        (_, Ok(n)) => Some(n),
    };
    let weight = match u32::try_from(rr.weight) {
        Ok(w) if w <= lb_common::MAX_WEIGHT => Some(w),
        _ => {
            errors.push(ConfigError::new(
                format!("{rp}.weight"),
                format!("{} is outside 0..={}", rr.weight, lb_common::MAX_WEIGHT),
            ));
            None
        }
    };
    let hp = format!("{rp}.health");
    let real_health_ok = match &rr.health {
        Some(h) => h.to_check(&hp, errors).is_some(),
        None => true,
    };
    let check = if !real_health_ok {
        None
    } else {
        match merge_health(vip_health, &rr.health) {
            None => Some(HealthCheck::none()),
            Some(h) => match h.to_check(&hp, errors) {
                Some(c) if c.port.is_none() && rport == Some(0) && c.kind != CheckKind::None => {
                    errors.push(ConfigError::new(
                        format!("{hp}.port"),
                        format!(
                            "a `{}` check of a real of an all-ports VIP needs a port to probe",
                            c.kind.name()
                        ),
                    ));
                    None
                }
                other => other,
            },
        }
    };
    Some(Real {
        address: raddr?,
        port: rport?,
        weight: weight?,
        check: check?,
    })
}

fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();

    let mut seen_if = HashSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        let field = format!("interfaces[{i}]");
        if let Err(reason) = valid_ifname(name) {
            errors.push(ConfigError::new(field, reason));
        } else if !seen_if.insert(name.clone()) {
            errors.push(ConfigError::new(field, format!("`{name}` is listed twice")));
        }
    }

    let stats_interval = match &raw.stats_interval {
        None => Duration::from_secs(5),
        Some(s) => match parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                errors.push(ConfigError::new("stats_interval", "must be at least 100ms"));
                Duration::from_secs(5)
            }
            Err(reason) => {
                errors.push(ConfigError::new("stats_interval", reason));
                Duration::from_secs(5)
            }
        },
    };

    if raw.vip.len() > lb_common::MAX_VIPS as usize {
        errors.push(ConfigError::new(
            "vip",
            format!(
                "{} VIPs configured; the data plane holds at most {}",
                raw.vip.len(),
                lb_common::MAX_VIPS
            ),
        ));
    }

    let mut vips = Vec::new();
    let mut seen_vip = HashSet::new();
    let mut total_reals = 0usize;
    for (vi, rv) in raw.vip.iter().enumerate() {
        let p = format!("vip[{vi}]");
        total_reals += rv.real.len();
        if let Some(vip) = validate_vip(&p, rv, &mut errors) {
            if !seen_vip.insert((vip.address, vip.port, vip.protocol)) {
                errors.push(ConfigError::new(
                    p.clone(),
                    format!("{} is defined twice", vip.key_string()),
                ));
            }
            vips.push(vip);
        }
    }
    if total_reals > lb_common::MAX_REALS as usize - 1 {
        errors.push(ConfigError::new(
            "vip",
            format!(
                "{total_reals} reals in all; the data plane holds at most {}",
                lb_common::MAX_REALS - 1
            ),
        ));
    }

    for (i, l7) in raw.l7.iter().enumerate() {
        l7.validate(&format!("l7[{i}]"), &mut errors);
    }
    if let Some(dns) = &raw.dns {
        dns.validate("dns", &mut errors);
    }

    let pin_path = match raw.pin_path.as_deref() {
        None | Some("") => None,
        Some(s) if !s.starts_with('/') => {
            errors.push(ConfigError::new(
                "pin_path",
                format!(
                    "`{s}` is not an absolute path (use a directory on bpffs, e.g. /sys/fs/bpf/lb)"
                ),
            ));
            None
        }
        Some(s) => Some(PathBuf::from(s)),
    };
    let api = validate_api(raw.api.as_ref(), &mut errors);
    let metrics_listen = match raw.metrics.as_ref().and_then(|m| m.listen.as_deref()) {
        None | Some("") => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(ConfigError::new(
                    "metrics.listen",
                    format!("`{s}` is not an address:port (e.g. 127.0.0.1:9180)"),
                ));
                None
            }
        },
    };

    let hash_seed = match raw.hash_seed {
        None => lb_common::DEFAULT_HASH_SEED,
        Some(n) => u32::try_from(n).unwrap_or_else(|_| {
            errors.push(ConfigError::new(
                "hash_seed",
                format!(
                    "{n} is outside 0..={} (an unsigned 32-bit integer)",
                    u32::MAX
                ),
            ));
            lb_common::DEFAULT_HASH_SEED
        }),
    };

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        interfaces: raw.interfaces,
        stats_interval,
        vips,
        l7: raw.l7,
        dns: raw.dns,
        pin_path,
        api,
        metrics_listen,
        hash_seed,
    })
}

fn validate_api(raw: Option<&RawApi>, errors: &mut Vec<ConfigError>) -> ApiConfig {
    let mut api = ApiConfig::default();
    let Some(raw) = raw else {
        return api;
    };
    match raw.socket.as_deref() {
        None => {}
        Some("") => {
            api.socket = None;
            api.socket_configured = true;
        }
        Some(s) if !s.starts_with('/') => errors.push(ConfigError::new(
            "api.socket",
            format!("`{s}` is not an absolute path"),
        )),
        Some(s) => {
            api.socket = Some(PathBuf::from(s));
            api.socket_configured = true;
        }
    }
    if let Some(m) = &raw.socket_mode {
        match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 => api.socket_mode = v,
            _ => errors.push(ConfigError::new(
                "api.socket_mode",
                format!("`{m}` is not an octal file mode (e.g. \"0600\", \"0660\")"),
            )),
        }
    }
    if let Some(l) = raw.listen.as_deref().filter(|l| !l.is_empty()) {
        match l.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => api.listen = Some(a),
            Ok(a) => errors.push(ConfigError::new(
                "api.listen",
                format!("{} is not a loopback address (the admin API only listens on 127.0.0.0/8 or ::1)", a.ip()),
            )),
            Err(_) => errors.push(ConfigError::new(
                "api.listen",
                format!("`{l}` is not an address:port (e.g. 127.0.0.1:9181)"),
            )),
        }
        match raw.token_file.as_deref() {
            None => errors.push(ConfigError::new(
                "api.token_file",
                "required with api.listen: the TCP listener needs a bearer token",
            )),
            Some(f) => match std::fs::read_to_string(f) {
                Ok(t) if t.trim().len() >= 16 => api.token = Some(t.trim().to_string()),
                Ok(_) => errors.push(ConfigError::new(
                    "api.token_file",
                    format!("{f}: the token must be at least 16 characters"),
                )),
                Err(e) => errors.push(ConfigError::new(
                    "api.token_file",
                    format!("{f}: cannot read: {e}"),
                )),
            },
        }
    } else if raw.token_file.is_some() {
        errors.push(ConfigError::new(
            "api.token_file",
            "only used with api.listen (the Unix socket is protected by its file mode)",
        ));
    }
    api
}

#[cfg(test)]
mod ctl_tests {
    use super::*;

    const BASE: &str = "[[vip]]\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n";

    fn fields(text: &str) -> Vec<String> {
        Config::parse(text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn health_is_merged_per_real() {
        let c = Config::parse(&format!(
            "{BASE}drain_timeout = \"30s\"\nall_down = \"drop\"\n[vip.health]\nkind = \"http\"\npath = \"/h\"\ninterval = \"1s\"\n\
             [[vip.real]]\naddress = \"198.18.11.2\"\nport = 8080\n\
             [[vip.real]]\naddress = \"198.18.12.2\"\nport = 8080\n[vip.real.health]\nkind = \"tcp\"\nfall = 5\n"
        ))
        .unwrap();
        let v = &c.vips[0];
        assert_eq!(v.drain_timeout, Duration::from_secs(30));
        assert_eq!(v.all_down, AllDown::Drop);
        assert_eq!(v.reals[0].check.kind.name(), "http");
        assert_eq!(v.reals[0].check.interval, Duration::from_secs(1));
        // The second real switches kind: it keeps the interval, not the path.
        assert_eq!(v.reals[1].check.kind, CheckKind::Tcp);
        assert_eq!(v.reals[1].check.interval, Duration::from_secs(1));
        assert_eq!(v.reals[1].check.fall, 5);
    }

    #[test]
    fn no_health_table_means_unchecked() {
        let c = Config::parse(&format!(
            "{BASE}[[vip.real]]\naddress = \"198.18.11.2\"\nport = 8080\n"
        ))
        .unwrap();
        assert_eq!(c.vips[0].reals[0].check.kind, CheckKind::None);
        assert_eq!(c.vips[0].all_down, AllDown::Keep);
        assert_eq!(c.vips[0].drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.api.socket.as_deref(), Some(Path::new(DEFAULT_API_SOCKET)));
        assert_eq!(c.pin_path, None);
    }

    #[test]
    fn new_keys_name_their_field() {
        assert_eq!(
            fields(&format!(
                "{BASE}all_down = \"panic\"\ndrain_timeout = \"soon\"\n[vip.health]\nkind = \"icmp\"\n[[vip.real]]\naddress = \"198.18.11.2\"\nport = 8080\n[vip.real.health]\nrise = 0\n"
            )),
            [
                "vip[0].drain_timeout",
                "vip[0].all_down",
                "vip[0].health.kind",
                "vip[0].real[0].health.rise"
            ]
        );
        assert_eq!(
            fields(&format!(
                "pin_path = \"rel/dir\"\n[api]\nlisten = \"198.18.0.1:9000\"\nsocket_mode = \"9\"\n[metrics]\nlisten = \"nope\"\n{BASE}[[vip.real]]\naddress = \"198.18.11.2\"\nport = 8080\n"
            )),
            [
                "pin_path",
                "api.socket_mode",
                "api.listen",
                "api.token_file",
                "metrics.listen"
            ]
        );
        // An all-ports VIP's real cannot be probed without a port.
        assert_eq!(
            fields(
                "[[vip]]\naddress = \"198.18.100.1\"\nport = 0\nprotocol = \"tcp\"\n[vip.health]\nkind = \"tcp\"\n[[vip.real]]\naddress = \"198.18.11.2\"\n"
            ),
            ["vip[0].real[0].health.port"]
        );
    }
}
