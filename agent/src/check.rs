//! `kspan check`: can kspan run here, and with what?
use std::path::Path;

use serde::Serialize;

use crate::{
    btf::KernelOffsets,
    capture::{Capture, CaptureConfig, SyscallHook},
};

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Item {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// `false`: kspan cannot run without it.
    pub required: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub items: Vec<Item>,
    pub can_run: bool,
    pub will_use: Vec<String>,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Parses "6.18.44-..." into (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn run_checks() -> Report {
    let mut items = Vec::new();
    let release = kernel_release();
    let version_ok = kernel_version(&release).is_some_and(|v| v >= (5, 8));
    items.push(Item {
        name: "kernel".into(),
        ok: version_ok,
        detail: format!("{release} (needs >= 5.8 for BPF ring buffers)"),
        required: true,
    });
    let offsets = crate::btf::kernel_offsets();
    let (btf_ok, btf_detail) = match &offsets {
        Ok(KernelOffsets {
            tcp_sock_srtt_us: Some(srtt),
            tcp_request_sock_snt_synack: Some(synack),
            sock_common_v6_daddr: Some(v6d),
            sock_common_v6_rcv_saddr: Some(v6s),
            tcp_sock_write_seq: Some(ws),
            tcp_sock_copied_seq: Some(cs),
        }) => (
            true,
            format!(
                "{} read: TCP accept handshake times from tcp_sock.srtt_us (+{srtt}) and \
                 tcp_request_sock.snt_synack (+{synack}); IPv6 ends of L7 connections from \
                 sock_common.skc_v6_daddr (+{v6d}) and skc_v6_rcv_saddr (+{v6s}); the two \
                 ends of a connection on this host from tcp_sock.write_seq (+{ws}) and \
                 copied_seq (+{cs})",
                crate::btf::VMLINUX
            ),
        ),
        Ok(o) => (
            false,
            format!(
                "fields not found ({o:?}): accept events will carry no handshake time \
                 (handshake_known=false), L7 records on IPv6 no addresses, or the two ends \
                 of a connection on this host are linked by userspace alone"
            ),
        ),
        Err(e) => (
            false,
            format!(
                "{e} (needs CONFIG_DEBUG_INFO_BTF): kspan runs, but accept events will carry no \
                 handshake time (handshake_known=false)"
            ),
        ),
    };
    items.push(Item {
        name: "btf".into(),
        ok: btf_ok,
        detail: btf_detail,
        required: false,
    });
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    let privileged = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    items.push(Item {
        name: "privilege".into(),
        ok: privileged,
        detail: format!(
            "euid {}, CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={}{}",
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            has(CAP_BPF),
            has(CAP_PERFMON),
            has(CAP_SYS_ADMIN),
            if privileged {
                ""
            } else {
                ": run as root (sudo) or grant CAP_BPF and CAP_PERFMON"
            }
        ),
        required: true,
    });
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    items.push(Item {
        name: "lockdown".into(),
        ok: !lockdown.contains("[confidentiality]"),
        detail: format!("{lockdown} (integrity mode refuses fentry/fexit; kspan uses tracepoints)"),
        required: false,
    });
    let tracefs = Path::new("/sys/kernel/tracing/events").exists();
    items.push(Item {
        name: "tracefs".into(),
        ok: tracefs,
        detail: if tracefs {
            "mounted at /sys/kernel/tracing".into()
        } else {
            "not mounted: mount -t tracefs nodev /sys/kernel/tracing".into()
        },
        required: true,
    });
    for tp in [
        "raw_syscalls/sys_enter",
        "raw_syscalls/sys_exit",
        "sock/inet_sock_set_state",
        "tcp/tcp_retransmit_skb",
        "tcp/tcp_receive_reset",
        "tcp/tcp_retransmit_synack",
        "sock/sock_send_length",
        "sock/sock_recv_length",
        "tcp/tcp_sendmsg_locked",
    ] {
        let ok = Path::new("/sys/kernel/tracing/events").join(tp).exists();
        items.push(Item {
            name: format!("tracepoint {tp}"),
            ok,
            detail: if ok {
                "available".into()
            } else {
                "missing".into()
            },
            required: tp.starts_with("raw_syscalls") || tp == "sock/inet_sock_set_state",
        });
    }
    let mut will_use = Vec::new();
    let load = if privileged && tracefs {
        let mut config = CaptureConfig {
            syscall_hook: SyscallHook::RawTracepoint,
            ring_buffer_bytes: 4096,
            ..Default::default()
        };
        config.capture_l7(
            crate::l7::DEFAULT_REQUEST_BYTES,
            crate::l7::DEFAULT_RESPONSE_BYTES,
        );
        match Capture::start(config) {
            Ok(mut c) => {
                c.detach();
                will_use.push("raw tracepoints sys_enter/sys_exit for syscall latency".into());
                will_use.push(format!(
                    "per-thread start {} (pid_max {})",
                    if crate::capture::pid_max() <= crate::capture::MAX_PID_MAX_FOR_ARRAY {
                        "array indexed by tid"
                    } else {
                        "hash map"
                    },
                    crate::capture::pid_max()
                ));
                will_use.push("tracepoints sock/inet_sock_set_state, tcp/tcp_retransmit_skb, tcp/tcp_receive_reset, tcp/tcp_retransmit_synack for TCP; sock/sock_send_length, sock/sock_recv_length for the owner of connections accepted on listeners older than kspan".into());
                will_use.push("raw tracepoint tcp_sendmsg_locked to give client requests their trace context before their bytes leave; one record per L7 exchange".into());
                will_use.push("one BPF ring buffer, drained on a 10 ms timer".into());
                Item {
                    name: "load and attach".into(),
                    ok: true,
                    detail: "all programs loaded and attached, then detached".into(),
                    required: true,
                }
            }
            Err(e) => Item {
                name: "load and attach".into(),
                ok: false,
                detail: e.to_string(),
                required: true,
            },
        }
    } else {
        Item {
            name: "load and attach".into(),
            ok: false,
            detail: "skipped: fix the items above first".into(),
            required: true,
        }
    };
    items.push(load);
    let can_run = items.iter().all(|i| i.ok || !i.required);
    Report {
        items,
        can_run,
        will_use,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
    }
}
