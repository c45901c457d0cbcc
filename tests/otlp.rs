//! End to end, export: the real kernel, `kspan run`, and an OTLP receiver that is not ours
//! (the official OpenTelemetry protos decoded by Google's protobuf runtime,
//! tests/otlp_receiver.py) over gRPC and HTTP: what a span carries, the OTLP environment
//! variables, outages and unreachable collectors with exact accounting, bad input, TLS.
//!
//! Run as root, one at a time: `cargo test -p agent --test otlp -- --test-threads=1`.
//! The receiver's venv comes from `KSPAN_SETUP_TEST=1 scripts/setup` (./test.sh does it).
use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

mod common;

use common::{
    free_port,
    otlp::{by_name, dropped_total, getppid_spans, http_get, one, Receiver, Run},
    require_root, KspanProc, Trigger, KSPAN,
};

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

/// `kspan run` tracing `pid`, exporting OTLP/gRPC to the receiver on `grpc_port`, with `extra`
/// arguments.
fn run_to_grpc(pid: &str, grpc_port: u16, extra: &[&str]) -> Run {
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    let mut args = vec!["--pid", pid, "--endpoint", &endpoint, "--protocol", "grpc"];
    args.extend_from_slice(extra);
    Run::start(&args)
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
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let run = run_to_grpc(
        &pid,
        grpc_port,
        &[
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
            &metrics_addr,
        ],
    );
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
        max_rss_kib = max_rss_kib.max(rss_kib(kspan_pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let (code, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    let queued = metric(&metrics, "kspan_queue_spans");
    assert!(
        (0.0..=1000.0).contains(&queued),
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

/// RSS of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("kspan still running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A value of the Prometheus text `metrics` (the line that starts with `series `).
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

/// The collector stalls for 60 s in the middle of a run: it accepts export requests and holds
/// them unanswered, then answers them all. Every export call is cancelled at its limit
/// (`--export-timeout` 2 s + 1 s), none lasts longer; kspan stays up with its queue in bound
/// and bounded memory; what it drops is counted (exported + dropped == built); every span it
/// counts as exported arrived (held calls it gave up on may arrive too, once: at least once);
/// spans made after the recovery arrive.
#[test]
fn a_stalled_collector_is_timed_out_counted_and_caught_up() {
    require_root();
    let dir = common::tempdir("stall");
    let stall = dir.join("stall");
    let rx = Receiver::start_with(0, 0, &["--stall-file", stall.to_str().unwrap()]);
    let trigger = Trigger::spawn("ticker", Some(70));
    let pid = trigger.pid().to_string();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let run = run_to_grpc(
        &pid,
        rx.grpc_port,
        &[
            "--export-timeout",
            "2s",
            "--batch-size",
            "100",
            "--batch-timeout",
            "100ms",
            "--queue-spans",
            "1000",
            "--retry-max-elapsed",
            "10s",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let kspan_pid = run.pid();
    let ticker = std::thread::spawn(move || trigger.go());
    std::thread::sleep(Duration::from_secs(3));
    let before = rx.spans().len();
    assert!(before > 300, "{before} spans before the stall");
    std::fs::write(&stall, b"").unwrap();
    let mut max_rss_kib = 0u64;
    let stall_end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < stall_end {
        max_rss_kib = max_rss_kib.max(rss_kib(kspan_pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    let queued = metric(&metrics, "kspan_queue_spans");
    assert!(
        (0.0..=1000.0).contains(&queued),
        "queue {queued} beyond its bound"
    );
    let calls = metric(&metrics, "kspan_export_duration_seconds_count");
    let within = metric(&metrics, "kspan_export_duration_seconds_bucket{le=\"5.0\"}");
    assert_eq!(
        calls, within,
        "an export call outlived its 3 s limit: {metrics}"
    );
    let failed_calls = metric(&metrics, "kspan_export_requests_total{result=\"error\"}");
    assert!(
        failed_calls >= 10.0,
        "{failed_calls} calls timed out in 60 s"
    );
    let (code, ready) = http_get(metrics_port, "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("retrying"), "{ready}");

    std::fs::remove_file(&stall).unwrap();
    let recovered = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    rx.wait_for("spans made after the recovery", |s| {
        s.iter()
            .any(|v| v["start"].as_u64().unwrap() > recovered + 1_000_000_000)
    });
    let ticks = ticker.join().unwrap()["n"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (summary, _) = run.stop();
    let received: HashSet<String> = rx
        .spans()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect();
    let built = summary["spans_built"].as_u64().unwrap();
    let exported = summary["spans_exported"].as_u64().unwrap();
    let queue_full = summary["dropped"]["queue_full"].as_u64().unwrap();
    let export_failed = summary["dropped"]["export_failed"].as_u64().unwrap();
    eprintln!(
        "stall: ticks {ticks} built {built} exported {exported} queue_full {queue_full} \
         export_failed {export_failed} received {} max RSS {max_rss_kib} KiB",
        received.len()
    );
    assert!(built >= ticks, "every tick is a span");
    assert_eq!(exported + queue_full + export_failed, built, "{summary}");
    assert!(
        queue_full + export_failed > 0,
        "a 60 s stall at 200 spans/s must overflow a 1000-span queue"
    );
    assert!(
        received.len() as u64 >= exported,
        "every exported span arrived"
    );
    assert!(received.len() as u64 <= built);
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
    let run = run_to_grpc(
        &pid,
        grpc_port,
        &[
            "--export-timeout",
            "1s",
            "--batch-timeout",
            "100ms",
            "--metrics-addr",
            "",
        ],
    );
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
    for (var, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "abc",
            "OTEL_EXPORTER_OTLP_TIMEOUT is \"abc\"; use a whole number of milliseconds",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "zstd",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION is \"zstd\"; use gzip or none",
        ),
    ] {
        let e = run_fails_env(&[], None, &[endpoint, (var, value)]);
        assert!(e.contains(says), "{e}");
    }
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
