//! How close a device's `Y = X · Wᵀ` must come to `CpuBackend::exact()`
//! (f32 activations, f32 sums), per arithmetic path, and the check itself:
//! the NMSE over the whole output plus the worst relative error of any one
//! batch row and of any one output feature, so a single bad row cannot hide
//! in a large matrix (one wrong row of 4096 is an NMSE of only ~5e-4).
//!
//! Every bound is derived from the rounding the path does (written next to
//! its constant), with the constant set a small factor above the worst value
//! measured on lavapipe (native and portable WGSL) where the path runs there.
//! Relative errors of a row are taken against the row's magnitude without
//! cancellation, `M² = Σ (w · x)²` over its products (the expected `|y|²`
//! for independent zero-mean inputs), so a row whose reference happens to be
//! near zero is not judged on a vanishing denominator.

use quantscope::backend::{BackendKind, DeviceInfo, GEMM_MIN_BATCH};
use quantscope::format::{FormatKind, Matrix, QuantizedMatrix};

/// f32 unit roundoff, 2^-24.
pub const U_F32: f64 = 1.0 / 16_777_216.0;
/// f16 unit roundoff, 2^-11.
pub const U_F16: f64 = 1.0 / 2048.0;

/// Exact-arithmetic f32 paths: `NMSE <= F32_K · (cols + F32_TERMS) · u²`.
///
/// Derivation: a dot product of `n` terms summed one after another rounds
/// `n` times; the k-th rounding adds `δ_k · S_k` (`|δ| <= u`, `S_k` the
/// partial sum, `E S_k² = k σ²`), so `E e² ≈ u²/3 · n²σ²/2` against
/// `E y² = n σ²`: NMSE ≈ `n u² / 6` per side, `n u² / 3` for two independent
/// computations (blocked and tree sums stay below); each term's own
/// roundings (decode, activation scale, product, outlier add: a few per
/// side) add a constant `F32_TERMS · u²` that matters only for tiny `cols`.
/// Measured, in units of `(cols + 8) u²`: lavapipe (native and portable,
/// the 115 f32-path cases of tests/cross_backend.rs against
/// CpuBackend::exact()): GEMM (sequential K loop) 0.07..0.10 at every K
/// from 77 to 4099 (1.46e-12 at K = 4099), GEMV (64 partial sums per row)
/// 0.002 (K = 4096) .. 0.15 (K = 77); the CUDA kernels on the host emulator
/// (kernels/emu, against f64, one side only): <= 0.22 for K >= 33, i.e. up
/// to ~0.4 against another f32 result. Bound 1.0: 2.5x that, 6.6x
/// lavapipe's worst (for K = 4096: 1.5e-11, far below the "~1e-10" an
/// exact path should reach).
pub const F32_K: f64 = 1.0;
/// See [`F32_K`].
pub const F32_TERMS: f64 = 8.0;

/// f16 tensor-core GEMM (CUDA sm_80+: gemm_f16 / q8 / q4 / lut4 from
/// batch GEMM_MIN_BATCH on): X rounded to f16, and the decoded weights too
/// for q8 / q4 / lut4 (scale x code needs more than 11 bits), f32
/// accumulation: `NMSE <= F16_INPUTS_FACTOR · u_h²/6 · (1 or 2)`.
///
/// Derivation: rounding a value spread over its binade to an 11-bit
/// significand has mean squared relative error `u_h²/6` (`u_h = 2^-11`: the
/// error is uniform in ±ulp/2 and `E[1/m²] = 1/2` for a significand `m` in
/// [1, 2)), i.e. 4.0e-8; the relative errors of X and W add in every
/// product, so the NMSE is 4.0e-8 (f16 weights, exact) or 8.0e-8 (decoded
/// weights), plus the f32 part (negligible). docs/CUDA.md reports "about
/// 1e-7". No CUDA device here; measured on the host emulator of the same
/// kernels (kernels/emu, emulated mma.sync, 13-row matrices, against f64):
/// f16 mean 3.1e-8, worst 5.5e-8 (1.4x the derivation); q8 / q4 / lut4
/// mean 8.1e-8 / 5.6e-8 / 4.6e-8, worst 1.4e-7 / 1.7e-7 / 1.5e-7 (up to
/// 2.1x: small matrices fluctuate). Bound 5x the derivation: 2.4x the
/// worst emulated value.
pub const F16_INPUTS_FACTOR: f64 = 5.0;

/// Int8-activation GEMV (wgpu `gemv_q8_dp4`: X to int8 per block of 16
/// columns, `dx = absmax / 127`, round to nearest): `NMSE <= INT8_FACTOR ·
/// the NMSE the rounding itself adds`, which [`int8_rounding_nmse`]
/// computes on the case's own X and W by doing that rounding in f64 from
/// its definition (not the kernels' code).
///
/// Derivation: rounding to a step `dx` adds an error uniform in ±dx/2
/// (variance `dx²/12`) independent of the weights, so the expected NMSE is
/// `Σ_c w_c² dx_c² / 12 / Σ_c w_c² x_c²`, ~1.4e-5 for X uniform in
/// [-1, 1) in blocks of 16; a truncating quantizer's error is uniform in
/// [0, dx) toward zero, mean square `dx²/3`: 4x as much. With the actual
/// rounding errors of the case in place of their variance the device's
/// NMSE equals the computed one up to f32 noise, on small cases too.
/// Measured on lavapipe (the 9 q8 cases at batch 1..7, NMSE 1.15e-5 ..
/// 2.0e-5): measured / computed = 1.000 in every case (f32 noise only;
/// the CPU's int8 GEMV, tests/cpu_kernels.rs: 0.9995 .. 1.0006). Bound
/// 1.25: truncation (~4x) or a coarser block fails, rounding passes.
pub const INT8_FACTOR: f64 = 1.25;

/// W8A8 matrices ([`QuantizedMatrix::int8_activations`]) on an f32 path:
/// device and CPU both round X to int8 per 32 columns, by the same rule,
/// so they agree to f32 noise, except where a device's division
/// (`127 / absmax`; WGSL allows 2.5 ULP) lands a value on the other side of
/// a rounding tie: one code off by one. The bound allows that for a share
/// of the rounding's own NMSE: each flip costs about 12 values' rounding
/// error, so 1 % is about one value in 1,200 flipped. A device that does
/// not round (NMSE = the whole rounding NMSE, 100x this) or rounds per
/// another block fails.
pub const W8A8_FLIP_SHARE: f64 = 0.01;

/// Worst batch row's relative error `‖e_b‖ / M_b`, in units of the path's
/// RMS relative error `sqrt(NMSE bound)`: a batch row holds `rows` outputs,
/// so its error is close to the RMS. Measured on lavapipe, in units of the
/// row's own `sqrt(NMSE)`: f32 paths <= 1.36, int8 <= 1.18. Bound 3.
pub const ROW_FACTOR: f64 = 3.0;

/// Worst output feature's relative error `‖e_{:,r}‖ / M_r` in the same
/// units: at batch 1 a feature is one output, and the largest of 4096
/// roughly Gaussian errors is ~4 standard deviations. Measured on lavapipe,
/// in units of the case's sqrt(NMSE): f32 paths <= 5.3, int8 <= 4.2 (both
/// on the 4096-feature GEMV), <= 3.0 elsewhere; int8's bound is then 4.2 /
/// sqrt(1.25) = 3.8 units of sqrt(bound). Bound 8, 2x that. A wholly wrong
/// row is a relative error of ~1: ~70 units on an int8 path, ~1e5 on an
/// f32 one.
pub const FEATURE_FACTOR: f64 = 8.0;

/// The arithmetic a device's matmul kernel uses for one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arith {
    /// f32 products and sums, weights decoded exactly.
    F32,
    /// f16 inputs, f32 accumulation (tensor cores); `weights_rounded`: the
    /// decoded weights are rounded to f16 as well.
    F16Inputs { weights_rounded: bool },
    /// X quantized to int8 per block of `block` columns, integer dot products.
    Int8Act { block: usize },
}

impl std::fmt::Display for Arith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arith::F32 => f.write_str("f32"),
            Arith::F16Inputs {
                weights_rounded: false,
            } => f.write_str("f16 X"),
            Arith::F16Inputs {
                weights_rounded: true,
            } => f.write_str("f16 X and W"),
            Arith::Int8Act { block } => write!(f, "int8 X /{block}"),
        }
    }
}

/// Which arithmetic `info`'s backend uses for `kind` at `batch`: the
/// dispatch rules the backends document (`src/backend/plan.rs`, CUDA's
/// gemm.cu), written down independently here so a backend that takes a
/// less exact path than it says fails the exact bound.
pub fn arith(info: &DeviceInfo, kind: FormatKind, batch: usize) -> Arith {
    let has = |f: &str| info.features.iter().any(|g| g.starts_with(f));
    match info.backend {
        BackendKind::Wgpu
            if batch < GEMM_MIN_BATCH && kind == FormatKind::Q8 && has("packed-4x8-integer") =>
        {
            Arith::Int8Act { block: 16 }
        }
        BackendKind::Cuda
            if batch >= GEMM_MIN_BATCH
                && has("tensor-cores")
                && matches!(
                    kind,
                    FormatKind::F16 | FormatKind::Q8 | FormatKind::Q4 | FormatKind::Lut4
                ) =>
        {
            Arith::F16Inputs {
                weights_rounded: kind != FormatKind::F16,
            }
        }
        _ => Arith::F32,
    }
}

/// The NMSE that rounding X to int8 per `block` columns adds to `Y = X ·
/// Wᵀ` for `m` (see [`INT8_FACTOR`]), computed in f64 from the definition:
/// X times the activation scale (in f32, as the kernels do), per block
/// `dx = absmax / 127`, `x̂ = dx · round(x / dx)`; the dense part meets `x̂`
/// (through `dense_used`, default the dense part itself: lut4's CPU kernel
/// uses a rounded codebook), the outliers the f32 X. Returns
/// `Σ (ŷ - y)² / Σ y²` over the whole output.
pub fn int8_rounding_nmse(
    m: &QuantizedMatrix,
    dense_used: Option<&Matrix>,
    x: &[f32],
    batch: usize,
    block: usize,
) -> f64 {
    let (rows, cols) = (m.rows(), m.cols());
    let dense = QuantizedMatrix::new(rows, cols, m.group(), m.packed().clone())
        .expect("the dense part alone")
        .dequantize();
    let dense_used = dense_used.unwrap_or(&dense);
    let w_eff = m.dequantize();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for b in 0..batch {
        let xs: Vec<f32> = (0..cols)
            .map(|c| {
                let v = x[b * cols + c];
                m.act_scale().map_or(v, |a| v * a[c])
            })
            .collect();
        let mut xq = vec![0.0f64; cols];
        for (k, blk) in xs.chunks(block).enumerate() {
            let amax = blk.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            if amax == 0.0 {
                continue;
            }
            let dx = amax / 127.0;
            for (j, &v) in blk.iter().enumerate() {
                xq[k * block + j] = dx * (v as f64 / dx).round().clamp(-127.0, 127.0);
            }
        }
        for r in 0..rows {
            let (mut y, mut e) = (0.0f64, 0.0f64);
            for c in 0..cols {
                y += w_eff.row(r)[c] as f64 * x[b * cols + c] as f64;
                e += dense_used.row(r)[c] as f64 * xq[c] - dense.row(r)[c] as f64 * xs[c] as f64;
            }
            num += e * e;
            den += y * y;
        }
    }
    num / den
}

/// What one case measured and what it was allowed.
#[derive(Clone, Copy, Debug)]
pub struct Judgement {
    /// The path judged.
    pub arith: Arith,
    /// `Σ (got - want)² / Σ want²`.
    pub nmse: f64,
    /// Its bound.
    pub nmse_bound: f64,
    /// Worst batch row: `‖e_b‖ / M_b`.
    pub row_rel: f64,
    /// Worst output feature: `‖e_{:,r}‖ / M_r`.
    pub feature_rel: f64,
    /// Bound of `row_rel`.
    pub row_bound: f64,
    /// Bound of `feature_rel`.
    pub feature_bound: f64,
    /// [`Arith::Int8Act`]: the NMSE the rounding adds; otherwise the
    /// derivation's unit (`(cols + F32_TERMS) · u²` for f32).
    pub unit: f64,
}

/// `v <= bound`, false for NaN.
fn within(v: f64, bound: f64) -> bool {
    v <= bound
}

impl Judgement {
    /// `Err` with every exceeded bound named; NaN never passes.
    pub fn check(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if !within(self.nmse, self.nmse_bound) {
            bad.push(format!(
                "NMSE {:.3e} > bound {:.3e}",
                self.nmse, self.nmse_bound
            ));
        }
        if !within(self.row_rel, self.row_bound) {
            bad.push(format!(
                "worst batch-row relative error {:.3e} > bound {:.3e}",
                self.row_rel, self.row_bound
            ));
        }
        if !within(self.feature_rel, self.feature_bound) {
            bad.push(format!(
                "worst output-feature relative error {:.3e} > bound {:.3e}",
                self.feature_rel, self.feature_bound
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("[{}] {}", self.arith, bad.join("; ")))
        }
    }
}

/// Judges `got` against the reference `want` (both `batch x rows`) of the
/// matmul of `m` (effective weights `w_eff`) with `x` on path `arith`.
pub fn judge(
    m: &QuantizedMatrix,
    w_eff: &Matrix,
    x: &[f32],
    batch: usize,
    arith: Arith,
    want: &[f32],
    got: &[f32],
) -> Judgement {
    let (rows, cols) = (m.rows(), m.cols());
    assert_eq!(want.len(), batch * rows);
    assert_eq!(got.len(), batch * rows);
    let (unit, nmse_bound) = match arith {
        Arith::F32 => {
            let unit = (cols as f64 + F32_TERMS) * U_F32 * U_F32;
            let flips = if m.int8_activations() {
                W8A8_FLIP_SHARE * int8_rounding_nmse(m, None, x, batch, 32)
            } else {
                0.0
            };
            (unit, F32_K * unit + flips)
        }
        Arith::F16Inputs { weights_rounded } => {
            let per_operand = U_F16 * U_F16 / 6.0;
            let unit = per_operand * if weights_rounded { 2.0 } else { 1.0 };
            (unit, F16_INPUTS_FACTOR * unit)
        }
        Arith::Int8Act { block } => {
            let unit = int8_rounding_nmse(m, None, x, batch, block);
            (unit, INT8_FACTOR * unit)
        }
    };
    // M² of every batch row and output feature: Σ_c w_rc² x_bc².
    let mut wcol2 = vec![0.0f64; cols];
    for r in 0..rows {
        for (c, &v) in w_eff.row(r).iter().enumerate() {
            wcol2[c] += v as f64 * v as f64;
        }
    }
    let mut xcol2 = vec![0.0f64; cols];
    let mut m_row = vec![0.0f64; batch];
    for b in 0..batch {
        for c in 0..cols {
            let v = x[b * cols + c] as f64;
            xcol2[c] += v * v;
            m_row[b] += v * v * wcol2[c];
        }
    }
    let m_feat: Vec<f64> = (0..rows)
        .map(|r| {
            w_eff
                .row(r)
                .iter()
                .zip(&xcol2)
                .map(|(&v, x2)| v as f64 * v as f64 * x2)
                .sum()
        })
        .collect();
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    let mut e_row = vec![0.0f64; batch];
    let mut e_feat = vec![0.0f64; rows];
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = g as f64 - w as f64;
        err += d * d;
        norm += w as f64 * w as f64;
        e_row[i / rows] += d * d;
        e_feat[i % rows] += d * d;
    }
    // NaN propagates into every maximum (f64::max would drop it).
    let worst = |e: &[f64], m: &[f64]| {
        e.iter().zip(m).fold(0.0f64, |w, (&e, &m)| {
            // A row of zero magnitude must come out exactly zero.
            let v = if m > 0.0 {
                (e / m).sqrt()
            } else if e == 0.0 {
                0.0
            } else {
                e.sqrt() * f64::INFINITY
            };
            if v.is_nan() || w.is_nan() {
                f64::NAN
            } else {
                w.max(v)
            }
        })
    };
    Judgement {
        arith,
        nmse: err / norm,
        nmse_bound,
        row_rel: worst(&e_row, &m_row),
        feature_rel: worst(&e_feat, &m_feat),
        row_bound: ROW_FACTOR * nmse_bound.sqrt(),
        feature_bound: FEATURE_FACTOR * nmse_bound.sqrt(),
        unit,
    }
}
