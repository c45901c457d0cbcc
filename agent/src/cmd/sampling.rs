//! `kspan sampling simulate` and `kspan sampling explain`.
use std::{collections::HashMap, path::PathBuf};

use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::{
    config::{Config, ConfigError},
    sampling::{
        simulate, AttrValueOwned, Decider, Pipeline, PlainSpan, Randomness, SamplingConfig,
        Threshold,
    },
};

#[derive(Debug, Subcommand, Clone)]
pub enum SamplingCommand {
    /// Replay the configured sampling pipeline over synthetic traffic and report what it keeps.
    Simulate(SimulateArgs),
    /// Say which rule a span matches and the probability it gets.
    Explain(ExplainArgs),
}

#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Agent config whose `sampling:` section is simulated (default: a demo pipeline: errors
    /// kept, /api/health at 1 %, adaptive target 100/s).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Scenarios to run (mix, error-storm, load-step, month-budget); default: all.
    #[arg(long = "scenario", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Random seed (same seed, same report).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ExplainArgs {
    /// Agent config with a `sampling:` section.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// The span, as JSON: {"name": "...", "kind": "server", "status": "error",
    /// "duration": "250ms", "attributes": {...}, "resource": {...}, "trace_id": "32 hex"}.
    #[arg(long)]
    pub span: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SamplingCmdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Sampling(#[from] crate::sampling::SamplingError),
    #[error("unknown scenario {0:?} (mix, error-storm, load-step, month-budget)")]
    Scenario(String),
    #[error("--span: {0}")]
    Span(String),
    #[error("{0} has no sampling: section: every span would be kept")]
    NoSampling(String),
}

fn load(path: &std::path::Path) -> Result<Option<SamplingConfig>, SamplingCmdError> {
    let c = Config::load(path)?;
    c.build()?;
    Ok(c.sampling)
}

pub fn simulate(a: &SimulateArgs) -> Result<String, SamplingCmdError> {
    for s in &a.scenarios {
        if !simulate::scenario_names().contains(&s.as_str()) {
            return Err(SamplingCmdError::Scenario(s.clone()));
        }
    }
    let cfg = match &a.config {
        Some(p) => load(p)?,
        None => None,
    };
    let report = simulate::run(cfg.as_ref(), &a.scenarios, a.seed)?;
    Ok(if a.json {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    } else {
        simulate::render(&report)
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanJson {
    name: String,
    #[serde(default)]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    duration: Option<serde_json::Value>,
    #[serde(default)]
    attributes: HashMap<String, serde_json::Value>,
    #[serde(default)]
    resource: HashMap<String, serde_json::Value>,
    #[serde(default)]
    trace_id: Option<String>,
}

/// A JSON attribute value as a sampler sees it.
fn json_attr(v: &serde_json::Value) -> Option<AttrValueOwned> {
    match v {
        serde_json::Value::String(s) => Some(AttrValueOwned::Str(s.clone())),
        serde_json::Value::Bool(b) => Some(AttrValueOwned::Bool(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(AttrValueOwned::Int)
            .or_else(|| n.as_f64().map(AttrValueOwned::Float)),
        _ => None,
    }
}

fn parse_span(text: &str) -> Result<PlainSpan, SamplingCmdError> {
    let j: SpanJson =
        serde_json::from_str(text).map_err(|e| SamplingCmdError::Span(e.to_string()))?;
    let code = |v: &Option<serde_json::Value>,
                names: &[(&str, i64)],
                what: &str|
     -> Result<i64, SamplingCmdError> {
        match v {
            None => Ok(names[0].1),
            Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| {
                SamplingCmdError::Span(format!("{what} must be a name or a number"))
            }),
            Some(serde_json::Value::String(s)) => names
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(s))
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    SamplingCmdError::Span(format!(
                        "{what} {s:?} is not one of {}",
                        names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ))
                }),
            Some(_) => Err(SamplingCmdError::Span(format!(
                "{what} must be a name or a number"
            ))),
        }
    };
    let kind = code(
        &j.kind,
        &[
            ("internal", 1),
            ("server", 2),
            ("client", 3),
            ("producer", 4),
            ("consumer", 5),
        ],
        "kind",
    )?;
    let status = code(
        &j.status,
        &[("unset", 0), ("ok", 1), ("error", 2)],
        "status",
    )?;
    let duration = match &j.duration {
        None => 0,
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => super::parse_duration(s)
            .map_err(|e| SamplingCmdError::Span(format!("duration: {e}")))?
            .as_nanos() as u64,
        Some(_) => {
            return Err(SamplingCmdError::Span(
                "duration must be ns or like \"250ms\"".into(),
            ))
        }
    };
    let mut trace_id = [0u8; 16];
    if let Some(t) = &j.trace_id {
        if t.len() != 32 {
            return Err(SamplingCmdError::Span(
                "trace_id must be 32 hex digits".into(),
            ));
        }
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                .map_err(|_| SamplingCmdError::Span("trace_id must be 32 hex digits".into()))?;
        }
    }
    let service = j
        .resource
        .get("service.name")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown_service")
        .to_string();
    let owned = |m: HashMap<String, serde_json::Value>| -> HashMap<String, AttrValueOwned> {
        m.iter()
            .filter_map(|(k, v)| json_attr(v).map(|v| (k.clone(), v)))
            .collect()
    };
    // Trace id given or not, the rule stage's answer is the same.
    Ok(PlainSpan {
        name: j.name,
        kind,
        status,
        duration,
        end: crate::clock::unix_now_ns(),
        trace_id,
        attrs: owned(j.attributes),
        res: owned(j.resource),
        service,
    })
}

pub fn explain(a: &ExplainArgs) -> Result<String, SamplingCmdError> {
    let cfg = load(&a.config)?
        .ok_or_else(|| SamplingCmdError::NoSampling(a.config.display().to_string()))?;
    let span = parse_span(&a.span)?;
    let pipeline = Pipeline::new(&cfg)?;
    let mut out = String::new();
    let precision = cfg.precision;
    match pipeline.rules() {
        Some(r) => {
            let p = r.decide(&span);
            let who = match p.decider {
                Decider::Rule(i) => format!("rule #{i} {:?}", pipeline.decider_name(p.decider)),
                _ => "no rule: the default percentage".to_string(),
            };
            let t = Threshold::from_probability_clamped(p.probability, precision);
            out.push_str(&format!(
                "matched: {who}\nprobability: {:.6} ({})\nthreshold: {}\n",
                p.probability,
                if p.priority {
                    "keep always: later stages do not reduce it"
                } else if p.probability == 0.0 {
                    "drop always"
                } else {
                    "later stages may lower it"
                },
                t.encode()
                    .map_or("none (dropped)".to_string(), |h| format!("th:{h}")),
            ));
            if span.trace_id != [0; 16] {
                let r = Randomness::from_trace_id(span.trace_id);
                out.push_str(&format!(
                    "randomness: rv {} -> {} by the rule stage\n",
                    r.encode(),
                    if t.keeps(p.randomness) {
                        "kept"
                    } else {
                        "dropped"
                    }
                ));
            }
        }
        None => out.push_str("no rules: the rule stage keeps everything (probability 1)\n"),
    }
    if let Some(a) = &cfg.adaptive {
        out.push_str(&format!(
            "then adaptive: {} errors are kept; otherwise the probability is multiplied by the key's share of a {}/s target (depends on live traffic; see `kspan sampling simulate`)\n",
            if span.status == 2 { "this is an error:" } else { "not an error;" },
            a.target_spans_per_second
        ));
    }
    if cfg.budget.is_some() {
        out.push_str(
            "then budget: paced by what is left of the period's budget (depends on live traffic)\n",
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_names_the_rule() {
        let dir = std::env::temp_dir().join(format!("kspan-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.yaml");
        std::fs::write(
            &f,
            r#"
sampling:
  rules:
    default_sampling_percentage: 10
    rules:
      - name: slow-payments
        sampling_percentage: 100
        conditions: ['attributes["http.route"] == "/api/payment"', 'duration > 1s']
      - name: health
        action: drop
        conditions: ['IsMatch(name, "health")']
"#,
        )
        .unwrap();
        let a = ExplainArgs {
            config: f.clone(),
            span: r#"{"name":"GET","kind":"server","duration":"2s","attributes":{"http.route":"/api/payment"}}"#.into(),
        };
        let out = explain(&a).unwrap();
        assert!(out.contains("matched: rule #0 \"slow-payments\""), "{out}");
        assert!(out.contains("probability: 1.000000"), "{out}");
        let a = ExplainArgs {
            config: f.clone(),
            span:
                r#"{"name":"GET","duration":"5ms","trace_id":"0102030405060708090a0b0c0d0e0f10"}"#
                    .into(),
        };
        let out = explain(&a).unwrap();
        assert!(out.contains("no rule: the default percentage"), "{out}");
        assert!(out.contains("th:e666"), "{out}");
        let a = ExplainArgs {
            config: f.clone(),
            span: r#"{"name":"health","kind":"sideways"}"#.into(),
        };
        assert!(explain(&a)
            .unwrap_err()
            .to_string()
            .contains("kind \"sideways\" is not one of"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn simulate_rejects_unknown_scenarios() {
        let a = SimulateArgs {
            config: None,
            scenarios: vec!["tsunami".into()],
            seed: 1,
            json: false,
        };
        assert!(simulate(&a)
            .unwrap_err()
            .to_string()
            .contains("unknown scenario"));
    }
}
