//! Calibration activations: the inputs `X` of a layer `Y = X · Wᵀ` that GPTQ
//! and AWQ fit the quantized weights to.
//!
//! Two sources:
//! - [`ActivationModel`]: a seeded generator of transformer-like activations
//!   (channels correlated through a random low-rank mixing plus per-channel
//!   noise, per-token magnitude variation, a per-channel offset, and a few
//!   persistent outlier channels 10-100× larger than the rest, as observed in
//!   LLM activations by Dettmers et al. 2022, "LLM.int8()");
//! - [`load_safetensors`]: one tensor of inputs per weight name in a
//!   safetensors file (`--calib FILE`).
//!
//! Accuracy is always reported on held-out inputs: [`CalibrationSet`] keeps a
//! calibration part (what the quantizer sees) and an evaluation part (what the
//! error is measured on), drawn from the same distribution but disjoint.

use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use safetensors::{Dtype, SafeTensors};

use super::QuantError;
use crate::format::Matrix;

/// Shape of the built-in activation distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationSpec {
    /// Input features (the layer's `cols`).
    pub cols: usize,
    /// Rank of the shared (correlated) component.
    pub rank: usize,
    /// Number of outlier channels.
    pub outliers: usize,
    /// Smallest and largest outlier gain (drawn log-uniformly).
    pub outlier_gain: (f32, f32),
    /// Seed of the distribution itself (mixing, gains, which channels are outliers).
    pub seed: u64,
}

impl ActivationSpec {
    /// Defaults for `cols` input features: rank `clamp(cols/16, 4, 64)`,
    /// `max(2, cols/200)` outlier channels with gains in 10..100.
    pub fn new(cols: usize, seed: u64) -> Self {
        ActivationSpec {
            cols,
            rank: (cols / 16).clamp(4, 64),
            outliers: (cols / 200).max(2).min(cols),
            outlier_gain: (10.0, 100.0),
            seed,
        }
    }
}

/// A fixed transformer-like activation distribution that can be sampled
/// repeatedly (calibration and evaluation sets share it).
#[derive(Debug, Clone)]
pub struct ActivationModel {
    cols: usize,
    rank: usize,
    /// `rank x cols`, row-major.
    mixing: Vec<f32>,
    /// Per-channel independent noise level.
    noise: Vec<f32>,
    /// Per-channel gain (large on outlier channels).
    gain: Vec<f32>,
    /// Per-channel offset (before the gain).
    offset: Vec<f32>,
    outliers: Vec<usize>,
}

impl ActivationModel {
    /// The default distribution for `cols` input features.
    pub fn new(cols: usize, seed: u64) -> Result<Self, QuantError> {
        Self::from_spec(&ActivationSpec::new(cols, seed))
    }

    /// A distribution with explicit parameters.
    pub fn from_spec(spec: &ActivationSpec) -> Result<Self, QuantError> {
        let cols = spec.cols;
        if cols == 0 {
            return Err(QuantError::Invalid(
                "activation generator: cols must be positive".into(),
            ));
        }
        if spec.rank == 0 {
            return Err(QuantError::Invalid(
                "activation generator: rank must be positive".into(),
            ));
        }
        if spec.outliers > cols {
            return Err(QuantError::Invalid(format!(
                "activation generator: {} outlier channels but only {cols} channels",
                spec.outliers
            )));
        }
        let (glo, ghi) = spec.outlier_gain;
        if !(glo.is_finite() && ghi.is_finite() && glo > 0.0 && ghi >= glo) {
            return Err(QuantError::Invalid(format!(
                "activation generator: outlier gain range ({glo}, {ghi}) must be positive and ordered"
            )));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
        let inv_sqrt_rank = 1.0 / (spec.rank as f32).sqrt();
        let mixing = (0..spec.rank * cols)
            .map(|_| rng.sample::<f32, _>(StandardNormal) * inv_sqrt_rank)
            .collect();
        // Log-normal spread of per-channel magnitudes, as in real hidden states.
        let noise = (0..cols)
            .map(|_| 0.5 * (0.5 * rng.sample::<f32, _>(StandardNormal)).exp())
            .collect();
        let mut gain: Vec<f32> = (0..cols)
            .map(|_| (0.3 * rng.sample::<f32, _>(StandardNormal)).exp())
            .collect();
        let offset = (0..cols)
            .map(|_| 0.2 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        // Distinct outlier channels by a partial Fisher-Yates shuffle.
        let mut idx: Vec<usize> = (0..cols).collect();
        for i in 0..spec.outliers {
            let j = rng.random_range(i..cols);
            idx.swap(i, j);
        }
        let mut outliers = idx[..spec.outliers].to_vec();
        outliers.sort_unstable();
        let (llo, lhi) = (glo.ln(), ghi.ln());
        for &c in &outliers {
            gain[c] = (llo + (lhi - llo) * rng.random::<f32>()).exp();
        }
        Ok(ActivationModel {
            cols,
            rank: spec.rank,
            mixing,
            noise,
            gain,
            offset,
            outliers,
        })
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The outlier channels, ascending.
    pub fn outlier_channels(&self) -> &[usize] {
        &self.outliers
    }

    /// Draws `rows` activation vectors (`rows x cols`) with the sample seed `seed`.
    ///
    /// `x[t][c] = gain[c] · (m_t · (Σ_k z[t][k] · A[k][c] + noise[c] · ε[t][c]) + offset[c])`
    /// with standard-normal `z`, `ε` and a log-normal per-token magnitude `m_t`.
    pub fn sample(&self, rows: usize, seed: u64) -> Result<Matrix, QuantError> {
        if rows == 0 {
            return Err(QuantError::Invalid(
                "activation generator: rows must be positive".into(),
            ));
        }
        let (cols, rank) = (self.cols, self.rank);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
        let z: Vec<f32> = (0..rows * rank)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let mut x = vec![0.0f32; rows * cols];
        matmul(
            MatMut::from_row_major_slice_mut(&mut x, rows, cols),
            Accum::Replace,
            MatRef::from_row_major_slice(&z, rows, rank),
            MatRef::from_row_major_slice(&self.mixing, rank, cols),
            1.0f32,
            Par::rayon(0),
        );
        for row in x.chunks_mut(cols) {
            let m = (0.25 * rng.sample::<f32, _>(StandardNormal)).exp();
            for (c, v) in row.iter_mut().enumerate() {
                let e: f32 = rng.sample(StandardNormal);
                *v = self.gain[c] * (m * (*v + self.noise[c] * e) + self.offset[c]);
            }
        }
        Ok(Matrix::from_vec(rows, cols, x)?)
    }
}

/// Where calibration activations came from (for the CLI to state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalibSource {
    /// The built-in generator with this distribution seed.
    Synthetic {
        /// Distribution seed.
        seed: u64,
    },
    /// A tensor of a safetensors file.
    File {
        /// The file.
        path: String,
        /// The tensor name.
        tensor: String,
    },
}

impl std::fmt::Display for CalibSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibSource::Synthetic { seed } => write!(
                f,
                "built-in synthetic transformer-like activations (seed {seed})"
            ),
            CalibSource::File { path, tensor } => write!(f, "tensor '{tensor}' of {path}"),
        }
    }
}

/// Calibration inputs and disjoint held-out evaluation inputs of one layer.
#[derive(Debug, Clone)]
pub struct CalibrationSet {
    /// What the quantizer fits to.
    pub calib: Matrix,
    /// What accuracy is reported on (never seen by the quantizer).
    pub eval: Matrix,
    /// Where the activations came from.
    pub source: CalibSource,
}

impl CalibrationSet {
    /// Built-in activations for a layer with `cols` inputs: `calib_rows`
    /// calibration and `eval_rows` evaluation vectors from one distribution.
    pub fn synthetic(
        cols: usize,
        calib_rows: usize,
        eval_rows: usize,
        seed: u64,
    ) -> Result<Self, QuantError> {
        let model = ActivationModel::new(cols, seed)?;
        Ok(CalibrationSet {
            calib: model.sample(calib_rows, seed.wrapping_mul(2).wrapping_add(1))?,
            eval: model.sample(eval_rows, seed.wrapping_mul(2).wrapping_add(2))?,
            source: CalibSource::Synthetic { seed },
        })
    }

    /// Splits loaded activations: the last `eval_fraction` of the rows (at
    /// least one) are held out for evaluation, the rest calibrate.
    pub fn split(all: Matrix, eval_fraction: f64, source: CalibSource) -> Result<Self, QuantError> {
        let (rows, cols) = (all.rows(), all.cols());
        if !(eval_fraction > 0.0 && eval_fraction < 1.0) {
            return Err(QuantError::Invalid(format!(
                "evaluation fraction {eval_fraction} must be strictly between 0 and 1"
            )));
        }
        if rows < 2 {
            return Err(QuantError::Invalid(format!(
                "{source} has {rows} row(s); at least 2 are needed to hold some out for evaluation"
            )));
        }
        let eval_rows = ((rows as f64 * eval_fraction).round() as usize).clamp(1, rows - 1);
        let cut = (rows - eval_rows) * cols;
        let data = all.into_vec();
        Ok(CalibrationSet {
            calib: Matrix::from_vec(rows - eval_rows, cols, data[..cut].to_vec())?,
            eval: Matrix::from_vec(eval_rows, cols, data[cut..].to_vec())?,
            source,
        })
    }
}

/// Checks that calibration activations fit a layer with `layer_cols` inputs
/// and are all finite.
pub fn check_calib(calib: &Matrix, layer_cols: usize, what: &str) -> Result<(), QuantError> {
    if calib.cols() != layer_cols {
        return Err(QuantError::Invalid(format!(
            "{what}: calibration activations are {} wide but the layer has {layer_cols} input columns; \
             the activations must have one column per weight column",
            calib.cols()
        )));
    }
    if let Some((r, c, v)) = calib.first_non_finite() {
        return Err(QuantError::Invalid(format!(
            "{what}: calibration activations hold {v} at row {r}, column {c}"
        )));
    }
    Ok(())
}

/// Reads the activations for weight `name` from the safetensors file `path`:
/// a float tensor (f32, f16, bf16 or f64) of shape `[n, layer_cols]` (leading
/// dimensions such as `[batch, seq, layer_cols]` are flattened into rows).
pub fn load_safetensors(path: &Path, name: &str, layer_cols: usize) -> Result<Matrix, QuantError> {
    // A regular file only (a FIFO would block, /dev/zero never end), mapped.
    let bytes = crate::input::map_regular(path)
        .map_err(|e| QuantError::Invalid(format!("calibration file: {e}")))?;
    load_safetensors_bytes(&bytes, &path.display().to_string(), name, layer_cols)
}

/// [`load_safetensors`] on the bytes of a file; `file` names it in errors.
pub fn load_safetensors_bytes(
    bytes: &[u8],
    file: &str,
    name: &str,
    layer_cols: usize,
) -> Result<Matrix, QuantError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| QuantError::Invalid(format!("{file} is not a valid safetensors file: {e}")))?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        let shown: Vec<&str> = names.iter().take(8).copied().collect();
        let more = if names.len() > shown.len() {
            format!(" and {} more", names.len() - shown.len())
        } else {
            String::new()
        };
        QuantError::Invalid(format!(
            "{file} has no calibration tensor named '{name}' (it holds: {}{more})",
            if shown.is_empty() {
                "nothing".to_string()
            } else {
                shown.join(", ")
            }
        ))
    })?;
    let shape = view.shape();
    if shape.len() < 2 {
        return Err(QuantError::Invalid(format!(
            "calibration tensor '{name}' in {file} has shape {shape:?}; expected [rows, {layer_cols}]"
        )));
    }
    let width = shape[shape.len() - 1];
    let rows: usize = shape[..shape.len() - 1].iter().product();
    if width != layer_cols {
        return Err(QuantError::Invalid(format!(
            "calibration tensor '{name}' in {file} is {width} wide (shape {shape:?}) but the layer has \
             {layer_cols} input columns"
        )));
    }
    if rows == 0 {
        return Err(QuantError::Invalid(format!(
            "calibration tensor '{name}' in {file} has no rows (shape {shape:?})"
        )));
    }
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(QuantError::Invalid(format!(
                "calibration tensor '{name}' in {file} has dtype {other:?}; expected a float type \
                 (F32, F16, BF16 or F64)"
            )))
        }
    };
    let m = Matrix::from_vec(rows, width, data)?;
    if let Some((r, c, v)) = m.first_non_finite() {
        return Err(QuantError::Invalid(format!(
            "calibration tensor '{name}' in {file} holds {v} at row {r}, column {c}"
        )));
    }
    Ok(m)
}
