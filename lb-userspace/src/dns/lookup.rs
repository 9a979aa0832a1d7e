//! Authoritative answers: which records go into which section. Pure: no
//! sockets, no wire format (see `query.rs`).

use std::{collections::HashSet, sync::Arc};

use ahash::RandomState;
use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};

use super::{
    chaos::ServerInfo,
    gslb::{Client, Gslb},
    zone::{Found, Node, Zone},
};

/// Longest CNAME chain followed inside a zone.
pub const MAX_CNAME_CHAIN: usize = 8;

/// The zones we serve, longest origin first, and what class CH identity
/// queries answer.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    zones: Vec<Arc<Zone>>,
    server: ServerInfo,
}

impl Catalog {
    pub fn new(mut zones: Vec<Arc<Zone>>) -> Self {
        zones.sort_by(|a, b| {
            b.origin_lower
                .num_labels()
                .cmp(&a.origin_lower.num_labels())
        });
        Catalog {
            zones,
            server: ServerInfo::default(),
        }
    }

    /// Sets the identity and version given to CHAOS queries (default: the
    /// host name and `lb <version>`).
    #[must_use]
    pub fn with_server_info(mut self, server: ServerInfo) -> Self {
        self.server = server;
        self
    }

    pub fn server_info(&self) -> &ServerInfo {
        &self.server
    }

    /// The most specific zone containing `name`.
    pub fn find(&self, name: &LowerName) -> Option<&Arc<Zone>> {
        self.zones.iter().find(|z| z.origin_lower.zone_of(name))
    }

    pub fn zones(&self) -> &[Arc<Zone>] {
        &self.zones
    }

    pub fn get(&self, origin: &LowerName) -> Option<&Arc<Zone>> {
        self.zones.iter().find(|z| &z.origin_lower == origin)
    }
}

/// What kind of answer this is (also the RRL grouping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Positive,
    NoData,
    NxDomain,
    Referral,
    /// Ended on a CNAME that leaves the zone or loops.
    Partial,
    Refused,
}

/// An answer before encoding.
#[derive(Debug, Clone)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub kind: Kind,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
    /// ECS scope prefix length when a GSLB "closest" choice used the client.
    pub ecs_scope: Option<u8>,
    /// The zone that answered (its origin), for RRL grouping.
    pub zone: Option<LowerName>,
    /// The name the final step was about (NXDOMAIN / referral grouping).
    pub final_name: Option<LowerName>,
    /// The answer consulted GSLB pools: it depends on health and on the
    /// client, so it must be computed per query (never cached).
    pub dynamic: bool,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            rcode: ResponseCode::Refused,
            authoritative: false,
            kind: Kind::Refused,
            answers: vec![],
            authority: vec![],
            additional: vec![],
            ecs_scope: None,
            zone: None,
            final_name: None,
            dynamic: false,
        }
    }
}

fn with_owner<'a>(records: &'a [Record], owner: &Name) -> impl Iterator<Item = Record> + 'a {
    let owner = owner.clone();
    records.iter().map(move |r| {
        let mut r = r.clone();
        r.name = owner.clone();
        r
    })
}

/// Answers `qname`/`qtype` (class IN) from the catalog and GSLB pools.
pub fn resolve(
    catalog: &Catalog,
    gslb: Option<&Gslb>,
    qname: &Name,
    qtype: RecordType,
    client: &Client,
) -> Answer {
    let lq = LowerName::new(qname);
    let Some(zone) = catalog.find(&lq) else {
        return Answer::refused();
    };
    let mut a = Answer {
        rcode: ResponseCode::NoError,
        authoritative: true,
        kind: Kind::Positive,
        answers: vec![],
        authority: vec![],
        additional: vec![],
        ecs_scope: None,
        zone: Some(zone.origin_lower.clone()),
        final_name: None,
        dynamic: false,
    };
    let mut name = qname.clone();
    let mut seen: HashSet<LowerName, RandomState> = HashSet::default();
    let mut hops = 0;
    loop {
        let lname = LowerName::new(&name);
        a.final_name = Some(lname.clone());
        if !zone.origin_lower.zone_of(&lname)
            || !seen.insert(lname.clone())
            || hops > MAX_CNAME_CHAIN
        {
            // CNAME out of the zone, a loop, or too long a chain: stop here.
            a.kind = Kind::Partial;
            return a;
        }
        let found = zone.find(&lname, qtype);
        // GSLB names answer A/AAAA from their pool (unless delegated away).
        if let (Some(g), false) = (gslb, matches!(found, Found::Cut(_))) {
            let gtype = match qtype {
                RecordType::ANY if g.contains(&lname) => match &found {
                    Found::Node(_) => RecordType::Unknown(0),
                    _ => RecordType::A,
                },
                t => t,
            };
            if let Some((records, choice)) = g.answer(&lname, &name, gtype, client) {
                a.dynamic = true;
                if client.from_ecs && choice.scope > 0 {
                    a.ecs_scope = Some(choice.scope);
                }
                if records.is_empty() {
                    return nodata(zone, a);
                }
                a.answers.extend(records);
                return positive(zone, a, qtype);
            }
        }
        match found {
            Found::Cut(cut) => {
                if a.answers.is_empty() {
                    a.authoritative = false;
                }
                a.kind = Kind::Referral;
                a.final_name = Some(LowerName::new(&cut.name));
                let ns = cut.get(RecordType::NS).unwrap_or(&[]);
                a.authority.extend(ns.iter().cloned());
                a.additional = additional_for(zone, a.authority.iter(), &[]);
                return a;
            }
            Found::Node(node) | Found::Wildcard(node) => match step(node, qtype, zone, &lname) {
                Step::Records(rs) => {
                    a.answers.extend(with_owner(rs, &name));
                    return positive(zone, a, qtype);
                }
                Step::Cname(rec) => {
                    let target = match &rec.data {
                        RData::CNAME(c) => c.0.clone(),
                        _ => unreachable!("CNAME rrset holds CNAME data"),
                    };
                    a.answers
                        .extend(with_owner(std::slice::from_ref(rec), &name));
                    name = target;
                    hops += 1;
                }
                Step::NoData => return nodata(zone, a),
            },
            Found::EmptyNonTerminal => return nodata(zone, a),
            Found::NxDomain => {
                if gslb.is_some_and(|g| g.contains(&lname)) {
                    a.dynamic = true;
                    return nodata(zone, a);
                }
                a.rcode = ResponseCode::NXDomain;
                a.kind = Kind::NxDomain;
                a.authority.push(zone.negative_soa());
                return a;
            }
        }
    }
}

/// Turns the answer to a class IN query into NSD's answer to the same
/// query in class ANY: the same records (class IN); referrals unchanged
/// (AA only when a CNAME led into the delegation, as in class IN); other
/// answers without AA and without the authority section (no apex NS, no
/// negative SOA), additional keeping the addresses of the answer's own
/// NS/MX/SRV targets.
pub fn as_class_any(catalog: &Catalog, a: &mut Answer, qtype: RecordType) {
    if a.kind == Kind::Referral {
        return;
    }
    a.authoritative = false;
    a.authority.clear();
    a.additional.clear();
    if a.kind == Kind::Positive && qtype != RecordType::ANY {
        if let Some(zone) = a.zone.as_ref().and_then(|z| catalog.get(z)) {
            a.additional = additional_for(zone, a.answers.iter(), &a.answers);
        }
    }
}

enum Step<'a> {
    Records(&'a [Record]),
    Cname(&'a Record),
    NoData,
}

fn step<'a>(node: &'a Node, qtype: RecordType, zone: &Zone, lname: &LowerName) -> Step<'a> {
    if qtype == RecordType::ANY {
        // RFC 8482: one RRset is enough (the SOA at the apex).
        if *lname == zone.origin_lower {
            if let Some(soa) = node.get(RecordType::SOA) {
                return Step::Records(soa);
            }
        }
        return match node.rrsets.values().next() {
            Some(rs) => Step::Records(rs),
            None => Step::NoData,
        };
    }
    if let Some(rs) = node.get(qtype) {
        return Step::Records(rs);
    }
    if let Some([c]) = node.get(RecordType::CNAME) {
        return Step::Cname(c);
    }
    Step::NoData
}

fn nodata(zone: &Zone, mut a: Answer) -> Answer {
    a.kind = Kind::NoData;
    a.authority.push(zone.negative_soa());
    a
}

/// A positive answer: the apex NS RRset in authority (unless the answer is
/// that RRset) and addresses of every named target in additional.
fn positive(zone: &Zone, mut a: Answer, qtype: RecordType) -> Answer {
    a.kind = Kind::Positive;
    let answer_is_apex_ns = qtype == RecordType::NS
        && a.answers
            .last()
            .is_some_and(|r| LowerName::new(&r.name) == zone.origin_lower);
    if !answer_is_apex_ns && qtype != RecordType::ANY {
        if let Some(apex) = zone.node(&zone.origin_lower) {
            a.authority
                .extend(apex.get(RecordType::NS).unwrap_or(&[]).iter().cloned());
        }
    }
    if qtype != RecordType::ANY {
        a.additional = additional_for(zone, a.answers.iter().chain(a.authority.iter()), &a.answers);
    }
    a
}

/// A/AAAA of the targets of NS, MX and SRV records that the zone holds
/// (authoritative data or glue), without repeating answer records.
fn additional_for<'a>(
    zone: &Zone,
    records: impl Iterator<Item = &'a Record>,
    answers: &[Record],
) -> Vec<Record> {
    let mut targets: Vec<LowerName> = Vec::new();
    for r in records {
        let t = match &r.data {
            RData::NS(n) => &n.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let lt = LowerName::new(t);
        if zone.origin_lower.zone_of(&lt) && !targets.contains(&lt) {
            targets.push(lt);
        }
    }
    let mut out: Vec<Record> = Vec::new();
    for t in &targets {
        for r in zone.addresses(t) {
            if !answers.contains(r) && !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}
