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
    // 5 was `Payload` (one record per transfer), replaced by `Exchange`.
    /// One request and its response on one side of a connection of an application protocol
    /// the kernel detected (see [`ExchangeData`] and [`l7`]).
    Exchange = 6,
    /// A call of a probed function (`--func`) slower than the minimum duration: a
    /// [`SyscallData`] whose `nr` is the function's id (`ret`, `arg0` unused).
    Func = 7,
}

/// Application (L7) protocols. The kernel detects them from the first bytes of a transfer
/// (`agent-ebpf/src/programs/detect.rs`) and names them in [`ExchangeData::protocol`];
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

/// A span's identity as the kernel assigns it: a W3C trace id and span id (all zero: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl TraceRef {
    pub fn is_none(&self) -> bool {
        self.span_id == [0; 8]
    }
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
    /// The request span the thread was serving when the call ended (none: not serving
    /// exactly one).
    pub parent: TraceRef,
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
    /// Connect events: the request span the connecting thread was serving (none: not
    /// serving exactly one).
    pub parent: TraceRef,
}

/// Payload of an exchange record: one request and its response (or the request alone, when
/// the connection closed first) as one end of a connection moved them. The record is followed
/// by `req_len` bytes (the first bytes of the request) and then `resp_len` bytes (the first
/// bytes of the response). Records are variable-length: header, this, then the bytes.
///
/// The header's pid/tid/comm/cgroup are the thread that moved the request's first bytes; its
/// `start_ns`/`duration_ns` are the span's (server: first request bytes read -> last response
/// bytes written; client: request write began -> last response bytes read); its flags are
/// `EXCH_FLAG_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeData {
    /// Kernel address of the socket: the connection's identity while it lives.
    pub sk: u64,
    /// Start of the syscall that moved the request's first bytes.
    pub req_start_ns: u64,
    /// End of that syscall.
    pub req_first_end_ns: u64,
    /// End of the syscall that moved the request's last bytes.
    pub req_end_ns: u64,
    /// Start of the syscall that moved the response's first bytes (0: no response).
    pub resp_start_ns: u64,
    /// End of the syscall that moved the response's last bytes (0: no response).
    pub resp_end_ns: u64,
    /// Bytes of the request and of the response moved.
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// This exchange's span, as the kernel assigned it at the request's start.
    pub ctx: TraceRef,
    /// Its parent span (zero: none); `parent_kind` says where it came from.
    pub parent_span_id: [u8; 8],
    /// The exchange's number on the connection, from the first one the kernel saw.
    pub seq: u32,
    /// TCP sequence number of the request's first byte (0: unknown): the two ends of a
    /// connection on one host see the same number.
    pub req_tcp_seq: u32,
    /// `l7::PROTOCOL_*`.
    pub protocol: u16,
    /// The socket's ends (0 family: unknown). `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// Bytes of the request's start that follow this struct.
    pub req_len: u16,
    /// Bytes of the response's start that follow them.
    pub resp_len: u16,
    /// W3C trace flags of the span (bit 0: sampled by the caller).
    pub trace_flags: u8,
    /// `PARENT_*`: where the parent came from.
    pub parent_kind: u8,
    pub _pad: [u8; 2],
    /// Local and remote address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `ExchangeData` header flag: the traced process is the client (it wrote the request);
/// otherwise the server.
pub const EXCH_FLAG_CLIENT: u32 = 1;
/// The exchange ended with the connection's close.
pub const EXCH_FLAG_CLOSED: u32 = 2;
/// No response came before the connection closed (the request alone).
pub const EXCH_FLAG_NO_RESPONSE: u32 = 4;
/// The response's length was not known to the kernel: it ended where the next request began
/// (or at close), so its end is the last response bytes moved before that.
pub const EXCH_FLAG_END_AT_NEXT: u32 = 8;
/// More than one request moved before this one's response (pipelining): the request head
/// holds the first of them; the others are counted, not described.
pub const EXCH_FLAG_PIPELINED: u32 = 16;
/// The server found no trace context for the request when it started; userspace links it to
/// its caller on this host if the caller's record says so (`req_tcp_seq`).
pub const EXCH_FLAG_UNLINKED: u32 = 32;
/// The request moved with the previous exchange's (pipelining): it is in that record's
/// request head (when the head holds it), and this record has none of its own.
pub const EXCH_FLAG_CONTINUED: u32 = 64;

/// `ExchangeData::parent_kind`: no parent (a new trace).
pub const PARENT_NONE: u8 = 0;
/// From trace context the request carried (`traceparent`): the caller is another process,
/// maybe on another host.
pub const PARENT_REMOTE: u8 = 1;
/// The client end of the same connection on this host.
pub const PARENT_PEER: u8 = 2;
/// The request the thread was serving when it sent this one.
pub const PARENT_THREAD: u8 = 3;

/// Most bytes of a request's start the kernel keeps (`l7.request_bytes` is at most this).
pub const REQ_HEAD_MAX: usize = 1024;
/// Most bytes of a response's start the kernel keeps (`l7.response_bytes` is at most this).
pub const RESP_HEAD_MAX: usize = 256;
/// Fewest bytes of a request's start the kernel can be asked to keep: a request line.
pub const REQ_HEAD_MIN: usize = 64;
/// Fewest of a response's: a status line.
pub const RESP_HEAD_MIN: usize = 16;

/// A ring-buffer record: header then payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event<T> {
    pub header: EventHeader,
    pub data: T,
}

pub type SyscallEvent = Event<SyscallData>;
pub type TcpEvent = Event<TcpData>;
pub type ExchangeEvent = Event<ExchangeData>;

/// An exchange record as the kernel builds it before sending its first
/// `size_of::<ExchangeEvent>() + req_len + resp_len` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExchangeRecord {
    pub event: ExchangeEvent,
    pub bytes: [u8; REQ_HEAD_MAX + RESP_HEAD_MAX],
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
    /// Connections of an L7 protocol not followed: their table was full.
    L7TableFull = 6,
    /// Transfers on sockets of an L7 protocol the kernel first saw in the middle of a
    /// message (a response, or a body): not followed until a request starts.
    L7MidStream = 7,
    /// Request heads not kept: the table of heads in flight was full (the exchange still
    /// gets its record, without its head).
    L7HeadsFull = 8,
    /// Probed function calls not measured: the thread's stack of open calls was full
    /// (nesting or recursion deeper than `FUNC_STACK_DEPTH`).
    FuncStackDeep = 9,
    /// Probed function calls whose return was never seen (the frame was left by a longjmp,
    /// an exception or a thread that exited): discarded, not measured.
    FuncUnfinished = 10,
    /// Per-thread stacks of open calls not kept: their table was full.
    FuncTableFull = 11,
}
pub const COUNTERS_LEN: u32 = 16;

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
    // L7 exchanges (programs/exchange.rs).
    pub const REQ_HEAD_BYTES: &str = "REQ_HEAD_BYTES";
    pub const RESP_HEAD_BYTES: &str = "RESP_HEAD_BYTES";
    pub const SOCK_V6_DADDR_OFFSET: &str = "SOCK_V6_DADDR_OFFSET";
    pub const SOCK_V6_SADDR_OFFSET: &str = "SOCK_V6_SADDR_OFFSET";
    pub const TCP_SOCK_WRITE_SEQ_OFFSET: &str = "TCP_SOCK_WRITE_SEQ_OFFSET";
    pub const TCP_SOCK_COPIED_SEQ_OFFSET: &str = "TCP_SOCK_COPIED_SEQ_OFFSET";
    // Functions (programs/func.rs).
    pub const EMIT_FUNCS: &str = "EMIT_FUNCS";
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
        REQ_HEAD_BYTES,
        RESP_HEAD_BYTES,
        SOCK_V6_DADDR_OFFSET,
        SOCK_V6_SADDR_OFFSET,
        TCP_SOCK_WRITE_SEQ_OFFSET,
        TCP_SOCK_COPIED_SEQ_OFFSET,
        EMIT_FUNCS,
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
    pub const L7_CONNS: &str = "L7_CONNS";
    pub const L7_HEADS: &str = "L7_HEADS";
    pub const CLIENT_CTX: &str = "CLIENT_CTX";
    pub const SERVING: &str = "SERVING";
    pub const EXCH_SCRATCH: &str = "EXCH_SCRATCH";
    pub const SELF_PORTS: &str = "SELF_PORTS";
    pub const SELF_SOCKS: &str = "SELF_SOCKS";
    pub const FUNC_HIST: &str = "FUNC_HIST";
    pub const FUNC_STACKS: &str = "FUNC_STACKS";
    pub const FUNC_SEEN: &str = "FUNC_SEEN";
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
        L7_CONNS,
        L7_HEADS,
        CLIENT_CTX,
        SERVING,
        EXCH_SCRATCH,
        SELF_PORTS,
        SELF_SOCKS,
        FUNC_HIST,
        FUNC_STACKS,
        FUNC_SEEN,
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
    pub const TCP_SENDMSG_LOCKED: &str = "tcp_sendmsg_locked";
    pub const FUNC_ENTRY: &str = "func_entry";
    pub const FUNC_RETURN: &str = "func_return";
    pub const FUNC_THREAD_EXIT: &str = "func_thread_exit";
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
        TCP_SENDMSG_LOCKED,
        FUNC_ENTRY,
        FUNC_RETURN,
        FUNC_THREAD_EXIT,
        SYS_ENTER_RAW_EMPTY,
        SYS_EXIT_RAW_EMPTY,
        SYS_ENTER_TP_EMPTY,
        SYS_EXIT_TP_EMPTY,
        SYS_ENTER_RAW_CLOCK,
        SYS_EXIT_RAW_CLOCK,
    ];
}

/// Most functions `kspan hist --func` probes at once (a glob is capped at this; a power of
/// two). The kernel takes ~0.11 s to remove each probe (two per function) when kspan exits.
pub const MAX_FUNCS: usize = 64;
/// Calls open at once per thread that are measured (deeper nesting is counted, not timed).
pub const FUNC_STACK_DEPTH: usize = 32;
/// `ProcHistKey::nr` of function `id` in the per-process histograms: past every syscall
/// number.
pub const FUNC_NR_BASE: u16 = 1024;

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
    /// Second argument: saved at entry by the classic tracepoints (0: read it from the
    /// registers).
    pub arg1: u64,
    /// The raw tracepoint's `struct pt_regs *` of the call (0 for classic tracepoints):
    /// valid while the call runs, so programs that run inside it read arguments from it.
    pub regs: u64,
    /// The TCP socket this call moved bytes on (set by `tcp_sendmsg_locked`,
    /// `sock_send_length` / `sock_recv_length` while the call runs), or 0.
    pub sk: u64,
    /// Syscall number + 1; 0 marks a free slot.
    pub nr1: u32,
    /// `SLOT_SERVING`: the thread serves a request (kept between calls in array slots).
    pub flags: u32,
}

/// `SyscallStart.flags`: the thread serves a server request (its `SERVING` entry is live), so
/// its calls look their parent up; a clear flag spares them the lookup.
pub const SLOT_SERVING: u32 = 1;

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
        assert_eq!(size_of::<TraceRef>(), 24);
        assert_eq!(size_of::<SyscallData>(), 24 + 24);
        assert_eq!(size_of::<TcpData>(), 8 + 4 * 2 + 32 + 8 + 24);
        assert_eq!(size_of::<SyscallEvent>(), 56 + 48);
        assert_eq!(size_of::<TcpEvent>(), 56 + 80);
        assert_eq!(
            size_of::<ExchangeData>(),
            8 * 8 + 24 + 8 + 4 * 2 + 2 * 6 + 4 + 32
        );
        assert_eq!(size_of::<ExchangeEvent>(), 56 + 152);
        assert_eq!(
            size_of::<ExchangeRecord>(),
            56 + 152 + REQ_HEAD_MAX + RESP_HEAD_MAX
        );
        assert_eq!(size_of::<SyscallStart>(), 48);
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
