//! The `[dns]` table: listeners, zones, GSLB pools, regions, rate limiting.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name};
use serde::Deserialize;

use super::{
    chaos::ServerInfo,
    gslb::{Fallback, Member, Policy, PoolSpec, Prefix, Regions},
    rrl::RrlSettings,
    zone::Zone,
};
use crate::{
    config::{parse_duration, ConfigError},
    health::{CheckKind, HealthCheck, HealthConfig},
};

pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;
pub const DEFAULT_GSLB_TTL: u32 = 30;
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_TCP_CLIENTS: usize = 256;

/// The `[dns]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses served on both UDP and TCP (`"198.18.0.53:53"`, `"[2001:db8::53]:53"`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Extra UDP-only addresses.
    #[serde(default)]
    pub listen_udp: Vec<String>,
    /// Extra TCP-only addresses.
    #[serde(default)]
    pub listen_tcp: Vec<String>,
    /// Largest UDP response we send, whatever the client offers (512-4096).
    pub max_udp_payload: Option<i64>,
    /// Idle time after which a TCP connection is closed.
    pub tcp_idle_timeout: Option<String>,
    /// Concurrent TCP connections.
    pub max_tcp_clients: Option<i64>,
    /// Threads serving UDP, each with its own `SO_REUSEPORT` socket per
    /// address (default: one per CPU, at most 8).
    pub udp_workers: Option<i64>,
    /// Answer to CHAOS TXT `id.server.` / `hostname.bind.` (default: the
    /// host name).
    pub identity: Option<String>,
    /// Refuse CHAOS TXT `version.server.` / `version.bind.` (default false).
    pub hide_version: Option<bool>,
    #[serde(default)]
    pub zone: Vec<ZoneConfig>,
    #[serde(default)]
    pub gslb: Vec<GslbConfig>,
    #[serde(default)]
    pub region: Vec<RegionConfig>,
    pub rrl: Option<RrlConfig>,
}

/// `[[dns.zone]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone's origin, e.g. `example.com.`
    pub name: String,
    /// RFC 1035 master file; relative `$INCLUDE`s resolve against its directory.
    pub file: String,
}

/// `[[dns.gslb]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GslbConfig {
    pub name: String,
    /// TTL of the answers, in seconds.
    pub ttl: Option<i64>,
    /// `all` | `weighted` | `closest`.
    pub policy: Option<String>,
    /// How many addresses `weighted` (default 1) and `closest` (default all) answer.
    pub count: Option<i64>,
    /// `all` | `backup`.
    pub fallback: Option<String>,
    /// Default check of every member (each member may override it).
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub member: Vec<MemberConfig>,
    #[serde(default)]
    pub backup: Vec<MemberConfig>,
}

/// `[[dns.gslb.member]]` / `[[dns.gslb.backup]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub address: String,
    pub weight: Option<i64>,
    pub region: Option<String>,
    pub health: Option<HealthConfig>,
}

/// `[[dns.region]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub prefixes: Vec<String>,
}

/// `[dns.rrl]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RrlConfig {
    /// Identical responses per second to one client prefix; 0 disables.
    pub responses_per_second: i64,
    /// Seconds of debt an abusive prefix accumulates (1-3600, default 15).
    pub window: Option<i64>,
    /// Every `slip`-th limited response is sent truncated (TC) instead of
    /// dropped, so real clients retry over TCP; 0 = always drop (default 2).
    pub slip: Option<i64>,
    pub ipv4_prefix_length: Option<i64>,
    pub ipv6_prefix_length: Option<i64>,
    /// Client prefixes never limited.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Most client/response entries tracked (default 100000).
    pub max_table_size: Option<i64>,
}

/// A zone to serve, after validation: its file was read and parsed once,
/// while the config was validated.
#[derive(Debug, Clone)]
pub struct ZoneSpec {
    pub origin: Name,
    pub file: PathBuf,
    pub zone: Arc<Zone>,
}

/// The validated `[dns]` table.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub max_udp_payload: u16,
    pub tcp_idle_timeout: Duration,
    pub max_tcp_clients: usize,
    pub udp_workers: usize,
    /// CHAOS `id.server.` answer.
    pub identity: String,
    pub hide_version: bool,
    pub zones: Vec<ZoneSpec>,
    pub pools: Vec<PoolSpec>,
    pub regions: Regions,
    pub rrl: Option<RrlSettings>,
}

impl DnsSettings {
    /// What CHAOS identity queries answer.
    pub fn server_info(&self) -> ServerInfo {
        ServerInfo {
            identity: self.identity.clone(),
            version: (!self.hide_version).then(super::chaos::version),
        }
    }
}

/// One UDP worker per CPU, at most 8.
pub fn default_udp_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(8)
}

fn err(errors: &mut Vec<ConfigError>, field: impl Into<String>, reason: impl Into<String>) {
    errors.push(ConfigError::new(field, reason));
}

fn parse_name(field: &str, s: &str, errors: &mut Vec<ConfigError>) -> Option<Name> {
    match Name::from_ascii(s) {
        Ok(mut n) => {
            n.set_fqdn(true);
            Some(n)
        }
        Err(e) => {
            err(errors, field, format!("`{s}` is not a domain name: {e}"));
            None
        }
    }
}

impl DnsConfig {
    /// Validates and returns the typed settings (`None` when any error was
    /// pushed). Zone files are read and parsed.
    pub fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<DnsSettings> {
        let before = errors.len();
        let f = |k: &str| format!("{path}.{k}");

        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut seen = HashSet::new();
        for (key, list, to_udp, to_tcp) in [
            ("listen", &self.listen, true, true),
            ("listen_udp", &self.listen_udp, true, false),
            ("listen_tcp", &self.listen_tcp, false, true),
        ] {
            for (i, s) in list.iter().enumerate() {
                let field = format!("{path}.{key}[{i}]");
                match s.parse::<SocketAddr>() {
                    Ok(a) => {
                        if to_udp && !seen.insert(("udp", a)) || to_tcp && !seen.insert(("tcp", a)) {
                            err(errors, field, format!("{a} is listed twice"));
                            continue;
                        }
                        if to_udp {
                            udp.push(a);
                        }
                        if to_tcp {
                            tcp.push(a);
                        }
                    }
                    Err(_) => err(
                        errors,
                        field,
                        format!("`{s}` is not an address with a port (e.g. \"198.18.0.53:53\" or \"[2001:db8::53]:53\")"),
                    ),
                }
            }
        }
        if udp.is_empty() && tcp.is_empty() {
            err(
                errors,
                f("listen"),
                "no address to listen on (set listen = [\"ip:port\"])",
            );
        }

        let max_udp_payload = match self.max_udp_payload {
            None => DEFAULT_MAX_UDP_PAYLOAD,
            Some(n) if (512..=4096).contains(&n) => n as u16,
            Some(n) => {
                err(
                    errors,
                    f("max_udp_payload"),
                    format!("{n} is outside 512..=4096"),
                );
                DEFAULT_MAX_UDP_PAYLOAD
            }
        };
        let tcp_idle_timeout = match &self.tcp_idle_timeout {
            None => DEFAULT_TCP_IDLE_TIMEOUT,
            Some(s) => match parse_duration(s) {
                Ok(d) if d >= Duration::from_millis(100) => d,
                Ok(_) => {
                    err(errors, f("tcp_idle_timeout"), "must be at least 100ms");
                    DEFAULT_TCP_IDLE_TIMEOUT
                }
                Err(e) => {
                    err(errors, f("tcp_idle_timeout"), e);
                    DEFAULT_TCP_IDLE_TIMEOUT
                }
            },
        };
        let max_tcp_clients = match self.max_tcp_clients {
            None => DEFAULT_MAX_TCP_CLIENTS,
            Some(n) if (1..=65536).contains(&n) => n as usize,
            Some(n) => {
                err(
                    errors,
                    f("max_tcp_clients"),
                    format!("{n} is outside 1..=65536"),
                );
                DEFAULT_MAX_TCP_CLIENTS
            }
        };
        let udp_workers = match self.udp_workers {
            None => default_udp_workers(),
            Some(n) if (1..=64).contains(&n) => n as usize,
            Some(n) => {
                err(errors, f("udp_workers"), format!("{n} is outside 1..=64"));
                default_udp_workers()
            }
        };

        let identity = match &self.identity {
            None => super::chaos::default_identity(),
            Some(s) if s.is_empty() => {
                err(errors, f("identity"), "must not be empty");
                String::new()
            }
            Some(s) if s.len() > 255 => {
                err(
                    errors,
                    f("identity"),
                    format!("{} bytes; a TXT string holds at most 255", s.len()),
                );
                String::new()
            }
            Some(s) if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                err(
                    errors,
                    f("identity"),
                    "only printable ASCII (no control characters)",
                );
                String::new()
            }
            Some(s) => s.clone(),
        };
        let hide_version = self.hide_version.unwrap_or(false);

        // Zones: each file must parse.
        let mut zones = Vec::new();
        let mut loaded: Vec<Arc<Zone>> = Vec::new();
        let mut origins = HashSet::new();
        if self.zone.is_empty() {
            err(
                errors,
                f("zone"),
                "no zone configured (add a [[dns.zone]] with name and file)",
            );
        }
        for (i, z) in self.zone.iter().enumerate() {
            let p = format!("{path}.zone[{i}]");
            let Some(origin) = parse_name(&format!("{p}.name"), &z.name, errors) else {
                continue;
            };
            if !origins.insert(LowerName::new(&origin)) {
                err(
                    errors,
                    format!("{p}.name"),
                    format!("zone {origin} is listed twice"),
                );
                continue;
            }
            let file = PathBuf::from(&z.file);
            match Zone::load(&origin, &file) {
                Ok(zone) => {
                    let zone = Arc::new(zone);
                    loaded.push(zone.clone());
                    zones.push(ZoneSpec { origin, file, zone });
                }
                Err(e) => {
                    let reason = match e.line {
                        Some(l) => format!("line {l}: {}", e.reason),
                        None => e.reason,
                    };
                    err(errors, format!("{p}.file"), reason);
                }
            }
        }

        // Regions.
        let mut region_entries = Vec::new();
        let mut region_names = HashSet::new();
        let mut prefix_seen: HashMap<(IpAddr, u8), String> = HashMap::new();
        for (i, r) in self.region.iter().enumerate() {
            let p = format!("{path}.region[{i}]");
            if r.name.is_empty() {
                err(errors, format!("{p}.name"), "empty region name");
            } else if !region_names.insert(r.name.clone()) {
                err(
                    errors,
                    format!("{p}.name"),
                    format!("region `{}` is listed twice", r.name),
                );
            }
            if r.prefixes.is_empty() {
                err(
                    errors,
                    format!("{p}.prefixes"),
                    "a region needs at least one prefix",
                );
            }
            for (j, s) in r.prefixes.iter().enumerate() {
                match Prefix::parse(s) {
                    Ok(px) => {
                        if let Some(other) = prefix_seen.insert((px.addr, px.len), r.name.clone()) {
                            err(
                                errors,
                                format!("{p}.prefixes[{j}]"),
                                format!("{s} is already in region `{other}`"),
                            );
                        }
                        region_entries.push((px, r.name.clone()));
                    }
                    Err(e) => err(errors, format!("{p}.prefixes[{j}]"), e),
                }
            }
        }

        // GSLB pools.
        let mut pools = Vec::new();
        let mut pool_names = HashSet::new();
        for (i, g) in self.gslb.iter().enumerate() {
            let p = format!("{path}.gslb[{i}]");
            let name = parse_name(&format!("{p}.name"), &g.name, errors);
            if let Some(n) = &name {
                let ln = LowerName::new(n);
                if !pool_names.insert(ln.clone()) {
                    err(errors, format!("{p}.name"), format!("{n} has two pools"));
                }
                match loaded
                    .iter()
                    .filter(|z| z.origin_lower.zone_of(&ln))
                    .max_by_key(|z| z.origin_lower.num_labels())
                {
                    None if !origins.iter().any(|o| o.zone_of(&ln)) => err(
                        errors,
                        format!("{p}.name"),
                        format!("{n} is not inside any configured zone"),
                    ),
                    None => {}
                    Some(z) => {
                        if let Some(node) = z.node(&ln) {
                            if node.get(hickory_proto::rr::RecordType::CNAME).is_some() {
                                err(
                                    errors,
                                    format!("{p}.name"),
                                    format!(
                                        "{n} has a CNAME in zone {}; a GSLB name cannot",
                                        z.origin
                                    ),
                                );
                            }
                        }
                        if z.find_cut(&ln, false).is_some() {
                            err(
                                errors,
                                format!("{p}.name"),
                                format!("{n} is at or below a delegation in zone {}", z.origin),
                            );
                        }
                    }
                }
            }
            let ttl = match g.ttl {
                None => DEFAULT_GSLB_TTL,
                Some(t) if (0..=86400).contains(&t) => t as u32,
                Some(t) => {
                    err(
                        errors,
                        format!("{p}.ttl"),
                        format!("{t} is outside 0..=86400 seconds"),
                    );
                    DEFAULT_GSLB_TTL
                }
            };
            let count = match g.count {
                None => None,
                Some(c) if (1..=64).contains(&c) => Some(c as usize),
                Some(c) => {
                    err(
                        errors,
                        format!("{p}.count"),
                        format!("{c} is outside 1..=64"),
                    );
                    None
                }
            };
            let policy = match g
                .policy
                .as_deref()
                .unwrap_or("all")
                .to_ascii_lowercase()
                .as_str()
            {
                "all" => {
                    if count.is_some() {
                        err(
                            errors,
                            format!("{p}.count"),
                            "only valid with policy \"weighted\" or \"closest\"",
                        );
                    }
                    Policy::All
                }
                "weighted" => Policy::Weighted {
                    count: count.unwrap_or(1),
                },
                "closest" => {
                    if self.region.is_empty() {
                        err(
                            errors,
                            format!("{p}.policy"),
                            "\"closest\" needs [[dns.region]] entries",
                        );
                    }
                    Policy::Closest { count }
                }
                other => {
                    err(
                        errors,
                        format!("{p}.policy"),
                        format!("`{other}` is not a policy (all, weighted or closest)"),
                    );
                    Policy::All
                }
            };
            let fallback = match g
                .fallback
                .as_deref()
                .unwrap_or("all")
                .to_ascii_lowercase()
                .as_str()
            {
                "all" => {
                    if !g.backup.is_empty() {
                        err(
                            errors,
                            format!("{p}.backup"),
                            "backup members need fallback = \"backup\"",
                        );
                    }
                    Fallback::All
                }
                "backup" => {
                    if g.backup.is_empty() {
                        err(
                            errors,
                            format!("{p}.fallback"),
                            "\"backup\" needs at least one [[dns.gslb.backup]]",
                        );
                    }
                    Fallback::Backup
                }
                other => {
                    err(
                        errors,
                        format!("{p}.fallback"),
                        format!("`{other}` is not a fallback (all or backup)"),
                    );
                    Fallback::All
                }
            };
            let default_check = match &g.health {
                None => Some(HealthCheck::default()),
                Some(h) => h.to_check(&format!("{p}.health"), errors),
            };
            if g.member.is_empty() {
                err(
                    errors,
                    format!("{p}.member"),
                    "a pool needs at least one member",
                );
            }
            let mut members_of = |list: &[MemberConfig], key: &str| -> Vec<Member> {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                for (j, m) in list.iter().enumerate() {
                    let mp = format!("{p}.{key}[{j}]");
                    let address = match m.address.parse::<IpAddr>() {
                        Ok(a) if a.is_unspecified() || a.is_multicast() => {
                            err(
                                errors,
                                format!("{mp}.address"),
                                format!("{a} cannot be answered"),
                            );
                            None
                        }
                        Ok(a) => {
                            if !seen.insert(a) {
                                err(
                                    errors,
                                    format!("{mp}.address"),
                                    format!("{a} is listed twice"),
                                );
                            }
                            Some(a)
                        }
                        Err(_) => {
                            err(
                                errors,
                                format!("{mp}.address"),
                                format!("`{}` is not an IPv4 or IPv6 address", m.address),
                            );
                            None
                        }
                    };
                    let weight = match m.weight {
                        None => 1,
                        Some(w) if (0..=1_000_000).contains(&w) => w as u32,
                        Some(w) => {
                            err(
                                errors,
                                format!("{mp}.weight"),
                                format!("{w} is outside 0..=1000000"),
                            );
                            1
                        }
                    };
                    if let Some(r) = &m.region {
                        if !region_names.contains(r) {
                            err(
                                errors,
                                format!("{mp}.region"),
                                format!("`{r}` is not a configured [[dns.region]]"),
                            );
                        }
                    }
                    let (check, check_field) = match &m.health {
                        Some(h) => (
                            h.to_check(&format!("{mp}.health"), errors),
                            format!("{mp}.health"),
                        ),
                        None => (default_check.clone(), format!("{p}.health")),
                    };
                    let check_port = match &check {
                        Some(c) => match (c.port, &c.kind) {
                            (Some(port), _) => port,
                            (None, CheckKind::UdpDns { .. }) => 53,
                            (None, CheckKind::None) => 0,
                            (None, _) => {
                                err(
                                    errors,
                                    format!("{check_field}.port"),
                                    "required: a GSLB member is an address without a port",
                                );
                                0
                            }
                        },
                        None => 0,
                    };
                    if let (Some(address), Some(check)) = (address, check) {
                        out.push(Member {
                            address,
                            weight,
                            region: m.region.clone(),
                            check,
                            check_port,
                        });
                    }
                }
                out
            };
            let members = members_of(&g.member, "member");
            let backup = members_of(&g.backup, "backup");
            if let Some(name) = name {
                pools.push(PoolSpec {
                    name,
                    ttl,
                    policy,
                    fallback,
                    members,
                    backup,
                });
            }
        }

        let rrl = self
            .rrl
            .as_ref()
            .and_then(|r| r.settings(&f("rrl"), errors));

        if errors.len() != before {
            return None;
        }
        Some(DnsSettings {
            udp,
            tcp,
            max_udp_payload,
            tcp_idle_timeout,
            max_tcp_clients,
            udp_workers,
            identity,
            hide_version,
            zones,
            pools,
            regions: Regions::new(region_entries),
            rrl,
        })
    }
}

impl RrlConfig {
    fn settings(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<RrlSettings> {
        let before = errors.len();
        let f = |k: &str| format!("{path}.{k}");
        let rate = match self.responses_per_second {
            n if (0..=1_000_000).contains(&n) => n as u32,
            n => {
                err(
                    errors,
                    f("responses_per_second"),
                    format!("{n} is outside 0..=1000000"),
                );
                0
            }
        };
        let range = |errors: &mut Vec<ConfigError>,
                     key: &str,
                     v: Option<i64>,
                     lo: i64,
                     hi: i64,
                     d: i64|
         -> i64 {
            match v {
                None => d,
                Some(n) if (lo..=hi).contains(&n) => n,
                Some(n) => {
                    err(errors, f(key), format!("{n} is outside {lo}..={hi}"));
                    d
                }
            }
        };
        let window = range(errors, "window", self.window, 1, 3600, 15) as u32;
        let slip = range(errors, "slip", self.slip, 0, 10, 2) as u32;
        let v4 = range(
            errors,
            "ipv4_prefix_length",
            self.ipv4_prefix_length,
            8,
            32,
            24,
        ) as u8;
        let v6 = range(
            errors,
            "ipv6_prefix_length",
            self.ipv6_prefix_length,
            16,
            128,
            56,
        ) as u8;
        let max_table = range(
            errors,
            "max_table_size",
            self.max_table_size,
            1000,
            10_000_000,
            100_000,
        ) as usize;
        let mut exempt = Vec::new();
        for (i, s) in self.exempt.iter().enumerate() {
            match Prefix::parse(s) {
                Ok(p) => exempt.push(p),
                Err(e) => err(errors, format!("{path}.exempt[{i}]"), e),
            }
        }
        if errors.len() != before || rate == 0 {
            return None;
        }
        Some(RrlSettings {
            responses_per_second: rate,
            window,
            slip,
            ipv4_prefix_length: v4,
            ipv6_prefix_length: v6,
            exempt,
            max_table_size: max_table,
        })
    }
}
