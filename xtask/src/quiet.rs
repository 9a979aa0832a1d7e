//! Quiet output for the xtask commands: one `==> stage` line per step,
//! cargo's progress lines (`Compiling ...`, `Finished ...`) left out, and
//! everything else (warnings, errors, test output) passed through as it
//! comes. `cargo xtask -v ...` shows every line and every command.

use std::{
    io::{BufRead, BufReader, IsTerminal, Write},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};

static VERBOSE: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub(crate) fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Prints a stage line.
pub(crate) fn stage(what: &str) {
    eprintln!("==> {what}");
}

/// Prints the command about to run, in verbose mode.
pub(crate) fn show(cmd: &Command) {
    if verbose() {
        eprintln!("+ {cmd:?}");
    }
}

/// Cargo's progress verbs (cargo prints them right-aligned in 12 columns).
const PROGRESS: &[&str] = &[
    "Adding",
    "Checking",
    "Compiling",
    "Documenting",
    "Downloaded",
    "Downloading",
    "Finished",
    "Fresh",
    "Installed",
    "Installing",
    "Locking",
    "Removing",
    "Replaced",
    "Replacing",
    "Running",
    "Updating",
];

/// `line` without ANSI escape sequences (CSI and two-byte ones).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// A cargo progress line as (verb, rest), e.g. ("Compiling", "libc v0.2").
fn progress(line: &str) -> Option<(String, String)> {
    let plain = strip_ansi(line);
    let text = plain.trim_start();
    let indent = plain.len() - text.len();
    let (verb, rest) = text.split_once(' ')?;
    (PROGRESS.contains(&verb) && indent + verb.len() == 12)
        .then(|| (verb.to_string(), rest.to_string()))
}

/// How one cargo invocation is shown.
#[derive(Default)]
pub(crate) struct Quiet<'a> {
    /// Progress verbs still shown (e.g. `Running` between test binaries).
    pub(crate) keep: &'a [&'a str],
    /// (verb, start of the rest, stage line): the stage line is printed
    /// the first time such a progress line comes.
    pub(crate) stages: &'a [(&'a str, &'a str, &'a str)],
}

/// Runs a cargo command quietly (see the module docs); stdout goes to
/// `on_stdout` line by line if given, else to ours. Fails when cargo does.
pub(crate) fn cargo(
    cmd: &mut Command,
    opts: &Quiet<'_>,
    on_stdout: Option<&mut dyn FnMut(&str)>,
) -> Result<()> {
    show(cmd);
    if verbose() {
        let status = run_plain(cmd, on_stdout)?;
        return finish(cmd, status);
    }
    let tty = std::io::stderr().is_terminal();
    if tty {
        // Piped, cargo would drop its colours.
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    cmd.stderr(Stdio::piped());
    if on_stdout.is_some() {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let stages: Vec<(String, String, String)> = opts
        .stages
        .iter()
        .map(|(v, p, l)| ((*v).to_string(), (*p).to_string(), (*l).to_string()))
        .collect();
    let keep: Vec<String> = opts.keep.iter().map(|k| (*k).to_string()).collect();
    let filter = std::thread::spawn(move || filter_stderr(stderr, tty, &stages, &keep));
    if let (Some(f), Some(out)) = (on_stdout, child.stdout.take()) {
        for line in BufReader::new(out).lines() {
            f(&line.context("reading cargo's stdout")?);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let _ = filter.join();
    finish(cmd, status)
}

fn finish(cmd: &Command, status: std::process::ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("{cmd:?} failed ({status}); `cargo xtask -v ...` shows cargo's progress lines too");
    }
    Ok(())
}

fn run_plain(
    cmd: &mut Command,
    on_stdout: Option<&mut dyn FnMut(&str)>,
) -> Result<std::process::ExitStatus> {
    let Some(f) = on_stdout else {
        return cmd.status().with_context(|| format!("running {cmd:?}"));
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            f(&line.context("reading cargo's stdout")?);
        }
    }
    child.wait().with_context(|| format!("waiting for {cmd:?}"))
}

/// Forwards cargo's stderr without its progress lines. While crates
/// compile, a terminal shows a counter redrawn in place; a log gets a line
/// every 50 crates, so a long step shows it is alive.
fn filter_stderr(
    stderr: std::process::ChildStderr,
    tty: bool,
    stages: &[(String, String, String)],
    keep: &[String],
) {
    let mut seen = vec![false; stages.len()];
    let mut compiled = 0u32;
    let mut counter_shown = false;
    let start = Instant::now();
    let err = std::io::stderr();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let mut out = err.lock();
        let clear = |out: &mut std::io::StderrLock<'_>, shown: &mut bool| {
            if *shown {
                let _ = write!(out, "\r\x1b[K");
                *shown = false;
            }
        };
        if let Some((verb, rest)) = progress(&line) {
            for (i, (v, prefix, text)) in stages.iter().enumerate() {
                if !seen[i] && *v == verb && rest.starts_with(prefix.as_str()) {
                    seen[i] = true;
                    clear(&mut out, &mut counter_shown);
                    let _ = writeln!(out, "==> {text}");
                }
            }
            if keep.contains(&verb) {
                clear(&mut out, &mut counter_shown);
                let _ = writeln!(out, "{line}");
            } else if verb == "Compiling" {
                compiled += 1;
                let name = rest.split(' ').next().unwrap_or("");
                if tty {
                    let _ = write!(
                        out,
                        "\r\x1b[K    {compiled} crates compiled, {}s: {name}",
                        start.elapsed().as_secs()
                    );
                    counter_shown = true;
                } else if compiled.is_multiple_of(50) {
                    let _ = writeln!(
                        out,
                        "    ... {compiled} crates compiled, {}s",
                        start.elapsed().as_secs()
                    );
                }
            }
        } else {
            clear(&mut out, &mut counter_shown);
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
    if counter_shown {
        let _ = write!(err.lock(), "\r\x1b[K");
    }
}

/// Runs a command that is not cargo with its output held back: nothing on
/// success (unless verbose), everything it printed when it fails.
pub(crate) fn captured(cmd: &mut Command) -> Result<()> {
    show(cmd);
    if verbose() {
        let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        if !st.success() {
            bail!("{cmd:?} failed ({st})");
        }
        return Ok(());
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&out.stdout);
        let _ = err.write_all(&out.stderr);
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_recognised() {
        assert_eq!(
            progress("   Compiling libc v0.2.191"),
            Some(("Compiling".into(), "libc v0.2.191".into()))
        );
        assert!(progress("    Finished `release` profile [optimized] target(s) in 5s").is_some());
        assert!(progress("\x1b[1m\x1b[32m   Compiling\x1b[0m libc v0.2").is_some());
        assert!(progress("     Running unittests src/lib.rs").is_some());
        // Not progress: warnings, errors, test output, other indents.
        assert!(progress("warning: unused import: `Update`").is_none());
        assert!(progress("error[E0425]: cannot find value").is_none());
        assert!(progress("Compiling libc").is_none());
        assert!(progress("test result: ok. 1 passed").is_none());
        assert!(progress("     Blocking waiting for file lock").is_none());
    }
}
