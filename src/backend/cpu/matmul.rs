//! Dequantized matmul on the packed data: `Y = X · Wᵀ`.

use rayon::prelude::*;

use crate::format::QuantizedMatrix;

/// Rows decoded per rayon task: enough work to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

/// `Y = X · Wᵀ` (`X`: `batch x cols`, `Y`: `batch x rows`, row-major).
pub fn matmul(m: &QuantizedMatrix, x: &[f32], batch: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; batch * m.rows()];
    matmul_into(m, x, batch, &mut y);
    y
}

/// Like [`matmul`], writing into `y` (`batch * rows` values).
pub fn matmul_into(m: &QuantizedMatrix, x: &[f32], batch: usize, y: &mut [f32]) {
    let (rows, cols) = (m.rows(), m.cols());
    assert_eq!(x.len(), batch * cols, "input length");
    assert_eq!(y.len(), batch * rows, "output length");
    if batch == 1 {
        // GEMV: the output row is contiguous, write it directly.
        y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each_init(
            || vec![0.0f32; cols],
            |w, (t, out)| {
                for (i, o) in out.iter_mut().enumerate() {
                    m.dequantize_row(t * ROWS_PER_TASK + i, w);
                    *o = dot(w, x);
                }
            },
        );
        return;
    }
    // GEMM: each task decodes a row once and reuses it for the whole batch,
    // producing Yᵀ rows; a final transpose puts them in place.
    let mut yt = vec![0.0f32; rows * batch];
    yt.par_chunks_mut(ROWS_PER_TASK * batch)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; cols],
            |w, (t, out)| {
                for (i, orow) in out.chunks_mut(batch).enumerate() {
                    m.dequantize_row(t * ROWS_PER_TASK + i, w);
                    for (b, o) in orow.iter_mut().enumerate() {
                        *o = dot(w, &x[b * cols..(b + 1) * cols]);
                    }
                }
            },
        );
    for r in 0..rows {
        for b in 0..batch {
            y[b * rows + r] = yt[r * batch + b];
        }
    }
}

/// Dot product with eight independent accumulators (vectorizes well).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut s = 0.0f32;
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    let t = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    t + s
}
