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
    net::{TcpListener, TcpStream, UdpSocket},
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
    if packet.len() < 12 {
        bump(&stats.dropped);
        return None;
    }
    let header = match Header::read(&mut BinDecoder::new(packet)) {
        Ok(h) => h,
        Err(_) => {
            bump(&stats.dropped);
            return None;
        }
    };
    if header.metadata.message_type == MessageType::Response {
        // Never answer a response: that is how reflection loops start.
        bump(&stats.dropped);
        return None;
    }
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            bump(&stats.formerr);
            let mut r = Message::response(header.metadata.id, header.metadata.op_code);
            r.metadata.recursion_desired = header.metadata.recursion_desired;
            r.metadata.response_code = ResponseCode::FormErr;
            return r.to_vec().ok();
        }
    };
    let (resp, answer) = respond(state, &req, src);
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => udp_limit(&req, state.max_udp_payload),
    };
    if transport == Transport::Udp {
        if let Some(rrl) = &state.rrl {
            let verdict = match &answer {
                Some(a) => {
                    let ident: (Kind, Option<&LowerName>, Option<RecordType>) = match a.kind {
                        Kind::NxDomain => (a.kind, a.zone.as_ref(), None),
                        Kind::Referral => (a.kind, a.final_name.as_ref(), None),
                        _ => (
                            a.kind,
                            a.final_name.as_ref(),
                            req.queries.first().map(|q| q.query_type()),
                        ),
                    };
                    rrl.check(src.ip(), ident, Instant::now())
                }
                None => rrl.check(
                    src.ip(),
                    (resp.metadata.response_code.low(), 0u8),
                    Instant::now(),
                ),
            };
            match verdict {
                Verdict::Send => {}
                Verdict::Drop => {
                    bump(&stats.rrl_dropped);
                    return None;
                }
                Verdict::Slip => {
                    bump(&stats.rrl_slipped);
                    let mut t = resp.truncate();
                    t.metadata.id = resp.metadata.id;
                    return t.to_vec().ok();
                }
            }
        }
    }
    encode_within(resp, answer.as_ref(), limit, stats)
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

    let answer = resolve(
        &state.catalog,
        state.gslb.as_ref(),
        q.name(),
        q.query_type(),
        &client,
    );
    r.metadata.authoritative = answer.authoritative;
    r.answers = answer.answers.clone();
    r.authorities = answer.authority.clone();
    r.additionals = answer.additional.clone();
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

/// Serves one UDP socket until the task is aborted.
pub async fn serve_udp(sock: Arc<UdpSocket>, shared: Shared, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; go on.
                log::debug!("dns: udp recv: {e}");
                continue;
            }
        };
        let state = current(&shared);
        if let Some(out) = handle(&state, &stats, &buf[..n], src, Transport::Udp) {
            if let Err(e) = sock.send_to(&out, src).await {
                log::debug!("dns: udp send to {src}: {e}");
            }
        }
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
