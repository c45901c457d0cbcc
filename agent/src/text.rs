//! Spans as a person at a terminal reads them: one line per span, children indented under
//! their parent when they arrive in the same batch.
//!
//! ```text
//! 07:31:02.123   12.40ms  orders           server ERROR 4bf92f35 b7ad6b71 GET /orders/{id}  status=500 client=127.0.0.1
//! 07:31:02.125    1.10ms  orders           client ok    4bf92f35 0a1b2c3d   GET /stock/{id}  status=200 server=127.0.0.1:8081
//! ```
//!
//! Columns: local time of the start, duration, service, kind, status, the first 8 hex digits
//! of the trace and span ids, the name (indented two spaces per level), then the few
//! attributes that matter for its kind: an HTTP request's status code and peer, a syscall's
//! errno, fd and return value, a connection's peer and retransmits.
use std::{collections::HashMap, fmt::Write as _, time::SystemTime};

use opentelemetry::{
    trace::{SpanId, SpanKind, Status},
    Value,
};
use opentelemetry_sdk::trace::SpanData;

/// Width of the service column.
const SERVICE_WIDTH: usize = 16;

/// How the lines are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// ANSI colours (a terminal that allows them).
    Ansi,
    None,
}

/// The lines of one batch: `(service, span)` pairs, in any order.
pub fn render(spans: &[(&str, &SpanData)], colour: Colour) -> String {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].1.start_time);
    let index: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (s.span_context.span_id(), i))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in &order {
        let p = spans[i].1.parent_span_id;
        match index.get(&p) {
            Some(&pi) if p != SpanId::INVALID && pi != i => children.entry(pi).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let mut out = String::new();
    let mut seen = vec![false; spans.len()];
    // Depth-first, children in start order; `seen` guards against a cycle of parents.
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        line(&mut out, spans[i].0, spans[i].1, depth, colour);
        if let Some(c) = children.get(&i) {
            stack.extend(c.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Spans in a cycle of parents (none should be) still get their line.
    for (i, s) in spans.iter().enumerate() {
        if !seen[i] {
            line(&mut out, s.0, s.1, 0, colour);
        }
    }
    out
}

fn line(out: &mut String, service: &str, s: &SpanData, depth: usize, colour: Colour) {
    let dur = s
        .end_time
        .duration_since(s.start_time)
        .unwrap_or_default()
        .as_nanos() as u64;
    let error = matches!(s.status, Status::Error { .. });
    let (status, paint) = if error {
        ("ERROR", "\x1b[31m")
    } else {
        ("ok", "\x1b[32m")
    };
    let kind = match s.span_kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Internal => "intern",
        SpanKind::Producer => "produc",
        SpanKind::Consumer => "consum",
    };
    let trace = s.span_context.trace_id().to_string();
    let span = s.span_context.span_id().to_string();
    let service: String = service.chars().take(SERVICE_WIDTH).collect();
    let _ = write!(
        out,
        "{}  {:>9}  {:<w$} {:<6} ",
        clock(s.start_time),
        crate::hist::fmt_ns(dur as f64),
        service,
        kind,
        w = SERVICE_WIDTH
    );
    match colour {
        Colour::Ansi => {
            let _ = write!(out, "{paint}{status:<5}\x1b[0m");
        }
        Colour::None => {
            let _ = write!(out, "{status:<5}");
        }
    }
    let _ = write!(
        out,
        " {} {} {:indent$}{}",
        &trace[..8],
        &span[..8],
        "",
        s.name,
        indent = 2 * depth
    );
    let extra = details(s);
    if !extra.is_empty() {
        out.push_str("  ");
        out.push_str(&extra);
    }
    out.push('\n');
}

/// `HH:MM:SS.mmm` of a time, in the local time zone (UTC when it is not known).
fn clock(t: SystemTime) -> String {
    let unix = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = unix.as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm; localtime_r is thread-safe.
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        let s = unix.as_secs() % 86_400;
        return format!(
            "{:02}:{:02}:{:02}.{:03}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            unix.subsec_millis()
        );
    }
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        unix.subsec_millis()
    )
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The attributes that matter for the span's kind, as `key=value` words.
fn details(s: &SpanData) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut put = |name: &str, v: Option<&Value>| {
        if let Some(v) = v {
            words.push(format!("{name}={}", v.as_str()));
        }
    };
    let peer = |s: &SpanData| match (
        attr(s, "network.peer.address"),
        attr(s, "network.peer.port"),
    ) {
        (Some(a), Some(p)) => Some(Value::from(format!("{}:{}", a.as_str(), p.as_str()))),
        (Some(a), None) => Some(a.clone()),
        _ => None,
    };
    if attr(s, "http.request.method").is_some() {
        put("status", attr(s, "http.response.status_code"));
        match s.span_kind {
            SpanKind::Server => put("client", attr(s, "client.address")),
            _ => put("server", peer(s).as_ref()),
        }
    } else if attr(s, crate::span::attr::SYSCALL_NR).is_some() {
        put("error", attr(s, "error.type"));
        put("fd", attr(s, crate::span::attr::SYSCALL_FD));
        put("ret", attr(s, crate::span::attr::SYSCALL_RETURN));
    } else if attr(s, "network.transport").is_some() {
        put("peer", peer(s).as_ref());
        put("error", attr(s, "error.type"));
        if let Some(r) = attr(s, crate::span::attr::TCP_RETRANSMITS) {
            if r.as_str() != "0" {
                put("retransmits", Some(r));
            }
        }
    } else {
        put("error", attr(s, "error.type"));
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::{
        trace::{SpanContext, TraceFlags, TraceId, TraceState},
        KeyValue,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn span(id: u64, parent: u64, name: &str, kind: SpanKind, at_ms: u64) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + at_ms);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: kind,
            name: name.to_string().into(),
            start_time: start,
            end_time: start + Duration::from_micros(1500),
            attributes: vec![],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn children_are_indented_under_their_parent() {
        let mut server = span(1, 0, "GET /orders/{id}", SpanKind::Server, 0);
        server.status = Status::error("");
        server.attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 500),
            KeyValue::new("client.address", "127.0.0.1"),
        ];
        let mut read = span(3, 2, "read", SpanKind::Internal, 2);
        read.attributes = vec![
            KeyValue::new(crate::span::attr::SYSCALL_NR, 0),
            KeyValue::new(crate::span::attr::SYSCALL_FD, 7),
            KeyValue::new(crate::span::attr::SYSCALL_RETURN, 12),
        ];
        let client = span(2, 1, "GET /stock/{id}", SpanKind::Client, 1);
        let other = span(9, 77, "openat", SpanKind::Internal, 5);
        let spans = [
            ("orders", &read),
            ("a-very-long-service-name", &other),
            ("orders", &client),
            ("orders", &server),
        ];
        let text = render(&spans, Colour::None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Parent first, then its child, then the grandchild; the orphan last (latest start).
        assert!(lines[0].contains(" 00000000 GET /orders/{id}  status=500 client=127.0.0.1"));
        assert!(
            lines[0].contains(" server ERROR 4bf92f35 00000000"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(" client ok    4bf92f35 00000000   GET /stock/{id}"));
        assert!(lines[2].ends_with("    read  fd=7 ret=12"), "{}", lines[2]);
        assert!(lines[3].contains("a-very-long-serv intern"), "{}", lines[3]);
        // Columns line up: the duration ends at the same place on every line.
        let ends: Vec<usize> = lines.iter().map(|l| l.find("1.5ms").unwrap()).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(lines[0].starts_with(char::is_numeric) && &lines[0][2..3] == ":");
        let coloured = render(&spans, Colour::Ansi);
        assert!(coloured.contains("\x1b[31mERROR\x1b[0m"));
    }
}
