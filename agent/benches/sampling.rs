//! ns per sampling decision for each stage and the whole pipeline (5 rules + adaptive +
//! budget), and allocations per decision (counted by a wrapping global allocator).
//!
//! `cargo bench -p agent --bench sampling`
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
};

use agent::sampling::{
    simulate::{mix_span, Rng, SimSpan, SIM_START_UNIX},
    Pipeline, SamplingConfig,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RULES: &str = r#"
  rules:
    default_sampling_percentage: 50
    rules:
      - name: errors
        action: keep
        conditions: ["status == STATUS_CODE_ERROR"]
      - name: health
        action: drop
        conditions: ['attributes["http.route"] == "/api/health"']
      - name: slow-payments
        sampling_percentage: 100
        conditions: ['IsMatch(attributes["http.route"], "^/api/(payment|order)$")', "duration > 2s"]
      - name: premium
        sampling_percentage: 80
        conditions: ['attributes["user.tier"] == "premium" and kind == SPAN_KIND_SERVER']
      - name: search
        sampling_percentage: 10
        source_of_randomness: attributes["user.tier"]
        conditions: ['name == "/api/search" or not (resource.attributes["service.name"] == "shop")']
"#;
const ADAPTIVE: &str =
    "  adaptive:\n    target_spans_per_second: 1000\n    slow_threshold: 2500ms\n";
const BUDGET: &str = "  budget:\n    period: month\n    money: 1000\n    cost_per_gb: 0.25\n";

fn pipeline(parts: &[&str]) -> Pipeline {
    let yaml = format!("precision: 4\n{}", parts.join("")).replace("\n  ", "\n");
    let cfg: SamplingConfig = serde_norway::from_str(&yaml).expect("bench config");
    Pipeline::new(&cfg).expect("bench pipeline")
}

fn spans() -> Vec<SimSpan> {
    let mut rng = Rng::new(9);
    // 50k spans/s of simulated time.
    (0..100_000u64)
        .map(|i| mix_span(&mut rng, SIM_START_UNIX * 1_000_000_000 + i * 20_000, 0.05))
        .collect()
}

fn bench(c: &mut Criterion) {
    let spans = spans();
    let stages: [(&str, Vec<&str>); 4] = [
        ("rules (5 rules)", vec![RULES]),
        ("adaptive", vec![ADAPTIVE]),
        ("budget", vec![BUDGET]),
        (
            "pipeline: 5 rules + adaptive + budget",
            vec![RULES, ADAPTIVE, BUDGET],
        ),
    ];
    let mut g = c.benchmark_group("sampling decision");
    g.throughput(Throughput::Elements(1));
    for (name, parts) in &stages {
        let mut p = pipeline(parts);
        // Warm up: keys created, maps grown.
        for s in &spans {
            p.decide(s);
        }
        let mut i = 0;
        g.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % spans.len();
                    &spans[i]
                },
                |s| p.decide(s),
                BatchSize::SmallInput,
            )
        });
        let before = ALLOCS.load(Ordering::Relaxed);
        for s in &spans {
            std::hint::black_box(p.decide(s));
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        println!(
            "{name}: {:.4} allocations per decision ({allocs} over {} decisions)",
            allocs as f64 / spans.len() as f64,
            spans.len()
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
