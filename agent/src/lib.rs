//! kspan: eBPF kernel-level tracing agent (userspace side).
//!
//! Read the tree as the data flows: `capture` (kernel programs and maps) -> `decode` (the
//! only place that reads kernel bytes) -> enrichment (`procinfo`, `conns`, `k8s`) -> `l7`
//! (request spans of application protocols) and `spans` (every event's span; `span` is a
//! built span) -> `traces` (whole traces held for the samplers) -> `sampling` -> `sink`,
//! wired and run by `pipeline` (reader, build, queue, export), with `metrics` beside.
//! `config` turns the YAML into a `RunPlan`; `cmd` holds the thin command entry points;
//! `hist`, `event`, `check`, `analyze` serve the other commands; `uprobe` finds the
//! functions `--func` probes; `wire`, `names`, `clock`,
//! `duration`, `quantile` are leaves.
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
pub mod item;
pub mod k8s;
pub mod l7;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod procinfo;
pub mod quantile;
pub mod sampling;
pub mod sink;
pub mod source;
pub mod span;
pub mod spans;
pub mod text;
pub mod traces;
pub mod uprobe;
pub mod wire;

/// Selects the TLS crypto provider once per process. Two providers are compiled in (ring
/// for tonic and kube, aws-lc-rs through reqwest), so rustls cannot pick one itself and would
/// panic on the first https connection.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
