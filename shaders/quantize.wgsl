// Round-to-nearest quantization on the device, bit-identical to the CPU
// packers `format::pack_q8` / `format::pack_q4` (docs/FORMATS.md).
//
// Entry points: quantize_q8, quantize_q4.
// Bindings (group 0):
//   0  uniform  q       QuantizeParams (src/backend/params.rs, same fields, same order)
//   1  storage  src     the f32 matrix, row-major, `rows x cols`, no padding
//   2  storage  codes   packed rows (read_write; zero-initialised, so row padding stays 0)
//   3  storage  scales  one u32 per (row, group): the f16 scale bits in the low half
//   4  storage  zeros   one u32 per (row, group): the q4 zero point (q8: unused)
// Workgroup: 256 invocations per (row, group); dispatch rows * groups_per_row
// workgroups (2-D past 65535). A group starts on a multiple of 32 columns, so
// it owns whole code words and no two workgroups write one word.
//
// Exactness. The CPU rule is: scale = f16_rne(stat * INV), s = f32(scale),
// inv = 1 / s correctly rounded, code = clamp(rne(x * inv) [+ zero], ...).
// WGSL multiplication, subtraction, min/max/abs and round() (ties to even) are
// correctly rounded, so those steps are written as is. Two are not pinned by
// WGSL and are done in integers here:
//   - f32 -> f16 conversion: `f16_bits_rne`, round to nearest, ties to even,
//     overflow to infinity, subnormal results rounded exactly;
//   - the reciprocal (WGSL `/` is only 2.5 ULP): `recip_exact` divides 2^35 by
//     the 11-bit significand of the f16 scale with integer long division and
//     rounds the 25-bit quotient to 24 bits with the remainder as sticky bit:
//     correctly rounded to nearest even, exactly like the CPU's `1.0 / s`.
// Exact ties (x * inv exactly halfway) go to even on both sides.

struct QuantizeParams {
    rows: u32,
    cols: u32,
    format: u32,
    row_stride_words: u32,
    group_len: u32,
    groups_per_row: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> q: QuantizeParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;
@group(0) @binding(4) var<storage, read_write> zeros: array<u32>;

const WG_SIZE: u32 = 256u;
// 1/127 and 1/15 rounded to f32, by their bits (format::INV_127, INV_15).
fn inv_127() -> f32 {
    return bitcast<f32>(0x3c010204u);
}

fn inv_15() -> f32 {
    return bitcast<f32>(0x3d888889u);
}

var<workgroup> red_lo: array<f32, WG_SIZE>;
var<workgroup> red_hi: array<f32, WG_SIZE>;

// f32 -> IEEE half bits, round to nearest, ties to even.
fn f16_bits_rne(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if a > 0x7f800000u {
        return sign | 0x7e00u; // NaN
    }
    if a >= 0x477ff000u {
        return sign | 0x7c00u; // rounds to (or is) infinity
    }
    if a >= 0x38800000u {
        // Normal half: rebias the exponent, round away the low 13 bits.
        let rounded = a + 0xfffu + ((a >> 13u) & 1u);
        return sign | ((rounded - 0x38000000u) >> 13u);
    }
    // Subnormal half: value / 2^-24, rounded to nearest even.
    let e = a >> 23u;
    if e < 102u {
        return sign; // below 2^-25: rounds to zero
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e; // 14..=24
    let qv = m >> shift;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    let up = rem > half || (rem == half && (qv & 1u) == 1u);
    return sign | (qv + select(0u, 1u, up));
}

// Significand m (1024..=2047) and exponent e of a positive finite half, value m * 2^e.
fn f16_parts(h: u32) -> vec2<i32> {
    let exp5 = i32((h >> 10u) & 31u);
    var m = h & 1023u;
    if exp5 > 0 {
        return vec2<i32>(i32(m | 1024u), exp5 - 25);
    }
    var e = -24;
    while m < 1024u {
        m <<= 1u;
        e -= 1;
    }
    return vec2<i32>(i32(m), e);
}

// The f32 value of a positive finite half (exact).
fn f16_value(h: u32) -> f32 {
    let pe = f16_parts(h);
    return bitcast<f32>((u32(pe.y + 10 + 127) << 23u) | ((u32(pe.x) - 1024u) << 13u));
}

// 1 / (m * 2^e) correctly rounded to f32 (m = 1024..=2047).
fn recip_exact(pe: vec2<i32>) -> f32 {
    let m = u32(pe.x);
    // Long division of 2^35 by m: the quotient has 25 or 26 bits.
    var quo = 0u;
    var rem = 1u;
    for (var i = 0u; i < 35u; i++) {
        rem <<= 1u;
        quo <<= 1u;
        if rem >= m {
            rem -= m;
            quo |= 1u;
        }
    }
    // quo in (2^24, 2^25] for m in 1024..=2047; keep 24 bits, round to nearest even.
    var mant = quo >> 1u;
    let round_bit = quo & 1u;
    if round_bit == 1u && (rem != 0u || (mant & 1u) == 1u) {
        mant += 1u;
    }
    // value = mant * 2^(1 - 35 - e) = mant * 2^k
    let k = -34 - pe.y;
    return bitcast<f32>((u32(k + 149) << 23u) + mant);
}

struct Group {
    row: u32,
    c0: u32,
    c1: u32,
    valid: bool,
}

fn group_at(wid: vec3<u32>, nwg: vec3<u32>) -> Group {
    let idx = wid.x + wid.y * nwg.x;
    var g: Group;
    g.row = idx / q.groups_per_row;
    let gi = idx % q.groups_per_row;
    g.c0 = gi * q.group_len;
    g.c1 = min(g.c0 + q.group_len, q.cols);
    g.valid = g.row < q.rows;
    return g;
}

// Workgroup-wide min (red_lo) and max (red_hi), result in slot 0.
fn reduce_min_max(lid: u32) {
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_lo[lid] = min(red_lo[lid], red_lo[lid + s]);
            red_hi[lid] = max(red_hi[lid], red_hi[lid + s]);
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG_SIZE)
fn quantize_q8(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = group_at(wid, nwg);
    if !g.valid {
        return;
    }
    let base = g.row * q.cols;
    var amax = 0.0;
    for (var c = g.c0 + lid; c < g.c1; c += WG_SIZE) {
        amax = max(amax, abs(src[base + c]));
    }
    red_lo[lid] = 0.0;
    red_hi[lid] = amax;
    workgroupBarrier();
    reduce_min_max(lid);
    let h = f16_bits_rne(red_hi[0] * inv_127());
    let gidx = g.row * q.groups_per_row + g.c0 / q.group_len;
    if lid == 0u {
        scales[gidx] = h;
        zeros[gidx] = 0u;
    }
    var inv = 0.0;
    if h != 0u {
        inv = recip_exact(f16_parts(h));
    }
    let out = g.row * q.row_stride_words;
    for (var wd = g.c0 / 4u + lid; wd * 4u < g.c1; wd += WG_SIZE) {
        var word = 0u;
        for (var i = 0u; i < 4u; i++) {
            let c = wd * 4u + i;
            if c < g.c1 && h != 0u {
                let code = i32(clamp(round(src[base + c] * inv), -127.0, 127.0));
                word |= (bitcast<u32>(code) & 0xffu) << (8u * i);
            }
        }
        codes[out + wd] = word;
    }
}

@compute @workgroup_size(WG_SIZE)
fn quantize_q4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = group_at(wid, nwg);
    if !g.valid {
        return;
    }
    let base = g.row * q.cols;
    var lo = 0.0;
    var hi = 0.0;
    for (var c = g.c0 + lid; c < g.c1; c += WG_SIZE) {
        let v = src[base + c];
        lo = min(lo, v);
        hi = max(hi, v);
    }
    red_lo[lid] = lo;
    red_hi[lid] = hi;
    workgroupBarrier();
    reduce_min_max(lid);
    let glo = red_lo[0];
    let h = f16_bits_rne((red_hi[0] - glo) * inv_15());
    var inv = 0.0;
    var zero = 0.0;
    if h != 0u {
        inv = recip_exact(f16_parts(h));
        zero = clamp(round(-glo * inv), 0.0, 15.0);
    }
    let gidx = g.row * q.groups_per_row + g.c0 / q.group_len;
    if lid == 0u {
        scales[gidx] = h;
        zeros[gidx] = u32(zero);
    }
    let out = g.row * q.row_stride_words;
    for (var wd = g.c0 / 8u + lid; wd * 8u < g.c1; wd += WG_SIZE) {
        var word = 0u;
        for (var i = 0u; i < 8u; i++) {
            let c = wd * 8u + i;
            if c < g.c1 {
                var code = u32(zero);
                if h != 0u {
                    code = u32(clamp(round(src[base + c] * inv) + zero, 0.0, 15.0));
                }
                word |= code << (4u * i);
            }
        }
        codes[out + wd] = word;
    }
}
