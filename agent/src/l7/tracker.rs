//! Request spans: each exchange record the kernel sends (one request and its response, on one
//! side of a connection) becomes a SERVER or CLIENT span, with the trace context the kernel
//! assigned at the request's start. The same for every protocol.
//!
//! - **Server span**: from the end of the read that brought the request's first bytes to the
//!   end of the write that sent the response's last ones. Its parent, as the kernel found it:
//!   the caller's span named by trace context in the request (HTTP `traceparent`; its
//!   `tracestate` is kept), else the CLIENT span of the process on the other end of the same
//!   connection on this host (matched in the kernel by the TCP sequence number of the
//!   request's first byte, which both ends see), else none (a new trace).
//! - **Client span**: from the start of the write that sent the request to the end of the
//!   read that brought the response's last bytes. Its parent is the server span its thread
//!   was serving, if it served exactly one (thread-per-request servers).
//! - **Children**: the kernel gives the syscall and connect events a thread makes while it
//!   serves exactly one request that request's context (see `crate::spans`).
//!
//! Userspace repairs a link only where the kernel cannot make one: without the kernel's BTF
//! (no TCP sequence numbers), a server request on a connection whose other end is on this
//! host is matched with its client's record by the connection and the request's number on it
//! ([`Output::Merge`]); its trace waits for that record at most [`LINK_WAIT`].
//!
//! For the samplers, each span comes with its name and status only (a [`Summary`], made
//! without allocating); attributes are described for the spans that are kept
//! ([`RequestSpan::describe`]).
use std::collections::VecDeque;

// Seeded per map (foldhash): fast, and not predictable by a peer choosing ports.
use foldhash::{HashMap, HashMapExt};

use agent_common::{
    EventHeader, ExchangeData, EXCH_FLAG_CLIENT, EXCH_FLAG_UNLINKED, PARENT_PEER, PARENT_REMOTE,
    PARENT_THREAD,
};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};

use super::{
    context::parse_traceparent, protocol, redact::Redactor, DescribeContext, Description, Ends,
    Exchange, Protocol, ProtocolCounts, Role, Summary,
};
use crate::conns::Tuple;

/// Longest a server request waits for its client's record when userspace links them.
pub const LINK_WAIT_NS: u64 = 1_000_000_000;
/// [`LINK_WAIT_NS`] as a duration, for the docs.
pub const LINK_WAIT: std::time::Duration = std::time::Duration::from_nanos(LINK_WAIT_NS);
/// Requests remembered for linking (each side), beyond which the oldest are forgotten.
const MAX_LINKS: usize = 16_384;

/// L7 settings in force (every protocol).
#[derive(Debug, Clone, Default)]
pub struct L7Options {
    /// Connections with this local or remote port are not followed.
    pub ignore_ports: Vec<u16>,
    pub redactor: std::sync::Arc<Redactor>,
}

/// What the request tracker counted (every protocol; each protocol's counts are in
/// [`Tracker::protocol_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Exchange records received.
    pub records: u64,
    pub server_spans: u64,
    pub client_spans: u64,
    /// Server spans whose parent is a client span of another process on this host.
    pub linked: u64,
    /// Of them, linked by userspace (the kernel had no TCP sequence numbers).
    pub linked_late: u64,
    /// Server spans that continue an incoming trace context (`traceparent`).
    pub continued: u64,
    /// Client spans whose parent is the request their thread was serving.
    pub children_of_requests: u64,
    /// Records on connections not followed (`http.ignore_ports`). (The kernel leaves out
    /// servers reading kspan's own exports.)
    pub ignored: u64,
    /// Records of a protocol id this build has no module for (a kernel newer than the
    /// agent).
    pub unknown_protocol: u64,
}

/// A request span from one exchange record, before the samplers decide.
#[derive(Debug)]
pub struct RequestSpan {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; agent_common::COMM_LEN],
    pub ctx: SpanContext,
    pub parent: Option<SpanId>,
    /// The parent is another process's span (traceparent).
    pub parent_remote: bool,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The span's name (the protocol's summary): inline up to 24 bytes, no allocation for
    /// most names.
    pub name: compact_str::CompactString,
    pub summary: Summary,
    /// No span of this trace on this host encloses it: its end completes the local trace.
    pub local_root: bool,
    pub protocol: &'static dyn Protocol,
    /// The record: the socket's ends and the heads (`bytes`).
    pub data: ExchangeData,
    pub flags: u32,
    pub bytes: Vec<u8>,
}

impl RequestSpan {
    pub fn role(&self) -> Role {
        if self.flags & EXCH_FLAG_CLIENT != 0 {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// The exchange as its protocol module reads it.
    pub fn exchange(&self) -> Exchange<'_> {
        let req = (self.data.req_len as usize).min(self.bytes.len());
        let (request, rest) = self.bytes.split_at(req);
        let response = &rest[..(self.data.resp_len as usize).min(rest.len())];
        Exchange {
            role: self.role(),
            request,
            response,
            request_bytes: self.data.req_bytes,
            response_bytes: self.data.resp_bytes,
            flags: self.flags,
        }
    }

    /// The connection's ends, when the kernel read them.
    pub fn tuple(&self) -> Option<Tuple> {
        Tuple::of_exchange(&self.data)
    }

    /// Name, attributes and status (for a span that is kept).
    pub fn describe(&self, redactor: &Redactor) -> Description {
        let ends = self.tuple().map(Ends::of);
        self.protocol.describe(
            &self.exchange(),
            &DescribeContext {
                ends: ends.as_ref(),
                tid: self.tid,
                redactor,
            },
        )
    }

    /// The trace state the caller sent with a `traceparent` (HTTP `tracestate`), if any.
    pub fn caller_state(&self) -> Option<TraceState> {
        if !self.parent_remote {
            return None;
        }
        let r = super::http::head::Request::parse(self.exchange().request)?;
        let tp = parse_traceparent(r.traceparent?, r.tracestate)?;
        Some(tp.trace_state().clone())
    }
}

/// What the tracker asks of the traces held, besides the spans it makes.
#[derive(Debug)]
pub enum Output {
    /// Everything in trace `from` belongs to trace `to`, and span `span` (the server span
    /// that waited for its caller) has parent `parent`.
    Merge {
        from: TraceId,
        to: TraceId,
        span: SpanId,
        parent: SpanId,
    },
    /// Trace `trace` waited for a caller's record that did not come: its spans go on as
    /// they are.
    Release(TraceId),
}

/// A request on a connection, named by the client's ends and its number on the connection,
/// for the userspace link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LinkKey {
    client: Tuple,
    seq: u32,
}

/// A server span waiting for its caller's record.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    trace: TraceId,
    span: SpanId,
    since_ns: u64,
}

/// Requests of every L7 protocol, and the links userspace makes.
pub struct Tracker {
    opts: L7Options,
    /// `opts.redactor`, made to live as long as the process (one per tracker, made once).
    redactor: &'static Redactor,
    /// Server spans waiting for their callers' records (userspace links), oldest first.
    waiting: HashMap<LinkKey, Waiting>,
    waiting_order: VecDeque<LinkKey>,
    /// Client requests recently seen, for servers whose record comes later.
    sent: HashMap<LinkKey, SpanContext>,
    sent_order: VecDeque<LinkKey>,
    /// Requests that came with an earlier one on a connection (pipelining), by socket, for
    /// the exchanges that answer them (`EXCH_FLAG_CONTINUED`); oldest sockets forgotten first.
    pipelined: HashMap<u64, VecDeque<Vec<u8>>>,
    pipelined_order: VecDeque<u64>,
    /// The span name being made, reused (no allocation per request for the summary).
    name: String,
    pub counts: RequestCounts,
    protocols: ProtocolCounts,
}

impl Tracker {
    /// Entries in each of the tracker's bounded tables (for `kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("waiting_servers", self.waiting_order.len()),
            ("sent_requests", self.sent_order.len()),
            ("pipelined_sockets", self.pipelined_order.len()),
        ]
    }

    pub fn new(opts: L7Options) -> Tracker {
        Tracker {
            redactor: Box::leak(Box::new(Redactor::clone(&opts.redactor))),
            opts,
            waiting: HashMap::new(),
            waiting_order: VecDeque::new(),
            sent: HashMap::new(),
            sent_order: VecDeque::new(),
            pipelined: HashMap::new(),
            pipelined_order: VecDeque::new(),
            name: String::with_capacity(64),
            counts: RequestCounts::default(),
            protocols: ProtocolCounts::default(),
        }
    }

    /// What each protocol's exchanges were.
    pub fn protocol_counts(&self) -> &ProtocolCounts {
        &self.protocols
    }

    /// The redactor, for the life of the process: each request span refers to it until it
    /// is described, without a reference count to keep.
    pub fn redactor(&self) -> &'static Redactor {
        self.redactor
    }

    /// Server spans waiting for their callers' records.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Feeds one exchange record (its header, data and heads): its span (none for records
    /// not followed), after what `out` asks of the traces held.
    pub fn on_record(
        &mut self,
        h: &EventHeader,
        d: &ExchangeData,
        bytes: Vec<u8>,
        out: &mut Vec<Output>,
    ) -> Option<RequestSpan> {
        self.counts.records += 1;
        let Some(p) = protocol(d.protocol) else {
            self.counts.unknown_protocol += 1;
            return None;
        };
        let tuple = Tuple::of_exchange(d);
        if let Some(t) = tuple {
            let ports = &self.opts.ignore_ports;
            if ports.contains(&t.local.port()) || ports.contains(&t.remote.port()) {
                self.counts.ignored += 1;
                return None;
            }
        }
        let mut d = *d;
        let bytes = self.continued(&mut d, bytes, h.flags);
        let d = &d;
        let mut span = RequestSpan {
            pid: h.pid,
            tid: h.tid,
            comm: h.comm,
            ctx: SpanContext::new(
                TraceId::from_bytes(d.ctx.trace_id),
                SpanId::from_bytes(d.ctx.span_id),
                TraceFlags::new(d.trace_flags),
                false,
                TraceState::default(),
            ),
            parent: (d.parent_span_id != [0; 8]).then(|| SpanId::from_bytes(d.parent_span_id)),
            parent_remote: d.parent_kind == PARENT_REMOTE,
            kind: SpanKind::Server,
            start_ns: h.start_ns,
            end_ns: h.start_ns + h.duration_ns,
            name: compact_str::CompactString::const_new(""),
            summary: Summary::default(),
            local_root: true,
            protocol: p,
            data: *d,
            flags: h.flags,
            bytes,
        };
        // The summary's name is made in the reused buffer, then moved into the span at its
        // size (one allocation, none for the parse).
        let summary = p.summarize(&span.exchange(), self.redactor, &mut self.name);
        span.summary = summary;
        span.name.push_str(&self.name);
        self.pipelining(&mut span, summary.next_request);
        if let Some(c) = self.protocols.get_mut(p.id()) {
            c.add(&span.exchange(), &summary);
        }
        match span.role() {
            Role::Client => {
                span.kind = SpanKind::Client;
                self.counts.client_spans += 1;
                if d.parent_kind == PARENT_THREAD {
                    self.counts.children_of_requests += 1;
                    span.local_root = false;
                }
                if let Some(t) = tuple {
                    self.client_seen(t, d, &span.ctx, out);
                }
            }
            Role::Server => {
                self.counts.server_spans += 1;
                match d.parent_kind {
                    PARENT_REMOTE => self.counts.continued += 1,
                    PARENT_PEER => {
                        self.counts.linked += 1;
                        span.local_root = false;
                    }
                    _ => {
                        if h.flags & EXCH_FLAG_UNLINKED != 0 {
                            self.server_unlinked(tuple, d, &mut span, h.start_ns);
                        }
                    }
                }
            }
        }
        Some(span)
    }

    /// An exchange answering a request pipelined behind an earlier one
    /// (`EXCH_FLAG_CONTINUED`) gets its request bytes from where that earlier head left them
    /// (none when the head did not hold it: it is then counted, not described).
    fn continued(&mut self, d: &mut ExchangeData, bytes: Vec<u8>, flags: u32) -> Vec<u8> {
        if flags & agent_common::EXCH_FLAG_CONTINUED == 0 {
            return bytes;
        }
        let Some(mut req) = self.pipelined.get_mut(&d.sk).and_then(VecDeque::pop_front) else {
            return bytes;
        };
        // The record has response bytes only: the request goes first.
        d.req_len = req.len().min(u16::MAX as usize) as u16;
        d.req_bytes = req.len() as u64;
        req.extend_from_slice(&bytes);
        req
    }

    /// Requests after the first one in a span's request bytes (`next`: where they start) are
    /// kept for the exchanges that answer them, in order, and leave the span's bytes.
    fn pipelining(&mut self, span: &mut RequestSpan, next: Option<u16>) {
        let sk = span.data.sk;
        let continued = span.flags & agent_common::EXCH_FLAG_CONTINUED != 0;
        let Some(at) = next else {
            // A new request with nothing behind it: what was queued is stale.
            if !continued && !self.pipelined.is_empty() {
                self.pipelined.remove(&sk);
            }
            return;
        };
        let req = (span.data.req_len as usize).min(span.bytes.len());
        let at = (at as usize).min(req);
        let rest: Vec<u8> = span.bytes.drain(at..req).collect();
        span.data.req_len = at as u16;
        if continued {
            // Its request came from the queue: so did the ones behind it.
            span.data.req_bytes = at as u64;
            if let Some(q) = self.pipelined.get_mut(&sk) {
                q.push_front(rest);
            }
            return;
        }
        if self.pipelined.insert(sk, VecDeque::from([rest])).is_none() {
            self.pipelined_order.push_back(sk);
            if self.pipelined_order.len() > MAX_LINKS {
                if let Some(old) = self.pipelined_order.pop_front() {
                    self.pipelined.remove(&old);
                }
            }
        }
    }

    /// A client request: a server waiting for it is linked; else it is remembered for one
    /// whose record comes later.
    fn client_seen(
        &mut self,
        t: Tuple,
        d: &ExchangeData,
        ctx: &SpanContext,
        out: &mut Vec<Output>,
    ) {
        // The kernel linked it unless it had no sequence numbers.
        if d.req_tcp_seq != 0 || !is_local(&t) {
            return;
        }
        let key = LinkKey {
            client: t,
            seq: d.seq,
        };
        if let Some(w) = self.waiting.remove(&key) {
            self.counts.linked += 1;
            self.counts.linked_late += 1;
            out.push(Output::Merge {
                from: w.trace,
                to: ctx.trace_id(),
                span: w.span,
                parent: ctx.span_id(),
            });
            return;
        }
        if self.sent.insert(key, ctx.clone()).is_none() {
            self.sent_order.push_back(key);
            if self.sent_order.len() > MAX_LINKS {
                if let Some(old) = self.sent_order.pop_front() {
                    self.sent.remove(&old);
                }
            }
        }
    }

    /// A server request the kernel found no caller for. Without sequence numbers (no BTF)
    /// its caller on this host may still come: linked now if its record came first, else
    /// it waits (not a local root) for at most [`LINK_WAIT`].
    fn server_unlinked(
        &mut self,
        tuple: Option<Tuple>,
        d: &ExchangeData,
        span: &mut RequestSpan,
        now_ns: u64,
    ) {
        let Some(t) = tuple else {
            return;
        };
        if d.req_tcp_seq != 0 || !is_local(&t) {
            return;
        }
        let key = LinkKey {
            client: flip(&t),
            seq: d.seq,
        };
        if let Some(c) = self.sent.remove(&key) {
            // The caller's record came first: the server span joins its trace.
            self.counts.linked += 1;
            self.counts.linked_late += 1;
            span.ctx = SpanContext::new(
                c.trace_id(),
                span.ctx.span_id(),
                span.ctx.trace_flags(),
                false,
                TraceState::default(),
            );
            span.parent = Some(c.span_id());
            span.local_root = false;
            return;
        }
        span.local_root = false;
        self.waiting.insert(
            key,
            Waiting {
                trace: span.ctx.trace_id(),
                span: span.ctx.span_id(),
                since_ns: now_ns,
            },
        );
        self.waiting_order.push_back(key);
        if self.waiting_order.len() > MAX_LINKS {
            // The oldest stops waiting (its trace is released by the holder's age limit,
            // counted as released_early); leaving it in `waiting` kept it for ever.
            if let Some(old) = self.waiting_order.pop_front() {
                self.waiting.remove(&old);
            }
        }
    }

    /// Server spans that waited longer than [`LINK_WAIT`] for their callers go on alone.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        while let Some(k) = self.waiting_order.front().copied() {
            match self.waiting.get(&k) {
                Some(w) if now_ns.saturating_sub(w.since_ns) > LINK_WAIT_NS => {
                    out.push(Output::Release(w.trace));
                    self.waiting.remove(&k);
                    self.waiting_order.pop_front();
                }
                Some(_) => break,
                None => {
                    self.waiting_order.pop_front();
                }
            }
        }
    }
}

fn flip(t: &Tuple) -> Tuple {
    Tuple {
        local: t.remote,
        remote: t.local,
    }
}

/// Whether the other end of a connection is on this host (loopback, or this end's own
/// address).
fn is_local(t: &Tuple) -> bool {
    t.remote.ip().is_loopback() || t.remote.ip() == t.local.ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{l7::PROTOCOL_HTTP1, TraceRef, EXCH_FLAG_NO_RESPONSE, PARENT_NONE};

    const REQ: &[u8] = b"GET /orders/7?mail=jo@example.com HTTP/1.1\r\nHost: api:80\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";

    /// A record as the kernel makes it: `local` and `remote` are "a.b.c.d:port".
    #[allow(clippy::too_many_arguments)]
    fn record(
        flags: u32,
        local: &str,
        remote: &str,
        seq: u32,
        tcp_seq: u32,
        ctx: (u128, u64),
        parent: (u64, u8),
        heads: (&[u8], &[u8]),
    ) -> (EventHeader, ExchangeData, Vec<u8>) {
        let l: std::net::SocketAddrV4 = local.parse().unwrap();
        let r: std::net::SocketAddrV4 = remote.parse().unwrap();
        let mut d = ExchangeData {
            ctx: TraceRef {
                trace_id: ctx.0.to_be_bytes(),
                span_id: ctx.1.to_be_bytes(),
            },
            parent_span_id: parent.0.to_be_bytes(),
            parent_kind: parent.1,
            seq,
            req_tcp_seq: tcp_seq,
            protocol: PROTOCOL_HTTP1,
            family: 2,
            sport: l.port(),
            dport: r.port(),
            req_len: heads.0.len() as u16,
            resp_len: heads.1.len() as u16,
            trace_flags: 1,
            ..Default::default()
        };
        d.saddr[..4].copy_from_slice(&l.ip().octets());
        d.daddr[..4].copy_from_slice(&r.ip().octets());
        let h = EventHeader {
            kind: agent_common::EventKind::Exchange as u32,
            flags,
            pid: 10,
            tid: 11,
            start_ns: 100,
            duration_ns: 50,
            cgroup_id: 0,
            comm: [0; agent_common::COMM_LEN],
        };
        (h, d, [heads.0, heads.1].concat())
    }

    /// The span a record made, and what else the tracker asked for.
    struct Fed {
        span: Option<RequestSpan>,
        out: Vec<Output>,
    }

    fn feed(t: &mut Tracker, r: (EventHeader, ExchangeData, Vec<u8>)) -> Fed {
        let mut out = Vec::new();
        let span = t.on_record(&r.0, &r.1, r.2, &mut out);
        Fed { span, out }
    }

    fn span(f: &Fed) -> &RequestSpan {
        f.span.as_ref().expect("a span")
    }

    #[test]
    fn kernel_contexts_become_spans() {
        let mut t = Tracker::new(L7Options::default());
        // A server request whose client end on this host the kernel found.
        let out = feed(
            &mut t,
            record(
                0,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                1,
                77,
                (1, 2),
                (3, PARENT_PEER),
                (REQ, RESP),
            ),
        );
        let s = span(&out);
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.ctx.trace_id(), TraceId::from(1u128));
        assert_eq!(s.ctx.span_id(), SpanId::from(2u64));
        assert_eq!(s.parent, Some(SpanId::from(3u64)));
        assert!(!s.local_root && !s.parent_remote);
        assert_eq!(s.name, "GET /orders/{id}");
        assert!(s.summary.error);
        assert_eq!((s.start_ns, s.end_ns), (100, 150));
        // The client end, a local root.
        let out = feed(
            &mut t,
            record(
                EXCH_FLAG_CLIENT,
                "127.0.0.1:5000",
                "127.0.0.1:80",
                1,
                77,
                (1, 3),
                (0, PARENT_NONE),
                (REQ, RESP),
            ),
        );
        let c = span(&out);
        assert_eq!(c.kind, SpanKind::Client);
        assert!(c.local_root && c.parent.is_none());
        // A traceparent continued: a local root with a remote parent.
        let out = feed(
            &mut t,
            record(
                0,
                "127.0.0.1:80",
                "10.0.0.9:5000",
                2,
                0,
                (4, 5),
                (6, PARENT_REMOTE),
                (REQ, b""),
            ),
        );
        let r = span(&out);
        assert!(r.local_root && r.parent_remote);
        assert_eq!(t.counts.linked, 1);
        assert_eq!(t.counts.continued, 1);
        assert_eq!(t.protocol_counts().0[0].requests, 3);
        // Ignored ports are not followed.
        let mut t = Tracker::new(L7Options {
            ignore_ports: vec![80],
            ..Default::default()
        });
        assert!(feed(
            &mut t,
            record(
                0,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                1,
                0,
                (1, 2),
                (0, 0),
                (REQ, RESP)
            )
        )
        .span
        .is_none());
        assert_eq!(t.counts.ignored, 1);
    }

    /// Without TCP sequence numbers the kernel cannot link the two ends: userspace does, by
    /// the connection and the request's number on it, whichever record comes first.
    #[test]
    fn userspace_links_what_the_kernel_could_not() {
        for server_first in [true, false] {
            let mut t = Tracker::new(L7Options::default());
            let server = record(
                EXCH_FLAG_UNLINKED,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                4,
                0,
                (9, 8),
                (0, PARENT_NONE),
                (REQ, RESP),
            );
            let client = record(
                EXCH_FLAG_CLIENT,
                "127.0.0.1:5000",
                "127.0.0.1:80",
                4,
                0,
                (1, 3),
                (0, PARENT_NONE),
                (REQ, RESP),
            );
            if server_first {
                let s = feed(&mut t, server);
                assert!(!span(&s).local_root, "waits for its caller");
                assert_eq!(t.waiting(), 1);
                let c = feed(&mut t, client);
                assert!(c.out.iter().any(|o| matches!(o,
                    Output::Merge { from, to, span, parent }
                        if *from == TraceId::from(9u128) && *to == TraceId::from(1u128)
                        && *span == SpanId::from(8u64) && *parent == SpanId::from(3u64))));
            } else {
                feed(&mut t, client);
                let s = feed(&mut t, server);
                let s = span(&s);
                assert_eq!(s.ctx.trace_id(), TraceId::from(1u128));
                assert_eq!(s.parent, Some(SpanId::from(3u64)));
            }
            assert_eq!((t.counts.linked, t.counts.linked_late), (1, 1));
            assert_eq!(t.waiting(), 0);
        }
        // No caller within LINK_WAIT: released.
        let mut t = Tracker::new(L7Options::default());
        feed(
            &mut t,
            record(
                EXCH_FLAG_UNLINKED,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                1,
                0,
                (9, 8),
                (0, 0),
                (REQ, b""),
            ),
        );
        let mut out = Vec::new();
        t.expire(100 + LINK_WAIT_NS / 2, &mut out);
        assert!(out.is_empty());
        t.expire(200 + LINK_WAIT_NS, &mut out);
        assert!(matches!(out[..], [Output::Release(tr)] if tr == TraceId::from(9u128)));
        // With sequence numbers, an unlinked server is a root at once (its client is not
        // traced).
        let mut t = Tracker::new(L7Options::default());
        let s = feed(
            &mut t,
            record(
                EXCH_FLAG_UNLINKED | EXCH_FLAG_NO_RESPONSE,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                1,
                55,
                (9, 8),
                (0, 0),
                (REQ, b""),
            ),
        );
        assert!(span(&s).local_root);
        assert_eq!(t.protocol_counts().0[0].unanswered, 1);
    }
}
