//! Shared pieces of the control-plane tests: a running `lb` with its own
//! API socket, the CLI, and servers on the reals that keep connections
//! open (echo) or stream data, so tests can tell which real a connection
//! reached and whether it survived a change.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_userspace::testbed::{self, Netns, Topology};
use serde_json::Value;

pub use lb_userspace::testbed::privileged;

/// A running `lb run` in the topology's lb namespace.
pub struct Lb {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Lb {
    /// Writes `config` and starts `lb run` with `extra` arguments; waits
    /// for XDP on every lb interface and for the API socket.
    pub fn start(topo: &Topology, dir: &Path, config: &str, extra: &[&str]) -> Lb {
        let cfg = dir.join("lb.toml");
        std::fs::write(&cfg, config).unwrap();
        let socket = dir.join("lb.sock");
        let mut lb = Lb {
            child: None,
            dir: dir.to_path_buf(),
            config: cfg,
            socket,
            log: dir.join("lb.log"),
        };
        lb.spawn(topo, extra);
        lb
    }

    pub fn spawn(&mut self, topo: &Topology, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = topo
            .lb
            .command(env!("CARGO_BIN_EXE_lb"))
            .args(["run", "--config", self.config.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn lb");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.socket.exists() && self.cli(&["status", "--json"]).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("lb exited with {st}\n--- lb log ---\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "lb API did not come up\n--- lb log ---\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `lb <args> --socket S`; Ok(stdout) on exit 0, Err(stderr) otherwise.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run lb cli");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a).unwrap_or_else(|e| {
            panic!(
                "lb {args:?} failed: {e}\n--- lb log ---\n{}",
                self.log_text()
            )
        });
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lb {args:?}: not JSON ({e}): {out}"))
    }

    /// SIGTERM and wait (bounded).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bpffs instance of its own, mounted at a directory unique to this run
/// (`ip netns exec` remounts /sys, so the host's /sys/fs/bpf is not seen
/// from inside the lb namespace); `.0` is the pin path inside it. On drop,
/// whatever `lb` pinned is removed (which detaches it) and it is unmounted.
pub struct PinDir(pub PathBuf, PathBuf);

impl PinDir {
    pub fn new() -> PinDir {
        let mnt = PathBuf::from(format!("/tmp/{}", testbed::unique("lbtbpf")));
        std::fs::create_dir_all(&mnt).unwrap();
        testbed::run("mount", &["-t", "bpf", "bpf", mnt.to_str().unwrap()]).expect("mount bpffs");
        PinDir(mnt.join("lb"), mnt)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = lb_userspace::l4::dataplane::cleanup_pinned(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = testbed::run("umount", &[self.1.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.1);
    }
}

/// A TCP server in a namespace, stopped on drop: `echo` answers each line
/// with `name:line`; `stream` sends `chunks` chunks of `chunk` bytes, one
/// every `every`, then closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

#[derive(Clone, Copy)]
pub enum Mode {
    Echo,
    Stream {
        chunk: usize,
        chunks: usize,
        every: Duration,
    },
}

impl Server {
    pub fn start(ns: &Netns, name: &str, port: u16, mode: Mode) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = name.to_string();
        let stop2 = stop.clone();
        let thread = ns.spawn(move || {
            let l = TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let mut workers = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let stop = stop2.clone();
                        let name = name.clone();
                        workers.push(std::thread::spawn(move || serve(s, &name, mode, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(mut s: TcpStream, name: &str, mode: Mode, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    match mode {
        Mode::Echo => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                match r.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if s.write_all(format!("{name}:{}", line).as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        }
        Mode::Stream {
            chunk,
            chunks,
            every,
        } => {
            let buf = vec![b'x'; chunk];
            for _ in 0..chunks {
                if stop.load(Ordering::Relaxed) || s.write_all(&buf).is_err() {
                    return;
                }
                std::thread::sleep(every);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection held open across a change.
pub struct Conn {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
    /// Which real answered first.
    pub real: String,
}

impl Conn {
    /// Sends a line; returns the name of the real that echoed it.
    pub fn ping(&mut self, msg: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let (name, echoed) = line
            .trim_end()
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("bad echo {line:?}")))?;
        if echoed != msg {
            return Err(std::io::Error::other(format!(
                "echo {echoed:?} for {msg:?}"
            )));
        }
        Ok(name.to_string())
    }
}

/// Opens `n` echo connections from the client namespace to `vip`, each
/// pinged once to learn its real.
pub fn open_conns(client: &Netns, vip: SocketAddr, n: usize) -> Vec<Conn> {
    client
        .run_in(move || {
            let mut v = Vec::new();
            for i in 0..n {
                let s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut c = Conn {
                    reader: BufReader::new(s.try_clone()?),
                    stream: s,
                    real: String::new(),
                };
                c.real = c
                    .ping(&format!("hello{i}"))
                    .map_err(|e| anyhow::anyhow!("conn {i}: {e}"))?;
                v.push(c);
            }
            Ok(v)
        })
        .expect("open connections")
}

/// Reads a whole stream from `vip`, returning (bytes, largest gap between reads).
pub fn read_stream(stream: &mut TcpStream) -> (usize, Duration) {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                gap = gap.max(last.elapsed());
                last = Instant::now();
            }
            Err(_) => break,
        }
    }
    (total, gap)
}

/// Real names of `n` fresh HTTP requests to the VIP (empty = failed).
pub fn http_names(topo: &Topology, n: usize) -> Vec<String> {
    testbed::curl_burst(&topo.client, &format!("http://{}/", testbed::VIP4), n).unwrap()
}

/// The config header: interfaces, a per-run API socket.
pub fn header(topo: &Topology, dir: &Path) -> String {
    format!(
        "interfaces = [{}]\nstats_interval = \"1s\"\n[api]\nsocket = \"{}\"\n",
        topo.lb_ifaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        dir.join("lb.sock").display()
    )
}

/// A TCP VIP on 198.18.100.1:`port` with reals 1..=`reals` on `rport`.
pub fn vip(port: u16, rport: u16, reals: &[usize], extra: &str) -> String {
    let mut s = format!(
        "\n[[vip]]\naddress = \"{}\"\nport = {port}\nprotocol = \"tcp\"\n{extra}\n",
        testbed::VIP4
    );
    for i in reals {
        s.push_str(&format!(
            "[[vip.real]]\naddress = \"{}\"\nport = {rport}\n",
            testbed::real4(*i)
        ));
    }
    s
}
