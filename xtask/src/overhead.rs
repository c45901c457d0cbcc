//! Overhead benchmark: the same dd workload under no tracing, empty programs (the floor),
//! bpftrace's per-syscall `hist()`, kspan histogram-only, and kspan with events.
use std::{
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use agent::{
    capture::{Capture, CaptureConfig, StartsTable, SyscallHook},
    decode,
};
use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// dd count: the workload makes 2 x COUNT syscalls (1-byte read + write).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Repeats per set-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Only set-ups whose name contains one of these (plus "no tracing"); default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn dd(count: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={count}"),
        ])
        .stderr(Stdio::null())
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd failed: {status}");
    }
    Ok(start.elapsed())
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct ReaderStats {
    events: u64,
    cpu: Duration,
    lost: u64,
}

/// Runs dd under a kspan capture; a reader thread drains every 10 ms, decoding each record.
fn under_kspan(config: &CaptureConfig, count: u64) -> anyhow::Result<(Duration, ReaderStats)> {
    let mut capture = Capture::start(config.clone()).context("starting kspan capture")?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = thread::spawn(move || {
        let cpu0 = thread_cpu();
        let mut events = 0u64;
        let mut sum = 0u64;
        let mut drain = |c: &mut Capture| {
            c.drain(usize::MAX, |b| {
                if let Ok(ev) = decode::decode(b) {
                    events += 1;
                    sum = sum.wrapping_add(ev.header().duration_ns);
                }
            });
        };
        while !stop2.load(Ordering::Relaxed) {
            drain(&mut capture);
            capture.wait(Duration::from_millis(10));
        }
        capture.detach();
        drain(&mut capture);
        std::hint::black_box(sum);
        // Lost or shed (the kernel sheds successful calls once the ring is 3/4 full).
        let k = capture.counters();
        let lost = k.ringbuf_full + k.ringbuf_shed;
        ReaderStats {
            events,
            cpu: thread_cpu() - cpu0,
            lost,
        }
    });
    let wall = dd(count);
    stop.store(true, Ordering::Relaxed);
    let stats = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    Ok((wall?, stats))
}

const BPFTRACE_HIST: &str = "tracepoint:raw_syscalls:sys_enter { @s[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /@s[tid]/ { @h[args->id] = hist(nsecs - @s[tid]); delete(@s[tid]); }";

/// bpftrace running `script`, once its probes are attached; stop it with [`stop_bpftrace`].
pub(crate) fn start_bpftrace(script: &str) -> anyhow::Result<Child> {
    let mut child: Child = Command::new("bpftrace")
        .args(["-e", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("bpftrace")?;
    // bpftrace prints "Attaching N probes..." once attached.
    {
        use std::io::{BufRead, BufReader};
        let out = child.stdout.take().context("bpftrace stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
    }
    thread::sleep(Duration::from_millis(200));
    Ok(child)
}

pub(crate) fn stop_bpftrace(mut child: Child) {
    // SAFETY: valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
}

fn under_bpftrace(count: u64) -> anyhow::Result<Duration> {
    let child = start_bpftrace(BPFTRACE_HIST)?;
    let wall = dd(count);
    stop_bpftrace(child);
    wall
}

/// What runs while dd does.
enum Setup {
    NoTracing,
    Bpftrace,
    Kspan(CaptureConfig),
}

struct Row {
    name: &'static str,
    /// The no-tracing row other rows are compared with.
    baseline: bool,
    /// Median wall time, s.
    wall: f64,
    /// Medians of (events received, reader CPU s, events lost).
    reader: Option<(u64, f64, u64)>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the overhead benchmark loads eBPF programs: run it as root");
    }
    let syscalls = 2 * args.count;
    let base = CaptureConfig {
        tcp: false,
        ..Default::default()
    };
    // What `kspan hist` itself loads.
    let hist = CaptureConfig {
        starts: StartsTable::Array,
        emit_syscalls: false,
        emit_failed: false,
        tcp: true,
        emit_tcp: false,
        ring_buffer_bytes: 4096,
        ..base.clone()
    };
    let kspan = |name, config| (name, Setup::Kspan(config));
    let setups = vec![
        ("no tracing", Setup::NoTracing),
        kspan(
            "floor: empty classic tracepoints",
            CaptureConfig {
                syscall_hook: SyscallHook::EmptyTracepoint,
                ..base.clone()
            },
        ),
        kspan(
            "floor: empty raw tracepoints",
            CaptureConfig {
                syscall_hook: SyscallHook::EmptyRawTracepoint,
                ..base.clone()
            },
        ),
        kspan(
            "floor + one clock read per hook (raw tracepoints)",
            CaptureConfig {
                syscall_hook: SyscallHook::ClockRawTracepoint,
                ..base.clone()
            },
        ),
        ("bpftrace hist()", Setup::Bpftrace),
        kspan(
            "kspan hist-only, classic tp, hash starts",
            CaptureConfig {
                syscall_hook: SyscallHook::Tracepoint,
                starts: StartsTable::Hash,
                emit_syscalls: false,
                ..base.clone()
            },
        ),
        kspan(
            "kspan hist-only, raw tp, hash starts",
            CaptureConfig {
                starts: StartsTable::Hash,
                emit_syscalls: false,
                ..base.clone()
            },
        ),
        kspan(
            "kspan hist-only, raw tp, array starts",
            CaptureConfig {
                starts: StartsTable::Array,
                emit_syscalls: false,
                ..base.clone()
            },
        ),
        kspan(
            "kspan hist (its own config: raw tp, array starts, TCP programs, no events)",
            hist.clone(),
        ),
        kspan(
            "kspan hist --view process (adds per-process histograms)",
            CaptureConfig {
                proc_hist: true,
                ..hist
            },
        ),
        kspan(
            "kspan events, classic tp, array starts",
            CaptureConfig {
                syscall_hook: SyscallHook::Tracepoint,
                starts: StartsTable::Array,
                ..base.clone()
            },
        ),
        kspan(
            "kspan events, raw tp, array starts (default)",
            CaptureConfig {
                starts: StartsTable::Array,
                ..base.clone()
            },
        ),
        kspan("kspan events + L7 exchanges (what kspan run loads)", {
            let mut c = CaptureConfig {
                starts: StartsTable::Array,
                ..base.clone()
            };
            c.capture_l7(
                agent::l7::DEFAULT_REQUEST_BYTES,
                agent::l7::DEFAULT_RESPONSE_BYTES,
            );
            c
        }),
    ];
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut rows: Vec<Row> = Vec::new();
    let wanted = |name: &str| {
        args.only.is_empty()
            || name == "no tracing"
            || args.only.iter().any(|o| name.contains(o.as_str()))
    };
    for (name, setup) in setups.iter().filter(|(n, _)| wanted(n)) {
        if matches!(setup, Setup::Bpftrace) && !have_bpftrace {
            eprintln!("[bench] bpftrace not installed: skipping its row (KSPAN_SETUP_BENCH=1 scripts/setup installs it)");
            continue;
        }
        let (mut walls, mut ev, mut cpu, mut lost) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.repeats {
            eprintln!("[bench] {name}: run {}/{}", r + 1, args.repeats);
            let wall = match setup {
                Setup::NoTracing => dd(args.count)?,
                Setup::Bpftrace => under_bpftrace(args.count)?,
                Setup::Kspan(c) => {
                    let (wall, stats) = under_kspan(c, args.count)?;
                    ev.push(stats.events as f64);
                    cpu.push(stats.cpu.as_secs_f64());
                    lost.push(stats.lost as f64);
                    wall
                }
            };
            walls.push(wall.as_secs_f64());
        }
        rows.push(Row {
            name,
            baseline: matches!(setup, Setup::NoTracing),
            wall: median(walls),
            // Set-ups that make no events (floors, histogram-only) show no reader figures.
            reader: (!ev.is_empty()).then(|| (median(ev) as u64, median(cpu), median(lost) as u64)),
        });
    }
    let none = rows
        .iter()
        .find(|r| r.baseline)
        .map_or(f64::NAN, |r| r.wall);
    println!(
        "Workload: dd if=/dev/zero of=/dev/null bs=1 count={} ({} syscalls), {} repeats, medians.",
        args.count, syscalls, args.repeats
    );
    println!();
    println!("| set-up | wall time (s) | added per syscall (ns) | events received | lost | reader CPU per event (ns) | events/s per core of reader CPU |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let wall = row.wall;
        let added = if row.baseline {
            "-".to_string()
        } else {
            format!("{:.0}", (wall - none) * 1e9 / syscalls as f64)
        };
        let (evs, lost, per, rate) = match row.reader {
            Some((events, cpu, lost)) if events > 0 => (
                events.to_string(),
                lost.to_string(),
                format!("{:.0}", cpu * 1e9 / events as f64),
                format!("{:.2}M", events as f64 / cpu / 1e6),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.3} | {} | {} | {} | {} | {} |",
            row.name, wall, added, evs, lost, per, rate
        );
    }
    Ok(())
}
