//! GSLB: names answered from pools of addresses, filtered by health and
//! chosen by policy. Selection ([`choose`]) is pure; [`Gslb`] binds pools to
//! the shared health [`Monitor`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use ahash::RandomState;
use hickory_proto::rr::{
    rdata::{A, AAAA},
    LowerName, Name, RData, Record, RecordType,
};
use rand::Rng;

use crate::health::{HealthCheck, Monitor, Target, TargetId};

/// One address of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: IpAddr,
    pub weight: u32,
    pub region: Option<String>,
    pub check: HealthCheck,
    /// Port the health check probes (the check's `port`, or 53 for udp-dns).
    pub check_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every healthy address.
    All,
    /// `count` healthy addresses drawn at random, in proportion to weight.
    Weighted { count: usize },
    /// Healthy addresses of the client's region (all healthy ones when that
    /// region has none), at most `count` of them by weight when set.
    Closest { count: Option<usize> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No healthy address: answer every address of the pool.
    All,
    /// No healthy address: answer the healthy backup addresses (every backup
    /// address when none of them is healthy either).
    Backup,
}

/// A validated `[[dns.gslb]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: Name,
    pub ttl: u32,
    pub policy: Policy,
    pub fallback: Fallback,
    pub members: Vec<Member>,
    pub backup: Vec<Member>,
}

/// An IP prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Parses `198.18.0.0/15` or `2001:db8::/32`; host bits must be zero.
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a prefix (write e.g. 198.18.0.0/24)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("`/{l}` is not a prefix length (0-{max})")),
        };
        let p = Prefix { addr, len };
        if mask(addr, len) != addr {
            return Err(format!(
                "`{s}` has host bits set (did you mean {}/{len}?)",
                mask(addr, len)
            ));
        }
        Ok(p)
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && mask(a, self.len) == self.addr
    }
}

/// `a` with all bits after the first `len` cleared.
pub fn mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let bits = u32::from(v);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v) => {
            let bits = u128::from(v);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Prefix → region table, longest match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Regions {
    entries: Vec<(Prefix, String)>,
}

impl Regions {
    pub fn new(mut entries: Vec<(Prefix, String)>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len));
        Regions { entries }
    }

    /// Region of a client known to `known_len` bits (the ECS source prefix,
    /// or the full address). Only prefixes no longer than what is known can
    /// match. Returns the region and the matching prefix length.
    pub fn lookup(&self, addr: IpAddr, known_len: u8) -> Option<(&str, u8)> {
        self.entries
            .iter()
            .find(|(p, _)| p.len <= known_len && p.contains(addr))
            .map(|(p, r)| (r.as_str(), p.len))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Who asks: the ECS subnet when the query carried one, else the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    /// Bits of `addr` that are known (ECS source prefix, or 32/128).
    pub known_len: u8,
    pub from_ecs: bool,
}

impl Client {
    pub fn from_source(a: IpAddr) -> Self {
        let a = match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            a @ IpAddr::V4(_) => a,
        };
        Client {
            addr: a,
            known_len: if a.is_ipv4() { 32 } else { 128 },
            from_ecs: false,
        }
    }
}

/// What was chosen, and the ECS scope the answer is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub addresses: Vec<IpAddr>,
    /// Prefix length of the client address the answer depends on (0: not
    /// client-specific).
    pub scope: u8,
    pub region: Option<String>,
    /// True when no member was healthy and the fallback answered.
    pub fallback: bool,
}

/// Chooses addresses of one family. `healthy[i]` / `backup_healthy[i]` say
/// whether member / backup member i is up. Pure but for `rng`.
pub fn choose(
    spec: &PoolSpec,
    want_v4: bool,
    healthy: &[bool],
    backup_healthy: &[bool],
    regions: &Regions,
    client: &Client,
    rng: &mut impl Rng,
) -> Choice {
    let fam = |m: &Member| m.address.is_ipv4() == want_v4;
    let mut cands: Vec<&Member> = spec
        .members
        .iter()
        .zip(healthy)
        .filter(|(m, up)| fam(m) && **up)
        .map(|(m, _)| m)
        .collect();
    let mut fallback = false;
    if cands.is_empty() {
        fallback = spec.members.iter().any(fam) || spec.backup.iter().any(fam);
        cands = match spec.fallback {
            Fallback::All => spec.members.iter().filter(|m| fam(m)).collect(),
            Fallback::Backup => {
                let up: Vec<&Member> = spec
                    .backup
                    .iter()
                    .zip(backup_healthy)
                    .filter(|(m, up)| fam(m) && **up)
                    .map(|(m, _)| m)
                    .collect();
                if up.is_empty() {
                    spec.backup.iter().filter(|m| fam(m)).collect()
                } else {
                    up
                }
            }
        };
    }
    let mut scope = 0;
    let mut region = None;
    let chosen: Vec<&Member> = match spec.policy {
        Policy::All => cands,
        Policy::Weighted { count } => weighted_sample(&cands, count, rng),
        Policy::Closest { count } => {
            let found = regions.lookup(client.addr, client.known_len);
            scope = match found {
                Some((_, len)) => len,
                None => client.known_len,
            };
            let local: Vec<&Member> = match found {
                Some((r, _)) => {
                    region = Some(r.to_string());
                    cands
                        .iter()
                        .copied()
                        .filter(|m| m.region.as_deref() == Some(r))
                        .collect()
                }
                None => vec![],
            };
            let pool = if local.is_empty() { cands } else { local };
            match count {
                Some(n) => weighted_sample(&pool, n, rng),
                None => pool,
            }
        }
    };
    Choice {
        addresses: chosen.iter().map(|m| m.address).collect(),
        scope,
        region,
        fallback,
    }
}

/// Draws `n` distinct members, each draw in proportion to weight
/// (members of weight 0 only when nothing else is left).
fn weighted_sample<'a>(cands: &[&'a Member], n: usize, rng: &mut impl Rng) -> Vec<&'a Member> {
    let mut left: Vec<&Member> = cands.to_vec();
    let mut out = Vec::with_capacity(n.min(left.len()));
    while out.len() < n && !left.is_empty() {
        let total: u64 = left.iter().map(|m| m.weight as u64).sum();
        let i = if total == 0 {
            rng.random_range(0..left.len())
        } else {
            let mut x = rng.random_range(0..total);
            let mut idx = 0;
            for (j, m) in left.iter().enumerate() {
                if x < m.weight as u64 {
                    idx = j;
                    break;
                }
                x -= m.weight as u64;
            }
            idx
        };
        out.push(left.swap_remove(i));
    }
    out
}

/// One GSLB pool's members and their health (the dashboard's view).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolHealth {
    pub name: String,
    pub members: Vec<MemberHealth>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberHealth {
    pub address: IpAddr,
    pub weight: u32,
    pub region: Option<String>,
    pub backup: bool,
    pub up: bool,
}

struct Pool {
    spec: PoolSpec,
    ids: Vec<TargetId>,
    backup_ids: Vec<TargetId>,
}

/// The live GSLB table: pools bound to health checks in a [`Monitor`].
pub struct Gslb {
    pools: HashMap<LowerName, Pool, RandomState>,
    regions: Regions,
    monitor: Monitor,
}

impl Drop for Gslb {
    fn drop(&mut self) {
        for p in self.pools.values() {
            for id in p.ids.iter().chain(&p.backup_ids) {
                self.monitor.remove(*id);
            }
        }
    }
}

impl Gslb {
    /// Registers every member's check with `monitor` (equal checks of an
    /// older table are shared, so build the new table before dropping the old).
    pub fn new(specs: Vec<PoolSpec>, regions: Regions, monitor: Monitor) -> Gslb {
        let add = |m: &Member| {
            monitor.add(Target::new(
                SocketAddr::new(m.address, m.check_port),
                m.check.clone(),
            ))
        };
        let pools = specs
            .into_iter()
            .map(|spec| {
                let ids = spec.members.iter().map(add).collect();
                let backup_ids = spec.backup.iter().map(add).collect();
                (
                    LowerName::new(&spec.name),
                    Pool {
                        spec,
                        ids,
                        backup_ids,
                    },
                )
            })
            .collect();
        Gslb {
            pools,
            regions,
            monitor,
        }
    }

    pub fn contains(&self, name: &LowerName) -> bool {
        self.pools.contains_key(name)
    }

    /// Every pool with each member's health, by name.
    pub fn health(&self) -> Vec<PoolHealth> {
        let member = |m: &Member, id: &TargetId, backup: bool| MemberHealth {
            address: m.address,
            weight: m.weight,
            region: m.region.clone(),
            backup,
            up: self.monitor.is_up(*id),
        };
        let mut out: Vec<PoolHealth> = self
            .pools
            .values()
            .map(|p| PoolHealth {
                name: p.spec.name.to_ascii(),
                members: p
                    .spec
                    .members
                    .iter()
                    .zip(&p.ids)
                    .map(|(m, id)| member(m, id, false))
                    .chain(
                        p.spec
                            .backup
                            .iter()
                            .zip(&p.backup_ids)
                            .map(|(m, id)| member(m, id, true)),
                    )
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.pools.values().map(|p| &p.spec.name)
    }

    /// A/AAAA records for `name` (owner `owner`), or `None` when the name
    /// has no pool or `qtype` is not an address type.
    pub fn answer(
        &self,
        name: &LowerName,
        owner: &Name,
        qtype: RecordType,
        client: &Client,
    ) -> Option<(Vec<Record>, Choice)> {
        let want_v4 = match qtype {
            RecordType::A => true,
            RecordType::AAAA => false,
            _ => return None,
        };
        let pool = self.pools.get(name)?;
        let up = |ids: &[TargetId]| {
            ids.iter()
                .map(|id| self.monitor.is_up(*id))
                .collect::<Vec<_>>()
        };
        let choice = choose(
            &pool.spec,
            want_v4,
            &up(&pool.ids),
            &up(&pool.backup_ids),
            &self.regions,
            client,
            &mut rand::rng(),
        );
        let records = choice
            .addresses
            .iter()
            .map(|a| {
                let data = match a {
                    IpAddr::V4(v) => RData::A(A(*v)),
                    IpAddr::V6(v) => RData::AAAA(AAAA(*v)),
                };
                Record::from_rdata(owner.clone(), pool.spec.ttl, data)
            })
            .collect();
        Some((records, choice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn m(a: &str, w: u32, r: &str) -> Member {
        Member {
            address: a.parse().unwrap(),
            weight: w,
            region: Some(r.into()),
            check: HealthCheck::none(),
            check_port: 80,
        }
    }

    fn spec(policy: Policy, fallback: Fallback) -> PoolSpec {
        PoolSpec {
            name: Name::from_ascii("www.example.com.").unwrap(),
            ttl: 20,
            policy,
            fallback,
            members: vec![
                m("198.18.1.1", 1, "eu"),
                m("198.18.2.1", 3, "us"),
                m("198.18.2.2", 0, "us"),
                m("2001:db8::1", 1, "eu"),
            ],
            backup: vec![m("198.18.9.9", 1, "eu")],
        }
    }

    fn regions() -> Regions {
        Regions::new(vec![
            (Prefix::parse("198.18.100.0/24").unwrap(), "eu".into()),
            (Prefix::parse("198.18.0.0/15").unwrap(), "us".into()),
            (
                Prefix::parse("2001:db8:eu::/48".replace("eu", "e0").as_str()).unwrap(),
                "eu".into(),
            ),
        ])
    }

    fn client(a: &str, len: u8) -> Client {
        Client {
            addr: a.parse().unwrap(),
            known_len: len,
            from_ecs: true,
        }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn prefixes() {
        assert!(Prefix::parse("198.18.0.1/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(Prefix::parse("198.18.0.0/33").is_err());
        assert!(Prefix::parse("198.18.0.0").is_err());
        let p = Prefix::parse("2001:db8::/32").unwrap();
        assert!(p.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!p.contains("198.18.0.1".parse().unwrap()));
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().len, 0);
    }

    #[test]
    fn longest_prefix_wins_and_ecs_length_limits() {
        let r = regions();
        let a = "198.18.100.7".parse().unwrap();
        assert_eq!(r.lookup(a, 32), Some(("eu", 24)));
        // Only 16 bits known: the /24 cannot match, the /15 can.
        assert_eq!(
            r.lookup("198.18.0.0".parse().unwrap(), 16),
            Some(("us", 15))
        );
        assert_eq!(r.lookup("203.0.113.1".parse().unwrap(), 32), None);
    }

    #[test]
    fn all_policy_filters_health_and_family() {
        let s = spec(Policy::All, Fallback::All);
        let mut rng = StdRng::seed_from_u64(1);
        let c = choose(
            &s,
            true,
            &[true, false, true, true],
            &[true],
            &regions(),
            &client("198.18.0.1", 32),
            &mut rng,
        );
        assert_eq!(c.addresses, ips(&["198.18.1.1", "198.18.2.2"]));
        assert!(!c.fallback);
        assert_eq!(c.scope, 0);
        let c = choose(
            &s,
            false,
            &[true; 4],
            &[true],
            &regions(),
            &client("198.18.0.1", 32),
            &mut rng,
        );
        assert_eq!(c.addresses, ips(&["2001:db8::1"]));
    }

    #[test]
    fn fallbacks() {
        let mut rng = StdRng::seed_from_u64(1);
        let cl = client("198.18.0.1", 32);
        let s = spec(Policy::All, Fallback::All);
        let c = choose(&s, true, &[false; 4], &[true], &regions(), &cl, &mut rng);
        assert_eq!(
            c.addresses,
            ips(&["198.18.1.1", "198.18.2.1", "198.18.2.2"])
        );
        assert!(c.fallback);
        let s = spec(Policy::All, Fallback::Backup);
        let c = choose(&s, true, &[false; 4], &[false], &regions(), &cl, &mut rng);
        assert_eq!(c.addresses, ips(&["198.18.9.9"]));
        // v6 is still healthy: no fallback for AAAA.
        let c = choose(
            &s,
            false,
            &[false, false, false, true],
            &[false],
            &regions(),
            &cl,
            &mut rng,
        );
        assert_eq!((c.addresses, c.fallback), (ips(&["2001:db8::1"]), false));
        // No v6 backup and no healthy v6 member: empty (NODATA).
        let c = choose(&s, false, &[false; 4], &[true], &regions(), &cl, &mut rng);
        assert!(c.addresses.is_empty());
    }

    #[test]
    fn weighted_follows_weights() {
        let s = spec(Policy::Weighted { count: 1 }, Fallback::All);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            let c = choose(
                &s,
                true,
                &[true; 4],
                &[true],
                &regions(),
                &client("198.18.0.1", 32),
                &mut rng,
            );
            assert_eq!(c.addresses.len(), 1);
            *counts.entry(c.addresses[0]).or_insert(0) += 1;
        }
        let n = |a: &str| *counts.get(&a.parse::<IpAddr>().unwrap()).unwrap_or(&0);
        assert_eq!(
            n("198.18.2.2"),
            0,
            "weight 0 is never drawn while others are left"
        );
        let (a, b) = (n("198.18.1.1") as f64, n("198.18.2.1") as f64);
        assert!((b / a) > 2.5 && (b / a) < 3.5, "{a} vs {b}");
        // count larger than the pool: everything, no duplicates.
        let s = spec(Policy::Weighted { count: 10 }, Fallback::All);
        let mut c = choose(
            &s,
            true,
            &[true; 4],
            &[true],
            &regions(),
            &client("198.18.0.1", 32),
            &mut rng,
        )
        .addresses;
        c.sort();
        assert_eq!(c, ips(&["198.18.1.1", "198.18.2.1", "198.18.2.2"]));
    }

    #[test]
    fn closest_uses_region_and_scope() {
        let s = spec(Policy::Closest { count: None }, Fallback::All);
        let mut rng = StdRng::seed_from_u64(1);
        let c = choose(
            &s,
            true,
            &[true; 4],
            &[true],
            &regions(),
            &client("198.18.100.0", 24),
            &mut rng,
        );
        assert_eq!(c.addresses, ips(&["198.18.1.1"]));
        assert_eq!((c.scope, c.region.as_deref()), (24, Some("eu")));
        let c = choose(
            &s,
            true,
            &[true; 4],
            &[true],
            &regions(),
            &client("198.18.7.0", 24),
            &mut rng,
        );
        assert_eq!(c.addresses, ips(&["198.18.2.1", "198.18.2.2"]));
        assert_eq!(c.scope, 15);
        // Region's members all down: every healthy member.
        let c = choose(
            &s,
            true,
            &[false, true, true, true],
            &[true],
            &regions(),
            &client("198.18.100.0", 24),
            &mut rng,
        );
        assert_eq!(c.addresses, ips(&["198.18.2.1", "198.18.2.2"]));
        // Unknown client: everything healthy, scope = what we knew.
        let c = choose(
            &s,
            true,
            &[true; 4],
            &[true],
            &regions(),
            &client("203.0.113.0", 24),
            &mut rng,
        );
        assert_eq!((c.addresses.len(), c.scope, c.region), (3, 24, None));
    }
}
