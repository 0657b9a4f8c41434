//! GEMM (batch > 1): cache-blocked, f32 register-tiled micro-kernel.
//!
//! Loop nest (Goto-style), per rayon task of one batch block of up to
//! [`MC`] rows x up to [`NC`] weight rows ([`task_rows`]; X packed once, up
//! front, in 16-row chunks `[k][16]` so a micro-kernel reads two contiguous
//! streams):
//! - K blocks of [`KC`] columns (one X block, `KC x MC` f32, stays in L2);
//! - panels of [`NR`] weight rows: the panel is dequantized once into an
//!   f32 `[NR][KC]` buffer (L1) and reused for every batch chunk of the block;
//! - the micro-kernel keeps an `NR x 32` tile of `Yᵀ` in registers
//!   (24 zmm accumulators on AVX-512) over the whole K block.
//!
//! Results go to a task-local `Yᵀ` block (the task's rows x one batch
//! block, in L2), transposed into `Y` (bias added) as soon as its K blocks
//! are done: at MiniLM's K = 384 a whole-matrix `Yᵀ` (25 MB for fc1 at
//! 4096 rows) went through DRAM twice more than `Y` does, about a quarter
//! of the GEMM's time. Dequantized values are bit-identical on every path
//! (`(q - z) · s`, `codebook[q] · s`, exact widening), and activations stay
//! f32, so paths differ only by the order of f32 additions.
//!
//! For 4-bit formats each 32-column unit is decoded in nibble order (the 16
//! even columns, then the 16 odd ones) and X is packed in the same order.
//!
//! A q4 / lut4 GEMM with int8 activations (the default CPU backend's) goes to
//! `gemm_i8.rs` on AVX-512 VNNI (integer dot products, 6-row panels of
//! code bytes); other paths multiply the int8-rounded activations here.
//!
//! This driver serves the AVX-512, NEON and scalar paths, and AVX2 for
//! rows longer than `avx2_driver::MAX_COLS`. On AVX2 (16 registers: a `Yᵀ`
//! tile too narrow to amortize the packing of X) shorter rows go to
//! `gemm_avx2.rs` (X broadcast from its rows, `Y` tiles stored in place),
//! which shares this file's panel decode.

#[cfg(target_arch = "x86_64")]
use half::f16;
use rayon::prelude::*;

use super::kernel::KernelPath;
use crate::format::{round_up, Packed, QuantizedMatrix};

/// Weight rows per micro-tile.
pub(crate) const NR: usize = 12;
/// Columns per K block.
pub(crate) const KC: usize = 256;
/// Batch rows per packed X chunk (one zmm of f32).
const LANES: usize = 16;
/// Batch rows per batch block.
const MC: usize = 256;
/// Most weight rows per rayon task (a multiple of [`NR`]).
const NC: usize = 16 * NR;
/// Fewest weight rows per rayon task.
const NC_MIN: usize = 4 * NR;

/// Weight rows per rayon task for a matrix of `rows`: at most [`NC`], fewer
/// (down to [`NC_MIN`]) so that each thread gets about four tasks. A
/// MiniLM layer has 384 rows: with `NC` that is one task per thread on two
/// cores, and a thread preempted on a shared machine holds up the op; with
/// 8 tasks the other thread takes its share. Each task re-reads the packed X
/// block from L2, which is cheap next to its `NC_MIN x KC x batch` FMAs.
fn task_rows(rows: usize) -> usize {
    let want = 4 * rayon::current_num_threads().max(1);
    (rows.div_ceil(want).div_ceil(NR) * NR).clamp(NC_MIN, NC)
}
/// Columns per decode unit (a q4 / lut4 unit is 16 bytes of codes).
const UNIT: usize = 32;

/// `Y = (X ∘ act_scale) · Wᵀ (+ bias)` for `batch` rows of `x`, dense part
/// only (`m`'s activation scale applied here: the AVX-512 int8 driver while
/// it rounds X, the other paths into a buffer first); `y` is `batch x rows`,
/// `bias` (when given) has `rows` values. With `int8_act`, a q4 / lut4 matrix multiplies
/// `x` rounded to int8 per block of 32 columns (`act::int8_rounded_into`; lut4
/// with its codebook on 256 levels, as the GEMV): integer dot products on
/// AVX-512 VNNI (`gemm_i8.rs`), the rounded values in f32 on the other
/// paths, so every path computes the same product.
pub(crate) fn gemm(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    int8_act: bool,
) {
    let (rows, cols) = (m.rows(), m.cols());
    assert_eq!(x.len(), batch * cols, "gemm input length");
    assert_eq!(y.len(), batch * rows, "gemm output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "gemm bias length");
    }
    if int8_act {
        // Which matmuls round is `matmul::uses_int8_activations`' call.
        assert!(
            m.kind().is_grouped(),
            "int8-activation GEMM takes q8 / q4 / lut4 matrices"
        );
        #[cfg(target_arch = "x86_64")]
        if path == KernelPath::Avx512 {
            i8_driver::gemm(m, x, batch, bias, y);
            return;
        }
    }
    match m.act_scale() {
        Some(a) => {
            let mut xs = SCALED.with(|c| c.take());
            super::matmul::scale_rows_into(x, a, &mut xs);
            gemm_scaled(path, m, &xs, batch, bias, y, int8_act);
            SCALED.with(|c| c.set(xs));
        }
        None => gemm_scaled(path, m, x, batch, bias, y, int8_act),
    }
}

/// [`gemm`] on `x` already multiplied by the activation scale, off the
/// AVX-512 int8 driver.
fn gemm_scaled(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    int8_act: bool,
) {
    let (rows, cols) = (m.rows(), m.cols());
    if int8_act {
        let mut rounded = ROUNDED.with(|c| c.take());
        super::act::int8_rounded_into(x, cols, &mut rounded);
        // lut4's codebook as the integer kernels take it (on 256 levels,
        // `super::gemv::lut_u8`): a copy of the matrix per call, cheap next
        // to the f32 product on these paths.
        match m.packed() {
            Packed::Lut4(q) => {
                let (t, zero, step) = super::gemv::lut_u8(&q.codebook);
                let mut q = q.clone();
                q.codebook = std::array::from_fn(|i| step * (t[i] as f32 - zero));
                let m = QuantizedMatrix::new(rows, cols, m.group(), Packed::Lut4(q))
                    .expect("the same shape");
                gemm_f32(path, &m, &rounded, batch, bias, y);
            }
            _ => gemm_f32(path, m, &rounded, batch, bias, y),
        }
        ROUNDED.with(|c| c.set(rounded));
        return;
    }
    gemm_f32(path, m, x, batch, bias, y);
}

/// [`gemm`] with f32 activations (arguments checked there).
fn gemm_f32(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, cols) = (m.rows(), m.cols());
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx2 && cols <= avx2_driver::MAX_COLS {
        avx2_driver::gemm(m, x, batch, bias, y);
        return;
    }
    let nib = matches!(m.packed(), Packed::Q4(_) | Packed::Lut4(_));
    let kp = round_up(cols, UNIT);
    let nkb = kp.div_ceil(KC);
    let bp = round_up(batch, LANES);
    let nchunks = bp / LANES;
    // Packed X: [kb][chunk][KC][LANES], zero beyond the matrix, in a buffer
    // kept by the calling thread: a fresh one is fresh pages, and faulting
    // them in costs more than the product at small sizes.
    let block = KC * LANES;
    let mut xp = XPACK.with(|c| c.take());
    if xp.len() < nkb * nchunks * block {
        xp.resize(nkb * nchunks * block, 0.0);
    }
    pack_x(
        path,
        x,
        batch,
        cols,
        nib,
        nchunks,
        &mut xp[..nkb * nchunks * block],
    );
    let xpk: &[f32] = &xp[..nkb * nchunks * block];
    let grid = Grid::new(rows, nchunks);
    let out = OutPtr(y.as_mut_ptr());
    (0..grid.len()).into_par_iter().for_each(|t| {
        let GridTask {
            mb,
            mchunks,
            r0,
            nrows,
            next,
        } = grid.task(t);
        let task = TaskRows {
            rows,
            kp,
            r0,
            nrows,
            next,
        };
        // The task's `Yᵀ` block (its rows x one batch block) lives in a
        // buffer of the worker thread (L2-sized: at most NC x MC f32), and
        // goes into `Y` as soon as its K blocks are done.
        let mut tb = TASK.with(|c| c.take());
        tb.wp.resize(NR * KC, 0.0);
        tb.yt.resize(NC * MC, 0.0);
        let (wp, yt) = (&mut tb.wp[..], &mut tb.yt[..]);
        for kb in 0..nkb {
            let k0 = kb * KC;
            let kc = KC.min(kp - k0);
            let xblock = &xpk[kb * nchunks * block..][..nchunks * block];
            for p in (0..nrows).step_by(NR) {
                let valid = NR.min(nrows - p);
                // f32 weights of a whole panel inside the rows feed an
                // AVX-512 micro-kernel in place when one batch block
                // uses each panel once: the copy into `wp` was 4-5 % of
                // a 128-row GEMM on Zen 5, and at 16 rows the copy
                // waited on DRAM (a 4096 x 4096 GEMM took 9.6 ms
                // against 6.2 ms in place). With more batch blocks the
                // panel is read again per block, and from L1 (`wp`) it
                // measured 5-9 % faster than from L2 (4096 rows).
                let in_place = path == KernelPath::Avx512
                    && nchunks <= MC / LANES
                    && valid == NR
                    && k0 + kc <= cols;
                let (wsrc, wld): (&[f32], usize) = match m.packed() {
                    Packed::F32(v) if in_place => {
                        let ld = m.row_stride_bytes() / 4;
                        (&v[(r0 + p) * ld + k0..][..(NR - 1) * ld + kc], ld)
                    }
                    _ => {
                        decode_panel(path, m, r0 + p, valid, k0, kc, nib, wp);
                        (&wp[..], KC)
                    }
                };
                let mut next = NextPanel::new(m, task.after::<NR, KC>(p, k0, kc));
                let tile = &mut yt[p * MC..(p + valid) * MC];
                let mut ch = mb;
                while ch < mb + mchunks {
                    let lines = next.share((mb + mchunks - ch).div_ceil(2));
                    let two = ch + 1 < mb + mchunks;
                    let xa = &xblock[ch * block..][..block];
                    let xb = if two {
                        &xblock[(ch + 1) * block..][..block]
                    } else {
                        xa
                    };
                    let first = kb == 0;
                    let b0 = (ch - mb) * LANES;
                    micro(
                        path, kc, wsrc, wld, xa, xb, two, first, tile, MC, b0, valid, lines,
                    );
                    ch += if two { 2 } else { 1 };
                }
                next.finish();
            }
        }
        write_y(
            path,
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
    XPACK.with(|c| c.set(xp));
}

/// The rayon tasks of a GEMM: batch blocks of `MC / LANES` 16-row chunks x
/// row chunks of [`task_rows`] weight rows, batch-block major, so the
/// threads share a batch block's packed X in L2 / L3 (each task taking all
/// batch blocks of its rows re-read the whole packed X per task: at 4096
/// batch rows x 1536 columns, 25 MB 8 times, and that GEMM took 28 ms
/// against 26 ms now; 384 x 384: 6.7 / 6.4 ms; Zen 5). Larger tasks (all
/// rows at once) measured slower.
#[derive(Clone, Copy)]
struct Grid {
    rows: usize,
    nchunks: usize,
    /// Batch blocks.
    nmb: usize,
    /// Weight rows per task.
    nc: usize,
    /// Row chunks.
    nrc: usize,
}

/// One task of a [`Grid`].
struct GridTask {
    /// First 16-row chunk of the batch block, and its chunks.
    mb: usize,
    mchunks: usize,
    /// First weight row, and the task's rows.
    r0: usize,
    nrows: usize,
    /// First row of the next task ([`task_after`]).
    next: Option<usize>,
}

impl Grid {
    fn new(rows: usize, nchunks: usize) -> Grid {
        let nc = task_rows(rows);
        Grid {
            rows,
            nchunks,
            nmb: nchunks.div_ceil(MC / LANES),
            nc,
            nrc: rows.div_ceil(nc),
        }
    }

    fn len(&self) -> usize {
        self.nmb * self.nrc
    }

    fn task(&self, t: usize) -> GridTask {
        let (mbi, rc) = (t / self.nrc, t % self.nrc);
        let mb = mbi * (MC / LANES);
        let r0 = rc * self.nc;
        GridTask {
            mb,
            mchunks: (MC / LANES).min(self.nchunks - mb),
            r0,
            nrows: self.nc.min(self.rows - r0),
            next: task_after(rc, self.nrc, mbi, self.nmb, self.nc),
        }
    }
}

/// The batch rows of a task's chunks `mb .. mb + mchunks` (the last chunk
/// may run past `batch`).
fn batch_rows(mb: usize, mchunks: usize, batch: usize) -> std::ops::Range<usize> {
    mb * LANES..batch.min((mb + mchunks) * LANES)
}

/// A task's `Yᵀ` block (`yt`: its `nrows` weight rows, each `ld` batch
/// values from batch row `b.start`) into `Y[b, r0 .. r0 + nrows]`, bias
/// added, 8 weight rows at a time so the reads of `Yᵀ` are 8 sequential
/// streams. The task owns those columns of `Y` (`out`, `batch x rows`).
#[allow(clippy::too_many_arguments)]
fn write_y(
    path: KernelPath,
    yt: &[f32],
    ld: usize,
    b: std::ops::Range<usize>,
    r0: usize,
    nrows: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
    rows: usize,
) {
    let (b_lo, b_hi) = (b.start, b.end);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    for rb in (0..nrows).step_by(8) {
        let nr = 8.min(nrows - rb);
        let bias = bias.map(|v| &v[r0 + rb..][..nr]);
        // Whole 8 x 8 blocks through AVX transposes (x86), the rest
        // value by value.
        #[cfg(not(target_arch = "x86_64"))]
        let b = b_lo;
        #[cfg(target_arch = "x86_64")]
        let b = {
            let mut b = b_lo;
            if nr == 8 && matches!(path, KernelPath::Avx2 | KernelPath::Avx512) {
                let bv = bias.map_or([0.0; 8], |v| std::array::from_fn(|i| v[i]));
                while b + 8 <= b_hi {
                    let src = &yt[rb * ld + (b - b_lo)..];
                    assert!(src.len() >= 7 * ld + 8);
                    // SAFETY: AVX2 checked by the caller (`path`); the
                    // 8 x 8 block of `Yᵀ` lies in `src` (asserted), and
                    // `Y` rows `b .. b + 8` < `batch`, columns
                    // `r0 + rb .. + 8` <= `rows` are this task's alone.
                    unsafe {
                        avx2::transpose8_add(
                            src.as_ptr(),
                            ld,
                            &bv,
                            out.get().add(b * rows + r0 + rb),
                            rows,
                        )
                    };
                    b += 8;
                }
            }
            b
        };
        for b in b..b_hi {
            // SAFETY: `y` has `batch x rows` values (asserted above);
            // this task alone writes columns `r0 .. r0 + nrows`, and
            // `b < batch`, `r0 + rb + nr <= rows`.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.get().add(b * rows + r0 + rb), nr) };
            let src = &yt[rb * ld + (b - b_lo)..];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[i * ld] + bias.map_or(0.0, |v| v[i]);
            }
        }
    }
}

/// Packs `X` (`batch x cols`) into `xp`: `[kb][chunk][KC][LANES]`, columns
/// of each K block in packed order (nibble order for 4-bit formats), zero
/// past the matrix. One rayon task per (K block, 16-row chunk); each batch
/// row is read contiguously (the old loop read one value per row per
/// column, with a bounds test per value, and at MiniLM's sizes cost a fifth
/// of a 128-row GEMM).
#[allow(clippy::too_many_arguments)]
fn pack_x(
    path: KernelPath,
    x: &[f32],
    batch: usize,
    cols: usize,
    nib: bool,
    nchunks: usize,
    xp: &mut [f32],
) {
    xp.par_chunks_mut(KC * LANES)
        .enumerate()
        .for_each(|(i, d)| {
            let (kb, ch) = (i / nchunks, i % nchunks);
            let k0 = kb * KC;
            let kc = KC.min(cols.saturating_sub(k0));
            // The micro-kernel reads the block's columns up to the next
            // whole unit; the rest of the buffer (a short last K block) is
            // never read, and is left as it was.
            let kcp = round_up(kc, UNIT);
            // Whole 32-column units of a full 16-row chunk go through 8 x 8
            // transposes (one scalar store per value, 64 bytes apart, was
            // 13 % of a 4096-row f32 GEMM); the rest value by value.
            let fast = if (ch + 1) * LANES <= batch {
                pack_units(path, &x[ch * LANES * cols + k0..], cols, kc / UNIT, nib, d)
            } else {
                0
            };
            for l in 0..LANES {
                let b = ch * LANES + l;
                if b >= batch {
                    for kk in 0..kcp {
                        d[kk * LANES + l] = 0.0;
                    }
                    continue;
                }
                let xr = &x[b * cols + k0..][..kc];
                if nib {
                    // Whole units: packed position j < 16 holds column 2j,
                    // 16 + j holds 2j + 1.
                    for (u, src) in xr.chunks_exact(UNIT).enumerate().skip(fast) {
                        for j in 0..UNIT / 2 {
                            d[(u * UNIT + j) * LANES + l] = src[2 * j];
                            d[(u * UNIT + UNIT / 2 + j) * LANES + l] = src[2 * j + 1];
                        }
                    }
                    for k in kc / UNIT * UNIT..kcp {
                        let c = permuted(k, true);
                        d[k * LANES + l] = if c < kc { xr[c] } else { 0.0 };
                    }
                } else {
                    for (k, &v) in xr.iter().enumerate().skip(fast * UNIT) {
                        d[k * LANES + l] = v;
                    }
                    for k in kc..kcp {
                        d[k * LANES + l] = 0.0;
                    }
                }
            }
        });
}

/// Packs the first whole 32-column units (at most `units`) of 16 rows of
/// `x` (row stride `cols`, starting at the K block's first column) into
/// `d` (`[KC][LANES]`, in packed column order: nibble order when `nib`);
/// returns how many it packed (none on a path without the transposes).
/// Each 8 x 8 transpose stores its eight columns straight to their packed
/// rows, so nibble order costs nothing over natural order (value by value,
/// packing 128 rows took 42 µs at K = 384 and 36 µs at K = 1536, against
/// 16 and 21 µs now, of a 210 µs / 800 µs q4 GEMM on Zen 5; through a
/// transposed buffer it was no faster).
fn pack_units(
    path: KernelPath,
    x: &[f32],
    cols: usize,
    units: usize,
    nib: bool,
    d: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if matches!(path, KernelPath::Avx2 | KernelPath::Avx512) && units > 0 {
        assert!(x.len() >= (LANES - 1) * cols + units * UNIT && d.len() >= units * UNIT * LANES);
        for k in (0..units * UNIT).step_by(8) {
            // Packed row of column `k + j`: its position in the unit's order.
            let (u0, c0) = (k / UNIT * UNIT, k % UNIT);
            let rows: [usize; 8] = std::array::from_fn(|j| u0 + packed_position(c0 + j, nib));
            for l0 in (0..LANES).step_by(8) {
                let offs = rows.map(|r| r * LANES + l0);
                // SAFETY: AVX2 (checked by the caller, `path`); rows
                // `l0 .. l0 + 8` < 16 and columns `k .. k + 8` <=
                // `units * UNIT` of `x`, and every packed row (within the
                // unit of column `k`) of `d`, lie inside (asserted).
                unsafe {
                    avx2::transpose8_to(x.as_ptr().add(l0 * cols + k), cols, d.as_mut_ptr(), &offs)
                };
            }
        }
        return units;
    }
    let _ = (path, x, cols, units, nib, d);
    0
}

/// `Y`'s base pointer, shared by the tasks of [`gemm`] (each writes its own
/// columns).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks of `gemm` write disjoint columns of `Y` through it, and
// `gemm` returns only after they are all done.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper rather
    /// than the raw pointer field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The per-task buffers of [`gemm`], kept per worker thread: the decoded
/// weight panel and the task's `Yᵀ` block (contents unspecified: every
/// value is written before it is read).
#[derive(Default)]
struct TaskScratch {
    wp: Vec<f32>,
    yt: Vec<f32>,
}

thread_local! {
    /// Packed X of [`gemm`], kept by the calling thread; taken for the
    /// duration of a call (a nested call finds it empty and allocates its own).
    static XPACK: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The int8-rounded activations of [`gemm`] on paths without the
    /// integer kernel, kept by the calling thread.
    static ROUNDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// `X ∘ act_scale` for the paths that do not fuse it.
    static SCALED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// [`TaskScratch`] of a rayon worker, taken for the duration of a task.
    static TASK: std::cell::Cell<TaskScratch> = std::cell::Cell::new(TaskScratch::default());
}

/// Column (relative to its K block) stored at packed position `kk`.
#[inline]
fn permuted(kk: usize, nib: bool) -> usize {
    if !nib {
        return kk;
    }
    let (u, j) = (kk / UNIT, kk % UNIT);
    u * UNIT
        + if j < UNIT / 2 {
            2 * j
        } else {
            2 * (j - UNIT / 2) + 1
        }
}

/// Packed position of column `c` of a unit (`0 .. UNIT`): the inverse of
/// [`permuted`].
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn packed_position(c: usize, nib: bool) -> usize {
    if !nib {
        c
    } else if c.is_multiple_of(2) {
        c / 2
    } else {
        UNIT / 2 + c / 2
    }
}

/// The dense value of `(r, c)` (no outliers, no activation scale), 0 past the row.
#[inline]
fn dense_value(m: &QuantizedMatrix, r: usize, c: usize) -> f32 {
    if c >= m.cols() {
        return 0.0;
    }
    let stride = m.row_stride_bytes();
    let g = r * m.groups_per_row() + c / m.group_len();
    match m.packed() {
        Packed::F32(v) => v[r * stride / 4 + c],
        Packed::F16(v) => v[r * stride / 2 + c].to_f32(),
        Packed::Bf16(v) => v[r * stride / 2 + c].to_f32(),
        Packed::Q8(q) => q.codes[r * stride + c] as f32 * q.scales[g].to_f32(),
        Packed::Q4(q) => {
            let code = (q.codes[r * stride / 4 + c / 8] >> (4 * (c % 8))) & 0xF;
            (code as f32 - q.zeros[g] as f32) * q.scales[g].to_f32()
        }
        Packed::Lut4(q) => {
            let code = (q.codes[r * stride / 4 + c / 8] >> (4 * (c % 8))) & 0xF;
            q.codebook[code as usize] * q.scales[g].to_f32()
        }
    }
}

/// The next panel's weight bytes, prefetched into L1 while the current
/// panel is multiplied, 64-byte line by line: a whole panel at once is more
/// misses in flight than the core keeps (most were dropped, and f32 weights
/// that do not fit in L3 came in at DRAM latency). Into L1 (`prefetcht0`),
/// not L2: on Zen 5 a `prefetcht1` share measured no faster than none at
/// all (the f16 panel decode waited on its loads, 15 % of a 128-row GEMM),
/// and `prefetcht0` took a 4096 x 14336 f16 GEMM from 184 to 206 GFLOP/s at
/// batch 128 (q8 192 → 200, f32 at batch 512 191 → 207; the AVX2 kernels
/// gained alike). The AVX2 driver takes one
/// row per micro call ([`NextPanel::step`]); the generic driver hands each
/// micro call a [`Lines`] share that the AVX-512 kernel spreads over its K
/// loop ([`NextPanel::share`]); [`NextPanel::finish`] takes what is left
/// (the int8 driver's whole 12-line panel, at the panel's start).
pub(super) struct NextPanel {
    /// The lines not prefetched yet.
    lines: Lines,
}

/// Lines `j0 .. j1` of a panel: line `j` is row `r + j / per_row`, byte
/// `off + 64 * (j % per_row)` of that row.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Lines {
    base: *const u8,
    stride: usize,
    off: usize,
    per_row: usize,
    r: usize,
    pub(super) j0: usize,
    pub(super) j1: usize,
}

impl Lines {
    /// Prefetches line `j` into L1 (a no-op off x86-64).
    #[inline(always)]
    pub(super) fn prefetch(&self, j: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let a = self.base.wrapping_add(
                (self.r + j / self.per_row) * self.stride + self.off + 64 * (j % self.per_row),
            );
            // SAFETY: a prefetch is a hint and never faults, whatever the
            // address; the address is formed with wrapping arithmetic.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(a as *const i8) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = j;
    }

    /// Prefetches line `*j` and moves on, when it is in the share.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn prefetch_next(&self, j: &mut usize) {
        if *j < self.j1 {
            self.prefetch(*j);
            *j += 1;
        }
    }

    /// Prefetches every line of the share.
    pub(super) fn prefetch_all(&self) {
        for j in self.j0..self.j1 {
            self.prefetch(j);
        }
    }
}

/// The weight rows of a task, for [`TaskRows::after`].
pub(super) struct TaskRows {
    /// Rows and (unit-padded) columns of the matrix.
    pub(super) rows: usize,
    pub(super) kp: usize,
    /// The task's rows: `r0 .. r0 + nrows`.
    pub(super) r0: usize,
    pub(super) nrows: usize,
    /// First row of the next task (the most likely one this thread or the
    /// other takes next); `None` after the last task.
    pub(super) next: Option<usize>,
}

/// First row of the task after task `(mb, rc)` of `nmb` batch blocks x
/// `nrc` row chunks of `nc` rows, batch-block major.
pub(super) fn task_after(rc: usize, nrc: usize, mb: usize, nmb: usize, nc: usize) -> Option<usize> {
    if rc + 1 < nrc {
        Some((rc + 1) * nc)
    } else if mb + 1 < nmb {
        Some(0)
    } else {
        None
    }
}

impl TaskRows {
    /// Like [`after`](Self::after) for the order along the rows (each
    /// panel's K blocks in turn): the panel's next K block, else the next
    /// panel's first, else the next task's first panel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn after_along<const PR: usize, const KB: usize>(
        &self,
        p: usize,
        k0: usize,
    ) -> Option<(usize, usize, usize, usize)> {
        let (r0, n) = (self.r0, self.nrows);
        if k0 + KB < self.kp {
            Some((r0 + p, PR.min(n - p), k0 + KB, KB.min(self.kp - k0 - KB)))
        } else if p + PR < n {
            Some((r0 + p + PR, PR.min(n - p - PR), 0, KB.min(self.kp)))
        } else {
            self.next
                .map(|r| (r, PR.min(self.rows - r), 0, KB.min(self.kp)))
        }
    }

    /// The panel after panel `p` (of `PR` rows) of K block `k0 .. k0 + kc`
    /// (blocks of `KB` columns): the task's next panel, else its first
    /// panel of the next K block, else the next task's first panel, as
    /// [`NextPanel::new`] takes it.
    pub(super) fn after<const PR: usize, const KB: usize>(
        &self,
        p: usize,
        k0: usize,
        kc: usize,
    ) -> Option<(usize, usize, usize, usize)> {
        let (r0, n) = (self.r0, self.nrows);
        if p + PR < n {
            Some((r0 + p + PR, PR.min(n - p - PR), k0, kc))
        } else if k0 + KB < self.kp {
            Some((r0, PR.min(n), k0 + KB, KB.min(self.kp - k0 - KB)))
        } else {
            self.next
                .map(|r| (r, PR.min(self.rows - r), 0, KB.min(self.kp)))
        }
    }
}

impl NextPanel {
    /// Rows `r .. r + n`, columns `k0 .. k0 + kc` of `m` (`None`: nothing).
    pub(super) fn new(m: &QuantizedMatrix, next: Option<(usize, usize, usize, usize)>) -> Self {
        let (r, n, k0, kc) = next.unwrap_or((0, 0, 0, 0));
        let (base, off, len) = match m.packed() {
            Packed::F32(v) => (v.as_ptr() as *const u8, 4 * k0, 4 * kc),
            Packed::F16(v) => (v.as_ptr() as *const u8, 2 * k0, 2 * kc),
            Packed::Bf16(v) => (v.as_ptr() as *const u8, 2 * k0, 2 * kc),
            Packed::Q8(q) => (q.codes.as_ptr() as *const u8, k0, kc),
            Packed::Q4(q) => (q.codes.as_ptr() as *const u8, k0 / 2, kc / 2),
            Packed::Lut4(q) => (q.codes.as_ptr() as *const u8, k0 / 2, kc / 2),
        };
        let per_row = len.div_ceil(64).max(1);
        NextPanel {
            lines: Lines {
                base,
                stride: m.row_stride_bytes(),
                off,
                per_row,
                r,
                j0: 0,
                j1: if len == 0 { 0 } else { n * per_row },
            },
        }
    }

    /// The next `n` lines (fewer when fewer are left), taken off the panel.
    fn take(&mut self, n: usize) -> Lines {
        let l = &mut self.lines;
        let end = (l.j0 + n).min(l.j1);
        let share = Lines { j1: end, ..*l };
        l.j0 = end;
        share
    }

    /// Prefetches one more row.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn step(&mut self) {
        self.take(self.lines.per_row).prefetch_all();
    }

    /// An even share of the lines left for one of `calls` micro calls.
    pub(super) fn share(&mut self, calls: usize) -> Lines {
        let left = self.lines.j1 - self.lines.j0;
        self.take(left.div_ceil(calls.max(1)))
    }

    /// Prefetches the lines left.
    pub(super) fn finish(self) {
        self.lines.prefetch_all();
    }
}

/// Dequantizes rows `r0 .. r0 + valid`, columns `k0 .. k0 + kc`, into
/// `wp[i * KC + kk]` (in packed order); rows past `valid` become 0.
#[allow(clippy::too_many_arguments)]
fn decode_panel(
    path: KernelPath,
    m: &QuantizedMatrix,
    r0: usize,
    valid: usize,
    k0: usize,
    kc: usize,
    nib: bool,
    wp: &mut [f32],
) {
    for (i, dst) in wp.chunks_mut(KC).enumerate() {
        let dst = &mut dst[..kc];
        if i >= valid {
            dst.fill(0.0);
            continue;
        }
        decode_segment(path, m, r0 + i, k0, nib, dst);
    }
}

/// Dequantizes row `r`, columns `k0 .. k0 + dst.len()` (a multiple of 32),
/// into `dst` in packed order (nibble order for 4-bit formats); columns past
/// the row become 0.
pub(crate) fn decode_segment(
    path: KernelPath,
    m: &QuantizedMatrix,
    r: usize,
    k0: usize,
    nib: bool,
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    let done = match path {
        // SAFETY: the path was checked against the CPU's features by the
        // caller; the function checks its own bounds.
        KernelPath::Avx512 => unsafe { avx512::decode_units(m, r, k0, dst) },
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { avx2::decode_units(m, r, k0, dst) },
        _ => 0,
    };
    #[cfg(target_arch = "aarch64")]
    let done = match path {
        // SAFETY: the path was checked against the CPU's features by the
        // caller; the function checks its own bounds.
        KernelPath::Neon => unsafe { neon::decode_units(m, r, k0, dst) },
        _ => 0,
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let done = {
        let _ = path;
        0
    };
    for (u, d) in dst.chunks_mut(UNIT).enumerate().skip(done) {
        let c0 = k0 + u * UNIT;
        for (kk, o) in d.iter_mut().enumerate() {
            *o = dense_value(m, r, c0 + permuted(kk, nib));
        }
    }
}

/// Puts `x` in the packed column order of [`decode_segment`] (whole row,
/// zero-padded to a multiple of 32).
pub(crate) fn permute_row(x: &[f32], nib: bool) -> Vec<f32> {
    let kp = round_up(x.len(), UNIT);
    (0..kp)
        .map(|k| {
            let c = permuted(k, nib);
            if c < x.len() {
                x[c]
            } else {
                0.0
            }
        })
        .collect()
}

/// Adds `W_panel · X_chunk(s)` to a tile of `Yᵀ` (stores it when `first`:
/// the first K block), rows `0..valid` of `tile` (row stride `ld`), batch
/// columns `b0 .. b0 + 16` (and `+ 32` when `two`). Panel row `r` is
/// `wp[r * wld ..][..kc]`: `wld` is [`KC`] for a decoded panel, the
/// matrix's row stride for f32 weights read in place (AVX-512 only).
#[allow(clippy::too_many_arguments)]
fn micro(
    path: KernelPath,
    kc: usize,
    wp: &[f32],
    wld: usize,
    xa: &[f32],
    xb: &[f32],
    two: bool,
    first: bool,
    tile: &mut [f32],
    ld: usize,
    b0: usize,
    valid: usize,
    lines: Lines,
) {
    assert!(wp.len() >= (NR - 1) * wld + kc && xa.len() >= kc * LANES && xb.len() >= kc * LANES);
    assert!(tile.len() >= (valid.max(1) - 1) * ld + b0 + if two { 32 } else { 16 });
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 {
        // SAFETY: features checked by the caller; bounds asserted above.
        unsafe { avx512::micro(kc, wp, wld, xa, xb, two, first, tile, ld, b0, valid, lines) };
        return;
    }
    assert_eq!(wld, KC);
    lines.prefetch_all();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { avx2::micro(kc, wp, xa, xb, two, first, tile, ld, b0, valid) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        KernelPath::Neon => unsafe { neon::micro(kc, wp, xa, xb, two, first, tile, ld, b0, valid) },
        _ => micro_scalar(kc, wp, xa, xb, two, first, tile, ld, b0, valid),
    }
}

#[allow(clippy::too_many_arguments)]
fn micro_scalar(
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
    let halves: &[&[f32]] = if two { &[xa, xb] } else { &[xa] };
    for (h, xs) in halves.iter().enumerate() {
        let mut acc = [[0.0f32; LANES]; NR];
        for k in 0..kc {
            let xv = &xs[k * LANES..][..LANES];
            for (r, a) in acc.iter_mut().enumerate() {
                let w = wp[r * KC + k];
                for (o, &xx) in a.iter_mut().zip(xv) {
                    *o += w * xx;
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(valid) {
            let dst = &mut tile[r * ld + b0 + h * LANES..][..LANES];
            for (d, v) in dst.iter_mut().zip(a) {
                *d = if first { *v } else { *d + v };
            }
        }
    }
}

/// Scale of group `g` of the matrix as f32 (grouped formats only).
#[cfg(target_arch = "x86_64")]
#[inline]
fn scale_of(scales: &[f16], g: usize) -> f32 {
    scales[g].to_f32()
}

#[cfg(target_arch = "aarch64")]
#[path = "gemm_neon.rs"]
mod neon;

#[cfg(target_arch = "x86_64")]
#[path = "gemm_avx2.rs"]
mod avx2_driver;

#[cfg(target_arch = "x86_64")]
#[path = "gemm_i8.rs"]
mod i8_driver;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{scale_of, Lines, LANES, NR, UNIT};
    use crate::format::{Packed, QuantizedMatrix};

    /// Decodes the whole 32-column units of row `r` from column `k0` into
    /// `d` (nibble order for 4-bit formats), stopping at the last unit that
    /// lies inside the row; returns how many units it wrote.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
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
                for i in 0..2 * n {
                    _mm512_storeu_ps(out.add(16 * i), _mm512_loadu_ps(p.add(16 * i)));
                }
            }
            Packed::F16(v) => {
                assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
                let p = v.as_ptr().add(r * stride / 2 + k0) as *const __m256i;
                for i in 0..2 * n {
                    _mm512_storeu_ps(
                        out.add(16 * i),
                        _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i))),
                    );
                }
            }
            Packed::Bf16(v) => {
                assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
                let p = v.as_ptr().add(r * stride / 2 + k0) as *const __m256i;
                for i in 0..2 * n {
                    let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(i)));
                    _mm512_storeu_ps(
                        out.add(16 * i),
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)),
                    );
                }
            }
            Packed::Q8(q) => {
                assert!(q.codes.len() >= r * stride + k0 + n * UNIT);
                let p = q.codes.as_ptr().add(r * stride + k0) as *const __m128i;
                for u in 0..n {
                    let s = _mm512_set1_ps(scale_of(&q.scales, g_row + (k0 + u * UNIT) / glen));
                    for h in 0..2 {
                        let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            p.add(2 * u + h),
                        )));
                        _mm512_storeu_ps(out.add(UNIT * u + 16 * h), _mm512_mul_ps(w, s));
                    }
                }
            }
            Packed::Q4(q) => {
                assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
                let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2) as *const __m128i;
                let low = _mm512_set1_epi32(0xF);
                // Per group, the 16 values `(q - z) · s` (the same f32
                // operations as value by value, so the same bits), looked
                // up by code: a unit is two lookups, not two conversions,
                // subtractions and products (a q4 panel decoded slower
                // than a q8 one before: 4.4-5.1 % of a 128-row GEMM
                // against 4.5 %; now 4.0 % against 4.7 %, Zen 5).
                let codes = _mm512_cvtepi32_ps(_mm512_setr_epi32(
                    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                ));
                let mut table = _mm512_setzero_ps();
                let mut tg = usize::MAX;
                for u in 0..n {
                    let g = g_row + (k0 + u * UNIT) / glen;
                    if g != tg {
                        let s = _mm512_set1_ps(scale_of(&q.scales, g));
                        let z = _mm512_set1_ps(q.zeros[g] as f32);
                        table = _mm512_mul_ps(_mm512_sub_ps(codes, z), s);
                        tg = g;
                    }
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(u)));
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_srli_epi32::<4>(v);
                    let o = out.add(UNIT * u);
                    _mm512_storeu_ps(o, _mm512_permutexvar_ps(lo, table));
                    _mm512_storeu_ps(o.add(16), _mm512_permutexvar_ps(hi, table));
                }
            }
            Packed::Lut4(q) => {
                assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
                let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2) as *const __m128i;
                let low = _mm512_set1_epi32(0xF);
                let cb = _mm512_loadu_ps(q.codebook.as_ptr());
                for u in 0..n {
                    let g = g_row + (k0 + u * UNIT) / glen;
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(u)));
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_srli_epi32::<4>(v);
                    let s = _mm512_set1_ps(scale_of(&q.scales, g));
                    let o = out.add(UNIT * u);
                    _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_permutexvar_ps(lo, cb), s));
                    _mm512_storeu_ps(o.add(16), _mm512_mul_ps(_mm512_permutexvar_ps(hi, cb), s));
                }
            }
        }
        n
    }

    /// AVX-512 micro-kernel: `NR x 32` (or `NR x 16`) accumulators; the
    /// `lines` of the next panel are prefetched evenly over the K loop.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F; bounds as asserted by `super::micro`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn micro(
        kc: usize,
        wp: &[f32],
        wld: usize,
        xa: &[f32],
        xb: &[f32],
        two: bool,
        first: bool,
        tile: &mut [f32],
        ld: usize,
        b0: usize,
        valid: usize,
        lines: Lines,
    ) {
        // Adds to the tile, or stores when `first`.
        let acc_in = |d: *const f32, a: __m512| {
            if first {
                a
            } else {
                _mm512_add_ps(_mm512_loadu_ps(d), a)
            }
        };
        let (w, pa, pb) = (wp.as_ptr(), xa.as_ptr(), xb.as_ptr());
        let t = tile.as_mut_ptr();
        // One prefetch every `every` columns of the K loop.
        let n = lines.j1 - lines.j0;
        let every = kc.checked_div(n).unwrap_or(kc).max(1);
        let mut j = lines.j0;
        if two {
            let mut acc = [[_mm512_setzero_ps(); 2]; NR];
            for ks in (0..kc).step_by(every) {
                lines.prefetch_next(&mut j);
                for k in ks..kc.min(ks + every) {
                    let x0 = _mm512_loadu_ps(pa.add(k * LANES));
                    let x1 = _mm512_loadu_ps(pb.add(k * LANES));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w.add(r * wld + k));
                        a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                        a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(valid) {
                let d = t.add(r * ld + b0);
                _mm512_storeu_ps(d, acc_in(d, a[0]));
                let d = d.add(LANES);
                _mm512_storeu_ps(d, acc_in(d, a[1]));
            }
        } else {
            let mut acc = [_mm512_setzero_ps(); NR];
            for ks in (0..kc).step_by(every) {
                lines.prefetch_next(&mut j);
                for k in ks..kc.min(ks + every) {
                    let x0 = _mm512_loadu_ps(pa.add(k * LANES));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(r * wld + k)), x0, *a);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(valid) {
                let d = t.add(r * ld + b0);
                _mm512_storeu_ps(d, acc_in(d, *a));
            }
        }
        Lines { j0: j, ..lines }.prefetch_all();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{scale_of, KC, LANES, NR, UNIT};
    use crate::format::{Packed, QuantizedMatrix};

    /// Entries `i` (0..16) of the 16-value table `cb0 ++ cb1`: two 8-entry
    /// permutes (low 3 bits), picked by bit 3.
    #[inline(always)]
    pub(super) unsafe fn lookup16(cb0: __m256, cb1: __m256, i: __m256i) -> __m256 {
        _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(cb0, i),
            _mm256_permutevar8x32_ps(cb1, i),
            _mm256_castsi256_ps(_mm256_slli_epi32::<28>(i)),
        )
    }

    /// The 8 x 8 transpose of eight rows in registers: column `j` of
    /// `a` comes back as row `j`.
    #[inline(always)]
    pub(super) unsafe fn transpose8(a: [__m256; 8]) -> [__m256; 8] {
        // Interleave pairs of rows, then pairs of pairs, then the halves.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (x, y) = (a[i & !1], a[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(x, y)
            } else {
                _mm256_unpackhi_ps(x, y)
            }
        });
        // u[4h + c]: column c (and c + 4) of rows 4h .. 4h + 4.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (h, c) = (i / 4, i % 4);
            let (x, y) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
            if c % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(x, y)
            } else {
                _mm256_shuffle_ps::<0xEE>(x, y)
            }
        });
        std::array::from_fn(|j| {
            let (x, y) = (u[j % 4], u[4 + j % 4]);
            if j < 4 {
                _mm256_permute2f128_ps::<0x20>(x, y)
            } else {
                _mm256_permute2f128_ps::<0x31>(x, y)
            }
        })
    }

    /// `dst[j * ld_dst + i] = src[i * ld_src + j] + bias[i]` for an 8 x 8
    /// block (the `Yᵀ` -> `Y` step, eight batch rows at a time).
    ///
    /// # Safety
    /// The CPU supports AVX2; `src` has 8 rows of 8 readable values at
    /// stride `ld_src`, `dst` 8 rows of 8 writable values at stride `ld_dst`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8_add(
        src: *const f32,
        ld_src: usize,
        bias: &[f32; 8],
        dst: *mut f32,
        ld_dst: usize,
    ) {
        let cols = transpose8(std::array::from_fn(|i| {
            _mm256_loadu_ps(src.add(i * ld_src))
        }));
        let b = _mm256_loadu_ps(bias.as_ptr());
        for (j, &col) in cols.iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * ld_dst), _mm256_add_ps(col, b));
        }
    }

    /// `dst[offs[j] + i] = src[i * ld_src + j]` for an 8 x 8 block: the
    /// transpose with each column stored where `offs` says (the packing of
    /// X, in natural or nibble order).
    ///
    /// # Safety
    /// The CPU supports AVX2; `src` has 8 rows of 8 readable values at
    /// stride `ld_src`, and `dst + offs[j]` 8 writable values for each `j`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8_to(
        src: *const f32,
        ld_src: usize,
        dst: *mut f32,
        offs: &[usize; 8],
    ) {
        let cols = transpose8(std::array::from_fn(|i| {
            _mm256_loadu_ps(src.add(i * ld_src))
        }));
        for (&col, &o) in cols.iter().zip(offs) {
            _mm256_storeu_ps(dst.add(o), col);
        }
    }

    /// [`super::avx512::decode_units`] on AVX2 (same values, bit for bit).
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
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
                for i in 0..4 * n {
                    _mm256_storeu_ps(out.add(8 * i), _mm256_loadu_ps(p.add(8 * i)));
                }
            }
            Packed::F16(v) => {
                assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
                let p = v.as_ptr().add(r * stride / 2 + k0) as *const __m128i;
                for i in 0..4 * n {
                    _mm256_storeu_ps(out.add(8 * i), _mm256_cvtph_ps(_mm_loadu_si128(p.add(i))));
                }
            }
            Packed::Bf16(v) => {
                assert!(v.len() >= r * stride / 2 + k0 + n * UNIT);
                let p = v.as_ptr().add(r * stride / 2 + k0) as *const __m128i;
                for i in 0..4 * n {
                    let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(i)));
                    _mm256_storeu_ps(
                        out.add(8 * i),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w)),
                    );
                }
            }
            Packed::Q8(q) => {
                assert!(q.codes.len() >= r * stride + k0 + n * UNIT);
                let p = q.codes.as_ptr().add(r * stride + k0);
                for u in 0..n {
                    let s = _mm256_set1_ps(scale_of(&q.scales, g_row + (k0 + u * UNIT) / glen));
                    for h in 0..4 {
                        let b = _mm_loadl_epi64(p.add(UNIT * u + 8 * h) as *const __m128i);
                        let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                        _mm256_storeu_ps(out.add(UNIT * u + 8 * h), _mm256_mul_ps(w, s));
                    }
                }
            }
            Packed::Q4(q) => {
                assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
                let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2);
                let low = _mm256_set1_epi32(0xF);
                for u in 0..n {
                    let g = g_row + (k0 + u * UNIT) / glen;
                    let s = _mm256_set1_ps(scale_of(&q.scales, g));
                    let z = _mm256_set1_ps(q.zeros[g] as f32);
                    let o = out.add(UNIT * u);
                    for h in 0..2 {
                        let b = _mm_loadl_epi64(p.add(16 * u + 8 * h) as *const __m128i);
                        let v = _mm256_cvtepu8_epi32(b);
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                        _mm256_storeu_ps(o.add(8 * h), _mm256_mul_ps(_mm256_sub_ps(lo, z), s));
                        _mm256_storeu_ps(o.add(16 + 8 * h), _mm256_mul_ps(_mm256_sub_ps(hi, z), s));
                    }
                }
            }
            Packed::Lut4(q) => {
                assert!(q.codes.len() * 4 >= r * stride + (k0 + n * UNIT) / 2);
                let p = (q.codes.as_ptr() as *const u8).add(r * stride + k0 / 2);
                let low = _mm256_set1_epi32(0xF);
                let cb0 = _mm256_loadu_ps(q.codebook.as_ptr());
                let cb1 = _mm256_loadu_ps(q.codebook.as_ptr().add(8));
                for u in 0..n {
                    let g = g_row + (k0 + u * UNIT) / glen;
                    let s = _mm256_set1_ps(scale_of(&q.scales, g));
                    let o = out.add(UNIT * u);
                    for h in 0..2 {
                        let b = _mm_loadl_epi64(p.add(16 * u + 8 * h) as *const __m128i);
                        let v = _mm256_cvtepu8_epi32(b);
                        let lo = lookup16(cb0, cb1, _mm256_and_si256(v, low));
                        let hi = lookup16(cb0, cb1, _mm256_srli_epi32::<4>(v));
                        _mm256_storeu_ps(o.add(8 * h), _mm256_mul_ps(lo, s));
                        _mm256_storeu_ps(o.add(16 + 8 * h), _mm256_mul_ps(hi, s));
                    }
                }
            }
        }
        n
    }

    /// AVX2 micro-kernel: per 16-row batch chunk, weight rows in groups of
    /// 6, `6 x 16` accumulators (12 ymm) + 2 activation loads + 1 broadcast:
    /// 15 of the 16 ymm registers, no spills (a `3 x 32` tile needed 17).
    ///
    /// # Safety
    /// The CPU supports AVX2 + FMA; bounds as asserted by `super::micro`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
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
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for k in 0..kc {
                    let x0 = _mm256_loadu_ps(px.add(k * LANES));
                    let x1 = _mm256_loadu_ps(px.add(k * LANES + 8));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(*w.add((r0 + i) * KC + k));
                        a[0] = _mm256_fmadd_ps(wv, x0, a[0]);
                        a[1] = _mm256_fmadd_ps(wv, x1, a[1]);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    if r0 + i >= valid {
                        break;
                    }
                    for (v, av) in a.iter().enumerate() {
                        let d = t.add((r0 + i) * ld + b0 + h * LANES + 8 * v);
                        let sum = if first {
                            *av
                        } else {
                            _mm256_add_ps(_mm256_loadu_ps(d), *av)
                        };
                        _mm256_storeu_ps(d, sum);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_position_inverts_permuted() {
        for nib in [false, true] {
            for c in 0..UNIT {
                assert_eq!(permuted(packed_position(c, nib), nib), c, "nib {nib}");
            }
        }
    }
}
