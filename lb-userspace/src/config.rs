//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-step. serde reads the file into loosely typed `Raw*`
//! structs (addresses and enums as strings), then [`validate`] turns them into
//! typed values and collects *every* problem as a [`ConfigError`] that names
//! the field (`vip[1].real[0].address`) and the reason. A config with any
//! error is rejected whole; nothing from it is applied.

use std::{collections::HashSet, fmt, net::IpAddr, path::Path, time::Duration};

use serde::Deserialize;

use crate::{dns::config::DnsConfig, proxy::config::L7Config};

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
    if !secs.is_finite() || secs < 0.0 || secs > 1e9 {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: String,
    port: i64,
    protocol: String,
    #[serde(default = "default_mode")]
    mode: String,
    ring_size: Option<i64>,
    #[serde(default)]
    real: Vec<RawReal>,
}

fn default_mode() -> String {
    "nat".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    address: String,
    #[serde(default)]
    port: i64,
    #[serde(default = "default_weight")]
    weight: i64,
}

fn default_weight() -> i64 {
    1
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
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
        let address = parse_ip(&format!("{p}.address"), &rv.address, &mut errors);
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
            Some(n) if !is_prime(n as u32) => {
                errors.push(ConfigError::new(
                    format!("{p}.ring_size"),
                    format!("{n} is not prime (Maglev needs a prime ring size, e.g. 65537, 32771, 4099)"),
                ));
                None
            }
            Some(n) => Some(n as u32),
        };

        if let (Some(a), Some(port), Some(proto)) = (address, port, protocol) {
            if !seen_vip.insert((a, port, proto)) {
                errors.push(ConfigError::new(
                    p.clone(),
                    format!("{} is defined twice", vip_key_string(a, port, proto)),
                ));
            }
        }

        if rv.real.is_empty() {
            errors.push(ConfigError::new(
                format!("{p}.real"),
                "a VIP needs at least one [[vip.real]]",
            ));
        }
        let mut reals = Vec::new();
        let mut seen_real = HashSet::new();
        let mut any_weight = false;
        for (ri, rr) in rv.real.iter().enumerate() {
            let rp = format!("{p}.real[{ri}]");
            let raddr = parse_ip(&format!("{rp}.address"), &rr.address, &mut errors);
            if let (Some(v), Some(r)) = (address, raddr) {
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
            let rport = match (port, u16::try_from(rr.port)) {
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
                Ok(w) if w <= lb_common::MAX_WEIGHT => {
                    any_weight |= w > 0;
                    Some(w)
                }
                _ => {
                    errors.push(ConfigError::new(
                        format!("{rp}.weight"),
                        format!("{} is outside 0..={}", rr.weight, lb_common::MAX_WEIGHT),
                    ));
                    None
                }
            };
            if let (Some(a), Some(port)) = (raddr, rport) {
                if !seen_real.insert((a, port)) {
                    errors.push(ConfigError::new(
                        rp.clone(),
                        format!("{a} port {port} is listed twice in this VIP"),
                    ));
                }
            }
            if let (Some(address), Some(port), Some(weight)) = (raddr, rport, weight) {
                reals.push(Real {
                    address,
                    port,
                    weight,
                });
            }
        }
        if !rv.real.is_empty() && !any_weight {
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
        total_reals += rv.real.len();
        if let (Some(address), Some(port), Some(protocol), Some(mode), Some(ring_size)) =
            (address, port, protocol, mode, ring_size)
        {
            vips.push(Vip {
                address,
                port,
                protocol,
                mode,
                ring_size,
                reals,
            });
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

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        interfaces: raw.interfaces,
        stats_interval,
        vips,
        l7: raw.l7,
        dns: raw.dns,
    })
}
