//! The mutation engine behind the user-space fuzzers.
//!
//! In-process and deterministic: a run is fully described by its target,
//! its seed and its seed inputs (the files in `fuzz/corpus/<target>/`), so a
//! failure printed as "seed S, iteration N" replays exactly, and its input
//! is printed as hex besides. No coverage feedback: instead each harness
//! returns a small "behaviour" value (a response code, an error's field,
//! ...) and inputs that show a behaviour not seen before join the
//! in-memory corpus, so later mutations start from them.
//!
//! A harness is a plain `fn(&[u8]) -> Result<u64, String>`: `Ok(behaviour)`,
//! or `Err(why)` when the input broke the code's contract. A panic anywhere
//! on the calling thread (also inside a task of a current-thread tokio
//! runtime, which tokio itself would swallow) is caught and reported.

use std::{
    cell::RefCell,
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    sync::Once,
    time::{Duration, Instant},
};

use crate::rng::Rng;

/// What a harness says about one input.
pub type Outcome = Result<u64, String>;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// Runs one input through the real code path and checks its contract.
    pub check: fn(&[u8]) -> Outcome,
    /// Tokens worth inserting (keywords, header names, labels, numbers).
    pub dictionary: &'static [&'static [u8]],
    /// A structure-aware generator: a fresh, mostly well-formed input.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Inputs are cut to this length.
    pub max_len: usize,
}

/// How long a run lasts and where it starts.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Stop after this many iterations...
    pub iterations: Option<u64>,
    /// ...or after this long (whichever comes first; neither: 10 000).
    pub time: Option<Duration>,
    /// Seed inputs (usually [`load_dir`] of the target's corpus).
    pub seeds: Vec<Vec<u8>>,
    /// Stop after this many distinct failures.
    pub max_failures: usize,
    /// Print a progress line every 10 s.
    pub progress: bool,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            iterations: None,
            time: None,
            seeds: Vec::new(),
            max_failures: 10,
            progress: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Panic,
    Violation,
}

/// One input that panicked or broke the contract.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub kind: FailureKind,
    pub message: String,
    /// Seed of the run and the iteration (0-based) that made the input;
    /// `None` for a replayed file.
    pub seed: Option<u64>,
    pub iteration: Option<u64>,
    pub input: Vec<u8>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FailureKind::Panic => "panic",
            FailureKind::Violation => "contract violation",
        };
        write!(f, "{}: {what}: {}", self.target, self.message)?;
        if let (Some(seed), Some(it)) = (self.seed, self.iteration) {
            write!(
                f,
                "\n  seed {seed}, iteration {it} (replay: cargo xtask fuzz {} --seed {seed} --iterations {})",
                self.target,
                it + 1
            )?;
        }
        write!(
            f,
            "\n  input ({} bytes): {}",
            self.input.len(),
            hex(&self.input)
        )?;
        if let Ok(s) = std::str::from_utf8(&self.input) {
            write!(f, "\n  as text: {s:?}")?;
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub iterations: u64,
    pub elapsed: Duration,
    /// Seed inputs plus the inputs kept for new behaviour.
    pub corpus: usize,
    pub behaviours: usize,
    pub failures: Vec<Failure>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} inputs in {:.1?} ({:.0}/s), seed {}, corpus {}, behaviours {}, {} failures",
            self.target,
            self.iterations,
            self.elapsed,
            self.iterations as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.seed,
            self.corpus,
            self.behaviours,
            self.failures.len()
        )?;
        for x in &self.failures {
            write!(f, "\n{x}")?;
        }
        Ok(())
    }
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Parses [`hex`] output (whitespace ignored).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

/// `fuzz/corpus/<target>`: seed inputs, kept in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// `fuzz/regressions/<target>`: inputs that once failed, kept as tests.
pub fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target)
}

/// Every regular file in `dir` but dot files (sorted by name; a missing
/// directory is empty).
pub fn load_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            // `.gitkeep` and other dot files are not inputs.
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

thread_local! {
    /// Set while a harness runs on this thread: panics are recorded here
    /// instead of being printed.
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(list) => {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(std::string::ToString::to_string)
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string payload)".into());
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        list.push(format!("{msg}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs one input through `check`, catching panics. `Ok(behaviour)` or the
/// failure (without seed and iteration).
pub fn run_one(target: &Target, input: &[u8]) -> Result<u64, Failure> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.check)(input)));
    let panics = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let fail = |kind, message| Failure {
        target: target.name,
        kind,
        message,
        seed: None,
        iteration: None,
        input: input.to_vec(),
    };
    if !panics.is_empty() {
        // Also a panic inside a task that the runtime caught.
        return Err(fail(FailureKind::Panic, panics.join("; ")));
    }
    match r {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(why)) => Err(fail(FailureKind::Violation, why)),
        Err(_) => Err(fail(FailureKind::Panic, "panic".into())),
    }
}

/// Replays every file of `dirs` once; returns the failures.
pub fn replay(target: &Target, dirs: &[PathBuf]) -> (usize, Vec<(PathBuf, Failure)>) {
    let mut n = 0;
    let mut failures = Vec::new();
    for dir in dirs {
        for (path, input) in load_dir(dir) {
            n += 1;
            if let Err(f) = run_one(target, &input) {
                failures.push((path, f));
            }
        }
    }
    (n, failures)
}

/// Values that often sit on a boundary.
const INTERESTING: &[u8] = &[
    0, 1, 2, 0x0a, 0x0d, 0x20, 0x22, 0x27, 0x2e, 0x3f, 0x40, 0x5c, 0x7f, 0x80, 0xc0, 0xfe, 0xff,
];

/// Tokens every target may use.
const COMMON_TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"1e309",
    b"nan",
    b"\r\n",
    b"\n",
    b"\"",
    b"\\",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x92\xa9",
    b"\x00",
];

/// Keeps the in-memory corpus bounded.
const MAX_CORPUS: usize = 20_000;

struct Mutator<'a> {
    target: &'a Target,
}

impl Mutator<'_> {
    fn token(&self, rng: &mut Rng) -> &'static [u8] {
        if !self.target.dictionary.is_empty() && !rng.one_in(4) {
            rng.pick::<&[u8]>(self.target.dictionary)
        } else {
            rng.pick::<&[u8]>(COMMON_TOKENS)
        }
    }

    fn mutate(&self, rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let n = data.len();
        match rng.below(14) {
            // Flip one bit.
            0 if n > 0 => {
                let i = rng.below(n);
                data[i] ^= 1 << rng.below(8);
            }
            // A byte to a boundary value.
            1 if n > 0 => {
                let i = rng.below(n);
                data[i] = *rng.pick(INTERESTING);
            }
            // A byte to anything.
            2 if n > 0 => {
                let i = rng.below(n);
                data[i] = rng.byte();
            }
            // Add or subtract a little (lengths, counts, digits).
            3 if n > 0 => {
                let i = rng.below(n);
                let d = rng.below(33) as u8;
                data[i] = if rng.one_in(2) {
                    data[i].wrapping_add(d)
                } else {
                    data[i].wrapping_sub(d)
                };
            }
            // Insert random bytes.
            4 => {
                let at = rng.below(n + 1);
                let mut b = vec![0u8; 1 + rng.below(8)];
                rng.fill(&mut b);
                data.splice(at..at, b);
            }
            // Delete a range.
            5 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(16));
                data.drain(at..at + len);
            }
            // Duplicate a range somewhere (repeated headers, records, labels).
            6 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(64));
                let chunk = data[at..at + len].to_vec();
                let to = rng.below(n + 1);
                let times = if rng.one_in(8) { 1 + rng.below(16) } else { 1 };
                for _ in 0..times {
                    data.splice(to..to, chunk.iter().copied());
                }
            }
            // Overwrite with a token.
            7 if n > 0 => {
                let t = self.token(rng);
                let at = rng.below(n);
                let end = (at + t.len()).min(n);
                data.splice(at..end, t.iter().copied());
            }
            // Insert a token.
            8 => {
                let t = self.token(rng);
                let at = rng.below(n + 1);
                data.splice(at..at, t.iter().copied());
            }
            // Splice: our head, another entry's tail.
            9 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                let at = rng.below(n + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            // A range of another entry inserted.
            10 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let len = 1 + rng.below((other.len() - from).min(128));
                    let at = rng.below(n + 1);
                    data.splice(at..at, other[from..from + len].iter().copied());
                }
            }
            // Truncate.
            11 if n > 0 => data.truncate(rng.below(n)),
            // A big-endian 16-bit field set to a boundary (DNS counts and lengths).
            12 if n > 1 => {
                let i = rng.below(n - 1);
                let v: u16 = *rng.pick(&[0, 1, 2, 0x3f, 0x40, 0xff, 0x100, 0x7fff, 0x8000, 0xffff]);
                data[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            // Swap two bytes.
            13 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                data.swap(a, b);
            }
            _ => {
                let t = self.token(rng);
                data.extend_from_slice(t);
            }
        }
    }
}

/// Runs `target` until the iteration count or the time is used up, or
/// `max_failures` distinct failures were found.
pub fn run(target: &Target, opts: &Options) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let m = Mutator { target };
    let mut corpus: Vec<Vec<u8>> = opts
        .seeds
        .iter()
        .map(|s| s[..s.len().min(target.max_len)].to_vec())
        .collect();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut failure_keys: HashSet<String> = HashSet::new();
    let limit = match (opts.iterations, opts.time) {
        (None, None) => Some(10_000),
        (i, _) => i,
    };
    let mut last_progress = Instant::now();
    let mut it: u64 = 0;
    loop {
        if limit.is_some_and(|l| it >= l)
            || opts.time.is_some_and(|t| start.elapsed() >= t)
            || failures.len() >= opts.max_failures
        {
            break;
        }
        let mut input = if corpus.is_empty() || rng.one_in(8) {
            (target.generate)(&mut rng)
        } else {
            let mut d = rng.pick(&corpus).clone();
            let stack = 1 << rng.below(4);
            for _ in 0..stack {
                m.mutate(&mut rng, &mut d, &corpus);
            }
            d
        };
        input.truncate(target.max_len);
        match run_one(target, &input) {
            Ok(b) => {
                if seen.insert(b) {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    } else {
                        let i = rng.below(corpus.len());
                        corpus[i] = input;
                    }
                }
            }
            Err(mut f) => {
                f.seed = Some(opts.seed);
                f.iteration = Some(it);
                // One report per distinct message (a panic's location).
                let key = f.message.lines().next().unwrap_or("").to_string();
                if failure_keys.insert(key) {
                    if opts.progress {
                        eprintln!("{f}");
                    }
                    failures.push(f);
                }
            }
        }
        it += 1;
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "{}: {it} inputs, {:.0?}, corpus {}, behaviours {}, {} failures",
                target.name,
                start.elapsed(),
                corpus.len(),
                seen.len(),
                failures.len()
            );
        }
    }
    Report {
        target: target.name,
        seed: opts.seed,
        iterations: it,
        elapsed: start.elapsed(),
        corpus: corpus.len(),
        behaviours: seen.len(),
        failures,
    }
}

/// A cheap, stable 64-bit hash (FNV-1a) for behaviour values.
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boom(d: &[u8]) -> Outcome {
        assert!(d.first() != Some(&b'!'), "bang");
        if d.first() == Some(&b'?') {
            return Err("bad".into());
        }
        Ok(d.len() as u64 % 7)
    }

    fn gen(r: &mut Rng) -> Vec<u8> {
        let mut v = vec![0u8; r.below(4)];
        r.fill(&mut v);
        v
    }

    const T: Target = Target {
        name: "selftest",
        check: boom,
        dictionary: &[b"!", b"?"],
        generate: gen,
        max_len: 64,
    };

    #[test]
    fn finds_and_reports_panics_and_violations() {
        let mut o = Options::new(7);
        o.iterations = Some(5000);
        o.seeds = vec![b"abc".to_vec()];
        let r = run(&T, &o);
        assert!(r.failures.iter().any(|f| f.kind == FailureKind::Panic
            && f.message.contains("bang")
            && f.message.contains("engine.rs")));
        assert!(r
            .failures
            .iter()
            .any(|f| f.kind == FailureKind::Violation && f.message == "bad"));
        // The same seed gives the same run.
        let again = run(&T, &o);
        assert_eq!(
            r.failures.iter().map(|f| &f.input).collect::<Vec<_>>(),
            again.failures.iter().map(|f| &f.input).collect::<Vec<_>>()
        );
        let f = &r.failures[0];
        assert!(f.to_string().contains(&hex(&f.input)));
        assert_eq!(unhex(&hex(&f.input)).as_ref(), Some(&f.input));
    }
}
