//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate
//! Post-Training Quantization for Generative Pre-trained Transformers",
//! arXiv:2210.17323) to the plain q4 format.
//!
//! The layer `Y = X · Wᵀ` is quantized one input column at a time; after a
//! column is rounded, its rounding error is spread over the columns not yet
//! quantized so that the layer output on the calibration inputs moves as
//! little as possible (Optimal Brain Surgeon update with the Hessian
//! `H = 2·XᵀX/n` of the squared output error):
//!
//! 1. `H` from the calibration rows; dead inputs (`H[j][j] = 0`) get their
//!    weights zeroed and `H[j][j] = 1`; damping `λ = percdamp · mean(diag H)`
//!    is added to the diagonal.
//! 2. `U`, the upper Cholesky factor of `H⁻¹` (`H⁻¹ = Uᵀ·U`). It is computed
//!    without forming `H⁻¹`: with `J` the order-reversing permutation,
//!    `J·H·J = L·Lᵀ` gives `U = J·L⁻¹·J` (upper, positive diagonal, and
//!    `Uᵀ·U = H⁻¹`, so it is *the* Cholesky factor). One Cholesky and one
//!    triangular inverse instead of two Cholesky factorizations and an
//!    inverse. If the factorization fails, damping is multiplied by 10 and
//!    the attempt repeated; the report says so.
//! 3. Columns in blocks of `block_size` (128): inside a block, each row is
//!    quantized column by column, `err = (w - q) / U[j][j]`, and the rest of
//!    the block is updated `w[j+1..] -= err · U[j][j+1..]`; after the block,
//!    the columns to its right get the whole block's update at once
//!    (`W[:, i2..] -= Err · U[i1..i2, i2..]`, one matrix product: the "lazy
//!    batch" update).
//! 4. Group scales and zero points (q4, [`format::q4_params`]) are computed
//!    from the current, error-updated weights when a group's first column is
//!    reached. With `act_order` the columns are processed by decreasing
//!    `H[j][j]` and the groups are *static*: their parameters come from the
//!    original weights in the original column order, so the stored matrix is
//!    plain q4 with no column permutation.
//!
//! Every stored value follows the same arithmetic as round-to-nearest packing
//! (`q = clamp(rne(w · inv) + zero, 0, 15)`, `w' = f32(scale) · (q - zero)`).
//!
//! [`format::q4_params`]: crate::format::q4_params

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use half::f16;
use rayon::prelude::*;

use super::calib::check_calib;
use super::QuantError;
use crate::format::{
    min_max, q4_code, q4_params, FormatKind, GroupSize, Matrix, Packed, QuantizedMatrix, Q4,
};

/// GPTQ settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    /// Columns sharing one scale and zero point (default 128).
    pub group: GroupSize,
    /// Columns per lazy-update block (default 128).
    pub block_size: usize,
    /// Damping as a fraction of the mean Hessian diagonal (default 0.01).
    pub percdamp: f64,
    /// Process columns by decreasing Hessian diagonal ("desc_act"); implies
    /// static groups.
    pub act_order: bool,
    /// Compute every group's parameters up front from the original weights
    /// instead of when the group is reached.
    pub static_groups: bool,
    /// How many times damping may be multiplied by 10 after a failed
    /// Cholesky factorization before giving up (default 6).
    pub max_damp_retries: usize,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            group: GroupSize::Cols(128),
            block_size: 128,
            percdamp: 0.01,
            act_order: false,
            static_groups: false,
            max_damp_retries: 6,
        }
    }
}

/// What happened during a GPTQ run.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqReport {
    /// Damping fraction finally used (larger than asked after failed factorizations).
    pub percdamp_used: f64,
    /// Failed Cholesky factorizations (each followed by 10× damping).
    pub damp_retries: usize,
    /// Input columns with no calibration signal (weights zeroed).
    pub dead_columns: usize,
    /// Whether columns were processed in act-order.
    pub act_order: bool,
    /// Whether group parameters were static.
    pub static_groups: bool,
    /// GPTQ's own objective `Σ (w - q)² / U[j][j]² / 2` over all weights.
    pub proxy_loss: f64,
    /// Human-readable remarks (damping increases, ...), empty when all went as asked.
    pub notes: Vec<String>,
}

/// A GPTQ-quantized matrix and its report.
#[derive(Debug, Clone)]
pub struct GptqResult {
    /// The q4 matrix.
    pub matrix: QuantizedMatrix,
    /// How the run went.
    pub report: GptqReport,
}

/// Running `Σ xᵀx` over calibration rows of one layer, kept in f64.
///
/// Layers that share their input (q/k/v projections) can share one.
#[derive(Debug, Clone)]
pub struct Hessian {
    cols: usize,
    rows_seen: usize,
    /// `cols x cols`, only the lower triangle is meaningful.
    xtx: Vec<f64>,
}

/// Rows multiplied per f32 product before accumulating into f64.
const HESSIAN_CHUNK_ROWS: usize = 8192;

impl Hessian {
    /// An empty accumulator for `cols` inputs.
    pub fn new(cols: usize) -> Result<Self, QuantError> {
        if cols == 0 {
            return Err(QuantError::Invalid("Hessian of zero columns".into()));
        }
        Ok(Hessian {
            cols,
            rows_seen: 0,
            xtx: vec![0.0; cols * cols],
        })
    }

    /// The Hessian of one calibration matrix.
    pub fn from_calib(calib: &Matrix) -> Result<Self, QuantError> {
        let mut h = Hessian::new(calib.cols())?;
        h.add(calib)?;
        Ok(h)
    }

    /// Adds calibration rows (`n x cols`, finite).
    pub fn add(&mut self, batch: &Matrix) -> Result<(), QuantError> {
        check_calib(batch, self.cols, "GPTQ")?;
        let cols = self.cols;
        let mut part = Mat::<f32>::zeros(cols, cols);
        for chunk in batch.data().chunks(HESSIAN_CHUNK_ROWS * cols) {
            let n = chunk.len() / cols;
            let x = MatRef::from_row_major_slice(chunk, n, cols);
            // Only the lower triangle: half the work of a full XᵀX.
            triangular::matmul(
                part.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                x.transpose(),
                BlockStructure::Rectangular,
                x,
                BlockStructure::Rectangular,
                1.0f32,
                Par::rayon(0),
            );
            self.xtx
                .par_chunks_mut(cols)
                .enumerate()
                .for_each(|(i, row)| {
                    for (j, v) in row.iter_mut().enumerate().take(i + 1) {
                        *v += part[(i, j)] as f64;
                    }
                });
        }
        self.rows_seen += batch.rows();
        Ok(())
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Calibration rows accumulated.
    pub fn rows_seen(&self) -> usize {
        self.rows_seen
    }

    /// `H = 2·XᵀX/n` as a full symmetric row-major `cols x cols` matrix.
    fn full(&self) -> Vec<f64> {
        let n = self.cols;
        let f = 2.0 / self.rows_seen.max(1) as f64;
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = self.xtx[i * n + j] * f;
                h[i * n + j] = v;
                h[j * n + i] = v;
            }
        }
        h
    }
}

/// GPTQ-quantizes `w` (`rows x cols`, row-major, `Y = X · Wᵀ`) to q4 using the
/// calibration inputs `calib` (`n x cols`). `progress(done, total)` is called
/// with the number of columns processed.
pub fn gptq(
    w: &Matrix,
    calib: &Matrix,
    cfg: &GptqConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GptqResult, QuantError> {
    check_calib(calib, w.cols(), "GPTQ")?;
    let h = Hessian::from_calib(calib)?;
    gptq_with_hessian(w, &h, cfg, progress)
}

/// [`gptq`] with a precomputed [`Hessian`].
pub fn gptq_with_hessian(
    w: &Matrix,
    hessian: &Hessian,
    cfg: &GptqConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GptqResult, QuantError> {
    let (rows, cols) = (w.rows(), w.cols());
    let group = cfg.group.validate()?;
    if hessian.cols() != cols {
        return Err(QuantError::Invalid(format!(
            "GPTQ: the Hessian is {0}x{0} (calibration activations {0} wide) but the layer has \
             {cols} input columns",
            hessian.cols()
        )));
    }
    if hessian.rows_seen() == 0 {
        return Err(QuantError::Invalid(
            "GPTQ: no calibration rows were accumulated".into(),
        ));
    }
    if cfg.block_size == 0 {
        return Err(QuantError::Invalid(
            "GPTQ: block size must be positive".into(),
        ));
    }
    if !(cfg.percdamp.is_finite() && cfg.percdamp >= 0.0) {
        return Err(QuantError::Invalid(format!(
            "GPTQ: damping fraction {} must be finite and non-negative",
            cfg.percdamp
        )));
    }
    if let Some((r, c, v)) = w.first_non_finite() {
        return Err(QuantError::Invalid(format!(
            "GPTQ: weight ({r}, {c}) is {v}"
        )));
    }
    let static_groups = cfg.static_groups || cfg.act_order;
    let mut notes = Vec::new();
    progress(0, cols);

    // 1. Hessian, dead columns.
    let mut h = hessian.full();
    let mut wt = w.data().to_vec();
    let mut dead = 0;
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            dead += 1;
            for row in wt.chunks_mut(cols) {
                row[j] = 0.0;
            }
        }
    }

    // Static group parameters: from the (dead-zeroed) original weights.
    let glen = group.len(cols);
    let gpr = group.groups_per_row(cols);
    let mut scales = vec![f16::ZERO; rows * gpr];
    let mut zeros = vec![0u8; rows * gpr];
    if static_groups {
        scales
            .par_chunks_mut(gpr)
            .zip(zeros.par_chunks_mut(gpr))
            .zip(wt.par_chunks(cols))
            .for_each(|((s, z), row)| {
                for (g, chunk) in row.chunks(glen).enumerate() {
                    let (lo, hi) = min_max(chunk);
                    let (sc, ze, _) = q4_params(lo, hi);
                    s[g] = sc;
                    z[g] = ze;
                }
            });
    }

    // Act-order: process columns by decreasing H[j][j] (stable, so ties keep order).
    let perm: Vec<usize> = if cfg.act_order {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
        p
    } else {
        (0..cols).collect()
    };
    if cfg.act_order {
        let hp: Vec<f64> = (0..cols * cols)
            .map(|k| h[perm[k / cols] * cols + perm[k % cols]])
            .collect();
        h = hp;
        wt.par_chunks_mut(cols).for_each(|row| {
            let orig = row.to_vec();
            for (dst, &p) in row.iter_mut().zip(&perm) {
                *dst = orig[p];
            }
        });
    }

    // 2. U = upper Cholesky factor of H⁻¹ (with damping retries).
    let (u, percdamp_used, damp_retries) =
        inverse_cholesky_upper(&h, cols, cfg.percdamp, cfg.max_damp_retries)?;
    drop(h);
    if damp_retries > 0 {
        notes.push(format!(
            "Cholesky factorization failed {damp_retries} time(s) at damping {}; succeeded with \
             damping {percdamp_used} of the mean Hessian diagonal",
            cfg.percdamp
        ));
    }
    if dead > 0 {
        notes.push(format!(
            "{dead} input column(s) have no calibration signal; their weights were set to 0"
        ));
    }

    // 3. Blocks with lazy batch updates.
    let bs = cfg.block_size;
    let mut err = vec![0.0f32; rows * bs];
    let mut codes_p = vec![0u8; rows * cols];
    let mut proxy_loss = 0.0f64;
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + bs).min(cols);
        let u = &u;
        let perm = &perm;
        proxy_loss += wt
            .par_chunks_mut(cols)
            .zip(err.par_chunks_mut(bs))
            .zip(codes_p.par_chunks_mut(cols))
            .zip(scales.par_chunks_mut(gpr))
            .zip(zeros.par_chunks_mut(gpr))
            .map(|((((row, e), codes), sc), ze)| {
                let mut loss = 0.0f64;
                for j in i1..i2 {
                    let g = if static_groups {
                        perm[j] / glen
                    } else {
                        if j % glen == 0 {
                            let end = (j + glen).min(cols);
                            let (lo, hi) = min_max(&row[j..end]);
                            let (s, z, _) = q4_params(lo, hi);
                            sc[j / glen] = s;
                            ze[j / glen] = z;
                        }
                        j / glen
                    };
                    let s32 = sc[g].to_f32();
                    let z = ze[g];
                    let x = row[j];
                    let q = if s32 == 0.0 {
                        z as u32
                    } else {
                        q4_code(x, 1.0 / s32, z)
                    };
                    let deq = (q as f32 - z as f32) * s32;
                    codes[j] = q as u8;
                    let urow = &u[j * cols..(j + 1) * cols];
                    let d = urow[j];
                    let ej = (x - deq) / d;
                    e[j - i1] = ej;
                    loss += 0.5 * (ej as f64) * (ej as f64);
                    row[j] = deq;
                    if ej != 0.0 {
                        for (wv, hv) in row[j + 1..i2].iter_mut().zip(&urow[j + 1..i2]) {
                            *wv -= ej * hv;
                        }
                    }
                }
                loss
            })
            .sum::<f64>();
        if i2 < cols {
            let b = i2 - i1;
            let dst = MatMut::from_column_major_slice_with_stride_mut(&mut wt, cols, rows, cols)
                .subrows_mut(i2, cols - i2);
            let lhs = MatRef::from_row_major_slice(u, cols, cols)
                .submatrix(i1, i2, b, cols - i2)
                .transpose();
            let rhs = MatRef::from_column_major_slice_with_stride(&err, b, rows, bs);
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::rayon(0));
        }
        progress(i2, cols);
        i1 = i2;
    }

    // 4. Pack in the original column order.
    let words = FormatKind::Q4.row_stride_bytes(cols) / 4;
    let mut codes = vec![0u32; rows * words];
    codes
        .par_chunks_mut(words)
        .zip(codes_p.par_chunks(cols))
        .for_each(|(wd, cp)| {
            for (j, &q) in cp.iter().enumerate() {
                let c = perm[j];
                wd[c / 8] |= (q as u32) << (4 * (c % 8));
            }
        });
    let matrix = QuantizedMatrix::new(
        rows,
        cols,
        group,
        Packed::Q4(Q4 {
            scales,
            zeros,
            codes,
        }),
    )?;
    Ok(GptqResult {
        matrix,
        report: GptqReport {
            percdamp_used,
            damp_retries,
            dead_columns: dead,
            act_order: cfg.act_order,
            static_groups,
            proxy_loss,
            notes,
        },
    })
}

/// Upper Cholesky factor `U` of `(H + λI)⁻¹` (row-major f32, `n x n`) with
/// `λ = percdamp · mean(diag H)`, retrying with 10× damping on failure.
/// Returns `(U, percdamp used, failed attempts)`.
fn inverse_cholesky_upper(
    h: &[f64],
    n: usize,
    percdamp: f64,
    max_retries: usize,
) -> Result<(Vec<f32>, f64, usize), QuantError> {
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    if !(mean_diag.is_finite() && mean_diag > 0.0) {
        return Err(QuantError::Numerical(format!(
            "GPTQ: mean Hessian diagonal is {mean_diag}"
        )));
    }
    let mut p = percdamp;
    for attempt in 0..=max_retries {
        let damp = p * mean_diag;
        // J·(H + λI)·J, J reversing the order.
        let rev = Mat::<f64>::from_fn(n, n, |i, j| {
            let v = h[(n - 1 - i) * n + (n - 1 - j)];
            if i == j {
                v + damp
            } else {
                v
            }
        });
        if let Ok(llt) = rev.llt(Side::Lower) {
            let mut linv = Mat::<f64>::zeros(n, n);
            invert_lower_triangular(linv.as_mut(), llt.L(), Par::rayon(0));
            let mut u = vec![0.0f32; n * n];
            let mut ok = true;
            for i in 0..n {
                for j in i..n {
                    let v = linv[(n - 1 - i, n - 1 - j)] as f32;
                    if !v.is_finite() {
                        ok = false;
                    }
                    u[i * n + j] = v;
                }
                if u[i * n + i].is_nan() || u[i * n + i] <= 0.0 {
                    ok = false;
                }
            }
            if ok {
                return Ok((u, p, attempt));
            }
        }
        p = if p > 0.0 { p * 10.0 } else { 1e-3 };
    }
    Err(QuantError::Numerical(format!(
        "GPTQ: Cholesky factorization of the damped Hessian failed {} times (damping up to {} of \
         the mean diagonal); the calibration activations are probably degenerate",
        max_retries + 1,
        p / 10.0
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::linalg::solvers::DenseSolveCore;

    /// `U` from the reversal trick equals the upper Cholesky factor of the
    /// explicit inverse, and `Uᵀ·U·(H + λI) = I`.
    #[test]
    fn reversal_trick_is_cholesky_of_inverse() {
        let n = 7;
        let a: Vec<f64> = (0..n * 12)
            .map(|k| ((k * 37 % 19) as f64 - 9.0) / 5.0)
            .collect();
        let x = MatRef::from_row_major_slice(&a, 12, n);
        let hm = x.transpose() * x;
        let h: Vec<f64> = (0..n * n).map(|k| hm[(k / n, k % n)]).collect();
        let (u, p, retries) = inverse_cholesky_upper(&h, n, 0.01, 3).unwrap();
        assert_eq!((p, retries), (0.01, 0));
        let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        let hd = Mat::<f64>::from_fn(n, n, |i, j| {
            h[i * n + j] + if i == j { 0.01 * mean } else { 0.0 }
        });
        let inv = hd.llt(Side::Lower).unwrap().inverse();
        let want = inv.llt(Side::Lower).unwrap();
        let want_u = want.L().transpose();
        for i in 0..n {
            for j in 0..n {
                let got = u[i * n + j] as f64;
                assert!((got - want_u[(i, j)]).abs() < 1e-5 * (1.0 + want_u[(i, j)].abs()));
            }
        }
    }

    #[test]
    fn singular_hessian_retries_damping() {
        // Rank-1 Hessian with no damping: Cholesky fails, retries succeed.
        let n = 4;
        let v = [1.0, 2.0, 3.0, 4.0];
        let h: Vec<f64> = (0..n * n).map(|k| v[k / n] * v[k % n]).collect();
        let (_, p, retries) = inverse_cholesky_upper(&h, n, 0.0, 6).unwrap();
        assert!(retries >= 1);
        assert!(p > 0.0);
    }
}
