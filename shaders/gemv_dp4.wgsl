// q8 GEMV with the packed 4x8 integer dot product (`dot4I8Packed`), used when
// the adapter has WGSL's packed_4x8_integer_dot_product; gemv.wgsl's gemv_q8
// is the fallback (and the path of the portable backend).
//
// Two passes:
//   quantize_input_q8: X (f32, padded rows of XS = round_up(cols, 32)) to int8
//       blocks of 16 columns, symmetric, scale = absmax / 127 per block:
//       xq = [codes: batch * XS / 4 words | scales: batch * XS / 16 f32 bits].
//       One invocation per block.
//   gemv_q8_dp4: like gemv_q8 (one workgroup of WG_SIZE per output row, one
//       16-byte chunk = 16 weights = one X block per step), but the 16
//       products are 4 dot4I8Packed on integers, scaled once by
//       weight scale x block scale. X quantization adds an error of about
//       1e-5 (NMSE) on random inputs, inside the 5e-4 of the cross-backend test.
//
// Bindings (group 0), the slots of matrix.wgsl with other views:
//   0 uniform p (MatmulParams), 1 w (vec4<u32>), 2 aux (scales as in matrix.wgsl),
//   3 xq (u32, read by gemv_q8_dp4), 4 xf (f32, read by quantize_input_q8),
//   5 unused, 6 out (u32, read_write: xq for quantize_input_q8, the f32 bits
//   of Y, rows of round_up(rows, 32), for gemv_q8_dp4).

const WG_SIZE: u32 = 64u;

// Rows of X (1..=7), set per pipeline by the host (an override constant, so
// the per-batch loops have constant bounds and unroll into registers).
override GEMV_BATCH: u32 = 1u;

struct MatmulParams {
    rows: u32,
    cols: u32,
    batch: u32,
    format: u32,
    row_stride_words: u32,
    group_len: u32,
    groups_per_row: u32,
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(3) var<storage, read> xq: array<u32>;
@group(0) @binding(4) var<storage, read> xf: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

fn x_stride() -> u32 {
    return (p.cols + 31u) & ~31u;
}

fn scale_at(g: u32) -> f32 {
    let v = f16x2(aux[16u + (g >> 1u)]);
    return select(v.x, v.y, (g & 1u) == 1u);
}

@compute @workgroup_size(256)
fn quantize_input_q8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = gid.x + gid.y * nwg.x * 256u;
    let nblk = p.batch * x_stride() / 16u;
    if blk >= nblk {
        return;
    }
    var amax = 0.0;
    for (var i = 0u; i < 16u; i++) {
        amax = max(amax, abs(xf[blk * 16u + i]));
    }
    var inv = 0.0;
    if amax > 0.0 {
        inv = 127.0 / amax;
    }
    for (var j = 0u; j < 4u; j++) {
        var v: vec4<f32>;
        for (var i = 0u; i < 4u; i++) {
            v[i] = clamp(round(xf[blk * 16u + 4u * j + i] * inv), -127.0, 127.0);
        }
        out[blk * 4u + j] = pack4xI8(vec4<i32>(v));
    }
    out[nblk * 4u + blk] = bitcast<u32>(amax / 127.0);
}

fn gemv_row(lane: Lane) {
    let r = linear_wg(lane.wid, lane.nwg);
    if r >= p.rows {
        return;
    }
    let chunks = p.row_stride_words / 4u;
    let wrow = r * chunks;
    let bpr = x_stride() / 16u; // X blocks per batch row
    let scales = p.batch * bpr * 4u;
    let nb = GEMV_BATCH;
    var acc: array<f32, 8>;
    for (var k = lane.lid; k < chunks; k += WG_SIZE) {
        let q = w[wrow + k];
        let g = r * p.groups_per_row + min(16u * k / p.group_len, p.groups_per_row - 1u);
        let s = scale_at(g);
        for (var b = 0u; b < nb; b++) {
            let blk = b * bpr + k;
            let xi = blk * 4u;
            let t = dot4I8Packed(q.x, xq[xi]) + dot4I8Packed(q.y, xq[xi + 1u])
                + dot4I8Packed(q.z, xq[xi + 2u]) + dot4I8Packed(q.w, xq[xi + 3u]);
            acc[b] += s * bitcast<f32>(xq[scales + blk]) * f32(t);
        }
    }
    let sums = row_sum8(acc, lane);
    // Y rows of round_up(rows, 32) floats: a device tensor, padding untouched.
    let ys = (p.rows + 31u) & ~31u;
    if lane.lid == 0u {
        for (var b = 0u; b < nb; b++) {
            out[b * ys + r] = bitcast<u32>(sums[b]);
        }
    }
}

fn linear_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(WG_SIZE)
fn gemv_q8_dp4(lane: Lane) {
    gemv_row(lane);
}
