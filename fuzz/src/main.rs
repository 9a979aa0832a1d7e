//! `lb-fuzz TARGET [options]`: run one fuzzer (`cargo xtask fuzz TARGET`).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lb_fuzz::engine;

#[derive(Parser)]
#[command(name = "lb-fuzz", about = "Fuzzers for lb")]
struct Cli {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// The XDP program: generated and mutated frames through
    /// BPF_PROG_TEST_RUN, each checked against the data plane's invariants
    /// (needs root).
    Xdp {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Seed of the run (printed; a failure replays with the same seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The DNS query path: wire bytes in, a response, FORMERR or nothing out.
    Dns(RunArgs),
    /// Zone file loading, then queries against the zone that loaded.
    Zone(RunArgs),
    /// The HTTP/1 request head through a real [[l7]] listener (in memory).
    Http(RunArgs),
    /// The config loader: TOML in, a config or errors naming a field out.
    Config(RunArgs),
}

/// Options of the user-space fuzzers. Without --time or --iterations: 10000
/// inputs.
#[derive(Args)]
struct RunArgs {
    /// Run this long: 30s, 10m, 1h.
    #[arg(long, value_parser = parse_time)]
    time: Option<Duration>,
    /// Run this many inputs (with --time: whichever ends first).
    #[arg(long)]
    iterations: Option<u64>,
    /// Seed of the run (printed; a failure replays with the same seed and
    /// --iterations up to its iteration).
    #[arg(long)]
    seed: Option<u64>,
    /// Only run these files (or hex strings with --hex) once each, e.g. a
    /// crash reproducer.
    #[arg(long)]
    input: Vec<String>,
    /// --input values are hex strings, as a failure report prints them.
    #[arg(long)]
    hex: bool,
    /// Start from an empty corpus instead of fuzz/corpus/TARGET.
    #[arg(long)]
    no_corpus: bool,
}

fn parse_time(s: &str) -> Result<Duration, String> {
    lb_userspace::config::parse_duration(s)
}

/// Where a run writes the inputs that failed.
fn artifacts(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lb-fuzz")
        .join(target)
}

fn run_userspace(name: &str, a: RunArgs) -> Result<()> {
    let target = lb_fuzz::target(name).context("unknown target")?;
    if !a.input.is_empty() {
        let mut failed = 0;
        for i in &a.input {
            let data = if a.hex {
                engine::unhex(i).with_context(|| format!("`{i}` is not hex"))?
            } else {
                std::fs::read(i).with_context(|| format!("reading {i}"))?
            };
            match engine::run_one(target, &data) {
                Ok(_) => println!("{name}: {i}: ok"),
                Err(f) => {
                    failed += 1;
                    println!("{f}");
                }
            }
        }
        if failed > 0 {
            bail!("{failed} of {} inputs failed", a.input.len());
        }
        return Ok(());
    }
    let seed = a.seed.unwrap_or_else(lb_fuzz::rng::fresh_seed);
    let mut opts = engine::Options::new(seed);
    opts.iterations = a.iterations;
    opts.time = a.time;
    opts.progress = true;
    if !a.no_corpus {
        for dir in [engine::corpus_dir(name), engine::regressions_dir(name)] {
            opts.seeds
                .extend(engine::load_dir(&dir).into_iter().map(|(_, b)| b));
        }
    }
    println!(
        "{name}: seed {seed}, {} seed inputs, {}",
        opts.seeds.len(),
        match (a.time, a.iterations) {
            (Some(t), Some(i)) => format!("{t:?} or {i} inputs"),
            (Some(t), None) => format!("{t:?}"),
            (None, Some(i)) => format!("{i} inputs"),
            (None, None) => "10000 inputs".into(),
        }
    );
    let report = engine::run(target, &opts);
    println!("{report}");
    if report.failures.is_empty() {
        return Ok(());
    }
    let dir = artifacts(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in &report.failures {
        let path = dir.join(format!(
            "crash-{}-{}",
            f.seed.unwrap_or(0),
            f.iteration.unwrap_or(0)
        ));
        std::fs::write(&path, &f.input).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} (once fixed, keep it in fuzz/regressions/{name}/)",
            path.display()
        );
    }
    bail!("{}: {} failures", name, report.failures.len())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.target {
        Target::Xdp { packets, seed } => {
            let seed = seed.unwrap_or_else(lb_fuzz::rng::fresh_seed);
            let report = lb_fuzz::xdp::run(&lb_fuzz::xdp::Options { packets, seed })?;
            println!("{report}");
            if !report.violations.is_empty() {
                bail!("{} invariant violations", report.violations.len());
            }
            Ok(())
        }
        Target::Dns(a) => run_userspace("dns", a),
        Target::Zone(a) => run_userspace("zone", a),
        Target::Http(a) => run_userspace("http", a),
        Target::Config(a) => run_userspace("config", a),
    }
}
