//! Packed weight formats: the contract between quantizers and backends.
//!
//! Every format here has one byte layout, documented bit by bit in
//! `docs/FORMATS.md`, and identical on every backend: the CPU, WGSL and CUDA
//! kernels read exactly these bytes. Quantizers (`crate::quant`) produce
//! [`QuantizedMatrix`] values; backends (`crate::backend`) consume them.
//!
//! A matrix `W` has `rows` output features and `cols` input features and is used
//! as `Y = X · Wᵀ`. Rows are stored one after another; each row is padded to a
//! multiple of [`ROW_ALIGN_BYTES`] so that kernels may issue 16-byte loads.
//! Padding is zero and readers never use it.

mod dense;
pub mod limits;
mod lut4;
mod outliers;
mod q4;
mod q8;

pub use dense::Matrix;
pub use lut4::{Lut4, NF4_CODEBOOK};
pub use outliers::Outliers;
pub use q4::{min_max, q4_code, q4_params, INV_15, Q4};
pub use q8::{q8_code, q8_scale, INV_127, Q8};

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// Every packed row starts on a multiple of this many bytes.
pub const ROW_ALIGN_BYTES: usize = 16;

/// Errors raised when a packed matrix is built from inconsistent parts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    /// A matrix with zero rows or columns.
    #[error("empty matrix: {rows}x{cols}")]
    Empty {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
    },
    /// The group size is not allowed.
    #[error(
        "invalid group size {0}: use a positive multiple of 32 (32, 64, 128, ...) or the whole row"
    )]
    BadGroup(usize),
    /// A part of the packed matrix has the wrong length.
    #[error("{part} has {got} elements, expected {expected} for a {rows}x{cols} {format} matrix")]
    PartLength {
        /// Which part (codes, scales, ...).
        part: &'static str,
        /// Elements found.
        got: usize,
        /// Elements the layout needs.
        expected: usize,
        /// Matrix rows.
        rows: usize,
        /// Matrix columns.
        cols: usize,
        /// Format name.
        format: &'static str,
    },
    /// A weight the format cannot store (beyond the range of its scales).
    #[error("row {row}, columns {col_start}..{col_end}: {detail}")]
    Unrepresentable {
        /// Row of the weight.
        row: usize,
        /// First column of the group (or the weight).
        col_start: usize,
        /// One past the last column of the group.
        col_end: usize,
        /// The value and the largest one the format holds.
        detail: String,
    },
    /// A value that the layout forbids (zero point > 15, outlier column out of range, ...).
    #[error("invalid {part}: {detail}")]
    BadValue {
        /// Which part.
        part: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// How many consecutive weights of a row share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupSize {
    /// A fixed number of columns: a positive multiple of 32.
    Cols(usize),
    /// One group spanning the whole row.
    Row,
}

impl GroupSize {
    /// Validates and builds a fixed group size.
    pub fn cols(n: usize) -> Result<Self, FormatError> {
        if n == 0 || !n.is_multiple_of(32) {
            return Err(FormatError::BadGroup(n));
        }
        Ok(GroupSize::Cols(n))
    }

    /// Checks an already-built value (a `Cols` built directly may be invalid).
    pub fn validate(self) -> Result<Self, FormatError> {
        match self {
            GroupSize::Cols(n) => Self::cols(n),
            GroupSize::Row => Ok(self),
        }
    }

    /// Number of columns in one group for rows of `cols` columns.
    pub fn len(self, cols: usize) -> usize {
        match self {
            GroupSize::Cols(n) => n,
            GroupSize::Row => cols,
        }
    }

    /// Number of groups in one row of `cols` columns.
    pub fn groups_per_row(self, cols: usize) -> usize {
        cols.div_ceil(self.len(cols).max(1))
    }

    /// `"32"`, `"128"` or `"row"`.
    pub fn label(self) -> String {
        match self {
            GroupSize::Cols(n) => n.to_string(),
            GroupSize::Row => "row".to_string(),
        }
    }
}

impl std::str::FromStr for GroupSize {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("row") {
            return Ok(GroupSize::Row);
        }
        let n: usize = s.parse().map_err(|_| FormatError::BadValue {
            part: "group size",
            detail: format!("'{s}' is neither a number nor 'row'"),
        })?;
        GroupSize::cols(n)
    }
}

impl std::fmt::Display for GroupSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// The dense part's storage kind. The numeric value is the `format` field of
/// the kernel parameter block shared by WGSL and CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum FormatKind {
    /// Plain f32.
    F32 = 0,
    /// Plain IEEE half.
    F16 = 1,
    /// Plain bfloat16.
    Bf16 = 2,
    /// int8 symmetric, f16 scale per group.
    Q8 = 3,
    /// int4 asymmetric, f16 scale and u8 zero point per group.
    Q4 = 4,
    /// 4-bit index into a 16-entry f32 codebook, f16 absmax scale per group.
    Lut4 = 5,
}

impl FormatKind {
    /// All kinds, in id order.
    pub const ALL: [FormatKind; 6] = [
        FormatKind::F32,
        FormatKind::F16,
        FormatKind::Bf16,
        FormatKind::Q8,
        FormatKind::Q4,
        FormatKind::Lut4,
    ];

    /// Lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            FormatKind::F32 => "f32",
            FormatKind::F16 => "f16",
            FormatKind::Bf16 => "bf16",
            FormatKind::Q8 => "q8",
            FormatKind::Q4 => "q4",
            FormatKind::Lut4 => "lut4",
        }
    }

    /// Bytes of one packed row of `cols` weights (codes or values only), padded
    /// to [`ROW_ALIGN_BYTES`].
    pub fn row_stride_bytes(self, cols: usize) -> usize {
        let raw = match self {
            FormatKind::F32 => cols * 4,
            FormatKind::F16 | FormatKind::Bf16 => cols * 2,
            FormatKind::Q8 => cols,
            FormatKind::Q4 | FormatKind::Lut4 => cols.div_ceil(2),
        };
        raw.div_ceil(ROW_ALIGN_BYTES) * ROW_ALIGN_BYTES
    }

    /// Whether the format has per-group scales.
    pub fn is_grouped(self) -> bool {
        matches!(self, FormatKind::Q8 | FormatKind::Q4 | FormatKind::Lut4)
    }
}

impl std::str::FromStr for FormatKind {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FormatKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| FormatError::BadValue {
                part: "format",
                detail: format!("unknown format '{s}' (expected f32, f16, bf16, q8, q4 or lut4)"),
            })
    }
}

impl std::fmt::Display for FormatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The dense part of a packed matrix.
#[derive(Debug, Clone, PartialEq)]
pub enum Packed {
    /// f32 values, row stride `round_up(cols, 4)`.
    F32(Vec<f32>),
    /// f16 values, row stride `round_up(cols, 8)`.
    F16(Vec<f16>),
    /// bf16 values, row stride `round_up(cols, 8)`.
    Bf16(Vec<bf16>),
    /// int8 symmetric.
    Q8(Q8),
    /// int4 asymmetric.
    Q4(Q4),
    /// 4-bit codebook.
    Lut4(Lut4),
}

impl Packed {
    /// The storage kind.
    pub fn kind(&self) -> FormatKind {
        match self {
            Packed::F32(_) => FormatKind::F32,
            Packed::F16(_) => FormatKind::F16,
            Packed::Bf16(_) => FormatKind::Bf16,
            Packed::Q8(_) => FormatKind::Q8,
            Packed::Q4(_) => FormatKind::Q4,
            Packed::Lut4(_) => FormatKind::Lut4,
        }
    }
}

/// Exact bytes of every part of a packed matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageBytes {
    /// Codes or plain values, row padding included.
    pub codes: usize,
    /// Per-group scales.
    pub scales: usize,
    /// Per-group zero points.
    pub zeros: usize,
    /// Codebook.
    pub codebook: usize,
    /// Sparse outliers (row pointers, column indices, values).
    pub outliers: usize,
    /// Per-input-channel activation scale (AWQ).
    pub act_scale: usize,
}

impl StorageBytes {
    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.codes + self.scales + self.zeros + self.codebook + self.outliers + self.act_scale
    }
}

/// A quantized (or plain) weight matrix in one of the packed layouts, with its
/// optional sparse outliers and optional per-input-channel activation scale.
///
/// Meaning: the *effective* weight is
/// `W[r][c] = (dense(r, c) + outlier(r, c)) * act_scale[c]`, and every backend
/// computes `Y = X · Wᵀ` with that `W` — for a W8A8 matrix
/// ([`QuantizedMatrix::int8_activations`]) with `X ∘ act_scale` rounded to
/// int8 first.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    rows: usize,
    cols: usize,
    group: GroupSize,
    packed: Packed,
    outliers: Option<Outliers>,
    act_scale: Option<Vec<f32>>,
    int8_activations: bool,
}

pub(crate) fn check_len(
    part: &'static str,
    got: usize,
    expected: usize,
    rows: usize,
    cols: usize,
    format: FormatKind,
) -> Result<(), FormatError> {
    if got != expected {
        return Err(FormatError::PartLength {
            part,
            got,
            expected,
            rows,
            cols,
            format: format.name(),
        });
    }
    Ok(())
}

impl QuantizedMatrix {
    /// Builds a matrix from its packed parts, checking every length and value
    /// against the layout of `docs/FORMATS.md`.
    pub fn new(
        rows: usize,
        cols: usize,
        group: GroupSize,
        packed: Packed,
    ) -> Result<Self, FormatError> {
        if rows == 0 || cols == 0 {
            return Err(FormatError::Empty { rows, cols });
        }
        let group = group.validate()?;
        let kind = packed.kind();
        // Shapes from files are untrusted: every size below must fit a usize.
        let too_large = || FormatError::BadValue {
            part: "shape",
            detail: format!("{rows}x{cols} is too large to address"),
        };
        let stride = cols
            .checked_mul(4)
            .and_then(|b| b.checked_add(ROW_ALIGN_BYTES))
            .map(|_| kind.row_stride_bytes(cols))
            .ok_or_else(too_large)?;
        rows.checked_mul(stride).ok_or_else(too_large)?;
        let groups = rows
            .checked_mul(group.groups_per_row(cols))
            .ok_or_else(too_large)?;
        match &packed {
            Packed::F32(v) => check_len("values", v.len(), rows * stride / 4, rows, cols, kind)?,
            Packed::F16(v) => check_len("values", v.len(), rows * stride / 2, rows, cols, kind)?,
            Packed::Bf16(v) => check_len("values", v.len(), rows * stride / 2, rows, cols, kind)?,
            Packed::Q8(q) => {
                check_len("codes", q.codes.len(), rows * stride, rows, cols, kind)?;
                check_len("scales", q.scales.len(), groups, rows, cols, kind)?;
            }
            Packed::Q4(q) => {
                check_len("codes", q.codes.len(), rows * stride / 4, rows, cols, kind)?;
                check_len("scales", q.scales.len(), groups, rows, cols, kind)?;
                check_len("zeros", q.zeros.len(), groups, rows, cols, kind)?;
                if let Some(z) = q.zeros.iter().find(|&&z| z > 15) {
                    return Err(FormatError::BadValue {
                        part: "zeros",
                        detail: format!("zero point {z} is outside 0..=15"),
                    });
                }
            }
            Packed::Lut4(q) => {
                check_len("codes", q.codes.len(), rows * stride / 4, rows, cols, kind)?;
                check_len("scales", q.scales.len(), groups, rows, cols, kind)?;
                if q.codebook.iter().any(|v| !v.is_finite()) {
                    return Err(FormatError::BadValue {
                        part: "codebook",
                        detail: "codebook has a non-finite entry".into(),
                    });
                }
            }
        }
        Ok(QuantizedMatrix {
            rows,
            cols,
            group,
            packed,
            outliers: None,
            act_scale: None,
            int8_activations: false,
        })
    }

    /// Adds sparse outliers (added to the dense part).
    pub fn with_outliers(mut self, outliers: Outliers) -> Result<Self, FormatError> {
        outliers.validate(self.rows, self.cols)?;
        self.outliers = Some(outliers);
        Ok(self)
    }

    /// Adds a per-input-channel activation scale (`cols` finite values).
    pub fn with_act_scale(mut self, act_scale: Vec<f32>) -> Result<Self, FormatError> {
        check_len(
            "act_scale",
            act_scale.len(),
            self.cols,
            self.rows,
            self.cols,
            self.kind(),
        )?;
        if act_scale.iter().any(|v| !v.is_finite()) {
            return Err(FormatError::BadValue {
                part: "act_scale",
                detail: "activation scale has a non-finite entry".into(),
            });
        }
        self.act_scale = Some(act_scale);
        Ok(self)
    }

    /// Marks the matrix W8A8 (q8 only): every product rounds the
    /// activations, after the activation scale, to int8 per block of 32
    /// columns (`x ≈ dx · xq`, `dx = absmax / 127`, half to even) and
    /// multiplies those by the weights: `Y = R(X ∘ act_scale) · Wᵀ`. The
    /// rounding is part of the arithmetic, like the scale: a backend
    /// without integer-activation kernels refuses the matrix rather than
    /// compute something else (see [`crate::quant::smooth`]).
    pub fn with_int8_activations(mut self) -> Result<Self, FormatError> {
        if self.kind() != FormatKind::Q8 {
            return Err(FormatError::BadValue {
                part: "int8_activations",
                detail: format!(
                    "int8 activations (W8A8) need q8 weights, not {}",
                    self.kind().name()
                ),
            });
        }
        self.int8_activations = true;
        Ok(self)
    }

    /// Whether products round the activations to int8 (W8A8, see
    /// [`with_int8_activations`](Self::with_int8_activations)).
    pub fn int8_activations(&self) -> bool {
        self.int8_activations
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Group size of the scales (meaningless for plain formats).
    pub fn group(&self) -> GroupSize {
        self.group
    }
    /// Columns per group.
    pub fn group_len(&self) -> usize {
        self.group.len(self.cols)
    }
    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.group.groups_per_row(self.cols)
    }
    /// The dense part.
    pub fn packed(&self) -> &Packed {
        &self.packed
    }
    /// The dense part's kind.
    pub fn kind(&self) -> FormatKind {
        self.packed.kind()
    }
    /// Sparse outliers, if any.
    pub fn outliers(&self) -> Option<&Outliers> {
        self.outliers.as_ref()
    }
    /// Per-input-channel activation scale, if any.
    pub fn act_scale(&self) -> Option<&[f32]> {
        self.act_scale.as_deref()
    }
    /// Row stride of the dense part in bytes.
    pub fn row_stride_bytes(&self) -> usize {
        self.kind().row_stride_bytes(self.cols)
    }

    /// A short label such as `q4 g128 +outliers` (`q4 per-row` for one
    /// group per row).
    pub fn label(&self) -> String {
        let mut s = self.kind().name().to_string();
        if self.kind().is_grouped() {
            match self.group {
                GroupSize::Cols(n) => s.push_str(&format!(" g{n}")),
                GroupSize::Row => s.push_str(" per-row"),
            }
        }
        if self.outliers.is_some() {
            s.push_str(" +outliers");
        }
        if self.act_scale.is_some() {
            s.push_str(" +act_scale");
        }
        if self.int8_activations {
            s.push_str(" +a8");
        }
        s
    }

    /// Exact storage bytes of every part.
    pub fn storage_bytes(&self) -> StorageBytes {
        let groups = self.rows * self.groups_per_row();
        let codes = self.rows * self.row_stride_bytes();
        let mut b = StorageBytes {
            codes,
            ..Default::default()
        };
        match &self.packed {
            Packed::F32(_) | Packed::F16(_) | Packed::Bf16(_) => {}
            Packed::Q8(_) => b.scales = groups * 2,
            Packed::Q4(_) => {
                b.scales = groups * 2;
                b.zeros = groups;
            }
            Packed::Lut4(_) => {
                b.scales = groups * 2;
                b.codebook = 16 * 4;
            }
        }
        if let Some(o) = &self.outliers {
            b.outliers = o.bytes();
        }
        if self.act_scale.is_some() {
            b.act_scale = self.cols * 4;
        }
        b
    }

    /// Storage bits per weight, everything included.
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bytes().total() as f64 * 8.0 / (self.rows * self.cols) as f64
    }

    /// Dequantizes one row into `out` (`cols` values) with the effective
    /// weights: dense part, plus outliers, times the activation scale.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let cols = self.cols;
        let out = &mut out[..cols];
        let stride = self.row_stride_bytes();
        let gpr = self.groups_per_row();
        let glen = self.group_len();
        match &self.packed {
            Packed::F32(v) => out.copy_from_slice(&v[row * stride / 4..][..cols]),
            Packed::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[row * stride / 2..][..cols]) {
                    *o = h.to_f32();
                }
            }
            Packed::Bf16(v) => {
                for (o, h) in out.iter_mut().zip(&v[row * stride / 2..][..cols]) {
                    *o = h.to_f32();
                }
            }
            Packed::Q8(q) => q.dequantize_row(row, cols, stride, gpr, glen, out),
            Packed::Q4(q) => q.dequantize_row(row, cols, stride, gpr, glen, out),
            Packed::Lut4(q) => q.dequantize_row(row, cols, stride, gpr, glen, out),
        }
        if let Some(o) = &self.outliers {
            o.add_row(row, out);
        }
        if let Some(a) = &self.act_scale {
            for (o, s) in out.iter_mut().zip(a) {
                *o *= s;
            }
        }
    }

    /// Dequantizes the whole matrix to row-major f32 (`rows x cols`, no padding).
    pub fn dequantize(&self) -> Matrix {
        let mut data = vec![0.0f32; self.rows * self.cols];
        for (r, out) in data.chunks_mut(self.cols).enumerate() {
            self.dequantize_row(r, out);
        }
        Matrix::from_vec(self.rows, self.cols, data).expect("shape matches by construction")
    }
}

/// Rounds `n` up to a multiple of `m`.
pub(crate) fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Packs a row-major `rows x cols` f32 matrix into a plain format.
pub fn pack_plain(m: &Matrix, kind: FormatKind) -> Result<QuantizedMatrix, FormatError> {
    let (rows, cols) = (m.rows(), m.cols());
    let packed = match kind {
        FormatKind::F32 => {
            let stride = round_up(cols, 4);
            let mut v = vec![0.0f32; rows * stride];
            for (dst, src) in v.chunks_mut(stride).zip(m.data().chunks(cols)) {
                dst[..cols].copy_from_slice(src);
            }
            Packed::F32(v)
        }
        FormatKind::F16 => {
            let stride = round_up(cols, 8);
            let mut v = vec![f16::ZERO; rows * stride];
            for (dst, src) in v.chunks_mut(stride).zip(m.data().chunks(cols)) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            }
            Packed::F16(v)
        }
        FormatKind::Bf16 => {
            let stride = round_up(cols, 8);
            let mut v = vec![bf16::ZERO; rows * stride];
            for (dst, src) in v.chunks_mut(stride).zip(m.data().chunks(cols)) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = bf16::from_f32(*s);
                }
            }
            Packed::Bf16(v)
        }
        other => {
            return Err(FormatError::BadValue {
                part: "format",
                detail: format!("{other} is not a plain format; use crate::quant"),
            })
        }
    };
    QuantizedMatrix::new(rows, cols, GroupSize::Row, packed)
}

/// Packs `m` as q8 with the canonical round-to-nearest rule of
/// `docs/FORMATS.md` (the rule device quantize kernels reproduce bit for bit).
pub fn pack_q8(m: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, FormatError> {
    use rayon::prelude::*;
    let group = group.validate()?;
    let (rows, cols) = (m.rows(), m.cols());
    let stride = FormatKind::Q8.row_stride_bytes(cols);
    let (glen, gpr) = (group.len(cols), group.groups_per_row(cols));
    let mut codes = vec![0i8; rows * stride];
    let mut scales = vec![f16::ZERO; rows * gpr];
    codes
        .par_chunks_mut(stride)
        .zip(scales.par_chunks_mut(gpr))
        .enumerate()
        .for_each(|(r, (c, s))| q8::pack_row_q8(m.row(r), glen, c, s));
    QuantizedMatrix::new(rows, cols, group, Packed::Q8(Q8 { scales, codes }))
}

/// Packs `m` as q4 with each group's range from min/max (widened to contain 0).
pub fn pack_q4(m: &Matrix, group: GroupSize) -> Result<QuantizedMatrix, FormatError> {
    pack_q4_with(m, group, &|_, _, v| q4::min_max(v))
}

/// Chooses a q4 group's `[lo, hi]` from `(row, group, values)`.
pub type RangeFn<'a> = dyn Fn(usize, usize, &[f32]) -> (f32, f32) + Sync + 'a;

/// Packs `m` as q4 with each group's `[lo, hi]` chosen by
/// `range(row, group, values)`; the range is widened to contain 0.
pub fn pack_q4_with(
    m: &Matrix,
    group: GroupSize,
    range: &RangeFn<'_>,
) -> Result<QuantizedMatrix, FormatError> {
    use rayon::prelude::*;
    let group = group.validate()?;
    let (rows, cols) = (m.rows(), m.cols());
    let words = FormatKind::Q4.row_stride_bytes(cols) / 4;
    let (glen, gpr) = (group.len(cols), group.groups_per_row(cols));
    let mut codes = vec![0u32; rows * words];
    let mut scales = vec![f16::ZERO; rows * gpr];
    let mut zeros = vec![0u8; rows * gpr];
    codes
        .par_chunks_mut(words)
        .zip(scales.par_chunks_mut(gpr))
        .zip(zeros.par_chunks_mut(gpr))
        .enumerate()
        .for_each(|(r, ((c, s), z))| {
            q4::pack_row_q4(m.row(r), glen, c, s, z, &mut |g, v| range(r, g, v))
        });
    QuantizedMatrix::new(
        rows,
        cols,
        group,
        Packed::Q4(Q4 {
            scales,
            zeros,
            codes,
        }),
    )
}

/// Index of the codebook entry nearest to `x` (ties go to the lower index).
/// `codebook` must be sorted ascending.
#[inline]
pub fn nearest_level(codebook: &[f32], x: f32) -> usize {
    // Binary search over midpoints: entry i wins when x <= mid(i, i+1).
    let (mut lo, mut hi) = (0usize, codebook.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x <= 0.5 * (codebook[mid] + codebook[mid + 1]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Packs `m` as lut4 with an ascending 16-entry `codebook` (values in [-1, 1]):
/// each group's scale is `f16(absmax)`, each code the nearest level of `x / scale`.
pub fn pack_lut4(
    m: &Matrix,
    group: GroupSize,
    codebook: [f32; 16],
) -> Result<QuantizedMatrix, FormatError> {
    use rayon::prelude::*;
    let group = group.validate()?;
    if codebook.windows(2).any(|w| w[0] > w[1]) || codebook.iter().any(|v| !v.is_finite()) {
        return Err(FormatError::BadValue {
            part: "codebook",
            detail: "codebook must be finite and sorted ascending".into(),
        });
    }
    let (rows, cols) = (m.rows(), m.cols());
    let words = FormatKind::Lut4.row_stride_bytes(cols) / 4;
    let (glen, gpr) = (group.len(cols), group.groups_per_row(cols));
    let mut codes = vec![0u32; rows * words];
    let mut scales = vec![f16::ZERO; rows * gpr];
    codes
        .par_chunks_mut(words)
        .zip(scales.par_chunks_mut(gpr))
        .enumerate()
        .for_each(|(r, (w, s))| {
            for (g, chunk) in m.row(r).chunks(glen).enumerate() {
                let absmax = chunk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                s[g] = f16::from_f32(absmax);
                let s32 = s[g].to_f32();
                let inv = if s32 == 0.0 { 0.0 } else { 1.0 / s32 };
                for (i, &x) in chunk.iter().enumerate() {
                    let c = g * glen + i;
                    let q = nearest_level(&codebook, x * inv) as u32;
                    w[c / 8] |= q << (4 * (c % 8));
                }
            }
        });
    QuantizedMatrix::new(
        rows,
        cols,
        group,
        Packed::Lut4(Lut4 {
            scales,
            codebook,
            codes,
        }),
    )
}
