// probe.cu: FMA-rate probe for `measure_flops` (mirrors shaders/probe.wgsl).
//
// fma_rate: nothing but f32 fused multiply-adds, 8 independent chains per
// thread so the pipelines stay full: 2 * 8 * iters FLOPs per thread. The
// result is stored only when it is impossible, so the work cannot be removed.
//
// Launch: blockDim = (256, 1, 1), gridDim = (8 * multiprocessors, 1, 1).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) fma_rate(float* __restrict__ out, u32 iters, float seed) {
    float a[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = seed + (float)(threadIdx.x + i);
    const float m = 0.9999f, c = 1e-4f;
    for (u32 k = 0; k < iters; ++k) {
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = fmaf(a[i], m, c);
    }
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += a[i];
    if (s == 1234.5678f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
