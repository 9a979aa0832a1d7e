//! A bounded pass of the XDP fuzzer: a fixed seed and a fresh one (printed),
//! every frame checked against the data plane's invariants.

use lb_fuzz::{rng, xdp};

fn pass(seed: u64, packets: u64) {
    log(&format!(
        "xdp fuzz: seed {seed} (replay: cargo xtask fuzz xdp --seed {seed} --packets {packets})"
    ));
    let report = xdp::run(&xdp::Options { packets, seed }).expect("fuzz run");
    log(&report.to_string());
    assert!(
        report.violations.is_empty(),
        "invariant violations (replay with --seed {seed}):\n{report}"
    );
    // The pass reached every class of outcome, so the invariants were
    // exercised, not skipped.
    for o in xdp::model::Outcome::ALL {
        assert!(
            report.outcomes.get(&o).copied().unwrap_or(0) > 0,
            "no frame ended as {o:?}:\n{report}"
        );
    }
}

#[test]
fn xdp_fuzz_bounded() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the XDP fuzzer needs root (BPF_PROG_TEST_RUN); CI must run as root"
        );
        eprintln!("skipped: the XDP fuzzer needs root");
        return;
    }
    pass(20_261_202, 100_000);
    pass(rng::fresh_seed(), 100_000);
}

/// Writes to the test log even when the test passes (the test harness
/// captures `eprintln!` of passing tests; the seeds must stay visible).
fn log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
