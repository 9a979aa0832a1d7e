//! `lb`: the control plane and the user-space servers of the load balancer.
//!
//! One folder per role or concern (README, "Architecture"):
//!
//! - [`config`]: the whole file, parsed and validated once into typed
//!   sections; [`validate`] holds the primitives every section uses.
//! - [`ident`]: the identity of a VIP and of a real, in every form.
//! - [`l4`]: the XDP balancer's control side (VIP config, Maglev,
//!   reconciler, data plane maps, neighbours).
//! - [`health`]: probes and the rise/fall state machine, shared by L4, L7
//!   and DNS.
//! - [`proxy`]: the L7 TLS-terminating proxy. [`dns`]: the DNS server.
//! - [`decap`]: a DSR real's decap program (`[decap]`).
//! - [`admin`]: admin API, its client, metrics.
//! - [`daemon`]: starts the roles a config has and runs them.
//! - `testbed`: namespaces, veth pairs, packets, the XDP test object, an
//!   `lb` launcher and a config builder, for the tests, the benchmarks and
//!   the demo (`demo`). Behind the `testbed` feature (on by default through
//!   `demo`); the production binary is built without it
//!   (`--no-default-features`).
//!
//! Operator docs: `docs/operations.md`.
pub mod admin;
pub mod config;
pub mod daemon;
pub mod decap;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dns;
pub mod health;
pub mod ident;
pub mod l4;
pub mod proxy;
// The library's own unit tests use the testbed whatever the features.
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
pub mod validate;
