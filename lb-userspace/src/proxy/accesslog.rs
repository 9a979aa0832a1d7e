//! Access log: one line per request, written by a dedicated thread so a slow
//! disk never blocks request handling.
//!
//! Format (documented in `docs/l7.md`):
//!
//! ```text
//! 2026-05-20T10:00:00.123Z web 127.0.0.1:50412 "GET /api/x?y=1 HTTP/2.0" 200 1234 host=www.example.com upstream=127.0.0.1:9001 tls=TLSv1.3 sni=www.example.com dur_ms=1.234 up_ms=0.981 ua="curl/8.5.0" reason=-
//! ```

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::config::AccessLogTarget;

/// Where a listener's access log lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    name: String,
}

impl AccessLog {
    /// Opens the target (a file is opened in append mode, created if missing).
    pub fn open(listener: &str, target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    tx: None,
                    dropped: Arc::default(),
                    name: listener.to_string(),
                })
            }
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(p) => {
                Box::new(OpenOptions::new().create(true).append(true).open(p)?)
            }
        };
        let (tx, rx) = sync_channel::<String>(64 * 1024);
        std::thread::Builder::new()
            .name(format!("l7-log-{listener}"))
            .spawn(move || writer(rx, sink))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::default(),
            name: listener.to_string(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line; drops it (counted, warned about) when the writer is behind.
    pub fn write(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    log::warn!(
                        "l7 {}: access log writer is behind; {} lines dropped so far",
                        self.name,
                        n + 1
                    );
                }
            }
        }
    }
}

fn writer(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Batch what is already queued, then flush.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        if let Err(e) = out.flush() {
            log::error!("access log write failed: {e}");
        }
    }
    let _ = out.flush();
}

/// One request's record.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub listener: Arc<str>,
    pub client: Option<SocketAddr>,
    pub method: String,
    pub target: String,
    pub version: &'static str,
    pub status: u16,
    pub bytes: u64,
    pub host: String,
    pub upstream: Option<SocketAddr>,
    pub tls: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub user_agent: String,
    pub reason: Option<String>,
}

/// Writes `s` with spaces, quotes, backslashes and control bytes escaped, so
/// a line always splits into the same fields.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == ' ' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

fn dash_or(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) if !s.is_empty() => escape_into(out, s),
        _ => out.push('-'),
    }
}

impl Entry {
    pub fn format(&self, now: SystemTime) -> String {
        let mut l = String::with_capacity(256);
        l.push_str(&rfc3339_millis(now));
        l.push(' ');
        l.push_str(&self.listener);
        l.push(' ');
        match self.client {
            Some(c) => l.push_str(&c.to_string()),
            None => l.push('-'),
        }
        l.push_str(" \"");
        escape_into(&mut l, &self.method);
        l.push(' ');
        escape_into(&mut l, &self.target);
        l.push(' ');
        l.push_str(self.version);
        l.push_str(&format!("\" {} {} host=", self.status, self.bytes));
        dash_or(&mut l, Some(&self.host));
        l.push_str(" upstream=");
        match self.upstream {
            Some(u) => l.push_str(&u.to_string()),
            None => l.push('-'),
        }
        l.push_str(" tls=");
        dash_or(&mut l, self.tls);
        l.push_str(" sni=");
        dash_or(&mut l, self.sni.as_deref());
        l.push_str(&format!(
            " dur_ms={:.3} up_ms=",
            self.duration.as_secs_f64() * 1000.0
        ));
        match self.upstream_duration {
            Some(d) => l.push_str(&format!("{:.3}", d.as_secs_f64() * 1000.0)),
            None => l.push('-'),
        }
        l.push_str(" ua=\"");
        escape_into(&mut l, &self.user_agent);
        l.push_str("\" reason=");
        match &self.reason {
            Some(r) => {
                l.push('"');
                escape_into(&mut l, r);
                l.push('"');
            }
            None => l.push('-'),
        }
        l.push('\n');
        l
    }
}

/// `2026-05-20T10:00:00.123Z`
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(rfc3339_millis(t), "2024-02-29T23:59:59.123Z");
    }

    #[test]
    fn line_format_and_escaping() {
        let e = Entry {
            listener: "web".into(),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            method: "GET".into(),
            target: "/a?b=1".into(),
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            host: "www.example.com".into(),
            upstream: Some("127.0.0.1:9001".parse().unwrap()),
            tls: Some("TLSv1.3"),
            sni: Some("www.example.com".into()),
            duration: Duration::from_micros(1500),
            upstream_duration: Some(Duration::from_millis(1)),
            user_agent: "a \"b\"".into(),
            reason: None,
        };
        assert_eq!(
            e.format(UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z web 127.0.0.1:5000 \"GET /a?b=1 HTTP/1.1\" 200 12 host=www.example.com \
             upstream=127.0.0.1:9001 tls=TLSv1.3 sni=www.example.com dur_ms=1.500 up_ms=1.000 ua=\"a\\x20\\\"b\\\"\" reason=-\n"
        );
    }
}
