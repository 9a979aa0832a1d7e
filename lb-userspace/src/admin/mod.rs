//! Operating a running `lb`: the admin API (server), its client (the `lb`
//! CLI verbs), the `[api]` config, the live dashboard and the Prometheus
//! metrics.
pub mod api;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod metrics;
pub mod views;
