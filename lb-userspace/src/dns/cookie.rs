//! DNS cookies (RFC 7873) with server cookies in the interoperable format of
//! RFC 9018: Version 1, three Reserved bytes, a 32-bit Timestamp (seconds,
//! serial arithmetic) and SipHash-2-4 over Client Cookie | Version |
//! Reserved | Timestamp | client IP, keyed by a 16-byte secret. The secret
//! is drawn at random once per process, so cookies survive reloads but not
//! restarts (a client then simply learns a new one). Pure apart from
//! [`process_secret`] and [`now`].

use std::net::IpAddr;

use hickory_proto::{
    op::Edns,
    rr::rdata::opt::{EdnsCode, EdnsOption},
};

/// Option code of COOKIE.
pub const COOKIE: u16 = 10;
/// A server cookie is valid up to this long after its timestamp (RFC 9018 §4.3).
pub const MAX_AGE: u32 = 3600;
/// ... and replaced by a new one once it is this old.
pub const RENEW_AGE: u32 = 1800;
/// Timestamps up to this far in the future are accepted (clock skew).
pub const MAX_SKEW: u32 = 300;

/// The COOKIE option of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryCookie {
    pub client: [u8; 8],
    /// The server cookie the client returned (8 to 32 bytes), if any.
    pub server: Option<Vec<u8>>,
}

/// The option is malformed: the query gets FORMERR (RFC 7873 §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The COOKIE option of `edns`: `None` without one; [`Malformed`] when its
/// length is not 8 or 16..=40, or when there are two.
pub fn parse(edns: &Edns) -> Result<Option<QueryCookie>, Malformed> {
    let mut found = None;
    for (code, opt) in &edns.options().options {
        if *code != EdnsCode::Cookie {
            continue;
        }
        let EdnsOption::Unknown(_, data) = opt else {
            return Err(Malformed);
        };
        if found.is_some() || !(data.len() == 8 || (16..=40).contains(&data.len())) {
            return Err(Malformed);
        }
        let mut client = [0u8; 8];
        client.copy_from_slice(&data[..8]);
        found = Some(QueryCookie {
            client,
            server: (data.len() > 8).then(|| data[8..].to_vec()),
        });
    }
    Ok(found)
}

/// What a query's cookie says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The COOKIE option data for the response: client cookie + server cookie.
    pub option: Vec<u8>,
    /// The query carried a server cookie that is not (or no longer) ours.
    pub bad_server_cookie: bool,
}

impl Reply {
    pub fn edns_option(&self) -> EdnsOption {
        EdnsOption::Unknown(COOKIE, self.option.clone())
    }
}

/// The cookie to answer `q` from `ip` with at time `now`: the server cookie
/// the client sent while it is valid and younger than [`RENEW_AGE`], else a
/// new one.
pub fn reply(secret: &[u8; 16], q: &QueryCookie, ip: IpAddr, now: u32) -> Reply {
    let mut option = q.client.to_vec();
    let valid = q
        .server
        .as_deref()
        .map(|s| (s, check(secret, q.client, s, ip, now)));
    match valid {
        Some((s, Check::Fresh)) => option.extend_from_slice(s),
        _ => option.extend_from_slice(&server_cookie(secret, &q.client, ip, now)),
    }
    Reply {
        option,
        bad_server_cookie: matches!(valid, Some((_, Check::Invalid))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Fresh,
    /// Valid but due for renewal.
    Worn,
    Invalid,
}

/// Checks a server cookie (16 bytes, version 1; the Reserved bytes go into
/// the hash as received, RFC 9018 §4.2).
fn check(secret: &[u8; 16], client: [u8; 8], server: &[u8], ip: IpAddr, now: u32) -> Check {
    if server.len() != 16 || server[0] != 1 {
        return Check::Invalid;
    }
    let ts = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    let age = now.wrapping_sub(ts) as i32;
    if age > MAX_AGE as i32 || age < -(MAX_SKEW as i32) {
        return Check::Invalid;
    }
    let mut head = [0u8; 8];
    head.copy_from_slice(&server[..8]);
    if hash(secret, client, head, ip) != server[8..] {
        return Check::Invalid;
    }
    if age > RENEW_AGE as i32 {
        Check::Worn
    } else {
        Check::Fresh
    }
}

/// A new server cookie: Version 1, Reserved 0, Timestamp `now`, Hash.
pub fn server_cookie(secret: &[u8; 16], client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = 1;
    out[4..8].copy_from_slice(&now.to_be_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&out[..8]);
    out[8..].copy_from_slice(&hash(secret, *client, head, ip));
    out
}

fn hash(secret: &[u8; 16], client: [u8; 8], head: [u8; 8], ip: IpAddr) -> [u8; 8] {
    let mut msg = [0u8; 32];
    msg[..8].copy_from_slice(&client);
    msg[8..16].copy_from_slice(&head);
    let n = match ip.to_canonical() {
        IpAddr::V4(a) => {
            msg[16..20].copy_from_slice(&a.octets());
            20
        }
        IpAddr::V6(a) => {
            msg[16..32].copy_from_slice(&a.octets());
            32
        }
    };
    siphash24(secret, &msg[..n]).to_le_bytes()
}

/// SipHash-2-4 (Aumasson and Bernstein), 64-bit output.
pub fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let k0 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
    let mut v = [
        0x736f_6d65_7073_6575 ^ k0,
        0x646f_7261_6e64_6f6d ^ k1,
        0x6c79_6765_6e65_7261 ^ k0,
        0x7465_6462_7974_6573 ^ k1,
    ];
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = (msg.len() as u64) << 56;
    for (i, b) in chunks.remainder().iter().enumerate() {
        last |= u64::from(*b) << (8 * i);
    }
    v[3] ^= last;
    round(&mut v);
    round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// This process's cookie secret (random, drawn on first use).
pub fn process_secret() -> &'static [u8; 16] {
    static SECRET: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// Seconds since the Unix epoch, modulo 2^32 (the cookie timestamp).
pub fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(s: &str) -> [u8; 16] {
        unhex(s).try_into().unwrap()
    }

    #[test]
    fn siphash_reference_vectors() {
        // From the SipHash paper's reference implementation: key 00..0f,
        // messages 00, 00 01, ..., of length 0 and 15.
        let k: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(siphash24(&k, &[]), 0x726f_db47_dd0e_0e31);
        let m: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&k, &m), 0xa129_ca61_49be_45e5);
        let m: Vec<u8> = (0..8).collect();
        assert_eq!(siphash24(&k, &m), 0x93f5_f579_9a93_2462);
    }

    /// RFC 9018 Appendix A.4 (the IPv6 client).
    #[test]
    fn rfc9018_ipv6_vectors() {
        let ip: IpAddr = "2001:db8:220:1:59de:d0f4:8769:82b8".parse().unwrap();
        let client: [u8; 8] = unhex("22681ab97d52c298").try_into().unwrap();
        let new = key("445536bcd2513298075a5d379663c962");
        assert_eq!(
            server_cookie(&new, &client, ip, 1_559_741_961).to_vec(),
            unhex("010000005cf7c609a6bb79d16625507a")
        );
        // The cookie the old secret made is valid under it, not the new one.
        let old = key("dd3bdf9344b678b185a6f5cb60fca715");
        let held = unhex("010000005cf7c57926556bd0934c72f8");
        assert_eq!(check(&old, client, &held, ip, 1_559_741_961), Check::Fresh);
        assert_eq!(
            check(&new, client, &held, ip, 1_559_741_961),
            Check::Invalid
        );
        // A new secret: a bad cookie, answered with a new one.
        let q = QueryCookie {
            client,
            server: Some(held),
        };
        let r = reply(&new, &q, ip, 1_559_741_961);
        assert!(r.bad_server_cookie);
        assert_eq!(
            r.option,
            unhex("22681ab97d52c298010000005cf7c609a6bb79d16625507a")
        );
    }

    #[test]
    fn ages_addresses_and_echo() {
        let s = key("e5e973e5a6b2a43f48e7dc849e37bfcf");
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let client = [1, 2, 3, 4, 5, 6, 7, 8];
        let t = 1_000_000u32;
        let c = server_cookie(&s, &client, ip, t);
        for (at, want) in [
            (t, Check::Fresh),
            (t + RENEW_AGE, Check::Fresh),
            (t + RENEW_AGE + 1, Check::Worn),
            (t + MAX_AGE, Check::Worn),
            (t + MAX_AGE + 1, Check::Invalid),
            (t - MAX_SKEW, Check::Fresh),
            (t - MAX_SKEW - 1, Check::Invalid),
        ] {
            assert_eq!(check(&s, client, &c, ip, at), want, "at {at}");
        }
        // Across the 2^32 wrap.
        let w = server_cookie(&s, &client, ip, u32::MAX - 10);
        assert_eq!(check(&s, client, &w, ip, 100), Check::Fresh);
        // Bound to the address and the client cookie; v4-mapped is v4.
        let other: IpAddr = "198.18.0.10".parse().unwrap();
        assert_eq!(check(&s, client, &c, other, t), Check::Invalid);
        assert_eq!(check(&s, [0; 8], &c, ip, t), Check::Invalid);
        let mapped: IpAddr = "::ffff:198.18.0.9".parse().unwrap();
        assert_eq!(check(&s, client, &c, mapped, t), Check::Fresh);
        // A fresh cookie is echoed as sent; a worn one is renewed.
        let q = QueryCookie {
            client,
            server: Some(c.to_vec()),
        };
        let r = reply(&s, &q, ip, t + 10);
        assert!(!r.bad_server_cookie);
        assert_eq!(&r.option[8..], &c[..]);
        let r = reply(&s, &q, ip, t + RENEW_AGE + 5);
        assert!(!r.bad_server_cookie);
        assert_eq!(
            &r.option[8..],
            &server_cookie(&s, &client, ip, t + RENEW_AGE + 5)[..]
        );
        // Only a client cookie: a new server cookie, nothing bad.
        let r = reply(
            &s,
            &QueryCookie {
                client,
                server: None,
            },
            ip,
            t,
        );
        assert!(!r.bad_server_cookie);
        assert_eq!(r.option.len(), 24);
        // Version other than 1, or another length: not ours.
        let mut v2 = c;
        v2[0] = 2;
        assert_eq!(check(&s, client, &v2, ip, t), Check::Invalid);
        assert_eq!(check(&s, client, &c[..8], ip, t), Check::Invalid);
    }

    #[test]
    fn option_lengths() {
        for (len, ok) in [
            (0, false),
            (7, false),
            (8, true),
            (9, false),
            (15, false),
            (16, true),
            (24, true),
            (40, true),
            (41, false),
        ] {
            let mut e = Edns::new();
            e.options_mut()
                .insert(EdnsOption::Unknown(COOKIE, vec![7; len]));
            let got = parse(&e);
            assert_eq!(got.is_ok(), ok, "{len} bytes");
            if let Ok(Some(c)) = got {
                assert_eq!(c.client, [7; 8]);
                assert_eq!(c.server.map_or(0, |s| s.len()), len - 8);
            }
        }
        assert_eq!(parse(&Edns::new()), Ok(None));
        let mut e = Edns::new();
        e.options_mut()
            .insert(EdnsOption::Unknown(COOKIE, vec![1; 8]));
        e.options_mut()
            .insert(EdnsOption::Unknown(COOKIE, vec![2; 8]));
        assert_eq!(parse(&e), Err(Malformed));
    }
}
