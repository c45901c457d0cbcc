//! Decoded kernel events as `kspan events` prints them (JSON lines).
use std::collections::BTreeMap;

use agent_common::{
    EventHeader, EventKind, PayloadData, SyscallData, TcpData, PAYLOAD_FLAG_CLOSE,
    PAYLOAD_FLAG_START, PAYLOAD_FLAG_WRITE, TCP_FLAG_FAILED, TCP_FLAG_HANDSHAKE_UNKNOWN,
    TCP_FLAG_PID_UNKNOWN,
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
    /// A transfer record, under its protocol's name (`"http": {...}`).
    #[serde(flatten)]
    pub payload: BTreeMap<&'static str, PayloadJson>,
}

/// A transfer record on a socket of a detected L7 protocol (`kind` is the protocol's name).
#[derive(Debug, Serialize, PartialEq)]
pub struct PayloadJson {
    /// `read`, `write` or `close` (the socket closed).
    pub dir: &'static str,
    /// Kernel address of the socket, hex.
    pub socket: String,
    /// Bytes the call moved.
    pub bytes: u64,
    /// Bytes captured of them.
    pub captured: u32,
    /// The bytes start a message of the protocol.
    pub message_start: bool,
    /// The first line of a message start, with personal data masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line: Option<String>,
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
            payload: BTreeMap::new(),
        };
        match ev {
            RawEvent::Syscall(_, d) => out.fill_syscall(d),
            RawEvent::Tcp(kind, h, d) => out.fill_tcp(*kind, h.flags, d),
            RawEvent::Payload(h, d, bytes) => out.fill_payload(h.flags, d, bytes),
        }
        out
    }

    fn fill_payload(&mut self, flags: u32, d: &PayloadData, bytes: &[u8]) {
        let protocol = crate::l7::protocol(d.protocol).map_or("unknown", |p| p.name());
        self.kind = protocol;
        let start = flags & PAYLOAD_FLAG_START != 0;
        let first_line = start.then(|| {
            let end = bytes
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(bytes.len());
            static REDACTOR: std::sync::LazyLock<crate::l7::redact::Redactor> =
                std::sync::LazyLock::new(crate::l7::redact::Redactor::default);
            REDACTOR
                .redact(&String::from_utf8_lossy(&bytes[..end]))
                .into_owned()
        });
        if flags & PAYLOAD_FLAG_CLOSE == 0 {
            self.fd = Some(d.fd);
        }
        let json = PayloadJson {
            dir: if flags & PAYLOAD_FLAG_CLOSE != 0 {
                "close"
            } else if flags & PAYLOAD_FLAG_WRITE != 0 {
                "write"
            } else {
                "read"
            },
            socket: format!("{:#x}", d.sk),
            bytes: d.len,
            captured: d.captured,
            message_start: start,
            first_line,
        };
        self.payload.insert(protocol, json);
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
