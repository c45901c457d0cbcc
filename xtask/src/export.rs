//! `cargo xtask bench-export`: spans exported per CPU-second of the agent (capture, build,
//! encode, gzip, send to a local OTLP receiver) and the agent's memory, while a workload makes
//! syscalls at a steady rate (every one a span: `--min-duration 0`). Prints a Markdown table.
//!
//! The receiver is tests/otlp_receiver.py in count-only mode (the test venv:
//! `KSPAN_SETUP_TEST=1 scripts/setup`). The workload is this binary (`xtask workload`).
use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Workload rates in syscalls/s (0: as fast as it goes).
    #[arg(long, value_delimiter = ',', default_value = "100000,0")]
    rates: Vec<u64>,
    /// Seconds of workload per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Protocols to measure.
    #[arg(long, value_delimiter = ',', default_value = "grpc,http/protobuf")]
    protocols: Vec<String>,
}

#[derive(clap::Args)]
pub struct WorkloadArgs {
    /// getppid calls per second (0: unpaced).
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    seconds: u64,
    /// Wait this long before starting (for the tracer to attach).
    #[arg(long, default_value_t = 1000)]
    delay_ms: u64,
}

/// Makes `rate` getppid syscalls per second, in 1 ms slots.
pub fn workload(a: WorkloadArgs) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_millis(a.delay_ms));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut done: u64 = 0;
    while Instant::now() < end {
        let due = if a.rate == 0 {
            done + 10_000
        } else {
            (start.elapsed().as_secs_f64() * a.rate as f64) as u64
        };
        while done < due {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
            done += 1;
        }
        if a.rate != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("{done}");
    Ok(())
}

pub(crate) fn kspan_bin() -> String {
    format!("{}/../target/release/kspan", env!("CARGO_MANIFEST_DIR"))
}

fn venv_python() -> String {
    let cache = std::env::var("KSPAN_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kspan", std::env::var("HOME").unwrap_or_default()));
    format!("{cache}/venv/bin/python")
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 overall = 12 and 13 after the comm.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("status field")
}

struct Row {
    rate: u64,
    protocol: String,
    made: u64,
    exported: u64,
    received: u64,
    dropped: u64,
    cpu: f64,
    hwm_kib: u64,
    rss_kib: u64,
}

/// The counting OTLP receiver: the child, its stdout after the ready line, and that line.
pub(crate) fn start_receiver() -> anyhow::Result<(
    Child,
    BufReader<std::process::ChildStdout>,
    serde_json::Value,
)> {
    let mut rx: Child = Command::new(venv_python())
        .arg(format!(
            "{}/../tests/otlp_receiver.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("--count-only")
        .stdout(Stdio::piped())
        .spawn()
        .context("start the receiver (KSPAN_SETUP_TEST=1 scripts/setup makes its venv)")?;
    let mut rx_out = BufReader::new(rx.stdout.take().context("stdout")?);
    let mut line = String::new();
    rx_out.read_line(&mut line)?;
    let ready: serde_json::Value = serde_json::from_str(&line)?;
    Ok((rx, rx_out, ready))
}

fn one_run(rate: u64, seconds: u64, protocol: &str) -> anyhow::Result<Row> {
    let (mut rx, mut rx_out, ready) = start_receiver()?;
    let mut line = String::new();
    let port = if protocol == "grpc" {
        ready["grpc_port"].as_u64()
    } else {
        ready["http_port"].as_u64()
    }
    .context("port")?;

    let work = Command::new(std::env::current_exe()?)
        .args([
            "workload",
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let wpid = work.id().to_string();
    let mut kspan = Command::new(kspan_bin())
        .args([
            "run",
            "--pid",
            &wpid,
            "--syscalls",
            "getppid",
            "--min-duration",
            "0",
        ])
        .args([
            "--no-tcp",
            "--metrics-addr",
            "",
            "--compression",
            "gzip",
            "--sampling",
            "off",
        ])
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    let kpid = kspan.id();
    let err = attached_stderr(&mut kspan)?;
    let cpu0 = cpu_seconds(kpid)?;
    let out = work.wait_with_output()?;
    let made: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    // Steady-state RSS near the end of the load.
    let rss_kib = status_kib(kpid, "VmRSS:")?;
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(kpid)? - cpu0;
    let hwm_kib = status_kib(kpid, "VmHWM:")?;
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(kpid as i32, libc::SIGTERM) };
    let mut summary = None;
    for l in err.lines() {
        let l = l?;
        if let Some(s) = l.strip_prefix("kspan: summary ") {
            summary = Some(serde_json::from_str::<serde_json::Value>(s)?);
        }
    }
    kspan.wait()?;
    let summary = summary.context("no summary")?;
    // SAFETY: as above.
    unsafe { libc::kill(rx.id() as i32, libc::SIGTERM) };
    line.clear();
    rx_out.read_line(&mut line)?;
    rx.wait()?;
    let totals: serde_json::Value = serde_json::from_str(&line)?;
    let dropped = summary["dropped"]
        .as_object()
        .context("dropped")?
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    Ok(Row {
        rate,
        protocol: protocol.to_string(),
        made,
        exported: summary["spans_exported"].as_u64().unwrap_or(0),
        received: totals["spans"].as_u64().unwrap_or(0),
        dropped,
        cpu,
        hwm_kib,
        rss_kib,
    })
}

/// Fails with what to do when the release kspan binary the benchmarks run is not built.
/// `kspan run`'s arguments for exporting OTLP/gRPC to a receiver from [`start_receiver`].
pub(crate) fn grpc_args(ready: &serde_json::Value) -> anyhow::Result<[String; 4]> {
    let port = ready["grpc_port"]
        .as_u64()
        .context("the receiver's gRPC port")?;
    Ok([
        "--protocol".into(),
        "grpc".into(),
        "--endpoint".into(),
        format!("http://127.0.0.1:{port}"),
    ])
}

/// The stderr of a starting `kspan run`, once it says its programs are attached (an error
/// if it exits first).
pub(crate) fn attached_stderr(kspan: &mut Child) -> anyhow::Result<BufReader<ChildStderr>> {
    let mut err = BufReader::new(kspan.stderr.take().context("stderr")?);
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("kspan did not start");
        }
        if line.contains("tracing (programs attached)") {
            return Ok(err);
        }
    }
}

pub(crate) fn require_kspan_bin() -> anyhow::Result<()> {
    if !std::path::Path::new(&kspan_bin()).exists() {
        bail!("build kspan first: cargo build --release -p agent");
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    require_kspan_bin()?;
    println!(
        "| workload rate (syscalls/s) | protocol | spans made | exported | received | dropped | agent CPU s | agent CPU % of one core (over the load) | spans/s per agent core | RSS at load (MiB) | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &rate in &a.rates {
        for p in &a.protocols {
            let r = one_run(rate, a.seconds, p)?;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} |",
                if r.rate == 0 {
                    "unpaced".to_string()
                } else {
                    r.rate.to_string()
                },
                r.protocol,
                r.made,
                r.exported,
                r.received,
                r.dropped,
                r.cpu,
                100.0 * r.cpu / a.seconds as f64,
                r.exported as f64 / r.cpu,
                r.rss_kib as f64 / 1024.0,
                r.hwm_kib as f64 / 1024.0
            );
        }
    }
    Ok(())
}
