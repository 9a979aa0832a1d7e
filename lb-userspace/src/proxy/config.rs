use serde::Deserialize;

use crate::config::ConfigError;

/// One `[[l7]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct L7Config {}

impl L7Config {
    /// Checks this listener; `path` is the field prefix, e.g. `l7[0]`.
    pub fn validate(&self, _path: &str, _errors: &mut Vec<ConfigError>) {}
}
