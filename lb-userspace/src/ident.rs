//! The identity of a VIP and of a real: one type each, used by the config,
//! the admin API and its client, metrics and the data plane.
//!
//! Text forms (what operators type and read):
//!
//! | type | form | examples |
//! |---|---|---|
//! | [`VipId`] | `address:port/protocol`, IPv6 in brackets, port `*` for all ports | `198.18.100.1:80/tcp`, `[2001:db8::1]:53/udp`, `198.18.100.1:*/tcp` |
//! | [`RealId`] | `address:port`, IPv6 in brackets; a bare address means port 0 | `198.18.11.2:8080`, `[2001:db8::2]:8080` |
//!
//! [`RealId::maglev_identity`] is the byte string the Maglev ring hashes for
//! a real. It is part of the deployment's contract (every LB node of a VIP
//! must compute the same ring, also across upgrades), so it is specified
//! here byte for byte and does not follow the display form.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use lb_common::{VipKey, FAMILY_V4, FAMILY_V6};

/// L4 protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The protocol of an IP protocol number, if it is one a VIP can have.
    pub fn from_ip_proto(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = IdError;
    /// `tcp` or `udp`, any case.
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(IdError(format!("`{s}` is not supported (tcp or udp)"))),
        }
    }
}

/// Why a VIP or real identity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

/// A VIP: address, port (0 = all ports) and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub address: IpAddr,
    /// 0 = all ports.
    pub port: u16,
    pub protocol: Protocol,
}

impl VipId {
    pub fn new(address: IpAddr, port: u16, protocol: Protocol) -> VipId {
        VipId {
            address,
            port,
            protocol,
        }
    }

    /// The key of this VIP in the data plane's VIP map.
    pub fn map_key(&self) -> VipKey {
        let (addr, family) = addr_bytes(self.address);
        VipKey {
            addr,
            port: self.port.to_be(),
            proto: self.protocol.ip_proto(),
            family,
        }
    }

    /// The VIP a data plane VIP key names (`None` for a key no VIP can have).
    pub fn from_map_key(k: &VipKey) -> Option<VipId> {
        Some(VipId {
            address: key_addr(&k.addr, k.family)?,
            port: u16::from_be(k.port),
            protocol: Protocol::from_ip_proto(k.proto)?,
        })
    }
}

impl fmt::Display for VipId {
    /// `198.18.100.1:80/tcp`, `[2001:db8::1]:80/tcp`, `198.18.100.1:*/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:")?,
            IpAddr::V6(a) => write!(f, "[{a}]:")?,
        }
        match self.port {
            0 => f.write_str("*")?,
            p => write!(f, "{p}")?,
        }
        write!(f, "/{}", self.protocol)
    }
}

impl FromStr for VipId {
    type Err = IdError;
    /// The display form; the protocol in any case.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || {
            IdError(format!(
                "`{s}` is not a VIP (address:port/protocol, e.g. 198.18.100.1:80/tcp or [2001:db8::1]:*/udp)"
            ))
        };
        let (hostport, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let protocol: Protocol = proto.parse().map_err(|_| bad())?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let address: IpAddr = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6),
            None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        }
        .ok_or_else(bad)?;
        let port = if port == "*" {
            0
        } else {
            port.parse().map_err(|_| bad())?
        };
        Ok(VipId::new(address, port, protocol))
    }
}

/// A real server of a VIP: address and port (0 for a real of an all-ports
/// VIP, which keeps the client's destination port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealId {
    pub address: IpAddr,
    pub port: u16,
}

/// Version of [`RealId::maglev_identity`]'s encoding. A new version would
/// move flows on every LB node that runs it, so it may only change with a
/// release note telling operators to upgrade every node of a VIP together.
pub const MAGLEV_IDENTITY_VERSION: u32 = 1;

impl RealId {
    pub fn new(address: IpAddr, port: u16) -> RealId {
        RealId { address, port }
    }

    /// The bytes the Maglev ring hashes for this real (encoding version
    /// [`MAGLEV_IDENTITY_VERSION`] = 1), stable across nodes, restarts and
    /// releases:
    ///
    /// * IPv4: ASCII `A.B.C.D:P`, each octet and the port in decimal without
    ///   leading zeros (`198.18.11.2:8080`; port 0 is `:0`).
    /// * IPv6: ASCII `[H]:P`, `H` the RFC 5952 text form (lower-case hex
    ///   groups without leading zeros; the longest run of two or more zero
    ///   groups, the first such run on a tie, written `::`; an IPv4-mapped
    ///   address `::ffff:A.B.C.D` with the IPv4 part dotted).
    ///
    /// The encoding is written out here rather than taken from the
    /// standard library's formatting, so no change there can move flows.
    pub fn maglev_identity(&self) -> Vec<u8> {
        let mut s = String::with_capacity(48);
        match self.address {
            IpAddr::V4(a) => {
                let [o0, o1, o2, o3] = a.octets();
                s.push_str(&format!("{o0}.{o1}.{o2}.{o3}"));
            }
            IpAddr::V6(a) => {
                s.push('[');
                s.push_str(&rfc5952(a));
                s.push(']');
            }
        }
        s.push_str(&format!(":{}", self.port));
        s.into_bytes()
    }
}

/// RFC 5952 §4 text form of an IPv6 address (with the IPv4-mapped form of
/// §5), written out by hand: see [`RealId::maglev_identity`].
fn rfc5952(a: Ipv6Addr) -> String {
    let g = a.segments();
    if g[..5] == [0; 5] && g[5] == 0xffff {
        let [.., o0, o1, o2, o3] = a.octets();
        return format!("::ffff:{o0}.{o1}.{o2}.{o3}");
    }
    // The longest run of zero groups (two or more), the first on a tie.
    let (mut best, mut best_len) = (0usize, 0usize);
    let mut i = 0;
    while i < 8 {
        if g[i] == 0 {
            let start = i;
            while i < 8 && g[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let hex = |gs: &[u16]| {
        gs.iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best_len < 2 {
        return hex(&g);
    }
    format!("{}::{}", hex(&g[..best]), hex(&g[best + best_len..]))
}

impl fmt::Display for RealId {
    /// `198.18.11.2:8080`, `[2001:db8::2]:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

impl FromStr for RealId {
    type Err = IdError;
    /// `address:port`, `[v6]:port`, or a bare address (port 0).
    fn from_str(s: &str) -> Result<Self, IdError> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(RealId::new(sa.ip(), sa.port()));
        }
        s.parse::<IpAddr>().map(|a| RealId::new(a, 0)).map_err(|_| {
            IdError(format!(
                "`{s}` is not a real (address:port, e.g. 198.18.11.2:8080 or [2001:db8::2]:8080)"
            ))
        })
    }
}

impl From<SocketAddr> for RealId {
    fn from(sa: SocketAddr) -> RealId {
        RealId::new(sa.ip(), sa.port())
    }
}

/// An address as the data plane keys hold it: 16 bytes (IPv4 in the first
/// four) and a family.
pub fn addr_bytes(a: IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address of a data plane key's 16 bytes and family (`None` for an
/// unknown family).
pub fn key_addr(b: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        FAMILY_V6 => Some(IpAddr::from(*b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_parse_and_print() {
        for (text, id) in [
            (
                "198.18.100.1:80/tcp",
                VipId::new("198.18.100.1".parse().unwrap(), 80, Protocol::Tcp),
            ),
            (
                "[2001:db8::1]:*/udp",
                VipId::new("2001:db8::1".parse().unwrap(), 0, Protocol::Udp),
            ),
        ] {
            assert_eq!(text.parse::<VipId>(), Ok(id));
            assert_eq!(id.to_string(), text);
            assert_eq!(VipId::from_map_key(&id.map_key()), Some(id));
        }
        assert_eq!(
            "198.18.100.1:80/TCP".parse::<VipId>().unwrap().protocol,
            Protocol::Tcp
        );
        for bad in [
            "198.18.100.1:80",
            "198.18.100.1:80/sctp",
            "2001:db8::1:80/tcp",
            "[198.18.100.1]:80/tcp",
            "198.18.100.1:70000/tcp",
            "",
        ] {
            assert!(bad.parse::<VipId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reals_parse_and_print() {
        assert_eq!(
            "[2001:db8::2]:8080".parse::<RealId>(),
            Ok(RealId::new("2001:db8::2".parse().unwrap(), 8080))
        );
        assert_eq!(
            "198.18.11.2".parse::<RealId>(),
            Ok(RealId::new("198.18.11.2".parse().unwrap(), 0))
        );
        assert!("nope".parse::<RealId>().is_err());
        assert_eq!(
            RealId::new("2001:db8::2".parse().unwrap(), 80).to_string(),
            "[2001:db8::2]:80"
        );
    }

    #[test]
    fn maglev_identity_is_the_documented_bytes() {
        for (addr, port, bytes) in [
            ("198.18.11.2", 8080, "198.18.11.2:8080"),
            ("198.18.0.0", 0, "198.18.0.0:0"),
            ("2001:db8::2", 80, "[2001:db8::2]:80"),
            ("2001:db8:0:0:1::2", 80, "[2001:db8::1:0:0:2]:80"),
            ("2001:db8:0:1:0:0:0:2", 80, "[2001:db8:0:1::2]:80"),
            ("2001:db8:1:1:1:1:1:1", 80, "[2001:db8:1:1:1:1:1:1]:80"),
            ("2001:0:0:1:0:1:0:1", 1, "[2001::1:0:1:0:1]:1"),
            ("::", 1, "[::]:1"),
            ("::1", 1, "[::1]:1"),
            ("::ffff:198.18.0.1", 53, "[::ffff:198.18.0.1]:53"),
            ("2001:db8:abcd::", 65535, "[2001:db8:abcd::]:65535"),
        ] {
            let id = RealId::new(addr.parse().unwrap(), port);
            assert_eq!(
                String::from_utf8(id.maglev_identity()).unwrap(),
                bytes,
                "{addr}"
            );
        }
    }

    /// Version 1 of the encoding is the text form releases before it used
    /// (the address's standard formatting): an upgrade moves no flow.
    #[test]
    fn maglev_identity_v1_matches_the_earlier_text_form() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            // Groups drawn so that zero runs of every length are common.
            let g: [u16; 8] = std::array::from_fn(|i| {
                if (r >> (i * 2)).trailing_zeros() >= 2 {
                    (next() & 0xffff) as u16
                } else {
                    0
                }
            });
            let a = Ipv6Addr::from(g);
            let port = (r >> 32) as u16;
            let id = RealId::new(a.into(), port);
            assert_eq!(
                id.maglev_identity(),
                format!("[{a}]:{port}").into_bytes(),
                "{a}"
            );
            let v4 = std::net::Ipv4Addr::from((r >> 16) as u32);
            assert_eq!(
                RealId::new(v4.into(), port).maglev_identity(),
                format!("{v4}:{port}").into_bytes()
            );
        }
    }
}
