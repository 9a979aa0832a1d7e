//! `lb run` failures end with one line that names the cause.

use std::process::Command;

use lb_userspace::testbed::privileged;

const CONFIG: &str = r#"
[api]
socket = ""

[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
[[vip.real]]
address = "198.18.11.2"
port = 8080
"#;

fn run_lb(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run lb");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

/// The last line of stderr (the log may precede it).
fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[test]
fn unknown_interface_and_missing_privileges() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lb.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let lb = env!("CARGO_BIN_EXE_lb");

    let (code, err) = run_lb(Command::new(lb).args([
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--iface",
        "lbnosuch0",
    ]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(last_line(&err), "lb: interface `lbnosuch0` does not exist");

    // The same binary as an unprivileged user: the line says why.
    for p in [dir.path(), cfg.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let exe = dir.path().join("lb");
    std::fs::copy(lb, &exe).unwrap();
    let (code, err) = run_lb(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        exe.to_str().unwrap(),
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--iface",
        "lo",
    ]));
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.starts_with("lb: cannot load the XDP object")
            && line.contains("Operation not permitted")
            && line.contains("needs root"),
        "{err}"
    );
}
