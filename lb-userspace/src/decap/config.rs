//! The `[decap]` table: the role of a DSR real.

use serde::Deserialize;

use crate::{l4::config::DEFAULT_GUE_PORT, validate::ConfigError};

/// `[decap]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecap {
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// The UDP port GUE packets arrive on (the LB's `gue_port`).
    pub gue_port: Option<i64>,
}

/// `[decap]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecapConfig {
    pub interfaces: Vec<String>,
    pub gue_port: u16,
}

/// Validates `[decap]`; every problem goes to `errors`.
pub fn validate_decap(raw: &RawDecap, errors: &mut Vec<ConfigError>) -> DecapConfig {
    if raw.interfaces.is_empty() {
        errors.push(ConfigError::new(
            "decap.interfaces",
            "name at least one interface to strip tunnel packets on",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, name) in raw.interfaces.iter().enumerate() {
        let field = format!("decap.interfaces[{i}]");
        if let Err(reason) = crate::config::valid_ifname(name) {
            errors.push(ConfigError::new(field, reason));
        } else if !seen.insert(name) {
            errors.push(ConfigError::new(field, format!("`{name}` is listed twice")));
        }
    }
    let gue_port = match raw.gue_port.map(u16::try_from) {
        None => DEFAULT_GUE_PORT,
        Some(Ok(p)) if p != 0 => p,
        Some(_) => {
            errors.push(ConfigError::new(
                "decap.gue_port",
                format!("{} is not a port (1-65535)", raw.gue_port.unwrap_or(0)),
            ));
            DEFAULT_GUE_PORT
        }
    };
    DecapConfig {
        interfaces: raw.interfaces.clone(),
        gue_port,
    }
}
