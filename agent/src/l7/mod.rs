//! The L7 layer: requests and responses of application protocols, found in the bytes a
//! connection moves, become request spans.
//!
//! - Protocol-neutral, here: a transfer ([`Io`]) and its direction ([`Dir`]), which end of the
//!   connection the traced process is ([`Role`]), the connection's ends as spans show them
//!   ([`Ends`]), what a protocol module implements ([`Protocol`], [`Parser`], [`Message`]),
//!   and the list of protocols ([`PROTOCOLS`]).
//! - [`tracker`]: the per-connection correlator, the same for every protocol: it feeds each
//!   connection's transfers to its protocol's parser, gives each request its span context
//!   (an incoming trace context, else the client end of the same connection on this host,
//!   else the request the thread serves, else a new trace), follows the thread serving a
//!   request, and holds provisional traces until their links are known.
//! - [`context`]: W3C trace context read from requests.
//! - [`redact`]: masking of personal data in captured text.
//! - One module per protocol: [`http`] (HTTP/1.x).
//!
//! Adding a protocol (README, "Adding an L7 protocol"):
//! 1. its id in `agent_common::l7` (`PROTOCOL_*`, never reused) and its detection function in
//!    `agent-ebpf/src/programs/detect.rs` (one line in `detect::protocol`);
//! 2. a module `l7/<name>/` implementing [`Protocol`] (name, id, a [`Parser`] per connection
//!    that turns transfers into [`Found`] starts and exchanges) and [`Message`] (span name,
//!    attributes and status per the protocol's semantic conventions, what is redacted);
//! 3. one entry in [`PROTOCOLS`].
//!
//! The tracker, spans, sampling, counters (`kspan_l7{protocol=...}`) and `kspan events`
//! follow from that.
pub mod context;
pub mod http;
pub mod redact;
pub mod tracker;

use std::{net::SocketAddr, sync::Arc};

use opentelemetry::{
    trace::{SpanContext, Status},
    KeyValue,
};
use serde::Serialize;

use crate::conns::Tuple;

/// Default bytes of each transfer the kernel copies (`http.prefix_bytes`, `kspan events
/// --l7-prefix-bytes`).
pub const DEFAULT_PREFIX_BYTES: u32 = 1024;
/// The prefix sizes the kernel can be asked for.
pub const PREFIX_BYTES_RANGE: std::ops::RangeInclusive<u32> =
    agent_common::PAYLOAD_PREFIX_MIN as u32..=agent_common::PAYLOAD_PREFIX_MAX as u32;

/// Direction of a transfer, from the traced process's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// One syscall's transfer on a connection.
#[derive(Debug, Clone, Copy)]
pub struct Io<'a> {
    pub dir: Dir,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The captured prefix of the bytes moved (at most `len` of them).
    pub data: &'a [u8],
    /// Bytes the syscall moved.
    pub len: u64,
}

/// Which end of the connection the traced process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It read the request and wrote the response.
    Server,
    /// It wrote the request and read the response.
    Client,
}

impl Role {
    /// The role of the end that moved a request in direction `dir`.
    pub fn of_request(dir: Dir) -> Role {
        match dir {
            Dir::Read => Role::Server,
            Dir::Write => Role::Client,
        }
    }

    /// The role of the end that moved a response in direction `dir`.
    pub fn of_response(dir: Dir) -> Role {
        match dir {
            Dir::Read => Role::Client,
            Dir::Write => Role::Server,
        }
    }

    /// The direction requests move in at this end.
    pub fn request_dir(self) -> Dir {
        match self {
            Role::Server => Dir::Read,
            Role::Client => Dir::Write,
        }
    }
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

/// What a parser found in a transfer, in the order the connection moved it.
#[derive(Debug)]
pub enum Found {
    /// A request started.
    Started(Started),
    /// A request and its response are complete.
    Done(Exchange),
}

/// A request's start: what the tracker needs of it before it is answered.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its number on the connection (0 for the first one parsed).
    pub seq: u64,
    pub role: Role,
    /// What identifies the request on both ends of the connection (a hash of the parts a
    /// client sends and a server reads unchanged: for HTTP the method and target), so the
    /// server end can be linked to its caller's span on this host.
    pub link: u64,
    /// The caller's span, from trace context the request carries.
    pub context: Option<SpanContext>,
}

/// A request and its response.
#[derive(Debug)]
pub struct Exchange {
    pub role: Role,
    /// The request's number on the connection (that of its [`Started`]).
    pub seq: u64,
    /// Last byte of the response moved.
    pub response_end_ns: u64,
    pub message: Box<dyn Message>,
}

/// A span's name, attributes and status.
#[derive(Debug)]
pub struct Description {
    pub name: String,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
}

/// What describing a message may use besides the message.
pub struct DescribeContext<'a> {
    pub role: Role,
    /// The connection's ends, when known.
    pub ends: Option<&'a Ends>,
    /// The thread that made the request or served it.
    pub tid: u32,
    pub redactor: &'a redact::Redactor,
}

/// A parsed request and response of one protocol.
pub trait Message: Send + std::fmt::Debug {
    /// The span's name, attributes and status, per the protocol's semantic conventions;
    /// captured text passes through `cx.redactor`.
    fn describe(&self, cx: &DescribeContext<'_>) -> Description;
}

/// What a protocol's parser counted on one connection (totals since it began).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParseCounts {
    pub requests: u64,
    pub responses: u64,
    /// Message starts that did not parse as this protocol.
    pub not_parsed: u64,
    /// Messages whose heads the capture prefix cut off (what was parsed is kept).
    pub truncated: u64,
    /// Responses with no request waiting for them.
    pub unmatched: u64,
    /// Requests never answered before the connection closed.
    pub unanswered: u64,
}

impl ParseCounts {
    /// Adds `now - was` (both totals of one parser).
    pub fn add_delta(&mut self, now: &ParseCounts, was: &ParseCounts) {
        self.requests += now.requests - was.requests;
        self.responses += now.responses - was.responses;
        self.not_parsed += now.not_parsed - was.not_parsed;
        self.truncated += now.truncated - was.truncated;
        self.unmatched += now.unmatched - was.unmatched;
        self.unanswered += now.unanswered - was.unanswered;
    }

    /// `(name, value)` of each count, for metrics.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("requests", self.requests),
            ("responses", self.responses),
            ("not_parsed", self.not_parsed),
            ("truncated", self.truncated),
            ("unmatched", self.unmatched),
            ("unanswered", self.unanswered),
        ]
    }
}

/// One connection's parser: transfers in, request starts and exchanges out. Must not panic
/// on any input.
pub trait Parser: Send {
    fn on_io(&mut self, io: &Io<'_>, out: &mut Vec<Found>);
    /// The connection closed at `now_ns`: what ends at close ends; requests still waiting
    /// are counted as unanswered.
    fn on_close(&mut self, now_ns: u64, out: &mut Vec<Found>);
    fn counts(&self) -> ParseCounts;
}

/// Hashes what identifies a request on both ends ([`Started::link`]): seeded per tracker, so
/// a peer cannot choose two requests with the same link.
pub type LinkHasher = foldhash::fast::RandomState;

/// An application protocol kspan parses.
pub trait Protocol: Send + Sync {
    /// Its name in config sections, counters (`kspan_l7{protocol=...}`) and `kspan events`.
    fn name(&self) -> &'static str;
    /// The kernel's id for it (`agent_common::l7::PROTOCOL_*`).
    fn id(&self) -> u16;
    /// Whether bytes start a message (as the kernel's detection decides).
    fn starts_message(&self, data: &[u8]) -> bool;
    /// A new connection's parser.
    fn parser(&self, links: &LinkHasher) -> Box<dyn Parser>;
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
}
