//! Syscall latency: `raw_syscalls/sys_enter|sys_exit` (raw tracepoints, the cheapest hook
//! measured; classic-tracepoint twins for kernels and benchmarks that want them). The start of
//! each in-flight syscall is stored per thread, in an array indexed by tid (sized to `pid_max`
//! by userspace, the fastest) or in a hash map (when `pid_max` is too large for an array).
//! Histograms per syscall (and optionally per process) count every call; events go to the ring
//! buffer only for slow or failed calls.
use agent_common::{
    log2_bucket, Counter, EventHeader, EventKind, ProcHistKey, SyscallData, SyscallEvent,
    SyscallStart, TraceRef, EXPECTED_ERRNO_LIMIT, FILTER_SYSCALL, HIST_BUCKETS, MAX_SYSCALLS,
    SYSCALL_FLAG_EXPECTED,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};

use super::{
    exchange,
    shared::{
        comm, count, ring_fill, setting_u32, setting_u64, submit_flags_at, task_selected, EVENTS,
        FILTER_FLAGS, SHED_BYTES,
    },
    starts,
};

// ---- Settings ----

/// Syscalls shorter than this (ns) only count in histograms, unless they failed.
#[unsafe(no_mangle)]
pub(super) static MIN_DURATION_NS: u64 = 0;
/// 1: syscall events go to the ring buffer; 0: histograms only.
#[unsafe(no_mangle)]
static EMIT_SYSCALLS: u32 = 1;
/// 1: also emit failed syscalls shorter than MIN_DURATION_NS.
#[unsafe(no_mangle)]
static EMIT_FAILED: u32 = 1;
/// 1: keep per-process histograms too.
#[unsafe(no_mangle)]
pub(super) static PROC_HIST: u32 = 0;
/// Settings userspace changes while running (globals are frozen at load). Index 0: a minimum
/// duration (ns) that overrides MIN_DURATION_NS when larger (the overhead governor).
#[map]
pub(super) static RUNTIME: Array<u64> = Array::with_max_entries(1, 0);

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

/// Expected outcomes per syscall number: bit e of the pair is set when errno e is a normal
/// result of that syscall (not a failure a user would call one). Filled by userspace.
#[map]
static EXPECTED_ERRNOS: Array<[u64; 2]> = Array::with_max_entries(MAX_SYSCALLS as u32, 0);

/// Selected syscalls (FILTER_SYSCALL): 1 at the index of each selected syscall number.
#[map]
static FILTER_SYSCALLS: Array<u32> = Array::with_max_entries(MAX_SYSCALLS as u32, 0);

// ---- Syscalls ----

/// Common sys_enter logic. Returns early for anything not selected. `regs` (raw tracepoint,
/// else null) is kept in the slot: `tcp_sendmsg_locked`, which runs inside the call, reads
/// the second argument of a call that writes to a TCP socket from it, so other calls pay a
/// store, not a read.
#[inline(always)]
fn on_sys_enter(nr: i64, arg0: u64, arg1: u64, regs: *const u64) {
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
        regs: regs as u64,
        sk: 0,
        nr1: nr as u32 + 1,
        flags: 0,
    };
    starts::begin(tid, &start);
}

#[inline(always)]
pub(super) fn proc_hist_add(pid_tgid: u64, nr: u32, bucket: u32) {
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
    let Some(start) = starts::take(tid) else {
        return;
    };
    syscall_done(&start, ret, regs, pid_tgid, now);
    // After the syscall's own event: userspace sees the call before the message it ends.
    if start.sk != 0 && ret > 0 {
        exchange::transfer(&start, ret, regs, pid_tgid, now);
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
            arg0: starts::arg(regs, 0, start.arg0),
            parent: if starts::may_serve(start) {
                exchange::serving(tid)
            } else {
                TraceRef::default()
            },
        },
    });
    entry.submit(submit_flags_at(fill));
    count(Counter::Submitted);
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
    let regs: *const u64 = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    on_sys_enter(id, 0, 0, regs);
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
    on_sys_enter(id, arg0, arg1, core::ptr::null());
    0
}

/// `raw_syscalls:sys_exit` classic tracepoint: `long id` at 8, `long ret` at 16.
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit_tp(ctx: TracePointContext) -> u32 {
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    on_sys_exit(ret, core::ptr::null());
    0
}
