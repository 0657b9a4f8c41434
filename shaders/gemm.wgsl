// GEMM: `Y = X · Wᵀ` for batches of 8 and more, with workgroup-shared tiles.
//
// Entry points: gemm_f32, gemm_f16, gemm_bf16, gemm_q8, gemm_q4, gemm_lut4.
// Bindings: matrix.wgsl (x = input, padded rows of x_stride(); y = output).
// Workgroup: 256 invocations (a 16 x 16 grid, 1-D so subgroup builtins are allowed) compute a 64 (weight rows) x 64 (batch rows)
// tile of Y, 4 x 4 outputs each; dispatch (ceil(rows/64), ceil(batch/64)).
// Per step of TK = 16 input columns the workgroup decodes a 64 x 16 tile of W
// (load_w_tile: a code word per invocation for q4/lut4/q8, one weight per load
// for plain formats) and copies a 64 x 16 tile of X into workgroup memory, both stored k-major so the inner product reads
// consecutive addresses; 8 KiB of workgroup memory in all.
// The activation scale and outliers are applied by sparse.wgsl around this kernel.

const WG_SIZE: u32 = 256u;
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> w_tile: array<f32, 1024>; // [k][row]
var<workgroup> x_tile: array<f32, 1024>; // [k][batch]

// Decodes W[r0 .. r0+64][k0 .. k0+16] into w_tile. Packed formats decode a
// whole code word per invocation (q4/lut4: 8 weights, 128 invocations;
// q8: 4 weights, 256 invocations); plain formats one weight at a time.
fn load_w_tile(fmt: u32, r0: u32, k0: u32, lid: u32) {
    if fmt == FMT_Q4 || fmt == FMT_LUT4 {
        if lid < TILE * 2u {
            let rr = lid / 2u;
            let c0 = k0 + 8u * (lid % 2u);
            let r = r0 + rr;
            var word = 0u;
            var s = 0.0;
            var z = 0.0;
            if r < p.rows {
                word = word_at(r * p.row_stride_words + c0 / 8u);
                let g = group_of(r, c0);
                s = scale_at(g);
                if fmt == FMT_Q4 {
                    z = zero_at(g);
                }
            }
            for (var n = 0u; n < 8u; n++) {
                let q = (word >> (4u * n)) & 0xfu;
                var v = 0.0;
                if r < p.rows && c0 + n < p.cols {
                    if fmt == FMT_Q4 {
                        v = (f32(q) - z) * s;
                    } else {
                        v = level_at(q) * s;
                    }
                }
                w_tile[(c0 - k0 + n) * TILE + rr] = v;
            }
        }
        return;
    }
    if fmt == FMT_Q8 {
        let rr = lid / 4u;
        let c0 = k0 + 4u * (lid % 4u);
        let r = r0 + rr;
        var codes = vec4<f32>(0.0);
        var s = 0.0;
        if r < p.rows {
            codes = i8x4(word_at(r * p.row_stride_words + c0 / 4u));
            s = scale_at(group_of(r, c0));
        }
        for (var n = 0u; n < 4u; n++) {
            var v = 0.0;
            if r < p.rows && c0 + n < p.cols {
                v = codes[n] * s;
            }
            w_tile[(c0 - k0 + n) * TILE + rr] = v;
        }
        return;
    }
    for (var e = lid; e < TILE * TK; e += WG_SIZE) {
        let kk = e % TK;
        let rr = e / TK;
        let r = r0 + rr;
        let c = k0 + kk;
        var v = 0.0;
        if r < p.rows && c < p.cols {
            v = dense_at(fmt, r, c);
        }
        w_tile[kk * TILE + rr] = v;
    }
}

fn gemm_tile(fmt: u32, lane: Lane) {
    let r0 = lane.wid.x * TILE;
    let b0 = lane.wid.y * TILE;
    let tx = lane.lid % 16u;
    let ty = lane.lid / 16u;
    let xs = x_stride();
    var acc: array<vec4<f32>, 4>; // acc[j][i]: batch b0 + ty + 16 j, row r0 + tx + 16 i
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        load_w_tile(fmt, r0, k0, lane.lid);
        for (var e = lane.lid; e < TILE * TK; e += WG_SIZE) {
            let kk = e % TK;
            let b = b0 + e / TK;
            var xv = 0.0;
            if b < p.batch {
                xv = x_at(b * xs + k0 + kk);
            }
            x_tile[kk * TILE + e / TK] = xv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let wv = vec4<f32>(
                w_tile[kk * TILE + tx],
                w_tile[kk * TILE + tx + 16u],
                w_tile[kk * TILE + tx + 32u],
                w_tile[kk * TILE + tx + 48u],
            );
            for (var j = 0u; j < 4u; j++) {
                acc[j] += wv * x_tile[kk * TILE + ty + 16u * j];
            }
        }
        workgroupBarrier();
    }
    let ys = y_stride();
    for (var j = 0u; j < 4u; j++) {
        let b = b0 + ty + 16u * j;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + tx + 16u * i;
            if b < p.batch && r < p.rows {
                y[b * ys + r] = acc[j][i];
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn gemm_f32(lane: Lane) {
    gemm_tile(FMT_F32, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemm_f16(lane: Lane) {
    gemm_tile(FMT_F16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemm_bf16(lane: Lane) {
    gemm_tile(FMT_BF16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemm_q8(lane: Lane) {
    gemm_tile(FMT_Q8, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemm_q4(lane: Lane) {
    gemm_tile(FMT_Q4, lane);
}

@compute @workgroup_size(WG_SIZE)
fn gemm_lut4(lane: Lane) {
    gemm_tile(FMT_LUT4, lane);
}
