//! Non-uniform 4-bit quantization into the lut4 format: the NF4 codebook and a
//! learned Lloyd-Max (1-D k-means) codebook.
//!
//! Both normalize each group by its absmax (the lut4 scale) so the codebook
//! lives in [-1, 1]. The learned codebook minimizes the squared error in
//! *weight* space: a normalized value `v = w / s` of a group with scale `s`
//! contributes `s² (v - c)²`, so the k-means is weighted by `s²`.
//!
//! The k-means runs on a fine histogram of the normalized values (65,536 bins
//! over [-1, 1], each holding its weight and weighted sum), which makes every
//! Lloyd iteration O(bins) whatever the matrix size, and the result
//! deterministic for a seed. The bin width (3e-5) is far below any codebook
//! spacing, so the histogram changes the levels by less than the f16 rounding
//! of the scales.

use half::f16;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::QuantError;
use crate::format::{self, GroupSize, Matrix, QuantizedMatrix, NF4_CODEBOOK};

/// lut4 with the NF4 codebook.
pub fn nf4(w: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, QuantError> {
    Ok(format::pack_lut4(w, group, NF4_CODEBOOK)?)
}

/// Settings of the Lloyd-Max / k-means codebook fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansConfig {
    /// Seed of the k-means++ initialization.
    pub seed: u64,
    /// Stop when no level moves by more than this.
    pub tolerance: f64,
    /// Iteration cap per restart.
    pub max_iter: usize,
    /// Independent k-means++ restarts; the lowest error wins.
    pub restarts: usize,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            seed: 42,
            tolerance: 1e-9,
            max_iter: 500,
            restarts: 4,
        }
    }
}

const BINS: usize = 1 << 16;

/// A weighted histogram of values in [-1, 1].
struct Histogram {
    /// Total weight per bin.
    mass: Vec<f64>,
    /// Weighted sum of values per bin.
    sum: Vec<f64>,
}

impl Histogram {
    fn center(&self, i: usize) -> f64 {
        if self.mass[i] > 0.0 {
            self.sum[i] / self.mass[i]
        } else {
            -1.0 + (i as f64 + 0.5) * 2.0 / BINS as f64
        }
    }
}

fn bin_of(v: f32) -> usize {
    (((v as f64 + 1.0) * 0.5 * BINS as f64) as usize).min(BINS - 1)
}

/// Normalized values and their weights, accumulated into the histogram.
fn histogram(w: &Matrix, group: GroupSize) -> Histogram {
    let glen = group.len(w.cols());
    let mut h = Histogram {
        mass: vec![0.0; BINS],
        sum: vec![0.0; BINS],
    };
    for r in 0..w.rows() {
        for chunk in w.row(r).chunks(glen) {
            let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = f16::from_f32(amax).to_f32();
            if s == 0.0 {
                continue;
            }
            let inv = 1.0 / s;
            let weight = (s as f64) * (s as f64);
            for &x in chunk {
                let v = (x * inv).clamp(-1.0, 1.0);
                let b = bin_of(v);
                h.mass[b] += weight;
                h.sum[b] += weight * v as f64;
            }
        }
    }
    h
}

/// Weighted squared error of the histogram against sorted `levels`, and the
/// per-level mass and sum (one Lloyd step's statistics).
fn lloyd_stats(h: &Histogram, levels: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let k = levels.len();
    let (mut mass, mut sum) = (vec![0.0; k], vec![0.0; k]);
    let mut err = 0.0;
    let mut j = 0;
    for i in 0..BINS {
        if h.mass[i] == 0.0 {
            continue;
        }
        let c = h.center(i);
        while j + 1 < k && c > 0.5 * (levels[j] + levels[j + 1]) {
            j += 1;
        }
        mass[j] += h.mass[i];
        sum[j] += h.sum[i];
        let d = c - levels[j];
        err += h.mass[i] * d * d;
    }
    (err, mass, sum)
}

/// k-means++ seeding over the histogram bins (probability ∝ mass · distance²).
fn kmeans_pp(h: &Histogram, k: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    let occupied: Vec<usize> = (0..BINS).filter(|&i| h.mass[i] > 0.0).collect();
    let total: f64 = occupied.iter().map(|&i| h.mass[i]).sum();
    let pick = |weights: &dyn Fn(usize) -> f64, total: f64, rng: &mut Xoshiro256PlusPlus| {
        let mut t = rng.random::<f64>() * total;
        for &i in &occupied {
            t -= weights(i);
            if t <= 0.0 {
                return i;
            }
        }
        *occupied.last().unwrap_or(&0)
    };
    let mut centers = vec![h.center(pick(&|i| h.mass[i], total, rng))];
    let mut d2: Vec<f64> = (0..BINS)
        .map(|i| (h.center(i) - centers[0]).powi(2))
        .collect();
    while centers.len() < k {
        let tot: f64 = occupied.iter().map(|&i| h.mass[i] * d2[i]).sum();
        if tot <= 0.0 {
            break; // fewer distinct values than levels
        }
        let c = h.center(pick(&|i| h.mass[i] * d2[i], tot, rng));
        centers.push(c);
        for i in &occupied {
            d2[*i] = d2[*i].min((h.center(*i) - c).powi(2));
        }
    }
    // Pad with spread values if the data had fewer distinct values than k.
    while centers.len() < k {
        centers.push(-1.0 + 2.0 * centers.len() as f64 / k as f64);
    }
    centers.sort_by(f64::total_cmp);
    centers
}

/// Fits a 16-level codebook to the normalized values of `w` (see module docs).
/// Returns the codebook in ascending order.
pub fn fit_codebook(
    w: &Matrix,
    group: GroupSize,
    cfg: &KMeansConfig,
) -> Result<[f32; 16], QuantError> {
    let group = group.validate()?;
    if cfg.max_iter == 0 || cfg.restarts == 0 {
        return Err(QuantError::Invalid(
            "k-means needs at least one iteration and one restart".into(),
        ));
    }
    let h = histogram(w, group);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut best: Option<(f64, Vec<f64>)> = None;
    for _ in 0..cfg.restarts {
        let mut levels = kmeans_pp(&h, 16, &mut rng);
        let mut err = f64::INFINITY;
        for _ in 0..cfg.max_iter {
            let (e, mass, sum) = lloyd_stats(&h, &levels);
            err = e;
            let mut moved = 0.0f64;
            for j in 0..16 {
                if mass[j] > 0.0 {
                    let c = sum[j] / mass[j];
                    moved = moved.max((c - levels[j]).abs());
                    levels[j] = c;
                }
            }
            levels.sort_by(f64::total_cmp);
            if moved <= cfg.tolerance {
                err = lloyd_stats(&h, &levels).0;
                break;
            }
        }
        if best.as_ref().is_none_or(|(b, _)| err < *b) {
            best = Some((err, levels));
        }
    }
    let levels = best.map(|b| b.1).unwrap_or_default();
    let mut cb = [0.0f32; 16];
    for (c, l) in cb.iter_mut().zip(&levels) {
        *c = *l as f32;
    }
    cb.sort_by(f32::total_cmp);
    Ok(cb)
}

/// lut4 with a Lloyd-Max codebook learned from `w`.
pub fn kmeans4(
    w: &Matrix,
    group: GroupSize,
    cfg: &KMeansConfig,
) -> Result<QuantizedMatrix, QuantError> {
    let cb = fit_codebook(w, group, cfg)?;
    Ok(format::pack_lut4(w, group, cb)?)
}
