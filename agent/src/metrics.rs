//! The agent's own metrics (Prometheus text format) and the health endpoints, served on
//! `metrics.addr`. Names follow `kspan_<noun>_<unit>_total`; labels are low-cardinality.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::Serialize;

use crate::capture::KernelCounters;

/// Why a span or event was lost.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The kernel found the ring buffer full.
    RingbufFull,
    /// The kernel shed an ordinary syscall event: the ring buffer was 3/4 full.
    RingbufShed,
    /// Bytes from the ring buffer that did not decode.
    Undecodable,
    /// The queue to the exporter was full (newest dropped).
    QueueFull,
    /// Export failed and was not retried, or retries ran out.
    ExportFailed,
    /// Dropped by a sampler.
    SampledOut,
    /// The kernel's in-flight syscall table was full (syscall not measured).
    StartTableFull,
    /// The kernel's connection table was full (connection not followed).
    TcpTableFull,
    /// The kernel's table of L7 sockets was full (later transfers of such a socket are not
    /// captured; message starts still are).
    L7TableFull,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::RingbufFull,
        DropReason::RingbufShed,
        DropReason::Undecodable,
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::SampledOut,
        DropReason::StartTableFull,
        DropReason::TcpTableFull,
        DropReason::L7TableFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RingbufFull => "ringbuf_full",
            DropReason::RingbufShed => "ringbuf_shed",
            DropReason::Undecodable => "undecodable",
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::SampledOut => "sampled_out",
            DropReason::StartTableFull => "start_table_full",
            DropReason::TcpTableFull => "tcp_table_full",
            DropReason::L7TableFull => "l7_table_full",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    value: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabel {
    count: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L7Label {
    protocol: &'static str,
    count: &'static str,
}

/// What the request tracker and the trace holder counted (totals since start).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestTotals {
    #[serde(flatten)]
    pub requests: crate::l7::tracker::RequestCounts,
    #[serde(flatten)]
    pub traces: crate::traces::HoldCounts,
    /// Spans held now, waiting for their trace's root.
    pub held_spans: usize,
}

/// What the bounded userspace tables could not keep, since start (`kspan_table_evictions_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableLosses {
    /// Connections not followed: the connection table (65,536) was full.
    pub connections_not_followed: u64,
    /// fd -> connection facts forgotten (131,072 at most; looked up again when needed).
    pub fds_evicted: u64,
    /// Processes forgotten by the process cache (8,192 at most; re-read when seen again).
    pub processes_evicted: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Counters shared by the pipeline stages (cheap atomic updates, batched per drain or batch).
pub struct Stats {
    registry: Registry,
    events: Family<KindLabel, Counter>,
    spans_built: Counter,
    spans_exported: Counter,
    dropped: Family<ReasonLabel, Counter>,
    export_requests: Family<ResultLabel, Counter>,
    export_seconds: Histogram,
    queue_spans: Gauge,
    ring_fill_bytes: Gauge,
    ring_read_bytes: Counter,
    open_connections: Gauge,
    table_evictions: Family<TableLabel, Counter>,
    table_entries: Family<TableLabel, Gauge>,
    /// The losses last reported, to turn totals into increments.
    table_seen: std::sync::Mutex<TableLosses>,
    budget: Family<BudgetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cpu_percent: Gauge<f64, std::sync::atomic::AtomicU64>,
    governed_min: Gauge<f64, std::sync::atomic::AtomicU64>,
    requests: Family<CountLabel, Gauge>,
    l7: Family<L7Label, Gauge>,
    request_totals: std::sync::Mutex<Option<(RequestTotals, crate::l7::ProtocolCounts)>>,
    /// Last kernel counter values seen, to turn them into increments.
    kernel_seen: [AtomicU64; 5],
    attached: AtomicBool,
    exporter_ok: AtomicBool,
}

/// Totals for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub events: u64,
    pub spans_built: u64,
    pub spans_exported: u64,
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    pub queue_spans: i64,
    /// Bytes of records read from the ring buffer.
    pub ring_bytes: u64,
    /// Request spans (L7): what the tracker linked and held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestTotals>,
    /// What each L7 protocol's parsers counted, by protocol name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<crate::l7::ProtocolCounts>,
}

impl Totals {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let mut registry = Registry::with_prefix("kspan");
        let events = Family::<KindLabel, Counter>::default();
        let spans_built = Counter::default();
        let spans_exported = Counter::default();
        let dropped = Family::<ReasonLabel, Counter>::default();
        let export_requests = Family::<ResultLabel, Counter>::default();
        let export_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let queue_spans = Gauge::default();
        let ring_fill_bytes = Gauge::default();
        let ring_read_bytes = Counter::default();
        let open_connections = Gauge::default();
        let table_evictions = Family::<TableLabel, Counter>::default();
        let table_entries = Family::<TableLabel, Gauge>::default();
        for table in ["connections", "fds", "processes"] {
            let _ = table_evictions.get_or_create(&TableLabel { table });
        }
        let budget = Family::<BudgetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let cpu_percent = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let governed_min = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cpu_percent",
            "The agent's own CPU over the last second, percent of one core",
            cpu_percent.clone(),
        );
        registry.register(
            "governor_min_duration_seconds",
            "Minimum syscall duration for a span, as the overhead governor set it",
            governed_min.clone(),
        );
        registry.register("events", "Kernel events received, by kind", events.clone());
        registry.register(
            "spans_built",
            "Spans built from events",
            spans_built.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans the exporter accepted",
            spans_exported.clone(),
        );
        registry.register(
            "dropped",
            "Events or spans lost, by reason",
            dropped.clone(),
        );
        registry.register(
            "export_requests",
            "Export requests, by result",
            export_requests.clone(),
        );
        registry.register(
            "export_duration_seconds",
            "Time to export one batch (retries included)",
            export_seconds.clone(),
        );
        registry.register(
            "queue_spans",
            "Spans waiting for export",
            queue_spans.clone(),
        );
        registry.register(
            "ring_buffer_fill_bytes",
            "Bytes found in the ring buffer at the last drain",
            ring_fill_bytes.clone(),
        );
        registry.register(
            "ring_buffer_read_bytes",
            "Bytes of records read from the ring buffer",
            ring_read_bytes.clone(),
        );
        registry.register(
            "open_connections",
            "TCP connections followed",
            open_connections.clone(),
        );
        registry.register(
            "table_evictions",
            "Entries the bounded userspace tables could not keep: connections not followed (table full), fds and processes forgotten (looked up again when seen)",
            table_evictions.clone(),
        );
        registry.register(
            "table_entries",
            "Entries in each bounded userspace table now (README names each bound)",
            table_entries.clone(),
        );
        registry.register(
            "sampling_budget",
            "Cost-aware sampler: budget, used, remaining, used_percent, projected (end of period), factor",
            budget.clone(),
        );
        let requests = Family::<CountLabel, Gauge>::default();
        registry.register(
            "requests",
            "Request spans (every L7 protocol) since start: records, server_spans, client_spans, linked, linked_late, continued, children_of_requests, ignored, unknown_protocol, released_early, traces_completed, held_spans",
            requests.clone(),
        );
        let l7 = Family::<L7Label, Gauge>::default();
        registry.register(
            "l7",
            "What each L7 protocol's exchanges were since start: requests, responses, not_parsed, truncated, unanswered, pipelined, length_unknown",
            l7.clone(),
        );
        // Every reason shows up from the start, at 0.
        for r in DropReason::ALL {
            let _ = dropped.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        Stats {
            registry,
            events,
            spans_built,
            spans_exported,
            dropped,
            export_requests,
            export_seconds,
            queue_spans,
            ring_fill_bytes,
            ring_read_bytes,
            open_connections,
            table_evictions,
            table_entries,
            table_seen: std::sync::Mutex::new(TableLosses::default()),
            budget,
            cpu_percent,
            governed_min,
            requests,
            l7,
            request_totals: std::sync::Mutex::new(None),
            kernel_seen: Default::default(),
            attached: AtomicBool::new(false),
            exporter_ok: AtomicBool::new(true),
        }
    }

    pub fn add_events(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.events.get_or_create(&KindLabel { kind }).inc_by(n);
        }
    }

    pub fn add_spans_built(&self, n: u64) {
        self.spans_built.inc_by(n);
    }

    pub fn add_exported(&self, n: u64, seconds: f64) {
        self.spans_exported.inc_by(n);
        self.export_requests
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        self.export_seconds.observe(seconds);
        self.exporter_ok.store(true, Ordering::Relaxed);
    }

    pub fn export_failed_attempt(&self, seconds: f64) {
        self.export_requests
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        self.export_seconds.observe(seconds);
        self.exporter_ok.store(false, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    pub fn set_queue(&self, spans: usize) {
        self.queue_spans.set(spans as i64);
    }

    /// Bytes found in the ring buffer at a drain (all of which were read).
    pub fn set_ring_fill(&self, bytes: usize) {
        self.ring_fill_bytes.set(bytes as i64);
        self.ring_read_bytes.inc_by(bytes as u64);
    }

    pub fn set_requests(
        &self,
        r: &crate::l7::tracker::RequestCounts,
        p: &crate::l7::ProtocolCounts,
        t: &crate::traces::HoldCounts,
        held: usize,
    ) {
        for (count, v) in [
            ("records", r.records),
            ("server_spans", r.server_spans),
            ("client_spans", r.client_spans),
            ("linked", r.linked),
            ("linked_late", r.linked_late),
            ("continued", r.continued),
            ("children_of_requests", r.children_of_requests),
            ("ignored", r.ignored),
            ("unknown_protocol", r.unknown_protocol),
            ("released_early", t.released_early),
            ("traces_completed", t.traces_completed),
            ("held_spans", held as u64),
        ] {
            self.requests
                .get_or_create(&CountLabel { count })
                .set(v as i64);
        }
        for (protocol, c) in p.iter() {
            for (count, v) in c.named() {
                self.l7
                    .get_or_create(&L7Label { protocol, count })
                    .set(v as i64);
            }
        }
        if let Ok(mut g) = self.request_totals.lock() {
            *g = Some((
                RequestTotals {
                    requests: *r,
                    traces: *t,
                    held_spans: held,
                },
                p.clone(),
            ));
        }
    }

    pub fn set_open_connections(&self, n: usize) {
        self.open_connections.set(n as i64);
    }

    /// Entries in each table now.
    pub fn set_table_sizes(&self, sizes: &[(&'static str, usize)]) {
        for (table, n) in sizes {
            self.table_entries
                .get_or_create(&TableLabel { table })
                .set(*n as i64);
        }
    }

    /// The tables' losses since start (totals; the counters get the increments).
    pub fn set_table_losses(&self, now: TableLosses) {
        let mut seen = self.table_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (table, cur, old) in [
            (
                "connections",
                now.connections_not_followed,
                seen.connections_not_followed,
            ),
            ("fds", now.fds_evicted, seen.fds_evicted),
            ("processes", now.processes_evicted, seen.processes_evicted),
        ] {
            if cur > old {
                self.table_evictions
                    .get_or_create(&TableLabel { table })
                    .inc_by(cur - old);
            }
        }
        *seen = now;
    }

    pub fn set_cpu(&self, percent: f64, governed_min: std::time::Duration) {
        self.cpu_percent.set(percent);
        self.governed_min.set(governed_min.as_secs_f64());
    }

    pub fn set_budget(&self, b: &crate::sampling::budget::BudgetStatus) {
        for (value, v) in [
            ("budget", b.budget),
            ("used", b.used),
            ("remaining", b.remaining),
            ("used_percent", b.used_percent),
            ("projected", b.projected),
            ("factor", b.factor),
        ] {
            self.budget.get_or_create(&BudgetLabel { value }).set(v);
        }
    }

    /// Folds the kernel's cumulative counters into the drop counters.
    pub fn update_kernel(&self, k: &KernelCounters) {
        let pairs = [
            (DropReason::RingbufFull, k.ringbuf_full),
            (DropReason::RingbufShed, k.ringbuf_shed),
            (DropReason::StartTableFull, k.start_table_full),
            (DropReason::TcpTableFull, k.tcp_table_full),
            (DropReason::L7TableFull, k.l7_table_full),
        ];
        for (i, (reason, now)) in pairs.into_iter().enumerate() {
            let before = self.kernel_seen[i].swap(now, Ordering::Relaxed);
            self.dropped(reason, now.saturating_sub(before));
        }
    }

    pub fn set_attached(&self, v: bool) {
        self.attached.store(v, Ordering::Relaxed);
    }

    /// Ready: programs attached and the last export worked (or is being retried: the flag
    /// goes false only after a failed attempt and true again on success).
    pub fn ready(&self) -> (bool, &'static str) {
        if !self.attached.load(Ordering::Relaxed) {
            return (false, "programs not attached");
        }
        if !self.exporter_ok.load(Ordering::Relaxed) {
            return (true, "attached; exporter retrying");
        }
        (true, "attached; exporter ok")
    }

    pub fn totals(&self) -> Totals {
        let mut dropped = std::collections::BTreeMap::new();
        for r in DropReason::ALL {
            let v = self
                .dropped
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .get();
            dropped.insert(r.as_str(), v);
        }
        let events = crate::wire::EVENT_KINDS
            .iter()
            .map(|&k| {
                self.events
                    .get_or_create(&KindLabel {
                        kind: crate::wire::kind_name(k),
                    })
                    .get()
            })
            .sum();
        let (requests, l7) = match self.request_totals.lock().ok().and_then(|g| g.clone()) {
            Some((r, p)) => (Some(r), Some(p)),
            None => (None, None),
        };
        Totals {
            events,
            spans_built: self.spans_built.get(),
            spans_exported: self.spans_exported.get(),
            dropped,
            queue_spans: self.queue_spans.get(),
            ring_bytes: self.ring_read_bytes.get(),
            requests,
            l7,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {addr:?} is not host:port (e.g. 127.0.0.1:9464)")]
    BadAddr { addr: String },
    #[error("cannot listen on metrics address {addr}: {source} (choose another with --metrics-addr, or disable with --metrics-addr '')")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the metrics/health listener (so a bad address fails at start) and returns the task
/// that serves it.
pub async fn serve(
    addr: &str,
    stats: Arc<Stats>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    use axum::{extract::State, http::StatusCode, routing::get, Router};

    let sock: SocketAddr = addr.parse().map_err(|_| MetricsError::BadAddr {
        addr: addr.to_string(),
    })?;
    let listener = tokio::net::TcpListener::bind(sock)
        .await
        .map_err(|source| MetricsError::Bind { addr: sock, source })?;
    let local = listener.local_addr().unwrap_or(sock);
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<Stats>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<Stats>>| async move {
                let (ok, why) = s.ready();
                let code = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, format!("{why}\n"))
            }),
        )
        .with_state(stats);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("metrics server stopped: {e}");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_become_increments() {
        let s = Stats::new();
        s.update_kernel(&KernelCounters {
            ringbuf_full: 5,
            ..Default::default()
        });
        s.update_kernel(&KernelCounters {
            ringbuf_full: 7,
            tcp_table_full: 1,
            ..Default::default()
        });
        let t = s.totals();
        assert_eq!(t.dropped["ringbuf_full"], 7);
        assert_eq!(t.dropped["tcp_table_full"], 1);
        assert_eq!(t.dropped_total(), 8);
        let text = s.encode();
        assert!(
            text.contains("kspan_dropped_total{reason=\"ringbuf_full\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("kspan_dropped_total{reason=\"queue_full\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn table_losses_are_counted_once() {
        let s = Stats::new();
        assert!(s
            .encode()
            .contains("kspan_table_evictions_total{table=\"processes\"} 0"));
        s.set_table_losses(TableLosses {
            processes_evicted: 8192,
            ..Default::default()
        });
        s.set_table_losses(TableLosses {
            processes_evicted: 16384,
            connections_not_followed: 3,
            fds_evicted: 0,
        });
        let text = s.encode();
        for line in [
            "kspan_table_evictions_total{table=\"processes\"} 16384",
            "kspan_table_evictions_total{table=\"connections\"} 3",
            "kspan_table_evictions_total{table=\"fds\"} 0",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
