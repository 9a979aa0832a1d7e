//! L4 tests: the XDP object against packet fixtures, the embedded objects,
//! `lb run` in namespace topologies, conntrack, startup errors, neighbour
//! resolution. One module per former test binary.

/// The `lb` binary under test.
const LB: &str = env!("CARGO_BIN_EXE_lb");

mod l4_conntrack;
mod l4_dsr;
mod l4_dsr_health;
mod l4_errors;
mod l4_fullnat;
mod l4_icmp;
mod l4_netns;
mod l4_pmtu;
mod neighbours;
mod xdp_dsr;
mod xdp_fixtures;
mod xdp_fullnat;
mod xdp_icmp;
mod xdp_objects;
