//! Response rate limiting (in the spirit of BIND's RRL): a token bucket per
//! (client prefix, response identity), so a spoofed flood of one query
//! cannot turn the server into an amplifier, while legitimate clients that
//! get a truncated "slip" answer retry over TCP, which is never limited.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher},
    net::IpAddr,
    sync::Mutex,
    time::Instant,
};

use ahash::RandomState;

use super::gslb::{mask, Prefix};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrlSettings {
    pub responses_per_second: u32,
    pub window: u32,
    pub slip: u32,
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
    pub exempt: Vec<Prefix>,
    pub max_table_size: usize,
}

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Drop,
    /// Send an empty truncated response instead (the client retries on TCP).
    Slip,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Balance in responses, scaled by 1000 to keep sub-second credit.
    milli: i64,
    last: Instant,
    limited: u64,
}

/// The RRL state. `check` is called once per UDP response.
#[derive(Debug)]
pub struct RateLimiter {
    s: RrlSettings,
    /// Per-limiter random keys for the bucket key, so clients cannot choose
    /// colliding (prefix, identity) pairs.
    keys: RandomState,
    table: Mutex<HashMap<u64, Bucket, RandomState>>,
}

impl RateLimiter {
    pub fn new(s: RrlSettings) -> Self {
        RateLimiter {
            s,
            keys: RandomState::new(),
            table: Mutex::new(HashMap::default()),
        }
    }

    pub fn settings(&self) -> &RrlSettings {
        &self.s
    }

    /// `identity` groups responses that are "the same" (e.g. qname + qtype
    /// for answers, the zone for NXDOMAIN).
    pub fn check(&self, client: IpAddr, identity: impl Hash, now: Instant) -> Verdict {
        if self.s.exempt.iter().any(|p| p.contains(client)) {
            return Verdict::Send;
        }
        let prefix = match client {
            IpAddr::V4(_) => mask(client, self.s.ipv4_prefix_length),
            IpAddr::V6(_) => mask(client, self.s.ipv6_prefix_length),
        };
        let mut h = self.keys.build_hasher();
        prefix.hash(&mut h);
        identity.hash(&mut h);
        let key = h.finish();

        let rate = self.s.responses_per_second as i64 * 1000;
        let floor = -(self.s.window as i64) * rate;
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= self.s.max_table_size && !table.contains_key(&key) {
            // Forget buckets that are back to full credit; if the table is
            // still full, forget everything (fail open rather than grow).
            table.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.last).as_millis() as i64;
                b.milli + elapsed.saturating_mul(rate / 1000) < rate
            });
            if table.len() >= self.s.max_table_size {
                table.clear();
            }
        }
        let b = table.entry(key).or_insert(Bucket {
            milli: rate,
            last: now,
            limited: 0,
        });
        let elapsed_ms = now.saturating_duration_since(b.last).as_millis() as i64;
        b.last = now;
        // Credit `rate` responses per second, at most one second's worth.
        b.milli = (b.milli + elapsed_ms.saturating_mul(rate) / 1000).min(rate);
        b.milli -= 1000;
        if b.milli >= 0 {
            return Verdict::Send;
        }
        b.milli = b.milli.max(floor);
        b.limited += 1;
        if self.s.slip > 0 && b.limited.is_multiple_of(self.s.slip as u64) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RrlSettings {
            responses_per_second: rate,
            window: 5,
            slip,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
            exempt: vec![Prefix::parse("198.18.200.0/24").unwrap()],
            max_table_size: 1000,
        })
    }

    #[test]
    fn limits_identical_responses_per_prefix() {
        let l = limiter(5, 2);
        let t0 = Instant::now();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let same_prefix: IpAddr = "198.18.0.200".parse().unwrap();
        let other: IpAddr = "198.18.1.1".parse().unwrap();
        let v: Vec<Verdict> = (0..10).map(|_| l.check(a, "q", t0)).collect();
        assert_eq!(v.iter().filter(|x| **x == Verdict::Send).count(), 5);
        // Limited ones alternate drop / slip with slip = 2.
        assert_eq!(
            &v[5..],
            &[
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop
            ]
        );
        assert_ne!(
            l.check(same_prefix, "q", t0),
            Verdict::Send,
            "same /24 shares the bucket"
        );
        assert_eq!(l.check(other, "q", t0), Verdict::Send);
        assert_eq!(l.check(a, "other-name", t0), Verdict::Send);
        // Exempt prefix is never limited.
        let ex: IpAddr = "198.18.200.9".parse().unwrap();
        assert!((0..100).all(|_| l.check(ex, "q", t0) == Verdict::Send));
    }

    #[test]
    fn credit_returns_with_time_and_debt_is_bounded() {
        let l = limiter(10, 0);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..10_000 {
            l.check(a, 1u8, t0);
        }
        // Debt is floored at window × rate = 50 responses: after 5 s + 1 s
        // the bucket is full again.
        assert_eq!(l.check(a, 1u8, t0 + Duration::from_secs(5)), Verdict::Drop);
        let t = t0 + Duration::from_secs(12);
        let sent = (0..20)
            .filter(|_| l.check(a, 1u8, t) == Verdict::Send)
            .count();
        assert_eq!(sent, 10);
    }
}
