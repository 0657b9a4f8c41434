// sparse.cu: the two parts of a matmul that are not the dense product.
//
// With effective weights W[r][c] = (dense + outlier)(r, c) * act_scale[c],
//   Y = X · Wᵀ = (X ∘ act_scale) · denseᵀ + (X ∘ act_scale) · outlierᵀ,
// so the backend runs scale_input (when FLAG_ACT_SCALE), then gemv / gemm on
// X' = X ∘ act_scale, then outliers_add (when FLAG_OUTLIERS) on the same X'.
//
// X and X' are batch rows of xstride(cols) floats (zero padded); Y is batch
// rows of xstride(rows) floats (padding untouched). Outliers are CSR: row_ptr u32[rows + 1],
// col_idx u32[nnz], values f16[nnz].
#include "common.cuh"

// X'[b][c] = X[b][c] * act_scale[c] (FLAG_ACT_SCALE) for c < cols; padding
// stays zero. W8A8 (FLAG_INT8_ACT): then every 32-column block of a row is
// rounded to int8 as the CPU does (src/backend/cpu/act.rs): dx = absmax /
// 127, X' = dx * clamp(rint(X' * (127 / absmax)), -127, 127), ties to even;
// a block holding a non-finite value becomes NaN. Each thread reads its
// block's 32 values for the absmax (cached; a small pass next to the matmul).
// Launch: 1-D grid-stride over batch * xstride(cols), 256 threads per block.
__device__ __forceinline__ float scaled_x(const MatmulParams& p, const float* __restrict__ xrow,
                                          const float* __restrict__ act_scale, u32 c) {
    return (p.flags & FLAG_ACT_SCALE) ? __fmul_rn(xrow[c], act_scale[c]) : xrow[c];
}

extern "C" __global__ void __launch_bounds__(256)
    scale_input(const MatmulParams p, const float* __restrict__ x, const float* __restrict__ act_scale,
                float* __restrict__ xo) {
    const u32 xs = xstride(p.cols);
    const u64 n = (u64)p.batch * xs;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u32 c = (u32)(i % xs);
        if (c >= p.cols) {
            xo[i] = 0.0f;
            continue;
        }
        const float* xrow = x + (i - c);
        float v = scaled_x(p, xrow, act_scale, c);
        if (p.flags & FLAG_INT8_ACT) {
            const u32 b0 = c & ~31u, b1 = min(b0 + 32u, p.cols);
            float amax = 0.0f, bad = 0.0f;
            bool special = false;
            for (u32 j = b0; j < b1; ++j) {
                const float u = scaled_x(p, xrow, act_scale, j);
                if ((__float_as_uint(u) & 0x7f800000u) == 0x7f800000u) special = true, bad = u;
                amax = fmaxf(amax, fabsf(u));
            }
            if (special)
                v = __fsub_rn(bad, bad);  // NaN for inf and NaN alike
            else if (amax > 0.0f)
                v = __fmul_rn(__fdiv_rn(amax, 127.0f),
                              fminf(fmaxf(rintf(__fmul_rn(v, __fdiv_rn(127.0f, amax))), -127.0f), 127.0f));
            else
                v = 0.0f;
        }
        xo[i] = v;
    }
}

// Y[b][r] += Σ X'[b][col_idx[i]] * values[i] over row r's outliers i.
// Launch: one thread per (b, r): 1-D grid-stride over batch * rows, 256
// threads per block; consecutive threads take consecutive rows.
extern "C" __global__ void __launch_bounds__(256)
    outliers_add(const MatmulParams p, const u32* __restrict__ row_ptr, const u32* __restrict__ col_idx,
                 const u16* __restrict__ values, const float* __restrict__ x, float* __restrict__ y) {
    const u32 xs = xstride(p.cols);
    const u64 n = (u64)p.batch * p.rows;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u32 b = (u32)(i / p.rows);
        const u32 r = (u32)(i - (u64)b * p.rows);
        const float* xb = x + (u64)b * xs;
        float s = 0.0f;
        for (u32 j = row_ptr[r], e = row_ptr[r + 1]; j < e; ++j) s = fmaf(xb[col_idx[j]], h2f(values[j]), s);
        if (row_ptr[r + 1] > row_ptr[r]) y[(u64)b * xstride(p.rows) + r] += s;
    }
}
