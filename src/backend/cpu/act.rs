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
    /// Per 128-column chunk, 16 lanes: `sumq / 4` of block `4k + lane / 4`
    /// (each lane of a 4-bit dot product holds a quarter of its block).
    pub nib_xs: Vec<f32>,
    /// Per 64-column chunk, 16 lanes: `dx` of block `2k + lane / 8`.
    pub byte_dx: Vec<f32>,
    /// Per 64-column chunk, 16 lanes: `sumq / 8` of block `2k + lane / 8`.
    pub byte_xs: Vec<f32>,
}

impl QuantAct {
    /// Quantizes `x` (one activation row); `lanes` also builds the SIMD tables.
    pub(crate) fn new(x: &[f32], lanes: bool) -> QuantAct {
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
            let finite = blk.iter().all(|v| v.is_finite());
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
                let c = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
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
        self.nib_xs = vec![0.0; nib_chunks * 16];
        for k in 0..nib_chunks {
            for i in 0..16 {
                let b = 4 * k + i / 4;
                self.nib_dx[16 * k + i] = self.dx[b];
                self.nib_xs[16 * k + i] = self.sumq[b] as f32 / 4.0;
            }
        }
        let byte_chunks = padded / BYTE_CHUNK;
        self.byte_dx = vec![0.0; byte_chunks * 16];
        self.byte_xs = vec![0.0; byte_chunks * 16];
        for k in 0..byte_chunks {
            for i in 0..16 {
                let b = 2 * k + i / 8;
                self.byte_dx[16 * k + i] = self.dx[b];
                self.byte_xs[16 * k + i] = self.sumq[b] as f32 / 8.0;
            }
        }
    }
}
