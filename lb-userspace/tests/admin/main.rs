//! Control-plane tests: the admin API and CLI against a running `lb`
//! (status, drains, health, reloads, restarts with pinned state).

/// The `lb` binary under test.
const LB: &str = env!("CARGO_BIN_EXE_lb");

mod cli_docs;
mod ctl_api;
mod ctl_format;
mod ctl_health;
mod ctl_live;
mod ctl_restart;
mod dashboard;
mod deploy_metrics;
mod deploy_package;
