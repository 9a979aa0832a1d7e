//! The `health` table: what to probe, how often, and when to change state.

use std::{fmt, time::Duration};

use hickory_proto::rr::{Name, RecordType};
use serde::Deserialize;

use crate::config::{parse_duration, ConfigError};

/// Defaults, also used by the docs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_HTTP_PATH: &str = "/";
pub const DEFAULT_HTTP_EXPECT: &str = "200-399";

/// A `[... .health]` table as written in the config file.
///
/// ```toml
/// [vip.real.health]          # or [[l7.upstream]].health, [[dns.gslb]].health, ...
/// kind = "http"              # tcp | http | udp-dns | none
/// interval = "2s"
/// timeout = "1s"
/// rise = 2
/// fall = 3
/// port = 8080                # optional: probe this port instead of the target's
/// path = "/healthz"          # http only
/// host = "app.example"       # http only: Host header (default: the target address)
/// expect = "200-399"         # http only: accepted status codes, e.g. "200", "200-299,301"
/// query = "example.com."     # udp-dns only: name to ask for (default ".")
/// qtype = "SOA"              # udp-dns only: type to ask for (default SOA)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect: Option<String>,
    pub query: Option<String>,
    pub qtype: Option<String>,
}

/// Which probe to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Never probed; always up.
    None,
    /// TCP connect succeeds.
    Tcp,
    /// `GET path` answers with a status inside `expect`.
    Http {
        path: String,
        host: Option<String>,
        expect: StatusRanges,
    },
    /// A DNS query over UDP gets a well-formed answer (any RCODE but SERVFAIL).
    UdpDns { query: Name, qtype: RecordType },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::UdpDns { .. } => "udp-dns",
        }
    }
}

/// Accepted HTTP status codes: a union of inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= status && status <= hi)
    }

    /// Parses `200`, `200-399`, `200-299,301,302`.
    pub fn parse(s: &str) -> Result<StatusRanges, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |x: &str| -> Result<u16, String> {
                match x.parse::<u16>() {
                    Ok(v) if (100..=599).contains(&v) => Ok(v),
                    _ => Err(format!(
                        "`{x}` is not an HTTP status code (100-599) in `{s}` (use e.g. \"200-399\")"
                    )),
                }
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("range `{part}` is empty (low end above high end)"));
            }
            out.push((lo, hi));
        }
        Ok(StatusRanges(out))
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Probe this port instead of the target's own.
    pub port: Option<u16>,
}

impl Default for HealthCheck {
    /// A TCP connect check with the default timings.
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
        }
    }
}

impl HealthCheck {
    /// A check that never probes and is always up.
    pub fn none() -> Self {
        HealthCheck {
            kind: CheckKind::None,
            ..HealthCheck::default()
        }
    }
}

fn duration_field(
    field: String,
    value: Option<&str>,
    default: Duration,
    min: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match value {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if d < min => {
                errors.push(ConfigError::new(
                    field,
                    format!("`{s}` is too short (at least {}ms)", min.as_millis()),
                ));
                default
            }
            Ok(d) => d,
            Err(reason) => {
                errors.push(ConfigError::new(field, reason));
                default
            }
        },
    }
}

fn count_field(
    field: String,
    value: Option<i64>,
    default: u32,
    errors: &mut Vec<ConfigError>,
) -> u32 {
    match value {
        None => default,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            errors.push(ConfigError::new(field, format!("{n} is outside 1..=100")));
            default
        }
    }
}

impl HealthConfig {
    /// Checks the table; `path` is the field prefix (e.g. `dns.gslb[0].health`).
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let _ = self.to_check(path, errors);
    }

    /// Validates and returns the typed check. On any error, pushes it and
    /// returns `None`.
    pub fn to_check(&self, path: &str, errors: &mut Vec<ConfigError>) -> Option<HealthCheck> {
        let before = errors.len();
        let kind_name = self.kind.as_deref().unwrap_or("tcp").to_ascii_lowercase();
        let f = |k: &str| format!("{path}.{k}");

        let interval = duration_field(
            f("interval"),
            self.interval.as_deref(),
            DEFAULT_INTERVAL,
            Duration::from_millis(50),
            errors,
        );
        let timeout = duration_field(
            f("timeout"),
            self.timeout.as_deref(),
            DEFAULT_TIMEOUT.min(interval),
            Duration::from_millis(10),
            errors,
        );
        if timeout > interval && errors.len() == before {
            errors.push(ConfigError::new(
                f("timeout"),
                format!(
                    "{}ms is longer than the interval ({}ms)",
                    timeout.as_millis(),
                    interval.as_millis()
                ),
            ));
        }
        let rise = count_field(f("rise"), self.rise, DEFAULT_RISE, errors);
        let fall = count_field(f("fall"), self.fall, DEFAULT_FALL, errors);
        let port = match self.port {
            None => None,
            Some(p) if (1..=65535).contains(&p) => Some(p as u16),
            Some(p) => {
                errors.push(ConfigError::new(
                    f("port"),
                    format!("{p} is not a port (1-65535)"),
                ));
                None
            }
        };

        let http_only = |errors: &mut Vec<ConfigError>, key: &str, set: bool| {
            if set {
                errors.push(ConfigError::new(
                    f(key),
                    format!("only valid with kind = \"http\" (kind is \"{kind_name}\")"),
                ));
            }
        };
        let dns_only = |errors: &mut Vec<ConfigError>, key: &str, set: bool| {
            if set {
                errors.push(ConfigError::new(
                    f(key),
                    format!("only valid with kind = \"udp-dns\" (kind is \"{kind_name}\")"),
                ));
            }
        };

        let kind = match kind_name.as_str() {
            "none" | "tcp" => {
                http_only(errors, "path", self.path.is_some());
                http_only(errors, "host", self.host.is_some());
                http_only(errors, "expect", self.expect.is_some());
                dns_only(errors, "query", self.query.is_some());
                dns_only(errors, "qtype", self.qtype.is_some());
                if kind_name == "none" {
                    CheckKind::None
                } else {
                    CheckKind::Tcp
                }
            }
            "http" => {
                dns_only(errors, "query", self.query.is_some());
                dns_only(errors, "qtype", self.qtype.is_some());
                let path_s = self
                    .path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_string());
                if !path_s.starts_with('/') {
                    errors.push(ConfigError::new(
                        f("path"),
                        format!("`{path_s}` must start with /"),
                    ));
                } else if path_s.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    errors.push(ConfigError::new(
                        f("path"),
                        format!(
                            "`{path_s}` contains a space or control character (percent-encode it)"
                        ),
                    ));
                }
                if let Some(h) = &self.host {
                    if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        errors.push(ConfigError::new(
                            f("host"),
                            format!("`{h}` is not a valid Host header value"),
                        ));
                    }
                }
                let expect = match StatusRanges::parse(
                    self.expect.as_deref().unwrap_or(DEFAULT_HTTP_EXPECT),
                ) {
                    Ok(r) => r,
                    Err(reason) => {
                        errors.push(ConfigError::new(f("expect"), reason));
                        StatusRanges(vec![])
                    }
                };
                CheckKind::Http {
                    path: path_s,
                    host: self.host.clone(),
                    expect,
                }
            }
            "udp-dns" => {
                http_only(errors, "path", self.path.is_some());
                http_only(errors, "host", self.host.is_some());
                http_only(errors, "expect", self.expect.is_some());
                let q = self.query.as_deref().unwrap_or(".");
                let query = match Name::from_ascii(q) {
                    Ok(mut n) => {
                        n.set_fqdn(true);
                        n
                    }
                    Err(e) => {
                        errors.push(ConfigError::new(
                            f("query"),
                            format!("`{q}` is not a domain name: {e}"),
                        ));
                        Name::root()
                    }
                };
                let t = self.qtype.as_deref().unwrap_or("SOA").to_ascii_uppercase();
                let qtype = match t.parse::<RecordType>() {
                    Ok(rt) if !matches!(rt, RecordType::OPT | RecordType::Unknown(_)) => rt,
                    _ => {
                        errors.push(ConfigError::new(
                            f("qtype"),
                            format!("`{t}` is not a query type (e.g. SOA, A, NS)"),
                        ));
                        RecordType::SOA
                    }
                };
                CheckKind::UdpDns { query, qtype }
            }
            other => {
                errors.push(ConfigError::new(
                    f("kind"),
                    format!("`{other}` is not a health check kind (tcp, http, udp-dns or none)"),
                ));
                CheckKind::None
            }
        };

        if errors.len() != before {
            return None;
        }
        Some(HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<HealthCheck, Vec<ConfigError>> {
        let c: HealthConfig = toml::from_str(t).unwrap();
        let mut e = vec![];
        match c.to_check("h", &mut e) {
            Some(c) => Ok(c),
            None => Err(e),
        }
    }

    #[test]
    fn defaults_are_tcp() {
        let c = parse("").unwrap();
        assert_eq!(c, HealthCheck::default());
    }

    #[test]
    fn http_full() {
        let c = parse(
            "kind='http'\ninterval='500ms'\ntimeout='200ms'\nrise=1\nfall=2\nport=8080\npath='/healthz'\nhost='a.example'\nexpect='200-299,301'",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.timeout, Duration::from_millis(200));
        assert_eq!((c.rise, c.fall, c.port), (1, 2, Some(8080)));
        match c.kind {
            CheckKind::Http { path, host, expect } => {
                assert_eq!(path, "/healthz");
                assert_eq!(host.as_deref(), Some("a.example"));
                assert!(expect.contains(250) && expect.contains(301) && !expect.contains(302));
                assert_eq!(expect.to_string(), "200-299,301");
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn errors_name_fields() {
        let e = parse("kind='icmp'").unwrap_err();
        assert_eq!(e[0].field, "h.kind");
        let e = parse("kind='tcp'\npath='/x'").unwrap_err();
        assert_eq!(e[0].field, "h.path");
        let e = parse("kind='http'\nexpect='200-700'").unwrap_err();
        assert_eq!(e[0].field, "h.expect");
        let e = parse("interval='1s'\ntimeout='2s'").unwrap_err();
        assert_eq!(e[0].field, "h.timeout");
        let e = parse("rise=0\nfall=1000\nport=70000").unwrap_err();
        let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["h.rise", "h.fall", "h.port"]);
        let e = parse("kind='udp-dns'\nqtype='BOGUS'").unwrap_err();
        assert_eq!(e[0].field, "h.qtype");
        let e = parse("interval='fast'").unwrap_err();
        assert_eq!(e[0].field, "h.interval");
        assert!(toml::from_str::<HealthConfig>("bogus=1").is_err());
    }

    #[test]
    fn udp_dns_defaults() {
        let c = parse("kind='udp-dns'\nquery='example.com'").unwrap();
        assert_eq!(
            c.kind,
            CheckKind::UdpDns {
                query: Name::from_ascii("example.com.").unwrap(),
                qtype: RecordType::SOA
            }
        );
    }
}
