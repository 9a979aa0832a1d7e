//! `cargo xtask package` and the systemd unit it ships. The package is
//! built by the same library function the xtask runs, from the debug `lb`
//! this harness has (a release build would take minutes), and read back
//! with `dpkg-deb`: every file, its owner and mode, the control fields,
//! the conffile. The unit goes through `systemd-analyze verify` and
//! `systemd-analyze security --offline`.
//!
//! `systemd-analyze verify` needs no running systemd (this container's
//! PID 1 is not systemd), but it checks that every `ExecStart=` binary
//! exists and that each `Documentation=man:` page is found by `man`, and it
//! exits 0 on a value it cannot parse (it only logs "ignoring"). So the
//! test verifies a copy of the unit whose `/usr/bin/lb` is the binary
//! extracted from the package, with `MANPATH` set to the package's man
//! pages, and fails on any line it prints. Capability names are not
//! checked by systemd at all (an unknown one is dropped silently), so the
//! test compares them with the list the unit documents.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use xtask::package::{build_deb, Options, CONFFILE};

use super::LB;

/// The capabilities the unit grants (see the comment in deploy/lb.service).
pub(crate) const UNIT_CAPS: &[&str] = &[
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
];

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// True when `tool` runs; without it the test fails under CI and is
/// skipped (with a reason) otherwise.
fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (Debian package {package}; `cargo xtask setup` installs it)"
        );
        eprintln!("skipped: {tool} is missing (Debian package {package})");
    }
    ok
}

/// Builds the package into `dir` and returns its path.
fn package(dir: &Path) -> PathBuf {
    build_deb(&Options {
        binary: PathBuf::from(LB),
        root: root(),
        out_dir: dir.to_path_buf(),
        compression: "zstd".into(),
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `dpkg-deb -c`: path → (mode string, owner/group).
fn listing(deb: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 6, "odd dpkg-deb -c line: {l}");
            let path = f[5].trim_start_matches('.').trim_end_matches('/');
            (path.to_string(), (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

#[test]
fn deb_has_every_file_with_its_mode() {
    if !have("dpkg-deb", "dpkg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = package(dir.path());
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("lb_{version}_{}.deb", arch.trim())
    );

    let files = listing(&deb);
    let man = tempfile::tempdir().unwrap();
    run(Command::new(LB).arg("man").arg("--out").arg(man.path()));
    let mut want: Vec<(String, &str)> = [
        ("/usr/bin/lb", "-rwxr-xr-x"),
        ("/lib/systemd/system/lb.service", "-rw-r--r--"),
        ("/etc/lb/lb.toml", "-rw-r--r--"),
        ("/usr/share/bash-completion/completions/lb", "-rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_lb", "-rw-r--r--"),
        ("/usr/share/fish/vendor_completions.d/lb.fish", "-rw-r--r--"),
        ("/usr/share/doc/lb/copyright", "-rw-r--r--"),
        ("/usr/share/lb/grafana-lb.json", "-rw-r--r--"),
        ("/usr/share/lb/alerts.yml", "-rw-r--r--"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    let mut pages = 0;
    for e in std::fs::read_dir(man.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        want.push((format!("/usr/share/man/man1/{name}.gz"), "-rw-r--r--"));
        pages += 1;
    }
    assert!(pages > 10, "lb man wrote {pages} pages");
    for (path, mode) in &want {
        let Some((m, owner)) = files.get(path) else {
            panic!("{} lacks {path}; it has:\n{files:#?}", deb.display());
        };
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    for p in [
        "/usr/share/man/man1/lb.1.gz",
        "/usr/share/man/man1/lb-run.1.gz",
    ] {
        assert!(files.contains_key(p), "{p} missing");
    }
    // Nothing else than those files and their directories.
    for (path, (m, _)) in &files {
        assert!(
            m.starts_with('d') || want.iter().any(|(p, _)| p == path),
            "unexpected file {path} in the package"
        );
    }

    // Control fields and the conffile.
    let field = |name: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "lb");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    assert!(
        depends
            .split(',')
            .any(|d| d.trim().starts_with("libc6 (>= ")),
        "Depends: {depends}"
    );
    assert!(!field("Description").is_empty());
    let installed: u64 = field("Installed-Size").parse().expect("a number");
    assert!(installed > 1000, "Installed-Size: {installed} KiB");
    let ctrl = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        format!("{CONFFILE}\n")
    );

    // What the files hold: the example config, the unit, scripts the
    // binary prints, man pages that decompress, a binary that runs.
    let tree = dir.path().join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    for (src, dst) in [
        ("examples/lb.toml", "etc/lb/lb.toml"),
        ("deploy/lb.service", "lib/systemd/system/lb.service"),
        ("deploy/grafana-lb.json", "usr/share/lb/grafana-lb.json"),
        ("deploy/alerts.yml", "usr/share/lb/alerts.yml"),
    ] {
        assert_eq!(
            std::fs::read(root().join(src)).unwrap(),
            std::fs::read(tree.join(dst)).unwrap(),
            "{dst} is not {src}"
        );
    }
    for (shell, dst) in [
        ("bash", "usr/share/bash-completion/completions/lb"),
        ("zsh", "usr/share/zsh/vendor-completions/_lb"),
        ("fish", "usr/share/fish/vendor_completions.d/lb.fish"),
    ] {
        assert_eq!(
            run(Command::new(LB).args(["completions", shell])),
            std::fs::read_to_string(tree.join(dst)).unwrap(),
            "{dst}"
        );
    }
    let page = run(Command::new("gzip")
        .args(["-dc"])
        .arg(tree.join("usr/share/man/man1/lb-run.1.gz")));
    assert!(page.contains("conntrack"), "lb-run.1 lacks its options");
    assert_eq!(
        run(Command::new(tree.join("usr/bin/lb")).arg("--version")).trim(),
        format!("lb {version}")
    );
}

#[test]
fn unit_passes_systemd_analyze() {
    if !have("dpkg-deb", "dpkg") || !have("systemd-analyze", "systemd") {
        return;
    }
    let unit_text = std::fs::read_to_string(root().join("deploy/lb.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit_text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    // What the brief of the unit promises, key by key.
    assert_eq!(
        values("ExecStart"),
        ["/usr/bin/lb run --config /etc/lb/lb.toml"]
    );
    assert_eq!(values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("LimitMEMLOCK", "infinity"),
        ("RuntimeDirectory", "lb"),
        ("StateDirectory", "lb"),
        ("ConfigurationDirectory", "lb"),
        ("ReadWritePaths", "-/sys/fs/bpf"),
    ] {
        assert_eq!(values(key), [want], "{key}");
    }
    let caps: BTreeSet<&str> = UNIT_CAPS.iter().copied().collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let v = values(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        assert_eq!(
            v[0].split_whitespace().collect::<BTreeSet<_>>(),
            caps,
            "{key}"
        );
    }
    // The API socket lb uses without a config key is in RuntimeDirectory.
    assert_eq!(
        lb_userspace::admin::config::DEFAULT_API_SOCKET,
        "/run/lb/lb.sock"
    );
    let example = std::fs::read_to_string(root().join("examples/lb.toml")).unwrap();
    assert!(example.contains("socket = \"/run/lb/lb.sock\""));

    // The unit as installed, with the package's binary at /usr/bin/lb.
    let dir = tempfile::tempdir().unwrap();
    let deb = package(dir.path());
    let tree = dir.path().join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let installed = std::fs::read_to_string(tree.join("lib/systemd/system/lb.service")).unwrap();
    let lb = tree.join("usr/bin/lb");
    let unit = dir.path().join("lb.service");
    std::fs::write(
        &unit,
        installed.replace("/usr/bin/lb ", &format!("{} ", lb.display())),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", tree.join("usr/share/man"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    // A unit with a bad value must fail this check, or it checks nothing.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&unit)
            .unwrap()
            .replace("ProtectSystem=strict", "ProtectSystem=stirct"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .env("MANPATH", tree.join("usr/share/man"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("stirct"),
        "a bad ProtectSystem= went unnoticed: {said}"
    );

    // The exposure score systemd computes from the sandboxing settings.
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    for ok in [
        "✓ NoNewPrivileges=",
        "✓ CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "✓ CapabilityBoundingSet=~CAP_SYS_MODULE",
        "✓ CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "✓ ProtectHome=",
        "✓ PrivateTmp=",
        "✓ ProtectSystem=",
        "✓ ProtectKernelModules=",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(ok)),
            "systemd-analyze security: no `{ok}`:\n{out}"
        );
    }
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("lb.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(
        score <= 3.0,
        "exposure {score} (was 2.4 when written):\n{out}"
    );
}
