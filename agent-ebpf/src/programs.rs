use agent_common::{
    log2_bucket, Counter, EventHeader, EventKind, HttpData, HttpEvent, HttpRecord, ProcHistKey,
    SyscallData, SyscallEvent, SyscallStart, TcpData, TcpEvent, COMM_LEN, COUNTERS_LEN,
    EXPECTED_ERRNO_LIMIT, FILTER_CGROUP, FILTER_COMM, FILTER_PID, FILTER_SYSCALL, HIST_BUCKETS,
    HTTP_FLAG_CLOSE, HTTP_FLAG_START, HTTP_FLAG_WRITE, HTTP_PREFIX_MAX, MAX_SYSCALLS,
    SYSCALL_FLAG_EXPECTED, TCP_FLAG_FAILED, TCP_FLAG_HANDSHAKE_UNKNOWN, TCP_FLAG_PASSIVE,
    TCP_FLAG_PID_UNKNOWN, TCP_HIST_ACCEPT, TCP_HIST_CONNECT,
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};

// ---- Settings, written by userspace at load time (EbpfLoader::set_global). ----
// Read with read_volatile: otherwise the compiler folds in the defaults.

/// tgid of the agent itself: never traced.
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;
/// `FILTER_*` bits of the filters in force.
#[unsafe(no_mangle)]
static FILTER_FLAGS: u32 = 0;
/// cgroup id selected when `FILTER_CGROUP` is set.
#[unsafe(no_mangle)]
static FILTER_CGROUP_ID: u64 = 0;
/// Syscalls shorter than this (ns) only count in histograms, unless they failed.
#[unsafe(no_mangle)]
static MIN_DURATION_NS: u64 = 0;
/// 1: syscall events go to the ring buffer; 0: histograms only.
#[unsafe(no_mangle)]
static EMIT_SYSCALLS: u32 = 1;
/// 1: also emit failed syscalls shorter than MIN_DURATION_NS.
#[unsafe(no_mangle)]
static EMIT_FAILED: u32 = 1;
/// 1: keep per-process histograms too.
#[unsafe(no_mangle)]
static PROC_HIST: u32 = 0;
/// 1: per-thread starts live in `STARTS_ARRAY` (indexed by tid); 0: in `STARTS_HASH`.
#[unsafe(no_mangle)]
static STARTS_IN_ARRAY: u32 = 1;
/// Wake the reader when this many bytes wait in the ring buffer (0: never; the reader's
/// timer alone drains it). Below it, events are submitted without a wake-up.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;
/// Above this many bytes waiting in the ring buffer, ordinary syscall events (not failures)
/// are shed and counted (`RingbufShed`), keeping the rest of the room for failures and TCP
/// events. 0: never.
#[unsafe(no_mangle)]
static SHED_BYTES: u64 = 0;
/// 1: TCP programs emit events; 0: histograms only.
#[unsafe(no_mangle)]
static EMIT_TCP: u32 = 1;
/// Byte offset of `tcp_sock.srtt_us` from the kernel's BTF; 0: unknown.
#[unsafe(no_mangle)]
static TCP_SOCK_SRTT_US_OFFSET: u32 = 0;
/// Byte offset of `tcp_request_sock.snt_synack` from the kernel's BTF; 0: unknown.
#[unsafe(no_mangle)]
static TCP_REQ_SNT_SYNACK_OFFSET: u32 = 0;

/// Bytes of each HTTP transfer copied to userspace (at most `HTTP_PREFIX_MAX`); 0: HTTP
/// capture off.
#[unsafe(no_mangle)]
static HTTP_PREFIX: u32 = 0;
/// Byte offsets of `sock_common.skc_v6_daddr` and `skc_v6_rcv_saddr` from the kernel's BTF;
/// 0: unknown (IPv6 HTTP records then carry no addresses).
#[unsafe(no_mangle)]
static SOCK_V6_DADDR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_V6_SADDR_OFFSET: u32 = 0;

#[inline(always)]
fn setting_u32(v: &'static u32) -> u32 {
    unsafe { core::ptr::read_volatile(v) }
}
#[inline(always)]
fn setting_u64(v: &'static u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

// ---- Maps ----

/// All events. Size set by userspace.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Settings userspace changes while running (globals are frozen at load). Index 0: a minimum
/// duration (ns) that overrides MIN_DURATION_NS when larger (the overhead governor).
#[map]
static RUNTIME: Array<u64> = Array::with_max_entries(1, 0);

/// In-flight syscall starts, indexed by tid. max_entries set to pid_max by userspace.
#[map]
static STARTS_ARRAY: Array<SyscallStart> = Array::with_max_entries(1, 0);

/// In-flight syscall starts keyed by tid, used when pid_max is too large for an array.
#[map]
static STARTS_HASH: HashMap<u32, SyscallStart> = HashMap::with_max_entries(1, 0);

/// Per-syscall log2 histograms: index `nr * HIST_BUCKETS + bucket`.
#[map]
static SYSCALL_HIST: PerCpuArray<u64> =
    PerCpuArray::with_max_entries((MAX_SYSCALLS * HIST_BUCKETS) as u32, 0);

/// 1 at the index of every syscall number counted so far: userspace reads the histograms
/// (64 per-CPU slots each) of these only, not of all 512 numbers.
#[map]
static SYSCALL_SEEN: Array<u32> = Array::with_max_entries(MAX_SYSCALLS as u32, 0);

/// Failed calls (return value < 0) per syscall number.
#[map]
static SYSCALL_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SYSCALLS as u32, 0);

/// Per-process, per-syscall log2 histograms; bucket `HIST_BUCKETS` counts failed calls.
#[map]
static PROC_HIST_MAP: PerCpuHashMap<ProcHistKey, u64> = PerCpuHashMap::with_max_entries(1, 0);

/// TCP connect and accept latency histograms: index `which * HIST_BUCKETS + bucket`.
#[map]
static TCP_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * HIST_BUCKETS as u32, 0);

/// Selected tgids (FILTER_PID).
#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Expected outcomes per syscall number: bit e of the pair is set when errno e is a normal
/// result of that syscall (not a failure a user would call one). Filled by userspace.
#[map]
static EXPECTED_ERRNOS: Array<[u64; 2]> = Array::with_max_entries(MAX_SYSCALLS as u32, 0);

/// Selected comms (FILTER_COMM).
#[map]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

/// Selected syscalls (FILTER_SYSCALL): 1 at the index of each selected syscall number.
#[map]
static FILTER_SYSCALLS: Array<u32> = Array::with_max_entries(MAX_SYSCALLS as u32, 0);

/// Who owns a socket, captured in process context.
#[repr(C)]
#[derive(Clone, Copy)]
struct Owner {
    pid_tgid: u64,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
}

/// A connection being followed: connecting (SYN_SENT) or established.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    owner: Owner,
    /// SYN_SENT time (connecting) or ESTABLISHED time (established), monotonic ns.
    ts: u64,
    retransmits: u32,
    /// TCP_FLAG_* bits; bit 31 = a RST was received while connecting.
    flags: u32,
}
const CONN_RST: u32 = 1 << 31;

/// Connections keyed by socket address.
#[map]
static CONNS: LruHashMap<u64, Conn> = LruHashMap::with_max_entries(65536, 0);

/// A pending passive open, named as both tracepoints name it: remote address (IPv4 as
/// v4-mapped IPv6), local port, remote port.
#[repr(C)]
#[derive(Clone, Copy)]
struct SynKey {
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
}

/// A passive open whose SYN-ACK was retransmitted: when the first SYN-ACK went out
/// (monotonic ns, 0 if unknown) and how many retransmits followed.
#[repr(C)]
#[derive(Clone, Copy)]
struct Synack {
    first_ns: u64,
    retransmits: u32,
    _pad: u32,
}

/// Passive opens whose SYN-ACK was retransmitted, until the handshake completes. LRU: opens
/// that never complete (SYN floods, scans) age out.
#[map]
static SYNACKS: LruHashMap<SynKey, Synack> = LruHashMap::with_max_entries(4096, 0);

/// Listening sockets' owners keyed by local port.
#[map]
static LISTENERS: HashMap<u16, Owner> = HashMap::with_max_entries(4096, 0);

/// Accepted connections whose listener's owner is unknown (it was listening before kspan
/// started), keyed by socket address: the accept event, held until the first send or receive
/// on the socket names the process that owns it (or until it closes). LRU: a connection
/// never used and never closed ages out.
#[map]
static PENDING_ACCEPTS: LruHashMap<u64, TcpEvent> = LruHashMap::with_max_entries(8192, 0);

/// TCP sockets that carried an HTTP/1.x message start: every later transfer on them goes to
/// userspace too (bodies, split headers), until close. LRU: sockets whose close kspan missed
/// age out.
#[map]
static HTTP_SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Local ports of kspan's own TCP connections (its exports): an HTTP server on this host
/// reading from one of them is serving kspan, and is not followed (its spans would describe
/// kspan's exports, which would make more exports).
#[map]
static SELF_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// kspan's own connecting sockets: at SYN_SENT the local port is not chosen yet, so the port
/// goes to SELF_PORTS when the connection is established.
#[map]
static SELF_SOCKS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU room to build an HTTP record (too large for the stack) before it is copied to the
/// ring buffer at its real length.
#[map]
static HTTP_SCRATCH: PerCpuArray<HttpRecord> = PerCpuArray::with_max_entries(1, 0);

/// Submit flags: no wake-up, unless the ring buffer holds WAKEUP_BYTES or more.
#[inline(always)]
fn submit_flags() -> u64 {
    submit_flags_at(ring_fill())
}

/// Bytes waiting in the ring buffer.
#[inline(always)]
fn ring_fill() -> u64 {
    EVENTS.query(BPF_RB_AVAIL_DATA as u64)
}

/// Submit flags for a ring buffer holding `fill` bytes.
#[inline(always)]
fn submit_flags_at(fill: u64) -> u64 {
    let threshold = setting_u64(&WAKEUP_BYTES);
    if threshold != 0 && fill >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0u8; COMM_LEN])
}

/// Process filters (pid, comm, cgroup) and self exclusion. `true`: trace this task.
#[inline(always)]
fn task_selected(pid_tgid: u64, flags: u32) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == setting_u32(&SELF_TGID) {
        return false;
    }
    if flags & FILTER_PID != 0 && unsafe { FILTER_PIDS.get(&tgid) }.is_none() {
        return false;
    }
    if flags & FILTER_CGROUP != 0
        && unsafe { bpf_get_current_cgroup_id() } != setting_u64(&FILTER_CGROUP_ID)
    {
        return false;
    }
    if flags & FILTER_COMM != 0 && unsafe { FILTER_COMMS.get(&comm()) }.is_none() {
        return false;
    }
    true
}

// ---- Syscalls ----

/// Common sys_enter logic. Returns early for anything not selected.
#[inline(always)]
fn on_sys_enter(nr: i64, arg0: u64, arg1: u64) {
    if nr < 0 || nr >= MAX_SYSCALLS as i64 {
        return;
    }
    // exit and exit_group never return: no sys_exit would free the slot.
    if nr == 60 || nr == 231 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let flags = setting_u32(&FILTER_FLAGS);
    if flags & FILTER_SYSCALL != 0 {
        match FILTER_SYSCALLS.get(nr as u32) {
            Some(v) if *v != 0 => {}
            _ => return,
        }
    }
    if !task_selected(pid_tgid, flags) {
        return;
    }
    let tid = pid_tgid as u32;
    let start = SyscallStart {
        ts: unsafe { bpf_ktime_get_ns() },
        arg0,
        arg1,
        sk: 0,
        nr1: nr as u32 + 1,
        _pad: 0,
    };
    if setting_u32(&STARTS_IN_ARRAY) != 0 {
        match STARTS_ARRAY.get_ptr_mut(tid) {
            Some(p) => unsafe { *p = start },
            None => count(Counter::StartTableFull),
        }
    } else if STARTS_HASH.insert(&tid, &start, 0).is_err() {
        count(Counter::StartTableFull);
    }
}

#[inline(always)]
fn proc_hist_add(pid_tgid: u64, nr: u32, bucket: u32) {
    let key = ProcHistKey {
        pid: (pid_tgid >> 32) as u32,
        nr: nr as u16,
        bucket: bucket as u16,
    };
    match PROC_HIST_MAP.get_ptr_mut(&key) {
        Some(p) => unsafe { *p += 1 },
        None => {
            if PROC_HIST_MAP.insert(&key, &1, BPF_NOEXIST as u64).is_err() {
                // Inserted meanwhile on another CPU: count on this one. Otherwise the map is
                // full: the call is not counted per process, and that is counted.
                match PROC_HIST_MAP.get_ptr_mut(&key) {
                    Some(p) => unsafe { *p += 1 },
                    // Counted once per call: for its latency bucket, not its error slot.
                    None if bucket < HIST_BUCKETS as u32 => count(Counter::ProcHistFull),
                    None => {}
                }
            }
        }
    }
}

/// Common sys_exit logic. With `regs` (raw tracepoint), arguments are read from the saved
/// user registers only when an event is made, not on every syscall.
#[inline(always)]
fn on_sys_exit(ret: i64, regs: *const u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let start = if setting_u32(&STARTS_IN_ARRAY) != 0 {
        let Some(p) = STARTS_ARRAY.get_ptr_mut(tid) else {
            return;
        };
        let s = unsafe { *p };
        if s.nr1 == 0 {
            return;
        }
        unsafe { (*p).nr1 = 0 };
        s
    } else {
        let Some(s) = (unsafe { STARTS_HASH.get(&tid) }).copied() else {
            return;
        };
        let _ = STARTS_HASH.remove(&tid);
        s
    };
    syscall_done(&start, ret, regs, pid_tgid, now);
    // After the syscall's own event: userspace sees the call before the HTTP message it ends.
    if start.sk != 0 && ret > 0 {
        http_transfer(&start, ret, regs, pid_tgid, now);
    }
}

/// Histograms and the syscall event of a finished call.
#[inline(always)]
fn syscall_done(start: &SyscallStart, ret: i64, regs: *const u64, pid_tgid: u64, now: u64) {
    let tid = pid_tgid as u32;
    let nr = start.nr1 - 1;
    if nr as usize >= MAX_SYSCALLS {
        return;
    }
    let duration = now.saturating_sub(start.ts);
    let bucket = log2_bucket(duration);
    let idx = (nr & (MAX_SYSCALLS as u32 - 1)) * HIST_BUCKETS as u32 + (bucket & 63);
    if let Some(p) = SYSCALL_HIST.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
    // Written once per syscall number: after that a read of a shared, unchanging line.
    if let Some(p) = SYSCALL_SEEN.get_ptr_mut(nr & (MAX_SYSCALLS as u32 - 1)) {
        if unsafe { *p } == 0 {
            unsafe { *p = 1 };
        }
    }
    if ret < 0 {
        if let Some(p) = SYSCALL_ERRORS.get_ptr_mut(nr & (MAX_SYSCALLS as u32 - 1)) {
            unsafe { *p += 1 };
        }
    }
    if setting_u32(&PROC_HIST) != 0 {
        proc_hist_add(pid_tgid, nr, bucket);
        if ret < 0 {
            proc_hist_add(pid_tgid, nr, HIST_BUCKETS as u32);
        }
    }
    if setting_u32(&EMIT_SYSCALLS) == 0 {
        return;
    }
    // An expected outcome (EAGAIN, ENOENT while probing paths...) counts like a success: a
    // flood of them never reaches the ring buffer unless the calls are slow.
    let expected = ret < 0 && errno_expected(nr, ret);
    let failed = ret < 0 && !expected && setting_u32(&EMIT_FAILED) != 0;
    let governed = RUNTIME.get(0).copied().unwrap_or(0);
    if duration < setting_u64(&MIN_DURATION_NS).max(governed) && !failed {
        return;
    }
    // One look at the fill level serves both the shedding and the wake-up decision.
    let fill = ring_fill();
    let shed = setting_u64(&SHED_BYTES);
    if !failed && shed != 0 && fill >= shed {
        count(Counter::RingbufShed);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(SyscallEvent {
        header: EventHeader {
            kind: EventKind::Syscall as u32,
            flags: if expected { SYSCALL_FLAG_EXPECTED } else { 0 },
            pid: (pid_tgid >> 32) as u32,
            tid,
            start_ns: start.ts,
            duration_ns: duration,
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: comm(),
        },
        data: SyscallData {
            nr,
            _pad: 0,
            ret,
            arg0: syscall_arg(regs, 0, start.arg0),
        },
    });
    entry.submit(submit_flags_at(fill));
    count(Counter::Submitted);
}

/// The `n`th (0 or 1) syscall argument: from the saved user registers (raw tracepoints) or
/// as saved at entry (classic tracepoints).
#[inline(always)]
fn syscall_arg(regs: *const u64, n: usize, saved: u64) -> u64 {
    if regs.is_null() {
        return saved;
    }
    // x86_64 pt_regs: di (argument 1) is the 15th u64, si (argument 2) the 14th.
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(14 - n)) }.unwrap_or(0)
}

// ---- HTTP ----

const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_READV: u32 = 19;
const SYS_WRITEV: u32 = 20;
const SYS_SENDTO: u32 = 44;
const SYS_RECVFROM: u32 = 45;
const SYS_SENDMSG: u32 = 46;
const SYS_RECVMSG: u32 = 47;

/// Whether the first bytes of a transfer start an HTTP/1.x message: a method and a space, or
/// `HTTP/1.`. `len`: bytes moved (the rest of `b` may be anything).
#[inline(always)]
fn http_start(b: &[u8; 8], len: i64) -> bool {
    let starts = |p: &[u8]| len >= p.len() as i64 && b[..p.len()] == *p;
    match b[0] {
        b'G' => starts(b"GET "),
        b'P' => starts(b"POST ") || starts(b"PUT ") || starts(b"PATCH "),
        b'H' => starts(b"HTTP/1.") || starts(b"HEAD "),
        b'D' => starts(b"DELETE "),
        b'O' => starts(b"OPTIONS "),
        b'C' => starts(b"CONNECT "),
        b'T' => starts(b"TRACE "),
        _ => false,
    }
}

/// A read or write on a TCP socket finished, moving `ret` (> 0) bytes: if its bytes start an
/// HTTP message, or its socket carried one before, its first bytes go to userspace.
#[inline(always)]
fn http_transfer(start: &SyscallStart, ret: i64, regs: *const u64, pid_tgid: u64, now: u64) {
    let prefix = setting_u32(&HTTP_PREFIX);
    if prefix == 0 {
        return;
    }
    let nr = start.nr1 - 1;
    let write = match nr {
        SYS_READ | SYS_READV | SYS_RECVFROM | SYS_RECVMSG => false,
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG => true,
        _ => return,
    };
    let arg1 = syscall_arg(regs, 1, start.arg1);
    // Where the bytes are: the buffer, or the first iovec's (readv/writev: the iovec array;
    // sendmsg/recvmsg: the msghdr, whose msg_iov is at 16).
    let (buf, room) = match nr {
        SYS_READV | SYS_WRITEV | SYS_SENDMSG | SYS_RECVMSG => {
            let iov = if nr == SYS_SENDMSG || nr == SYS_RECVMSG {
                match unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) } {
                    Ok(p) => p,
                    Err(_) => return,
                }
            } else {
                arg1
            };
            match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
                Ok([base, len]) => (base, len as i64),
                Err(_) => return,
            }
        }
        _ => (arg1, ret),
    };
    let moved = if room < ret { room } else { ret };
    let first: [u8; 8] = unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }.unwrap_or([0; 8]);
    let is_start = http_start(&first, moved);
    let followed = unsafe { HTTP_SOCKS.get(&start.sk) }.is_some();
    if !is_start && !followed {
        return;
    }
    let head = sock_head(start.sk);
    if !followed {
        if head.as_ref().is_some_and(serves_self) {
            return;
        }
        if HTTP_SOCKS.insert(&start.sk, &1, 0).is_err() {
            count(Counter::HttpTableFull);
        }
    }
    let Some(rec) = HTTP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mut n = if moved < prefix as i64 {
        moved as u32
    } else {
        prefix
    };
    if n > HTTP_PREFIX_MAX as u32 {
        n = HTTP_PREFIX_MAX as u32;
    }
    let rec = unsafe { &mut *rec };
    let mut flags = if write { HTTP_FLAG_WRITE } else { 0 };
    if is_start {
        flags |= HTTP_FLAG_START;
    }
    if bpf_probe_read_user_buf_bounded(buf, &mut rec.buf, n).is_err() {
        n = 0;
    }
    rec.event = HttpEvent {
        header: EventHeader {
            kind: EventKind::Http as u32,
            flags,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            start_ns: start.ts,
            duration_ns: now.saturating_sub(start.ts),
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: comm(),
        },
        data: http_data(
            start.sk,
            head.as_ref(),
            syscall_arg(regs, 0, start.arg0),
            ret as u64,
            nr,
            n,
        ),
    };
    output_http(rec, n);
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

/// Copies `n` (<= HTTP_PREFIX_MAX) bytes of user memory at `src` into `dst`.
#[inline(always)]
fn bpf_probe_read_user_buf_bounded(
    src: u64,
    dst: &mut [u8; HTTP_PREFIX_MAX],
    n: u32,
) -> Result<(), i32> {
    let n = n as usize;
    if n == 0 || n > HTTP_PREFIX_MAX {
        return Ok(());
    }
    unsafe { bpf_probe_read_user_buf(src as *const u8, &mut dst[..n]) }
}

/// Sends the first `size_of::<HttpEvent>() + n` bytes of `rec` to the ring buffer.
#[inline(always)]
fn output_http(rec: &HttpRecord, n: u32) {
    let n = n as usize;
    if n > HTTP_PREFIX_MAX {
        return;
    }
    let size = core::mem::size_of::<HttpEvent>() + n;
    // SAFETY: `size` is within the record; HttpRecord has no padding, so every byte is set.
    let bytes =
        unsafe { core::slice::from_raw_parts((rec as *const HttpRecord).cast::<u8>(), size) };
    let ret = EVENTS.output::<[u8]>(bytes, submit_flags());
    if ret.is_err() {
        count(Counter::RingbufFull);
    } else {
        count(Counter::Submitted);
    }
}

/// A followed HTTP socket closed: userspace ends what was in flight on it.
#[inline(always)]
fn http_close(skaddr: u64, now: u64) {
    if HTTP_SOCKS.remove(&skaddr).is_err() {
        return;
    }
    let Some(rec) = HTTP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    rec.event = HttpEvent {
        header: EventHeader {
            kind: EventKind::Http as u32,
            flags: HTTP_FLAG_CLOSE,
            pid: 0,
            tid: 0,
            start_ns: now,
            duration_ns: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        },
        data: http_data(skaddr, sock_head(skaddr).as_ref(), 0, 0, 0, 0),
    };
    output_http(rec, 0);
}

/// An HTTP record's payload, with the socket's ends from its `sock_head` (unknown without
/// one) and, for IPv6, the addresses at the offsets BTF gave.
#[inline(always)]
fn http_data(
    sk: u64,
    head: Option<&[u8; 18]>,
    fd: u64,
    len: u64,
    nr: u32,
    captured: u32,
) -> HttpData {
    let mut d = HttpData {
        sk,
        fd,
        len,
        nr,
        captured,
        family: 0,
        sport: 0,
        dport: 0,
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    let Some(head) = head else {
        return d;
    };
    let family = u16::from_ne_bytes([head[16], head[17]]);
    d.dport = u16::from_be_bytes([head[12], head[13]]);
    d.sport = u16::from_ne_bytes([head[14], head[15]]);
    if family == 2 {
        d.daddr[..4].copy_from_slice(&head[0..4]);
        d.saddr[..4].copy_from_slice(&head[4..8]);
    } else if family == 10 {
        let (doff, soff) = (
            setting_u32(&SOCK_V6_DADDR_OFFSET),
            setting_u32(&SOCK_V6_SADDR_OFFSET),
        );
        if doff == 0 || soff == 0 {
            return d;
        }
        d.daddr = unsafe { bpf_probe_read_kernel((sk + doff as u64) as *const [u8; 16]) }
            .unwrap_or([0; 16]);
        d.saddr = unsafe { bpf_probe_read_kernel((sk + soff as u64) as *const [u8; 16]) }
            .unwrap_or([0; 16]);
    } else {
        return d;
    }
    d.family = family;
    d
}

/// Whether `-ret` is listed as an expected outcome of syscall `nr`.
#[inline(always)]
fn errno_expected(nr: u32, ret: i64) -> bool {
    let errno = (-ret) as u64;
    // ERESTARTSYS .. ERESTART_RESTARTBLOCK (512-516): kernel-internal, the call is restarted
    // after a signal; the program never sees them.
    if (512..=516).contains(&errno) {
        return true;
    }
    if errno >= EXPECTED_ERRNO_LIMIT as u64 {
        return false;
    }
    match EXPECTED_ERRNOS.get(nr & (MAX_SYSCALLS as u32 - 1)) {
        Some(bits) => bits[(errno >> 6) as usize & 1] & (1u64 << (errno & 63)) != 0,
        None => false,
    }
}

/// `raw_syscalls:sys_enter` raw tracepoint: args `(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    on_sys_enter(id, 0, 0);
    0
}

/// `raw_syscalls:sys_exit` raw tracepoint: args `(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    on_sys_exit(ret, regs);
    0
}

/// `raw_syscalls:sys_enter` classic tracepoint: `long id` at 8, `unsigned long args[6]` at 16.
#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn sys_enter_tp(ctx: TracePointContext) -> u32 {
    let id: i64 = unsafe { ctx.read_at(8) }.unwrap_or(-1);
    let arg0: u64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    let arg1: u64 = unsafe { ctx.read_at(24) }.unwrap_or(0);
    on_sys_enter(id, arg0, arg1);
    0
}

/// `raw_syscalls:sys_exit` classic tracepoint: `long id` at 8, `long ret` at 16.
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit_tp(ctx: TracePointContext) -> u32 {
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    on_sys_exit(ret, core::ptr::null());
    0
}

// ---- TCP ----

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;
const ECONNREFUSED: u32 = 111;
const ETIMEDOUT: u32 = 110;

/// Owner of the current task if it passes the filters.
#[inline(always)]
fn current_owner() -> Option<Owner> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !task_selected(pid_tgid, setting_u32(&FILTER_FLAGS)) {
        return None;
    }
    Some(Owner {
        pid_tgid,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: comm(),
    })
}

#[inline(always)]
fn tcp_hist(which: u32, duration: u64) {
    let idx = (which & 1) * HIST_BUCKETS as u32 + (log2_bucket(duration) & 63);
    if let Some(p) = TCP_HIST.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// The payload of a TCP event, reading ports and addresses from the `inet_sock_set_state`
/// record.
#[inline(always)]
fn tcp_data(ctx: &TracePointContext, skaddr: u64, retransmits: u32, error: u32) -> TcpData {
    let family: u16 = unsafe { ctx.read_at(28) }.unwrap_or(0);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == 2 {
        let s: [u8; 4] = unsafe { ctx.read_at(32) }.unwrap_or([0; 4]);
        let d: [u8; 4] = unsafe { ctx.read_at(36) }.unwrap_or([0; 4]);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else {
        saddr = unsafe { ctx.read_at(40) }.unwrap_or([0; 16]);
        daddr = unsafe { ctx.read_at(56) }.unwrap_or([0; 16]);
    }
    TcpData {
        skaddr,
        family,
        sport: unsafe { ctx.read_at(24) }.unwrap_or(0),
        dport: unsafe { ctx.read_at(26) }.unwrap_or(0),
        _pad: 0,
        saddr,
        daddr,
        retransmits,
        error,
    }
}

#[inline(always)]
fn tcp_header(
    kind: EventKind,
    owner: &Owner,
    flags: u32,
    start: u64,
    duration: u64,
) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        flags,
        pid: (owner.pid_tgid >> 32) as u32,
        tid: owner.pid_tgid as u32,
        start_ns: start,
        duration_ns: duration,
        cgroup_id: owner.cgroup_id,
        comm: owner.comm,
    }
}

/// Puts a TCP event into the ring buffer (when TCP events are on).
#[inline(always)]
fn submit_tcp(ev: &TcpEvent) {
    if setting_u32(&EMIT_TCP) == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(*ev);
    entry.submit(submit_flags());
    count(Counter::Submitted);
}

/// Emits a TCP event, reading ports and addresses from the `inet_sock_set_state` record.
#[inline(always)]
fn emit_tcp(
    ctx: &TracePointContext,
    kind: EventKind,
    owner: &Owner,
    flags: u32,
    start: u64,
    duration: u64,
    skaddr: u64,
    retransmits: u32,
    error: u32,
) {
    if setting_u32(&EMIT_TCP) == 0 {
        return;
    }
    submit_tcp(&TcpEvent {
        header: tcp_header(kind, owner, flags, start, duration),
        data: tcp_data(ctx, skaddr, retransmits, error),
    });
}

/// Any of the process filters (pid, comm, cgroup) in force.
#[inline(always)]
fn process_filters_on() -> bool {
    setting_u32(&FILTER_FLAGS) & (FILTER_PID | FILTER_COMM | FILTER_CGROUP) != 0
}

const NO_OWNER: Owner = Owner {
    pid_tgid: 0,
    cgroup_id: 0,
    comm: [0; COMM_LEN],
};

/// `sock:inet_sock_set_state`: skaddr at 8, oldstate at 16, newstate at 20, sport at 24,
/// dport at 26, family at 28, protocol at 30, saddr at 32, daddr at 36, saddr_v6 at 40,
/// daddr_v6 at 56. Ports are host byte order.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_set_state_tcp(ctx: TracePointContext) -> u32 {
    let _ = try_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let protocol: u16 = unsafe { ctx.read_at(30) }?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let skaddr: u64 = unsafe { ctx.read_at(8) }?;
    let old: i32 = unsafe { ctx.read_at(16) }?;
    let new: i32 = unsafe { ctx.read_at(20) }?;
    let now = unsafe { bpf_ktime_get_ns() };
    match (old, new) {
        // connect(): process context, so the owner is the current task.
        (TCP_CLOSE, TCP_SYN_SENT) => {
            if (bpf_get_current_pid_tgid() >> 32) as u32 == setting_u32(&SELF_TGID) {
                if setting_u32(&HTTP_PREFIX) != 0 {
                    let _ = SELF_SOCKS.insert(&skaddr, &0, 0);
                }
            } else if let Some(owner) = current_owner() {
                let conn = Conn {
                    owner,
                    ts: now,
                    retransmits: 0,
                    flags: 0,
                };
                if CONNS.insert(&skaddr, &conn, 0).is_err() {
                    count(Counter::TcpTableFull);
                }
            }
        }
        // listen(): process context. Remember the owner by local port for passive opens.
        (_, TCP_LISTEN) => {
            let sport: u16 = unsafe { ctx.read_at(24) }?;
            if let Some(owner) = current_owner() {
                if LISTENERS.insert(&sport, &owner, 0).is_err() {
                    count(Counter::TcpTableFull);
                }
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let sport: u16 = unsafe { ctx.read_at(24) }?;
            let _ = LISTENERS.remove(&sport);
        }
        // Handshake done (softirq: the current task is not the owner).
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            if let Some(p) = SELF_SOCKS.get_ptr_mut(&skaddr) {
                let sport: u16 = unsafe { ctx.read_at(24) }?;
                unsafe { *p = sport };
                let _ = SELF_PORTS.insert(&sport, &1, 0);
                return Ok(());
            }
            let Some(c) = CONNS.get_ptr_mut(&skaddr) else {
                return Ok(());
            };
            let conn = unsafe { *c };
            let duration = now.saturating_sub(conn.ts);
            tcp_hist(TCP_HIST_CONNECT, duration);
            emit_tcp(
                ctx,
                EventKind::TcpConnect,
                &conn.owner,
                0,
                conn.ts,
                duration,
                skaddr,
                conn.retransmits,
                0,
            );
            unsafe {
                (*c).ts = now;
                (*c).retransmits = 0;
                (*c).flags = 0;
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let Some(conn) = (unsafe { CONNS.get(&skaddr) }).copied() else {
                return Ok(());
            };
            let _ = CONNS.remove(&skaddr);
            let duration = now.saturating_sub(conn.ts);
            // RST in answer to the SYN: refused. Otherwise the SYN went unanswered (timed out)
            // or the application gave up; the connect syscall's own return tells which.
            let error = if conn.flags & CONN_RST != 0 {
                ECONNREFUSED
            } else {
                ETIMEDOUT
            };
            emit_tcp(
                ctx,
                EventKind::TcpConnect,
                &conn.owner,
                TCP_FLAG_FAILED,
                conn.ts,
                duration,
                skaddr,
                conn.retransmits,
                error,
            );
        }
        // Passive open completed: the child socket of a listener. Softirq: the current task
        // is not the owner. A listener seen in listen() names it; otherwise (a server started
        // before kspan) the accept waits in PENDING_ACCEPTS for the first send or receive on
        // the socket, which runs in the owning process.
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let sport: u16 = unsafe { ctx.read_at(24) }?;
            let listener = unsafe { LISTENERS.get(&sport) }.copied();
            let (start, retransmits, handshake_flags) = handshake_start(ctx, skaddr, now);
            let duration = now - start;
            let (owner, flags) = match listener {
                Some(o) => {
                    tcp_hist(TCP_HIST_ACCEPT, duration);
                    emit_tcp(
                        ctx,
                        EventKind::TcpAccept,
                        &o,
                        TCP_FLAG_PASSIVE | handshake_flags,
                        start,
                        duration,
                        skaddr,
                        retransmits,
                        0,
                    );
                    (o, TCP_FLAG_PASSIVE)
                }
                None => {
                    let flags = TCP_FLAG_PASSIVE | TCP_FLAG_PID_UNKNOWN;
                    let ev = TcpEvent {
                        header: tcp_header(
                            EventKind::TcpAccept,
                            &NO_OWNER,
                            flags | handshake_flags,
                            start,
                            duration,
                        ),
                        data: tcp_data(ctx, skaddr, retransmits, 0),
                    };
                    if PENDING_ACCEPTS.insert(&skaddr, &ev, 0).is_err() {
                        count(Counter::TcpTableFull);
                        return Ok(());
                    }
                    (NO_OWNER, flags)
                }
            };
            let conn = Conn {
                owner,
                ts: now,
                retransmits: 0,
                flags,
            };
            if CONNS.insert(&skaddr, &conn, 0).is_err() {
                count(Counter::TcpTableFull);
            }
        }
        (_, TCP_CLOSE) => {
            http_close(skaddr, now);
            if let Some(sport) = unsafe { SELF_SOCKS.get(&skaddr) }.copied() {
                let _ = SELF_SOCKS.remove(&skaddr);
                if sport != 0 {
                    let _ = SELF_PORTS.remove(&sport);
                }
            }
            let Some(conn) = (unsafe { CONNS.get(&skaddr) }).copied() else {
                return Ok(());
            };
            let _ = CONNS.remove(&skaddr);
            if let Some(ev) = unsafe { PENDING_ACCEPTS.get(&skaddr) }.copied() {
                // Closed before its owner sent or received anything: the owner stays unknown.
                // With process filters on it is not known to be ours: nothing is reported.
                let _ = PENDING_ACCEPTS.remove(&skaddr);
                if process_filters_on() {
                    return Ok(());
                }
                tcp_hist(TCP_HIST_ACCEPT, ev.header.duration_ns);
                submit_tcp(&ev);
            }
            emit_tcp(
                ctx,
                EventKind::TcpClose,
                &conn.owner,
                conn.flags & (TCP_FLAG_PASSIVE | TCP_FLAG_PID_UNKNOWN),
                conn.ts,
                now.saturating_sub(conn.ts),
                skaddr,
                conn.retransmits,
                0,
            );
        }
        _ => {}
    }
    Ok(())
}

/// The pending-open key from a tracepoint record: sport at 24, dport at 26 in both
/// `inet_sock_set_state` and `tcp_retransmit_synack`; the remote IPv6 (or v4-mapped) address
/// at `daddr_v6`.
#[inline(always)]
fn syn_key(ctx: &TracePointContext, daddr_v6: usize) -> Result<SynKey, i64> {
    Ok(SynKey {
        daddr: unsafe { ctx.read_at(daddr_v6) }?,
        sport: unsafe { ctx.read_at(24) }?,
        dport: unsafe { ctx.read_at(26) }?,
    })
}

/// When the handshake of a passive open that completes `now` began, from the server's side:
/// the first SYN-ACK's send time. Returns (start, SYN-ACK retransmits, flags).
///
/// The SYN's arrival is not visible to tracepoints. Without retransmits, the child socket's
/// first RTT sample is exactly first SYN-ACK -> completing ACK (`tcp_synack_rtt_meas`), in
/// `srtt_us << 3`. With retransmits the kernel takes no such sample, so the first SYN-ACK's
/// time was saved from the request socket when it was first retransmitted.
#[inline(always)]
fn handshake_start(ctx: &TracePointContext, skaddr: u64, now: u64) -> (u64, u32, u32) {
    if let Ok(key) = syn_key(ctx, 56) {
        if let Some(s) = unsafe { SYNACKS.get(&key) }.copied() {
            let _ = SYNACKS.remove(&key);
            if s.first_ns != 0 && s.first_ns <= now {
                return (s.first_ns, s.retransmits, 0);
            }
            return (now, s.retransmits, TCP_FLAG_HANDSHAKE_UNKNOWN);
        }
    }
    let off = setting_u32(&TCP_SOCK_SRTT_US_OFFSET);
    if off != 0 {
        let srtt =
            unsafe { bpf_probe_read_kernel((skaddr + off as u64) as *const u32) }.unwrap_or(0) >> 3;
        let rtt_ns = srtt as u64 * 1000;
        if srtt != 0 && rtt_ns <= now {
            return (now - rtt_ns, 0, 0);
        }
    }
    (now, 0, TCP_FLAG_HANDSHAKE_UNKNOWN)
}

/// `tcp:tcp_retransmit_synack`: skaddr (the listener) at 8, req at 16, sport at 24, dport at
/// 26, daddr_v6 at 54. The first retransmit saves the first SYN-ACK's time from the request.
#[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit_synack(&ctx);
    0
}

#[inline(always)]
fn try_retransmit_synack(ctx: &TracePointContext) -> Result<(), i64> {
    let key = syn_key(ctx, 54)?;
    if let Some(s) = SYNACKS.get_ptr_mut(&key) {
        unsafe { (*s).retransmits += 1 };
        return Ok(());
    }
    let off = setting_u32(&TCP_REQ_SNT_SYNACK_OFFSET);
    let mut first_ns = 0;
    if off != 0 {
        let req: u64 = unsafe { ctx.read_at(16) }?;
        // tcp_clock_us(): CLOCK_MONOTONIC in us, the clock of bpf_ktime_get_ns.
        let us = unsafe { bpf_probe_read_kernel((req + off as u64) as *const u64) }.unwrap_or(0);
        // (saturating_mul would need a 128-bit multiply, which BPF lacks.)
        if us < u64::MAX / 1000 {
            first_ns = us * 1000;
        }
    }
    let s = Synack {
        first_ns,
        retransmits: 1,
        _pad: 0,
    };
    if SYNACKS.insert(&key, &s, 0).is_err() {
        count(Counter::TcpTableFull);
    }
    Ok(())
}

/// `tcp:tcp_retransmit_skb`: skaddr at 16.
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if let Ok(skaddr) = unsafe { ctx.read_at::<u64>(16) } {
        if let Some(c) = CONNS.get_ptr_mut(&skaddr) {
            unsafe { (*c).retransmits += 1 };
        }
    }
    0
}

/// `tcp:tcp_receive_reset`: skaddr at 8. Fires before the socket moves to CLOSE.
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if let Ok(skaddr) = unsafe { ctx.read_at::<u64>(8) } {
        if let Some(c) = CONNS.get_ptr_mut(&skaddr) {
            unsafe { (*c).flags |= CONN_RST };
        }
    }
    0
}

/// `sock:sock_send_length` and `sock:sock_recv_length`: sk at 8, family at 16, protocol at
/// 18, ret at 20. They run in the process that sends or receives, so the first one on an
/// accepted socket whose owner is unknown names the owner and releases its accept event.
///
/// With HTTP capture on, they also mark the running syscall as a transfer on this TCP socket,
/// so that its exit looks at the bytes (reads and writes on anything else never do).
#[inline(always)]
fn on_sock_io(ctx: &TracePointContext, recv: bool) -> Result<(), i64> {
    let protocol: u16 = unsafe { ctx.read_at(18) }?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(8) }?;
    if setting_u32(&HTTP_PREFIX) != 0 {
        // MSG_PEEK (2): the bytes stay queued and are read again.
        let peek = recv && unsafe { ctx.read_at::<i32>(24) }.unwrap_or(0) & 2 != 0;
        if !peek {
            mark_socket_transfer(sk);
        }
    }
    let Some(mut ev) = (unsafe { PENDING_ACCEPTS.get(&sk) }).copied() else {
        return Ok(());
    };
    let _ = PENDING_ACCEPTS.remove(&sk);
    let Some(owner) = current_owner() else {
        // Filtered out (or kspan itself): not ours to report, now or at close.
        let _ = CONNS.remove(&sk);
        return Ok(());
    };
    ev.header = tcp_header(
        EventKind::TcpAccept,
        &owner,
        ev.header.flags & !TCP_FLAG_PID_UNKNOWN,
        ev.header.start_ns,
        ev.header.duration_ns,
    );
    tcp_hist(TCP_HIST_ACCEPT, ev.header.duration_ns);
    submit_tcp(&ev);
    if let Some(c) = CONNS.get_ptr_mut(&sk) {
        unsafe {
            (*c).owner = owner;
            (*c).flags &= !TCP_FLAG_PID_UNKNOWN;
        }
    }
    Ok(())
}

/// Marks the current thread's in-flight syscall (if any) as moving bytes on socket `sk`.
#[inline(always)]
fn mark_socket_transfer(sk: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = if setting_u32(&STARTS_IN_ARRAY) != 0 {
        STARTS_ARRAY.get_ptr_mut(tid)
    } else {
        STARTS_HASH.get_ptr_mut(&tid)
    };
    if let Some(p) = p {
        if unsafe { (*p).nr1 } != 0 {
            unsafe { (*p).sk = sk };
        }
    }
}

/// `sock:sock_send_length`; see `on_sock_io`.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = on_sock_io(&ctx, false);
    0
}

/// `sock:sock_recv_length`; see `on_sock_io`.
#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = on_sock_io(&ctx, true);
    0
}
