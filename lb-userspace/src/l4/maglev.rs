//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted, with
//! fixed quotas.
//!
//! Pure: reals in, a lookup table out. Each real has a permutation of the `m`
//! slots from two hashes of its identity (`offset`, `skip`), and a quota:
//! its weight's share of `m`, floor or ceiling (remainders go to the largest
//! fractions, ties broken by a hash of the identity). Reals take turns in
//! rounds; in each round a real looks at the next slot of its permutation and
//! claims it if the slot is free and the real is under its quota. A real of
//! the largest weight looks once per round, lighter reals proportionally less
//! often (credits). Reals of weight 0 get no slots (drained).
//!
//! Unlike the original fill, a real whose preferred slot is taken does not
//! retry further down its permutation in the same turn. Its walk through its
//! permutation therefore does not depend on the other reals until quotas
//! bind, so adding or removing one real disturbs the others far less (with
//! 100 reals on 65537 slots: about 1.3% of slots on an add, 0.4% of the
//! survivors' slots on a removal, against about 1.6% and 0.65% for the
//! original fill), and the quotas keep the spread exact.
//!
//! Cost: looks land on random slots, so filling the last free slots takes
//! many looks (about m·ln m in all). The build keeps the free slots in a
//! bitmap and looks without branches while a look's outcome is a coin toss,
//! with a branch once hits are rare. Once few slots are left it stops
//! looking and computes, for each free slot, which real's walk reaches it
//! first (a modular inverse of the real's step). When weights are far apart
//! (most rounds only a heavy real looks), it visits only the reals that look
//! in a round. The table is the same as the plain fill's either way (a unit
//! test checks it against a plain implementation).

/// Marker for a slot no real owns (only when every weight is 0).
pub const EMPTY: u32 = u32::MAX;

/// One real as Maglev sees it: a stable identity (its address and port as
/// bytes, so the same real lands on the same slots on every node) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: Vec<u8>,
    pub weight: u32,
}

/// 64-bit FNV-1a followed by a murmur3 finaliser, for three seeds at once
/// (independent chains, one pass over the bytes): the real's first slot,
/// its step, and its rank among equal quota remainders.
fn hash3(data: &[u8]) -> [u64; 3] {
    let mut h = [0x3031u64, 0x3032, 0x3033].map(|s| {
        0xcbf2_9ce4_8422_2325 ^ (0x6d61_676c_6576_0000 | s).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    for &b in data {
        for h in &mut h {
            *h ^= b as u64;
            *h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.map(|mut h| {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    })
}

/// Builds a table of `m` slots (`m` prime, at most 2^31). Each slot holds
/// an index into `backends`, or [`EMPTY`] when no backend has a weight above
/// zero.
pub fn build(backends: &[Backend], m: u32) -> Vec<u32> {
    assert!((2..=1 << 31).contains(&m), "ring size must be in 2..=2^31");
    // One spare slot past the end takes the writes of looks that miss.
    let mut table = vec![EMPTY; m as usize + 1];
    let Some(mut fill) = Fill::new(backends, m) else {
        table.pop();
        return table;
    };
    fill.rounds(&mut table);
    if fill.filled < m {
        if fill.tail_ok {
            fill.tail(&mut table);
        } else {
            fill.rest_in_slot_order(&mut table);
        }
    }
    table.pop();
    table
}

/// When at most this many slots are free and free slots times reals still
/// filling is at most `TAIL_WORK`, the fill switches from probing (where
/// almost every look now lands on a taken slot) to computing each free
/// slot's next visitor (see [`Fill::tail`]). Tuned on `bench maglev`.
const TAIL_SLOTS: u32 = 4096;
const TAIL_WORK: u64 = 1 << 14;

/// The fill's state: one entry per real that still has slots to claim (and
/// some that just finished, until the next `retire_done`), in the order the
/// reals take their turns. One array per field, so that the walk's advance
/// is a separate loop the compiler vectorises.
struct Fill {
    m: u32,
    max_w: u32,
    /// Every real has the largest weight: each looks once per round.
    equal: bool,
    /// [`Fill::tail`] can finish the fill: it needs every skip invertible
    /// (m prime), and packs a round number and a turn into 64 bits.
    tail_ok: bool,
    /// Each real's walk through its permutation: next slot, step.
    pos: Vec<u32>,
    skip: Vec<u32>,
    /// Slots still to claim (quota minus slots claimed).
    need: Vec<u32>,
    /// Index into `backends`.
    id: Vec<u32>,
    /// Credit at the start of the next round (weighted turns).
    credit: Vec<u32>,
    weight: Vec<u32>,
    /// Sum of `weight` (kept by `retire_done`).
    weight_sum: u64,
    /// Free slots, one bit each.
    free: Vec<u64>,
    filled: u32,
    /// Reals that finished since the last `retire_done` (counted where
    /// looks are sparse).
    finished: u32,
}

impl Fill {
    fn new(backends: &[Backend], m: u32) -> Option<Fill> {
        let live: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        if live.is_empty() {
            return None;
        }
        let m64 = m as u64;
        let hashes: Vec<[u64; 3]> = live.iter().map(|&i| hash3(&backends[i].id)).collect();
        let weight = |k: usize| backends[live[k]].weight as u64;
        let total_w: u64 = (0..live.len()).map(weight).sum();

        // Quotas: the floor of each share, then one more slot for the largest
        // remainders (ties by a hash of the identity), so they sum to m.
        let (mut quota, rems): (Vec<u64>, Vec<u64>) = (0..live.len())
            .map(|k| {
                let share = m64 * weight(k);
                let q = share / total_w;
                (q, share - q * total_w)
            })
            .unzip();
        let left = (m64 - quota.iter().sum::<u64>()) as usize;
        if left > 0 {
            let mut order: Vec<(u64, u64, usize)> = (0..live.len())
                .map(|k| (rems[k], hashes[k][2], k))
                .collect();
            // The `left` largest (all distinct: k is unique), in any order.
            order.select_nth_unstable_by(left - 1, |a, b| b.cmp(a));
            for &(_, _, k) in &order[..left] {
                quota[k] += 1;
            }
        }

        let max_w = (0..live.len()).map(weight).max().unwrap_or(1) as u32;
        let mut f = Fill {
            m,
            max_w,
            equal: (0..live.len()).all(|k| weight(k) == max_w as u64),
            tail_ok: is_prime(m) && m64 * max_w as u64 <= 1 << 32,
            pos: Vec::with_capacity(live.len()),
            skip: Vec::with_capacity(live.len()),
            need: Vec::with_capacity(live.len()),
            id: Vec::with_capacity(live.len()),
            credit: Vec::with_capacity(live.len()),
            weight: Vec::with_capacity(live.len()),
            weight_sum: 0,
            // A power of two in length (the spare words stay 0, taken), so
            // that a masked index needs no bounds check.
            free: vec![0u64; (m as usize).div_ceil(64).next_power_of_two()],
            filled: 0,
            finished: 0,
        };
        let words = (m as usize).div_ceil(64);
        f.free[..words].fill(!0);
        if !m.is_multiple_of(64) {
            f.free[words - 1] = (1u64 << (m % 64)) - 1;
        }
        let (slots, steps) = (Reducer::new(m64), Reducer::new(m64 - 1));
        for (k, &i) in live.iter().enumerate() {
            if quota[k] == 0 {
                continue;
            }
            let [first, step, _] = hashes[k];
            f.pos.push(slots.rem(first) as u32);
            f.skip.push(steps.rem(step) as u32 + 1);
            f.need.push(quota[k] as u32);
            f.id.push(i as u32);
            f.credit.push(0);
            f.weight.push(weight(k) as u32);
        }
        f.weight_sum = f.weight.iter().map(|&w| w as u64).sum();
        Some(f)
    }

    fn is_free(&self, s: u32) -> bool {
        self.free[(s >> 6) as usize] & (1u64 << (s & 63)) != 0
    }

    fn claim(&mut self, table: &mut [u32], s: u32, k: usize) {
        self.free[(s >> 6) as usize] &= !(1u64 << (s & 63));
        table[s as usize] = self.id[k];
        self.need[k] -= 1;
        self.filled += 1;
    }

    /// Drops the reals whose quota is met, keeping the turn order.
    fn retire_done(&mut self) {
        let mut j = 0;
        for k in 0..self.need.len() {
            // Branch-free: copy always, keep if still filling.
            self.pos[j] = self.pos[k];
            self.skip[j] = self.skip[k];
            self.need[j] = self.need[k];
            self.id[j] = self.id[k];
            self.credit[j] = self.credit[k];
            self.weight[j] = self.weight[k];
            j += (self.need[k] > 0) as usize;
        }
        self.finished = 0;
        for v in [
            &mut self.pos,
            &mut self.skip,
            &mut self.need,
            &mut self.id,
            &mut self.credit,
            &mut self.weight,
        ] {
            v.truncate(j);
        }
        self.weight_sum = self.weight.iter().map(|&w| w as u64).sum();
    }

    /// Rounds of turns (one look each, lighter reals less often) until the
    /// table is full or few enough slots are left for [`Fill::tail`].
    fn rounds(&mut self, table: &mut [u32]) {
        let m = self.m;
        // With m prime every permutation visits every slot, so each real
        // finds a free slot within m looks; the bound only guards a
        // non-prime m.
        let mut rounds_left = (m as u64)
            .saturating_mul(self.max_w as u64)
            .saturating_mul(2)
            + 16;
        let tail_ok = self.tail_ok;
        let tail_now =
            |left: u32, n: u64| tail_ok && left <= TAIL_SLOTS && left as u64 * n <= TAIL_WORK;
        let mut was_sparse = false;
        while self.filled < m && rounds_left > 0 {
            let left = m - self.filled;
            let n = self.pos.len() as u64;
            if tail_now(left, n) {
                break;
            }
            if !self.equal && self.weight_sum * 16 < self.max_w as u64 * n {
                // Few of the reals look in a round (weights far apart):
                // visit only those, in look order.
                self.scheduled(table, &mut rounds_left, &tail_now);
                continue;
            }
            // Most looks find a free slot early on, and a taken one late:
            // branch-free while it is a coin toss, a branch once a hit is
            // rare enough to predict.
            let sparse = (left as u64) * SPARSE < m as u64;
            // Finished reals take (fruitless) turns until retired: once
            // when hits turn rare, then whenever a sixteenth has finished.
            if sparse && (!was_sparse || self.finished as u64 * 16 >= n) {
                self.retire_done();
            }
            was_sparse = sparse;
            let n = self.pos.len() as u64;
            // Rounds in a batch: about 256 looks, so that with few reals
            // the loop is not mostly per-round overhead.
            let batch = (256 / n).clamp(1, rounds_left);
            rounds_left -= batch;
            match (self.equal, sparse) {
                (true, false) => self.round::<true, false>(table, batch),
                (true, true) => self.round::<true, true>(table, batch),
                (false, false) => self.round::<false, false>(table, batch),
                (false, true) => self.round::<false, true>(table, batch),
            }
        }
        self.retire_done();
    }

    /// Weighted rounds where few reals look per round: the same looks in
    /// the same order as [`Fill::round`], but each real is visited only in
    /// the rounds it looks in (a queue by round, then turn), so a round in
    /// which only a heavy real looks costs one look, not one per real.
    /// Runs until the table is full, `stop(free slots, reals filling)`
    /// holds at a round boundary, or `rounds_left` is spent.
    fn scheduled(
        &mut self,
        table: &mut [u32],
        rounds_left: &mut u64,
        stop: &dyn Fn(u32, u64) -> bool,
    ) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let (m, max_w) = (self.m, self.max_w as u64);
        let n = self.pos.len();
        // Real k's credit is `credit[k]` at the start of round `base[k]`
        // (rounds counted from now); it looks in the first round its credit
        // reaches max_w.
        let mut base = vec![0u64; n];
        let next_look =
            |base: u64, credit: u32, w: u32| base + (max_w - credit as u64).div_ceil(w as u64) - 1;
        let mut queue: BinaryHeap<Reverse<(u64, u32)>> = (0..n)
            .filter(|&k| self.need[k] > 0)
            .map(|k| Reverse((next_look(0, self.credit[k], self.weight[k]), k as u32)))
            .collect();
        let mut now = 0u64;
        let end = loop {
            let Some(&Reverse((r, k))) = queue.peek() else {
                break now;
            };
            if r != now {
                // Round boundary: every look before round r is done.
                if r >= *rounds_left
                    || self.filled == m
                    || stop(m - self.filled, queue.len() as u64)
                {
                    break r.min(*rounds_left);
                }
                now = r;
            }
            queue.pop();
            let k = k as usize;
            let p = self.pos[k];
            if self.is_free(p) {
                self.claim(table, p, k);
            }
            let next = p + self.skip[k];
            self.pos[k] = if next >= m { next - m } else { next };
            // Credit at the start of round r + 1, after paying for the look.
            let w = self.weight[k] as u64;
            self.credit[k] = (self.credit[k] as u64 + (r + 1 - base[k]) * w - max_w) as u32;
            base[k] = r + 1;
            if self.need[k] > 0 {
                queue.push(Reverse((
                    next_look(r + 1, self.credit[k], self.weight[k]),
                    k as u32,
                )));
            }
        };
        // Back to credits at the start of round `end` for the round loop.
        for (k, &b) in base.iter().enumerate() {
            if self.need[k] > 0 {
                let w = self.weight[k] as u64;
                self.credit[k] = (self.credit[k] as u64 + (end - b) * w) as u32;
            }
        }
        *rounds_left -= end.min(*rounds_left);
        self.retire_done();
    }

    /// `rounds` rounds of turns. With `EQUAL` every real looks once per
    /// round; otherwise a real looks when its credit reaches the largest
    /// weight. With `SPARSE` a look that finds its slot free (rare) takes a
    /// branch; otherwise the look is branch-free, and one that claims
    /// nothing writes the spare slot `m` of `table`.
    fn round<const EQUAL: bool, const SPARSE: bool>(&mut self, table: &mut [u32], rounds: u64) {
        let (m, max_w) = (self.m, self.max_w);
        let table = &mut table[..=m as usize];
        let mask = self.free.len() - 1;
        let free = &mut self.free[..=mask];
        let n = self.pos.len();
        let (pos, skip) = (&mut self.pos[..n], &self.skip[..n]);
        let (need, id) = (&mut self.need[..n], &self.id[..n]);
        let (credit, weight) = (&mut self.credit[..n], &self.weight[..n]);
        let (mut claimed, mut finished) = (0, 0);
        for _ in 0..rounds {
            for k in 0..n {
                let look = if EQUAL {
                    true
                } else {
                    let c = credit[k] + weight[k];
                    let look = c >= max_w;
                    credit[k] = if look { c - max_w } else { c };
                    look
                };
                let p = pos[k];
                let word = &mut free[(p >> 6) as usize & mask];
                if SPARSE {
                    if look && (*word >> (p & 63)) & 1 != 0 && need[k] != 0 {
                        claim_rare(word, &mut table[p as usize], &mut need[k], id[k], p);
                        claimed += 1;
                        finished += (need[k] == 0) as u32;
                    }
                } else {
                    let got = (*word >> (p & 63)) as u32 & 1 & (need[k] != 0) as u32 & look as u32;
                    *word ^= (got as u64) << (p & 63);
                    table[if got != 0 { p } else { m } as usize] = id[k];
                    need[k] -= got;
                    claimed += got;
                }
                if !EQUAL {
                    let next = p + if look { skip[k] } else { 0 };
                    pos[k] = if next >= m { next - m } else { next };
                }
            }
            if EQUAL {
                // A step back by m, then forward again if that went below 0
                // (as i32: m ≤ 2^31); the compiler vectorises this loop.
                for (p, &s) in pos.iter_mut().zip(skip) {
                    let next = p.wrapping_add(s).wrapping_sub(m) as i32;
                    *p = (next as u32).wrapping_add(m & (next >> 31) as u32);
                }
            }
        }
        self.filled += claimed;
        self.finished += finished;
    }

    /// The end of the fill, with the same outcome as more rounds but
    /// without the probing: near the end almost every look lands on a taken
    /// slot. Each free slot's next visitor is the real whose permutation
    /// reaches it first (ties: turn order); those visits are taken in time
    /// order. A visitor whose quota filled meanwhile is replaced by the slot's
    /// next visitor among the reals still filling. Needs `m` prime (every
    /// skip invertible) and m × the largest weight at most 2^32.
    fn tail(&mut self, table: &mut [u32]) {
        if self.equal {
            self.tail_with::<true>(table);
        } else {
            self.tail_with::<false>(table);
        }
    }

    fn tail_with<const EQUAL: bool>(&mut self, table: &mut [u32]) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let (m, max_w) = (self.m, self.max_w as u64);
        let n = self.pos.len();
        let mut slots = Vec::with_capacity((m - self.filled) as usize);
        for (i, &bits) in self.free.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                slots.push((i * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        debug_assert!(n <= 1 << 16 && slots.len() <= 1 << 16);
        debug_assert!(self.tail_ok);
        let reduce = Reducer::new(m as u64);
        let inv: Vec<u64> = self
            .skip
            .iter()
            .map(|&s| mod_inverse(s as u64, m as u64))
            .collect();
        // Copies (at most TAIL_SLOTS reals), so that `event` leaves `self`
        // free for `claim`: the tail does not move walks or credits.
        let (pos, credit, weight) = (self.pos.clone(), self.credit.clone(), self.weight.clone());
        // Real k's first look at free slot i, as an event that orders by
        // round (from now), then turn order: it is k's d-th look from now.
        // Round, real and slot fit in 32 + 16 + 16 bits.
        let event = |k: usize, i: usize| -> u64 {
            let (p, s) = (pos[k], slots[i]);
            let dist = if s >= p { s - p } else { s + m - p } as u64;
            let d = reduce.rem(dist * inv[k]);
            let r = if EQUAL {
                d
            } else {
                let (w, c) = (weight[k] as u64, credit[k] as u64);
                ((d + 1) * max_w - c).div_ceil(w) - 1
            };
            r << 32 | (k as u64) << 16 | i as u64
        };
        let mut first: Vec<u64> = (0..slots.len())
            .map(|i| (0..n).map(|k| event(k, i)).min().unwrap_or(u64::MAX))
            .collect();
        first.sort_unstable();
        // Visits that replace one whose real had filled its quota.
        let mut later: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        // Reals still filling, in turn order.
        let mut active: Vec<usize> = (0..n).collect();
        let mut sorted = first.into_iter().peekable();
        loop {
            let e = match (sorted.peek(), later.peek()) {
                (Some(&a), Some(&Reverse(b))) if b < a => later.pop().map(|r| r.0),
                (Some(_), _) => sorted.next(),
                (None, _) => later.pop().map(|r| r.0),
            };
            let Some(e) = e else { break };
            let (k, i) = ((e >> 16) as u16 as usize, e as u16 as usize);
            let s = slots[i];
            if self.need[k] > 0 {
                self.claim(table, s, k);
                if self.need[k] == 0 {
                    active.retain(|&j| j != k);
                }
            } else {
                // Its visitor is done: the next one among those still filling.
                let e2 = active
                    .iter()
                    .map(|&k| event(k, i))
                    .min()
                    .expect("a free slot implies a real short of its quota");
                debug_assert!(e2 > e);
                later.push(Reverse(e2));
            }
        }
    }

    /// Only for a non-prime m whose permutations missed some slots: the
    /// remaining slots in slot order, to the reals short of their quota.
    fn rest_in_slot_order(&mut self, table: &mut [u32]) {
        let mut k = 0;
        for s in 0..self.m {
            if !self.is_free(s) {
                continue;
            }
            while self.need[k] == 0 {
                k += 1;
            }
            self.claim(table, s, k);
        }
    }
}

/// A look that found its slot free while most are taken: out of line, so
/// that the loop around it stays small.
#[cold]
#[inline(never)]
fn claim_rare(word: &mut u64, slot: &mut u32, need: &mut u32, id: u32, p: u32) {
    *word &= !(1 << (p & 63));
    *slot = id;
    *need -= 1;
}

/// Looks are sparse (a hit is rare enough for a branch) once fewer than
/// 1/`SPARSE` of the slots are free. Tuned on `bench maglev`.
const SPARSE: u64 = 16;

/// Whether `n` is prime (ring sizes must be: see [`build`]).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// `a`'s inverse modulo `m` (`a` and `m` coprime).
fn mod_inverse(a: u64, m: u64) -> u64 {
    // Extended Euclid in i64: m < 2^32, so every value fits.
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} has no inverse mod {m}");
    t0.rem_euclid(m as i64) as u64
}

/// `a mod m` for `a` below 2^64, without a division (m fixed per build).
struct Reducer {
    m: u64,
    inv: u64,
}

impl Reducer {
    fn new(m: u64) -> Self {
        Reducer {
            m,
            inv: u64::MAX / m,
        }
    }

    fn rem(&self, a: u64) -> u64 {
        let q = ((a as u128 * self.inv as u128) >> 64) as u64;
        let mut r = a - q * self.m;
        while r >= self.m {
            r -= self.m;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                id: format!("198.18.{}.{}:8080", i / 250, i % 250 + 1).into_bytes(),
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_differ_by_at_most_one() {
        for n in [1usize, 2, 3, 7, 10, 100, 1000] {
            let t = build(&backends(n), 65537);
            let c = counts(&t, n);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
            assert!(t.iter().all(|&s| s != EMPTY));
        }
    }

    #[test]
    fn weights_are_proportional() {
        let mut b = backends(4);
        b[0].weight = 1;
        b[1].weight = 2;
        b[2].weight = 3;
        b[3].weight = 4;
        let t = build(&b, 65537);
        let c = counts(&t, 4);
        let total: usize = c.iter().sum();
        for (i, &n) in c.iter().enumerate() {
            let want = total as f64 * b[i].weight as f64 / 10.0;
            assert!(
                (n as f64 - want).abs() <= want * 0.01 + 2.0,
                "real {i}: {n} slots, want ~{want}"
            );
        }
    }

    #[test]
    fn weight_zero_gets_no_slots() {
        let mut b = backends(3);
        b[1].weight = 0;
        let t = build(&b, 65537);
        assert!(t.iter().all(|&s| s == 0 || s == 2));
        for b in &mut b {
            b.weight = 0;
        }
        assert!(build(&b, 7).iter().all(|&s| s == EMPTY));
    }

    /// Fraction of slots owned by a surviving backend that changed owner.
    fn moved(before: &[u32], bb: &[Backend], after: &[u32], ab: &[Backend]) -> f64 {
        let mut survivor_slots = 0usize;
        let mut moved = 0usize;
        for (x, y) in before.iter().zip(after) {
            let old = &bb[*x as usize].id;
            if !ab.iter().any(|b| &b.id == old) {
                continue;
            }
            survivor_slots += 1;
            if &ab[*y as usize].id != old {
                moved += 1;
            }
        }
        moved as f64 / survivor_slots as f64
    }

    #[test]
    fn removing_one_of_100_moves_little() {
        let b = backends(100);
        let before = build(&b, 65537);
        for removed in [0usize, 37, 99] {
            let mut a = b.clone();
            a.remove(removed);
            let after = build(&a, 65537);
            let f = moved(&before, &b, &after, &a);
            assert!(
                f <= 0.015,
                "removing real {removed} moved {:.2}%",
                f * 100.0
            );
        }
    }

    #[test]
    fn adding_one_to_100_moves_little() {
        let b = backends(100);
        let before = build(&b, 65537);
        let mut a = b.clone();
        a.push(Backend {
            id: b"198.18.9.9:8080".to_vec(),
            weight: 1,
        });
        let after = build(&a, 65537);
        let f = moved(&before, &b, &after, &a);
        assert!(f <= 0.015, "adding a real moved {:.2}%", f * 100.0);
    }

    /// The fill written the plain way: every round, every real under its
    /// quota looks once (lighter reals less often). `build` must give the
    /// same table; it only gets there with less work.
    fn reference(backends: &[Backend], m: u32) -> Vec<u32> {
        let mut table = vec![EMPTY; m as usize];
        let Some(f) = Fill::new(backends, m) else {
            return table;
        };
        let (mut pos, skip) = (f.pos, f.skip);
        let (w, id) = (f.weight, f.id);
        let (mut need, mut credit) = (f.need, f.credit);
        let mut filled = 0u32;
        let mut rounds = 0u64;
        while filled < m && rounds < 2 * m as u64 * f.max_w as u64 + 16 {
            rounds += 1;
            let active: Vec<usize> = (0..pos.len()).filter(|&k| need[k] > 0).collect();
            for k in active {
                credit[k] += w[k];
                if credit[k] < f.max_w {
                    continue;
                }
                credit[k] -= f.max_w;
                let p = pos[k] as usize;
                if table[p] == EMPTY {
                    table[p] = id[k];
                    need[k] -= 1;
                    filled += 1;
                }
                pos[k] = (pos[k] + skip[k]) % m;
            }
        }
        table
    }

    #[test]
    fn build_matches_the_plain_fill() {
        let sizes = [65537u32, 4099, 251, 7];
        for n in [1usize, 2, 3, 10, 57, 100, 333] {
            let mut b = backends(n);
            for &m in &sizes {
                assert_eq!(build(&b, m), reference(&b, m), "n={n} m={m} equal");
            }
            for (i, x) in b.iter_mut().enumerate() {
                x.weight = 1 + (i as u32 * 7919) % 13;
            }
            if n > 2 {
                b[1].weight = 0;
            }
            for &m in &sizes {
                assert_eq!(build(&b, m), reference(&b, m), "n={n} m={m} weighted");
            }
        }
        // Weights far apart: most rounds only the heavy real looks, which
        // the build visits alone (`Fill::scheduled`).
        let mut b = backends(40);
        b[3].weight = 50;
        assert_eq!(build(&b, 65537), reference(&b, 65537), "one heavy real");
        let mut b = backends(100);
        b[7].weight = 1000;
        b[8].weight = 300;
        assert_eq!(build(&b, 4099), reference(&b, 4099), "two heavy reals");
    }

    #[test]
    fn non_prime_size_still_fills_every_slot() {
        let t = build(&backends(3), 12);
        assert_eq!(counts(&t, 3), vec![4, 4, 4]);
    }

    #[test]
    fn same_input_same_ring() {
        let b = backends(10);
        assert_eq!(build(&b, 65537), build(&b, 65537));
        assert_eq!(build(&b, 4099), build(&b.clone(), 4099));
    }
}

/// Flow hash quality through the chain the data path uses: a [`FlowKey`]
/// as the XDP parser fills it ([`crate::l4::dataplane::flow_key`]),
/// [`lb_common::flow_hash_seeded`], `% ring
/// size`, the ring [`build`] makes for N equal reals, the real. Each case
/// is a fixed set of distinct flows; the spread over the reals must pass a
/// chi-square test at a false-positive rate of 1e-6. (Repeated flows would
/// inflate the statistic without saying anything about the hash: one flow
/// always maps to one real.)
#[cfg(test)]
mod hash_quality {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use lb_common::{flow_hash_seeded, DEFAULT_HASH_SEED};

    use super::{build, Backend};
    use crate::{
        ident::{Protocol, RealId},
        l4::{config::DEFAULT_RING_SIZE, dataplane::flow_key},
    };

    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    /// A seed other than the default.
    const OTHER_SEED: u32 = 0x9e37_79b9;
    const SAMPLES: usize = 20_000;
    /// Upper-tail standard normal quantile for p = 1e-6.
    const Z_1E6: f64 = 4.753_424;

    /// The ring the control plane builds for equal reals (as real indexes).
    fn ring_of(reals: &[IpAddr], port: u16) -> Vec<u32> {
        let backends: Vec<Backend> = reals
            .iter()
            .map(|&a| Backend {
                id: RealId::new(a, port).maglev_identity(),
                weight: 1,
            })
            .collect();
        build(&backends, DEFAULT_RING_SIZE)
    }

    fn reals(n: usize, v6: bool) -> Vec<IpAddr> {
        (0..n)
            .map(|i| -> IpAddr {
                if v6 {
                    Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2 + i as u16).into()
                } else {
                    Ipv4Addr::new(198, 18, 11 + (i / 250) as u8, 2 + (i % 250) as u8).into()
                }
            })
            .collect()
    }

    /// Flows per real, for flows (client, source port) to `vip` port 80.
    fn spread(flows: &[(IpAddr, u16)], vip: IpAddr, ring: &[u32], n: usize, seed: u32) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &(client, sport) in flows {
            c[real_of(client, sport, vip, ring, seed)] += 1;
        }
        c
    }

    fn real_of(client: IpAddr, sport: u16, vip: IpAddr, ring: &[u32], seed: u32) -> usize {
        // The key as the XDP parser fills it (see `flow_key`).
        let k = flow_key(
            SocketAddr::new(client, sport),
            SocketAddr::new(vip, 80),
            Protocol::Tcp,
        );
        ring[(flow_hash_seeded(&k, seed) % ring.len() as u32) as usize] as usize
    }

    /// Pearson's statistic of `counts` against each real's share of the
    /// ring's slots.
    fn chi_square(counts: &[u64], ring: &[u32]) -> f64 {
        let mut slots = vec![0u64; counts.len()];
        for &r in ring {
            slots[r as usize] += 1;
        }
        let total: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(&slots)
            .map(|(&o, &s)| {
                let e = total as f64 * s as f64 / ring.len() as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// The value a chi-square statistic with `dof` degrees of freedom
    /// exceeds with probability 1e-6 (Wilson–Hilferty; a little above the
    /// exact value for few degrees of freedom: 30.3 against 27.6 for 2).
    fn critical(dof: usize) -> f64 {
        let k = dof as f64;
        let a = 2.0 / (9.0 * k);
        k * (1.0 - a + Z_1E6 * a.sqrt()).powi(3)
    }

    /// A fixed pseudo-random sequence (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Ports as Linux `connect()` hands them to one client talking to one
    /// destination: even, each 2 to 16 above the last (`__inet_hash_connect`
    /// steps by 2 and adds a random skip of 0 to 7 steps), from `first`,
    /// wrapping within the default ephemeral range 32768..=60999. Captures
    /// of curl bursts show exactly this pattern.
    fn kernel_ports(rng: &mut Rng, first: u16, count: usize) -> Vec<u16> {
        let mut p = first as u32 & !1;
        (0..count)
            .map(|_| {
                let port = p as u16;
                p += 2 + 2 * rng.below(8) as u32;
                if p > 60999 {
                    p = 32768 + (p - 61000);
                }
                port
            })
            .collect()
    }

    /// A sample set: name, IPv6, distinct flows as (client, port).
    type Case = (String, bool, Vec<(IpAddr, u16)>);

    fn cases() -> Vec<Case> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let client: IpAddr = if v6 { CLIENT6.into() } else { CLIENT4.into() };
            let with_client = |ports: Vec<u16>| ports.into_iter().map(|p| (client, p)).collect();
            out.push((
                format!("{fam} sequential ports"),
                v6,
                with_client((0..SAMPLES).map(|i| 32768 + i as u16).collect()),
            ));
            // One pass over 1024..=65535 in the kernel's pattern (~7,100
            // distinct ports).
            let mut rng = Rng(0xc0ff_ee00 + v6 as u64);
            let mut p = 1024u32;
            let mut ports = Vec::new();
            while p <= 65534 {
                ports.push(p as u16);
                p += 2 + 2 * rng.below(8) as u32;
            }
            out.push((format!("{fam} kernel-like ports"), v6, with_client(ports)));
            // Distinct random ports: a shuffle of 1024..=65535.
            let mut ports: Vec<u16> = (1024..=65535).collect();
            let mut rng = Rng(0x5eed_0000 + v6 as u64);
            for i in (1..ports.len()).rev() {
                ports.swap(i, rng.below(i as u64 + 1) as usize);
            }
            ports.truncate(SAMPLES);
            out.push((format!("{fam} random ports"), v6, with_client(ports)));
            let seq_client = |i: usize| -> IpAddr {
                if v6 {
                    Ipv6Addr::from(u128::from(CLIENT6) - 1 + i as u128).into()
                } else {
                    Ipv4Addr::from(u32::from(CLIENT4) - 1 + i as u32).into()
                }
            };
            out.push((
                format!("{fam} sequential clients"),
                v6,
                (0..SAMPLES).map(|i| (seq_client(i), 40000)).collect(),
            ));
        }
        out
    }

    /// Every case over rings of 3, 10 and 100 reals with `seed`: one line
    /// per case, and whether it passed.
    fn check_all(seed: u32) -> Vec<(String, bool)> {
        let cases = cases();
        let mut out = Vec::new();
        for n in [3usize, 10, 100] {
            let bound = critical(n - 1);
            for v6 in [false, true] {
                let ring = ring_of(&reals(n, v6), 8080);
                let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
                for (name, _, flows) in cases.iter().filter(|c| c.1 == v6) {
                    let x = chi_square(&spread(flows, vip, &ring, n, seed), &ring);
                    out.push((
                        format!(
                            "{n:>3} reals, {name:<22} ({:>5} flows), seed {seed:#010x}: chi2 {x:7.2} (dof {}, bound {bound:.1})",
                            flows.len(),
                            n - 1
                        ),
                        x < bound,
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn flow_hash_spreads_evenly_over_3_10_100_reals() {
        let mut failed = Vec::new();
        for seed in [DEFAULT_HASH_SEED, OTHER_SEED] {
            for (line, ok) in check_all(seed) {
                println!("{line}");
                if !ok {
                    failed.push(line);
                }
            }
        }
        assert!(failed.is_empty(), "uneven spread:\n{}", failed.join("\n"));
    }

    #[test]
    fn rings_of_equal_reals_are_balanced() {
        for n in [3usize, 10, 100] {
            for v6 in [false, true] {
                let ring = ring_of(&reals(n, v6), 8080);
                let mut slots = vec![0usize; n];
                for &r in &ring {
                    slots[r as usize] += 1;
                }
                let (min, max) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
                println!(
                    "{n:>3} reals ({}): {min}..={max} slots each",
                    if v6 { "v6" } else { "v4" }
                );
                assert!(max - min <= 1, "{n} reals: {min}..={max} slots");
            }
        }
    }

    #[test]
    fn chi_square_bound_is_close_to_the_exact_value() {
        // Exact for 2 degrees of freedom: -2 ln p.
        let exact = -2.0 * 1e-6f64.ln();
        assert!(critical(2) >= exact && critical(2) < exact * 1.12);
        assert!(critical(9) > critical(2) && critical(99) > critical(9));
    }

    /// Bursts shaped like `lb demo`'s (300 curl requests from one client
    /// address to the IPv6 VIP, kernel-chosen ports, the demo's three
    /// reals): over many clients the statistic behaves as chance predicts
    /// for 2 degrees of freedom (mean 2, P(>= 13.58) = e^-6.79 = 0.0011).
    #[test]
    fn demo_sized_bursts_spread_like_chance() {
        let reals: Vec<IpAddr> = (1..=3)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x10 + i, 0, 0, 0, 0, 2).into())
            .collect();
        let ring = ring_of(&reals, 8080);
        let mut rng = Rng(0xde30);
        let bursts = 2000;
        let (mut sum, mut high) = (0.0, 0);
        for _ in 0..bursts {
            let client = Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (rng.next() as u128) << 32 | (rng.next() >> 32) as u128,
            );
            let first = 32768 + rng.below(61000 - 32768) as u16;
            let flows: Vec<(IpAddr, u16)> = kernel_ports(&mut rng, first, 300)
                .into_iter()
                .map(|p| (client.into(), p))
                .collect();
            let x = chi_square(
                &spread(&flows, VIP6.into(), &ring, 3, DEFAULT_HASH_SEED),
                &ring,
            );
            sum += x;
            high += (x >= 13.58) as u32;
        }
        let mean = sum / bursts as f64;
        println!("{bursts} bursts: mean chi2 {mean:.3}, {high} at or above 13.58");
        // The mean's standard error is 2 / sqrt(2000) = 0.045.
        assert!((1.75..2.25).contains(&mean), "mean chi2 {mean}");
        assert!(high <= 10, "{high} of {bursts} bursts at or above 13.58");
    }

    /// Another seed sends the same flows to other reals (as an independent
    /// hash would: 1 - 1/N of them), and is as balanced (the chi-square
    /// cases above run with both seeds).
    #[test]
    fn seeds_move_flows_and_each_stays_balanced() {
        let n = 10;
        for (name, v6, flows) in cases() {
            let ring = ring_of(&reals(n, v6), 8080);
            let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
            let moved = flows
                .iter()
                .filter(|&&(c, p)| {
                    real_of(c, p, vip, &ring, DEFAULT_HASH_SEED)
                        != real_of(c, p, vip, &ring, OTHER_SEED)
                })
                .count() as f64
                / flows.len() as f64;
            println!("{name}: {:.1}% of flows on another real", moved * 100.0);
            assert!((moved - 0.9).abs() < 0.03, "{name}: {moved}");
            for seed in [DEFAULT_HASH_SEED, OTHER_SEED] {
                let x = chi_square(&spread(&flows, vip, &ring, n, seed), &ring);
                assert!(x < critical(n - 1), "{name}, seed {seed:#x}: chi2 {x}");
            }
        }
    }
}

/// The Maglev ring of a VIP as configured (every real at its weight): the
/// ring the data plane installs, slot → index into `vip.reals`. Each real
/// is hashed by its [`RealId::maglev_identity`](crate::ident::RealId::maglev_identity).
pub fn vip_ring(vip: &crate::l4::config::Vip) -> Vec<u32> {
    let backends: Vec<Backend> = vip
        .reals
        .iter()
        .map(|r| Backend {
            id: r.id().maglev_identity(),
            weight: r.weight,
        })
        .collect();
    build(&backends, vip.ring_size)
}

/// Rings are part of a deployment's contract: every LB node of a VIP, on
/// every release, must build the same one. These pin the ring bytes for a
/// fixed input (an FNV-1a hash of the slots): a change to the identity
/// encoding, the hashes or the fill fails here.
#[cfg(test)]
mod pinned {
    use super::{build, Backend};
    use crate::ident::RealId;

    fn fnv(ring: &[u32]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in ring.iter().flat_map(|s| s.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    fn ring(reals: &[(&str, u16, u32)], m: u32) -> Vec<u32> {
        let backends: Vec<Backend> = reals
            .iter()
            .map(|&(a, port, weight)| Backend {
                id: RealId::new(a.parse().unwrap(), port).maglev_identity(),
                weight,
            })
            .collect();
        build(&backends, m)
    }

    #[test]
    fn rings_are_pinned() {
        let v4 = ring(
            &[
                ("198.18.11.2", 8080, 1),
                ("198.18.11.3", 8080, 2),
                ("198.18.12.2", 8443, 3),
                ("198.18.12.3", 8080, 0),
                ("198.18.13.250", 9000, 5),
            ],
            65537,
        );
        assert_eq!(fnv(&v4), 0x9c9f_9d54_c9fa_4fa1);
        let v6 = ring(
            &[
                ("2001:db8::11:2", 8080, 1),
                ("2001:db8:0:0:1::2", 8080, 1),
                ("2001:db8:11::2", 0, 2),
                ("::ffff:198.18.0.1", 53, 1),
            ],
            4099,
        );
        assert_eq!(fnv(&v6), 0xe25f_2f74_28e5_a107);
    }
}
