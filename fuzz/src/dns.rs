//! The DNS query path: wire bytes in, a response, FORMERR or nothing out
//! (`lb_userspace::dns::query::handle` and the UDP workers' response
//! cache), against the test zone plus GSLB pools, ECS regions and RRL.
//!
//! Contract checked per input, over UDP and TCP:
//! * fewer than 12 bytes, a header hickory cannot read, or the QR bit:
//!   nothing is sent;
//! * otherwise a response is sent (UDP with RRL may drop it): it parses,
//!   has the query's ID, QR set and the query's opcode; an unparseable
//!   query gets FORMERR; a UDP response fits the client's size limit;
//! * without GSLB and RRL, the response cache gives byte for byte what the
//!   full path gives (cache hits included: the cache lives across inputs).

use std::{
    cell::RefCell,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use hickory_proto::{
    op::{Header, Message, MessageType, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder},
};
use lb_userspace::{
    config::Config,
    dns::{
        cache::ResponseCache,
        gslb::Gslb,
        lookup::Catalog,
        query::{handle, udp_limit, State, Stats, Transport},
        rrl::RateLimiter,
    },
    health::Monitor,
};

use crate::{
    engine::{fnv, Outcome, Target},
    rng::Rng,
};

pub const TARGET: Target = Target {
    name: "dns",
    check,
    dictionary: DICTIONARY,
    generate,
    max_len: 4096,
};

/// The zone every query is asked against (also the `zone` seed corpus).
pub fn zone_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/tests/data/dns/example.com.zone")
}

fn config_text() -> String {
    format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
max_udp_payload = 1232

[[dns.zone]]
name = "example.com."
file = "{}"

[[dns.region]]
name = "eu"
prefixes = ["198.18.100.0/24", "2001:db8:100::/48"]
[[dns.region]]
name = "us"
prefixes = ["198.18.0.0/16"]

[[dns.gslb]]
name = "gslb.example.com."
ttl = 20
policy = "closest"
fallback = "backup"
health = {{ kind = "none" }}
[[dns.gslb.member]]
address = "198.18.10.1"
region = "eu"
[[dns.gslb.member]]
address = "198.18.20.1"
region = "us"
weight = 2
[[dns.gslb.member]]
address = "2001:db8:10::1"
region = "eu"
[[dns.gslb.backup]]
address = "198.18.99.1"

[[dns.gslb]]
name = "pick.example.com."
policy = "weighted"
count = 2
health = {{ kind = "none" }}
[[dns.gslb.member]]
address = "198.18.30.1"
weight = 5
[[dns.gslb.member]]
address = "198.18.30.2"
[[dns.gslb.member]]
address = "198.18.30.3"
weight = 0

[dns.rrl]
responses_per_second = 5
slip = 2
"#,
        zone_file().display()
    )
}

/// Two states: `plain` (the zone only) and `full` (GSLB, regions, RRL).
struct Fixture {
    plain: Arc<State>,
    full: Arc<State>,
    stats: Stats,
    cache: ResponseCache,
}

fn fixture() -> Fixture {
    let cfg = Config::parse(&config_text()).expect("the fuzz DNS config is valid");
    let s = cfg.dns.expect("[dns]");
    let zone = s.zones[0].zone.clone();
    let plain = Arc::new(State {
        catalog: Catalog::new(vec![zone.clone()]),
        gslb: None,
        max_udp_payload: s.max_udp_payload,
        rrl: None,
    });
    // Health kind "none" starts no probe tasks, so no runtime is needed.
    let full = Arc::new(State {
        catalog: Catalog::new(vec![zone]),
        gslb: Some(Gslb::new(
            s.pools.clone(),
            s.regions.clone(),
            Monitor::new(),
        )),
        max_udp_payload: s.max_udp_payload,
        rrl: s.rrl.clone().map(RateLimiter::new),
    });
    Fixture {
        plain,
        full,
        stats: Stats::default(),
        cache: ResponseCache::new(),
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

const SRC4: &str = "198.18.100.7:5353";
const SRC6: &str = "[2001:db8:100::7]:5353";

/// What the server must do with `q`, judged from its header alone.
fn must_answer(q: &[u8]) -> bool {
    if q.len() < 12 {
        return false;
    }
    match Header::read(&mut BinDecoder::new(q)) {
        Ok(h) => h.metadata.message_type != MessageType::Response,
        Err(_) => false,
    }
}

/// Checks one response (or its absence) to `q`.
fn check_response(
    q: &[u8],
    resp: Option<&[u8]>,
    transport: Transport,
    may_drop: bool,
    max_udp: u16,
) -> Result<u16, String> {
    let answer = must_answer(q);
    let Some(r) = resp else {
        if answer && !may_drop {
            return Err(format!("{transport:?}: no response to a query"));
        }
        return Ok(0xffff);
    };
    if !answer {
        return Err(format!(
            "{transport:?}: responded to a packet that must be dropped"
        ));
    }
    let m = Message::from_vec(r)
        .map_err(|e| format!("{transport:?}: our response does not parse: {e}"))?;
    let id = u16::from_be_bytes([q[0], q[1]]);
    if m.metadata.id != id {
        return Err(format!(
            "{transport:?}: response ID {} for query ID {id}",
            m.metadata.id
        ));
    }
    if m.metadata.message_type != MessageType::Response {
        return Err(format!("{transport:?}: response without QR"));
    }
    let req = Message::from_vec(q);
    match &req {
        Err(_) => {
            if m.metadata.response_code != ResponseCode::FormErr
                || !m.answers.is_empty()
                || !m.authorities.is_empty()
            {
                return Err(format!(
                    "{transport:?}: unparseable query answered with {} and {} records",
                    m.metadata.response_code,
                    m.answers.len()
                ));
            }
        }
        Ok(req) => {
            if m.metadata.op_code != req.metadata.op_code {
                return Err(format!(
                    "{transport:?}: opcode {:?} in reply to {:?}",
                    m.metadata.op_code, req.metadata.op_code
                ));
            }
            if transport == Transport::Udp {
                let limit = udp_limit(req, max_udp);
                if r.len() > limit {
                    return Err(format!(
                        "UDP response of {} bytes over the limit {limit}",
                        r.len()
                    ));
                }
            }
            if m.queries.len() > 1 {
                return Err(format!("{} questions in a response", m.queries.len()));
            }
        }
    }
    Ok(u16::from(m.metadata.response_code) | (m.metadata.truncation as u16) << 12)
}

/// The harness: one input through both states, over UDP and TCP, and
/// through the response cache.
pub fn check(q: &[u8]) -> Outcome {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        let f = f.get_or_insert_with(fixture);
        let src4: SocketAddr = SRC4.parse().unwrap();
        let src6: SocketAddr = SRC6.parse().unwrap();
        let max = f.plain.max_udp_payload;

        let udp = handle(&f.plain, &f.stats, q, src4, Transport::Udp);
        let a = check_response(q, udp.as_deref(), Transport::Udp, false, max)?;
        let tcp = handle(&f.plain, &f.stats, q, src6, Transport::Tcp);
        let b = check_response(q, tcp.as_deref(), Transport::Tcp, false, max)?;

        let mut out = Vec::new();
        let sent = f
            .cache
            .handle(&f.plain, &f.stats, q, src4, Transport::Udp, &mut out);
        if sent.then_some(&out[..]) != udp.as_deref() {
            return Err(format!(
                "response cache and full path differ: cache {:?}, full {:?}",
                sent.then(|| crate::engine::hex(&out)),
                udp.as_deref().map(crate::engine::hex)
            ));
        }

        let udp = handle(&f.full, &f.stats, q, src4, Transport::Udp);
        let c = check_response(q, udp.as_deref(), Transport::Udp, true, max)?;
        let tcp = handle(&f.full, &f.stats, q, src6, Transport::Tcp);
        let d = check_response(q, tcp.as_deref(), Transport::Tcp, false, max)?;
        let qtype = plain_qtype(q);
        Ok(fnv(&[
            &a.to_be_bytes(),
            &b.to_be_bytes(),
            &c.to_be_bytes(),
            &d.to_be_bytes(),
            &qtype.to_be_bytes(),
        ]))
    })
}

/// The question type when the question is at the usual place (behaviour only).
fn plain_qtype(q: &[u8]) -> u16 {
    lb_userspace::dns::cache::plain_query(q).map_or(0, |p| {
        u16::from_be_bytes([q[p.question_end - 4], q[p.question_end - 3]])
    })
}

const DICTIONARY: &[&[u8]] = &[
    b"\x07example\x03com\x00",
    b"\x03www",
    b"\x03web",
    b"\x04wild",
    b"\x02x1",
    b"\x01*",
    b"\x05child",
    b"\x04host",
    b"\x03ns1",
    b"\x04mail",
    b"\x04_sip\x04_tcp",
    b"\x03big",
    b"\x05alias",
    b"\x05loop1",
    b"\x05cname",
    b"\x04gslb",
    b"\x04pick",
    b"\x06Mixed\x04Case",
    b"\x3f",
    b"\x40",
    b"\xc0\x0c",
    b"\xc0\x00",
    b"\xff\xff",
    b"\x00\x01\x00\x01",
    b"\x00\x1c\x00\x01",
    b"\x00\xff\x00\x01",
    b"\x00\x06\x00\x01",
    b"\x00\xfc\x00\x01",
    b"\x00\x29",
    b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
    b"\x00\x08\x00\x08\x00\x01\x18\x00\xc6\x12\x64",
    b"\x00\x08\x00\x04\x00\x02\x00\x00",
    b"\x00\x0a\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08",
    b"\x00\x0c\x00\x00",
];

const LABELS: &[&str] = &[
    "www", "web", "wild", "x1", "*", "child", "host", "ns1", "ns2", "mail", "_sip", "_tcp", "big",
    "alias", "ext", "dangling", "tochild", "loop1", "loop2", "cname", "a", "b", "c", "deep",
    "multi", "Mixed", "Case", "sub", "other", "gslb", "pick", "nope", "GSLB",
];

const TYPES: &[u16] = &[
    1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 99, 255, 252, 251, 41, 0, 257, 65, 64, 46, 48, 65535,
];

fn name(rng: &mut Rng, out: &mut Vec<u8>) {
    let n = rng.below(4);
    for _ in 0..n {
        if rng.one_in(20) {
            let len = 1 + rng.below(70);
            out.push(len as u8);
            for _ in 0..len {
                out.push(b'a' + rng.below(26) as u8);
            }
        } else {
            let l = rng.pick(LABELS);
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
    }
    match rng.below(10) {
        0 => out.extend_from_slice(b"\x07example\x03org\x00"),
        1 => out.push(0),
        2 => out.extend_from_slice(b"\xc0\x0c"),
        3 if n > 0 => out.extend_from_slice(b"\x07EXAMPLE\x03COM\x00"),
        _ => out.extend_from_slice(b"\x07example\x03com\x00"),
    }
}

fn opt(rng: &mut Rng, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&41u16.to_be_bytes());
    let payload: u16 = *rng.pick(&[0, 1, 511, 512, 1232, 1400, 4096, 65535]);
    out.extend_from_slice(&payload.to_be_bytes());
    out.push(if rng.one_in(10) { rng.byte() } else { 0 }); // extended rcode
    out.push(if rng.one_in(8) {
        1 + rng.below(3) as u8
    } else {
        0
    }); // version
    out.extend_from_slice(&(if rng.one_in(2) { 0x8000u16 } else { 0 }).to_be_bytes());
    let mut rdata = Vec::new();
    for _ in 0..rng.below(3) {
        match rng.below(4) {
            0 | 1 => {
                // ECS: family, source and scope prefix, address bytes.
                let family: u16 = *rng.pick(&[1, 2, 1, 2, 0, 3]);
                let source = match family {
                    1 => *rng.pick(&[0u8, 8, 16, 24, 25, 32, 33]),
                    _ => *rng.pick(&[0u8, 32, 48, 56, 64, 128, 129]),
                };
                let scope = if rng.one_in(6) { rng.byte() } else { 0 };
                let full = if family == 2 { 16 } else { 4 };
                let mut addr_len = (source as usize).div_ceil(8).min(full);
                if rng.one_in(8) {
                    addr_len = rng.below(18);
                }
                let addr: Vec<u8> = match family {
                    1 => [198, 18, 100, 0]
                        .into_iter()
                        .cycle()
                        .take(addr_len)
                        .collect(),
                    _ => [0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00]
                        .into_iter()
                        .chain(std::iter::repeat(0))
                        .take(addr_len)
                        .collect(),
                };
                rdata.extend_from_slice(&8u16.to_be_bytes());
                rdata.extend_from_slice(&((4 + addr.len()) as u16).to_be_bytes());
                rdata.extend_from_slice(&family.to_be_bytes());
                rdata.push(source);
                rdata.push(scope);
                rdata.extend_from_slice(&addr);
            }
            2 => {
                let len = *rng.pick(&[8usize, 16, 24, 40, 3]);
                rdata.extend_from_slice(&10u16.to_be_bytes());
                rdata.extend_from_slice(&(len as u16).to_be_bytes());
                for _ in 0..len {
                    rdata.push(rng.byte());
                }
            }
            _ => {
                let code = rng.below(65536) as u16;
                let len = rng.below(8);
                rdata.extend_from_slice(&code.to_be_bytes());
                rdata.extend_from_slice(&(len as u16).to_be_bytes());
                for _ in 0..len {
                    rdata.push(rng.byte());
                }
            }
        }
    }
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
}

/// A query, usually well formed: one question for a zone name, maybe EDNS
/// with ECS or a cookie; sometimes odd opcodes, counts and classes.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&(rng.next_u64() as u16).to_be_bytes());
    let opcode = if rng.one_in(10) {
        rng.below(16) as u8
    } else {
        0
    };
    let qr = rng.one_in(20) as u8;
    let b2 = qr << 7 | opcode << 3 | (rng.one_in(2) as u8); // RD
    let b3 = if rng.one_in(4) { rng.byte() & 0x30 } else { 0 }; // AD, CD
    out.push(b2);
    out.push(b3);
    let questions = if rng.one_in(10) { rng.below(3) } else { 1 };
    let edns = rng.one_in(2);
    let extra = i32::from(rng.one_in(15));
    out.extend_from_slice(&(questions as u16).to_be_bytes());
    out.extend_from_slice(&(extra as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(edns as u16).to_be_bytes());
    for _ in 0..questions {
        name(rng, &mut out);
        out.extend_from_slice(&rng.pick(TYPES).to_be_bytes());
        let class: u16 = if rng.one_in(10) {
            *rng.pick(&[3, 4, 254, 255, 0])
        } else {
            1
        };
        out.extend_from_slice(&class.to_be_bytes());
    }
    for _ in 0..extra {
        // An answer record in a query: a name, A, IN, TTL, 4 bytes.
        name(rng, &mut out);
        out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1]);
    }
    if edns {
        opt(rng, &mut out);
    }
    if rng.one_in(20) {
        for _ in 0..rng.below(8) {
            out.push(rng.byte());
        }
    }
    out
}
