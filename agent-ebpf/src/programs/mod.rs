//! The production programs, one module per feature:
//!
//! - `shared`: settings every program reads (self exclusion, process filters, ring buffer
//!   thresholds), the ring buffer, the loss counters.
//! - `starts`: each thread's in-flight syscall (shared by `syscall` and `exchange`).
//! - `syscall`: syscall latency (histograms, slow and failed calls).
//! - `tcp`: TCP connections (connect, accept, close, retransmits, resets).
//! - `exchange`: L7 exchanges (one record per request and response, with trace context).
//! - `func`: latency of functions in programs (uprobes and uretprobes).
//! - `detect`: what the kernel knows of each protocol (request starts, response lengths).
//!
//! Each feature keeps its own settings (globals) and maps; userspace sets each feature's
//! block of globals on its own (`agent/src/capture.rs`).
mod detect;
mod exchange;
mod func;
mod shared;
mod starts;
mod syscall;
mod tcp;
