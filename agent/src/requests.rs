//! Request spans: HTTP/1.x exchanges seen on TCP sockets become SERVER and CLIENT spans, and
//! requests that cross processes on this host join one trace.
//!
//! Input: the kernel's HTTP transfer records (one per read or write on a socket that carries
//! HTTP, see `agent_common::HttpData`), per socket. [`crate::http::HttpConn`] pairs requests
//! with responses; this module gives each request its span and its place in a trace:
//!
//! - **Server span**: from the end of the read that brought the request's first bytes to the
//!   end of the write that sent the response's last ones. Its parent, in order: the caller's
//!   span named by an incoming `traceparent` (`tracestate` is kept); else the CLIENT span of
//!   the process on the other end of the same connection on this host (kspan sees both ends:
//!   the client's connection is the server's with local and remote swapped, and requests
//!   match in order and by method and target); else none (a new trace).
//! - **Client span**: from the start of the write that sent the request to the end of the
//!   read that brought the response's last bytes. Its parent is the server span its thread
//!   is serving, if the thread serves exactly one request (thread-per-request servers).
//! - **Children**: syscall and TCP spans a thread makes while it serves exactly one request
//!   become that request's children ([`Requests::parent_of_thread`]).
//!
//! Not followed: requests handed from one thread to another, and event loops that serve many
//! requests on one thread (their spans are still made, without children or outgoing links).
//!
//! The caller's trace id is not always known when a server request starts (the client's
//! record may come later); such a request gets a provisional trace id, and when the link is
//! found at its end, [`Output::Merge`] moves everything in the provisional trace to the real
//! one. Spans are held per trace until the local root ends (`crate::traces`).
//!
//! Only a short allow-list of headers is ever read (Host, User-Agent, Content-Type,
//! traceparent, tracestate); paths and queries pass through [`crate::redact`].
use std::{borrow::Cow, collections::VecDeque, hash::BuildHasher, sync::Arc};

// Seeded per map (foldhash): fast, and not predictable by a peer choosing trace ids or ports.
use foldhash::{HashMap, HashMapExt};

use agent_common::{EventHeader, HttpData, HTTP_FLAG_CLOSE, HTTP_FLAG_WRITE};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::{
    conns::Tuple,
    http::{Dir, Exchange, HttpConn, Io, Role},
    redact::Redactor,
};

/// Connections followed at once; beyond it the least recently used is forgotten.
pub const MAX_CONNS: usize = 65_536;
/// Client requests remembered per connection for linking with the server end.
const MAX_SENT: usize = 64;

/// HTTP settings in force.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Connections with this local or remote port are not followed.
    pub ignore_ports: Vec<u16>,
    pub redactor: Redactor,
}

/// What the request tracker counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// HTTP transfer records received.
    pub transfers: u64,
    pub server_spans: u64,
    pub client_spans: u64,
    /// Server spans whose parent is a client span of another process on this host.
    pub linked: u64,
    /// Server spans that continue an incoming `traceparent`.
    pub continued: u64,
    /// Message starts that were not HTTP/1.x.
    pub not_http: u64,
    /// Messages whose headers did not fit the capture prefix (method, target and status kept).
    pub truncated: u64,
    /// Responses without a request, and requests never answered.
    pub unmatched: u64,
    pub unanswered: u64,
    /// Transfers on connections not followed (`http.ignore_ports`). (The kernel leaves out
    /// servers reading kspan's own exports.)
    pub ignored: u64,
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

/// What a request's start needs of it (not its other headers).
struct Started {
    seq: u64,
    /// Hash of its method and target (`Requests::keys`).
    key: u64,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// A request started and not yet answered. A server request without a parent has a
/// provisional trace id until its end (its caller's record may come later).
#[derive(Debug, Clone)]
struct Open {
    seq: u64,
    /// Hash of its method and target (`Requests::keys`), for linking it to its caller.
    key: u64,
    ctx: SpanContext,
    parent: Option<SpanContext>,
    /// The parent is another process's span (traceparent).
    parent_remote: bool,
    start_ns: u64,
    tid: u32,
}

/// A connection's two ends as its spans show them: made once per connection and shared by
/// the spans of all its requests.
#[derive(Debug, Clone)]
struct Ends {
    tuple: Tuple,
    local_ip: Arc<str>,
    remote_ip: Arc<str>,
}

impl Ends {
    fn of(tuple: Tuple) -> Ends {
        Ends {
            tuple,
            local_ip: tuple.local.ip().to_string().into(),
            remote_ip: tuple.remote.ip().to_string().into(),
        }
    }
}

impl Conn {
    fn tuple(&self) -> Option<Tuple> {
        self.ends.as_ref().map(|e| e.tuple)
    }
}

#[derive(Debug)]
struct Conn {
    http: HttpConn,
    pid: u32,
    comm: [u8; agent_common::COMM_LEN],
    /// Its 4-tuple, when known, with the address strings its spans carry.
    ends: Option<Ends>,
    ignored: bool,
    open: VecDeque<Open>,
    last_used: u64,
    reported: crate::http::Counts,
}

/// A client request, for the server end of the connection to find.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    /// Hash of its method and target (`Requests::keys`): the server end matches on it
    /// without a copy of either string per request.
    key: u64,
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

pub struct Requests {
    opts: HttpOptions,
    ids: RandomIdGenerator,
    conns: HashMap<u64, Conn>,
    use_clock: u64,
    serving: HashMap<u32, Vec<Serving>>,
    sent: HashMap<Tuple, VecDeque<Sent>>,
    /// Seeded per instance: a peer cannot choose two requests with the same key.
    keys: foldhash::fast::RandomState,
    pub counts: RequestCounts,
}

fn flip(t: &Tuple) -> Tuple {
    Tuple {
        local: t.remote,
        remote: t.local,
    }
}

impl Requests {
    pub fn new(opts: HttpOptions) -> Requests {
        Requests {
            opts,
            ids: RandomIdGenerator::default(),
            conns: HashMap::new(),
            use_clock: 0,
            serving: HashMap::new(),
            sent: HashMap::new(),
            keys: Default::default(),
            counts: RequestCounts::default(),
        }
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
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

    /// Feeds one HTTP record. `known` names the connection's ends when the record or a TCP
    /// event did; else `resolve` (/proc, costly) is asked once per connection.
    pub fn on_record(
        &mut self,
        h: &EventHeader,
        d: &HttpData,
        bytes: &[u8],
        known: Option<Tuple>,
        resolve: impl FnOnce() -> Option<Tuple>,
        out: &mut Vec<Output>,
    ) {
        self.counts.transfers += 1;
        if h.flags & HTTP_FLAG_CLOSE != 0 {
            self.close(d.sk, h.start_ns, out);
            return;
        }
        self.use_clock += 1;
        let tuple = known;
        // A socket address reused by a new connection whose predecessor's close was missed.
        if let (Some(c), Some(t)) = (self.conns.get(&d.sk), tuple) {
            if c.tuple().is_some_and(|old| old != t) {
                self.close(d.sk, h.start_ns, out);
            }
        }
        if !self.conns.contains_key(&d.sk) {
            let tuple = tuple.or_else(resolve);
            self.new_conn(h, d.sk, tuple);
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
            dir: if h.flags & HTTP_FLAG_WRITE != 0 {
                Dir::Write
            } else {
                Dir::Read
            },
            start_ns: h.start_ns,
            end_ns: h.start_ns + h.duration_ns,
            data: bytes,
            len: d.len,
        };
        let before = conn.http.counts.requests;
        let done = conn.http.on_io(&io);
        let keys = &self.keys;
        let started: Vec<Started> = conn
            .http
            .pending()
            .iter()
            .filter(|r| r.seq >= before)
            .map(|r| Started {
                seq: r.seq,
                key: keys.hash_one((&r.method, &r.target)),
                traceparent: r.traceparent.clone(),
                tracestate: r.tracestate.clone(),
            })
            .collect();
        let role = conn.http.role();
        for r in started {
            match role {
                Some(Role::Server) => self.server_started(d.sk, h.tid, &io, r, out),
                Some(Role::Client) => self.client_started(d.sk, h.tid, &io, r, out),
                None => {}
            }
        }
        for ex in done {
            self.finished(d.sk, ex, out);
        }
        self.sync_counts(d.sk);
    }

    fn new_conn(&mut self, h: &EventHeader, sk: u64, tuple: Option<Tuple>) {
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
                http: HttpConn::new(),
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

    fn server_started(
        &mut self,
        sk: u64,
        tid: u32,
        io: &Io<'_>,
        r: Started,
        out: &mut Vec<Output>,
    ) {
        let seq = r.seq;
        let remote = r
            .traceparent
            .as_deref()
            .and_then(|tp| parse_traceparent(tp, r.tracestate.as_deref()));
        let (parent, parent_remote) = match remote {
            Some(p) => (Some(p), true),
            None => (self.claim_caller(sk, r.key), false),
        };
        let ctx = match &parent {
            Some(p) => self.context(p.trace_id(), p.trace_state().clone()),
            None => self.context(self.ids.new_trace_id(), TraceState::default()),
        };
        if parent.is_none() || parent_remote {
            out.push(Output::Begin(ctx.trace_id()));
        }
        // The request began when its first bytes were read: the end of that read (a
        // blocking read may have waited long before they came).
        let start_ns = io.end_ns;
        self.serving.entry(tid).or_default().push(Serving {
            sk,
            seq,
            ctx: ctx.clone(),
            start_ns,
        });
        if let Some(c) = self.conns.get_mut(&sk) {
            c.open.push_back(Open {
                seq,
                key: r.key,
                ctx,
                parent,
                parent_remote,
                start_ns,
                tid,
            });
        }
    }

    fn client_started(
        &mut self,
        sk: u64,
        tid: u32,
        io: &Io<'_>,
        r: Started,
        out: &mut Vec<Output>,
    ) {
        let Started { seq, key, .. } = r;
        let parent = self.parent_of_thread(tid, io.start_ns);
        let ctx = match &parent {
            Some(p) => self.context(p.trace_id(), p.trace_state().clone()),
            None => {
                let c = self.context(self.ids.new_trace_id(), TraceState::default());
                out.push(Output::Begin(c.trace_id()));
                c
            }
        };
        let Some(conn) = self.conns.get_mut(&sk) else {
            return;
        };
        if let Some(t) = conn.tuple() {
            let q = self.sent.entry(t).or_default();
            if q.len() >= MAX_SENT {
                q.pop_front();
            }
            q.push_back(Sent {
                seq,
                key,
                ctx: ctx.clone(),
                claimed: false,
            });
        }
        conn.open.push_back(Open {
            seq,
            key,
            ctx,
            parent,
            parent_remote: false,
            start_ns: io.start_ns,
            tid,
        });
    }

    /// The client span, on this host, that sent the request server connection `sk` read.
    fn claim_caller(&mut self, sk: u64, key: u64) -> Option<SpanContext> {
        let t = self.conns.get(&sk)?.tuple()?;
        let q = self.sent.get_mut(&flip(&t))?;
        let s = q.iter_mut().find(|s| !s.claimed && s.key == key)?;
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
            if o.seq == ex.request.seq {
                open = Some(o);
                break;
            }
            if o.seq > ex.request.seq {
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
                    if let Some(c) = self.claim_caller(sk, open.key) {
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
        let (start_ns, end_ns) = (open.start_ns, ex.response.end_ns);
        let (name, attributes, status) =
            describe(&ex, ends.as_ref(), open.tid, &self.opts.redactor);
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
            name,
            start_ns,
            end_ns: end_ns.max(start_ns),
            attributes,
            status,
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
        let done = match self.conns.get_mut(&sk) {
            Some(c) => c.http.on_close(now_ns),
            None => return,
        };
        for ex in done {
            self.finished(sk, ex, out);
        }
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
        let now = c.http.counts;
        let was = std::mem::replace(&mut c.reported, now);
        self.counts.not_http += now.not_http - was.not_http;
        self.counts.truncated += now.truncated - was.truncated;
        self.counts.unmatched += now.unmatched - was.unmatched;
        self.counts.unanswered += now.unanswered - was.unanswered;
    }
}

/// Parses a W3C `traceparent` (version 00 layout; later versions are read the same way, as
/// the spec asks) into the caller's span context.
pub fn parse_traceparent(tp: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if ![version, trace, span, flags].iter().all(|s| lower_hex(s)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// A path with its variable segments (numbers, UUIDs, long hex or mixed tokens) replaced by
/// `{id}`: a low-cardinality route such as `/orders/{id}/items`.
pub fn infer_route(path: &str) -> String {
    if path.is_empty() || !path.starts_with('/') {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID: 8-4-4-4-12 hex digits.
    if b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
    {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    // Hex ids (object ids, hashes) of 16 or more digits with at least one number.
    if b.len() >= 16 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Long tokens mixing letters and digits, and masked values.
    (b.len() >= 20
        && digits > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'))
        || seg == crate::redact::MASK
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = target.split('#').next().unwrap_or_default();
    // An absolute-form target (proxies): keep its path.
    let path_query = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    }
}

/// The host part of a Host header (`name`, `name:port`, `[v6]:port`).
fn host_of(h: &str) -> &str {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

/// Span name, attributes (HTTP semantic conventions) and status of a finished exchange.
/// Per request it allocates only what differs between requests (name, path, query, route);
/// the method is a static string and the addresses are the connection's.
fn describe(
    ex: &Exchange,
    ends: Option<&Ends>,
    tid: u32,
    redactor: &Redactor,
) -> (String, Vec<KeyValue>, Status) {
    let r = &ex.request;
    let (path, query) = split_target(&r.target);
    let path = redactor.redact(path);
    let route = infer_route(&path);
    let method = known_method(&r.method);
    let name = format!("{method} {route}");
    let status_code = ex.response.status;
    let mut a = Vec::with_capacity(18);
    a.push(KeyValue::new("http.request.method", method));
    if method != r.method.as_str() {
        a.push(KeyValue::new(
            "http.request.method_original",
            r.method.clone(),
        ));
    }
    a.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status_code),
    ));
    a.push(KeyValue::new("network.protocol.name", "http"));
    a.push(KeyValue::new(
        "network.protocol.version",
        if r.version == 0 { "1.0" } else { "1.1" },
    ));
    a.push(KeyValue::new("thread.id", i64::from(tid)));
    if let Some(ua) = &r.user_agent {
        a.push(KeyValue::new("user_agent.original", ua.clone()));
    }
    let error = match ex.role {
        Role::Server => status_code >= 500,
        Role::Client => status_code >= 400,
    };
    let host_header = r.host.as_deref().map(host_of).filter(|h| !h.is_empty());
    match ex.role {
        Role::Server => {
            a.push(KeyValue::new("url.path", path.into_owned()));
            if let Some(q) = query {
                a.push(KeyValue::new("url.query", redactor.redact(q).into_owned()));
            }
            a.push(KeyValue::new("url.scheme", "http"));
            a.push(KeyValue::new("http.route", route));
            if let Some(e) = ends {
                a.push(match host_header {
                    Some(h) => KeyValue::new("server.address", h.to_string()),
                    None => KeyValue::new("server.address", e.local_ip.clone()),
                });
                a.push(KeyValue::new(
                    "server.port",
                    i64::from(e.tuple.local.port()),
                ));
                a.push(KeyValue::new("client.address", e.remote_ip.clone()));
                a.push(KeyValue::new(
                    "client.port",
                    i64::from(e.tuple.remote.port()),
                ));
                peer_attributes(&mut a, e);
            } else if let Some(h) = host_header {
                a.push(KeyValue::new("server.address", h.to_string()));
            }
        }
        Role::Client => {
            let port = ends.map(|e| e.tuple.remote.port());
            let host = match (host_header, ends) {
                (Some(h), _) => h,
                (None, Some(e)) => &*e.remote_ip,
                (None, None) => "",
            };
            let mut full = match port {
                Some(p) if p != 80 && host.contains(':') => format!("http://[{host}]:{p}{path}"),
                Some(p) if p != 80 => format!("http://{host}:{p}{path}"),
                _ => format!("http://{host}{path}"),
            };
            if let Some(q) = query {
                full.push('?');
                full.push_str(&redactor.redact(q));
            }
            a.push(KeyValue::new("url.full", full));
            a.push(match (host_header, ends) {
                // The connection's shared string rather than a copy of it.
                (None, Some(e)) => KeyValue::new("server.address", e.remote_ip.clone()),
                _ => KeyValue::new("server.address", host.to_string()),
            });
            if let Some(e) = ends {
                a.push(KeyValue::new(
                    "server.port",
                    i64::from(e.tuple.remote.port()),
                ));
                peer_attributes(&mut a, e);
            }
        }
    }
    let status = if error {
        a.push(KeyValue::new("error.type", status_code.to_string()));
        // Semantic conventions: no description; the status code says it.
        Status::Error {
            description: Cow::Borrowed(""),
        }
    } else {
        Status::Unset
    };
    (name, a, status)
}

fn peer_attributes(a: &mut Vec<KeyValue>, e: &Ends) {
    a.push(KeyValue::new("network.peer.address", e.remote_ip.clone()));
    a.push(KeyValue::new(
        "network.peer.port",
        i64::from(e.tuple.remote.port()),
    ));
}

/// The method as the semantic conventions name it: one of the known methods, else `_OTHER`.
fn known_method(m: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::HTTP_FLAG_START;

    #[test]
    fn routes_replace_variable_segments() {
        for (path, route) in [
            ("/orders/42", "/orders/{id}"),
            ("/orders/42/items/7", "/orders/{id}/items/{id}"),
            ("/u/123e4567-e89b-12d3-a456-426614174000", "/u/{id}"),
            ("/obj/5f9b2c3a1d4e6f7a8b9c0d1e", "/obj/{id}"),
            ("/t/abcdefghij0123456789xyz", "/t/{id}"),
            ("/static/app.css", "/static/app.css"),
            ("/v1/traces", "/v1/traces"),
            ("/", "/"),
            ("", "/"),
            ("/mail/***", "/mail/{id}"),
        ] {
            assert_eq!(infer_route(path), route, "{path}");
        }
    }

    #[test]
    fn traceparent_parsing() {
        let c = parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=abc,ot=th:8"),
        )
        .unwrap();
        assert_eq!(
            c.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(c.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(c.is_remote() && c.is_sampled());
        assert_eq!(c.trace_state().get("vendor"), Some("abc"));
        // A later version may append fields; version 00 may not.
        assert!(parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
            None
        )
        .is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
    }

    const A: &str = "127.0.0.1:5000";
    const B: &str = "127.0.0.1:80";

    fn tuple(local: &str, remote: &str) -> Option<Tuple> {
        Some(Tuple::new(local.parse().unwrap(), remote.parse().unwrap()))
    }

    /// Feeds one transfer of `bytes` on socket `sk` by (pid, tid) over [start, end].
    #[allow(clippy::too_many_arguments)]
    fn io(
        r: &mut Requests,
        sk: u64,
        t: Option<Tuple>,
        pid: u32,
        tid: u32,
        write: bool,
        start: u64,
        end: u64,
        bytes: &[u8],
    ) -> Vec<Output> {
        let mut flags = if write { HTTP_FLAG_WRITE } else { 0 };
        if bytes.starts_with(b"GET") || bytes.starts_with(b"HTTP") {
            flags |= HTTP_FLAG_START;
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
        let d = HttpData {
            sk,
            len: bytes.len() as u64,
            captured: bytes.len() as u32,
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
            let mut r = Requests::new(HttpOptions::default());
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
        let mut r = Requests::new(HttpOptions::default());
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
        let mut r = Requests::new(HttpOptions {
            ignore_ports: vec![80],
            ..Default::default()
        });
        assert!(io(&mut r, 2, tuple(B, A), 20, 21, false, 1, 2, REQ).is_empty());
        assert_eq!(r.counts.ignored, 1);
        let mut r = Requests::new(HttpOptions::default());
        io(&mut r, 2, tuple(B, A), 20, 21, false, 1, 2, REQ);
        // Same socket address, other ends: the old request is given up, the new one served.
        let other = tuple(B, "127.0.0.1:6000");
        io(&mut r, 2, other, 20, 22, false, 3, 4, REQ);
        let out = io(&mut r, 2, other, 20, 22, true, 5, 6, RESP);
        let s = spans(out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].start_ns, 4);
        assert_eq!(r.counts.unanswered, 1);
        assert_eq!(r.parent_of_thread(21, 10), None);
    }
}
