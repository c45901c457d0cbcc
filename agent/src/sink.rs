//! Where spans go: the OTLP exporter (gRPC or HTTP, TLS, headers, the standard
//! `OTEL_EXPORTER_OTLP_*` variables), stdout as OTLP JSON lines, or nowhere. Each is a
//! [`Sink`]; `pipeline::export` batches and retries in front of it.
use std::{future::Future, io::Write, pin::Pin, time::Duration};

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanExporter as _},
    Resource,
};

use crate::config::{
    Compression, ExporterKind, ExporterSection, OutputFormat, Protocol, TlsSection,
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("bad header {name:?} for the exporter: {why}")]
    Header { name: String, why: String },
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL (or _TRACES_PROTOCOL) is {0:?}; use grpc, http/protobuf or http/json")]
    EnvProtocol(String),
    #[error("exporter.tls: {0}")]
    Tls(String),
    #[error("{var} is {value:?}; use {expected} (or unset it)")]
    EnvValue {
        var: String,
        value: String,
        expected: &'static str,
    },
}

/// TLS material, read and checked at start so that a bad file is an error now, not a failed
/// export later.
#[derive(Default)]
struct TlsFiles {
    /// PEM CA certificates to trust instead of the public roots.
    ca: Option<Vec<u8>>,
    /// PEM client certificate chain and private key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }
}

fn tls_file(configured: &Option<std::path::PathBuf>, var: &str) -> Option<std::path::PathBuf> {
    configured.clone().or_else(|| otlp_env(var).map(Into::into))
}

/// Reads a PEM file holding at least one certificate.
fn read_certs(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ExportError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path)
        .map_err(|e| ExportError::Tls(format!("{what} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExportError::Tls(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ExportError::Tls(format!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

fn read_tls(cfg: &TlsSection) -> Result<TlsFiles, ExportError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let ca = tls_file(&cfg.ca_file, "CERTIFICATE");
    let cert = tls_file(&cfg.cert_file, "CLIENT_CERTIFICATE");
    let key = tls_file(&cfg.key_file, "CLIENT_KEY");
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let cert = read_certs(&c, "cert_file")?;
            let key = std::fs::read(&k)
                .map_err(|e| ExportError::Tls(format!("key_file {}: {e}", k.display())))?;
            PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                ExportError::Tls(format!(
                    "key_file {} holds no usable PEM private key: {e}",
                    k.display()
                ))
            })?;
            Some((cert, key))
        }
        _ => {
            return Err(ExportError::Tls(
                "a client certificate needs its key: give both cert_file and key_file \
                 (--tls-cert and --tls-key)"
                    .into(),
            ))
        }
    };
    Ok(TlsFiles {
        ca: ca.map(|p| read_certs(&p, "ca_file")).transpose()?,
        identity,
    })
}

/// An export that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Otlp(#[source] opentelemetry_sdk::error::OTelSdkError),
    #[error("encoding spans as OTLP JSON: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("writing to stdout: {0}")]
    Write(#[source] std::io::Error),
    /// The output was closed by its reader (`kspan run | head`): nothing more can go there.
    #[error("stdout was closed by its reader")]
    Closed,
    #[error("shutdown deadline reached during export")]
    Deadline,
    /// The call outlived its limit (the exporter's timeout and a margin) and was cancelled.
    #[error("export call cancelled after {0:?} (exporter.timeout plus {CALL_MARGIN:?})")]
    TimedOut(Duration),
}

/// What an export call may take beyond the exporter's own timeout before the export stage
/// cancels it (the exporter's timeout error should come first).
pub const CALL_MARGIN: Duration = Duration::from_secs(1);

/// The longest one export call may take, end to end, retries inside the exporter included:
/// its timeout (`exporter.timeout`, else `OTEL_EXPORTER_OTLP_{TRACES_,}TIMEOUT`, else 10 s)
/// plus [`CALL_MARGIN`].
pub fn call_limit(cfg: &ExporterSection) -> Duration {
    cfg.timeout.unwrap_or_else(env_timeout) + CALL_MARGIN
}

/// The future of one export.
pub type ExportFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where batches go. The OpenTelemetry exporter contract: whole batches of one resource,
/// never called concurrently, retries (if any) inside, and a timeout.
pub trait Sink: Send {
    fn export<'a>(&'a mut self, resource: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a>;
    /// Flushes and closes; called once, at exit.
    fn shutdown(&mut self);
    /// A sink that shows a whole batch at once (the terminal view: children under parents
    /// of other processes) gets [`Sink::export_batch`] instead of one call per resource.
    fn whole_batches(&self) -> bool {
        false
    }
    /// One batch of several resources (only called when [`Sink::whole_batches`]).
    fn export_batch<'a>(
        &'a mut self,
        _batch: Vec<(&'a crate::procinfo::ProcResource, Vec<SpanData>)>,
    ) -> ExportFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A write to stdout: a reader that went away (EPIPE) is [`SinkError::Closed`].
fn write_stdout(bytes: &[u8]) -> Result<(), SinkError> {
    let mut lock = std::io::stdout().lock();
    lock.write_all(bytes)
        .and_then(|_| lock.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => SinkError::Closed,
            _ => SinkError::Write(e),
        })
}

/// The OTLP exporter of `opentelemetry-otlp`.
pub struct OtlpSink(opentelemetry_otlp::SpanExporter);

impl Sink for OtlpSink {
    fn export<'a>(&'a mut self, resource: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a> {
        Box::pin(async move {
            self.0.set_resource(resource);
            self.0.export(spans).await.map_err(SinkError::Otlp)
        })
    }

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// One OTLP/JSON `ExportTraceServiceRequest` per line on stdout.
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn export<'a>(&'a mut self, resource: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a> {
        let req = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        };
        let result = serde_json::to_vec(&req)
            .map_err(SinkError::Encode)
            .and_then(|mut line| {
                line.push(b'\n');
                write_stdout(&line)
            });
        Box::pin(std::future::ready(result))
    }

    fn shutdown(&mut self) {}
}

/// One readable line per span on stdout (a terminal), children under their parents.
pub struct TextSink(pub crate::text::Colour);

impl Sink for TextSink {
    fn export<'a>(&'a mut self, resource: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a> {
        let service = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.as_str().into_owned())
            .unwrap_or_default();
        let pairs: Vec<(&str, &SpanData)> = spans.iter().map(|s| (service.as_str(), s)).collect();
        let text = crate::text::render(&pairs, self.0);
        Box::pin(std::future::ready(write_stdout(text.as_bytes())))
    }

    fn shutdown(&mut self) {}

    fn whole_batches(&self) -> bool {
        true
    }

    fn export_batch<'a>(
        &'a mut self,
        batch: Vec<(&'a crate::procinfo::ProcResource, Vec<SpanData>)>,
    ) -> ExportFuture<'a> {
        let pairs: Vec<(&str, &SpanData)> = batch
            .iter()
            .flat_map(|(r, spans)| spans.iter().map(|s| (r.service_name.as_str(), s)))
            .collect();
        let text = crate::text::render(&pairs, self.0);
        Box::pin(std::future::ready(write_stdout(text.as_bytes())))
    }
}

/// How spans on stdout look: as asked, else text on a terminal and OTLP JSON lines otherwise.
pub fn stdout_format(cfg: &ExporterSection) -> OutputFormat {
    use std::io::IsTerminal;
    cfg.format.unwrap_or(if std::io::stdout().is_terminal() {
        OutputFormat::Text
    } else {
        OutputFormat::Json
    })
}

/// Colours on a terminal, unless `NO_COLOR` is set (<https://no-color.org>) or it is dumb.
fn text_colour() -> crate::text::Colour {
    use std::io::IsTerminal;
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() && !dumb {
        crate::text::Colour::Ansi
    } else {
        crate::text::Colour::None
    }
}

/// The endpoint and the timeout, the same for both OTLP transports.
fn endpoint_and_timeout<B: WithExportConfig>(b: B, endpoint: &str, timeout: Option<Duration>) -> B {
    let b = b.with_endpoint(endpoint);
    match timeout {
        Some(t) => b.with_timeout(t),
        None => b,
    }
}

/// Spans are built and counted, not sent (`--exporter none`).
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn export<'a>(&'a mut self, _: &'a Resource, _: Vec<SpanData>) -> ExportFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn shutdown(&mut self) {}
}

/// What the exporter resolved to, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkDescription {
    pub kind: ExporterKind,
    pub protocol: Option<Protocol>,
    pub endpoint: Option<String>,
    /// The setting or variable the endpoint came from.
    pub endpoint_from: Option<String>,
    /// How spans look on stdout.
    pub format: Option<OutputFormat>,
}

impl std::fmt::Display for SinkDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ExporterKind::Stdout => match self.format {
                Some(OutputFormat::Text) => write!(f, "stdout (one line per span)"),
                _ => write!(f, "stdout (OTLP JSON lines)"),
            },
            ExporterKind::None => write!(f, "none (spans are built and counted, not sent)"),
            ExporterKind::Otlp => write!(
                f,
                "OTLP {} to {}{}",
                match self.protocol {
                    Some(Protocol::Grpc) => "gRPC",
                    Some(Protocol::HttpJson) => "HTTP/JSON",
                    _ => "HTTP/protobuf",
                },
                self.endpoint.as_deref().unwrap_or("?"),
                self.endpoint_from
                    .as_deref()
                    .map(|f| format!(" (from {f})"))
                    .unwrap_or_default()
            ),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A standard exporter variable: `OTEL_EXPORTER_OTLP_TRACES_<setting>`, else
/// `OTEL_EXPORTER_OTLP_<setting>` (the signal-specific one wins), if set and not empty.
fn otlp_env(setting: &str) -> Option<String> {
    otlp_env_var(setting).map(|(_, v)| v)
}

/// Like [`otlp_env`], with the name of the variable the value came from.
fn otlp_env_var(setting: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{setting}"),
        format!("OTEL_EXPORTER_OTLP_{setting}"),
    ]
    .into_iter()
    .find_map(|name| env_nonempty(&name).map(|v| (name, v)))
}

/// Checks the standard variables that stand in for unset settings, so that a bad value stops
/// kspan now, naming the variable, rather than being ignored by the exporter.
fn check_env(cfg: &ExporterSection) -> Result<(), ExportError> {
    if cfg.timeout.is_none() {
        if let Some((var, value)) = otlp_env_var("TIMEOUT") {
            if value.trim().parse::<u64>().is_err() {
                return Err(ExportError::EnvValue {
                    var,
                    value,
                    expected: "a whole number of milliseconds, e.g. 10000",
                });
            }
        }
    }
    if cfg.compression.is_none() {
        if let Some((var, value)) = otlp_env_var("COMPRESSION") {
            if !matches!(value.trim(), "gzip" | "none") {
                return Err(ExportError::EnvValue {
                    var,
                    value,
                    expected: "gzip or none",
                });
            }
        }
    }
    Ok(())
}

/// The URL spans are sent to and where it came from (`--endpoint`/`exporter.endpoint`, a
/// standard variable, or the OTLP default), resolved here so that what kspan says is what it
/// uses. HTTP: a configured base URL gets `/v1/traces` when it has no path;
/// `OTEL_EXPORTER_OTLP_ENDPOINT` always gets it appended and `..._TRACES_ENDPOINT` is used
/// as it is (the OTLP exporter specification's rules).
pub fn resolve_endpoint(cfg: &ExporterSection, protocol: Protocol) -> (String, String) {
    let http = protocol != Protocol::Grpc;
    if let Some(e) = &cfg.endpoint {
        let url = if http { http_traces_url(e) } else { e.clone() };
        return (url, "exporter.endpoint".into());
    }
    match otlp_env_var("ENDPOINT") {
        Some((var, v)) => {
            let v = v.trim().to_string();
            let url = if http && !var.contains("_TRACES_") {
                format!("{}/v1/traces", v.trim_end_matches('/'))
            } else {
                v
            };
            (url, var)
        }
        None if http => (
            "http://localhost:4318/v1/traces".into(),
            "the OTLP default".into(),
        ),
        None => ("http://localhost:4317".into(), "the OTLP default".into()),
    }
}

/// The exporter settings in force: unset ones filled from the standard variables and the
/// OTLP defaults, as `SpanSink::build` resolves them (for `--print-config`). Headers from
/// the environment are left out: they often hold credentials.
pub fn effective_exporter(cfg: &ExporterSection) -> Result<ExporterSection, ExportError> {
    let mut e = cfg.clone();
    let kind = cfg.kind.unwrap_or_else(|| default_kind(cfg));
    e.kind = Some(kind);
    if kind != ExporterKind::Otlp {
        return Ok(e);
    }
    check_env(cfg)?;
    let protocol = resolve_protocol(cfg)?;
    e.protocol = Some(protocol);
    e.endpoint = Some(resolve_endpoint(cfg, protocol).0);
    if e.timeout.is_none() {
        e.timeout = Some(env_timeout());
    }
    if e.compression.is_none() {
        e.compression = Some(match otlp_env("COMPRESSION").as_deref().map(str::trim) {
            Some("gzip") => Compression::Gzip,
            _ => Compression::None,
        });
    }
    Ok(e)
}

/// The exporter kind when none is configured: OTLP when an endpoint is set (config or the
/// standard variables), else stdout.
pub fn default_kind(cfg: &ExporterSection) -> ExporterKind {
    if cfg.endpoint.is_some() || otlp_env("ENDPOINT").is_some() {
        ExporterKind::Otlp
    } else {
        ExporterKind::Stdout
    }
}

/// Protocol: config, then `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, then `http/protobuf` (the OTLP default).
pub fn resolve_protocol(cfg: &ExporterSection) -> Result<Protocol, ExportError> {
    if let Some(p) = cfg.protocol {
        return Ok(p);
    }
    match otlp_env("PROTOCOL") {
        Some(v) => Protocol::from_env_value(&v).ok_or(ExportError::EnvProtocol(v)),
        None => Ok(Protocol::HttpProtobuf),
    }
}

/// The HTTP exporter's client with the TLS files: what opentelemetry-otlp would build
/// (reqwest with rustls and the export timeout) plus the roots and identity.
fn http_client(tls: &TlsFiles, timeout: Option<Duration>) -> Result<reqwest::Client, ExportError> {
    let bad = |what: &str, e: reqwest::Error| ExportError::Tls(format!("{what}: {e}"));
    let timeout = timeout.unwrap_or_else(env_timeout);
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = &tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| bad("ca_file", e))?;
        b = b.tls_certs_only(certs);
    }
    if let Some((cert, key)) = &tls.identity {
        let pem = [cert.as_slice(), b"\n", key.as_slice()].concat();
        b = b
            .identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad("cert_file/key_file", e))?);
    }
    b.build().map_err(|e| bad("building the HTTP client", e))
}

/// What to do about an export error, when its text says enough to tell.
pub(crate) fn error_hint(e: &str) -> &'static str {
    let l = e.to_ascii_lowercase();
    if l.contains("certificate") || l.contains("unknownissuer") || l.contains("handshake") {
        " (TLS: a collector with a private CA needs exporter.tls.ca_file or --tls-ca; one that \
         asks for a client certificate needs --tls-cert and --tls-key)"
    } else if l.contains("network error") || l.contains("connection refused") {
        " (is the collector running and reachable at the endpoint? for https, a refused \
         certificate shows here too: see exporter.tls)"
    } else {
        ""
    }
}

/// The export timeout when none is configured: `OTEL_EXPORTER_OTLP_{TRACES_,}TIMEOUT` (ms,
/// checked by `check_env`), else OTLP's default.
fn env_timeout() -> Duration {
    otlp_env("TIMEOUT")
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis)
}

/// OTLP's default export timeout, used for a client kspan builds itself.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP endpoint given as a base URL gets the traces path, as the OTLP
/// `OTEL_EXPORTER_OTLP_ENDPOINT` rules say.
fn http_traces_url(endpoint: &str) -> String {
    let scheme_end = endpoint.find("://").map_or(0, |i| i + 3);
    let path = endpoint[scheme_end..]
        .find('/')
        .map(|i| &endpoint[scheme_end + i..]);
    match path {
        None | Some("/") => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        Some(_) => endpoint.to_string(),
    }
}

/// The sink the exporter settings name, and what it resolved to.
pub fn build(cfg: &ExporterSection) -> Result<(Box<dyn Sink>, SinkDescription), ExportError> {
    {
        let kind = cfg.kind.unwrap_or_else(|| default_kind(cfg));
        match kind {
            ExporterKind::Stdout => {
                let format = stdout_format(cfg);
                Ok((
                    match format {
                        OutputFormat::Json => Box::new(StdoutSink) as Box<dyn Sink>,
                        OutputFormat::Text => Box::new(TextSink(text_colour())),
                    },
                    SinkDescription {
                        kind,
                        protocol: None,
                        endpoint: None,
                        endpoint_from: None,
                        format: Some(format),
                    },
                ))
            }
            ExporterKind::None => Ok((
                Box::new(DiscardSink),
                SinkDescription {
                    kind,
                    protocol: None,
                    endpoint: None,
                    endpoint_from: None,
                    format: None,
                },
            )),
            ExporterKind::Otlp => {
                check_env(cfg)?;
                let protocol = resolve_protocol(cfg)?;
                let (endpoint, endpoint_from) = resolve_endpoint(cfg, protocol);
                let compression = cfg.compression.and_then(|c| match c {
                    Compression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
                    Compression::None => None,
                });
                let tls = read_tls(&cfg.tls)?;
                let exporter = match protocol {
                    Protocol::Grpc => {
                        let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                        if !tls.is_empty() {
                            use opentelemetry_otlp::tonic_types::transport::{
                                Certificate, ClientTlsConfig, Identity,
                            };
                            let mut t = ClientTlsConfig::new();
                            t = match &tls.ca {
                                Some(ca) => t.ca_certificate(Certificate::from_pem(ca)),
                                None => t.with_webpki_roots(),
                            };
                            if let Some((cert, key)) = &tls.identity {
                                t = t.identity(Identity::from_pem(cert, key));
                            }
                            b = b.with_tls_config(t);
                        }
                        b = endpoint_and_timeout(b, &endpoint, cfg.timeout);
                        if let Some(c) = compression {
                            b = b.with_compression(c);
                        }
                        if !cfg.headers.is_empty() {
                            let mut map =
                                opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
                            for (k, v) in &cfg.headers {
                                let key = k
                                    .to_ascii_lowercase()
                                    .parse::<tonic::metadata::MetadataKey<_>>()
                                    .map_err(|e| ExportError::Header {
                                        name: k.clone(),
                                        why: e.to_string(),
                                    })?;
                                let val = v.parse().map_err(|_| ExportError::Header {
                                    name: k.clone(),
                                    why: "the value is not valid in a header".into(),
                                })?;
                                map.insert(key, val);
                            }
                            b = b.with_metadata(map);
                        }
                        b.build()
                    }
                    Protocol::HttpProtobuf | Protocol::HttpJson => {
                        let mut b = opentelemetry_otlp::SpanExporter::builder()
                            .with_http()
                            .with_protocol(if protocol == Protocol::HttpJson {
                                opentelemetry_otlp::Protocol::HttpJson
                            } else {
                                opentelemetry_otlp::Protocol::HttpBinary
                            });
                        b = endpoint_and_timeout(b, &endpoint, cfg.timeout);
                        if let Some(c) = compression {
                            b = b.with_compression(c);
                        }
                        if !cfg.headers.is_empty() {
                            b = b.with_headers(cfg.headers.clone().into_iter().collect());
                        }
                        if !tls.is_empty() {
                            b = b.with_http_client(http_client(&tls, cfg.timeout)?);
                        }
                        b.build()
                    }
                }
                .map_err(ExportError::Build)?;
                Ok((
                    Box::new(OtlpSink(exporter)),
                    SinkDescription {
                        kind,
                        protocol: Some(protocol),
                        endpoint: Some(endpoint),
                        endpoint_from: Some(endpoint_from),
                        format: None,
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_hints() {
        // The texts opentelemetry-otlp gives for a refused server certificate (gRPC, HTTP).
        let grpc = "Operation failed: TonicTracesClient export failed with gRPC code: \
                    Unavailable: transport error: invalid peer certificate: UnknownIssuer";
        assert!(error_hint(grpc).contains("tls.ca_file"));
        assert!(
            error_hint("Operation failed: HTTP export failed: network error")
                .contains("exporter.tls")
        );
        assert_eq!(error_hint("HTTP export failed. Status Code: 503"), "");
    }

    #[test]
    fn http_paths() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://h/custom/traces"),
            "https://h/custom/traces"
        );
    }
}
