//! The XDP fuzzer: generated and mutated frames through the XDP program
//! (`BPF_PROG_TEST_RUN`), every result checked against the data plane's
//! invariants ([`model`]).
//!
//! The program runs in a namespace of its own with fixed MAC addresses and
//! permanent neighbours (as the fixtures do), configured with IPv4 and
//! IPv6 VIPs of several reals each, an all-ports VIP and a VIP whose real
//! has no neighbour. Frames come from [`gen`]: packets of client → VIP
//! flows (new and established), replies of the flows balanced so far,
//! traffic not for a VIP, ICMP errors quoting a flow, other ethertypes and
//! random bytes; about half are then mutated (header bytes and words,
//! truncation at any offset, link padding, stacked VLAN tags, IPv6
//! extension headers, IPv4 fragments and options, bad lengths).
//!
//! Conntrack is emptied every [`EPOCH`] frames so that it never evicts
//! (the model would then expect flows the table has forgotten).

pub mod gen;
pub mod model;
pub mod wire;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::HashMap as BpfHashMap;
use lb_common::{CtValue, FlowKey};
use lb_userspace::{
    config::Config,
    l4::dataplane::{self, Dataplane, LoadOptions},
    testbed::packet::{self, IN_MAC, OUT_MAC},
    testbed::{self, Netns},
};

use model::{Model, Net, Outcome, Port, Vip};
use wire::{TCP, UDP};

/// Frames between two flushes of conntrack.
pub const EPOCH: u64 = 65_536;

pub struct Options {
    pub packets: u64,
    pub seed: u64,
}

pub struct Violation {
    /// Index of the frame in the run (with the seed, it replays).
    pub index: u64,
    pub invariant: String,
    pub ingress: &'static str,
    pub how: Vec<String>,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "frame {}: {}", self.index, self.invariant)?;
        writeln!(f, "  made as: {}", self.how.join("; "))?;
        writeln!(
            f,
            "  in  ({}, {} bytes): {}",
            self.ingress,
            self.input.len(),
            wire::hex(&self.input)
        )?;
        write!(
            f,
            "  out ({}, {} bytes): {}",
            model::verdict_name(self.verdict),
            self.output.len(),
            wire::hex(&self.output)
        )
    }
}

pub struct Report {
    pub seed: u64,
    pub packets: u64,
    /// Frames the kernel refused to run (shorter than an Ethernet header).
    pub refused: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub violations: Vec<Violation>,
    /// Violations beyond the ones kept.
    pub more: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "xdp fuzz: seed {}, {} frames in {:.1} s, {} violations{}",
            self.seed,
            self.packets,
            self.elapsed.as_secs_f64(),
            self.violations.len() as u64 + self.more,
            if self.refused > 0 {
                format!(" ({} frames under 14 bytes not run)", self.refused)
            } else {
                String::new()
            }
        )?;
        let tally: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o:?} {n}"))
            .collect();
        write!(f, "  outcomes: {}", tally.join(", "))?;
        for v in &self.violations {
            write!(f, "\n{v}")?;
        }
        if self.more > 0 {
            write!(f, "\n… and {} more", self.more)?;
        }
        Ok(())
    }
}

/// Kept violations (the first ones); the rest are only counted.
const KEEP: usize = 20;

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 11, d))
}

fn v6(d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, d))
}

/// The fuzzer's VIPs: every class the data plane balances (NAT,
/// FullNAT, DSR over IPIP).
pub fn vips() -> Vec<Vip> {
    let vip4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
    let all4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 2));
    let noneigh4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 3));
    let vip6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1));
    let all6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2));
    let vip = |addr, port, proto, reals: Vec<(IpAddr, u16)>| Vip {
        addr,
        port,
        proto,
        reals,
        snat: Vec::new(),
        dsr: false,
    };
    let fullnat = |addr, port, proto, reals: Vec<(IpAddr, u16)>, snat: IpAddr| Vip {
        addr,
        port,
        proto,
        reals,
        snat: vec![snat],
        dsr: false,
    };
    let dsr4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 4));
    let fullnat4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 5));
    let fullnat6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 5));
    vec![
        vip(
            vip4,
            80,
            TCP,
            vec![(v4(2), 8080), (v4(3), 8080), (v4(4), 8080)],
        ),
        vip(vip4, 53, UDP, vec![(v4(2), 5353), (v4(3), 5353)]),
        vip(all4, 0, TCP, vec![(v4(2), 0), (v4(4), 0)]),
        vip(
            noneigh4,
            80,
            TCP,
            vec![(IpAddr::V4(Ipv4Addr::new(198, 18, 12, 2)), 8080)],
        ),
        vip(
            vip6,
            80,
            TCP,
            vec![(v6(2), 8080), (v6(3), 8080), (v6(4), 8080)],
        ),
        vip(vip6, 53, UDP, vec![(v6(2), 5353), (v6(3), 5353)]),
        vip(all6, 0, UDP, vec![(v6(4), 0), (v6(3), 0)]),
        fullnat(fullnat4, 80, TCP, vec![(v4(2), 8080), (v4(3), 8080)], v4(1)),
        fullnat(fullnat6, 53, UDP, vec![(v6(2), 5353), (v6(4), 5353)], v6(1)),
        Vip {
            addr: dsr4,
            port: 80,
            proto: TCP,
            reals: vec![(v4(2), 80), (v4(3), 80)],
            snat: Vec::new(),
            dsr: true,
        },
    ]
}

/// The same VIPs as `lb` configuration.
pub fn config_toml(vips: &[Vip]) -> String {
    let mut s = String::from("encap_source = [\"198.18.250.0/24\"]\n\n");
    for v in vips {
        s += &format!(
            "[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n",
            v.addr,
            v.port,
            if v.proto == TCP { "tcp" } else { "udp" }
        );
        if v.dsr {
            s += "mode = \"dsr\"\n";
        }
        if !v.snat.is_empty() {
            // No port is taken back during a run (conntrack is emptied
            // long before).
            let list: Vec<String> = v.snat.iter().map(|a| format!("\"{a}\"")).collect();
            s += &format!(
                "mode = \"fullnat\"\nsnat = [{}]\nsnat_closed_timeout = \"10m\"\nsnat_idle_timeout = \"1h\"\n",
                list.join(", ")
            );
        }
        for (a, p) in &v.reals {
            s += &format!("[[vip.real]]\naddress = \"{a}\"\nport = {p}\n");
        }
        s += "\n";
    }
    s
}

fn real_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, 0x10 + i]
}

fn client_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x00, 0x10 + i]
}

/// Clients with neighbours: 198.18.0.2–9 and 2001:db8::2–9.
fn clients() -> Vec<(IpAddr, [u8; 6])> {
    (2u8..10)
        .flat_map(|i| {
            [
                (IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)), client_mac(i)),
                (
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)),
                    client_mac(i),
                ),
            ]
        })
        .collect()
}

fn reals() -> Vec<(IpAddr, [u8; 6])> {
    (2u8..5)
        .flat_map(|i| [(v4(i), real_mac(i)), (v6(i as u16), real_mac(i))])
        .collect()
}

/// The fixture namespace plus a neighbour for every client and real.
fn fuzz_net() -> Result<Netns> {
    let ns = packet::fixture_net()?;
    for (addr, mac, dev) in clients()
        .into_iter()
        .map(|(a, m)| (a, m, "in0"))
        .chain(reals().into_iter().map(|(a, m)| (a, m, "out1")))
    {
        ns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &packet::mac(mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    Ok(ns)
}

fn empty_conntrack(dp: &mut Dataplane) -> Result<()> {
    let map = dp.ebpf().map_mut("CONNTRACK").context("CONNTRACK map")?;
    let mut ct: BpfHashMap<_, FlowKey, CtValue> = BpfHashMap::try_from(map)?;
    let keys: Vec<FlowKey> = ct.keys().filter_map(std::result::Result::ok).collect();
    for k in keys {
        let _ = ct.remove(&k);
    }
    Ok(())
}

/// Runs `opts.packets` frames from `opts.seed`.
pub fn run(opts: &Options) -> Result<Report> {
    let ns = fuzz_net().context("fuzz namespace")?;
    let path = format!("/run/netns/{}", ns.name);
    let (packets, seed) = (opts.packets, opts.seed);
    let report = std::thread::spawn(move || -> Result<Report> {
        testbed::enter(&path)?;
        let vips = vips();
        let cfg = Config::parse(&config_toml(&vips)).context("fuzz config")?;
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dp.set_encap_sources(cfg.encap_sources);
        dp.apply(&cfg.vips)?;
        let in0 = dataplane::ifindex("in0")?;
        let out1 = dataplane::ifindex("out1")?;
        dp.add_tx_port(in0)?;
        dp.add_tx_port(out1)?;
        let mut neighbours = std::collections::HashMap::new();
        for (a, m) in clients() {
            neighbours.insert(a, (m, Port::In));
        }
        for (a, m) in reals() {
            neighbours.insert(a, (m, Port::Out));
        }
        let net = Net {
            mac: [(Port::In, IN_MAC), (Port::Out, OUT_MAC)].into(),
            neighbours,
        };
        let mut model = Model::new(vips, net);
        let mut gen = gen::Gen::new(
            seed,
            clients().into_iter().map(|(a, _)| a).collect(),
            (client_mac(2), IN_MAC, OUT_MAC),
            reals(),
        );
        let mut report = Report {
            seed,
            packets: 0,
            refused: 0,
            outcomes: BTreeMap::new(),
            violations: Vec::new(),
            more: 0,
            elapsed: Duration::ZERO,
        };
        let start = Instant::now();
        for i in 0..packets {
            if i > 0 && i % EPOCH == 0 {
                empty_conntrack(&mut dp)?;
                model.forget();
            }
            let case = gen.next(&model);
            let ifindex = if case.ingress == Port::In { in0 } else { out1 };
            report.packets += 1;
            if case.frame.len() < wire::ETH_HLEN {
                // The kernel runs no XDP program on less than a header.
                report.refused += 1;
                continue;
            }
            let prog = dp.program(dataplane::PROGRAM)?;
            let (verdict, output, _) = packet::test_run(prog, ifindex, &case.frame)
                .with_context(|| format!("test run of frame {i} ({})", wire::hex(&case.frame)))?;
            match model.check(&case.frame, case.ingress, verdict, &output) {
                Ok(o) => *report.outcomes.entry(o).or_default() += 1,
                Err(invariant) => {
                    if report.violations.len() < KEEP {
                        report.violations.push(Violation {
                            index: i,
                            invariant,
                            ingress: if case.ingress == Port::In {
                                "in0"
                            } else {
                                "out1"
                            },
                            how: case.how,
                            input: case.frame,
                            verdict,
                            output,
                        });
                    } else {
                        report.more += 1;
                    }
                }
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fuzz thread panicked"))??;
    drop(ns);
    Ok(report)
}
