//! Kernel structure offsets read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The programs are classic tracepoints without CO-RE relocations, so the few kernel fields
//! they read beyond a tracepoint's record are located here, once, and handed to the programs
//! as load-time settings. A field that cannot be located is `None`: the program then falls
//! back and the event says so (see `TCP_FLAG_HANDSHAKE_UNKNOWN`).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the fields the TCP programs read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct tcp_sock.srtt_us` (u32, smoothed RTT << 3): on a new passive-open child, the
    /// SYN-ACK-sent to ACK-received time the kernel measured.
    pub tcp_sock_srtt_us: Option<u32>,
    /// `struct tcp_request_sock.snt_synack` (u64, us of CLOCK_MONOTONIC): when the first
    /// SYN-ACK of a pending passive open was sent.
    pub tcp_request_sock_snt_synack: Option<u32>,
    /// `struct sock_common.skc_v6_daddr` (struct in6_addr): the remote IPv6 address. (The
    /// IPv4 addresses and the ports sit at fixed offsets 0-15, in anonymous unions.)
    pub sock_common_v6_daddr: Option<u32>,
    /// `struct sock_common.skc_v6_rcv_saddr`: the local IPv6 address.
    pub sock_common_v6_rcv_saddr: Option<u32>,
    /// `struct tcp_sock.write_seq` (u32): the sequence number of the next byte the process
    /// writes (read before a client request's bytes are queued).
    pub tcp_sock_write_seq: Option<u32>,
    /// `struct tcp_sock.copied_seq` (u32): the sequence number of the next byte the process
    /// reads (after a server's read: its first byte's is this minus what was read).
    pub tcp_sock_copied_seq: Option<u32>,
}

/// Offsets for the running kernel; an error says why none could be read.
pub fn kernel_offsets() -> Result<KernelOffsets, String> {
    let data = MappedFile::read(VMLINUX).map_err(|e| format!("{VMLINUX}: {e}"))?;
    offsets_from(data.bytes())
}

/// A file's contents in an anonymous mapping of their own, unmapped on drop.
///
/// Not a Vec: glibc serves a 5 MB allocation with mmap and, when it is freed, raises its mmap
/// threshold to that size for the rest of the process, after which freed heap memory is kept
/// rather than returned. Measured: `kspan run` stayed at 46 MB resident instead of 35 MB.
struct MappedFile {
    ptr: *mut u8,
    /// Size of the mapping.
    cap: usize,
    /// Bytes read into it.
    len: usize,
}

impl MappedFile {
    fn read(path: &str) -> std::io::Result<MappedFile> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let cap = (file.metadata()?.len() as usize).max(1);
        // SAFETY: a fresh private anonymous mapping, checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut mapped = MappedFile {
            ptr: ptr.cast(),
            cap,
            len: 0,
        };
        // SAFETY: the mapping is `cap` bytes, writable, and owned by `mapped`.
        let buf = unsafe { std::slice::from_raw_parts_mut(mapped.ptr, cap) };
        let mut filled = 0;
        while filled < cap {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        mapped.len = filled;
        Ok(mapped)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the mapping were written by `read`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `read`, at its size; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.cap) };
    }
}

/// Locates the fields in BTF data. Fields that are missing, or bit-fields, are `None`.
pub fn offsets_from(data: &[u8]) -> Result<KernelOffsets, String> {
    let btf = Btf::parse(data)?;
    Ok(KernelOffsets {
        tcp_sock_srtt_us: btf.member_offset("tcp_sock", "srtt_us"),
        tcp_request_sock_snt_synack: btf.member_offset("tcp_request_sock", "snt_synack"),
        sock_common_v6_daddr: btf.member_offset("sock_common", "skc_v6_daddr"),
        sock_common_v6_rcv_saddr: btf.member_offset("sock_common", "skc_v6_rcv_saddr"),
        tcp_sock_write_seq: btf.member_offset("tcp_sock", "write_seq"),
        tcp_sock_copied_seq: btf.member_offset("tcp_sock", "copied_seq"),
    })
}

// A minimal reader of the BTF format (Documentation/bpf/btf.rst): it walks the type section
// and resolves struct members, nothing else, and allocates nothing. A general parser
// (btfparse) was tried first: it keeps the whole type graph of vmlinux, and the agent's
// resident memory went from 30 MB to 87 MB for two offsets.

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

/// One `struct btf_type`: name offset, info (vlen, kind, kind_flag), size or type.
struct TypeHead {
    name_off: u32,
    vlen: u32,
    kind: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the data that follows the 12-byte head.
    data: usize,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>, String> {
        let bad = |what: &str| format!("not valid BTF data: {what}");
        let magic = data.get(0..2).ok_or_else(|| bad("too short"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != BTF_MAGIC {
            return Err(bad("wrong magic (only little-endian BTF is read)"));
        }
        let field = |i: usize| u32_at(data, 4 + 4 * i).ok_or_else(|| bad("short header"));
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let section = |off: u32, len: u32| {
            let start = hdr_len as usize + off as usize;
            data.get(start..start + len as usize)
                .ok_or_else(|| bad("section out of bounds"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let btf = Btf { types, strings };
        let mut end = 0;
        for off in btf.type_offsets() {
            end = off.map_err(|e| bad(&e))?.1;
        }
        if end != types.len() {
            return Err(bad("truncated type section"));
        }
        Ok(btf)
    }

    /// (start, end) of each type in id order (id 1 first), or why the section is malformed.
    fn type_offsets(&self) -> impl Iterator<Item = Result<(usize, usize), String>> + '_ {
        let mut off = 0usize;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || off >= self.types.len() {
                return None;
            }
            let Some(info) = u32_at(self.types, off + 4) else {
                failed = true;
                return Some(Err("truncated type".to_string()));
            };
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,
                k => {
                    failed = true;
                    return Some(Err(format!("unknown type kind {k}")));
                }
            };
            let start = off;
            off += 12 + extra;
            Some(Ok((start, off)))
        })
    }

    /// The type with this id (a walk from the start: only used for the few anonymous
    /// members on the way to a field).
    fn head(&self, id: u32) -> Option<TypeHead> {
        let (off, _) = self.type_offsets().nth(id.checked_sub(1)? as usize)?.ok()?;
        self.head_at(off)
    }

    fn head_at(&self, off: usize) -> Option<TypeHead> {
        let info = u32_at(self.types, off + 4)?;
        Some(TypeHead {
            name_off: u32_at(self.types, off)?,
            vlen: info & 0xffff,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            size_or_type: u32_at(self.types, off + 8)?,
            data: off + 12,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<TypeHead> {
        for _ in 0..32 {
            let t = self.head(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in the struct named `ty`, looking into anonymous struct and
    /// union members too. None for bit-fields and members not on a byte boundary.
    fn member_offset(&self, ty: &str, member: &str) -> Option<u32> {
        let t = self
            .type_offsets()
            .map_while(Result::ok)
            .filter_map(|(off, _)| self.head_at(off))
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == ty.as_bytes())?;
        let bits = self.find_member(&t, member.as_bytes(), 0, 0)?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    /// Bit offset of `member` in the struct or union `t`, which starts at `base` bits.
    fn find_member(&self, t: &TypeHead, member: &[u8], base: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.data + 12 * i;
            let (name_off, ty, raw) = (
                u32_at(self.types, m)?,
                u32_at(self.types, m + 4)?,
                u32_at(self.types, m + 8)?,
            );
            // kind_flag: bit-field size in the top 8 bits, bit offset below.
            let (bit_off, bitfield) = if t.kind_flag {
                (raw & 0xff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some(o) =
                        self.find_member(&inner, member, base.checked_add(bit_off)?, depth + 1)
                    {
                        return Some(o);
                    }
                }
            } else if self.name(name_off) == member {
                return base.checked_add(bit_off).filter(|_| bitfield == 0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF with: 1 int, 2 `struct inner { u32 a; u32 b; }`, 3 typedef inner_t -> 2,
    /// 4 `struct outer { u64 x; inner_t /* anonymous */; u32 flags:3; u32 y; }` (kind_flag).
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0inner_t\0outer\0x\0flags\0y\0";
        let at = |n: &str| {
            let needle = [n.as_bytes(), b"\0"].concat();
            (1..strings.len())
                .find(|&i| strings[i - 1] == 0 && strings[i..].starts_with(&needle))
                .unwrap() as u32
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, kflag: bool, size: u32, extra: &[u32]| {
            let info = vlen | (kind << 24) | (u32::from(kflag) << 31);
            for w in [name, info, size].iter().chain(extra) {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        ty(at("int"), 1, 0, false, 4, &[32]);
        ty(
            at("inner"),
            4,
            2,
            false,
            8,
            &[at("a"), 1, 0, at("b"), 1, 32],
        );
        ty(at("inner_t"), 8, 0, false, 2, &[]);
        #[rustfmt::skip]
        ty(at("outer"), 4, 4, true, 24, &[
            at("x"), 1, 0,
            0, 3, 64,
            at("flags"), 1, (3 << 24) | 128,
            at("y"), 1, 160,
        ]);
        let mut out = Vec::new();
        for w in [
            0xeb9f_u32 | (1 << 16),
            24,
            0,
            t.len() as u32,
            t.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn members_direct_anonymous_and_bitfields() {
        let data = sample();
        let btf = Btf::parse(&data).expect("parse");
        assert_eq!(btf.member_offset("outer", "x"), Some(0));
        assert_eq!(
            btf.member_offset("outer", "a"),
            Some(8),
            "through the anonymous member"
        );
        assert_eq!(btf.member_offset("outer", "b"), Some(12));
        assert_eq!(btf.member_offset("outer", "y"), Some(20));
        assert_eq!(btf.member_offset("outer", "flags"), None, "bit-field");
        assert_eq!(btf.member_offset("outer", "nope"), None);
        assert_eq!(
            btf.member_offset("inner_t", "a"),
            None,
            "a typedef is not a struct"
        );
        assert_eq!(btf.member_offset("missing", "a"), None);
        // Every truncation is an error or a smaller answer, never a panic.
        for n in 0..data.len() {
            let _ = offsets_from(&data[..n]);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(0u8.., 0..512)) {
            let _ = offsets_from(&bytes);
            // And with a valid magic and header, so the section parsing is exercised.
            if bytes.len() >= 24 {
                bytes[0] = 0x9f;
                bytes[1] = 0xeb;
                bytes[4..8].copy_from_slice(&24u32.to_le_bytes());
                let _ = offsets_from(&bytes);
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(offsets_from(&[]).is_err());
        assert!(offsets_from(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    }

    /// A member's byte offset as bpftool prints it: `[id] STRUCT 'name' ...` then
    /// `\t'member' type_id=N bits_offset=B` lines.
    fn bpftool_offset(dump: &str, ty: &str, member: &str) -> Option<u32> {
        let head = format!("STRUCT '{ty}' ");
        let lines = dump.lines().skip_while(|l| !l.contains(&head)).skip(1);
        lines
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
            .and_then(|l| l.rsplit_once("bits_offset="))
            .and_then(|(_, b)| b.trim().parse::<u32>().ok())
            .map(|bits| bits / 8)
    }

    /// On a machine with BTF, both fields are found where bpftool (written by others) finds
    /// them.
    #[test]
    fn running_kernel_fields_match_bpftool() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let o = kernel_offsets().expect("offsets");
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
        else {
            eprintln!("skipped: no bpftool");
            return;
        };
        let dump = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            o.tcp_sock_srtt_us,
            bpftool_offset(&dump, "tcp_sock", "srtt_us")
        );
        assert_eq!(
            o.tcp_request_sock_snt_synack,
            bpftool_offset(&dump, "tcp_request_sock", "snt_synack")
        );
        assert!(o.tcp_sock_srtt_us.is_some() && o.tcp_request_sock_snt_synack.is_some());
        assert_eq!(
            (o.sock_common_v6_daddr, o.sock_common_v6_rcv_saddr),
            (Some(56), Some(72))
        );
    }
}
