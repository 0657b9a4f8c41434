//! Accuracy retention: how close a quantized model's pooled outputs are to
//! the unquantized model's on the same inputs. This is fidelity, not task
//! accuracy; every report says so.

use super::schema::Retention;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Indices of the `k` nearest neighbours (cosine) of row `i` among the other
/// rows of `m` (`n x dim`), nearest first; ties broken by index.
fn neighbours(rows: &[&[f32]], i: usize, k: usize) -> Vec<usize> {
    let mut sims: Vec<(f64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(j, r)| (cosine(rows[i], r), j))
        .collect();
    sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    sims.into_iter().take(k).map(|(_, j)| j).collect()
}

/// Mean overlap of the top-`k` neighbour sets, quantized vs reference
/// (`k` capped at `n - 1`); `None` with fewer than 3 inputs.
pub fn topk_agreement(reference: &[f32], got: &[f32], n: usize, k: usize) -> Option<f64> {
    if n < 3 || reference.len() != got.len() || !reference.len().is_multiple_of(n) {
        return None;
    }
    let dim = reference.len() / n;
    let k = k.min(n - 1);
    let ra: Vec<&[f32]> = reference.chunks(dim).collect();
    let ga: Vec<&[f32]> = got.chunks(dim).collect();
    let mut total = 0.0;
    for i in 0..n {
        let a = neighbours(&ra, i, k);
        let b = neighbours(&ga, i, k);
        total += a.iter().filter(|j| b.contains(j)).count() as f64 / k as f64;
    }
    Some(total / n as f64)
}

/// Retention of `got` against `reference`, both `n x dim` pooled outputs.
/// Non-finite outputs give cosine 0 and NMSE infinity (they never pass).
pub fn retention(reference: &[f32], got: &[f32], n: usize, embedding: bool) -> Retention {
    let dim = reference.len() / n.max(1);
    let finite = got.iter().all(|v| v.is_finite());
    let cosines: Vec<f64> = reference
        .chunks(dim.max(1))
        .zip(got.chunks(dim.max(1)))
        .map(|(a, b)| if finite { cosine(a, b) } else { 0.0 })
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
    let worst = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let output_nmse = if finite {
        crate::metrics::nmse(reference, got)
    } else {
        f64::INFINITY
    };
    Retention {
        mean_cosine: mean,
        worst_cosine: if worst.is_finite() { worst } else { 0.0 },
        output_nmse,
        top10_agreement: if embedding && finite {
            topk_agreement(reference, got, n, 10)
        } else {
            None
        },
        top1_agreement: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_retain_everything() {
        let r: Vec<f32> = (0..60).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let ret = retention(&r, &r, 6, true);
        assert!((ret.mean_cosine - 1.0).abs() < 1e-12);
        assert_eq!(ret.output_nmse, 0.0);
        assert_eq!(ret.top10_agreement, Some(1.0));
    }

    #[test]
    fn nan_output_never_passes() {
        let r = vec![1.0f32; 12];
        let mut g = r.clone();
        g[3] = f32::NAN;
        let ret = retention(&r, &g, 3, true);
        assert_eq!(ret.mean_cosine, 0.0);
        assert!(ret.output_nmse.is_infinite());
    }

    #[test]
    fn neighbour_agreement_sees_a_swap() {
        // Four points on a line; the quantized copy swaps two far points.
        let r = [0.0f32, 1.0, 1.0, 0.9, 0.0, -1.0, -1.0, -0.9];
        let g = [0.0f32, 1.0, -1.0, -0.9, 0.0, -1.0, 1.0, 0.9];
        let a = topk_agreement(&r, &g, 4, 1).unwrap();
        assert!(a < 1.0, "{a}");
    }
}
