//! SmoothQuant W8A8 (Xiao, Lin, Seznec, Wu, Demouth, Han 2023,
//! "SmoothQuant: Accurate and Efficient Post-Training Quantization for
//! Large Language Models", arXiv:2211.10438): int8 weights times int8
//! activations, with the activations' outlier channels moved into the
//! weights first.
//!
//! Rounding activations to int8 costs most where a few input channels carry
//! values 10-100x the rest (the hidden states after a layer norm, in BERT
//! and CLIP alike): every value sharing a rounding block with such a channel
//! gets its step. SmoothQuant divides input channel `c` by `s[c]` and
//! multiplies the weights' column `c` by it, which leaves the product
//! unchanged and makes the activations easier to round:
//! `Y = X · Wᵀ = (X · diag(1/s)) · (W · diag(s))ᵀ ≈ R(X · diag(1/s)) · Q(W · diag(s))ᵀ`
//! with `R` the per-block activation rounding of the CPU's int8 kernels
//! (32 columns a block, `dx = absmax / 127`) and `Q` q8 round-to-nearest.
//!
//! 1. Per input channel: `a[c] = max_t |x[t][c]|` over the calibration rows
//!    and `b[c] = max_r |w[r][c]|`.
//! 2. For `alpha` in `{0, 1/grid, ..., 1}`, the paper's migration
//!    `s = a^alpha / b^(1 - alpha)` (normalized to geometric mean 1;
//!    channels where `a` or `b` is zero keep `s = 1`), and once without
//!    smoothing (`s = 1`). Each candidate's layer output error
//!    `‖X·Wᵀ − R(X·diag(1/s))·Q(W·diag(s))ᵀ‖² / ‖X·Wᵀ‖²` is measured on
//!    evenly spaced calibration rows; the smallest wins (so on its
//!    calibration data the result is never worse than W8A8 without
//!    smoothing). The paper fixes `alpha` per model (0.5 for most); a search
//!    per layer costs one matmul per candidate.
//!
//! The result is q8 of `W · diag(s)` with `act_scale = 1/s`, marked W8A8
//! ([`QuantizedMatrix::with_int8_activations`]): every backend that runs it
//! computes `R(X ∘ act_scale) · Q(W · diag(s))ᵀ`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use super::calib::check_calib;
use super::QuantError;
use crate::format::{limits, pack_q8, FormatKind, GroupSize, Matrix, QuantizedMatrix};

/// SmoothQuant settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothConfig {
    /// Columns sharing one weight scale (default 128).
    pub group: GroupSize,
    /// Migration strengths tried: `alpha = k / grid`, `k = 0..=grid`
    /// (default 10), plus no smoothing.
    pub grid: usize,
    /// Calibration rows the error is measured on, evenly spaced (default
    /// 512; the channel maxima use every row).
    pub max_search_rows: usize,
}

impl Default for SmoothConfig {
    fn default() -> Self {
        SmoothConfig {
            group: GroupSize::Cols(128),
            grid: 10,
            max_search_rows: 512,
        }
    }
}

/// What the search found. Errors are layer output NMSE on the search rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothReport {
    /// The chosen strength; `None` when no smoothing did best.
    pub alpha: Option<f32>,
    /// Every candidate's error, no smoothing first; candidates whose scaled
    /// weights q8 cannot hold are left out.
    pub candidates: Vec<(Option<f32>, f64)>,
    /// q8 weights with f32 activations (what W8A8 adds to, for reference).
    pub weight_only_error: f64,
    /// W8A8 without smoothing.
    pub plain_error: f64,
    /// The stored matrix's error.
    pub final_error: f64,
    /// Rows the errors were measured on.
    pub search_rows: usize,
}

/// A SmoothQuant W8A8 matrix and its report.
#[derive(Debug, Clone)]
pub struct SmoothResult {
    /// q8 of `W · diag(s)`, `act_scale = 1/s` (none when `s = 1`), W8A8.
    pub matrix: QuantizedMatrix,
    /// What the search found.
    pub report: SmoothReport,
}

/// The migration scales `a^alpha / b^(1 - alpha)`, normalized to geometric
/// mean 1 over the channels where both maxima are positive (the others get
/// 1). `a`: activation maxima per channel, `b`: weight maxima per channel.
pub fn smooth_scales(a: &[f32], b: &[f32], alpha: f32) -> Vec<f32> {
    let raw: Vec<Option<f64>> = a
        .iter()
        .zip(b)
        .map(|(&x, &w)| {
            let (x, w) = (x as f64, w as f64);
            (x > 0.0 && w > 0.0 && x.is_finite() && w.is_finite())
                .then(|| x.powf(alpha as f64) / w.powf(1.0 - alpha as f64))
        })
        .collect();
    let logs: Vec<f64> = raw.iter().flatten().map(|v| v.ln()).collect();
    let mean = if logs.is_empty() {
        0.0
    } else {
        logs.iter().sum::<f64>() / logs.len() as f64
    };
    raw.iter()
        .map(|v| v.map_or(1.0, |v| (v.ln() - mean).exp() as f32))
        .collect()
}

/// SmoothQuant W8A8 of `w` (`rows x cols`, `Y = X · Wᵀ`) with calibration
/// activations `calib` (`n x cols`). `progress(done, total)` counts
/// candidates.
pub fn smooth_w8a8(
    w: &Matrix,
    calib: &Matrix,
    cfg: &SmoothConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SmoothResult, QuantError> {
    check_calib(calib, w.cols(), "SmoothQuant")?;
    let group = cfg.group.validate()?;
    if cfg.grid == 0 || cfg.max_search_rows == 0 {
        return Err(QuantError::Invalid(
            "SmoothQuant: grid and max_search_rows must be positive".into(),
        ));
    }
    if let Some((r, c, v)) = w.first_non_finite() {
        return Err(QuantError::Invalid(format!(
            "SmoothQuant: weight ({r}, {c}) is {v}"
        )));
    }
    let (rows, cols) = (w.rows(), w.cols());

    // 1. Channel maxima.
    let mut a = vec![0.0f32; cols];
    for row in calib.data().chunks(cols) {
        for (m, &x) in a.iter_mut().zip(row) {
            *m = m.max(x.abs());
        }
    }
    let mut b = vec![0.0f32; cols];
    for row in w.data().chunks(cols) {
        for (m, &x) in b.iter_mut().zip(row) {
            *m = m.max(x.abs());
        }
    }

    // Search rows, evenly spaced, and the exact output.
    let n = calib.rows().min(cfg.max_search_rows);
    let xs: Vec<f32> = (0..n)
        .flat_map(|k| calib.row(k * calib.rows() / n).iter().copied())
        .collect();
    let reference = product(&xs, n, cols, w.data(), rows);
    let energy: f64 = reference
        .par_iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let error = |y: &[f32]| -> f64 {
        y.par_iter()
            .zip(reference.par_iter())
            .map(|(&p, &q)| {
                let d = p as f64 - q as f64;
                d * d
            })
            .sum::<f64>()
            / energy
    };
    // q8 of W · diag(s) (W itself without `s`) and its dequantized weights.
    let pack = |s: Option<&[f32]>| -> Result<(QuantizedMatrix, Matrix), QuantError> {
        let scaled;
        let ws = match s {
            Some(s) => {
                scaled = Matrix::from_vec(
                    rows,
                    cols,
                    w.data()
                        .par_chunks(cols)
                        .flat_map_iter(|r| r.iter().zip(s).map(|(v, k)| v * k))
                        .collect(),
                )?;
                &scaled
            }
            None => w,
        };
        limits::check_representable(ws, FormatKind::Q8, group, false)?;
        let q = pack_q8(ws, group)?;
        let wd = q.dequantize();
        Ok((q, wd))
    };
    // Output error of those weights against R(X · diag(1/s)), or against
    // X · diag(1/s) unrounded (`round` false).
    let output_error = |s: Option<&[f32]>, wd: &Matrix, round: bool| -> f64 {
        let divided: Vec<f32>;
        let x: &[f32] = match s {
            Some(s) => {
                divided = xs
                    .chunks(cols)
                    .flat_map(|r| r.iter().zip(s).map(|(v, k)| v / k))
                    .collect();
                &divided
            }
            None => &xs,
        };
        if !round {
            return error(&product(x, n, cols, wd.data(), rows));
        }
        let mut r = Vec::new();
        crate::backend::cpu::int8_rounded_into(x, cols, &mut r);
        error(&product(&r, n, cols, wd.data(), rows))
    };

    let total = cfg.grid + 2;
    progress(0, total);
    let (plain, plain_wd) = pack(None)?;
    let weight_only_error = output_error(None, &plain_wd, false);
    let plain_error = output_error(None, &plain_wd, true);
    progress(1, total);
    let mut candidates = vec![(None, plain_error)];
    let mut best: (Option<f32>, f64, QuantizedMatrix, Option<Vec<f32>>) =
        (None, plain_error, plain, None);
    for k in 0..=cfg.grid {
        let alpha = k as f32 / cfg.grid as f32;
        let s = smooth_scales(&a, &b, alpha);
        // A candidate q8 (f16 scales) cannot hold is not a candidate.
        if let Ok((q, wd)) = pack(Some(&s)) {
            let e = output_error(Some(&s), &wd, true);
            candidates.push((Some(alpha), e));
            if e < best.1 {
                best = (Some(alpha), e, q, Some(s));
            }
        }
        progress(k + 2, total);
    }
    let (alpha, final_error, q, s) = best;
    let mut matrix = q;
    if let Some(s) = s {
        matrix = matrix.with_act_scale(s.iter().map(|v| 1.0 / v).collect())?;
    }
    let matrix = matrix.with_int8_activations()?;
    Ok(SmoothResult {
        matrix,
        report: SmoothReport {
            alpha,
            candidates,
            weight_only_error,
            plain_error,
            final_error,
            search_rows: n,
        },
    })
}

/// `X · Wᵀ` (`n x rows`, row-major) in f32.
fn product(x: &[f32], n: usize, cols: usize, w: &[f32], rows: usize) -> Vec<f32> {
    let mut y = Mat::<f32>::zeros(n, rows);
    matmul(
        y.as_mut(),
        Accum::Replace,
        MatRef::from_row_major_slice(x, n, cols),
        MatRef::from_row_major_slice(w, rows, cols).transpose(),
        1.0f32,
        Par::rayon(0),
    );
    (0..n)
        .flat_map(|i| (0..rows).map(move |j| (i, j)))
        .map(|(i, j)| y[(i, j)])
        .collect()
}
