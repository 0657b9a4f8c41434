// ops.cu: the forward-pass ops of a transformer encoder on device tensors
// (src/backend/ops.rs has the semantics; shaders/ops.wgsl is the twin).
//
// Layout: a device tensor is `rows x stride` floats, stride = xstride(cols)
// (a multiple of 32, so every row starts 128-byte aligned and float4 loads
// never straddle rows); the padding columns are zero and no kernel here
// writes them. Every kernel reads its inputs and writes its output whole;
// `bias_add` is the one in-place kernel (y += bias, after a Linear).
//
// Entries and launch shapes (src/backend/cuda/mod.rs launches them):
//   layer_norm   one warp per row, 8 rows per 256-thread block, grid-stride
//   gelu, quick_gelu, add, bias_add, take_rows
//                one float4 of a row per thread, 1-D grid-stride, 256 threads
//   softmax      one warp per row, 8 rows per 256-thread block, grid-stride
//   attention    one 128-thread block per (query tile of 16, head, sequence):
//                grid (ceil(seq_len / 16), heads, seqs), dynamic shared
//                memory att_smem_floats() * 4 bytes (see below)
#include "common.cuh"

#define OPS_WARPS 8
// -inf without math.h (NVRTC compiles these files with no header).
#define NEG_INF __uint_as_float(0xFF800000u)

// ---- helpers ----------------------------------------------------------------

// `v` (float4 `k` of a row) with the components at columns >= cols set to 0
// (the padding is zero already; masking keeps the reductions honest
// regardless).
__device__ __forceinline__ float4 mask4(float4 v, u32 k, u32 cols) {
    const u32 c0 = 4u * k;
    if (c0 + 4u > cols) {
        if (c0 + 0u >= cols) v.x = 0.0f;
        if (c0 + 1u >= cols) v.y = 0.0f;
        if (c0 + 2u >= cols) v.z = 0.0f;
        if (c0 + 3u >= cols) v.w = 0.0f;
    }
    return v;
}

// Float4 `k` of a read-only row (through the read-only data cache), masked.
__device__ __forceinline__ float4 load4_masked(const float* __restrict__ row, u32 k, u32 cols) {
    return mask4(__ldg((const float4*)row + k), k, cols);
}

// Stores the valid components of `v` at columns 4k .. 4k + 3 of a row: a
// float4 store inside the row, scalar stores in the last, partial float4,
// nothing in the padding.
__device__ __forceinline__ void store4_valid(float* __restrict__ row, u32 k, u32 cols, float4 v) {
    const u32 c0 = 4u * k;
    if (c0 + 4u <= cols) {
        ((float4*)row)[k] = v;
        return;
    }
    if (c0 + 0u < cols) row[c0 + 0u] = v.x;
    if (c0 + 1u < cols) row[c0 + 1u] = v.y;
    if (c0 + 2u < cols) row[c0 + 2u] = v.z;
}

// erfc(x) for x >= 0, the Chebyshev fit of Numerical Recipes §6.2 (fractional
// error < 1.2e-7), exactly as src/backend/cpu/ops.rs `erfc_pos` and
// shaders/ops.wgsl compute it, so the three backends agree to rounding.
__device__ __forceinline__ float erfc_pos(float x) {
    const float t = 1.0f / (1.0f + 0.5f * x);
    const float p =
        -1.26551223f +
        t * (1.00002368f +
             t * (0.37409196f +
                  t * (0.09678418f +
                       t * (-0.18628806f +
                            t * (0.27886807f +
                                 t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
    return t * expf(-x * x + p);
}

// GELU, erf form: 0.5 x erfc(-x / √2), from erfc of a non-negative argument
// on both sides so both tails keep their relative precision.
__device__ __forceinline__ float gelu_f(float x) {
    const float z = x * 0.70710678118654752f;
    return z >= 0.0f ? 0.5f * x * (2.0f - erfc_pos(z)) : 0.5f * x * erfc_pos(-z);
}

// x · σ(1.702 x).
__device__ __forceinline__ float quick_gelu_f(float x) { return x / (1.0f + expf(-1.702f * x)); }

template <int KIND>
__device__ __forceinline__ float act_f(float x) {
    return KIND == 0 ? gelu_f(x) : quick_gelu_f(x);
}

// ---- layer norm -------------------------------------------------------------

// y = (x - mean) / sqrt(var + eps) * gamma + beta per row, biased variance,
// two passes (mean, then the centred sum of squares) like the CPU. A warp
// owns a row: lane l reads float4s l, l + 32, ... (512 contiguous bytes per
// warp step), the sums are reduced with shuffles; the second and third passes
// read the row again from L1. `eps_or_scale` is eps.
extern "C" __global__ void __launch_bounds__(256)
    layer_norm(const OpParams p, const float* __restrict__ x, const float* __restrict__ gamma,
               const float* __restrict__ beta, float* __restrict__ y) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 n4 = (p.cols + 3u) / 4u;
    const float inv_n = 1.0f / (float)p.cols;
    for (u64 r = (u64)blockIdx.x * OPS_WARPS + warp; r < p.rows; r += (u64)gridDim.x * OPS_WARPS) {
        const float* xr = x + r * p.stride;
        float s = 0.0f;
        for (u32 k = lane; k < n4; k += 32u) {
            const float4 v = load4_masked(xr, k, p.cols);
            s += (v.x + v.y) + (v.z + v.w);
        }
        const float mean = warp_sum(s) * inv_n;
        float q = 0.0f;
        for (u32 k = lane; k < n4; k += 32u) {
            const float4 v = load4_masked(xr, k, p.cols);
            const u32 c0 = 4u * k;
            // Masked columns would add mean^2 each: leave them out.
            const float d0 = v.x - mean;
            const float d1 = c0 + 1u < p.cols ? v.y - mean : 0.0f;
            const float d2 = c0 + 2u < p.cols ? v.z - mean : 0.0f;
            const float d3 = c0 + 3u < p.cols ? v.w - mean : 0.0f;
            q += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
        const float var = warp_sum(q) * inv_n;
        const float inv = 1.0f / sqrtf(var + p.eps_or_scale);
        float* yr = y + r * p.stride;
        for (u32 k = lane; k < n4; k += 32u) {
            const float4 v = load4_masked(xr, k, p.cols);
            const float4 g = load4_masked(gamma, k, p.cols);
            const float4 b = load4_masked(beta, k, p.cols);
            float4 o;
            o.x = (v.x - mean) * inv * g.x + b.x;
            o.y = (v.y - mean) * inv * g.y + b.y;
            o.z = (v.z - mean) * inv * g.z + b.z;
            o.w = (v.w - mean) * inv * g.w + b.w;
            store4_valid(yr, k, p.cols, o);
        }
    }
}

// ---- elementwise ------------------------------------------------------------

// Row r and float4 k of the flat float4 index i of a `rows x stride`
// tensor; false for a float4 wholly in the padding (nothing to do there).
__device__ __forceinline__ bool float4_at(const OpParams& p, u64 i, u64& r, u32& k) {
    const u32 n4 = p.stride / 4u;
    r = i / n4;
    k = (u32)(i - r * n4);
    return 4u * k < p.cols;
}

// Float4s of the whole tensor: rows * stride / 4.
__device__ __forceinline__ u64 float4_count(const OpParams& p) { return (u64)p.rows * (p.stride / 4u); }

// 1-D grid-stride loop over i in [0, n).
#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

template <int KIND>
__device__ __forceinline__ void activation_impl(const OpParams& p, const float* __restrict__ x,
                                                float* __restrict__ y) {
    GRID_STRIDE(i, float4_count(p)) {
        u64 r;
        u32 k;
        if (!float4_at(p, i, r, k)) continue;
        const float4 v = load4_masked(x + r * p.stride, k, p.cols);
        float4 o;
        o.x = act_f<KIND>(v.x);
        o.y = act_f<KIND>(v.y);
        o.z = act_f<KIND>(v.z);
        o.w = act_f<KIND>(v.w);
        store4_valid(y + r * p.stride, k, p.cols, o);
    }
}

// y = gelu(x) (erf form).
extern "C" __global__ void __launch_bounds__(256)
    gelu(const OpParams p, const float* __restrict__ x, float* __restrict__ y) {
    activation_impl<0>(p, x, y);
}

// y = x · σ(1.702 x).
extern "C" __global__ void __launch_bounds__(256)
    quick_gelu(const OpParams p, const float* __restrict__ x, float* __restrict__ y) {
    activation_impl<1>(p, x, y);
}

// y = a + b, row r of b = r % aux_rows (a bias row, or position embeddings
// repeated over the sequences of a batch).
extern "C" __global__ void __launch_bounds__(256)
    add(const OpParams p, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y) {
    GRID_STRIDE(i, float4_count(p)) {
        u64 r;
        u32 k;
        if (!float4_at(p, i, r, k)) continue;
        const float4 u = load4_masked(a + r * p.stride, k, p.cols);
        const float4 v = load4_masked(b + (r % p.aux_rows) * p.stride, k, p.cols);
        store4_valid(y + r * p.stride, k, p.cols, make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w));
    }
}

// y += bias (one row, broadcast), in place: the bias of a Linear, after its
// matmul wrote y. Each thread reads and writes its own float4.
extern "C" __global__ void __launch_bounds__(256)
    bias_add(const OpParams p, const float* __restrict__ bias, float* __restrict__ y) {
    GRID_STRIDE(i, float4_count(p)) {
        u64 r;
        u32 k;
        if (!float4_at(p, i, r, k)) continue;
        float* yr = y + r * p.stride;
        // A plain load: y is written by this kernel (not for __ldg).
        const float4 u = mask4(((const float4*)yr)[k], k, p.cols);
        const float4 v = load4_masked(bias, k, p.cols);
        store4_valid(yr, k, p.cols, make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w));
    }
}

// y[i] = x[offset + i * aux_rows] for the `rows` rows of y.
extern "C" __global__ void __launch_bounds__(256)
    take_rows(const OpParams p, const float* __restrict__ x, float* __restrict__ y) {
    GRID_STRIDE(i, float4_count(p)) {
        u64 r;
        u32 k;
        if (!float4_at(p, i, r, k)) continue;
        const u64 src = (u64)p.offset + r * p.aux_rows;
        store4_valid(y + r * p.stride, k, p.cols, load4_masked(x + src * p.stride, k, p.cols));
    }
}

// ---- softmax ----------------------------------------------------------------

// Per row: y = softmax(scale · x) over the columns the mask keeps (mask row
// r / aux_rows, value > 0.5 keeps; aux_rows = 0: no mask, `mask` unread);
// dropped columns get exactly 0, a row with none kept is all zeros. A warp
// owns a row (coalesced scalar loads; the three passes read it from L1):
// max, sum of exp, then the normalized write. `eps_or_scale` is the scale.
extern "C" __global__ void __launch_bounds__(256)
    softmax(const OpParams p, const float* __restrict__ x, const float* __restrict__ mask, float* __restrict__ y) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const float scale = p.eps_or_scale;
    for (u64 r = (u64)blockIdx.x * OPS_WARPS + warp; r < p.rows; r += (u64)gridDim.x * OPS_WARPS) {
        const float* xr = x + r * p.stride;
        const float* mr = p.aux_rows ? mask + (r / p.aux_rows) * p.stride : nullptr;
        float* yr = y + r * p.stride;
        float mx = NEG_INF;
        for (u32 c = lane; c < p.cols; c += 32u)
            if (!mr || mr[c] > 0.5f) mx = fmaxf(mx, scale * xr[c]);
        mx = warp_max(mx);
        if (mx == NEG_INF) {
            for (u32 c = lane; c < p.cols; c += 32u) yr[c] = 0.0f;
            continue;
        }
        float s = 0.0f;
        for (u32 c = lane; c < p.cols; c += 32u)
            if (!mr || mr[c] > 0.5f) s += expf(scale * xr[c] - mx);
        const float inv = 1.0f / warp_sum(s);
        for (u32 c = lane; c < p.cols; c += 32u)
            yr[c] = (!mr || mr[c] > 0.5f) ? expf(scale * xr[c] - mx) * inv : 0.0f;
    }
}

// ---- attention --------------------------------------------------------------

// Fused multi-head attention: y = softmax(q · kᵀ · scale, masked keys
// dropped) · v per (sequence, head), the scores of a tile of ATT_QT queries
// against every key in shared memory. Head h of row t is columns
// h·d .. h·d + d - 1 of q, k, v, y (d = head_dim, rows of `stride` floats);
// the mask (has_mask) is one row of xstride(seq_len) floats per sequence.
//
// Block of 128 threads (4 warps) for queries i0 .. i0 + 15 of head h of
// sequence b. Shared memory (dynamic, floats; d4 = d rounded up to 4, the
// extra columns zero):
//   qs[ATT_QT][d4]   the query tile
//   kv[ATT_KT][ldk]  a tile of 32 keys, later of 32 values; ldk = d rounded
//                    up to 8, plus 4: a multiple of 4 that is 4 mod 8, so the
//                    8 lanes of each quarter-warp phase of a 16-byte load of
//                    their own key rows hit 8 distinct groups of 4 banks
//   sc[ATT_QT][S]    scores, then probabilities
//   keep[S]          1 where the key is kept
// 1. scores: per key tile, lane j of warp w computes the dot products of key
//    j with queries 4w .. 4w + 3, 4 columns per step: one 16-byte load of
//    its key row and four broadcast 16-byte loads of the queries per 16
//    FMAs; times `scale`.
// 2. softmax of each score row by one warp (max, exp, sum by shuffles),
//    masked keys 0, a query with no key kept all zeros.
// 3. y = P · V: per value tile, lane l of warp w accumulates columns
//    l, l + 32, ... of queries 4w .. 4w + 3 (MC = ceil(d / 32) columns per
//    lane, a compile-time count so the accumulators stay in registers).
// Every phase stops at the last kept key: the tiles of padding keys are
// skipped.
// Scores are O(ATT_QT · S) shared floats: S up to 512 at d = 64 fits in 48 KB
// (the launch raises the limit beyond that, up to the device's opt-in size).
#define ATT_THREADS 128
#define ATT_QT 16
#define ATT_KT 32
#define ATT_MAX_D 256

// Row lengths (floats) of the qs and kv tiles; `attention_smem_bytes` in
// src/backend/cuda/mod.rs sizes the shared memory with the same formulas.
__device__ __forceinline__ u32 att_ldq(u32 d) { return (d + 3u) & ~3u; }
__device__ __forceinline__ u32 att_ldk(u32 d) { return ((d + 7u) & ~7u) + 4u; }

// Rows j0 .. j0 + nk - 1 of head `col0` of `src` into a kv tile, columns
// d .. d4 - 1 zero (they meet the zero columns of the query tile).
__device__ __forceinline__ void att_load_tile(const AttentionParams& p, const float* __restrict__ src, u64 row0,
                                              u32 col0, u32 j0, u32 nk, float* kv) {
    const u32 d = p.head_dim, d4 = att_ldq(d), ldk = att_ldk(d);
    for (u32 t = threadIdx.x; t < nk * d4; t += ATT_THREADS) {
        const u32 j = t / d4, c = t - j * d4;
        kv[j * ldk + c] = c < d ? src[(row0 + j0 + j) * p.stride + col0 + c] : 0.0f;
    }
}

template <u32 MC>
__device__ __forceinline__ void attention_impl(const AttentionParams& p, const float* __restrict__ q,
                                               const float* __restrict__ k, const float* __restrict__ v,
                                               const float* __restrict__ mask, float* __restrict__ y,
                                               float* smem) {
    const u32 S = p.seq_len, d = p.head_dim, d4 = att_ldq(d), ldk = att_ldk(d);
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 i0 = blockIdx.x * ATT_QT, h = blockIdx.y, b = blockIdx.z;
    float* qs = smem;
    float* kv = qs + ATT_QT * d4;
    float* sc = kv + ATT_KT * ldk;
    float* keep = sc + ATT_QT * S;
    const u64 row0 = (u64)b * S;  // first row of the sequence
    const u32 col0 = h * d;       // first column of the head

    // Query tile (rows past the sequence are zeros, their outputs unwritten)
    // and the key mask.
    for (u32 t = tid; t < ATT_QT * d4; t += ATT_THREADS) {
        const u32 i = t / d4, c = t - i * d4;
        qs[i * d4 + c] = (i0 + i < S && c < d) ? q[(row0 + i0 + i) * p.stride + col0 + c] : 0.0f;
    }
    for (u32 j = tid; j < S; j += ATT_THREADS)
        keep[j] = (!p.has_mask || mask[(u64)b * xstride(S) + j] > 0.5f) ? 1.0f : 0.0f;
    __syncthreads();
    // Keys past the last kept one add nothing: every loop below stops at
    // s_eff (the padding of a batch of short sentences costs no work). Every
    // warp computes the same value, so the loops stay block-uniform.
    float last = -1.0f;
    for (u32 j = lane; j < S; j += 32u)
        if (keep[j] != 0.0f) last = (float)j;  // exact: S < 2^24
    const u32 s_eff = (u32)(warp_max(last) + 1.0f);

    // 1. Scores.
    const u32 qi = 4u * warp;  // this warp's first query in the tile
    for (u32 j0 = 0; j0 < s_eff; j0 += ATT_KT) {
        const u32 nk = min((u32)ATT_KT, s_eff - j0);
        __syncthreads();  // kv free (previous tile consumed)
        att_load_tile(p, k, row0, col0, j0, nk, kv);
        __syncthreads();
        if (lane < nk) {
            const float4* kr = (const float4*)(kv + lane * ldk);
            const float4* qr = (const float4*)(qs + qi * d4);  // 4 rows, n4 float4s apart
            const u32 n4 = d4 / 4u;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (u32 c4 = 0; c4 < n4; ++c4) {
                const float4 kc = kr[c4];
                const float4 u0 = qr[c4], u1 = qr[n4 + c4], u2 = qr[2u * n4 + c4], u3 = qr[3u * n4 + c4];
                a0 = fmaf(u0.x, kc.x, fmaf(u0.y, kc.y, fmaf(u0.z, kc.z, fmaf(u0.w, kc.w, a0))));
                a1 = fmaf(u1.x, kc.x, fmaf(u1.y, kc.y, fmaf(u1.z, kc.z, fmaf(u1.w, kc.w, a1))));
                a2 = fmaf(u2.x, kc.x, fmaf(u2.y, kc.y, fmaf(u2.z, kc.z, fmaf(u2.w, kc.w, a2))));
                a3 = fmaf(u3.x, kc.x, fmaf(u3.y, kc.y, fmaf(u3.z, kc.z, fmaf(u3.w, kc.w, a3))));
            }
            const u32 j = j0 + lane;
            sc[(qi + 0u) * S + j] = p.scale * a0;
            sc[(qi + 1u) * S + j] = p.scale * a1;
            sc[(qi + 2u) * S + j] = p.scale * a2;
            sc[(qi + 3u) * S + j] = p.scale * a3;
        }
    }
    __syncthreads();

    // 2. Softmax of each row (warp w: rows 4w .. 4w + 3, as it wrote them)
    // over keys < s_eff (the scores beyond were never computed or read).
    for (u32 ii = 0; ii < 4u; ++ii) {
        float* row = sc + (qi + ii) * S;
        float mx = NEG_INF;
        for (u32 j = lane; j < s_eff; j += 32u)
            if (keep[j] != 0.0f) mx = fmaxf(mx, row[j]);
        mx = warp_max(mx);
        float s = 0.0f;
        for (u32 j = lane; j < s_eff; j += 32u) {
            const float e = (mx != NEG_INF && keep[j] != 0.0f) ? expf(row[j] - mx) : 0.0f;
            row[j] = e;
            s += e;
        }
        s = warp_sum(s);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (u32 j = lane; j < s_eff; j += 32u) row[j] *= inv;
    }

    // 3. y = P · V.
    float acc[4][MC];
#pragma unroll
    for (u32 ii = 0; ii < 4u; ++ii)
#pragma unroll
        for (u32 m = 0; m < MC; ++m) acc[ii][m] = 0.0f;
    for (u32 j0 = 0; j0 < s_eff; j0 += ATT_KT) {
        const u32 nk = min((u32)ATT_KT, s_eff - j0);
        __syncthreads();  // kv free, probabilities written
        att_load_tile(p, v, row0, col0, j0, nk, kv);
        __syncthreads();
        for (u32 j = 0; j < nk; ++j) {
            float pj[4];
#pragma unroll
            for (u32 ii = 0; ii < 4u; ++ii) pj[ii] = sc[(qi + ii) * S + j0 + j];
            const float* vr = kv + j * ldk;
#pragma unroll
            for (u32 m = 0; m < MC; ++m) {
                const u32 c = lane + 32u * m;
                const float vc = c < d ? vr[c] : 0.0f;
#pragma unroll
                for (u32 ii = 0; ii < 4u; ++ii) acc[ii][m] = fmaf(pj[ii], vc, acc[ii][m]);
            }
        }
    }
#pragma unroll
    for (u32 ii = 0; ii < 4u; ++ii) {
        const u32 i = i0 + qi + ii;
        if (i >= S) continue;
        float* yr = y + (row0 + i) * p.stride + col0;
#pragma unroll
        for (u32 m = 0; m < MC; ++m) {
            const u32 c = lane + 32u * m;
            if (c < d) yr[c] = acc[ii][m];
        }
    }
}

#ifdef QUANTSCOPE_HOST_EMU
#define ATT_DYN_SMEM float* att_smem = emu_dyn_smem();
#else
#define ATT_DYN_SMEM extern __shared__ float att_smem[];
#endif

// Launch: grid (ceil(seq_len / 16), heads, seqs), 128 threads, dynamic
// shared memory 16 · d4 + 32 · ldk + 17 · seq_len floats; head_dim <= 256.
extern "C" __global__ void __launch_bounds__(ATT_THREADS, 4)
    attention(const AttentionParams p, const float* __restrict__ q, const float* __restrict__ k,
              const float* __restrict__ v, const float* __restrict__ mask, float* __restrict__ y) {
    ATT_DYN_SMEM
    switch ((p.head_dim + 31u) / 32u) {
        case 1: attention_impl<1>(p, q, k, v, mask, y, att_smem); break;
        case 2: attention_impl<2>(p, q, k, v, mask, y, att_smem); break;
        case 3: attention_impl<3>(p, q, k, v, mask, y, att_smem); break;
        case 4: attention_impl<4>(p, q, k, v, mask, y, att_smem); break;
        case 5: attention_impl<5>(p, q, k, v, mask, y, att_smem); break;
        case 6: attention_impl<6>(p, q, k, v, mask, y, att_smem); break;
        case 7: attention_impl<7>(p, q, k, v, mask, y, att_smem); break;
        case 8: attention_impl<8>(p, q, k, v, mask, y, att_smem); break;
        default: break;  // head_dim > ATT_MAX_D: refused by the host (supports)
    }
}
