//! The parts of HTTP/1.x heads kspan reads: the request line, the status line, and an
//! allow-list of headers (Host, User-Agent, Content-Type, traceparent, tracestate). Nothing
//! here allocates or panics on any input.

/// Headers parsed per message.
const MAX_HEADERS: usize = 64;

/// A request's head, as far as the kept bytes hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    /// Minor version: 0 or 1.
    pub version: u8,
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// Where the head ends (after its blank line), if it ends within the bytes (else only
    /// the request line was read).
    pub head_len: Option<usize>,
}

/// The end of a head.
fn blank_line() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(b"\r\n\r\n"))
}

/// Where the head that starts `b` ends, after its blank line; searched from `from` (a point
/// inside the head's first line).
fn head_end(b: &[u8], from: usize) -> Option<usize> {
    let from = from.min(b.len());
    blank_line().find(&b[from..]).map(|i| from + i + 4)
}

impl<'a> Request<'a> {
    /// The request line alone: method, target, version (the samplers' view), and where the
    /// head ends.
    pub fn line(b: &'a [u8]) -> Option<Request<'a>> {
        let end = memchr::memchr(b'\n', b)?;
        let line = b[..end].strip_suffix(b"\r").unwrap_or(&b[..end]);
        let m = memchr::memchr(b' ', line)?;
        let (method, rest) = (&line[..m], &line[m + 1..]);
        let t = memchr::memchr(b' ', rest)?;
        let (target, version) = (&rest[..t], &rest[t + 1..]);
        if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        let version = match version {
            b"HTTP/1.0" => 0,
            b"HTTP/1.1" => 1,
            _ => return None,
        };
        Some(Request {
            // ASCII upper-case letters: valid UTF-8.
            method: std::str::from_utf8(method).ok()?,
            target: std::str::from_utf8(target).ok()?,
            version,
            // The blank line cannot start before the request line's end.
            head_len: head_end(b, end.saturating_sub(1)),
            ..Request::default()
        })
    }

    /// Where the request that starts `b` ends (its head and a `Content-Length` body), if `b`
    /// holds all of its head.
    pub fn end(b: &[u8]) -> Option<usize> {
        // Most heads end where their bytes end (no body, nothing pipelined): no parse needed.
        if head_end(b, 0)? == b.len() {
            return Some(b.len());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(b) else {
            return None;
        };
        let body = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        n.checked_add(body)
    }

    /// The request line and the headers kspan reads.
    pub fn parse(b: &'a [u8]) -> Option<Request<'a>> {
        let mut r = Request::line(b)?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(b) {
            Ok(httparse::Status::Complete(_)) => {}
            // Cut off by the bytes kept: the request line is what there is.
            Ok(httparse::Status::Partial) | Err(_) => return Some(r),
        }
        for h in req.headers.iter() {
            let slot = match h.name.len() {
                4 if h.name.eq_ignore_ascii_case("host") => &mut r.host,
                10 if h.name.eq_ignore_ascii_case("user-agent") => &mut r.user_agent,
                10 if h.name.eq_ignore_ascii_case("tracestate") => &mut r.tracestate,
                11 if h.name.eq_ignore_ascii_case("traceparent") => &mut r.traceparent,
                12 if h.name.eq_ignore_ascii_case("content-type") => &mut r.content_type,
                _ => continue,
            };
            if slot.is_none() {
                *slot = std::str::from_utf8(h.value).ok().map(str::trim);
            }
        }
        Some(r)
    }
}

/// A response's status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Minor version: 0 or 1.
    pub version: u8,
}

impl Response {
    /// `HTTP/1.x NNN ...`.
    pub fn parse(b: &[u8]) -> Option<Response> {
        let rest = b.strip_prefix(b"HTTP/1.")?;
        let version = match rest.first()? {
            b'0' => 0,
            b'1' => 1,
            _ => return None,
        };
        let code = rest.get(2..5)?;
        if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = code.iter().fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
        Some(Response { status, version })
    }

    /// The status code, if the bytes start a status line.
    pub fn status_of(b: &[u8]) -> Option<u16> {
        Response::parse(b).map(|r| r.status)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_headers_in_any_case_first_one_wins() {
        let head: &[u8] = b"POST /x?a=1 HTTP/1.0\r\nHOST:  a \r\nhost: b\r\nuser-AGENT: ua\r\nTraceParent: tp\r\nTRACESTATE: ts\r\nContent-type: text/plain\r\nCookie: secret\r\n\r\n";
        let r = Request::parse(head).unwrap();
        assert_eq!((r.method, r.target, r.version), ("POST", "/x?a=1", 0));
        assert_eq!(
            (
                r.host,
                r.user_agent,
                r.traceparent,
                r.tracestate,
                r.content_type
            ),
            (
                Some("a"),
                Some("ua"),
                Some("tp"),
                Some("ts"),
                Some("text/plain")
            )
        );
        assert_eq!(r.head_len, Some(head.len()));
        // Cut off: the request line is kept.
        let r = Request::parse(b"GET /very/long HTTP/1.1\r\nCookie: aaaa").unwrap();
        assert_eq!((r.target, r.host, r.head_len), ("/very/long", None, None));
        for bad in [
            &b"GET / HTTP/9.9\r\n\r\n"[..],
            b"get / HTTP/1.1\r\n\r\n",
            b"GET /\r\n",
            b"\x16\x03\x01",
            b"",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            Response::parse(b"HTTP/1.1 404 Not Found\r\n"),
            Some(Response {
                status: 404,
                version: 1
            })
        );
        for bad in [&b"HTTP/1.1 2x0 OK"[..], b"HTTP/2 200", b"HTTP/1.1", b"OK"] {
            assert_eq!(Response::parse(bad), None);
        }
        // Pipelined requests: where the first ends.
        let two = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        let end = Request::end(two).unwrap();
        assert_eq!(&two[end..end + 6], b"GET /b");
        assert_eq!(Request::end(b"GET /a HTTP/1.1\r\nHost"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_heads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::parse(&b);
            let _ = Response::parse(&b);
            let mut with_start = b"GET / HTTP/1.1\r\n".to_vec();
            with_start.extend_from_slice(&b);
            prop_assert!(Request::parse(&with_start).is_some());
        }
    }
}
