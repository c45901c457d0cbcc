//! Command-line interface: argument types and one entry point per subcommand.
pub mod analyze;
pub mod events;
pub mod hist;
pub mod routes;
pub mod run;
pub mod sampling;

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
    Top(hist::TopArgs),
    /// Trace and export spans over OTLP (or as OTLP JSON lines on stdout).
    Run(run::RunArgs),
    /// Where the time of requests goes: a bottleneck report from OTLP/JSON traces.
    Analyze(analyze::AnalyzeArgs),
    /// Try the samplers: simulate traffic, or explain a decision.
    #[command(subcommand)]
    Sampling(sampling::SamplingCommand),
}

/// Filters shared by the capturing commands.
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
    }
}
