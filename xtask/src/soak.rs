//! `cargo xtask soak --minutes N`: default `kspan run` for N minutes against the project's
//! OTLP receiver under a mix an operator's node sees at once: two uninstrumented Python HTTP
//! services chained (A calls B) at `--rps` requests/s with 1 % answering 500, short-lived
//! processes (`/bin/true`, `--procs`/s), short TCP connections to a listener that closes at
//! once (`--connects`/s), and a burst of 600k fast syscalls (`dd bs=1 count=300000`) every
//! 30 s. Every `--every` seconds it samples kspan's RSS, threads, fds and its `/metrics`
//! (queue depth, open connections, built, exported, every drop reason, the slowest export
//! bucket), prints a Markdown table, and the slope of RSS after the warm-up.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::export::{
    attached_stderr, cpu_seconds, grpc_args, kspan_bin, require_kspan_bin, start_receiver,
};

#[derive(clap::Args)]
pub struct Args {
    /// Minutes of soak.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Minutes at the start left out of the RSS slope.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Requests/s to the chained services.
    #[arg(long, default_value_t = 75)]
    rps: u32,
    /// Short-lived processes/s.
    #[arg(long, default_value_t = 50)]
    procs: u32,
    /// Short TCP connections/s.
    #[arg(long, default_value_t = 100)]
    connects: u32,
    /// `kspan run` with `--exporter none` instead of exporting to the receiver.
    #[arg(long)]
    no_export: bool,
}

/// Runs `f` `rate` times a second until `stop`; counts what `f` did.
fn paced(
    rate: u32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    mut f: impl FnMut(u64) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut next = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            f(i);
            i += 1;
            done.fetch_add(1, Ordering::Relaxed);
            next += period;
        }
    })
}

/// A Python service from tests/http_service.py, ready to serve.
fn service(port: u16, calls: &[String]) -> anyhow::Result<Child> {
    let mut cmd = Command::new("python3");
    cmd.arg(format!(
        "{}/../tests/http_service.py",
        env!("CARGO_MANIFEST_DIR")
    ))
    .args(["serve", &port.to_string()]);
    for c in calls {
        cmd.args(["--call", c]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.contains("ready") {
        bail!("the service on port {port} did not start: {line}");
    }
    Ok(child)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One GET on a new connection; the status code.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

/// One sample of kspan and its metrics.
struct Sample {
    at: f64,
    cpu_s: f64,
    rss_mib: f64,
    threads: u64,
    fds: u64,
    metrics: Vec<(String, f64)>,
}

impl Sample {
    fn metric(&self, name: &str) -> f64 {
        self.metrics
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .sum()
    }
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `/metrics` as (name with labels, value) pairs.
fn scrape(port: u16) -> Vec<(String, f64)> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sample(pid: u32, metrics_port: u16, t0: Instant) -> Sample {
    Sample {
        at: t0.elapsed().as_secs_f64(),
        cpu_s: cpu_seconds(pid).unwrap_or(0.0),
        rss_mib: status_field(pid, "VmRSS:") as f64 / 1024.0,
        threads: status_field(pid, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        metrics: scrape(metrics_port),
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("soak loads eBPF programs: run it as root");
    }
    require_kspan_bin()?;
    // The services, the listener that closes at once.
    let (pa, pb) = (free_port()?, free_port()?);
    let mut b = service(pb, &[])?;
    let mut svc_a = service(pa, &[format!("http://127.0.0.1:{pb}/stock/7")])?;
    let closer = TcpListener::bind("127.0.0.1:0")?;
    let closer_port = closer.local_addr()?.port();
    std::thread::spawn(move || {
        for s in closer.incoming() {
            drop(s);
        }
    });
    // kspan.
    let metrics_port = free_port()?;
    let mut cmd = Command::new(kspan_bin());
    cmd.args([
        "run",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let mut rx = None;
    if a.no_export {
        cmd.args(["--exporter", "none"]);
    } else {
        let (r, out, ready) = start_receiver()?;
        cmd.args(grpc_args(&ready)?);
        // The receiver's output is read so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        rx = Some(r);
    }
    let mut kspan = cmd.stderr(Stdio::piped()).spawn()?;
    let err = attached_stderr(&mut kspan)?;
    let summary_line = Arc::new(std::sync::Mutex::new(String::new()));
    let warnings = Arc::new(AtomicU64::new(0));
    {
        let (summary_line, warnings) = (summary_line.clone(), warnings.clone());
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if let Some(s) = l.strip_prefix("kspan: summary ") {
                    *summary_line.lock().unwrap() = s.to_string();
                } else if l.contains("WARN") {
                    warnings.fetch_add(1, Ordering::Relaxed);
                    eprintln!("[soak] kspan: {l}");
                }
            }
        });
    }
    let pid = kspan.id();
    eprintln!(
        "[soak] {} min: {} requests/s (A -> B, 1 % 500), {} processes/s, {} connects/s, dd burst every 30 s; sampling every {} s",
        a.minutes, a.rps, a.procs, a.connects, a.every
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, fails, procs, connects) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let f = fails.clone();
    let mut workers = vec![
        paced(a.rps, stop.clone(), requests.clone(), move |i| {
            let path = if i % 100 == 99 {
                format!("/fail/{i}")
            } else {
                format!("/orders/{i}")
            };
            if get(pa, &path) != Some(if i % 100 == 99 { 500 } else { 200 }) {
                f.fetch_add(1, Ordering::Relaxed);
            }
        }),
        paced(a.procs, stop.clone(), procs.clone(), |_| {
            let _ = Command::new("/bin/true").status();
        }),
        paced(a.connects, stop.clone(), connects.clone(), move |_| {
            let _ = TcpStream::connect(("127.0.0.1", closer_port));
        }),
    ];
    {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("dd")
                    .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=300000"])
                    .stderr(Stdio::null())
                    .status();
                for _ in 0..300 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }));
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(a.minutes * 60);
    let mut samples = Vec::new();
    println!("| t (s) | kspan CPU (% of a core, since the last row) | RSS (MiB) | threads | fds | open connections | queue (spans) | built | exported | queue_full | ringbuf_full | export_failed | other drops | export calls > 10 s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut prev = (0.0, cpu_seconds(pid).unwrap_or(0.0));
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(a.every));
        let s = sample(pid, metrics_port, t0);
        let drop = |r: &str| s.metric(&format!("kspan_dropped_total{{reason=\"{r}\"}}"));
        let all_drops: f64 = s
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("kspan_dropped_total"))
            .map(|(_, v)| v)
            .sum();
        let slow_calls = s.metric("kspan_export_duration_seconds_bucket{le=\"+Inf\"}")
            - s.metric("kspan_export_duration_seconds_bucket{le=\"10.0\"}");
        let cpu_pct = 100.0 * (s.cpu_s - prev.1) / (s.at - prev.0).max(1e-3);
        prev = (s.at, s.cpu_s);
        println!(
            "| {:.0} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.at,
            cpu_pct,
            s.rss_mib,
            s.threads,
            s.fds,
            s.metric("kspan_open_connections"),
            s.metric("kspan_queue_spans"),
            s.metric("kspan_spans_built_total"),
            s.metric("kspan_spans_exported_total"),
            drop("queue_full"),
            drop("ringbuf_full"),
            drop("export_failed"),
            all_drops - drop("queue_full") - drop("ringbuf_full") - drop("export_failed") - drop("sampled_out"),
            slow_calls,
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let last = sample(pid, metrics_port, t0);
    let cpu_total = 100.0 * last.cpu_s / last.at.max(1e-3);
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    kspan.wait()?;
    std::thread::sleep(Duration::from_millis(200));
    for c in [&mut svc_a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    if let Some(mut r) = rx {
        let _ = r.kill();
        let _ = r.wait();
    }
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at >= (a.warmup * 60) as f64)
        .map(|s| (s.at, s.rss_mib))
        .collect();
    let per_10min = slope(&after) * 600.0;
    let base = after.first().map_or(0.0, |p| p.1);
    println!();
    println!(
        "Workload done: {} requests ({} not answered as expected), {} processes, {} connects.",
        requests.load(Ordering::Relaxed),
        fails.load(Ordering::Relaxed),
        procs.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed)
    );
    println!(
        "RSS after the {}-minute warm-up: {:.1} MiB at its start, slope {:+.2} MiB per 10 minutes ({:+.1} % of it).",
        a.warmup,
        base,
        per_10min,
        if base > 0.0 { 100.0 * per_10min / base } else { 0.0 }
    );
    let summary: serde_json::Value =
        serde_json::from_str(&summary_line.lock().unwrap()).unwrap_or_default();
    println!(
        "kspan CPU over the run: {cpu_total:.1} % of a core. At exit: /metrics said built {:.0}, exported {:.0}; the summary said built {}, exported {}. kspan warnings logged: {}.",
        last.metric("kspan_spans_built_total"),
        last.metric("kspan_spans_exported_total"),
        summary["spans_built"],
        summary["spans_exported"],
        warnings.load(Ordering::Relaxed)
    );
    Ok(())
}
