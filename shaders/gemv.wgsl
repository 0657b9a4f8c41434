// GEMV: `Y = X · Wᵀ` for small batches (1..=8 rows of X), memory-bound.
//
// Entry points: gemv_f32, gemv_f16, gemv_bf16, gemv_q8, gemv_q4, gemv_lut4.
// Bindings: matrix.wgsl (x = input, padded rows of x_stride(); y = output).
// Workgroup: WG_SIZE = 64 invocations cooperate on one output row (all batch
// rows at once); dispatch one workgroup per row (2-D past 65535 rows).
// Each invocation walks the packed row in 16-byte chunks (one vec4<u32> load:
// 4 f32, 8 f16/bf16, 16 q8 or 32 q4/lut4 weights, always inside one group),
// multiplies with vec4 loads of X, and keeps one partial per batch row; the
// partials are summed by row_sum8 (subgroupAdd where the adapter has
// subgroups, a workgroup-memory tree otherwise).
// The activation scale and outliers are applied by sparse.wgsl around this kernel.

const WG_SIZE: u32 = 64u;

// Rows of X (1..=7), set per pipeline by the host (an override constant, so
// the per-batch loops have constant bounds and unroll into registers).
override GEMV_BATCH: u32 = 1u;

var<workgroup> codebook: array<f32, 16>;

fn gemv_row(fmt: u32, lane: Lane) {
    let r = linear_wg(lane.wid, lane.nwg);
    if fmt == FMT_LUT4 {
        if lane.lid < 16u {
            codebook[lane.lid] = level_at(lane.lid);
        }
        workgroupBarrier();
    }
    if r >= p.rows {
        return;
    }
    let chunks = p.row_stride_words / 4u;
    let wrow = r * chunks;
    let xs4 = x_stride() / 4u;
    let nb = GEMV_BATCH;
    var acc: array<f32, 8>;
    for (var k = lane.lid; k < chunks; k += WG_SIZE) {
        let q = w[wrow + k];
        switch fmt {
            case FMT_F32: {
                let wv = bitcast<vec4<f32>>(q);
                for (var b = 0u; b < nb; b++) {
                    acc[b] += dot(wv, x[b * xs4 + k]);
                }
            }
            case FMT_F16, FMT_BF16: {
                var w0: vec4<f32>;
                var w1: vec4<f32>;
                if fmt == FMT_F16 {
                    w0 = vec4<f32>(f16x2(q.x), f16x2(q.y));
                    w1 = vec4<f32>(f16x2(q.z), f16x2(q.w));
                } else {
                    w0 = vec4<f32>(bf16x2(q.x), bf16x2(q.y));
                    w1 = vec4<f32>(bf16x2(q.z), bf16x2(q.w));
                }
                for (var b = 0u; b < nb; b++) {
                    let xi = b * xs4 + 2u * k;
                    acc[b] += dot(w0, x[xi]) + dot(w1, x[xi + 1u]);
                }
            }
            case FMT_Q8: {
                let s = scale_at(group_of(r, 16u * k));
                let c0 = i8x4(q.x);
                let c1 = i8x4(q.y);
                let c2 = i8x4(q.z);
                let c3 = i8x4(q.w);
                for (var b = 0u; b < nb; b++) {
                    let xi = b * xs4 + 4u * k;
                    let t = dot(c0, x[xi]) + dot(c1, x[xi + 1u]) + dot(c2, x[xi + 2u]) + dot(c3, x[xi + 3u]);
                    acc[b] += s * t;
                }
            }
            default: {
                // q4 and lut4: 32 nibbles, column 8j+n is nibble n of word j.
                let g = group_of(r, 32u * k);
                let s = scale_at(g);
                var wv: array<vec4<f32>, 8>;
                for (var j = 0u; j < 4u; j++) {
                    let word = q[j];
                    let lo = vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(0xfu);
                    let hi = vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(0xfu);
                    if fmt == FMT_Q4 {
                        let z = vec4<f32>(zero_at(g));
                        wv[2u * j] = vec4<f32>(lo) - z;
                        wv[2u * j + 1u] = vec4<f32>(hi) - z;
                    } else {
                        wv[2u * j] = vec4<f32>(codebook[lo.x], codebook[lo.y], codebook[lo.z], codebook[lo.w]);
                        wv[2u * j + 1u] = vec4<f32>(codebook[hi.x], codebook[hi.y], codebook[hi.z], codebook[hi.w]);
                    }
                }
                for (var b = 0u; b < nb; b++) {
                    let xi = b * xs4 + 8u * k;
                    var t = 0.0;
                    for (var j = 0u; j < 8u; j++) {
                        t += dot(wv[j], x[xi + j]);
                    }
                    acc[b] += s * t;
                }
            }
        }
    }
    let sums = row_sum8(acc, lane);
    if lane.lid == 0u {
        for (var b = 0u; b < nb; b++) {
            y[b * y_stride() + r] = sums[b];
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn gemv_f32(lane: Lane) {
    gemv_row(FMT_F32, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemv_f16(lane: Lane) {
    gemv_row(FMT_F16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemv_bf16(lane: Lane) {
    gemv_row(FMT_BF16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemv_q8(lane: Lane) {
    gemv_row(FMT_Q8, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemv_q4(lane: Lane) {
    gemv_row(FMT_Q4, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemv_lut4(lane: Lane) {
    gemv_row(FMT_LUT4, lane);
}
