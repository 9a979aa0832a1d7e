//! Developer and operator commands: `cargo xtask setup|build|package|run|test|bench|fuzz`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod quiet;

use quiet::{stage, Quiet};

/// Each command prints one `==> ...` line per stage; cargo's progress
/// lines are left out (warnings, errors and test output still show).
#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    /// Show every line cargo and the other tools print, and each command.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (idempotent; quick when all is there).
    Setup,
    /// Build the `lb` binary (release) with the XDP object embedded.
    Build,
    /// Build a Debian package of `lb` (release, production features):
    /// target/debian/lb_VERSION_ARCH.deb.
    Package {
        /// Package this `lb` binary instead of building one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Output directory (default: target/debian under the cargo target directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// dpkg-deb compression: xz, zstd, gzip or none.
        #[arg(long, default_value = "xz")]
        compression: String,
    },
    /// Run lb: on a real interface with --iface, else the built-in netns demo.
    Run {
        #[arg(long)]
        iface: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Requests per address family in the demo.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Set up, build, and run every test (unit, fixtures, netns end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: xdp, fwd, maglev, l7, dns.
    Bench {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A long fuzz run: `fuzz dns|zone|http|config|xdp --time 10m [--seed S]`.
    Fuzz {
        target: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the build, tests, demo and benchmarks use.
const PACKAGES: &[(&str, &str)] = &[
    // (package, a file it installs, to check presence cheaply)
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    ("libzstd-dev", "/usr/include/zstd.h"),
    ("zlib1g-dev", "/usr/include/zlib.h"),
    ("iproute2", "/usr/sbin/ip"),
    ("nftables", "/usr/sbin/nft"),
    ("ethtool", "/usr/sbin/ethtool"),
    ("curl", "/usr/bin/curl"),
    ("dnsutils", "/usr/bin/dig"),
    ("openssl", "/usr/bin/openssl"),
    ("nsd", "/usr/sbin/nsd"),
    ("knot", "/usr/sbin/knotd"),
    ("nginx", "/usr/sbin/nginx"),
    ("wrk", "/usr/bin/wrk"),
    ("nghttp2-client", "/usr/bin/h2load"),
    ("dnsperf", "/usr/bin/dnsperf"),
    ("tcpdump", "/usr/bin/tcpdump"),
    ("iputils-ping", "/usr/bin/ping"),
    ("groff-base", "/usr/bin/groff"),
    ("chromium", "/usr/bin/chromium"), // headless, for the dashboard test
    // `cargo xtask package` and its test: dpkg-shlibdeps, strip, and
    // systemd-analyze for the unit.
    ("dpkg-dev", "/usr/bin/dpkg-shlibdeps"),
    ("binutils", "/usr/bin/strip"),
    ("systemd", "/usr/bin/systemd-analyze"),
    // promtool, for the alert rules in deploy/ (its service is stopped below).
    ("prometheus", "/usr/bin/promtool"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn sh(cmd: &mut Command) -> Result<()> {
    quiet::show(cmd);
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "setup needs root to install Debian packages: {}",
                missing.join(" ")
            );
        }
        stage(&format!(
            "setup: installing Debian packages (apt-get, a minute or more): {}",
            missing.join(" ")
        ));
        quiet::captured(Command::new("apt-get").arg("update").arg("-q"))?;
        quiet::captured(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        // Packaged daemons must not hold the ports the tests and benches use.
        for svc in ["nginx", "nsd", "knot", "prometheus"] {
            let _ = Command::new("systemctl").args(["stop", svc]).output();
            let _ = Command::new("systemctl").args(["disable", svc]).output();
        }
    }
    let has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"));
    if !has_src {
        stage("setup: installing rust-src for the nightly toolchain");
        quiet::captured(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("0.13"));
    if !linker_ok {
        stage("setup: building bpf-linker 0.13 against LLVM 22 (cargo install; takes several minutes)");
        quiet::cargo(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    "^0.13",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
            &Quiet::default(),
            None,
        )?;
    }
    // bpffs, for pinned maps.
    if is_root() && !ok(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .output();
    }
    stage("setup: ok");
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds `lb` (release) and returns the path cargo built it at (which
/// follows `CARGO_TARGET_DIR` and cargo's config, not always `target/`).
/// `production`: without the default features (no demo, no testbed).
fn build(production: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "lb",
        "--message-format=json-render-diagnostics",
    ]);
    if production {
        cmd.arg("--no-default-features");
    }
    stage(&format!(
        "building lb (release{}; a first build takes several minutes)",
        if production {
            ", production features"
        } else {
            ""
        }
    ));
    let mut exe = None;
    quiet::cargo(
        &mut cmd,
        &Quiet {
            stages: &[(
                "Compiling",
                "lb-userspace ",
                "building eBPF (lb-ebpf: release, nightly, bpfel-unknown-none) in lb-userspace's build script",
            )],
            ..Quiet::default()
        },
        Some(&mut |line: &str| {
            let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
                return;
            };
            if m["reason"] == "build-script-executed"
                && m["package_id"]
                    .as_str()
                    .is_some_and(|p| p.contains("/lb-userspace#"))
            {
                stage("building lb");
            }
            if m["reason"] == "compiler-artifact" && m["target"]["name"] == "lb" {
                if let Some(p) = m["executable"].as_str() {
                    exe = Some(PathBuf::from(p));
                }
            }
        }),
    )?;
    exe.context("cargo built no `lb` executable")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    quiet::set_verbose(cli.verbose);
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => build(false).map(|p| stage(&format!("built {}", p.display()))),
        Cmd::Package {
            binary,
            out,
            compression,
        } => {
            let (binary, target) = if let Some(b) = binary {
                let t = std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(|| root().join("target"), PathBuf::from);
                (b, t)
            } else {
                // target/release/lb: its target directory is two up.
                let b = build(true)?;
                let t = b.ancestors().nth(2).context("lb's target directory")?;
                (b.clone(), t.to_path_buf())
            };
            let out_dir = out.unwrap_or_else(|| target.join("debian"));
            let deb = xtask::package::build_deb(&xtask::package::Options {
                binary,
                root: root(),
                out_dir,
                compression,
            })?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Run {
            iface,
            config,
            requests,
        } => {
            setup()?;
            let lb = build(false)?;
            if iface.is_empty() {
                if config.is_some() {
                    bail!("--config needs --iface (the demo writes its own config)");
                }
                stage(&format!("running the demo: lb demo --requests {requests}"));
                sh(Command::new(lb).args(["demo", "--requests", &requests.to_string()]))
            } else {
                let config = config.unwrap_or_else(|| root().join("examples/lb.toml"));
                let mut c = Command::new(lb);
                c.arg("run").arg("--config").arg(config);
                for i in iface {
                    c.args(["--iface", &i]);
                }
                stage(&format!("running {c:?}"));
                sh(&mut c)
            }
        }
        Cmd::Test { args } => {
            setup()?;
            // lb-ebpf is not a default member (its programs build for BPF
            // only): its library half's unit tests run on the host here.
            // Extra arguments select among the workspace's own tests.
            let tests = Quiet {
                keep: &["Running"],
                ..Quiet::default()
            };
            if args.is_empty() {
                stage("lb-ebpf's unit tests, on the host");
                quiet::cargo(
                    cargo().args(["test", "-p", "lb-ebpf", "--lib"]),
                    &tests,
                    None,
                )?;
            }
            stage("building the tests (the eBPF objects too, in lb-userspace's build script)");
            quiet::cargo(
                cargo().args(["test", "--all-targets"]).args(&args),
                &Quiet {
                    stages: &[("Running", "", "running tests")],
                    ..tests
                },
                None,
            )?;
            stage("tests: ok");
            Ok(())
        }
        Cmd::Bench { args } => {
            setup()?;
            stage("building and running bench (release; a first build takes minutes, a full run longer)");
            quiet::cargo(
                cargo()
                    .args(["run", "--release", "-p", "bench", "--"])
                    .args(&args),
                &Quiet::default(),
                None,
            )
        }
        Cmd::Fuzz { target, args } => {
            setup()?;
            stage(&format!(
                "building and running the {target} fuzzer (release)"
            ));
            quiet::cargo(
                cargo()
                    .args(["run", "--release", "-p", "lb-fuzz", "--"])
                    .arg(&target)
                    .args(&args),
                &Quiet::default(),
                None,
            )
        }
    }
}
