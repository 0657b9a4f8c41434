//! Quantization algorithms. They produce `format` values and never touch devices.
//!
//! [`Scheme`] names every strategy the tool offers; [`quantize`] runs the
//! data-free ones. Calibration-based schemes (GPTQ, AWQ) take activations too.
//!
//! The rule every scheme keeps: **no quantizer ever writes a non-finite value
//! from finite input.** [`quantize`] and [`quantize_calibrated`], the one
//! door every result passes through, refuse weights beyond the storage
//! format's range before quantizing ([`crate::format::limits`]) and check
//! every effective weight of the result after ([`check_output`]).

pub mod awq;
pub mod calib;
pub mod clip;
pub mod codebook;
pub mod easyquant;
pub mod gptq;
pub mod rtn;
pub mod smooth;

use serde::{Deserialize, Serialize};

use crate::format::{pack_plain, FormatError, FormatKind, GroupSize, Matrix, QuantizedMatrix};

/// Errors of the quantizers.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// An input the algorithm cannot take (shape, value, parameter), with what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A numerical failure the algorithm could not recover from.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// The packed result broke its layout (a bug, reported rather than hidden).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A result that would hold a non-finite value from finite input.
    #[error(
        "the quantized weight at row {row}, column {col} would be {value} (input weight {input:e}): \
         {format} cannot hold this tensor's magnitudes"
    )]
    NonFinite {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// The non-finite value.
        value: f32,
        /// The input weight there.
        input: f32,
        /// The format's label.
        format: String,
    },
}

/// A quantization strategy, by its command-line name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheme {
    /// No quantization: f32 (`none`), or plain f16 / bf16.
    None(FormatKind),
    /// int8 symmetric, round to nearest (q8).
    Int8,
    /// int4 asymmetric min/max, round to nearest (q4).
    Int4,
    /// int4 with a per-group clipping search (q4).
    Int4Clip,
    /// NF4 codebook (lut4).
    Nf4,
    /// Learned Lloyd-Max 16-level codebook (lut4).
    KMeans4,
    /// Outlier-aware int4 (q4 + sparse outliers).
    EasyQuant4,
    /// GPTQ int4 (q4), needs calibration activations.
    GptqInt4,
    /// AWQ int4 (q4 + activation scale), needs calibration activations.
    AwqInt4,
    /// SmoothQuant W8A8: q8 weights (+ activation scale) times activations
    /// rounded to int8, needs calibration activations.
    W8A8,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Scheme; 12] = [
        Scheme::None(FormatKind::F32),
        Scheme::None(FormatKind::F16),
        Scheme::None(FormatKind::Bf16),
        Scheme::Int8,
        Scheme::Int4,
        Scheme::Int4Clip,
        Scheme::Nf4,
        Scheme::KMeans4,
        Scheme::EasyQuant4,
        Scheme::GptqInt4,
        Scheme::AwqInt4,
        Scheme::W8A8,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::None(FormatKind::F16) => "f16",
            Scheme::None(FormatKind::Bf16) => "bf16",
            Scheme::None(_) => "none",
            Scheme::Int8 => "int8",
            Scheme::Int4 => "int4",
            Scheme::Int4Clip => "int4-clip",
            Scheme::Nf4 => "nf4",
            Scheme::KMeans4 => "kmeans4",
            Scheme::EasyQuant4 => "easyquant4",
            Scheme::GptqInt4 => "gptq-int4",
            Scheme::AwqInt4 => "awq-int4",
            Scheme::W8A8 => "w8a8",
        }
    }

    /// The dense format the scheme stores, and whether it adds f16 outliers.
    pub fn storage(self) -> (FormatKind, bool) {
        match self {
            Scheme::None(kind) => (kind, false),
            Scheme::Int8 | Scheme::W8A8 => (FormatKind::Q8, false),
            Scheme::Int4 | Scheme::Int4Clip | Scheme::GptqInt4 | Scheme::AwqInt4 => {
                (FormatKind::Q4, false)
            }
            Scheme::Nf4 | Scheme::KMeans4 => (FormatKind::Lut4, false),
            Scheme::EasyQuant4 => (FormatKind::Q4, true),
        }
    }

    /// Whether the scheme needs calibration activations.
    pub fn needs_calibration(self) -> bool {
        matches!(self, Scheme::GptqInt4 | Scheme::AwqInt4 | Scheme::W8A8)
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scheme {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        if s == "f32" {
            return Ok(Scheme::None(FormatKind::F32));
        }
        Scheme::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scheme::ALL.iter().map(|k| k.name()).collect();
                QuantError::Invalid(format!(
                    "unknown scheme '{s}' (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

/// Settings shared by the data-free schemes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantConfig {
    /// The strategy.
    pub scheme: Scheme,
    /// Scale group size (ignored by plain formats).
    pub group: GroupSize,
    /// Seed for randomized steps (k-means++).
    pub seed: u64,
    /// Outlier threshold in standard deviations (EasyQuant).
    pub outlier_threshold: f32,
}

impl QuantConfig {
    /// Defaults: group 128, seed 42, outlier threshold 3σ.
    pub fn new(scheme: Scheme) -> Self {
        QuantConfig {
            scheme,
            group: GroupSize::Cols(128),
            seed: 42,
            outlier_threshold: 3.0,
        }
    }
}

/// Checks that every weight is finite, naming the first that is not.
pub fn check_finite(w: &Matrix) -> Result<(), QuantError> {
    match w.first_non_finite() {
        None => Ok(()),
        Some((r, c, v)) => Err(QuantError::Invalid(format!(
            "weight at row {r}, column {c} is {v}: weights must be finite"
        ))),
    }
}

/// Refuses weights the scheme's storage cannot hold (see [`crate::format::limits`]).
pub fn check_range(w: &Matrix, scheme: Scheme, group: GroupSize) -> Result<(), QuantError> {
    let (kind, outliers) = scheme.storage();
    crate::format::limits::check_representable(w, kind, group, outliers)?;
    Ok(())
}

/// Checks every effective weight of a result is finite (the input `w` was):
/// the invariant every quantizer keeps, checked where every result passes.
pub fn check_output(w: &Matrix, q: &QuantizedMatrix) -> Result<(), QuantError> {
    use rayon::prelude::*;
    let bad = (0..q.rows())
        .into_par_iter()
        .map_init(
            || vec![0.0f32; q.cols()],
            |buf, r| {
                q.dequantize_row(r, buf);
                buf.iter()
                    .position(|v| !v.is_finite())
                    .map(|c| (r, c, buf[c]))
            },
        )
        .find_first(|x| x.is_some())
        .flatten();
    match bad {
        None => Ok(()),
        Some((row, col, value)) => Err(QuantError::NonFinite {
            row,
            col,
            value,
            input: w.row(row)[col],
            format: q.label(),
        }),
    }
}

/// Runs a data-free scheme. GPTQ and AWQ need activations: use their modules.
pub fn quantize(w: &Matrix, cfg: &QuantConfig) -> Result<QuantizedMatrix, QuantError> {
    check_finite(w)?;
    let group = cfg.group.validate()?;
    check_range(w, cfg.scheme, group)?;
    let q = quantize_unchecked(w, cfg, group)?;
    check_output(w, &q)?;
    Ok(q)
}

fn quantize_unchecked(
    w: &Matrix,
    cfg: &QuantConfig,
    group: GroupSize,
) -> Result<QuantizedMatrix, QuantError> {
    match cfg.scheme {
        Scheme::None(kind) => Ok(pack_plain(w, kind)?),
        Scheme::Int8 => rtn::int8(w, group),
        Scheme::Int4 => rtn::int4(w, group),
        Scheme::Int4Clip => clip::int4_clip(w, group, &clip::ClipSearch::default()),
        Scheme::Nf4 => codebook::nf4(w, group),
        Scheme::KMeans4 => codebook::kmeans4(
            w,
            group,
            &codebook::KMeansConfig {
                seed: cfg.seed,
                ..Default::default()
            },
        ),
        Scheme::EasyQuant4 => easyquant::easyquant4(
            w,
            group,
            &easyquant::EasyQuantConfig {
                threshold: cfg.outlier_threshold,
                ..Default::default()
            },
        ),
        Scheme::GptqInt4 | Scheme::AwqInt4 | Scheme::W8A8 => Err(QuantError::Invalid(format!(
            "{} needs calibration activations: use quantize_calibrated",
            cfg.scheme
        ))),
    }
}

/// What a calibrated run reports besides the matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalibratedNotes {
    /// Human-readable remarks (damping retries, chosen alpha, ...).
    pub notes: Vec<String>,
}

/// Runs any scheme; GPTQ and AWQ use `calib` (`n x cols` activations), the
/// data-free schemes ignore it. `progress(done, total)` reports long work.
pub fn quantize_calibrated(
    w: &Matrix,
    cfg: &QuantConfig,
    calib: &Matrix,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(QuantizedMatrix, CalibratedNotes), QuantError> {
    check_finite(w)?;
    let group = cfg.group.validate()?;
    if !cfg.scheme.needs_calibration() {
        return Ok((quantize(w, cfg)?, CalibratedNotes::default()));
    }
    check_range(w, cfg.scheme, group)?;
    // All-zero activations would make GPTQ zero every weight and AWQ divide
    // by nothing while reporting a perfect output error: refuse them.
    let energy: f64 = calib.data().iter().map(|&v| v as f64 * v as f64).sum();
    if energy == 0.0 {
        return Err(QuantError::Invalid(format!(
            "{}: the calibration activations ({}x{}) are all zero: they carry no information to fit to \
             (give activations recorded from the model, or a data-free scheme)",
            cfg.scheme,
            calib.rows(),
            calib.cols()
        )));
    }
    let (q, notes) = quantize_calibrated_unchecked(w, cfg, group, calib, progress)?;
    check_output(w, &q)?;
    Ok((q, notes))
}

fn quantize_calibrated_unchecked(
    w: &Matrix,
    cfg: &QuantConfig,
    group: GroupSize,
    calib: &Matrix,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(QuantizedMatrix, CalibratedNotes), QuantError> {
    match cfg.scheme {
        Scheme::GptqInt4 => {
            let g = gptq::GptqConfig {
                group,
                ..Default::default()
            };
            let r = gptq::gptq(w, calib, &g, progress)?;
            let mut notes = r.report.notes.clone();
            notes.push(format!(
                "GPTQ damping {:.3}% of mean diag, {} dead column(s)",
                r.report.percdamp_used * 100.0,
                r.report.dead_columns
            ));
            Ok((r.matrix, CalibratedNotes { notes }))
        }
        Scheme::AwqInt4 => {
            let a = awq::AwqConfig {
                group,
                ..Default::default()
            };
            let r = awq::awq(w, calib, &a, progress)?;
            let notes = vec![format!(
                "AWQ alpha {:.2}, mean clip ratio {:.3}",
                r.report.alpha, r.report.mean_clip_ratio
            )];
            Ok((r.matrix, CalibratedNotes { notes }))
        }
        Scheme::W8A8 => {
            let c = smooth::SmoothConfig {
                group,
                ..Default::default()
            };
            let r = smooth::smooth_w8a8(w, calib, &c, progress)?;
            let notes = vec![match r.report.alpha {
                Some(a) => format!(
                    "SmoothQuant alpha {a:.1}, layer error {:.2e} (unsmoothed {:.2e}, f32 activations {:.2e})",
                    r.report.final_error, r.report.plain_error, r.report.weight_only_error
                ),
                None => format!(
                    "SmoothQuant: no smoothing did best, layer error {:.2e} (f32 activations {:.2e})",
                    r.report.final_error, r.report.weight_only_error
                ),
            }];
            Ok((r.matrix, CalibratedNotes { notes }))
        }
        _ => Ok((quantize(w, cfg)?, CalibratedNotes::default())),
    }
}

/// Whether every weight of `q` is zero while `w` has a non-zero one (the
/// tensor is too small for the format's f16 scales): worth a warning.
pub fn all_rounded_to_zero(w: &Matrix, q: &QuantizedMatrix) -> bool {
    crate::format::limits::all_rounded_to_zero(w, &q.dequantize())
}

/// Output NMSE of a layer on activations `x` (`n x cols`):
/// `‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖²` with `Ŵ` the effective weights of `q`.
/// Accumulates in f64.
pub fn output_nmse(w: &Matrix, q: &QuantizedMatrix, x: &Matrix) -> Result<f64, QuantError> {
    use rayon::prelude::*;
    if x.cols() != w.cols() || q.cols() != w.cols() || q.rows() != w.rows() {
        return Err(QuantError::Invalid(format!(
            "output NMSE: activations are {} wide, the layer is {}x{} and the quantized layer {}x{}",
            x.cols(),
            w.rows(),
            w.cols(),
            q.rows(),
            q.cols()
        )));
    }
    let deq = q.dequantize();
    // A W8A8 matrix multiplies `R(x ∘ act_scale)` by its dense part, which is
    // `x̃ · Ŵᵀ` with `x̃ = R(x ∘ act_scale) / act_scale`.
    let xq: Option<Vec<f32>> = q.int8_activations().then(|| {
        let cols = x.cols();
        let ones = vec![1.0f32; cols];
        let a = q.act_scale().unwrap_or(&ones);
        let scaled: Vec<f32> = x
            .data()
            .chunks(cols)
            .flat_map(|r| r.iter().zip(a).map(|(v, s)| v * s))
            .collect();
        let mut r = Vec::new();
        crate::backend::cpu::int8_rounded_into(&scaled, cols, &mut r);
        r.chunks_mut(cols).for_each(|row| {
            row.iter_mut().zip(a).for_each(|(v, s)| *v /= s);
        });
        r
    });
    let (se, ss) = (0..w.rows())
        .into_par_iter()
        .map(|r| {
            let (a, b) = (w.row(r), deq.row(r));
            let (mut se, mut ss) = (0.0f64, 0.0f64);
            for n in 0..x.rows() {
                let xr = x.row(n);
                let xb = xq.as_ref().map_or(xr, |v| &v[n * xr.len()..][..xr.len()]);
                let (mut ya, mut yb) = (0.0f64, 0.0f64);
                for c in 0..xr.len() {
                    ya += a[c] as f64 * xr[c] as f64;
                    yb += b[c] as f64 * xb[c] as f64;
                }
                se += (ya - yb) * (ya - yb);
                ss += ya * ya;
            }
            (se, ss)
        })
        .reduce(|| (0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1));
    if ss == 0.0 {
        // The layer's reference output is zero on these inputs: an error
        // ratio would be 0/0, and reporting 0 would claim a perfect result.
        return Err(QuantError::Invalid(format!(
            "output NMSE is undefined: the layer's output on the {} held-out activation rows is all zero",
            x.rows()
        )));
    }
    Ok(se / ss)
}
