//! Health checks shared by the L4 VIPs, the L7 upstream pools and DNS GSLB pools.
//!
//! # Using it
//!
//! 1. Put a [`HealthConfig`] in your config struct (it is a serde table with
//!    `deny_unknown_fields`), e.g. `health: Option<HealthConfig>`, and call
//!    [`HealthConfig::validate`] from your `validate` with the field path
//!    (`"l7[0].upstream[1].health"`): every error names the exact key.
//! 2. Turn it into a [`HealthCheck`] with [`HealthConfig::to_check`] (returns
//!    `None` and pushes errors when invalid) or use [`HealthCheck::default`]
//!    (TCP connect, 2s interval, 1s timeout, rise 2, fall 3).
//! 3. Create one [`Monitor`] (inside a tokio runtime) and [`Monitor::add`] a
//!    [`Target`] per address: `Target::new("198.18.0.10:80".parse()?, check)`.
//!    The check's `port`, when set, replaces the target's port.
//! 4. Ask [`Monitor::is_up`] / [`Monitor::status`] on the hot path (a mutex
//!    and a watch read, no I/O), or react to changes with
//!    [`Monitor::subscribe`] (a broadcast of [`Change`]: up ↔ down only) or
//!    [`Monitor::watch`] (every probe of one target).
//! 5. [`Monitor::remove`] when the target leaves the config. Equal targets
//!    (same address and check) share one prober and are reference-counted,
//!    so on reload add the new set first, then remove the old ids: unchanged
//!    targets keep their state.
//!
//! ```no_run
//! # async fn f() {
//! use lb_userspace::health::{HealthCheck, Monitor, Target};
//! let monitor = Monitor::new();
//! let id = monitor.add(Target::new("198.18.0.10:80".parse().unwrap(), HealthCheck::default()));
//! let mut changes = monitor.subscribe();
//! while let Ok(c) = changes.recv().await {
//!     println!("{} is {} ({})", c.target, c.health, c.reason);
//! }
//! # let _ = id; }
//! ```
//!
//! # Semantics
//!
//! * A target starts **Up** (as if it had just risen), so a new config serves
//!   at once; it goes Down after `fall` consecutive failed probes and comes
//!   back after `rise` consecutive passes ([`RiseFall`]).
//! * Probes run every `interval`, ±10% jitter; the first one within the first
//!   fifth of an interval. A probe never lasts longer than `timeout`.
//! * Kinds: `tcp` (connect), `http` (HTTP/1.1 `GET path`, status within
//!   `expect`), `udp-dns` (one query, any well-formed answer except
//!   SERVFAIL), `none` (never probed, always up).
//! * A target with a [`Tunnel`] ([`Target::through`]; the L4 role gives one
//!   to every real of a DSR VIP) is probed through it: the probe is
//!   addressed to the VIP and encapsulated as the data plane would, so a
//!   real without the VIP or without decap fails ([`tunnel`]).
//! * A state change is logged once (warn for down, info for up) with the
//!   reason; single probes are only logged at trace level.
//!
//! Operator documentation: `docs/health.md`.

pub mod config;
pub mod monitor;
pub mod probe;
pub mod state;
pub mod tunnel;

pub use config::{CheckKind, HealthCheck, HealthConfig, StatusRanges};
pub use monitor::{Change, Monitor, Status, Target, TargetId};
pub use probe::{probe, probe_target, ProbeError, ProbeResult};
pub use state::{Health, RiseFall};
pub use tunnel::Tunnel;
