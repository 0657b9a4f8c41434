//! Efficiency metrics over a whole result set: savings against the `none`
//! baseline, accuracy per GB, Pareto fronts, and the normalized scores of
//! every priority.
//!
//! Normalization is min-max over the whole set (higher is better after
//! inverting memory and time), so a result's scores depend on the set, never
//! on the order the strategies ran in; a metric that does not vary over the
//! set normalizes to 1 for everyone. Memory and time are normalized on a log
//! scale: they span decades (f32 to int4 is 8x), and what matters is the
//! ratio — on a linear scale the f32 baseline squeezes int8 and int4
//! together. Accuracy retention (mean cosine, within a few percent of 1) is
//! normalized linearly.

use super::schema::{Efficiency, ParetoFronts, Priority, Scores, StrategyResult};

/// Min-max normalization of `v` within `[lo, hi]`, `higher_better` or not.
fn normalize(v: f64, lo: f64, hi: f64, higher_better: bool) -> f64 {
    let range = hi - lo;
    // A flat (or NaN) range says nothing: everyone gets 1.
    let flat = range.is_nan() || range <= 1e-15 * hi.abs().max(lo.abs()).max(1e-300);
    if flat {
        return 1.0;
    }
    let n = (v - lo) / range;
    let n = if higher_better { n } else { 1.0 - n };
    n.clamp(0.0, 1.0)
}

fn bounds(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// Fills every result's [`Efficiency`] from the set. The baseline of the
/// savings is the `none` (f32) result of the same backend, else of any
/// backend, else the model's f32 bytes `f32_bytes`.
pub fn compute(results: &mut [StrategyResult], f32_bytes: u64) {
    let baseline_bytes = results
        .iter()
        .find(|r| r.strategy == "none")
        .map(|r| r.memory_bytes)
        .unwrap_or(f32_bytes);
    let ln = |v: f64| v.max(1e-300).ln();
    let (mem_lo, mem_hi) = bounds(results.iter().map(|r| ln(r.memory_bytes as f64)));
    let (t_lo, t_hi) = bounds(results.iter().map(|r| ln(r.inference_time_s)));
    let (a_lo, a_hi) = bounds(results.iter().map(|r| r.accuracy));
    let baseline_time: Vec<(crate::backend::BackendKind, f64)> = results
        .iter()
        .filter(|r| r.strategy == "none")
        .map(|r| (r.backend, r.inference_time_s))
        .collect();
    for r in results.iter_mut() {
        let gb = r.memory_bytes as f64 / 1e9;
        let m = normalize(ln(r.memory_bytes as f64), mem_lo, mem_hi, false);
        let s = normalize(ln(r.inference_time_s), t_lo, t_hi, false);
        let a = normalize(r.accuracy, a_lo, a_hi, true);
        let score = |p: Priority| {
            let (wm, ws, wa) = p.weights();
            wm * m + ws * s + wa * a
        };
        let speedup = baseline_time
            .iter()
            .find(|(b, _)| *b == r.backend)
            .map(|&(_, t)| t / r.inference_time_s)
            .filter(|v| v.is_finite());
        r.efficiency = Efficiency {
            accuracy_per_gb: if gb > 0.0 { r.accuracy / gb } else { 0.0 },
            savings_bytes: baseline_bytes as i64 - r.memory_bytes as i64,
            savings_pct: if baseline_bytes > 0 {
                100.0 * (baseline_bytes as f64 - r.memory_bytes as f64) / baseline_bytes as f64
            } else {
                0.0
            },
            compression_ratio: if r.memory_bytes > 0 {
                baseline_bytes as f64 / r.memory_bytes as f64
            } else {
                0.0
            },
            speedup_vs_baseline: speedup,
            overhead_ratio: if r.memory.weight_bytes > 0 {
                r.memory.inference_overhead_bytes as f64 / r.memory.weight_bytes as f64
            } else {
                0.0
            },
            normalized: (m, s, a),
            scores: Scores {
                balanced: score(Priority::Balanced),
                accuracy: score(Priority::Accuracy),
                speed: score(Priority::Speed),
                memory: score(Priority::Memory),
            },
        };
    }
}

/// Indices of the points not dominated when `cost` is minimized and `gain`
/// maximized (a point is dominated when another is no worse in both and
/// strictly better in one), sorted by cost.
pub fn pareto_front(cost: &[f64], gain: &[f64]) -> Vec<usize> {
    let n = cost.len();
    let mut front: Vec<usize> = (0..n)
        .filter(|&i| {
            !(0..n).any(|j| {
                j != i
                    && cost[j] <= cost[i]
                    && gain[j] >= gain[i]
                    && (cost[j] < cost[i] || gain[j] > gain[i])
            })
        })
        .collect();
    front.sort_by(|&a, &b| cost[a].total_cmp(&cost[b]).then(a.cmp(&b)));
    front
}

/// Both fronts of a result set.
pub fn fronts(results: &[StrategyResult]) -> ParetoFronts {
    let acc: Vec<f64> = results.iter().map(|r| r.accuracy).collect();
    let time: Vec<f64> = results.iter().map(|r| r.inference_time_s).collect();
    let mem: Vec<f64> = results.iter().map(|r| r.memory_bytes as f64).collect();
    ParetoFronts {
        speed_accuracy: pareto_front(&time, &acc),
        memory_accuracy: pareto_front(&mem, &acc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_drops_dominated_points() {
        // (cost, gain): 1 dominates 3; 0, 1, 2 trade off.
        let cost = [1.0, 2.0, 3.0, 2.5];
        let gain = [0.5, 0.8, 0.9, 0.7];
        assert_eq!(pareto_front(&cost, &gain), vec![0, 1, 2]);
        // Ties: identical points are both kept (neither strictly better).
        assert_eq!(pareto_front(&[1.0, 1.0], &[0.5, 0.5]), vec![0, 1]);
    }

    #[test]
    fn normalize_inverts_costs_and_handles_flat_sets() {
        assert_eq!(normalize(1.0, 1.0, 3.0, false), 1.0);
        assert_eq!(normalize(3.0, 1.0, 3.0, false), 0.0);
        assert_eq!(normalize(2.0, 1.0, 3.0, true), 0.5);
        assert_eq!(normalize(5.0, 5.0, 5.0, true), 1.0);
    }
}
