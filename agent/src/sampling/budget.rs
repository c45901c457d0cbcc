//! The cost-aware sampler: a budget per period (day or month, UTC calendar), given as money
//! with a cost per span or per GB, or directly as spans or bytes. It paces what is left of
//! the budget over what is left of the period, instead of stopping dead when it runs out.
//!
//! On every tick: S = smoothed spend rate the incoming spans would cause if all were kept
//! with their incoming probability; pace = (budget - used - reserve still needed) / time
//! left; factor f = min(1, pace / S), applied proportionally (p_out = p_in * f). Errors and
//! always-keep rules are not reduced: they draw on a reserve (a share of the budget that
//! shrinks linearly to 0 at the end of the period, so it is never left unspent). Nothing is
//! kept once the budget is spent, whatever its priority: spend never exceeds the budget.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Decider, Partial, SpanView, Threshold};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub period: Period,
    /// Money per period, with `cost_per_span` or `cost_per_gb`.
    #[serde(default)]
    pub money: Option<f64>,
    #[serde(default)]
    pub cost_per_span: Option<f64>,
    #[serde(default)]
    pub cost_per_gb: Option<f64>,
    /// Or spans per period.
    #[serde(default)]
    pub spans: Option<f64>,
    /// Or bytes per period (estimated encoded size).
    #[serde(default)]
    pub bytes: Option<f64>,
    /// Share of the budget kept for errors and always-keep rules (0-1).
    #[serde(default = "default_reserve")]
    pub reserve: f64,
    /// How often the pace is recomputed (ns or a duration).
    #[serde(default = "default_update", with = "crate::duration::serde_ns")]
    pub update_interval: u64,
    /// Start of the first period (unix seconds); default: the calendar day or month (UTC)
    /// containing the first span.
    #[serde(default)]
    pub start_unix: Option<u64>,
    /// Where the period's spend is kept across restarts (saved every 10 s and at exit, read at
    /// start). Without it a restart forgets what was spent and the period can cost up to
    /// its budget again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

/// What `state_file` holds: the spend of one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetState {
    pub version: u32,
    /// "spans", "bytes" or "money": a spend in another unit is not carried over.
    pub unit: String,
    pub period_start_unix: u64,
    pub period_end_unix: u64,
    pub used: f64,
}

const STATE_VERSION: u32 = 1;

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file is there but cannot be read (permissions, a directory...).
    #[error("cannot read {0}")]
    Unreadable(String),
    /// It was read but holds no usable budget state.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a state file: `Ok(None)` when there is none yet.
pub fn load_state(path: &Path) -> Result<Option<BudgetState>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::Unreadable(format!("{}: {e}", path.display()))),
    };
    let st: BudgetState = serde_json::from_str(&text).map_err(|e| {
        StateError::Invalid(format!(
            "{} is not a kspan budget state: {e}",
            path.display()
        ))
    })?;
    if st.version != STATE_VERSION || !st.used.is_finite() || st.used < 0.0 {
        return Err(StateError::Invalid(format!(
            "{} holds an unusable state (version {}, used {})",
            path.display(),
            st.version,
            st.used
        )));
    }
    Ok(Some(st))
}

/// Writes a state file atomically: a temporary file next to it, synced, then renamed.
pub fn save_state(path: &Path, st: &BudgetState) -> Result<(), String> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(st).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", tmp.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn default_reserve() -> f64 {
    0.1
}
fn default_update() -> u64 {
    10_000_000_000
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Spans,
    Bytes,
    MoneyPerSpan(f64),
    MoneyPerByte(f64),
}

/// Where the budget stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    /// In the budget's unit (money, spans or bytes).
    pub budget: f64,
    pub used: f64,
    pub remaining: f64,
    pub used_percent: f64,
    /// used + current spend rate * time left.
    pub projected: f64,
    pub period_start_unix: u64,
    pub period_end_unix: u64,
    pub factor: f64,
}

pub struct Budget {
    unit: Unit,
    total: f64,
    reserve: f64,
    interval: u64,
    start_cfg: Option<u64>,
    period: Period,
    start_ns: u64,
    end_ns: u64,
    used: f64,
    next_update: u64,
    last_update: u64,
    /// Spend the incoming spans would cause at their incoming probability, this interval.
    window_in: f64,
    window_kept: f64,
    rate_in: f64,
    rate_kept: f64,
    factor: f64,
    state_file: Option<PathBuf>,
    /// Spend read from `state_file`, applied when the period it names starts.
    restored: Option<BudgetState>,
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31) and back (Howard Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_NS: u64 = 86_400_000_000_000;

/// The calendar period (UTC) containing `now_ns`.
fn period_bounds(period: Period, now_ns: u64) -> (u64, u64) {
    let day = (now_ns / DAY_NS) as i64;
    match period {
        Period::Day => (day as u64 * DAY_NS, (day as u64 + 1) * DAY_NS),
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            let start = days_from_civil(y, m, 1);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let end = days_from_civil(ny, nm, 1);
            (start as u64 * DAY_NS, end as u64 * DAY_NS)
        }
    }
}

impl Budget {
    pub fn new(c: &BudgetConfig) -> Result<Budget, String> {
        let (unit, total) = match (c.money, c.cost_per_span, c.cost_per_gb, c.spans, c.bytes) {
            (Some(m), Some(cs), None, None, None) => (Unit::MoneyPerSpan(cs), m),
            (Some(m), None, Some(cg), None, None) => (Unit::MoneyPerByte(cg / 1e9), m),
            (None, None, None, Some(s), None) => (Unit::Spans, s),
            (None, None, None, None, Some(b)) => (Unit::Bytes, b),
            _ => {
                return Err(
                    "give exactly one of: money with cost_per_span, money with cost_per_gb, spans, bytes"
                        .into(),
                )
            }
        };
        let cost_ok = match unit {
            Unit::MoneyPerSpan(v) | Unit::MoneyPerByte(v) => v > 0.0,
            _ => true,
        };
        if total.is_nan() || total <= 0.0 || !cost_ok {
            return Err("the budget and the cost must be > 0".into());
        }
        if !(0.0..1.0).contains(&c.reserve) {
            return Err(format!("reserve {} must be in [0, 1)", c.reserve));
        }
        if c.update_interval == 0 {
            return Err("update_interval must be > 0".into());
        }
        Ok(Budget {
            unit,
            total,
            reserve: c.reserve,
            interval: c.update_interval,
            start_cfg: c.start_unix,
            period: c.period,
            start_ns: 0,
            end_ns: 0,
            used: 0.0,
            next_update: 0,
            last_update: 0,
            window_in: 0.0,
            window_kept: 0.0,
            rate_in: 0.0,
            rate_kept: 0.0,
            factor: 1.0,
            state_file: c.state_file.clone(),
            restored: None,
        })
    }

    /// Reads `state_file` and checks that it can be written. A file that cannot be parsed
    /// is reported and replaced at the next save; a path that cannot be written is an error.
    /// Returns a warning to show, if any.
    pub fn open_state(&mut self) -> Result<Option<String>, String> {
        let Some(path) = self.state_file.clone() else {
            return Ok(None);
        };
        let warning = match load_state(&path) {
            Ok(st) => {
                self.restored = st;
                None
            }
            Err(e @ StateError::Invalid(_)) => Some(format!(
                "{e}: this period's spend starts at 0 and the file is replaced at the next save"
            )),
            Err(e @ StateError::Unreadable(_)) => return Err(format!("state_file: {e}")),
        };
        let tmp = tmp_path(&path);
        std::fs::File::create(&tmp)
            .and_then(|_| std::fs::remove_file(&tmp))
            .map_err(|e| {
                format!(
                    "state_file: cannot write {}: {e}; give a path in a writable directory \
                     (the DaemonSet mounts /var/lib/kspan)",
                    tmp.display()
                )
            })?;
        Ok(warning)
    }

    /// The spend to persist; None before the first span.
    pub fn state(&self) -> Option<BudgetState> {
        (self.end_ns != 0).then(|| BudgetState {
            version: STATE_VERSION,
            unit: self.unit_name().into(),
            period_start_unix: self.start_ns / 1_000_000_000,
            period_end_unix: self.end_ns / 1_000_000_000,
            used: self.used,
        })
    }

    /// Writes the state to `state_file`, if one is configured.
    pub fn save(&self) -> Result<(), String> {
        match (&self.state_file, self.state()) {
            (Some(path), Some(st)) => save_state(path, &st),
            _ => Ok(()),
        }
    }

    fn unit_name(&self) -> &'static str {
        match self.unit {
            Unit::Spans => "spans",
            Unit::Bytes => "bytes",
            Unit::MoneyPerSpan(_) | Unit::MoneyPerByte(_) => "money",
        }
    }

    fn cost<S: SpanView + ?Sized>(&self, s: &S) -> f64 {
        match self.unit {
            Unit::Spans => 1.0,
            Unit::Bytes => s.size_estimate() as f64,
            Unit::MoneyPerSpan(c) => c,
            Unit::MoneyPerByte(c) => c * s.size_estimate() as f64,
        }
    }

    fn start_period(&mut self, now: u64) {
        let (start, end) = match self.start_cfg.take() {
            Some(s) if s * 1_000_000_000 <= now => {
                let start = s * 1_000_000_000;
                let len = match self.period {
                    Period::Day => DAY_NS,
                    Period::Month => {
                        let (a, b) = period_bounds(Period::Month, start);
                        b - a
                    }
                };
                (start, start + len)
            }
            _ => period_bounds(self.period, now),
        };
        self.start_ns = start;
        self.end_ns = end;
        self.used = 0.0;
        self.factor = 1.0;
        self.rate_in = 0.0;
        self.rate_kept = 0.0;
        self.window_in = 0.0;
        self.window_kept = 0.0;
        self.last_update = now;
        self.next_update = now + self.interval;
        if let Some(st) = self.restored.take() {
            if st.unit == self.unit_name()
                && st.period_start_unix * 1_000_000_000 == start
                && st.period_end_unix * 1_000_000_000 == end
            {
                self.used = st.used;
            }
        }
    }

    fn reserve_left(&self, now: u64) -> f64 {
        let left = self.end_ns.saturating_sub(now) as f64 / (self.end_ns - self.start_ns) as f64;
        self.total * self.reserve * left
    }

    fn update(&mut self, now: u64) {
        let secs = (now.saturating_sub(self.last_update)).max(1) as f64 / 1e9;
        self.last_update = now;
        let inst_in = self.window_in / secs;
        let inst_kept = self.window_kept / secs;
        // Spend rate: follow rises at once, fall with an EWMA.
        self.rate_in = if self.rate_in == 0.0 {
            inst_in
        } else {
            inst_in.max(0.3 * inst_in + 0.7 * self.rate_in)
        };
        self.rate_kept = 0.3 * inst_kept + 0.7 * self.rate_kept;
        self.window_in = 0.0;
        self.window_kept = 0.0;
        let secs_left = self.end_ns.saturating_sub(now) as f64 / 1e9;
        let avail = (self.total - self.used - self.reserve_left(now)).max(0.0);
        self.factor = if secs_left <= 0.0 || self.rate_in <= 0.0 {
            1.0
        } else {
            (avail / secs_left / self.rate_in).clamp(0.0, 1.0)
        };
    }

    /// Applies the stage and returns the final threshold (and records the spend if kept).
    pub fn apply<S: SpanView + ?Sized>(
        &mut self,
        s: &S,
        p: &mut Partial,
        now: u64,
        precision: u32,
    ) -> Threshold {
        if now >= self.end_ns {
            self.start_period(now);
        }
        while now >= self.next_update {
            self.update(self.next_update);
            self.next_update += self.interval;
            if now >= self.next_update + 100 * self.interval {
                self.next_update = now + self.interval;
            }
        }
        let cost = self.cost(s);
        if self.used + cost > self.total {
            p.decider = Decider::Budget;
            return Threshold::NEVER;
        }
        if !p.priority && !s.is_error() {
            self.window_in += p.probability * cost;
            if self.factor < 1.0 {
                p.probability *= self.factor;
                p.decider = Decider::Budget;
            }
        }
        let t = Threshold::from_probability_clamped(p.probability, precision);
        if t.keeps(p.randomness) {
            self.used += cost;
            self.window_kept += cost;
        }
        t
    }

    pub fn status(&self, now: u64) -> BudgetStatus {
        let secs_left = self.end_ns.saturating_sub(now) as f64 / 1e9;
        let projected = (self.used + self.rate_kept * secs_left).min(self.total);
        BudgetStatus {
            budget: self.total,
            used: self.used,
            remaining: self.total - self.used,
            used_percent: 100.0 * self.used / self.total,
            projected,
            period_start_unix: self.start_ns / 1_000_000_000,
            period_end_unix: self.end_ns / 1_000_000_000,
            factor: self.factor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-23T16:00:00Z
        let now = 1_795_392_000u64 * 1_000_000_000 + 16 * 3600 * 1_000_000_000;
        let (s, e) = period_bounds(Period::Month, now);
        assert_eq!(s / 1_000_000_000, 1_793_491_200); // 2026-11-01
        assert_eq!(e / 1_000_000_000, 1_796_083_200); // 2026-12-01
        let (s, e) = period_bounds(Period::Day, now);
        assert_eq!((e - s) / 1_000_000_000, 86_400);
        assert_eq!(s / 1_000_000_000, 1_795_392_000);
        let (s, e) = period_bounds(Period::Month, 1_796_083_200u64 * 1_000_000_000 + 5);
        assert_eq!((e - s) / DAY_NS, 31); // December
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn config_errors() {
        let base = BudgetConfig {
            period: Period::Month,
            money: Some(100.0),
            cost_per_span: None,
            cost_per_gb: None,
            spans: None,
            bytes: None,
            reserve: 0.1,
            update_interval: 1,
            start_unix: None,
            state_file: None,
        };
        assert!(Budget::new(&base).is_err(), "money needs a cost");
        let ok = BudgetConfig {
            cost_per_span: Some(0.001),
            ..base.clone()
        };
        assert!(Budget::new(&ok).is_ok());
        let both = BudgetConfig {
            spans: Some(5.0),
            ..ok.clone()
        };
        assert!(Budget::new(&both).is_err());
        let bad_reserve = BudgetConfig { reserve: 1.5, ..ok };
        assert!(Budget::new(&bad_reserve).is_err());
    }

    fn spans_budget(total: f64, state_file: Option<PathBuf>) -> Budget {
        Budget::new(&BudgetConfig {
            period: Period::Day,
            money: None,
            cost_per_span: None,
            cost_per_gb: None,
            spans: Some(total),
            bytes: None,
            reserve: 0.0,
            update_interval: 3_600_000_000_000,
            start_unix: None,
            state_file,
        })
        .unwrap()
    }

    /// Offers `n` spans at `now` with probability 1 (randomness max: kept unless the budget
    /// says never); returns how many were kept.
    fn offer(b: &mut Budget, n: usize, now: u64) -> usize {
        use crate::sampling::{tests::TestSpan, Randomness};
        let s = TestSpan::new("s", 1, 0, 1);
        (0..n)
            .filter(|_| {
                let mut p = Partial {
                    probability: 1.0,
                    randomness: Randomness::from_trace_id([0xff; 16]),
                    priority: false,
                    decider: Decider::None,
                };
                b.apply(&s, &mut p, now, 4).keeps(p.randomness)
            })
            .count()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kspan-budget-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const NOW: u64 = 1_795_392_000 * 1_000_000_000 + 3_600_000_000_000;

    #[test]
    fn spend_survives_a_restart_within_the_period() {
        let dir = temp_dir("restart");
        let file = dir.join("budget.json");
        let mut first = spans_budget(100.0, Some(file.clone()));
        assert_eq!(first.open_state().unwrap(), None);
        assert_eq!(offer(&mut first, 60, NOW), 60);
        first.save().unwrap();
        assert!(!dir.join("budget.json.tmp").exists());
        let st = load_state(&file).unwrap().unwrap();
        assert_eq!(st.used, 60.0);
        assert_eq!(st.unit, "spans");
        assert_eq!(st.period_start_unix, 1_795_392_000);
        assert_eq!(st.period_end_unix, 1_795_392_000 + 86_400);

        // A restart an hour later, same day: 40 left, not 100.
        let mut second = spans_budget(100.0, Some(file.clone()));
        assert_eq!(second.open_state().unwrap(), None);
        assert_eq!(offer(&mut second, 100, NOW + 3_600_000_000_000), 40);
        second.save().unwrap();
        assert_eq!(load_state(&file).unwrap().unwrap().used, 100.0);

        // The next day is a new period: the saved spend does not apply.
        let mut third = spans_budget(100.0, Some(file.clone()));
        third.open_state().unwrap();
        assert_eq!(offer(&mut third, 100, NOW + DAY_NS), 100);

        // Another unit: not carried over either.
        let mut bytes = Budget::new(&BudgetConfig {
            spans: None,
            bytes: Some(1e12),
            ..BudgetConfig {
                period: Period::Day,
                money: None,
                cost_per_span: None,
                cost_per_gb: None,
                spans: None,
                bytes: None,
                reserve: 0.0,
                update_interval: 3_600_000_000_000,
                start_unix: None,
                state_file: Some(file.clone()),
            }
        })
        .unwrap();
        save_state(&file, &st).unwrap();
        bytes.open_state().unwrap();
        offer(&mut bytes, 1, NOW);
        assert!(
            bytes.state().unwrap().used < 10_000.0,
            "one span's bytes, not 60 + that"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_is_reported_and_replaced() {
        let dir = temp_dir("corrupt");
        let file = dir.join("budget.json");
        std::fs::write(&file, "{\"used\": 5").unwrap();
        let mut b = spans_budget(100.0, Some(file.clone()));
        let warning = b.open_state().unwrap().expect("a warning");
        assert!(warning.contains("not a kspan budget state"), "{warning}");
        assert_eq!(offer(&mut b, 10, NOW), 10);
        b.save().unwrap();
        assert_eq!(load_state(&file).unwrap().unwrap().used, 10.0);
        std::fs::write(
            &file,
            r#"{"version":1,"unit":"spans","period_start_unix":0,"period_end_unix":1,"used":-3}"#,
        )
        .unwrap();
        assert!(load_state(&file)
            .unwrap_err()
            .to_string()
            .contains("unusable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_state_path_is_an_error() {
        let mut b = spans_budget(100.0, Some("/proc/kspan-no/budget.json".into()));
        let e = b.open_state().unwrap_err();
        assert!(
            e.contains("cannot write") && e.contains("writable directory"),
            "{e}"
        );
        let mut none = spans_budget(100.0, None);
        assert_eq!(none.open_state().unwrap(), None);
        assert!(none.save().is_ok());
    }
}
