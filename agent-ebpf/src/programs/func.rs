//! Latency of functions in programs (`kspan hist --func`): a uprobe at each probed
//! function's entry and a uretprobe at its return, attached by userspace once per function
//! with the function's id as the attach cookie.
//!
//! Each thread keeps a stack of its open calls (entry time, stack pointer, id), so nesting
//! and recursion are measured call by call. A return is matched to its entry by stack
//! pointer and id: the kernel fires a uretprobe with the stack pointer just above the
//! entry's (the return address popped). Entries of frames left without a return (a longjmp,
//! an exception) are found by their stack pointers, at the next entry or return of the
//! thread, and discarded and counted (`FuncUnfinished`), never timed against the wrong
//! return. A thread that exits with calls open leaves them in the same counter
//! (`sched_process_exit` runs for every thread).
use agent_common::{
    log2_bucket, Counter, EventHeader, EventKind, SyscallData, SyscallEvent, FUNC_NR_BASE,
    FUNC_STACK_DEPTH, HIST_BUCKETS, MAX_FUNCS,
};
use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};

use super::{
    exchange,
    shared::{
        comm, count, count_n, setting_u32, setting_u64, submit_flags, task_selected, EVENTS,
        FILTER_FLAGS,
    },
    syscall::{proc_hist_add, MIN_DURATION_NS, PROC_HIST, RUNTIME},
};

/// 1: calls slower than the minimum duration go to the ring buffer (`kspan run --func`);
/// 0: histograms only (`kspan hist --func`).
#[unsafe(no_mangle)]
static EMIT_FUNCS: u32 = 0;

/// One thread's open calls, innermost last.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FuncStack {
    /// Calls open, measured or not (beyond `FUNC_STACK_DEPTH` they are only counted).
    depth: u32,
    _pad: u32,
    ts: [u64; FUNC_STACK_DEPTH],
    sp: [u64; FUNC_STACK_DEPTH],
    id: [u32; FUNC_STACK_DEPTH],
}

/// Per-function log2 histograms: index `id * HIST_BUCKETS + bucket`.
#[map]
static FUNC_HIST: PerCpuArray<u64> =
    PerCpuArray::with_max_entries((MAX_FUNCS * HIST_BUCKETS) as u32, 0);

/// 1 at the index of every function that returned at least once: userspace reads the
/// histograms of these only.
#[map]
static FUNC_SEEN: Array<u32> = Array::with_max_entries(MAX_FUNCS as u32, 0);

/// Open calls by thread. LRU: the stacks of threads whose exit kspan missed age out.
#[map]
static FUNC_STACKS: LruHashMap<u32, FuncStack> = LruHashMap::with_max_entries(16384, 0);

/// An empty stack to insert from (a `FuncStack` is too large for the BPF stack).
#[map]
static FUNC_EMPTY: PerCpuArray<FuncStack> = PerCpuArray::with_max_entries(1, 0);

const MASK: usize = FUNC_STACK_DEPTH - 1;

#[inline(always)]
fn stack_pointer(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    unsafe { (*regs).rsp }
}

#[uprobe]
pub fn func_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !task_selected(pid_tgid, setting_u32(&FILTER_FLAGS)) {
        return 0;
    }
    let id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let sp = stack_pointer(ctx.regs);
    let tid = pid_tgid as u32;
    let stack = match FUNC_STACKS.get_ptr_mut(&tid) {
        Some(p) => p,
        None => {
            let Some(empty) = FUNC_EMPTY.get_ptr(0) else {
                return 0;
            };
            if FUNC_STACKS.insert(&tid, unsafe { &*empty }, 0).is_err() {
                count(Counter::FuncTableFull);
                return 0;
            }
            match FUNC_STACKS.get_ptr_mut(&tid) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    let s = unsafe { &mut *stack };
    // Open calls whose frames are at or below this call's are gone (left by longjmp or an
    // exception): a caller's frame is always above its callee's. (A probed function that
    // tail-calls another probed one is lost this way, counted: never timed wrong.)
    let mut gone = 0u64;
    for _ in 0..FUNC_STACK_DEPTH {
        let d = s.depth as usize;
        if d == 0 || d > FUNC_STACK_DEPTH || s.sp[(d - 1) & MASK] > sp {
            break;
        }
        s.depth -= 1;
        gone += 1;
    }
    count_n(Counter::FuncUnfinished, gone);
    let d = s.depth as usize;
    if d >= FUNC_STACK_DEPTH {
        // Counted once, at the entry: its return finds depth above the stack and is skipped.
        count(Counter::FuncStackDeep);
    } else {
        s.ts[d & MASK] = unsafe { bpf_ktime_get_ns() };
        s.sp[d & MASK] = sp;
        s.id[d & MASK] = id;
    }
    s.depth = (d + 1) as u32;
    0
}

#[uretprobe]
pub fn func_return(ctx: RetProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(stack) = FUNC_STACKS.get_ptr_mut(&tid) else {
        return 0;
    };
    let s = unsafe { &mut *stack };
    let id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let sp = stack_pointer(ctx.regs);
    if s.depth as usize > FUNC_STACK_DEPTH {
        // An unmeasured (too deep) call returns.
        s.depth -= 1;
        return 0;
    }
    // Frames below this return's (lower stack pointer) were left without a return.
    let mut left = 0u32;
    for _ in 0..FUNC_STACK_DEPTH {
        if s.depth == 0 {
            break;
        }
        let top = (s.depth as usize - 1) & MASK;
        if s.sp[top].wrapping_add(8) >= sp {
            break;
        }
        s.depth -= 1;
        left += 1;
    }
    count_n(Counter::FuncUnfinished, left as u64);
    if s.depth == 0 {
        return 0;
    }
    let top = (s.depth as usize - 1) & MASK;
    // The entry of this return: pushed at sp - 8 (the return address since popped).
    if s.id[top] != id || s.sp[top].wrapping_add(8) != sp {
        return 0;
    }
    s.depth -= 1;
    let duration = now.saturating_sub(s.ts[top]);
    let bucket = log2_bucket(duration);
    let idx = (id & (MAX_FUNCS as u32 - 1)) * HIST_BUCKETS as u32 + (bucket & 63);
    if let Some(p) = FUNC_HIST.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
    if let Some(p) = FUNC_SEEN.get_ptr_mut(id & (MAX_FUNCS as u32 - 1)) {
        if unsafe { *p } == 0 {
            unsafe { *p = 1 };
        }
    }
    if setting_u32(&PROC_HIST) != 0 {
        proc_hist_add(
            pid_tgid,
            u32::from(FUNC_NR_BASE) + (id & (MAX_FUNCS as u32 - 1)),
            bucket,
        );
    }
    if setting_u32(&EMIT_FUNCS) != 0 {
        let governed = RUNTIME.get(0).copied().unwrap_or(0);
        if duration >= setting_u64(&MIN_DURATION_NS).max(governed) {
            emit(pid_tgid, id, s.ts[top], duration);
        }
    }
    0
}

/// The event of a slow call, with the request its thread serves as parent.
#[inline(never)]
fn emit(pid_tgid: u64, id: u32, start: u64, duration: u64) {
    let tid = pid_tgid as u32;
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(SyscallEvent {
        header: EventHeader {
            kind: EventKind::Func as u32,
            flags: 0,
            pid: (pid_tgid >> 32) as u32,
            tid,
            start_ns: start,
            duration_ns: duration,
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: comm(),
        },
        data: SyscallData {
            nr: id,
            _pad: 0,
            ret: 0,
            arg0: 0,
            parent: exchange::serving(tid),
        },
    });
    entry.submit(submit_flags());
    count(Counter::Submitted);
}

/// `sched:sched_process_exit`, for every exiting thread: its open calls will never return.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn func_thread_exit(_ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(s) = unsafe { FUNC_STACKS.get(&tid) } {
        count_n(
            Counter::FuncUnfinished,
            (s.depth as usize).min(FUNC_STACK_DEPTH) as u64,
        );
        let _ = FUNC_STACKS.remove(&tid);
    }
    0
}
