//! Activations quantized to int8 per block of 32 columns: the GEMV's
//! activation vector, and the rows of a q4 GEMM.
//!
//! Why: a GEMV streams every weight byte once and does ~2 FLOPs per weight, so
//! with f32 activations the 4-bit formats are bound by the unpack-convert-FMA
//! work, not by memory. With int8 activations the inner loop is one integer
//! dot product per 64 bytes of codes (`vpdpbusd`), as in the fastest CPU
//! libraries. The price is a small, documented error: each activation block
//! is rounded to 255 levels of its absmax (`x ≈ dx · xq`), which adds an NMSE
//! of ~2e-5 on Gaussian inputs — far below the cross-backend bound of 5e-4
//! (see `docs/PERFORMANCE.md`). The exact-f32 formats (f32, f16, bf16) keep
//! f32 activations; so does the GEMM except for q4, whose GEMM rounds its
//! activations by the same rule ([`quantize_block`], `gemm_i8.rs`).
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

/// A block's absmax, `None` when a value is not finite. Integer folds, which the
/// compiler vectorizes (f32 sums and maxima it must keep in order: those
/// folds made the rounding the slowest part of an int8-activation GEMM off
/// AVX-512): an exponent of all ones is infinity or NaN, and finite
/// magnitudes order as their bits.
#[inline]
fn block_absmax(blk: &[f32]) -> Option<f32> {
    const EXP: u32 = 0x7f80_0000;
    let special = blk
        .iter()
        .fold(0u32, |m, v| m | u32::from(v.to_bits() & EXP == EXP));
    if special != 0 {
        return None;
    }
    Some(f32::from_bits(
        blk.iter()
            .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)),
    ))
}

/// Quantizes one block (at most [`QBLOCK`] values) into the first
/// `blk.len()` entries of `codes`: `blk[i] ≈ dx · codes[i]`, `dx = absmax /
/// 127`, codes rounded half to even. Returns `(dx, Σ codes)`, `(0, 0)` for
/// an all-zero block (codes left as they are), or `None` when a value is not
/// finite (codes left as they are). Every int8-activation path follows this
/// rule.
#[inline]
pub(crate) fn quantize_block(blk: &[f32], codes: &mut [i8]) -> Option<(f32, i32)> {
    let amax = block_absmax(blk)?;
    if amax == 0.0 {
        return Some((0.0, 0));
    }
    let inv = 127.0 / amax;
    let mut s = 0i32;
    for (q, &v) in codes.iter_mut().zip(blk) {
        // Round half to even by the 1.5 * 2^23 trick (|v * inv| <= 127):
        // `round_ties_even` is a libm call on baseline x86-64.
        let r = (v * inv + ROUND_MAGIC) - ROUND_MAGIC;
        let c = r.clamp(-127.0, 127.0) as i8;
        *q = c;
        s += c as i32;
    }
    Some((amax / 127.0, s))
}

/// Rows of `cols` values with every [`QBLOCK`]-column block replaced by its
/// int8 rounding `dx · xq` ([`quantize_block`]; NaN for a block that is not
/// finite), into `out` (cleared first; a buffer kept by the caller: fresh
/// pages per call cost more than the rounding): what an int8-activation
/// kernel multiplies, in f32, for the paths that keep f32 arithmetic.
pub(crate) fn int8_rounded_into(x: &[f32], cols: usize, out: &mut Vec<f32>) {
    out.clear();
    out.reserve(x.len());
    for row in x.chunks(cols.max(1)) {
        for blk in row.chunks(QBLOCK) {
            let Some(amax) = block_absmax(blk) else {
                out.extend(blk.iter().map(|_| f32::NAN));
                continue;
            };
            if amax == 0.0 {
                out.extend(blk.iter().map(|_| 0.0));
                continue;
            }
            // [`quantize_block`]'s codes, as f32 (a map the compiler
            // vectorizes), times its `dx`.
            let (inv, d) = (127.0 / amax, amax / 127.0);
            out.extend(
                blk.iter()
                    .map(|&v| d * ((v * inv + ROUND_MAGIC) - ROUND_MAGIC).clamp(-127.0, 127.0)),
            );
        }
    }
}

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
    /// Quantizes `x` (one activation row) with its SIMD lane tables;
    /// `simd` allows the AVX-512 quantizer where the CPU has it. Every
    /// quantizer produces the same codes and scales.
    pub(crate) fn new(x: &[f32], simd: bool) -> QuantAct {
        let mut a = QuantAct::default();
        a.fill(x, simd);
        a
    }

    /// Like [`QuantAct::new`], reusing this value's buffers (a GEMV per
    /// token should not allocate and fault in fresh pages every call).
    pub(crate) fn fill(&mut self, x: &[f32], simd: bool) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        #[cfg(target_arch = "x86_64")]
        if simd && super::kernel::KernelPath::Avx512.is_supported() {
            self.reset(x.len());
            // SAFETY: the CPU supports AVX-512 (checked above); `reset`
            // sized and zeroed every buffer for `x`. The kernel writes the
            // SIMD tables as it goes.
            unsafe { avx512::quantize(x, self) };
            return;
        }
        self.fill_portable(x);
    }

    /// `dx` of block `b`, also into the block's entries of the lane
    /// tables: 4 lanes of `nib_dx`, 8 of `byte_dx`.
    #[inline(always)]
    fn set_dx(&mut self, b: usize, d: f32) {
        self.dx[b] = d;
        self.nib_dx[4 * b..4 * b + 4].fill(d);
        self.byte_dx[8 * b..8 * b + 8].fill(d);
    }

    /// The portable quantizer: the same rule as the SIMD one, into reused
    /// buffers, writing the lane tables block by block (no second pass).
    fn fill_portable(&mut self, x: &[f32]) {
        self.reset(x.len());
        for (b, blk) in x.chunks(QBLOCK).enumerate() {
            let codes = &mut self.xq[b * QBLOCK..(b + 1) * QBLOCK];
            let Some((d, s)) = quantize_block(blk, codes) else {
                // Keep NaN / infinity visible in the output instead of rounding it away.
                self.set_dx(b, f32::NAN);
                continue;
            };
            if d == 0.0 {
                continue;
            }
            // 4-bit layout: per 128-column chunk the 64 even columns, then
            // the 64 odd ones; block `j` of the chunk owns 16 of each.
            let (k, j) = (b * QBLOCK / NIB_CHUNK, b % (NIB_CHUNK / QBLOCK));
            let base = k * NIB_CHUNK + 16 * j;
            for m in 0..QBLOCK / 2 {
                self.nib_xq[base + m] = codes[2 * m];
                self.nib_xq[base + NIB_CHUNK / 2 + m] = codes[2 * m + 1];
            }
            self.set_dx(b, d);
            self.sumq[b] = s;
        }
    }

    /// Zeroed buffers (SIMD tables included) for a row of `cols` columns.
    fn reset(&mut self, cols: usize) {
        let padded = round_up(cols.max(1), NIB_CHUNK);
        self.cols = cols;
        for v in [&mut self.xq, &mut self.nib_xq] {
            v.clear();
            v.resize(padded, 0);
        }
        for (v, n) in [
            (&mut self.dx, padded / QBLOCK),
            (&mut self.nib_dx, padded / NIB_CHUNK * 16),
            (&mut self.byte_dx, padded / BYTE_CHUNK * 16),
        ] {
            v.clear();
            v.resize(n, 0.0);
        }
        self.sumq.clear();
        self.sumq.resize(padded / QBLOCK, 0);
    }

    /// The reference quantizer the tests compare every path with: fresh
    /// buffers, lane tables built in a separate pass from their definition.
    #[cfg(test)]
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

    /// The SIMD tables from the codes and scales, by their definition.
    #[cfg(test)]
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

    use super::{QuantAct, BYTE_CHUNK, NIB_CHUNK, QBLOCK};

    /// Quantizes `x` into `a` block by block (same rule as the portable code:
    /// `dx = absmax / 127`, codes `rne(x · 127 / absmax)`; `vcvtps2dq` rounds
    /// to nearest even under the default MXCSR), writing the SIMD tables
    /// (`nib_xq`, `nib_dx`, `byte_dx`) as it goes.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW; `a` was sized and zeroed for `x` by
    /// `QuantAct::reset`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize(x: &[f32], a: &mut QuantAct) {
        let cols = x.len();
        let nblocks = cols.div_ceil(QBLOCK);
        assert!(a.xq.len() >= nblocks * QBLOCK && a.xq.len().is_multiple_of(NIB_CHUNK));
        assert!(a.dx.len() >= nblocks && a.sumq.len() >= nblocks);
        assert!(a.nib_xq.len() == a.xq.len());
        assert!(a.nib_dx.len() * NIB_CHUNK == a.xq.len() * 16);
        assert!(a.byte_dx.len() * BYTE_CHUNK == a.xq.len() * 16);
        // Even / odd lanes of the block's 32 codes (`q0` lanes 0..16, `q1`
        // lanes 16..32 of the two-register permute).
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
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
            let amax = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
            // x * 0 is NaN exactly for NaN and infinities.
            let bad = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(
                _mm512_mul_ps(v0, _mm512_setzero_ps()),
                _mm512_mul_ps(v1, _mm512_setzero_ps()),
            );
            if bad != 0 {
                a.set_dx(b, f32::NAN);
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
            // 4-bit layout: per 128-column chunk the 64 even columns, then
            // the 64 odd ones; block `j` of the chunk owns 16 of each.
            let (k, j) = (c0 / NIB_CHUNK, (c0 % NIB_CHUNK) / QBLOCK);
            let nib = a.nib_xq.as_mut_ptr().add(k * NIB_CHUNK + 16 * j);
            let ev = _mm512_permutex2var_epi32(q0, even, q1);
            let od = _mm512_permutex2var_epi32(q0, odd, q1);
            _mm_storeu_si128(nib as *mut __m128i, _mm512_cvtepi32_epi8(ev));
            _mm_storeu_si128(
                nib.add(NIB_CHUNK / 2) as *mut __m128i,
                _mm512_cvtepi32_epi8(od),
            );
            a.set_dx(b, amax / 127.0);
            a.sumq[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{int8_rounded_into, QuantAct, QBLOCK};

    /// `int8_rounded_into` is `dx · xq` of the reference quantizer, value
    /// for value (bits), NaN for a non-finite block, over rows whose length
    /// is not a multiple of 32 (blocks restart at each row).
    #[test]
    fn rounded_rows_are_dx_times_codes() {
        let cols = 77;
        let mut x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
            .collect();
        x[cols + 40] = f32::INFINITY;
        x[2 * cols..2 * cols + 32].fill(0.0);
        let mut out = vec![1.0; 5];
        int8_rounded_into(&x, cols, &mut out);
        assert_eq!(out.len(), x.len());
        for (r, row) in x.chunks(cols).enumerate() {
            let a = QuantAct::new_portable(row, false);
            for c in 0..cols {
                let got = out[r * cols + c];
                let d = a.dx[c / QBLOCK];
                if d.is_nan() {
                    assert!(got.is_nan(), "row {r} col {c}");
                } else {
                    let want = d * a.xq[c] as f32;
                    assert_eq!(got.to_bits(), want.to_bits(), "row {r} col {c}");
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// The SIMD and portable quantizers write the same codes, scales, sums
    /// and lane tables as the reference: odd lengths, an all-zero block, a
    /// NaN block and an infinite one included.
    #[test]
    fn simd_quantizer_matches_portable() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let mut reused = QuantAct::default();
        for cols in [1, 31, 32, 33, 127, 128, 129, 300, 1000, 4099] {
            let mut x: Vec<f32> = (0..cols).map(|_| 3.0 * next()).collect();
            if cols > 64 {
                x[32..64].fill(0.0);
            }
            if cols > 100 {
                x[97] = f32::NAN;
            }
            if cols > 200 {
                x[190] = f32::NEG_INFINITY;
            }
            let want = QuantAct::new_portable(&x, true);
            // Fresh buffers, and buffers reused from a longer row (stale
            // codes and scales must not survive).
            reused.fill(&x, true);
            for got in [
                QuantAct::new(&x, true),
                QuantAct::new(&x, false),
                reused.clone(),
            ] {
                assert_eq!(got.cols, want.cols, "cols {cols}");
                assert_eq!(got.xq, want.xq, "xq, cols {cols}");
                assert_eq!(bits(&got.dx), bits(&want.dx), "dx, cols {cols}");
                assert_eq!(got.sumq, want.sumq, "sumq, cols {cols}");
                assert_eq!(got.nib_xq, want.nib_xq, "nib_xq, cols {cols}");
                assert_eq!(bits(&got.nib_dx), bits(&want.nib_dx), "nib_dx, cols {cols}");
                assert_eq!(
                    bits(&got.byte_dx),
                    bits(&want.byte_dx),
                    "byte_dx, cols {cols}"
                );
            }
            reused.fill(&vec![5.0; 5000], true);
        }
    }
}
