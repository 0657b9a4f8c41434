//! The aarch64 NEON parts of the GEMM (`KernelPath::Neon`): the panel
//! decode (same values as every other path, bit for bit) and a `6 x 16`
//! register-tiled micro-kernel (24 accumulators + 4 activation loads +
//! 1 broadcast of the 32 128-bit registers).

use std::arch::aarch64::*;

use half::f16;

use super::super::gemv::neon::{cvt_f16x4, f16_to_f32};
use super::{KC, LANES, NR, UNIT};
use crate::format::{Packed, QuantizedMatrix};

/// One f16 scale to f32 (exact).
#[inline(always)]
unsafe fn scale(s: &[f16], g: usize) -> f32 {
    f16_to_f32(s[g])
}

/// 16 bytes widened to four vectors of f32.
#[inline(always)]
unsafe fn u8_to_f32(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_high_u8(v);
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_high_u16(lo)),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_high_u16(hi)),
    ]
}

/// `codebook[i]` for 16 indices (0..16): a byte-plane table lookup per
/// byte of the f32 values, zipped back into four vectors.
#[inline(always)]
unsafe fn lookup16(planes: &[uint8x16_t; 4], i: uint8x16_t) -> [float32x4_t; 4] {
    let b0 = vqtbl1q_u8(planes[0], i);
    let b1 = vqtbl1q_u8(planes[1], i);
    let b2 = vqtbl1q_u8(planes[2], i);
    let b3 = vqtbl1q_u8(planes[3], i);
    let (l01, h01) = (vzip1q_u8(b0, b1), vzip2q_u8(b0, b1));
    let (l23, h23) = (vzip1q_u8(b2, b3), vzip2q_u8(b2, b3));
    let w = |a: uint8x16_t, b: uint8x16_t, hi: bool| {
        let (a, b) = (vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b));
        vreinterpretq_f32_u16(if hi {
            vzip2q_u16(a, b)
        } else {
            vzip1q_u16(a, b)
        })
    };
    [
        w(l01, l23, false),
        w(l01, l23, true),
        w(h01, h23, false),
        w(h01, h23, true),
    ]
}

/// Decodes the whole 32-column units of row `r` from column `k0` into `d`
/// (nibble order for 4-bit formats: the 16 even columns, then the 16 odd
/// ones), stopping at the last unit inside the row; returns how many units
/// it wrote.
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn decode_units(
    m: &QuantizedMatrix,
    r: usize,
    k0: usize,
    d: &mut [f32],
) -> usize {
    let n = (d.len() / UNIT).min(m.cols().saturating_sub(k0) / UNIT);
    let stride = m.row_stride_bytes();
    let glen = m.group_len();
    let g_row = r * m.groups_per_row();
    let out = d.as_mut_ptr();
    match m.packed() {
        Packed::F32(v) => {
            assert!(v.len() >= r * stride / 4 + k0 + n * UNIT);
            let p = v.as_ptr().add(r * stride / 4 + k0);
            std::ptr::copy_nonoverlapping(p, out, n * UNIT);
        }
        Packed::F16(v) => {
            assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
            let p = v.as_ptr().add(r * stride / 2 + k0) as *const u16;
            for i in 0..8 * n {
                vst1q_f32(out.add(4 * i), cvt_f16x4(vld1_u16(p.add(4 * i))));
            }
        }
        Packed::Bf16(v) => {
            assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
            let p = v.as_ptr().add(r * stride / 2 + k0) as *const u16;
            for i in 0..8 * n {
                let w = vshll_n_u16::<16>(vld1_u16(p.add(4 * i)));
                vst1q_f32(out.add(4 * i), vreinterpretq_f32_u32(w));
            }
        }
        Packed::Q8(q) => {
            assert!(q.codes.len() >= r * stride + k0 + n * UNIT);
            let p = q.codes.as_ptr().add(r * stride + k0);
            for u in 0..n {
                let s = scale(&q.scales, g_row + (k0 + u * UNIT) / glen);
                for h in 0..2 {
                    let v = vld1q_s8(p.add(UNIT * u + 16 * h));
                    let lo = vmovl_s8(vget_low_s8(v));
                    let hi = vmovl_high_s8(v);
                    let parts = [
                        vmovl_s16(vget_low_s16(lo)),
                        vmovl_high_s16(lo),
                        vmovl_s16(vget_low_s16(hi)),
                        vmovl_high_s16(hi),
                    ];
                    for (j, w) in parts.into_iter().enumerate() {
                        let f = vmulq_n_f32(vcvtq_f32_s32(w), s);
                        vst1q_f32(out.add(UNIT * u + 16 * h + 4 * j), f);
                    }
                }
            }
        }
        Packed::Q4(q) => {
            assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
            let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2);
            let mask = vdupq_n_u8(0x0F);
            for u in 0..n {
                let g = g_row + (k0 + u * UNIT) / glen;
                let s = scale(&q.scales, g);
                let z = vdupq_n_f32(q.zeros[g] as f32);
                let v = vld1q_u8(p.add(16 * u));
                let halves = [vandq_u8(v, mask), vshrq_n_u8::<4>(v)];
                for (h, nib) in halves.into_iter().enumerate() {
                    for (j, f) in u8_to_f32(nib).into_iter().enumerate() {
                        let o = vmulq_n_f32(vsubq_f32(f, z), s);
                        vst1q_f32(out.add(UNIT * u + 16 * h + 4 * j), o);
                    }
                }
            }
        }
        Packed::Lut4(q) => {
            assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
            let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2);
            let mask = vdupq_n_u8(0x0F);
            let mut bytes = [[0u8; 16]; 4];
            for (i, v) in q.codebook.iter().enumerate() {
                for (b, plane) in bytes.iter_mut().enumerate() {
                    plane[i] = v.to_le_bytes()[b];
                }
            }
            let planes = bytes.map(|b| vld1q_u8(b.as_ptr()));
            for u in 0..n {
                let s = scale(&q.scales, g_row + (k0 + u * UNIT) / glen);
                let v = vld1q_u8(p.add(16 * u));
                let halves = [vandq_u8(v, mask), vshrq_n_u8::<4>(v)];
                for (h, nib) in halves.into_iter().enumerate() {
                    for (j, f) in lookup16(&planes, nib).into_iter().enumerate() {
                        vst1q_f32(out.add(UNIT * u + 16 * h + 4 * j), vmulq_n_f32(f, s));
                    }
                }
            }
        }
    }
    n
}

/// NEON micro-kernel: per 16-row batch chunk, weight rows in groups of 6,
/// `6 x 16` accumulators.
///
/// # Safety
/// The CPU supports NEON; bounds as asserted by `super::micro`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(super) unsafe fn micro(
    kc: usize,
    wp: &[f32],
    xa: &[f32],
    xb: &[f32],
    two: bool,
    first: bool,
    tile: &mut [f32],
    ld: usize,
    b0: usize,
    valid: usize,
) {
    const ROWS: usize = 6;
    let w = wp.as_ptr();
    let t = tile.as_mut_ptr();
    let halves: &[&[f32]] = if two { &[xa, xb] } else { &[xa] };
    for (h, xs) in halves.iter().enumerate() {
        let px = xs.as_ptr();
        for r0 in (0..NR).step_by(ROWS) {
            if r0 >= valid {
                break;
            }
            let mut acc = [[vdupq_n_f32(0.0); 4]; ROWS];
            for k in 0..kc {
                let x = [
                    vld1q_f32(px.add(k * LANES)),
                    vld1q_f32(px.add(k * LANES + 4)),
                    vld1q_f32(px.add(k * LANES + 8)),
                    vld1q_f32(px.add(k * LANES + 12)),
                ];
                for (i, a) in acc.iter_mut().enumerate() {
                    let wv = *w.add((r0 + i) * KC + k);
                    for (v, xv) in x.iter().enumerate() {
                        a[v] = vfmaq_n_f32(a[v], *xv, wv);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                if r0 + i >= valid {
                    break;
                }
                for (v, av) in a.iter().enumerate() {
                    let d = t.add((r0 + i) * ld + b0 + h * LANES + 4 * v);
                    let sum = if first {
                        *av
                    } else {
                        vaddq_f32(vld1q_f32(d), *av)
                    };
                    vst1q_f32(d, sum);
                }
            }
        }
    }
}
