// emu_test.cpp: runs kernels/*.cu on the host (cuda_emu.h) against scalar
// references written from docs/FORMATS.md: packing and indexing of quantize,
// exact dequantize, GEMV / GEMM with odd shapes, outliers and act_scale,
// nearest-level assignment. Build and run with kernels/emu/run.sh.
#include "cuda_emu.h"

#include <cstdio>
#include <random>
#include <string>

#include "../quantize.cu"
#include "../dequantize.cu"
#include "../gemv.cu"
#include "../gemm.cu"
#include "../sparse.cu"
#include "../assign.cu"

static int failures = 0;
#define CHECK(cond, ...)                          \
    do {                                          \
        if (!(cond)) {                            \
            ++failures;                           \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);             \
            std::printf("\n");                    \
        }                                         \
    } while (0)

static std::mt19937 rng(12345);
static float uni(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }

static u32 div_ceil(u32 a, u32 b) { return (a + b - 1) / b; }
static u32 round_up(u32 a, u32 b) { return div_ceil(a, b) * b; }

static u32 row_stride_bytes(int fmt, u32 cols) {
    u32 raw = fmt == FMT_F32 ? cols * 4 : (fmt == FMT_F16 || fmt == FMT_BF16) ? cols * 2 : fmt == FMT_Q8 ? cols : div_ceil(cols, 2);
    return round_up(raw, 16);
}

static float rint_even(float x) { return std::nearbyint(x); }

// ---- quantize ---------------------------------------------------------------

static void test_quantize(u32 rows, u32 cols, u32 glen_or_0) {
    const u32 glen = glen_or_0 ? glen_or_0 : cols;
    const u32 gpr = div_ceil(cols, glen);
    std::vector<float> w(rows * cols);
    for (auto& v : w) v = uni(-2.f, 2.f);
    if (cols > 40) for (u32 c = 0; c < 32 && c < cols; ++c) w[c] = 0.f;  // an all-zero group in row 0
    for (int fmt : {FMT_Q8, FMT_Q4}) {
        const u32 stride = row_stride_bytes(fmt, cols);
        QuantizeParams p{rows, cols, (u32)fmt, stride / 4, glen, gpr, 0, 0};
        std::vector<u32> codes(rows * stride / 4, 0);
        std::vector<u16> scales(rows * gpr);
        std::vector<u8> zeros(rows * gpr);
        dim3 grid{div_ceil(rows * gpr, 8)}, block{256};
        if (fmt == FMT_Q8)
            emu_launch(grid, block, [&] { quantize_q8(p, w.data(), codes.data(), scales.data()); });
        else
            emu_launch(grid, block, [&] { quantize_q4(p, w.data(), codes.data(), scales.data(), zeros.data()); });
        // Reference.
        for (u32 r = 0; r < rows; ++r)
            for (u32 g = 0; g < gpr; ++g) {
                const u32 c0 = g * glen, c1 = std::min(c0 + glen, cols);
                const u32 gi = r * gpr + g;
                if (fmt == FMT_Q8) {
                    float amax = 0.f;
                    for (u32 c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(w[r * cols + c]));
                    const u16 s = emu_f2h_rn(amax * __uint_as_float(0x3C010204u));
                    CHECK(scales[gi] == s, "q8 scale r%u g%u: %04x vs %04x", r, g, scales[gi], s);
                    const float s32 = emu_h2f(s);
                    for (u32 c = c0; c < c1; ++c) {
                        int q = 0;
                        if (s32 != 0.f) q = (int)std::fmin(std::fmax(rint_even(w[r * cols + c] * (1.0f / s32)), -127.f), 127.f);
                        const int got = (int)(signed char)((const u8*)codes.data())[r * stride + c];
                        CHECK(got == q, "q8 code r%u c%u: %d vs %d", r, c, got, q);
                    }
                } else {
                    float lo = INFINITY, hi = -INFINITY;
                    for (u32 c = c0; c < c1; ++c) lo = std::fmin(lo, w[r * cols + c]), hi = std::fmax(hi, w[r * cols + c]);
                    lo = std::fmin(lo, 0.f), hi = std::fmax(hi, 0.f);
                    const u16 s = emu_f2h_rn((hi - lo) * __uint_as_float(0x3D888889u));
                    const float s32 = emu_h2f(s);
                    u32 z = 0;
                    float inv = 0.f;
                    if (s32 != 0.f) inv = 1.0f / s32, z = (u32)std::fmin(std::fmax(rint_even(-lo * inv), 0.f), 15.f);
                    CHECK(scales[gi] == s && zeros[gi] == z, "q4 params r%u g%u", r, g);
                    for (u32 c = c0; c < c1; ++c) {
                        u32 q = z;
                        if (inv != 0.f) q = (u32)std::fmin(std::fmax(rint_even(w[r * cols + c] * inv) + (float)z, 0.f), 15.f);
                        const u32 got = (codes[r * stride / 4 + c / 8] >> (4 * (c % 8))) & 15u;
                        CHECK(got == q, "q4 code r%u c%u: %u vs %u", r, c, got, q);
                    }
                }
            }
        // Padding stays zero.
        for (u32 r = 0; r < rows; ++r)
            for (u32 b = (fmt == FMT_Q8 ? cols : div_ceil(cols, 8) * 4); b < stride; ++b)
                CHECK(((const u8*)codes.data())[r * stride + b] == 0, "padding byte r%u b%u", r, b);
        if (fmt == FMT_Q4)
            for (u32 r = 0; r < rows; ++r)
                if (cols % 8) CHECK((codes[r * stride / 4 + cols / 8] >> (4 * (cols % 8))) == 0, "q4 padding nibbles row %u", r);
    }
}

// ---- a random packed matrix -------------------------------------------------

struct Packed {
    int fmt;
    u32 rows, cols, glen, gpr, stride;
    std::vector<u32> dense;  // rows * stride bytes
    std::vector<u16> scales;
    std::vector<u8> zeros;
    std::vector<float> codebook;
    std::vector<u32> row_ptr, col_idx;
    std::vector<u16> ovals;
    std::vector<float> act;
    u32 flags = 0;
    MatmulParams params(u32 batch) const { return {rows, cols, batch, (u32)fmt, stride / 4, glen, gpr, flags}; }
    const u8* bytes() const { return (const u8*)dense.data(); }
};

static Packed random_packed(int fmt, u32 rows, u32 cols, u32 glen_or_0, bool outliers, bool act) {
    Packed m;
    m.fmt = fmt, m.rows = rows, m.cols = cols;
    m.glen = glen_or_0 ? glen_or_0 : cols;
    m.gpr = div_ceil(cols, m.glen);
    m.stride = row_stride_bytes(fmt, cols);
    m.dense.assign(rows * m.stride / 4, 0);
    u8* b = (u8*)m.dense.data();
    for (u32 r = 0; r < rows; ++r)
        for (u32 c = 0; c < cols; ++c) {
            u8* row = b + r * m.stride;
            switch (fmt) {
                case FMT_F32: { float v = uni(-1, 1); std::memcpy(row + 4 * c, &v, 4); break; }
                case FMT_F16: { u16 h = emu_f2h_rn(uni(-1, 1)); std::memcpy(row + 2 * c, &h, 2); break; }
                case FMT_BF16: { float v = uni(-1, 1); u32 u; std::memcpy(&u, &v, 4); u16 h = u >> 16; std::memcpy(row + 2 * c, &h, 2); break; }
                case FMT_Q8: row[c] = (u8)(int8_t)(int)(rng() % 255 - 127); break;
                default: row[c / 2] |= (u8)((rng() % 16) << (4 * (c % 2))); break;
            }
        }
    m.scales.resize(rows * m.gpr);
    m.zeros.resize(rows * m.gpr);
    for (auto& s : m.scales) s = emu_f2h_rn(uni(0.001f, 0.1f));
    for (auto& z : m.zeros) z = rng() % 16;
    m.codebook.resize(16);
    for (int i = 0; i < 16; ++i) m.codebook[i] = -1.f + i * (2.f / 15.f);
    m.row_ptr.push_back(0);
    for (u32 r = 0; r < rows; ++r) {
        if (outliers)
            for (u32 c = r % 3; c < cols; c += 7 + r % 5) {
                m.col_idx.push_back(c);
                m.ovals.push_back(emu_f2h_rn(uni(-4, 4)));
            }
        m.row_ptr.push_back((u32)m.col_idx.size());
    }
    if (outliers) m.flags |= FLAG_OUTLIERS;
    if (act) {
        m.flags |= FLAG_ACT_SCALE;
        for (u32 c = 0; c < cols; ++c) m.act.push_back(uni(0.5f, 2.f));
    }
    if (m.col_idx.empty()) m.col_idx.push_back(0), m.ovals.push_back(0);
    if (m.act.empty()) m.act.push_back(0);
    return m;
}

// Reference effective weight, same single roundings as the CPU backend.
static float ref_weight(const Packed& m, u32 r, u32 c) {
    const u8* row = m.bytes() + r * m.stride;
    float v;
    const u32 gi = r * m.gpr + c / m.glen;
    switch (m.fmt) {
        case FMT_F32: std::memcpy(&v, row + 4 * c, 4); break;
        case FMT_F16: { u16 h; std::memcpy(&h, row + 2 * c, 2); v = emu_h2f(h); break; }
        case FMT_BF16: { u16 h; std::memcpy(&h, row + 2 * c, 2); u32 u = (u32)h << 16; std::memcpy(&v, &u, 4); break; }
        case FMT_Q8: v = (float)(int8_t)row[c] * emu_h2f(m.scales[gi]); break;
        default: {
            const u32 q = (row[c / 2] >> (4 * (c % 2))) & 15u;
            v = m.fmt == FMT_Q4 ? ((float)q - (float)m.zeros[gi]) * emu_h2f(m.scales[gi]) : m.codebook[q] * emu_h2f(m.scales[gi]);
        }
    }
    if (m.flags & FLAG_OUTLIERS)
        for (u32 i = m.row_ptr[r]; i < m.row_ptr[r + 1]; ++i)
            if (m.col_idx[i] == c) v += emu_h2f(m.ovals[i]);
    if (m.flags & FLAG_ACT_SCALE) v *= m.act[c];
    return v;
}

static const char* NAMES[] = {"f32", "f16", "bf16", "q8", "q4", "lut4"};

static void test_dequantize(const Packed& m) {
    std::vector<float> out(m.rows * m.cols, NAN);
    const MatmulParams p = m.params(0);
    auto k = [&](auto fn) {
        emu_launch(dim3{div_ceil(m.rows * m.cols, 256)}, dim3{256}, [&] {
            fn(p, m.bytes(), m.scales.data(), m.zeros.data(), m.codebook.data(), m.row_ptr.data(), m.col_idx.data(),
               m.ovals.data(), m.act.data(), out.data());
        });
    };
    switch (m.fmt) {
        case FMT_F32: k(dequantize_f32); break;
        case FMT_F16: k(dequantize_f16); break;
        case FMT_BF16: k(dequantize_bf16); break;
        case FMT_Q8: k(dequantize_q8); break;
        case FMT_Q4: k(dequantize_q4); break;
        default: k(dequantize_lut4);
    }
    int bad = 0;
    for (u32 r = 0; r < m.rows; ++r)
        for (u32 c = 0; c < m.cols; ++c) {
            const float a = out[r * m.cols + c], b = ref_weight(m, r, c);
            if (std::memcmp(&a, &b, 4) != 0 && bad++ < 3)
                CHECK(false, "dequantize_%s %ux%u g%u flags %u at (%u,%u): %g vs %g", NAMES[m.fmt], m.rows, m.cols, m.glen, m.flags, r, c, a, b);
        }
}

static void test_matmul(const Packed& m, u32 batch) {
    const u32 xs = round_up(m.cols, 32);
    std::vector<float> x(batch * xs, 0.f), xo(batch * xs, NAN), y(batch * m.rows, NAN);
    for (u32 b = 0; b < batch; ++b)
        for (u32 c = 0; c < m.cols; ++c) x[b * xs + c] = uni(-1, 1);
    const MatmulParams p = m.params(batch);
    const float* in = x.data();
    if (m.flags & FLAG_ACT_SCALE) {
        emu_launch(dim3{div_ceil(batch * xs, 256)}, dim3{256}, [&] { scale_input(p, x.data(), m.act.data(), xo.data()); });
        in = xo.data();
    }
    auto run = [&](auto fn, dim3 grid) {
        emu_launch(grid, dim3{256}, [&] { fn(p, m.bytes(), m.scales.data(), m.zeros.data(), m.codebook.data(), in, y.data()); });
    };
    if (batch < 8) {
        // Rows per warp as in src/backend/cuda/mod.rs gemv_rows_per_warp;
        // also a one-block grid, which must stride over the rows.
        const u32 rpw = (m.fmt == FMT_Q4 || m.fmt == FMT_LUT4) ? 4 : m.fmt == FMT_Q8 ? 2 : 1;
        dim3 g{(batch == 3) ? 1u : div_ceil(m.rows, 8 * rpw)};
        void (*fns[])(MatmulParams, const u8*, const u16*, const u8*, const float*, const float*, float*) = {
            gemv_f32, gemv_f16, gemv_bf16, gemv_q8, gemv_q4, gemv_lut4};
        run(fns[m.fmt], g);
    } else {
        dim3 g{div_ceil(m.rows, 64), div_ceil(batch, 32)};
        void (*fns[])(MatmulParams, const u8*, const u16*, const u8*, const float*, const float*, float*) = {
            gemm_f32, gemm_f16, gemm_bf16, gemm_q8, gemm_q4, gemm_lut4};
        run(fns[m.fmt], g);
    }
    if (m.flags & FLAG_OUTLIERS)
        emu_launch(dim3{div_ceil(batch * m.rows, 256)}, dim3{256},
                   [&] { outliers_add(p, m.row_ptr.data(), m.col_idx.data(), m.ovals.data(), in, y.data()); });
    double err = 0, norm = 0;
    for (u32 b = 0; b < batch; ++b)
        for (u32 r = 0; r < m.rows; ++r) {
            double ref = 0;
            for (u32 c = 0; c < m.cols; ++c) ref += (double)x[b * xs + c] * ref_weight(m, r, c);
            const double d = y[b * m.rows + r] - ref;
            err += d * d, norm += ref * ref;
            if (!std::isfinite(y[b * m.rows + r])) err = INFINITY;
        }
    const double nmse = err / (norm > 0 ? norm : 1);
    // The tensor-core GEMM rounds X and W to f16.
    const bool mma = batch >= 8 && m.fmt != FMT_F32 && m.fmt != FMT_BF16;
    CHECK(nmse < (mma ? 1e-5 : 1e-9), "%s_%s %ux%u g%u batch %u flags %u: NMSE %g", batch < 8 ? "gemv" : "gemm", NAMES[m.fmt], m.rows,
          m.cols, m.glen, batch, m.flags, nmse);
}

static void test_assign(u32 n, std::vector<float> levels) {
    std::vector<float> v(n);
    for (auto& x : v) x = uni(-1.5f, 1.5f);
    v[0] = 0.5f * (levels[0] + levels[1]);  // an exact tie goes to the lower index
    AssignParams p{n, (u32)levels.size(), 1, 0};
    std::vector<u8> codes(n, 255);
    const u32 blocks = std::min(div_ceil(n, 256), 1024u);
    std::vector<double> sums(blocks * levels.size());
    std::vector<unsigned long long> counts(blocks * levels.size());
    emu_launch(dim3{blocks}, dim3{256}, [&] { assign_levels(p, v.data(), levels.data(), codes.data()); });
    emu_launch(dim3{blocks}, dim3{256}, [&] { reduce_levels(p, v.data(), codes.data(), sums.data(), counts.data()); });
    std::vector<double> rs(levels.size(), 0);
    std::vector<unsigned long long> rc(levels.size(), 0);
    for (u32 i = 0; i < n; ++i) {
        u32 best = 0;
        for (u32 j = 1; j < levels.size(); ++j)
            if (std::fabs(v[i] - levels[j]) < std::fabs(v[i] - levels[best])) best = j;
        // Binary search over midpoints (ties to the lower index).
        u32 lo = 0, hi = levels.size() - 1;
        while (lo < hi) { u32 mid = (lo + hi) / 2; if (v[i] <= 0.5f * (levels[mid] + levels[mid + 1])) hi = mid; else lo = mid + 1; }
        CHECK(codes[i] == lo, "assign code %u: %u vs %u", i, codes[i], lo);
        CHECK(std::fabs(v[i] - levels[lo]) <= std::fabs(v[i] - levels[best]), "not nearest at %u", i);
        rs[lo] += v[i], rc[lo] += 1;
    }
    for (u32 j = 0; j < levels.size(); ++j) {
        double s = 0;
        unsigned long long c = 0;
        for (u32 b = 0; b < blocks; ++b) s += sums[b * levels.size() + j], c += counts[b * levels.size() + j];
        CHECK(c == rc[j] && std::fabs(s - rs[j]) < 1e-9 * (1 + std::fabs(rs[j])), "level %u: %llu vs %llu", j, c, rc[j]);
    }
}

int main(int argc, char** argv) {
    // --quick: fewer shapes (about a quarter of the time), for CI.
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    const std::vector<u32> qcols = quick ? std::vector<u32>{33u, 70u} : std::vector<u32>{1u, 31u, 32u, 70u, 129u, 300u};
    const std::vector<u32> mcols = quick ? std::vector<u32>{5u, 70u} : std::vector<u32>{1u, 5u, 33u, 70u, 256u, 300u};
    const std::vector<u32> batches = quick ? std::vector<u32>{1u, 3u, 9u} : std::vector<u32>{1u, 3u, 7u, 8u, 33u};
    for (u32 cols : qcols)
        for (u32 g : {0u, 32u, 64u}) test_quantize(5, cols, g);
    std::printf("quantize done (%d failures)\n", failures);
    for (int fmt = 0; fmt < 6; ++fmt)
        for (u32 cols : mcols)
            for (u32 g : {0u, 32u, 128u}) {
                if (fmt < FMT_Q8 && g) continue;
                for (int extra = 0; extra < 3; ++extra) {
                    const Packed m = random_packed(fmt, 13, cols, g, extra == 1, extra == 2);
                    test_dequantize(m);
                    for (u32 batch : batches) test_matmul(m, batch);
                }
            }
    std::printf("dequantize / gemv / gemm / sparse done (%d failures)\n", failures);
    test_assign(5000, {-1.f, -0.25f, 0.f, 0.3f, 0.9f});
    std::vector<float> many;
    for (int i = 0; i < 256; ++i) many.push_back(-1.f + i / 128.f);
    test_assign(3000, many);
    std::printf("assign done (%d failures)\n", failures);
    std::printf(failures ? "FAILED\n" : "ALL OK\n");
    return failures ? 1 : 0;
}
