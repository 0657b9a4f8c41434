// Shared prelude of dequantize.wgsl, gemv.wgsl, gemm.wgsl and sparse.wgsl:
// the parameter block, the bindings of one packed matrix and the decoders.
//
// Bindings (group 0), identical for the four kernel families:
//   0  uniform  p          MatmulParams (src/backend/params.rs, same fields, same order)
//   1  storage  w          dense part, the packed rows of docs/FORMATS.md, read as
//                          vec4<u32> (every row starts on 16 bytes)
//   2  storage  aux        [16 codebook f32 | scales: f16 pairs, ceil(G/2) words |
//                          zeros: u8 quads, ceil(G/4) words], G = rows * groups_per_row
//   3  storage  csr        outliers: [row_ptr rows+1 | col_idx nnz | values f16 pairs]
//   4  storage  act        per-input-channel activation scale (cols f32)
//   5  storage  x          input, `batch` rows of XS = round_up(cols, 32) f32, zero padded
//   6  storage  y          output (read_write), `batch` rows of YS = round_up(rows, 32) f32
//                          (a device tensor; padding never written) (dequantize: rows x cols, unpadded)
// Absent parts are bound to a small dummy buffer and never read (flags say).

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

const FLAG_OUTLIERS: u32 = 1u;
const FLAG_ACT_SCALE: u32 = 2u;
const FLAG_INT8_ACT: u32 = 4u;

const FMT_F32: u32 = 0u;
const FMT_F16: u32 = 1u;
const FMT_BF16: u32 = 2u;
const FMT_Q8: u32 = 3u;
const FMT_Q4: u32 = 4u;
const FMT_LUT4: u32 = 5u;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(3) var<storage, read> csr: array<u32>;
@group(0) @binding(4) var<storage, read> act: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

// Row stride of the device input X in f32 (a multiple of 32, so that every
// packed chunk of the widest format reads zeros past `cols`).
fn x_stride() -> u32 {
    return (p.cols + 31u) & ~31u;
}

// Row stride of the output Y in f32: Y is a device tensor of `rows` columns,
// padded like X, so it feeds the next matmul as is.
fn y_stride() -> u32 {
    return (p.rows + 31u) & ~31u;
}

fn x_at(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

// Linear workgroup index of a 2-D dispatch (x wraps at 65535 workgroups).
fn linear_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn word_at(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

// Group index of column c in row r; padding columns of a `Row` group stay in
// the last group so they never index past the scales.
fn group_of(r: u32, c: u32) -> u32 {
    return r * p.groups_per_row + min(c / p.group_len, p.groups_per_row - 1u);
}

fn scale_at(g: u32) -> f32 {
    let v = f16x2(aux[16u + (g >> 1u)]);
    return select(v.x, v.y, (g & 1u) == 1u);
}

fn zero_at(g: u32) -> f32 {
    let base = 16u + (p.rows * p.groups_per_row + 1u) / 2u;
    return f32((aux[base + (g >> 2u)] >> ((g & 3u) * 8u)) & 0xffu);
}

fn level_at(i: u32) -> f32 {
    return bitcast<f32>(aux[i]);
}

fn bf16x2(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// One dense weight, exactly as the CPU reference computes it
// (`code * scale`, `(code - zero) * scale`, `codebook[code] * scale`).
fn dense_at(fmt: u32, r: u32, c: u32) -> f32 {
    let base = r * p.row_stride_words;
    switch fmt {
        case FMT_F32: {
            return bitcast<f32>(word_at(base + c));
        }
        case FMT_F16: {
            let v = f16x2(word_at(base + (c >> 1u)));
            return select(v.x, v.y, (c & 1u) == 1u);
        }
        case FMT_BF16: {
            let v = bf16x2(word_at(base + (c >> 1u)));
            return select(v.x, v.y, (c & 1u) == 1u);
        }
        case FMT_Q8: {
            let code = i8x4(word_at(base + (c >> 2u)))[c & 3u];
            return code * scale_at(group_of(r, c));
        }
        case FMT_Q4: {
            let q = f32((word_at(base + (c >> 3u)) >> ((c & 7u) * 4u)) & 0xfu);
            let g = group_of(r, c);
            return (q - zero_at(g)) * scale_at(g);
        }
        default: {
            let q = (word_at(base + (c >> 3u)) >> ((c & 7u) * 4u)) & 0xfu;
            return level_at(q) * scale_at(group_of(r, c));
        }
    }
}

// Outliers of row r are entries csr_begin(r) .. csr_begin(r + 1).
fn csr_begin(r: u32) -> u32 {
    return csr[r];
}

fn csr_col(i: u32) -> u32 {
    return csr[p.rows + 1u + i];
}

fn csr_val(i: u32) -> f32 {
    let nnz = csr[p.rows];
    let v = f16x2(csr[p.rows + 1u + nnz + (i >> 1u)]);
    return select(v.x, v.y, (i & 1u) == 1u);
}
