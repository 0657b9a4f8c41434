//! The results document of one analysis: one serde struct tree with a
//! schema version, written once (atomically) and read by `report`,
//! `results list|show|compare` and any other tool. `docs/ANALYZE.md`
//! documents every field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AnalyzeError;
use crate::backend::{BackendKind, TimingSource};
use crate::hardware::HardwareProfile;

/// The version of this schema. A reader refuses documents of another major
/// version (a newer tool's files, or an old incompatible layout).
pub const SCHEMA_VERSION: u32 = 1;

/// What an analysis optimizes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Memory, speed, accuracy weighted 0.33 / 0.33 / 0.34.
    Balanced,
    /// 0.2 / 0.2 / 0.6.
    Accuracy,
    /// 0.2 / 0.6 / 0.2.
    Speed,
    /// 0.6 / 0.2 / 0.2.
    Memory,
}

impl Priority {
    /// Every priority.
    pub const ALL: [Priority; 4] = [
        Priority::Balanced,
        Priority::Accuracy,
        Priority::Speed,
        Priority::Memory,
    ];

    /// Weights of (memory, speed, accuracy) in the score.
    pub fn weights(self) -> (f64, f64, f64) {
        match self {
            Priority::Balanced => (0.33, 0.33, 0.34),
            Priority::Accuracy => (0.2, 0.2, 0.6),
            Priority::Speed => (0.2, 0.6, 0.2),
            Priority::Memory => (0.6, 0.2, 0.2),
        }
    }

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Balanced => "balanced",
            Priority::Accuracy => "accuracy",
            Priority::Speed => "speed",
            Priority::Memory => "memory",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = AnalyzeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                AnalyzeError::Invalid(format!(
                    "unknown priority '{s}' (expected balanced, accuracy, speed or memory)"
                ))
            })
    }
}

/// The model an analysis ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRef {
    /// Display name (`tiny`, `all-MiniLM-L6-v2`, ...).
    pub name: String,
    /// `preset:NAME` or the directory it was loaded from.
    pub source: String,
    /// `bert` or `clip-vision`.
    pub family: String,
    /// Width of the pooled output.
    pub output_dim: usize,
    /// Bytes of the unquantized model's weights (f32).
    pub f32_weight_bytes: u64,
    /// Every quantizable linear layer `(name, rows, cols)`, in forward order.
    pub linear_layers: Vec<(String, usize, usize)>,
}

/// The inputs an analysis used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputsRef {
    /// `built-in` or the file they came from.
    pub source: String,
    /// Number of inputs.
    pub count: usize,
    /// Tokens (or patches) per input after padding / truncation.
    pub seq_len: usize,
    /// FNV-1a 64 digest of the inputs, to tell runs on other inputs apart.
    pub digest: String,
}

/// What was asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalysisConfig {
    /// The model.
    pub model: ModelRef,
    /// Strategies in the order given.
    pub strategies: Vec<String>,
    /// Backends asked for.
    pub backends: Vec<BackendKind>,
    /// The priority of the recommendation.
    pub priority: Priority,
    /// `--max-memory-gb`, in GB (1e9 bytes).
    pub max_memory_gb: Option<f64>,
    /// `--min-accuracy` (mean cosine retention).
    pub min_accuracy: Option<f64>,
    /// Inputs per forward call.
    pub batch: usize,
    /// Evaluation inputs (every strategy x backend runs these).
    pub eval_inputs: InputsRef,
    /// Calibration inputs of GPTQ / AWQ (disjoint from the evaluation ones).
    pub calib_inputs: InputsRef,
    /// Timed forward passes per pair after warm-up.
    pub timed_runs: usize,
}

/// Fidelity to the unquantized model (accuracy *retention*, not task accuracy).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Retention {
    /// Mean cosine of pooled outputs against the f32 CPU reference.
    pub mean_cosine: f64,
    /// Worst (lowest) cosine over the inputs.
    pub worst_cosine: f64,
    /// NMSE of the pooled outputs.
    pub output_nmse: f64,
    /// Mean overlap of each input's top-10 nearest neighbours (cosine)
    /// among the evaluation inputs, quantized vs reference (embedding models).
    pub top10_agreement: Option<f64>,
    /// Top-1 agreement of a classification head, where the model has one.
    pub top1_agreement: Option<f64>,
}

/// One labelled memory sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemorySample {
    /// Seconds since the pair started.
    pub t_s: f64,
    /// `load`, `quantize`, `upload`, `warm-up`, `inference`, `free`.
    pub phase: String,
    /// Bytes the backend holds (its own accounting).
    pub backend_live_bytes: u64,
    /// Process resident set size in bytes.
    pub process_rss_bytes: u64,
    /// Device memory in use by everything, where the backend knows it.
    pub device_used_bytes: Option<u64>,
    /// Bytes the device allocator reserved, where it says.
    pub reserved_bytes: Option<u64>,
}

/// Memory over the life of one strategy x backend pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryTimeline {
    /// Samples in time order.
    pub samples: Vec<MemorySample>,
}

/// Memory figures of one pair.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MemoryStats {
    /// Exact bytes of the packed model: every part of every linear
    /// (codes, scales, zeros, codebooks, outliers, act scales) plus the f32
    /// parameters kept unquantized (embeddings, norms, biases).
    pub weight_bytes: u64,
    /// Bytes the backend held after upload, before inference.
    pub resident_after_upload_bytes: u64,
    /// Highest bytes the backend held during the pair.
    pub device_peak_bytes: u64,
    /// Peak during inference minus resident after upload (activations, scratch).
    pub inference_overhead_bytes: u64,
    /// Bytes the allocator reserved, where it says.
    pub reserved_bytes: Option<u64>,
    /// `1 - allocated / reserved`, where the allocator says.
    pub fragmentation: Option<f64>,
    /// Highest process RSS seen during the pair.
    pub process_rss_peak_bytes: u64,
    /// Memory of the device the pair ran on.
    pub device_total_bytes: Option<u64>,
}

/// Where forward time goes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TimeSplit {
    /// Seconds per input in linear layers.
    pub linear_s: f64,
    /// Seconds per input in attention.
    pub attention_s: f64,
    /// Seconds per input in everything else (norms, activations, adds).
    pub other_s: f64,
}

/// Speed figures of one pair.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SpeedStats {
    /// Median seconds per input over the timed runs.
    pub median_s_per_input: f64,
    /// 10th percentile.
    pub p10_s_per_input: f64,
    /// 90th percentile.
    pub p90_s_per_input: f64,
    /// Inputs per second at the median.
    pub inputs_per_s: f64,
    /// Tokens (or patches) per second at the median.
    pub tokens_per_s: f64,
    /// The split of the median forward.
    pub split: TimeSplit,
    /// Where the times came from.
    pub timing_source: TimingSource,
    /// Timed forward passes.
    pub runs: usize,
}

/// Scores of one result for each priority (normalized over the result set).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    /// Balanced.
    pub balanced: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Speed.
    pub speed: f64,
    /// Memory.
    pub memory: f64,
}

impl Scores {
    /// The score of `p`.
    pub fn get(&self, p: Priority) -> f64 {
        match p {
            Priority::Balanced => self.balanced,
            Priority::Accuracy => self.accuracy,
            Priority::Speed => self.speed,
            Priority::Memory => self.memory,
        }
    }
}

/// Efficiency of one result.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Efficiency {
    /// `accuracy / (weight_bytes / 1e9)`.
    pub accuracy_per_gb: f64,
    /// Bytes saved against the `none` baseline's weights.
    pub savings_bytes: i64,
    /// The same in % of the baseline.
    pub savings_pct: f64,
    /// Baseline bytes / these bytes.
    pub compression_ratio: f64,
    /// Baseline time / this time, on the same backend (when the baseline ran there).
    pub speedup_vs_baseline: Option<f64>,
    /// Extra device memory during inference as a fraction of the weights.
    pub overhead_ratio: f64,
    /// Normalized metrics (0..1, higher is better): memory, speed, accuracy.
    pub normalized: (f64, f64, f64),
    /// Scores per priority.
    pub scores: Scores,
}

/// One strategy on one backend, measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StrategyResult {
    /// Strategy name (`int4`, `gptq-int4`, `mixed(int4+int8x3)`, ...).
    pub strategy: String,
    /// Backend it ran on.
    pub backend: BackendKind,
    /// Device name.
    pub device: String,
    /// Packed format of the linear layers, e.g. `q4 g128`.
    pub format: String,
    /// Mean bits per weight over the linear layers.
    pub bits_per_weight: f64,
    /// Headline accuracy retention: the mean cosine.
    pub accuracy: f64,
    /// Retention figures.
    pub retention: Retention,
    /// Headline memory: exact packed weight bytes.
    pub memory_bytes: u64,
    /// Memory figures.
    pub memory: MemoryStats,
    /// Headline speed: median seconds per input.
    pub inference_time_s: f64,
    /// Speed figures.
    pub speed: SpeedStats,
    /// Seconds to quantize the model (calibration included).
    pub quantize_time_s: f64,
    /// Efficiency and scores.
    pub efficiency: Efficiency,
    /// Memory timeline of the pair.
    pub timeline: MemoryTimeline,
    /// What to know about this result.
    pub warnings: Vec<String>,
    /// FNV-1a 64 of the pooled outputs' bits over the evaluation inputs (first
    /// timed pass): a re-run or an exported model on the same backend must
    /// give the same digest.
    #[serde(default)]
    pub output_digest: String,
}

impl StrategyResult {
    /// Memory the pair needs on its device: the larger of the packed weights
    /// and the peak the backend held (weights + activations).
    pub fn footprint_bytes(&self) -> u64 {
        self.memory_bytes.max(self.memory.device_peak_bytes)
    }
}

/// A strategy x backend pair that did not run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SkippedPair {
    /// Strategy.
    pub strategy: String,
    /// Backend.
    pub backend: BackendKind,
    /// Why.
    pub reason: String,
}

/// One linear layer's sensitivity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerSensitivity {
    /// Layer name.
    pub layer: String,
    /// Rows x cols.
    pub shape: (usize, usize),
    /// Weight NMSE per strategy.
    pub weight_nmse: Vec<(String, f64)>,
    /// The strategy the output error was measured for.
    pub probe_strategy: String,
    /// Pooled-output NMSE against the reference with only this layer
    /// quantized with `probe_strategy` (all others f32).
    pub output_nmse_alone: f64,
    /// Mean cosine in the same run.
    pub cosine_alone: f64,
}

/// The mixed-precision suggestion: int4 everywhere but the k most
/// sensitive layers at int8.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixedPrecision {
    /// The low-precision strategy.
    pub base: String,
    /// The high-precision strategy for the sensitive layers.
    pub high: String,
    /// Layers kept at `high`, most sensitive first.
    pub high_layers: Vec<String>,
    /// The accuracy it had to meet.
    pub target_accuracy: f64,
    /// Whether it met it (false: even every layer at `high` did not).
    pub meets_target: bool,
    /// The measured result (on the CPU).
    pub result: StrategyResult,
    /// Each k tried with its accuracy, in the order tried.
    pub tried: Vec<(usize, f64)>,
}

/// One pick of the recommendation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pick {
    /// Strategy.
    pub strategy: String,
    /// Backend.
    pub backend: BackendKind,
    /// Its score for the priority.
    pub score: f64,
    /// Its accuracy retention.
    pub accuracy: f64,
    /// Its packed weight bytes.
    pub memory_bytes: u64,
    /// Its median seconds per input.
    pub inference_time_s: f64,
    /// The numbers that justify it, in words.
    pub reasons: Vec<String>,
}

/// A pair to avoid, with why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Avoid {
    /// Strategy.
    pub strategy: String,
    /// Backend.
    pub backend: BackendKind,
    /// Why.
    pub reason: String,
}

/// The recommendation for the priority under the constraints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recommendation {
    /// The priority.
    pub priority: Priority,
    /// The best pair that meets every constraint.
    pub recommended: Option<Pick>,
    /// The next best.
    pub runner_up: Option<Pick>,
    /// Pairs to avoid.
    pub avoid: Vec<Avoid>,
    /// Warnings (memory pressure, fragmentation, low retention, skipped backends).
    pub warnings: Vec<String>,
    /// When no pair meets the constraints: which binds, and by how much.
    pub binding_constraint: Option<String>,
}

/// Pareto fronts as indices into [`AnalysisRun::results`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ParetoFronts {
    /// Non-dominated in (time lower, accuracy higher).
    pub speed_accuracy: Vec<usize>,
    /// Non-dominated in (memory lower, accuracy higher).
    pub memory_accuracy: Vec<usize>,
}

/// One analysis: the document `analyze` writes and `--json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalysisRun {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// quantscope's version.
    pub tool_version: String,
    /// Unique id: `<unix seconds>-<model>-<digest>`.
    pub run_id: String,
    /// Unix seconds at the start.
    pub created_unix_s: u64,
    /// Seconds the analysis took.
    pub duration_s: f64,
    /// What was asked.
    pub config: AnalysisConfig,
    /// Where it ran.
    pub hardware: HardwareProfile,
    /// Every pair that ran.
    pub results: Vec<StrategyResult>,
    /// Every pair that did not, with why.
    pub skipped: Vec<SkippedPair>,
    /// Per-layer sensitivity.
    pub layers: Vec<LayerSensitivity>,
    /// The mixed-precision suggestion, when it was computed.
    pub mixed_precision: Option<MixedPrecision>,
    /// Pareto fronts.
    pub pareto: ParetoFronts,
    /// The recommendation.
    pub recommendation: Recommendation,
}

impl AnalysisRun {
    /// Parses a results document, refusing other schema versions with a
    /// message that says which version the file has and which this reads.
    pub fn from_json(text: &str, origin: &str) -> Result<AnalysisRun, AnalyzeError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| AnalyzeError::Results {
                path: origin.into(),
                message: format!("not a JSON document: {e}"),
            })?;
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(AnalyzeError::Results {
                    path: origin.into(),
                    message: format!(
                        "schema version {v}, but this quantscope ({}) reads version \
                         {SCHEMA_VERSION}{}",
                        env!("CARGO_PKG_VERSION"),
                        if v > u64::from(SCHEMA_VERSION) {
                            ": it was written by a newer quantscope; upgrade to read it"
                        } else {
                            ""
                        }
                    ),
                })
            }
            None => {
                return Err(AnalyzeError::Results {
                    path: origin.into(),
                    message: "no schema_version field: not a quantscope results file".into(),
                })
            }
        }
        serde_json::from_value(value).map_err(|e| AnalyzeError::Results {
            path: origin.into(),
            message: format!("does not match results schema {SCHEMA_VERSION}: {e}"),
        })
    }

    /// Reads a results file.
    pub fn load(path: &Path) -> Result<AnalysisRun, AnalyzeError> {
        let text = std::fs::read_to_string(path).map_err(|e| AnalyzeError::Results {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The document as pretty JSON.
    pub fn to_json(&self) -> Result<String, AnalyzeError> {
        serde_json::to_string_pretty(self).map_err(|e| AnalyzeError::Invalid(e.to_string()))
    }
}
