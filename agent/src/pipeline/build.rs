//! The build stage: decoded events become spans (with process, container, Kubernetes and
//! connection context), pass the samplers, and go to the export queue in chunks. Spans of a
//! request trace come as one group once its root ends, and are kept or dropped together.
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
    item::Item,
    metrics::{DropReason, Stats},
    sampling::{Outcome, Pipeline as Sampler},
    spans::{Built, SpanBuilder},
    traces::Group,
    wire::{kind_name, EVENT_KINDS},
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
    let mut last_save = std::time::Instant::now();
    let save = |sampler: &Option<Sampler>| {
        if let Some(Err(e)) = sampler.as_ref().map(|p| p.save_state()) {
            log::warn!("sampling.budget.state_file: {e}");
        }
    };
    let mut groups = Vec::new();
    loop {
        // Held traces are released by age even when no events come.
        let events = match tokio::time::timeout(EXPIRE_INTERVAL, rx.recv()).await {
            Ok(Some(events)) => events,
            Ok(None) => break,
            Err(_) => Vec::new(),
        };
        // Counted per received chunk, not per event: the stats are shared atomics.
        let mut by_kind = [0u64; EVENT_KINDS.len()];
        let mut n = 0;
        for ev in events {
            let kind = ev.kind();
            if let Some(i) = EVENT_KINDS.iter().position(|k| *k == kind) {
                by_kind[i] += 1;
            }
            builder.process(ev, &mut groups);
            n += 1;
            if n % MAX_CHUNK == 0 {
                send(&mut groups, &mut sampler, &mut builder, &tx, &stats);
            }
        }
        send(&mut groups, &mut sampler, &mut builder, &tx, &stats);
        builder.expire(&mut groups);
        send(&mut groups, &mut sampler, &mut builder, &tx, &stats);
        for (k, n) in EVENT_KINDS.iter().zip(by_kind) {
            stats.add_events(kind_name(*k), n);
        }
        stats.set_open_connections(builder.open_connections());
        stats.set_table_losses(builder.table_losses());
        stats.set_table_sizes(&builder.table_sizes());
        report_requests(&builder, &stats);
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
    builder.drain(&mut groups);
    send(&mut groups, &mut sampler, &mut builder, &tx, &stats);
    stats.set_table_losses(builder.table_losses());
    report_requests(&builder, &stats);
    save(&sampler);
}

/// What the request tracker and the trace holder counted, to the metrics.
fn report_requests(builder: &SpanBuilder<ProcFdResolver>, stats: &Stats) {
    if let (Some(c), Some(p)) = (builder.request_counts(), builder.protocol_counts()) {
        stats.set_requests(&c, p, &builder.hold_counts(), builder.held_spans());
    }
}

/// How often held traces are checked for age when no events arrive.
const EXPIRE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples the groups and sends the kept spans (important ones first) in chunks.
fn send(
    groups: &mut Vec<Group>,
    sampler: &mut Option<Sampler>,
    builder: &mut SpanBuilder<ProcFdResolver>,
    tx: &QueueTx<Built>,
    stats: &Stats,
) {
    if groups.is_empty() {
        return;
    }
    let mut kept = Kept {
        important: Vec::new(),
        ordinary: Vec::new(),
    };
    let mut built = 0u64;
    let mut sampled_out = 0u64;
    for g in groups.drain(..) {
        let (spans, outcome) = match g {
            Group::One(b) => {
                // One span: decided and placed without a Vec of its own.
                let o = sampler.as_mut().map(|p| p.decide(&b));
                built += 1;
                match o {
                    Some(o) if !o.keep => sampled_out += 1,
                    _ => kept.place(builder.materialize(b), &o, sampler),
                }
                continue;
            }
            Group::Trace { spans, root } => {
                let o = sampler.as_mut().map(|p| trace_outcome(p, &spans, root));
                builder.record_decision(spans[root].trace_id(), o);
                (spans, o)
            }
            Group::Late { spans, trace } => {
                let o = match builder.decision(&trace) {
                    Some(o) => o,
                    None => sampler.as_mut().map(|p| p.decide(&spans[0])),
                };
                (spans, o)
            }
        };
        built += spans.len() as u64;
        match outcome {
            Some(o) if !o.keep => sampled_out += spans.len() as u64,
            _ => {
                for b in spans {
                    kept.place(builder.materialize(b), &outcome, sampler);
                }
            }
        }
    }
    let Kept {
        mut important,
        mut ordinary,
    } = kept;
    stats.add_spans_built(built);
    stats.dropped(DropReason::SampledOut, sampled_out);
    // Important spans (errors, always-keep rules) first: they may use the queue's reserve,
    // ordinary ones may not.
    while !important.is_empty() || !ordinary.is_empty() {
        let take_i = important.len().min(MAX_CHUNK);
        let mut chunk: Vec<Built> = important.drain(..take_i).collect();
        let take_o = ordinary.len().min(MAX_CHUNK - take_i);
        chunk.extend(ordinary.drain(..take_o));
        let sent = tx.send_prioritized(chunk, take_i);
        stats.dropped(DropReason::QueueFull, sent.full as u64);
        stats.dropped(DropReason::ExportFailed, sent.closed as u64);
    }
}

/// Kept spans on their way to the queue.
struct Kept {
    /// Errors and always-keep rules: sent first, and may use the queue's reserve.
    important: Vec<Built>,
    ordinary: Vec<Built>,
}

impl Kept {
    /// Annotates a kept span with its decision (none: sampling off) and files it.
    fn place(&mut self, mut b: Built, outcome: &Option<Outcome>, sampler: &Option<Sampler>) {
        let important = match outcome {
            Some(o) => {
                let name = sampler
                    .as_ref()
                    .map_or("none", |p| p.decider_name(o.decider));
                crate::sampling::annotate(&mut b.span, o, name);
                o.priority
            }
            None => matches!(b.span.status, Status::Error { .. }),
        };
        if important {
            self.important.push(b);
        } else {
            self.ordinary.push(b);
        }
    }
}

/// A trace's decision: its root's; if the root would be dropped but a span in the trace is an
/// error the samplers keep, that span's decision (with its threshold) keeps the whole trace.
fn trace_outcome(p: &mut Sampler, spans: &[Item], root: usize) -> Outcome {
    let o = p.decide(&spans[root]);
    if o.keep {
        return o;
    }
    for (i, b) in spans.iter().enumerate() {
        if i != root && b.is_error() {
            let e = p.decide(b);
            if e.keep {
                return e;
            }
        }
    }
    o
}
