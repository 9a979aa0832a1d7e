//! The query path: bytes in, bytes out (hickory-proto for the wire format):
//! parse, FORMERR/REFUSED/NOTIMP, the answer from the zones and GSLB, EDNS
//! and ECS, truncation to the UDP size limit, RRL.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use super::{
    chaos, cookie,
    gslb::{mask, Client, Gslb},
    lookup::{as_class_any, resolve, Answer, Catalog, Kind},
    rrl::{RateLimiter, Verdict},
};
use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::opt::{ClientSubnet, EdnsCode, EdnsOption},
        DNSClass, LowerName, RecordType,
    },
    serialize::binary::{BinDecodable, BinDecoder},
};

/// Everything a query needs; swapped whole on reload.
pub struct State {
    pub catalog: Catalog,
    pub gslb: Option<Gslb>,
    pub max_udp_payload: u16,
    pub rrl: Option<RateLimiter>,
}

pub type Shared = Arc<RwLock<Arc<State>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Counters for operators and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub queries: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub formerr: std::sync::atomic::AtomicU64,
    pub truncated: std::sync::atomic::AtomicU64,
    pub rrl_dropped: std::sync::atomic::AtomicU64,
    pub rrl_slipped: std::sync::atomic::AtomicU64,
}

pub(super) fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Smallest UDP payload every client accepts (RFC 1035).
pub(super) const MIN_UDP: usize = 512;

/// Handles one query. `None` means send nothing (not a query, unparseable,
/// or dropped by rate limiting).
pub fn handle(
    state: &State,
    stats: &Stats,
    packet: &[u8],
    src: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    bump(&stats.queries);
    handle_inner(state, stats, packet, src, transport, false).0
}

/// What RRL counts a response as ("identical responses", docs/dns.md).
#[derive(Debug, Clone)]
pub enum RrlKey {
    Answer(Kind, Option<LowerName>, Option<RecordType>),
    Code(u8),
}

impl RrlKey {
    fn of(answer: Option<&Answer>, req: &Message, resp: &Message) -> RrlKey {
        match answer {
            Some(a) => match a.kind {
                Kind::NxDomain => RrlKey::Answer(a.kind, a.zone.clone(), None),
                Kind::Referral => RrlKey::Answer(a.kind, a.final_name.clone(), None),
                _ => RrlKey::Answer(
                    a.kind,
                    a.final_name.clone(),
                    req.queries
                        .first()
                        .map(hickory_proto::op::Query::query_type),
                ),
            },
            None => RrlKey::Code(resp.metadata.response_code.low()),
        }
    }

    fn check(&self, rrl: &RateLimiter, client: std::net::IpAddr) -> Verdict {
        let now = Instant::now();
        match self {
            RrlKey::Answer(k, n, t) => rrl.check(client, (*k, n.as_ref(), *t), now),
            RrlKey::Code(c) => rrl.check(client, (*c, 0u8), now),
        }
    }
}

/// A response that depends only on the query's bytes after the header
/// (question, EDNS presence, size limit) and on the zones: kept encoded and
/// reused with the ID and the RD/CD bits of each new query.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub(super) bytes: Box<[u8]>,
    pub(super) truncated: bool,
    /// RRL identity and the TC reply sent when a response slips (only when
    /// RRL is configured).
    pub(super) rrl: Option<(RrlKey, Box<[u8]>)>,
}

/// The query path. With `cacheable` (the caller parsed the query as a
/// plain one, see [`plain_query`](super::cache::plain_query)), also
/// returns the full response for the cache when the answer depends neither
/// on the client nor on health.
pub(super) fn handle_inner(
    state: &State,
    stats: &Stats,
    packet: &[u8],
    src: SocketAddr,
    transport: Transport,
    cacheable: bool,
) -> (Option<Vec<u8>>, Option<CachedResponse>) {
    if packet.len() < 12 {
        bump(&stats.dropped);
        return (None, None);
    }
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        bump(&stats.dropped);
        return (None, None);
    };
    if header.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how reflection loops start.
        bump(&stats.dropped);
        return (None, None);
    }
    let Ok(req) = Message::from_vec(packet) else {
        bump(&stats.formerr);
        let mut r = Message::response(header.metadata.id, header.metadata.op_code);
        r.metadata.recursion_desired = header.metadata.recursion_desired;
        r.metadata.response_code = ResponseCode::FormErr;
        return (r.to_vec().ok(), None);
    };
    let (resp, answer) = respond(state, &req, src);
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => udp_limit(&req, state.max_udp_payload),
    };
    let rrl = match (transport, &state.rrl) {
        (Transport::Udp, Some(rrl)) => Some((rrl, RrlKey::of(answer.as_ref(), &req, &resp))),
        _ => None,
    };
    let slip = |resp: &Message| {
        let mut t = resp.truncate();
        t.metadata.id = resp.metadata.id;
        t.to_vec().ok()
    };
    if cacheable && !answer.as_ref().is_some_and(|a| a.dynamic) {
        let slipped = rrl.as_ref().and_then(|_| slip(&resp));
        let Some(full) = encode_within(resp, answer.as_ref(), limit, stats) else {
            return (None, None);
        };
        // Only truncation sets TC in our responses.
        let truncated = full.len() > 2 && full[2] & 0x02 != 0;
        let entry = CachedResponse {
            bytes: full.clone().into_boxed_slice(),
            truncated,
            rrl: match (&rrl, slipped) {
                (Some((_, key)), Some(s)) => Some((key.clone(), s.into_boxed_slice())),
                _ => None,
            },
        };
        if let Some((limiter, key)) = &rrl {
            let (send, _) = apply_rrl(limiter, key, src, stats, &entry);
            return (send, Some(entry));
        }
        return (Some(full), Some(entry));
    }
    if let Some((limiter, key)) = &rrl {
        match key.check(limiter, src.ip()) {
            Verdict::Send => {}
            Verdict::Drop => {
                bump(&stats.rrl_dropped);
                return (None, None);
            }
            Verdict::Slip => {
                bump(&stats.rrl_slipped);
                return (slip(&resp), None);
            }
        }
    }
    (encode_within(resp, answer.as_ref(), limit, stats), None)
}

/// RRL for a cached response: what to send (the full bytes, the slip, or
/// nothing) and whether it is the full response.
pub(super) fn apply_rrl(
    limiter: &RateLimiter,
    key: &RrlKey,
    src: SocketAddr,
    stats: &Stats,
    entry: &CachedResponse,
) -> (Option<Vec<u8>>, bool) {
    match key.check(limiter, src.ip()) {
        Verdict::Send => (Some(entry.bytes.to_vec()), true),
        Verdict::Drop => {
            bump(&stats.rrl_dropped);
            (None, false)
        }
        Verdict::Slip => {
            bump(&stats.rrl_slipped);
            (entry.rrl.as_ref().map(|(_, s)| s.to_vec()), false)
        }
    }
}

/// Largest UDP response for this query: the client's EDNS payload size (512
/// without EDNS, and never below 512), capped by our own maximum.
pub fn udp_limit(req: &Message, our_max: u16) -> usize {
    let offered = req
        .edns
        .as_ref()
        .map_or(MIN_UDP, |e| e.max_payload() as usize);
    offered.clamp(MIN_UDP, (our_max as usize).max(MIN_UDP))
}

/// Encodes `resp` in at most `limit` bytes: first whole; then without the
/// additional section (unless it carries referral glue); then, for positive
/// answers, without the authority section; else an empty truncated message
/// (TC) so the client retries over TCP.
fn encode_within(
    mut resp: Message,
    answer: Option<&Answer>,
    limit: usize,
    stats: &Stats,
) -> Option<Vec<u8>> {
    let fits = |m: &Message| m.to_vec().ok().filter(|v| v.len() <= limit);
    if let Some(v) = fits(&resp) {
        return Some(v);
    }
    let kind = answer.map(|a| a.kind);
    if kind != Some(Kind::Referral) && !resp.additionals.is_empty() {
        resp.additionals.clear();
        if let Some(v) = fits(&resp) {
            return Some(v);
        }
    }
    if kind == Some(Kind::Positive) && !resp.authorities.is_empty() {
        resp.authorities.clear();
        if let Some(v) = fits(&resp) {
            return Some(v);
        }
    }
    bump(&stats.truncated);
    let mut t = resp.truncate();
    t.metadata.id = resp.metadata.id;
    match t.to_vec() {
        Ok(v) if v.len() <= limit => Some(v),
        _ => {
            // Even the question does not fit (a long name in a 512-byte
            // budget cannot happen: names are at most 255 bytes).
            let mut e = Message::response(resp.metadata.id, resp.metadata.op_code);
            e.metadata.truncation = true;
            e.to_vec().ok()
        }
    }
}

/// ECS option of the query, checked per RFC 7871 section 7.1.2.
fn client_subnet(edns: &Edns) -> Result<Option<ClientSubnet>, ()> {
    let mut found = None;
    for (code, opt) in &edns.options().options {
        if *code != EdnsCode::Subnet {
            continue;
        }
        let EdnsOption::Subnet(s) = opt else {
            return Err(());
        };
        if found.is_some() {
            return Err(());
        }
        let max = if s.addr().is_ipv4() { 32 } else { 128 };
        if s.source_prefix() > max || s.scope_prefix() != 0 {
            return Err(());
        }
        if mask(s.addr(), s.source_prefix()) != s.addr() {
            return Err(());
        }
        found = Some(*s);
    }
    Ok(found)
}

/// Builds the response to a parsed query. Also returns the answer (when the
/// zones were consulted) for rate limiting and truncation.
pub fn respond(state: &State, req: &Message, src: SocketAddr) -> (Message, Option<Answer>) {
    let mut r = Message::response(req.metadata.id, req.metadata.op_code);
    r.metadata.recursion_desired = req.metadata.recursion_desired;
    r.metadata.checking_disabled = req.metadata.checking_disabled;

    let mut resp_edns = req.edns.as_ref().map(|q| {
        let mut e = Edns::new();
        e.set_max_payload(state.max_udp_payload);
        e.set_version(0);
        // RFC 3225: the DO bit is copied into the response. The zones are
        // not signed, so it adds no records.
        e.set_dnssec_ok(q.flags().dnssec_ok);
        e
    });
    let finish = |mut r: Message, edns: Option<Edns>, code: ResponseCode| {
        r.metadata.response_code = code;
        if let Some(e) = edns {
            r.set_edns(e);
        }
        r
    };

    if req.metadata.op_code != OpCode::Query {
        r.add_queries(req.queries.iter().take(1).cloned());
        return (finish(r, resp_edns, ResponseCode::NotImp), None);
    }
    if req.metadata.response_code.low() != 0 {
        // A query with an RCODE set in its header: FORMERR, without the
        // question, as NSD answers it.
        return (finish(r, resp_edns, ResponseCode::FormErr), None);
    }
    // DNS cookies (RFC 7873): every response to a query with a client
    // cookie carries it back with our server cookie.
    let mut bad_server_cookie = false;
    if let (Some(edns), Some(e)) = (&req.edns, resp_edns.as_mut()) {
        match cookie::parse(edns) {
            Err(cookie::Malformed) => {
                r.add_queries(req.queries.iter().take(1).cloned());
                return (finish(r, resp_edns, ResponseCode::FormErr), None);
            }
            Ok(Some(c)) => {
                let reply = cookie::reply(cookie::process_secret(), &c, src.ip(), cookie::now());
                bad_server_cookie = reply.bad_server_cookie;
                e.options_mut().insert(reply.edns_option());
            }
            Ok(None) => {}
        }
    }
    let has_cookie = resp_edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::Cookie).is_some());
    if req.queries.is_empty() && has_cookie && req.answers.is_empty() && req.authorities.is_empty()
    {
        // RFC 7873 5.4: a query for a server cookie only. BADCOOKIE when
        // the server cookie it sent is not valid.
        let code = match req.edns.as_ref().map(Edns::version) {
            Some(v) if v > 0 => ResponseCode::BADVERS,
            _ if bad_server_cookie => ResponseCode::BADCOOKIE,
            _ => ResponseCode::NoError,
        };
        return (finish(r, resp_edns, code), None);
    }
    if req.queries.len() != 1 {
        // RFC 9619: a QUERY has exactly one question.
        return (finish(r, resp_edns, ResponseCode::FormErr), None);
    }
    let q: &Query = &req.queries[0];
    r.add_query(q.clone());

    let mut client = Client::from_source(src.ip());
    if let Some(edns) = &req.edns {
        if edns.version() > 0 {
            return (finish(r, resp_edns, ResponseCode::BADVERS), None);
        }
        match client_subnet(edns) {
            Err(()) => return (finish(r, resp_edns, ResponseCode::FormErr), None),
            Ok(Some(ecs)) => {
                if ecs.source_prefix() > 0 {
                    client = Client {
                        addr: ecs.addr(),
                        known_len: ecs.source_prefix(),
                        from_ecs: true,
                    };
                }
                // Echo the option; the scope is set below when an answer depends on it.
                if let Some(e) = resp_edns.as_mut() {
                    e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                        ecs.addr(),
                        ecs.source_prefix(),
                        0,
                    )));
                }
            }
            Ok(None) => {}
        }
    }

    let class_any = q.query_class() == DNSClass::ANY;
    match q.query_class() {
        // Class ANY is answered from the zones (IN) as NSD does; see
        // `lookup::as_class_any`.
        DNSClass::IN | DNSClass::ANY => {}
        DNSClass::CH => {
            // Identity queries; not authoritative data (no AA), as NSD.
            let (code, rec) = chaos::answer(state.catalog.server_info(), q.name(), q.query_type());
            r.answers.extend(rec);
            return (finish(r, resp_edns, code), None);
        }
        _ => return (finish(r, resp_edns, ResponseCode::Refused), None),
    }
    match q.query_type() {
        RecordType::AXFR | RecordType::IXFR => {
            return (finish(r, resp_edns, ResponseCode::Refused), None);
        }
        RecordType::OPT | RecordType::Unknown(0) => {
            return (finish(r, resp_edns, ResponseCode::FormErr), None);
        }
        _ => {}
    }

    let mut answer = resolve(
        &state.catalog,
        state.gslb.as_ref(),
        q.name(),
        q.query_type(),
        &client,
    );
    if class_any {
        as_class_any(&state.catalog, &mut answer, q.query_type());
    }
    r.metadata.authoritative = answer.authoritative;
    // The records move into the response; callers only read the answer's
    // kind and whether it is dynamic.
    r.answers = std::mem::take(&mut answer.answers);
    r.authorities = std::mem::take(&mut answer.authority);
    r.additionals = std::mem::take(&mut answer.additional);
    if let (Some(scope), Some(e)) = (answer.ecs_scope, resp_edns.as_mut()) {
        if let Some(EdnsOption::Subnet(s)) = e.options().get(EdnsCode::Subnet).cloned() {
            e.options_mut().remove(EdnsCode::Subnet);
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                s.addr(),
                s.source_prefix(),
                scope,
            )));
        }
    }
    let code = answer.rcode;
    (finish(r, resp_edns, code), Some(answer))
}

pub(super) fn current(shared: &Shared) -> Arc<State> {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}
