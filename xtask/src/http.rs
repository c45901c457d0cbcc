//! HTTP benchmarks.
//!
//! `bench-http`: nginx (one worker) under wrk on loopback at saturation, with no tracing and
//! under `kspan run` (HTTP off; HTTP on with no exporter; HTTP on exporting OTLP to a counting
//! receiver), optionally an older kspan (`--baseline`) and bpftrace's empty syscall programs
//! (`--floor`), all set-ups in turn in every round: requests/s, the ratios against no tracing
//! and against HTTP off, kspan's CPU and ring buffer bytes per request.
//!
//! `bench-http --rate N`: the same nginx at a fixed N requests/s from one keep-alive client
//! (a moderate load, not saturation): kspan's CPU in % of one core, this build and
//! `--baseline`'s.
//!
//! `bench-http --userspace`: the userspace HTTP path alone (records -> requests -> spans ->
//! samplers), fed synthetic records on one thread: requests/s per core.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use agent::{
    clock::WallClock,
    conns::ProcFdResolver,
    decode::RawEvent,
    l7::tracker::L7Options,
    procinfo::{HostResource, ProcessCache},
    spans::SpanBuilder,
    traces::Group,
};
use agent_common::{
    l7::PROTOCOL_HTTP1, EventHeader, ExchangeData, TraceRef, EXCH_FLAG_CLIENT, PARENT_NONE,
    PARENT_PEER,
};
use anyhow::{bail, Context};

use crate::{
    export::{
        attached_stderr, cpu_seconds, grpc_args, kspan_bin, require_kspan_bin, start_receiver,
    },
    nginx::Nginx,
    overhead::{median, thread_cpu},
};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Runs per set-up; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Measure the userspace path alone instead (no kernel, no nginx).
    #[arg(long)]
    userspace: bool,
    /// Requests fed to the userspace path.
    #[arg(long, default_value_t = 500_000)]
    requests: u64,
    /// Also run another kspan binary (e.g. an older build) beside this one, HTTP off and on.
    #[arg(long)]
    baseline: Option<String>,
    /// Also run bpftrace with empty raw_syscalls programs: the floor for hooking every
    /// syscall.
    #[arg(long)]
    floor: bool,
    /// A moderate load instead of saturation: this many requests/s from one paced
    /// keep-alive client; reports kspan's CPU in % of one core.
    #[arg(long)]
    rate: Option<u32>,
    /// With --userspace: run only one of the two set-ups (for profiling one with perf).
    #[arg(long, value_enum)]
    only: Option<Samplers>,
}

/// The userspace benchmark's set-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Samplers {
    /// The default samplers: most requests dropped.
    Default,
    /// No samplers: every span kept and built.
    Off,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// wrk's requests/s.
fn wrk(port: u16, seconds: u64, connections: u32) -> anyhow::Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            &format!("http://127.0.0.1:{port}/orders/7"),
        ])
        .output()
        .context("wrk (KSPAN_SETUP_BENCH=1 scripts/setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

/// A running `kspan run` and (for OTLP) its counting receiver.
struct Agent {
    kspan: Child,
    rx: Option<Child>,
    err: BufReader<std::process::ChildStderr>,
}

impl Agent {
    fn start(bin: &str, args: &[&str], otlp: bool) -> anyhow::Result<Agent> {
        let mut cmd = Command::new(bin);
        cmd.arg("run").args(["--metrics-addr", ""]).args(args);
        let mut rx = None;
        if otlp {
            let (r, _out, ready) = start_receiver()?;
            cmd.args(grpc_args(&ready)?);
            rx = Some(r);
        } else {
            cmd.args(["--exporter", "none"]);
        }
        let mut kspan = cmd.stderr(Stdio::piped()).spawn()?;
        let err = attached_stderr(&mut kspan)?;
        Ok(Agent { kspan, rx, err })
    }

    /// Stops kspan; its summary.
    fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.kspan.id() as i32, libc::SIGTERM) };
        let mut summary = None;
        for l in (&mut self.err).lines() {
            let l = l?;
            if let Some(s) = l.strip_prefix("kspan: summary ") {
                summary = Some(serde_json::from_str(s)?);
            }
        }
        self.kspan.wait()?;
        if let Some(mut r) = self.rx.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        summary.context("no summary")
    }
}

impl Drop for Agent {
    /// A run that failed half-way leaves no kspan behind.
    fn drop(&mut self) {
        let _ = self.kspan.kill();
        let _ = self.kspan.wait();
        if let Some(mut r) = self.rx.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

/// What runs beside nginx in one set-up.
enum Tracer {
    None,
    /// `kspan run` (this binary) with these arguments; exporting OTLP to a receiver or not.
    Kspan {
        bin: String,
        args: &'static [&'static str],
        otlp: bool,
    },
    /// bpftrace with empty programs: on the raw syscall tracepoints (the floor for hooking
    /// every syscall), or on these per-syscall tracepoints only.
    Bpftrace(&'static str),
}

/// Empty bpftrace programs on both raw syscall tracepoints.
const FLOOR_RAW: &str = "tracepoint:raw_syscalls:sys_enter {} tracepoint:raw_syscalls:sys_exit {}";
/// Empty bpftrace programs on the per-syscall tracepoints of the calls that move a request's
/// bytes (what a hook narrowed to socket I/O would need).
const FLOOR_IO: &str = "tracepoint:syscalls:sys_enter_read,tracepoint:syscalls:sys_enter_write,tracepoint:syscalls:sys_enter_readv,tracepoint:syscalls:sys_enter_writev,tracepoint:syscalls:sys_enter_recvfrom,tracepoint:syscalls:sys_enter_sendto,tracepoint:syscalls:sys_enter_recvmsg,tracepoint:syscalls:sys_enter_sendmsg {} tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write,tracepoint:syscalls:sys_exit_readv,tracepoint:syscalls:sys_exit_writev,tracepoint:syscalls:sys_exit_recvfrom,tracepoint:syscalls:sys_exit_sendto,tracepoint:syscalls:sys_exit_recvmsg,tracepoint:syscalls:sys_exit_sendmsg {}";

/// One set-up's results over the rounds.
#[derive(Default)]
struct Runs {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    ring_bytes: Vec<f64>,
    server_spans: Vec<f64>,
    lost: Vec<f64>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.userspace {
        return userspace(a.requests, a.repeats, a.only);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-http loads eBPF programs: run it as root");
    }
    require_kspan_bin()?;
    let port = free_port()?;
    let _nginx = Nginx::start(port, 1)?;
    if let Some(rate) = a.rate {
        return paced(port, rate, &a);
    }
    let kspan = |bin: &str, args: &'static [&'static str], otlp: bool| Tracer::Kspan {
        bin: bin.to_string(),
        args,
        otlp,
    };
    let this = kspan_bin();
    let mut setups: Vec<(String, Tracer)> = vec![
        ("no tracing".into(), Tracer::None),
        (
            "kspan run --http off, exporter none".into(),
            kspan(&this, &["--http", "off"], false),
        ),
        (
            "kspan run (HTTP on), exporter none".into(),
            kspan(&this, &[], false),
        ),
        (
            "kspan run (HTTP on), exporter OTLP/gRPC".into(),
            kspan(&this, &[], true),
        ),
    ];
    if let Some(b) = &a.baseline {
        setups.push((
            "baseline: kspan run --http off, exporter none".into(),
            kspan(b, &["--http", "off"], false),
        ));
        setups.push((
            "baseline: kspan run (HTTP on), exporter none".into(),
            kspan(b, &[], false),
        ));
    }
    if a.floor {
        setups.push((
            "bpftrace: empty raw_syscalls enter and exit programs".into(),
            Tracer::Bpftrace(FLOOR_RAW),
        ));
        setups.push((
            "bpftrace: empty syscalls:sys_enter_/sys_exit_ programs on 8 I/O syscalls".into(),
            Tracer::Bpftrace(FLOOR_IO),
        ));
    }
    workload(
        &format!("wrk -t1 -c{} for {} s per run", a.connections, a.seconds),
        &a,
    );
    let mut runs: Vec<Runs> = setups.iter().map(|_| Runs::default()).collect();
    for round in 0..a.repeats {
        for ((name, tracer), r) in setups.iter().zip(runs.iter_mut()) {
            eprintln!("[bench] round {}/{}: {name}", round + 1, a.repeats);
            match tracer {
                Tracer::None => r.rps.push(wrk(port, a.seconds, a.connections)?),
                Tracer::Bpftrace(program) => {
                    let mut bt = Command::new("bpftrace")
                        .args(["-e", program])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("bpftrace (KSPAN_SETUP_TEST=1 scripts/setup installs it)")?;
                    let mut out = BufReader::new(bt.stdout.take().context("stdout")?);
                    let mut line = String::new();
                    out.read_line(&mut line)?;
                    if !line.contains("Attaching") {
                        bail!("bpftrace did not attach: {line}");
                    }
                    r.rps.push(wrk(port, a.seconds, a.connections)?);
                    // SAFETY: kill with a valid pid and signal.
                    unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
                    bt.wait()?;
                }
                Tracer::Kspan { bin, args, otlp } => {
                    let agent = Agent::start(bin, args, *otlp)?;
                    let pid = agent.kspan.id();
                    let c0 = cpu_seconds(pid)?;
                    let v = wrk(port, a.seconds, a.connections)?;
                    let c = cpu_seconds(pid)? - c0;
                    let summary = agent.stop()?;
                    let requests = v * a.seconds as f64;
                    r.rps.push(v);
                    r.cpu_us.push(c * 1e6 / requests);
                    if let Some(b) = summary["ring_bytes"].as_f64() {
                        r.ring_bytes.push(b / requests);
                    }
                    r.server_spans
                        .push(summary["requests"]["server_spans"].as_f64().unwrap_or(0.0));
                    let dropped: f64 = summary["dropped"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| k.as_str() != "sampled_out")
                                .filter_map(|(_, v)| v.as_f64())
                                .sum()
                        })
                        .unwrap_or(0.0);
                    r.lost.push(dropped);
                }
            }
        }
    }
    println!("| set-up | requests/s | vs no tracing | vs its --http off (paired) | kspan CPU per request (us) | ring bytes per request | HTTP server spans made | lost (kernel + pipeline) |");
    println!("|---|---|---|---|---|---|---|---|");
    let base = median(runs[0].rps.clone());
    let fmt = |v: &[f64], p: usize| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.*}", p, median(v.to_vec()))
        }
    };
    for (i, ((name, tracer), r)) in setups.iter().zip(&runs).enumerate() {
        let rps = median(r.rps.clone());
        // HTTP on against HTTP off of the same binary, round by round.
        let off = match tracer {
            Tracer::Kspan { bin, args: [], .. } => {
                setups.iter().position(|(_, t)| {
                    matches!(t, Tracer::Kspan { bin: b, args: a, .. } if b == bin && !a.is_empty())
                })
            }
            _ => None,
        };
        let paired = match off {
            Some(j) => format!(
                "{:.2}",
                median(
                    r.rps
                        .iter()
                        .zip(&runs[j].rps)
                        .map(|(on, off)| on / off)
                        .collect()
                )
            ),
            None => "-".into(),
        };
        println!(
            "| {name} | {rps:.0} | {} | {paired} | {} | {} | {} | {} |",
            if i == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", rps / base)
            },
            fmt(&r.cpu_us, 2),
            fmt(&r.ring_bytes, 0),
            fmt(&r.server_spans, 0),
            fmt(&r.lost, 0)
        );
    }
    Ok(())
}

/// Feeds `n` requests, each seen from both ends (a client and a server exchange record, the
/// server's linked to the client's by the kernel), through the span builder and the default
/// samplers (most dropped, never built), then again with every trace kept and built: the
/// userspace path's requests/s per core, both ways.
/// The table's heading: the workload and the rounds.
fn workload(load: &str, a: &Args) {
    println!(
        "Workload: nginx (1 worker) serving `return 200` on loopback, {load}; {} rounds, each running every set-up in turn; medians. kspan: its default config (every process, syscalls, TCP, sampling on).{}",
        a.repeats,
        a.baseline
            .as_deref()
            .map(|b| format!(" Baseline binary: {b}."))
            .unwrap_or_default()
    );
    println!();
}

/// `--rate`: kspan's CPU at a fixed request rate, this build and the baseline's, round by
/// round.
fn paced(port: u16, rate: u32, a: &Args) -> anyhow::Result<()> {
    let this = kspan_bin();
    // (name, binary, requests/s): the idle row is kspan's fixed cost on this host.
    let mut bins = vec![
        ("kspan run, no requests (idle)", this.as_str(), 0),
        ("kspan run (HTTP on), exporter none", this.as_str(), rate),
    ];
    if let Some(b) = &a.baseline {
        bins.push(("baseline: kspan run, no requests (idle)", b.as_str(), 0));
        bins.push((
            "baseline: kspan run (HTTP on), exporter none",
            b.as_str(),
            rate,
        ));
    }
    workload(
        &format!(
            "one keep-alive client paced at {rate} requests/s for {} s per run",
            a.seconds
        ),
        a,
    );
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); bins.len()];
    let mut made: Vec<Vec<f64>> = vec![Vec::new(); bins.len()];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(); bins.len()];
    for round in 0..a.repeats {
        for (i, (name, bin, rate)) in bins.iter().enumerate() {
            eprintln!("[bench] round {}/{}: {name}", round + 1, a.repeats);
            let agent = Agent::start(bin, &[], false)?;
            let pid = agent.kspan.id();
            let c0 = cpu_seconds(pid)?;
            let t0 = std::time::Instant::now();
            let n = if *rate == 0 {
                std::thread::sleep(std::time::Duration::from_secs(a.seconds));
                0
            } else {
                paced_client(port, *rate, a.seconds)?
            };
            let wall = t0.elapsed().as_secs_f64();
            let c = cpu_seconds(pid)? - c0;
            let summary = agent.stop()?;
            cpu[i].push(100.0 * c / wall);
            made[i].push(n as f64 / wall);
            spans[i].push(summary["requests"]["server_spans"].as_f64().unwrap_or(0.0));
        }
    }
    println!("| set-up | requests/s made | kspan CPU (% of one core) | kspan CPU per request above its idle (us) | HTTP server spans made |");
    println!("|---|---|---|---|---|");
    for (i, (name, bin, _)) in bins.iter().enumerate() {
        let pct = median(cpu[i].clone());
        let rps = median(made[i].clone());
        // The same binary's idle row.
        let idle = bins
            .iter()
            .position(|(_, b, r)| b == bin && *r == 0)
            .map(|j| median(cpu[j].clone()))
            .unwrap_or(0.0);
        let per_request = if rps > 0.0 {
            format!("{:.2}", (pct - idle) / 100.0 * 1e6 / rps)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {rps:.0} | {pct:.2} | {per_request} | {:.0} |",
            median(spans[i].clone())
        );
    }
    Ok(())
}

/// Sends GETs on one keep-alive connection at `rate` per second for `seconds`, each after
/// the previous response; returns the requests answered.
fn paced_client(port: u16, rate: u32, seconds: u64) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let period = std::time::Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = std::time::Instant::now();
    let end = start + std::time::Duration::from_secs(seconds);
    let mut next = start;
    let mut buf = vec![0u8; 4096];
    let mut n = 0u64;
    while next < end {
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // nginx closes a keep-alive connection after `keepalive_requests` (1000): then the
        // request is sent again on a new one.
        let mut answered = false;
        for _ in 0..2 {
            s.write_all(b"GET /orders/7 HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            // nginx's `return 200 "ok\n"`: read until its body (the last 3 bytes) has come.
            let mut got = 0;
            while !buf[..got].ends_with(b"\r\n\r\nok\n") {
                let k = s.read(&mut buf[got..])?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            if buf[..got].ends_with(b"\r\n\r\nok\n") {
                answered = true;
                break;
            }
            s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
        }
        if !answered {
            bail!("nginx closed a new connection before answering");
        }
        n += 1;
        next += period;
    }
    Ok(n)
}

fn userspace(n: u64, repeats: usize, only: Option<Samplers>) -> anyhow::Result<()> {
    println!(
        "Userspace HTTP path, one thread: {n} requests, each seen from both ends (a client and a server exchange record, linked in the kernel): decoded heads summarized, held as a trace, sampled; kept traces built into spans. Thread CPU time, median of {repeats} runs (alternating set-ups)."
    );
    println!();
    println!("| samplers | requests | records | spans kept | CPU (s) | requests/s per core | records/s per core |");
    println!("|---|---|---|---|---|---|---|");
    let set_ups: Vec<Samplers> = [Samplers::Default, Samplers::Off]
        .into_iter()
        .filter(|s| only.is_none_or(|o| o == *s))
        .collect();
    let mut runs = vec![Vec::new(); set_ups.len()];
    for _ in 0..repeats.max(1) {
        for (i, s) in set_ups.iter().enumerate() {
            runs[i].push(userspace_run(n, *s == Samplers::Default)?);
        }
    }
    for (set_up, r) in set_ups.iter().zip(runs) {
        let sampling = *set_up == Samplers::Default;
        let (records, kept) = (r[0].0, r[0].1);
        let cpu = crate::overhead::median(r.iter().map(|x| x.2).collect());
        println!(
            "| {} | {n} | {records} | {kept} | {cpu:.2} | {:.0} | {:.0} |",
            if sampling {
                "default (most dropped)"
            } else {
                "off (every span kept and built)"
            },
            n as f64 / cpu,
            records as f64 / cpu
        );
    }
    Ok(())
}

/// One pass of [`userspace`]: (records, spans kept, CPU seconds).
fn userspace_run(n: u64, sampling: bool) -> anyhow::Result<(u64, u64, f64)> {
    let procs = ProcessCache::new(HostResource { attributes: vec![] }, Default::default());
    let mut builder = SpanBuilder::new(WallClock::new(), procs, ProcFdResolver::default())
        .with_l7(L7Options::default());
    let mut sampler = if sampling {
        agent::config::default_sampling()
            .map(|c| agent::sampling::Pipeline::new(&c))
            .transpose()?
    } else {
        None
    };
    let req = b"GET /orders/12345?page=2 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
    let pid = std::process::id();
    let record = |client: bool, c: u64, i: u64, t: u64| {
        let port = 40000 + c as u16;
        let (local, remote) = if client { (port, 80) } else { (80, port) };
        let trace = (i as u128 + 1) << 64 | 0x1234_5678_9abc;
        let (span, parent, kind) = if client {
            (2 * i + 1, 0, PARENT_NONE)
        } else {
            (2 * i + 2, 2 * i + 1, PARENT_PEER)
        };
        let mut d = ExchangeData {
            sk: if client { 1000 + c } else { c },
            req_bytes: req.len() as u64,
            resp_bytes: resp.len() as u64,
            ctx: TraceRef {
                trace_id: trace.to_be_bytes(),
                span_id: span.to_be_bytes(),
            },
            parent_span_id: if parent == 0 {
                [0; 8]
            } else {
                parent.to_be_bytes()
            },
            parent_kind: kind,
            seq: i as u32,
            req_tcp_seq: i as u32 + 1,
            protocol: PROTOCOL_HTTP1,
            family: libc::AF_INET as u16,
            sport: local,
            dport: remote,
            req_len: req.len() as u16,
            resp_len: resp.len() as u16,
            trace_flags: 1,
            ..Default::default()
        };
        d.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        d.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        RawEvent::Exchange(
            EventHeader {
                kind: agent_common::EventKind::Exchange as u32,
                flags: if client { EXCH_FLAG_CLIENT } else { 0 },
                pid,
                tid: pid + (c % 4) as u32,
                start_ns: t,
                duration_ns: 5_000,
                cgroup_id: 1,
                comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            },
            d,
            [&req[..], &resp[..]].concat(),
        )
    };
    let mut groups = Vec::new();
    let (mut records, mut kept) = (0u64, 0u64);
    let cpu0 = thread_cpu();
    let mut now = agent::clock::monotonic_ns();
    let mut done = 0;
    while done < n {
        // 100 connections; the server's record comes first (it ends first), then the
        // client's, the trace's local root.
        for i in done..(done + 1000).min(n) {
            let c = i % 100;
            now += 10_000;
            for client in [false, true] {
                builder.process(record(client, c, i, now), &mut groups);
                records += 1;
            }
        }
        for g in groups.drain(..) {
            // As the build stage does: a trace's decision is recorded for its late spans.
            let (spans, root, trace) = match g {
                Group::Trace { spans, root } => (spans, root, true),
                Group::One(b) => (std::iter::once(b).collect(), 0, false),
                Group::Late { spans, .. } => (spans, 0, false),
            };
            let o = sampler.as_mut().map(|s| s.decide(&spans[root]));
            if trace {
                builder.record_decision(spans[root].trace_id(), o);
            }
            if o.is_none_or(|o| o.keep) {
                for b in spans {
                    std::hint::black_box(builder.materialize(b));
                    kept += 1;
                }
            }
        }
        done = (done + 1000).min(n);
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let c = builder.request_counts().unwrap_or_default();
    if c.linked != n {
        bail!("expected {n} linked server spans, got {}", c.linked);
    }
    Ok((records, kept, cpu))
}
