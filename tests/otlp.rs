//! End to end: the real kernel, `kspan run`, and an OTLP receiver that is not ours (the
//! official OpenTelemetry protos decoded by Google's protobuf runtime, tests/otlp_receiver.py).
//!
//! Run as root, one at a time: `cargo test -p agent --test otlp -- --test-threads=1`.
//! The receiver's venv comes from `KSPAN_SETUP_TEST=1 scripts/setup` (./test.sh does it).
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

mod common;

use common::{
    cgroup2_root, free_port, http_client, require_root, tempdir, venv_bin, wait_listening,
    HttpService, KspanProc, Trigger, HTTP_SERVICE, KSPAN,
};

/// The Python OTLP receiver; collects every span it decodes.
struct Receiver {
    child: Child,
    spans: Arc<Mutex<Vec<Value>>>,
    grpc_port: u16,
    http_port: u16,
}

impl Receiver {
    fn start(grpc_port: u16, http_port: u16) -> Receiver {
        Receiver::start_with(grpc_port, http_port, &[])
    }

    /// With extra receiver arguments (TLS files).
    fn start_with(grpc_port: u16, http_port: u16, extra: &[&str]) -> Receiver {
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

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the spans received so far.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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
struct Run(KspanProc);

impl Run {
    fn start(args: &[&str]) -> Run {
        Run::start_env(args, &[])
    }

    /// Sampling is off unless the test configures it (a `--config` or `--sampling`): the
    /// tests count exact spans.
    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(KSPAN);
        cmd.arg("run").args(args);
        if !args.iter().any(|a| *a == "--config" || *a == "--sampling") {
            cmd.args(["--sampling", "off"]);
        }
        cmd.env("RUST_LOG", "info").envs(env.iter().copied());
        Run(KspanProc::start(cmd, "tracing (programs attached)"))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// SIGTERM, wait; returns the summary and stdout.
    fn stop(mut self) -> (Value, String) {
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

fn http_get(port: u16, path: &str) -> (u16, String) {
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

fn by_name<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn one<'a>(
    spans: impl IntoIterator<Item = &'a Value>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    let found: Vec<&Value> = spans.into_iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what}, found {found:#?}");
    found[0]
}

fn dropped_total(summary: &Value) -> u64 {
    summary["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// The story trigger through `kspan run` into the receiver over `protocol`; checks every
/// span's name, kind, attributes, resource, status and parent.
fn story_over(protocol: &str) {
    require_root();
    let rx = Receiver::start(0, 0);
    let trigger = Trigger::spawn("story", None);
    let pid = trigger.pid();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", rx.grpc_port),
        _ => format!("http://127.0.0.1:{}", rx.http_port),
    };
    let pid_s = pid.to_string();
    let metrics_port = free_port().to_string();
    let run = Run::start(&[
        "--pid",
        &pid_s,
        "--min-duration",
        "10ms",
        "--endpoint",
        &endpoint,
        "--protocol",
        protocol,
        "--compression",
        "gzip",
        "--header",
        "x-kspan-test=yes",
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let r = trigger.go();
    let spans = rx.wait_for("the story's spans", |s| {
        by_name(s, "tcp connection").len() == 2 && !by_name(s, "clock_nanosleep").is_empty()
    });
    let (summary, _) = run.stop();

    for s in &spans {
        assert_eq!(s["transport"], protocol.split('/').next().unwrap());
        if protocol != "grpc" {
            // grpcio decompresses before the servicer sees the request; HTTP shows it.
            assert_eq!(s["encoding"], "gzip");
        }
        assert_eq!(s["headers"]["x-kspan-test"], "yes");
        assert_eq!(s["scope"], "kspan");
        let res = &s["resource"];
        assert_eq!(res["process.pid"], pid as i64, "{s}");
        assert_eq!(res["process.executable.path"], exe.to_str().unwrap());
        assert_eq!(
            res["service.name"],
            exe.file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(res["os.type"], "linux");
        assert!(res["host.name"].as_str().is_some_and(|h| !h.is_empty()));
        assert_eq!(s["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(s["span_id"].as_str().unwrap().len(), 16);
        assert!(s["end"].as_u64() >= s["start"].as_u64());
        // Wall-clock times: within the last minute.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(now - s["start"].as_u64().unwrap() < 60_000_000_000, "{s}");
    }
    let dur = |s: &Value| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap();

    // 20 ms sleep in its thread: a root INTERNAL span.
    let sleep = one(&spans, "sleep span", |s| {
        s["name"] == "clock_nanosleep" && s["attributes"]["thread.id"] == r["tid"]
    });
    assert!((20_000_000..200_000_000).contains(&dur(sleep)), "{sleep}");
    assert_eq!(sleep["kind"], 1);
    assert_eq!(sleep["parent_span_id"], "");
    assert_eq!(sleep["status_code"], 0);

    // Failed open: status Error, error.type ENOTDIR.
    let open = spans
        .iter()
        .find(|s| s["name"] == "openat" && s["attributes"]["kspan.syscall.return"] == -20)
        .expect("failed openat span");
    assert_eq!(open["status_code"], 2);
    assert_eq!(open["status_message"], "ENOTDIR");
    assert_eq!(open["attributes"]["error.type"], "ENOTDIR");
    assert_eq!(open["attributes"]["kspan.syscall.errno"], 20);

    // Connect: CLIENT span with peer and local ends.
    let connect = one(&spans, "connect span", |s| s["name"] == "tcp connect");
    let ca = &connect["attributes"];
    assert_eq!(connect["kind"], 3);
    assert_eq!(connect["parent_span_id"], "");
    assert_eq!(ca["server.address"], "127.0.0.1");
    assert_eq!(ca["server.port"], r["listen_port"]);
    assert_eq!(ca["network.peer.port"], r["listen_port"]);
    assert_eq!(ca["network.local.port"], r["client_port"]);
    assert_eq!(ca["network.transport"], "tcp");
    assert_eq!(ca["network.type"], "ipv4");
    assert_eq!(ca["thread.id"], r["client_tid"]);

    // Accept: SERVER span.
    let accept = one(&spans, "accept span", |s| s["name"] == "tcp accept");
    let aa = &accept["attributes"];
    assert_eq!(accept["kind"], 2);
    assert_eq!(aa["server.port"], r["listen_port"]);
    assert_eq!(aa["client.port"], r["client_port"]);
    assert_eq!(aa["client.address"], "127.0.0.1");
    // The server's handshake on loopback: a round trip, with no SYN-ACK retransmit.
    assert!((1..100_000_000).contains(&dur(accept)), "{accept}");
    assert_eq!(aa["kspan.tcp.retransmits"], 0);
    assert!(aa.get("kspan.tcp.handshake_known").is_none(), "{accept}");

    // The slow recvs on each end's socket are children of that end's connection span.
    let client_recv = one(&spans, "client recv", |s| {
        s["name"] == "recvfrom" && s["attributes"]["thread.id"] == r["client_tid"]
    });
    assert_eq!(
        client_recv["attributes"]["kspan.syscall.fd"],
        r["client_fd"]
    );
    assert!(dur(client_recv) >= 25_000_000, "{client_recv}");
    assert_eq!(client_recv["parent_span_id"], connect["span_id"]);
    assert_eq!(client_recv["trace_id"], connect["trace_id"]);
    let server_recv = one(&spans, "server recv", |s| {
        s["name"] == "recvfrom" && s["attributes"]["thread.id"] == r["server_tid"]
    });
    assert_eq!(
        server_recv["attributes"]["kspan.syscall.fd"],
        r["server_fd"]
    );
    assert_eq!(server_recv["parent_span_id"], accept["span_id"]);
    assert_eq!(server_recv["trace_id"], accept["trace_id"]);

    // Each end's close is the connection's lifetime, under the end's span.
    let closes = by_name(&spans, "tcp connection");
    let parents: HashSet<&Value> = closes.iter().map(|c| &c["parent_span_id"]).collect();
    assert_eq!(
        parents,
        HashSet::from([&connect["span_id"], &accept["span_id"]])
    );
    for c in closes {
        assert_eq!(c["attributes"]["kspan.tcp.retransmits"], 0);
        assert!(dur(c) >= 60_000_000, "lifetime {c}");
    }

    // Everything built was exported and seen, nothing dropped.
    assert_eq!(
        summary["spans_exported"].as_u64().unwrap(),
        spans.len() as u64
    );
    assert_eq!(summary["spans_built"], summary["spans_exported"]);
    assert_eq!(dropped_total(&summary), 0, "{summary}");
}

#[test]
fn story_over_grpc() {
    story_over("grpc");
}

#[test]
fn story_over_http() {
    story_over("http/protobuf");
}

/// The standard OTEL_* variables configure the exporter and the resource.
#[test]
fn standard_environment_variables() {
    require_root();
    let rx = Receiver::start(0, 0);
    let trigger = Trigger::spawn("openat", None);
    let pid = trigger.pid().to_string();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let run = Run::start_env(
        &[
            "--pid",
            &pid,
            "--batch-timeout",
            "50ms",
            "--metrics-addr",
            "",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,x-other=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,service.name=ignored",
            ),
        ],
    );
    trigger.go();
    let spans = rx.wait_for("a failed openat", |s| {
        s.iter()
            .any(|v| v["name"] == "openat" && v["status_code"] == 2)
    });
    let (summary, _) = run.stop();
    for s in &spans {
        assert_eq!(s["transport"], "grpc");
        assert_eq!(s["headers"]["x-tenant"], "acme");
        assert_eq!(s["headers"]["x-other"], "2");
        assert_eq!(s["resource"]["deployment.environment"], "test");
        // OTEL_RESOURCE_ATTRIBUTES describes the agent's host, not the traced process.
        assert_ne!(s["resource"]["service.name"], "ignored");
    }
    assert_eq!(
        summary["spans_exported"].as_u64().unwrap(),
        spans.len() as u64
    );
}

/// With no endpoint, `kspan run` writes OTLP JSON lines to stdout.
#[test]
fn stdout_is_the_default_exporter() {
    require_root();
    let trigger = Trigger::spawn("openat", None);
    let pid = trigger.pid().to_string();
    let mut run = Command::new(KSPAN);
    run.args([
        "run",
        "--pid",
        &pid,
        "--metrics-addr",
        "",
        "--batch-timeout",
        "50ms",
        "--sampling",
        "off",
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            run.env_remove(k);
        }
    }
    let kspan = Run(KspanProc::start(run, "tracing"));
    let started = kspan.0.stderr_text();
    assert!(!started.contains("error"), "{started}");
    assert!(started.contains("stdout (OTLP JSON lines)"), "{started}");
    let r = trigger.go();
    let (summary, out) = kspan.stop();
    let mut found = false;
    for line in out.lines() {
        let req: Value = serde_json::from_str(line).expect("an OTLP JSON line");
        for rs in req["resourceSpans"].as_array().unwrap() {
            let attrs: HashMap<String, Value> = rs["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| (a["key"].as_str().unwrap().to_string(), a["value"].clone()))
                .collect();
            assert_eq!(attrs["process.pid"]["intValue"], pid);
            for s in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
                if s["name"] == "openat" && s["status"]["message"] == "ENOTDIR" {
                    assert_eq!(s["traceId"].as_str().unwrap().len(), 32);
                    assert_eq!(s["status"]["code"], 2);
                    found = true;
                }
            }
        }
    }
    assert!(found, "no failed openat of {} in {out}", r["path"]);
    assert_eq!(summary["spans_built"], summary["spans_exported"]);
}

/// The receiver goes away for 10 s while traffic continues: kspan stays up with bounded
/// memory, counts what it drops, and spans made after the restart arrive;
/// exported + dropped == built.
#[test]
fn collector_outage() {
    require_root();
    let rx = Receiver::start(0, 0);
    let (grpc_port, http_port) = (rx.grpc_port, rx.http_port);
    let trigger = Trigger::spawn("ticker", Some(20));
    let pid = trigger.pid().to_string();
    let metrics_port = free_port();
    let run = Run::start(&[
        "--pid",
        &pid,
        "--endpoint",
        &format!("http://127.0.0.1:{grpc_port}"),
        "--protocol",
        "grpc",
        "--export-timeout",
        "2s",
        "--batch-size",
        "100",
        "--batch-timeout",
        "100ms",
        "--queue-spans",
        "1000",
        "--retry-max-elapsed",
        "60s",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let kspan_pid = run.pid();
    let ticker = std::thread::spawn(move || trigger.go());
    std::thread::sleep(Duration::from_secs(3));
    let before = rx.spans();
    assert!(
        before.len() > 300,
        "{} spans before the outage",
        before.len()
    );
    drop(rx);
    let mut max_rss_kib = 0u64;
    let outage_end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < outage_end {
        let status = std::fs::read_to_string(format!("/proc/{kspan_pid}/status"))
            .expect("kspan still running during the outage");
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        max_rss_kib = max_rss_kib.max(rss);
        std::thread::sleep(Duration::from_millis(250));
    }
    let (code, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    let queued: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kspan_queue_spans "))
        .and_then(|v| v.trim().parse().ok())
        .expect("kspan_queue_spans");
    assert!(
        (0..=1000).contains(&queued),
        "queue {queued} beyond its bound"
    );
    assert!(metrics.contains("kspan_dropped_total{reason=\"queue_full\"}"));
    let (code, ready) = http_get(metrics_port, "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("retrying"), "{ready}");

    let restart = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let rx2 = Receiver::start(grpc_port, http_port);
    let ticks = ticker.join().unwrap();
    let after = rx2.wait_for("spans made after the restart", |s| {
        s.iter()
            .any(|v| v["start"].as_u64().unwrap() > restart + 1_000_000_000)
    });
    // Let the last batch go out before stopping.
    std::thread::sleep(Duration::from_secs(1));
    let (summary, _) = run.stop();
    let after = rx2.spans().len().max(after.len());
    let ids: HashSet<String> = before
        .iter()
        .chain(rx2.spans().iter())
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect();
    let built = summary["spans_built"].as_u64().unwrap();
    let exported = summary["spans_exported"].as_u64().unwrap();
    let queue_full = summary["dropped"]["queue_full"].as_u64().unwrap();
    let export_failed = summary["dropped"]["export_failed"].as_u64().unwrap();
    eprintln!(
        "outage: ticks {} built {built} exported {exported} queue_full {queue_full} export_failed {export_failed} received {} (before {} after {after}) max RSS {max_rss_kib} KiB",
        ticks["n"],
        ids.len(),
        before.len()
    );
    assert!(
        queue_full > 0,
        "a 10 s outage at 200 spans/s must overflow a 1000-span queue"
    );
    assert_eq!(exported + queue_full + export_failed, built, "{summary}");
    assert_eq!(ids.len() as u64, exported, "received == exported");
    assert!(
        built >= ticks["n"].as_u64().unwrap(),
        "every tick is a span"
    );
    assert_eq!(summary["kernel"]["ringbuf_full"], 0);
    assert!(max_rss_kib < 64 * 1024, "RSS {max_rss_kib} KiB");
}

/// The collector away for 8 s while ~1,600 spans are made, a few per chunk: fewer than the
/// default queue (16,384 spans), so nothing is dropped and everything arrives once it is
/// back. (The queue used to be bounded in chunks: 32 chunks of a few spans each filled it and
/// ~400 spans were dropped at 1 % of the bound.)
#[test]
fn outage_shorter_than_the_queue_loses_nothing() {
    require_root();
    let rx = Receiver::start(0, 0);
    let (grpc_port, http_port) = (rx.grpc_port, rx.http_port);
    let trigger = Trigger::spawn("ticker", Some(12));
    let pid = trigger.pid().to_string();
    let run = Run::start(&[
        "--pid",
        &pid,
        "--endpoint",
        &format!("http://127.0.0.1:{grpc_port}"),
        "--protocol",
        "grpc",
        "--export-timeout",
        "1s",
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        "",
    ]);
    let ticker = std::thread::spawn(move || trigger.go());
    std::thread::sleep(Duration::from_secs(2));
    let before = rx.spans();
    drop(rx);
    std::thread::sleep(Duration::from_secs(8));
    let rx2 = Receiver::start(grpc_port, http_port);
    let ticks = ticker.join().unwrap()["n"].as_u64().unwrap();
    rx2.wait_for("every tick's span", |s| {
        (before.len() + s.len()) as u64 >= ticks
    });
    std::thread::sleep(Duration::from_millis(500));
    let (summary, _) = run.stop();
    let ids: HashSet<String> = before
        .iter()
        .chain(rx2.spans().iter())
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "short outage: ticks {ticks}, received {}: {summary}",
        ids.len()
    );
    assert_eq!(summary["dropped"]["queue_full"], 0, "{summary}");
    assert_eq!(summary["dropped"]["export_failed"], 0, "{summary}");
    assert_eq!(
        summary["spans_built"], summary["spans_exported"],
        "{summary}"
    );
    assert_eq!(
        ids.len() as u64,
        summary["spans_exported"].as_u64().unwrap()
    );
    assert!(
        ids.len() as u64 >= ticks,
        "{} spans for {ticks} ticks",
        ids.len()
    );
}

/// Nobody listens at the endpoint: kspan keeps running, retries, then counts the spans as
/// failed exports; exits cleanly.
#[test]
fn unreachable_endpoint_is_counted_not_fatal() {
    require_root();
    let trigger = Trigger::spawn("openat", None);
    let pid = trigger.pid().to_string();
    let port = free_port().to_string();
    let run = Run::start(&[
        "--pid",
        &pid,
        "--endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--protocol",
        "http/protobuf",
        "--export-timeout",
        "500ms",
        "--retry-max-elapsed",
        "1s",
        "--batch-timeout",
        "50ms",
        "--metrics-addr",
        "",
    ]);
    trigger.go();
    std::thread::sleep(Duration::from_secs(3));
    let (summary, _) = run.stop();
    let built = summary["spans_built"].as_u64().unwrap();
    assert!(built >= 1);
    assert_eq!(summary["spans_exported"], 0);
    assert_eq!(summary["dropped"]["export_failed"].as_u64().unwrap(), built);
}

fn run_fails(args: &[&str], config: Option<&str>) -> String {
    run_fails_env(args, config, &[])
}

fn run_fails_env(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("kspan-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(KSPAN);
    cmd.arg("run")
        .args(args)
        .args(["--duration", "1s"])
        .envs(env.iter().copied());
    if let Some(text) = config {
        let f = dir.join("kspan.yaml");
        std::fs::write(&f, text).unwrap();
        cmd.arg("--config").arg(&f);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_is_a_clear_error() {
    let e = run_fails(&["--endpoint", "localhost:4317"], None);
    assert!(e.contains("must start with http:// or https://"), "{e}");
    let e = run_fails(&["--endpoint", "http://host:port"], None);
    assert!(e.contains("bad port"), "{e}");
    let e = run_fails(
        &[],
        Some("exporter:\n  kind: otlp\n  endpont: http://x:4317\n"),
    );
    assert!(
        e.contains("unknown field `endpont`") && e.contains("line 3"),
        "{e}"
    );
    let e = run_fails(&[], Some("pipeline:\n  batch_size: many\n"));
    assert!(e.contains("batch_size") && e.contains("line 2"), "{e}");
    let e = run_fails(&["--config", "/nonexistent/kspan.yaml"], None);
    assert!(e.contains("cannot read config file"), "{e}");
    let e = run_fails(&["--metrics-addr", "nowhere"], None);
    assert!(e.contains("metrics address \"nowhere\""), "{e}");
    let e = run_fails(&["--syscalls", "reed"], None);
    assert!(e.contains("unknown syscall \"reed\""), "{e}");
    // A pid that names nothing would trace nothing, silently.
    let e = run_fails(&["--pid", "999999"], None);
    assert!(e.contains("--pid 999999: no such process"), "{e}");
    let e = run_fails(&["--pid", "0"], None);
    assert!(e.contains("--pid 0: 0 is not a process id"), "{e}");
    for cmd in ["events", "hist", "top"] {
        let out = Command::new(KSPAN)
            .args([cmd, "--pid", "999999"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {e}");
        assert!(e.contains("--pid 999999: no such process"), "{cmd}: {e}");
    }
    // Bad standard variables are refused, naming the variable.
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1");
    let e = run_fails_env(
        &[],
        None,
        &[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc")],
    );
    assert!(
        e.contains("OTEL_EXPORTER_OTLP_TIMEOUT is \"abc\"; use a whole number of milliseconds"),
        "{e}"
    );
    let e = run_fails_env(
        &[],
        None,
        &[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")],
    );
    assert!(
        e.contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION is \"zstd\"; use gzip or none"),
        "{e}"
    );
    // A bad sampling condition shows the token as written.
    let e = run_fails(
        &[],
        Some("sampling:\n  rules:\n    rules:\n      - name: a\n        sampling_percentage: 5\n        conditions: ['duration >> 5']\n"),
    );
    assert!(e.contains("found \">\""), "{e}");
}

/// The start line and `--print-config` say where spans go: the endpoint in use and the
/// variable it came from, not `endpoint: null`.
#[test]
fn where_spans_go_is_said() {
    let print = |env: &[(&str, &str)]| -> String {
        let out = Command::new(KSPAN)
            .args(["run", "--print-config"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let c = print(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
    assert!(
        c.contains("endpoint: http://collector:4318/v1/traces"),
        "{c}"
    );
    assert!(c.contains("protocol: http/protobuf"), "{c}");
    assert!(c.contains("kind: otlp"), "{c}");
    let c = print(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ]);
    assert!(c.contains("endpoint: http://collector:4317\n"), "{c}");
    assert!(
        c.contains("protocol: grpc") && c.contains("timeout: 2s 500ms"),
        "{c}"
    );
    let c = print(&[]);
    assert!(c.contains("kind: stdout"), "{c}");
    // Printed back, the config means the same.
    let dir = std::env::temp_dir().join(format!("kspan-where-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("k.yaml");
    std::fs::write(
        &f,
        print(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
    )
    .unwrap();
    let again = Command::new(KSPAN)
        .args(["run", "--print-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout)
        .contains("endpoint: http://collector:4318/v1/traces"));
    let _ = std::fs::remove_dir_all(&dir);

    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let run = Run::start_env(
        &["--no-syscalls", "--no-tcp", "--metrics-addr", ""],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")],
    );
    let started = run.0.stderr_text();
    assert!(
        started.contains(
            "spans to OTLP HTTP/protobuf to http://127.0.0.1:1/v1/traces (from OTEL_EXPORTER_OTLP_ENDPOINT)"
        ),
        "{started}"
    );
    drop(run);
}

/// A sampling config: errors kept by rule, the rest at 50 %; kept spans carry `ot=th:...`
/// and the rule, dropped ones are counted as sampled_out.
#[test]
fn sampling_rules_end_to_end() {
    require_root();
    let rx = Receiver::start(0, 0);
    let dir = std::env::temp_dir().join(format!("kspan-sampling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("kspan.yaml");
    std::fs::write(
        &cfg,
        r#"
sampling:
  rules:
    default_sampling_percentage: 50
    rules:
      - name: errors
        action: keep
        conditions: ["status == STATUS_CODE_ERROR"]
"#,
    )
    .unwrap();
    let trigger = Trigger::spawn("ticker", Some(3));
    let pid = trigger.pid().to_string();
    let run = Run::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--pid",
        &pid,
        "--endpoint",
        &format!("http://127.0.0.1:{}", rx.grpc_port),
        "--protocol",
        "grpc",
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        "",
    ]);
    let ticks = trigger.go()["n"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (summary, _) = run.stop();
    let spans = rx.spans();
    let errors: Vec<&Value> = spans.iter().filter(|s| s["status_code"] == 2).collect();
    let sleeps: Vec<&Value> = by_name(&spans, "clock_nanosleep");
    assert!(errors.len() as u64 >= ticks, "every failed open kept");
    for e in &errors {
        assert_eq!(e["attributes"]["kspan.sampling.rule"], "errors");
        assert_eq!(e["trace_state"], "ot=th:0", "kept with probability 1: th:0");
    }
    for s in &sleeps {
        assert_eq!(s["attributes"]["kspan.sampling.rule"], "default");
        assert_eq!(s["trace_state"], "ot=th:8");
        // Kept means R >= T: the trace id's low 56 bits are >= 0x80000000000000.
        let low14 = &s["trace_id"].as_str().unwrap()[18..];
        assert!(u64::from_str_radix(low14, 16).unwrap() >= 0x80000000000000);
    }
    let built = summary["spans_built"].as_u64().unwrap();
    let sampled_out = summary["dropped"]["sampled_out"].as_u64().unwrap();
    let exported = summary["spans_exported"].as_u64().unwrap();
    assert_eq!(exported, spans.len() as u64);
    assert_eq!(exported + sampled_out, built, "{summary}");
    // The sleeps (one per tick) kept at 50 %: within 5 standard deviations.
    let n = ticks as f64;
    let kept = sleeps.len() as f64;
    assert!(
        (kept - n / 2.0).abs() <= 5.0 * (n * 0.25).sqrt(),
        "kept {kept} of {n}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The budget's spend survives a restart: a second agent in the same period keeps only what
/// the first left, and a bad state path stops kspan with a clear message.
#[test]
fn budget_spend_survives_a_restart() {
    require_root();
    let rx = Receiver::start(0, 0);
    let dir = std::env::temp_dir().join(format!("kspan-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("budget.json");
    let cfg = dir.join("kspan.yaml");
    std::fs::write(
        &cfg,
        format!(
            "sampling:\n  budget:\n    period: day\n    spans: 50\n    reserve: 0\n    \
             state_file: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let cfg_arg = ["--config", cfg.to_str().unwrap()];
    let one_run = || getppid_spans(100, &endpoint, "grpc", &cfg_arg, &[], 300);
    let used = || -> f64 {
        let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        st["used"].as_f64().unwrap()
    };

    let first = one_run();
    assert_eq!(first["spans_built"], 100, "{first}");
    assert_eq!(first["spans_exported"], 50, "{first}");
    assert_eq!(first["dropped"]["sampled_out"], 50, "{first}");
    assert_eq!(used(), 50.0);

    let second = one_run();
    assert_eq!(second["spans_built"], 100, "{second}");
    assert_eq!(
        second["spans_exported"], 0,
        "the budget was spent before the restart"
    );
    assert_eq!(second["dropped"]["sampled_out"], 100, "{second}");
    assert_eq!(rx.spans().len(), 50);
    assert_eq!(used(), 50.0);

    // A state file in a directory that does not exist: refused at start, with what to do.
    std::fs::write(
        &cfg,
        "sampling:\n  budget:\n    period: day\n    spans: 50\n    state_file: /nonexistent-kspan/b.json\n",
    )
    .unwrap();
    let out = Command::new(KSPAN)
        .args(["run", "--exporter", "none", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write /nonexistent-kspan/b.json.tmp"),
        "{err}"
    );
    assert!(!err.contains("tracing"), "refused before attaching: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, made with
/// openssl in `dir`.
fn make_certs(dir: &std::path::Path) {
    let sh = |script: &str| {
        let st = Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("sh");
        assert!(st.success(), "openssl failed: {script}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!(
        "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=kspan-test-ca"
    ));
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        sh(&format!(
            "openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN=kspan-{name} && \
             printf 'basicConstraints=CA:FALSE\n{ext}\n' > {name}.ext && \
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out {name}.pem -days 2 -extfile {name}.ext"
        ));
    }
}

/// Exports 20 getppid spans to a TLS receiver that requires a client certificate; returns
/// kspan's summary and the spans received.
fn tls_export(
    rx: &Receiver,
    protocol: &str,
    tls_args: &[&str],
    env: &[(&str, &str)],
) -> (Value, Vec<Value>) {
    let port = if protocol == "grpc" {
        rx.grpc_port
    } else {
        rx.http_port
    };
    let endpoint = format!("https://127.0.0.1:{port}");
    let mut args = vec!["--export-timeout", "3s", "--retry-max-elapsed", "1s"];
    args.extend_from_slice(tls_args);
    let summary = getppid_spans(20, &endpoint, protocol, &args, env, 1500);
    (summary, rx.spans())
}

/// `kspan run` making a span of each of `n` getppid calls of a trigger, exported to
/// `endpoint`; waits `settle_ms` for the export, stops kspan and returns its summary.
fn getppid_spans(
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

/// Export to a collector with a private CA and mutual TLS, over gRPC and HTTP; without the
/// client certificate or the CA the exports fail and are counted; bad files stop kspan.
#[test]
fn mutual_tls_with_a_private_ca() {
    require_root();
    let dir = std::env::temp_dir().join(format!("kspan-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client.key"));
    let rx_args = [
        "--tls-cert",
        &f("server.pem"),
        "--tls-key",
        &f("server.key"),
        "--tls-client-ca",
        &ca,
    ];
    let full = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];
    for protocol in ["grpc", "http/protobuf"] {
        let rx = Receiver::start_with(0, 0, &rx_args);
        let (summary, spans) = tls_export(&rx, protocol, &full, &[]);
        assert_eq!(summary["spans_exported"], 20, "{protocol}: {summary}");
        assert_eq!(spans.len(), 20, "{protocol}");
        assert!(spans.iter().all(|s| s["name"] == "getppid"));

        // The same through the standard variables.
        let rx = Receiver::start_with(0, 0, &rx_args);
        let env = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        ];
        let (summary, spans) = tls_export(&rx, protocol, &[], &env);
        assert_eq!(summary["spans_exported"], 20, "{protocol} (env): {summary}");
        assert_eq!(spans.len(), 20);

        // No client certificate: the receiver refuses the handshake.
        let rx = Receiver::start_with(0, 0, &rx_args);
        let (summary, spans) = tls_export(&rx, protocol, &["--tls-ca", &ca], &[]);
        assert_eq!(summary["spans_exported"], 0, "{protocol}: {summary}");
        assert_eq!(
            summary["dropped"]["export_failed"], 20,
            "{protocol}: {summary}"
        );
        assert!(spans.is_empty());

        // The public roots only: kspan refuses the server's certificate.
        let rx = Receiver::start_with(0, 0, &rx_args);
        let (summary, spans) = tls_export(
            &rx,
            protocol,
            &["--tls-cert", &cert, "--tls-key", &key],
            &[],
        );
        assert_eq!(
            summary["dropped"]["export_failed"], 20,
            "{protocol}: {summary}"
        );
        assert!(spans.is_empty());
    }

    // Files that cannot work stop kspan at start, saying which and why.
    for (args, expect) in [
        (vec!["--tls-cert", cert.as_str()], "needs its key"),
        (vec!["--tls-ca", key.as_str()], "holds no PEM certificate"),
        (
            vec!["--tls-ca", "/nonexistent/ca.pem"],
            "ca_file /nonexistent/ca.pem",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", ca.as_str()],
            "no usable PEM private key",
        ),
    ] {
        let out = Command::new(KSPAN)
            .args(["run", "--endpoint", "https://127.0.0.1:1"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("exporter.tls: ") && err.contains(expect),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

/// A syscall flood where every syscall is a span: the governor raises the minimum duration
/// until the agent's own CPU is back under its budget, and says so.
#[test]
fn overhead_governor_engages_under_a_flood() {
    require_root();
    let metrics_port = free_port();
    let run = Run::start(&[
        "--comm",
        "dd",
        "--min-duration",
        "0",
        "--exporter",
        "none",
        "--cpu-budget",
        "15",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let pid = run.pid();
    let mut dd = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=40000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Give the governor a few ticks, then measure the agent's CPU over 5 s of flood.
    std::thread::sleep(Duration::from_secs(3));
    let c0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let cpu_pct = 100.0 * (cpu_seconds(pid) - c0) / 5.0;
    let (_, metrics) = http_get(metrics_port, "/metrics");
    let _ = dd.kill();
    let _ = dd.wait();
    let governed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kspan_governor_min_duration_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("governor gauge");
    let stderr = run.0.stderr.lock().unwrap().join("\n");
    let (summary, _) = run.stop();
    eprintln!("agent CPU {cpu_pct:.1}% with min duration {governed}s; {summary}");
    assert!(governed > 0.0, "the governor raised the minimum duration");
    assert!(
        stderr.contains("overhead governor"),
        "it reported doing so:\n{stderr}"
    );
    assert!(
        cpu_pct < 15.0 * 1.5,
        "agent CPU {cpu_pct:.1}% stays near its 15% budget"
    );
    // Every syscall is still measured in the kernel histograms.
    assert!(summary["kernel"]["syscalls_measured"].as_u64().unwrap() > 1_000_000);
}

/// nginx in the foreground with a master and two workers, on `port`.
struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(port: u16) -> Nginx {
        let dir = std::env::temp_dir().join(format!("kspan-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; server {{ listen 127.0.0.1:{port}; \
                 location / {{ return 200 \"ok\\n\"; }} \
                 location /missing {{ return 404; }} location /fail {{ return 500; }} }} }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (KSPAN_SETUP_TEST=1 scripts/setup installs it)");
        let n = Nginx { child, dir };
        wait_listening(port);
        n
    }

    /// The master and its workers.
    fn pids(&self) -> HashSet<i64> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let mut pids: HashSet<i64> = children
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "two nginx workers");
        pids.insert(i64::from(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` requests on `n` connections; each answer must be a 200.
fn get_n(port: u16, n: usize) {
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.") && body[9..12] == *"200",
            "{body}"
        );
    }
}

/// Servers listening before kspan starts (kspan never saw their listen()): every `tcp accept`
/// and server-side `tcp connection` span names the process that owns the socket, with the
/// in-kernel comm filter off and on. They used to carry pid 0 and `unknown_service`, and the
/// comm filter dropped them all.
#[test]
fn servers_started_before_kspan_own_their_accepts() {
    require_root();
    let (ngx_port, py_port) = (free_port(), free_port());
    let nginx = Nginx::start(ngx_port);
    let ngx_pids = nginx.pids();
    let mut py = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(py_port.to_string())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(py_port);
    let py_pid = i64::from(py.id());
    const N: usize = 20;
    for filter in [None, Some("nginx,python3")] {
        let rx = Receiver::start(0, 0);
        let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
        let mut args = vec![
            "--no-syscalls",
            "--endpoint",
            &endpoint,
            "--protocol",
            "grpc",
            "--batch-timeout",
            "100ms",
            "--metrics-addr",
            "",
        ];
        if let Some(f) = filter {
            args.extend(["--comm", f]);
        }
        let run = Run::start(&args);
        get_n(ngx_port, N);
        get_n(py_port, N);
        let server_spans = |s: &[Value], port: u16| -> Vec<Value> {
            s.iter()
                .filter(|v| {
                    (v["name"] == "tcp accept" && v["attributes"]["server.port"] == port)
                        || (v["name"] == "tcp connection"
                            && v["attributes"]["network.local.port"] == port)
                })
                .cloned()
                .collect()
        };
        let spans = rx.wait_for("the servers' accept and connection spans", |s| {
            server_spans(s, ngx_port).len() == 2 * N && server_spans(s, py_port).len() == 2 * N
        });
        run.stop();
        for (port, pids, service) in [
            (ngx_port, ngx_pids.clone(), "nginx"),
            (py_port, HashSet::from([py_pid]), "python3"),
        ] {
            let ss = server_spans(&spans, port);
            assert_eq!(
                ss.iter().filter(|v| v["name"] == "tcp accept").count(),
                N,
                "{filter:?}"
            );
            for s in &ss {
                let res = &s["resource"];
                let pid = res["process.pid"].as_i64().unwrap_or(0);
                assert!(
                    pids.contains(&pid),
                    "{filter:?}: pid {pid} not {pids:?}: {s}"
                );
                assert!(
                    res["service.name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(service)),
                    "{filter:?}: {s}"
                );
                assert!(res["process.executable.path"].as_str().is_some(), "{s}");
                assert!(s["attributes"].get("kspan.pid_known").is_none(), "{s}");
                assert!(s["attributes"]["thread.id"].as_i64().is_some(), "{s}");
            }
            // The connection spans are children of their accepts.
            let accepts: HashSet<&Value> = ss
                .iter()
                .filter(|v| v["name"] == "tcp accept")
                .map(|v| &v["span_id"])
                .collect();
            for c in ss.iter().filter(|v| v["name"] == "tcp connection") {
                assert!(accepts.contains(&c["parent_span_id"]), "{c}");
            }
        }
    }
    let _ = py.kill();
    let _ = py.wait();
}

/// Normal failing calls (readlink EINVAL, stat ENOENT) are expected outcomes: decided in the
/// kernel, they never become spans while fast; genuine failures (ENOTDIR) stay errors; a slow
/// expected one (a 30 ms lock wait that times out) is a span with status Unset that keeps
/// error.type. With `capture.expected_errors: {}` every failure is an error span again.
#[test]
fn expected_failures_are_not_errors() {
    require_root();
    const N: usize = 2000;
    let dir = std::env::temp_dir().join(format!("kspan-expected-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all_errors = dir.join("all-errors.yaml");
    std::fs::write(
        &all_errors,
        "capture:\n  expected_errors: {}\nsampling: null\n",
    )
    .unwrap();
    for table_on in [true, false] {
        let rx = Receiver::start(0, 0);
        let trigger = Trigger::spawn("expected", Some(N as u64));
        let pid = trigger.pid().to_string();
        let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
        let mut args = vec![
            "--pid",
            &pid,
            "--min-duration",
            "10ms",
            "--endpoint",
            &endpoint,
            "--protocol",
            "grpc",
            "--batch-timeout",
            "100ms",
            "--metrics-addr",
            "",
        ];
        if !table_on {
            args.extend(["--config", all_errors.to_str().unwrap()]);
        }
        let run = Run::start(&args);
        let r = trigger.go();
        let spans = rx.wait_for("the lock wait's span", |s| {
            s.iter().any(|v| {
                v["name"] == "futex"
                    && v["attributes"]["thread.id"] == r["tid"]
                    && v["end"].as_u64().unwrap() - v["start"].as_u64().unwrap() >= 25_000_000
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        let spans = rx.spans().len().max(spans.len());
        let spans = &rx.spans()[..spans];
        let (summary, _) = run.stop();
        let named = |n: &str| spans.iter().filter(|v| v["name"] == n).count();
        let notdir: Vec<&Value> = spans
            .iter()
            .filter(|v| v["name"] == "openat" && v["attributes"]["error.type"] == "ENOTDIR")
            .collect();
        assert_eq!(notdir.len(), 3, "genuine failures");
        assert!(notdir.iter().all(|v| v["status_code"] == 2));
        let wait = spans
            .iter()
            .find(|v| {
                v["name"] == "futex"
                    && v["attributes"]["error.type"] == "ETIMEDOUT"
                    && v["attributes"]["thread.id"] == r["tid"]
            })
            .expect("the timed-out lock wait");
        assert_eq!(wait["attributes"]["kspan.syscall.errno"], 110);
        if table_on {
            assert_eq!(named("readlink"), 0, "readlink EINVAL is expected");
            assert_eq!(named("newfstatat") + named("stat") + named("statx"), 0);
            assert_eq!(wait["status_code"], 0, "{wait}");
            assert_eq!(wait["attributes"]["kspan.syscall.expected_error"], true);
            // Nothing crossed the ring buffer for the 4,000 fast expected failures.
            assert!(summary["events"].as_u64().unwrap() < 100, "{summary}");
        } else {
            assert_eq!(
                named("readlink"),
                N,
                "every readlink EINVAL is an error span"
            );
            assert!(named("newfstatat") + named("stat") + named("statx") >= N);
            assert_eq!(wait["status_code"], 2, "{wait}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood of normal failing calls (stat ENOENT, readlink EINVAL, several hundred thousand a
/// second) must not decide what survives: with the default settings (sampling on) the one
/// refused connect and all ten 30 ms sleeps arrive, nothing is dropped at the queue, and the
/// flood itself never reaches the ring buffer. (Before: 3.7M queue_full drops, and the
/// refused connect and half the sleeps among them.)
#[test]
fn a_flood_of_expected_failures_keeps_what_matters() {
    require_root();
    let rx = Receiver::start(0, 0);
    let trigger = Trigger::spawn("flood", Some(3));
    let pid = trigger.pid().to_string();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let run = Run::start(&[
        "--pid",
        &pid,
        "--sampling",
        "on",
        "--endpoint",
        &endpoint,
        "--protocol",
        "grpc",
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        "",
    ]);
    let r = trigger.go();
    let spans = rx.wait_for("the sleeps and the refused connect", |s| {
        s.iter().filter(|v| v["name"] == "clock_nanosleep").count() == 10
            && s.iter().any(|v| v["name"] == "tcp connect")
    });
    std::thread::sleep(Duration::from_millis(300));
    let (summary, _) = run.stop();
    eprintln!("flood: {r} summary {summary}");
    assert!(
        r["per_second"].as_f64().unwrap() > 100_000.0,
        "the flood was only {r}"
    );
    let connect = spans.iter().find(|v| v["name"] == "tcp connect").unwrap();
    assert_eq!(connect["status_code"], 2);
    assert_eq!(connect["attributes"]["error.type"], "ECONNREFUSED");
    assert_eq!(connect["attributes"]["server.port"], r["refused_port"]);
    assert!(connect["trace_state"].as_str().unwrap().contains("th:0"));
    let sleeps: Vec<&Value> = spans
        .iter()
        .filter(|v| v["name"] == "clock_nanosleep")
        .collect();
    assert_eq!(sleeps.len(), 10);
    for s in sleeps {
        assert!(s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap() >= 30_000_000);
        assert!(
            s["trace_state"].as_str().unwrap().starts_with("ot=th:"),
            "{s}"
        );
    }
    assert_eq!(summary["dropped"]["queue_full"], 0, "{summary}");
    assert_eq!(summary["dropped"]["ringbuf_full"], 0, "{summary}");
    // A call of the flood arrives only when it was itself slow (preempted for over the 1 ms
    // default minimum on a busy machine): a slow call is kept, as any other.
    for v in spans
        .iter()
        .filter(|v| v["name"] == "readlink" || v["name"] == "newfstatat")
    {
        let took = v["end"].as_u64().unwrap() - v["start"].as_u64().unwrap();
        assert!(took >= 1_000_000, "a fast flood call was exported: {v}");
    }
    // Millions of calls, a handful of events.
    assert!(summary["events"].as_u64().unwrap() < 1000, "{summary}");
}

/// Under ring buffer pressure the kernel sheds ordinary events (successful getppid calls at
/// --min-duration 0, a few hundred thousand a second, into a 16 KiB ring) and keeps the last
/// quarter of the ring for failures: every one of the 50 genuine failures arrives, and every
/// event given up is counted (`ringbuf_shed`, `ringbuf_full`).
#[test]
fn ring_pressure_sheds_ordinary_events_first() {
    require_root();
    let rx = Receiver::start(0, 0);
    let trigger = Trigger::spawn("shed", Some(50));
    let pid = trigger.pid().to_string();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let run = Run::start(&[
        "--pid",
        &pid,
        "--syscalls",
        "getppid,openat",
        "--min-duration",
        "0",
        "--ring-buffer-bytes",
        "16384",
        "--no-tcp",
        "--endpoint",
        &endpoint,
        "--protocol",
        "grpc",
        "--batch-timeout",
        "100ms",
        "--metrics-addr",
        "",
    ]);
    let r = trigger.go();
    rx.wait_for("the 50 failures", |s| {
        s.iter()
            .filter(|v| v["attributes"]["error.type"] == "ENOTDIR")
            .count()
            >= 50
    });
    std::thread::sleep(Duration::from_millis(300));
    let (summary, _) = run.stop();
    eprintln!("shed: {r} summary {summary}");
    let k = &summary["kernel"];
    assert!(k["ringbuf_shed"].as_u64().unwrap() > 0, "{summary}");
    let getppid = r["getppid"].as_u64().unwrap();
    let got = rx.spans().iter().filter(|v| v["name"] == "getppid").count() as u64;
    // Every getppid is a span or counted: shed or lost in the kernel, or dropped on the way.
    let kernel_lost = k["ringbuf_shed"].as_u64().unwrap() + k["ringbuf_full"].as_u64().unwrap();
    let dropped = summary["dropped"]["queue_full"].as_u64().unwrap();
    assert!(
        got + kernel_lost + dropped >= getppid,
        "{got} + {kernel_lost} + {dropped} < {getppid}"
    );
}

/// The adjusted count a kept span stands for, from `ot=th:` (1 without a threshold).
fn adjusted_count(trace_state: &str) -> f64 {
    let th = trace_state
        .split(',')
        .filter_map(|e| e.trim().strip_prefix("ot="))
        .flat_map(|ot| ot.split(';'))
        .find_map(|kv| kv.strip_prefix("th:"));
    match th {
        Some(t) => {
            let t = u64::from_str_radix(&format!("{t:0<14}"), 16).unwrap() as f64;
            let full = (1u64 << 56) as f64;
            full / (full - t)
        }
        None => 1.0,
    }
}

/// `kspan run` with the default sampling while cargo builds (part of) kspan in a cgroup of
/// its own: it exports a few hundred spans/s at most, drops nothing at the queue, keeps every
/// syscall of 1 s or more, and the adjusted counts of the kept spans estimate, per span name,
/// the true number of the build's calls of 2^20 ns or more that the kernel histograms (a
/// second kspan, `hist --cgroup`) counted. Prints the table kept in BENCHMARKS.md.
#[test]
fn default_run_during_a_cargo_build() {
    require_root();
    const SLOW: u64 = 1 << 20;
    let cg = format!("{}/kspan-build-{}", cgroup2_root(), std::process::id());
    std::fs::create_dir_all(&cg).unwrap();
    let rx = Receiver::start(0, 0);
    let mut hist_cmd = Command::new(KSPAN);
    hist_cmd.args([
        "hist",
        "--json",
        "--cumulative",
        "--interval",
        "1s",
        "--cgroup",
        &cg,
    ]);
    let mut hist = KspanProc::start(hist_cmd, "measuring");
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let run = Run::start(&[
        "--cgroup",
        &cg,
        "--sampling",
        "on",
        "--min-duration",
        "1048576",
        "--endpoint",
        &endpoint,
        "--protocol",
        "grpc",
        "--metrics-addr",
        "",
    ]);
    let target = std::env::temp_dir().join(format!("kspan-build-{}", std::process::id()));
    let t0 = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {cg}/cgroup.procs && exec cargo build --offline --quiet -p xtask --target-dir {}",
            target.display()
        ))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::null())
        .status()
        .expect("cargo");
    assert!(status.success(), "the cargo build failed");
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (summary, _) = run.stop();
    let last = hist.stop(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir(&cg);
    let doc: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    let spans = rx.spans();

    let mut truth: HashMap<String, f64> = HashMap::new();
    let mut truth_1s = 0u64;
    for row in doc["rows"].as_array().unwrap() {
        let name = row["syscall"].as_str().unwrap().to_string();
        for b in row["buckets"].as_array().unwrap() {
            let (lo, n) = (b[0].as_u64().unwrap(), b[2].as_u64().unwrap());
            if lo >= SLOW {
                *truth.entry(name.clone()).or_default() += n as f64;
            }
            if lo >= 1 << 30 {
                truth_1s += n;
            }
        }
    }
    // (estimate, kept, estimated variance: the Horvitz-Thompson sum of (1 - p) / p^2).
    let mut estimate: HashMap<String, (f64, u64, f64)> = HashMap::new();
    let mut kept_1s = 0u64;
    let mut services = HashSet::new();
    for s in &spans {
        let dur = s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap();
        if s["attributes"]["kspan.syscall.nr"].is_null() || dur < SLOW {
            continue;
        }
        services.insert(s["resource"]["service.name"].as_str().unwrap().to_string());
        if dur >= 1 << 30 {
            kept_1s += 1;
        }
        let e = estimate
            .entry(s["name"].as_str().unwrap().to_string())
            .or_default();
        let adj = adjusted_count(s["trace_state"].as_str().unwrap());
        e.0 += adj;
        e.1 += 1;
        e.2 += adj * adj - adj;
    }
    let exported = summary["spans_exported"].as_u64().unwrap();
    eprintln!(
        "cargo build {elapsed:.1} s, services {services:?}: {exported} spans exported ({:.0}/s), built {}, sampled_out {}, queue_full {}",
        exported as f64 / elapsed,
        summary["spans_built"],
        summary["dropped"]["sampled_out"],
        summary["dropped"]["queue_full"]
    );
    let mut keys: Vec<_> = truth.keys().cloned().collect();
    keys.sort_by(|a, b| truth[b].total_cmp(&truth[a]));
    eprintln!("| span | calls >= 2^20 ns (kernel) | kept | estimate | error | std. error |");
    eprintln!("|---|---|---|---|---|---|");
    let (mut true_sum, mut est_sum, mut var_sum, mut over) = (0.0, 0.0, 0.0, Vec::new());
    for k in &keys {
        let t = truth[k];
        let (e, kept, var) = estimate.get(k).copied().unwrap_or((0.0, 0, 0.0));
        true_sum += t;
        est_sum += e;
        var_sum += var;
        let err = (e - t) / t;
        let sigma = var.sqrt() / t;
        eprintln!(
            "| {k} | {t} | {kept} | {e:.0} | {:+.1} % | {:.1} % |",
            100.0 * err,
            100.0 * sigma
        );
        // Within 5 %, or within what its sample can tell: 4 standard errors of the
        // Horvitz-Thompson estimate (2 calls of slack for the two agents' own timestamps
        // at the 2^20 ns edge).
        if err.abs() > 0.05_f64.max(4.0 * sigma) + 2.0 / t {
            over.push(format!("{k}: true {t} estimate {e:.1} from {kept}"));
        }
    }
    let _ = var_sum;
    eprintln!(
        "total: {true_sum} calls, estimate {est_sum:.0} ({:+.2} %); calls >= 2^30 ns: kept {kept_1s}, kernel {truth_1s}",
        100.0 * (est_sum - true_sum) / true_sum
    );
    assert!(
        true_sum > 100.0,
        "the build made too few slow calls to measure"
    );
    assert!(((est_sum - true_sum) / true_sum).abs() <= 0.05);
    assert!(over.is_empty(), "{over:#?}");
    assert_eq!(summary["dropped"]["queue_full"], 0, "{summary}");
    assert!(
        (exported as f64 / elapsed) < 500.0,
        "{exported} spans in {elapsed:.1} s"
    );
    assert!(
        kept_1s + 1 >= truth_1s,
        "1 s calls: kept {kept_1s} of {truth_1s}"
    );
}

// ---- HTTP request spans ----

/// Spans grouped by trace id.
fn by_trace(spans: &[Value]) -> HashMap<&str, Vec<&Value>> {
    let mut traces: HashMap<&str, Vec<&Value>> = HashMap::new();
    for s in spans {
        traces
            .entry(s["trace_id"].as_str().unwrap())
            .or_default()
            .push(s);
    }
    traces
}

fn attr<'a>(s: &'a Value, k: &str) -> &'a Value {
    &s["attributes"][k]
}

fn pid_of(s: &Value) -> i64 {
    s["resource"]["process.pid"].as_i64().unwrap_or(-1)
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn requests(spans: &[Value], kind: i64) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| s["kind"] == kind && !attr(s, "http.request.method").is_null())
        .collect()
}

/// Every span whose parent is in `trace` has that parent in the list (nothing orphaned); the
/// roots (no parent, or a remote parent from `traceparent`) are returned.
fn check_tree<'a>(trace: &[&'a Value], remote_parent: Option<&str>) -> Vec<&'a Value> {
    let ids: HashSet<&str> = trace
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    let mut roots = Vec::new();
    for s in trace {
        let p = s["parent_span_id"].as_str().unwrap();
        if p.is_empty() || Some(p) == remote_parent {
            roots.push(*s);
        } else {
            assert!(
                ids.contains(p),
                "orphan: {} {} (parent {p})",
                s["name"],
                s["span_id"]
            );
        }
    }
    roots
}

/// nginx (an event loop) and Python's ThreadingHTTPServer as servers, ab, curl and Python
/// clients: one SERVER span per request served and one CLIENT span per request sent, with
/// exact method, path, route, status, redacted query; keep-alive, pipelining, a body sent
/// in parts; 404 and 500; latencies that agree with what the client measured; each server
/// span the child of the client span on the other end of its connection.
#[test]
fn http_requests_become_server_and_client_spans() {
    require_root();
    let (ngx_port, py_port, slow_port) = (free_port(), free_port(), free_port());
    let nginx = Nginx::start(ngx_port);
    let ngx_pids = nginx.pids();
    let py = HttpService::start(py_port, &[], 0);
    let slow = HttpService::start(slow_port, &[], 60);
    let rx = Receiver::start(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.http_port);
    // No process filter: the receiver's own HTTP server is traced too, and must not describe
    // kspan's exports to it (OTLP/HTTP on its port).
    let run = Run::start(&["--endpoint", &endpoint, "--no-syscalls"]);
    const N: usize = 30;
    let url =
        format!("http://127.0.0.1:{ngx_port}/orders/7?email=jane.doe@example.com&token=s3cr3t");
    let ab = Command::new("ab")
        .args(["-q", "-k", "-n", &N.to_string(), "-c", "1", &url])
        .output()
        .expect("ab (KSPAN_SETUP_TEST=1 scripts/setup installs apache2-utils)");
    assert!(ab.status.success(), "{ab:?}");
    for (path, code) in [("/missing/3", "404"), ("/fail", "500")] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{ngx_port}{path}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), code);
    }
    let py_port_s = py_port.to_string();
    assert_eq!(
        http_client(&["keepalive", "127.0.0.1", &py_port_s, "/items/5", "3"])["status"],
        serde_json::json!([200, 200, 200])
    );
    assert_eq!(
        http_client(&["pipelined", "127.0.0.1", &py_port_s, "/p/1", "/missing/2"])["status"],
        serde_json::json!([200, 404])
    );
    assert_eq!(
        http_client(&[
            "split_post",
            "127.0.0.1",
            &py_port_s,
            "/upload",
            "abc",
            "defg",
            "hij"
        ])["status"],
        serde_json::json!([200])
    );
    let measured = http_client(&["get", &format!("http://127.0.0.1:{slow_port}/slow"), "5"]);
    // Every request: 30 + 2 server spans in nginx, 3 + 2 + 1 + 5 in Python.
    let spans = rx.wait_for("every request span", |s| {
        let to_us = |kind| {
            requests(s, kind)
                .iter()
                .filter(|s| {
                    [ngx_port, py_port, slow_port]
                        .iter()
                        .any(|p| attr(s, "server.port") == i64::from(*p))
                })
                .count()
        };
        to_us(SERVER) >= N + 2 + 11 && to_us(CLIENT) >= N + 2 + 11
    });
    let (summary, _) = run.stop();
    assert_eq!(dropped_total(&summary), 0, "{summary}");
    // Other processes on the host may make requests too: count those to our servers.
    let ours = |s: &&Value| {
        [ngx_port, py_port, slow_port]
            .iter()
            .any(|p| attr(s, "server.port") == i64::from(*p))
    };
    let servers: Vec<&Value> = requests(&spans, SERVER).into_iter().filter(ours).collect();
    let clients: Vec<&Value> = requests(&spans, CLIENT).into_iter().filter(ours).collect();
    assert_eq!(servers.len(), N + 2 + 11, "server spans");
    assert_eq!(clients.len(), N + 2 + 11, "client spans");

    // nginx: 30 keep-alive requests from ab, then curl's 404 and 500.
    let orders: Vec<_> = servers
        .iter()
        .filter(|s| ngx_pids.contains(&pid_of(s)) && s["name"] == "GET /orders/{id}")
        .collect();
    assert_eq!(orders.len(), N);
    for s in &orders {
        assert_eq!(attr(s, "http.request.method"), "GET");
        assert_eq!(attr(s, "url.path"), "/orders/7");
        assert_eq!(attr(s, "url.query"), "email=***&token=***");
        assert_eq!(attr(s, "http.route"), "/orders/{id}");
        assert_eq!(attr(s, "http.response.status_code"), 200);
        assert_eq!(attr(s, "server.port"), i64::from(ngx_port));
        assert_eq!(attr(s, "client.address"), "127.0.0.1");
        assert_eq!(attr(s, "user_agent.original"), "ApacheBench/2.3");
        assert_eq!(s["status_code"], 0);
    }
    let ab_clients: Vec<_> = clients
        .iter()
        .filter(|s| s["resource"]["process.executable.name"] == "ab")
        .collect();
    assert_eq!(ab_clients.len(), N);
    let ab_ids: HashSet<&str> = ab_clients
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    for s in &ab_clients {
        assert_eq!(
            attr(s, "url.full"),
            format!("http://127.0.0.1:{ngx_port}/orders/7?email=***&token=***").as_str()
        );
        assert_eq!(attr(s, "server.port"), i64::from(ngx_port));
    }
    // Each nginx span is the child of ab's span on the other end of the connection.
    for s in &orders {
        assert!(
            ab_ids.contains(s["parent_span_id"].as_str().unwrap()),
            "{s}"
        );
    }
    let missing = one(&spans, "nginx 404", |s| {
        s["kind"] == SERVER && attr(s, "url.path") == "/missing/3"
    });
    assert_eq!(attr(missing, "http.response.status_code"), 404);
    assert_eq!(missing["status_code"], 0, "a 404 is not a server error");
    let curl_404 = one(&spans, "curl 404", |s| {
        s["kind"] == CLIENT
            && attr(s, "url.full")
                .as_str()
                .is_some_and(|u| u.ends_with("/missing/3"))
    });
    assert_eq!(curl_404["status_code"], 2, "a 404 is a client error");
    assert_eq!(attr(curl_404, "error.type"), "404");
    let fail = one(&spans, "nginx 500", |s| {
        s["kind"] == SERVER && attr(s, "url.path") == "/fail"
    });
    assert_eq!(fail["status_code"], 2);
    assert_eq!(attr(fail, "error.type"), "500");

    // Python: keep-alive, pipelining, a body in parts.
    let py_servers: Vec<_> = servers.iter().filter(|s| pid_of(s) == py.pid()).collect();
    assert_eq!(py_servers.len(), 6);
    let items: Vec<_> = py_servers
        .iter()
        .filter(|s| s["name"] == "GET /items/{id}")
        .collect();
    assert_eq!(items.len(), 3);
    let pipelined: Vec<_> = py_servers
        .iter()
        .filter(|s| attr(s, "url.path") == "/p/1" || attr(s, "url.path") == "/missing/2")
        .collect();
    assert_eq!(pipelined.len(), 2);
    let post = one(&spans, "POST /upload", |s| {
        s["kind"] == SERVER && s["name"] == "POST /upload"
    });
    assert_eq!(attr(post, "http.response.status_code"), 200);
    let post_ms = (post["end"].as_u64().unwrap() - post["start"].as_u64().unwrap()) as f64 / 1e6;
    assert!(
        post_ms >= 40.0,
        "the body's three parts came over 60 ms: {post_ms} ms"
    );

    // Latency: the client measured each request (connect included); kspan's CLIENT span runs
    // from its write to its last read, the SERVER span inside it, 60 ms of sleep within.
    let ms: Vec<f64> = measured["ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let slow_servers: Vec<_> = servers.iter().filter(|s| pid_of(s) == slow.pid()).collect();
    assert_eq!(slow_servers.len(), 5);
    for srv in &slow_servers {
        let client = clients
            .iter()
            .find(|c| c["span_id"] == srv["parent_span_id"])
            .unwrap_or_else(|| panic!("the client span of {srv}"));
        let d =
            |s: &Value| (s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap()) as f64 / 1e6;
        let (sd, cd) = (d(srv), d(client));
        assert!(sd >= 60.0 && sd <= cd, "server {sd} ms, client {cd} ms");
        let closest = ms.iter().map(|m| (m - cd).abs()).fold(f64::MAX, f64::min);
        assert!(
            closest < 5.0 && ms.iter().any(|m| *m >= cd),
            "client span {cd} ms vs measured {ms:?}"
        );
    }
    // Every export (the last ones at the flush included): none described by the receiver.
    std::thread::sleep(Duration::from_millis(300));
    let exports_seen = rx
        .spans()
        .iter()
        .filter(|s| attr(s, "url.path") == "/v1/traces")
        .count();
    assert_eq!(exports_seen, 0, "kspan's own exports are not traced");
    // Nothing personal left anywhere.
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains("jane.doe") && !text.contains("s3cr3t"));
    assert_eq!(summary["http"]["not_http"], 0, "{summary}");
    assert_eq!(summary["http"]["unmatched"], 0, "{summary}");
}

/// Starts C, B (calls C twice) and A (calls B): three uninstrumented services.
fn chain() -> (HttpService, HttpService, HttpService, u16) {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let c = HttpService::start(pc, &[], 0);
    let b = HttpService::start(
        pb,
        &[
            format!("http://127.0.0.1:{pc}/c1"),
            format!("http://127.0.0.1:{pc}/c2"),
        ],
        0,
    );
    let a = HttpService::start(pa, &[format!("http://127.0.0.1:{pb}/orders/42")], 0);
    (a, b, c, pa)
}

/// A client calls A, A calls B, B calls C twice, all uninstrumented Python on loopback: one
/// trace per request with every parent right and nothing orphaned; the thread's syscalls
/// while it serves are children of its request. Then curl sends a `traceparent` (curl is not
/// traced here): the trace continues the caller's.
#[test]
fn a_chain_of_services_is_one_trace() {
    require_root();
    let (a, b, c, pa) = chain();
    let rx = Receiver::start(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.http_port);
    let run = Run::start(&["--endpoint", &endpoint, "--comm", "python3"]);
    const N: usize = 3;
    let measured = http_client(&[
        "get",
        &format!("http://127.0.0.1:{pa}/start"),
        &N.to_string(),
    ]);
    assert_eq!(measured["status"], serde_json::json!([200, 200, 200]));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let out = Command::new("curl")
        .args(["-s", "-H"])
        .arg(format!("traceparent: 00-{caller_trace}-{caller_span}-01"))
        .args(["-H", "tracestate: vendor=abc"])
        .arg(format!("http://127.0.0.1:{pa}/continued"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let spans = rx.wait_for("four traces of request spans", |s| {
        requests(s, SERVER).len() >= 4 * 4
    });
    let (summary, _) = run.stop();
    assert_eq!(dropped_total(&summary), 0, "{summary}");
    let traces = by_trace(&spans);
    let with_requests: Vec<&str> = traces
        .iter()
        .filter(|(_, v)| v.iter().any(|s| !attr(s, "http.request.method").is_null()))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(with_requests.len(), N + 1, "one trace per request");
    let pids = [a.pid(), b.pid(), c.pid()];
    for t in &with_requests {
        let trace = &traces[t];
        let continued = *t == caller_trace;
        let roots = check_tree(trace, continued.then_some(caller_span));
        assert_eq!(roots.len(), 1, "one root: {roots:#?}");
        let root = roots[0];
        let by_id: HashMap<&str, &Value> = trace
            .iter()
            .map(|s| (s["span_id"].as_str().unwrap(), *s))
            .collect();
        let parent = |s: &Value| by_id[s["parent_span_id"].as_str().unwrap()];
        let reqs: Vec<&&Value> = trace
            .iter()
            .filter(|s| !attr(s, "http.request.method").is_null())
            .collect();
        // client -> A, A -> B, B -> C twice: 4 servers, 4 clients (3 when curl is the caller).
        let servers: Vec<_> = reqs.iter().filter(|s| s["kind"] == SERVER).collect();
        let clients: Vec<_> = reqs.iter().filter(|s| s["kind"] == CLIENT).collect();
        assert_eq!(servers.len(), 4, "{t}");
        assert_eq!(clients.len(), if continued { 3 } else { 4 }, "{t}");
        let server_a = one(trace.iter().copied(), "server A", |s| {
            s["kind"] == SERVER && pid_of(s) == pids[0]
        });
        let server_b = one(trace.iter().copied(), "server B", |s| {
            s["kind"] == SERVER && pid_of(s) == pids[1]
        });
        if continued {
            assert_eq!(root["span_id"], server_a["span_id"]);
            assert_eq!(server_a["parent_span_id"], caller_span);
            assert!(server_a["trace_state"]
                .as_str()
                .unwrap()
                .contains("vendor=abc"));
            assert_eq!(server_a["name"], "GET /continued");
        } else {
            assert_eq!(root["kind"], CLIENT);
            assert!(
                !pids.contains(&pid_of(root)),
                "the client process is the root"
            );
            assert_eq!(parent(server_a)["span_id"], root["span_id"]);
            assert_eq!(server_a["name"], "GET /start");
        }
        assert_eq!(server_b["name"], "GET /orders/{id}");
        let ab = parent(server_b);
        assert_eq!((ab["kind"].as_i64(), pid_of(ab)), (Some(CLIENT), pids[0]));
        assert_eq!(parent(ab)["span_id"], server_a["span_id"]);
        let cs: Vec<_> = servers.iter().filter(|s| pid_of(s) == pids[2]).collect();
        assert_eq!(cs.len(), 2);
        let mut paths: Vec<&str> = cs
            .iter()
            .map(|s| attr(s, "url.path").as_str().unwrap())
            .collect();
        paths.sort();
        assert_eq!(paths, ["/c1", "/c2"]);
        for s in cs {
            let bc = parent(s);
            assert_eq!((bc["kind"].as_i64(), pid_of(bc)), (Some(CLIENT), pids[1]));
            assert_eq!(parent(bc)["span_id"], server_b["span_id"]);
        }
        // B's own syscalls and connects while it serves: children of B's server span, on its
        // thread.
        let b_children: Vec<_> = trace
            .iter()
            .filter(|s| {
                s["parent_span_id"] == server_b["span_id"]
                    && attr(s, "http.request.method").is_null()
            })
            .collect();
        assert!(
            b_children.iter().any(|s| s["name"] == "tcp connect"),
            "B's connects to C are its children: {:?}",
            b_children.iter().map(|s| &s["name"]).collect::<Vec<_>>()
        );
        for s in b_children {
            assert_eq!(attr(s, "thread.id"), attr(server_b, "thread.id"), "{s}");
        }
    }
    assert_eq!(summary["http"]["linked"], (N * 4 + 3) as u64, "{summary}");
    assert_eq!(summary["http"]["continued"], 1, "{summary}");
}

/// Sampling decides on whole traces: with 25 % by trace id, a request trace arrives whole (all
/// eight request spans, one threshold) or not at all, and exactly the traces whose trace id
/// passes the threshold are kept.
#[test]
fn request_traces_are_sampled_whole() {
    require_root();
    let (_a, _b, _c, pa) = chain();
    let rx = Receiver::start(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.http_port);
    let dir = tempdir("sampled-whole");
    let config = dir.join("kspan.yaml");
    std::fs::write(
        &config,
        "capture: {syscall_spans: false, tcp: false}\nsampling:\n  rules:\n    default_sampling_percentage: 25\n",
    )
    .unwrap();
    let run = Run::start(&[
        "--endpoint",
        &endpoint,
        "--comm",
        "python3",
        "--config",
        config.to_str().unwrap(),
    ]);
    const N: usize = 40;
    http_client(&[
        "get",
        &format!("http://127.0.0.1:{pa}/start"),
        &N.to_string(),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let (summary, _) = run.stop();
    let spans = rx.spans();
    let sampled_out = summary["dropped"]["sampled_out"].as_u64().unwrap();
    let traces = by_trace(&spans);
    assert!(
        !traces.is_empty() && traces.len() < N,
        "some traces kept, some dropped: {} kept: {:?} {summary}",
        traces.len(),
        traces
            .values()
            .map(|v| v
                .iter()
                .map(|s| s["name"].as_str().unwrap())
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        spans.len() as u64 + sampled_out,
        (N * 8) as u64,
        "every request span either arrived or was sampled out: {summary}"
    );
    for (t, trace) in &traces {
        assert_eq!(trace.len(), 8, "trace {t} arrived whole");
        let states: HashSet<&str> = trace
            .iter()
            .map(|s| s["trace_state"].as_str().unwrap())
            .collect();
        assert_eq!(states.len(), 1, "one threshold per trace: {states:?}");
        let th = states.iter().next().unwrap().split("th:").nth(1).unwrap();
        let th = th.split([';', ',']).next().unwrap();
        let threshold = u64::from_str_radix(&format!("{th:0<14}"), 16).unwrap();
        let randomness = u64::from_str_radix(&t[18..], 16).unwrap();
        assert!(randomness >= threshold, "trace {t} kept by th:{th}");
    }
}

/// `kspan analyze` on what `kspan run` exported, and `kspan run --analyze`: a client calls
/// frontend, frontend calls orders (which takes 300 ms), orders calls payments twice and
/// payments fails (500). The report names orders as the bottleneck and payments' 500s.
#[test]
fn analyze_names_the_slow_service_and_the_failing_one() {
    require_root();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let _payments = HttpService::start_named(pc, &[], 0, Some("payments"));
    let _orders = HttpService::start_named(
        pb,
        &[
            format!("http://127.0.0.1:{pc}/fail/charge"),
            format!("http://127.0.0.1:{pc}/fail/charge"),
        ],
        300,
        Some("orders"),
    );
    let _frontend = HttpService::start_named(
        pa,
        &[format!("http://127.0.0.1:{pb}/orders/42")],
        0,
        Some("frontend"),
    );
    let client = |n: &str| {
        let out = Command::new("python3")
            .env("OTEL_SERVICE_NAME", "client")
            .args([
                HTTP_SERVICE,
                "get",
                &format!("http://127.0.0.1:{pa}/checkout"),
                n,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    let check =
        |report: &Value, n: u64| {
            let routes = report["routes"].as_array().unwrap();
            let rt = routes
                .iter()
                .find(|r| r["service"] == "client" && r["route"] == "GET /checkout")
                .unwrap_or_else(|| panic!("no client route in {report:#}"));
            assert_eq!(rt["requests"], n, "{rt:#}");
            assert_eq!(rt["bottleneck"], "orders", "{rt:#}");
            let orders = rt["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["service"] == "orders")
                .unwrap();
            assert!(orders["share"].as_f64().unwrap() > 0.5, "{orders}");
            assert!(orders["critical_p50_ns"].as_u64().unwrap() >= 300_000_000);
            let fails: Vec<&Value> = rt["errors_by"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["service"] == "payments" && e["error_type"] == "500")
                .collect();
            assert_eq!(fails.len(), 1, "{rt:#}");
            assert_eq!(fails[0]["count"], 2 * n);
            assert_eq!(fails[0]["operation"], "GET /fail/charge");
            let calls = rt["calls"].as_array().unwrap();
            assert!(calls.iter().any(|c| c["from"] == "orders"
                && c["to"] == "payments"
                && c["per_request"] == 2.0));
            let recs = report["recommendations"].as_array().unwrap();
            assert!(recs.iter().any(|r| r["service"] == "orders"
                && r["what"]
                    .as_str()
                    .unwrap()
                    .starts_with("the bottleneck of GET /checkout")));
            assert!(recs.iter().any(|r| r["service"] == "payments"
                && r["what"] == "fails: GET /fail/charge answers 500"));
            let slowest = &report["slowest"]["spans"];
            assert!(slowest.as_array().unwrap().len() >= 7);
        };

    // 1. kspan run's OTLP JSON lines, then kspan analyze on the file.
    let dir = tempdir("analyze");
    let file = dir.join("spans.jsonl");
    let mut cmd = Command::new(KSPAN);
    cmd.args([
        "run",
        "--exporter",
        "stdout",
        "--sampling",
        "off",
        "--comm",
        "python3",
    ])
    .args(["--batch-timeout", "100ms"]);
    let mut run = KspanProc::start(cmd, "tracing (programs attached)");
    client("3");
    std::thread::sleep(Duration::from_millis(500));
    let out = run.stop(libc::SIGTERM);
    std::fs::write(&file, out).unwrap();
    let out = Command::new(KSPAN)
        .args(["analyze", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&report, 3);
    // The terminal report says the same in words, with a waterfall.
    let out = Command::new(KSPAN)
        .arg("analyze")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("<- bottleneck") && text.contains("Slowest trace"),
        "{text}"
    );

    // 2. kspan run --analyze: live, no collector.
    let child = Command::new(KSPAN)
        .args([
            "run",
            "--analyze",
            "4s",
            "--analyze-json",
            "--sampling",
            "off",
        ])
        .args(["--comm", "python3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    client("2");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&report, 2);
}
