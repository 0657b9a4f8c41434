// common.cuh: what every kernels/*.cu shares.
//
// - The parameter blocks, field for field the `#[repr(C)]` structs of
//   src/backend/params.rs (and the WGSL uniform structs of shaders/*.wgsl);
//   they are passed to the kernels by value.
// - Format ids and flag bits (`FormatKind as u32`, `FLAG_*`).
// - f16 / bf16 conversions written in inline PTX, so the kernels need no
//   header at all: NVRTC compiles them without an include path.
// - Weight decoders shared by dequantize, GEMV and GEMM.
//
// The Rust side (src/backend/cuda/compile.rs) replaces the line
// `#include "common.cuh"` of each .cu file with this text before NVRTC sees
// it; `nvcc -I kernels` compiles the files unchanged.
//
// Layouts (docs/FORMATS.md): every packed row starts on a 16-byte boundary,
// `row_stride_words` 32-bit words apart.
//   f32   4 bytes per column, row stride round_up(cols, 4) values
//   f16   IEEE half bits, row stride round_up(cols, 8)
//   bf16  bfloat16 bits, row stride round_up(cols, 8)
//   q8    int8 codes, row stride round_up(cols, 16) bytes, w = s * code
//   q4    8 nibbles per little-endian u32 (column c = nibble c % 8 of word
//         c / 8), w = s * (q - z)
//   lut4  packed like q4, w = s * codebook[q]
// Scales are f16 bits (u16), one per (row, group), row-major; q4 zero points
// are u8 in the same order. A group is `group_len` columns: a multiple of 32,
// or the whole row (then `groups_per_row` = 1).
//
// Inputs of GEMV / GEMM: X is batch rows of `xstride(cols)` floats (cols
// rounded up to 32, padding zero), so that 16-byte loads of X are aligned and
// in bounds. Y is batch rows of `xstride(rows)` floats (the device tensor
// layout of the forward pass, so Y feeds the next layer as its X); the
// padding columns of Y are never written (they stay zero).
#ifndef QUANTSCOPE_COMMON_CUH
#define QUANTSCOPE_COMMON_CUH

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

// src/backend/params.rs: MatmulParams.
struct MatmulParams {
    u32 rows;
    u32 cols;
    u32 batch;
    u32 format;
    u32 row_stride_words;
    u32 group_len;
    u32 groups_per_row;
    u32 flags;
};

// src/backend/params.rs: QuantizeParams.
struct QuantizeParams {
    u32 rows;
    u32 cols;
    u32 format;
    u32 row_stride_words;
    u32 group_len;
    u32 groups_per_row;
    u32 _pad0;
    u32 _pad1;
};

// src/backend/params.rs: AssignParams.
struct AssignParams {
    u32 n;
    u32 levels;
    u32 want_codes;
    u32 _pad0;
};

// src/backend/params.rs: OpParams (kernels/ops.cu).
struct OpParams {
    u32 rows;
    u32 cols;
    u32 stride;
    u32 aux_rows;
    u32 offset;
    u32 kind;
    float eps_or_scale;
    u32 _pad0;
};

// src/backend/params.rs: AttentionParams (kernels/ops.cu).
struct AttentionParams {
    u32 seqs;
    u32 seq_len;
    u32 heads;
    u32 head_dim;
    u32 stride;
    u32 has_mask;
    float scale;
    u32 _pad0;
};

#define FMT_F32 0
#define FMT_F16 1
#define FMT_BF16 2
#define FMT_Q8 3
#define FMT_Q4 4
#define FMT_LUT4 5

#define FLAG_OUTLIERS 1u
#define FLAG_ACT_SCALE 2u
#define FLAG_INT8_ACT 4u

#ifndef QUANTSCOPE_HOST_EMU
// f32 value of IEEE half bits (exact).
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// IEEE half bits of an f32, round to nearest even (subnormals kept), like
// `half::f16::from_f32`.
__device__ __forceinline__ u16 f2h_rn(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// Host emulation (kernels/emu): the same conversions in software.
__device__ __forceinline__ float h2f(u16 h) { return emu_h2f(h); }
__device__ __forceinline__ u16 f2h_rn(float f) { return emu_f2h_rn(f); }
#endif

// f32 value of bfloat16 bits (exact).
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Row stride of the GEMV / GEMM input X in floats.
__device__ __forceinline__ u32 xstride(u32 cols) { return (cols + 31u) & ~31u; }

// Group of column c (padding columns of a whole-row group map to group 0).
__device__ __forceinline__ u32 group_of(const MatmulParams& p, u32 c) {
    u32 g = c / p.group_len;
    return g < p.groups_per_row ? g : p.groups_per_row - 1u;
}

// 2^23 as float bits: OR-ing an integer 0..255 into the mantissa gives 2^23 + i
// exactly, so a subtraction turns packed codes into floats without I2F.
#define MAGIC_BITS 0x4B000000u
#define MAGIC_F 8388608.0f

// Columns one 16-byte chunk of a packed row holds.
template <int FMT> struct Chunk;
template <> struct Chunk<FMT_F32> { static constexpr u32 COLS = 4; };
template <> struct Chunk<FMT_F16> { static constexpr u32 COLS = 8; };
template <> struct Chunk<FMT_BF16> { static constexpr u32 COLS = 8; };
template <> struct Chunk<FMT_Q8> { static constexpr u32 COLS = 16; };
template <> struct Chunk<FMT_Q4> { static constexpr u32 COLS = 32; };
template <> struct Chunk<FMT_LUT4> { static constexpr u32 COLS = 32; };

// Per-group constants of one chunk: w = scale * u, with u from decode_chunk.
struct GroupConsts {
    float scale;
    float zero;  // q4 only
};

template <int FMT>
__device__ __forceinline__ GroupConsts group_consts(const MatmulParams& p, const u16* __restrict__ scales,
                                                    const u8* __restrict__ zeros, u32 r, u32 c) {
    GroupConsts k;
    k.scale = 1.0f;
    k.zero = 0.0f;
    if (FMT == FMT_Q8 || FMT == FMT_Q4 || FMT == FMT_LUT4) {
        const u32 gi = r * p.groups_per_row + group_of(p, c);
        k.scale = h2f(__ldg(scales + gi));
        if (FMT == FMT_Q4) k.zero = (float)__ldg(zeros + gi);
    }
    return k;
}

// Signed byte j (0..3) of word v as float, without I2F: PRMT builds the float
// 2^23 + (code + 128), one subtraction leaves the code.
__device__ __forceinline__ float s8_at(u32 v_biased, u32 j) {
    return __uint_as_float(__byte_perm(v_biased, MAGIC_BITS, 0x7540u | j)) - (MAGIC_F + 128.0f);
}

// Decodes one 16-byte chunk into COLS unscaled values u (w = scale * u).
// q4: u = q - zero; lut4: u = codebook[q]; q8: u = code; plain: u = w.
template <int FMT>
__device__ __forceinline__ void decode_chunk(uint4 v, const GroupConsts& k, const float* cb, float* u) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    if (FMT == FMT_F32) {
#pragma unroll
        for (int i = 0; i < 4; ++i) u[i] = __uint_as_float(w[i]);
    } else if (FMT == FMT_F16) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u[2 * i] = h2f((u16)(w[i] & 0xFFFFu));
            u[2 * i + 1] = h2f((u16)(w[i] >> 16));
        }
    } else if (FMT == FMT_BF16) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u[2 * i] = __uint_as_float(w[i] << 16);
            u[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
        }
    } else if (FMT == FMT_Q8) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 b = w[i] ^ 0x80808080u;
#pragma unroll
            for (u32 j = 0; j < 4; ++j) u[4 * i + j] = s8_at(b, j);
        }
    } else if (FMT == FMT_Q4) {
        const float bias = MAGIC_F + k.zero;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 lo = w[i] & 0x0F0F0F0Fu;
            const u32 hi = (w[i] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (u32 j = 0; j < 4; ++j) {
                u[8 * i + 2 * j] = __uint_as_float(__byte_perm(lo, MAGIC_BITS, 0x7540u | j)) - bias;
                u[8 * i + 2 * j + 1] = __uint_as_float(__byte_perm(hi, MAGIC_BITS, 0x7540u | j)) - bias;
            }
        }
    } else {  // FMT_LUT4
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 8; ++j) u[8 * i + j] = cb[(w[i] >> (4 * j)) & 0xFu];
        }
    }
}

// Exact dense value of W[r][c] (c < cols), with the same single rounding as
// the CPU reference (`QuantizedMatrix::dequantize_row`).
template <int FMT>
__device__ __forceinline__ float dense_at(const MatmulParams& p, const u8* __restrict__ w,
                                          const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                          const float* cb, u32 r, u32 c) {
    const u8* row = w + (u64)r * p.row_stride_words * 4u;
    if (FMT == FMT_F32) return ((const float*)row)[c];
    if (FMT == FMT_F16) return h2f(((const u16*)row)[c]);
    if (FMT == FMT_BF16) return bf2f(((const u16*)row)[c]);
    const u32 gi = r * p.groups_per_row + group_of(p, c);
    const float s = h2f(scales[gi]);
    if (FMT == FMT_Q8) return __fmul_rn((float)(int)(signed char)row[c], s);
    const u32 q = (((const u32*)row)[c >> 3] >> (4u * (c & 7u))) & 0xFu;
    if (FMT == FMT_Q4) return __fmul_rn(__fsub_rn((float)q, (float)zeros[gi]), s);
    return __fmul_rn(cb[q], s);  // FMT_LUT4
}

// Loads the 16-entry lut4 codebook into shared memory (every thread of the
// block must call it; other formats return at once).
template <int FMT>
__device__ __forceinline__ void load_codebook(const float* __restrict__ codebook, float* cb_s) {
    if (FMT == FMT_LUT4) {
        if (threadIdx.x < 16) cb_s[threadIdx.x] = codebook[threadIdx.x];
        __syncthreads();
    }
}

// D += A · B for one m16n8k16 tile (f16 inputs, f32 accumulators), with
// the fragment layout of the PTX ISA: a0..a3 and b0, b1 hold f16 pairs,
// d[0..3] the lane's four accumulators. sm_80+ only (or the host emulation).
#if defined(QUANTSCOPE_HOST_EMU)
__device__ __forceinline__ void mma_16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    emu_mma_16816(d, a0, a1, a2, a3, b0, b1);
}
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void mma_16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

// Sum over the 32 lanes of a warp.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

// Maximum over the 32 lanes of a warp (-inf stays -inf).
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

#endif  // QUANTSCOPE_COMMON_CUH
