//! The analyzer's scoring and recommendation logic on synthetic result
//! sets: constraints are respected, scores do not depend on order, and the
//! results document round-trips and refuses other schema versions.

use proptest::prelude::*;
use quantscope::analyze::efficiency;
use quantscope::analyze::schema::*;
use quantscope::analyze::{recommend, Constraints};
use quantscope::backend::BackendKind;

mod analyze_support;

/// The shared fixture with a top-10 agreement and the time split 80 / 10
/// / 10 % between linear layers, attention and the rest.
fn result(strategy: &str, backend: BackendKind, acc: f64, bytes: u64, t: f64) -> StrategyResult {
    let mut r = analyze_support::result(strategy, backend, acc, bytes, t);
    r.retention.top10_agreement = Some(0.9);
    r.speed.split = TimeSplit {
        linear_s: t * 0.8,
        attention_s: t * 0.1,
        other_s: t * 0.1,
    };
    r
}

const NAMES: [&str; 6] = ["none", "int8", "int4", "nf4", "gptq-int4", "awq-int4"];

fn arb_results() -> impl Strategy<Value = Vec<StrategyResult>> {
    prop::collection::vec(
        (
            0usize..NAMES.len(),
            prop::bool::ANY,
            0.9f64..1.0,
            1_000u64..100_000_000,
            1e-4f64..1.0,
        ),
        1..12,
    )
    .prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter_map(|(n, b, a, m, t)| {
                let backend = if b {
                    BackendKind::Cpu
                } else {
                    BackendKind::Wgpu
                };
                seen.insert((n, b))
                    .then(|| result(NAMES[n], backend, a, m, t))
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn recommendations_respect_the_constraints(
        mut rs in arb_results(),
        max_mb in prop::option::of(1u64..100),
        min_acc in prop::option::of(0.9f64..1.0),
        p in 0usize..4,
    ) {
        efficiency::compute(&mut rs, 400_000_000);
        let c = Constraints {
            max_memory_bytes: max_mb.map(|m| m * 1_000_000),
            min_accuracy: min_acc,
        };
        let prio = Priority::ALL[p];
        let rec = recommend(&rs, prio, &c, None, &[]);
        let feasible: Vec<&StrategyResult> = rs
            .iter()
            .filter(|r| c.max_memory_bytes.is_none_or(|m| r.footprint_bytes() <= m))
            .filter(|r| c.min_accuracy.is_none_or(|a| r.accuracy >= a))
            .collect();
        match &rec.recommended {
            Some(pick) => {
                let r = rs
                    .iter()
                    .find(|r| r.strategy == pick.strategy && r.backend == pick.backend)
                    .unwrap();
                if let Some(m) = c.max_memory_bytes {
                    prop_assert!(r.footprint_bytes() <= m);
                }
                if let Some(a) = c.min_accuracy {
                    prop_assert!(r.accuracy >= a);
                }
                // It is the best feasible score.
                for f in &feasible {
                    prop_assert!(f.efficiency.scores.get(prio) <= pick.score + 1e-12);
                }
                prop_assert!(rec.binding_constraint.is_none());
            }
            None => {
                prop_assert!(feasible.is_empty());
                prop_assert!(rec.binding_constraint.is_some());
            }
        }
        if let Some(ru) = &rec.runner_up {
            prop_assert!(ru.score <= rec.recommended.as_ref().unwrap().score + 1e-12);
        }
    }

    #[test]
    fn scores_do_not_depend_on_order(rs in arb_results(), seed in 0u64..1000) {
        let mut a = rs.clone();
        efficiency::compute(&mut a, 400_000_000);
        // A seeded permutation of the same set.
        let mut b = rs;
        let n = b.len();
        for i in (1..n).rev() {
            let j = ((seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64)) % (i as u64 + 1)) as usize;
            b.swap(i, j);
        }
        efficiency::compute(&mut b, 400_000_000);
        for r in &a {
            let o = b
                .iter()
                .find(|o| o.strategy == r.strategy && o.backend == r.backend)
                .unwrap();
            prop_assert_eq!(r.efficiency.scores, o.efficiency.scores);
        }
        let ra = recommend(&a, Priority::Balanced, &Constraints::default(), None, &[]);
        let rb = recommend(&b, Priority::Balanced, &Constraints::default(), None, &[]);
        prop_assert_eq!(
            ra.recommended.map(|p| (p.strategy, p.backend)),
            rb.recommended.map(|p| (p.strategy, p.backend))
        );
    }
}

#[test]
fn binding_constraint_says_which_and_by_how_much() {
    let mut rs = vec![
        result("none", BackendKind::Cpu, 1.0, 90_000_000, 0.01),
        result("int4", BackendKind::Cpu, 0.97, 12_000_000, 0.004),
    ];
    efficiency::compute(&mut rs, 90_000_000);
    let c = Constraints {
        max_memory_bytes: Some(10_000_000),
        min_accuracy: None,
    };
    let rec = recommend(&rs, Priority::Balanced, &c, None, &[]);
    assert!(rec.recommended.is_none());
    let b = rec.binding_constraint.unwrap();
    assert!(b.contains("--max-memory-gb binds"), "{b}");
    assert!(b.contains("int4"), "{b}");
    let c = Constraints {
        max_memory_bytes: Some(20_000_000),
        min_accuracy: Some(0.99),
    };
    let rec = recommend(&rs, Priority::Balanced, &c, None, &[]);
    let b = rec.binding_constraint.unwrap();
    assert!(b.contains("--min-accuracy binds"), "{b}");
    assert!(b.contains("0.02000 below"), "{b}");
}

#[test]
fn balanced_prefers_the_trade_off_and_memory_the_smallest() {
    let mut rs = vec![
        result("none", BackendKind::Cpu, 1.0, 90_000_000, 0.010),
        result("int8", BackendKind::Cpu, 0.9999, 23_000_000, 0.006),
        result("int4", BackendKind::Cpu, 0.990, 12_000_000, 0.005),
    ];
    efficiency::compute(&mut rs, 90_000_000);
    let c = Constraints::default();
    let mem = recommend(&rs, Priority::Memory, &c, None, &[]);
    assert_eq!(mem.recommended.unwrap().strategy, "int4");
    let acc = recommend(&rs, Priority::Accuracy, &c, None, &[]);
    assert_eq!(acc.recommended.unwrap().strategy, "int8");
    // Balanced: int8 is 4x smaller than none at nearly its accuracy; int4
    // halves it again but loses a point of cosine.
    let bal = recommend(&rs, Priority::Balanced, &c, None, &[]);
    assert_eq!(bal.recommended.unwrap().strategy, "int8");
    // none is dominated by nothing (it is the most accurate), int4 neither.
    assert!(bal.avoid.is_empty(), "{:?}", bal.avoid);
    // Savings are against none.
    let int4 = &rs[2];
    assert_eq!(int4.efficiency.savings_bytes, 78_000_000);
    assert!((int4.efficiency.compression_ratio - 7.5).abs() < 1e-12);
    assert!((int4.efficiency.speedup_vs_baseline.unwrap() - 2.0).abs() < 1e-12);
}

fn sample_run() -> AnalysisRun {
    let mut rs = vec![
        result("none", BackendKind::Cpu, 1.0, 90_000_000, 0.010),
        result("int4", BackendKind::Cpu, 0.99, 12_000_000, 0.005),
    ];
    efficiency::compute(&mut rs, 90_000_000);
    let rec = recommend(&rs, Priority::Balanced, &Constraints::default(), None, &[]);
    let inputs = InputsRef {
        source: "built-in".into(),
        count: 24,
        seq_len: 32,
        digest: "0123456789abcdef".into(),
    };
    AnalysisRun {
        schema_version: SCHEMA_VERSION,
        tool_version: "0.1.0".into(),
        run_id: "1-tiny-0123".into(),
        created_unix_s: 1,
        duration_s: 2.0,
        config: AnalysisConfig {
            model: ModelRef {
                name: "tiny".into(),
                source: "preset:tiny".into(),
                family: "bert".into(),
                output_dim: 256,
                f32_weight_bytes: 90_000_000,
                linear_layers: vec![("layer.0.q".into(), 256, 256)],
            },
            strategies: vec!["none".into(), "int4".into()],
            backends: vec![BackendKind::Cpu],
            priority: Priority::Balanced,
            max_memory_gb: None,
            min_accuracy: Some(0.98),
            batch: 8,
            eval_inputs: inputs.clone(),
            calib_inputs: inputs,
            timed_runs: 5,
        },
        hardware: quantscope::hardware::HardwareProfile::detect(),
        pareto: efficiency::fronts(&rs),
        results: rs,
        skipped: vec![],
        layers: vec![],
        mixed_precision: None,
        recommendation: rec,
    }
}

#[test]
fn results_round_trip_and_other_versions_are_refused() {
    let run = sample_run();
    let text = run.to_json().unwrap();
    let back = AnalysisRun::from_json(&text, "mem").unwrap();
    assert_eq!(back, run);
    let future = text.replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        &format!("\"schema_version\": {}", SCHEMA_VERSION + 1),
        1,
    );
    let e = AnalysisRun::from_json(&future, "future.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("future.json") && e.contains("newer quantscope"),
        "{e}"
    );
    let e = AnalysisRun::from_json("{\"results\": []}", "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no schema_version"), "{e}");
    let e = AnalysisRun::from_json(&text[..text.len() / 2], "cut.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.json") && e.contains("not a JSON document"),
        "{e}"
    );
}
