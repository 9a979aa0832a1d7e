//! `bench maglev`: time to build one ring of 65537 slots for 10, 100 and 1000
//! reals of equal weight, and for two weighted sets of 1000 (median of
//! repeated builds), next to a floor measured in the same run: one pass that
//! writes every slot (the least any table build costs).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use lb_userspace::l4::maglev::{self, Backend};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub(crate) struct MaglevBenchArgs {
    /// Builds per real count (the median is reported).
    #[arg(long, default_value_t = 200)]
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

/// The real sets measured: equal weights (the target), then two weighted
/// sets for reference.
fn sets() -> Vec<(String, Vec<Backend>)> {
    let reals = |n: usize, weight: &dyn Fn(usize) -> u32| -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                id: format!("198.18.{}.{}:8080", i / 250, i % 250 + 1).into_bytes(),
                weight: weight(i),
            })
            .collect()
    };
    let mut v: Vec<(String, Vec<Backend>)> = [10usize, 100, 1000]
        .iter()
        .map(|&n| (format!("{n} reals"), reals(n, &|_| 1)))
        .collect();
    v.push((
        "1000 reals, weights 1–100".into(),
        reals(1000, &|i| (i as u32 * 37) % 100 + 1),
    ));
    v.push((
        "1000 reals, one of weight 65535, the rest 1".into(),
        reals(1000, &|i| if i == 3 { 65535 } else { 1 }),
    ));
    v
}

pub(crate) fn run(args: &MaglevBenchArgs) -> Result<()> {
    let iters = args.iterations.max(1);
    let m = args.ring_size;
    let sets = sets();
    // Interleaved: each iteration times the floor and every set once, so
    // that a slower stretch of the machine weighs on all of them alike.
    let mut floor_t = Vec::with_capacity(iters);
    let mut set_t: Vec<Vec<Duration>> = vec![Vec::with_capacity(iters); sets.len()];
    for i in 0..iters {
        let t = Instant::now();
        let v: Vec<u32> = (0..m).map(|s| s ^ i as u32).collect();
        std::hint::black_box(v);
        floor_t.push(t.elapsed());
        for (j, (_, backends)) in sets.iter().enumerate() {
            let t = Instant::now();
            std::hint::black_box(maglev::build(backends, m));
            set_t[j].push(t.elapsed());
        }
    }
    let floor = median(floor_t);
    let mut rows = Vec::new();
    let mut md = format!(
        "# Maglev ring build\n\nRing size {m}, median of {iters} builds per set, interleaved with the floor in the same run. Floor: one pass writing every slot.\n\n| set | build | floor | ratio to floor | target |\n|---|---:|---:|---:|---|\n"
    );
    for ((name, _), times) in sets.iter().zip(set_t) {
        let t = median(times);
        let ratio = t.as_secs_f64() / floor.as_secs_f64().max(1e-9);
        let target = match name.as_str() {
            "1000 reals" if t < Duration::from_millis(1) => "under 1 ms: met",
            "1000 reals" => "under 1 ms: NOT met",
            _ => "",
        };
        println!(
            "maglev {name:>44}: {t:>10.3?} per build, {ratio:.1}× the floor ({floor:.3?}) {target}"
        );
        md.push_str(&format!(
            "| {name} | {:.3} ms | {:.3} ms | {ratio:.1} | {target} |\n",
            t.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3
        ));
        rows.push(json!({"reals": name, "build_ns": t.as_nanos() as u64, "floor_ns": floor.as_nanos() as u64, "ratio": ratio}));
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
