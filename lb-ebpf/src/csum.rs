//! Incremental Internet checksum updates (RFC 1624): HC' = ~(~HC + ~m + m').
//!
//! All words are taken big-endian from the wire bytes; the ones' complement
//! sum does not care about byte order as long as it is consistent.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Accumulator for one checksum update.
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
