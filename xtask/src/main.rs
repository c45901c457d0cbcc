//! Project tasks: `cargo xtask bench-overhead`, `cargo xtask bench-export`,
//! `cargo xtask bench-http`, `cargo xtask bench-analyze`, `cargo xtask soak`.
mod analyze;
mod export;
mod funcs;
mod http;
// The tests' nginx launcher, so benchmarks and tests run the same server.
#[path = "../../tests/common/nginx.rs"]
#[expect(dead_code, reason = "the tests read its pids; the benchmarks do not")]
mod nginx;
mod overhead;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Added cost per syscall of each tracing set-up on a dd workload; prints a Markdown table.
    BenchOverhead(overhead::Args),
    /// Spans exported per agent CPU-second and agent memory at steady syscall rates; prints
    /// a Markdown table.
    BenchExport(export::Args),
    /// nginx + wrk requests/s with and without kspan's HTTP request spans, or (--userspace)
    /// the userspace HTTP path's requests/s per core; prints a Markdown table.
    BenchHttp(http::Args),
    /// Cost per probed function call (entry + return) of `kspan hist --func` and of
    /// bpftrace's uprobe/uretprobe hist(); prints a Markdown table.
    BenchFunc(funcs::Args),
    /// `kspan analyze` on a file of synthetic spans: time and peak memory.
    BenchAnalyze(analyze::Args),
    /// Default `kspan run` for minutes under a mixed workload: RSS, threads, fds, queue and
    /// drop counters over time, and the RSS slope; prints a Markdown table.
    Soak(soak::Args),
    /// (internal) The paced syscall workload bench-export traces.
    #[command(hide = true)]
    Workload(export::WorkloadArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::BenchOverhead(args) => overhead::run(args),
        Cmd::BenchExport(args) => export::run(args),
        Cmd::BenchHttp(args) => http::run(args),
        Cmd::BenchAnalyze(args) => analyze::run(args),
        Cmd::BenchFunc(args) => funcs::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Workload(args) => export::workload(args),
    }
}
