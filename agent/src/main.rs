use std::process::ExitCode;

use agent::{
    check,
    cmd::{events, hist, run, sampling, Cli, Command},
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
                    println!("{mark} {:<34} {}", i.name, i.detail);
                }
                for u in &report.will_use {
                    println!("use  {u}");
                }
                println!(
                    "{}",
                    if report.can_run {
                        "kspan can run here"
                    } else {
                        "kspan cannot run here: fix the FAIL lines"
                    }
                );
            }
            if report.can_run {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Events(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kspan: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(events::run(args)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kspan: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Hist(args) => report(hist::run_hist(args)),
        Command::Top(args) => report(hist::run_top(args)),
        Command::Sampling(cmd) => {
            let out = match &cmd {
                sampling::SamplingCommand::Simulate(a) => sampling::simulate(a),
                sampling::SamplingCommand::Explain(a) => sampling::explain(a),
            };
            match out {
                Ok(text) => {
                    println!("{}", text.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kspan: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            // Two workers: the reader and span builder on one, encoding and export on the other.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kspan: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run::run(args)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kspan: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report<E: std::fmt::Display>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kspan: error: {e}");
            ExitCode::FAILURE
        }
    }
}
