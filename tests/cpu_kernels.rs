//! Every CPU kernel path (scalar, AVX2, AVX-512, NEON where the CPU has
//! them) against the scalar path and an f64 reference computed from
//! `dequantize()`, on every format, odd shapes, grouped and whole-row
//! scales, outliers and activation scales.
//!
//! No silent skips: a path this build target has but this CPU lacks prints
//! one line; with `CI=true` it prints `SKIP-IN-CI: ...` and fails when the
//! CI machine class is expected to have it (see [`expected_in_ci`]).

mod common;

use std::sync::Once;

use common::matmul_check::int8_rounding_nmse;
use half::f16;
use quantscope::backend::cpu::{
    bandwidth, matmul_bias, matmul_opts, matmul_outliers_into, matmul_with, GemvActivations,
    KernelPath,
};
use quantscope::format::{
    pack_lut4, pack_plain, pack_q4, pack_q8, FormatKind, GroupSize, Matrix, Outliers, Packed,
    QuantizedMatrix, NF4_CODEBOOK,
};
use quantscope::metrics::{nmse, nmse_f64};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Paths that keep f32 activations: NMSE against the f64 reference.
const EXACT_NMSE: f64 = 1e-10;
/// SIMD path against the scalar path: f32 rounding only.
const PATH_NMSE: f64 = 1e-9;

/// q8 / q4 / lut4 GEMV with int8 activations (blocks of 32 columns,
/// `dx = absmax / 127`, round to nearest): NMSE against the f64 reference
/// at most this factor times the NMSE the rounding adds on the case's own
/// data (`int8_rounding_nmse`, the rounding done in f64 by its definition;
/// lut4 with its codebook on 256 levels as well, `lut4_rounded_dense`).
/// Expected: ~2.3e-5 for Gaussian X (error uniform in ±dx/2, variance
/// `dx²/12`); truncating instead of rounding is 4x that (`dx²/3`).
/// Measured (the 180 int8 cases per format of this file: scalar, avx2 and
/// avx512 paths on an AVX-512 Xeon), measured / computed: q8 0.9995 ..
/// 1.0004 (NMSE 3.4e-6 .. 7.1e-5), q4 0.9997 .. 1.0006 (2.7e-6 .. 6.2e-5),
/// lut4 0.9999 .. 1.0006 (6.5e-6 .. 1.4e-4): f32 noise only. Bounds 1.25
/// (the old fixed 2.5e-4 let a truncating quantizer pass everywhere).
fn int8_act_factor(kind: FormatKind) -> f64 {
    match kind {
        FormatKind::Q8 | FormatKind::Q4 | FormatKind::Lut4 => 1.25,
        k => panic!("{k} does not take int8 activations"),
    }
}

/// Whether CI's machine class is expected to run `path`: CI is an x86-64
/// Xeon with AVX2 + FMA (+ F16C, every AVX2 Xeon has it), AVX-512 not
/// guaranteed (cloud instance types vary), and the aarch64 job runs under
/// qemu-user, whose default CPU has NEON with the dot-product extension.
/// `QUANTSCOPE_REQUIRE_CPU_PATHS` (a comma list of path names) adds paths
/// a particular runner must have, e.g. `avx512`.
fn expected_in_ci(path: KernelPath) -> bool {
    let extra = std::env::var("QUANTSCOPE_REQUIRE_CPU_PATHS").unwrap_or_default();
    if extra.split(',').any(|p| p.trim() == path.name()) {
        return true;
    }
    match path {
        KernelPath::Scalar => true,
        KernelPath::Avx2 => cfg!(target_arch = "x86_64"),
        KernelPath::Neon => cfg!(target_arch = "aarch64"),
        KernelPath::Avx512 => false,
    }
}

/// The kernel paths to test: every one this CPU supports. A path of this
/// build target that the CPU lacks is reported once on stderr; under
/// `CI=true` an expected one (see [`expected_in_ci`]) fails the test.
fn paths() -> Vec<KernelPath> {
    static REPORT: Once = Once::new();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let target_has = |p: KernelPath| match p {
        KernelPath::Scalar => true,
        KernelPath::Avx2 | KernelPath::Avx512 => cfg!(target_arch = "x86_64"),
        KernelPath::Neon => cfg!(target_arch = "aarch64"),
    };
    let missing: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|&p| target_has(p) && !p.is_supported())
        .collect();
    let required: Vec<KernelPath> = missing
        .iter()
        .copied()
        .filter(|&p| ci && expected_in_ci(p))
        .collect();
    REPORT.call_once(|| {
        for p in &missing {
            if required.contains(p) {
                eprintln!("SKIP-IN-CI: the {p} kernel path does not run: this CPU lacks it");
            } else {
                eprintln!("skipping the {p} kernel path: this CPU lacks it");
            }
        }
    });
    assert!(
        required.is_empty(),
        "CI=true and the CPU lacks kernel paths CI must test: {required:?}"
    );
    KernelPath::available()
}

fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let d = Normal::new(0.0f32, 1.0).unwrap();
    (0..n).map(|_| d.sample(&mut r)).collect()
}

fn weights(rows: usize, cols: usize, seed: u64) -> Matrix {
    Matrix::from_vec(rows, cols, gaussian(rows * cols, seed)).unwrap()
}

/// Every format and group size worth covering for this shape.
fn packings(w: &Matrix) -> Vec<QuantizedMatrix> {
    let mut v = vec![
        pack_plain(w, FormatKind::F32).unwrap(),
        pack_plain(w, FormatKind::F16).unwrap(),
        pack_plain(w, FormatKind::Bf16).unwrap(),
    ];
    for g in [
        GroupSize::Cols(32),
        GroupSize::Cols(64),
        GroupSize::Cols(96),
        GroupSize::Cols(128),
        GroupSize::Row,
    ] {
        v.push(pack_q8(w, g).unwrap());
        v.push(pack_q4(w, g).unwrap());
        v.push(pack_lut4(w, g, NF4_CODEBOOK).unwrap());
    }
    v
}

fn with_outliers(m: QuantizedMatrix, seed: u64) -> QuantizedMatrix {
    with_n_outliers(m, seed, 3)
}

/// Up to `n` outliers per row at random columns (row 1 gets none).
fn with_n_outliers(m: QuantizedMatrix, seed: u64, n: usize) -> QuantizedMatrix {
    let mut r = rng(seed);
    let (rows, cols) = (m.rows(), m.cols());
    let per_row: Vec<Vec<(u32, f16)>> = (0..rows)
        .map(|row| {
            let n = if row == 1 { 0 } else { n };
            let mut cs: Vec<u32> = (0..n).map(|_| r.random_range(0..cols as u32)).collect();
            cs.sort_unstable();
            cs.dedup();
            cs.into_iter()
                .map(|c| (c, f16::from_f32(r.random_range(-8.0..8.0))))
                .collect()
        })
        .collect();
    m.with_outliers(Outliers::from_rows(&per_row)).unwrap()
}

fn with_act_scale(m: QuantizedMatrix, seed: u64) -> QuantizedMatrix {
    let mut r = rng(seed);
    let s = (0..m.cols()).map(|_| r.random_range(0.25..4.0)).collect();
    m.with_act_scale(s).unwrap()
}

/// `Y = X · Wᵀ` in f64 from the effective weights.
fn reference(m: &QuantizedMatrix, x: &[f32], batch: usize) -> Vec<f64> {
    let w = m.dequantize();
    let (rows, cols) = (m.rows(), m.cols());
    let mut y = vec![0.0f64; batch * rows];
    for b in 0..batch {
        for r in 0..rows {
            let wr = w.row(r);
            y[b * rows + r] = (0..cols)
                .map(|c| wr[c] as f64 * x[b * cols + c] as f64)
                .sum();
        }
    }
    y
}

fn run(path: KernelPath, m: &QuantizedMatrix, x: &[f32], batch: usize) -> Vec<f32> {
    // Poison the output: every value must be written.
    let mut y = vec![f32::NAN; batch * m.rows()];
    matmul_with(path, m, x, batch, &mut y).unwrap();
    y
}

/// [`run`] with an explicit choice of activations.
fn run_act(
    path: KernelPath,
    act: GemvActivations,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; batch * m.rows()];
    matmul_opts(path, act, m, x, batch, &mut y).unwrap();
    y
}

/// lut4's dense weights as its int8 GEMV uses them: the codebook on 256
/// levels (`codebook[i] ≈ lo + step · u8[i]`, `lo`/`hi` the extremes of the
/// codebook and 0, `step = (hi - lo) / 255`, round to nearest), built here
/// from that definition; `None` for other formats.
fn lut4_rounded_dense(m: &QuantizedMatrix) -> Option<Matrix> {
    let Packed::Lut4(q) = m.packed() else {
        return None;
    };
    let lo = q.codebook.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = q.codebook.iter().fold(0.0f32, |a, &v| a.max(v));
    let step = (hi - lo) / 255.0;
    let mut rounded = q.clone();
    for v in rounded.codebook.iter_mut() {
        *v = lo + step * ((*v - lo) / step).round().clamp(0.0, 255.0);
    }
    let r = QuantizedMatrix::new(m.rows(), m.cols(), m.group(), Packed::Lut4(rounded))
        .expect("same shape");
    Some(r.dequantize())
}

/// Whether a matmul with `act` rounds the activations to int8, stated here
/// apart from the library: with `Int8` (the default) every q8 / q4 / lut4
/// GEMV (batch below 8) and the q4 / lut4 GEMM; with `Int8All` every q8 /
/// q4 / lut4 matmul; with `F32` none.
fn int8_activations(act: GemvActivations, m: &QuantizedMatrix, batch: usize) -> bool {
    match act {
        GemvActivations::F32 => false,
        GemvActivations::Int8All => m.kind().is_grouped(),
        GemvActivations::Int8 => {
            if batch < 8 {
                m.kind().is_grouped()
            } else {
                matches!(m.kind(), FormatKind::Q4 | FormatKind::Lut4)
            }
        }
    }
}

/// The activation choices whose products differ for `m` at `batch`: the
/// default, and `Int8All` where it rounds what the default keeps f32 (the
/// q8 GEMM). `F32` is checked inside [`check_act`].
fn acts(m: &QuantizedMatrix, batch: usize) -> Vec<GemvActivations> {
    let mut v = vec![GemvActivations::Int8];
    if int8_activations(GemvActivations::Int8All, m, batch)
        != int8_activations(GemvActivations::Int8, m, batch)
    {
        v.push(GemvActivations::Int8All);
    }
    v
}

fn check(m: &QuantizedMatrix, batch: usize, seed: u64) {
    for act in acts(m, batch) {
        check_act(act, m, batch, seed);
    }
}

fn check_act(act: GemvActivations, m: &QuantizedMatrix, batch: usize, seed: u64) {
    let x = gaussian(batch * m.cols(), seed);
    let want = reference(m, &x, batch);
    let scalar = run_act(KernelPath::Scalar, act, m, &x, batch);
    let int8_act = int8_activations(act, m, batch);
    let bound = if int8_act {
        let used = lut4_rounded_dense(m);
        int8_act_factor(m.kind()) * int8_rounding_nmse(m, used.as_ref(), &x, batch, 32)
    } else {
        EXACT_NMSE
    };
    for path in paths() {
        let got = if path == KernelPath::Scalar {
            scalar.clone()
        } else {
            run_act(path, act, m, &x, batch)
        };
        let what = format!(
            "{} {}x{} batch {batch} on {path} ({act:?})",
            m.label(),
            m.rows(),
            m.cols()
        );
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{what}: non-finite output"
        );
        let e = nmse_f64(&want, &got);
        if std::env::var("QUANTSCOPE_PRINT_MATMUL_ERRORS").is_ok_and(|v| v == "1") && int8_act {
            eprintln!(
                "{what}: int8-activation NMSE {e:.3e}, {:.5} x the rounding's",
                e / bound * int8_act_factor(m.kind())
            );
        }
        assert!(
            e <= bound,
            "{what}: NMSE {e:e} vs f64 reference (bound {bound:e})"
        );
        let p = nmse(&scalar, &got);
        assert!(p < PATH_NMSE, "{what}: NMSE {p:e} vs scalar path");
        if int8_act {
            // The exact GEMV (f32 activations) meets the exact bound.
            let mut y = vec![f32::NAN; batch * m.rows()];
            matmul_opts(path, GemvActivations::F32, m, &x, batch, &mut y).unwrap();
            let e = nmse_f64(&want, &y);
            assert!(e < EXACT_NMSE, "{what} with f32 activations: NMSE {e:e}");
        }
    }
}

#[test]
fn every_path_matches_reference_on_odd_shapes() {
    let shapes = [
        (37, 300),
        (19, 33),
        (16, 128),
        (5, 1000),
        (3, 4099),
        (32, 4160),
        (24, 8200),
    ];
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let w = weights(rows, cols, 10 + i as u64);
        for m in packings(&w) {
            for batch in [1, 3] {
                check(&m, batch, 100 + i as u64);
            }
        }
    }
}

/// Below 8 rows the CPU runs the GEMV once per activation row inside each
/// pass of weight rows: every row of a small batch is bit for bit the
/// product of that row alone, on every path, with and without outliers and
/// an activation scale (odd rows: a partial last pass).
#[test]
fn small_batch_rows_equal_single_rows() {
    let (rows, cols) = (37, 300);
    let w = weights(rows, cols, 31);
    let mut ms = packings(&w);
    ms.push(with_outliers(pack_q4(&w, GroupSize::Cols(32)).unwrap(), 32));
    ms.push(with_act_scale(
        pack_q8(&w, GroupSize::Cols(64)).unwrap(),
        33,
    ));
    for m in &ms {
        for batch in 2..8 {
            let x = gaussian(batch * cols, 300 + batch as u64);
            for path in paths() {
                let y = run(path, m, &x, batch);
                for b in 0..batch {
                    let one = run(path, m, &x[b * cols..(b + 1) * cols], 1);
                    let got = &y[b * rows..(b + 1) * rows];
                    assert!(
                        got.iter()
                            .zip(&one)
                            .all(|(a, c)| a.to_bits() == c.to_bits()),
                        "{} batch {batch} on {path}: row {b} differs from the row alone",
                        m.label()
                    );
                }
            }
        }
    }
}

/// Long rows (33 000 columns: the AVX-512 GEMV's next-pass prefetch runs
/// far ahead) read 4 rows per pass, with a partial last chunk and a partial
/// last pass (9 rows = 4 + 4 + 1).
#[test]
fn gemv_long_rows_several_rows_per_pass() {
    let w = weights(9, 33_000, 21);
    for m in packings(&w) {
        check(&m, 1, 22);
    }
}

#[test]
fn gemm_partial_batch_chunks_and_panels() {
    // 35 = two full 16-row chunks + a partial one; 29 rows = 2 panels + 5.
    let w = weights(29, 517, 7);
    for m in packings(&w) {
        check(&m, 35, 8);
    }
}

#[test]
fn gemm_spans_several_k_blocks_and_tasks() {
    let w = weights(200, 777, 9);
    for m in [
        pack_q4(&w, GroupSize::Cols(32)).unwrap(),
        pack_q8(&w, GroupSize::Row).unwrap(),
        pack_plain(&w, FormatKind::F16).unwrap(),
    ] {
        check(&m, 18, 10);
    }
}

/// Rows longer than the AVX2 driver takes (2048 columns) go through the
/// generic driver on AVX2 too: a full and a partial 16-row chunk, the
/// 8 x 8 transposes of X (nibble order for 4-bit formats), and a last K
/// block that ends 3 columns into a unit (2115 = 8 x 256 + 67).
#[test]
fn gemm_long_rows_on_every_driver() {
    let w = weights(13, 2115, 61);
    for m in packings(&w) {
        check(&m, 21, 62);
    }
}

/// More than one batch block (487 rows = two blocks of 240 + 7), K blocks
/// of 256 + a partial one (600 columns), a partial last panel (21 rows) and
/// the bias added on the first K block only: each value against the f64
/// reference plus the bias.
#[test]
fn gemm_batch_blocks_k_blocks_and_bias() {
    let (rows, cols, batch) = (21, 600, 487);
    let w = weights(rows, cols, 51);
    let bias = gaussian(rows, 52);
    let x = gaussian(batch * cols, 53);
    for m in packings(&w) {
        let mut want = reference(&m, &x, batch);
        for row in want.chunks_mut(rows) {
            for (o, &b) in row.iter_mut().zip(&bias) {
                *o += b as f64;
            }
        }
        let biased = |path, act| {
            let mut got = vec![f32::NAN; batch * rows];
            matmul_bias(path, act, &m, &x, batch, Some(&bias), &mut got).unwrap();
            got
        };
        for path in paths() {
            let got = biased(path, GemvActivations::F32);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{} on {path}: non-finite",
                m.label()
            );
            let e = nmse_f64(&want, &got);
            assert!(
                e <= EXACT_NMSE,
                "{} on {path}: NMSE {e:e} vs f64 reference + bias",
                m.label()
            );
            for act in [GemvActivations::Int8, GemvActivations::Int8All] {
                if !int8_activations(act, &m, batch) {
                    continue;
                }
                // int8 activations: the bias-free product within the
                // rounding bound, and the bias added to it exactly (up to
                // f32 addition).
                let mut plain = vec![f32::NAN; batch * rows];
                matmul_opts(path, act, &m, &x, batch, &mut plain).unwrap();
                let bound = int8_act_factor(m.kind())
                    * int8_rounding_nmse(&m, lut4_rounded_dense(&m).as_ref(), &x, batch, 32);
                let e = nmse_f64(&reference(&m, &x, batch), &plain);
                assert!(
                    e <= bound,
                    "{} on {path}, {act:?}: NMSE {e:e} (bound {bound:e})",
                    m.label()
                );
                let got = biased(path, act);
                for (i, (g, p)) in got.iter().zip(&plain).enumerate() {
                    let b = bias[i % rows];
                    assert!(
                        (g - (p + b)).abs() <= 1e-5 * (1.0 + p.abs() + b.abs()),
                        "{} on {path}, {act:?}: y[{i}] = {g} but product {p} + bias {b}",
                        m.label()
                    );
                }
            }
        }
    }
}

#[test]
fn outliers_and_act_scale_on_every_path() {
    let w = weights(23, 301, 11);
    for (i, m) in packings(&w).into_iter().enumerate() {
        let seed = 200 + i as u64;
        let o = with_outliers(m.clone(), seed);
        check(&o, 1, seed);
        check(&o, 4, seed);
        let a = with_act_scale(m.clone(), seed);
        check(&a, 1, seed);
        check(&a, 4, seed);
        let both = with_act_scale(with_outliers(m, seed), seed);
        check(&both, 1, seed);
        check(&both, 20, seed);
    }
}

/// Many outliers per row (full 16-wide gathers, a partial one, a row with
/// none), over several GEMV tasks and 4-row passes with a tail.
#[test]
fn many_outliers_per_row_on_every_path() {
    let w = weights(45, 700, 12);
    for (i, m) in packings(&w).into_iter().enumerate() {
        let seed = 300 + i as u64;
        let o = with_n_outliers(m, seed, 41);
        assert!(o.outliers().is_some_and(|o| o.nnz() > 30 * 44));
        check(&o, 1, seed);
        check(&o, 3, seed);
    }
}

/// The sparse part alone, on every path: `y(with outliers) - y(without)`
/// (the same dense part, so it cancels) against the f64 sum of the
/// outliers, for row lengths that make the SIMD steps start and end
/// anywhere: empty rows, rows shorter and longer than a step, rows that
/// fill the matrix, runs of rows inside one step.
#[test]
fn outlier_rows_of_every_length_on_every_path() {
    let (rows, cols) = (37, 300);
    let counts = [
        0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 0, 0, 5, 100, 299, 300, 2,
    ];
    let w = weights(rows, cols, 40);
    let mut r = rng(41);
    let lists: Vec<Vec<(u32, f16)>> = (0..rows)
        .map(|row| {
            let n = counts[row % counts.len()];
            // `n` distinct sorted columns.
            let mut cs: Vec<u32> = (0..cols as u32).collect();
            for i in 0..n {
                let j = r.random_range(i..cols);
                cs.swap(i, j);
            }
            let mut cs = cs[..n].to_vec();
            cs.sort_unstable();
            cs.into_iter()
                .map(|c| (c, f16::from_f32(r.random_range(-8.0..8.0))))
                .collect()
        })
        .collect();
    let o = Outliers::from_rows(&lists);
    for dense in [
        pack_q4(&w, GroupSize::Cols(32)).unwrap(),
        pack_q8(&w, GroupSize::Cols(64)).unwrap(),
        pack_plain(&w, FormatKind::F16).unwrap(),
    ] {
        let sparse = dense.clone().with_outliers(o.clone()).unwrap();
        // 19: more batch rows than one transposed block (16 / 8 lanes).
        for batch in [1, 3, 19] {
            let x = gaussian(batch * cols, 42 + batch as u64);
            for path in paths() {
                let with = run(path, &sparse, &x, batch);
                let without = run(path, &dense, &x, batch);
                // The sparse part alone, added to what `y` held.
                let y0 = gaussian(batch * rows, 43);
                let mut alone = y0.clone();
                matmul_outliers_into(path, &sparse, &x, batch, &mut alone).unwrap();
                for b in 0..batch {
                    for (row, list) in lists.iter().enumerate() {
                        let xb = &x[b * cols..(b + 1) * cols];
                        let (want, mag) = list.iter().fold((0.0f64, 0.0f64), |(s, m), &(c, v)| {
                            let t = v.to_f64() * xb[c as usize] as f64;
                            (s + t, m + t.abs())
                        });
                        let i = b * rows + row;
                        let got = with[i] as f64 - without[i] as f64;
                        let tol = 1e-5 * (mag + (with[i] as f64).abs() + 1.0);
                        assert!(
                            (got - want).abs() <= tol,
                            "{} batch {batch} on {path}, row {row} ({} outliers): {got} vs {want}",
                            dense.label(),
                            list.len()
                        );
                        let got = alone[i] as f64 - y0[i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (mag + (y0[i] as f64).abs() + 1.0),
                            "sparse part alone, batch {batch} on {path}, row {row}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn nan_input_gives_nan_output() {
    let w = weights(8, 100, 12);
    for m in packings(&w) {
        for batch in [1, 2, 9] {
            let mut x = gaussian(batch * 100, 13);
            x[40] = f32::NAN;
            for path in paths() {
                for act in [
                    GemvActivations::Int8,
                    GemvActivations::Int8All,
                    GemvActivations::F32,
                ] {
                    let y = run_act(path, act, &m, &x, batch);
                    assert!(
                        y[..8].iter().all(|v| v.is_nan()),
                        "{} batch {batch} on {path} ({act:?}): NaN input row must give NaN outputs",
                        m.label()
                    );
                    assert!(
                        y[8..].iter().all(|v| v.is_finite()),
                        "{} batch {batch} on {path} ({act:?}): other rows stay finite",
                        m.label()
                    );
                }
            }
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    let m = pack_q4(&weights(4, 64, 14), GroupSize::Cols(32)).unwrap();
    let mut y = vec![0.0; 4];
    assert!(matmul_with(KernelPath::Scalar, &m, &[0.0; 63], 1, &mut y).is_err());
    assert!(matmul_with(KernelPath::Scalar, &m, &[], 0, &mut []).is_err());
    let mut short = vec![0.0; 3];
    assert!(matmul_with(KernelPath::Scalar, &m, &[0.0; 64], 1, &mut short).is_err());
}

#[test]
fn kernel_path_names_round_trip() {
    for p in KernelPath::ALL {
        assert_eq!(p.name().parse::<KernelPath>().unwrap(), p);
    }
    assert!("sse9".parse::<KernelPath>().is_err());
    assert_eq!(KernelPath::available()[0], KernelPath::Scalar);
    assert!(KernelPath::best().is_supported());
}

/// The read-bandwidth probe's accounting (its rate is a measurement:
/// `cargo bench --bench cpu_kernels` prints it with the FMA rate): the bytes
/// it reports reading are the buffer it was asked for (rounded down to
/// whole u64, at least 64 MiB), and the rate is those bytes over the median.
#[test]
fn read_probe_counts_the_bytes_it_reads() {
    for (asked, moved) in [(1usize << 20, 64usize << 20), ((70 << 20) + 5, 70 << 20)] {
        let b = bandwidth::measure_read_bandwidth(asked);
        assert_eq!(b.bytes_moved, moved as u64, "asked {asked}: {b:?}");
        assert!(b.seconds.is_finite() && b.seconds > 0.0, "{b:?}");
        let rate = moved as f64 / b.seconds;
        assert!(
            (b.bytes_per_s - rate).abs() <= 1e-9 * rate,
            "rate {} is not bytes / seconds {rate}",
            b.bytes_per_s
        );
    }
}

/// Prints the int8-activation GEMV error per format on a larger matrix
/// (`cargo test --test cpu_kernels -- --ignored --nocapture`).
#[test]
#[ignore]
fn print_int8_activation_error() {
    let w = weights(256, 4096, 21);
    for g in [GroupSize::Cols(32), GroupSize::Cols(128)] {
        for m in [
            pack_q8(&w, g).unwrap(),
            pack_q4(&w, g).unwrap(),
            pack_lut4(&w, g, NF4_CODEBOOK).unwrap(),
        ] {
            let x = gaussian(4096, 22);
            let got = run(KernelPath::best(), &m, &x, 1);
            let e = nmse_f64(&reference(&m, &x, 1), &got);
            println!(
                "{:<12} GEMV NMSE vs f64 of dequantized weights: {e:.2e}",
                m.label()
            );
        }
    }
}

/// The fused bias (added while the GEMM writes `Y`, after the GEMV) gives
/// `matmul + bias` (to f32 rounding: with outliers the additions come in
/// another order) on every path, format, batch (1, 2, odd, more
/// than one batch block) and with outliers and an activation scale; a bias
/// of the wrong length is an error naming both lengths.
#[test]
fn fused_bias_is_matmul_plus_bias() {
    let (rows, cols) = (77, 100);
    let w = weights(rows, cols, 41);
    let bias = gaussian(rows, 42);
    let mats = [
        pack_plain(&w, FormatKind::F32).unwrap(),
        pack_q8(&w, GroupSize::Cols(32)).unwrap(),
        with_act_scale(
            with_outliers(pack_q4(&w, GroupSize::Cols(32)).unwrap(), 43),
            44,
        ),
        pack_lut4(&w, GroupSize::Row, NF4_CODEBOOK).unwrap(),
    ];
    for path in paths() {
        for m in &mats {
            for batch in [1, 2, 37, 300] {
                let x = gaussian(batch * cols, 45 + batch as u64);
                let mut want = vec![f32::NAN; batch * rows];
                matmul_opts(path, GemvActivations::F32, m, &x, batch, &mut want).unwrap();
                for row in want.chunks_mut(rows) {
                    for (o, b) in row.iter_mut().zip(&bias) {
                        *o += b;
                    }
                }
                let mut got = vec![f32::NAN; batch * rows];
                matmul_bias(
                    path,
                    GemvActivations::F32,
                    m,
                    &x,
                    batch,
                    Some(&bias),
                    &mut got,
                )
                .unwrap();
                let bad = got
                    .iter()
                    .zip(&want)
                    .position(|(g, w)| (g - w).abs() > 1e-5 * w.abs().max(1.0) || g.is_nan());
                assert!(
                    bad.is_none(),
                    "{path} {:?} batch {batch}: value {} is {} but matmul + bias is {}",
                    m.kind(),
                    bad.unwrap(),
                    got[bad.unwrap()],
                    want[bad.unwrap()]
                );
            }
        }
    }
    let m = &mats[0];
    let mut y = vec![0.0; 4 * rows];
    let e = matmul_bias(
        KernelPath::selected(),
        GemvActivations::F32,
        m,
        &gaussian(4 * cols, 46),
        4,
        Some(&bias[..rows - 1]),
        &mut y,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("76") && e.contains("77"), "{e}");
}
