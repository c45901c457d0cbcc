//! The one place where kernel bytes become Rust values.
//!
//! Every record is length-checked before it is read; unknown kinds and short records are
//! errors the caller counts, never a panic.
use agent_common::{EventHeader, EventKind, PayloadData, SyscallData, TcpData, PAYLOAD_PREFIX_MAX};

/// A decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Syscall(EventHeader, SyscallData),
    Tcp(EventKind, EventHeader, TcpData),
    /// A transfer on a socket of a detected L7 protocol, and the bytes captured of it
    /// (`captured` of them).
    Payload(EventHeader, PayloadData, Vec<u8>),
}

impl RawEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            RawEvent::Syscall(h, _) | RawEvent::Tcp(_, h, _) | RawEvent::Payload(h, _, _) => h,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            RawEvent::Syscall(..) => EventKind::Syscall,
            RawEvent::Tcp(k, ..) => *k,
            RawEvent::Payload(..) => EventKind::Payload,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("payload record claims {captured} captured bytes (at most {PAYLOAD_PREFIX_MAX})")]
    BadCapture { captured: u32 },
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
        k if k == EventKind::Payload as u32 => EventKind::Payload,
        kind => return Err(DecodeError::UnknownKind { kind }),
    };
    Ok(match kind {
        EventKind::Syscall => RawEvent::Syscall(header, read(bytes, HEADER)?),
        EventKind::Payload => {
            let data: PayloadData = read(bytes, HEADER)?;
            if data.captured as usize > PAYLOAD_PREFIX_MAX {
                return Err(DecodeError::BadCapture {
                    captured: data.captured,
                });
            }
            let from = HEADER + std::mem::size_of::<PayloadData>();
            let need = from + data.captured as usize;
            if bytes.len() < need {
                return Err(DecodeError::Short {
                    len: bytes.len(),
                    need,
                });
            }
            RawEvent::Payload(header, data, bytes[from..need].to_vec())
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
        RawEvent::Syscall(h, d) => {
            out.extend_from_slice(bytes_of(h));
            out.extend_from_slice(bytes_of(d));
        }
        RawEvent::Tcp(_, h, d) => {
            out.extend_from_slice(bytes_of(h));
            out.extend_from_slice(bytes_of(d));
        }
        RawEvent::Payload(h, d, bytes) => {
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
                },
            );
            assert_eq!(decode(&encode(&ev)), Ok(ev));
        }
    }

    #[test]
    fn payload_round_trip_and_bad_lengths() {
        let body = b"GET /x HTTP/1.1\r\n".to_vec();
        let d = PayloadData {
            sk: 9,
            fd: 4,
            len: 100,
            nr: 45,
            captured: body.len() as u32,
            family: 2,
            sport: 8080,
            dport: 40000,
            protocol: agent_common::l7::PROTOCOL_HTTP1,
            ..Default::default()
        };
        let ev = RawEvent::Payload(header(EventKind::Payload), d, body);
        let bytes = encode(&ev);
        assert_eq!(decode(&bytes), Ok(ev));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        let mut big = bytes.clone();
        let at = HEADER + 28;
        big[at..at + 4].copy_from_slice(&(PAYLOAD_PREFIX_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            decode(&big),
            Err(DecodeError::BadCapture {
                captured: PAYLOAD_PREFIX_MAX as u32 + 1
            })
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let ev = RawEvent::Syscall(header(EventKind::Syscall), SyscallData::default());
        let bytes = encode(&ev);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { len: 79, need: 80 })
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
                RawEvent::Syscall(h, SyscallData { nr, _pad: 0, ret, arg0: 0 })
            } else {
                let k = match kind { 2 => EventKind::TcpConnect, 3 => EventKind::TcpAccept, _ => EventKind::TcpClose };
                RawEvent::Tcp(k, h, TcpData { sport: nr as u16, ..Default::default() })
            };
            prop_assert_eq!(decode(&encode(&ev)), Ok(ev));
        }
    }
}
