//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Parsing is two-step. serde reads the file into loosely typed `Raw*`
//! structs (addresses and enums as strings), then [`validate`] turns them into
//! typed values and collects *every* problem as a [`ConfigError`] that names
//! the field (`vip[1].real[0].address`) and the reason. A config with any
//! error is rejected whole; nothing from it is applied.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use crate::validate::{parse_duration, ConfigError, ConfigErrors};
use crate::{
    admin::config::{validate_api, ApiConfig, RawApi},
    decap::config::{validate_decap, DecapConfig, RawDecap},
    dns::config::{DnsConfig, DnsSettings},
    l4::config::{validate_encap_sources, validate_vip, EncapSources, RawVip, Vip},
    proxy::config::{compile_all, L7Config, ListenerSpec},
};

/// Default of `icmp_rate_limit`, as the kernel's `icmp_msgs_per_sec`.
pub const DEFAULT_ICMP_RATE_LIMIT: u32 = 1000;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub stats_interval: Duration,
    pub vips: Vec<Vip>,
    /// The `[[l7]]` listeners, validated, certificates loaded.
    pub l7: Vec<ListenerSpec>,
    /// The `[dns]` role, validated, zone files loaded.
    pub dns: Option<DnsSettings>,
    /// bpffs directory for pinned maps and links; `None`: nothing pinned.
    pub pin_path: Option<PathBuf>,
    pub api: ApiConfig,
    /// Prometheus listener; `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Seed of the flow hash that picks a ring slot for a new flow. The same
    /// on every LB node of a deployment; changing it moves every flow that
    /// has no conntrack entry (like a changed ring).
    pub hash_seed: u32,
    /// ICMP messages the data plane may answer (echo replies) or relay
    /// (errors) per second per CPU; 0: no limit.
    pub icmp_rate_limit: u32,
    /// ICMP errors about balanced flows are sent on to the flow's real
    /// (`icmp_relay`, default on).
    pub icmp_relay: bool,
    /// Outer source addresses of DSR packets (`encap_source`).
    pub encap_sources: EncapSources,
    /// The `[decap]` role of a DSR real.
    pub decap: Option<DecapConfig>,
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
    icmp_rate_limit: Option<i64>,
    icmp_relay: Option<bool>,
    #[serde(default)]
    encap_source: Vec<String>,
    decap: Option<RawDecap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

pub(crate) fn valid_ifname(name: &str) -> Result<(), String> {
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
            if !seen_vip.insert(vip.id()) {
                errors.push(ConfigError::new(
                    p.clone(),
                    format!("{} is defined twice", vip.id()),
                ));
            }
            vips.push(vip);
        }
    }
    // A SNAT address is where the reals send FullNAT replies; as a VIP it
    // would take them for client traffic.
    let vip_addrs: HashSet<std::net::IpAddr> = vips.iter().map(|v| v.address).collect();
    for (vi, v) in vips.iter().enumerate() {
        for a in v.snat.iter().filter(|a| vip_addrs.contains(a)) {
            errors.push(ConfigError::new(
                format!("vip[{vi}].snat"),
                format!("{a} is a VIP address"),
            ));
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

    let l7 = compile_all(&raw.l7, &mut errors);
    let dns = raw
        .dns
        .as_ref()
        .and_then(|d| d.settings("dns", &mut errors));

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
        Some(s) => {
            if let Ok(a) = s.parse::<SocketAddr>() {
                Some(a)
            } else {
                errors.push(ConfigError::new(
                    "metrics.listen",
                    format!("`{s}` is not an address:port (e.g. 127.0.0.1:9180)"),
                ));
                None
            }
        }
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

    let icmp_rate_limit = match raw.icmp_rate_limit {
        None => DEFAULT_ICMP_RATE_LIMIT,
        Some(n) => {
            match u32::try_from(n) {
                Ok(v) if v <= 10_000_000 => v,
                _ => {
                    errors.push(ConfigError::new(
                    "icmp_rate_limit",
                    format!("{n} is outside 0..=10000000 (messages per second per CPU; 0 = no limit)"),
                ));
                    DEFAULT_ICMP_RATE_LIMIT
                }
            }
        }
    };

    let encap_sources = validate_encap_sources(&raw.encap_source, &mut errors);
    let decap = raw.decap.as_ref().map(|d| {
        let decap = validate_decap(d, &mut errors);
        for (i, name) in decap.interfaces.iter().enumerate() {
            if raw.interfaces.contains(name) {
                errors.push(ConfigError::new(
                    format!("decap.interfaces[{i}]"),
                    format!("`{name}` is also in `interfaces`: an interface runs the balancer or the decap program, not both"),
                ));
            }
        }
        decap
    });

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        interfaces: raw.interfaces,
        stats_interval,
        vips,
        l7,
        dns,
        pin_path,
        api,
        metrics_listen,
        hash_seed,
        icmp_rate_limit,
        icmp_relay: raw.icmp_relay.unwrap_or(true),
        encap_sources,
        decap,
    })
}

#[cfg(test)]
mod ctl_tests {
    use super::*;
    use crate::{
        admin::config::DEFAULT_API_SOCKET,
        health::CheckKind,
        l4::config::{AllDown, DEFAULT_DRAIN_TIMEOUT},
    };

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
