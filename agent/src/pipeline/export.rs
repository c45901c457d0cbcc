//! The export stage: batches spans by size and time, exports each batch (one request per
//! process resource in it) through a [`Sink`], and keeps failed batches for retry while the
//! collector is away.
//!
//! Queue policy: at most `pipeline.queue_spans` spans wait between the span builder and the
//! collector (the channel, the batch queue and the retry batch together; see `queue`). When
//! the queue is full the span builder drops the newest spans, counted as `queue_full`.
//! Batches that still fail after `pipeline.retry_max_elapsed` (or at the shutdown deadline)
//! are counted as `export_failed`. Nothing is dropped without being counted.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use opentelemetry_sdk::trace::SpanData;
use tokio::time::Instant;

use super::queue::QueueRx;
use crate::{
    config::PipelineSection,
    metrics::{DropReason, Stats},
    sink::{error_hint, Sink, SinkError},
    spans::Built,
};

/// Awaits one export for at most `limit`, and never past `deadline` (the shutdown's) if
/// there is one: a call that hangs (a collector that accepts and never answers, a transport
/// stuck below the exporter's own timeout) is cancelled and retried like a failure.
async fn with_deadline(
    limit: Duration,
    deadline: Option<Instant>,
    fut: crate::sink::ExportFuture<'_>,
) -> Result<(), SinkError> {
    let own = Instant::now() + limit;
    let (at, err) = match deadline {
        Some(d) if d < own => (d, SinkError::Deadline),
        _ => (own, SinkError::TimedOut(limit)),
    };
    match tokio::time::timeout_at(at, fut).await {
        Ok(r) => r,
        Err(_) => Err(err),
    }
}

/// The limit of one export call when none is set: OTLP's default timeout plus the margin.
pub const DEFAULT_CALL_LIMIT: Duration = Duration::from_secs(11);

/// First delay before a failed batch is retried; doubles up to `MAX_RETRY_DELAY`.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// A failed batch waiting for its next attempt.
struct Retry {
    spans: Vec<Built>,
    first_failure: Instant,
    next_at: Instant,
    delay: Duration,
}

/// The export stage.
pub struct ExportStage {
    sink: Box<dyn Sink>,
    rx: QueueRx<Built>,
    cfg: PipelineSection,
    stats: Arc<Stats>,
    queue: VecDeque<Built>,
    retry: Option<Retry>,
    last_error: Option<String>,
    /// Told when the sink's output is gone for good (stdout closed by its reader): the
    /// agent stops.
    output_closed: Arc<tokio::sync::Notify>,
    /// The sink's output is gone: what is left is counted, not sent.
    sink_closed: bool,
    /// The longest one export call may take (`sink::call_limit`).
    call_limit: Duration,
}

impl ExportStage {
    pub fn new(
        sink: Box<dyn Sink>,
        rx: QueueRx<Built>,
        cfg: PipelineSection,
        stats: Arc<Stats>,
        output_closed: Arc<tokio::sync::Notify>,
    ) -> ExportStage {
        ExportStage {
            sink,
            rx,
            cfg,
            stats,
            queue: VecDeque::new(),
            retry: None,
            last_error: None,
            output_closed,
            sink_closed: false,
            call_limit: DEFAULT_CALL_LIMIT,
        }
    }

    /// Sets the longest one export call may take.
    pub fn with_call_limit(mut self, limit: Duration) -> ExportStage {
        self.call_limit = limit;
        self
    }

    /// Spans that cannot go anywhere any more (the output closed): counted, released.
    fn discard(&mut self, n: usize) {
        self.stats.dropped(DropReason::ExportFailed, n as u64);
        self.rx.release(n);
    }

    /// Gives back the room a burst made the batch queue take (a span is ~0.5 KiB: a queue
    /// that once held 4,096 spans kept 2 MiB for the rest of the run), keeping room for two
    /// batches.
    fn shrink_after_burst(&mut self) {
        let keep = self.queue.len().max(2 * self.cfg.batch_size);
        if self.queue.capacity() > 2 * keep {
            self.queue.shrink_to(keep);
        }
    }

    /// Spans in this stage (batch queue and retry batch), not counting the channel.
    fn held(&self) -> usize {
        self.queue.len() + self.retry.as_ref().map_or(0, |r| r.spans.len())
    }

    /// Runs until the input channel closes, then flushes within `shutdown_timeout`. The
    /// channel is always read: the queue's bound is enforced by the sender (in spans).
    pub async fn run(mut self) {
        let mut next_flush = Instant::now() + self.cfg.batch_timeout;
        loop {
            let wake = match &self.retry {
                Some(r) => r.next_at,
                None => next_flush,
            };
            tokio::select! {
                chunk = self.rx.recv() => match chunk {
                    Some(c) => self.queue.extend(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.stats.set_queue(self.rx.held());
            let now = Instant::now();
            if self.retry.as_ref().is_some_and(|r| r.next_at <= now) {
                if let Some(r) = self.retry.take() {
                    let prev = (r.first_failure, r.delay);
                    self.attempt(r.spans, Some(prev), None).await;
                }
                continue;
            }
            if self.retry.is_some() {
                continue;
            }
            if self.queue.len() >= self.cfg.batch_size
                || (now >= next_flush && !self.queue.is_empty())
            {
                let n = self.queue.len().min(self.cfg.batch_size);
                let batch: Vec<Built> = self.queue.drain(..n).collect();
                self.shrink_after_burst();
                self.attempt(batch, None, None).await;
            }
            if now >= next_flush {
                next_flush = now + self.cfg.batch_timeout;
            }
        }
        self.flush_at_shutdown().await;
    }

    async fn flush_at_shutdown(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        while self.held() > 0 && Instant::now() < deadline {
            let (batch, prev) = match self.retry.take() {
                Some(r) => {
                    tokio::time::sleep_until(r.next_at.min(deadline)).await;
                    if Instant::now() >= deadline {
                        self.retry = Some(r);
                        break;
                    }
                    (r.spans, Some((r.first_failure, r.delay)))
                }
                None => {
                    let n = self.queue.len().min(self.cfg.batch_size);
                    (self.queue.drain(..n).collect(), None)
                }
            };
            self.attempt(batch, prev, Some(deadline)).await;
        }
        let left = self.held() as u64;
        if left > 0 {
            log::warn!(
                "shutdown deadline reached: {left} spans not exported (counted as export_failed)"
            );
            self.stats.dropped(DropReason::ExportFailed, left);
            self.rx.release(left as usize);
            self.queue.clear();
            self.retry = None;
        }
        self.stats.set_queue(0);
        self.sink.shutdown();
    }

    /// Exports one batch, one request per resource; what fails is kept for retry or counted.
    /// `prev`: when this batch first failed and the last retry delay.
    async fn attempt(
        &mut self,
        batch: Vec<Built>,
        prev: Option<(Instant, Duration)>,
        deadline: Option<Instant>,
    ) {
        if self.sink_closed {
            self.discard(batch.len());
            return;
        }
        let mut groups: Vec<(Arc<crate::procinfo::ProcResource>, Vec<Built>)> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for b in batch {
            let i = *index.entry(b.resource.id).or_insert_with(|| {
                groups.push((b.resource.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(b);
        }
        let mut failed: Vec<Built> = Vec::new();
        if self.sink.whole_batches() {
            // One call for the whole batch (the terminal view): one group, many resources.
            let all: Vec<Built> = groups.into_iter().flat_map(|(_, s)| s).collect();
            let data = all.iter().map(|b| (&*b.resource, b.span.clone())).fold(
                Vec::<(&crate::procinfo::ProcResource, Vec<SpanData>)>::new(),
                |mut v, (r, s)| {
                    match v.last_mut() {
                        Some((last, spans)) if last.id == r.id => spans.push(s),
                        _ => v.push((r, vec![s])),
                    }
                    v
                },
            );
            let t0 = Instant::now();
            let result =
                with_deadline(self.call_limit, deadline, self.sink.export_batch(data)).await;
            let n = all.len();
            self.done(result, n, t0, &mut failed, all);
        } else {
            for (res, spans) in groups {
                if self.sink_closed {
                    // Counted below with the rest.
                    failed.extend(spans);
                    continue;
                }
                let data: Vec<SpanData> = spans.iter().map(|b| b.span.clone()).collect();
                let n = data.len();
                let t0 = Instant::now();
                let result = with_deadline(
                    self.call_limit,
                    deadline,
                    self.sink.export(&res.resource, data),
                )
                .await;
                self.done(result, n, t0, &mut failed, spans);
            }
        }
        if self.sink_closed {
            let n = failed.len() + self.queue.len();
            self.queue.clear();
            self.discard(n);
            return;
        }
        self.retry_later(failed, prev);
    }

    /// What one export call's result means for its `n` spans.
    fn done(
        &mut self,
        result: Result<(), SinkError>,
        n: usize,
        t0: Instant,
        failed: &mut Vec<Built>,
        spans: Vec<Built>,
    ) {
        let secs = t0.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                self.stats.add_exported(n as u64, secs);
                self.rx.release(n);
                if let Some(e) = self.last_error.take() {
                    log::warn!("export works again (last error: {e})");
                }
            }
            Err(SinkError::Closed) => {
                // `kspan run | head`: a normal way to stop, not an error to retry.
                log::info!("stdout was closed by its reader: stopping");
                self.sink_closed = true;
                self.output_closed.notify_one();
                failed.extend(spans);
            }
            Err(e) => {
                let e = e.to_string();
                self.stats.export_failed_attempt(secs);
                if self.last_error.is_none() {
                    log::warn!("export failed, will retry: {e}{}", error_hint(&e));
                }
                self.last_error = Some(e);
                failed.extend(spans);
            }
        }
    }

    /// Keeps a failed batch for its next attempt, or drops it (counted) once it has been
    /// retried for `retry_max_elapsed`.
    fn retry_later(&mut self, failed: Vec<Built>, prev: Option<(Instant, Duration)>) {
        if failed.is_empty() {
            return;
        }
        let now = Instant::now();
        let (first_failure, delay) = match prev {
            Some((first, delay)) => (first, (delay * 2).min(MAX_RETRY_DELAY)),
            None => (now, FIRST_RETRY_DELAY),
        };
        if now.duration_since(first_failure) >= self.cfg.retry_max_elapsed {
            log::warn!(
                "dropping {} spans after retrying for {:?}: {}",
                failed.len(),
                self.cfg.retry_max_elapsed,
                self.last_error.as_deref().unwrap_or("?")
            );
            self.stats
                .dropped(DropReason::ExportFailed, failed.len() as u64);
            self.rx.release(failed.len());
            return;
        }
        self.retry = Some(Retry {
            spans: failed,
            first_failure,
            next_at: now + delay,
            delay,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::{
        trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
        InstrumentationScope,
    };
    use opentelemetry_sdk::{
        trace::{SpanEvents, SpanLinks},
        Resource,
    };

    use super::*;
    use crate::{pipeline::queue, procinfo::ProcResource, sink::ExportFuture};

    /// What the in-memory sink saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        /// Span names of each successful export.
        batches: Vec<Vec<String>>,
        attempts: usize,
        shut_down: bool,
    }

    /// A sink that fails while `failing` is set, else keeps what it gets.
    struct MemSink {
        seen: Arc<Mutex<Seen>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for MemSink {
        fn export<'a>(&'a mut self, _: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a> {
            let mut seen = self.seen.lock().unwrap();
            seen.attempts += 1;
            let r = if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                Err(SinkError::Deadline)
            } else {
                seen.batches
                    .push(spans.iter().map(|s| s.name.to_string()).collect());
                Ok(())
            };
            Box::pin(std::future::ready(r))
        }

        fn shutdown(&mut self) {
            self.seen.lock().unwrap().shut_down = true;
        }
    }

    fn span(n: usize) -> Built {
        let id = (n as u64 + 1).to_be_bytes();
        let mut tid = [0u8; 16];
        tid[8..].copy_from_slice(&id);
        Built {
            resource: Arc::new(ProcResource {
                id: 1,
                pid: 1,
                service_name: "test".into(),
                resource: Resource::builder_empty().build(),
            }),
            span: SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes(tid),
                    SpanId::from_bytes(id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: format!("s{n}").into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                end_time: std::time::SystemTime::UNIX_EPOCH,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: InstrumentationScope::builder("test").build(),
            },
        }
    }

    struct Harness {
        tx: queue::QueueTx<Built>,
        seen: Arc<Mutex<Seen>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        stats: Arc<Stats>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(cfg: PipelineSection, failing: bool) -> Harness {
        let (tx, rx) = queue::bounded(cfg.queue_spans);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(failing));
        let stats = Arc::new(Stats::new());
        let sink = MemSink {
            seen: seen.clone(),
            failing: failing.clone(),
        };
        let task = tokio::spawn(
            ExportStage::new(Box::new(sink), rx, cfg, stats.clone(), Default::default()).run(),
        );
        Harness {
            tx,
            seen,
            failing,
            stats,
            task,
        }
    }

    fn cfg() -> PipelineSection {
        PipelineSection {
            batch_size: 4,
            batch_timeout: Duration::from_millis(100),
            queue_spans: 10,
            retry_max_elapsed: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    /// Offers `n` spans numbered from `from`, one chunk each, counting drops as the build
    /// stage does.
    fn offer(h: &Harness, from: usize, n: usize) {
        for i in from..from + n {
            let sent = h.tx.send(vec![span(i)]);
            h.stats.add_spans_built(1);
            h.stats.dropped(DropReason::QueueFull, sent.full as u64);
        }
    }

    fn reconciles(t: &crate::metrics::Totals) {
        assert_eq!(
            t.spans_built,
            t.spans_exported + t.dropped["queue_full"] + t.dropped["export_failed"],
            "{t:?}"
        );
    }

    /// A sink whose first call never ends (a collector that accepts and never answers, or a
    /// transport stuck below the exporter's timeout), then works.
    struct HangsOnce {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Sink for HangsOnce {
        fn export<'a>(&'a mut self, _: &'a Resource, spans: Vec<SpanData>) -> ExportFuture<'a> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(spans.iter().map(|s| s.name.to_string()).collect());
            if calls.len() == 1 {
                Box::pin(std::future::pending())
            } else {
                Box::pin(std::future::ready(Ok(())))
            }
        }

        fn shutdown(&mut self) {}
    }

    #[test]
    fn the_batch_queue_gives_back_what_a_burst_took() {
        let (_tx, rx) = queue::bounded(16_384);
        let sink = MemSink {
            seen: Default::default(),
            failing: Default::default(),
        };
        let mut stage = ExportStage::new(
            Box::new(sink),
            rx,
            cfg(),
            Arc::new(Stats::new()),
            Default::default(),
        );
        stage.queue.extend((0..5000).map(span));
        let burst = stage.queue.capacity();
        assert!(burst >= 5000);
        stage.queue.drain(..4990);
        stage.shrink_after_burst();
        // Room for two batches of 4 (or what is queued) is kept; the rest given back.
        assert!(
            stage.queue.capacity() < burst / 100,
            "{}",
            stage.queue.capacity()
        );
        assert_eq!(stage.queue.len(), 10);
        // A queue in steady use is not touched.
        let steady = stage.queue.capacity();
        stage.shrink_after_burst();
        assert_eq!(stage.queue.capacity(), steady);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_ends_is_cancelled_at_its_limit_and_retried() {
        let cfg = cfg();
        let (tx, rx) = queue::bounded(cfg.queue_spans);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::new());
        let sink = HangsOnce {
            calls: calls.clone(),
        };
        let task = tokio::spawn(
            ExportStage::new(Box::new(sink), rx, cfg, stats.clone(), Default::default())
                .with_call_limit(Duration::from_secs(2))
                .run(),
        );
        let sent = tx.send((0..4).map(span).collect());
        assert_eq!(sent.full, 0);
        stats.add_spans_built(4);
        // Before the limit: one call, still hanging, nothing exported.
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(calls.lock().unwrap().len(), 1);
        assert_eq!(stats.totals().spans_exported, 0);
        // After it (and the first retry delay): cancelled, sent again, exported.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen = calls.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], seen[1], "the same batch, retried");
        drop(tx);
        task.await.unwrap();
        let t = stats.totals();
        assert_eq!(t.spans_exported, 4);
        assert_eq!(t.dropped["export_failed"], 0);
        reconciles(&t);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_and_by_time() {
        let h = start(cfg(), false);
        offer(&h, 0, 6);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let batches = h.seen.lock().unwrap().batches.clone();
        assert_eq!(
            batches,
            vec![vec!["s0", "s1", "s2", "s3"], vec!["s4", "s5"]],
            "a full batch at once, the rest at the batch timeout"
        );
        drop(h.tx);
        h.task.await.unwrap();
        let t = h.stats.totals();
        assert_eq!(t.spans_exported, 6);
        reconciles(&t);
        assert!(h.seen.lock().unwrap().shut_down);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_the_newest_and_counts_them() {
        // The collector is away: nothing leaves, so the 10-span queue fills.
        let h = start(cfg(), true);
        offer(&h, 0, 25);
        let t = h.stats.totals();
        assert_eq!(t.dropped["queue_full"], 15);
        // It comes back before the retry deadline: the 10 oldest arrive, in order.
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let names: Vec<String> = h.seen.lock().unwrap().batches.concat();
        assert_eq!(names, (0..10).map(|i| format!("s{i}")).collect::<Vec<_>>());
        drop(h.tx);
        h.task.await.unwrap();
        let t = h.stats.totals();
        assert_eq!(t.spans_exported, 10);
        assert_eq!(t.dropped["export_failed"], 0);
        reconciles(&t);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_retry_with_backoff_then_count_as_export_failed() {
        let h = start(cfg(), true);
        offer(&h, 0, 4);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (attempts, exported) = {
            let seen = h.seen.lock().unwrap();
            (seen.attempts, seen.batches.len())
        };
        // Attempts at 0, then after 0.5, 1, 2 and 4 s (doubling): the one at 7.5 s is past
        // the 5 s deadline, so the batch is given up there.
        assert_eq!(attempts, 5, "attempts");
        assert_eq!(exported, 0);
        let t = h.stats.totals();
        assert_eq!(t.dropped["export_failed"], 4);
        // The room is given back: new spans are taken again.
        h.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        offer(&h, 4, 4);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.stats.totals().spans_exported, 4);
        drop(h.tx);
        h.task.await.unwrap();
        reconciles(&h.stats.totals());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_within_its_timeout() {
        // Collector up: everything queued at shutdown is flushed.
        let h = start(cfg(), false);
        offer(&h, 0, 7);
        drop(h.tx);
        h.task.await.unwrap();
        assert_eq!(h.stats.totals().spans_exported, 7);

        // Collector down: the stage gives up at the shutdown deadline and counts the rest.
        let h = start(cfg(), true);
        offer(&h, 0, 7);
        let t0 = Instant::now();
        drop(h.tx);
        h.task.await.unwrap();
        assert!(
            t0.elapsed() <= Duration::from_millis(1100),
            "{:?}",
            t0.elapsed()
        );
        let t = h.stats.totals();
        assert_eq!(t.spans_exported, 0);
        assert_eq!(t.dropped["export_failed"], 7);
        reconciles(&t);
    }
}
