//! What every program shares: the settings of the filters and the ring buffer, the ring
//! buffer itself, the loss counters, and the process filters.
use agent_common::{Counter, COMM_LEN, COUNTERS_LEN, FILTER_CGROUP, FILTER_COMM, FILTER_PID};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};

// ---- Settings, written by userspace at load time (EbpfLoader::set_global). ----
// Read with read_volatile: otherwise the compiler folds in the defaults. Each feature's own
// settings are in its module.

/// tgid of the agent itself: never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: u32 = 0;
/// `FILTER_*` bits of the filters in force.
#[unsafe(no_mangle)]
pub static FILTER_FLAGS: u32 = 0;
/// cgroup id selected when `FILTER_CGROUP` is set.
#[unsafe(no_mangle)]
pub static FILTER_CGROUP_ID: u64 = 0;
/// Wake the reader when this many bytes wait in the ring buffer (0: never; the reader's
/// timer alone drains it). Below it, events are submitted without a wake-up.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 0;
/// Above this many bytes waiting in the ring buffer, ordinary syscall events (not failures)
/// are shed and counted (`RingbufShed`), keeping the rest of the room for failures and TCP
/// events. 0: never.
#[unsafe(no_mangle)]
pub static SHED_BYTES: u64 = 0;

#[inline(always)]
pub fn setting_u32(v: &'static u32) -> u32 {
    unsafe { core::ptr::read_volatile(v) }
}
#[inline(always)]
pub fn setting_u64(v: &'static u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

/// All events. Size set by userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters, indexed by `Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Selected tgids (FILTER_PID).
#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Selected comms (FILTER_COMM).
#[map]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

/// Submit flags: no wake-up, unless the ring buffer holds WAKEUP_BYTES or more.
#[inline(always)]
pub fn submit_flags() -> u64 {
    submit_flags_at(ring_fill())
}

/// Bytes waiting in the ring buffer.
#[inline(always)]
pub fn ring_fill() -> u64 {
    EVENTS.query(BPF_RB_AVAIL_DATA as u64)
}

/// Submit flags for a ring buffer holding `fill` bytes.
#[inline(always)]
pub fn submit_flags_at(fill: u64) -> u64 {
    let threshold = setting_u64(&WAKEUP_BYTES);
    if threshold != 0 && fill >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if n != 0 {
        if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
            unsafe { *p += n };
        }
    }
}

#[inline(always)]
pub fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0u8; COMM_LEN])
}

/// Process filters (pid, comm, cgroup) and self exclusion. `true`: trace this task.
#[inline(always)]
pub fn task_selected(pid_tgid: u64, flags: u32) -> bool {
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
