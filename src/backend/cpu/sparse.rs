//! The sparse outlier part of a matmul: `Y += X · Oᵀ`, `O` in CSR by row
//! with f16 values (see `docs/FORMATS.md`).
//!
//! A GEMV adds each task's rows right after their dense pass
//! ([`add_rows`]); a GEMM runs [`add_outliers`] after the dense pass, in
//! parallel over runs of [`ROWS`] rows of every batch row.
//!
//! The SIMD paths take four rows at a time as one run of entries (the
//! rows are contiguous in CSR) and step through it 16 (AVX-512) or 8
//! (AVX2) entries at a time whatever the row lengths: convert the f16
//! values, load the activations `x[col]` with scalar loads, multiply, and
//! add each lane into its row's accumulator under a lane mask. On Zen 4
//! this costs ~0.45 ns per outlier with the entries in L2, against ~0.9
//! ns for hardware gathers row by row (a masked 16-lane gather runs ~2.5x
//! slower than 16 scalar loads there, and short rows wasted most lanes of
//! their last gather). Each outlier costs two dependent loads (column,
//! then activation), about what 10-20 dense 4-bit weights cost, so the
//! sparse part costs more than its 6 bytes' share of a memory-bound GEMV
//! (see `docs/PERFORMANCE.md`). NEON goes row by row, four entries per
//! step (`fcvtl`, single-lane loads, one FMA).

use rayon::prelude::*;

use super::kernel::KernelPath;
use crate::format::Outliers;

/// Rows per task: a multiple of 16 so tasks never share a cache line of `y`.
const ROWS: usize = 256;

/// `y[b][r] += Σ_i values[i] · x[b][col_idx[i]]` over row `r`'s outliers.
/// `o` was validated for a `rows x cols` matrix (every column index
/// `< cols`) when the matrix was built.
pub(crate) fn add_outliers(
    path: KernelPath,
    o: &Outliers,
    x: &[f32],
    cols: usize,
    rows: usize,
    y: &mut [f32],
) {
    assert_eq!(o.row_ptr.len(), rows + 1, "outlier row pointers");
    y.par_chunks_mut(rows)
        .zip(x.par_chunks(cols))
        .for_each(|(yb, xb)| {
            yb.par_chunks_mut(ROWS)
                .enumerate()
                .for_each(|(t, yt)| add_rows(path, o, xb, t * ROWS, yt));
        });
}

/// `out[i] += Σ_j values[j] · x[col_idx[j]]` over the outliers of row
/// `r0 + i`, for one activation row `x` (the GEMV adds a task's rows this
/// way, pass by pass, right after their dense part).
pub(crate) fn add_rows(path: KernelPath, o: &Outliers, x: &[f32], r0: usize, out: &mut [f32]) {
    // The next run of rows' outliers, into cache while the caller streams
    // its next dense pass (their loads otherwise miss at every pass).
    let next = (r0 + out.len()).min(o.row_ptr.len() - 1);
    let last = (next + out.len()).min(o.row_ptr.len() - 1);
    let (na, nb) = (o.row_ptr[next] as usize, o.row_ptr[last] as usize);
    prefetch_range(o.col_idx[na..nb].as_ptr() as *const u8, 4 * (nb - na));
    prefetch_range(o.values[na..nb].as_ptr() as *const u8, 2 * (nb - na));
    let rows = &o.row_ptr[r0..r0 + out.len() + 1];
    let (a, b) = (rows[0] as usize, rows[out.len()] as usize);
    // `o` was validated against the matrix (every column index < cols ==
    // x.len()) by `QuantizedMatrix::with_outliers`, the only way outliers
    // get into a matrix, and a matrix never hands out a mutable reference
    // to them: the unchecked SIMD loads below rely on it.
    debug_assert!(o.col_idx[a..b].iter().all(|&c| (c as usize) < x.len()));
    assert!(b <= o.values.len() && b <= o.col_idx.len());
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU by the caller
        // (`KernelPath::check`); the row pointers are in bounds (asserted)
        // and every column index is below `x.len()` (see above).
        KernelPath::Avx512 => unsafe { avx512::add_rows(o, x, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { avx2::add_rows(o, x, rows, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above (NEON is baseline on aarch64).
        KernelPath::Neon => unsafe { neon::add_rows(o, x, rows, out) },
        _ => {
            for (i, yr) in out.iter_mut().enumerate() {
                let (a, b) = (rows[i] as usize, rows[i + 1] as usize);
                *yr += o.values[a..b]
                    .iter()
                    .zip(&o.col_idx[a..b])
                    .map(|(v, &c)| v.to_f32() * x[c as usize])
                    .sum::<f32>();
            }
        }
    }
}

/// Prefetches `len` bytes from `p` into L1 (a hint: no effect on results).
#[inline]
fn prefetch_range(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < len {
            // SAFETY: a prefetch never faults; `p + off` is inside the slice.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// The CSR positions of a run of four rows starting at row `r0` (the
/// first of `n <= 4` rows of `out`): each row's start, then the run's end.
/// Rows past `n` are empty runs at the end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn run_bounds(rows: &[u32], r0: usize, n: usize) -> [usize; 5] {
    std::array::from_fn(|j| rows[r0 + j.min(n)] as usize)
}

/// Adds four lane sums (`[Σ a, Σ b, Σ c, Σ d]`, see `avx2::hsum4`) into
/// the run's outputs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_sums(sums: std::arch::x86_64::__m128, ys: &mut [f32]) {
    let mut v = [0.0f32; 4];
    std::arch::x86_64::_mm_storeu_ps(v.as_mut_ptr(), sums);
    for (y, s) in ys.iter_mut().zip(v) {
        *y += s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::format::Outliers;

    /// Lanes `l` of a 16-entry step starting at CSR position `pos` with
    /// `pos + l < t`, as a mask.
    #[inline(always)]
    fn lanes_below(t: usize, pos: usize) -> __mmask16 {
        if t <= pos {
            0
        } else if t - pos >= 16 {
            0xFFFF
        } else {
            ((1u32 << (t - pos)) - 1) as __mmask16
        }
    }

    /// `x[idx[0..16]]` by scalar loads. (Zen 4 runs a 16-lane gather
    /// about 1.5x slower than these loads, and a masked one 2.5x; the
    /// volatile reads keep the compiler from turning them back into a
    /// gather.)
    #[inline(always)]
    unsafe fn load16(xp: *const f32, ip: *const u32) -> __m512 {
        let l = |j: usize| _mm_set_ss(std::ptr::read_volatile(xp.add(*ip.add(j) as usize)));
        let q = |j: usize| {
            let v = _mm_insert_ps::<0x10>(l(j), l(j + 1));
            let v = _mm_insert_ps::<0x20>(v, l(j + 2));
            _mm_insert_ps::<0x30>(v, l(j + 3))
        };
        let lo = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(q(0)), q(4));
        let hi = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(q(8)), q(12));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)),
            _mm256_castps_pd(hi),
        ))
    }

    /// The first `k < 16` of `x[idx[..]]`, zeros after.
    #[inline(always)]
    unsafe fn load_tail(xp: *const f32, ip: *const u32, k: usize) -> __m512 {
        let mut t = [0.0f32; 16];
        for (j, v) in t.iter_mut().enumerate().take(k) {
            *v = std::ptr::read_volatile(xp.add(*ip.add(j) as usize));
        }
        _mm512_loadu_ps(t.as_ptr())
    }

    /// The lane sums of four vectors: `[Σ a, Σ b, Σ c, Σ d]`.
    #[inline(always)]
    unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        let half = |v: __m512| {
            let h = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_add_ps(_mm512_castps512_ps256(v), h)
        };
        super::avx2::hsum4(half(a), half(b), half(c), half(d))
    }

    /// # Safety
    /// The CPU supports AVX-512 F; `rows` are `out.len() + 1` row pointers
    /// into `o` whose entries are in bounds, and every column index is
    /// below `x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,sse4.1,sse3")]
    pub(super) unsafe fn add_rows(o: &Outliers, x: &[f32], rows: &[u32], out: &mut [f32]) {
        // Four rows at a time as one run of entries (contiguous in CSR),
        // 16 entries per step whatever the row lengths: each step's
        // products go to the rows' accumulators under lane masks. (Steps
        // row by row wasted lanes on every short row's tail.)
        let (vp, ip, xp) = (o.values.as_ptr(), o.col_idx.as_ptr(), x.as_ptr());
        let zero = _mm512_setzero_ps();
        for (q, ys) in out.chunks_mut(4).enumerate() {
            let [mut pos, b1, b2, b3, end] = super::run_bounds(rows, 4 * q, ys.len());
            let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
            while pos < end {
                let k = (end - pos).min(16);
                let m: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
                let w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, vp.add(pos) as *const i16));
                let xv = if k == 16 {
                    load16(xp, ip.add(pos))
                } else {
                    load_tail(xp, ip.add(pos), k)
                };
                let p = _mm512_mul_ps(w, xv);
                let (m1, m2, m3) = (
                    lanes_below(b1, pos),
                    lanes_below(b2, pos),
                    lanes_below(b3, pos),
                );
                a0 = _mm512_mask_add_ps(a0, m1, a0, p);
                a1 = _mm512_mask_add_ps(a1, m2 & !m1, a1, p);
                a2 = _mm512_mask_add_ps(a2, m3 & !m2, a2, p);
                a3 = _mm512_mask_add_ps(a3, m & !m3, a3, p);
                pos += k;
            }
            super::add_sums(hsum4(a0, a1, a2, a3), ys);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::format::Outliers;

    /// `x[idx[0..4]]` by scalar loads (see `avx512::load16`).
    #[inline(always)]
    unsafe fn load4(xp: *const f32, ip: *const u32) -> __m128 {
        let l = |j: usize| _mm_set_ss(std::ptr::read_volatile(xp.add(*ip.add(j) as usize)));
        let v = _mm_insert_ps::<0x10>(l(0), l(1));
        let v = _mm_insert_ps::<0x20>(v, l(2));
        _mm_insert_ps::<0x30>(v, l(3))
    }

    /// The lane sums of four vectors: `[Σ a, Σ b, Σ c, Σ d]`.
    #[inline(always)]
    pub(super) unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let half = |v: __m256| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let (a, b, c, d) = (half(a), half(b), half(c), half(d));
        _mm_hadd_ps(_mm_hadd_ps(a, b), _mm_hadd_ps(c, d))
    }

    /// # Safety
    /// The CPU supports AVX2 + FMA + F16C; as for the AVX-512 version.
    #[target_feature(enable = "avx2,fma,f16c,sse4.1,sse3")]
    pub(super) unsafe fn add_rows(o: &Outliers, x: &[f32], rows: &[u32], out: &mut [f32]) {
        // As the AVX-512 version: four rows as one run, 8 entries per step,
        // lane masks (all-ones lanes ANDed with the products) pick each
        // step's rows.
        let (vp, ip, xp) = (o.values.as_ptr(), o.col_idx.as_ptr(), x.as_ptr());
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // Lanes `l` with `pos + l < t`.
        let below = |t: usize, pos: usize| {
            let n = t.saturating_sub(pos).min(8) as i32;
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane))
        };
        let zero = _mm256_setzero_ps();
        for (q, ys) in out.chunks_mut(4).enumerate() {
            let [mut pos, b1, b2, b3, end] = super::run_bounds(rows, 4 * q, ys.len());
            let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
            while pos < end {
                let k = (end - pos).min(8);
                let (w, xv) = if k == 8 {
                    let w = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(pos) as *const __m128i));
                    let lo = load4(xp, ip.add(pos));
                    let hi = load4(xp, ip.add(pos + 4));
                    (w, _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi))
                } else {
                    // The tail: zeros past the run (no reads past the arrays).
                    let mut h = [0u16; 8];
                    let mut t = [0.0f32; 8];
                    for j in 0..k {
                        h[j] = (*vp.add(pos + j)).to_bits();
                        t[j] = std::ptr::read_volatile(xp.add(*ip.add(pos + j) as usize));
                    }
                    let w = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                    (w, _mm256_loadu_ps(t.as_ptr()))
                };
                let p = _mm256_mul_ps(w, xv);
                let (m1, m2, m3) = (below(b1, pos), below(b2, pos), below(b3, pos));
                a0 = _mm256_add_ps(a0, _mm256_and_ps(p, m1));
                a1 = _mm256_add_ps(a1, _mm256_and_ps(p, _mm256_andnot_ps(m1, m2)));
                a2 = _mm256_add_ps(a2, _mm256_and_ps(p, _mm256_andnot_ps(m2, m3)));
                a3 = _mm256_add_ps(a3, _mm256_andnot_ps(m3, p));
                pos += k;
            }
            super::add_sums(hsum4(a0, a1, a2, a3), ys);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::super::gemv::neon::{cvt_f16x4, f16_to_f32};
    use crate::format::Outliers;

    /// Row by row, four entries per step: `fcvtl` of four f16 values, the
    /// activations by single-lane loads (`ld1 {v.s}[i]`), one FMA; the
    /// row's last 0-3 entries scalar. (The portable path converts each f16
    /// in software.)
    ///
    /// # Safety
    /// NEON; `rows` are `out.len() + 1` row pointers into `o` whose
    /// entries are in bounds, and every column index is below `x.len()`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn add_rows(o: &Outliers, x: &[f32], rows: &[u32], out: &mut [f32]) {
        let (vp, ip, xp) = (
            o.values.as_ptr() as *const u16,
            o.col_idx.as_ptr(),
            x.as_ptr(),
        );
        for (r, y) in out.iter_mut().enumerate() {
            let (mut i, b) = (rows[r] as usize, rows[r + 1] as usize);
            let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let step = |i: usize, acc: float32x4_t| {
                let w = cvt_f16x4(vld1_u16(vp.add(i)));
                let mut v = vdupq_n_f32(0.0);
                v = vld1q_lane_f32::<0>(xp.add(*ip.add(i) as usize), v);
                v = vld1q_lane_f32::<1>(xp.add(*ip.add(i + 1) as usize), v);
                v = vld1q_lane_f32::<2>(xp.add(*ip.add(i + 2) as usize), v);
                v = vld1q_lane_f32::<3>(xp.add(*ip.add(i + 3) as usize), v);
                vfmaq_f32(acc, w, v)
            };
            while i + 8 <= b {
                a0 = step(i, a0);
                a1 = step(i + 4, a1);
                i += 8;
            }
            if i + 4 <= b {
                a0 = step(i, a0);
                i += 4;
            }
            let mut s = vaddvq_f32(vaddq_f32(a0, a1));
            while i < b {
                s += f16_to_f32(*o.values.get_unchecked(i)) * *xp.add(*ip.add(i) as usize);
                i += 1;
            }
            *y += s;
        }
    }
}
