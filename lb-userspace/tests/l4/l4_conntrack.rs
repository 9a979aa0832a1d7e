//! Conntrack under pressure, through XDP in network namespaces: four times
//! as many concurrent TCP connections as `--conntrack-size` holds.
//!
//! * With the ring unchanged, every connection keeps reaching its real
//!   after its entries were evicted (a non-SYN packet that misses conntrack
//!   takes its real from the ring, which gives the same one), none is reset,
//!   and `conntrack_miss_mid_flow` counts the misses; a control phase with
//!   few flows counts none.
//! * With a ring change (a fourth real added), flows whose entry is still in
//!   conntrack stay on their real; flows whose entry was evicted follow the
//!   new ring, so those whose slot now belongs to the new real reach it and
//!   are reset by it (it has no such connection). Which flows do is
//!   predicted from the ring and the conntrack dump, and checked one by one.
//! * The LRU evicts entries, not flows: either direction of a flow may go
//!   alone. Deleting the forward entry, the reply entry or both from the
//!   pinned map leaves every connection working on its real.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    flow_hash_seeded, CtValue, FlowKey, CT_FORWARD, CT_REPLY, DEFAULT_HASH_SEED, FAMILY_V4,
    IPPROTO_TCP,
};
use lb_userspace::{
    config::Config,
    ident::{addr_bytes, Protocol},
    l4::{dataplane::flow_key, maglev::vip_ring},
    testbed::{
        self,
        config::{ConfigBuilder, Vip},
        privileged, Lb, Netns, PinDir, Topology,
    },
};

const PORT: u16 = 9000;
const VIP: &str = "198.18.100.1:9000/tcp";
/// Flows conntrack holds (`--conntrack-size`; two entries each).
const CT_FLOWS: usize = 512;
/// Concurrent connections under pressure.
const FLOWS: usize = 4 * CT_FLOWS;
/// Connections of the control phase: well below what conntrack holds.
const CONTROL_FLOWS: usize = CT_FLOWS / 8;
/// Replies that may time out before a round gives up (each costs
/// `READ_TIMEOUT`), so a broken data path fails the test quickly.
const MAX_TIMEOUTS: usize = 3;
/// Long enough for a few TCP retransmissions.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An echo server in a real's namespace: every line `x` is answered with
/// `name:x`. One task per connection, so thousands of connections stay
/// open cheaply. Counts the connections it accepted.
struct EchoServer {
    accepted: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl EchoServer {
    fn start(ns: &Netns, name: &str) -> EchoServer {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let name = name.to_string();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
                let l = match tokio::net::TcpListener::bind(("0.0.0.0", PORT)).await {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let serve = async move {
                    loop {
                        let Ok((s, _)) = l.accept().await else {
                            continue;
                        };
                        count.fetch_add(1, Ordering::Relaxed);
                        let name = name.clone();
                        tokio::spawn(async move {
                            let _ = s.set_nodelay(true);
                            let (r, mut w) = s.into_split();
                            let mut r = BufReader::new(r);
                            let mut line = String::new();
                            loop {
                                line.clear();
                                match r.read_line(&mut line).await {
                                    Ok(n) if n > 0 && line.len() < 256 => {}
                                    _ => return,
                                }
                                if w.write_all(format!("{name}:{line}").as_bytes())
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stop_rx => {}
                }
                Ok(())
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("echo server did not start")
            .expect("echo server");
        EchoServer {
            accepted,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client connection to the VIP.
struct Flow {
    stream: TcpStream,
    /// The client's source port (its 5-tuple, with the fixed addresses).
    port: u16,
    /// The real that answered its first line.
    real: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Echoed by this real.
    Echo(String),
    /// Reset by the peer.
    Reset,
    /// No answer within `READ_TIMEOUT`.
    Timeout,
    /// Anything else (closed, garbled echo, another error).
    Other(String),
    /// Not tried: the round gave up after `MAX_TIMEOUTS` timeouts.
    Skipped,
}

fn ping(s: &mut TcpStream, msg: &str) -> Outcome {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionReset => Outcome::Reset,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Other(e.to_string()),
    };
    if let Err(e) = s.write_all(format!("{msg}\n").as_bytes()) {
        return io(e);
    }
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.ends_with(b"\n") {
        match s.read(&mut chunk) {
            Ok(0) => return Outcome::Other("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return io(e),
        }
        if buf.len() > 512 {
            return Outcome::Other("echo too long".into());
        }
    }
    let line = String::from_utf8_lossy(&buf);
    match line.trim_end().split_once(':') {
        Some((name, echoed)) if echoed == msg => Outcome::Echo(name.to_string()),
        _ => Outcome::Other(format!("echo {line:?} for {msg:?}")),
    }
}

/// Opens `n` connections to the VIP from the client namespace, one after
/// the other, each sending one line to learn its real.
fn open(client: &Netns, n: usize, tag: &'static str) -> Vec<Flow> {
    let vip_sa = SocketAddr::new(testbed::VIP4.into(), PORT);
    client
        .run_in(move || {
            let mut flows = Vec::with_capacity(n);
            for i in 0..n {
                let mut s = TcpStream::connect_timeout(&vip_sa, Duration::from_secs(3))
                    .map_err(|e| anyhow::anyhow!("{tag}: connection {i}: {e}"))?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                s.set_nodelay(true)?;
                let port = s.local_addr()?.port();
                let real = match ping(&mut s, &format!("{tag}{i}")) {
                    Outcome::Echo(r) => r,
                    o => anyhow::bail!("{tag}: connection {i} (port {port}): {o:?}"),
                };
                flows.push(Flow {
                    stream: s,
                    port,
                    real,
                });
            }
            Ok(flows)
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends one line on each flow in `order` (indexes into `flows`) from the
/// client namespace; returns the flows and each one's outcome (by index).
fn round(
    client: &Netns,
    mut flows: Vec<Flow>,
    order: Vec<usize>,
    tag: &'static str,
) -> (Vec<Flow>, Vec<Outcome>) {
    client
        .run_in(move || {
            let mut out = vec![Outcome::Skipped; flows.len()];
            let mut timeouts = 0;
            for i in order {
                if timeouts >= MAX_TIMEOUTS {
                    break;
                }
                let o = ping(&mut flows[i].stream, &format!("{tag}{i}"));
                if o == Outcome::Timeout {
                    timeouts += 1;
                }
                out[i] = o;
            }
            Ok((flows, out))
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A fixed permutation of `0..n` (xorshift, Fisher–Yates).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Flows whose outcome is not an echo from their own real.
fn failures(flows: &[Flow], out: &[Outcome]) -> Vec<String> {
    flows
        .iter()
        .zip(out)
        .enumerate()
        .filter(|(_, (f, o))| **o != Outcome::Echo(f.real.clone()))
        .map(|(i, (f, o))| format!("conn {i} (port {}, {}): {o:?}", f.port, f.real))
        .collect()
}

/// The name (`realN`) the test gives the real at `addr`.
fn real_name(addr: IpAddr) -> String {
    (1..=4)
        .find(|&i| IpAddr::from(testbed::real4(i)) == addr)
        .map_or_else(|| format!("unknown real {addr}"), |i| format!("real{i}"))
}

/// The real the Maglev ring of `config`'s first VIP gives a new flow from
/// the client's `port`, as the data path computes it (default hash seed).
struct Ring {
    reals: Vec<IpAddr>,
    table: Vec<u32>,
    size: u32,
    vip: SocketAddr,
}

impl Ring {
    fn of(config: &str) -> Ring {
        let cfg = Config::parse(config).unwrap_or_else(|e| panic!("config: {e}"));
        assert_eq!(cfg.hash_seed, DEFAULT_HASH_SEED);
        let v = &cfg.vips[0];
        Ring {
            reals: v.reals.iter().map(|r| r.address).collect(),
            table: vip_ring(v),
            size: v.ring_size,
            vip: SocketAddr::new(v.address, v.port),
        }
    }

    fn real_for(&self, port: u16) -> String {
        let k = flow_key(
            SocketAddr::new(testbed::CLIENT4.into(), port),
            self.vip,
            Protocol::Tcp,
        );
        let slot = flow_hash_seeded(&k, DEFAULT_HASH_SEED) % self.size;
        real_name(self.reals[self.table[slot as usize] as usize])
    }
}

/// A global counter of the data path, read live through the API.
fn counter(lb: &Lb, name: &str) -> u64 {
    let v = lb.cli_json(&["stats"]);
    ["global", "drops"]
        .iter()
        .find_map(|g| v[g][name].as_u64())
        .unwrap_or(0)
}

/// Client ports of the VIP's flows that have a forward conntrack entry,
/// with the real the entry names.
fn conntrack(lb: &Lb) -> HashMap<u16, String> {
    let v = lb.cli_json(&["conns", "--vip", VIP, "--limit", "10000"]);
    v["conns"]
        .as_array()
        .unwrap_or_else(|| panic!("no conns in {v}"))
        .iter()
        .filter_map(|c| {
            let client: SocketAddr = c["client"].as_str()?.parse().ok()?;
            let real: SocketAddr = c["real"].as_str()?.parse().ok()?;
            Some((client.port(), real_name(real.ip())))
        })
        .collect()
}

#[test]
fn evicted_flows_keep_their_real_and_follow_the_ring_after_a_change() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let topo = Topology::build(4).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let servers: Vec<EchoServer> = topo.on_reals(EchoServer::start);
    let dir = tempfile::tempdir().unwrap();
    let cfg = |reals: &[usize]| {
        ConfigBuilder::topology(&topo)
            .api_socket(&dir.path().join("lb.sock"))
            .vip(Vip::tcp(testbed::VIP4.into(), PORT).reals4(reals, PORT))
            .build()
    };
    let (cfg3, cfg4) = (cfg(&[1, 2, 3]), cfg(&[1, 2, 3, 4]));
    let (ring3, ring4) = (Ring::of(&cfg3), Ring::of(&cfg4));
    let size = CT_FLOWS.to_string();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(&cfg3)
        .args(["--conntrack-size", &size])
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = || lb.log();

    // Control: few flows, the table never fills, no mid-flow miss.
    let control = open(&topo.client, CONTROL_FLOWS, "control");
    let mut control = control;
    for _ in 0..3 {
        let order = (0..control.len()).collect();
        let (f, out) = round(&topo.client, control, order, "again");
        let bad = failures(&f, &out);
        assert!(bad.is_empty(), "control flows failed: {bad:?}\n{}", log());
        control = f;
    }
    let control_misses = counter(&lb, "conntrack_miss_mid_flow");
    assert_eq!(
        control_misses,
        0,
        "{CONTROL_FLOWS} flows in a table of {CT_FLOWS} missed conntrack mid-flow\n{}",
        log()
    );
    drop(control);

    // Pressure: 4 × the table's flows, all held open.
    let t = Instant::now();
    let mut flows = open(&topo.client, FLOWS, "open");
    let opened = t.elapsed();
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for f in &flows {
        *spread.entry(f.real.clone()).or_default() += 1;
    }
    for r in ["real1", "real2", "real3"] {
        let n = spread.get(r).copied().unwrap_or(0);
        assert!(n > FLOWS / 5, "uneven spread over the reals: {spread:?}");
    }
    // Every flow took the real the ring predicts (so a flow that misses
    // conntrack later must reach the same real again).
    let off_ring: Vec<u16> = flows
        .iter()
        .filter(|f| ring3.real_for(f.port) != f.real)
        .map(|f| f.port)
        .collect();
    assert!(
        off_ring.is_empty(),
        "flows off the predicted ring: {off_ring:?}"
    );
    let in_table = conntrack(&lb).len();
    assert!(
        in_table <= 2 * CT_FLOWS,
        "{in_table} of {FLOWS} flows in a table of {} entries",
        2 * CT_FLOWS
    );

    // Every flow again, in order (each one's entries were evicted by the
    // 3 × CT_FLOWS flows after it), then in a shuffled order.
    let before = counter(&lb, "conntrack_miss_mid_flow");
    for (tag, order) in [
        ("seq", (0..FLOWS).collect::<Vec<_>>()),
        ("shuffled", shuffled(FLOWS)),
    ] {
        let passed = counter(&lb, "pass_non_vip");
        let (f, out) = round(&topo.client, flows, order, tag);
        let passed = counter(&lb, "pass_non_vip") - passed;
        let bad = failures(&f, &out);
        assert!(
            bad.is_empty(),
            "{tag}: {} of {FLOWS} flows did not get their echo from their real: {:?} \
             ({passed} packets passed to the kernel meanwhile)\n{}",
            bad.len(),
            &bad[..bad.len().min(20)],
            log()
        );
        flows = f;
    }
    let misses = counter(&lb, "conntrack_miss_mid_flow") - before;
    // The ordered round alone misses on nearly every flow.
    assert!(
        misses >= (FLOWS - CT_FLOWS) as u64,
        "only {misses} mid-flow conntrack misses in two rounds over {FLOWS} flows \
         with room for {CT_FLOWS}\n{}",
        log()
    );
    eprintln!(
        "pressure: {FLOWS} flows opened in {opened:?}, {in_table} in conntrack, \
         {misses} mid-flow misses in two rounds, none reset; spread {spread:?}"
    );

    // Ring change. Refresh some flows the new ring gives to real4, so their
    // entries are in the table when real4 is added.
    let moving: Vec<usize> = (0..FLOWS)
        .filter(|&i| ring4.real_for(flows[i].port) == "real4")
        .collect();
    assert!(
        moving.len() > FLOWS / 8 && moving.len() < FLOWS * 4 / 10,
        "{} of {FLOWS} flows on real4's new slots",
        moving.len()
    );
    let refreshed: Vec<usize> = moving.iter().copied().take(CT_FLOWS / 4).collect();
    let (f, out) = round(&topo.client, flows, refreshed.clone(), "refresh");
    flows = f;
    let bad: Vec<&Outcome> = refreshed
        .iter()
        .map(|&i| &out[i])
        .filter(|o| !matches!(o, Outcome::Echo(_)))
        .collect();
    assert!(bad.is_empty(), "refresh failed: {bad:?}");
    // Late ACKs settle before the table is read.
    std::thread::sleep(Duration::from_millis(300));
    let table = conntrack(&lb);
    for f in &flows {
        if let Some(r) = table.get(&f.port) {
            assert_eq!(
                *r, f.real,
                "conntrack names another real for port {}",
                f.port
            );
        }
    }
    let present: HashSet<usize> = (0..FLOWS)
        .filter(|&i| table.contains_key(&flows[i].port))
        .collect();
    let kept_refreshed = refreshed.iter().filter(|i| present.contains(i)).count();
    assert!(
        kept_refreshed * 2 >= refreshed.len(),
        "only {kept_refreshed} of {} just-used flows in conntrack",
        refreshed.len()
    );
    let accepted_before = servers[3].accepted();

    let real4 = format!("{}:{PORT}", testbed::real4(4));
    lb.cli(&["real", "add", VIP, &real4])
        .unwrap_or_else(|e| panic!("real add: {e}"));

    // First the flows with an entry: they only hit conntrack, so nothing
    // is evicted meanwhile, and every one stays on its real, also where
    // the new ring says real4.
    let with_entry: Vec<usize> = (0..FLOWS).filter(|i| present.contains(i)).collect();
    let passed = counter(&lb, "pass_non_vip");
    let (f, out) = round(&topo.client, flows, with_entry.clone(), "kept");
    let passed = counter(&lb, "pass_non_vip") - passed;
    flows = f;
    let bad: Vec<String> = with_entry
        .iter()
        .filter(|&&i| out[i] != Outcome::Echo(flows[i].real.clone()))
        .map(|&i| {
            format!(
                "conn {i} (port {}, {}): {:?}",
                flows[i].port, flows[i].real, out[i]
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "flows with a conntrack entry left their real after the ring change: {:?} \
         ({passed} packets passed to the kernel meanwhile: replies whose entry was gone)\n{}",
        &bad[..bad.len().min(20)],
        log()
    );
    let stayed_against_ring = with_entry
        .iter()
        .filter(|&&i| ring4.real_for(flows[i].port) == "real4")
        .count();
    assert!(
        stayed_against_ring > 0,
        "no flow with an entry on real4's new slots"
    );

    // Then the evicted ones: each follows the new ring. Those whose slot now
    // belongs to another real (mostly real4; Maglev also moves a few slots
    // between the old reals) reach a real without their connection and are
    // reset; the others stay on their real.
    let evicted: Vec<usize> = (0..FLOWS).filter(|i| !present.contains(i)).collect();
    let (f, out) = round(&topo.client, flows, evicted.clone(), "moved");
    flows = f;
    let mut moved = Vec::new();
    let mut wrong = Vec::new();
    for &i in &evicted {
        let f = &flows[i];
        let want_reset = ring4.real_for(f.port) != f.real;
        match (&out[i], want_reset) {
            (Outcome::Reset, true) => moved.push(i),
            (Outcome::Echo(r), false) if *r == f.real => {}
            (o, _) => wrong.push(format!(
                "conn {i} (port {}, {}, new ring {}): {o:?}",
                f.port,
                f.real,
                ring4.real_for(f.port)
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} evicted flows did not do what the new ring says: {:?}\n{}",
        wrong.len(),
        evicted.len(),
        &wrong[..wrong.len().min(20)],
        log()
    );
    assert!(
        !moved.is_empty() && moved.len() * 10 < FLOWS * 4,
        "{} of {FLOWS} flows moved",
        moved.len()
    );
    // real4 accepted none of them: it reset them.
    assert_eq!(
        servers[3].accepted(),
        accepted_before,
        "real4 accepted connections it never saw a SYN for"
    );
    // The moved flows' new entries name their new real (those still in the
    // table).
    let table = conntrack(&lb);
    let moved_in_table: Vec<(&String, String)> = moved
        .iter()
        .filter_map(|&i| {
            let port = flows[i].port;
            table.get(&port).map(|r| (r, ring4.real_for(port)))
        })
        .collect();
    assert!(
        !moved_in_table.is_empty() && moved_in_table.iter().all(|(r, want)| *r == want),
        "moved flows in conntrack (entry, new ring): {moved_in_table:?}"
    );
    // New connections reach real4 (the ring really changed).
    let fresh = open(&topo.client, 40, "fresh");
    assert!(
        fresh.iter().any(|f| f.real == "real4"),
        "no new connection reached real4"
    );
    for f in &fresh {
        assert_eq!(f.real, ring4.real_for(f.port), "new flow off the new ring");
    }
    eprintln!(
        "ring change: {} flows had an entry and stayed ({stayed_against_ring} of them on \
         real4's new slots), {} were evicted; {} of those moved to another real and were reset, \
         the rest stayed; runtime {:?}",
        with_entry.len(),
        evicted.len(),
        moved.len(),
        started.elapsed()
    );
}

/// The conntrack key of the replies of the flow from the client's `port`
/// served by `real`: real:PORT → client:port.
fn reply_key(real: &str, port: u16) -> FlowKey {
    let i: usize = real
        .strip_prefix("real")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a real name: {real}"));
    FlowKey {
        src: addr_bytes(testbed::real4(i).into()).0,
        dst: addr_bytes(testbed::CLIENT4.into()).0,
        sport: u16::from_ne_bytes(PORT.to_be_bytes()),
        dport: u16::from_ne_bytes(port.to_be_bytes()),
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// Eviction entry by entry: the LRU may evict either direction of a flow
/// alone. Entries are deleted from the pinned map (what an eviction does)
/// so each case is exact: the forward entry only, the reply entry only,
/// both. Every connection keeps working on its real.
#[test]
fn a_flow_that_lost_either_entry_keeps_its_real() {
    const CASES: [&str; 4] = [
        "untouched",
        "forward entry gone",
        "reply entry gone",
        "both gone",
    ];
    if !privileged() {
        return;
    }
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let _servers: Vec<EchoServer> = topo.on_reals(EchoServer::start);
    let pins = PinDir::new().expect("bpffs");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .pin_path(&pins.0)
        .interfaces(topo.lb_ifaces.iter().map(String::as_str))
        .stats_interval("1s")
        .api_socket(&dir.path().join("lb.sock"))
        .vip(Vip::tcp(testbed::VIP4.into(), PORT).reals4(&[1, 2, 3], PORT))
        .build();
    let lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vip_sa = SocketAddr::new(testbed::VIP4.into(), PORT);

    let flows = open(&topo.client, 2 * CASES.len(), "open");
    let data = MapData::from_pin(pins.0.join("map_CONNTRACK")).expect("pinned CONNTRACK");
    let mut ct: BpfHashMap<MapData, FlowKey, CtValue> = Map::from_map_data(data)
        .expect("CONNTRACK map")
        .try_into()
        .expect("CONNTRACK is a hash map");
    let keys = |f: &Flow| {
        (
            flow_key(
                SocketAddr::new(testbed::CLIENT4.into(), f.port),
                vip_sa,
                Protocol::Tcp,
            ),
            reply_key(&f.real, f.port),
        )
    };
    let mut real_ids = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let (fwd, rep) = keys(f);
        let fv = ct
            .get(&fwd, 0)
            .unwrap_or_else(|e| panic!("conn {i}: forward entry: {e}"));
        let rv = ct
            .get(&rep, 0)
            .unwrap_or_else(|e| panic!("conn {i}: reply entry: {e}"));
        assert_eq!((fv.kind, rv.kind), (CT_FORWARD, CT_REPLY), "conn {i}");
        assert_eq!(fv.real_id, rv.real_id, "conn {i}");
        real_ids.push(fv.real_id);
        let case = i % CASES.len();
        if case == 1 || case == 3 {
            ct.remove(&fwd).unwrap();
        }
        if case == 2 || case == 3 {
            ct.remove(&rep).unwrap();
        }
    }

    let misses = counter(&lb, "conntrack_miss_mid_flow");
    let restored = counter(&lb, "conntrack_restored");
    let passed = counter(&lb, "pass_non_vip");
    let order = (0..flows.len()).collect();
    let (flows, out) = round(&topo.client, flows, order, "after");
    let passed = counter(&lb, "pass_non_vip") - passed;
    let bad: Vec<String> = flows
        .iter()
        .zip(&out)
        .enumerate()
        .filter(|(_, (f, o))| **o != Outcome::Echo(f.real.clone()))
        .map(|(i, (f, o))| format!("conn {i} ({}, {}): {o:?}", CASES[i % CASES.len()], f.real))
        .collect();
    assert!(
        bad.is_empty(),
        "connections broke after losing conntrack entries: {bad:?} \
         ({passed} packets passed to the kernel)\n{}",
        lb.log()
    );
    let misses = counter(&lb, "conntrack_miss_mid_flow") - misses;
    assert!(
        misses >= flows.len() as u64 / 2,
        "{misses} mid-flow misses for {} flows without a forward entry",
        flows.len() / 2
    );
    // A lost reply entry is re-written from the forward entry by the
    // flow's next client packet.
    let restored = counter(&lb, "conntrack_restored") - restored;
    let reply_only = (0..flows.len()).filter(|i| i % CASES.len() == 2).count() as u64;
    assert!(
        restored >= reply_only,
        "{restored} entries restored, {reply_only} flows lost only their reply entry"
    );
    // Both entries name the flow's real again.
    for (i, f) in flows.iter().enumerate() {
        let (fwd, rep) = keys(f);
        let case = i % CASES.len();
        let fv = ct.get(&fwd, 0);
        assert!(
            matches!(&fv, Ok(v) if v.real_id == real_ids[i]),
            "conn {i} ({}): forward entry after the round: {fv:?}, real id {}",
            CASES[case],
            real_ids[i]
        );
        let rv = ct.get(&rep, 0);
        assert!(
            matches!(&rv, Ok(v) if v.real_id == real_ids[i]),
            "conn {i} ({}): reply entry after the round: {rv:?}",
            CASES[case]
        );
    }
    drop(lb);
}
