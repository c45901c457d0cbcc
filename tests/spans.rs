//! End to end, syscall and TCP spans from `kspan run` under load: the overhead governor,
//! servers older than kspan, expected failures, floods and ring-buffer pressure.
//!
//! Run as root, one at a time: `cargo test -p agent --test spans -- --test-threads=1`.
use std::{
    collections::HashSet,
    io::{Read, Write},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

mod common;

use common::{
    free_port,
    nginx::Nginx,
    nginx_pids,
    otlp::{cpu_seconds, http_get, Receiver, Run},
    require_root, wait_listening, Trigger,
};

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
    let nginx = Nginx::start(ngx_port, 2).expect("nginx");
    let ngx_pids = nginx_pids(&nginx);
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
        let mut args = vec!["--no-syscalls"];
        if let Some(f) = filter {
            args.extend(["--comm", f]);
        }
        let run = rx.run(&args);
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
        let mut args = vec!["--pid", &pid, "--min-duration", "10ms"];
        if !table_on {
            args.extend(["--config", all_errors.to_str().unwrap()]);
        }
        let run = rx.run(&args);
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
    let run = rx.run(&["--pid", &pid, "--sampling", "on"]);
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
    let run = rx.run(&[
        "--pid",
        &pid,
        "--syscalls",
        "getppid,openat",
        "--min-duration",
        "0",
        "--ring-buffer-bytes",
        "16384",
        "--no-tcp",
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
