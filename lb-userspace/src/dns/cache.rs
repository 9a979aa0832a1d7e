//! Each UDP worker's cache of encoded responses to plain queries, reused
//! with the ID and flags of each new query.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use ahash::RandomState;

use super::query::{
    apply_rrl, bump, handle_inner, CachedResponse, State, Stats, Transport, MIN_UDP,
};

/// A query in the common shape: QUERY opcode, one question, no other
/// records except an option-less EDNS(0) OPT. Such a query's response
/// depends only on `key` (and the zones), apart from the ID and the RD/CD
/// bits, which are copied from each query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainQuery {
    /// End of the question (name, type, class) in the packet.
    pub question_end: usize,
    /// The EDNS UDP payload size, when the query has an OPT record.
    pub edns_payload: Option<u16>,
    /// The OPT record's DO bit (echoed in the response, RFC 3225).
    pub dnssec_ok: bool,
}

/// Parses `p` as a [`PlainQuery`]; `None` for anything else (which then
/// takes the full path).
pub fn plain_query(p: &[u8]) -> Option<PlainQuery> {
    if p.len() < 17 || p[2] & 0xf8 != 0 || p[3] & 0x0f != 0 {
        // Short, a response (QR), an opcode other than QUERY, or an RCODE
        // set in the query.
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = *p.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            // Compression pointers and extended labels: not in a plain query.
            return None;
        }
        i += 1 + len;
        if i - 12 > 254 {
            return None;
        }
    }
    let question_end = i + 4;
    if question_end > p.len() {
        return None;
    }
    if count(10) == 0 {
        return (question_end == p.len()).then_some(PlainQuery {
            question_end,
            edns_payload: None,
            dnssec_ok: false,
        });
    }
    // OPT: root name, type 41, class = payload, TTL = ext-rcode, version,
    // flags (DO, part of the key); RDLENGTH 0 (options such as ECS or cookies take the full path).
    let o = &p[question_end..];
    if o.len() != 11 || o[0] != 0 || o[1..3] != [0, 41] || o[6] != 0 || o[9..11] != [0, 0] {
        return None;
    }
    Some(PlainQuery {
        question_end,
        edns_payload: Some(u16::from_be_bytes([o[3], o[4]])),
        dnssec_ok: o[7] & 0x80 != 0,
    })
}

/// Most responses a [`ResponseCache`] holds; when full it starts over, so a
/// flood of distinct names costs memory only up to this bound.
pub const CACHE_MAX_ENTRIES: usize = 4096;

/// Encoded responses to plain queries, for one worker. Tied to one
/// [`State`]: a reload (a new state) empties it.
#[derive(Default)]
pub struct ResponseCache {
    state: Option<Arc<State>>,
    map: HashMap<Box<[u8]>, CachedResponse, RandomState>,
    key: Vec<u8>,
}

impl ResponseCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached responses.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Answers one query like [`handle`](super::query::handle), from the
    /// cache when it can; the response goes into `out`. Returns whether
    /// there is one to send.
    pub fn handle(
        &mut self,
        state: &Arc<State>,
        stats: &Stats,
        packet: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        bump(&stats.queries);
        if !self.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, state)) {
            self.map.clear();
            self.state = Some(state.clone());
        }
        out.clear();
        let Some(plain) = plain_query(packet) else {
            return match handle_inner(state, stats, packet, src, transport, false).0 {
                Some(v) => {
                    out.extend_from_slice(&v);
                    true
                }
                None => false,
            };
        };
        let limit = match transport {
            Transport::Tcp => u16::MAX as usize,
            Transport::Udp => plain
                .edns_payload
                .map_or(MIN_UDP, |p| p as usize)
                .clamp(MIN_UDP, (state.max_udp_payload as usize).max(MIN_UDP)),
        };
        self.key.clear();
        self.key.extend_from_slice(&packet[12..plain.question_end]);
        self.key
            .push(u8::from(plain.edns_payload.is_some()) | u8::from(plain.dnssec_ok) << 1);
        self.key.extend_from_slice(&(limit as u32).to_be_bytes());
        // With RRL on, a UDP answer is usable only with its RRL identity.
        let needs_rrl = transport == Transport::Udp && state.rrl.is_some();
        if let Some(e) = self
            .map
            .get(&self.key[..])
            .filter(|e| !needs_rrl || e.rrl.is_some())
        {
            let full = if let (Transport::Udp, Some(limiter), Some((key, _))) =
                (transport, &state.rrl, &e.rrl)
            {
                match apply_rrl(limiter, key, src, stats, e) {
                    (Some(v), full) => {
                        out.extend_from_slice(&v);
                        full
                    }
                    (None, _) => return false,
                }
            } else {
                out.extend_from_slice(&e.bytes);
                true
            };
            if full && e.truncated {
                bump(&stats.truncated);
            }
            patch_reply(out, packet);
            return true;
        }
        let (send, entry) = handle_inner(state, stats, packet, src, transport, true);
        if let Some(entry) = entry {
            if self.map.len() >= CACHE_MAX_ENTRIES {
                self.map.clear();
            }
            self.map.insert(self.key.clone().into_boxed_slice(), entry);
        }
        match send {
            Some(v) => {
                out.extend_from_slice(&v);
                true
            }
            None => false,
        }
    }
}

/// Gives a cached reply the ID and the RD and CD bits of `query`.
fn patch_reply(reply: &mut [u8], query: &[u8]) {
    if reply.len() < 4 {
        return;
    }
    reply[0] = query[0];
    reply[1] = query[1];
    reply[2] = (reply[2] & !0x01) | (query[2] & 0x01);
    reply[3] = (reply[3] & !0x10) | (query[3] & 0x10);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{
        lookup::Catalog,
        query::handle,
        rrl::{RateLimiter, RrlSettings},
        zone::Zone,
    };
    use hickory_proto::{
        op::{Edns, Message, Query},
        rr::{
            rdata::opt::{ClientSubnet, EdnsOption},
            Name, RecordType,
        },
    };

    fn state(rrl: Option<RrlSettings>) -> Arc<State> {
        let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dns/example.com.zone");
        let zone = Zone::load(&Name::from_ascii("example.com.").unwrap(), &file).unwrap();
        Arc::new(State {
            catalog: Catalog::new(vec![Arc::new(zone)]),
            gslb: None,
            max_udp_payload: 1232,
            rrl: rrl.map(RateLimiter::new),
        })
    }

    fn query(name: &str, t: RecordType, id: u16, rd: bool, cd: bool, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = rd;
        m.metadata.checking_disabled = cd;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    const SRC: &str = "198.18.0.9:5353";

    #[test]
    fn plain_query_shapes() {
        let q = query("www.example.com.", RecordType::A, 1, true, false, None);
        let p = plain_query(&q).unwrap();
        assert_eq!(p.question_end, q.len());
        assert_eq!(p.edns_payload, None);
        let q = query(
            "www.example.com.",
            RecordType::A,
            1,
            true,
            false,
            Some(4000),
        );
        assert_eq!(plain_query(&q).unwrap().edns_payload, Some(4000));
        // A response, another opcode, two questions, an EDNS option,
        // trailing bytes, a compression pointer: not plain.
        let mut r = q.clone();
        r[2] |= 0x80;
        assert!(plain_query(&r).is_none());
        let mut r = q.clone();
        r[2] |= 0x20;
        assert!(plain_query(&r).is_none());
        let mut r = q.clone();
        r[3] |= 0x01;
        assert!(plain_query(&r).is_none());
        let mut r = query("www.example.com.", RecordType::A, 1, true, false, None);
        r[5] = 2;
        assert!(plain_query(&r).is_none());
        let mut m = Message::from_vec(&q).unwrap();
        m.edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                "198.18.0.0".parse().unwrap(),
                24,
                0,
            )));
        assert!(plain_query(&m.to_vec().unwrap()).is_none());
        let mut r = query("www.example.com.", RecordType::A, 1, true, false, None);
        r.push(0);
        assert!(plain_query(&r).is_none());
        let mut r = query("www.example.com.", RecordType::A, 1, true, false, None);
        r[12] = 0xc0;
        assert!(plain_query(&r).is_none());
        assert!(plain_query(&r[..15]).is_none());
    }

    /// Every answer from the cache is byte for byte what the full path
    /// gives the same query: misses, hits with other IDs and flags, mixed
    /// case, EDNS sizes, truncation, TCP.
    #[test]
    fn cached_answers_equal_the_full_path() {
        let st = state(None);
        let stats = Stats::default();
        let src: SocketAddr = SRC.parse().unwrap();
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let names = [
            ("example.com.", RecordType::A),
            ("example.com.", RecordType::MX),
            ("example.com.", RecordType::NS),
            ("example.com.", RecordType::ANY),
            ("WwW.Example.COM.", RecordType::A),
            ("www.example.com.", RecordType::A),
            ("web.example.com.", RecordType::AAAA),
            ("x1.wild.example.com.", RecordType::A),
            ("nope.example.com.", RecordType::A),
            ("host.child.example.com.", RecordType::A),
            ("_sip._tcp.example.com.", RecordType::SRV),
            ("example.org.", RecordType::A),
            ("example.com.", RecordType::AXFR),
        ];
        let mut id = 100;
        for round in 0..3 {
            for (name, t) in names {
                for edns in [None, Some(512), Some(1232), Some(4096)] {
                    for transport in [Transport::Udp, Transport::Tcp] {
                        id += 1;
                        let q = query(name, t, id, round % 2 == 0, round == 1, edns);
                        let want = handle(&st, &stats, &q, src, transport);
                        let got = cache.handle(&st, &stats, &q, src, transport, &mut out);
                        assert_eq!(
                            got.then(|| out.clone()),
                            want,
                            "{name} {t} edns {edns:?} {transport:?} round {round}"
                        );
                    }
                }
            }
        }
        assert!(!cache.is_empty() && cache.len() <= names.len() * 8);
        // A new state (a reload) empties the cache.
        let st2 = state(None);
        let q = query("www.example.com.", RecordType::A, 1, true, false, None);
        assert!(cache.handle(&st2, &stats, &q, src, Transport::Udp, &mut out));
        assert_eq!(cache.len(), 1);
    }

    /// The DO bit is echoed (RFC 3225) and is part of the key: a cached
    /// answer to a DO=1 query is never reused for DO=0, and the reverse.
    #[test]
    fn dnssec_ok_is_echoed_and_keyed() {
        let st = state(None);
        let stats = Stats::default();
        let src: SocketAddr = SRC.parse().unwrap();
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let with_do = |id: u16, dnssec_ok: bool| {
            let mut m = Message::from_vec(&query(
                "www.example.com.",
                RecordType::A,
                id,
                false,
                false,
                Some(1232),
            ))
            .unwrap();
            m.edns.as_mut().unwrap().set_dnssec_ok(dnssec_ok);
            m.to_vec().unwrap()
        };
        assert!(plain_query(&with_do(1, true)).unwrap().dnssec_ok);
        assert!(!plain_query(&with_do(1, false)).unwrap().dnssec_ok);
        for round in 0..3u16 {
            for dnssec_ok in [true, false] {
                let q = with_do(round, dnssec_ok);
                assert!(cache.handle(&st, &stats, &q, src, Transport::Udp, &mut out));
                assert_eq!(
                    Some(out.clone()),
                    handle(&st, &stats, &q, src, Transport::Udp)
                );
                let m = Message::from_vec(&out).unwrap();
                let e = m.edns.as_ref().expect("OPT in the response");
                assert_eq!(e.flags().dnssec_ok, dnssec_ok, "round {round}");
                assert_eq!(m.answers.len(), 3, "CNAME and two A");
            }
        }
        assert_eq!(cache.len(), 2);
    }

    /// Queries that are not plain give the full path's answer and are not
    /// cached; the cache stays bounded.
    #[test]
    fn unusual_queries_bypass_the_cache_and_it_stays_bounded() {
        let st = state(None);
        let stats = Stats::default();
        let src: SocketAddr = SRC.parse().unwrap();
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let mut m = Message::from_vec(&query(
            "www.example.com.",
            RecordType::A,
            7,
            false,
            false,
            Some(1232),
        ))
        .unwrap();
        m.edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                "198.18.0.0".parse().unwrap(),
                24,
                0,
            )));
        let q = m.to_vec().unwrap();
        assert!(cache.handle(&st, &stats, &q, src, Transport::Udp, &mut out));
        assert_eq!(
            Some(out.clone()),
            handle(&st, &stats, &q, src, Transport::Udp)
        );
        assert!(cache.is_empty());
        // Garbage and responses: nothing to send, nothing cached.
        assert!(!cache.handle(&st, &stats, &[1, 2, 3], src, Transport::Udp, &mut out));
        let mut r = query("www.example.com.", RecordType::A, 1, true, false, None);
        r[2] |= 0x80;
        assert!(!cache.handle(&st, &stats, &r, src, Transport::Udp, &mut out));
        assert!(cache.is_empty());
        for i in 0..CACHE_MAX_ENTRIES + 10 {
            let q = query(
                &format!("n{i}.example.com."),
                RecordType::A,
                1,
                false,
                false,
                None,
            );
            assert!(cache.handle(&st, &stats, &q, src, Transport::Udp, &mut out));
            assert!(cache.len() <= CACHE_MAX_ENTRIES);
        }
    }

    /// RRL counts cached answers like the full path: identical responses
    /// to one client beyond the rate are dropped or slip as TC.
    #[test]
    fn rate_limiting_applies_to_cached_answers() {
        let settings = RrlSettings {
            responses_per_second: 5,
            window: 15,
            slip: 2,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
            exempt: vec![],
            max_table_size: 1000,
        };
        let st = state(Some(settings));
        let stats = Stats::default();
        let src: SocketAddr = SRC.parse().unwrap();
        let mut cache = ResponseCache::new();
        let mut out = Vec::new();
        let (mut full, mut tc, mut none) = (0, 0, 0);
        for id in 0..100u16 {
            let q = query("www.example.com.", RecordType::A, id, false, false, None);
            if !cache.handle(&st, &stats, &q, src, Transport::Udp, &mut out) {
                none += 1;
                continue;
            }
            let m = Message::from_vec(&out).unwrap();
            assert_eq!(m.metadata.id, id);
            if m.metadata.truncation {
                assert!(m.answers.is_empty());
                tc += 1;
            } else {
                full += 1;
            }
        }
        assert_eq!(cache.len(), 1);
        assert!((5..=20).contains(&full), "full answers: {full}");
        assert!(tc > 20 && none > 20, "tc {tc}, dropped {none}");
        // TCP is never limited.
        let q = query("www.example.com.", RecordType::A, 1, false, false, None);
        assert!(cache.handle(&st, &stats, &q, src, Transport::Tcp, &mut out));
        assert!(!Message::from_vec(&out).unwrap().metadata.truncation);
    }
}
