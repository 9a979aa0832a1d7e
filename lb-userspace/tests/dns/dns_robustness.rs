//! Malformed queries, QDCOUNT, EDNS limits, rate limiting, zone reload, and
//! a bounded random-input run over the query path.

use crate::dns_common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use dns_common::{base_config, dig, have, parse_config, settings, start, try_settings};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::opt::{ClientSubnet, EdnsOption},
        Name, RecordType,
    },
};
use lb_userspace::dns::DnsServer;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

/// Sends one datagram, returns the reply if one comes within `wait`.
async fn exchange(sock: &UdpSocket, to: SocketAddr, pkt: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send_to(pkt, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_odd_queries() {
    let (srv, a) = start(&base_config("")).await;
    let s = client().await;
    let w = Duration::from_millis(500);

    // Shorter than a header: dropped.
    assert!(exchange(&s, a, &[1, 2, 3], w).await.is_none());
    // A response (QR set): never answered.
    let mut r = query("example.com.", RecordType::A);
    r.metadata.message_type = MessageType::Response;
    assert!(exchange(&s, a, &r.to_vec().unwrap(), w).await.is_none());

    // Header claims a question that is not there: FORMERR with our ID.
    let pkt = [0xab, 0xcd, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let resp = Message::from_vec(&exchange(&s, a, &pkt, w).await.expect("formerr")).unwrap();
    assert_eq!(resp.metadata.id, 0xabcd);
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);

    // QDCOUNT = 0 and QDCOUNT = 2: FORMERR.
    let mut m = Message::query();
    m.metadata.id = 7;
    let resp = Message::from_vec(&exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap()).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    let mut m = query("example.com.", RecordType::A);
    m.add_query(Query::query(
        Name::from_ascii("web.example.com.").unwrap(),
        RecordType::A,
    ));
    let resp = Message::from_vec(&exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap()).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    assert!(resp.answers.is_empty());

    // An RCODE in the query's header: FORMERR without the question (as
    // NSD), also when asked again (the response store must not keep it for
    // the clean question), which still gets its answer.
    for rcode in [1u8, 3, 15] {
        for _ in 0..2 {
            let mut raw = query("www.example.com.", RecordType::A).to_vec().unwrap();
            raw[3] |= rcode;
            let resp = Message::from_vec(&exchange(&s, a, &raw, w).await.unwrap()).unwrap();
            assert_eq!(
                resp.metadata.response_code,
                ResponseCode::FormErr,
                "rcode {rcode}"
            );
            assert!(resp.queries.is_empty() && resp.answers.is_empty());
        }
    }
    let resp = Message::from_vec(
        &exchange(
            &s,
            a,
            &query("www.example.com.", RecordType::A).to_vec().unwrap(),
            w,
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(resp.answers.len(), 3);

    // Other opcodes: NOTIMP.
    let mut m = query("example.com.", RecordType::SOA);
    m.metadata.op_code = OpCode::Notify;
    let resp = Message::from_vec(&exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap()).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::NotImp);

    // Zone transfer over UDP: REFUSED (transfers are not offered).
    let m = query("example.com.", RecordType::AXFR);
    let resp = Message::from_vec(&exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap()).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);

    // ECS with address bits beyond the source prefix: FORMERR (RFC 7871 7.1.2).
    let mut m = query("web.example.com.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
        // Only the first 3 octets go on the wire; 7 has bits past /20.
        "198.18.7.0".parse().unwrap(),
        20,
        0,
    )));
    m.set_edns(e);
    let resp = Message::from_vec(&exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap()).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);

    // EDNS payload below 512 is treated as 512; responses never exceed
    // what the client offered.
    for offered in [512u16, 700, 1232, 4096] {
        let mut m = query("big.example.com.", RecordType::TXT);
        let mut e = Edns::new();
        e.set_max_payload(offered);
        m.set_edns(e);
        let raw = exchange(&s, a, &m.to_vec().unwrap(), w).await.unwrap();
        assert!(
            raw.len() <= offered.min(1232) as usize,
            "{} > {offered}",
            raw.len()
        );
        let resp = Message::from_vec(&raw).unwrap();
        assert!(resp.metadata.truncation);
        assert_eq!(resp.queries.len(), 1, "question kept in TC answers");
    }
    assert!(
        srv.stats()
            .formerr
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    srv.shutdown().await;
}

/// A query with an OPT record carrying `option` (code, data) as its only
/// option, built by hand: `qname` none means QDCOUNT 0.
fn raw_query(id: u16, qname: Option<&[u8]>, option: (u16, &[u8])) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x00, 0x00]);
    p.extend_from_slice(&u16::from(qname.is_some()).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
    if let Some(q) = qname {
        p.extend_from_slice(q);
        p.extend_from_slice(&[0, 1, 0, 1]);
    }
    // OPT: root, type 41, payload 1232, ext-rcode 0, version 0, flags 0.
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    let (code, data) = option;
    p.extend_from_slice(&(data.len() as u16 + 4).to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p
}

fn cookie_of(m: &Message) -> Option<Vec<u8>> {
    m.edns
        .as_ref()?
        .options()
        .options
        .iter()
        .find_map(|(_, o)| match o {
            EdnsOption::Unknown(10, d) => Some(d.clone()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_on_the_wire() {
    let (srv, a) = start(&base_config("")).await;
    let s = client().await;
    let w = Duration::from_millis(500);
    let cc = [0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8];
    let www = b"\x03www\x07example\x03com\x00";

    // QDCOUNT 0 with only a client cookie: NOERROR, the client cookie and
    // a 16-byte server cookie (RFC 7873 5.4), not FORMERR; over TCP too.
    let q = raw_query(0x1234, None, (10, &cc));
    for tcp in [false, true] {
        let raw = if tcp {
            srv.handle_packet(&q, "127.0.0.1:5300".parse().unwrap(), true)
        } else {
            exchange(&s, a, &q, w).await
        };
        let m = Message::from_vec(&raw.expect("an answer")).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "tcp {tcp}");
        assert!(m.queries.is_empty() && m.answers.is_empty());
        let c = cookie_of(&m).expect("cookie");
        assert_eq!(&c[..8], &cc);
        assert_eq!(c.len(), 24);
        assert_eq!(c[8], 1, "RFC 9018 version");
    }
    // The server cookie it got is valid when sent back: NOERROR again,
    // echoed; a forged one: BADCOOKIE with a fresh cookie.
    let m = Message::from_vec(&exchange(&s, a, &q, w).await.unwrap()).unwrap();
    let good = cookie_of(&m).unwrap();
    let m = Message::from_vec(
        &exchange(&s, a, &raw_query(2, None, (10, &good)), w)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(cookie_of(&m).unwrap(), good);
    let mut forged = good.clone();
    forged[23] ^= 1;
    let m = Message::from_vec(
        &exchange(&s, a, &raw_query(3, None, (10, &forged)), w)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::BADCOOKIE);
    let fresh = cookie_of(&m).unwrap();
    assert_eq!(&fresh[..8], &cc);
    assert_ne!(fresh, forged);

    // A normal query with a client cookie: answered, with the cookies.
    let m = Message::from_vec(
        &exchange(&s, a, &raw_query(4, Some(www), (10, &cc)), w)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 3);
    assert_eq!(&cookie_of(&m).unwrap()[..8], &cc);

    // Malformed COOKIE lengths: FORMERR, with or without a question.
    for len in [0usize, 1, 7, 9, 15, 41] {
        let data = vec![0xaa; len];
        for qname in [None, Some(&www[..])] {
            let raw = exchange(&s, a, &raw_query(5, qname, (10, &data)), w)
                .await
                .unwrap_or_else(|| panic!("no answer to a {len}-byte cookie"));
            let m = Message::from_vec(&raw).unwrap();
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::FormErr,
                "{len} bytes"
            );
            assert!(m.answers.is_empty());
            assert!(cookie_of(&m).is_none());
        }
    }
    // Valid lengths with a question: answered.
    for len in [8usize, 16, 24, 40] {
        let data = vec![0xaa; len];
        let m = Message::from_vec(
            &exchange(&s, a, &raw_query(6, Some(www), (10, &data)), w)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{len} bytes"
        );
        assert_eq!(cookie_of(&m).unwrap().len(), 24);
    }
    // QDCOUNT 0 with another option and no cookie: still FORMERR.
    let m = Message::from_vec(
        &exchange(&s, a, &raw_query(7, None, (12, &[0; 4])), w)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    srv.shutdown().await;
}

/// Random bytes and mutated valid queries through the real query path
/// (in-process) for a bounded time: no panic, and every reply is a
/// well-formed response no larger than the client's limit.
#[test]
fn random_input_never_panics() {
    let cfg = settings(&base_config(
        r#"
[[gslb]]
name = "app.example.com."
policy = "weighted"
count = 1
health = { kind = "none" }
[[gslb.member]]
address = "198.18.0.10"
[[gslb.member]]
address = "2001:db8::10"
[rrl]
responses_per_second = 1000000
"#,
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let srv: DnsServer = rt.block_on(DnsServer::start(&cfg)).unwrap();
    let seeds: Vec<Vec<u8>> = [
        ("example.com.", RecordType::A),
        ("big.example.com.", RecordType::TXT),
        ("x.wild.example.com.", RecordType::TXT),
        ("host.child.example.com.", RecordType::A),
        ("app.example.com.", RecordType::AAAA),
        ("alias.example.com.", RecordType::ANY),
    ]
    .iter()
    .map(|(n, t)| {
        let mut m = query(n, *t);
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
            "198.18.0.0".parse().unwrap(),
            16,
            0,
        )));
        m.set_edns(e);
        m.to_vec().unwrap()
    })
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let deadline = Instant::now() + Duration::from_secs(3);
    let src: SocketAddr = "198.18.0.9:5353".parse().unwrap();
    let mut runs = 0u64;
    let mut answered = 0u64;
    while Instant::now() < deadline && runs < 2_000_000 {
        runs += 1;
        let pkt: Vec<u8> = if rng.random_bool(0.3) {
            let n = rng.random_range(0..600);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let mut p = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..8) {
                match rng.random_range(0..4) {
                    0 if !p.is_empty() => {
                        let i = rng.random_range(0..p.len());
                        p[i] = rng.random();
                    }
                    1 if !p.is_empty() => {
                        let i = rng.random_range(0..p.len());
                        p.truncate(i);
                    }
                    2 => p.push(rng.random()),
                    _ if p.len() > 12 => {
                        let i = rng.random_range(12..p.len());
                        p[i] ^= 1 << rng.random_range(0..8);
                    }
                    _ => {}
                }
            }
            p
        };
        let udp_limit = srv.udp_limit(&pkt);
        if let Some(out) = srv.handle_packet(&pkt, src, false) {
            answered += 1;
            assert!(
                out.len() <= udp_limit,
                "{} > {udp_limit} for {pkt:02x?}",
                out.len()
            );
            let m = Message::from_vec(&out)
                .unwrap_or_else(|e| panic!("unparseable reply {e} to {pkt:02x?}"));
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(&out[..2], &pkt[..2], "reply carries the query ID");
        }
        if let Some(out) = srv.handle_packet(&pkt, src, true) {
            assert!(Message::from_vec(&out).is_ok());
        }
    }
    assert!(runs > 1000, "only {runs} runs");
    assert!(answered > runs / 10, "only {answered} of {runs} answered");
    eprintln!("{runs} inputs, {answered} answered");
    rt.block_on(srv.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_limits_identical_responses() {
    let (srv, a) = start(&base_config(
        "[rrl]\nresponses_per_second = 5\nwindow = 2\nslip = 2\n",
    ))
    .await;
    let s = client().await;
    let pkt = query("web.example.com.", RecordType::A).to_vec().unwrap();
    let (mut full, mut tc) = (0, 0);
    for _ in 0..40 {
        if let Some(r) = exchange(&s, a, &pkt, Duration::from_millis(100)).await {
            let m = Message::from_vec(&r).unwrap();
            if m.metadata.truncation {
                assert!(m.answers.is_empty());
                tc += 1;
            } else {
                full += 1;
            }
        }
    }
    // 5/s for a burst of 40 sent within ~a second or two: far fewer than 40
    // full answers; half of the limited ones slip as TC.
    assert!((5..=20).contains(&full), "full answers: {full}");
    assert!(tc >= 5, "slipped: {tc}");
    // A different question is another bucket; TCP is never limited.
    let other = query("mail.example.com.", RecordType::A).to_vec().unwrap();
    let r = exchange(&s, a, &other, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(!Message::from_vec(&r).unwrap().metadata.truncation);
    if have("dig", "dnsutils") {
        let d = dig(a, &["+tcp", "web.example.com", "A"]).await;
        assert_eq!(d.answer.len(), 2);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_checks_serial_and_keeps_old_zone_on_errors() {
    if !have("dig", "dnsutils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zf = dir.path().join("example.com.zone");
    let head = |serial: u32| {
        format!(
            "$ORIGIN example.com.\n$TTL 60\n@ IN SOA ns1 host ( {serial} 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 198.18.0.53\n"
        )
    };
    std::fs::write(&zf, format!("{}www IN A 198.18.0.1\n", head(10))).unwrap();
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\n[[zone]]\nname = \"example.com.\"\nfile = \"{}\"\n",
        zf.display()
    );
    let (srv, a) = start(&toml).await;
    let www = |a| async move { dig(a, &["www.example.com", "A"]).await.answer_data() };
    assert_eq!(www(a).await, ["A 198.18.0.1"]);

    // Same serial, new content: not replaced.
    std::fs::write(&zf, format!("{}www IN A 198.18.0.2\n", head(10))).unwrap();
    srv.reload(&settings(&toml)).await.unwrap();
    assert_eq!(www(a).await, ["A 198.18.0.1"]);

    // Higher serial: replaced.
    std::fs::write(&zf, format!("{}www IN A 198.18.0.3\n", head(11))).unwrap();
    srv.reload(&settings(&toml)).await.unwrap();
    assert_eq!(www(a).await, ["A 198.18.0.3"]);
    assert_eq!(srv.serials()["example.com."], 11);

    // Broken file (line 7): the config is invalid, the error names the
    // field and the line, and the old zone keeps serving.
    std::fs::write(
        &zf,
        format!("{}www IN A 198.18.0.4\nbad IN A 300.1.2.3\n", head(12)),
    )
    .unwrap();
    let err = try_settings(&toml).unwrap_err();
    assert!(err.contains("line 7"), "{err}");
    assert!(err.starts_with("dns.zone[0].file"), "{err}");
    assert_eq!(www(a).await, ["A 198.18.0.3"]);

    // Serial going backwards: refused, old zone kept.
    std::fs::write(&zf, format!("{}www IN A 198.18.0.5\n", head(5))).unwrap();
    let err = srv.reload(&settings(&toml)).await.unwrap_err().to_string();
    assert!(err.contains("not newer"), "{err}");
    assert_eq!(www(a).await, ["A 198.18.0.3"]);
    srv.shutdown().await;
}

#[test]
fn config_errors_name_the_field() {
    let mut errors = Vec::new();
    let cfg = parse_config(
        r#"
listen = ["127.0.0.1"]
max_udp_payload = 100
udp_workers = 0
identity = ""
[[zone]]
name = "example.com."
file = "/nonexistent/zone"
[[gslb]]
name = "app.example.org."
policy = "nearest"
[[gslb.member]]
address = "198.18.0.300"
[rrl]
responses_per_second = -1
"#,
    );
    assert!(cfg.settings("dns", &mut errors).is_none());
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "dns.listen[0]",
        "dns.max_udp_payload",
        "dns.udp_workers",
        "dns.identity",
        "dns.zone[0].file",
        "dns.gslb[0].name",
        "dns.gslb[0].policy",
        "dns.gslb[0].member[0].address",
        "dns.rrl.responses_per_second",
    ] {
        assert!(fields.contains(&want), "{want} missing from {errors:?}");
    }
    let e = errors
        .iter()
        .find(|e| e.field == "dns.zone[0].file")
        .unwrap();
    assert!(e.reason.contains("cannot read"), "{e}");
    // The default TCP health check needs a port for a GSLB member.
    let mut errors = Vec::new();
    let cfg = parse_config(&base_config(
        "[[gslb]]\nname = \"app.example.com.\"\n[[gslb.member]]\naddress = \"198.18.0.1\"\n",
    ));
    assert!(cfg.settings("dns", &mut errors).is_none());
    assert_eq!(errors[0].field, "dns.gslb[0].health.port", "{errors:?}");
    // The identity is one TXT string: at most 255 printable ASCII bytes.
    for bad in ["x".repeat(256), "tab\there".into()] {
        let mut errors = Vec::new();
        let cfg = parse_config(&base_config(&format!("identity = {bad:?}")));
        assert!(cfg.settings("dns", &mut errors).is_none(), "{bad:?}");
        assert_eq!(errors[0].field, "dns.identity", "{errors:?}");
    }
    assert!(
        toml::from_str::<lb_userspace::dns::config::DnsConfig>("hide_version = \"yes\"").is_err()
    );
    assert!(toml::from_str::<lb_userspace::dns::config::DnsConfig>("bogus = 1").is_err());
}
