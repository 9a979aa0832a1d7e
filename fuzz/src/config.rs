//! The config loader: TOML in, a validated `Config` or errors that name a
//! field (or a line) out (`lb_userspace::config::Config::parse`, which also
//! validates `[[l7]]` with its certificates and `[dns]` with its zone files).
//!
//! Inputs may say `@DATA@` (the test zone's directory) and `@CERTS@` (a
//! directory of test certificates made once per process with `lb cert`'s
//! generator), so seeds can name files that exist wherever the fuzzer runs.
//! Inputs naming files under `/dev`, `/proc` or `/sys` are skipped: the
//! loader reads what a config names, and some of those never end.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use lb_userspace::{config::Config, proxy::cert};

use crate::{
    engine::{fnv, Outcome, Target},
    rng::Rng,
};

pub const TARGET: Target = Target {
    name: "config",
    check,
    dictionary: DICTIONARY,
    generate,
    max_len: 8192,
};

/// Top-level keys: an error's field starts with one of these.
const ROOTS: &[&str] = &[
    "interfaces",
    "stats_interval",
    "vip",
    "l7",
    "dns",
    "pin_path",
    "api",
    "metrics",
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/tests/data/dns")
}

/// Test certificates for `www.example.com`/`example.com` and
/// `*.api.example.com`, written once to a directory of this process.
fn certs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lb-fuzz-certs-{}", std::process::id()));
        let args = cert::CertArgs {
            dir: dir.clone(),
            leaves: vec![
                "www.example.com,example.com".into(),
                "*.api.example.com".into(),
            ],
            ..cert::CertArgs::default()
        };
        cert::generate(&args).expect("test certificates");
        dir
    })
}

/// The text the loader sees: placeholders replaced.
pub fn expand(data: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(data).into_owned();
    if text.contains("@DATA@") {
        text = text.replace("@DATA@", &data_dir().display().to_string());
    }
    if text.contains("@CERTS@") {
        text = text.replace("@CERTS@", &certs_dir().display().to_string());
    }
    text
}

fn names_a_field(field: &str, lines: usize) -> bool {
    if let Some(n) = field.strip_prefix("line ") {
        return n.parse::<usize>().is_ok_and(|n| n >= 1 && n <= lines + 1);
    }
    if field == "config" {
        return true;
    }
    ROOTS.iter().any(|r| {
        field == *r
            || field
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    })
}

/// An error field with the indexes taken out (`vip[].real[].port`).
fn shape(field: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c if c.is_ascii_digit() && field.starts_with("line ") => {}
            c => out.push(c),
        }
    }
    out
}

pub fn check(data: &[u8]) -> Outcome {
    let text = expand(data);
    if ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| text.contains(p))
    {
        return Ok(0);
    }
    match Config::parse(&text) {
        Ok(cfg) => Ok(fnv(&[
            b"ok",
            &[
                cfg.vips.len().min(8) as u8,
                cfg.l7.len().min(8) as u8,
                cfg.dns.is_some() as u8,
            ],
        ])),
        Err(errs) => {
            if errs.0.is_empty() {
                return Err("rejected with an empty error list".into());
            }
            let lines = text.lines().count().max(1);
            let mut h = Vec::new();
            for e in &errs.0 {
                if !names_a_field(&e.field, lines) {
                    return Err(format!(
                        "error does not name a field or a line: `{e}` (field `{}`)",
                        e.field
                    ));
                }
                if e.reason.trim().is_empty() {
                    return Err(format!("error without a reason at `{}`", e.field));
                }
                let shown = errs.to_string();
                if !shown.contains(&e.field) {
                    return Err(format!("the message does not show the field `{}`", e.field));
                }
                h.extend_from_slice(shape(&e.field).as_bytes());
                h.push(0);
            }
            Ok(fnv(&[b"err", &h]))
        }
    }
}

const DICTIONARY: &[&[u8]] = &[
    // top level
    b"interfaces = [\"eth0\"]\n",
    b"stats_interval = \"5s\"\n",
    b"pin_path = \"/run/lb/pins\"\n",
    b"[api]\n",
    b"socket = \"/run/lb/lb.sock\"\n",
    b"socket_mode = \"0660\"\n",
    b"http = \"127.0.0.1:9180\"\n",
    b"http = \"198.18.0.1:9180\"\n",
    b"listen = \"127.0.0.1:9000\"\n",
    b"token_file = \"@DATA@/example.com.zone\"\n",
    b"[metrics]\n",
    // vip
    b"[[vip]]\n",
    b"[[vip.real]]\n",
    b"[vip.health]\n",
    b"[vip.real.health]\n",
    b"address = \"198.18.100.1\"\n",
    b"address = \"2001:db8::1\"\n",
    b"port = 80\n",
    b"port = 0\n",
    b"protocol = \"udp\"\n",
    b"mode = \"nat\"\n",
    b"ring_size = 65537\n",
    b"ring_size = 7\n",
    b"icmp_echo = false\n",
    b"icmp_rate_limit = 0\n",
    b"icmp_relay = false\n",
    b"snat_idle_timeout = \"1s\"\n",
    b"snat_closed_timeout = \"0s\"\n",
    b"weight = 0\n",
    b"drain_timeout = \"0s\"\n",
    b"all_down = \"open\"\n",
    // health
    b"kind = \"http\"\n",
    b"kind = \"tcp\"\n",
    b"kind = \"udp-dns\"\n",
    b"kind = \"none\"\n",
    b"path = \"/healthz\"\n",
    b"expect = \"200-399\"\n",
    b"interval = \"2s\"\n",
    b"timeout = \"1s\"\n",
    b"rise = 2\n",
    b"fall = 3\n",
    // l7
    b"[[l7]]\n",
    b"[[l7.cert]]\n",
    b"[[l7.route]]\n",
    b"[[l7.upstream]]\n",
    b"[l7.timeouts]\n",
    b"[l7.upstream.health]\n",
    b"name = \"web\"\n",
    b"listen = \"198.18.0.10:443\"\n",
    b"tls = false\n",
    b"http2 = false\n",
    b"unknown_sni = \"default\"\n",
    b"redirect_to_https = true\n",
    b"redirect_status = 301\n",
    b"https_port = 8443\n",
    b"max_connections = 1\n",
    b"max_header_size = \"16k\"\n",
    b"max_body_size = \"1m\"\n",
    b"max_h2_streams = 128\n",
    b"access_log = \"off\"\n",
    b"forwarded_headers = [\"forwarded\", \"x-forwarded-for\"]\n",
    b"proxy_protocol = true\n",
    b"proxy_trusted = [\"198.18.0.0/15\", \"2001:db8::1\"]\n",
    b"cert = \"@CERTS@/www.example.com.chain.pem\"\n",
    b"key = \"@CERTS@/www.example.com.key\"\n",
    b"cert = \"@CERTS@/wildcard.api.example.com.chain.pem\"\n",
    b"key = \"@CERTS@/wildcard.api.example.com.key\"\n",
    b"names = [\"*.example.com\"]\n",
    b"default = true\n",
    b"host = \"*.api.example.com\"\n",
    b"path_prefix = \"/static/\"\n",
    b"upstream = \"app\"\n",
    b"servers = [\"198.18.1.10:8080\"]\n",
    b"policy = \"consistent_hash\"\n",
    b"hash_key = \"cookie:session\"\n",
    b"host_header = \"server\"\n",
    b"max_idle_per_server = 0\n",
    b"idle_timeout = \"60s\"\n",
    b"retries = 2\n",
    b"eject_after = 3\n",
    b"eject_for = \"10s\"\n",
    // dns
    b"[dns]\n",
    b"[[dns.zone]]\n",
    b"[[dns.gslb]]\n",
    b"[[dns.gslb.member]]\n",
    b"[[dns.gslb.backup]]\n",
    b"[[dns.region]]\n",
    b"[dns.rrl]\n",
    b"listen = [\"198.18.0.53:53\"]\n",
    b"listen_udp = [\"[2001:db8::53]:53\"]\n",
    b"max_udp_payload = 1232\n",
    b"tcp_idle_timeout = \"10s\"\n",
    b"max_tcp_clients = 256\n",
    b"udp_workers = 2\n",
    b"identity = \"ns1.example\"\n",
    b"hide_version = true\n",
    b"name = \"example.com.\"\n",
    b"file = \"@DATA@/example.com.zone\"\n",
    b"name = \"www.example.com.\"\n",
    b"ttl = 20\n",
    b"policy = \"closest\"\n",
    b"fallback = \"backup\"\n",
    b"count = 2\n",
    b"region = \"eu\"\n",
    b"prefixes = [\"198.18.100.0/24\", \"2001:db8:100::/48\"]\n",
    b"responses_per_second = 20\n",
    b"window = 15\n",
    b"slip = 2\n",
    b"ipv4_prefix_length = 24\n",
    b"ipv6_prefix_length = 56\n",
    b"exempt = [\"198.18.0.0/16\"]\n",
    b"max_table_size = 100000\n",
    // TOML syntax
    b" = ",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"{ ",
    b" }",
    b", ",
    b"\"\"\"",
    b"'''",
    b"#",
    b"true",
    b"1979-05-27T07:32:00Z",
    b"0x7fffffffffffffff",
    b"-9223372036854775808",
    b"inf",
    b"\"500ms\"",
    b"\"1e400s\"",
    b"\"18446744073709551616s\"",
    b"\"16g\"",
    b"\"-1k\"",
];

/// A config assembled from sections: a few VIPs, maybe an `[[l7]]` and a `[dns]`.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut t = String::new();
    if rng.one_in(2) {
        t.push_str("interfaces = [\"eth0\"]\nstats_interval = \"5s\"\n");
    }
    for _ in 0..rng.below(3) {
        let v6 = rng.one_in(3);
        t.push_str(&format!(
            "[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n",
            if v6 { "2001:db8::100" } else { "198.18.100.1" },
            rng.pick(&[0i64, 80, 53, 65535, 65536, -1]),
            rng.pick(&["tcp", "udp", "sctp"]),
        ));
        if rng.one_in(3) {
            t.push_str(&format!(
                "ring_size = {}\n",
                rng.pick(&[7u64, 65537, 65536, 4099, 1, 70001])
            ));
        }
        if rng.one_in(3) {
            t.push_str(&format!(
                "[vip.health]\nkind = \"{}\"\ninterval = \"{}\"\n",
                rng.pick(&["http", "tcp", "udp-dns", "none", "icmp"]),
                rng.pick(&["2s", "0s", "1h", "x"])
            ));
        }
        for r in 0..rng.below(4) {
            t.push_str(&format!(
                "[[vip.real]]\naddress = \"{}\"\nport = {}\nweight = {}\n",
                if v6 == rng.one_in(6) {
                    format!("198.18.2.{}", r + 11)
                } else {
                    format!("2001:db8::{}", r + 1)
                },
                rng.pick(&[0i64, 8080, 80, 70000]),
                rng.pick(&[1i64, 0, 65535, 65536, -3]),
            ));
        }
    }
    if rng.one_in(2) {
        t.push_str(&format!(
            "[[l7]]\nname = \"web\"\nlisten = \"198.18.0.10:{}\"\n",
            rng.pick(&[80, 443, 0])
        ));
        if rng.one_in(2) {
            t.push_str(
                "[[l7.cert]]\ncert = \"@CERTS@/www.example.com.chain.pem\"\nkey = \"@CERTS@/www.example.com.key\"\n",
            );
        }
        if rng.one_in(4) {
            t.push_str("redirect_to_https = true\n");
        }
        t.push_str("[[l7.route]]\nupstream = \"app\"\n");
        if rng.one_in(2) {
            t.push_str("[[l7.route]]\nhost = \"*.api.example.com\"\npath_prefix = \"/v1/\"\nupstream = \"api\"\n");
        }
        t.push_str(&format!(
            "[[l7.upstream]]\nname = \"app\"\nservers = [\"198.18.1.10:8080\"]\npolicy = \"{}\"\n",
            rng.pick(&[
                "round_robin",
                "least_outstanding",
                "consistent_hash",
                "random"
            ])
        ));
    }
    if rng.one_in(2) {
        t.push_str("[dns]\nlisten = [\"198.18.0.53:53\"]\n[[dns.zone]]\nname = \"example.com.\"\nfile = \"@DATA@/example.com.zone\"\n");
        if rng.one_in(2) {
            t.push_str(&format!(
                "[[dns.gslb]]\nname = \"{}\"\npolicy = \"{}\"\n[[dns.gslb.member]]\naddress = \"198.18.10.1\"\n",
                rng.pick(&["gslb.example.com.", "www.example.com.", "child.example.com.", "x.example.org."]),
                rng.pick(&["all", "weighted", "closest", "nearest"])
            ));
        }
        if rng.one_in(3) {
            t.push_str("[dns.rrl]\nresponses_per_second = 5\n");
        }
    }
    t.into_bytes()
}
