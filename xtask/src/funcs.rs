//! Cost of a probed function call (entry + return): a C program calling a tiny function in a
//! loop, untraced, under `kspan hist --func`'s programs and under bpftrace's uprobe/uretprobe
//! `hist()`; prints a Markdown table.
use std::process::Command;

use agent::{
    capture::{Capture, CaptureConfig, SyscallHook},
    uprobe::{find, FuncSpec},
};
use anyhow::{bail, Context};

use crate::overhead::{median, start_bpftrace, stop_bpftrace};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per run.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// Repeats per set-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// Builds the workload into a temporary directory.
fn build() -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("kspan-bench-func-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("calls");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/data/calls.c");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(src)
        .status()
        .context("gcc")?;
    if !st.success() {
        bail!("gcc failed");
    }
    Ok(bin.to_string_lossy().into_owned())
}

/// Runs the workload; its own measure of the loop, ns.
fn calls(bin: &str, n: u64) -> anyhow::Result<f64> {
    let out = Command::new(bin).arg(n.to_string()).output()?;
    if !out.status.success() {
        bail!("{bin} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: f64 = text
        .split_whitespace()
        .next()
        .context("no output")?
        .parse()?;
    Ok(ns)
}

fn under_bpftrace(bin: &str, n: u64) -> anyhow::Result<f64> {
    let script = format!(
        "uprobe:{bin}:work {{ @s[tid] = nsecs; }} \
         uretprobe:{bin}:work /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
    );
    let child = start_bpftrace(&script)?;
    let ns = calls(bin, n);
    stop_bpftrace(child);
    ns
}

fn under_kspan(bin: &str, n: u64) -> anyhow::Result<(f64, u64)> {
    let funcs = find(&[format!("{bin}:work").parse::<FuncSpec>()?])?;
    let config = CaptureConfig {
        syscall_hook: SyscallHook::Off,
        tcp: false,
        emit_syscalls: false,
        emit_failed: false,
        emit_tcp: false,
        ring_buffer_bytes: 4096,
        funcs,
        ..CaptureConfig::default()
    };
    let capture = Capture::start(config).context("starting kspan capture")?;
    let ns = calls(bin, n)?;
    let counted: u64 = capture.func_histograms()?[0].iter().sum();
    Ok((ns, counted))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = build()?;
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut rows: Vec<(&str, f64, Option<u64>)> = Vec::new();
    for name in [
        "no tracing",
        "bpftrace uprobe + uretprobe hist()",
        "kspan hist --func",
    ] {
        if name.starts_with("bpftrace") && !have_bpftrace {
            eprintln!("[bench] bpftrace not installed: skipping its row (KSPAN_SETUP_BENCH=1 scripts/setup installs it)");
            continue;
        }
        let (mut ns, mut counted) = (Vec::new(), Vec::new());
        for r in 0..args.repeats {
            eprintln!("[bench] {name}: run {}/{}", r + 1, args.repeats);
            match name {
                "no tracing" => ns.push(calls(&bin, args.calls)?),
                n if n.starts_with("bpftrace") => ns.push(under_bpftrace(&bin, args.calls)?),
                _ => {
                    let (t, c) = under_kspan(&bin, args.calls)?;
                    ns.push(t);
                    counted.push(c as f64);
                }
            }
        }
        rows.push((
            name,
            median(ns),
            (!counted.is_empty()).then(|| median(counted) as u64),
        ));
    }
    let base = rows.first().map_or(f64::NAN, |r| r.1);
    println!(
        "Workload: {} calls of an empty C function (gcc -O2), timed by the program, {} repeats, medians.",
        args.calls, args.repeats
    );
    println!();
    println!("| set-up | ns per call | added per call (entry + return, ns) | calls counted |");
    println!("|---|---|---|---|");
    for (name, ns, counted) in rows {
        let per = ns / args.calls as f64;
        let added = if name == "no tracing" {
            "-".to_string()
        } else {
            format!("{:.0}", per - base / args.calls as f64)
        };
        println!(
            "| {name} | {per:.1} | {added} | {} |",
            counted.map_or("-".to_string(), |c| c.to_string())
        );
    }
    Ok(())
}
