//! The XDP test object (`lb-xdp-test`, built from `lb-ebpf/src/test_progs.rs`
//! beside the production object): measurement and test programs that `lb`
//! never loads, for `bench` and the tests.
//!
//! - `floor_tx`: the data plane's parser, then XDP_TX (the floor of
//!   `bench xdp`);
//! - `floor_redirect`: redirects every frame to `FLOOR_PORT[0]` (the floor of
//!   `bench fwd`);
//! - `gen`: `bench fwd`'s generator (`GEN_TEMPLATE`, `GEN_STATE`,
//!   `GEN_MODE`); in mode 2 it tail-calls `GEN_NEXT[0]`, which may hold a
//!   program of another object, such as the production `lb_xdp`;
//! - `sink`: counts TCP/UDP frames in `SINK_COUNT` and drops them.

use anyhow::{anyhow, bail, Context, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};

use crate::l4::dataplane::LoadOptions;

/// The test object, built from `lb-ebpf` and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-test"));

/// The programs in the test object.
pub const PROGRAMS: [&str; 4] = ["floor_tx", "floor_redirect", "gen", "sink"];

/// The test object, loaded into the kernel with every program verified.
pub struct TestPrograms {
    ebpf: Ebpf,
}

impl TestPrograms {
    /// Loads the object and each of its programs (nothing attached).
    pub fn load() -> Result<TestPrograms> {
        if OBJECT.is_empty() {
            bail!("this build has no XDP test object (AYA_BUILD_SKIP was set)");
        }
        // The parser logs as `lb_xdp`'s does, at the data plane's default
        // level.
        let level = LoadOptions::default().log_level;
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(OBJECT)
            .context("cannot load the XDP test object")?;
        for name in PROGRAMS {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the XDP test object has no program `{name}`"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel rejected XDP test program `{name}`"))?;
        }
        Ok(TestPrograms { ebpf })
    }

    /// The underlying object (maps, attaching).
    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// A loaded program by name.
    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program `{name}` in the XDP test object"))?
            .try_into()
            .map_err(Into::into)
    }
}
