// gemv.cu: Y = X · Wᵀ for a small batch (1..7 rows of X), memory-bound: every
// weight byte is read once, with 16-byte loads, and decoded in registers.
//
// Reads: the dense part (layout of common.cuh), f16 scales, u8 zero points
// (q4), the 16-float codebook (lut4); X: batch rows of xstride(cols) floats
// (cols rounded up to 32, zero padded; already multiplied by act_scale when
// the matrix has one, see sparse.cu). Writes Y: batch rows of `rows` floats.
// Outliers are added afterwards by sparse.cu's outliers_add.
//
// Launch: blockDim = (256, 1, 1): 8 warps, one warp per output row;
// gridDim = (ceil(rows / 8), 1, 1). Lane l reads 16-byte chunks l, l + 32, ...
// of its row (a warp reads 512 contiguous bytes at a time, four chunks in
// flight per lane), decodes them to f32, multiplies by the matching X values
// (float4 loads) and the warp reduces its partial sums with shuffles.
#include "common.cuh"

#define GEMV_WARPS 8
#define GEMV_MAX_BATCH 8
#define GEMV_UNROLL 4

template <int FMT>
__device__ __forceinline__ void gemv_impl(const MatmulParams p, const u8* __restrict__ w,
                                          const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                          const float* __restrict__ codebook, const float* __restrict__ x,
                                          float* __restrict__ y) {
    constexpr u32 COLS = Chunk<FMT>::COLS;
    __shared__ float cb_s[16];
    load_codebook<FMT>(codebook, cb_s);
    const u32 lane = threadIdx.x & 31u;
    const u32 r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (r >= p.rows) return;
    const u32 nb = p.batch < GEMV_MAX_BATCH ? p.batch : GEMV_MAX_BATCH;
    const u32 xs = xstride(p.cols);
    const uint4* row = (const uint4*)(w + (u64)r * p.row_stride_words * 4u);
    const u32 nchunks = p.row_stride_words / 4u;

    float acc[GEMV_MAX_BATCH];
#pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; ++b) acc[b] = 0.0f;

    for (u32 k = lane; k < nchunks; k += 32u * GEMV_UNROLL) {
        // Issue every load first so that several are in flight per lane.
        uint4 v[GEMV_UNROLL];
#pragma unroll
        for (int t = 0; t < GEMV_UNROLL; ++t) {
            const u32 kk = k + 32u * t;
            v[t] = kk < nchunks ? __ldg(row + kk) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int t = 0; t < GEMV_UNROLL; ++t) {
            const u32 kk = k + 32u * t;
            const u32 c0 = kk * COLS;
            if (kk >= nchunks || c0 >= p.cols) continue;
            const GroupConsts g = group_consts<FMT>(p, scales, zeros, r, c0);
            float u[COLS];
            decode_chunk<FMT>(v[t], g, cb_s, u);
            if (c0 + COLS > p.cols) {
                // Last chunk of the row: padding columns contribute nothing.
#pragma unroll
                for (u32 j = 0; j < COLS; ++j)
                    if (c0 + j >= p.cols) u[j] = 0.0f;
            }
#pragma unroll
            for (int b = 0; b < GEMV_MAX_BATCH; ++b) {
                if (b >= (int)nb) break;
                const float4* xb = (const float4*)(x + (u64)b * xs + c0);
                float part = 0.0f;
#pragma unroll
                for (u32 q = 0; q < COLS / 4; ++q) {
                    const float4 xv = __ldg(xb + q);
                    part = fmaf(u[4 * q], xv.x, part);
                    part = fmaf(u[4 * q + 1], xv.y, part);
                    part = fmaf(u[4 * q + 2], xv.z, part);
                    part = fmaf(u[4 * q + 3], xv.w, part);
                }
                acc[b] = fmaf(g.scale, part, acc[b]);
            }
        }
    }
#pragma unroll
    for (int b = 0; b < GEMV_MAX_BATCH; ++b) {
        if (b >= (int)nb) break;
        const float s = warp_sum(acc[b]);
        if (lane == 0) y[(u64)b * p.rows + r] = s;
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
