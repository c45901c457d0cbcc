//! The reader: drains the kernel's ring buffer into decoded events for the build stage, and
//! keeps the kernel-side numbers current (loss counters, ring fill, the agent's CPU and the
//! overhead governor that reacts to it).
//!
//! Overflow policy: blocking. When the build stage is behind, the reader waits; the ring buffer
//! absorbs the burst and the kernel counts what it cannot hold (`ringbuf_full`). Chunks hold
//! at most `MAX_CHUNK` events, so what waits between the stages is bounded in events (a chunk
//! per drain of the whole ring let a flood queue 3 M events, seconds of work, in userspace:
//! the governor then saw the agent busy long after the kernel had stopped sending).
use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{EVENT_QUEUE_CHUNKS, MAX_CHUNK};
use crate::{
    capture::Capture,
    decode::{self, RawEvent},
    governor::{self, Governor},
    metrics::{DropReason, Stats, Totals},
    source::RingReady,
};

/// How often kernel counters and gauges are refreshed.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The reader and what it looks after.
pub struct Reader {
    pub capture: Capture,
    pub ready: RingReady,
    pub stats: Arc<Stats>,
    pub governor: Option<Governor>,
    /// How often a one-line summary goes to the log.
    pub log_interval: Duration,
}

impl Reader {
    /// Reads until `stop` completes or the build stage is gone; then detaches the programs,
    /// drains what is left, and closes the channel. Returns the capture (its maps stay
    /// readable for the final counters).
    pub async fn run(
        self,
        tx: mpsc::Sender<Vec<RawEvent>>,
        stop: impl Future<Output = ()>,
    ) -> Capture {
        let Reader {
            mut capture,
            mut ready,
            stats,
            mut governor,
            log_interval,
        } = self;
        tokio::pin!(stop);
        let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
        let mut log_tick = tokio::time::interval(log_interval.max(Duration::from_secs(1)));
        log_tick.tick().await;
        let mut cpu_before = (governor::own_cpu(), std::time::Instant::now());
        loop {
            tokio::select! {
                _ = ready.ready() => {
                    if !forward(&mut capture, &stats, &tx).await {
                        break;
                    }
                }
                _ = stats_tick.tick() => {
                    stats.update_kernel(&capture.loss_counters());
                    let now = (governor::own_cpu(), std::time::Instant::now());
                    let wall = now.1.duration_since(cpu_before.1).as_secs_f64().max(1e-3);
                    let pct = 100.0 * now.0.saturating_sub(cpu_before.0).as_secs_f64() / wall;
                    cpu_before = now;
                    if let Some(g) = governor.as_mut() {
                        if let governor::Action::Set(d) = g.tick(pct) {
                            match capture.set_min_duration_override(d) {
                                Ok(()) => log::warn!(
                                    "overhead governor: agent CPU {pct:.1}% (budget {}%): syscall spans now need >= {}",
                                    g.budget_percent(),
                                    humantime::format_duration(d)
                                ),
                                Err(e) => log::warn!("overhead governor: {e}"),
                            }
                        }
                    }
                    stats.set_cpu(pct, governor.as_ref().map_or(capture.config.min_duration, |g| g.current()));
                }
                _ = log_tick.tick() => log_summary(&stats.totals()),
                _ = &mut stop => break,
            }
        }
        eprintln!("kspan: stopping: detaching programs, flushing spans");
        drop(ready);
        capture.detach();
        stats.set_attached(false);
        loop {
            let (chunk, bytes) = drain_chunk(&mut capture, &stats);
            stats.set_ring_fill(bytes);
            if chunk.is_empty() || tx.send(chunk).await.is_err() {
                break;
            }
        }
        capture
    }
}

fn log_summary(t: &Totals) {
    log::info!(
        "events {} spans built {} exported {} dropped {} ({}) queued {}",
        t.events,
        t.spans_built,
        t.spans_exported,
        t.dropped_total(),
        t.dropped
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        t.queue_spans
    );
}

/// One drain: what the ring holds now, in chunks of at most `MAX_CHUNK` events, and never
/// more than `EVENT_QUEUE_CHUNKS` chunks before the reader looks at its timers again. The
/// bytes found are the ring buffer's fill level. False when the build stage is gone.
async fn forward(capture: &mut Capture, stats: &Stats, tx: &mpsc::Sender<Vec<RawEvent>>) -> bool {
    let mut bytes = 0;
    for _ in 0..EVENT_QUEUE_CHUNKS {
        let (chunk, b) = drain_chunk(capture, stats);
        bytes += b;
        let last = chunk.len() < MAX_CHUNK;
        if !chunk.is_empty() && tx.send(chunk).await.is_err() {
            return false;
        }
        if last {
            break;
        }
    }
    stats.set_ring_fill(bytes);
    true
}

/// Decodes up to `MAX_CHUNK` records; undecodable ones are counted. Returns the events and
/// the bytes read.
fn drain_chunk(capture: &mut Capture, stats: &Stats) -> (Vec<RawEvent>, usize) {
    let mut out = Vec::with_capacity(MAX_CHUNK);
    let mut bytes = 0usize;
    let mut bad = 0u64;
    capture.drain(MAX_CHUNK, |b| {
        bytes += b.len();
        match decode::decode(b) {
            Ok(ev) => out.push(ev),
            Err(e) => {
                bad += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    });
    stats.dropped(DropReason::Undecodable, bad);
    (out, bytes)
}
