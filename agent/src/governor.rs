//! The overhead governor: keeps the agent's own CPU near a budget by raising the in-kernel
//! minimum duration for syscall events when the agent uses too much, and lowering it again
//! when it has room. Histograms keep counting every syscall either way.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `governor:` config section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorConfig {
    /// CPU the agent may use, in percent of one core (e.g. 5).
    pub cpu_budget_percent: f64,
    /// The highest minimum duration the governor may set.
    #[serde(default = "default_max", with = "crate::duration::serde_ns")]
    pub max_min_duration: u64,
}

fn default_max() -> u64 {
    1_000_000_000
}

/// The smallest step above the configured minimum.
const FIRST_STEP: Duration = Duration::from_micros(10);
/// Ticks of low use before the minimum is first lowered again; doubled (up to
/// `MAX_CALM_TICKS`) each time a lowering had to be undone within that many ticks, so a
/// steady flood is not let back in over and over.
const CALM_TICKS: u32 = 10;
const MAX_CALM_TICKS: u32 = 600;

/// What the governor decided at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Keep,
    Set(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("governor.cpu_budget_percent must be > 0, not {0}")]
    Budget(f64),
}

/// Pure decision logic (the caller measures CPU and applies the result).
#[derive(Debug)]
pub struct Governor {
    budget: f64,
    base: Duration,
    max: Duration,
    current: Duration,
    calm: u32,
    calm_needed: u32,
    /// Ticks since the last lowering (None: none yet).
    since_lower: Option<u32>,
}

impl Governor {
    pub fn new(cfg: &GovernorConfig, base: Duration) -> Result<Governor, GovernorError> {
        if cfg.cpu_budget_percent.is_nan() || cfg.cpu_budget_percent <= 0.0 {
            return Err(GovernorError::Budget(cfg.cpu_budget_percent));
        }
        Ok(Governor {
            budget: cfg.cpu_budget_percent,
            base,
            max: Duration::from_nanos(cfg.max_min_duration).max(base),
            current: base,
            calm: 0,
            calm_needed: CALM_TICKS,
            since_lower: None,
        })
    }

    /// The CPU budget, percent of one core.
    pub fn budget_percent(&self) -> f64 {
        self.budget
    }

    pub fn current(&self) -> Duration {
        self.current
    }

    /// Feeds the CPU percent used over the last tick.
    pub fn tick(&mut self, cpu_percent: f64) -> Action {
        self.since_lower = self.since_lower.map(|t| t.saturating_add(1));
        if cpu_percent > self.budget {
            self.calm = 0;
            if self.since_lower.is_some_and(|t| t <= self.calm_needed) {
                self.calm_needed = (self.calm_needed * 2).min(MAX_CALM_TICKS);
                self.since_lower = None;
            }
            let next = (self.current * 4).max(self.base + FIRST_STEP).min(self.max);
            if next != self.current {
                self.current = next;
                return Action::Set(next);
            }
        } else if cpu_percent < self.budget / 2.0 && self.current > self.base {
            self.calm += 1;
            if self.calm >= self.calm_needed {
                self.calm = 0;
                self.since_lower = Some(0);
                let next = (self.current / 2).max(self.base);
                let next = if next <= self.base + FIRST_STEP {
                    self.base
                } else {
                    next
                };
                self.current = next;
                return Action::Set(next);
            }
        } else {
            self.calm = 0;
        }
        Action::Keep
    }
}

/// This process's CPU time (user + system).
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_fast_and_lowers_slowly() {
        let cfg = GovernorConfig {
            cpu_budget_percent: 5.0,
            max_min_duration: 1_000_000,
        };
        let mut g = Governor::new(&cfg, Duration::ZERO).unwrap();
        assert_eq!(g.tick(3.0), Action::Keep);
        assert_eq!(g.tick(20.0), Action::Set(Duration::from_micros(10)));
        assert_eq!(g.tick(20.0), Action::Set(Duration::from_micros(40)));
        for _ in 0..5 {
            g.tick(50.0);
        }
        assert_eq!(
            g.current(),
            Duration::from_millis(1),
            "capped at max_min_duration"
        );
        assert_eq!(g.tick(50.0), Action::Keep);
        // Under half the budget for 10 ticks: halve.
        for _ in 0..9 {
            assert_eq!(g.tick(1.0), Action::Keep);
        }
        assert_eq!(g.tick(1.0), Action::Set(Duration::from_micros(500)));
        // Between half and the whole budget: hold.
        for _ in 0..10 {
            assert_eq!(g.tick(4.0), Action::Keep);
        }
        // A lowering undone at once doubles the calm needed before the next one.
        for _ in 0..9 {
            g.tick(1.0);
        }
        assert_eq!(g.tick(1.0), Action::Set(Duration::from_micros(250)));
        assert_eq!(g.tick(30.0), Action::Set(Duration::from_millis(1)));
        for _ in 0..19 {
            assert_eq!(g.tick(1.0), Action::Keep);
        }
        assert_eq!(g.tick(1.0), Action::Set(Duration::from_micros(500)));
        assert!(Governor::new(
            &GovernorConfig {
                cpu_budget_percent: 0.0,
                max_min_duration: 1
            },
            Duration::ZERO
        )
        .is_err());
    }
}
