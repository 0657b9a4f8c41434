// GEMM: `Y = X · Wᵀ` for batches of 8 and more, with workgroup-shared tiles.
//
// Entry points: gemm_f32, gemm_f16, gemm_bf16, gemm_q8, gemm_q4, gemm_lut4.
// Bindings: matrix.wgsl (x = input, padded rows of x_stride(); y = output).
// Workgroup: 256 invocations (a 16 x 16 grid, 1-D so subgroup builtins are allowed) compute a 64 (weight rows) x 64 (batch rows)
// tile of Y, 4 x 4 outputs each; dispatch (ceil(rows/64), ceil(batch/64)).
// Per step of TK = 16 input columns the workgroup decodes a 64 x 16 tile of W
// (dense_at: one weight per load, 4 per invocation) and copies a 64 x 16 tile
// of X into workgroup memory, both stored k-major so the inner product reads
// consecutive addresses; 8 KiB of workgroup memory in all.
// The activation scale and outliers are applied by sparse.wgsl around this kernel.

const WG_SIZE: u32 = 256u;
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> w_tile: array<f32, 1024>; // [k][row]
var<workgroup> x_tile: array<f32, 1024>; // [k][batch]

fn gemm_tile(fmt: u32, lane: Lane) {
    let r0 = lane.wid.x * TILE;
    let b0 = lane.wid.y * TILE;
    let tx = lane.lid % 16u;
    let ty = lane.lid / 16u;
    let xs = x_stride();
    var acc: array<vec4<f32>, 4>; // acc[j][i]: batch b0 + ty + 16 j, row r0 + tx + 16 i
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        for (var e = lane.lid; e < TILE * TK; e += WG_SIZE) {
            let kk = e % TK;
            let rr = e / TK;
            let r = r0 + rr;
            let c = k0 + kk;
            var v = 0.0;
            if r < p.rows && c < p.cols {
                v = dense_at(fmt, r, c);
            }
            w_tile[kk * TILE + rr] = v;
            let b = b0 + rr;
            var xv = 0.0;
            if b < p.batch {
                xv = x_at(b * xs + c);
            }
            x_tile[kk * TILE + rr] = xv;
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
    for (var j = 0u; j < 4u; j++) {
        let b = b0 + ty + 16u * j;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + tx + 16u * i;
            if b < p.batch && r < p.rows {
                y[b * p.rows + r] = acc[j][i];
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
