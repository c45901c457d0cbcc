//! Helpers shared by the privileged test binaries.
#![allow(dead_code)]
use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::Value;

pub const KSPAN: &str = env!("CARGO_BIN_EXE_kspan");

/// A program of the test venv (`KSPAN_SETUP_TEST=1 scripts/setup` makes it).
pub fn venv_bin(name: &str) -> String {
    let cache = std::env::var("KSPAN_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kspan", std::env::var("HOME").unwrap_or_default()));
    let path = format!("{cache}/venv/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} missing: run `KSPAN_SETUP_TEST=1 scripts/setup` (./test.sh does)"
    );
    path
}

/// Sends `signal` to a running kspan, reads all its stdout, and checks it exited 0.
pub fn stop_kspan(child: &mut Child, signal: i32) -> String {
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, signal) };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("kspan stdout")
        .read_to_string(&mut out)
        .expect("read kspan stdout");
    let status = child.wait().expect("wait kspan");
    assert!(status.success(), "kspan exited with {status}");
    out
}

/// Kills a kspan still running (a failed assertion must not leave it attached: it would slow
/// every later test).
pub fn kill_kspan(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn triggers_py() -> String {
    format!("{}/../tests/triggers.py", env!("CARGO_MANIFEST_DIR"))
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel integration tests load eBPF programs: run them as root"
    );
}

/// A trigger process waiting for "go".
pub struct Trigger {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Trigger {
    pub fn spawn(action: &str, arg: Option<u64>) -> Trigger {
        let args: Vec<String> = arg.iter().map(u64::to_string).collect();
        Trigger::spawn_with(action, &args)
    }

    /// A trigger whose action takes several arguments.
    pub fn spawn_with(action: &str, args: &[String]) -> Trigger {
        let mut child = Command::new("python3")
            .arg(triggers_py())
            .arg(action)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 trigger");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("trigger ready line");
        assert_eq!(line.trim(), "ready");
        Trigger {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the trigger act; returns what it reports.
    pub fn go(mut self) -> Value {
        self.stdin.write_all(b"go\n").expect("write go");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("trigger result");
        let status = self.child.wait().expect("wait trigger");
        assert!(status.success(), "trigger failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad trigger output {line:?}: {e}"))
    }
}
