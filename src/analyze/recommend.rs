//! The recommendation: the best strategy x backend pair for a priority
//! under the constraints, the runner-up, what to avoid, and warnings.
//!
//! Ranking is by the priority's score (normalized over the whole set, see
//! [`super::efficiency`]); ties are broken by accuracy, then memory, then
//! time, then names, so the answer never depends on the order results came in.

use std::cmp::Ordering;

use super::schema::{Avoid, Pick, Priority, Recommendation, SkippedPair, StrategyResult};
use crate::hardware::HardwareProfile;

/// What a recommendation must respect.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Constraints {
    /// Largest footprint in bytes ([`StrategyResult::footprint_bytes`]).
    pub max_memory_bytes: Option<u64>,
    /// Lowest mean-cosine retention.
    pub min_accuracy: Option<f64>,
}

/// Why a result does not meet the constraints (None: it does).
fn violation(r: &StrategyResult, c: &Constraints) -> Option<String> {
    if let Some(max) = c.max_memory_bytes {
        if r.footprint_bytes() > max {
            return Some(format!(
                "needs {} ({}), above --max-memory-gb {}",
                gb(r.footprint_bytes()),
                if r.memory.device_peak_bytes > r.memory_bytes {
                    "peak during inference"
                } else {
                    "weights"
                },
                gb(max)
            ));
        }
    }
    if let Some(min) = c.min_accuracy {
        if !meets(r.accuracy, min) {
            return Some(format!(
                "retention {:.5} is below --min-accuracy {min}",
                r.accuracy
            ));
        }
    }
    None
}

/// `accuracy >= min`, false for NaN.
fn meets(accuracy: f64, min: f64) -> bool {
    accuracy
        .partial_cmp(&min)
        .is_some_and(|o| o != Ordering::Less)
}

fn gb(bytes: u64) -> String {
    format!("{:.3} GB", bytes as f64 / 1e9)
}

/// The order of the ranking: score, then accuracy, memory, time, names.
fn rank(p: Priority) -> impl Fn(&&StrategyResult, &&StrategyResult) -> Ordering {
    move |a, b| {
        b.efficiency
            .scores
            .get(p)
            .total_cmp(&a.efficiency.scores.get(p))
            .then(b.accuracy.total_cmp(&a.accuracy))
            .then(a.memory_bytes.cmp(&b.memory_bytes))
            .then(a.inference_time_s.total_cmp(&b.inference_time_s))
            .then(a.strategy.cmp(&b.strategy))
            .then(a.backend.name().cmp(b.backend.name()))
    }
}

fn pick(r: &StrategyResult, p: Priority, all: &[StrategyResult]) -> Pick {
    let (m, s, a) = r.efficiency.normalized;
    let mut reasons = vec![
        format!(
            "{} score {:.3} (normalized memory {m:.2}, speed {s:.2}, accuracy {a:.2})",
            p,
            r.efficiency.scores.get(p)
        ),
        format!(
            "accuracy retention {:.5} mean cosine (worst {:.5})",
            r.accuracy, r.retention.worst_cosine
        ),
        format!(
            "weights {:.2} MB, {:.2}x smaller than none",
            r.memory_bytes as f64 / 1e6,
            r.efficiency.compression_ratio
        ),
    ];
    let speed = match r.efficiency.speedup_vs_baseline {
        Some(x) => format!(
            "{:.3} ms per input on {}, {x:.2}x the speed of none there",
            r.inference_time_s * 1e3,
            r.backend
        ),
        None => format!(
            "{:.3} ms per input on {}",
            r.inference_time_s * 1e3,
            r.backend
        ),
    };
    reasons.push(speed);
    if let Some(best) = all
        .iter()
        .filter(|o| o.backend != r.backend && o.strategy == r.strategy)
        .min_by(|a, b| a.inference_time_s.total_cmp(&b.inference_time_s))
    {
        reasons.push(format!(
            "the same strategy on {} takes {:.3} ms per input",
            best.backend,
            best.inference_time_s * 1e3
        ));
    }
    Pick {
        strategy: r.strategy.clone(),
        backend: r.backend,
        score: r.efficiency.scores.get(p),
        accuracy: r.accuracy,
        memory_bytes: r.memory_bytes,
        inference_time_s: r.inference_time_s,
        reasons,
    }
}

/// The recommendation for `priority` under `c`, over `results` (with their
/// efficiency filled in), given the hardware and the pairs that were skipped.
pub fn recommend(
    results: &[StrategyResult],
    priority: Priority,
    c: &Constraints,
    hardware: Option<&HardwareProfile>,
    skipped: &[SkippedPair],
) -> Recommendation {
    let mut ranked: Vec<&StrategyResult> = results
        .iter()
        .filter(|r| violation(r, c).is_none())
        .collect();
    ranked.sort_by(rank(priority));
    let recommended = ranked.first().map(|r| pick(r, priority, results));
    let runner_up = ranked.get(1).map(|r| pick(r, priority, results));

    let mut avoid = Vec::new();
    for r in results {
        if let Some(v) = violation(r, c) {
            avoid.push(Avoid {
                strategy: r.strategy.clone(),
                backend: r.backend,
                reason: v,
            });
            continue;
        }
        // Dominated: another pair is no larger, no slower, no less accurate,
        // and strictly better in one.
        let better = results.iter().find(|o| {
            !std::ptr::eq(*o, r)
                && o.memory_bytes <= r.memory_bytes
                && o.inference_time_s <= r.inference_time_s
                && o.accuracy >= r.accuracy
                && (o.memory_bytes < r.memory_bytes
                    || o.inference_time_s < r.inference_time_s
                    || o.accuracy > r.accuracy)
        });
        if let Some(o) = better {
            avoid.push(Avoid {
                strategy: r.strategy.clone(),
                backend: r.backend,
                reason: format!(
                    "dominated: {} on {} is no larger ({:.2} vs {:.2} MB), no slower \
                     ({:.3} vs {:.3} ms) and no less accurate ({:.5} vs {:.5})",
                    o.strategy,
                    o.backend,
                    o.memory_bytes as f64 / 1e6,
                    r.memory_bytes as f64 / 1e6,
                    o.inference_time_s * 1e3,
                    r.inference_time_s * 1e3,
                    o.accuracy,
                    r.accuracy
                ),
            });
        }
    }

    let mut warnings = Vec::new();
    if let (Some(rec), Some(hw)) = (ranked.first(), hardware) {
        if let Some(total) = hw.memory_bytes(rec.backend) {
            let used = rec.footprint_bytes() as f64 / total as f64;
            if used > 0.8 {
                warnings.push(format!(
                    "{} on {} uses {:.0} % of the device's memory (above 80 %)",
                    rec.strategy,
                    rec.backend,
                    100.0 * used
                ));
            }
        }
    }
    // Fragmentation: one line per backend, its worst pair, and only when
    // the unused reservation is material (a fresh allocator's first blocks
    // are mostly empty for a small model: 90 % of a 256 MiB block says
    // nothing about the run).
    let mut worst: Vec<(crate::backend::BackendKind, f64, u64, &str)> = Vec::new();
    for r in results {
        let (Some(f), Some(res)) = (r.memory.fragmentation, r.memory.reserved_bytes) else {
            continue;
        };
        let slack = (res as f64 * f) as u64;
        if f > 0.10 && slack >= FRAGMENTATION_SLACK_BYTES {
            match worst.iter_mut().find(|w| w.0 == r.backend) {
                Some(w) if w.1 >= f => {}
                Some(w) => *w = (r.backend, f, slack, &r.strategy),
                None => worst.push((r.backend, f, slack, &r.strategy)),
            }
        }
    }
    for (b, f, slack, s) in worst {
        warnings.push(format!(
            "{b}: allocator fragmentation up to {:.0} % (above 10 %; {:.0} MiB reserved but \
             unused, with {s})",
            100.0 * f,
            slack as f64 / (1u64 << 20) as f64
        ));
    }
    if let Some(min) = c.min_accuracy {
        let below: Vec<String> = results
            .iter()
            .filter(|r| !meets(r.accuracy, min))
            .map(|r| format!("{} on {} ({:.5})", r.strategy, r.backend, r.accuracy))
            .collect();
        if !below.is_empty() {
            warnings.push(format!(
                "retention below --min-accuracy {min}: {}",
                below.join(", ")
            ));
        }
    }
    // Skipped pairs: one line per backend and reason, naming the strategies.
    let mut grouped: Vec<(crate::backend::BackendKind, &str, Vec<&str>)> = Vec::new();
    for s in skipped {
        match grouped
            .iter_mut()
            .find(|g| g.0 == s.backend && g.1 == s.reason)
        {
            Some(g) => g.2.push(&s.strategy),
            None => grouped.push((s.backend, &s.reason, vec![&s.strategy])),
        }
    }
    for (b, reason, strategies) in grouped {
        let which = if strategies.len() == results_strategies(results, skipped) {
            "every strategy".to_string()
        } else {
            strategies.join(", ")
        };
        warnings.push(format!("{b} skipped ({which}): {reason}"));
    }

    let binding_constraint = if recommended.is_none() {
        Some(binding(results, c))
    } else {
        None
    };
    Recommendation {
        priority,
        recommended,
        runner_up,
        avoid,
        warnings,
        binding_constraint,
    }
}

/// Unused allocator reservation below which fragmentation is not worth a warning.
pub const FRAGMENTATION_SLACK_BYTES: u64 = 256 << 20;

/// Number of distinct strategies among results and skipped pairs.
fn results_strategies(results: &[StrategyResult], skipped: &[SkippedPair]) -> usize {
    let mut names: Vec<&str> = results
        .iter()
        .map(|r| r.strategy.as_str())
        .chain(skipped.iter().map(|s| s.strategy.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

/// Which constraint binds when no pair meets them all, and by how much.
fn binding(results: &[StrategyResult], c: &Constraints) -> String {
    if results.is_empty() {
        return "no strategy x backend pair ran".into();
    }
    let mem_ok = |r: &&StrategyResult| c.max_memory_bytes.is_none_or(|m| r.footprint_bytes() <= m);
    let acc_ok = |r: &&StrategyResult| c.min_accuracy.is_none_or(|a| r.accuracy >= a);
    let mut parts = Vec::new();
    if let Some(max) = c.max_memory_bytes {
        // The smallest pair that is accurate enough (or the smallest at all).
        let pool: Vec<&StrategyResult> = results.iter().filter(acc_ok).collect();
        let pool = if pool.is_empty() {
            results.iter().collect()
        } else {
            pool
        };
        if let Some(r) = pool.iter().min_by_key(|r| r.footprint_bytes()) {
            if r.footprint_bytes() > max {
                parts.push(format!(
                    "--max-memory-gb binds: the smallest{} pair, {} on {}, needs {}, {} over the \
                     limit of {}",
                    if c.min_accuracy.is_some() {
                        " accurate-enough"
                    } else {
                        ""
                    },
                    r.strategy,
                    r.backend,
                    gb(r.footprint_bytes()),
                    gb(r.footprint_bytes() - max),
                    gb(max)
                ));
            }
        }
    }
    if let Some(min) = c.min_accuracy {
        let pool: Vec<&StrategyResult> = results.iter().filter(mem_ok).collect();
        let pool = if pool.is_empty() {
            results.iter().collect()
        } else {
            pool
        };
        if let Some(r) = pool.iter().max_by(|a, b| a.accuracy.total_cmp(&b.accuracy)) {
            if !meets(r.accuracy, min) {
                parts.push(format!(
                    "--min-accuracy binds: the most accurate{} pair, {} on {}, retains {:.5}, \
                     {:.5} below {min}",
                    if c.max_memory_bytes.is_some() {
                        " small-enough"
                    } else {
                        ""
                    },
                    r.strategy,
                    r.backend,
                    r.accuracy,
                    min - r.accuracy
                ));
            }
        }
    }
    if parts.is_empty() {
        "the constraints exclude each pair, but none alone: every pair meeting one fails the other"
            .into()
    } else {
        parts.join("; ")
    }
}
