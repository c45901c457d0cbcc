//! HTTP benchmarks.
//!
//! `bench-http`: nginx (one worker) under wrk on loopback at saturation, with no tracing and
//! under `kspan run` (HTTP off; HTTP on with no exporter; HTTP on exporting OTLP to a counting
//! receiver): requests/s, the loss against no tracing, and kspan's CPU per request.
//!
//! `bench-http --userspace`: the userspace HTTP path alone (records -> requests -> spans ->
//! samplers), fed synthetic records on one thread: requests/s per core.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Instant,
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
    l7::PROTOCOL_HTTP1, EventHeader, PayloadData, PAYLOAD_FLAG_START, PAYLOAD_FLAG_WRITE,
};
use anyhow::{bail, Context};

use crate::{
    export::{cpu_seconds, kspan_bin, require_kspan_bin, start_receiver},
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
    fn start(args: &[&str], otlp: bool) -> anyhow::Result<Agent> {
        let mut cmd = Command::new(kspan_bin());
        cmd.arg("run").args(["--metrics-addr", ""]).args(args);
        let mut rx = None;
        if otlp {
            let (r, _out, ready) = start_receiver()?;
            let port = ready["grpc_port"].as_u64().context("port")?;
            cmd.args([
                "--protocol",
                "grpc",
                "--endpoint",
                &format!("http://127.0.0.1:{port}"),
            ]);
            rx = Some(r);
        } else {
            cmd.args(["--exporter", "none"]);
        }
        let mut kspan = cmd.stderr(Stdio::piped()).spawn()?;
        let mut err = BufReader::new(kspan.stderr.take().context("stderr")?);
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line)? == 0 {
                bail!("kspan did not start");
            }
            if line.contains("tracing (programs attached)") {
                break;
            }
        }
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

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.userspace {
        return userspace(a.requests);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-http loads eBPF programs: run it as root");
    }
    require_kspan_bin()?;
    let port = free_port()?;
    let _nginx = Nginx::start(port, 1)?;
    /// kspan's extra arguments and whether it exports over OTLP; `None`: no tracing.
    type Setup<'a> = Option<(&'a [&'a str], bool)>;
    let setups: [(&str, Setup); 4] = [
        ("no tracing", None),
        (
            "kspan run --http off, exporter none",
            Some((&["--http", "off"], false)),
        ),
        ("kspan run (HTTP on), exporter none", Some((&[], false))),
        ("kspan run (HTTP on), exporter OTLP/gRPC", Some((&[], true))),
    ];
    println!(
        "Workload: nginx (1 worker) serving `return 200` on loopback, wrk -t1 -c{} for {} s per run; {} runs, medians. kspan: its default config (every process, syscalls, TCP, sampling on).",
        a.connections, a.seconds, a.repeats
    );
    println!();
    println!("| set-up | requests/s | vs no tracing | kspan CPU per request (us) | HTTP server spans made | lost (kernel + pipeline) |");
    println!("|---|---|---|---|---|---|");
    let mut base = f64::NAN;
    for (name, setup) in setups {
        let (mut rps, mut cpu, mut spans, mut lost) = (vec![], vec![], vec![], vec![]);
        for r in 0..a.repeats {
            eprintln!("[bench] {name}: run {}/{}", r + 1, a.repeats);
            match setup {
                None => rps.push(wrk(port, a.seconds, a.connections)?),
                Some((args, otlp)) => {
                    let agent = Agent::start(args, otlp)?;
                    let pid = agent.kspan.id();
                    let c0 = cpu_seconds(pid)?;
                    let v = wrk(port, a.seconds, a.connections)?;
                    let c = cpu_seconds(pid)? - c0;
                    let summary = agent.stop()?;
                    rps.push(v);
                    cpu.push(c * 1e6 / (v * a.seconds as f64));
                    spans.push(summary["requests"]["server_spans"].as_f64().unwrap_or(0.0));
                    let dropped: f64 = summary["dropped"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| k.as_str() != "sampled_out")
                                .filter_map(|(_, v)| v.as_f64())
                                .sum()
                        })
                        .unwrap_or(0.0);
                    lost.push(dropped);
                }
            }
        }
        let r = median(rps);
        if setup.is_none() {
            base = r;
        }
        let fmt = |v: Vec<f64>, p: usize| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.*}", p, median(v))
            }
        };
        println!(
            "| {name} | {r:.0} | {} | {} | {} | {} |",
            if setup.is_none() {
                "-".to_string()
            } else {
                format!("{:+.1} %", (r / base - 1.0) * 100.0)
            },
            fmt(cpu, 2),
            fmt(spans, 0),
            fmt(lost, 0)
        );
    }
    Ok(())
}

/// Feeds `n` keep-alive request/response pairs (server side, 100 connections, a traced
/// client on the other end of each) through the span builder and the default samplers.
fn userspace(n: u64) -> anyhow::Result<()> {
    let procs = ProcessCache::new(HostResource { attributes: vec![] }, Default::default());
    let mut builder = SpanBuilder::new(WallClock::new(), procs, ProcFdResolver::default())
        .with_l7(L7Options::default());
    let mut sampler = agent::config::default_sampling()
        .map(|c| agent::sampling::Pipeline::new(&c))
        .transpose()?
        .context("default sampling")?;
    let req = b"GET /orders/12345?page=2 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
    let pid = std::process::id();
    let record = |sk: u64, write: bool, t: u64, bytes: &[u8], local: u16, remote: u16| {
        let mut d = PayloadData {
            sk,
            fd: 5,
            len: bytes.len() as u64,
            nr: if write { 1 } else { 0 },
            captured: bytes.len() as u32,
            family: libc::AF_INET as u16,
            sport: local,
            dport: remote,
            protocol: PROTOCOL_HTTP1,
            ..Default::default()
        };
        d.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        d.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        RawEvent::Payload(
            EventHeader {
                kind: agent_common::EventKind::Payload as u32,
                flags: PAYLOAD_FLAG_START | if write { PAYLOAD_FLAG_WRITE } else { 0 },
                pid,
                tid: pid + (sk % 4) as u32,
                start_ns: t,
                duration_ns: 1_000,
                cgroup_id: 1,
                comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            },
            d,
            bytes.to_vec(),
        )
    };
    // Client (sk 1000+c, port 40000+c) and server (sk c, port 80) ends of 100 connections.
    let mut events = Vec::with_capacity(4 * 1000);
    let mut groups = Vec::new();
    let (mut spans, mut kept) = (0u64, 0u64);
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    let mut now = agent::clock::monotonic_ns();
    let mut done = 0;
    while done < n {
        events.clear();
        for i in 0..1000u64.min(n - done) {
            let c = (done + i) % 100;
            let port = 40000 + c as u16;
            now += 10_000;
            events.push(record(1000 + c, true, now, req, port, 80));
            events.push(record(c, false, now + 1_000, req, 80, port));
            events.push(record(c, true, now + 5_000, resp, 80, port));
            events.push(record(1000 + c, false, now + 6_000, resp, port, 80));
        }
        for ev in &events {
            builder.process(ev, &mut groups);
        }
        for g in groups.drain(..) {
            match g {
                Group::Trace { spans: s, root } => {
                    spans += s.len() as u64;
                    if sampler.decide(&s[root]).keep {
                        kept += s.len() as u64;
                    }
                }
                Group::One(b) => {
                    spans += 1;
                    kept += u64::from(sampler.decide(&*b).keep);
                }
                Group::Late { spans: s, .. } => spans += s.len() as u64,
            }
        }
        done += events.len() as u64 / 4;
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    let wall = t0.elapsed().as_secs_f64();
    let c = builder.request_counts().unwrap_or_default();
    println!(
        "Userspace HTTP path, one thread: {n} requests (each seen from both ends: 4 records, a SERVER and a CLIENT span, linked), parsed, paired, built into spans, held as traces and sampled (default samplers)."
    );
    println!();
    println!("| requests | records | spans built | spans kept | CPU (s) | wall (s) | requests/s per core | records/s per core |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {spans} | {kept} | {cpu:.2} | {wall:.2} | {:.0} | {:.0} |",
        c.transfers,
        n as f64 / cpu,
        c.transfers as f64 / cpu
    );
    if c.linked != n {
        bail!("expected {n} linked server spans, got {}", c.linked);
    }
    Ok(())
}
