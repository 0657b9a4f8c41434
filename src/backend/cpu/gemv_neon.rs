//! The aarch64 NEON GEMV kernels (`KernelPath::Neon`): the structure of the
//! x86 ones (4 rows per pass sharing the activation loads, an L2 prefetch of
//! the next pass's rows, int8 activations for q8 / q4 / lut4 with the zero
//! points taken off once per row) on 128-bit registers.
//!
//! The integer dot product is `sdot` (signed 8-bit, 4 products per 32-bit
//! lane, Armv8.2 dot-product extension), issued through `asm!` because its
//! intrinsic (`vdotq_s32`) is not stable in Rust yet. q8 codes and int8
//! activations are both signed, q4 nibbles (0..=15) are valid signed bytes,
//! and lut4 splits each 8-bit table value into its two nibbles (as the AVX2
//! kernel does), so every sum is the scalar path's exact integer.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::super::act::{QuantAct, NIB_CHUNK, QBLOCK};
use super::{prefetch_ahead, LUT4, Q4, Q8};

/// `acc + Σ a[4i..4i+4] · b[4i..4i+4]` per 32-bit lane.
///
/// # Safety
/// The CPU has the dot-product extension (the caller's target features).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
        inout(vreg) acc,
        in(vreg) a,
        in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Prefetch into L2 for reading; never faults, so `p` may run past the data.
#[inline(always)]
unsafe fn prefetch_l2(p: *const u8) {
    asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
}

/// Four f16 (as bits) to f32: `fcvtl`, through `asm!` because the f16
/// NEON intrinsics need Rust 1.94 and the crate supports 1.89.
///
/// # Safety
/// NEON (baseline on aarch64).
#[inline(always)]
pub(in crate::backend::cpu) unsafe fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    asm!(
        "fcvtl {0:v}.4s, {1:v}.4h",
        out(vreg) out,
        in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

/// One f16 to f32 (exact).
#[inline(always)]
pub(in crate::backend::cpu) unsafe fn f16_to_f32(h: f16) -> f32 {
    vgetq_lane_f32::<0>(cvt_f16x4(vdup_n_u16(h.to_bits())))
}

/// `R` consecutive rows of a q8 / q4 / lut4 matrix (`F`); the arguments
/// and the result are those of the x86 `int_rows` kernels (lut4 still to be
/// multiplied by its codebook step). Per 32-column block and row: one or
/// two 16-byte loads, `sdot`s into four i32 lanes, one convert and one FMA
/// by the block's `s_g · dx_b`.
///
/// # Safety
/// The CPU supports NEON + the dot-product extension; `act` was built with
/// its SIMD tables; `glen` is a multiple of 32 or the whole row.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn int_rows<const R: usize, const F: u8>(
    codes: &[u8],
    stride: usize,
    scales: &[f16],
    zeros: &[u8],
    gsum: &[f32],
    table: &[u8; 16],
    zconst: f32,
    glen: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    let cols = act.cols;
    let (gpr, row_bytes) =
        super::int_rows_args(F, R, codes, stride, scales, zeros, gsum, glen, act, out);
    let pf = prefetch_ahead(R, stride);
    // Row `r`'s scale of group `g` as f32 (one `fcvtl` where it is used: no
    // per-pass buffer).
    let sf = |r: usize, g: usize| f16_to_f32(scales[r * gpr + g]);
    let nib_mask = vdupq_n_u8(0x0F);
    let tlo = vandq_u8(vld1q_u8(table.as_ptr()), nib_mask);
    let thi = vshrq_n_u8::<4>(vld1q_u8(table.as_ptr()));
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[zero; 2]; R];
    let nb = cols / QBLOCK;
    let bytes_per_block = if F == Q8 { QBLOCK } else { QBLOCK / 2 };
    for b in 0..nb {
        let dx = *act.dx.get_unchecked(b);
        let g = QBLOCK * b / glen;
        // The block's activations: q8 in column order; 4-bit in the lane
        // layout (the 16 even columns, then the 16 odd ones, of block `j`
        // of chunk `k`).
        let (xa, xb) = if F == Q8 {
            let p = act.xq.as_ptr().add(QBLOCK * b);
            (vld1q_s8(p), vld1q_s8(p.add(16)))
        } else {
            let (k, j) = (b / 4, b % 4);
            let p = act.nib_xq.as_ptr().add(NIB_CHUNK * k + 16 * j);
            (vld1q_s8(p), vld1q_s8(p.add(NIB_CHUNK / 2)))
        };
        for (r, a) in acc.iter_mut().enumerate() {
            let p = codes.as_ptr().add(r * stride + bytes_per_block * b);
            if pf != 0 && (bytes_per_block * b) % 64 == 0 {
                prefetch_l2(p.wrapping_add(pf));
            }
            let d = if F == Q8 {
                let w0 = vld1q_s8(p as *const i8);
                let w1 = vld1q_s8(p.add(16) as *const i8);
                sdot(sdot(vdupq_n_s32(0), w0, xa), w1, xb)
            } else {
                let v = vld1q_u8(p);
                let lo = vandq_u8(v, nib_mask);
                let hi = vshrq_n_u8::<4>(v);
                if F == LUT4 {
                    let l = sdot(
                        sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(vqtbl1q_u8(tlo, lo)), xa),
                        vreinterpretq_s8_u8(vqtbl1q_u8(tlo, hi)),
                        xb,
                    );
                    let h = sdot(
                        sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(vqtbl1q_u8(thi, lo)), xa),
                        vreinterpretq_s8_u8(vqtbl1q_u8(thi, hi)),
                        xb,
                    );
                    vaddq_s32(l, vshlq_n_s32::<4>(h))
                } else {
                    sdot(
                        sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(lo), xa),
                        vreinterpretq_s8_u8(hi),
                        xb,
                    )
                }
            };
            let s = sf(r, g) * dx;
            a[b % 2] = vfmaq_n_f32(a[b % 2], vcvtq_f32_s32(d), s);
        }
    }
    for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
        let row = &codes[r * stride..][..row_bytes];
        // The partial last block, in integers.
        let tail = super::int_tail(F, row, table, |g| sf(r, g), glen, act, nb * QBLOCK);
        // Zero points: `Σ_g s_g · z_g · gsum_g` (q8 codes are signed: none).
        let zt: f32 = match F {
            Q4 => {
                let z = &zeros[r * gpr..][..gpr];
                (0..gpr).map(|g| sf(r, g) * z[g] as f32 * gsum[g]).sum()
            }
            LUT4 => (0..gpr).map(|g| sf(r, g) * zconst * gsum[g]).sum(),
            _ => 0.0,
        };
        *o = vaddvq_f32(vaddq_f32(a[0], a[1])) + tail - zt;
    }
}

/// `out[r] = Σ w[r·stride + i] · x[i]` for `R` consecutive f32 rows,
/// sharing the activation loads, with the next-pass L2 prefetch.
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn f32_rows<const R: usize>(
    w: &[f32],
    stride: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let n = x.len();
    assert!(R >= 1 && out.len() == R);
    assert!(stride >= n && w.len() >= (R - 1) * stride + n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let pf = prefetch_ahead(R, 4 * stride);
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    let mut i = 0;
    while i + 16 <= n {
        let xs = [
            vld1q_f32(xp.add(i)),
            vld1q_f32(xp.add(i + 4)),
            vld1q_f32(xp.add(i + 8)),
            vld1q_f32(xp.add(i + 12)),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            let p = wp.add(r * stride + i);
            if pf != 0 {
                prefetch_l2((p as *const u8).wrapping_add(pf));
            }
            for (j, xv) in xs.iter().enumerate() {
                a[j] = vfmaq_f32(a[j], vld1q_f32(p.add(4 * j)), *xv);
            }
        }
        i += 16;
    }
    for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
        let row = &w[r * stride..][..n];
        let tail: f32 = (i..n).map(|c| row[c] * x[c]).sum();
        let s = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
        *o = vaddvq_f32(s) + tail;
    }
}

/// `out[r] = Σ half(w[r·stride + i]) · x[i]` for `R` consecutive rows of
/// f16 (`bf16 == false`) or bf16 bits, sharing the activation loads, with
/// the next-pass L2 prefetch.
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn half_rows<const R: usize>(
    w: &[u16],
    stride: usize,
    x: &[f32],
    bf16: bool,
    out: &mut [f32],
) {
    let n = x.len();
    assert!(R >= 1 && out.len() == R);
    assert!(stride >= n && w.len() >= (R - 1) * stride + n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let pf = prefetch_ahead(R, 2 * stride);
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    let mut i = 0;
    while i + 16 <= n {
        let xs = [
            vld1q_f32(xp.add(i)),
            vld1q_f32(xp.add(i + 4)),
            vld1q_f32(xp.add(i + 8)),
            vld1q_f32(xp.add(i + 12)),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            let p = wp.add(r * stride + i);
            if pf != 0 && i % 32 == 0 {
                prefetch_l2((p as *const u8).wrapping_add(pf));
            }
            for h in 0..2 {
                let v = vld1q_u16(p.add(8 * h));
                let (lo, hi) = if bf16 {
                    (
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v))),
                        vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v)),
                    )
                } else {
                    (cvt_f16x4(vget_low_u16(v)), cvt_f16x4(vget_high_u16(v)))
                };
                a[2 * h] = vfmaq_f32(a[2 * h], lo, xs[2 * h]);
                a[2 * h + 1] = vfmaq_f32(a[2 * h + 1], hi, xs[2 * h + 1]);
            }
        }
        i += 16;
    }
    for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
        let row = &w[r * stride..][..n];
        let tail: f32 = (i..n)
            .map(|c| {
                let v = if bf16 {
                    half::bf16::from_bits(row[c]).to_f32()
                } else {
                    f16_to_f32(f16::from_bits(row[c]))
                };
                v * x[c]
            })
            .sum();
        let s = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
        *o = vaddvq_f32(s) + tail;
    }
}
