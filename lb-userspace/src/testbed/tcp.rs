//! TCP servers on the reals that keep connections open (echo) or stream
//! data, and clients for them, so tests can tell which real a connection
//! reached and whether it survived a change.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::Netns;

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
    pub fn start(ns: &Netns, name: &str, port: u16, mode: Mode) -> anyhow::Result<Server> {
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
            .map_err(|_| anyhow::anyhow!("server did not start"))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(mut s: TcpStream, name: &str, mode: Mode, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    match mode {
        Mode::Echo => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let Ok(clone) = s.try_clone() else {
                return;
            };
            let mut r = BufReader::new(clone);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                match r.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if s.write_all(format!("{name}:{line}").as_bytes()).is_err() {
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
pub fn open_conns(client: &Netns, vip: SocketAddr, n: usize) -> anyhow::Result<Vec<Conn>> {
    client.run_in(move || {
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
}

/// Reads a whole stream from `vip`, returning (bytes, largest gap between reads).
pub fn read_stream(stream: &mut TcpStream) -> (usize, Duration) {
    let mut buf = vec![0u8; 65536];
    let mut total = 0;
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                gap = gap.max(last.elapsed());
                last = Instant::now();
            }
        }
    }
    (total, gap)
}
