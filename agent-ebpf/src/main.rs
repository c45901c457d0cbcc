//! kspan's kernel programs.
//!
//! The names userspace uses for globals, maps and programs are constants in
//! `agent_common::{globals, maps, programs}`.
//!
//! Syscall latency: `raw_syscalls/sys_enter|sys_exit` as raw tracepoints (the cheapest hook
//! measured; see BENCHMARKS.md), with classic-tracepoint twins kept for kernels and benchmarks
//! that want them. The start of each in-flight syscall is stored per thread, either in an
//! array indexed by tid (sized to `pid_max` by userspace, the fastest) or in a hash map (when
//! `pid_max` is too large for an array).
//!
//! TCP: `sock/inet_sock_set_state` follows each connection; `tcp/tcp_retransmit_skb` and
//! `tcp/tcp_receive_reset` annotate it.
//!
//! Benchmark-only programs (cost floors) live in `bench.rs`, apart from the production ones.
//!
//! Every record goes to one ring buffer, submitted without a wake-up; userspace drains it on a
//! timer. Every loss is counted in `COUNTERS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
