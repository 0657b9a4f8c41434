//! What the GPU backends decide the same way: the steps of a matmul, the
//! padded activation layout their kernels read, the round-to-nearest
//! quantize parameters and how the kernels' outputs become a
//! [`QuantizedMatrix`] again.
// Only the GPU backends plan matmuls; a CPU-only build keeps the x stride.
#![cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]

use half::f16;

use super::params::{QuantizeParams, FLAG_OUTLIERS};
use super::{BackendError, BackendKind, MatmulParams, RtnSpec};
use crate::format::{FormatKind, GroupSize, Packed, QuantizedMatrix, Q4, Q8};

/// Batches below this run the GEMV kernels, from it on the GEMM kernels.
pub const GEMM_MIN_BATCH: usize = 8;

/// Row stride (floats) of X as the GPU GEMV / GEMM kernels read it: a
/// multiple of 32 so every row starts 128-byte aligned and vector loads
/// never straddle rows; the padding holds zeros.
pub fn x_stride(cols: usize) -> usize {
    cols.div_ceil(32) * 32
}

/// The dense kernel of a matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenseStep {
    /// `gemv_<format>`: batch below [`GEMM_MIN_BATCH`].
    Gemv,
    /// `quantize_input_q8` + `gemv_q8_dp4`: q8 GEMV with packed int8 dot
    /// products, where the device has them.
    GemvDp4,
    /// `gemm_<format>`.
    Gemm,
}

/// The kernels of `Y = X · Wᵀ`, in order: `scale_input` (activation scale,
/// W8A8 rounding), the dense kernel, `outliers_add` (sparse outliers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatmulPlan {
    /// Run `scale_input` first (into scratch, X is not changed).
    pub scale_input: bool,
    /// The dense kernel.
    pub dense: DenseStep,
    /// Run `outliers_add` last.
    pub outliers: bool,
}

impl MatmulPlan {
    /// The plan for a matrix with parameters `p` at `batch`; `dp4` says
    /// whether the device has packed int8 dot products.
    pub(crate) fn new(p: &MatmulParams, batch: usize, dp4: bool) -> MatmulPlan {
        let dense = if batch >= GEMM_MIN_BATCH {
            DenseStep::Gemm
        } else if dp4 && p.format == FormatKind::Q8 as u32 {
            DenseStep::GemvDp4
        } else {
            DenseStep::Gemv
        };
        MatmulPlan {
            scale_input: p.prepares_input(),
            dense,
            outliers: p.flags & FLAG_OUTLIERS != 0,
        }
    }
}

/// Shape facts of a device round-to-nearest quantization.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtnShape {
    /// The kernel parameters.
    pub params: QuantizeParams,
    /// The validated group size.
    pub group: GroupSize,
    /// Row stride of the codes in bytes.
    pub stride_bytes: usize,
    /// Number of groups (one scale, and for q4 one zero point, each).
    pub groups: usize,
}

/// Checks `spec` for a `rows x cols` matrix on `backend` and makes the
/// quantize kernel's parameters (32-bit indexing checked).
pub(crate) fn rtn_shape(
    backend: BackendKind,
    rows: usize,
    cols: usize,
    spec: RtnSpec,
) -> Result<RtnShape, BackendError> {
    if !matches!(spec.kind, FormatKind::Q8 | FormatKind::Q4) {
        return Err(BackendError::Unsupported {
            backend,
            what: format!("round-to-nearest quantization to {}", spec.kind),
        });
    }
    let group = spec.group.validate()?;
    let stride_bytes = spec.kind.row_stride_bytes(cols);
    let (glen, gpr) = (group.len(cols), group.groups_per_row(cols));
    let groups = rows.checked_mul(gpr);
    let u32_of = |v: Option<usize>| v.and_then(|v| u32::try_from(v).ok());
    let too_large = || {
        BackendError::Invalid(format!(
            "{rows}x{cols} is too large for the kernels' 32-bit indexing"
        ))
    };
    let elems = rows.checked_mul(cols);
    if u32_of(elems).is_none() || u32_of(groups).is_none() {
        return Err(too_large());
    }
    let params = QuantizeParams {
        rows: u32_of(Some(rows)).ok_or_else(too_large)?,
        cols: u32_of(Some(cols)).ok_or_else(too_large)?,
        format: spec.kind as u32,
        row_stride_words: u32_of(Some(stride_bytes / 4)).ok_or_else(too_large)?,
        group_len: u32_of(Some(glen)).ok_or_else(too_large)?,
        groups_per_row: u32_of(Some(gpr)).ok_or_else(too_large)?,
        _pad0: 0,
        _pad1: 0,
    };
    Ok(RtnShape {
        params,
        group,
        stride_bytes,
        groups: groups.ok_or_else(too_large)?,
    })
}

/// The quantized matrix made of what a q8 / q4 quantize kernel wrote: the
/// code bytes (rows of `stride_bytes`), the f16 scale bits and, for q4, the
/// zero points.
pub(crate) fn rtn_result(
    kind: FormatKind,
    rows: usize,
    cols: usize,
    group: GroupSize,
    code_bytes: &[u8],
    scale_bits: &[u16],
    zeros: Vec<u8>,
) -> Result<QuantizedMatrix, BackendError> {
    let scales: Vec<f16> = scale_bits.iter().map(|&b| f16::from_bits(b)).collect();
    let packed = match kind {
        FormatKind::Q8 => Packed::Q8(Q8 {
            scales,
            codes: code_bytes.iter().map(|&b| b as i8).collect(),
        }),
        _ => Packed::Q4(Q4 {
            scales,
            zeros,
            codes: bytemuck::pod_collect_to_vec(code_bytes),
        }),
    };
    Ok(QuantizedMatrix::new(rows, cols, group, packed)?)
}
