//! HTTP/1.0 and HTTP/1.1: the first L7 protocol module.
//!
//! [`parse`] pairs requests with responses from a connection's transfers (keep-alive,
//! pipelining, bodies skipped by length); [`route`] makes low-cardinality routes of paths;
//! this module describes an exchange as a span (the HTTP semantic conventions), reads the
//! W3C `traceparent`/`tracestate` headers and names what links a client's request to the
//! server's (method and target). Only a short allow-list of headers is ever read (Host,
//! User-Agent, Content-Type, traceparent, tracestate); paths and queries pass through the
//! redactor.
pub mod parse;
pub mod route;

use std::{borrow::Cow, hash::BuildHasher};

use agent_common::l7::{HTTP1_METHODS, HTTP1_RESPONSE, PROTOCOL_HTTP1};
use opentelemetry::{trace::Status, KeyValue};

use self::{
    parse::{HttpConn, Request, Response},
    route::infer_route,
};
use super::{
    context::parse_traceparent, DescribeContext, Description, Exchange, Found, Io, LinkHasher,
    Message, ParseCounts, Parser, Protocol, Role, Started,
};

/// `http:` in the agent's config: HTTP/1.x request spans.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// SERVER and CLIENT spans for HTTP/1.x requests seen on TCP sockets.
    pub enabled: bool,
    /// Bytes of each transfer copied from the process (`l7::PREFIX_BYTES_RANGE`): headers
    /// beyond them are not read (method, target and status still are).
    pub prefix_bytes: u32,
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
            prefix_bytes: super::DEFAULT_PREFIX_BYTES,
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

    fn starts_message(&self, data: &[u8]) -> bool {
        parse::looks_like_request(data) || data.starts_with(HTTP1_RESPONSE)
    }

    fn parser(&self, links: &LinkHasher) -> Box<dyn Parser> {
        Box::new(HttpParser {
            conn: HttpConn::new(),
            links: links.clone(),
        })
    }
}

/// One connection's HTTP parser, in the L7 layer's terms.
struct HttpParser {
    conn: HttpConn,
    links: LinkHasher,
}

impl HttpParser {
    fn push_done(&self, done: Vec<parse::Exchange>, out: &mut Vec<Found>) {
        for ex in done {
            out.push(Found::Done(Exchange {
                role: ex.role,
                seq: ex.request.seq,
                response_end_ns: ex.response.end_ns,
                message: Box::new(HttpMessage {
                    request: ex.request,
                    response: ex.response,
                }),
            }));
        }
    }
}

impl Parser for HttpParser {
    fn on_io(&mut self, io: &Io<'_>, out: &mut Vec<Found>) {
        let before = self.conn.counts.requests;
        let done = self.conn.on_io(io);
        if let Some(role) = self.conn.role() {
            for r in self.conn.pending().iter().filter(|r| r.seq >= before) {
                out.push(Found::Started(Started {
                    seq: r.seq,
                    role,
                    link: self.links.hash_one((&r.method, &r.target)),
                    context: r
                        .traceparent
                        .as_deref()
                        .and_then(|tp| parse_traceparent(tp, r.tracestate.as_deref())),
                }));
            }
        }
        self.push_done(done, out);
    }

    fn on_close(&mut self, now_ns: u64, out: &mut Vec<Found>) {
        let done = self.conn.on_close(now_ns);
        self.push_done(done, out);
    }

    fn counts(&self) -> ParseCounts {
        self.conn.counts
    }
}

/// An HTTP request and its response.
#[derive(Debug)]
pub struct HttpMessage {
    pub request: Request,
    pub response: Response,
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

impl Message for HttpMessage {
    /// Span name, attributes (HTTP semantic conventions) and status of a finished exchange.
    /// Per request it allocates only what differs between requests (name, path, query,
    /// route); the method is a static string and the addresses are the connection's.
    fn describe(&self, cx: &DescribeContext<'_>) -> Description {
        let (ends, tid, redactor, role) = (cx.ends, cx.tid, cx.redactor, cx.role);
        let r = &self.request;
        let (path, query) = split_target(&r.target);
        let path = redactor.redact(path);
        let route = infer_route(&path);
        let method = known_method(&r.method);
        let name = format!("{method} {route}");
        let status_code = self.response.status;
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
        let error = match role {
            Role::Server => status_code >= 500,
            Role::Client => status_code >= 400,
        };
        let host_header = r.host.as_deref().map(host_of).filter(|h| !h.is_empty());
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
                    Some(p) if p != 80 && host.contains(':') => {
                        format!("http://[{host}]:{p}{path}")
                    }
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
        let status = if error {
            a.push(KeyValue::new("error.type", status_code.to_string()));
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
}

/// The method as the semantic conventions name it: one of the known methods, else `_OTHER`.
fn known_method(m: &str) -> &'static str {
    HTTP1_METHODS
        .iter()
        .filter_map(|k| std::str::from_utf8(k).ok())
        .map(|k| k.trim_end())
        .find(|k| *k == m)
        .unwrap_or("_OTHER")
}
