//! DNS tests: the server in process (dig, GSLB, robustness, NSD as a
//! reference), and the end-to-end path client → VIP (XDP) → `lb` DNS
//! servers.

mod dns_common;
mod dns_dig;
mod dns_gslb;
mod dns_nsd;
mod dns_robustness;
mod e2e_dns_xdp;
