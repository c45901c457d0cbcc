//! `kspan sampling simulate`: replays the sampling pipeline over synthetic traffic with a
//! fixed seed and reports what it kept.
use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;

use super::{
    adaptive::AdaptiveConfig,
    budget::{BudgetConfig, Period},
    rules::{RuleAction, RuleConfig, RulesConfig},
    AttrValue, Pipeline, SamplingConfig, SamplingError, SpanView,
};

/// 2026-11-01T00:00:00Z, the simulations' epoch.
pub const SIM_START_UNIX: u64 = 1_793_491_200;
const NS: u64 = 1_000_000_000;

/// SplitMix64: a small, fast, seedable generator (deterministic simulations).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        id
    }
}

/// A synthetic server span.
#[derive(Debug, Clone)]
pub struct SimSpan {
    pub route: &'static str,
    pub tier: &'static str,
    pub error: bool,
    pub duration: u64,
    pub end: u64,
    pub trace_id: [u8; 16],
    pub service: &'static str,
}

impl SpanView for SimSpan {
    fn name(&self) -> &str {
        self.route
    }
    fn kind_code(&self) -> i64 {
        2
    }
    fn status_code(&self) -> i64 {
        if self.error {
            2
        } else {
            0
        }
    }
    fn duration_ns(&self) -> u64 {
        self.duration
    }
    fn end_unix_ns(&self) -> u64 {
        self.end
    }
    fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        match key {
            "http.route" => Some(AttrValue::Str(self.route)),
            "user.tier" => Some(AttrValue::Str(self.tier)),
            "http.response.status_code" => Some(AttrValue::Int(if self.error { 500 } else { 200 })),
            _ => None,
        }
    }
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        (key == "service.name").then_some(AttrValue::Str(self.service))
    }
    fn service_name(&self) -> &str {
        self.service
    }
    fn size_estimate(&self) -> u64 {
        400
    }
}

/// The traffic mix: routes payment 10 %, order 15 %, health 30 %, search 45 %; tiers
/// premium 10 %, standard 30 %, free 60 %; durations uniform in 0.1-3 s.
pub fn mix_span(rng: &mut Rng, end: u64, error_rate: f64) -> SimSpan {
    let r = rng.f64();
    let route = if r < 0.10 {
        "/api/payment"
    } else if r < 0.25 {
        "/api/order"
    } else if r < 0.55 {
        "/api/health"
    } else {
        "/api/search"
    };
    let t = rng.f64();
    let tier = if t < 0.10 {
        "premium"
    } else if t < 0.40 {
        "standard"
    } else {
        "free"
    };
    SimSpan {
        route,
        tier,
        error: rng.f64() < error_rate,
        duration: 100_000_000 + (rng.f64() * 2.9e9) as u64,
        end,
        trace_id: rng.trace_id(),
        service: "shop",
    }
}

/// The pipeline `simulate` uses when the config has no `sampling:` section.
pub fn demo_config() -> SamplingConfig {
    SamplingConfig {
        precision: super::DEFAULT_PRECISION,
        rules: Some(RulesConfig {
            default_sampling_percentage: 100.0,
            rules: vec![
                RuleConfig {
                    name: "errors".into(),
                    description: "every error".into(),
                    action: RuleAction::Keep,
                    sampling_percentage: None,
                    source_of_randomness: "trace_id".into(),
                    conditions: vec!["status == STATUS_CODE_ERROR".into()],
                },
                RuleConfig {
                    name: "health".into(),
                    description: "health checks at 1 %".into(),
                    action: RuleAction::Sample,
                    sampling_percentage: Some(1.0),
                    source_of_randomness: "trace_id".into(),
                    conditions: vec!["attributes[\"http.route\"] == \"/api/health\"".into()],
                },
            ],
        }),
        adaptive: Some(AdaptiveConfig::with_target(100.0)),
        budget: None,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub seen: u64,
    pub kept: u64,
    pub errors_seen: u64,
    pub errors_kept: u64,
    /// Sum of the kept spans' adjusted counts: the backend's estimate of `seen`.
    pub estimated: f64,
    /// |estimated - seen| / seen.
    pub relative_error: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    classes: BTreeMap<String, ClassReport>,
}

impl Tally {
    fn add(&mut self, class: &str, s: &SimSpan, o: &super::Outcome) {
        let c = self
            .classes
            .entry(class.to_string())
            .or_insert_with(|| ClassReport {
                class: class.to_string(),
                ..Default::default()
            });
        c.seen += 1;
        c.errors_seen += u64::from(s.error);
        if o.keep {
            c.kept += 1;
            c.errors_kept += u64::from(s.error);
            c.estimated += o.threshold.adjusted_count();
        }
    }

    fn finish(self) -> Vec<ClassReport> {
        self.classes
            .into_values()
            .map(|mut c| {
                c.relative_error = if c.seen > 0 {
                    (c.estimated - c.seen as f64).abs() / c.seen as f64
                } else {
                    0.0
                };
                c
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetReport {
    pub budget: f64,
    pub used: f64,
    pub used_percent: f64,
    /// The projection the sampler reported halfway through the period.
    pub projected_at_half: f64,
    pub unsampled_spend: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub description: String,
    pub seen: u64,
    pub kept: u64,
    pub classes: Vec<ClassReport>,
    /// Kept spans per second, per phase (storm and step scenarios).
    pub phases: Vec<ClassReport>,
    /// Seconds after each load step until the expected kept rate (sum of keep probabilities)
    /// stays within 10 % of the target.
    pub settle_seconds: Vec<Option<u64>>,
    pub target_per_second: Option<f64>,
    pub budget: Option<BudgetReport>,
    pub ns_per_decision: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub scenarios: Vec<ScenarioReport>,
}

/// Runs traffic `rate(second)` spans/s with `errors(second)` for `seconds`, returning the
/// report and the expected kept count per second (the sum of the final keep probabilities:
/// the controller's output without the binomial noise of the draws).
fn run_traffic(
    pipeline: &mut Pipeline,
    rng: &mut Rng,
    seconds: u64,
    rate: impl Fn(u64) -> u64,
    errors: impl Fn(u64) -> f64,
    phase_len: u64,
) -> (Tally, Vec<ClassReport>, Vec<f64>) {
    let mut tally = Tally::default();
    let mut phases: Vec<ClassReport> = Vec::new();
    let mut per_second = Vec::with_capacity(seconds as usize);
    for sec in 0..seconds {
        let n = rate(sec);
        let err = errors(sec);
        let phase = (sec / phase_len) as usize;
        if phases.len() <= phase {
            phases.push(ClassReport {
                class: format!(
                    "phase {} ({}s-{}s)",
                    phase + 1,
                    phase as u64 * phase_len,
                    (phase as u64 + 1) * phase_len
                ),
                ..Default::default()
            });
        }
        let mut expected = 0.0;
        for i in 0..n {
            let end = (SIM_START_UNIX + sec) * NS + i * NS / n.max(1);
            let s = mix_span(rng, end, err);
            let o = pipeline.decide(&s);
            tally.add(s.route, &s, &o);
            expected += o.threshold.probability();
            let ph = &mut phases[phase];
            ph.seen += 1;
            ph.errors_seen += u64::from(s.error);
            if o.keep {
                ph.kept += 1;
                ph.errors_kept += u64::from(s.error);
                ph.estimated += o.threshold.adjusted_count();
            }
        }
        per_second.push(expected);
    }
    if std::env::var_os("KSPAN_SIM_DEBUG").is_some() {
        eprintln!("kept per second: {per_second:?}");
    }
    for ph in &mut phases {
        ph.relative_error = (ph.estimated - ph.seen as f64).abs() / ph.seen.max(1) as f64;
    }
    (tally, phases, per_second)
}

/// First second (relative to `from`) after which the expected kept rate stays within 10 %
/// of `target` up to `to`.
fn settle(per_second: &[f64], from: usize, to: usize, target: f64) -> Option<u64> {
    let ok = |k: f64| (k - target).abs() <= 0.1 * target;
    (from..to)
        .find(|&s| per_second[s..to].iter().all(|&k| ok(k)))
        .map(|s| (s - from) as u64)
}

pub fn scenario_names() -> &'static [&'static str] {
    &["mix", "error-storm", "load-step", "month-budget"]
}

/// Runs the named scenarios (all when empty) with `cfg` (the demo pipeline when `None`).
pub fn run(
    cfg: Option<&SamplingConfig>,
    scenarios: &[String],
    seed: u64,
) -> Result<Report, SamplingError> {
    let base = cfg.cloned().unwrap_or_else(demo_config);
    let pick = |n: &str| scenarios.is_empty() || scenarios.iter().any(|s| s == n);
    let mut out = Vec::new();
    let mut rng = Rng::new(seed);

    if pick("mix") {
        let mut p = Pipeline::new(&base)?;
        let (tally, _, _) = run_traffic(&mut p, &mut rng, 60, |_| 2000, |_| 0.05, 60);
        // Time decisions alone on pre-built spans.
        let mut p2 = Pipeline::new(&base)?;
        let spans: Vec<SimSpan> = (0..200_000u64)
            .map(|i| mix_span(&mut rng, (SIM_START_UNIX * NS) + i * 500_000, 0.05))
            .collect();
        let t0 = Instant::now();
        let mut kept = 0u64;
        for s in &spans {
            kept += u64::from(p2.decide(s).keep);
        }
        let ns = t0.elapsed().as_nanos() as f64 / spans.len() as f64;
        std::hint::black_box(kept);
        let classes = tally.finish();
        out.push(ScenarioReport {
            name: "mix",
            description: "2000 spans/s for 60 s: /api/payment 10 %, /api/order 15 %, /api/health 30 %, /api/search 45 %; tiers premium 10 %, standard 30 %, free 60 %; 5 % errors; durations 0.1-3 s".into(),
            seen: classes.iter().map(|c| c.seen).sum(),
            kept: classes.iter().map(|c| c.kept).sum(),
            classes,
            phases: Vec::new(),
            settle_seconds: Vec::new(),
            target_per_second: base.adaptive.as_ref().map(|a| a.target_spans_per_second),
            budget: None,
            ns_per_decision: Some(ns),
        });
    }
    if pick("error-storm") {
        let mut p = Pipeline::new(&base)?;
        let rates = [0.0, 0.2, 0.5, 0.05];
        let (tally, phases, _) = run_traffic(
            &mut p,
            &mut rng,
            240,
            |_| 1000,
            |s| rates[(s / 60) as usize],
            60,
        );
        let classes = tally.finish();
        out.push(ScenarioReport {
            name: "error-storm",
            description: "1000 spans/s, 60 s each at 0 %, 20 %, 50 %, then 5 % errors".into(),
            seen: classes.iter().map(|c| c.seen).sum(),
            kept: classes.iter().map(|c| c.kept).sum(),
            classes,
            phases,
            settle_seconds: Vec::new(),
            target_per_second: base.adaptive.as_ref().map(|a| a.target_spans_per_second),
            budget: None,
            ns_per_decision: None,
        });
    }
    if pick("load-step") {
        let mut cfg = base.clone();
        let adaptive = cfg
            .adaptive
            .get_or_insert_with(|| AdaptiveConfig::with_target(100.0))
            .clone();
        // The step measures the adaptive stage: rules that keep whole classes would add a
        // floor the target cannot move.
        cfg.rules = None;
        cfg.budget = None;
        let target = adaptive.target_spans_per_second;
        let mut p = Pipeline::new(&cfg)?;
        let low = (target * 10.0).round() as u64;
        let (tally, phases, per_second) = run_traffic(
            &mut p,
            &mut rng,
            180,
            |s| {
                if (60..120).contains(&s) {
                    low * 10
                } else {
                    low
                }
            },
            |_| 0.0,
            60,
        );
        let classes = tally.finish();
        out.push(ScenarioReport {
            name: "load-step",
            description: format!(
                "no errors; {low} spans/s for 60 s, then 10x ({}) for 60 s, then {low} again; adaptive target {target}/s",
                low * 10
            ),
            seen: classes.iter().map(|c| c.seen).sum(),
            kept: classes.iter().map(|c| c.kept).sum(),
            classes,
            phases,
            settle_seconds: vec![
                settle(&per_second, 0, 60, target),
                settle(&per_second, 60, 120, target),
                settle(&per_second, 120, 180, target),
            ],
            target_per_second: Some(target),
            budget: None,
            ns_per_decision: None,
        });
    }
    if pick("month-budget") {
        let budget = base.budget.clone().unwrap_or(BudgetConfig {
            period: Period::Month,
            money: None,
            cost_per_span: None,
            cost_per_gb: None,
            spans: Some(1_296_000.0),
            bytes: None,
            reserve: 0.1,
            update_interval: 60 * NS,
            start_unix: None,
            state_file: None,
        });
        let cfg = SamplingConfig {
            precision: base.precision,
            rules: None,
            adaptive: None,
            budget: Some(BudgetConfig {
                start_unix: Some(SIM_START_UNIX),
                ..budget.clone()
            }),
        };
        let mut p = Pipeline::new(&cfg)?;
        let period_secs: u64 = match budget.period {
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        };
        // Traffic that would spend twice the budget unsampled.
        let probe = mix_span(&mut rng, SIM_START_UNIX * NS, 0.0);
        let total = budget
            .money
            .or(budget.spans)
            .or(budget.bytes)
            .unwrap_or(1.0);
        let unit_cost = match (budget.cost_per_span, budget.cost_per_gb, budget.bytes) {
            (Some(c), _, _) => c,
            (_, Some(g), _) => g * probe.size_estimate() as f64 / 1e9,
            (_, _, Some(_)) => probe.size_estimate() as f64,
            _ => 1.0,
        };
        let spans_total = 2.0 * total / unit_cost;
        let gap_ns = (period_secs as f64 * 1e9 / spans_total).max(1.0);
        let n = spans_total as u64;
        let mut tally = Tally::default();
        let mut half = None;
        for i in 0..n {
            let end = SIM_START_UNIX * NS + (i as f64 * gap_ns) as u64;
            let s = mix_span(&mut rng, end, 0.05);
            let o = p.decide(&s);
            tally.add(s.route, &s, &o);
            if half.is_none() && end >= (SIM_START_UNIX + period_secs / 2) * NS {
                half = p.budget_status(end).map(|b| b.projected);
            }
        }
        let end_ns = (SIM_START_UNIX + period_secs) * NS - 1;
        let st = p.budget_status(end_ns);
        let classes = tally.finish();
        out.push(ScenarioReport {
            name: "month-budget",
            description: format!(
                "{n} spans evenly over the period ({} days), 5 % errors, twice what the budget allows",
                period_secs / 86_400
            ),
            seen: classes.iter().map(|c| c.seen).sum(),
            kept: classes.iter().map(|c| c.kept).sum(),
            classes,
            phases: Vec::new(),
            settle_seconds: Vec::new(),
            target_per_second: None,
            budget: st.map(|s| BudgetReport {
                budget: s.budget,
                used: s.used,
                used_percent: s.used_percent,
                projected_at_half: half.unwrap_or(0.0),
                unsampled_spend: 2.0 * total,
            }),
            ns_per_decision: None,
        });
    }
    Ok(Report {
        seed,
        scenarios: out,
    })
}

/// The report as text.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for sc in &r.scenarios {
        let _ = writeln!(s, "== {}: {}", sc.name, sc.description);
        let _ = writeln!(
            s,
            "   kept {} of {} ({:.2} %)",
            sc.kept,
            sc.seen,
            100.0 * sc.kept as f64 / sc.seen.max(1) as f64
        );
        if let Some(ns) = sc.ns_per_decision {
            let _ = writeln!(s, "   {ns:.0} ns per decision (whole pipeline)");
        }
        let table = |s: &mut String, title: &str, rows: &[ClassReport]| {
            let _ = writeln!(
                s,
                "   {title:<24} {:>9} {:>9} {:>8} {:>11} {:>11} {:>12} {:>9}",
                "seen", "kept", "kept %", "errors seen", "errors kept", "estimated", "est. err"
            );
            for c in rows {
                let _ = writeln!(
                    s,
                    "   {:<24} {:>9} {:>9} {:>7.2}% {:>11} {:>11} {:>12.0} {:>8.2}%",
                    c.class,
                    c.seen,
                    c.kept,
                    100.0 * c.kept as f64 / c.seen.max(1) as f64,
                    c.errors_seen,
                    c.errors_kept,
                    c.estimated,
                    100.0 * c.relative_error
                );
            }
        };
        table(&mut s, "class", &sc.classes);
        if !sc.phases.is_empty() {
            table(&mut s, "phase", &sc.phases);
        }
        if !sc.settle_seconds.is_empty() {
            let fmt: Vec<String> = sc
                .settle_seconds
                .iter()
                .map(|v| v.map_or("never".into(), |v| format!("{v} s")))
                .collect();
            let _ = writeln!(
                s,
                "   time to settle within 10 % of {}/s: start {}, after 10x up {}, after 10x down {}",
                sc.target_per_second.unwrap_or(0.0),
                fmt[0],
                fmt[1],
                fmt[2]
            );
        }
        if let Some(b) = &sc.budget {
            let _ = writeln!(
                s,
                "   budget {:.0}: used {:.0} ({:.2} %), projected at half period {:.0}, unsampled spend would be {:.0}",
                b.budget, b.used, b.used_percent, b.projected_at_half, b.unsampled_spend
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{threshold::Threshold, Randomness};

    /// Bound for a binomial count: mean +- 5 standard deviations (p ~ 6e-7 per side).
    fn binomial_ok(kept: u64, n: u64, p: f64) -> bool {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        (kept as f64 - mean).abs() <= 5.0 * sd
    }

    fn rules_only(yaml: &str) -> Pipeline {
        let cfg: SamplingConfig = serde_norway::from_str(yaml).unwrap();
        Pipeline::new(&cfg).unwrap()
    }

    #[test]
    fn kept_fraction_matches_rate_and_estimates_are_unbiased() {
        for pct in [1.0, 10.0, 25.0, 50.0, 90.0] {
            let mut p = rules_only(&format!("rules:\n  default_sampling_percentage: {pct}\n"));
            let mut rng = Rng::new(42 + pct as u64);
            let n = 200_000u64;
            let mut kept = 0;
            let mut est = 0.0;
            let mut th = Threshold::ALWAYS;
            for i in 0..n {
                let s = mix_span(&mut rng, SIM_START_UNIX * NS + i, 0.0);
                let o = p.decide(&s);
                if o.keep {
                    kept += 1;
                    est += o.threshold.adjusted_count();
                }
                th = o.threshold;
            }
            // The threshold's own probability (rounded to 4 hex digits) is the true rate.
            let prob = th.probability();
            assert!((prob - pct / 100.0).abs() < 1e-4, "{pct}: {prob}");
            assert!(binomial_ok(kept, n, prob), "{pct} %: kept {kept} of {n}");
            // Horvitz-Thompson: est = kept / p, sd = sqrt(n (1-p) / p).
            let sd = (n as f64 * (1.0 - prob) / prob).sqrt();
            assert!(
                (est - n as f64).abs() <= 5.0 * sd,
                "{pct} %: estimate {est} of {n}"
            );
        }
    }

    #[test]
    fn two_instances_agree_on_every_trace() {
        let cfg = demo_config();
        let mut a = Pipeline::new(&cfg).unwrap();
        let mut b = Pipeline::new(&cfg).unwrap();
        let mut rng = Rng::new(7);
        for i in 0..100_000u64 {
            let s = mix_span(&mut rng, SIM_START_UNIX * NS + i * 1_000_000, 0.05);
            let (x, y) = (a.decide(&s), b.decide(&s));
            assert_eq!(x, y);
            assert_eq!(
                x.keep,
                x.threshold.keeps(Randomness::from_trace_id(s.trace_id))
            );
        }
    }

    #[test]
    fn adaptive_follows_a_10x_step_within_10_seconds_and_keeps_errors() {
        let r = run(None, &["load-step".to_string()], 1).unwrap();
        let sc = &r.scenarios[0];
        let settle = &sc.settle_seconds;
        eprintln!("{}", render(&r));
        assert!(
            settle[1].is_some_and(|s| s <= 10),
            "after 10x up: {settle:?}"
        );
        assert!(
            settle[2].is_some_and(|s| s <= 10),
            "after 10x down: {settle:?}"
        );

        let r = run(None, &["error-storm".to_string()], 2).unwrap();
        for ph in &r.scenarios[0].phases {
            assert_eq!(ph.errors_kept, ph.errors_seen, "{ph:?}");
        }
        assert!(r.scenarios[0].phases[2].errors_seen > 20_000);
    }

    #[test]
    fn rare_keys_keep_everything() {
        let cfg = SamplingConfig {
            precision: 4,
            rules: None,
            adaptive: Some(AdaptiveConfig::with_target(100.0)),
            budget: None,
        };
        let mut p = Pipeline::new(&cfg).unwrap();
        let mut rng = Rng::new(3);
        let (mut rare_seen, mut rare_kept, mut busy_kept) = (0, 0, 0);
        for sec in 0..60u64 {
            for i in 0..1000u64 {
                let mut s = mix_span(&mut rng, (SIM_START_UNIX + sec) * NS + i * 1_000_000, 0.0);
                s.route = "/api/search";
                if i % 100 == 0 {
                    s.route = "/api/rare";
                }
                let o = p.decide(&s);
                if s.route == "/api/rare" {
                    rare_seen += 1;
                    rare_kept += u64::from(o.keep);
                } else if sec >= 10 {
                    busy_kept += u64::from(o.keep);
                }
            }
        }
        assert_eq!(
            rare_kept, rare_seen,
            "a key at 10/s under a 100/s target keeps 100 %"
        );
        // The busy key gets the rest of the target: 90/s over 50 s.
        assert!(
            binomial_ok(busy_kept, 990 * 50, 90.0 / 990.0),
            "busy kept {busy_kept}"
        );
    }

    #[test]
    fn month_budget_ends_within_2_percent_and_never_above() {
        let r = run(None, &["month-budget".to_string()], 5).unwrap();
        let b = r.scenarios[0].budget.clone().unwrap();
        assert!(b.used <= b.budget, "{b:?}");
        assert!(b.used >= 0.98 * b.budget, "{b:?}");
        // The projection halfway is already close to where it lands.
        assert!(
            (b.projected_at_half - b.used).abs() <= 0.05 * b.budget,
            "{b:?}"
        );
        // Errors (5 %) come out of the reserve: all kept until the budget is spent in the
        // period's last moments.
        let c = &r.scenarios[0].classes;
        let kept = c.iter().map(|c| c.errors_kept).sum::<u64>() as f64;
        let seen = c.iter().map(|c| c.errors_seen).sum::<u64>() as f64;
        assert!(kept >= 0.9999 * seen, "errors kept {kept} of {seen}");
    }
}
