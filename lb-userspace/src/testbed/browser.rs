//! Headless Chromium for page tests, driven over its DevTools pipe
//! (`--remote-debugging-pipe`: the browser reads NUL-terminated JSON
//! commands on fd 3 and writes replies and events on fd 4), so no
//! WebSocket client is needed. Runs inside a namespace, with a profile in
//! a directory the caller owns; the browser is closed and killed on drop.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use super::Netns;

/// The Chromium binary, when installed (Debian `chromium`).
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A running headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    /// Starts Chromium in `ns` with its profile under `profile` and a
    /// `width`×`height` window. Background networking is off: the only
    /// traffic is to the pages it is told to open.
    pub fn launch(ns: &Netns, profile: &Path, width: u32, height: u32) -> Result<Browser> {
        let bin = chromium().ok_or_else(|| anyhow!("chromium is not installed"))?;
        let (cmd_r, cmd_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        let (in_fd, out_fd) = (cmd_r.as_raw_fd(), rep_w.as_raw_fd());
        let mut c = ns.command(bin.to_str().expect("utf-8 path"));
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--hide-scrollbars",
            "--mute-audio",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork
        // and exec. Both ends are first copied above fd 10 (closed at exec),
        // so placing one on 3 or 4 cannot overwrite the other.
        unsafe {
            c.pre_exec(move || {
                let a = libc::fcntl(in_fd, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(out_fd, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().context("starting chromium")?;
        drop(cmd_r);
        drop(rep_w);
        let (tx, replies) = mpsc::channel();
        let reader = File::from(rep_r);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(0, &mut buf) {
                if n == 0 {
                    return;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        Ok(Browser {
            child,
            commands: File::from(cmd_w),
            replies,
            next_id: 1,
            session: None,
        })
    }

    /// Sends one command and waits (bounded) for its reply's `result`.
    pub fn call(&mut self, method: &str, params: Value, timeout: Duration) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            if !method.starts_with("Target.") && !method.starts_with("Browser.") {
                msg["sessionId"] = json!(s);
            }
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .with_context(|| format!("sending {method} to chromium"))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .replies
                .recv_timeout(left)
                .map_err(|_| anyhow!("chromium did not answer {method} within {timeout:?}"))?;
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // an event, or a late reply
            }
            if let Some(e) = v.get("error") {
                bail!("chromium: {method}: {e}");
            }
            return Ok(v.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Opens `url` in a new page and attaches to it.
    pub fn open(&mut self, url: &str) -> Result<()> {
        let t = Duration::from_secs(20);
        let r = self.call("Target.createTarget", json!({"url": url}), t)?;
        let target = r["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("no targetId in {r}"))?
            .to_string();
        let r = self.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
            t,
        )?;
        self.session = Some(
            r["sessionId"]
                .as_str()
                .ok_or_else(|| anyhow!("no sessionId in {r}"))?
                .to_string(),
        );
        Ok(())
    }

    /// Evaluates `expr` in the page; its value (JSON-serialisable).
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
            Duration::from_secs(10),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the page's viewport (`full` for the whole page).
    pub fn screenshot(&mut self, path: &Path, full: bool) -> Result<()> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": full}),
            Duration::from_secs(20),
        )?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("the screenshot is not a PNG");
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session = None;
        let _ = self.call("Browser.close", json!({}), Duration::from_secs(3));
        for _ in 0..30 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
