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
//!
//! Output: aya-build passes every line the nested cargo writes on as a
//! `cargo:warning`, its progress lines ("Compiling core ...", "Finished
//! ...") too, which would reach the user as dozens of `warning:
//! lb-userspace@0.1.0` lines. So this script runs aya-build in a second copy
//! of itself (`LB_EBPF_BUILD_INNER`), captures what it prints, and forwards
//! the build directives and the real warnings and errors only. When the eBPF
//! build fails, everything it printed is forwarded, progress included, so
//! nothing that explains the failure is hidden.
use std::{
    env, fs,
    io::Write,
    path::PathBuf,
    process::{Command, ExitCode},
};

const INNER: &str = "LB_EBPF_BUILD_INNER";

fn main() -> anyhow::Result<ExitCode> {
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
        return Ok(ExitCode::SUCCESS);
    }
    if env::var_os(INNER).is_some() {
        let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
        let ebpf_dir = manifest_dir.join("../lb-ebpf").canonicalize()?;
        let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "lb-ebpf",
                root_dir: ebpf_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    // The outer copy: run the inner one (same environment) and sort its output.
    let out = Command::new(env::current_exe()?).env(INNER, "1").output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut so = std::io::stdout().lock();
    if !out.status.success() {
        so.write_all(&out.stdout)?;
        std::io::stderr().write_all(&out.stderr)?;
        return Ok(ExitCode::FAILURE);
    }
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            None => writeln!(so, "{line}")?,
            Some(w) if keep(w) => writeln!(so, "cargo:warning={w}")?,
            Some(_) => {}
        }
    }
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether a line the nested cargo printed is worth showing: not empty and
/// not one of cargo's progress lines (a verb right-aligned in 12 columns).
fn keep(line: &str) -> bool {
    const PROGRESS: &[&str] = &[
        "Compiling",
        "Checking",
        "Fresh",
        "Finished",
        "Downloading",
        "Downloaded",
        "Updating",
        "Locking",
        "Adding",
    ];
    let text = line.trim_start();
    if text.is_empty() {
        return false;
    }
    let indent = line.len() - text.len();
    !text
        .split_once(' ')
        .is_some_and(|(verb, _)| PROGRESS.contains(&verb) && indent + verb.len() == 12)
}
