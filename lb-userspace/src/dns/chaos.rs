//! CHAOS-class identity queries (as NSD answers them): `id.server.` and
//! `hostname.bind.` give the instance identity, `version.server.` and
//! `version.bind.` the software version; anything else in class CH is
//! REFUSED. Pure: no sockets, no wire format.

use hickory_proto::{
    op::ResponseCode,
    rr::{rdata::TXT, DNSClass, LowerName, Name, RData, Record, RecordType},
};

/// What the server says about itself in CHAOS TXT answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Answer to `id.server.` / `hostname.bind.`.
    pub identity: String,
    /// Answer to `version.server.` / `version.bind.`; `None` refuses them
    /// (`hide_version`).
    pub version: Option<String>,
}

impl Default for ServerInfo {
    fn default() -> Self {
        ServerInfo {
            identity: default_identity(),
            version: Some(version()),
        }
    }
}

/// `lb <version>`.
pub fn version() -> String {
    format!("lb {}", env!("CARGO_PKG_VERSION"))
}

/// The host name from `/proc/sys/kernel/hostname` (`lb` if unreadable or
/// empty), read once per process.
pub fn default_identity() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .unwrap_or_else(|| "lb".to_string())
    })
    .clone()
}

/// The answer to a class CH query: the RCODE and, for NOERROR, one TXT
/// record (class CH, TTL 0, owner as asked). Types TXT and ANY are
/// answered; other types are REFUSED, as are other names.
pub fn answer(
    info: &ServerInfo,
    qname: &Name,
    qtype: RecordType,
) -> (ResponseCode, Option<Record>) {
    if !matches!(qtype, RecordType::TXT | RecordType::ANY) {
        return (ResponseCode::Refused, None);
    }
    let name = LowerName::new(qname).to_string();
    let text = match name.as_str() {
        "id.server." | "hostname.bind." => Some(info.identity.as_str()),
        "version.server." | "version.bind." => info.version.as_deref(),
        _ => None,
    };
    match text {
        Some(t) => {
            let mut r = Record::from_rdata(qname.clone(), 0, RData::TXT(TXT::new(vec![t.into()])));
            r.dns_class = DNSClass::CH;
            (ResponseCode::NoError, Some(r))
        }
        None => (ResponseCode::Refused, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: Option<&str>) -> ServerInfo {
        ServerInfo {
            identity: "ns1.example".into(),
            version: version.map(String::from),
        }
    }

    fn txt(r: &Record) -> String {
        match &r.data {
            RData::TXT(t) => t.to_string(),
            other => panic!("not TXT: {other:?}"),
        }
    }

    #[test]
    fn names_types_and_hide_version() {
        let i = info(Some("lb 9.9"));
        for (n, want) in [
            ("id.server.", "ns1.example"),
            ("ID.Server.", "ns1.example"),
            ("hostname.bind.", "ns1.example"),
            ("version.server.", "lb 9.9"),
            ("VERSION.BIND.", "lb 9.9"),
        ] {
            for t in [RecordType::TXT, RecordType::ANY] {
                let name = Name::from_ascii(n).unwrap();
                let (code, rec) = answer(&i, &name, t);
                assert_eq!(code, ResponseCode::NoError, "{n} {t}");
                let rec = rec.unwrap();
                assert_eq!(txt(&rec), want);
                assert_eq!(rec.dns_class, DNSClass::CH);
                assert_eq!(rec.ttl, 0);
                assert_eq!(rec.name.to_string(), n, "owner in the client's case");
            }
        }
        for (n, t) in [
            ("id.server.", RecordType::A),
            ("authors.bind.", RecordType::TXT),
            ("server.", RecordType::TXT),
            ("x.id.server.", RecordType::TXT),
        ] {
            let (code, rec) = answer(&i, &Name::from_ascii(n).unwrap(), t);
            assert_eq!(code, ResponseCode::Refused, "{n} {t}");
            assert!(rec.is_none());
        }
        let hidden = info(None);
        let (code, _) = answer(
            &hidden,
            &Name::from_ascii("version.bind.").unwrap(),
            RecordType::TXT,
        );
        assert_eq!(code, ResponseCode::Refused);
        let (code, _) = answer(
            &hidden,
            &Name::from_ascii("id.server.").unwrap(),
            RecordType::TXT,
        );
        assert_eq!(code, ResponseCode::NoError);
    }

    #[test]
    fn defaults() {
        let d = ServerInfo::default();
        assert!(!d.identity.is_empty());
        assert_eq!(d.version.as_deref(), Some(version().as_str()));
        assert!(version().starts_with("lb "));
    }
}
