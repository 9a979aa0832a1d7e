//! Config validation: one case per rule of the L4 config (the field named
//! and the reason given), several errors reported at once, and `lb check`
//! on good and bad files through the real binary.

use std::process::Command;

use lb_userspace::{config::Config, testbed::Lb};

/// A VIP with one good real, to build cases from.
const GOOD: &str = r#"
[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
[[vip.real]]
address = "198.18.11.2"
port = 8080
"#;

fn vip(address: &str, port: &str, proto: &str, extra: &str, reals: &str) -> String {
    format!(
        "[[vip]]\naddress = \"{address}\"\nport = {port}\nprotocol = \"{proto}\"\n{extra}\n{reals}"
    )
}

fn real(address: &str, port: &str, weight: &str) -> String {
    format!("[[vip.real]]\naddress = \"{address}\"\nport = {port}\nweight = {weight}\n")
}

/// (description, config, field, words the reason must contain)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let r = real("198.18.11.2", "8080", "1");
    vec![
        (
            "empty interface name",
            format!("interfaces = [\"\"]\n{GOOD}"),
            "interfaces[0]",
            "empty",
        ),
        (
            "interface name longer than IFNAMSIZ",
            format!("interfaces = [\"eth0\", \"abcdefghijklmnop\"]\n{GOOD}"),
            "interfaces[1]",
            "longer than 15",
        ),
        (
            "interface name with a slash",
            format!("interfaces = [\"a/b\"]\n{GOOD}"),
            "interfaces[0]",
            "not allowed",
        ),
        (
            "interface listed twice",
            format!("interfaces = [\"eth0\", \"eth0\"]\n{GOOD}"),
            "interfaces[1]",
            "listed twice",
        ),
        (
            "stats interval not a duration",
            format!("stats_interval = \"soon\"\n{GOOD}"),
            "stats_interval",
            "not a duration",
        ),
        (
            "stats interval too short",
            format!("stats_interval = \"10ms\"\n{GOOD}"),
            "stats_interval",
            "at least 100ms",
        ),
        (
            "VIP address not an address",
            vip("198.18.100", "80", "tcp", "", &r),
            "vip[0].address",
            "not an IPv4 or IPv6",
        ),
        (
            "VIP address unspecified",
            vip("0.0.0.0", "80", "tcp", "", &r),
            "vip[0].address",
            "unspecified",
        ),
        (
            "VIP address multicast",
            vip("224.0.0.1", "80", "tcp", "", &r),
            "vip[0].address",
            "multicast",
        ),
        (
            "VIP address broadcast",
            vip("255.255.255.255", "80", "tcp", "", &r),
            "vip[0].address",
            "broadcast",
        ),
        (
            "VIP port above 65535",
            vip("198.18.100.1", "70000", "tcp", "", &r),
            "vip[0].port",
            "70000",
        ),
        (
            "VIP port negative",
            vip("198.18.100.1", "-1", "tcp", "", &r),
            "vip[0].port",
            "-1",
        ),
        (
            "protocol not tcp/udp",
            vip("198.18.100.1", "80", "sctp", "", &r),
            "vip[0].protocol",
            "sctp",
        ),
        (
            "mode unknown",
            vip("198.18.100.1", "80", "tcp", "mode = \"tunnel\"", &r),
            "vip[0].mode",
            "not a mode",
        ),
        (
            "encap without dsr",
            vip("198.18.100.1", "80", "tcp", "encap = \"gue\"", &r),
            "vip[0].encap",
            "only used with mode = \"dsr\"",
        ),
        (
            "encap unknown",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"dsr\"\nencap = \"gre\"",
                &real("198.18.11.2", "80", "1"),
            ),
            "vip[0].encap",
            "not an encapsulation",
        ),
        (
            "gue_port with ipip",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"dsr\"\ngue_port = 6080",
                &real("198.18.11.2", "80", "1"),
            ),
            "vip[0].gue_port",
            "only used with encap = \"gue\"",
        ),
        (
            "gue_port out of range",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"dsr\"\nencap = \"gue\"\ngue_port = 70000",
                &real("198.18.11.2", "80", "1"),
            ),
            "vip[0].gue_port",
            "not a port",
        ),
        (
            "fullnat without snat",
            vip("198.18.100.1", "80", "tcp", "mode = \"fullnat\"", &r),
            "vip[0].snat",
            "source addresses towards the reals",
        ),
        (
            "fullnat snat of the other family only",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"2001:db8:3::1\"]",
                &r,
            ),
            "vip[0].snat",
            "no IPv4 address",
        ),
        (
            "fullnat snat not an address",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\", \"nope\"]",
                &r,
            ),
            "vip[0].snat[1]",
            "not an IPv4 or IPv6 address",
        ),
        (
            "fullnat snat listed twice",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\", \"198.18.3.1\"]",
                &r,
            ),
            "vip[0].snat[1]",
            "listed twice",
        ),
        (
            "fullnat snat is a VIP address",
            format!(
                "{}\n{}",
                vip(
                    "198.18.100.1",
                    "80",
                    "tcp",
                    "mode = \"fullnat\"\nsnat = [\"198.18.100.2\"]",
                    &r,
                ),
                vip("198.18.100.2", "80", "tcp", "", &r)
            ),
            "vip[0].snat",
            "is a VIP address",
        ),
        (
            "fullnat snat_ports reversed",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\"]\nsnat_ports = \"40000-30000\"",
                &r,
            ),
            "vip[0].snat_ports",
            "not a port range",
        ),
        (
            "snat without fullnat",
            vip("198.18.100.1", "80", "tcp", "snat = [\"198.18.3.1\"]", &r),
            "vip[0].snat",
            "only used with mode = \"fullnat\"",
        ),
        (
            "snat_idle_timeout without fullnat",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "snat_idle_timeout = \"60s\"",
                &r,
            ),
            "vip[0].snat_idle_timeout",
            "only used with mode = \"fullnat\"",
        ),
        (
            "fullnat snat_closed_timeout too long",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\"]\nsnat_closed_timeout = \"2h\"",
                &r,
            ),
            "vip[0].snat_closed_timeout",
            "longer than",
        ),
        (
            "fullnat snat_idle_timeout not a duration",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\"]\nsnat_idle_timeout = \"soon\"",
                &r,
            ),
            "vip[0].snat_idle_timeout",
            "",
        ),
        (
            "fullnat real of the other family",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\"]",
                &real("2001:db8:11::2", "8080", "1"),
            ),
            "vip[0].real[0].address",
            "FullNAT keep the family",
        ),
        (
            "proxy_protocol (not in this version)",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "mode = \"fullnat\"\nsnat = [\"198.18.3.1\"]\nproxy_protocol = true",
                &r,
            ),
            "vip[0].proxy_protocol",
            "not available in this version",
        ),
        (
            "DSR real on another port",
            vip("198.18.100.1", "80", "tcp", "mode = \"dsr\"", &r),
            "vip[0].real[0].port",
            "VIP's port 80",
        ),
        (
            "encap_source not a prefix",
            format!("encap_source = [\"198.18.250.0/33\"]\n{GOOD}"),
            "encap_source[0]",
            "prefix length",
        ),
        (
            "encap_source too short",
            format!("encap_source = [\"198.18.0.0/8\"]\n{GOOD}"),
            "encap_source[0]",
            "/16 or longer",
        ),
        (
            "encap_source twice for one family",
            format!("encap_source = [\"198.18.250.0/24\", \"198.18.251.0/24\"]\n{GOOD}"),
            "encap_source[1]",
            "one per family",
        ),
        (
            "decap without interfaces",
            format!("[decap]\ninterfaces = []\n{GOOD}"),
            "decap.interfaces",
            "at least one interface",
        ),
        (
            "decap on a balancing interface",
            format!("interfaces = [\"eth0\"]\n[decap]\ninterfaces = [\"eth0\"]\n{GOOD}"),
            "decap.interfaces[0]",
            "not both",
        ),
        (
            "decap gue_port zero",
            format!("[decap]\ninterfaces = [\"eth1\"]\ngue_port = 0\n{GOOD}"),
            "decap.gue_port",
            "not a port",
        ),
        (
            "ring too small",
            vip("198.18.100.1", "80", "tcp", "ring_size = 5", &r),
            "vip[0].ring_size",
            "outside",
        ),
        (
            "ring too large",
            vip("198.18.100.1", "80", "tcp", "ring_size = 131071", &r),
            "vip[0].ring_size",
            "outside",
        ),
        (
            "ring not prime",
            vip("198.18.100.1", "80", "tcp", "ring_size = 65536", &r),
            "vip[0].ring_size",
            "not prime",
        ),
        (
            "ring smaller than the number of reals",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "ring_size = 7",
                &(1..=8)
                    .map(|i| real(&format!("198.18.11.{i}"), "8080", "1"))
                    .collect::<String>(),
            ),
            "vip[0].ring_size",
            "cannot hold 8 reals",
        ),
        (
            "same VIP twice",
            format!("{GOOD}{GOOD}"),
            "vip[1]",
            "defined twice",
        ),
        (
            "VIP without reals",
            vip("198.18.100.1", "80", "tcp", "", ""),
            "vip[0].real",
            "at least one",
        ),
        (
            "real address not an address",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11", "8080", "1"),
            ),
            "vip[0].real[0].address",
            "not an IPv4 or IPv6",
        ),
        (
            "real of the other family",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("2001:db8::11", "8080", "1"),
            ),
            "vip[0].real[0].address",
            "IPv6 but the VIP",
        ),
        (
            "real port above 65535",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "65536", "1"),
            ),
            "vip[0].real[0].port",
            "65536",
        ),
        (
            "real port 0 on a single-port VIP",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "0", "1"),
            ),
            "vip[0].real[0].port",
            "0 is not a valid port",
        ),
        (
            "real port on an all-ports VIP",
            vip(
                "198.18.100.1",
                "0",
                "tcp",
                "",
                &real("198.18.11.2", "8080", "1"),
            ),
            "vip[0].real[0].port",
            "all-ports VIP",
        ),
        (
            "weight above the maximum",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "8080", "70000"),
            ),
            "vip[0].real[0].weight",
            "outside 0..=65535",
        ),
        (
            "negative weight",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "8080", "-2"),
            ),
            "vip[0].real[0].weight",
            "outside",
        ),
        (
            "same real twice in a VIP",
            vip("198.18.100.1", "80", "tcp", "", &format!("{r}{r}")),
            "vip[0].real[1]",
            "listed twice",
        ),
        (
            "every weight zero",
            vip(
                "198.18.100.1",
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "8080", "0"),
            ),
            "vip[0].real",
            "weight 0",
        ),
        (
            "negative hash seed",
            format!("hash_seed = -1\n{GOOD}"),
            "hash_seed",
            "outside 0..=4294967295",
        ),
        (
            "hash seed above u32",
            format!("hash_seed = 4294967296\n{GOOD}"),
            "hash_seed",
            "outside 0..=4294967295",
        ),
        (
            "hash seed not an integer",
            format!("hash_seed = \"random\"\n{GOOD}"),
            "line 1",
            "expected i64",
        ),
        (
            "unknown key",
            format!("{GOOD}colour = \"blue\"\n"),
            "line",
            "colour",
        ),
        ("not TOML", "[[vip]\naddress =".to_string(), "line", ""),
    ]
}

#[test]
fn every_rule_names_its_field() {
    let mut failures = Vec::new();
    for (desc, text, field, words) in cases() {
        match Config::parse(&text) {
            Ok(_) => failures.push(format!("{desc}: accepted")),
            Err(errs) => {
                let hit = errs
                    .0
                    .iter()
                    .any(|e| e.field.starts_with(field) && e.reason.contains(words));
                if !hit {
                    failures.push(format!("{desc}: want `{field}: …{words}…`, got:\n{errs}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn too_many_vips_and_reals_are_refused() {
    let vips: String = (0..65)
        .map(|i| {
            vip(
                &format!("198.18.100.{i}"),
                "80",
                "tcp",
                "",
                &real("198.18.11.2", "8080", "1"),
            )
        })
        .collect();
    let errs = Config::parse(&vips).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.field == "vip" && e.reason.contains("at most 64")),
        "{errs}"
    );

    let reals: String = (0..4096)
        .map(|i| {
            real(
                &format!("198.18.{}.{}", 20 + i / 250, 1 + i % 250),
                "8080",
                "1",
            )
        })
        .collect();
    let errs = Config::parse(&vip("198.18.100.1", "80", "tcp", "", &reals)).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.field == "vip" && e.reason.contains("4095")),
        "{errs}"
    );
}

#[test]
fn all_errors_are_reported_together() {
    let text = format!(
        "{}{}",
        vip(
            "198.18.100",
            "80",
            "sctp",
            "",
            &real("198.18.11.2", "0", "1")
        ),
        vip("198.18.100.2", "70000", "udp", "", "")
    );
    let errs = Config::parse(&text).unwrap_err();
    let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "vip[0].address",
        "vip[0].protocol",
        "vip[0].real[0].port",
        "vip[1].port",
        "vip[1].real",
    ] {
        assert!(fields.contains(&want), "missing {want} in {fields:?}");
    }
}

#[test]
fn good_configs_parse_to_what_they_say() {
    let c = Config::parse(&format!(
        "interfaces = [\"eth0\"]\n{}",
        vip(
            "2001:db8:100::1",
            "0",
            "udp",
            "ring_size = 4099",
            &real("2001:db8:11::2", "0", "3")
        )
    ))
    .unwrap();
    assert_eq!(c.interfaces, vec!["eth0".to_string()]);
    let v = &c.vips[0];
    assert_eq!(
        v.address,
        "2001:db8:100::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!((v.port, v.ring_size, v.protocol.as_str()), (0, 4099, "udp"));
    assert_eq!((v.reals[0].port, v.reals[0].weight), (0, 3));
    // Defaults.
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.vips[0].ring_size, 65537);
    assert_eq!(c.vips[0].reals[0].weight, 1);
    assert_eq!(c.hash_seed, lb_common::DEFAULT_HASH_SEED);
}

#[test]
fn hash_seed_takes_any_u32() {
    for (text, want) in [
        ("0", 0u32),
        ("4294967295", u32::MAX),
        ("0x9e3779b9", 0x9e37_79b9),
        ("1_000_003", 1_000_003),
    ] {
        let c = Config::parse(&format!("hash_seed = {text}\n{GOOD}")).unwrap();
        assert_eq!(c.hash_seed, want, "hash_seed = {text}");
    }
}

#[test]
fn lb_check_reports_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(
        &bad,
        vip(
            "198.18.100.1",
            "80",
            "tcp",
            "",
            &real("198.18.11", "8080", "1"),
        ),
    )
    .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 VIPs"));

    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vip[0].real[0].address: `198.18.11` is not an IPv4 or IPv6 address"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args([
            "check",
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// Configs whose errors lie across roles or in the files they name: rules
/// that used to be checked only when `lb run` started a role.
fn cross_role_cases(dir: &std::path::Path) -> Vec<(&'static str, String, &'static str)> {
    let zone = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dns/example.com.zone"
    );
    let broken_zone = dir.join("broken.zone");
    std::fs::write(
        &broken_zone,
        "$ORIGIN example.com.\n$TTL 60\n@ IN SOA ns1 host ( 1 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 300.1.2.3\n",
    )
    .unwrap();
    let l7 = |name: &str, listen: &str| {
        format!(
            "[[l7]]\nname = \"{name}\"\nlisten = \"{listen}\"\n[[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n"
        )
    };
    let dns = |file: &str| {
        format!("[dns]\nlisten = [\"127.0.0.1:0\"]\n[[dns.zone]]\nname = \"example.com.\"\nfile = \"{file}\"\n")
    };
    vec![
        (
            "two listeners on one address",
            format!(
                "{}{}",
                l7("a", "127.0.0.1:18080"),
                l7("b", "127.0.0.1:18080")
            ),
            "l7[1].listen",
        ),
        (
            "two listeners with one name",
            format!("{}{}", l7("a", "127.0.0.1:0"), l7("a", "127.0.0.1:0")),
            "l7[1].name",
        ),
        (
            "a certificate file that is missing",
            format!(
                "{}[[l7.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
                l7("a", "127.0.0.1:0"),
                dir.join("missing.pem").display(),
                dir.join("missing.key").display()
            ),
            "l7[0].cert[0]",
        ),
        (
            "a zone file that does not parse",
            dns(broken_zone.to_str().unwrap()),
            "dns.zone[0].file",
        ),
        (
            "a zone file that is missing",
            dns(dir.join("missing.zone").to_str().unwrap()),
            "dns.zone[0].file",
        ),
        (
            "a valid zone beside an invalid L4 table",
            format!("{}{}", dns(zone), vip("198.18.100.1", "80", "tcp", "", "")),
            "vip[0].real",
        ),
    ]
}

/// The error lines `lb` printed after `invalid config:`.
fn error_lines(stderr: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let Some((_, rest)) = text.split_once("invalid config:") else {
        return Vec::new();
    };
    rest.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `lb check` and `lb run` accept and refuse exactly the same configs, with
/// the same errors: every case of this suite goes through both binaries'
/// commands, and a valid config that `check` accepts is one `run` starts.
#[test]
fn check_and_run_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<(String, String, String)> = cases()
        .into_iter()
        .map(|(d, t, f, _)| (d.to_string(), t, f.to_string()))
        .collect();
    all.extend(
        cross_role_cases(dir.path())
            .into_iter()
            .map(|(d, t, f)| (d.to_string(), t, f.to_string())),
    );
    let file = dir.path().join("lb.toml");
    let mut failures = Vec::new();
    for (desc, text, field) in &all {
        std::fs::write(&file, text).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["check", "--config", file.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let run = Lb::builder(env!("CARGO_BIN_EXE_lb"), dir.path())
            .config_path(&file)
            .env("RUST_LOG", "warn")
            .run_to_exit()
            .unwrap_or_else(|e| panic!("{desc}: {e:#}"));
        let (ce, re) = (error_lines(&check.stderr), error_lines(&run.stderr));
        if check.status.code() != Some(1) || run.status.code() != Some(1) {
            failures.push(format!(
                "{desc}: check exited {:?}, run exited {:?}\ncheck: {}\nrun: {}",
                check.status.code(),
                run.status.code(),
                String::from_utf8_lossy(&check.stderr),
                String::from_utf8_lossy(&run.stderr)
            ));
        } else if ce.is_empty() || ce != re {
            failures.push(format!("{desc}: check said {ce:?}, run said {re:?}"));
        } else if !ce.iter().any(|l| l.starts_with(field.as_str())) {
            failures.push(format!("{desc}: no error for `{field}` in {ce:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A valid config with every user-space role: `check` accepts it and
    // `run` starts it (and stops on SIGTERM).
    let zone = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dns/example.com.zone"
    );
    std::fs::write(
        &file,
        format!(
            "[api]\nsocket = \"\"\n\
             [[l7]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[l7.route]]\nupstream = \"app\"\n\
             [[l7.upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\
             [dns]\nlisten = [\"127.0.0.1:0\"]\n[[dns.zone]]\nname = \"example.com.\"\nfile = \"{zone}\"\n"
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut run = Lb::builder(env!("CARGO_BIN_EXE_lb"), dir.path())
        .name("run")
        .config_path(&file)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let started = run
        .wait_for_log("running: 0 VIPs", std::time::Duration::from_secs(20))
        .is_ok();
    let status = run.stop().expect("lb run was started");
    let text = run.log();
    assert!(
        started,
        "lb run did not start a config lb check accepts:\n{text}"
    );
    assert!(status.success(), "lb run exited {status:?}:\n{text}");
}
