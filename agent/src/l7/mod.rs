//! The L7 layer: requests and responses of application protocols, which the kernel follows
//! per connection and sends as one record per exchange and side, become request spans.
//!
//! - Protocol-neutral, here: an exchange as its record gives it ([`Exchange`]), which end of
//!   the connection the traced process is ([`Role`]), the connection's ends as spans show them
//!   ([`Ends`]), what a protocol module implements ([`Protocol`]), and the list of protocols
//!   ([`PROTOCOLS`]).
//! - [`tracker`]: the same for every protocol: each record becomes a request span with the
//!   trace context the kernel assigned (its parent: the `traceparent` the request carried,
//!   the client end of the connection on this host, or the request its thread served), and
//!   the links the kernel could not make are repaired (a server that read its request before
//!   its client's context was published).
//! - [`context`]: W3C trace context.
//! - [`redact`]: masking of personal data in captured text.
//! - One module per protocol: [`http`] (HTTP/1.x).
//!
//! Adding a protocol (README, "Adding an L7 protocol"):
//! 1. its id in `agent_common::l7` (`PROTOCOL_*`, never reused), its request detection in
//!    `agent-ebpf/src/programs/detect.rs` (one line in `detect::request`) and, if its heads
//!    say how long a response is, that length there too (`detect::response_end`);
//! 2. a module `l7/<name>/` implementing [`Protocol`]: its name and id, a summary of an
//!    exchange for the samplers (span name, error) made without allocating, and the full
//!    description of a kept one (name, attributes and status per the protocol's semantic
//!    conventions, captured text through the redactor);
//! 3. one entry in [`PROTOCOLS`].
//!
//! The tracker, spans, sampling, counters (`kspan_l7{protocol=...}`), `kspan top --by route`
//! and `kspan events` follow from that.
pub mod context;
pub mod http;
pub mod redact;
pub mod tracker;

use std::{net::SocketAddr, sync::Arc};

use opentelemetry::{trace::Status, KeyValue};
use serde::Serialize;

use crate::conns::Tuple;

/// Default bytes of each request's start the kernel keeps (`http.request_bytes`,
/// `--l7-request-bytes`).
pub const DEFAULT_REQUEST_BYTES: u32 = 256;
/// Default bytes of each response's start the kernel keeps (`http.response_bytes`).
pub const DEFAULT_RESPONSE_BYTES: u32 = 128;
/// The request head sizes the kernel can be asked for.
pub const REQUEST_BYTES_RANGE: std::ops::RangeInclusive<u32> =
    agent_common::REQ_HEAD_MIN as u32..=agent_common::REQ_HEAD_MAX as u32;
/// The response head sizes the kernel can be asked for.
pub const RESPONSE_BYTES_RANGE: std::ops::RangeInclusive<u32> =
    agent_common::RESP_HEAD_MIN as u32..=agent_common::RESP_HEAD_MAX as u32;

/// Which end of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It read the request and wrote the response.
    Server,
    /// It wrote the request and read the response.
    Client,
}

/// A connection's two ends as its spans show them: made once per connection and shared by
/// the spans of all its requests.
#[derive(Debug, Clone)]
pub struct Ends {
    pub tuple: Tuple,
    pub local_ip: Arc<str>,
    pub remote_ip: Arc<str>,
}

impl Ends {
    pub fn of(tuple: Tuple) -> Ends {
        Ends {
            tuple,
            local_ip: tuple.local.ip().to_string().into(),
            remote_ip: tuple.remote.ip().to_string().into(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.tuple.local
    }

    pub fn remote(&self) -> SocketAddr {
        self.tuple.remote
    }

    /// `network.peer.address` and `network.peer.port`: the other end.
    pub fn peer_attributes(&self, a: &mut Vec<KeyValue>) {
        a.push(KeyValue::new(
            "network.peer.address",
            self.remote_ip.clone(),
        ));
        a.push(KeyValue::new(
            "network.peer.port",
            i64::from(self.tuple.remote.port()),
        ));
    }
}

/// One exchange as its kernel record gives it: what a protocol module reads.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub role: Role,
    /// The first bytes of the request (`l7.request_bytes` of them at most).
    pub request: &'a [u8],
    /// The first bytes of the response (empty: none came).
    pub response: &'a [u8],
    /// Bytes of the request and of the response moved.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// `agent_common::EXCH_FLAG_*`.
    pub flags: u32,
}

impl Exchange<'_> {
    /// Whether a response came.
    pub fn answered(&self) -> bool {
        self.flags & agent_common::EXCH_FLAG_NO_RESPONSE == 0
    }
}

/// What the samplers and the tracker need of an exchange (with the span name written beside
/// it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// The span's status is Error.
    pub error: bool,
    /// The heads parsed as this protocol (else the name is the protocol's alone).
    pub parsed: bool,
    /// The request's head went beyond the bytes kept (what was read is used).
    pub truncated: bool,
    /// Where a second request starts in the request bytes, when they hold more than one
    /// (pipelining: the kernel sends the later ones' responses as exchanges of their own,
    /// without request bytes).
    pub next_request: Option<u16>,
}

/// A span's name, attributes and status.
#[derive(Debug)]
pub struct Description {
    pub name: String,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
}

/// What describing an exchange may use besides its bytes.
pub struct DescribeContext<'a> {
    /// The connection's ends, when known.
    pub ends: Option<&'a Ends>,
    /// The thread that moved the request.
    pub tid: u32,
    pub redactor: &'a redact::Redactor,
}

/// What a protocol's exchanges were (totals since start).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParseCounts {
    /// Exchanges (one per request and side).
    pub requests: u64,
    /// Of them, answered.
    pub responses: u64,
    /// Heads that did not parse as this protocol.
    pub not_parsed: u64,
    /// Request heads longer than the bytes kept (method, target and status still read).
    pub truncated: u64,
    /// Requests whose connection closed before a response.
    pub unanswered: u64,
    /// Exchanges of requests sent or read before the previous one's response (pipelining);
    /// those whose request the previous head did not hold are also `not_parsed`.
    pub pipelined: u64,
    /// Responses whose length the kernel could not tell: they ended at the next request or
    /// at close.
    pub length_unknown: u64,
}

impl ParseCounts {
    /// Counts one exchange.
    pub fn add(&mut self, ex: &Exchange<'_>, summary: &Summary) {
        use agent_common::{EXCH_FLAG_CONTINUED, EXCH_FLAG_END_AT_NEXT, EXCH_FLAG_PIPELINED};
        self.requests += 1;
        if ex.answered() {
            self.responses += 1;
        } else {
            self.unanswered += 1;
        }
        self.not_parsed += u64::from(!summary.parsed);
        self.truncated += u64::from(summary.truncated);
        self.pipelined += u64::from(ex.flags & (EXCH_FLAG_PIPELINED | EXCH_FLAG_CONTINUED) != 0);
        self.length_unknown += u64::from(ex.flags & EXCH_FLAG_END_AT_NEXT != 0);
    }

    /// `(name, value)` of each count, for metrics.
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("requests", self.requests),
            ("responses", self.responses),
            ("not_parsed", self.not_parsed),
            ("truncated", self.truncated),
            ("unanswered", self.unanswered),
            ("pipelined", self.pipelined),
            ("length_unknown", self.length_unknown),
        ]
    }
}

/// An application protocol kspan parses.
pub trait Protocol: Send + Sync {
    /// Its name in config sections, counters (`kspan_l7{protocol=...}`) and `kspan events`.
    fn name(&self) -> &'static str;
    /// The kernel's id for it (`agent_common::l7::PROTOCOL_*`).
    fn id(&self) -> u16;
    /// What the samplers need, for every exchange: the span's name written into `name`
    /// (cleared first; low-cardinality, personal data masked by `redactor`) and its status.
    /// It must not allocate but for `name`'s growth.
    fn summarize(
        &self,
        ex: &Exchange<'_>,
        redactor: &redact::Redactor,
        name: &mut String,
    ) -> Summary;
    /// The span's name, attributes and status (for the exchanges that are kept).
    fn describe(&self, ex: &Exchange<'_>, cx: &DescribeContext<'_>) -> Description;
    /// A short line for `kspan events`: the request's first line, masked.
    fn first_line(&self, ex: &Exchange<'_>, redactor: &redact::Redactor) -> String;
}

impl std::fmt::Debug for dyn Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every protocol kspan parses, in the order of their counters.
pub static PROTOCOLS: &[&dyn Protocol] = &[&http::Http];

/// The protocol the kernel named by `id`.
pub fn protocol(id: u16) -> Option<&'static dyn Protocol> {
    PROTOCOLS.iter().copied().find(|p| p.id() == id)
}

/// Per-protocol parse counts, in the order of [`PROTOCOLS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolCounts(pub Vec<ParseCounts>);

impl Default for ProtocolCounts {
    fn default() -> Self {
        ProtocolCounts(vec![ParseCounts::default(); PROTOCOLS.len()])
    }
}

impl ProtocolCounts {
    pub fn get_mut(&mut self, id: u16) -> Option<&mut ParseCounts> {
        let i = PROTOCOLS.iter().position(|p| p.id() == id)?;
        self.0.get_mut(i)
    }

    /// `(protocol name, counts)` for each protocol.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ParseCounts)> {
        PROTOCOLS.iter().map(|p| p.name()).zip(self.0.iter())
    }
}

impl Serialize for ProtocolCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, c) in self.iter() {
            m.serialize_entry(name, c)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_have_distinct_ids_and_names() {
        for (i, a) in PROTOCOLS.iter().enumerate() {
            for b in &PROTOCOLS[i + 1..] {
                assert_ne!(a.id(), b.id());
                assert_ne!(a.name(), b.name());
            }
            assert_ne!(a.id(), agent_common::l7::PROTOCOL_UNKNOWN);
            assert!(protocol(a.id()).is_some());
        }
        assert!(protocol(agent_common::l7::PROTOCOL_UNKNOWN).is_none());
        let c = ProtocolCounts::default();
        assert_eq!(
            serde_json::to_value(&c).unwrap()["http"]["not_parsed"],
            serde_json::json!(0)
        );
    }

    #[test]
    fn counts_follow_the_flags() {
        use agent_common::{EXCH_FLAG_END_AT_NEXT, EXCH_FLAG_NO_RESPONSE, EXCH_FLAG_PIPELINED};
        let mut c = ParseCounts::default();
        let ex = |flags| Exchange {
            role: Role::Server,
            request: b"",
            response: b"",
            request_bytes: 0,
            response_bytes: 0,
            flags,
        };
        let ok = Summary {
            parsed: true,
            ..Default::default()
        };
        c.add(&ex(0), &ok);
        c.add(&ex(EXCH_FLAG_NO_RESPONSE), &Summary::default());
        c.add(&ex(EXCH_FLAG_PIPELINED | EXCH_FLAG_END_AT_NEXT), &ok);
        assert_eq!(
            c,
            ParseCounts {
                requests: 3,
                responses: 2,
                not_parsed: 1,
                truncated: 0,
                unanswered: 1,
                pipelined: 1,
                length_unknown: 1,
            }
        );
    }
}
