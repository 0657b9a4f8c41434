//! GPTQ and AWQ: accuracy against round-to-nearest on held-out activations,
//! exactness on representable weights, odd shapes, calibration errors, and
//! the produced q4 matrices running on the CPU backend.

use half::f16;
use quantscope::backend::cpu::CpuBackend;
use quantscope::backend::Backend;
use quantscope::format::{
    pack_plain, pack_q4, FormatKind, GroupSize, Matrix, Packed, QuantizedMatrix, Q4,
};
use quantscope::metrics::nmse;
use quantscope::quant::awq::{awq, AwqConfig};
use quantscope::quant::calib::{load_safetensors_bytes, CalibrationSet};
use quantscope::quant::gptq::{gptq, GptqConfig};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

// Output NMSE of each method as a fraction of RTN's on held-out rows.
// 1024x1024, int4 g128, built-in activations: measured GPTQ 0.128,
// act-order 0.117, AWQ 0.137 (docs/GPTQ_AWQ.md). GPTQ gets about 1.5x
// allowance (without its lazy batch updates it measured 0.81). AWQ's
// clipping alone, without the scale search, already reaches 0.186, so its
// bound sits between the two.
const GPTQ_VS_RTN: f64 = 0.2;
const GPTQ_ACT_VS_RTN: f64 = 0.2;
const AWQ_VS_RTN: f64 = 0.16;
// 300x333 with 600 calibration rows, groups 32, 64, 128 and row: measured
// GPTQ 0.447-0.469 (blocks 128 and 50), AWQ 0.452-0.509 (0.524-0.605
// without the scale search).
const ODD_GPTQ_VS_RTN: f64 = 0.6;
const ODD_AWQ_VS_RTN: f64 = 0.65;

fn gaussian_weights(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // Per-row spread and a few heavy-tailed entries, like trained layers.
    let data = (0..rows)
        .flat_map(|_| {
            let row_scale = 0.02 * (0.3 * rng.sample::<f32, _>(StandardNormal)).exp();
            (0..cols)
                .map(|_| {
                    let v: f32 = rng.sample(StandardNormal);
                    let tail = if rng.random::<f32>() < 0.002 {
                        4.0
                    } else {
                        1.0
                    };
                    row_scale * v * tail
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Matrix::from_vec(rows, cols, data).unwrap()
}

/// `Y = X · Wᵀ` through the CPU backend, f32 activations (the default
/// backend rounds a q4 GEMM's activations to int8: the quantizers are
/// compared on their weights alone).
fn run_cpu(m: &QuantizedMatrix, x: &Matrix) -> Vec<f32> {
    let cpu = CpuBackend::exact();
    let h = cpu.upload(m).unwrap();
    let y = cpu.matmul(&h, x.data(), x.rows()).unwrap();
    cpu.free(h).unwrap();
    y
}

/// The backend's output equals `X · dequantize()ᵀ` (f64 reference) on a few rows.
fn assert_backend_matches_dequantized(m: &QuantizedMatrix, x: &Matrix) {
    let rows = x.rows().min(8);
    let xs = Matrix::from_vec(rows, x.cols(), x.data()[..rows * x.cols()].to_vec()).unwrap();
    let y = run_cpu(m, &xs);
    let w = m.dequantize();
    let mut want = vec![0.0f64; rows * m.rows()];
    for t in 0..rows {
        for r in 0..m.rows() {
            want[t * m.rows() + r] = xs
                .row(t)
                .iter()
                .zip(w.row(r))
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
        }
    }
    let e = quantscope::metrics::nmse_f64(&want, &y);
    assert!(e < 1e-9, "CPU backend vs X·dequantize()ᵀ: NMSE {e}");
}

fn output_nmse(reference: &[f32], m: &QuantizedMatrix, x: &Matrix) -> f64 {
    nmse(reference, &run_cpu(m, x))
}

#[test]
fn gptq_and_awq_beat_rtn_on_held_out_activations() {
    let (rows, cols) = (1024, 1024);
    let w = gaussian_weights(rows, cols, 7);
    let set = CalibrationSet::synthetic(cols, 2048, 512, 11).unwrap();
    let reference = run_cpu(&pack_plain(&w, FormatKind::F32).unwrap(), &set.eval);
    let group = GroupSize::Cols(128);

    let rtn = pack_q4(&w, group).unwrap();
    let mut steps = 0;
    let g = gptq(&w, &set.calib, &GptqConfig::default(), &mut |_, _| {
        steps += 1
    })
    .unwrap();
    assert!(steps > 1, "progress was reported");
    let a = awq(&w, &set.calib, &AwqConfig::default(), &mut |_, _| {}).unwrap();
    let g_act = gptq(
        &w,
        &set.calib,
        &GptqConfig {
            act_order: true,
            ..GptqConfig::default()
        },
        &mut |_, _| {},
    )
    .unwrap();

    let e_rtn = output_nmse(&reference, &rtn, &set.eval);
    let e_gptq = output_nmse(&reference, &g.matrix, &set.eval);
    let e_gptq_act = output_nmse(&reference, &g_act.matrix, &set.eval);
    let e_awq = output_nmse(&reference, &a.matrix, &set.eval);
    println!("1024x1024 int4 g128, output NMSE on 512 held-out rows:");
    println!("  RTN            {e_rtn:.4e}");
    println!("  GPTQ           {e_gptq:.4e}");
    println!("  GPTQ act-order {e_gptq_act:.4e}");
    println!(
        "  AWQ            {e_awq:.4e}  (alpha {}, mean clip {:.3})",
        a.report.alpha, a.report.mean_clip_ratio
    );
    println!(
        "  ratios to RTN: GPTQ {:.4}, act-order {:.4}, AWQ {:.4}",
        e_gptq / e_rtn,
        e_gptq_act / e_rtn,
        e_awq / e_rtn
    );
    // The gains docs/GPTQ_AWQ.md reports, with the allowances above.
    assert!(
        e_gptq <= GPTQ_VS_RTN * e_rtn,
        "GPTQ {e_gptq} vs RTN {e_rtn}"
    );
    assert!(
        e_gptq_act <= GPTQ_ACT_VS_RTN * e_rtn,
        "GPTQ act-order {e_gptq_act} vs RTN {e_rtn}"
    );
    assert!(e_awq <= AWQ_VS_RTN * e_rtn, "AWQ {e_awq} vs RTN {e_rtn}");
    // The outlier input channels call for scaling: the search must leave
    // alpha 0 (plain RTN scales; measured alpha 0.35).
    assert!(a.report.alpha > 0.0, "AWQ kept alpha 0");
    assert!(a.report.scaled_error < a.report.rtn_error, "{:?}", a.report);

    // Plain q4 layout: same group size, AWQ alone carries an activation scale.
    for m in [&g.matrix, &g_act.matrix, &a.matrix] {
        assert_eq!(m.kind(), FormatKind::Q4);
        assert_eq!(m.group(), group);
        assert_backend_matches_dequantized(m, &set.eval);
    }
    assert!(g.matrix.act_scale().is_none());
    assert!(a.matrix.act_scale().is_some());
}

/// A q4 matrix whose every group uses both code 0 and code 15, so that the
/// min/max rule recovers exactly its scale and zero point.
fn exact_grid(rows: usize, cols: usize, glen: usize, seed: u64) -> QuantizedMatrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let gpr = cols.div_ceil(glen);
    let words = FormatKind::Q4.row_stride_bytes(cols) / 4;
    let mut codes = vec![0u32; rows * words];
    let mut scales = vec![f16::ZERO; rows * gpr];
    let mut zeros = vec![0u8; rows * gpr];
    for r in 0..rows {
        for g in 0..gpr {
            scales[r * gpr + g] = f16::from_f32(0.002 + 0.01 * rng.random::<f32>());
            zeros[r * gpr + g] = rng.random_range(0..16u8);
            let c0 = g * glen;
            let c1 = (c0 + glen).min(cols);
            for c in c0..c1 {
                let q: u32 = match c - c0 {
                    0 => 0,
                    1 => 15,
                    _ => rng.random_range(0..16u32),
                };
                codes[r * words + c / 8] |= q << (4 * (c % 8));
            }
        }
    }
    QuantizedMatrix::new(
        rows,
        cols,
        GroupSize::Cols(glen),
        Packed::Q4(Q4 {
            scales,
            zeros,
            codes,
        }),
    )
    .unwrap()
}

#[test]
fn gptq_keeps_exactly_representable_weights() {
    for (cols, glen, act_order) in [(300, 32, false), (300, 64, true), (256, 128, false)] {
        let grid = exact_grid(48, cols, glen, cols as u64);
        let w = grid.dequantize();
        let set = CalibrationSet::synthetic(cols, 400, 8, 3).unwrap();
        let cfg = GptqConfig {
            group: GroupSize::Cols(glen),
            act_order,
            ..GptqConfig::default()
        };
        let out = gptq(&w, &set.calib, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(
            out.matrix.dequantize(),
            w,
            "cols {cols} g{glen} act_order {act_order}"
        );
        assert_eq!(out.matrix.packed(), grid.packed());
        assert_eq!(out.report.proxy_loss, 0.0);
    }
}

#[test]
fn odd_shapes_and_group_sizes_work() {
    let (rows, cols) = (300, 333);
    let w = gaussian_weights(rows, cols, 5);
    let set = CalibrationSet::synthetic(cols, 600, 128, 5).unwrap();
    let reference = run_cpu(&pack_plain(&w, FormatKind::F32).unwrap(), &set.eval);
    for group in [
        GroupSize::Cols(32),
        GroupSize::Cols(64),
        GroupSize::Cols(128),
        GroupSize::Row,
    ] {
        let rtn = output_nmse(&reference, &pack_q4(&w, group).unwrap(), &set.eval);
        for (block, act_order) in [(128, false), (50, true)] {
            let cfg = GptqConfig {
                group,
                block_size: block,
                act_order,
                ..GptqConfig::default()
            };
            let g = gptq(&w, &set.calib, &cfg, &mut |_, _| {}).unwrap();
            assert_eq!((g.matrix.rows(), g.matrix.cols()), (rows, cols));
            let e = output_nmse(&reference, &g.matrix, &set.eval);
            println!("GPTQ g{group} block {block}: {:.4} of RTN", e / rtn);
            assert!(
                e.is_finite() && e <= ODD_GPTQ_VS_RTN * rtn,
                "GPTQ g{group} block {block}: {e} vs RTN {rtn}"
            );
        }
        let cfg = AwqConfig {
            group,
            ..AwqConfig::default()
        };
        let a = awq(&w, &set.calib, &cfg, &mut |_, _| {}).unwrap();
        let e = output_nmse(&reference, &a.matrix, &set.eval);
        println!("AWQ g{group}: {:.4} of RTN", e / rtn);
        assert!(
            e.is_finite() && e <= ODD_AWQ_VS_RTN * rtn,
            "AWQ g{group}: {e} vs RTN {rtn}"
        );
        assert!(a.report.final_error <= a.report.rtn_error * 1.0001);
        assert_backend_matches_dequantized(&a.matrix, &set.eval);
    }
}

#[test]
fn dead_input_columns_are_handled() {
    let (rows, cols) = (64, 96);
    let w = gaussian_weights(rows, cols, 9);
    let set = CalibrationSet::synthetic(cols, 200, 8, 9).unwrap();
    let mut x = set.calib.clone().into_vec();
    for row in x.chunks_mut(cols) {
        row[5] = 0.0;
        row[70] = 0.0;
    }
    let x = Matrix::from_vec(200, cols, x).unwrap();
    let g = gptq(&w, &x, &GptqConfig::default(), &mut |_, _| {}).unwrap();
    assert_eq!(g.report.dead_columns, 2);
    let d = g.matrix.dequantize();
    assert!(d.data().iter().all(|v| v.is_finite()));
    assert!((0..rows).all(|r| d.row(r)[5] == 0.0 && d.row(r)[70] == 0.0));
    let a = awq(&w, &x, &AwqConfig::default(), &mut |_, _| {}).unwrap();
    assert!(a.matrix.dequantize().data().iter().all(|v| v.is_finite()));
}

#[test]
fn calibration_width_mismatch_is_a_clear_error() {
    let w = gaussian_weights(300, 300, 1);
    let x = CalibrationSet::synthetic(333, 64, 8, 1).unwrap().calib;
    let e = gptq(&w, &x, &GptqConfig::default(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("333") && e.contains("300"), "{e}");
    let e = awq(&w, &x, &AwqConfig::default(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("333") && e.contains("300"), "{e}");
}

#[test]
fn safetensors_calibration_loading() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let good: Vec<u8> = (0..6 * 4)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let mut nan = good.clone();
    nan[4 * 9..4 * 10].copy_from_slice(&f32::NAN.to_le_bytes());
    let ints: Vec<u8> = (0..6 * 4).flat_map(|i: i32| i.to_le_bytes()).collect();
    let halfs: Vec<u8> = (0..6 * 4)
        .flat_map(|i| f16::from_f32(i as f32).to_le_bytes())
        .collect();
    let bytes = safetensors::serialize(
        [
            (
                "l.weight",
                TensorView::new(Dtype::F32, vec![6, 4], &good).unwrap(),
            ),
            (
                "l3.weight",
                TensorView::new(Dtype::F32, vec![2, 3, 4], &good).unwrap(),
            ),
            (
                "h.weight",
                TensorView::new(Dtype::F16, vec![6, 4], &halfs).unwrap(),
            ),
            (
                "nan.weight",
                TensorView::new(Dtype::F32, vec![6, 4], &nan).unwrap(),
            ),
            (
                "int.weight",
                TensorView::new(Dtype::I32, vec![6, 4], &ints).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let m = load_safetensors_bytes(&bytes, "c.safetensors", "l.weight", 4).unwrap();
    assert_eq!((m.rows(), m.cols()), (6, 4));
    assert_eq!(m.row(1), &[2.0, 2.5, 3.0, 3.5]);
    let m3 = load_safetensors_bytes(&bytes, "c.safetensors", "l3.weight", 4).unwrap();
    assert_eq!(m3, m);
    let mh = load_safetensors_bytes(&bytes, "c.safetensors", "h.weight", 4).unwrap();
    assert_eq!(mh.row(5), &[20.0, 21.0, 22.0, 23.0]);

    let err = |name: &str, cols: usize| {
        load_safetensors_bytes(&bytes, "c.safetensors", name, cols)
            .unwrap_err()
            .to_string()
    };
    let e = err("missing.weight", 4);
    assert!(
        e.contains("missing.weight") && e.contains("l.weight"),
        "{e}"
    );
    let e = err("l.weight", 8);
    assert!(e.contains("4 wide") && e.contains("8 input columns"), "{e}");
    let e = err("int.weight", 4);
    assert!(e.contains("I32") && e.contains("float"), "{e}");
    let e = err("nan.weight", 4);
    assert!(e.contains("NaN") && e.contains("row 2, column 1"), "{e}");
    let e = load_safetensors_bytes(b"not a file", "x.safetensors", "l.weight", 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.safetensors"), "{e}");
}

#[test]
fn held_out_split_of_loaded_activations() {
    let m = Matrix::from_vec(10, 2, (0..20).map(|v| v as f32).collect()).unwrap();
    let set = CalibrationSet::split(
        m,
        0.25,
        quantscope::quant::calib::CalibSource::Synthetic { seed: 0 },
    )
    .unwrap();
    assert_eq!((set.calib.rows(), set.eval.rows()), (7, 3));
    assert_eq!(set.eval.row(0), &[14.0, 15.0]);
}
