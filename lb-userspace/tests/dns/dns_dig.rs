//! Our server on loopback, real `dig` as the client: what dig receives for
//! each record type and each kind of answer.

use crate::dns_common;

use dns_common::{base_config, dig, have, start, Dig};

macro_rules! need_dig {
    () => {
        if !have("dig", "dnsutils") {
            return;
        }
    };
}

fn recs(section: &[String]) -> Vec<(String, u32, String, String)> {
    let mut v = Dig::records(section);
    v.sort();
    v
}

fn rec(name: &str, ttl: u32, t: &str, data: &str) -> (String, u32, String, String) {
    (name.into(), ttl, t.into(), data.into())
}

const APEX_NS: [(&str, &str); 2] = [("ns1.example.com.", ""), ("ns2.example.com.", "")];

fn assert_apex_ns_authority(d: &Dig) {
    let au = recs(&d.authority);
    let want: Vec<_> = APEX_NS
        .iter()
        .map(|(n, _)| rec("example.com.", 3600, "NS", n))
        .collect();
    assert_eq!(au, want, "{}", d.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_types() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;

    let d = dig(a, &["example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(
        d.has_flag("aa") && d.has_flag("qr") && !d.has_flag("tc"),
        "{:?}",
        d.flags
    );
    assert_eq!(
        recs(&d.answer),
        vec![rec("example.com.", 3600, "A", "198.18.0.1")]
    );
    assert_apex_ns_authority(&d);
    let ad = recs(&d.additional);
    assert_eq!(
        ad,
        vec![
            rec("ns1.example.com.", 3600, "A", "198.18.0.53"),
            rec("ns1.example.com.", 3600, "AAAA", "2001:db8::53"),
            rec("ns2.example.com.", 3600, "A", "198.18.0.54"),
        ]
    );

    let d = dig(a, &["example.com", "AAAA"]).await;
    assert_eq!(
        recs(&d.answer),
        vec![rec("example.com.", 3600, "AAAA", "2001:db8::1")]
    );

    let d = dig(a, &["example.com", "MX"]).await;
    assert_eq!(
        d.answer_data(),
        vec!["MX 10 mail.example.com.", "MX 20 mail2.example.net."]
    );
    // Addresses of the in-zone exchange go in additional.
    let ad = recs(&d.additional);
    assert!(
        ad.contains(&rec("mail.example.com.", 3600, "A", "198.18.0.25")),
        "{}",
        d.raw
    );
    assert!(
        ad.contains(&rec("mail.example.com.", 3600, "AAAA", "2001:db8::25")),
        "{}",
        d.raw
    );

    let d = dig(a, &["multi.example.com", "TXT"]).await;
    assert_eq!(
        d.answer_data(),
        vec![r#"TXT "first string" "second string" "third; with semicolon""#]
    );

    let d = dig(a, &["_sip._tcp.example.com", "SRV"]).await;
    assert_eq!(
        d.answer_data(),
        vec![
            "SRV 10 60 5060 sip.example.com.",
            "SRV 20 40 5060 sip2.example.net."
        ]
    );
    assert!(recs(&d.additional).contains(&rec("sip.example.com.", 3600, "A", "198.18.0.60")));

    let d = dig(a, &["example.com", "CAA"]).await;
    assert_eq!(
        d.answer_data(),
        vec![
            r#"CAA 0 iodef "mailto:security@example.com""#,
            r#"CAA 0 issue "ca.example.net""#
        ]
    );

    let d = dig(a, &["example.com", "SOA"]).await;
    assert_eq!(
        d.answer_data(),
        vec!["SOA ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 300"]
    );

    let d = dig(a, &["example.com", "NS"]).await;
    assert_eq!(
        d.answer_data(),
        vec!["NS ns1.example.com.", "NS ns2.example.com."]
    );
    assert!(
        d.authority.is_empty(),
        "NS answer is not repeated in authority"
    );
    assert_eq!(recs(&d.additional).len(), 3);

    let d = dig(a, &["web.example.com", "A"]).await;
    assert_eq!(
        recs(&d.answer),
        vec![
            rec("web.example.com.", 300, "A", "198.18.0.80"),
            rec("web.example.com.", 300, "A", "198.18.0.81")
        ]
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_wildcard_and_case() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;

    // CNAME chain inside the zone is followed.
    let d = dig(a, &["alias.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(
        recs(&d.answer),
        vec![
            rec("alias.example.com.", 3600, "CNAME", "www.example.com."),
            rec("web.example.com.", 300, "A", "198.18.0.80"),
            rec("web.example.com.", 300, "A", "198.18.0.81"),
            rec("www.example.com.", 3600, "CNAME", "web.example.com."),
        ]
    );
    // Asking for the CNAME itself is not followed.
    let d = dig(a, &["www.example.com", "CNAME"]).await;
    assert_eq!(d.answer_data(), vec!["CNAME web.example.com."]);
    // Out of zone target: the CNAME alone.
    let d = dig(a, &["ext.example.com", "A"]).await;
    assert_eq!(d.answer_data(), vec!["CNAME www.example.net."]);
    assert!(d.authority.is_empty());
    // Dangling in-zone target: NXDOMAIN with the CNAME (RFC 6604).
    let d = dig(a, &["dangling.example.com", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert_eq!(d.answer_data(), vec!["CNAME nothere.example.com."]);
    // A loop ends without hanging.
    let d = dig(a, &["loop1.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.answer.len(), 2);

    // Wildcards: synthesised with the query name as owner.
    let d = dig(a, &["anything.wild.example.com", "A"]).await;
    assert_eq!(
        recs(&d.answer),
        vec![rec("anything.wild.example.com.", 3600, "A", "198.18.0.99")]
    );
    let d = dig(a, &["x.y.wild.example.com", "TXT"]).await;
    assert_eq!(d.answer_data(), vec![r#"TXT "wildcard""#]);
    // An existing name blocks the wildcard, and so do its descendants.
    let d = dig(a, &["sub.wild.example.com", "A"]).await;
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
    let d = dig(a, &["a.sub.wild.example.com", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    // Wildcard CNAME is followed.
    let d = dig(a, &["foo.cname.example.com", "A"]).await;
    assert_eq!(
        d.answer_data(),
        vec!["A 198.18.0.80", "A 198.18.0.81", "CNAME web.example.com."]
    );

    // Case: matched case-insensitively, the question's case echoed.
    let d = dig(a, &["MiXeD.cAsE.ExAmPlE.CoM", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(
        d.question[0].starts_with("MiXeD.cAsE.ExAmPlE.CoM."),
        "{:?}",
        d.question
    );
    assert_eq!(d.answer_data(), vec!["A 198.18.0.77"]);
    assert!(
        d.answer[0].starts_with("MiXeD.cAsE.ExAmPlE.CoM."),
        "{:?}",
        d.answer
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_delegation_refused() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;
    let soa = rec(
        "example.com.",
        300,
        "SOA",
        "ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 300",
    );

    let d = dig(a, &["nope.example.com", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.has_flag("aa"));
    assert!(d.answer.is_empty());
    // Negative TTL = min(SOA TTL 3600, MINIMUM 300).
    assert_eq!(recs(&d.authority), vec![soa.clone()]);

    // NODATA: the name exists, not the type.
    let d = dig(a, &["web.example.com", "MX"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.has_flag("aa") && d.answer.is_empty());
    assert_eq!(recs(&d.authority), vec![soa.clone()]);
    // Empty non-terminal: NODATA too, not NXDOMAIN.
    let d = dig(a, &["c.deep.example.com", "A"]).await;
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
    assert_eq!(recs(&d.authority), vec![soa.clone()]);

    // Delegation: not authoritative, NS in authority, glue in additional.
    let d = dig(a, &["host.child.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(!d.has_flag("aa"), "{:?}", d.flags);
    assert!(d.answer.is_empty());
    assert_eq!(
        recs(&d.authority),
        vec![
            rec("child.example.com.", 3600, "NS", "ns.example.net."),
            rec("child.example.com.", 3600, "NS", "ns1.child.example.com."),
        ]
    );
    assert_eq!(
        recs(&d.additional),
        vec![
            rec("ns1.child.example.com.", 3600, "A", "198.18.1.53"),
            rec("ns1.child.example.com.", 3600, "AAAA", "2001:db8:1::53"),
        ]
    );
    // DS at the cut is the parent's business: authoritative NODATA.
    let d = dig(a, &["child.example.com", "DS"]).await;
    assert!(d.has_flag("aa"));
    assert_eq!(recs(&d.authority), vec![soa.clone()]);
    // CNAME into the delegation: CNAME + referral.
    let d = dig(a, &["tochild.example.com", "A"]).await;
    assert_eq!(d.answer_data(), vec!["CNAME host.child.example.com."]);
    assert_eq!(recs(&d.authority).len(), 2);

    // Outside our zones.
    let d = dig(a, &["example.org", "A"]).await;
    assert_eq!(d.status, "REFUSED");
    assert!(!d.has_flag("aa") && d.answer.is_empty());
    // CHAOS names other than the identity ones: REFUSED.
    let d = dig(a, &["authors.bind", "TXT", "CH"]).await;
    assert_eq!(d.status, "REFUSED");
    srv.shutdown().await;
}

/// `dig` output with `+short`: one line per answer record.
async fn short(a: std::net::SocketAddr, args: &[&str]) -> Vec<String> {
    let mut v = args.to_vec();
    v.push("+short");
    dig(a, &v).await.raw.lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_identity_and_version() {
    need_dig!();
    let (srv, a) = start(&base_config("identity = \"ns1.example\"")).await;
    let version = format!("\"lb {}\"", env!("CARGO_PKG_VERSION"));
    for (name, want) in [
        ("id.server", "\"ns1.example\""),
        ("hostname.bind", "\"ns1.example\""),
        ("ID.SERVER", "\"ns1.example\""),
        ("version.server", version.as_str()),
        ("version.bind", version.as_str()),
    ] {
        for extra in [
            &[][..],
            &["+nocookie"],
            &["+nocookie"],
            &["+tcp"],
            &["+noedns"],
        ] {
            let mut args = vec!["CH", "TXT", name];
            args.extend_from_slice(extra);
            assert_eq!(short(a, &args).await, vec![want.to_string()], "{args:?}");
        }
        let d = dig(a, &["-c", "CH", "-t", "TXT", "-q", name]).await;
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(!d.has_flag("aa"), "{}", d.raw);
        let recs = Dig::records(&d.answer);
        assert_eq!(recs.len(), 1, "{}", d.raw);
        assert_eq!(recs[0].1, 0, "TTL 0: {}", d.raw);
        assert!(d.answer[0].contains("\tCH\tTXT\t"), "{}", d.raw);
    }
    for (name, t) in [
        ("id.server", "A"),
        ("authors.bind", "TXT"),
        ("x.version.bind", "TXT"),
    ] {
        let d = dig(a, &["-c", "CH", "-t", t, "-q", name]).await;
        assert_eq!(d.status, "REFUSED", "{name} {t}: {}", d.raw);
        assert!(d.answer.is_empty());
    }
    // Class HS and others: REFUSED.
    let d = dig(a, &["-c", "HS", "-t", "TXT", "-q", "id.server"]).await;
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    srv.shutdown().await;

    // hide_version: version queries REFUSED; the identity defaults to the
    // host name.
    let (srv, a) = start(&base_config("hide_version = true")).await;
    for name in ["version.server", "version.bind"] {
        let d = dig(a, &["-c", "CH", "-t", "TXT", "-q", name]).await;
        assert_eq!(d.status, "REFUSED", "{}", d.raw);
        assert!(d.answer.is_empty());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        short(a, &["CH", "TXT", "id.server"]).await,
        vec![format!("\"{}\"", host.trim())]
    );
    // A reload applies a new identity and shows the version again.
    let cfg = base_config("identity = \"ns2.example\"");
    srv.reload(&dns_common::settings(&cfg)).await.unwrap();
    assert_eq!(
        short(a, &["+nocookie", "CH", "TXT", "id.server"]).await,
        vec!["\"ns2.example\"".to_string()]
    );
    assert_eq!(
        short(a, &["+nocookie", "CH", "TXT", "version.bind"]).await,
        vec![version.clone()]
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_truncation_and_tcp() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;

    // EDNS: our OPT carries our payload size (1232 by default).
    let d = dig(a, &["+edns=0", "+bufsize=4096", "web.example.com", "A"]).await;
    assert!(
        d.edns.as_deref().unwrap_or("").contains("udp: 1232"),
        "{}",
        d.raw
    );
    // DO=1 is echoed (RFC 3225), on the full and the cached path and over
    // TCP; the zone is unsigned, so no RRSIGs. DO=0 stays 0.
    for args in [
        &["+dnssec", "web.example.com", "A"][..],
        &["+dnssec", "+nocookie", "web.example.com", "A"],
        &["+dnssec", "+nocookie", "web.example.com", "A"],
        &["+dnssec", "+tcp", "web.example.com", "A"],
        &["+dnssec", "+nocookie", "nope.example.com", "A"],
    ] {
        let d = dig(a, args).await;
        let edns = d.edns.as_deref().unwrap_or("");
        assert!(
            edns.starts_with("; EDNS: version: 0, flags: do;"),
            "{args:?}: {}",
            d.raw
        );
        assert!(!d.raw.contains("RRSIG"), "{}", d.raw);
    }
    let d = dig(a, &["+dnssec", "web.example.com", "A"]).await;
    assert_eq!(d.answer.len(), 2, "{}", d.raw);
    for args in [
        &["+nodnssec", "+nocookie", "web.example.com", "A"][..],
        &["+nodnssec", "web.example.com", "A"],
    ] {
        let d = dig(a, args).await;
        let edns = d.edns.as_deref().unwrap_or("");
        assert!(edns.starts_with("; EDNS: version: 0, flags:;"), "{}", d.raw);
    }
    // Without EDNS, no OPT.
    let d = dig(a, &["+noedns", "web.example.com", "A"]).await;
    assert!(d.edns.is_none(), "{}", d.raw);
    // Unknown EDNS version: BADVERS.
    let d = dig(
        a,
        &["+edns=1", "+noednsnegotiation", "web.example.com", "A"],
    )
    .await;
    assert_eq!(d.status, "BADVERS", "{}", d.raw);

    // 30 TXT records of ~100 bytes: about 3.5 KB.
    // Over UDP without retry: TC, nothing in the answer, within 512 bytes.
    let d = dig(a, &["+ignore", "+noedns", "big.example.com", "TXT"]).await;
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.answer.is_empty());
    assert!(d.msg_size.unwrap() <= 512);
    // With EDNS 4096 offered, still capped at our 1232.
    let d = dig(a, &["+ignore", "+bufsize=4096", "big.example.com", "TXT"]).await;
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.msg_size.unwrap() <= 1232);
    // dig's default behaviour: retry over TCP on TC, get all 30.
    let d = dig(a, &["big.example.com", "TXT"]).await;
    assert!(d.tcp, "dig retried over TCP: {}", d.raw);
    assert!(!d.has_flag("tc"));
    assert_eq!(d.answer.len(), 30);
    let d = dig(a, &["+tcp", "big.example.com", "TXT"]).await;
    assert_eq!(d.answer.len(), 30);
    assert!(d.msg_size.unwrap() > 3000);

    // A 512-byte client asking a mid-size answer: additional dropped first,
    // no TC when the answer itself fits.
    let d = dig(a, &["+noedns", "example.com", "MX"]).await;
    assert!(!d.has_flag("tc"));
    assert_eq!(d.answer.len(), 2);
    assert!(d.msg_size.unwrap() <= 512);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_serves_several_queries_on_one_connection() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;
    // +keepopen sends the queries over one TCP connection.
    let out = tokio::process::Command::new("dig")
        .args([
            &format!("@{}", a.ip()),
            "-p",
            &a.port().to_string(),
            "+tcp",
            "+keepopen",
            "+norec",
            "+time=2",
            "+tries=1",
            "web.example.com",
            "A",
            "mail.example.com",
            "A",
            "nope.example.com",
            "A",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("status: NOERROR").count(), 2, "{text}");
    assert_eq!(text.matches("status: NXDOMAIN").count(), 1, "{text}");
    srv.shutdown().await;
}

/// The `; COOKIE: <hex> (...)` line dig prints: the hex and the verdict.
fn cookie_line(d: &Dig) -> Option<(String, String)> {
    let l = d.raw.lines().find(|l| l.starts_with("; COOKIE: "))?;
    let rest = l.strip_prefix("; COOKIE: ")?;
    let (hex, verdict) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((hex.to_string(), verdict.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cookies() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;
    // dig sends a client cookie and checks that it comes back with a
    // server cookie (16 bytes, RFC 9018): "(good)".
    let client = "0123456789abcdef";
    let arg = format!("+cookie={client}");
    let d = dig(a, &[&arg, "web.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answer.len(), 2);
    let (hex, verdict) = cookie_line(&d).unwrap_or_else(|| panic!("no cookie: {}", d.raw));
    assert_eq!(verdict, "(good)", "{}", d.raw);
    assert_eq!(hex.len(), 48, "8 + 16 bytes: {}", d.raw);
    assert!(hex.starts_with(client));
    assert!(hex[16..].starts_with("01000000"), "version 1: {hex}");
    // The full cookie sent back within its first half hour: echoed as is,
    // on UDP and TCP, and on error answers too.
    let full = format!("+cookie={hex}");
    for args in [
        &[full.as_str(), "web.example.com", "A"][..],
        &[full.as_str(), "+tcp", "web.example.com", "A"],
        &[full.as_str(), "example.org", "A"],
        &[full.as_str(), "nope.example.com", "A"],
    ] {
        let d = dig(a, args).await;
        assert_eq!(
            cookie_line(&d),
            Some((hex.clone(), "(good)".into())),
            "{args:?}: {}",
            d.raw
        );
    }
    // A server cookie that is not ours: answered, with a new one.
    let forged = format!("+cookie={client}0100000000000000ffffffffffffffff");
    let d = dig(a, &[&forged, "web.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answer.len(), 2);
    let (h, _) = cookie_line(&d).unwrap();
    assert_eq!(h.len(), 48);
    assert_ne!(&h[16..], "0100000000000000ffffffffffffffff");
    // Without a cookie, none in the answer.
    let d = dig(a, &["+nocookie", "web.example.com", "A"]).await;
    assert!(cookie_line(&d).is_none(), "{}", d.raw);
    // Only the header and a cookie (QDCOUNT 0): NOERROR with a cookie
    // (RFC 7873 5.4).
    let d = dig(a, &[&arg, "+header-only", "web.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let (h, verdict) = cookie_line(&d).unwrap_or_else(|| panic!("no cookie: {}", d.raw));
    assert!(h.starts_with(client) && h.len() == 48, "{}", d.raw);
    assert_eq!(verdict, "(good)");
    // A big answer still truncates, and the TC answer carries the cookie.
    let d = dig(
        a,
        &[&arg, "+ignore", "+bufsize=1232", "big.example.com", "TXT"],
    )
    .await;
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.msg_size.unwrap() <= 1232);
    assert!(
        cookie_line(&d).is_some_and(|(h, _)| h.starts_with(client)),
        "{}",
        d.raw
    );
    srv.shutdown().await;
}

/// Class ANY (255): answered from the zone like class IN, as NSD does:
/// records of class IN, no AA, no authority section except in referrals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_any_is_answered_from_the_zone() {
    need_dig!();
    let (srv, a) = start(&base_config("")).await;
    for _ in 0..2 {
        let d = dig(
            a,
            &["+nocookie", "-c", "ANY", "-t", "A", "-q", "web.example.com"],
        )
        .await;
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(!d.has_flag("aa"), "{}", d.raw);
        assert_eq!(
            recs(&d.answer),
            vec![
                rec("web.example.com.", 300, "A", "198.18.0.80"),
                rec("web.example.com.", 300, "A", "198.18.0.81"),
            ]
        );
        assert!(
            d.authority.is_empty() && d.additional.is_empty(),
            "{}",
            d.raw
        );
    }
    // NS at the apex: the addresses of the servers in additional.
    let d = dig(a, &["-c", "ANY", "-t", "NS", "-q", "example.com"]).await;
    assert_eq!(d.answer.len(), 2);
    assert_eq!(d.additional.len(), 3, "{}", d.raw);
    // NXDOMAIN without the SOA; outside our zones REFUSED; referrals as in IN.
    let d = dig(a, &["-c", "ANY", "-t", "A", "-q", "nope.example.com"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.authority.is_empty(), "{}", d.raw);
    let d = dig(a, &["-c", "ANY", "-t", "A", "-q", "example.org"]).await;
    assert_eq!(d.status, "REFUSED");
    let d = dig(a, &["-c", "ANY", "-t", "A", "-q", "host.child.example.com"]).await;
    assert!(!d.has_flag("aa") && d.answer.is_empty());
    assert_eq!(recs(&d.authority).len(), 2, "{}", d.raw);
    srv.shutdown().await;
}
