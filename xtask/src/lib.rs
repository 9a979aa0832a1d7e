//! The library half of `xtask`: what a test also runs (the packaging).

pub mod package;
