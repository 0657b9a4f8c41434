//! The data behind every chart, derived from one [`AnalysisRun`] and written
//! by `quantscope report RUN.json --data OUT.json`, so other tools can plot
//! the same numbers. Every value here comes from the results document; a
//! figure the run does not have (no allocator reservation, no baseline) is
//! `null`, never a made-up number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analyze::schema::{AnalysisRun, StrategyResult};
use crate::backend::BackendKind;

/// One strategy x backend pair's key, as every table below names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairKey {
    /// Strategy.
    pub strategy: String,
    /// Backend.
    pub backend: BackendKind,
}

/// Memory of one pair (bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Exact packed weight bytes.
    pub weight_bytes: u64,
    /// Highest bytes the backend held.
    pub device_peak_bytes: u64,
    /// Larger of the two: what the pair needs on its device.
    pub footprint_bytes: u64,
}

/// Speed of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceSpeed {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Median seconds per input.
    pub median_s: f64,
    /// 10th percentile seconds per input.
    pub p10_s: f64,
    /// 90th percentile seconds per input.
    pub p90_s: f64,
    /// Inputs per second.
    pub inputs_per_s: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

/// Accuracy retention of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Mean cosine against the f32 reference.
    pub mean_cosine: f64,
    /// Worst cosine.
    pub worst_cosine: f64,
    /// Output NMSE.
    pub output_nmse: f64,
    /// Top-10 neighbour agreement, where measured.
    pub top10_agreement: Option<f64>,
}

/// Scores of one pair for each priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyScores {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Balanced.
    pub balanced: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Speed.
    pub speed: f64,
    /// Memory.
    pub memory: f64,
}

/// Whether each strategy fits on one backend's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareCompatibility {
    /// Backend.
    pub backend: BackendKind,
    /// Whether it opened on the machine.
    pub available: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// Its device.
    pub device: Option<String>,
    /// The memory a model may take there (the profile's budget), where known.
    pub memory_budget_bytes: Option<u64>,
    /// Strategies measured there whose footprint fits the budget.
    pub fits: Vec<String>,
    /// Strategies measured there whose footprint does not.
    pub too_big: Vec<String>,
}

/// Weights vs runtime overhead of one pair (the stacked memory chart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Packed weight bytes.
    pub weight_bytes: u64,
    /// Peak during inference minus resident after upload.
    pub overhead_bytes: u64,
}

/// One pair's memory over time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineSeries {
    /// Seconds since the pair started.
    pub timestamps: Vec<f64>,
    /// Bytes the backend held at each timestamp.
    pub memory_values: Vec<u64>,
    /// Phase label of each sample.
    pub phases: Vec<String>,
}

/// One point of the trade-off charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffPoint {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Accuracy retention.
    pub accuracy: f64,
    /// Median seconds per input.
    pub inference_time_s: f64,
    /// Packed weight bytes.
    pub memory_bytes: u64,
    /// On the speed / accuracy Pareto front.
    pub on_speed_front: bool,
    /// On the memory / accuracy Pareto front.
    pub on_memory_front: bool,
}

/// The trade-off charts' points with both Pareto fronts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TradeoffAnalysis {
    /// One point per result, in the results' order.
    pub points: Vec<TradeoffPoint>,
    /// Indices into `points`, sorted by time.
    pub speed_accuracy_front: Vec<usize>,
    /// Indices into `points`, sorted by memory.
    pub memory_accuracy_front: Vec<usize>,
}

/// Inference overhead of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverheadAnalysis {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Bytes held after upload.
    pub resident_after_upload_bytes: u64,
    /// Peak bytes.
    pub device_peak_bytes: u64,
    /// Extra bytes during inference.
    pub overhead_bytes: u64,
    /// Extra bytes as a fraction of the weights.
    pub overhead_ratio: f64,
}

/// Allocator fragmentation of one pair, where the allocator says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentationAnalysis {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Bytes the allocator reserved.
    pub reserved_bytes: Option<u64>,
    /// Peak bytes the backend held.
    pub allocated_peak_bytes: u64,
    /// `1 - allocated / reserved`.
    pub fragmentation: Option<f64>,
}

/// Accuracy per GB and savings of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEfficiency {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// Accuracy retention per GB of packed weights.
    pub accuracy_per_gb: f64,
    /// Baseline bytes / these bytes.
    pub compression_ratio: f64,
    /// Bytes saved against the baseline, in %.
    pub savings_pct: f64,
}

/// The layers x strategies sensitivity matrix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivityData {
    /// Layer names, in forward order.
    pub layers: Vec<String>,
    /// Strategies (columns).
    pub strategies: Vec<String>,
    /// `weight_nmse[layer][strategy]`, `null` where not measured.
    pub weight_nmse: Vec<Vec<Option<f64>>>,
    /// Output NMSE with only that layer quantized by `probe_strategy`.
    pub output_nmse_alone: Vec<f64>,
    /// The probe strategy of each layer.
    pub probe_strategy: Vec<String>,
}

/// One pair's normalized metrics (0..1, 1 is best).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedSeries {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// One value per metric of [`NormalizedComparison::metrics`].
    pub values: Vec<f64>,
}

/// Every metric over its maximum, lower-is-better ones inverted (`min / v`),
/// so 1 is the best of the set on every axis: ready for a radar chart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NormalizedComparison {
    /// Metric names.
    pub metrics: Vec<String>,
    /// Whether each metric was lower-is-better (and so inverted).
    pub lower_is_better: Vec<bool>,
    /// One series per result.
    pub series: Vec<NormalizedSeries>,
}

/// The data behind every chart of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisualizationData {
    /// The run's id.
    pub run_id: String,
    /// The model's name.
    pub model: String,
    /// Memory per pair.
    pub memory_usage: Vec<MemoryUsage>,
    /// Speed per pair.
    pub inference_speed: Vec<InferenceSpeed>,
    /// Accuracy retention per pair.
    pub accuracy: Vec<Accuracy>,
    /// Scores per pair.
    pub efficiency_scores: Vec<EfficiencyScores>,
    /// What fits where.
    pub hardware_compatibility: Vec<HardwareCompatibility>,
    /// Weights vs overhead per pair.
    pub memory_breakdown: Vec<MemoryBreakdown>,
    /// `{backend: {strategy: series}}`.
    pub memory_timeline: BTreeMap<String, BTreeMap<String, TimelineSeries>>,
    /// Points and Pareto fronts.
    pub tradeoff_analysis: TradeoffAnalysis,
    /// Inference overhead per pair.
    pub overhead_analysis: Vec<OverheadAnalysis>,
    /// Fragmentation per pair.
    pub fragmentation_analysis: Vec<FragmentationAnalysis>,
    /// Accuracy per GB per pair.
    pub memory_efficiency: Vec<MemoryEfficiency>,
    /// Per-layer sensitivity.
    pub layer_sensitivity: LayerSensitivityData,
    /// Normalized metrics for the radar chart.
    pub normalized_comparison: NormalizedComparison,
}

/// A finite value or `None`: JSON has no NaN, and a NaN written as `null`
/// would not read back as the same document.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// A finite value or 0 (for figures the analyzer always computes; a
/// non-finite one there means nothing was measured).
fn or_zero(v: f64) -> f64 {
    finite(v).unwrap_or(0.0)
}

fn key(r: &StrategyResult) -> PairKey {
    PairKey {
        strategy: r.strategy.clone(),
        backend: r.backend,
    }
}

impl VisualizationData {
    /// Derives every chart's data from `run`.
    pub fn from_run(run: &AnalysisRun) -> VisualizationData {
        let rs = &run.results;
        let memory_usage = rs
            .iter()
            .map(|r| MemoryUsage {
                key: key(r),
                weight_bytes: r.memory_bytes,
                device_peak_bytes: r.memory.device_peak_bytes,
                footprint_bytes: r.footprint_bytes(),
            })
            .collect();
        let inference_speed = rs
            .iter()
            .map(|r| InferenceSpeed {
                key: key(r),
                median_s: or_zero(r.inference_time_s),
                p10_s: or_zero(r.speed.p10_s_per_input),
                p90_s: or_zero(r.speed.p90_s_per_input),
                inputs_per_s: or_zero(r.speed.inputs_per_s),
                tokens_per_s: or_zero(r.speed.tokens_per_s),
            })
            .collect();
        let accuracy = rs
            .iter()
            .map(|r| Accuracy {
                key: key(r),
                mean_cosine: or_zero(r.retention.mean_cosine),
                worst_cosine: or_zero(r.retention.worst_cosine),
                output_nmse: or_zero(r.retention.output_nmse),
                top10_agreement: r.retention.top10_agreement.and_then(finite),
            })
            .collect();
        let efficiency_scores = rs
            .iter()
            .map(|r| {
                let s = r.efficiency.scores;
                EfficiencyScores {
                    key: key(r),
                    balanced: or_zero(s.balanced),
                    accuracy: or_zero(s.accuracy),
                    speed: or_zero(s.speed),
                    memory: or_zero(s.memory),
                }
            })
            .collect();
        let hardware_compatibility =
            run.hardware
                .backends
                .iter()
                .map(|b| {
                    let budget = run.hardware.memory_bytes(b.backend).map(|m| {
                        (m as f64 * run.hardware.memory_budget_fraction(b.backend)) as u64
                    });
                    let here: Vec<&StrategyResult> =
                        rs.iter().filter(|r| r.backend == b.backend).collect();
                    let fits_budget =
                        |r: &StrategyResult| budget.is_none_or(|m| r.footprint_bytes() <= m);
                    HardwareCompatibility {
                        backend: b.backend,
                        available: b.available,
                        reason: b.reason.clone(),
                        device: b.device.as_ref().map(|d| d.name.clone()),
                        memory_budget_bytes: budget,
                        fits: here
                            .iter()
                            .filter(|r| fits_budget(r))
                            .map(|r| r.strategy.clone())
                            .collect(),
                        too_big: here
                            .iter()
                            .filter(|r| !fits_budget(r))
                            .map(|r| r.strategy.clone())
                            .collect(),
                    }
                })
                .collect();
        let memory_breakdown = rs
            .iter()
            .map(|r| MemoryBreakdown {
                key: key(r),
                weight_bytes: r.memory_bytes,
                overhead_bytes: r.memory.inference_overhead_bytes,
            })
            .collect();
        let mut memory_timeline: BTreeMap<String, BTreeMap<String, TimelineSeries>> =
            BTreeMap::new();
        for r in rs {
            let s = &r.timeline.samples;
            memory_timeline
                .entry(r.backend.name().to_string())
                .or_default()
                .insert(
                    r.strategy.clone(),
                    TimelineSeries {
                        timestamps: s.iter().map(|x| or_zero(x.t_s)).collect(),
                        memory_values: s.iter().map(|x| x.backend_live_bytes).collect(),
                        phases: s.iter().map(|x| x.phase.clone()).collect(),
                    },
                );
        }
        // The fronts are recomputed from the results rather than read from
        // `run.pareto`, so a hand-edited or merged document stays consistent.
        let fronts = crate::analyze::efficiency::fronts(rs);
        let tradeoff_analysis = TradeoffAnalysis {
            points: rs
                .iter()
                .enumerate()
                .map(|(i, r)| TradeoffPoint {
                    key: key(r),
                    accuracy: or_zero(r.accuracy),
                    inference_time_s: or_zero(r.inference_time_s),
                    memory_bytes: r.memory_bytes,
                    on_speed_front: fronts.speed_accuracy.contains(&i),
                    on_memory_front: fronts.memory_accuracy.contains(&i),
                })
                .collect(),
            speed_accuracy_front: fronts.speed_accuracy,
            memory_accuracy_front: fronts.memory_accuracy,
        };
        let overhead_analysis = rs
            .iter()
            .map(|r| OverheadAnalysis {
                key: key(r),
                resident_after_upload_bytes: r.memory.resident_after_upload_bytes,
                device_peak_bytes: r.memory.device_peak_bytes,
                overhead_bytes: r.memory.inference_overhead_bytes,
                overhead_ratio: or_zero(r.efficiency.overhead_ratio),
            })
            .collect();
        let fragmentation_analysis = rs
            .iter()
            .map(|r| FragmentationAnalysis {
                key: key(r),
                reserved_bytes: r.memory.reserved_bytes,
                allocated_peak_bytes: r.memory.device_peak_bytes,
                fragmentation: r.memory.fragmentation.and_then(finite),
            })
            .collect();
        let memory_efficiency = rs
            .iter()
            .map(|r| MemoryEfficiency {
                key: key(r),
                accuracy_per_gb: or_zero(r.efficiency.accuracy_per_gb),
                compression_ratio: or_zero(r.efficiency.compression_ratio),
                savings_pct: or_zero(r.efficiency.savings_pct),
            })
            .collect();
        VisualizationData {
            run_id: run.run_id.clone(),
            model: run.config.model.name.clone(),
            memory_usage,
            inference_speed,
            accuracy,
            efficiency_scores,
            hardware_compatibility,
            memory_breakdown,
            memory_timeline,
            tradeoff_analysis,
            overhead_analysis,
            fragmentation_analysis,
            memory_efficiency,
            layer_sensitivity: layer_sensitivity(run),
            normalized_comparison: normalized_comparison(rs),
        }
    }

    /// The data as pretty JSON.
    pub fn to_json(&self) -> String {
        // A tree of plain structs, maps with string keys and finite floats
        // cannot fail to serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses data written by [`Self::to_json`].
    pub fn from_json(text: &str) -> Result<VisualizationData, serde_json::Error> {
        serde_json::from_str(text)
    }
}

fn layer_sensitivity(run: &AnalysisRun) -> LayerSensitivityData {
    let mut strategies: Vec<String> = Vec::new();
    for l in &run.layers {
        for (s, _) in &l.weight_nmse {
            if !strategies.contains(s) {
                strategies.push(s.clone());
            }
        }
    }
    LayerSensitivityData {
        layers: run.layers.iter().map(|l| l.layer.clone()).collect(),
        weight_nmse: run
            .layers
            .iter()
            .map(|l| {
                strategies
                    .iter()
                    .map(|s| {
                        l.weight_nmse
                            .iter()
                            .find(|(n, _)| n == s)
                            .and_then(|&(_, v)| finite(v))
                    })
                    .collect()
            })
            .collect(),
        output_nmse_alone: run
            .layers
            .iter()
            .map(|l| or_zero(l.output_nmse_alone))
            .collect(),
        probe_strategy: run
            .layers
            .iter()
            .map(|l| l.probe_strategy.clone())
            .collect(),
        strategies,
    }
}

/// The radar's metrics: (name, value of a result, lower is better).
type Metric = (&'static str, fn(&StrategyResult) -> f64, bool);

const RADAR_METRICS: [Metric; 5] = [
    ("accuracy", |r| r.accuracy, false),
    ("speed", |r| r.inference_time_s, true),
    ("weight memory", |r| r.memory_bytes as f64, true),
    ("peak memory", |r| r.memory.device_peak_bytes as f64, true),
    ("accuracy per GB", |r| r.efficiency.accuracy_per_gb, false),
];

fn normalized_comparison(rs: &[StrategyResult]) -> NormalizedComparison {
    let columns: Vec<Vec<f64>> = RADAR_METRICS
        .iter()
        .map(|&(_, get, lower)| {
            let v: Vec<f64> = rs.iter().map(get).collect();
            let usable = |x: &&f64| x.is_finite() && **x > 0.0;
            if lower {
                let min = v
                    .iter()
                    .filter(usable)
                    .fold(f64::INFINITY, |a, &b| a.min(b));
                v.iter()
                    .map(|&x| {
                        if x.is_finite() && x > 0.0 {
                            min / x
                        } else {
                            0.0
                        }
                    })
                    .collect()
            } else {
                let max = v.iter().filter(usable).fold(0.0f64, |a, &b| a.max(b));
                v.iter()
                    .map(|&x| {
                        if max > 0.0 && x.is_finite() {
                            (x / max).max(0.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
        })
        .collect();
    NormalizedComparison {
        metrics: RADAR_METRICS.iter().map(|m| m.0.to_string()).collect(),
        lower_is_better: RADAR_METRICS.iter().map(|m| m.2).collect(),
        series: rs
            .iter()
            .enumerate()
            .map(|(i, r)| NormalizedSeries {
                key: key(r),
                values: columns.iter().map(|c| c[i]).collect(),
            })
            .collect(),
    }
}
