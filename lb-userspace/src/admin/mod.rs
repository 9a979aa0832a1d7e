//! Operating a running `lb`: the admin API (server), its client (the `lb`
//! CLI verbs), the `[api]` config and the Prometheus metrics.
pub mod api;
pub mod client;
pub mod config;
pub mod metrics;
pub mod views;
