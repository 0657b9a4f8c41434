// cuda_emu.h: just enough of CUDA, on the host, to run kernels/*.cu without a
// GPU and check their indexing, packing and reductions (not their speed).
//
// Every CUDA thread of a block is an OS thread (from a pool kept for the
// run); blocks run one after another, so `__shared__` can be a
// function-local `static`. Before every block, each of those statics, found
// by name in the program's own symbol table (every function-local static
// object outside namespace std and the emulator's emu_* functions is taken
// to be `__shared__`: the tests must declare no other), is overwritten with garbage, as
// is the dynamic shared memory: all-ones bytes (NaN as f32 and f16), random
// bytes and quiet-NaN words in turn. A kernel that reads shared memory before
// writing it, or expects it to survive from an earlier block, gets garbage,
// as on a GPU. __syncthreads is a barrier over the block, warp shuffles
// exchange through a per-warp slot array between two barriers over the
// warp. A thread that returns early drops out of both barriers, as on the
// GPU.
//
// QUANTSCOPE_EMU_ARCH (default 800) is the compute capability the kernels see
// (gemm.cu takes its tensor-core path at >= 800); run.sh also builds with 750,
// the SIMT fallback that T4-class GPUs run.
#pragma once
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <elf.h>
#include <fstream>
#include <iterator>
#include <link.h>
#include <string>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define QUANTSCOPE_HOST_EMU 1
#ifndef QUANTSCOPE_EMU_ARCH
#define QUANTSCOPE_EMU_ARCH 800
#endif
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
    // filled with garbage before the block, like the statics.
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
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
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
inline float __fdiv_rn(float a, float b) { return a / b; }

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

// The `__shared__` statics: every function-local static object (`_ZZ...`
// symbols of type OBJECT) of this program outside namespace std and the
// emulator's own functions (named emu_*), read once
// from /proc/self/exe's symbol table and moved by the load bias (PIE).
struct EmuSharedRegion {
    unsigned char* p;
    size_t n;
    std::string name;
};
inline int emu_load_bias_cb(dl_phdr_info* info, size_t, void* out) {
    *(uintptr_t*)out = (uintptr_t)info->dlpi_addr;
    return 1;  // the first object is the program itself
}
inline const std::vector<EmuSharedRegion>& emu_shared_regions() {
    static const std::vector<EmuSharedRegion> regions = [] {
        std::vector<EmuSharedRegion> out;
        std::ifstream f("/proc/self/exe", std::ios::binary);
        const std::vector<char> img((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        auto fail = [](const char* why) {
            std::fprintf(stderr, "cuda_emu.h: cannot find the __shared__ statics: %s\n", why);
            std::exit(3);
        };
        if (img.size() < sizeof(Elf64_Ehdr) || std::memcmp(img.data(), ELFMAG, SELFMAG) != 0) fail("not an ELF file");
        Elf64_Ehdr eh;
        std::memcpy(&eh, img.data(), sizeof eh);
        if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shoff + (size_t)eh.e_shnum * sizeof(Elf64_Shdr) > img.size()) fail("not ELF64");
        std::vector<Elf64_Shdr> sh(eh.e_shnum);
        std::memcpy(sh.data(), img.data() + eh.e_shoff, sh.size() * sizeof(Elf64_Shdr));
        uintptr_t bias = 0;
        dl_iterate_phdr(emu_load_bias_cb, &bias);
        for (const Elf64_Shdr& s : sh) {
            if (s.sh_type != SHT_SYMTAB || s.sh_link >= sh.size()) continue;
            const Elf64_Shdr& strtab = sh[s.sh_link];
            for (size_t off = s.sh_offset; off + sizeof(Elf64_Sym) <= s.sh_offset + s.sh_size && off + sizeof(Elf64_Sym) <= img.size();
                 off += sizeof(Elf64_Sym)) {
                Elf64_Sym sym;
                std::memcpy(&sym, img.data() + off, sizeof sym);
                if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_size == 0 || sym.st_shndx == SHN_UNDEF) continue;
                if (strtab.sh_offset + sym.st_name >= img.size()) continue;
                const char* name = img.data() + strtab.sh_offset + sym.st_name;
                if (std::strncmp(name, "_ZZ", 3) != 0) continue;
                int status = 0;
                char* dm = abi::__cxa_demangle(name, nullptr, nullptr, &status);
                std::string readable = status == 0 && dm ? dm : name;
                std::free(dm);
                // The emulator's own statics (emu_*: this table) are not shared memory.
                if (readable.rfind("std::", 0) == 0 || readable.rfind("__gnu", 0) == 0 || readable.rfind("emu_", 0) == 0) continue;
                out.push_back({(unsigned char*)(bias + sym.st_value), (size_t)sym.st_size, readable});
            }
        }
        if (out.empty()) fail("no function-local statics in the symbol table (a stripped binary?)");
        return out;
    }();
    return regions;
}

// Garbage for shared memory before block `n` of the process: all-ones bytes
// (f32 / f16 NaN, u32 0xFFFFFFFF), random bytes, or quiet-NaN f32 words.
inline void emu_fill_garbage(unsigned char* p, size_t n, uint64_t block) {
    uint64_t s = 0x9E3779B97F4A7C15ull * (block + 1);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w;
        switch (block % 3) {
            case 0: w = ~0ull; break;
            case 1:
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                w = s;
                break;
            default: w = 0x7FC000007FC00000ull; break;
        }
        std::memcpy(p + i, &w, std::min<size_t>(8, n - i));
    }
}
inline uint64_t emu_blocks_run = 0;

// The emulated CUDA threads: a pool of OS threads kept for the whole run
// (starting 256 threads per block would dominate the run time). `run(n, f)`
// calls f(0) .. f(n - 1) on threads 0 .. n - 1 at once and returns when all
// have returned.
class EmuPool {
  public:
    ~EmuPool() {
        {
            std::lock_guard<std::mutex> g(mu_);
            stop_ = true;
            ++gen_;
        }
        start_.notify_all();
        for (auto& t : threads_) t.join();
    }
    void run(unsigned n, const std::function<void(unsigned)>& f) {
        while (threads_.size() < n) {
            const unsigned t = (unsigned)threads_.size();
            threads_.emplace_back([this, t] { work(t); });
        }
        std::unique_lock<std::mutex> lk(mu_);
        job_ = &f;
        active_ = n;
        remaining_ = n;
        ++gen_;
        start_.notify_all();
        done_.wait(lk, [&] { return remaining_ == 0; });
        job_ = nullptr;
    }

  private:
    void work(unsigned t) {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
            start_.wait(lk, [&] { return gen_ != seen; });
            seen = gen_;
            if (stop_) return;
            if (t >= active_) continue;
            const std::function<void(unsigned)>* f = job_;
            lk.unlock();
            (*f)(t);
            lk.lock();
            if (--remaining_ == 0) done_.notify_one();
        }
    }
    std::mutex mu_;
    std::condition_variable start_, done_;
    uint64_t gen_ = 0;
    bool stop_ = false;
    unsigned active_ = 0, remaining_ = 0;
    const std::function<void(unsigned)>* job_ = nullptr;
    std::vector<std::thread> threads_;
};
inline EmuPool emu_pool;

// Runs `kernel` (a callable taking no arguments) on grid x block, with
// `smem_bytes` of dynamic shared memory per block: the blocks one after
// another, each on `block` pool threads, with fresh barriers and shared
// memory full of garbage.
template <class F> void emu_launch(dim3 grid, dim3 block, F kernel, size_t smem_bytes = 0) {
    gridDim = grid;
    blockDim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                EmuBlock blk;
                blk.bar = std::make_unique<std::barrier<>>(nthreads);
                for (unsigned w = 0; w < (nthreads + 31) / 32; ++w) blk.warps.push_back(std::make_unique<EmuWarp>());
                blk.dyn_smem.assign((smem_bytes + 3) / 4, 0.f);
                emu_fill_garbage((unsigned char*)blk.dyn_smem.data(), blk.dyn_smem.size() * 4, emu_blocks_run);
                for (const EmuSharedRegion& r : emu_shared_regions()) emu_fill_garbage(r.p, r.n, emu_blocks_run);
                ++emu_blocks_run;
                emu_pool.run(nthreads, [&](unsigned t) {
                    threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    blockIdx = {bx, by, bz};
                    emu_block = &blk;
                    emu_warp = blk.warps[t / 32].get();
                    kernel();
                    emu_warp->bar.arrive_and_drop();
                    emu_block->bar->arrive_and_drop();
                });
            }
}
