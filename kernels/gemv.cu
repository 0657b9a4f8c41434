// gemv.cu: Y = X · Wᵀ for a small batch (1..7 rows of X), memory-bound: every
// weight byte is read once, with 16-byte loads, and decoded in registers.
//
// Reads: the dense part (layout of common.cuh), f16 scales, u8 zero points
// (q4), the 16-float codebook (lut4); X: batch rows of xstride(cols) floats
// (cols rounded up to 32, zero padded; already multiplied by act_scale when
// the matrix has one, see sparse.cu). Writes Y: batch rows of xstride(rows)
// floats (padding columns untouched).
// Outliers are added afterwards by sparse.cu's outliers_add.
//
// Launch: blockDim = (256, 1, 1): 8 warps, each streaming ROWS output rows
// side by side (GemvRows below: 4 for q4 / lut4, 2 for q8, 1 otherwise);
// gridDim = (ceil(rows / (8 * ROWS)), 1, 1) (smaller grids stride over the
// rows). Lane l reads 16-byte chunks l, l + 32, ... of each row (a warp reads
// 512 contiguous bytes of a row at a time, four chunks in flight per lane),
// decodes them to f32, multiplies by the matching X values (float4 loads,
// shared by the ROWS rows at batch 1) and the warp reduces its partial sums
// with shuffles.
#include "common.cuh"

#define GEMV_WARPS 8
#define GEMV_MAX_BATCH 8

// Output rows per warp: a warp streams the rows r0 .. r0 + ROWS - 1 side by
// side, so one load of X (from L1 / L2) serves ROWS rows of weights: q4 and
// lut4 weights are 8 times smaller than their X values, q8 4 times. Must
// match `gemv_rows_per_warp` in src/backend/cuda/mod.rs (which sizes the
// grid; any grid is correct, the kernel strides over row groups).
template <int FMT> struct GemvRows { static constexpr u32 ROWS = 1; };
template <> struct GemvRows<FMT_Q8> { static constexpr u32 ROWS = 2; };
template <> struct GemvRows<FMT_Q4> { static constexpr u32 ROWS = 4; };
template <> struct GemvRows<FMT_LUT4> { static constexpr u32 ROWS = 4; };

// x[b][c0 .. c0 + COLS) . u, for COLS a multiple of 4 (float4 loads).
template <u32 COLS>
__device__ __forceinline__ float dot_x(const float* __restrict__ xb, const float* u) {
    const float4* x4 = (const float4*)xb;
    float part = 0.0f;
#pragma unroll
    for (u32 q = 0; q < COLS / 4; ++q) {
        const float4 xv = __ldg(x4 + q);
        part = fmaf(u[4 * q], xv.x, part);
        part = fmaf(u[4 * q + 1], xv.y, part);
        part = fmaf(u[4 * q + 2], xv.z, part);
        part = fmaf(u[4 * q + 3], xv.w, part);
    }
    return part;
}

// Batch 1: rows r0 .. r0 + R - 1 side by side; each X chunk is loaded once
// into registers and used by the R rows. Every lane of the warp calls it.
template <int FMT, u32 R>
__device__ __forceinline__ void gemv_rows_b1(const MatmulParams& p, const u8* __restrict__ w,
                                             const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                             const float* cb_s, const float* __restrict__ x,
                                             float* __restrict__ y, u32 r0, u32 lane) {
    constexpr u32 COLS = Chunk<FMT>::COLS;
    constexpr u32 UNROLL = 4 / R;  // 16-byte loads in flight per lane: R x UNROLL = 4
    const u32 nchunks = p.row_stride_words / 4u;
    float acc[R];
#pragma unroll
    for (u32 i = 0; i < R; ++i) acc[i] = 0.0f;
    for (u32 k = lane; k < nchunks; k += 32u * UNROLL) {
        uint4 v[UNROLL][R];
#pragma unroll
        for (u32 t = 0; t < UNROLL; ++t)
#pragma unroll
            for (u32 i = 0; i < R; ++i) {
                const u32 kk = k + 32u * t;
                v[t][i] = (kk < nchunks && r0 + i < p.rows)
                              ? __ldg((const uint4*)(w + (u64)(r0 + i) * p.row_stride_words * 4u) + kk)
                              : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
        for (u32 t = 0; t < UNROLL; ++t) {
            const u32 kk = k + 32u * t;
            const u32 c0 = kk * COLS;
            if (kk >= nchunks || c0 >= p.cols) continue;
            float xr[COLS];
#pragma unroll
            for (u32 q = 0; q < COLS / 4; ++q) {
                const float4 xv = __ldg((const float4*)(x + c0) + q);
                xr[4 * q] = xv.x;
                xr[4 * q + 1] = xv.y;
                xr[4 * q + 2] = xv.z;
                xr[4 * q + 3] = xv.w;
            }
            if (c0 + COLS > p.cols) {
                // Last chunk of the row: padding columns contribute nothing.
#pragma unroll
                for (u32 j = 0; j < COLS; ++j)
                    if (c0 + j >= p.cols) xr[j] = 0.0f;
            }
#pragma unroll
            for (u32 i = 0; i < R; ++i) {
                if (r0 + i >= p.rows) break;
                const GroupConsts g = group_consts<FMT>(p, scales, zeros, r0 + i, c0);
                float u[COLS];
                decode_chunk<FMT>(v[t][i], g, cb_s, u);
                float part = 0.0f;
#pragma unroll
                for (u32 j = 0; j < COLS; ++j) part = fmaf(u[j], xr[j], part);
                acc[i] = fmaf(g.scale, part, acc[i]);
            }
        }
    }
#pragma unroll
    for (u32 i = 0; i < R; ++i) {
        const float s = warp_sum(acc[i]);
        if (lane == 0 && r0 + i < p.rows) y[r0 + i] = s;
    }
}

// Batch 2..8: one row r, each decoded chunk used by every row of X.
template <int FMT>
__device__ __forceinline__ void gemv_row_bn(const MatmulParams& p, const u8* __restrict__ w,
                                            const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                            const float* cb_s, const float* __restrict__ x,
                                            float* __restrict__ y, u32 r, u32 nb, u32 lane) {
    constexpr u32 COLS = Chunk<FMT>::COLS;
    constexpr u32 UNROLL = 4;
    const u32 xs = xstride(p.cols);
    const u32 nchunks = p.row_stride_words / 4u;
    const uint4* row = (const uint4*)(w + (u64)r * p.row_stride_words * 4u);
    float acc[GEMV_MAX_BATCH];
#pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; ++b) acc[b] = 0.0f;
    for (u32 k = lane; k < nchunks; k += 32u * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (u32 t = 0; t < UNROLL; ++t) {
            const u32 kk = k + 32u * t;
            v[t] = kk < nchunks ? __ldg(row + kk) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (u32 t = 0; t < UNROLL; ++t) {
            const u32 kk = k + 32u * t;
            const u32 c0 = kk * COLS;
            if (kk >= nchunks || c0 >= p.cols) continue;
            const GroupConsts g = group_consts<FMT>(p, scales, zeros, r, c0);
            float u[COLS];
            decode_chunk<FMT>(v[t], g, cb_s, u);
            if (c0 + COLS > p.cols) {
#pragma unroll
                for (u32 j = 0; j < COLS; ++j)
                    if (c0 + j >= p.cols) u[j] = 0.0f;
            }
#pragma unroll
            for (int b = 0; b < GEMV_MAX_BATCH; ++b) {
                if (b >= (int)nb) break;
                acc[b] = fmaf(g.scale, dot_x<COLS>(x + (u64)b * xs + c0, u), acc[b]);
            }
        }
    }
#pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; ++b) {
        if (b >= (int)nb) break;
        const float s = warp_sum(acc[b]);
        if (lane == 0) y[(u64)b * xstride(p.rows) + r] = s;
    }
}

template <int FMT>
__device__ __forceinline__ void gemv_impl(const MatmulParams p, const u8* __restrict__ w,
                                          const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                          const float* __restrict__ codebook, const float* __restrict__ x,
                                          float* __restrict__ y) {
    constexpr u32 R = GemvRows<FMT>::ROWS;
    __shared__ float cb_s[16];
    load_codebook<FMT>(codebook, cb_s);
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 nb = p.batch < GEMV_MAX_BATCH ? p.batch : GEMV_MAX_BATCH;
    const u64 row_step = (u64)gridDim.x * GEMV_WARPS * R;
    // Row groups are warp-uniform, so the shuffles inside see full warps.
    for (u64 r0 = ((u64)blockIdx.x * GEMV_WARPS + warp) * R; r0 < p.rows; r0 += row_step) {
        if (nb == 1) {
            gemv_rows_b1<FMT, R>(p, w, scales, zeros, cb_s, x, y, (u32)r0, lane);
        } else {
            for (u32 i = 0; i < R && r0 + i < p.rows; ++i)
                gemv_row_bn<FMT>(p, w, scales, zeros, cb_s, x, y, (u32)(r0 + i), nb, lane);
        }
    }
}

#define GEMV_ENTRY(NAME, FMT)                                                                             \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                               \
        const MatmulParams p, const u8* __restrict__ w, const u16* __restrict__ scales,                   \
        const u8* __restrict__ zeros, const float* __restrict__ codebook, const float* __restrict__ x,    \
        float* __restrict__ y) {                                                                          \
        gemv_impl<FMT>(p, w, scales, zeros, codebook, x, y);                                              \
    }

GEMV_ENTRY(gemv_f32, FMT_F32)
GEMV_ENTRY(gemv_f16, FMT_F16)
GEMV_ENTRY(gemv_bf16, FMT_BF16)
GEMV_ENTRY(gemv_q8, FMT_Q8)
GEMV_ENTRY(gemv_q4, FMT_Q4)
GEMV_ENTRY(gemv_lut4, FMT_LUT4)
