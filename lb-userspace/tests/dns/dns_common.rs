//! Helpers shared by the DNS integration tests: start our server on
//! loopback, run `dig`, parse what it printed.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use lb_userspace::dns::{
    config::{DnsConfig, DnsSettings},
    DnsServer,
};

pub(crate) fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dns")
}

pub(crate) fn zone_file() -> PathBuf {
    data_dir().join("example.com.zone")
}

/// Is `tool` on PATH? If not: panic under CI, else print why and say no.
pub(crate) fn have(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        || ["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .any(|d| PathBuf::from(d).join(tool).is_file());
    if !found {
        let msg = format!("`{tool}` not found: install the Debian package `{package}`");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    found
}

pub(crate) fn parse_config(toml_text: &str) -> DnsConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("bad test config: {e}\n{toml_text}"))
}

/// A `[dns]` table validated as `lb` does (zone files read and parsed).
pub(crate) fn settings(toml_text: &str) -> DnsSettings {
    try_settings(toml_text).unwrap_or_else(|e| panic!("invalid test config: {e}\n{toml_text}"))
}

/// Like [`settings`], with the errors as `lb` reports them.
pub(crate) fn try_settings(toml_text: &str) -> Result<DnsSettings, String> {
    let mut errors = Vec::new();
    match parse_config(toml_text).settings("dns", &mut errors) {
        Some(s) if errors.is_empty() => Ok(s),
        _ => Err(errors
            .iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// The standard test server: our example.com zone on 127.0.0.1, ephemeral port.
pub(crate) fn base_config(extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\n{extra}\n[[zone]]\nname = \"example.com.\"\nfile = \"{}\"\n",
        zone_file().display()
    )
}

pub(crate) async fn start(toml_text: &str) -> (DnsServer, SocketAddr) {
    let srv = DnsServer::start(&settings(toml_text))
        .await
        .expect("server starts");
    let addr = srv.udp_addrs()[0];
    assert_eq!(srv.tcp_addrs()[0], addr, "udp and tcp share the port");
    (srv, addr)
}

/// What dig printed, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dig {
    pub raw: String,
    pub status: String,
    pub flags: Vec<String>,
    pub question: Vec<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    /// The `; EDNS: ...` line, if any.
    pub edns: Option<String>,
    /// The `; CLIENT-SUBNET: ...` line, if any.
    pub subnet: Option<String>,
    pub msg_size: Option<usize>,
    pub tcp: bool,
}

impl Dig {
    pub(crate) fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// Records of a section as (name, ttl, type, rdata), names lowercased.
    pub(crate) fn records(section: &[String]) -> Vec<(String, u32, String, String)> {
        section
            .iter()
            .map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next().unwrap().to_ascii_lowercase();
                let ttl = it.next().unwrap().parse().unwrap();
                let _class = it.next();
                let rtype = it.next().unwrap().to_string();
                let rdata = it.collect::<Vec<_>>().join(" ");
                (name, ttl, rtype, rdata)
            })
            .collect()
    }

    /// "type rdata" of each answer record.
    pub(crate) fn answer_data(&self) -> Vec<String> {
        let mut v: Vec<String> = Self::records(&self.answer)
            .into_iter()
            .map(|(_, _, t, d)| format!("{t} {d}"))
            .collect();
        v.sort();
        v
    }
}

pub(crate) fn parse_dig(out: &str) -> Dig {
    let mut d = Dig {
        raw: out.to_string(),
        ..Dig::default()
    };
    let mut section: Option<&str> = None;
    for line in out.lines() {
        let l = line.trim_end();
        if let Some(rest) = l.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = l.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
        }
        if l.starts_with("; EDNS:") {
            d.edns = Some(l.to_string());
        }
        if l.starts_with("; CLIENT-SUBNET:") {
            d.subnet = Some(l.to_string());
        }
        if let Some(rest) = l.strip_prefix(";; MSG SIZE  rcvd: ") {
            d.msg_size = rest.trim().parse().ok();
        }
        if l.starts_with(";; SERVER:") && l.contains("(TCP)") {
            d.tcp = true;
        }
        if l.starts_with(";; ") && l.ends_with(" SECTION:") {
            section = Some(if l.contains("QUESTION") {
                "q"
            } else if l.contains("ANSWER") {
                "an"
            } else if l.contains("AUTHORITY") {
                "au"
            } else if l.contains("ADDITIONAL") {
                "ad"
            } else {
                "other"
            });
            continue;
        }
        if l.is_empty() {
            section = None;
            continue;
        }
        match section {
            Some("q") => d.question.push(l.trim_start_matches(';').to_string()),
            Some("an") => d.answer.push(l.to_string()),
            Some("au") => d.authority.push(l.to_string()),
            Some("ad") => d.additional.push(l.to_string()),
            _ => {}
        }
    }
    d
}

/// Runs `dig @addr -p port +norec +time=2 +tries=1 <args>` (bounded).
pub(crate) async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .arg("-p")
            .arg(addr.port().to_string())
            .args(["+norec", "+time=2", "+tries=1"])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("dig finished within 20s")
    .expect("dig runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&text)
}
