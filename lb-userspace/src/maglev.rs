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
//! bitmap, and once few are left it stops probing and computes, for each
//! free slot, which real's walk reaches it first (a modular inverse of the
//! real's step); the table is the same as the plain fill's (a unit test
//! checks it against a plain implementation).

/// Marker for a slot no real owns (only when every weight is 0).
pub const EMPTY: u32 = u32::MAX;

/// One real as Maglev sees it: a stable identity (its address and port as
/// bytes, so the same real lands on the same slots on every node) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: Vec<u8>,
    pub weight: u32,
}

/// 64-bit FNV-1a followed by a murmur3 finaliser; `seed` picks the hash.
fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Builds a table of `m` slots (`m` prime). Each slot holds an index into
/// `backends`, or [`EMPTY`] when no backend has a weight above zero.
pub fn build(backends: &[Backend], m: u32) -> Vec<u32> {
    assert!(m >= 2, "ring size must be at least 2");
    let mut table = vec![EMPTY; m as usize];
    let mut fill = match Fill::new(backends, m) {
        Some(f) => f,
        None => return table,
    };
    fill.rounds(&mut table);
    if fill.filled < m {
        if is_prime(m) {
            fill.tail(&mut table);
        } else {
            fill.rest_in_slot_order(&mut table);
        }
    }
    table
}

/// When at most this many slots are free and free slots times reals still
/// filling is at most `TAIL_WORK`, the fill switches from probing (where
/// almost every look now lands on a taken slot) to computing each free
/// slot's next visitor (see [`Fill::tail`]). Tuned on `bench maglev`.
const TAIL_SLOTS: u32 = 512;
const TAIL_WORK: u64 = 1 << 14;

/// The fill's state, one entry per real that still has slots to claim, in
/// the order the reals take their turns.
struct Fill {
    m: u32,
    max_w: u32,
    /// Every real has the largest weight: each looks once per round.
    equal: bool,
    /// The real's walk through its permutation: next slot, step.
    walk: Vec<[u32; 2]>,
    /// Credit at the start of the next round (weighted turns).
    credit: Vec<u32>,
    weight: Vec<u32>,
    /// Slots still to claim (quota minus slots claimed).
    need: Vec<u32>,
    /// Index into `backends`.
    id: Vec<u32>,
    /// Free slots, one bit each.
    free: Vec<u64>,
    filled: u32,
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
        let weight = |k: usize| backends[live[k]].weight as u64;
        let total_w: u64 = (0..live.len()).map(weight).sum();

        // Quotas: the floor of each share, then one more slot for the largest
        // remainders (ties by a hash of the identity), so they sum to m.
        let mut quota: Vec<u64> = (0..live.len()).map(|k| m64 * weight(k) / total_w).collect();
        let mut left = m64 - quota.iter().sum::<u64>();
        let mut order: Vec<(u64, u64, usize)> = (0..live.len())
            .map(|k| {
                (
                    (m64 * weight(k)) % total_w,
                    hash64(&backends[live[k]].id, 0x6d61_676c_6576_3033),
                    k,
                )
            })
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, _, k) in &order {
            if left == 0 {
                break;
            }
            quota[k] += 1;
            left -= 1;
        }

        let max_w = (0..live.len()).map(weight).max().unwrap_or(1) as u32;
        let mut f = Fill {
            m,
            max_w,
            equal: (0..live.len()).all(|k| weight(k) == max_w as u64),
            walk: Vec::with_capacity(live.len()),
            credit: Vec::with_capacity(live.len()),
            weight: Vec::with_capacity(live.len()),
            need: Vec::with_capacity(live.len()),
            id: Vec::with_capacity(live.len()),
            free: vec![!0u64; (m as usize).div_ceil(64)],
            filled: 0,
        };
        if !m.is_multiple_of(64) {
            *f.free.last_mut().unwrap() = (1u64 << (m % 64)) - 1;
        }
        for (k, &i) in live.iter().enumerate() {
            if quota[k] == 0 {
                continue;
            }
            let id = &backends[i].id;
            f.walk.push([
                (hash64(id, 0x6d61_676c_6576_3031) % m64) as u32,
                (hash64(id, 0x6d61_676c_6576_3032) % (m64 - 1) + 1) as u32,
            ]);
            f.credit.push(0);
            f.weight.push(weight(k) as u32);
            f.need.push(quota[k] as u32);
            f.id.push(i as u32);
        }
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
            if self.need[k] > 0 {
                self.walk[j] = self.walk[k];
                self.credit[j] = self.credit[k];
                self.weight[j] = self.weight[k];
                self.need[j] = self.need[k];
                self.id[j] = self.id[k];
                j += 1;
            }
        }
        self.walk.truncate(j);
        for v in [
            &mut self.credit,
            &mut self.weight,
            &mut self.need,
            &mut self.id,
        ] {
            v.truncate(j);
        }
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
        let prime = is_prime(m);
        while self.filled < m && rounds_left > 0 {
            let left = m - self.filled;
            if prime && left <= TAIL_SLOTS && left as u64 * self.walk.len() as u64 <= TAIL_WORK {
                return;
            }
            rounds_left -= 1;
            let done = if self.equal {
                self.round::<true>(table)
            } else {
                self.round::<false>(table)
            };
            if done {
                self.retire_done();
            }
        }
    }

    /// One round of turns; true if a quota filled. With `EQUAL` every real
    /// looks once; otherwise a real looks when its credit reaches the
    /// largest weight.
    fn round<const EQUAL: bool>(&mut self, table: &mut [u32]) -> bool {
        // Plain slices, not `self.` fields, keep this loop in registers.
        let (m, max_w, n) = (self.m, self.max_w, self.walk.len());
        let (credit, weight) = (&mut self.credit[..n], &self.weight[..n]);
        let (need, id) = (&mut self.need[..n], &self.id[..n]);
        let (free, mut filled, mut done) = (&mut self.free[..], self.filled, false);
        for (k, w) in self.walk.iter_mut().enumerate() {
            if !EQUAL {
                credit[k] += weight[k];
                if credit[k] < max_w {
                    continue;
                }
                credit[k] -= max_w;
            }
            let [p, skip] = *w;
            let (word, bit) = ((p >> 6) as usize, 1u64 << (p & 63));
            if free[word] & bit != 0 {
                free[word] &= !bit;
                table[p as usize] = id[k];
                need[k] -= 1;
                filled += 1;
                done |= need[k] == 0;
            }
            let next = p + skip;
            w[0] = if next >= m { next - m } else { next };
        }
        self.filled = filled;
        done
    }

    /// The end of the fill, with the same outcome as more rounds but
    /// without the probing: near the end almost every look lands on a taken
    /// slot. Each free slot's next visitor is the real whose permutation
    /// reaches it first (ties: turn order); those visits are taken in time
    /// order. A visitor whose quota filled meanwhile is replaced by the slot's
    /// next visitor among the reals still filling. Needs `m` prime (every
    /// skip invertible).
    fn tail(&mut self, table: &mut [u32]) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let m = self.m as u64;
        let reduce = Reducer::new(m);
        let inv: Vec<u64> = self
            .walk
            .iter()
            .map(|w| mod_inverse(w[1] as u64, m))
            .collect();
        // An event: real k's look at slot s in round r (from now), packed so
        // that events order by round, then turn order.
        let event =
            |r: u64, k: usize, s: u32| ((r as u128) << 64) | ((k as u128) << 32) | s as u128;
        // Real k's first look at slot s: in its d-th look from now, which
        // falls in round_of(d).
        let first_look = |f: &Fill, k: usize, s: u32| -> u128 {
            let p = f.walk[k][0];
            let dist = if s >= p { s - p } else { s + f.m - p } as u64;
            let d = reduce.rem(dist * inv[k]);
            let r = if f.equal {
                d
            } else {
                let (w, c, mw) = (f.weight[k] as u128, f.credit[k] as u128, f.max_w as u128);
                (((d as u128 + 1) * mw - c).div_ceil(w) - 1) as u64
            };
            event(r, k, s)
        };
        let mut slots = Vec::with_capacity((m - self.filled as u64) as usize);
        for (w, &bits) in self.free.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                slots.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        let mut next = vec![u128::MAX; slots.len()];
        for k in 0..self.walk.len() {
            for (i, &s) in slots.iter().enumerate() {
                next[i] = next[i].min(first_look(self, k, s));
            }
        }
        let mut heap: BinaryHeap<Reverse<u128>> = next.into_iter().map(Reverse).collect();
        while let Some(Reverse(e)) = heap.pop() {
            let (k, s) = ((e >> 32) as u32 as usize, e as u32);
            if self.need[k] > 0 {
                self.claim(table, s, k);
            } else {
                // Its visitor is done: the next one among those still filling.
                let e2 = (0..self.walk.len())
                    .filter(|&k| self.need[k] > 0)
                    .map(|k| first_look(self, k, s))
                    .min()
                    .expect("a free slot implies a real short of its quota");
                debug_assert!(e2 > e);
                heap.push(Reverse(e2));
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

fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= m as u64 {
        if m.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// `a`'s inverse modulo `m` (`a` and `m` coprime).
fn mod_inverse(a: u64, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i128, a as i128);
    let (mut t0, mut t1) = (0i128, 1i128);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} has no inverse mod {m}");
    t0.rem_euclid(m as i128) as u64
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
        for b in b.iter_mut() {
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
        let mut pos: Vec<u32> = f.walk.iter().map(|w| w[0]).collect();
        let skip: Vec<u32> = f.walk.iter().map(|w| w[1]).collect();
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
        let mut b = backends(40);
        b[3].weight = 50;
        assert_eq!(build(&b, 65537), reference(&b, 65537), "one heavy real");
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
