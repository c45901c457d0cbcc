//! Project tasks: `cargo xtask bench-overhead`, `cargo xtask bench-export`.
mod export;
mod overhead;

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
    /// (internal) The paced syscall workload bench-export traces.
    #[command(hide = true)]
    Workload(export::WorkloadArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::BenchOverhead(args) => overhead::run(args),
        Cmd::BenchExport(args) => export::run(args),
        Cmd::Workload(args) => export::workload(args),
    }
}
