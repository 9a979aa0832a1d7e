//! Request routing: Host (exact, wildcard, any) then longest path prefix.
//!
//! The host picks one group of routes, nginx `server_name` style: an exact
//! name first, then the longest matching wildcard (`*.example.com` matches
//! any name ending in `.example.com`, at any depth), then the routes without
//! a host. Inside the group the longest `path_prefix` that the path starts
//! with wins. A group with no matching prefix does not fall through to a less
//! specific group: the request gets 404, as in nginx.

use std::collections::HashMap;

use ahash::RandomState;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Group {
    /// (prefix, upstream index), longest prefix first.
    routes: Vec<(String, usize)>,
}

impl Group {
    fn add(&mut self, prefix: &str, upstream: usize) {
        self.routes.push((prefix.to_string(), upstream));
        self.routes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, u)| *u)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    exact: HashMap<String, Group, RandomState>,
    /// (`.example.com`, group), longest suffix first.
    wildcard: Vec<(String, Group)>,
    any: Option<Group>,
}

impl RouteTable {
    /// `host` is a normalised pattern (lower case, `*.` for a wildcard) or None for any host.
    pub fn add(&mut self, host: Option<&str>, prefix: &str, upstream: usize) {
        match host {
            None => self
                .any
                .get_or_insert_with(Group::default)
                .add(prefix, upstream),
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => {
                    if let Some((_, g)) = self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        g.add(prefix, upstream);
                    } else {
                        let mut g = Group::default();
                        g.add(prefix, upstream);
                        self.wildcard.push((suffix.to_string(), g));
                        self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                    }
                }
                None => self
                    .exact
                    .entry(h.to_string())
                    .or_default()
                    .add(prefix, upstream),
            },
        }
    }

    /// Upstream index for a request. `host` must be lower case without port.
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let group = self
            .exact
            .get(host)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, g)| g)
            })
            .or(self.any.as_ref())?;
        group.lookup(path)
    }
}

/// Lower-cased host of a `Host` header or `:authority`, without port or trailing dot.
pub fn normalize_request_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((h, _)) => h,
            None => rest,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add(Some("www.example.com"), "/", 0);
        t.add(Some("www.example.com"), "/api/", 1);
        t.add(Some("*.example.com"), "/", 2);
        t.add(Some("*.eu.example.com"), "/", 3);
        t.add(None, "/", 4);
        t.add(Some("static.example.org"), "/img/", 5);
        t
    }

    #[test]
    fn exact_host_and_longest_prefix() {
        let t = table();
        assert_eq!(t.lookup("www.example.com", "/"), Some(0));
        assert_eq!(t.lookup("www.example.com", "/index.html"), Some(0));
        assert_eq!(t.lookup("www.example.com", "/api/users"), Some(1));
        assert_eq!(t.lookup("www.example.com", "/api"), Some(0));
    }

    #[test]
    fn wildcards_most_specific_first() {
        let t = table();
        assert_eq!(t.lookup("a.example.com", "/x"), Some(2));
        assert_eq!(t.lookup("a.b.example.com", "/x"), Some(2));
        assert_eq!(t.lookup("fr.eu.example.com", "/x"), Some(3));
        // The bare domain is not covered by the wildcard.
        assert_eq!(t.lookup("example.com", "/x"), Some(4));
    }

    #[test]
    fn default_and_no_fallthrough() {
        let t = table();
        assert_eq!(t.lookup("other.test", "/anything"), Some(4));
        // The exact group has no route for /other: 404, no fall-through to the default.
        assert_eq!(t.lookup("static.example.org", "/img/a.png"), Some(5));
        assert_eq!(t.lookup("static.example.org", "/other"), None);
        let mut only = RouteTable::default();
        only.add(Some("a.test"), "/", 0);
        assert_eq!(only.lookup("b.test", "/"), None);
    }

    #[test]
    fn request_host_normalisation() {
        assert_eq!(
            normalize_request_host("WWW.Example.COM:8443"),
            "www.example.com"
        );
        assert_eq!(normalize_request_host("example.com."), "example.com");
        assert_eq!(normalize_request_host("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(normalize_request_host("127.0.0.1"), "127.0.0.1");
    }
}
