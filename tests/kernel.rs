//! Privileged integration tests: the real `kspan` binary, the real kernel, real workloads.
//!
//! Run as root, one at a time (they share kernel state):
//! `cargo test -p agent --test kernel -- --test-threads=1`.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::{
    free_port, http_client, loaded_prog_ids, prog_ids_of, require_root, HttpService, KspanProc,
    Trigger, KSPAN,
};

/// A running `kspan events`.
struct Kspan(KspanProc);

impl Kspan {
    fn start(args: &[&str]) -> Kspan {
        let mut cmd = Command::new(KSPAN);
        cmd.arg("events").args(args);
        Kspan(KspanProc::start(cmd, "tracing"))
    }

    /// Stops with SIGINT; returns (events, summary).
    fn stop(mut self) -> (Vec<Value>, Value) {
        // Let the 10 ms drain timer pick up the last events before the signal.
        std::thread::sleep(Duration::from_millis(50));
        let out = self.0.stop(libc::SIGINT);
        let mut events: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        let summary = events.pop().expect("summary line");
        assert_eq!(summary["kind"], "summary");
        (events, summary)
    }
}

fn run_trigger(action: &str, arg: Option<u64>, extra: &[&str]) -> (Value, Vec<Value>, Value) {
    require_root();
    let trigger = Trigger::spawn(action, arg);
    let pid = trigger.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(extra);
    let kspan = Kspan::start(&args);
    let result = trigger.go();
    let (events, summary) = kspan.stop();
    (result, events, summary)
}

fn events_of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn syscalls_named<'a>(events: &'a [Value], names: &[&str]) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "syscall" && names.iter().any(|n| e["syscall"] == *n))
        .collect()
}

#[test]
fn sleep_20ms_gives_event_with_tid_and_duration() {
    let (result, events, summary) = run_trigger("sleep", None, &[]);
    let tid = result["tid"].as_u64().expect("tid");
    let sleeps: Vec<_> = syscalls_named(&events, &["nanosleep", "clock_nanosleep"])
        .into_iter()
        .filter(|e| e["tid"].as_u64() == Some(tid))
        .collect();
    assert_eq!(sleeps.len(), 1, "one sleep by tid {tid}: {sleeps:?}");
    let d = sleeps[0]["duration_ns"].as_u64().expect("duration");
    assert!((20_000_000..200_000_000).contains(&d), "duration {d}");
    assert_ne!(
        sleeps[0]["pid"], sleeps[0]["tid"],
        "the sleep ran in a second thread"
    );
    // The wall-clock start is within the test's run.
    let ts = sleeps[0]["ts_unix_ns"].as_u64().expect("ts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    assert!(now - ts < 30_000_000_000, "ts {ts} vs now {now}");
    assert_eq!(summary["lost_ringbuf_full"], 0);
}

#[test]
fn openat_through_a_file_is_enotdir() {
    let (_, events, _) = run_trigger("openat", None, &[]);
    let opens: Vec<_> = syscalls_named(&events, &["openat"])
        .into_iter()
        .filter(|e| e["errno"] == "ENOTDIR")
        .collect();
    assert!(!opens.is_empty(), "no failed openat in {events:?}");
    let last = opens.last().expect("openat");
    assert_eq!(last["ret"], -20);
}

#[test]
fn pipe_read_of_n_bytes_returns_n() {
    let n = 4321;
    let (result, events, _) = run_trigger("pipe", Some(n), &[]);
    let fd = result["read_fd"].as_u64().expect("fd");
    let reads: Vec<_> = syscalls_named(&events, &["read"])
        .into_iter()
        .filter(|e| e["fd"].as_u64() == Some(fd))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["ret"].as_u64(), Some(n));
}

fn check_tcp(action: &str, family: &str, loopback: &str) {
    let (result, events, _) = run_trigger(action, None, &["--syscalls", "connect"]);
    let lport = result["listen_port"].as_u64().expect("listen port");
    let cport = result["client_port"].as_u64().expect("client port");
    let pid = result["pid"].as_u64().expect("pid");
    let connects = events_of_kind(&events, "tcp_connect");
    assert_eq!(connects.len(), 1, "{events:?}");
    let c = connects[0];
    assert_eq!(c["pid"].as_u64(), Some(pid));
    assert_eq!(c["sport"].as_u64(), Some(cport));
    assert_eq!(c["dport"].as_u64(), Some(lport));
    assert_eq!(c["family"], family);
    assert_eq!(c["daddr"], loopback);
    assert_eq!(c["failed"], false);
    let d = c["duration_ns"].as_u64().expect("duration");
    assert!(d > 0 && d < 1_000_000_000, "connect latency {d}");

    let accepts = events_of_kind(&events, "tcp_accept");
    assert_eq!(accepts.len(), 1, "{events:?}");
    let a = accepts[0];
    assert_eq!(a["pid"].as_u64(), Some(pid), "listener's pid");
    assert_eq!(a["pid_known"], true);
    assert_eq!(a["sport"].as_u64(), Some(lport));
    assert_eq!(a["dport"].as_u64(), Some(cport));
    // Server-side handshake time (first SYN-ACK to completing ACK): a loopback round trip.
    assert_eq!(a["handshake_known"], true, "{a}");
    let h = a["duration_ns"].as_u64().expect("handshake");
    assert!(h > 0 && h < 100_000_000, "loopback handshake {h} ns");
    assert_eq!(a["retransmits"], 0);

    // Both ends close: two close events with lifetimes.
    let closes = events_of_kind(&events, "tcp_close");
    assert_eq!(closes.len(), 2, "{events:?}");
    for c in closes {
        let life = c["duration_ns"].as_u64().expect("lifetime");
        assert!(
            life >= 40_000_000,
            "lifetime {life} covers the 50 ms the trigger waits"
        );
        assert_eq!(c["retransmits"], 0);
    }
    // The connect syscall itself is there too (syscall filter).
    assert_eq!(syscalls_named(&events, &["connect"]).len(), 1);
    assert!(events
        .iter()
        .all(|e| e["kind"] != "syscall" || e["syscall"] == "connect"));
}

#[test]
fn tcp_ipv4_connect_and_accept() {
    check_tcp("tcp4", "ipv4", "127.0.0.1");
}

#[test]
fn tcp_ipv6_connect_and_accept() {
    check_tcp("tcp6", "ipv6", "::1");
}

/// Drops pure ACKs (flags exactly ACK) to a local port while it lives: the final ACK of a
/// handshake is lost, and the client's first data segment completes it instead.
struct HoldBackAcks {
    table: String,
}

impl HoldBackAcks {
    fn new(port: u16) -> HoldBackAcks {
        let table = format!("kspan_test_{}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             tcp dport {port} tcp flags == ack drop;\n  }}\n}}\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (nftables; scripts/setup installs it)");
        use std::io::Write;
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        assert!(nft.wait().expect("nft").success(), "nft refused {rules}");
        HoldBackAcks { table }
    }
}

impl Drop for HoldBackAcks {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// The accept event carries the server's view of the handshake: with the final ACK held
/// back, the client sees a fast connect while the server waits until the data arrives.
fn check_held_back_handshake(delay_ms: u64) -> (Value, Value) {
    require_root();
    let port = free_port();
    let _hold = HoldBackAcks::new(port);
    let trigger = Trigger::spawn_with("handshake", &[port.to_string(), delay_ms.to_string()]);
    let pid = trigger.pid().to_string();
    let kspan = Kspan::start(&["--pid", &pid, "--syscalls", "connect"]);
    let result = trigger.go();
    let (events, _) = kspan.stop();
    let cport = result["client_port"].as_u64().expect("client port");
    let accepts = events_of_kind(&events, "tcp_accept");
    assert_eq!(accepts.len(), 1, "{events:?}");
    let a = accepts[0].clone();
    assert_eq!(a["pid"].as_u64(), result["pid"].as_u64());
    assert_eq!(a["sport"].as_u64(), Some(u64::from(port)));
    assert_eq!(a["dport"].as_u64(), Some(cport));
    assert_eq!(a["handshake_known"], true, "{a}");
    let connects = events_of_kind(&events, "tcp_connect");
    assert_eq!(connects.len(), 1, "{events:?}");
    let c = connects[0].clone();
    let cd = c["duration_ns"].as_u64().expect("connect duration");
    assert!(cd < 100_000_000, "client-side connect took {cd} ns");
    // The accept span starts with the first SYN-ACK, within the client's connect.
    let (a_ts, c_ts) = (
        a["ts_unix_ns"].as_u64().unwrap(),
        c["ts_unix_ns"].as_u64().unwrap(),
    );
    assert!(
        a_ts >= c_ts && a_ts <= c_ts + cd,
        "accept {a_ts} vs connect {c_ts}+{cd}"
    );
    (a, result)
}

#[test]
fn accept_handshake_time_is_the_servers_view() {
    let (a, _) = check_held_back_handshake(300);
    let d = a["duration_ns"].as_u64().expect("duration");
    assert!(
        (300_000_000..1_000_000_000).contains(&d),
        "handshake {d} ns, expected the 300 ms the ACK was held back"
    );
    assert_eq!(a["retransmits"], 0);
}

#[test]
fn accept_handshake_time_counts_from_the_first_synack() {
    // Held back past the 1 s SYN-ACK retransmit timer: the kernel retransmits the SYN-ACK
    // once (the next is due at 3 s) and takes no RTT sample; kspan uses the first SYN-ACK's
    // send time instead.
    let (a, _) = check_held_back_handshake(1500);
    let d = a["duration_ns"].as_u64().expect("duration");
    assert!(
        (1_500_000_000..2_900_000_000).contains(&d),
        "handshake {d} ns, expected the 1.5 s the ACK was held back"
    );
    assert_eq!(a["retransmits"], 1, "{a}");
}

fn check_refused(action: &str) {
    let (result, events, _) = run_trigger(action, None, &[]);
    let port = result["port"].as_u64().expect("port");
    let failed: Vec<_> = events_of_kind(&events, "tcp_connect")
        .into_iter()
        .filter(|e| e["failed"] == true)
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["dport"].as_u64(), Some(port));
    assert_eq!(failed[0]["errno"], "ECONNREFUSED");
    let connect = syscalls_named(&events, &["connect"]);
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0]["errno"], "ECONNREFUSED");
}

#[test]
fn tcp_connect_refused_ipv4() {
    check_refused("refused4");
}

#[test]
fn tcp_connect_refused_ipv6() {
    check_refused("refused6");
}

#[test]
fn unselected_pid_never_appears() {
    require_root();
    let selected = Trigger::spawn("openat", None);
    let other = Trigger::spawn("openat", None);
    let pid = selected.pid().to_string();
    let kspan = Kspan::start(&["--pid", &pid]);
    let other_pid = other.pid() as u64;
    other.go();
    selected.go();
    let (events, _) = kspan.stop();
    assert!(!events.is_empty());
    assert!(events
        .iter()
        .all(|e| e["pid"].as_u64() == Some(pid.parse().expect("pid"))));
    assert!(events.iter().all(|e| e["pid"].as_u64() != Some(other_pid)));
}

#[test]
fn comm_and_min_duration_filters() {
    // python3's comm is "python3": a different comm selects nothing of it.
    let (_, events, summary) = run_trigger("openat", None, &["--comm", "no-such-comm"]);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(summary["syscalls_measured"], 0);
    // A 10 ms minimum keeps the 20 ms sleep and drops the rest (successful, short calls).
    let (_, events, summary) =
        run_trigger("sleep", None, &["--min-duration", "10ms", "--no-failed"]);
    assert!(!events.is_empty());
    for e in &events {
        if e["kind"] == "syscall" {
            assert!(e["duration_ns"].as_u64().expect("d") >= 10_000_000, "{e}");
        }
    }
    assert!(summary["syscalls_measured"].as_u64().expect("n") > events.len() as u64);
}

#[test]
fn overflow_received_plus_lost_equals_produced() {
    let n: u64 = 20_000;
    require_root();
    let trigger = Trigger::spawn("getppid", Some(n));
    let pid = trigger.pid().to_string();
    // 4 KiB ring buffer drained every 5 s: it overflows after a few dozen events.
    let kspan = Kspan::start(&[
        "--pid",
        &pid,
        "--syscalls",
        "getppid",
        "--ring-buffer-bytes",
        "4096",
        "--drain-interval",
        "5s",
        "--wakeup-bytes",
        "0",
        "--no-tcp",
    ]);
    trigger.go();
    let (events, summary) = kspan.stop();
    let received = events.len() as u64;
    let lost = summary["lost_ringbuf_full"].as_u64().expect("lost");
    // Successful calls are shed once the ring is 3/4 full (room kept for failures); what
    // still does not fit is lost. Both are counted.
    let shed = summary["shed_ringbuf"].as_u64().expect("shed");
    assert!(shed > 0, "the ring buffer should have filled");
    assert_eq!(
        received + lost + shed,
        n,
        "received {received} + lost {lost} + shed {shed}"
    );
    assert_eq!(summary["events"].as_u64(), Some(received));
    assert_eq!(summary["syscalls_measured"].as_u64(), Some(n));
}

#[test]
fn check_reports_can_run() {
    require_root();
    let out = Command::new(KSPAN)
        .arg("check")
        .output()
        .expect("kspan check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("kspan can run here"), "{text}");
    // It ends with what to try next.
    assert!(
        text.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("next: sudo kspan run")),
        "{text}"
    );
    assert!(text.contains("ok   load and attach"), "{text}");
    // This kernel has BTF: the accept handshake fields are found.
    assert!(
        text.contains("ok   btf") && text.contains("tcp_sock.srtt_us (+"),
        "{text}"
    );
}

/// Runs kspan as an unprivileged user with no capabilities.
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(KSPAN)
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn unprivileged_gets_a_clear_message() {
    require_root();
    let out = as_nobody(&["events", "--duration", "1s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("CAP_BPF"), "{err}");
    let out = as_nobody(&["check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL privilege"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = Command::new(KSPAN)
        .args(["events", "--syscalls", "no_such_syscall"])
        .output()
        .expect("kspan");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown syscall \"no_such_syscall\""), "{err}");
    let out = Command::new(KSPAN)
        .args(["events", "--ring-buffer-bytes", "5000"])
        .output()
        .expect("kspan");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = Command::new(KSPAN)
        .args(["events", "--duration", "-1s"])
        .output()
        .expect("kspan");
    assert!(!out.status.success());
}

#[test]
fn stops_at_duration_with_summary() {
    require_root();
    let start = Instant::now();
    let out = Command::new(KSPAN)
        .args(["events", "--duration", "300ms", "--comm", "nothing-here"])
        .output()
        .expect("kspan");
    assert!(out.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let last: Value = serde_json::from_str(text.lines().last().expect("line")).expect("json");
    assert_eq!(last["kind"], "summary");
    assert_eq!(last["events"], 0);
}

#[test]
fn in_kernel_histograms_count_exactly() {
    use agent::capture::{Capture, CaptureConfig};
    require_root();
    let n: u64 = 5_000;
    let trigger = Trigger::spawn("getppid", Some(n));
    let pid = trigger.pid();
    let getppid = agent::names::syscall_number("getppid").expect("getppid");
    // Histograms only: no events cross to userspace.
    let capture = Capture::start(CaptureConfig {
        pids: vec![pid],
        emit_syscalls: false,
        emit_tcp: false,
        proc_hist: true,
        ..Default::default()
    })
    .expect("capture");
    trigger.go();
    let hists = capture.syscall_histograms().expect("histograms");
    let (_, buckets) = hists
        .iter()
        .find(|(nr, _)| *nr == getppid)
        .expect("getppid histogram");
    assert_eq!(buckets.iter().sum::<u64>(), n);
    // getppid takes well under 1 ms: nothing in buckets >= 2^20 ns.
    assert_eq!(buckets[21..].iter().sum::<u64>(), 0);
    let per_proc: u64 = capture
        .proc_histograms()
        .expect("per-process histograms")
        .iter()
        .filter(|(k, _)| k.pid == pid && u32::from(k.nr) == getppid)
        .map(|(_, c)| c)
        .sum();
    assert_eq!(per_proc, n);
    let counters = capture.counters();
    assert_eq!(counters.submitted, 0, "histogram-only mode made events");
    assert!(counters.syscalls_measured >= n);
}

/// Names (as bpftool shows them, at most 15 bytes) of kspan's programs still loaded.
/// Nothing stays attached after a clean stop (SIGTERM) or a crash (SIGKILL).
#[test]
fn programs_are_gone_after_exit_and_after_a_crash() {
    require_root();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let k = Kspan::start(&["--comm", "nothing-here"]);
        // Only this kspan's programs count: another agent on the host is not our business.
        let ours = prog_ids_of(k.0.pid());
        assert!(ours.len() >= 5, "{ours:?}: kspan's programs while running");
        let loaded = loaded_prog_ids();
        assert!(
            ours.iter().all(|id| loaded.contains(id)),
            "{ours:?} {loaded:?}"
        );
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(k.0.pid() as i32, signal) };
        drop(k);
        let t0 = Instant::now();
        let left = loop {
            let loaded = loaded_prog_ids();
            let left: Vec<u64> = ours
                .iter()
                .copied()
                .filter(|id| loaded.contains(id))
                .collect();
            if left.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break left;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            left.is_empty(),
            "programs {left:?} left after signal {signal}"
        );
    }
}

/// `kspan events` shows each HTTP exchange once per side: the request and its response in
/// one record, with the first line masked, the status, the bytes each way (a 1 MiB response
/// is one record too), and the trace context the kernel assigned: the server's parent is
/// the client's span on the other end of the connection.
#[test]
fn http_exchanges_are_events() {
    require_root();
    let port = free_port();
    let server = HttpService::start(port, &[], 0);
    let server_pid = server.pid();
    let kspan = Kspan::start(&["--comm", "python3", "--no-syscalls", "--no-tcp"]);
    http_client(&[
        "get",
        &format!("http://127.0.0.1:{port}/x?email=jo@example.com"),
        "1",
    ]);
    http_client(&["get", &format!("http://127.0.0.1:{port}/big"), "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let (events, summary) = kspan.stop();
    drop(server);
    let http = events_of_kind(&events, "http");
    assert_eq!(http.len(), 4, "one record per exchange and side: {http:#?}");
    let find = |role: &str, line: &str| {
        *http
            .iter()
            .find(|e| e["http"]["role"] == role && e["http"]["request_line"] == line)
            .unwrap_or_else(|| panic!("no {role} {line} in {http:#?}"))
    };
    let x = "GET /x?email=*** HTTP/1.1";
    let (server, client) = (find("server", x), find("client", x));
    assert_eq!(server["pid"].as_i64(), Some(server_pid));
    for e in [server, client] {
        assert_eq!(e["http"]["status"], 200);
        assert!(e["http"]["request_bytes"].as_u64().unwrap() > 30);
    }
    assert_eq!(server["http"]["parent"], "peer");
    assert_eq!(server["http"]["parent_span_id"], client["http"]["span_id"]);
    assert_eq!(server["http"]["trace_id"], client["http"]["trace_id"]);
    assert_eq!(client["http"]["parent"], "none");
    assert_eq!(server["sport"], port);
    assert_eq!(client["dport"], port);
    // The server's span starts when the request was read, the client's when it was written.
    assert!(server["ts_unix_ns"].as_u64() >= client["ts_unix_ns"].as_u64());
    for role in ["server", "client"] {
        let big = find(role, "GET /big HTTP/1.1");
        assert!(
            big["http"]["response_bytes"].as_u64().unwrap() > 1 << 20,
            "{big}"
        );
        assert_eq!(big["http"]["response_captured"], 128, "{big}");
    }
    assert!(events_of_kind(&events, "syscall").is_empty());
    assert_eq!(summary["submitted"], 4, "{summary}");
    assert_eq!(summary["lost_ringbuf_full"], 0, "{summary}");
    assert_eq!(summary["undecodable"], 0, "{summary}");
}
