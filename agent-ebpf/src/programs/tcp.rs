//! TCP: `sock/inet_sock_set_state` follows each connection (connect, accept, close);
//! `tcp/tcp_retransmit_skb`, `tcp/tcp_receive_reset` and `tcp/tcp_retransmit_synack`
//! annotate it; `sock/sock_send_length`/`sock_recv_length` name the owner of an accepted
//! connection whose listener is older than kspan, and mark the syscalls that move bytes on
//! TCP sockets for L7 capture.
use agent_common::{
    log2_bucket, Counter, EventHeader, EventKind, TcpData, TcpEvent, TraceRef, COMM_LEN,
    FILTER_CGROUP, FILTER_COMM, FILTER_PID, HIST_BUCKETS, TCP_FLAG_FAILED,
    TCP_FLAG_HANDSHAKE_UNKNOWN, TCP_FLAG_PASSIVE, TCP_FLAG_PID_UNKNOWN, TCP_HIST_ACCEPT,
    TCP_HIST_CONNECT,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};

use super::{
    exchange,
    shared::{
        comm, count, setting_u32, submit_flags, task_selected, EVENTS, FILTER_FLAGS, SELF_TGID,
    },
};

// ---- Settings ----

/// 1: TCP programs emit events; 0: histograms only.
#[unsafe(no_mangle)]
static EMIT_TCP: u32 = 1;
/// Byte offset of `tcp_sock.srtt_us` from the kernel's BTF; 0: unknown.
#[unsafe(no_mangle)]
static TCP_SOCK_SRTT_US_OFFSET: u32 = 0;
/// Byte offset of `tcp_request_sock.snt_synack` from the kernel's BTF; 0: unknown.
#[unsafe(no_mangle)]
static TCP_REQ_SNT_SYNACK_OFFSET: u32 = 0;

/// TCP connect and accept latency histograms: index `which * HIST_BUCKETS + bucket`.
#[map]
static TCP_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * HIST_BUCKETS as u32, 0);

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

/// The request span a connecting thread was serving, by socket address, until the connect
/// span is made (only for threads serving exactly one request).
#[map]
static CONNECT_PARENTS: LruHashMap<u64, TraceRef> = LruHashMap::with_max_entries(4096, 0);

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
        parent: TraceRef::default(),
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
    let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    // In place: a TcpEvent built on the stack and copied would not fit it.
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).header = tcp_header(kind, owner, flags, start, duration);
        (*ev).data = tcp_data(ctx, skaddr, retransmits, error);
        if kind == EventKind::TcpConnect {
            if let Some(p) = CONNECT_PARENTS.get(&skaddr) {
                (*ev).data.parent = *p;
            }
            let _ = CONNECT_PARENTS.remove(&skaddr);
        }
    }
    entry.submit(submit_flags());
    count(Counter::Submitted);
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
                exchange::self_connecting(skaddr);
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
                // The request the connecting thread serves is the connect span's parent.
                let parent = exchange::serving(owner.pid_tgid as u32);
                if !parent.is_none() {
                    let _ = CONNECT_PARENTS.insert(&skaddr, &parent, 0);
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
            let sport: u16 = unsafe { ctx.read_at(24) }?;
            if exchange::self_established(skaddr, sport) {
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
            exchange::socket_closed(skaddr, now);
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
/// With L7 capture on, they also mark the running syscall as a transfer on this TCP socket,
/// so that its exit looks at the bytes (reads and writes on anything else never do).
#[inline(always)]
fn on_sock_io(ctx: &TracePointContext, recv: bool) -> Result<(), i64> {
    let protocol: u16 = unsafe { ctx.read_at(18) }?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(8) }?;
    if exchange::enabled() {
        // MSG_PEEK (2): the bytes stay queued and are read again.
        let peek = recv && unsafe { ctx.read_at::<i32>(24) }.unwrap_or(0) & 2 != 0;
        if !peek {
            exchange::mark_socket_transfer(sk);
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
