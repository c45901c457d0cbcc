//! `kspan hist` / `kspan top` on the real kernel against ground truth (strace's counts,
//! bpftrace's hist(), known sleeps and connects), and the terminal views driven in tmux (the
//! interactive histograms, `kspan run`'s one line per span).
//!
//! Run as root, one at a time: `cargo test -p agent --test hist -- --test-threads=1`.
use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::{
    cgroup2_root, free_port, http_client, require_root, HttpService, KspanProc, Trigger, KSPAN,
};

/// A running `kspan hist --json ...` (cumulative), stopped with SIGTERM.
struct Hist(KspanProc);

impl Hist {
    fn start(args: &[&str]) -> Hist {
        let mut cmd = Command::new(KSPAN);
        cmd.args(["hist", "--json", "--cumulative", "--interval", "200ms"])
            .args(args);
        Hist(KspanProc::start(cmd, "measuring"))
    }

    /// Stops and returns the last document.
    fn stop(mut self) -> Value {
        std::thread::sleep(Duration::from_millis(600));
        let out = self.0.stop(libc::SIGTERM);
        let last = out.lines().last().expect("at least one document");
        serde_json::from_str(last).expect("JSON document")
    }
}

fn row(doc: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("no such row in {doc}"))
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// strace's call counts (`-c`) for a command.
fn strace_counts(cmd: &[&str]) -> std::collections::HashMap<String, u64> {
    let out = std::env::temp_dir().join(format!("kspan-strace-{}", std::process::id()));
    let st = Command::new("strace")
        .args(["-c", "-o"])
        .arg(&out)
        .args(cmd)
        .stderr(Stdio::null())
        .status()
        .expect("strace");
    assert!(st.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut m = std::collections::HashMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
            if let Ok(calls) = f[3].parse::<u64>() {
                m.insert(f[f.len() - 1].to_string(), calls);
            }
        }
    }
    m
}

#[test]
fn dd_counts_match_strace_exactly() {
    require_root();
    assert!(
        have("strace"),
        "strace missing: KSPAN_SETUP_TEST=1 scripts/setup installs it"
    );
    let h = Hist::start(&["--view", "process", "--comm", "dd"]);
    let truth = strace_counts(&["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=200000"]);
    let doc = h.stop();
    assert_eq!(doc["view"], "process");
    assert_eq!(doc["proc_hist_full"], 0);
    let dd = row(&doc, |r| r["comm"] == "dd");
    let calls = |name: &str| -> u64 {
        dd["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == name)
            .map_or(0, |p| p[1].as_u64().unwrap())
    };
    assert!(truth["read"] >= 200_000, "{truth:?}");
    assert_eq!(calls("read"), truth["read"], "reads: kspan vs strace");
    assert_eq!(calls("write"), truth["write"], "writes: kspan vs strace");
    // Buckets are [lower, upper, count] and add up to the count.
    let sum: u64 = dd["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[2].as_u64().unwrap())
        .sum();
    assert_eq!(sum, dd["count"].as_u64().unwrap());
}

#[test]
fn ten_ms_sleeps_land_in_their_bucket() {
    require_root();
    let t = Trigger::spawn("sleeps", Some(50));
    let pid = t.pid().to_string();
    let h = Hist::start(&["--pid", &pid, "--syscalls", "clock_nanosleep"]);
    t.go();
    let doc = h.stop();
    let r = row(&doc, |r| r["syscall"] == "clock_nanosleep");
    assert_eq!(r["count"], 50);
    // 10 ms has bit length 24: [2^23, 2^24) ns.
    assert_eq!(
        r["buckets"],
        serde_json::json!([[8_388_608u64, 16_777_216u64, 50]])
    );
    let p50 = r["p50_ns"].as_u64().unwrap();
    assert!((8_388_608..16_777_216).contains(&p50));
}

#[test]
fn loopback_connect_and_accept_are_counted() {
    require_root();
    for (view, trigger) in [("connect", "tcp4"), ("accept", "tcp6")] {
        let t = Trigger::spawn(trigger, None);
        let pid = t.pid().to_string();
        let h = Hist::start(&["--pid", &pid, "--view", view]);
        t.go();
        let doc = h.stop();
        let r = row(&doc, |_| true);
        assert_eq!(r["label"], format!("tcp {view}"));
        assert_eq!(r["count"], 1, "{view}: {doc}");
    }
}

/// bpftrace running a script that fills `@h` with hist(), until stopped.
struct BpftraceHist {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl BpftraceHist {
    /// Starts bpftrace (JSON output) and waits until its probes are attached.
    fn start(script: &str) -> BpftraceHist {
        assert!(
            have("bpftrace"),
            "bpftrace missing: KSPAN_SETUP_TEST=1 scripts/setup installs it"
        );
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let t0 = Instant::now();
        while !line.contains("attached_probes") {
            line.clear();
            out.read_line(&mut line).unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bpftrace did not start"
            );
        }
        BpftraceHist { child, out }
    }

    /// Stops it; `@h` as {bucket lower bound (ns): count} (bpftrace's buckets are
    /// [min, max] inclusive powers of two).
    fn stop(mut self) -> std::collections::BTreeMap<u64, u64> {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        self.child.wait().unwrap();
        let hist_line = rest
            .lines()
            .find(|l| l.contains("\"type\": \"hist\""))
            .expect("bpftrace hist output");
        let bth: Value = serde_json::from_str(hist_line).unwrap();
        bth["data"]["@h"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["min"].as_u64().unwrap_or(0), b["count"].as_u64().unwrap()))
            .collect()
    }
}

/// A JSON row's non-empty buckets as {lower bound (ns): count}.
fn lower_buckets(r: &Value) -> std::collections::BTreeMap<u64, u64> {
    r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b[2].as_u64().unwrap() > 0)
        .map(|b| (b[0].as_u64().unwrap(), b[2].as_u64().unwrap()))
        .collect()
}

/// The same sleeps through bpftrace's hist(): the same total and the same buckets.
#[test]
fn bpftrace_hist_agrees() {
    require_root();
    // Sleeps of four lengths, each far from a bucket edge: the two tools take their own
    // timestamps, so a call lasting within a few microseconds of a power of two may land on
    // either side (dd's ~255 ns reads once put 5 % of calls across the 256 ns edge).
    let t = Trigger::spawn("sleep_mix", Some(10));
    let pid = t.pid().to_string();
    let bt = BpftraceHist::start(&format!(
        r#"tracepoint:raw_syscalls:sys_enter /pid == {pid} && args->id == 230/ {{ @s[tid] = nsecs; }}
tracepoint:raw_syscalls:sys_exit /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"#
    ));
    let h = Hist::start(&["--pid", &pid, "--syscalls", "clock_nanosleep"]);
    assert_eq!(t.go()["n"], 40);
    let doc = h.stop();
    let theirs = bt.stop();
    let ours = lower_buckets(row(&doc, |r| r["syscall"] == "clock_nanosleep"));
    let total_ours: u64 = ours.values().sum();
    let total_theirs: u64 = theirs.values().sum();
    assert_eq!(
        total_ours, total_theirs,
        "ours {ours:?} bpftrace {theirs:?}"
    );
    let keys: std::collections::BTreeSet<u64> = ours.keys().chain(theirs.keys()).copied().collect();
    let moved: u64 = keys
        .iter()
        .map(|k| {
            ours.get(k)
                .copied()
                .unwrap_or(0)
                .abs_diff(theirs.get(k).copied().unwrap_or(0))
        })
        .sum::<u64>()
        / 2;
    eprintln!("ours {ours:?}\nbpftrace {theirs:?}\nmoved across a bucket edge: {moved}");
    assert_eq!(total_ours, 40);
    assert_eq!(
        moved, 0,
        "calls in different buckets: ours {ours:?} bpftrace {theirs:?}"
    );
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmux session; it (and kspan in it) is killed when the test ends, pass
/// or fail.
struct Session {
    name: String,
    /// `capture-pane`'s options for what `pane` shows.
    capture: &'static [&'static str],
}

impl Session {
    /// A detached session of `cols` x `rows` running `cmd`.
    fn start(
        prefix: &str,
        (cols, rows): (u16, u16),
        cmd: &str,
        capture: &'static [&'static str],
    ) -> Session {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = tmux(&["kill-session", "-t", &name]);
        let (cols, rows) = (cols.to_string(), rows.to_string());
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            &cols,
            "-y",
            &rows,
            cmd,
        ]);
        Session { name, capture }
    }

    /// What the pane shows now.
    fn pane(&self) -> String {
        let mut args = vec!["capture-pane", "-p"];
        args.extend_from_slice(self.capture);
        args.extend(["-t", &self.name]);
        tmux(&args)
    }

    /// The pane once it shows `what` (at most 15 s).
    fn wait_for(&self, what: &str) -> String {
        let t0 = Instant::now();
        loop {
            let pane = self.pane();
            if pane.contains(what) {
                return pane;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no {what:?} in:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.name]);
    }
}

impl std::ops::Deref for Session {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

#[test]
fn interactive_view_in_tmux() {
    require_root();
    assert!(
        have("tmux"),
        "tmux missing: KSPAN_SETUP_TEST=1 scripts/setup installs it"
    );
    let cmd = format!("{KSPAN} hist --comm dd --interval 300ms; echo EXITED $?; sleep 30");
    let session = Session::start("kspan-test", (120, 40), &cmd, &[]);
    let capture = || session.pane();
    let wait_for = |what: &str| session.wait_for(what);
    wait_for("q quit");
    let st = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=20000"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Cumulative, so the counts stay on screen.
    tmux(&["send-keys", "-t", &session, "c"]);
    let pane = wait_for("nsecs");
    assert!(
        pane.contains("NAME") && pane.contains("COUNT") && pane.contains("P99"),
        "{pane}"
    );
    assert!(pane.contains("read"), "{pane}");
    assert!(pane.contains("since start"), "{pane}");
    // Resize: still running and drawing.
    tmux(&["resize-window", "-t", &session, "-x", "60", "-y", "15"]);
    std::thread::sleep(Duration::from_millis(800));
    tmux(&["resize-window", "-t", &session, "-x", "100", "-y", "30"]);
    wait_for("q quit");
    assert!(!capture().contains("EXITED"));
    tmux(&["send-keys", "-t", &session, "q"]);
    let pane = wait_for("EXITED");
    assert!(pane.contains("EXITED 0"), "{pane}");
}

#[test]
fn top_prints_a_table() {
    require_root();
    let out = Command::new(KSPAN)
        .args([
            "top",
            "--by",
            "syscall",
            "--plain",
            "--interval",
            "300ms",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("SYSCALL").count(), 2, "{text}");
    assert!(text.contains("COUNT") && text.contains("P99"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(KSPAN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["hist", "--syscalls", "reed"]).contains("unknown syscall \"reed\""));
    let e = run(&["hist", "--view", "sideways"]);
    assert!(
        e.contains("invalid value 'sideways'") && e.contains("syscall, process, connect, accept"),
        "{e}"
    );
    assert!(run(&["hist", "--interval", "-1s"]).contains("invalid value '-1s'"));
    assert!(run(&["hist", "--interval", "0"]).contains("--interval must be more than 0"));
    assert!(run(&["top", "--by", "thread"]).contains("invalid value 'thread'"));
}

/// When the per-process map is full, the calls it cannot count are counted: per-process
/// totals plus `proc_hist_full` equal the per-syscall totals, exactly. 5,000 short-lived
/// processes (about 40 keys each) overflow its 65,536 entries.
#[test]
fn a_full_per_process_map_is_counted() {
    require_root();
    let cg = format!("{}/kspan-procfull-{}", cgroup2_root(), std::process::id());
    std::fs::create_dir_all(&cg).unwrap();
    let per_syscall = Hist::start(&["--cgroup", &cg]);
    let per_process = Hist::start(&["--view", "process", "--cgroup", &cg]);
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {cg}/cgroup.procs && i=0; while [ $i -lt 5000 ]; do /bin/true; i=$((i+1)); done"
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let procs = per_process.stop();
    let sys = per_syscall.stop();
    let _ = std::fs::remove_dir(&cg);
    let total = |doc: &Value| -> u64 {
        doc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    let full = procs["proc_hist_full"].as_u64().unwrap();
    eprintln!(
        "per-syscall {} per-process {} uncounted {full}",
        total(&sys),
        total(&procs)
    );
    assert!(full > 0, "5,000 processes did not fill the map");
    assert_eq!(total(&procs) + full, total(&sys));
}

/// `kspan top --by route --json`: requests, errors and latency per (service, kind, route),
/// against a Python service that takes 20 ms per request, called 20 times on two order ids
/// and 5 times on a path that fails.
#[test]
fn top_by_route_counts_requests_errors_and_latency() {
    require_root();
    let port = free_port();
    let _server = HttpService::start(port, &[], 20);
    let mut cmd = Command::new(KSPAN);
    cmd.args([
        "top",
        "--by",
        "route",
        "--json",
        "--interval",
        "500ms",
        "--comm",
        "python3",
    ]);
    let mut top = KspanProc::start(cmd, "following HTTP requests");
    for (path, n) in [("/orders/1", "10"), ("/orders/2", "10"), ("/fail", "5")] {
        http_client(&["get", &format!("http://127.0.0.1:{port}{path}"), n]);
    }
    std::thread::sleep(Duration::from_millis(700));
    let out = top.stop(libc::SIGTERM);
    // Sum the intervals.
    let mut totals: std::collections::HashMap<(String, String), (u64, u64, u64)> =
        Default::default();
    for line in out.lines() {
        let doc: Value = serde_json::from_str(line).expect("JSON document");
        for r in doc["rows"].as_array().unwrap() {
            let k = (
                r["kind"].as_str().unwrap().to_string(),
                r["route"].as_str().unwrap().to_string(),
            );
            let e = totals.entry(k).or_default();
            e.0 += r["requests"].as_u64().unwrap();
            e.1 += r["errors"].as_u64().unwrap();
            e.2 = e.2.max(r["p50_ns"].as_u64().unwrap());
            assert!(r["p99_ns"].as_u64() >= r["p50_ns"].as_u64());
        }
    }
    let get = |kind: &str, route: &str| totals[&(kind.to_string(), route.to_string())];
    let (n, errors, p50) = get("server", "GET /orders/{id}");
    assert_eq!((n, errors), (20, 0), "{totals:?}");
    assert!(p50 >= 20_000_000, "the service sleeps 20 ms: p50 {p50} ns");
    assert_eq!(get("server", "GET /fail").0, 5);
    assert_eq!(get("server", "GET /fail").1, 5, "500s are server errors");
    assert_eq!(get("client", "GET /orders/{id}").0, 20);
    assert_eq!(get("client", "GET /fail").1, 5);
}

/// `kspan run` on a terminal: one line per span with fixed columns, the spans of a chain of
/// requests (client -> B -> C) indented under their parents, a slow syscall with its
/// duration, and at Ctrl-C the summary as a short block.
#[test]
fn run_on_a_terminal_prints_one_line_per_span() {
    require_root();
    let (pb, pc) = (free_port(), free_port());
    let _c = HttpService::start(pc, &[], 0);
    let _b = HttpService::start(pb, &[format!("http://127.0.0.1:{pc}/stock/7")], 0);
    let cmd = format!(
        "{KSPAN} run --comm python3 --sampling off --no-tcp --metrics-addr '' \
         --min-duration 150ms --batch-timeout 300ms; echo EXITED $?; sleep 30"
    );
    let session = Session::start("kspan-run", (200, 60), &cmd, &["-J", "-S", "-200"]);
    let pane = || session.pane();
    let wait_for = |what: &str| session.wait_for(what);
    wait_for("stop with Ctrl-C");
    assert!(pane().contains("spans to stdout (one line per span)"));
    let r = http_client(&["get", &format!("http://127.0.0.1:{pb}/orders/1"), "1"]);
    assert_eq!(r["status"], serde_json::json!([200]));
    let st = Command::new("python3")
        .args(["-c", "import time; time.sleep(0.3)"])
        .status()
        .unwrap();
    assert!(st.success());
    let text = wait_for("clock_nanosleep");
    let text = if text.contains("GET /stock/{id}") {
        text
    } else {
        wait_for("GET /stock/{id}")
    };
    let find = |kind: &str, name: &str| -> &str {
        text.lines()
            .find(|l| l.contains(&format!(" {kind} ")) && l.contains(&format!(" {name}  ")))
            .unwrap_or_else(|| panic!("no {kind} {name} line in:\n{text}"))
    };
    let chain = [
        find("client", "GET /orders/{id}"),
        find("server", "GET /orders/{id}"),
        find("client", "GET /stock/{id}"),
        find("server", "GET /stock/{id}"),
    ];
    let name_at: Vec<usize> = chain.iter().map(|l| l.find("GET /").unwrap()).collect();
    assert_eq!(
        name_at,
        vec![name_at[0], name_at[0] + 2, name_at[0] + 4, name_at[0] + 6],
        "each request two spaces under its parent:\n{}",
        chain.join("\n")
    );
    for l in chain {
        // HH:MM:SS.mmm, then duration, service, kind, status, trace and span ids.
        let b = l.as_bytes();
        assert!(
            b[2] == b':' && b[5] == b':' && b[8] == b'.' && b[12] == b' ',
            "{l}"
        );
        assert!(l.contains(" ok ") && l.contains("status=200"), "{l}");
        let trace = &l[name_at[0] - 18..name_at[0] - 10];
        assert!(trace.bytes().all(|c| c.is_ascii_hexdigit()), "{l}");
        assert_eq!(
            &chain[0][name_at[0] - 18..name_at[0] - 10],
            trace,
            "one trace"
        );
    }
    let sleep = text
        .lines()
        .find(|l| l.contains("clock_nanosleep"))
        .unwrap();
    assert!(sleep.contains(" intern ok "), "{sleep}");
    let ms: f64 = sleep[14..23].trim().trim_end_matches("ms").parse().unwrap();
    assert!((299.0..400.0).contains(&ms), "{sleep}");
    tmux(&["send-keys", "-t", &session, "C-c"]);
    let end = wait_for("EXITED");
    assert!(end.contains("EXITED 0"), "{end}");
    assert!(
        end.contains("kspan: summary\n  spans ") && end.contains("  requests "),
        "{end}"
    );
}

/// `kspan run | head -3` stops kspan promptly and cleanly: exit 0, no retry warning, and
/// the spans it could not write counted.
#[test]
fn run_piped_to_head_exits_promptly() {
    require_root();
    let t0 = Instant::now();
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {KSPAN} run --sampling off --min-duration 0 \
                 --metrics-addr '' | head -3; echo \"status ${{PIPESTATUS[0]}}\" >&2"
            ),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(t0.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains("status 0"), "{err}");
    assert!(!err.contains("will retry"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3);
    for l in stdout.lines() {
        serde_json::from_str::<Value>(l).expect("an OTLP JSON line");
    }
    let summary: Value = serde_json::from_str(
        err.lines()
            .find_map(|l| l.strip_prefix("kspan: summary "))
            .expect("summary line"),
    )
    .unwrap();
    let built = summary["spans_built"].as_u64().unwrap();
    let accounted = summary["spans_exported"].as_u64().unwrap()
        + summary["dropped"]["export_failed"].as_u64().unwrap();
    assert_eq!(built, accounted, "{summary}");
}

/// `tests/data/funcs.c`, built for this test run.
fn funcs_program() -> String {
    let dir = common::tempdir("funcs");
    let bin = dir.join("funcs");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/funcs.c");
    let st = Command::new("gcc")
        .args(["-O1", "-pthread", "-o", bin.to_str().unwrap(), src])
        .status()
        .expect("gcc (scripts/setup installs build-essential)");
    assert!(st.success(), "gcc failed");
    bin.to_str().unwrap().to_string()
}

/// A JSON row's buckets as {bit length: count}, the program's own form.
fn bit_buckets(r: &Value) -> std::collections::BTreeMap<String, u64> {
    r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b[2].as_u64().unwrap() > 0)
        .map(|b| {
            // Bucket [2^(k-1), 2^k) holds durations of bit length k.
            let hi = b[1].as_u64().unwrap();
            (
                (64 - (hi - 1).leading_zeros()).to_string(),
                b[2].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Functions of a C program: counts and buckets equal the program's own timing of each call
/// (recursion nested four deep included), a function left by longjmp or by its thread's
/// exit is never timed and is counted, and bpftrace's uprobe/uretprobe hist() agrees on the
/// same run.
#[test]
fn functions_match_the_programs_own_timing_and_bpftrace() {
    require_root();
    let bin = funcs_program();
    let bt = BpftraceHist::start(&format!(
        "uprobe:{bin}:sleepy {{ @s[tid] = nsecs; }} \
         uretprobe:{bin}:sleepy /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
    ));
    let spec = format!("{bin}:sleepy,{bin}:recurse,{bin}:thrower,{bin}:exiter");
    let h = Hist::start(&["--func", &spec]);
    let out = Command::new(&bin).arg("20").output().unwrap();
    assert!(out.status.success());
    let own: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = h.stop();
    let theirs = bt.stop();
    assert_eq!(doc["view"], "function");
    let sleepy = row(&doc, |r| r["function"] == "sleepy");
    let recurse = row(&doc, |r| r["function"] == "recurse");
    let thrower = row(&doc, |r| r["function"] == "thrower");
    assert_eq!(sleepy["file"], bin.as_str());
    assert_eq!(sleepy["count"], 20);
    assert_eq!(recurse["count"], 80);
    assert_eq!(
        thrower["count"], 0,
        "a call left by longjmp has no duration"
    );
    for (name, r) in [("sleepy", sleepy), ("recurse", recurse)] {
        let theirs: std::collections::BTreeMap<String, u64> =
            serde_json::from_value(own[name].clone()).unwrap();
        assert_eq!(bit_buckets(r), theirs, "{name}: ours vs the program's own");
    }
    // recurse(3) nests four calls of ~1.5, 3, 4.6 and 6.1 ms.
    assert_eq!(
        own["recurse"],
        serde_json::json!({"21": 20, "22": 20, "23": 40})
    );
    // 20 calls left by longjmp, one thread ended inside a call.
    assert_eq!(doc["func_losses"]["unfinished"], 21, "{doc}");
    assert_eq!(doc["func_losses"]["too_deep"], 0);

    let ours = lower_buckets(sleepy);
    assert_eq!(ours, theirs, "sleepy: ours vs bpftrace");
}

/// Library functions: libc's getaddrinfo from a Python loop (per process too), a glob over
/// libssl's SSL_write* under Python's ssl module, and the mistakes a user makes.
#[test]
fn library_functions_by_name_and_glob() {
    require_root();
    let t = Trigger::spawn("getaddrinfo", Some(50));
    let pid = t.pid().to_string();
    let h = Hist::start(&[
        "--func",
        "libc.so.6:getaddrinfo",
        "--pid",
        &pid,
        "--view",
        "process",
    ]);
    assert_eq!(t.go()["n"], 50);
    let doc = h.stop();
    let r = row(&doc, |r| r["function"] == "getaddrinfo");
    assert_eq!(r["count"], 50, "{doc}");
    assert_eq!(r["pid"].to_string(), pid);
    assert!(r["file"].as_str().unwrap().ends_with("libc.so.6"), "{r}");

    let t = Trigger::spawn("tls_echo", Some(10));
    let pid = t.pid().to_string();
    let h = Hist::start(&["--func", "libssl.so.3:SSL_write*", "--pid", &pid]);
    let writes = t.go()["writes"].as_u64().unwrap();
    let doc = h.stop();
    let names: Vec<&str> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["function"].as_str().unwrap())
        .collect();
    for f in ["SSL_write", "SSL_write_ex", "SSL_write_early_data"] {
        assert!(names.contains(&f), "{f} not probed: {names:?}");
    }
    // Python's ssl writes with SSL_write_ex, once per sendall of a short message.
    assert_eq!(
        row(&doc, |r| r["function"] == "SSL_write_ex")["count"],
        writes
    );
    assert_eq!(row(&doc, |r| r["function"] == "SSL_write")["count"], 0);

    let err = |args: &[&str]| {
        let out = Command::new(KSPAN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["hist", "--func", "libc.so.6:getaddrinf"]);
    assert!(e.contains("no function \"getaddrinf\""), "{e}");
    assert!(e.contains("did you mean getaddrinfo"), "{e}");
    assert!(e.contains("stripped"), "{e}");
    let e = err(&["hist", "--func", "/no/such/app:main"]);
    assert!(e.contains("no file \"/no/such/app\""), "{e}");
    let e = err(&["hist", "--func", "getaddrinfo"]);
    assert!(e.contains("expected FILE:SYMBOL"), "{e}");
    let e = err(&["hist", "--func", "libssl.so.3:SSL_*"]);
    assert!(e.contains("narrow the pattern"), "{e}");
    let e = err(&["hist", "--func", "/etc/passwd:x"]);
    assert!(e.contains("not an ELF"), "{e}");
    let e = err(&[
        "hist",
        "--func",
        "libc.so.6:getaddrinfo",
        "--view",
        "syscall",
    ]);
    assert!(e.contains("with --func the views are"), "{e}");
}
