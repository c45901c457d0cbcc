//! kspan: eBPF kernel-level tracing agent (userspace side).
//!
//! Pipeline stages, one module each: `capture` (kernel programs and maps) -> `decode` (bytes to
//! values, the only place that reads kernel bytes) -> `event` (agent-level events and their
//! JSON form). `cmd` holds the thin command entry points.
pub mod btf;
pub mod capture;
pub mod check;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod conns;
pub mod decode;
pub mod duration;
pub mod event;
pub mod export;
pub mod governor;
pub mod hist;
pub mod k8s;
pub mod metrics;
pub mod names;
pub mod procinfo;
pub mod queue;
pub mod sampling;
pub mod source;
pub mod spans;

/// Selects the TLS crypto provider once per process. Two providers are compiled in (ring
/// for tonic and kube, aws-lc-rs through reqwest), so rustls cannot pick one itself and would
/// panic on the first https connection.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
