//! The AVX2 GEMM driver (`KernelPath::Avx2`): activations broadcast
//! straight from the rows of `X`, weights in 16-row panels stored k-major.
//!
//! The micro-tile is `6` batch rows x `16` weight rows of `Y` itself: per
//! column `k`, two 8-wide loads of the panel (the 16 weight rows' values at
//! `k`) and six broadcasts of `X[b, k]` feed twelve FMAs into twelve
//! accumulators (15 of the 16 ymm registers). Because the tile is a piece
//! of `Y` (row-major, batch x rows), it is stored where it belongs, with
//! the bias added on the first K block: no packed copy of `X`, no `Yᵀ`
//! scratch and no transpose into `Y`, which together cost 10-13 % of a
//! MiniLM-sized GEMM in the generic driver (`super::gemm`, measured with
//! rdtsc per phase). The panel is decoded row by row by the shared
//! `decode_segment` (the same values, bit for bit, as every other path)
//! and transposed in 8 x 8 blocks into `[k][16]`, writing packed position
//! `kk` to column `permuted(kk)`, so `X` stays in its natural column order
//! for 4-bit formats too.
//!
//! Loop nest, per rayon task = (block of up to [`MC`] batch rows, chunk of
//! weight rows): K blocks of [`KC`] columns (the task's `X` block, at most
//! `MC x KC` f32, stays in L2); panels of 16 weight rows (decoded once per
//! K block into L1, the next panel's weight bytes prefetched into L1
//! meanwhile); 6-row batch groups. Tasks write disjoint pieces of `Y`.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::super::kernel::KernelPath;
use super::{decode_segment, permuted, task_after, NextPanel, OutPtr, TaskRows, UNIT};
use crate::format::{round_up, Packed, QuantizedMatrix};

/// Weight rows per panel (two ymm of f32).
const NR: usize = 16;
/// Batch rows per micro-tile.
const MR: usize = 6;
/// Columns per K block (a multiple of [`UNIT`]).
const KC: usize = 256;
/// Batch rows per batch block (a multiple of [`MR`]): `MC x KC` f32 of
/// `X` is 240 KB, half the L2 of the machines measured.
const MC: usize = 240;
/// Longest rows this driver takes; longer ones go to the generic driver.
/// Its per-GEMM passes (packing all of X, the `Yᵀ` transposes) shrink next
/// to the product as K grows, while this driver's per-K-block panel
/// transpose does not: measured here (2 threads, q8, min of interleaved
/// runs) this driver is ahead at K = 384 and 1536 (MiniLM; up to 20 % at
/// 4096 batch rows, where the generic driver's packed X is 25 MB), about even at
/// 2048, and 3-8 % behind at 4096 and 14336.
pub(super) const MAX_COLS: usize = 2048;
/// Most weight rows per task.
const NC: usize = 12 * NR;
/// Fewest weight rows per task: each task brings its `X` block from L3
/// into L2 once, so a task should be several panels long.
const NC_MIN: usize = 6 * NR;

/// The per-task buffers, kept per worker thread (every value is written
/// before it is read): eight decoded weight rows and the k-major panel.
#[derive(Default)]
struct Scratch {
    rows8: Vec<f32>,
    panel: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Weight rows per task: a multiple of [`NR`] in `NC_MIN ..= NC`, small
/// enough that there are about four tasks per thread when the batch gives
/// few batch blocks.
fn task_rows(rows: usize, batch_blocks: usize) -> usize {
    let want = (4 * rayon::current_num_threads().max(1)).div_ceil(batch_blocks);
    (rows.div_ceil(want.max(1)).div_ceil(NR) * NR).clamp(NC_MIN, NC)
}

/// `Y = X · Wᵀ (+ bias)`; arguments as `super::gemm` (checked there).
///
/// The caller has checked that the CPU supports AVX2, FMA and F16C.
pub(super) fn gemm(
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, cols) = (m.rows(), m.cols());
    assert!(x.len() == batch * cols && y.len() == batch * rows);
    assert!(bias.is_none_or(|b| b.len() == rows));
    let nib = matches!(m.packed(), Packed::Q4(_) | Packed::Lut4(_));
    let kp = round_up(cols, UNIT);
    let nkb = kp.div_ceil(KC);
    // Batch blocks of equal size (a multiple of MR): 512 rows as
    // 240 + 240 + 32 decoded each panel for a 32-row block.
    let nmb = batch.div_ceil(MC);
    let mc = round_up(batch.div_ceil(nmb), MR);
    let nc = task_rows(rows, nmb);
    let nrc = rows.div_ceil(nc);
    let out = OutPtr(y.as_mut_ptr());
    // Tasks of one batch block are adjacent, so the threads share its `X`
    // block in L3.
    (0..nmb * nrc).into_par_iter().for_each(|t| {
        let (mb, rc) = (t / nrc, t % nrc);
        let (r0, b0) = (rc * nc, mb * mc);
        let (nrows, nb) = (nc.min(rows - r0), mc.min(batch - b0));
        let task = TaskRows {
            rows,
            kp,
            r0,
            nrows,
            next: task_after(rc, nrc, mb, nmb, nc),
        };
        let mut s = SCRATCH.with(|c| c.take());
        s.rows8.resize(8 * KC, 0.0);
        s.panel.resize(KC * NR, 0.0);
        for kb in 0..nkb {
            let k0 = kb * KC;
            // `kc` decoded columns (whole units), `kx` of them inside X.
            let kc = KC.min(kp - k0);
            let kx = kc.min(cols - k0);
            let first = kb == 0;
            for p in (0..nrows).step_by(NR) {
                let valid = NR.min(nrows - p);
                pack_panel(m, r0 + p, valid, k0, kc, nib, &mut s.rows8, &mut s.panel);
                let mut next = NextPanel::new(m, task.after::<NR, KC>(p, k0, kc));
                let mut bias16 = [0.0f32; NR];
                if let (true, Some(b)) = (first, bias) {
                    bias16[..valid].copy_from_slice(&b[r0 + p..][..valid]);
                }
                let mut b = 0;
                while b < nb {
                    let mr = MR.min(nb - b);
                    let xs = &x[(b0 + b) * cols + k0..][..(mr - 1) * cols + kx];
                    // SAFETY: `y` has `batch x rows` values (asserted); this
                    // task alone writes rows `b0 .. b0 + nb`, columns
                    // `r0 .. r0 + nrows` of it, and the tile's rows
                    // `b0 + b .. b0 + b + mr <= batch`, columns
                    // `r0 + p .. r0 + p + valid <= rows` lie inside.
                    let yp = unsafe { out.get().add((b0 + b) * rows + r0 + p) };
                    let tile = Tile {
                        kx,
                        panel: &s.panel,
                        x: xs,
                        ldx: cols,
                        y: yp,
                        ldy: rows,
                        valid,
                        first,
                        bias: &bias16,
                    };
                    // SAFETY: the caller checked the CPU's features; the
                    // tile's bounds hold as argued above.
                    unsafe {
                        match mr {
                            6 => micro::<6>(&tile),
                            5 => micro::<5>(&tile),
                            4 => micro::<4>(&tile),
                            3 => micro::<3>(&tile),
                            2 => micro::<2>(&tile),
                            _ => micro::<1>(&tile),
                        }
                    }
                    b += mr;
                    next.step();
                }
                next.finish();
            }
        }
        SCRATCH.with(|c| c.set(s));
    });
}

/// Decodes weight rows `r0 .. r0 + valid`, columns `k0 .. k0 + kc` (rows
/// past `valid` as 0) into `panel[k * 16 + i]`, `k` the column relative to
/// `k0`, `i` the row relative to `r0`.
#[allow(clippy::too_many_arguments)]
fn pack_panel(
    m: &QuantizedMatrix,
    r0: usize,
    valid: usize,
    k0: usize,
    kc: usize,
    nib: bool,
    rows8: &mut [f32],
    panel: &mut [f32],
) {
    if nib && k0 + kc <= m.cols() {
        // Whole units inside the row: 4-bit codes go straight to the panel.
        for half in 0..2 {
            let v = valid.saturating_sub(8 * half).min(8);
            // SAFETY: AVX2 checked by the caller of `gemm`; bounds asserted inside.
            unsafe { pack_nibbles8(m, r0 + 8 * half, v, k0, kc, panel, 8 * half) };
        }
        return;
    }
    for half in 0..2 {
        for i in 0..8 {
            let r = 8 * half + i;
            let dst = &mut rows8[i * KC..][..kc];
            if r < valid {
                decode_segment(KernelPath::Avx2, m, r0 + r, k0, nib, dst);
            } else {
                dst.fill(0.0);
            }
        }
        // SAFETY: AVX2 checked by the caller of `gemm`; bounds asserted inside.
        unsafe { transpose_into(rows8, kc, nib, panel, 8 * half) };
    }
}

/// Writes the eight rows of `rows8` (row stride [`KC`], `kc` values each,
/// in packed order) into columns `col .. col + 8` of the k-major `panel`
/// (row stride 16), packed position `kk` going to panel row
/// `permuted(kk)`: 8 x 8 blocks transposed in registers.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn transpose_into(rows8: &[f32], kc: usize, nib: bool, panel: &mut [f32], col: usize) {
    assert!(kc.is_multiple_of(8) && kc <= KC && col + 8 <= NR);
    assert!(rows8.len() >= 7 * KC + kc && panel.len() >= kc * NR);
    let src = rows8.as_ptr();
    let dst = panel.as_mut_ptr();
    for kk in (0..kc).step_by(8) {
        let cols = super::avx2::transpose8(std::array::from_fn(|i| {
            _mm256_loadu_ps(src.add(i * KC + kk))
        }));
        for (j, &c) in cols.iter().enumerate() {
            _mm256_storeu_ps(dst.add(permuted(kk + j, nib) * NR + col), c);
        }
    }
}

/// Decodes 4-bit (q4 or lut4) rows `r0 .. r0 + valid` (`valid <= 8`),
/// columns `k0 .. k0 + kc` (whole units inside the row), into columns
/// `col .. col + 8` of the k-major `panel` (row stride 16), in natural
/// column order: per 32-column unit the eight rows' 16 code bytes are
/// transposed in registers (three unpack stages), so each byte position
/// gives two panel rows (its low and high nibble) of eight weight rows at
/// once. Values as `decode_segment`'s, bit for bit (`(q - z) · s`,
/// `codebook[q] · s`); rows past `valid` get scale 0 (their panel columns
/// feed only `Y` columns the micro-kernel does not store).
///
/// Half the work of decoding each row and then transposing the f32
/// values: the transpose moves bytes, 16 codes per register, instead of
/// f32s, 8 per register.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn pack_nibbles8(
    m: &QuantizedMatrix,
    r0: usize,
    valid: usize,
    k0: usize,
    kc: usize,
    panel: &mut [f32],
    col: usize,
) {
    assert!(valid <= 8 && col + 8 <= NR && kc.is_multiple_of(UNIT) && k0 + kc <= m.cols());
    assert!(panel.len() >= kc * NR);
    let dst = panel.as_mut_ptr().add(col);
    if valid == 0 {
        for k in 0..kc {
            _mm256_storeu_ps(dst.add(k * NR), _mm256_setzero_ps());
        }
        return;
    }
    let (codes, scales, zeros, codebook): (&[u32], _, Option<&[u8]>, Option<&[f32; 16]>) =
        match m.packed() {
            Packed::Q4(q) => (&q.codes, &q.scales, Some(&q.zeros), None),
            Packed::Lut4(q) => (&q.codes, &q.scales, None, Some(&q.codebook)),
            _ => unreachable!("pack_nibbles8 on a format without 4-bit codes"),
        };
    let stride = m.row_stride_bytes();
    let (glen, gpr) = (m.group_len(), m.groups_per_row());
    // The last real row's bytes of this K block lie inside the codes.
    assert!(codes.len() * 4 >= (r0 + valid - 1) * stride + (k0 + kc) / 2);
    let base = codes.as_ptr() as *const u8;
    // Rows past `valid` read row `r0`'s codes (scale 0 below).
    let rowp: [*const u8; 8] =
        std::array::from_fn(|i| base.add((r0 + if i < valid { i } else { 0 }) * stride + k0 / 2));
    let low = _mm256_set1_epi32(0xF);
    let (cb0, cb1) = match codebook {
        Some(cb) => (
            _mm256_loadu_ps(cb.as_ptr()),
            _mm256_loadu_ps(cb.as_ptr().add(8)),
        ),
        None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
    };
    for u in 0..kc / UNIT {
        let gc = (k0 + u * UNIT) / glen;
        let mut sv = [0.0f32; 8];
        let mut zv = [0.0f32; 8];
        for i in 0..valid {
            let g = (r0 + i) * gpr + gc;
            sv[i] = scales[g].to_f32();
            if let Some(z) = zeros {
                zv[i] = z[g] as f32;
            }
        }
        let s = _mm256_loadu_ps(sv.as_ptr());
        let z = _mm256_loadu_ps(zv.as_ptr());
        let r: [__m128i; 8] =
            std::array::from_fn(|i| _mm_loadu_si128(rowp[i].add(16 * u) as *const __m128i));
        // Byte position j of every row: after the three stages, register q
        // holds positions 2q (low half) and 2q + 1 (high half), rows 0-7.
        let p: [__m128i; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm_unpacklo_epi8(a, b)
            } else {
                _mm_unpackhi_epi8(a, b)
            }
        });
        // Pairs (p0, p2), (p1, p3), (p4, p6), (p5, p7).
        let q: [__m128i; 8] = std::array::from_fn(|i| {
            let j = (i & 4) | ((i >> 1) & 1);
            let (a, b) = (p[j], p[j + 2]);
            if i % 2 == 0 {
                _mm_unpacklo_epi16(a, b)
            } else {
                _mm_unpackhi_epi16(a, b)
            }
        });
        let t: [__m128i; 8] = std::array::from_fn(|i| {
            let (a, b) = (q[i / 2], q[4 + i / 2]);
            if i % 2 == 0 {
                _mm_unpacklo_epi32(a, b)
            } else {
                _mm_unpackhi_epi32(a, b)
            }
        });
        let o = dst.add(u * UNIT * NR);
        for (i, &ti) in t.iter().enumerate() {
            for h in 0..2 {
                let bytes = if h == 0 { ti } else { _mm_srli_si128::<8>(ti) };
                let v = _mm256_cvtepu8_epi32(bytes);
                let (lo, hi) = (_mm256_and_si256(v, low), _mm256_srli_epi32::<4>(v));
                let (wl, wh) = if codebook.is_some() {
                    (
                        _mm256_mul_ps(super::avx2::lookup16(cb0, cb1, lo), s),
                        _mm256_mul_ps(super::avx2::lookup16(cb0, cb1, hi), s),
                    )
                } else {
                    (
                        _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(lo), z), s),
                        _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(hi), z), s),
                    )
                };
                // Byte position 2i + h holds columns 4i + 2h and 4i + 2h + 1.
                let c = 4 * i + 2 * h;
                _mm256_storeu_ps(o.add(c * NR), wl);
                _mm256_storeu_ps(o.add((c + 1) * NR), wh);
            }
        }
    }
}

/// One micro-tile's operands.
struct Tile<'a> {
    /// Columns to sum over (`X` has them all).
    kx: usize,
    /// The k-major panel, at least `kx x 16` values.
    panel: &'a [f32],
    /// `X` from the tile's first row and the block's first column: row `i`
    /// of the tile starts at `x[i * ldx]` and has `kx` values.
    x: &'a [f32],
    ldx: usize,
    /// `Y` at the tile's first row and weight row; row stride `ldy`.
    y: *mut f32,
    ldy: usize,
    /// Weight rows of the panel that are real (`1 ..= 16`).
    valid: usize,
    /// First K block: store (plus `bias`) rather than add to `Y`.
    first: bool,
    /// Added on the first K block (zeros otherwise), 16 values.
    bias: &'a [f32; NR],
}

/// `Y[0..M, 0..valid] (+)= X[0..M, 0..kx] · panel` with `M x 16`
/// accumulators (`2 M` ymm).
///
/// # Safety
/// The CPU supports AVX2 + FMA; `t.y` is valid for writes of rows
/// `0..M` (stride `t.ldy`), columns `0..t.valid`, and (unless `t.first`)
/// holds the sums of the earlier K blocks there.
#[target_feature(enable = "avx2,fma")]
unsafe fn micro<const M: usize>(t: &Tile) {
    assert!(t.panel.len() >= t.kx * NR && t.valid >= 1 && t.valid <= NR);
    assert!(t.x.len() >= (M - 1) * t.ldx + t.kx);
    let (w, x) = (t.panel.as_ptr(), t.x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for k in 0..t.kx {
        let w0 = _mm256_loadu_ps(w.add(k * NR));
        let w1 = _mm256_loadu_ps(w.add(k * NR + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_broadcast_ss(&*x.add(i * t.ldx + k));
            a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
            a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
        }
    }
    let b0 = _mm256_loadu_ps(t.bias.as_ptr());
    let b1 = _mm256_loadu_ps(t.bias.as_ptr().add(8));
    for (i, a) in acc.iter().enumerate() {
        let d = t.y.add(i * t.ldy);
        if t.valid == NR {
            let (v0, v1) = if t.first {
                (_mm256_add_ps(a[0], b0), _mm256_add_ps(a[1], b1))
            } else {
                (
                    _mm256_add_ps(_mm256_loadu_ps(d), a[0]),
                    _mm256_add_ps(_mm256_loadu_ps(d.add(8)), a[1]),
                )
            };
            _mm256_storeu_ps(d, v0);
            _mm256_storeu_ps(d.add(8), v1);
        } else {
            let mut v = [0.0f32; NR];
            _mm256_storeu_ps(v.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), a[1]);
            for (j, &vj) in v.iter().enumerate().take(t.valid) {
                let o = d.add(j);
                *o = if t.first { vj + t.bias[j] } else { *o + vj };
            }
        }
    }
}
