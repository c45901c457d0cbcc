//! Kernel wire values in the agent's terms: event kind names, comms, addresses. A leaf:
//! every stage that shows a decoded record uses these.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::EventKind;

/// Name of an event kind as it appears in output and metrics.
/// Every event kind the kernel sends, in the order of their counters.
pub const EVENT_KINDS: [EventKind; 6] = [
    EventKind::Syscall,
    EventKind::TcpConnect,
    EventKind::TcpAccept,
    EventKind::TcpClose,
    EventKind::Exchange,
    EventKind::Func,
];

pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Syscall => "syscall",
        EventKind::TcpConnect => "tcp_connect",
        EventKind::TcpAccept => "tcp_accept",
        EventKind::TcpClose => "tcp_close",
        EventKind::Exchange => "exchange",
        EventKind::Func => "function",
    }
}

/// Trims the kernel's NUL padding from a comm.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// An address as the kernel writes it: IPv4 in the first 4 bytes (`AF_INET`), else IPv6.
pub fn ip_addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u16 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}
