//! The running agent (`kspan run`), stage by stage:
//!
//! ```text
//! capture (kernel) -> reader --[events: block]--> build --[spans: bounded in spans, drop newest]--> export -> sink
//!                     decode                      enrich, spans, sampling                          batch, retry, flush
//! ```
//!
//! - `reader`: drains the ring buffer and decodes; blocks when `build` is behind, so the
//!   kernel counts `ringbuf_full`. Also refreshes kernel counters and runs the governor.
//! - `build`: events -> spans with process/container/Kubernetes/connection context, then the
//!   samplers (`sampled_out`). On its own thread: it cannot starve the others.
//! - `queue`: builder -> export, at most `pipeline.queue_spans` spans (`queue_full`).
//! - `export`: batches, exports through a [`crate::sink::Sink`], retries until
//!   `retry_max_elapsed` (`export_failed`), flushes within `shutdown_timeout` at exit.
//!
//! Metrics (`crate::metrics`) sit beside every stage. Stop: SIGINT/SIGTERM or the deadline
//! detach the programs, drain, flush, and return the summary.
pub mod build;
pub mod export;
pub mod queue;
pub mod reader;

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    capture::{Capture, CaptureError, KernelCounters},
    clock::WallClock,
    config::RunPlan,
    conns::ProcFdResolver,
    decode::RawEvent,
    metrics::{self, MetricsError, Stats, Totals},
    procinfo::{HostResource, ProcessCache},
    sampling::SamplingError,
    sink::{self, ExportError},
    source::RingReady,
    spans::{Built, SpanBuilder},
};

/// Largest chunk of events or spans passed between stages at once.
pub const MAX_CHUNK: usize = 512;
/// Chunks the reader may have in flight to the builder.
pub const EVENT_QUEUE_CHUNKS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("sampling.budget.state_file: {0}")]
    BudgetState(#[source] SamplingError),
    #[error("setting up signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error("registering the ring buffer for polling: {0}")]
    RingPoll(#[source] std::io::Error),
    #[error("starting the span builder's thread: {0}")]
    BuildThread(#[source] std::io::Error),
}

/// Printed on stderr at exit (`kspan: summary {...}`).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub totals: Totals,
    pub kernel: KernelCounters,
}

/// Runs the agent until SIGINT/SIGTERM or `stop_after`, then flushes and returns the summary.
pub async fn run(plan: RunPlan, stop_after: Option<Duration>) -> Result<RunSummary, RunError> {
    run_with(plan, stop_after, None).await
}

/// [`run`], with spans going to `sink` (described as the second item) instead of the
/// configured exporter.
pub async fn run_with(
    plan: RunPlan,
    stop_after: Option<Duration>,
    sink_override: Option<(Box<dyn sink::Sink>, String)>,
) -> Result<RunSummary, RunError> {
    use tokio::signal::unix::{signal, SignalKind};

    let RunPlan {
        capture,
        drain_interval,
        mut sampler,
        governor,
        exporter,
        pipeline,
        resource,
        metrics: metrics_cfg,
        l7,
    } = plan;
    // Before anything is attached or served: a state file kspan cannot use stops it here.
    if let Some(p) = sampler.as_mut() {
        if let Some(w) = p.open_state().map_err(RunError::BudgetState)? {
            log::warn!("sampling.budget.{w}");
        }
    }
    let stats = Arc::new(Stats::new());
    let call_limit = sink::call_limit(&exporter);
    let (sink, desc) = match sink_override {
        Some((s, d)) => (s, d),
        None => {
            let (s, d) = sink::build(&exporter)?;
            (s, d.to_string())
        }
    };
    let metrics_task = match &metrics_cfg.addr {
        Some(a) => {
            let (addr, task) = metrics::serve(a, stats.clone()).await?;
            eprintln!("kspan: metrics on http://{addr}/metrics (health: /healthz, /readyz)");
            Some(task)
        }
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;

    let capture = Capture::start(capture)?;
    stats.set_attached(true);
    let ready = RingReady::new(&capture, drain_interval).map_err(RunError::RingPoll)?;

    let trim_task = tokio::spawn(trim_freed_memory());
    let (span_tx, span_rx) = queue::bounded::<Built>(pipeline.queue_spans);
    let (event_tx, event_rx) = mpsc::channel::<Vec<RawEvent>>(EVENT_QUEUE_CHUNKS);
    let output_closed = Arc::new(tokio::sync::Notify::new());
    let export_task = tokio::spawn(
        export::ExportStage::new(
            sink,
            span_rx,
            pipeline,
            stats.clone(),
            output_closed.clone(),
        )
        .with_call_limit(call_limit)
        .run(),
    );
    let pods = match crate::k8s::connect().await {
        Some((client, node)) => {
            eprintln!("kspan: following the pods of node {node} for Kubernetes metadata");
            let cache = Arc::new(crate::k8s::PodCache::default());
            tokio::spawn(crate::k8s::follow(client, node, cache.clone()));
            Some(cache)
        }
        None => None,
    };
    let procs = ProcessCache::new(
        HostResource::detect(&resource.attributes),
        resource.service_names.clone(),
    )
    .with_pods(pods);
    let mut builder = SpanBuilder::new(WallClock::new(), procs, ProcFdResolver::default())
        .with_funcs(capture.config.funcs.clone());
    if let Some(opts) = l7 {
        builder = builder.with_l7(opts);
    }
    // The build stage is CPU work (and reads /proc): on a thread of its own, with a runtime
    // of its own for its timers, it can never hold up the reader, the export stage or the
    // metrics endpoint on the main runtime, however busy it is.
    let build_stats = stats.clone();
    let build_thread = std::thread::Builder::new()
        .name("kspan-build".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(build::run(builder, sampler, event_rx, span_tx, build_stats)),
                Err(e) => log::error!("cannot start the build stage's runtime: {e}"),
            }
        })
        .map_err(RunError::BuildThread)?;
    eprintln!("kspan: tracing (programs attached); spans to {desc}; stop with Ctrl-C");

    let stop = async move {
        let deadline = async {
            match stop_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = deadline => {}
            // The sink's output went away (`kspan run | head`).
            _ = output_closed.notified() => {}
        }
    };
    let reader = reader::Reader {
        capture,
        ready,
        stats: stats.clone(),
        governor,
        log_interval: metrics_cfg.log_interval,
    };
    let capture = reader.run(event_tx, stop).await;
    // The reader has closed its channel: the build stage drains it and ends.
    let _ = tokio::task::spawn_blocking(move || build_thread.join()).await;
    let _ = export_task.await;
    trim_task.abort();
    let kernel = capture.counters();
    stats.update_kernel(&kernel);
    if let Some(t) = metrics_task {
        t.abort();
    }
    Ok(RunSummary {
        totals: stats.totals(),
        kernel,
    })
}

/// How often freed heap memory is given back to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// glibc keeps freed memory for reuse: in a 30-minute soak one burst (a large export batch,
/// a queue that filled for a moment) left RSS 1.9 MiB higher for the rest of the run, and
/// RSS became the high-water mark of every such moment. Giving free memory back every 30 s
/// keeps RSS at what is in use.
async fn trim_freed_memory() {
    let mut every = tokio::time::interval(TRIM_INTERVAL);
    loop {
        every.tick().await;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free memory of glibc's own heaps to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
