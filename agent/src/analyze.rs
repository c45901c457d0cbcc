//! `kspan analyze`: where the time of a request goes, and what to do about it.
//!
//! Input: OTLP/JSON `ExportTraceServiceRequest`s, one per line (kspan's stdout exporter, the
//! collector's `file` exporter), or spans handed over by `kspan run --analyze`. Spans are kept
//! in a compact form (ids, times, interned names: about 80 bytes each) until every input is
//! read, then grouped by trace.
//!
//! Per trace: the entry span (the root; spans whose parent is missing are counted as
//! orphans), each span's exclusive (self) time (its duration minus the union of its
//! children's intervals, so overlapping and parallel children are not counted twice), and the
//! critical path: from the entry's end backwards, the child that finished last, recursively;
//! the time no child covers is the parent's own. Children are clipped to their parent's
//! interval (clock skew between processes). Per entry route (service and span name), over all
//! its traces: requests, error rate, p50/p99 duration, each service's share of the critical
//! path (p50/p99), calls per request between services (N+1 patterns), errors by service and
//! `error.type`, kernel spans (syscalls, connects) that fill the critical path, the bottleneck
//! (a service with more than half of the critical path) and recommendations with their
//! evidence.
use std::{borrow::Cow, collections::BTreeMap, io::BufRead};

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};

use crate::quantile::nearest_rank;

/// A span as the analysis needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ASpan {
    pub trace: u128,
    pub id: u64,
    /// 0: none.
    pub parent: u64,
    pub start: u64,
    pub end: u64,
    pub service: u32,
    pub name: u32,
    /// OTLP kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: u8,
    pub error: bool,
    /// Interned `error.type` (or the status code), 0: none.
    pub error_type: u32,
    /// Interned peer (`server.address:port` or `network.peer.address:port`), 0: none.
    pub peer: u32,
    /// A kernel span: a syscall, or a TCP connect (time the process spent in the kernel).
    pub kernel: bool,
    /// A request span: SERVER, CLIENT, PRODUCER or CONSUMER, not one of kspan's kernel or
    /// TCP spans.
    pub request: bool,
}

impl ASpan {
    fn dur(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Spans read so far, with interned strings.
#[derive(Default)]
pub struct Store {
    names: Vec<String>,
    index: HashMap<String, u32>,
    pub spans: Vec<ASpan>,
    /// Lines that were not OTLP/JSON.
    pub bad_lines: u64,
}

impl Store {
    pub fn new() -> Store {
        let mut s = Store::default();
        s.intern("");
        s
    }

    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", String::as_str)
    }

    /// Reads OTLP/JSON lines; a line that does not parse is counted, not fatal.
    pub fn read_lines(&mut self, r: impl BufRead) -> std::io::Result<()> {
        for line in r.lines() {
            let line = line?;
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            match serde_json::from_str::<Req>(t) {
                Ok(req) => self.add_request(req),
                Err(_) => self.bad_lines += 1,
            }
        }
        Ok(())
    }

    /// A span from the running pipeline (`kspan run --analyze`).
    pub fn add_span_data(&mut self, service: &str, s: &opentelemetry_sdk::trace::SpanData) {
        use opentelemetry::{trace::SpanKind, Value};
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| &kv.value)
        };
        let int = |v: &Value| match v {
            Value::I64(i) => u64::try_from(*i).ok(),
            other => other.as_str().parse().ok(),
        };
        let ns = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let service = self.intern(service);
        self.push(Raw {
            trace: u128::from_be_bytes(s.span_context.trace_id().to_bytes()),
            id: u64::from_be_bytes(s.span_context.span_id().to_bytes()),
            parent: u64::from_be_bytes(s.parent_span_id.to_bytes()),
            start: ns(s.start_time),
            end: ns(s.end_time),
            service,
            name: &s.name,
            kind: match s.span_kind {
                SpanKind::Internal => 1,
                SpanKind::Server => 2,
                SpanKind::Client => 3,
                SpanKind::Producer => 4,
                SpanKind::Consumer => 5,
            },
            error: matches!(s.status, opentelemetry::trace::Status::Error { .. }),
            error_type: attr("error.type").map(Value::as_str),
            status_code: attr("http.response.status_code").and_then(int),
            host: attr("server.address")
                .or_else(|| attr("network.peer.address"))
                .map(Value::as_str),
            port: attr("server.port")
                .or_else(|| attr("network.peer.port"))
                .and_then(int),
            syscall: attr("kspan.syscall.nr").is_some(),
        });
    }

    /// Interns a span's strings and derives what the analysis reads of it, the same for both
    /// inputs.
    fn push(&mut self, r: Raw<'_>) {
        // error.type, else the HTTP status code, on failed spans only.
        let error_type = match (r.error, r.error_type, r.status_code) {
            (true, Some(t), _) => self.intern(&t),
            (true, None, Some(c)) => self.intern(&c.to_string()),
            _ => 0,
        };
        let peer = match (r.host, r.port) {
            (Some(h), Some(p)) => self.intern(&format!("{h}:{p}")),
            (Some(h), None) => self.intern(&h),
            _ => 0,
        };
        let a = ASpan {
            trace: r.trace,
            id: r.id,
            parent: r.parent,
            start: r.start,
            end: r.end,
            service: r.service,
            name: self.intern(r.name),
            kind: r.kind,
            error: r.error,
            error_type,
            peer,
            kernel: r.syscall || r.name == "tcp connect",
            request: (2..=5).contains(&r.kind) && !r.syscall && !r.name.starts_with("tcp "),
        };
        self.spans.push(a);
    }

    fn add_request(&mut self, req: Req<'_>) {
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.text())
                .unwrap_or_else(|| "unknown_service".into());
            let service = self.intern(&service);
            for ss in rs.scope_spans {
                for s in ss.spans {
                    self.add_json(service, &s);
                }
            }
        }
    }

    /// Adds an OTLP/JSON span; one without valid ids or times is left out.
    fn add_json(&mut self, service: u32, s: &JSpan<'_>) {
        let (Ok(trace), Ok(id), Some(start), Some(end)) = (
            u128::from_str_radix(&s.trace_id, 16),
            u64::from_str_radix(&s.span_id, 16),
            s.start.as_u64(),
            s.end.as_u64(),
        ) else {
            return;
        };
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| &kv.value)
        };
        self.push(Raw {
            trace,
            id,
            parent: u64::from_str_radix(&s.parent_span_id, 16).unwrap_or(0),
            start,
            end,
            service,
            name: &s.name,
            kind: match &s.kind {
                Num::N(n) => *n as u8,
                Num::S(t) => match t.as_ref() {
                    "SPAN_KIND_INTERNAL" => 1,
                    "SPAN_KIND_SERVER" => 2,
                    "SPAN_KIND_CLIENT" => 3,
                    "SPAN_KIND_PRODUCER" => 4,
                    "SPAN_KIND_CONSUMER" => 5,
                    other => other.parse().unwrap_or(0),
                },
            },
            error: s.status.as_ref().is_some_and(|st| {
                st.code.as_u64() == Some(2)
                    || st.code.text().as_deref() == Some("STATUS_CODE_ERROR")
            }),
            error_type: attr("error.type").and_then(JAny::text),
            status_code: attr("http.response.status_code").and_then(JAny::int),
            host: attr("server.address")
                .or_else(|| attr("network.peer.address"))
                .and_then(JAny::text),
            port: attr("server.port")
                .or_else(|| attr("network.peer.port"))
                .and_then(JAny::int),
            syscall: attr("kspan.syscall.nr").is_some(),
        });
    }
}

/// A span as either input gives it, before [`Store::push`].
struct Raw<'a> {
    trace: u128,
    id: u64,
    parent: u64,
    start: u64,
    end: u64,
    service: u32,
    name: &'a str,
    kind: u8,
    error: bool,
    error_type: Option<Cow<'a, str>>,
    status_code: Option<u64>,
    host: Option<Cow<'a, str>>,
    port: Option<u64>,
    syscall: bool,
}

// ---- OTLP/JSON, as much of it as the analysis reads ----

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(rename = "resourceSpans", default, borrow)]
    resource_spans: Vec<JResourceSpans<'a>>,
}

#[derive(Deserialize)]
struct JResourceSpans<'a> {
    #[serde(default, borrow)]
    resource: Option<JResource<'a>>,
    #[serde(rename = "scopeSpans", default, borrow)]
    scope_spans: Vec<JScopeSpans<'a>>,
}

#[derive(Deserialize)]
struct JResource<'a> {
    #[serde(default, borrow)]
    attributes: Vec<JKeyValue<'a>>,
}

#[derive(Deserialize)]
struct JScopeSpans<'a> {
    #[serde(default, borrow)]
    spans: Vec<JSpan<'a>>,
}

#[derive(Deserialize)]
struct JSpan<'a> {
    #[serde(rename = "traceId", borrow)]
    trace_id: Cow<'a, str>,
    #[serde(rename = "spanId", borrow)]
    span_id: Cow<'a, str>,
    #[serde(rename = "parentSpanId", default, borrow)]
    parent_span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default = "Num::zero", borrow)]
    kind: Num<'a>,
    #[serde(rename = "startTimeUnixNano", borrow)]
    start: Num<'a>,
    #[serde(rename = "endTimeUnixNano", borrow)]
    end: Num<'a>,
    #[serde(default, borrow)]
    attributes: Vec<JKeyValue<'a>>,
    #[serde(default, borrow)]
    status: Option<JStatus<'a>>,
}

#[derive(Deserialize)]
struct JStatus<'a> {
    #[serde(default = "Num::zero", borrow)]
    code: Num<'a>,
}

#[derive(Deserialize)]
struct JKeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: JAny<'a>,
}

#[derive(Deserialize, Default)]
struct JAny<'a> {
    #[serde(rename = "stringValue", default, borrow)]
    string: Option<Cow<'a, str>>,
    #[serde(rename = "intValue", default, borrow)]
    int: Option<Num<'a>>,
}

impl JAny<'_> {
    fn text(&self) -> Option<Cow<'_, str>> {
        match (&self.string, &self.int) {
            (Some(s), _) => Some(Cow::Borrowed(s.as_ref())),
            (None, Some(n)) => n.as_u64().map(|v| Cow::Owned(v.to_string())),
            _ => None,
        }
    }

    fn int(&self) -> Option<u64> {
        self.int.as_ref().and_then(Num::as_u64)
    }
}

/// A number as OTLP/JSON writes it: a JSON number, or a string (64-bit integers, enums).
#[derive(Deserialize)]
#[serde(untagged)]
enum Num<'a> {
    N(u64),
    #[serde(borrow)]
    S(Cow<'a, str>),
}

impl Num<'_> {
    fn zero() -> Self {
        Num::N(0)
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Num::N(n) => Some(*n),
            Num::S(s) => s.parse().ok(),
        }
    }

    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Num::S(s) => Some(Cow::Borrowed(s.as_ref())),
            Num::N(_) => None,
        }
    }
}

// ---- Analysis ----

/// Thresholds of the recommendations.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this trace (hex id).
    pub trace: Option<u128>,
    /// An operation slower than this at p99 is named (default 2 s).
    pub slow_operation_ns: u64,
    /// A service whose own time per request is over this at p50 is named (default 1 s).
    pub slow_service_ns: u64,
    /// The same downstream operation called this many times or more under one span: N+1.
    pub n_plus_one: u32,
    /// A share of the critical path above this makes a service the bottleneck (0.5).
    pub bottleneck_share: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trace: None,
            slow_operation_ns: 2_000_000_000,
            slow_service_ns: 1_000_000_000,
            n_plus_one: 5,
            bottleneck_share: 0.5,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub spans: u64,
    pub traces: u64,
    pub bad_lines: u64,
    /// Spans whose parent is not in the input (their subtrees are left out of the path).
    pub orphans: u64,
    /// Traces whose root is not a request (a lone syscall or connection): not analysed.
    pub other_traces: u64,
    pub routes: Vec<RouteReport>,
    pub recommendations: Vec<Recommendation>,
    /// The slowest trace, span by span.
    pub slowest: Option<Waterfall>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteReport {
    /// The entry's service and span name (`GET /checkout`).
    pub service: String,
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Services on the critical path, largest share first.
    pub services: Vec<ServiceShare>,
    /// Calls from one service to another's operation, per request.
    pub calls: Vec<CallStat>,
    pub errors_by: Vec<ErrorGroup>,
    /// Kernel spans (syscalls, connects) on the critical path, by service and name.
    pub kernel: Vec<KernelCause>,
    /// The service with more than half of the critical path, if one has.
    pub bottleneck: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceShare {
    pub service: String,
    /// Its time on the critical path per request, and as a share of the request.
    pub critical_p50_ns: u64,
    pub critical_p99_ns: u64,
    pub share_p50: f64,
    pub share_p99: f64,
    /// Over all requests: its critical time / all requests' time.
    pub share: f64,
    /// Its exclusive time per request (on the path or not).
    pub self_p50_ns: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CallStat {
    pub from: String,
    pub to: String,
    pub operation: String,
    pub per_request: f64,
    /// Most calls under one parent span in one request.
    pub max_under_one_parent: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ErrorGroup {
    pub service: String,
    pub operation: String,
    pub error_type: String,
    pub count: u64,
    /// Peers named by the failing spans (connects, client calls).
    pub peers: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct KernelCause {
    pub service: String,
    pub operation: String,
    /// Its time on the critical path over all requests, and its share of that service's.
    pub critical_ns: u64,
    pub share_of_service: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Recommendation {
    pub service: String,
    pub what: String,
    pub evidence: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Waterfall {
    pub trace_id: String,
    pub duration_ns: u64,
    pub spans: Vec<WaterfallRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WaterfallRow {
    pub depth: u32,
    pub service: String,
    pub name: String,
    pub offset_ns: u64,
    pub duration_ns: u64,
    pub error: bool,
    pub critical: bool,
}

/// What one trace contributes to its route.
struct TraceFacts {
    entry: usize,
    duration: u64,
    critical: HashMap<u32, u64>,
    self_time: HashMap<u32, u64>,
    /// (service, span name) of kernel spans on the path -> ns.
    kernel: HashMap<(u32, u32), u64>,
    /// (caller service, callee service, operation) -> (calls, most under one parent).
    calls: HashMap<(u32, u32, u32), (u32, u32)>,
    on_path: Vec<usize>,
}

#[derive(Default)]
struct RouteAcc {
    durations: Vec<u64>,
    errors: u64,
    critical: HashMap<u32, Vec<u64>>,
    shares: HashMap<u32, Vec<f64>>,
    self_time: HashMap<u32, Vec<u64>>,
    kernel: HashMap<(u32, u32), u64>,
    calls: HashMap<(u32, u32, u32), (u64, u32)>,
    errors_by: BTreeMap<(u32, u32, u32), (u64, Vec<u32>)>,
    op_durations: HashMap<(u32, u32), Vec<u64>>,
    timeouts: HashMap<(u32, u32), (u64, Vec<u32>)>,
}

/// Length of the union of intervals, each clipped to [lo, hi].
fn union_len(mut iv: Vec<(u64, u64)>, lo: u64, hi: u64) -> u64 {
    iv.retain_mut(|(s, e)| {
        *s = (*s).max(lo);
        *e = (*e).min(hi);
        s < e
    });
    iv.sort_unstable();
    let (mut total, mut cur) = (0u64, None::<(u64, u64)>);
    for (s, e) in iv {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// One trace: `spans` are its spans (any order).
fn analyze_trace(spans: &[ASpan]) -> (TraceFacts, u64) {
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        by_id.insert(s.id, i);
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match by_id.get(&s.parent) {
            Some(&p) if s.parent != 0 && p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    // The entry: the longest root (ties: the earliest), preferring request spans.
    let entry = *roots
        .iter()
        .max_by_key(|&&i| {
            let s = &spans[i];
            (
                matches!(s.kind, 2 | 3) as u8,
                s.dur(),
                std::cmp::Reverse(s.start),
            )
        })
        .expect("a trace has a span");
    let orphans = (roots.len() - 1) as u64;
    let mut f = TraceFacts {
        entry,
        duration: spans[entry].dur(),
        critical: HashMap::new(),
        self_time: HashMap::new(),
        kernel: HashMap::new(),
        calls: HashMap::new(),
        on_path: Vec::new(),
    };
    // Exclusive time and calls, over the entry's subtree.
    let mut stack = vec![entry];
    while let Some(i) = stack.pop() {
        let s = &spans[i];
        let covered = union_len(
            children[i]
                .iter()
                .map(|&c| (spans[c].start, spans[c].end))
                .collect(),
            s.start,
            s.end,
        );
        *f.self_time.entry(s.service).or_default() += s.dur().saturating_sub(covered);
        // Calls to another service: a child in another service (a server span under a client
        // span), counted under the caller's span that made them.
        let mut under: HashMap<(u32, u32, u32), u32> = HashMap::new();
        for &c in &children[i] {
            let cs = &spans[c];
            if cs.kind == 3 && cs.request {
                // A client span: its callee is the server span under it, if traced.
                let callee = children[c].iter().map(|&g| &spans[g]).find(|g| g.kind == 2);
                let (to, op) = match callee {
                    Some(g) => (g.service, g.name),
                    None => (0, cs.name),
                };
                if to != 0 || cs.peer != 0 {
                    *under.entry((s.service, to, op)).or_default() += 1;
                }
            }
        }
        for (k, n) in under {
            let e = f.calls.entry(k).or_default();
            e.0 += n;
            e.1 = e.1.max(n);
        }
        stack.extend(children[i].iter().copied());
    }
    critical(
        spans,
        &children,
        entry,
        spans[entry].start,
        spans[entry].end,
        &mut f,
        0,
    );
    (f, orphans)
}

/// Walks the critical path of span `i` within [lo, hi]; adds each span's own time on it.
fn critical(
    spans: &[ASpan],
    children: &[Vec<usize>],
    i: usize,
    lo: u64,
    hi: u64,
    f: &mut TraceFacts,
    depth: u32,
) {
    let s = &spans[i];
    let (start, end) = (s.start.max(lo), s.end.min(hi));
    if end <= start {
        return;
    }
    f.on_path.push(i);
    let mut kids: Vec<(u64, u64, usize)> = children[i]
        .iter()
        .map(|&c| (spans[c].start.max(start), spans[c].end.min(end), c))
        .filter(|(a, b, _)| a < b)
        .collect();
    kids.sort_unstable_by_key(|k| std::cmp::Reverse(k.1));
    let mut t = end;
    let mut own = 0;
    for (ks, ke, c) in kids {
        if ks >= t || depth > 512 {
            continue;
        }
        let ke = ke.min(t);
        own += t - ke;
        critical(spans, children, c, ks, ke, f, depth + 1);
        t = ks;
    }
    own += t - start;
    *f.critical.entry(s.service).or_default() += own;
    if s.kernel {
        *f.kernel.entry((s.service, s.name)).or_default() += own;
    }
}

/// The report of the spans in `store` (sorted in place by trace: no copy of them is made).
pub fn analyze(store: &mut Store, opts: &Options) -> Report {
    store.spans.sort_unstable_by_key(|s| (s.trace, s.start));
    let store = &*store;
    let spans: &[ASpan] = match opts.trace {
        Some(t) => {
            let from = store.spans.partition_point(|s| s.trace < t);
            let to = store.spans.partition_point(|s| s.trace <= t);
            &store.spans[from..to]
        }
        None => &store.spans,
    };
    let mut routes: BTreeMap<(u32, u32), RouteAcc> = BTreeMap::new();
    let (mut traces, mut orphans, mut other_traces) = (0u64, 0u64, 0u64);
    let mut slowest: Option<(u64, Vec<ASpan>, Vec<usize>, usize)> = None;
    let mut i = 0;
    while i < spans.len() {
        let t = spans[i].trace;
        let mut j = i;
        while j < spans.len() && spans[j].trace == t {
            j += 1;
        }
        let trace = &spans[i..j];
        i = j;
        traces += 1;
        let (f, o) = analyze_trace(trace);
        orphans += o;
        let entry = &trace[f.entry];
        if !entry.request {
            // A syscall or connection on its own: not a request to analyse.
            other_traces += 1;
            continue;
        }
        let acc = routes.entry((entry.service, entry.name)).or_default();
        acc.durations.push(f.duration);
        acc.errors += u64::from(entry.error);
        for (svc, ns) in &f.critical {
            acc.critical.entry(*svc).or_default().push(*ns);
            acc.shares
                .entry(*svc)
                .or_default()
                .push(*ns as f64 / f.duration.max(1) as f64);
        }
        for (svc, ns) in &f.self_time {
            acc.self_time.entry(*svc).or_default().push(*ns);
        }
        for (k, ns) in &f.kernel {
            *acc.kernel.entry(*k).or_default() += ns;
        }
        for (k, (n, m)) in &f.calls {
            let e = acc.calls.entry(*k).or_default();
            e.0 += u64::from(*n);
            e.1 = e.1.max(*m);
        }
        for s in trace {
            acc.op_durations
                .entry((s.service, s.name))
                .or_default()
                .push(s.dur());
            if s.error {
                let e = acc
                    .errors_by
                    .entry((s.service, s.name, s.error_type))
                    .or_default();
                e.0 += 1;
                if s.peer != 0 && !e.1.contains(&s.peer) && e.1.len() < 5 {
                    e.1.push(s.peer);
                }
                let et = store.name(s.error_type);
                if et == "ETIMEDOUT" || et == "504" || et.contains("imeout") {
                    let e = acc.timeouts.entry((s.service, s.error_type)).or_default();
                    e.0 += 1;
                    if s.peer != 0 && !e.1.contains(&s.peer) && e.1.len() < 5 {
                        e.1.push(s.peer);
                    }
                }
            }
        }
        if slowest.as_ref().is_none_or(|(d, ..)| f.duration > *d) {
            slowest = Some((f.duration, trace.to_vec(), f.on_path.clone(), f.entry));
        }
    }
    let mut recs = Vec::new();
    let mut reports = Vec::new();
    for ((svc, route), mut acc) in routes {
        acc.durations.sort_unstable();
        let total: u64 = acc.durations.iter().sum();
        let n = acc.durations.len() as u64;
        let mut services: Vec<ServiceShare> = acc
            .critical
            .iter_mut()
            .map(|(s, v)| {
                v.sort_unstable();
                let shares = acc.shares.get_mut(s).map(|x| {
                    x.sort_unstable_by(|a, b| a.total_cmp(b));
                    x.clone()
                });
                let shares = shares.unwrap_or_default();
                let mut selfs = acc.self_time.get(s).cloned().unwrap_or_default();
                selfs.sort_unstable();
                ServiceShare {
                    service: store.name(*s).to_string(),
                    critical_p50_ns: nearest_rank(v, 0.5),
                    critical_p99_ns: nearest_rank(v, 0.99),
                    share_p50: nearest_rank(&shares, 0.5),
                    share_p99: nearest_rank(&shares, 0.99),
                    share: v.iter().sum::<u64>() as f64 / total.max(1) as f64,
                    self_p50_ns: nearest_rank(&selfs, 0.5),
                }
            })
            .collect();
        services.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.service.cmp(&b.service)));
        let bottleneck = services
            .first()
            .filter(|s| s.share > opts.bottleneck_share)
            .map(|s| s.service.clone());
        let route_name = store.name(route).to_string();
        let service_name = store.name(svc).to_string();
        let p99 = nearest_rank(&acc.durations, 0.99);
        // With one service there is nothing to compare: no bottleneck to name.
        let bottleneck = bottleneck.filter(|_| services.len() > 1);
        if let Some(b) = services
            .first()
            .filter(|s| bottleneck.as_deref() == Some(s.service.as_str()))
        {
            // Its slowest own operations.
            let mut ops: Vec<(u64, &str)> = acc
                .op_durations
                .iter()
                .filter(|((s, _), _)| store.name(*s) == b.service)
                .map(|((_, o), v)| {
                    let mut v = v.clone();
                    v.sort_unstable();
                    (nearest_rank(&v, 0.99), store.name(*o))
                })
                .collect();
            ops.sort_by_key(|o| std::cmp::Reverse(o.0));
            let ops: Vec<String> = ops
                .iter()
                .take(3)
                .map(|(d, o)| format!("{o} (p99 {})", fmt(*d)))
                .collect();
            recs.push(Recommendation {
                service: b.service.clone(),
                what: format!(
                    "the bottleneck of {route_name}: look here first ({})",
                    ops.join(", ")
                ),
                evidence: format!(
                    "{:.0} % of the critical path over {n} requests ({:.0} % at p99; {} of {} at p99)",
                    b.share * 100.0,
                    b.share_p99 * 100.0,
                    fmt(b.critical_p99_ns),
                    fmt(p99)
                ),
            });
        }
        for s in &services {
            if s.self_p50_ns > opts.slow_service_ns {
                recs.push(Recommendation {
                    service: s.service.clone(),
                    what: "optimise it: its own work takes over 1 s per request".into(),
                    evidence: format!("self time p50 {} in {route_name}", fmt(s.self_p50_ns)),
                });
            }
        }
        let mut slow_ops: Vec<((u32, u32), u64)> = acc
            .op_durations
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.sort_unstable();
                (*k, nearest_rank(&v, 0.99))
            })
            .filter(|(_, p)| *p > opts.slow_operation_ns)
            .collect();
        slow_ops.sort_by_key(|o| std::cmp::Reverse(o.1));
        for ((s, o), p) in slow_ops.iter().take(5) {
            recs.push(Recommendation {
                service: store.name(*s).to_string(),
                what: format!("slow operation {}", store.name(*o)),
                evidence: format!("p99 {} (over {})", fmt(*p), fmt(opts.slow_operation_ns)),
            });
        }
        for ((s, et), (count, peers)) in &acc.timeouts {
            let peers: Vec<&str> = peers.iter().map(|p| store.name(*p)).collect();
            recs.push(Recommendation {
                service: store.name(*s).to_string(),
                what: "timeouts: check the connection pool size and add a circuit breaker".into(),
                evidence: format!(
                    "{count} {} to {}",
                    store.name(*et),
                    if peers.is_empty() {
                        "?".into()
                    } else {
                        peers.join(", ")
                    }
                ),
            });
        }
        let mut calls: Vec<CallStat> = acc
            .calls
            .iter()
            .map(|((from, to, op), (c, m))| CallStat {
                from: store.name(*from).to_string(),
                to: store.name(*to).to_string(),
                operation: store.name(*op).to_string(),
                per_request: *c as f64 / n.max(1) as f64,
                max_under_one_parent: *m,
            })
            .collect();
        calls.sort_by(|a, b| {
            b.per_request
                .total_cmp(&a.per_request)
                .then(a.operation.cmp(&b.operation))
        });
        for c in &calls {
            if c.max_under_one_parent >= opts.n_plus_one {
                recs.push(Recommendation {
                    service: c.from.clone(),
                    what: format!(
                        "N+1 calls: batch or cache the calls to {} {}",
                        c.to, c.operation
                    ),
                    evidence: format!(
                        "up to {} calls under one span, {:.1} per request",
                        c.max_under_one_parent, c.per_request
                    ),
                });
            }
        }
        let errors_by: Vec<ErrorGroup> = acc
            .errors_by
            .iter()
            .map(|((s, o, e), (count, peers))| ErrorGroup {
                service: store.name(*s).to_string(),
                operation: store.name(*o).to_string(),
                error_type: store.name(*e).to_string(),
                count: *count,
                peers: peers.iter().map(|p| store.name(*p).to_string()).collect(),
            })
            .collect();
        // The origin of errors: a failing server span (the service that answered the error).
        for e in errors_by.iter().filter(|e| e.count > 0) {
            let is_server = acc
                .op_durations
                .keys()
                .any(|(s, o)| store.name(*s) == e.service && store.name(*o) == e.operation)
                && e.operation.contains(' ')
                && e.error_type.parse::<u16>().is_ok_and(|c| c >= 500);
            if is_server {
                recs.push(Recommendation {
                    service: e.service.clone(),
                    what: format!("fails: {} answers {}", e.operation, e.error_type),
                    evidence: format!("{} of {n} requests to {route_name}", e.count),
                });
            }
        }
        let mut kernel: Vec<KernelCause> = acc
            .kernel
            .iter()
            .filter(|(_, ns)| **ns > 0)
            .map(|((s, o), ns)| {
                let svc_total: u64 = acc.critical.get(s).map_or(0, |v| v.iter().sum());
                KernelCause {
                    service: store.name(*s).to_string(),
                    operation: store.name(*o).to_string(),
                    critical_ns: *ns,
                    share_of_service: *ns as f64 / svc_total.max(1) as f64,
                }
            })
            .collect();
        kernel.sort_by_key(|k| std::cmp::Reverse(k.critical_ns));
        for k in kernel.iter().filter(|k| k.share_of_service > 0.2).take(3) {
            recs.push(Recommendation {
                service: k.service.clone(),
                what: format!("kernel time: {} fills its time", k.operation),
                evidence: format!(
                    "{:.0} % of its critical-path time ({} over {n} requests)",
                    k.share_of_service * 100.0,
                    fmt(k.critical_ns)
                ),
            });
        }
        reports.push(RouteReport {
            service: service_name,
            route: route_name,
            requests: n,
            errors: acc.errors,
            error_rate: acc.errors as f64 / n.max(1) as f64,
            p50_ns: nearest_rank(&acc.durations, 0.5),
            p99_ns: p99,
            services,
            calls,
            errors_by,
            kernel,
            bottleneck,
        });
    }
    reports.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
    Report {
        spans: spans.len() as u64,
        traces,
        bad_lines: store.bad_lines,
        orphans,
        other_traces,
        routes: reports,
        recommendations: recs,
        slowest: slowest.map(|(d, trace, path, entry)| waterfall(store, &trace, &path, entry, d)),
    }
}

fn waterfall(store: &Store, trace: &[ASpan], path: &[usize], entry: usize, d: u64) -> Waterfall {
    let t0 = trace[entry].start;
    let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, s) in trace.iter().enumerate() {
        children.entry(s.parent).or_default().push(i);
    }
    let mut rows = Vec::new();
    let mut stack = vec![(entry, 0u32)];
    while let Some((i, depth)) = stack.pop() {
        let s = &trace[i];
        rows.push(WaterfallRow {
            depth,
            service: store.name(s.service).to_string(),
            name: store.name(s.name).to_string(),
            offset_ns: s.start.saturating_sub(t0),
            duration_ns: s.dur(),
            error: s.error,
            critical: path.contains(&i),
        });
        if rows.len() >= 200 {
            break;
        }
        let mut kids = children.get(&s.id).cloned().unwrap_or_default();
        kids.retain(|&k| k != i);
        kids.sort_by_key(|&k| std::cmp::Reverse(trace[k].start));
        stack.extend(kids.into_iter().map(|k| (k, depth + 1)));
    }
    Waterfall {
        trace_id: format!("{:032x}", trace[entry].trace),
        duration_ns: d,
        spans: rows,
    }
}

/// A duration for people: `850us`, `12.3ms`, `2.10s`.
pub fn fmt(ns: u64) -> String {
    let n = ns as f64;
    if n < 1e3 {
        format!("{ns}ns")
    } else if n < 1e6 {
        format!("{:.0}us", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1}ms", n / 1e6)
    } else {
        format!("{:.2}s", n / 1e9)
    }
}

/// The terminal report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "kspan analyze: {} spans, {} traces ({} of them requests; {} orphan spans, {} unreadable lines)\n",
        r.spans,
        r.traces,
        r.traces - r.other_traces,
        r.orphans,
        r.bad_lines
    );
    for rt in &r.routes {
        let _ = writeln!(
            o,
            "{} {}: {} requests, {:.1} % errors, p50 {}, p99 {}",
            rt.service,
            rt.route,
            rt.requests,
            rt.error_rate * 100.0,
            fmt(rt.p50_ns),
            fmt(rt.p99_ns)
        );
        let _ = writeln!(o, "  critical path by service (share of the request: all / p50 / p99; time p50 / p99; self p50):");
        for s in &rt.services {
            let _ = writeln!(
                o,
                "    {:<24} {:>5.1} % {:>5.1} % {:>5.1} %  {:>9} {:>9}  self {:>9}{}",
                s.service,
                s.share * 100.0,
                s.share_p50 * 100.0,
                s.share_p99 * 100.0,
                fmt(s.critical_p50_ns),
                fmt(s.critical_p99_ns),
                fmt(s.self_p50_ns),
                if rt.bottleneck.as_deref() == Some(s.service.as_str()) {
                    "  <- bottleneck"
                } else {
                    ""
                }
            );
        }
        if !rt.calls.is_empty() {
            let _ = writeln!(o, "  calls per request:");
            for c in rt.calls.iter().take(10) {
                let _ = writeln!(
                    o,
                    "    {} -> {} {}: {:.1} (up to {} under one span)",
                    c.from,
                    if c.to.is_empty() { "(untraced)" } else { &c.to },
                    c.operation,
                    c.per_request,
                    c.max_under_one_parent
                );
            }
        }
        if !rt.errors_by.is_empty() {
            let _ = writeln!(o, "  errors:");
            for e in &rt.errors_by {
                let _ = writeln!(
                    o,
                    "    {} {}: {} x {}{}",
                    e.service,
                    e.operation,
                    e.count,
                    e.error_type,
                    if e.peers.is_empty() {
                        String::new()
                    } else {
                        format!(" (peers {})", e.peers.join(", "))
                    }
                );
            }
        }
        if !rt.kernel.is_empty() {
            let _ = writeln!(o, "  kernel time on the critical path:");
            for k in rt.kernel.iter().take(5) {
                let _ = writeln!(
                    o,
                    "    {} {}: {} ({:.0} % of its path time)",
                    k.service,
                    k.operation,
                    fmt(k.critical_ns),
                    k.share_of_service * 100.0
                );
            }
        }
        o.push('\n');
    }
    if !r.recommendations.is_empty() {
        let _ = writeln!(o, "Recommendations:");
        for (i, rec) in r.recommendations.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {}. {}: {}\n     evidence: {}",
                i + 1,
                rec.service,
                rec.what,
                rec.evidence
            );
        }
        o.push('\n');
    }
    if let Some(w) = &r.slowest {
        let _ = writeln!(
            o,
            "Slowest trace {} ({}); * = on the critical path:",
            w.trace_id,
            fmt(w.duration_ns)
        );
        const WIDTH: u64 = 40;
        for s in &w.spans {
            let d = w.duration_ns.max(1);
            let from = (s.offset_ns.min(d) * WIDTH / d) as usize;
            let len = ((s.duration_ns * WIDTH).div_ceil(d) as usize)
                .clamp(1, WIDTH as usize - from.min(WIDTH as usize - 1));
            let bar = format!("{}{}", " ".repeat(from), "#".repeat(len));
            let label = format!("{}{} {}", "  ".repeat(s.depth as usize), s.service, s.name);
            let _ = writeln!(
                o,
                "  {}{:<44} |{:<40}| {:>9}{}",
                if s.critical { "*" } else { " " },
                truncate(&label, 44),
                bar,
                fmt(s.duration_ns),
                if s.error { " ERROR" } else { "" }
            );
        }
    }
    o
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "~"
    }
}

/// Spans go to `kspan run --analyze`'s report.
pub struct AnalyzeSink(pub std::sync::Arc<std::sync::Mutex<Store>>);

impl crate::sink::Sink for AnalyzeSink {
    fn export<'a>(
        &'a mut self,
        resource: &'a opentelemetry_sdk::Resource,
        spans: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> crate::sink::ExportFuture<'a> {
        let service = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.as_str().into_owned())
            .unwrap_or_else(|| "unknown_service".into());
        if let Ok(mut store) = self.0.lock() {
            for s in &spans {
                store.add_span_data(&service, s);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn shutdown(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (trace, id, parent, service, name, kind, start ms, end ms, error type or "")
    type S<'a> = (u128, u64, u64, &'a str, &'a str, u8, u64, u64, &'a str);

    fn store(spans: &[S]) -> Store {
        let mut st = Store::new();
        for &(trace, id, parent, svc, name, kind, s, e, err) in spans {
            let line = serde_json::json!({"resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                "scopeSpans": [{"spans": [{
                    "traceId": format!("{trace:032x}"),
                    "spanId": format!("{id:016x}"),
                    "parentSpanId": if parent == 0 { String::new() } else { format!("{parent:016x}") },
                    "name": name,
                    "kind": kind,
                    "startTimeUnixNano": (s * 1_000_000).to_string(),
                    "endTimeUnixNano": (e * 1_000_000).to_string(),
                    "attributes": if err.is_empty() { serde_json::json!([]) } else {
                        serde_json::json!([{"key": "error.type", "value": {"stringValue": err}}])
                    },
                    "status": {"code": if err.is_empty() { 0 } else { 2 }}
                }]}]
            }]});
            st.read_lines(std::io::Cursor::new(line.to_string()))
                .unwrap();
        }
        st
    }

    fn share(r: &RouteReport, svc: &str) -> f64 {
        r.services
            .iter()
            .find(|s| s.service == svc)
            .map_or(0.0, |s| s.share)
    }

    /// A 100 ms request: two parallel calls (30 ms to b, 80 ms to c); the critical path is
    /// the longer one, and each span's self time excludes its children once.
    #[test]
    fn parallel_calls_follow_the_longer_one() {
        let mut st = store(&[
            (1, 1, 0, "a", "GET /x", 2, 0, 100, ""),
            (1, 2, 1, "a", "GET /b", 3, 10, 40, ""),
            (1, 3, 2, "b", "GET /b", 2, 12, 38, ""),
            (1, 4, 1, "a", "GET /c", 3, 10, 90, ""),
            (1, 5, 4, "c", "GET /c", 2, 12, 88, ""),
        ]);
        let r = analyze(&mut st, &Options::default());
        let rt = &r.routes[0];
        assert_eq!((rt.service.as_str(), rt.route.as_str()), ("a", "GET /x"));
        // c: 76 ms of 100 on the path; b: none; a: the rest (24 ms).
        assert!((share(rt, "c") - 0.76).abs() < 1e-9, "{rt:?}");
        assert_eq!(share(rt, "b"), 0.0);
        assert!((share(rt, "a") - 0.24).abs() < 1e-9);
        assert_eq!(rt.bottleneck.as_deref(), Some("c"));
        let a = rt.services.iter().find(|s| s.service == "a").unwrap();
        // a's own time: 100 - (10..90 covered) = 20 ms, plus its client spans' own 4 + 4 ms.
        assert_eq!(a.self_p50_ns, 28_000_000);
        assert_eq!(r.slowest.as_ref().unwrap().spans.len(), 5);
    }

    /// Overlapping children are counted once in the parent's self time; a child that starts
    /// before its parent and ends after it (clock skew between processes) is clipped.
    #[test]
    fn overlap_and_clock_skew() {
        let mut st = store(&[
            (2, 1, 0, "a", "GET /x", 2, 100, 200, ""),
            (2, 2, 1, "a", "q1", 3, 110, 150, ""),
            (2, 3, 1, "a", "q2", 3, 130, 170, ""),
            // Skewed: b's clock is 20 ms ahead.
            (2, 4, 3, "b", "q2", 2, 125, 190, ""),
        ]);
        let r = analyze(&mut st, &Options::default());
        let rt = &r.routes[0];
        let a = rt.services.iter().find(|s| s.service == "a").unwrap();
        // a: 200-100 minus the union 110..170 = 40, plus q1's own 40 (no children), plus
        // q2's 0 (b's span, clipped to 130..170, covers it).
        assert_eq!(a.self_p50_ns, 80_000_000);
        // Path: 170..200 a's own, q2 -> b 130..170 (40 ms, clipped), then 100..130 a's own.
        assert!((share(rt, "b") - 0.40).abs() < 1e-9, "{rt:?}");
        assert!((share(rt, "a") - 0.60).abs() < 1e-9);
        assert_eq!(rt.bottleneck.as_deref(), Some("a"));
    }

    /// A span whose parent is missing is an orphan, not a second request; errors are grouped
    /// by service, operation and type; timeouts and N+1 calls are recommended on.
    #[test]
    fn missing_parents_errors_timeouts_and_n_plus_one() {
        let mut spans = vec![
            (3, 1, 0, "api", "GET /cart", 2, 0, 1000, ""),
            (3, 2, 99, "ghost", "lost", 1, 10, 20, ""),
            (3, 3, 1, "api", "connect", 3, 10, 900, "ETIMEDOUT"),
        ];
        for i in 0..6 {
            spans.push((
                3,
                10 + i,
                1,
                "api",
                "GET /item/{id}",
                3,
                900 + i * 10,
                905 + i * 10,
                "",
            ));
            spans.push((
                3,
                20 + i,
                10 + i,
                "items",
                "GET /item/{id}",
                2,
                901 + i * 10,
                904 + i * 10,
                if i == 0 { "500" } else { "" },
            ));
        }
        let mut st = store(&spans);
        let r = analyze(&mut st, &Options::default());
        assert_eq!(r.orphans, 1);
        assert_eq!(r.routes.len(), 1);
        let rt = &r.routes[0];
        assert_eq!(rt.requests, 1);
        let call = rt.calls.iter().find(|c| c.to == "items").unwrap();
        assert_eq!((call.per_request, call.max_under_one_parent), (6.0, 6));
        let e = rt
            .errors_by
            .iter()
            .find(|e| e.error_type == "ETIMEDOUT")
            .unwrap();
        assert_eq!((e.service.as_str(), e.count), ("api", 1));
        let whats: Vec<&str> = r.recommendations.iter().map(|r| r.what.as_str()).collect();
        assert!(whats.iter().any(|w| w.starts_with("timeouts")), "{whats:?}");
        assert!(whats.iter().any(|w| w.starts_with("N+1")), "{whats:?}");
        assert!(
            whats.contains(&"fails: GET /item/{id} answers 500"),
            "{whats:?}"
        );
        // --trace: only that trace.
        let none = analyze(
            &mut st,
            &Options {
                trace: Some(4),
                ..Options::default()
            },
        );
        assert_eq!(none.traces, 0);
    }

    #[test]
    fn bad_lines_are_counted() {
        let mut st = Store::new();
        st.read_lines(std::io::Cursor::new(
            "not json\n{\"resourceSpans\": []}\n\n",
        ))
        .unwrap();
        assert_eq!((st.bad_lines, st.spans.len()), (1, 0));
    }
}
