// Sparse and per-channel parts of a matmul, run around gemv/gemm:
//   scale_input:  X' = X ∘ act_scale (FLAG_ACT_SCALE), then for a W8A8
//                 matrix (FLAG_INT8_ACT) every 32-column block of each row
//                 rounded to int8 as the CPU does (src/backend/cpu/act.rs):
//                 dx = absmax / 127, X' = dx · clamp(round(X' · 127 / absmax)),
//                 ties to even, a block with a non-finite value all NaN
//                 (before the dense kernel; X' keeps the padded layout,
//                 padding stays 0)
//   outliers_add: Y[b][r] += Σ X'[b][col] · value over row r's outliers (after it;
//                 Y rows of y_stride(), as the dense kernels write them)
// so that Y = R(X ∘ act_scale) · (dense + outliers)ᵀ, R the identity unless W8A8.
//
// Bindings: matrix.wgsl. scale_input reads x and act, writes y (= X').
// outliers_add reads csr and x (= X'), adds into y.
// Workgroup: 256 invocations, one per element (scale_input: batch x x_stride();
// outliers_add: batch x rows), 1-D index over a 2-D dispatch. W8A8: each
// invocation reads its block's 32 values for the absmax (cache hits; the
// pass is a small part of the matmul it feeds).

const WG_SIZE: u32 = 256u;

// X ∘ act_scale at column c of the row starting at `row`.
fn scaled_x(row: u32, c: u32) -> f32 {
    var v = x_at(row + c);
    if (p.flags & FLAG_ACT_SCALE) != 0u {
        v *= act[c];
    }
    return v;
}

@compute @workgroup_size(WG_SIZE)
fn scale_input(lane: Lane) {
    let i = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    let xs = x_stride();
    if i >= p.batch * xs {
        return;
    }
    let c = i % xs;
    var v = 0.0;
    if c < p.cols {
        let row = i - c;
        v = scaled_x(row, c);
        if (p.flags & FLAG_INT8_ACT) != 0u {
            let b0 = c & ~31u;
            let b1 = min(b0 + 32u, p.cols);
            var amax = 0.0;
            var bad = 0.0;
            var special = false;
            for (var j = b0; j < b1; j++) {
                let u = scaled_x(row, j);
                if (bitcast<u32>(u) & 0x7f800000u) == 0x7f800000u {
                    special = true;
                    bad = u;
                }
                amax = max(amax, abs(u));
            }
            if special {
                // inf - inf and NaN - NaN are NaN: the block fails downstream.
                v = bad - bad;
            } else if amax > 0.0 {
                v = (amax / 127.0) * clamp(round(v * (127.0 / amax)), -127.0, 127.0);
            } else {
                v = 0.0;
            }
        }
    }
    y[i] = v;
}

@compute @workgroup_size(WG_SIZE)
fn outliers_add(lane: Lane) {
    let i = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if i >= p.batch * p.rows {
        return;
    }
    let b = i / p.rows;
    let r = i % p.rows;
    let xrow = b * x_stride();
    var t = 0.0;
    for (var k = csr_begin(r); k < csr_begin(r + 1u); k++) {
        t += x_at(xrow + csr_col(k)) * csr_val(k);
    }
    y[b * y_stride() + r] += t;
}
