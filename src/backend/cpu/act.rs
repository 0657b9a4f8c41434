//! The activation vector of a GEMV, quantized to int8 per block of 32 columns.
//!
//! Why: a GEMV streams every weight byte once and does ~2 FLOPs per weight, so
//! with f32 activations the 4-bit formats are bound by the unpack-convert-FMA
//! work, not by memory. With int8 activations the inner loop is one integer
//! dot product per 64 bytes of codes (`vpdpbusd`), as in the fastest CPU
//! libraries. The price is a small, documented error: each activation block
//! is rounded to 255 levels of its absmax (`x ≈ dx · xq`), which adds an NMSE
//! of ~2e-5 on Gaussian inputs — far below the cross-backend bound of 5e-4
//! (see `docs/PERFORMANCE.md`). The exact-f32 formats (f32, f16, bf16) and
//! every GEMM keep f32 activations.
//!
//! Blocks of 32 columns never straddle a weight group: groups are multiples of
//! 32 columns or the whole row.

use crate::format::round_up;

/// `1.5 * 2^23`: adding and subtracting it rounds an f32 of magnitude below
/// 2^22 to the nearest integer, ties to even.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Columns per activation block.
pub(crate) const QBLOCK: usize = 32;
/// Columns per 512-bit chunk of 4-bit codes (64 bytes).
pub(crate) const NIB_CHUNK: usize = 128;
/// Columns per 512-bit chunk of 8-bit codes (64 bytes).
pub(crate) const BYTE_CHUNK: usize = 64;

/// An activation row quantized per block: `x[c] ≈ dx[c / 32] * xq[c]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuantAct {
    /// Real columns.
    pub cols: usize,
    /// Codes in column order, zero-padded to a multiple of [`NIB_CHUNK`].
    pub xq: Vec<i8>,
    /// Scale per block (0 for padding blocks, NaN when the block is not finite).
    pub dx: Vec<f32>,
    /// Sum of the codes of each block.
    pub sumq: Vec<i32>,
    /// SIMD layout for 4-bit codes: per 128-column chunk, the 64 codes of the
    /// even columns then the 64 of the odd columns, matching the low and high
    /// nibbles of the 64 code bytes.
    pub nib_xq: Vec<i8>,
    /// Per 128-column chunk, 16 lanes: `dx` of block `4k + lane / 4`.
    pub nib_dx: Vec<f32>,
    /// Per 64-column chunk, 16 lanes: `dx` of block `2k + lane / 8`.
    pub byte_dx: Vec<f32>,
}

impl QuantAct {
    /// Quantizes `x` (one activation row); `lanes` also builds the SIMD
    /// tables. Every path produces the same codes and scales.
    pub(crate) fn new(x: &[f32], lanes: bool) -> QuantAct {
        #[cfg(target_arch = "x86_64")]
        if lanes && super::kernel::KernelPath::Avx512.is_supported() {
            let mut a = QuantAct::zeroed(x.len());
            // SAFETY: the CPU supports AVX-512 (checked above); `a` was sized
            // for `x` by `zeroed`.
            unsafe { avx512::quantize(x, &mut a) };
            a.build_lanes();
            return a;
        }
        QuantAct::new_portable(x, lanes)
    }

    fn zeroed(cols: usize) -> QuantAct {
        let padded = round_up(cols.max(1), NIB_CHUNK);
        QuantAct {
            cols,
            xq: vec![0; padded],
            dx: vec![0.0; padded / QBLOCK],
            sumq: vec![0; padded / QBLOCK],
            ..Default::default()
        }
    }

    fn new_portable(x: &[f32], lanes: bool) -> QuantAct {
        let cols = x.len();
        let padded = round_up(cols.max(1), NIB_CHUNK);
        let nblocks = padded / QBLOCK;
        let mut a = QuantAct {
            cols,
            xq: vec![0; padded],
            dx: vec![0.0; nblocks],
            sumq: vec![0; nblocks],
            ..Default::default()
        };
        for (b, blk) in x.chunks(QBLOCK).enumerate() {
            // `x * 0` is 0 for finite x and NaN otherwise: one vectorizable pass.
            let finite = blk.iter().fold(0.0f32, |m, &v| m + v * 0.0) == 0.0;
            let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if !finite {
                // Keep NaN / infinity visible in the output instead of rounding it away.
                a.dx[b] = f32::NAN;
                continue;
            }
            if amax == 0.0 {
                continue;
            }
            let d = amax / 127.0;
            let inv = 127.0 / amax;
            let mut s = 0i32;
            for (q, &v) in a.xq[b * QBLOCK..].iter_mut().zip(blk) {
                // Round half to even by the 1.5 * 2^23 trick (|v * inv| <= 127):
                // `round_ties_even` is a libm call on baseline x86-64.
                let r = (v * inv + ROUND_MAGIC) - ROUND_MAGIC;
                let c = r.clamp(-127.0, 127.0) as i8;
                *q = c;
                s += c as i32;
            }
            a.dx[b] = d;
            a.sumq[b] = s;
        }
        if lanes {
            a.build_lanes();
        }
        a
    }

    /// `Σ dx_b · sumq_b` over the blocks of each group of `glen` columns
    /// (multiple of 32, or the whole row): the activation side of the q4
    /// zero-point term `Σ_g s_g · z_g · m_g`.
    pub(crate) fn group_sums(&self, glen: usize) -> Vec<f32> {
        let per = glen.div_ceil(QBLOCK).max(1);
        let nblocks = self.cols.div_ceil(QBLOCK);
        (0..nblocks.div_ceil(per))
            .map(|g| {
                (g * per..((g + 1) * per).min(nblocks))
                    .map(|b| self.dx[b] * self.sumq[b] as f32)
                    .sum()
            })
            .collect()
    }

    fn build_lanes(&mut self) {
        let padded = self.xq.len();
        self.nib_xq = vec![0; padded];
        for (dst, src) in self
            .nib_xq
            .chunks_mut(NIB_CHUNK)
            .zip(self.xq.chunks(NIB_CHUNK))
        {
            for m in 0..NIB_CHUNK / 2 {
                dst[m] = src[2 * m];
                dst[NIB_CHUNK / 2 + m] = src[2 * m + 1];
            }
        }
        let nib_chunks = padded / NIB_CHUNK;
        self.nib_dx = vec![0.0; nib_chunks * 16];
        for k in 0..nib_chunks {
            for i in 0..16 {
                let b = 4 * k + i / 4;
                self.nib_dx[16 * k + i] = self.dx[b];
            }
        }
        let byte_chunks = padded / BYTE_CHUNK;
        self.byte_dx = vec![0.0; byte_chunks * 16];
        for k in 0..byte_chunks {
            for i in 0..16 {
                let b = 2 * k + i / 8;
                self.byte_dx[16 * k + i] = self.dx[b];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{QuantAct, QBLOCK};

    /// Quantizes `x` into `a` block by block (same rule as the portable code:
    /// `dx = absmax / 127`, codes `rne(x · 127 / absmax)`; `vcvtps2dq` rounds
    /// to nearest even under the default MXCSR).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW; `a` was made by `QuantAct::zeroed(x.len())`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize(x: &[f32], a: &mut QuantAct) {
        let cols = x.len();
        assert!(a.xq.len() >= cols.div_ceil(QBLOCK) * QBLOCK);
        assert!(a.dx.len() >= cols.div_ceil(QBLOCK) && a.sumq.len() >= cols.div_ceil(QBLOCK));
        let sign = _mm512_set1_ps(-0.0);
        for b in 0..cols.div_ceil(QBLOCK) {
            let c0 = b * QBLOCK;
            let n = (cols - c0).min(QBLOCK);
            let m0: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
            let m1: __mmask16 = if n >= 32 {
                0xFFFF
            } else if n > 16 {
                (1u16 << (n - 16)) - 1
            } else {
                0
            };
            let v0 = _mm512_maskz_loadu_ps(m0, x.as_ptr().add(c0));
            let v1 = _mm512_maskz_loadu_ps(m1, x.as_ptr().add(c0 + 16));
            let amax = _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1));
            // x * 0 is NaN exactly for NaN and infinities.
            let bad = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(
                _mm512_mul_ps(v0, _mm512_setzero_ps()),
                _mm512_mul_ps(v1, _mm512_setzero_ps()),
            );
            if bad != 0 {
                a.dx[b] = f32::NAN;
                continue;
            }
            let amax = _mm512_reduce_max_ps(amax);
            if amax == 0.0 {
                continue;
            }
            let inv = _mm512_set1_ps(127.0 / amax);
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
            let lim = _mm512_set1_epi32(127);
            let q0 = _mm512_max_epi32(
                _mm512_min_epi32(q0, lim),
                _mm512_sub_epi32(_mm512_setzero_si512(), lim),
            );
            let q1 = _mm512_max_epi32(
                _mm512_min_epi32(q1, lim),
                _mm512_sub_epi32(_mm512_setzero_si512(), lim),
            );
            let out = a.xq.as_mut_ptr().add(c0) as *mut __m128i;
            _mm_storeu_si128(out, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(out.add(1), _mm512_cvtepi32_epi8(q1));
            a.dx[b] = amax / 127.0;
            a.sumq[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
}
