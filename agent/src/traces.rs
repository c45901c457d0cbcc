//! Whole traces kept or dropped together.
//!
//! Spans of a request trace (its request spans and their children) are held until the trace's
//! local root ends; then the trace goes to the samplers as one [`Group`]: they decide on the
//! root, and every span follows that decision with the same threshold (`th`). A span of a trace
//! already decided ([`Group::Late`]) follows the decision the holder remembers
//! ([`Holder::record_decision`], [`Holder::decision`]): the one place decisions are kept.
//!
//! Held items are [`Item`]s: request spans stay in their kernel form until the decision, so a
//! trace that is dropped is never built.
//!
//! Bounds: at most `max_spans` spans are held; beyond it, and for traces whose root has not
//! ended within `max_age`, the oldest trace is released as it is (counted as `released_early`)
//! and decided on its first request span.
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use opentelemetry::trace::TraceId;

use crate::item::Item;

/// Traces whose decision is remembered for late spans.
pub const REMEMBERED: usize = 65_536;
/// Traces released whose decisions are not recorded yet, beyond which they are remembered
/// as released without one.
const UNDECIDED_MAX: usize = 16_384;

/// The last `cap` traces recorded (a power of two, at most 65,536), each with a value.
///
/// Cheap on the path every request takes: values go into a ring in the order they come
/// (sequential writes), and an index of `2 * cap` four-byte slots (small enough to stay in
/// cache) maps a trace's hash to its ring position, with 16 bits of the hash beside it so
/// that a trace never recorded (most lookups) is told without touching the ring. A trace is
/// forgotten when the ring comes round to its entry, or when a later trace takes its index
/// slot; the ring entry's trace id is always compared, so a lookup never returns another
/// trace's value.
pub struct Recent<V> {
    ring: Box<[Option<(TraceId, V)>]>,
    head: usize,
    /// Per index slot: 0 if empty, else (16 bits of the hash, never 0) << 16 | ring position.
    index: Box<[u32]>,
    hasher: foldhash::fast::RandomState,
    index_mask: usize,
}

impl<V> Recent<V> {
    pub fn new(cap: usize) -> Recent<V> {
        let cap = cap.clamp(1, 1 << 16).next_power_of_two();
        Recent {
            ring: (0..cap).map(|_| None).collect(),
            head: 0,
            index: vec![0; 2 * cap].into_boxed_slice(),
            hasher: foldhash::fast::RandomState::default(),
            index_mask: 2 * cap - 1,
        }
    }

    /// `t`'s index slot and fingerprint.
    fn slot(&self, t: &TraceId) -> (usize, u32) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(t);
        ((h as usize) & self.index_mask, ((h >> 48) as u32).max(1))
    }

    /// Records `t` with `v`.
    pub fn insert(&mut self, t: TraceId, v: V) {
        let (i, print) = self.slot(&t);
        let at = self.head;
        self.ring[at] = Some((t, v));
        self.head = (at + 1) & (self.ring.len() - 1);
        self.index[i] = print << 16 | at as u32;
    }

    pub fn get(&self, t: &TraceId) -> Option<&V> {
        let (i, print) = self.slot(t);
        let e = self.index[i];
        if e >> 16 != print {
            return None;
        }
        match &self.ring[(e & 0xffff) as usize] {
            Some((k, v)) if k == t => Some(v),
            _ => None,
        }
    }

    pub fn contains(&self, t: &TraceId) -> bool {
        self.get(t).is_some()
    }
}

/// A trace's spans: most have a few, held without an allocation.
pub type Spans = smallvec::SmallVec<[Item; 4]>;

/// Spans that go to the samplers together.
#[derive(Debug)]
pub enum Group {
    /// A span on its own.
    One(Item),
    /// A whole trace: decide on `spans[root]`, apply to all.
    Trace { spans: Spans, root: usize },
    /// Spans of a trace decided before: follow that decision (if still remembered).
    Late { spans: Spans, trace: TraceId },
}

#[derive(Debug)]
struct Held {
    spans: Spans,
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
    /// Traces released and decided: `None` if released without a decision recorded.
    decided: Recent<Option<D>>,
    /// Traces released whose decision has not been recorded yet (a batch's worth): kept
    /// apart so that each trace is written to `decided` once.
    undecided: foldhash::HashSet<TraceId>,
    pub counts: HoldCounts,
}

impl<D: Copy> Holder<D> {
    /// Traces held now (for `kspan_table_entries`).
    pub fn held_traces(&self) -> usize {
        self.order.len()
    }

    pub fn new(max_spans: usize, max_age: std::time::Duration) -> Holder<D> {
        Holder {
            held: HashMap::new(),
            order: VecDeque::new(),
            total: 0,
            max_spans,
            max_age_ns: max_age.as_nanos() as u64,
            decided: Recent::new(REMEMBERED),
            undecided: foldhash::HashSet::default(),
            counts: HoldCounts::default(),
        }
    }

    pub fn held_spans(&self) -> usize {
        self.total
    }

    /// Spans of trace `t` are held from now on.
    pub fn begin(&mut self, t: TraceId, now_ns: u64) {
        if !self.held.contains_key(&t) && !self.was_released(&t) {
            self.held.insert(
                t,
                Held {
                    spans: Spans::new(),
                    since_ns: now_ns,
                },
            );
            self.order.push_back(t);
        }
    }

    /// A span: held if its trace is, else passed on.
    pub fn push(&mut self, b: Item, out: &mut Vec<Group>) {
        let t = b.trace_id();
        if let Some(h) = self.held.get_mut(&t) {
            h.spans.push(b);
            self.total += 1;
            if self.total > self.max_spans {
                self.release_oldest(out);
            }
        } else if self.was_released(&t) {
            out.push(Group::Late {
                spans: smallvec::smallvec![b],
                trace: t,
            });
        } else {
            out.push(Group::One(b));
        }
    }

    /// A span whose trace has its local root elsewhere on this host (the request it belongs
    /// to, or the client that called it): held until that root ends, unless the trace was
    /// decided already.
    pub fn hold(&mut self, b: Item, now_ns: u64, out: &mut Vec<Group>) {
        self.begin(b.trace_id(), now_ns);
        self.push(b, out);
    }

    /// Trace `t` waited for a root that will not come: it goes on as it is, decided on its
    /// first request span.
    pub fn release(&mut self, t: TraceId, out: &mut Vec<Group>) {
        let Some(h) = self.held.remove(&t) else {
            return;
        };
        self.total -= h.spans.len();
        self.compact_order();
        self.release_spans(t, h.spans, out);
    }

    /// The local root of its trace ended: the trace is complete.
    pub fn finish(&mut self, root: Item, out: &mut Vec<Group>) {
        let t = root.trace_id();
        if self.was_released(&t) {
            out.push(Group::Late {
                spans: smallvec::smallvec![root],
                trace: t,
            });
            return;
        }
        let mut spans = match self.held.remove(&t) {
            Some(h) => {
                self.total -= h.spans.len();
                h.spans
            }
            None => Spans::new(),
        };
        self.compact_order();
        spans.push(root);
        let root = spans.len() - 1;
        self.remember(t);
        self.counts.traces_completed += 1;
        out.push(Group::Trace { spans, root });
    }

    /// Trace `from` is part of trace `to`: its spans move there, and span `adopted` (if
    /// any) gets the parent it waited for.
    pub fn merge(
        &mut self,
        from: TraceId,
        to: TraceId,
        adopted: Option<(opentelemetry::trace::SpanId, opentelemetry::trace::SpanId)>,
        now_ns: u64,
        out: &mut Vec<Group>,
    ) {
        if from == to {
            return;
        }
        let Some(h) = self.held.remove(&from) else {
            return;
        };
        self.compact_order();
        let mut spans = h.spans;
        for b in &mut spans {
            b.retrace(to);
            if let Some((span, parent)) = adopted {
                if b.span_id() == span {
                    b.set_parent(parent);
                }
            }
        }
        if self.was_released(&to) {
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
                self.release_spans(t, h.spans, out);
                return;
            }
        }
    }

    /// Held spans of trace `t` go out as one trace, decided on their first request span
    /// (SERVER or CLIENT), else their first span.
    fn release_spans(&mut self, t: TraceId, spans: Spans, out: &mut Vec<Group>) {
        if spans.is_empty() {
            return;
        }
        self.remember(t);
        let root = spans
            .iter()
            .position(|b| {
                matches!(
                    b.kind(),
                    opentelemetry::trace::SpanKind::Server | opentelemetry::trace::SpanKind::Client
                )
            })
            .unwrap_or(0);
        out.push(Group::Trace { spans, root });
    }

    /// Ids of traces no longer held stay in `order` until they reach its front, or until they
    /// outnumber the held ones (then they are swept out at once: amortised O(1)).
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.held.len() + 1024 {
            let held = &self.held;
            self.order.retain(|t| held.contains_key(t));
        }
    }

    /// Trace `t` went out as a [`Group::Trace`]: its later spans are late.
    fn remember(&mut self, t: TraceId) {
        // Whoever never records decisions still gets a bound.
        if self.undecided.len() >= UNDECIDED_MAX {
            for u in std::mem::take(&mut self.undecided) {
                self.decided.insert(u, None);
            }
        }
        self.undecided.insert(t);
    }

    /// Whether trace `t` went out already (its spans now are late).
    fn was_released(&self, t: &TraceId) -> bool {
        self.decided.contains(t) || (!self.undecided.is_empty() && self.undecided.contains(t))
    }

    /// Trace `t` (released as a [`Group::Trace`]) was decided `d`.
    pub fn record_decision(&mut self, t: TraceId, d: D) {
        self.undecided.remove(&t);
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

    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::*;
    use crate::procinfo::ProcResource;

    fn span(trace: u128, id: u64, kind: SpanKind) -> Item {
        Item::Built(Box::new(crate::span::Built {
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
        }))
    }

    fn ids(g: &Group) -> Vec<(u128, u64)> {
        let spans = match g {
            Group::One(b) => std::slice::from_ref(b),
            Group::Trace { spans, .. } | Group::Late { spans, .. } => spans.as_slice(),
        };
        spans
            .iter()
            .map(|b| {
                (
                    u128::from_be_bytes(b.trace_id().to_bytes()),
                    u64::from_be_bytes(b.span_id().to_bytes()),
                )
            })
            .collect()
    }

    /// Recent traces are found with their values; older ones are forgotten, and a lookup
    /// never gives one trace another's value.
    #[test]
    fn recent_traces_are_remembered_for_their_window() {
        let mut r = Recent::<u64>::new(1024);
        for i in 0..10_000u64 {
            r.insert(TraceId::from(u128::from(i) + 1), i);
        }
        // The last ones are there (unless a later trace took their index slot: rare).
        let found = (9_000..10_000u64)
            .filter(|&i| r.get(&TraceId::from(u128::from(i) + 1)) == Some(&i))
            .count();
        assert!(found > 600, "{found} of the last 1000");
        for i in 0..10_000u64 {
            if let Some(v) = r.get(&TraceId::from(u128::from(i) + 1)) {
                assert_eq!(*v, i);
                // Beyond the ring: forgotten.
                assert!(i >= 10_000 - 1024, "{i}");
            }
        }
        assert!(!r.contains(&TraceId::from(u128::MAX)));
        // The newest value of a trace recorded twice.
        r.insert(TraceId::from(7u128), 1);
        r.insert(TraceId::from(7u128), 2);
        assert_eq!(r.get(&TraceId::from(7u128)), Some(&2));
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
        h.merge(
            TraceId::from(2),
            TraceId::from(1),
            Some((SpanId::from(3), SpanId::from(4))),
            1,
            &mut out,
        );
        h.finish(span(1, 4, SpanKind::Client), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(ids(&out[0]), vec![(1, 2), (1, 3), (1, 4)]);
        assert!(matches!(out[0], Group::Trace { root: 2, .. }));
        // The span that waited for its caller got it as parent.
        if let Group::Trace { spans, .. } = &out[0] {
            let Item::Built(b) = &spans[1] else {
                panic!("built")
            };
            assert_eq!(b.span.parent_span_id, SpanId::from(4));
        }
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
    fn a_held_trace_is_released_when_its_root_will_not_come() {
        let mut h = Holder::<bool>::new(100, Duration::from_secs(30));
        let mut out = Vec::new();
        h.hold(span(5, 1, SpanKind::Internal), 0, &mut out);
        h.hold(span(5, 2, SpanKind::Server), 0, &mut out);
        assert!(out.is_empty());
        h.release(TraceId::from(5), &mut out);
        assert!(matches!(out[..], [Group::Trace { root: 1, .. }]));
        assert_eq!(h.held_spans(), 0);
        out.clear();
        // Decided: a late span follows.
        h.hold(span(5, 3, SpanKind::Internal), 1, &mut out);
        assert!(matches!(out[..], [Group::Late { .. }]));
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
