//! Whole traces kept or dropped together.
//!
//! Spans of a request trace (its request spans and their children) are held until the trace's
//! local root ends; then the trace goes to the samplers as one [`Group`]: they decide on the
//! root, and every span follows that decision with the same threshold (`th`). A span of a trace
//! already decided ([`Group::Late`]) follows the decision the holder remembers
//! ([`Holder::record_decision`], [`Holder::decision`]): the one place decisions are kept.
//!
//! Bounds: at most `max_spans` spans are held; beyond it, and for traces whose root has not
//! ended within `max_age`, the oldest trace is released as it is (counted as `released_early`)
//! and decided on its first request span.
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use opentelemetry::trace::{SpanContext, TraceId};

use crate::span::Built;

/// Traces whose decision is remembered for late spans.
pub const REMEMBERED: usize = 65_536;

/// The last `cap` traces recorded, each with a value; older ones are forgotten.
pub struct Recent<V> {
    map: HashMap<TraceId, V>,
    order: VecDeque<TraceId>,
    cap: usize,
}

impl<V> Recent<V> {
    pub fn new(cap: usize) -> Recent<V> {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Records `t` with `v` (a trace recorded before gets the new value, keeping its age).
    pub fn insert(&mut self, t: TraceId, v: V) {
        if let Some(old) = self.map.get_mut(&t) {
            *old = v;
            return;
        }
        self.map.insert(t, v);
        self.order.push_back(t);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, t: &TraceId) -> Option<&V> {
        self.map.get(t)
    }

    pub fn contains(&self, t: &TraceId) -> bool {
        self.map.contains_key(t)
    }
}

/// Spans that go to the samplers together.
#[derive(Debug)]
pub enum Group {
    /// A span on its own.
    One(Box<Built>),
    /// A whole trace: decide on `spans[root]`, apply to all.
    Trace { spans: Vec<Built>, root: usize },
    /// Spans of a trace decided before: follow that decision (if still remembered).
    Late { spans: Vec<Built>, trace: TraceId },
}

#[derive(Debug)]
struct Held {
    spans: Vec<Built>,
    /// Monotonic ns of the first span or begin.
    since_ns: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HoldCounts {
    /// Traces released before their root ended (held too long, or too many spans held).
    pub released_early: u64,
    pub traces_completed: u64,
}

/// Held traces, and the decisions of traces released (of type `D`, recorded by whoever
/// decides).
pub struct Holder<D: Copy> {
    held: HashMap<TraceId, Held>,
    order: VecDeque<TraceId>,
    total: usize,
    max_spans: usize,
    max_age_ns: u64,
    /// Traces released: `None` until their decision is recorded.
    decided: Recent<Option<D>>,
    pub counts: HoldCounts,
}

/// `span` moved into trace `t` (its span id and parent id are unchanged).
fn retrace(span: &mut opentelemetry_sdk::trace::SpanData, t: TraceId) {
    let c = &span.span_context;
    span.span_context = SpanContext::new(
        t,
        c.span_id(),
        c.trace_flags(),
        c.is_remote(),
        c.trace_state().clone(),
    );
}

impl<D: Copy> Holder<D> {
    pub fn new(max_spans: usize, max_age: std::time::Duration) -> Holder<D> {
        Holder {
            held: HashMap::new(),
            order: VecDeque::new(),
            total: 0,
            max_spans,
            max_age_ns: max_age.as_nanos() as u64,
            decided: Recent::new(REMEMBERED),
            counts: HoldCounts::default(),
        }
    }

    pub fn held_spans(&self) -> usize {
        self.total
    }

    /// Spans of trace `t` are held from now on.
    pub fn begin(&mut self, t: TraceId, now_ns: u64) {
        if !self.held.contains_key(&t) && !self.decided.contains(&t) {
            self.held.insert(
                t,
                Held {
                    spans: Vec::new(),
                    since_ns: now_ns,
                },
            );
            self.order.push_back(t);
        }
    }

    /// A span: held if its trace is, else passed on.
    pub fn push(&mut self, b: Built, out: &mut Vec<Group>) {
        let t = b.span.span_context.trace_id();
        if let Some(h) = self.held.get_mut(&t) {
            h.spans.push(b);
            self.total += 1;
            if self.total > self.max_spans {
                self.release_oldest(out);
            }
        } else if self.decided.contains(&t) {
            out.push(Group::Late {
                spans: vec![b],
                trace: t,
            });
        } else {
            out.push(Group::One(Box::new(b)));
        }
    }

    /// The local root of its trace ended: the trace is complete.
    pub fn finish(&mut self, root: Built, out: &mut Vec<Group>) {
        let t = root.span.span_context.trace_id();
        if self.decided.contains(&t) {
            out.push(Group::Late {
                spans: vec![root],
                trace: t,
            });
            return;
        }
        let mut spans = match self.held.remove(&t) {
            Some(h) => {
                self.total -= h.spans.len();
                h.spans
            }
            None => Vec::new(),
        };
        self.compact_order();
        spans.push(root);
        let root = spans.len() - 1;
        self.remember(t);
        self.counts.traces_completed += 1;
        out.push(Group::Trace { spans, root });
    }

    /// Trace `from` is part of trace `to`: its spans move there.
    pub fn merge(&mut self, from: TraceId, to: TraceId, now_ns: u64, out: &mut Vec<Group>) {
        if from == to {
            return;
        }
        let Some(h) = self.held.remove(&from) else {
            return;
        };
        self.compact_order();
        let mut spans = h.spans;
        for b in &mut spans {
            retrace(&mut b.span, to);
        }
        if self.decided.contains(&to) {
            self.total -= spans.len();
            out.push(Group::Late { spans, trace: to });
            return;
        }
        self.begin(to, now_ns);
        if let Some(h) = self.held.get_mut(&to) {
            h.spans.extend(spans);
        }
    }

    /// Releases traces held longer than the maximum age.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Group>) {
        while let Some(t) = self.order.front().copied() {
            match self.held.get(&t) {
                Some(h) if now_ns.saturating_sub(h.since_ns) > self.max_age_ns => {
                    self.release_oldest(out)
                }
                Some(_) => break,
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Releases everything held (at exit).
    pub fn drain(&mut self, out: &mut Vec<Group>) {
        while !self.order.is_empty() {
            self.release_oldest(out);
        }
    }

    fn release_oldest(&mut self, out: &mut Vec<Group>) {
        while let Some(t) = self.order.pop_front() {
            if let Some(h) = self.held.remove(&t) {
                self.total -= h.spans.len();
                self.counts.released_early += 1;
                if h.spans.is_empty() {
                    continue;
                }
                self.remember(t);
                // Decide on the first request span (SERVER or CLIENT), else the first span.
                let root = h
                    .spans
                    .iter()
                    .position(|b| {
                        matches!(
                            b.span.span_kind,
                            opentelemetry::trace::SpanKind::Server
                                | opentelemetry::trace::SpanKind::Client
                        )
                    })
                    .unwrap_or(0);
                out.push(Group::Trace {
                    spans: h.spans,
                    root,
                });
                return;
            }
        }
    }

    /// Ids of traces no longer held stay in `order` until they reach its front, or until they
    /// outnumber the held ones (then they are swept out at once: amortised O(1)).
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.held.len() + 1024 {
            let held = &self.held;
            self.order.retain(|t| held.contains_key(t));
        }
    }

    fn remember(&mut self, t: TraceId) {
        self.decided.insert(t, None);
    }

    /// Trace `t` (released as a [`Group::Trace`]) was decided `d`.
    pub fn record_decision(&mut self, t: TraceId, d: D) {
        self.decided.insert(t, Some(d));
    }

    /// The decision recorded for trace `t`, while it is remembered.
    pub fn decision(&self, t: &TraceId) -> Option<D> {
        self.decided.get(t).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use opentelemetry::trace::{SpanId, SpanKind, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::*;
    use crate::procinfo::ProcResource;

    fn span(trace: u128, id: u64, kind: SpanKind) -> Built {
        Built {
            resource: Arc::new(ProcResource {
                id: 0,
                pid: 1,
                service_name: "s".into(),
                resource: opentelemetry_sdk::Resource::builder_empty().build(),
            }),
            span: SpanData {
                span_context: SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: kind,
                name: "s".into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                end_time: std::time::SystemTime::UNIX_EPOCH,
                attributes: vec![],
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: opentelemetry::trace::Status::Unset,
                instrumentation_scope: Default::default(),
            },
        }
    }

    fn ids(g: &Group) -> Vec<(u128, u64)> {
        let spans = match g {
            Group::One(b) => std::slice::from_ref(&**b),
            Group::Trace { spans, .. } | Group::Late { spans, .. } => spans.as_slice(),
        };
        spans
            .iter()
            .map(|b| {
                let c = &b.span.span_context;
                (
                    u128::from_be_bytes(c.trace_id().to_bytes()),
                    u64::from_be_bytes(c.span_id().to_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn a_trace_is_held_until_its_root_and_merges_move_spans() {
        let mut h = Holder::<bool>::new(100, Duration::from_secs(30));
        let mut out = Vec::new();
        h.push(span(9, 1, SpanKind::Internal), &mut out);
        assert_eq!(out.len(), 1, "not held: passed on alone");
        out.clear();
        h.begin(TraceId::from(1), 0);
        h.begin(TraceId::from(2), 0); // provisional
        h.push(span(1, 2, SpanKind::Internal), &mut out);
        h.push(span(2, 3, SpanKind::Server), &mut out);
        assert!(out.is_empty());
        assert_eq!(h.held_spans(), 2);
        h.merge(TraceId::from(2), TraceId::from(1), 1, &mut out);
        h.finish(span(1, 4, SpanKind::Client), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(ids(&out[0]), vec![(1, 2), (1, 3), (1, 4)]);
        assert!(matches!(out[0], Group::Trace { root: 2, .. }));
        assert_eq!(h.held_spans(), 0);
        out.clear();
        // A late span of a decided trace follows its decision.
        h.push(span(1, 5, SpanKind::Internal), &mut out);
        assert!(matches!(&out[0], Group::Late { trace, .. } if *trace == TraceId::from(1)));
        assert_eq!(h.decision(&TraceId::from(1)), None, "not recorded yet");
        h.record_decision(TraceId::from(1), true);
        assert_eq!(h.decision(&TraceId::from(1)), Some(true));
        assert_eq!(h.counts.traces_completed, 1);
    }

    #[test]
    fn held_traces_are_released_by_age_and_by_room() {
        let mut h = Holder::<bool>::new(2, Duration::from_nanos(100));
        let mut out = Vec::new();
        h.begin(TraceId::from(1), 0);
        h.push(span(1, 1, SpanKind::Server), &mut out);
        h.begin(TraceId::from(2), 50);
        h.push(span(2, 2, SpanKind::Server), &mut out);
        h.expire(120, &mut out);
        assert_eq!(out.len(), 1, "only the first is older than 100 ns");
        assert_eq!(ids(&out[0]), vec![(1, 1)]);
        h.push(span(2, 3, SpanKind::Internal), &mut out);
        h.begin(TraceId::from(3), 60);
        h.push(span(3, 4, SpanKind::Internal), &mut out);
        assert_eq!(out.len(), 2, "over 2 spans held: the oldest trace goes");
        assert_eq!(ids(&out[1]), vec![(2, 2), (2, 3)]);
        h.drain(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(h.counts.released_early, 3);
        assert_eq!(h.held_spans(), 0);
    }
}
