//! The sparse outlier part of a matmul: `Y += X · Oᵀ`, `O` in CSR by row
//! with f16 values (see `docs/FORMATS.md`).
//!
//! A GEMV adds each task's rows right after their dense pass
//! ([`add_rows`]); a GEMM runs [`add_outliers`] after the dense pass, in
//! parallel over runs of [`ROWS`] rows of every batch row. Per row the SIMD paths load 16 (or
//! 8) column indices and f16 values at a time, gather the activations and
//! FMA, so the pass costs about its bytes: 6 per outlier.

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
    // to them: the SIMD gathers below rely on it.
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::format::Outliers;

    /// Up to 16 outliers of one row: `acc += values · x[cols]`, advancing
    /// `pos` (nothing once `pos == end`).
    #[inline(always)]
    unsafe fn step(
        vp: *const half::f16,
        ip: *const u32,
        x: &[f32],
        pos: &mut usize,
        end: usize,
        acc: &mut __m512,
    ) {
        let i = *pos;
        if i >= end {
            return;
        }
        let k = (end - i).min(16);
        let m: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
        let ix = _mm512_maskz_loadu_epi32(m, ip.add(i) as *const i32);
        let w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, vp.add(i) as *const i16));
        let xv = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, ix, x.as_ptr());
        *acc = _mm512_fmadd_ps(w, xv, *acc);
        *pos = i + k;
    }

    /// # Safety
    /// The CPU supports AVX-512 F; `rows` are `out.len() + 1` row pointers
    /// into `o` whose entries are in bounds, and every column index is
    /// below `x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(super) unsafe fn add_rows(o: &Outliers, x: &[f32], rows: &[u32], out: &mut [f32]) {
        // Four rows in lockstep: four independent gather-FMA chains (one
        // row at a time left each row's chain and reduction exposed).
        const G: usize = 4;
        let (vp, ip) = (o.values.as_ptr(), o.col_idx.as_ptr());
        for (q, ys) in out.chunks_mut(G).enumerate() {
            let r0 = q * G;
            let mut pos = [0usize; G];
            let mut end = [0usize; G];
            for j in 0..ys.len() {
                pos[j] = rows[r0 + j] as usize;
                end[j] = rows[r0 + j + 1] as usize;
            }
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            // Four named accumulators (an indexed array stayed on the stack:
            // every FMA went through a store and a reload).
            while pos[0] < end[0] || pos[1] < end[1] || pos[2] < end[2] || pos[3] < end[3] {
                step(vp, ip, x, &mut pos[0], end[0], &mut a0);
                step(vp, ip, x, &mut pos[1], end[1], &mut a1);
                step(vp, ip, x, &mut pos[2], end[2], &mut a2);
                step(vp, ip, x, &mut pos[3], end[3], &mut a3);
            }
            let acc = [a0, a1, a2, a3];
            for (y, a) in ys.iter_mut().zip(acc) {
                *y += _mm512_reduce_add_ps(a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::format::Outliers;

    /// # Safety
    /// The CPU supports AVX2 + FMA + F16C; as for the AVX-512 version.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn add_rows(o: &Outliers, x: &[f32], rows: &[u32], out: &mut [f32]) {
        let (vp, ip) = (o.values.as_ptr(), o.col_idx.as_ptr());
        for (r, y) in out.iter_mut().enumerate() {
            let (mut i, b) = (rows[r] as usize, rows[r + 1] as usize);
            let mut acc = _mm256_setzero_ps();
            while i + 8 <= b {
                let ix = _mm256_loadu_si256(ip.add(i) as *const __m256i);
                let w = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(i) as *const __m128i));
                let xv = _mm256_i32gather_ps::<4>(x.as_ptr(), ix);
                acc = _mm256_fmadd_ps(w, xv, acc);
                i += 8;
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut s: f32 = lanes.iter().sum();
            while i < b {
                s += (*vp.add(i)).to_f32() * *x.as_ptr().add(*ip.add(i) as usize);
                i += 1;
            }
            *y += s;
        }
    }
}
