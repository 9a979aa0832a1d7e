//! Header rewriting between client and upstream: hop-by-hop removal and the
//! forwarding headers (`X-Forwarded-*`, RFC 7239 `Forwarded`).

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::config::ForwardedSet;

/// Connection-level headers (RFC 9110 section 7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header named in `Connection`,
/// and `Transfer-Encoding` (hyper frames the body itself).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(header::TRANSFER_ENCODING);
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn quote_if_needed(s: &str) -> String {
    if is_token(s) {
        s.to_string()
    } else {
        let escaped: String = s
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// The RFC 7239 `for=` value of a client address: IPv6 in brackets and quotes.
pub fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    }
}

/// What the proxy knows about the client side of a request.
pub struct ClientSide<'a> {
    pub ip: IpAddr,
    /// `https` or `http`.
    pub proto: &'static str,
    /// The Host the client asked for, as it sent it (port included).
    pub host: Option<&'a str>,
}

/// Adds the configured forwarding headers. `X-Forwarded-For` and `Forwarded`
/// append this hop to what the client sent (several header lines are joined
/// into one); `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced.
pub fn add_forwarding(h: &mut HeaderMap, set: ForwardedSet, c: &ClientSide<'_>) {
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    if set.x_forwarded_for {
        let ip = c.ip.to_string();
        let value = join_appended(h, &header::HeaderName::from_static("x-forwarded-for"), &ip);
        set_value(h, HeaderName::from_static("x-forwarded-for"), &value);
    }
    if set.x_forwarded_proto {
        set_value(h, XFP, c.proto);
    }
    if set.x_forwarded_host {
        match c.host {
            Some(host) => set_value(h, XFH, host),
            None => {
                h.remove(XFH);
            }
        }
    }
    if set.forwarded {
        let mut elem = format!("for={}", forwarded_node(c.ip));
        if let Some(host) = c.host {
            elem.push_str(";host=");
            elem.push_str(&quote_if_needed(host));
        }
        elem.push_str(";proto=");
        elem.push_str(c.proto);
        let value = join_appended(h, &header::FORWARDED, &elem);
        set_value(h, header::FORWARDED, &value);
    }
}

/// Joins every existing `name` line and `add` with ", ".
fn join_appended(h: &HeaderMap, name: &HeaderName, add: &str) -> String {
    let mut parts: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    parts.push(add);
    parts.join(", ")
}

fn set_value(h: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => {
            h.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> ForwardedSet {
        ForwardedSet {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: true,
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn forwarding_appends_and_replaces() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("198.18.0.7"));
        h.append("x-forwarded-for", HeaderValue::from_static("198.18.0.8"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("forwarded", HeaderValue::from_static("for=198.18.0.7"));
        add_forwarding(
            &mut h,
            all(),
            &ClientSide {
                ip: "2001:db8::5".parse().unwrap(),
                proto: "https",
                host: Some("www.example.com:8443"),
            },
        );
        assert_eq!(h["x-forwarded-for"], "198.18.0.7, 198.18.0.8, 2001:db8::5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=198.18.0.7, for=\"[2001:db8::5]\";host=\"www.example.com:8443\";proto=https"
        );
    }

    #[test]
    fn forwarded_v4_token_host() {
        let mut h = HeaderMap::new();
        let set = ForwardedSet {
            forwarded: true,
            ..Default::default()
        };
        add_forwarding(
            &mut h,
            set,
            &ClientSide {
                ip: "127.0.0.1".parse().unwrap(),
                proto: "http",
                host: Some("a.example"),
            },
        );
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=a.example;proto=http");
        assert!(h.get("x-forwarded-for").is_none());
    }
}
