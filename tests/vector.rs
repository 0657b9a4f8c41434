//! The vector quantization study: figures, fitter guarantees, backends, CLI.

use std::process::Command;
use std::sync::Arc;

use quantscope::backend::{self, cpu::CpuBackend, Backend};
use quantscope::vector::fit::{self, IterOptions, SortedSample};
use quantscope::vector::study::{assign_codes, fit_levels, run_approach, FitPath};
use quantscope::vector::{generate, Approach, Distribution, StudyConfig, VectorSize, VectorSpec};

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn config(spec: VectorSpec, bits: u32) -> StudyConfig {
    StudyConfig {
        bits,
        ..StudyConfig::new(spec)
    }
}

/// The reference's figure: 3 bits, linspace(-4, 4, 8), 10M N(0,1) samples.
#[test]
fn large_uniform_fixed_reproduces_the_reference() {
    let spec = VectorSpec::gaussian(VectorSize::Large, 42);
    let v = generate(&spec).unwrap();
    let cfg = config(spec, 3);
    let r = run_approach(&cfg, &v, &cpu(), Approach::UniformFixed, FitPath::Auto).unwrap();
    let reference = 1.0433079663695086e-4;
    let rel = (r.l2_over_n - reference).abs() / reference;
    assert!(rel < 1e-3, "{} vs {reference}: {rel}", r.l2_over_n);
}

#[test]
fn small_vector_figures() {
    let spec = VectorSpec::gaussian(VectorSize::Small, 42);
    let v = generate(&spec).unwrap();
    let cfg = config(spec, 3);
    let fixed = run_approach(&cfg, &v, &cpu(), Approach::UniformFixed, FitPath::Auto).unwrap();
    // The reference's uniform figure on the small vector.
    assert!((fixed.l2_over_n - 0.1132813005805658).abs() < 1e-6);
    let dp = run_approach(&cfg, &v, &cpu(), Approach::DpOptimal, FitPath::Auto).unwrap();
    let lm = run_approach(&cfg, &v, &cpu(), Approach::LloydMax, FitPath::Auto).unwrap();
    let eq = run_approach(&cfg, &v, &cpu(), Approach::EasyQuant, FitPath::Auto).unwrap();
    // The reference: non-uniform 0.0502, easyquant 0.0469.
    assert!(dp.l2_over_n < 0.0469);
    assert!(lm.l2_over_n < 0.0502);
    assert!(eq.l2_over_n < 0.0469);
    assert_eq!(eq.outliers, Some(0));
    assert_eq!(dp.quantized.as_ref().map(Vec::len), Some(10));
}

#[test]
fn lloyd_max_never_worse_than_uniform_optimal() {
    for (i, d) in Distribution::ALL.into_iter().enumerate() {
        for bits in [1, 2, 3, 4, 6] {
            let spec = VectorSpec {
                distribution: d,
                ..VectorSpec::gaussian(VectorSize::Len(20_000 + 37 * i), 100 + i as u64)
            };
            let v = generate(&spec).unwrap();
            let cfg = config(spec, bits);
            let u =
                run_approach(&cfg, &v, &cpu(), Approach::UniformOptimal, FitPath::Auto).unwrap();
            let l = run_approach(&cfg, &v, &cpu(), Approach::LloydMax, FitPath::Auto).unwrap();
            assert!(
                l.l2_over_n <= u.l2_over_n * (1.0 + 1e-9),
                "{d} {bits} bits: lloyd {} > uniform {}",
                l.l2_over_n,
                u.l2_over_n
            );
            assert!(u.l2_over_n.is_finite() && l.converged, "{d} {bits}");
        }
    }
}

#[test]
fn dp_optimum_never_worse_than_lloyd_max_on_small_vectors() {
    for seed in 0..40u64 {
        let n = 2 + (seed as usize * 53) % 400;
        let d = Distribution::ALL[seed as usize % 4];
        let spec = VectorSpec {
            distribution: d,
            ..VectorSpec::gaussian(VectorSize::Len(n), seed)
        };
        let v = generate(&spec).unwrap();
        for bits in [1, 2, 3, 4] {
            let cfg = config(spec, bits);
            let dp = run_approach(&cfg, &v, &cpu(), Approach::DpOptimal, FitPath::Auto).unwrap();
            let lm = run_approach(&cfg, &v, &cpu(), Approach::LloydMax, FitPath::Auto).unwrap();
            assert!(
                dp.l2_over_n <= lm.l2_over_n * (1.0 + 1e-6) + 1e-12,
                "seed {seed} n {n} {bits} bits: dp {} > lloyd {}",
                dp.l2_over_n,
                lm.l2_over_n
            );
        }
    }
}

#[test]
fn dp_optimum_matches_exhaustive_search() {
    // Every way to cut 12 sorted values into 3 contiguous clusters.
    let spec = VectorSpec::gaussian(VectorSize::Len(12), 9);
    let v = generate(&spec).unwrap();
    let fit = fit::dp_optimal(&v, 3).unwrap();
    let mut x: Vec<f64> = v.iter().map(|&a| a as f64).collect();
    x.sort_by(f64::total_cmp);
    let sse = |s: &[f64]| {
        let m = s.iter().sum::<f64>() / s.len() as f64;
        s.iter().map(|a| (a - m).powi(2)).sum::<f64>()
    };
    let mut best = f64::INFINITY;
    for a in 1..x.len() {
        for b in a + 1..x.len() {
            best = best.min(sse(&x[..a]) + sse(&x[a..b]) + sse(&x[b..]));
        }
    }
    assert!((fit.fit_mse * 12.0 - best).abs() < 1e-9 * best.max(1.0));
}

#[test]
fn easyquant_counts_planted_outliers() {
    let spec = VectorSpec {
        distribution: Distribution::GaussianOutliers,
        outlier_rate: 0.001,
        outlier_scale: 50.0,
        ..VectorSpec::gaussian(VectorSize::Len(100_000), 11)
    };
    let v = generate(&spec).unwrap();
    let mut cfg = config(spec, 3);
    cfg.threshold = 5.0;
    let r = run_approach(&cfg, &v, &cpu(), Approach::EasyQuant, FitPath::Auto).unwrap();
    assert_eq!(r.outliers, Some(100));
    // Kept exactly: the error comes from the inliers only, far below Lloyd-Max's.
    let lm = run_approach(&cfg, &v, &cpu(), Approach::LloydMax, FitPath::Auto).unwrap();
    assert!(r.l2_over_n < lm.l2_over_n);

    // At 3 std the Gaussian tail counts too: compare with a direct count.
    cfg.threshold = 3.0;
    let r = run_approach(&cfg, &v, &cpu(), Approach::EasyQuant, FitPath::Auto).unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let direct = v
        .iter()
        .filter(|&&x| (x as f64 - mean).abs() > 3.0 * std)
        .count() as u64;
    let got = r.outliers.unwrap();
    // Mean and std are summed in a different order: allow a value on the boundary.
    assert!(got.abs_diff(direct) <= 1, "{got} vs {direct}");
    assert!(got >= 100);
}

/// Every available backend (the CPU through the trait included) against the
/// CPU fast path: levels to 1e-5 relative, codes exactly.
#[test]
fn backends_agree_with_the_cpu() {
    let spec = VectorSpec {
        distribution: Distribution::GaussianOutliers,
        ..VectorSpec::gaussian(VectorSize::Len(150_011), 5)
    };
    let v = generate(&spec).unwrap();
    let mut cfg = config(spec, 3);
    cfg.sample_size = 60_000;
    let reference = cpu();
    let mut backends = backend::available();
    assert!(!backends.is_empty());
    backends.push(cpu());
    for b in &backends {
        for a in [
            Approach::UniformOptimal,
            Approach::LloydMax,
            Approach::EasyQuant,
        ] {
            let want = fit_levels(&cfg, &v, &reference, a, FitPath::Auto).unwrap();
            let got = fit_levels(&cfg, &v, b, a, FitPath::Device).unwrap();
            assert_eq!(want.fit.levels.len(), got.fit.levels.len());
            for (x, y) in want.fit.levels.iter().zip(&got.fit.levels) {
                let rel = (x - y).abs() as f64 / x.abs().max(1e-3) as f64;
                assert!(rel <= 1e-5, "{} {a}: {x} vs {y}", b.kind());
            }
            let c_ref = assign_codes(reference.as_ref(), &v, &want.fit.levels).unwrap();
            let c_dev = assign_codes(b.as_ref(), &v, &want.fit.levels).unwrap();
            assert_eq!(c_ref.len(), v.len());
            let diff = c_ref.iter().zip(&c_dev).filter(|(x, y)| x != y).count();
            assert_eq!(diff, 0, "{} {a}: {diff} codes differ", b.kind());
        }
    }
}

#[test]
fn sorted_path_cells_are_exact_counts() {
    let spec = VectorSpec::gaussian(VectorSize::Len(4097), 2);
    let v = generate(&spec).unwrap();
    let mut s = SortedSample::new(v.clone()).unwrap();
    let u = fit::uniform_optimal(&mut s, 16, IterOptions::default()).unwrap();
    let codes = assign_codes(cpu().as_ref(), &v, &u.levels).unwrap();
    let mut counts = vec![0u64; 16];
    for c in codes {
        counts[c as usize] += 1;
    }
    let (_, got) = fit::CellStats::cells(&mut s, &u.levels).unwrap();
    assert_eq!(counts, got);
}

fn quantscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quantscope"))
        .arg("vector")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_flags_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("out");
    let save_s = save.to_str().unwrap();
    for (flags, expect) in [
        (vec!["--bits", "0"], "bits"),
        (vec!["--bits", "9"], "bits"),
        (vec!["--size", "0"], "size"),
        (vec!["--size", "huge"], "size"),
        (vec!["--threshold", "0"], "threshold"),
        (vec!["--threshold", "-2"], "threshold"),
        (vec!["--backend", "tpu"], "backend"),
        (vec!["--approach", "magic"], "approach"),
        (vec!["--distribution", "cauchy"], "distribution"),
        (vec!["--sample-size", "0"], "sample-size"),
        (vec!["--outlier-rate", "2"], "outlier rate"),
    ] {
        let mut args = flags.clone();
        args.extend(["--save-dir", save_s]);
        let out = quantscope(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} succeeded");
        assert!(err.contains(expect), "{flags:?}: {err}");
        assert!(!save.exists(), "{flags:?} wrote {}", save.display());
    }
}

#[test]
fn cli_small_run_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("res");
    let save_s = save.to_str().unwrap();
    let out = quantscope(&["--size", "small", "--backend", "cpu", "--save-dir", save_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = quantscope(&[
        "--size",
        "small",
        "--backend",
        "cpu",
        "--save-dir",
        save_s,
        "--json",
        "--no-plots",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["config"]["bits"], 3);

    let txt = std::fs::read_to_string(save.join("results.txt")).unwrap();
    assert!(txt.starts_with("Vector Size: small___multiprocess: "));
    assert!(txt.contains("Vector Size: small___multiprocess: False__device: cpu"));
    for title in [
        "Uniform-Fixed",
        "Uniform-Optimal",
        "Lloyd-Max",
        "DP-Optimal",
        "EasyQuant",
    ] {
        assert!(
            txt.contains(&format!("{title} Quantization:\nL2 Norm: ")),
            "{title}"
        );
    }
    assert!(txt.contains("Latency: ") && txt.contains(" seconds\n"));
    assert_eq!(txt.matches(&"-".repeat(60)).count(), 2);

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(save.join("results.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let results = runs[0]["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[0]["levels"].as_array().unwrap().len() == 8);
    for f in [
        "histogram_lloyd-max_small.png",
        "original_vs_quantized_easyquant_small.png",
    ] {
        let bytes = std::fs::read(save.join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f}");
    }
}

#[test]
fn unavailable_backend_named_alone_is_an_error() {
    for kind in [backend::BackendKind::Wgpu, backend::BackendKind::Cuda] {
        if backend::open(kind).is_ok() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let save = dir.path().join("o");
        let out = quantscope(&[
            "--backend",
            kind.name(),
            "--save-dir",
            save.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(kind.name()), "{err}");
        assert!(!save.exists());
    }
}
