//! Zone file loading: master-file text in, a zone or an error with a line
//! out (`lb_userspace::dns::zone::Zone::parse`, hickory-proto's parser plus
//! our checks and index). A zone that loads is then queried: every owner
//! name the text mentions, for several types, through the real query path
//! (`dns::query::handle`), and each response must parse with the query's ID.
//!
//! Inputs with `$INCLUDE` are skipped: it reads any file named, which a
//! fuzzer must not do (operators' zone files are trusted input).

use std::{net::SocketAddr, sync::Arc};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use lb_userspace::dns::{
    lookup::Catalog,
    query::{handle, State, Stats, Transport},
    zone::Zone,
};

use crate::{
    engine::{fnv, Outcome, Target},
    rng::Rng,
};

pub const TARGET: Target = Target {
    name: "zone",
    check,
    dictionary: DICTIONARY,
    generate,
    max_len: 8192,
};

const QTYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::MX,
    RecordType::TXT,
    RecordType::DS,
    RecordType::ANY,
];

/// Owner names to query: the first field of lines that start with one, and
/// a few names below them.
fn candidate_names(text: &str, origin: &Name) -> Vec<Name> {
    let mut names = vec![origin.clone()];
    for line in text.lines() {
        if names.len() >= 12 {
            break;
        }
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if line.starts_with(char::is_whitespace) || first.starts_with(['$', ';', '(', ')']) {
            continue;
        }
        let Ok(mut n) = Name::from_ascii(first) else {
            continue;
        };
        if !n.is_fqdn() {
            match n.append_domain(origin) {
                Ok(full) => n = full,
                Err(_) => continue,
            }
        }
        if let Ok(below) = n.prepend_label("zz") {
            names.push(below);
        }
        names.push(n);
    }
    names
}

pub fn check(data: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(data);
    if text.to_ascii_lowercase().contains("$include") {
        return Ok(0);
    }
    let origin = Name::from_ascii("example.com.").unwrap();
    match Zone::parse(&origin, &text, None) {
        Err((line, reason)) => {
            if reason.trim().is_empty() {
                return Err("zone error without a reason".into());
            }
            let lines = text.lines().count().max(1);
            if let Some(l) = line {
                if l == 0 || l > lines + 1 {
                    return Err(format!(
                        "error on line {l} of a {lines}-line file: {reason}"
                    ));
                }
            }
            let head: String = reason.chars().take(24).collect();
            Ok(fnv(&[b"err", &[line.is_some() as u8], head.as_bytes()]))
        }
        Ok(zone) => {
            if !zone.origin.is_fqdn() || zone.record_count == 0 {
                return Err(format!(
                    "zone {} loaded with {} records",
                    zone.origin, zone.record_count
                ));
            }
            let names = candidate_names(&text, &zone.origin);
            let state = State {
                catalog: Catalog::new(vec![Arc::new(zone)]),
                gslb: None,
                max_udp_payload: 1232,
                rrl: None,
            };
            let stats = Stats::default();
            let src: SocketAddr = "198.18.0.9:5353".parse().unwrap();
            let mut codes = 0u64;
            let mut id = 0u16;
            for n in &names {
                for t in QTYPES {
                    id = id.wrapping_add(1);
                    let mut m = Message::query();
                    m.metadata.id = id;
                    m.add_query(Query::query(n.clone(), *t));
                    let Ok(q) = m.to_vec() else { continue };
                    for transport in [Transport::Udp, Transport::Tcp] {
                        let Some(r) = handle(&state, &stats, &q, src, transport) else {
                            return Err(format!("no response to {n} {t} over {transport:?}"));
                        };
                        let resp = Message::from_vec(&r).map_err(|e| {
                            format!("response to {n} {t} over {transport:?} does not parse: {e}")
                        })?;
                        if resp.metadata.id != id {
                            return Err(format!("response to {n} {t}: wrong ID"));
                        }
                        if transport == Transport::Udp && r.len() > 512 {
                            return Err(format!(
                                "UDP response to {n} {t} is {} bytes without EDNS",
                                r.len()
                            ));
                        }
                        codes |= 1 << (u16::from(resp.metadata.response_code) & 31);
                        codes |= (resp.metadata.truncation as u64) << 40;
                    }
                }
            }
            Ok(fnv(&[b"ok", &codes.to_be_bytes()]))
        }
    }
}

const DICTIONARY: &[&[u8]] = &[
    b"$ORIGIN ",
    b"$TTL ",
    b"$ORIGIN example.com.\n",
    b"$ORIGIN sub.example.com.\n",
    b"$ORIGIN .\n",
    b"$TTL 3600\n",
    b"@",
    b"@ IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n",
    b"@ IN NS ns1\n",
    b" IN ",
    b" CH ",
    b" HS ",
    b" ANY ",
    b" SOA ",
    b" NS ",
    b" A ",
    b" AAAA ",
    b" CNAME ",
    b" DNAME ",
    b" MX ",
    b" TXT ",
    b" SRV ",
    b" CAA ",
    b" PTR ",
    b" DS ",
    b" SSHFP ",
    b" TLSA ",
    b" HTTPS ",
    b" SVCB ",
    b" NAPTR ",
    b" OPT ",
    b" TYPE5 ",
    b" TYPE65535 ",
    b" CLASS1 ",
    b"\\# ",
    b"\\# 0",
    b"\\# 4 c6120001",
    b"\\# 2 c00c",
    b"198.18.0.1",
    b"2001:db8::1",
    b"::ffff:198.18.0.1",
    b"*.",
    b"*",
    b"\\.",
    b"\\046",
    b"\\999",
    b"(",
    b")",
    b" ( 1 2 3 4 5 )",
    b";",
    b"\"",
    b"\"\\\"\"",
    b"ns1",
    b"www",
    b"example.com.",
    b"example.net.",
    b"child",
    b".",
    b"..",
    b"10 mail",
    b"0 issue \"ca.example.net\"",
    b"10 60 5060 sip",
    b"1w2d3h4m5s",
    b"2147483648",
    b"\t",
];

const OWNERS: &[&str] = &[
    "@",
    "www",
    "web",
    "ns1",
    "ns2",
    "mail",
    "*",
    "*.wild",
    "sub.wild",
    "child",
    "ns1.child",
    "a.b.c",
    "Mixed.Case",
    "_sip._tcp",
    "example.com.",
    "other.example.com.",
    "example.net.",
    "\\@",
    "x\\.y",
    "",
    "loop",
    "deep.deeper.deepest",
];

const RECORDS: &[&str] = &[
    "A 198.18.0.1",
    "A 198.18.0.2",
    "AAAA 2001:db8::1",
    "NS ns1",
    "NS ns.example.net.",
    "NS ns1.child",
    "CNAME www",
    "CNAME web",
    "CNAME loop",
    "CNAME example.net.",
    "CNAME @",
    "MX 10 mail",
    "MX 0 .",
    "TXT \"hello\" \"world\"",
    "TXT \"\"",
    "SRV 10 60 5060 sip",
    "CAA 0 issue \"ca.example.net\"",
    "SOA ns1 hostmaster 2 7200 3600 1209600 300",
    "PTR www",
    "DS 12345 8 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE",
    "SSHFP 1 1 dd465c09cfa51fb45020cc83316fff21b9ec74ac",
    "TYPE5 \\# 3 010203",
    "TYPE1 \\# 4 c6120001",
    "TYPE999 \\# 0",
    "HTTPS 1 . alpn=h2",
];

/// A zone from templates: usually a valid apex, then random records.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut z = String::new();
    if !rng.one_in(5) {
        z.push_str("$ORIGIN example.com.\n");
    }
    if !rng.one_in(5) {
        z.push_str(&format!(
            "$TTL {}\n",
            rng.pick(&[0u64, 60, 3600, 4_294_967_295])
        ));
    }
    if !rng.one_in(8) {
        z.push_str(&format!(
            "@ IN SOA ns1 hostmaster ( {} 7200 3600 1209600 {} )\n",
            rng.next_u64() as u32,
            rng.pick(&[0u32, 300, 86400])
        ));
    }
    if !rng.one_in(8) {
        z.push_str("@ IN NS ns1\nns1 IN A 198.18.0.53\n");
    }
    for _ in 0..rng.below(12) {
        let owner = rng.pick(OWNERS);
        let ttl = if rng.one_in(3) {
            format!(" {}", rng.below(100_000))
        } else {
            String::new()
        };
        let class = if rng.one_in(12) { " CH" } else { " IN" };
        z.push_str(&format!("{owner}{ttl}{class} {}\n", rng.pick(RECORDS)));
        if rng.one_in(10) {
            z.push_str(&format!(
                "$ORIGIN {}.example.com.\n",
                rng.pick(&["sub", "child"])
            ));
        }
    }
    z.into_bytes()
}
