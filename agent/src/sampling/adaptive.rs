//! The adaptive sampler: follows a target of kept spans per second, split across keys
//! (service, span name, kind, status class) so rare keys keep 100 %; keeps errors; boosts
//! slow spans; raises the base rate during error bursts.
//!
//! Per key, on every tick: the expected incoming rate (the sum of the probabilities spans
//! arrive with, so earlier stages are accounted for) is smoothed with an EWMA, except that a
//! tick more than 1.5x away from the average (a load step) replaces it, so a step is
//! answered at the next tick while noise is smoothed. The target left
//! after error keys (kept whole) is water-filled across keys: keys below the fair share keep
//! everything, the others share the rest equally. A key's factor may fall at once but rise
//! at most `max_increase` times per tick. Memory per key is fixed (a latency histogram of
//! `LAT_BUCKETS` counters); at most `max_keys` keys, later keys share one overflow key.
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};

use serde::{Deserialize, Serialize};

use super::{Decider, Partial, SpanView};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Kept spans per second to aim for (errors come on top of it when they exceed it).
    pub target_spans_per_second: f64,
    /// At most this many kept spans per second for any one key, within the total target
    /// (unset: only the total's fair share limits a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_per_key: Option<f64>,
    /// Spans at least this slow get the slow boost (ns, or a duration like 1s).
    #[serde(default, with = "crate::duration::serde_opt_ns")]
    pub slow_threshold: Option<u64>,
    /// Spans slower than this quantile of their key's recent durations get the slow boost
    /// (0.95 or 0.99; 0 disables).
    #[serde(default = "default_quantile")]
    pub slow_quantile: f64,
    /// Probability multiplier for slow spans.
    #[serde(default = "default_boost")]
    pub slow_boost: f64,
    /// More than this many errors within `error_burst_window` is a burst...
    #[serde(default = "default_burst_errors")]
    pub error_burst_errors: u64,
    #[serde(default = "default_burst_window", with = "crate::duration::serde_ns")]
    pub error_burst_window: u64,
    /// ...which multiplies the base probability by this.
    #[serde(default = "default_burst_boost")]
    pub error_burst_boost: f64,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    #[serde(default = "default_tick", with = "crate::duration::serde_ns")]
    pub tick: u64,
    /// EWMA weight of the newest tick.
    #[serde(default = "default_alpha")]
    pub ewma_alpha: f64,
    /// Largest factor by which a key's probability may rise per tick.
    #[serde(default = "default_max_increase")]
    pub max_increase: f64,
    /// Every key keeps at least this many spans per second (when it has them), even when
    /// errors use up the target: a probability of 0 would leave the backend nothing to
    /// estimate the key's count from.
    #[serde(default = "default_min_key_rate")]
    pub min_key_rate: f64,
}

fn default_quantile() -> f64 {
    0.99
}
fn default_boost() -> f64 {
    10.0
}
fn default_burst_errors() -> u64 {
    10
}
fn default_burst_window() -> u64 {
    300_000_000_000
}
fn default_burst_boost() -> f64 {
    5.0
}
fn default_max_keys() -> usize {
    1000
}
fn default_tick() -> u64 {
    1_000_000_000
}
fn default_alpha() -> f64 {
    0.2
}

/// A tick whose rate differs from the average by more than this factor is a load step.
const JUMP_RATIO: f64 = 1.5;

/// When twice a tick's worth of the target has been kept before the tick ends (a burst, or
/// the first moments of a busy host, when every key still keeps everything), rates are
/// measured again at once, but not sooner than this fraction of a tick after the last
/// measurement. (Once: at the target, a tick keeps about one tick's worth, and a
/// measurement over a sliver of a tick would be noise.)
const EARLY_TICK_DIVISOR: u64 = 10;
const EARLY_TICK_OVERSHOOT: f64 = 2.0;
fn default_max_increase() -> f64 {
    2.0
}
fn default_min_key_rate() -> f64 {
    1.0
}

impl AdaptiveConfig {
    pub fn with_target(target: f64) -> AdaptiveConfig {
        AdaptiveConfig {
            target_spans_per_second: target,
            target_per_key: None,
            slow_threshold: None,
            slow_quantile: default_quantile(),
            slow_boost: default_boost(),
            error_burst_errors: default_burst_errors(),
            error_burst_window: default_burst_window(),
            error_burst_boost: default_burst_boost(),
            max_keys: default_max_keys(),
            tick: default_tick(),
            ewma_alpha: default_alpha(),
            max_increase: default_max_increase(),
            min_key_rate: default_min_key_rate(),
        }
    }
}

/// Durations in YAML as ns or `1s`/`250ms`.
/// Latency histogram resolution: 4 sub-buckets per power of two (~19 % wide).
const LAT_BUCKETS: usize = 256;

fn lat_bucket(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros() as usize;
    let sub = ((ns >> (log - 2)) & 3) as usize;
    (log * 4 + sub).min(LAT_BUCKETS - 1)
}

fn bucket_lower(b: usize) -> u64 {
    if b < 4 {
        return b as u64;
    }
    let log = b / 4;
    let sub = (b % 4) as u64;
    (1u64 << log) + (sub << (log - 2))
}

struct KeyState {
    /// Expected arrivals (sum of incoming probabilities) in the current tick.
    tick_in: f64,
    ewma: f64,
    /// Rate over the last tick alone.
    last_rate: f64,
    factor: f64,
    is_error: bool,
    idle_ticks: u32,
    lat: Box<[u32; LAT_BUCKETS]>,
    lat_total: u32,
    /// Duration at or above which a span counts as slow for this key (0: unknown yet).
    slow_ns: u64,
}

impl KeyState {
    fn new(is_error: bool) -> KeyState {
        KeyState {
            tick_in: 0.0,
            ewma: 0.0,
            last_rate: 0.0,
            factor: 1.0,
            is_error,
            idle_ticks: 0,
            lat: Box::new([0; LAT_BUCKETS]),
            lat_total: 0,
            slow_ns: 0,
        }
    }
}

/// Per-key view for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyReport {
    pub rate: f64,
    pub factor: f64,
}

pub struct Adaptive {
    cfg: AdaptiveConfig,
    keys: FxHashMap<u64, KeyState>,
    overflow: u64,
    next_tick: u64,
    last_tick: u64,
    /// Errors per tick over the burst window (ring).
    error_ring: Vec<u64>,
    ring_pos: usize,
    tick_errors: u64,
    burst: bool,
    /// Spans expected to be kept (sum of outgoing probabilities) since the last tick,
    /// errors and priority spans aside.
    tick_kept: f64,
    /// Ticks taken early because the target was used up (`EARLY_TICK_DIVISOR`).
    early_ticks: u64,
}

fn key_hash<S: SpanView + ?Sized>(s: &S) -> u64 {
    // Fx: fast, and collisions between keys only merge two keys' rates.
    let mut h = FxHasher::default();
    s.service_name().hash(&mut h);
    s.name().hash(&mut h);
    s.kind_code().hash(&mut h);
    s.is_error().hash(&mut h);
    h.finish()
}

impl Adaptive {
    pub fn new(cfg: &AdaptiveConfig) -> Result<Adaptive, String> {
        if cfg.target_spans_per_second.is_nan() || cfg.target_spans_per_second <= 0.0 {
            return Err("target_spans_per_second must be > 0".into());
        }
        if cfg.target_per_key.is_some_and(|t| t.is_nan() || t <= 0.0) {
            return Err("target_per_key must be > 0".into());
        }
        if cfg.tick == 0 {
            return Err("tick must be > 0".into());
        }
        if !(0.0..=1.0).contains(&cfg.ewma_alpha) || cfg.ewma_alpha == 0.0 {
            return Err("ewma_alpha must be in (0, 1]".into());
        }
        if cfg.max_increase < 1.0 {
            return Err("max_increase must be >= 1".into());
        }
        if !(cfg.slow_quantile == 0.0 || (0.5..1.0).contains(&cfg.slow_quantile)) {
            return Err("slow_quantile must be 0 (off) or in [0.5, 1)".into());
        }
        if cfg.slow_boost < 1.0 || cfg.error_burst_boost < 1.0 {
            return Err("slow_boost and error_burst_boost must be >= 1".into());
        }
        if cfg.min_key_rate.is_nan() || cfg.min_key_rate < 0.0 {
            return Err("min_key_rate must be >= 0".into());
        }
        if cfg.max_keys == 0 {
            return Err("max_keys must be > 0".into());
        }
        let slots = (cfg.error_burst_window / cfg.tick).clamp(1, 3600) as usize;
        Ok(Adaptive {
            cfg: cfg.clone(),
            keys: FxHashMap::with_capacity_and_hasher(cfg.max_keys + 1, Default::default()),
            overflow: 0,
            next_tick: 0,
            last_tick: 0,
            error_ring: vec![0; slots],
            ring_pos: 0,
            tick_errors: 0,
            burst: false,
            tick_kept: 0.0,
            early_ticks: 0,
        })
    }

    pub fn burst_active(&self) -> bool {
        self.burst
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Rate measurements taken before their tick because the target was used up.
    pub fn early_ticks(&self) -> u64 {
        self.early_ticks
    }

    /// Keys not tracked separately because of `max_keys`.
    pub fn overflowed(&self) -> u64 {
        self.overflow
    }

    /// Applies the stage to a span arriving with `p`.
    pub fn apply<S: SpanView + ?Sized>(&mut self, s: &S, p: &mut Partial) {
        let now = s.end_unix_ns();
        if self.next_tick == 0 {
            self.next_tick = now + self.cfg.tick;
            self.last_tick = now;
        }
        while now >= self.next_tick {
            self.tick(self.next_tick, true);
            self.next_tick += self.cfg.tick;
            if now >= self.next_tick + 60 * self.cfg.tick {
                // A long gap: do not replay every idle tick.
                self.next_tick = now + self.cfg.tick;
            }
        }
        let allowance = self.cfg.target_spans_per_second * self.cfg.tick as f64 / 1e9;
        if self.tick_kept > EARLY_TICK_OVERSHOOT * allowance
            && now.saturating_sub(self.last_tick) >= self.cfg.tick / EARLY_TICK_DIVISOR
        {
            // The error window keeps its pace: only the regular ticks move it.
            self.tick(now, false);
            self.early_ticks += 1;
        }
        let is_error = s.is_error();
        let mut h = key_hash(s);
        if !self.keys.contains_key(&h) && self.keys.len() >= self.cfg.max_keys {
            self.overflow += 1;
            h = 0;
        }
        let k = self
            .keys
            .entry(h)
            .or_insert_with(|| KeyState::new(is_error));
        k.tick_in += p.probability;
        let d = s.duration_ns();
        if self.cfg.slow_quantile > 0.0 {
            k.lat[lat_bucket(d)] += 1;
            k.lat_total += 1;
        }
        if is_error {
            self.tick_errors += 1;
            p.priority = true;
            return;
        }
        if p.priority {
            return;
        }
        let mut f = k.factor;
        if self.burst {
            f *= self.cfg.error_burst_boost;
        }
        let slow =
            self.cfg.slow_threshold.is_some_and(|t| d >= t) || (k.slow_ns > 0 && d >= k.slow_ns);
        if slow {
            f *= self.cfg.slow_boost;
        }
        if f < 1.0 {
            p.probability *= f;
            p.decider = Decider::Adaptive;
        }
        self.tick_kept += p.probability;
    }

    /// Measures every key's rate since the last tick and sets its factor. `regular`: the
    /// tick of the schedule, which also moves the error burst window one slot.
    fn tick(&mut self, now: u64, regular: bool) {
        let secs = (now.saturating_sub(self.last_tick)).max(1) as f64 / 1e9;
        self.last_tick = now;
        self.tick_kept = 0.0;
        let alpha = self.cfg.ewma_alpha;
        if regular {
            self.error_ring[self.ring_pos] = self.tick_errors;
            self.ring_pos = (self.ring_pos + 1) % self.error_ring.len();
            self.tick_errors = 0;
            self.burst = self.error_ring.iter().sum::<u64>() > self.cfg.error_burst_errors;
        }

        let mut target = self.cfg.target_spans_per_second;
        let mut rates: Vec<(u64, f64)> = Vec::with_capacity(self.keys.len());
        self.keys.retain(|_, k| {
            let instant = k.tick_in / secs;
            // A step in load (beyond JUMP_RATIO either way) replaces the average at once;
            // smaller changes are noise and are smoothed.
            let ratio = instant / k.ewma;
            k.ewma = if k.ewma == 0.0 || !(1.0 / JUMP_RATIO..=JUMP_RATIO).contains(&ratio) {
                instant
            } else {
                alpha * instant + (1.0 - alpha) * k.ewma
            };
            k.last_rate = instant;
            k.idle_ticks = if k.tick_in == 0.0 {
                k.idle_ticks + 1
            } else {
                0
            };
            k.tick_in = 0.0;
            k.idle_ticks < 600
        });
        for (h, k) in self.keys.iter_mut() {
            // Slow cut-off from the decayed histogram.
            if k.lat_total >= 20 && self.cfg.slow_quantile > 0.0 {
                let want = (k.lat_total as f64 * self.cfg.slow_quantile).ceil() as u32;
                let mut acc = 0;
                for (b, c) in k.lat.iter().enumerate() {
                    acc += c;
                    if acc >= want {
                        k.slow_ns = bucket_lower(b + 1);
                        break;
                    }
                }
            }
            // Halve the histogram each tick: recent durations dominate.
            if k.lat_total > 1000 {
                let mut total = 0;
                for c in k.lat.iter_mut() {
                    *c /= 2;
                    total += *c;
                }
                k.lat_total = total;
            }
            let rate = k.ewma;
            if k.is_error {
                target -= rate;
            } else {
                rates.push((*h, rate));
            }
        }
        let floor = |rate: f64| rate.min(self.cfg.min_key_rate);
        let floors: f64 = rates.iter().map(|(_, r)| floor(*r)).sum();
        let mut budget = target.max(floors);
        rates.sort_by(|a, b| a.1.total_cmp(&b.1));
        let n = rates.len();
        for (i, (h, rate)) in rates.iter().enumerate() {
            let fair = budget / (n - i) as f64;
            let cap = self.cfg.target_per_key.unwrap_or(f64::INFINITY);
            let allowance = rate.min(fair).min(cap).max(floor(*rate));
            budget -= allowance;
            let want = if *rate <= 0.0 {
                1.0
            } else {
                (allowance / rate).min(1.0)
            };
            if let Some(k) = self.keys.get_mut(h) {
                k.factor = if want > k.factor {
                    (k.factor.max(1e-9) * self.cfg.max_increase).min(want)
                } else {
                    want
                };
            }
        }
    }

    pub fn report(&self) -> Vec<KeyReport> {
        self.keys
            .values()
            .map(|k| KeyReport {
                rate: k.ewma,
                factor: k.factor,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_monotonic() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            1 << 20,
            3 << 30,
            u64::MAX,
        ] {
            let b = lat_bucket(ns);
            assert!(b >= last);
            assert!(bucket_lower(b) <= ns, "{ns}");
            last = b;
        }
    }

    /// A host busy from the first moment (100k spans/s of one key, target 200/s): every key
    /// keeps everything until its rate is measured, so without an early measurement the
    /// whole first second (100k spans) would be kept.
    #[test]
    fn a_burst_is_measured_before_its_tick_ends() {
        let mut a = Adaptive::new(&AdaptiveConfig::with_target(200.0)).unwrap();
        let mut span = super::super::PlainSpan::new("read", 1, 0, 1_000);
        let t0 = 1_700_000_000_000_000_000u64;
        // Expected kept spans (sum of probabilities) per 100 ms over two seconds.
        let mut kept = [0.0f64; 20];
        for i in 0..200_000u64 {
            span.end = t0 + i * 10_000;
            let mut p = Partial {
                probability: 1.0,
                randomness: super::super::Randomness::from_trace_id([0; 16]),
                priority: false,
                decider: Decider::None,
            };
            a.apply(&span, &mut p);
            kept[(i / 10_000) as usize] += p.probability;
        }
        // The first 100 ms keep everything; then the measured rate sets the factor.
        assert!((kept[0] - 10_000.0).abs() < 1.0, "{kept:?}");
        let rest: f64 = kept[1..10].iter().sum();
        assert!(rest < 2.0 * 200.0 * 0.9, "kept {rest} in 0.1-1 s: {kept:?}");
        // Once measured, no early tick is needed: the target holds.
        assert_eq!(a.early_ticks(), 1, "{kept:?}");
        let second: f64 = kept[10..].iter().sum();
        assert!((150.0..=250.0).contains(&second), "second second: {second}");
    }
}
