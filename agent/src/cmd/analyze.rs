//! `kspan analyze FILE...`: a bottleneck report from traces (see [`crate::analyze`]).
use std::io::BufReader;

use clap::Args;

use super::parse_duration;
use crate::analyze::{analyze, render, Options, Store};

#[derive(Debug, Args, Clone)]
pub struct AnalyzeArgs {
    /// OTLP/JSON files, one ExportTraceServiceRequest per line (kspan's stdout exporter, the
    /// collector's file exporter); `-` is stdin.
    #[arg(default_value = "-")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// How the report is made (shared with `kspan run --analyze`).
#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// Only this trace (32 hex digits).
    #[arg(long)]
    pub trace: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Name operations slower than this at p99.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub slow_operation: std::time::Duration,
    /// Name services whose own time per request is over this at p50.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub slow_service: std::time::Duration,
    /// Calls to one operation under one span from this many on are an N+1 pattern.
    #[arg(long, default_value_t = 5)]
    pub n_plus_one: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--trace {0:?} is not a trace id (32 hex digits)")]
    BadTrace(String),
    #[error("no spans in the input ({0} lines were not OTLP/JSON); kspan analyze reads OTLP/JSON lines such as `kspan run --exporter stdout` writes")]
    Empty(u64),
    #[error("writing the report: {0}")]
    Output(#[source] serde_json::Error),
}

impl ReportArgs {
    pub fn options(&self) -> Result<Options, AnalyzeError> {
        let trace = match &self.trace {
            Some(t) => {
                let t = t.trim();
                if t.len() != 32 {
                    return Err(AnalyzeError::BadTrace(t.to_string()));
                }
                Some(
                    u128::from_str_radix(t, 16)
                        .map_err(|_| AnalyzeError::BadTrace(t.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Options {
            trace,
            slow_operation_ns: self.slow_operation.as_nanos() as u64,
            slow_service_ns: self.slow_service.as_nanos() as u64,
            n_plus_one: self.n_plus_one,
            ..Options::default()
        })
    }

    /// The report of what `store` holds, as text or JSON.
    pub fn report(&self, store: &mut Store) -> Result<String, AnalyzeError> {
        let opts = self.options()?;
        if store.spans.is_empty() {
            return Err(AnalyzeError::Empty(store.bad_lines));
        }
        let r = analyze(store, &opts);
        if self.json {
            serde_json::to_string(&r).map_err(AnalyzeError::Output)
        } else {
            Ok(render(&r))
        }
    }
}

pub fn run(a: &AnalyzeArgs) -> Result<String, AnalyzeError> {
    // Bad flags before reading anything.
    a.report.options()?;
    let mut store = Store::new();
    for f in &a.files {
        let res = if f == "-" {
            store.read_lines(std::io::stdin().lock())
        } else {
            std::fs::File::open(f).and_then(|file| store.read_lines(BufReader::new(file)))
        };
        res.map_err(|source| AnalyzeError::Read {
            path: f.clone(),
            source,
        })?;
    }
    a.report.report(&mut store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(files: &[&str], trace: Option<&str>) -> AnalyzeArgs {
        AnalyzeArgs {
            files: files.iter().map(|s| s.to_string()).collect(),
            report: ReportArgs {
                trace: trace.map(str::to_string),
                json: true,
                slow_operation: std::time::Duration::from_secs(2),
                slow_service: std::time::Duration::from_secs(1),
                n_plus_one: 5,
            },
        }
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let e = run(&args(&["/nonexistent/spans.jsonl"], None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading /nonexistent/spans.jsonl"),
            "{e}"
        );
        let e = run(&args(&["/dev/null"], Some("xyz"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--trace \"xyz\" is not a trace id (32 hex digits)"
        );
        let e = run(&args(&["/dev/null"], None)).unwrap_err();
        assert!(matches!(e, AnalyzeError::Empty(0)), "{e}");
    }
}
