//! Restart without traffic loss: with `pin_path`, maps and XDP links are
//! pinned in bpffs; a restarted `lb` swaps its program into the pinned
//! links and reuses conntrack, so a transfer running through the VIP
//! finishes with no reset and no gap longer than a second. `lb cleanup`
//! detaches and removes the pinned state.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_userspace::testbed::{
    self,
    config::{ConfigBuilder, Vip},
    privileged,
    tcp::{read_stream, Mode, Server},
    PinDir, Topology,
};

const STREAM: u16 = 9100;
const CHUNK: usize = 1024;
const CHUNKS: usize = 200;

#[test]
fn a_transfer_survives_an_lb_restart() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(3).expect("topology");
    topo.block_kernel_forwarding().expect("nft");
    let mode = Mode::Stream {
        chunk: CHUNK,
        chunks: CHUNKS,
        every: Duration::from_millis(25),
    };
    let _servers: Vec<Server> =
        topo.on_reals(|ns, name| Server::start(ns, name, STREAM, mode).unwrap());
    let pins = PinDir::new().expect("bpffs");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .pin_path(&pins.0)
        .interfaces(topo.lb_ifaces.iter().map(String::as_str))
        .stats_interval("1s")
        .api_socket(&dir.path().join("lb.sock"))
        .vip(Vip::tcp(testbed::VIP4.into(), STREAM).reals4(&[1, 2, 3], STREAM))
        .build();
    let mut lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(pins.0.join("map_CONNTRACK").exists(), "maps are not pinned");
    assert!(pins.0.join("link_l0").exists(), "links are not pinned");

    // A ~5 s transfer; lb restarts in the middle of it.
    let vip_sa = SocketAddr::new(testbed::VIP4.into(), STREAM);
    let reader = topo.client.spawn(move || {
        let mut s = TcpStream::connect_timeout(&vip_sa, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(read_stream(&mut s))
    });
    std::thread::sleep(Duration::from_millis(1200));
    lb.stop();
    let log = lb.log();
    assert!(log.contains("XDP stays attached"), "{log}");
    // Still attached while no lb runs.
    assert!(topo.lb.ip(&["link", "show", "l0"]).unwrap().contains("xdp"));
    lb.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let (bytes, gap) = reader.join().unwrap().expect("transfer");
    let log = lb.log();
    assert!(log.contains("pinned state found: 1 VIPs, 3 reals"), "{log}");
    assert!(log.contains("program replaced in the pinned link"), "{log}");
    assert_eq!(
        bytes,
        CHUNK * CHUNKS,
        "the transfer was cut short across the restart\n{log}"
    );
    assert!(
        gap < Duration::from_secs(1),
        "a gap of {gap:?} in the transfer"
    );
    // New connections work with the new lb, counters kept counting.
    let (bytes2, _) = topo
        .client
        .run_in(move || {
            let mut s = TcpStream::connect_timeout(&vip_sa, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(read_stream(&mut s))
        })
        .unwrap();
    assert_eq!(bytes2, CHUNK * CHUNKS);

    // `lb run --cleanup`-less exit, then `lb cleanup`: detached, gone.
    lb.stop();
    let out = lb
        .host_command()
        .args(["cleanup", "--pin-path", pins.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("XDP detached"));
    assert!(!pins.0.exists(), "pin directory left behind");
    assert!(
        !topo.lb.ip(&["link", "show", "l0"]).unwrap().contains("xdp"),
        "XDP still attached after cleanup"
    );
}

#[test]
fn run_cleanup_detaches_on_exit() {
    if !privileged() {
        return;
    }
    let topo = Topology::build(1).expect("topology");
    let pins = PinDir::new().expect("bpffs");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::topology(&topo)
        .api_socket(&dir.path().join("lb.sock"))
        .vip(Vip::tcp(testbed::VIP4.into(), 80).reals4(&[1], 8080))
        .build();
    let pin_arg = pins.0.to_str().unwrap().to_string();
    let mut lb = topo
        .lb_builder(crate::LB, dir.path())
        .config(cfg)
        .args(["--pin-path", &pin_arg, "--cleanup"])
        .wait_for_api()
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(pins.0.join("link_l1").exists());
    lb.stop();
    assert!(!pins.0.exists(), "{}", lb.log());
    assert!(!topo.lb.ip(&["link", "show", "l0"]).unwrap().contains("xdp"));
}
