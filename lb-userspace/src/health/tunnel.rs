//! Probes of a DSR VIP's real through the tunnel the data plane uses.
//!
//! A DSR real only serves if three things hold: it strips the tunnel
//! (`[decap]`, or the kernel's tunnel devices), it holds the VIP on a local
//! interface (usually `lo`), and its service answers on the VIP. A probe to
//! the real's own address checks none of them. So for a DSR VIP the probe
//! is the packet a client would send, addressed to the VIP, encapsulated
//! exactly as `lb_xdp` encapsulates it (IP in IP by the families, or GUE
//! to the VIP's `gue_port`), and sent to the real with a raw socket (no
//! tunnel device or kernel module is needed on the LB host).
//!
//! * `tcp`: a SYN to VIP:port from one of this host's addresses. The real
//!   strips the tunnel and its stack answers SYN-ACK from the VIP straight
//!   to that address (DSR: not encapsulated), which a raw TCP socket here
//!   sees (a socket filter lets only this probe's ports through). SYN-ACK
//!   with our ISN + 1 → pass; RST → connection refused; nothing → failure.
//!   After a SYN-ACK the prober sends an encapsulated RST, so the real's
//!   half-open connection closes at once. This host's kernel answers the
//!   SYN-ACK with a RST of its own as well (no socket owns the port); that
//!   one goes to the VIP by the routing table like any other packet.
//! * `udp-dns`: the query, in a UDP datagram to VIP:port, encapsulated the
//!   same way, from a UDP socket bound here; only an answer from VIP:port
//!   counts (a client's connected socket would drop any other).
//! * `http`: the SYN probe through the tunnel, and the HTTP request to the
//!   real's own address as for any other real; both must pass. The HTTP
//!   exchange itself does not travel the tunnel.
//!
//! The inner source address is this host's source towards the real when
//! the VIP and the real share a family, else its source towards the VIP
//! (the real answers it as it answers clients).

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket},
};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use rand::Rng;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::{io::unix::AsyncFd, net::UdpSocket};

use super::probe::ProbeError;

/// How a DSR VIP's packets reach its reals; a target with one is probed
/// through it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// The VIP: the inner destination.
    pub vip: IpAddr,
    /// GUE's UDP port on the real; `None`: IP in IP.
    pub gue_port: Option<u16>,
}

impl Tunnel {
    /// `ipip` or `gue:PORT`, as in the VIP's mode.
    pub fn encap_name(&self) -> String {
        match self.gue_port {
            None => "ipip".into(),
            Some(p) => format!("gue:{p}"),
        }
    }
}

const IPPROTO_IPIP: i32 = 4;
const IPPROTO_IPV6: i32 = 41;
const TTL: u8 = 64;
/// MSS the SYN offers: small enough for any tunnel overhead.
const SYN_MSS: u16 = 1220;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The inner source: this host's address towards the real (same family as
/// the VIP) or towards the VIP (mixed families).
fn inner_source(real: IpAddr, vip: IpAddr) -> Result<IpAddr, ProbeError> {
    let towards = if real.is_ipv4() == vip.is_ipv4() {
        real
    } else {
        vip
    };
    let bind: SocketAddr = if towards.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = StdUdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(towards, 9)).map_err(|e| {
        ProbeError::Io(format!(
            "no route towards {towards} for a probe through the tunnel: {e}"
        ))
    })?;
    let src = s.local_addr()?.ip();
    if src == vip || src.is_unspecified() {
        return Err(ProbeError::Io(format!(
            "no address of {vip}'s family to probe it from"
        )));
    }
    Ok(src)
}

/// Ones' complement sum of `data` (big-endian words) added to `sum`.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*b, 0]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IP packet from `src` to `dst` carrying `l4` (a TCP or UDP header
/// and payload whose checksum field is zero); the checksum is filled in.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
    let len = l4.len();
    let mut pseudo = 0u32;
    let mut out = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&rand::rng().random::<u16>().to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = TTL;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = fold(sum_words(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            pseudo = sum_words(pseudo, &s.octets());
            pseudo = sum_words(pseudo, &d.octets());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            h[6] = proto;
            h[7] = TTL;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            pseudo = sum_words(pseudo, &s.octets());
            pseudo = sum_words(pseudo, &d.octets());
            h
        }
        _ => unreachable!("inner source and VIP share a family"),
    };
    pseudo += u32::from(proto) + len as u32;
    let mut c = fold(sum_words(pseudo, &l4));
    if proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    let at = if proto == IPPROTO_TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&l4);
    out
}

/// A TCP header (no payload): SYN carries an MSS option.
pub fn tcp_segment(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let syn = flags & TCP_SYN != 0;
    let hlen = if syn { 24 } else { 20 };
    let mut t = vec![0u8; hlen];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = ((hlen / 4) as u8) << 4;
    t[13] = flags;
    let window: u16 = if flags & TCP_RST != 0 { 0 } else { 64240 };
    t[14..16].copy_from_slice(&window.to_be_bytes());
    if syn {
        t[20] = 2;
        t[21] = 4;
        t[22..24].copy_from_slice(&SYN_MSS.to_be_bytes());
    }
    t
}

/// A UDP header and `payload`.
pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// Sends `inner` (an IP packet) to `real` inside the tunnel's outer
/// headers: a raw socket of the real's family whose protocol is the inner
/// family's (the kernel writes the outer header), or a UDP datagram to the
/// GUE port (GUE variant 1: the inner IP header right after UDP's).
async fn send_encapsulated(real: IpAddr, tunnel: &Tunnel, inner: &[u8]) -> Result<(), ProbeError> {
    let inner_v4 = inner.first().is_some_and(|b| b >> 4 == 4);
    if let Some(port) = tunnel.gue_port {
        let bind: SocketAddr = if real.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind).await?;
        s.send_to(inner, SocketAddr::new(real, port)).await?;
    } else {
        let domain = if real.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let proto = if inner_v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(proto)))
            .map_err(raw_socket_error)?;
        // Only for sending: let nothing queue on it.
        s.attach_filter(&[SockFilter::new(0x06, 0, 0, 0)])?;
        s.send_to(inner, &SocketAddr::new(real, 0).into())?;
    }
    Ok(())
}

fn raw_socket_error(e: io::Error) -> ProbeError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        ProbeError::Io(format!(
            "a probe through the DSR tunnel needs a raw socket (CAP_NET_RAW): {e}"
        ))
    } else {
        ProbeError::Io(format!("raw socket: {e}"))
    }
}

/// A raw TCP socket of `family_v4`'s family that queues only segments from
/// port `remote` to port `local` (a classic BPF filter: an IPv4 raw socket
/// sees the IP header first, an IPv6 one the TCP header).
fn tcp_listener(v4: bool, remote: u16, local: u16) -> Result<AsyncFd<Socket>, ProbeError> {
    let (domain, filter) = if v4 {
        (
            Domain::IPV4,
            vec![
                SockFilter::new(0xb1, 0, 0, 0), // ldxb 4*([0]&0xf)
                SockFilter::new(0x48, 0, 0, 0), // ldh [x+0]
                SockFilter::new(0x15, 0, 3, u32::from(remote)),
                SockFilter::new(0x48, 0, 0, 2), // ldh [x+2]
                SockFilter::new(0x15, 0, 1, u32::from(local)),
                SockFilter::new(0x06, 0, 0, 0xffff),
                SockFilter::new(0x06, 0, 0, 0),
            ],
        )
    } else {
        // The TCP header at 0 (or, should a kernel show the IPv6 header
        // to the filter, at 40).
        (
            Domain::IPV6,
            vec![
                SockFilter::new(0x28, 0, 0, 0), // ldh [0]
                SockFilter::new(0x15, 0, 2, u32::from(remote)),
                SockFilter::new(0x28, 0, 0, 2), // ldh [2]
                SockFilter::new(0x15, 4, 0, u32::from(local)),
                SockFilter::new(0x28, 0, 0, 40), // ldh [40]
                SockFilter::new(0x15, 0, 3, u32::from(remote)),
                SockFilter::new(0x28, 0, 0, 42), // ldh [42]
                SockFilter::new(0x15, 0, 1, u32::from(local)),
                SockFilter::new(0x06, 0, 0, 0xffff),
                SockFilter::new(0x06, 0, 0, 0),
            ],
        )
    };
    let s = Socket::new(
        domain,
        Type::RAW,
        Some(Protocol::from(i32::from(IPPROTO_TCP))),
    )
    .map_err(raw_socket_error)?;
    s.attach_filter(&filter)?;
    s.set_nonblocking(true)?;
    // Whatever queued before the filter was attached.
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    while s.recv(&mut buf).is_ok() {}
    // SAFETY: the socket owns its descriptor, which stays open and the
    // same for as long as the `AsyncFd` holds it.
    Ok(unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?)
}

/// The next datagram on `fd`: its bytes and its source address.
async fn recv(fd: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<(usize, IpAddr)> {
    loop {
        let mut guard = fd.readable().await?;
        let r = guard.try_io(|inner| {
            let s = inner.get_ref();
            // SAFETY: `recv_from` only writes initialised bytes into the
            // buffer; the view as `MaybeUninit` does not outlive the call.
            let uninit = unsafe {
                std::slice::from_raw_parts_mut(
                    buf.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                    buf.len(),
                )
            };
            s.recv_from(uninit)
        });
        match r {
            Ok(Ok((n, from))) => {
                let ip = from
                    .as_socket()
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
                return Ok((n, ip));
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

/// The TCP header of a segment read from a raw socket (IPv4: behind the IP
/// header; IPv6: at the start).
fn tcp_header(buf: &[u8], v4: bool) -> Option<&[u8]> {
    let at = if v4 {
        if buf.first()? >> 4 != 4 || buf.get(9)? != &IPPROTO_TCP {
            return None;
        }
        usize::from(buf[0] & 0x0f) * 4
    } else {
        0
    };
    buf.get(at..at + 20)
}

/// The source of an IPv4 packet read from a raw socket.
fn v4_source(buf: &[u8]) -> Option<IpAddr> {
    let b = buf.get(12..16)?;
    Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
}

/// One SYN to VIP:`port` through the tunnel to `real`: Ok on a SYN-ACK.
pub async fn probe_syn(real: IpAddr, port: u16, tunnel: &Tunnel) -> Result<(), ProbeError> {
    let vip = tunnel.vip;
    let v4 = vip.is_ipv4();
    let src = inner_source(real, vip)?;
    let (local, isn) = {
        let mut r = rand::rng();
        (r.random_range(49152..=65535u16), r.random::<u32>())
    };
    let listener = tcp_listener(v4, port, local)?;
    let syn = ip_packet(
        src,
        vip,
        IPPROTO_TCP,
        tcp_segment(local, port, isn, 0, TCP_SYN),
    );
    send_encapsulated(real, tunnel, &syn).await?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = recv(&listener, &mut buf).await?;
        let from = if v4 {
            match v4_source(&buf[..n]) {
                Some(a) => a,
                None => continue,
            }
        } else {
            from
        };
        if from != vip {
            continue;
        }
        let Some(t) = tcp_header(&buf[..n], v4) else {
            continue;
        };
        let (sport, dport) = (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        );
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        let flags = t[13];
        if sport != port || dport != local {
            continue;
        }
        if flags & TCP_RST != 0 && (flags & TCP_ACK == 0 || ack == isn.wrapping_add(1)) {
            return Err(ProbeError::ConnectionRefused);
        }
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && ack == isn.wrapping_add(1) {
            // Close the real's half-open connection now rather than
            // after its SYN-ACK retries.
            let rst = ip_packet(
                src,
                vip,
                IPPROTO_TCP,
                tcp_segment(local, port, isn.wrapping_add(1), 0, TCP_RST),
            );
            let _ = send_encapsulated(real, tunnel, &rst).await;
            return Ok(());
        }
    }
}

/// One DNS query to VIP:`port` through the tunnel to `real`; the answer
/// must come from VIP:`port`. Returns the raw answer for the caller to
/// check.
pub async fn exchange_udp(
    real: IpAddr,
    port: u16,
    tunnel: &Tunnel,
    query: &[u8],
    id: u16,
) -> Result<Vec<u8>, ProbeError> {
    let vip = tunnel.vip;
    let src = inner_source(real, vip)?;
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).await?;
    let local = sock.local_addr()?.port();
    let packet = ip_packet(src, vip, IPPROTO_UDP, udp_datagram(local, port, query));
    send_encapsulated(real, tunnel, &packet).await?;
    let want = SocketAddr::new(vip, port);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        if n < 2 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        if from != want {
            return Err(ProbeError::Tunnel(format!(
                "the answer came from {from}, not the VIP {want} (bind the DNS server to the VIP)"
            )));
        }
        buf.truncate(n);
        return Ok(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(sum_over: &[u8]) -> bool {
        fold(sum_words(0, sum_over)) == 0
    }

    #[test]
    fn ipv4_header_and_tcp_checksums_verify() {
        let src: IpAddr = "198.18.11.1".parse().unwrap();
        let dst: IpAddr = "198.18.100.1".parse().unwrap();
        let p = ip_packet(src, dst, IPPROTO_TCP, tcp_segment(50000, 80, 7, 0, TCP_SYN));
        assert_eq!(p.len(), 20 + 24);
        assert!(verify(&p[..20]), "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 24]);
        pseudo.extend_from_slice(&p[20..]);
        assert!(verify(&pseudo), "TCP checksum");
        assert_eq!(p[20 + 13], TCP_SYN);
        assert_eq!(&p[20 + 20..20 + 24], &[2, 4, 0x04, 0xc4]);
    }

    #[test]
    fn ipv6_udp_checksum_verifies() {
        let src: IpAddr = "2001:db8:11::1".parse().unwrap();
        let dst: IpAddr = "2001:db8:100::1".parse().unwrap();
        let p = ip_packet(src, dst, IPPROTO_UDP, udp_datagram(40000, 53, b"abc"));
        assert_eq!(p.len(), 40 + 11);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 11);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[8..40]);
        pseudo.extend_from_slice(&[0, 0, 0, 11, 0, 0, 0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&p[40..]);
        assert!(verify(&pseudo), "UDP checksum");
    }

    #[test]
    fn tcp_headers_are_found() {
        let src: IpAddr = "198.18.11.1".parse().unwrap();
        let dst: IpAddr = "198.18.100.1".parse().unwrap();
        let p = ip_packet(src, dst, IPPROTO_TCP, tcp_segment(1, 2, 3, 4, TCP_ACK));
        let t = tcp_header(&p, true).unwrap();
        assert_eq!(&t[..4], &[0, 1, 0, 2]);
        assert_eq!(v4_source(&p), Some(src));
        assert!(tcp_header(&p[20..], false).is_some());
        assert!(tcp_header(&p[..30], true).is_none());
    }
}
