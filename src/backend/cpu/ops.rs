//! The CPU kernels of the forward-pass ops other than the matmul: layer
//! norm, activations, broadcast add, masked softmax, attention and row
//! selection, on row-major f32 slices, rayon over rows (or over sequences ×
//! heads for attention).
//!
//! Shapes are checked before these run ([`crate::backend::Op::check`]).
//!
//! Each kernel is written once as plain Rust over slices (`*_impl`, generic
//! over whether fused multiply-adds are used) and compiled three times by
//! [`multiversion!`]: for AVX-512, for AVX2 + FMA, and for the baseline
//! target; the [`KernelPath`] chosen for the process picks one. The loops
//! are shaped so the compiler vectorizes them (independent lanes, no
//! library calls in the loop: `exp` is [`exp_f32`], a polynomial), which a
//! baseline x86-64 build does only with SSE2 and a call to libm per
//! element. Every path computes the same formulas; they differ by the
//! rounding of a fused versus a separate multiply-add.

use rayon::prelude::*;

use super::kernel::KernelPath;
use crate::backend::Activation;

/// Rows per rayon task for the row-wise ops: enough work to amortize a task.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// Defines `$name($args)` that runs the generic kernel `$body::<FMA>` compiled
/// for the selected kernel path's instruction set.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) {
            match KernelPath::selected() {
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512 => {
                    #[allow(clippy::too_many_arguments)]
                    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma")]
                    unsafe fn avx512($($a: $t),*) {
                        $body::<true>($($a),*)
                    }
                    // SAFETY: the selected path is supported by this CPU
                    // (`KernelPath::selected` only returns such a path).
                    unsafe { avx512($($a),*) }
                }
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2 => {
                    #[allow(clippy::too_many_arguments)]
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($a: $t),*) {
                        $body::<true>($($a),*)
                    }
                    // SAFETY: as above.
                    unsafe { avx2($($a),*) }
                }
                #[cfg(target_arch = "aarch64")]
                KernelPath::Neon => $body::<true>($($a),*),
                _ => $body::<false>($($a),*),
            }
        }
    };
}

/// `a · b + c`, fused where the instruction set has it (`FMA`: the kernel
/// is compiled with FMA enabled, so `mul_add` is one instruction, not a
/// call to libm's `fmaf`).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `1.5 · 2^23`: `(t + MAGIC)` holds `round(t)` in its low mantissa bits
/// for `|t| < 2^22`.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Below this, [`exp_f32`] returns 0 (`e^-87 ≈ 1.6e-38`, the edge of the
/// normal range).
const EXP_LO: f32 = -87.0;
/// Above this, [`exp_f32`] returns `e^88 ≈ 1.65e38` (finite).
const EXP_HI: f32 = 88.0;

/// `e^x` in f32 without a library call, so loops over it vectorize.
///
/// `x = n·ln2 + r` with `n = round(x / ln2)`, `|r| <= ln2 / 2` (Cody-Waite:
/// `ln2` in two parts, the first with 9 significant bits, so `n · LN2_HI` is
/// exact for `|n| <= 127`), `e^r` by its Taylor polynomial of degree 7
/// (truncation `<= (ln2/2)^8 / 8! · e^(ln2/2) ≈ 3.6e-9` relative), `2^n`
/// built in the exponent bits. Error bound: relative `<= 4e-7` (a few f32
/// ulps from Horner's rounding) for `x` in `[-87, 88]`, checked against
/// f64 `exp` by this module's tests; `x < -87` gives 0 (absolute error
/// `< 1.7e-38`), `x > 88` gives `e^88`; NaN stays NaN.
#[inline(always)]
// Not `clamp`: it would turn NaN into a bound.
#[allow(clippy::excessive_precision, clippy::manual_clamp)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Comparisons are false for NaN, so NaN passes through unclamped.
    let xc = if x < EXP_LO {
        EXP_LO
    } else if x > EXP_HI {
        EXP_HI
    } else {
        x
    };
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = madd::<FMA>(-n, LN2_HI, xc);
    let r = madd::<FMA>(-n, LN2_LO, r);
    let mut p = 1.0 / 5040.0;
    p = madd::<FMA>(p, r, 1.0 / 720.0);
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let e = p * scale;
    if x < EXP_LO {
        0.0
    } else {
        e
    }
}

/// `erfc(x)` for `x >= 0` in f32, fractional error below 1.2e-7 (the
/// Chebyshev fit of Numerical Recipes, §6.2) with `exp` from [`exp_f32`]
/// (relative error <= 4e-7; together <= 5.2e-7). The WGSL and CUDA kernels
/// use the same fit so the three backends agree to rounding.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as written
fn erfc_pos<const FMA: bool>(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let mut p = 0.170_872_77;
    p = madd::<FMA>(t, p, -0.822_152_23);
    p = madd::<FMA>(t, p, 1.488_515_87);
    p = madd::<FMA>(t, p, -1.135_203_98);
    p = madd::<FMA>(t, p, 0.278_868_07);
    p = madd::<FMA>(t, p, -0.186_288_06);
    p = madd::<FMA>(t, p, 0.096_784_18);
    p = madd::<FMA>(t, p, 0.374_091_96);
    p = madd::<FMA>(t, p, 1.000_023_7);
    p = madd::<FMA>(t, p, -1.265_512_2);
    t * exp_f32::<FMA>(madd::<FMA>(-x, x, p))
}

/// GELU (erf form) in f32: `0.5 · x · erfc(-x / √2)`, computed from `erfc`
/// of a non-negative argument on both sides so the tails keep their
/// relative precision. Relative error <= 1e-6 · (1 + x²/2) (the fit and
/// [`exp_f32`], plus the rounding of `-z² + p`, which `e^(-z²)` multiplies
/// by `z²` in the negative tail), checked against an f64 erf by the tests;
/// where GELU is below 1e-9·|x| (x < -6) the error is far below that size.
#[inline(always)]
fn gelu<const FMA: bool>(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let e = erfc_pos::<FMA>(z.abs());
    let c = if z >= 0.0 { 2.0 - e } else { e };
    0.5 * x * c
}

/// `x · σ(1.702 x)`.
#[inline(always)]
fn quick_gelu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp_f32::<FMA>(-1.702 * x))
}

#[inline(always)]
fn activation_impl<const FMA: bool>(kind: Activation, x: &[f32], y: &mut [f32]) {
    match kind {
        Activation::Gelu => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = gelu::<FMA>(v);
            }
        }
        Activation::QuickGelu => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = quick_gelu::<FMA>(v);
            }
        }
    }
}

multiversion!(fn activation_chunk(kind: Activation, x: &[f32], y: &mut [f32]) => activation_impl);

/// `y = f(x)` elementwise.
pub fn activation(kind: Activation, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(16384)
        .zip(x.par_chunks(16384))
        .for_each(|(y, x)| activation_chunk(kind, x, y));
}

/// Sum of `f(v)` over `x` in f64 with 8 independent lanes (vectorizes).
#[inline(always)]
fn sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += f(c[l] as f64);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in chunks.remainder() {
        s += f(v as f64);
    }
    s
}

#[inline(always)]
fn layer_norm_impl<const FMA: bool>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    cols: usize,
    y: &mut [f32],
) {
    for (yr, xr) in y.chunks_mut(cols).zip(x.chunks(cols)) {
        // Two passes in f64 (mean, then the centred sum of squares): exact
        // to f32 rounding whatever the row's offset, and cheap once it runs
        // 8 lanes wide; the row is in L1 for the second pass.
        let mean = sum_f64(xr, |v| v) / cols as f64;
        let var = sum_f64(xr, |v| (v - mean) * (v - mean)) / cols as f64;
        let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
        let mean = mean as f32;
        for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *o = madd::<FMA>((v - mean) * inv, g, b);
        }
    }
}

multiversion!(fn layer_norm_chunk(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    cols: usize,
    y: &mut [f32],
) => layer_norm_impl);

/// Layer norm of every row of `x` (`cols` columns), biased variance.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, cols: usize, y: &mut [f32]) {
    let n = rows_per_task(cols) * cols;
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(y, x)| layer_norm_chunk(x, gamma, beta, eps, cols, y));
}

/// `y = a + b`, `b` (`b_rows x cols`) repeated over the rows of `a`.
pub fn add(a: &[f32], b: &[f32], cols: usize, y: &mut [f32]) {
    let b_rows = b.len() / cols;
    let per = rows_per_task(cols);
    y.par_chunks_mut(per * cols)
        .zip(a.par_chunks(per * cols))
        .enumerate()
        .for_each(|(t, (y, a))| {
            for (i, (yr, ar)) in y.chunks_mut(cols).zip(a.chunks(cols)).enumerate() {
                let r = (t * per + i) % b_rows;
                let br = &b[r * cols..][..cols];
                for ((o, &u), &v) in yr.iter_mut().zip(ar).zip(br) {
                    *o = u + v;
                }
            }
        });
}

/// Lanes of the partial maxima and sums of [`softmax_row`].
const SM_LANES: usize = 16;

/// Softmax of one row in place over the kept positions (`keep` None: all;
/// otherwise a position is kept where `keep > 0.5`; dropped ones get
/// exactly 0, a row with none kept is all zeros).
#[inline(always)]
fn softmax_row<const FMA: bool>(row: &mut [f32], keep: Option<&[f32]>) {
    match keep {
        Some(m) => {
            let n = row.len();
            softmax_row_in::<FMA, true>(row, &m[..n])
        }
        None => softmax_row_in::<FMA, false>(row, &[]),
    }
}

/// [`softmax_row`] with the mask's presence known at compile time
/// (`mask` is `row.len()` values when `MASKED`, unused otherwise). The
/// mask is read 16 lanes at a time as a fixed-size array and applied with
/// bit masks, not branches: with a run-time `Option` and a select per
/// lane the max and mask-and-sum loops stayed scalar, branchy and spilled
/// their lane sums (two fifths of MiniLM's attention kernel, per rdtsc).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices shared by row, mask and lanes
fn softmax_row_in<const FMA: bool, const MASKED: bool>(row: &mut [f32], mask: &[f32]) {
    const ALL: [f32; SM_LANES] = [1.0; SM_LANES];
    let n = row.len();
    let kept = |j: usize| !MASKED || mask[j] > 0.5;
    let lanes = |j0: usize| -> &[f32; SM_LANES] {
        if MASKED {
            mask[j0..j0 + SM_LANES].try_into().expect("16 lanes")
        } else {
            &ALL
        }
    };
    // All ones where the position is kept, zero where it is dropped.
    let bits = |m: f32| if m > 0.5 { u32::MAX } else { 0 };
    // Partial maxima per lane, then across lanes.
    let mut mx = [f32::NEG_INFINITY; SM_LANES];
    let full = n / SM_LANES * SM_LANES;
    for (j0, c) in (0..full)
        .step_by(SM_LANES)
        .zip(row[..full].chunks_exact(SM_LANES))
    {
        let mk = lanes(j0);
        for l in 0..SM_LANES {
            let k = bits(mk[l]);
            let v = f32::from_bits((c[l].to_bits() & k) | (f32::NEG_INFINITY.to_bits() & !k));
            mx[l] = if v > mx[l] { v } else { mx[l] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &m in &mx {
        if m > max {
            max = m;
        }
    }
    for j in full..n {
        if kept(j) && row[j] > max {
            max = row[j];
        }
    }
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    // The exponentials in a loop of their own, then mask and lane sums:
    // in one loop the lane sums were spilled (the polynomial's constants
    // take the registers) and each step waited on a store-to-load forward.
    for c in row[..full].chunks_exact_mut(SM_LANES) {
        for v in c.iter_mut() {
            *v = exp_f32::<FMA>(*v - max);
        }
    }
    let mut sums = [0.0f32; SM_LANES];
    for (j0, c) in (0..full)
        .step_by(SM_LANES)
        .zip(row[..full].chunks_exact_mut(SM_LANES))
    {
        let mk = lanes(j0);
        for l in 0..SM_LANES {
            let e = f32::from_bits(c[l].to_bits() & bits(mk[l]));
            c[l] = e;
            sums[l] += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for j in full..n {
        let e = if kept(j) {
            exp_f32::<FMA>(row[j] - max)
        } else {
            0.0
        };
        row[j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn softmax_impl<const FMA: bool>(
    x: &[f32],
    mask: Option<&[f32]>,
    per_mask: usize,
    r0: usize,
    scale: f32,
    cols: usize,
    y: &mut [f32],
) {
    for (i, (yr, xr)) in y.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
        let r = r0 + i;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = scale * v;
        }
        let keep = mask.map(|m| &m[(r / per_mask) * cols..][..cols]);
        softmax_row::<FMA>(yr, keep);
    }
}

multiversion!(fn softmax_chunk(
    x: &[f32],
    mask: Option<&[f32]>,
    per_mask: usize,
    r0: usize,
    scale: f32,
    cols: usize,
    y: &mut [f32],
) => softmax_impl);

/// Row-wise `softmax(scale · x)`, mask rows as [`crate::backend::Op::Softmax`] says.
pub fn softmax(x: &[f32], mask: Option<&[f32]>, scale: f32, cols: usize, y: &mut [f32]) {
    let rows = x.len() / cols;
    let per_mask = mask.map_or(1, |m| rows / (m.len() / cols));
    let per = rows_per_task(cols);
    y.par_chunks_mut(per * cols)
        .zip(x.par_chunks(per * cols))
        .enumerate()
        .for_each(|(t, (y, x))| softmax_chunk(x, mask, per_mask, t * per, scale, cols, y));
}

/// Queries per register tile (and per block) of the attention kernel.
const QT: usize = 6;
/// Keys (in `Q·Kᵀ`) or head columns (in `P·V`) per register tile: two
/// AVX2 registers, one AVX-512 register. `QT x KT` accumulators are 12 of
/// AVX2's 16 registers, leaving room for the two loads and a broadcast.
const KT: usize = 16;

/// One (sequence, head) of attention, register-tiled: `qh` is `sq x dp`
/// (the head's columns gathered, zero-padded to `dp`, a multiple of [`KT`],
/// and to `sq`, a multiple of [`QT`], rows), `kt` is `Kᵀ` (`d x sp`, `sp`
/// a multiple of [`KT`], zero past `s`), `vh` is `s x dp`, `keep` the
/// sequence's key mask; writes `out` (`sq x dp`; rows past `s` and columns
/// past `d` are scratch). `p` is scratch of `QT x sp`.
///
/// Per block of [`QT`] queries: the scores `QT x sp` (in L1 up to S = 512)
/// by `QT x KT` tiles accumulated over the head's `d` columns (per column:
/// one `KT`-key load, `QT` broadcasts, `QT x KT` multiply-adds), the masked
/// softmax per row, then the context by `QT x KT` tiles over the kept key
/// range. Each multiply-add is a register operand; the earlier form (one
/// axpy of a K row per query column) loaded and stored its accumulator per
/// multiply-add.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_head_impl<const FMA: bool>(
    qh: &[f32],
    kt: &[f32],
    vh: &[f32],
    keep: Option<&[f32]>,
    s: usize,
    d: usize,
    dp: usize,
    sp: usize,
    scale: f32,
    p: &mut [f32],
    out: &mut [f32],
) {
    // Keys outside [lo, hi) are dropped by the mask: the context skips them.
    let (lo, hi) = match keep {
        None => (0, s),
        Some(m) => {
            let m = &m[..s];
            match m.iter().position(|&v| v > 0.5) {
                None => (0, 0),
                Some(lo) => (lo, s - m.iter().rev().position(|&v| v > 0.5).unwrap_or(0)),
            }
        }
    };
    let kt = &kt[..d * sp];
    for i0 in (0..s).step_by(QT) {
        let q: [&[f32]; QT] = std::array::from_fn(|i| &qh[(i0 + i) * dp..][..d]);
        for j0 in (0..sp).step_by(KT) {
            let mut acc = [[0.0f32; KT]; QT];
            for c in 0..d {
                let kr: &[f32; KT] = kt[c * sp + j0..][..KT].try_into().unwrap();
                for (a, qr) in acc.iter_mut().zip(&q) {
                    let w = qr[c];
                    for (o, &k) in a.iter_mut().zip(kr) {
                        *o = madd::<FMA>(w, k, *o);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (o, &v) in p[i * sp + j0..][..KT].iter_mut().zip(a) {
                    *o = v * scale;
                }
            }
        }
        for i in 0..QT.min(s - i0) {
            softmax_row::<FMA>(&mut p[i * sp..][..s], keep);
        }
        let pr: [&[f32]; QT] = std::array::from_fn(|i| &p[i * sp + lo..][..hi - lo]);
        let vh = &vh[lo * dp..hi * dp];
        for c0 in (0..dp).step_by(KT) {
            let mut acc = [[0.0f32; KT]; QT];
            for (j, vrow) in vh.chunks_exact(dp).enumerate() {
                let vr: &[f32; KT] = vrow[c0..][..KT].try_into().unwrap();
                for (a, prow) in acc.iter_mut().zip(&pr) {
                    let w = prow[j];
                    for (o, &v) in a.iter_mut().zip(vr) {
                        *o = madd::<FMA>(w, v, *o);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                out[(i0 + i) * dp + c0..][..KT].copy_from_slice(a);
            }
        }
    }
}

multiversion!(fn attention_head(
    qh: &[f32],
    kt: &[f32],
    vh: &[f32],
    keep: Option<&[f32]>,
    s: usize,
    d: usize,
    dp: usize,
    sp: usize,
    scale: f32,
    p: &mut [f32],
    out: &mut [f32],
) => attention_head_impl);

/// Multi-head attention as [`crate::backend::Op::Attention`] defines it.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    seqs: usize,
    heads: usize,
    hidden: usize,
    y: &mut [f32],
) {
    let s = q.len() / hidden / seqs;
    let d = hidden / heads;
    let sp = s.div_ceil(KT) * KT;
    let sq = s.div_ceil(QT) * QT;
    let dp = d.div_ceil(KT) * KT;
    let scale = 1.0 / (d as f32).sqrt();
    // Sequences in parallel, and within each its heads in parallel (batch
    // 1 has only its heads): per (sequence, head) gather the head's
    // columns contiguously (K transposed, padded to a multiple of 16 keys;
    // Q and V padded to `dp` columns, Q to `sq` rows), scores, softmax,
    // weighted sum; the strips are scattered into the sequence's rows of `y`.
    // The gathered Q, V, Kᵀ and the scores live in buffers kept per worker
    // thread (zeroed per use, in cache): allocated per (sequence, head),
    // with their page faults and unmapping, they were a seventh of the op
    // (MiniLM at 128 tokens, one sequence: 251 -> 215 us on Zen 5). The
    // strips are not written into `y` by the head tasks themselves: two
    // threads writing neighbouring heads' columns of the same rows share
    // cache lines, and that measured 325 us.
    y.par_chunks_mut(s * hidden)
        .enumerate()
        .for_each(|(b, ys)| {
            let strips: Vec<Vec<f32>> = (0..heads)
                .into_par_iter()
                .map(|h| {
                    let mut sc = ATTN.with(|c| c.take());
                    let AttnScratch { qh, vh, kt, p } = &mut sc;
                    let gather = |t: &[f32], rows: usize, out: &mut Vec<f32>| {
                        out.clear();
                        out.resize(rows * dp, 0.0);
                        for (i, o) in out.chunks_exact_mut(dp).take(s).enumerate() {
                            o[..d].copy_from_slice(&t[(b * s + i) * hidden + h * d..][..d]);
                        }
                    };
                    gather(q, sq, qh);
                    gather(v, s, vh);
                    kt.clear();
                    kt.resize(d * sp, 0.0);
                    for j in 0..s {
                        let kr = &k[(b * s + j) * hidden + h * d..][..d];
                        for (c, &val) in kr.iter().enumerate() {
                            kt[c * sp + j] = val;
                        }
                    }
                    let keep = mask.map(|m| &m[b * s..][..s]);
                    let mut out = vec![0.0f32; sq * dp];
                    p.clear();
                    p.resize(QT * sp, 0.0);
                    attention_head(qh, kt, vh, keep, s, d, dp, sp, scale, p, &mut out);
                    ATTN.with(|c| c.set(sc));
                    out
                })
                .collect();
            for (h, strip) in strips.iter().enumerate() {
                for i in 0..s {
                    ys[i * hidden + h * d..][..d].copy_from_slice(&strip[i * dp..][..d]);
                }
            }
        });
}

/// The per-thread buffers of one (sequence, head) of [`attention`]: the
/// head's Q and V columns, its `Kᵀ`, and the scores of a query block.
#[derive(Default)]
struct AttnScratch {
    qh: Vec<f32>,
    vh: Vec<f32>,
    kt: Vec<f32>,
    p: Vec<f32>,
}

thread_local! {
    /// [`AttnScratch`] of a worker, taken for the duration of a task.
    static ATTN: std::cell::Cell<AttnScratch> = std::cell::Cell::new(AttnScratch::default());
}

/// `y[i] = x[offset + i·step]` row by row.
pub fn take_rows(x: &[f32], offset: usize, step: usize, cols: usize, y: &mut [f32]) {
    for (i, yr) in y.chunks_mut(cols).enumerate() {
        yr.copy_from_slice(&x[(offset + i * step) * cols..][..cols]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops::erf_f64;

    /// Arguments over the range that matters, densely: every 1/64 in
    /// [-90, 90] plus a few specials.
    fn grid() -> Vec<f32> {
        let mut v: Vec<f32> = (-90 * 64..=90 * 64).map(|i| i as f32 / 64.0).collect();
        v.extend([1e-30, -1e-30, 0.5 * f32::EPSILON, 1e-3, -1e-3]);
        v
    }

    /// Largest relative error of `f` against `want` where `want` is a normal
    /// f32 value.
    fn max_rel(f: impl Fn(f32) -> f32, want: impl Fn(f64) -> f64) -> (f64, f32) {
        let mut worst = (0.0f64, 0.0f32);
        for x in grid() {
            let w = want(x as f64);
            if w.abs() < f32::MIN_POSITIVE as f64 * 4.0 {
                continue;
            }
            let e = ((f(x) as f64 - w) / w).abs();
            assert!(!e.is_nan(), "NaN at {x}");
            if e > worst.0 {
                worst = (e, x);
            }
        }
        worst
    }

    #[test]
    fn exp_is_within_its_bound_on_both_rounding_modes() {
        let lim = |x: f64| x.clamp(EXP_LO as f64, EXP_HI as f64).exp();
        for (name, e) in [
            ("fused", max_rel(exp_f32::<true>, lim)),
            ("separate", max_rel(exp_f32::<false>, lim)),
        ] {
            assert!(
                e.0 <= 4e-7,
                "exp ({name}): rel error {:.3e} at {}",
                e.0,
                e.1
            );
        }
        assert_eq!(exp_f32::<true>(-87.5), 0.0);
        assert_eq!(exp_f32::<false>(-1000.0), 0.0);
        assert!(exp_f32::<true>(1000.0).is_finite());
        assert!(exp_f32::<true>(f32::NAN).is_nan());
        assert!(exp_f32::<false>(f32::NAN).is_nan());
        assert_eq!(exp_f32::<true>(0.0), 1.0);
    }

    #[test]
    fn gelu_is_within_its_bound_against_erf_f64() {
        // The f64 reference `1 + erf` cancels in the negative tail (absolute
        // error ~1e-16): relative errors are measured against at least
        // 1e-9·|x|, where the reference still has 7 correct digits.
        let want = |x: f64| 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
        for (name, f) in [
            ("fused", gelu::<true> as fn(f32) -> f32),
            ("separate", gelu::<false>),
        ] {
            for x in grid() {
                let w = want(x as f64);
                let d = (f(x) as f64 - w).abs();
                let e = if d == 0.0 {
                    0.0
                } else {
                    d / w.abs().max(1e-9 * (x as f64).abs())
                };
                let bound = 1e-6 * (1.0 + (x as f64).powi(2) / 2.0);
                assert!(
                    e <= bound,
                    "gelu ({name}) at {x}: rel error {e:.3e} > {bound:.1e}"
                );
            }
        }
        assert!(gelu::<true>(f32::NAN).is_nan());
        // quick_gelu: exp's clamp at e^88 leaves values below 1e-36 in
        // the far negative tail; measured against at least 1e-9·|x| too.
        for x in grid() {
            let w = Activation::QuickGelu.eval_f64(x as f64);
            let d = (quick_gelu::<true>(x) as f64 - w).abs();
            let e = d / w.abs().max(1e-9 * (x as f64).abs()).max(1e-300);
            // exp amplifies the rounding of -1.702·x by |1.702·x|.
            let bound = 1e-6 + 2e-7 * (x as f64).abs();
            assert!(
                e <= bound,
                "quick_gelu at {x}: rel error {e:.3e} > {bound:.1e}"
            );
        }
    }

    #[test]
    fn every_path_this_cpu_runs_gives_the_same_activations() {
        // The dispatched chunk against the portable kernel: same formulas,
        // only fused vs separate rounding may differ.
        let x: Vec<f32> = grid();
        let mut got = vec![f32::NAN; x.len()];
        let mut want = vec![f32::NAN; x.len()];
        activation_chunk(Activation::Gelu, &x, &mut got);
        activation_impl::<false>(Activation::Gelu, &x, &mut want);
        for ((&g, &w), &v) in got.iter().zip(&want).zip(&x) {
            let tol = 1e-6 * (1.0 + v * v / 2.0) * w.abs() + 1e-37;
            assert!((g - w).abs() <= tol, "gelu({v}): {g} vs {w}");
        }
    }

    #[test]
    fn softmax_keeps_masked_positions_at_exactly_zero() {
        // 37 columns: two full 16-lane chunks and a tail.
        let mut row: Vec<f32> = (0..37).map(|j| (j as f32 * 0.37).sin() * 5.0).collect();
        let keep: Vec<f32> = (0..37).map(|j| (j % 3 != 1) as u8 as f32).collect();
        let x = row.clone();
        softmax_row::<true>(&mut row, Some(&keep));
        let kept: Vec<f64> = x
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k > 0.5)
            .map(|(&v, _)| v as f64)
            .collect();
        let max = kept.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = kept.iter().map(|v| (v - max).exp()).sum();
        for j in 0..37 {
            if keep[j] > 0.5 {
                let w = (x[j] as f64 - max).exp() / sum;
                assert!((row[j] as f64 - w).abs() <= 1e-6 * w + 1e-9, "{j}");
            } else {
                assert_eq!(row[j], 0.0, "{j}");
            }
        }
        let mut none = vec![1.0f32; 20];
        softmax_row::<false>(&mut none, Some(&[0.0; 20]));
        assert!(none.iter().all(|&v| v == 0.0));
    }
}
