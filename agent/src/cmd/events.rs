//! `kspan events`: decoded events as JSON lines.
use std::{
    io::{BufWriter, Write},
    time::Duration,
};

use clap::Args;
use serde::Serialize;

use super::{parse_duration, CaptureArgs};
use crate::{
    capture::{self, Capture, CaptureError, KernelCounters},
    clock::WallClock,
    config::{Config, ConfigError},
    decode,
    event::JsonEvent,
    source::RingReady,
};

#[derive(Debug, Args, Clone)]
pub struct EventsArgs {
    /// What to capture; transfers on sockets of an L7 protocol are reported with `kind` the
    /// protocol's name (`"http"`), unless `--l7 off`.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Stop after this long (e.g. 10s); default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How often the ring buffer is drained [default: capture.drain_interval].
    #[arg(long, value_parser = parse_duration)]
    pub drain_interval: Option<Duration>,
    /// Wake the reader early when this many bytes wait in the ring buffer (0: timer only;
    /// default: a quarter of the ring buffer).
    #[arg(long)]
    pub wakeup_bytes: Option<u64>,
    /// Hook syscalls with classic tracepoints instead of raw tracepoints.
    #[arg(long)]
    pub classic_tracepoints: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("writing events: {0}")]
    Output(#[source] std::io::Error),
    #[error("setting up signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error("registering the ring buffer for polling: {0}")]
    RingPoll(#[source] std::io::Error),
}

/// The summary printed at the end (last stdout line, `"kind": "summary"`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    /// Events received and printed.
    pub events: u64,
    /// Events the kernel could not put in the ring buffer (full).
    pub lost_ringbuf_full: u64,
    /// Ordinary (not failed) syscall events the kernel shed with the ring buffer 3/4 full,
    /// keeping room for failures and TCP events.
    pub shed_ringbuf: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Syscalls not measured because the start table was full.
    pub start_table_full: u64,
    /// Connections not followed because a TCP table was full.
    pub tcp_table_full: u64,
    /// Events the kernel submitted.
    pub submitted: u64,
    /// Syscalls measured in the kernel (histogrammed), including those not reported.
    pub syscalls_measured: u64,
}

impl Summary {
    fn new(events: u64, undecodable: u64, k: KernelCounters) -> Summary {
        Summary {
            kind: "summary",
            events,
            lost_ringbuf_full: k.ringbuf_full,
            shed_ringbuf: k.ringbuf_shed,
            undecodable,
            start_table_full: k.start_table_full,
            tcp_table_full: k.tcp_table_full,
            submitted: k.submitted,
            syscalls_measured: k.syscalls_measured,
        }
    }
}

pub async fn run(args: EventsArgs) -> Result<Summary, EventsError> {
    use tokio::signal::unix::{signal, SignalKind};

    // The agent's defaults and checks, but every syscall reported unless asked otherwise.
    let mut c = Config::default();
    c.capture.min_duration = Duration::ZERO;
    args.capture.apply(&mut c);
    let plan = c.build()?;
    let mut config = plan.capture;
    config.wakeup_bytes = args.wakeup_bytes;
    if args.classic_tracepoints && config.syscall_hook != capture::SyscallHook::Off {
        config.syscall_hook = capture::SyscallHook::Tracepoint;
    }
    let drain = args.drain_interval.unwrap_or(plan.drain_interval);
    let mut capture = Capture::start(config)?;
    let mut ready = RingReady::new(&capture, drain).map_err(EventsError::RingPoll)?;
    let clock = WallClock::new();
    let mut sigint = signal(SignalKind::interrupt()).map_err(EventsError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(EventsError::Signal)?;
    eprintln!("kspan: tracing (programs attached); stop with Ctrl-C");

    let stdout = std::io::stdout();
    let mut sink = JsonSink {
        out: BufWriter::with_capacity(1 << 16, stdout.lock()),
        clock,
        events: 0,
        undecodable: 0,
        io_error: None,
    };

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = ready.ready() => {
                capture.drain(usize::MAX, |b| sink.emit(b));
                if let Err(e) = sink.out.flush() { sink.io_error.get_or_insert(e); }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => break,
        }
        if sink.io_error.is_some() {
            break;
        }
    }
    drop(ready);
    // Detach first so nothing new arrives, then drain what is left and count.
    capture.detach();
    capture.drain(usize::MAX, |b| sink.emit(b));
    let summary = Summary::new(sink.events, sink.undecodable, capture.counters());
    let mut out = sink.out;
    if let Some(e) = sink.io_error {
        // A closed pipe (e.g. `| head`) is a normal way to stop.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(EventsError::Output(e));
        }
        return Ok(summary);
    }
    serde_json::to_writer(&mut out, &summary)
        .map_err(std::io::Error::from)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(EventsError::Output)?;
    eprintln!(
        "kspan: {} events, {} lost (ring buffer full), {} shed (ring buffer 3/4 full, not failures), {} undecodable, {} syscalls not measured (start table full)",
        summary.events,
        summary.lost_ringbuf_full,
        summary.shed_ringbuf,
        summary.undecodable,
        summary.start_table_full
    );
    Ok(summary)
}

/// Decodes records and writes them as JSON lines, counting what it cannot decode.
struct JsonSink<W: Write> {
    out: W,
    clock: WallClock,
    events: u64,
    undecodable: u64,
    /// First write error; output stops there, counting goes on.
    io_error: Option<std::io::Error>,
}

impl<W: Write> JsonSink<W> {
    fn emit(&mut self, bytes: &[u8]) {
        match decode::decode(bytes) {
            Ok(ev) => {
                self.events += 1;
                if self.io_error.is_some() {
                    return;
                }
                let j = JsonEvent::new(&ev, &self.clock);
                if let Err(e) = serde_json::to_writer(&mut self.out, &j)
                    .map_err(std::io::Error::from)
                    .and_then(|_| self.out.write_all(b"\n"))
                {
                    self.io_error = Some(e);
                }
            }
            Err(e) => {
                self.undecodable += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    }
}
