//! `kspan events`: decoded events as JSON lines.
use std::{
    io::{BufWriter, Write},
    time::Duration,
};

use clap::Args;
use serde::Serialize;

use super::{parse_duration, FilterArgs};
use crate::{
    capture::{self, Capture, CaptureConfig, CaptureError, KernelCounters},
    clock::WallClock,
    decode,
    event::JsonEvent,
    source::RingReady,
};

#[derive(Debug, Args, Clone)]
pub struct EventsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this long (e.g. 10s); default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Syscalls shorter than this are only counted in histograms (failed ones are still
    /// reported unless --no-failed).
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    pub min_duration: Duration,
    /// Do not report failed syscalls shorter than --min-duration.
    #[arg(long)]
    pub no_failed: bool,
    /// Do not trace syscalls.
    #[arg(long)]
    pub no_syscalls: bool,
    /// Do not trace TCP.
    #[arg(long)]
    pub no_tcp: bool,
    /// Do not report HTTP transfers (`kind: "http"`: reads and writes on TCP sockets that
    /// carry HTTP/1.x).
    #[arg(long)]
    pub no_http: bool,
    /// Bytes of each HTTP transfer to capture (64 to 4096).
    #[arg(long, default_value_t = crate::config::DEFAULT_HTTP_PREFIX_BYTES,
          value_parser = clap::value_parser!(u32).range(64..=agent_common::HTTP_PREFIX_MAX as i64))]
    pub http_prefix_bytes: u32,
    /// Ring buffer size in bytes (a power of two, >= 4096).
    #[arg(long, default_value_t = capture::DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_bytes: u32,
    /// How often the ring buffer is drained.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub drain_interval: Duration,
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

/// Turns the shared filter arguments into a capture config.
pub fn capture_config(filter: &FilterArgs) -> Result<CaptureConfig, EventsError> {
    Ok(CaptureConfig::filtered(
        &filter.pid,
        &filter.comm,
        filter.cgroup.as_deref(),
        &filter.syscalls,
    )?)
}

pub async fn run(args: EventsArgs) -> Result<Summary, EventsError> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut config = capture_config(&args.filter)?;
    config.min_duration = args.min_duration;
    config.emit_failed = !args.no_failed;
    config.tcp = !args.no_tcp;
    config.ring_buffer_bytes = args.ring_buffer_bytes;
    config.wakeup_bytes = args.wakeup_bytes;
    let http = !args.no_http;
    config.http_prefix = if http { args.http_prefix_bytes } else { 0 };
    // HTTP capture rides on the syscall programs: with --no-syscalls they still run, quietly.
    config.emit_syscalls = !args.no_syscalls;
    config.syscall_hook = match (args.no_syscalls && !http, args.classic_tracepoints) {
        (true, _) => capture::SyscallHook::Off,
        (false, true) => capture::SyscallHook::Tracepoint,
        (false, false) => capture::SyscallHook::RawTracepoint,
    };
    let mut capture = Capture::start(config)?;
    let mut ready = RingReady::new(&capture, args.drain_interval).map_err(EventsError::RingPoll)?;
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
                capture.drain(|b| sink.emit(b));
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
    capture.drain(|b| sink.emit(b));
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
