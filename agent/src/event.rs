//! Decoded kernel events as `kspan events` prints them (JSON lines).
use std::collections::BTreeMap;

use agent_common::{
    EventHeader, EventKind, ExchangeData, SyscallData, TcpData, EXCH_FLAG_CLIENT, EXCH_FLAG_CLOSED,
    EXCH_FLAG_END_AT_NEXT, EXCH_FLAG_NO_RESPONSE, EXCH_FLAG_PIPELINED, PARENT_PEER, PARENT_REMOTE,
    PARENT_THREAD, TCP_FLAG_FAILED, TCP_FLAG_HANDSHAKE_UNKNOWN, TCP_FLAG_PID_UNKNOWN,
};
use serde::Serialize;

use crate::{
    clock::WallClock,
    decode::RawEvent,
    names,
    wire::{comm_str, ip_addr, kind_name},
};

/// One event as `kspan events` prints it.
#[derive(Debug, Serialize, PartialEq)]
pub struct JsonEvent {
    pub kind: &'static str,
    /// Start, RFC 3339 UTC with ns.
    pub ts: String,
    pub ts_unix_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub duration_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall_nr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    /// false when the owning process was not known (listener older than kspan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_known: Option<bool>,
    /// Accept events: false when the handshake time is unknown (`duration_ns` is then 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_known: Option<bool>,
    /// An exchange record, under its protocol's name (`"http": {...}`).
    #[serde(flatten)]
    pub exchange: BTreeMap<&'static str, ExchangeJson>,
}

/// An exchange record (`kind` is the protocol's name): one request and its response on one
/// side of a connection.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExchangeJson {
    /// `server` (it read the request) or `client` (it wrote it).
    pub role: &'static str,
    /// Kernel address of the socket, hex.
    pub socket: String,
    /// The exchange's number on the connection.
    pub seq: u32,
    /// The request's first line, with personal data masked.
    pub request_line: String,
    /// The response's status (absent: no response, or not parsed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Bytes of the request's and the response's starts the kernel kept.
    pub request_captured: u16,
    pub response_captured: u16,
    /// The span the kernel assigned, hex.
    pub trace_id: String,
    pub span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Where the parent came from: `remote` (traceparent), `peer` (the client end on this
    /// host), `thread` (the request the thread served), `none`.
    pub parent: &'static str,
    /// `closed`, `no_response`, `length_unknown`, `pipelined`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
}

impl JsonEvent {
    pub fn new(ev: &RawEvent, clock: &WallClock) -> JsonEvent {
        let h: &EventHeader = ev.header();
        let unix_ns = clock.unix_ns(h.start_ns);
        let mut out = JsonEvent {
            kind: "syscall",
            ts: humantime::format_rfc3339_nanos(clock.system_time(h.start_ns)).to_string(),
            ts_unix_ns: unix_ns,
            pid: h.pid,
            tid: h.tid,
            comm: comm_str(&h.comm),
            cgroup_id: h.cgroup_id,
            duration_ns: h.duration_ns,
            syscall: None,
            syscall_nr: None,
            ret: None,
            errno: None,
            fd: None,
            family: None,
            saddr: None,
            daddr: None,
            sport: None,
            dport: None,
            retransmits: None,
            failed: None,
            pid_known: None,
            handshake_known: None,
            exchange: BTreeMap::new(),
        };
        match ev {
            RawEvent::Syscall(_, d) => out.fill_syscall(d),
            RawEvent::Tcp(kind, h, d) => out.fill_tcp(*kind, h.flags, d),
            RawEvent::Exchange(h, d, bytes) => out.fill_exchange(h.flags, d, bytes),
            // (`kspan events` probes no functions.)
            RawEvent::Func(..) => out.kind = "function",
        }
        out
    }

    fn fill_exchange(&mut self, flags: u32, d: &ExchangeData, bytes: &[u8]) {
        static REDACTOR: std::sync::LazyLock<crate::l7::redact::Redactor> =
            std::sync::LazyLock::new(crate::l7::redact::Redactor::default);
        let Some(p) = crate::l7::protocol(d.protocol) else {
            self.kind = "unknown_protocol";
            return;
        };
        self.kind = p.name();
        let req = (d.req_len as usize).min(bytes.len());
        let (request, rest) = bytes.split_at(req);
        let response = &rest[..(d.resp_len as usize).min(rest.len())];
        let role = if flags & EXCH_FLAG_CLIENT != 0 {
            crate::l7::Role::Client
        } else {
            crate::l7::Role::Server
        };
        let ex = crate::l7::Exchange {
            role,
            request,
            response,
            request_bytes: d.req_bytes,
            response_bytes: d.resp_bytes,
            flags,
        };
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut named = Vec::new();
        for (bit, name) in [
            (EXCH_FLAG_CLOSED, "closed"),
            (EXCH_FLAG_NO_RESPONSE, "no_response"),
            (EXCH_FLAG_END_AT_NEXT, "length_unknown"),
            (EXCH_FLAG_PIPELINED, "pipelined"),
        ] {
            if flags & bit != 0 {
                named.push(name);
            }
        }
        let json = ExchangeJson {
            role: match role {
                crate::l7::Role::Client => "client",
                crate::l7::Role::Server => "server",
            },
            socket: format!("{:#x}", d.sk),
            seq: d.seq,
            request_line: p.first_line(&ex, &REDACTOR),
            status: crate::l7::http::head::Response::status_of(response),
            request_bytes: d.req_bytes,
            response_bytes: d.resp_bytes,
            request_captured: d.req_len,
            response_captured: d.resp_len,
            trace_id: hex(&d.ctx.trace_id),
            span_id: hex(&d.ctx.span_id),
            parent_span_id: (d.parent_span_id != [0; 8]).then(|| hex(&d.parent_span_id)),
            parent: match d.parent_kind {
                PARENT_REMOTE => "remote",
                PARENT_PEER => "peer",
                PARENT_THREAD => "thread",
                _ => "none",
            },
            flags: named,
        };
        if let Some(t) = crate::conns::Tuple::of_exchange(d) {
            self.family = Some(if t.local.is_ipv4() { "ipv4" } else { "ipv6" });
            self.saddr = Some(t.local.ip().to_string());
            self.daddr = Some(t.remote.ip().to_string());
            self.sport = Some(t.local.port());
            self.dport = Some(t.remote.port());
        }
        self.exchange.insert(p.name(), json);
    }

    fn fill_syscall(&mut self, d: &SyscallData) {
        self.syscall = Some(names::syscall_name(d.nr).into_owned());
        self.syscall_nr = Some(d.nr);
        self.ret = Some(d.ret);
        if d.ret < 0 && d.ret > -4096 {
            self.errno = Some(names::errno_name((-d.ret) as i32).into_owned());
        }
        if names::first_arg_is_fd(d.nr) {
            self.fd = Some(d.arg0);
        }
    }

    fn fill_tcp(&mut self, kind: EventKind, flags: u32, d: &TcpData) {
        self.kind = kind_name(kind);
        self.family = Some(if d.family == libc::AF_INET as u16 {
            "ipv4"
        } else {
            "ipv6"
        });
        self.saddr = Some(ip_addr(d.family, &d.saddr).to_string());
        self.daddr = Some(ip_addr(d.family, &d.daddr).to_string());
        self.sport = Some(d.sport);
        self.dport = Some(d.dport);
        self.retransmits = Some(d.retransmits);
        if kind == EventKind::TcpConnect {
            self.failed = Some(flags & TCP_FLAG_FAILED != 0);
        }
        if kind == EventKind::TcpAccept {
            self.handshake_known = Some(flags & TCP_FLAG_HANDSHAKE_UNKNOWN == 0);
        }
        if flags & TCP_FLAG_FAILED != 0 && d.error != 0 {
            self.errno = Some(names::errno_name(d.error as i32).into_owned());
        }
        self.pid_known = Some(flags & TCP_FLAG_PID_UNKNOWN == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_openat_json() {
        let clock = WallClock::new();
        let ev = RawEvent::Syscall(
            EventHeader {
                kind: 1,
                pid: 10,
                tid: 11,
                comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
                duration_ns: 5,
                ..Default::default()
            },
            SyscallData {
                nr: 257,
                ret: -2,
                ..Default::default()
            },
        );
        let j = JsonEvent::new(&ev, &clock);
        assert_eq!(j.syscall.as_deref(), Some("openat"));
        assert_eq!(j.errno.as_deref(), Some("ENOENT"));
        assert_eq!(j.comm, "cat");
        assert_eq!(j.fd, None);
    }

    #[test]
    fn tcp_addresses() {
        let mut d = TcpData {
            family: 2,
            sport: 5000,
            dport: 80,
            ..Default::default()
        };
        d.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        d.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let ev = RawEvent::Tcp(EventKind::TcpConnect, EventHeader::default(), d);
        let j = JsonEvent::new(&ev, &WallClock::new());
        assert_eq!(j.kind, "tcp_connect");
        assert_eq!(j.saddr.as_deref(), Some("127.0.0.1"));
        assert_eq!(j.daddr.as_deref(), Some("10.1.2.3"));
        assert_eq!(j.family, Some("ipv4"));
        assert_eq!(j.failed, Some(false));
    }
}
