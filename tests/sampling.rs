//! End to end, sampling: rules, the budget's spend across a restart, and the default
//! samplers during a cargo build (adjusted counts against the kernel's exact histograms).
//!
//! Run as root, one at a time: `cargo test -p agent --test sampling -- --test-threads=1`.
use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::{
    cgroup2_root,
    otlp::{by_name, getppid_spans, Receiver},
    require_root, KspanProc, Trigger, KSPAN,
};

/// A sampling config: errors kept by rule, the rest at 50 %; kept spans carry `ot=th:...`
/// and the rule, dropped ones are counted as sampled_out.
#[test]
fn sampling_rules_end_to_end() {
    require_root();
    let rx = Receiver::start(0, 0);
    let dir = std::env::temp_dir().join(format!("kspan-sampling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("kspan.yaml");
    std::fs::write(
        &cfg,
        r#"
sampling:
  rules:
    default_sampling_percentage: 50
    rules: [{ name: errors, action: keep, conditions: ["status == STATUS_CODE_ERROR"] }]
"#,
    )
    .unwrap();
    let trigger = Trigger::spawn("ticker", Some(3));
    let pid = trigger.pid().to_string();
    let run = rx.run(&["--config", cfg.to_str().unwrap(), "--pid", &pid]);
    let ticks = trigger.go()["n"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (summary, _) = run.stop();
    let spans = rx.spans();
    let errors: Vec<&Value> = spans.iter().filter(|s| s["status_code"] == 2).collect();
    let sleeps: Vec<&Value> = by_name(&spans, "clock_nanosleep");
    assert!(errors.len() as u64 >= ticks, "every failed open kept");
    for e in &errors {
        assert_eq!(e["attributes"]["kspan.sampling.rule"], "errors");
        assert_eq!(e["trace_state"], "ot=th:0", "kept with probability 1: th:0");
    }
    for s in &sleeps {
        assert_eq!(s["attributes"]["kspan.sampling.rule"], "default");
        assert_eq!(s["trace_state"], "ot=th:8");
        // Kept means R >= T: the trace id's low 56 bits are >= 0x80000000000000.
        let low14 = &s["trace_id"].as_str().unwrap()[18..];
        assert!(u64::from_str_radix(low14, 16).unwrap() >= 0x80000000000000);
    }
    let built = summary["spans_built"].as_u64().unwrap();
    let sampled_out = summary["dropped"]["sampled_out"].as_u64().unwrap();
    let exported = summary["spans_exported"].as_u64().unwrap();
    assert_eq!(exported, spans.len() as u64);
    assert_eq!(exported + sampled_out, built, "{summary}");
    // The sleeps (one per tick) kept at 50 %: within 5 standard deviations.
    let n = ticks as f64;
    let kept = sleeps.len() as f64;
    assert!(
        (kept - n / 2.0).abs() <= 5.0 * (n * 0.25).sqrt(),
        "kept {kept} of {n}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The budget's spend survives a restart: a second agent in the same period keeps only what
/// the first left, and a bad state path stops kspan with a clear message.
#[test]
fn budget_spend_survives_a_restart() {
    require_root();
    let rx = Receiver::start(0, 0);
    let dir = std::env::temp_dir().join(format!("kspan-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("budget.json");
    let cfg = dir.join("kspan.yaml");
    std::fs::write(
        &cfg,
        format!(
            "sampling:\n  budget:\n    period: day\n    spans: 50\n    reserve: 0\n    \
             state_file: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", rx.grpc_port);
    let cfg_arg = ["--config", cfg.to_str().unwrap()];
    let one_run = || getppid_spans(100, &endpoint, "grpc", &cfg_arg, &[], 300);
    let used = || -> f64 {
        let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        st["used"].as_f64().unwrap()
    };

    let first = one_run();
    assert_eq!(first["spans_built"], 100, "{first}");
    assert_eq!(first["spans_exported"], 50, "{first}");
    assert_eq!(first["dropped"]["sampled_out"], 50, "{first}");
    assert_eq!(used(), 50.0);

    let second = one_run();
    assert_eq!(second["spans_built"], 100, "{second}");
    assert_eq!(
        second["spans_exported"], 0,
        "the budget was spent before the restart"
    );
    assert_eq!(second["dropped"]["sampled_out"], 100, "{second}");
    assert_eq!(rx.spans().len(), 50);
    assert_eq!(used(), 50.0);

    // A state file in a directory that does not exist: refused at start, with what to do.
    std::fs::write(
        &cfg,
        "sampling:\n  budget:\n    period: day\n    spans: 50\n    state_file: /nonexistent-kspan/b.json\n",
    )
    .unwrap();
    let out = Command::new(KSPAN)
        .args(["run", "--exporter", "none", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write /nonexistent-kspan/b.json.tmp"),
        "{err}"
    );
    assert!(!err.contains("tracing"), "refused before attaching: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The adjusted count a kept span stands for, from `ot=th:` (1 without a threshold).
fn adjusted_count(trace_state: &str) -> f64 {
    let th = trace_state
        .split(',')
        .filter_map(|e| e.trim().strip_prefix("ot="))
        .flat_map(|ot| ot.split(';'))
        .find_map(|kv| kv.strip_prefix("th:"));
    match th {
        Some(t) => {
            let t = u64::from_str_radix(&format!("{t:0<14}"), 16).unwrap() as f64;
            let full = (1u64 << 56) as f64;
            full / (full - t)
        }
        None => 1.0,
    }
}

/// `kspan run` with the default sampling while cargo builds (part of) kspan in a cgroup of
/// its own: it exports a few hundred spans/s at most, drops nothing at the queue, keeps every
/// syscall of 1 s or more, and the adjusted counts of the kept spans estimate, per span name,
/// the true number of the build's calls of 2^20 ns or more that the kernel histograms (a
/// second kspan, `hist --cgroup`) counted. Prints the table kept in BENCHMARKS.md.
#[test]
fn default_run_during_a_cargo_build() {
    require_root();
    const SLOW: u64 = 1 << 20;
    let cg = format!("{}/kspan-build-{}", cgroup2_root(), std::process::id());
    std::fs::create_dir_all(&cg).unwrap();
    let rx = Receiver::start(0, 0);
    let mut hist_cmd = Command::new(KSPAN);
    hist_cmd.args([
        "hist",
        "--json",
        "--cumulative",
        "--interval",
        "1s",
        "--cgroup",
        &cg,
    ]);
    let mut hist = KspanProc::start(hist_cmd, "measuring");
    let run = rx.run(&[
        "--cgroup",
        &cg,
        "--sampling",
        "on",
        "--min-duration",
        "1048576",
    ]);
    let target = std::env::temp_dir().join(format!("kspan-build-{}", std::process::id()));
    let t0 = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {cg}/cgroup.procs && exec cargo build --offline --quiet -p xtask --target-dir {}",
            target.display()
        ))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::null())
        .status()
        .expect("cargo");
    assert!(status.success(), "the cargo build failed");
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (summary, _) = run.stop();
    let last = hist.stop(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir(&cg);
    let doc: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    let spans = rx.spans();

    let mut truth: HashMap<String, f64> = HashMap::new();
    let mut truth_1s = 0u64;
    for row in doc["rows"].as_array().unwrap() {
        let name = row["syscall"].as_str().unwrap().to_string();
        for b in row["buckets"].as_array().unwrap() {
            let (lo, n) = (b[0].as_u64().unwrap(), b[2].as_u64().unwrap());
            if lo >= SLOW {
                *truth.entry(name.clone()).or_default() += n as f64;
            }
            if lo >= 1 << 30 {
                truth_1s += n;
            }
        }
    }
    // (estimate, kept, estimated variance: the Horvitz-Thompson sum of (1 - p) / p^2).
    let mut estimate: HashMap<String, (f64, u64, f64)> = HashMap::new();
    let mut kept_1s = 0u64;
    let mut services = HashSet::new();
    for s in &spans {
        let dur = s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap();
        if s["attributes"]["kspan.syscall.nr"].is_null() || dur < SLOW {
            continue;
        }
        services.insert(s["resource"]["service.name"].as_str().unwrap().to_string());
        if dur >= 1 << 30 {
            kept_1s += 1;
        }
        let e = estimate
            .entry(s["name"].as_str().unwrap().to_string())
            .or_default();
        let adj = adjusted_count(s["trace_state"].as_str().unwrap());
        e.0 += adj;
        e.1 += 1;
        e.2 += adj * adj - adj;
    }
    let exported = summary["spans_exported"].as_u64().unwrap();
    eprintln!(
        "cargo build {elapsed:.1} s, services {services:?}: {exported} spans exported ({:.0}/s), built {}, sampled_out {}, queue_full {}",
        exported as f64 / elapsed,
        summary["spans_built"],
        summary["dropped"]["sampled_out"],
        summary["dropped"]["queue_full"]
    );
    let mut keys: Vec<_> = truth.keys().cloned().collect();
    keys.sort_by(|a, b| truth[b].total_cmp(&truth[a]));
    eprintln!("| span | calls >= 2^20 ns (kernel) | kept | estimate | error | std. error |");
    eprintln!("|---|---|---|---|---|---|");
    let (mut true_sum, mut est_sum, mut var_sum, mut over) = (0.0, 0.0, 0.0, Vec::new());
    for k in &keys {
        let t = truth[k];
        let (e, kept, var) = estimate.get(k).copied().unwrap_or((0.0, 0, 0.0));
        true_sum += t;
        est_sum += e;
        var_sum += var;
        let err = (e - t) / t;
        let sigma = var.sqrt() / t;
        eprintln!(
            "| {k} | {t} | {kept} | {e:.0} | {:+.1} % | {:.1} % |",
            100.0 * err,
            100.0 * sigma
        );
        // Within 5 %, or within what its sample can tell: 4 standard errors of the
        // Horvitz-Thompson estimate (2 calls of slack for the two agents' own timestamps
        // at the 2^20 ns edge).
        if err.abs() > 0.05_f64.max(4.0 * sigma) + 2.0 / t {
            over.push(format!("{k}: true {t} estimate {e:.1} from {kept}"));
        }
    }
    let _ = var_sum;
    eprintln!(
        "total: {true_sum} calls, estimate {est_sum:.0} ({:+.2} %); calls >= 2^30 ns: kept {kept_1s}, kernel {truth_1s}",
        100.0 * (est_sum - true_sum) / true_sum
    );
    assert!(
        true_sum > 100.0,
        "the build made too few slow calls to measure"
    );
    assert!(((est_sum - true_sum) / true_sum).abs() <= 0.05);
    assert!(over.is_empty(), "{over:#?}");
    assert_eq!(summary["dropped"]["queue_full"], 0, "{summary}");
    assert!(
        (exported as f64 / elapsed) < 500.0,
        "{exported} spans in {elapsed:.1} s"
    );
    assert!(
        kept_1s + 1 >= truth_1s,
        "1 s calls: kept {kept_1s} of {truth_1s}"
    );
}
