//! Outlier-aware int4 in the style of EasyQuant (Tang et al., 2023): weights
//! far from their row's mean are kept (as sparse f16 outliers) and the
//! quantization range of the remaining weights is optimized for their
//! reconstruction error.
//!
//! A weight is an outlier when `|w - mean_row| > k · std_row`. The dense q4
//! part holds 0 at outlier positions (0 is always exactly representable: the
//! q4 range contains 0 and its zero point is an integer), and the sparse part
//! holds `f16(w)`, so `dense + outlier = f16(w)`. The dense groups' ranges come
//! from a fine clipping search over the non-outlier weights.

use half::f16;
use rayon::prelude::*;

use super::clip::{best_range, ClipSearch};
use super::QuantError;
use crate::format::{self, GroupSize, Matrix, Outliers, QuantizedMatrix};

/// Settings of the outlier-aware quantizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EasyQuantConfig {
    /// Outlier threshold `k` in standard deviations of the row.
    pub threshold: f32,
    /// Range search of the dense part.
    pub search: ClipSearch,
}

impl Default for EasyQuantConfig {
    fn default() -> Self {
        EasyQuantConfig {
            threshold: 3.0,
            search: ClipSearch {
                min_shrink: 0.3,
                steps: 36,
            },
        }
    }
}

/// Outlier columns of one row, ascending.
pub fn row_outliers(row: &[f32], threshold: f32) -> Vec<u32> {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let limit = threshold as f64 * var.sqrt();
    row.iter()
        .enumerate()
        .filter(|(_, &v)| (v as f64 - mean).abs() > limit)
        .map(|(c, _)| c as u32)
        .collect()
}

/// q4 + sparse outliers.
pub fn easyquant4(
    w: &Matrix,
    group: GroupSize,
    cfg: &EasyQuantConfig,
) -> Result<QuantizedMatrix, QuantError> {
    if !(cfg.threshold > 0.0 && cfg.threshold.is_finite()) {
        return Err(QuantError::Invalid(format!(
            "outlier threshold must be a positive number of standard deviations, got {}",
            cfg.threshold
        )));
    }
    let cols = w.cols();
    let per_row: Vec<Vec<(u32, f16)>> = (0..w.rows())
        .into_par_iter()
        .map(|r| {
            let row = w.row(r);
            row_outliers(row, cfg.threshold)
                .into_iter()
                .map(|c| (c, f16::from_f32(row[c as usize])))
                .collect()
        })
        .collect();
    let mut dense = w.data().to_vec();
    for (r, outs) in per_row.iter().enumerate() {
        for &(c, _) in outs {
            dense[r * cols + c as usize] = 0.0;
        }
    }
    let dense = Matrix::from_vec(w.rows(), cols, dense)?;
    let search = cfg.search;
    let q = format::pack_q4_with(&dense, group, &|_, _, v| best_range(v, &search))?;
    Ok(q.with_outliers(Outliers::from_rows(&per_row))?)
}
