//! HTTP/1.0 and HTTP/1.1: the first L7 protocol module.
//!
//! The kernel pairs requests with responses and sends each exchange with the first bytes of
//! both (`detect.rs` tells it where a response ends: `Content-Length`, chunked, or no body).
//! Here: [`head`] reads the request line, the status line and the few headers kspan reads
//! (Host, User-Agent, Content-Type, traceparent, tracestate) with httparse; [`route`] makes
//! low-cardinality routes of paths; this module names the span and describes it per the HTTP
//! semantic conventions. Paths and queries pass through the redactor; no other header ever
//! reaches a span.
pub mod head;
pub mod route;

use std::borrow::Cow;

use agent_common::l7::{HTTP1_METHODS, PROTOCOL_HTTP1};
use opentelemetry::{trace::Status, KeyValue};

use self::{
    head::{Request, Response},
    route::{infer_route, push_route},
};
use super::{redact::Redactor, DescribeContext, Description, Exchange, Protocol, Role, Summary};

/// `http:` in the agent's config: HTTP/1.x request spans.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// SERVER and CLIENT spans for HTTP/1.x requests seen on TCP sockets.
    pub enabled: bool,
    /// Bytes of each request's start the kernel keeps (`l7::REQUEST_BYTES_RANGE`): headers
    /// beyond them are not read (method and target still are). `prefix_bytes`, its old name,
    /// still works.
    #[serde(alias = "prefix_bytes")]
    pub request_bytes: u32,
    /// Bytes of each response's start the kernel keeps (`l7::RESPONSE_BYTES_RANGE`): the
    /// status line.
    pub response_bytes: u32,
    /// Connections with one of these local or remote ports are not followed.
    pub ignore_ports: Vec<u16>,
    /// Patterns masked in URL paths and queries (default: e-mail, phone, card numbers,
    /// national ids, api_key/token/secret/password values); `[]`: none.
    pub redact: Vec<super::redact::Pattern>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            request_bytes: super::DEFAULT_REQUEST_BYTES,
            response_bytes: super::DEFAULT_RESPONSE_BYTES,
            ignore_ports: Vec::new(),
            redact: super::redact::default_patterns(),
        }
    }
}

/// The HTTP/1.x protocol.
pub struct Http;

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn id(&self) -> u16 {
        PROTOCOL_HTTP1
    }

    fn summarize(&self, ex: &Exchange<'_>, redactor: &Redactor, name: &mut String) -> Summary {
        name.clear();
        let Some(req) = Request::line(ex.request) else {
            name.push_str("HTTP");
            return Summary::default();
        };
        let status = Response::status_of(ex.response);
        let (path, _) = split_target(req.target);
        name.push_str(known_method(req.method));
        name.push(' ');
        let path = redactor.redact(path);
        push_route(&path, name);
        Summary {
            error: is_error(ex.role, status),
            parsed: true,
            truncated: req.head_len.is_none(),
            next_request: req
                .head_len
                .filter(|&n| n < ex.request.len())
                .and_then(|_| Request::end(ex.request))
                .filter(|&n| n < ex.request.len())
                .and_then(|n| u16::try_from(n).ok()),
        }
    }

    fn describe(&self, ex: &Exchange<'_>, cx: &DescribeContext<'_>) -> Description {
        describe(ex, cx)
    }

    fn first_line(&self, ex: &Exchange<'_>, redactor: &Redactor) -> String {
        let end = ex
            .request
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(ex.request.len());
        redactor
            .redact(&String::from_utf8_lossy(&ex.request[..end]))
            .into_owned()
    }
}

/// Whether a response status is an error for this end (semantic conventions: 5xx for a
/// server, 4xx and 5xx for a client); none (no response) is not one.
fn is_error(role: Role, status: Option<u16>) -> bool {
    match (role, status) {
        (Role::Server, Some(s)) => s >= 500,
        (Role::Client, Some(s)) => s >= 400,
        (_, None) => false,
    }
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    let b = target.as_bytes();
    let target = match memchr::memchr(b'#', b) {
        Some(i) => &target[..i],
        None => target,
    };
    // An absolute-form target (proxies, `http://host/path`): keep its path.
    let path_query = if target.starts_with('/') {
        target
    } else {
        match target.find("://") {
            Some(i) => {
                let rest = &target[i + 3..];
                rest.find('/').map_or("/", |j| &rest[j..])
            }
            None => target,
        }
    };
    match memchr::memchr(b'?', path_query.as_bytes()) {
        Some(i) => (&path_query[..i], Some(&path_query[i + 1..])),
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

/// Span name, attributes (HTTP semantic conventions) and status of an exchange. The method
/// is a static string and the addresses are the connection's.
fn describe(ex: &Exchange<'_>, cx: &DescribeContext<'_>) -> Description {
    let (ends, tid, redactor, role) = (cx.ends, cx.tid, cx.redactor, ex.role);
    let Some(r) = Request::parse(ex.request) else {
        return Description {
            name: "HTTP".into(),
            attributes: vec![
                KeyValue::new("network.protocol.name", "http"),
                KeyValue::new("thread.id", i64::from(tid)),
            ],
            status: Status::Unset,
        };
    };
    let response = Response::parse(ex.response);
    let (path, query) = split_target(r.target);
    let path = redactor.redact(path);
    let route = infer_route(&path);
    let method = known_method(r.method);
    let name = format!("{method} {route}");
    let status_code = response.as_ref().map(|s| s.status);
    let mut a = Vec::with_capacity(18);
    a.push(KeyValue::new("http.request.method", method));
    if method != r.method {
        a.push(KeyValue::new(
            "http.request.method_original",
            r.method.to_string(),
        ));
    }
    if let Some(code) = status_code {
        a.push(KeyValue::new("http.response.status_code", i64::from(code)));
    }
    a.push(KeyValue::new("network.protocol.name", "http"));
    a.push(KeyValue::new(
        "network.protocol.version",
        if r.version == 0 { "1.0" } else { "1.1" },
    ));
    a.push(KeyValue::new("thread.id", i64::from(tid)));
    if let Some(ua) = r.user_agent {
        a.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    let host_header = r.host.map(host_of).filter(|h| !h.is_empty());
    match role {
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
                e.peer_attributes(&mut a);
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
                e.peer_attributes(&mut a);
            }
        }
    }
    let status = if is_error(role, status_code) {
        a.push(KeyValue::new(
            "error.type",
            status_code.unwrap_or_default().to_string(),
        ));
        // Semantic conventions: no description; the status code says it.
        Status::Error {
            description: Cow::Borrowed(""),
        }
    } else {
        Status::Unset
    };
    Description {
        name,
        attributes: a,
        status,
    }
}

/// The method as the semantic conventions name it: one of the known methods, else `_OTHER`.
fn known_method(m: &str) -> &'static str {
    for k in HTTP1_METHODS {
        // Each method with its space: compare without it.
        let k = &k[..k.len() - 1];
        if k == m.as_bytes() {
            // ASCII: valid UTF-8.
            return std::str::from_utf8(k).unwrap_or("_OTHER");
        }
    }
    "_OTHER"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conns::Tuple, l7::Ends};

    const REQ: &[u8] = b"GET /orders/7?mail=jo@example.com HTTP/1.1\r\nHost: api:80\r\nUser-Agent: t\r\nAuthorization: Bearer x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";

    fn ex(role: Role, request: &'static [u8], response: &'static [u8]) -> Exchange<'static> {
        Exchange {
            role,
            request,
            response,
            request_bytes: request.len() as u64,
            response_bytes: response.len() as u64,
            flags: 0,
        }
    }

    fn get(d: &Description, k: &str) -> Option<String> {
        d.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.as_str().into_owned())
    }

    #[test]
    fn summary_and_description_agree_and_mask() {
        let redactor = Redactor::default();
        let tuple = Tuple::new(
            "127.0.0.1:80".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        let mut name = String::new();
        for role in [Role::Server, Role::Client] {
            let ends = match role {
                Role::Server => Ends::of(tuple),
                Role::Client => Ends::of(Tuple::new(tuple.remote, tuple.local)),
            };
            let e = ex(role, REQ, RESP);
            let s = Http.summarize(&e, &redactor, &mut name);
            assert_eq!(name, "GET /orders/{id}");
            assert!(s.parsed && s.error && !s.truncated);
            let d = Http.describe(
                &e,
                &DescribeContext {
                    ends: Some(&ends),
                    tid: 7,
                    redactor: &redactor,
                },
            );
            assert_eq!(d.name, name);
            assert!(matches!(d.status, Status::Error { .. }));
            assert_eq!(get(&d, "http.response.status_code").as_deref(), Some("503"));
            assert_eq!(get(&d, "error.type").as_deref(), Some("503"));
            let text = format!("{d:?}");
            assert!(
                !text.contains("Bearer") && !text.contains("jo@example"),
                "{text}"
            );
            match role {
                Role::Server => {
                    assert_eq!(get(&d, "url.query").as_deref(), Some("mail=***"));
                    assert_eq!(get(&d, "server.address").as_deref(), Some("api"));
                    assert_eq!(get(&d, "client.port").as_deref(), Some("5000"));
                }
                Role::Client => {
                    // The Host header names no port: the connection's (80) is the default.
                    assert_eq!(
                        get(&d, "url.full").as_deref(),
                        Some("http://api/orders/7?mail=***")
                    );
                }
            }
        }
        // 404: an error for the client, not for the server.
        let nf = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert!(
            !Http
                .summarize(&ex(Role::Server, REQ, nf), &redactor, &mut name)
                .error
        );
        assert!(
            Http.summarize(&ex(Role::Client, REQ, nf), &redactor, &mut name)
                .error
        );
        // No response: not an error by status; a request line cut short still names it.
        let s = Http.summarize(
            &ex(Role::Server, b"POST /a/b HTTP/1.1\r\nHost", b""),
            &redactor,
            &mut name,
        );
        assert_eq!(name, "POST /a/b");
        assert!(s.parsed && s.truncated && !s.error);
        let s = Http.summarize(
            &ex(Role::Server, b"\x16\x03\x01 tls", b""),
            &redactor,
            &mut name,
        );
        assert!(!s.parsed);
        assert_eq!(name, "HTTP");
        assert_eq!(
            Http.first_line(&ex(Role::Server, REQ, RESP), &redactor),
            "GET /orders/7?mail=*** HTTP/1.1"
        );
    }
}
