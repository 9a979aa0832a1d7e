//! `cargo xtask bench <what>`: measurements, each side by side with a peer or
//! floor measured in the same run; results as Markdown + JSON in bench/results.

mod dns;
mod fwd;
mod l7;
mod maglev;
mod xdp;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Forwarding rate: this data plane in each mode (NAT, DSR over IPIP and GUE,
    /// FullNAT) vs nftables DNAT vs a redirect-only floor.
    Fwd(fwd::FwdBenchArgs),
    /// Per-packet cost of the XDP program by class, next to a floor program.
    Xdp(xdp::XdpBenchArgs),
    /// Maglev ring build time for 10, 100 and 1000 reals.
    Maglev(maglev::MaglevBenchArgs),
    /// L7 proxy vs nginx: wrk (HTTP/1.1 over TLS) and h2load (h2).
    L7(l7::L7BenchArgs),
    /// DNS server vs NSD and Knot with dnsperf.
    Dns(dns::DnsBenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().what {
        What::Xdp(a) => xdp::run(&a),
        What::Fwd(a) => fwd::run(&a),
        What::Maglev(a) => maglev::run(&a),
        What::L7(a) => l7::run(&a),
        What::Dns(a) => dns::run(&a),
    }
}
