//! Latency histograms read from the kernel's maps: snapshots, interval deltas, quantile
//! estimates, and their text and JSON forms.
//!
//! Bucket `b` of a kernel histogram counts durations whose bit length is `b`: bucket 0 holds
//! 0 ns, bucket b >= 1 holds [2^(b-1), 2^b) ns.
use std::collections::BTreeMap;

use agent_common::{FUNC_NR_BASE, HIST_BUCKETS};
use serde::Serialize;

use crate::{
    capture::{Capture, CaptureError},
    uprobe::Func,
};

/// One log2 latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: [0; HIST_BUCKETS],
        }
    }
}

/// [lower, upper) of bucket `b`, in ns.
pub fn bucket_bounds(b: usize) -> (u64, u64) {
    if b == 0 {
        (0, 1)
    } else if b >= 64 {
        (1 << 63, u64::MAX)
    } else {
        (1u64 << (b - 1), 1u64 << b)
    }
}

impl Hist {
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// `self - prev`, per bucket (counters only grow; a reset map gives 0).
    pub fn since(&self, prev: &Hist) -> Hist {
        let mut out = Hist::default();
        for (i, o) in out.buckets.iter_mut().enumerate() {
            *o = self.buckets[i].saturating_sub(prev.buckets[i]);
        }
        out
    }

    /// Estimated quantile (0-1), interpolating linearly inside the bucket.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).max(1.0);
        let mut acc = 0u64;
        for (b, &c) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (acc + c) as f64 >= want {
                let (lo, hi) = bucket_bounds(b);
                let frac = (want - acc as f64) / c as f64;
                return Some((lo + ((hi - lo) as f64 * frac) as u64).min(hi - 1).max(lo));
            }
            acc += c;
        }
        None
    }

    /// Highest non-empty bucket.
    pub fn max_bucket(&self) -> Option<usize> {
        self.buckets.iter().rposition(|&c| c != 0)
    }

    /// Estimated total time: each count at its bucket's midpoint.
    pub fn time_estimate_ns(&self) -> f64 {
        self.buckets
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                let (lo, hi) = bucket_bounds(b);
                c as f64 * (lo as f64 + hi as f64) / 2.0
            })
            .sum()
    }

    /// `[lower_ns, upper_ns, count]` for the non-empty range of buckets.
    pub fn json_buckets(&self) -> Vec<[u64; 3]> {
        let Some(last) = self.max_bucket() else {
            return Vec::new();
        };
        let first = self.buckets.iter().position(|&c| c != 0).unwrap_or(0);
        (first..=last)
            .map(|b| {
                let (lo, hi) = bucket_bounds(b);
                [lo, hi, self.buckets[b]]
            })
            .collect()
    }

    /// bcc-style text: one line per bucket from the first to the last non-empty one.
    pub fn render(&self, bar_width: usize) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let Some(last) = self.max_bucket() else {
            return "     (no calls)\n".to_string();
        };
        let first = self.buckets.iter().position(|&c| c != 0).unwrap_or(0);
        let peak = self.buckets.iter().copied().max().unwrap_or(1).max(1);
        let _ = writeln!(s, "{:>22} : {:<9} distribution", "nsecs", "count");
        for b in first..=last {
            let (lo, hi) = bucket_bounds(b);
            let c = self.buckets[b];
            let n = ((c as f64 / peak as f64) * bar_width as f64).round() as usize;
            let _ = writeln!(
                s,
                "{:>10} -> {:<9} : {:<9} |{:<w$}|",
                lo,
                hi - 1,
                c,
                "*".repeat(n),
                w = bar_width
            );
        }
        s
    }
}

/// Human form of a duration in ns.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// `fmt_ns` of an estimate that may be missing (no calls): `-` then.
pub fn fmt_opt_ns(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| fmt_ns(v as f64))
}

/// Histograms with their failed-call counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub hist: Hist,
    pub errors: u64,
}

/// Everything read from the kernel at one instant (cumulative since attach).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// By syscall number.
    pub syscalls: BTreeMap<u32, Entry>,
    /// By (pid, syscall number), when per-process histograms are on.
    pub procs: BTreeMap<(u32, u32), Entry>,
    pub tcp_connect: Hist,
    pub tcp_accept: Hist,
    /// By function id (`--func`).
    pub funcs: BTreeMap<u32, Entry>,
    /// By (pid, function id), when per-process histograms are on.
    pub func_procs: BTreeMap<(u32, u32), Entry>,
}

impl Snapshot {
    pub fn read(c: &Capture, procs: bool) -> Result<Snapshot, CaptureError> {
        let mut s = Snapshot::default();
        let errors = c.syscall_errors()?;
        for (nr, buckets) in c.syscall_histograms()? {
            s.syscalls.insert(
                nr,
                Entry {
                    hist: Hist { buckets },
                    errors: errors.get(nr as usize).copied().unwrap_or(0),
                },
            );
        }
        if procs {
            for (k, v) in c.proc_histograms()? {
                let e = if k.nr >= FUNC_NR_BASE {
                    let id = u32::from(k.nr - FUNC_NR_BASE);
                    s.func_procs.entry((k.pid, id)).or_default()
                } else {
                    s.procs.entry((k.pid, u32::from(k.nr))).or_default()
                };
                let b = k.bucket as usize;
                if b < HIST_BUCKETS {
                    e.hist.buckets[b] += v;
                } else {
                    e.errors += v;
                }
            }
        }
        let [connect, accept] = c.tcp_histograms()?;
        s.tcp_connect = Hist { buckets: connect };
        s.tcp_accept = Hist { buckets: accept };
        for (id, buckets) in c.func_histograms()?.into_iter().enumerate() {
            s.funcs.insert(
                id as u32,
                Entry {
                    hist: Hist { buckets },
                    errors: 0,
                },
            );
        }
        Ok(s)
    }

    /// What happened since `prev`.
    pub fn since(&self, prev: &Snapshot) -> Snapshot {
        let diff = |cur: &Entry, old: Option<&Entry>| match old {
            Some(o) => Entry {
                hist: cur.hist.since(&o.hist),
                errors: cur.errors.saturating_sub(o.errors),
            },
            None => cur.clone(),
        };
        Snapshot {
            syscalls: self
                .syscalls
                .iter()
                .map(|(k, v)| (*k, diff(v, prev.syscalls.get(k))))
                .filter(|(_, v)| v.hist.total() > 0)
                .collect(),
            procs: self
                .procs
                .iter()
                .map(|(k, v)| (*k, diff(v, prev.procs.get(k))))
                .filter(|(_, v)| v.hist.total() > 0)
                .collect(),
            tcp_connect: self.tcp_connect.since(&prev.tcp_connect),
            tcp_accept: self.tcp_accept.since(&prev.tcp_accept),
            // Every probed function keeps its row, called or not.
            funcs: self
                .funcs
                .iter()
                .map(|(k, v)| (*k, diff(v, prev.funcs.get(k))))
                .collect(),
            func_procs: self
                .func_procs
                .iter()
                .map(|(k, v)| (*k, diff(v, prev.func_procs.get(k))))
                .filter(|(_, v)| v.hist.total() > 0)
                .collect(),
        }
    }
}

/// One row of a view: a syscall, a process, or a TCP histogram.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `read`, `1234 nginx`, `tcp connect`.
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The probed function (demangled) and its file (function views).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub count: u64,
    pub errors: u64,
    pub total_ns_est: f64,
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Upper bound of the highest non-empty bucket.
    pub max_ns: Option<u64>,
    /// Per-syscall counts (process view).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<(String, u64)>,
    /// Per-syscall buckets `[lower_ns, upper_ns, count]` (process view, JSON).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscall_buckets: Vec<(String, Vec<[u64; 3]>)>,
    pub buckets: Vec<[u64; 3]>,
    #[serde(skip)]
    pub hist: Hist,
}

impl Row {
    pub fn new(label: String, e: &Entry) -> Row {
        let h = &e.hist;
        Row {
            label,
            syscall: None,
            nr: None,
            pid: None,
            comm: None,
            function: None,
            file: None,
            count: h.total(),
            errors: e.errors,
            total_ns_est: h.time_estimate_ns(),
            p50_ns: h.quantile(0.5),
            p90_ns: h.quantile(0.9),
            p99_ns: h.quantile(0.99),
            max_ns: h.max_bucket().map(|b| bucket_bounds(b).1),
            syscalls: Vec::new(),
            syscall_buckets: Vec::new(),
            buckets: h.json_buckets(),
            hist: *h,
        }
    }
}

/// What a view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// One histogram per syscall.
    Syscall,
    /// One histogram per process (all its syscalls).
    Process,
    /// TCP connect latency (SYN_SENT -> ESTABLISHED).
    Connect,
    /// TCP accept (passive open) latency.
    Accept,
    /// One histogram per probed function (`--func`).
    Function,
}

impl View {
    /// The view after this one (`v` in the full-screen view). With `--func` only functions
    /// are probed: the views are per function and per process.
    pub fn next(self, funcs: bool) -> View {
        match (self, funcs) {
            (View::Function, true) => View::Process,
            (_, true) => View::Function,
            (View::Syscall, false) => View::Process,
            (View::Process, false) => View::Connect,
            (View::Connect, false) => View::Accept,
            (View::Accept | View::Function, false) => View::Syscall,
        }
    }
}

/// Sort order of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Time,
    Count,
    Errors,
    P99,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Time => SortBy::Count,
            SortBy::Count => SortBy::Errors,
            SortBy::Errors => SortBy::P99,
            SortBy::P99 => SortBy::Time,
        }
    }
}

/// Process names, read from /proc when a pid first shows up (it may have exited by the time
/// its row is shown).
#[derive(Debug, Default)]
pub struct Comms {
    names: std::collections::HashMap<u32, String>,
}

/// Most names kept; beyond it the cache starts again.
const MAX_COMMS: usize = 65_536;

impl Comms {
    pub fn learn(&mut self, s: &Snapshot) {
        if self.names.len() > MAX_COMMS {
            self.names.clear();
        }
        for pid in s.procs.keys().chain(s.func_procs.keys()).map(|k| &k.0) {
            self.names.entry(*pid).or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".to_string())
            });
        }
    }

    fn get(&self, pid: u32) -> String {
        self.names
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| "?".to_string())
    }
}

/// A row of function `id`, labelled with its name.
fn func_row(label_prefix: &str, id: u32, e: &Entry, funcs: &[Func]) -> Row {
    let (name, file) = match funcs.get(id as usize) {
        Some(f) => (f.name.clone(), f.path.display().to_string()),
        None => (format!("function #{id}"), String::new()),
    };
    let mut r = Row::new(format!("{label_prefix}{name}"), e);
    r.function = Some(name);
    r.file = Some(file);
    r
}

/// The rows of `view` for a snapshot (or delta), sorted. `funcs`: the probed functions
/// (then the process view is per process and function).
pub fn rows(s: &Snapshot, view: View, sort: SortBy, comms: &Comms, funcs: &[Func]) -> Vec<Row> {
    let mut out: Vec<Row> = match view {
        View::Function => s
            .funcs
            .iter()
            .map(|(id, e)| func_row("", *id, e, funcs))
            .collect(),
        View::Process if !funcs.is_empty() => s
            .func_procs
            .iter()
            .map(|((pid, id), e)| {
                let comm = comms.get(*pid);
                let mut r = func_row(&format!("{pid} {comm} "), *id, e, funcs);
                r.pid = Some(*pid);
                r.comm = Some(comm);
                r
            })
            .collect(),
        View::Syscall => s
            .syscalls
            .iter()
            .map(|(nr, e)| {
                let name = crate::names::syscall_name(*nr).into_owned();
                let mut r = Row::new(name.clone(), e);
                r.syscall = Some(name);
                r.nr = Some(*nr);
                r
            })
            .collect(),
        View::Process => {
            type PerPid = (Entry, Vec<(String, u64)>, Vec<(String, Vec<[u64; 3]>)>);
            let mut by_pid: BTreeMap<u32, PerPid> = BTreeMap::new();
            for ((pid, nr), e) in &s.procs {
                let p = by_pid.entry(*pid).or_default();
                p.0.hist.add(&e.hist);
                p.0.errors += e.errors;
                let name = crate::names::syscall_name(*nr).into_owned();
                p.1.push((name.clone(), e.hist.total()));
                p.2.push((name, e.hist.json_buckets()));
            }
            by_pid
                .into_iter()
                .map(|(pid, (e, mut sc, scb))| {
                    let comm = comms.get(pid);
                    sc.sort_by_key(|e| std::cmp::Reverse(e.1));
                    let mut r = Row::new(format!("{pid} {comm}"), &e);
                    r.pid = Some(pid);
                    r.comm = Some(comm);
                    r.syscalls = sc;
                    r.syscall_buckets = scb;
                    r
                })
                .collect()
        }
        View::Connect => vec![Row::new(
            "tcp connect".into(),
            &Entry {
                hist: s.tcp_connect,
                errors: 0,
            },
        )],
        View::Accept => vec![Row::new(
            "tcp accept".into(),
            &Entry {
                hist: s.tcp_accept,
                errors: 0,
            },
        )],
    };
    out.sort_by(|a, b| match sort {
        SortBy::Time => b.total_ns_est.total_cmp(&a.total_ns_est),
        SortBy::Count => b.count.cmp(&a.count),
        SortBy::Errors => b.errors.cmp(&a.errors).then(b.count.cmp(&a.count)),
        SortBy::P99 => b.p99_ns.cmp(&a.p99_ns),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pairs: &[(usize, u64)]) -> Hist {
        let mut h = Hist::default();
        for (b, c) in pairs {
            h.buckets[*b] = *c;
        }
        h
    }

    #[test]
    fn quantiles_and_bounds() {
        assert_eq!(bucket_bounds(0), (0, 1));
        assert_eq!(bucket_bounds(1), (1, 2));
        assert_eq!(bucket_bounds(24), (8_388_608, 16_777_216));
        // 10 ms lands in bucket 24, as the kernel computes it.
        assert_eq!(agent_common::log2_bucket(10_000_000), 24);
        let h = hist(&[(10, 50), (20, 50)]);
        assert_eq!(h.total(), 100);
        let p50 = h.quantile(0.5).unwrap();
        assert!((512..1024).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((524_288..1_048_576).contains(&p99), "{p99}");
        assert_eq!(h.max_bucket(), Some(20));
        assert_eq!(Hist::default().quantile(0.5), None);
        assert_eq!(h.json_buckets().len(), 11);
        assert_eq!(h.json_buckets()[0], [512, 1024, 50]);
    }

    #[test]
    fn deltas() {
        let a = hist(&[(3, 5)]);
        let b = hist(&[(3, 8), (4, 1)]);
        assert_eq!(b.since(&a), hist(&[(3, 3), (4, 1)]));
        assert_eq!(a.since(&b), Hist::default());
    }

    #[test]
    fn render_has_bars() {
        let text = hist(&[(24, 50), (25, 5)]).render(20);
        assert!(
            text.contains("8388608 -> 16777215  : 50        |********************|"),
            "{text}"
        );
        assert!(
            text.contains(": 5         |**                  |"),
            "{text}"
        );
    }
}
