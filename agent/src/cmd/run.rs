//! `kspan run`: kernel events -> spans -> OTLP (or stdout).
//!
//! Stages and their queues:
//! reader (this task) --[events, block]--> span builder --[spans, drop newest]--> exporter.
//! The reader blocks when the builder is behind, so the kernel's ring buffer absorbs bursts
//! and counts what it cannot hold (`ringbuf_full`).
use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{events::capture_config, parse_duration, FilterArgs};
use crate::{
    capture::{Capture, CaptureError, KernelCounters, SyscallHook},
    clock::WallClock,
    config::{Compression, Config, ConfigError, ExporterKind, Protocol},
    conns::ProcFdResolver,
    decode::{self, RawEvent},
    event::kind_name,
    export::{ExportError, ExportStage, SpanSink},
    metrics::{self, DropReason, MetricsError, Stats, Totals},
    procinfo::{HostResource, ProcessCache},
    source::RingReady,
    spans::{Built, SpanBuilder},
};

/// Largest chunk of events or spans passed between stages at once.
pub const MAX_CHUNK: usize = 512;
/// Chunks the reader may have in flight to the builder.
pub const EVENT_QUEUE_CHUNKS: usize = 64;
/// How often kernel counters and gauges are refreshed.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the budget's spend is written to its state file (and once at exit).
const BUDGET_SAVE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Args, Clone, Default)]
#[command(after_long_help = CONFIG_HELP)]
pub struct RunArgs {
    /// YAML configuration file (see below); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Syscalls shorter than this become no span (only histogram counts) [default: 1ms].
    #[arg(long, value_parser = parse_duration)]
    pub min_duration: Option<Duration>,
    /// No spans for failed syscalls shorter than --min-duration.
    #[arg(long)]
    pub no_failed: bool,
    /// No syscall spans.
    #[arg(long)]
    pub no_syscalls: bool,
    /// No TCP spans.
    #[arg(long)]
    pub no_tcp: bool,
    /// Ring buffer size in bytes (a power of two, >= 4096).
    #[arg(long)]
    pub ring_buffer_bytes: Option<u32>,
    /// Where spans go [default: otlp when an endpoint is set, else stdout].
    #[arg(long, value_enum)]
    pub exporter: Option<ExporterKind>,
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
    drain_interval: 10ms
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
    retry_max_elapsed: 60s  shutdown_timeout: 5s
  resource:
    attributes: {deployment.environment: prod}
    service_names: {nginx: web-frontend}
  metrics:
    addr: 127.0.0.1:9464    log_interval: 60s
  governor:                 # optional: a CPU budget for kspan itself
    cpu_budget_percent: 5   max_min_duration: 1s
  sampling: ...             # see the README's Sampling section

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
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Events(#[from] super::events::EventsError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("setting up signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error("registering the ring buffer for polling: {0}")]
    RingPoll(#[source] std::io::Error),
    #[error("printing the configuration: {0}")]
    PrintConfig(String),
}

/// The effective configuration: the file (or defaults), then flags.
pub fn effective_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let f = &args.filter;
    if !f.pid.is_empty() {
        c.capture.pids = f.pid.clone();
    }
    if !f.comm.is_empty() {
        c.capture.comms = f.comm.clone();
    }
    if f.cgroup.is_some() {
        c.capture.cgroup = f.cgroup.clone();
    }
    if !f.syscalls.is_empty() {
        c.capture.syscalls = f.syscalls.clone();
    }
    if let Some(d) = args.min_duration {
        c.capture.min_duration = d;
    }
    if args.no_failed {
        c.capture.failed_syscalls = false;
    }
    if args.no_syscalls {
        c.capture.syscall_spans = false;
    }
    if args.no_tcp {
        c.capture.tcp = false;
    }
    if let Some(b) = args.ring_buffer_bytes {
        c.capture.ring_buffer_bytes = b;
    }
    let e = &mut c.exporter;
    if args.exporter.is_some() {
        e.kind = args.exporter;
    }
    if args.endpoint.is_some() {
        e.endpoint = args.endpoint.clone();
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
    for (k, v) in &args.service_names {
        c.resource.service_names.insert(k.clone(), v.clone());
    }
    c.validate()?;
    Ok(c)
}

/// Printed on stderr at exit (`kspan: summary {...}`).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub totals: Totals,
    pub kernel: KernelCounters,
}

pub async fn run(args: RunArgs) -> Result<Option<RunSummary>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};

    let config = effective_config(&args)?;
    if args.print_config {
        let mut shown = config.clone();
        shown.exporter = crate::export::effective_exporter(&config.exporter)?;
        let text =
            serde_norway::to_string(&shown).map_err(|e| RunError::PrintConfig(e.to_string()))?;
        print!("{text}");
        return Ok(None);
    }
    // Before anything is attached or served: a state file kspan cannot use stops it here.
    let sampler = match &config.sampling {
        Some(c) => {
            let mut p = crate::sampling::Pipeline::new(c)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if let Some(w) = p
                .open_state()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?
            {
                log::warn!("sampling.budget.{w}");
            }
            Some(p)
        }
        None => None,
    };
    let filter = FilterArgs {
        pid: config.capture.pids.clone(),
        comm: config.capture.comms.clone(),
        cgroup: config.capture.cgroup.clone(),
        syscalls: config.capture.syscalls.clone(),
    };
    let mut cc = capture_config(&filter)?;
    cc.min_duration = config.capture.min_duration;
    cc.emit_failed = config.capture.failed_syscalls;
    cc.tcp = config.capture.tcp;
    cc.ring_buffer_bytes = config.capture.ring_buffer_bytes;
    cc.syscall_hook = if config.capture.syscall_spans {
        SyscallHook::RawTracepoint
    } else {
        SyscallHook::Off
    };

    let stats = Arc::new(Stats::new());
    let (sink, desc) = SpanSink::build(&config.exporter)?;
    let metrics_task = match &config.metrics.addr {
        Some(a) => {
            let (addr, task) = metrics::serve(a, stats.clone()).await?;
            eprintln!("kspan: metrics on http://{addr}/metrics (health: /healthz, /readyz)");
            Some(task)
        }
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;

    let mut capture = Capture::start(cc)?;
    stats.set_attached(true);
    let mut ready =
        RingReady::new(&capture, config.capture.drain_interval).map_err(RunError::RingPoll)?;

    let (span_tx, span_rx) = crate::queue::bounded::<Built>(config.pipeline.queue_spans);
    let (event_tx, event_rx) = mpsc::channel::<Vec<RawEvent>>(EVENT_QUEUE_CHUNKS);
    let exporter =
        tokio::spawn(ExportStage::new(sink, span_rx, config.pipeline.clone(), stats.clone()).run());
    let pods = match crate::k8s::connect().await {
        Some((client, node)) => {
            eprintln!("kspan: following the pods of node {node} for Kubernetes metadata");
            let cache = Arc::new(crate::k8s::PodCache::default());
            tokio::spawn(crate::k8s::follow(client, node, cache.clone()));
            Some(cache)
        }
        None => None,
    };
    let procs = ProcessCache::new(
        HostResource::detect(&config.resource.attributes),
        config.resource.service_names.clone(),
    )
    .with_pods(pods);
    let builder = SpanBuilder::new(WallClock::new(), procs, ProcFdResolver::default());
    let build_task = tokio::spawn(build_stage(
        builder,
        sampler,
        event_rx,
        span_tx,
        stats.clone(),
    ));
    eprintln!("kspan: tracing (programs attached); spans to {desc}; stop with Ctrl-C");

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
    let mut log_tick =
        tokio::time::interval(config.metrics.log_interval.max(Duration::from_secs(1)));
    log_tick.tick().await;
    let mut governor = match &config.governor {
        Some(g) => Some(
            crate::governor::Governor::new(g, config.capture.min_duration)
                .map_err(ConfigError::Invalid)?,
        ),
        None => None,
    };
    let mut cpu_before = (crate::governor::own_cpu(), std::time::Instant::now());
    loop {
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = ready.ready() => {
                let chunk = drain_events(&mut capture, &stats);
                if !chunk.is_empty() && event_tx.send(chunk).await.is_err() {
                    break;
                }
            }
            _ = stats_tick.tick() => {
                stats.update_kernel(&capture.loss_counters());
                let now = (crate::governor::own_cpu(), std::time::Instant::now());
                let wall = now.1.duration_since(cpu_before.1).as_secs_f64().max(1e-3);
                let pct = 100.0 * now.0.saturating_sub(cpu_before.0).as_secs_f64() / wall;
                cpu_before = now;
                if let Some(g) = governor.as_mut() {
                    if let crate::governor::Action::Set(d) = g.tick(pct) {
                        match capture.set_min_duration_override(d) {
                            Ok(()) => log::warn!(
                                "overhead governor: agent CPU {pct:.1}% (budget {}%): syscall spans now need >= {}",
                                config.governor.as_ref().map_or(0.0, |g| g.cpu_budget_percent),
                                humantime::format_duration(d)
                            ),
                            Err(e) => log::warn!("overhead governor: {e}"),
                        }
                    }
                }
                stats.set_cpu(pct, governor.as_ref().map_or(config.capture.min_duration, |g| g.current()));
            }
            _ = log_tick.tick() => log_summary(&stats.totals()),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => break,
        }
    }
    eprintln!("kspan: stopping: detaching programs, flushing spans");
    drop(ready);
    capture.detach();
    stats.set_attached(false);
    loop {
        let chunk = drain_events(&mut capture, &stats);
        if chunk.is_empty() || event_tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(event_tx);
    let _ = build_task.await;
    let _ = exporter.await;
    let kernel = capture.counters();
    stats.update_kernel(&kernel);
    if let Some(t) = metrics_task {
        t.abort();
    }
    let summary = RunSummary {
        totals: stats.totals(),
        kernel,
    };
    eprintln!(
        "kspan: summary {}",
        serde_json::to_string(&summary).unwrap_or_default()
    );
    Ok(Some(summary))
}

fn log_summary(t: &Totals) {
    log::info!(
        "events {} spans built {} exported {} dropped {} ({}) queued {}",
        t.events,
        t.spans_built,
        t.spans_exported,
        t.dropped_total(),
        t.dropped
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        t.queue_spans
    );
}

/// Drains the ring buffer into decoded events; undecodable records are counted, and the
/// bytes found are the ring buffer's fill level.
fn drain_events(capture: &mut Capture, stats: &Stats) -> Vec<RawEvent> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut bad = 0u64;
    capture.drain(|b| {
        bytes += b.len();
        match decode::decode(b) {
            Ok(ev) => out.push(ev),
            Err(e) => {
                bad += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    });
    stats.dropped(DropReason::Undecodable, bad);
    stats.set_ring_fill(bytes);
    out
}

/// Builds spans from events, samples them, and passes them on in chunks; a full queue drops
/// the newest.
async fn build_stage(
    mut builder: SpanBuilder<ProcFdResolver>,
    mut sampler: Option<crate::sampling::Pipeline>,
    mut rx: mpsc::Receiver<Vec<RawEvent>>,
    tx: crate::queue::QueueTx<Built>,
    stats: Arc<Stats>,
) {
    use agent_common::EventKind;
    const KINDS: [EventKind; 4] = [
        EventKind::Syscall,
        EventKind::TcpConnect,
        EventKind::TcpAccept,
        EventKind::TcpClose,
    ];
    let mut last_save = std::time::Instant::now();
    let save = |sampler: &Option<crate::sampling::Pipeline>| {
        if let Some(Err(e)) = sampler.as_ref().map(|p| p.save_state()) {
            log::warn!("sampling.budget.state_file: {e}");
        }
    };
    while let Some(events) = rx.recv().await {
        // Counted per received chunk, not per event: the stats are shared atomics.
        let mut by_kind = [0u64; KINDS.len()];
        let mut sampled_out = 0u64;
        for part in events.chunks(MAX_CHUNK) {
            let mut out = Vec::with_capacity(part.len());
            for ev in part {
                let kind = match ev {
                    RawEvent::Syscall(..) => EventKind::Syscall,
                    RawEvent::Tcp(k, ..) => *k,
                };
                if let Some(i) = KINDS.iter().position(|k| *k == kind) {
                    by_kind[i] += 1;
                }
                let mut built = builder.build(ev);
                if let Some(p) = sampler.as_mut() {
                    let o = p.decide(&built);
                    if !o.keep {
                        sampled_out += 1;
                        continue;
                    }
                    crate::sampling::annotate(&mut built.span, &o, p.decider_name(o.decider));
                }
                out.push(built);
            }
            if out.is_empty() {
                continue;
            }
            let sent = tx.send(out);
            stats.dropped(DropReason::QueueFull, sent.full as u64);
            stats.dropped(DropReason::ExportFailed, sent.closed as u64);
        }
        stats.add_spans_built(events.len() as u64);
        stats.dropped(DropReason::SampledOut, sampled_out);
        for (k, n) in KINDS.iter().zip(by_kind) {
            stats.add_events(kind_name(*k), n);
        }
        stats.set_open_connections(builder.open_connections());
        if let Some(b) = sampler
            .as_ref()
            .and_then(|p| p.budget_status(crate::clock::unix_now_ns()))
        {
            stats.set_budget(&b);
        }
        if last_save.elapsed() >= BUDGET_SAVE_INTERVAL {
            save(&sampler);
            last_save = std::time::Instant::now();
        }
    }
    save(&sampler);
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
    fn bad_inputs_are_clear_errors() {
        let e = effective_config(&args(&["--endpoint", "localhost:4317"])).unwrap_err();
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
