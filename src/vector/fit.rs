//! Level fitting: the fixed uniform grid, the MSE-optimal uniform grid,
//! Lloyd-Max and the exact dynamic-programming optimum.
//!
//! Every iterative fitter needs one primitive: for ascending levels, the sum
//! and count of the values whose nearest level is each level ([`CellStats`]).
//! Two implementations give the same counts (exactly) and sums (to f64
//! rounding):
//! - [`SortedSample`], the fast CPU path: the sample is sorted once, with
//!   prefix sums; a cell is found by two binary searches, so one Lloyd
//!   iteration costs O(k log N) instead of O(N);
//! - [`DeviceSample`]: the sample lives on a [`Backend`] and each iteration is
//!   one `assign_levels` call (one pass over the sample on the device).
//!
//! Both place a value equal to the midpoint of two levels in the lower cell,
//! as [`crate::format::nearest_level`] does.

use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::VectorError;
use crate::backend::{Backend, MatrixHandle};
use crate::format::{self, FormatKind, GroupSize, Matrix, Packed, QuantizedMatrix};

/// Largest vector the exact DP optimum is computed for.
pub const DP_MAX_N: usize = 10_000;

/// Columns of the f32 matrix a vector is uploaded as.
pub const UPLOAD_COLS: usize = 4096;

/// Per-level sums and counts over a fixed set of values.
pub trait CellStats {
    /// For ascending `levels`, the sum and count of the values nearest to each
    /// level (ties to the lower level).
    fn cells(&mut self, levels: &[f32]) -> Result<(Vec<f64>, Vec<u64>), VectorError>;
    /// Summary of the values.
    fn summary(&self) -> &Summary;
}

/// Moments and range of a set of values (f64 sums).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values.
    pub n: u64,
    /// Σx.
    pub sum: f64,
    /// Σx².
    pub sum_sq: f64,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
}

impl Summary {
    /// Computes the summary of `values` (in parallel).
    pub fn of(values: &[f32]) -> Summary {
        let (sum, sum_sq, min, max) = values
            .par_chunks(1 << 16)
            .map(|c| {
                let (mut s, mut s2, mut lo, mut hi) =
                    (0.0f64, 0.0f64, f32::INFINITY, f32::NEG_INFINITY);
                for &x in c {
                    let d = x as f64;
                    s += d;
                    s2 += d * d;
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
                (s, s2, lo, hi)
            })
            .reduce(
                || (0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY),
                |a, b| (a.0 + b.0, a.1 + b.1, a.2.min(b.2), a.3.max(b.3)),
            );
        Summary {
            n: values.len() as u64,
            sum,
            sum_sq,
            min,
            max,
        }
    }

    /// Mean.
    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        let n = self.n.max(1) as f64;
        let m = self.sum / n;
        (self.sum_sq / n - m * m).max(0.0).sqrt()
    }

    /// Mean squared error of quantizing to `levels`, from the cell sums and counts.
    pub fn mse(&self, levels: &[f32], sums: &[f64], counts: &[u64]) -> f64 {
        let mut se = self.sum_sq;
        for ((&l, &s), &c) in levels.iter().zip(sums).zip(counts) {
            let l = l as f64;
            se += c as f64 * l * l - 2.0 * l * s;
        }
        se.max(0.0) / self.n.max(1) as f64
    }
}

/// Values sorted once, with prefix sums: the O(k log N) CPU path.
pub struct SortedSample {
    sorted: Vec<f32>,
    prefix: Vec<f64>,
    summary: Summary,
}

impl SortedSample {
    /// Sorts `values` (in parallel) and builds the prefix sums.
    pub fn new(mut values: Vec<f32>) -> Result<SortedSample, VectorError> {
        check_values(&values)?;
        values.par_sort_unstable_by(f32::total_cmp);
        let summary = Summary::of(&values);
        let mut prefix = Vec::with_capacity(values.len() + 1);
        let mut acc = 0.0f64;
        prefix.push(0.0);
        for &x in &values {
            acc += x as f64;
            prefix.push(acc);
        }
        Ok(SortedSample {
            sorted: values,
            prefix,
            summary,
        })
    }

    /// The sorted values.
    pub fn values(&self) -> &[f32] {
        &self.sorted
    }
}

impl CellStats for SortedSample {
    fn cells(&mut self, levels: &[f32]) -> Result<(Vec<f64>, Vec<u64>), VectorError> {
        check_levels(levels)?;
        let k = levels.len();
        let mut sums = vec![0.0f64; k];
        let mut counts = vec![0u64; k];
        let mut lo = 0usize;
        for j in 0..k {
            let hi = if j + 1 < k {
                // Same midpoint expression as `format::nearest_level`.
                let mid = 0.5 * (levels[j] + levels[j + 1]);
                lo + self.sorted[lo..].partition_point(|&x| x <= mid)
            } else {
                self.sorted.len()
            };
            sums[j] = self.prefix[hi] - self.prefix[lo];
            counts[j] = (hi - lo) as u64;
            lo = hi;
        }
        Ok((sums, counts))
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}

/// Values uploaded to a backend; cells come from `assign_levels`.
pub struct DeviceSample {
    backend: Arc<dyn Backend>,
    upload: Option<UploadedVector>,
    summary: Summary,
}

impl DeviceSample {
    /// Uploads `values` to `backend`.
    pub fn new(backend: Arc<dyn Backend>, values: &[f32]) -> Result<DeviceSample, VectorError> {
        check_values(values)?;
        let summary = Summary::of(values);
        let upload = UploadedVector::new(backend.as_ref(), values)?;
        Ok(DeviceSample {
            backend,
            upload: Some(upload),
            summary,
        })
    }
}

impl CellStats for DeviceSample {
    fn cells(&mut self, levels: &[f32]) -> Result<(Vec<f64>, Vec<u64>), VectorError> {
        check_levels(levels)?;
        let up = self
            .upload
            .as_ref()
            .ok_or_else(|| VectorError::Invalid("device sample already freed".into()))?;
        let a = up.assign(self.backend.as_ref(), levels, false)?;
        Ok((a.sums, a.counts))
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}

impl Drop for DeviceSample {
    fn drop(&mut self) {
        if let Some(up) = self.upload.take() {
            // Freeing can only fail for a foreign handle; nothing to do then.
            let _ = self.backend.free(up.handle);
        }
    }
}

/// A vector uploaded as a `rows x UPLOAD_COLS` f32 matrix. The last row is
/// padded with copies of the first value, whose contribution is taken out of
/// the sums and counts again.
pub struct UploadedVector {
    /// The device matrix.
    pub handle: MatrixHandle,
    n: usize,
    pad: usize,
    pad_value: f32,
}

/// Codes, sums and counts of a vector (padding removed).
pub struct VectorAssignment {
    /// Nearest level per value (empty unless asked for).
    pub codes: Vec<u8>,
    /// Sum of the values of each level.
    pub sums: Vec<f64>,
    /// Number of values of each level.
    pub counts: Vec<u64>,
}

impl UploadedVector {
    /// Uploads `values` (at least one) to `backend`.
    pub fn new(backend: &dyn Backend, values: &[f32]) -> Result<UploadedVector, VectorError> {
        let n = values.len();
        let first = *values
            .first()
            .ok_or_else(|| VectorError::Invalid("empty vector".into()))?;
        // A multiple of 4 columns: the f32 row stride (16 bytes) adds no
        // padding, so the values go into the packed matrix with one copy.
        let cols = UPLOAD_COLS.min(n.div_ceil(4) * 4);
        let rows = n.div_ceil(cols);
        let pad = rows * cols - n;
        let mut data = Vec::with_capacity(rows * cols);
        data.extend_from_slice(values);
        data.resize(rows * cols, first);
        let packed = if FormatKind::F32.row_stride_bytes(cols) == cols * 4 {
            QuantizedMatrix::new(rows, cols, GroupSize::Row, Packed::F32(data))?
        } else {
            format::pack_plain(&Matrix::from_vec(rows, cols, data)?, FormatKind::F32)?
        };
        let handle = backend.upload(&packed)?;
        Ok(UploadedVector {
            handle,
            n,
            pad,
            pad_value: first,
        })
    }

    /// Assigns every value to its nearest level on the device.
    pub fn assign(
        &self,
        backend: &dyn Backend,
        levels: &[f32],
        want_codes: bool,
    ) -> Result<VectorAssignment, VectorError> {
        let mut a = backend.assign_levels(&self.handle, levels, want_codes)?;
        if a.sums.len() != levels.len() || a.counts.len() != levels.len() {
            return Err(VectorError::Backend(crate::backend::BackendError::Invalid(
                format!(
                    "{} returned {} sums and {} counts for {} levels",
                    backend.kind(),
                    a.sums.len(),
                    a.counts.len(),
                    levels.len()
                ),
            )));
        }
        if self.pad > 0 {
            let j = format::nearest_level(levels, self.pad_value);
            a.sums[j] -= self.pad as f64 * self.pad_value as f64;
            a.counts[j] = a.counts[j].saturating_sub(self.pad as u64);
        }
        if want_codes {
            if a.codes.len() < self.n {
                return Err(VectorError::Backend(crate::backend::BackendError::Invalid(
                    format!(
                        "{} returned {} codes for {} values",
                        backend.kind(),
                        a.codes.len(),
                        self.n
                    ),
                )));
            }
            a.codes.truncate(self.n);
        }
        Ok(VectorAssignment {
            codes: a.codes,
            sums: a.sums,
            counts: a.counts,
        })
    }
}

fn check_values(values: &[f32]) -> Result<(), VectorError> {
    if values.is_empty() {
        return Err(VectorError::Invalid(
            "cannot fit levels to no values".into(),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(VectorError::Invalid(format!(
            "value {i} is {}: only finite values can be quantized",
            values[i]
        )));
    }
    Ok(())
}

fn check_levels(levels: &[f32]) -> Result<(), VectorError> {
    if levels.is_empty() || levels.len() > 256 {
        return Err(VectorError::Invalid(format!(
            "need 1..=256 levels, got {}",
            levels.len()
        )));
    }
    if levels.iter().any(|l| !l.is_finite()) || levels.windows(2).any(|w| w[0] > w[1]) {
        return Err(VectorError::Invalid(
            "levels must be finite and ascending".into(),
        ));
    }
    Ok(())
}

/// Stopping rule of the iterative fitters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterOptions {
    /// Stop when no level moves by more than `tolerance · std` of the values.
    pub tolerance: f64,
    /// Stop after this many iterations even if not converged.
    pub max_iterations: usize,
}

impl Default for IterOptions {
    fn default() -> Self {
        IterOptions {
            tolerance: 1e-6,
            max_iterations: 1000,
        }
    }
}

/// Fitted levels and how the fit went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// Ascending levels.
    pub levels: Vec<f32>,
    /// Iterations run (0 for closed forms).
    pub iterations: usize,
    /// Whether the stopping tolerance was reached (true for closed forms).
    pub converged: bool,
    /// Mean squared error on the values fitted to.
    pub fit_mse: f64,
}

/// `k` evenly spaced levels from `lo` to `hi` (numpy's `linspace`).
pub fn linspace(lo: f32, hi: f32, k: usize) -> Vec<f32> {
    if k == 1 {
        return vec![lo];
    }
    let (lo64, hi64) = (lo as f64, hi as f64);
    let step = (hi64 - lo64) / (k - 1) as f64;
    (0..k)
        .map(|j| {
            if j == k - 1 {
                hi
            } else {
                (lo64 + j as f64 * step) as f32
            }
        })
        .collect()
}

/// The reference's fixed grid: `linspace(-4, 4, k)`.
pub fn uniform_fixed(k: usize) -> Vec<f32> {
    linspace(-4.0, 4.0, k)
}

/// Values the quantile initialisation of Lloyd-Max is estimated from.
const QUANTILE_SAMPLE: usize = 65_536;

/// `k` ascending levels at the `(j + ½)/k` quantiles of `values` (estimated
/// on a random sub-sample of at most 65,536 values): Lloyd-Max's second start.
pub fn quantile_levels(values: &[f32], k: usize, seed: u64) -> Vec<f32> {
    let mut s = super::generate::sample(values, QUANTILE_SAMPLE, seed ^ 0x7175_616e_7469_6c65);
    s.sort_unstable_by(f32::total_cmp);
    if s.is_empty() {
        return vec![0.0; k];
    }
    let n = s.len();
    (0..k)
        .map(|j| {
            let pos = ((j as f64 + 0.5) * n as f64 / k as f64).floor() as usize;
            s[pos.min(n - 1)]
        })
        .collect()
}

/// `k` levels `a + j·Δ`.
fn grid(a: f64, step: f64, k: usize) -> Vec<f32> {
    (0..k).map(|j| (a + j as f64 * step) as f32).collect()
}

/// The MSE-optimal uniform grid `a + j·Δ`: a search over the clipping range
/// (centred on the midrange, 32 widths from 1/32 of the range to all of it),
/// then alternating least squares — assign to the nearest level, solve for the
/// best `(a, Δ)` given the assignment — which never increases the error.
pub fn uniform_optimal(
    stats: &mut dyn CellStats,
    k: usize,
    opts: IterOptions,
) -> Result<Fit, VectorError> {
    let s = *stats.summary();
    let (lo, hi) = (s.min as f64, s.max as f64);
    if k == 1 || hi <= lo {
        let levels = vec![s.mean() as f32; k];
        let (sums, counts) = stats.cells(&levels)?;
        return Ok(Fit {
            fit_mse: s.mse(&levels, &sums, &counts),
            levels,
            iterations: 0,
            converged: true,
        });
    }
    let centre = 0.5 * (lo + hi);
    let half = 0.5 * (hi - lo);
    const WIDTHS: usize = 32;
    let mut best = (f64::INFINITY, 0.0, 0.0, Vec::new(), Vec::new());
    for i in 1..=WIDTHS {
        let w = half * i as f64 / WIDTHS as f64;
        let step = 2.0 * w / (k - 1) as f64;
        let a = centre - w;
        let levels = grid(a, step, k);
        let (sums, counts) = stats.cells(&levels)?;
        let mse = s.mse(&levels, &sums, &counts);
        if mse < best.0 {
            best = (mse, a, step, sums, counts);
        }
    }
    // The cells of the current grid are carried from one step to the next:
    // one pass over the values per iteration.
    let (mut mse, mut a, mut step, mut sums, mut counts) = best;
    let tol = opts.tolerance * s.std().max(f64::MIN_POSITIVE);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < opts.max_iterations {
        iterations += 1;
        // Normal equations of min Σ_j Σ_{x in j} (x - a - jΔ)².
        let (mut n0, mut n1, mut n2, mut s0, mut s1) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for j in 0..k {
            let (c, jf) = (counts[j] as f64, j as f64);
            n0 += c;
            n1 += jf * c;
            n2 += jf * jf * c;
            s0 += sums[j];
            s1 += jf * sums[j];
        }
        let det = n0 * n2 - n1 * n1;
        if det.abs() <= 1e-12 * n0 * n2.max(1.0) {
            converged = true;
            break;
        }
        let na = (s0 * n2 - s1 * n1) / det;
        let nstep = (n0 * s1 - n1 * s0) / det;
        if !(nstep > 0.0 && na.is_finite()) {
            converged = true;
            break;
        }
        let new_levels = grid(na, nstep, k);
        let (ns, nc) = stats.cells(&new_levels)?;
        let new_mse = s.mse(&new_levels, &ns, &nc);
        if new_mse > mse {
            // f32 rounding of the levels can undo a tiny gain: keep the best.
            converged = true;
            break;
        }
        let moved = (na - a)
            .abs()
            .max(((na + (k - 1) as f64 * nstep) - (a + (k - 1) as f64 * step)).abs());
        a = na;
        step = nstep;
        mse = new_mse;
        sums = ns;
        counts = nc;
        if moved <= tol {
            converged = true;
            break;
        }
    }
    Ok(Fit {
        levels: grid(a, step, k),
        iterations,
        converged,
        fit_mse: mse,
    })
}

/// Lloyd-Max: alternately assign every value to its nearest level and move
/// each level to the mean of its values, from `init`, until no level moves by
/// more than the tolerance. A level with no values stays where it is (it
/// stays between its neighbours, so the levels stay ascending).
pub fn lloyd_max(
    stats: &mut dyn CellStats,
    init: &[f32],
    opts: IterOptions,
) -> Result<Fit, VectorError> {
    check_levels(init)?;
    let s = *stats.summary();
    let tol = opts.tolerance * s.std().max(f64::MIN_POSITIVE);
    let mut levels = init.to_vec();
    let mut iterations = 0;
    let mut converged = false;
    let (mut sums, mut counts) = stats.cells(&levels)?;
    while iterations < opts.max_iterations {
        iterations += 1;
        let mut next = levels.clone();
        for j in 0..levels.len() {
            if counts[j] > 0 {
                next[j] = (sums[j] / counts[j] as f64) as f32;
            }
        }
        for j in 1..next.len() {
            if next[j] < next[j - 1] {
                next[j] = next[j - 1];
            }
        }
        let moved = levels
            .iter()
            .zip(&next)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .fold(0.0, f64::max);
        levels = next;
        (sums, counts) = stats.cells(&levels)?;
        if moved <= tol {
            converged = true;
            break;
        }
    }
    Ok(Fit {
        fit_mse: s.mse(&levels, &sums, &counts),
        levels,
        iterations,
        converged,
    })
}

/// The exact optimum of 1-D k-means on `values` (at most [`DP_MAX_N`]) by
/// dynamic programming over the sorted values: `D[m][i]`, the least squared
/// error of the first `i` values in `m + 1` clusters, is
/// `min_t D[m-1][t] + SSE(t..i)`, with each segment's SSE from prefix sums.
/// The best split point never decreases with `i`, so each layer is solved by
/// divide and conquer in O(N log N): O(k·N·log N) in all. The levels are the
/// segment means; with fewer distinct values than `k`, fewer levels come back.
pub fn dp_optimal(values: &[f32], k: usize) -> Result<Fit, VectorError> {
    check_values(values)?;
    if values.len() > DP_MAX_N {
        return Err(VectorError::Invalid(format!(
            "the DP optimum is computed for at most {DP_MAX_N} values, got {}",
            values.len()
        )));
    }
    if k == 0 {
        return Err(VectorError::Invalid("need at least one level".into()));
    }
    let mut x: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    x.sort_by(f64::total_cmp);
    let n = x.len();
    // Centre the values: the prefix sums then cancel less.
    let mean = x.iter().sum::<f64>() / n as f64;
    let mut p1 = vec![0.0f64; n + 1];
    let mut p2 = vec![0.0f64; n + 1];
    for i in 0..n {
        let d = x[i] - mean;
        p1[i + 1] = p1[i] + d;
        p2[i + 1] = p2[i] + d * d;
    }
    let sse = |t: usize, i: usize| -> f64 {
        let c = (i - t) as f64;
        let s = p1[i] - p1[t];
        ((p2[i] - p2[t]) - s * s / c).max(0.0)
    };
    let mut distinct = 1;
    for w in x.windows(2) {
        if w[1] > w[0] {
            distinct += 1;
        }
    }
    let k = k.min(distinct);
    // prev[i]: best error of x[..i] in m clusters; arg[m][i]: start of the last cluster.
    let mut prev: Vec<f64> = (0..=n)
        .map(|i| if i == 0 { 0.0 } else { sse(0, i) })
        .collect();
    let mut arg: Vec<Vec<usize>> = vec![vec![0; n + 1]];
    for m in 1..k {
        let mut cur = vec![f64::INFINITY; n + 1];
        let mut a = vec![0usize; n + 1];
        // Solve i in [lo, hi] knowing the best t lies in [tlo, thi].
        let mut stack = vec![(m + 1, n, m, n - 1)];
        while let Some((lo, hi, tlo, thi)) = stack.pop() {
            if lo > hi {
                continue;
            }
            let mid = (lo + hi) / 2;
            let mut best = (f64::INFINITY, tlo);
            let top = thi.min(mid - 1);
            for (t, &p) in prev.iter().enumerate().take(top + 1).skip(tlo) {
                let v = p + sse(t, mid);
                if v < best.0 {
                    best = (v, t);
                }
            }
            cur[mid] = best.0;
            a[mid] = best.1;
            if mid > lo {
                stack.push((lo, mid - 1, tlo, best.1));
            }
            stack.push((mid + 1, hi, best.1, thi));
        }
        prev = cur;
        arg.push(a);
    }
    // Walk the split points back.
    let mut bounds = vec![n];
    let mut i = n;
    for m in (1..k).rev() {
        i = arg[m][i];
        bounds.push(i);
    }
    bounds.push(0);
    bounds.reverse();
    let levels: Vec<f32> = bounds
        .windows(2)
        .map(|w| (mean + (p1[w[1]] - p1[w[0]]) / (w[1] - w[0]) as f64) as f32)
        .collect();
    let mut levels = levels;
    for j in 1..levels.len() {
        if levels[j] < levels[j - 1] {
            levels[j] = levels[j - 1];
        }
    }
    Ok(Fit {
        fit_mse: prev[n] / n as f64,
        levels,
        iterations: 0,
        converged: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn brute_cells(values: &[f32], levels: &[f32]) -> (Vec<f64>, Vec<u64>) {
        let mut s = vec![0.0; levels.len()];
        let mut c = vec![0; levels.len()];
        for &v in values {
            let j = format::nearest_level(levels, v);
            s[j] += v as f64;
            c[j] += 1;
        }
        (s, c)
    }

    #[test]
    fn sorted_and_device_cells_match_brute_force() {
        let values: Vec<f32> = (0..10_001)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        // Levels whose midpoints hit values exactly: ties must go down.
        let levels = [-4.0f32, -2.0, -1.0, 0.0, 0.5, 3.0];
        let (bs, bc) = brute_cells(&values, &levels);
        let mut sorted = SortedSample::new(values.clone()).unwrap();
        let (ss, sc) = sorted.cells(&levels).unwrap();
        let mut dev = DeviceSample::new(Arc::new(CpuBackend::new()), &values).unwrap();
        let (ds, dc) = dev.cells(&levels).unwrap();
        assert_eq!(bc, sc);
        assert_eq!(bc, dc);
        for j in 0..levels.len() {
            assert!((bs[j] - ss[j]).abs() < 1e-6 * (1.0 + bs[j].abs()));
            assert!((bs[j] - ds[j]).abs() < 1e-6 * (1.0 + bs[j].abs()));
        }
    }

    #[test]
    fn dp_matches_brute_force_partitions() {
        // All contiguous partitions of 9 sorted values into 3 clusters.
        let values = [0.1f32, -2.0, 3.5, 0.0, 0.2, 7.0, 7.1, -1.9, 2.2];
        let fit = dp_optimal(&values, 3).unwrap();
        let mut x: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        x.sort_by(f64::total_cmp);
        let sse = |s: &[f64]| {
            let m = s.iter().sum::<f64>() / s.len() as f64;
            s.iter().map(|v| (v - m).powi(2)).sum::<f64>()
        };
        let mut best = f64::INFINITY;
        for a in 1..x.len() {
            for b in a + 1..x.len() {
                best = best.min(sse(&x[..a]) + sse(&x[a..b]) + sse(&x[b..]));
            }
        }
        assert!(
            (fit.fit_mse * 9.0 - best).abs() < 1e-9,
            "{} {best}",
            fit.fit_mse * 9.0
        );
        assert_eq!(fit.levels.len(), 3);
    }

    #[test]
    fn dp_with_few_distinct_values() {
        let fit = dp_optimal(&[1.0, 1.0, 2.0], 8).unwrap();
        assert_eq!(fit.levels, vec![1.0, 2.0]);
        assert_eq!(fit.fit_mse, 0.0);
    }

    #[test]
    fn uniform_optimal_gaussian_step() {
        let spec = super::super::VectorSpec::gaussian(super::super::VectorSize::Len(200_000), 5);
        let v = super::super::generate(&spec).unwrap();
        let mut s = SortedSample::new(v).unwrap();
        let fit = uniform_optimal(&mut s, 8, IterOptions::default()).unwrap();
        let step = fit.levels[1] - fit.levels[0];
        // Max (1960): optimum uniform step for N(0,1) at 8 levels is 0.5860, MSE 0.03744.
        assert!((step - 0.586).abs() < 0.01, "{step}");
        assert!((fit.fit_mse - 0.03744).abs() < 0.001, "{}", fit.fit_mse);
        let lm = lloyd_max(&mut s, &fit.levels, IterOptions::default()).unwrap();
        // Max (1960): optimum 8-level MSE 0.03454.
        assert!((lm.fit_mse - 0.03454).abs() < 0.001, "{}", lm.fit_mse);
        assert!(lm.fit_mse <= fit.fit_mse);
    }

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(uniform_fixed(2), vec![-4.0, 4.0]);
        let l = uniform_fixed(8);
        assert_eq!(l.len(), 8);
        assert!((l[1] - (-4.0 + 8.0 / 7.0)).abs() < 1e-6);
        assert_eq!(l[7], 4.0);
    }
}
