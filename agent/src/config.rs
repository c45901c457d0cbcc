//! The agent's YAML configuration (`kspan run --config FILE`). Every section rejects unknown
//! keys; command-line flags override the file (see `cmd::run`). Defaults live in named
//! constants next to the field they fill.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Spans per export request.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Longest a span waits for its batch to fill.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(1000);
/// Spans held between span building and a successful export (includes batches waiting for a
/// retry while the collector is away). Beyond it new spans are dropped and counted.
pub const DEFAULT_QUEUE_SPANS: usize = 16_384;
/// How long a batch is retried before it is dropped and counted as failed.
pub const DEFAULT_RETRY_MAX_ELAPSED: Duration = Duration::from_secs(60);
/// Time allowed to flush on SIGTERM before exiting.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default minimum duration for a syscall to become a span (failed ones always do).
pub const DEFAULT_MIN_DURATION: Duration = Duration::from_millis(1);
/// Default metrics address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureSection,
    pub exporter: ExporterSection,
    pub pipeline: PipelineSection,
    pub resource: ResourceSection,
    pub metrics: MetricsSection,
    /// HTTP/1.x request spans from socket reads and writes.
    pub http: crate::l7::http::HttpSection,
    /// Samplers (rules -> adaptive -> budget). Default: [`default_sampling`]; `null` (or
    /// `--sampling off`) keeps every span.
    #[serde(default = "default_sampling")]
    pub sampling: Option<crate::sampling::SamplingConfig>,
    /// Overhead governor: a CPU budget for the agent itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub governor: Option<crate::governor::GovernorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capture: CaptureSection::default(),
            exporter: ExporterSection::default(),
            pipeline: PipelineSection::default(),
            resource: ResourceSection::default(),
            metrics: MetricsSection::default(),
            http: crate::l7::http::HttpSection::default(),
            sampling: default_sampling(),
            governor: None,
        }
    }
}

/// Kept whatever the load: errors, and spans at least this slow.
pub const DEFAULT_SLOW_KEEP: &str = "1s";
/// Adaptive target per key (service, span name, kind, status class), spans/s.
pub const DEFAULT_TARGET_PER_KEY: f64 = 10.0;
/// Adaptive ceiling for the whole host, spans/s (errors and always-keep rules on top).
pub const DEFAULT_TARGET_SPANS_PER_SECOND: f64 = 200.0;

/// Sampling when the config says nothing: every error and every span of 1 s or more kept
/// (always-keep rules, `th:0`); the rest adaptive, at most 10 spans/s per key and 200/s in
/// all, each kept span carrying its threshold so counts stay estimable.
pub fn default_sampling() -> Option<crate::sampling::SamplingConfig> {
    let text = format!(
        r#"
rules:
  default_sampling_percentage: 100
  rules:
    - name: errors
      action: keep
      conditions: ["status == STATUS_CODE_ERROR"]
    - name: slow
      action: keep
      conditions: ["duration >= {DEFAULT_SLOW_KEEP}"]
adaptive:
  target_spans_per_second: {DEFAULT_TARGET_SPANS_PER_SECOND}
  target_per_key: {DEFAULT_TARGET_PER_KEY}
  # Errors are kept by the rule above; a busy host always has a few, and the burst boost
  # would multiply everything else by 5 for good (measured: 479 spans/s during a build).
  error_burst_boost: 1
"#
    );
    // A constant text: a failure here is a bug, caught by the tests.
    serde_norway::from_str(&text).ok()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Only these processes (tgids).
    pub pids: Vec<u32>,
    /// Only tasks with these command names.
    pub comms: Vec<String>,
    /// Only tasks in this cgroup v2 (path under /sys/fs/cgroup or numeric id).
    pub cgroup: Option<String>,
    /// Only these syscalls (names); empty: all.
    pub syscalls: Vec<String>,
    /// Syscalls shorter than this only count in the kernel's histograms.
    #[serde(with = "crate::duration::serde_text")]
    pub min_duration: Duration,
    /// Failed syscalls become spans even when shorter than `min_duration`.
    pub failed_syscalls: bool,
    /// Trace syscalls.
    pub syscall_spans: bool,
    /// Trace TCP connections.
    pub tcp: bool,
    /// Ring buffer size in bytes (a power of two, >= 4096).
    pub ring_buffer_bytes: u32,
    /// How often the ring buffer is drained.
    #[serde(with = "crate::duration::serde_text")]
    pub drain_interval: Duration,
    /// Expected outcomes: per syscall name (`"*"`: every syscall), the errnos that are normal
    /// results rather than failures. Such a call keeps `error.type` but not status Error, and
    /// becomes a span only when slower than `min_duration` (decided in the kernel). Writing
    /// this key replaces the whole table; `{}` makes every failure an error again.
    pub expected_errors: BTreeMap<String, Vec<String>>,
    /// Functions of programs to measure, `FILE:SYMBOL` (as `--func`): each call slower than
    /// `min_duration` becomes a span, the child of the request its thread serves.
    pub functions: Vec<String>,
}

/// The default table of expected outcomes: what programs do on purpose, every second, on
/// any busy host (measured during a cargo build: readlink EINVAL, openat/newfstatat/access/
/// statx ENOENT, ioctl ENOTTY, futex ETIMEDOUT/EAGAIN, execve ENOENT were 95 % of the
/// "failed" syscalls).
pub const DEFAULT_EXPECTED_ERRORS: &[(&str, &[&str])] = &[
    // A signal arrived: the caller restarts or handles it.
    ("*", &["EINTR"]),
    // Non-blocking I/O with nothing ready.
    ("read", &["EAGAIN"]),
    ("readv", &["EAGAIN"]),
    ("recvfrom", &["EAGAIN"]),
    ("recvmsg", &["EAGAIN"]),
    ("write", &["EAGAIN"]),
    ("writev", &["EAGAIN"]),
    ("sendto", &["EAGAIN"]),
    ("sendmsg", &["EAGAIN"]),
    ("accept", &["EAGAIN"]),
    ("accept4", &["EAGAIN"]),
    // Non-blocking connect: the handshake goes on (its result is the `tcp connect` span).
    ("connect", &["EINPROGRESS"]),
    // Lock waits that time out or find the value changed.
    ("futex", &["ETIMEDOUT", "EAGAIN"]),
    // "Is this a terminal?"
    ("ioctl", &["ENOTTY"]),
    // "Is this a symlink?" (and does it exist?)
    ("readlink", &["EINVAL", "ENOENT"]),
    ("readlinkat", &["EINVAL", "ENOENT"]),
    // Seeking on a pipe to learn whether it is one.
    ("lseek", &["ESPIPE"]),
    // Create if missing, remove if there.
    ("mkdir", &["EEXIST"]),
    ("mkdirat", &["EEXIST"]),
    ("unlink", &["ENOENT"]),
    ("unlinkat", &["ENOENT"]),
    // Searching paths (PATH, include and library paths, config locations).
    ("open", &["ENOENT"]),
    ("openat", &["ENOENT"]),
    ("stat", &["ENOENT"]),
    ("lstat", &["ENOENT"]),
    ("newfstatat", &["ENOENT"]),
    ("statx", &["ENOENT"]),
    ("access", &["ENOENT"]),
    ("faccessat", &["ENOENT"]),
    ("faccessat2", &["ENOENT"]),
    ("execve", &["ENOENT"]),
    // No child left to wait for.
    ("wait4", &["ECHILD"]),
];

fn default_expected_errors() -> BTreeMap<String, Vec<String>> {
    DEFAULT_EXPECTED_ERRORS
        .iter()
        .map(|(sys, errs)| {
            (
                sys.to_string(),
                errs.iter().map(|e| e.to_string()).collect(),
            )
        })
        .collect()
}

/// The table as (syscall number, errno) pairs, checked.
fn expected_errnos(table: &BTreeMap<String, Vec<String>>) -> Result<Vec<(u32, u32)>, ConfigError> {
    let key = "capture.expected_errors";
    let mut out = Vec::new();
    for (sys, errs) in table {
        let nrs: Vec<u32> = if sys == "*" {
            (0..agent_common::MAX_SYSCALLS as u32).collect()
        } else {
            vec![crate::names::syscall_number(sys.trim())
                .ok_or_else(|| invalid(key, format!("unknown syscall {sys:?}")))?]
        };
        for e in errs {
            let errno = crate::names::errno_number(e)
                .ok_or_else(|| invalid(key, format!("{sys}: unknown errno {e:?} (e.g. ENOENT)")))?;
            if errno as u32 >= agent_common::EXPECTED_ERRNO_LIMIT {
                return Err(invalid(
                    key,
                    format!(
                        "{sys}: {e} is errno {errno}; only errnos below {} can be listed",
                        agent_common::EXPECTED_ERRNO_LIMIT
                    ),
                ));
            }
            out.extend(nrs.iter().map(|&nr| (nr, errno as u32)));
        }
    }
    Ok(out)
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            pids: Vec::new(),
            comms: Vec::new(),
            cgroup: None,
            syscalls: Vec::new(),
            min_duration: DEFAULT_MIN_DURATION,
            failed_syscalls: true,
            syscall_spans: true,
            tcp: true,
            ring_buffer_bytes: crate::capture::DEFAULT_RING_BUFFER_BYTES,
            drain_interval: crate::source::DEFAULT_DRAIN_INTERVAL,
            expected_errors: default_expected_errors(),
            functions: Vec::new(),
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExporterKind {
    /// OTLP to a collector (gRPC or HTTP).
    Otlp,
    /// OTLP JSON, one export request per line, on stdout.
    Stdout,
    /// Build spans and count them, export nothing (for measuring).
    None,
}

/// How spans look on stdout (`exporter.kind: stdout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One readable line per span, children indented (the default on a terminal).
    Text,
    /// OTLP JSON, one export request per line (the default otherwise).
    Json,
}

/// OTLP transport, as in `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    #[value(name = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    #[value(name = "http/json")]
    HttpJson,
}

impl Protocol {
    /// Parses the value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn from_env_value(v: &str) -> Option<Protocol> {
        match v.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "http/json" => Some(Protocol::HttpJson),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

/// Exporter settings. Unset OTLP fields fall back to the standard `OTEL_EXPORTER_OTLP_*`
/// environment variables, then to the OTLP defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExporterSection {
    /// Default: `otlp` when an endpoint is configured (here or in the environment), else
    /// `stdout`.
    pub kind: Option<ExporterKind>,
    /// Collector endpoint, e.g. `http://collector:4317` (gRPC) or `http://collector:4318`
    /// (HTTP; `/v1/traces` is appended unless the traces endpoint variable is used).
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: BTreeMap<String, String>,
    pub compression: Option<Compression>,
    /// Time allowed for one export, retries inside it included.
    #[serde(with = "crate::duration::serde_opt_text")]
    pub timeout: Option<Duration>,
    /// TLS for `https://` endpoints.
    #[serde(skip_serializing_if = "TlsSection::is_empty")]
    pub tls: TlsSection,
    /// `stdout`: `text` or `json`; default: text on a terminal, else json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
}

/// TLS files (PEM). Unset ones fall back to `OTEL_EXPORTER_OTLP_{TRACES_,}CERTIFICATE`,
/// `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// CA certificates to trust instead of the public roots (a private PKI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) for mutual TLS; needs `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl TlsSection {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    pub batch_size: usize,
    #[serde(with = "crate::duration::serde_text")]
    pub batch_timeout: Duration,
    pub queue_spans: usize,
    #[serde(with = "crate::duration::serde_text")]
    pub retry_max_elapsed: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub shutdown_timeout: Duration,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            batch_size: DEFAULT_BATCH_SIZE,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            queue_spans: DEFAULT_QUEUE_SPANS,
            retry_max_elapsed: DEFAULT_RETRY_MAX_ELAPSED,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceSection {
    /// Added to every resource (after `OTEL_RESOURCE_ATTRIBUTES`).
    pub attributes: BTreeMap<String, String>,
    /// `service.name` by executable name (e.g. `nginx: web-frontend`); wins over the process's
    /// own `OTEL_SERVICE_NAME`.
    pub service_names: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Prometheus metrics and health endpoints; `null`/empty to disable.
    pub addr: Option<String>,
    /// Interval of the one-line summary in the log.
    #[serde(with = "crate::duration::serde_text")]
    pub log_interval: Duration,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            addr: Some(DEFAULT_METRICS_ADDR.to_string()),
            log_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {key}: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("config: {0}; kspan will not start with a sampler it cannot build")]
    Sampling(#[from] crate::sampling::SamplingError),
    #[error("config: {0}")]
    Governor(#[from] crate::governor::GovernorError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
}

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        why: why.into(),
    }
}

/// The validated configuration turned into the things that run. Building is validating:
/// nothing is built twice.
pub struct RunPlan {
    pub capture: crate::capture::CaptureConfig,
    pub drain_interval: Duration,
    pub sampler: Option<crate::sampling::Pipeline>,
    pub governor: Option<crate::governor::Governor>,
    pub exporter: ExporterSection,
    pub pipeline: PipelineSection,
    pub resource: ResourceSection,
    pub metrics: MetricsSection,
    /// Request spans (L7): `None` when `http.enabled` is false.
    pub l7: Option<crate::l7::tracker::L7Options>,
}

impl Config {
    /// Reads and parses a YAML file. Errors name the file, the key and its line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses YAML text; an empty document is the default config.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_norway::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde_norway leaves the position out for some top-level errors: find the key.
            match unknown_field(&msg).and_then(|k| key_line(text, k)) {
                Some(line) if !msg.contains(" line ") => format!("{msg} at line {line}"),
                _ => msg,
            }
        })?;
        Ok(config)
    }

    /// Checks values serde cannot.
    /// Checks every setting and builds what runs from them.
    pub fn build(&self) -> Result<RunPlan, ConfigError> {
        let p = &self.pipeline;
        if p.batch_size == 0 {
            return Err(invalid("pipeline.batch_size", "must be > 0"));
        }
        if p.queue_spans < p.batch_size {
            return Err(invalid(
                "pipeline.queue_spans",
                format!(
                    "pipeline.queue_spans ({}) must be >= pipeline.batch_size ({})",
                    p.queue_spans, p.batch_size
                ),
            ));
        }
        if p.batch_timeout.is_zero() {
            return Err(invalid("pipeline.batch_timeout", "must be > 0"));
        }
        if let Some(e) = &self.exporter.endpoint {
            validate_endpoint(e)?;
        }
        let c = &self.capture;
        let mut capture = crate::capture::CaptureConfig::filtered(
            &c.pids,
            &c.comms,
            c.cgroup.as_deref(),
            &c.syscalls,
        )?;
        capture.min_duration = c.min_duration;
        capture.emit_failed = c.failed_syscalls;
        capture.tcp = c.tcp;
        capture.ring_buffer_bytes = c.ring_buffer_bytes;
        capture.expected_errnos = expected_errnos(&c.expected_errors)?;
        capture.syscall_hook = if c.syscall_spans {
            crate::capture::SyscallHook::RawTracepoint
        } else {
            crate::capture::SyscallHook::Off
        };
        capture.emit_syscalls = c.syscall_spans;
        if !c.functions.is_empty() {
            let specs = c
                .functions
                .iter()
                .map(|f| f.parse::<crate::uprobe::FuncSpec>())
                .collect::<Result<Vec<_>, _>>()
                .and_then(|specs| crate::uprobe::find(&specs))
                .map_err(|e| invalid("capture.functions", e.to_string()))?;
            capture.funcs = specs;
            capture.emit_funcs = true;
        }
        let h = &self.http;
        let l7 = if h.enabled {
            for (key, v, range) in [
                (
                    "http.request_bytes",
                    h.request_bytes,
                    crate::l7::REQUEST_BYTES_RANGE,
                ),
                (
                    "http.response_bytes",
                    h.response_bytes,
                    crate::l7::RESPONSE_BYTES_RANGE,
                ),
            ] {
                if !range.contains(&v) {
                    return Err(invalid(
                        key,
                        format!("{v} is outside {}..={}", range.start(), range.end()),
                    ));
                }
            }
            capture.capture_l7(h.request_bytes, h.response_bytes);
            let redactor = crate::l7::redact::Redactor::new(&h.redact)
                .map_err(|e| invalid("http.redact", e.to_string()))?;
            Some(crate::l7::tracker::L7Options {
                ignore_ports: h.ignore_ports.clone(),
                redactor: std::sync::Arc::new(redactor),
            })
        } else {
            None
        };
        let governor = self
            .governor
            .as_ref()
            .map(|g| crate::governor::Governor::new(g, c.min_duration))
            .transpose()?;
        let sampler = self
            .sampling
            .as_ref()
            .map(crate::sampling::Pipeline::new)
            .transpose()?;
        Ok(RunPlan {
            capture,
            drain_interval: c.drain_interval,
            sampler,
            governor,
            exporter: self.exporter.clone(),
            pipeline: self.pipeline.clone(),
            resource: self.resource.clone(),
            metrics: self.metrics.clone(),
            l7,
        })
    }
}

/// The key named by an "unknown field `key`" message.
fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.split("unknown field `").nth(1)?;
    rest.split('`').next()
}

/// 1-based line of the first `key:` in the text.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .or_else(|| t.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// An endpoint must be an absolute http(s) URL with a host.
pub fn validate_endpoint(e: &str) -> Result<(), ConfigError> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                "exporter.endpoint",
                format!("{e:?} must start with http:// or https:// (e.g. http://localhost:4317)"),
            )
        })?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(invalid(
            "exporter.endpoint",
            format!("{e:?} has no host (e.g. http://localhost:4317)"),
        ));
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if !host.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(invalid(
                "exporter.endpoint",
                format!("{e:?} has a bad port {port:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
capture:
  comms: [nginx]
  min_duration: 5ms
  tcp: false
exporter:
  kind: otlp
  endpoint: http://localhost:4317
  protocol: grpc
  headers: {x-api-key: secret}
  compression: gzip
  timeout: 3s
pipeline:
  batch_size: 100
  batch_timeout: 200ms
resource:
  attributes: {deployment.environment: prod}
  service_names: {nginx: web}
metrics:
  addr: 127.0.0.1:9999
"#,
        )
        .unwrap();
        assert_eq!(c.capture.comms, vec!["nginx"]);
        assert_eq!(c.capture.min_duration, Duration::from_millis(5));
        assert!(!c.capture.tcp);
        assert_eq!(c.exporter.kind, Some(ExporterKind::Otlp));
        assert_eq!(c.exporter.protocol, Some(Protocol::Grpc));
        assert_eq!(c.exporter.headers["x-api-key"], "secret");
        assert_eq!(c.exporter.timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.pipeline.batch_size, 100);
        assert_eq!(c.pipeline.queue_spans, DEFAULT_QUEUE_SPANS);
        assert_eq!(c.resource.service_names["nginx"], "web");
        assert_eq!(c.metrics.addr.as_deref(), Some("127.0.0.1:9999"));
        c.build().unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse("capture:\n  min_duration: 1ms\n  colour: blue\n").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = Config::parse("# kspan\nexporters:\n  kind: otlp\n").unwrap_err();
        assert!(
            e.contains("unknown field `exporters`") && e.contains("line 2"),
            "{e}"
        );
        let e = Config::parse("exporters:\n  kind: otlp\n").unwrap_err();
        assert!(e.ends_with("at line 1"), "{e}");
    }

    #[test]
    fn sampling_section() {
        let c = Config::parse(
            r#"
sampling:
  rules:
    default_sampling_percentage: 10
    rules:
      - name: errors
        action: keep
        conditions: ["status == STATUS_CODE_ERROR"]
  adaptive:
    target_spans_per_second: 50
    slow_threshold: 1s
  budget:
    period: month
    money: 100
    cost_per_gb: 0.3
"#,
        )
        .unwrap();
        c.build().unwrap();
        let s = c.sampling.unwrap();
        assert_eq!(s.adaptive.unwrap().slow_threshold, Some(1_000_000_000));
        let e = Config::parse("sampling:\n  rules:\n    rules:\n      - name: x\n        sampling_percentage: 5\n        conditions: ['duration >']\n")
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("rule \"x\" (#0), condition 0: at column 11"),
            "{e}"
        );
        let e = Config::parse("sampling:\n  adaptive:\n    target: 5\n").unwrap_err();
        assert!(
            e.contains("unknown field `target`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn functions_are_found_when_the_plan_is_built() {
        let plan = Config::parse("capture:\n  functions: [libc.so.6:getaddrinfo]\n")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(plan.capture.funcs.len(), 1);
        assert_eq!(plan.capture.funcs[0].name, "getaddrinfo");
        assert!(plan.capture.emit_funcs);
        for (yaml, says) in [
            ("[libc.so.6:getaddrinf]", "did you mean getaddrinfo"),
            ("[getaddrinfo]", "expected FILE:SYMBOL"),
            ("[/no/such/file:f]", "no file"),
        ] {
            let e = Config::parse(&format!("capture:\n  functions: {yaml}\n"))
                .unwrap()
                .build()
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("capture.functions") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let e = Config::parse("capture:\n  min_duration: soon\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("exporter:\n  protocol: udp\n").unwrap_err();
        assert!(e.contains("unknown variant `udp`"), "{e}");
        let c = Config::parse("pipeline:\n  batch_size: 0\n").unwrap();
        assert!(c.build().is_err());
    }

    #[test]
    fn http_section() {
        // On by default, with the default redaction and head sizes.
        let plan = Config::default().build().unwrap();
        let opts = plan.l7.expect("HTTP on by default");
        assert_eq!(
            (
                plan.capture.l7_request_bytes,
                plan.capture.l7_response_bytes
            ),
            (
                crate::l7::DEFAULT_REQUEST_BYTES,
                crate::l7::DEFAULT_RESPONSE_BYTES
            )
        );
        assert_eq!(opts.redactor.redact("to=a@b.com"), "to=***");
        let c = Config::parse(
            "http:\n  prefix_bytes: 512\n  ignore_ports: [9090]\n  redact: []\ncapture:\n  syscall_spans: false\n",
        )
        .unwrap();
        let plan = c.build().unwrap();
        assert_eq!(
            plan.capture.l7_request_bytes, 512,
            "prefix_bytes is request_bytes"
        );
        // HTTP rides on the syscall programs, which stay quiet.
        assert_eq!(
            plan.capture.syscall_hook,
            crate::capture::SyscallHook::RawTracepoint
        );
        assert!(!plan.capture.emit_syscalls);
        let opts = plan.l7.unwrap();
        assert_eq!(opts.ignore_ports, vec![9090]);
        assert_eq!(opts.redactor.redact("to=a@b.com"), "to=a@b.com");
        let off = Config::parse("http: {enabled: false}\n")
            .unwrap()
            .build()
            .unwrap();
        assert!(off.l7.is_none());
        assert_eq!(off.capture.l7_request_bytes, 0);
        for (text, key) in [
            ("http: {prefix_bytes: 8}\n", "http.request_bytes"),
            ("http: {request_bytes: 5000}\n", "http.request_bytes"),
            ("http: {response_bytes: 4}\n", "http.response_bytes"),
            ("http: {redact: [{name: x, regex: '('}]}\n", "http.redact"),
        ] {
            match Config::parse(text).unwrap().build() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {:?}", other.err()),
            }
        }
        assert!(Config::parse("http: {colour: blue}\n").is_err());
    }

    #[test]
    fn endpoints() {
        for ok in [
            "http://localhost:4317",
            "https://collector.example:443/v1/traces",
            "http://[::1]:4318",
            "http://10.0.0.1",
        ] {
            validate_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "localhost:4317",
            "http://",
            "http://:4317",
            "http://host:port",
            "ftp://x",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }
}
