//! `bench maglev`: time to build one ring of 65537 slots for 10, 100 and 1000
//! reals (median of repeated builds), next to a floor measured in the same
//! run: one pass that writes every slot (the least any table build costs).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use lb_userspace::maglev::{self, Backend};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct MaglevBenchArgs {
    /// Builds per real count (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Ring size (prime).
    #[arg(long, default_value_t = 65537)]
    pub ring_size: u32,
    /// Where to write maglev.md and maglev.json.
    #[arg(long, default_value = "bench/results")]
    pub out: std::path::PathBuf,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(args: &MaglevBenchArgs) -> Result<()> {
    let iters = args.iterations.max(1);
    let m = args.ring_size;
    let floor = median(
        (0..iters)
            .map(|i| {
                let t = Instant::now();
                let v: Vec<u32> = (0..m).map(|s| s ^ i as u32).collect();
                std::hint::black_box(v);
                t.elapsed()
            })
            .collect(),
    );
    let mut rows = Vec::new();
    let mut md = format!(
        "# Maglev ring build\n\nRing size {m}, median of {iters} builds. Floor: one pass writing every slot, same run.\n\n| reals | build | floor | ratio to floor | target |\n|---:|---:|---:|---:|---|\n"
    );
    for n in [10usize, 100, 1000] {
        let backends: Vec<Backend> = (0..n)
            .map(|i| Backend {
                id: format!("198.18.{}.{}:8080", i / 250, i % 250 + 1).into_bytes(),
                weight: 1,
            })
            .collect();
        let t = median(
            (0..iters)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(maglev::build(&backends, m));
                    t.elapsed()
                })
                .collect(),
        );
        let ratio = t.as_secs_f64() / floor.as_secs_f64().max(1e-9);
        let target = if n == 1000 {
            if t < Duration::from_millis(1) {
                "under 1 ms: met"
            } else {
                "under 1 ms: NOT met"
            }
        } else {
            ""
        };
        println!("maglev {n:>5} reals: {t:>10.3?} per build, {ratio:.1}× the floor ({floor:.3?}) {target}");
        md.push_str(&format!(
            "| {n} | {:.3} ms | {:.3} ms | {ratio:.1} | {target} |\n",
            t.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3
        ));
        rows.push(json!({"reals": n, "build_ns": t.as_nanos() as u64, "floor_ns": floor.as_nanos() as u64, "ratio": ratio}));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("maglev.md"), md)?;
    std::fs::write(
        args.out.join("maglev.json"),
        serde_json::to_string_pretty(
            &json!({"ring_size": m, "iterations": iters, "results": rows}),
        )?,
    )?;
    Ok(())
}
