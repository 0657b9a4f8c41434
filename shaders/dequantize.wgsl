// Dequantize a packed matrix to row-major f32 (`rows x cols`, no padding):
// the effective weights (dense + outliers) * act_scale, bit-identical to
// `QuantizedMatrix::dequantize` on the CPU.
//
// Entry points: dequantize_f32, dequantize_f16, dequantize_bf16,
//               dequantize_q8, dequantize_q4, dequantize_lut4.
// Bindings: matrix.wgsl (x unused; y = output).
// Workgroup: 256 invocations per output row; dispatch one workgroup per row
// (2-D when rows > 65535, see linear_wg). Three phases separated by storage
// barriers: dense values, then the row's outliers added (each outlier has its
// own column, so no two invocations touch one value), then the activation scale.

const WG_SIZE: u32 = 256u;

fn dequantize_row(fmt: u32, lane: Lane) {
    let r = linear_wg(lane.wid, lane.nwg);
    if r >= p.rows {
        return;
    }
    let out = r * p.cols;
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        y[out + c] = dense_at(fmt, r, c);
    }
    if (p.flags & FLAG_OUTLIERS) != 0u {
        storageBarrier();
        for (var i = csr_begin(r) + lane.lid; i < csr_begin(r + 1u); i += WG_SIZE) {
            y[out + csr_col(i)] = y[out + csr_col(i)] + csr_val(i);
        }
    }
    if (p.flags & FLAG_ACT_SCALE) != 0u {
        storageBarrier();
        for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
            y[out + c] = y[out + c] * act[c];
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_f32(lane: Lane) {
    dequantize_row(FMT_F32, lane);
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_f16(lane: Lane) {
    dequantize_row(FMT_F16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_bf16(lane: Lane) {
    dequantize_row(FMT_BF16, lane);
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_q8(lane: Lane) {
    dequantize_row(FMT_Q8, lane);
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_q4(lane: Lane) {
    dequantize_row(FMT_Q4, lane);
}

@compute @workgroup_size(WG_SIZE)
fn dequantize_lut4(lane: Lane) {
    dequantize_row(FMT_LUT4, lane);
}
