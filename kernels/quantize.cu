// quantize.cu: round-to-nearest q8 and q4 on the device, bit-identical to the
// CPU packers `format::pack_q8` / `format::pack_q4` (src/format/q8.rs, q4.rs).
//
// Reads W: rows x cols f32, row-major, unpadded.
// Writes the packed layout of common.cuh: codes (row_stride_words words per
// row; the buffer must be zeroed first, padding words are never written),
// f16 scales (u16) and, for q4, u8 zero points, one per (row, group).
//
// Launch: one warp per (row, group); blockDim = (256, 1, 1) = 8 warps,
// gridDim = (ceil(rows * groups_per_row / 8), 1, 1). Each warp reduces the
// group's statistics with shuffles, then writes whole 32-bit words of codes
// (groups are multiples of 32 columns or a whole row, so no two warps share
// a word).
//
// Bit-exactness: every rounding step is explicit (__fmul_rn, __fsub_rn,
// __frcp_rn = correctly rounded 1/x, rintf = ties to even, cvt.rn.f16.f32),
// max/min ignore NaN like Rust's f32::max/min, and NaN converts to code 0
// like Rust's `as` casts.
#include "common.cuh"

// 1/127 and 1/15 rounded to f32 (src/format/q8.rs INV_127, q4.rs INV_15).
#define INV_127 __uint_as_float(0x3C010204u)
#define INV_15 __uint_as_float(0x3D888889u)

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

// Rust `v.clamp(lo, hi) as i32` for an already rounded v: NaN -> 0.
__device__ __forceinline__ int clamp_to_int(float v, float lo, float hi) {
    if (v != v) return 0;
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return (int)v;
}

extern "C" __global__ void __launch_bounds__(256)
    quantize_q8(const QuantizeParams p, const float* __restrict__ w, u32* __restrict__ codes,
                u16* __restrict__ scales) {
    const u32 lane = threadIdx.x & 31u;
    const u64 gid = (u64)blockIdx.x * 8u + (threadIdx.x >> 5);
    if (gid >= (u64)p.rows * p.groups_per_row) return;
    const u32 r = (u32)(gid / p.groups_per_row);
    const u32 g = (u32)(gid - (u64)r * p.groups_per_row);
    const u32 c_begin = g * p.group_len;
    const u32 c_end = min(c_begin + p.group_len, p.cols);
    const float* row = w + (u64)r * p.cols;

    float amax = 0.0f;
    for (u32 c = c_begin + lane; c < c_end; c += 32u) amax = fmaxf(amax, fabsf(row[c]));
    amax = warp_max(amax);
    const u16 sh = f2h_rn(__fmul_rn(amax, INV_127));
    if (lane == 0) scales[gid] = sh;
    const float s32 = h2f(sh);
    const float inv = s32 == 0.0f ? 0.0f : __frcp_rn(s32);

    // Word i of the row holds columns 4i..4i+3 (little-endian bytes).
    u32* out = codes + (u64)r * p.row_stride_words;
    const u32 w_begin = c_begin / 4u, w_end = (c_end + 3u) / 4u;
    for (u32 wi = w_begin + lane; wi < w_end; wi += 32u) {
        u32 word = 0u;
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u32 c = 4u * wi + j;
            if (c >= c_end || s32 == 0.0f) continue;
            const int q = clamp_to_int(rintf(__fmul_rn(row[c], inv)), -127.0f, 127.0f);
            word |= ((u32)q & 0xFFu) << (8u * j);
        }
        out[wi] = word;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    quantize_q4(const QuantizeParams p, const float* __restrict__ w, u32* __restrict__ codes,
                u16* __restrict__ scales, u8* __restrict__ zeros) {
    const u32 lane = threadIdx.x & 31u;
    const u64 gid = (u64)blockIdx.x * 8u + (threadIdx.x >> 5);
    if (gid >= (u64)p.rows * p.groups_per_row) return;
    const u32 r = (u32)(gid / p.groups_per_row);
    const u32 g = (u32)(gid - (u64)r * p.groups_per_row);
    const u32 c_begin = g * p.group_len;
    const u32 c_end = min(c_begin + p.group_len, p.cols);
    const float* row = w + (u64)r * p.cols;

    float lo = __int_as_float(0x7F800000), hi = __int_as_float(0xFF800000);  // +inf, -inf
    for (u32 c = c_begin + lane; c < c_end; c += 32u) {
        lo = fminf(lo, row[c]);
        hi = fmaxf(hi, row[c]);
    }
    lo = fminf(warp_min(lo), 0.0f);
    hi = fmaxf(warp_max(hi), 0.0f);
    const u16 sh = f2h_rn(__fmul_rn(__fsub_rn(hi, lo), INV_15));
    const float s32 = h2f(sh);
    float inv = 0.0f;
    u32 z = 0u;
    if (s32 != 0.0f) {
        inv = __frcp_rn(s32);
        z = (u32)clamp_to_int(rintf(__fmul_rn(-lo, inv)), 0.0f, 15.0f);
    }
    if (lane == 0) {
        scales[gid] = sh;
        zeros[gid] = (u8)z;
    }
    const float zf = (float)z;

    // Word i of the row holds columns 8i..8i+7, column c in bits 4 (c % 8).
    u32* out = codes + (u64)r * p.row_stride_words;
    const u32 w_begin = c_begin / 8u, w_end = (c_end + 7u) / 8u;
    for (u32 wi = w_begin + lane; wi < w_end; wi += 32u) {
        u32 word = 0u;
#pragma unroll
        for (u32 j = 0; j < 8; ++j) {
            const u32 c = 8u * wi + j;
            if (c >= c_end) continue;
            u32 q = z;
            if (inv != 0.0f) q = (u32)clamp_to_int(__fadd_rn(rintf(__fmul_rn(row[c], inv)), zf), 0.0f, 15.0f);
            word |= q << (4u * j);
        }
        out[wi] = word;
    }
}
