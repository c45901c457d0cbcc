//! Samplers: rule-based -> adaptive -> cost-aware, each optional, one decision model.
//!
//! Every stage turns the span's current keep probability into a (never larger) one, i.e.
//! raises the rejection threshold T; the final decision is R >= T with R the 56 random bits
//! of the trace id (or of the rule's randomness source). A kept span carries `ot=th:<T>` in
//! its trace state, so any backend can weight it by its adjusted count 2^56 / (2^56 - T).
//! Decisions depend only on (R, T): two agents with the same thresholds agree on every trace.
//!
//! The adaptive and cost stages combine proportionally (p_out = p_in * f) so their rate and
//! spend targets hold whatever the earlier stages did.
pub mod adaptive;
pub mod budget;
pub mod expr;
pub mod rules;
pub mod simulate;
pub mod threshold;

use std::collections::HashMap;

use opentelemetry::{trace::SpanKind, KeyValue};
use serde::{Deserialize, Serialize};

pub use self::threshold::{Randomness, Threshold, DEFAULT_PRECISION};
use self::{
    adaptive::{Adaptive, AdaptiveConfig},
    budget::{Budget, BudgetConfig, BudgetStatus},
    rules::{RuleSampler, RulesConfig},
};

/// The attribute a kept span carries naming the rule (or stage) that decided it.
pub const SAMPLING_RULE_ATTR: &str = "kspan.sampling.rule";

/// A span attribute value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// What samplers read from a span. Implementations must not allocate.
pub trait SpanView {
    fn name(&self) -> &str;
    /// OTLP span kind number (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    fn kind_code(&self) -> i64;
    /// OTLP status code (0 unset, 1 ok, 2 error).
    fn status_code(&self) -> i64;
    fn duration_ns(&self) -> u64;
    /// End time, unix ns: the samplers' clock.
    fn end_unix_ns(&self) -> u64;
    fn trace_id(&self) -> [u8; 16];
    fn span_id(&self) -> [u8; 8] {
        [0; 8]
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    fn service_name(&self) -> &str;
    /// Rough encoded size in bytes, for byte budgets.
    fn size_estimate(&self) -> u64;

    fn is_error(&self) -> bool {
        self.status_code() == 2
    }
}

pub fn attr_value(v: &opentelemetry::Value) -> Option<AttrValue<'_>> {
    Some(match v {
        opentelemetry::Value::String(s) => AttrValue::Str(s.as_str()),
        opentelemetry::Value::I64(i) => AttrValue::Int(*i),
        opentelemetry::Value::F64(f) => AttrValue::Float(*f),
        opentelemetry::Value::Bool(b) => AttrValue::Bool(*b),
        _ => return None,
    })
}

/// OTLP number of a span kind.
pub fn kind_code(k: &SpanKind) -> i64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// An owned attribute value, for spans made from data (tests, simulations, `sampling explain`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValueOwned {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl AttrValueOwned {
    fn view(&self) -> AttrValue<'_> {
        match self {
            AttrValueOwned::Str(s) => AttrValue::Str(s),
            AttrValueOwned::Int(i) => AttrValue::Int(*i),
            AttrValueOwned::Float(f) => AttrValue::Float(*f),
            AttrValueOwned::Bool(b) => AttrValue::Bool(*b),
        }
    }
}

/// A span given as plain data: what `kspan sampling explain --span` parses, and what the
/// sampler tests build.
#[derive(Debug, Clone)]
pub struct PlainSpan {
    pub name: String,
    /// OTLP span kind number.
    pub kind: i64,
    /// OTLP status code.
    pub status: i64,
    pub duration: u64,
    /// End time, unix ns.
    pub end: u64,
    pub trace_id: [u8; 16],
    pub attrs: HashMap<String, AttrValueOwned>,
    pub res: HashMap<String, AttrValueOwned>,
    pub service: String,
}

impl PlainSpan {
    pub fn new(name: &str, kind: i64, status: i64, duration: u64) -> PlainSpan {
        PlainSpan {
            name: name.into(),
            kind,
            status,
            duration,
            end: 0,
            trace_id: [0; 16],
            attrs: HashMap::new(),
            res: HashMap::new(),
            service: "svc".into(),
        }
    }

    pub fn attr(mut self, k: &str, v: AttrValueOwned) -> Self {
        self.attrs.insert(k.into(), v);
        self
    }

    pub fn resource(mut self, k: &str, v: &str) -> Self {
        self.res.insert(k.into(), AttrValueOwned::Str(v.into()));
        if k == "service.name" {
            self.service = v.into();
        }
        self
    }
}

impl SpanView for PlainSpan {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind_code(&self) -> i64 {
        self.kind
    }
    fn status_code(&self) -> i64 {
        self.status
    }
    fn duration_ns(&self) -> u64 {
        self.duration
    }
    fn end_unix_ns(&self) -> u64 {
        self.end
    }
    fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.attrs.get(key).map(AttrValueOwned::view)
    }
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.res.get(key).map(AttrValueOwned::view)
    }
    fn service_name(&self) -> &str {
        &self.service
    }
    fn size_estimate(&self) -> u64 {
        200
    }
}

/// The `sampling:` section of the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Threshold precision in hex digits (1-14).
    #[serde(default = "default_precision")]
    pub precision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
}

fn default_precision() -> u32 {
    DEFAULT_PRECISION
}

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("sampling.rules: {0}")]
    Rules(#[from] rules::RuleError),
    #[error("sampling.adaptive: {0}")]
    Adaptive(String),
    #[error("sampling.budget: {0}")]
    Budget(String),
    #[error("sampling.precision must be 1 to 14, not {0}")]
    Precision(u32),
}

/// Which stage decided, for the `kspan.sampling.rule` attribute and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// A rule (index into the rule list), or the default percentage.
    Rule(usize),
    Default,
    Adaptive,
    Budget,
    /// No sampling configured.
    None,
}

/// The pipeline's decision for one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub keep: bool,
    pub threshold: Threshold,
    pub randomness: Randomness,
    pub decider: Decider,
    /// Kept because a rule said always, or because it is an error the stages protect.
    pub priority: bool,
}

/// What each stage passes on.
#[derive(Debug, Clone, Copy)]
pub struct Partial {
    pub probability: f64,
    pub randomness: Randomness,
    pub priority: bool,
    pub decider: Decider,
}

/// The configured samplers.
pub struct Pipeline {
    precision: u32,
    rules: Option<RuleSampler>,
    adaptive: Option<Adaptive>,
    budget: Option<Budget>,
}

impl Pipeline {
    pub fn new(cfg: &SamplingConfig) -> Result<Pipeline, SamplingError> {
        if !(1..=14).contains(&cfg.precision) {
            return Err(SamplingError::Precision(cfg.precision));
        }
        Ok(Pipeline {
            precision: cfg.precision,
            rules: cfg.rules.as_ref().map(RuleSampler::compile).transpose()?,
            adaptive: cfg
                .adaptive
                .as_ref()
                .map(Adaptive::new)
                .transpose()
                .map_err(SamplingError::Adaptive)?,
            budget: cfg
                .budget
                .as_ref()
                .map(Budget::new)
                .transpose()
                .map_err(SamplingError::Budget)?,
        })
    }

    pub fn is_noop(&self) -> bool {
        self.rules.is_none() && self.adaptive.is_none() && self.budget.is_none()
    }

    /// Decides for one span. No allocation.
    pub fn decide<S: SpanView + ?Sized>(&mut self, s: &S) -> Outcome {
        let mut p = Partial {
            probability: 1.0,
            randomness: Randomness::from_trace_id(s.trace_id()),
            priority: false,
            decider: Decider::None,
        };
        if let Some(r) = &self.rules {
            p = r.decide(s);
            if p.probability <= 0.0 {
                return Outcome {
                    keep: false,
                    threshold: Threshold::NEVER,
                    randomness: p.randomness,
                    decider: p.decider,
                    priority: false,
                };
            }
        }
        if let Some(a) = &mut self.adaptive {
            a.apply(s, &mut p);
        }
        let now = s.end_unix_ns();
        let mut threshold = Threshold::from_probability_clamped(p.probability, self.precision);
        if let Some(b) = &mut self.budget {
            threshold = b.apply(s, &mut p, now, self.precision);
        }
        Outcome {
            keep: threshold.keeps(p.randomness),
            threshold,
            randomness: p.randomness,
            decider: p.decider,
            priority: p.priority,
        }
    }

    /// Name of what decided (`kspan.sampling.rule`).
    pub fn decider_name(&self, d: Decider) -> &str {
        match d {
            Decider::Rule(i) => self
                .rules
                .as_ref()
                .and_then(|r| r.rule_name(i))
                .unwrap_or("rule"),
            Decider::Default => "default",
            Decider::Adaptive => "adaptive",
            Decider::Budget => "budget",
            Decider::None => "none",
        }
    }

    /// Reads the budget's state file (see `Budget::open_state`).
    pub fn open_state(&mut self) -> Result<Option<String>, SamplingError> {
        match &mut self.budget {
            Some(b) => b.open_state().map_err(SamplingError::Budget),
            None => Ok(None),
        }
    }

    /// Saves the budget's state, if it has a state file.
    pub fn save_state(&self) -> Result<(), String> {
        self.budget.as_ref().map_or(Ok(()), Budget::save)
    }

    pub fn budget_status(&self, now_unix_ns: u64) -> Option<BudgetStatus> {
        self.budget.as_ref().map(|b| b.status(now_unix_ns))
    }

    pub fn rules(&self) -> Option<&RuleSampler> {
        self.rules.as_ref()
    }

    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.adaptive.as_ref()
    }
}

/// Writes the decision into a kept span: `ot=th:...` in its trace state (`th:0` when kept
/// with probability 1, so a backend can tell an adjusted count of 1 from "unknown"), other
/// vendors' entries and `ot` sub-keys untouched, and `kspan.sampling.rule`.
pub fn annotate(span: &mut opentelemetry_sdk::trace::SpanData, o: &Outcome, decider: &str) {
    // NEVER has no `th` form; a kept span never carries it anyway.
    if o.threshold != Threshold::NEVER {
        let ctx = &span.span_context;
        let mut ot = ctx
            .trace_state()
            .get("ot")
            .map(threshold::OtTraceState::parse)
            .unwrap_or_default();
        ot.threshold = Some(ot.threshold.map_or(o.threshold, |t| t.max(o.threshold)));
        if let Ok(ts) = ctx.trace_state().insert("ot", ot.encode()) {
            span.span_context = opentelemetry::trace::SpanContext::new(
                ctx.trace_id(),
                ctx.span_id(),
                ctx.trace_flags(),
                ctx.is_remote(),
                ts,
            );
        }
    }
    span.attributes
        .push(KeyValue::new(SAMPLING_RULE_ATTR, decider.to_string()));
}

#[cfg(test)]
pub(crate) mod tests {
    pub use super::{AttrValueOwned, PlainSpan as TestSpan};

    #[test]
    fn kept_spans_carry_their_threshold_and_keep_other_vendors() {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        let span = |ts: TraceState| opentelemetry_sdk::trace::SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([2; 8]),
                TraceFlags::SAMPLED,
                false,
                ts,
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "x".into(),
            start_time: std::time::UNIX_EPOCH,
            end_time: std::time::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        };
        let outcome = |threshold| super::Outcome {
            keep: true,
            threshold,
            randomness: super::Randomness::from_raw(0),
            decider: super::Decider::Default,
            priority: false,
        };
        let mut s = span(TraceState::default());
        super::annotate(&mut s, &outcome(super::Threshold::ALWAYS), "errors");
        assert_eq!(s.span_context.trace_state().header(), "ot=th:0");
        // A continued trace state: other vendors and other ot sub-keys stay.
        let ts =
            TraceState::from_key_value([("vendor", "abc"), ("ot", "rv:0123456789abcd")]).unwrap();
        let mut s = span(ts);
        let half = super::Threshold::from_probability(0.5, 4).unwrap();
        super::annotate(&mut s, &outcome(half), "default");
        let h = s.span_context.trace_state().header();
        assert!(h.starts_with("ot=th:8;rv:0123456789abcd"), "{h}");
        assert!(h.contains("vendor=abc"), "{h}");
    }
}
