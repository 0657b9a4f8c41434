// The forward-pass ops of a transformer encoder other than the matmul
// (semantics: `Op` in src/backend/ops.rs; the CPU twin is
// src/backend/cpu/ops.rs, the CUDA twin kernels/ops.cu: same entry names,
// same parameter blocks).
//
// Entry points: layer_norm, gelu, quick_gelu, add, bias_add, softmax,
// take_rows (parameters OpParams p) and attention (AttentionParams ap).
//
// Layout: a device tensor is `rows x stride` f32, stride = round_up(cols, 32);
// the padding columns are zero and no kernel here writes them, so every
// tensor feeds the GEMV / GEMM kernels as X directly.
//
// Bindings (group 0), one layout for every entry:
//   0  uniform  p    OpParams (src/backend/params.rs, same fields, same order)
//   1  storage  t1   x / a / q                                  read
//   2  storage  t2   gamma / b / bias / k                       read
//   3  storage  t3   beta / v                                   read
//   4  storage  t4   mask (softmax: rows of cols; attention: one row of
//                    round_up(seq_len, 32) per sequence)        read
//   5  storage  y    output                                     read_write
//   6  uniform  ap   AttentionParams
// The host binds the one 32-byte parameter block at both 0 and 6; an entry
// reads the view its kernel takes. Unused slots hold a dummy buffer.
//
// Workgroups: WG_SIZE = 256 invocations.
// - layer_norm, softmax: one workgroup per row, strided loops over the
//   columns, wg_sum / wg_max reductions (features.wgsl `reduce`: subgroupAdd
//   / subgroupMax where the adapter has subgroups, a workgroup-memory tree
//   otherwise). layer_norm is two-pass (mean, then the centred sum of
//   squares) like the CPU, so large offsets do not cancel.
// - gelu, quick_gelu, add, bias_add, take_rows: one invocation per valid
//   element (1-D index over a 2-D dispatch).
// - attention: see the comment above the entry.

const WG_SIZE: u32 = 256u;

struct OpParams {
    rows: u32,
    cols: u32,
    stride: u32,
    aux_rows: u32,
    offset: u32,
    kind: u32,
    eps_or_scale: f32,
    _pad0: u32,
}

struct AttentionParams {
    seqs: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    stride: u32,
    has_mask: u32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: OpParams;
@group(0) @binding(1) var<storage, read> t1: array<f32>;
@group(0) @binding(2) var<storage, read> t2: array<f32>;
@group(0) @binding(3) var<storage, read> t3: array<f32>;
@group(0) @binding(4) var<storage, read> t4: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> ap: AttentionParams;

// The most negative finite f32: the start of a max over kept positions
// (WGSL constants cannot be infinite).
const NEG_MAX: f32 = -3.40282347e38;

// Linear workgroup index of a 2-D dispatch (x wraps at the device limit).
fn linear_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Element `e` of the valid `rows x cols` values: its offset in a padded tensor.
fn padded(e: u32) -> u32 {
    return (e / p.cols) * p.stride + e % p.cols;
}

// ---- activations -----------------------------------------------------------

// erfc(x) for x >= 0: the Chebyshev fit of Numerical Recipes (§6.2),
// fractional error < 1.2e-7, the same fit as `cpu::ops::erfc_pos`.
fn erfc_pos(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let q = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-x * x + q);
}

// 0.5 x erfc(-x/√2), from erfc of a non-negative argument on both sides so
// the tails keep their relative precision (as on the CPU).
fn gelu_of(x: f32) -> f32 {
    let z = x * 0.70710678118654752;
    if z >= 0.0 {
        return 0.5 * x * (2.0 - erfc_pos(z));
    }
    return 0.5 * x * erfc_pos(-z);
}

fn quick_gelu_of(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

@compute @workgroup_size(WG_SIZE)
fn gelu(lane: Lane) {
    let e = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if e >= p.rows * p.cols {
        return;
    }
    let i = padded(e);
    y[i] = gelu_of(t1[i]);
}

@compute @workgroup_size(WG_SIZE)
fn quick_gelu(lane: Lane) {
    let e = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if e >= p.rows * p.cols {
        return;
    }
    let i = padded(e);
    y[i] = quick_gelu_of(t1[i]);
}

// ---- elementwise -------------------------------------------------------------

// y = a + b[r % aux_rows]: a bias row or position embeddings per sequence.
@compute @workgroup_size(WG_SIZE)
fn add(lane: Lane) {
    let e = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if e >= p.rows * p.cols {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    y[r * p.stride + c] = t1[r * p.stride + c] + t2[(r % p.aux_rows) * p.stride + c];
}

// y += bias (one row), in place: the bias of a Linear, after its matmul.
@compute @workgroup_size(WG_SIZE)
fn bias_add(lane: Lane) {
    let e = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if e >= p.rows * p.cols {
        return;
    }
    let i = padded(e);
    y[i] = y[i] + t2[e % p.cols];
}

// y[r] = x[offset + r * aux_rows].
@compute @workgroup_size(WG_SIZE)
fn take_rows(lane: Lane) {
    let e = linear_wg(lane.wid, lane.nwg) * WG_SIZE + lane.lid;
    if e >= p.rows * p.cols {
        return;
    }
    let r = e / p.cols;
    let c = e % p.cols;
    y[r * p.stride + c] = t1[(p.offset + r * p.aux_rows) * p.stride + c];
}

// ---- row-wise: layer norm, softmax ------------------------------------------

@compute @workgroup_size(WG_SIZE)
fn layer_norm(lane: Lane) {
    let r = linear_wg(lane.wid, lane.nwg);
    if r >= p.rows {
        return;
    }
    let base = r * p.stride;
    var s = 0.0;
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        s += t1[base + c];
    }
    let mean = wg_sum(s, lane) / f32(p.cols);
    var q = 0.0;
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        let d = t1[base + c] - mean;
        q += d * d;
    }
    let variance = wg_sum(q, lane) / f32(p.cols);
    let inv = 1.0 / sqrt(variance + p.eps_or_scale);
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        y[base + c] = (t1[base + c] - mean) * inv * t2[c] + t3[c];
    }
}

// softmax(scale · x) per row over the positions the mask row r / aux_rows
// keeps (aux_rows 0: no mask). A row with nothing kept is all zeros: every
// position takes the `kept` = false branch, so the infinite 1 / 0 is never used.
@compute @workgroup_size(WG_SIZE)
fn softmax(lane: Lane) {
    let r = linear_wg(lane.wid, lane.nwg);
    if r >= p.rows {
        return;
    }
    let base = r * p.stride;
    let masked = p.aux_rows != 0u;
    var mbase = 0u;
    if masked {
        mbase = (r / p.aux_rows) * p.stride;
    }
    let scale = p.eps_or_scale;
    var m = NEG_MAX;
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        if !masked || t4[mbase + c] > 0.5 {
            m = max(m, scale * t1[base + c]);
        }
    }
    let mx = wg_max(m, lane);
    var s = 0.0;
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        if !masked || t4[mbase + c] > 0.5 {
            s += exp(scale * t1[base + c] - mx);
        }
    }
    let inv = 1.0 / wg_sum(s, lane);
    for (var c = lane.lid; c < p.cols; c += WG_SIZE) {
        var v = 0.0;
        if !masked || t4[mbase + c] > 0.5 {
            v = exp(scale * t1[base + c] - mx) * inv;
        }
        y[base + c] = v;
    }
}

// ---- attention -----------------------------------------------------------------
//
// Fused multi-head attention: one workgroup per (query tile of TQ = 8
// queries, head, sequence), dispatch (ceil(S / 8), heads, seqs). The scores
// never leave workgroup memory. Per workgroup:
// 1. the tile's queries go to workgroup memory, column-major ([c][i]: the 8
//    queries' values of one column are two vec4);
// 2. scores: one invocation per key takes the dot products of that key with
//    all 8 queries at once (each key value loaded once per workgroup, two
//    vec4 multiply-adds per load), scaled, into the score tile [j][i];
// 3. softmax of each score row by 32 invocations (max, exp, sum, normalize;
//    masked keys get exactly 0, a query with every key masked gets zeros);
// 4. P·V register-tiled: invocation (column c = lid % 64 (+ 64), key split
//    lid / 64) accumulates all 8 queries for its columns over the keys
//    j = split (mod 4): one value load and two vec4 score loads per 8
//    multiply-adds, a subgroup's loads one contiguous run of a value row;
//    the 4 splits' partials (in the score tile's memory, no longer needed)
//    are summed in a fixed order and written.
// Limits: S <= S_MAX = 512 keys, d <= D_MAX = 128 columns per head; 21 KiB
// of workgroup memory (the host's `supports` checks the device limit).

const TQ: u32 = 8u;
const S_MAX: u32 = 512u;
const D_MAX: u32 = 128u;
const SPLITS: u32 = 4u;

var<workgroup> att_p: array<vec4<f32>, 1024>; // scores [key][query] (TQ / 4 vec4 per key); later the P·V partials
var<workgroup> att_q: array<vec4<f32>, 256>; // queries [column][query]
var<workgroup> att_red: array<f32, WG_SIZE>;

fn key_kept(mbase: u32, j: u32) -> bool {
    return ap.has_mask == 0u || t4[mbase + j] > 0.5;
}

// Score of key j for query i (a scalar view of the vec4 tile).
fn score_at(j: u32, i: u32) -> f32 {
    return att_p[2u * j + (i >> 2u)][i & 3u];
}

fn set_score(j: u32, i: u32, v: f32) {
    att_p[2u * j + (i >> 2u)][i & 3u] = v;
}

@compute @workgroup_size(WG_SIZE)
fn attention(lane: Lane) {
    let s_len = ap.seq_len;
    let d = ap.head_dim;
    let st = ap.stride;
    let i0 = lane.wid.x * TQ;
    let col0 = lane.wid.y * d;
    let row0 = lane.wid.z * s_len;
    let mbase = lane.wid.z * ((s_len + 31u) & ~31u);
    let nq = min(TQ, s_len - i0);

    // 1. Queries (rows past the sequence: zeros, never written out).
    for (var e = lane.lid; e < TQ * d; e += WG_SIZE) {
        let i = e / d;
        let c = e % d;
        var v = 0.0;
        if i < nq {
            v = t1[(row0 + i0 + i) * st + col0 + c];
        }
        att_q[2u * c + (i >> 2u)][i & 3u] = v;
    }
    workgroupBarrier();

    // 2. Scores, one key per invocation, all 8 queries.
    for (var j = lane.lid; j < s_len; j += WG_SIZE) {
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        let kb = (row0 + j) * st + col0;
        for (var c = 0u; c < d; c++) {
            let kv = t2[kb + c];
            a0 += att_q[2u * c] * kv;
            a1 += att_q[2u * c + 1u] * kv;
        }
        att_p[2u * j] = ap.scale * a0;
        att_p[2u * j + 1u] = ap.scale * a1;
    }
    workgroupBarrier();

    // 3. Softmax of query i's scores by the 32 invocations lid / 32 == i.
    let i = lane.lid / 32u;
    let l = lane.lid % 32u;
    var m = NEG_MAX;
    for (var j = l; j < s_len; j += 32u) {
        if key_kept(mbase, j) {
            m = max(m, score_at(j, i));
        }
    }
    att_red[lane.lid] = m;
    workgroupBarrier();
    var mx = NEG_MAX;
    for (var t = 0u; t < 32u; t++) {
        mx = max(mx, att_red[i * 32u + t]);
    }
    workgroupBarrier();
    var s = 0.0;
    for (var j = l; j < s_len; j += 32u) {
        var e = 0.0;
        if key_kept(mbase, j) {
            e = exp(score_at(j, i) - mx);
        }
        set_score(j, i, e);
        s += e;
    }
    att_red[lane.lid] = s;
    workgroupBarrier();
    var total = 0.0;
    for (var t = 0u; t < 32u; t++) {
        total += att_red[i * 32u + t];
    }
    // Infinite when every key is masked; those keys keep their exact 0.
    let inv = 1.0 / total;
    for (var j = l; j < s_len; j += 32u) {
        if key_kept(mbase, j) {
            set_score(j, i, score_at(j, i) * inv);
        }
    }
    workgroupBarrier();

    // 4. P·V: columns cl and cl + 64, keys j = split (mod SPLITS), 8 queries.
    let cl = lane.lid % 64u;
    let split = lane.lid / 64u;
    var lo0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    for (var j = split; j < s_len; j += SPLITS) {
        let p0 = att_p[2u * j];
        let p1 = att_p[2u * j + 1u];
        let vb = (row0 + j) * st + col0;
        if cl < d {
            let v = t3[vb + cl];
            lo0 += p0 * v;
            lo1 += p1 * v;
        }
        if cl + 64u < d {
            let v = t3[vb + cl + 64u];
            hi0 += p0 * v;
            hi1 += p1 * v;
        }
    }
    workgroupBarrier();
    // Partials [split][query][column] (TQ x D_MAX floats per split = 256 vec4).
    let part = split * (TQ * D_MAX);
    for (var q = 0u; q < TQ; q++) {
        let lo = select(lo1, lo0, q < 4u)[q & 3u];
        let hi = select(hi1, hi0, q < 4u)[q & 3u];
        let k = part + q * D_MAX + cl;
        att_p[k >> 2u][k & 3u] = lo;
        att_p[(k + 64u) >> 2u][(k + 64u) & 3u] = hi;
    }
    workgroupBarrier();
    for (var e = lane.lid; e < TQ * d; e += WG_SIZE) {
        let q = e / d;
        let c = e % d;
        var acc = 0.0;
        for (var sp = 0u; sp < SPLITS; sp++) {
            let k = sp * (TQ * D_MAX) + q * D_MAX + c;
            acc += att_p[k >> 2u][k & 3u];
        }
        if q < nq {
            y[(row0 + i0 + q) * st + col0 + c] = acc;
        }
    }
}
