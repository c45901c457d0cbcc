//! A built span: the OpenTelemetry span data and the resource of the process it belongs to,
//! as it goes from the span builder through the samplers to the exporter; the attribute keys
//! kspan sets that are not semantic conventions; and the samplers' view of a span.
use std::sync::Arc;

use opentelemetry_sdk::trace::SpanData;

use crate::{
    procinfo::ProcResource,
    sampling::{self, AttrValue, SpanView},
};

/// A span and the resource of the process it belongs to.
#[derive(Debug, Clone)]
pub struct Built {
    pub resource: Arc<ProcResource>,
    pub span: SpanData,
}

/// Attribute keys kspan sets that are not semantic conventions (all under `kspan.`).
pub mod attr {
    /// Syscall number (x86_64).
    pub const SYSCALL_NR: &str = "kspan.syscall.nr";
    /// Raw return value (negative errno on failure).
    pub const SYSCALL_RETURN: &str = "kspan.syscall.return";
    /// errno of a failed syscall (positive).
    pub const SYSCALL_ERRNO: &str = "kspan.syscall.errno";
    /// true on a failed syscall whose errno is an expected outcome (status stays Unset).
    pub const SYSCALL_EXPECTED_ERROR: &str = "kspan.syscall.expected_error";
    /// First argument of fd-based syscalls.
    pub const SYSCALL_FD: &str = "kspan.syscall.fd";
    /// cgroup v2 id of the task.
    pub const CGROUP_ID: &str = "kspan.cgroup.id";
    /// Segments retransmitted: over the connection's life (`tcp connection`), SYNs
    /// (`tcp connect`) or SYN-ACKs (`tcp accept`).
    pub const TCP_RETRANSMITS: &str = "kspan.tcp.retransmits";
    /// false on a `tcp accept` span whose handshake time is unknown (the span has no length).
    pub const TCP_HANDSHAKE_KNOWN: &str = "kspan.tcp.handshake_known";
    /// false when the owning process was unknown (listener older than kspan).
    pub const PID_KNOWN: &str = "kspan.pid_known";
    /// The file (program or library) of a probed function's span (`--func`).
    pub const FUNC_FILE: &str = "kspan.function.file";
    /// Which sampling rule decided (set by the samplers).
    pub const SAMPLING_RULE: &str = crate::sampling::SAMPLING_RULE_ATTR;
}

impl SpanView for Built {
    fn name(&self) -> &str {
        &self.span.name
    }
    fn kind_code(&self) -> i64 {
        sampling::kind_code(&self.span.span_kind)
    }
    fn status_code(&self) -> i64 {
        match self.span.status {
            opentelemetry::trace::Status::Unset => 0,
            opentelemetry::trace::Status::Ok => 1,
            opentelemetry::trace::Status::Error { .. } => 2,
        }
    }
    fn duration_ns(&self) -> u64 {
        self.span
            .end_time
            .duration_since(self.span.start_time)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    fn end_unix_ns(&self) -> u64 {
        self.span
            .end_time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    fn trace_id(&self) -> [u8; 16] {
        self.span.span_context.trace_id().to_bytes()
    }
    fn span_id(&self) -> [u8; 8] {
        self.span.span_context.span_id().to_bytes()
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| sampling::attr_value(&kv.value))
    }
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.resource
            .resource
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .and_then(|(_, v)| sampling::attr_value(v))
    }
    fn service_name(&self) -> &str {
        &self.resource.service_name
    }
    fn size_estimate(&self) -> u64 {
        // Ids, times, kind, status and framing, plus names and values.
        let attrs: usize = self
            .span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str().len() + 12)
            .sum();
        (64 + self.span.name.len() + attrs) as u64
    }
}
