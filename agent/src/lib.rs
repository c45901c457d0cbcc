//! kspan: eBPF kernel-level tracing agent (userspace side).
//!
//! Read the tree as the data flows: `capture` (kernel programs and maps) -> `decode` (the
//! only place that reads kernel bytes) -> enrichment (`procinfo`, `conns`, `k8s`) -> `spans`
//! -> `sampling` -> `sink`, wired and run by `pipeline` (reader, build, queue, export), with
//! `metrics` beside. `config` turns the YAML into a `RunPlan`; `cmd` holds the thin command
//! entry points; `hist`, `event`, `check` serve the other commands.
pub mod analyze;
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
pub mod governor;
pub mod hist;
pub mod http;
pub mod k8s;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod procinfo;
pub mod redact;
pub mod requests;
pub mod sampling;
pub mod sink;
pub mod source;
pub mod spans;
pub mod traces;

/// Selects the TLS crypto provider once per process. Two providers are compiled in (ring
/// for tonic and kube, aws-lc-rs through reqwest), so rustls cannot pick one itself and would
/// panic on the first https connection.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
