//! What the samplers decide on: a span already built (syscall and TCP spans), or a request
//! span still in the form the kernel sent it ([`Pending`]), whose attributes are described
//! only if it is kept (or a sampling rule asks for one).
use std::{cell::OnceCell, sync::Arc};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceId};

use crate::{
    l7::{redact::Redactor, tracker::RequestSpan, Description},
    procinfo::ProcResource,
    sampling::{AttrValue, SpanView},
    span::Built,
};

/// A span on its way to the samplers.
#[derive(Debug)]
pub enum Item {
    Built(Box<Built>),
    Request(Box<Pending>),
}

/// A request span not built yet.
#[derive(Debug)]
pub struct Pending {
    pub resource: Arc<ProcResource>,
    pub span: RequestSpan,
    /// The span's end, unix ns (the samplers' clock).
    pub end_unix_ns: u64,
    /// Its description, made the first time it is needed (a rule reading an attribute, or
    /// the span is kept).
    described: OnceCell<Description>,
    redactor: &'static Redactor,
}

impl Pending {
    pub fn new(
        resource: Arc<ProcResource>,
        span: RequestSpan,
        end_unix_ns: u64,
        redactor: &'static Redactor,
    ) -> Pending {
        Pending {
            resource,
            span,
            end_unix_ns,
            described: OnceCell::new(),
            redactor,
        }
    }

    /// Its name, attributes and status.
    pub fn description(&self) -> &Description {
        self.described
            .get_or_init(|| self.span.describe(self.redactor))
    }

    /// Takes its description (making it if nothing asked for it yet).
    pub fn take_description(&mut self) -> Description {
        match self.described.take() {
            Some(d) => d,
            None => self.span.describe(self.redactor),
        }
    }
}

impl Item {
    pub fn trace_id(&self) -> TraceId {
        match self {
            Item::Built(b) => b.span.span_context.trace_id(),
            Item::Request(p) => p.span.ctx.trace_id(),
        }
    }

    pub fn span_id(&self) -> SpanId {
        match self {
            Item::Built(b) => b.span.span_context.span_id(),
            Item::Request(p) => p.span.ctx.span_id(),
        }
    }

    pub fn kind(&self) -> SpanKind {
        match self {
            Item::Built(b) => b.span.span_kind.clone(),
            Item::Request(p) => p.span.kind.clone(),
        }
    }

    /// Whether its status is Error.
    pub fn is_error(&self) -> bool {
        self.status_code() == 2
    }

    /// Moves it into trace `t` (its span id and parent id are unchanged).
    pub fn retrace(&mut self, t: TraceId) {
        let moved = |c: &SpanContext| {
            SpanContext::new(
                t,
                c.span_id(),
                c.trace_flags(),
                c.is_remote(),
                c.trace_state().clone(),
            )
        };
        match self {
            Item::Built(b) => b.span.span_context = moved(&b.span.span_context),
            Item::Request(p) => p.span.ctx = moved(&p.span.ctx),
        }
    }

    /// Gives it a parent (a link made late).
    pub fn set_parent(&mut self, parent: SpanId) {
        match self {
            Item::Built(b) => b.span.parent_span_id = parent,
            Item::Request(p) => p.span.parent = Some(parent),
        }
    }

    fn description(&self) -> Option<&Description> {
        match self {
            Item::Built(_) => None,
            Item::Request(p) => Some(p.description()),
        }
    }
}

impl SpanView for Item {
    fn name(&self) -> &str {
        match self {
            Item::Built(b) => b.name(),
            Item::Request(p) => &p.span.name,
        }
    }

    fn kind_code(&self) -> i64 {
        match self {
            Item::Built(b) => b.kind_code(),
            Item::Request(p) => crate::sampling::kind_code(&p.span.kind),
        }
    }

    fn status_code(&self) -> i64 {
        match self {
            Item::Built(b) => b.status_code(),
            Item::Request(p) => {
                if p.span.summary.error {
                    2
                } else {
                    0
                }
            }
        }
    }

    fn duration_ns(&self) -> u64 {
        match self {
            Item::Built(b) => b.duration_ns(),
            Item::Request(p) => p.span.end_ns.saturating_sub(p.span.start_ns),
        }
    }

    fn end_unix_ns(&self) -> u64 {
        match self {
            Item::Built(b) => b.end_unix_ns(),
            Item::Request(p) => p.end_unix_ns,
        }
    }

    fn trace_id(&self) -> [u8; 16] {
        Item::trace_id(self).to_bytes()
    }

    fn span_id(&self) -> [u8; 8] {
        Item::span_id(self).to_bytes()
    }

    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        match self {
            Item::Built(b) => b.attribute(key),
            Item::Request(_) => self
                .description()?
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .and_then(|kv| crate::sampling::attr_value(&kv.value)),
        }
    }

    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        match self {
            Item::Built(b) => b.resource_attribute(key),
            Item::Request(p) => p
                .resource
                .resource
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .and_then(|(_, v)| crate::sampling::attr_value(v)),
        }
    }

    fn service_name(&self) -> &str {
        match self {
            Item::Built(b) => b.service_name(),
            Item::Request(p) => &p.resource.service_name,
        }
    }

    fn size_estimate(&self) -> u64 {
        match self {
            Item::Built(b) => b.size_estimate(),
            // Name, ids, times, and about fifteen attributes of a request span.
            Item::Request(p) => (64 + p.span.name.len() + 15 * 30) as u64,
        }
    }
}
