//! The query path: bytes in, bytes out (hickory-proto for the wire format),
//! and the UDP/TCP listeners around it.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::opt::{ClientSubnet, EdnsCode, EdnsOption},
        DNSClass, LowerName, RecordType,
    },
    serialize::binary::{BinDecodable, BinDecoder},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

use super::{
    gslb::{mask, Client, Gslb},
    lookup::{resolve, Answer, Catalog, Kind},
    rrl::{RateLimiter, Verdict},
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

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Smallest UDP payload every client accepts (RFC 1035).
const MIN_UDP: usize = 512;

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
                    req.queries.first().map(|q| q.query_type()),
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
    bytes: Box<[u8]>,
    truncated: bool,
    /// RRL identity and the TC reply sent when a response slips (only when
    /// RRL is configured).
    rrl: Option<(RrlKey, Box<[u8]>)>,
}

/// The query path. With `cacheable` (the caller parsed the query as a
/// plain one, see [`plain_query`]), also returns the full response for the
/// cache when the answer depends neither on the client nor on health.
fn handle_inner(
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
    let header = match Header::read(&mut BinDecoder::new(packet)) {
        Ok(h) => h,
        Err(_) => {
            bump(&stats.dropped);
            return (None, None);
        }
    };
    if header.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how reflection loops start.
        bump(&stats.dropped);
        return (None, None);
    }
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            bump(&stats.formerr);
            let mut r = Message::response(header.metadata.id, header.metadata.op_code);
            r.metadata.recursion_desired = header.metadata.recursion_desired;
            r.metadata.response_code = ResponseCode::FormErr;
            return (r.to_vec().ok(), None);
        }
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
fn apply_rrl(
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
}

/// Parses `p` as a [`PlainQuery`]; `None` for anything else (which then
/// takes the full path).
pub fn plain_query(p: &[u8]) -> Option<PlainQuery> {
    if p.len() < 17 || p[2] & 0xf8 != 0 {
        // Short, a response (QR), or an opcode other than QUERY.
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
        });
    }
    // OPT: root name, type 41, class = payload, TTL = ext-rcode, version,
    // flags; RDLENGTH 0 (options such as ECS or cookies take the full path).
    let o = &p[question_end..];
    if o.len() != 11 || o[0] != 0 || o[1..3] != [0, 41] || o[6] != 0 || o[9..11] != [0, 0] {
        return None;
    }
    Some(PlainQuery {
        question_end,
        edns_payload: Some(u16::from_be_bytes([o[3], o[4]])),
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
    map: std::collections::HashMap<Box<[u8]>, CachedResponse>,
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

    /// Answers one query like [`handle`], from the cache when it can;
    /// the response goes into `out`. Returns whether there is one to send.
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
        self.key.push(plain.edns_payload.is_some() as u8);
        self.key.extend_from_slice(&(limit as u32).to_be_bytes());
        // With RRL on, a UDP answer is usable only with its RRL identity.
        let needs_rrl = transport == Transport::Udp && state.rrl.is_some();
        if let Some(e) = self
            .map
            .get(&self.key[..])
            .filter(|e| !needs_rrl || e.rrl.is_some())
        {
            let full = match (transport, &state.rrl, &e.rrl) {
                (Transport::Udp, Some(limiter), Some((key, _))) => {
                    match apply_rrl(limiter, key, src, stats, e) {
                        (Some(v), full) => {
                            out.extend_from_slice(&v);
                            full
                        }
                        (None, _) => return false,
                    }
                }
                _ => {
                    out.extend_from_slice(&e.bytes);
                    true
                }
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

    let mut resp_edns = req.edns.as_ref().map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(state.max_udp_payload);
        e.set_version(0);
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

    if q.query_class() != DNSClass::IN {
        return (finish(r, resp_edns, ResponseCode::Refused), None);
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

fn current(shared: &Shared) -> Arc<State> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Datagrams taken (and replies sent) per system call by a UDP worker.
const UDP_BATCH: usize = 32;
/// Largest UDP query read; longer datagrams are dropped (a query is a
/// question and at most an OPT record: far below this).
const MAX_UDP_QUERY: usize = 4096;

/// Serves one UDP socket on the calling thread until `stop` is set (checked
/// at least every `poll`): `recvmmsg` takes up to [`UDP_BATCH`] queries per
/// call, answers come from a per-worker [`ResponseCache`] when they can, and
/// `sendmmsg` sends the replies of a batch together.
pub fn serve_udp_blocking(
    sock: std::net::UdpSocket,
    shared: Shared,
    stats: Arc<Stats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    poll: Duration,
) {
    use std::os::fd::AsRawFd;
    if let Err(e) = sock
        .set_nonblocking(false)
        .and_then(|_| sock.set_read_timeout(Some(poll)))
    {
        log::error!("dns: udp socket setup: {e}");
        return;
    }
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_UDP_QUERY]; UDP_BATCH];
    let mut outs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1232)).collect();
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut send_iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut send_hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut cache = ResponseCache::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for i in 0..UDP_BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_UDP_QUERY,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                UDP_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) {
                // ICMP errors from earlier sends surface here on Linux; go on.
                log::debug!("dns: udp recv: {e}");
            }
            continue;
        }
        let state = current(&shared);
        let mut k = 0;
        for i in 0..n as usize {
            let h = &hdrs[i].msg_hdr;
            if h.msg_flags & libc::MSG_TRUNC != 0 {
                bump(&stats.queries);
                bump(&stats.dropped);
                continue;
            }
            let Some(src) = sockaddr_to_std(&addrs[i]) else {
                continue;
            };
            let len = hdrs[i].msg_len as usize;
            if cache.handle(
                &state,
                &stats,
                &bufs[i][..len],
                src,
                Transport::Udp,
                &mut outs[k],
            ) {
                send_iovs[k] = libc::iovec {
                    iov_base: outs[k].as_mut_ptr().cast(),
                    iov_len: outs[k].len(),
                };
                let sh = &mut send_hdrs[k].msg_hdr;
                sh.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                sh.msg_namelen = h.msg_namelen;
                sh.msg_iov = &mut send_iovs[k];
                sh.msg_iovlen = 1;
                sh.msg_control = std::ptr::null_mut();
                sh.msg_controllen = 0;
                sh.msg_flags = 0;
                k += 1;
            }
        }
        let mut sent = 0;
        while sent < k {
            // SAFETY: headers sent..k point at live replies and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    send_hdrs[sent..].as_mut_ptr(),
                    (k - sent) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // This reply cannot go (e.g. an unreachable source); skip it.
                log::debug!("dns: udp send: {e}");
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
}

/// A `recvmmsg` source address as a [`SocketAddr`] (IPv4 or IPv6).
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Accepts TCP connections until the task is aborted.
pub async fn serve_tcp(
    listener: TcpListener,
    shared: Shared,
    stats: Arc<Stats>,
    idle: Duration,
    max_clients: usize,
) {
    let limit = Arc::new(Semaphore::new(max_clients));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("dns: tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            log::debug!("dns: too many tcp clients, closing {peer}");
            drop(stream);
            continue;
        };
        let (shared, stats) = (shared.clone(), stats.clone());
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(stream, peer, shared, stats, idle).await {
                log::debug!("dns: tcp {peer}: {e}");
            }
        });
    }
}

async fn serve_conn(
    mut s: TcpStream,
    peer: SocketAddr,
    shared: Shared,
    stats: Arc<Stats>,
    idle: Duration,
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, s.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        let n = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(idle, s.read_exact(&mut buf[..n])).await {
            Err(_) => return Ok(()),
            Ok(r) => {
                r?;
            }
        }
        let state = current(&shared);
        let Some(out) = handle(&state, &stats, &buf[..n], peer, Transport::Tcp) else {
            // Unparseable on a stream: the framing cannot be trusted, close.
            return Ok(());
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        tokio::time::timeout(idle, s.write_all(&framed))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timeout"))??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{rrl::RrlSettings, zone::Zone};
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
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
