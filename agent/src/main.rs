use std::process::ExitCode;

use agent::{
    check,
    cmd::{analyze, events, hist, run, sampling, Cli, Command},
};
use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,agent=info"))
        .init();
    agent::init_tls();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { json } => {
            let report = check::run_checks();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                for i in &report.items {
                    let mark = if i.ok {
                        "ok  "
                    } else if i.required {
                        "FAIL"
                    } else {
                        "warn"
                    };
                    println!("{mark} {:<37} {}", i.name, i.detail);
                }
                for u in &report.will_use {
                    println!("use  {u}");
                }
                if report.can_run {
                    println!("kspan can run here");
                    println!(
                        "next: sudo kspan run    (spans on this terminal; add --endpoint \
                         http://COLLECTOR:4317 to export them, or try `sudo kspan top`)"
                    );
                } else {
                    println!("kspan cannot run here: fix the FAIL lines");
                    println!("next: fix the FAIL lines above, then run `kspan check` again");
                }
            }
            if report.can_run {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Events(args) => {
            let mut b = tokio::runtime::Builder::new_current_thread();
            report(block_on(&mut b, events::run(args)))
        }
        Command::Hist(args) => report(hist::run_hist(args)),
        Command::Top(args) => report(hist::run_top(args)),
        Command::Analyze(args) => {
            report(analyze::run(&args).map(|text| println!("{}", text.trim_end())))
        }
        Command::Sampling(cmd) => report(
            match &cmd {
                sampling::SamplingCommand::Simulate(a) => sampling::simulate(a),
                sampling::SamplingCommand::Explain(a) => sampling::explain(a),
            }
            .map(|text| println!("{}", text.trim_end())),
        ),
        Command::Run(args) => {
            // Two workers for the reader, encoding and export, and the metrics endpoint; the
            // span builder runs on a thread of its own (pipeline::run_with).
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            report(block_on(&mut b, run::run(args)))
        }
    }
}

/// Runs a command's future on a runtime from `builder`; a runtime that cannot start is an
/// error like the command's own.
fn block_on<T, E: std::fmt::Display>(
    builder: &mut tokio::runtime::Builder,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(), String> {
    let rt = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(fut).map(|_| ()).map_err(|e| e.to_string())
}

/// Exit status of a command, printing its error.
fn report<E: std::fmt::Display>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kspan: error: {e}");
            ExitCode::FAILURE
        }
    }
}
