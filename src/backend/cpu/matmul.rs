//! Dequantized matmul on the packed data: `Y = X · Wᵀ`.
//!
//! Order of work: scale X by the activation scale (AWQ, SmoothQuant; the
//! GEMM does it itself, fused into its rounding of X on the AVX-512 int8
//! path), run the dense part (GEMV below [`GEMM_MIN_BATCH`] rows, GEMM from there) on the chosen
//! [`KernelPath`], and add the sparse outliers (cost proportional to their
//! number: the GEMV adds each task's rows right after their dense pass, the
//! GEMM in a pass after).

use std::borrow::Cow;

use super::kernel::KernelPath;
use super::{gemm, gemv, sparse};
use crate::backend::{BackendError, GEMM_MIN_BATCH};
use crate::format::{FormatKind, QuantizedMatrix};

/// `Y = X · Wᵀ` (`X`: `batch x cols`, `Y`: `batch x rows`, row-major) on the
/// process's selected kernel path ([`KernelPath::selected`]).
pub fn matmul(m: &QuantizedMatrix, x: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
    let mut y = vec![0.0f32; batch * m.rows()];
    matmul_into(m, x, batch, &mut y)?;
    Ok(y)
}

/// Like [`matmul`], writing into `y` (`batch * rows` values).
pub fn matmul_into(
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), BackendError> {
    matmul_with(KernelPath::selected(), m, x, batch, y)
}

/// Like [`matmul_into`] on an explicit kernel path (an error when this CPU
/// cannot run it), with [`GemvActivations::Int8`]: q8, q4 and lut4 GEMVs
/// (batch below [`GEMM_MIN_BATCH`]) and the q4 / lut4 GEMM round each
/// activation row to int8 per block of 32 columns (see
/// `docs/PERFORMANCE.md`); every other case keeps f32 activations.
pub fn matmul_with(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), BackendError> {
    matmul_opts(path, GemvActivations::Int8, m, x, batch, y)
}

/// What the CPU's q8 / q4 / lut4 matmuls do with the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemvActivations {
    /// Round them to int8 per block of 32 columns and use integer dot
    /// products where that costs little fidelity next to the weights' own
    /// error: every q8 / q4 / lut4 GEMV (batch below [`GEMM_MIN_BATCH`])
    /// and the q4 / lut4 GEMM (NMSE vs the exact product ~4e-5 on Gaussian
    /// data; tests bound it at 1.25x the NMSE that rounding the activations
    /// to int8 adds, computed in f64 on each case's data). The q8 GEMM
    /// keeps f32 activations: there the rounding doubles the weights'
    /// error (all-MiniLM-L6-v2's pooled cosine, mean / min, 0.99979 /
    /// 0.99954 -> 0.99957 / 0.99888); for 4-bit weights it is 0.1 % of
    /// theirs. Paths without AVX-512 VNNI multiply the rounded values in
    /// f32. The fast default.
    #[default]
    Int8,
    /// As [`Int8`](Self::Int8), and the q8 GEMM too: int8 weights times
    /// int8 activations (W8A8, as ggml's q8_0 and dynamic-quantization
    /// engines do), 2.2-2.5x the f32-activation q8 GEMM on AVX-512 VNNI,
    /// at the fidelity cost above.
    Int8All,
    /// Keep it f32 and dequantize the weights in registers: exact up to f32
    /// rounding, for use as a reference. (A W8A8 matrix,
    /// `QuantizedMatrix::int8_activations`, rounds under every choice: the
    /// rounding is its arithmetic, not a kernel's shortcut.)
    F32,
}

/// Whether a CPU matmul of `batch` rows with `act` rounds a `kind` matrix's
/// activations to int8 (see [`GemvActivations`]): with
/// [`GemvActivations::Int8`] every q8 / q4 / lut4 GEMV (batch below
/// [`GEMM_MIN_BATCH`]) and the q4 / lut4 GEMM; with
/// [`GemvActivations::Int8All`] every q8 / q4 / lut4 matmul.
pub fn uses_int8_activations(act: GemvActivations, kind: FormatKind, batch: usize) -> bool {
    match act {
        GemvActivations::F32 => false,
        GemvActivations::Int8All => kind.is_grouped(),
        GemvActivations::Int8 => {
            if batch < GEMM_MIN_BATCH {
                kind.is_grouped()
            } else {
                matches!(kind, FormatKind::Q4 | FormatKind::Lut4)
            }
        }
    }
}

/// The sparse part alone: adds `X · Oᵀ` for `m`'s outliers `O` into `y`
/// (nothing when `m` has none), with `X` scaled by `m`'s activation scale
/// as [`matmul_with`] does. `matmul_with` = dense part + this; use it to see
/// what the outliers cost apart from the dense product.
pub fn matmul_outliers_into(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), BackendError> {
    check_args(path, m, x, batch, y)?;
    let (rows, cols) = (m.rows(), m.cols());
    if let Some(o) = m.outliers() {
        let x = scaled(m, x);
        sparse::add_outliers(path, o, &x, cols, rows, y);
    }
    Ok(())
}

/// `x` times `m`'s activation scale, row by row (borrowed when it has none).
fn scaled<'a>(m: &QuantizedMatrix, x: &'a [f32]) -> Cow<'a, [f32]> {
    match m.act_scale() {
        Some(a) => {
            let mut v = Vec::new();
            scale_rows_into(x, a, &mut v);
            Cow::Owned(v)
        }
        None => Cow::Borrowed(x),
    }
}

/// Rows of `x` (`a.len()` columns each) times `a`, into `out` (cleared
/// first; a buffer the caller may keep), rows in parallel.
pub(super) fn scale_rows_into(x: &[f32], a: &[f32], out: &mut Vec<f32>) {
    use rayon::prelude::*;
    out.clear();
    out.resize(x.len(), 0.0);
    out.par_chunks_mut(a.len())
        .zip(x.par_chunks(a.len()))
        .for_each(|(o, r)| {
            for ((o, &v), &s) in o.iter_mut().zip(r).zip(a) {
                *o = v * s;
            }
        });
}

/// The path runs here and the lengths fit `m`.
fn check_args(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &[f32],
) -> Result<(), BackendError> {
    path.check()?;
    let (rows, cols) = (m.rows(), m.cols());
    if batch == 0 {
        return Err(BackendError::Invalid("batch must be at least 1".into()));
    }
    if x.len() != batch * cols {
        return Err(BackendError::Invalid(format!(
            "input has {} values, expected batch {batch} x {cols} columns",
            x.len()
        )));
    }
    if y.len() != batch * rows {
        return Err(BackendError::Invalid(format!(
            "output has {} values, expected batch {batch} x {rows} rows",
            y.len()
        )));
    }
    Ok(())
}

/// [`matmul_with`] with an explicit choice of GEMV activations.
pub fn matmul_opts(
    path: KernelPath,
    act: GemvActivations,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), BackendError> {
    matmul_bias(path, act, m, x, batch, None, y)
}

/// [`matmul_opts`] plus a bias row added to every output row (`rows`
/// values): the GEMM adds it while it writes `Y`, saving a pass over `Y`.
pub fn matmul_bias(
    path: KernelPath,
    act: GemvActivations,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), BackendError> {
    check_args(path, m, x, batch, y)?;
    let (rows, cols) = (m.rows(), m.cols());
    if let Some(b) = bias {
        if b.len() != rows {
            return Err(BackendError::Invalid(format!(
                "bias has {} values, expected {rows} (the matrix rows)",
                b.len()
            )));
        }
    }
    // A W8A8 matrix rounds whatever `act` says: the rounding is part of
    // its arithmetic (`QuantizedMatrix::int8_activations`).
    let int8 = m.int8_activations() || uses_int8_activations(act, m.kind(), batch);
    if batch < GEMM_MIN_BATCH {
        let x = scaled(m, x);
        // The GEMV adds the outliers task by task.
        gemv::gemv(path, m, &x, batch, y, int8);
        if let Some(b) = bias {
            for yr in y.chunks_mut(rows) {
                for (o, &v) in yr.iter_mut().zip(b) {
                    *o += v;
                }
            }
        }
    } else {
        // The GEMM applies the activation scale itself (fused into the
        // int8 rounding of X on AVX-512: a pass over X less).
        gemm::gemm(path, m, x, batch, bias, y, int8);
        if let Some(o) = m.outliers() {
            sparse::add_outliers(path, o, &scaled(m, x), cols, rows, y);
        }
    }
    Ok(())
}
