//! The admin API and CLI against a running daemon: every verb, `--json`,
//! exit codes, 4xx answers that name the wrong field, a reload with an
//! invalid config (nothing changes, the error says why), the bearer token
//! of the TCP listener, and the Prometheus endpoint.

use std::time::Duration;

use lb_userspace::{
    admin::client::{Client, Endpoint},
    testbed::{
        self,
        config::{ConfigBuilder, Health, Vip},
        http_names, privileged, NameServer, Topology,
    },
};
use serde_json::{json, Value};

const VIP: &str = "198.18.100.1:80/tcp";

fn request(client: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(client.request(method, path, body.as_ref()))
        .expect("request")
}

#[test]
fn every_verb_and_bad_requests() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<NameServer> =
        topo.on_reals(|ns, name| NameServer::start(ns, name, 8080, 8053).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .api_key("listen", "127.0.0.1:9181")
        .api_key("token_file", token_file.display().to_string())
        .metrics_listen("127.0.0.1:9180")
        .vip(
            Vip::tcp(testbed::VIP4.into(), 80)
                .health(Health::tcp().interval("500ms"))
                .reals4(&[1, 2], 8080),
        )
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mode = std::fs::metadata(&lb.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "the socket must be root-only by default"
    );

    // status, vip list, health: tables and JSON.
    let s = lb.cli_json(&["status"]);
    assert_eq!(
        (s["vips"].as_u64(), s["reals"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert!(lb.cli(&["status"]).unwrap().contains("L4: 1 VIPs"));
    assert!(lb
        .cli(&["vip", "list"])
        .unwrap()
        .contains("198.18.11.2:8080"));
    let h = lb.cli_json(&["health"]);
    assert_eq!(h["reals"].as_array().unwrap().len(), 2, "{h}");
    assert!(lb.cli(&["health"]).unwrap().contains("LAST FAILURE"));

    // vip add / real add / weight / drain / del.
    lb.cli(&[
        "vip",
        "add",
        "198.18.100.1:81/tcp",
        "--real",
        "198.18.11.2:8080=2",
        "--real",
        "198.18.12.2:8080",
        "--drain-timeout",
        "30s",
        "--health",
        "kind=tcp",
    ])
    .unwrap_or_else(|e| panic!("vip add: {e}"));
    let real3 = format!("{}:8080", testbed::real4(3));
    lb.cli(&["real", "add", VIP, &real3, "--weight", "3"])
        .unwrap();
    lb.cli(&["real", "weight", VIP, &real3, "5"]).unwrap();
    lb.cli(&["real", "drain", VIP, &real3]).unwrap();
    let v = lb.cli_json(&["vip", "list"]);
    assert_eq!(v["vips"].as_array().unwrap().len(), 2, "{v}");
    let r3 = &v["vips"][0]["reals"][2];
    assert_eq!(
        (r3["weight"].as_u64(), r3["draining"].as_bool()),
        (Some(0), Some(true)),
        "{v}"
    );
    assert_eq!(v["vips"][1]["reals"][0]["weight"], 2);
    assert_eq!(v["vips"][1]["drain_timeout_secs"], 30.0);
    // Traffic, then stats and conns.
    let names = http_names(&topo, 20).unwrap();
    assert!(
        names.iter().all(|n| n == "real1" || n == "real2"),
        "{names:?}"
    );
    let st = lb.cli_json(&["stats"]);
    let vip80 = st["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == VIP)
        .unwrap()
        .clone();
    assert!(vip80["totals"]["new_flows"].as_u64().unwrap() >= 20, "{st}");
    assert!(st["drops"].is_object(), "{st}");
    let watch = lb
        .cli(&["stats", "--watch", "0.2", "--count", "2"])
        .unwrap();
    assert_eq!(watch.matches("drops:").count(), 2, "{watch}");
    let c = lb.cli_json(&["conns", "--vip", VIP, "--limit", "5"]);
    assert!(
        c["count"].as_u64().unwrap() <= 5 && c["count"].as_u64().unwrap() > 0,
        "{c}"
    );
    assert!(lb.cli(&["conns"]).unwrap().contains("CLIENT"));
    lb.cli(&["real", "del", VIP, &real3]).unwrap();
    lb.cli(&["vip", "del", "198.18.100.1:81/tcp"]).unwrap();
    assert_eq!(
        lb.cli_json(&["vip", "list"])["vips"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // CLI errors: non-zero exit, one line naming the problem.
    let e = lb.cli(&["real", "weight", VIP, &real3, "1"]).unwrap_err();
    assert!(
        e.starts_with("lb: ") && e.contains("real: ") && e.contains("404"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = lb
        .cli(&["real", "weight", VIP, "198.18.11.2:8080", "70000"])
        .unwrap_err();
    assert!(e.contains("weight: 70000 is outside"), "{e}");
    let e = lb.cli(&["vip", "del", "198.18.100.9:80/tcp"]).unwrap_err();
    assert!(e.contains("vip: no VIP"), "{e}");

    // Malformed requests straight to the socket: 4xx naming the field.
    let client = Client::new(Endpoint::Unix(lb.socket.clone()));
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/reals/weight",
            Some(json!({"vip": VIP, "real": "198.18.11.2:8080", "weight": "heavy"})),
            400,
            "weight",
        ),
        (
            "POST",
            "/v1/reals/weight",
            Some(json!({"vip": VIP, "real": "198.18.11.2:8080"})),
            400,
            "weight",
        ),
        (
            "POST",
            "/v1/reals/drain",
            Some(json!({"vip": VIP, "real": "198.18.11.2:8080", "extra": 1})),
            400,
            "extra",
        ),
        (
            "POST",
            "/v1/reals/drain",
            Some(json!({"vip": "not-a-vip", "real": "198.18.11.2:8080"})),
            400,
            "vip",
        ),
        (
            "POST",
            "/v1/reals/add",
            Some(json!({"vip": VIP, "real": {"address": "198.18.13", "port": 8080}})),
            400,
            "real.address",
        ),
        (
            "POST",
            "/v1/reals/add",
            Some(json!({"vip": VIP, "real": {"address": "2001:db8:13::2", "port": 8080}})),
            400,
            "real.address",
        ),
        (
            "POST",
            "/v1/vips/add",
            Some(
                json!({"address": "198.18.100.1", "port": 82, "protocol": "sctp", "real": [{"address": "198.18.11.2", "port": 80}]}),
            ),
            400,
            "vip.protocol",
        ),
        (
            "POST",
            "/v1/vips/add",
            Some(
                json!({"address": "198.18.100.1", "port": 80, "protocol": "tcp", "real": [{"address": "198.18.11.2", "port": 80}]}),
            ),
            409,
            "vip",
        ),
        (
            "POST",
            "/v1/vips/add",
            Some(
                json!({"address": "198.18.100.1", "port": 83, "protocol": "tcp", "ring_size": 100, "real": [{"address": "198.18.11.2", "port": 80}]}),
            ),
            400,
            "vip.ring_size",
        ),
        ("GET", "/v1/conns?limit=0", None, 400, "limit"),
        ("GET", "/v1/conns?vipp=x", None, 400, "vipp"),
        ("GET", "/v1/reals/drain", None, 405, "method"),
        ("GET", "/v1/nothing", None, 404, "path"),
    ];
    for (method, path, body, status, field) in cases {
        let (got, v) = request(&client, method, path, body.clone());
        assert_eq!(got, status, "{method} {path} {body:?}: {v}");
        assert_eq!(v["field"], field, "{method} {path} {body:?}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{v}");
    }
    // Not JSON at all.
    let (got, v) = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::UnixStream::connect(&lb.socket).await.unwrap();
            s.write_all(b"POST /v1/vips/del HTTP/1.1\r\nhost: lb\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{vip:").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            let status: u16 = out[9..12].parse().unwrap();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            (status, serde_json::from_str::<Value>(&body).unwrap())
        })
    };
    assert_eq!(got, 400, "{v}");

    // Reload with an invalid config: nothing changes, the error names the field.
    let before = lb.cli_json(&["vip", "list"]);
    let good = std::fs::read_to_string(&lb.config).unwrap();
    std::fs::write(&lb.config, good.replace("port = 8080", "port = 80800")).unwrap();
    let e = lb.cli(&["reload"]).unwrap_err();
    assert!(
        e.contains("vip[0].real[0].port: 80800 is not a valid port"),
        "{e}"
    );
    lb.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lb
        .log()
        .contains("reload refused, running config unchanged"));
    let after = lb.cli_json(&["vip", "list"]);
    let stable = |v: &Value| -> Vec<String> {
        v["vips"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|vip| {
                vip["reals"].as_array().unwrap().iter().map(move |r| {
                    format!(
                        "{} {} {} {} {} {}",
                        vip["vip"],
                        r["real"],
                        r["weight"],
                        r["effective_weight"],
                        r["check"],
                        r["draining"]
                    )
                })
            })
            .collect()
    };
    assert_eq!(
        stable(&before),
        stable(&after),
        "a failed reload changed the state"
    );
    let names = http_names(&topo, 10).unwrap();
    assert!(names.iter().all(|n| !n.is_empty()), "{names:?}");
    assert_eq!(lb.cli_json(&["status"])["reloads_failed"], 2);
    // A valid reload applies as a diff.
    std::fs::write(
        &lb.config,
        good.replace("[[vip.real]]\naddress = \"198.18.12.2\"\nport = 8080\n", ""),
    )
    .unwrap();
    lb.cli(&["reload"])
        .unwrap_or_else(|e| panic!("reload: {e}"));
    let v = lb.cli_json(&["vip", "list"]);
    assert_eq!(v["vips"][0]["reals"].as_array().unwrap().len(), 1, "{v}");
    let names = http_names(&topo, 10).unwrap();
    assert!(names.iter().all(|n| n == "real1"), "{names:?}");

    // The loopback TCP listener needs the token.
    let out = topo
        .lb
        .command(crate::LB)
        .args([
            "status",
            "--json",
            "--api",
            "127.0.0.1:9181",
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = topo
        .lb
        .command(crate::LB)
        .args(["status", "--api", "127.0.0.1:9181"])
        .env("LB_TOKEN", "wrong-token-wrong-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Metrics.
    let m = topo
        .lb
        .exec(
            "curl",
            &["-s", "--max-time", "3", "http://127.0.0.1:9180/metrics"],
        )
        .unwrap();
    for needle in [
        "lb_build_info{version=",
        "lb_vip_packets_total{vip=\"198.18.100.1:80/tcp\"}",
        "lb_vip_new_flows_total{vip=\"198.18.100.1:80/tcp\"}",
        "lb_real_bytes_total{real=\"198.18.11.2:8080\"}",
        "lb_real_up{vip=\"198.18.100.1:80/tcp\",real=\"198.18.11.2:8080\"} 1",
        "lb_health_check_latency_seconds{vip=\"198.18.100.1:80/tcp\",real=\"198.18.11.2:8080\"}",
        "lb_drops_total{reason=\"fragment\"}",
        "lb_config_reloads_total{result=\"error\"} 2",
        "# TYPE lb_vip_bytes_total counter",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}
