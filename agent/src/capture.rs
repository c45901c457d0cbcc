//! Loading, configuring and attaching the kernel programs, and reading their maps.
use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::btf::KernelOffsets;
use agent_common::{
    globals, maps, programs, Counter, ProcHistKey, COMM_LEN, EXPECTED_ERRNO_LIMIT, FILTER_CGROUP,
    FILTER_COMM, FILTER_PID, FILTER_SYSCALL, HIST_BUCKETS, MAX_SYSCALLS,
};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader, GlobalData,
};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Default ring buffer size: 4 MiB holds ~50k syscall events between two drains.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;
/// Above this pid_max, per-thread starts go to a hash map instead of an array indexed by tid.
pub const MAX_PID_MAX_FOR_ARRAY: u32 = 1 << 20;
/// Hash map capacity for in-flight syscalls when the array is not used.
pub const STARTS_HASH_ENTRIES: u32 = 1 << 17;
/// Per-process histogram map capacity (pid, syscall, bucket) triples.
pub const PROC_HIST_ENTRIES: u32 = 1 << 16;
const TRACEFS: &str = "/sys/kernel/tracing";

/// How syscalls are hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyscallHook {
    /// Raw tracepoints on `sys_enter`/`sys_exit` (cheapest; kernel >= 4.17).
    #[default]
    RawTracepoint,
    /// Classic tracepoints `raw_syscalls/sys_enter|sys_exit`.
    Tracepoint,
    /// Empty raw tracepoint programs (benchmark floor).
    EmptyRawTracepoint,
    /// Empty classic tracepoint programs (benchmark floor).
    EmptyTracepoint,
    /// Raw tracepoint programs that only read the clock (benchmark: the floor of timing).
    ClockRawTracepoint,
    /// No syscall programs.
    Off,
}

/// Where per-thread syscall starts are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartsTable {
    /// Array indexed by tid when pid_max allows, else hash.
    #[default]
    Auto,
    Array,
    Hash,
}

/// What to capture. Built and validated by the command that starts a capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: Option<u64>,
    /// Syscall numbers; empty = all.
    pub syscalls: Vec<u32>,
    /// Syscalls shorter than this only count in histograms (unless they failed).
    pub min_duration: Duration,
    pub syscall_hook: SyscallHook,
    /// Emit syscall events (false: histograms only).
    pub emit_syscalls: bool,
    /// Emit failed syscalls even when shorter than `min_duration`.
    pub emit_failed: bool,
    /// Keep per-process histograms.
    pub proc_hist: bool,
    /// Attach the TCP programs.
    pub tcp: bool,
    /// Emit TCP events (false: histograms only).
    pub emit_tcp: bool,
    pub ring_buffer_bytes: u32,
    pub starts: StartsTable,
    /// Wake the reader early when this many bytes wait in the ring buffer; `None`: a quarter
    /// of the ring buffer; `Some(0)`: never (timer only).
    pub wakeup_bytes: Option<u64>,
    /// (syscall number, errno) pairs that are expected outcomes, not failures: reported
    /// only when slow, flagged `SYSCALL_FLAG_EXPECTED`. Errnos must be below
    /// `EXPECTED_ERRNO_LIMIT`.
    pub expected_errnos: Vec<(u32, u32)>,
    /// Bytes of each L7 request's start the kernel keeps (0: L7 capture off). Set with
    /// [`CaptureConfig::capture_l7`]: it rides on the syscall programs.
    pub l7_request_bytes: u32,
    /// Bytes of each L7 response's start the kernel keeps.
    pub l7_response_bytes: u32,
    /// Functions to measure (uprobe at entry, uretprobe at return), found by `uprobe::find`.
    pub funcs: Vec<crate::uprobe::Func>,
    /// Emit calls of `funcs` slower than `min_duration` (false: histograms only).
    pub emit_funcs: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            pids: Vec::new(),
            comms: Vec::new(),
            cgroup_id: None,
            syscalls: Vec::new(),
            min_duration: Duration::ZERO,
            syscall_hook: SyscallHook::default(),
            emit_syscalls: true,
            emit_failed: true,
            proc_hist: false,
            tcp: true,
            emit_tcp: true,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            starts: StartsTable::Auto,
            wakeup_bytes: None,
            expected_errnos: Vec::new(),
            l7_request_bytes: 0,
            l7_response_bytes: 0,
            funcs: Vec::new(),
            emit_funcs: false,
        }
    }
}

impl CaptureConfig {
    /// Follows L7 exchanges, keeping the first `request_bytes` of each request and
    /// `response_bytes` of each response (`request_bytes` 0: none). L7 capture rides on the
    /// syscall programs: they stay attached even when syscall spans are off (then they only
    /// feed the histograms and the L7 capture).
    pub fn capture_l7(&mut self, request_bytes: u32, response_bytes: u32) {
        self.l7_request_bytes = request_bytes;
        self.l7_response_bytes = response_bytes;
        if request_bytes != 0 && self.syscall_hook == SyscallHook::Off {
            self.syscall_hook = SyscallHook::RawTracepoint;
        }
    }

    /// `FILTER_*` bits of the filters this config sets.
    fn filter_flags(&self) -> u32 {
        let mut flags = 0u32;
        if !self.pids.is_empty() {
            flags |= FILTER_PID;
        }
        if !self.comms.is_empty() {
            flags |= FILTER_COMM;
        }
        if self.cgroup_id.is_some() {
            flags |= FILTER_CGROUP;
        }
        if !self.syscalls.is_empty() {
            flags |= FILTER_SYSCALL;
        }
        flags
    }

    /// The default capture narrowed by the process and syscall filters: pids must name
    /// running processes (a filter that names nothing would trace nothing, silently), syscalls
    /// are names, cgroups a v2 path or id.
    pub fn filtered(
        pids: &[u32],
        comms: &[String],
        cgroup: Option<&str>,
        syscalls: &[String],
    ) -> Result<CaptureConfig, CaptureError> {
        for &pid in pids {
            check_pid(pid)?;
        }
        let syscalls = syscalls
            .iter()
            .map(|name| {
                crate::names::syscall_number(name.trim())
                    .ok_or_else(|| CaptureError::UnknownSyscall(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CaptureConfig {
            pids: pids.to_vec(),
            comms: comms.to_vec(),
            cgroup_id: cgroup.map(resolve_cgroup).transpose()?,
            syscalls,
            ..Default::default()
        })
    }
}

/// A pid filter must name a running process (a thread group leader: the kernel filter
/// compares process ids).
fn check_pid(pid: u32) -> Result<(), CaptureError> {
    let bad = |why: String| CaptureError::BadPid { pid, why };
    if pid == 0 {
        return Err(bad("0 is not a process id".into()));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| bad("no such process (is it running? see `ps -p PID`)".into()))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match tgid {
        Some(t) if t != pid => Err(bad(format!(
            "is a thread of process {t}; filter on the process: --pid {t}"
        ))),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("unknown syscall {0:?} (names as in `man 2 syscalls`, e.g. openat)")]
    UnknownSyscall(String),
    #[error("--pid {pid}: {why}")]
    BadPid { pid: u32, why: String },
    #[error(
        "permission denied while {what}: kspan needs root, or the capabilities CAP_BPF and \
         CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8); run it with sudo. Kernel lockdown \
         can also forbid BPF: see `kspan check`"
    )]
    Permission {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "tracefs is not mounted at {TRACEFS}: mount it with \
         `mount -t tracefs nodev {TRACEFS}` (or give the pod a hostPath mount of it)"
    )]
    NoTracefs,
    #[error("the kernel refused {what}: {detail}. kspan needs Linux >= 5.8 (ring buffer maps, raw tracepoints); run `kspan check` for details")]
    Kernel {
        what: String,
        detail: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the kernel's verifier refused {what}: a kspan bug on this kernel. Please report it with this message and the output of `kspan check`; meanwhile `--http off` (or `--no-tcp`, by the program named) may avoid the program.\n{detail}")]
    Refused {
        what: String,
        detail: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("cgroup {path}: {source}. Give the path of a cgroup v2 directory (under /sys/fs/cgroup) or its numeric id")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Finds the first `io::Error` in an error's source chain.
fn io_error_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

fn classify<E>(what: impl Into<String>, err: E) -> CaptureError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    let io = io_error_in(&err);
    let errno = io.and_then(|e| e.raw_os_error());
    // As root, EACCES from a program load is the verifier refusing the program (it says so
    // in its log), not a missing privilege.
    let refused = errno == Some(libc::EACCES)
        && unsafe { libc::geteuid() } == 0
        && what.starts_with("loading program");
    if matches!(errno, Some(libc::EPERM) | Some(libc::EACCES)) && !refused {
        return CaptureError::Permission {
            what,
            source: Box::new(err),
        };
    }
    if errno == Some(libc::ENOENT) && !Path::new(TRACEFS).join("events").exists() {
        return CaptureError::NoTracefs;
    }
    let mut detail = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    // A verifier log runs to thousands of lines: its end says why.
    let lines: Vec<&str> = detail.lines().collect();
    if lines.len() > 25 {
        detail = format!(
            "{}\n  [... {} lines of the verifier's log ...]\n{}",
            lines[0],
            lines.len() - 21,
            lines[lines.len() - 20..].join("\n")
        );
    }
    if refused {
        return CaptureError::Refused {
            what,
            detail,
            source: Box::new(err),
        };
    }
    CaptureError::Kernel {
        what,
        detail,
        source: Box::new(err),
    }
}

/// Resolves a `--cgroup` value: a numeric id, or a cgroup v2 directory path.
pub fn resolve_cgroup(value: &str) -> Result<u64, CaptureError> {
    if let Ok(id) = value.parse::<u64>() {
        return Ok(id);
    }
    let path = if value.starts_with('/') && !value.starts_with("/sys/fs/cgroup") {
        Path::new("/sys/fs/cgroup").join(value.trim_start_matches('/'))
    } else {
        PathBuf::from(value)
    };
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| CaptureError::Cgroup { path, source })
}

/// Reads `/proc/sys/kernel/pid_max`.
pub fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

/// Totals of the kernel-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub ringbuf_full: u64,
    /// Ordinary syscall events shed to keep ring buffer room for failures.
    pub ringbuf_shed: u64,
    pub start_table_full: u64,
    pub tcp_table_full: u64,
    /// Sockets of an L7 protocol not followed: the kernel's table of them was full.
    pub l7_table_full: u64,
    pub submitted: u64,
    pub syscalls_measured: u64,
}

/// The values of the programs' globals, by feature, computed once from the config so the
/// loader can borrow them.
struct Globals {
    // Every program.
    self_tgid: u32,
    filter_flags: u32,
    cgroup_id: u64,
    wakeup_bytes: u64,
    shed_bytes: u64,
    // Syscalls.
    min_ns: u64,
    emit_syscalls: u32,
    emit_failed: u32,
    proc_hist: u32,
    starts_in_array: u32,
    // TCP.
    emit_tcp: u32,
    srtt_offset: u32,
    synack_offset: u32,
    // L7 exchanges.
    req_head_bytes: u32,
    resp_head_bytes: u32,
    v6_daddr: u32,
    v6_saddr: u32,
    write_seq: u32,
    copied_seq: u32,
    // Functions.
    emit_funcs: u32,
}

impl Globals {
    fn new(config: &CaptureConfig, starts_in_array: bool, offsets: &KernelOffsets) -> Globals {
        let rb = config.ring_buffer_bytes as u64;
        Globals {
            self_tgid: std::process::id(),
            filter_flags: config.filter_flags(),
            cgroup_id: config.cgroup_id.unwrap_or(0),
            wakeup_bytes: config.wakeup_bytes.unwrap_or(rb / 4),
            // The last quarter of the ring buffer is for failures and TCP events.
            shed_bytes: rb / 4 * 3,
            min_ns: config.min_duration.as_nanos().min(u64::MAX as u128) as u64,
            emit_syscalls: config.emit_syscalls as u32,
            emit_failed: config.emit_failed as u32,
            proc_hist: config.proc_hist as u32,
            starts_in_array: starts_in_array as u32,
            // Without TCP tracing, L7 capture still follows sockets to their close, quietly.
            emit_tcp: (config.emit_tcp && config.tcp) as u32,
            srtt_offset: offsets.tcp_sock_srtt_us.unwrap_or(0),
            synack_offset: offsets.tcp_request_sock_snt_synack.unwrap_or(0),
            req_head_bytes: config
                .l7_request_bytes
                .min(agent_common::REQ_HEAD_MAX as u32),
            resp_head_bytes: config
                .l7_response_bytes
                .min(agent_common::RESP_HEAD_MAX as u32),
            v6_daddr: offsets.sock_common_v6_daddr.unwrap_or(0),
            v6_saddr: offsets.sock_common_v6_rcv_saddr.unwrap_or(0),
            write_seq: offsets.tcp_sock_write_seq.unwrap_or(0),
            copied_seq: offsets.tcp_sock_copied_seq.unwrap_or(0),
            emit_funcs: (config.emit_funcs && !config.funcs.is_empty()) as u32,
        }
    }

    /// Sets the globals on the loader, one block per feature.
    fn set<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let table: [(&str, GlobalData<'a>); 20] = [
            // Every program (programs/shared.rs).
            (globals::SELF_TGID, (&self.self_tgid).into()),
            (globals::FILTER_FLAGS, (&self.filter_flags).into()),
            (globals::FILTER_CGROUP_ID, (&self.cgroup_id).into()),
            (globals::WAKEUP_BYTES, (&self.wakeup_bytes).into()),
            (globals::SHED_BYTES, (&self.shed_bytes).into()),
            // Syscalls (programs/syscall.rs, programs/starts.rs).
            (globals::MIN_DURATION_NS, (&self.min_ns).into()),
            (globals::EMIT_SYSCALLS, (&self.emit_syscalls).into()),
            (globals::EMIT_FAILED, (&self.emit_failed).into()),
            (globals::PROC_HIST, (&self.proc_hist).into()),
            (globals::STARTS_IN_ARRAY, (&self.starts_in_array).into()),
            // TCP (programs/tcp.rs).
            (globals::EMIT_TCP, (&self.emit_tcp).into()),
            (globals::TCP_SOCK_SRTT_US_OFFSET, (&self.srtt_offset).into()),
            (
                globals::TCP_REQ_SNT_SYNACK_OFFSET,
                (&self.synack_offset).into(),
            ),
            // L7 exchanges (programs/exchange.rs).
            (globals::REQ_HEAD_BYTES, (&self.req_head_bytes).into()),
            (globals::RESP_HEAD_BYTES, (&self.resp_head_bytes).into()),
            (globals::SOCK_V6_DADDR_OFFSET, (&self.v6_daddr).into()),
            (globals::SOCK_V6_SADDR_OFFSET, (&self.v6_saddr).into()),
            (globals::TCP_SOCK_WRITE_SEQ_OFFSET, (&self.write_seq).into()),
            (
                globals::TCP_SOCK_COPIED_SEQ_OFFSET,
                (&self.copied_seq).into(),
            ),
            // Functions (programs/func.rs).
            (globals::EMIT_FUNCS, (&self.emit_funcs).into()),
        ];
        for (name, value) in table {
            // `must_exist`: a global the object lacks is a build mismatch, refused at load.
            loader.override_global(name, value, true);
        }
    }
}

/// A running capture: programs attached until dropped (aya detaches on drop).
pub struct Capture {
    /// Holds the programs and their links; `None` once detached.
    ebpf: Option<Ebpf>,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    syscall_hist: PerCpuArray<MapData, u64>,
    syscall_errors: PerCpuArray<MapData, u64>,
    syscall_seen: Array<MapData, u32>,
    runtime: Array<MapData, u64>,
    tcp_hist: PerCpuArray<MapData, u64>,
    proc_hist: PerCpuHashMap<MapData, ProcHistKey, u64>,
    func_hist: PerCpuArray<MapData, u64>,
    func_seen: Array<MapData, u32>,
    pub config: CaptureConfig,
}

impl Capture {
    /// Loads and attaches the programs the config asks for.
    pub fn start(config: CaptureConfig) -> Result<Capture, CaptureError> {
        let rb = config.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(CaptureError::Invalid(format!(
                "ring buffer size {rb} must be a power of two of at least 4096 bytes"
            )));
        }
        let pid_max = pid_max();
        let starts_in_array = match config.starts {
            StartsTable::Auto => pid_max <= MAX_PID_MAX_FOR_ARRAY,
            StartsTable::Array => true,
            StartsTable::Hash => false,
        };
        let offsets = if config.tcp || config.l7_request_bytes != 0 {
            crate::btf::kernel_offsets().unwrap_or_else(|e| {
                log::warn!(
                    "cannot read kernel BTF ({e}): accept events will not carry the handshake \
                     time (duration 0, handshake_known=false)"
                );
                KernelOffsets::default()
            })
        } else {
            KernelOffsets::default()
        };
        let globals = Globals::new(&config, starts_in_array, &offsets);
        let mut loader = EbpfLoader::new();
        globals.set(&mut loader);
        loader
            .map_max_entries(maps::EVENTS, rb)
            .map_max_entries(
                maps::STARTS_ARRAY,
                if starts_in_array { pid_max } else { 1 },
            )
            .map_max_entries(
                maps::STARTS_HASH,
                if starts_in_array {
                    1
                } else {
                    STARTS_HASH_ENTRIES
                },
            )
            .map_max_entries(
                maps::PROC_HIST_MAP,
                if config.proc_hist {
                    PROC_HIST_ENTRIES
                } else {
                    1
                },
            );
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| classify("loading the eBPF object (creating maps)", e))?;

        Self::fill_filters(&mut ebpf, &config)?;

        // (sys_enter program, sys_exit program, raw tracepoint?)
        let syscall_programs = match config.syscall_hook {
            SyscallHook::RawTracepoint => {
                Some((programs::SYS_ENTER_RAW, programs::SYS_EXIT_RAW, true))
            }
            SyscallHook::Tracepoint => Some((programs::SYS_ENTER_TP, programs::SYS_EXIT_TP, false)),
            SyscallHook::EmptyRawTracepoint => Some((
                programs::SYS_ENTER_RAW_EMPTY,
                programs::SYS_EXIT_RAW_EMPTY,
                true,
            )),
            SyscallHook::EmptyTracepoint => Some((
                programs::SYS_ENTER_TP_EMPTY,
                programs::SYS_EXIT_TP_EMPTY,
                false,
            )),
            SyscallHook::ClockRawTracepoint => Some((
                programs::SYS_ENTER_RAW_CLOCK,
                programs::SYS_EXIT_RAW_CLOCK,
                true,
            )),
            SyscallHook::Off => None,
        };
        if let Some((enter, exit, raw)) = syscall_programs {
            for (prog, hook) in [(enter, "sys_enter"), (exit, "sys_exit")] {
                if raw {
                    attach_raw(&mut ebpf, prog, hook)?;
                } else {
                    attach_tp(&mut ebpf, prog, "raw_syscalls", hook)?;
                }
            }
        }
        let payloads = globals.req_head_bytes != 0;
        if config.tcp || payloads {
            attach_tp(
                &mut ebpf,
                programs::SOCK_SET_STATE_TCP,
                "sock",
                "inet_sock_set_state",
            )?;
        }
        if config.tcp {
            attach_tp(
                &mut ebpf,
                programs::TCP_RETRANSMIT_SKB,
                "tcp",
                "tcp_retransmit_skb",
            )?;
            attach_tp(
                &mut ebpf,
                programs::TCP_RECEIVE_RESET,
                "tcp",
                "tcp_receive_reset",
            )?;
            attach_tp(
                &mut ebpf,
                programs::TCP_RETRANSMIT_SYNACK,
                "tcp",
                "tcp_retransmit_synack",
            )?;
        }
        // The owner of an accepted connection whose listener kspan did not see listen, and
        // which syscalls move bytes on TCP sockets (L7 capture).
        if config.tcp || payloads {
            attach_tp(
                &mut ebpf,
                programs::SOCK_SEND_LENGTH,
                "sock",
                "sock_send_length",
            )?;
            attach_tp(
                &mut ebpf,
                programs::SOCK_RECV_LENGTH,
                "sock",
                "sock_recv_length",
            )?;
        }
        // Client requests get their trace context before their bytes leave.
        if payloads {
            if let Err(e) = attach_raw(
                &mut ebpf,
                programs::TCP_SENDMSG_LOCKED,
                "tcp_sendmsg_locked",
            ) {
                log::warn!(
                    "{e}: this kernel has no tcp:tcp_sendmsg_locked tracepoint (Linux 6.10 and \
                     later have it), so requests this host's processes send are not followed \
                     (servers' requests still are)"
                );
            }
        }

        if !config.funcs.is_empty() {
            attach_funcs(&mut ebpf, &config.funcs)?;
        }

        let ring = take_map(&mut ebpf, maps::EVENTS, RingBuf::try_from)?;
        let func_hist = take_map(&mut ebpf, maps::FUNC_HIST, PerCpuArray::try_from)?;
        let func_seen = take_map(&mut ebpf, maps::FUNC_SEEN, Array::try_from)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS, PerCpuArray::try_from)?;
        let syscall_hist = take_map(&mut ebpf, maps::SYSCALL_HIST, PerCpuArray::try_from)?;
        let syscall_errors = take_map(&mut ebpf, maps::SYSCALL_ERRORS, PerCpuArray::try_from)?;
        let syscall_seen = take_map(&mut ebpf, maps::SYSCALL_SEEN, Array::try_from)?;
        let runtime = take_map(&mut ebpf, maps::RUNTIME, Array::try_from)?;
        let tcp_hist = take_map(&mut ebpf, maps::TCP_HIST, PerCpuArray::try_from)?;
        let proc_hist = take_map(&mut ebpf, maps::PROC_HIST_MAP, PerCpuHashMap::try_from)?;
        Ok(Capture {
            ebpf: Some(ebpf),
            ring,
            counters,
            syscall_hist,
            syscall_errors,
            syscall_seen,
            runtime,
            tcp_hist,
            proc_hist,
            func_hist,
            func_seen,
            config,
        })
    }

    /// Detaches every program. The maps stay readable, so what is left in the ring buffer
    /// can still be drained and counted.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    /// Whether the programs are still attached.
    pub fn attached(&self) -> bool {
        self.ebpf.is_some()
    }

    fn fill_filters(ebpf: &mut Ebpf, config: &CaptureConfig) -> Result<(), CaptureError> {
        if !config.pids.is_empty() {
            let map = ebpf
                .map_mut(maps::FILTER_PIDS)
                .ok_or_else(|| missing(maps::FILTER_PIDS))?;
            let mut pids: HashMap<_, u32, u8> =
                HashMap::try_from(map).map_err(|e| classify("opening FILTER_PIDS", e))?;
            for pid in &config.pids {
                pids.insert(pid, 1, 0)
                    .map_err(|e| classify("filling the pid filter", e))?;
            }
        }
        if !config.comms.is_empty() {
            let map = ebpf
                .map_mut(maps::FILTER_COMMS)
                .ok_or_else(|| missing(maps::FILTER_COMMS))?;
            let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
                HashMap::try_from(map).map_err(|e| classify("opening FILTER_COMMS", e))?;
            for comm in &config.comms {
                comms
                    .insert(comm_key(comm)?, 1, 0)
                    .map_err(|e| classify("filling the comm filter", e))?;
            }
        }
        if !config.expected_errnos.is_empty() {
            let map = ebpf
                .map_mut(maps::EXPECTED_ERRNOS)
                .ok_or_else(|| missing(maps::EXPECTED_ERRNOS))?;
            let mut table: Array<_, [u64; 2]> =
                Array::try_from(map).map_err(|e| classify("opening EXPECTED_ERRNOS", e))?;
            let mut bits = std::collections::BTreeMap::<u32, [u64; 2]>::new();
            for &(nr, errno) in &config.expected_errnos {
                if (nr as usize) < MAX_SYSCALLS && errno < EXPECTED_ERRNO_LIMIT {
                    bits.entry(nr).or_default()[(errno / 64) as usize] |= 1 << (errno % 64);
                }
            }
            for (nr, b) in bits {
                table
                    .set(nr, b, 0)
                    .map_err(|e| classify("filling the expected errnos", e))?;
            }
        }
        if !config.syscalls.is_empty() {
            let map = ebpf
                .map_mut(maps::FILTER_SYSCALLS)
                .ok_or_else(|| missing(maps::FILTER_SYSCALLS))?;
            let mut set: Array<_, u32> =
                Array::try_from(map).map_err(|e| classify("opening FILTER_SYSCALLS", e))?;
            for &nr in &config.syscalls {
                if nr as usize >= MAX_SYSCALLS {
                    return Err(CaptureError::Invalid(format!(
                        "syscall number {nr} is out of range"
                    )));
                }
                set.set(nr, 1, 0)
                    .map_err(|e| classify("filling the syscall filter", e))?;
            }
        }
        Ok(())
    }

    /// The ring buffer's fd: readable when the kernel forced a wake-up (it is fuller than
    /// the wake-up threshold).
    pub fn ring_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Waits up to `timeout` for a wake-up from the kernel (blocking `poll`).
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.ring_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the fd lives as long as self.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
    }

    /// Drains up to `max` records now in the ring buffer, calling `f` on each. Returns the
    /// count; records beyond `max` stay in the ring (where the kernel counts what no longer
    /// fits), so a slow consumer pushes back on the kernel instead of queueing without bound.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }

    /// Kernel-side counters, summed over CPUs, with the number of syscalls measured (which
    /// reads every histogram slot: call it at the end, not per interval).
    pub fn counters(&self) -> KernelCounters {
        let syscalls_measured = self
            .syscall_hist
            .iter()
            .map(|v| v.map(|v| v.iter().sum::<u64>()).unwrap_or(0))
            .sum();
        KernelCounters {
            syscalls_measured,
            ..self.loss_counters()
        }
    }

    /// Kernel-side loss and submit counters (cheap: four map lookups); `syscalls_measured` is 0.
    pub fn loss_counters(&self) -> KernelCounters {
        KernelCounters {
            ringbuf_full: self.counter(Counter::RingbufFull),
            ringbuf_shed: self.counter(Counter::RingbufShed),
            start_table_full: self.counter(Counter::StartTableFull),
            tcp_table_full: self.counter(Counter::TcpTableFull),
            l7_table_full: self.counter(Counter::L7TableFull),
            submitted: self.counter(Counter::Submitted),
            syscalls_measured: 0,
        }
    }

    /// Per-syscall histograms: `(nr, buckets)` for every syscall with a non-zero count.
    pub fn syscall_histograms(&self) -> Result<Vec<(u32, [u64; HIST_BUCKETS])>, CaptureError> {
        let hist = &self.syscall_hist;
        let mut out = Vec::new();
        for nr in self.seen_syscalls()? {
            let mut buckets = [0u64; HIST_BUCKETS];
            let mut any = false;
            for (b, slot) in buckets.iter_mut().enumerate() {
                let idx = nr * HIST_BUCKETS as u32 + b as u32;
                let v: u64 = hist
                    .get(&idx, 0)
                    .map_err(|e| classify("reading SYSCALL_HIST", e))?
                    .iter()
                    .sum();
                *slot = v;
                any |= v != 0;
            }
            if any {
                out.push((nr, buckets));
            }
        }
        Ok(out)
    }

    /// Raises the minimum duration for a syscall to become an event while running (the
    /// overhead governor); 0 restores the configured one.
    pub fn set_min_duration_override(&mut self, min: Duration) -> Result<(), CaptureError> {
        let ns = min.as_nanos().min(u64::MAX as u128) as u64;
        self.runtime
            .set(0, ns, 0)
            .map_err(|e| classify("writing RUNTIME", e))
    }

    /// Failed calls per syscall number (index = nr).
    pub fn syscall_errors(&self) -> Result<Vec<u64>, CaptureError> {
        let mut out = vec![0; MAX_SYSCALLS];
        for nr in self.seen_syscalls()? {
            out[nr as usize] = self
                .syscall_errors
                .get(&nr, 0)
                .map(|v| v.iter().sum())
                .map_err(|e| classify("reading SYSCALL_ERRORS", e))?;
        }
        Ok(out)
    }

    /// Syscall numbers counted at least once. A refresh reads their 64 buckets only: reading
    /// all 512 numbers' (32,768 per-CPU slots, one bpf() call each) took ~50 ms per refresh,
    /// and far longer on a busy host.
    fn seen_syscalls(&self) -> Result<Vec<u32>, CaptureError> {
        let mut out = Vec::new();
        for nr in 0..MAX_SYSCALLS as u32 {
            let seen = self
                .syscall_seen
                .get(&nr, 0)
                .map_err(|e| classify("reading SYSCALL_SEEN", e))?;
            if seen != 0 {
                out.push(nr);
            }
        }
        Ok(out)
    }

    /// TCP connect (index 0) and accept (index 1) latency histograms.
    pub fn tcp_histograms(&self) -> Result<[[u64; HIST_BUCKETS]; 2], CaptureError> {
        Ok([
            histogram(&self.tcp_hist, 0, "TCP_HIST")?,
            histogram(&self.tcp_hist, 1, "TCP_HIST")?,
        ])
    }

    /// Latency histograms of the probed functions, by id (`config.funcs` order).
    pub fn func_histograms(&self) -> Result<Vec<[u64; HIST_BUCKETS]>, CaptureError> {
        let mut out = vec![[0u64; HIST_BUCKETS]; self.config.funcs.len()];
        for (id, buckets) in out.iter_mut().enumerate() {
            let seen = self
                .func_seen
                .get(&(id as u32), 0)
                .map_err(|e| classify("reading FUNC_SEEN", e))?;
            if seen != 0 {
                *buckets = histogram(&self.func_hist, id, "FUNC_HIST")?;
            }
        }
        Ok(out)
    }

    /// What the function probes could not measure since start: (calls nested deeper than
    /// the per-thread stack, calls whose return was never seen, threads not followed for a
    /// full table).
    pub fn func_losses(&self) -> FuncLosses {
        FuncLosses {
            too_deep: self.counter(Counter::FuncStackDeep),
            unfinished: self.counter(Counter::FuncUnfinished),
            table_full: self.counter(Counter::FuncTableFull),
        }
    }

    /// Calls the per-process histograms could not count (their map was full).
    pub fn proc_hist_full(&self) -> u64 {
        self.counter(Counter::ProcHistFull)
    }

    /// One kernel counter, summed over CPUs (0 if unreadable).
    fn counter(&self, c: Counter) -> u64 {
        self.counters
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Per-process histogram entries: `((pid, nr, bucket), count)`.
    pub fn proc_histograms(&self) -> Result<Vec<(ProcHistKey, u64)>, CaptureError> {
        let mut out = Vec::new();
        for entry in self.proc_hist.iter() {
            let (k, v) = entry.map_err(|e| classify("reading PROC_HIST_MAP", e))?;
            out.push((k, v.iter().sum()));
        }
        Ok(out)
    }
}

/// Histogram `n` of a per-CPU array of histograms (`HIST_BUCKETS` slots each), summed over
/// CPUs.
fn histogram(
    map: &PerCpuArray<MapData, u64>,
    n: usize,
    name: &str,
) -> Result<[u64; HIST_BUCKETS], CaptureError> {
    let mut out = [0u64; HIST_BUCKETS];
    for (b, slot) in out.iter_mut().enumerate() {
        let idx = (n * HIST_BUCKETS + b) as u32;
        *slot = map
            .get(&idx, 0)
            .map_err(|e| classify(format!("reading {name}"), e))?
            .iter()
            .sum();
    }
    Ok(out)
}

fn missing(name: &str) -> CaptureError {
    CaptureError::Invalid(format!(
        "the eBPF object has no map {name} (build mismatch)"
    ))
}

fn comm_key(comm: &str) -> Result<[u8; COMM_LEN], CaptureError> {
    let bytes = comm.as_bytes();
    if bytes.is_empty() || bytes.len() >= COMM_LEN {
        return Err(CaptureError::Invalid(format!(
            "comm {comm:?} must be 1 to {} bytes (the kernel truncates names to that)",
            COMM_LEN - 1
        )));
    }
    let mut key = [0u8; COMM_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Ok(key)
}

fn take_map<T, E>(
    ebpf: &mut Ebpf,
    name: &str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, CaptureError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing(name))?;
    conv(map).map_err(|e| classify(format!("opening map {name}"), e))
}

/// Program `prog` of the object, as its type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut P, CaptureError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(prog)
        .ok_or_else(|| CaptureError::Invalid(format!("no program {prog} (build mismatch)")))?
        .try_into()
        .map_err(|e| classify(format!("program {prog}"), e))
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<(), CaptureError> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load()
        .map_err(|e| classify(format!("loading program {prog}"), e))?;
    p.attach(tp)
        .map_err(|e| classify(format!("attaching {prog} to raw tracepoint {tp}"), e))?;
    Ok(())
}

/// Calls of probed functions the kernel counted but could not time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FuncLosses {
    /// Nested or recursive deeper than `FUNC_STACK_DEPTH` open calls per thread.
    pub too_deep: u64,
    /// Left without a return (longjmp, exception, thread exit).
    pub unfinished: u64,
    /// On threads the per-thread table had no room for.
    pub table_full: u64,
}

/// Attaches the entry and return probes to every function, each with its id as cookie, and
/// the thread-exit program that frees the stacks of threads that end inside a call.
///
/// Each probe is a perf event of its own (aya 0.14 has no uprobe_multi links): the kernel
/// removes them one at a time, each after a grace period, about 0.11 s per probe measured
/// here (166 probes: 18.6 s, from one thread or from 32 at once). Hence `MAX_FUNCS`.
fn attach_funcs(ebpf: &mut Ebpf, funcs: &[crate::uprobe::Func]) -> Result<(), CaptureError> {
    for prog in [programs::FUNC_ENTRY, programs::FUNC_RETURN] {
        let p: &mut UProbe = program(ebpf, prog)?;
        p.load()
            .map_err(|e| classify(format!("loading program {prog}"), e))?;
        for f in funcs {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(f.offset),
                cookie: Some(u64::from(f.id)),
            };
            p.attach(point, &f.path, UProbeScope::AllProcesses)
                .map_err(|e| {
                    classify(
                        format!("attaching {prog} to {} in {}", f.name, f.path.display()),
                        e,
                    )
                })?;
        }
    }
    attach_tp(
        ebpf,
        programs::FUNC_THREAD_EXIT,
        "sched",
        "sched_process_exit",
    )
}

fn attach_tp(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<(), CaptureError> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load()
        .map_err(|e| classify(format!("loading program {prog}"), e))?;
    p.attach(category, name).map_err(|e| {
        classify(
            format!("attaching {prog} to tracepoint {category}/{name}"),
            e,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names userspace uses (agent_common's constants) are the ones in the object: a
    /// renamed static or program fails here, not at load time on a user's host.
    #[test]
    fn shared_names_exist_in_the_ebpf_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the eBPF object parses");
        for m in maps::ALL {
            assert!(obj.maps.contains_key(*m), "map {m} not in the object");
        }
        for p in programs::ALL {
            assert!(
                obj.programs.contains_key(*p),
                "program {p} not in the object"
            );
        }
        // Globals are symbols: their names are in the ELF string table, NUL-terminated.
        for g in globals::ALL {
            let sym = [g.as_bytes(), b"\0"].concat();
            assert!(
                EBPF_OBJECT.windows(sym.len()).any(|w| w == sym.as_slice()),
                "global {g} not in the object"
            );
        }
        assert!(!obj.maps.contains_key("NO_SUCH_MAP"));
    }
}
