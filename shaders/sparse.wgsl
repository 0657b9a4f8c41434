// Sparse and per-channel parts of a matmul, run around gemv/gemm:
//   scale_input:  X' = X ∘ act_scale (before the dense kernel; X' keeps the
//                 padded layout, padding stays 0)
//   outliers_add: Y[b][r] += Σ X'[b][col] · value over row r's outliers (after it;
//                 Y rows of y_stride(), as the dense kernels write them)
// so that Y = (X ∘ act_scale) · (dense + outliers)ᵀ.
//
// Bindings: matrix.wgsl. scale_input reads x and act, writes y (= X').
// outliers_add reads csr and x (= X'), adds into y.
// Workgroup: 256 invocations, one per element (scale_input: batch x x_stride();
// outliers_add: batch x rows), 1-D index over a 2-D dispatch.

const WG_SIZE: u32 = 256u;

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
        v = x_at(i) * act[c];
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
