//! The monitor: one tokio task per target, probing on its interval with
//! jitter, feeding the rise/fall machine and publishing the result.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use super::{
    config::{CheckKind, HealthCheck},
    probe::{probe_addr, probe_target, ProbeError},
    state::{Health, RiseFall},
    tunnel::Tunnel,
};

/// What to probe: an address and a check. Two equal targets added to one
/// monitor share one prober (see [`Monitor::add`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub check: HealthCheck,
    /// Probe through this DSR tunnel, addressed to its VIP.
    pub tunnel: Option<Tunnel>,
}

impl Target {
    pub fn new(addr: SocketAddr, check: HealthCheck) -> Self {
        Target {
            addr,
            check,
            tunnel: None,
        }
    }

    /// The same target, probed through `tunnel` (a DSR VIP's real).
    pub fn through(mut self, tunnel: Tunnel) -> Self {
        self.tunnel = Some(tunnel);
        self
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            probe_addr(self.addr, &self.check),
            self.check.kind.name()
        )?;
        if let CheckKind::Http { path, .. } = &self.check.kind {
            write!(f, " {path}")?;
        }
        if let Some(t) = &self.tunnel {
            write!(
                f,
                " to VIP {} through {}",
                SocketAddr::new(t.vip, probe_addr(self.addr, &self.check).port()),
                t.encap_name()
            )?;
        }
        Ok(())
    }
}

/// Handle of a target inside one [`Monitor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub u64);

/// The current view of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub health: Health,
    /// When `health` last changed (or the target was added).
    pub since: Instant,
    /// Latency of the last passing probe.
    pub last_latency: Option<Duration>,
    /// Reason of the last failed probe (kept after later passes, for the operator).
    pub last_failure: Option<ProbeError>,
    /// Result of the most recent probe, `None` before the first one.
    pub last_result: Option<Result<Duration, ProbeError>>,
    /// Number of probes run so far.
    pub probes: u64,
}

impl Status {
    fn new() -> Self {
        Status {
            health: Health::Up,
            since: Instant::now(),
            last_latency: None,
            last_failure: None,
            last_result: None,
            probes: 0,
        }
    }
}

/// A state change, sent to [`Monitor::subscribe`] receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub id: TargetId,
    pub target: Target,
    pub health: Health,
    /// The failure that made it go down, or the latency line that made it come up.
    pub reason: String,
}

struct Entry {
    target: Target,
    refs: usize,
    status: watch::Receiver<Status>,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    entries: HashMap<TargetId, Entry>,
    by_target: HashMap<Target, TargetId>,
    next_id: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in inner.entries.values_mut() {
            if let Some(t) = e.task.take() {
                t.abort();
            }
        }
    }
}

/// Runs health checks. Cheap to clone (all clones share the targets); the
/// probers stop when the last clone is dropped.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lock().entries.len();
        f.debug_struct("Monitor").field("targets", &n).finish()
    }
}

impl Monitor {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(1024);
        Monitor {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    entries: HashMap::new(),
                    by_target: HashMap::new(),
                    next_id: 1,
                }),
                changes,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts probing `target` (must be called inside a tokio runtime).
    ///
    /// Adding a target equal to one already present (same address, same
    /// check) returns the existing id and counts a reference; it keeps its
    /// state. So a reload can add the new set first and remove the old one
    /// after, and unchanged targets keep their history.
    pub fn add(&self, target: Target) -> TargetId {
        let mut inner = self.lock();
        if let Some(&id) = inner.by_target.get(&target) {
            if let Some(e) = inner.entries.get_mut(&id) {
                e.refs += 1;
                return id;
            }
        }
        let id = TargetId(inner.next_id);
        inner.next_id += 1;
        let (tx, rx) = watch::channel(Status::new());
        let task = if target.check.kind == CheckKind::None {
            None
        } else {
            Some(tokio::spawn(run_target(
                id,
                target.clone(),
                tx,
                self.shared.changes.clone(),
            )))
        };
        inner.by_target.insert(target.clone(), id);
        inner.entries.insert(
            id,
            Entry {
                target,
                refs: 1,
                status: rx,
                task,
            },
        );
        id
    }

    /// Drops one reference to `id`; the prober stops with the last one.
    /// Returns false for an unknown id.
    pub fn remove(&self, id: TargetId) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(&id) else {
            return false;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let mut e = inner.entries.remove(&id).expect("present");
            if let Some(t) = e.task.take() {
                t.abort();
            }
            inner.by_target.remove(&e.target);
        }
        true
    }

    /// Current status, `None` for an unknown id.
    pub fn status(&self, id: TargetId) -> Option<Status> {
        self.lock()
            .entries
            .get(&id)
            .map(|e| e.status.borrow().clone())
    }

    /// True when the target is known and up.
    pub fn is_up(&self, id: TargetId) -> bool {
        self.lock()
            .entries
            .get(&id)
            .is_some_and(|e| e.status.borrow().health.is_up())
    }

    /// A receiver that sees every status update of one target (each probe).
    pub fn watch(&self, id: TargetId) -> Option<watch::Receiver<Status>> {
        self.lock().entries.get(&id).map(|e| e.status.clone())
    }

    /// A receiver of state changes (up → down, down → up) of all targets.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// Every target with its status, ordered by id.
    pub fn snapshot(&self) -> Vec<(TargetId, Target, Status)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .entries
            .iter()
            .map(|(id, e)| (*id, e.target.clone(), e.status.borrow().clone()))
            .collect();
        v.sort_by_key(|(id, _, _)| *id);
        v
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `interval` scaled by a random factor in [0.9, 1.1], so probes of many
/// targets do not line up.
fn jittered(interval: Duration) -> Duration {
    let f = rand::rng().random_range(0.9..=1.1);
    interval.mul_f64(f)
}

async fn run_target(
    id: TargetId,
    target: Target,
    status: watch::Sender<Status>,
    changes: broadcast::Sender<Change>,
) {
    let check = &target.check;
    let mut machine = RiseFall::new(check.rise, check.fall);
    // Spread the first probes of targets added together over one interval,
    // but probe soon: a fifth of the interval at most.
    let first = check.interval.mul_f64(rand::rng().random_range(0.0..=0.2));
    tokio::time::sleep(first).await;
    loop {
        let started = tokio::time::Instant::now();
        let result = probe_target(&target).await;
        log::trace!("health: {target}: {result:?}");
        let passed = result.is_ok();
        let change = machine.observe(passed);
        status.send_modify(|s| {
            s.probes += 1;
            match &result {
                Ok(lat) => s.last_latency = Some(*lat),
                Err(e) => s.last_failure = Some(e.clone()),
            }
            s.last_result = Some(result.clone());
            if let Some(h) = change {
                s.health = h;
                s.since = Instant::now();
            }
        });
        if let Some(h) = change {
            let reason = match &result {
                Ok(lat) => format!(
                    "{} consecutive passes, last in {:.1}ms",
                    check.rise,
                    lat.as_secs_f64() * 1000.0
                ),
                Err(e) => format!("{} consecutive failures, last: {e}", check.fall),
            };
            match h {
                Health::Down => log::warn!("health: {target} is down: {reason}"),
                Health::Up => log::info!("health: {target} is up: {reason}"),
            }
            let _ = changes.send(Change {
                id,
                target: target.clone(),
                health: h,
                reason,
            });
        }
        tokio::time::sleep_until(started + jittered(check.interval)).await;
    }
}
