//! q8 / q4 / lut4 GEMM with int8 activations: AVX-512 VNNI integer dot
//! products.
//!
//! Why: at a transformer's batch sizes (a 128-token input is 128 rows) the
//! f32 GEMM is bound by its FMAs, so a 4-bit matrix decoded to f32 is no
//! faster than an f32 one, and the decode comes on top. Rounding the
//! activations to int8 per block of 32 columns (the GEMV's rule,
//! `act::quantize_block`) lets one `vpdpbusd` do 64 multiply-adds (u8 codes x
//! i8 activations) where an FMA does 16. The cost is the activation
//! rounding, which next to 4-bit weights is negligible: on
//! all-MiniLM-L6-v2 the pooled cosine of int4 g128 to f32 went 0.96112 ->
//! 0.96107. int8 weights lose half their fidelity to it (0.99979 ->
//! 0.99957), so q8 comes here only when the caller asks
//! (`GemvActivations::Int8All`). See docs/PERFORMANCE.md.
//!
//! Layout. X is quantized once per call into 16-row chunks, per K block of
//! [`KC`] columns: codes `[KC / 4][16 rows][4 columns]` (one zmm per 4
//! columns, so each i32 lane of `vpdpbusd` is one batch row) and, per
//! 32-column block and row, `dx` and `dx · Σ codes`. Per task (batch block
//! x weight rows, as in the f32 driver) each 6-row weight panel is
//! unpacked once per K block to one byte per code (natural column order;
//! q8 codes + 128, zero point 128),
//! with its per-block scale `s` and `s · z`. The micro-kernel keeps a
//! 6 x 32 tile in 12 i32 accumulators per 32-column block and 12 f32 ones
//! per weight group:
//!
//! `y[b, r] = Σ_g s[r, g] · (Σ_{blk in g} dx[b, blk] · Σ_k q[r, k] · xq[b, k]
//!            - z[r, g] · Σ_{blk in g} dx[b, blk] · Σ_k xq[b, k])`.
//!
//! The integer sums are exact; the f32 part differs from the f32-activation
//! path on `int8_rounded` input only by rounding.

use rayon::prelude::*;

#[cfg(test)]
use super::super::act::quantize_block;
use super::super::act::QBLOCK;
use super::super::gemv::lut_u8;
use super::super::kernel::KernelPath;
use super::{batch_rows, write_y, Grid, NextPanel, OutPtr, TaskRows, KC, LANES, MC, TASK, UNIT};
use crate::format::{round_up, Packed, QuantizedMatrix};

/// Tasks of at most this many 16-row chunks walk each weight panel along
/// its row (all K blocks of a panel, then the next panel) instead of one
/// K block across all panels: each row's codes then come in as one
/// sequential run the hardware prefetcher follows, where the K-block order
/// reads 128-256 bytes per row at a time (the next panel prefetched or
/// not, the unpack waited on those loads). 4096 x 14336 q4 g128, ms: batch
/// 8 10.3-11.8 -> 7.0-7.1, batch 32 9.0-11.0 -> 7.5, batch 128 26-27 ->
/// 25-26; batch 512 (15 chunks per task) was no faster along the rows, so
/// it keeps the K-block order, which reuses each K block of X across all
/// of the task's panels.
const ALONG_MAX_CHUNKS: usize = 8;

/// Weight rows per micro-tile (12 i32 + 12 f32 accumulators, 2 X registers).
const NRI: usize = 6;
/// Activation blocks per K block.
const NBK: usize = KC / QBLOCK;
/// Code bytes of one 16-row chunk per K block.
const XBLOCK: usize = KC * LANES;

/// A matrix's codes as [`gemm`] unpacks them.
#[derive(Clone, Copy)]
enum Codes<'a> {
    /// q4 / lut4: two codes per byte, low nibble first; lut4 with the
    /// codebook's 256-level table.
    Nibbles(&'a [u8], Option<[u8; 16]>),
    /// q8: one signed code per byte.
    Bytes(&'a [i8]),
}

/// The zero point `z'` of `w = s' · (u - z')` per format (see [`gemm`]).
#[derive(Clone, Copy)]
enum Zero<'a> {
    /// q4: per group.
    Q4(&'a [u8]),
    /// lut4: the codebook's 256-level zero and step.
    Lut { zero: f32, step: f32 },
    /// q8: 128, the bias of the unpacked codes.
    Q8,
}

/// X quantized for [`gemm`], kept by the calling thread between calls.
#[derive(Default)]
struct XQuant {
    /// Codes, `[chunk][kb][KC / 4][LANES][4]`.
    q: Vec<i8>,
    /// `dx`, `[chunk][kb][NBK][LANES]`.
    d: Vec<f32>,
    /// `dx · Σ codes`, as `d`.
    s: Vec<f32>,
}

thread_local! {
    static XQ: std::cell::Cell<XQuant> = std::cell::Cell::new(XQuant::default());
}

/// `Y = (X ∘ act_scale) · Wᵀ (+ bias)` for a q8 / q4 / lut4 matrix, `X ∘
/// act_scale` rounded to int8 per block of 32 columns, dense part only.
///
/// # Panics
/// When `m` is not q8 / q4 / lut4 or the CPU lacks AVX-512 VNNI (callers check
/// [`KernelPath::Avx512`]).
pub(super) fn gemm(
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(KernelPath::Avx512.is_supported(), "AVX-512 VNNI GEMM");
    // Per format: the codes, f16 scales, and how a code byte maps to the
    // weight, `w = s' · (u - z')` with u the unpacked byte: q4 `u` the
    // code, `s' = s`, `z'` the group's zero point; lut4 `u` the codebook
    // on 256 levels (`codebook[c] ≈ step · (table[c] - zero)`, as the GEMV
    // takes it), `s' = s · step`, `z' = zero`; q8 `u` the code + 128 (the
    // unsigned operand `vpdpbusd` wants), `s' = s`, `z' = 128`.
    let (codes, scales, zero) = match m.packed() {
        Packed::Q4(q) => (
            Codes::Nibbles(bytemuck::cast_slice(&q.codes), None),
            &q.scales,
            Zero::Q4(&q.zeros),
        ),
        Packed::Lut4(q) => {
            let (table, zero, step) = lut_u8(&q.codebook);
            (
                Codes::Nibbles(bytemuck::cast_slice(&q.codes), Some(table)),
                &q.scales,
                Zero::Lut { zero, step },
            )
        }
        Packed::Q8(q) => (Codes::Bytes(&q.codes), &q.scales, Zero::Q8),
        _ => panic!("int8-activation GEMM takes q8 / q4 / lut4 matrices"),
    };
    let (rows, cols) = (m.rows(), m.cols());
    let kp = round_up(cols, UNIT);
    let nkb = kp.div_ceil(KC);
    let nchunks = round_up(batch, LANES) / LANES;
    let mut xq = XQ.with(|c| c.take());
    xq.q.resize(nchunks * nkb * XBLOCK, 0);
    xq.d.resize(nchunks * nkb * NBK * LANES, 0.0);
    xq.s.resize(nchunks * nkb * NBK * LANES, 0.0);
    xq.q[..nchunks * nkb * XBLOCK]
        .par_chunks_mut(nkb * XBLOCK)
        .zip(xq.d[..nchunks * nkb * NBK * LANES].par_chunks_mut(nkb * NBK * LANES))
        .zip(xq.s[..nchunks * nkb * NBK * LANES].par_chunks_mut(nkb * NBK * LANES))
        .enumerate()
        .for_each(|(ch, ((q, d), s))| pack_chunk(x, m.act_scale(), batch, cols, kp, ch, q, d, s));
    let (xqq, xqd, xqs) = (&xq.q[..], &xq.d[..], &xq.s[..]);

    let glen = m.group_len();
    let gpr = m.groups_per_row();
    let stride = m.row_stride_bytes();
    let grid = Grid::new(rows, nchunks);
    // Per K block: runs of 32-column blocks inside one weight group.
    let kseg: Vec<([(usize, usize); NBK], usize)> = (0..nkb)
        .map(|kb| {
            let k0 = kb * KC;
            let kc = KC.min(kp - k0);
            let mut segs = [(0usize, 0usize); NBK];
            let mut nseg = 0;
            for bi in 0..kc / QBLOCK {
                let g = (k0 + bi * QBLOCK) / glen;
                if bi > 0 && g == (k0 + (bi - 1) * QBLOCK) / glen {
                    segs[nseg - 1].1 = bi + 1;
                } else {
                    segs[nseg] = (bi, bi + 1);
                    nseg += 1;
                }
            }
            (segs, nseg)
        })
        .collect();
    let out = OutPtr(y.as_mut_ptr());
    (0..grid.len()).into_par_iter().for_each(|t| {
        let gt = grid.task(t);
        let (mb, mchunks, r0, nrows) = (gt.mb, gt.mchunks, gt.r0, gt.nrows);
        let task = TaskRows {
            rows,
            kp,
            r0,
            nrows,
            next: gt.next,
        };
        let mut tb = TASK.with(|c| c.take());
        tb.yt.resize(grid.nc * MC, 0.0);
        let yt = &mut tb.yt[..];
        let mut wq = [0u8; NRI * KC];
        let mut ws = [0.0f32; NRI * NBK];
        let mut wz = [0.0f32; NRI * NBK];
        let npanel = nrows.div_ceil(NRI);
        let along = mchunks <= ALONG_MAX_CHUNKS;
        for step in 0..nkb * npanel {
            let (kb, p) = if along {
                (step % nkb, step / nkb * NRI)
            } else {
                (step / npanel, step % npanel * NRI)
            };
            let k0 = kb * KC;
            let kc = KC.min(kp - k0);
            let (segs, nseg) = kseg[kb];
            let valid = NRI.min(nrows - p);
            // The next panel's codes (12 lines; the next in the order
            // walked) into L1 now, while this one is unpacked and
            // multiplied: in the K-block order each row's 2 lines per K
            // block are too short a run for the hardware prefetcher.
            // It took the 4096 x 14336 x 128 GEMM from 42 to 38.6 ms
            // (batch 512: 125 -> 120.5, batch 8: 20.5 -> 16.7); into L2
            // (`prefetcht1`) it had made it slower (50 ms against 46).
            NextPanel::new(
                m,
                if along {
                    task.after_along::<NRI, KC>(p, k0)
                } else {
                    task.after::<NRI, KC>(p, k0, kc)
                },
            )
            .finish();
            for i in 0..NRI {
                let (w, s, z) = (
                    &mut wq[i * KC..][..kc],
                    &mut ws[i * NBK..][..NBK],
                    &mut wz[i * NBK..][..NBK],
                );
                if i >= valid {
                    w.fill(0);
                    s.fill(0.0);
                    z.fill(0.0);
                    continue;
                }
                let r = r0 + p + i;
                match codes {
                    Codes::Nibbles(c, table) => {
                        let row = &c[r * stride + k0 / 2..][..kc / 2];
                        // SAFETY: AVX-512 checked on entry; `row` holds
                        // the `kc / 2` code bytes the function reads.
                        unsafe { avx512::unpack_q4(row, w, table.as_ref()) };
                    }
                    Codes::Bytes(c) => {
                        // The row's last K block may end before `kc`
                        // (rows are 16-byte aligned, `kp` 32).
                        let row = &c[r * stride + k0..][..kc.min(cols - k0)];
                        // SAFETY: AVX-512 checked on entry; the function
                        // reads `row` and writes `w` within their lengths.
                        unsafe { avx512::unpack_q8(row, w) };
                    }
                }
                // The micro-kernel reads them at the start of each run.
                // Run `j` is group `k0 / glen + j` (groups are whole
                // runs of blocks): the row's `nseg` scales at once.
                let g0 = r * gpr + k0 / glen;
                let mut sc = [0.0f32; NBK];
                // SAFETY: AVX-512 checked on entry (F16C comes with it).
                unsafe { avx512::scales_f32(&scales[g0..][..nseg], &mut sc) };
                for (j, &(s0, _)) in segs[..nseg].iter().enumerate() {
                    let (sc, zp) = match zero {
                        Zero::Q4(z) => (sc[j], z[g0 + j] as f32),
                        Zero::Lut { zero, step } => (sc[j] * step, zero),
                        Zero::Q8 => (sc[j], 128.0),
                    };
                    s[s0] = sc;
                    z[s0] = sc * zp;
                }
            }
            let mut ch = mb;
            while ch < mb + mchunks {
                let two = ch + 1 < mb + mchunks;
                let xa = (ch * nkb + kb) * XBLOCK;
                let da = (ch * nkb + kb) * NBK * LANES;
                let (xb, db) = if two {
                    (xa + nkb * XBLOCK, da + nkb * NBK * LANES)
                } else {
                    (xa, da)
                };
                let b0 = (ch - mb) * LANES;
                assert!(p * MC + (valid - 1) * MC + b0 + LANES * (1 + two as usize) <= yt.len());
                // SAFETY: AVX-512 VNNI checked on entry; every read is
                // inside the packed buffers (block `kb` of chunks `ch`,
                // `ch + 1`: `kc / 4` code vectors and `kc / 32` scale
                // vectors each, `wq` / `ws` / `wz` of `NRI` rows), and
                // the tile's writes inside `yt` (asserted).
                unsafe {
                    avx512::micro(
                        &segs[..nseg],
                        wq.as_ptr(),
                        ws.as_ptr(),
                        wz.as_ptr(),
                        [
                            xqq[xa..][..kc * LANES].as_ptr(),
                            xqq[xb..][..kc * LANES].as_ptr(),
                        ],
                        [
                            xqd[da..][..kc / QBLOCK * LANES].as_ptr(),
                            xqd[db..][..kc / QBLOCK * LANES].as_ptr(),
                        ],
                        [
                            xqs[da..][..kc / QBLOCK * LANES].as_ptr(),
                            xqs[db..][..kc / QBLOCK * LANES].as_ptr(),
                        ],
                        kb == 0,
                        yt[p * MC..].as_mut_ptr(),
                        MC,
                        b0,
                        valid,
                        two,
                    )
                };
                ch += if two { 2 } else { 1 };
            }
        }
        write_y(
            KernelPath::Avx512,
            yt,
            MC,
            batch_rows(mb, mchunks, batch),
            r0,
            nrows,
            bias,
            out,
            rows,
        );
        TASK.with(|c| c.set(tb));
    });
    XQ.with(|c| c.set(xq));
}

/// Quantizes batch rows `16 ch .. 16 ch + 16` of `x` (times `act`, the
/// activation scale, when given: the same f32 products the other paths
/// make before rounding) into one chunk's codes `q`, scales `d` and
/// `dx · Σ codes` `s` (every K block; rows past the batch and columns past
/// the row are 0).
#[allow(clippy::too_many_arguments)]
fn pack_chunk(
    x: &[f32],
    act: Option<&[f32]>,
    batch: usize,
    cols: usize,
    kp: usize,
    ch: usize,
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
) {
    let mut codes = [0i8; QBLOCK];
    for lane in 0..LANES {
        let b = ch * LANES + lane;
        for blk in 0..kp / QBLOCK {
            let c0 = blk * QBLOCK;
            let (kb, kk) = (c0 / KC, c0 % KC);
            let (dx, sum) = if b < batch {
                let c1 = cols.min(c0 + QBLOCK);
                let v = &x[b * cols + c0..b * cols + c1];
                // SAFETY: AVX-512 checked by `gemm`.
                unsafe { avx512::quantize_block(v, act.map(|a| &a[c0..c1]), &mut codes) }
            } else {
                codes.fill(0);
                (0.0, 0)
            };
            let qb = &mut q[kb * XBLOCK..][..XBLOCK];
            for (j, c4) in codes.chunks_exact(4).enumerate() {
                let at = (kk / 4 + j) * 4 * LANES + 4 * lane;
                qb[at..at + 4].copy_from_slice(c4);
            }
            let at = kb * NBK * LANES + (kk / QBLOCK) * LANES + lane;
            d[at] = dx;
            s[at] = dx * sum as f32;
        }
    }
}

mod avx512 {
    use std::arch::x86_64::*;

    use super::{KC, LANES, NBK, NRI};

    /// `act::quantize_block` of `v` (at most 32 values; times `scale`, as
    /// many values, when given) into `codes` (zero past `v`): `(dx, Σ
    /// codes)`, `(NaN, 0)` with zero codes when a value is not finite. The
    /// same f32 operations, so the same codes and scales.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL; `scale` is at least as long as `v`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_block(
        v: &[f32],
        scale: Option<&[f32]>,
        codes: &mut [i8; 32],
    ) -> (f32, i32) {
        let n = v.len().min(32);
        let m0 = ((1u32 << n.min(16)) - 1) as u16;
        let m1 = ((1u64 << n.saturating_sub(16)) - 1) as u16;
        let p = v.as_ptr();
        let mut v0 = _mm512_maskz_loadu_ps(m0, p);
        let mut v1 = _mm512_maskz_loadu_ps(m1, p.add(16.min(n)));
        if let Some(s) = scale {
            debug_assert!(s.len() >= n);
            let q = s.as_ptr();
            v0 = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(m0, q));
            v1 = _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(m1, q.add(16.min(n))));
        }
        let zero = _mm512_setzero_ps();
        // `v * 0` is 0 for finite v and NaN otherwise.
        let finite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_mul_ps(v0, zero), zero)
            & _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_mul_ps(v1, zero), zero);
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        if finite != 0xFFFF || amax == 0.0 {
            *codes = [0; 32];
            return (if finite != 0xFFFF { f32::NAN } else { 0.0 }, 0);
        }
        let inv = _mm512_set1_ps(127.0 / amax);
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        // Round half to even (the default rounding mode), clamp.
        let q0 = _mm512_min_epi32(
            hi,
            _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv))),
        );
        let q1 = _mm512_min_epi32(
            hi,
            _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv))),
        );
        let o = codes.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(o, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(o.add(1), _mm512_cvtepi32_epi8(q1));
        (
            amax / 127.0,
            _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)),
        )
    }

    /// One code byte per column: `row` holds `w.len() / 2` bytes of 4-bit
    /// codes (low nibble first), `w.len()` is a multiple of 32; with a
    /// `table`, each code is replaced by `table[code]`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 BW/VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn unpack_q4(row: &[u8], w: &mut [u8], table: Option<&[u8; 16]>) {
        let t128 = table.map(|t| _mm_loadu_si128(t.as_ptr() as *const __m128i));
        let t512 = t128.map(|t| _mm512_broadcast_i32x4(t));
        assert!(row.len() * 2 >= w.len() && w.len().is_multiple_of(32));
        // 128 columns at a time: the byte interleave works per 128-bit
        // lane, so two 64-bit-pair permutes put the lanes in order.
        let low = _mm512_set1_epi8(0x0F);
        let first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        let second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
        let wide = w.len() / 128;
        for u in 0..wide {
            let v = _mm512_loadu_si512(row.as_ptr().add(64 * u) as *const _);
            let mut lo = _mm512_and_si512(v, low);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            if let Some(t) = t512 {
                lo = _mm512_shuffle_epi8(t, lo);
                hi = _mm512_shuffle_epi8(t, hi);
            }
            let (a, b) = (_mm512_unpacklo_epi8(lo, hi), _mm512_unpackhi_epi8(lo, hi));
            let o = w.as_mut_ptr().add(128 * u) as *mut __m512i;
            _mm512_storeu_si512(o as *mut _, _mm512_permutex2var_epi64(a, first, b));
            _mm512_storeu_si512(o.add(1) as *mut _, _mm512_permutex2var_epi64(a, second, b));
        }
        let low = _mm_set1_epi8(0x0F);
        for u in 4 * wide..w.len() / 32 {
            let v = _mm_loadu_si128(row.as_ptr().add(16 * u) as *const __m128i);
            let mut lo = _mm_and_si128(v, low);
            let mut hi = _mm_and_si128(_mm_srli_epi16::<4>(v), low);
            if let Some(t) = t128 {
                lo = _mm_shuffle_epi8(t, lo);
                hi = _mm_shuffle_epi8(t, hi);
            }
            let o = w.as_mut_ptr().add(32 * u) as *mut __m128i;
            _mm_storeu_si128(o, _mm_unpacklo_epi8(lo, hi));
            _mm_storeu_si128(o.add(1), _mm_unpackhi_epi8(lo, hi));
        }
    }

    /// `src` (at most `NBK` f16 scales) as f32 into `dst[..src.len()]`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 BW/VL and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub(super) unsafe fn scales_f32(src: &[half::f16], dst: &mut [f32; NBK]) {
        const { assert!(NBK == 8) };
        assert!(src.len() <= NBK);
        let v = _mm_maskz_loadu_epi16(((1u32 << src.len()) - 1) as u8, src.as_ptr() as *const i16);
        _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_cvtph_ps(v));
    }

    /// One byte per column from q8 codes: `w[c] = row[c] + 128` (as u8)
    /// for `c < row.len()`, 128 (code 0) after; `w.len()` >= `row.len()`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn unpack_q8(row: &[i8], w: &mut [u8]) {
        assert!(row.len() <= w.len());
        let bias = _mm512_set1_epi8(i8::MIN);
        let mask = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        for c in (0..w.len()).step_by(64) {
            // Masked-off bytes are neither read nor written (no fault), so
            // the addresses may pass the slices' ends: formed wrapping.
            let v = _mm512_maskz_loadu_epi8(
                mask(row.len().saturating_sub(c)),
                row.as_ptr().wrapping_add(c),
            );
            _mm512_mask_storeu_epi8(
                w.as_mut_ptr().wrapping_add(c) as *mut i8,
                mask(w.len() - c),
                _mm512_xor_si512(v, bias),
            );
        }
    }

    /// One `NRI x 32` (or `NRI x 16` when `!two`) tile over a K block: for
    /// each run `segs` of 32-column blocks in one weight group, i32 dot
    /// products per block scaled by `dx` into f32, then the group's `s`
    /// and zero term into the tile (stored when `first` and the run is the
    /// block's first, added otherwise).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/VNNI; `x[h]` hold the block's code
    /// vectors, `d[h]` / `s[h]` its scale vectors, `wq` `NRI x KC` bytes and
    /// `ws` / `wz` `NRI x NBK` values; the tile's rows `0 .. valid`, batch
    /// values `b0 .. b0 + 16 (32 with two)` at stride `ld` are writable.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn micro(
        segs: &[(usize, usize)],
        wq: *const u8,
        ws: *const f32,
        wz: *const f32,
        x: [*const i8; 2],
        d: [*const f32; 2],
        s: [*const f32; 2],
        first: bool,
        tile: *mut f32,
        ld: usize,
        b0: usize,
        valid: usize,
        two: bool,
    ) {
        let mut fresh = first;
        for &(s0, s1) in segs {
            let mut facc = [[_mm512_setzero_ps(); 2]; NRI];
            for bi in s0..s1 {
                let mut acc = [[_mm512_setzero_si512(); 2]; NRI];
                for t in 0..QSTEPS {
                    let j = bi * QSTEPS + t;
                    let x0 = _mm512_loadu_si512(x[0].add(j * 4 * LANES) as *const _);
                    let x1 = _mm512_loadu_si512(x[1].add(j * 4 * LANES) as *const _);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_epi32(
                            (wq.add(r * KC + 4 * j) as *const i32).read_unaligned(),
                        );
                        a[0] = _mm512_dpbusd_epi32(a[0], w, x0);
                        a[1] = _mm512_dpbusd_epi32(a[1], w, x1);
                    }
                }
                let d0 = _mm512_loadu_ps(d[0].add(bi * LANES));
                let d1 = _mm512_loadu_ps(d[1].add(bi * LANES));
                for (f, a) in facc.iter_mut().zip(&acc) {
                    f[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[0]), d0, f[0]);
                    f[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[1]), d1, f[1]);
                }
            }
            let (mut c0, mut c1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for bi in s0..s1 {
                c0 = _mm512_add_ps(c0, _mm512_loadu_ps(s[0].add(bi * LANES)));
                c1 = _mm512_add_ps(c1, _mm512_loadu_ps(s[1].add(bi * LANES)));
            }
            for (r, f) in facc.iter().enumerate().take(valid) {
                let sc = _mm512_set1_ps(*ws.add(r * NBK + s0));
                let sz = _mm512_set1_ps(*wz.add(r * NBK + s0));
                let dst = tile.add(r * ld + b0);
                for (h, c) in [c0, c1].into_iter().enumerate().take(1 + two as usize) {
                    let o = dst.add(h * LANES);
                    let base = if fresh {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_loadu_ps(o)
                    };
                    let v = _mm512_fnmadd_ps(c, sz, _mm512_fmadd_ps(f[h], sc, base));
                    _mm512_storeu_ps(o, v);
                }
            }
            fresh = false;
        }
    }

    /// `vpdpbusd` steps (4 columns each) per 32-column block.
    const QSTEPS: usize = super::QBLOCK / 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD block quantizer gives the portable rule's codes, scale and
    /// sum bit for bit: random blocks of every length, exact ties, zeros,
    /// a lone value, NaN and infinity.
    #[test]
    fn simd_quantizer_is_the_portable_rule() {
        if !KernelPath::Avx512.is_supported() {
            return;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut cases: Vec<Vec<f32>> = Vec::new();
        for n in 1..=32 {
            cases.push((0..n).map(|_| next() * 3.0).collect());
            // Ties: multiples of amax / 254 land on .5 codes.
            cases.push((0..n).map(|i| (i as f32 - 16.0) * 0.5 / 127.0).collect());
        }
        cases.push(vec![0.0; 32]);
        cases.push(vec![-2.5]);
        let mut nan = vec![1.0f32; 20];
        nan[7] = f32::NAN;
        cases.push(nan);
        let mut inf = vec![1.0f32; 32];
        inf[31] = f32::INFINITY;
        cases.push(inf);
        for v in &cases {
            let mut want = [0i8; QBLOCK];
            let w = quantize_block(v, &mut want);
            let mut got = [0x55i8; QBLOCK];
            // SAFETY: AVX-512 checked above.
            let (d, s) = unsafe { avx512::quantize_block(v, None, &mut got) };
            match w {
                None => assert!(d.is_nan() && s == 0 && got == [0; 32], "{v:?}"),
                Some((wd, ws)) => {
                    assert_eq!((d.to_bits(), s), (wd.to_bits(), ws), "{v:?}");
                    if wd != 0.0 {
                        assert_eq!(got[..v.len()], want[..v.len()], "{v:?}");
                    }
                    assert!(got[v.len()..].iter().all(|&c| c == 0), "{v:?}");
                }
            }
            // With a scale: the products first, then the same rule.
            let a: Vec<f32> = (0..v.len()).map(|i| 0.25 + i as f32 * 0.37).collect();
            let va: Vec<f32> = v.iter().zip(&a).map(|(x, s)| x * s).collect();
            let mut want = [0i8; QBLOCK];
            let w = quantize_block(&va, &mut want);
            let mut got = [0x55i8; QBLOCK];
            // SAFETY: AVX-512 checked above; `a` is as long as `v`.
            let (d, s) = unsafe { avx512::quantize_block(v, Some(&a), &mut got) };
            match w {
                None => assert!(d.is_nan() && s == 0, "{v:?}"),
                Some((wd, ws)) => {
                    assert_eq!((d.to_bits(), s), (wd.to_bits(), ws), "{v:?} scaled");
                    if wd != 0.0 {
                        assert_eq!(got[..v.len()], want[..v.len()], "{v:?} scaled");
                    }
                }
            }
        }
    }

    /// Unpacked bytes are the nibbles (or their table entries) in column
    /// order, for the 128-wide and the 32-wide loops.
    #[test]
    fn unpack_is_column_order() {
        if !KernelPath::Avx512.is_supported() {
            return;
        }
        for cols in [32usize, 96, 128, 160, 256] {
            let row: Vec<u8> = (0..cols / 2).map(|i| (i * 37 + 11) as u8).collect();
            let table: [u8; 16] = std::array::from_fn(|i| (255 - 17 * i) as u8);
            for lut in [None, Some(&table)] {
                let mut w = vec![0xEEu8; cols];
                // SAFETY: AVX-512 checked above; `row` has `cols / 2` bytes.
                unsafe { avx512::unpack_q4(&row, &mut w, lut) };
                for (c, &b) in w.iter().enumerate() {
                    let code = (row[c / 2] >> (4 * (c % 2))) & 0xF;
                    let want = lut.map_or(code, |t| t[code as usize]);
                    assert_eq!(b, want, "cols {cols} column {c}, table {}", lut.is_some());
                }
            }
        }
    }
}
