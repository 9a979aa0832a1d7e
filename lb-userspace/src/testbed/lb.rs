//! The one way tests, benchmarks and the demo start `lb`.
//!
//! [`Lb::builder`] takes the binary (in a test, `env!("CARGO_BIN_EXE_lb")`)
//! and a directory of the caller's (a temp dir); the config is written to
//! `DIR/STEM.toml`, the output goes to `DIR/STEM.log` and the admin API
//! socket, when the config has one, is expected at `DIR/STEM.sock` (the
//! stem is `lb` unless [`LbBuilder::name`] says otherwise). `lb run` runs in
//! a namespace or on the host, with extra arguments; the start waits,
//! bounded, for what the test asks (XDP on interfaces, the API, a log
//! line). A running [`Lb`] answers CLI calls against its socket, takes
//! signals and is stopped on drop (SIGTERM, then SIGKILL after 5 s), which
//! also runs when a test panics.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Netns;

/// How long a start waits for XDP, the API or a log line by default.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A command for the `lb` binary `bin`, inside `ns` when given.
pub fn command(bin: &Path, ns: Option<&Netns>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// What to start; see the module docs.
#[derive(Debug, Clone)]
pub struct LbBuilder {
    bin: PathBuf,
    dir: PathBuf,
    stem: String,
    ns: Option<String>,
    config: Option<String>,
    config_path: Option<PathBuf>,
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    wait_xdp: Vec<String>,
    wait_api: bool,
    wait_log: Option<String>,
    timeout: Duration,
}

impl LbBuilder {
    /// Runs `lb` inside `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &Netns) -> LbBuilder {
        self.ns = Some(ns.name.clone());
        self
    }

    /// The stem of the config, log and socket files in the directory.
    pub fn name(mut self, stem: &str) -> LbBuilder {
        self.stem = stem.to_string();
        self
    }

    /// The config text, written to `DIR/STEM.toml` when `lb` starts.
    pub fn config(mut self, toml: impl Into<String>) -> LbBuilder {
        self.config = Some(toml.into());
        self
    }

    /// A config file that already exists, used as it is.
    pub fn config_path(mut self, path: &Path) -> LbBuilder {
        self.config_path = Some(path.to_path_buf());
        self
    }

    /// A program (and its arguments) that runs `lb`, e.g. `setpriv …`.
    pub fn wrapper<S: Into<OsString>>(mut self, argv: impl IntoIterator<Item = S>) -> LbBuilder {
        self.wrapper = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Arguments after `run --config FILE`.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> LbBuilder {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for `lb` (`RUST_LOG` is `info` unless set
    /// here).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> LbBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The start waits until each of `ifaces` has an XDP program.
    pub fn wait_for_xdp<S: Into<String>>(mut self, ifaces: impl IntoIterator<Item = S>) -> Self {
        self.wait_xdp = ifaces.into_iter().map(Into::into).collect();
        self
    }

    /// The start waits until the API answers `status` on `DIR/STEM.sock`.
    pub fn wait_for_api(mut self) -> LbBuilder {
        self.wait_api = true;
        self
    }

    /// The start waits until the log contains `needle`.
    pub fn wait_for_log(mut self, needle: &str) -> LbBuilder {
        self.wait_log = Some(needle.to_string());
        self
    }

    /// The bound of each wait (default [`START_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> LbBuilder {
        self.timeout = timeout;
        self
    }

    fn config_file(&self) -> Result<PathBuf> {
        if let Some(p) = &self.config_path {
            return Ok(p.clone());
        }
        let path = self.dir.join(format!("{}.toml", self.stem));
        if let Some(text) = &self.config {
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(path)
    }

    fn command(&self, config: &Path) -> Command {
        let mut c = match (&self.ns, self.wrapper.split_first()) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c.args(&self.wrapper).arg(&self.bin);
                c
            }
            (None, Some((prog, rest))) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&self.bin);
                c
            }
            (None, None) => Command::new(&self.bin),
        };
        c.arg("run").arg("--config").arg(config).args(&self.args);
        c.env("RUST_LOG", "info");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `lb run` and waits as asked. The error carries the log.
    pub fn start(self) -> Result<Lb> {
        let config = self.config_file()?;
        let log = self.dir.join(format!("{}.log", self.stem));
        File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut lb = Lb {
            child: None,
            config,
            socket: self.dir.join(format!("{}.sock", self.stem)),
            log,
            dir: self.dir.clone(),
            ns: self.ns.clone(),
            spec: self,
        };
        lb.spawn()?;
        Ok(lb)
    }

    /// Runs `lb run` to its end (for a run that must fail) and returns its
    /// output; killed after the timeout.
    pub fn run_to_exit(self) -> Result<Output> {
        let config = self.config_file()?;
        let mut child = self
            .command(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!(
                    "lb did not exit within {:?}:\n{}",
                    self.timeout,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }
}

/// A running `lb run`; see the module docs.
#[derive(Debug)]
pub struct Lb {
    child: Option<Child>,
    /// The directory the files live in.
    pub dir: PathBuf,
    /// The config file (rewrite it and call `reload` to change the config).
    pub config: PathBuf,
    /// Where the admin API socket is expected.
    pub socket: PathBuf,
    /// The log file (stdout and stderr, across restarts).
    pub log: PathBuf,
    ns: Option<String>,
    spec: LbBuilder,
}

impl Lb {
    /// A builder for `bin run`, its files in `dir`.
    pub fn builder(bin: impl AsRef<Path>, dir: &Path) -> LbBuilder {
        LbBuilder {
            bin: bin.as_ref().to_path_buf(),
            dir: dir.to_path_buf(),
            stem: "lb".to_string(),
            ns: None,
            config: None,
            config_path: None,
            wrapper: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            wait_xdp: Vec::new(),
            wait_api: false,
            wait_log: None,
            timeout: START_TIMEOUT,
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = self
            .spec
            .command(&self.config)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawn {}", self.spec.bin.display()))?;
        self.child = Some(child);
        let timeout = self.spec.timeout;
        for iface in self.spec.wait_xdp.clone() {
            self.wait_until(&format!("XDP is on {iface}"), timeout, |lb| {
                has_xdp(lb.ns.as_deref(), &iface)
            })?;
        }
        if self.spec.wait_api {
            self.wait_until("the API answers", timeout, |lb| {
                lb.socket.exists() && lb.cli(&["status", "--json"]).is_ok()
            })?;
        }
        if let Some(needle) = self.spec.wait_log.clone() {
            self.wait_for_log(&needle, timeout)?;
        }
        Ok(())
    }

    /// Starts `lb` again with the same command (after [`Lb::stop`]); the
    /// log is appended to. Waits as the first start did.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.stop();
        self.spawn()
    }

    /// The process id of `lb` (`ip netns exec` execs it, so the same).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Lb) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if done(self) {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                bail!("lb exited ({st}) before {what}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "not within {timeout:?}: {what}\n--- lb log ---\n{}",
            self.log()
        )
    }

    /// Waits (bounded) until the log contains `needle`; fails early, with
    /// the log, when the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("lb logs `{needle}`"), timeout, |lb| {
            lb.log().contains(needle)
        })
    }

    /// A command for the same `lb` binary on the host (for other verbs,
    /// e.g. `lb cleanup`).
    pub fn host_command(&self) -> Command {
        command(&self.spec.bin, None)
    }

    /// A command for the same `lb` binary inside `lb`'s namespace (for
    /// verbs against a TCP API only reachable there).
    pub fn ns_command(&self) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.spec.bin);
                c
            }
            None => Command::new(&self.spec.bin),
        }
    }

    /// Runs `lb <args> --socket SOCKET`; `Ok(stdout)` on exit 0,
    /// `Err(stderr)` otherwise.
    pub fn cli(&self, args: &[&str]) -> std::result::Result<String, String> {
        let out = self
            .host_command()
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.spec.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`Lb::cli`] with `--json`, parsed; panics (with the log) on failure.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self
            .cli(&a)
            .unwrap_or_else(|e| panic!("lb {args:?} failed: {e}\n--- lb log ---\n{}", self.log()));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lb {args:?}: not JSON ({e}): {out}"))
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid of a child of ours; no memory involved.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; waits for the exit and returns
    /// how the process ended (`None` if it was not running).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: as in `signal`.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether `iface` (in namespace `ns`, or on the host) has an XDP program.
fn has_xdp(ns: Option<&str>, iface: &str) -> bool {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["link", "show", iface])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("xdp"))
}
