//! The CPU backend through the `Backend` trait: every format against an f64
//! reference computed from the dequantized weights.

mod common;

use quantscope::backend::cpu::{CpuBackend, GemvActivations};
use quantscope::backend::{Backend, RtnSpec};
use quantscope::format::{FormatKind, GroupSize, Matrix, QuantizedMatrix};
use quantscope::metrics::nmse_f64;
use quantscope::quant::{quantize, QuantConfig, Scheme};

fn all_formats(w: &Matrix, group: GroupSize) -> Vec<QuantizedMatrix> {
    let mut out = Vec::new();
    for s in [
        Scheme::None(FormatKind::F32),
        Scheme::None(FormatKind::F16),
        Scheme::None(FormatKind::Bf16),
        Scheme::Int8,
        Scheme::Int4,
        Scheme::Nf4,
        Scheme::EasyQuant4,
    ] {
        let mut cfg = QuantConfig::new(s);
        cfg.group = group;
        out.push(quantize(w, &cfg).unwrap());
    }
    let scale: Vec<f32> = (0..w.cols()).map(|c| 0.5 + (c % 7) as f32 * 0.25).collect();
    let q8 = out[3].clone().with_act_scale(scale).unwrap();
    out.push(q8);
    out
}

#[test]
fn matmul_matches_f64_reference_for_every_format() {
    // The exact backend (f32 activations everywhere) is the reference-grade one;
    // the default one quantizes GEMV activations to int8 for q8 / q4 / lut4,
    // and GEMM activations for q4 (a loose 2.5e-4 here; tests/cpu_kernels.rs
    // bounds it at 1.25x the computed rounding error of the activations).
    let cpu = CpuBackend::exact();
    let fast = CpuBackend::new();
    let all8 = CpuBackend::with_gemv_activations(GemvActivations::Int8All);
    for &(batch, cols, rows, group) in &[
        (1usize, 4096usize, 4096usize, GroupSize::Cols(128)),
        (7, 1000, 333, GroupSize::Cols(64)),
        (64, 512, 512, GroupSize::Cols(32)),
        (3, 45, 17, GroupSize::Row),
    ] {
        let w = common::gaussian_with_outliers(rows, cols, 0.002, 9.0, (rows * cols) as u64);
        let x = common::uniform(batch * cols, batch as u64 + 99);
        for q in all_formats(&w, group) {
            let reference = common::reference_matmul(q.dequantize().data(), rows, cols, &x, batch);
            let h = cpu.upload(&q).unwrap();
            let y = cpu.matmul(&h, &x, batch).unwrap();
            let e = nmse_f64(&reference, &y);
            assert!(
                e < 1e-10,
                "{} {batch}x{cols}·{cols}x{rows}: NMSE {e:e}",
                q.label()
            );
            let hf = fast.upload(&q).unwrap();
            let yf = fast.matmul(&hf, &x, batch).unwrap();
            let ef = nmse_f64(&reference, &yf);
            let int8_act = if batch < 8 {
                q.kind().is_grouped()
            } else {
                matches!(q.kind(), FormatKind::Q4 | FormatKind::Lut4)
            };
            let bound = if int8_act { 2.5e-4 } else { 1e-10 };
            assert!(ef < bound, "{} default backend: NMSE {ef:e}", q.label());
            fast.free(hf).unwrap();
            // Int8All: every grouped format rounds, the q8 GEMM included.
            let ha = all8.upload(&q).unwrap();
            let ya = all8.matmul(&ha, &x, batch).unwrap();
            let ea = nmse_f64(&reference, &ya);
            let bound = if q.kind().is_grouped() { 2.5e-4 } else { 1e-10 };
            assert!(ea < bound, "{} Int8All backend: NMSE {ea:e}", q.label());
            if q.kind() == FormatKind::Q8 && batch >= 8 {
                // It does round there: not the f32-activation product.
                assert!(ea > 1e-8, "{} Int8All GEMM: NMSE {ea:e}", q.label());
            }
            all8.free(ha).unwrap();
            let deq = cpu.dequantize(&h).unwrap();
            assert_eq!(deq, q.dequantize().into_vec(), "{}", q.label());
            cpu.free(h).unwrap();
        }
    }
    assert_eq!(cpu.memory().live_bytes, 0);
    assert!(cpu.memory().peak_bytes > 0);
}

#[test]
fn device_quantize_is_the_canonical_packer() {
    let cpu = CpuBackend::new();
    let w = common::gaussian(33, 200, 3);
    for kind in [FormatKind::Q8, FormatKind::Q4] {
        let q = cpu
            .quantize(
                &w,
                RtnSpec {
                    kind,
                    group: GroupSize::Cols(64),
                },
            )
            .unwrap();
        assert_eq!(q.kind(), kind);
    }
    assert!(cpu
        .quantize(
            &w,
            RtnSpec {
                kind: FormatKind::F16,
                group: GroupSize::Row
            }
        )
        .is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cpu = CpuBackend::new();
    let q = quantize(&common::gaussian(4, 64, 1), &QuantConfig::new(Scheme::Int8)).unwrap();
    let h = cpu.upload(&q).unwrap();
    assert!(cpu.matmul(&h, &[0.5; 63], 1).is_err());
    assert!(cpu.matmul(&h, &[], 0).is_err());
    let x = vec![0.5f32; 64];
    assert_eq!(cpu.matmul(&h, &x, 1).unwrap().len(), 4);
    cpu.free(h).unwrap();
    assert!(quantscope::backend::open(quantscope::backend::BackendKind::Cpu).is_ok());
}

#[test]
fn assign_levels_counts_and_sums() {
    let cpu = CpuBackend::new();
    let v = common::uniform(10_007, 5);
    let m = Matrix::from_vec(1, v.len(), v.clone()).unwrap();
    let h = cpu
        .upload(&quantscope::format::pack_plain(&m, FormatKind::F32).unwrap())
        .unwrap();
    let levels = [-0.75f32, -0.25, 0.25, 0.75];
    let a = cpu.assign_levels(&h, &levels, true).unwrap();
    assert_eq!(a.counts.iter().sum::<u64>(), v.len() as u64);
    for (i, &x) in v.iter().enumerate() {
        let best = (0..4)
            .min_by(|&p, &q| (x - levels[p]).abs().total_cmp(&(x - levels[q]).abs()))
            .unwrap();
        assert_eq!(a.codes[i] as usize, best);
    }
    let s: f64 = v.iter().filter(|&&x| x <= -0.5).map(|&x| x as f64).sum();
    assert!((a.sums[0] - s).abs() < 1e-9);
}

#[test]
fn matmul_entry_points_by_hand() {
    use half::f16;
    use quantscope::backend::cpu::{
        matmul, matmul_into, matmul_opts, matmul_outliers_into, GemvActivations, KernelPath,
    };
    use quantscope::format::{pack_plain, Outliers};
    // W: 2 x 32 ones plus outliers (0, 1) = +2 and (1, 31) = -1, times the
    // activation scale 1 + c. X: row b is all b + 1. Every value is exact in
    // f32: sum of (1 + c) over 32 columns is 528.
    let ones = Matrix::from_vec(2, 32, vec![1.0; 64]).unwrap();
    let o = Outliers::from_rows(&[
        vec![(1, f16::from_f32(2.0))],
        vec![(31, f16::from_f32(-1.0))],
    ]);
    let m = pack_plain(&ones, FormatKind::F32)
        .unwrap()
        .with_outliers(o)
        .unwrap()
        .with_act_scale((0..32).map(|c| 1.0 + c as f32).collect())
        .unwrap();
    let x: Vec<f32> = (0..2).flat_map(|b| vec![b as f32 + 1.0; 32]).collect();
    let want = |b: usize| {
        let s = b as f32 + 1.0;
        [s * 528.0 + s * 2.0 * 2.0, s * 528.0 - s * 32.0]
    };
    for batch in [1usize, 2] {
        let xb = &x[..batch * 32];
        let expect: Vec<f32> = (0..batch).flat_map(want).collect();
        assert_eq!(matmul(&m, xb, batch).unwrap(), expect, "batch {batch}");
        let mut y = vec![f32::NAN; batch * 2];
        matmul_into(&m, xb, batch, &mut y).unwrap();
        assert_eq!(y, expect);
        for act in [GemvActivations::F32, GemvActivations::Int8] {
            let mut y = vec![f32::NAN; batch * 2];
            matmul_opts(KernelPath::Scalar, act, &m, xb, batch, &mut y).unwrap();
            assert_eq!(y, expect, "{act:?}");
        }
        // The sparse part alone adds X·diag(a)·Oᵀ into y.
        let mut y = vec![10.0f32; batch * 2];
        matmul_outliers_into(KernelPath::Scalar, &m, xb, batch, &mut y).unwrap();
        let alone: Vec<f32> = (0..batch)
            .flat_map(|b| {
                let s = b as f32 + 1.0;
                [10.0 + 4.0 * s, 10.0 - 32.0 * s]
            })
            .collect();
        assert_eq!(y, alone);
    }
    // Without outliers the sparse part adds nothing.
    let plain = pack_plain(&ones, FormatKind::F32).unwrap();
    let mut y = vec![3.0f32; 2];
    matmul_outliers_into(KernelPath::Scalar, &plain, &x[..32], 1, &mut y).unwrap();
    assert_eq!(y, [3.0, 3.0]);
    // Lengths and batch are checked by every entry point.
    let mut y2 = vec![0.0f32; 2];
    let e = matmul_into(&m, &x[..31], 1, &mut y2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input has 31 values, expected batch 1 x 32 columns"),
        "{e}"
    );
    let mut y3 = vec![0.0f32; 3];
    let e = matmul_into(&m, &x[..32], 1, &mut y3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("output has 3 values, expected batch 1 x 2 rows"),
        "{e}"
    );
    let e = matmul_outliers_into(KernelPath::Scalar, &m, &[], 0, &mut [])
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch must be at least 1"), "{e}");
    assert!(matmul_outliers_into(KernelPath::Scalar, &m, &x[..32], 1, &mut y3).is_err());
    assert!(matmul(&m, &x, 1).is_err());
}
