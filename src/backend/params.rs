//! Kernel parameter blocks shared by the WGSL shaders (`shaders/*.wgsl`, as a
//! uniform struct) and the CUDA kernels (`kernels/*.cu`, as a by-value struct
//! argument). One `#[repr(C)]` definition feeds both so the two cannot drift:
//! the WGSL and CUDA structs list the same fields in the same order.

use bytemuck::{Pod, Zeroable};

use crate::format::QuantizedMatrix;

/// `flags` bit: the matrix has sparse outliers (CSR buffers bound).
pub const FLAG_OUTLIERS: u32 = 1;
/// `flags` bit: the matrix has a per-input-channel activation scale.
pub const FLAG_ACT_SCALE: u32 = 2;
/// `flags` bit: W8A8, the input (after the activation scale) is rounded to
/// int8 per block of 32 columns before the product
/// ([`QuantizedMatrix::int8_activations`]).
pub const FLAG_INT8_ACT: u32 = 4;

/// Parameters of dequantize and matmul kernels (`Y = X · Wᵀ`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MatmulParams {
    /// Output features (rows of W).
    pub rows: u32,
    /// Input features (columns of W, columns of X).
    pub cols: u32,
    /// Rows of X and Y.
    pub batch: u32,
    /// `FormatKind as u32`.
    pub format: u32,
    /// Dense row stride in 32-bit words.
    pub row_stride_words: u32,
    /// Columns per group.
    pub group_len: u32,
    /// Groups per row.
    pub groups_per_row: u32,
    /// [`FLAG_OUTLIERS`] | [`FLAG_ACT_SCALE`] | [`FLAG_INT8_ACT`].
    pub flags: u32,
}

impl MatmulParams {
    /// Whether a matmul first runs `scale_input` (activation scale and / or
    /// int8 rounding) into scratch the size of X.
    pub fn prepares_input(&self) -> bool {
        self.flags & (FLAG_ACT_SCALE | FLAG_INT8_ACT) != 0
    }

    /// Parameters for `m` at `batch`.
    pub fn new(m: &QuantizedMatrix, batch: usize) -> Self {
        let mut flags = 0;
        if m.outliers().is_some() {
            flags |= FLAG_OUTLIERS;
        }
        if m.act_scale().is_some() {
            flags |= FLAG_ACT_SCALE;
        }
        if m.int8_activations() {
            flags |= FLAG_INT8_ACT;
        }
        MatmulParams {
            rows: m.rows() as u32,
            cols: m.cols() as u32,
            batch: batch as u32,
            format: m.kind() as u32,
            row_stride_words: (m.row_stride_bytes() / 4) as u32,
            group_len: m.group_len() as u32,
            groups_per_row: m.groups_per_row() as u32,
            flags,
        }
    }
}

/// Parameters of the round-to-nearest quantize kernels.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct QuantizeParams {
    /// Rows of W.
    pub rows: u32,
    /// Columns of W.
    pub cols: u32,
    /// `FormatKind as u32` (q8 or q4).
    pub format: u32,
    /// Output row stride in 32-bit words.
    pub row_stride_words: u32,
    /// Columns per group.
    pub group_len: u32,
    /// Groups per row.
    pub groups_per_row: u32,
    /// Unused, keeps the block 16-byte aligned.
    pub _pad0: u32,
    /// Unused.
    pub _pad1: u32,
}

/// Parameters of the nearest-level assignment and per-level reduction kernels.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AssignParams {
    /// Number of values.
    pub n: u32,
    /// Number of levels (ascending), at most 256.
    pub levels: u32,
    /// 1 to write a code per value.
    pub want_codes: u32,
    /// Unused, keeps the block 16-byte aligned.
    pub _pad0: u32,
}

/// `OpParams::kind` of an activation: GELU (erf form).
pub const ACT_GELU: u32 = 0;
/// `OpParams::kind` of an activation: quick-GELU.
pub const ACT_QUICK_GELU: u32 = 1;

/// Parameters of the row-wise and elementwise forward-pass kernels
/// (`shaders/ops.wgsl`, `kernels/ops.cu`: `layer_norm`, `gelu`,
/// `quick_gelu`, `add`, `bias_add`, `softmax`, `take_rows`). Device tensors
/// are stored as `rows x stride` floats, `stride = x_stride(cols)`, the
/// padding zero and never written by a kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct OpParams {
    /// Rows of the output.
    pub rows: u32,
    /// Valid columns of every operand.
    pub cols: u32,
    /// Row stride in floats of every operand (`x_stride(cols)`).
    pub stride: u32,
    /// `add`: rows of `b` (broadcast, row `r % aux_rows`); `softmax`: rows
    /// of `x` per mask row (0: no mask); `take_rows`: the row step.
    pub aux_rows: u32,
    /// `take_rows`: the first row taken.
    pub offset: u32,
    /// `gelu` / `quick_gelu`: [`ACT_GELU`] or [`ACT_QUICK_GELU`] (for a
    /// kernel that serves both).
    pub kind: u32,
    /// `layer_norm`: epsilon; `softmax`: the scale applied to the scores.
    pub eps_or_scale: f32,
    /// Unused, keeps the block 16-byte aligned.
    pub _pad0: u32,
}

/// Parameters of the fused `attention` kernel (`shaders/ops.wgsl`,
/// `kernels/ops.cu`): `seqs` sequences of `seq_len` rows, `heads` heads of
/// `head_dim` columns; q, k, v, y rows of `stride` floats; the mask (when
/// `has_mask` is 1) has one row of `x_stride(seq_len)` floats per sequence.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct AttentionParams {
    /// Sequences in the batch.
    pub seqs: u32,
    /// Rows (tokens) per sequence.
    pub seq_len: u32,
    /// Heads.
    pub heads: u32,
    /// Columns per head.
    pub head_dim: u32,
    /// Row stride of q, k, v and y in floats (`x_stride(heads * head_dim)`).
    pub stride: u32,
    /// 1 when a key mask is bound.
    pub has_mask: u32,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Unused, keeps the block 16-byte aligned.
    pub _pad0: u32,
}
