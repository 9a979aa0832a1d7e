//! The `[[vip]]` tables: raw (as written, also the API's bodies) and
//! validated ([`Vip`], [`Real`]).

use std::{collections::HashSet, net::IpAddr, time::Duration};

use serde::Deserialize;

use crate::{
    health::{CheckKind, HealthCheck, HealthConfig},
    ident::{Protocol, RealId, VipId},
    validate::{parse_duration, ConfigError},
};

/// Largest ring a VIP may have; also the stride of one ring in the data
/// plane's ring array. 65537 is prime, so it is also the default size.
pub const MAX_RING_SIZE: u32 = lb_common::RING_STRIDE;
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Smallest accepted ring. Maglev needs M much larger than the number of
/// reals to spread evenly; 7 keeps tiny test rings possible.
pub const MIN_RING_SIZE: u32 = 7;

/// Forwarding mode of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Destination rewritten to the real, replies rewritten back: the LB
    /// is the reals' gateway.
    Nat,
    /// Direct server return: the client's packet, untouched, encapsulated
    /// to the real, which answers the client from the VIP directly.
    Dsr(Encap),
    /// Source and destination rewritten (the source to one of the VIP's
    /// `snat` addresses and a port claimed for the flow): the reals answer
    /// the LB whatever their routes.
    FullNat,
}

/// How DSR packets reach the real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// IP in IP: IPIP, IP6IP6, 4-in-6 or 6-in-4 by the families.
    Ipip,
    /// GUE (variant 1) to this UDP port on the real.
    Gue { port: u16 },
}

/// GUE's UDP port when `gue_port` is not set (on the LB and in `[decap]`).
pub const DEFAULT_GUE_PORT: u16 = 6080;

impl Mode {
    /// The config's words: `nat`, `dsr/ipip`, `dsr/gue:PORT`.
    pub fn describe(self) -> String {
        match self {
            Mode::Nat => "nat".into(),
            Mode::Dsr(Encap::Ipip) => "dsr/ipip".into(),
            Mode::Dsr(Encap::Gue { port }) => format!("dsr/gue:{port}"),
            Mode::FullNat => "fullnat".into(),
        }
    }

    /// The data plane's `MODE_*` value, and the GUE port.
    pub fn wire(self) -> (u8, u16) {
        match self {
            Mode::Nat => (lb_common::MODE_NAT, 0),
            Mode::Dsr(Encap::Ipip) => (lb_common::MODE_DSR_IPIP, 0),
            Mode::Dsr(Encap::Gue { port }) => (lb_common::MODE_DSR_GUE, port),
            Mode::FullNat => (lb_common::MODE_FULLNAT, 0),
        }
    }
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
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_mins(5);

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
    /// FullNAT: the source addresses towards the reals (the VIP's family;
    /// empty in other modes) and the source ports flows may take.
    pub snat: Vec<IpAddr>,
    pub snat_ports: (u16, u16),
    /// FullNAT: `snat_idle_timeout` and `snat_closed_timeout` (`None`: the
    /// defaults, 300 s for TCP / 60 s for UDP, and 2 s).
    pub snat_idle: Option<Duration>,
    pub snat_closed: Option<Duration>,
    /// The LB answers echo requests (ping) to the VIP's address itself
    /// (`icmp_echo`, default on; on for the address while any of its VIPs
    /// has it on).
    pub icmp_echo: bool,
}

impl Vip {
    pub fn id(&self) -> VipId {
        VipId::new(self.address, self.port, self.protocol)
    }
}

impl Real {
    pub fn id(&self) -> RealId {
        RealId::new(self.address, self.port)
    }
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
    /// `dsr` only: `ipip` (default) or `gue`.
    pub encap: Option<String>,
    /// `encap = "gue"` only: the UDP destination port on the reals.
    pub gue_port: Option<i64>,
    /// `fullnat` only: this node's source addresses towards the reals.
    pub snat: Option<Vec<String>>,
    /// `fullnat` only: the source port range, `"1024-32767"`.
    pub snat_ports: Option<String>,
    /// `fullnat` + TCP: insert a PROXY protocol v2 header (not available in
    /// this version; `true` is refused).
    pub proxy_protocol: Option<bool>,
    /// `fullnat` only: when an idle flow's port, and a closed flow's
    /// port, may go to a new flow.
    pub snat_idle_timeout: Option<String>,
    pub snat_closed_timeout: Option<String>,
    /// Answer pings to the VIP's address in XDP (default true).
    pub icmp_echo: Option<bool>,
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
    let port = if let Ok(port) = u16::try_from(rv.port) {
        Some(port)
    } else {
        errors.push(ConfigError::new(
            format!("{p}.port"),
            format!("{} is not a port (0-65535; 0 = all ports)", rv.port),
        ));
        None
    };
    let protocol = match rv.protocol.parse::<Protocol>() {
        Ok(pr) => Some(pr),
        Err(e) => {
            errors.push(ConfigError::new(format!("{p}.protocol"), e.to_string()));
            None
        }
    };
    let mode = validate_mode(p, rv, errors);
    let (snat, snat_ports) = validate_snat(p, rv, address, mode, errors);
    let fullnat = mode == Some(Mode::FullNat);
    let snat_time =
        |key: &str, value: &Option<String>, max: Duration, errors: &mut Vec<ConfigError>| {
            let Some(s) = value else {
                return Some(None);
            };
            if !fullnat {
                if mode.is_some() {
                    errors.push(ConfigError::new(
                        format!("{p}.{key}"),
                        "only used with mode = \"fullnat\"",
                    ));
                }
                return None;
            }
            match parse_duration(s) {
                Ok(d) if d <= max => Some(Some(d)),
                Ok(_) => {
                    errors.push(ConfigError::new(
                        format!("{p}.{key}"),
                        format!("`{s}` is longer than {max:?}"),
                    ));
                    None
                }
                Err(reason) => {
                    errors.push(ConfigError::new(format!("{p}.{key}"), reason));
                    None
                }
            }
        };
    let snat_idle = snat_time(
        "snat_idle_timeout",
        &rv.snat_idle_timeout,
        Duration::from_hours(24),
        errors,
    );
    let snat_closed = snat_time(
        "snat_closed_timeout",
        &rv.snat_closed_timeout,
        Duration::from_mins(10),
        errors,
    );
    let ring_size = match rv.ring_size {
        None => Some(DEFAULT_RING_SIZE),
        Some(n) if n < MIN_RING_SIZE as i64 || n > MAX_RING_SIZE as i64 => {
            errors.push(ConfigError::new(
                format!("{p}.ring_size"),
                format!("{n} is outside {MIN_RING_SIZE}..={MAX_RING_SIZE}"),
            ));
            None
        }
        Some(n) if !crate::l4::maglev::is_prime(n as u32) => {
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
        let vip = VipSide {
            address,
            port,
            mode,
        };
        if let Some(real) = validate_real(&rp, rr, &vip, health, errors) {
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
        snat: snat?,
        snat_ports: snat_ports?,
        snat_idle: snat_idle?,
        snat_closed: snat_closed?,
        icmp_echo: rv.icmp_echo.unwrap_or(true),
    })
}

/// `snat`, `snat_ports` and `proxy_protocol` of one `[[vip]]`: FullNAT
/// needs at least one address of the VIP's family (addresses of the other
/// family are accepted and unused: a FullNAT VIP's reals share its
/// family), at most [`lb_common::MAX_SNAT_ADDRS`] of it.
fn validate_snat(
    p: &str,
    rv: &RawVip,
    address: Option<IpAddr>,
    mode: Option<Mode>,
    errors: &mut Vec<ConfigError>,
) -> (Option<Vec<IpAddr>>, Option<(u16, u16)>) {
    let fullnat = mode == Some(Mode::FullNat);
    if rv.proxy_protocol == Some(true) {
        errors.push(ConfigError::new(
            format!("{p}.proxy_protocol"),
            "PROXY protocol insertion is not available in this version",
        ));
    }
    if !fullnat && mode.is_some() {
        for (key, set) in [
            ("snat", rv.snat.is_some()),
            ("snat_ports", rv.snat_ports.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    format!("{p}.{key}"),
                    "only used with mode = \"fullnat\"",
                ));
            }
        }
        return (
            Some(Vec::new()),
            Some((lb_common::SNAT_PORT_MIN, lb_common::SNAT_PORT_MAX)),
        );
    }
    let ports = match rv.snat_ports.as_deref() {
        None => Some((lb_common::SNAT_PORT_MIN, lb_common::SNAT_PORT_MAX)),
        Some(s) => {
            let parsed = s.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            });
            match parsed {
                Some((lo, hi)) if lo >= 1 && lo <= hi => Some((lo, hi)),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{p}.snat_ports"),
                        format!("`{s}` is not a port range FIRST-LAST (1 ≤ FIRST ≤ LAST ≤ 65535), e.g. \"1024-32767\""),
                    ));
                    None
                }
            }
        }
    };
    if !fullnat {
        return (None, ports);
    }
    let Some(list) = rv.snat.as_ref().filter(|l| !l.is_empty()) else {
        errors.push(ConfigError::new(
            format!("{p}.snat"),
            "a FullNAT VIP needs this node's source addresses towards the reals, e.g. snat = [\"198.18.3.1\"]",
        ));
        return (None, ports);
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, a) in list.iter().enumerate() {
        let field = format!("{p}.snat[{i}]");
        match parse_ip(&field, a, errors) {
            Some(ip) if ip.is_loopback() => {
                errors.push(ConfigError::new(
                    field,
                    format!("{ip} is a loopback address; the reals must reach it"),
                ));
                ok = false;
            }
            Some(ip) if out.contains(&ip) => {
                errors.push(ConfigError::new(field, format!("{ip} is listed twice")));
                ok = false;
            }
            Some(ip) => out.push(ip),
            None => ok = false,
        }
    }
    let Some(vip) = address else {
        return (None, ports);
    };
    let same: Vec<IpAddr> = out
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == vip.is_ipv4())
        .collect();
    if ok && same.is_empty() {
        errors.push(ConfigError::new(
            format!("{p}.snat"),
            format!(
                "no {} address: the VIP {vip} and its reals are {0}",
                if vip.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        ));
        ok = false;
    }
    if same.len() > lb_common::MAX_SNAT_ADDRS {
        errors.push(ConfigError::new(
            format!("{p}.snat"),
            format!(
                "{} addresses of the VIP's family; at most {}",
                same.len(),
                lb_common::MAX_SNAT_ADDRS
            ),
        ));
        ok = false;
    }
    if same.contains(&vip) {
        errors.push(ConfigError::new(
            format!("{p}.snat"),
            format!("{vip} is the VIP itself"),
        ));
        ok = false;
    }
    (ok.then_some(same), ports)
}

/// `mode`, `encap` and `gue_port` of one `[[vip]]`.
fn validate_mode(p: &str, rv: &RawVip, errors: &mut Vec<ConfigError>) -> Option<Mode> {
    let mode = rv.mode.to_ascii_lowercase();
    let encap = rv.encap.as_deref().map(str::to_ascii_lowercase);
    if mode != "dsr" {
        if encap.is_some() {
            errors.push(ConfigError::new(
                format!("{p}.encap"),
                "only used with mode = \"dsr\"",
            ));
        }
        if rv.gue_port.is_some() {
            errors.push(ConfigError::new(
                format!("{p}.gue_port"),
                "only used with mode = \"dsr\" and encap = \"gue\"",
            ));
        }
    }
    match mode.as_str() {
        "nat" => Some(Mode::Nat),
        "dsr" => match encap.as_deref() {
            None | Some("ipip") => {
                if rv.gue_port.is_some() {
                    errors.push(ConfigError::new(
                        format!("{p}.gue_port"),
                        "only used with encap = \"gue\"",
                    ));
                }
                Some(Mode::Dsr(Encap::Ipip))
            }
            Some("gue") => match rv.gue_port.map(u16::try_from) {
                None => Some(Mode::Dsr(Encap::Gue {
                    port: DEFAULT_GUE_PORT,
                })),
                Some(Ok(port)) if port != 0 => Some(Mode::Dsr(Encap::Gue { port })),
                Some(_) => {
                    errors.push(ConfigError::new(
                        format!("{p}.gue_port"),
                        format!("{} is not a port (1-65535)", rv.gue_port.unwrap_or(0)),
                    ));
                    None
                }
            },
            Some(other) => {
                errors.push(ConfigError::new(
                    format!("{p}.encap"),
                    format!("`{other}` is not an encapsulation (ipip or gue)"),
                ));
                None
            }
        },
        "fullnat" => Some(Mode::FullNat),
        other => {
            errors.push(ConfigError::new(
                format!("{p}.mode"),
                format!("`{other}` is not a mode (nat, fullnat or dsr)"),
            ));
            None
        }
    }
}

/// What a real's validation needs of its VIP (`None` where the VIP's own
/// field was invalid).
pub struct VipSide {
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub mode: Option<Mode>,
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

/// Validates one `[[vip.real]]` of `vip`; `vip_health` is the VIP's
/// (already validated) health table.
///
/// A DSR real receives the client's packet untouched, so on the VIP's
/// port: its `port` may be left out (it is the VIP's) or must equal it.
pub fn validate_real(
    rp: &str,
    rr: &RawReal,
    vip: &VipSide,
    vip_health: &Option<HealthConfig>,
    errors: &mut Vec<ConfigError>,
) -> Option<Real> {
    let (vip_addr, vip_port) = (vip.address, vip.port);
    let dsr = matches!(vip.mode, Some(Mode::Dsr(_)));
    let raddr = parse_ip(&format!("{rp}.address"), &rr.address, errors);
    if let (Some(v), Some(r), false) = (vip_addr, raddr, dsr) {
        if v.is_ipv4() != r.is_ipv4() {
            errors.push(ConfigError::new(
                format!("{rp}.address"),
                format!(
                    "{r} is {} but the VIP {v} is {} (NAT and FullNAT keep the family)",
                    if r.is_ipv4() { "IPv4" } else { "IPv6" },
                    if v.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
    }
    let rport = match (vip_port, u16::try_from(rr.port)) {
        (Some(vp), Ok(0)) if dsr => Some(vp),
        (Some(vp), Ok(n)) if dsr && n != vp => {
            errors.push(ConfigError::new(
                format!("{rp}.port"),
                format!(
                    "{n}: a DSR real receives the client's packet untouched, on the VIP's port {vp}; leave the real's port out"
                ),
            ));
            None
        }
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
    let check = if real_health_ok {
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
    } else {
        None
    };
    Some(Real {
        address: raddr?,
        port: rport?,
        weight: weight?,
        check: check?,
    })
}

/// The outer source addresses of DSR packets (`encap_source`): per family a
/// prefix whose host bits are filled from each flow, so that the reals'
/// receive-side scaling spreads flows over their queues. A family without
/// one uses this node's own address towards the reals (the kernel's route
/// source), the same for every flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncapSources {
    pub v4: Option<(std::net::Ipv4Addr, u8)>,
    pub v6: Option<(std::net::Ipv6Addr, u8)>,
}

/// Shortest `encap_source` prefixes: the host bits come from the last 32
/// bits of the address.
pub const MIN_ENCAP_PREFIX_V4: u8 = 16;
pub const MIN_ENCAP_PREFIX_V6: u8 = 96;

/// Validates `encap_source`: at most one prefix per family, each at least
/// [`MIN_ENCAP_PREFIX_V4`] / [`MIN_ENCAP_PREFIX_V6`] long.
pub fn validate_encap_sources(list: &[String], errors: &mut Vec<ConfigError>) -> EncapSources {
    let mut out = EncapSources::default();
    for (i, s) in list.iter().enumerate() {
        let field = format!("encap_source[{i}]");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.as_str(), None),
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            errors.push(ConfigError::new(
                field,
                format!("`{s}` is not an address or prefix (e.g. 198.18.250.0/24)"),
            ));
            continue;
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len.map(str::parse::<u8>) {
            None => max,
            Some(Ok(l)) if l <= max => l,
            Some(_) => {
                errors.push(ConfigError::new(
                    field,
                    format!("`{s}`: the prefix length must be 0..={max}"),
                ));
                continue;
            }
        };
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            errors.push(ConfigError::new(
                field,
                format!("`{s}` cannot be a packet's source"),
            ));
            continue;
        }
        match ip {
            IpAddr::V4(a) => {
                if len < MIN_ENCAP_PREFIX_V4 {
                    errors.push(ConfigError::new(
                        field,
                        format!("`{s}`: an IPv4 prefix must be /{MIN_ENCAP_PREFIX_V4} or longer"),
                    ));
                } else if out.v4.replace((a, len)).is_some() {
                    errors.push(ConfigError::new(
                        field,
                        "a second IPv4 prefix (one per family)",
                    ));
                }
            }
            IpAddr::V6(a) => {
                if len < MIN_ENCAP_PREFIX_V6 {
                    errors.push(ConfigError::new(
                        field,
                        format!("`{s}`: an IPv6 prefix must be /{MIN_ENCAP_PREFIX_V6} or longer"),
                    ));
                } else if out.v6.replace((a, len)).is_some() {
                    errors.push(ConfigError::new(
                        field,
                        "a second IPv6 prefix (one per family)",
                    ));
                }
            }
        }
    }
    out
}

/// The host mask of an `encap_source` prefix over the address's last four
/// bytes, as the data plane's `EncapSource.host_mask` holds it (a native
/// `u32` of those bytes in wire order).
pub fn encap_host_mask(ip: IpAddr, len: u8) -> u32 {
    let bits_in_last32 = match ip {
        IpAddr::V4(_) => u32::from(len),
        IpAddr::V6(_) => u32::from(len).saturating_sub(96),
    };
    let mask_be: u32 = if bits_in_last32 >= 32 {
        0
    } else {
        u32::MAX >> bits_in_last32
    };
    u32::from_ne_bytes(mask_be.to_be_bytes())
}
