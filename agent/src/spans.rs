//! Kernel events to OpenTelemetry spans.
//!
//! | event | span name | kind | parent |
//! |---|---|---|---|
//! | syscall | the syscall's name (`read`, `openat`...) | INTERNAL | the open connection behind its fd, else none |
//! | tcp_connect | `tcp connect` | CLIENT | none (it starts a trace) |
//! | tcp_accept | `tcp accept` | SERVER | none (it starts a trace) |
//! | tcp_close | `tcp connection` (established -> closed) | INTERNAL | the connect/accept span |
//! | L7 request read, response written | per protocol (HTTP: `{method} {route}`) | SERVER | the caller (see [`crate::l7::tracker`]) |
//! | L7 request written, response read | per protocol | CLIENT | the server span its thread serves |
//!
//! A syscall or connect made by a thread while it serves one request is that request's child
//! rather than its connection's. Spans of request traces are held until the trace's local
//! root ends ([`crate::traces`]): [`SpanBuilder::process`] hands out [`Group`]s.
//!
//! Attributes follow the OpenTelemetry semantic conventions where one exists; kernel-specific
//! ones are under `kspan.` (see [`attr`]). Failed syscalls and connects get status Error and
//! `error.type` = the errno name.
use std::{borrow::Cow, net::SocketAddr, time::Duration};

use agent_common::{
    EventHeader, EventKind, SyscallData, TcpData, SYSCALL_FLAG_EXPECTED, TCP_FLAG_FAILED,
    TCP_FLAG_HANDSHAKE_UNKNOWN, TCP_FLAG_PID_UNKNOWN,
};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

pub use crate::span::{attr, Built};
use crate::{
    clock::WallClock,
    conns::{Conns, FdResolver, ProcFdResolver, Tuple},
    decode::RawEvent,
    item::{Item, Pending},
    l7::{
        tracker::{L7Options, Output, RequestCounts, Tracker},
        ProtocolCounts,
    },
    names,
    procinfo::ProcessCache,
    traces::{Group, HoldCounts, Holder},
    wire::ip_addr,
};

/// A trace's sampling decision (`None`: sampling is off), remembered for its late spans.
pub type Decision = Option<crate::sampling::Outcome>;

/// Most spans held while their traces wait for their roots.
pub const MAX_HELD_SPANS: usize = 100_000;
/// Longest a trace is held waiting for its root.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

pub struct SpanBuilder<R: FdResolver = ProcFdResolver> {
    clock: WallClock,
    procs: ProcessCache,
    conns: Conns<R>,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    tracker: Option<Tracker>,
    holder: Holder<Decision>,
    outputs: Vec<Output>,
    /// Latest event end seen (monotonic ns).
    now_ns: u64,
    /// The probed functions, by id (`--func`): names for their spans.
    funcs: std::sync::Arc<[crate::uprobe::Func]>,
}

impl<R: FdResolver> SpanBuilder<R> {
    pub fn new(clock: WallClock, procs: ProcessCache, resolver: R) -> SpanBuilder<R> {
        SpanBuilder {
            clock,
            procs,
            conns: Conns::new(resolver),
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("kspan")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            tracker: None,
            holder: Holder::new(MAX_HELD_SPANS, MAX_HOLD),
            outputs: Vec::new(),
            now_ns: 0,
            funcs: std::sync::Arc::from(Vec::new()),
        }
    }

    /// Names the spans of slow calls of probed functions (their ids index `funcs`).
    pub fn with_funcs(mut self, funcs: Vec<crate::uprobe::Func>) -> SpanBuilder<R> {
        self.funcs = funcs.into();
        self
    }

    /// Turns L7 transfer records into request spans (without it they are ignored).
    pub fn with_l7(mut self, opts: L7Options) -> SpanBuilder<R> {
        self.tracker = Some(Tracker::new(opts));
        self
    }

    pub fn open_connections(&self) -> usize {
        self.conns.open_count()
    }

    /// Entries in each bounded userspace table now.
    pub fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut v: Vec<(&'static str, usize)> = self.conns.table_sizes().to_vec();
        v.push(("processes", self.procs.len()));
        v.push(("held_traces", self.holder.held_traces()));
        if let Some(t) = &self.tracker {
            v.extend(t.table_sizes());
        }
        v
    }

    /// What the bounded userspace tables could not keep, since start.
    pub fn table_losses(&self) -> crate::metrics::TableLosses {
        crate::metrics::TableLosses {
            connections_not_followed: self.conns.table_full,
            fds_evicted: self.conns.fds_evicted,
            processes_evicted: self.procs.evicted,
        }
    }

    pub fn request_counts(&self) -> Option<RequestCounts> {
        self.tracker.as_ref().map(|r| r.counts)
    }

    /// What each L7 protocol's parsers counted.
    pub fn protocol_counts(&self) -> Option<&ProtocolCounts> {
        self.tracker.as_ref().map(|r| r.protocol_counts())
    }

    pub fn hold_counts(&self) -> HoldCounts {
        self.holder.counts
    }

    pub fn held_spans(&self) -> usize {
        self.holder.held_spans()
    }

    /// Trace `t`, released as a whole, was decided `d`: its late spans follow it.
    pub fn record_decision(&mut self, t: opentelemetry::trace::TraceId, d: Decision) {
        self.holder.record_decision(t, d);
    }

    /// The decision recorded for trace `t`, while remembered.
    pub fn decision(&self, t: &opentelemetry::trace::TraceId) -> Option<Decision> {
        self.holder.decision(t)
    }

    /// One event's spans, as groups ready for the samplers (none while its trace is held).
    pub fn process(&mut self, ev: RawEvent, out: &mut Vec<Group>) {
        let h = ev.header();
        self.now_ns = self.now_ns.max(h.start_ns + h.duration_ns);
        match ev {
            RawEvent::Exchange(h, d, bytes) => self.exchange(&h, &d, bytes, out),
            ev => {
                let Some((b, served)) = self.build_with_parent(&ev) else {
                    return;
                };
                let b = Item::Built(Box::new(b));
                if served {
                    // A child of a request span: held with its trace.
                    self.holder.hold(b, self.now_ns, out);
                } else {
                    self.holder.push(b, out);
                }
            }
        }
    }

    /// Releases traces held too long (call now and then), and those that waited for a
    /// caller's record in vain.
    pub fn expire(&mut self, out: &mut Vec<Group>) {
        if let Some(t) = self.tracker.as_mut() {
            let mut outputs = std::mem::take(&mut self.outputs);
            t.expire(self.now_ns, &mut outputs);
            self.apply(&mut outputs, out);
            self.outputs = outputs;
        }
        self.holder.expire(self.now_ns, out);
    }

    /// Releases everything held (at exit).
    pub fn drain(&mut self, out: &mut Vec<Group>) {
        self.holder.drain(out);
    }

    /// The span of one syscall or TCP event (exchange records are request spans, made by
    /// [`SpanBuilder::materialize`] once kept).
    pub fn build(&mut self, ev: &RawEvent) -> Option<Built> {
        self.build_with_parent(ev).map(|(b, _)| b)
    }

    /// The span, and whether its parent is the request span its thread was serving.
    fn build_with_parent(&mut self, ev: &RawEvent) -> Option<(Built, bool)> {
        match ev {
            RawEvent::Syscall(h, d) => Some(self.syscall(h, d)),
            RawEvent::Func(h, d) => Some(self.func(h, d)),
            RawEvent::Tcp(kind, h, d) => Some(self.tcp(*kind, h, d)),
            RawEvent::Exchange(..) => None,
        }
    }

    fn exchange(
        &mut self,
        h: &EventHeader,
        d: &agent_common::ExchangeData,
        bytes: Vec<u8>,
        out: &mut Vec<Group>,
    ) {
        let Some(req) = self.tracker.as_mut() else {
            return;
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        let span = req.on_record(h, d, bytes, &mut outputs);
        // A caller's record may first adopt the trace its server waited in.
        self.apply(&mut outputs, out);
        self.outputs = outputs;
        if let Some(rs) = span {
            self.request_span(rs, out);
        }
    }

    /// A request span, into the holder: it completes its trace, or waits in it.
    fn request_span(&mut self, rs: crate::l7::tracker::RequestSpan, out: &mut Vec<Group>) {
        let Some(redactor) = self.tracker.as_ref().map(|t| t.redactor()) else {
            return;
        };
        let root = rs.local_root;
        let resource = self.procs.get(rs.pid, &rs.comm);
        let end = self.clock.unix_ns(rs.end_ns);
        let item = Item::Request(Box::new(Pending::new(resource, rs, end, redactor)));
        if root {
            self.holder.finish(item, out);
        } else {
            self.holder.hold(item, self.now_ns, out);
        }
    }

    /// What the tracker produced, into the holder.
    fn apply(&mut self, outputs: &mut Vec<Output>, out: &mut Vec<Group>) {
        for o in outputs.drain(..) {
            match o {
                Output::Merge {
                    from,
                    to,
                    span,
                    parent,
                } => self
                    .holder
                    .merge(from, to, Some((span, parent)), self.now_ns, out),
                Output::Release(t) => self.holder.release(t, out),
            }
        }
    }

    /// A kept item as a span to export: a request span is described now.
    pub fn materialize(&self, item: Item) -> Built {
        match item {
            Item::Built(b) => *b,
            Item::Request(mut p) => {
                let d = p.take_description();
                let rs = &p.span;
                let ctx = match rs.caller_state() {
                    Some(state) => SpanContext::new(
                        rs.ctx.trace_id(),
                        rs.ctx.span_id(),
                        rs.ctx.trace_flags(),
                        false,
                        state,
                    ),
                    None => rs.ctx.clone(),
                };
                let start_time = self.clock.system_time(rs.start_ns);
                let span = SpanData {
                    span_context: ctx,
                    parent_span_id: rs.parent.unwrap_or(SpanId::INVALID),
                    parent_span_is_remote: rs.parent_remote,
                    span_kind: rs.kind.clone(),
                    name: Cow::Owned(d.name),
                    start_time,
                    end_time: start_time
                        + Duration::from_nanos(rs.end_ns.saturating_sub(rs.start_ns)),
                    attributes: d.attributes,
                    dropped_attributes_count: 0,
                    events: SpanEvents::default(),
                    links: SpanLinks::default(),
                    status: d.status,
                    instrumentation_scope: self.scope.clone(),
                };
                Built {
                    resource: p.resource.clone(),
                    span,
                }
            }
        }
    }

    fn new_context(&self, parent: Option<&SpanContext>) -> SpanContext {
        // RandomIdGenerator draws all 128 bits at random, so the low 56 bits of the trace id
        // are random as W3C trace context level 2 requires for consistent sampling.
        let trace_id = match parent {
            Some(p) => p.trace_id(),
            None => self.ids.new_trace_id(),
        };
        SpanContext::new(
            trace_id,
            self.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        h: &EventHeader,
        parent: Option<&SpanContext>,
        kind: SpanKind,
        name: Cow<'static, str>,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        self.span_data(
            self.new_context(parent),
            parent,
            kind,
            name,
            (h.start_ns, h.duration_ns),
            attributes,
            status,
        )
    }

    /// A span with context `ctx`; `at` is (start, duration), kernel monotonic ns.
    #[allow(clippy::too_many_arguments)]
    fn span_data(
        &self,
        ctx: SpanContext,
        parent: Option<&SpanContext>,
        kind: SpanKind,
        name: Cow<'static, str>,
        at: (u64, u64),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        let start_time = self.clock.system_time(at.0);
        SpanData {
            span_context: ctx,
            parent_span_id: parent.map_or(SpanId::INVALID, |p| p.span_id()),
            parent_span_is_remote: false,
            span_kind: kind,
            name,
            start_time,
            end_time: start_time + Duration::from_nanos(at.1),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    fn syscall(&mut self, h: &EventHeader, d: &SyscallData) -> (Built, bool) {
        let resource = self.procs.get(h.pid, &h.comm);
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new("thread.id", i64::from(h.tid)));
        attributes.push(KeyValue::new(attr::SYSCALL_NR, i64::from(d.nr)));
        attributes.push(KeyValue::new(attr::SYSCALL_RETURN, d.ret));
        attributes.push(KeyValue::new(attr::CGROUP_ID, h.cgroup_id as i64));
        // The request the thread was serving (the kernel says), else the connection the fd
        // names.
        let mut parent = served_by(&d.parent);
        let served = parent.is_some();
        if names::first_arg_is_fd(d.nr) {
            attributes.push(KeyValue::new(attr::SYSCALL_FD, d.arg0 as i64));
            if parent.is_none() {
                parent = self.conns.parent_of_fd(h.pid, d.arg0);
            }
        }
        let status = if (-4095..0).contains(&d.ret) {
            let errno = names::errno_name(-d.ret as i32);
            attributes.push(KeyValue::new("error.type", errno.clone()));
            attributes.push(KeyValue::new(attr::SYSCALL_ERRNO, -d.ret));
            if h.flags & SYSCALL_FLAG_EXPECTED != 0 {
                // An expected outcome (capture.expected_errors): not a failure.
                attributes.push(KeyValue::new(attr::SYSCALL_EXPECTED_ERROR, true));
                Status::Unset
            } else {
                Status::error(errno)
            }
        } else {
            Status::Unset
        };
        let span = self.span(
            h,
            parent.as_ref(),
            SpanKind::Internal,
            names::syscall_name(d.nr),
            attributes,
            status,
        );
        (Built { resource, span }, served)
    }

    /// A slow call of a probed function: named after it (demangled), the child of the request
    /// its thread was serving when it returned (the kernel says), else a root.
    fn func(&mut self, h: &EventHeader, d: &SyscallData) -> (Built, bool) {
        let resource = self.procs.get(h.pid, &h.comm);
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new("thread.id", i64::from(h.tid)));
        let name: std::borrow::Cow<'static, str> = match self.funcs.get(d.nr as usize) {
            Some(f) => {
                attributes.push(KeyValue::new("code.function.name", f.name.clone()));
                attributes.push(KeyValue::new(attr::FUNC_FILE, f.path.display().to_string()));
                f.name.clone().into()
            }
            None => format!("function #{}", d.nr).into(),
        };
        attributes.push(KeyValue::new(attr::CGROUP_ID, h.cgroup_id as i64));
        let parent = served_by(&d.parent);
        let served = parent.is_some();
        let span = self.span(
            h,
            parent.as_ref(),
            SpanKind::Internal,
            name,
            attributes,
            Status::Unset,
        );
        (Built { resource, span }, served)
    }

    fn tcp(&mut self, kind: EventKind, h: &EventHeader, d: &TcpData) -> (Built, bool) {
        let pid_known = h.flags & TCP_FLAG_PID_UNKNOWN == 0;
        let resource = if pid_known {
            self.procs.get(h.pid, &h.comm)
        } else {
            self.procs.get(0, &h.comm)
        };
        let local = SocketAddr::new(ip_addr(d.family, &d.saddr), d.sport);
        let remote = SocketAddr::new(ip_addr(d.family, &d.daddr), d.dport);
        let network_type = if d.family == libc::AF_INET as u16 {
            "ipv4"
        } else {
            "ipv6"
        };
        let mut attributes = Vec::with_capacity(12);
        if pid_known {
            attributes.push(KeyValue::new("thread.id", i64::from(h.tid)));
        } else {
            attributes.push(KeyValue::new(attr::PID_KNOWN, false));
        }
        attributes.push(KeyValue::new("network.transport", "tcp"));
        attributes.push(KeyValue::new("network.type", network_type));
        attributes.push(KeyValue::new(
            "network.peer.address",
            remote.ip().to_string(),
        ));
        attributes.push(KeyValue::new("network.peer.port", i64::from(remote.port())));
        attributes.push(KeyValue::new(
            "network.local.address",
            local.ip().to_string(),
        ));
        attributes.push(KeyValue::new("network.local.port", i64::from(local.port())));
        attributes.push(KeyValue::new(attr::CGROUP_ID, h.cgroup_id as i64));
        let failed = h.flags & TCP_FLAG_FAILED != 0;
        let status = if failed {
            let errno = names::errno_name(d.error as i32);
            attributes.push(KeyValue::new("error.type", errno.clone()));
            Status::error(errno)
        } else {
            Status::Unset
        };
        attributes.push(KeyValue::new(
            attr::TCP_RETRANSMITS,
            i64::from(d.retransmits),
        ));
        let (span_kind, name, parent) = match kind {
            EventKind::TcpConnect => {
                attributes.push(KeyValue::new("server.address", remote.ip().to_string()));
                attributes.push(KeyValue::new("server.port", i64::from(remote.port())));
                (SpanKind::Client, "tcp connect", served_by(&d.parent))
            }
            EventKind::TcpAccept => {
                attributes.push(KeyValue::new("server.address", local.ip().to_string()));
                attributes.push(KeyValue::new("server.port", i64::from(local.port())));
                attributes.push(KeyValue::new("client.address", remote.ip().to_string()));
                attributes.push(KeyValue::new("client.port", i64::from(remote.port())));
                if h.flags & TCP_FLAG_HANDSHAKE_UNKNOWN != 0 {
                    attributes.push(KeyValue::new(attr::TCP_HANDSHAKE_KNOWN, false));
                }
                (SpanKind::Server, "tcp accept", None)
            }
            _ => (
                SpanKind::Internal,
                "tcp connection",
                self.conns.close(d.skaddr),
            ),
        };
        let span = self.span(
            h,
            parent.as_ref(),
            span_kind,
            Cow::Borrowed(name),
            attributes,
            status,
        );
        if matches!(kind, EventKind::TcpConnect | EventKind::TcpAccept) && !failed {
            let pid = if pid_known { h.pid } else { 0 };
            self.conns.open(
                d.skaddr,
                pid,
                Tuple::new(local, remote),
                span.span_context.clone(),
            );
        }
        let served = kind == EventKind::TcpConnect && !d.parent.is_none();
        (Built { resource, span }, served)
    }
}

/// The request span a thread was serving, as the kernel named it.
fn served_by(r: &agent_common::TraceRef) -> Option<SpanContext> {
    (!r.is_none()).then(|| {
        SpanContext::new(
            TraceId::from_bytes(r.trace_id),
            SpanId::from_bytes(r.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use agent_common::COMM_LEN;
    use opentelemetry::Value;

    use super::*;
    use crate::procinfo::HostResource;

    struct Fixed(HashMap<(u32, u64), Tuple>);
    impl FdResolver for Fixed {
        fn resolve(&mut self, pid: u32, fd: u64) -> Option<Tuple> {
            self.0.get(&(pid, fd)).copied()
        }
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn builder(fds: HashMap<(u32, u64), Tuple>) -> SpanBuilder<Fixed> {
        let dir = std::env::temp_dir().join("kspan-no-such-proc");
        let procs =
            ProcessCache::with_proc_root(dir, HostResource { attributes: vec![] }, BTreeMap::new());
        SpanBuilder::new(WallClock::new(), procs, Fixed(fds))
    }

    fn get<'a>(s: &'a SpanData, k: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    fn header(pid: u32, tid: u32, flags: u32) -> EventHeader {
        EventHeader {
            kind: 0,
            flags,
            pid,
            tid,
            start_ns: 1_000_000,
            duration_ns: 20_000_000,
            cgroup_id: 1,
            comm: comm("app"),
        }
    }

    fn tcp(kind: EventKind, sk: u64, sport: u16, dport: u16) -> RawEvent {
        let mut d = TcpData {
            skaddr: sk,
            family: libc::AF_INET as u16,
            sport,
            dport,
            ..Default::default()
        };
        d.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        d.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        RawEvent::Tcp(kind, header(10, 11, 0), d)
    }

    #[test]
    fn failed_syscall_is_an_error_root_span() {
        let mut b = builder(HashMap::new());
        let ev = RawEvent::Syscall(
            header(10, 11, 0),
            SyscallData {
                nr: 257,
                ret: -2,
                ..Default::default()
            },
        );
        let s = b.build(&ev).unwrap().span;
        assert_eq!(s.name, "openat");
        assert_eq!(s.span_kind, SpanKind::Internal);
        assert_eq!(s.parent_span_id, SpanId::INVALID);
        assert_eq!(s.status, Status::error("ENOENT"));
        assert_eq!(get(&s, "error.type"), Some(&Value::from("ENOENT")));
        assert_eq!(get(&s, "thread.id"), Some(&Value::I64(11)));
        assert_eq!(get(&s, attr::SYSCALL_FD), None);
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_millis(20)
        );
        assert!(s.span_context.is_sampled());
    }

    #[test]
    fn syscalls_on_a_connection_are_its_children() {
        let tuple = Tuple::new(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.2:80".parse().unwrap(),
        );
        let mut fds = HashMap::new();
        fds.insert((10, 7), tuple);
        let mut b = builder(fds);
        let connect = b
            .build(&tcp(EventKind::TcpConnect, 0xabc, 5000, 80))
            .unwrap()
            .span;
        assert_eq!(connect.span_kind, SpanKind::Client);
        assert_eq!(connect.name, "tcp connect");
        assert_eq!(get(&connect, "server.port"), Some(&Value::I64(80)));
        assert_eq!(
            get(&connect, "network.peer.address"),
            Some(&Value::from("127.0.0.2"))
        );
        assert_eq!(get(&connect, "network.type"), Some(&Value::from("ipv4")));
        let read = |fd| {
            RawEvent::Syscall(
                header(10, 11, 0),
                SyscallData {
                    nr: 0,
                    ret: 100,
                    arg0: fd,
                    ..Default::default()
                },
            )
        };
        let child = b.build(&read(7)).unwrap().span;
        assert_eq!(child.parent_span_id, connect.span_context.span_id());
        assert_eq!(
            child.span_context.trace_id(),
            connect.span_context.trace_id()
        );
        assert_eq!(child.status, Status::Unset);
        let other = b.build(&read(8)).unwrap().span;
        assert_eq!(other.parent_span_id, SpanId::INVALID);
        assert_ne!(
            other.span_context.trace_id(),
            connect.span_context.trace_id()
        );
        let close = b
            .build(&tcp(EventKind::TcpClose, 0xabc, 5000, 80))
            .unwrap()
            .span;
        assert_eq!(close.name, "tcp connection");
        assert_eq!(close.parent_span_id, connect.span_context.span_id());
        assert_eq!(get(&close, attr::TCP_RETRANSMITS), Some(&Value::I64(0)));
        // After close the fd is no longer the connection's.
        assert_eq!(
            b.build(&read(7)).unwrap().span.parent_span_id,
            SpanId::INVALID
        );
    }

    #[test]
    fn failed_connect_and_unknown_listener() {
        let mut b = builder(HashMap::new());
        let mut ev = tcp(EventKind::TcpConnect, 1, 5000, 81);
        if let RawEvent::Tcp(_, h, d) = &mut ev {
            h.flags = TCP_FLAG_FAILED;
            d.error = libc::ECONNREFUSED as u32;
        }
        let s = b.build(&ev).unwrap().span;
        assert_eq!(s.status, Status::error("ECONNREFUSED"));
        assert_eq!(b.open_connections(), 0);
        let mut ev = tcp(EventKind::TcpAccept, 2, 80, 5000);
        if let RawEvent::Tcp(_, h, _) = &mut ev {
            h.flags = TCP_FLAG_PID_UNKNOWN;
        }
        let built = b.build(&ev).unwrap();
        assert_eq!(built.span.span_kind, SpanKind::Server);
        assert_eq!(built.resource.service_name, "unknown_service");
        assert_eq!(get(&built.span, attr::PID_KNOWN), Some(&Value::Bool(false)));
        assert_eq!(get(&built.span, "client.port"), Some(&Value::I64(5000)));
        assert_eq!(get(&built.span, "server.port"), Some(&Value::I64(80)));
    }

    #[test]
    fn trace_ids_differ_and_low_56_bits_vary() {
        let mut b = builder(HashMap::new());
        let ev = RawEvent::Syscall(header(1, 1, 0), SyscallData::default());
        let ids: std::collections::HashSet<u64> = (0..1000)
            .map(|_| {
                let t = b
                    .build(&ev)
                    .unwrap()
                    .span
                    .span_context
                    .trace_id()
                    .to_bytes();
                u64::from_be_bytes(t[8..16].try_into().unwrap()) & ((1 << 56) - 1)
            })
            .collect();
        assert_eq!(ids.len(), 1000);
    }
}
