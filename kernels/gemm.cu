// gemm.cu: Y = X · Wᵀ for batch >= 8, shared-memory tiles.
//
// Reads: the dense part (layout of common.cuh), f16 scales, u8 zero points
// (q4), the 16-float codebook (lut4); X: batch rows of xstride(cols) floats
// (zero padded, already multiplied by act_scale when the matrix has one).
// Writes Y: batch rows of xstride(rows) floats (padding columns untouched). Outliers are added afterwards by
// sparse.cu's outliers_add.
//
// Launch: blockDim = (256, 1, 1); gridDim = (ceil(rows / 64), ceil(batch / 32), 1).
// A block computes a 32 (batch) x 64 (weight rows) tile of Y, walking K in
// steps of 32 columns: each thread loads one float4 of X and decodes 8
// consecutive weights of one row (one 4..32-byte load) into shared memory as
// f32, so every weight is decoded once per block and reused by the 32 batch
// rows; each thread then accumulates a 2 x 4 block of outputs.
//
// On sm_80 and newer, gemm_f16, gemm_q8, gemm_q4 and gemm_lut4 use tensor
// cores instead (mma.sync m16n8k16, f16 inputs, f32 accumulation): weights
// are decoded to f16 and X rounded to f16 on the way into shared memory.
// Launch shape is the same.
#include "common.cuh"

#define GM_BM 32
#define GM_BN 64
#define GM_BK 32
#define GM_THREADS 256

// 8 consecutive effective dense weights of row r from column c0 (a multiple
// of 8), zero beyond `cols`.
template <int FMT>
__device__ __forceinline__ void decode8(const MatmulParams& p, const u8* __restrict__ w,
                                        const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                        const float* cb, u32 r, u32 c0, float* out) {
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = 0.0f;
    if (r >= p.rows || c0 >= p.cols) return;
    const u8* row = w + (u64)r * p.row_stride_words * 4u;
    const GroupConsts g = group_consts<FMT>(p, scales, zeros, r, c0);
    if (FMT == FMT_F32) {
        const float4* f = (const float4*)((const float*)row + c0);
        const float4 a = __ldg(f);
        out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
        // The row stride is round_up(cols, 4): the second half exists only
        // when it holds a real column.
        if (c0 + 4 < p.cols) {
            const float4 b = __ldg(f + 1);
            out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
        }
    } else if (FMT == FMT_F16 || FMT == FMT_BF16) {
        const uint4 v = __ldg((const uint4*)(row + 2u * c0));
        decode_chunk<FMT>(v, g, cb, out);
    } else if (FMT == FMT_Q8) {
        const uint2 v = __ldg((const uint2*)(row + c0));
        const u32 a = v.x ^ 0x80808080u, b = v.y ^ 0x80808080u;
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            out[j] = g.scale * s8_at(a, j);
            out[4 + j] = g.scale * s8_at(b, j);
        }
    } else {
        const u32 v = __ldg((const u32*)row + (c0 >> 3));
#pragma unroll
        for (u32 j = 0; j < 8; ++j) {
            const u32 q = (v >> (4u * j)) & 0xFu;
            out[j] = FMT == FMT_Q4 ? g.scale * ((float)q - g.zero) : g.scale * cb[q];
        }
    }
    if (c0 + 8 > p.cols) {
#pragma unroll
        for (u32 j = 0; j < 8; ++j)
            if (c0 + j >= p.cols) out[j] = 0.0f;
    }
}

template <int FMT>
__device__ __forceinline__ void gemm_simt(const MatmulParams p, const u8* __restrict__ w,
                                          const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                          const float* __restrict__ codebook, const float* __restrict__ x,
                                          float* __restrict__ y) {
    __shared__ float cb_s[16];
    __shared__ __align__(16) float xs_t[GM_BK][GM_BM + 4];
    __shared__ __align__(16) float ws_t[GM_BK][GM_BN + 4];
    load_codebook<FMT>(codebook, cb_s);
    const u32 tid = threadIdx.x;
    const u32 n0 = blockIdx.x * GM_BN, m0 = blockIdx.y * GM_BM;
    const u32 tx = tid & 15u, ty = tid >> 4;  // outputs: rows n0+4tx.., batch m0+2ty..
    const u32 xs = xstride(p.cols);
    const u32 ys = xstride(p.rows);
    // Loader roles.
    const u32 xm = tid >> 3, xk = (tid & 7u) * 4u;   // X: batch row m0+xm, columns k0+xk..+3
    const u32 wn = tid >> 2, wk = (tid & 3u) * 8u;   // W: row n0+wn, columns k0+wk..+7

    float acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (u32 k0 = 0; k0 < xs; k0 += GM_BK) {
        float4 xv = make_float4(0.f, 0.f, 0.f, 0.f);
        if (m0 + xm < p.batch) xv = __ldg((const float4*)(x + (u64)(m0 + xm) * xs + k0 + xk));
        xs_t[xk + 0][xm] = xv.x;
        xs_t[xk + 1][xm] = xv.y;
        xs_t[xk + 2][xm] = xv.z;
        xs_t[xk + 3][xm] = xv.w;
        float wv[8];
        decode8<FMT>(p, w, scales, zeros, cb_s, n0 + wn, k0 + wk, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) ws_t[wk + j][wn] = wv[j];
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < GM_BK; ++kk) {
            const float a0 = xs_t[kk][2 * ty], a1 = xs_t[kk][2 * ty + 1];
            const float4 b = *(const float4*)&ws_t[kk][4 * tx];
            acc[0][0] = fmaf(a0, b.x, acc[0][0]);
            acc[0][1] = fmaf(a0, b.y, acc[0][1]);
            acc[0][2] = fmaf(a0, b.z, acc[0][2]);
            acc[0][3] = fmaf(a0, b.w, acc[0][3]);
            acc[1][0] = fmaf(a1, b.x, acc[1][0]);
            acc[1][1] = fmaf(a1, b.y, acc[1][1]);
            acc[1][2] = fmaf(a1, b.z, acc[1][2]);
            acc[1][3] = fmaf(a1, b.w, acc[1][3]);
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 i = 0; i < 2; ++i) {
        const u32 m = m0 + 2 * ty + i;
        if (m >= p.batch) continue;
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u32 n = n0 + 4 * tx + j;
            if (n < p.rows) y[(u64)m * ys + n] = acc[i][j];
        }
    }
}

// The host emulation (kernels/emu) picks the path with QUANTSCOPE_EMU_ARCH
// (cuda_emu.h: 800 unless run.sh builds the sm_75 binary); on a GPU only
// __CUDA_ARCH__ decides.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || (defined(QUANTSCOPE_HOST_EMU) && QUANTSCOPE_EMU_ARCH >= 800)
#define GEMM_HAS_MMA 1
// Tensor-core path (sm_80+) of gemm_f16, gemm_q8, gemm_q4 and gemm_lut4: a
// block's 32 x 64 tile of Y is 8 warps, each computing a 16 x 16 sub-tile
// (two m16n8k16 MMAs per 16 columns of K), f16 inputs, f32 accumulation.
// Weights are decoded (q8 / q4 / lut4: scale applied, then rounded to f16;
// f16: copied) and X rounded to f16 on the way into shared memory, so |X| and
// |W| must stay below 65504. Shared tiles hold f16 pairs: X as [m][k]
// (row-major A), W as [n][k] (column-major B), padded by 8 halves.
#define MMA_PAD 8
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f2h_rn(lo) | ((u32)f2h_rn(hi) << 16);
}

// What one thread loads from global memory for one K step of gemm_mma: a
// float4 of X and 8 columns of one weight row (16 bytes of f16, 8 bytes of
// q8, one word of q4 / lut4) with its group constants. Loaded one step ahead
// of its use, so the loads are in flight while the tensor cores work.
struct MmaStage {
    float4 xv;
    uint4 wv;
    GroupConsts g;
};

template <int FMT>
__device__ __forceinline__ void mma_load(const MatmulParams& p, const u8* __restrict__ w,
                                         const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                         const float* __restrict__ x, u32 xs, u32 m, u32 xcol, u32 r, u32 c0,
                                         MmaStage& st) {
    st.xv = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m < p.batch) st.xv = __ldg((const float4*)(x + (u64)m * xs + xcol));
    st.wv = make_uint4(0u, 0u, 0u, 0u);
    st.g.scale = 1.0f;
    st.g.zero = 0.0f;
    if (r < p.rows && c0 < p.cols) {
        const u8* row = w + (u64)r * p.row_stride_words * 4u;
        if (FMT == FMT_F16) {
            st.wv = __ldg((const uint4*)(row + 2u * c0));
        } else if (FMT == FMT_Q8) {
            const uint2 v = __ldg((const uint2*)(row + c0));
            st.wv.x = v.x;
            st.wv.y = v.y;
        } else {
            st.wv.x = __ldg((const u32*)row + (c0 >> 3));
        }
        st.g = group_consts<FMT>(p, scales, zeros, r, c0);
    }
}

// The staged weights as 8 f16 values (4 pairs), zero beyond `cols`.
template <int FMT>
__device__ __forceinline__ uint4 mma_weights(const MatmulParams& p, const MmaStage& st, const float* cb, u32 c0) {
    if (FMT == FMT_F16) {
        u32 h[4] = {st.wv.x, st.wv.y, st.wv.z, st.wv.w};
        if (c0 + 8 > p.cols) {
            // Zero the padding halves of the last chunk (zero in storage
            // already; this keeps the kernel honest).
#pragma unroll
            for (u32 j = 0; j < 8; ++j)
                if (c0 + j >= p.cols) h[j >> 1] &= (j & 1u) ? 0x0000FFFFu : 0xFFFF0000u;
        }
        return make_uint4(h[0], h[1], h[2], h[3]);
    }
    float f[8];
    if (FMT == FMT_Q8) {
        const u32 a = st.wv.x ^ 0x80808080u, b = st.wv.y ^ 0x80808080u;
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            f[j] = st.g.scale * s8_at(a, j);
            f[4 + j] = st.g.scale * s8_at(b, j);
        }
    } else {
#pragma unroll
        for (u32 j = 0; j < 8; ++j) {
            const u32 q = (st.wv.x >> (4u * j)) & 0xFu;
            f[j] = FMT == FMT_Q4 ? st.g.scale * ((float)q - st.g.zero) : st.g.scale * cb[q];
        }
    }
    // Rows or columns out of range were staged as code 0, which need not
    // decode to 0 (q4: -zero * scale): zero them here.
#pragma unroll
    for (u32 j = 0; j < 8; ++j)
        if (c0 + j >= p.cols) f[j] = 0.0f;
    return make_uint4(pack_h2(f[0], f[1]), pack_h2(f[2], f[3]), pack_h2(f[4], f[5]), pack_h2(f[6], f[7]));
}

template <int FMT>
__device__ __forceinline__ void gemm_mma(const MatmulParams p, const u8* __restrict__ w,
                                         const u16* __restrict__ scales, const u8* __restrict__ zeros,
                                         const float* __restrict__ codebook, const float* __restrict__ x,
                                         float* __restrict__ y) {
    __shared__ float cb_s[16];
    __shared__ __align__(16) u16 xa[GM_BM][GM_BK + MMA_PAD];
    __shared__ __align__(16) u16 wb[GM_BN][GM_BK + MMA_PAD];
    load_codebook<FMT>(codebook, cb_s);
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 n0 = blockIdx.x * GM_BN, m0 = blockIdx.y * GM_BM;
    const u32 wm = (warp & 1u) * 16u;   // warp's batch offset in the tile
    const u32 wn = (warp >> 1) * 16u;   // warp's row offset in the tile
    const u32 xs = xstride(p.cols);
    const u32 ys = xstride(p.rows);
    const u32 xm = tid >> 3, xk = (tid & 7u) * 4u;   // X loader: row, 4 columns
    const u32 ln = tid >> 2, lk = (tid & 3u) * 8u;   // W loader: row, 8 columns
    const u32 grp = lane >> 2, qid = lane & 3u;      // mma fragment coordinates
    const u32 r = n0 + ln;

    float acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    MmaStage st;
    mma_load<FMT>(p, w, scales, zeros, x, xs, m0 + xm, xk, r, lk, st);
    for (u32 k0 = 0; k0 < xs; k0 += GM_BK) {
        *(uint2*)&xa[xm][xk] = make_uint2(pack_h2(st.xv.x, st.xv.y), pack_h2(st.xv.z, st.xv.w));
        const uint4 wv = r < p.rows ? mma_weights<FMT>(p, st, cb_s, k0 + lk) : make_uint4(0u, 0u, 0u, 0u);
        *(uint4*)&wb[ln][lk] = wv;
        __syncthreads();
        // Next step's loads go out now and land while the MMAs run.
        if (k0 + GM_BK < xs)
            mma_load<FMT>(p, w, scales, zeros, x, xs, m0 + xm, k0 + GM_BK + xk, r, k0 + GM_BK + lk, st);
#pragma unroll
        for (u32 kk = 0; kk < GM_BK; kk += 16) {
            // A fragment (16 x 16, row-major): rows grp and grp + 8, columns
            // 2 qid (+1) and 2 qid + 8 (+1).
            const u32 a0 = *(const u32*)&xa[wm + grp][kk + 2 * qid];
            const u32 a1 = *(const u32*)&xa[wm + grp + 8][kk + 2 * qid];
            const u32 a2 = *(const u32*)&xa[wm + grp][kk + 2 * qid + 8];
            const u32 a3 = *(const u32*)&xa[wm + grp + 8][kk + 2 * qid + 8];
#pragma unroll
            for (u32 t = 0; t < 2; ++t) {
                // B fragment (16 x 8, column-major): column grp, rows 2 qid (+1)
                // and 2 qid + 8 (+1); column n of B is weight row n.
                const u32 nn = wn + 8 * t + grp;
                const u32 b0 = *(const u32*)&wb[nn][kk + 2 * qid];
                const u32 b1 = *(const u32*)&wb[nn][kk + 2 * qid + 8];
                mma_16816(acc[t], a0, a1, a2, a3, b0, b1);
            }
        }
        __syncthreads();
    }
    // C fragment: c0, c1 at row grp, columns 2 qid, 2 qid + 1; c2, c3 at row grp + 8.
#pragma unroll
    for (u32 t = 0; t < 2; ++t) {
#pragma unroll
        for (u32 h = 0; h < 2; ++h) {
            const u32 m = m0 + wm + grp + 8 * h;
            if (m >= p.batch) continue;
#pragma unroll
            for (u32 e = 0; e < 2; ++e) {
                const u32 n = n0 + wn + 8 * t + 2 * qid + e;
                if (n < p.rows) y[(u64)m * ys + n] = acc[t][2 * h + e];
            }
        }
    }
}
#endif

#define GEMM_ENTRY(NAME, IMPL, FMT)                                                                       \
    extern "C" __global__ void __launch_bounds__(GM_THREADS) NAME(                                        \
        const MatmulParams p, const u8* __restrict__ w, const u16* __restrict__ scales,                   \
        const u8* __restrict__ zeros, const float* __restrict__ codebook, const float* __restrict__ x,    \
        float* __restrict__ y) {                                                                          \
        IMPL<FMT>(p, w, scales, zeros, codebook, x, y);                                                   \
    }

// f32 and bf16 stay on the SIMT path (f16 would cut their range / precision).
GEMM_ENTRY(gemm_f32, gemm_simt, FMT_F32)
GEMM_ENTRY(gemm_bf16, gemm_simt, FMT_BF16)
#ifdef GEMM_HAS_MMA
GEMM_ENTRY(gemm_f16, gemm_mma, FMT_F16)
GEMM_ENTRY(gemm_q8, gemm_mma, FMT_Q8)
GEMM_ENTRY(gemm_q4, gemm_mma, FMT_Q4)
GEMM_ENTRY(gemm_lut4, gemm_mma, FMT_LUT4)
#else
GEMM_ENTRY(gemm_f16, gemm_simt, FMT_F16)
GEMM_ENTRY(gemm_q8, gemm_simt, FMT_Q8)
GEMM_ENTRY(gemm_q4, gemm_simt, FMT_Q4)
GEMM_ENTRY(gemm_lut4, gemm_simt, FMT_LUT4)
#endif
