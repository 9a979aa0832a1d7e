//! Internet checksum arithmetic (RFC 1071, RFC 1624), shared by the XDP
//! program and host tests. Pure functions of integers: they compile for
//! BPF and the host alike.

/// Adds two 32-bit ones' complement partial sums (end-around carry).
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let s = a.wrapping_add(b);
    s.wrapping_add((s < b) as u32)
}

/// Folds a 32-bit partial sum to 16 bits (not inverted).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One incremental update of a checksum field (RFC 1624, eqn. 3):
/// HC' = ~(~HC + ~m + m'). Words are taken big-endian from the wire bytes;
/// a ones' complement sum does not depend on byte order as long as every
/// term is taken the same way.
pub struct Update {
    sum: u32,
}

impl Update {
    #[inline(always)]
    pub fn new(check: [u8; 2]) -> Self {
        Update {
            sum: (!u16::from_be_bytes(check)) as u32,
        }
    }

    /// Replaces one 16-bit word.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.sum += (!old) as u32;
        self.sum += new as u32;
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    #[inline(always)]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        );
        self.word(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        );
    }

    #[inline(always)]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let mut i = 0;
        while i < 16 {
            self.word(
                u16::from_be_bytes([old[i], old[i + 1]]),
                u16::from_be_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }

    /// Adds the change of several words at once: the folded sum of
    /// `!old + new` over them (what [`Update::word`] adds one by one).
    #[inline(always)]
    pub fn add(&mut self, delta: u16) {
        self.sum += delta as u32;
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }

    /// The new checksum field.
    #[inline(always)]
    pub fn finish(&self) -> [u8; 2] {
        (!fold(self.sum)).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums big-endian 16-bit words (RFC 1071 section 4.1, without the
    /// final complement).
    fn sum_words(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
            .fold(0, add)
    }

    /// An IPv4 header (198.18.0.2 → 198.18.100.1, TTL 64, TCP) with its
    /// checksum field zeroed, and the checksum it gets.
    const V4: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 198, 18, 0, 2, 198,
        18, 100, 1,
    ];
    const V4_CHECK: u16 = 0x2e36;

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is 2ddf0,
        // which folds to ddf2 (checksum 220d).
        let s = sum_words(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(fold(s), 0xddf2);
        assert_eq!(!fold(s), 0x220d);
    }

    #[test]
    fn add_carries_around() {
        assert_eq!(add(0xffff_ffff, 1), 1);
        assert_eq!(add(0x8000_0000, 0x8000_0000), 1);
        assert_eq!(add(0x1234, 0x4321), 0x5555);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x0001_fffe), 0xffff);
        assert_eq!(fold(0x0002_0000), 0x0002);
    }

    #[test]
    fn ipv4_header_checksum() {
        assert_eq!(!fold(sum_words(&V4)), V4_CHECK);
        // A header with its checksum in place sums to ffff (RFC 1071).
        let mut h = V4;
        h[10..12].copy_from_slice(&V4_CHECK.to_be_bytes());
        assert_eq!(fold(sum_words(&h)), 0xffff);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: m = 5555 becomes m' = 3285 in a header whose
        // other words sum to cd7a; HC = dd2f. Eqn. 3 gives 0000, as a
        // recomputation does (eqn. 2 of RFC 1141 would give ffff).
        let mut c = Update::new(0xdd2fu16.to_be_bytes());
        c.word(0x5555, 0x3285);
        assert_eq!(c.finish(), [0x00, 0x00]);
        assert_eq!(!fold(add(0xcd7a, 0x3285)), 0x0000);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        // The NAT rewrite of the header above: destination to
        // 198.18.1.10, TTL 64 → 63.
        let mut c = Update::new(V4_CHECK.to_be_bytes());
        c.bytes4(&[198, 18, 100, 1], &[198, 18, 1, 10]);
        c.word(0x4006, 0x3f06);
        let mut h = V4;
        h[8] = 0x3f;
        h[16..20].copy_from_slice(&[198, 18, 1, 10]);
        let recomputed = !fold(sum_words(&h));
        assert_eq!(recomputed, 0x922d);
        assert_eq!(c.finish(), recomputed.to_be_bytes());
    }

    #[test]
    fn bytes16_is_eight_words() {
        let old: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let new: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut a = Update::new([0x12, 0x34]);
        a.bytes16(&old, &new);
        let mut b = Update::new([0x12, 0x34]);
        for i in (0..16).step_by(2) {
            b.word(
                u16::from_be_bytes([old[i], old[i + 1]]),
                u16::from_be_bytes([new[i], new[i + 1]]),
            );
        }
        assert_eq!(a.finish(), b.finish());
        // No change leaves the checksum as it was.
        let mut same = Update::new([0x12, 0x34]);
        same.bytes16(&old, &old);
        assert_eq!(same.finish(), [0x12, 0x34]);
    }
}
