//! Authoritative DNS + GSLB (the `[dns]` role).
pub mod config;

use anyhow::Result;

/// A running `[dns]` role.
pub struct DnsServer {}

impl DnsServer {
    /// Loads zones, binds UDP/TCP listeners, starts GSLB health checks.
    pub async fn start(_cfg: &config::DnsConfig) -> Result<DnsServer> {
        anyhow::bail!("the DNS role is not available in this build")
    }

    /// Reloads zones (serial check) and GSLB pools from an already validated config.
    pub async fn reload(&self, _cfg: &config::DnsConfig) -> Result<()> {
        Ok(())
    }

    pub async fn shutdown(self) {}
}
