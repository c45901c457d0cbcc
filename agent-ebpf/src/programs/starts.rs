//! The start of each thread's in-flight syscall: written at `sys_enter`, taken at `sys_exit`,
//! and marked in between by the socket programs (`sk`) so that L7 capture knows a call moved
//! bytes on a TCP socket. In an array indexed by tid (sized to `pid_max` by userspace, the
//! fastest) or in a hash map (when `pid_max` is too large for an array).
use agent_common::{Counter, SyscallStart, SLOT_SERVING};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, HashMap},
};

use super::shared::{count, setting_u32};

/// 1: per-thread starts live in `STARTS_ARRAY` (indexed by tid); 0: in `STARTS_HASH`.
#[unsafe(no_mangle)]
static STARTS_IN_ARRAY: u32 = 1;

/// In-flight syscall starts, indexed by tid. max_entries set to pid_max by userspace.
#[map]
static STARTS_ARRAY: Array<SyscallStart> = Array::with_max_entries(1, 0);

/// In-flight syscall starts keyed by tid, used when pid_max is too large for an array.
#[map]
static STARTS_HASH: HashMap<u32, SyscallStart> = HashMap::with_max_entries(1, 0);

/// Records thread `tid`'s syscall start (a full table is counted). An array slot keeps its
/// `flags`.
#[inline(always)]
pub fn begin(tid: u32, start: &SyscallStart) {
    if setting_u32(&STARTS_IN_ARRAY) != 0 {
        match STARTS_ARRAY.get_ptr_mut(tid) {
            Some(p) => unsafe {
                let flags = (*p).flags;
                *p = *start;
                (*p).flags = flags;
            },
            None => count(Counter::StartTableFull),
        }
    } else if STARTS_HASH.insert(&tid, start, 0).is_err() {
        count(Counter::StartTableFull);
    }
}

/// Takes thread `tid`'s syscall start, if it has one, freeing the slot.
#[inline(always)]
pub fn take(tid: u32) -> Option<SyscallStart> {
    if setting_u32(&STARTS_IN_ARRAY) != 0 {
        let p = STARTS_ARRAY.get_ptr_mut(tid)?;
        let s = unsafe { *p };
        if s.nr1 == 0 {
            return None;
        }
        unsafe { (*p).nr1 = 0 };
        Some(s)
    } else {
        let s = (unsafe { STARTS_HASH.get(&tid) }).copied()?;
        let _ = STARTS_HASH.remove(&tid);
        Some(s)
    }
}

/// Marks whether thread `tid` serves a request (array slots only: a hash slot lives for one
/// call, so there every call looks its parent up).
#[inline(always)]
pub fn set_serving(tid: u32, on: bool) {
    if setting_u32(&STARTS_IN_ARRAY) != 0 {
        if let Some(p) = STARTS_ARRAY.get_ptr_mut(tid) {
            unsafe { (*p).flags = if on { SLOT_SERVING } else { 0 } };
        }
    }
}

/// Whether the call `start` may belong to a request its thread serves (false: it does not,
/// no lookup needed).
#[inline(always)]
pub fn may_serve(start: &SyscallStart) -> bool {
    setting_u32(&STARTS_IN_ARRAY) == 0 || start.flags & SLOT_SERVING != 0
}

/// The in-flight syscall slot of thread `tid`, if it has one (its `nr1` is 0 when free).
#[inline(always)]
pub fn slot(tid: u32) -> Option<*mut SyscallStart> {
    if setting_u32(&STARTS_IN_ARRAY) != 0 {
        STARTS_ARRAY.get_ptr_mut(tid)
    } else {
        STARTS_HASH.get_ptr_mut(&tid)
    }
}

/// The `n`th (0 or 1) syscall argument: from the saved user registers (raw tracepoints) or
/// as saved at entry (classic tracepoints).
#[inline(always)]
pub fn arg(regs: *const u64, n: usize, saved: u64) -> u64 {
    if regs.is_null() {
        return saved;
    }
    // x86_64 pt_regs: di (argument 1) is the 15th u64, si (argument 2) the 14th.
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(14 - n)) }.unwrap_or(0)
}
