//! The launch description of every CUDA kernel: its arguments in order, each
//! a name (the parameter name in `kernels/*.cu`) and a kind (a parameter
//! block of `params.rs` passed by value, a device pointer to elements of one
//! type, or a scalar).
//!
//! The backend pushes launch arguments only through its checked launcher
//! (`Launch` in `mod.rs`): it binds values by name, and the launcher pushes
//! them in the description's order after checking that every argument is
//! bound once with a value of the described kind. `tests/cuda_compile.rs`
//! checks the same descriptions against the kernels' source signatures
//! (names, types, `const`), the PTX `.entry` parameter lists (count and
//! sizes) and the sizes of the `params.rs` structs, so host and kernel
//! cannot drift apart without a failing test, GPU or not.
//!
//! The parts of a packed matrix reach the matrix kernels through
//! [`MatrixParts::by_name`], the one place that says which buffer a kernel
//! parameter such as `scales` or `zeros` is; the host upload and the tests
//! use the same struct.

use crate::format::{Packed, QuantizedMatrix};

use super::super::params::{AssignParams, AttentionParams, MatmulParams, OpParams, QuantizeParams};

/// Element type of a device pointer or a scalar, as `kernels/*.cu` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// `u8` (`unsigned char`).
    U8,
    /// `u16` (`unsigned short`): f16 bits.
    U16,
    /// `u32` (`unsigned int`).
    U32,
    /// `u64` (`unsigned long long`).
    U64,
    /// `float`.
    F32,
    /// `double`.
    F64,
}

impl Elem {
    /// The type's name in `kernels/*.cu` (the typedefs of `common.cuh`).
    pub const fn c_name(self) -> &'static str {
        match self {
            Elem::U8 => "u8",
            Elem::U16 => "u16",
            Elem::U32 => "u32",
            Elem::U64 => "u64",
            Elem::F32 => "float",
            Elem::F64 => "double",
        }
    }

    /// Size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Elem::U8 => 1,
            Elem::U16 => 2,
            Elem::U32 | Elem::F32 => 4,
            Elem::U64 | Elem::F64 => 8,
        }
    }
}

/// A parameter block passed by value: one `#[repr(C)]` struct of
/// `src/backend/params.rs`, the struct of the same name in `common.cuh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamBlock {
    /// [`MatmulParams`].
    Matmul,
    /// [`QuantizeParams`].
    Quantize,
    /// [`AssignParams`].
    Assign,
    /// [`OpParams`].
    Op,
    /// [`AttentionParams`].
    Attention,
}

impl ParamBlock {
    /// The struct's name (the same in Rust and in `common.cuh`).
    pub const fn c_name(self) -> &'static str {
        match self {
            ParamBlock::Matmul => "MatmulParams",
            ParamBlock::Quantize => "QuantizeParams",
            ParamBlock::Assign => "AssignParams",
            ParamBlock::Op => "OpParams",
            ParamBlock::Attention => "AttentionParams",
        }
    }

    /// Size of the Rust struct in bytes (what the backend copies).
    pub const fn size(self) -> usize {
        match self {
            ParamBlock::Matmul => std::mem::size_of::<MatmulParams>(),
            ParamBlock::Quantize => std::mem::size_of::<QuantizeParams>(),
            ParamBlock::Assign => std::mem::size_of::<AssignParams>(),
            ParamBlock::Op => std::mem::size_of::<OpParams>(),
            ParamBlock::Attention => std::mem::size_of::<AttentionParams>(),
        }
    }
}

/// What one kernel argument is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A parameter block by value.
    Params(ParamBlock),
    /// A device pointer to `elem`s; `writes`: the kernel writes through it
    /// (declared without `const`).
    Ptr {
        /// Element type.
        elem: Elem,
        /// Whether the kernel writes through the pointer.
        writes: bool,
    },
    /// A scalar by value.
    Scalar(Elem),
}

/// One kernel argument: its parameter name in the `.cu` source and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    /// The parameter's name in the kernel's signature.
    pub name: &'static str,
    /// What it is.
    pub kind: ArgKind,
}

/// The entry points of one kernel file that take the same arguments.
#[derive(Clone, Copy, Debug)]
pub struct KernelLaunch {
    /// The kernel file (`kernels/<stem>.cu`).
    pub stem: &'static str,
    /// Entry points (`extern "C" __global__` names).
    pub entries: &'static [&'static str],
    /// Their arguments, in order.
    pub args: &'static [Arg],
}

const fn params(name: &'static str, block: ParamBlock) -> Arg {
    Arg {
        name,
        kind: ArgKind::Params(block),
    }
}

const fn reads(name: &'static str, elem: Elem) -> Arg {
    Arg {
        name,
        kind: ArgKind::Ptr {
            elem,
            writes: false,
        },
    }
}

const fn writes(name: &'static str, elem: Elem) -> Arg {
    Arg {
        name,
        kind: ArgKind::Ptr { elem, writes: true },
    }
}

const fn scalar(name: &'static str, elem: Elem) -> Arg {
    Arg {
        name,
        kind: ArgKind::Scalar(elem),
    }
}

use Elem::{F32, F64, U16, U32, U64, U8};
use ParamBlock::{Assign, Attention, Matmul, Op, Quantize};

/// gemv_* and gemm_*: Y = X · Wᵀ.
const MATMUL_ARGS: &[Arg] = &[
    params("p", Matmul),
    reads("w", U8),
    reads("scales", U16),
    reads("zeros", U8),
    reads("codebook", F32),
    reads("x", F32),
    writes("y", F32),
];

/// Every kernel the backend launches.
pub const LAUNCHES: [KernelLaunch; 18] = [
    KernelLaunch {
        stem: "quantize",
        entries: &["quantize_q8"],
        args: &[
            params("p", Quantize),
            reads("w", F32),
            writes("codes", U32),
            writes("scales", U16),
        ],
    },
    KernelLaunch {
        stem: "quantize",
        entries: &["quantize_q4"],
        args: &[
            params("p", Quantize),
            reads("w", F32),
            writes("codes", U32),
            writes("scales", U16),
            writes("zeros", U8),
        ],
    },
    KernelLaunch {
        stem: "dequantize",
        entries: &[
            "dequantize_f32",
            "dequantize_f16",
            "dequantize_bf16",
            "dequantize_q8",
            "dequantize_q4",
            "dequantize_lut4",
        ],
        args: &[
            params("p", Matmul),
            reads("w", U8),
            reads("scales", U16),
            reads("zeros", U8),
            reads("codebook", F32),
            reads("row_ptr", U32),
            reads("col_idx", U32),
            reads("ovals", U16),
            reads("act_scale", F32),
            writes("out", F32),
        ],
    },
    KernelLaunch {
        stem: "gemv",
        entries: &[
            "gemv_f32",
            "gemv_f16",
            "gemv_bf16",
            "gemv_q8",
            "gemv_q4",
            "gemv_lut4",
        ],
        args: MATMUL_ARGS,
    },
    KernelLaunch {
        stem: "gemm",
        entries: &[
            "gemm_f32",
            "gemm_f16",
            "gemm_bf16",
            "gemm_q8",
            "gemm_q4",
            "gemm_lut4",
        ],
        args: MATMUL_ARGS,
    },
    KernelLaunch {
        stem: "sparse",
        entries: &["scale_input"],
        args: &[
            params("p", Matmul),
            reads("x", F32),
            reads("act_scale", F32),
            writes("xo", F32),
        ],
    },
    KernelLaunch {
        stem: "sparse",
        entries: &["outliers_add"],
        args: &[
            params("p", Matmul),
            reads("row_ptr", U32),
            reads("col_idx", U32),
            reads("values", U16),
            reads("x", F32),
            writes("y", F32),
        ],
    },
    KernelLaunch {
        stem: "assign",
        entries: &["assign_levels"],
        args: &[
            params("p", Assign),
            reads("values", F32),
            reads("levels", F32),
            writes("codes", U8),
        ],
    },
    KernelLaunch {
        stem: "assign",
        entries: &["reduce_levels"],
        args: &[
            params("p", Assign),
            reads("values", F32),
            reads("codes", U8),
            writes("part_sums", F64),
            writes("part_counts", U64),
        ],
    },
    KernelLaunch {
        stem: "probe",
        entries: &["fma_rate"],
        args: &[
            writes("out", F32),
            scalar("iters", U32),
            scalar("seed", F32),
        ],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["layer_norm"],
        args: &[
            params("p", Op),
            reads("x", F32),
            reads("gamma", F32),
            reads("beta", F32),
            writes("y", F32),
        ],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["gelu"],
        args: &[params("p", Op), reads("x", F32), writes("y", F32)],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["quick_gelu"],
        args: &[params("p", Op), reads("x", F32), writes("y", F32)],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["add"],
        args: &[
            params("p", Op),
            reads("a", F32),
            reads("b", F32),
            writes("y", F32),
        ],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["bias_add"],
        args: &[params("p", Op), reads("bias", F32), writes("y", F32)],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["softmax"],
        args: &[
            params("p", Op),
            reads("x", F32),
            reads("mask", F32),
            writes("y", F32),
        ],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["attention"],
        args: &[
            params("p", Attention),
            reads("q", F32),
            reads("k", F32),
            reads("v", F32),
            reads("mask", F32),
            writes("y", F32),
        ],
    },
    KernelLaunch {
        stem: "ops",
        entries: &["take_rows"],
        args: &[params("p", Op), reads("x", F32), writes("y", F32)],
    },
];

/// The description of kernel entry `entry`.
pub fn launch_of(entry: &str) -> Option<&'static KernelLaunch> {
    LAUNCHES.iter().find(|l| l.entries.contains(&entry))
}

/// The parts of a packed matrix, one field per kind of buffer the matrix
/// kernels read: host slices ([`MatrixParts::of`]) or their device copies.
/// Parts a format lacks are empty on the host (one-element placeholders on
/// the device, which the kernels never read).
#[derive(Clone, Debug)]
pub struct MatrixParts<B8, B16, B32, BF> {
    /// The dense part (codes or plain values), `rows x row_stride` bytes.
    pub dense: B8,
    /// f16 scale bits, one per (row, group).
    pub scales: B16,
    /// q4 zero points, one per (row, group).
    pub zeros: B8,
    /// The lut4 codebook (16 floats).
    pub codebook: BF,
    /// CSR row offsets of the outliers (`rows + 1`).
    pub row_ptr: B32,
    /// CSR column of each outlier.
    pub col_idx: B32,
    /// f16 bits of each outlier.
    pub out_vals: B16,
    /// Per-column activation scale.
    pub act_scale: BF,
}

/// One part, with its element type.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a, B8, B16, B32, BF> {
    /// A `u8` buffer.
    U8(&'a B8),
    /// A `u16` buffer.
    U16(&'a B16),
    /// A `u32` buffer.
    U32(&'a B32),
    /// A `float` buffer.
    F32(&'a BF),
}

impl<B8, B16, B32, BF> Part<'_, B8, B16, B32, BF> {
    /// The element type.
    pub fn elem(&self) -> Elem {
        match self {
            Part::U8(_) => Elem::U8,
            Part::U16(_) => Elem::U16,
            Part::U32(_) => Elem::U32,
            Part::F32(_) => Elem::F32,
        }
    }
}

impl<B8, B16, B32, BF> MatrixParts<B8, B16, B32, BF> {
    /// The part a matrix kernel's parameter `name` is (`None`: not a part of
    /// the matrix, e.g. `x` or `y`). The outlier values are `ovals` in
    /// dequantize.cu and `values` in sparse.cu.
    pub fn by_name(&self, name: &str) -> Option<Part<'_, B8, B16, B32, BF>> {
        Some(match name {
            "w" => Part::U8(&self.dense),
            "scales" => Part::U16(&self.scales),
            "zeros" => Part::U8(&self.zeros),
            "codebook" => Part::F32(&self.codebook),
            "row_ptr" => Part::U32(&self.row_ptr),
            "col_idx" => Part::U32(&self.col_idx),
            "ovals" | "values" => Part::U16(&self.out_vals),
            "act_scale" => Part::F32(&self.act_scale),
            _ => return None,
        })
    }

    /// The same parts through `f8`, `f16`, `f32` (u32 parts) and `ff`
    /// (float parts), e.g. uploaded.
    pub fn try_map<C8, C16, C32, CF, E>(
        &self,
        mut f8: impl FnMut(&B8) -> Result<C8, E>,
        mut f16: impl FnMut(&B16) -> Result<C16, E>,
        mut f32: impl FnMut(&B32) -> Result<C32, E>,
        mut ff: impl FnMut(&BF) -> Result<CF, E>,
    ) -> Result<MatrixParts<C8, C16, C32, CF>, E> {
        Ok(MatrixParts {
            dense: f8(&self.dense)?,
            scales: f16(&self.scales)?,
            zeros: f8(&self.zeros)?,
            codebook: ff(&self.codebook)?,
            row_ptr: f32(&self.row_ptr)?,
            col_idx: f32(&self.col_idx)?,
            out_vals: f16(&self.out_vals)?,
            act_scale: ff(&self.act_scale)?,
        })
    }
}

/// The host parts of a packed matrix, as the backend uploads them.
pub type HostParts<'a> = MatrixParts<&'a [u8], &'a [u16], &'a [u32], &'a [f32]>;

impl<'a> HostParts<'a> {
    /// The parts of `m`, laid out byte for byte as in `docs/FORMATS.md`.
    pub fn of(m: &'a QuantizedMatrix) -> HostParts<'a> {
        let (dense, scales, zeros, codebook): (&[u8], &[u16], &[u8], &[f32]) = match m.packed() {
            Packed::F32(v) => (bytemuck::cast_slice(v), &[], &[], &[]),
            Packed::F16(v) => (bytemuck::cast_slice(v), &[], &[], &[]),
            Packed::Bf16(v) => (bytemuck::cast_slice(v), &[], &[], &[]),
            Packed::Q8(q) => (
                bytemuck::cast_slice(&q.codes),
                bytemuck::cast_slice(&q.scales),
                &[],
                &[],
            ),
            Packed::Q4(q) => (
                bytemuck::cast_slice(&q.codes),
                bytemuck::cast_slice(&q.scales),
                &q.zeros,
                &[],
            ),
            Packed::Lut4(q) => (
                bytemuck::cast_slice(&q.codes),
                bytemuck::cast_slice(&q.scales),
                &[],
                &q.codebook,
            ),
        };
        let (row_ptr, col_idx, out_vals): (&[u32], &[u32], &[u16]) = match m.outliers() {
            Some(o) => (&o.row_ptr, &o.col_idx, bytemuck::cast_slice(&o.values)),
            None => (&[], &[], &[]),
        };
        MatrixParts {
            dense,
            scales,
            zeros,
            codebook,
            row_ptr,
            col_idx,
            out_vals,
            act_scale: m.act_scale().unwrap_or(&[]),
        }
    }
}
