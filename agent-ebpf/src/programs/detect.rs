//! What the kernel knows of each application protocol: whether a transfer's first bytes
//! start a request, and where a response ends. One block per protocol; a new protocol adds
//! its detection to [`request`] (and, if it can tell, its response length to
//! [`response_end`]); without a length the response ends where the next request begins or
//! at close.
use agent_common::l7::{HTTP1_METHODS, PROTOCOL_HTTP1};
use aya_ebpf::{cty::c_void, helpers::bpf_loop};

/// Bytes of a response's start the kernel scans for its length (headers beyond them are not
/// seen: such a response ends at the next request or at close).
pub const SCAN_MAX: usize = 1024;
/// Room after the scanned bytes, so that a name or number read at any scanned offset stays
/// inside the buffer.
pub const SCAN_SLACK: usize = 64;

/// A response's length as far as the kernel can tell.
pub const EXPECT_UNKNOWN: u64 = 0;
/// A chunked body: the response ends with the last chunk (`0\r\n\r\n`).
pub const EXPECT_CHUNKED: u64 = u64::MAX;

/// Bytes scanned: the first bytes of a message, copied from the process. (8-byte aligned:
/// the scan reads it a word at a time.)
#[repr(C, align(8))]
pub struct Scan {
    pub buf: [u8; SCAN_MAX + SCAN_SLACK],
    /// What the scan found (offsets into `buf`; 0: not found). Kept in memory rather than
    /// in registers so that the verifier sees one state per loop step.
    pub head_end: u32,
    pub content_length: u32,
    pub transfer_encoding: u32,
    pub traceparent: u32,
    /// Bytes to scan, kept in memory for the same reason.
    pub len: u32,
    /// The offset of the word being scanned, likewise: read back for each of its bytes,
    /// nothing a branch on one byte learnt is still in a register at the next, so the
    /// verifier's states for the eight bytes stay one each.
    pub word: u32,
}

/// The protocol whose request the first bytes `b` of a transfer that moved `len` bytes start,
/// if any (the bytes of `b` beyond `len` may be anything).
#[inline(always)]
pub fn request(b: &[u8; 8], len: i64) -> Option<u16> {
    if http1_request(b, len) {
        return Some(PROTOCOL_HTTP1);
    }
    None
}

#[inline(always)]
fn starts(b: &[u8; 8], len: i64, p: &[u8]) -> bool {
    len >= p.len() as i64 && p.len() <= 8 && b[..p.len()] == *p
}

/// An HTTP/1.x request: a method and a space.
#[inline(always)]
fn http1_request(b: &[u8; 8], len: i64) -> bool {
    // Unrolled by the compiler: the first-byte test rejects most transfers at once.
    let mut i = 0;
    while i < HTTP1_METHODS.len() {
        let m = HTTP1_METHODS[i];
        if b[0] == m[0] && starts(b, len, m) {
            return true;
        }
        i += 1;
    }
    false
}

/// The total length of a response (head and body) whose first `n` bytes are in `s.buf`, as
/// far as its head says: a number, [`EXPECT_CHUNKED`], or [`EXPECT_UNKNOWN`]. `head_request`:
/// the request was `HEAD` (no body).
#[inline(always)]
pub fn response_end(protocol: u16, s: &mut Scan, n: u32, head_request: bool) -> u64 {
    if protocol != PROTOCOL_HTTP1 {
        return EXPECT_UNKNOWN;
    }
    scan_headers(s, n);
    let head_end = unsafe { core::ptr::read_volatile(&s.head_end) };
    if head_end == 0 {
        return EXPECT_UNKNOWN;
    }
    // "HTTP/1.x NNN": 1xx, 204 and 304 have no body; nor has the answer to HEAD.
    let code = [byte(s, 9), byte(s, 10), byte(s, 11)];
    if head_request
        || code[0] == b'1'
        || (code[0] == b'2' && code[1] == b'0' && code[2] == b'4')
        || (code[0] == b'3' && code[1] == b'0' && code[2] == b'4')
    {
        return head_end as u64;
    }
    let te = unsafe { core::ptr::read_volatile(&s.transfer_encoding) };
    if te != 0 && value_has_chunked(s, te) {
        return EXPECT_CHUNKED;
    }
    let cl = unsafe { core::ptr::read_volatile(&s.content_length) };
    if cl == 0 {
        return EXPECT_UNKNOWN;
    }
    match number_at(s, cl) {
        Some(len) => head_end as u64 + len,
        None => EXPECT_UNKNOWN,
    }
}

/// The byte at `i` of the scanned bytes (0 beyond them: never a panic path).
#[inline(always)]
fn byte(s: &Scan, i: usize) -> u8 {
    match s.buf.get(i) {
        Some(b) => *b,
        None => 0,
    }
}

/// Finds the header lines the kernel reads in `s.buf[..n]` and the end of the head.
///
/// One step per 8-byte word in `bpf_loop` (Linux 5.17): the verifier checks the step once,
/// where an open loop over 1,024 bytes, each ending or not, is more than it will walk. A word
/// without a line feed (most of them) costs a load and three operations; the lines that start
/// in one are read byte by byte.
#[inline(always)]
pub fn scan_headers(s: &mut Scan, n: u32) {
    unsafe {
        core::ptr::write_volatile(&mut s.head_end, 0);
        core::ptr::write_volatile(&mut s.content_length, 0);
        core::ptr::write_volatile(&mut s.transfer_encoding, 0);
        core::ptr::write_volatile(&mut s.traceparent, 0);
        core::ptr::write_volatile(&mut s.len, n.min(SCAN_MAX as u32));
    }
    let mut ctx = ScanCtx { scan: s };
    // The step's address must reach the instruction as is (a BPF_PSEUDO_FUNC relocation).
    let step = unsafe {
        core::mem::transmute::<unsafe extern "C" fn(u64, *mut ScanCtx) -> i64, *mut c_void>(
            scan_step,
        )
    };
    unsafe {
        bpf_loop(
            (SCAN_MAX / 8) as u32,
            step,
            (&mut ctx as *mut ScanCtx).cast(),
            0,
        )
    };
}

/// What a scan step gets: the scan (in map memory), from the stack.
#[repr(C)]
struct ScanCtx {
    scan: *mut Scan,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// One step of [`scan_headers`]: the word at byte `8 * index`, and the lines that start
/// after its line feeds. 1 ends the loop.
unsafe extern "C" fn scan_step(index: u64, ctx: *mut ScanCtx) -> i64 {
    let s = unsafe { &mut *(*ctx).scan };
    let base = (index as usize) * 8;
    let len = unsafe { core::ptr::read_volatile(&s.len) } as usize;
    if base >= SCAN_MAX || base >= len {
        return 1;
    }
    // SAFETY: `base + 8 <= SCAN_MAX` and the buffer is 8-byte aligned.
    let w = unsafe { *(s.buf.as_ptr().add(base & (SCAN_MAX - 8)) as *const u64) };
    // A zero byte in `w ^ "\n\n\n\n\n\n\n\n"` is a line feed in `w` (the test may also flag a
    // byte above a real one: each is checked below).
    let x = w ^ (ONES * b'\n' as u64);
    if x.wrapping_sub(ONES) & !x & HIGHS == 0 {
        return 0;
    }
    unsafe { core::ptr::write_volatile(&mut s.word, base as u32) };
    let mut k = 0;
    while k < 8 {
        // Masked: every register the compiler derives from it is bounded for the verifier.
        let word = unsafe { core::ptr::read_volatile(&s.word) } as usize & (SCAN_MAX - 8);
        let at = word + k + 1;
        let len = unsafe { core::ptr::read_volatile(&s.len) } as usize;
        if at < len && byte(s, at - 1) == b'\n' && line(s, at) {
            return 1;
        }
        k += 1;
    }
    0
}

/// A line starts at `at`: a header kspan reads is noted, and the blank line that ends the
/// head is (true).
#[inline(always)]
fn line(s: &mut Scan, at: usize) -> bool {
    let i = at as u32;
    let c = byte(s, at);
    if c == b'\r' || c == b'\n' {
        let end = if c == b'\r' { i + 2 } else { i + 1 };
        unsafe { core::ptr::write_volatile(&mut s.head_end, end) };
        return true;
    }
    match c | 0x20 {
        b'c' if name_at(s, at, b"content-length:") => unsafe {
            core::ptr::write_volatile(&mut s.content_length, i + 15)
        },
        b't' if name_at(s, at, b"transfer-encoding:") => unsafe {
            core::ptr::write_volatile(&mut s.transfer_encoding, i + 18)
        },
        b't' if name_at(s, at, b"traceparent:") => unsafe {
            core::ptr::write_volatile(&mut s.traceparent, i + 12)
        },
        _ => {}
    }
    false
}

/// Whether the lower-cased bytes at `at` are `name`.
#[inline(always)]
fn name_at(s: &Scan, at: usize, name: &[u8]) -> bool {
    let mut k = 0;
    while k < name.len() {
        if byte(s, at + k) | 0x20 != name[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// The offset of the first byte at or after `at` that is not a space or a tab (at most 8
/// skipped).
#[inline(always)]
fn skip_blanks(s: &Scan, at: u32) -> usize {
    let j = at as usize;
    let mut k = 0;
    while k < 8 {
        let c = byte(s, j + k);
        if c != b' ' && c != b'\t' {
            break;
        }
        k += 1;
    }
    j + k
}

/// The decimal number at `at` (after blanks), if it has one to 18 digits.
#[inline(always)]
fn number_at(s: &Scan, at: u32) -> Option<u64> {
    let j = skip_blanks(s, at);
    let mut v: u64 = 0;
    let mut k = 0;
    while k < 18 {
        let c = byte(s, j + k);
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + (c - b'0') as u64;
        k += 1;
    }
    if k == 0 {
        return None;
    }
    Some(v)
}

/// Whether the header value at `at` ends with `chunked` (the last coding, by the rules).
#[inline(always)]
fn value_has_chunked(s: &Scan, at: u32) -> bool {
    let j = skip_blanks(s, at);
    let mut k = 7;
    while k < 32 {
        if byte(s, j + k) == b'\r' {
            let w = b"chunked";
            let mut m = 0;
            while m < 7 {
                if byte(s, j + k - 7 + m) | 0x20 != w[m] {
                    return false;
                }
                m += 1;
            }
            return true;
        }
        k += 1;
    }
    false
}

/// A W3C `traceparent` value at offset `at` of `s.buf`: its trace id and span id written into
/// `trace` and `span` (which hold garbage when it is not one), its flags returned.
///
/// The hex digits are read without a branch per digit: a branch per digit would give the
/// verifier a state per combination of digit kinds (2^50 of them), far past its limit. The
/// ids go straight to map memory: the BPF stack has no room for them.
#[inline(always)]
pub fn traceparent(s: &Scan, at: u32, trace: &mut [u8; 16], span: &mut [u8; 8]) -> Option<u8> {
    let j = skip_blanks(s, at);
    // "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex = 55 bytes.
    if byte(s, j) != b'0' || byte(s, j + 1) != b'0' || byte(s, j + 2) != b'-' {
        return None;
    }
    if byte(s, j + 35) != b'-' || byte(s, j + 52) != b'-' {
        return None;
    }
    let mut bad = 0u32;
    let mut zero = 0u8;
    let mut k = 0;
    while k < 16 {
        let (a, b) = (byte(s, j + 3 + 2 * k), byte(s, j + 4 + 2 * k));
        bad |= not_hex(a) | not_hex(b);
        trace[k] = nibble(a) << 4 | nibble(b);
        zero |= trace[k];
        k += 1;
    }
    let mut k = 0;
    while k < 8 {
        let (a, b) = (byte(s, j + 36 + 2 * k), byte(s, j + 37 + 2 * k));
        bad |= not_hex(a) | not_hex(b);
        span[k] = nibble(a) << 4 | nibble(b);
        k += 1;
    }
    let (a, b) = (byte(s, j + 53), byte(s, j + 54));
    bad |= not_hex(a) | not_hex(b);
    let flags = nibble(a) << 4 | nibble(b);
    let span_zero = span.iter().fold(0u8, |z, b| z | b);
    if bad != 0 || zero == 0 || span_zero == 0 {
        return None;
    }
    Some(flags)
}

/// The value of a hex digit (any byte gives some value; [`not_hex`] says whether it is one).
#[inline(always)]
fn nibble(c: u8) -> u8 {
    (c & 0xf).wrapping_add(9 * (c >> 6)) & 0xf
}

/// 1 unless `c` is a lower-case hex digit (W3C trace context is lower case), without a
/// branch: for x in [lo, lo+n), both `!x` (x - lo >= 0) and `x - lo - n` (< 0) are negative.
#[inline(always)]
fn not_hex(c: u8) -> u32 {
    let d = c as i32 - b'0' as i32;
    let e = c as i32 - b'a' as i32;
    let digit = ((!d & (d - 10)) >> 31) & 1;
    let letter = ((!e & (e - 6)) >> 31) & 1;
    ((digit | letter) ^ 1) as u32
}
