//! `bench-analyze`: `kspan analyze` on a file of N synthetic spans (10 per trace, 4
//! services, OTLP/JSON lines as the stdout exporter writes them): wall time, CPU and peak
//! memory of the process.
use std::{io::Write, process::Command, time::Instant};

use anyhow::{bail, Context};

use crate::export::{kspan_bin, require_kspan_bin};

#[derive(clap::Args)]
pub struct Args {
    /// Spans in the file (a multiple of 10).
    #[arg(long, default_value_t = 1_000_000)]
    spans: u64,
}

#[allow(clippy::too_many_arguments)] // one synthetic span, field by field
fn span(
    trace: u64,
    id: u64,
    parent: u64,
    name: &str,
    kind: u8,
    start: u64,
    end: u64,
    err: bool,
) -> String {
    let parent = if parent == 0 {
        String::new()
    } else {
        format!("{parent:016x}")
    };
    let attrs = if err {
        r#"[{"key":"error.type","value":{"stringValue":"500"}},{"key":"http.response.status_code","value":{"intValue":"500"}}]"#
    } else {
        r#"[{"key":"http.response.status_code","value":{"intValue":"200"}}]"#
    };
    format!(
        r#"{{"traceId":"{trace:032x}","spanId":"{id:016x}","parentSpanId":"{parent}","name":"{name}","kind":{kind},"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":{attrs},"status":{{"code":{}}}}}"#,
        if err { 2 } else { 0 }
    )
}

fn resource(service: &str, spans: &[String]) -> String {
    format!(
        r#"{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeSpans":[{{"scope":{{"name":"kspan"}},"spans":[{}]}}]}}"#,
        spans.join(",")
    )
}

pub fn run(a: Args) -> anyhow::Result<()> {
    require_kspan_bin()?;
    let traces = a.spans / 10;
    let path =
        std::env::temp_dir().join(format!("kspan-bench-analyze-{}.jsonl", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let t0: u64 = 1_700_000_000_000_000_000;
    for t in 1..=traces {
        let base = t0 + t * 1_000_000;
        let id = |k: u64| t * 16 + k;
        let slow = (t % 100) * 100_000; // 0-10 ms extra in orders
        let err = t % 50 == 0;
        let client = vec![span(
            t,
            id(1),
            0,
            "GET /checkout",
            3,
            base,
            base + 20_000_000 + slow,
            false,
        )];
        let frontend = vec![
            span(
                t,
                id(2),
                id(1),
                "GET /checkout",
                2,
                base + 100_000,
                base + 19_900_000 + slow,
                false,
            ),
            span(
                t,
                id(3),
                id(2),
                "GET /orders/{id}",
                3,
                base + 200_000,
                base + 15_000_000 + slow,
                false,
            ),
            span(
                t,
                id(4),
                id(2),
                "read",
                1,
                base + 15_100_000 + slow,
                base + 15_200_000 + slow,
                false,
            ),
        ];
        let orders = vec![
            span(
                t,
                id(5),
                id(3),
                "GET /orders/{id}",
                2,
                base + 300_000,
                base + 14_900_000 + slow,
                false,
            ),
            span(
                t,
                id(6),
                id(5),
                "GET /pay",
                3,
                base + 400_000,
                base + 2_400_000,
                err,
            ),
            span(
                t,
                id(7),
                id(5),
                "GET /pay",
                3,
                base + 2_500_000,
                base + 4_500_000,
                false,
            ),
            span(
                t,
                id(8),
                id(5),
                "fsync",
                1,
                base + 5_000_000,
                base + 14_000_000 + slow,
                false,
            ),
        ];
        let payments = vec![
            span(
                t,
                id(9),
                id(6),
                "GET /pay",
                2,
                base + 500_000,
                base + 2_300_000,
                err,
            ),
            span(
                t,
                id(10),
                id(7),
                "GET /pay",
                2,
                base + 2_600_000,
                base + 4_400_000,
                false,
            ),
        ];
        writeln!(
            f,
            r#"{{"resourceSpans":[{},{},{},{}]}}"#,
            resource("client", &client),
            resource("frontend", &frontend),
            resource("orders", &orders),
            resource("payments", &payments)
        )?;
    }
    f.flush()?;
    drop(f);
    let size = std::fs::metadata(&path)?.len();
    let start = Instant::now();
    let out = Command::new(kspan_bin())
        .args(["analyze", "--json"])
        .arg(&path)
        .output()
        .context("running kspan analyze (cargo build --release first)")?;
    let wall = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!(
            "kspan analyze failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SAFETY: getrusage with a valid pointer.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rt = &report["routes"][0];
    println!(
        "`kspan analyze --json` on {} spans ({} traces of 10 spans, 4 services) in one OTLP/JSON file of {:.0} MB.",
        a.spans,
        traces,
        size as f64 / 1e6
    );
    println!();
    println!("| spans | wall (s) | CPU (s) | spans/s | peak RSS (MB) | bytes per span (peak RSS) | bottleneck found |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {wall:.2} | {cpu:.2} | {:.0} | {:.0} | {:.0} | {} |",
        report["spans"],
        a.spans as f64 / wall,
        ru.ru_maxrss as f64 / 1024.0,
        ru.ru_maxrss as f64 * 1024.0 / a.spans as f64,
        rt["bottleneck"]
    );
    if rt["bottleneck"] != "orders" {
        bail!("expected orders as the bottleneck: {rt}");
    }
    Ok(())
}
