//! Benchmark-only programs: the cost floors `cargo xtask bench-overhead` compares kspan's
//! syscall programs with (nothing but the hook, and the hook plus two clock reads). Never
//! attached by the agent's commands.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{RawTracePointContext, TracePointContext},
};

/// Empty raw tracepoint: the floor cost of attaching anything (benchmarks only).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Empty raw tracepoint: the floor cost of attaching anything (benchmarks only).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Where the clock-floor programs put their reading (so it is not optimized away).
#[map]
static CLOCK_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Raw tracepoint that only reads the clock into a per-CPU slot: the least any latency
/// measurement pays per hook (benchmarks only).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw_clock(_ctx: RawTracePointContext) -> i32 {
    clock_sink();
    0
}

/// See `sys_enter_raw_clock`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw_clock(_ctx: RawTracePointContext) -> i32 {
    clock_sink();
    0
}

#[inline(always)]
fn clock_sink() {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(p) = CLOCK_SINK.get_ptr_mut(0) {
        unsafe { *p = now };
    }
}

/// Empty classic tracepoint: the floor cost (benchmarks only).
#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn sys_enter_tp_empty(_ctx: TracePointContext) -> u32 {
    0
}

/// Empty classic tracepoint: the floor cost (benchmarks only).
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit_tp_empty(_ctx: TracePointContext) -> u32 {
    0
}
