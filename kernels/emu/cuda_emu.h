// cuda_emu.h: just enough of CUDA, on the host, to run kernels/*.cu without a
// GPU and check their indexing, packing and reductions (not their speed, and
// not the tensor-core path, which needs __CUDA_ARCH__ >= 800).
//
// Every CUDA thread is an OS thread; blocks run one after another, so
// `__shared__` can be a function-local `static`. __syncthreads is a barrier
// over the block, warp shuffles exchange through a per-warp slot array
// between two barriers over the warp. A thread that returns early drops out
// of both barriers, as on the GPU.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define QUANTSCOPE_HOST_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct EmuWarp {
    std::barrier<> bar{32};
    float slot[32];
    unsigned frag[32][6];
};
struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
    // `extern __shared__` memory of the launch (emu_launch's smem_bytes),
    // filled with NaN so a kernel that reads before it writes shows it.
    std::vector<float> dyn_smem;
};
inline thread_local EmuBlock* emu_block = nullptr;
inline thread_local EmuWarp* emu_warp = nullptr;
inline std::mutex emu_atomic_mutex;

inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }

// The block's dynamic shared memory (ops.cu uses it where CUDA has
// `extern __shared__ float smem[]`).
inline float* emu_dyn_smem() { return emu_block->dyn_smem.data(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
    const unsigned lane = threadIdx.x & 31u;
    emu_warp->slot[lane] = v;
    emu_warp->bar.arrive_and_wait();
    const float r = emu_warp->slot[lane ^ (unsigned)o];
    emu_warp->bar.arrive_and_wait();
    return r;
}

template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T min(T a, T b) { return a < b ? a : b; }
template <class T> inline T max(T a, T b) { return a < b ? b : a; }

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint8_t b[8];
    std::memcpy(b, &x, 4);
    std::memcpy(b + 4, &y, 4);
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)b[(s >> (4 * i)) & 7u] << (8 * i);
    return r;
}
// Built with -ffp-contract=off: plain operations round once, like the _rn intrinsics.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __frcp_rn(float a) { return 1.0f / a; }

inline double atomicAdd(double* p, double v) {
    std::lock_guard<std::mutex> g(emu_atomic_mutex);
    double old = *p;
    *p += v;
    return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    std::lock_guard<std::mutex> g(emu_atomic_mutex);
    unsigned long long old = *p;
    *p += v;
    return old;
}

// Half conversions (common.cuh uses these instead of inline PTX here).
inline float emu_h2f(uint16_t h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
}
inline uint16_t emu_f2h_rn(float x) {
    _Float16 f = (_Float16)x;
    uint16_t h;
    std::memcpy(&h, &f, 2);
    return h;
}

// mma.sync.m16n8k16.row.col.f32.f16.f16.f32 on one warp: every lane posts its
// fragments, then computes its own four outputs from the whole tiles.
inline void emu_mma_16816(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const unsigned lane = threadIdx.x & 31u;
    unsigned* f = emu_warp->frag[lane];
    f[0] = a0, f[1] = a1, f[2] = a2, f[3] = a3, f[4] = b0, f[5] = b1;
    emu_warp->bar.arrive_and_wait();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, q = l & 3u;
        const unsigned* t = emu_warp->frag[l];
        auto lo = [](unsigned v) { return emu_h2f((uint16_t)(v & 0xFFFFu)); };
        auto hi = [](unsigned v) { return emu_h2f((uint16_t)(v >> 16)); };
        A[g][2 * q] = lo(t[0]), A[g][2 * q + 1] = hi(t[0]);
        A[g + 8][2 * q] = lo(t[1]), A[g + 8][2 * q + 1] = hi(t[1]);
        A[g][2 * q + 8] = lo(t[2]), A[g][2 * q + 9] = hi(t[2]);
        A[g + 8][2 * q + 8] = lo(t[3]), A[g + 8][2 * q + 9] = hi(t[3]);
        B[2 * q][g] = lo(t[4]), B[2 * q + 1][g] = hi(t[4]);
        B[2 * q + 8][g] = lo(t[5]), B[2 * q + 9][g] = hi(t[5]);
    }
    emu_warp->bar.arrive_and_wait();
    const unsigned g = lane >> 2, q = lane & 3u;
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = g + 8 * (i >> 1), col = 2 * q + (i & 1u);
        float s = d[i];
        for (unsigned k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[i] = s;
    }
}

// Runs `kernel` (a callable taking no arguments) on grid x block, with
// `smem_bytes` of dynamic shared memory per block.
template <class F> void emu_launch(dim3 grid, dim3 block, F kernel, size_t smem_bytes = 0) {
    gridDim = grid;
    blockDim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                EmuBlock blk;
                blk.bar = std::make_unique<std::barrier<>>(nthreads);
                blk.dyn_smem.assign((smem_bytes + 3) / 4, NAN);
                for (unsigned w = 0; w < (nthreads + 31) / 32; ++w) blk.warps.push_back(std::make_unique<EmuWarp>());
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t)
                    threads.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        emu_block = &blk;
                        emu_warp = blk.warps[t / 32].get();
                        kernel();
                        emu_warp->bar.arrive_and_drop();
                        emu_block->bar->arrive_and_drop();
                    });
                for (auto& th : threads) th.join();
            }
}
