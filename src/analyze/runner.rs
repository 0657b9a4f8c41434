//! The analysis itself: every strategy on every backend through the
//! model's real forward pass.
//!
//! Order of work:
//! 1. load the model and its inputs (evaluation inputs, and the disjoint
//!    calibration inputs GPTQ / AWQ learn from);
//! 2. the reference: the unquantized f32 model on the CPU;
//! 3. per strategy: quantize once (timed), then per backend: check that it
//!    fits and runs, upload, warm up, time `timed_runs` passes over the
//!    evaluation inputs (device clock), compare the pooled outputs with the
//!    reference, free — with a memory timeline throughout;
//! 4. per-layer sensitivity and the mixed-precision suggestion (CPU);
//! 5. efficiency, Pareto fronts and the recommendation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::schema::*;
use super::timeline::TimelineRecorder;
use super::{efficiency, fidelity, recommend, AnalyzeError, Constraints};
use crate::backend::{self, Backend, BackendKind, TimingSource};
use crate::format::GroupSize;
use crate::hardware::HardwareProfile;
use crate::model::{
    quantize_model, Batch, DeviceModel, Family, Inputs, Model, ModelError, Preset, QuantPlan,
    QuantizedModel,
};
use crate::quant::{QuantConfig, Scheme};

/// The strategies `analyze` runs by default, in this order.
pub const DEFAULT_STRATEGIES: [&str; 11] = [
    "none",
    "f16",
    "int8",
    "w8a8",
    "int4",
    "int4-clip",
    "nf4",
    "kmeans4",
    "easyquant4",
    "gptq-int4",
    "awq-int4",
];

/// Mixed precision's target retention when `--min-accuracy` is not given.
pub const DEFAULT_MIXED_TARGET: f64 = 0.999;

/// Evaluation inputs the per-layer probe uses (a subset keeps it cheap).
const PROBE_INPUTS: usize = 8;

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A built-in preset.
    Preset(Preset),
    /// A Hugging Face (or quantscope-exported) checkpoint folder.
    Dir(PathBuf),
}

/// What to analyze.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// The model.
    pub model: ModelSource,
    /// Strategies, by command-line name.
    pub strategies: Vec<String>,
    /// Backends; `None` = every available one.
    pub backends: Option<Vec<BackendKind>>,
    /// The recommendation's priority.
    pub priority: Priority,
    /// `--max-memory-gb`.
    pub max_memory_gb: Option<f64>,
    /// `--min-accuracy`.
    pub min_accuracy: Option<f64>,
    /// Evaluation inputs file (one per line); `None` = the built-in set.
    pub inputs: Option<PathBuf>,
    /// Inputs per forward call.
    pub batch: usize,
    /// Timed passes over the evaluation inputs per pair.
    pub timed_runs: usize,
    /// Group size of the grouped formats.
    pub group: GroupSize,
    /// Compute per-layer sensitivity and the mixed-precision suggestion.
    pub sensitivity: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            model: ModelSource::Preset(Preset::Tiny),
            strategies: DEFAULT_STRATEGIES.iter().map(|s| s.to_string()).collect(),
            backends: None,
            priority: Priority::Balanced,
            max_memory_gb: None,
            min_accuracy: None,
            inputs: None,
            batch: 8,
            timed_runs: 3,
            group: GroupSize::Cols(128),
            sensitivity: true,
        }
    }
}

/// What the runner tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The number of strategy x backend pairs to run.
    Pairs(usize),
    /// What is being done now.
    Phase(String),
    /// One pair finished (or was skipped): a one-line summary.
    PairDone(String),
}

fn model_err(e: ModelError) -> AnalyzeError {
    AnalyzeError::Invalid(e.to_string())
}

/// FNV-1a 64 of a byte stream, as hex.
fn fnv(chunks: impl Iterator<Item = Vec<u8>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for b in c {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// FNV-1a 64 of pooled outputs' bits: equal digests, bit-identical outputs.
pub fn pooled_digest(pooled: &[f32]) -> String {
    fnv(std::iter::once(
        pooled.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ))
}

fn inputs_digest(inputs: &Inputs) -> String {
    match inputs {
        Inputs::Texts(t) => fnv(t.iter().map(|s| s.as_bytes().to_vec())),
        Inputs::Images(i) => fnv(i.iter().map(|im| im.as_raw().clone())),
    }
}

/// Parses strategy names (refusing unknown ones with the valid list, and
/// duplicates).
pub fn parse_strategies(names: &[String]) -> Result<Vec<Scheme>, AnalyzeError> {
    let mut out: Vec<Scheme> = Vec::new();
    for n in names {
        let s: Scheme = n.trim().parse().map_err(|_| {
            AnalyzeError::Invalid(format!(
                "unknown strategy '{}' (valid: {}, bf16)",
                n.trim(),
                DEFAULT_STRATEGIES.join(", ")
            ))
        })?;
        if out.contains(&s) {
            return Err(AnalyzeError::Invalid(format!(
                "strategy '{}' is listed twice",
                s.name()
            )));
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err(AnalyzeError::Invalid("no strategy to analyze".into()));
    }
    Ok(out)
}

/// All evaluation batches of `inputs`.
fn batches(model: &Model, inputs: &Inputs, batch: usize) -> Result<Vec<Batch>, AnalyzeError> {
    let n = inputs.len();
    (0..n)
        .step_by(batch.max(1))
        .map(|i| {
            model
                .encode(inputs, i..(i + batch).min(n))
                .map_err(model_err)
        })
        .collect()
}

/// Runs `dm` over every batch once and returns the pooled outputs in order.
fn forward_all(dm: &DeviceModel<'_>, batches: &[Batch]) -> Result<Vec<f32>, AnalyzeError> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(dm.forward(b).map_err(model_err)?.pooled);
    }
    Ok(out)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn config_for(s: Scheme, group: GroupSize) -> QuantConfig {
    let mut c = QuantConfig::new(s);
    c.group = group;
    c
}

/// Label and mean bits per weight of the linears of `q`.
fn format_of(q: &QuantizedModel) -> (String, f64) {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut bits, mut weights) = (0.0f64, 0usize);
    for m in q.linears().values() {
        let group = match m.kind() {
            crate::format::FormatKind::F32
            | crate::format::FormatKind::F16
            | crate::format::FormatKind::Bf16 => String::new(),
            _ => format!(" g{}", m.group_len()),
        };
        let extra = match (m.outliers().is_some(), m.act_scale().is_some()) {
            (true, _) => " +outliers",
            (_, true) => " +act-scale",
            _ => "",
        };
        // W8A8: the activations are int8 too.
        let a8 = if m.int8_activations() { " +a8" } else { "" };
        *kinds
            .entry(format!("{}{group}{extra}{a8}", m.kind()))
            .or_default() += 1;
        bits += m.bits_per_weight() * (m.rows() * m.cols()) as f64;
        weights += m.rows() * m.cols();
    }
    let label = kinds.keys().cloned().collect::<Vec<_>>().join(" / ");
    (label, bits / weights.max(1) as f64)
}

/// One pair's measurement (everything but the efficiency).
struct Measured {
    result: StrategyResult,
}

/// Everything one analysis needs while it runs.
struct Context<'a> {
    opts: &'a AnalyzeOptions,
    model: Model,
    eval: Vec<Batch>,
    probe: Vec<Batch>,
    n_eval: usize,
    tokens_per_input: f64,
    calib: Inputs,
    reference: Vec<f32>,
    hardware: HardwareProfile,
    embedding: bool,
}

impl Context<'_> {
    /// Measures `q` (quantized in `quantize_s`) on `backend`.
    fn measure(
        &self,
        strategy: &str,
        q: &QuantizedModel,
        quantize_s: f64,
        backend: &dyn Backend,
        mut tl: TimelineRecorder,
    ) -> Result<Measured, AnalyzeError> {
        let kind = backend.kind();
        let weight_bytes = q.weight_bytes();
        tl.sample("upload", Some(backend));
        let dm = DeviceModel::upload(backend, q).map_err(model_err)?;
        tl.sample("upload", Some(backend));
        let resident = backend.memory().live_bytes;
        // Warm-up: first use compiles pipelines and fills caches.
        dm.forward(&self.eval[0]).map_err(model_err)?;
        tl.sample("warm-up", Some(backend));
        let mut pooled = Vec::new();
        let mut per_input = Vec::new();
        let mut split_runs: Vec<(f64, f64, f64)> = Vec::new();
        let mut source = TimingSource::WallClock;
        let mut peak_inference = resident;
        let mut reserved = None;
        let mut fragmentation = None;
        for run in 0..self.opts.timed_runs.max(1) {
            let (mut total, mut lin, mut att, mut oth) = (0.0, 0.0, 0.0, 0.0);
            let mut out = Vec::new();
            for b in &self.eval {
                let (o, t) = dm.forward_timed(b).map_err(model_err)?;
                total += t.total_s;
                lin += t.linear_s;
                att += t.attention_s;
                oth += t.other_s;
                source = t.source;
                out.extend(o.pooled);
                tl.sample("inference", Some(backend));
                let m = backend.memory();
                peak_inference = peak_inference.max(m.live_bytes);
                reserved = m.reserved_bytes.or(reserved);
                fragmentation = m.fragmentation().or(fragmentation);
            }
            let n = self.n_eval as f64;
            per_input.push(total / n);
            split_runs.push((lin / n, att / n, oth / n));
            if run == 0 {
                pooled = out;
            }
        }
        let mem_total = backend.memory().device_total_bytes;
        dm.free().map_err(model_err)?;
        tl.sample("free", Some(backend));
        let timeline = tl.finish();

        let mut sorted = per_input.clone();
        sorted.sort_by(f64::total_cmp);
        let median = percentile(&sorted, 0.5);
        let median_run = per_input.iter().position(|&t| t == median).unwrap_or(0);
        let (lin, att, oth) = split_runs[median_run];
        let retention = fidelity::retention(&self.reference, &pooled, self.n_eval, self.embedding);
        let (format, bits) = format_of(q);
        let device_peak = timeline.peak_backend_bytes().max(peak_inference);
        let mut warnings: Vec<String> = q.notes().to_vec();
        if !pooled.iter().all(|v| v.is_finite()) {
            warnings.push("non-finite outputs: this pair produced NaN or infinity".into());
        }
        let result = StrategyResult {
            output_digest: pooled_digest(&pooled),
            strategy: strategy.to_string(),
            backend: kind,
            device: backend.info().name,
            format,
            bits_per_weight: bits,
            accuracy: retention.mean_cosine,
            retention,
            memory_bytes: weight_bytes,
            memory: MemoryStats {
                weight_bytes,
                resident_after_upload_bytes: resident,
                device_peak_bytes: device_peak,
                inference_overhead_bytes: peak_inference.saturating_sub(resident),
                reserved_bytes: reserved,
                fragmentation,
                process_rss_peak_bytes: timeline.peak_rss_bytes(),
                device_total_bytes: if kind == BackendKind::Cpu {
                    Some(self.hardware.cpu.ram_total_bytes)
                } else {
                    mem_total.or_else(|| self.hardware.memory_bytes(kind))
                },
            },
            inference_time_s: median,
            speed: SpeedStats {
                median_s_per_input: median,
                p10_s_per_input: percentile(&sorted, 0.1),
                p90_s_per_input: percentile(&sorted, 0.9),
                inputs_per_s: 1.0 / median,
                tokens_per_s: self.tokens_per_input / median,
                split: TimeSplit {
                    linear_s: lin,
                    attention_s: att,
                    other_s: oth,
                },
                timing_source: source,
                runs: per_input.len(),
            },
            quantize_time_s: quantize_s,
            efficiency: Efficiency::default(),
            timeline,
            warnings,
        };
        Ok(Measured { result })
    }

    /// Quantizes with `plan` (calibration inputs for GPTQ / AWQ).
    fn quantize(&self, plan: &QuantPlan) -> Result<(QuantizedModel, f64), AnalyzeError> {
        let needs_calib = std::iter::once(&plan.default)
            .chain(plan.per_layer.values())
            .any(|c| c.scheme.needs_calibration());
        let t = Instant::now();
        let q = quantize_model(
            &self.model,
            plan,
            needs_calib.then_some(&self.calib),
            &|_, _| {},
        )
        .map_err(model_err)?;
        Ok((q, t.elapsed().as_secs_f64()))
    }

    /// Whether a model of `bytes` fits `kind`'s memory budget; `Err` says why not.
    fn fits(&self, kind: BackendKind, bytes: u64) -> Result<(), String> {
        let Some(total) = self.hardware.memory_bytes(kind) else {
            return Ok(());
        };
        let frac = self.hardware.memory_budget_fraction(kind);
        // Weights plus activations: the forward's scratch is a small share
        // of the weights for these encoders; 10 % is the margin taken.
        let need = bytes + bytes / 10;
        if need as f64 > frac * total as f64 {
            return Err(format!(
                "needs ~{:.2} GB, above {:.0} % of the {:.2} GB {} memory",
                need as f64 / 1e9,
                100.0 * frac,
                total as f64 / 1e9,
                if kind == BackendKind::Cpu {
                    "host"
                } else {
                    "device"
                }
            ));
        }
        Ok(())
    }

    /// Pooled outputs on the CPU for `q` over the probe subset.
    fn probe_outputs(
        &self,
        cpu: &dyn Backend,
        q: &QuantizedModel,
    ) -> Result<Vec<f32>, AnalyzeError> {
        let dm = DeviceModel::upload(cpu, q).map_err(model_err)?;
        let out = forward_all(&dm, &self.probe);
        dm.free().map_err(model_err)?;
        out
    }
}

/// The model of `src` and how to name its source.
fn load_model(src: &ModelSource) -> Result<(Model, String), AnalyzeError> {
    Ok(match src {
        ModelSource::Preset(p) => (
            Model::preset(*p).map_err(model_err)?,
            format!("preset:{}", p.name()),
        ),
        ModelSource::Dir(d) => (Model::load(d).map_err(model_err)?, d.display().to_string()),
    })
}

/// Writes the recommended configuration of `run` (or, with `mixed`, its
/// mixed-precision one) as a quantized checkpoint folder `dir` that
/// [`Model::load`] / [`QuantizedModel::load`] read without re-quantizing.
/// The quantizers are deterministic (seeded), so the packed weights are
/// those the analysis measured. Returns what was written, in words.
pub fn export(
    opts: &AnalyzeOptions,
    run: &AnalysisRun,
    dir: &std::path::Path,
    mixed: bool,
) -> Result<String, AnalyzeError> {
    let (model, _) = load_model(&opts.model)?;
    let (plan, label) = if mixed {
        let m = run.mixed_precision.as_ref().ok_or_else(|| {
            AnalyzeError::Invalid("nothing to export: no mixed-precision suggestion".into())
        })?;
        (
            mixed_plan(&m.high_layers, opts.group),
            format!(
                "mixed precision (int4, {} layers at int8)",
                m.high_layers.len()
            ),
        )
    } else {
        let pick = run.recommendation.recommended.as_ref().ok_or_else(|| {
            AnalyzeError::Invalid(format!(
                "nothing to export: no recommendation ({})",
                run.recommendation
                    .binding_constraint
                    .as_deref()
                    .unwrap_or("no pair meets the constraints")
            ))
        })?;
        let scheme: Scheme = pick
            .strategy
            .parse()
            .map_err(|e: crate::quant::QuantError| AnalyzeError::Invalid(e.to_string()))?;
        (
            QuantPlan::uniform(config_for(scheme, opts.group)),
            format!("{} (recommended for {})", pick.strategy, pick.backend),
        )
    };
    let needs_calib = std::iter::once(&plan.default)
        .chain(plan.per_layer.values())
        .any(|c| c.scheme.needs_calibration());
    let calib = model.calibration_inputs();
    let q = quantize_model(&model, &plan, needs_calib.then_some(&calib), &|_, _| {})
        .map_err(model_err)?;
    q.save(dir).map_err(model_err)?;
    Ok(label)
}

/// Runs the analysis.
pub fn run(
    opts: &AnalyzeOptions,
    progress: &dyn Fn(Progress),
) -> Result<AnalysisRun, AnalyzeError> {
    let started = Instant::now();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let schemes = parse_strategies(&opts.strategies)?;
    if opts.batch == 0 || opts.batch > 4096 {
        return Err(AnalyzeError::Invalid(format!(
            "--batch {} is out of range (1..=4096)",
            opts.batch
        )));
    }
    if opts.timed_runs == 0 || opts.timed_runs > 1000 {
        return Err(AnalyzeError::Invalid(format!(
            "timed runs {} out of range (1..=1000)",
            opts.timed_runs
        )));
    }
    if let Some(a) = opts.min_accuracy {
        if !(-1.0..=1.0).contains(&a) {
            return Err(AnalyzeError::Invalid(format!(
                "--min-accuracy {a} is not a cosine in [-1, 1]"
            )));
        }
    }
    if let Some(m) = opts.max_memory_gb {
        if !(m.is_finite() && m > 0.0) {
            return Err(AnalyzeError::Invalid(format!(
                "--max-memory-gb {m} must be a positive number"
            )));
        }
    }

    progress(Progress::Phase("loading the model".into()));
    let mut load_tl = TimelineRecorder::new();
    load_tl.sample("load", None);
    let (model, source) = load_model(&opts.model)?;
    load_tl.sample("load", None);
    let (eval_inputs, eval_source) = match &opts.inputs {
        Some(p) => (
            model.read_inputs(p).map_err(model_err)?,
            p.display().to_string(),
        ),
        None => (model.default_inputs(), "built-in".to_string()),
    };
    if eval_inputs.is_empty() {
        return Err(AnalyzeError::Invalid("no evaluation inputs".into()));
    }
    let calib = model.calibration_inputs();
    let eval = batches(&model, &eval_inputs, opts.batch)?;
    let n_eval = eval_inputs.len();
    let tokens: usize = eval.iter().map(|b| b.lengths().iter().sum::<usize>()).sum();
    let seq_len = eval.iter().map(|b| b.seq).max().unwrap_or(0);
    let probe_n = n_eval.min(PROBE_INPUTS);
    // The first evaluation batches covering PROBE_INPUTS inputs (encoded once).
    let mut seen = 0usize;
    let probe: Vec<Batch> = eval
        .iter()
        .take_while(|b| {
            let keep = seen < probe_n;
            seen += b.n;
            keep
        })
        .cloned()
        .collect();
    let probe_rows: usize = probe.iter().map(|b| b.n).sum();

    progress(Progress::Phase("profiling the hardware".into()));
    let hardware = HardwareProfile::detect();

    // Backends: those asked for, or every available one.
    let mut skipped: Vec<SkippedPair> = Vec::new();
    let mut devices: Vec<Arc<dyn Backend>> = Vec::new();
    let wanted: Vec<BackendKind> = opts
        .backends
        .clone()
        .unwrap_or_else(|| BackendKind::ALL.to_vec());
    let mut unavailable: Vec<String> = Vec::new();
    for kind in &wanted {
        match backend::open(*kind) {
            Ok(b) => devices.push(b),
            Err(e) => {
                unavailable.push(e.to_string());
                for s in &schemes {
                    skipped.push(SkippedPair {
                        strategy: s.name().into(),
                        backend: *kind,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    if devices.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no requested backend is available: {}",
            unavailable.join("; ")
        )));
    }

    // The reference: f32 on the CPU.
    progress(Progress::Phase("the f32 reference on the CPU".into()));
    let cpu: Arc<dyn Backend> = Arc::new(backend::cpu::CpuBackend::exact());
    let (f32_model, _) = {
        let ctx_plan = QuantPlan::uniform(config_for(
            Scheme::None(crate::format::FormatKind::F32),
            opts.group,
        ));
        let t = Instant::now();
        let q = quantize_model(&model, &ctx_plan, None, &|_, _| {}).map_err(model_err)?;
        (q, t.elapsed().as_secs_f64())
    };
    let reference = {
        let dm = DeviceModel::upload(cpu.as_ref(), &f32_model).map_err(model_err)?;
        let out = forward_all(&dm, &eval)?;
        dm.free().map_err(model_err)?;
        out
    };
    if !reference.iter().all(|v| v.is_finite()) {
        return Err(AnalyzeError::Invalid(
            "the unquantized model produces non-finite outputs on these inputs".into(),
        ));
    }
    let embedding = model.family() == Family::Bert;

    let ctx = Context {
        opts,
        model,
        eval,
        probe,
        n_eval,
        tokens_per_input: tokens as f64 / n_eval as f64,
        calib,
        reference,
        hardware,
        embedding,
    };

    progress(Progress::Pairs(schemes.len() * devices.len()));
    let mut results: Vec<StrategyResult> = Vec::new();
    let mut quantized: Vec<(Scheme, QuantizedModel)> = Vec::new();
    for &s in &schemes {
        progress(Progress::Phase(format!("quantizing with {s}")));
        let mut tl = TimelineRecorder::new();
        tl.sample("quantize", None);
        let plan = QuantPlan::uniform(config_for(s, opts.group));
        let (q, qs) = match ctx.quantize(&plan) {
            Ok(v) => v,
            Err(e) => {
                for d in &devices {
                    skipped.push(SkippedPair {
                        strategy: s.name().into(),
                        backend: d.kind(),
                        reason: format!("quantization failed: {e}"),
                    });
                    progress(Progress::PairDone(format!(
                        "{s} on {}: skipped (quantization failed: {e})",
                        d.kind()
                    )));
                }
                continue;
            }
        };
        tl.sample("quantize", None);
        for d in &devices {
            let kind = d.kind();
            if let Err(why) = ctx.fits(kind, q.weight_bytes()) {
                skipped.push(SkippedPair {
                    strategy: s.name().into(),
                    backend: kind,
                    reason: why.clone(),
                });
                progress(Progress::PairDone(format!(
                    "{s} on {kind}: skipped ({why})"
                )));
                continue;
            }
            progress(Progress::Phase(format!("{s} on {kind}")));
            let mut pair_tl = TimelineRecorder::new();
            // The quantize phase belongs to every pair of the strategy.
            for smp in &tl.timeline().samples {
                pair_tl.sample(&smp.phase, None);
            }
            match ctx.measure(s.name(), &q, qs, d.as_ref(), pair_tl) {
                Ok(m) => {
                    let r = &m.result;
                    progress(Progress::PairDone(format!(
                        "{s} on {kind}: retention {:.5}, {:.2} MB, {:.3} ms/input",
                        r.accuracy,
                        r.memory_bytes as f64 / 1e6,
                        r.inference_time_s * 1e3
                    )));
                    results.push(m.result);
                }
                Err(e) => {
                    skipped.push(SkippedPair {
                        strategy: s.name().into(),
                        backend: kind,
                        reason: e.to_string(),
                    });
                    progress(Progress::PairDone(format!("{s} on {kind}: skipped ({e})")));
                }
            }
        }
        quantized.push((s, q));
    }

    // Per-layer sensitivity and mixed precision, on the CPU.
    let mut layers = Vec::new();
    let mut mixed = None;
    if opts.sensitivity && !results.is_empty() {
        progress(Progress::Phase("per-layer sensitivity".into()));
        let probe_scheme = schemes
            .iter()
            .copied()
            .find(|s| *s == Scheme::Int4)
            .unwrap_or(Scheme::Int4);
        let ref_probe = ctx.reference[..probe_rows * ctx.model.output_dim()].to_vec();
        for l in ctx.model.linear_layers() {
            let original = ctx
                .model
                .tensor(&format!("{}.weight", l.name))
                .map(|m| m.data().to_vec());
            let weight_nmse: Vec<(String, f64)> = quantized
                .iter()
                .filter_map(|(s, q)| {
                    let m = q.layer_weights(&l.name)?;
                    let orig = original.as_ref()?;
                    let mut dq = vec![0.0f32; m.rows() * m.cols()];
                    for (r, row) in dq.chunks_mut(m.cols()).enumerate() {
                        m.dequantize_row(r, row);
                    }
                    Some((s.name().to_string(), crate::metrics::nmse(orig, &dq)))
                })
                .collect();
            let mut plan = QuantPlan::uniform(config_for(
                Scheme::None(crate::format::FormatKind::F32),
                opts.group,
            ));
            plan.per_layer
                .insert(l.name.clone(), config_for(probe_scheme, opts.group));
            let (q, _) = ctx.quantize(&plan)?;
            let out = ctx.probe_outputs(cpu.as_ref(), &q)?;
            let ret = fidelity::retention(&ref_probe, &out, probe_rows, false);
            layers.push(LayerSensitivity {
                layer: l.name.clone(),
                shape: (l.rows, l.cols),
                weight_nmse,
                probe_strategy: probe_scheme.name().into(),
                output_nmse_alone: ret.output_nmse,
                cosine_alone: ret.mean_cosine,
            });
        }
        progress(Progress::Phase("mixed precision".into()));
        mixed = Some(mixed_precision(&ctx, cpu.as_ref(), &layers)?);
    }

    efficiency::compute(&mut results, ctx.model.f32_weight_bytes());
    let pareto = efficiency::fronts(&results);
    let constraints = Constraints {
        max_memory_bytes: opts.max_memory_gb.map(|g| (g * 1e9) as u64),
        min_accuracy: opts.min_accuracy,
    };
    let recommendation = recommend(
        &results,
        opts.priority,
        &constraints,
        Some(&ctx.hardware),
        &skipped,
    );
    let digest = inputs_digest(&eval_inputs);
    let model_ref = ModelRef {
        name: ctx.model.name().to_string(),
        source,
        family: match ctx.model.family() {
            Family::Bert => "bert".into(),
            Family::ClipVision => "clip-vision".into(),
        },
        output_dim: ctx.model.output_dim(),
        f32_weight_bytes: ctx.model.f32_weight_bytes(),
        linear_layers: ctx
            .model
            .linear_layers()
            .into_iter()
            .map(|l| (l.name, l.rows, l.cols))
            .collect(),
    };
    let run_id = format!(
        "{created}-{}-{}",
        model_ref
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            })
            .collect::<String>(),
        &digest[..8]
    );
    Ok(AnalysisRun {
        schema_version: SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        run_id,
        created_unix_s: created,
        duration_s: started.elapsed().as_secs_f64(),
        config: AnalysisConfig {
            model: model_ref,
            strategies: schemes.iter().map(|s| s.name().to_string()).collect(),
            backends: devices.iter().map(|d| d.kind()).collect(),
            priority: opts.priority,
            max_memory_gb: opts.max_memory_gb,
            min_accuracy: opts.min_accuracy,
            batch: opts.batch,
            eval_inputs: InputsRef {
                source: eval_source,
                count: n_eval,
                seq_len,
                digest,
            },
            calib_inputs: InputsRef {
                source: "built-in calibration set".into(),
                count: ctx.calib.len(),
                seq_len,
                digest: inputs_digest(&ctx.calib),
            },
            timed_runs: opts.timed_runs,
        },
        hardware: ctx.hardware.clone(),
        results,
        skipped,
        layers,
        mixed_precision: mixed,
        pareto,
        recommendation,
    })
}

/// The plan of the mixed-precision suggestion: int4 everywhere, int8 on
/// `high`.
pub fn mixed_plan(high: &[String], group: GroupSize) -> QuantPlan {
    let mut plan = QuantPlan::uniform(config_for(Scheme::Int4, group));
    for l in high {
        plan.per_layer
            .insert(l.clone(), config_for(Scheme::Int8, group));
    }
    plan
}

/// The smallest k (most sensitive layers at int8, the rest int4) whose
/// measured retention meets the target, by bisection over k on the CPU.
fn mixed_precision(
    ctx: &Context<'_>,
    cpu: &dyn Backend,
    layers: &[LayerSensitivity],
) -> Result<MixedPrecision, AnalyzeError> {
    let target = ctx.opts.min_accuracy.unwrap_or(DEFAULT_MIXED_TARGET);
    let mut order: Vec<&LayerSensitivity> = layers.iter().collect();
    order.sort_by(|a, b| {
        b.output_nmse_alone
            .total_cmp(&a.output_nmse_alone)
            .then(a.layer.cmp(&b.layer))
    });
    let names: Vec<String> = order.iter().map(|l| l.layer.clone()).collect();
    let mut tried: Vec<(usize, f64)> = Vec::new();
    let mut cache: BTreeMap<usize, Measured> = BTreeMap::new();
    let mut eval_k = |k: usize| -> Result<f64, AnalyzeError> {
        if let Some(m) = cache.get(&k) {
            return Ok(m.result.accuracy);
        }
        let plan = mixed_plan(&names[..k], ctx.opts.group);
        let (q, qs) = ctx.quantize(&plan)?;
        let label = format!("mixed(int4+int8x{k})");
        let m = ctx.measure(&label, &q, qs, cpu, TimelineRecorder::new())?;
        let acc = m.result.accuracy;
        tried.push((k, acc));
        cache.insert(k, m);
        Ok(acc)
    };
    // Bisection for the smallest k meeting the target, assuming more int8
    // layers never hurt (checked: the answer is the measured one).
    let (mut lo, mut hi) = (0usize, names.len());
    let meets_all = eval_k(hi)? >= target;
    if meets_all {
        if eval_k(0)? >= target {
            hi = 0;
        }
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if eval_k(mid)? >= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
    }
    let k = hi;
    eval_k(k)?;
    let chosen = cache
        .remove(&k)
        .ok_or_else(|| AnalyzeError::Invalid("mixed precision: no measurement".into()))?;
    let mut result = chosen.result;
    result.warnings.push(
        "mixed precision is measured on the CPU (exact f32 activations); \
         not part of the ranked results"
            .into(),
    );
    Ok(MixedPrecision {
        base: "int4".into(),
        high: "int8".into(),
        high_layers: names[..k].to_vec(),
        target_accuracy: target,
        meets_target: result.accuracy >= target,
        result,
        tried,
    })
}
