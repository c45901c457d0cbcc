//! Command-line interface: argument types and one entry point per subcommand.
pub mod analyze;
pub mod events;
pub mod hist;
pub mod routes;
pub mod run;
pub mod sampling;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kspan",
    version,
    about = "eBPF kernel-level tracing agent: syscall and TCP latency"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only complicate the match"
)]
pub enum Command {
    /// Report whether kspan can run on this host and what it will use; non-zero exit if not.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream decoded kernel events as JSON lines on stdout.
    Events(events::EventsArgs),
    /// Live latency histograms from the kernel (per syscall, per process, TCP connect/accept).
    Hist(hist::HistArgs),
    /// Processes, syscalls or HTTP routes by time, count, errors and p99, refreshed.
    Top(TopArgs),
    /// Trace and export spans over OTLP (or as OTLP JSON lines on stdout).
    Run(run::RunArgs),
    /// Where the time of requests goes: a bottleneck report from OTLP/JSON traces.
    Analyze(analyze::AnalyzeArgs),
    /// Try the samplers: simulate traffic, or explain a decision.
    #[command(subcommand)]
    Sampling(sampling::SamplingCommand),
}

/// Filters shared by the capturing commands (`events`, `run`, `hist`, `top`).
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only these processes (tgids); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Only tasks with this command name (as in /proc/PID/comm, at most 15 bytes).
    #[arg(long, value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Only tasks in this cgroup v2 (a path under /sys/fs/cgroup, or the numeric id).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Only these syscalls, by name (e.g. read,write,openat).
    #[arg(long, value_delimiter = ',')]
    pub syscalls: Vec<String>,
}

impl FilterArgs {
    /// The default capture narrowed by these filters (checked: pids must be running
    /// processes, syscalls known names).
    pub fn capture_config(
        &self,
    ) -> Result<crate::capture::CaptureConfig, crate::capture::CaptureError> {
        crate::capture::CaptureConfig::filtered(
            &self.pid,
            &self.comm,
            self.cgroup.as_deref(),
            &self.syscalls,
        )
    }
}

/// What `events` and `run` capture, on top of the filters. Unset flags keep the command's
/// defaults: for `run` the config file's (or `Config::default()`, see `--print-config`), for
/// `events` the same but with every syscall reported (`--min-duration 0`).
#[derive(Debug, Args, Clone, Default)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Syscalls shorter than this are only counted in the kernel's histograms (failed ones
    /// are still reported unless --no-failed) [default: capture.min_duration; events: 0].
    #[arg(long, value_parser = parse_duration)]
    pub min_duration: Option<Duration>,
    /// Do not report failed syscalls shorter than --min-duration.
    #[arg(long)]
    pub no_failed: bool,
    /// Do not report syscalls.
    #[arg(long)]
    pub no_syscalls: bool,
    /// Do not report TCP connections.
    #[arg(long)]
    pub no_tcp: bool,
    /// Ring buffer size in bytes (a power of two, >= 4096) [default: capture.ring_buffer_bytes].
    #[arg(long)]
    pub ring_buffer_bytes: Option<u32>,
    /// Request spans from L7 protocols (HTTP/1.x): `on` (the default) or `off`; see the
    /// config's `http:` section. (Also `--http`.)
    #[arg(long = "l7", visible_alias = "http", value_enum)]
    pub l7: Option<Switch>,
    /// Same as `--l7 off`.
    #[arg(long = "no-l7", visible_alias = "no-http", conflicts_with = "l7")]
    pub no_l7: bool,
    /// Bytes of each L7 request's start the kernel keeps [default: http.request_bytes].
    /// (Also `--l7-prefix-bytes`, `--http-prefix-bytes`.)
    #[arg(long = "l7-request-bytes", visible_aliases = ["l7-prefix-bytes", "http-prefix-bytes"],
          value_parser = clap::value_parser!(u32).range(
              *crate::l7::REQUEST_BYTES_RANGE.start() as i64..=*crate::l7::REQUEST_BYTES_RANGE.end() as i64))]
    pub l7_request_bytes: Option<u32>,
    /// Bytes of each L7 response's start the kernel keeps [default: http.response_bytes].
    #[arg(long = "l7-response-bytes",
          value_parser = clap::value_parser!(u32).range(
              *crate::l7::RESPONSE_BYTES_RANGE.start() as i64..=*crate::l7::RESPONSE_BYTES_RANGE.end() as i64))]
    pub l7_response_bytes: Option<u32>,
}

impl CaptureArgs {
    /// The flags given, over the config `c`.
    pub fn apply(&self, c: &mut crate::config::Config) {
        let f = &self.filter;
        if !f.pid.is_empty() {
            c.capture.pids = f.pid.clone();
        }
        if !f.comm.is_empty() {
            c.capture.comms = f.comm.clone();
        }
        if f.cgroup.is_some() {
            c.capture.cgroup = f.cgroup.clone();
        }
        if !f.syscalls.is_empty() {
            c.capture.syscalls = f.syscalls.clone();
        }
        if let Some(d) = self.min_duration {
            c.capture.min_duration = d;
        }
        if self.no_failed {
            c.capture.failed_syscalls = false;
        }
        if self.no_syscalls {
            c.capture.syscall_spans = false;
        }
        if self.no_tcp {
            c.capture.tcp = false;
        }
        if let Some(b) = self.ring_buffer_bytes {
            c.capture.ring_buffer_bytes = b;
        }
        if let Some(s) = self.l7 {
            c.http.enabled = s == Switch::On;
        }
        if self.no_l7 {
            c.http.enabled = false;
        }
        if let Some(n) = self.l7_request_bytes {
            c.http.request_bytes = n;
        }
        if let Some(n) = self.l7_response_bytes {
            c.http.response_bytes = n;
        }
    }
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `kspan top`: the table alone.
#[derive(Debug, Args, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Rows are processes, syscalls, or HTTP routes (requests/s, errors, p50, p99 per
    /// service and `{method} {route}`).
    #[arg(long, value_enum, default_value = "process")]
    pub by: TopBy,
    /// Refresh interval (e.g. 1s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "1s", allow_hyphen_values = true)]
    pub interval: Duration,
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long)]
    pub plain: bool,
    #[arg(long, conflicts_with = "plain")]
    pub json: bool,
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    #[arg(long, value_enum, default_value = "time")]
    pub sort: crate::hist::SortBy,
    /// Measure these functions of programs instead of syscalls (FILE:SYMBOL, as in
    /// `kspan hist --func`): rows by process and function (`--by process`, the default) or by
    /// function (`--by function`).
    #[arg(long, value_delimiter = ',')]
    pub func: Vec<crate::uprobe::FuncSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopBy {
    Process,
    Syscall,
    Route,
    /// Functions probed with --func.
    Function,
}

/// Errors of the live views (`hist`, `top`).
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("--interval must be more than 0")]
    Interval,
    #[error(transparent)]
    Uprobe(#[from] crate::uprobe::UprobeError),
    #[error(
        "functions are measured with --func FILE:SYMBOL; with --func the views are `function` \
         and `process`"
    )]
    FuncView,
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

/// SIGINT/SIGTERM set a flag (the live views check it every 20 ms).
pub fn ctrlc_flag() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::{atomic::AtomicBool, Arc};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

pub use crate::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        Cli::try_parse_from([
            "kspan",
            "events",
            "--pid",
            "1,2",
            "--syscalls",
            "read,write",
            "--min-duration",
            "1ms",
            "--duration",
            "2s",
        ])
        .map(|_| ())
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(Cli::try_parse_from(["kspan", "events", "--duration", "soon"]).is_err());
        // The old names of the L7 flags keep working.
        for old in [
            &["kspan", "events", "--no-http", "--http-prefix-bytes", "256"][..],
            &["kspan", "run", "--http", "off"][..],
        ] {
            Cli::try_parse_from(old).unwrap_or_else(|e| panic!("{old:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["kspan", "events", "--l7-request-bytes", "8"]).is_err());
    }
}
