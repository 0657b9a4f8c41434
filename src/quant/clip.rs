//! Clipping search: each group's q4 range chosen to minimize its
//! reconstruction error instead of spanning min..max.
//!
//! For a group with range `[lo, hi]` the search tries `[p·lo, p·hi]` for shrink
//! factors `p` on a grid from 1 down to `min_shrink` and keeps the one with the
//! smallest squared error after quantization with the exact q4 arithmetic.
//! `p = 1` is always tried first and only beaten strictly, so the result is
//! never worse than plain min/max on any group.

use super::QuantError;
use crate::format::{self, min_max, q4_code, q4_params, GroupSize, Matrix, QuantizedMatrix};

/// Grid of the clipping search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSearch {
    /// Smallest shrink factor tried (0 < min_shrink <= 1).
    pub min_shrink: f32,
    /// Number of grid points between 1 and `min_shrink`, inclusive.
    pub steps: usize,
}

impl Default for ClipSearch {
    fn default() -> Self {
        ClipSearch {
            min_shrink: 0.5,
            steps: 26,
        }
    }
}

impl ClipSearch {
    /// Shrink factors, starting at 1.
    pub fn factors(&self) -> impl Iterator<Item = f32> + '_ {
        let n = self.steps.max(2);
        (0..n).map(move |i| 1.0 - (1.0 - self.min_shrink) * i as f32 / (n - 1) as f32)
    }
}

/// Squared error of `values` quantized to q4 with range `[lo, hi]`.
pub fn q4_group_error(values: &[f32], lo: f32, hi: f32) -> f64 {
    let (s, z, inv) = q4_params(lo, hi);
    let s = s.to_f32();
    values
        .iter()
        .map(|&x| {
            let q = if inv == 0.0 {
                z as u32
            } else {
                q4_code(x, inv, z)
            };
            let d = (q as f32 - z as f32) * s - x;
            (d as f64) * (d as f64)
        })
        .sum()
}

/// The best `[lo, hi]` for one group.
pub fn best_range(values: &[f32], search: &ClipSearch) -> (f32, f32) {
    let (lo, hi) = min_max(values);
    let mut best = (lo, hi);
    let mut best_err = f64::INFINITY;
    for p in search.factors() {
        let err = q4_group_error(values, lo * p, hi * p);
        if err < best_err {
            best_err = err;
            best = (lo * p, hi * p);
        }
    }
    best
}

/// q4 with each group's range from the clipping search.
pub fn int4_clip(
    w: &Matrix,
    group: GroupSize,
    search: &ClipSearch,
) -> Result<QuantizedMatrix, QuantError> {
    if !(search.min_shrink > 0.0 && search.min_shrink <= 1.0) {
        return Err(QuantError::Invalid(format!(
            "clip search min_shrink must be in (0, 1], got {}",
            search.min_shrink
        )));
    }
    Ok(format::pack_q4_with(w, group, &|_, _, v| {
        best_range(v, search)
    })?)
}
