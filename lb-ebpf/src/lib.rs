//! Library half of the XDP crate: the pure helpers of the fast path
//! (checksum arithmetic, header checks), functions of integers only, so
//! that they compile for the host too and are tested there: unit tests with
//! known vectors here (`cargo test -p lb-ebpf --lib`, a step of
//! `cargo xtask test`), properties in `fuzz/tests/checksum_props.rs` and
//! `fuzz/tests/headers.rs`. The programs
//! are the `lb-xdp` binary target, built for `bpfel-unknown-none` by
//! `lb-userspace/build.rs`, which also lists this crate as a build
//! dependency so that cargo rebuilds the embedded object when anything here
//! changes.
#![cfg_attr(not(test), no_std)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod checksum;
pub mod hdr;
pub mod tunnel;
