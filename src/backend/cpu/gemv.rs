//! GEMV (batch 1, and the small batches below `GEMM_MIN_BATCH`): one pass
//! over the packed weights, unpacked in registers.
//!
//! Rows are split into contiguous ranges, one rayon task each, and every task
//! writes its own run of outputs (ranges are multiples of 16 outputs, so two
//! threads never write the same cache line). With several activation rows, a
//! task runs each pass of weight rows for every activation row in turn: the
//! pass (4 rows: 28 KiB of q4, 229 KiB of f32 at 14336 columns) comes from
//! DRAM once and from L1 / L2 for the other activation rows. The GEMM packs
//! X in 16-row chunks and decodes every panel per K block; below 8 rows that
//! was 5-20x slower than this (a 4096 x 14336 q4 product of 2 rows took
//! 20 ms, one row 1.2 ms; Zen 5). The plain formats dot f32
//! activations directly; q8, q4 and lut4 dot int8 activations (see
//! [`super::act`]) so the inner loop is an integer dot product.
//!
//! Integer formulation shared by every path, per block `b` of 32 columns in
//! group `g`: `t_b = Σ w_int[c]·xq[c] − z_int(g)·Σ xq[c]` (exact in i32), and
//! `y += t_b · (s_g · dx_b)` in f32, where
//! - q4: `w_int` = code (0..=15), `z_int` = zero point, `s_g` = group scale;
//! - q8: `w_int` = code (−127..=127), `z_int` = 0;
//! - lut4: `w_int` = the codebook mapped affinely onto 0..=255
//!   (`codebook[i] ≈ lo + step · u8[i]`), `z_int = −lo / step` (an f32), and
//!   the sum is finally multiplied by `step`.
//!
//! The SIMD paths split `t_b` into lanes exactly (each lane holds an exact
//! integer), so they differ from the scalar path only by f32 rounding.

use half::f16;
use rayon::prelude::*;

use super::act::{QuantAct, QBLOCK};
use super::gemm::{decode_segment, permute_row};
use super::kernel::KernelPath;
use super::sparse;
use crate::format::{Outliers, Packed, QuantizedMatrix};

/// q4 codes for the `int_rows` kernels.
const Q4: u8 = 0;
/// lut4 codes for the `int_rows` kernels.
const LUT4: u8 = 1;
/// q8 codes for the `int_rows` kernels.
const Q8: u8 = 2;

/// How far ahead of the current chunk each row stream prefetches into
/// L2, in bytes, for a pass of `rows` rows of `stride` bytes: by default
/// the same chunk of the rows one pass ahead (`rows · stride`, i.e. what
/// the next pass will read). The hardware prefetcher alone stops at
/// every 4 KiB page and, with one stream per core, left the kernels at
/// 0.5-0.7 of the read probe on Zen 4; a prefetch one pass ahead brings
/// them to the probe's rate (see `docs/PERFORMANCE.md`).
/// `QUANTSCOPE_GEMV_PREFETCH=<bytes>` sets a fixed distance instead
/// (`0`: no software prefetch), for tuning experiments.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn prefetch_ahead(rows: usize, stride: usize) -> usize {
    static PF: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let fixed = *PF.get_or_init(|| {
        std::env::var("QUANTSCOPE_GEMV_PREFETCH")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|v| v.min(1 << 20) / 64 * 64)
    });
    fixed.unwrap_or(rows * stride)
}

/// Outputs per rayon task: a multiple of 16 (64 bytes of f32) so tasks never
/// share a cache line of `y`, and a few tasks per thread for balance.
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(16).div_ceil(16) * 16
}

/// Columns per block of a blocked GEMV: the activations of one block stay
/// in L1 while a task's rows stream past them. `QUANTSCOPE_GEMV_COL_BLOCK`
/// overrides it (rounded to a multiple of 128; for tuning experiments).
fn col_block() -> usize {
    static BLOCK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        std::env::var("QUANTSCOPE_GEMV_COL_BLOCK")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(4096, |v| v.clamp(128, 1 << 30) / 128 * 128)
    })
}

/// How a GEMV splits its rows into rayon tasks: contiguous runs of
/// [`rows_per_task`] rows, each task running the dense rows and then adding
/// its rows' sparse outliers on the same thread while its outputs are in
/// cache (no second pass over `y`, no second dispatch).
#[derive(Clone, Copy)]
struct Tasks<'a> {
    path: KernelPath,
    /// The activation rows, `batch x cols` (already multiplied by the
    /// activation scale).
    x: &'a [f32],
    cols: usize,
    outliers: Option<&'a Outliers>,
}

impl<'a> Tasks<'a> {
    /// Activation row `b`.
    fn row(&self, b: usize) -> &'a [f32] {
        &self.x[b * self.cols..][..self.cols]
    }

    /// Activation rows.
    fn batch(&self) -> usize {
        self.x.len() / self.cols.max(1)
    }

    /// Runs `dense(first_row, b, outputs)` for every task and activation
    /// row `b`, then the outliers.
    fn run(&self, y: &mut [f32], dense: impl Fn(usize, usize, &mut [f32]) + Sync) {
        self.run_fused(y, |r0, outs| {
            for (b, out) in outs.iter_mut().enumerate() {
                dense(r0, b, out);
                self.add_outliers(r0, b, out);
            }
        });
    }

    /// Runs `task(first_row, outputs)` for every task, `outputs[b]` being
    /// activation row `b`'s outputs of the task's rows (`y` is
    /// `batch x rows`); `task` adds the outliers itself
    /// ([`Tasks::add_outliers`]), pass by pass, so their reads overlap the
    /// dense stream.
    fn run_fused(&self, y: &mut [f32], task: impl Fn(usize, &mut [&mut [f32]]) + Sync) {
        let batch = self.batch();
        let rows = y.len() / batch.max(1);
        let per = rows_per_task(rows);
        if batch == 1 {
            y.par_chunks_mut(per)
                .enumerate()
                .for_each(|(t, out)| task(t * per, &mut [out]));
            return;
        }
        // Task t's outputs: the t-th run of `per` outputs of every batch row.
        let mut outs: Vec<Vec<&mut [f32]>> = (0..rows.div_ceil(per)).map(|_| Vec::new()).collect();
        for yb in y.chunks_mut(rows) {
            for (t, o) in yb.chunks_mut(per).enumerate() {
                outs[t].push(o);
            }
        }
        outs.into_par_iter()
            .enumerate()
            .for_each(|(t, mut o)| task(t * per, &mut o));
    }

    /// Adds the outliers of rows `r0 ..` times activation row `b` into
    /// `out`.
    fn add_outliers(&self, r0: usize, b: usize, out: &mut [f32]) {
        if let Some(o) = self.outliers {
            sparse::add_rows(self.path, o, self.row(b), r0, out);
        }
    }

    /// `y[b][r] = Σ_k part(r, k, b)` for every row and activation row `b`;
    /// within a task the column block `k` is the outer loop so its
    /// activations are reused by every row of the task.
    fn blocked(
        &self,
        y: &mut [f32],
        nblocks: usize,
        part: impl Fn(usize, usize, usize) -> f32 + Sync,
    ) {
        self.run(y, |r0, b, out| {
            out.fill(0.0);
            for k in 0..nblocks.max(1) {
                for (i, o) in out.iter_mut().enumerate() {
                    *o += part(r0 + i, k, b);
                }
            }
        });
    }
}

/// The lut4 codebook on 256 levels: `codebook[i] ≈ step · (u8[i] − zero)`.
/// Returns `(u8 table, zero, step)`.
pub(crate) fn lut_u8(codebook: &[f32; 16]) -> ([u8; 16], f32, f32) {
    let lo = codebook.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = codebook.iter().fold(0.0f32, |m, &v| m.max(v));
    let mut t = [0u8; 16];
    if hi - lo == 0.0 {
        return (t, 0.0, 0.0);
    }
    let step = (hi - lo) / 255.0;
    for (q, &v) in t.iter_mut().zip(codebook) {
        *q = ((v - lo) / step).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    (t, -lo / step, step)
}

/// Which 4-bit format a nibble kernel decodes.
#[derive(Clone, Copy)]
enum Nib<'a> {
    Q4 { zeros: &'a [u8] },
    Lut { table: &'a [u8; 16], zero: f32 },
}

/// `y = x · Wᵀ` for `batch` activation rows (`x`: `batch x cols`, already
/// multiplied by the activation scale; `y`: `batch x rows`), dense part
/// and outliers. With `int8_act` false, q8 / q4 / lut4 rows are dequantized
/// to f32 (SIMD) and dotted with f32 activations: exact up to f32 rounding,
/// slower.
pub(crate) fn gemv(
    path: KernelPath,
    m: &QuantizedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    int8_act: bool,
) {
    let cols = m.cols();
    let stride = m.row_stride_bytes();
    let gpr = m.groups_per_row();
    let glen = m.group_len();
    assert!(batch >= 1, "gemv batch");
    assert_eq!(x.len(), batch * cols, "gemv input length");
    assert_eq!(y.len(), batch * m.rows(), "gemv output length");
    let tasks = Tasks {
        path,
        x,
        cols,
        outliers: m.outliers(),
    };
    if !int8_act && m.kind().is_grouped() {
        let nib = matches!(m.packed(), Packed::Q4(_) | Packed::Lut4(_));
        let xp: Vec<Vec<f32>> = (0..batch).map(|b| permute_row(tasks.row(b), nib)).collect();
        tasks.run_fused(y, |r0, outs| {
            let mut w = vec![0.0f32; xp[0].len()];
            for i in 0..outs[0].len() {
                decode_segment(path, m, r0 + i, 0, nib, &mut w);
                for (out, xb) in outs.iter_mut().zip(&xp) {
                    out[i] = dot_f32(path, &w, xb);
                }
            }
            for (b, out) in outs.iter_mut().enumerate() {
                tasks.add_outliers(r0, b, out);
            }
        });
        return;
    }
    // Scalar path: blocks of `col_block()` columns for the plain formats,
    // whole rows for the integer ones.
    let block = col_block();
    let nb_plain = cols.div_ceil(block);
    let cb = |b: usize| (b * block, ((b + 1) * block).min(cols));
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if matches!(
        path,
        KernelPath::Avx512 | KernelPath::Avx2 | KernelPath::Neon
    ) {
        match m.packed() {
            Packed::F16(v) => {
                return multi_row_half(&tasks, bytemuck::cast_slice(v), stride / 2, y, false)
            }
            Packed::Bf16(v) => {
                return multi_row_half(&tasks, bytemuck::cast_slice(v), stride / 2, y, true)
            }
            Packed::F32(v) => return multi_row_f32(&tasks, v, stride / 4, y),
            _ => return multi_row_int(&tasks, m, y),
        }
    }
    match m.packed() {
        Packed::F32(v) => {
            let s = stride / 4;
            tasks.blocked(y, nb_plain, |r, k, b| {
                let (c0, c1) = cb(k);
                dot_f32(path, &v[r * s + c0..r * s + c1], &tasks.row(b)[c0..c1])
            });
        }
        Packed::F16(v) => {
            let s = stride / 2;
            let bits: &[u16] = bytemuck::cast_slice(v);
            tasks.blocked(y, nb_plain, |r, k, b| {
                let (c0, c1) = cb(k);
                dot_half(&bits[r * s + c0..r * s + c1], &tasks.row(b)[c0..c1], false)
            });
        }
        Packed::Bf16(v) => {
            let s = stride / 2;
            let bits: &[u16] = bytemuck::cast_slice(v);
            tasks.blocked(y, nb_plain, |r, k, b| {
                let (c0, c1) = cb(k);
                dot_half(&bits[r * s + c0..r * s + c1], &tasks.row(b)[c0..c1], true)
            });
        }
        Packed::Q8(q) => {
            let acts = scalar_acts(&tasks);
            let codes: &[u8] = bytemuck::cast_slice(&q.codes);
            tasks.blocked(y, 1, |r, _, b| {
                q8_row(
                    &codes[r * stride..][..stride],
                    &q.scales[r * gpr..][..gpr],
                    glen,
                    &acts[b],
                )
            });
        }
        Packed::Q4(q) => {
            let acts = scalar_acts(&tasks);
            let codes: &[u8] = bytemuck::cast_slice(&q.codes);
            tasks.blocked(y, 1, |r, _, b| {
                let nib = Nib::Q4 {
                    zeros: &q.zeros[r * gpr..][..gpr],
                };
                nib_row(
                    &codes[r * stride..][..stride],
                    &q.scales[r * gpr..][..gpr],
                    nib,
                    glen,
                    &acts[b],
                )
            });
        }
        Packed::Lut4(q) => {
            let acts = scalar_acts(&tasks);
            let codes: &[u8] = bytemuck::cast_slice(&q.codes);
            let (table, zero, step) = lut_u8(&q.codebook);
            tasks.blocked(y, 1, |r, _, b| {
                step * nib_row(
                    &codes[r * stride..][..stride],
                    &q.scales[r * gpr..][..gpr],
                    Nib::Lut {
                        table: &table,
                        zero,
                    },
                    glen,
                    &acts[b],
                )
            });
        }
    }
}

/// The int8 activations of every activation row, portable quantizer.
fn scalar_acts(tasks: &Tasks<'_>) -> Vec<QuantAct> {
    (0..tasks.batch())
        .map(|b| QuantAct::new(tasks.row(b), false))
        .collect()
}

/// Rows per pass of the multi-row AVX-512 GEMV. Four rows per pass share
/// the activation loads and keep four weight streams in flight; measured on
/// Zen 4 (2 vCPUs, 2026-12-01) with the next-pass L2 prefetch
/// ([`prefetch_ahead`]) this reads DRAM at the probe's rate for
/// 2 KiB and 7 KiB rows alike, where one row per pass stays near 0.6 of it.
/// `QUANTSCOPE_GEMV_ROWS=1|4` overrides it (for tuning experiments).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn pass_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        match std::env::var("QUANTSCOPE_GEMV_ROWS")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            Some("1") => 1,
            _ => 4,
        }
    })
}

/// Runs `pass(b, first_row, outputs)` over a task's outputs `outs` in
/// passes of [`pass_rows`] weight rows, each pass for every activation row
/// `b` in turn (its weights in cache after the first), the pass's outliers
/// right after it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn passes(
    tasks: &Tasks<'_>,
    first: usize,
    outs: &mut [&mut [f32]],
    pass: impl Fn(usize, usize, &mut [f32]),
) {
    let pr = pass_rows();
    let n = outs[0].len();
    for i0 in (0..n).step_by(pr) {
        let r0 = first + i0;
        for (b, out) in outs.iter_mut().enumerate() {
            let o = &mut out[i0..n.min(i0 + pr)];
            pass(b, r0, o);
            tasks.add_outliers(r0, b, o);
        }
    }
}

/// f32 / f16 / bf16 GEMV on the AVX-512 and AVX2 paths: [`pass_rows`] rows per pass
/// sharing the activation loads, whole rows. `kernel(rows, x, out)` gets the
/// elements from the pass's first row on, an activation row and 4 or 1
/// outputs.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn multi_row_plain<T: Sync>(
    tasks: &Tasks<'_>,
    w: &[T],
    stride: usize,
    y: &mut [f32],
    kernel: impl Fn(&[T], &[f32], &mut [f32]) + Sync,
) {
    let pr = pass_rows();
    tasks.run_fused(y, |first, outs| {
        passes(tasks, first, outs, |b, r0, o| {
            let x = tasks.row(b);
            for (j, o) in o.chunks_mut(if o.len() == pr { pr } else { 1 }).enumerate() {
                kernel(&w[(r0 + j) * stride..], x, o);
            }
        });
    });
}

/// f32 rows through [`multi_row_plain`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn multi_row_f32(tasks: &Tasks<'_>, w: &[f32], stride: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = tasks.path == KernelPath::Avx512;
    multi_row_plain(tasks, w, stride, y, |wr, x, o| {
        // SAFETY: the path (AVX-512 or AVX2; NEON on aarch64) was checked
        // against the CPU by the caller (`KernelPath::check`); the kernel
        // checks the lengths.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (avx512, o.len()) {
                (true, 4) => avx512::f32_rows::<4>(wr, stride, x, o),
                (true, _) => avx512::f32_rows::<1>(wr, stride, x, o),
                (false, 4) => avx2::f32_rows::<4>(wr, stride, x, o),
                (false, _) => avx2::f32_rows::<1>(wr, stride, x, o),
            }
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            match o.len() {
                4 => neon::f32_rows::<4>(wr, stride, x, o),
                _ => neon::f32_rows::<1>(wr, stride, x, o),
            }
        }
    });
}

/// f16 / bf16 rows through [`multi_row_plain`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn multi_row_half(tasks: &Tasks<'_>, w: &[u16], stride: usize, y: &mut [f32], bf16: bool) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = tasks.path == KernelPath::Avx512;
    multi_row_plain(tasks, w, stride, y, |wr, x, o| {
        // SAFETY: as in `multi_row_f32`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match (avx512, o.len()) {
                (true, 4) => avx512::half_rows::<4>(wr, stride, x, bf16, o),
                (true, _) => avx512::half_rows::<1>(wr, stride, x, bf16, o),
                (false, 4) => avx2::half_rows::<4>(wr, stride, x, bf16, o),
                (false, _) => avx2::half_rows::<1>(wr, stride, x, bf16, o),
            }
        }
        // SAFETY: as in `multi_row_f32`.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            match o.len() {
                4 => neon::half_rows::<4>(wr, stride, x, bf16, o),
                _ => neon::half_rows::<1>(wr, stride, x, bf16, o),
            }
        }
    });
}

/// The signature shared by the `int_rows` kernels (AVX-512, AVX2, NEON).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type IntRows =
    unsafe fn(&[u8], usize, &[f16], &[u8], &[f32], &[u8; 16], f32, usize, &QuantAct, &mut [f32]);

/// q8 / q4 / lut4 GEMV on the AVX-512 and AVX2 paths: [`pass_rows`] rows per pass
/// sharing the activation loads ([`avx512::int_rows`]), whole rows.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn multi_row_int(tasks: &Tasks<'_>, m: &QuantizedMatrix, y: &mut [f32]) {
    let stride = m.row_stride_bytes();
    let gpr = m.groups_per_row();
    let glen = m.group_len();
    // The activation buffers are kept per calling thread between calls
    // (taken, not borrowed: a nested GEMV on the same thread gets fresh ones).
    thread_local! {
        static ACT: std::cell::Cell<Vec<QuantAct>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut acts = ACT.take();
    let batch = tasks.batch();
    acts.resize_with(batch.max(acts.len()), QuantAct::default);
    // The AVX-512 quantizer only on that path (a forced AVX2 run measures
    // what an AVX2-only CPU does).
    for (b, act) in acts.iter_mut().take(batch).enumerate() {
        act.fill(tasks.row(b), tasks.path == KernelPath::Avx512);
    }
    let gsums: Vec<Vec<f32>> = acts[..batch].iter().map(|a| a.group_sums(glen)).collect();
    // (codes, scales, zeros, lut4 table / zero / step)
    let (codes, scales, zeros, lut): (&[u8], &[f16], &[u8], _) = match m.packed() {
        Packed::Q8(q) => (bytemuck::cast_slice(&q.codes), &q.scales, &[], None),
        Packed::Q4(q) => (bytemuck::cast_slice(&q.codes), &q.scales, &q.zeros, None),
        Packed::Lut4(q) => (
            bytemuck::cast_slice(&q.codes),
            &q.scales,
            &[],
            Some(lut_u8(&q.codebook)),
        ),
        // Plain formats never come here (the caller checks `is_grouped`).
        _ => return,
    };
    let (table, zconst, step) = lut.unwrap_or(([0; 16], 0.0, 1.0));
    let is_q8 = matches!(m.packed(), Packed::Q8(_));
    // The 4-row and 1-row kernels of this path and format.
    #[cfg(target_arch = "aarch64")]
    let pick = |four: bool| -> IntRows {
        match (four, is_q8, lut.is_some()) {
            (true, true, _) => neon::int_rows::<4, Q8>,
            (true, false, false) => neon::int_rows::<4, Q4>,
            (true, false, true) => neon::int_rows::<4, LUT4>,
            (false, true, _) => neon::int_rows::<1, Q8>,
            (false, false, false) => neon::int_rows::<1, Q4>,
            (false, false, true) => neon::int_rows::<1, LUT4>,
        }
    };
    #[cfg(target_arch = "x86_64")]
    let pick = |four: bool| -> IntRows {
        match (tasks.path == KernelPath::Avx512, four, is_q8, lut.is_some()) {
            (true, true, true, _) => avx512::int_rows::<4, Q8>,
            (true, true, false, false) => avx512::int_rows::<4, Q4>,
            (true, true, false, true) => avx512::int_rows::<4, LUT4>,
            (true, false, true, _) => avx512::int_rows::<1, Q8>,
            (true, false, false, false) => avx512::int_rows::<1, Q4>,
            (true, false, false, true) => avx512::int_rows::<1, LUT4>,
            (false, true, true, _) => avx2::int_rows::<4, Q8>,
            (false, true, false, false) => avx2::int_rows::<4, Q4>,
            (false, true, false, true) => avx2::int_rows::<4, LUT4>,
            (false, false, true, _) => avx2::int_rows::<1, Q8>,
            (false, false, false, false) => avx2::int_rows::<1, Q4>,
            (false, false, false, true) => avx2::int_rows::<1, LUT4>,
        }
    };
    let (kernel4, kernel1) = (pick(true), pick(false));
    let pr = pass_rows();
    tasks.run_fused(y, |first, outs| {
        passes(tasks, first, outs, |b, r0, o| {
            let (act, gsum) = (&acts[b], &gsums[b]);
            for (j, o) in o.chunks_mut(if o.len() == pr { pr } else { 1 }).enumerate() {
                let r = r0 + j;
                let c = &codes[r * stride..];
                let s = &scales[r * gpr..];
                let z = if zeros.is_empty() {
                    zeros
                } else {
                    &zeros[r * gpr..]
                };
                let kernel = if o.len() == 4 { kernel4 } else { kernel1 };
                // SAFETY: the kernel's path (AVX-512 or AVX2) was checked
                // against the CPU by the caller (`KernelPath::check`); `act`
                // has its SIMD tables; the slices start at row `r` and the
                // kernel checks their lengths.
                unsafe { kernel(c, stride, s, z, gsum, &table, zconst, glen, act, o) };
                if lut.is_some() {
                    o.iter_mut().for_each(|v| *v *= step);
                }
            }
        });
    });
    ACT.set(acts);
}

fn dot_f32(path: KernelPath, w: &[f32], x: &[f32]) -> f32 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU's features by the caller
        // (`KernelPath::check`); the slices have equal lengths.
        KernelPath::Avx512 => unsafe { avx512::dot_f32(w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { avx2::dot_f32(w, x) },
        _ => scalar_dot(w.iter().copied(), x),
    }
}

/// f16 / bf16 dot product on the scalar path (the SIMD paths run
/// [`multi_row_half`]).
fn dot_half(w: &[u16], x: &[f32], bf16: bool) -> f32 {
    if bf16 {
        scalar_dot(w.iter().map(|&b| half::bf16::from_bits(b).to_f32()), x)
    } else {
        scalar_dot(w.iter().map(|&b| f16::from_bits(b).to_f32()), x)
    }
}

/// Dot product with eight independent accumulators.
fn scalar_dot(w: impl Iterator<Item = f32>, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, (a, &b)) in w.zip(x).enumerate() {
        acc[i % 8] += a * b;
    }
    acc.iter().sum()
}

/// One q8 row on the scalar path (the SIMD paths run [`multi_row_int`]).
fn q8_row(codes: &[u8], scales: &[f16], glen: usize, act: &QuantAct) -> f32 {
    scalar_int_row(act, glen, |c| codes[c] as i8 as i32, |_| 0.0, |g| scales[g])
}

fn nib_row(codes: &[u8], scales: &[f16], nib: Nib<'_>, glen: usize, act: &QuantAct) -> f32 {
    match nib {
        Nib::Q4 { zeros } => scalar_int_row(
            act,
            glen,
            |c| ((codes[c / 2] >> (4 * (c % 2))) & 0xF) as i32,
            |g| zeros[g] as f32,
            |g| scales[g],
        ),
        Nib::Lut { table, zero } => scalar_int_row(
            act,
            glen,
            |c| table[((codes[c / 2] >> (4 * (c % 2))) & 0xF) as usize] as i32,
            |_| zero,
            |g| scales[g],
        ),
    }
}

/// The portable integer GEMV row: the reference for the SIMD paths.
fn scalar_int_row(
    act: &QuantAct,
    glen: usize,
    w: impl Fn(usize) -> i32,
    zero: impl Fn(usize) -> f32,
    scale: impl Fn(usize) -> f16,
) -> f32 {
    let cols = act.cols;
    let mut acc = 0.0f32;
    for b in 0..cols.div_ceil(QBLOCK) {
        let c0 = b * QBLOCK;
        let c1 = (c0 + QBLOCK).min(cols);
        let d: i32 = (c0..c1).map(|c| w(c) * act.xq[c] as i32).sum();
        let g = c0 / glen;
        let t = d as f32 - zero(g) * act.sumq[b] as f32;
        acc += t * (scale(g).to_f32() * act.dx[b]);
    }
    acc
}

/// The integer code of column `c` of a packed row for format `f` (q8: the
/// signed code; q4: the nibble; lut4: the nibble's 8-bit table value).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline]
fn int_code(f: u8, row: &[u8], table: &[u8; 16], c: usize) -> i32 {
    let nib = ((row[c / 2] >> (4 * (c % 2))) & 0xF) as usize;
    match f {
        Q8 => row[c] as i8 as i32,
        Q4 => nib as i32,
        _ => table[nib] as i32,
    }
}

/// `Σ_b dot_b · s_g(b) · dx_b` over the blocks from column `c0` (a block
/// boundary) to the end of the row, in exact integers per block: the part
/// of a row the SIMD `int_rows` kernels leave after their last full step.
/// `scale(g)` is group `g`'s scale as f32.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn int_tail(
    f: u8,
    row: &[u8],
    table: &[u8; 16],
    scale: impl Fn(usize) -> f32,
    glen: usize,
    act: &QuantAct,
    c0: usize,
) -> f32 {
    let cols = act.cols;
    (c0 / QBLOCK..cols.div_ceil(QBLOCK))
        .map(|b| {
            let dot: i32 = (QBLOCK * b..(QBLOCK * (b + 1)).min(cols))
                .map(|c| int_code(f, row, table, c) * act.xq[c] as i32)
                .sum();
            dot as f32 * (scale(QBLOCK * b / glen) * act.dx[b])
        })
        .sum()
}

/// Checks what the AVX2 and NEON `int_rows` kernels rely on (`r` rows of
/// format `f` from `codes`, their scales, zero points and the activation
/// tables) and returns `(groups per row, code bytes per row)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
fn int_rows_args(
    f: u8,
    r: usize,
    codes: &[u8],
    stride: usize,
    scales: &[f16],
    zeros: &[u8],
    gsum: &[f32],
    glen: usize,
    act: &QuantAct,
    out: &[f32],
) -> (usize, usize) {
    let cols = act.cols;
    let gpr = cols.div_ceil(glen);
    let row_bytes = if f == Q8 {
        cols
    } else {
        cols.div_ceil(QBLOCK) * QBLOCK / 2
    };
    let padded = act.xq.len();
    assert!(r >= 1 && out.len() == r);
    assert!(stride >= row_bytes && codes.len() >= (r - 1) * stride + row_bytes);
    assert!(scales.len() >= r * gpr && gsum.len() >= gpr);
    assert!(f != Q4 || zeros.len() >= r * gpr);
    assert!(padded >= cols && padded.is_multiple_of(super::act::NIB_CHUNK));
    assert!(act.nib_xq.len() == padded && act.nib_dx.len() * 8 == padded);
    assert!(act.byte_dx.len() * 4 == padded && act.dx.len() >= cols.div_ceil(QBLOCK));
    (gpr, row_bytes)
}

/// How a 512-bit chunk's lanes map to weight groups: `1` (one group for the
/// whole chunk), `2` or `4` (consecutive groups, equal lanes each), or `0`
/// (anything else: filled lane by lane).
#[cfg(target_arch = "x86_64")]
fn groups_per_chunk(glen: usize, cols: usize, chunk_cols: usize) -> usize {
    if glen >= cols || glen.is_multiple_of(chunk_cols) {
        1
    } else if chunk_cols.is_multiple_of(glen) && chunk_cols / glen <= 4 {
        chunk_cols / glen
    } else {
        0
    }
}

#[cfg(target_arch = "aarch64")]
#[path = "gemv_neon.rs"]
pub(super) mod neon;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::act::{QuantAct, BYTE_CHUNK, NIB_CHUNK, QBLOCK};
    use super::{groups_per_chunk, prefetch_ahead, LUT4, Q4, Q8};

    /// Sum of `w[i] * x[i]`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let n = x.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(o)), _mm512_loadu_ps(xp.add(o)), *a);
            }
            i += 64;
        }
        while i < n {
            let k = (n - i).min(16);
            let m: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let wv = _mm512_maskz_loadu_ps(m, wp.add(i));
            let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
            acc[0] = _mm512_fmadd_ps(wv, xv, acc[0]);
            i += k;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// 16 halves (f16 or bf16 bits) widened to f32.
    #[inline(always)]
    unsafe fn widen(v: __m256i, bf16: bool) -> __m512 {
        if bf16 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
        } else {
            _mm512_cvtph_ps(v)
        }
    }

    /// Lane `i` takes element `i * g / 16` (`g` consecutive groups per chunk).
    #[inline(always)]
    unsafe fn group_index(g: usize) -> __m512i {
        let mut idx = [0i32; 16];
        for (i, v) in idx.iter_mut().enumerate() {
            *v = (i * g.max(1) / 16) as i32;
        }
        _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
    }

    /// Scales of groups `g0 .. g0 + g` spread over the 16 lanes (`g` in 1, 2, 4).
    #[inline(always)]
    unsafe fn lane_scales(scales: &[f16], g0: usize, g: usize, idx: __m512i) -> __m512 {
        let p = scales.as_ptr().add(g0) as *const u8;
        let bits = match g {
            1 => _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const u16) as i32),
            2 => _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const u32) as i32),
            _ => _mm_cvtsi64_si128(std::ptr::read_unaligned(p as *const u64) as i64),
        };
        _mm512_permutexvar_ps(idx, _mm512_cvtph_ps(_mm256_castsi128_si256(bits)))
    }

    /// Scales and zeros lane by lane: lane `i` of chunk `k` belongs to block
    /// `blocks_per_chunk * k + i / (16 / blocks_per_chunk)`; blocks past the
    /// row get 0.
    #[inline(always)]
    unsafe fn lane_fill(
        scales: &[f16],
        zeros: &[u8],
        k: usize,
        blocks_per_chunk: usize,
        glen: usize,
        cols: usize,
    ) -> (__m512, __m512) {
        let mut s = [0.0f32; 16];
        let mut z = [0.0f32; 16];
        for i in 0..16 {
            let c = (blocks_per_chunk * k + i / (16 / blocks_per_chunk)) * QBLOCK;
            if c < cols {
                s[i] = scales[c / glen].to_f32();
                z[i] = zeros.get(c / glen).map_or(0.0, |&v| v as f32);
            }
        }
        (_mm512_loadu_ps(s.as_ptr()), _mm512_loadu_ps(z.as_ptr()))
    }

    /// `Σ_g s_g · z_g · gsum_g` over the row's groups, 16 groups at a time;
    /// `z_g` is the q4 zero point, or lut4's constant zero when `zconst` is set.
    #[inline(always)]
    unsafe fn zero_term(
        scales: &[f16],
        zeros: &[u8],
        zconst: Option<f32>,
        gsum: &[f32],
        gpr: usize,
    ) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut g = 0;
        while g < gpr {
            let n = (gpr - g).min(16);
            let m: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
            let s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                m,
                scales.as_ptr().add(g) as *const i16,
            ));
            let z = match zconst {
                Some(z) => _mm512_set1_ps(z),
                None => _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                    m,
                    zeros.as_ptr().add(g) as *const i8,
                ))),
            };
            let w = _mm512_maskz_loadu_ps(m, gsum.as_ptr().add(g));
            acc = _mm512_fmadd_ps(_mm512_mul_ps(s, z), w, acc);
            g += n;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// What [`rows_step`] needs besides the chunk index and the lane scales.
    struct RowsCtx {
        codes: *const u8,
        stride: usize,
        xq: *const i8,
        dx: *const f32,
        mask: __m512i,
        lut: __m512i,
        /// Prefetch distance in bytes.
        pf: usize,
    }

    /// The 16 i32 lane dots of one 64-byte chunk `w` with the activations
    /// `xa` (and `xb`, the odd columns, for the 4-bit formats), as f32.
    #[inline(always)]
    unsafe fn chunk_dot<const F: u8>(
        w: __m512i,
        mask: __m512i,
        lut: __m512i,
        xa: __m512i,
        xb: __m512i,
    ) -> __m512 {
        let d = if F == Q8 {
            // Codes + 128 are the unsigned operand; the offset comes off per row.
            let wu = _mm512_xor_si512(w, _mm512_set1_epi8(-128));
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, xa)
        } else {
            let mut lo = _mm512_and_si512(w, mask);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask);
            if F == LUT4 {
                lo = _mm512_shuffle_epi8(lut, lo);
                hi = _mm512_shuffle_epi8(lut, hi);
            }
            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xa), hi, xb)
        };
        _mm512_cvtepi32_ps(d)
    }

    /// `acc[r] += dot(row r, chunk k) · s[r] · dx` for `R` rows that share
    /// the activation loads of chunk `k`.
    #[inline(always)]
    unsafe fn rows_step<const R: usize, const F: u8>(
        c: &RowsCtx,
        k: usize,
        s: &[__m512; R],
        acc: &mut [__m512; R],
    ) {
        let cc = if F == Q8 { BYTE_CHUNK } else { NIB_CHUNK };
        let xa = _mm512_loadu_si512(c.xq.add(cc * k) as *const __m512i);
        let xb = if F == Q8 {
            xa
        } else {
            _mm512_loadu_si512(c.xq.add(cc * k + 64) as *const __m512i)
        };
        let d = _mm512_loadu_ps(c.dx.add(16 * k));
        for r in 0..R {
            let p = c.codes.add(r * c.stride + 64 * k);
            if c.pf != 0 {
                // A prefetch never faults, so the address may run past the matrix.
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(c.pf) as *const i8);
            }
            let w = _mm512_loadu_si512(p as *const __m512i);
            let t = chunk_dot::<F>(w, c.mask, c.lut, xa, xb);
            acc[r] = _mm512_fmadd_ps(t, _mm512_mul_ps(s[r], d), acc[r]);
        }
    }

    /// `R` consecutive rows of a q8 / q4 / lut4 matrix (`F`), whole rows,
    /// one pass: the activation chunk and its lane scales are loaded once
    /// for the `R` rows, the row scales are expanded to lanes once per 16
    /// groups, and the zero points (q4 per group, lut4 `zconst`, the q8
    /// offset 128) come off once per row as `Σ_g s_g · z_g · gsum_g`.
    /// `codes` starts at the first row (`stride` bytes per row), `scales`
    /// (and `zeros` for q4) at its first group; `out[r]` gets row `r`
    /// (lut4 still to be multiplied by its codebook step).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; `act` was built with its SIMD
    /// tables for `glen` (a multiple of 32 or the whole row).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
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
        let gpr = cols.div_ceil(glen);
        let cc = if F == Q8 { BYTE_CHUNK } else { NIB_CHUNK };
        let bpc = cc / QBLOCK;
        let row_bytes = if F == Q8 {
            cols
        } else {
            cols.div_ceil(QBLOCK) * QBLOCK / 2
        };
        let nchunks = cols.div_ceil(cc);
        assert!(R >= 1 && out.len() == R);
        assert!(stride >= row_bytes && codes.len() >= (R - 1) * stride + row_bytes);
        assert!(scales.len() >= R * gpr && gsum.len() >= gpr);
        assert!(F != Q4 || zeros.len() >= R * gpr);
        let (xq, dx) = if F == Q8 {
            (act.xq.as_ptr(), act.byte_dx.as_ptr())
        } else {
            (act.nib_xq.as_ptr(), act.nib_dx.as_ptr())
        };
        let xlen = if F == Q8 {
            act.xq.len()
        } else {
            act.nib_xq.len()
        };
        let dxlen = if F == Q8 {
            act.byte_dx.len()
        } else {
            act.nib_dx.len()
        };
        assert!(xlen >= nchunks * cc && dxlen >= nchunks * 16);
        let c = RowsCtx {
            codes: codes.as_ptr(),
            stride,
            xq,
            dx,
            mask: _mm512_set1_epi8(0x0F),
            lut: _mm512_broadcast_i32x4(_mm_loadu_si128(table.as_ptr() as *const __m128i)),
            pf: prefetch_ahead(R, stride),
        };
        let g = groups_per_chunk(glen, cols, cc);
        let idx = group_index(g);
        let nfull = cols / cc;
        let zero = _mm512_setzero_ps();
        let mut acc = [zero; R];
        let mut s = [zero; R];
        let mut k = 0;
        match g {
            1 => {
                // One group spans `per` whole chunks: one broadcast per row.
                let per = if glen >= cols { usize::MAX } else { glen / cc };
                while k < nfull {
                    let gi = k / per;
                    let end = (gi + 1).saturating_mul(per).min(nfull);
                    for (r, v) in s.iter_mut().enumerate() {
                        *v = _mm512_set1_ps(scales[r * gpr + gi].to_f32());
                    }
                    while k < end {
                        rows_step::<R, F>(&c, k, &s, &mut acc);
                        k += 1;
                    }
                }
            }
            2 | 4 => {
                // 16 scales per row per load, spread over the next 16 / g chunks.
                let step = 16 / g;
                let mut s16 = [zero; R];
                while k + step <= nfull {
                    for (r, v) in s16.iter_mut().enumerate() {
                        let p = scales.as_ptr().add(r * gpr + k * g);
                        *v = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                    }
                    for j in 0..step {
                        let i = _mm512_add_epi32(idx, _mm512_set1_epi32((j * g) as i32));
                        for r in 0..R {
                            s[r] = _mm512_permutexvar_ps(i, s16[r]);
                        }
                        rows_step::<R, F>(&c, k + j, &s, &mut acc);
                    }
                    k += step;
                }
                while k < nfull {
                    for (r, v) in s.iter_mut().enumerate() {
                        *v = lane_scales(&scales[r * gpr..][..gpr], k * g, g, idx);
                    }
                    rows_step::<R, F>(&c, k, &s, &mut acc);
                    k += 1;
                }
            }
            _ => {
                while k < nfull {
                    for (r, v) in s.iter_mut().enumerate() {
                        *v = lane_fill(&scales[r * gpr..][..gpr], &[], k, bpc, glen, cols).0;
                    }
                    rows_step::<R, F>(&c, k, &s, &mut acc);
                    k += 1;
                }
            }
        }
        // The partial last chunk: masked code loads (zero bytes meet the
        // zero-padded activations), lanes past the row get scale 0.
        let rem = cols - nfull * cc;
        if rem > 0 {
            let nbytes = if F == Q8 {
                rem
            } else {
                rem.div_ceil(QBLOCK) * QBLOCK / 2
            };
            let m: __mmask64 = if nbytes >= 64 {
                u64::MAX
            } else {
                (1u64 << nbytes) - 1
            };
            let xa = _mm512_loadu_si512(xq.add(cc * nfull) as *const __m512i);
            let xb = if F == Q8 {
                xa
            } else {
                _mm512_loadu_si512(xq.add(cc * nfull + 64) as *const __m512i)
            };
            let d = _mm512_loadu_ps(dx.add(16 * nfull));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = codes.as_ptr().add(r * stride + 64 * nfull);
                let w = _mm512_maskz_loadu_epi8(m, p as *const i8);
                let sr = lane_fill(&scales[r * gpr..][..gpr], &[], nfull, bpc, glen, cols).0;
                let t = chunk_dot::<F>(w, c.mask, c.lut, xa, xb);
                *a = _mm512_fmadd_ps(t, _mm512_mul_ps(sr, d), *a);
            }
        }
        for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
            let rs = &scales[r * gpr..][..gpr];
            let zt = match F {
                Q4 => zero_term(rs, &zeros[r * gpr..][..gpr], None, gsum, gpr),
                LUT4 => zero_term(rs, &[], Some(zconst), gsum, gpr),
                _ => zero_term(rs, &[], Some(128.0), gsum, gpr),
            };
            *o = _mm512_reduce_add_ps(a) - zt;
        }
    }

    /// `out[r] = Σ w[r·stride + i] · x[i]` for `R` consecutive f32 rows,
    /// sharing the activation loads; two accumulators per row.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F.
    #[target_feature(enable = "avx512f,fma")]
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
        let pf = prefetch_ahead(R, 4 * stride) / 4;
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 32 <= n {
            let x0 = _mm512_loadu_ps(xp.add(i));
            let x1 = _mm512_loadu_ps(xp.add(i + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = wp.add(r * stride + i);
                if pf != 0 {
                    // Two lines per 32 columns; a prefetch never faults.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf + 16) as *const i8);
                }
                a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(p), x0, a[0]);
                a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16)), x1, a[1]);
            }
            i += 32;
        }
        while i < n {
            let k = (n - i).min(16);
            let m: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_maskz_loadu_ps(m, wp.add(r * stride + i));
                a[0] = _mm512_fmadd_ps(wv, xv, a[0]);
            }
            i += k;
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        }
    }

    /// `out[r] = Σ half(w[r·stride + i]) · x[i]` for `R` consecutive rows of
    /// f16 (`bf16 == false`) or bf16 bits, sharing the activation loads;
    /// two accumulators per row.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VL + F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
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
        let pf = prefetch_ahead(R, 2 * stride) / 2;
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 32 <= n {
            let x0 = _mm512_loadu_ps(xp.add(i));
            let x1 = _mm512_loadu_ps(xp.add(i + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = wp.add(r * stride + i);
                if pf != 0 {
                    // A prefetch never faults, so the address may run past the matrix.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                }
                let w0 = widen(_mm256_loadu_si256(p as *const __m256i), bf16);
                let w1 = widen(_mm256_loadu_si256(p.add(16) as *const __m256i), bf16);
                a[0] = _mm512_fmadd_ps(w0, x0, a[0]);
                a[1] = _mm512_fmadd_ps(w1, x1, a[1]);
            }
            i += 32;
        }
        while i < n {
            let k = (n - i).min(16);
            let m: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
            let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = wp.add(r * stride + i);
                let wv = widen(_mm256_maskz_loadu_epi16(m, p as *const i16), bf16);
                a[0] = _mm512_fmadd_ps(wv, xv, a[0]);
            }
            i += k;
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::act::{QuantAct, NIB_CHUNK, QBLOCK};
    use super::{LUT4, Q4, Q8};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Sum of `w[i] * x[i]`.
    ///
    /// # Safety
    /// The CPU supports AVX2 + FMA; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let n = x.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
            }
            i += 32;
        }
        let mut tail = 0.0f32;
        while i < n {
            tail += w[i] * x[i];
            i += 1;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(s) + tail
    }

    /// 8 f16 (`bf16 == false`) or bf16 values widened to f32.
    #[inline(always)]
    unsafe fn widen8(h: __m128i, bf16: bool) -> __m256 {
        if bf16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    /// `out[r] = Σ w[r·stride + i] · x[i]` for `R` consecutive f32 rows
    /// sharing the activation loads, with the next-pass L2 prefetch.
    ///
    /// # Safety
    /// The CPU supports AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
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
        let pf = super::prefetch_ahead(R, 4 * stride) / 4;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 16 <= n {
            let x0 = _mm256_loadu_ps(xp.add(i));
            let x1 = _mm256_loadu_ps(xp.add(i + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = wp.add(r * stride + i);
                if pf != 0 {
                    // A prefetch never faults, so the address may run past the matrix.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                }
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), x1, a[1]);
            }
            i += 16;
        }
        for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
            let row = &w[r * stride..][..n];
            let tail: f32 = (i..n).map(|c| row[c] * x[c]).sum();
            *o = hsum(_mm256_add_ps(a[0], a[1])) + tail;
        }
    }

    /// `out[r] = Σ half(w[r·stride + i]) · x[i]` for `R` consecutive rows
    /// of f16 (`bf16 == false`) or bf16 bits, sharing the activation loads,
    /// with the next-pass L2 prefetch.
    ///
    /// # Safety
    /// The CPU supports AVX2 + FMA + F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
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
        let pf = super::prefetch_ahead(R, 2 * stride) / 2;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + 32 <= n {
            let xs = [
                _mm256_loadu_ps(xp.add(i)),
                _mm256_loadu_ps(xp.add(i + 8)),
                _mm256_loadu_ps(xp.add(i + 16)),
                _mm256_loadu_ps(xp.add(i + 24)),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                let p = wp.add(r * stride + i);
                if pf != 0 {
                    // A prefetch never faults, so the address may run past the matrix.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                }
                for (j, xv) in xs.iter().enumerate() {
                    let h = _mm_loadu_si128(p.add(8 * j) as *const __m128i);
                    a[j % 2] = _mm256_fmadd_ps(widen8(h, bf16), *xv, a[j % 2]);
                }
            }
            i += 32;
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
            *o = hsum(_mm256_add_ps(a[0], a[1])) + tail;
        }
    }

    /// Lane scales of one 64-column half chunk (columns `c0 .. c0 + 64`)
    /// for the 4-bit kernels: lane `i` belongs to block `c0 / 32 + i / 4`.
    /// `mode`: 2 = groups of 32 (two groups per half), 1 = one group spans
    /// the half, 0 = anything else (lane by lane).
    #[inline(always)]
    unsafe fn half_scales(scales: &[f16], c0: usize, glen: usize, mode: u8) -> __m256 {
        match mode {
            2 => {
                let bits = std::ptr::read_unaligned(scales.as_ptr().add(c0 / 32) as *const u32);
                let s = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
                _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
            }
            1 => _mm256_set1_ps(f16_to_f32(scales[c0 / glen])),
            _ => {
                let mut s = [0.0f32; 8];
                for (i, v) in s.iter_mut().enumerate() {
                    *v = f16_to_f32(scales[(c0 + 32 * (i / 4)) / glen]);
                }
                _mm256_loadu_ps(s.as_ptr())
            }
        }
    }

    /// One f16 to f32 through F16C (the `half` crate converts in software
    /// unless F16C is enabled at compile time).
    #[inline(always)]
    unsafe fn f16_to_f32(h: f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
    }

    /// The 8 i32 lane dots of 32 code bytes `w` (64 columns) with the even
    /// (`xa`) and odd (`xb`) column activations: `vpmaddubsw` (u8 x i8, pairs
    /// summed in i16) then `vpmaddwd`. q4 nibbles (<= 15) sum exactly in
    /// i16; lut4 splits each table value into its two nibbles (`tlo`,
    /// `thi`: `table = 16 · thi + tlo`) so neither product saturates.
    #[inline(always)]
    unsafe fn nib_dot<const F: u8>(
        w: __m256i,
        xa: __m256i,
        xb: __m256i,
        tlo: __m256i,
        thi: __m256i,
    ) -> __m256i {
        let m = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let lo = _mm256_and_si256(w, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m);
        if F == LUT4 {
            let a = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_shuffle_epi8(tlo, lo), xa),
                _mm256_maddubs_epi16(_mm256_shuffle_epi8(tlo, hi), xb),
            );
            let b = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_shuffle_epi8(thi, lo), xa),
                _mm256_maddubs_epi16(_mm256_shuffle_epi8(thi, hi), xb),
            );
            _mm256_add_epi32(
                _mm256_madd_epi16(a, ones),
                _mm256_madd_epi16(b, _mm256_set1_epi16(16)),
            )
        } else {
            let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
            _mm256_madd_epi16(p, ones)
        }
    }

    /// `Σ_g s_g · z_g · gsum_g` over a row's groups, 8 at a time; `z_g` is
    /// the q4 zero point, or lut4's constant zero when `zconst` is set.
    #[inline(always)]
    unsafe fn zero_term(
        scales: &[f16],
        zeros: &[u8],
        zconst: Option<f32>,
        gsum: &[f32],
        gpr: usize,
    ) -> f32 {
        assert!(scales.len() >= gpr && gsum.len() >= gpr);
        assert!(zconst.is_some() || zeros.len() >= gpr);
        let mut acc = _mm256_setzero_ps();
        let mut g = 0;
        while g + 8 <= gpr {
            let s = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(g) as *const __m128i));
            let z = match zconst {
                Some(z) => _mm256_set1_ps(z),
                None => _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    zeros.as_ptr().add(g) as *const __m128i,
                ))),
            };
            let w = _mm256_loadu_ps(gsum.as_ptr().add(g));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(s, z), w, acc);
            g += 8;
        }
        let mut t = hsum(acc);
        while g < gpr {
            let z = zconst.unwrap_or_else(|| zeros[g] as f32);
            t += f16_to_f32(scales[g]) * z * gsum[g];
            g += 1;
        }
        t
    }

    /// `R` consecutive rows of a q8 / q4 / lut4 matrix (`F`, as in
    /// [`super::avx512::int_rows`], same arguments and result) on AVX2:
    /// the activation chunk and its lane scales are loaded once for the
    /// `R` rows, each row stream prefetches (into L2) its line of the next
    /// pass, q8 uses signed codes (`vpsignb` makes the unsigned operand, so
    /// no offset term) and the 4-bit zero points come off once per row.
    ///
    /// # Safety
    /// The CPU supports AVX2 + FMA + F16C; `act` was built with its SIMD
    /// tables; `glen` is a multiple of 32 or the whole row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
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
        let pf = super::prefetch_ahead(R, stride);
        let zero = _mm256_setzero_ps();
        let mut acc = [[zero; 2]; R];
        // Columns covered by the SIMD loop; the rest (< one step) is scalar.
        let done;
        if F == Q8 {
            let ones = _mm256_set1_epi16(1);
            let nb = cols / QBLOCK;
            for b in 0..nb {
                let x = _mm256_loadu_si256(act.xq.as_ptr().add(32 * b) as *const __m256i);
                let d = _mm256_loadu_ps(act.byte_dx.as_ptr().add(8 * b));
                let g = 32 * b / glen;
                for (r, a) in acc.iter_mut().enumerate() {
                    let p = codes.as_ptr().add(r * stride + 32 * b);
                    if pf != 0 && b % 2 == 0 {
                        // A prefetch never faults, so the address may run past the matrix.
                        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                    }
                    let w = _mm256_loadu_si256(p as *const __m256i);
                    let t = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                        ones,
                    );
                    let s = _mm256_set1_ps(f16_to_f32(scales[r * gpr + g]));
                    a[b % 2] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(s, d), a[b % 2]);
                }
            }
            done = nb * QBLOCK;
        } else {
            let mode = if glen == 32 && cols > 32 {
                2
            } else if glen >= cols || glen.is_multiple_of(64) {
                1
            } else {
                0
            };
            let tlo = _mm256_broadcastsi128_si256(_mm_and_si128(
                _mm_loadu_si128(table.as_ptr() as *const __m128i),
                _mm_set1_epi8(0x0F),
            ));
            let thi = _mm256_broadcastsi128_si256(_mm_and_si128(
                _mm_srli_epi16::<4>(_mm_loadu_si128(table.as_ptr() as *const __m128i)),
                _mm_set1_epi8(0x0F),
            ));
            let nk = cols / NIB_CHUNK;
            for k in 0..nk {
                let xp = act.nib_xq.as_ptr().add(NIB_CHUNK * k);
                let xa0 = _mm256_loadu_si256(xp as *const __m256i);
                let xa1 = _mm256_loadu_si256(xp.add(32) as *const __m256i);
                let xb0 = _mm256_loadu_si256(xp.add(64) as *const __m256i);
                let xb1 = _mm256_loadu_si256(xp.add(96) as *const __m256i);
                let d0 = _mm256_loadu_ps(act.nib_dx.as_ptr().add(16 * k));
                let d1 = _mm256_loadu_ps(act.nib_dx.as_ptr().add(16 * k + 8));
                let c0 = NIB_CHUNK * k;
                for (r, a) in acc.iter_mut().enumerate() {
                    let p = codes.as_ptr().add(r * stride + 64 * k);
                    if pf != 0 {
                        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(pf) as *const i8);
                    }
                    let rs = &scales[r * gpr..][..gpr];
                    let w0 = _mm256_loadu_si256(p as *const __m256i);
                    let w1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
                    let t0 = nib_dot::<F>(w0, xa0, xb0, tlo, thi);
                    let t1 = nib_dot::<F>(w1, xa1, xb1, tlo, thi);
                    let s0 = half_scales(rs, c0, glen, mode);
                    let s1 = half_scales(rs, c0 + 64, glen, mode);
                    a[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t0), _mm256_mul_ps(s0, d0), a[0]);
                    a[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t1), _mm256_mul_ps(s1, d1), a[1]);
                }
            }
            done = nk * NIB_CHUNK;
        }
        for (r, (o, a)) in out.iter_mut().zip(acc).enumerate() {
            let rs = &scales[r * gpr..][..gpr];
            let row = &codes[r * stride..][..row_bytes];
            // The last partial step, block by block, in integers.
            let tail = super::int_tail(F, row, table, |g| f16_to_f32(rs[g]), glen, act, done);
            let zt = match F {
                Q4 => zero_term(rs, &zeros[r * gpr..][..gpr], None, gsum, gpr),
                LUT4 => zero_term(rs, &[], Some(zconst), gsum, gpr),
                _ => 0.0,
            };
            *o = hsum(_mm256_add_ps(a[0], a[1])) + tail - zt;
        }
    }
}
