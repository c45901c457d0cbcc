//! HTTP/1.x exchanges rebuilt from the syscalls that moved a connection's bytes (the first
//! stage of HTTP request spans; [`crate::l7::tracker`] makes the spans).
//!
//! The input is one [`Io`] per read or write on a socket: its direction, start and end times,
//! the bytes the kernel captured (a bounded prefix of what moved) and how many bytes moved.
//! The output is requests paired with their responses in order, keep-alive and pipelining
//! included, with the connection's role (server: it reads requests; client: it writes them).
//!
//! Bodies are skipped by length: `Content-Length` is followed through later reads and writes
//! by the byte counts alone, since their bytes are not captured. A chunked body ends at its
//! last chunk when that is seen, else at the next message start or at close. Headers split
//! over several reads are joined; headers cut off by the capture prefix keep what was parsed
//! (method, target, status) and the rest of that message is skipped. Data that is not HTTP
//! is counted and ignored. Parsing is `httparse`'s; nothing here panics on any input.
use std::collections::VecDeque;

use agent_common::l7::{HTTP1_METHODS, HTTP1_RESPONSE};

use crate::l7::{Dir, Io, ParseCounts as Counts, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// Minor version: 0 or 1 (HTTP/1.x).
    pub version: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// First byte of the request moved.
    pub start_ns: u64,
    /// Last byte of the request moved (headers and body).
    pub end_ns: u64,
    /// The request's number on its connection (0 for the first one parsed).
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version: u8,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub role: Role,
    pub request: Request,
    pub response: Response,
}

/// Most header bytes kept while a message's headers arrive over several transfers.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed per message.
const MAX_HEADERS: usize = 64;
/// Requests waiting for their responses (pipelining depth) before the oldest is given up.
const MAX_PENDING: usize = 64;

/// Whether bytes start like an HTTP/1.x request: a method and a space.
pub fn looks_like_request(data: &[u8]) -> bool {
    HTTP1_METHODS.iter().any(|m| data.starts_with(m))
}

/// Whether bytes start like an HTTP/1.x response.
pub fn looks_like_response(data: &[u8]) -> bool {
    data.starts_with(HTTP1_RESPONSE)
}

/// Where one direction of the connection is.
#[derive(Debug, Default)]
enum State {
    /// Between messages: the next transfer should start one.
    #[default]
    Idle,
    /// Headers so far (all bytes moved were captured), waiting for the rest.
    Head { buf: Vec<u8>, start_ns: u64 },
    /// This many body bytes still to move.
    Body { remaining: u64 },
    /// A chunked body, until its last chunk (or the next message start).
    Chunked,
    /// Lost track (truncated headers, no length): wait for a message start.
    Lost,
}

#[derive(Debug, Default)]
struct Side {
    state: State,
}

/// One connection's HTTP/1.x state.
#[derive(Debug, Default)]
pub struct HttpConn {
    role: Option<Role>,
    /// Requests waiting for their responses, oldest first.
    pending: VecDeque<Request>,
    /// The response being moved, paired once its body is done.
    response: Option<Response>,
    reads: Side,
    writes: Side,
    pub counts: Counts,
}

/// A message start's parsed head.
enum Head {
    Request(Request, usize),
    Response(Response, usize),
}

/// Body length after a head: `Some(n)`, chunked (`None` with `chunked`), or unknown.
struct BodyLen {
    length: Option<u64>,
    chunked: bool,
}

impl HttpConn {
    pub fn new() -> HttpConn {
        HttpConn::default()
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Requests waiting for their responses, oldest first.
    pub fn pending(&self) -> &VecDeque<Request> {
        &self.pending
    }

    /// Feeds one transfer; returns the exchanges it completed.
    pub fn on_io(&mut self, io: &Io<'_>) -> Vec<Exchange> {
        let mut done = Vec::new();
        let data = &io.data[..io.data.len().min(io.len as usize)];
        let fully_captured = data.len() as u64 == io.len;
        let state = std::mem::take(&mut self.side(io.dir).state);
        let next = match state {
            State::Body { remaining } if remaining > 0 => {
                self.extend(io);
                if io.len < remaining {
                    State::Body {
                        remaining: remaining - io.len,
                    }
                } else {
                    self.message_done(io.dir, io.end_ns, &mut done);
                    // The same transfer may carry the next message(s) after the body (a
                    // buffered reader gets a body's end and the next response at once).
                    let at = remaining as usize;
                    if io.len == remaining {
                        State::Idle
                    } else if at < data.len() {
                        let rest = data[at..].to_vec();
                        self.start_message(io, &rest, io.start_ns, fully_captured, &mut done)
                    } else {
                        // The next message started beyond the captured bytes.
                        self.counts.truncated += 1;
                        State::Lost
                    }
                }
            }
            State::Chunked if !self.starts_message(data) => {
                self.extend(io);
                if fully_captured && data.ends_with(b"0\r\n\r\n") {
                    self.message_done(io.dir, io.end_ns, &mut done);
                    State::Idle
                } else {
                    State::Chunked
                }
            }
            State::Head { mut buf, start_ns } => {
                if buf.len() + data.len() > MAX_HEAD {
                    self.counts.truncated += 1;
                    State::Lost
                } else {
                    buf.extend_from_slice(data);
                    self.start_message(io, &buf, start_ns, fully_captured, &mut done)
                }
            }
            State::Lost if !self.starts_message(data) => State::Lost,
            State::Chunked | State::Lost | State::Idle | State::Body { .. } => {
                if let State::Chunked = state {
                    // A new message ends the chunked one before it.
                    self.message_done(io.dir, io.start_ns, &mut done);
                }
                if data.is_empty() {
                    State::Idle
                } else {
                    let buf = data.to_vec();
                    self.start_message(io, &buf, io.start_ns, fully_captured, &mut done)
                }
            }
        };
        self.side(io.dir).state = next;
        done
    }

    /// The connection closed: a response without a length ends here; requests still
    /// waiting are counted as unanswered.
    pub fn on_close(&mut self, now_ns: u64) -> Vec<Exchange> {
        let mut done = Vec::new();
        if self.response.is_some() {
            let dir = match self.role {
                Some(Role::Client) => Dir::Read,
                _ => Dir::Write,
            };
            self.message_done(dir, now_ns, &mut done);
        }
        self.counts.unanswered += self.pending.len() as u64;
        self.pending.clear();
        done
    }

    fn side(&mut self, dir: Dir) -> &mut Side {
        match dir {
            Dir::Read => &mut self.reads,
            Dir::Write => &mut self.writes,
        }
    }

    fn starts_message(&self, data: &[u8]) -> bool {
        looks_like_request(data) || looks_like_response(data)
    }

    /// A transfer of body bytes: the message in progress in that direction ends later.
    fn extend(&mut self, io: &Io<'_>) {
        match (self.direction_of_requests(), io.dir) {
            (Some(d), dir) if d == dir => {
                if let Some(r) = self.pending.back_mut() {
                    r.end_ns = r.end_ns.max(io.end_ns);
                }
            }
            _ => {
                if let Some(r) = self.response.as_mut() {
                    r.end_ns = r.end_ns.max(io.end_ns);
                }
            }
        }
    }

    fn direction_of_requests(&self) -> Option<Dir> {
        self.role.map(Role::request_dir)
    }

    /// The message moving in `dir` is complete at `end_ns`.
    fn message_done(&mut self, dir: Dir, end_ns: u64, done: &mut Vec<Exchange>) {
        if Some(dir) == self.direction_of_requests() {
            return; // a request's end only moves its end time; it waits for its response
        }
        if let Some(mut resp) = self.response.take() {
            resp.end_ns = resp.end_ns.max(end_ns);
            match (self.pending.pop_front(), self.role) {
                (Some(request), Some(role)) => done.push(Exchange {
                    role,
                    request,
                    response: resp,
                }),
                _ => self.counts.unmatched += 1,
            }
        }
    }

    /// Parses message starts from `buf` (everything moved so far for the first one): more
    /// than one when requests are pipelined in one transfer.
    fn start_message(
        &mut self,
        io: &Io<'_>,
        buf: &[u8],
        start_ns: u64,
        fully_captured: bool,
        done: &mut Vec<Exchange>,
    ) -> State {
        // Bytes moved beyond the captured ones: they follow everything in `buf`.
        let uncaptured = io.len.saturating_sub(io.data.len() as u64);
        let mut offset = 0;
        let mut start_ns = start_ns;
        loop {
            let rest = &buf[offset..];
            match parse_head(rest, start_ns, io.end_ns) {
                Parsed::Complete(head, body) => {
                    let after_head = (rest.len() - head_len(&head)) as u64;
                    self.accept(io.dir, head, done);
                    if body.chunked {
                        if fully_captured && rest.ends_with(b"0\r\n\r\n") {
                            self.message_done(io.dir, io.end_ns, done);
                            return State::Idle;
                        }
                        return State::Chunked;
                    }
                    let Some(n) = body.length else {
                        // A response without a length (Connection: close) ends at close.
                        return State::Idle;
                    };
                    if n > after_head + uncaptured {
                        return State::Body {
                            remaining: n - after_head - uncaptured,
                        };
                    }
                    self.message_done(io.dir, io.end_ns, done);
                    // n <= after_head + uncaptured: the next message, if any, starts after it.
                    let next = offset as u64 + (rest.len() as u64 - after_head) + n;
                    if next >= buf.len() as u64 {
                        return State::Idle;
                    }
                    offset = next as usize;
                    start_ns = io.start_ns;
                }
                Parsed::Partial if fully_captured => {
                    return State::Head {
                        buf: rest.to_vec(),
                        start_ns,
                    }
                }
                Parsed::Partial | Parsed::Truncated(_) => {
                    // Cut off by the capture prefix: keep what the first line says; the
                    // message's length is unknown, so wait for the next message start.
                    if let Parsed::Truncated(Some(head)) =
                        parse_first_line(rest, start_ns, io.end_ns)
                    {
                        self.counts.truncated += 1;
                        self.accept(io.dir, head, done);
                    } else {
                        self.counts.not_parsed += 1;
                    }
                    return State::Lost;
                }
                Parsed::NotHttp => {
                    self.counts.not_parsed += 1;
                    return State::Lost;
                }
            }
        }
    }

    /// A parsed head moved in `dir`: a request joins the queue, a response starts.
    fn accept(&mut self, dir: Dir, head: Head, done: &mut Vec<Exchange>) {
        match head {
            Head::Request(mut r, _) => {
                r.seq = self.counts.requests;
                self.counts.requests += 1;
                self.role.get_or_insert(Role::of_request(dir));
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.counts.unanswered += 1;
                }
                self.pending.push_back(r);
            }
            Head::Response(r, _) => {
                self.counts.responses += 1;
                // A response without a length before this one ends here.
                self.message_done(dir, r.start_ns, done);
                self.role.get_or_insert(Role::of_response(dir));
                self.response = Some(r);
            }
        }
    }
}

fn head_len(h: &Head) -> usize {
    match h {
        Head::Request(_, n) | Head::Response(_, n) => *n,
    }
}

enum Parsed {
    Complete(Head, BodyLen),
    /// The headers continue beyond these bytes.
    Partial,
    /// The first line, as far as it could be read (for heads cut off by the capture).
    Truncated(Option<Head>),
    NotHttp,
}

/// The only headers kspan reads (the first of each name), found in one pass over the head.
#[derive(Default)]
struct Known<'a> {
    host: Option<&'a str>,
    user_agent: Option<&'a str>,
    content_type: Option<&'a str>,
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
    content_length: Option<&'a str>,
    transfer_encoding: Option<&'a str>,
}

impl<'a> Known<'a> {
    fn of(headers: &[httparse::Header<'a>]) -> Known<'a> {
        let mut k = Known::default();
        for h in headers {
            let slot = match h.name.len() {
                4 if h.name.eq_ignore_ascii_case("host") => &mut k.host,
                10 if h.name.eq_ignore_ascii_case("user-agent") => &mut k.user_agent,
                10 if h.name.eq_ignore_ascii_case("tracestate") => &mut k.tracestate,
                11 if h.name.eq_ignore_ascii_case("traceparent") => &mut k.traceparent,
                12 if h.name.eq_ignore_ascii_case("content-type") => &mut k.content_type,
                14 if h.name.eq_ignore_ascii_case("content-length") => &mut k.content_length,
                17 if h.name.eq_ignore_ascii_case("transfer-encoding") => &mut k.transfer_encoding,
                _ => continue,
            };
            if slot.is_none() {
                *slot = std::str::from_utf8(h.value).ok().map(str::trim);
            }
        }
        k
    }

    fn body_len(&self) -> BodyLen {
        let chunked = self.transfer_encoding.is_some_and(|v| {
            v.split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        BodyLen {
            length: self.content_length.and_then(|v| v.parse().ok()),
            chunked,
        }
    }
}

fn parse_head(buf: &[u8], start_ns: u64, end_ns: u64) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if looks_like_request(buf) {
        let mut req = httparse::Request::new(&mut headers);
        return match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let known = Known::of(req.headers);
                let body = known.body_len();
                let owned = |v: Option<&str>| v.map(str::to_string);
                let r = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    version: req.version.unwrap_or(1),
                    host: owned(known.host),
                    user_agent: owned(known.user_agent),
                    content_type: owned(known.content_type),
                    traceparent: owned(known.traceparent),
                    tracestate: owned(known.tracestate),
                    start_ns,
                    end_ns,
                    seq: 0,
                };
                // A request without Content-Length has no body.
                let body = BodyLen {
                    length: Some(body.length.unwrap_or(0)),
                    chunked: body.chunked,
                };
                Parsed::Complete(Head::Request(r, n), body)
            }
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(_) => Parsed::NotHttp,
        };
    }
    if looks_like_response(buf) {
        let mut resp = httparse::Response::new(&mut headers);
        return match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut body = Known::of(resp.headers).body_len();
                let status = resp.code.unwrap_or(0);
                // 1xx, 204 and 304 have no body.
                if status < 200 || status == 204 || status == 304 {
                    body = BodyLen {
                        length: Some(0),
                        chunked: false,
                    };
                }
                let r = Response {
                    status,
                    version: resp.version.unwrap_or(1),
                    start_ns,
                    end_ns,
                };
                Parsed::Complete(Head::Response(r, n), body)
            }
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(_) => Parsed::NotHttp,
        };
    }
    Parsed::NotHttp
}

/// The first line of a head the capture cut off: `GET /path HTTP/1.1` or `HTTP/1.1 200 OK`.
fn parse_first_line(buf: &[u8], start_ns: u64, end_ns: u64) -> Parsed {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.trim_end().split(' ');
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    if looks_like_request(buf) {
        let (Some(method), Some(target), Some(v)) = (a, b, c) else {
            return Parsed::Truncated(None);
        };
        let Some(version) = v.strip_prefix("HTTP/1.").and_then(|m| m.parse().ok()) else {
            return Parsed::Truncated(None);
        };
        return Parsed::Truncated(Some(Head::Request(
            Request {
                method: method.to_string(),
                target: target.to_string(),
                version,
                host: None,
                user_agent: None,
                content_type: None,
                traceparent: None,
                tracestate: None,
                start_ns,
                end_ns,
                seq: 0,
            },
            buf.len(),
        )));
    }
    let (Some(v), Some(code)) = (a, b) else {
        return Parsed::Truncated(None);
    };
    match (
        v.strip_prefix("HTTP/1.").and_then(|m| m.parse().ok()),
        code.parse(),
    ) {
        (Some(version), Ok(status)) => Parsed::Truncated(Some(Head::Response(
            Response {
                status,
                version,
                start_ns,
                end_ns,
            },
            buf.len(),
        ))),
        _ => Parsed::Truncated(None),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn io(dir: Dir, t: u64, data: &[u8]) -> Io<'_> {
        moved(dir, t, t + 5, data, data.len() as u64)
    }

    /// A transfer of `len` bytes of which `data` were captured, over [start, end].
    fn moved(dir: Dir, start_ns: u64, end_ns: u64, data: &[u8], len: u64) -> Io<'_> {
        Io {
            dir,
            start_ns,
            end_ns,
            data,
            len,
        }
    }

    #[test]
    fn a_server_exchange_with_a_body() {
        let mut c = HttpConn::new();
        let req = b"POST /orders/42?x=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\nUser-Agent: curl/8\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nab";
        assert!(c.on_io(&io(Dir::Read, 10, req)).is_empty());
        // The rest of the body in a second read.
        assert!(c.on_io(&io(Dir::Read, 20, b"cde")).is_empty());
        let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let done = c.on_io(&io(Dir::Write, 30, resp));
        assert_eq!(done.len(), 1);
        let e = &done[0];
        assert_eq!(e.role, Role::Server);
        assert_eq!(
            (e.request.method.as_str(), e.request.target.as_str()),
            ("POST", "/orders/42?x=1")
        );
        assert_eq!(e.request.host.as_deref(), Some("shop"));
        assert_eq!(e.request.user_agent.as_deref(), Some("curl/8"));
        assert!(e.request.traceparent.is_some());
        assert_eq!((e.request.start_ns, e.request.end_ns), (10, 25));
        assert_eq!((e.response.status, e.response.end_ns), (201, 35));
        assert_eq!(c.counts.requests, 1);
    }

    #[test]
    fn keep_alive_and_pipelining_pair_in_order() {
        let mut c = HttpConn::new();
        // Two requests in one read, then a third on its own.
        let two = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        c.on_io(&io(Dir::Read, 1, two));
        c.on_io(&io(Dir::Read, 2, b"GET /c HTTP/1.1\r\n\r\n"));
        assert_eq!(c.counts.requests, 3);
        let d1 = c.on_io(&io(
            Dir::Write,
            3,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        let d2 = c.on_io(&io(
            Dir::Write,
            4,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(d1[0].request.target, "/a");
        assert_eq!(d1[0].response.status, 200);
        assert_eq!(d2[0].request.target, "/b");
        assert_eq!(d2[0].response.status, 404);
        // Two responses in one write.
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n";
        c.on_io(&io(Dir::Read, 5, b"GET /d HTTP/1.1\r\n\r\n"));
        let d = c.on_io(&io(Dir::Write, 6, both));
        assert_eq!(
            d.iter()
                .map(|e| (e.request.target.as_str(), e.response.status))
                .collect::<Vec<_>>(),
            vec![("/c", 200), ("/d", 204)]
        );
    }

    #[test]
    fn headers_split_over_reads_are_joined() {
        let mut c = HttpConn::new();
        c.on_io(&io(Dir::Write, 1, b"GET /x HTTP/1.1\r\nHo"));
        c.on_io(&io(Dir::Write, 2, b"st: h\r\n\r\n"));
        let d = c.on_io(&io(
            Dir::Read,
            3,
            b"HTTP/1.0 500 Oops\r\nContent-Length: 1\r\n\r\n!",
        ));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].role, Role::Client);
        assert_eq!(d[0].request.host.as_deref(), Some("h"));
        assert_eq!(d[0].response.status, 500);
    }

    /// A buffered client reads a response's head, then its body's end and the next
    /// (pipelined) response in one read: both are paired.
    #[test]
    fn a_body_and_the_next_message_in_one_transfer() {
        let mut c = HttpConn::new();
        c.on_io(&io(
            Dir::Write,
            1,
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ));
        let d = c.on_io(&io(
            Dir::Read,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
        ));
        assert!(d.is_empty());
        let d = c.on_io(&io(
            Dir::Read,
            3,
            b"ok \nHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nno \n",
        ));
        assert_eq!(
            d.iter()
                .map(|e| (e.request.target.as_str(), e.response.status))
                .collect::<Vec<_>>(),
            vec![("/a", 200), ("/b", 404)]
        );
        assert_eq!(c.counts.unanswered, 0);
    }

    #[test]
    fn a_chunked_response_ends_at_its_last_chunk() {
        let mut c = HttpConn::new();
        c.on_io(&io(Dir::Read, 1, b"GET / HTTP/1.1\r\n\r\n"));
        let d = c.on_io(&io(
            Dir::Write,
            2,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ));
        assert!(d.is_empty());
        let d = c.on_io(&io(Dir::Write, 9, b"0\r\n\r\n"));
        assert_eq!(d[0].response.end_ns, 14);
    }

    #[test]
    fn known_headers_in_any_case_first_one_wins() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"POST / HTTP/1.1\r\nHOST:  a \r\nhost: b\r\nuser-AGENT: ua\r\nTraceParent: tp\r\nTRACESTATE: ts\r\nContent-type: text/plain\r\nX-Other: 1\r\ncontent-length: 12\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")
            .unwrap();
        let k = Known::of(req.headers);
        assert_eq!(
            (
                k.host,
                k.user_agent,
                k.traceparent,
                k.tracestate,
                k.content_type
            ),
            (
                Some("a"),
                Some("ua"),
                Some("tp"),
                Some("ts"),
                Some("text/plain")
            )
        );
        let body = k.body_len();
        assert_eq!((body.length, body.chunked), (Some(12), true));
        // "chunked" only as a coding of its own.
        let k = Known {
            transfer_encoding: Some("x-notchunked"),
            ..Known::default()
        };
        assert!(!k.body_len().chunked);
    }

    #[test]
    fn a_body_longer_than_the_capture_is_skipped_by_length() {
        let mut c = HttpConn::new();
        c.on_io(&io(Dir::Read, 1, b"GET / HTTP/1.1\r\n\r\n"));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        // 64 KiB moved, the first bytes captured.
        let w = moved(Dir::Write, 2, 3, head, 65_536);
        assert!(c.on_io(&w).is_empty());
        let rest = moved(
            Dir::Write,
            4,
            5,
            b"xxxx",
            100_000 - (65_536 - head.len() as u64),
        );
        let d = c.on_io(&rest);
        assert_eq!(d[0].response.end_ns, 5);
    }

    #[test]
    fn a_head_cut_off_by_the_capture_keeps_its_first_line() {
        let mut c = HttpConn::new();
        let long = b"GET /very/long HTTP/1.1\r\nCookie: aaaaaaaa";
        let r = moved(Dir::Read, 1, 2, long, 4000);
        c.on_io(&r);
        assert_eq!(c.counts.truncated, 1);
        let d = c.on_io(&io(
            Dir::Write,
            3,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(d[0].request.target, "/very/long");
    }

    #[test]
    fn a_response_without_length_ends_at_close() {
        let mut c = HttpConn::new();
        c.on_io(&io(Dir::Read, 1, b"GET / HTTP/1.0\r\n\r\n"));
        assert!(c
            .on_io(&io(Dir::Write, 2, b"HTTP/1.0 200 OK\r\n\r\nbody"))
            .is_empty());
        let d = c.on_close(50);
        assert_eq!(d[0].response.end_ns, 50);
    }

    #[test]
    fn non_http_is_counted_and_ignored() {
        let mut c = HttpConn::new();
        assert!(c
            .on_io(&io(Dir::Read, 1, b"\x16\x03\x01 tls hello"))
            .is_empty());
        // Looks like a request, is not one.
        assert!(c
            .on_io(&io(Dir::Read, 2, b"GET / HTTP/9.9\r\n\r\n"))
            .is_empty());
        // Not a message start while lost: skipped, not counted again.
        assert!(c.on_io(&io(Dir::Read, 3, b"more bytes")).is_empty());
        assert_eq!(c.counts.not_parsed, 2);
        assert_eq!(c.counts.requests, 0);
        let d = c.on_io(&io(
            Dir::Write,
            4,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        assert!(d.is_empty());
        assert_eq!(c.counts.unmatched, 1);
    }

    proptest! {
        /// Any bytes, cut anywhere, in any direction, never panic, and every exchange has a
        /// request and a response in time order.
        #[test]
        fn arbitrary_transfers_never_panic(
            ios in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200), 0u64..5000),
                0..40,
            ),
            prefix in proptest::sample::select(vec![
                b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                b"POST /x HTTP/1.1\r\nContent-Length: 999999999999999999999\r\n".to_vec(),
                Vec::new(),
            ]),
        ) {
            let mut c = HttpConn::new();
            let mut t = 0;
            for (i, (read, bytes, extra)) in ios.iter().enumerate() {
                let data: Vec<u8> = if i % 3 == 0 {
                    prefix.iter().chain(bytes.iter()).copied().collect()
                } else {
                    bytes.clone()
                };
                t += 10;
                let io = Io {
                    dir: if *read { Dir::Read } else { Dir::Write },
                    start_ns: t,
                    end_ns: t + 1,
                    data: &data,
                    len: data.len() as u64 + extra,
                };
                for e in c.on_io(&io) {
                    prop_assert!(e.request.start_ns <= e.response.end_ns);
                }
            }
            c.on_close(t + 100);
        }
    }
}
