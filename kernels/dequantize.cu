// dequantize.cu: packed matrix -> effective f32 weights, exactly as the CPU
// reference `QuantizedMatrix::dequantize` (bit for bit: every operation is an
// explicitly rounded __fmul_rn / __fadd_rn, so no FMA contraction).
//
// Reads: the dense part (layout of common.cuh), f16 scales, u8 zero points
// (q4), the 16-float codebook (lut4), CSR outliers (row_ptr u32[rows + 1],
// col_idx u32[nnz] strictly increasing per row, values f16[nnz]) when
// FLAG_OUTLIERS, act_scale f32[cols] when FLAG_ACT_SCALE.
// Writes: out f32[rows * cols], row-major, unpadded:
//   out[r][c] = (dense(r, c) + outlier(r, c)) * act_scale[c].
// Buffers a format does not use may be any valid pointer.
//
// Launch: 1-D grid-stride over rows * cols elements, any block size (the
// backend uses 256 threads, up to 65535 blocks).
#include "common.cuh"

template <int FMT>
__device__ __forceinline__ void dequantize_impl(const MatmulParams p, const u8* __restrict__ w,
                                                const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                                const float* __restrict__ codebook, const u32* __restrict__ row_ptr,
                                                const u32* __restrict__ col_idx, const u16* __restrict__ ovals,
                                                const float* __restrict__ act_scale, float* __restrict__ out) {
    __shared__ float cb_s[16];
    load_codebook<FMT>(codebook, cb_s);
    const u64 n = (u64)p.rows * p.cols;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u32 r = (u32)(i / p.cols);
        const u32 c = (u32)(i - (u64)r * p.cols);
        float v = dense_at<FMT>(p, w, scales, zeros, cb_s, r, c);
        if (p.flags & FLAG_OUTLIERS) {
            // Binary search of column c among the row's sorted outlier columns.
            u32 lo = row_ptr[r], hi = row_ptr[r + 1];
            while (lo < hi) {
                const u32 mid = (lo + hi) >> 1;
                const u32 cm = col_idx[mid];
                if (cm == c) {
                    v = __fadd_rn(v, h2f(ovals[mid]));
                    break;
                }
                if (cm < c) lo = mid + 1; else hi = mid;
            }
        }
        if (p.flags & FLAG_ACT_SCALE) v = __fmul_rn(v, act_scale[c]);
        out[i] = v;
    }
}

#define DEQUANTIZE_ENTRY(NAME, FMT)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                  \
        const MatmulParams p, const u8* __restrict__ w, const u16* __restrict__ scales,                      \
        const u8* __restrict__ zeros, const float* __restrict__ codebook, const u32* __restrict__ row_ptr,   \
        const u32* __restrict__ col_idx, const u16* __restrict__ ovals, const float* __restrict__ act_scale, \
        float* __restrict__ out) {                                                                           \
        dequantize_impl<FMT>(p, w, scales, zeros, codebook, row_ptr, col_idx, ovals, act_scale, out);        \
    }

DEQUANTIZE_ENTRY(dequantize_f32, FMT_F32)
DEQUANTIZE_ENTRY(dequantize_f16, FMT_F16)
DEQUANTIZE_ENTRY(dequantize_bf16, FMT_BF16)
DEQUANTIZE_ENTRY(dequantize_q8, FMT_Q8)
DEQUANTIZE_ENTRY(dequantize_q4, FMT_Q4)
DEQUANTIZE_ENTRY(dequantize_lut4, FMT_LUT4)
