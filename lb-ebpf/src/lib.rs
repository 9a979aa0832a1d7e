//! Library half of the XDP crate. It is empty on purpose: `lb-userspace`
//! lists this crate as a build dependency so that cargo rebuilds the embedded
//! object when anything here changes; the programs themselves are the `lb`
//! binary target, built for `bpfel-unknown-none` by `lb-userspace/build.rs`.
#![no_std]
