//! `kspan top --by route`: HTTP requests per route, refreshed: rate, errors, p50 and p99.
//!
//! The kernel copies the first bytes of L7 transfers (as for `kspan run`); requests are
//! rebuilt with [`crate::l7::tracker::Tracker`] and counted per (service, kind, route) here.
//! No spans are exported.
use std::{
    collections::BTreeMap,
    io::Write,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use opentelemetry::trace::SpanKind;
use serde::Serialize;

use super::{ctrlc_flag, HistError, TopArgs};
use crate::{
    capture::{Capture, SyscallHook},
    decode::{decode, RawEvent},
    hist::fmt_ns,
    l7::{
        tracker::{L7Options, Tracker},
        DEFAULT_REQUEST_BYTES, DEFAULT_RESPONSE_BYTES,
    },
    procinfo::{HostResource, ProcessCache},
    quantile::nearest_rank,
};

/// How often the ring buffer is drained between refreshes.
const DRAIN: Duration = Duration::from_millis(50);

/// One row: a route of a service, as server or client.
#[derive(Debug, Serialize, PartialEq)]
pub struct RouteRow {
    pub service: String,
    /// `server` or `client`.
    pub kind: &'static str,
    /// `GET /orders/{id}`.
    pub route: String,
    pub requests: u64,
    pub per_second: f64,
    pub errors: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// One refresh (`--json`: one line each).
#[derive(Debug, Serialize)]
pub struct RouteDoc {
    pub interval_s: f64,
    pub rows: Vec<RouteRow>,
}

#[derive(Default)]
struct Acc {
    durations: Vec<u64>,
    errors: u64,
}

/// Rows from what one interval gathered, busiest first.
fn rows(
    acc: BTreeMap<(String, &'static str, String), Acc>,
    secs: f64,
    top: usize,
) -> Vec<RouteRow> {
    let mut rows: Vec<RouteRow> = acc
        .into_iter()
        .map(|((service, kind, route), mut a)| {
            a.durations.sort_unstable();
            RouteRow {
                service,
                kind,
                route,
                requests: a.durations.len() as u64,
                per_second: a.durations.len() as f64 / secs.max(1e-9),
                errors: a.errors,
                p50_ns: nearest_rank(&a.durations, 0.5),
                p99_ns: nearest_rank(&a.durations, 0.99),
                max_ns: a.durations.last().copied().unwrap_or(0),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
    rows.truncate(top);
    rows
}

pub fn run(a: &TopArgs) -> Result<(), HistError> {
    if a.interval.is_zero() {
        return Err(HistError::Interval);
    }
    let mut cc = a.filter.capture_config()?;
    cc.syscall_hook = SyscallHook::Off;
    cc.emit_syscalls = false;
    cc.emit_failed = false;
    cc.tcp = false;
    cc.emit_tcp = false;
    cc.capture_l7(DEFAULT_REQUEST_BYTES, DEFAULT_RESPONSE_BYTES);
    let mut capture = Capture::start(cc)?;
    let stop = ctrlc_flag().map_err(HistError::Terminal)?;
    eprintln!("kspan: following HTTP requests; stop with Ctrl-C");
    let mut requests = Tracker::new(L7Options::default());
    let mut procs = ProcessCache::new(HostResource { attributes: vec![] }, BTreeMap::new());
    let mut acc: BTreeMap<(String, &'static str, String), Acc> = BTreeMap::new();
    let mut out = Vec::new();
    let mut spans = Vec::new();
    let mut start = Instant::now();
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        capture.drain(usize::MAX, |b| {
            if let Ok(RawEvent::Exchange(h, d, bytes)) = decode(b) {
                if let Some(s) = requests.on_record(&h, &d, bytes, &mut out) {
                    spans.push(s);
                }
            }
        });
        // Only the spans count here (links change no route).
        out.clear();
        for s in spans.drain(..) {
            let kind = match s.kind {
                SpanKind::Server => "server",
                _ => "client",
            };
            let service = procs.get(s.pid, &s.comm).service_name.clone();
            let e = acc.entry((service, kind, s.name.to_string())).or_default();
            e.durations.push(s.end_ns - s.start_ns);
            if s.summary.error {
                e.errors += 1;
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= a.interval || stopping {
            let secs = elapsed.as_secs_f64();
            let doc = RouteDoc {
                interval_s: secs,
                rows: rows(std::mem::take(&mut acc), secs, a.top),
            };
            let mut w = stdout.lock();
            let text = if a.json {
                serde_json::to_string(&doc).unwrap_or_default() + "\n"
            } else {
                render(&doc)
            };
            w.write_all(text.as_bytes())
                .and_then(|_| w.flush())
                .map_err(HistError::Output)?;
            shown += 1;
            start = Instant::now();
            if stopping || a.count.is_some_and(|c| shown >= c) {
                break;
            }
        }
        std::thread::sleep(DRAIN.min(a.interval));
    }
    Ok(())
}

fn render(doc: &RouteDoc) -> String {
    let mut s = format!(
        "HTTP requests by route, last {:.1}s\n{:<24} {:<6} {:<36} {:>8} {:>8} {:>7} {:>9} {:>9}\n",
        doc.interval_s, "SERVICE", "KIND", "ROUTE", "REQ", "REQ/S", "ERRORS", "P50", "P99"
    );
    for r in &doc.rows {
        s.push_str(&format!(
            "{:<24} {:<6} {:<36} {:>8} {:>8.1} {:>7} {:>9} {:>9}\n",
            r.service,
            r.kind,
            r.route,
            r.requests,
            r.per_second,
            r.errors,
            fmt_ns(r.p50_ns as f64),
            fmt_ns(r.p99_ns as f64)
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_rates_errors_and_quantiles() {
        let mut acc = BTreeMap::new();
        let a: &mut Acc = acc
            .entry(("api".to_string(), "server", "GET /orders/{id}".to_string()))
            .or_default();
        a.durations = (1..=100).rev().map(|i| i * 1000).collect();
        a.errors = 3;
        acc.entry(("api".to_string(), "server", "GET /health".to_string()))
            .or_default()
            .durations = vec![5];
        let r = rows(acc, 2.0, 10);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].route, "GET /orders/{id}");
        assert_eq!((r[0].requests, r[0].errors), (100, 3));
        assert_eq!(r[0].per_second, 50.0);
        assert_eq!(
            (r[0].p50_ns, r[0].p99_ns, r[0].max_ns),
            (50_000, 99_000, 100_000)
        );
        assert_eq!(r[1].p99_ns, 5);
        assert_eq!(rows(BTreeMap::new(), 1.0, 10), vec![]);
    }
}
