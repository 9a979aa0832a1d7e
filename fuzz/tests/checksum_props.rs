//! The checksum arithmetic the XDP program uses, against checksums computed
//! from scratch over the bytes (RFC 1071).

use lb_ebpf::checksum::{add, fold, Update};
use proptest::prelude::*;

/// The Internet checksum of `data` from scratch: the inverted ones'
/// complement sum of its big-endian words (an odd byte padded with zero).
fn checksum(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for w in data.chunks(2) {
        s += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A buffer whose checksum field (bytes `at..at + 2`) is right.
fn with_checksum(mut data: Vec<u8>, at: usize) -> Vec<u8> {
    data[at] = 0;
    data[at + 1] = 0;
    let c = checksum(&data);
    data[at..at + 2].copy_from_slice(&c.to_be_bytes());
    data
}

/// Is the buffer's checksum right? (0 and 0xffff are the same number in
/// ones' complement.)
fn right(data: &[u8]) -> bool {
    matches!(checksum(data), 0 | 0xffff)
}

proptest! {
    #[test]
    fn add_and_fold_are_ones_complement_addition(a: u32, b: u32) {
        let mut r = a as u64 + b as u64;
        while r > 0xffff {
            r = (r & 0xffff) + (r >> 16);
        }
        prop_assert_eq!(fold(add(a, b)) as u64 % 0xffff, r % 0xffff);
    }

    #[test]
    fn word_update_matches_a_checksum_from_scratch(
        words in proptest::collection::vec(any::<u16>(), 2..64),
        field in any::<prop::sample::Index>(),
        target in any::<prop::sample::Index>(),
        new: u16,
    ) {
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let n = words.len();
        let at = field.index(n) * 2;
        let mut data = with_checksum(data, at);
        let mut t = target.index(n) * 2;
        if t == at {
            t = (t + 2) % (2 * n);
        }
        let old = u16::from_be_bytes([data[t], data[t + 1]]);
        let mut u = Update::new([data[at], data[at + 1]]);
        u.word(old, new);
        data[t..t + 2].copy_from_slice(&new.to_be_bytes());
        data[at..at + 2].copy_from_slice(&u.finish());
        prop_assert!(right(&data), "updated checksum wrong: {:x?}", data);
    }

    #[test]
    fn address_updates_match_a_checksum_from_scratch(
        head in proptest::collection::vec(any::<u8>(), 40..41),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        new4: [u8; 4],
        new16: [u8; 16],
    ) {
        // Checksum at 0, a v4 address at 2, a v6 address at 6, then any
        // body (odd lengths included).
        let mut data = head;
        data.extend_from_slice(&body);
        let mut data = with_checksum(data, 0);
        let mut u = Update::new([data[0], data[1]]);
        let old4: [u8; 4] = data[2..6].try_into().unwrap();
        let old16: [u8; 16] = data[6..22].try_into().unwrap();
        u.bytes4(&old4, &new4);
        u.bytes16(&old16, &new16);
        data[2..6].copy_from_slice(&new4);
        data[6..22].copy_from_slice(&new16);
        data[0..2].copy_from_slice(&u.finish());
        prop_assert!(right(&data));
    }

    #[test]
    fn a_wrong_checksum_stays_wrong_by_the_same_amount(
        words in proptest::collection::vec(any::<u16>(), 4..32),
        error in 1u16..0xffff,
        new: u16,
    ) {
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut data = with_checksum(data, 0);
        let c = u16::from_be_bytes([data[0], data[1]]).wrapping_add(error);
        data[0..2].copy_from_slice(&c.to_be_bytes());
        let before = checksum(&data);
        let old = u16::from_be_bytes([data[2], data[3]]);
        let mut u = Update::new([data[0], data[1]]);
        u.word(old, new);
        data[2..4].copy_from_slice(&new.to_be_bytes());
        data[0..2].copy_from_slice(&u.finish());
        let after = checksum(&data);
        let norm = |x: u16| if x == 0xffff { 0 } else { x };
        prop_assert_eq!(norm(before), norm(after));
    }
}
