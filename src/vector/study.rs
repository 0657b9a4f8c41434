//! The approaches and the measured runs of the study.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::fit::{
    self, CellStats, DeviceSample, Fit, IterOptions, SortedSample, Summary, UploadedVector,
    DP_MAX_N,
};
use super::generate::{self, VectorSpec};
use super::VectorError;
use crate::backend::{Backend, BackendKind};
use crate::metrics::{error_stats, ErrorStats};

/// Vectors of at most this many values keep their quantized values in the results.
pub const KEEP_QUANTIZED_MAX_N: usize = 100;

/// One way of choosing the levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approach {
    /// The reference's fixed grid, `linspace(-4, 4, 2^bits)`.
    UniformFixed,
    /// The uniform grid (offset and step) with the least squared error.
    UniformOptimal,
    /// Lloyd-Max (1-D k-means) iterated to convergence on the sample.
    LloydMax,
    /// The exact optimum of 1-D k-means by dynamic programming (N <= 10,000).
    DpOptimal,
    #[serde(rename = "easyquant")]
    /// Values with |v − mean| > threshold·std kept exact, the rest quantized
    /// with optimized levels (DP optimum when the inliers are few enough,
    /// Lloyd-Max otherwise).
    EasyQuant,
}

impl Approach {
    /// Every approach, in report order.
    pub const ALL: [Approach; 5] = [
        Approach::UniformFixed,
        Approach::UniformOptimal,
        Approach::LloydMax,
        Approach::DpOptimal,
        Approach::EasyQuant,
    ];

    /// Name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Approach::UniformFixed => "uniform-fixed",
            Approach::UniformOptimal => "uniform-optimal",
            Approach::LloydMax => "lloyd-max",
            Approach::DpOptimal => "dp-optimal",
            Approach::EasyQuant => "easyquant",
        }
    }

    /// Title in `results.txt` (`<title> Quantization:`).
    pub fn title(self) -> &'static str {
        match self {
            Approach::UniformFixed => "Uniform-Fixed",
            Approach::UniformOptimal => "Uniform-Optimal",
            Approach::LloydMax => "Lloyd-Max",
            Approach::DpOptimal => "DP-Optimal",
            Approach::EasyQuant => "EasyQuant",
        }
    }

    /// The approaches of a `--approach` choice: `uniform` (fixed and optimal
    /// grids), `non-uniform` (Lloyd-Max and the DP optimum), `easyquant`,
    /// `all`, or one approach by name.
    pub fn parse_choice(s: &str) -> Result<Vec<Approach>, VectorError> {
        let s = s.to_ascii_lowercase();
        Ok(match s.as_str() {
            "uniform" => vec![Approach::UniformFixed, Approach::UniformOptimal],
            "non-uniform" => vec![Approach::LloydMax, Approach::DpOptimal],
            "all" => Approach::ALL.to_vec(),
            other => match Approach::ALL.into_iter().find(|a| a.name() == other) {
                Some(a) => vec![a],
                None => {
                    return Err(VectorError::Invalid(format!(
                        "unknown approach '{s}' (expected uniform, non-uniform, easyquant, all, \
                         or one of uniform-fixed, uniform-optimal, lloyd-max, dp-optimal)"
                    )))
                }
            },
        })
    }
}

impl std::fmt::Display for Approach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    /// The vector.
    pub spec: VectorSpec,
    /// Bits per value: `2^bits` levels, 1..=8.
    pub bits: u32,
    /// EasyQuant's outlier threshold in standard deviations (> 0).
    pub threshold: f64,
    /// Values the levels are fitted on (a random sample of the vector).
    pub sample_size: usize,
    /// Approaches, in order.
    pub approaches: Vec<Approach>,
    /// Stopping rule of the iterative fitters.
    pub iter: IterOptions,
    /// CPU threads (rayon) used by the run.
    pub threads: usize,
    /// Runs of each approach; the latencies reported are the medians (the
    /// figures are the same every run: everything is seeded).
    #[serde(default = "one")]
    pub repeat: usize,
}

fn one() -> usize {
    1
}

impl StudyConfig {
    /// The reference's settings for a vector: 3 bits, threshold 3, sample of
    /// 1,000,000, every approach, all CPU threads.
    pub fn new(spec: VectorSpec) -> StudyConfig {
        StudyConfig {
            spec,
            bits: 3,
            threshold: 3.0,
            sample_size: 1_000_000,
            approaches: Approach::ALL.to_vec(),
            iter: IterOptions::default(),
            threads: rayon::current_num_threads(),
            repeat: 1,
        }
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        1usize << self.bits
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), VectorError> {
        self.spec.validate()?;
        if !(1..=8).contains(&self.bits) {
            return Err(VectorError::Invalid(format!(
                "bits must be between 1 and 8, got {}",
                self.bits
            )));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(VectorError::Invalid(format!(
                "threshold must be a positive number of standard deviations, got {}",
                self.threshold
            )));
        }
        if self.sample_size == 0 {
            return Err(VectorError::Invalid(
                "sample size must be at least 1".into(),
            ));
        }
        if self.approaches.is_empty() {
            return Err(VectorError::Invalid("no approach chosen".into()));
        }
        if self.repeat == 0 {
            return Err(VectorError::Invalid("repeat must be at least 1".into()));
        }
        if self.threads == 0 {
            return Err(VectorError::Invalid("threads must be at least 1".into()));
        }
        if !(self.iter.tolerance.is_finite() && self.iter.tolerance >= 0.0)
            || self.iter.max_iterations == 0
        {
            return Err(VectorError::Invalid(
                "tolerance must be >= 0 and max iterations >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// The measured result of one approach on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproachResult {
    /// Which approach.
    pub approach: Approach,
    /// The levels, ascending.
    pub levels: Vec<f32>,
    /// ‖v − q‖₂ / N, the reference's figure.
    pub l2_over_n: f64,
    /// √(Σ(v − q)² / N).
    pub rmse: f64,
    /// Signal-to-quantization-noise ratio in dB.
    pub sqnr_db: f64,
    /// Every error figure.
    pub errors: ErrorStats,
    /// Seconds to fit the levels (sampling, sorting or uploading the sample included).
    pub fit_s: f64,
    /// Seconds to quantize the whole vector (upload, assignment, reconstruction).
    pub quantize_s: f64,
    /// `fit_s + quantize_s`.
    pub latency_s: f64,
    /// Fitter iterations (uniform search plus Lloyd-Max steps where both run).
    pub iterations: usize,
    /// Whether the iterative fit reached its tolerance.
    pub converged: bool,
    /// How the levels were found and where.
    pub fitter: String,
    /// Number of values the levels were fitted on.
    pub fit_values: u64,
    /// Mean squared error on the fitted values.
    pub fit_mse: f64,
    /// EasyQuant: values kept exact.
    pub outliers: Option<u64>,
    /// EasyQuant: values outside `[lo, hi]` are kept exact.
    pub outlier_bounds: Option<(f64, f64)>,
    /// The quantized vector, for vectors of at most [`KEEP_QUANTIZED_MAX_N`] values.
    pub quantized: Option<Vec<f32>>,
}

/// Every approach on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRun {
    /// Which backend.
    pub backend: BackendKind,
    /// Its device.
    pub device: String,
    /// CPU threads of the run.
    pub threads: usize,
    /// One result per approach that applies.
    pub results: Vec<ApproachResult>,
    /// Approaches skipped here, with why (e.g. the DP above 10,000 values).
    pub skipped: Vec<(Approach, String)>,
}

/// Facts about the quantized vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VectorFacts {
    /// Number of values.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
}

impl VectorFacts {
    /// Facts of `values`.
    pub fn of(values: &[f32]) -> VectorFacts {
        let s = Summary::of(values);
        VectorFacts {
            n: s.n,
            mean: s.mean(),
            std: s.std(),
            min: s.min,
            max: s.max,
        }
    }
}

/// One invocation of the study: configuration, vector, and every backend's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRun {
    /// Seconds since the Unix epoch when the run finished.
    pub timestamp_unix: u64,
    /// What was run.
    pub config: StudyConfig,
    /// The vector.
    pub vector: VectorFacts,
    /// One entry per backend that ran.
    pub runs: Vec<BackendRun>,
    /// Backends asked for (through `all`) that could not run, with why.
    pub unavailable: Vec<(BackendKind, String)>,
    /// Image files written.
    pub plots: Vec<String>,
    /// Plot problems that did not stop the run.
    pub warnings: Vec<String>,
}

/// Progress of [`run_study`].
#[derive(Debug, Clone, Copy)]
pub enum StudyEvent {
    /// An approach starts on a backend.
    Start {
        /// Backend.
        backend: BackendKind,
        /// Approach.
        approach: Approach,
        /// Steps done before this one.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// An approach finished on a backend.
    Done {
        /// Backend.
        backend: BackendKind,
        /// Approach.
        approach: Approach,
    },
}

/// Runs every approach of `cfg` on every backend, on `values`, in a rayon
/// pool of `cfg.threads` threads.
pub fn run_study(
    cfg: &StudyConfig,
    values: &[f32],
    backends: &[Arc<dyn Backend>],
    on_event: &mut (dyn FnMut(StudyEvent) + Send),
) -> Result<Vec<BackendRun>, VectorError> {
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| VectorError::Invalid(format!("cannot start {} threads: {e}", cfg.threads)))?;
    pool.install(|| {
        let total = backends.len() * cfg.approaches.len();
        let mut done = 0;
        let mut runs = Vec::new();
        for b in backends {
            let mut run = BackendRun {
                backend: b.kind(),
                device: b.info().name,
                threads: cfg.threads,
                results: Vec::new(),
                skipped: Vec::new(),
            };
            for &a in &cfg.approaches {
                on_event(StudyEvent::Start {
                    backend: b.kind(),
                    approach: a,
                    done,
                    total,
                });
                if a == Approach::DpOptimal && values.len() > DP_MAX_N {
                    run.skipped
                        .push((a, format!("the exact DP is computed for N <= {DP_MAX_N}")));
                } else {
                    let mut r = run_approach(cfg, values, b, a, FitPath::Auto)?;
                    if cfg.repeat > 1 {
                        let mut fits = vec![r.fit_s];
                        let mut quants = vec![r.quantize_s];
                        for _ in 1..cfg.repeat {
                            let again = run_approach(cfg, values, b, a, FitPath::Auto)?;
                            fits.push(again.fit_s);
                            quants.push(again.quantize_s);
                        }
                        r.fit_s = median(&mut fits);
                        r.quantize_s = median(&mut quants);
                        r.latency_s = r.fit_s + r.quantize_s;
                    }
                    run.results.push(r);
                }
                done += 1;
                on_event(StudyEvent::Done {
                    backend: b.kind(),
                    approach: a,
                });
            }
            runs.push(run);
        }
        Ok(runs)
    })
}

/// Where the iterative fitters get their per-level sums and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitPath {
    /// The sorted sample on the CPU backend, `assign_levels` on the others.
    Auto,
    /// `assign_levels` of the backend, whichever it is.
    Device,
}

fn cell_stats(
    backend: &Arc<dyn Backend>,
    sample: Vec<f32>,
    path: FitPath,
) -> Result<(Box<dyn CellStats>, &'static str), VectorError> {
    if path == FitPath::Auto && backend.kind() == BackendKind::Cpu {
        Ok((
            Box::new(SortedSample::new(sample)?),
            "sorted sample, prefix sums",
        ))
    } else {
        Ok((
            Box::new(DeviceSample::new(backend.clone(), &sample)?),
            "assign_levels on the device",
        ))
    }
}

/// The levels of one approach, as fitted on `backend` (the timed fit step).
pub struct FittedLevels {
    /// The fit.
    pub fit: Fit,
    /// How and where.
    pub fitter: String,
    /// Values fitted on.
    pub fit_values: u64,
    /// EasyQuant: the mean and standard deviation of the whole vector;
    /// values with `|v − mean| > threshold · std` are kept exact.
    pub outlier_rule: Option<(f64, f64)>,
}

/// Fits the levels of `approach` to `values` (sampled to `cfg.sample_size`).
pub fn fit_levels(
    cfg: &StudyConfig,
    values: &[f32],
    backend: &Arc<dyn Backend>,
    approach: Approach,
    path: FitPath,
) -> Result<FittedLevels, VectorError> {
    let k = cfg.levels();
    let sample = || generate::sample(values, cfg.sample_size, cfg.spec.seed);
    // Lloyd-Max converges to a local optimum: start it from the optimal
    // uniform grid (so it is never worse than that grid) and from the sample's
    // quantiles, and keep the better.
    let lloyd = |stats: &mut dyn CellStats, s: &[f32]| -> Result<Fit, VectorError> {
        let u = fit::uniform_optimal(stats, k, cfg.iter)?;
        let mut best = fit::lloyd_max(stats, &u.levels, cfg.iter)?;
        let mut iterations = u.iterations + best.iterations;
        let f = fit::lloyd_max(stats, s, cfg.iter)?;
        iterations += f.iterations;
        if f.fit_mse < best.fit_mse {
            best = f;
        }
        best.iterations = iterations;
        Ok(best)
    };
    Ok(match approach {
        Approach::UniformFixed => {
            let levels = fit::uniform_fixed(k);
            FittedLevels {
                fit: Fit {
                    levels,
                    iterations: 0,
                    converged: true,
                    fit_mse: f64::NAN,
                },
                fitter: "fixed linspace(-4, 4, 2^bits)".into(),
                fit_values: 0,
                outlier_rule: None,
            }
        }
        Approach::UniformOptimal => {
            let s = sample();
            let n = s.len() as u64;
            let (mut stats, how) = cell_stats(backend, s, path)?;
            FittedLevels {
                fit: fit::uniform_optimal(stats.as_mut(), k, cfg.iter)?,
                fitter: format!("range search + least squares ({how})"),
                fit_values: n,
                outlier_rule: None,
            }
        }
        Approach::LloydMax => {
            let s = sample();
            let n = s.len() as u64;
            let q = fit::quantile_levels(&s, k, cfg.spec.seed);
            let (mut stats, how) = cell_stats(backend, s, path)?;
            FittedLevels {
                fit: lloyd(stats.as_mut(), &q)?,
                fitter: format!("Lloyd-Max from the optimal uniform grid ({how})"),
                fit_values: n,
                outlier_rule: None,
            }
        }
        Approach::DpOptimal => FittedLevels {
            fit: fit::dp_optimal(values, k)?,
            fitter: "exact DP over the sorted vector (host)".into(),
            fit_values: values.len() as u64,
            outlier_rule: None,
        },
        Approach::EasyQuant => {
            let whole = Summary::of(values);
            let (mean, std) = (whole.mean(), whole.std());
            let inlier = |x: f32| !is_outlier(x, mean, std, cfg.threshold);
            let (fit, fitter, n) = if values.len() <= DP_MAX_N {
                let inliers: Vec<f32> = values.iter().copied().filter(|&x| inlier(x)).collect();
                let n = inliers.len() as u64;
                if inliers.is_empty() {
                    (constant_fit(mean), "every value is an outlier".into(), 0)
                } else {
                    (
                        fit::dp_optimal(&inliers, k)?,
                        "exact DP over the inliers (host)".to_string(),
                        n,
                    )
                }
            } else {
                let s: Vec<f32> = sample().into_iter().filter(|&x| inlier(x)).collect();
                let n = s.len() as u64;
                if s.is_empty() {
                    (
                        constant_fit(mean),
                        "every sampled value is an outlier".into(),
                        0,
                    )
                } else {
                    let q = fit::quantile_levels(&s, k, cfg.spec.seed);
                    let (mut stats, how) = cell_stats(backend, s, path)?;
                    (
                        lloyd(stats.as_mut(), &q)?,
                        format!("Lloyd-Max on the sampled inliers ({how})"),
                        n,
                    )
                }
            };
            FittedLevels {
                fit,
                fitter,
                fit_values: n,
                outlier_rule: Some((mean, std)),
            }
        }
    })
}

fn constant_fit(mean: f64) -> Fit {
    Fit {
        levels: vec![mean as f32],
        iterations: 0,
        converged: true,
        fit_mse: 0.0,
    }
}

/// EasyQuant's rule: `|x − mean| > threshold · std`.
#[inline]
pub fn is_outlier(x: f32, mean: f64, std: f64, threshold: f64) -> bool {
    (x as f64 - mean).abs() > threshold * std
}

/// Quantizes `values` to `levels` on `backend`: the codes (nearest level,
/// ties to the lower index).
pub fn assign_codes(
    backend: &dyn Backend,
    values: &[f32],
    levels: &[f32],
) -> Result<Vec<u8>, VectorError> {
    let up = UploadedVector::new(backend, values)?;
    let a = up.assign(backend, levels, true);
    backend.free(up.handle)?;
    Ok(a?.codes)
}

/// Fits and quantizes with one approach on one backend, timing both steps.
pub fn run_approach(
    cfg: &StudyConfig,
    values: &[f32],
    backend: &Arc<dyn Backend>,
    approach: Approach,
    path: FitPath,
) -> Result<ApproachResult, VectorError> {
    let t0 = Instant::now();
    let fitted = fit_levels(cfg, values, backend, approach, path)?;
    let fit_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let levels = &fitted.fit.levels;
    let codes = assign_codes(backend.as_ref(), values, levels)?;
    let mut q: Vec<f32> = codes
        .par_iter()
        .map(|&c| levels.get(c as usize).copied().unwrap_or(f32::NAN))
        .collect();
    let mut outliers = None;
    if let Some((mean, std)) = fitted.outlier_rule {
        let t = cfg.threshold;
        let count: u64 = q
            .par_iter_mut()
            .zip(values.par_iter())
            .map(|(q, &v)| {
                if is_outlier(v, mean, std, t) {
                    *q = v;
                    1
                } else {
                    0
                }
            })
            .sum();
        outliers = Some(count);
    }
    let quantize_s = t1.elapsed().as_secs_f64();

    let errors = error_stats(values, &q);
    Ok(ApproachResult {
        approach,
        levels: fitted.fit.levels.clone(),
        l2_over_n: errors.l2_over_n,
        rmse: errors.rmse,
        sqnr_db: errors.sqnr_db,
        errors,
        fit_s,
        quantize_s,
        latency_s: fit_s + quantize_s,
        iterations: fitted.fit.iterations,
        converged: fitted.fit.converged,
        fitter: fitted.fitter,
        fit_values: fitted.fit_values,
        fit_mse: fitted.fit.fit_mse,
        outliers,
        outlier_bounds: fitted
            .outlier_rule
            .map(|(m, s)| (m - cfg.threshold * s, m + cfg.threshold * s)),
        quantized: (values.len() <= KEEP_QUANTIZED_MAX_N).then_some(q),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
