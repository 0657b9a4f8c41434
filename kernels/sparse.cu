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

// X'[b][c] = X[b][c] * act_scale[c] for c < cols; padding stays zero.
// Launch: 1-D grid-stride over batch * xstride(cols), 256 threads per block.
extern "C" __global__ void __launch_bounds__(256)
    scale_input(const MatmulParams p, const float* __restrict__ x, const float* __restrict__ act_scale,
                float* __restrict__ xo) {
    const u32 xs = xstride(p.cols);
    const u64 n = (u64)p.batch * xs;
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const u32 c = (u32)(i % xs);
        xo[i] = c < p.cols ? x[i] * act_scale[c] : 0.0f;
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
