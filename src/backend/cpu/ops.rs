//! The CPU kernels of the forward-pass ops other than the matmul: layer
//! norm, activations, broadcast add, masked softmax, attention and row
//! selection, on row-major f32 slices, rayon over rows (or over sequences ×
//! heads for attention).
//!
//! Shapes are checked before these run ([`crate::backend::Op::check`]).

use rayon::prelude::*;

use crate::backend::Activation;

/// Rows per rayon task for the row-wise ops: enough work to amortize a task.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// `erfc(x)` for `x >= 0` in f32, fractional error below 1.2e-7 (the
/// Chebyshev fit of Numerical Recipes, §6.2). The WGSL and CUDA kernels use
/// the same fit so the three backends agree to rounding.
#[inline]
#[allow(clippy::excessive_precision)] // the published coefficients, as written
pub fn erfc_pos(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * (-x * x + p).exp()
}

/// GELU (erf form) in f32: `0.5 · x · erfc(-x / √2)`, computed from `erfc`
/// of a non-negative argument on both sides so the tails keep their
/// relative precision.
#[inline]
pub fn gelu(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    if z >= 0.0 {
        0.5 * x * (2.0 - erfc_pos(z))
    } else {
        0.5 * x * erfc_pos(-z)
    }
}

/// `x · σ(1.702 x)`.
#[inline]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// `y = f(x)` elementwise.
pub fn activation(kind: Activation, x: &[f32], y: &mut [f32]) {
    let f: fn(f32) -> f32 = match kind {
        Activation::Gelu => gelu,
        Activation::QuickGelu => quick_gelu,
    };
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = f(v);
            }
        });
}

/// Layer norm of every row of `x` (`cols` columns), biased variance.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, cols: usize, y: &mut [f32]) {
    let n = rows_per_task(cols) * cols;
    y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
        for (yr, xr) in y.chunks_mut(cols).zip(x.chunks(cols)) {
            // Two passes in f64: mean, then the centred sum of squares.
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = xr
                .iter()
                .map(|&v| {
                    let d = v as f64 - mean;
                    d * d
                })
                .sum::<f64>()
                / cols as f64;
            let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mean = mean as f32;
            for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                *o = (v - mean) * inv * g + b;
            }
        }
    });
}

/// `y = a + b`, `b` (`b_rows x cols`) repeated over the rows of `a`.
pub fn add(a: &[f32], b: &[f32], cols: usize, y: &mut [f32]) {
    let b_rows = b.len() / cols;
    let per = rows_per_task(cols);
    y.par_chunks_mut(per * cols)
        .zip(a.par_chunks(per * cols))
        .enumerate()
        .for_each(|(t, (y, a))| {
            for (i, (yr, ar)) in y.chunks_mut(cols).zip(a.chunks(cols)).enumerate() {
                let r = (t * per + i) % b_rows;
                let br = &b[r * cols..][..cols];
                for ((o, &u), &v) in yr.iter_mut().zip(ar).zip(br) {
                    *o = u + v;
                }
            }
        });
}

/// Softmax of one row in place over the kept positions (`keep` None: all).
#[inline]
fn softmax_row(row: &mut [f32], keep: Option<&[f32]>) {
    let kept = |j: usize| keep.is_none_or(|m| m[j] > 0.5);
    let mut max = f32::NEG_INFINITY;
    for (j, &v) in row.iter().enumerate() {
        if kept(j) && v > max {
            max = v;
        }
    }
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for (j, v) in row.iter_mut().enumerate() {
        *v = if kept(j) { (*v - max).exp() } else { 0.0 };
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Row-wise `softmax(scale · x)`, mask rows as [`crate::backend::Op::Softmax`] says.
pub fn softmax(x: &[f32], mask: Option<&[f32]>, scale: f32, cols: usize, y: &mut [f32]) {
    let rows = x.len() / cols;
    let per_mask = mask.map(|m| rows / (m.len() / cols));
    let per = rows_per_task(cols);
    y.par_chunks_mut(per * cols)
        .zip(x.par_chunks(per * cols))
        .enumerate()
        .for_each(|(t, (y, x))| {
            for (i, (yr, xr)) in y.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
                let r = t * per + i;
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = scale * v;
                }
                let keep = mask
                    .zip(per_mask)
                    .map(|(m, k)| &m[(r / k) * cols..][..cols]);
                softmax_row(yr, keep);
            }
        });
}

/// Dot product with eight independent accumulators (vectorizes).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Multi-head attention as [`crate::backend::Op::Attention`] defines it.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    seqs: usize,
    heads: usize,
    hidden: usize,
    y: &mut [f32],
) {
    let s = q.len() / hidden / seqs;
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    // One task per (sequence, head): gather its columns contiguously,
    // scores, softmax, weighted sum; the strips are scattered afterwards.
    let strips: Vec<Vec<f32>> = (0..seqs * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            let gather = |t: &[f32]| -> Vec<f32> {
                let mut out = Vec::with_capacity(s * d);
                for i in 0..s {
                    out.extend_from_slice(&t[(b * s + i) * hidden + h * d..][..d]);
                }
                out
            };
            let (qh, kh, vh) = (gather(q), gather(k), gather(v));
            let keep = mask.map(|m| &m[b * s..][..s]);
            let mut out = vec![0.0f32; s * d];
            let mut p = vec![0.0f32; s];
            for i in 0..s {
                let qi = &qh[i * d..][..d];
                for (j, pj) in p.iter_mut().enumerate() {
                    *pj = scale * dot(qi, &kh[j * d..][..d]);
                }
                softmax_row(&mut p, keep);
                let oi = &mut out[i * d..][..d];
                for (j, &pj) in p.iter().enumerate() {
                    if pj != 0.0 {
                        for (o, &vv) in oi.iter_mut().zip(&vh[j * d..][..d]) {
                            *o += pj * vv;
                        }
                    }
                }
            }
            out
        })
        .collect();
    for (task, strip) in strips.iter().enumerate() {
        let (b, h) = (task / heads, task % heads);
        for i in 0..s {
            y[(b * s + i) * hidden + h * d..][..d].copy_from_slice(&strip[i * d..][..d]);
        }
    }
}

/// `y[i] = x[offset + i·step]` row by row.
pub fn take_rows(x: &[f32], offset: usize, step: usize, cols: usize, y: &mut [f32]) {
    for (i, yr) in y.chunks_mut(cols).enumerate() {
        yr.copy_from_slice(&x[(offset + i * step) * cols..][..cols]);
    }
}
