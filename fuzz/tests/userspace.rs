//! Bounded runs of the user-space fuzzers (part of `cargo xtask test`):
//! every corpus and regression file replayed, then a fixed-seed run and a
//! run with a fresh seed (printed, so a failure replays with
//! `cargo xtask fuzz TARGET --seed S`). Any panic or contract violation
//! fails the test with the input as hex.

use lb_fuzz::engine::{self, corpus_dir, regressions_dir, Options, Target};

/// Inputs per run; two runs per target.
fn budget(t: &Target) -> u64 {
    match t.name {
        // Each input is a whole connection through the proxy.
        "http" => 3000,
        // Each zone that loads is queried a hundred times.
        "zone" => 4000,
        "config" => 8000,
        _ => 20000,
    }
}

fn fuzz(name: &str) {
    let t = lb_fuzz::target(name).expect("target");
    let dirs = [corpus_dir(name), regressions_dir(name)];
    let (n, failures) = engine::replay(t, &dirs);
    assert!(n > 0, "no corpus files for {name} in {}", dirs[0].display());
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .map(|(p, f)| format!("{}:\n{f}", p.display()))
            .collect();
        panic!(
            "{} corpus/regression inputs failed:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
    let seeds: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|d| engine::load_dir(d))
        .map(|(_, b)| b)
        .collect();
    let fresh = lb_fuzz::rng::fresh_seed();
    log(&format!("{name}: fixed seed 1, fresh seed {fresh}"));
    for seed in [1, fresh] {
        let mut o = Options::new(seed);
        o.iterations = Some(budget(t));
        o.seeds.clone_from(&seeds);
        o.max_failures = 3;
        let r = engine::run(t, &o);
        log(&r.to_string());
        assert!(r.failures.is_empty(), "{r}");
    }
}

#[test]
fn dns_query_path() {
    fuzz("dns");
}

#[test]
fn zone_loading() {
    fuzz("zone");
}

#[test]
fn http_request_head() {
    fuzz("http");
}

#[test]
fn config_loader() {
    fuzz("config");
}

/// Writes to the test log even when the test passes (the test harness
/// captures `eprintln!` of passing tests; the seeds must stay visible).
fn log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
