//! Helpers shared by the privileged test binaries.
#![allow(dead_code)]
pub mod nginx;
pub mod otlp;

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
};

use serde_json::Value;

pub const KSPAN: &str = env!("CARGO_BIN_EXE_kspan");

/// A program of the test venv (`KSPAN_SETUP_TEST=1 scripts/setup` makes it).
pub fn venv_bin(name: &str) -> String {
    cache_file(&format!("venv/bin/{name}"))
}

/// A file the test set-up installs under the cache (`$KSPAN_CACHE`, default ~/.cache/kspan).
pub fn cache_file(rel: &str) -> String {
    let cache = std::env::var("KSPAN_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kspan", std::env::var("HOME").unwrap_or_default()));
    let path = format!("{cache}/{rel}");
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

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A kspan child process: started, ready once a line of its stderr contains a marker, its
/// stderr kept (and echoed for the test's log), stopped with a signal, killed on drop (a
/// failed assertion must not leave it attached).
pub struct KspanProc {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl KspanProc {
    /// Spawns `cmd` (a `Command::new(KSPAN)` with its arguments) and waits for `ready`.
    pub fn start(mut cmd: Command, ready: &str) -> KspanProc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kspan");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).expect("kspan stderr") == 0 {
                let _ = child.wait();
                panic!(
                    "kspan did not start (no {ready:?} on stderr):\n{}",
                    stderr.lock().unwrap().join("")
                );
            }
            stderr.lock().unwrap().push(line.clone());
            if line.contains(ready) {
                break;
            }
        }
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        KspanProc { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("")
    }

    /// Sends `signal`, reads its stdout to the end, checks it exited 0; returns stdout.
    pub fn stop(&mut self, signal: i32) -> String {
        stop_kspan(&mut self.child, signal)
    }
}

impl Drop for KspanProc {
    fn drop(&mut self) {
        kill_kspan(&mut self.child);
    }
}

/// The cgroup v2 mount point (pure v2, or the hybrid layout's `unified`).
pub fn cgroup2_root() -> String {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| f[1].to_string())
        })
        .expect("a cgroup2 mount")
}

/// Ids of the BPF programs a process holds (from its fds' /proc fdinfo `prog_id`), so a test
/// counts only what its own kspan loaded, whatever else runs on the host.
pub fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        if let Ok(info) = std::fs::read_to_string(fd.path()) {
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Ids of every BPF program loaded in the kernel (bpftool).
pub fn loaded_prog_ids() -> std::collections::HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .expect("bpftool (KSPAN_SETUP_TEST=1 scripts/setup installs it)");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs.iter().filter_map(|p| p["id"].as_u64()).collect()
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

/// A fresh directory for this test process under the system temp dir.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kspan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Waits until something listens on 127.0.0.1:`port` (at most 10 s).
pub fn wait_listening(port: u16) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The uninstrumented HTTP services and clients of the request-span tests.
pub const HTTP_SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/http_service.py");

/// A service of tests/http_service.py (ThreadingHTTPServer), killed on drop.
pub struct HttpService {
    child: Child,
}

impl HttpService {
    pub fn start(port: u16, calls: &[String], slow_ms: u64) -> HttpService {
        HttpService::start_named(port, calls, slow_ms, None)
    }

    /// With `OTEL_SERVICE_NAME` set (kspan reads it from the process's environment).
    pub fn start_named(
        port: u16,
        calls: &[String],
        slow_ms: u64,
        name: Option<&str>,
    ) -> HttpService {
        let mut cmd = Command::new("python3");
        if let Some(n) = name {
            cmd.env("OTEL_SERVICE_NAME", n);
        }
        cmd.arg(HTTP_SERVICE).arg("serve").arg(port.to_string());
        for c in calls {
            cmd.args(["--call", c]);
        }
        if slow_ms > 0 {
            cmd.args(["--slow-ms", &slow_ms.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_listening(port);
        HttpService { child }
    }

    pub fn pid(&self) -> i64 {
        i64::from(self.child.id())
    }
}

impl Drop for HttpService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client action of tests/http_service.py; its JSON line.
pub fn http_client(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(HTTP_SERVICE)
        .args(args)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

/// The master and both workers of an nginx started with two workers.
pub fn nginx_pids(n: &nginx::Nginx) -> std::collections::HashSet<i64> {
    let mut pids: std::collections::HashSet<i64> = n.workers().into_iter().map(i64::from).collect();
    assert_eq!(pids.len(), 2, "two nginx workers");
    pids.insert(i64::from(n.master()));
    pids
}
