//! L7 tests: the TLS proxy in process (routing, limits, TLS), and the
//! end-to-end path client → VIP (XDP) → `lb` proxies → apps.

mod e2e_l7_xdp;
mod l7_limits;
mod l7_proxy;
mod l7_proxy_protocol;
mod l7_support;
mod l7_tls;
