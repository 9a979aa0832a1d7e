//! `lb run` failures end with one line that names the cause.

use std::process::Output;

use lb_userspace::testbed::{
    config::{ConfigBuilder, Vip},
    privileged, Lb,
};

fn config() -> String {
    ConfigBuilder::new()
        .no_api()
        .vip(
            Vip::tcp("198.18.100.1".parse().unwrap(), 80)
                .real("198.18.11.2".parse().unwrap(), 8080),
        )
        .build()
}

fn code_and_stderr(out: Output) -> (i32, String) {
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

    let (code, err) = code_and_stderr(
        Lb::builder(crate::LB, dir.path())
            .config(config())
            .args(["--iface", "lbnosuch0"])
            .run_to_exit()
            .expect("run lb"),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(last_line(&err), "lb: interface `lbnosuch0` does not exist");

    // The same binary as an unprivileged user: the line says why.
    for p in [dir.path(), cfg.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let exe = dir.path().join("lb");
    std::fs::copy(crate::LB, &exe).unwrap();
    let (code, err) = code_and_stderr(
        Lb::builder(&exe, dir.path())
            .wrapper([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .config_path(&cfg)
            .args(["--iface", "lo"])
            .run_to_exit()
            .expect("run lb"),
    );
    assert_eq!(code, 1, "{err}");
    let line = last_line(&err);
    assert!(
        line.starts_with("lb: cannot load the XDP object")
            && line.contains("Operation not permitted")
            && line.contains("needs root"),
        "{err}"
    );
}
