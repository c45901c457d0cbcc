//! `kspan run`: the flags, the effective configuration (file, then flags), and one call into
//! [`crate::pipeline`], which runs the agent.
use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{parse_duration, CaptureArgs, Switch};
use crate::{
    config::{Compression, Config, ConfigError, ExporterKind, Protocol},
    pipeline::{self, RunSummary},
};

#[derive(Debug, Args, Clone, Default)]
#[command(after_long_help = CONFIG_HELP)]
pub struct RunArgs {
    /// YAML configuration file (see below); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Functions of programs to measure, FILE:SYMBOL as in `kspan hist --func` (comma-separated
    /// or repeated): each call slower than --min-duration becomes a span named after the
    /// function, the child of the request its thread serves [config: capture.functions].
    #[arg(long, value_delimiter = ',')]
    pub func: Vec<crate::uprobe::FuncSpec>,
    /// Where spans go [default: otlp when an endpoint is set, else stdout].
    #[arg(long, value_enum)]
    pub exporter: Option<ExporterKind>,
    /// How spans on stdout look: `text` (one line per span, children indented) or `json`
    /// (OTLP JSON lines) [default: text on a terminal, else json].
    #[arg(long, value_enum)]
    pub format: Option<crate::config::OutputFormat>,
    /// The summary at exit as one JSON line, even on a terminal.
    #[arg(long)]
    pub json: bool,
    /// OTLP endpoint, e.g. http://localhost:4317 [env: OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// OTLP protocol [env: OTEL_EXPORTER_OTLP_PROTOCOL] [default: http/protobuf].
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Extra export header KEY=VALUE; repeat [env: OTEL_EXPORTER_OTLP_HEADERS].
    #[arg(long = "header", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Export compression [env: OTEL_EXPORTER_OTLP_COMPRESSION].
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Time allowed for one export, retries included [env: OTEL_EXPORTER_OTLP_TIMEOUT].
    #[arg(long, value_parser = parse_duration)]
    pub export_timeout: Option<Duration>,
    /// CA certificates (PEM) to trust for an https endpoint instead of the public roots
    /// [env: OTEL_EXPORTER_OTLP_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key
    /// [env: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM) [env: OTEL_EXPORTER_OTLP_CLIENT_KEY].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Spans per export request [default: 512].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest a span waits for its batch [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub batch_timeout: Option<Duration>,
    /// Spans held for export (retries included) before new ones are dropped [default: 16384].
    #[arg(long)]
    pub queue_spans: Option<usize>,
    /// How long a failed batch is retried [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub retry_max_elapsed: Option<Duration>,
    /// Time allowed to flush at exit [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// CPU budget for the agent itself, percent of one core: above it the minimum duration
    /// of syscall spans is raised (the overhead governor).
    #[arg(long)]
    pub cpu_budget: Option<f64>,
    /// Prometheus metrics and health endpoints; '' disables [default: 127.0.0.1:9464].
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// service.name for an executable, EXE=NAME; repeat.
    #[arg(long = "service-name", value_parser = parse_key_value)]
    pub service_names: Vec<(String, String)>,
    /// Stop after this long (e.g. 30s); default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Samplers: `off` keeps every span; `on` (the default) uses the config's `sampling:`
    /// section, or the default one (errors and spans >= 1s kept, the rest at most 10
    /// spans/s per key; see --print-config).
    #[arg(long, value_enum)]
    pub sampling: Option<Switch>,
    /// Collect for this long (e.g. 30s), then print a bottleneck report (as `kspan analyze`)
    /// instead of exporting; no collector needed.
    #[arg(long, value_parser = parse_duration, conflicts_with = "duration")]
    pub analyze: Option<Duration>,
    /// With --analyze: the report as JSON.
    #[arg(long, requires = "analyze")]
    pub analyze_json: bool,
    /// Print the effective configuration (file + flags) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

const CONFIG_HELP: &str = "\
Configuration file (YAML; unknown keys are rejected; every key optional):

  capture:
    pids: [1234]            comms: [nginx]        cgroup: /sys/fs/cgroup/system.slice/x
    syscalls: [read, write] min_duration: 1ms     failed_syscalls: true
    syscall_spans: true     tcp: true             ring_buffer_bytes: 4194304
    drain_interval: 10ms    expected_errors: {futex: [ETIMEDOUT, EAGAIN], ...}  ({} = all failures are errors)
    functions: [libc.so.6:getaddrinfo]   # calls slower than min_duration become spans
  exporter:
    kind: otlp              # otlp | stdout | none
    endpoint: http://localhost:4317
    protocol: grpc          # grpc | http/protobuf | http/json
    headers: {x-api-key: secret}
    compression: gzip       # gzip | none
    timeout: 10s
    tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client-key.pem}
  pipeline:
    batch_size: 512         batch_timeout: 1s     queue_spans: 16384
    retry_max_elapsed: 1m   shutdown_timeout: 5s
  resource:
    attributes: {deployment.environment: prod}
    service_names: {nginx: web-frontend}
  metrics:
    addr: 127.0.0.1:9464    log_interval: 1m
  governor:                 # optional: a CPU budget for kspan itself
    cpu_budget_percent: 5   max_min_duration: 1s
  http:                     # HTTP/1.x request spans, one kernel record per exchange
    enabled: true           request_bytes: 256    response_bytes: 128
    ignore_ports: [9090]
    redact: [{name: order, regex: '(?P<keep>order=)[0-9]+'}]   # default: e-mail, phone,
                            # card, national id, api_key/token/secret values; [] = none
  sampling: ...             # default: errors and >= 1s kept, the rest <= 10/s per key
                            # (--print-config shows it); null keeps every span

Unset exporter keys fall back to OTEL_EXPORTER_OTLP_{TRACES_,}{ENDPOINT,PROTOCOL,HEADERS,
COMPRESSION,TIMEOUT,CERTIFICATE,CLIENT_CERTIFICATE,CLIENT_KEY}; OTEL_RESOURCE_ATTRIBUTES is
added to every resource.
Metrics: GET /metrics (Prometheus), /healthz, /readyz on metrics.addr.";

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Export(#[from] crate::sink::ExportError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::RunError),
    #[error("printing the configuration: {0}")]
    PrintConfig(String),
    #[error("--analyze: {0}")]
    Analyze(String),
}

/// The effective configuration: the file (or defaults), then flags.
pub fn effective_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    args.capture.apply(&mut c);
    if !args.func.is_empty() {
        c.capture.functions = args
            .func
            .iter()
            .map(|f| format!("{}:{}", f.target, f.pattern))
            .collect();
    }
    let e = &mut c.exporter;
    if args.exporter.is_some() {
        e.kind = args.exporter;
    }
    if args.endpoint.is_some() {
        e.endpoint = args.endpoint.clone();
    }
    if args.format.is_some() {
        e.format = args.format;
    }
    if args.protocol.is_some() {
        e.protocol = args.protocol;
    }
    for (k, v) in &args.headers {
        e.headers.insert(k.clone(), v.clone());
    }
    if args.compression.is_some() {
        e.compression = args.compression;
    }
    if args.export_timeout.is_some() {
        e.timeout = args.export_timeout;
    }
    if args.tls_ca.is_some() {
        e.tls.ca_file = args.tls_ca.clone();
    }
    if args.tls_cert.is_some() {
        e.tls.cert_file = args.tls_cert.clone();
    }
    if args.tls_key.is_some() {
        e.tls.key_file = args.tls_key.clone();
    }
    let p = &mut c.pipeline;
    if let Some(v) = args.batch_size {
        p.batch_size = v;
    }
    if let Some(v) = args.batch_timeout {
        p.batch_timeout = v;
    }
    if let Some(v) = args.queue_spans {
        p.queue_spans = v;
    }
    if let Some(v) = args.retry_max_elapsed {
        p.retry_max_elapsed = v;
    }
    if let Some(v) = args.shutdown_timeout {
        p.shutdown_timeout = v;
    }
    if let Some(b) = args.cpu_budget {
        match &mut c.governor {
            Some(g) => g.cpu_budget_percent = b,
            None => {
                c.governor = Some(crate::governor::GovernorConfig {
                    cpu_budget_percent: b,
                    max_min_duration: 1_000_000_000,
                })
            }
        }
    }
    if let Some(a) = &args.metrics_addr {
        c.metrics.addr = (!a.trim().is_empty()).then(|| a.clone());
    }
    match args.sampling {
        Some(Switch::Off) => c.sampling = None,
        Some(Switch::On) if c.sampling.is_none() => c.sampling = crate::config::default_sampling(),
        _ => {}
    }
    for (k, v) in &args.service_names {
        c.resource.service_names.insert(k.clone(), v.clone());
    }
    Ok(c)
}

pub async fn run(args: RunArgs) -> Result<Option<RunSummary>, RunError> {
    let config = effective_config(&args)?;
    // Building is validating: a bad setting stops here, before anything is attached.
    let plan = config.build()?;
    if args.print_config {
        let mut shown = config.clone();
        shown.exporter = crate::sink::effective_exporter(&config.exporter)?;
        let text =
            serde_norway::to_string(&shown).map_err(|e| RunError::PrintConfig(e.to_string()))?;
        print!("{text}");
        return Ok(None);
    }
    let Some(window) = args.analyze else {
        let summary = pipeline::run(plan, args.duration).await?;
        print_summary(&summary, args.json);
        return Ok(Some(summary));
    };
    let store = std::sync::Arc::new(std::sync::Mutex::new(crate::analyze::Store::new()));
    let sink = Box::new(crate::analyze::AnalyzeSink(store.clone()));
    let desc = format!(
        "the report of --analyze, in {}",
        crate::duration::format(window)
    );
    let summary = pipeline::run_with(plan, Some(window), Some((sink, desc))).await?;
    print_summary(&summary, args.json);
    let report = crate::cmd::analyze::ReportArgs {
        trace: None,
        json: args.analyze_json,
        slow_operation: Duration::from_secs(2),
        slow_service: Duration::from_secs(1),
        n_plus_one: 5,
    };
    let mut store = store
        .lock()
        .map_err(|_| RunError::Analyze("the span store was poisoned".into()))?;
    let text = report
        .report(&mut store)
        .map_err(|e| RunError::Analyze(e.to_string()))?;
    println!("{}", text.trim_end());
    Ok(Some(summary))
}

/// The summary at exit, on stderr: a short block on a terminal, else (or with `json`) the
/// `kspan: summary {...}` line scripts read.
fn print_summary(summary: &RunSummary, json: bool) {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        eprintln!(
            "kspan: summary {}",
            serde_json::to_string(summary).unwrap_or_default()
        );
    } else {
        eprint!("{}", summary_text(summary));
    }
}

/// The summary as a person reads it.
fn summary_text(s: &RunSummary) -> String {
    let t = &s.totals;
    let mut out = format!(
        "kspan: summary\n  spans      {} built, {} exported, {} dropped\n",
        t.spans_built,
        t.spans_exported,
        t.dropped_total()
    );
    let dropped: Vec<String> = t
        .dropped
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !dropped.is_empty() {
        out.push_str(&format!("  dropped    {}\n", dropped.join(", ")));
    }
    out.push_str(&format!(
        "  kernel     {} events received, {} syscalls measured\n",
        t.events, s.kernel.syscalls_measured
    ));
    if let Some(r) = &t.requests {
        let q = &r.requests;
        out.push_str(&format!(
            "  requests   {} server, {} client spans; {} linked on this host, {} continued a traceparent\n",
            q.server_spans, q.client_spans, q.linked, q.continued
        ));
    }
    if let Some(l7) = &t.l7 {
        for (name, c) in l7.iter().filter(|(_, c)| c.requests > 0) {
            out.push_str(&format!(
                "  {name:<10} {} requests, {} answered, {} not parsed, {} unanswered\n",
                c.requests, c.responses, c.not_parsed, c.unanswered
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cmd::{Cli, Command};

    fn args(v: &[&str]) -> RunArgs {
        let mut full = vec!["kspan", "run"];
        full.extend_from_slice(v);
        match Cli::try_parse_from(full)
            .unwrap_or_else(|e| panic!("{e}"))
            .command
        {
            Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("kspan-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("kspan.yaml");
        std::fs::write(
            &f,
            "exporter:\n  kind: otlp\n  endpoint: http://a:4317\n  headers: {k1: v1}\ncapture:\n  min_duration: 5ms\n",
        )
        .unwrap();
        let c = effective_config(&args(&[
            "--config",
            f.to_str().unwrap(),
            "--endpoint",
            "http://b:4318",
            "--header",
            "k2=v2",
            "--metrics-addr",
            "",
        ]))
        .unwrap();
        assert_eq!(c.exporter.endpoint.as_deref(), Some("http://b:4318"));
        assert_eq!(c.exporter.kind, Some(ExporterKind::Otlp));
        assert_eq!(c.exporter.headers.len(), 2);
        assert_eq!(c.capture.min_duration, Duration::from_millis(5));
        assert_eq!(c.metrics.addr, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_summary_reads_as_a_block() {
        let mut totals = crate::metrics::Totals {
            events: 12,
            spans_built: 10,
            spans_exported: 4,
            ..Default::default()
        };
        totals.dropped.insert("sampled_out", 6);
        totals.dropped.insert("queue_full", 0);
        let text = summary_text(&RunSummary {
            totals,
            kernel: Default::default(),
        });
        assert_eq!(
            text,
            "kspan: summary\n  spans      10 built, 4 exported, 6 dropped\n  dropped    sampled_out 6\n  kernel     12 events received, 0 syscalls measured\n"
        );
    }

    /// Every default CONFIG_HELP shows is `Config::default()`'s (keys with no default show
    /// examples, and lists and maps are examples too).
    #[test]
    fn config_help_shows_the_defaults() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut section: Option<&str> = None;
        let mut checked = 0;
        for line in CONFIG_HELP.lines() {
            let text = line.split('#').next().unwrap_or_default();
            if text.trim().is_empty() {
                if !line.starts_with("  ") {
                    section = None;
                }
                continue;
            }
            let tokens: Vec<&str> = text.split_whitespace().collect();
            if line.starts_with("  ") && !line.starts_with("   ") {
                section = tokens.first().and_then(|t| t.strip_suffix(':'));
                if tokens.len() < 2 {
                    continue;
                }
            }
            let Some(sec) = section else { continue };
            for w in tokens.windows(2) {
                let Some(key) = w[0].strip_suffix(':') else {
                    continue;
                };
                if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') || key == sec {
                    continue;
                }
                let shown = w[1].trim_end_matches(',');
                let default = match &defaults[sec][key] {
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    _ => continue,
                };
                assert_eq!(shown, default, "CONFIG_HELP shows {sec}.{key}: {shown}");
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} defaults checked");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let e = effective_config(&args(&["--endpoint", "localhost:4317"]))
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(e.to_string().contains("must start with http://"), "{e}");
        let e = effective_config(&args(&["--config", "/nonexistent/kspan.yaml"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read config file /nonexistent/kspan.yaml"),
            "{e}"
        );
        assert!(Cli::try_parse_from(["kspan", "run", "--header", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["kspan", "run", "--exporter", "kafka"]).is_err());
    }
}
