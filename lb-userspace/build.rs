//! Builds the XDP objects (`lb-ebpf`, nightly, bpfel-unknown-none) and leaves
//! them in OUT_DIR: aya-build copies every binary target of the package
//! there, `lb-xdp` (the production object, embedded by `dataplane`) and
//! `lb-xdp-test` (the measurement and test programs, embedded by
//! `xdp_test`) and `lb-decap` (the DSR reals' decap program, embedded by
//! `decap`), each with `include_bytes!`.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for hosts without bpf-linker that
//! only work on the L7 or DNS roles); the binary then reports at run time that
//! it has no XDP object.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let objects = [
        out_dir.join("lb-xdp"),
        out_dir.join("lb-xdp-test"),
        out_dir.join("lb-decap"),
    ];
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        for object in &objects {
            if !object.exists() {
                fs::write(object, b"")?;
            }
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../lb-ebpf").canonicalize()?;
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    // aya-build passes every line the nested cargo writes to stderr on as a
    // `cargo:warning`, so its progress lines ("Compiling core ...") would
    // reach the user as dozens of warnings. Quiet drops those; compiler
    // warnings and errors come through cargo's JSON messages and still show.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
