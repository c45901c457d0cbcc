//! kspan's kernel programs.
//!
//! The names userspace uses for globals, maps and programs are constants in
//! `agent_common::{globals, maps, programs}`.
//!
//! The production programs are in `programs/`, one module per feature (syscalls, TCP, L7
//! payloads and their protocol detection, and what they share).
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
