//! L7 payloads: the first bytes of reads and writes on TCP sockets that carry a protocol the
//! kernel detects (`detect.rs`), then every later transfer on such a socket until it closes.
//! `sock_send_length`/`sock_recv_length` (in `tcp.rs`) mark the syscalls that move bytes on a
//! TCP socket, so file and pipe I/O costs nothing more. kspan's own export connections are
//! left out here, in the kernel.
use agent_common::{
    Counter, EventHeader, EventKind, PayloadData, PayloadEvent, PayloadRecord, SyscallStart,
    COMM_LEN, PAYLOAD_FLAG_CLOSE, PAYLOAD_FLAG_START, PAYLOAD_FLAG_WRITE, PAYLOAD_PREFIX_MAX,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};

use super::{
    detect,
    shared::{comm, count, setting_u32, submit_flags, EVENTS},
    starts,
};

// ---- Settings ----

/// Bytes of each transfer copied to userspace (at most `PAYLOAD_PREFIX_MAX`); 0: L7 capture
/// off.
#[unsafe(no_mangle)]
static PAYLOAD_PREFIX: u32 = 0;
/// Byte offsets of `sock_common.skc_v6_daddr` and `skc_v6_rcv_saddr` from the kernel's BTF;
/// 0: unknown (IPv6 records then carry no addresses).
#[unsafe(no_mangle)]
static SOCK_V6_DADDR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_V6_SADDR_OFFSET: u32 = 0;

// ---- Maps ----

/// TCP sockets that carried a message start of a detected protocol, with that protocol's id:
/// every later transfer on them goes to userspace too (bodies, split heads), until close.
/// LRU: sockets whose close kspan missed age out.
#[map]
static L7_SOCKS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(65536, 0);

/// Local ports of kspan's own TCP connections (its exports): a server on this host reading
/// from one of them is serving kspan, and is not followed (its spans would describe kspan's
/// exports, which would make more exports).
#[map]
static SELF_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// kspan's own connecting sockets: at SYN_SENT the local port is not chosen yet, so the port
/// goes to SELF_PORTS when the connection is established.
#[map]
static SELF_SOCKS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU room to build a record (too large for the stack) before it is copied to the ring
/// buffer at its real length.
#[map]
static PAYLOAD_SCRATCH: PerCpuArray<PayloadRecord> = PerCpuArray::with_max_entries(1, 0);

const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_READV: u32 = 19;
const SYS_WRITEV: u32 = 20;
const SYS_SENDTO: u32 = 44;
const SYS_RECVFROM: u32 = 45;
const SYS_SENDMSG: u32 = 46;
const SYS_RECVMSG: u32 = 47;

/// Whether L7 capture is on.
#[inline(always)]
pub fn enabled() -> bool {
    setting_u32(&PAYLOAD_PREFIX) != 0
}

/// A read or write on a TCP socket finished, moving `ret` (> 0) bytes: if its bytes start a
/// message of a protocol the kernel detects, or its socket carried one before, its first
/// bytes go to userspace.
#[inline(always)]
pub fn transfer(start: &SyscallStart, ret: i64, regs: *const u64, pid_tgid: u64, now: u64) {
    let prefix = setting_u32(&PAYLOAD_PREFIX);
    if prefix == 0 {
        return;
    }
    let nr = start.nr1 - 1;
    let write = match nr {
        SYS_READ | SYS_READV | SYS_RECVFROM | SYS_RECVMSG => false,
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG => true,
        _ => return,
    };
    let arg1 = starts::arg(regs, 1, start.arg1);
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
    let detected = detect::protocol(&first, moved);
    let followed = unsafe { L7_SOCKS.get(&start.sk) }.copied();
    let protocol = match (followed, detected) {
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => return,
    };
    let head = sock_head(start.sk);
    if followed.is_none() {
        if head.as_ref().is_some_and(serves_self) {
            return;
        }
        if L7_SOCKS.insert(&start.sk, &protocol, 0).is_err() {
            count(Counter::L7TableFull);
        }
    }
    let Some(rec) = PAYLOAD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mut n = if moved < prefix as i64 {
        moved as u32
    } else {
        prefix
    };
    if n > PAYLOAD_PREFIX_MAX as u32 {
        n = PAYLOAD_PREFIX_MAX as u32;
    }
    let rec = unsafe { &mut *rec };
    let mut flags = if write { PAYLOAD_FLAG_WRITE } else { 0 };
    if detected == Some(protocol) {
        flags |= PAYLOAD_FLAG_START;
    }
    if read_user_bounded(buf, &mut rec.buf, n).is_err() {
        n = 0;
    }
    rec.event = PayloadEvent {
        header: EventHeader {
            kind: EventKind::Payload as u32,
            flags,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            start_ns: start.ts,
            duration_ns: now.saturating_sub(start.ts),
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: comm(),
        },
        data: payload_data(
            start.sk,
            head.as_ref(),
            starts::arg(regs, 0, start.arg0),
            ret as u64,
            nr,
            n,
            protocol,
        ),
    };
    output(rec, n);
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

/// Copies `n` (<= PAYLOAD_PREFIX_MAX) bytes of user memory at `src` into `dst`.
#[inline(always)]
fn read_user_bounded(src: u64, dst: &mut [u8; PAYLOAD_PREFIX_MAX], n: u32) -> Result<(), i32> {
    let n = n as usize;
    if n == 0 || n > PAYLOAD_PREFIX_MAX {
        return Ok(());
    }
    unsafe { bpf_probe_read_user_buf(src as *const u8, &mut dst[..n]) }
}

/// Sends the first `size_of::<PayloadEvent>() + n` bytes of `rec` to the ring buffer.
#[inline(always)]
fn output(rec: &PayloadRecord, n: u32) {
    let n = n as usize;
    if n > PAYLOAD_PREFIX_MAX {
        return;
    }
    let size = core::mem::size_of::<PayloadEvent>() + n;
    // SAFETY: `size` is within the record; PayloadRecord has no padding, so every byte is set.
    let bytes =
        unsafe { core::slice::from_raw_parts((rec as *const PayloadRecord).cast::<u8>(), size) };
    let ret = EVENTS.output::<[u8]>(bytes, submit_flags());
    if ret.is_err() {
        count(Counter::RingbufFull);
    } else {
        count(Counter::Submitted);
    }
}

/// A followed socket closed: userspace ends what was in flight on it.
#[inline(always)]
fn close(skaddr: u64, now: u64) {
    let Some(protocol) = unsafe { L7_SOCKS.get(&skaddr) }.copied() else {
        return;
    };
    if L7_SOCKS.remove(&skaddr).is_err() {
        return;
    }
    let Some(rec) = PAYLOAD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let rec = unsafe { &mut *rec };
    rec.event = PayloadEvent {
        header: EventHeader {
            kind: EventKind::Payload as u32,
            flags: PAYLOAD_FLAG_CLOSE,
            pid: 0,
            tid: 0,
            start_ns: now,
            duration_ns: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        },
        data: payload_data(skaddr, sock_head(skaddr).as_ref(), 0, 0, 0, 0, protocol),
    };
    output(rec, 0);
}

/// A record's payload, with the socket's ends from its `sock_head` (unknown without one) and,
/// for IPv6, the addresses at the offsets BTF gave.
#[inline(always)]
fn payload_data(
    sk: u64,
    head: Option<&[u8; 18]>,
    fd: u64,
    len: u64,
    nr: u32,
    captured: u32,
    protocol: u16,
) -> PayloadData {
    let mut d = PayloadData {
        sk,
        fd,
        len,
        nr,
        captured,
        family: 0,
        sport: 0,
        dport: 0,
        protocol,
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

/// `sk` closed: what was in flight on it ends, and kspan's own port is forgotten.
#[inline(always)]
pub fn socket_closed(sk: u64, now: u64) {
    close(sk, now);
    if let Some(sport) = unsafe { SELF_SOCKS.get(&sk) }.copied() {
        let _ = SELF_SOCKS.remove(&sk);
        if sport != 0 {
            let _ = SELF_PORTS.remove(&sport);
        }
    }
}
