//! The container image (built by `scripts/image`: a static kspan in an empty image) runs on
//! this kernel under podman/runc, privileged and with the least-privilege capability set the
//! DaemonSet uses.
//!
//! Run as root after `scripts/image`: `cargo test -p agent --test image -- --test-threads=1`.
use std::process::Command;

use serde_json::Value;

mod common;

use common::{require_root, Trigger};

const IMAGE: &str = "kspan:dev";

fn podman_run(extra: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(["run", "--rm", "--runtime", "runc", "--pid", "host"])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
        .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .args(extra)
        .arg(IMAGE)
        .args(args)
        .output()
        .expect("podman (scripts/image installs it)")
}

#[test]
fn image_is_the_binary_alone() {
    require_root();
    let out = Command::new("podman")
        .args(["image", "inspect", IMAGE, "--format", "{{.Size}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "no {IMAGE}: run scripts/image first");
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(size < 40 << 20, "image is {size} bytes");
    let sh = podman_run(&["--entrypoint", "/bin/sh"], &["-c", "true"]);
    assert!(!sh.status.success(), "the image must have no shell");
}

#[test]
fn check_passes_privileged() {
    require_root();
    let out = podman_run(&["--privileged"], &["check", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["can_run"], true, "{r}");
}

/// BPF + PERFMON load and attach; SYS_PTRACE is what lets the agent read other processes'
/// /proc/PID/exe (resource attributes). The default seccomp profile of this podman refuses
/// bpf() without CAP_SYS_ADMIN, hence seccomp=unconfined (the DaemonSet runs unconfined too).
#[test]
fn least_privilege_traces_with_resources() {
    require_root();
    for (caps, expect_path) in [
        ("CAP_BPF,CAP_PERFMON,CAP_SYS_PTRACE", true),
        ("CAP_BPF,CAP_PERFMON", false),
    ] {
        let t = Trigger::spawn("sleeps", Some(150));
        let pid = t.pid().to_string();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let waiter = std::thread::spawn(move || t.go());
        let out = podman_run(
            &[
                "--security-opt",
                "seccomp=unconfined",
                "--cap-drop=all",
                &format!("--cap-add={caps}"),
            ],
            &[
                "run",
                "--pid",
                &pid,
                "--duration",
                "2s",
                "--metrics-addr",
                "",
                "--batch-timeout",
                "100ms",
            ],
        );
        waiter.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{caps}: {err}");
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .unwrap_or_else(|| panic!("{caps}: no spans; {err}"));
        let attrs = &first["resourceSpans"][0]["resource"]["attributes"];
        let path = attrs
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "process.executable.path")
            .map(|a| a["value"]["stringValue"].clone());
        if expect_path {
            assert_eq!(path, Some(Value::from(exe.to_str().unwrap())), "{caps}");
        } else {
            assert_eq!(
                path, None,
                "{caps}: without SYS_PTRACE /proc/PID/exe is unreadable"
            );
        }
    }
}
