//! L7 TLS-terminating reverse proxy (the `[[l7]]` role).
pub mod config;

use anyhow::Result;

/// A running set of `[[l7]]` listeners.
pub struct L7Server {}

impl L7Server {
    /// Binds every listener and starts serving. Must be called inside a tokio runtime.
    pub async fn start(_cfg: &[config::L7Config]) -> Result<L7Server> {
        anyhow::bail!("the L7 proxy role is not available in this build")
    }

    /// Applies a new (already validated) configuration: certificates, routes, pools.
    pub async fn reload(&self, _cfg: &[config::L7Config]) -> Result<()> {
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (bounded), returns.
    pub async fn shutdown(self) {}
}

/// `lb cert ...`: writes a test PKI.
#[derive(clap::Args, Debug)]
pub struct CertArgs {}

pub fn cert_main(_args: CertArgs) -> Result<()> {
    anyhow::bail!("lb cert is not available in this build")
}
