// emu_test.cpp: runs kernels/*.cu on the host (cuda_emu.h) against scalar
// references written from docs/FORMATS.md: packing and indexing of quantize,
// exact dequantize, GEMV / GEMM with odd shapes, outliers and act_scale,
// nearest-level assignment, and the forward-pass ops of ops.cu (layer norm,
// activations, add, bias_add, softmax, fused attention, take_rows) against
// f64 references on padded device-tensor layouts. Build and run with
// kernels/emu/run.sh.
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
#include "../ops.cu"

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

// Rust's `v.clamp(lo, hi) as i32` (src/format/q8.rs q8_code, q4.rs q4_code):
// NaN stays NaN through clamp and `as` turns it into 0. (std::fmin/fmax
// would turn NaN into a bound instead.)
static int rust_clamp_as_int(float v, float lo, float hi) {
    if (std::isnan(v)) return 0;
    return (int)std::min(std::max(v, lo), hi);
}

struct QuantOut {
    std::vector<u32> codes;
    std::vector<u16> scales;
    std::vector<u8> zeros;
    u32 stride;
    u32 code(int fmt, u32 r, u32 c) const {
        return fmt == FMT_Q8 ? ((const u8*)codes.data())[r * stride + c] : (codes[r * stride / 4 + c / 8] >> (4 * (c % 8))) & 15u;
    }
};

// quantize_q8 / quantize_q4 on rows x cols values, groups of glen columns
// (0: the whole row), launched as src/backend/cuda/mod.rs does.
static QuantOut run_quantize(int fmt, u32 rows, u32 cols, u32 glen_or_0, const std::vector<float>& w) {
    const u32 glen = glen_or_0 ? glen_or_0 : cols;
    const u32 gpr = div_ceil(cols, glen);
    QuantOut o;
    o.stride = row_stride_bytes(fmt, cols);
    QuantizeParams p{rows, cols, (u32)fmt, o.stride / 4, glen, gpr, 0, 0};
    o.codes.assign(rows * o.stride / 4, 0);
    o.scales.assign(rows * gpr, 0xDEAD);
    o.zeros.assign(rows * gpr, 0xAB);
    dim3 grid{div_ceil(rows * gpr, 8)}, block{256};
    if (fmt == FMT_Q8)
        emu_launch(grid, block, [&] { quantize_q8(p, w.data(), o.codes.data(), o.scales.data()); });
    else
        emu_launch(grid, block, [&] { quantize_q4(p, w.data(), o.codes.data(), o.scales.data(), o.zeros.data()); });
    return o;
}

static void test_quantize(u32 rows, u32 cols, u32 glen_or_0) {
    const u32 glen = glen_or_0 ? glen_or_0 : cols;
    const u32 gpr = div_ceil(cols, glen);
    std::vector<float> w(rows * cols);
    for (auto& v : w) v = uni(-2.f, 2.f);
    if (cols > 40) for (u32 c = 0; c < 32 && c < cols; ++c) w[c] = 0.f;  // an all-zero group in row 0
    if (rows > 1 && cols > 3) w[cols + 3] = NAN;                          // NaN: ignored by the statistics, code 0
    for (int fmt : {FMT_Q8, FMT_Q4}) {
        const QuantOut o = run_quantize(fmt, rows, cols, glen_or_0, w);
        const u32 stride = o.stride;
        // Reference (src/format/q8.rs pack_row_q8, q4.rs pack_row_q4).
        for (u32 r = 0; r < rows; ++r)
            for (u32 g = 0; g < gpr; ++g) {
                const u32 c0 = g * glen, c1 = std::min(c0 + glen, cols);
                const u32 gi = r * gpr + g;
                if (fmt == FMT_Q8) {
                    float amax = 0.f;
                    for (u32 c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(w[r * cols + c]));
                    const u16 s = emu_f2h_rn(amax * __uint_as_float(0x3C010204u));
                    CHECK(o.scales[gi] == s, "q8 scale r%u g%u: %04x vs %04x", r, g, o.scales[gi], s);
                    const float s32 = emu_h2f(s);
                    for (u32 c = c0; c < c1; ++c) {
                        int q = 0;
                        if (s32 != 0.f) q = rust_clamp_as_int(rint_even(w[r * cols + c] * (1.0f / s32)), -127.f, 127.f);
                        const int got = (int)(signed char)o.code(fmt, r, c);
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
                    if (s32 != 0.f) inv = 1.0f / s32, z = (u32)rust_clamp_as_int(rint_even(-lo * inv), 0.f, 15.f);
                    CHECK(o.scales[gi] == s && o.zeros[gi] == z, "q4 params r%u g%u", r, g);
                    for (u32 c = c0; c < c1; ++c) {
                        u32 q = z;
                        if (inv != 0.f) q = (u32)rust_clamp_as_int(rint_even(w[r * cols + c] * inv) + (float)z, 0.f, 15.f);
                        const u32 got = o.code(fmt, r, c);
                        CHECK(got == q, "q4 code r%u c%u: %u vs %u", r, c, got, q);
                    }
                }
            }
        // Padding stays zero.
        for (u32 r = 0; r < rows; ++r)
            for (u32 b = (fmt == FMT_Q8 ? cols : div_ceil(cols, 8) * 4); b < stride; ++b)
                CHECK(((const u8*)o.codes.data())[r * stride + b] == 0, "padding byte r%u b%u", r, b);
        if (fmt == FMT_Q4)
            for (u32 r = 0; r < rows; ++r)
                if (cols % 8) CHECK((o.codes[r * stride / 4 + cols / 8] >> (4 * (cols % 8))) == 0, "q4 padding nibbles row %u", r);
    }
}

// Exact ties and NaN, with the expected codes written out by hand from the
// rules of src/format/q8.rs and q4.rs (round half to even, NaN -> code 0,
// NaN ignored by absmax / min / max), not computed by a reference.
static void test_quantize_ties_and_nan() {
    struct Case { float x; int code; };
    for (u32 glen : {32u, 0u}) {
        const u32 cols = 37;  // a group of 32 + a partial one of 5, or the whole row
        // q8: absmax 7.9375 gives scale f16(7.9375 * f32(1/127)) = 1/16
        // exactly (the product is within an f16 ulp of 0.0625), inv = 16, so
        // x = (k + 0.5) / 16 is an exact tie.
        const Case q8[] = {{7.9375f, 127}, {2.5f / 16, 2}, {3.5f / 16, 4}, {-2.5f / 16, -2}, {-3.5f / 16, -4},
                           {0.5f / 16, 0}, {-0.5f / 16, 0},  {1.5f / 16, 2}, {126.5f / 16, 126}, {NAN, 0}, {-7.9375f, -127}};
        std::vector<float> w(2 * cols, 0.f);
        for (u32 i = 0; i < std::size(q8); ++i) w[i] = q8[i].x;
        for (u32 c = 0; c < cols; ++c) w[cols + c] = NAN;  // row 1: all NaN
        {
            const QuantOut o = run_quantize(FMT_Q8, 2, cols, glen, w);
            CHECK(o.scales[0] == 0x2C00, "q8 ties (group %u): scale %04x, expected 0x2C00 (1/16)", glen, o.scales[0]);
            for (u32 i = 0; i < std::size(q8); ++i)
                CHECK((int)(signed char)o.code(FMT_Q8, 0, i) == q8[i].code, "q8 tie / NaN (group %u): x = %g gives code %d, expected %d", glen,
                      q8[i].x, (int)(signed char)o.code(FMT_Q8, 0, i), q8[i].code);
            const u32 gpr = glen ? div_ceil(cols, glen) : 1;
            for (u32 g = 0; g < gpr; ++g) CHECK(o.scales[gpr + g] == 0, "q8 all-NaN group %u: scale %04x, expected 0", g, o.scales[gpr + g]);
            for (u32 c = 0; c < cols; ++c) CHECK(o.code(FMT_Q8, 1, c) == 0, "q8 all-NaN row: code %u at column %u", o.code(FMT_Q8, 1, c), c);
        }
        // q4: range [-0.5625, 1.3125] gives scale f16(1.875 * f32(1/15)) =
        // 1/8, inv = 8 and zero rne(4.5) = 4 (itself a tie); codes are
        // rne(8x) + 4, then clamped.
        const Case q4[] = {{-0.5625f, 0}, {1.3125f, 14}, {0.1875f, 6}, {0.3125f, 6}, {-0.1875f, 2}, {-0.3125f, 2},
                           {0.0625f, 4},  {-0.0625f, 4}, {NAN, 0},     {0.f, 4}};
        std::fill(w.begin(), w.begin() + cols, 0.f);
        for (u32 i = 0; i < std::size(q4); ++i) w[i] = q4[i].x;
        {
            const QuantOut o = run_quantize(FMT_Q4, 2, cols, glen, w);
            CHECK(o.scales[0] == 0x3000 && o.zeros[0] == 4, "q4 ties (group %u): scale %04x zero %u, expected 0x3000 (1/8) and 4", glen,
                  o.scales[0], o.zeros[0]);
            for (u32 i = 0; i < std::size(q4); ++i)
                CHECK((int)o.code(FMT_Q4, 0, i) == q4[i].code, "q4 tie / NaN (group %u): x = %g gives code %u, expected %d", glen, q4[i].x,
                      o.code(FMT_Q4, 0, i), q4[i].code);
            const u32 gpr = glen ? div_ceil(cols, glen) : 1;
            for (u32 g = 0; g < gpr; ++g)
                CHECK(o.scales[gpr + g] == 0 && o.zeros[gpr + g] == 0, "q4 all-NaN group %u: scale %04x zero %u, expected 0 and 0", g,
                      o.scales[gpr + g], o.zeros[gpr + g]);
            for (u32 c = 0; c < cols; ++c) CHECK(o.code(FMT_Q4, 1, c) == 0, "q4 all-NaN row: code %u at column %u", o.code(FMT_Q4, 1, c), c);
        }
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

// Y is batch rows of xstride(rows) floats: the valid columns start NaN (a
// value the kernels forget fails), the padding holds a sentinel that must
// survive (no kernel writes the padding of a device tensor).
static const float PAD_SENTINEL = -1234.5f;

static void test_matmul(const Packed& m, u32 batch) {
    const u32 xs = round_up(m.cols, 32), ys = round_up(m.rows, 32);
    std::vector<float> x(batch * xs, 0.f), xo(batch * xs, NAN), y(batch * ys, PAD_SENTINEL);
    for (u32 b = 0; b < batch; ++b) {
        for (u32 c = 0; c < m.cols; ++c) x[b * xs + c] = uni(-1, 1);
        for (u32 r = 0; r < m.rows; ++r) y[b * ys + r] = NAN;
    }
    const MatmulParams p = m.params(batch);
    const float* in = x.data();
    if (m.flags & (FLAG_ACT_SCALE | FLAG_INT8_ACT)) {
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
    // The input the weights meet, per column (`ref_weight` carries the
    // activation scale): X, or for W8A8 R(X ∘ act) / act, R the int8
    // rounding per 32-column block (dx = absmax / 127, ties to even) in f64.
    std::vector<double> xin(batch * xs, 0.0);
    for (u32 b = 0; b < batch; ++b)
        for (u32 c0 = 0; c0 < m.cols; c0 += 32) {
            const u32 c1 = std::min(c0 + 32, m.cols);
            auto act = [&](u32 c) { return (m.flags & FLAG_ACT_SCALE) ? m.act[c] : 1.0f; };
            float amax = 0;
            for (u32 c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[b * xs + c] * act(c)));
            for (u32 c = c0; c < c1; ++c) {
                double v = x[b * xs + c];
                if (m.flags & FLAG_INT8_ACT) {
                    const double dx = (double)amax / 127.0, xa = (double)(x[b * xs + c] * act(c));
                    v = amax == 0 ? 0.0 : dx * std::clamp(std::nearbyint(xa / dx), -127.0, 127.0) / act(c);
                }
                xin[b * xs + c] = v;
            }
        }
    double err = 0, norm = 0;
    int pad_bad = 0;
    for (u32 b = 0; b < batch; ++b) {
        for (u32 r = 0; r < m.rows; ++r) {
            double ref = 0;
            for (u32 c = 0; c < m.cols; ++c) ref += xin[b * xs + c] * ref_weight(m, r, c);
            const double d = y[b * ys + r] - ref;
            err += d * d, norm += ref * ref;
            if (!std::isfinite(y[b * ys + r])) err = INFINITY;
        }
        for (u32 r = m.rows; r < ys; ++r) pad_bad += y[b * ys + r] != PAD_SENTINEL;
    }
    const double nmse = err / (norm > 0 ? norm : 1);
    // The tensor-core GEMM (sm_80+) rounds X and W to f16; the SIMT one
    // (f32, bf16, and every format on sm_75) is f32 throughout.
    const bool mma = batch >= 8 && m.fmt != FMT_F32 && m.fmt != FMT_BF16 && QUANTSCOPE_EMU_ARCH >= 800;
    CHECK(nmse < (mma ? 1e-5 : 1e-9), "%s_%s %ux%u g%u batch %u flags %u: NMSE %g", batch < 8 ? "gemv" : "gemm", NAMES[m.fmt], m.rows,
          m.cols, m.glen, batch, m.flags, nmse);
    CHECK(pad_bad == 0, "%s_%s %ux%u batch %u: %d padding values of Y written", batch < 8 ? "gemv" : "gemm", NAMES[m.fmt], m.rows,
          m.cols, batch, pad_bad);
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


// ---- forward-pass ops (ops.cu) ---------------------------------------------

// A device tensor as the backend lays it out: rows x xstride(cols), padding 0.
struct Tensor {
    u32 rows, cols, stride;
    std::vector<float> d;
    Tensor(u32 r, u32 c) : rows(r), cols(c), stride(round_up(c, 32)), d((size_t)r * round_up(c, 32), 0.f) {}
    float& at(u32 r, u32 c) { return d[(size_t)r * stride + c]; }
    float at(u32 r, u32 c) const { return d[(size_t)r * stride + c]; }
    static Tensor random(u32 r, u32 c, float lo, float hi) {
        Tensor t(r, c);
        for (u32 i = 0; i < r; ++i)
            for (u32 j = 0; j < c; ++j) t.at(i, j) = uni(lo, hi);
        return t;
    }
    // An output: NaN in the valid columns, the sentinel in the padding.
    static Tensor poisoned(u32 r, u32 c) {
        Tensor t(r, c);
        for (u32 i = 0; i < r; ++i)
            for (u32 j = 0; j < t.stride; ++j) t.at(i, j) = j < c ? NAN : PAD_SENTINEL;
        return t;
    }
};

static OpParams op_params(const Tensor& y, u32 aux_rows = 0, u32 offset = 0, float eps_or_scale = 0.f) {
    return OpParams{y.rows, y.cols, y.stride, aux_rows, offset, 0, eps_or_scale, 0};
}

// NMSE of y against ref (rows x cols, row-major), NaN fails, padding intact.
static void check_op(const char* what, const Tensor& y, const std::vector<double>& ref, double bound) {
    double err = 0, norm = 0;
    int pad_bad = 0;
    for (u32 r = 0; r < y.rows; ++r) {
        for (u32 c = 0; c < y.cols; ++c) {
            const double v = y.at(r, c), e = ref[(size_t)r * y.cols + c];
            if (!std::isfinite(v)) err = INFINITY;
            err += (v - e) * (v - e), norm += e * e;
        }
        for (u32 c = y.cols; c < y.stride; ++c) pad_bad += y.at(r, c) != PAD_SENTINEL;
    }
    const double nmse = err / (norm > 0 ? norm : 1);
    CHECK(nmse <= bound, "%s %ux%u: NMSE %g (bound %g)", what, y.rows, y.cols, nmse, bound);
    CHECK(pad_bad == 0, "%s %ux%u: %d padding values written", what, y.rows, y.cols, pad_bad);
}

// Blocks of a 1-D grid-stride launch over the float4s; `one_block` makes a
// single block stride over everything.
static dim3 elem_grid(const Tensor& y, bool one_block) {
    return dim3{one_block ? 1u : std::max(1u, div_ceil(y.rows * (y.stride / 4), 256))};
}
static dim3 row_grid(u32 rows, bool one_block) { return dim3{one_block ? 1u : std::max(1u, div_ceil(rows, 8))}; }

static const double OP_NMSE = 1e-12;

static void test_layer_norm(u32 rows, u32 cols, bool one_block) {
    Tensor x = Tensor::random(rows, cols, -1.5f, 4.5f), g = Tensor::random(1, cols, 0.5f, 1.5f),
           b = Tensor::random(1, cols, -0.5f, 0.5f), y = Tensor::poisoned(rows, cols);
    const float eps = 1e-5f;
    const OpParams p = op_params(y, 0, 0, eps);
    emu_launch(row_grid(rows, one_block), dim3{256}, [&] { layer_norm(p, x.d.data(), g.d.data(), b.d.data(), y.d.data()); });
    std::vector<double> ref;
    for (u32 r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (u32 c = 0; c < cols; ++c) mean += x.at(r, c);
        mean /= cols;
        for (u32 c = 0; c < cols; ++c) var += (x.at(r, c) - mean) * (x.at(r, c) - mean);
        var /= cols;
        for (u32 c = 0; c < cols; ++c) ref.push_back((x.at(r, c) - mean) / std::sqrt(var + eps) * g.at(0, c) + b.at(0, c));
    }
    check_op("layer_norm", y, ref, OP_NMSE);
}

static void test_activations(u32 rows, u32 cols, bool one_block) {
    Tensor x = Tensor::random(rows, cols, -7.f, 7.f);
    x.at(0, 0) = 0.f;
    if (cols > 2) x.at(0, 1) = -12.f, x.at(0, 2) = 9.f;  // far tails
    for (int kind = 0; kind < 2; ++kind) {
        Tensor y = Tensor::poisoned(rows, cols);
        const OpParams p = op_params(y);
        if (kind == 0)
            emu_launch(elem_grid(y, one_block), dim3{256}, [&] { gelu(p, x.d.data(), y.d.data()); });
        else
            emu_launch(elem_grid(y, one_block), dim3{256}, [&] { quick_gelu(p, x.d.data(), y.d.data()); });
        std::vector<double> ref;
        int rel_bad = 0;
        for (u32 r = 0; r < rows; ++r)
            for (u32 c = 0; c < cols; ++c) {
                const double v = x.at(r, c);
                const double e = kind == 0 ? 0.5 * v * std::erfc(-v / std::sqrt(2.0)) : v / (1.0 + std::exp(-1.702 * v));
                ref.push_back(e);
                // Elementwise relative error as well: the NMSE alone would
                // hide a bad tail. The fit is good to ~1.2e-7 relative; in
                // f32, exp(-x^2 + p) adds ~x^2 ulps (measured: 3.6e-6 at
                // x = -6), the same on the CPU.
                const double bound = (2e-6 + 2e-7 * v * v) * std::fabs(e) + 1e-30;
                if (std::fabs(y.at(r, c) - e) > bound) {
                    if (rel_bad < 3) std::printf("  x %g: %g vs %g\n", v, y.at(r, c), e);
                    ++rel_bad;
                }
            }
        check_op(kind == 0 ? "gelu" : "quick_gelu", y, ref, OP_NMSE);
        CHECK(rel_bad == 0, "%s %ux%u: %d values off by more than (2e-6 + 2e-7 x^2) relative", kind == 0 ? "gelu" : "quick_gelu", rows, cols,
              rel_bad);
    }
}

static void test_add(u32 rows, u32 b_rows, u32 cols, bool one_block) {
    Tensor a = Tensor::random(rows, cols, -2.f, 2.f), b = Tensor::random(b_rows, cols, -2.f, 2.f), y = Tensor::poisoned(rows, cols);
    const OpParams p = op_params(y, b_rows);
    emu_launch(elem_grid(y, one_block), dim3{256}, [&] { add(p, a.d.data(), b.d.data(), y.d.data()); });
    std::vector<double> ref;
    for (u32 r = 0; r < rows; ++r)
        for (u32 c = 0; c < cols; ++c) ref.push_back((double)a.at(r, c) + b.at(r % b_rows, c));
    check_op("add", y, ref, OP_NMSE);
    // bias_add: in place on a copy of a.
    Tensor z = a, bias = Tensor::random(1, cols, -1.f, 1.f);
    for (u32 r = 0; r < rows; ++r)
        for (u32 c = cols; c < z.stride; ++c) z.at(r, c) = PAD_SENTINEL;
    const OpParams pb = op_params(z, 1);
    emu_launch(elem_grid(z, one_block), dim3{256}, [&] { bias_add(pb, bias.d.data(), z.d.data()); });
    ref.clear();
    for (u32 r = 0; r < rows; ++r)
        for (u32 c = 0; c < cols; ++c) ref.push_back((double)a.at(r, c) + bias.at(0, c));
    check_op("bias_add", z, ref, OP_NMSE);
}

static void test_take_rows(u32 x_rows, u32 cols, u32 offset, u32 step, u32 n) {
    Tensor x = Tensor::random(x_rows, cols, -3.f, 3.f), y = Tensor::poisoned(n, cols);
    const OpParams p = op_params(y, step, offset);
    emu_launch(elem_grid(y, false), dim3{256}, [&] { take_rows(p, x.d.data(), y.d.data()); });
    std::vector<double> ref;
    for (u32 i = 0; i < n; ++i)
        for (u32 c = 0; c < cols; ++c) ref.push_back(x.at(offset + i * step, c));
    check_op("take_rows", y, ref, 0.0);
}

// Softmax of `scores` over `keep` in f64; all dropped: zeros.
static void ref_softmax(std::vector<double>& s, const std::vector<bool>& keep) {
    double mx = -INFINITY;
    for (size_t j = 0; j < s.size(); ++j)
        if (keep[j]) mx = std::max(mx, s[j]);
    double sum = 0;
    for (size_t j = 0; j < s.size(); ++j) s[j] = (keep[j] && mx != -INFINITY) ? std::exp(s[j] - mx) : 0.0, sum += s[j];
    for (auto& v : s) v = sum > 0 ? v / sum : 0.0;
}

// mask_rows 0: no mask. The last mask row drops every column (a padded-out
// sequence): its rows must come out all zeros.
static void test_softmax(u32 rows, u32 cols, u32 mask_rows, bool one_block) {
    Tensor x = Tensor::random(rows, cols, -4.f, 4.f), y = Tensor::poisoned(rows, cols);
    Tensor m(std::max(mask_rows, 1u), cols);
    for (u32 r = 0; r < mask_rows; ++r)
        for (u32 c = 0; c < cols; ++c) m.at(r, c) = (r + 1 == mask_rows && mask_rows > 1) ? 0.f : (c < cols - (3 * r) % cols ? 1.f : 0.f);
    const float scale = 0.37f;
    const u32 per = mask_rows ? rows / mask_rows : 0;
    const OpParams p = op_params(y, per, 0, scale);
    emu_launch(row_grid(rows, one_block), dim3{256}, [&] { softmax(p, x.d.data(), m.d.data(), y.d.data()); });
    std::vector<double> ref;
    for (u32 r = 0; r < rows; ++r) {
        std::vector<double> s(cols);
        std::vector<bool> keep(cols, true);
        for (u32 c = 0; c < cols; ++c) {
            s[c] = (double)(scale * x.at(r, c));
            if (mask_rows) keep[c] = m.at(r / per, c) > 0.5f;
        }
        ref_softmax(s, keep);
        ref.insert(ref.end(), s.begin(), s.end());
    }
    check_op("softmax", y, ref, OP_NMSE);
}

// Attention over `seqs` sequences of S tokens, `heads` heads of d columns.
// Masked: sequence b keeps its first S - 3b % S keys (sequence 0 with holes
// at keys 2, 7, 12, ...); with several sequences the last keeps none (its
// queries must get zeros).
static void test_attention(u32 seqs, u32 S, u32 heads, u32 d, bool masked) {
    const u32 hidden = heads * d, n = seqs * S;
    Tensor q = Tensor::random(n, hidden, -2.f, 2.f), k = Tensor::random(n, hidden, -2.f, 2.f),
           v = Tensor::random(n, hidden, -2.f, 2.f), y = Tensor::poisoned(n, hidden), m(seqs, S);
    for (u32 b = 0; b < seqs; ++b)
        for (u32 j = 0; j < S; ++j)
            m.at(b, j) = (seqs > 1 && b + 1 == seqs) ? 0.f : (j < S - (3 * b) % S ? 1.f : 0.f);
    // Holes inside the kept prefix of sequence 0 (keys dropped mid-sequence).
    for (u32 j = 2; j + 1 < S; j += 5) m.at(0, j) = 0.f;
    const float scale = 1.0f / std::sqrt((float)d);
    const AttentionParams p{seqs, S, heads, d, q.stride, masked ? 1u : 0u, scale, 0};
    // The launch of src/backend/cuda/mod.rs: grid (ceil(S / 16), heads,
    // seqs), 128 threads, 16 * d4 + 32 * ldk + 17 * S floats.
    const size_t smem = (ATT_QT * (size_t)att_ldq(d) + ATT_KT * (size_t)att_ldk(d) + (ATT_QT + 1) * (size_t)S) * 4;
    emu_launch(dim3{div_ceil(S, ATT_QT), heads, seqs}, dim3{ATT_THREADS},
               [&] { attention(p, q.d.data(), k.d.data(), v.d.data(), m.d.data(), y.d.data()); }, smem);
    std::vector<double> ref((size_t)n * hidden, 0.0);
    for (u32 b = 0; b < seqs; ++b)
        for (u32 h = 0; h < heads; ++h)
            for (u32 i = 0; i < S; ++i) {
                std::vector<double> s(S);
                std::vector<bool> keep(S);
                for (u32 j = 0; j < S; ++j) {
                    double dot = 0;
                    for (u32 c = 0; c < d; ++c) dot += (double)q.at(b * S + i, h * d + c) * k.at(b * S + j, h * d + c);
                    s[j] = dot / std::sqrt((double)d);
                    keep[j] = !masked || m.at(b, j) > 0.5f;
                }
                ref_softmax(s, keep);
                for (u32 j = 0; j < S; ++j)
                    for (u32 c = 0; c < d; ++c) ref[(size_t)(b * S + i) * hidden + h * d + c] += s[j] * v.at(b * S + j, h * d + c);
            }
    char what[96];
    std::snprintf(what, sizeof what, "attention %ux%u, %u heads of %u, mask %d", seqs, S, heads, d, (int)masked);
    check_op(what, y, ref, OP_NMSE);
    if (masked && seqs > 1) {
        int nonzero = 0;
        for (u32 i = 0; i < S; ++i)
            for (u32 c = 0; c < hidden; ++c) nonzero += y.at((seqs - 1) * S + i, c) != 0.f;
        CHECK(nonzero == 0, "%s: %d outputs of the fully masked sequence are not 0", what, nonzero);
    }
}

static void test_ops(bool quick) {
    // Each emulated thread is an OS thread: --quick keeps the launches small
    // (a one-block grid striding over the big shape covers grid-stride).
    const std::vector<u32> rows = quick ? std::vector<u32>{1u, 13u} : std::vector<u32>{1u, 7u, 77u, 128u};
    const std::vector<u32> cols = quick ? std::vector<u32>{5u, 1000u} : std::vector<u32>{1u, 5u, 33u, 384u, 1000u};
    for (u32 r : rows)
        for (u32 c : cols) {
            const bool one_block = quick ? r * c > 5000 : r == 77 && c == 5;
            test_layer_norm(r, c, one_block);
            test_activations(r, c, one_block);
            test_add(r, 1, c, one_block);
            test_add(r, r, c, false);
            test_softmax(r, c, 0, one_block);
            test_softmax(2 * r, c, 2, false);
        }
    test_add(12, 3, 70, false);
    test_softmax(21, 77, 7, false);
    test_take_rows(77 * 3, 384, 0, 77, 3);
    test_take_rows(20, 1000, 3, 4, 5);
    test_take_rows(9, 5, 8, 1, 1);
    std::printf("layer_norm / gelu / quick_gelu / add / bias_add / softmax / take_rows done (%d failures)\n", failures);
    struct A { u32 seqs, S, heads, d; };
    const std::vector<A> att = quick ? std::vector<A>{{3, 7, 2, 32}, {2, 40, 1, 125}, {1, 257, 1, 64}}
                                     : std::vector<A>{{1, 1, 3, 32}, {3, 7, 2, 32}, {2, 77, 2, 64}, {2, 40, 1, 125},
                                                      {1, 128, 2, 32}, {1, 257, 1, 64}, {2, 33, 1, 256}, {1, 512, 1, 64}};
    for (const A& a : att)
        for (bool masked : {false, true}) test_attention(a.seqs, a.S, a.heads, a.d, masked);
    std::printf("attention done (%d failures)\n", failures);
}

// ---- the emulator itself ------------------------------------------------------

// Shared memory starts every block as garbage: not zero, not what the block
// before left there (cuda_emu.h fills it; a zero-filled static would hide a
// kernel that forgets to write shared memory, or expects it to persist).
static void probe_shared_kernel(u32* seen) {
    __shared__ u32 probe[64];
    if (threadIdx.x == 0) {
        u32 zeros = 0, kept = 0;
        for (u32 i = 0; i < 64; ++i) zeros += probe[i] == 0u, kept += probe[i] == 0x5EED0000u + i;
        seen[2 * blockIdx.x] = zeros;
        seen[2 * blockIdx.x + 1] = kept;
    }
    __syncthreads();
    if (threadIdx.x < 64) probe[threadIdx.x] = 0x5EED0000u + threadIdx.x;
}

static void test_emulator() {
    std::vector<u32> seen(2 * 6, 99);
    emu_launch(dim3{6}, dim3{64}, [&] { probe_shared_kernel(seen.data()); });
    for (u32 b = 0; b < 6; ++b)
        CHECK(seen[2 * b] < 64 && seen[2 * b + 1] == 0, "block %u: shared memory started with %u zero words and %u words of the block before", b,
              seen[2 * b], seen[2 * b + 1]);
    size_t bytes = 0;
    bool has_gemm_tile = false;
    for (const EmuSharedRegion& r : emu_shared_regions()) bytes += r.n, has_gemm_tile |= r.name.find("gemm_simt<0>") == 0;
    CHECK(has_gemm_tile, "the __shared__ tiles of gemm_simt<FMT_F32> are not among the statics cuda_emu.h fills");
    std::printf("%zu __shared__ arrays (%zu bytes) refilled with garbage before each block\n", emu_shared_regions().size(), bytes);
}

// Whether `part` is in the comma-separated `only` (empty: everything).
static bool wanted(const std::string& only, const char* part) {
    if (only.empty()) return true;
    const std::string p(part);
    size_t i = 0;
    while (i <= only.size()) {
        const size_t j = std::min(only.find(',', i), only.size());
        if (only.compare(i, j - i, p) == 0) return true;
        i = j + 1;
    }
    return false;
}

int main(int argc, char** argv) {
    // --quick: fewer shapes, for CI (several GEMM blocks in both directions
    // all the same); --only=quantize,matmul,assign,ops: some parts only;
    // --formats=q4,lut4: the matmul part for some formats only.
    bool quick = false;
    std::string only, formats;
    for (int i = 1; i < argc; ++i) {
        const std::string a(argv[i]);
        if (a == "--quick") quick = true;
        else if (a.rfind("--only=", 0) == 0) only = a.substr(7);
        else if (a.rfind("--formats=", 0) == 0) formats = a.substr(10);
        else {
            std::printf("usage: emu_test [--quick] [--only=quantize,matmul,assign,ops] [--formats=f32,f16,bf16,q8,q4,lut4]\n");
            return 2;
        }
    }
    std::printf("emulating sm_%d (%s GEMM for f16 / q8 / q4 / lut4)\n", QUANTSCOPE_EMU_ARCH / 10,
                QUANTSCOPE_EMU_ARCH >= 800 ? "tensor-core" : "SIMT");
    test_emulator();
    const std::vector<u32> qcols = quick ? std::vector<u32>{33u, 70u} : std::vector<u32>{1u, 31u, 32u, 70u, 129u, 300u};
    const std::vector<u32> mcols = quick ? std::vector<u32>{5u, 70u} : std::vector<u32>{1u, 5u, 33u, 70u, 256u, 300u};
    const std::vector<u32> batches = quick ? std::vector<u32>{1u, 3u, 9u} : std::vector<u32>{1u, 3u, 7u, 8u, 33u};
    if (wanted(only, "quantize")) {
        for (u32 cols : qcols)
            for (u32 g : {0u, 32u, 64u}) test_quantize(5, cols, g);
        test_quantize(37, 70, 32);  // 37 x 3 groups: 14 blocks of 8 warps
        test_quantize_ties_and_nan();
        std::printf("quantize done (%d failures)\n", failures);
    }
    if (wanted(only, "matmul")) {
        for (int fmt = 0; fmt < 6; ++fmt) {
            if (!wanted(formats, NAMES[fmt])) continue;
            for (u32 cols : mcols)
                for (u32 g : {0u, 32u, 128u}) {
                    if (fmt < FMT_Q8 && g) continue;
                    // extra: 0 plain, 1 outliers, 2 act_scale; q8 also
                    // 3 W8A8 with act_scale, 4 W8A8 alone.
                    for (int extra = 0; extra < (fmt == FMT_Q8 ? 5 : 3); ++extra) {
                        Packed m = random_packed(fmt, 13, cols, g, extra == 1, extra == 2 || extra == 3);
                        if (extra >= 3) m.flags |= FLAG_INT8_ACT;
                        test_dequantize(m);
                        for (u32 batch : batches) test_matmul(m, batch);
                    }
                }
            // Several GEMM blocks both ways: 130 rows = two full 64-row tiles
            // and a partial one, batch 40 = a full 32-row tile and a partial
            // one (batch 70 and 8: three tiles, and one at the GEMM threshold).
            const u32 g = fmt < FMT_Q8 ? 0u : 32u;
            const Packed big = random_packed(fmt, 130, 70, g, fmt == FMT_Q4, fmt == FMT_Q8);
            for (u32 batch : quick ? std::vector<u32>{8u, 40u} : std::vector<u32>{5u, 8u, 40u, 70u}) test_matmul(big, batch);
            if (!quick) {
                const Packed tall = random_packed(fmt, 257, 300, g, false, false);
                test_dequantize(tall);
                for (u32 batch : {1u, 33u}) test_matmul(tall, batch);
            }
        }
        std::printf("dequantize / gemv / gemm / sparse done (%d failures)\n", failures);
    }
    if (wanted(only, "assign")) {
        test_assign(5000, {-1.f, -0.25f, 0.f, 0.3f, 0.9f});
        std::vector<float> many;
        for (int i = 0; i < 256; ++i) many.push_back(-1.f + i / 128.f);
        test_assign(3000, many);
        std::printf("assign done (%d failures)\n", failures);
    }
    if (wanted(only, "ops")) test_ops(quick);
    std::printf(failures ? "FAILED (%d failures)\n" : "ALL OK\n", failures);
    return failures ? 1 : 0;
}
