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

    /// The new checksum field.
    #[inline(always)]
    pub fn finish(&self) -> [u8; 2] {
        (!fold(self.sum)).to_be_bytes()
    }
}
