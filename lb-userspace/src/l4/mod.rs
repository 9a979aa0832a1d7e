//! The L4 role: the `[[vip]]` config, the Maglev ring builder, the
//! reconciler that turns wanted VIPs and health into rings, and the XDP
//! data plane those rings are written to.
//!
//! Data flows one way: [`config`] (validated VIPs) → [`control`]
//! (reconciler: health, drains, live changes) → [`dataplane`] (maps).
//! [`maglev`] is pure; [`neighbours`] keeps the reals' next hops resolved.
pub mod config;
pub mod control;
pub mod dataplane;
pub mod maglev;
pub mod neighbours;
