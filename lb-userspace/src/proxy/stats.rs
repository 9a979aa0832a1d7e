//! Per-listener request counters: requests by status class and a latency
//! histogram (time from the request head to the response head), kept
//! across reloads. Read by the dashboard and `/metrics`.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// Upper bounds of the latency buckets, in microseconds; a last bucket
/// takes everything slower. Roughly ×2 steps from 100 µs to 60 s.
pub const BUCKETS_US: [u64; 21] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 15_000_000, 20_000_000, 30_000_000, 45_000_000,
    60_000_000,
];

/// One listener's counters. Lock-free: each request touches three atomics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub requests: AtomicU64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    pub classes: [AtomicU64; 5],
    pub latency: [AtomicU64; BUCKETS_US.len() + 1],
    /// Sum of the latencies, microseconds.
    pub latency_sum_us: AtomicU64,
}

impl ListenerStats {
    /// Counts one answered request.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.classes.get(i as usize))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let b = BUCKETS_US.partition_point(|&ub| ub < us);
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            requests: load(&self.requests),
            classes: std::array::from_fn(|i| load(&self.classes[i])),
            latency: self.latency.iter().map(load).collect(),
            latency_sum_us: load(&self.latency_sum_us),
        }
    }
}

/// A reading of [`ListenerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub classes: [u64; 5],
    /// Per bucket of [`BUCKETS_US`], then the overflow bucket.
    pub latency: Vec<u64>,
    pub latency_sum_us: u64,
}

impl Counts {
    /// What happened between `before` and `self` (counters only grow).
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(before.requests),
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(before.classes[i])),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(before.latency.get(i).copied().unwrap_or(0)))
                .collect(),
            latency_sum_us: self.latency_sum_us.saturating_sub(before.latency_sum_us),
        }
    }

    /// The `q` quantile (0..1) of the latency, as the upper bound of the
    /// bucket it falls in; `None` without requests. Slower than the last
    /// bound reads as that bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let ub = BUCKETS_US
                    .get(i)
                    .or(BUCKETS_US.last())
                    .copied()
                    .unwrap_or(0);
                return Some(Duration::from_micros(ub));
            }
        }
        None
    }
}

/// One upstream server as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub address: SocketAddr,
    /// Takes new requests: not ejected and up by its check.
    pub available: bool,
    pub outstanding: usize,
    pub requests: u64,
}

/// One upstream pool.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub servers: Vec<ServerView>,
}

/// One listener: its counters now and its pools' state.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerView {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: bool,
    pub counts: Counts,
    pub upstreams: Vec<UpstreamView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_buckets_and_quantiles() {
        let s = ListenerStats::default();
        for _ in 0..98 {
            s.record(200, Duration::from_micros(800));
        }
        s.record(404, Duration::from_millis(3));
        s.record(502, Duration::from_secs(90));
        s.record(99, Duration::ZERO);
        let c = s.snapshot();
        assert_eq!(c.requests, 101);
        assert_eq!(c.classes, [0, 98, 0, 1, 1]);
        assert_eq!(c.latency[3], 98, "800 µs lands in the ≤1 ms bucket");
        assert_eq!(c.latency[5], 1, "3 ms lands in the ≤5 ms bucket");
        assert_eq!(*c.latency.last().unwrap(), 1, "90 s overflows");
        assert_eq!(c.quantile(0.5), Some(Duration::from_millis(1)));
        assert_eq!(c.quantile(0.99), Some(Duration::from_millis(5)));
        assert_eq!(c.quantile(1.0), Some(Duration::from_mins(1)));
        let later = {
            s.record(200, Duration::from_millis(20));
            s.snapshot()
        };
        let d = later.since(&c);
        assert_eq!(d.requests, 1);
        assert_eq!(d.classes, [0, 1, 0, 0, 0]);
        assert_eq!(d.quantile(0.5), Some(Duration::from_millis(25)));
        assert_eq!(Counts::default().quantile(0.5), None);
    }
}
