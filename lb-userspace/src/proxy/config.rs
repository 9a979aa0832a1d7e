//! `[[l7]]` configuration: the serde shape ([`L7Config`]) and its compiled,
//! validated form ([`ListenerSpec`]).
//!
//! Validation and compilation are one step: [`L7Config::compile`] reads the
//! certificate files, checks every field and either returns a ready-to-serve
//! [`ListenerSpec`] or every problem it found, each naming its field
//! (`l7[0].cert[1].key: cannot read ...`). `validate` (called by the
//! top-level config) only keeps the errors.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use super::{proxyproto::ProxyProtocolSpec, route::RouteTable, tls::LoadedCert};
use crate::{
    config::{parse_duration, ConfigError},
    dns::gslb::Prefix,
    health::{HealthCheck, HealthConfig},
};

/// One `[[l7]]` table: a listener with its certificates, routes and upstream pools.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct L7Config {
    /// Name used in logs; defaults to the field path (`l7[0]`).
    pub name: Option<String>,
    /// `address:port` to listen on, e.g. `127.0.0.1:8443` or `[2001:db8::1]:443`.
    pub listen: String,
    /// Terminate TLS on this listener. Defaults to true when certificates are given.
    pub tls: Option<bool>,
    /// Offer HTTP/2 through ALPN (TLS listeners). Default true.
    pub http2: Option<bool>,
    /// What a TLS client asking for an unknown name (or no name) gets:
    /// `reject` (handshake failure, the default) or `default` (the default certificate).
    pub unknown_sni: Option<String>,
    /// Plain listeners: answer every request with a redirect to `https://`.
    pub redirect_to_https: Option<bool>,
    /// Redirect status: 301, 302, 307 or 308 (default 308).
    pub redirect_status: Option<i64>,
    /// Port written into the redirect's `Location` (default 443, which is left out).
    pub https_port: Option<i64>,
    /// Largest number of open client connections; more are closed at once.
    pub max_connections: Option<i64>,
    /// Largest request head (request line + headers); larger gets 431.
    pub max_header_size: Option<Size>,
    /// Largest request body; larger gets 413. 0 = no limit.
    pub max_body_size: Option<Size>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_h2_streams: Option<i64>,
    /// `stdout` (default), `stderr`, `off`, or a file path (appended, reopened on reload).
    pub access_log: Option<String>,
    /// Which forwarding headers to send upstream: any of `x-forwarded-for`,
    /// `x-forwarded-proto`, `x-forwarded-host`, `forwarded`.
    pub forwarded_headers: Option<Vec<String>>,
    /// Require a PROXY protocol header (v1 or v2) before TLS / HTTP on every
    /// connection; its source address is the client from then on. Default false.
    pub proxy_protocol: Option<bool>,
    /// With `proxy_protocol`: prefixes (`198.18.0.0/15`, `2001:db8::/32`, or
    /// a bare address) of the peers allowed to send the header; others are
    /// closed unread. Absent: every peer may.
    pub proxy_trusted: Option<Vec<String>>,
    pub timeouts: Option<TimeoutsConfig>,
    #[serde(default)]
    pub cert: Vec<CertConfig>,
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
}

/// A byte size: an integer or a string with a k/m/g suffix (`"16k"`, `"10m"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Text(String),
}

impl Size {
    fn parse(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) if *n >= 0 => Ok(*n as u64),
            Size::Bytes(n) => Err(format!("{n} is negative")),
            Size::Text(s) => {
                let t = s.trim().to_ascii_lowercase();
                let (num, mul) = match t.chars().last() {
                    Some('k') => (&t[..t.len() - 1], 1024u64),
                    Some('m') => (&t[..t.len() - 1], 1024 * 1024),
                    Some('g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
                    _ => (t.as_str(), 1),
                };
                let n: u64 = num.trim().parse().map_err(|_| {
                    format!("`{s}` is not a size (use e.g. 16384, \"16k\", \"10m\")")
                })?;
                n.checked_mul(mul)
                    .ok_or_else(|| format!("`{s}` is too large"))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP connect to an upstream server (default 3s).
    pub connect: Option<String>,
    /// Reading a request head, and the TLS handshake (default 10s).
    pub header: Option<String>,
    /// From sending a request upstream to its response head (default 60s).
    pub upstream_response: Option<String>,
    /// A client connection with no request in flight and no traffic (default 60s).
    pub idle: Option<String>,
    /// How long shutdown and listener removal wait for in-flight requests (default 10s).
    pub shutdown: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM file: the leaf certificate first, then its intermediates.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate answers for (exact or `*.example.com`).
    /// Defaults to the DNS names in the certificate's subjectAltName.
    pub names: Option<Vec<String>>,
    /// Use this certificate for unknown names and clients without SNI
    /// (with `unknown_sni = "default"`). Defaults to the first certificate.
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `www.example.com`, `*.example.com`; absent = any host.
    pub host: Option<String>,
    /// Path prefix (string prefix, like an nginx prefix `location`). Default `/`.
    pub path_prefix: Option<String>,
    /// Name of an `[[l7.upstream]]`.
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `address:port` of each server.
    pub servers: Vec<String>,
    /// `round_robin` (default), `least_outstanding` or `consistent_hash`.
    pub policy: Option<String>,
    /// For `consistent_hash`: `header:NAME` or `cookie:NAME`.
    pub hash_key: Option<String>,
    /// `Host` sent upstream: `preserve` (default, the client's), `server`
    /// (the server's address:port) or a literal host name.
    pub host_header: Option<String>,
    /// Idle keep-alive connections kept per server (default 32; 0 disables reuse).
    pub max_idle_per_server: Option<i64>,
    /// How long an idle upstream connection is kept (default 60s).
    pub idle_timeout: Option<String>,
    /// Extra attempts on another server for idempotent requests that failed
    /// before any byte was sent (default 2).
    pub retries: Option<i64>,
    /// Consecutive connect failures that eject a server (default 3; 0 = never).
    pub eject_after: Option<i64>,
    /// How long an ejected server gets no new requests (default 10s).
    pub eject_for: Option<String>,
    /// Active health check of every server (the shared `health` table;
    /// `kind` defaults to `http` here).
    pub health: Option<HealthConfig>,
}

// ----- compiled form -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    Reject,
    Default,
}

#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub certs: Vec<LoadedCert>,
    pub unknown_sni: UnknownSni,
    pub http2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectSpec {
    pub status: u16,
    pub https_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_size: usize,
    /// 0 = no limit.
    pub max_body_size: u64,
    pub max_h2_streams: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub header: Duration,
    pub upstream_response: Duration,
    pub idle: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "a set of independent headers, one flag each, as the config lists them"
)]
pub struct ForwardedSet {
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub forwarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastOutstanding,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    Preserve,
    Server,
    Fixed(http::HeaderValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    pub policy: Policy,
    pub hash_key: Option<HashKey>,
    pub host_header: HostHeader,
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub eject_after: u32,
    pub eject_for: Duration,
    pub health: Option<HealthCheck>,
}

/// A validated listener, certificates loaded, ready to serve.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsSpec>,
    pub redirect: Option<RedirectSpec>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub access_log: AccessLogTarget,
    pub forwarded: ForwardedSet,
    /// `proxy_protocol = true`: the header is required; `None`: not accepted.
    pub proxy_protocol: Option<ProxyProtocolSpec>,
    pub routes: Arc<RouteTable>,
    pub upstreams: Vec<UpstreamSpec>,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_SIZE: usize = 16 * 1024;
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;
pub const DEFAULT_MAX_H2_STREAMS: u32 = 128;

fn dur(
    field: String,
    v: Option<&str>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                errors.push(ConfigError::new(field, "must be greater than 0"));
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

fn int_in(
    field: String,
    v: Option<i64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    errors: &mut Vec<ConfigError>,
) -> u64 {
    match v {
        None => default,
        Some(n) if n >= 0 && range.contains(&(n as u64)) => n as u64,
        Some(n) => {
            errors.push(ConfigError::new(
                field,
                format!("{n} is outside {}..={}", range.start(), range.end()),
            ));
            default
        }
    }
}

/// Lower-cases a host or SNI pattern and checks its shape: `name.example`
/// or `*.name.example`. Returns the normalised pattern.
pub fn normalize_host_pattern(s: &str) -> Result<String, String> {
    let h = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Err("empty host name".into());
    }
    let rest = h.strip_prefix("*.").unwrap_or(&h);
    if rest.is_empty() || rest.contains('*') {
        return Err(format!(
            "`{s}`: a wildcard must be the whole first label, as in `*.example.com`"
        ));
    }
    for label in rest.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`{s}` is not a valid host name"));
        }
    }
    Ok(h)
}

/// Validates every `[[l7]]` table (loading each certificate once) and the
/// rules across listeners (one listen address and one name per listener).
/// Errors are pushed; the specs of the valid listeners are returned.
pub fn compile_all(cfg: &[L7Config], errors: &mut Vec<ConfigError>) -> Vec<ListenerSpec> {
    let mut specs = Vec::new();
    let mut seen = HashMap::new();
    let mut names = HashMap::new();
    for (i, c) in cfg.iter().enumerate() {
        let path = format!("l7[{i}]");
        match c.compile(&path) {
            Ok(s) => {
                if s.listen.port() != 0 {
                    if let Some(prev) = seen.insert(s.listen, i) {
                        errors.push(ConfigError::new(
                            format!("{path}.listen"),
                            format!("{} is used by l7[{prev}]", s.listen),
                        ));
                    }
                }
                if let Some(prev) = names.insert(s.name.clone(), i) {
                    errors.push(ConfigError::new(
                        format!("{path}.name"),
                        format!("`{}` is used by l7[{prev}]", s.name),
                    ));
                }
                specs.push(s);
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    specs
}

impl L7Config {
    /// Validates this listener and loads its certificates.
    pub fn compile(&self, path: &str) -> Result<ListenerSpec, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let f = |name: &str| format!("{path}.{name}");

        let name = match &self.name {
            Some(n)
                if n.trim().is_empty()
                    || n.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                errors.push(ConfigError::new(
                    f("name"),
                    format!("`{n}` must be non-empty without spaces"),
                ));
                path.to_string()
            }
            Some(n) => n.clone(),
            None => path.to_string(),
        };

        // Port 0 binds a free port (tests); `L7Server::local_addrs` tells which.
        let listen = self.listen.parse::<SocketAddr>().ok();
        if listen.is_none() {
            errors.push(ConfigError::new(
                f("listen"),
                format!(
                    "`{}` is not address:port (e.g. 127.0.0.1:443 or [2001:db8::1]:443)",
                    self.listen
                ),
            ));
        }

        let tls_on = self.tls.unwrap_or(!self.cert.is_empty());
        let redirect_on = self.redirect_to_https.unwrap_or(false);
        if tls_on && self.cert.is_empty() {
            errors.push(ConfigError::new(
                f("cert"),
                "tls = true needs at least one [[l7.cert]]",
            ));
        }
        if !tls_on && !self.cert.is_empty() {
            errors.push(ConfigError::new(
                f("cert"),
                "certificates are given but tls = false",
            ));
        }
        if tls_on && redirect_on {
            errors.push(ConfigError::new(
                f("redirect_to_https"),
                "only a plain (tls = false) listener can redirect to HTTPS",
            ));
        }
        let unknown_sni = match self.unknown_sni.as_deref() {
            None | Some("reject") => UnknownSni::Reject,
            Some("default") => UnknownSni::Default,
            Some(other) => {
                errors.push(ConfigError::new(
                    f("unknown_sni"),
                    format!("`{other}` is not one of: reject, default"),
                ));
                UnknownSni::Reject
            }
        };

        let mut certs = Vec::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut defaults = 0;
        for (i, c) in self.cert.iter().enumerate() {
            let cp = format!("{path}.cert[{i}]");
            if c.default {
                defaults += 1;
            }
            match super::tls::load_cert(&cp, c) {
                Ok(loaded) => {
                    for n in &loaded.names {
                        if let Some(prev) = seen_names.insert(n.clone(), i) {
                            errors.push(ConfigError::new(
                                format!("{cp}.names"),
                                format!("`{n}` is also served by cert[{prev}]"),
                            ));
                        }
                    }
                    certs.push(loaded);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if defaults > 1 {
            errors.push(ConfigError::new(
                f("cert"),
                "more than one certificate has default = true",
            ));
        }

        let redirect_status = int_in(
            f("redirect_status"),
            self.redirect_status,
            308,
            301..=308,
            &mut errors,
        ) as u16;
        if ![301, 302, 307, 308].contains(&redirect_status) {
            errors.push(ConfigError::new(
                f("redirect_status"),
                format!("{redirect_status} is not one of 301, 302, 307, 308"),
            ));
        }
        let https_port = int_in(
            f("https_port"),
            self.https_port,
            443,
            1..=65535,
            &mut errors,
        ) as u16;

        let limits = Limits {
            max_connections: int_in(
                f("max_connections"),
                self.max_connections,
                DEFAULT_MAX_CONNECTIONS as u64,
                1..=10_000_000,
                &mut errors,
            ) as usize,
            max_header_size: match self.max_header_size.as_ref().map(Size::parse) {
                None => DEFAULT_MAX_HEADER_SIZE,
                Some(Ok(n)) if (1024..=1024 * 1024).contains(&n) => n as usize,
                Some(Ok(n)) => {
                    errors.push(ConfigError::new(
                        f("max_header_size"),
                        format!("{n} is outside 1024..=1048576"),
                    ));
                    DEFAULT_MAX_HEADER_SIZE
                }
                Some(Err(e)) => {
                    errors.push(ConfigError::new(f("max_header_size"), e));
                    DEFAULT_MAX_HEADER_SIZE
                }
            },
            max_body_size: match self.max_body_size.as_ref().map(Size::parse) {
                None => DEFAULT_MAX_BODY_SIZE,
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    errors.push(ConfigError::new(f("max_body_size"), e));
                    DEFAULT_MAX_BODY_SIZE
                }
            },
            max_h2_streams: int_in(
                f("max_h2_streams"),
                self.max_h2_streams,
                DEFAULT_MAX_H2_STREAMS as u64,
                1..=10_000,
                &mut errors,
            ) as u32,
        };

        let t = self.timeouts.clone().unwrap_or_default();
        let timeouts = Timeouts {
            connect: dur(
                f("timeouts.connect"),
                t.connect.as_deref(),
                Duration::from_secs(3),
                &mut errors,
            ),
            header: dur(
                f("timeouts.header"),
                t.header.as_deref(),
                Duration::from_secs(10),
                &mut errors,
            ),
            upstream_response: dur(
                f("timeouts.upstream_response"),
                t.upstream_response.as_deref(),
                Duration::from_mins(1),
                &mut errors,
            ),
            idle: dur(
                f("timeouts.idle"),
                t.idle.as_deref(),
                Duration::from_mins(1),
                &mut errors,
            ),
            shutdown: dur(
                f("timeouts.shutdown"),
                t.shutdown.as_deref(),
                Duration::from_secs(10),
                &mut errors,
            ),
        };

        let access_log = match self.access_log.as_deref() {
            None | Some("stdout") => AccessLogTarget::Stdout,
            Some("stderr") => AccessLogTarget::Stderr,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                errors.push(ConfigError::new(
                    f("access_log"),
                    "empty; use stdout, stderr, off or a file path",
                ));
                AccessLogTarget::Off
            }
            Some(p) => {
                let pb = PathBuf::from(p);
                match pb.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                        errors.push(ConfigError::new(
                            f("access_log"),
                            format!("directory {} does not exist", dir.display()),
                        ));
                    }
                    _ => {}
                }
                AccessLogTarget::File(pb)
            }
        };

        let mut forwarded = ForwardedSet::default();
        match &self.forwarded_headers {
            None => {
                forwarded.x_forwarded_for = true;
                forwarded.x_forwarded_proto = true;
                forwarded.x_forwarded_host = true;
            }
            Some(list) => {
                for (i, h) in list.iter().enumerate() {
                    match h.to_ascii_lowercase().as_str() {
                        "x-forwarded-for" => forwarded.x_forwarded_for = true,
                        "x-forwarded-proto" => forwarded.x_forwarded_proto = true,
                        "x-forwarded-host" => forwarded.x_forwarded_host = true,
                        "forwarded" => forwarded.forwarded = true,
                        other => errors.push(ConfigError::new(
                            format!("{path}.forwarded_headers[{i}]"),
                            format!(
                                "`{other}` is not one of: x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded"
                            ),
                        )),
                    }
                }
            }
        }

        let proxy_protocol = compile_proxy_protocol(path, self, &mut errors);

        // Upstreams.
        let mut upstreams = Vec::new();
        let mut upstream_index: HashMap<String, usize> = HashMap::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let up = format!("{path}.upstream[{i}]");
            if u.name.is_empty() {
                errors.push(ConfigError::new(format!("{up}.name"), "empty name"));
            } else if upstream_index.contains_key(&u.name) {
                errors.push(ConfigError::new(
                    format!("{up}.name"),
                    format!("upstream `{}` is defined twice", u.name),
                ));
            }
            if let Some(spec) = compile_upstream(&up, u, &mut errors) {
                upstream_index.insert(u.name.clone(), upstreams.len());
                upstreams.push(spec);
            } else {
                // Keep the name known so routes naming it do not add noise.
                upstream_index.entry(u.name.clone()).or_insert(usize::MAX);
            }
        }

        // Routes.
        let mut routes = RouteTable::default();
        let mut seen_routes = HashSet::new();
        if !redirect_on && self.route.is_empty() {
            errors.push(ConfigError::new(
                f("route"),
                "a listener needs at least one [[l7.route]] (or redirect_to_https = true)",
            ));
        }
        if redirect_on && !self.route.is_empty() {
            errors.push(ConfigError::new(
                f("route"),
                "a redirect_to_https listener answers every request itself; remove its routes",
            ));
        }
        for (i, r) in self.route.iter().enumerate() {
            let rp = format!("{path}.route[{i}]");
            let host = match &r.host {
                None => None,
                Some(h) => match normalize_host_pattern(h) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        errors.push(ConfigError::new(format!("{rp}.host"), e));
                        continue;
                    }
                },
            };
            let prefix = r.path_prefix.clone().unwrap_or_else(|| "/".to_string());
            if !prefix.starts_with('/') {
                errors.push(ConfigError::new(
                    format!("{rp}.path_prefix"),
                    format!("`{prefix}` must start with /"),
                ));
                continue;
            }
            let Some(&ui) = upstream_index.get(&r.upstream) else {
                errors.push(ConfigError::new(
                    format!("{rp}.upstream"),
                    format!("no [[l7.upstream]] is named `{}`", r.upstream),
                ));
                continue;
            };
            if !seen_routes.insert((host.clone(), prefix.clone())) {
                errors.push(ConfigError::new(
                    rp.clone(),
                    format!(
                        "host {} with path_prefix {prefix} is routed twice",
                        host.as_deref().unwrap_or("(any)")
                    ),
                ));
                continue;
            }
            if ui != usize::MAX {
                routes.add(host.as_deref(), &prefix, ui);
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ListenerSpec {
            name,
            listen: listen.expect("checked"),
            tls: tls_on.then(|| TlsSpec {
                certs,
                unknown_sni,
                http2: self.http2.unwrap_or(true),
            }),
            redirect: redirect_on.then_some(RedirectSpec {
                status: redirect_status,
                https_port,
            }),
            limits,
            timeouts,
            access_log,
            forwarded,
            proxy_protocol,
            routes: Arc::new(routes),
            upstreams,
        })
    }
}

/// `proxy_protocol` and `proxy_trusted`.
fn compile_proxy_protocol(
    path: &str,
    c: &L7Config,
    errors: &mut Vec<ConfigError>,
) -> Option<ProxyProtocolSpec> {
    let on = c.proxy_protocol.unwrap_or(false);
    let Some(list) = &c.proxy_trusted else {
        return on.then(ProxyProtocolSpec::default);
    };
    if !on {
        errors.push(ConfigError::new(
            format!("{path}.proxy_trusted"),
            "only used with proxy_protocol = true",
        ));
        return None;
    }
    if list.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.proxy_trusted"),
            "empty: no peer could connect; list the L4 layer's addresses, or leave the key out to trust every peer",
        ));
        return None;
    }
    let mut trusted = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let parsed = if s.contains('/') {
            Prefix::parse(s.trim())
        } else {
            s.trim()
                .parse::<std::net::IpAddr>()
                .map(|addr| Prefix {
                    addr,
                    len: if addr.is_ipv4() { 32 } else { 128 },
                })
                .map_err(|_| {
                    format!("`{s}` is not a prefix or an address (write e.g. 198.18.0.0/15)")
                })
        };
        match parsed {
            Ok(p) => {
                // Peers are matched in canonical form: a v4-mapped prefix
                // would never match.
                if let std::net::IpAddr::V6(a) = p.addr {
                    if a.to_ipv4_mapped().is_some() && p.len >= 96 {
                        errors.push(ConfigError::new(
                            format!("{path}.proxy_trusted[{i}]"),
                            format!("`{s}` is IPv4-mapped; write the IPv4 prefix"),
                        ));
                        continue;
                    }
                }
                trusted.push(p);
            }
            Err(e) => errors.push(ConfigError::new(format!("{path}.proxy_trusted[{i}]"), e)),
        }
    }
    Some(ProxyProtocolSpec { trusted })
}

fn compile_upstream(
    up: &str,
    u: &UpstreamConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamSpec> {
    let before = errors.len();
    let f = |name: &str| format!("{up}.{name}");
    if u.servers.is_empty() {
        errors.push(ConfigError::new(
            f("servers"),
            "an upstream needs at least one server",
        ));
    }
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() => {
                errors.push(ConfigError::new(
                    format!("{up}.servers[{i}]"),
                    format!("{a} cannot be connected to"),
                ));
            }
            Ok(a) if servers.contains(&a) => {
                errors.push(ConfigError::new(
                    format!("{up}.servers[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
            Ok(a) => servers.push(a),
            Err(_) => errors.push(ConfigError::new(
                format!("{up}.servers[{i}]"),
                format!("`{s}` is not address:port"),
            )),
        }
    }
    let policy = match u.policy.as_deref() {
        None | Some("round_robin") => Policy::RoundRobin,
        Some("least_outstanding") => Policy::LeastOutstanding,
        Some("consistent_hash") => Policy::ConsistentHash,
        Some(other) => {
            errors.push(ConfigError::new(
                f("policy"),
                format!("`{other}` is not one of: round_robin, least_outstanding, consistent_hash"),
            ));
            Policy::RoundRobin
        }
    };
    let hash_key = match (&u.hash_key, policy) {
        (None, Policy::ConsistentHash) => {
            errors.push(ConfigError::new(
                f("hash_key"),
                "consistent_hash needs hash_key = \"header:NAME\" or \"cookie:NAME\"",
            ));
            None
        }
        (None, _) => None,
        (Some(_), p) if p != Policy::ConsistentHash => {
            errors.push(ConfigError::new(
                f("hash_key"),
                "only used with policy = \"consistent_hash\"",
            ));
            None
        }
        (Some(k), _) => {
            if let Some(h) = k.strip_prefix("header:") {
                if let Ok(name) = http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    Some(HashKey::Header(name))
                } else {
                    errors.push(ConfigError::new(
                        f("hash_key"),
                        format!("`{h}` is not a header name"),
                    ));
                    None
                }
            } else if let Some(c) = k.strip_prefix("cookie:") {
                let c = c.trim();
                if c.is_empty() || c.contains([';', '=', ' ', ',']) {
                    errors.push(ConfigError::new(
                        f("hash_key"),
                        format!("`{c}` is not a cookie name"),
                    ));
                    None
                } else {
                    Some(HashKey::Cookie(c.to_string()))
                }
            } else {
                errors.push(ConfigError::new(
                    f("hash_key"),
                    format!("`{k}`: use \"header:NAME\" or \"cookie:NAME\""),
                ));
                None
            }
        }
    };
    let host_header = match u.host_header.as_deref() {
        None | Some("preserve") => HostHeader::Preserve,
        Some("server") => HostHeader::Server,
        Some(h) => match normalize_host_pattern(h) {
            Ok(n) if !n.starts_with('*') => {
                HostHeader::Fixed(http::HeaderValue::from_str(&n).expect("checked"))
            }
            _ => {
                errors.push(ConfigError::new(
                    f("host_header"),
                    format!("`{h}` is not preserve, server or a host name"),
                ));
                HostHeader::Preserve
            }
        },
    };
    let max_idle_per_server = int_in(
        f("max_idle_per_server"),
        u.max_idle_per_server,
        32,
        0..=100_000,
        errors,
    ) as usize;
    let idle_timeout = dur(
        f("idle_timeout"),
        u.idle_timeout.as_deref(),
        Duration::from_mins(1),
        errors,
    );
    let retries = int_in(f("retries"), u.retries, 2, 0..=16, errors) as u32;
    let eject_after = int_in(f("eject_after"), u.eject_after, 3, 0..=1000, errors) as u32;
    let eject_for = dur(
        f("eject_for"),
        u.eject_for.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    let health = u.health.as_ref().and_then(|h| {
        let mut h = h.clone();
        h.kind.get_or_insert_with(|| "http".to_string());
        h.to_check(&f("health"), errors)
    });
    if errors.len() != before {
        return None;
    }
    Some(UpstreamSpec {
        name: u.name.clone(),
        servers,
        policy,
        hash_key,
        host_header,
        max_idle_per_server,
        idle_timeout,
        retries,
        eject_after,
        eject_for,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> L7Config {
        toml::from_str(text).expect("toml")
    }

    fn errors_of(text: &str) -> Vec<String> {
        match parse(text).compile("l7[0]") {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    const BASE: &str = r#"
listen = "127.0.0.1:8080"
[[route]]
upstream = "app"
[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]
"#;

    #[test]
    fn minimal_plain_listener_compiles() {
        let spec = parse(BASE).compile("l7[0]").unwrap();
        assert!(spec.tls.is_none());
        assert_eq!(spec.name, "l7[0]");
        assert_eq!(spec.limits.max_header_size, DEFAULT_MAX_HEADER_SIZE);
        assert_eq!(spec.upstreams[0].policy, Policy::RoundRobin);
        assert!(spec.forwarded.x_forwarded_for && !spec.forwarded.forwarded);
    }

    #[test]
    fn errors_name_fields() {
        let text = r#"
listen = "127.0.0.1"
max_body_size = "12q"
timeouts = { connect = "soon" }
[[route]]
upstream = "nope"
path_prefix = "api"
[[upstream]]
name = "app"
servers = ["127.0.0.1:0", "x"]
policy = "random"
"#;
        let errs = errors_of(text);
        let want = [
            "l7[0].listen:",
            "l7[0].max_body_size:",
            "l7[0].timeouts.connect:",
            "l7[0].upstream[0].servers[0]:",
            "l7[0].upstream[0].servers[1]:",
            "l7[0].upstream[0].policy:",
            "l7[0].route[0].path_prefix:",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w} in {errs:#?}"
            );
        }
    }

    #[test]
    fn unknown_upstream_in_route() {
        let errs = errors_of(&BASE.replace("upstream = \"app\"", "upstream = \"web\""));
        assert_eq!(
            errs,
            vec!["l7[0].route[0].upstream: no [[l7.upstream]] is named `web`"]
        );
    }

    #[test]
    fn consistent_hash_needs_key() {
        let errs = errors_of(&format!("{BASE}policy = \"consistent_hash\"\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("l7[0].upstream[0].hash_key:"));
        let ok = parse(&format!(
            "{BASE}policy = \"consistent_hash\"\nhash_key = \"cookie:sid\"\n"
        ))
        .compile("l7[0]")
        .unwrap();
        assert_eq!(
            ok.upstreams[0].hash_key,
            Some(HashKey::Cookie("sid".into()))
        );
    }

    #[test]
    fn tls_needs_cert_and_missing_file_is_named() {
        let errs = errors_of(&format!("tls = true\n{BASE}"));
        assert!(errs[0].starts_with("l7[0].cert:"), "{errs:?}");
        let text = format!(
            "{BASE}\n[[cert]]\ncert = \"/nonexistent/a.pem\"\nkey = \"/nonexistent/a.key\"\n"
        );
        let errs = errors_of(&text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("l7[0].cert[0].cert: cannot read /nonexistent/a.pem")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("l7[0].cert[0].key: cannot read /nonexistent/a.key")),
            "{errs:?}"
        );
    }

    #[test]
    fn proxy_protocol_and_trusted_prefixes() {
        let spec = parse(BASE).compile("l7[0]").unwrap();
        assert_eq!(spec.proxy_protocol, None);
        let spec = parse(&format!("proxy_protocol = true\n{BASE}"))
            .compile("l7[0]")
            .unwrap();
        let pp = spec.proxy_protocol.expect("on");
        assert!(pp.trusted.is_empty());
        assert!(pp.trusts("127.0.0.1".parse().unwrap()));
        let spec = parse(&format!(
            "proxy_protocol = true\nproxy_trusted = [\"198.18.0.0/15\", \"2001:db8::1\"]\n{BASE}"
        ))
        .compile("l7[0]")
        .unwrap();
        let pp = spec.proxy_protocol.expect("on");
        assert_eq!(pp.trusted.len(), 2);
        assert_eq!(pp.trusted[1].len, 128);
        assert!(pp.trusts("198.19.255.1".parse().unwrap()));
        assert!(pp.trusts("::ffff:198.18.0.9".parse().unwrap()));
        assert!(pp.trusts("2001:db8::1".parse().unwrap()));
        assert!(!pp.trusts("2001:db8::2".parse().unwrap()));
        assert!(!pp.trusts("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn proxy_trusted_errors_name_the_entry() {
        let errs = errors_of(&format!(
            "proxy_protocol = true\nproxy_trusted = [\"198.18.0.0/15\", \"198.18.0.1/15\", \"nope\", \"::ffff:198.18.0.0/112\"]\n{BASE}"
        ));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("l7[0].proxy_trusted[1]: `198.18.0.1/15` has host bits set"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("l7[0].proxy_trusted[2]: `nope`"),
            "{errs:?}"
        );
        assert!(errs[2].starts_with("l7[0].proxy_trusted[3]:"), "{errs:?}");
        let errs = errors_of(&format!("proxy_trusted = [\"198.18.0.0/15\"]\n{BASE}"));
        assert_eq!(
            errs,
            vec!["l7[0].proxy_trusted: only used with proxy_protocol = true"]
        );
        let errs = errors_of(&format!(
            "proxy_protocol = true\nproxy_trusted = []\n{BASE}"
        ));
        assert!(
            errs[0].starts_with("l7[0].proxy_trusted: empty"),
            "{errs:?}"
        );
        // Unknown keys are still refused.
        assert!(toml::from_str::<L7Config>(&format!("proxy_protocl = true\n{BASE}")).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::Text("16k".into()).parse(), Ok(16384));
        assert_eq!(Size::Text("10M".into()).parse(), Ok(10 << 20));
        assert_eq!(Size::Bytes(5).parse(), Ok(5));
        assert!(Size::Bytes(-1).parse().is_err());
        assert!(Size::Text("lots".into()).parse().is_err());
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            normalize_host_pattern("WWW.Example.com."),
            Ok("www.example.com".into())
        );
        assert_eq!(
            normalize_host_pattern("*.example.com"),
            Ok("*.example.com".into())
        );
        assert!(normalize_host_pattern("a.*.com").is_err());
        assert!(normalize_host_pattern("*").is_err());
        assert!(normalize_host_pattern("a b").is_err());
    }
}
