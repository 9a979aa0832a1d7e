//! The `[api]` table.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::validate::ConfigError;

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
    /// The dashboard's address (`http`); off when `None`.
    pub http: Option<SocketAddr>,
}

impl ApiConfig {
    /// The token the dashboard requires: on a non-loopback address only.
    pub fn http_token(&self) -> Option<String> {
        self.http
            .filter(|a| !a.ip().is_loopback())
            .and(self.token.clone())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: Some(PathBuf::from(DEFAULT_API_SOCKET)),
            socket_configured: false,
            socket_mode: 0o600,
            listen: None,
            token: None,
            http: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    socket: Option<String>,
    socket_mode: Option<String>,
    listen: Option<String>,
    token_file: Option<String>,
    http: Option<String>,
}

pub fn validate_api(raw: Option<&RawApi>, errors: &mut Vec<ConfigError>) -> ApiConfig {
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
    if let Some(h) = raw.http.as_deref().filter(|h| !h.is_empty()) {
        // A bare port means loopback.
        let parsed = match h.parse::<u16>() {
            Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => h.parse::<SocketAddr>(),
        };
        match parsed {
            Ok(a) => api.http = Some(a),
            Err(_) => errors.push(ConfigError::new(
                "api.http",
                format!("`{h}` is not an address:port or a port (e.g. \"127.0.0.1:9180\")"),
            )),
        }
    }
    let listen = raw.listen.as_deref().filter(|l| !l.is_empty());
    if let Some(l) = listen {
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
    }
    let open_http = api.http.filter(|a| !a.ip().is_loopback());
    let needs_token = listen.is_some() || open_http.is_some();
    match (raw.token_file.as_deref(), needs_token) {
        (None, true) => errors.push(ConfigError::new(
            "api.token_file",
            if listen.is_some() {
                "required with api.listen: the TCP listener needs a bearer token".to_string()
            } else {
                format!(
                    "required with api.http on {}, which is not a loopback address: the dashboard needs a token there",
                    open_http.map(|a| a.ip().to_string()).unwrap_or_default()
                )
            },
        )),
        (Some(f), true) => match std::fs::read_to_string(f) {
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
        (Some(_), false) => errors.push(ConfigError::new(
            "api.token_file",
            "only used with api.listen or a non-loopback api.http (the Unix socket is protected by its file mode)",
        )),
        (None, false) => {}
    }
    api
}
