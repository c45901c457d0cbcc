//! Request spans: requests and responses an L7 protocol module finds in a connection's bytes
//! become SERVER and CLIENT spans, and requests that cross processes on this host join one
//! trace. The same for every protocol.
//!
//! Input: the kernel's transfer records (one per read or write on a socket that carries a
//! detected protocol, see `agent_common::PayloadData`), per socket. The socket's protocol
//! module ([`super::Protocol::parser`]) pairs requests with responses; this module gives
//! each request its span and its place in a trace:
//!
//! - **Server span**: from the end of the read that brought the request's first bytes to the
//!   end of the write that sent the response's last ones. Its parent, in order: the caller's
//!   span named by trace context in the request (for HTTP the `traceparent` header;
//!   `tracestate` is kept); else the CLIENT span of the process on the other end of the same
//!   connection on this host (kspan sees both ends: the client's connection is the server's
//!   with local and remote swapped, and requests match in order and by their link, e.g.
//!   method and target); else none (a new trace).
//! - **Client span**: from the start of the write that sent the request to the end of the
//!   read that brought the response's last bytes. Its parent is the server span its thread
//!   is serving, if the thread serves exactly one request (thread-per-request servers).
//! - **Children**: syscall and TCP spans a thread makes while it serves exactly one request
//!   become that request's children ([`Tracker::parent_of_thread`]).
//!
//! Not followed: requests handed from one thread to another, and event loops that serve many
//! requests on one thread (their spans are still made, without children or outgoing links).
//!
//! The caller's trace id is not always known when a server request starts (the client's
//! record may come later); such a request gets a provisional trace id, and when the link is
//! found at its end, [`Output::Merge`] moves everything in the provisional trace to the real
//! one. Spans are held per trace until the local root ends (`crate::traces`).
use std::collections::VecDeque;

// Seeded per map (foldhash): fast, and not predictable by a peer choosing trace ids or ports.
use foldhash::{HashMap, HashMapExt};

use agent_common::{EventHeader, PayloadData, PAYLOAD_FLAG_CLOSE, PAYLOAD_FLAG_WRITE};
use opentelemetry::{
    trace::{SpanContext, SpanKind, Status, TraceFlags, TraceId, TraceState},
    KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::{
    protocol, redact::Redactor, DescribeContext, Dir, Ends, Exchange, Found, Io, LinkHasher,
    ParseCounts, Parser, ProtocolCounts, Role, Started,
};
use crate::conns::Tuple;

/// Connections followed at once; beyond it the least recently used is forgotten.
pub const MAX_CONNS: usize = 65_536;
/// Client requests remembered per connection for linking with the server end.
const MAX_SENT: usize = 64;

/// L7 settings in force (every protocol).
#[derive(Debug, Clone, Default)]
pub struct L7Options {
    /// Connections with this local or remote port are not followed.
    pub ignore_ports: Vec<u16>,
    pub redactor: Redactor,
}

/// What the request tracker counted (every protocol; each protocol's parser counts are in
/// [`Tracker::protocol_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Transfer records received.
    pub transfers: u64,
    pub server_spans: u64,
    pub client_spans: u64,
    /// Server spans whose parent is a client span of another process on this host.
    pub linked: u64,
    /// Server spans that continue an incoming trace context (`traceparent`).
    pub continued: u64,
    /// Transfers on connections not followed (`http.ignore_ports`). (The kernel leaves out
    /// servers reading kspan's own exports.)
    pub ignored: u64,
    /// Transfers of a protocol id this build has no parser for (a kernel newer than the
    /// agent).
    pub unknown_protocol: u64,
    /// Connections forgotten because the table was full.
    pub evicted: u64,
}

/// A finished request span, for the span builder to wrap with its process's resource.
#[derive(Debug, Clone)]
pub struct RequestSpan {
    pub pid: u32,
    pub comm: [u8; agent_common::COMM_LEN],
    pub ctx: SpanContext,
    pub parent: Option<SpanContext>,
    /// The parent is another process's span (traceparent).
    pub parent_remote: bool,
    pub kind: SpanKind,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    /// No span of this trace on this host encloses it: its end completes the local trace.
    pub local_root: bool,
}

/// What the tracker produced for one record.
#[derive(Debug)]
pub enum Output {
    /// A trace whose spans are held until its local root ends.
    Begin(TraceId),
    Span(Box<RequestSpan>),
    /// Everything in trace `from` belongs to trace `to`.
    Merge {
        from: TraceId,
        to: TraceId,
    },
}

/// A request started and not yet answered. A server request without a parent has a
/// provisional trace id until its end (its caller's record may come later).
#[derive(Debug, Clone)]
struct Open {
    seq: u64,
    /// What links it to its caller ([`Started::link`]).
    link: u64,
    ctx: SpanContext,
    parent: Option<SpanContext>,
    /// The parent is another process's span (traceparent).
    parent_remote: bool,
    start_ns: u64,
    tid: u32,
}

struct Conn {
    parser: Box<dyn Parser>,
    protocol: u16,
    pid: u32,
    comm: [u8; agent_common::COMM_LEN],
    /// Its 4-tuple, when known, with the address strings its spans carry.
    ends: Option<Ends>,
    ignored: bool,
    open: VecDeque<Open>,
    last_used: u64,
    /// The parser's counts when last added to the tracker's.
    reported: ParseCounts,
}

impl Conn {
    fn tuple(&self) -> Option<Tuple> {
        self.ends.as_ref().map(|e| e.tuple)
    }
}

/// A client request, for the server end of the connection to find.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    /// What links it to the server's request ([`Started::link`]): matched without a copy of
    /// the request's text per request.
    link: u64,
    ctx: SpanContext,
    claimed: bool,
}

/// A server request a thread is serving.
#[derive(Debug, Clone)]
struct Serving {
    sk: u64,
    seq: u64,
    ctx: SpanContext,
    start_ns: u64,
}

/// Requests of every L7 protocol, per connection, and their links.
pub struct Tracker {
    opts: L7Options,
    ids: RandomIdGenerator,
    conns: HashMap<u64, Conn>,
    use_clock: u64,
    serving: HashMap<u32, Vec<Serving>>,
    sent: HashMap<Tuple, VecDeque<Sent>>,
    /// Seeded per instance: a peer cannot choose two requests with the same link.
    links: LinkHasher,
    found: Vec<Found>,
    pub counts: RequestCounts,
    protocols: ProtocolCounts,
}

fn flip(t: &Tuple) -> Tuple {
    Tuple {
        local: t.remote,
        remote: t.local,
    }
}

impl Tracker {
    pub fn new(opts: L7Options) -> Tracker {
        Tracker {
            opts,
            ids: RandomIdGenerator::default(),
            conns: HashMap::new(),
            use_clock: 0,
            serving: HashMap::new(),
            sent: HashMap::new(),
            links: Default::default(),
            found: Vec::new(),
            counts: RequestCounts::default(),
            protocols: ProtocolCounts::default(),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// What each protocol's parsers counted, summed over connections.
    pub fn protocol_counts(&self) -> &ProtocolCounts {
        &self.protocols
    }

    /// The server span thread `tid` is serving, when it serves exactly one request that
    /// started no later than `start_ns`.
    pub fn parent_of_thread(&self, tid: u32, start_ns: u64) -> Option<SpanContext> {
        match self.serving.get(&tid).map(Vec::as_slice) {
            Some([s]) if s.start_ns <= start_ns => Some(s.ctx.clone()),
            _ => None,
        }
    }

    fn context(&self, trace: TraceId, state: TraceState) -> SpanContext {
        SpanContext::new(
            trace,
            self.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            state,
        )
    }

    /// Feeds one transfer record. `known` names the connection's ends when the record or a
    /// TCP event did; else `resolve` (/proc, costly) is asked once per connection.
    pub fn on_record(
        &mut self,
        h: &EventHeader,
        d: &PayloadData,
        bytes: &[u8],
        known: Option<Tuple>,
        resolve: impl FnOnce() -> Option<Tuple>,
        out: &mut Vec<Output>,
    ) {
        self.counts.transfers += 1;
        if h.flags & PAYLOAD_FLAG_CLOSE != 0 {
            self.close(d.sk, h.start_ns, out);
            return;
        }
        self.use_clock += 1;
        let tuple = known;
        // A socket address reused by a new connection whose predecessor's close was missed.
        if let (Some(c), Some(t)) = (self.conns.get(&d.sk), tuple) {
            if c.tuple().is_some_and(|old| old != t) || c.protocol != d.protocol {
                self.close(d.sk, h.start_ns, out);
            }
        }
        if !self.conns.contains_key(&d.sk) {
            let Some(p) = protocol(d.protocol) else {
                self.counts.unknown_protocol += 1;
                return;
            };
            let tuple = tuple.or_else(resolve);
            self.new_conn(h, d.sk, p.id(), p.parser(&self.links), tuple);
        }
        let Some(conn) = self.conns.get_mut(&d.sk) else {
            return;
        };
        conn.last_used = self.use_clock;
        if conn.ignored {
            self.counts.ignored += 1;
            return;
        }
        let io = Io {
            dir: if h.flags & PAYLOAD_FLAG_WRITE != 0 {
                Dir::Write
            } else {
                Dir::Read
            },
            start_ns: h.start_ns,
            end_ns: h.start_ns + h.duration_ns,
            data: bytes,
            len: d.len,
        };
        let mut found = std::mem::take(&mut self.found);
        conn.parser.on_io(&io, &mut found);
        for f in found.drain(..) {
            match f {
                Found::Started(r) => self.started(d.sk, h.tid, &io, r, out),
                Found::Done(ex) => self.finished(d.sk, ex, out),
            }
        }
        self.found = found;
        self.sync_counts(d.sk);
    }

    fn new_conn(
        &mut self,
        h: &EventHeader,
        sk: u64,
        protocol: u16,
        parser: Box<dyn Parser>,
        tuple: Option<Tuple>,
    ) {
        if self.conns.len() >= MAX_CONNS {
            // Forget the least recently used connection.
            if let Some((&old, _)) = self.conns.iter().min_by_key(|(_, c)| c.last_used) {
                self.forget(old);
                self.counts.evicted += 1;
            }
        }
        let ignored = match &tuple {
            Some(t) => {
                self.opts.ignore_ports.contains(&t.local.port())
                    || self.opts.ignore_ports.contains(&t.remote.port())
            }
            None => false,
        };
        self.conns.insert(
            sk,
            Conn {
                parser,
                protocol,
                pid: h.pid,
                comm: h.comm,
                ends: tuple.map(Ends::of),
                ignored,
                open: VecDeque::new(),
                last_used: self.use_clock,
                reported: Default::default(),
            },
        );
    }

    /// A request started on connection `sk`, moved by thread `tid` in transfer `io`: its
    /// span context, and for a server the thread now serving it, for a client the request
    /// the server end will look for.
    fn started(&mut self, sk: u64, tid: u32, io: &Io<'_>, r: Started, out: &mut Vec<Output>) {
        let Started {
            seq,
            role,
            link,
            context,
        } = r;
        let (parent, parent_remote) = match (role, context) {
            (Role::Server, Some(p)) => (Some(p), true),
            (Role::Server, None) => (self.claim_caller(sk, link), false),
            (Role::Client, _) => (self.parent_of_thread(tid, io.start_ns), false),
        };
        let ctx = match &parent {
            Some(p) => self.context(p.trace_id(), p.trace_state().clone()),
            None => self.context(self.ids.new_trace_id(), TraceState::default()),
        };
        // A server request whose caller is not on this host yet may get one later (see
        // `finished`); its trace is held as provisional until then.
        if parent.is_none() || parent_remote {
            out.push(Output::Begin(ctx.trace_id()));
        }
        let start_ns = match role {
            // The request began when its first bytes were read: the end of that read (a
            // blocking read may have waited long before they came).
            Role::Server => {
                self.serving.entry(tid).or_default().push(Serving {
                    sk,
                    seq,
                    ctx: ctx.clone(),
                    start_ns: io.end_ns,
                });
                io.end_ns
            }
            Role::Client => io.start_ns,
        };
        let Some(conn) = self.conns.get_mut(&sk) else {
            return;
        };
        if let (Role::Client, Some(t)) = (role, conn.tuple()) {
            let q = self.sent.entry(t).or_default();
            if q.len() >= MAX_SENT {
                q.pop_front();
            }
            q.push_back(Sent {
                seq,
                link,
                ctx: ctx.clone(),
                claimed: false,
            });
        }
        conn.open.push_back(Open {
            seq,
            link,
            ctx,
            parent,
            parent_remote,
            start_ns,
            tid,
        });
    }

    /// The client span, on this host, that sent the request server connection `sk` read.
    fn claim_caller(&mut self, sk: u64, link: u64) -> Option<SpanContext> {
        let t = self.conns.get(&sk)?.tuple()?;
        let q = self.sent.get_mut(&flip(&t))?;
        let s = q.iter_mut().find(|s| !s.claimed && s.link == link)?;
        s.claimed = true;
        Some(s.ctx.clone())
    }

    fn finished(&mut self, sk: u64, ex: Exchange, out: &mut Vec<Output>) {
        let Some(conn) = self.conns.get_mut(&sk) else {
            return;
        };
        // Requests given up before this one (evicted, unanswered) leave the queue too.
        let mut open = None;
        while let Some(o) = conn.open.pop_front() {
            if o.seq == ex.seq {
                open = Some(o);
                break;
            }
            if o.seq > ex.seq {
                conn.open.push_front(o);
                break;
            }
            Self::stop_serving(&mut self.serving, o.tid, sk, o.seq);
        }
        let Some(mut open) = open else {
            return;
        };
        let (pid, comm, ends) = (conn.pid, conn.comm, conn.ends.clone());
        match ex.role {
            Role::Server => {
                Self::stop_serving(&mut self.serving, open.tid, sk, open.seq);
                self.counts.server_spans += 1;
                if open.parent.is_none() {
                    // A provisional trace id: the caller's record may have come after this
                    // request's start.
                    if let Some(c) = self.claim_caller(sk, open.link) {
                        out.push(Output::Merge {
                            from: open.ctx.trace_id(),
                            to: c.trace_id(),
                        });
                        open.ctx = SpanContext::new(
                            c.trace_id(),
                            open.ctx.span_id(),
                            open.ctx.trace_flags(),
                            false,
                            c.trace_state().clone(),
                        );
                        open.parent = Some(c);
                    }
                }
                if open.parent_remote {
                    self.counts.continued += 1;
                } else if open.parent.is_some() {
                    self.counts.linked += 1;
                }
            }
            Role::Client => {
                self.counts.client_spans += 1;
                if let Some(t) = ends.as_ref().map(|e| e.tuple) {
                    if let Some(q) = self.sent.get_mut(&t) {
                        q.retain(|s| s.seq != open.seq);
                        if q.is_empty() {
                            self.sent.remove(&t);
                        }
                    }
                }
            }
        }
        // No parent on this host: the local root of its trace.
        let local_root = open.parent.is_none() || open.parent_remote;
        let (start_ns, end_ns) = (open.start_ns, ex.response_end_ns);
        let d = ex.message.describe(&DescribeContext {
            role: ex.role,
            ends: ends.as_ref(),
            tid: open.tid,
            redactor: &self.opts.redactor,
        });
        out.push(Output::Span(Box::new(RequestSpan {
            pid,
            comm,
            ctx: open.ctx,
            parent: open.parent,
            parent_remote: open.parent_remote,
            kind: match ex.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            },
            name: d.name,
            start_ns,
            end_ns: end_ns.max(start_ns),
            attributes: d.attributes,
            status: d.status,
            local_root,
        })));
    }

    fn stop_serving(serving: &mut HashMap<u32, Vec<Serving>>, tid: u32, sk: u64, seq: u64) {
        if let Some(v) = serving.get_mut(&tid) {
            v.retain(|s| !(s.sk == sk && s.seq == seq));
            if v.is_empty() {
                serving.remove(&tid);
            }
        }
    }

    fn close(&mut self, sk: u64, now_ns: u64, out: &mut Vec<Output>) {
        let mut found = std::mem::take(&mut self.found);
        match self.conns.get_mut(&sk) {
            Some(c) => c.parser.on_close(now_ns, &mut found),
            None => return,
        };
        for f in found.drain(..) {
            if let Found::Done(ex) = f {
                self.finished(sk, ex, out);
            }
        }
        self.found = found;
        self.sync_counts(sk);
        self.forget(sk);
    }

    fn forget(&mut self, sk: u64) {
        if let Some(c) = self.conns.remove(&sk) {
            for o in &c.open {
                Self::stop_serving(&mut self.serving, o.tid, sk, o.seq);
            }
            if let Some(t) = c.tuple() {
                self.sent.remove(&t);
            }
        }
    }

    /// Adds what the connection's parser counted since the last look.
    fn sync_counts(&mut self, sk: u64) {
        let Some(c) = self.conns.get_mut(&sk) else {
            return;
        };
        let now = c.parser.counts();
        let was = std::mem::replace(&mut c.reported, now);
        if let Some(total) = self.protocols.get_mut(c.protocol) {
            total.add_delta(&now, &was);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{l7::PROTOCOL_HTTP1, PAYLOAD_FLAG_START};
    use opentelemetry::trace::TraceId;

    const A: &str = "127.0.0.1:5000";
    const B: &str = "127.0.0.1:80";

    fn tuple(local: &str, remote: &str) -> Option<Tuple> {
        Some(Tuple::new(local.parse().unwrap(), remote.parse().unwrap()))
    }

    /// Feeds one transfer of `bytes` on socket `sk` by (pid, tid) over [start, end].
    #[allow(clippy::too_many_arguments)]
    fn io(
        r: &mut Tracker,
        sk: u64,
        t: Option<Tuple>,
        pid: u32,
        tid: u32,
        write: bool,
        start: u64,
        end: u64,
        bytes: &[u8],
    ) -> Vec<Output> {
        let mut flags = if write { PAYLOAD_FLAG_WRITE } else { 0 };
        if bytes.starts_with(b"GET") || bytes.starts_with(b"HTTP") {
            flags |= PAYLOAD_FLAG_START;
        }
        let h = EventHeader {
            kind: 5,
            flags,
            pid,
            tid,
            start_ns: start,
            duration_ns: end - start,
            cgroup_id: 0,
            comm: [0; agent_common::COMM_LEN],
        };
        let d = PayloadData {
            sk,
            len: bytes.len() as u64,
            captured: bytes.len() as u32,
            protocol: PROTOCOL_HTTP1,
            ..Default::default()
        };
        let mut out = Vec::new();
        r.on_record(&h, &d, bytes, t, || None, &mut out);
        out
    }

    const REQ: &[u8] = b"GET /orders/7?mail=jo@example.com HTTP/1.1\r\nHost: api:80\r\nUser-Agent: t\r\nAuthorization: Bearer x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";

    fn spans(out: Vec<Output>) -> Vec<RequestSpan> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Span(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn get<'a>(s: &'a RequestSpan, k: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    /// Both ends of a connection on this host: the server span is the client span's child,
    /// whichever end's record comes first; the client span is the trace's local root.
    #[test]
    fn both_ends_of_a_connection_link() {
        for server_first in [false, true] {
            let mut r = Tracker::new(L7Options::default());
            let (c, s) = (tuple(A, B), tuple(B, A));
            let mut out = Vec::new();
            if server_first {
                out.extend(io(&mut r, 2, s, 20, 21, false, 110, 120, REQ));
                out.extend(io(&mut r, 1, c, 10, 11, true, 100, 105, REQ));
            } else {
                out.extend(io(&mut r, 1, c, 10, 11, true, 100, 105, REQ));
                out.extend(io(&mut r, 2, s, 20, 21, false, 110, 120, REQ));
            }
            // While B serves, its thread's calls are the request's children.
            let serving = r.parent_of_thread(21, 130).expect("thread 21 serves");
            assert_eq!(r.parent_of_thread(21, 115), None, "before the request");
            assert_eq!(r.parent_of_thread(99, 130), None);
            out.extend(io(&mut r, 2, s, 20, 21, true, 150, 160, RESP));
            assert_eq!(r.parent_of_thread(21, 170), None, "answered");
            out.extend(io(&mut r, 1, c, 10, 11, false, 100, 170, RESP));
            let merges = out
                .iter()
                .filter(|o| matches!(o, Output::Merge { .. }))
                .count();
            assert_eq!(merges, usize::from(server_first));
            let got = spans(out);
            assert_eq!(got.len(), 2);
            let (server, client) = (&got[0], &got[1]);
            assert_eq!(server.kind, SpanKind::Server);
            assert_eq!(server.ctx.span_id(), serving.span_id());
            assert_eq!(client.kind, SpanKind::Client);
            assert_eq!(
                server.parent.as_ref().unwrap().span_id(),
                client.ctx.span_id()
            );
            assert_eq!(server.ctx.trace_id(), client.ctx.trace_id());
            assert!(!server.local_root && client.local_root);
            assert!(client.parent.is_none());
            // Times: the server from the end of its read to the end of its write; the
            // client from the start of its write to the end of its read.
            assert_eq!((server.start_ns, server.end_ns), (120, 160));
            assert_eq!((client.start_ns, client.end_ns), (100, 170));
            assert_eq!(server.name, "GET /orders/{id}");
            // 503: an error on both sides.
            assert!(matches!(server.status, Status::Error { .. }));
            assert_eq!(
                get(server, "url.query").map(|v| v.as_str().into_owned()),
                Some("mail=***".into())
            );
            assert_eq!(
                get(client, "url.full").map(|v| v.as_str().into_owned()),
                Some("http://api/orders/7?mail=***".into())
            );
            let text = format!("{:?}", got);
            assert!(!text.contains("Bearer") && !text.contains("jo@example"));
            assert_eq!(r.counts.linked, 1);
        }
    }

    /// A `traceparent` makes the server span the caller's child and the local root.
    #[test]
    fn incoming_traceparent_continues_the_trace() {
        let mut r = Tracker::new(L7Options::default());
        let req = b"GET /x HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        let mut out = io(&mut r, 2, tuple(B, A), 20, 21, false, 110, 120, req);
        assert!(matches!(out[0], Output::Begin(_)));
        out.extend(io(&mut r, 2, tuple(B, A), 20, 21, true, 150, 160, RESP));
        let s = &spans(out)[0];
        assert!(s.local_root && s.parent_remote);
        assert_eq!(
            s.ctx.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(r.counts.continued, 1);
    }

    /// Ignored ports are not followed; a reused socket address starts a new connection.
    #[test]
    fn ignored_ports_and_reused_sockets() {
        let mut r = Tracker::new(L7Options {
            ignore_ports: vec![80],
            ..Default::default()
        });
        assert!(io(&mut r, 2, tuple(B, A), 20, 21, false, 1, 2, REQ).is_empty());
        assert_eq!(r.counts.ignored, 1);
        let mut r = Tracker::new(L7Options::default());
        io(&mut r, 2, tuple(B, A), 20, 21, false, 1, 2, REQ);
        // Same socket address, other ends: the old request is given up, the new one served.
        let other = tuple(B, "127.0.0.1:6000");
        io(&mut r, 2, other, 20, 22, false, 3, 4, REQ);
        let out = io(&mut r, 2, other, 20, 22, true, 5, 6, RESP);
        let s = spans(out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].start_ns, 4);
        assert_eq!(r.protocol_counts().0[0].unanswered, 1);
        assert_eq!(r.parent_of_thread(21, 10), None);
    }
}
