//! One probe of one target: TCP connect, HTTP GET, or a DNS query over UDP.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::{
    config::{CheckKind, HealthCheck, StatusRanges},
    monitor::Target,
    tunnel::{self, Tunnel},
};

/// Why a probe failed. `Display` is the operator-facing reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    Timeout(Duration),
    ConnectionRefused,
    Io(String),
    /// The HTTP status was outside the accepted ranges.
    HttpStatus(u16),
    /// The HTTP response was not HTTP.
    HttpMalformed(String),
    /// The DNS answer did not parse or did not match the query.
    DnsMalformed(String),
    /// The DNS server answered SERVFAIL.
    DnsRcode(ResponseCode),
    /// A probe through a DSR tunnel failed (see [`super::tunnel`]).
    Tunnel(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Timeout(d) => write!(f, "timeout after {}ms", d.as_millis()),
            ProbeError::ConnectionRefused => f.write_str("connection refused"),
            ProbeError::Io(e) | ProbeError::Tunnel(e) => write!(f, "{e}"),
            ProbeError::HttpStatus(s) => write!(f, "status {s}"),
            ProbeError::HttpMalformed(e) => write!(f, "malformed HTTP response: {e}"),
            ProbeError::DnsMalformed(e) => write!(f, "malformed DNS answer: {e}"),
            ProbeError::DnsRcode(r) => write!(f, "DNS answer with rcode {r}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<std::io::Error> for ProbeError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ProbeError::ConnectionRefused
        } else {
            ProbeError::Io(e.to_string())
        }
    }
}

/// Outcome of one probe: the latency on success.
pub type ProbeResult = Result<Duration, ProbeError>;

/// The address a check actually probes: the check's `port` overrides the target's.
pub fn probe_addr(target: SocketAddr, check: &HealthCheck) -> SocketAddr {
    match check.port {
        Some(p) => SocketAddr::new(target.ip(), p),
        None => target,
    }
}

/// Runs one probe of `check` against `target` (the check's `port`, if set,
/// replaces the target's port). Never takes longer than `check.timeout`.
pub async fn probe(target: SocketAddr, check: &HealthCheck) -> ProbeResult {
    let addr = probe_addr(target, check);
    let start = Instant::now();
    let fut = async {
        match &check.kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => probe_tcp(addr).await,
            CheckKind::Http { path, host, expect } => {
                probe_http(addr, path, host.as_deref(), expect).await
            }
            CheckKind::UdpDns { query, qtype } => probe_dns(addr, query, *qtype).await,
        }
    };
    match timeout(check.timeout, fut).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

/// Runs one probe of `target`: as [`probe`], or through its DSR tunnel
/// when it has one (see [`super::tunnel`]).
pub async fn probe_target(target: &Target) -> ProbeResult {
    let Some(t) = &target.tunnel else {
        return probe(target.addr, &target.check).await;
    };
    let check = &target.check;
    let addr = probe_addr(target.addr, check);
    let start = Instant::now();
    let fut = async {
        match &check.kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => tunnel::probe_syn(addr.ip(), addr.port(), t).await,
            CheckKind::Http { path, host, expect } => {
                let (syn, http) = tokio::join!(
                    tunnel::probe_syn(addr.ip(), addr.port(), t),
                    probe_http(addr, path, host.as_deref(), expect)
                );
                syn.and(http)
            }
            CheckKind::UdpDns { query, qtype } => probe_dns_tunnel(addr, t, query, *qtype).await,
        }
    };
    match timeout(check.timeout, fut).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError::Tunnel(format!(
            "no answer from {} through the {} tunnel within {}ms (is the VIP on the real's loopback, and is decap running?)",
            SocketAddr::new(t.vip, addr.port()),
            t.encap_name(),
            check.timeout.as_millis()
        ))),
    }
}

async fn probe_tcp(addr: SocketAddr) -> Result<(), ProbeError> {
    let s = TcpStream::connect(addr).await?;
    drop(s);
    Ok(())
}

/// Largest response head read before giving up on finding the status line.
const MAX_HTTP_HEAD: usize = 8192;

async fn probe_http(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expect: &StatusRanges,
) -> Result<(), ProbeError> {
    let mut s = TcpStream::connect(addr).await?;
    let host = match host {
        Some(h) => h.to_string(),
        None => match addr {
            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        },
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(ProbeError::HttpMalformed(
                "no status line in the first 8 KiB".into(),
            ));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProbeError::HttpMalformed(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed inside the status line".into()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status_line(&buf[..line_end])?;
    if expect.contains(status) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus(status))
    }
}

/// `HTTP/1.1 200 OK` → 200.
pub fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        let shown: String = text.chars().take(40).collect();
        return Err(ProbeError::HttpMalformed(format!("status line `{shown}`")));
    }
    let code = parts.next().unwrap_or("");
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=599).contains(&c) => Ok(c),
        _ => Err(ProbeError::HttpMalformed(format!("status code `{code}`"))),
    }
}

async fn probe_dns(addr: SocketAddr, name: &Name, qtype: RecordType) -> Result<(), ProbeError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    let (wire, id) = dns_query(name, qtype)?;
    sock.send(&wire).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A stray datagram with another ID is not ours: keep waiting (the
        // caller's timeout bounds this).
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        let m =
            Message::from_vec(&buf[..n]).map_err(|e| ProbeError::DnsMalformed(e.to_string()))?;
        return check_dns_answer(&m, id, name, qtype);
    }
}

async fn probe_dns_tunnel(
    addr: SocketAddr,
    t: &Tunnel,
    name: &Name,
    qtype: RecordType,
) -> Result<(), ProbeError> {
    let (wire, id) = dns_query(name, qtype)?;
    let answer = tunnel::exchange_udp(addr.ip(), addr.port(), t, &wire, id).await?;
    let m = Message::from_vec(&answer).map_err(|e| ProbeError::DnsMalformed(e.to_string()))?;
    check_dns_answer(&m, id, name, qtype)
}

/// A query for `name`/`qtype` on the wire, and its ID.
fn dns_query(name: &Name, qtype: RecordType) -> Result<(Vec<u8>, u16), ProbeError> {
    let mut q = Message::query();
    q.metadata.recursion_desired = false;
    q.add_query(Query::query(name.clone(), qtype));
    let id = q.metadata.id;
    let wire = q
        .to_vec()
        .map_err(|e| ProbeError::Io(format!("cannot encode query: {e}")))?;
    Ok((wire, id))
}

/// A well-formed answer to our query: response bit, our ID, our question,
/// and any RCODE but SERVFAIL (a server that answers REFUSED or NXDOMAIN is
/// alive and answering).
pub fn check_dns_answer(
    m: &Message,
    id: u16,
    name: &Name,
    qtype: RecordType,
) -> Result<(), ProbeError> {
    if m.metadata.message_type != MessageType::Response {
        return Err(ProbeError::DnsMalformed("QR bit not set".into()));
    }
    if m.metadata.id != id {
        return Err(ProbeError::DnsMalformed("ID mismatch".into()));
    }
    if m.metadata.op_code != OpCode::Query {
        return Err(ProbeError::DnsMalformed("unexpected opcode".into()));
    }
    match m.queries.as_slice() {
        [q] if q.name().eq_case(name) || q.name() == name => {
            if q.query_type() != qtype {
                return Err(ProbeError::DnsMalformed("question type mismatch".into()));
            }
        }
        [] if m.metadata.response_code != ResponseCode::NoError => {}
        _ => return Err(ProbeError::DnsMalformed("question mismatch".into())),
    }
    if m.metadata.response_code == ResponseCode::ServFail {
        return Err(ProbeError::DnsRcode(ResponseCode::ServFail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK").unwrap(), 200);
        assert_eq!(parse_status_line(b"HTTP/1.0 503").unwrap(), 503);
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc OK").is_err());
        assert!(parse_status_line(b"").is_err());
    }

    #[test]
    fn dns_answer_checks() {
        let name = Name::from_ascii("example.com.").unwrap();
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::SOA));
        assert!(check_dns_answer(&m, 7, &name, RecordType::SOA).is_ok());
        assert!(check_dns_answer(&m, 8, &name, RecordType::SOA).is_err());
        assert!(check_dns_answer(&m, 7, &name, RecordType::A).is_err());
        m.metadata.response_code = ResponseCode::Refused;
        assert!(check_dns_answer(&m, 7, &name, RecordType::SOA).is_ok());
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(
            check_dns_answer(&m, 7, &name, RecordType::SOA)
                .unwrap_err()
                .to_string(),
            "DNS answer with rcode Server Failure"
        );
        let q = Message::query();
        assert!(check_dns_answer(&q, q.metadata.id, &name, RecordType::SOA).is_err());
    }
}
