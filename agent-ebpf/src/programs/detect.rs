//! Which protocol a transfer's first bytes start a message of: one function per protocol,
//! tried in order by [`protocol`]. A new protocol adds its function and one line there (and
//! its id in `agent_common::l7`).
use agent_common::l7::{HTTP1_METHODS, HTTP1_RESPONSE, PROTOCOL_HTTP1};

/// The protocol whose message the first bytes `b` of a transfer that moved `len` bytes start,
/// if any (the bytes of `b` beyond `len` may be anything).
#[inline(always)]
pub fn protocol(b: &[u8; 8], len: i64) -> Option<u16> {
    if http1(b, len) {
        return Some(PROTOCOL_HTTP1);
    }
    None
}

/// An HTTP/1.x request (a method and a space) or response (`HTTP/1.`).
#[inline(always)]
fn http1(b: &[u8; 8], len: i64) -> bool {
    let starts = |p: &[u8]| len >= p.len() as i64 && p.len() <= 8 && b[..p.len()] == *p;
    if b[0] == b'H' && starts(HTTP1_RESPONSE) {
        return true;
    }
    // Unrolled by the compiler: the first-byte test rejects most transfers at once.
    let mut i = 0;
    while i < HTTP1_METHODS.len() {
        let m = HTTP1_METHODS[i];
        if b[0] == m[0] && starts(m) {
            return true;
        }
        i += 1;
    }
    false
}
