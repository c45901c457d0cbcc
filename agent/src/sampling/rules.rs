//! The rule sampler: ordered rules, first match wins, else the default percentage.
//! Configured in the shape of the collector's probabilistic sampler rules.
use serde::{Deserialize, Serialize};

use super::{expr::Expr, Decider, Partial, Randomness, SpanView};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// For spans no rule matches, 0-100.
    #[serde(default = "hundred")]
    pub default_sampling_percentage: f64,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Keep with `sampling_percentage`.
    #[default]
    Sample,
    /// Keep always (100 %, protected from later stages' reductions).
    Keep,
    /// Drop always.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub action: RuleAction,
    /// 0-100; required for `action: sample`.
    #[serde(default)]
    pub sampling_percentage: Option<f64>,
    /// `trace_id` (default: the whole trace is kept or dropped) or `attributes["key"]`
    /// (a hash of that attribute's value, e.g. to sample by user).
    #[serde(default = "trace_id_source")]
    pub source_of_randomness: String,
    /// All must hold (conditions of one rule are ANDed; use `or` inside one for OR).
    pub conditions: Vec<String>,
}

fn trace_id_source() -> String {
    "trace_id".into()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("default_sampling_percentage {0} is outside 0-100")]
    DefaultPercentage(f64),
    #[error("rule {rule:?} (#{index}): sampling_percentage {value} is outside 0-100")]
    Percentage {
        rule: String,
        index: usize,
        value: f64,
    },
    #[error("rule {rule:?} (#{index}): action sample needs a sampling_percentage")]
    MissingPercentage { rule: String, index: usize },
    #[error("rule {rule:?} (#{index}), condition {condition}: {error}")]
    Condition {
        rule: String,
        index: usize,
        condition: usize,
        error: super::expr::ParseError,
    },
    #[error("rule {rule:?} (#{index}): source_of_randomness {value:?} is not trace_id (trace.id, traceID) or attributes[\"key\"]")]
    Randomness {
        rule: String,
        index: usize,
        value: String,
    },
    #[error("rule #{index} has no name")]
    NoName { index: usize },
    #[error("rule {rule:?} (#{index}) has no conditions (use default_sampling_percentage for a catch-all)")]
    NoConditions { rule: String, index: usize },
}

enum Source {
    TraceId,
    Attribute(String),
}

struct Rule {
    name: String,
    action: RuleAction,
    probability: f64,
    source: Source,
    conditions: Vec<Expr>,
}

pub struct RuleSampler {
    rules: Vec<Rule>,
    default_probability: f64,
}

fn pct_ok(v: f64) -> bool {
    (0.0..=100.0).contains(&v)
}

/// 56 random-looking bits from an attribute value (FNV-1a, then a 64-bit mix).
fn hash56(bytes: &[u8]) -> Randomness {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    Randomness::from_raw(h)
}

impl RuleSampler {
    pub fn compile(cfg: &RulesConfig) -> Result<RuleSampler, RuleError> {
        if !pct_ok(cfg.default_sampling_percentage) {
            return Err(RuleError::DefaultPercentage(
                cfg.default_sampling_percentage,
            ));
        }
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (index, r) in cfg.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(RuleError::NoName { index });
            }
            if r.conditions.is_empty() {
                return Err(RuleError::NoConditions {
                    rule: r.name.clone(),
                    index,
                });
            }
            let probability = match (r.action, r.sampling_percentage) {
                (RuleAction::Sample, None) => {
                    return Err(RuleError::MissingPercentage {
                        rule: r.name.clone(),
                        index,
                    })
                }
                (_, Some(v)) if !pct_ok(v) => {
                    return Err(RuleError::Percentage {
                        rule: r.name.clone(),
                        index,
                        value: v,
                    })
                }
                (RuleAction::Sample, Some(v)) => v / 100.0,
                (RuleAction::Keep, _) => 1.0,
                (RuleAction::Drop, _) => 0.0,
            };
            let source = match r.source_of_randomness.trim() {
                // The spellings of the Collector's probabilistic sampler examples too.
                "trace_id" | "trace.id" | "traceID" | "trace_id.string" | "" => Source::TraceId,
                s => match s
                    .strip_prefix("attributes[\"")
                    .and_then(|k| k.strip_suffix("\"]"))
                {
                    Some(k) if !k.is_empty() => Source::Attribute(k.to_string()),
                    _ => {
                        return Err(RuleError::Randomness {
                            rule: r.name.clone(),
                            index,
                            value: s.to_string(),
                        })
                    }
                },
            };
            let mut conditions = Vec::with_capacity(r.conditions.len());
            for (ci, c) in r.conditions.iter().enumerate() {
                conditions.push(Expr::compile(c).map_err(|error| RuleError::Condition {
                    rule: r.name.clone(),
                    index,
                    condition: ci,
                    error,
                })?);
            }
            rules.push(Rule {
                name: r.name.clone(),
                action: r.action,
                probability,
                source,
                conditions,
            });
        }
        Ok(RuleSampler {
            rules,
            default_probability: cfg.default_sampling_percentage / 100.0,
        })
    }

    pub fn rule_name(&self, i: usize) -> Option<&str> {
        self.rules.get(i).map(|r| r.name.as_str())
    }

    /// Index of the first rule whose conditions all hold.
    pub fn matching<S: SpanView + ?Sized>(&self, s: &S) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.conditions.iter().all(|c| c.eval(s)))
    }

    pub fn decide<S: SpanView + ?Sized>(&self, s: &S) -> Partial {
        let trace_r = Randomness::from_trace_id(s.trace_id());
        match self.matching(s) {
            Some(i) => {
                let r = &self.rules[i];
                let randomness = match &r.source {
                    Source::TraceId => trace_r,
                    Source::Attribute(k) => match s.attribute(k) {
                        Some(super::AttrValue::Str(v)) => hash56(v.as_bytes()),
                        Some(super::AttrValue::Int(v)) => hash56(&v.to_le_bytes()),
                        _ => trace_r,
                    },
                };
                Partial {
                    probability: r.probability,
                    randomness,
                    priority: r.action == RuleAction::Keep,
                    decider: Decider::Rule(i),
                }
            }
            None => Partial {
                probability: self.default_probability,
                randomness: trace_r,
                priority: false,
                decider: Decider::Default,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::tests::{AttrValueOwned, TestSpan};

    fn cfg(yaml: &str) -> RulesConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn first_match_wins() {
        let s = RuleSampler::compile(&cfg(r#"
default_sampling_percentage: 10
rules:
  - name: errors
    action: keep
    conditions: ["status == STATUS_CODE_ERROR"]
  - name: health
    action: drop
    conditions: ['attributes["http.route"] == "/api/health"']
  - name: payment
    sampling_percentage: 50
    conditions: ['attributes["http.route"] == "/api/payment"', "duration > 100ms"]
"#))
        .unwrap();
        let base = TestSpan::new("GET", 2, 0, 200_000_000);
        let route = |r: &str| {
            base.clone()
                .attr("http.route", AttrValueOwned::Str(r.into()))
        };
        let mut err = route("/api/health");
        err.status = 2;
        let p = s.decide(&err);
        assert_eq!(
            (p.probability, p.priority, p.decider),
            (1.0, true, Decider::Rule(0))
        );
        assert_eq!(s.decide(&route("/api/health")).probability, 0.0);
        let p = s.decide(&route("/api/payment"));
        assert_eq!((p.probability, p.decider), (0.5, Decider::Rule(2)));
        let mut fast = route("/api/payment");
        fast.duration = 1000;
        let p = s.decide(&fast);
        assert_eq!((p.probability, p.decider), (0.1, Decider::Default));
    }

    /// The rule shapes users copy from the probabilistic-sampler examples, verbatim: each
    /// compiles, and each matches the span it was written for and no other.
    #[test]
    fn seed_example_rules_work_verbatim() {
        let s = RuleSampler::compile(&cfg(r#"
default_sampling_percentage: 5
rules:
  - name: keep-errors
    sampling_percentage: 100
    source_of_randomness: "trace.id"
    conditions: ["status.code == STATUS_CODE_ERROR"]
  - name: critical-services
    sampling_percentage: 100
    source_of_randomness: traceID
    conditions: ['IsMatch(resource.attributes["service.name"], "^(payment|auth)-service$")']
  - name: dev-environment
    sampling_percentage: 100
    conditions: ['resource.attributes["deployment.environment"] != "production"']
  - name: server-errors
    sampling_percentage: 100
    conditions: ['attributes["http.response.status_code"] >= 500 and attributes["http.response.status_code"] <= 599']
  - name: client-errors
    sampling_percentage: 50
    conditions: ['attributes["http.response.status_code"] >= 400', 'attributes["http.response.status_code"] < 500']
  - name: checkout-endpoints
    sampling_percentage: 25
    conditions: ['IsMatch(attributes["http.route"], "^/api/v[0-9]+/(cart|checkout)")']
  - name: slow-requests
    sampling_percentage: 100
    conditions: ["duration > 2s"]
  - name: tier-standard
    sampling_percentage: 10
    source_of_randomness: trace_id
    conditions: ['resource.attributes["service.name"] == "search" and kind == SPAN_KIND_SERVER']
  - name: valid-trace
    sampling_percentage: 1
    conditions: ['trace_id != nil and trace_id.string != "00000000000000000000000000000000" and not (span_id == nil)']
"#))
        .unwrap();
        let prod = |svc: &str| {
            TestSpan::new("GET", 2, 0, 1_000_000)
                .resource("service.name", svc)
                .resource("deployment.environment", "production")
        };
        let int = |v: i64| AttrValueOwned::Int(v);
        let mut error = prod("web");
        error.status = 2;
        let mut slow = prod("web");
        slow.duration = 3_000_000_000;
        let mut traced = prod("web");
        traced.trace_id = [0xab; 16];
        let mut search = prod("search");
        search.trace_id = [0xab; 16];
        let cases: Vec<(&str, TestSpan, Option<usize>)> = vec![
            ("error", error, Some(0)),
            ("critical", prod("payment-service"), Some(1)),
            ("not critical", prod("payment-service-v2"), None),
            (
                "dev",
                prod("web").resource("deployment.environment", "staging"),
                Some(2),
            ),
            (
                "5xx",
                prod("web").attr("http.response.status_code", int(503)),
                Some(3),
            ),
            (
                "4xx",
                prod("web").attr("http.response.status_code", int(404)),
                Some(4),
            ),
            (
                "2xx",
                prod("web").attr("http.response.status_code", int(200)),
                None,
            ),
            (
                "checkout",
                prod("web").attr("http.route", AttrValueOwned::Str("/api/v2/checkout".into())),
                Some(5),
            ),
            ("slow", slow, Some(6)),
            ("search tier", search, Some(7)),
            ("any real trace", traced, Some(8)),
            // An all-zero trace id is not a valid trace: no rule for it.
            ("zero trace id", prod("web"), None),
        ];
        for (what, span, want) in cases {
            assert_eq!(s.matching(&span), want, "{what}");
        }
        assert_eq!(s.decide(&prod("web")).probability, 0.05);
        let ids = crate::sampling::expr::Expr::compile(
            r#"span_id.string == "0000000000000000" and trace_id.string == "abababababababababababababababab""#,
        )
        .unwrap();
        let mut t = prod("web");
        assert!(!ids.eval(&t));
        t.trace_id = [0xab; 16];
        assert!(ids.eval(&t));
        // Unknown names are still refused with their column.
        let e = RuleSampler::compile(&cfg(
            "rules:\n  - name: x\n    sampling_percentage: 5\n    conditions: ['trace.flags == 1']\n",
        ))
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("column 1: unknown name \"trace.flags\""),
            "{e}"
        );
        let e = RuleSampler::compile(&cfg(
            "rules:\n  - name: x\n    sampling_percentage: 5\n    source_of_randomness: span.id\n    conditions: ['true']\n",
        ))
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("source_of_randomness \"span.id\""),
            "{e}"
        );
    }

    #[test]
    fn attribute_randomness_is_per_value() {
        let s = RuleSampler::compile(&cfg(r#"
rules:
  - name: by-user
    sampling_percentage: 50
    source_of_randomness: attributes["user.id"]
    conditions: ["true"]
"#))
        .unwrap();
        let mut a = TestSpan::new("x", 1, 0, 0).attr("user.id", AttrValueOwned::Str("u1".into()));
        let mut b = a.clone();
        a.trace_id = [1; 16];
        b.trace_id = [2; 16];
        assert_eq!(s.decide(&a).randomness, s.decide(&b).randomness);
    }

    #[test]
    fn bad_rules_name_the_rule_and_position() {
        let e = RuleSampler::compile(&cfg(
            "rules:\n  - name: a\n    sampling_percentage: 5\n    conditions: ['name == \"x\"', 'duration >> 5']\n",
        ))
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "rule \"a\" (#0), condition 1: at column 11: expected a value or a path, found \">\""
        );
        let e = RuleSampler::compile(&cfg(
            "rules:\n  - name: b\n    sampling_percentage: 150\n    conditions: ['true']\n",
        ))
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("rule \"b\" (#0): sampling_percentage 150"),
            "{e}"
        );
        assert!(RuleSampler::compile(&cfg("default_sampling_percentage: -1\n")).is_err());
        let e = RuleSampler::compile(&cfg("rules:\n  - name: c\n    conditions: ['true']\n"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("needs a sampling_percentage"), "{e}");
        assert!(
            serde_norway::from_str::<RulesConfig>("rules:\n  - name: d\n    conditons: []\n")
                .is_err()
        );
    }
}
