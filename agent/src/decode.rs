//! The one place where kernel bytes become Rust values.
//!
//! Every record is length-checked before it is read; unknown kinds and short records are
//! errors the caller counts, never a panic.
use agent_common::{
    EventHeader, EventKind, ExchangeData, SyscallData, TcpData, REQ_HEAD_MAX, RESP_HEAD_MAX,
};

/// A decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Syscall(EventHeader, SyscallData),
    Tcp(EventKind, EventHeader, TcpData),
    /// An L7 exchange (one request and its response on one side of a connection), and the
    /// first bytes of both: `req_len` of the request, then `resp_len` of the response.
    Exchange(EventHeader, ExchangeData, Vec<u8>),
    /// A slow call of a probed function: `nr` is the function's id.
    Func(EventHeader, SyscallData),
}

impl RawEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            RawEvent::Syscall(h, _)
            | RawEvent::Tcp(_, h, _)
            | RawEvent::Exchange(h, _, _)
            | RawEvent::Func(h, _) => h,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            RawEvent::Syscall(..) => EventKind::Syscall,
            RawEvent::Tcp(k, ..) => *k,
            RawEvent::Exchange(..) => EventKind::Exchange,
            RawEvent::Func(..) => EventKind::Func,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("exchange record claims heads of {req} and {resp} bytes (at most {REQ_HEAD_MAX} and {RESP_HEAD_MAX})")]
    BadHeads { req: u16, resp: u16 },
}

/// Reads a `T` from the start of `bytes` after checking the length.
///
/// `T` must be one of the plain `#[repr(C)]` wire types of `agent_common`, for which every bit
/// pattern is valid (integers and byte arrays only).
fn read<T: Copy>(bytes: &[u8], offset: usize) -> Result<T, DecodeError> {
    let need = offset + std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above; read_unaligned copes with any alignment; the wire
    // types contain only integers and byte arrays, so any bit pattern is a valid value.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) })
}

const HEADER: usize = std::mem::size_of::<EventHeader>();

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header: EventHeader = read(bytes, 0)?;
    let kind = match header.kind {
        k if k == EventKind::Syscall as u32 => EventKind::Syscall,
        k if k == EventKind::TcpConnect as u32 => EventKind::TcpConnect,
        k if k == EventKind::TcpAccept as u32 => EventKind::TcpAccept,
        k if k == EventKind::TcpClose as u32 => EventKind::TcpClose,
        k if k == EventKind::Exchange as u32 => EventKind::Exchange,
        k if k == EventKind::Func as u32 => EventKind::Func,
        kind => return Err(DecodeError::UnknownKind { kind }),
    };
    Ok(match kind {
        EventKind::Syscall => RawEvent::Syscall(header, read(bytes, HEADER)?),
        EventKind::Func => RawEvent::Func(header, read(bytes, HEADER)?),
        EventKind::Exchange => {
            let data: ExchangeData = read(bytes, HEADER)?;
            if data.req_len as usize > REQ_HEAD_MAX || data.resp_len as usize > RESP_HEAD_MAX {
                return Err(DecodeError::BadHeads {
                    req: data.req_len,
                    resp: data.resp_len,
                });
            }
            let from = HEADER + std::mem::size_of::<ExchangeData>();
            let need = from + data.req_len as usize + data.resp_len as usize;
            if bytes.len() < need {
                return Err(DecodeError::Short {
                    len: bytes.len(),
                    need,
                });
            }
            RawEvent::Exchange(header, data, bytes[from..need].to_vec())
        }
        k => RawEvent::Tcp(k, header, read(bytes, HEADER)?),
    })
}

/// Encodes a record as the kernel writes it (tests and benchmarks).
pub fn encode(event: &RawEvent) -> Vec<u8> {
    fn bytes_of<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: wire types are repr(C) with no implicit padding, so every byte is initialised.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
    }
    let mut out = Vec::new();
    match event {
        RawEvent::Syscall(h, d) | RawEvent::Func(h, d) => {
            out.extend_from_slice(bytes_of(h));
            out.extend_from_slice(bytes_of(d));
        }
        RawEvent::Tcp(_, h, d) => {
            out.extend_from_slice(bytes_of(h));
            out.extend_from_slice(bytes_of(d));
        }
        RawEvent::Exchange(h, d, bytes) => {
            out.extend_from_slice(bytes_of(h));
            out.extend_from_slice(bytes_of(d));
            out.extend_from_slice(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: 3,
            pid: 42,
            tid: 43,
            start_ns: 1_000,
            duration_ns: 20_000_000,
            cgroup_id: 7,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn syscall_round_trip() {
        let ev = RawEvent::Syscall(
            header(EventKind::Syscall),
            SyscallData {
                nr: 257,
                _pad: 0,
                ret: -2,
                arg0: u64::MAX,
                parent: agent_common::TraceRef {
                    trace_id: [7; 16],
                    span_id: [8; 8],
                },
            },
        );
        assert_eq!(decode(&encode(&ev)), Ok(ev));
    }

    #[test]
    fn tcp_round_trip() {
        for kind in [
            EventKind::TcpConnect,
            EventKind::TcpAccept,
            EventKind::TcpClose,
        ] {
            let ev = RawEvent::Tcp(
                kind,
                header(kind),
                TcpData {
                    skaddr: 0xffff_8880_1234_5678,
                    family: 10,
                    sport: 40000,
                    dport: 8080,
                    _pad: 0,
                    saddr: [1; 16],
                    daddr: [2; 16],
                    retransmits: 3,
                    error: 111,
                    parent: Default::default(),
                },
            );
            assert_eq!(decode(&encode(&ev)), Ok(ev));
        }
    }

    #[test]
    fn exchange_round_trip_and_bad_lengths() {
        let req = b"GET /x HTTP/1.1\r\n";
        let resp = b"HTTP/1.1 200 OK\r\n";
        let d = ExchangeData {
            sk: 9,
            req_bytes: 100,
            resp_bytes: 20,
            seq: 3,
            protocol: agent_common::l7::PROTOCOL_HTTP1,
            family: 2,
            sport: 8080,
            dport: 40000,
            req_len: req.len() as u16,
            resp_len: resp.len() as u16,
            ..Default::default()
        };
        let ev = RawEvent::Exchange(header(EventKind::Exchange), d, [&req[..], resp].concat());
        let bytes = encode(&ev);
        assert_eq!(decode(&bytes), Ok(ev));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        let mut big = bytes.clone();
        // req_len at its offset in ExchangeData: after 8 u64s, the 24-byte ctx, the parent id,
        // seq, req_tcp_seq and four u16s.
        let at = HEADER + 64 + 24 + 8 + 8 + 8;
        big[at..at + 2].copy_from_slice(&(REQ_HEAD_MAX as u16 + 1).to_le_bytes());
        assert_eq!(
            decode(&big),
            Err(DecodeError::BadHeads {
                req: REQ_HEAD_MAX as u16 + 1,
                resp: resp.len() as u16
            })
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let ev = RawEvent::Syscall(header(EventKind::Syscall), SyscallData::default());
        let bytes = encode(&ev);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short {
                len: 103,
                need: 104
            })
        );
        assert_eq!(decode(&[]), Err(DecodeError::Short { len: 0, need: 56 }));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind { kind: 99 }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_records_of_known_kinds_round_trip(kind in 1u32..=4, pid: u32, dur: u64, ret: i64, nr in 0u32..512) {
            let mut h = header(EventKind::Syscall);
            h.kind = kind; h.pid = pid; h.duration_ns = dur;
            let ev = if kind == 1 {
                RawEvent::Syscall(h, SyscallData { nr, ret, ..Default::default() })
            } else {
                let k = match kind { 2 => EventKind::TcpConnect, 3 => EventKind::TcpAccept, _ => EventKind::TcpClose };
                RawEvent::Tcp(k, h, TcpData { sport: nr as u16, ..Default::default() })
            };
            prop_assert_eq!(decode(&encode(&ev)), Ok(ev));
        }
    }
}
