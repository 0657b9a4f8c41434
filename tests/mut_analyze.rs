//! The analyzer's scoring, fidelity and recommendation code on small result
//! sets whose every figure is worked out by hand here: normalized metrics,
//! scores, savings, speedups, Pareto fronts, retention and neighbour
//! agreement, the ranking's tie-breaks and every reason and warning text.
//! Written so that a changed operator in `src/analyze/{efficiency,
//! fidelity,recommend}.rs` fails here (see `docs/TESTING.md`).

use quantscope::analyze::efficiency::{self, pareto_front};
use quantscope::analyze::fidelity::{retention, topk_agreement};
use quantscope::analyze::schema::*;
use quantscope::analyze::{recommend, Constraints};
use quantscope::backend::BackendKind;

mod analyze_support;
use analyze_support::result;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

/// none / int8 / int4 on the CPU: memory 80, 20, 10 MB (ratios 8 and 2, so
/// the log-normalized memory of int8 is 1 - ln 2 / ln 8 = 2/3), times 16, 4,
/// 2 ms (same ratios), accuracy 1, 0.99, 0.95 (int8 0.04 / 0.05 = 0.8).
fn three() -> Vec<StrategyResult> {
    vec![
        result("none", BackendKind::Cpu, 1.0, 80_000_000, 0.016),
        result("int8", BackendKind::Cpu, 0.99, 20_000_000, 0.004),
        result("int4", BackendKind::Cpu, 0.95, 10_000_000, 0.002),
    ]
}

#[test]
fn efficiency_figures_by_hand() {
    let mut rs = three();
    efficiency::compute(&mut rs, 400_000_000);
    let e: Vec<Efficiency> = rs.iter().map(|r| r.efficiency).collect();
    let want_norm = [
        (0.0, 0.0, 1.0),
        (2.0 / 3.0, 2.0 / 3.0, 0.8),
        (1.0, 1.0, 0.0),
    ];
    for (e, w) in e.iter().zip(want_norm) {
        let (m, s, a) = e.normalized;
        assert!(
            close(m, w.0) && close(s, w.1) && close(a, w.2),
            "{:?} vs {w:?}",
            e.normalized
        );
    }
    // Scores: weights (memory, speed, accuracy) of each priority.
    let (m, s, a) = (2.0 / 3.0, 2.0 / 3.0, 0.8);
    let sc = e[1].scores;
    assert!(close(sc.balanced, 0.33 * m + 0.33 * s + 0.34 * a), "{sc:?}");
    assert!(close(sc.accuracy, 0.2 * m + 0.2 * s + 0.6 * a), "{sc:?}");
    assert!(close(sc.speed, 0.2 * m + 0.6 * s + 0.2 * a), "{sc:?}");
    assert!(close(sc.memory, 0.6 * m + 0.2 * s + 0.2 * a), "{sc:?}");
    assert!(close(e[0].scores.memory, 0.2), "{:?}", e[0].scores);
    assert!(close(e[2].scores.accuracy, 0.4), "{:?}", e[2].scores);
    // Savings against none's 80 MB (not the 400 MB given as f32 bytes).
    assert_eq!(e[1].savings_bytes, 60_000_000);
    assert_eq!(e[0].savings_bytes, 0);
    assert!(close(e[1].savings_pct, 75.0), "{}", e[1].savings_pct);
    assert!(close(e[2].compression_ratio, 8.0));
    assert!(close(e[1].compression_ratio, 4.0));
    assert!(close(e[1].accuracy_per_gb, 0.99 / 0.02));
    assert!(close(e[1].speedup_vs_baseline.unwrap(), 4.0));
    assert!(close(e[2].speedup_vs_baseline.unwrap(), 8.0));
    assert!(close(e[1].overhead_ratio, 0.1));
}

#[test]
fn baselines_per_backend_and_degenerate_sizes() {
    // No none at all: savings against the f32 bytes, no speedup.
    let mut rs = vec![
        result("int8", BackendKind::Cpu, 0.99, 25_000_000, 0.004),
        result("int4", BackendKind::Wgpu, 0.95, 10_000_000, 0.002),
    ];
    efficiency::compute(&mut rs, 100_000_000);
    assert_eq!(rs[0].efficiency.savings_bytes, 75_000_000);
    assert!(close(rs[1].efficiency.compression_ratio, 10.0));
    assert!(rs
        .iter()
        .all(|r| r.efficiency.speedup_vs_baseline.is_none()));
    // A none on wgpu only: the wgpu pair's speedup is against it, the CPU
    // pair has none to compare with; savings use that none's bytes.
    let mut rs = vec![
        result("none", BackendKind::Wgpu, 1.0, 50_000_000, 0.010),
        result("int8", BackendKind::Cpu, 0.99, 25_000_000, 0.004),
        result("int4", BackendKind::Wgpu, 0.95, 10_000_000, 0.002),
    ];
    efficiency::compute(&mut rs, 100_000_000);
    assert!(rs[1].efficiency.speedup_vs_baseline.is_none());
    assert!(close(rs[2].efficiency.speedup_vs_baseline.unwrap(), 5.0));
    assert!(close(rs[0].efficiency.speedup_vs_baseline.unwrap(), 1.0));
    assert_eq!(rs[1].efficiency.savings_bytes, 25_000_000);
    // Zero bytes: ratios that would divide by zero are 0.
    let mut z = result("int4", BackendKind::Cpu, 0.9, 0, 0.002);
    z.memory.weight_bytes = 0;
    z.memory.inference_overhead_bytes = 7;
    let mut rs = vec![z];
    efficiency::compute(&mut rs, 0);
    let e = rs[0].efficiency;
    assert_eq!(
        (e.accuracy_per_gb, e.compression_ratio, e.overhead_ratio),
        (0.0, 0.0, 0.0)
    );
    assert_eq!((e.savings_pct, e.savings_bytes), (0.0, 0));
    // One result: every metric is flat and normalizes to 1; each score is the
    // sum of its weights.
    assert_eq!(e.normalized, (1.0, 1.0, 1.0));
    assert!(close(e.scores.balanced, 1.0) && close(e.scores.speed, 1.0));
}

#[test]
fn a_range_of_rounding_size_is_flat_and_a_small_real_one_is_not() {
    // Times 4e-15 apart (relative) near 1.5e-8 s: their logs (about -18)
    // differ by one or two f64 steps (3.6e-15 each), below 1e-15 of their
    // magnitude (1.8e-14): flat, both 1.
    let t = 1.5e-8f64;
    assert!(t.ln() != (t * (1.0 + 4e-15)).ln());
    let mut rs = vec![
        result("a", BackendKind::Cpu, 1.0, 1_000, t),
        result("b", BackendKind::Cpu, 1.0, 1_000, t * (1.0 + 4e-15)),
    ];
    efficiency::compute(&mut rs, 1_000);
    assert_eq!(rs[0].efficiency.normalized.1, 1.0);
    assert_eq!(rs[1].efficiency.normalized.1, 1.0);
    // Accuracies 1e-4 apart are a real difference: 1 and 0.
    let mut rs = vec![
        result("a", BackendKind::Cpu, 1.0, 1_000, 0.1),
        result("b", BackendKind::Cpu, 0.9999, 1_000, 0.1),
    ];
    efficiency::compute(&mut rs, 1_000);
    assert_eq!(rs[0].efficiency.normalized.2, 1.0);
    assert_eq!(rs[1].efficiency.normalized.2, 0.0);
}

#[test]
fn pareto_fronts_by_hand() {
    // Same cost, more gain dominates; same gain, less cost dominates.
    assert_eq!(pareto_front(&[1.0, 1.0], &[0.5, 0.6]), vec![1]);
    assert_eq!(pareto_front(&[1.0, 2.0], &[0.5, 0.5]), vec![0]);
    // Sorted by cost.
    assert_eq!(
        pareto_front(&[3.0, 1.0, 2.0], &[0.9, 0.1, 0.5]),
        vec![1, 2, 0]
    );
    // 1 is dominated by 0 (cheaper and better).
    assert_eq!(pareto_front(&[1.0, 2.0, 3.0], &[0.8, 0.7, 0.9]), vec![0, 2]);
    // The two fronts use time and memory respectively.
    let rs = vec![
        result("fast-big", BackendKind::Cpu, 0.99, 80, 0.001),
        result("slow-small", BackendKind::Cpu, 0.99, 10, 0.010),
        result("slow-big", BackendKind::Cpu, 0.98, 90, 0.020),
    ];
    let f = efficiency::fronts(&rs);
    assert_eq!(f.speed_accuracy, vec![0]);
    assert_eq!(f.memory_accuracy, vec![1]);
}

#[test]
fn retention_figures_by_hand() {
    // Three rows of 2: a scaled copy keeps cosine 1 and has NMSE 1.
    let r = [1.0f32, 0.0, 0.0, 2.0, 3.0, 4.0];
    let twice: Vec<f32> = r.iter().map(|x| 2.0 * x).collect();
    let ret = retention(&r, &twice, 3, false);
    assert!(
        close(ret.mean_cosine, 1.0) && close(ret.worst_cosine, 1.0),
        "{ret:?}"
    );
    assert!(close(ret.output_nmse, 1.0), "{ret:?}");
    assert_eq!(ret.top10_agreement, None);
    assert_eq!(ret.top1_agreement, None);
    // Row 1 flipped (cosine -1), row 2 rotated to (4, -3) (cosine 0).
    let g = [1.0f32, 0.0, 0.0, -2.0, 4.0, -3.0];
    let ret = retention(&r, &g, 3, false);
    assert!(close(ret.mean_cosine, 0.0), "{ret:?}");
    assert!(close(ret.worst_cosine, -1.0), "{ret:?}");
    // A cosine that is not 0 or ±1: (1, 0) against (1, 1) is 1/sqrt 2.
    let ret = retention(&[1.0, 0.0], &[1.0, 1.0], 1, false);
    assert!(close(ret.mean_cosine, 0.5f64.sqrt()), "{ret:?}");
    // Zero rows: both zero agree (1), one zero does not (0).
    let ret = retention(&[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 0.0, 0.0], 2, false);
    assert!(
        close(ret.mean_cosine, 0.5) && ret.worst_cosine == 0.0,
        "{ret:?}"
    );
    let ret = retention(&[1.0, 1.0], &[0.0, 0.0], 1, false);
    assert_eq!(ret.mean_cosine, 0.0);
    // Non-finite outputs never pass.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut g = r;
        g[4] = bad;
        let ret = retention(&r, &g, 3, true);
        assert_eq!((ret.mean_cosine, ret.worst_cosine), (0.0, 0.0));
        assert!(ret.output_nmse.is_infinite());
        assert_eq!(ret.top10_agreement, None);
    }
    // Embeddings with 3 inputs: k = 2 = every other input, so agreement 1.
    assert_eq!(retention(&r, &g, 3, true).top10_agreement, Some(1.0));
}

#[test]
fn neighbour_agreement_by_hand() {
    // Points at 0, 10, 90 and 180 degrees; the quantized copy moves the third
    // to 185 degrees. Nearest neighbours: reference 1, 0, 1, 2; quantized
    // 1, 0, 3, 2: three of four agree.
    let at = |deg: f64| [deg.to_radians().cos() as f32, deg.to_radians().sin() as f32];
    let pts = |d: [f64; 4]| d.iter().flat_map(|&x| at(x)).collect::<Vec<f32>>();
    let r = pts([0.0, 10.0, 90.0, 180.0]);
    let g = pts([0.0, 10.0, 185.0, 180.0]);
    assert_eq!(topk_agreement(&r, &g, 4, 1), Some(0.75));
    assert_eq!(topk_agreement(&r, &r, 4, 1), Some(1.0));
    // k = 2: reference {1,2}, {0,2}, {1,0}, {2,1}; quantized {1,2}, {0,3},
    // {3, 0 or 1} (cos 185 = cos 175), {2,1}: 1, 1/2, 1/2, 1.
    assert_eq!(topk_agreement(&r, &g, 4, 2), Some(0.75));
    // Fewer than 3 inputs, mismatched lengths, ragged rows: no figure.
    assert_eq!(topk_agreement(&r[..4], &g[..4], 2, 1), None);
    assert_eq!(topk_agreement(&r, &g[..6], 4, 1), None);
    assert_eq!(topk_agreement(&r[..7], &g[..7], 4, 1), None);
}

#[test]
fn reasons_of_the_pick_by_hand() {
    let mut rs = three();
    rs.push(result("int8", BackendKind::Wgpu, 0.99, 20_000_000, 0.008));
    rs.push(result("int8", BackendKind::Cuda, 0.99, 20_000_000, 0.006));
    efficiency::compute(&mut rs, 80_000_000);
    let c = Constraints {
        max_memory_bytes: None,
        min_accuracy: None,
    };
    let rec = recommend(&rs, Priority::Speed, &c, None, &[]);
    let p = rec.recommended.unwrap();
    assert_eq!((p.strategy.as_str(), p.backend), ("int4", BackendKind::Cpu));
    assert!(close(p.score, 0.2 + 0.6), "{}", p.score);
    assert_eq!(
        (p.accuracy, p.memory_bytes, p.inference_time_s),
        (0.95, 10_000_000, 0.002)
    );
    assert_eq!(
        p.reasons,
        vec![
            "speed score 0.800 (normalized memory 1.00, speed 1.00, accuracy 0.00)".to_string(),
            "accuracy retention 0.95000 mean cosine (worst 0.94900)".into(),
            "weights 10.00 MB, 8.00x smaller than none".into(),
            "2.000 ms per input on cpu, 8.00x the speed of none there".into(),
        ]
    );
    // The runner-up is int8 on the CPU; its reasons name the fastest other
    // backend running int8 (cuda, 6 ms) and carry no speedup on wgpu/cuda.
    let ru = rec.runner_up.unwrap();
    assert_eq!(
        (ru.strategy.as_str(), ru.backend),
        ("int8", BackendKind::Cpu)
    );
    assert_eq!(
        ru.reasons[4],
        "the same strategy on cuda takes 6.000 ms per input"
    );
    assert_eq!(ru.reasons.len(), 5);
    // Accuracy: int8 (0.2·2/3 + 0.2·2/3 + 0.6·0.8 = 0.747) beats none (0.6).
    let rec = recommend(&rs, Priority::Accuracy, &c, None, &[]);
    let p = rec.recommended.as_ref().unwrap();
    assert_eq!((p.strategy.as_str(), p.backend), ("int8", BackendKind::Cpu));
    // A pair on a backend without none has no speedup figure.
    let wgpu = recommend(&rs[3..4], Priority::Balanced, &c, None, &[])
        .recommended
        .unwrap();
    assert_eq!(wgpu.reasons[3], "8.000 ms per input on wgpu");
    assert_eq!(wgpu.reasons.len(), 4);
    // Dominated pairs: int8 on wgpu and cuda lose to int8 on the CPU.
    let avoid: Vec<(String, BackendKind)> = rec
        .avoid
        .iter()
        .map(|a| (a.strategy.clone(), a.backend))
        .collect();
    assert_eq!(
        avoid,
        vec![
            ("int8".to_string(), BackendKind::Wgpu),
            ("int8".to_string(), BackendKind::Cuda)
        ]
    );
    assert_eq!(
        rec.avoid[0].reason,
        "dominated: int8 on cpu is no larger (20.00 vs 20.00 MB), no slower (4.000 vs 8.000 ms) \
         and no less accurate (0.99000 vs 0.99000)"
    );
}

#[test]
fn ranking_ties_break_by_accuracy_memory_time_and_names() {
    let set = |a: StrategyResult, b: StrategyResult| {
        let mut v = vec![a, b];
        for r in &mut v {
            r.efficiency.scores = Scores {
                balanced: 0.5,
                accuracy: 0.5,
                speed: 0.5,
                memory: 0.5,
            };
        }
        v
    };
    let first = |v: &[StrategyResult]| {
        let r = recommend(v, Priority::Balanced, &Constraints::default(), None, &[])
            .recommended
            .unwrap();
        (r.strategy, r.backend)
    };
    let cpu = BackendKind::Cpu;
    let v = set(
        result("a", cpu, 0.98, 10, 0.1),
        result("b", cpu, 0.99, 10, 0.1),
    );
    assert_eq!(first(&v).0, "b");
    let v = set(
        result("a", cpu, 0.99, 20, 0.1),
        result("b", cpu, 0.99, 10, 0.1),
    );
    assert_eq!(first(&v).0, "b");
    let v = set(
        result("a", cpu, 0.99, 10, 0.2),
        result("b", cpu, 0.99, 10, 0.1),
    );
    assert_eq!(first(&v).0, "b");
    let v = set(
        result("b", cpu, 0.99, 10, 0.1),
        result("a", cpu, 0.99, 10, 0.1),
    );
    assert_eq!(first(&v).0, "a");
    let v = set(
        result("a", BackendKind::Wgpu, 0.99, 10, 0.1),
        result("a", BackendKind::Cuda, 0.99, 10, 0.1),
    );
    assert_eq!(first(&v).1, BackendKind::Cuda);
    // A higher score wins over everything else.
    let mut v = set(
        result("a", cpu, 0.5, 99, 9.0),
        result("b", cpu, 0.99, 10, 0.1),
    );
    v[0].efficiency.scores.balanced = 0.6;
    assert_eq!(first(&v).0, "a");
}

#[test]
fn constraints_and_their_reasons() {
    let mut rs = three();
    // int8's peak is below its weights here: the reason says "weights".
    rs[1].memory.device_peak_bytes = 0;
    efficiency::compute(&mut rs, 80_000_000);
    // 20 MB exactly fits a 20 MB limit; retention 0.95 is below 0.96.
    let c = Constraints {
        max_memory_bytes: Some(20_000_000),
        min_accuracy: Some(0.96),
    };
    let rec = recommend(&rs, Priority::Balanced, &c, None, &[]);
    assert_eq!(rec.recommended.as_ref().unwrap().strategy, "int8");
    assert!(rec.runner_up.is_none());
    assert_eq!(rec.binding_constraint, None);
    let reasons: Vec<(&str, &str)> = rec
        .avoid
        .iter()
        .map(|a| (a.strategy.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "none",
                "needs 0.088 GB (peak during inference), above --max-memory-gb 0.020 GB"
            ),
            ("int4", "retention 0.95000 is below --min-accuracy 0.96"),
        ]
    );
    assert_eq!(
        rec.warnings,
        vec!["retention below --min-accuracy 0.96: int4 on cpu (0.95000)".to_string()]
    );
    // Accuracy exactly at the limit passes; NaN never does.
    let c = Constraints {
        max_memory_bytes: None,
        min_accuracy: Some(0.99),
    };
    let rec = recommend(&rs[1..2], Priority::Balanced, &c, None, &[]);
    assert!(
        rec.recommended.is_some() && rec.warnings.is_empty(),
        "{rec:?}"
    );
    let mut nan = rs[1].clone();
    nan.accuracy = f64::NAN;
    let rec = recommend(&[nan], Priority::Balanced, &c, None, &[]);
    assert!(rec.recommended.is_none());
    // 1 byte over: excluded, named as weights (peak 0).
    let c = Constraints {
        max_memory_bytes: Some(19_999_999),
        min_accuracy: None,
    };
    let rec = recommend(&rs[1..2], Priority::Balanced, &c, None, &[]);
    assert_eq!(
        rec.avoid[0].reason,
        "needs 0.020 GB (weights), above --max-memory-gb 0.020 GB"
    );
}

#[test]
fn binding_constraint_texts() {
    let rs = three();
    let rec = recommend(&[], Priority::Balanced, &Constraints::default(), None, &[]);
    assert_eq!(
        rec.binding_constraint.unwrap(),
        "no strategy x backend pair ran"
    );
    // Memory alone: int4's footprint is 11 MB (peak), 1 MB over 10 MB.
    let c = Constraints {
        max_memory_bytes: Some(10_000_000),
        min_accuracy: None,
    };
    let b = recommend(&rs, Priority::Balanced, &c, None, &[])
        .binding_constraint
        .unwrap();
    assert_eq!(
        b,
        "--max-memory-gb binds: the smallest pair, int4 on cpu, needs 0.011 GB, 0.001 GB over \
         the limit of 0.010 GB"
    );
    // Both: the smallest accurate-enough pair (none: 88 MB) and the most
    // accurate small-enough pair (int4: 0.95).
    let c = Constraints {
        max_memory_bytes: Some(15_000_000),
        min_accuracy: Some(0.999),
    };
    let b = recommend(&rs, Priority::Balanced, &c, None, &[])
        .binding_constraint
        .unwrap();
    assert_eq!(
        b,
        "--max-memory-gb binds: the smallest accurate-enough pair, none on cpu, needs 0.088 GB, \
         0.073 GB over the limit of 0.015 GB; --min-accuracy binds: the most accurate \
         small-enough pair, int4 on cpu, retains 0.95000, 0.04900 below 0.999"
    );
    // Accuracy alone, nothing accurate enough: the most accurate pair (none).
    let c = Constraints {
        max_memory_bytes: None,
        min_accuracy: Some(1.5),
    };
    let b = recommend(&rs, Priority::Balanced, &c, None, &[])
        .binding_constraint
        .unwrap();
    assert_eq!(
        b,
        "--min-accuracy binds: the most accurate pair, none on cpu, retains 1.00000, 0.50000 \
         below 1.5"
    );
    // Nothing fits either alone: the pools fall back to every pair.
    let c = Constraints {
        max_memory_bytes: Some(1),
        min_accuracy: Some(1.5),
    };
    let b = recommend(&rs, Priority::Balanced, &c, None, &[])
        .binding_constraint
        .unwrap();
    assert!(
        b.starts_with(
            "--max-memory-gb binds: the smallest accurate-enough pair, int4 on cpu, needs 0.011 GB"
        ) && b.contains("the most accurate small-enough pair, none on cpu, retains 1.00000"),
        "{b}"
    );
}

#[test]
fn warnings_memory_fragmentation_and_skips() {
    let mut rs = three();
    efficiency::compute(&mut rs, 80_000_000);
    // The pick for memory is int4 (11 MB footprint): 11 of 12.5 MB is 88 %.
    let mut hw = quantscope::hardware::HardwareProfile::detect();
    hw.cpu.ram_total_bytes = 12_500_000;
    let rec = recommend(
        &rs,
        Priority::Memory,
        &Constraints::default(),
        Some(&hw),
        &[],
    );
    assert_eq!(
        rec.warnings,
        vec!["int4 on cpu uses 88 % of the device's memory (above 80 %)".to_string()]
    );
    // Exactly 80 % is not above it.
    hw.cpu.ram_total_bytes = 13_750_000;
    let rec = recommend(
        &rs,
        Priority::Memory,
        &Constraints::default(),
        Some(&hw),
        &[],
    );
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    // Fragmentation: the worst pair per backend, only above 10 % and with at
    // least 256 MiB reserved but unused.
    let mib = 1u64 << 20;
    let frag = |r: &mut StrategyResult, f: f64, reserved: u64| {
        r.memory.fragmentation = Some(f);
        r.memory.reserved_bytes = Some(reserved);
    };
    frag(&mut rs[0], 0.25, 1024 * mib); // 256 MiB unused: counts
    frag(&mut rs[1], 0.5, 1024 * mib); // worse: this one is named
    frag(&mut rs[2], 0.10, 8192 * mib); // 10 % is not above 10 %
    let mut w = result("int4", BackendKind::Wgpu, 0.95, 10_000_000, 0.002);
    frag(&mut w, 0.9, 256 * mib); // 230 MiB unused: too little to matter
    rs.push(w);
    let skipped = vec![
        SkippedPair {
            strategy: "int8".into(),
            backend: BackendKind::Cuda,
            reason: "no GPU".into(),
        },
        SkippedPair {
            strategy: "none".into(),
            backend: BackendKind::Cuda,
            reason: "no GPU".into(),
        },
        SkippedPair {
            strategy: "int4".into(),
            backend: BackendKind::Cuda,
            reason: "no GPU".into(),
        },
        SkippedPair {
            strategy: "int8".into(),
            backend: BackendKind::Wgpu,
            reason: "no adapter".into(),
        },
        SkippedPair {
            strategy: "none".into(),
            backend: BackendKind::Wgpu,
            reason: "no adapter".into(),
        },
    ];
    let rec = recommend(
        &rs,
        Priority::Balanced,
        &Constraints::default(),
        None,
        &skipped,
    );
    assert_eq!(
        rec.warnings,
        vec![
            "cpu: allocator fragmentation up to 50 % (above 10 %; 512 MiB reserved but unused, \
             with int8)"
                .to_string(),
            "cuda skipped (every strategy): no GPU".into(),
            "wgpu skipped (int8, none): no adapter".into(),
        ]
    );
    // Exactly 10 % alone, with plenty unused: not above 10 %, no warning.
    let rec = recommend(
        &rs[2..3],
        Priority::Balanced,
        &Constraints::default(),
        None,
        &[],
    );
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    // The first of equal fragmentations stays named.
    frag(&mut rs[0], 0.5, 1024 * mib);
    let rec = recommend(
        &rs[..3],
        Priority::Balanced,
        &Constraints::default(),
        None,
        &[],
    );
    assert!(
        rec.warnings[0].ends_with("with none)"),
        "{:?}",
        rec.warnings
    );
}
