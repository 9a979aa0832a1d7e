//! Fuzzers for lb. Every fuzzer is deterministic for a given seed, so a
//! failure printed with its seed replays exactly.
//!
//! - [`xdp`]: generated and mutated frames through the XDP program
//!   (`BPF_PROG_TEST_RUN`), each checked against the data plane's invariants.
//! - [`engine`]: the in-process mutation engine of the user-space fuzzers,
//!   which drive the real code paths of `lb-userspace`: [`dns`] (the query
//!   path), [`zone`] (zone files), [`http`] (the proxy's request head) and
//!   [`config`] (the config loader).

pub mod rng;
pub mod xdp;

pub mod config;
pub mod dns;
pub mod engine;
pub mod http;
pub mod zone;

/// The user-space fuzz targets, by name.
pub const TARGETS: &[&engine::Target] =
    &[&dns::TARGET, &zone::TARGET, &http::TARGET, &config::TARGET];

pub fn target(name: &str) -> Option<&'static engine::Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}
