use serde::Deserialize;

use crate::config::ConfigError;

/// The `[dns]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {}

impl DnsConfig {
    /// Checks the table; `path` is the field prefix, `dns`.
    pub fn validate(&self, _path: &str, _errors: &mut Vec<ConfigError>) {}
}
