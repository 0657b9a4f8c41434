//! Round-to-nearest uniform quantization at any bit width 2..=8.
//!
//! The general quantizer behind the `int8` and `int4` schemes and the bit-width
//! studies: symmetric (absmax) or asymmetric (min/max with an integer zero
//! point), per tensor, per row or per group. At 8 bits symmetric and 4 bits
//! asymmetric the result converts to the kernel formats q8 and q4; other widths
//! stay unpacked (one code per byte) for studies.

use serde::{Deserialize, Serialize};

use super::QuantError;
use crate::format::{self, GroupSize, Matrix, QuantizedMatrix};

/// Symmetric (absmax, zero maps to code 0) or asymmetric (min/max, zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Symmetry {
    /// Levels `-qmax..=qmax` times the scale, `qmax = 2^(bits-1) - 1`.
    Symmetric,
    /// Levels `(0..2^bits) - zero` times the scale.
    Asymmetric,
}

/// Which weights share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per row.
    Row,
    /// One scale per `n` consecutive weights of a row (any positive `n`).
    Group(usize),
}

/// A uniform quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniformSpec {
    /// Bits per code, 2..=8.
    pub bits: u8,
    /// Symmetric or asymmetric.
    pub symmetry: Symmetry,
    /// Scale sharing.
    pub granularity: Granularity,
}

impl UniformSpec {
    /// Checks the bit width and group size.
    pub fn validate(&self) -> Result<(), QuantError> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::Invalid(format!(
                "bits must be in 2..=8, got {}",
                self.bits
            )));
        }
        if self.granularity == Granularity::Group(0) {
            return Err(QuantError::Invalid(
                "group size must be positive, got 0".into(),
            ));
        }
        Ok(())
    }
}

/// Unpacked result of [`quantize_uniform`]: one code per weight.
#[derive(Debug, Clone, PartialEq)]
pub struct UniformQuantized {
    /// The quantizer used.
    pub spec: UniformSpec,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Columns per scale group (whole row for `Row`, all for `Tensor`).
    pub group_len: usize,
    /// Codes, row-major: `0..2^bits` (asymmetric) or offset by `qmax` (symmetric).
    pub codes: Vec<u8>,
    /// Scale per group (row-major over rows × groups; one for `Tensor`).
    pub scales: Vec<f32>,
    /// Zero point per group (the code of 0.0).
    pub zeros: Vec<u8>,
}

impl UniformQuantized {
    fn group_index(&self, r: usize, c: usize) -> usize {
        match self.spec.granularity {
            Granularity::Tensor => 0,
            _ => r * self.cols.div_ceil(self.group_len) + c / self.group_len,
        }
    }

    /// The dequantized matrix.
    pub fn dequantize(&self) -> Matrix {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let g = self.group_index(r, c);
                let q = self.codes[r * self.cols + c] as f32 - self.zeros[g] as f32;
                out.push(q * self.scales[g]);
            }
        }
        Matrix::from_vec(self.rows, self.cols, out).expect("shape preserved")
    }

    /// Step (scale) of the group holding `(r, c)`.
    pub fn step(&self, r: usize, c: usize) -> f32 {
        self.scales[self.group_index(r, c)]
    }

    /// Storage bits per weight if codes were packed tightly and scales and
    /// zeros were stored as f16 and u8.
    pub fn bits_per_weight(&self) -> f64 {
        let n = (self.rows * self.cols) as f64;
        let extra = match self.spec.symmetry {
            Symmetry::Symmetric => 16.0,
            Symmetry::Asymmetric => 24.0,
        };
        self.spec.bits as f64 + self.scales.len() as f64 * extra / n
    }
}

/// Quantizes `w` with `spec`.
pub fn quantize_uniform(w: &Matrix, spec: UniformSpec) -> Result<UniformQuantized, QuantError> {
    spec.validate()?;
    let (rows, cols) = (w.rows(), w.cols());
    let group_len = match spec.granularity {
        Granularity::Tensor => rows * cols,
        Granularity::Row => cols,
        Granularity::Group(n) => n,
    };
    let levels = (1u32 << spec.bits) - 1; // highest code
    let params = |v: &mut dyn Iterator<Item = f32>| -> (f32, u8) {
        match spec.symmetry {
            Symmetry::Symmetric => {
                let qmax = (1u32 << (spec.bits - 1)) - 1;
                let amax = v.fold(0.0f32, |m, x| m.max(x.abs()));
                (amax / qmax as f32, qmax as u8)
            }
            Symmetry::Asymmetric => {
                let (lo, hi) = v.fold((0.0f32, 0.0f32), |(a, b), x| (a.min(x), b.max(x)));
                let s = (hi - lo) / levels as f32;
                let z = if s > 0.0 {
                    (-lo / s).round_ties_even().clamp(0.0, levels as f32)
                } else {
                    0.0
                };
                (s, z as u8)
            }
        }
    };
    let (mut scales, mut zeros) = (Vec::new(), Vec::new());
    match spec.granularity {
        Granularity::Tensor => {
            let (s, z) = params(&mut w.data().iter().copied());
            scales.push(s);
            zeros.push(z);
        }
        _ => {
            for r in 0..rows {
                for chunk in w.row(r).chunks(group_len) {
                    let (s, z) = params(&mut chunk.iter().copied());
                    scales.push(s);
                    zeros.push(z);
                }
            }
        }
    }
    let mut q = UniformQuantized {
        spec,
        rows,
        cols,
        group_len,
        codes: vec![0; rows * cols],
        scales,
        zeros,
    };
    let (lo_code, hi_code) = match spec.symmetry {
        Symmetry::Symmetric => (0.0, (levels - 1) as f32), // zero = qmax: codes 0..=2·qmax
        Symmetry::Asymmetric => (0.0, levels as f32),
    };
    for r in 0..rows {
        for c in 0..cols {
            let g = q.group_index(r, c);
            let (s, z) = (q.scales[g], q.zeros[g] as f32);
            let x = w.row(r)[c];
            let code = if s > 0.0 {
                ((x / s).round_ties_even() + z).clamp(lo_code, hi_code)
            } else {
                z
            };
            q.codes[r * cols + c] = code as u8;
        }
    }
    Ok(q)
}

/// int8 symmetric in the kernel format q8 (canonical packer).
pub fn int8(w: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, QuantError> {
    Ok(format::pack_q8(w, group)?)
}

/// int4 asymmetric min/max in the kernel format q4 (canonical packer).
pub fn int4(w: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, QuantError> {
    Ok(format::pack_q4(w, group)?)
}
