// assign.cu: one Lloyd-Max step on the device.
//
// Reads values: n f32, contiguous; levels: `levels` f32 ascending (1..256).
// assign_levels writes codes: n u8, the index of each value's nearest level
// (ties to the lower index), by the same binary search over midpoints
// 0.5 * (l[i] + l[i + 1]) as the CPU (`format::nearest_level`), so the codes
// are identical. The codes are always written (reduce_levels reads them);
// `want_codes` only tells the host whether to read them back.
// reduce_levels writes, per block, the sum (f64) and count (u64) of the
// values assigned to each level: part_sums[block * levels + j],
// part_counts[block * levels + j]; the host adds the partials.
//
// Launch (both): 1-D grid-stride over n, blockDim = (256, 1, 1); the backend
// uses at most 1024 blocks, and sizes the partial buffers by its gridDim.x.
#include "common.cuh"

__device__ __forceinline__ u32 nearest(const float* lv, u32 k, float x) {
    u32 lo = 0, hi = k - 1u;
    while (lo < hi) {
        const u32 mid = (lo + hi) >> 1;
        if (x <= __fmul_rn(0.5f, __fadd_rn(lv[mid], lv[mid + 1]))) hi = mid; else lo = mid + 1u;
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(256)
    assign_levels(const AssignParams p, const float* __restrict__ values, const float* __restrict__ levels,
                  u8* __restrict__ codes) {
    __shared__ float lv[256];
    for (u32 j = threadIdx.x; j < p.levels; j += blockDim.x) lv[j] = levels[j];
    __syncthreads();
    const u32 step = gridDim.x * blockDim.x;
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        codes[i] = (u8)nearest(lv, p.levels, values[i]);
        if (i > 0xFFFFFFFFu - step) break;  // no u32 wrap-around
    }
}

extern "C" __global__ void __launch_bounds__(256)
    reduce_levels(const AssignParams p, const float* __restrict__ values, const u8* __restrict__ codes,
                  double* __restrict__ part_sums, u64* __restrict__ part_counts) {
    __shared__ double sums[256];
    __shared__ u64 counts[256];
    for (u32 j = threadIdx.x; j < p.levels; j += blockDim.x) {
        sums[j] = 0.0;
        counts[j] = 0ull;
    }
    __syncthreads();
    const u32 step = gridDim.x * blockDim.x;
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += step) {
        const u32 q = codes[i];
        atomicAdd(&sums[q], (double)values[i]);
        atomicAdd(&counts[q], 1ull);
        if (i > 0xFFFFFFFFu - step) break;
    }
    __syncthreads();
    for (u32 j = threadIdx.x; j < p.levels; j += blockDim.x) {
        part_sums[(u64)blockIdx.x * p.levels + j] = sums[j];
        part_counts[(u64)blockIdx.x * p.levels + j] = counts[j];
    }
}
