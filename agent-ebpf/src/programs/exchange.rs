//! L7 exchanges: per connection of a protocol the kernel detects (`detect.rs`), the kernel
//! follows each request and its response and sends one record per exchange and side,
//! carrying the first bytes of both, their times and sizes, and the span's trace context,
//! assigned here at the request's start:
//!
//! - a server request: from the `traceparent` it carries; else from the client end of the
//!   same connection on this host (`CLIENT_CTX`, one entry per client connection, updated
//!   in place per request and matched by the TCP sequence number of the request's first
//!   byte, which both ends see); else a new trace;
//! - a client request: from the request its thread is serving (`SERVING`), else a new trace.
//!   It is assigned in `tcp_sendmsg_locked`, before the request's bytes leave, and published
//!   for the server end.
//!
//! A response ends when its length says so (HTTP: `Content-Length`, chunked, no body), else
//! where the next request begins, or at close. Bodies beyond the heads cost a map update,
//! never a ring record. `sock_send_length`/`sock_recv_length` (in `tcp.rs`) mark the syscalls
//! that move bytes on a TCP socket, so file and pipe I/O costs nothing more. kspan's own
//! export connections are left out here.
use agent_common::{
    Counter, EventKind, ExchangeEvent, ExchangeRecord, SyscallStart, TraceRef, COMM_LEN,
    EXCH_FLAG_CLIENT, EXCH_FLAG_CLOSED, EXCH_FLAG_CONTINUED, EXCH_FLAG_END_AT_NEXT,
    EXCH_FLAG_NO_RESPONSE, EXCH_FLAG_PIPELINED, EXCH_FLAG_UNLINKED, PARENT_NONE, PARENT_PEER,
    PARENT_REMOTE, PARENT_THREAD, REQ_HEAD_MAX, RESP_HEAD_MAX,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        bpf_probe_read_kernel, bpf_probe_read_user, generated as gen,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};

use super::{
    detect::{self, Scan, EXPECT_CHUNKED, EXPECT_UNKNOWN, SCAN_MAX},
    shared::{comm, count, setting_u32, submit_flags, EVENTS},
    starts,
};

// ---- Settings ----

/// Bytes of each request's start kept (at most `REQ_HEAD_MAX`); 0: L7 capture off.
#[unsafe(no_mangle)]
static REQ_HEAD_BYTES: u32 = 0;
/// Bytes of each response's start kept (at most `RESP_HEAD_MAX`).
#[unsafe(no_mangle)]
static RESP_HEAD_BYTES: u32 = 0;
/// Byte offsets of `sock_common.skc_v6_daddr` and `skc_v6_rcv_saddr` from the kernel's BTF;
/// 0: unknown (IPv6 records then carry no addresses).
#[unsafe(no_mangle)]
static SOCK_V6_DADDR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_V6_SADDR_OFFSET: u32 = 0;
/// Byte offsets of `tcp_sock.write_seq` and `tcp_sock.copied_seq` from the kernel's BTF;
/// 0: unknown (the two ends of a connection are then linked by userspace, in order).
#[unsafe(no_mangle)]
static TCP_SOCK_WRITE_SEQ_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_COPIED_SEQ_OFFSET: u32 = 0;

const ROLE_SERVER: u8 = 1;
const ROLE_CLIENT: u8 = 2;
/// Between exchanges (the last one was sent).
const PHASE_IDLE: u8 = 0;
/// The request is moving (no response byte yet).
const PHASE_REQUEST: u8 = 1;
/// The response is moving.
const PHASE_RESPONSE: u8 = 2;

/// A socket's ends as kspan keeps them.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ends {
    family: u16,
    sport: u16,
    dport: u16,
    _pad: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// A followed connection and the exchange in progress on it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    protocol: u16,
    role: u8,
    phase: u8,
    /// `EXCH_FLAG_*` of the exchange in progress.
    flags: u32,
    /// Exchanges begun on the connection.
    seq: u32,
    req_tcp_seq: u32,
    req_len: u16,
    resp_len: u16,
    trace_flags: u8,
    parent_kind: u8,
    /// 1: the request was `HEAD` (its response has no body).
    head_request: u8,
    _pad: u8,
    pid_tgid: u64,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
    req_start_ns: u64,
    req_first_end_ns: u64,
    req_end_ns: u64,
    resp_start_ns: u64,
    resp_end_ns: u64,
    req_bytes: u64,
    resp_bytes: u64,
    /// The response's total length as its head said (`EXPECT_*` for unknown or chunked).
    resp_expect: u64,
    ctx: TraceRef,
    parent_span_id: [u8; 8],
    ends: Ends,
}

/// The first bytes of the request and the response in progress on a connection.
#[repr(C)]
struct Heads {
    req: [u8; REQ_HEAD_MAX],
    resp: [u8; RESP_HEAD_MAX],
}

/// A client connection on this host, for the server end to find: the client's ends (its
/// local and remote address and port).
#[repr(C)]
#[derive(Clone, Copy)]
struct CtxKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    _pad: u32,
}

/// The request a client connection sent last: its context and the TCP sequence number of
/// its first byte (0: taken by its server end, or unknown).
#[repr(C)]
#[derive(Clone, Copy)]
struct PeerCtx {
    ctx: TraceRef,
    seq: u32,
    trace_flags: u8,
    _pad: [u8; 3],
}

/// The server requests a thread is serving: their number, and the context of the one, if
/// it is the only one (zero span id: not known which).
#[repr(C)]
#[derive(Clone, Copy)]
struct Serving {
    ctx: TraceRef,
    count: u32,
    trace_flags: u8,
    _pad: [u8; 3],
}

/// Room to build a record, a new connection, to scan a head, and to join a head that came in
/// parts.
#[repr(C)]
struct Scratch {
    rec: ExchangeRecord,
    conn: Conn,
    scan: Scan,
    /// Twice a request head: a part appended at any offset of the first half stays inside.
    join: [u8; 2 * REQ_HEAD_MAX],
}

// ---- Maps ----

/// Connections followed: sockets that carried a request of a detected protocol. LRU:
/// sockets whose close kspan missed age out.
#[map]
static L7_CONNS: LruHashMap<u64, Conn> = LruHashMap::with_max_entries(32768, 0);

/// The heads of the exchanges in progress, by socket. LRU: a connection idle for long loses
/// its entry to busier ones (its next exchange makes it again).
#[map]
static L7_HEADS: LruHashMap<u64, Heads> = LruHashMap::with_max_entries(4096, 0);

/// Client connections' last requests, until their server end reads them. One entry per
/// connection, updated in place for each request (a request costs no map insert). LRU:
/// connections to other hosts, whose requests no server here reads, age out.
#[map]
static CLIENT_CTX: LruHashMap<CtxKey, PeerCtx> = LruHashMap::with_max_entries(16384, 0);

/// Server requests being served, by thread (count 0: none). One entry per thread, updated in
/// place. LRU: entries of threads that are gone age out.
#[map]
static SERVING: LruHashMap<u32, Serving> = LruHashMap::with_max_entries(16384, 0);

/// Local ports of kspan's own TCP connections (its exports): a server on this host reading
/// from one of them is serving kspan, and is not followed (its spans would describe kspan's
/// exports, which would make more exports).
#[map]
static SELF_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// kspan's own connecting sockets: at SYN_SENT the local port is not chosen yet, so the port
/// goes to SELF_PORTS when the connection is established.
#[map]
static SELF_SOCKS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU room (too large for the stack).
#[map]
static EXCH_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_READV: u32 = 19;
const SYS_WRITEV: u32 = 20;
const SYS_SENDFILE: u32 = 40;
const SYS_SENDTO: u32 = 44;
const SYS_RECVFROM: u32 = 45;
const SYS_SENDMSG: u32 = 46;
const SYS_RECVMSG: u32 = 47;

/// Whether L7 capture is on.
#[inline(always)]
pub fn enabled() -> bool {
    setting_u32(&REQ_HEAD_BYTES) != 0
}

/// Whether syscall `nr` writes bytes from a user buffer (`tcp_sendmsg_locked` reads its
/// first bytes before they leave).
#[inline(always)]
pub fn writes_user_bytes(nr: u32) -> bool {
    matches!(nr, SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG)
}

/// Where a syscall's bytes are: (address, room) of the buffer, or of the first iovec's
/// (readv/writev: the iovec array; sendmsg/recvmsg: the msghdr, whose msg_iov is at 16).
#[inline(always)]
fn user_buffer(nr: u32, arg1: u64, ret: i64) -> Option<(u64, i64)> {
    match nr {
        SYS_READV | SYS_WRITEV | SYS_SENDMSG | SYS_RECVMSG => {
            let iov = if nr == SYS_SENDMSG || nr == SYS_RECVMSG {
                unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) }.ok()?
            } else {
                arg1
            };
            let [base, len] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
            Some((base, len as i64))
        }
        _ => Some((arg1, ret)),
    }
}

#[inline(always)]
fn first8(buf: u64) -> [u8; 8] {
    unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }.unwrap_or([0; 8])
}

#[inline(always)]
fn random_ids(trace: bool) -> TraceRef {
    let r = || unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
    let mut t = TraceRef::default();
    if trace {
        let (a, b, c, d) = (r(), r(), r(), r());
        t.trace_id[..4].copy_from_slice(&a);
        t.trace_id[4..8].copy_from_slice(&b);
        t.trace_id[8..12].copy_from_slice(&c);
        t.trace_id[12..].copy_from_slice(&d);
    }
    let (a, b) = (r(), r());
    t.span_id[..4].copy_from_slice(&a);
    t.span_id[4..].copy_from_slice(&b);
    // A zero span id means "none".
    if t.span_id == [0; 8] {
        t.span_id[7] = 1;
    }
    t
}

/// The first bytes of a socket's `struct sock_common`: daddr at 0, rcv_saddr at 4, dport
/// (network order) at 12, num (the local port) at 14, family at 16.
#[inline(always)]
fn sock_head(sk: u64) -> Option<[u8; 18]> {
    unsafe { bpf_probe_read_kernel(sk as *const [u8; 18]) }.ok()
}

/// Whether the socket with this `sock_head` has one of kspan's own connections on this
/// host for peer: its remote port is in SELF_PORTS and its remote address is its own or
/// loopback.
#[inline(always)]
fn serves_self(head: &[u8; 18]) -> bool {
    let dport = u16::from_be_bytes([head[12], head[13]]);
    if unsafe { SELF_PORTS.get(&dport) }.is_none() {
        return false;
    }
    let family = u16::from_ne_bytes([head[16], head[17]]);
    // IPv6 (10): the port alone (kspan's exports to a collector on this host over IPv6).
    family == 10 || head[0] == 127 || head[0..4] == head[4..8]
}

/// A socket's ends (unknown family 0 without BTF offsets for IPv6).
#[inline(always)]
fn ends_of(sk: u64, head: &[u8; 18]) -> Ends {
    let mut e = Ends {
        family: 0,
        sport: u16::from_ne_bytes([head[14], head[15]]),
        dport: u16::from_be_bytes([head[12], head[13]]),
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    let family = u16::from_ne_bytes([head[16], head[17]]);
    if family == 2 {
        e.daddr[..4].copy_from_slice(&head[0..4]);
        e.saddr[..4].copy_from_slice(&head[4..8]);
        e.family = 2;
    } else if family == 10 {
        let (doff, soff) = (
            setting_u32(&SOCK_V6_DADDR_OFFSET),
            setting_u32(&SOCK_V6_SADDR_OFFSET),
        );
        if doff != 0 && soff != 0 {
            e.daddr = unsafe { bpf_probe_read_kernel((sk + doff as u64) as *const [u8; 16]) }
                .unwrap_or([0; 16]);
            e.saddr = unsafe { bpf_probe_read_kernel((sk + soff as u64) as *const [u8; 16]) }
                .unwrap_or([0; 16]);
            e.family = 10;
        }
    }
    e
}

/// A `tcp_sock` sequence number at a BTF offset (0 when unknown).
#[inline(always)]
fn tcp_seq(sk: u64, offset: &'static u32) -> u32 {
    let off = setting_u32(offset);
    if off == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((sk + off as u64) as *const u32) }.unwrap_or(0)
}

/// Copies `n` bytes of user memory at `src` into map memory at `dst` (`n` <= `max`).
#[inline(always)]
fn copy_user(dst: *mut u8, src: u64, n: u32) -> bool {
    if n == 0 {
        return true;
    }
    unsafe { gen::bpf_probe_read_user(dst.cast(), n, src as *const _) == 0 }
}

// ---- Client requests start before their bytes leave ----

/// `tcp:tcp_sendmsg_locked` raw tracepoint: args `(struct sock *sk, struct msghdr *msg,
/// struct sk_buff *skb, int size_goal)`. It fires in the sending process before the data of
/// each segment is queued: at the first one of a syscall, a client request that starts with
/// these bytes gets its trace context, and the server end can find it.
#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    if enabled() {
        let sk: u64 = ctx.arg(0);
        on_send(sk);
    }
    0
}

#[inline(always)]
fn on_send(sk: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = starts::slot(pid_tgid as u32) else {
        return;
    };
    let start = unsafe { *slot };
    // Not a traced syscall, or a later segment of the same one.
    if start.nr1 == 0 || start.sk == sk {
        return;
    }
    unsafe { (*slot).sk = sk };
    let nr = start.nr1 - 1;
    if !writes_user_bytes(nr) {
        return;
    }
    let arg1 = if start.arg1 != 0 {
        start.arg1
    } else {
        starts::arg(start.regs as *const u64, 1, 0)
    };
    if arg1 == 0 {
        return;
    }
    let Some((buf, room)) = user_buffer(nr, arg1, i64::MAX) else {
        return;
    };
    let b = first8(buf);
    let conn = L7_CONNS.get_ptr_mut(&sk);
    let protocol = match conn {
        Some(c) => {
            let c = unsafe { &mut *c };
            if c.role != ROLE_CLIENT {
                return;
            }
            let Some(p) = detect::request(&b, room) else {
                return;
            };
            if p != c.protocol {
                return;
            }
            match c.phase {
                // A second request before the first one's response: pipelining.
                PHASE_REQUEST => {
                    c.flags |= EXCH_FLAG_PIPELINED;
                    return;
                }
                // The previous response had no known length: it ended before this request.
                PHASE_RESPONSE => emit(c, sk, EXCH_FLAG_END_AT_NEXT),
                _ => {}
            }
            begin_client(c, sk, &start, pid_tgid);
            return;
        }
        None => match detect::request(&b, room) {
            Some(p) => p,
            None => return,
        },
    };
    let Some(head) = sock_head(sk) else {
        return;
    };
    let Some(c) = new_conn(sk, protocol, ROLE_CLIENT, &head) else {
        return;
    };
    begin_client(unsafe { &mut *c }, sk, &start, pid_tgid);
}

/// Makes a connection's entry; `None` when the table is full (counted).
#[inline(always)]
fn new_conn(sk: u64, protocol: u16, role: u8, head: &[u8; 18]) -> Option<*mut Conn> {
    let scratch = EXCH_SCRATCH.get_ptr_mut(0)?;
    let c = unsafe { &mut (*scratch).conn };
    c.protocol = protocol;
    c.role = role;
    c.phase = PHASE_IDLE;
    c.flags = 0;
    c.seq = 0;
    c.req_len = 0;
    c.resp_len = 0;
    c.ends = ends_of(sk, head);
    if L7_CONNS.insert(&sk, c, 0).is_err() {
        count(Counter::L7TableFull);
        return None;
    }
    L7_CONNS.get_ptr_mut(&sk)
}

/// Common start of an exchange.
#[inline(always)]
fn begin(c: &mut Conn, start: &SyscallStart, pid_tgid: u64) {
    c.phase = PHASE_REQUEST;
    c.flags = if c.role == ROLE_CLIENT {
        EXCH_FLAG_CLIENT
    } else {
        0
    };
    c.seq = c.seq.wrapping_add(1);
    c.req_len = 0;
    c.resp_len = 0;
    c.head_request = 0;
    c.pid_tgid = pid_tgid;
    c.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    c.comm = comm();
    c.req_start_ns = start.ts;
    c.req_first_end_ns = 0;
    c.req_end_ns = 0;
    c.resp_start_ns = 0;
    c.resp_end_ns = 0;
    c.req_bytes = 0;
    c.resp_bytes = 0;
    c.resp_expect = EXPECT_UNKNOWN;
    c.parent_span_id = [0; 8];
    c.parent_kind = PARENT_NONE;
    c.trace_flags = 1;
}

/// A client request starts on `c`: its context (the request its thread serves, else new),
/// published for the server end.
#[inline(always)]
fn begin_client(c: &mut Conn, sk: u64, start: &SyscallStart, pid_tgid: u64) {
    begin(c, start, pid_tgid);
    let tid = pid_tgid as u32;
    match unsafe { SERVING.get(&tid) }.copied() {
        Some(s) if s.count == 1 && !s.ctx.is_none() => {
            c.ctx = random_ids(false);
            c.ctx.trace_id = s.ctx.trace_id;
            c.parent_span_id = s.ctx.span_id;
            c.parent_kind = PARENT_THREAD;
            c.trace_flags = s.trace_flags;
        }
        _ => c.ctx = random_ids(true),
    }
    c.req_tcp_seq = tcp_seq(sk, &TCP_SOCK_WRITE_SEQ_OFFSET);
    if c.req_tcp_seq != 0 && c.ends.family != 0 {
        let key = client_key(&c.ends);
        match CLIENT_CTX.get_ptr_mut(&key) {
            Some(p) => {
                let p = unsafe { &mut *p };
                p.ctx = c.ctx;
                p.trace_flags = c.trace_flags;
                p.seq = c.req_tcp_seq;
            }
            None => {
                let v = PeerCtx {
                    ctx: c.ctx,
                    seq: c.req_tcp_seq,
                    trace_flags: c.trace_flags,
                    _pad: [0; 3],
                };
                let _ = CLIENT_CTX.insert(&key, &v, 0);
            }
        }
    }
}

/// The key of a client connection with ends `e` (as the client sees them).
#[inline(always)]
fn client_key(e: &Ends) -> CtxKey {
    CtxKey {
        saddr: e.saddr,
        daddr: e.daddr,
        sport: e.sport,
        dport: e.dport,
        _pad: 0,
    }
}

// ---- Every transfer ----

/// A read or write on a TCP socket finished, moving `ret` (> 0) bytes: it starts, continues
/// or ends an exchange of a followed connection, or starts following one. (A BPF function of
/// its own, as are the larger steps below: inlined together they would not fit the 512-byte
/// BPF stack.)
#[inline(never)]
pub fn transfer(start: &SyscallStart, ret: i64, regs: *const u64, pid_tgid: u64, now: u64) {
    if !enabled() {
        return;
    }
    let nr = start.nr1 - 1;
    let write = match nr {
        SYS_READ | SYS_READV | SYS_RECVFROM | SYS_RECVMSG => false,
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG | SYS_SENDFILE => true,
        _ => return,
    };
    let sk = start.sk;
    // sendfile's bytes come from a file: they are counted, never read.
    let data = if nr == SYS_SENDFILE {
        None
    } else {
        let arg1 = if start.arg1 != 0 {
            start.arg1
        } else {
            starts::arg(regs, 1, 0)
        };
        user_buffer(nr, arg1, ret).map(|(buf, room)| (buf, if room < ret { room } else { ret }))
    };
    match L7_CONNS.get_ptr_mut(&sk) {
        Some(c) => on_transfer(
            unsafe { &mut *c },
            sk,
            start,
            write,
            data,
            ret,
            pid_tgid,
            now,
        ),
        None => {
            // Only a server request (read) starts following a connection here; a client
            // request was seen starting in tcp_sendmsg_locked.
            let Some((buf, moved)) = data else {
                return;
            };
            let b = first8(buf);
            let Some(protocol) = detect::request(&b, moved) else {
                return;
            };
            if write {
                // A request written on a socket tcp_sendmsg_locked did not see start (the
                // exchange began before kspan, or the table was full).
                count(Counter::L7MidStream);
                return;
            }
            let Some(head) = sock_head(sk) else {
                return;
            };
            if serves_self(&head) {
                return;
            }
            let Some(c) = new_conn(sk, protocol, ROLE_SERVER, &head) else {
                return;
            };
            let c = unsafe { &mut *c };
            begin(c, start, pid_tgid);
            request_bytes(c, sk, buf, moved as u32, ret, now);
            begin_server(c, sk, ret, pid_tgid);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn on_transfer(
    c: &mut Conn,
    sk: u64,
    start: &SyscallStart,
    write: bool,
    data: Option<(u64, i64)>,
    ret: i64,
    pid_tgid: u64,
    now: u64,
) {
    // Requests move from the client to the server.
    let request_dir = (c.role == ROLE_CLIENT) == write;
    if request_dir {
        match c.phase {
            PHASE_REQUEST => {
                if let Some((buf, moved)) = data {
                    request_bytes(c, sk, buf, moved as u32, ret, now);
                }
            }
            _ if c.role == ROLE_SERVER => {
                // The server reads again: the response before, if any, is over.
                if c.phase == PHASE_RESPONSE {
                    emit(c, sk, EXCH_FLAG_END_AT_NEXT);
                }
                let Some((buf, moved)) = data else {
                    return;
                };
                let b = first8(buf);
                if detect::request(&b, moved) != Some(c.protocol) {
                    count(Counter::L7MidStream);
                    return;
                }
                begin(c, start, pid_tgid);
                request_bytes(c, sk, buf, moved as u32, ret, now);
                begin_server(c, sk, ret, pid_tgid);
            }
            // A client's write that tcp_sendmsg_locked did not see begin a request.
            _ => count(Counter::L7MidStream),
        }
        return;
    }
    match c.phase {
        PHASE_REQUEST => {
            c.phase = PHASE_RESPONSE;
            c.resp_start_ns = start.ts;
            c.resp_end_ns = now;
            c.resp_bytes = ret as u64;
            if let Some((buf, moved)) = data {
                response_head(c, sk, buf, moved as u32);
            }
        }
        PHASE_RESPONSE => {
            c.resp_end_ns = now;
            c.resp_bytes += ret as u64;
        }
        // Response bytes after a response that ended by its length, with no request since:
        // the answer to a request that came with the one before (pipelining).
        PHASE_IDLE if c.seq != 0 => {
            continue_pipelined(c, pid_tgid);
            c.resp_start_ns = start.ts;
            c.resp_end_ns = now;
            c.resp_bytes = ret as u64;
            if let Some((buf, moved)) = data {
                response_head(c, sk, buf, moved as u32);
            }
        }
        // Response bytes before any request: nothing to attach them to.
        _ => {
            count(Counter::L7MidStream);
            return;
        }
    }
    if !response_done(c, data) {
        return;
    }
    // Bytes of this transfer beyond the response start the next one (pipelining).
    let excess = match c.resp_expect {
        EXPECT_UNKNOWN | EXPECT_CHUNKED => 0,
        n => c.resp_bytes - n,
    };
    emit(c, sk, 0);
    if excess == 0 || excess > ret as u64 {
        return;
    }
    continue_pipelined(c, pid_tgid);
    c.resp_start_ns = start.ts;
    c.resp_end_ns = now;
    c.resp_bytes = excess;
    if let Some((buf, moved)) = data {
        let off = (ret as u64 - excess) as i64;
        if off < moved {
            response_head(c, sk, buf + off as u64, (moved - off) as u32);
        }
    }
    if response_done(c, None) {
        emit(c, sk, 0);
    }
}

/// Whether the response in progress is complete (by its length, or its last chunk in the
/// transfer `data`).
#[inline(always)]
fn response_done(c: &Conn, data: Option<(u64, i64)>) -> bool {
    match c.resp_expect {
        EXPECT_UNKNOWN => false,
        EXPECT_CHUNKED => data.is_some_and(|(buf, moved)| ends_last_chunk(buf, moved)),
        n => c.resp_bytes >= n,
    }
}

/// The next exchange on `c` answers a request that moved with the previous one (pipelining):
/// its request's times are the previous one's, its bytes are in the previous record's head
/// (userspace finds it there), and its context is new (a server's caller is linked by
/// userspace, by the exchange's number on the connection).
#[inline(always)]
fn continue_pipelined(c: &mut Conn, pid_tgid: u64) {
    c.phase = PHASE_RESPONSE;
    c.flags = EXCH_FLAG_CONTINUED
        | if c.role == ROLE_CLIENT {
            EXCH_FLAG_CLIENT
        } else {
            EXCH_FLAG_UNLINKED
        };
    c.seq = c.seq.wrapping_add(1);
    c.req_len = 0;
    c.resp_len = 0;
    c.req_bytes = 0;
    c.req_tcp_seq = 0;
    c.head_request = 0;
    c.resp_expect = EXPECT_UNKNOWN;
    c.ctx.span_id = random_ids(false).span_id;
    if c.role == ROLE_SERVER || c.parent_kind != PARENT_THREAD {
        c.ctx.trace_id = random_ids(true).trace_id;
        c.parent_span_id = [0; 8];
        c.parent_kind = PARENT_NONE;
    }
    let _ = pid_tgid;
}

/// Whether the `moved` bytes at `buf` end with the last chunk of a chunked body.
#[inline(always)]
fn ends_last_chunk(buf: u64, moved: i64) -> bool {
    if moved < 5 {
        return false;
    }
    let tail: [u8; 5] = unsafe { bpf_probe_read_user((buf + moved as u64 - 5) as *const [u8; 5]) }
        .unwrap_or([0; 5]);
    tail == *b"0\r\n\r\n"
}

/// Request bytes moved: times, size, and the head while it has room.
#[inline(always)]
fn request_bytes(c: &mut Conn, sk: u64, buf: u64, moved: u32, ret: i64, now: u64) {
    if c.req_first_end_ns == 0 {
        c.req_first_end_ns = now;
        if c.req_len == 0 && buf_starts_head(buf) {
            c.head_request = 1;
        }
    }
    c.req_end_ns = now;
    c.req_bytes += ret as u64;
    let cap = setting_u32(&REQ_HEAD_BYTES).min(REQ_HEAD_MAX as u32);
    let have = c.req_len as u32;
    if have >= cap {
        return;
    }
    let n = (cap - have).min(moved);
    let heads = match L7_HEADS.get_ptr_mut(&sk) {
        Some(h) => h,
        None => {
            // A new entry: only its first bytes are written before they are read.
            let Some(scratch) = EXCH_SCRATCH.get_ptr_mut(0) else {
                return;
            };
            let blank = unsafe { &*(core::ptr::addr_of!((*scratch).rec.bytes) as *const Heads) };
            if L7_HEADS.insert(&sk, blank, 0).is_err() {
                count(Counter::L7HeadsFull);
                return;
            }
            match L7_HEADS.get_ptr_mut(&sk) {
                Some(h) => h,
                None => return,
            }
        }
    };
    let n = n as usize & (2 * REQ_HEAD_MAX - 1);
    if n > REQ_HEAD_MAX {
        return;
    }
    if have == 0 {
        if copy_user(unsafe { (*heads).req.as_mut_ptr() }, buf, n as u32) {
            c.req_len = n as u16;
        }
        return;
    }
    // A head in parts: joined in scratch (whose second half leaves room for any offset),
    // then copied back whole.
    let Some(scratch) = EXCH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let join = unsafe { &mut (*scratch).join };
    let at = have as usize & (REQ_HEAD_MAX - 1);
    unsafe {
        gen::bpf_probe_read_kernel(
            join.as_mut_ptr().cast(),
            at as u32,
            (*heads).req.as_ptr().cast(),
        )
    };
    if !copy_user(unsafe { join.as_mut_ptr().add(at) }, buf, n as u32) {
        return;
    }
    let total = (at + n).min(REQ_HEAD_MAX);
    unsafe {
        gen::bpf_probe_read_kernel(
            (*heads).req.as_mut_ptr().cast(),
            total as u32,
            join.as_ptr().cast(),
        )
    };
    c.req_len = total as u16;
}

/// Whether a request's first bytes are `HEAD ` (its response has no body).
#[inline(always)]
fn buf_starts_head(buf: u64) -> bool {
    let b = first8(buf);
    b[..5] == *b"HEAD "
}

/// The first response bytes: the head kept, and its length read.
#[inline(never)]
fn response_head(c: &mut Conn, sk: u64, buf: u64, moved: u32) {
    let Some(scratch) = EXCH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scan = unsafe { &mut (*scratch).scan };
    let n = moved.min(SCAN_MAX as u32);
    if !copy_user(scan.buf.as_mut_ptr(), buf, n & (SCAN_MAX as u32 * 2 - 1)) {
        return;
    }
    c.resp_expect = detect::response_end(c.protocol, scan, n, c.head_request != 0);
    let cap = setting_u32(&RESP_HEAD_BYTES).min(RESP_HEAD_MAX as u32);
    let keep = cap.min(n);
    if let Some(h) = L7_HEADS.get_ptr_mut(&sk) {
        let len = keep as usize & (RESP_HEAD_MAX * 2 - 1);
        if len <= RESP_HEAD_MAX {
            unsafe {
                gen::bpf_probe_read_kernel(
                    (*h).resp.as_mut_ptr().cast(),
                    len as u32,
                    scan.buf.as_ptr().cast(),
                )
            };
            c.resp_len = len as u16;
        }
    }
}

/// A server request started on `c` (its first bytes read): its context, and the thread now
/// serves it.
#[inline(never)]
fn begin_server(c: &mut Conn, sk: u64, ret: i64, pid_tgid: u64) {
    c.ctx.span_id = random_ids(false).span_id;
    // The TCP sequence number of the request's first byte: copied_seq is past what was read.
    let copied = tcp_seq(sk, &TCP_SOCK_COPIED_SEQ_OFFSET);
    c.req_tcp_seq = if copied != 0 {
        copied.wrapping_sub(ret as u32)
    } else {
        0
    };
    if !remote_parent(c, sk) && !peer_parent(c) {
        c.ctx.trace_id = random_ids(true).trace_id;
        c.parent_span_id = [0; 8];
        c.flags |= EXCH_FLAG_UNLINKED;
    }
    let tid = pid_tgid as u32;
    match SERVING.get_ptr_mut(&tid) {
        Some(p) => {
            let s = unsafe { &mut *p };
            if s.count == 0 {
                s.ctx = c.ctx;
                s.count = 1;
                s.trace_flags = c.trace_flags;
            } else {
                // Serving more than one: which one its calls belong to is not known.
                s.count = s.count.saturating_add(1);
                s.ctx = TraceRef::default();
            }
        }
        None => {
            let s = Serving {
                ctx: c.ctx,
                count: 1,
                trace_flags: c.trace_flags,
                _pad: [0; 3],
            };
            let _ = SERVING.insert(&tid, &s, 0);
        }
    }
    starts::set_serving(tid, true);
}

/// The caller's context from a `traceparent` in the request's head.
#[inline(always)]
fn remote_parent(c: &mut Conn, sk: u64) -> bool {
    let Some(h) = L7_HEADS.get_ptr_mut(&sk) else {
        return false;
    };
    let Some(scratch) = EXCH_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let scan = unsafe { &mut (*scratch).scan };
    let n = (c.req_len as u32).min(SCAN_MAX as u32);
    if n == 0 {
        return false;
    }
    unsafe {
        gen::bpf_probe_read_kernel(
            scan.buf.as_mut_ptr().cast(),
            n & (SCAN_MAX as u32 * 2 - 1),
            (*h).req.as_ptr().cast(),
        )
    };
    detect::scan_headers(scan, n);
    let at = unsafe { core::ptr::read_volatile(&scan.traceparent) };
    if at == 0 {
        return false;
    }
    let Some(flags) = detect::traceparent(scan, at, &mut c.ctx.trace_id, &mut c.parent_span_id)
    else {
        return false;
    };
    c.parent_kind = PARENT_REMOTE;
    c.trace_flags = flags;
    true
}

/// The client end of the same connection on this host: the request it sent whose first
/// byte has the sequence number of this one's.
#[inline(always)]
fn peer_parent(c: &mut Conn) -> bool {
    if c.req_tcp_seq == 0 || c.ends.family == 0 {
        return false;
    }
    // The client's ends are this end's, swapped.
    let key = CtxKey {
        saddr: c.ends.daddr,
        daddr: c.ends.saddr,
        sport: c.ends.dport,
        dport: c.ends.sport,
        _pad: 0,
    };
    let Some(p) = CLIENT_CTX.get_ptr_mut(&key) else {
        return false;
    };
    let p = unsafe { &mut *p };
    // Its last request is not this one (no context for this one was published).
    if p.seq != c.req_tcp_seq {
        return false;
    }
    p.seq = 0;
    let p = *p;
    c.ctx.trace_id = p.ctx.trace_id;
    c.parent_span_id = p.ctx.span_id;
    c.parent_kind = PARENT_PEER;
    c.trace_flags = p.trace_flags;
    true
}

/// The request span thread `tid` serves, if it serves exactly one (for the spans of its
/// syscalls and connects).
#[inline(always)]
pub fn serving(tid: u32) -> TraceRef {
    if !enabled() {
        return TraceRef::default();
    }
    match unsafe { SERVING.get(&tid) } {
        Some(s) if s.count == 1 => s.ctx,
        _ => TraceRef::default(),
    }
}

/// Sends the exchange in progress on `c` and makes the connection idle.
#[inline(never)]
fn emit(c: &mut Conn, sk: u64, extra: u32) {
    c.phase = PHASE_IDLE;
    // (A pipelined request's exchange never made its thread serve it.)
    if c.role == ROLE_SERVER && c.flags & EXCH_FLAG_CONTINUED == 0 {
        done_serving(c);
    }
    let Some(scratch) = EXCH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut (*scratch).rec };
    let flags = c.flags | extra;
    let end = if c.resp_end_ns != 0 {
        c.resp_end_ns
    } else {
        c.req_end_ns
    };
    let start = if c.role == ROLE_CLIENT {
        c.req_start_ns
    } else {
        c.req_first_end_ns
    };
    let mut req_len = c.req_len as usize;
    let mut resp_len = c.resp_len as usize;
    match L7_HEADS.get_ptr_mut(&sk) {
        Some(h) => {
            if req_len > REQ_HEAD_MAX {
                req_len = REQ_HEAD_MAX;
            }
            if resp_len > RESP_HEAD_MAX {
                resp_len = RESP_HEAD_MAX;
            }
            unsafe {
                gen::bpf_probe_read_kernel(
                    rec.bytes.as_mut_ptr().cast(),
                    req_len as u32,
                    (*h).req.as_ptr().cast(),
                );
                gen::bpf_probe_read_kernel(
                    rec.bytes.as_mut_ptr().add(req_len).cast(),
                    resp_len as u32,
                    (*h).resp.as_ptr().cast(),
                );
            }
        }
        None => {
            req_len = 0;
            resp_len = 0;
        }
    }
    // Field by field, in place: a whole ExchangeEvent would not fit the BPF stack of the
    // programs that end exchanges.
    let h = &mut rec.event.header;
    h.kind = EventKind::Exchange as u32;
    h.flags = flags;
    h.pid = (c.pid_tgid >> 32) as u32;
    h.tid = c.pid_tgid as u32;
    h.start_ns = start;
    h.duration_ns = end.saturating_sub(start);
    h.cgroup_id = c.cgroup_id;
    h.comm = c.comm;
    let d = &mut rec.event.data;
    d.sk = sk;
    d.req_start_ns = c.req_start_ns;
    d.req_first_end_ns = c.req_first_end_ns;
    d.req_end_ns = c.req_end_ns;
    d.resp_start_ns = c.resp_start_ns;
    d.resp_end_ns = c.resp_end_ns;
    d.req_bytes = c.req_bytes;
    d.resp_bytes = c.resp_bytes;
    d.ctx = c.ctx;
    d.parent_span_id = c.parent_span_id;
    d.seq = c.seq;
    d.req_tcp_seq = c.req_tcp_seq;
    d.protocol = c.protocol;
    d.family = c.ends.family;
    d.sport = c.ends.sport;
    d.dport = c.ends.dport;
    d.req_len = req_len as u16;
    d.resp_len = resp_len as u16;
    d.trace_flags = c.trace_flags;
    d.parent_kind = c.parent_kind;
    d._pad = [0; 2];
    d.saddr = c.ends.saddr;
    d.daddr = c.ends.daddr;
    output(rec, req_len + resp_len);
}

/// The thread that read a server request no longer serves it.
#[inline(always)]
fn done_serving(c: &Conn) {
    let tid = c.pid_tgid as u32;
    let Some(s) = SERVING.get_ptr_mut(&tid) else {
        return;
    };
    let s = unsafe { &mut *s };
    if s.count <= 1 {
        s.count = 0;
        s.ctx = TraceRef::default();
        starts::set_serving(tid, false);
        return;
    }
    s.count -= 1;
    // Which of the others remains is not known here.
    s.ctx = TraceRef::default();
}

/// Sends the first `size_of::<ExchangeEvent>() + n` bytes of `rec` to the ring buffer.
#[inline(always)]
fn output(rec: &ExchangeRecord, n: usize) {
    if n > REQ_HEAD_MAX + RESP_HEAD_MAX {
        return;
    }
    let size = core::mem::size_of::<ExchangeEvent>() + n;
    // SAFETY: `size` is within the record; ExchangeRecord has no padding, so every byte is set.
    let bytes =
        unsafe { core::slice::from_raw_parts((rec as *const ExchangeRecord).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
        count(Counter::RingbufFull);
    } else {
        count(Counter::Submitted);
    }
}

/// Marks the current thread's in-flight syscall (if any) as moving bytes on socket `sk`.
#[inline(always)]
pub fn mark_socket_transfer(sk: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = starts::slot(tid) {
        if unsafe { (*p).nr1 } != 0 {
            unsafe { (*p).sk = sk };
        }
    }
}

/// kspan itself started connecting `sk` (SYN_SENT): its local port is not chosen yet.
#[inline(always)]
pub fn self_connecting(sk: u64) {
    if enabled() {
        let _ = SELF_SOCKS.insert(&sk, &0, 0);
    }
}

/// `sk` is established: if it is one of kspan's own, its local port is remembered. Returns
/// whether it was kspan's.
#[inline(always)]
pub fn self_established(sk: u64, sport: u16) -> bool {
    match SELF_SOCKS.get_ptr_mut(&sk) {
        Some(p) => {
            unsafe { *p = sport };
            let _ = SELF_PORTS.insert(&sport, &1, 0);
            true
        }
        None => false,
    }
}

/// `sk` closed: the exchange in progress on it ends here, and kspan's own port is forgotten.
/// A function of its own (a BPF-to-BPF call): inlined, its stack and the TCP program's would
/// not fit together.
#[inline(never)]
pub fn socket_closed(sk: u64, now: u64) {
    if let Some(c) = L7_CONNS.get_ptr_mut(&sk) {
        let c = unsafe { &mut *c };
        match c.phase {
            PHASE_REQUEST => {
                c.req_end_ns = if c.req_end_ns == 0 { now } else { c.req_end_ns };
                emit(c, sk, EXCH_FLAG_CLOSED | EXCH_FLAG_NO_RESPONSE);
            }
            PHASE_RESPONSE => {
                // A response without a length (HTTP/1.0, `Connection: close`) ends here.
                emit(c, sk, EXCH_FLAG_CLOSED);
            }
            _ => {}
        }
        if c.role == ROLE_CLIENT && c.ends.family != 0 {
            let _ = CLIENT_CTX.remove(&client_key(&c.ends));
        }
        let _ = L7_CONNS.remove(&sk);
        let _ = L7_HEADS.remove(&sk);
    }
    if let Some(sport) = unsafe { SELF_SOCKS.get(&sk) }.copied() {
        let _ = SELF_SOCKS.remove(&sk);
        if sport != 0 {
            let _ = SELF_PORTS.remove(&sport);
        }
    }
}
