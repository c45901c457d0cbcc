//! Project tasks: `cargo xtask bench-overhead`.
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::BenchOverhead(args) => overhead::run(args),
    }
}
