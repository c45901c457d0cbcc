//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every type that crosses the ring buffer or a map is `#[repr(C)]`, `Copy`, and has no
//! implicit padding: fields are ordered by size and padded explicitly, so the layout is the
//! same on both sides. Kind numbers are never reused.
#![no_std]

/// Number of log2 latency buckets. Bucket `b` (b >= 1) counts durations in
/// `[2^(b-1), 2^b)` ns; bucket 0 counts zero-length durations.
pub const HIST_BUCKETS: usize = 64;
/// Syscall numbers at or above this are not histogrammed (x86_64 has < 512).
pub const MAX_SYSCALLS: usize = 512;
/// Length of a task's `comm` in the kernel.
pub const COMM_LEN: usize = 16;

/// Event kinds. Numbers are part of the wire format: never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Syscall = 1,
    TcpConnect = 2,
    TcpAccept = 3,
    TcpClose = 4,
    /// Bytes moved on a TCP socket that carries an application protocol the kernel detected
    /// (see [`PayloadData`] and [`l7`]).
    Payload = 5,
}

/// Application (L7) protocols. The kernel detects them from the first bytes of a transfer
/// (`agent-ebpf/src/programs/detect.rs`) and names them in [`PayloadData::protocol`];
/// userspace parses each in its own module (`agent/src/l7/`). Numbers are part of the wire
/// format: never reuse one.
pub mod l7 {
    /// Not detected (close records of sockets whose protocol is not known, and tests).
    pub const PROTOCOL_UNKNOWN: u16 = 0;
    /// HTTP/1.0 and HTTP/1.1.
    pub const PROTOCOL_HTTP1: u16 = 1;

    /// HTTP/1.x request methods, each with the space that follows it on the request line: a
    /// transfer starting with one of these starts a request.
    pub const HTTP1_METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    /// The start of every HTTP/1.x response.
    pub const HTTP1_RESPONSE: &[u8] = b"HTTP/1.";
}

/// Common header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// Kind-specific flags (`TCP_FLAG_*`).
    pub flags: u32,
    /// Thread group id (the process id userspace sees).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Start of the measured interval, kernel `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    /// Length of the measured interval in ns.
    pub duration_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Task command name, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// Payload of a syscall event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallData {
    /// Syscall number (x86_64 numbering).
    pub nr: u32,
    pub _pad: u32,
    /// Raw return value (negative errno on failure).
    pub ret: i64,
    /// First argument (the fd for fd-based syscalls).
    pub arg0: u64,
}

/// Payload of TCP events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpData {
    /// Kernel address of the socket: a connection identity while it lives.
    pub skaddr: u64,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub _pad: u16,
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address: IPv4 in the first 4 bytes, or IPv6.
    pub daddr: [u8; 16],
    /// Retransmitted segments: SYNs for connect events, SYN-ACKs for accept events.
    pub retransmits: u32,
    /// Positive errno of a failed connect (`ECONNREFUSED`, `ETIMEDOUT`), or 0.
    pub error: u32,
}

/// Payload of a transfer event: a read or write on a TCP socket whose bytes start a message of
/// a protocol the kernel detects ([`l7`]), or any later transfer on such a socket (bodies,
/// heads split over several calls), or the socket's close (`PAYLOAD_FLAG_CLOSE`). The record
/// is followed by `captured` bytes: the first bytes moved (at most the configured prefix).
/// Records are variable-length: header, this, then the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadData {
    /// Kernel address of the socket: the connection's identity while it lives.
    pub sk: u64,
    /// The fd the process used (0 on close records).
    pub fd: u64,
    /// Bytes the syscall moved (its return value).
    pub len: u64,
    /// Syscall number.
    pub nr: u32,
    /// Bytes that follow this struct in the record.
    pub captured: u32,
    /// The socket's ends, read from it when the transfer happened (0 family: unknown).
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// The socket's protocol (`l7::PROTOCOL_*`), as detected at its first message start.
    pub protocol: u16,
    /// Local and remote address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `PayloadData` header flag: the process wrote (sent) the bytes; otherwise it read them.
pub const PAYLOAD_FLAG_WRITE: u32 = 1;
/// `PayloadData` header flag: the socket closed; no bytes follow.
pub const PAYLOAD_FLAG_CLOSE: u32 = 2;
/// `PayloadData` header flag: the bytes start a message of the socket's protocol.
pub const PAYLOAD_FLAG_START: u32 = 4;
/// Largest prefix of a transfer the kernel copies (the `http.prefix_bytes` setting is at most
/// this).
pub const PAYLOAD_PREFIX_MAX: usize = 4096;
/// Smallest prefix the kernel can be asked to copy: enough for a request line.
pub const PAYLOAD_PREFIX_MIN: usize = 64;

/// A ring-buffer record: header then payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event<T> {
    pub header: EventHeader,
    pub data: T,
}

pub type SyscallEvent = Event<SyscallData>;
pub type TcpEvent = Event<TcpData>;
pub type PayloadEvent = Event<PayloadData>;

/// A transfer record as the kernel builds it before sending its first
/// `size_of::<PayloadEvent>() + captured` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadRecord {
    pub event: PayloadEvent,
    pub buf: [u8; PAYLOAD_PREFIX_MAX],
}

/// `TcpData` flag: the connect failed (see `error`).
pub const TCP_FLAG_FAILED: u32 = 1;
/// `TcpData` flag: the owning process was not known when the event was made (for example a
/// listener created before kspan started).
pub const TCP_FLAG_PID_UNKNOWN: u32 = 2;
/// `TcpData` flag: the connection was accepted (passive open), for close events.
pub const TCP_FLAG_PASSIVE: u32 = 4;
/// `TcpData` flag on accept events: the handshake time is unknown (no BTF offsets, or the
/// kernel took no RTT sample), so `duration_ns` is 0.
pub const TCP_FLAG_HANDSHAKE_UNKNOWN: u32 = 8;

/// `SyscallEvent` header flag: the call failed with an errno listed as an expected outcome of
/// that syscall (EAGAIN on a non-blocking read, ENOENT while searching a path...). Such a
/// call is reported only when slow, like a success, and its span keeps status Unset.
pub const SYSCALL_FLAG_EXPECTED: u32 = 1;

/// Errnos below this can be listed as expected outcomes (two u64 bit sets per syscall).
pub const EXPECTED_ERRNO_LIMIT: u32 = 128;

/// Indices into the per-CPU `COUNTERS` map. Every event the kernel side could not deliver or
/// track is counted under one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Ring buffer reserve failed: the event was lost.
    RingbufFull = 0,
    /// The syscall start table was full: that syscall was not measured.
    StartTableFull = 1,
    /// A TCP tracking table was full: that connection was not followed.
    TcpTableFull = 2,
    /// Events submitted to the ring buffer.
    Submitted = 3,
    /// Ordinary syscall events (successful or expected, but slow) not submitted because the
    /// ring buffer was three quarters full: its last quarter is kept for failures and TCP
    /// events.
    RingbufShed = 4,
    /// Calls not counted in the per-process histograms: their map was full.
    ProcHistFull = 5,
    /// Sockets carrying an L7 protocol not followed: their table was full (a new message start
    /// on such a socket is still captured).
    L7TableFull = 6,
}
pub const COUNTERS_LEN: u32 = 8;

/// Filter flags in the `FILTER_FLAGS` global.
pub const FILTER_PID: u32 = 1;
pub const FILTER_COMM: u32 = 2;
pub const FILTER_CGROUP: u32 = 4;
pub const FILTER_SYSCALL: u32 = 8;

/// Names of the globals userspace sets when loading (`EbpfLoader::override_global`), by the
/// feature that reads them. Each is a `static` of the same name in `agent-ebpf` (a test in
/// `agent` checks the object has them).
pub mod globals {
    // Every program (agent-ebpf/src/programs/settings.rs).
    pub const SELF_TGID: &str = "SELF_TGID";
    pub const FILTER_FLAGS: &str = "FILTER_FLAGS";
    pub const FILTER_CGROUP_ID: &str = "FILTER_CGROUP_ID";
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const SHED_BYTES: &str = "SHED_BYTES";
    // Syscalls (programs/syscall.rs, programs/starts.rs).
    pub const MIN_DURATION_NS: &str = "MIN_DURATION_NS";
    pub const EMIT_SYSCALLS: &str = "EMIT_SYSCALLS";
    pub const EMIT_FAILED: &str = "EMIT_FAILED";
    pub const PROC_HIST: &str = "PROC_HIST";
    pub const STARTS_IN_ARRAY: &str = "STARTS_IN_ARRAY";
    // TCP (programs/tcp.rs).
    pub const EMIT_TCP: &str = "EMIT_TCP";
    pub const TCP_SOCK_SRTT_US_OFFSET: &str = "TCP_SOCK_SRTT_US_OFFSET";
    pub const TCP_REQ_SNT_SYNACK_OFFSET: &str = "TCP_REQ_SNT_SYNACK_OFFSET";
    // L7 payloads (programs/payload.rs).
    pub const PAYLOAD_PREFIX: &str = "PAYLOAD_PREFIX";
    pub const SOCK_V6_DADDR_OFFSET: &str = "SOCK_V6_DADDR_OFFSET";
    pub const SOCK_V6_SADDR_OFFSET: &str = "SOCK_V6_SADDR_OFFSET";
    pub const ALL: &[&str] = &[
        SELF_TGID,
        FILTER_FLAGS,
        FILTER_CGROUP_ID,
        WAKEUP_BYTES,
        SHED_BYTES,
        MIN_DURATION_NS,
        EMIT_SYSCALLS,
        EMIT_FAILED,
        PROC_HIST,
        STARTS_IN_ARRAY,
        EMIT_TCP,
        TCP_SOCK_SRTT_US_OFFSET,
        TCP_REQ_SNT_SYNACK_OFFSET,
        PAYLOAD_PREFIX,
        SOCK_V6_DADDR_OFFSET,
        SOCK_V6_SADDR_OFFSET,
    ];
}

/// Names of the maps userspace opens or sizes; each is a `#[map] static` of that name.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RUNTIME: &str = "RUNTIME";
    pub const STARTS_ARRAY: &str = "STARTS_ARRAY";
    pub const STARTS_HASH: &str = "STARTS_HASH";
    pub const SYSCALL_HIST: &str = "SYSCALL_HIST";
    pub const SYSCALL_SEEN: &str = "SYSCALL_SEEN";
    pub const SYSCALL_ERRORS: &str = "SYSCALL_ERRORS";
    pub const PROC_HIST_MAP: &str = "PROC_HIST_MAP";
    pub const TCP_HIST: &str = "TCP_HIST";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    pub const FILTER_COMMS: &str = "FILTER_COMMS";
    pub const FILTER_SYSCALLS: &str = "FILTER_SYSCALLS";
    pub const EXPECTED_ERRNOS: &str = "EXPECTED_ERRNOS";
    pub const L7_SOCKS: &str = "L7_SOCKS";
    pub const PAYLOAD_SCRATCH: &str = "PAYLOAD_SCRATCH";
    pub const SELF_PORTS: &str = "SELF_PORTS";
    pub const SELF_SOCKS: &str = "SELF_SOCKS";
    pub const ALL: &[&str] = &[
        EVENTS,
        COUNTERS,
        RUNTIME,
        STARTS_ARRAY,
        STARTS_HASH,
        SYSCALL_HIST,
        SYSCALL_SEEN,
        SYSCALL_ERRORS,
        PROC_HIST_MAP,
        TCP_HIST,
        FILTER_PIDS,
        FILTER_COMMS,
        FILTER_SYSCALLS,
        EXPECTED_ERRNOS,
        L7_SOCKS,
        PAYLOAD_SCRATCH,
        SELF_PORTS,
        SELF_SOCKS,
    ];
}

/// Names of the programs userspace attaches; each is a program function of that name.
pub mod programs {
    pub const SYS_ENTER_RAW: &str = "sys_enter_raw";
    pub const SYS_EXIT_RAW: &str = "sys_exit_raw";
    pub const SYS_ENTER_TP: &str = "sys_enter_tp";
    pub const SYS_EXIT_TP: &str = "sys_exit_tp";
    pub const SOCK_SET_STATE_TCP: &str = "sock_set_state_tcp";
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const TCP_RETRANSMIT_SYNACK: &str = "tcp_retransmit_synack";
    pub const SOCK_SEND_LENGTH: &str = "sock_send_length";
    pub const SOCK_RECV_LENGTH: &str = "sock_recv_length";
    /// Benchmark-only programs (`agent-ebpf/src/bench.rs`): the cost floors.
    pub const SYS_ENTER_RAW_EMPTY: &str = "sys_enter_raw_empty";
    pub const SYS_EXIT_RAW_EMPTY: &str = "sys_exit_raw_empty";
    pub const SYS_ENTER_TP_EMPTY: &str = "sys_enter_tp_empty";
    pub const SYS_EXIT_TP_EMPTY: &str = "sys_exit_tp_empty";
    pub const SYS_ENTER_RAW_CLOCK: &str = "sys_enter_raw_clock";
    pub const SYS_EXIT_RAW_CLOCK: &str = "sys_exit_raw_clock";
    pub const ALL: &[&str] = &[
        SYS_ENTER_RAW,
        SYS_EXIT_RAW,
        SYS_ENTER_TP,
        SYS_EXIT_TP,
        SOCK_SET_STATE_TCP,
        TCP_RETRANSMIT_SKB,
        TCP_RECEIVE_RESET,
        TCP_RETRANSMIT_SYNACK,
        SOCK_SEND_LENGTH,
        SOCK_RECV_LENGTH,
        SYS_ENTER_RAW_EMPTY,
        SYS_EXIT_RAW_EMPTY,
        SYS_ENTER_TP_EMPTY,
        SYS_EXIT_TP_EMPTY,
        SYS_ENTER_RAW_CLOCK,
        SYS_EXIT_RAW_CLOCK,
    ];
}

/// Key of the per-process histogram map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcHistKey {
    pub pid: u32,
    pub nr: u16,
    /// log2 bucket, or `HIST_BUCKETS` for the count of failed calls.
    pub bucket: u16,
}

/// Start of an in-flight syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallStart {
    pub ts: u64,
    pub arg0: u64,
    /// Second argument (classic tracepoints only; raw tracepoints read it at exit).
    pub arg1: u64,
    /// The TCP socket this call moved bytes on (set by `sock_send_length` /
    /// `sock_recv_length` while the call runs), or 0.
    pub sk: u64,
    /// Syscall number + 1; 0 marks a free slot.
    pub nr1: u32,
    pub _pad: u32,
}

/// Histogram index of the TCP connect latency histogram in `TCP_HIST`.
pub const TCP_HIST_CONNECT: u32 = 0;
/// Histogram index of the TCP accept (handshake) latency histogram in `TCP_HIST`.
pub const TCP_HIST_ACCEPT: u32 = 1;

/// log2 bucket of a duration: 0 for 0, else `floor(log2(ns)) + 1`, at most 63.
#[inline(always)]
pub fn log2_bucket(mut v: u64) -> u32 {
    if v == 0 {
        return 0;
    }
    let mut r: u32 = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    let b = r + 1;
    if b > 63 {
        63
    } else {
        b
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding.
    unsafe impl aya::Pod for SyscallStart {}
    unsafe impl aya::Pod for ProcHistKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<EventHeader>(), 4 * 4 + 3 * 8 + COMM_LEN);
        assert_eq!(size_of::<SyscallData>(), 24);
        assert_eq!(size_of::<TcpData>(), 8 + 4 * 2 + 32 + 8);
        assert_eq!(size_of::<SyscallEvent>(), 56 + 24);
        assert_eq!(size_of::<TcpEvent>(), 56 + 56);
        assert_eq!(size_of::<PayloadData>(), 72);
        assert_eq!(size_of::<PayloadEvent>(), 56 + 72);
        assert_eq!(size_of::<PayloadRecord>(), 56 + 72 + PAYLOAD_PREFIX_MAX);
        assert_eq!(size_of::<SyscallStart>(), 40);
    }

    #[test]
    fn log2_bucket_matches_bit_length() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(2), 2);
        assert_eq!(log2_bucket(3), 2);
        assert_eq!(log2_bucket(4), 3);
        for v in [
            5u64,
            1000,
            20_000_000,
            u32::MAX as u64,
            1 << 40,
            (1 << 61) + 7,
        ] {
            assert_eq!(log2_bucket(v), 64 - v.leading_zeros());
        }
        assert_eq!(log2_bucket(u64::MAX), 63);
    }
}
