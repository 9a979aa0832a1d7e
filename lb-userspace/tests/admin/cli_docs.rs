//! `lb completions` and `lb man`: generated from the same clap definitions
//! as `--help`, checked by the tools that read them (bash's own completion
//! machinery, groff).

use std::process::Command;

use super::LB;

/// Every top-level command an operator can type.
const COMMANDS: &[&str] = &[
    "check",
    "run",
    "cleanup",
    "status",
    "vip",
    "real",
    "stats",
    "conns",
    "health",
    "reload",
    "cert",
    "completions",
    "man",
];

fn lb(args: &[&str]) -> String {
    let out = Command::new(LB).args(args).output().expect("run lb");
    assert!(
        out.status.success(),
        "lb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Asks bash to complete `words` (the last one partial) with the script
/// `lb completions bash` printed, and returns the candidates.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _lb lb '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lb.bash");
    std::fs::write(&script, lb(&["completions", "bash"])).unwrap();

    let top = bash_complete(&script, &["lb", ""]);
    for c in COMMANDS {
        assert!(top.iter().any(|t| t == c), "`lb <TAB>` lacks {c}: {top:?}");
    }
    assert_eq!(bash_complete(&script, &["lb", "rel"]), ["reload"]);
    let vip = bash_complete(&script, &["lb", "vip", ""]);
    for c in ["list", "add", "del"] {
        assert!(
            vip.iter().any(|t| t == c),
            "`lb vip <TAB>` lacks {c}: {vip:?}"
        );
    }
    let run = bash_complete(&script, &["lb", "run", "--con"]);
    assert!(
        run.iter().any(|t| t == "--conntrack-size") && run.iter().any(|t| t == "--config"),
        "`lb run --con<TAB>`: {run:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    let zsh = lb(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef lb"),
        "{}",
        &zsh[..zsh.len().min(80)]
    );
    let fish = lb(&["completions", "fish"]);
    for c in COMMANDS {
        assert!(zsh.contains(&format!("'{c}:")), "zsh script lacks {c}");
        assert!(
            fish.contains(&format!("-a \"{c}\"")),
            "fish script lacks {c}"
        );
    }
    let out = Command::new(LB)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

/// Terminal output without groff's overstrike (bold `N\x08N`, underline `_\x08x`).
fn plain(s: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_pages_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    lb(&["man", "--out", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for c in COMMANDS {
        let page = format!("lb-{c}.1");
        assert!(pages.contains(&page), "{page} missing from {pages:?}");
    }
    assert!(pages.contains(&"lb.1".to_string()));
    for p in &pages {
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww"]) // -k: UTF-8 input, as man(1) feeds it
            .arg(dir.path().join(p))
            .output()
            .expect("groff (Debian groff-base; cargo xtask setup installs it)");
        assert!(out.status.success(), "{p}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{p}: {warnings}");
        let text = plain(&String::from_utf8_lossy(&out.stdout));
        assert!(text.contains("NAME"), "{p} has no NAME section");
        if p == "lb-run.1" {
            assert!(
                text.contains("conntrack-size"),
                "lb-run.1 lacks its options"
            );
        }
    }
    // Without --out, the top page goes to stdout.
    assert!(lb(&["man"]).contains(".TH lb 1"));
}
