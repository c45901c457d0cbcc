//! `kspan run` against the Python OTLP receiver (tests/otlp_receiver.py: the official
//! OpenTelemetry protos decoded by Google's protobuf runtime), and what the tests read of
//! its spans and summaries.
use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{venv_bin, KspanProc, Trigger, KSPAN};

/// The Python OTLP receiver; collects every span it decodes.
pub struct Receiver {
    child: Child,
    spans: Arc<Mutex<Vec<Value>>>,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Receiver {
    pub fn start(grpc_port: u16, http_port: u16) -> Receiver {
        Receiver::start_with(grpc_port, http_port, &[])
    }

    /// With extra receiver arguments (TLS files).
    pub fn start_with(grpc_port: u16, http_port: u16, extra: &[&str]) -> Receiver {
        let mut child = Command::new(venv_bin("python"))
            .arg(format!(
                "{}/../tests/otlp_receiver.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(extra)
            .env("GRPC_VERBOSITY", "ERROR")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn receiver");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("receiver ready line");
        let ready: Value = serde_json::from_str(&line).expect("ready JSON");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("span JSON");
                sink.lock().unwrap().push(v);
            }
        });
        Receiver {
            child,
            spans,
            grpc_port: ready["grpc_port"].as_u64().unwrap() as u16,
            http_port: ready["http_port"].as_u64().unwrap() as u16,
        }
    }

    /// `kspan run` exporting to this receiver over gRPC, in batches of at most 100 ms, with
    /// no metrics endpoint; then `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        let endpoint = format!("http://127.0.0.1:{}", self.grpc_port);
        let mut all = vec![
            "--endpoint",
            &endpoint,
            "--protocol",
            "grpc",
            "--batch-timeout",
            "100ms",
            "--metrics-addr",
            "",
        ];
        all.extend_from_slice(args);
        Run::start(&all)
    }

    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the spans received so far.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let s = self.spans();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "receiver never got {what}; got {} spans: {:#?}",
                s.len(),
                s.iter()
                    .map(|v| format!(
                        "{} {} {}",
                        v["name"], v["attributes"]["thread.id"], v["status_message"]
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kspan run`.
pub struct Run(pub KspanProc);

impl Run {
    pub fn start(args: &[&str]) -> Run {
        Run::start_env(args, &[])
    }

    /// Sampling is off unless the test configures it (a `--config` or `--sampling`): the
    /// tests count exact spans.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(KSPAN);
        cmd.arg("run").args(args);
        if !args.iter().any(|a| *a == "--config" || *a == "--sampling") {
            cmd.args(["--sampling", "off"]);
        }
        cmd.env("RUST_LOG", "info").envs(env.iter().copied());
        Run(KspanProc::start(cmd, "tracing (programs attached)"))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// SIGTERM, wait; returns the summary and stdout.
    pub fn stop(mut self) -> (Value, String) {
        std::thread::sleep(Duration::from_millis(50));
        let out = self.0.stop(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.0.stderr.lock().unwrap().clone();
        let summary = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("kspan: summary "))
            .unwrap_or_else(|| panic!("no summary line in:\n{}", lines.join("\n")));
        (serde_json::from_str(summary).expect("summary JSON"), out)
    }
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let code = body[9..12].parse().unwrap();
    (code, body)
}

pub fn by_name<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

pub fn one<'a>(
    spans: impl IntoIterator<Item = &'a Value>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    let found: Vec<&Value> = spans.into_iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what}, found {found:#?}");
    found[0]
}

pub fn dropped_total(summary: &Value) -> u64 {
    summary["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// `kspan run` making a span of each of `n` getppid calls of a trigger, exported to
/// `endpoint`; waits `settle_ms` for the export, stops kspan and returns its summary.
pub fn getppid_spans(
    n: u64,
    endpoint: &str,
    protocol: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    settle_ms: u64,
) -> Value {
    let trigger = Trigger::spawn("getppid", Some(n));
    let pid = trigger.pid().to_string();
    let mut args = vec![
        "--pid",
        &pid,
        "--syscalls",
        "getppid",
        "--min-duration",
        "0",
        "--no-tcp",
        "--endpoint",
        endpoint,
        "--protocol",
        protocol,
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        "",
    ];
    args.extend_from_slice(extra);
    let run = Run::start_env(&args, env);
    assert_eq!(trigger.go()["n"], n);
    std::thread::sleep(Duration::from_millis(settle_ms));
    run.stop().0
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}
