//! The production programs, one module per feature:
//!
//! - `shared`: settings every program reads (self exclusion, process filters, ring buffer
//!   thresholds), the ring buffer, the loss counters.
//! - `starts`: each thread's in-flight syscall (shared by `syscall` and `payload`).
//! - `syscall`: syscall latency (histograms, slow and failed calls).
//! - `tcp`: TCP connections (connect, accept, close, retransmits, resets).
//! - `payload`: L7 capture (the first bytes of transfers on sockets of a detected protocol).
//! - `detect`: which protocol a transfer's first bytes start (one function per protocol).
//!
//! Each feature keeps its own settings (globals) and maps; userspace sets each feature's
//! block of globals on its own (`agent/src/capture.rs`).
mod detect;
mod payload;
mod shared;
mod starts;
mod syscall;
mod tcp;
