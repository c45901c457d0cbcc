//! The build stage: decoded events become spans (with process, container, Kubernetes and
//! connection context), pass the samplers, and go to the export queue in chunks.
//!
//! Input: the reader's channel (the reader blocks when this stage is behind). Output: the
//! export queue, bounded in spans; a chunk that does not fit is cut and the newest spans are
//! counted as `queue_full`.
use std::sync::Arc;

use opentelemetry::trace::Status;
use tokio::sync::mpsc;

use super::{queue::QueueTx, MAX_CHUNK};
use crate::{
    conns::ProcFdResolver,
    decode::RawEvent,
    event::kind_name,
    metrics::{DropReason, Stats},
    sampling::Pipeline as Sampler,
    spans::{Built, SpanBuilder},
};

/// How often the budget's spend is written to its state file (and once at exit).
const BUDGET_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds spans from events, samples them, and passes them on in chunks.
pub async fn run(
    mut builder: SpanBuilder<ProcFdResolver>,
    mut sampler: Option<Sampler>,
    mut rx: mpsc::Receiver<Vec<RawEvent>>,
    tx: QueueTx<Built>,
    stats: Arc<Stats>,
) {
    use agent_common::EventKind;
    const KINDS: [EventKind; 4] = [
        EventKind::Syscall,
        EventKind::TcpConnect,
        EventKind::TcpAccept,
        EventKind::TcpClose,
    ];
    let mut last_save = std::time::Instant::now();
    let save = |sampler: &Option<Sampler>| {
        if let Some(Err(e)) = sampler.as_ref().map(|p| p.save_state()) {
            log::warn!("sampling.budget.state_file: {e}");
        }
    };
    while let Some(events) = rx.recv().await {
        // Counted per received chunk, not per event: the stats are shared atomics.
        let mut by_kind = [0u64; KINDS.len()];
        let mut sampled_out = 0u64;
        for part in events.chunks(MAX_CHUNK) {
            // Important spans (errors, always-keep rules) first: they may use the queue's
            // reserve, ordinary ones may not.
            let mut out = Vec::with_capacity(part.len());
            let mut ordinary = Vec::new();
            for ev in part {
                let kind = match ev {
                    RawEvent::Syscall(..) => EventKind::Syscall,
                    RawEvent::Tcp(k, ..) => *k,
                };
                if let Some(i) = KINDS.iter().position(|k| *k == kind) {
                    by_kind[i] += 1;
                }
                let mut built = builder.build(ev);
                let important = match sampler.as_mut() {
                    Some(p) => {
                        let o = p.decide(&built);
                        if !o.keep {
                            sampled_out += 1;
                            continue;
                        }
                        crate::sampling::annotate(&mut built.span, &o, p.decider_name(o.decider));
                        o.priority
                    }
                    None => matches!(built.span.status, Status::Error { .. }),
                };
                if important {
                    out.push(built);
                } else {
                    ordinary.push(built);
                }
            }
            if out.is_empty() && ordinary.is_empty() {
                continue;
            }
            let important = out.len();
            out.append(&mut ordinary);
            let sent = tx.send_prioritized(out, important);
            stats.dropped(DropReason::QueueFull, sent.full as u64);
            stats.dropped(DropReason::ExportFailed, sent.closed as u64);
        }
        stats.add_spans_built(events.len() as u64);
        stats.dropped(DropReason::SampledOut, sampled_out);
        for (k, n) in KINDS.iter().zip(by_kind) {
            stats.add_events(kind_name(*k), n);
        }
        stats.set_open_connections(builder.open_connections());
        if let Some(b) = sampler
            .as_ref()
            .and_then(|p| p.budget_status(crate::clock::unix_now_ns()))
        {
            stats.set_budget(&b);
        }
        if last_save.elapsed() >= BUDGET_SAVE_INTERVAL {
            save(&sampler);
            last_save = std::time::Instant::now();
        }
    }
    save(&sampler);
}
