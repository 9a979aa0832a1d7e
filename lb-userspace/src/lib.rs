//! `lb`: the control plane and the user-space servers of the load balancer.
//!
//! Modules by concern (see `DESIGN.md`): `config` (TOML + validation),
//! `maglev` (pure ring builder), `dataplane` (aya load/attach, map sync),
//! `health` (probers + rise/fall state machine), `control` (health-driven
//! rings, drains, live changes), `api` (admin API), `cli` (its client),
//! `metrics` (Prometheus), `proxy` (L7), `dns`, `testbed` (netns/veth
//! topologies for tests and the demo). Operator docs: `docs/operations.md`.
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod dns;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod packet;
pub mod proxy;
pub mod testbed;
pub mod xdp_test;
