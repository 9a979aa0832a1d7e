//! PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary):
//! the header an L4 balancer in front writes before the client's bytes,
//! carrying the client's address.
//!
//! * [`parse`] is pure: it takes the bytes read so far and says "need
//!   more", "here is the header and its length" or why the bytes are not a
//!   valid header. It decides as early as the bytes allow (the first byte
//!   of an HTTP request or a TLS ClientHello is already a rejection).
//! * [`read_header`] reads from a stream until [`parse`] decides, in small
//!   reads; what followed the header in the last read is handed back and
//!   [`Prefixed`] replays it before the rest of the stream, so no
//!   application byte is lost.
//! * [`accept`] is what a listener with `proxy_protocol = true` does
//!   before TLS or HTTP: the trust check, the header read under a
//!   deadline, and the client address to use from then on.
//! * [`RejectCounters`]: connections closed per listener and [`Reject`]
//!   reason, exported as `lb_l7_proxy_protocol_rejected_total`.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::dns::gslb::Prefix;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's limit).
pub const V1_MAX: usize = 107;
/// The v1 preamble.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The largest v2 address block + TLVs accepted (the 16-bit length field
/// allows 65535; senders put a few hundred bytes at most there).
pub const V2_MAX_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The transport the sender accepted the client on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// v2 UNSPEC, v1 UNKNOWN, or a v2 LOCAL header.
    Unspec,
    Stream,
    Datagram,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// v2 LOCAL: the sender's own connection (a health check); the
    /// connection's real peer is the client.
    pub local: bool,
    pub transport: Transport,
    /// The client's address and the address it connected to. `None` for
    /// LOCAL, v2 UNSPEC and AF_UNIX, and v1 UNKNOWN: the real peer is used.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// Why bytes are not a valid PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "no PROXY protocol header (the first bytes match neither the v1 nor the v2 signature)"
    )]
    NoSignature,
    #[error("v2: version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("v2: command {0:#x} is neither LOCAL (0) nor PROXY (1)")]
    V2Command(u8),
    #[error("v2: family/transport byte {0:#04x} is not one of UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX stream or dgram")]
    V2Family(u8),
    #[error("v2: {len} bytes of addresses, {family} needs {need}")]
    V2ShortAddresses {
        family: &'static str,
        len: usize,
        need: usize,
    },
    #[error("v2: length {0} exceeds the {V2_MAX_LEN}-byte limit")]
    V2TooLong(usize),
    #[error("v2: the TLV at offset {0} of the address block runs past its end")]
    V2Tlv(usize),
    #[error("v1: no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    #[error("v1: {0}")]
    V1Syntax(&'static str),
    #[error("v1: `{0}` is not an {1} address")]
    V1Address(String, &'static str),
    #[error("v1: `{0}` is not a port")]
    V1Port(String),
}

/// Parses a header at the start of `buf`. `Ok(None)`: the bytes so far are
/// a valid beginning, read more. `Ok(Some((header, n)))`: the header is the
/// first `n` bytes; the rest of `buf` is application data.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(Error::NoSignature)
}

fn port_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver = buf[12] >> 4;
    let cmd = buf[12] & 0x0f;
    if ver != 2 {
        return Err(Error::V2Version(ver));
    }
    if cmd > 1 {
        return Err(Error::V2Command(cmd));
    }
    let fam = buf[13];
    let len = port_at(buf, 14) as usize;
    if len > V2_MAX_LEN {
        return Err(Error::V2TooLong(len));
    }
    let total = 16 + len;
    if cmd == 0 {
        // LOCAL: the family and the address block are to be ignored.
        if buf.len() < total {
            return Ok(None);
        }
        let h = Header {
            version: Version::V2,
            local: true,
            transport: Transport::Unspec,
            source: None,
            destination: None,
        };
        return Ok(Some((h, total)));
    }
    let (family, need, transport) = match fam {
        0x00 => ("UNSPEC", 0, Transport::Unspec),
        0x11 => ("TCP4", 12, Transport::Stream),
        0x12 => ("UDP4", 12, Transport::Datagram),
        0x21 => ("TCP6", 36, Transport::Stream),
        0x22 => ("UDP6", 36, Transport::Datagram),
        0x31 => ("UNIX stream", 216, Transport::Stream),
        0x32 => ("UNIX dgram", 216, Transport::Datagram),
        other => return Err(Error::V2Family(other)),
    };
    if len < need {
        return Err(Error::V2ShortAddresses { family, len, need });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let block = &buf[16..total];
    let (source, destination) = match fam >> 4 {
        1 => {
            let src = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let dst = Ipv4Addr::new(block[4], block[5], block[6], block[7]);
            (
                Some(SocketAddr::new(src.into(), port_at(block, 8))),
                Some(SocketAddr::new(dst.into(), port_at(block, 10))),
            )
        }
        2 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&block[..16]);
            d.copy_from_slice(&block[16..32]);
            (
                Some(SocketAddr::new(
                    Ipv6Addr::from(s).into(),
                    port_at(block, 32),
                )),
                Some(SocketAddr::new(
                    Ipv6Addr::from(d).into(),
                    port_at(block, 34),
                )),
            )
        }
        _ => (None, None),
    };
    // TLVs (type, 16-bit length, value) are skipped, but must tile the
    // rest of the block exactly.
    let mut off = need;
    while off < len {
        if len - off < 3 || len - off - 3 < port_at(block, off + 1) as usize {
            return Err(Error::V2Tlv(off));
        }
        off += 3 + port_at(block, off + 1) as usize;
    }
    let h = Header {
        version: Version::V2,
        local: false,
        transport,
        source,
        destination,
    };
    Ok(Some((h, total)))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.len() < V1_PREFIX.len() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if let Some(i) = window.iter().position(|&b| b == b'\r') {
            if i + 1 < window.len() {
                return Err(Error::V1Syntax("a CR not followed by LF"));
            }
        }
        if window
            .iter()
            .any(|&b| !(b.is_ascii_graphic() || b == b' ' || b == b'\r'))
        {
            return Err(Error::V1Syntax("a byte that is not printable ASCII"));
        }
        if buf.len() >= V1_MAX {
            return Err(Error::V1TooLong);
        }
        return Ok(None);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(Error::V1Syntax("a LF without CR"));
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    if line.iter().any(|&b| !(b.is_ascii_graphic() || b == b' ')) {
        return Err(Error::V1Syntax("a byte that is not printable ASCII"));
    }
    let line = std::str::from_utf8(line).expect("ASCII");
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or("");
    let h = match proto {
        // The rest of an UNKNOWN line is to be ignored.
        "UNKNOWN" => Header {
            version: Version::V1,
            local: false,
            transport: Transport::Unspec,
            source: None,
            destination: None,
        },
        "TCP4" | "TCP6" => {
            let f: Vec<&str> = fields.collect();
            if f.len() != 4 {
                return Err(Error::V1Syntax(
                    "TCP4/TCP6 need exactly: source destination source-port destination-port, one space apart",
                ));
            }
            let v4 = proto == "TCP4";
            let ip = |s: &str| -> Result<IpAddr, Error> {
                let bad = || Error::V1Address(s.to_string(), if v4 { "IPv4" } else { "IPv6" });
                if v4 {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad())
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad())
                }
            };
            let port = |s: &str| -> Result<u16, Error> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::V1Port(s.to_string()));
                }
                s.parse().map_err(|_| Error::V1Port(s.to_string()))
            };
            Header {
                version: Version::V1,
                local: false,
                transport: Transport::Stream,
                source: Some(SocketAddr::new(ip(f[0])?, port(f[2])?)),
                destination: Some(SocketAddr::new(ip(f[1])?, port(f[3])?)),
            }
        }
        _ => return Err(Error::V1Syntax("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some((h, lf + 1)))
}

/// Why [`read_header`] or [`accept`] gave up on a connection. Each is a
/// label value of `lb_l7_proxy_protocol_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The peer is outside `proxy_trusted`; nothing was read.
    Untrusted,
    /// The first bytes are not a PROXY protocol header (e.g. plain HTTP or TLS).
    Missing,
    /// A header that breaks the protocol's rules.
    Invalid,
    /// The peer closed (or reset) the connection before the header ended.
    Closed,
    /// No complete header within `timeouts.header`.
    Timeout,
}

impl Reject {
    pub const ALL: [Reject; 5] = [
        Reject::Untrusted,
        Reject::Missing,
        Reject::Invalid,
        Reject::Closed,
        Reject::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Untrusted => "untrusted",
            Reject::Missing => "missing",
            Reject::Invalid => "invalid",
            Reject::Closed => "closed",
            Reject::Timeout => "timeout",
        }
    }
}

/// A failed header read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Parse(#[from] Error),
    #[error("connection closed after {0} bytes, before a complete PROXY protocol header")]
    Closed(usize),
    #[error("reading the PROXY protocol header: {0}")]
    Io(io::Error),
}

impl ReadError {
    pub fn reason(&self) -> Reject {
        match self {
            ReadError::Parse(Error::NoSignature) => Reject::Missing,
            ReadError::Parse(_) => Reject::Invalid,
            ReadError::Closed(_) | ReadError::Io(_) => Reject::Closed,
        }
    }
}

/// Bytes asked for per read while looking for the end of a header.
const READ_CHUNK: usize = 256;

/// Reads a header from `s`. Returns it with the bytes read past its end
/// (to be replayed with [`Prefixed`]). Memory is bounded by the largest
/// header plus one read.
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Header, Vec<u8>), ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let have = buf.len();
        buf.resize(have + READ_CHUNK, 0);
        let n = match s.read(&mut buf[have..]).await {
            Ok(n) => n,
            Err(e) => return Err(ReadError::Io(e)),
        };
        buf.truncate(have + n);
        if n == 0 {
            return Err(ReadError::Closed(have));
        }
        if let Some((h, used)) = parse(&buf)? {
            buf.drain(..used);
            return Ok((h, buf));
        }
    }
}

/// A stream that first yields `pre` (bytes already read from `inner`), then
/// reads `inner`. Writes go straight to `inner`.
pub struct Prefixed<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, pre: Vec<u8>) -> Self {
        Prefixed { pre, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = buf.remaining().min(self.pre.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listener's PROXY protocol settings (`proxy_protocol = true`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyProtocolSpec {
    /// Peers allowed to send a header; empty: every peer.
    pub trusted: Vec<Prefix>,
}

impl ProxyProtocolSpec {
    /// Whether `peer` may send a header (v4-mapped IPv6 peers are matched
    /// as IPv4).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.trusted.is_empty() || self.trusted.iter().any(|p| p.contains(ip))
    }
}

/// A connection [`accept`] refused: the reason and what to log.
#[derive(Debug)]
pub struct Rejected {
    pub reason: Reject,
    pub detail: String,
}

/// What a `proxy_protocol` listener does first with a connection from
/// `peer`: refuse an untrusted peer without reading, read the header
/// within `deadline`, and return the stream (replaying what followed the
/// header) with the client address: the header's source, or `peer` for
/// LOCAL / UNSPEC / UNKNOWN headers; v4-mapped IPv6 as IPv4.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    spec: &ProxyProtocolSpec,
    deadline: Duration,
) -> Result<(Prefixed<S>, SocketAddr), Rejected> {
    if !spec.trusts(peer.ip()) {
        return Err(Rejected {
            reason: Reject::Untrusted,
            detail: format!("{} is not in proxy_trusted", peer.ip().to_canonical()),
        });
    }
    match tokio::time::timeout(deadline, read_header(&mut stream)).await {
        Err(_) => Err(Rejected {
            reason: Reject::Timeout,
            detail: format!("no complete PROXY protocol header within {deadline:?}"),
        }),
        Ok(Err(e)) => Err(Rejected {
            reason: e.reason(),
            detail: e.to_string(),
        }),
        Ok(Ok((h, rest))) => {
            let c = h.source.unwrap_or(peer);
            let client = SocketAddr::new(c.ip().to_canonical(), c.port());
            Ok((Prefixed::new(stream, rest), client))
        }
    }
}

/// Connections a listener closed for want of a valid header, by reason.
#[derive(Debug, Default)]
pub struct RejectCounters {
    counts: [AtomicU64; 5],
}

impl RejectCounters {
    /// Counts one rejection; returns the listener's total so far.
    pub fn count(&self, r: Reject) -> u64 {
        self.counts[r as usize].fetch_add(1, Ordering::Relaxed);
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn get(&self, r: Reject) -> u64 {
        self.counts[r as usize].load(Ordering::Relaxed)
    }
}

type Registry = Mutex<HashMap<String, Arc<RejectCounters>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The counters of the listener named `listener`, shared by every state it
/// has had (they survive reloads; the metrics read them by name).
pub fn counters(listener: &str) -> Arc<RejectCounters> {
    registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(listener.to_string())
        .or_default()
        .clone()
}

/// The rejections counted so far for `listener`, per reason.
pub fn rejected(listener: &str) -> Vec<(Reject, u64)> {
    let c = counters(listener);
    Reject::ALL.iter().map(|&r| (r, c.get(r))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(block.len() as u16).to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    fn tcp4_block() -> Vec<u8> {
        let mut b = vec![198, 18, 77, 7, 198, 18, 0, 1];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn done(buf: &[u8]) -> (Header, usize) {
        parse(buf).expect("valid").expect("complete")
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        let a: SocketAddr = s.parse().unwrap();
        a.into()
    }

    #[test]
    fn v2_tcp4_with_trailing_data() {
        let mut b = v2(1, 0x11, &tcp4_block());
        let hlen = b.len();
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, n) = done(&b);
        assert_eq!(n, hlen);
        assert_eq!(h.version, Version::V2);
        assert!(!h.local);
        assert_eq!(h.transport, Transport::Stream);
        assert_eq!(h.source, sa("198.18.77.7:40000"));
        assert_eq!(h.destination, sa("198.18.0.1:443"));
    }

    #[test]
    fn v2_tcp6_and_udp6() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        let (h, n) = done(&v2(1, 0x21, &block));
        assert_eq!(n, 16 + 36);
        assert_eq!(h.source, sa("[2001:db8::7]:40000"));
        assert_eq!(h.destination, sa("[2001:db8::1]:443"));
        let (h, _) = done(&v2(1, 0x22, &block));
        assert_eq!(h.transport, Transport::Datagram);
        assert_eq!(h.source, sa("[2001:db8::7]:40000"));
    }

    #[test]
    fn v2_local_ignores_family_and_block() {
        // LOCAL with an address block and even an undefined family byte.
        let (h, n) = done(&v2(0, 0xff, &tcp4_block()));
        assert!(h.local);
        assert_eq!(h.source, None);
        assert_eq!(n, 28);
        let (h, n) = done(&v2(0, 0x00, &[]));
        assert!(h.local);
        assert_eq!(n, 16);
    }

    #[test]
    fn v2_unspec_and_unix_carry_no_address() {
        let (h, n) = done(&v2(1, 0x00, &[]));
        assert_eq!((h.source, h.transport, n), (None, Transport::Unspec, 16));
        let (h, _) = done(&v2(1, 0x31, &[0u8; 216]));
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_tlvs_are_skipped_and_checked() {
        let mut block = tcp4_block();
        // PP2_TYPE_AUTHORITY "a.example.com", then a NOOP with no value.
        block.push(0x02);
        block.extend_from_slice(&13u16.to_be_bytes());
        block.extend_from_slice(b"a.example.com");
        block.extend_from_slice(&[0x04, 0, 0]);
        let (h, n) = done(&v2(1, 0x11, &block));
        assert_eq!(n, 16 + block.len());
        assert_eq!(h.source, sa("198.18.77.7:40000"));

        // A TLV whose length runs past the block.
        let mut bad = tcp4_block();
        bad.extend_from_slice(&[0x02, 0, 5, b'a']);
        assert_eq!(parse(&v2(1, 0x11, &bad)), Err(Error::V2Tlv(12)));
        // Two stray bytes after the addresses.
        let mut bad = tcp4_block();
        bad.extend_from_slice(&[0x02, 0]);
        assert_eq!(parse(&v2(1, 0x11, &bad)), Err(Error::V2Tlv(12)));
    }

    #[test]
    fn v2_rejections() {
        let mut b = v2(1, 0x11, &tcp4_block());
        b[12] = 0x11;
        assert_eq!(parse(&b), Err(Error::V2Version(1)));
        b[12] = 0x22;
        assert_eq!(parse(&b), Err(Error::V2Command(2)));
        b[12] = 0x21;
        b[13] = 0x13;
        assert_eq!(parse(&b), Err(Error::V2Family(0x13)));
        b[13] = 0x10;
        assert_eq!(parse(&b), Err(Error::V2Family(0x10)));
        b[13] = 0x41;
        assert_eq!(parse(&b), Err(Error::V2Family(0x41)));
        // Length shorter than the family's addresses.
        assert_eq!(
            parse(&v2(1, 0x21, &tcp4_block())),
            Err(Error::V2ShortAddresses {
                family: "TCP6",
                len: 12,
                need: 36
            })
        );
        // Length over the limit is refused from the fixed part alone.
        let mut b = v2(1, 0x11, &[]);
        b[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(parse(&b), Err(Error::V2TooLong(5000)));
        // A bad signature byte.
        let mut b = v2(1, 0x11, &tcp4_block());
        b[8] = b'X';
        assert_eq!(parse(&b), Err(Error::NoSignature));
    }

    #[test]
    fn truncated_is_incomplete_at_every_length() {
        let mut v1 = b"PROXY TCP4 198.18.77.7 198.18.0.1 40000 443\r\n".to_vec();
        let v2 = v2(1, 0x11, &tcp4_block());
        for full in [&v1, &v2] {
            for n in 0..full.len() {
                assert_eq!(parse(&full[..n]), Ok(None), "{n} bytes of {full:?}");
            }
            assert!(parse(full).unwrap().is_some());
        }
        v1.truncate(10);
        assert_eq!(parse(&v1), Ok(None));
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let b = b"PROXY TCP4 198.18.77.7 198.18.0.1 40000 443\r\nGET /";
        let (h, n) = done(b);
        assert_eq!(n, b.len() - 5);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.source, sa("198.18.77.7:40000"));
        assert_eq!(h.destination, sa("198.18.0.1:443"));

        let (h, _) = done(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n");
        assert_eq!(h.source, sa("[2001:db8::7]:40000"));

        let (h, n) = done(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.source, n), (None, 15));
        let (h, _) = done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_rejections() {
        let cases: &[(&[u8], Error)] = &[
            (
                b"PROXY TCP4 198.18.77.7 198.18.0.1 40000\r\n",
                Error::V1Syntax("TCP4/TCP6 need exactly: source destination source-port destination-port, one space apart"),
            ),
            (
                b"PROXY TCP4 198.18.77.7  198.18.0.1 40000 443\r\n",
                Error::V1Syntax("TCP4/TCP6 need exactly: source destination source-port destination-port, one space apart"),
            ),
            (
                b"PROXY TCP4 2001:db8::7 198.18.0.1 40000 443\r\n",
                Error::V1Address("2001:db8::7".into(), "IPv4"),
            ),
            (
                b"PROXY TCP6 198.18.77.7 2001:db8::1 40000 443\r\n",
                Error::V1Address("198.18.77.7".into(), "IPv6"),
            ),
            (
                b"PROXY TCP4 198.18.77.7 198.18.0.1 70000 443\r\n",
                Error::V1Port("70000".into()),
            ),
            (
                b"PROXY TCP4 198.18.77.7 198.18.0.1 +1 443\r\n",
                Error::V1Port("+1".into()),
            ),
            (
                b"PROXY UDP4 198.18.77.7 198.18.0.1 1 443\r\n",
                Error::V1Syntax("the protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                b"PROXY TCP4 198.18.77.7 198.18.0.1 1 443\n",
                Error::V1Syntax("a LF without CR"),
            ),
            (
                b"PROXY TCP4 198.18.77.7\r198.18.0.1",
                Error::V1Syntax("a CR not followed by LF"),
            ),
            (b"PROXY TCP4 \x00", Error::V1Syntax("a byte that is not printable ASCII")),
            (b"PROXZ", Error::NoSignature),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).as_ref().map(|_| ()),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn v1_oversized() {
        let mut b = b"PROXY UNKNOWN ".to_vec();
        b.resize(V1_MAX - 1, b'a');
        assert_eq!(parse(&b), Ok(None));
        b.push(b'a');
        assert_eq!(parse(&b), Err(Error::V1TooLong));
        // Exactly 107 bytes with its CRLF is fine.
        b.truncate(V1_MAX - 2);
        b.extend_from_slice(b"\r\n");
        assert_eq!(done(&b).1, V1_MAX);
    }

    #[test]
    fn garbage_is_refused_from_the_first_byte() {
        for g in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"G",
            b"\r\n\r\nX",
            b"\x00\x00",
        ] {
            assert_eq!(parse(g), Err(Error::NoSignature), "{g:?}");
        }
    }

    /// Mutated headers, each parsed at every prefix length: `parse` never
    /// panics, and its decision never changes as bytes are added (once an
    /// error, always an error; once a header, the same header and length),
    /// so reading more can only confirm it.
    #[test]
    fn decisions_are_stable_as_bytes_arrive() {
        let mut tlv = tcp4_block();
        tlv.extend_from_slice(&[0x02, 0, 3, b'a', b'b', b'c']);
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 198.18.77.7 198.18.0.1 40000 443\r\nGET".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &tlv),
            v2(0, 0x00, &[]),
            v2(1, 0x21, &[0u8; 36]),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..4000 {
            let mut b = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % (b.len() + 1);
                match next() % 4 {
                    0 if i < b.len() => b[i] = next() as u8,
                    1 => b.insert(i, next() as u8),
                    2 if i < b.len() => {
                        b.remove(i);
                    }
                    _ => b.extend(std::iter::repeat_n(next() as u8, (next() % 130) as usize)),
                }
            }
            let mut decided: Option<Result<(Header, usize), Error>> = None;
            for n in 0..=b.len() {
                let r = parse(&b[..n]);
                if let Ok(Some((_, used))) = &r {
                    assert!(*used <= n && *used <= 16 + V2_MAX_LEN, "{b:?}");
                }
                match (&decided, r) {
                    (None, Ok(None)) => {}
                    (None, Ok(Some(h))) => decided = Some(Ok(h)),
                    (None, Err(e)) => decided = Some(Err(e)),
                    (Some(Ok(h)), r) => assert_eq!(r, Ok(Some(h.clone())), "{b:?} at {n}"),
                    (Some(Err(_)), r) => assert!(r.is_err(), "{b:?} at {n}: {r:?}"),
                }
            }
        }
    }

    /// A reader that hands out `chunk` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .chunk
                .min(self.data.len() - self.pos)
                .min(buf.remaining());
            let p = self.pos;
            buf.put_slice(&self.data[p..p + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn header_split_across_small_reads_then_replayed_data() {
        let rt = rt();
        let app = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut with_tlv = tcp4_block();
        with_tlv.extend_from_slice(&[0x04, 0, 2, 0, 0]);
        let headers = [
            b"PROXY TCP4 198.18.77.7 198.18.0.1 40000 443\r\n".to_vec(),
            v2(1, 0x11, &with_tlv),
        ];
        for h in &headers {
            for chunk in [1, 2, 3, 7, 1000] {
                let mut data = h.clone();
                data.extend_from_slice(app);
                let s = Trickle {
                    data,
                    pos: 0,
                    chunk,
                };
                let (mut s, client) = rt
                    .block_on(accept(
                        s,
                        "127.0.0.1:5555".parse().unwrap(),
                        &ProxyProtocolSpec::default(),
                        Duration::from_secs(5),
                    ))
                    .unwrap();
                assert_eq!(client, "198.18.77.7:40000".parse().unwrap());
                let mut rest = Vec::new();
                rt.block_on(s.read_to_end(&mut rest)).unwrap();
                assert_eq!(rest, app, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn accept_reasons() {
        let rt = rt();
        let peer: SocketAddr = "[::ffff:127.0.0.1]:5555".parse().unwrap();
        let run = |data: &[u8], spec: &ProxyProtocolSpec| {
            let s = Trickle {
                data: data.to_vec(),
                pos: 0,
                chunk: 4,
            };
            rt.block_on(accept(s, peer, spec, Duration::from_secs(5)))
                .map(|(_, c)| c)
                .map_err(|r| r.reason)
        };
        let any = ProxyProtocolSpec::default();
        let lo = ProxyProtocolSpec {
            trusted: vec![Prefix::parse("127.0.0.0/8").unwrap()],
        };
        let other = ProxyProtocolSpec {
            trusted: vec![Prefix::parse("198.18.0.0/15").unwrap()],
        };
        let local = v2(0, 0, &[]);
        // LOCAL: the real peer, canonical (v4-mapped to v4).
        assert_eq!(run(&local, &lo), Ok("127.0.0.1:5555".parse().unwrap()));
        assert_eq!(run(&local, &other), Err(Reject::Untrusted));
        assert_eq!(run(b"GET / HTTP/1.1\r\n", &any), Err(Reject::Missing));
        assert_eq!(run(b"PROXY TCP4 x\r\n", &any), Err(Reject::Invalid));
        assert_eq!(run(b"PROXY TCP4 198", &any), Err(Reject::Closed));
        assert_eq!(run(b"", &any), Err(Reject::Closed));
        // A v4-mapped source in a TCP6 header is logged as IPv4.
        let mapped = b"PROXY TCP6 ::ffff:198.18.77.7 ::ffff:198.18.0.1 40000 443\r\n";
        assert_eq!(run(mapped, &any), Ok("198.18.77.7:40000".parse().unwrap()));
    }

    #[test]
    fn timeout_is_its_own_reason() {
        let rt = rt();
        let (client, server) = tokio::io::duplex(64);
        let r = rt.block_on(accept(
            server,
            "127.0.0.1:1".parse().unwrap(),
            &ProxyProtocolSpec::default(),
            Duration::from_millis(50),
        ));
        drop(client);
        assert_eq!(r.map(|_| ()).unwrap_err().reason, Reject::Timeout);
    }

    #[test]
    fn counters_by_name() {
        let c = counters("proxyproto-unit");
        assert_eq!(c.count(Reject::Missing), 1);
        assert_eq!(c.count(Reject::Untrusted), 2);
        let r = rejected("proxyproto-unit");
        assert!(r.contains(&(Reject::Missing, 1)) && r.contains(&(Reject::Untrusted, 1)));
        assert!(r.contains(&(Reject::Timeout, 0)));
    }
}
