//! AWQ (Lin, Tang, Tang, Yang, Dang, Gan, Han 2023, "AWQ: Activation-aware
//! Weight Quantization for LLM Compression and Acceleration",
//! arXiv:2306.00978) to the plain q4 format plus a per-input-channel scale.
//!
//! Weights that meet large activations matter most. AWQ protects them by
//! scaling input channel `c` of the weights up by `s[c]` before round-to-
//! nearest quantization and the activations down by the same factor:
//! `Y = X · Wᵀ = (X · diag(1/s)) · (W · diag(s))ᵀ ≈ (X · diag(1/s)) · Q(W · diag(s))ᵀ`.
//!
//! 1. Activation magnitude per input channel: `s_x[c] = mean_t |x[t][c]|`
//!    over the calibration rows (clamped below at 1e-4).
//! 2. Scale search: for `alpha` in `{0, 1/grid, ..., (grid-1)/grid}` (default
//!    `{0, 0.05, ..., 0.95}`), `s = s_x^alpha / sqrt(max(s_x^alpha) · min(s_x^alpha))`,
//!    quantize `W · diag(s)` group-wise with q4 round-to-nearest and measure
//!    the layer output error `‖X·Wᵀ − (X·diag(1/s))·Q(W·diag(s))ᵀ‖²` on the
//!    calibration rows; keep the best alpha (`alpha = 0` is plain RTN, so the
//!    search never does worse than RTN on the calibration data).
//! 3. Clipping search: for every (row, group) of the scaled weights, shrink
//!    the group's `[min, max]` range by `t ∈ {1, 1 - 1/clip_grid, ...}` down
//!    to `1 - max_shrink` (default `1.0, 0.95, ..., 0.55`) and keep the `t`
//!    minimizing that group's contribution to the output error,
//!    `E_t[(x_g · (w_g − Q_t(w_g)))²] = dᵀ·G_g·d` with `G_g` the group's block
//!    of the (scaled) input Gram matrix. (The paper's code clips
//!    symmetrically to `±t·max|w|`; the q4 format is asymmetric, so both ends
//!    of the range shrink here.)
//!
//! The result stores `Q(W · diag(s))` as q4 (same arithmetic as
//! [`format::pack_q4_with`]) with `act_scale = 1/s`: every backend computes
//! `Y = (X ∘ act_scale) · Q(W·diag(s))ᵀ`.
//!
//! [`format::pack_q4_with`]: crate::format::pack_q4_with

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::calib::check_calib;
use super::QuantError;
use crate::format::{min_max, pack_q4_with, q4_code, q4_params, GroupSize, Matrix};

/// AWQ settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    /// Columns sharing one scale and zero point (default 128).
    pub group: GroupSize,
    /// Number of alpha values tried, `alpha = k / grid` (default 20).
    pub grid: usize,
    /// Whether to run the weight-clipping search (default true).
    pub clip: bool,
    /// Clipping grid: ratios `1 - i / clip_grid` (default 20).
    pub clip_grid: usize,
    /// Largest fraction of the range that clipping may remove (default 0.5).
    pub max_shrink: f32,
    /// Calibration rows used by the searches, evenly spaced over the given
    /// rows (default 1024; the activation magnitudes use every row).
    pub max_search_rows: usize,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            group: GroupSize::Cols(128),
            grid: 20,
            clip: true,
            clip_grid: 20,
            max_shrink: 0.5,
            max_search_rows: 1024,
        }
    }
}

/// What the AWQ searches found. Errors are output NMSE on the search rows:
/// `‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖²`.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqReport {
    /// Chosen exponent.
    pub alpha: f32,
    /// Output NMSE of every alpha tried, in order.
    pub alpha_errors: Vec<(f32, f64)>,
    /// Output NMSE of plain RTN (alpha = 0, no clipping).
    pub rtn_error: f64,
    /// Output NMSE after the scale search.
    pub scaled_error: f64,
    /// Output NMSE of the stored matrix (scales and clipping).
    pub final_error: f64,
    /// Mean chosen clipping ratio over all (row, group) pairs (1 = no clipping).
    pub mean_clip_ratio: f64,
    /// Calibration rows the searches used.
    pub search_rows: usize,
}

/// An AWQ-quantized matrix (q4 with `act_scale`) and its report.
#[derive(Debug, Clone)]
pub struct AwqResult {
    /// The q4 matrix, `act_scale = 1/s`.
    pub matrix: crate::format::QuantizedMatrix,
    /// What the searches found.
    pub report: AwqReport,
}

/// AWQ-quantizes `w` (`rows x cols`, `Y = X · Wᵀ`) to q4 with a per-input-channel
/// activation scale, using the calibration inputs `calib` (`n x cols`).
/// `progress(done, total)` counts search steps (alphas, then groups).
pub fn awq(
    w: &Matrix,
    calib: &Matrix,
    cfg: &AwqConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AwqResult, QuantError> {
    check_calib(calib, w.cols(), "AWQ")?;
    let group = cfg.group.validate()?;
    if cfg.grid == 0 || cfg.clip_grid == 0 || cfg.max_search_rows == 0 {
        return Err(QuantError::Invalid(
            "AWQ: grid, clip_grid and max_search_rows must be positive".into(),
        ));
    }
    if !(cfg.max_shrink >= 0.0 && cfg.max_shrink < 1.0) {
        return Err(QuantError::Invalid(format!(
            "AWQ: max_shrink {} must be in [0, 1)",
            cfg.max_shrink
        )));
    }
    if let Some((r, c, v)) = w.first_non_finite() {
        return Err(QuantError::Invalid(format!(
            "AWQ: weight ({r}, {c}) is {v}"
        )));
    }
    let (rows, cols) = (w.rows(), w.cols());
    let glen = group.len(cols);
    let gpr = group.groups_per_row(cols);
    let n_clip = if cfg.clip {
        ((cfg.max_shrink * cfg.clip_grid as f32) as usize).max(1)
    } else {
        1
    };
    let total = cfg.grid + if cfg.clip { gpr } else { 0 };
    progress(0, total);

    // 1. Activation magnitudes over every calibration row.
    let mut sum = vec![0.0f64; cols];
    for row in calib.data().chunks(cols) {
        for (a, &x) in sum.iter_mut().zip(row) {
            *a += x.abs() as f64;
        }
    }
    let sx: Vec<f32> = sum
        .iter()
        .map(|&a| ((a / calib.rows() as f64) as f32).max(1e-4))
        .collect();

    // Search rows, evenly spaced.
    let n = calib.rows().min(cfg.max_search_rows);
    let xs: Vec<f32> = (0..n)
        .flat_map(|k| calib.row(k * calib.rows() / n).iter().copied())
        .collect();
    let out = OutputError::new(&xs, n, cols);
    let reference = out.energy(w.data(), rows).max(f64::MIN_POSITIVE);

    // 2. Scale search.
    let mut alpha_errors = Vec::with_capacity(cfg.grid);
    let mut best = (0.0f32, f64::INFINITY, vec![1.0f32; cols]);
    let mut d = vec![0.0f32; rows * cols];
    for k in 0..cfg.grid {
        let alpha = k as f32 / cfg.grid as f32;
        let s = awq_scales(&sx, alpha);
        d.par_chunks_mut(cols)
            .zip(w.data().par_chunks(cols))
            .for_each(|(dr, wr)| {
                for (dv, (&wv, &sv)) in dr.iter_mut().zip(wr.iter().zip(&s)) {
                    *dv = wv * sv;
                }
                let scaled = dr.to_vec();
                fake_quant_row(&scaled, glen, &mut |_| 1.0, dr);
                for (dv, (&wv, &sv)) in dr.iter_mut().zip(wr.iter().zip(&s)) {
                    *dv = wv - *dv / sv;
                }
            });
        let e = out.energy(&d, rows) / reference;
        alpha_errors.push((alpha, e));
        if e < best.1 {
            best = (alpha, e, s);
        }
        progress(k + 1, total);
    }
    let (alpha, scaled_error, s) = best;
    let rtn_error = alpha_errors.first().map_or(f64::NAN, |a| a.1);

    // 3. Clipping search on W·diag(s) against inputs X·diag(1/s).
    let ws: Vec<f32> = w
        .data()
        .par_chunks(cols)
        .flat_map_iter(|r| r.iter().zip(&s).map(|(a, b)| a * b))
        .collect();
    let mut ratio = vec![1.0f32; rows * gpr];
    if cfg.clip {
        let inv_s: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
        let xsc: Vec<f32> = xs
            .chunks(cols)
            .flat_map(|r| r.iter().zip(&inv_s).map(|(a, b)| a * b))
            .collect();
        let ratios: Vec<f32> = (0..n_clip)
            .map(|i| 1.0 - i as f32 / cfg.clip_grid as f32)
            .collect();
        let x = MatRef::from_row_major_slice(&xsc, n, cols);
        for g in 0..gpr {
            let c0 = g * glen;
            let gl = glen.min(cols - c0);
            let xg = x.subcols(c0, gl);
            let gram = xg.transpose() * xg;
            clip_group(&ws, rows, cols, c0, gl, &gram, &ratios, &mut ratio, gpr, g);
            progress(cfg.grid + g + 1, total);
        }
    }
    let mean_clip_ratio = ratio.iter().map(|&v| v as f64).sum::<f64>() / ratio.len() as f64;

    // 4. Pack and report.
    let wsm = Matrix::from_vec(rows, cols, ws)?;
    let range = |r: usize, g: usize, v: &[f32]| {
        let (lo, hi) = min_max(v);
        let t = ratio[r * gpr + g];
        (lo * t, hi * t)
    };
    let inv_s: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let matrix = pack_q4_with(&wsm, group, &range)?.with_act_scale(inv_s)?;
    let deq = matrix.dequantize();
    d.par_iter_mut()
        .zip(w.data().par_iter().zip(deq.data().par_iter()))
        .for_each(|(dv, (a, b))| *dv = a - b);
    let final_error = out.energy(&d, rows) / reference;
    Ok(AwqResult {
        matrix,
        report: AwqReport {
            alpha,
            alpha_errors,
            rtn_error,
            scaled_error,
            final_error,
            mean_clip_ratio,
            search_rows: n,
        },
    })
}

/// AWQ's per-input-channel scales `s_x^alpha / sqrt(max · min)`.
pub fn awq_scales(sx: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = sx.iter().map(|&v| v.max(1e-4).powf(alpha)).collect();
    let (lo, hi) = min_max(&s);
    let norm = (lo as f64 * hi as f64).sqrt() as f32;
    if norm.is_finite() && norm > 0.0 {
        s.iter().map(|v| v / norm).collect()
    } else {
        s
    }
}

/// Quantize-dequantize one row group-wise with q4 round-to-nearest, each
/// group's `[min, max]` range multiplied by `ratio(group)`; same arithmetic
/// as `format::pack_q4_with`.
fn fake_quant_row(v: &[f32], glen: usize, ratio: &mut dyn FnMut(usize) -> f32, out: &mut [f32]) {
    for (g, (chunk, o)) in v.chunks(glen).zip(out.chunks_mut(glen)).enumerate() {
        let (lo, hi) = min_max(chunk);
        let t = ratio(g);
        fake_quant_group(chunk, lo * t, hi * t, o);
    }
}

fn fake_quant_group(v: &[f32], lo: f32, hi: f32, out: &mut [f32]) {
    let (s, z, inv) = q4_params(lo, hi);
    let s32 = s.to_f32();
    for (o, &x) in out.iter_mut().zip(v) {
        let q = if inv == 0.0 {
            z as u32
        } else {
            q4_code(x, inv, z)
        };
        *o = (q as f32 - z as f32) * s32;
    }
}

/// Picks, for every row, the clipping ratio of group `g` (columns
/// `c0..c0+gl`) minimizing `dᵀ·gram·d`, `d` the group's quantization error.
#[allow(clippy::too_many_arguments)]
fn clip_group(
    ws: &[f32],
    rows: usize,
    cols: usize,
    c0: usize,
    gl: usize,
    gram: &Mat<f32>,
    ratios: &[f32],
    ratio: &mut [f32],
    gpr: usize,
    g: usize,
) {
    let nt = ratios.len();
    // Bound the stacked error matrix to ~16 MB.
    let chunk_rows = ((1usize << 22) / (nt * gl)).clamp(1, rows);
    let mut dstack = vec![0.0f32; chunk_rows * nt * gl];
    let mut m = Mat::<f32>::zeros(chunk_rows * nt, gl);
    let mut r0 = 0;
    while r0 < rows {
        let rc = chunk_rows.min(rows - r0);
        let ds = &mut dstack[..rc * nt * gl];
        ds.par_chunks_mut(nt * gl).enumerate().for_each(|(i, blk)| {
            let wg = &ws[(r0 + i) * cols + c0..][..gl];
            let (lo, hi) = min_max(wg);
            for (&t, d) in ratios.iter().zip(blk.chunks_mut(gl)) {
                fake_quant_group(wg, lo * t, hi * t, d);
                for (dv, &wv) in d.iter_mut().zip(wg) {
                    *dv = wv - *dv;
                }
            }
        });
        let dm = MatRef::from_row_major_slice(ds, rc * nt, gl);
        let mut mv = m.as_mut().subrows_mut(0, rc * nt);
        matmul(
            mv.rb_mut(),
            Accum::Replace,
            dm,
            gram.as_ref(),
            1.0f32,
            Par::rayon(0),
        );
        let mv = mv.rb();
        for i in 0..rc {
            let mut best = (f64::INFINITY, 1.0f32);
            for (k, &t) in ratios.iter().enumerate() {
                let row = i * nt + k;
                let e: f64 = (0..gl)
                    .map(|c| dm[(row, c)] as f64 * mv[(row, c)] as f64)
                    .sum();
                if e < best.0 {
                    best = (e, t);
                }
            }
            ratio[(r0 + i) * gpr + g] = best.1;
        }
        r0 += rc;
    }
}

/// `‖Xs · Dᵀ‖²` for error matrices `D`, directly or through the Gram matrix,
/// whichever multiplies less.
enum OutputError<'a> {
    Direct {
        xs: &'a [f32],
        n: usize,
        cols: usize,
    },
    Gram {
        gram: Mat<f32>,
        cols: usize,
    },
}

impl<'a> OutputError<'a> {
    fn new(xs: &'a [f32], n: usize, cols: usize) -> Self {
        if n <= cols {
            OutputError::Direct { xs, n, cols }
        } else {
            let x = MatRef::from_row_major_slice(xs, n, cols);
            OutputError::Gram {
                gram: x.transpose() * x,
                cols,
            }
        }
    }

    /// Squared output error of `d` (`rows x cols`, row-major).
    fn energy(&self, d: &[f32], rows: usize) -> f64 {
        match self {
            OutputError::Direct { xs, n, cols } => {
                let mut e = Mat::<f32>::zeros(*n, rows);
                matmul(
                    e.as_mut(),
                    Accum::Replace,
                    MatRef::from_row_major_slice(xs, *n, *cols),
                    MatRef::from_row_major_slice(d, rows, *cols).transpose(),
                    1.0f32,
                    Par::rayon(0),
                );
                sum_sq(e.as_ref())
            }
            OutputError::Gram { gram, cols } => {
                let mut m = vec![0.0f32; rows * cols];
                matmul(
                    MatMut::from_row_major_slice_mut(&mut m, rows, *cols),
                    Accum::Replace,
                    MatRef::from_row_major_slice(d, rows, *cols),
                    gram.as_ref(),
                    1.0f32,
                    Par::rayon(0),
                );
                m.par_iter()
                    .zip(d.par_iter())
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum()
            }
        }
    }
}

fn sum_sq(m: MatRef<'_, f32>) -> f64 {
    (0..m.ncols())
        .into_par_iter()
        .map(|j| m.col(j).iter().map(|&v| v as f64 * v as f64).sum::<f64>())
        .sum()
}
